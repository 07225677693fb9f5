"""Request shapes of the Docker backend, against a scripted engine on httpx.MockTransport."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from proxy.sandbox.base import (
    EngineUnavailable,
    ImageNotFound,
    Mount,
    Orphans,
    SandboxError,
    SandboxLimitError,
    SandboxSpec,
    SandboxStateError,
    SkipReason,
    UnsafePathError,
)
from proxy.sandbox.docker import DockerBackend
from proxy.sandbox.dockerapi import ContainerPolicy, container_config, container_name
from proxy.sandbox.frames import StreamKind, encode_frame

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]
PREFIX = "/v1.41"
CID = "c0ffee"


class ScriptedEngine:
    """Answers the Engine API calls the backend makes; tests override single routes."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.routes: dict[tuple[str, str], Handler] = {}
        self.existing = {"/"}
        self.killed = anyio.Event()

    def route(self, method: str, path: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.routes[(method, path)] = handler
            return handler

        return register

    def calls(self, method: str | None = None) -> list[str]:
        return [
            f"{r.method} {r.url.path.removeprefix(PREFIX)}"
            for r in self.requests
            if method is None or r.method == method
        ]

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.url.path.startswith(PREFIX), "API version must be pinned in the path"
        key = (request.method, request.url.path.removeprefix(PREFIX))
        if key in self.routes:
            return await self.routes[key](request)
        return await self.default(request, *key)

    async def default(self, request: httpx.Request, method: str, path: str) -> httpx.Response:
        container = f"/containers/{CID}"
        if method == "GET" and path.startswith("/images/"):
            return httpx.Response(200, json={"Id": "sha256:1"})
        if (method, path) == ("POST", "/containers/create"):
            return httpx.Response(201, json={"Id": CID, "Warnings": []})
        if (method, path) == ("HEAD", f"{container}/archive"):
            exists = request.url.params["path"] in self.existing
            return httpx.Response(200 if exists else 404)
        if method == "PUT" and path == f"{container}/archive":
            return httpx.Response(200)
        if (method, path) in {("POST", f"{container}/start"), ("DELETE", container)}:
            return httpx.Response(204)
        if (method, path) == ("POST", f"{container}/kill"):
            self.killed.set()
            return httpx.Response(204)
        if (method, path) == ("POST", f"{container}/wait"):
            return httpx.Response(200, json={"StatusCode": 0})
        if (method, path) == ("GET", f"{container}/json"):
            return httpx.Response(200, json={"State": {"ExitCode": 0, "OOMKilled": False}})
        if (method, path) == ("GET", f"{container}/logs"):
            return httpx.Response(200, content=b"")
        if (method, path) == ("GET", "/info"):
            return httpx.Response(200, json={"NCPU": 2})
        if (method, path) == ("POST", "/volumes/prune"):
            return httpx.Response(200, json={"VolumesDeleted": None, "SpaceReclaimed": 0})
        return httpx.Response(500, json={"message": f"unscripted {method} {path}"})


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture
def backend(engine: ScriptedEngine) -> Callable[[], DockerBackend]:
    return lambda: DockerBackend(httpx.MockTransport(engine))


def _spec(**overrides: object) -> SandboxSpec:
    fields: dict[str, object] = {
        "run_id": "r1",
        "collection": "col",
        "image": "127.0.0.1:5000/jetty/testenv:bookworm",
        "argv": ["claude", "-p", "hi"],
    }
    return SandboxSpec(**{**fields, **overrides})  # type: ignore[arg-type]


def test_container_config_shape() -> None:
    spec = _spec(
        env={"A": "1"},
        mounts=[Mount("/host/sock", "/run/jetty.sock"), Mount("/h/w", "/w", read_only=False)],
        cpus=1.5,
        memory_bytes=512 * 1024 * 1024,
        user="1000:1000",
        labels={"extra": "x", "jetty-proxy.run-id": "spoofed"},
    )
    body = container_config(spec)
    host = body["HostConfig"]
    assert body["Entrypoint"] == ["claude"] and body["Cmd"] == ["-p", "hi"]
    assert body["Env"] == ["A=1"] and body["WorkingDir"] == "/app" and body["User"] == "1000:1000"
    assert body["Labels"] == {
        "extra": "x",
        "jetty-proxy.run-id": "r1",
        "jetty-proxy.collection": "col",
        "jetty-proxy.managed": "true",
    }
    assert body["Tty"] is False and body["OpenStdin"] is False
    assert host["NanoCpus"] == 1_500_000_000
    assert host["Memory"] == host["MemorySwap"] == 512 * 1024 * 1024
    assert host["PidsLimit"] == 512
    assert host["CapDrop"] == ["ALL"] and host["CapAdd"] == []
    assert host["SecurityOpt"] == ["no-new-privileges"] and host["Privileged"] is False
    assert host["ReadonlyRootfs"] is False
    assert host["NetworkMode"] == "none"
    assert host["Mounts"] == [
        {"Type": "bind", "Source": "/host/sock", "Target": "/run/jetty.sock", "ReadOnly": True},
        {"Type": "bind", "Source": "/h/w", "Target": "/w", "ReadOnly": False},
    ]
    unlimited = container_config(_spec(network_enabled=True))["HostConfig"]
    assert unlimited["NetworkMode"] == "bridge"
    assert unlimited["Memory"] == unlimited["MemorySwap"] == unlimited["NanoCpus"] == 0


def test_a_container_policy_adds_capabilities_and_a_read_only_root() -> None:
    policy = ContainerPolicy(capabilities=("CHOWN", "SETUID"), read_only_rootfs=True)
    host = container_config(_spec(mounts=[Mount("/h/sock", "/run/jetty")]), policy)["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and host["CapAdd"] == ["CHOWN", "SETUID"]
    assert host["ReadonlyRootfs"] is True
    labels = {
        "jetty-proxy.run-id": "r1",
        "jetty-proxy.collection": "col",
        "jetty-proxy.managed": "true",
    }
    assert host["Mounts"] == [
        {"Type": "bind", "Source": "/h/sock", "Target": "/run/jetty", "ReadOnly": True},
        {"Type": "volume", "Target": "/app", "VolumeOptions": {"Labels": labels}},
        {"Type": "volume", "Target": "/tmp", "VolumeOptions": {"Labels": labels}},
    ]


@pytest.mark.anyio
async def test_cpus_above_the_engines_are_lowered_to_them(
    engine: ScriptedEngine, backend: Callable[[], DockerBackend]
) -> None:
    created: list[dict[str, Any]] = []

    @engine.route("POST", "/containers/create")
    async def create(request: httpx.Request) -> httpx.Response:
        created.append(json.loads(await request.aread()))
        return httpx.Response(201, json={"Id": CID, "Warnings": []})

    docker = backend()
    for cpus in (4.0, 1.5, None):
        await (await docker.launch(_spec(cpus=cpus))).close()
    await docker.aclose()
    assert [body["HostConfig"]["NanoCpus"] for body in created] == [2e9, 1.5e9, 0]
    assert engine.calls("GET").count("GET /info") == 1  # asked once per backend


def test_container_name_is_valid() -> None:
    assert container_name("run/1 ü", "ab12") == "jetty-run-1---ab12"


@pytest.mark.anyio
async def test_missing_image_raises_and_never_pulls(
    engine: ScriptedEngine, backend: Callable[[], DockerBackend]
) -> None:
    @engine.route("POST", "/containers/create")
    async def missing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"message": "No such image: jetty/testenv:bookworm"})

    docker = backend()
    with pytest.raises(ImageNotFound, match="not pulled"):
        await docker.launch(_spec())
    await docker.aclose()
    assert engine.calls() == ["POST /containers/create"]


