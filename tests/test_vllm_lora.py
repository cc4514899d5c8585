"""LoRA adapters by OCI reference on a real `vllm serve` (CPU build): one server for the whole module (a start is
~25 s on 2 cores), a tiny Llama from tests/support/vllm_server.py and adapters written by hand, pushed with
`oci-crane push` to a loopback registry."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.adapters import write_lora
from support.commands import run_cli

pytest.importorskip("vllm", reason="vLLM is not installed: `nox -s tests` installs its CPU build")
from support.vllm_server import get, post, vllm_server, write_tiny_llama

from oci_crane_loader.registry.local_registry import LocalRegistry, serve_registry

pytestmark = [pytest.mark.vllm]

PROMPTS = ["the quick brown fox", "registries hold models and"]


class Setup:
    def __init__(self, registry: LocalRegistry, root: Path) -> None:
        self.registry = registry
        self.root = root
        self.adapters = {name: write_lora(root / name, seed=seed, base_model=base) for name, seed, base in (
            ("a", 1, "tiny-llama"), ("b", 2, "tiny-llama"), ("c", 3, "Qwen/Qwen2-7B"))}
        self.adapters["wide"] = write_lora(root / "wide", rank=32)  # above the server's --max-lora-rank 16
        self.refs = {name: self.push(name, f"acme/adapters/{name}:v1") for name in self.adapters}  # c: never asked
        self.base = ""
        self.url = ""

    def push(self, adapter: str, repository: str) -> str:
        reference = f"{self.registry.host}/{repository}"
        done = run_cli("push", str(self.adapters[adapter]), reference, "--json")
        assert done.returncode == 0, done.stderr
        return reference


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("lora")
    with serve_registry(disk=root / "registry-disk") as registry:
        setup = Setup(registry, root)
        setup.push("a", "acme/adapters/moving:v1")
        setup.push("a", "other/outside:v1")
        setup.base = str(write_tiny_llama(root / "tiny-llama"))
        env = {"OCI_CRANE_LORA_REPOSITORIES": f"{registry.host}/acme/adapters",
               "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1", "OCI_CRANE_LOADER_CACHE": str(root / "cache")}
        with vllm_server(setup.base, "--enable-lora", "--max-lora-rank", "16", "--max-loras", "2",
                         "--lora-modules", f"sql={setup.refs['a']}", f"local={setup.adapters['a']}",
                         json.dumps({"name": "json-form", "path": setup.refs["b"], "base_model_name": setup.base}),
                         env=env, log=root / "vllm.log") as url:
            setup.url = url
            yield setup


def completions(url: str, model: str) -> list[str]:
    return [post(f"{url}/v1/completions", {"model": model, "prompt": prompt, "max_tokens": 12, "temperature": 0}
                 )["choices"][0]["text"] for prompt in PROMPTS]  # type: ignore[index]


def failure(url: str, body: dict[str, object], path: str = "/v1/completions") -> tuple[int, str]:
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=300)
    return caught.value.code, caught.value.read().decode()


def test_lora_modules_by_reference_match_the_local_directory(served):
    base = completions(served.url, served.base)
    by_reference = completions(served.url, "sql")
    assert by_reference == completions(served.url, "local")
    assert by_reference != base
    other = completions(served.url, "json-form")  # the JSON form of --lora-modules, adapter b
    assert other not in (base, by_reference)
    listed = {entry["id"] for entry in get(f"{served.url}/v1/models")["data"]}  # type: ignore[union-attr]
    assert {"sql", "local", "json-form"} <= listed


def test_requests_name_adapters_by_reference(served):
    """On demand through the resolver: the same answers as the same adapter from a local directory; two adapters
    in turn; a digest reference; two spellings of one new adapter racing download it once."""
    local_a, local_b = completions(served.url, "local"), completions(served.url, "json-form")
    assert completions(served.url, served.refs["a"]) == local_a
    assert completions(served.url, served.refs["b"]) == local_b
    before = len(served.registry.blob_downloads())
    new = served.refs["c"]
    results: dict[str, list[str]] = {}
    racers = [threading.Thread(target=lambda name=name: results.__setitem__(name, completions(served.url, name)))
              for name in (new, f"oci://{new}")]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join()
    assert results[new] == results[f"oci://{new}"]
    assert results[new] not in (local_a, local_b)
    downloads = served.registry.blob_downloads()[before:]
    assert downloads and len(downloads) == len(set(downloads)), served.registry.log()
    assert completions(served.url, served.refs["a"]) == local_a  # the first adapters are still served
    log = (served.root / "vllm.log").read_text()
    # Which digest each name meant, and a base model other than the served one said (not refused).
    # The racer that downloads it names it in its own spelling: either one, once.
    said = [f"LoRA adapter {name} is {served.registry.host}/acme/adapters/c@sha256:" for name in (new, f"oci://{new}")]
    assert sum(log.count(line) for line in said) == 1, log[-4000:]
    assert "the adapter was trained on 'Qwen/Qwen2-7B'" in log, log[-4000:]


def test_refusals_are_clear_4xx(served):
    code, text = failure(served.url, {"model": served.refs["a"].replace("acme/adapters/a", "other/outside"),
                                      "prompt": "x", "max_tokens": 1})
    assert code == 400 and "OCI_CRANE_LORA_REPOSITORIES" in text, text
    code, text = failure(served.url, {"model": f"{served.registry.host}/acme/adapters/a:missing", "prompt": "x",
                                      "max_tokens": 1})
    assert code == 400 and "not found in the registry" in text, text
    code, text = failure(served.url, {"model": served.refs["wide"], "prompt": "x", "max_tokens": 1})
    assert code == 400 and "r=32 is above the server's --max-lora-rank 16" in text, text
    code, text = failure(served.url, {"model": "no-such-adapter", "prompt": "x", "max_tokens": 1})
    assert code == 404, text  # not a reference: vLLM's own answer, unchanged
    code, text = failure(served.url, {"lora_name": "outside", "lora_path": f"{served.registry.host}/other/outside:v1"},
                         "/v1/load_lora_adapter")
    assert code == 400 and "OCI_CRANE_LORA_REPOSITORIES" in text, text


def admin(url: str, path: str, body: dict[str, object]) -> int:
    """POST to vLLM's adapter routes, which answer in plain text."""
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return int(response.status)


def test_load_lora_adapter_by_reference(served):
    assert admin(served.url, "/v1/load_lora_adapter", {"lora_name": "loaded-b", "lora_path": served.refs["b"]}) == 200
    assert completions(served.url, "loaded-b") == completions(served.url, "json-form")


def test_a_moved_tag_is_picked_up_after_an_unload(served):
    moving = f"{served.registry.host}/acme/adapters/moving:v1"
    assert completions(served.url, moving) == completions(served.url, "local")
    served.push("b", "acme/adapters/moving:v1")
    assert completions(served.url, moving) == completions(served.url, "local")  # served from memory, as named
    assert admin(served.url, "/v1/unload_lora_adapter", {"lora_name": moving}) == 200
    assert completions(served.url, moving) == completions(served.url, "json-form")
