"""OCI image references, parsed and normalised the way crane does it.

The rules follow go-containerregistry's ``pkg/name`` (v0.21.9, the version crane is pinned to), so a reference we
accept means the same image to crane: ``ubuntu`` is ``index.docker.io/library/ubuntu:latest``. We are stricter in a
few places, each a name no registry serves and some a path escape in the cache (which uses registry, repository and
tag as directory names): empty, ``.`` or ``..`` repository components, a ``.``/``..`` registry, tags that do not start
with ``[A-Za-z0-9_]`` (the OCI distribution rule), whitespace, and URL schemes other than our own ``oci://``. A
registry or repository component may not start with ``-`` either: no host or registry path does, and crane would
read ``-vvv.io/repo:tag`` or ``--user-agent=x.io/repo:tag`` as its own options (references are often untrusted
input: a web form, VLLM_MODEL).
"""

from __future__ import annotations

import ipaddress
import os
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import InvalidReferenceError

__all__ = ["DEFAULT_REGISTRY", "DEFAULT_TAG", "Reference", "is_loopback", "is_registry_host", "may_fall_back_to_http",
           "parse_reference"]

DEFAULT_REGISTRY = "index.docker.io"
DEFAULT_TAG = "latest"
_OCI_PREFIX = "oci://"

_REPO_CHARS = frozenset(string.ascii_lowercase + string.digits + "_-./")  # ggcr repositoryChars
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # ggcr tagChars, 1..128, plus OCI's first-char rule
_DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}")  # ggcr accepts only the canonical algorithm
# ASCII that Go's url.Parse keeps in a host unchanged; ggcr's checkRegistry is "url.Parse('//'+name).Host == name".
_HOST_CHARS = frozenset(string.ascii_letters + string.digits + "!\"$&'()*+,-.:;<=>[]_~")
_PORT_RE = re.compile(r"(:[0-9]*)?")  # Go's validOptionalPort: an empty port after the colon is allowed
_Fail = Callable[[str], InvalidReferenceError]  # builds the error naming the whole reference
# ggcr Registry.Scheme(): the names it reaches over http as well (after https), besides --insecure.
_LOCAL_RE = re.compile(r".*\.localhost(?::[0-9]{1,5})?")
_LOOPBACK_RE = re.compile(r"127\.0\.0\.1(?::[0-9]{1,5})?")
_IPV6_LOOPBACK_RE = re.compile(r"::1|\[::1\](?::[0-9]{1,5})?")
_RFC1918 = tuple(ipaddress.IPv4Network(block) for block in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))


def _strip_prefix(text: str) -> str:
    return text[len(_OCI_PREFIX) :] if text[: len(_OCI_PREFIX)].lower() == _OCI_PREFIX else text