@pytest.mark.anyio
async def test_limits_are_checked_before_the_engine_and_refusals_mapped(
    engine: ScriptedEngine, backend: Callable[[], DockerBackend]
) -> None:
    docker = backend()
    with pytest.raises(SandboxLimitError, match="cpus"):
        await docker.launch(_spec(cpus=0))
    assert engine.calls() == []

    @engine.route("POST", "/containers/create")
    async def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"message": "Range of CPUs is from 0.01 to 2.00"})

    with pytest.raises(SandboxLimitError, match="Range of CPUs") as caught:
        await docker.launch(_spec(cpus=64))
    assert isinstance(caught.value.__cause__, httpx.HTTPStatusError)
    await docker.aclose()


@pytest.mark.anyio
async def test_put_files_uploads_missing_parents_at_deepest_existing_dir(
    engine: ScriptedEngine, backend: Callable[[], DockerBackend], tmp_path: Path
) -> None:
    engine.existing |= {"/app"}
    uploads: list[tuple[str, dict[str, str], bytes]] = []

    @engine.route("PUT", f"/containers/{CID}/archive")
    async def upload(request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        uploads.append((request.url.params["path"], dict(request.headers), body))
        return httpx.Response(200)

    source = tmp_path / "data.csv"
    source.write_bytes(b"a,b\n")
    docker = backend()
    sandbox = await docker.launch(_spec(user="1000"))
    await sandbox.put_files("/app/assets/in", {"x/runbook.md": b"# hi", "data.csv": source})
    with pytest.raises(UnsafePathError):
        await sandbox.put_files("/app", {"../etc/passwd": b""})
    await sandbox.start()
    with pytest.raises(SandboxStateError):
        await sandbox.put_files("/app", {"late": b""})
    await sandbox.close()
    await docker.aclose()

    heads = [r.url.params["path"] for r in engine.requests if r.method == "HEAD"]
    assert heads == ["/app/assets/in", "/app/assets", "/app"]
    # The first upload gives the workdir to the numeric user; the second holds the files.
    assert [path for path, _, _ in uploads] == ["/", "/app"]
    _, headers, body = uploads[1]
    assert headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(body)) as archive:
        members = {m.name: m for m in archive.getmembers()}
        assert list(members) == [
            "assets",
            "assets/in",
            "assets/in/x",
            "assets/in/x/runbook.md",
            "assets/in/data.csv",
        ]
        assert {(m.uid, m.gid) for m in members.values()} == {(1000, 1000)}
        data = archive.extractfile("assets/in/data.csv")
        assert data is not None and data.read() == b"a,b\n"
    with tarfile.open(fileobj=io.BytesIO(uploads[0][2])) as archive:
        assert [(m.name, m.isdir(), m.uid) for m in archive.getmembers()] == [("app", True, 1000)]


