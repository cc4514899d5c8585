"""What scripts rely on: documented exit codes, every OCI_CRANE_* variable in --help, --include/--exclude."""

from __future__ import annotations

import ast
import hashlib
import json
import re
from pathlib import Path

import pytest
from support.commands import run_cli
from support.models import push_model, tree_bytes, write_model

from oci_crane_loader import cli, settings

JSON_FILES = {"config.json", "tokenizer_config.json", "model.safetensors.index.json", "1_Pooling/config.json"}
SHARDS = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}


def test_help_lists_the_exit_codes_and_every_variable_settings_reads():
    done = run_cli("--help")
    assert done.returncode == 0
    source = Path(settings.__file__).read_text()
    read = {node.value for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and re.fullmatch(r"OCI_CRANE_[A-Z_]*[A-Z]", node.value)}
    assert {"OCI_CRANE_TIMEOUT", "OCI_CRANE_RETRIES", "OCI_CRANE_DISABLE_PROGRESS"} <= read  # the source was read
    listed = set(re.findall(r"^  (OCI_CRANE_[A-Z_]+)  ", done.stdout, re.MULTILINE))
    assert read | {"OCI_CRANE_BINARY"} <= listed, read - listed
    for code in (cli.EXIT_OK, cli.EXIT_FAILURE, cli.EXIT_USAGE, cli.EXIT_INTERRUPTED, cli.EXIT_TERMINATED):
        assert re.search(rf"^  {code}\s+\S", done.stdout, re.MULTILINE), code


@pytest.fixture
def model(registry, tmp_path):
    source = write_model(tmp_path / "src")
    reference = f"{registry.host}/acme/filtered:v1"
    push_model(source, reference, tmp_path)
    return reference, source


def test_exit_codes(model, cache_dir, registry):
    reference, _ = model
    assert run_cli("fetch", reference, "--cache-dir", str(cache_dir), "-q").returncode == cli.EXIT_OK
    missing = run_cli("fetch", f"{registry.host}/acme/none:v1", "--cache-dir", str(cache_dir), "-q")
    assert missing.returncode == cli.EXIT_FAILURE and missing.stderr.startswith("error: ")
    for usage in (["--no-such-option"], ["--retries", "99"], ["--retries", "-1"], ["--jobs", "0"],
                  ["--insecure", "--ca-file", __file__], ["--ca-file", "/no/such/ca.pem"]):
        done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), *usage)
        assert done.returncode == cli.EXIT_USAGE and done.stdout == "", (usage, done.stderr)
        assert "usage: oci-crane" in done.stderr and "error:" in done.stderr
    bad_variable = run_cli("fetch", reference, "--cache-dir", str(cache_dir), env={"OCI_CRANE_RETRIES": "many"})
    assert bad_variable.returncode == cli.EXIT_FAILURE and "OCI_CRANE_RETRIES='many'" in bad_variable.stderr


def test_include_fetches_config_and_tokenizer_without_weights(model, cache_dir, registry):
    reference, source = model
    done = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--json", "--quiet", "--include", "*.json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result["files"]) == JSON_FILES
    filtered = Path(result["path"])
    assert tree_bytes(filtered) == {name: data for name, data in tree_bytes(source).items() if name in JSON_FILES}
    shards = {"sha256:" + hashlib.sha256((source / name).read_bytes()).hexdigest() for name in SHARDS}
    assert registry.blob_downloads() and not shards & set(registry.blob_downloads())  # no weight was downloaded

    whole = json.loads(run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--json", "-q").stdout)
    assert Path(whole["path"]) != filtered and set(whole["files"]) == JSON_FILES | SHARDS  # never taken for it
    assert set(json.loads(run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--json", "-q", "--include",
                                  "*.json").stdout)["files"]) == JSON_FILES  # the filtered directory, reused

    excluded = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "--json", "-q", "--exclude",
                       "*.safetensors", "--exclude", "1_Pooling/*", "--include", "*")
    assert set(json.loads(excluded.stdout)["files"]) == JSON_FILES - {"1_Pooling/config.json"}


def test_filters_refused_where_they_cannot_choose(model, cache_dir, registry, tmp_path):
    reference, _ = model
    none = run_cli("fetch", reference, "--cache-dir", str(cache_dir), "-q", "--include", "*.gguf")
    assert none.returncode == 1 and "match none of the" in none.stderr
    unnamed = f"{registry.host}/acme/unnamed:v1"
    push_model(write_model(tmp_path / "v01"), unnamed, tmp_path, version="v0.1", annotate_shards=False)
    refused = run_cli("fetch", unnamed, "--cache-dir", str(cache_dir), "-q", "--include", "*.json")
    assert refused.returncode == 1 and "named only inside archives or once downloaded" in refused.stderr
