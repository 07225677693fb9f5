"""The image a run will use, decided once, before the run, by what the backend can do.

A backend that builds images (`~proxy.sandbox.Capabilities`) has an image engine, and
`~proxy.environments.Environments` checks the environment there: snapshots, images and
package builds, with the slow part (pull, build) left to the run. Any other backend runs only
an image it already has, named with ``jetty.image``.
"""

from __future__ import annotations

from proxy.environments import CheckedEnvironment, Environments
from proxy.errors import InvalidField, NotImplementedYet
from proxy.jetty import Environment
from proxy.runs.errors import SandboxUnavailable
from proxy.sandbox import ImageNotFound, SandboxBackend, SandboxError

__all__ = ["check_environment"]


async def check_environment(
    environment: Environment, backend: SandboxBackend, environments: Environments | None
) -> CheckedEnvironment:
    """The image ``environment`` runs in, after refusing what cannot work (a 4xx, or a 503
    when the engine does not answer). ``environments`` is the image engine, if any."""
    if environments is not None:
        return await environments.check(environment)
    if environment.kind in ("snapshot", "build"):
        what = "Snapshots" if environment.kind == "snapshot" else "Dockerfile builds"
        raise NotImplementedYet(
            f"{what} need a sandbox backend that builds images (docker), and this server runs"
            f" the {backend.name} one; name an image with jetty.image.",
            param="jetty.snapshot" if environment.kind == "snapshot" else "jetty.base_image",
        )
    image = environment.reference
    if not image:
        raise InvalidField(
            "jetty.image",
            "No environment: give jetty.image, or configure a default image on the server"
            " (JETTY_PROXY_DEFAULT_IMAGE).",
        )
    try:
        await backend.check_image(image)
    except ImageNotFound as exc:
        raise InvalidField(
            "jetty.image", f"Image '{image}' is not present on the sandbox engine."
        ) from exc
    except SandboxError as exc:
        raise SandboxUnavailable.from_error(exc) from exc
    return CheckedEnvironment(environment, image)
