"""`oci-crane cache ls|verify|prune|rm` and `oci-crane doctor`: the real CLI on a cache filled from a real registry."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.cache import blob_names, manifest_names, model_dirs, scratch
from support.commands import run_cli
from support.models import push_model, tree_bytes, write_model

from oci_crane_loader.cache.store import Store
from oci_crane_loader.reference import parse_reference
from oci_crane_loader.registry.crane import find_crane

SECRET = "c2VjcmV0OnNlY3JldA=="  # base64 of secret:secret


def cache(cache_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("cache", *args, "--cache-dir", str(cache_dir), env=env)


def cache_json(cache_dir: Path, *args: str) -> dict[str, object]:
    done = cache(cache_dir, *args, "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def manifest_blobs(cache_dir: Path, digest: str) -> dict[str, int]:
    """hex -> size of the config and every layer, read from the cached manifest."""
    manifest = json.loads(Store(cache_dir).manifest_path(digest).read_bytes())
    return {d["digest"].split(":")[1]: d["size"] for d in [manifest["config"], *manifest["layers"]]}


def names(directory: Path) -> set[str]:
    return {path.name for path in directory.iterdir()}


def every_path(root: Path) -> dict[str, int]:
    return {str(path.relative_to(root)): path.lstat().st_size for path in root.rglob("*")}


@dataclass
class Fetched:
    reference: str
    digest: str
    path: Path
    blobs: dict[str, int]


@dataclass
class TwoModels:
    source: Path
    a: Fetched  # DMR v0.2: one layer per file
    b: Fetched  # DMR v0.1: the same shards, the other files in a tar

    @property
    def shared(self) -> set[str]:
        return self.a.blobs.keys() & self.b.blobs.keys()


def fetch(registry_host: str, cache_dir: Path, name: str) -> Fetched:
    done = run_cli("fetch", f"{registry_host}/{name}", "--cache-dir", str(cache_dir), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    return Fetched(result["reference"], result["digest"], Path(result["path"]),
                   manifest_blobs(cache_dir, result["digest"]))


@pytest.fixture
def two_models(registry, tmp_path, cache_dir) -> TwoModels:
    source = write_model(tmp_path / "src")
    push_model(source, f"{registry.host}/acme/tiny:v2", tmp_path, version="v0.2")
    push_model(source, f"{registry.host}/other/copy:v1", tmp_path, version="v0.1")
    models = TwoModels(source, fetch(registry.host, cache_dir, "acme/tiny:v2"),
                       fetch(registry.host, cache_dir, "other/copy:v1"))
    shards = {hashlib.sha256(p.read_bytes()).hexdigest() for p in source.glob("*.safetensors")}
    assert models.shared == shards and len(shards) == 2  # the weights are stored once for both
    return models


def test_ls_lists_each_ref_and_counts_shared_blobs_once(two_models, cache_dir):
    a, b = two_models.a, two_models.b
    listing = cache_json(cache_dir, "ls")
    entries = {entry["reference"]: entry for entry in listing["entries"]}
    assert set(entries) == {a.reference, b.reference}
    for model in (a, b):
        entry = entries[model.reference]
        assert entry["digest"] == model.digest and entry["manifests"] == [model.digest]
        assert entry["model_dir"] is True and entry["models"] == [str(model.path)]
        assert entry["size"] == sum(model.blobs.values())
    everything = {**a.blobs, **b.blobs}
    assert set(blob_names(cache_dir)) == set(everything)
    assert listing["blobs"] == {"count": len(everything), "bytes": sum(everything.values())}
    assert listing["blobs"]["bytes"] < entries[a.reference]["size"] + entries[b.reference]["size"]
    table = cache(cache_dir, "ls")
    assert table.returncode == 0, table.stderr
    assert a.reference in table.stdout and b.reference in table.stdout and a.digest[:19] in table.stdout
    assert f"blobs: {len(everything)} files" in table.stdout


def test_verify_names_a_damaged_blob_and_prune_damaged_repairs_the_cache(two_models, registry, cache_dir):
    a, b = two_models.a, two_models.b
    clean = cache(cache_dir, "verify")
    assert clean.returncode == 0, clean.stderr
    assert "all intact" in clean.stdout
    shard = sorted(two_models.shared)[0]
    blob = Store(cache_dir).blob_path(f"sha256:{shard}")
    data = blob.read_bytes()
    blob.chmod(blob.stat().st_mode | stat.S_IWUSR)
    blob.write_bytes(data[:-4] + b"\x00\x00\x00\x00")  # same size: only a re-hash can tell

    damaged = cache(cache_dir, "verify")
    assert damaged.returncode == 1
    lines = damaged.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: 1 damaged cache entry")
    assert str(blob) in lines[0] and "fix: run `oci-crane cache prune --damaged`" in lines[0]
    assert str(blob) in damaged.stdout
    report = json.loads(cache(cache_dir, "verify", "--json").stdout)
    assert [(p["kind"], p["path"]) for p in report["problems"]] == [("blob", str(blob))]

    downloads_before = len(registry.blob_downloads())
    pruned = cache_json(cache_dir, "prune", "--damaged")
    removed = {(r["kind"], r["path"]) for r in pruned["removed"]}
    assert removed == {("blob", str(blob)), ("model", str(a.path)), ("model", str(b.path))}
    assert not blob.exists() and not a.path.exists() and not b.path.exists()
    assert set(blob_names(cache_dir)) == (a.blobs.keys() | b.blobs.keys()) - {shard}
    assert Store(cache_dir).manifest_path(a.digest).exists()

    again = fetch(registry.host, cache_dir, "acme/tiny:v2")
    assert again.path == a.path and tree_bytes(again.path) == tree_bytes(two_models.source)
    assert registry.blob_downloads()[downloads_before:] == [f"sha256:{shard}"]  # only the damaged blob again
    assert fetch(registry.host, cache_dir, "other/copy:v1").path == b.path
    assert cache(cache_dir, "verify").returncode == 0


def test_rm_then_prune_frees_the_model_and_its_own_blobs_only(two_models, registry, cache_dir):
    a, b = two_models.a, two_models.b
    removed = cache(cache_dir, "rm", a.reference)
    assert removed.returncode == 0, removed.stderr
    assert not Store(cache_dir).ref_path(parse_reference(a.reference)).exists()
    listing = cache_json(cache_dir, "ls")
    assert [(e["reference"], e["digest"], e["model_dir"]) for e in listing["entries"]] == [
        (b.reference, b.digest, True), (None, a.digest, True)]

    before = every_path(cache_dir)
    dry = cache_json(cache_dir, "prune", "--dry-run")
    assert every_path(cache_dir) == before  # nothing deleted, nothing created
    own = a.blobs.keys() - b.blobs.keys()
    store = Store(cache_dir)
    manifest_a = store.manifest_path(a.digest)
    expected = {("model", str(a.path)), ("manifest", str(manifest_a))} | {
        ("blob", str(store.blob_path(f"sha256:{h}"))) for h in own}
    assert {(r["kind"], r["path"]) for r in dry["removed"]} == expected
    freed = sum(a.blobs[h] for h in own) + manifest_a.stat().st_size  # a's files are links: counted as blobs
    assert dry["freed"] == freed

    pruned = cache_json(cache_dir, "prune")
    assert pruned["dry_run"] is False and pruned["freed"] == freed
    assert {(r["kind"], r["path"]) for r in pruned["removed"]} == expected
    assert set(blob_names(cache_dir)) == set(b.blobs)  # the shared shards stayed
    assert set(manifest_names(cache_dir)) == {b.digest.split(":")[1]}
    assert {path.name for path in model_dirs(cache_dir)} == {b.path.name}
    assert cache_json(cache_dir, "prune")["removed"] == []  # nothing left to do

    requests = len(registry.lines)
    offline_env = {"OCI_CRANE_BINARY": "/nonexistent/crane"}  # crane must not even start
    subprocess.run(["rm", "-rf", str(b.path)], check=True)  # rebuilt from the blobs prune kept
    offline = run_cli("fetch", b.reference, "--cache-dir", str(cache_dir), "--offline", env=offline_env)
    assert offline.returncode == 0, offline.stderr
    assert Path(offline.stdout.strip()) == b.path and tree_bytes(b.path) == tree_bytes(two_models.source)
    assert len(registry.lines) == requests
    gone = run_cli("fetch", a.reference, "--cache-dir", str(cache_dir), "--offline", env=offline_env)
    assert gone.returncode == 1 and "not in the cache" in gone.stderr


def test_prune_drops_the_signatures_and_placement_records_nothing_uses(two_models, cache_dir, tmp_path):
    """What a fetch keeps beside a model (its verified signatures, for --offline; what --local-dir placed where)
    goes with the model, or with the directory, never piling up."""
    a, b = two_models.a, two_models.b
    store = Store(cache_dir)
    for fetched in (a, b):
        store.save_signatures(fetched.digest, b'{"signatures": []}')
    kept, gone = tmp_path / "kept", tmp_path / "gone"
    for target in (kept, gone):
        placed = run_cli("fetch", b.reference, "--cache-dir", str(cache_dir), "--local-dir", str(target), "--quiet")
        assert placed.returncode == 0, placed.stderr
    subprocess.run(["rm", "-rf", str(gone)], check=True)
    assert cache(cache_dir, "rm", a.reference).returncode == 0

    pruned = cache_json(cache_dir, "prune")
    removed = {(r["kind"], r["path"]) for r in pruned["removed"] if r["kind"] in ("signatures", "placement")}
    assert removed == {("signatures", str(store.signatures_path(a.digest))),
                       ("placement", str(store.placement_path(gone.resolve())))}
    assert store.load_signatures(b.digest) is not None and store.placement_path(kept.resolve()).is_file()
    assert cache_json(cache_dir, "prune")["removed"] == []


def test_directories_for_a_subpath_belong_to_their_manifest(two_models, cache_dir):
    a, b = two_models.a, two_models.b
    chosen = a.path.with_name(f"{a.path.name}-0123456789ab")  # models/sha256/<manifest hex>-<subpath hash>
    subprocess.run(["cp", "-al", str(a.path), str(chosen)], check=True)
    entries = {e["reference"]: e for e in cache_json(cache_dir, "ls")["entries"]}
    assert entries[a.reference]["models"] == [str(a.path), str(chosen)]
    assert cache(cache_dir, "verify").returncode == 0
    assert cache_json(cache_dir, "prune")["removed"] == []
    assert cache(cache_dir, "rm", a.reference).returncode == 0
    removed = {(r["kind"], r["path"]) for r in cache_json(cache_dir, "prune")["removed"]}
    assert {("model", str(a.path)), ("model", str(chosen))} <= removed
    assert {path.name for path in model_dirs(cache_dir)} == {b.path.name}


def test_rm_with_prune_and_unknown_refs(two_models, cache_dir):
    a, b = two_models.a, two_models.b
    done = cache(cache_dir, "rm", a.reference, "--prune")
    assert done.returncode == 0, done.stderr
    assert f"removed {a.reference}" in done.stdout and "freed" in done.stdout
    assert not a.path.exists() and b.path.exists()
    again = cache(cache_dir, "rm", a.reference)
    assert again.returncode == 1
    assert again.stderr.startswith("error: ") and "not in the cache" in again.stderr and "fix:" in again.stderr
    pinned = cache(cache_dir, "rm", f"{b.reference.rsplit(':', 1)[0]}@{b.digest}")
    assert pinned.returncode == 1 and "not in the cache" in pinned.stderr  # fetched by tag, not by this digest


def test_prune_skips_a_blob_whose_download_lock_is_held(two_models, cache_dir):
    a, b = two_models.a, two_models.b
    assert cache(cache_dir, "rm", a.reference).returncode == 0
    held = sorted(a.blobs.keys() - b.blobs.keys())[0]
    store = Store(cache_dir)
    with store.try_blob_lock(f"sha256:{held}", create=True) as locked:  # as a download in another process holds it
        assert locked
        pruned = cache_json(cache_dir, "prune")
    assert [r["path"] for r in pruned["skipped"]] == [str(store.blob_path(f"sha256:{held}"))]
    assert set(blob_names(cache_dir)) == set(b.blobs) | {held}
    assert not a.path.exists()
    assert [r["path"] for r in cache_json(cache_dir, "prune")["removed"]] == [str(store.blob_path(f"sha256:{held}"))]


def test_prune_removes_tmp_leftovers_older_than_an_hour_only(cache_dir):
    store = Store(cache_dir)  # leftovers named as the Store names its temp files and scratch directories
    stale_file = store.temp_path("abc")
    stale_file.write_bytes(b"x" * 100)
    stale_dir = store.scratch_dir("model-0123.")
    (stale_dir / "sub").mkdir(parents=True)
    (stale_dir / "sub" / "config.json").write_bytes(b"{}")
    fresh = store.temp_path("def")
    fresh.write_bytes(b"y")
    old = time.time() - 2 * 3600
    for path in (stale_file, stale_dir / "sub" / "config.json", stale_dir / "sub", stale_dir):
        os.utime(path, (old, old))
    dry = cache_json(cache_dir, "prune", "--dry-run")
    assert {r["path"] for r in dry["removed"]} == {str(stale_file), str(stale_dir)}
    assert stale_file.exists() and stale_dir.exists()
    pruned = cache_json(cache_dir, "prune")
    assert {(r["kind"], r["path"]) for r in pruned["removed"]} == {("tmp", str(stale_file)), ("tmp", str(stale_dir))}
    assert pruned["freed"] == 102
    assert {path.name for path in scratch(cache_dir)} == {fresh.name}


def doctor(cache_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("doctor", "--cache-dir", str(cache_dir), *args, env=env)


def checks(done: subprocess.CompletedProcess[str]) -> dict[str, dict[str, object]]:
    return {check["name"]: check for check in json.loads(done.stdout)["checks"]}


def test_doctor_reports_crane_and_the_cache(crane_binary, cache_dir):
    done = doctor(cache_dir, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    found = checks(done)
    assert found["crane"]["ok"] is True and found["crane"]["required"] is True
    assert find_crane() in str(found["crane"]["detail"]) and "found via" in str(found["crane"]["detail"])
    assert found["cache"]["ok"] is True and str(cache_dir.resolve()) in str(found["cache"]["detail"])
    assert found["vllm plugin"]["ok"] is True  # the package is installed with its entry point
    assert "vllm" in found
    text = doctor(cache_dir)
    assert text.returncode == 0 and text.stdout.startswith("OK    crane: ")


def test_doctor_fails_without_crane(crane_binary, cache_dir):
    env = {"OCI_CRANE_BINARY": "/nonexistent"}
    done = doctor(cache_dir, "--json", env=env)
    assert done.returncode == 1
    crane = checks(done)["crane"]
    assert crane["ok"] is False and "OCI_CRANE_BINARY=/nonexistent" in str(crane["detail"]) and crane["fix"]
    assert done.stderr.strip().splitlines() == ["error: required checks failed: crane -- fix: see the FAIL lines above"]
    text = doctor(cache_dir, env=env)
    assert text.returncode == 1 and "FAIL  crane: OCI_CRANE_BINARY=/nonexistent" in text.stdout


def test_doctor_names_a_missing_credential_helper_and_never_prints_auth(crane_binary, tmp_path, cache_dir):
    config_dir = tmp_path / "docker"
    config_dir.mkdir()
    (config_dir / "config.json").write_text(json.dumps({
        "auths": {"x": {"auth": SECRET}},
        "credsStore": "oci-crane-test-missing",
        "credHelpers": {"reg.example.com": "ocicranefake"},
    }))
    helpers = tmp_path / "bin"
    helpers.mkdir()
    fake = helpers / "docker-credential-ocicranefake"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    env = {"DOCKER_CONFIG": str(config_dir), "PATH": f"{helpers}{os.pathsep}{os.environ.get('PATH', '')}"}
    text = doctor(cache_dir, env=env)
    as_json = doctor(cache_dir, "--json", env=env)
    for done in (text, as_json):
        assert done.returncode == 0, done.stderr  # credentials are advice, not a required check
        assert SECRET not in done.stdout + done.stderr and "secret:secret" not in done.stdout + done.stderr
    assert "FAIL  credential helper oci-crane-test-missing: docker-credential-oci-crane-test-missing is not on PATH" \
        in text.stdout
    found = checks(as_json)
    assert found["credentials"]["ok"] is True and "1 registry in auths" in str(found["credentials"]["detail"])
    assert found["credential helper oci-crane-test-missing"]["ok"] is False
    helper = found["credential helper ocicranefake"]
    assert helper["ok"] is True and str(fake) in str(helper["detail"]) and "reg.example.com" in str(helper["detail"])


def test_ls_and_verify_tell_a_filtered_directory_from_the_model(registry, tmp_path, cache_dir):
    """A fetch with --include gets a directory of some files: `cache ls` never calls it the model directory, and
    `cache verify` does not ask it for the weights it left out."""
    reference = f"{registry.host}/acme/tiny:v1"
    push_model(write_model(tmp_path / "src"), reference, tmp_path)
    done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--json", "-q", "--include", "*.json")
    assert done.returncode == 0, done.stderr
    filtered = Path(json.loads(done.stdout)["path"])
    assert not any(name.endswith(".safetensors") for name in names(filtered))

    (entry,) = cache_json(cache_dir, "ls")["entries"]
    assert (entry["reference"], entry["model_dir"], entry["models"], entry["filtered"]) == (
        reference, False, [], [str(filtered)])
    (row,) = [line for line in cache(cache_dir, "ls").stdout.splitlines() if line.startswith(reference)]
    assert row.split()[2] == "filtered", row
    checked = cache(cache_dir, "verify")
    assert checked.returncode == 0 and "all intact" in checked.stdout, checked.stdout + checked.stderr

    whole = fetch(registry.host, cache_dir, "acme/tiny:v1")
    (entry,) = cache_json(cache_dir, "ls")["entries"]
    assert (entry["model_dir"], entry["models"], entry["filtered"]) == (True, [str(whole.path)], [str(filtered)])
    (row,) = [line for line in cache(cache_dir, "ls").stdout.splitlines() if line.startswith(reference)]
    assert "yes, filtered" in row, row


def installed_vllm(site: Path, version: str, init: str = "") -> dict[str, str]:
    """A `vllm` distribution of ``version`` (metadata and a package, as pip lays them out) first on sys.path."""
    (site / "vllm").mkdir(parents=True)
    (site / "vllm" / "__init__.py").write_text(init)
    info = site / f"vllm-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


@pytest.mark.parametrize(("version", "ok", "in_range"), [("0.20.1+cpu", True, True), ("0.9.2", False, False),
                                                         ("0.34.0", False, False)])
def test_doctor_shows_the_vllm_version_against_the_supported_range(crane_binary, tmp_path, cache_dir, version, ok,
                                                                   in_range):
    from oci_crane_loader.vllm_api import SUPPORTED_RANGE

    env = installed_vllm(tmp_path / "site", version)
    done = doctor(cache_dir, "--json", env=env)
    assert done.returncode == 0, done.stderr  # vLLM is advice, not a required check
    found = checks(done)["vllm"]
    assert (found["ok"], found["version"], found["supported"], found["in_range"]) == (
        ok, version, SUPPORTED_RANGE, in_range)
    (line,) = [line for line in doctor(cache_dir, env=env).stdout.splitlines() if line.startswith(("OK", "FAIL"))
               and " vllm: " in line]
    if ok:
        assert line == f"OK    vllm: version {version}, in the supported range vllm{SUPPORTED_RANGE}"
    else:
        assert line.startswith(f"FAIL  vllm: version {version}, outside the supported range vllm{SUPPORTED_RANGE}")
        assert line.endswith(f"-- fix: install a vLLM in the supported range: pip install 'vllm{SUPPORTED_RANGE}'")


def test_doctor_without_vllm_shows_the_supported_range_and_a_broken_one_why(crane_binary, tmp_path, cache_dir):
    from oci_crane_loader.vllm_api import SUPPORTED_RANGE

    if importlib.util.find_spec("vllm") is None:
        found = checks(doctor(cache_dir, "--json"))["vllm"]
        assert (found["ok"], found["version"], found["in_range"]) == (True, None, None)
        assert found["detail"] == f"not installed (optional; the plugin supports vllm{SUPPORTED_RANGE})"
    env = installed_vllm(tmp_path / "site", "0.20.0", init="raise ImportError('libcudart.so.12: cannot open')\n")
    broken = checks(doctor(cache_dir, "--json", env=env))["vllm"]
    assert broken["ok"] is False and broken["version"] == "0.20.0"
    assert "installed but `import vllm` fails: ImportError: libcudart.so.12: cannot open" in str(broken["detail"])


def test_verify_reports_a_model_directory_missing_a_file_and_prune_damaged_removes_it(registry, tmp_path,
                                                                                       cache_dir):
    source = write_model(tmp_path / "src", shards=1)
    reference = f"{registry.host}/acme/gone:v1"
    push_model(source, reference, tmp_path)
    done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--quiet")
    assert done.returncode == 0, done.stderr
    model = Path(done.stdout.strip())
    (model / "model.safetensors").unlink()
    report = cache(cache_dir, "verify", "--json")
    assert report.returncode == 1
    assert [(p["kind"], p["path"], p["detail"]) for p in json.loads(report.stdout)["problems"]] == [
        ("model", str(model), "lacks 1 file(s) it was built with: model.safetensors")]
    pruned = cache_json(cache_dir, "prune", "--damaged")
    assert [(r["kind"], r["path"]) for r in pruned["removed"]] == [("model", str(model))]
    again = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--quiet")
    assert again.returncode == 0 and tree_bytes(Path(again.stdout.strip())) == tree_bytes(source)
    assert cache(cache_dir, "verify").returncode == 0
