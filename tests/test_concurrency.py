"""Many processes on one cache: twenty different models fetched at once, and two loader processes (as
tensor-parallel workers) preparing one model at once, each blob downloaded once. Real `crane registry serve`."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from support.commands import REPO_ROOT, run_cli
from support.models import push_model, tree_bytes, write_model

GIVE_UP = 600  # seconds: only to keep a broken run from hanging the suite


def python(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO_ROOT)


def test_twenty_fetches_of_different_models_at_once(registry, tmp_path, cache_dir):
    sources = {}
    for number in range(20):
        reference = f"{registry.host}/acme/model{number}:v1"
        sources[reference] = write_model(tmp_path / f"src{number}", shards=1 + number % 2, seed=number)
        push_model(sources[reference], reference, tmp_path)
    running = {reference: python("-m", "oci_crane_loader", "fetch", reference, "--cache-dir", str(cache_dir), "-q")
               for reference in sources}
    for reference, proc in running.items():
        out, err = proc.communicate(timeout=GIVE_UP)
        assert proc.returncode == 0, err
        assert tree_bytes(Path(out.strip())) == tree_bytes(sources[reference])
    verified = run_cli("cache", "verify", "--cache-dir", str(cache_dir), "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert json.loads(verified.stdout)["checked"]["refs"] == 20
    assert list((cache_dir / "tmp").iterdir()) == []


LOADER = """
import sys, time
from pathlib import Path
from oci_crane_loader.options import from_extra_config
from oci_crane_loader.pull import open_puller

cache, reference, go = sys.argv[1:]
while not Path(go).exists():  # both workers start their downloads together
    time.sleep(0.01)
puller = open_puller(from_extra_config({"jobs": 2}, cache))
resolved, plan, config_dir = puller.prepare(reference)  # what vLLM's engine does before the workers
puller.ensure_blobs(resolved.reference, plan.weight_layers)  # what each worker's load_weights downloads
print(puller.materialize(resolved, plan))
"""


def test_two_loader_processes_download_each_blob_once(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src", shards=3)
    reference = f"{registry.host}/acme/shared:v1"
    push_model(source, reference, tmp_path)
    go = tmp_path / "go"
    workers = [python("-c", LOADER, str(cache_dir), reference, str(go)) for _ in range(2)]
    time.sleep(0.5)  # let both import; correctness does not depend on it, only how much they overlap
    go.touch()
    paths = []
    for worker in workers:
        out, err = worker.communicate(timeout=GIVE_UP)
        assert worker.returncode == 0, err
        paths.append(out.strip())
    assert paths[0] == paths[1] and tree_bytes(Path(paths[0])) == tree_bytes(source)
    downloads = collections.Counter(registry.blob_downloads())
    assert downloads and set(downloads.values()) == {1}, downloads  # every blob exactly once, across both
    assert len(downloads) == len(tree_bytes(source)) + 1  # config blob + one per file
    assert not os.listdir(cache_dir / "tmp")
