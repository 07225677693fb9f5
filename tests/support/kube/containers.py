"""A Pod's container as a Docker container, and the container statuses a kubelet reports.

Pure: no engine calls. See `tests.support.kube.kubelet` for what is emulated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.kube.quantity import cpu_cores, memory_bytes
from tests.support.kube.store import Obj


class ContainerRefused(Exception):
    """A container cannot be created; ``reason`` is the kubelet's waiting reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def docker_config(
    pod: Obj,
    container: dict[str, Any],
    volumes: Path,
    image: str,
    image_user: str,
    labels: dict[str, str],
) -> dict[str, Any]:
    """The engine's ``POST /containers/create`` body for a Pod's container.

    Raises `ContainerRefused` where the kubelet would not create the container.
    """
    pod_security = pod["spec"].get("securityContext") or {}
    security = {**pod_security, **(container.get("securityContext") or {})}
    env = []
    for item in container.get("env") or []:
        if "valueFrom" in item:
            raise ContainerRefused("CreateContainerConfigError", "valueFrom is not emulated")
        env.append(f"{item['name']}={item.get('value', '')}")
    user = ""
    if "runAsUser" in security:
        user = str(security["runAsUser"])
        if "runAsGroup" in security:
            user += f":{security['runAsGroup']}"
    uid = security.get("runAsUser")
    if security.get("runAsNonRoot") and uid in (None, 0):
        image_uid = image_user.partition(":")[0]
        if uid == 0 or not image_uid.isdigit() or image_uid == "0":
            # The kubelet cannot tell a named user's uid either, and refuses it too.
            raise ContainerRefused(
                "CreateContainerConfigError",
                "container has runAsNonRoot and image will run as root",
            )
    limits = (container.get("resources") or {}).get("limits") or {}
    memory = memory_bytes(limits["memory"]) if "memory" in limits else 0
    capabilities = security.get("capabilities") or {}
    command, args = container.get("command"), container.get("args")
    mounts = []
    for mount in container.get("volumeMounts") or []:
        mounts.append(
            {
                "Type": "bind",
                "Source": str(volumes / mount["name"]),
                "Target": mount["mountPath"],
                "ReadOnly": bool(mount.get("readOnly")),
            }
        )
    body: dict[str, Any] = {
        "Image": image,
        "Env": env,
        "WorkingDir": container.get("workingDir") or "",
        "User": user,
        "Labels": labels,
        "HostConfig": {
            "NetworkMode": "host",
            "Mounts": mounts,
            "NanoCpus": round(cpu_cores(limits["cpu"]) * 1e9) if "cpu" in limits else 0,
            "Memory": memory,
            "MemorySwap": memory,
            "CapDrop": list(capabilities.get("drop") or []),
            "CapAdd": list(capabilities.get("add") or []),
            "ReadonlyRootfs": bool(security.get("readOnlyRootFilesystem")),
            "SecurityOpt": (
                ["no-new-privileges"] if security.get("allowPrivilegeEscalation") is False else []
            ),
            "LogConfig": {"Type": "json-file", "Config": {}},
        },
    }
    # Kubernetes: command replaces ENTRYPOINT and, without args, the image's CMD too.
    if command is not None:
        body["Entrypoint"] = list(command)
        body["Cmd"] = list(args or [])
    elif args is not None:
        body["Cmd"] = list(args)
    return body


def image_user_of(info: dict[str, Any]) -> str:
    return str((info.get("Config") or {}).get("User") or "")


def container_status(container: dict[str, Any], container_id: str, image_id: str) -> Obj:
    return {
        "name": container["name"],
        "image": container["image"],
        "imageID": image_id,
        "containerID": f"docker://{container_id}",
        "ready": False,
        "restartCount": 0,
    }


def waiting_status(container: dict[str, Any], reason: str, message: str | None = None) -> Obj:
    waiting = {"reason": reason} if message is None else {"reason": reason, "message": message}
    return {
        "name": container["name"],
        "image": container["image"],
        "imageID": "",
        "ready": False,
        "restartCount": 0,
        "started": False,
        "state": {"waiting": waiting},
    }


def qos_class(containers: list[dict[str, Any]]) -> str:
    resources = [c.get("resources") or {} for c in containers]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    guaranteed = all(
        (r.get("limits") or {}).keys() >= {"cpu", "memory"}
        and (r.get("requests") or r.get("limits")) == r.get("limits")
        for r in resources
    )
    return "Guaranteed" if guaranteed else "Burstable"