@dataclass(frozen=True)
class Reference:
    """A parsed reference. ``tag`` is None only for a digest reference typed without a tag."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None
    original: str

    @property
    def repository_name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def name(self) -> str:
        # ggcr parses "repo:tag@digest" as a Digest, whose Name() drops the tag: the digest is what is pulled.
        if self.digest:
            return self.with_digest(self.digest)
        return f"{self.repository_name}:{self.tag}"

    def with_digest(self, digest: str) -> str:
        """``registry/repository@digest``: this repository pinned to ``digest`` (ggcr's Repository.Digest)."""
        return f"{self.repository_name}@{digest}"

    def __str__(self) -> str:
        return _strip_prefix(self.original)


def is_registry_host(text: str) -> bool:
    """Whether the first component of a name is its registry (ggcr NewRepository): ``localhost``, or a name with a
    ``.`` or a ``:`` (a domain, an address, a port). Anything else is a Docker Hub repository path."""
    return text == "localhost" or "." in text or ":" in text


def is_loopback(host: str) -> bool:
    """``host[:port]`` names this machine: ``localhost``, ``*.localhost`` or a loopback address (never proxied)."""
    name = urlsplit(f"//{host}").hostname or ""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def may_fall_back_to_http(host: str, insecure: bool) -> bool:
    """Whether crane tries plain http after https for registry ``host[:port]`` (ggcr Registry.Scheme() is "http"):
    with --insecure, for localhost:PORT, *.localhost, 127.0.0.1, ::1 and the private 10/8, 172.16/12, 192.168/16
    IPv4 addresses. Exactly these: 127.0.0.2 or a private IPv6 address gets https only, from crane as from us."""
    if insecure or host.startswith("localhost:"):
        return True
    if any(rule.fullmatch(host) for rule in (_LOCAL_RE, _LOOPBACK_RE, _IPV6_LOOPBACK_RE)):
        return True
    try:  # ggcr isRFC1918: the text before the first ':' as an IP address
        address = ipaddress.ip_address(host.split(":")[0])
    except ValueError:
        return False
    return any(address in block for block in _RFC1918)


def parse_reference(text: str) -> Reference:
    """Parse ``[oci://][registry[:port]/]repository[:tag][@sha256:<hex>]``; raise InvalidReferenceError if invalid."""

    def fail(problem: str) -> InvalidReferenceError:
        taken = misread(text) if isinstance(text, str) else None
        if taken is not None:
            return InvalidReferenceError(f"invalid reference {text!r}: {problem}; {taken[0]}", taken[1])
        return InvalidReferenceError(f"invalid reference {text!r}: {problem}")

    if not isinstance(text, str) or not text.strip():
        raise fail("it is empty")
    body = _strip_prefix(text)
    if not body:
        raise fail("nothing follows oci://")
    if any(c.isspace() for c in body):
        raise fail("it contains whitespace")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in body):
        raise fail("it contains a control character")
    if "://" in body:  # ggcr would read "https:" as a registry with an empty port
        scheme = body.partition("://")[0]
        raise fail(f"only the oci:// scheme is accepted, not {scheme}://" + (
            "; drop it" if scheme.lower() in ("http", "https") else ""))

    if "@" in body and "/" in body.partition("@")[2]:  # a digest holds no '/': this is user[:password]@host
        shown = body.rpartition("@")[2]
        raise InvalidReferenceError(
            f"invalid reference '***@{shown}': a reference cannot hold credentials (user:password@)",
            f"remove them, write {shown}, and log in with `crane auth login {shown.partition('/')[0]} -u USER "
            "--password-stdin` (or docker login)")

    # ggcr ParseReference: a Tag parse cannot succeed with an '@' in it, so '@' means a Digest reference.
    digest = None
    if "@" in body:
        body, _, digest = body.partition("@")
        if "@" in digest:
            raise fail("it contains more than one '@'")
        if not digest.startswith("sha256:"):
            raise fail(f"unsupported digest {digest!r}: only sha256 digests are accepted")
        if not _DIGEST_RE.fullmatch(digest):
            raise fail(f"digest {digest!r} must be sha256: followed by 64 lowercase hex characters")

    # ggcr NewTag: the tag follows the last ':' unless a '/' comes after it (then the ':' was a registry port).
    tag = None
    head, colon, last = body.rpartition(":")
    if colon and "/" not in last:
        body, tag = head, last
        if not tag:
            raise fail("a tag name must follow the ':'")
        if not _TAG_RE.fullmatch(tag):
            raise fail(f"tag {tag!r} must be 1 to 128 characters of A-Z a-z 0-9 _ . - and must not start with . or -")

    # ggcr NewRepository: the first component is a registry only if it looks like a host.
    registry, slash, repository = body.partition("/")
    if not (slash and is_registry_host(registry)):
        registry, repository = "", body
    if registry:
        _check_registry(registry, fail)
    registry = DEFAULT_REGISTRY if registry in ("", "docker.io") else registry
    typed = repository
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = f"library/{repository}"  # Docker Hub's official images
    _check_repository(typed, repository, fail)

    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(registry=registry, repository=repository, tag=tag, digest=digest, original=text)


