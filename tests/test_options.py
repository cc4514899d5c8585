"""The options of one fetch (options.py), from the command line and vLLM's --model-loader-extra-config: ranges,
unsafe --subpath, contradictions, each refused before anything is created or downloaded; the plugin's engine args."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from support.commands import run_cli
from support.models import push_model, write_model

from oci_crane_loader import errors
from oci_crane_loader.options import from_extra_config

UNREACHABLE = "127.0.0.1:9/acme/tiny:v1"  # never contacted: every case fails before the network


@pytest.mark.parametrize("jobs", ["0", "65", "100000", "four"])
def test_jobs_out_of_range_is_a_usage_error(cache_dir, jobs):
    done = run_cli("fetch", UNREACHABLE, "--cache-dir", str(cache_dir), "--jobs", jobs)
    assert done.returncode == 2, done.stderr
    assert "--jobs" in done.stderr and "1 to 64" in done.stderr
    assert not cache_dir.exists()  # refused before anything was created


def test_loader_jobs_are_capped_too():
    with pytest.raises(errors.UsageError, match="from 1 to 64"):
        from_extra_config({"jobs": 100000}, None)
    assert from_extra_config({"jobs": 64}, None).jobs == 64


@pytest.mark.parametrize(("subpath", "refusal"), [
    ("../etc", "--subpath: path '../etc' escapes the model directory"),
    ("models/../../x", "--subpath: path 'models/../../x' escapes the model directory"),
    ("a\\b", "--subpath: unsafe path 'a\\\\b' (absolute, empty or with backslashes)"),
    ("/", "--subpath: unsafe path '' (absolute, empty or with backslashes)"),
    ("/..", "--subpath: path '..' escapes the model directory"),
])
def test_an_unsafe_subpath_is_a_usage_error_before_anything(cache_dir, subpath, refusal):
    done = run_cli("fetch", UNREACHABLE, "--cache-dir", str(cache_dir), "--subpath", subpath)
    assert done.returncode == 2, done.stderr
    assert refusal in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not cache_dir.exists()  # refused before the cache was created, let alone the network


def test_the_loader_says_which_extra_config_key_is_wrong():
    with pytest.raises(errors.UsageError, match=r"model_loader_extra_config\['subpath'\]: path '\.\./x' escapes"):
        from_extra_config({"subpath": "../x"}, None)
    assert from_extra_config({"subpath": "/models/b/"}, "").subpath == "models/b"


def test_the_loader_takes_the_registry_options_and_retries(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here: Go reads it")
    options = from_extra_config({"authfile": str(ca), "ca_file": str(ca), "plain_http": False, "retries": 0}, None)
    assert (options.authfile, options.ca_file, options.retries) == (ca, ca, 0)
    with pytest.raises(errors.UsageError, match=r"model_loader_extra_config\['retries'\]"):
        from_extra_config({"retries": 21}, None)
    with pytest.raises(errors.UsageError, match=r"model_loader_extra_config\['ca_file'\] and "
                                                r"model_loader_extra_config\['insecure'\] contradict"):
        from_extra_config({"ca_file": str(ca), "insecure": True}, None)
    with pytest.raises(errors.UsageError, match=r"model_loader_extra_config\['authfile'\] .* is not a file"):
        from_extra_config({"authfile": str(tmp_path / "none.json")}, None)
    with pytest.raises(errors.UsageError, match=r"model_loader_extra_config\['retries'\] True is not a number"):
        from_extra_config({"retries": True}, None)


def test_a_subpath_no_file_lies_under_is_refused_before_the_weights_download(registry, tmp_path, cache_dir):
    source = write_model(tmp_path / "src", shards=2)
    reference = f"{registry.host}/acme/tiny:v1"
    push_model(source, reference, tmp_path)
    done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "-q", "--subpath", "models/tiny")
    assert done.returncode == 1
    assert "--subpath 'models/tiny' is not a directory in the artifact" in done.stderr
    weights = {"sha256:" + hashlib.sha256(shard.read_bytes()).hexdigest() for shard in source.glob("*.safetensors")}
    assert not weights & set(registry.blob_downloads())  # only the config blob was read, to plan


def test_a_subpath_absent_from_the_config_archive_is_refused_before_the_weights_download(registry, tmp_path,
                                                                                          cache_dir):
    """A ModelPack config archive plus a raw weight file: once the small archive is in the cache, its names are
    known too, so a --subpath under which nothing lies stops the fetch before the weights download."""
    import gzip

    from test_hostile_artifacts import modelpack_with_archive, tar_of

    reference = f"{registry.host}/acme/packed:v1"
    config_tar = gzip.compress(tar_of([("./config/", None), ("./config/config.json", b'{"architectures": []}')]))
    modelpack_with_archive(tmp_path, reference, config_tar)
    weights = "sha256:" + hashlib.sha256((tmp_path / "src" / "model.safetensors").read_bytes()).hexdigest()
    done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "-q", "--subpath", "/models/")
    assert done.returncode == 1 and "--subpath 'models' is not a directory in the artifact" in done.stderr, done.stderr
    assert weights not in registry.blob_downloads()
    named = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "-q", "--subpath", "config/")
    assert "not a directory in the artifact" not in named.stderr  # listed in the archive: it gets as far as unpacking
    assert weights in registry.blob_downloads()


def test_inspect_refuses_subpath_instead_of_ignoring_it(cache_dir):
    done = run_cli("inspect", UNREACHABLE, "--cache-dir", str(cache_dir), "--subpath", "models/b")
    assert done.returncode == 2 and "unrecognized arguments: --subpath" in done.stderr, done.stderr


@pytest.mark.parametrize("command", [["fetch", UNREACHABLE], ["cache", "ls"], ["cache", "prune"], ["doctor"]])
def test_an_empty_cache_dir_is_a_usage_error(tmp_path, command):
    home = tmp_path / "home"  # the default cache would go here
    done = run_cli(*command, "--cache-dir", "", env={"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache")})
    assert done.returncode == 2, done.stderr
    assert "--cache-dir is empty" in done.stderr
    assert not home.exists()


def test_the_vllm_plugin_rewrites_engine_args_through_one_puller(registry, tmp_path, cache_dir):
    """resolve_engine_args needs no vLLM: `model` becomes the config directory, `download_dir` the cache root,
    and a second call (vLLM builds its config more than once) changes nothing."""
    from types import SimpleNamespace

    from oci_crane_loader.vllm_plugin import resolve_engine_args

    source = write_model(tmp_path / "src", shards=2)
    reference = f"{registry.host}/acme/tiny:v1"
    pinned = push_model(source, reference, tmp_path)
    args = SimpleNamespace(model=reference, model_weights=None, tokenizer=None, served_model_name=None,
                           download_dir=str(cache_dir), model_loader_extra_config={"jobs": 2})
    resolve_engine_args(args)
    assert Path(args.model).parent.parent == cache_dir.resolve() / "configs"
    assert (Path(args.model) / "config.json").read_bytes() == (source / "config.json").read_bytes()
    assert args.model_weights == pinned and args.download_dir == str(cache_dir.resolve())
    before = dict(vars(args))
    resolve_engine_args(args)
    assert vars(args) == before
