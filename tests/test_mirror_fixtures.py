"""Real pull-through mirrors for issue 18 (docs/mirrors.md): the CNCF distribution registry (Debian's
docker-registry) in proxy mode in front of a `crane registry serve` upstream, pulled through with plain crane; and a
registry that answers 429 with Retry-After, as Docker Hub and throttled mirrors do. These prove the parts the fetch
path builds on: what the proxy serves, how often the upstream is asked, what a throttled answer carries."""

from __future__ import annotations

import hashlib
import http.client
import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from support.models import push_model
from support.scripted_registry import rate_limited, serve

from oci_crane_loader.registry.retry_after import parse_retry_after

pytestmark = pytest.mark.slow
PULLERS = 8
SHARD = 24 << 20  # large enough that eight pulls of it overlap in time


def shard_model(directory: Path) -> Path:
    directory.mkdir(parents=True)
    data = np.random.default_rng(18).integers(0, 256, SHARD, dtype=np.uint8)
    save_file({"weight": data}, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps({"architectures": ["TestModel"]}))
    return directory


def crane(crane_binary: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([crane_binary, *args], capture_output=True, timeout=300, check=False)


@pytest.fixture
def proxy(pull_through):  # conftest.py: distribution in proxy mode in front of the `registry` fixture
    return pull_through


def largest_layer(crane_binary: str, reference: str) -> tuple[str, int]:
    done = crane(crane_binary, "manifest", reference)
    assert done.returncode == 0, done.stderr.decode()
    layer = max(json.loads(done.stdout)["layers"], key=lambda entry: entry["size"])
    return layer["digest"], layer["size"]


def pull_blob(crane_binary: str, reference: str, digest: str, size: int) -> None:
    done = crane(crane_binary, "blob", reference)
    assert done.returncode == 0, done.stderr.decode()
    assert len(done.stdout) == size and "sha256:" + hashlib.sha256(done.stdout).hexdigest() == digest


def stored(proxy, digest: str) -> bool:
    """The proxy keeps a blob in its own storage once its background copy from the upstream is committed."""
    hex_digest = digest.removeprefix("sha256:")
    return (proxy.root / f"storage/docker/registry/v2/blobs/sha256/{hex_digest[:2]}/{hex_digest}/data").is_file()


def wait_until_stored(proxy, digest: str) -> None:
    for _ in range(600):  # a wait for the copy to land, not a timing assertion
        if stored(proxy, digest):
            return
        time.sleep(0.05)
    raise AssertionError(f"the proxy never stored {digest}:\n{proxy.log()[-2000:]}")


def upstream_downloads(registry, digest: str, at_least: int) -> int:
    """The upstream's GETs of the blob, read from its log once it shows ``at_least`` (the log line of a finished
    request can trail the request by a moment)."""
    for _ in range(200):
        if registry.blob_downloads().count(digest) >= at_least:
            break
        time.sleep(0.05)
    return registry.blob_downloads().count(digest)


def test_plain_crane_pulls_through_the_distribution_proxy(crane_binary, registry, proxy, tmp_path):
    push_model(shard_model(tmp_path / "src"), f"{registry.host}/acme/big:v1", tmp_path)
    direct = crane(crane_binary, "manifest", f"{registry.host}/acme/big:v1").stdout
    through = crane(crane_binary, "manifest", f"{proxy.host}/acme/big:v1")
    assert through.returncode == 0, through.stderr.decode()
    assert through.stdout == direct  # the same bytes, so the same digest
    digest, size = largest_layer(crane_binary, f"{proxy.host}/acme/big:v1")
    pull_blob(crane_binary, f"{proxy.host}/acme/big@{digest}", digest, size)
    wait_until_stored(proxy, digest)
    # distribution 2.8 answers a miss by streaming from the upstream while a second GET stores the blob:
    # the first pull costs the upstream two downloads.
    assert upstream_downloads(registry, digest, at_least=2) == 2
    pulled = crane(crane_binary, "pull", "--format", "oci", f"{proxy.host}/acme/big:v1", str(tmp_path / "layout"))
    assert pulled.returncode == 0, pulled.stderr.decode()
    assert registry.blob_downloads().count(digest) == 2  # the whole image again: from the proxy's own storage


def test_eight_cranes_pulling_one_blob_through_the_proxy_at_once(crane_binary, registry, proxy, tmp_path):
    """distribution 2.8 (Debian's) does not collapse concurrent misses: each pull arriving before the blob is
    stored goes to the upstream too. Once stored, eight more pulls cost the upstream nothing. docs/mirrors.md
    draws the conclusion: warm the proxy with one pull before a fleet starts."""
    push_model(shard_model(tmp_path / "src"), f"{registry.host}/acme/big:v1", tmp_path)
    digest, size = largest_layer(crane_binary, f"{proxy.host}/acme/big:v1")
    reference = f"{proxy.host}/acme/big@{digest}"
    with ThreadPoolExecutor(PULLERS) as pool:
        list(pool.map(lambda _: pull_blob(crane_binary, reference, digest, size), range(PULLERS)))
    wait_until_stored(proxy, digest)
    cold = upstream_downloads(registry, digest, at_least=2)
    assert 2 <= cold <= PULLERS + 1, cold  # one store plus at most one stream per pull
    with ThreadPoolExecutor(PULLERS) as pool:
        list(pool.map(lambda _: pull_blob(crane_binary, reference, digest, size), range(PULLERS)))
    assert registry.blob_downloads().count(digest) == cold  # warm: the upstream serves nothing more


def test_a_throttling_registry_sends_retry_after_and_crane_gets_through(crane_binary, registry, tmp_path):
    push_model(shard_model(tmp_path / "src"), f"{registry.host}/acme/big:v1", tmp_path)
    handler, record = rate_limited(registry.host, first=2, retry_after="1")
    with serve(handler) as host:
        connection = http.client.HTTPConnection(host, timeout=10)
        connection.request("GET", "/v2/acme/big/manifests/v1")
        answer = connection.getresponse()
        body = json.loads(answer.read())
        connection.close()
        assert answer.status == 429 and body["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert parse_retry_after(answer.getheader("Retry-After")) == 1.0
        done = crane(crane_binary, "manifest", f"{host}/acme/big:v1")  # crane's own retries outlast one more 429
    assert done.returncode == 0, done.stderr.decode()
    assert record.statuses()[:2] == [429, 429] and 200 in record.statuses()[2:]
