"""Why an environment could not be had, each as a :class:`~proxy.errors.ProxyError`.

The same errors serve both places they can surface: as an HTTP error when the request is
checked (an unknown snapshot is a 400 before anything starts), and in-band, as a failed run
with the error's ``code``, when a pull or a build fails after the stream has begun::

    EnvironmentFailed                 400  the base class; ``code`` says which of these
    ├── UnknownSnapshot               400  snapshot_unknown (param jetty.snapshot)
    ├── SnapshotNotBuilt              503  snapshot_not_built: the operator must build it
    ├── ImageNotPublic                400  image_not_public: the registry answered 401/403
    ├── ImageNotFound                 400  image_not_found: no such repository or tag
    ├── WrongPlatform                 400  image_platform: not linux/amd64
    ├── NoBash                        400  image_no_bash
    ├── RegistryUnreachable           502  registry_unreachable
    ├── BuildFailed                   400  build_failed, with the tail of the build log
    └── EnvironmentEngineUnavailable  503  environment_engine_unavailable

Messages are written for the person who sent the request: they name the image and say what
is wrong with it, not which engine call failed.
"""

from __future__ import annotations

from proxy.errors import ProxyError


class EnvironmentFailed(ProxyError):
    """An environment could not be resolved; subclasses say why."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "environment_failed"


class UnknownSnapshot(EnvironmentFailed):
    code = "snapshot_unknown"

    def __init__(self, name: str, known: list[str]) -> None:
        names = ", ".join(known) or "none are configured"
        super().__init__(f"Unknown snapshot '{name}'; known: {names}.", param="jetty.snapshot")
        self.name = name


class SnapshotNotBuilt(EnvironmentFailed):
    status_code = 503
    error_type = "server_error"
    code = "snapshot_not_built"

    def __init__(self, name: str, image: str, *, buildable: bool) -> None:
        how = (
            f"build it on the server with `jetty-proxy snapshots build {name}`"
            if buildable
            else f"load or pull {image} on the server's engine"
        )
        super().__init__(
            f"Snapshot '{name}' is not built on this server (no image {image}); {how}.",
            param="jetty.snapshot",
        )


class ImageNotPublic(EnvironmentFailed):
    code = "image_not_public"


class ImageNotFound(EnvironmentFailed):
    code = "image_not_found"


class WrongPlatform(EnvironmentFailed):
    code = "image_platform"


class NoBash(EnvironmentFailed):
    code = "image_no_bash"


class RegistryUnreachable(EnvironmentFailed):
    status_code = 502
    error_type = "upstream_error"
    code = "registry_unreachable"
    retryable = True


class BuildFailed(EnvironmentFailed):
    code = "build_failed"

    def __init__(self, message: str, log_tail: str) -> None:
        tail = log_tail.strip()
        super().__init__(
            f"{message}\n--- last lines of the build log ---\n{tail}" if tail else message
        )
        self.log_tail = tail


class EnvironmentEngineUnavailable(EnvironmentFailed):
    status_code = 503
    error_type = "server_error"
    code = "environment_engine_unavailable"
    retryable = True
