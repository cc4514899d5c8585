"""Large blobs as parallel byte ranges (transfer.py) and the blob write path (cache/store.py): real crane, real
registries (`crane registry serve`, Debian's docker-registry with htpasswd and TLS) behind the storage proxy of
tests/support/storage_proxy.py, which redirects blob GETs to a "storage host" the way object stores do."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from support.cache import scratch
from support.commands import REPO_ROOT, run_cli
from support.distribution import binary_path, distribution_registry, make_certificates
from support.models import push_model, write_model
from support.storage_proxy import StorageProxy

from oci_crane_loader import errors
from oci_crane_loader.cache import durability
from oci_crane_loader.cache.store import Store
from oci_crane_loader.fetching import fetch as fetch_model
from oci_crane_loader.oci import Descriptor
from oci_crane_loader.options import fetch_options
from oci_crane_loader.pull import open_puller
from oci_crane_loader.reference import parse_reference
from oci_crane_loader.registry.crane import find_crane
from oci_crane_loader.registry.local_registry import LocalRegistry
from oci_crane_loader.settings import settings

SIZE = 8 << 20  # above the threshold the tests set, four ranges of 2 MiB
GIVE_UP = 120.0  # seconds: only to keep a broken run from hanging the suite, never a measured limit


@pytest.fixture(autouse=True)
def ranged(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Ranges for blobs from 1 MiB on, four per blob (the defaults keep blobs under 64 MiB on crane blob)."""
    monkeypatch.setenv("OCI_CRANE_RANGE_THRESHOLD", "1M")
    monkeypatch.setenv("OCI_CRANE_RANGE_PARTS", "4")
    settings.cache_clear()
    yield
    settings.cache_clear()


def big_model(directory: Path, seed: int = 1) -> Path:
    """A real safetensors model whose one shard is about SIZE bytes of random data (one blob above the threshold)."""
    directory.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).integers(0, 256, SIZE, dtype=np.uint8)
    save_file({"weight": data}, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps({"architectures": ["TestModel"]}))
    return directory


def shard_descriptor(cache_dir: Path, reference: str) -> Descriptor:
    puller = open_puller(fetch_options(cache_dir=cache_dir))
    resolved = puller.resolve(parse_reference(reference))
    return max(resolved.manifest.layers, key=lambda layer: layer.size)


def fetch(cache_dir: Path, reference: str) -> Path:
    return fetch_model(fetch_options(cache_dir=cache_dir), reference).path


def final_blob(cache_dir: Path, descriptor: Descriptor) -> Path:
    return Store(cache_dir).blob_path(descriptor.digest)


@pytest.fixture
def pushed(registry: LocalRegistry, tmp_path: Path) -> tuple[Path, str]:
    source = big_model(tmp_path / "src")
    push_model(source, f"{registry.host}/acme/big:v1", tmp_path)
    return source, "acme/big:v1"


PROBE = "bytes=0-0"  # transfer.probe_early: the first byte of the smallest layer, before the large blobs start


def shard_ranges(requests: list[tuple[str, str, str | None, bool]]) -> list[str]:
    """The Range headers the ranged download sent (the early probe's one-byte request left out)."""
    return [r[2] for r in requests if r[2] and r[2] != PROBE]


