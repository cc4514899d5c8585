"""Mirrors and pull-through caches the node already configures, read the way the container runtimes read them.

Two formats, both read only (we invent none, DESIGN.md "Mirrors"):

* containers-registries.conf(5) v2 (podman, CRI-O, skopeo, buildah), as containers/image's
  ``pkg/sysregistriesv2`` reads it: the main file is ``$CONTAINERS_REGISTRIES_CONF`` (else
  ``$REGISTRIES_CONFIG_PATH``), else ``~/.config/containers/registries.conf`` when it exists, else
  ``/etc/containers/registries.conf``; then the ``*.conf`` drop-ins of ``/etc/containers/registries.conf.d`` and
  ``~/.config/containers/registries.conf.d`` in name order (only the user's directory when the user's main file was
  chosen). A drop-in's ``[[registry]]`` replaces the whole entry of the same ``prefix``. The entry with the longest
  matching prefix (``*.example.com`` matches subdomains) applies; ``location`` rewrites the repository path.
* containerd's hosts directory (``config_path``; Spegel and Dragonfly write their mirror there):
  ``<root>/<host>/hosts.toml``, ``host:port`` also as ``host_port_``, else ``<root>/_default/hosts.toml``; roots
  from ``OCI_CRANE_HOSTS_DIR`` (``:``-separated, like containerd's ``config_path``), default
  ``/etc/containerd/certs.d``. ``[host."URL"]`` tables in file order, then ``server`` (or the registry itself).

The plan for a reference: node-local containerd mirrors first (P2P agents on this node), then registries.conf
mirrors, then the upstream. A mirror is untrusted: the caller resolves a tag only where ``can_resolve_tags`` and
checks every byte against its digest. Standard library only (tomllib, or tomli before Python 3.11).
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from ..errors import InvalidReferenceError, MirrorConfigError, RegistryBlockedError
from ..reference import DEFAULT_REGISTRY, Reference, parse_reference
from ..settings import parse_hosts_dirs
from .mirror_files import locate

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["Endpoint", "MirrorConfig", "SourcePlan", "load_config", "plan_sources"]

HOSTS_DIR_VARIABLE = "OCI_CRANE_HOSTS_DIR"  # parsed by settings.py (parse_hosts_dirs)
PULL_FROM_MIRROR = ("all", "digest-only", "tag-only")
CAPABILITIES = ("pull", "resolve", "push", "referrers")
_DOCKER_HUB = "docker.io"  # the name containers/image and containerd give Docker Hub (ggcr's is index.docker.io)
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Endpoint:
    """One place to ask for the reference: a mirror, or the upstream (``is_upstream``).

    A request goes to ``api_url + "/" + repository + "/manifests/" + tag_or_digest`` (or ``/blobs/<digest>``),
    with ``?ns=<ns>`` when ``ns`` is set (``manifest_url``/``blob_url`` build them) and ``headers``. crane can talk
    to it as ``crane_reference(...)`` only when ``crane_usable`` (API root at ``/v2``, no ``ns``, no headers)."""

    scheme: str  # "https" or "http"
    host: str  # "mirror.example.com:5000": the registry part crane gets
    api_path: str  # "/v2"; containerd's override_path can move the API root ("/v2" then stays the usual case)
    repository: str  # the repository at this endpoint: location rewriting and path prefixes applied
    can_resolve_tags: bool  # may answer tag -> digest (containerd "resolve"; not a digest-only mirror)
    can_pull: bool  # may serve manifests by digest and blobs (containerd "pull")
    insecure: bool  # skip TLS verification; registries.conf insecure also allows http (https first, as crane does)
    is_upstream: bool
    source: Path | None  # the file that put it here; None: no file names this registry
    ca_files: tuple[Path, ...] = ()
    ns: str | None = None  # containerd's ?ns=<registry> on every request to a host that is not the registry itself
    headers: tuple[tuple[str, str], ...] = ()  # may hold a secret (Spegel's basic auth): never shown
    dial_timeout: float | None = None  # seconds; Spegel writes 200ms so a dead node-local mirror costs little
    notes: tuple[str, ...] = ()  # what we cannot honour, or what a platform engineer should know

    @property
    def api_url(self) -> str:
        return f"{self.scheme}://{self.host}{self.api_path}"

    @property
    def url_base(self) -> str:
        """scheme://host[:port][/path prefix]: where the repository path starts (the API root plus the repository
        prefix a path-prefixed mirror such as Harbor's proxy project adds)."""
        return f"{self.api_url}/{self.repository}"

    @property
    def crane_usable(self) -> bool:
        return self.api_path == "/v2" and self.ns is None and not self.headers

    def crane_reference(self, tag_or_digest: str) -> str:
        separator = "@" if tag_or_digest.startswith("sha256:") else ":"
        return f"{self.host}/{self.repository}{separator}{tag_or_digest}"

    def manifest_url(self, tag_or_digest: str) -> str:
        return self._url(f"manifests/{tag_or_digest}")

    def blob_url(self, digest: str) -> str:
        return self._url(f"blobs/{digest}")

    def _url(self, tail: str) -> str:
        query = f"?ns={quote(self.ns, safe='')}" if self.ns else ""
        return f"{self.url_base}/{tail}{query}"

    def describe(self) -> str:
        role = "upstream" if self.is_upstream else "mirror"
        can = [word for word, ok in (("resolve tags", self.can_resolve_tags), ("pull", self.can_pull)) if ok]
        extra = [f"ns={self.ns}"] if self.ns else []
        extra += ["insecure"] if self.insecure else []
        extra += [f"ca {', '.join(map(str, self.ca_files))}"] if self.ca_files else []
        extra += [f"headers {', '.join(name for name, _ in self.headers)}"] if self.headers else []
        extra += [] if self.crane_usable else ["HTTP client only: crane cannot send ns, headers or a moved API root"]
        where = f"from {self.source}" if self.source else "no configuration names it"
        text = f"{role} {self.url_base}: {' and '.join(can) or 'nothing'}; {'; '.join([*extra, where])}"
        return text + "".join(f"; note: {note}" for note in self.notes)

    def to_json(self) -> dict[str, object]:
        return {"url": self.url_base, "host": self.host, "repository": self.repository, "upstream": self.is_upstream,
                "resolve_tags": self.can_resolve_tags, "pull": self.can_pull, "insecure": self.insecure,
                "ns": self.ns, "ca_files": [str(p) for p in self.ca_files],
                "header_names": [name for name, _ in self.headers], "crane_usable": self.crane_usable,
                "dial_timeout": self.dial_timeout, "source": str(self.source) if self.source else None,
                "notes": list(self.notes)}


