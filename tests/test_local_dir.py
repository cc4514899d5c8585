"""`oci-crane fetch REF --local-dir DIR` and `fetch(..., local_dir=...)`: the model's files placed in a directory of
the user's choosing, against a real registry on 127.0.0.1."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from support.commands import REPO_ROOT, run_cli, unshare_mount
from support.models import push_model, pushed_model, tree_bytes, write_model

import oci_crane_loader
from oci_crane_loader import errors
from oci_crane_loader.cache.store import Store
from oci_crane_loader.errors import LocalDirError
from oci_crane_loader.local_dir import place_model


@pytest.fixture
def pushed(registry, tmp_path: Path) -> tuple[str, Path]:
    return pushed_model(registry.host, tmp_path, "acme/local:v1")


def fetch_into(reference: str, cache: Path, target: Path, *extra: str) -> tuple[dict, str]:
    done = run_cli("fetch", reference, "--cache-dir", str(cache), "--local-dir", str(target), "--json", *extra)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """inode, mtime and ctime of every entry: a run that touches nothing leaves all three alone."""
    return {str(p.relative_to(root)): (p.lstat().st_ino, p.lstat().st_mtime_ns, p.lstat().st_ctime_ns)
            for p in [root, *sorted(root.rglob("*"))]}


def test_local_dir_holds_copies_of_its_own_and_stdout_is_the_directory(pushed, cache_dir, tmp_path):
    reference, source = pushed
    target = tmp_path / "models" / "deep" / "local"  # missing, parents too: created
    done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--local-dir", str(target), "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(target)
    assert tree_bytes(target) == tree_bytes(source)
    result, _ = fetch_into(reference, cache_dir, target)
    cache_path = Path(result["cache_path"])
    assert result["path"] == str(target) and cache_path.is_relative_to(cache_dir)
    for name in result["files"]:  # a file of DIR's own (a reflink or a copy), writable by its owner
        placed, cached = (target / name).stat(), (cache_path / name).stat()
        assert placed.st_ino != cached.st_ino and placed.st_nlink == 1 and placed.st_mode & stat.S_IWUSR, name
    assert sorted(tree_bytes(target)) == sorted(result["files"])


def test_link_mode_holds_hard_links_to_the_cache(pushed, cache_dir, tmp_path):
    reference, source = pushed
    target = tmp_path / "local"
    result, _ = fetch_into(reference, cache_dir, target, "--local-dir-mode", "link")
    assert sorted(result["local_dir"]["linked"]) == sorted(result["files"]) and not result["local_dir"]["copied"]
    cache_path = Path(result["cache_path"])
    for name in result["files"]:  # the same inode as the cached file: no second copy on disk
        assert (target / name).stat().st_ino == (cache_path / name).stat().st_ino, name
    # Back to the default: each hard link into the cache becomes a copy, so that an edit cannot reach the cache.
    again, _ = fetch_into(reference, cache_dir, target)
    assert sorted(again["local_dir"]["copied"]) == sorted(result["files"]) and not again["local_dir"]["replaced"]
    assert all((target / name).stat().st_nlink == 1 for name in result["files"])
    assert tree_bytes(target) == tree_bytes(source)
    unused = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--local-dir-mode", "link")
    assert unused.returncode == 2 and "--local-dir-mode applies to --local-dir" in unused.stderr


def test_second_run_touches_nothing(pushed, cache_dir, tmp_path):
    reference, _ = pushed
    target = tmp_path / "local"
    first, _ = fetch_into(reference, cache_dir, target)
    assert sorted(first["local_dir"]["copied"]) == sorted(first["files"]) and not first["local_dir"]["unchanged"]
    before = snapshot(target)
    second, stderr = fetch_into(reference, cache_dir, target)
    assert snapshot(target) == before
    assert second["local_dir"] == {"linked": [], "copied": [], "unchanged": sorted(first["files"]), "replaced": [],
                                   "removed": [], "extra": []}
    assert "warning" not in stderr


def test_extra_files_are_left_alone_and_changed_files_replaced_and_both_reported(pushed, cache_dir, tmp_path):
    reference, source = pushed
    target = tmp_path / "local"
    (target / "notes").mkdir(parents=True)
    (target / "notes" / "mine.txt").write_text("my notes")
    (target / "config.json").write_text('{"edited": true}')
    result, stderr = fetch_into(reference, cache_dir, target)
    assert (target / "notes" / "mine.txt").read_text() == "my notes"
    assert (target / "config.json").read_bytes() == (source / "config.json").read_bytes()
    assert result["local_dir"]["replaced"] == ["config.json"]
    assert result["local_dir"]["extra"] == ["notes/mine.txt"]
    warnings = [line for line in stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2, stderr
    assert "config.json" in warnings[0] and "notes/mine.txt" in warnings[1]
    # A file with the model's bytes, written by someone else (another inode, another mtime), is kept as it is.
    (target / "config.json").unlink()
    (target / "config.json").write_bytes((source / "config.json").read_bytes())
    kept = (target / "config.json").stat().st_ino
    again, _ = fetch_into(reference, cache_dir, target)
    assert "config.json" in again["local_dir"]["unchanged"] and (target / "config.json").stat().st_ino == kept


def other_device(tmp_path: Path) -> Path:
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK) or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a writable /dev/shm on another file system than the test's tmp dir")
    return shm


def test_another_file_system_gets_copies_and_a_second_run_keeps_them(pushed, cache_dir, tmp_path):
    import tempfile

    reference, source = pushed
    with tempfile.TemporaryDirectory(dir=other_device(tmp_path)) as elsewhere:
        target = Path(elsewhere) / "local"
        result, _ = fetch_into(reference, cache_dir, target)
        assert sorted(result["local_dir"]["copied"]) == sorted(result["files"]) and not result["local_dir"]["linked"]
        assert tree_bytes(target) == tree_bytes(source)
        assert not [p for p in target.rglob("*") if p.name.startswith(".oci-crane-partial")]
        before = snapshot(target)
        again, _ = fetch_into(reference, cache_dir, target)
        assert snapshot(target) == before and sorted(again["local_dir"]["unchanged"]) == sorted(result["files"])


def test_a_full_disk_leaves_no_partial_file_under_a_final_name(registry, cache_dir, tmp_path):
    source = write_model(tmp_path / "source")
    (source / "tokenizer.json").write_bytes(os.urandom(256 << 10))  # larger than the 128 KiB file system below
    reference = f"{registry.host}/acme/big:v1"
    push_model(source, reference, tmp_path)
    assert run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--quiet").returncode == 0
    script = ("mount -t tmpfs -o size=128k tmpfs /mnt && mkdir /mnt/model && "
              f"{sys.executable} -m oci_crane_loader fetch {reference} --cache-dir {cache_dir} --quiet "
              "--local-dir /mnt/model; echo rc=$?; ls -A /mnt/model")
    done = subprocess.run([*unshare_mount(), "sh", "-c", script], capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, timeout=120, check=False)
    assert "rc=1" in done.stdout, done.stdout + done.stderr
    errors_shown = done.stderr.strip().splitlines()
    assert len(errors_shown) == 1 and "free disk space" in errors_shown[0], done.stderr
    listed = done.stdout.split("rc=1", 1)[1].split()
    assert "tokenizer.json" not in listed and not [n for n in listed if n.startswith(".oci-crane-partial")], listed


def test_symlinks_in_the_directory_never_lead_outside_it(pushed, cache_dir, tmp_path):
    reference, source = pushed
    target, outside = tmp_path / "local", tmp_path / "outside"
    target.mkdir()
    outside.mkdir()
    (outside / "precious.json").write_text("keep me")
    (target / "config.json").symlink_to(outside / "precious.json")
    result, _ = fetch_into(reference, cache_dir, target)
    assert (outside / "precious.json").read_text() == "keep me"
    assert not (target / "config.json").is_symlink()
    assert (target / "config.json").read_bytes() == (source / "config.json").read_bytes()
    assert "config.json" in result["local_dir"]["replaced"]

    # A directory of the model that is a symlink out of DIR: refused, nothing written through it.
    (target / "1_Pooling" / "config.json").unlink()
    (target / "1_Pooling").rmdir()
    (target / "1_Pooling").symlink_to(outside, target_is_directory=True)
    done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--local-dir", str(target), "--quiet")
    assert done.returncode == 1 and done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert "1_Pooling is a symlink" in line and " -- fix: " in line
    assert sorted(p.name for p in outside.iterdir()) == ["precious.json"]


def test_a_model_path_that_climbs_out_is_refused(tmp_path):
    model = tmp_path / "cache-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    with pytest.raises(errors.InvalidModelError, match="escapes"):
        place_model(model, ["../escape.json"], tmp_path / "local", store=Store(tmp_path / "cache"))
    assert not (tmp_path / "escape.json").exists()


def test_a_file_where_the_directory_should_be_is_one_clear_error(pushed, cache_dir, tmp_path):
    reference, _ = pushed
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--local-dir", str(blocker), "--quiet")
    assert done.returncode == 1 and "is not a directory" in done.stderr and blocker.read_text() == "a file"
    empty = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--local-dir", "", "--quiet")
    assert empty.returncode == 2 and "--local-dir is empty" in empty.stderr  # a usage error, before any download
    with pytest.raises(LocalDirError, match="empty"):
        place_model(tmp_path, [], " ", store=Store(tmp_path / "cache"))


def test_python_api_places_the_model_and_returns_the_directory(pushed, cache_dir, tmp_path, caplog):
    reference, source = pushed
    target = tmp_path / "api"
    target.mkdir()
    (target / "README.md").write_text("mine")
    returned = oci_crane_loader.fetch(reference, cache_dir=cache_dir, local_dir=target)
    assert returned == target
    assert {k: v for k, v in tree_bytes(target).items() if k != "README.md"} == tree_bytes(source)
    assert any("README.md" in record.getMessage() for record in caplog.records)
