"""bin/gpu-check, the registry-to-GPU check, run here on the CPU (`--device cpu`) with a small checkpoint, and the
loader behaviour its time budget relies on: a stream stopped early stops its downloads.

Needs torch (the `tests` session has it through vLLM's CPU build); marked `gpu_check`, which `nox -s fast`
deselects. torch is imported inside the tests so that the module still collects without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support.commands import REPO_ROOT

pytestmark = [pytest.mark.gpu_check]

SCRIPT = REPO_ROOT / "bin" / "gpu-check"
LOADING = ("stream_cold", "stream_warm", "safetensors_local")


def run_check(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:  # type: ignore[type-arg]
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out), "--work", str(work),
                           *args], capture_output=True, text=True, env=env, timeout=600, check=False)
    report = json.loads((out / "gpu-check.json").read_text()) if (out / "gpu-check.json").exists() else {}
    assert list(work.iterdir()) == [], "the run left files in its work dir"
    return done, report


def test_every_method_lands_the_whole_checkpoint_with_the_same_checksum(tmp_path):
    done, report = run_check(tmp_path, "--size-gib", "0.1", "--shards", "4")
    assert done.returncode == 0, done.stderr
    checkpoint = report["checkpoint"]
    assert checkpoint["shards"] == 4
    assert checkpoint["config"]["architectures"] == ["LlamaForCausalLM"]
    methods = report["methods"]
    assert set(methods) == {"disk_read", *LOADING}
    assert methods["disk_read"]["status"] == "complete"
    assert methods["disk_read"]["bytes"] == checkpoint["file_bytes"]
    for name in LOADING:
        method = methods[name]
        assert method["status"] == "complete", (name, method)
        assert method["bytes"] == checkpoint["bytes"], name
        assert method["tensors"] == checkpoint["tensors"], name
        # Taken from what landed, against the sums the writer took: a dropped or changed byte shows here.
        assert method["checksum"] == checkpoint["checksum"], name
        assert method["first_tensor_seconds"] <= method["seconds"], name
    table = (tmp_path / "out" / "gpu-check.md").read_text()
    assert all(f"| {name} | complete |" in table for name in ("disk_read", *LOADING))
    assert table in done.stdout


def test_a_spent_budget_stops_the_run_and_still_writes_the_report(tmp_path):
    done, report = run_check(tmp_path, "--size-gib", "0.1", "--time-budget", "1")
    assert done.returncode == 3, done.stderr
    assert report["stopped"].startswith("the time budget ran out")
    assert {method["status"] for method in report["methods"].values()} == {"skipped"}
    assert (tmp_path / "out" / "gpu-check.md").exists()


def test_cuda_without_a_gpu_is_refused_with_the_fix(tmp_path):
    import torch

    if torch.cuda.is_available():  # pragma: no cover - a machine with a GPU runs the real thing instead
        return
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, check=False, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr and "--device cpu" in done.stderr


def test_a_stream_stopped_early_stops_its_downloads(registry, tmp_path, cache_dir):
    """The last shard's download waits for the stream to be cancelled: closing the stream after the first tensor
    must cancel it (the check's time budget and a failing load_weights rely on it), not leave it running."""
    import hashlib

    from support.models import push_model, write_model

    from oci_crane_loader.cache.store import Store
    from oci_crane_loader.loader import stream_weights
    from oci_crane_loader.pull import Puller
    from oci_crane_loader.registry.crane import Crane
    from oci_crane_loader.safetensors_check import read_index

    source = write_model(tmp_path / "src", shards=3)
    push_model(source, f"{registry.host}/acme/stop:v1", tmp_path)
    last_shard = "sha256:" + hashlib.sha256((source / "model-00003-of-00003.safetensors").read_bytes()).hexdigest()
    cancelled_while_held: list[bool] = []
    held = threading.Event()

    class GatedCrane(Crane):
        def blob(self, pinned, destination, progress=None, *, size=None, cancel=None):  # type: ignore[no-untyped-def]
            if pinned.endswith(last_shard):
                held.set()
                cancelled_while_held.append(cancel is not None and cancel.wait(timeout=20))
            super().blob(pinned, destination, progress, size=size, cancel=cancel)

    puller = Puller(Store(cache_dir), GatedCrane(), jobs=3)
    resolved, plan, config_dir = puller.prepare(f"{registry.host}/acme/stop:v1")
    weights = stream_weights(puller, resolved, plan, read_index(config_dir / "model.safetensors.index.json"))
    next(weights)
    assert held.wait(timeout=20)
    weights.close()
    assert cancelled_while_held == [True]
    downloading = ("oci-crane-weights", "oci-crane-blob")  # stream_weights' thread and ensure_blobs' pool
    assert [thread.name for thread in threading.enumerate() if thread.name.startswith(downloading)] == []
    assert not Store(cache_dir).blob_path(last_shard).exists()
