"""The sandbox forwarder: built with the host's compiler, then run as a real process.

On the host it forwards to a unix socket served by uvicorn; the ``docker`` tests run it inside
the offline busybox and Debian images with no network, in front of the real relay.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from proxy.agents.forwarder import (
    FORWARDER_COMMAND,
    FORWARDER_MOUNT_POINT,
    ForwarderBuildError,
    ensure_forwarder,
    forwarder_argv,
)
from proxy.agents.install import AgentInstallError, elf_interpreter
from proxy.relay.app import create_relay_app
from proxy.relay.tokens import RunTokens
from proxy.sandbox.base import ExitStatus, Mount, SandboxSpec
from proxy.sandbox.docker import DockerBackend, DockerSandbox
from proxy.settings import Settings
from tests.relay.conftest import REAL_KEY
from tests.sandbox.conftest import (
    BUSYBOX,
    NO_ENGINE,
    TESTENV,
    configured_docker_host,
    engine_client,
)
from tests.support.ci import unavailable
from tests.support.live import free_port, serve, serve_unix
from tests.support.scripted_anthropic import Seen
from tests.support.scripted_responses import ScriptedResponses
from tests.support.watched import WatchedStream


@pytest.fixture(scope="module")
def forwarder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The forwarder built by the host's gcc; skipped without one, except in CI."""
    if shutil.which("gcc") is None:
        unavailable("gcc (and libc6-dev) are missing", "scripts/ci/agent-clis.sh installs them")
    return anyio.run(ensure_forwarder, tmp_path_factory.mktemp("tools"))


class Backend:
    """What the forwarder forwards to: echoes bodies, and a stream that never ends."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/echo", self._echo, methods=["POST"]),
                Route("/hello", self._hello),
                Route("/hang", self._hang),
            ]
        )

    async def _hello(self, request: Request) -> Response:
        return PlainTextResponse("hello through the forwarder\n")

    async def _echo(self, request: Request) -> Response:
        body = await request.body()
        return PlainTextResponse(f"{len(body)} {hashlib.sha256(body).hexdigest()}")

    async def _hang(self, request: Request) -> Response:
        seen = Seen(request.url.path, "", dict(request.headers), b"")
        self.seen.append(seen)

        async def forever() -> AsyncIterator[bytes]:
            yield b"first\n"
            await anyio.sleep(3600)

        return WatchedStream(seen, forever(), [(b"content-type", b"text/plain")])


@contextmanager
def running(forwarder: Path, socket_path: Path | str) -> Iterator[tuple[str, int]]:
    """The forwarder in the background, its child a long sleep; yields the base URL once the
    child has started (the port listens before it does) and the forwarder's pid."""
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        ready = Path(directory) / "ready"
        child = ["sh", "-c", f"touch {ready} && exec sleep 60"]
        argv = forwarder_argv(child, port=port, socket=str(socket_path), command=str(forwarder))
        process = subprocess.Popen(argv)
        try:
            deadline = time.monotonic() + 5
            while not ready.exists():
                assert time.monotonic() < deadline, "the forwarder did not start its child"
                time.sleep(0.01)
            yield f"http://127.0.0.1:{port}", process.pid
        finally:
            process.terminate()  # passed on to the sleep, which ends the forwarder too
            assert process.wait(timeout=10) == 128 + signal.SIGTERM


