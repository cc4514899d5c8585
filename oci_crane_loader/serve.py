"""`oci-crane serve [REF] [-- vllm args...]`: `vllm serve` configured by the environment, as the hosted vLLM images
are (VLLM_MODEL, VLLM_ARGS, USE_ALL_GPUS), with the loader switched on when the model is an OCI reference.

The argv is built here and handed to ``os.execvp``: vLLM replaces this process, so signals, exit codes and logs are
vLLM's own, as in an image whose entry point is `vllm serve`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence

from . import errors
from .reference import is_registry_host, parse_reference
from .settings import flag
from .vllm_api import LOAD_FORMAT


def is_oci_reference(model: str) -> bool:
    """``oci://...``, or a reference naming its registry host (``ghcr.io/acme/m:v1``, ``127.0.0.1:5000/m@sha256:..``).
    A bare ``org/model`` is a Hugging Face id, and an existing path a local directory: both go to vLLM untouched."""
    if model[:6].lower() == "oci://":
        return True
    if os.path.exists(model) or "/" not in model:
        return False
    host = model.split("/", 1)[0]
    if not is_registry_host(host):
        return False
    try:
        parse_reference(model)
    except errors.InvalidReferenceError:
        return False
    return True


def _given(args: Sequence[str], *names: str) -> bool:
    """Whether the user passed one of the options ``names``: ``--x v`` or ``--x=v``, and ``--x_y`` as vLLM reads it."""
    return any(_option(arg) in names for arg in args)


def _option(arg: str) -> str:
    name = arg.split("=", 1)[0]
    return "--" + name[2:].replace("_", "-") if name.startswith("--") else name


def count_gpus() -> int:
    """GPUs visible here: `nvidia-smi -L` lines, else torch's count (imported only then: it is slow), else 0."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            listed = None
        if listed is not None and listed.returncode == 0:
            return sum(1 for line in listed.stdout.splitlines() if line.startswith("GPU "))
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count())


def build_argv(reference: str | None, extra: Sequence[str], env: Mapping[str, str], *,
               gpus: Callable[[], int] = count_gpus, cache_dir: Callable[[], str] | None = None) -> list[str]:
    """The `vllm serve` command line: REF (or $VLLM_MODEL), then $VLLM_ARGS shell-split, then ``extra``; for an
    OCI reference ``--load-format oci-crane`` and ``--download-dir <cache>`` unless given; with $USE_ALL_GPUS
    ``--tensor-parallel-size <GPUs here>`` unless given."""
    model = reference or env.get("VLLM_MODEL", "").strip()
    if not model:
        raise errors.UsageError("no model to serve: give REF (oci-crane serve ghcr.io/acme/llama:v1) or set "
                                "VLLM_MODEL", "set VLLM_MODEL=<reference or Hugging Face id>, or pass REF")
    if model.startswith("-"):  # vLLM would read it as one of its options
        raise errors.UsageError(f"the model {model!r} starts with '-', like an option",
                                "put vLLM's options after -- (or in VLLM_ARGS), and the model in REF or VLLM_MODEL")
    try:
        user_args = [*shlex.split(env.get("VLLM_ARGS", "")), *extra]
    except ValueError as exc:
        raise errors.SettingsError(f"VLLM_ARGS cannot be split like a shell line ({exc})",
                                   "quote VLLM_ARGS as you would on a command line") from None
    added: list[str] = []
    if is_oci_reference(model):
        if not _given(user_args, "--load-format"):
            added += ["--load-format", LOAD_FORMAT]
        if not _given(user_args, "--download-dir"):
            added += ["--download-dir", (cache_dir or _default_cache)()]
    if flag(env, "USE_ALL_GPUS") and not _given(user_args, "--tensor-parallel-size", "-tp"):
        found = gpus()
        if found < 1:
            raise errors.UsageError("USE_ALL_GPUS is set but no GPU is visible here (nvidia-smi -L and "
                                    "torch.cuda.device_count() found none)",
                                    "run where GPUs are visible (docker run --gpus all; a Kubernetes GPU "
                                    "limit), or unset USE_ALL_GPUS")
        added += ["--tensor-parallel-size", str(found)]
    return ["vllm", "serve", model, *added, *user_args]


# Words of an option name that mark its value as a secret (--api-key, --hf-token, --db-password): whole words, so
# --tokenizer and --max-num-batched-tokens stay readable.
_SECRET_WORDS = frozenset({"key", "apikey", "token", "secret", "password", "passwd"})


def shown(argv: Sequence[str]) -> str:
    """``argv`` as a shell line for people (stderr, --dry-run), with the value of every secret-looking option as
    ``***``, given as ``--opt value`` or ``--opt=value``; the argv that is exec'd keeps them."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        name = _option(arg)
        secret = name.startswith("--") and not _SECRET_WORDS.isdisjoint(name[2:].split("-"))
        if hide_next and not arg.startswith("-"):
            out.append("***")
        elif secret and "=" in arg:
            out.append(arg.split("=", 1)[0] + "=***")
        else:
            out.append(arg)
        hide_next = secret and "=" not in arg
    return shlex.join(out)


def _default_cache() -> str:
    from .cache.store import default_cache_dir  # OCI_CRANE_LOADER_CACHE, else ~/.cache/oci-crane-loader

    return str(default_cache_dir())


def exec_vllm(argv: list[str]) -> None:
    """Replace this process with vLLM (never returns)."""
    if shutil.which(argv[0]) is None:
        raise errors.UsageError(f"{argv[0]!r} is not on PATH, so there is no vLLM to start",
                                "install vLLM (pip install 'oci-crane-loader[vllm]'), or use the image whose "
                                "entry point this is")
    os.execvp(argv[0], argv)
