"""A cached fetch answers from the record its first fetch left (cached.py), and the record never decides alone:
a moved tag, a pruned directory, a damaged blob, a filter and a tampered record all get what the full path
gives. (What a cached fetch imports and starts: test_startup.py.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

from support.commands import fetch, run_cli
from support.models import push_model, write_model


def records(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / "records").glob("*.json"))


def test_a_cached_fetch_answers_as_the_first_one_did(registry, tmp_path, cache_dir):
    reference = f"{registry.host}/acme/tiny:v1"
    push_model(write_model(tmp_path / "src"), reference, tmp_path)
    first = fetch(reference, cache_dir)
    assert len(records(cache_dir)) == 1
    downloads = len(registry.blob_downloads())
    again = fetch(reference, cache_dir)
    offline = fetch(reference, cache_dir, "--offline")
    assert again == first and offline == first
    assert len(registry.blob_downloads()) == downloads  # not even the config blob again


def test_a_moved_tag_gets_the_new_model_not_the_record(registry, tmp_path, cache_dir):
    reference = f"{registry.host}/acme/moving:v1"
    push_model(write_model(tmp_path / "one", seed=1), reference, tmp_path)
    old = fetch(reference, cache_dir)
    push_model(write_model(tmp_path / "two", seed=2), reference, tmp_path, version="v0.1")
    new = fetch(reference, cache_dir)
    assert new["digest"] != old["digest"] and new["path"] != old["path"]
    assert len(records(cache_dir)) == 2
    assert fetch(reference, cache_dir, "--offline") == new  # the tag's ref moved with it


def test_a_pruned_model_is_fetched_again_and_prune_drops_its_record(registry, tmp_path, cache_dir):
    reference = f"{registry.host}/acme/pruned:v1"
    push_model(write_model(tmp_path / "src"), reference, tmp_path)
    first = fetch(reference, cache_dir)
    removed = run_cli("cache", "rm", reference, "--prune", "--cache-dir", str(cache_dir))
    assert removed.returncode == 0, removed.stderr
    assert not Path(str(first["path"])).exists() and records(cache_dir) == []
    downloads = len(registry.blob_downloads())
    assert fetch(reference, cache_dir) == first
    assert len(registry.blob_downloads()) > downloads


def test_a_truncated_blob_is_not_served_from_the_record(registry, tmp_path, cache_dir):
    reference = f"{registry.host}/acme/damaged:v1"
    push_model(write_model(tmp_path / "src"), reference, tmp_path)
    first = fetch(reference, cache_dir)
    shard = Path(str(first["path"])) / "model-00001-of-00002.safetensors"
    os.chmod(shard, 0o644)
    with open(shard, "r+b") as handle:  # a hard link: the blob in blobs/ is cut too
        handle.truncate(100)
    healed = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--quiet", "--json")
    assert healed.returncode == 0 and "is damaged" in healed.stderr  # the full path set it aside and healed it
    assert json.loads(healed.stdout) == first and shard.stat().st_size > 100


def test_a_filtered_fetch_and_a_full_one_keep_apart(registry, tmp_path, cache_dir):
    reference = f"{registry.host}/acme/filtered:v1"
    push_model(write_model(tmp_path / "src"), reference, tmp_path)
    only_json = fetch(reference, cache_dir, "--include", "*.json")
    full = fetch(reference, cache_dir)
    assert only_json["path"] != full["path"]
    assert all(str(name).endswith(".json") for name in only_json["files"])  # type: ignore[union-attr]
    assert any(str(name).endswith(".safetensors") for name in full["files"])  # type: ignore[union-attr]
    assert fetch(reference, cache_dir, "--include", "*.json") == only_json
    assert fetch(reference, cache_dir) == full


def test_a_tampered_record_is_ignored(registry, tmp_path, cache_dir):
    """A record is a shortcut in the user's own cache, still never trusted to name a path: a directory outside
    models/, a blob that is not there, or garbage, makes the full path run, which writes the record anew (had the
    record been trusted, the edit would still be there)."""
    reference = f"{registry.host}/acme/tampered:v1"
    push_model(write_model(tmp_path / "src"), reference, tmp_path)
    first = fetch(reference, cache_dir)
    (record,) = records(cache_dir)
    original = json.loads(record.read_text())
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for bad in ({**original, "dir": str(outside)},
                {**original, "dir": "../../elsewhere"},
                {**original, "blobs": [["sha256:" + "0" * 64, 1]]},
                {**original, "digest": "sha256:" + "1" * 64},
                "[" * 100_000,  # nested past what the parser takes: ignored, not a RecursionError
                "not json"):
        record.write_text(bad if isinstance(bad, str) else json.dumps(bad))
        assert fetch(reference, cache_dir) == first
        assert json.loads(record.read_text()) == original, bad if not isinstance(bad, str) else bad[:20]


def test_a_record_never_hands_out_another_models_directory(registry, tmp_path, cache_dir):
    """Model A's record edited to name model B's directory: `fetch A` still returns A's own files, online and
    offline (a record counts only for the digest it was made for)."""
    a, b = f"{registry.host}/acme/a:v1", f"{registry.host}/acme/b:v1"
    push_model(write_model(tmp_path / "a", seed=1), a, tmp_path)
    push_model(write_model(tmp_path / "b", seed=2), b, tmp_path)
    first_a = fetch(a, cache_dir)
    first_b = fetch(b, cache_dir)
    record_a = next(path for path in records(cache_dir)
                    if json.loads(path.read_text())["digest"] == first_a["digest"])
    record_b = json.loads(next(path for path in records(cache_dir) if path != record_a).read_text())
    record_a.write_text(json.dumps({**json.loads(record_a.read_text()), "dir": record_b["dir"],
                                    "blobs": record_b["blobs"]}))
    assert fetch(a, cache_dir) == first_a
    assert fetch(a, cache_dir, "--offline") == first_a
    assert first_a["path"] != first_b["path"]


def test_a_model_directory_that_is_a_symlink_is_not_handed_out(registry, tmp_path, cache_dir):
    """A symlink planted under models/sha256/ in place of the model directory, leading outside the cache: neither
    the record nor the full path hands it out."""
    reference = f"{registry.host}/acme/linked:v1"
    push_model(write_model(tmp_path / "src"), reference, tmp_path)
    first = fetch(reference, cache_dir)
    model_dir = Path(str(first["path"]))
    outside = tmp_path / "outside"
    model_dir.rename(outside)
    model_dir.symlink_to(outside, target_is_directory=True)
    for extra in ((), ("--offline",)):
        done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--json", *extra)
        if done.returncode == 0:  # rebuilt as a real directory in the cache
            path = Path(json.loads(done.stdout)["path"])
            assert not path.is_symlink() and path.resolve().is_relative_to(cache_dir.resolve())
        else:
            assert "error:" in done.stderr and str(outside) not in done.stdout
