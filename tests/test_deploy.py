"""Deploying as our users do (docs/deploy.md): the Kubernetes recipes in deploy/ checked against the Kubernetes
client's models and KServe's CRD fields, their containers' exact commands run against registries on 127.0.0.1, and
the Dockerfile read for what CI's docker job builds. The recipe on a real cluster: the `kind` job of
.github/workflows/ci.yml; `oci-crane serve` in front of real vLLM: tests/test_deploy_vllm.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support.commands import REPO_ROOT
from support.distribution import binary_path, distribution_registry
from support.manifests import (
    DEPLOY,
    MODELS,
    container_argv,
    container_env,
    find,
    load,
    local_path,
    mount_map,
    project_secret,
    run_container,
    typed_round_trip,
    volume_dirs,
)
from support.models import push_model, pushed_model, tree_bytes, write_model
from support.project import optional_dependencies

yaml = pytest.importorskip("yaml", reason="pyyaml is in the test extra: pip install -e '.[test]'")
pytest.importorskip("kubernetes", reason="the kubernetes client is in the test extra: pip install -e '.[test]'")

RECIPES = sorted(path.name for path in DEPLOY.glob("*.yaml"))


@pytest.fixture
def pushed(registry, tmp_path: Path) -> tuple[str, Path]:
    return pushed_model(registry.host, tmp_path, "acme/llama:v1")


# --- the manifests themselves -----------------------------------------------------------------------------------

def test_every_recipe_is_documented_and_there_are_four():
    assert RECIPES == ["init-container.yaml", "kserve.yaml", "registry-credentials.yaml", "shared-cache.yaml"]
    guide = (REPO_ROOT / "docs" / "deploy.md").read_text()
    assert all(f"deploy/{name}" in guide for name in RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_kubernetes_objects_load_into_the_clients_typed_models_unchanged(name):
    for document in load(name):
        key = (document["apiVersion"], document["kind"])
        if key[0].startswith("serving.kserve.io/"):
            continue  # a CRD: test_kserve_objects_match_the_crd_fields
        assert key in MODELS, f"{name}: no check for {key}"
        assert typed_round_trip(document, MODELS[key]) == document, name


def test_kserve_objects_match_the_crd_fields():
    storage = find("kserve.yaml", "ClusterStorageContainer")
    assert storage["apiVersion"] == "serving.kserve.io/v1alpha1"
    # ClusterStorageContainer spec (KServe >= 0.11): container, supportedUriFormats, workloadType, and (newer)
    # supportsMultiModelDownload.
    assert set(storage["spec"]) <= {"container", "supportedUriFormats", "workloadType", "supportsMultiModelDownload"}
    container = storage["spec"]["container"]
    assert container["name"] == "storage-initializer"  # how KServe finds the init container
    assert typed_round_trip(container, "V1Container") == container
    assert storage["spec"]["workloadType"] in ("initContainer", "localModelDownloadJob")
    formats = storage["spec"]["supportedUriFormats"]
    assert all(len(entry) == 1 and set(entry) <= {"prefix", "regex"} for entry in formats)

    service = find("kserve.yaml", "InferenceService")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and set(service["spec"]) == {"predictor"}
    predictor = dict(service["spec"]["predictor"])
    model = predictor.pop("model")
    # The predictor is a PodSpec plus `model`; the model a Container plus modelFormat, runtime, storageUri.
    assert typed_round_trip({**predictor, "containers": []}, "V1PodSpec") == {**predictor, "containers": []}
    container_part = {k: v for k, v in model.items() if k not in ("modelFormat", "runtime", "storageUri")}
    assert typed_round_trip({**container_part, "name": "kserve-container"}, "V1Container") == {
        **container_part, "name": "kserve-container"}
    assert set(model["modelFormat"]) <= {"name", "version"}
    # KServe hands storageUri to the ClusterStorageContainer whose prefix matches; never `oci://`, KServe's own.
    assert [entry["prefix"] for entry in formats] == ["oci-artifact://"]
    assert model["storageUri"].startswith("oci-artifact://")
    # The volume the storage initializer mounts is one the InferenceService's pod has.
    assert {mount["name"] for mount in container["volumeMounts"]} <= {v["name"] for v in predictor["volumes"]}


def test_every_credentials_volume_projects_the_secrets_key_as_config_json():
    secret = find("registry-credentials.yaml", "Secret")
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    json.loads(secret["stringData"][".dockerconfigjson"])
    pods = [find("init-container.yaml", "Deployment")["spec"]["template"]["spec"],
            find("shared-cache.yaml", "Deployment")["spec"]["template"]["spec"],
            find("kserve.yaml", "InferenceService")["spec"]["predictor"]]
    for pod in pods:
        (volume,) = [v for v in pod["volumes"] if v["name"] == "registry-credentials"]
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]
        assert volume["secret"]["items"] == [{"key": ".dockerconfigjson", "path": "config.json"}]
        for container in [*pod.get("initContainers", []), *pod.get("containers", [])]:
            mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
            env = {e["name"]: e["value"] for e in container.get("env", [])}
            if "registry-credentials" in mounts:  # crane reads $DOCKER_CONFIG/config.json
                assert env["DOCKER_CONFIG"] == mounts["registry-credentials"]


# --- (a) an init container, then the official vLLM image --------------------------------------------------------

def init_recipe(tmp_path: Path) -> tuple[dict, dict, dict[str, Path]]:
    pod = find("init-container.yaml", "Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    (vllm,) = pod["containers"]
    return init, vllm, volume_dirs(pod, tmp_path)


def test_init_container_reads_the_nodes_mirror_configuration_read_only(tmp_path):
    """docs/mirrors.md: the node's certs.d (Spegel, Dragonfly) and /etc/containers reach the init container as
    read-only hostPath mounts, and OCI_CRANE_HOSTS_DIR points at the first; doctor then lists the node's mirror."""
    pod = find("init-container.yaml", "Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["name"]: mount for mount in init["volumeMounts"]}
    for name, node_path, in_pod in (("node-certs-d", "/etc/containerd/certs.d", "/etc/oci-crane/node-certs.d"),
                                    ("node-containers", "/etc/containers", "/etc/containers")):
        assert volumes[name]["hostPath"]["path"] == node_path
        assert mounts[name]["mountPath"] == in_pod and mounts[name]["readOnly"] is True
    env = {entry["name"]: entry["value"] for entry in init["env"]}
    assert env["OCI_CRANE_HOSTS_DIR"] == mounts["node-certs-d"]["mountPath"]
    dirs = volume_dirs(pod, tmp_path)
    node_file = dirs["node-certs-d"] / "ghcr.io" / "hosts.toml"
    node_file.parent.mkdir()
    node_file.write_text("[host.'http://10.0.0.7:30020']\ncapabilities = ['pull', 'resolve']\n")
    done = subprocess.run([sys.executable, "-m", "oci_crane_loader", "doctor", "ghcr.io/acme/llama:v1", "--cache-dir",
                           str(tmp_path / "cache")], capture_output=True, text=True, cwd=REPO_ROOT, check=False,
                          env=container_env(init, mount_map(init, dirs), "ghcr.io/acme/llama:v1"))
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if "mirror http://10.0.0.7:30020/v2/acme/llama" in line)
    assert "resolve tags and pull; ns=ghcr.io" in line and line.endswith(f"from {node_file}")