@dataclass(frozen=True)
class SourcePlan:
    """Where to look for one reference, in order. ``resolvers()``: ask these for the tag (a digest reference needs
    none); ``pullers()``: fetch the manifest by digest and the blobs from these. ``blocked_by``: the file that
    blocks the upstream while mirrors still serve (pulls go through the mirrors only)."""

    reference: Reference
    endpoints: tuple[Endpoint, ...]
    files: tuple[Path, ...]  # every configuration file read for this plan
    blocked_by: Path | None = None

    @property
    def mirrors(self) -> tuple[Endpoint, ...]:
        return tuple(e for e in self.endpoints if not e.is_upstream)

    @property
    def upstream(self) -> Endpoint | None:
        return next((e for e in self.endpoints if e.is_upstream), None)

    def resolvers(self) -> tuple[Endpoint, ...]:
        return tuple(e for e in self.endpoints if e.can_resolve_tags)

    def pullers(self) -> tuple[Endpoint, ...]:
        return tuple(e for e in self.endpoints if e.can_pull)

    def describe(self) -> list[str]:
        lines = [f"{self.reference.name}: {len(self.mirrors)} mirror(s)"]
        lines += [f"  {endpoint.describe()}" for endpoint in self.endpoints]
        if self.blocked_by:
            lines.append(f"  upstream blocked by {self.blocked_by}: only the mirrors serve it")
        return lines

    def to_json(self) -> dict[str, object]:
        return {"reference": self.reference.name, "endpoints": [e.to_json() for e in self.endpoints],
                "blocked_by": str(self.blocked_by) if self.blocked_by else None, "files": [str(p) for p in self.files]}


# --- containers-registries.conf ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Mirror:
    location: str
    insecure: bool
    pull_from: str  # "all", "digest-only", "tag-only"


@dataclass(frozen=True)
class _Registry:
    prefix: str
    location: str
    insecure: bool
    blocked: bool
    mirrors: tuple[_Mirror, ...]
    source: Path