@pytest.mark.anyio
async def test_output_is_demultiplexed_into_lines_and_stderr_tail(
    engine: ScriptedEngine, backend: Callable[[], DockerBackend]
) -> None:
    frames = [
        encode_frame(StreamKind.STDOUT, b'{"a": 1}\n{"b"'),
        encode_frame(StreamKind.STDERR, b"warning: x\n"),
        encode_frame(StreamKind.STDOUT, b": 2}\nlast"),
    ]

    @engine.route("GET", f"/containers/{CID}/logs")
    async def logs(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"".join(frames))  # follow=1, then the re-read

    @engine.route("GET", f"/containers/{CID}/json")
    async def inspect(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"State": {"ExitCode": 3, "OOMKilled": True}})

    docker = backend()
    sandbox = await docker.launch(_spec())
    await sandbox.start()
    lines = [line async for line in sandbox.stdout_lines()]
    status = await sandbox.wait(timeout=5)
    await sandbox.close()
    await docker.aclose()
    assert lines == ['{"a": 1}', '{"b": 2}', "last"]
    assert sandbox.stderr_tail() == "warning: x\n"
    assert (status.exit_code, status.oom_killed, status.timed_out) == (3, True, False)


@pytest.mark.anyio
async def test_output_the_follow_stream_missed_is_read_again_once(
    engine: ScriptedEngine, backend: Callable[[], DockerBackend]
) -> None:
    full = [
        encode_frame(StreamKind.STDOUT, b"one\ntw"),
        encode_frame(StreamKind.STDERR, b"e1"),
        encode_frame(StreamKind.STDOUT, b"o\nthree\n"),
        encode_frame(StreamKind.STDERR, b"e2"),
        encode_frame(StreamKind.STDOUT, b"four"),
    ]

    @engine.route("GET", f"/containers/{CID}/logs")
    async def logs(request: httpx.Request) -> httpx.Response:
        # The follow stream ends early, as Docker's sometimes does when a container exits.
        follow = request.url.params["follow"] == "1"
        return httpx.Response(200, content=b"".join(full[:3] if follow else full))

    docker = backend()
    sandbox = await docker.launch(_spec())
    await sandbox.start()
    lines = [line async for line in sandbox.stdout_lines()]
    await sandbox.close()
    await docker.aclose()
    assert lines == ["one", "two", "three", "four"]
    assert sandbox.stderr_tail() == "e1e2"
    follows = [r.url.params["follow"] for r in engine.requests if r.url.path.endswith("/logs")]
    assert follows == ["1", "0"]
    assert engine.calls("POST")[-1] == f"POST /containers/{CID}/wait"


@pytest.mark.anyio
async def test_wait_timeout_kills_through_the_engine(
    engine: ScriptedEngine, backend: Callable[[], DockerBackend]
) -> None:
    @engine.route("POST", f"/containers/{CID}/wait")
    async def wait(request: httpx.Request) -> httpx.Response:
        await engine.killed.wait()
        return httpx.Response(200, json={"StatusCode": 137})

    @engine.route("GET", f"/containers/{CID}/logs")
    async def logs(request: httpx.Request) -> httpx.Response:
        assert "follow" not in request.url.params
        return httpx.Response(200, content=encode_frame(StreamKind.STDERR, b"killed\n"))

    docker = backend()
    sandbox = await docker.launch(_spec())
    await sandbox.start()
    with anyio.fail_after(5):
        status = await sandbox.wait(timeout=0.05)
    await sandbox.close()
    await docker.aclose()
    assert status.timed_out
    assert engine.calls("POST")[-2:] == [
        f"POST /containers/{CID}/kill",
        f"POST /containers/{CID}/wait",
    ]
    assert sandbox.stderr_tail() == "killed\n"


