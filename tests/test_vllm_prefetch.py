"""The weights start downloading when the plugin resolves the reference, before any vLLM worker exists.

No vLLM needed: resolve_engine_args is called as vLLM calls it, on an object with EngineArgs' fields. The same,
through a real `vllm serve`, is in tests/test_vllm.py (its log lines and the single download of each blob).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from support.cache import scratch
from support.models import push_model, write_model
from test_stall import WEIGHTS, StallingRegistry, stalling_registry  # noqa: F401 (a fixture, used by name)

from oci_crane_loader.cache.store import Store
from oci_crane_loader.options import from_extra_config
from oci_crane_loader.pull import open_puller
from oci_crane_loader.reference import parse_reference
from oci_crane_loader.registry.crane import find_crane
from oci_crane_loader.vllm_api import LOGGER_NAME
from oci_crane_loader.vllm_plugin import PREFETCH_NICENESS, resolve_engine_args, start_weight_prefetch

DEADLINE = 300  # seconds; generous, for a loaded machine: nothing here measures speed


def engine_args(reference: str, cache: Path) -> SimpleNamespace:
    return SimpleNamespace(model=reference, model_weights=None, tokenizer=None, served_model_name=None,
                           download_dir=str(cache), model_loader_extra_config={"jobs": 2})


def leftovers(cache: Path) -> list[Path]:
    """Temp files of downloads (the store writes them under <cache>/tmp)."""
    return scratch(cache)


def wait_for(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"not within {DEADLINE}s: {what}"
        time.sleep(0.2)


def test_weights_reach_the_cache_after_resolve_returns_without_any_loader(registry, tmp_path, cache_dir, caplog):
    source = write_model(tmp_path / "src", shards=3)
    shards = sorted(source.glob("*.safetensors"))
    reference = f"{registry.host}/acme/early:v1"
    push_model(source, reference, tmp_path)
    store = Store(cache_dir)
    blobs = [store.blob_path("sha256:" + hashlib.sha256(shard.read_bytes()).hexdigest()) for shard in shards]
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        args = engine_args(reference, cache_dir)
        resolve_engine_args(args)
        wait_for(lambda: all(blob.is_file() for blob in blobs), "every weight blob in the cache")
        wait_for(lambda: any("downloaded:" in r.getMessage() for r in caplog.records), "the summary line")
    for blob, shard in zip(blobs, shards, strict=True):
        assert blob.read_bytes() == shard.read_bytes()
    assert leftovers(cache_dir) == []
    summary = next(r.getMessage() for r in caplog.records if "downloaded:" in r.getMessage())
    assert args.model_weights in summary and " s (" in summary and "/s)" in summary, summary
    assert f"{len(shards)} weight blob(s)" in "\n".join(r.getMessage() for r in caplog.records)
    # Each blob was requested once: the background download did it, and nothing else fetched weights.
    fetched = registry.blob_downloads()
    assert len(fetched) == len(set(fetched)), registry.log()


def test_a_failing_background_download_is_logged_and_changes_nothing(registry, tmp_path, cache_dir, caplog):
    """The registry goes away after the reference is resolved: the thread logs one warning and ends; nothing is
    raised where vLLM starts, and no partial file stays (the loader then fails with the real error)."""
    source = write_model(tmp_path / "src", shards=2)
    reference = f"{registry.host}/acme/gone:v1"
    push_model(source, reference, tmp_path)
    puller = open_puller(from_extra_config({"jobs": 2}, cache_dir))
    resolved, plan, _config_dir = puller.prepare(reference)
    unreachable = replace(resolved, reference=parse_reference("127.0.0.1:1/acme/gone:v1"))
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        thread = start_weight_prefetch(open_puller(from_extra_config({"jobs": 2}, cache_dir)), unreachable,
                                       plan.weight_layers)
        assert thread is not None
        thread.join(timeout=DEADLINE)
        assert not thread.is_alive()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == LOGGER_NAME]
    assert len(warnings) == 1 and "background weight download" in warnings[0], warnings
    assert "cannot reach the registry" in warnings[0] and "the loader will try again" in warnings[0]
    assert not any(Store(cache_dir).blob_path(layer.descriptor.digest).exists() for layer in plan.weight_layers)
    assert leftovers(cache_dir) == []


EXIT_MID_DOWNLOAD = """
import sys, time
from pathlib import Path
from oci_crane_loader.options import from_extra_config
from oci_crane_loader.pull import open_puller
from oci_crane_loader.reference import parse_reference
from oci_crane_loader.vllm_plugin import start_weight_prefetch
def size(path):
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
cache = Path(sys.argv[2])
puller = open_puller(from_extra_config(None, cache))
resolved = puller.resolve(parse_reference(sys.argv[1]))
layers = puller.plan(resolved).weight_layers
start_weight_prefetch(puller, resolved, layers)
# Under way: the weight's own temp file (<hex>.<pid>...incomplete; the fetch marker is an .incomplete too) holds
# the bytes the registry sent before it stalls, so its request has started.
weights = tuple(layer.descriptor.digest.removeprefix("sha256:") + "." for layer in layers)
deadline = time.monotonic() + 120
while not [e for e in puller.store.scratch_entries() if e.path.name.startswith(weights) and size(e.path)]:
    assert time.monotonic() < deadline, "no download started"
    time.sleep(0.05)
