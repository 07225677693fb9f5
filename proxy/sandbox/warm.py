"""Warm sandboxes: started before any run asks for them, then claimed by one run.

A backend whose `~proxy.sandbox.base.Capabilities` say ``warm_pool`` is also a `WarmLauncher`:
it starts a sandbox from a `WarmSpec` (the image, mounts and limits, nothing of a run) that
waits until a run whose `~proxy.sandbox.base.SandboxSpec` fits it claims it
(`WarmSandbox.claim`); from then on it is that run's `~proxy.sandbox.base.Sandbox`.
The pools that keep them are the run path's (`proxy.runs.pools`).

A warm sandbox may also start a `Standby`: a process (an agent CLI) that loads while the
sandbox waits and then waits on its stdin. A run that asks for what the standby was started
with takes it over at its claim (`Takeover`): it skips the process's whole start-up. Any
other run's claim stops the standby and starts the run's own command, as without one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from proxy.sandbox.base import (
    LABEL_MANAGED,
    LABEL_POOL,
    LABEL_RUN_ID,
    Mount,
    Sandbox,
    SandboxLimitError,
    SandboxSpec,
)

__all__ = ["Standby", "Takeover", "WarmLauncher", "WarmSandbox", "WarmSpec"]


@dataclass(frozen=True)
class Standby:
    """A process a warm sandbox starts as it starts: ``argv`` with exactly ``env``, in its
    workdir, stdin an input that stays open until a run takes it over (`Takeover`). Nothing
    of a run may be in either (its credential is one no run holds yet, see
    `proxy.runs.pools`)."""

    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Takeover:
    """How a run takes over its warm sandbox's `Standby`: ``prepare``, a ``/bin/sh`` script
    (the run's directories and small files), runs first; then ``stdin`` reaches the standby,
    whose input then ends. The standby's output and exit are then the run's. Where it has
    exited before the claim, the run's own command (`SandboxSpec.argv`) runs instead."""

    prepare: str
    stdin: bytes


@dataclass(frozen=True)
class WarmSpec:
    """A sandbox started before any run asks for it (see `WarmLauncher`).

    Nothing of a run is in it: no command, environment or files, only the image, the mounts
    and the limits, which a run's spec must match to claim it (`fits`). ``id`` stands in for
    a run id on the engine (its `LABEL_RUN_ID`), ``pool`` names the pool it is kept in
    (`LABEL_POOL`); ``labels`` are extra engine labels, as in `SandboxSpec`.
    """

    id: str
    pool: str
    image: str
    workdir: str = "/app"
    mounts: Sequence[Mount] = ()
    cpus: float | None = None
    memory_bytes: int | None = None
    pids_limit: int = 512
    network_enabled: bool = False
    user: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    standby: Standby | None = None

    def fits(self, spec: SandboxSpec) -> bool:
        """Whether a run of ``spec`` can claim this sandbox: it has `the_shape_of` ``spec``,
        and everything ``spec`` mounts (`SandboxSpec.host_mounts`) among its mounts."""
        try:
            mounts = set(spec.host_mounts())
        except SandboxLimitError:  # its agent is not installed here: no warm sandbox has it
            return False
        return self.the_shape_of(spec) and mounts <= set(self.mounts)

    def the_shape_of(self, spec: SandboxSpec) -> bool:
        """Whether ``spec`` asks for this sandbox's image, workdir, user, limits and network
        (whatever it mounts)."""
        return (
            spec.image == self.image
            and spec.workdir == self.workdir
            and spec.user == self.user
            and spec.cpus == self.cpus
            and spec.memory_bytes == self.memory_bytes
            and spec.pids_limit == self.pids_limit
            and spec.network_enabled == self.network_enabled
        )

    def all_labels(self) -> dict[str, str]:
        """The extra labels plus the backend-owned ones, which cannot be overridden."""
        return {
            **self.labels,
            LABEL_RUN_ID: self.id,
            LABEL_POOL: self.pool,
            LABEL_MANAGED: "true",
        }


@runtime_checkable
class WarmSandbox(Protocol):
    """A sandbox started ahead of its run, waiting with nothing of any run inside.

    Lifecycle, as a pool writes it::

        warm = await backend.launch_warm(warm_spec)      # created and started, waiting
        ...
        sandbox = await warm.claim(run_spec)             # now the run's: as after launch()
        await sandbox.put_files(...)
        await sandbox.start()                            # hands it the run's argv and env
        ...                                              # then as any sandbox, closed by its run

    A warm sandbox serves one run: once claimed, its `close` leaves it to the `Sandbox` the
    claim returned.
    """

    @property
    def spec(self) -> WarmSpec: ...

    async def claim(self, spec: SandboxSpec, takeover: Takeover | None = None) -> Sandbox:
        """Make this sandbox ``spec``'s, in the created state of `SandboxBackend.launch`:
        `Sandbox.put_files` works, and `Sandbox.start` runs ``spec.argv`` with ``spec.env``
        (its files, environment and command reach the sandbox only then). With ``takeover``
        (only for a sandbox with a `WarmSpec.standby`), `Sandbox.start` hands the standby
        the run instead; without, a standby is stopped first.

        Raises `SandboxStateError` when ``spec`` does not fit (`WarmSpec.fits`) or it was
        claimed already, and `SandboxError` when it no longer waits (its process is gone);
        either way the caller launches a sandbox instead.
        """
        ...

    async def close(self) -> None:
        """Remove it if it was not claimed. Safe to call twice."""
        ...


@runtime_checkable
class WarmLauncher(Protocol):
    """What a backend whose `Capabilities` say ``warm_pool`` adds to `SandboxBackend`."""

    async def launch_warm(self, spec: WarmSpec) -> WarmSandbox:
        """Create and start a sandbox for ``spec`` that waits for a run to `WarmSandbox.claim`
        it. Sandboxes left by a process that stopped are removed by `remove_orphans`, as any
        other: they carry the spec's labels."""
        ...
