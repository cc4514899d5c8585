"""`oci-crane doctor`: check the setup, one line per check. crane and the cache are required; the rest is advice.

Never prints a credential: of the credentials file only its name, registry names and helper names are shown.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from . import errors
from .cache.store import Store, remove_tree
from .platforms import host_platform
from .progress import human
from .registry.crane import MINIMUM_VERSION, SOURCE_NAMES, choose_crane
from .registry.keychain import HOME_DOCKER_CONFIG, find_credentials
from .registry.mirrors import load_config
from .settings import settings
from .vllm_api import SUPPORTED_RANGE, in_supported_range, installed_version

MIN_FREE_BYTES = 1 << 30  # less than this cannot hold a model worth serving
PLUGIN_GROUP = "vllm.general_plugins"
PLUGIN_NAME = "oci_crane"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None
    required: bool = False
    facts: Mapping[str, object] = field(default_factory=dict)  # more keys for --json (the vllm check's version)

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "ok": self.ok, "required": self.required, "detail": self.detail,
                "fix": None if self.ok else self.fix, **self.facts}

    def line(self) -> str:
        text = f"{'OK' if self.ok else 'FAIL':<4}  {self.name}: {self.detail}"
        return text if self.ok or not self.fix else f"{text} -- fix: {self.fix}"


@dataclass(frozen=True)
class DoctorReport:
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks if check.required)

    def error(self) -> errors.OciCraneError:
        failed = ", ".join(check.name for check in self.checks if check.required and not check.ok)
        return errors.OciCraneError(f"required checks failed: {failed}", "see the FAIL lines above")

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "checks": [check.to_json() for check in self.checks]}

    def text(self) -> str:
        return "\n".join(check.line() for check in self.checks)


def check_crane() -> Check:
    """The crane in use: path, version, the platform it was built for, how it was found and what was passed over."""
    try:
        chosen = choose_crane()
    except errors.CraneMissingError as exc:
        return Check("crane", False, exc.cause, exc.fix, required=True)
    minimum = ".".join(map(str, MINIMUM_VERSION))
    host = host_platform()
    if chosen.platform is None:
        built = "a script or unknown executable format"
    elif chosen.platform == host:
        built = chosen.platform
    else:
        built = f"{chosen.platform}, running under emulation on this {host} host"
    why = SOURCE_NAMES[chosen.source] + "".join(f"; {line}" for line in chosen.skipped)
    return Check("crane", True, f"{chosen.path} (version {chosen.version}, built for {built}; found via {why}; "
                                f"need >= {minimum})", required=True)


def check_cache(cache_dir: str | None) -> Check:
    try:
        store = Store(cache_dir)
        remove_tree(store.scratch_dir("doctor."))  # a write probe
        free = shutil.disk_usage(store.root).free
    except (errors.OciCraneError, OSError) as exc:
        cause = exc.cause if isinstance(exc, errors.OciCraneError) else f"{exc.strerror or exc}"
        return Check("cache", False, f"not writable: {cause}", errors.CacheError.default_fix, required=True)
    if free < MIN_FREE_BYTES:
        return Check("cache", False, f"{store.root}: only {human(free)} free (need {human(MIN_FREE_BYTES)})",
                     "free disk space, or point --cache-dir / OCI_CRANE_LOADER_CACHE at a larger disk", required=True)
    return Check("cache", True, f"{store.root} writable, {human(free)} free", required=True)


CREDENTIALS = "credentials"


def check_credentials(authfile: str | None = None) -> list[Check]:
    """The credentials file crane reads and where that choice comes from (keychain.py: crane's order, and what we
    add), the files passed over; then one check per credential helper it names (credsStore, credHelpers)."""
    source = find_credentials(authfile)
    passed_over = "".join(f"; {line}" for line in source.ignored)
    path = source.path
    if path is None:
        return [Check(CREDENTIALS, True, "no credentials file (looked for $DOCKER_CONFIG/config.json, "
                                         f"{HOME_DOCKER_CONFIG}, $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/"
                                         "auth.json, ~/.config/containers/auth.json): anonymous pulls only "
                                         "(oci-crane login, docker login or podman login create one)")]
    if not path.is_file():
        return [Check(CREDENTIALS, False, f"{source.describe()}{passed_over}",
                      f"create it (oci-crane login), or unset {source.origin}")]
    fix = "fix the JSON or move the file away; crane cannot authenticate until then"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # JSONDecodeError's message holds a position, never the content
        return [Check(CREDENTIALS, False, f"{path} cannot be read: {exc}", fix)]
    if not isinstance(data, dict):
        return [Check(CREDENTIALS, False, f"{path} cannot be read: not a JSON object", fix)]
    auths = data.get("auths")
    registries = len(auths) if isinstance(auths, dict) else 0
    helpers: dict[str, list[str]] = {}  # helper name -> where it is used
    store = data.get("credsStore")
    if isinstance(store, str) and store:
        helpers.setdefault(store, []).append("credsStore")
    per_registry = data.get("credHelpers")
    if isinstance(per_registry, dict):
        for registry, helper in sorted(per_registry.items()):
            if isinstance(helper, str) and helper:
                shown = f"***@{registry.rpartition('@')[2]}" if "@" in registry else registry  # user:pass@host
                helpers.setdefault(helper, []).append(f"credHelpers[{shown}]")
    handed = "; handed to crane as DOCKER_CONFIG, crane does not look there itself" if source.redirect else ""
    checks = [Check(CREDENTIALS, True, f"{source.describe()}: {registries} registr{'y' if registries == 1 else 'ies'}"
                                       f" in auths, {len(helpers)} credential helper(s){handed}{passed_over}")]
    for helper, uses in helpers.items():
        binary = f"docker-credential-{helper}"
        found = shutil.which(binary)
        where = ", ".join(uses)
        if found:
            checks.append(Check(f"credential helper {helper}", True, f"{found} (used by {where})"))
        else:
            checks.append(Check(f"credential helper {helper}", False, f"{binary} is not on PATH (used by {where}); "
                                "crane fails for every registry it applies to",
                                f"install {binary}, or remove it from {path}"))
    return checks


def check_vllm() -> Check:
    """The installed vLLM's version (its distribution's metadata) against the supported range, then whether it
    imports. Outside the range is advice: the plugin still tries (vllm_api.warn_if_unsupported)."""
    supported = f"vllm{SUPPORTED_RANGE}"
    version = installed_version()
    facts: dict[str, object] = {"version": version, "supported": SUPPORTED_RANGE,
                                "in_range": None if version is None else in_supported_range(version)}
    if version is None and importlib.util.find_spec("vllm") is None:
        return Check("vllm", True, f"not installed (optional; the plugin supports {supported})", facts=facts)
    failure = _import_failure()
    if failure is not None:
        return Check("vllm", False, f"{'version ' + version + ' ' if version else ''}installed but {failure}",
                     "reinstall vLLM (pip install 'oci-crane-loader[vllm]')", facts=facts)
    if version is None:  # importable without a distribution (a source checkout on sys.path): no version to compare
        return Check("vllm", True, f"installed without package metadata: its version is unknown (the plugin "
                                   f"supports {supported})", facts=facts)
    if not in_supported_range(version):
        return Check("vllm", False, f"version {version}, outside the supported range {supported} (the plugin tries "
                                    "anyway, and stops with one error if vLLM lacks what it needs)",
                     f"install a vLLM in the supported range: pip install '{supported}'", facts=facts)
    return Check("vllm", True, f"version {version}, in the supported range {supported}", facts=facts)


def _import_failure() -> str | None:
    """Why `import vllm` fails, or None. In a separate interpreter: importing vLLM is slow and logs to stdout,
    which would spoil --json."""
    try:
        proc = subprocess.run([sys.executable, "-c", "import vllm"], capture_output=True, text=True, timeout=300,
                              check=False)
    except subprocess.TimeoutExpired:
        return "`import vllm` did not finish within 300 s"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return f"`import vllm` fails: {last}"
    return None


def check_plugin() -> Check:
    found = [ep for ep in importlib.metadata.entry_points(group=PLUGIN_GROUP) if ep.name == PLUGIN_NAME]
    if not found:
        return Check("vllm plugin", False, f"entry point {PLUGIN_NAME} in group {PLUGIN_GROUP} is not registered",
                     "install the package (pip install oci-crane-loader, or pip install -e . in a checkout)")
    return Check("vllm plugin", True, f"entry point {PLUGIN_NAME} = {found[0].value} ({PLUGIN_GROUP})")


def check_mirrors(reference: str | None = None, *, environ: Mapping[str, str] | None = None,
                  root: Path = Path("/")) -> Check:
    """The mirrors in force (registries.conf and containerd's hosts.toml, registry/mirrors.py) and the files they
    come from; with a reference, the endpoints in the order they are tried. Advice: a fetch without mirrors works."""
    import os

    from .reference import parse_reference

    parsed = parse_reference(reference) if reference else None  # a bad reference is the usual one-line error
    try:
        # The variables' values as a fetch sees them (settings.py), or those given (tests).
        config = load_config(environ=os.environ if environ is None else environ, root=root,
                             hosts_dirs=settings().hosts_dirs if environ is None else None)
        if parsed is None:
            return Check("mirrors", True, "\n      ".join(config.summary()),
                         facts={"files": [str(path) for path in config.registries_files],
                                "hosts_dirs": [str(path) for path in config.hosts_roots]})
        plan = config.plan(parsed)
    except (errors.MirrorConfigError, errors.RegistryBlockedError) as exc:
        return Check("mirrors", False, exc.cause, exc.fix)
    return Check("mirrors", True, "\n      ".join(plan.describe()), facts={"plan": plan.to_json()})


def run_doctor(cache_dir: str | None = None, authfile: str | None = None, reference: str | None = None) -> DoctorReport:
    return DoctorReport((check_crane(), check_cache(cache_dir), *check_credentials(authfile), check_mirrors(reference),
                         check_vllm(), check_plugin()))
