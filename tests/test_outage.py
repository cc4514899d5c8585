"""A cached model when the registry is down (issue 19): a tag the cache has fetched is served from it, with one
warning naming the digest and when it was fetched, when the registry cannot be reached (never when it answers:
401, 403, 404 decide); OCI_CRANE_NO_OUTAGE_FALLBACK=1 makes it a hard failure; --offline stays the way to forbid
the network."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from support.commands import run_cli
from support.models import push_model, write_model

from oci_crane_loader import errors
from oci_crane_loader.cache.store import Store
from oci_crane_loader.reference import parse_reference
from oci_crane_loader.registry.crane import Crane
from oci_crane_loader.sourcing import source_digest
from oci_crane_loader.vllm_plugin import resolve_engine_args


def _stop(registry) -> None:
    registry.process.terminate()
    registry.process.wait(timeout=30)


def test_a_cached_tag_is_served_when_the_registry_is_down(registry, tmp_path, cache_dir):
    reference = f"{registry.host}/acme/outage:v1"
    pinned = push_model(write_model(tmp_path / "src"), reference, tmp_path)
    first = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--json")
    assert first.returncode == 0, first.stderr
    never = f"{registry.host}/acme/outage:never-fetched"
    _stop(registry)

    served = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--json")
    assert served.returncode == 0, served.stderr
    assert json.loads(served.stdout) == json.loads(first.stdout)
    warnings = [line for line in served.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1, served.stderr
    assert f"cannot reach {registry.host}" in warnings[0] and pinned.split("@")[1] in warnings[0]
    assert "fetched 20" in warnings[0] and "OCI_CRANE_NO_OUTAGE_FALLBACK" in warnings[0]

    hard = run_cli("fetch", reference, "--cache-dir", str(cache_dir), env={"OCI_CRANE_NO_OUTAGE_FALLBACK": "1"})
    assert hard.returncode != 0 and "cannot reach" in hard.stderr and "Traceback" not in hard.stderr
    unknown = run_cli("fetch", never, "--cache-dir", str(cache_dir))  # nothing cached to fall back on
    assert unknown.returncode != 0 and "cannot reach" in unknown.stderr

    # vLLM's start resolves the same way: the config directory and the pinned weights from the cache.
    args = SimpleNamespace(model=reference, model_weights=None, tokenizer=None, served_model_name=None,
                           download_dir=str(cache_dir), model_loader_extra_config=None)
    resolve_engine_args(args)
    assert args.model_weights == pinned and (Path(args.model) / "config.json").is_file()


@pytest.mark.parametrize("answer", [errors.NotFoundError("not found in the registry: MANIFEST_UNKNOWN"),
                                    errors.UnauthorizedError("the registry refused our credentials: DENIED"),
                                    errors.TLSError("TLS handshake with the registry failed: x509")])
def test_an_answer_from_the_registry_is_never_papered_over(tmp_path, monkeypatch, answer):
    """The registry answered: a deleted tag, refused credentials or a bad certificate decide, cache or not."""
    store = Store(tmp_path / "cache")
    reference = parse_reference("127.0.0.1:9/acme/gone:v1")
    store.save_ref(reference, "sha256:" + "a" * 64)

    def answers(self: Crane, name: str) -> bytes:
        raise answer

    monkeypatch.setattr(Crane, "manifest", answers)
    with pytest.raises(type(answer)):
        source_digest(store, Crane(), reference)
    monkeypatch.setattr(Crane, "manifest", lambda self, name: (_ for _ in ()).throw(
        errors.NetworkError("cannot reach the registry: connection refused")))
    assert source_digest(store, Crane(), reference) == "sha256:" + "a" * 64
