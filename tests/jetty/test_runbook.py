from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import anyio
import httpx
import pytest

from proxy.egress import AddressRefused
from proxy.errors import InvalidField
from proxy.jetty.runbook import (
    RunbookUnavailable,
    SecretDecl,
    fetch_runbook_url,
    parse_runbook,
    render_template,
)

RUNBOOK = """\
---
version: 1
agent: claude-code
model: claude-sonnet-4-6
model_provider: anthropic
snapshot: python312-uv
primary_outputs:
  - summary.md
  - validation_report.json
secrets:
  GITHUB_TOKEN:
    env: GH_TOKEN
    description: read access to the repo
    required: true
  SLACK_WEBHOOK: {required: false}
  PLAIN:
evaluation:
  rubric: [correctness, clarity]
timeout_sec: 900
network_enabled: true
memory: 4g
variables:
  dataset: sales.csv
  top_n: 5
owner: data-team
---
# Analyse {{ dataset }}

Write {{results_dir}}/summary.md.
"""


def test_front_matter_is_parsed_and_split_from_the_body() -> None:
    runbook = parse_runbook(RUNBOOK)
    front = runbook.front_matter
    assert runbook.body == "# Analyse {{ dataset }}\n\nWrite {{results_dir}}/summary.md.\n"
    assert front.version == "1"
    assert front.agent == "claude-code"
    assert front.model == "claude-sonnet-4-6"
    assert front.model_provider == "anthropic"
    assert front.snapshot == "python312-uv"
    assert front.primary_outputs == ["summary.md", "validation_report.json"]
    assert front.secrets == {
        "GITHUB_TOKEN": SecretDecl(env="GH_TOKEN", description="read access to the repo"),
        "SLACK_WEBHOOK": SecretDecl(env="SLACK_WEBHOOK", required=False),
        "PLAIN": SecretDecl(env="PLAIN"),
    }
    assert front.evaluation == {"rubric": ["correctness", "clarity"]}
    assert front.timeout_sec == 900
    assert front.network_enabled is True
    assert front.memory_bytes == 4 * 1024**3
    assert front.variables == {"dataset": "sales.csv", "top_n": "5"}
    # Keys this server does not know are kept, not refused.
    assert front.model_extra == {"owner": "data-team"}


@pytest.mark.parametrize(
    ("text", "body"),
    [
        ("# Just Markdown\n", "# Just Markdown\n"),
        ("", ""),
        ("---\n---\nbody", "body"),
        ("---\n...\nbody", "body"),
        ("\ufeff---\nagent: codex\n---\nbody", "body"),
        ("---\r\nagent: codex\r\n---\r\nbody\r\n", "body\r\n"),
        ("---\nagent: codex\n---", ""),
        ("text\n---\nagent: codex\n---\n", "text\n---\nagent: codex\n---\n"),
    ],
)
def test_front_matter_fences(text: str, body: str) -> None:
    assert parse_runbook(text).body == body


def test_lenient_shapes() -> None:
    front = parse_runbook("---\nprimary_outputs: summary.md\nversion: 1.5\n---\nx").front_matter
    assert front.primary_outputs == ["summary.md"]
    assert front.version == "1.5"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("---\nagent: [codex\n---\nx", "not valid YAML"),
        ("---\nagent: codex\n", "never closes"),
        ("---\n- a\n- b\n---\nx", "must be a YAML mapping"),
        ("---\njust a string\n---\nx", "must be a YAML mapping"),
        ("---\na: &x [1, 2]\nb: *x\n---\nx", "aliases"),
        ("---\ntimeout_sec: 0\n---\nx", "'timeout_sec' is invalid"),
        ("---\nagent: opencode\n---\nx", "'agent' is invalid: unknown agent 'opencode'"),
        ("---\nimage: Ubuntu\n---\nx", "'image' is invalid"),
        ("---\npip_packages: ['numpy; rm -rf /']\n---\nx", "'pip_packages[0]' is invalid"),
        ("---\nsecrets: {A: {env: 'A B'}}\n---\nx", "'secrets.A.env' is invalid: 'A B' is not"),
        ("---\nsecrets: {my-key: {}}\n---\nx", "'secrets.my-key.env' is invalid"),
        ("---\nsecrets: {A: {env: 3}}\n---\nx", "'secrets.A.env' is invalid"),
        ("---\nsecrets: {A: {required: 'yes'}}\n---\nx", "'secrets.A.required' is invalid"),
        ("---\nsecrets: [A, B]\n---\nx", "'secrets' is invalid"),
        ("---\nvariables: {x: [1]}\n---\nx", "'variables.x' is invalid"),
        ("---\nmemory: lots\n---\nx", "'memory' is invalid"),
        ("---\nbig: '" + "x" * 70_000 + "'\n---\nx", "over 65536"),
    ],
)
def test_bad_front_matter_is_a_400_on_the_runbook_source(text: str, message: str) -> None:
    with pytest.raises(InvalidField) as caught:
        parse_runbook(text)
    assert caught.value.param == "messages"
    assert message in caught.value.message
    with pytest.raises(InvalidField) as caught:
        parse_runbook(text, param="jetty.runbook_url")
    assert caught.value.param == "jetty.runbook_url"


