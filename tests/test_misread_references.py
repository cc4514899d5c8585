"""A local path or a Hugging Face model id given where a registry reference belongs: one line that says which it
looks like and what to do, as the user sees it through the command line."""

from __future__ import annotations

import pytest
from support.commands import REPO_ROOT, run_cli


def one_error_line(*args: str, cwd_env: dict[str, str] | None = None) -> str:
    done = run_cli(*args, "--quiet", env=cwd_env) if args[0] == "fetch" else run_cli(*args, env=cwd_env)
    assert done.returncode == 1 and done.stdout == "", done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and " -- fix: " in lines[0], done.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["fetch", "inspect"])
@pytest.mark.parametrize("model", ["Qwen/Qwen2-0.5B", "hf://Qwen/Qwen2-0.5B", "meta-llama/Llama-3.1-8B-Instruct"])
def test_a_hugging_face_id_says_so_and_how_to_serve_or_move_it(tmp_path, command, model):
    line = one_error_line(command, model, "--cache-dir", str(tmp_path / "cache"))
    cause, fix = line.split(" -- fix: ")
    assert "looks like a Hugging Face model id" in cause
    hub = model.removeprefix("hf://")
    assert f"vllm serve {hub}," in fix and f"hf download {hub} --local-dir DIR" in fix and "docs/from-hf.md" in fix


@pytest.mark.parametrize("path", ["./models/tiny", "../tiny", "/srv/models/tiny", "~/models/tiny"])
def test_a_path_that_is_no_reference_says_it_is_a_local_path(tmp_path, path):
    line = one_error_line("fetch", path, "--cache-dir", str(tmp_path / "cache"))
    assert "it is a local path, not a registry reference" in line
    assert f"oci-crane push {path} REGISTRY/REPOSITORY:TAG" in line and f"vllm serve {path}," in line


def test_an_existing_directory_that_parses_as_a_reference_is_not_sent_to_docker_hub(tmp_path):
    # run_cli runs in the repository root, where tests/support is a directory and docker.io/tests/support a name
    assert (REPO_ROOT / "tests" / "support").is_dir()
    line = one_error_line("inspect", "tests/support", "--cache-dir", str(tmp_path / "cache"))
    assert line.startswith("error: 'tests/support' is a directory here: it is a local path")
    assert "oci-crane push tests/support REGISTRY/REPOSITORY:TAG" in line and "write oci://tests/support" in line


def test_lowercase_names_without_a_host_stay_docker_hub_references():
    from oci_crane_loader.reference import misread, parse_reference

    assert misread("qwen/qwen2-0.5b") is None and misread("ghcr.io/Acme/x") is None
    assert parse_reference("qwen/qwen2-0.5b").registry == "index.docker.io"


def test_a_lowercase_hugging_face_id_that_docker_hub_does_not_know_gets_the_hint(registry, tmp_path):
    """`qwen/qwen2-0.5b` is a valid Docker Hub name, so it is asked for; when the answer is "not found", the fix
    adds what an uppercase id is told before any request. Docker Hub is the loopback registry here, through a
    registries.conf `location`, as a node may rewrite it."""
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[[registry]]\nprefix = "docker.io"\nlocation = "{registry.host}"\ninsecure = true\n')
    env = {"CONTAINERS_REGISTRIES_CONF": str(conf), "OCI_CRANE_HOSTS_DIR": str(tmp_path / "no-certs.d")}
    line = one_error_line("fetch", "qwen/qwen2-0.5b", "--cache-dir", str(tmp_path / "cache"), cwd_env=env)
    cause, fix = line.split(" -- fix: ")
    assert "not found" in cause
    assert "if qwen/qwen2-0.5b is a Hugging Face model id" in fix and "vllm serve qwen/qwen2-0.5b," in fix
    # a name with a registry host is never taken for one
    line = one_error_line("fetch", f"{registry.host}/qwen/qwen2-0.5b", "--cache-dir", str(tmp_path / "cache"))
    assert "Hugging Face" not in line
