"""Stopping a fetch: Ctrl-C and SIGTERM cancel and reap every crane child and leave tmp/ empty, SIGKILL takes the
crane children with it, and the first failed blob stops the rest. Real processes against a stdlib registry that
stalls blob bodies or answers 404."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support.cache import blob_names, manifest_names, scratch
from support.commands import REPO_ROOT, run_cli
from support.scripted_registry import ScriptedRegistry, digest
from support.scripted_registry import serve as serve_handler

from oci_crane_loader.formats import dmr
from oci_crane_loader.oci import OCI_MANIFEST

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads child processes from /proc")

CONFIG = json.dumps({"config": {"format": "safetensors"}}).encode()
GIVE_UP = 120.0  # seconds: only to keep a broken run from hanging the suite, never a measured limit


@dataclass
class Artifact:
    layers: list[bytes]
    stall: bool  # True: blob bodies stop after 64 KiB until the test ends; False: every layer is 404
    gets: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def manifest(self) -> bytes:
        return json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": dmr.CONFIG_V02, "digest": digest(CONFIG), "size": len(CONFIG)},
            "layers": [{"mediaType": dmr.SAFETENSORS, "digest": digest(data), "size": len(data),
                        "annotations": {dmr.FILEPATH: f"model-{n:05d}.safetensors"}}
                       for n, data in enumerate(self.layers)],
        }).encode()


def serve(artifact: Artifact) -> Iterator[str]:
    manifest = artifact.manifest
    layers = {digest(data): data for data in artifact.layers}

    class Handler(ScriptedRegistry):
        def do_GET(self) -> None:
            wanted = self.path.rsplit("/", 1)[-1]
            if self.path == "/v2/":
                self.send_document(b"{}", "application/json")
            elif "/manifests/" in self.path:
                self.send_document(manifest, OCI_MANIFEST)
            elif wanted == digest(CONFIG):
                self.send_document(CONFIG, "application/octet-stream")
            elif wanted in layers and self.command == "GET":
                artifact.gets.append(wanted)
                if not artifact.stall:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(layers[wanted])))
                self.end_headers()
                self.wfile.write(layers[wanted][: 64 << 10])
                self.wfile.flush()
                artifact.stop.wait(timeout=600)  # the stall: the connection stays open, no more bytes
            else:
                self.send_error(404)

    try:
        with serve_handler(Handler) as host:
            yield host
    finally:
        artifact.stop.set()


@pytest.fixture
def stalling() -> Iterator[str]:
    yield from serve(Artifact([os.urandom(1 << 20) for _ in range(6)], stall=True))


def crane_children(pid: int) -> set[int]:
    """Processes whose parent is ``pid`` and whose command is crane."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
                name = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if int(fields[1]) == pid and name == "crane":
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + GIVE_UP
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def start_fetch(host: str, cache_dir: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OCI_CRANE_STALL_TIMEOUT": "600"}  # the watchdog must not be what stops crane
    return subprocess.Popen([sys.executable, "-m", "oci_crane_loader", "fetch", f"{host}/acme/slow:v1",
                             "--cache-dir", str(cache_dir), "-q", *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)


def downloading(proc: subprocess.Popen[str], cache_dir: Path, jobs: int) -> set[int]:
    """Wait until ``jobs`` crane children are streaming into tmp/; their pids."""
    def streaming() -> int:
        count = 0
        for path in scratch(cache_dir):
            with contextlib.suppress(FileNotFoundError):  # a file may go between the listing and its stat
                count += not path.name.startswith("fetching-") and path.stat().st_size > 0
        return count

    wait_for(lambda: len(crane_children(proc.pid)) == jobs and streaming() == jobs, "the downloads to start")
    return crane_children(proc.pid)


@pytest.mark.parametrize(("sent", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_stops_every_crane_child_and_keeps_what_they_wrote(stalling, cache_dir, sent, status):
    proc = start_fetch(stalling, cache_dir, "--jobs", "3")
    try:
        children = downloading(proc, cache_dir, 3)
        proc.send_signal(sent)
        _out, err = proc.communicate(timeout=GIVE_UP)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == status, err
    assert "partial downloads were kept" in err and "Traceback" not in err
    assert [pid for pid in children if alive(pid)] == []
    # No temp file under another name: each stopped download's bytes are kept as its partial download (with the
    # state file that says how far it got), for the next fetch to continue.
    left = sorted(path.name for path in scratch(cache_dir))
    assert left and all(name.endswith((".partial", ".partial.json")) for name in left), left
    assert len([name for name in left if name.endswith(".partial")]) == 3
    assert blob_names(cache_dir) == [digest(CONFIG)[7:]]  # no weight


def test_crane_children_die_with_a_killed_fetch(stalling, cache_dir):
    if not sys.platform.startswith("linux"):
        pytest.skip("the parent-death signal is Linux only")
    proc = start_fetch(stalling, cache_dir, "--jobs", "2")
    try:
        children = downloading(proc, cache_dir, 2)
        proc.kill()
        proc.wait(timeout=GIVE_UP)
        wait_for(lambda: not any(alive(pid) for pid in children), "the crane children to die")
    finally:
        proc.kill()
        proc.wait()
        for pid in children:  # should the test fail: leave no crane behind
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert [pid for pid in children if alive(pid)] == []


def test_the_first_failed_blob_stops_the_rest(cache_dir):
    artifact = Artifact([os.urandom(64) for _ in range(50)], stall=False)
    for host in serve(artifact):
        done = subprocess.run([sys.executable, "-m", "oci_crane_loader", "fetch", f"{host}/acme/missing:v1",
                               "--cache-dir", str(cache_dir), "-q", "--jobs", "2"], capture_output=True, text=True,
                              cwd=REPO_ROOT, timeout=GIVE_UP, check=False)
        assert done.returncode == 1 and "not found" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert len(artifact.gets) < 10, f"{len(artifact.gets)} of 50 missing blobs were still requested"
    assert scratch(cache_dir) == []


def test_prune_keeps_what_a_running_fetch_has_downloaded(stalling, cache_dir):
    """The tag's ref is written only when the fetch succeeds: until then its tmp/ marker keeps its files."""
    proc = start_fetch(stalling, cache_dir, "--jobs", "2")
    try:
        downloading(proc, cache_dir, 2)
        kept = sorted(blob_names(cache_dir) + manifest_names(cache_dir))
        assert len(kept) == 2  # the manifest and the config blob
        pruned = run_cli("cache", "prune", "--cache-dir", str(cache_dir), "--json")
        assert pruned.returncode == 0, pruned.stderr
        assert json.loads(pruned.stdout)["removed"] == []
        assert sorted(blob_names(cache_dir) + manifest_names(cache_dir)) == kept
    finally:
        proc.kill()
        proc.wait()
