"""What one fetch is asked to do, from whichever door it comes in: the command line, the Python API
(``oci_crane_loader.fetch``) or the vLLM loader's ``--model-loader-extra-config``. Validated here, once, and
before anything is downloaded or created; the environment's OCI_CRANE_* settings ride along.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import errors
from .paths import safe_relative_path
from .registry.access import RegistryAccess, registry_access
from .registry.crane import Crane
from .settings import Settings, parse_retries, settings
from .signatures import VerifyPolicy, verify_policy

MAX_JOBS = 64  # concurrent crane processes; more only thrashes the registry and the disk
LOCAL_DIR_MODES = ("copy", "link")  # how --local-dir gets each file (local_dir.py); the first is the default


@dataclass(frozen=True)
class FetchOptions:
    """Build it with ``fetch_options`` (or ``from_extra_config``), which validate; the fields are final."""

    cache_dir: Path | None = None  # None: OCI_CRANE_LOADER_CACHE or ~/.cache/oci-crane-loader
    platform: str | None = None  # os/arch[/variant] to choose from an image index; None: the host's
    jobs: int = 4
    subpath: str | None = None  # normalised: "models/b", never "/models/b/" (it names the model directory)
    include: tuple[str, ...] = ()  # fnmatch patterns on the model's file paths: only these (none: all)
    exclude: tuple[str, ...] = ()  # ... and not these
    # How the registry may be reached (offline, TLS, credentials file, timeouts, retries): one value for crane and
    # the HTTP downloads alike.
    access: RegistryAccess = field(default_factory=RegistryAccess)
    settings: Settings = field(default_factory=Settings)  # the OCI_CRANE_* environment, read once
    # The keys a model must be signed with (--verify-key, OCI_CRANE_VERIFY_KEYS); none: no signature policy.
    verify: VerifyPolicy = field(default_factory=VerifyPolicy)

    @property
    def offline(self) -> bool:
        return self.access.offline

    @property
    def retries(self) -> int:
        return self.access.retries

    @property
    def insecure(self) -> bool:
        return self.access.insecure

    @property
    def plain_http(self) -> bool:
        return self.access.plain_http

    @property
    def ca_file(self) -> Path | None:
        return self.access.ca_file

    @property
    def authfile(self) -> Path | None:
        return self.access.authfile


def fetch_options(*, cache_dir: str | Path | None = None, platform: str | None = None, offline: bool = False,
                  insecure: bool = False, jobs: int = 4, subpath: str | None = None, plain_http: bool = False,
                  ca_file: str | Path | None = None, authfile: str | Path | None = None,
                  retries: int | None = None, include: Sequence[str] = (),
                  exclude: Sequence[str] = (), verify_keys: Sequence[str | Path] = ()) -> FetchOptions:
    """The one place the options of a fetch are checked; UsageError names the option and how to fix it.
    ``retries`` None: OCI_CRANE_RETRIES, else 2. ``verify_keys``: public key files a model must be signed with,
    added to OCI_CRANE_VERIFY_KEYS's (read and checked now)."""
    environment = settings()
    access = registry_access(offline=offline, insecure=insecure, plain_http=plain_http, ca_file=ca_file,
                             authfile=authfile, retries=None if retries is None else check_retries(retries),
                             environment=environment)
    return FetchOptions(cache_dir=check_cache_dir(cache_dir), platform=platform or None, jobs=check_jobs(jobs),
                        subpath=normalise_subpath(subpath), include=check_patterns(include, "--include"),
                        exclude=check_patterns(exclude, "--exclude"), access=access, settings=environment,
                        verify=check_verify_keys(verify_keys, environment))


def check_verify_keys(paths: Sequence[str | Path] | str, environment: Settings) -> VerifyPolicy:
    if isinstance(paths, str | Path) or not all(isinstance(path, str | Path) and str(path).strip()
                                                 for path in paths):
        raise errors.UsageError(f"--verify-key {paths!r} is not a list of key files",
                                "pass --verify-key once per public key file")
    return verify_policy([*environment.verify_keys, *paths])


def open_crane(options: FetchOptions) -> Crane:
    """The Crane a fetch with ``options`` talks to the registry through."""
    return Crane(options.access)


def check_retries(retries: object) -> int:
    if isinstance(retries, bool) or not isinstance(retries, int | str):
        raise errors.UsageError(f"--retries {retries!r} is not a number", "pass --retries 0 to 20")
    try:
        return parse_retries(retries, "--retries", Settings.retries)
    except errors.SettingsError as exc:
        raise errors.UsageError(exc.cause.replace("--retries=", "--retries "), exc.fix) from None


