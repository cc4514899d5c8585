"""Fetching through the mirrors a node configures (issue 18), with real parts: the CNCF distribution registry in
proxy mode as a pull-through mirror of a `crane registry serve` upstream, named in a registries.conf the way
podman and CRI-O read it. A mirror is never trusted: a dead or lying one costs a log line and the next source,
never a wrong byte; digest-only mirrors never resolve a tag; a blocked registry is refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from support.commands import REPO_ROOT, run_cli
from support.mirror_config import registries_conf
from support.models import push_model, tree_bytes, write_model
from support.storage_proxy import StorageProxy

NODES = 8


def fetch_json(reference: str, cache_dir: Path, env: dict[str, str]) -> dict[str, object]:
    done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--json", env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_fleet_fetches_through_the_pull_through_mirror(registry, pull_through, tmp_path):
    """Eight nodes (processes, caches) at once through the mirror: every node gets exact bytes, says they came from
    the mirror, and once the mirror holds the model the upstream serves none of it again."""
    source = write_model(tmp_path / "src", shards=3)
    reference = f"{registry.host}/acme/fleet:v1"
    push_model(source, reference, tmp_path)
    env = registries_conf(tmp_path / "registries.conf", registry.host, pull_through.host)

    first = fetch_json(reference, tmp_path / "node-0", env)  # the mirror fills from the upstream
    assert set(first["sources"].values()) == {f"mirror http://{pull_through.host}/v2/acme/fleet"}
    upstream_after_first = len(registry.blob_downloads())
    assert upstream_after_first > 0
    assert first["digest"] in first["sources"]  # the tag's manifest, from where it was resolved, counts too
    again = fetch_json(reference, tmp_path / "node-0", env)  # answered from the node's record
    assert again["path"] == first["path"]
    assert again["sources"] == {first["digest"]: f"mirror http://{pull_through.host}/v2/acme/fleet"}

    command = [sys.executable, "-m", "oci_crane_loader", "fetch", reference, "--json", "--cache-dir"]
    with ThreadPoolExecutor(NODES) as pool:
        runs = list(pool.map(lambda node: subprocess.run(
            [*command, str(tmp_path / f"node-{node}")], capture_output=True, text=True, cwd=REPO_ROOT,
            env={**os.environ, **env}, timeout=300, check=False), range(1, NODES + 1)))
    for run in runs:
        assert run.returncode == 0, run.stderr
        result = json.loads(run.stdout)
        assert tree_bytes(Path(result["path"])) == tree_bytes(source)
        assert set(result["sources"].values()) == {f"mirror http://{pull_through.host}/v2/acme/fleet"}
    assert len(registry.blob_downloads()) == upstream_after_first  # the fleet cost the upstream nothing more


def test_a_dead_mirror_costs_a_line_and_the_upstream_serves(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src")
    reference = f"{registry.host}/acme/dead:v1"
    push_model(source, reference, tmp_path)
    env = registries_conf(tmp_path / "registries.conf", registry.host, "127.0.0.1:9")  # nothing listens there
    done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--json", env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert tree_bytes(Path(result["path"])) == tree_bytes(source)
    assert "mirror http://127.0.0.1:9/v2/acme/dead" in done.stderr and "trying upstream" in done.stderr.replace(
        "asking upstream", "trying upstream")
    assert all(value.startswith("upstream") for value in result["sources"].values())


def test_a_mirror_that_flips_a_byte_never_reaches_the_cache(registry, tmp_path, cache_dir):
    """A lying mirror (its storage host flips a byte in the middle of every blob): each blob it sends fails its
    digest, the upstream serves it, and the model is exact."""
    source = write_model(tmp_path / "src", shards=2)
    reference = f"{registry.host}/acme/lying:v1"
    push_model(source, reference, tmp_path)
    with StorageProxy(registry.host, corrupt_blobs=True) as liar:
        env = registries_conf(tmp_path / "registries.conf", registry.host, liar.address)
        done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--json", env=env)
        assert liar.requests, "the mirror was never asked for a blob: the test would prove nothing"
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert tree_bytes(Path(result["path"])) == tree_bytes(source)
    assert "digest" in done.stderr and f"mirror http://{liar.address}" in done.stderr
    verify = run_cli("cache", "verify", "--cache-dir", str(cache_dir))
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_digest_only_mirror_never_resolves_a_tag(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src")
    reference = f"{registry.host}/acme/pinned:v1"
    push_model(source, reference, tmp_path)
    with StorageProxy(registry.host, redirect_blobs=False) as mirror:
        env = registries_conf(tmp_path / "registries.conf", registry.host, mirror.address,
                              pull_from_mirror="digest-only")
        result = fetch_json(reference, cache_dir, env)
        asked = [path for method, path, _, _ in mirror.front_requests if method in ("GET", "HEAD")]
    assert tree_bytes(Path(result["path"])) == tree_bytes(source)
    assert not any(path.endswith("/manifests/v1") for path in asked)  # the tag went to the upstream only
    assert any("/blobs/" in path for path in asked)  # the bytes came from the mirror
    sources = dict(result["sources"])
    assert sources.pop(result["digest"]).startswith("upstream")  # "sources" says who resolved the tag
    assert set(sources.values()) == {f"mirror http://{mirror.address}/v2/acme/pinned"}


def test_a_blocked_registry_is_refused_in_one_line(registry, tmp_path, cache_dir):
    reference = f"{registry.host}/acme/blocked:v1"
    push_model(write_model(tmp_path / "src"), reference, tmp_path)
    env = registries_conf(tmp_path / "registries.conf", registry.host, None, blocked=True)
    done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), env=env)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "blocked" in done.stderr
    assert str(tmp_path / "registries.conf") in done.stderr
    assert registry.blob_downloads() == []
