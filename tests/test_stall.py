"""A registry that stops sending mid-blob: crane has no read timeout, so our watchdog must stop and retry it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
from support.commands import run_cli

from oci_crane_loader.formats import dmr
from oci_crane_loader.oci import OCI_MANIFEST
from tests.support.scripted_registry import ScriptedRegistry, digest, serve

WEIGHTS = b"\x00" * (1 << 20)
CONFIG = json.dumps({"config": {"format": "safetensors"}}).encode()


MANIFEST = json.dumps({
    "schemaVersion": 2, "mediaType": OCI_MANIFEST,
    "config": {"mediaType": dmr.CONFIG_V02, "digest": digest(CONFIG), "size": len(CONFIG)},
    "layers": [{"mediaType": dmr.SAFETENSORS, "digest": digest(WEIGHTS), "size": len(WEIGHTS),
                "annotations": {dmr.FILEPATH: "model.safetensors"}}],
}).encode()


class StallingRegistry(ScriptedRegistry):
    """Serves one artifact; the weight blob sends its headers and 64 KiB, then nothing until the client leaves."""

    blob_starts: list[float] = []
    stop = threading.Event()

    def do_GET(self) -> None:
        if self.path == "/v2/":
            self.send_document(b"{}", "application/json")
        elif self.path.endswith("/manifests/v1") or self.path.endswith(digest(MANIFEST)):
            self.send_document(MANIFEST, OCI_MANIFEST)
        elif self.path.endswith(digest(CONFIG)):
            self.send_document(CONFIG, "application/octet-stream")
        elif self.path.endswith(digest(WEIGHTS)):
            type(self).blob_starts.append(time.monotonic())
            self.send_response(200)
            self.send_header("Content-Length", str(len(WEIGHTS)))
            self.end_headers()
            self.wfile.write(WEIGHTS[: 64 << 10])
            self.wfile.flush()
            self.stop.wait(timeout=60)  # the stall: the connection stays open, no more bytes
        else:
            self.send_error(404)


@pytest.fixture
def stalling_registry() -> Iterator[str]:
    StallingRegistry.blob_starts = []
    StallingRegistry.stop = threading.Event()
    with serve(StallingRegistry, before_stop=StallingRegistry.stop) as host:
        yield host


# Requests for the blob: each attempt's `crane blob`, plus, after the first, one Range request to continue the
# bytes it kept (this registry answers it with the whole blob: it is not asked again, nothing more is kept).
@pytest.mark.parametrize(("retries", "attempts"), [(("--retries", "2"), 4), (("--retries", "0"), 1),
                                                   (("OCI_CRANE_RETRIES", "1"), 3),
                                                   (("OCI_CRANE_RETRIES", "5", "--retries", "1"), 3)])
def test_stalled_download_is_stopped_retried_and_reported(stalling_registry, cache_dir, crane_binary, retries,
                                                          attempts):
    env = {"OCI_CRANE_STALL_TIMEOUT": "2"}
    if retries[:1] == ("OCI_CRANE_RETRIES",):
        env["OCI_CRANE_RETRIES"], retries = retries[1], retries[2:]
    done = run_cli("fetch", f"{stalling_registry}/acme/stall:v1", "--cache-dir", str(cache_dir), "-q", *retries,
                   env=env, timeout=120)
    assert done.returncode == 1
    assert "stalled" in done.stderr and "OCI_CRANE_STALL_TIMEOUT" in done.stderr, done.stderr
    assert len(StallingRegistry.blob_starts) == attempts  # each attempt restarted from zero
    assert not list((cache_dir / "blobs" / "sha256").glob(digest(WEIGHTS).split(":")[1]))
    # Without a retry, what the one attempt wrote is kept for the next fetch; once the registry has shown that it
    # ignores Range, nothing is.
    kept = sorted(path.name for path in (cache_dir / "tmp").iterdir())
    hex_digest = digest(WEIGHTS).split(":")[1]
    assert kept == ([f"{hex_digest}.partial", f"{hex_digest}.partial.json"] if attempts == 1 else [])


def test_a_push_whose_upload_stalls_is_stopped_with_one_error(registry, tmp_path):
    """crane push has no read timeout either: a registry that stops taking bytes mid-upload is left after
    OCI_CRANE_STALL_TIMEOUT without a byte sent (Linux shows how far crane is through its files), not after a
    fixed time."""
    import os
    from pathlib import Path

    import numpy as np
    from safetensors.numpy import save_file
    from support.throttle import throttled

    if not Path("/proc/self/fdinfo").is_dir():
        pytest.skip("this OS does not show a process's file offsets (/proc/PID/fdinfo): a push has a fixed limit")
    model = tmp_path / "model"
    model.mkdir()
    # More than the kernel's socket buffers hold on both sides of the proxy, so that crane's reads must stall.
    weights = np.random.default_rng(3).integers(0, 255, size=48 << 20, dtype=np.uint8)
    save_file({"w": weights}, str(model / "model.safetensors"))
    (model / "config.json").write_text('{"architectures": ["TestModel"]}')
    with throttled(registry.host, rate=1, requests_too=True) as stuck:
        done = run_cli("push", str(model), f"{stuck}/stall/push:v1", "--quiet", "--cache-dir", str(tmp_path / "c"),
                       env={**os.environ, "OCI_CRANE_STALL_TIMEOUT": "2"}, timeout=120)
    assert done.returncode == 1, done.stderr
    assert f"push to {stuck}/stall/push:v1 stalled: no bytes for 2s after " in done.stderr, done.stderr
    assert "bytes, and crane sat idle, waiting on the registry" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_crane_working_before_its_first_upload_is_not_a_stall(registry, tmp_path):
    """Before it reads the first file of a layout with thousands of layers, crane works for minutes (about 14 s
    for 1000 files on a slow machine, 200 s for 5000): its CPU time counts as progress, where only bytes did."""
    import os
    from pathlib import Path

    from support.models import write_model

    if not Path("/proc/self/fdinfo").is_dir():
        pytest.skip("this OS does not show a process's file offsets (/proc/PID/fdinfo): a push has a fixed limit")
    model = write_model(tmp_path / "model", shards=1)
    (model / "extra").mkdir()
    for number in range(800):
        (model / "extra" / f"{number}.txt").write_text(f"file {number}\n")
    done = run_cli("push", str(model), f"{registry.host}/many/files:v1", "--quiet", "--cache-dir",
                   str(tmp_path / "c"), env={**os.environ, "OCI_CRANE_STALL_TIMEOUT": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr
    fetched = run_cli("fetch", f"{registry.host}/many/files:v1", "--cache-dir", str(tmp_path / "c"), "--quiet")
    assert fetched.returncode == 0, fetched.stderr
    assert len(list((Path(fetched.stdout.strip()) / "extra").iterdir())) == 800


def test_the_upload_meter_tells_a_working_crane_from_an_idle_one(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from oci_crane_loader.registry.crane import BUSY_CPU, _UploadMeter

    if not Path("/proc/self/stat").is_file():
        pytest.skip("needs Linux /proc")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen(["sleep", "60"])
    try:
        working, sleeping = _UploadMeter(busy.pid, tmp_path), _UploadMeter(idle.pid, tmp_path)
        deadline = time.monotonic() + 60
        while not working.working():  # BUSY_CPU seconds of CPU, however slow this machine is
            assert time.monotonic() < deadline, "a busy loop used no CPU for a minute"
            time.sleep(0.1)
        assert working.cpu_mark >= BUSY_CPU
        assert not working.working()  # said once per BUSY_CPU seconds of CPU, not at every look
        assert not sleeping.working()
    finally:
        busy.kill()
        idle.kill()
        busy.wait()
        idle.wait()
