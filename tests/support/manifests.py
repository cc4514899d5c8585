"""The Kubernetes recipes in deploy/: loaded, checked against the Kubernetes client's typed models, and their
containers' exact command lines run here, with volume paths mapped to directories of the test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from support.commands import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
RECIPE_REFERENCE = "ghcr.io/acme/llama:v1"  # the reference every recipe names; tests swap in a loopback one

# The kinds the recipes use, and the Kubernetes client's model for each.
MODELS = {("apps/v1", "Deployment"): "V1Deployment", ("v1", "Service"): "V1Service",
          ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim", ("v1", "Secret"): "V1Secret"}


def load(name: str) -> list[dict[str, Any]]:
    import yaml

    return [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc is not None]


def find(name: str, kind: str) -> dict[str, Any]:
    (doc,) = [doc for doc in load(name) if doc["kind"] == kind]
    return doc


class _Response:
    def __init__(self, document: object) -> None:
        self.data = json.dumps(document)


def typed_round_trip(document: object, model: str) -> object:
    """``document`` read into the client's typed ``model`` and written back: a misspelled or misplaced field is
    dropped on the way (the client ignores unknown keys), so comparing with the input catches it; a missing
    required field raises."""
    from kubernetes.client import ApiClient

    client = ApiClient()
    try:  # kubernetes >= 35: deserialize(text, type, content_type)
        typed = client.deserialize(json.dumps(document), model, "application/json")
    except TypeError:  # older clients: deserialize(response, type), the response holding .data
        typed = client.deserialize(_Response(document), model)
    return client.sanitize_for_serialization(typed)


def volume_dirs(pod: dict[str, Any], root: Path) -> dict[str, Path]:
    """A fresh directory per volume of the pod, as the kubelet would provide (empty)."""
    dirs = {}
    for volume in pod.get("volumes", []):
        dirs[volume["name"]] = root / "volumes" / volume["name"]
        dirs[volume["name"]].mkdir(parents=True)
    return dirs


def mount_map(container: dict[str, Any], volumes: dict[str, Path]) -> dict[str, Path]:
    return {mount["mountPath"]: volumes[mount["name"]] for mount in container.get("volumeMounts", [])}


def local_path(text: str, mounts: dict[str, Path]) -> str:
    """A path inside the container, as the directory of the test that stands for its volume."""
    for mount_path, directory in sorted(mounts.items(), key=lambda item: -len(item[0])):
        if text == mount_path or text.startswith(mount_path.rstrip("/") + "/"):
            return str(directory / text[len(mount_path):].lstrip("/"))
    return text


def container_argv(container: dict[str, Any], mounts: dict[str, Path], reference: str,
                   extra: list[str] | None = None) -> list[str]:
    """The container's command and args exactly as written (plus what Kubernetes or KServe appends), the
    reference and the volume paths swapped; `oci-crane` is this checkout's."""
    words = [*container.get("command", []), *container.get("args", []), *(extra or [])]
    words = [local_path(word.replace(RECIPE_REFERENCE, reference), mounts) for word in words]
    assert words[0] == "oci-crane", words
    return [sys.executable, "-m", "oci_crane_loader", *words[1:]]


def container_env(container: dict[str, Any], mounts: dict[str, Path], reference: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DOCKER_CONFIG", None)
    for entry in container.get("env", []):
        env[entry["name"]] = local_path(entry["value"].replace(RECIPE_REFERENCE, reference), mounts)
    return env


def run_container(container: dict[str, Any], mounts: dict[str, Path], reference: str, *,
                  extra: list[str] | None = None, env: dict[str, str] | None = None,
                  ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(container_argv(container, mounts, reference, extra), capture_output=True, text=True,
                          env={**container_env(container, mounts, reference), **(env or {})}, cwd=REPO_ROOT,
                          timeout=300, check=False)


def project_secret(volume: dict[str, Any], secret_data: dict[str, str], directory: Path) -> None:
    """What the kubelet writes for a secret volume: each listed key under its ``path``."""
    for item in volume["secret"]["items"]:
        (directory / item["path"]).write_text(secret_data[item["key"]])