def test_init_container_recipe_fills_the_directory_vllm_serves(pushed, tmp_path):
    reference, source = pushed
    init, vllm, volumes = init_recipe(tmp_path)
    done = run_container(init, mount_map(init, volumes), reference)  # no secret: an empty volume, anonymous pull
    assert done.returncode == 0, done.stderr
    assert vllm["command"][:2] == ["vllm", "serve"]
    served = Path(local_path(vllm["command"][2], mount_map(vllm, volumes)))  # the DIR of `vllm serve DIR`
    assert done.stdout.strip() == str(served)
    assert tree_bytes(served) == tree_bytes(source)
    # The cache sits on the same volume, so each file is a hard link to it, not a second copy.
    assert all(path.stat().st_nlink >= 2 for path in served.rglob("*") if path.is_file())
    # The pod restarts: the init container runs again and changes nothing.
    before = {str(p): p.stat().st_mtime_ns for p in served.rglob("*")}
    assert run_container(init, mount_map(init, volumes), reference).returncode == 0
    assert {str(p): p.stat().st_mtime_ns for p in served.rglob("*")} == before


# --- (d) credentials from a dockerconfigjson secret, against a registry with htpasswd and TLS --------------------

@pytest.mark.skipif(binary_path() is None, reason="Debian's docker-registry is not installed: bin/install-test-deps")
def test_dockerconfigjson_secret_mounted_as_the_recipe_does_logs_crane_in(tmp_path, monkeypatch):
    source = write_model(tmp_path / "source")
    with distribution_registry(tmp_path / "distribution") as private:
        reference = f"{private.host}/acme/llama:v1"
        trust = {"SSL_CERT_FILE": str(private.ca_file)}
        with monkeypatch.context() as pushing:
            pushing.setenv("DOCKER_CONFIG", str(private.docker_config))
            pushing.setenv("SSL_CERT_FILE", str(private.ca_file))
            push_model(source, reference, tmp_path)

        init, _, volumes = init_recipe(tmp_path / "without")  # no secret: the optional volume is empty
        refused = run_container(init, mount_map(init, volumes), reference, env=trust)
        assert refused.returncode == 1 and "unauthorized" in refused.stderr.lower(), refused.stderr

        init, _, volumes = init_recipe(tmp_path / "with")
        # The secret as `kubectl create secret docker-registry` makes it, projected as the recipe's items say.
        pod = find("init-container.yaml", "Deployment")["spec"]["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "registry-credentials"]
        config = json.loads((private.docker_config / "config.json").read_text())
        project_secret(volume, {".dockerconfigjson": json.dumps(config)}, volumes["registry-credentials"])
        done = run_container(init, mount_map(init, volumes), reference, env=trust)
        assert done.returncode == 0, done.stderr
        assert private.password not in done.stdout + done.stderr
    assert tree_bytes(Path(done.stdout.strip())) == tree_bytes(source)


# --- (b) the plugin serving the reference, a cache shared by replicas --------------------------------------------

def shared_recipe(tmp_path: Path) -> tuple[dict, dict[str, Path]]:
    pod = find("shared-cache.yaml", "Deployment")["spec"]["template"]["spec"]
    (vllm,) = pod["containers"]
    return vllm, mount_map(vllm, volume_dirs(pod, tmp_path))


def test_shared_cache_recipe_runs_vllm_on_the_reference_with_the_volume_as_download_dir(tmp_path):
    vllm, mounts = shared_recipe(tmp_path)
    reference = "127.0.0.1:5000/acme/llama:v1"
    argv = container_argv(vllm, mounts, reference)  # [python, -m, oci_crane_loader, serve, --, ...]
    dry = subprocess.run([*argv[:4], "--dry-run", *argv[4:]], capture_output=True, text=True, cwd=REPO_ROOT,
                         env=container_env(vllm, mounts, reference), check=False)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.split() == ["vllm", "serve", reference, "--load-format", "oci-crane", "--download-dir",
                                  str(mounts["/cache"]), "--served-model-name", "llama", "--max-model-len", "8192",
                                  "--host", "0.0.0.0", "--port", "8000"]


def test_replicas_sharing_the_cache_download_each_blob_once(pushed, registry, tmp_path):
    reference, source = pushed
    vllm, mounts = shared_recipe(tmp_path)
    env = container_env(vllm, mounts, reference)
    fetch = {"command": ["oci-crane", "fetch", reference, "--quiet"]}
    results: list[subprocess.CompletedProcess[str]] = []

    def replica() -> None:
        results.append(subprocess.run(container_argv(fetch, mounts, reference), capture_output=True, text=True,
                                      env=env, cwd=REPO_ROOT, timeout=300, check=False))

    threads = [threading.Thread(target=replica) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    assert results[0].stdout == results[1].stdout and Path(results[0].stdout.strip()).is_relative_to(mounts["/cache"])
    fetched = registry.blob_downloads()
    assert len(fetched) == len(set(fetched)) == len(tree_bytes(source)) + 1, registry.log()


# --- (c) KServe's storage initializer --------------------------------------------------------------------------

def test_kserve_storage_initializer_puts_the_model_alone_in_the_destination(pushed, tmp_path):
    reference, source = pushed
    storage = find("kserve.yaml", "ClusterStorageContainer")["spec"]["container"]
    service = find("kserve.yaml", "InferenceService")
    uri = service["spec"]["predictor"]["model"]["storageUri"]
    destination = tmp_path / "mnt" / "models"
    destination.mkdir(parents=True)  # KServe's emptyDir, mounted at /mnt/models
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    mounts = {"/mnt/models": destination, storage["volumeMounts"][0]["mountPath"]: credentials}
    env = {"OCI_CRANE_LOADER_CACHE": ""}
    done = run_container(storage, mounts, reference, extra=[uri, "/mnt/models"], env=env)  # KServe's two args
    assert done.returncode == 0, done.stderr
    assert tree_bytes(destination) == tree_bytes(source)  # the model only: the scratch cache is gone
    assert not [p for p in destination.iterdir() if p.name.startswith(".")]
    wrong = run_container(storage, mounts, reference, extra=[uri], env=env)
    assert wrong.returncode == 1 and "URI DEST pairs" in wrong.stderr


# --- the image -------------------------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO_ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined.splitlines() if line.strip()]


def test_dockerfile_builds_on_a_pinned_vllm_release_within_the_supported_range():
    from packaging.requirements import Requirement  # packaging comes with pytest

    stages = [argument for name, argument in dockerfile_instructions() if name == "FROM"]
    final = stages[-1]
    match = re.fullmatch(r"vllm/vllm-openai:v(\d+\.\d+\.\d+)(@sha256:[0-9a-f]{64})?", final)
    assert match, f"the image's base must be a pinned vLLM release, not {final!r}"
    (vllm,) = [Requirement(text) for text in optional_dependencies("vllm") if Requirement(text).name == "vllm"]
    assert vllm.specifier.contains(match.group(1)), (match.group(1), str(vllm.specifier))
    assert all(re.search(r":[\w.-]*\d", stage.split()[0]) for stage in stages)  # no bare `latest` in any stage


def test_dockerfile_installs_our_wheel_and_serves_by_environment():
    instructions = dockerfile_instructions()
    last_from = max(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    final = instructions[last_from:]
    entrypoints = [json.loads(argument) for name, argument in final if name == "ENTRYPOINT"]
    assert entrypoints[-1] == ["oci-crane", "serve"]
    runs = " ".join(argument for name, argument in final if name == "RUN")
    # ours from dist/ only (--no-index), never PyPI's namesake; then checked to start
    assert re.search(r"--no-index --no-deps --only-binary :all: --find-links /tmp/dist oci-crane-loader", runs)
    assert "source=dist" in runs and "oci-crane --version" in runs
    assert (REPO_ROOT / ".dockerignore").read_text().split("\n")[1:3] == ["*", "!dist/"]


def test_ci_builds_the_image_and_runs_the_kind_recipe():
    workflow = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "ci.yml").read_text())
    docker = " ".join(step.get("run", "") for step in workflow["jobs"]["docker"]["steps"])
    assert "docker build" in docker and "--dry-run" in docker and "--load-format oci-crane" in docker
    assert "--version" in docker
    kind = " ".join(step.get("run", "") for step in workflow["jobs"]["kind"]["steps"])
    assert "deploy/init-container.yaml" in kind and re.search(r'oci-crane"? push', kind)
    assert "bin/kind_recipe.py" in kind and "kubectl rollout status" in kind


def test_the_kind_jobs_adapted_recipe_is_still_valid_and_its_init_container_runs(pushed, tmp_path):
    reference, source = pushed
    adapted = subprocess.run([sys.executable, "bin/kind_recipe.py", reference, "oci-crane-loader:ci", "vllm-cpu:ci"],
                             input=(DEPLOY / "init-container.yaml").read_text(), capture_output=True, text=True,
                             cwd=REPO_ROOT, check=True).stdout
    documents = list(yaml.safe_load_all(adapted))
    for document in documents:
        key = (document["apiVersion"], document["kind"])
        assert typed_round_trip(document, MODELS[key]) == document
    pod = documents[0]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"] == ["oci-crane", "fetch", reference, "--local-dir", "/models/llama", "--local-dir-mode",
                               "link", "--insecure"]
    assert "resources" not in pod["containers"][0] and pod["containers"][0]["image"] == "vllm-cpu:ci"
    volumes = volume_dirs(pod, tmp_path)
    done = run_container(init, mount_map(init, volumes), reference)
    assert done.returncode == 0, done.stderr
    assert tree_bytes(volumes["models"] / "llama") == tree_bytes(source)