print("LEAVING", flush=True)
"""


def test_the_process_exits_mid_download_and_leaves_no_partial_file(stalling_registry, cache_dir):  # noqa: F811
    """The weight blob stalls mid-body; the main thread returns. The process ends (the thread is a daemon) and,
    at exit, the download is stopped: crane ended, nothing left half written under any name but the blob's
    partial download (with its state file), which the next fetch continues."""
    reference = f"{stalling_registry}/acme/stall:v1"
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(EXIT_MID_DOWNLOAD), reference, str(cache_dir)],
                          capture_output=True, text=True, timeout=DEADLINE, check=False)
    assert done.returncode == 0 and "LEAVING" in done.stdout, done.stderr[-4000:]
    # One request: the download was stopped at exit, not awaited through crane's stall timeout and our retries.
    assert len(StallingRegistry.blob_starts) == 1, done.stderr[-4000:]
    weights = hashlib.sha256(WEIGHTS).hexdigest()
    assert {path.name for path in leftovers(cache_dir)} <= {f"{weights}.partial", f"{weights}.partial.json"}
    assert not Store(cache_dir).blob_path("sha256:" + hashlib.sha256(WEIGHTS).hexdigest()).exists()


@pytest.mark.skipif(sys.platform != "linux", reason="the nice value is per thread only on Linux; elsewhere untouched")
def test_the_prefetch_runs_below_vllms_cpu_priority(registry, tmp_path, cache_dir, monkeypatch):
    """The download's crane processes run niced, vLLM's own threads (here: this test's) do not: where the CPU is
    scarce the download takes what vLLM's start leaves."""
    source = write_model(tmp_path / "src", shards=2)
    reference = f"{registry.host}/acme/nice:v1"
    push_model(source, reference, tmp_path)
    log = tmp_path / "nice.log"
    wrapper = tmp_path / "crane"
    wrapper.write_text(f'#!/bin/sh\nif [ "$1" = blob ]; then cut -d" " -f19 /proc/$$/stat >> "{log}"; fi\n'
                       f'exec "{find_crane()}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("OCI_CRANE_BINARY", str(wrapper))
    before = os.getpriority(os.PRIO_PROCESS, 0)
    resolve_engine_args(engine_args(reference, cache_dir))
    store = Store(cache_dir)
    blobs = [store.blob_path("sha256:" + hashlib.sha256(shard.read_bytes()).hexdigest())
             for shard in source.glob("*.safetensors")]
    wait_for(lambda: all(blob.is_file() for blob in blobs), "every weight blob in the cache")
    weight_downloads = [int(value) for value in log.read_text().split()][-len(blobs):]
    assert weight_downloads and all(value >= before + PREFETCH_NICENESS for value in weight_downloads), log.read_text()
    assert os.getpriority(os.PRIO_PROCESS, 0) == before
