"""A registry that rate limits (429 or 503 with Retry-After) is waited for, as it asked, and the wait is shown:
the warning line names the Retry-After, a terminal's bar counts down; one that never lets up fails after
--retries with the rate limit as the cause (issue 18, "Rate limits")."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from support.commands import run_cli
from support.scripted_registry import Throttle, rate_limited, serve
from support.storage_proxy import StorageProxy
from support.terminal import screens_under_tmux

# The shard over the HTTP road, where a 429's Retry-After is read: the registry sends blobs to a storage host
# (StorageProxy), as Docker Hub, GHCR and ECR do, and the shard is above the range threshold. Only the shard's
# requests are refused: crane, which fetches the small config, retries a 429 inside its own transport, silently.
HTTP_ROAD = {"OCI_CRANE_RANGE_THRESHOLD": "64K"}


@contextlib.contextmanager
def limited(registry, **how) -> Iterator[tuple[str, Throttle]]:
    """host:port of a rate limiting front (``rate_limited(**how)``) to ``registry``, whose blobs redirect to a
    storage host; what the front answered."""
    with StorageProxy(registry.host) as storage:
        handler, record = rate_limited(storage.address, **how)
        with serve(handler) as host:
            yield host, record


def pushed_model(registry, tmp_path: Path) -> tuple[str, dict[str, str]]:
    model = tmp_path / "model"
    model.mkdir()
    tensors = {"w": np.random.default_rng(3).standard_normal((256, 1024)).astype(np.float32)}  # 1 MiB
    save_file(tensors, str(model / "model.safetensors"), metadata={"format": "pt"})
    (model / "config.json").write_text(json.dumps({"architectures": ["TestModel"]}))
    reference = f"{registry.host}/limits/model:v1"
    done = run_cli("push", str(model), reference, "--quiet")
    assert done.returncode == 0, done.stderr
    return reference, {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in model.iterdir()}


def test_a_rate_limited_blob_is_waited_for_as_asked_and_arrives_whole(registry, tmp_path):
    reference, sums = pushed_model(registry, tmp_path)
    with limited(registry, first=2, retry_after="2", only=sums["model.safetensors"]) as (host, record):
        done = run_cli("fetch", reference.replace(registry.host, host), "--cache-dir", str(tmp_path / "cache"),
                       "--json", env=HTTP_ROAD)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for name, digest in sums.items():
        assert hashlib.sha256((Path(result["path"]) / name).read_bytes()).hexdigest() == digest
    shard = [status for _, path, status in record.requests if sums["model.safetensors"] in path]
    assert shard[:2] == [429, 429] and shard[-1] in (200, 307), record.requests  # then served (or redirected)
    waits = [line for line in done.stderr.splitlines() if "Retry-After: 2 s" in line]
    assert len(waits) == 2, done.stderr  # one line per wait, naming what the registry asked for
    for line in waits:
        assert re.search(r"retry [12] of 5 in (\d+\.\d) s", line), line
        assert 2.0 <= float(re.search(r"in (\d+\.\d) s", line)[1]) <= 2.5, line  # what was asked, jitter adds


def test_a_registry_that_never_lets_up_fails_after_the_retries_naming_the_rate_limit(registry, tmp_path):
    reference, sums = pushed_model(registry, tmp_path)
    with limited(registry, first=1000, retry_after="1", status=503, only=sums["model.safetensors"]) as (host, record):
        done = run_cli("fetch", reference.replace(registry.host, host), "--cache-dir", str(tmp_path / "cache"),
                       "--retries", "1", env=HTTP_ROAD)
    assert done.returncode != 0
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: the registry is overloaded and asked us to come back later"), done.stderr
    assert " -- fix: wait and retry" in error and "mirror" in error, error
    # One try and one retry, no hammering: the shard was asked for twice, each answered 503.
    shard = [status for _, path, status in record.requests if sums["model.safetensors"] in path]
    assert shard == [503, 503], record.requests
    assert not list((tmp_path / "cache").rglob("model.safetensors")), "nothing unverified under a final name"


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
def test_a_terminal_shows_the_wait_on_the_files_bar(registry, tmp_path):
    reference, sums = pushed_model(registry, tmp_path)
    with limited(registry, first=1, retry_after="4", only=sums["model.safetensors"]) as (host, _):
        screens = screens_under_tmux(["env", *(f"{k}={v}" for k, v in HTTP_ROAD.items()), sys.executable, "-m",
                                      "oci_crane_loader", "fetch", reference.replace(registry.host, host),
                                      "--cache-dir", str(tmp_path / "cache")], tmp_path)
    assert "EXIT=0" in screens[-1], screens[-1]
    shown = [m[1] for screen in screens for m in re.finditer(r"rate limited, next try in (\d+) s", screen)]
    assert shown, screens[-3:]
    assert len(set(shown)) >= 2, shown  # it counts down