def test_yaml_errors_give_the_runbook_line() -> None:
    with pytest.raises(InvalidField, match=r"line 3"):
        parse_runbook("---\nagent: codex\nmodel: a: b\n---\nbody")


def test_render_fills_placeholders_with_optional_spaces() -> None:
    body = "A {{x}} B {{ x }} C {{\ty\t}} D {{results_dir}}/out"
    assert render_template(body, {"x": "1", "y": "2"}) == "A 1 B 1 C 2 D /app/results/out"


def test_render_is_single_pass_and_leaves_non_placeholders() -> None:
    body = "{{x}} {{ not a name }} {{#each}} {{\nx\n}} {x} {{ y-z }}"
    assert render_template(body, {"x": "{{y}}"}) == (
        "{{y}} {{ not a name }} {{#each}} {{\nx\n}} {x} {{ y-z }}"
    )


def test_results_dir_can_be_overridden() -> None:
    assert render_template("{{results_dir}}", {"results_dir": "/out"}) == "/out"


def test_missing_variables_are_all_listed() -> None:
    with pytest.raises(InvalidField) as caught:
        render_template("{{ b }} {{a}} {{b}} {{results_dir}} {{c}}", {"c": "ok"})
    assert caught.value.param == "jetty.template_variables"
    assert caught.value.message.startswith("Runbook needs template variables 'b', 'a';")
    with pytest.raises(InvalidField, match="variable 'only';"):
        render_template("{{only}}", {})


Handler = Callable[[httpx.Request], httpx.Response]


async def fetch(
    handler: Handler, url: str = "https://runbooks.example/r.md", cap: int = 100
) -> str:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        return await fetch_runbook_url(url, client, cap)


@pytest.mark.anyio
async def test_fetch_returns_the_text() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, text="# Runbook ✓")

    assert await fetch(handler) == "# Runbook ✓"
    assert str(seen[0].url) == "https://runbooks.example/r.md"


@pytest.mark.anyio
async def test_fetch_strips_a_bom_and_follows_redirects() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/old":
            return httpx.Response(302, headers={"location": "https://runbooks.example/new"})
        return httpx.Response(200, content="\ufeffhello".encode())

    assert await fetch(handler, "https://runbooks.example/old") == "hello"


@pytest.mark.anyio
async def test_fetch_at_the_cap_is_fine() -> None:
    assert await fetch(lambda _: httpx.Response(200, content=b"x" * 100)) == "x" * 100


@pytest.mark.anyio
async def test_fetch_stops_reading_a_stream_that_passes_the_cap() -> None:
    sent: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(1000):
            sent.append(40)
            yield b"y" * 40

    with pytest.raises(RunbookUnavailable):
        await fetch(lambda _: httpx.Response(200, content=endless()))
    assert sum(sent) <= 200  # stopped right after crossing 100 bytes, not at the end


@pytest.mark.anyio
async def test_fetch_gives_up_at_its_deadline() -> None:
    async def slow() -> AsyncIterator[bytes]:
        yield b"# Run"
        await anyio.sleep_forever()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=slow())

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(RunbookUnavailable):
            await fetch_runbook_url("https://runbooks.example/r.md", client, 100, deadline=0.05)


def _refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def _timed_out(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


def _guard_refused(request: httpx.Request) -> httpx.Response:
    raise AddressRefused("127.0.0.1 is a loopback address", request=request)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("url", "handler", "logged"),
    [
        ("https://runbooks.example/r.md?token=s3cret", lambda _: httpx.Response(404), "HTTP 404"),
        ("https://runbooks.example/r.md", lambda _: httpx.Response(500), "HTTP 500"),
        ("https://runbooks.example/r.md", _refused, "connection refused"),
        ("https://runbooks.example/r.md", _timed_out, "ReadTimeout"),
        ("https://runbooks.example/r.md", _guard_refused, "loopback address"),
        (
            "https://runbooks.example/r.md",
            lambda _: httpx.Response(200, content=b"x" * 101),
            "over",
        ),
        ("https://runbooks.example/r.md", lambda _: httpx.Response(200, content=b"\xff"), "utf-8"),
        ("ftp://runbooks.example/r.md", None, "not an http(s) URL"),
        ("file:///etc/passwd", None, "not an http(s) URL"),
        ("http://", None, "not an http(s) URL"),
        ("http://[::1/", None, "InvalidURL"),
    ],
)
async def test_every_failure_is_the_same_400_and_only_the_log_says_why(
    url: str, handler: Handler | None, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    def never(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request may be made")

    with pytest.raises(InvalidField) as caught:
        await fetch(handler or never, url)
    error = caught.value
    assert (error.status_code, error.param, error.code) == (
        400,
        "jetty.runbook_url",
        "runbook_url_unavailable",
    )
    assert error.message == RunbookUnavailable().message
    assert error.__cause__ is None and error.__suppress_context__
    assert logged.lower() in caplog.text.lower()
    assert "s3cret" not in caplog.text