@dataclass(frozen=True)
class MirrorConfig:
    """The registries.conf entries in force (drop-ins merged) and the containerd roots to look in."""

    registries: tuple[_Registry, ...]
    registries_files: tuple[Path, ...]  # read, in order: the main file (when it exists), then the drop-ins
    hosts_roots: tuple[Path, ...]
    registries_sources: tuple[str, ...] = field(default=())  # where we looked, for doctor

    def find(self, name: str) -> _Registry | None:
        """containers/image FindRegistry: the entry whose prefix matches ``name`` (host/repository), longest
        prefix first, the first of equal length (entries are sorted by prefix)."""
        best, length = None, 0
        for entry in self.registries:
            if _matching_prefix(name, entry.prefix) != -1 and len(entry.prefix) > length:
                best, length = entry, len(entry.prefix)
        return best

    def plan(self, reference: Reference) -> SourcePlan:
        files: list[Path] = list(self.registries_files)
        logical = _containers_name(reference)
        entry = self.find(logical)
        by_digest = reference.digest is not None
        tag_or_digest = reference.digest or reference.tag or ""

        hosts, hosts_file = _containerd_hosts(reference, self.hosts_roots)
        if hosts_file is not None:
            files.append(hosts_file)
        endpoints = [h for h in hosts if not h.is_upstream]
        if entry is not None:
            endpoints += _conf_endpoints(entry, reference, logical, tag_or_digest, by_digest)
        else:
            endpoints += [h for h in hosts if h.is_upstream] or [_default_upstream(reference)]

        kept, blocked_by = [], None
        for endpoint in endpoints:  # containers/image checks `blocked` on each endpoint's own name, mirrors too
            blocker = self._blocked(endpoint)
            if blocker is None:
                kept.append(endpoint)
            elif blocked_by is None or endpoint.is_upstream:
                blocked_by = blocker.source
        if not any(e.can_pull for e in kept):
            if blocked_by is not None:
                raise RegistryBlockedError(
                    f"{reference.repository_name} is blocked (blocked = true) in {blocked_by}, and no mirror that "
                    "is not blocked serves it",
                    f"pull it from a registry {blocked_by} allows, or ask whoever manages {blocked_by} to unblock it")
            raise MirrorConfigError(
                f"no endpoint in {hosts_file} may serve {reference.name} (none has the pull capability)",
                f'give a [host."URL"] in {hosts_file} capabilities = ["pull", "resolve"], or remove the file')
        upstream_blocked = None if any(e.is_upstream for e in kept) else blocked_by
        return SourcePlan(reference, tuple(kept), tuple(files), upstream_blocked)

    def _blocked(self, endpoint: Endpoint) -> _Registry | None:
        host = _DOCKER_HUB if endpoint.host == DEFAULT_REGISTRY else endpoint.host
        found = self.find(f"{host}/{endpoint.repository}")
        return found if found is not None and found.blocked else None

    def summary(self) -> list[str]:
        """For doctor without a reference: the files in force and the prefixes that have mirrors."""
        lines = [f"registries.conf: looked at {', '.join(self.registries_sources)}"]
        if self.registries_files:
            lines.append(f"  read {', '.join(map(str, self.registries_files))}")
        for entry in self.registries:
            what = [f"{len(entry.mirrors)} mirror(s)"] if entry.mirrors else []
            what += ["blocked"] if entry.blocked else []
            what += [f"location {entry.location}"] if entry.location and entry.location != entry.prefix else []
            if what:
                lines.append(f"  {entry.prefix}: {', '.join(what)} ({entry.source})")
        lines.append(f"containerd hosts: {', '.join(map(str, self.hosts_roots))} ({HOSTS_DIR_VARIABLE})")
        for root in self.hosts_roots:
            if root.is_dir():
                found = sorted(p.parent.name for p in root.glob("*/hosts.toml"))
                if found:
                    lines.append(f"  {root}: hosts.toml for {', '.join(found)}")
        return lines


