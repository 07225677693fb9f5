"""Result files with names a link, a zip or a terminal cannot carry, written by a real agent in
a real container: kept under portable names, each downloadable by its listed URL and in the zip
under the same name, with the renames said in the run's warnings and on the artifacts."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import TEST_IMAGE, ProxyFactory, trajectory
from tests.support.scripted_anthropic import ScriptedAnthropic

pytestmark = [pytest.mark.docker, pytest.mark.agents]

# printf turns the octal escapes into the bytes: ESC, BEL, LF, RLO (U+202E), a byte that is not
# UTF-8, and a file whose name the renamed ESC one would otherwise take.
WRITE_NAMES = (
    "mkdir -p /app/results && cd /app/results"
    " && printf esc > \"$(printf 'esc\\033[31mred.txt')\""
    " && printf bel > \"$(printf 'bell\\007.txt')\""
    " && printf lf > \"$(printf 'line\\nfeed.txt')\""
    " && printf drive > 'C:x.txt'"
    " && printf rlo > \"$(printf 'rtl\\342\\200\\256txt.exe')\""
    " && printf bad > \"$(printf 'bad\\377byte.txt')\""
    " && printf taken > 'esc_[31mred.txt'"
    " && printf plain > plain.txt"
)
EXPECTED = {
    "C_x.txt": ("drive", "C:x.txt"),
    "bad\ufffdbyte.txt": ("bad", None),  # the engine's archive already shows the byte so
    "bell_.txt": ("bel", "bell\\x07.txt"),
    "esc_[31mred.txt": ("taken", None),
    "esc_[31mred~2.txt": ("esc", "esc\\x1b[31mred.txt"),
    "line_feed.txt": ("lf", "line\\x0afeed.txt"),
    "plain.txt": ("plain", None),
    "rtl_txt.exe": ("rlo", "rtl\\u202etxt.exe"),
}


def test_result_names_are_portable_and_every_link_works(
    make_proxy: ProxyFactory, anthropic: tuple[ScriptedAnthropic, str]
) -> None:
    scripted, _ = anthropic
    scripted.command = WRITE_NAMES
    request: dict[str, Any] = {
        "model": "claude-sonnet-4-6",
        "stream": True,
        "messages": [
            {"role": "system", "content": "# Runbook\n\nWrite the files."},
            {"role": "user", "content": "Go."},
        ],
        "jetty": {"runbook": True, "collection": "acme", "task": "names", "image": TEST_IMAGE},
    }
    with make_proxy() as proxy:
        response = httpx.post(proxy + "/v1/chat/completions", json=request, timeout=120)
        run_id = response.headers["x-jetty-trajectory-id"]
        record = trajectory(proxy, "acme", "names", run_id)
        assert record["status"] == "completed", record["error"]
        listed = {item["path"]: item for item in record["artifacts"]}
        assert set(listed) == set(EXPECTED)
        for path, item in listed.items():
            download = httpx.get(item["url"])
            assert download.status_code == 200, (path, download.text)
            assert download.text == EXPECTED[path][0]
        archive = httpx.get(record["download_url"])
        assert archive.status_code == 200
        with zipfile.ZipFile(io.BytesIO(archive.content)) as zipped:
            assert sorted(zipped.namelist()) == sorted(listed)
            assert {name: zipped.read(name).decode() for name in zipped.namelist()} == {
                path: content for path, (content, _) in EXPECTED.items()
            }
        events = httpx.get(f"{proxy}/api/v1/trajectory/acme/names/{run_id}/events").text

    # The final chunk's artifacts say what each renamed file was called.
    final = [
        json.loads(line[6:])
        for line in response.text.splitlines()
        if line.startswith("data: {") and '"artifacts"' in line
    ][-1]
    renamed = {a["path"]: a.get("renamed_from") for a in final["jetty"]["artifacts"]}
    assert renamed == {path: was for path, (_, was) in EXPECTED.items()}
    # The run's warning names them escaped: nothing a terminal would act on.
    logged = [json.loads(line[6:]) for line in events.splitlines() if line.startswith("data: {")]
    warnings = [e["data"]["text"] for e in logged if e.get("type") == "warning"]
    assert any("'esc\\x1b[31mred.txt' as 'esc_[31mred~2.txt'" in text for text in warnings)
    assert "\x1b" not in response.text and "\u202e" not in response.text
    assert all(ord(char) >= 0x20 for text in warnings for char in text)