def check_patterns(patterns: Sequence[str] | str, option: str) -> tuple[str, ...]:
    """Glob patterns (fnmatch: ``*``, ``?``, ``[...]``) matched against the model's relative file paths."""
    if isinstance(patterns, str) or not all(isinstance(pattern, str) and pattern.strip() for pattern in patterns):
        raise errors.UsageError(f"{option} {patterns!r} is not a list of glob patterns",
                                f"pass {option} once per pattern, e.g. {option} '*.json'")
    return tuple(pattern.strip().lstrip("/") for pattern in patterns)


def check_jobs(jobs: object) -> int:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= MAX_JOBS:
        raise errors.UsageError(f"--jobs {jobs!r} is not a number from 1 to {MAX_JOBS}",
                                f"download 1 to {MAX_JOBS} blobs at once (default 4)")
    return jobs


def check_cache_dir(cache_dir: str | Path | None) -> Path | None:
    if cache_dir is None:
        return None
    if not str(cache_dir).strip():
        raise errors.UsageError("--cache-dir is empty: name a directory, or leave the option out for the default "
                                "cache")
    return Path(cache_dir)


def normalise_subpath(subpath: str | None) -> str | None:
    """``/models/b/``, ``models/b`` and ``./models//b`` are one directory, so one name in the cache: a path from
    the image's or artifact's root. What leaves it (``..``), names no directory in it (``/``) or could name no
    file is refused, by the same check as the artifact's own paths."""
    if not subpath:
        return None
    try:
        return safe_relative_path(subpath.lstrip("/"), "--subpath")
    except errors.InvalidModelError as exc:
        raise errors.UsageError(exc.cause, "name a directory inside the image or artifact, e.g. --subpath "
                                "models/llama (`oci-crane inspect REF` lists its files)") from None


# --- vLLM's --model-loader-extra-config ------------------------------------------------------------------------

_EXTRA_KEYS: dict[str, type] = {"jobs": int, "platform": str, "insecure": bool, "offline": bool, "subpath": str,
                                "plain_http": bool, "ca_file": str, "authfile": str, "retries": int,
                                "verify_key": str}


def from_extra_config(extra: dict[str, Any] | str | None, download_dir: str | Path | None) -> FetchOptions:
    """The vLLM loader's options: ``--model-loader-extra-config`` (a dict, or its JSON text) and vLLM's
    ``--download-dir`` as the cache. Unknown keys and values of the wrong JSON type are refused before work."""
    if isinstance(extra, str):
        try:
            extra = json.loads(extra) if extra.strip() else {}
        except ValueError as exc:
            raise errors.UsageError(f"oci-crane: --model-loader-extra-config is not JSON ({exc})",
                                    """pass a JSON object, e.g. '{"jobs": 8}'""") from None
    if not isinstance(extra, dict | None):
        raise errors.UsageError(f"oci-crane: --model-loader-extra-config must be a JSON object, not {extra!r}",
                                """pass a JSON object, e.g. '{"jobs": 8}'""")
    extra = dict(extra or {})
    unknown = sorted(set(extra) - set(_EXTRA_KEYS))
    if unknown:
        raise errors.UsageError(f"oci-crane: unknown model_loader_extra_config keys {unknown}",
                                f"use only the keys {', '.join(sorted(_EXTRA_KEYS))}")
    for key, value in extra.items():  # the range of jobs (and bool, an int to Python) is check_jobs's to refuse
        if not isinstance(value, _EXTRA_KEYS[key]):
            raise errors.UsageError(f"oci-crane: model_loader_extra_config[{key!r}] must be "
                                    f"{_EXTRA_KEYS[key].__name__}, got {value!r}",
                                    "fix the value in --model-loader-extra-config")
    verify_key = extra.pop("verify_key", None)
    try:
        return fetch_options(cache_dir=download_dir or None, verify_keys=[verify_key] if verify_key else [], **extra)
    except errors.UsageError as exc:  # said in the loader's terms: the option is a key of the extra config
        cause = exc.cause
        for key in ("jobs", "subpath", "plain_http", "ca_file", "authfile", "retries", "insecure"):
            cause = cause.replace(f"--{key.replace('_', '-')}", f"model_loader_extra_config['{key}']")
        raise errors.UsageError(f"oci-crane: {cause}", exc.fix) from None