def misread(text: str) -> tuple[str, str] | None:
    """What ``text`` is, when it is not a reference but a local path or a Hugging Face model id (``./models/tiny``,
    ``Qwen/Qwen2-0.5B``, ``hf://Qwen/Qwen2-0.5B``): what it looks like, and what to do instead; else None."""
    if text[:5].lower() == "hf://" or _HF_ID.fullmatch(text):
        model = text[5:] if text[:5].lower() == "hf://" else text
        return ("it looks like a Hugging Face model id, not a registry reference",
                f"vLLM serves a Hub model as it is (vllm serve {model}, without --load-format oci-crane); to serve "
                f"it from your registry, `hf download {model} --local-dir DIR`, then `oci-crane push DIR "
                "REGISTRY/REPOSITORY:TAG` (docs/from-hf.md)")
    if text.startswith(("./", "../", "/", "~", ".\\")) or text in (".", "..") or os.path.exists(text):
        return ("it is a local path, not a registry reference",
                f"push the directory first (oci-crane push {text} REGISTRY/REPOSITORY:TAG) and use that tag; vLLM "
                f"serves a directory as it is (vllm serve {text}, without --load-format oci-crane)")
    return None


def hub_hint(reference: Reference) -> str | None:
    """For ``org/name`` typed without a registry, which Docker Hub does not know: it may be a Hugging Face id
    written in lowercase (``qwen/qwen2-0.5b``), which is also a valid Docker Hub name. What to add to the fix."""
    typed = str(reference)
    if reference.registry != DEFAULT_REGISTRY or typed.count("/") != 1 or is_registry_host(typed.split("/")[0]):
        return None
    model = typed.split("@")[0].split(":")[0]
    return (f"if {model} is a Hugging Face model id, vLLM serves it as it is (vllm serve {model}, without "
            "--load-format oci-crane), or push it to your registry first (docs/from-hf.md)")


# org/Model-Name as the Hub writes it: no registry host, one slash, and uppercase (which no registry allows).
_HF_ID = re.compile(r"(?=[^/]*[A-Z]|[^/]*/[^/]*[A-Z])[A-Za-z0-9][\w.-]*/[\w.-]+")


def _check_repository(repository: str, full: str, fail: _Fail) -> None:
    if not repository:
        raise fail("the repository name is missing")
    # ggcr: at least 2 characters as typed; at most 255 once library/ is added (its digest path checks that).
    if len(repository) < 2 or len(full) > 255:
        raise fail(f"repository {full!r} must be 2 to 255 characters long")
    if repository.lower() != repository and set(repository.lower()) <= _REPO_CHARS:
        raise fail(f"repository {repository!r} must be lowercase")
    bad = sorted(set(repository) - _REPO_CHARS)
    if bad:
        raise fail(f"repository {repository!r} may only contain a-z 0-9 _ - . / (found {''.join(bad)!r})")
    if any(part in ("", ".", "..") for part in repository.split("/")):
        raise fail(f"repository {repository!r} has an empty, '.' or '..' path component")
    if any(part.startswith("-") for part in repository.split("/")):
        raise fail(f"repository {repository!r} may not start with '-' in any path component")


def _check_registry(registry: str, fail: _Fail) -> None:
    """ggcr's checkRegistry: Go's url.Parse("//" + registry) must give back the registry as the host, unchanged."""
    problem = None
    if registry.startswith("-"):  # no host name does; crane would take it for an option
        problem = "may not start with '-'"
    elif any(c in registry for c in "%@?#\\"):  # Go would unescape, or split off userinfo, query or fragment
        problem = "is not a valid host[:port]"
    elif any(ord(c) < 0x80 and c not in _HOST_CHARS for c in registry):
        problem = "contains a character not allowed in a host name"
    elif "[" in registry:  # an IPv6 literal, e.g. [::1]:5000
        close = registry.rfind("]")
        if registry.rfind("[") != 0 or close < 0:
            problem = "has a malformed [IPv6] literal"
        elif not _PORT_RE.fullmatch(registry[close + 1 :]):
            problem = "has an invalid port"
        elif not _is_ipv6(registry[1:close]):
            problem = "must hold an IPv6 address inside [ ]"
    elif ":" in registry and not _PORT_RE.fullmatch(registry[registry.rfind(":") :]):
        problem = "has an invalid port"
    elif registry in (".", ".."):
        problem = "is not a host name"
    if problem:
        raise fail(f"registry {registry!r} {problem}")


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True