@pytest.mark.anyio
async def test_close_is_idempotent_and_tolerates_a_gone_container(
    engine: ScriptedEngine, backend: Callable[[], DockerBackend]
) -> None:
    @engine.route("DELETE", f"/containers/{CID}")
    async def gone(request: httpx.Request) -> httpx.Response:
        assert request.url.params["force"] == "1"
        return httpx.Response(404, json={"message": "No such container"})

    docker = backend()
    sandbox = await docker.launch(_spec())
    await sandbox.close()
    await sandbox.close()
    await sandbox.kill()
    await docker.aclose()
    assert engine.calls("DELETE") == [f"DELETE /containers/{CID}"]


@pytest.mark.anyio
async def test_close_retries_after_an_engine_failure(
    engine: ScriptedEngine, backend: Callable[[], DockerBackend]
) -> None:
    answers = iter([httpx.Response(500, json={"message": "busy"}), httpx.Response(204)])

    @engine.route("DELETE", f"/containers/{CID}")
    async def flaky(request: httpx.Request) -> httpx.Response:
        return next(answers)

    docker = backend()
    sandbox = await docker.launch(_spec())
    await sandbox.close()  # logged, not raised: cleanup must not mask the caller's error
    await sandbox.close()
    await sandbox.close()
    await docker.aclose()
    assert len(engine.calls("DELETE")) == 2


@pytest.mark.anyio
async def test_copy_out_reads_the_archive_with_the_copy_rules(
    engine: ScriptedEngine, backend: Callable[[], DockerBackend], tmp_path: Path
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in [("out/ok.txt", b"fine"), ("out/big", b"b" * 100)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("out/pw")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    stat = base64.b64encode(json.dumps({"name": "out"}).encode()).decode()

    @engine.route("GET", f"/containers/{CID}/archive")
    async def get_archive(request: httpx.Request) -> httpx.Response:
        if request.url.params["path"] == "/app/missing":
            return httpx.Response(404, json={"message": "no such file"})
        assert request.url.params["path"] == "/app/results"
        headers = {"X-Docker-Container-Path-Stat": stat, "Content-Type": "application/x-tar"}
        return httpx.Response(200, headers=headers, content=buffer.getvalue())

    docker = backend()
    sandbox = await docker.launch(_spec())
    report = await sandbox.copy_out("/app/results", tmp_path / "dest", max_bytes=50, max_files=5)
    empty = await sandbox.copy_out("/app/missing", tmp_path / "d2", max_bytes=50, max_files=5)
    await sandbox.close()
    await docker.aclose()
    assert [(f.path, f.size) for f in report.files] == [("ok.txt", 4)]
    assert [(s.path, s.reason) for s in report.skipped] == [
        ("big", SkipReason.TOO_LARGE),
        ("pw", SkipReason.SYMLINK),
    ]
    assert (tmp_path / "dest" / "ok.txt").read_bytes() == b"fine"
    assert empty.files == [] and empty.skipped == []
    assert engine.requests[-2].headers["accept-encoding"] == "identity"


@pytest.mark.anyio
async def test_remove_orphans_filters_by_label_and_keeps_live_runs(
    engine: ScriptedEngine, backend: Callable[[], DockerBackend]
) -> None:
    @engine.route("GET", "/containers/json")
    async def listing(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.url.params["filters"]) == {"label": ["jetty-proxy.managed=true"]}
        assert request.url.params["all"] == "1"
        return httpx.Response(
            200,
            json=[
                {"Id": "a", "Labels": {"jetty-proxy.run-id": "live"}},
                {"Id": "b", "Labels": {"jetty-proxy.run-id": "dead"}},
            ],
        )

    @engine.route("DELETE", "/containers/b")
    async def delete(request: httpx.Request) -> httpx.Response:
        return httpx.Response(204)

    docker = backend()
    assert await docker.remove_orphans(Orphans({"live"})) == ["dead"]
    await docker.aclose()
    assert engine.calls("DELETE") == ["DELETE /containers/b"]


@pytest.mark.anyio
async def test_transport_errors_become_engine_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    docker = DockerBackend(httpx.MockTransport(refuse), where="unix:///nowhere.sock")
    assert not await docker.ping()
    with pytest.raises(EngineUnavailable, match=r"nowhere\.sock") as caught:
        await docker.launch(_spec())
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    await docker.aclose()


@pytest.mark.anyio
async def test_engine_errors_carry_the_engine_message(
    engine: ScriptedEngine, backend: Callable[[], DockerBackend]
) -> None:
    @engine.route("POST", f"/containers/{CID}/start")
    async def fail(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"message": 'exec: "claude": not found'})

    docker = backend()
    sandbox = await docker.launch(_spec())
    with pytest.raises(SandboxError, match='"claude": not found'):
        await sandbox.start()
    await sandbox.close()
    await docker.aclose()


def test_from_url() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        DockerBackend.from_url("ssh://host")
    with pytest.raises(ValueError, match="absolute"):
        DockerBackend.from_url("unix://relative.sock")
