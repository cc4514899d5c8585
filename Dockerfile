# syntax=docker/dockerfile:1
# Two images from the wheels in dist/ (`nox -s wheels -- dist` builds them); docs/deploy.md shows both at work.
#
#   docker build -t oci-crane-vllm .                          vLLM's official image plus the plugin; its entry point
#                                                             `oci-crane serve` reads VLLM_MODEL, VLLM_ARGS, USE_ALL_GPUS
#   docker build --target fetch -t oci-crane-loader .         a small image with `oci-crane` only: init containers,
#                                                             KServe's storage initializer
#
#   docker run --gpus all -p 8000:8000 -e VLLM_MODEL=ghcr.io/acme/llama:v1 -e VLLM_ARGS="--max-model-len 8192" \
#     -v ~/.docker/config.json:/root/.docker/config.json:ro oci-crane-vllm

FROM python:3.12-slim-bookworm AS fetch
# Our wheel from dist/ only (never a namesake from PyPI; pip's tags pick this CPU's), then its dependencies. The bind
# mount keeps the other platforms' wheels out of the image. With the signature extras: OCI_CRANE_VERIFY_KEYS works
# in the init container for cosign signatures and model-signing bundles alike.
RUN --mount=type=bind,source=dist,target=/tmp/dist \
    python3 -m pip install --no-cache-dir --no-index --no-deps --only-binary :all: --find-links /tmp/dist oci-crane-loader \
    && python3 -m pip install --no-cache-dir --find-links /tmp/dist 'oci-crane-loader[sign,model-signing]' \
    && oci-crane --version
USER 65532:65532
ENV HOME=/tmp
ENTRYPOINT ["oci-crane"]

# The default target. Pinned to a release inside the plugin's supported vLLM range (tests/test_deploy.py checks both).
# The `sign` extra (cosign signatures); model-signing's dependencies (sigstore, protobuf) are left out of vLLM's
# environment: verify model-signing bundles in the fetch image's init container (docs/deploy.md).
FROM vllm/vllm-openai:v0.32.0
RUN --mount=type=bind,source=dist,target=/tmp/dist \
    (command -v uv >/dev/null || python3 -m pip install --no-cache-dir uv) \
    && uv pip install --python python3 --no-cache --no-index --no-deps --only-binary :all: --find-links /tmp/dist oci-crane-loader \
    && uv pip install --python python3 --no-cache --find-links /tmp/dist 'oci-crane-loader[sign]' \
    && oci-crane --version
# The cache, and vLLM's --download-dir for OCI references: mount a volume here to keep models between runs.
ENV OCI_CRANE_LOADER_CACHE=/root/.cache/oci-crane-loader
ENTRYPOINT ["oci-crane", "serve"]