def load_config(*, environ: Mapping[str, str] = os.environ, root: Path = Path("/"),
                hosts_dirs: Sequence[Path] | None = None) -> MirrorConfig:
    """Read registries.conf and its drop-ins as containers/image does; ``root`` stands for ``/`` (tests).
    ``hosts_dirs``: containerd's roots as settings.py parses OCI_CRANE_HOSTS_DIR (the fetch passes its
    RegistryAccess's); None parses the variable from ``environ`` the same way (doctor, tests)."""
    if hosts_dirs is None:
        hosts_dirs = parse_hosts_dirs(environ.get(HOSTS_DIR_VARIABLE, ""))
    where = locate(environ, root, hosts_dirs)
    main, must_exist, dirs = where.main, where.main_must_exist, where.drop_in_dirs

    merged: dict[str, _Registry] = {}
    files: list[Path] = []
    if main.exists() or must_exist:
        for entry in _read_registries_conf(main, drop_in=False):
            merged[entry.prefix] = entry
        files.append(main)
    for directory in dirs:
        try:
            names = sorted(p for p in directory.iterdir() if p.name.endswith(".conf") and not p.is_dir())
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise MirrorConfigError(f"cannot list {directory}: {exc.strerror or exc}",
                                    f"make {directory} readable, or remove it") from None
        for path in names:
            for entry in _read_registries_conf(path, drop_in=True):  # a drop-in replaces the entry of its prefix
                merged[entry.prefix] = entry
            files.append(path)
    sources = (str(main) if main.exists() or must_exist else f"{main} (none)", *map(str, dirs))
    return MirrorConfig(tuple(merged[p] for p in sorted(merged)), tuple(files), where.hosts_roots, sources)


def plan_sources(reference: Reference | str, *, environ: Mapping[str, str] = os.environ,
                 root: Path = Path("/"), hosts_dirs: Sequence[Path] | None = None) -> SourcePlan:
    """The ordered endpoints for ``reference``: mirrors, then the upstream (unless blocked). Raises
    MirrorConfigError for a file that cannot be used, RegistryBlockedError when nothing may serve it."""
    parsed = parse_reference(reference) if isinstance(reference, str) else reference
    return load_config(environ=environ, root=root, hosts_dirs=hosts_dirs).plan(parsed)