def test_ranges_through_a_storage_host_give_the_right_file(registry: LocalRegistry, pushed: tuple[Path, str],
                                                           cache_dir: Path) -> None:
    source, name = pushed
    with StorageProxy(registry.host) as proxy:
        path = fetch(cache_dir, f"{proxy.address}/{name}")
        ranges = shard_ranges(proxy.requests)
    assert (path / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert len(ranges) == 4, proxy.requests  # four parallel ranges of the big shard
    assert [r[2] for r in proxy.requests].count(PROBE) == 1  # asked once whether blobs are redirected
    assert not any(r[3] for r in proxy.requests)  # the storage host never saw an Authorization header
    assert not scratch(cache_dir, "*.partial*")


def sharded_model(directory: Path, shards: int = 4) -> Path:
    """A real safetensors model in ``shards`` shards of 4 MiB of random data each (4 ranges of 1 MiB at most)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for number in range(1, shards + 1):
        save_file({f"w{number}": rng.integers(0, 256, 4 << 20, dtype=np.uint8)},
                  str(directory / f"model-{number:05d}-of-{shards:05d}.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps({"architectures": ["TestModel"]}))
    return directory


@pytest.mark.parametrize(("connections", "per_blob"), [("16", 4), ("4", 2)])
def test_several_redirected_blobs_each_come_as_several_ranges(
        registry: LocalRegistry, tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch,
        connections: str, per_blob: int) -> None:
    """Storage hosts cap each connection: four large blobs (--jobs 4) share OCI_CRANE_RANGE_CONNECTIONS, at most
    OCI_CRANE_RANGE_PARTS (4 here) each and never fewer than 2, instead of one connection per blob as crane pull."""
    monkeypatch.setenv("OCI_CRANE_RANGE_CONNECTIONS", connections)
    settings.cache_clear()
    source = sharded_model(tmp_path / "src")
    push_model(source, f"{registry.host}/acme/sharded:v1", tmp_path)
    with StorageProxy(registry.host) as proxy:
        path = fetch(cache_dir, f"{proxy.address}/acme/sharded:v1")
        storage = list(proxy.requests)
    shards = sorted(source.glob("*.safetensors"))
    assert [(path / shard.name).read_bytes() for shard in shards] == [shard.read_bytes() for shard in shards]
    ranges: dict[str, set[str]] = {}
    for _method, storage_path, asked, _authorized in storage:
        if asked:
            ranges.setdefault(storage_path.rsplit("/", 1)[1], set()).add(asked)
    digests = {"sha256:" + hashlib.sha256(shard.read_bytes()).hexdigest() for shard in shards}
    assert set(ranges) >= digests  # every shard went through the storage host as ranges
    assert {digest: len(ranges[digest]) for digest in digests} == dict.fromkeys(digests, per_blob), storage
    assert not any(authorized for *_rest, authorized in storage)


def test_bearer_token_registry_gets_its_token_from_crane(registry: LocalRegistry, pushed: tuple[Path, str],
                                                         cache_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    source, name = pushed
    caplog.set_level(logging.DEBUG)
    with StorageProxy(registry.host, bearer_token="t0ken-from-the-realm") as proxy:
        path = fetch(cache_dir, f"{proxy.address}/{name}")
        ranged_gets = [r for r in proxy.front_requests if r[2] and r[2] != PROBE and "/blobs/" in r[1]]
    assert (path / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert [r[3] for r in ranged_gets].count(True) == 4  # after the first 401, every range carried the token
    assert "t0ken-from-the-realm" not in caplog.text and "/storage/" not in caplog.text  # nor storage URLs
    assert len(shard_ranges(proxy.requests)) == 4
    assert not any(r[3] for r in proxy.requests)


@pytest.mark.skipif(binary_path() is None, reason="Debian's docker-registry is not installed: bin/install-test-deps")
def test_basic_auth_and_tls_registry_behind_a_storage_host(tmp_path: Path, cache_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    with distribution_registry(tmp_path / "distribution") as private:
        assert private.ca_file is not None
        tls = private.ca_file.parent
        monkeypatch.setenv("SSL_CERT_FILE", str(private.ca_file))  # crane's trust and ours, one setting
        with StorageProxy(f"https://{private.host}", upstream_ca=private.ca_file,
                          certificate=(tls / "server.pem", tls / "server.key")) as proxy:
            config = json.loads((private.docker_config / "config.json").read_text())
            config["auths"] = {proxy.address: config["auths"][private.host]}
            (private.docker_config / "config.json").write_text(json.dumps(config))
            monkeypatch.setenv("DOCKER_CONFIG", str(private.docker_config))
            source = big_model(tmp_path / "src")
            push_model(source, f"{proxy.address}/acme/big:v1", tmp_path)
            path = fetch(cache_dir, f"{proxy.address}/acme/big:v1")
            front_auth = [r for r in proxy.front_requests if "/blobs/sha256:" in r[1] and r[0] == "GET" and r[3]]
            assert (path / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
            assert front_auth  # the registry got our basic credentials, from crane's keychain
            assert len(shard_ranges(proxy.requests)) == 4
            assert not any(r[3] for r in proxy.requests)  # the storage host never did

            descriptor = shard_descriptor(cache_dir, f"{proxy.address}/acme/big:v1")
            (private.docker_config / "config.json").write_text(json.dumps({"auths": {}}))
            puller = open_puller(fetch_options(cache_dir=tmp_path / "other-cache"))
            with pytest.raises(errors.UnauthorizedError):  # the ranged path's own 401, typed as crane's
                puller.ensure_blob(parse_reference(f"{proxy.address}/acme/big:v1"), descriptor)
            assert not final_blob(tmp_path / "other-cache", descriptor).exists()


def test_insecure_reaches_a_storage_host_whose_certificate_nobody_trusts(registry: LocalRegistry,
                                                                         pushed: tuple[Path, str], cache_dir: Path,
                                                                         tmp_path: Path) -> None:
    """--insecure holds on the ranged path too (registry and storage host alike), not only for crane."""
    source, name = pushed
    make_certificates(tmp_path / "tls")  # a CA that is in no trust store
    tls = tmp_path / "tls"
    with StorageProxy(registry.host, certificate=(tls / "server.pem", tls / "server.key")) as proxy:
        reference = f"{proxy.address}/{name}"
        with pytest.raises(errors.TLSError):
            fetch(cache_dir, reference)
        path = fetch_model(fetch_options(cache_dir=cache_dir, insecure=True), reference).path
        ranges = shard_ranges(proxy.requests)
    assert (path / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert len(ranges) == 4, proxy.requests  # the storage host served the ranges: no fallback to crane blob


def test_a_dropped_stream_resumes_from_the_bytes_on_disk(registry: LocalRegistry, pushed: tuple[Path, str],
                                                         cache_dir: Path) -> None:
    source, name = pushed
    # paced, so that little sits in socket buffers when the cut comes (those bytes are lost to the client too)
    with StorageProxy(registry.host, cut_at_fraction=0.8, rate_per_connection=4e6) as proxy:
        descriptor = shard_descriptor(cache_dir, f"{proxy.address}/{name}")
        path = fetch(cache_dir, f"{proxy.address}/{name}")
        served = proxy.bytes_served
    assert (path / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    small = sum(layer.size for layer in shard_layers(cache_dir, descriptor))
    # the cut came at 80%: the retry fetched what was missing, not the blob again from zero
    assert served - small <= descriptor.size * 1.25, (served, descriptor.size)


def shard_layers(cache_dir: Path, big: Descriptor) -> list[Descriptor]:
    """The blobs other than the big shard that went through the storage host (config files)."""
    return [Descriptor(mediaType="x", digest=f"sha256:{blob.path.name}", size=blob.size)
            for blob in Store(cache_dir).blobs() if blob.digest != big.digest]


def test_registry_that_ignores_range_falls_back_to_crane(registry: LocalRegistry, pushed: tuple[Path, str],
                                                         cache_dir: Path) -> None:
    source, name = pushed
    with StorageProxy(registry.host, honour_range=False) as proxy:
        path = fetch(cache_dir, f"{proxy.address}/{name}")
        storage = list(proxy.requests)
    assert (path / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert any(r[2] is None for r in storage)  # crane blob's GET, which asks for no range
    assert not scratch(cache_dir, "*.partial*")


def test_a_registry_serving_blobs_itself_gets_crane_blob(registry: LocalRegistry, pushed: tuple[Path, str],
                                                         cache_dir: Path) -> None:
    """No redirect, no connection cap: one Go stream beats Python reading several (docs/fetching.md numbers)."""
    source, name = pushed
    with StorageProxy(registry.host, redirect_blobs=False) as proxy:
        path = fetch(cache_dir, f"{proxy.address}/{name}")
        big_gets = [r[2] for r in proxy.front_requests if r[0] == "GET" and "/blobs/" in r[1]]
    assert (path / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert big_gets.count(PROBE) == 1 and len([r for r in big_gets if r]) == 1  # found out once; crane's GETs
    assert not scratch(cache_dir, "*.partial*")


def test_a_registry_serving_blobs_itself_is_asked_once_for_several_large_blobs(
        registry: LocalRegistry, tmp_path: Path, cache_dir: Path) -> None:
    """Four large blobs; one request finds out (the early probe for the first byte of the smallest layer), the
    large downloads wait for its answer and use crane blob straight away (not a range request per blob)."""
    source = sharded_model(tmp_path / "src")
    push_model(source, f"{registry.host}/acme/sharded:v1", tmp_path)
    with StorageProxy(registry.host, redirect_blobs=False) as proxy:
        path = fetch(cache_dir, f"{proxy.address}/acme/sharded:v1")
        ranged = [r for r in proxy.front_requests if r[0] == "GET" and "/blobs/" in r[1] and r[2]]
    shards = sorted(source.glob("*.safetensors"))
    assert [(path / shard.name).read_bytes() for shard in shards] == [shard.read_bytes() for shard in shards]
    assert len(ranged) == 1, ranged


def test_wrong_bytes_from_the_storage_host_are_an_integrity_error(registry: LocalRegistry,
                                                                  pushed: tuple[Path, str],
                                                                  cache_dir: Path) -> None:
    _source, name = pushed
    with StorageProxy(registry.host, corrupt_blobs=True) as proxy:
        descriptor = shard_descriptor(cache_dir, f"{proxy.address}/{name}")
        with pytest.raises(errors.IntegrityError):
            fetch(cache_dir, f"{proxy.address}/{name}")
    assert not final_blob(cache_dir, descriptor).exists()
    assert not scratch(cache_dir, "*.partial*")  # a wrong partial is never resumed


def test_missing_blob_is_not_found(registry: LocalRegistry, pushed: tuple[Path, str], cache_dir: Path) -> None:
    _source, name = pushed
    with StorageProxy(registry.host) as proxy:
        descriptor = shard_descriptor(cache_dir, f"{proxy.address}/{name}")
        missing = Descriptor(mediaType=descriptor.media_type, digest=f"sha256:{'1' * 64}", size=descriptor.size)
        puller = open_puller(fetch_options(cache_dir=cache_dir))
        with pytest.raises(errors.NotFoundError):
            puller.ensure_blob(parse_reference(f"{proxy.address}/{name}"), missing)
    assert not final_blob(cache_dir, missing).exists()


def test_cancel_stops_a_ranged_download(registry: LocalRegistry, pushed: tuple[Path, str], cache_dir: Path) -> None:
    _source, name = pushed
    with StorageProxy(registry.host, rate_per_connection=256 << 10) as proxy:  # 8 s at the least
        descriptor = shard_descriptor(cache_dir, f"{proxy.address}/{name}")
        puller = open_puller(fetch_options(cache_dir=cache_dir))
        cancel = threading.Event()
        threading.Timer(1.0, cancel.set).start()
        started = time.monotonic()
        with pytest.raises(errors.CancelledError):
            puller.ensure_blob(parse_reference(f"{proxy.address}/{name}"), descriptor, cancel)
        assert time.monotonic() - started < GIVE_UP
    assert not final_blob(cache_dir, descriptor).exists()
    assert not scratch(cache_dir, "*.incomplete")


def test_wrong_bytes_left_on_disk_are_downloaded_again(registry: LocalRegistry, pushed: tuple[Path, str],
                                                       cache_dir: Path) -> None:
    """A partial file whose state says "all there" but whose bytes never reached the disk (a power loss)."""
    source, name = pushed
    descriptor = shard_descriptor(cache_dir, f"{registry.host}/{name}")
    paths = Store(cache_dir).partial_paths(descriptor.digest)
    paths.data.write_bytes(b"\0" * descriptor.size)
    half = descriptor.size // 2
    paths.state.write_text(json.dumps(
        {"digest": descriptor.digest, "parts": [[0, half - 1, half], [half, descriptor.size - 1, 0]]}))
    path = fetch(cache_dir, f"{registry.host}/{name}")
    assert (path / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()


KILLABLE = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal would have it, wherever the test runs
from oci_crane_loader.fetching import fetch
from oci_crane_loader.options import fetch_options
fetch(fetch_options(cache_dir=sys.argv[1]), sys.argv[2])
"""


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_a_stopped_process_leaves_no_final_file_and_the_next_fetch_resumes(
        registry: LocalRegistry, pushed: tuple[Path, str], cache_dir: Path, how: signal.Signals) -> None:
    source, name = pushed
    with StorageProxy(registry.host, rate_per_connection=512 << 10) as proxy:  # 4 s at the least
        reference = f"{proxy.address}/{name}"
        descriptor = shard_descriptor(cache_dir, reference)
        state = Store(cache_dir).partial_paths(descriptor.digest).state
        child = subprocess.Popen([sys.executable, "-c", KILLABLE, str(cache_dir), reference], cwd=REPO_ROOT,
                                 env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + GIVE_UP
            while not (state.exists() and on_disk(state) > descriptor.size // 2):
                assert child.poll() is None and time.monotonic() < deadline, child.stderr
                time.sleep(0.05)
            child.send_signal(how)
            assert child.wait(timeout=GIVE_UP) != 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert not final_blob(cache_dir, descriptor).exists()
        before = proxy.bytes_served
        path = fetch(cache_dir, reference)
        again = proxy.bytes_served - before
    assert (path / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert again < descriptor.size * 0.75, (again, descriptor.size)  # resumed, not from zero


def on_disk(state: Path) -> int:
    try:
        return sum(done for _start, _end, done in json.loads(state.read_text())["parts"])
    except (OSError, ValueError):
        return 0


# --- the write path: one hashing pass, fsync off the critical path -----------------------------------------

WRONG_SIZE_CRANE = """#!/bin/sh
# crane that reports success but drops the last byte of every blob
if [ "$1" = blob ]; then "{crane}" "$@" | head -c -1; exit 0; fi
exec "{crane}" "$@"
"""


def test_a_blob_crane_reports_fine_but_of_the_wrong_size_is_never_served(
        registry: LocalRegistry, tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = big_model(tmp_path / "src")
    push_model(source, f"{registry.host}/acme/big:v1", tmp_path)
    descriptor = shard_descriptor(cache_dir, f"{registry.host}/acme/big:v1")
    wrapper = tmp_path / "crane"
    wrapper.write_text(WRONG_SIZE_CRANE.format(crane=find_crane()))
    wrapper.chmod(0o755)
    monkeypatch.setenv("OCI_CRANE_BINARY", str(wrapper))
    monkeypatch.setenv("OCI_CRANE_NO_RANGES", "1")
    settings.cache_clear()
    with pytest.raises(errors.IntegrityError, match="bytes but its descriptor says"):
        fetch(cache_dir, f"{registry.host}/acme/big:v1")
    assert not final_blob(cache_dir, descriptor).exists()


def test_blobs_are_synced_in_the_background_and_markers_settle(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    data = b"weights" * 1000
    descriptor = Descriptor(mediaType="x", digest="sha256:" + hashlib.sha256(data).hexdigest(), size=len(data))
    assert store.write_blob(descriptor, lambda temp: temp.write_bytes(data))
    assert durability.background_sync().wait(timeout=GIVE_UP)
    assert not list((store.root / "unsynced").iterdir())  # synced: the marker is gone
    assert store.blob_path(descriptor.digest).read_bytes() == data


def write_marker(store: Store, digest: str, boot: str, pid: int) -> Path:
    marker = store.root / "unsynced" / digest.removeprefix("sha256:")
    marker.parent.mkdir(exist_ok=True)
    marker.write_text(f"{boot} {pid}\n")
    return marker


def test_after_a_power_loss_a_torn_blob_is_deleted_before_anything_serves_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    data = b"w" * 4096
    good = "sha256:" + hashlib.sha256(data).hexdigest()
    torn = "sha256:" + hashlib.sha256(b"x" * 4096).hexdigest()
    store.blob_path(good).write_bytes(data)
    store.blob_path(torn).write_bytes(b"\0" * 4096)  # right size, bytes never written back: what a power loss leaves
    for digest in (good, torn):
        write_marker(store, digest, "an-earlier-boot", 1)
    Store(store.root)  # the next process to open the cache
    assert store.blob_path(good).read_bytes() == data
    assert not store.blob_path(torn).exists()
    assert not list((store.root / "unsynced").iterdir())


def fetched_path(reference: str, cache_dir: Path) -> Path:
    done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "-q")
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


def test_after_a_power_loss_a_model_linking_a_torn_blob_is_built_again(registry, tmp_path: Path) -> None:
    """The model directory's hard link is the torn inode too: it goes with the blob, and the next fetch downloads
    the blob and builds the directory again (instead of reporting a damaged cache)."""
    reference = f"{registry.host}/acme/torn:v1"
    source = write_model(tmp_path / "src")
    push_model(source, reference, tmp_path)
    cache_dir = tmp_path / "cache"
    first = fetched_path(reference, cache_dir)
    deadline = time.monotonic() + GIVE_UP  # the fetch's detached syncer drops its markers: let it finish first
    while any((cache_dir / "unsynced").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    shard = first / "model-00001-of-00002.safetensors"
    good = shard.read_bytes()
    shard.chmod(0o644)
    shard.write_bytes(b"\0" * len(good))  # the right size, never written back: what a power loss leaves
    write_marker(Store(cache_dir), "sha256:" + hashlib.sha256(good).hexdigest(), "an-earlier-boot", 1)
    again = fetched_path(reference, cache_dir)
    assert again == first and (again / "model-00001-of-00002.safetensors").read_bytes() == good


def test_markers_of_a_live_process_are_left_alone_and_of_a_dead_one_settled(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    data = b"w" * 4096
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    store.blob_path(digest).write_bytes(data)
    boot = durability.boot_id()
    if not boot:
        pytest.skip("no boot id on this platform: every marker is re-hashed, covered by the power-loss test")
    live = write_marker(store, digest, boot, os.getpid())
    Store(store.root)
    assert live.exists()  # its own process syncs it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_marker(store, digest, boot, int(dead.stdout))
    Store(store.root)  # a dead process's marker: synced by this process's background thread, not on its way in
    assert durability.background_sync().wait(timeout=60)
    assert not live.exists() and store.blob_path(digest).read_bytes() == data


# --- a cache shared by a group: names someone else can plant (docs/security.md) -----------------------------------

def victim_file(path: Path, size: int) -> bytes:
    """One of the fetching user's own files, outside the cache: what a planted link would make us write into."""
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def test_a_symlink_planted_at_an_unsynced_marker_is_replaced_never_written_through(
        registry: LocalRegistry, tmp_path: Path, cache_dir: Path) -> None:
    """unsynced/<hex> has a predictable name: a marker is written to a new temp file and renamed over the link.
    The links are planted after the cache is opened (opening settles stray markers, a long-lived process does not
    open it again)."""
    source = write_model(tmp_path / "src")
    push_model(source, f"{registry.host}/acme/planted:v1", tmp_path)
    victim = tmp_path / "victim.bin"
    original = victim_file(victim, 3600)
    puller = open_puller(fetch_options(cache_dir=cache_dir))
    markers = puller.store.root / "unsynced"
    markers.mkdir()
    for shard in source.glob("*.safetensors"):
        (markers / hashlib.sha256(shard.read_bytes()).hexdigest()).symlink_to(victim)
    recorded, _blobs = puller.fetch(parse_reference(f"{registry.host}/acme/planted:v1"))
    path = recorded.path
    assert victim.read_bytes() == original
    assert all((path / shard.name).read_bytes() == shard.read_bytes() for shard in source.glob("*.safetensors"))
    assert durability.background_sync().wait(timeout=GIVE_UP)
    assert not any(markers.iterdir())  # our markers replaced the links, then were dropped once synced


def _plant_link(victim: Path, at: Path) -> None:
    at.symlink_to(victim)


def _plant_hard_link(victim: Path, at: Path) -> None:
    os.link(victim, at)  # the same user's file: owner and size match, only its link count tells


def _plant_foreign_file(victim: Path, at: Path) -> None:
    at.write_bytes(victim.read_bytes())
    os.chown(at, 65534, 65534)  # another user's file of the right size (nobody)


PLANTS = [_plant_link, _plant_hard_link] + ([_plant_foreign_file] if os.geteuid() == 0 else [])


@pytest.mark.parametrize("plant", PLANTS)
def test_a_planted_partial_download_is_never_resumed_or_written_through(
        registry: LocalRegistry, pushed: tuple[Path, str], tmp_path: Path, cache_dir: Path, plant) -> None:
    """tmp/<hex>.partial, its state file and the state's temp have predictable names. Planted there: a symlink to
    one of our files of the blob's size (with a state file that says a third of it is done), a hard link to it, or
    another user's file. The ranged fetch must not resume into it nor write through the state's names."""
    source, name = pushed
    with StorageProxy(registry.host) as proxy:
        reference = f"{proxy.address}/{name}"
        descriptor = shard_descriptor(cache_dir, reference)
        paths = Store(cache_dir).partial_paths(descriptor.digest)
        victim = tmp_path / "victim.bin"
        original = victim_file(victim, descriptor.size)
        plant(victim, paths.data)
        done = descriptor.size // 3  # where a resumed download would ask from (no fresh range starts there)
        state = json.dumps({"digest": descriptor.digest, "parts": [[0, descriptor.size - 1, done]]})
        (tmp_path / "victim-state.json").write_text(state)
        paths.state.symlink_to(tmp_path / "victim-state.json")
        victim_temp = tmp_path / "victim-temp"
        victim_temp.write_text("mine")
        paths.state_temp.symlink_to(victim_temp)
        path = fetch(cache_dir, reference)
        ranges = shard_ranges(proxy.requests)
    assert (path / "model.safetensors").read_bytes() == (source / "model.safetensors").read_bytes()
    assert victim.read_bytes() == original
    assert (tmp_path / "victim-state.json").read_text() == state and victim_temp.read_text() == "mine"
    assert all(not asked.startswith(f"bytes={done}-") for asked in ranges), ranges  # downloaded from zero
    assert not scratch(cache_dir, "*.partial*")


def test_a_symlinked_ref_directory_is_refused_and_nothing_is_written_through_it(
        registry: LocalRegistry, tmp_path: Path, cache_dir: Path) -> None:
    """refs/<registry>/<repository>/@tags is named after what the user fetches: planted as a symlink to one of our
    directories, the tag's ref (named after the tag) would land there. The fetch fails in one line instead."""
    reference = f"{registry.host}/acme/refs:config.json"
    push_model(write_model(tmp_path / "src"), reference, tmp_path)
    mine = tmp_path / "my-directory"
    mine.mkdir()
    (mine / "config.json").write_text("my own file")
    tags = Store(cache_dir).ref_path(parse_reference(reference)).parent
    tags.parent.mkdir(parents=True)
    tags.symlink_to(mine)
    done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "-q")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "is a symlink or a file, where the cache keeps a directory of refs" in lines[0], lines
    assert [p.name for p in mine.iterdir()] == ["config.json"] and (mine / "config.json").read_text() == "my own file"
