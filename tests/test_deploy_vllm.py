"""`oci-crane serve` end to end with vLLM's CPU build: the container of deploy/shared-cache.yaml (the Dockerfile's
entry point, configured by VLLM_MODEL and VLLM_ARGS) run as written, serving a model from a loopback registry
(docs/deploy.md)."""

from __future__ import annotations

import os
import sys

import pytest
from support.manifests import container_argv, container_env, find, mount_map, volume_dirs
from support.models import push_model, tree_bytes
from support.vllm_server import get, post, vllm_server, write_tiny_llama

# Marked, and vLLM looked for inside the test: `-m "not vllm"` (nox -s fast) deselects it instead of skipping it.
pytestmark = [pytest.mark.vllm]


def test_shared_cache_recipe_serves_vllm_model_from_the_environment(registry, tmp_path):
    pytest.importorskip("vllm", reason="vLLM is not installed: `nox -s tests` installs its CPU build")
    source = write_tiny_llama(tmp_path / "tiny")
    reference = f"{registry.host}/acme/tiny:v1"
    push_model(source, reference, tmp_path)
    pod = find("shared-cache.yaml", "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = mount_map(container, volume_dirs(pod, tmp_path))
    env = container_env(container, mounts, reference)
    env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env['PATH']}"  # where the image has vllm
    # The container's command and args as written; then the test's port and CPU-sized options, which vLLM reads
    # after (and so over) the recipe's --host 0.0.0.0 --port 8000 and VLLM_ARGS' --max-model-len 8192.
    launcher = container_argv(container, mounts, reference)
    with vllm_server("", env=env, log=tmp_path / "serve.log", launcher=launcher) as base:
        listed = [entry["id"] for entry in get(f"{base}/v1/models")["data"]]  # type: ignore[union-attr,index]
        body = post(f"{base}/v1/completions", {"model": "llama", "prompt": "registries hold", "max_tokens": 4,
                                               "temperature": 0})
    assert listed == ["llama"]  # VLLM_ARGS' --served-model-name
    assert body["choices"][0]["text"].strip()  # type: ignore[index]
    # --download-dir came from OCI_CRANE_LOADER_CACHE=/cache, the PersistentVolumeClaim's mount.
    (model_dir,) = (mounts["/cache"] / "models" / "sha256").iterdir()
    assert tree_bytes(model_dir) == tree_bytes(source)
    assert f"--load-format oci-crane --download-dir {mounts['/cache']}" in (tmp_path / "serve.log").read_text()
