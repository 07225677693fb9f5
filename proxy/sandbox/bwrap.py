"""The bubblewrap command line for the local backend (see `proxy.sandbox.local`)."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from proxy.sandbox.base import SandboxSpec
from proxy.sandbox.files import clean_absolute_dir

# Top-level directories the sandbox does not get from the host: kernel file systems are
# made fresh, and /root, /home and /run hold credentials and sockets (a Docker socket is
# root on the host). bwrap's own root is a tmpfs, so mount points can be created under them.
HIDDEN_ROOTS = frozenset({"app", "dev", "home", "proc", "root", "run", "sys", "tmp"})


def bwrap_command(
    bwrap: str, spec: SandboxSpec, app_dir: Path, home: Path, home_at: str | None = None
) -> list[str]:
    """``bwrap ... -- argv``: host directories read-only, ``app_dir`` at /app, ``home`` rw.

    ``home`` is bound at ``home_at`` (the sandbox's HOME; by default its own host path).
    New pid, ipc and uts namespaces (and net, unless ``spec.network_enabled``), all
    capabilities dropped, the sandbox dies with its parent.
    """
    argv = [bwrap, "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    argv += ["--cap-drop", "ALL"]
    if not spec.network_enabled:
        argv.append("--unshare-net")
    home_target = clean_absolute_dir(home_at or str(home))
    mounts = spec.host_mounts()
    targets = [clean_absolute_dir(mount.container_path) for mount in mounts]
    argv += _host_view(Path("/"), _shadowed([home_target, *targets]))
    # A fresh, private /tmp inside the sandbox, not the host's.
    argv += ["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/run"]  # noqa: S108
    argv += ["--bind", str(app_dir), "/app", "--bind", str(home), str(home_target)]
    for mount, target in zip(mounts, targets, strict=True):
        kind = "--ro-bind" if mount.read_only else "--bind"
        argv += [kind, str(mount.host_path), str(target)]
    return [*argv, "--chdir", spec.workdir, "--", *spec.argv]


def _shadowed(targets: list[PurePosixPath]) -> set[Path]:
    """Host directories that hold a mount point: rebuilt entry by entry, not bound whole.

    A read-only bind of, say, /opt would leave bwrap unable to create /opt/jetty/agents for
    a mount; a tmpfs directory with /opt's entries bound one by one has room for it.
    """
    shadowed: set[Path] = set()
    for target in targets:
        if len(target.parts) < 2 or target.parts[1] in HIDDEN_ROOTS:
            continue
        for ancestor in reversed(target.parents[:-1]):
            if not Path(ancestor).is_dir() or Path(ancestor).is_symlink():
                break
            shadowed.add(Path(ancestor))
    return shadowed


def _host_view(directory: Path, shadowed: set[Path]) -> list[str]:
    argv: list[str] = []
    for entry in sorted(directory.iterdir()):
        if directory == Path("/") and entry.name in HIDDEN_ROOTS:
            continue
        if entry.is_symlink():
            argv += ["--symlink", os.readlink(entry), str(entry)]
        elif entry in shadowed:
            argv += ["--dir", str(entry), *_host_view(entry, shadowed)]
        elif entry.exists():
            argv += ["--ro-bind", str(entry), str(entry)]
    return argv
