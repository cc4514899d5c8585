"""deploy/init-container.yaml made runnable on CI's kind cluster, printed on stdout for `kubectl apply -f -`.

    python bin/kind_recipe.py REFERENCE FETCH_IMAGE VLLM_CPU_IMAGE < deploy/init-container.yaml

kind has no GPU and a plain-http registry: the model reference becomes REFERENCE fetched with --insecure, the
init container runs FETCH_IMAGE (loaded into kind, never pulled), vLLM runs its CPU build VLLM_CPU_IMAGE without
the GPU limit, with CPU-sized options for a small embedding model. Everything else is the recipe as users get it.
"""

from __future__ import annotations

import sys

import yaml

RECIPE_REFERENCE = "ghcr.io/acme/llama:v1"
CPU_ARGS = ["--runner", "pooling", "--dtype", "float32", "--max-model-len", "256", "--max-num-seqs", "4"]


def adapt(documents: list[dict], reference: str, fetch_image: str, vllm_image: str) -> list[dict]:
    for document in documents:
        if document["kind"] != "Deployment":
            continue
        pod = document["spec"]["template"]["spec"]
        for init in pod["initContainers"]:
            init["image"], init["imagePullPolicy"] = fetch_image, "Never"
            init["command"] = [reference if word == RECIPE_REFERENCE else word for word in init["command"]]
            init["command"].append("--insecure")
        for container in pod["containers"]:
            container["image"] = vllm_image
            container["args"] = [*container.get("args", []), *CPU_ARGS]
            container.pop("resources", None)  # nvidia.com/gpu: kind has none
            container["env"] = [{"name": "VLLM_CPU_KVCACHE_SPACE", "value": "1"}]
            container["readinessProbe"]["failureThreshold"] = 120
    return documents


def main() -> None:
    reference, fetch_image, vllm_image = sys.argv[1:4]
    documents = [doc for doc in yaml.safe_load_all(sys.stdin) if doc]
    yaml.safe_dump_all(adapt(documents, reference, fetch_image, vllm_image), sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
