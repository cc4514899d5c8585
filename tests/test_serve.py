"""`oci-crane serve`: the `vllm serve` command line built from REF, VLLM_MODEL, VLLM_ARGS and USE_ALL_GPUS, and the
exec into it. vLLM itself serving through it: tests/test_deploy_vllm.py."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
from support.commands import run_cli

from oci_crane_loader import errors
from oci_crane_loader.serve import build_argv, count_gpus, is_oci_reference

DIGEST = "sha256:" + "ab" * 32
CACHE = "/var/cache/models"


def argv(reference: str | None = None, *extra: str, gpus: int = 0, **env: str) -> list[str]:
    return build_argv(reference, list(extra), env, gpus=lambda: gpus, cache_dir=lambda: CACHE)


@pytest.mark.parametrize("model", ["oci://ghcr.io/acme/llama:v1", "OCI://registry.local/m/x", "ghcr.io/acme/llama:v1",
                                   "127.0.0.1:5000/acme/tiny:v1", f"ghcr.io/acme/llama@{DIGEST}",
                                   "localhost/acme/model", "localhost:5000/acme/model:v2"])
def test_references_naming_a_registry_are_oci(model):
    assert is_oci_reference(model)


@pytest.mark.parametrize("model", ["meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen3-0.6B", "gpt2", "acme/tiny:v1",
                                   "ghcr.io/UPPER/case:v1", "ghcr.io/acme/llama:-bad", "https://ghcr.io/acme/x:v1"])
def test_hugging_face_ids_and_invalid_references_pass_through(model):
    assert not is_oci_reference(model)
    assert argv(model) == ["vllm", "serve", model]


def test_an_existing_directory_is_never_taken_for_a_reference(tmp_path, monkeypatch):
    (tmp_path / "models.v2" / "llama").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert is_oci_reference("models.v2/llama:v1") and not is_oci_reference("models.v2/llama")


def test_oci_reference_gets_the_loader_and_the_cache():
    assert argv("ghcr.io/acme/llama:v1") == ["vllm", "serve", "ghcr.io/acme/llama:v1", "--load-format", "oci-crane",
                                              "--download-dir", CACHE]


def test_vllm_model_and_vllm_args_then_the_extra_arguments():
    built = argv(None, "--port", "9000", VLLM_MODEL=" ghcr.io/acme/llama:v1 ",
                 VLLM_ARGS="--max-model-len 4096 --served-model-name 'my model'")
    assert built == ["vllm", "serve", "ghcr.io/acme/llama:v1", "--load-format", "oci-crane", "--download-dir", CACHE,
                     "--max-model-len", "4096", "--served-model-name", "my model", "--port", "9000"]
    # REF on the command line wins over VLLM_MODEL.
    assert argv("Qwen/Qwen3-0.6B", VLLM_MODEL="ghcr.io/acme/llama:v1")[:3] == ["vllm", "serve", "Qwen/Qwen3-0.6B"]


@pytest.mark.parametrize("given", [["--load-format", "auto"], ["--load-format=auto"], ["--load_format", "auto"]])
def test_the_users_load_format_is_kept(given):
    built = argv("ghcr.io/acme/llama:v1", *given)
    assert "oci-crane" not in built and built[-len(given):] == given and "--download-dir" in built


@pytest.mark.parametrize("given", [["--download-dir", "/data"], ["--download-dir=/data"], ["--download_dir=/data"]])
def test_the_users_download_dir_is_kept(given):
    built = argv("ghcr.io/acme/llama:v1", *given)
    assert CACHE not in built and built.count("--load-format") == 1


def test_use_all_gpus_adds_the_tensor_parallel_size():
    assert argv("gpt2", gpus=4, USE_ALL_GPUS="1") == ["vllm", "serve", "gpt2", "--tensor-parallel-size", "4"]
    assert argv("gpt2", "-tp", "2", gpus=4, USE_ALL_GPUS="true")[-2:] == ["-tp", "2"]
    assert "--tensor-parallel-size" not in argv("gpt2", gpus=4, USE_ALL_GPUS="0")
    given = argv("gpt2", gpus=4, USE_ALL_GPUS="yes", VLLM_ARGS="--tensor-parallel-size=2")
    assert given == ["vllm", "serve", "gpt2", "--tensor-parallel-size=2"]


def test_use_all_gpus_without_a_gpu_is_refused_clearly():
    with pytest.raises(errors.UsageError, match="no GPU is visible"):
        argv("gpt2", gpus=0, USE_ALL_GPUS="1")
    with pytest.raises(errors.SettingsError, match="USE_ALL_GPUS"):
        argv("gpt2", gpus=1, USE_ALL_GPUS="all")


def test_no_model_and_an_unbalanced_quote_are_one_error_each():
    with pytest.raises(errors.UsageError, match="VLLM_MODEL"):
        argv(None, VLLM_MODEL="  ")
    with pytest.raises(errors.SettingsError, match="VLLM_ARGS"):
        argv("gpt2", VLLM_ARGS="--chat-template 'unclosed")
    with pytest.raises(errors.UsageError, match="like an option"):
        argv(None, VLLM_MODEL="--max-model-len")


def fake_program(directory: Path, name: str, script: str) -> Path:
    directory.mkdir(exist_ok=True)
    program = directory / name
    program.write_text(f"#!/bin/sh\n{script}\n")
    program.chmod(0o755)
    return directory


def test_nvidia_smi_lines_are_counted(tmp_path, monkeypatch):
    listing = "GPU 0: NVIDIA H100 (UUID: GPU-1)\\nGPU 1: NVIDIA H100 (UUID: GPU-2)\\n  MIG 1g.10gb Device 0\\n"
    monkeypatch.setenv("PATH", str(fake_program(tmp_path / "bin", "nvidia-smi", f'printf "{listing}"')))
    assert count_gpus() == 2


def test_dry_run_prints_the_exact_command_line(tmp_path):
    env = {"VLLM_MODEL": "127.0.0.1:5000/acme/tiny:v1", "VLLM_ARGS": "--max-model-len 256",
           "OCI_CRANE_LOADER_CACHE": str(tmp_path / "cache"), "USE_ALL_GPUS": ""}
    done = run_cli("serve", "--dry-run", "--", "--served-model-name", "tiny one", env=env)
    assert done.returncode == 0, done.stderr
    assert shlex.split(done.stdout) == ["vllm", "serve", "127.0.0.1:5000/acme/tiny:v1", "--load-format", "oci-crane",
                                        "--download-dir", str(tmp_path / "cache"), "--max-model-len", "256",
                                        "--served-model-name", "tiny one"]


def test_serve_execs_vllm_with_that_command_line(tmp_path):
    record = tmp_path / "argv.txt"
    parent = tmp_path / "ppid.txt"
    script = f'for a in "$@"; do echo "$a"; done > {record}; echo $PPID > {parent}'
    bin_dir = fake_program(tmp_path / "bin", "vllm", script)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "VLLM_ARGS": "", "USE_ALL_GPUS": ""}
    done = run_cli("serve", "acme/tiny", "--", "--port", "8001", env=env)
    assert done.returncode == 0, done.stderr
    assert record.read_text().splitlines() == ["serve", "acme/tiny", "--port", "8001"]
    assert done.stderr.strip() == "exec vllm serve acme/tiny --port 8001"
    # exec'd, not started as a child: vLLM's parent is this test, so signals and the exit code are vLLM's own
    assert int(parent.read_text()) == os.getpid()


def test_serve_without_vllm_installed_says_so(tmp_path):
    env = {"PATH": str(tmp_path), "VLLM_ARGS": "", "USE_ALL_GPUS": ""}
    done = run_cli("serve", "acme/tiny", env=env)
    assert done.returncode == 1
    assert "not on PATH" in done.stderr and " -- fix: " in done.stderr


SECRET_ARGS = "--api-key sk-live-1234 --hf_token=hf_abcdef --db-password 's3 cr3t' --tokenizer acme/tok"


def test_secret_options_are_masked_in_the_dry_run_and_on_stderr_but_reach_vllm(tmp_path):
    record = tmp_path / "argv.txt"
    bin_dir = fake_program(tmp_path / "bin", "vllm", f'for a in "$@"; do echo "$a"; done > {record}')
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "VLLM_ARGS": SECRET_ARGS, "USE_ALL_GPUS": ""}
    dry = run_cli("serve", "acme/tiny", "--dry-run", "--", "--client-secret=abc123", env=env)
    assert dry.returncode == 0, dry.stderr
    assert shlex.split(dry.stdout) == ["vllm", "serve", "acme/tiny", "--api-key", "***", "--hf_token=***",
                                       "--db-password", "***", "--tokenizer", "acme/tok", "--client-secret=***"]
    done = run_cli("serve", "acme/tiny", env=env)
    assert done.returncode == 0, done.stderr
    for secret in ("sk-live-1234", "hf_abcdef", "s3 cr3t", "s3", "cr3t"):
        assert secret not in done.stderr + dry.stdout + dry.stderr
    assert "--tokenizer acme/tok" in done.stderr
    assert record.read_text().splitlines() == ["serve", "acme/tiny", "--api-key", "sk-live-1234",
                                               "--hf_token=hf_abcdef", "--db-password", "s3 cr3t", "--tokenizer",
                                               "acme/tok"]
