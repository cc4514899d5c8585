"""Every OCI_CRANE_* environment setting, parsed and validated once, when first needed (never at import).

A bad value is one clear error naming the variable, not a traceback at import and not a silently disabled
watchdog (``nan`` or ``inf`` seconds). ``OCI_CRANE_BINARY`` is not here: crane.choose_crane reads it at each
lookup, as a path needs no parsing.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import errors

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True)
class UnpackLimits:
    """What one archive layer may unpack to, far above any real model (materialize.extract_tar enforces them)."""

    ratio: float = 200.0  # unpacked bytes per archive byte (OCI_CRANE_MAX_UNPACK_RATIO)
    bytes: int = 1 << 40  # unpacked bytes of one archive (OCI_CRANE_MAX_UNPACK_BYTES); never past the free space
    entries: int = 100_000  # tar entries of one archive (OCI_CRANE_MAX_UNPACK_ENTRIES)

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> UnpackLimits:
        env = os.environ if env is None else env
        default = cls()
        return cls(ratio=_positive(env, "OCI_CRANE_MAX_UNPACK_RATIO", default.ratio, float),
                   bytes=_positive(env, "OCI_CRANE_MAX_UNPACK_BYTES", default.bytes, parse_bytes),
                   entries=_positive(env, "OCI_CRANE_MAX_UNPACK_ENTRIES", default.entries, int))


@dataclass(frozen=True)
class Settings:
    timeout: float = 120.0  # OCI_CRANE_TIMEOUT: seconds a crane command (manifest, push) may take
    stall_timeout: float = 60.0  # OCI_CRANE_STALL_TIMEOUT: seconds a blob download may go without a byte
    lock_timeout: float = 3600.0  # OCI_CRANE_LOCK_TIMEOUT: seconds to wait for another process's cache lock
    offline: bool = False  # OCI_CRANE_OFFLINE: the cache only, never the network (CLI and vLLM loader alike)
    no_fsync: bool = False  # OCI_CRANE_NO_FSYNC: skip fsync, for throwaway caches
    cache_dir: Path | None = None  # OCI_CRANE_LOADER_CACHE: the cache root
    no_ranges: bool = False  # OCI_CRANE_NO_RANGES: every blob through `crane blob`, never the ranged download
    no_outage_fallback: bool = False  # OCI_CRANE_NO_OUTAGE_FALLBACK: an unreachable registry fails a cached tag
    range_threshold: int = 64 << 20  # OCI_CRANE_RANGE_THRESHOLD: smaller blobs go through `crane blob`
    range_parts: int = 8  # OCI_CRANE_RANGE_PARTS: parallel byte ranges per large blob, at most
    range_connections: int = 16  # OCI_CRANE_RANGE_CONNECTIONS: shared by the large blobs downloading at once
    unpack: UnpackLimits = UnpackLimits()  # OCI_CRANE_MAX_UNPACK_RATIO / _BYTES / _ENTRIES
    retries: int = 5  # OCI_CRANE_RETRIES: new tries in a row of a blob download that keeps no new byte (0: none)
    retry_window: float = 120.0  # OCI_CRANE_RETRY_WINDOW: seconds a download may go on failing with no new byte
    disable_progress: bool = False  # OCI_CRANE_DISABLE_PROGRESS: no progress on stderr, as --quiet
    # OCI_CRANE_LORA_REPOSITORIES: the repository prefixes vLLM's LoRA resolver may load adapters from; () is off
    lora_repositories: tuple[str, ...] = ()
    lora_max_bytes: int = 2 << 30  # OCI_CRANE_LORA_MAX_BYTES: the most one adapter artifact may hold
    lora_timeout: float = 300.0  # OCI_CRANE_LORA_TIMEOUT: seconds a request may wait for its adapter's download
    # OCI_CRANE_VERIFY_KEYS: public key files (':'-separated) a model must be signed with (signatures/policy.py)
    verify_keys: tuple[str, ...] = ()
    # OCI_CRANE_HOSTS_DIR: containerd's hosts roots (registry/mirrors.py); () is /etc/containerd/certs.d
    hosts_dirs: tuple[Path, ...] = ()

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> Settings:
        cache = env.get("OCI_CRANE_LOADER_CACHE", "").strip()
        return cls(timeout=_seconds(env, "OCI_CRANE_TIMEOUT", cls.timeout),
                   stall_timeout=_seconds(env, "OCI_CRANE_STALL_TIMEOUT", cls.stall_timeout),
                   lock_timeout=_seconds(env, "OCI_CRANE_LOCK_TIMEOUT", cls.lock_timeout),
                   offline=flag(env, "OCI_CRANE_OFFLINE"), no_fsync=flag(env, "OCI_CRANE_NO_FSYNC"),
                   cache_dir=Path(cache).expanduser() if cache else None,
                   no_ranges=flag(env, "OCI_CRANE_NO_RANGES"),
                   no_outage_fallback=flag(env, "OCI_CRANE_NO_OUTAGE_FALLBACK"),
                   range_threshold=_positive(env, "OCI_CRANE_RANGE_THRESHOLD", cls.range_threshold, parse_bytes),
                   range_parts=_positive(env, "OCI_CRANE_RANGE_PARTS", cls.range_parts, int),
                   range_connections=_positive(env, "OCI_CRANE_RANGE_CONNECTIONS", cls.range_connections, int),
                   unpack=UnpackLimits.from_environment(env), retries=parse_retries(
                       env.get("OCI_CRANE_RETRIES", ""), "OCI_CRANE_RETRIES", cls.retries),
                   retry_window=_seconds(env, "OCI_CRANE_RETRY_WINDOW", cls.retry_window),
                   disable_progress=flag(env, "OCI_CRANE_DISABLE_PROGRESS"),
                   lora_repositories=parse_prefixes(env.get("OCI_CRANE_LORA_REPOSITORIES", ""),
                                                    "OCI_CRANE_LORA_REPOSITORIES"),
                   lora_max_bytes=_positive(env, "OCI_CRANE_LORA_MAX_BYTES", cls.lora_max_bytes, parse_bytes),
                   lora_timeout=_seconds(env, "OCI_CRANE_LORA_TIMEOUT", cls.lora_timeout),
                   verify_keys=tuple(path.strip() for path in env.get("OCI_CRANE_VERIFY_KEYS", "").split(":")
                                     if path.strip()),
                   hosts_dirs=parse_hosts_dirs(env.get("OCI_CRANE_HOSTS_DIR", "")))


def parse_hosts_dirs(text: str) -> tuple[Path, ...]:
    """``/etc/containerd/certs.d:/host/certs.d``: containerd's ``config_path`` roots, ``os.pathsep``-separated as
    containerd splits it; empty parts are skipped, ``~`` expanded."""
    return tuple(Path(part.strip()).expanduser() for part in text.split(os.pathsep) if part.strip())


def parse_prefixes(text: str, name: str) -> tuple[str, ...]:
    """``ghcr.io/acme/adapters, registry.local:5000/team``: repository prefixes, normalised as references are
    (``docker.io/library/x`` for ``x``, no ``oci://``, no trailing ``/``). A prefix matches whole path components
    only: ``ghcr.io/acme`` allows ``ghcr.io/acme/sql``, never ``ghcr.io/acme-evil/sql``."""
    from .reference import parse_reference

    prefixes = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            # Parsed as the parent of a repository: a prefix may be a whole registry, or a one-letter path.
            parsed = parse_reference(item.removeprefix("oci://").rstrip("/") + "/xx")
            prefixes.append(parsed.repository_name.removesuffix("/xx"))
        except errors.InvalidReferenceError as exc:
            raise errors.SettingsError(f"{name}: {item!r} is not a repository prefix ({exc.cause})",
                                       f"set {name} to repository prefixes, comma-separated, e.g. "
                                       "ghcr.io/acme/adapters,registry.local:5000/team") from None
    return tuple(prefixes)


MAX_RETRIES = 20


def parse_retries(text: str | int, name: str, default: int) -> int:
    """A count of new tries, 0 to MAX_RETRIES (``--retries`` and OCI_CRANE_RETRIES alike); "" is the default."""
    raw = str(text).strip()
    if not raw:
        return default
    if raw.isdigit() and int(raw) <= MAX_RETRIES:
        return int(raw)
    raise errors.SettingsError(f"{name}={raw!r} is not a number of retries from 0 to {MAX_RETRIES}",
                               f"set {name} to 0 (no retry) .. {MAX_RETRIES} (default {default})")


# A year: beyond it a timeout means "never", and Python's waits overflow (threading.TIMEOUT_MAX, about 292 years
# on Linux, less elsewhere) with an OverflowError deep inside a download.
MAX_SECONDS = 365 * 24 * 3600.0


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    return float(_positive(env, name, default, float, what=f"a number of seconds up to {MAX_SECONDS:.0f}",
                           fix=f"set {name} to a positive number of seconds up to {MAX_SECONDS:.0f} (a year; default "
                               f"{default:g}) or unset it", most=MAX_SECONDS))


def parse_bytes(text: str) -> int:
    """``1048576``, ``512M``, ``10G``, ``1TiB``: binary units."""
    lowered = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = lowered[-1:] if lowered[-1:] in _UNITS else ""
    return int(float(lowered[: len(lowered) - len(unit)]) * _UNITS[unit])


def _positive(env: Mapping[str, str], name: str, default: float, parse: Callable[[str], Any], *,
              what: str = "a positive number", fix: str | None = None, most: float = math.inf) -> Any:
    """``name`` parsed, finite, above zero (nan or inf would silently switch a bound off) and at most ``most``,
    else ``default`` when unset; anything else is one SettingsError naming the variable."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except (ValueError, OverflowError):
        value = None
    if value is None or not (math.isfinite(value) and 0 < value <= most):
        raise errors.SettingsError(f"{name}={raw!r} is not {what}", fix or
                                   f"set {name} to a positive number (e.g. {default:g}), or unset it for the default")
    return value


def flag(env: Mapping[str, str], name: str) -> bool:
    """An on/off variable (1, true, yes, on / 0, false, no, off, unset); also USE_ALL_GPUS for `oci-crane serve`."""
    text = env.get(name, "").strip().lower()
    if text not in _TRUE + _FALSE:
        raise errors.SettingsError(f"{name}={text!r} is neither on nor off",
                                   f"set {name} to 1 (on) or 0 (off), or unset it")
    return text in _TRUE


# Every variable this package reads, for `oci-crane --help` (a test checks that none is missing).
VARIABLES = {
    "OCI_CRANE_LOADER_CACHE": "the cache root (default ~/.cache/oci-crane-loader; --cache-dir wins)",
    "OCI_CRANE_OFFLINE": "1: the cache only, never the network (as --offline)",
    "OCI_CRANE_RETRIES": f"new tries in a row of a blob download that keeps failing, 0-{MAX_RETRIES} (default "
                         f"{Settings.retries}; --retries wins); waits 1, 2, 4 ... s between them",
    "OCI_CRANE_RETRY_WINDOW": f"seconds a download may go on failing without a new byte on disk (default "
                              f"{Settings.retry_window:g})",
    "OCI_CRANE_TIMEOUT": f"seconds a crane command (manifest, push) may take (default {Settings.timeout:g})",
    "OCI_CRANE_STALL_TIMEOUT": f"seconds a download may go without a byte (default {Settings.stall_timeout:g})",
    "OCI_CRANE_LOCK_TIMEOUT": f"seconds to wait for another process's cache lock (default "
                              f"{Settings.lock_timeout:g})",
    "OCI_CRANE_DISABLE_PROGRESS": "1: no progress on stderr (as --quiet)",
    "OCI_CRANE_NO_FSYNC": "1: no fsync at all (not even in the background), for throwaway caches",
    "OCI_CRANE_RANGE_THRESHOLD": "blobs from this size on may come as parallel byte ranges (default 64M)",
    "OCI_CRANE_RANGE_PARTS": f"byte ranges per large blob at most; 1: none (default {Settings.range_parts})",
    "OCI_CRANE_RANGE_CONNECTIONS": "connections the byte ranges of all large blobs share, at least 2 per blob "
                                   f"(default {Settings.range_connections})",
    "OCI_CRANE_NO_RANGES": "1: every blob through crane blob, never byte ranges",
    "OCI_CRANE_NO_OUTAGE_FALLBACK": "1: a registry that cannot be reached fails the fetch, even of a cached tag",
    "OCI_CRANE_MAX_UNPACK_RATIO": f"unpacked bytes per archive byte (default {UnpackLimits.ratio:g})",
    "OCI_CRANE_MAX_UNPACK_BYTES": "unpacked bytes of one archive, e.g. 2T (default 1T)",
    "OCI_CRANE_MAX_UNPACK_ENTRIES": f"files in one archive (default {UnpackLimits.entries})",
    "OCI_CRANE_LORA_REPOSITORIES": "vLLM: repository prefixes (comma-separated) a request's `model` may name a LoRA "
                                   "adapter under, fetched on demand (unset: off)",
    "OCI_CRANE_LORA_MAX_BYTES": "vLLM: the largest LoRA adapter artifact fetched on demand (default 2G)",
    "OCI_CRANE_LORA_TIMEOUT": f"vLLM: seconds a request waits for its adapter's download (default "
                              f"{Settings.lora_timeout:g}); the download goes on",
    "OCI_CRANE_VERIFY_KEYS": "public key files, ':'-separated: serve only models signed with one (as --verify-key)",
    "OCI_CRANE_HOSTS_DIR": "containerd's hosts directories for mirrors, ':'-separated (default "
                           "/etc/containerd/certs.d; docs/mirrors.md)",
    "OCI_CRANE_BINARY": "the crane executable to run (default: the bundled copy, then PATH)",
}


def environment_help() -> str:
    """The variables, one a line, for the end of `oci-crane --help`."""
    width = max(map(len, VARIABLES))
    return "environment:\n" + "\n".join(f"  {name:<{width}}  {text}" for name, text in VARIABLES.items())


@functools.cache
def settings() -> Settings:
    """The process's settings, read from the environment on the first call."""
    return Settings.from_environment(os.environ)
