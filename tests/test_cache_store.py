"""The Store owns the cache layout: write_blob (lock, re-check, verify, atomic rename) and the typed iterators that
listing, verify and prune work on."""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path

import pytest

from oci_crane_loader import errors
from oci_crane_loader.cache.store import DigestFile, ModelDir, RefFile, ScratchEntry, Store
from oci_crane_loader.oci import Descriptor, sha256_digest
from oci_crane_loader.reference import parse_reference
from oci_crane_loader.settings import settings

PAYLOAD = b"weights"


def descriptor(data: bytes = PAYLOAD, **changes: object) -> Descriptor:
    fields: dict[str, object] = {"mediaType": "application/octet-stream", "digest": sha256_digest(data),
                                 "size": len(data), **changes}
    return Descriptor.model_validate(fields)


def writes(data: bytes):  # type: ignore[no-untyped-def]
    return lambda temp: temp.write_bytes(data)


def scratch_names(store: Store) -> list[str]:
    return [entry.path.name for entry in store.scratch_entries()]


def test_write_blob_refuses_a_size_or_digest_mismatch_and_keeps_no_final_file(tmp_path):
    store = Store(tmp_path / "cache")
    for wrong, message in ((descriptor(size=8), "is 7 bytes but its descriptor says 8"),
                           (descriptor(digest="sha256:" + "0" * 64), "has digest")):
        with pytest.raises(errors.IntegrityError, match=message):
            store.write_blob(wrong, writes(PAYLOAD))
        assert not store.blob_path(wrong.digest).exists()
        assert scratch_names(store) == []  # the temp file went too
    right = descriptor()
    assert store.write_blob(right, writes(PAYLOAD)) is True
    final = tmp_path / "cache" / "blobs" / "sha256" / right.digest.split(":")[1]
    assert final.read_bytes() == PAYLOAD
    assert not final.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)  # shared by hard links
    assert store.write_blob(right, writes(b"never called")) is False  # cached: fill does not run
    assert final.read_bytes() == PAYLOAD


def test_write_blob_removes_its_temp_file_when_fill_fails_and_frees_the_lock(tmp_path):
    store = Store(tmp_path / "cache")

    def half_then_fail(temp: Path) -> None:
        temp.write_bytes(PAYLOAD[:3])
        raise errors.NetworkError("the connection dropped")

    with pytest.raises(errors.NetworkError):
        store.write_blob(descriptor(), half_then_fail)
    assert not store.blob_path(descriptor().digest).exists()
    assert scratch_names(store) == []
    with store.try_blob_lock(descriptor().digest, create=True) as free:
        assert free  # released, so prune may delete and the next fetch may download
    assert store.write_blob(descriptor(), writes(PAYLOAD)) is True


