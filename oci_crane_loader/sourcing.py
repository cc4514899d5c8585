"""Where a reference's manifest digest comes from: the one rule that both the record's fast path (cached.py) and
the Puller follow, and where mirrors will be asked first.

- a reference with a digest names it (nothing is asked);
- with --offline, the digest the tag had when the cache last fetched it (None if it never did);
- otherwise the registry's answer for the tag (`crane manifest`), its manifest saved into the cache; when the
  registry cannot be reached (refused, no such host, timed out: never an answer such as 401, 403 or 404), the
  digest the cache last fetched for the tag, with one warning (OCI_CRANE_NO_OUTAGE_FALLBACK=1 turns that off), as
  huggingface_hub serves its cache on connection errors: a registry outage does not take down a cached model.

Standard library only: a cached fetch loads no pydantic for this.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import errors
from .reference import Reference

if TYPE_CHECKING:
    from .cache.store import Store
    from .registry.crane import Crane
    from .registry.sources import Source

log = logging.getLogger(__name__)

# Manifests are read into memory whole; real ones are kilobytes (registries cap them at 4 MiB), so anything far
# larger is refused before it is parsed.
MAX_DOCUMENT_SIZE = 8 << 20


def check_document_size(size: int, what: str) -> None:
    if size > MAX_DOCUMENT_SIZE:
        raise errors.InvalidDocumentError(
            f"{what} is {size / 2**20:.1f} MiB, over the {MAX_DOCUMENT_SIZE / 2**20:.1f} MiB limit for a manifest or "
            "config "
            "(these are JSON documents of a few kilobytes; it is not read)",
            "check the reference: the registry or the artifact is broken or hostile")


def source_digest(store: Store, crane: Crane, reference: Reference, came_from: dict[str, str] | None = None,
                  sources: list[Source] | None = None) -> str | None:
    """The digest ``reference`` names now (an index's, for a multi-platform one), its manifest in the cache
    unless the reference pinned it; None with --offline when the tag was never fetched. A tag is asked of the
    node's mirrors that may resolve it, in order, then of the upstream (registry/sources.py); ``came_from`` gets
    the digest -> the source whose manifest answered (fetch --json's "sources"). ``sources``: the plan for
    ``reference`` when the caller has it already (registry/sources.py's ``plan``)."""
    if reference.digest:
        return reference.digest
    if crane.access.offline:
        return store.load_ref(reference)
    if sources is None:
        from .registry.sources import plan

        sources = plan(reference, crane)
    resolvers = _resolvers(sources)
    assert reference.tag is not None  # a reference without a digest has a tag
    for number, source in enumerate(resolvers, 1):
        try:
            raw = manifest_at(source, reference.tag)
        except errors.OciCraneError as exc:
            if number < len(resolvers) and not isinstance(exc, errors.OfflineError):
                log.warning("%s could not resolve %s (%s); asking %s", source.name, reference, exc.cause,
                            resolvers[number].name)
                continue
            if isinstance(exc, (errors.NotFoundError, errors.UnauthorizedError)) and source.is_upstream:
                _hint_hub(reference, exc)
            if not isinstance(exc, errors.NetworkError):
                raise  # an answer (401, 403, 404, TLS) is never papered over
            cached = store.load_ref(reference) if crane.access.outage_fallback else None
            if cached is None:
                raise
            log.warning("cannot reach %s (%s); serving %s from the cache: %s, fetched %s (set "
                        "OCI_CRANE_NO_OUTAGE_FALLBACK=1 to fail instead)", reference.registry, exc.cause,
                        reference, cached, _when(store, reference))
            return cached
        check_document_size(len(raw), f"manifest of {reference}")
        if not source.is_upstream:
            log.info("%s resolved %s", source.name, reference)
        digest = store.save_manifest(raw)
        if came_from is not None:
            came_from[digest] = source.name
        return digest
    from .errors import RegistryBlockedError

    raise RegistryBlockedError(f"no source may resolve the tag of {reference}: its mirrors serve digests only "
                               "and the upstream is blocked", "pin the reference by digest (REF@sha256:...)")


def tag_manifest(crane: Crane, reference: Reference, tag: str) -> bytes | None:
    """The manifest another tag of ``reference``'s repository names (cosign's ``sha256-<hex>.sig``), asked as the
    reference's own tag is: of the mirrors that may resolve tags, then the upstream, never a blocked one. None
    when the upstream has no such tag (a mirror's "not found" only passes to the next source: a peer may lack what
    the upstream holds). What a mirror serves is not trusted: the caller verifies it (a signature)."""
    from .registry.sources import plan

    failure: errors.OciCraneError | None = None
    for source in _resolvers(plan(reference, crane)):
        try:
            raw = manifest_at(source, tag)
        except errors.NotFoundError:
            if source.is_upstream:
                return None
            continue
        except errors.OfflineError:
            raise
        except errors.OciCraneError as exc:
            log.warning("%s could not serve %s:%s (%s)", source.name, reference.repository_name, tag, exc.cause)
            failure = exc
            continue
        check_document_size(len(raw), f"manifest {tag} of {reference.repository_name}")
        return raw
    if failure is not None:
        raise failure
    return None


def small_blob(crane: Crane, reference: Reference, digest: str, size: int, temp: Path | None = None) -> bytes:
    """A small blob of ``reference``'s repository (a signature payload, a bundle) from the first source that serves
    it with this digest: the mirrors crane can reach, then the upstream (never a blocked one). Written to
    ``temp`` (crane stops at ``size``) and read back, or read from crane's output when no ``temp`` is given."""
    from .digests import sha256_digest

    failure: errors.OciCraneError | None = None
    for source in _pullers(crane, reference):
        name = source.at(digest).name
        try:
            if temp is None:
                data = source.crane.run("blob", name)
            else:
                try:
                    source.crane.blob(name, temp, size=size)
                    data = temp.read_bytes()
                finally:
                    temp.unlink(missing_ok=True)
        except errors.OfflineError:
            raise
        except errors.OciCraneError as exc:
            failure = exc
            continue
        if len(data) == size and sha256_digest(data) == digest:  # a lying mirror costs the next source
            return data
        failure = errors.IntegrityError(f"blob {digest} of {reference} from {source.name} does not match its digest")
    raise failure or errors.NotFoundError(f"no source may serve blob {digest} of {reference}")


def digest_manifest(crane: Crane, reference: Reference, digest: str) -> bytes:
    """The manifest ``digest`` of ``reference``'s repository from the first source that serves exactly it (the
    mirrors that may pull, then the upstream, never a blocked one)."""
    from .digests import sha256_digest

    failure: errors.OciCraneError | None = None
    for source in _pullers(crane, reference, crane_only=False):
        try:
            raw = manifest_at(source, digest)
        except errors.OfflineError:
            raise
        except errors.OciCraneError as exc:
            failure = exc
            continue
        check_document_size(len(raw), f"manifest {digest} of {reference.repository_name}")
        if sha256_digest(raw) == digest:
            return raw
        failure = errors.IntegrityError(f"manifest of {reference.with_digest(digest)} from {source.name} has "
                                        f"digest {sha256_digest(raw)}")
    raise failure or errors.NotFoundError(f"no source may serve manifest {digest} of {reference}")


def upstream_allowed(crane: Crane, reference: Reference) -> bool:
    """Whether the node lets ``reference``'s own registry be asked (registries.conf may block it)."""
    from .registry.sources import plan

    return any(source.is_upstream for source in plan(reference, crane))


def _resolvers(sources: list[Source]) -> list[Source]:
    """The sources a tag may be asked of: the upstream, and the mirrors the configuration lets resolve tags."""
    return [source for source in sources if source.endpoint is None or source.endpoint.can_resolve_tags]


def _pullers(crane: Crane, reference: Reference, *, crane_only: bool = True) -> list[Source]:
    from .registry.sources import plan

    return [source for source in plan(reference, crane) if (source.endpoint is None or source.endpoint.can_pull)
            and not (crane_only and source.http is not None)]


def _hint_hub(reference: Reference, exc: errors.OciCraneError) -> None:
    """Docker Hub answers 401 or 404 for a repository it does not hold: a lowercase Hugging Face id gets the
    hint an uppercase one gets before any request (reference.misread)."""
    from .reference import hub_hint

    hint = hub_hint(reference)
    if hint is not None:
        exc.fix = f"{exc.fix}; {hint}"
        exc.args = (exc.one_line(),)


def manifest_at(source: Source, tag_or_digest: str) -> bytes:
    """The manifest ``source`` serves for a tag or digest, by crane or (a mirror only it reaches) the HTTP road."""
    http = source.http
    if http is None:
        return source.crane.manifest(source.at(tag_or_digest).name)
    from .registry import transfer

    return transfer.get_manifest(source.crane, source.at(tag_or_digest), tag_or_digest, http, MAX_DOCUMENT_SIZE)


def _when(store: Store, reference: Reference) -> str:
    """When the cache's ref for ``reference`` last changed: when the digest it names was fetched."""
    try:
        stamp = store.ref_path(reference).stat().st_mtime
    except OSError:
        return "at an unknown time"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))


def require_digest(store: Store, crane: Crane, reference: Reference,
                   came_from: dict[str, str] | None = None) -> str:
    """``source_digest``, or the one error a tag the cache never fetched gets offline."""
    digest = source_digest(store, crane, reference, came_from)
    if digest is None:
        raise errors.OfflineError(f"{reference} is not in the cache at {store.root}")
    return digest
