"""LoRA adapters as artifacts, without vLLM: the checks (adapters.py), push and fetch of an adapter directory, a
KAITO-style image with the adapter under /data, and the vLLM side's pure parts (the allow-list, names)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from support.adapters import write_lora
from support.commands import fetch, run_cli
from support.models import tree_bytes
from test_formats_images import BASE, Entry, files_of, push_image

from oci_crane_loader.adapters import MAX_ADAPTER_HEADER, base_model_mismatch, check_adapter_dir
from oci_crane_loader.errors import InvalidModelError, SettingsError
from oci_crane_loader.reference import parse_reference
from oci_crane_loader.settings import Settings
from oci_crane_loader.vllm_lora import allowed, looks_like_reference


def edit_config(adapter: Path, **changes: object) -> None:
    path = adapter / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_a_sound_adapter_passes_with_its_rank_and_base(tmp_path):
    info = check_adapter_dir(write_lora(tmp_path / "a", rank=8), max_rank=16, max_bytes=1 << 20)
    assert (info.rank, info.base_model, info.tensors) == (8, "tiny-llama", 8)


@pytest.mark.parametrize(("change", "message"), [
    ({"peft_type": "IA3"}, "peft_type is 'IA3'; vLLM serves LoRA adapters only"),
    ({"r": 0}, "the rank r is 0, not a positive whole number"),
    ({"r": "8"}, "the rank r is '8'"),
])
def test_adapter_config_refusals(tmp_path, change, message):
    adapter = write_lora(tmp_path / "a")
    edit_config(adapter, **change)
    with pytest.raises(InvalidModelError, match=message.replace("(", r"\(")):
        check_adapter_dir(adapter)


def test_rank_above_the_servers_max_names_the_flag(tmp_path):
    with pytest.raises(InvalidModelError) as caught:
        check_adapter_dir(write_lora(tmp_path / "a", rank=32), max_rank=16)
    assert "r=32 is above the server's --max-lora-rank 16" in caught.value.cause
    assert "--max-lora-rank 32" in caught.value.fix


def test_size_cap_and_pickled_weights(tmp_path):
    adapter = write_lora(tmp_path / "a")
    with pytest.raises(InvalidModelError, match=r"over the 1\.0 KiB limit for adapters"):
        check_adapter_dir(adapter, max_bytes=1024)
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    with pytest.raises(InvalidModelError, match=r"has no adapter_model.safetensors \(it holds adapter_model.bin"):
        check_adapter_dir(adapter)


def test_a_huge_header_is_refused_before_it_is_read(tmp_path):
    """A length field over the adapter cap (far under the model cap of 100 MB) is refused on its 8 bytes: the
    file need not even hold the header it claims."""
    adapter = write_lora(tmp_path / "a")
    (adapter / "adapter_model.safetensors").write_bytes(struct.pack("<Q", MAX_ADAPTER_HEADER + 1) + b"{}")
    with pytest.raises(InvalidModelError, match=f"over the {MAX_ADAPTER_HEADER}-byte limit"):
        check_adapter_dir(adapter)


def test_weights_without_lora_tensors_are_refused(tmp_path):
    from support.adapters import write_safetensors

    adapter = write_lora(tmp_path / "a")
    write_safetensors(adapter / "adapter_model.safetensors", {"model.embed_tokens.weight": ([2, 2], [0.0] * 4)})
    with pytest.raises(InvalidModelError, match="holds no lora_A / lora_B tensors"):
        check_adapter_dir(adapter)


def test_base_model_mismatch_is_a_warning_by_last_name():
    assert base_model_mismatch("meta-llama/Llama-3-8B", ["oci://ghcr.io/acme/llama-3-8b:v1"]) is None
    assert base_model_mismatch(None, ["x"]) is None
    warning = base_model_mismatch("Qwen/Qwen2-7B", ["ghcr.io/acme/llama-3-8b@sha256:" + "a" * 64])
    assert warning is not None and "'Qwen/Qwen2-7B'" in warning


def test_push_and_fetch_an_adapter_directory(registry, tmp_path, cache_dir):
    """No config.json, and still a valid artifact: push publishes it as ModelPack; fetch, inspect and --local-dir
    give back the same files; a fetch checks it as an adapter (a broken one is refused)."""
    adapter = write_lora(tmp_path / "adapter")
    reference = f"{registry.host}/acme/adapters/sql:v1"
    pushed = run_cli("push", str(adapter), reference, "--json")
    assert pushed.returncode == 0, pushed.stderr
    assert json.loads(pushed.stdout)["format"] == "modelpack"
    result = fetch(reference, cache_dir)
    assert result["format"] == "modelpack"
    assert tree_bytes(Path(str(result["path"]))) == tree_bytes(adapter)
    local = tmp_path / "local"
    done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--local-dir", str(local))
    assert done.returncode == 0, done.stderr
    assert tree_bytes(local) == tree_bytes(adapter)
    inspected = run_cli("inspect", reference, "--json")
    assert inspected.returncode == 0, inspected.stderr
    assert "adapter_model.safetensors" in inspected.stdout


def test_push_refuses_a_broken_adapter(registry, tmp_path):
    adapter = write_lora(tmp_path / "adapter")
    edit_config(adapter, peft_type="PREFIX_TUNING")
    done = run_cli("push", str(adapter), f"{registry.host}/acme/adapters/bad:v1")
    assert done.returncode == 1
    assert "peft_type is 'PREFIX_TUNING'" in done.stderr


def test_kaito_style_image_with_the_adapter_under_data(registry, tmp_path, cache_dir):
    """KAITO packs an adapter as a container image with its files under /data: found there without --subpath."""
    adapter = write_lora(tmp_path / "adapter")
    reference = f"{registry.host}/kaito/adapter-sql:v1"
    push_image(tmp_path, reference, [BASE, [Entry("data/"), *files_of(adapter, "data/")]])
    result = fetch(reference, cache_dir)
    assert result["format"] == "image"
    assert tree_bytes(Path(str(result["path"]))) == tree_bytes(adapter)
    by_subpath = fetch(reference, tmp_path / "other-cache", "--subpath", "/data")
    assert tree_bytes(Path(str(by_subpath["path"]))) == tree_bytes(adapter)


def test_an_adapter_is_not_served_as_a_model(registry, tmp_path, cache_dir):
    """vLLM's loader asks for a model's config files only (prepare): an adapter there says what to do instead."""
    from oci_crane_loader.fetching import prepare
    from oci_crane_loader.options import fetch_options

    adapter = write_lora(tmp_path / "adapter")
    reference = f"{registry.host}/acme/adapters/sql:v1"
    assert run_cli("push", str(adapter), reference).returncode == 0
    with pytest.raises(InvalidModelError, match="is a LoRA adapter") as caught:
        prepare(fetch_options(cache_dir=cache_dir), reference)
    assert "--lora-modules" in caught.value.fix


def test_lora_settings_and_allow_list():
    settings = Settings.from_environment({"OCI_CRANE_LORA_REPOSITORIES": " ghcr.io/acme/ , oci://reg.local:5000/t",
                                          "OCI_CRANE_LORA_MAX_BYTES": "64M", "OCI_CRANE_LORA_TIMEOUT": "30"})
    assert settings.lora_repositories == ("ghcr.io/acme", "reg.local:5000/t")
    assert (settings.lora_max_bytes, settings.lora_timeout) == (64 << 20, 30.0)
    assert Settings.from_environment({}).lora_repositories == ()
    with pytest.raises(SettingsError, match="OCI_CRANE_LORA_REPOSITORIES"):
        Settings.from_environment({"OCI_CRANE_LORA_REPOSITORIES": "Bad Name"})
    prefixes = settings.lora_repositories
    assert allowed(parse_reference("ghcr.io/acme/adapters/sql:v1"), prefixes)
    assert allowed(parse_reference("oci://reg.local:5000/t/sql@sha256:" + "0" * 64), prefixes)
    assert not allowed(parse_reference("ghcr.io/acme-evil/sql:v1"), prefixes)
    assert not allowed(parse_reference("reg.local:5000/other/sql:v1"), prefixes)
    whole = Settings.from_environment({"OCI_CRANE_LORA_REPOSITORIES": "localhost:5000"}).lora_repositories
    assert allowed(parse_reference("localhost:5000/any/sql:v1"), whole)


@pytest.mark.parametrize(("name", "expected"), [
    ("ghcr.io/acme/sql:v1", True), ("oci://ghcr.io/acme/sql", True), ("localhost:5000/ab@sha256:" + "1" * 64, True),
    ("sql", False), ("acme/sql", False), ("/models/sql", False), ("", False), ("ghcr.io/Acme/sql", False),
])
def test_which_request_names_are_references(name, expected):
    assert looks_like_reference(name) is expected


def test_racing_requests_share_one_download_and_a_timeout_leaves_it_running(monkeypatch):
    """The vLLM side's scheduling, on a download held open by the test: a request that times out gets
    AdapterTimeoutError while the download goes on; two spellings of one reference join that one download; once
    it is done it is forgotten, so a later request (after vLLM unloaded the adapter) fetches again."""
    import asyncio
    import threading

    from oci_crane_loader.errors import AdapterTimeoutError
    from oci_crane_loader.vllm_lora import Adapters

    release, calls = threading.Event(), []

    def held(text: str) -> str:
        calls.append(text)
        release.wait(60)
        return f"fetched {text}"

    adapters = Adapters()
    monkeypatch.setattr(adapters, "_fetch", held)

    async def scenario() -> list[object]:
        with pytest.raises(AdapterTimeoutError, match=r"still downloading after 0\.01 s"):
            await adapters.get("ghcr.io/acme/sql:v1", timeout=0.01)
        joined = asyncio.gather(adapters.get("oci://ghcr.io/acme/sql:v1", timeout=60),
                                adapters.get("ghcr.io/acme/sql:v1", timeout=60))
        await asyncio.sleep(0)  # both are waiting, and the event loop is free
        release.set()
        results = list(await joined)
        results.append(await adapters.get("ghcr.io/acme/sql:v1", timeout=60))
        return results

    assert asyncio.run(scenario()) == ["fetched ghcr.io/acme/sql:v1"] * 3
    assert calls == ["ghcr.io/acme/sql:v1", "ghcr.io/acme/sql:v1"]
