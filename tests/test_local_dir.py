"""`oci-crane fetch REF --local-dir DIR` and `fetch(..., local_dir=...)`: the model's files placed in a directory of
the user's choosing, against a real registry on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
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


def cache_verify(cache: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("cache", "verify", "--cache-dir", str(cache))


def test_editing_a_placed_file_never_reaches_the_cache(pushed, cache_dir, tmp_path):
    """As the docs tell users (chmod -R u+w, then edit), and as root, who needs no chmod: the cache stays intact."""
    reference, source = pushed
    target = tmp_path / "local"
    fetch_into(reference, cache_dir, target)
    subprocess.run(["chmod", "-R", "u+w", str(target)], check=True)
    with open(target / "config.json", "ab") as handle:
        handle.write(b" ")
    assert cache_verify(cache_dir).returncode == 0
    again, stderr = fetch_into(reference, cache_dir, target)  # the model's own file comes back, and is reported
    assert again["local_dir"]["replaced"] == ["config.json"] and "config.json" in stderr
    assert tree_bytes(target) == tree_bytes(source)
    assert cache_verify(cache_dir).returncode == 0


def test_a_write_through_a_link_mode_file_is_healed_by_the_next_fetch(pushed, cache_dir, tmp_path):
    """--local-dir-mode link shares the cache's inodes: one byte appended there (as root, mode 0444 or not) damages
    the cached blob. The next fetch sets it aside with the directories linking it, says so in one line, downloads
    it again and rebuilds; `cache verify` is then clean."""
    reference, source = pushed
    target = tmp_path / "local"
    result, _ = fetch_into(reference, cache_dir, target, "--local-dir-mode", "link")
    digest = "sha256:" + hashlib.sha256((target / "config.json").read_bytes()).hexdigest()
    (target / "config.json").chmod(0o644)
    with open(target / "config.json", "ab") as handle:
        handle.write(b" ")
    assert cache_verify(cache_dir).returncode == 1
    healed, stderr = fetch_into(reference, cache_dir, target, "--local-dir-mode", "link")
    damaged = [line for line in stderr.splitlines() if "is damaged" in line]
    assert len(damaged) == 1 and f"{digest} of {reference}" in damaged[0], stderr
    assert healed["cache_path"] == result["cache_path"] and healed["local_dir"]["replaced"] == ["config.json"]
    assert tree_bytes(target) == tree_bytes(source) == tree_bytes(Path(healed["cache_path"]))
    assert cache_verify(cache_dir).returncode == 0


def test_a_local_dir_in_or_around_the_cache_is_refused(registry, cache_dir, tmp_path):
    """A hostile artifact whose files are named blobs/sha256/<a victim's blob>, manifests/..., refs/..., fetched
    with --local-dir at the cache root, would replace the victim's model: such a DIR (the cache, inside it, or
    holding it; symlinks resolved) is refused before anything is downloaded, by the CLI and by Python's fetch()."""
    victim_source = write_model(tmp_path / "victim")
    victim = f"{registry.host}/acme/victim:v1"
    push_model(victim_source, victim, tmp_path)
    victim_path = Path(fetch_into(victim, cache_dir, tmp_path / "victim-copy")[0]["cache_path"])
    victim_blob = next(p for p in (cache_dir / "blobs" / "sha256").iterdir() if p.stat().st_size > 200)
    hostile_source = write_model(tmp_path / "hostile", shards=1, seed=7)
    for name in (f"blobs/sha256/{victim_blob.name}", f"refs/{registry.host}/acme/victim/@tags/v1",
                 f"manifests/sha256/{victim_blob.name}"):
        (hostile_source / name).parent.mkdir(parents=True, exist_ok=True)
        (hostile_source / name).write_text("hostile")
    hostile = f"{registry.host}/acme/hostile:v1"
    push_model(hostile_source, hostile, tmp_path)
    downloads = len(registry.blob_downloads())
    linked = tmp_path / "innocent-looking"
    linked.symlink_to(cache_dir, target_is_directory=True)
    for target, how in ((cache_dir, "is"), (cache_dir / "models", "lies inside"), (tmp_path, "holds"),
                        (linked, "is")):
        done = run_cli("fetch", hostile, "--cache-dir", str(cache_dir), "--local-dir", str(target), "--quiet")
        assert done.returncode == 2 and done.stdout == "", done.stderr
        assert f"{how} the cache at {cache_dir}" in done.stderr and "fix: choose a --local-dir outside" in done.stderr
    with pytest.raises(errors.UsageError, match="is the cache"):
        oci_crane_loader.fetch(hostile, cache_dir=cache_dir, local_dir=cache_dir)
    assert len(registry.blob_downloads()) == downloads  # refused before anything was downloaded
    with pytest.raises(errors.UsageError, match="lies inside the cache"):  # the placement checks on its own too
        place_model(victim_path, ["config.json"], cache_dir / "refs", store=Store(cache_dir))
    offline = run_cli("fetch", victim, "--cache-dir", str(cache_dir), "--offline", "--quiet")
    assert offline.returncode == 0 and tree_bytes(Path(offline.stdout.strip())) == tree_bytes(victim_source)
    assert cache_verify(cache_dir).returncode == 0


