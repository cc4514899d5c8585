"""`load_format="oci"`, as vLLM's OCI proposal (vllm-project/vllm docs/features/oci_registry_support.md, quoted in
docs/vllm.md) writes it: its examples, with the registry host replaced by a loopback registry. A reference without
a registry means Docker Hub, which tests cannot reach: that defaulting is checked by parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.models import push_model
from support.vllm_server import write_tiny_llama

from oci_crane_loader.reference import parse_reference

NO_VLLM = "vLLM is not installed: `nox -s tests` installs its CPU build"


@pytest.mark.parametrize(("written", "registry", "repository", "tag", "digest"), [
    ("username/modelname:tag", "index.docker.io", "username/modelname", "tag", None),
    ("username/model:tag", "index.docker.io", "username/model", "tag", None),
    ("docker.io/username/model:v1.0", "index.docker.io", "username/model", "v1.0", None),
    ("ghcr.io/organization/model:v1.0", "ghcr.io", "organization/model", "v1.0", None),
    ("gcr.io/project/model:latest", "gcr.io", "project/model", "latest", None),
    ("myregistry.azurecr.io/model:tag", "myregistry.azurecr.io", "model", "tag", None),
    ("username/model@sha256:" + "1234567890abcdef" * 4, "index.docker.io", "username/model", None,
     "sha256:" + "1234567890abcdef" * 4),
])
def test_the_pages_references_mean_what_it_says(written, registry, repository, tag, digest):
    reference = parse_reference(written)
    assert (reference.registry, reference.repository, reference.tag, reference.digest) == (
        registry, repository, tag, digest)


PAGE_EXAMPLES = """
import json
from vllm import LLM, SamplingParams
params = SamplingParams(temperature=0, max_tokens=12)
outputs = {{}}
small = dict(max_model_len=256, max_num_seqs=2, enforce_eager=True)  # this machine's limits, not the page's
# "Specify Custom Download Directory"
llm = LLM(
    model={tagged!r},
    load_format="oci",
    download_dir={cache!r},
    **small)
outputs["tag"] = [o.outputs[0].text for o in llm.generate({prompts!r}, params)]
del llm
# "Reference by Digest (Immutable)" (the default cache: OCI_CRANE_LOADER_CACHE points into the test's directory)
llm = LLM(
    model={pinned!r},
    load_format="oci",
    **small)
outputs["digest"] = [o.outputs[0].text for o in llm.generate({prompts!r}, params)]
print("RESULT " + json.dumps(outputs))
"""


@pytest.fixture
def tiny_llama(tmp_path) -> Path:
    return write_tiny_llama(tmp_path / "tiny-llama")


@pytest.mark.vllm
def test_the_pages_examples_serve_with_load_format_oci(registry, tmp_path, tiny_llama):
    pytest.importorskip("vllm", reason=NO_VLLM)
    from test_vllm import PROMPTS, run_python

    tagged = f"{registry.host}/username/model:tag"
    pinned = push_model(tiny_llama, tagged, tmp_path)
    assert "@sha256:" in pinned
    code = PAGE_EXAMPLES.format(tagged=tagged, pinned=pinned, cache=str(tmp_path / "cache"), prompts=PROMPTS)
    done = run_python(code, tmp_path, env={"OCI_CRANE_LOADER_CACHE": str(tmp_path / "default-cache")})
    assert done.returncode == 0, done.stderr[-6000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1].splitlines()[0])  # vLLM may print after it
    assert result["tag"] == result["digest"] and all(result["tag"])
    for cache in (tmp_path / "cache", tmp_path / "default-cache"):  # each example used the cache it names
        (model_dir,) = (cache / "models" / "sha256").iterdir()
        assert (model_dir / "config.json").is_file()


@pytest.mark.vllm
def test_oci_never_replaces_a_loader_vllm_has(monkeypatch):
    """Should vLLM ship its own `oci` loader, it keeps it; `oci-crane` still names ours."""
    pytest.importorskip("vllm", reason=NO_VLLM)
    from vllm.model_executor import model_loader
    from vllm.model_executor.model_loader.base_loader import BaseModelLoader

    from oci_crane_loader import vllm_plugin
    from oci_crane_loader.loader import OciCraneModelLoader

    class VllmOwnOciLoader(BaseModelLoader):  # stands in for a loader of vLLM's own
        def download_model(self, model_config):  # type: ignore[no-untyped-def]
            pass

        def load_weights(self, model, model_config):  # type: ignore[no-untyped-def]
            pass

    registry = model_loader._LOAD_FORMAT_TO_MODEL_LOADER
    monkeypatch.setitem(registry, "oci", VllmOwnOciLoader)
    monkeypatch.setattr(vllm_plugin, "_our_formats", set())
    vllm_plugin.register()
    assert registry["oci"] is VllmOwnOciLoader and registry["oci-crane"] is OciCraneModelLoader
    assert vllm_plugin._our_formats == {"oci-crane"}  # create_engine_config resolves only what names our loader
    monkeypatch.delitem(registry, "oci")
    vllm_plugin.register()
    assert registry["oci"] is OciCraneModelLoader and vllm_plugin._our_formats == {"oci", "oci-crane"}