def _bad(path: Path, problem: str, fix: str | None = None) -> MirrorConfigError:
    return MirrorConfigError(f"{path}: {problem}",
                             fix or f"fix {path} (containers-registries.conf(5)), or move it away")


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise _bad(path, "does not exist", f"create {path}, or unset the variable that names it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _bad(path, f"cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _bad(path, f"is not valid TOML ({exc})") from None


def _read_registries_conf(path: Path, *, drop_in: bool) -> list[_Registry]:
    data = _load_toml(path)
    v1 = data.get("registries")
    v2 = data.get("registry")
    if v1 is not None:
        if drop_in:
            raise _bad(path, "a drop-in must use the v2 format ([[registry]]), not v1 [registries.*]")
        if v2 is not None:
            raise _bad(path, "mixes the v1 format ([registries.*]) with v2 ([[registry]])",
                       f"rewrite {path} in the v2 format only ([[registry]] tables)")
        return _from_v1(path, v1)
    if v2 is None:
        return []
    if not isinstance(v2, list) or not all(isinstance(t, dict) for t in v2):
        raise _bad(path, "registry must be an array of tables ([[registry]])")
    entries: list[_Registry] = []
    for table in v2:
        entries.append(_registry_from(path, table))
    _check_conflicts(path, entries)
    unique: dict[str, _Registry] = {}
    for entry in entries:  # the first of a repeated prefix wins, as containers/image keeps it
        unique.setdefault(entry.prefix, entry)
    return list(unique.values())


def _from_v1(path: Path, v1: object) -> list[_Registry]:
    if not isinstance(v1, dict):
        raise _bad(path, "[registries] must be a table")
    found: dict[str, dict[str, bool]] = {}
    for kind in ("block", "insecure"):
        listed = v1.get(kind, {}).get("registries", []) if isinstance(v1.get(kind, {}), dict) else None
        if not isinstance(listed, list) or not all(isinstance(x, str) for x in listed):
            raise _bad(path, f"registries.{kind}.registries must be an array of strings")
        for location in listed:
            found.setdefault(_location(path, location), {})[kind] = True
    return [_Registry(loc, loc, flags.get("insecure", False), flags.get("block", False), (), path)
            for loc, flags in found.items()]


def _typed(path: Path, table: dict[str, Any], key: str, kind: type, default: Any, where: str) -> Any:
    value = table.get(key, default)
    if not isinstance(value, kind):
        raise _bad(path, f"{where}: {key} must be a {'boolean' if kind is bool else 'string'}, not {value!r}")
    return value


def _location(path: Path, text: str) -> str:
    trimmed = text.rstrip("/")
    if trimmed.startswith(("http://", "https://")):
        raise _bad(path, f"invalid location {text!r}: URI schemes are not supported",
                   f"write it as host[:port][/namespace] in {path}; set insecure = true for a plain-http registry")
    return trimmed


def _registry_from(path: Path, table: dict[str, Any]) -> _Registry:
    where = f"[[registry]] {table.get('prefix') or table.get('location') or '(no prefix)'}"
    location = _location(path, _typed(path, table, "location", str, "", where))
    prefix = _typed(path, table, "prefix", str, "", where)
    if prefix:
        prefix = _location(path, prefix)
        if not prefix.startswith("*.") and not location:
            raise _bad(path, f"{where}: location is unset and prefix is not of the form *.example.com")
        if prefix.startswith("*.") and any(c in prefix for c in "/@:"):
            raise _bad(path, f"{where}: a wildcard prefix must be of the form *.example.com (no port or path)")
    elif not location:
        raise _bad(path, "a [[registry]] sets neither location nor prefix")
    else:
        prefix = location
    if "pull-from-mirror" in table:
        raise _bad(path, f"{where}: pull-from-mirror belongs in a [[registry.mirror]], not the registry")
    by_digest = _typed(path, table, "mirror-by-digest-only", bool, False, where)
    mirrors = table.get("mirror", [])
    if not isinstance(mirrors, list) or not all(isinstance(m, dict) for m in mirrors):
        raise _bad(path, f"{where}: mirror must be an array of tables ([[registry.mirror]])")
    parsed: list[_Mirror] = []
    for mirror in mirrors:
        mirror_location = _location(path, _typed(path, mirror, "location", str, "", where))
        if not mirror_location:
            raise _bad(path, f"{where}: a [[registry.mirror]] has no location")
        pull_from = _typed(path, mirror, "pull-from-mirror", str, "", where)
        if pull_from and by_digest:
            raise _bad(path, f"{where}: mirror-by-digest-only and pull-from-mirror ({mirror_location}) are both set",
                       f"keep one of them in {path}")
        if pull_from and pull_from not in PULL_FROM_MIRROR:
            raise _bad(path, f"{where}: unsupported pull-from-mirror {pull_from!r} for mirror {mirror_location}",
                       f"use one of {', '.join(PULL_FROM_MIRROR)} in {path}")
        insecure = _typed(path, mirror, "insecure", bool, False, where)
        parsed.append(_Mirror(mirror_location, insecure, "digest-only" if by_digest else pull_from or "all"))
    return _Registry(prefix, location, _typed(path, table, "insecure", bool, False, where),
                     _typed(path, table, "blocked", bool, False, where), tuple(parsed), path)


def _check_conflicts(path: Path, entries: list[_Registry]) -> None:
    """One file may name a registry twice (two prefixes, different mirrors), but not with other security settings."""
    seen: dict[str, _Registry] = {}
    for entry in entries:
        key = entry.location or entry.prefix
        other = seen.setdefault(key, entry)
        for setting in ("insecure", "blocked"):
            if getattr(other, setting) != getattr(entry, setting):
                raise _bad(path, f"registry {key!r} is defined more than once with conflicting {setting!r}")


def _matching_prefix(name: str, prefix: str) -> int:
    """containers/image refMatchingPrefix: how much of ``name`` the prefix covers, or -1."""
    if prefix.startswith("*."):
        index = name.find(prefix[1:])
        if index == -1 or "/" in name[:index]:
            return -1
        index += len(prefix) - 1
        return index if index == len(name) or name[index] in ":/@" else -1
    if name == prefix:
        return len(prefix)
    if len(name) > len(prefix) and name.startswith(prefix) and name[len(prefix)] in ":/@":
        return len(prefix)
    return -1


def _containers_name(reference: Reference) -> str:
    registry = _DOCKER_HUB if reference.registry == DEFAULT_REGISTRY else reference.registry
    return f"{registry}/{reference.repository}"


def _rewrite(path: Path, location: str, prefix: str, name: str, tag_or_digest: str) -> tuple[str, str]:
    """``location`` + what follows the prefix in ``name``: (host for crane, repository)."""
    # a wildcard prefix without a location keeps the name as it is
    rewritten = location + name[_matching_prefix(name, prefix):] if location else name
    separator = "@" if tag_or_digest.startswith("sha256:") else ":"
    try:
        parsed = parse_reference(f"{rewritten}{separator}{tag_or_digest}")
    except InvalidReferenceError as exc:
        raise _bad(path, f"location {location!r} rewrites {name} to {rewritten!r}, which is no valid name "
                         f"({exc.cause})") from None
    return parsed.registry, parsed.repository


def _conf_endpoints(entry: _Registry, reference: Reference, name: str, tag_or_digest: str,
                    by_digest: bool) -> list[Endpoint]:
    endpoints = []
    for mirror in entry.mirrors:
        if mirror.pull_from == "tag-only" and by_digest:
            continue  # containers/image: a tag-only mirror is not used for a digest reference
        host, repository = _rewrite(entry.source, mirror.location, entry.prefix, name, tag_or_digest)
        # digest-only: never asked for a tag; once the tag is pinned elsewhere, a digest pull may use it.
        endpoints.append(Endpoint(_crane_scheme(host), host, "/v2", repository, mirror.pull_from != "digest-only",
                                  True, mirror.insecure, False, entry.source))
    host, repository = _rewrite(entry.source, entry.location, entry.prefix, name, tag_or_digest)
    endpoints.append(Endpoint(_crane_scheme(host), host, "/v2", repository, True, True, entry.insecure, True,
                              entry.source))
    return endpoints


def _default_upstream(reference: Reference) -> Endpoint:
    host = reference.registry
    return Endpoint(_crane_scheme(host), host, "/v2", reference.repository, True, True, False, True, None)


def _crane_scheme(host: str) -> str:
    """go-containerregistry's Registry.Scheme(): http for localhost:PORT, loopback and RFC 1918 addresses, so that
    the HTTP client and crane agree (an insecure endpoint also falls back to http, as crane --insecure does)."""
    if host.startswith("localhost:") or _is_loopback(host):
        return "http"
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    try:
        return "http" if ipaddress.ip_address(name).is_private else "https"
    except ValueError:
        return "https"


# --- containerd hosts directory -------------------------------------------------------------------------------

def _containerd_host(reference: Reference) -> str:
    return _DOCKER_HUB if reference.registry == DEFAULT_REGISTRY else reference.registry


def _host_dirs(root: Path, host: str) -> list[Path]:
    """containerd hostPaths: ``host_port_`` (when a port is given), ``host``, ``_default``."""
    colon = host.rfind(":")
    dirs = [root / f"{host[:colon]}_{host[colon + 1:]}_"] if colon > 0 else []
    return [*dirs, root / host, root / "_default"]


def _containerd_hosts(reference: Reference, roots: tuple[Path, ...]) -> tuple[list[Endpoint], Path | None]:
    host = _containerd_host(reference)
    for root in roots:
        for directory in _host_dirs(root, host):
            if directory.is_dir():
                return _read_host_dir(directory, reference, host)
    return [], None


def _read_host_dir(directory: Path, reference: Reference, host: str) -> tuple[list[Endpoint], Path | None]:
    path = directory / "hosts.toml"
    if not path.is_file() or path.stat().st_size == 0:
        # Docker's certs.d layout: CA files only, for the registry itself.
        cas = tuple(sorted(p for p in directory.glob("*.crt") if p.is_file()))
        notes = ("client certificates (*.cert/*.key) are not supported: requests go without them",) \
            if any(directory.glob("*.cert")) else ()
        if not cas and not notes:
            return [], None
        return [replace(_default_upstream(reference), ca_files=cas, source=directory, notes=notes)], None
    data = _load_toml(path)
    tables = data.get("host", {})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise _hosts_bad(path, 'host must hold tables, [host."https://mirror.example.com"]')
    endpoints = [_host_endpoint(path, url, table, reference, host, upstream=False) for url, table in tables.items()]
    server = data.get("server", "")
    if not isinstance(server, str):
        raise _hosts_bad(path, f"server must be a string URL, not {server!r}")
    endpoints.append(_host_endpoint(path, server, data, reference, host, upstream=True))
    return endpoints, path


def _hosts_bad(path: Path, problem: str) -> MirrorConfigError:
    return MirrorConfigError(f"{path}: {problem}",
                             f"fix {path} (containerd's hosts.toml format, docs/mirrors.md), or move it away")


def _host_endpoint(path: Path, url: str, table: dict[str, Any], reference: Reference, registry: str, *,
                   upstream: bool) -> Endpoint:
    where = f'[host."{url}"]' if not upstream else "server"
    capabilities = table.get("capabilities", list(CAPABILITIES))
    if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
        raise _hosts_bad(path, f"{where}: capabilities must be an array of strings")
    unknown = [c for c in capabilities if c.lower() not in CAPABILITIES]
    if unknown:
        raise _hosts_bad(path, f"{where}: unknown capability {unknown[0]!r} (known: {', '.join(CAPABILITIES)})")
    capabilities = [c.lower() for c in capabilities] or list(CAPABILITIES)
    skip_verify = table.get("skip_verify", False)
    override = table.get("override_path", False)
    if not isinstance(skip_verify, bool) or not isinstance(override, bool):
        raise _hosts_bad(path, f"{where}: skip_verify and override_path must be true or false")
    notes: list[str] = []
    if url:
        scheme, netloc, api_path = _split_host_url(path, url, override)
    elif registry == _DOCKER_HUB:
        scheme, netloc, api_path = "https", DEFAULT_REGISTRY, "/v2"  # containerd: registry-1.docker.io, same service
    else:
        scheme, netloc, api_path = _default_scheme(registry), registry, "/v2"
    repository = reference.repository
    if api_path.startswith("/v2/"):  # Harbor's proxy project, override_path: a repository prefix under /v2
        repository = f"{api_path[4:].strip('/')}/{repository}"
        api_path = "/v2"
    if _is_loopback(netloc):
        notes.append("a loopback address: from a pod it is the pod itself unless the pod uses hostNetwork")
    if "client" in table:
        notes.append("client certificates are not supported: requests go without them")
    same = netloc == registry or (registry == _DOCKER_HUB and netloc in ("registry-1.docker.io", DEFAULT_REGISTRY))
    return Endpoint(scheme, netloc, api_path, repository, "resolve" in capabilities, "pull" in capabilities,
                    skip_verify, upstream, path, _ca_files(path, table, where), None if same else registry,
                    _headers(path, table, where), _dial_timeout(path, table, where), tuple(notes))


def _split_host_url(path: Path, url: str, override: bool) -> tuple[str, str, str]:
    """containerd parseHostConfig: https:// unless given; the path cleaned and /v2 appended unless override_path."""
    full = url if "://" in url else f"https://{url}"
    parts = urlsplit(full)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or "@" in parts.netloc:
        raise _hosts_bad(path, f"{url!r} is not a registry URL (scheme://host[:port][/path])")
    clean = os.path.normpath(parts.path) if parts.path else ""
    clean = "" if clean in (".", "/") else clean
    if not override and not clean.endswith("/v2"):
        clean = f"{clean}/v2"
    return parts.scheme, parts.netloc, clean or "/v2"


def _default_scheme(host: str) -> str:
    """containerd: a loopback registry on a port other than 443 is asked over http, everything else https."""
    name, _, port = host.rpartition(":") if host.count(":") == 1 else (host, "", "")
    return "http" if _is_loopback(host) and port not in ("", "443") and name else "https"


def _is_loopback(netloc: str) -> bool:
    name = netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc
    name = name.strip("[]").split("]:")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _ca_files(path: Path, table: dict[str, Any], where: str) -> tuple[Path, ...]:
    ca = table.get("ca")
    if ca is None:
        return ()
    listed = [ca] if isinstance(ca, str) else ca
    if not isinstance(listed, list) or not all(isinstance(c, str) for c in listed):
        raise _hosts_bad(path, f"{where}: ca must be a path or an array of paths")
    return tuple(Path(c) if Path(c).is_absolute() else path.parent / c for c in listed)


def _headers(path: Path, table: dict[str, Any], where: str) -> tuple[tuple[str, str], ...]:
    header = table.get("header")
    if header is None:
        return ()
    if not isinstance(header, dict):
        raise _hosts_bad(path, f"{where}: header must be a table")
    pairs: list[tuple[str, str]] = []
    for name, value in header.items():
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise _hosts_bad(path, f"{where}: header {name} must be a string or an array of strings")
        pairs += [(name, v) for v in values]
    return tuple(pairs)


def _dial_timeout(path: Path, table: dict[str, Any], where: str) -> float | None:
    text = table.get("dial_timeout")
    if text is None:
        return None
    if not isinstance(text, str) or not text or _DURATION.sub("", text) != "":
        raise _hosts_bad(path, f"{where}: dial_timeout {text!r} is not a Go duration such as '200ms' or '1s'")
    return sum(float(number) * _UNITS[unit] for number, unit in _DURATION.findall(text))