def two_models(registry, tmp_path: Path) -> tuple[tuple[str, Path], tuple[str, Path]]:
    """Two different models: two shards and an index, and one model.safetensors."""
    first, second = write_model(tmp_path / "first", shards=2), write_model(tmp_path / "second", shards=1, seed=3)
    push_model(first, f"{registry.host}/acme/first:v1", tmp_path)
    push_model(second, f"{registry.host}/acme/second:v1", tmp_path)
    return (f"{registry.host}/acme/first:v1", first), (f"{registry.host}/acme/second:v1", second)


def test_the_files_the_last_placement_left_and_this_model_lacks_are_removed(registry, cache_dir, tmp_path):
    (first, _), (second, second_source) = two_models(registry, tmp_path)
    target = tmp_path / "local"
    fetch_into(first, cache_dir, target)
    (target / "notes.txt").write_text("mine")  # the user's: never removed
    result, stderr = fetch_into(second, cache_dir, target)
    assert result["local_dir"]["removed"] == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                              "model.safetensors.index.json"]
    assert result["local_dir"]["extra"] == ["notes.txt"] and "removed 3 file(s)" in stderr
    assert {k: v for k, v in tree_bytes(target).items() if k != "notes.txt"} == tree_bytes(second_source)
    # A file the user changed since is theirs: left alone and reported, not removed.
    fetch_into(first, cache_dir, target)
    with open(target / "model.safetensors.index.json", "a") as handle:
        handle.write("\n")
    back, _ = fetch_into(second, cache_dir, target)
    assert "model.safetensors.index.json" in back["local_dir"]["extra"]
    assert "model.safetensors.index.json" not in back["local_dir"]["removed"]


def test_two_fetches_into_one_local_dir_take_turns(registry, cache_dir, tmp_path):
    """Two fetches of different models into one DIR at once: the second waits for the first's placement, and DIR
    ends holding exactly one model, whole (the first's other files removed), both exiting 0. The test holds DIR's
    lock itself until both fetches wait for it, so that they do overlap."""
    import fcntl

    (first, first_source), (second, second_source) = two_models(registry, tmp_path)
    target = tmp_path / "local"
    target.mkdir()
    for reference in (first, second):  # in the cache already: the race is the placement's alone
        assert run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--quiet").returncode == 0
    holder = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    runs = []
    try:
        for number, reference in enumerate((first, second)):
            log = tmp_path / f"fetch-{number}.log"
            command = [sys.executable, "-m", "oci_crane_loader", "fetch", reference, "--cache-dir", str(cache_dir),
                       "--local-dir", str(target), "--quiet", "--debug"]
            with open(log, "w") as stderr:
                runs.append((subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                              cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}), log))
        give_up = time.monotonic() + 240  # a guard against a hang, not a measure of speed
        for process, log in runs:  # both wait for DIR
            while "waiting for another fetch" not in log.read_text():
                assert process.poll() is None and time.monotonic() < give_up, log.read_text()
                time.sleep(0.05)
    finally:
        os.close(holder)
    outputs = [process.communicate(timeout=300)[0] for process, _ in runs]
    assert [process.returncode for process, _ in runs] == [0, 0], [log.read_text() for _, log in runs]
    assert outputs == [f"{target}\n", f"{target}\n"]
    assert tree_bytes(target) in (tree_bytes(first_source), tree_bytes(second_source))
    assert cache_verify(cache_dir).returncode == 0
