"""A fleet through a coalescing pull-through mirror (issue 18): nginx's proxy cache (deploy/nginx-mirror.conf.template,
the docker-registry-proxy pattern) in front of a `crane registry serve` upstream. Eight nodes (processes, caches)
fetch one sharded model at once, cold: the upstream serves each blob once (counted from its own log), every node
gets exact bytes and says the mirror served them; named in a registries.conf, and in a containerd hosts.toml (the
HTTP road, with containerd's ?ns=). Below that, what the fetch path relies on: concurrent ranged GETs and a HEAD of
one missing blob cost the upstream one download, and a registry that redirects blobs to a storage host is followed
by the mirror, not by the client."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from support.commands import REPO_ROOT
from support.mirror_config import registries_conf
from support.models import push_model, tree_bytes
from support.nginx_mirror import binary_path, nginx_mirror
from support.storage_proxy import StorageProxy
from support.throttle import throttled

from oci_crane_loader.registry.crane import Crane

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(binary_path() is None, reason="nginx is not installed: run bin/install-test-deps")]
NODES = 8
SHARD = 8 << 20
# Each upstream connection's rate: filling the mirror with one shard takes about 4 s, long enough that the nodes'
# requests for it arrive while it fills (the test checks they did, else it would prove nothing).
RATE = 2 << 20


def sharded_model(directory: Path, shards: int = 3) -> Path:
    directory.mkdir(parents=True)
    rng = np.random.default_rng(18)
    weight_map = {}
    for number in range(1, shards + 1):
        name = f"model-{number:05d}-of-{shards:05d}.safetensors"
        save_file({f"layers.{number}.weight": rng.integers(0, 256, SHARD, dtype=np.uint8)}, str(directory / name),
                  metadata={"format": "pt"})
        weight_map[f"layers.{number}.weight"] = name
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps({"architectures": ["TestModel"]}))
    return directory


def layer_digests(reference: str) -> list[str]:
    """The manifest's layers, largest first."""
    layers = json.loads(Crane().run("manifest", reference))["layers"]
    return [layer["digest"] for layer in sorted(layers, key=lambda layer: -layer["size"])]


def upstream_blob_gets(registry, digests: list[str]) -> Counter[str]:
    """The upstream's blob GETs by digest, read from its log once each of ``digests`` shows (a finished request's
    log line can trail it by a moment)."""
    for _ in range(200):
        if set(digests) <= set(registry.blob_downloads()):
            break
        time.sleep(0.05)
    return Counter(registry.blob_downloads())


