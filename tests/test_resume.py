"""Resume on every path (issue 19): a download broken or stopped half way continues from the last byte on disk
with one Range request, whichever registry serves it (here one that serves blobs itself, where the first attempt
is `crane blob`), and a failing download is tried again with growing, jittered waits over a bounded time."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from support.commands import REPO_ROOT
from support.models import push_model
from support.storage_proxy import StorageProxy

from oci_crane_loader.fetching import fetch
from oci_crane_loader.options import fetch_options
from oci_crane_loader.pull import Backoff

SIZE = 48 << 20  # under the range threshold: the first attempt is one `crane blob` stream
MARGIN = 0.05  # bytes fetched again, at most, as a fraction of the blob (the bound)


def big_model(directory: Path) -> tuple[Path, str]:
    """A one-shard model whose weights blob is SIZE bytes of noise; (directory, the shard's sha256 digest)."""
    directory.mkdir(parents=True)
    data = np.random.default_rng(7).integers(0, 256, SIZE - 256, dtype=np.uint8)
    save_file({"weight": data}, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text('{"architectures": ["TestModel"]}')
    shard = (directory / "model.safetensors").read_bytes()
    return directory, "sha256:" + hashlib.sha256(shard).hexdigest()


def test_a_dropped_connection_at_half_a_blob_continues_from_the_bytes_on_disk(registry, tmp_path, cache_dir,
                                                                               caplog):
    source, shard = big_model(tmp_path / "src")
    push_model(source, f"{registry.host}/acme/resume:v1", tmp_path)
    size = (source / "model.safetensors").stat().st_size
    with StorageProxy(registry.host, redirect_blobs=False, serves_blobs=True, cut_at_fraction=0.5) as proxy:
        with caplog.at_level(logging.WARNING):
            result = fetch(fetch_options(cache_dir=cache_dir), f"{proxy.address}/acme/resume:v1")
        sent = proxy.sent_of(shard)
        ranged = [request for request in proxy.requests if request[2] is not None]
    assert (result.path / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert sent - size <= MARGIN * size, f"{sent - size} bytes fetched again"
    # The second attempt was one Range request from where the first attempt's bytes ended.
    assert len(ranged) == 1 and int(ranged[0][2].split("=")[1].split("-")[0]) >= size // 3
    retries = [record.getMessage() for record in caplog.records if "retry 1 of" in record.getMessage()]
    assert len(retries) == 1 and retries[0].startswith("model.safetensors (sha256:")
    assert "continuing from" in retries[0] and "on disk" in retries[0]
    assert sorted(os.listdir(cache_dir / "tmp")) == []


def test_ctrl_c_at_half_a_blob_then_the_next_fetch_continues_it(registry, tmp_path, cache_dir):
    source, shard = big_model(tmp_path / "src")
    push_model(source, f"{registry.host}/acme/stopped:v1", tmp_path)
    size = (source / "model.safetensors").stat().st_size
    with StorageProxy(registry.host, redirect_blobs=False, serves_blobs=True, rate_per_connection=12e6) as proxy:
        reference = f"{proxy.address}/acme/stopped:v1"
        command = [sys.executable, "-m", "oci_crane_loader", "fetch", reference, "--cache-dir", str(cache_dir),
                   "-q"]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
        try:
            deadline = time.monotonic() + 120
            while proxy.sent_of(shard) < size // 2:
                assert proc.poll() is None and time.monotonic() < deadline, "the download did not get half way"
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            _out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == 130 and "partial downloads were kept" in err, err
        kept = [name for name in os.listdir(cache_dir / "tmp") if name.endswith(".partial")]
        assert kept == [shard.split(":")[1] + ".partial"]
        again = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=300, check=False)
        assert again.returncode == 0, again.stderr
        sent = proxy.sent_of(shard)
    model_dir = Path(again.stdout.strip())
    assert (model_dir / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert sent - size <= MARGIN * size, f"{sent - size} of {size} bytes fetched again"


def test_backoff_doubles_with_jitter_and_gives_up_by_count_or_time(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    backoff = Backoff(retries=4, window=1000, kept=0)
    waits = [backoff.next_wait(0) for _ in range(5)]
    assert waits[-1] is None  # the fifth failure in a row is past --retries 4
    for number, wait in enumerate(waits[:-1]):
        assert wait is not None and 0.75 * 2 ** number <= wait <= 1.25 * 2 ** number
    # A failure that left more bytes on disk than any before it starts the count again.
    backoff = Backoff(retries=1, window=1000, kept=10)
    assert backoff.next_wait(10) is not None and backoff.next_wait(10) is None
    backoff = Backoff(retries=1, window=1000, kept=10)
    assert backoff.next_wait(10) is not None and backoff.next_wait(20) is not None
    # The window: no retry starts once the last new byte is older than it.
    backoff = Backoff(retries=20, window=10, kept=0)
    assert backoff.next_wait(0) is not None
    clock[0] += 9
    assert backoff.next_wait(0) is None
    assert max(Backoff(retries=20, window=1e9, kept=0).next_wait(0) or 0 for _ in range(3)) <= Backoff.MAX_WAIT