def run(forwarder: Path, socket_path: Path | str, *child: str) -> subprocess.CompletedProcess[str]:
    argv = forwarder_argv(
        list(child), port=free_port(), socket=str(socket_path), command=str(forwarder)
    )
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_the_build_is_static_reused_and_safe_to_race(forwarder: Path, tmp_path: Path) -> None:
    assert forwarder.name == "forwarder" and os.access(forwarder, os.X_OK)
    assert elf_interpreter(forwarder) is None  # static: runs in any image
    version = subprocess.run([forwarder, "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("forwarder ")
    assert anyio.run(ensure_forwarder, forwarder.parent.parent) == forwarder

    async def race() -> list[Path]:
        built: list[Path] = []

        async def one() -> None:
            built.append(await ensure_forwarder(tmp_path))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(one)
        return built

    built = anyio.run(race)
    assert len(set(built)) == 1
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [
        built[0].parent.name
    ]


def test_a_broken_build_directory_is_rebuilt(forwarder: Path, tmp_path: Path) -> None:
    broken = tmp_path / forwarder.parent.name
    broken.mkdir()
    (broken / "forwarder").write_text("not a program")
    (tmp_path / ".staging-forwarder-leftover").mkdir()
    rebuilt = anyio.run(ensure_forwarder, tmp_path)
    assert rebuilt.read_bytes()[:4] == b"\x7fELF"
    assert not (tmp_path / ".staging-forwarder-leftover").exists()


def test_a_missing_compiler_says_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(ForwarderBuildError, match="apt-get install gcc libc6-dev") as caught:
        anyio.run(lambda: ensure_forwarder(tmp_path, compiler="no-such-cc"))
    assert isinstance(caught.value, AgentInstallError)
    assert not any(p.name.startswith(".staging") for p in tmp_path.iterdir())


def test_a_failing_compiler_shows_its_output(tmp_path: Path) -> None:
    fake = tmp_path / "cc"
    fake.write_text("#!/bin/sh\necho '/usr/bin/ld: cannot find -lc: No such file' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(ForwarderBuildError) as caught:
        anyio.run(lambda: ensure_forwarder(tmp_path / "cache", compiler=str(fake)))
    message = str(caught.value)
    assert "exited with code 1" in message
    assert "apt-get install libc6-dev" in message
    assert "| /usr/bin/ld: cannot find -lc" in message


def test_the_child_reaches_http_over_the_socket(forwarder: Path) -> None:
    with serve_unix(Backend().app()) as socket_path:
        port = free_port()
        script = f"""
            import sys, urllib.request
            body = urllib.request.urlopen("http://127.0.0.1:{port}/hello").read()
            sys.stdout.write(body.decode())
            sys.exit(3)
        """
        argv = forwarder_argv(
            [sys.executable, "-c", textwrap.dedent(script)],
            port=port,
            socket=str(socket_path),
            command=str(forwarder),
        )
        started = time.monotonic()
        process = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert (process.returncode, process.stdout) == (3, "hello through the forwarder\n")
    assert process.stderr == ""
    assert time.monotonic() - started < 5


def test_many_concurrent_connections_and_large_bodies(forwarder: Path) -> None:
    bodies = [os.urandom(256 * 1024 + n) for n in range(40)]

    async def post_all(url: str) -> list[str]:
        limits = httpx.Limits(max_connections=40)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
            results: list[str] = [""] * len(bodies)

            async def post(index: int) -> None:
                response = await client.post("/echo", content=bodies[index])
                results[index] = response.text

            async with anyio.create_task_group() as tg:
                for index in range(len(bodies)):
                    tg.start_soon(post, index)
        return results

    with serve_unix(Backend().app()) as socket_path, running(forwarder, socket_path) as (url, _):
        results = anyio.run(post_all, url)
    assert results == [f"{len(b)} {hashlib.sha256(b).hexdigest()}" for b in bodies]


def test_half_close_is_passed_on_both_ways(forwarder: Path, tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    received: list[bytes] = []

    def answer_after_eof() -> None:
        connection, _ = server.accept()
        with connection:
            data = b""
            while chunk := connection.recv(65536):
                data += chunk
            received.append(data)
            connection.sendall(b"read %d bytes" % len(data))

    thread = threading.Thread(target=answer_after_eof, daemon=True)
    thread.start()
    with (
        running(forwarder, path) as (url, _),
        socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as client,
    ):
        client.sendall(b"x" * 300_000)
        client.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := client.recv(65536):
            reply += chunk
    thread.join(5)
    server.close()
    assert received == [b"x" * 300_000]
    assert reply == b"read 300000 bytes"


def test_a_client_going_away_closes_the_upstream_connection(forwarder: Path) -> None:
    backend = Backend()
    with serve_unix(backend.app()) as socket_path, running(forwarder, socket_path) as (url, _):
        with httpx.stream("GET", url + "/hang", timeout=10) as response:
            assert next(response.iter_bytes()) == b"first\n"
        deadline = time.monotonic() + 5
        while backend.seen[-1].disconnected is None and time.monotonic() < deadline:
            time.sleep(0.01)
    assert backend.seen[-1].disconnected is not None


def test_a_missing_socket_drops_the_connection_and_keeps_running(
    forwarder: Path, tmp_path: Path
) -> None:
    with running(forwarder, tmp_path / "absent.sock") as (url, pid):
        with pytest.raises(httpx.TransportError):
            httpx.get(url + "/hello", timeout=5)
        os.kill(pid, 0)  # still alive


@pytest.mark.parametrize(
    ("child", "code"),
    [
        (["sh", "-c", "exit 7"], 7),
        (["sh", "-c", "kill -KILL $$"], 128 + 9),
        (["/no/such/program"], 127),
        ([os.devnull], 126),
    ],
)
def test_the_childs_exit_status_is_the_forwarders(
    forwarder: Path, tmp_path: Path, child: list[str], code: int
) -> None:
    process = run(forwarder, tmp_path / "unused.sock", *child)
    assert process.returncode == code, process.stderr


def test_own_failures_exit_125(forwarder: Path) -> None:
    usage = subprocess.run([forwarder, "127.0.0.1:80", "/s.sock"], capture_output=True, text=True)
    assert usage.returncode == 125 and "usage:" in usage.stderr
    bad = subprocess.run([forwarder, "localhost:x", "/s", "--", "true"], capture_output=True)
    assert bad.returncode == 125
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [str(forwarder), f"127.0.0.1:{port}", "/s.sock", "--", "true"]
        busy = subprocess.run(argv, capture_output=True, text=True)
    assert busy.returncode == 125 and "cannot listen" in busy.stderr


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 3), (signal.SIGINT, 128 + 2)])
def test_signals_are_passed_to_the_child(
    forwarder: Path, tmp_path: Path, sig: int, code: int
) -> None:
    ready = tmp_path / "ready"
    script = f"""
        import pathlib, signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        pathlib.Path({str(ready)!r}).touch()
        time.sleep(30)
    """
    argv = forwarder_argv(
        [sys.executable, "-c", textwrap.dedent(script)],
        port=free_port(),
        socket=str(tmp_path / "unused.sock"),
        command=str(forwarder),
    )
    process = subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        process.send_signal(sig)
        assert process.wait(timeout=10) == code
    finally:
        process.kill()
        process.wait()


def test_forwarder_argv_wraps_the_agent() -> None:
    assert forwarder_argv(["codex", "exec"], port=8080, socket="/run/jetty/relay.sock") == [
        FORWARDER_COMMAND,
        "127.0.0.1:8080",
        "/run/jetty/relay.sock",
        "--",
        "codex",
        "exec",
    ]
    assert FORWARDER_COMMAND.startswith(FORWARDER_MOUNT_POINT + "/")


@pytest.fixture
async def docker() -> AsyncIterator[DockerBackend]:
    """The engine for Docker tests: skip without one, except under CI."""
    host = configured_docker_host()
    if host is None:
        unavailable(NO_ENGINE, "start one with scripts/ci/docker-engine.sh")
    backend = DockerBackend.from_url(host)
    yield backend
    await backend.aclose()


OnLine = Callable[[DockerSandbox, str], Awaitable[None]]

# A Responses API call from inside the sandbox, with whatever each image has for HTTP.
_BUSYBOX_CLIENT = """
wget -q -O - --header "Authorization: Bearer $TOKEN" --header "Content-Type: application/json" \
  --post-data "$BODY" http://127.0.0.1:8080/v1/responses
echo "client exited $?"
exit 3
"""
_BASH_CLIENT = r"""
exec 3<>/dev/tcp/127.0.0.1/8080
printf 'POST /v1/responses HTTP/1.0\r\nHost: relay\r\nAuthorization: Bearer %s\r\n' "$TOKEN" >&3
printf 'Content-Type: application/json\r\nContent-Length: %s\r\n\r\n%s' "${#BODY}" "$BODY" >&3
cat <&3
echo "client exited $?"
exit 3
"""


async def _run_sandbox(
    docker: DockerBackend, spec: SandboxSpec, on_line: OnLine | None = None
) -> tuple[list[str], ExitStatus, str]:
    """Start, read stdout (passing each line to ``on_line``) until the process exits."""
    sandbox = await docker.launch(spec)
    lines: list[str] = []
    try:
        await sandbox.start()
        with anyio.fail_after(60):
            async for line in sandbox.stdout_lines():
                lines.append(line)
                if on_line is not None:
                    await on_line(sandbox, line)
            status = await sandbox.wait(timeout=30)
        return lines, status, sandbox.stderr_tail()
    finally:
        with anyio.CancelScope(shield=True):
            await sandbox.close()


def _sandbox_spec(
    image: str, forwarder: Path, socket_path: Path, argv: list[str], **env: str
) -> SandboxSpec:
    return SandboxSpec(
        run_id="forwarder-test",
        collection="tests",
        image=image,
        argv=forwarder_argv(argv, port=8080, socket="/run/jetty/" + socket_path.name),
        env=env,
        workdir="/",
        mounts=(
            Mount(forwarder.parent, FORWARDER_MOUNT_POINT),
            Mount(socket_path.parent, "/run/jetty"),
        ),
    )


@pytest.mark.docker
@pytest.mark.anyio
@pytest.mark.parametrize(
    ("image", "client"),
    [(BUSYBOX, ["sh", "-c", _BUSYBOX_CLIENT]), (TESTENV, ["bash", "-c", _BASH_CLIENT])],
)
async def test_a_sandbox_without_network_reaches_the_relay(
    docker: DockerBackend, forwarder: Path, tmp_path: Path, image: str, client: list[str]
) -> None:
    upstream = ScriptedResponses()
    tokens = RunTokens()
    token = tokens.issue("run-docker", "coll")
    body = '{"model": "gpt-5.5", "input": [], "stream": true}'
    with serve(upstream.app()) as upstream_url:
        settings = Settings(
            data_dir=tmp_path / "data",
            openai_base_url=upstream_url + "/v1",
            openai_api_key=REAL_KEY,
        )
        with serve_unix(create_relay_app(tokens, settings)) as socket_path:
            spec = _sandbox_spec(image, forwarder, socket_path, client, TOKEN=token, BODY=body)
            lines, status, stderr = await _run_sandbox(docker, spec)
    assert status.exit_code == 3, (lines, stderr)
    assert "client exited 0" in lines
    assert any('"type": "response.completed"' in line for line in lines)
    assert [s.headers["authorization"] for s in upstream.seen] == [f"Bearer {REAL_KEY}"]


@pytest.mark.docker
@pytest.mark.anyio
async def test_as_pid_1_it_passes_a_stop_signal_to_the_agent(
    docker: DockerBackend, forwarder: Path, tmp_path: Path
) -> None:
    script = 'trap "echo got TERM; exit 5" TERM; echo ready; while :; do sleep 0.1; done'
    spec = _sandbox_spec(BUSYBOX, forwarder, tmp_path / "unused.sock", ["sh", "-c", script])
    host = configured_docker_host()
    assert host is not None

    async def stop_when_ready(sandbox: DockerSandbox, line: str) -> None:
        if line == "ready":  # what `docker stop` does first
            with engine_client(host) as engine:
                url = f"/containers/{sandbox.container_id}/kill"
                engine.post(url, params={"signal": "TERM"}).raise_for_status()

    lines, status, _ = await _run_sandbox(docker, spec, stop_when_ready)
    assert lines == ["ready", "got TERM"]
    assert status.exit_code == 5