def fleet(reference: str, tmp_path: Path, env: dict[str, str], nodes: int = NODES) -> list[dict[str, object]]:
    """``nodes`` processes, each with a cache of its own, fetching ``reference`` at once; their --json results."""
    procs = [subprocess.Popen([sys.executable, "-m", "oci_crane_loader", "fetch", reference, "--json", "--cache-dir",
                               str(tmp_path / f"node-{node}")], cwd=REPO_ROOT, env={**os.environ, **env},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for node in range(nodes)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    return results


def coalesced(mirror, digest: str) -> int:
    """How many of the mirror's GETs of ``digest`` started while its one upstream fetch was under way (waited on
    proxy_cache_lock); from the mirror's access log: each line's end time less the time it took."""
    gets = [entry for entry in mirror.access() if entry["path"].partition("?")[0].endswith(f"/blobs/{digest}")]
    fills = [entry for entry in gets if entry["upstream"] != "-"]
    assert len(fills) == 1, fills
    filled_at = float(fills[0]["end"])
    return sum(1 for entry in gets if entry is not fills[0] and float(entry["end"]) - float(entry["took"]) < filled_at)


@pytest.fixture
def slow_upstream(registry, tmp_path):
    """The `registry` fixture, reached by the mirror through a connection-rate cap; the model pushed straight."""
    source = sharded_model(tmp_path / "src")
    reference = f"{registry.host}/acme/fleet:v1"
    push_model(source, reference, tmp_path)
    with throttled(registry.host, RATE) as slow:
        yield source, reference, slow


def hosts_toml(directory: Path, upstream: str, mirror: str) -> dict[str, str]:
    (directory / upstream).mkdir(parents=True)
    (directory / upstream / "hosts.toml").write_text(
        f'server = "http://{upstream}"\n[host."http://{mirror}"]\ncapabilities = ["pull", "resolve"]\n')
    return {"OCI_CRANE_HOSTS_DIR": str(directory), "CONTAINERS_REGISTRIES_CONF": str(directory / "none.conf")}


@pytest.mark.parametrize("configured_by", ["registries.conf", "hosts.toml"])
def test_eight_cold_nodes_through_nginx_cost_the_upstream_each_blob_once(registry, slow_upstream, tmp_path,
                                                                         configured_by):
    source, reference, slow = slow_upstream
    with nginx_mirror(tmp_path / "nginx", f"http://{slow}") as mirror:
        if configured_by == "registries.conf":
            env = registries_conf(tmp_path / "registries.conf", registry.host, mirror.host)
        else:
            env = hosts_toml(tmp_path / "certs.d", registry.host, mirror.host)
            (tmp_path / "certs.d" / "none.conf").write_text("")
        # Shards on the ranged road (its probe, parallel ranges), as multi-GB shards take it by default.
        results = fleet(reference, tmp_path, {**env, "OCI_CRANE_RANGE_THRESHOLD": "1M"})
        layers = layer_digests(reference)
        waited = {digest: coalesced(mirror, digest) for digest in layers}
    expected = tree_bytes(source)
    for result in results:
        assert tree_bytes(Path(result["path"])) == expected
        assert set(result["sources"].values()) == {f"mirror http://{mirror.host}/v2/acme/fleet"}, result["sources"]
    served = upstream_blob_gets(registry, layers)
    assert all(served[digest] == 1 for digest in layers), served
    assert all(count == 1 for count in served.values()), served  # the config too, where a node asked for it
    assert max(waited.values()) > 0, f"no node asked while the mirror filled: the test would prove nothing ({waited})"


def ask(host: str, method: str, path: str, byte_range: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    connection = http.client.HTTPConnection(host, timeout=60)
    try:
        connection.request(method, path, headers={"Range": byte_range} if byte_range else {})
        answer = connection.getresponse()
        return answer.status, answer.read(), {k.lower(): v for k, v in answer.getheaders()}
    finally:
        connection.close()


def test_ranged_gets_and_a_head_of_one_missing_blob_cost_one_download(registry, tmp_path):
    """What our HTTP road sends (parallel ranged GETs, a Range resuming from the bytes on disk) and what other
    clients send (HEAD), at once, for a blob the mirror does not hold: one upstream GET, each range exact. nginx
    asks the upstream for the whole blob and cuts the ranges itself; the lock is per cache key (the path), so
    ranges of one blob share it, and the slice module is not needed for one fetch per blob."""
    source = sharded_model(tmp_path / "src", shards=1)
    reference = f"{registry.host}/acme/ranges:v1"
    push_model(source, reference, tmp_path)
    digest, other = layer_digests(reference)[:2]
    blob = Crane().run("blob", f"{registry.host}/acme/ranges@{digest}")
    before = Counter(registry.blob_downloads())
    step = len(blob) // 6
    asks = [("GET", f"bytes={n * step}-{(n + 1) * step - 1}") for n in range(6)] + [
        ("GET", f"bytes={len(blob) - 1000}-"), ("HEAD", None), ("GET", None)]
    path = f"/v2/acme/ranges/blobs/{digest}"
    with throttled(registry.host, RATE) as slow, nginx_mirror(tmp_path / "nginx", f"http://{slow}") as mirror:
        with ThreadPoolExecutor(len(asks)) as pool:
            answers = list(pool.map(lambda asked: ask(mirror.host, asked[0], path, asked[1]), asks))
        waited = coalesced(mirror, digest)
        # A HEAD alone of a missing blob fetches it whole (proxy_cache_convert_head): the GET after it is a hit.
        head = ask(mirror.host, "HEAD", f"/v2/acme/ranges/blobs/{other}")
        got = ask(mirror.host, "GET", f"/v2/acme/ranges/blobs/{other}", "bytes=0-0")
    for (method, byte_range), (status, body, headers) in zip(asks, answers, strict=True):
        if byte_range:
            first, _, last = byte_range.removeprefix("bytes=").partition("-")
            end = int(last) if last else len(blob) - 1
            assert status == 206 and body == blob[int(first):end + 1], (byte_range, status, len(body))
            assert headers["content-range"] == f"bytes {first}-{end}/{len(blob)}"
        elif method == "HEAD":
            assert status == 200 and body == b"" and headers["content-length"] == str(len(blob))
        else:
            assert status == 200 and hashlib.sha256(body).hexdigest() == digest.removeprefix("sha256:")
    assert waited > 0, "no request arrived while the mirror filled: the test would prove nothing"
    assert head[0] == 200 and head[2]["x-cache-status"] == "MISS"
    assert got[0] == 206 and got[2]["x-cache-status"] == "HIT"
    served = upstream_blob_gets(registry, [digest, other]) - before
    assert served == Counter({digest: 1, other: 1}), served


def test_a_registry_that_redirects_blobs_is_followed_by_the_mirror(registry, tmp_path, cache_dir):
    """Docker Hub, GHCR and S3-backed registries answer a blob GET with a redirect to a storage host: the mirror
    follows it itself (deploy/nginx-mirror.conf.template's @storage), caches the blob under its registry name, and
    the client never leaves the mirror; a second node costs the storage host nothing."""
    source = sharded_model(tmp_path / "src", shards=2)
    reference = f"{registry.host}/acme/cdn:v1"
    push_model(source, reference, tmp_path)
    with StorageProxy(registry.host) as cdn, nginx_mirror(tmp_path / "nginx", f"http://{cdn.address}") as mirror:
        env = registries_conf(tmp_path / "registries.conf", registry.host, mirror.host)
        first, second = (fleet(reference, tmp_path / f"round-{n}", env, nodes=1)[0] for n in range(2))
        storage_gets = Counter(path.rsplit("/", 1)[-1] for method, path, _, _ in cdn.requests if method == "GET")
    layers = layer_digests(reference)
    for result in (first, second):
        assert tree_bytes(Path(result["path"])) == tree_bytes(source)
        assert set(result["sources"].values()) == {f"mirror http://{mirror.host}/v2/acme/cdn"}
    assert sum(storage_gets.values()) >= len(layers), storage_gets  # the bytes came from the storage host
    assert all(count == 1 for count in storage_gets.values()), storage_gets  # once each: the second node hit
    assert not [entry for entry in mirror.access() if entry["status"] in ("301", "302", "307", "308")]
