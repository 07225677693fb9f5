"""Environment resolution, cold and warm, for each of the three ways to name an environment.

    snapshot  cold: the first resolution in a fresh process (a snapshot is checked for bash
              when it is built, so this is one look-up too); warm: the same, again
    image     cold: absent, pulled from the registry; warm: present
    build     cold: a package build (apt + pip) from nothing; warm: the same request again

Each cold case is measured ``--cold`` times (the image removed before each, so the build
has no cache to lean on), each warm case ``--warm`` times, and the three are printed side by
side. Needs a Docker engine and the local registry of ``scripts/ci/registry.sh``, and for
the build Debian's and PyPI's registries reachable from the engine::

    python benchmarks/environments.py [--docker-host unix:///…] [--registry 127.0.0.1:5000]
        [--base-image IMAGE] [--cold 2] [--warm 20] [--ca-bundle PATH]

The python312-uv snapshot is built first if it is missing (offline, from ``--base-image``).
Figures depend on the machine and the network; they are printed, not asserted.
"""

from __future__ import annotations

import argparse
import os
import ssl
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio

from proxy.environments import Environments
from proxy.environments.cache import pulled_marker
from proxy.jetty.plan import Environment
from proxy.settings import Settings, SnapshotSettings

DEFAULT_BASE = "127.0.0.1:5000/jetty/testenv:bookworm"


@dataclass
class Result:
    way: str
    cold: list[float]
    warm: list[float]

    def row(self) -> str:
        warm = sorted(self.warm)
        p95 = warm[min(len(warm) - 1, int(len(warm) * 0.95))]
        cold = statistics.median(self.cold)
        return (
            f"{self.way:<10}{cold:>10.2f} s{statistics.median(warm) * 1000:>12.1f} ms"
            f"{p95 * 1000:>10.1f} ms{cold / statistics.median(warm):>12.0f}x"
        )


async def quiet(text: str) -> None:
    pass


async def timed(work: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await work()
    return time.perf_counter() - started


async def measure(
    settings: Settings, way: str, environment: Environment, cold: int, warm: int
) -> Result:
    colds: list[float] = []
    for _ in range(cold):
        environments = Environments.from_settings(settings)  # fresh: no cached verdicts
        try:
            reference = (await environments.check(environment)).reference
            if way != "snapshot":
                await environments.engine.remove(reference)
                await environments.engine.remove(pulled_marker(reference))
            colds.append(await timed(partial(environments.resolve, environment, progress=quiet)))
        finally:
            await environments.aclose()
    environments = Environments.from_settings(settings)
    try:
        await environments.resolve(environment, progress=quiet)
        warms = [
            await timed(partial(environments.resolve, environment, progress=quiet))
            for _ in range(warm)
        ]
    finally:
        await environments.aclose()
    return Result(way, colds, warms)


async def main(args: argparse.Namespace) -> None:
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="jetty-bench-")),
        docker_host=args.docker_host,
        build_ca_bundle=args.ca_bundle,
        snapshots={"python312-uv": SnapshotSettings(build_args={"BASE_IMAGE": args.base_image})},
    )
    environments = Environments.from_settings(settings)
    try:
        snapshot = environments.catalog.get("python312-uv")
        if await environments.snapshot_image(snapshot) is None:
            print("building the python312-uv snapshot first ...")
            await environments.build_snapshot(snapshot, progress=quiet)
    finally:
        await environments.aclose()

    cases = [
        ("snapshot", Environment("snapshot", "python312-uv")),
        ("image", Environment("image", f"{args.registry}/acme/env:v1")),
        (
            "build",
            Environment("build", None, args.base_image, ("six==1.16.0",), ("python3-pip",)),
        ),
    ]
    results = [await measure(settings, way, env, args.cold, args.warm) for way, env in cases]
    print(f"cold: {args.cold} runs (median shown), warm: {args.warm} runs")
    print(f"{'way':<10}{'cold':>12}{'warm p50':>15}{'warm p95':>13}{'cold/warm':>13}")
    for result in results:
        print(result.row())


def _host_ca() -> str | None:
    paths = ssl.get_default_verify_paths()
    return next((p for p in (paths.cafile, paths.openssl_cafile) if p and Path(p).is_file()), None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--docker-host",
        default=os.environ.get("JETTY_PROXY_DOCKER_HOST") or os.environ.get("DOCKER_HOST"),
    )
    parser.add_argument(
        "--registry", default=os.environ.get("JETTY_PROXY_TEST_REGISTRY", "127.0.0.1:5000")
    )
    parser.add_argument("--base-image", default=DEFAULT_BASE)
    parser.add_argument("--cold", type=int, default=2)
    parser.add_argument("--warm", type=int, default=20)
    parser.add_argument(
        "--ca-bundle",
        type=Path,
        default=os.environ.get("JETTY_PROXY_BUILD_CA_BUNDLE") or _host_ca(),
        help="CA bundle the build trusts (default: this host's)",
    )
    anyio.run(main, parser.parse_args())