class _Waiting(logging.Handler):
    """Set once a writer logs that it waits for a cache lock (after its first, one-second try)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "waiting for another process" in record.getMessage():
            self.seen.set()


def test_a_second_writer_waits_for_the_lock_then_finds_the_blob_and_does_not_write(tmp_path):
    store, other = Store(tmp_path / "cache"), Store(tmp_path / "cache")
    filling, release = threading.Event(), threading.Event()
    second_filled: list[Path] = []
    results: dict[str, bool] = {}

    def slow_fill(temp: Path) -> None:
        filling.set()
        assert release.wait(60)
        temp.write_bytes(PAYLOAD)

    def second_fill(temp: Path) -> None:
        second_filled.append(temp)
        temp.write_bytes(PAYLOAD)

    waiting = _Waiting()
    logger = logging.getLogger("oci_crane_loader.cache.store")
    logger.addHandler(waiting)
    level = logger.level
    logger.setLevel(logging.INFO)
    first = threading.Thread(target=lambda: results.__setitem__("first", store.write_blob(descriptor(), slow_fill)))
    second = threading.Thread(target=lambda: results.__setitem__("second",
                                                                  other.write_blob(descriptor(), second_fill)))
    try:
        first.start()
        assert filling.wait(60)
        with store.try_blob_lock(descriptor().digest, create=True) as free:
            assert not free  # what prune sees while the download runs: the blob is skipped, never deleted
        second.start()
        assert waiting.seen.wait(60)  # the second writer passed its first check and now waits for the lock
    finally:
        release.set()
        first.join(60)
        second.join(60)
        logger.removeHandler(waiting)
        logger.setLevel(level)
    assert results == {"first": True, "second": False}
    assert second_filled == []  # it checked again under the lock and found the blob
    assert store.blob_path(descriptor().digest).read_bytes() == PAYLOAD


def test_the_iterators_list_the_layout_as_it_is_on_disk(tmp_path):
    root = tmp_path / "cache"
    store = Store(root)
    blob = descriptor()
    store.write_blob(blob, writes(PAYLOAD))
    (root / "blobs" / "sha256" / "not-a-digest").write_bytes(b"x")
    manifest = b'{"schemaVersion": 2}'
    manifest_digest = store.save_manifest(manifest)
    tag = parse_reference("127.0.0.1:5000/acme/tiny:v1")
    pinned = parse_reference(f"127.0.0.1:5000/acme/tiny/sub@{manifest_digest}")
    store.save_ref(tag, manifest_digest)
    store.save_ref(pinned, manifest_digest)
    (root / "refs" / "stray").write_text("hello")
    for final in (store.model_path(manifest_digest), store.config_path(manifest_digest, "sub/dir")):
        store.publish_dir(store.new_model_dir(manifest_digest), final)
    (root / "models" / "sha256" / "junk").mkdir()
    scratch = store.scratch_dir("push-layout.")

    blob_hex, manifest_hex = blob.digest.split(":")[1], manifest_digest.split(":")[1]
    assert list(store.blobs()) == [
        DigestFile(root / "blobs" / "sha256" / blob_hex, blob.digest, len(PAYLOAD)),
        DigestFile(root / "blobs" / "sha256" / "not-a-digest", None, 1)]
    assert list(store.manifests()) == [
        DigestFile(root / "manifests" / "sha256" / manifest_hex, manifest_digest, len(manifest))]
    repository = root / "refs" / "127.0.0.1:5000" / "acme" / "tiny"
    refs = list(store.refs())
    assert refs == [
        RefFile(repository / "@tags" / "v1", "127.0.0.1:5000", "acme/tiny", "v1", None, manifest_digest),
        RefFile(repository / "sub" / "@digests" / manifest_hex, "127.0.0.1:5000", "acme/tiny/sub", None,
                manifest_digest, manifest_digest),
        RefFile(root / "refs" / "stray", None, None, None, None, None)]
    assert [ref.name for ref in refs] == [tag.name, pinned.name, None]
    directories = list(store.model_dirs())
    assert directories[0] == ModelDir("model", root / "models" / "sha256" / manifest_hex, manifest_digest)
    assert [(d.kind, d.manifest_digest, d.path.parent) for d in directories[1:]] == [
        ("config", manifest_digest, root / "configs" / "sha256")]
    assert directories[1].path.name.startswith(f"{manifest_hex}-")  # the --subpath hash
    with store.fetching(manifest_digest):
        entries = list(store.scratch_entries())
    assert ScratchEntry(scratch, None) in entries and scratch.parent == root / "tmp"
    assert [entry.fetching for entry in entries if entry.path != scratch] == [manifest_digest]
    assert list(store.scratch_entries()) == [ScratchEntry(scratch, None)]  # the fetch marker went with the fetch


def test_forget_ref_deletes_the_ref_and_the_directories_it_leaves_empty(tmp_path):
    store = Store(tmp_path / "cache")
    reference = parse_reference("127.0.0.1:5000/acme/deep/tiny:v1")
    store.save_ref(reference, sha256_digest(b"m"))
    store.save_ref(parse_reference("127.0.0.1:5000/acme/other:v1"), sha256_digest(b"n"))
    assert store.forget_ref(reference) == sha256_digest(b"m")
    assert store.forget_ref(reference) is None
    assert not (tmp_path / "cache" / "refs" / "127.0.0.1:5000" / "acme" / "deep").exists()
    assert [ref.name for ref in store.refs()] == ["127.0.0.1:5000/acme/other:v1"]


@pytest.mark.parametrize("swap", ["symlink", "hard link"])
def test_a_temp_file_swapped_before_its_commit_is_refused_and_what_it_names_is_untouched(tmp_path, swap):
    """A group member renames our temp blob away and puts a link to one of our files (with the blob's bytes, so
    the digest matches) in its place: the commit reads, fchmods and renames only a regular file of ours with one
    link. The file keeps its mode (os.chmod of the path made it read-only) and no blob links it."""
    store = Store(tmp_path / "cache")
    victim = tmp_path / "mine.bin"
    victim.write_bytes(PAYLOAD)
    victim.chmod(0o640)

    def fill_then_swap(temp: Path) -> None:
        temp.write_bytes(PAYLOAD)
        temp.unlink()
        if swap == "symlink":
            temp.symlink_to(victim)
        else:
            temp.hardlink_to(victim)

    with pytest.raises(errors.CacheError, match="replaced by a symlink or a file that is not ours"):
        store.write_blob(descriptor(), fill_then_swap)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o640 and victim.read_bytes() == PAYLOAD
    assert not store.blob_path(descriptor().digest).exists() and scratch_names(store) == []


def test_the_lock_timeout_given_to_the_store_is_the_one_it_waits(tmp_path, monkeypatch, request):
    """Settings are read once, by whoever opens the store; an explicit value wins over the environment."""
    monkeypatch.setenv("OCI_CRANE_LOCK_TIMEOUT", "1234")
    monkeypatch.delenv("OCI_CRANE_NO_FSYNC", raising=False)
    settings.cache_clear()
    request.addfinalizer(settings.cache_clear)
    holder, impatient = Store(tmp_path / "cache"), Store(tmp_path / "cache", lock_timeout=0.1, fsync=False)
    assert (holder.lock_timeout, holder.fsync) == (1234.0, True) and not impatient.fsync
    with holder.try_blob_lock(descriptor().digest, create=True) as free:
        assert free
        with pytest.raises(errors.CacheError, match="gave up after 0s waiting for cache lock"):
            impatient.write_blob(descriptor(), writes(PAYLOAD))
    assert impatient.write_blob(descriptor(), writes(PAYLOAD))
    assert not (impatient.root / "unsynced").exists()  # fsync=False: no durability marker


def test_a_fifo_planted_at_a_partial_download_neither_blocks_nor_is_resumed(tmp_path):
    """Opening a FIFO for reading waits for a writer: the partial file and its state file are opened O_NONBLOCK,
    and found not to be regular files."""
    paths = Store(tmp_path / "cache").partial_paths(descriptor().digest)
    os.mkfifo(paths.data)
    os.mkfifo(paths.state)
    found: list[object] = []
    looking = threading.Thread(target=lambda: found.extend([paths.load_state(), paths.resume(len(PAYLOAD))]),
                               daemon=True)
    looking.start()
    looking.join(timeout=60)  # only so that a regression fails instead of hanging the suite
    assert found == [None, None]
    fd = paths.create(len(PAYLOAD))  # and a fresh download replaces them
    os.close(fd)
    assert stat.S_ISREG(paths.data.lstat().st_mode) and not paths.state.exists()
