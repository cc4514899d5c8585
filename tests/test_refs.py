"""Refs in the cache: a tag moves only after a successful fetch, digest fetches are kept, paths never collide,
and a damaged cached blob is noticed (sizes on every fetch, bytes by `cache verify`) and repaired (by the fetch that
notices it, or `cache prune --damaged`)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from support.commands import REPO_ROOT, run_cli, unshare_mount
from support.models import push_model, tree_bytes, write_model

from oci_crane_loader.cache.store import LAYOUT_MARKER, Store
from oci_crane_loader.reference import parse_reference

OFFLINE = {"OCI_CRANE_BINARY": "/nonexistent/crane"}  # crane must not even start


def fetch_json(reference: str, cache_dir: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--json", *args, env=env)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def cache_json(cache_dir: Path, *args: str) -> dict[str, object]:
    done = run_cli("cache", *args, "--cache-dir", str(cache_dir), "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def listed(cache_dir: Path) -> dict[str, str]:
    entries = cache_json(cache_dir, "ls")["entries"]
    assert isinstance(entries, list)
    return {str(entry["reference"]): str(entry["digest"]) for entry in entries}


def corrupt_in_registry(tmp_path: Path, data: bytes) -> None:
    digest = hashlib.sha256(data).hexdigest()
    stored = [p for p in (tmp_path / "registry-disk").rglob("*") if p.is_file() and digest in p.name]
    assert stored, "the registry's disk layout changed: cannot find the stored blob"
    for path in stored:
        path.write_bytes(data[:-4] + b"\x00\x00\x00\x00")


def test_a_failed_fetch_leaves_the_tag_on_the_good_model(registry, tmp_path, cache_dir):
    good_source = write_model(tmp_path / "good", seed=1)
    reference = f"{registry.host}/acme/moving:v1"
    push_model(good_source, reference, tmp_path)
    good = fetch_json(reference, cache_dir)
    broken_source = write_model(tmp_path / "broken", seed=2)
    broken_pinned = push_model(broken_source, reference, tmp_path, version="v0.1")
    corrupt_in_registry(tmp_path, (broken_source / "model-00001-of-00002.safetensors").read_bytes())

    failed = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "-q")
    assert failed.returncode == 1 and "digest" in failed.stderr, failed.stderr
    assert listed(cache_dir) == {reference: good["digest"]}  # the tag did not move
    assert broken_pinned.split("@")[1] != good["digest"]
    offline = fetch_json(reference, cache_dir, "--offline", env=OFFLINE)
    assert offline["path"] == good["path"] and tree_bytes(Path(str(good["path"]))) == tree_bytes(good_source)
    cache_json(cache_dir, "prune")
    assert tree_bytes(Path(str(good["path"]))) == tree_bytes(good_source)  # prune kept the good model


def test_a_fetch_by_digest_is_kept_by_prune_and_removed_by_rm(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src")
    pinned = push_model(source, f"{registry.host}/acme/pinned:v1", tmp_path)
    result = fetch_json(pinned, cache_dir)
    model = Path(str(result["path"]))
    assert listed(cache_dir) == {pinned: pinned.split("@")[1]}
    assert cache_json(cache_dir, "prune")["removed"] == []
    assert tree_bytes(model) == tree_bytes(source)
    assert fetch_json(pinned, cache_dir, "--offline", env=OFFLINE)["path"] == str(model)

    removed = run_cli("cache", "rm", pinned, "--cache-dir", str(cache_dir))
    assert removed.returncode == 0, removed.stderr
    pruned = cache_json(cache_dir, "prune")
    assert ("model", str(model)) in {(r["kind"], r["path"]) for r in pruned["removed"]}  # type: ignore[union-attr]
    assert not model.exists() and list(Store(cache_dir).blobs()) == []


def test_a_tag_and_a_repository_path_of_the_same_name_do_not_collide(registry, tmp_path):
    source = write_model(tmp_path / "src")
    tag_b = f"{registry.host}/acme/a:b"  # refs/<registry>/acme/a/@tags/b
    repo_b = f"{registry.host}/acme/a/b:c"  # refs/<registry>/acme/a/b/@tags/c
    push_model(source, tag_b, tmp_path)
    push_model(source, repo_b, tmp_path, version="v0.1")
    for order, cache in (((tag_b, repo_b), tmp_path / "one"), ((repo_b, tag_b), tmp_path / "two")):
        digests = {reference: fetch_json(reference, cache)["digest"] for reference in order}
        assert listed(cache) == digests
        for reference in order:
            assert fetch_json(reference, cache, "--offline", env=OFFLINE)["digest"] == digests[reference]


def test_refs_of_the_old_layout_are_still_read(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src")
    reference = f"{registry.host}/acme/old:v1"
    push_model(source, reference, tmp_path)
    digest = fetch_json(reference, cache_dir)["digest"]
    new = Store(cache_dir).ref_path(parse_reference(reference))  # refs/<registry>/acme/old/@tags/v1
    old = new.parent.parent / new.name  # refs/<registry>/acme/old/v1
    os.replace(new, old)  # as a cache written before the @tags/ layout holds it
    new.parent.rmdir()
    (cache_dir / "refs" / LAYOUT_MARKER).unlink()
    assert fetch_json(reference, cache_dir, "--offline", env=OFFLINE)["digest"] == digest
    assert listed(cache_dir) == {reference: digest}
    assert not old.exists() and new.read_text() == digest


def test_a_truncated_cached_blob_is_noticed_at_once_and_repaired(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src")
    reference = f"{registry.host}/acme/trunc:v1"
    push_model(source, reference, tmp_path)
    model = Path(str(fetch_json(reference, cache_dir)["path"]))
    shard = model / "model-00001-of-00002.safetensors"
    digest = "sha256:" + hashlib.sha256(shard.read_bytes()).hexdigest()
    shard.chmod(shard.stat().st_mode | stat.S_IWUSR)
    os.truncate(shard, 100)  # through the hard link: the shared blob itself is truncated
    assert run_cli("cache", "verify", "--cache-dir", str(cache_dir)).returncode == 1

    # The next fetch sets the blob aside with the directories linking it, says so in one line, and heals.
    healed = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "-q")
    assert healed.returncode == 0, healed.stderr
    (line,) = healed.stderr.strip().splitlines()
    assert line.startswith("WARNING") and f"cached blob {digest} of {reference} is damaged" in line, line
    assert tree_bytes(Path(healed.stdout.strip())) == tree_bytes(source)
    assert run_cli("cache", "verify", "--cache-dir", str(cache_dir)).returncode == 0

    # `prune --damaged` repairs the same damage too.
    os.truncate(Path(healed.stdout.strip()) / "model-00001-of-00002.safetensors", 100)
    cache_json(cache_dir, "prune", "--damaged")
    assert tree_bytes(Path(str(fetch_json(reference, cache_dir)["path"]))) == tree_bytes(source)
    assert run_cli("cache", "verify", "--cache-dir", str(cache_dir)).returncode == 0


def test_a_read_only_cache_serves_offline_by_tag_and_by_digest(registry, tmp_path, cache_dir):
    unshare = unshare_mount()
    source = write_model(tmp_path / "src")
    reference = f"{registry.host}/acme/frozen:v1"
    pinned = push_model(source, reference, tmp_path)
    path = fetch_json(reference, cache_dir)["path"]
    script = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" && shift && exec "$@"'
    for typed in (reference, pinned):
        done = subprocess.run([*unshare, "sh", "-c", script, "sh", str(cache_dir), sys.executable, "-m",
                               "oci_crane_loader", "fetch", typed, "--cache-dir", str(cache_dir), "--offline"],
                              capture_output=True, text=True, cwd=REPO_ROOT, timeout=300, check=False,
                              env={**os.environ, **OFFLINE})
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == path
