"""Where one reference's bytes may come from: the node's mirrors (registry/mirrors.py reads their configuration)
in order, then the upstream, each reached by one of the two roads under the fetch's one connection policy.

A mirror is never trusted: it resolves a tag only where the configuration allows, and every manifest and blob it
serves is checked against its digest by the caller before it is kept. A mirror that refuses, lies, stalls or
dies costs time, never correctness: the caller moves to the next source, with one log line saying why.

An endpoint crane can address (API root ``/v2``, no ``ns`` query, no extra headers) is reached through crane
with a reference at that endpoint; any other (containerd's ``ns``, Spegel's headers, a moved API root) through
the HTTP road. Credentials for a mirror come from the keychain for the mirror's own host, as crane looks them up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..reference import Reference, parse_reference
from .crane import Crane

if TYPE_CHECKING:
    from .mirrors import Endpoint, SourcePlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """One endpoint for one reference: the reference as that endpoint names it, and the Crane (the policy, with
    the endpoint's own insecure flag) that reaches it."""

    endpoint: Endpoint | None  # None: the reference's own registry, no configuration involved
    reference: Reference  # registry and repository at this endpoint; tag and digest as asked
    crane: Crane

    @property
    def is_upstream(self) -> bool:
        return self.endpoint is None or self.endpoint.is_upstream

    @property
    def via_crane(self) -> bool:
        return self.endpoint is None or self.endpoint.crane_usable

    @property
    def name(self) -> str:
        """For messages and ``fetch --json``: where the bytes came from."""
        if self.endpoint is None:
            return f"upstream {self.reference.repository_name}"
        return f"{'upstream' if self.endpoint.is_upstream else 'mirror'} {self.endpoint.url_base}"

    def at(self, tag_or_digest: str) -> Reference:
        """The reference at this endpoint for a tag or a digest."""
        if self.endpoint is None:
            base = self.reference
            if tag_or_digest.startswith("sha256:"):
                return replace(base, digest=tag_or_digest, original=base.with_digest(tag_or_digest))
            return replace(base, tag=tag_or_digest, digest=None, original=f"{base.repository_name}:{tag_or_digest}")
        return _endpoint_reference(self.endpoint, tag_or_digest)

    @property
    def http(self) -> tuple[str, str, tuple[tuple[str, str], ...]] | None:
        """For an endpoint only the HTTP road reaches: (API root URL, query string, headers)."""
        if self.via_crane or self.endpoint is None:
            return None
        query = f"?ns={self.endpoint.ns}" if self.endpoint.ns else ""
        return self.endpoint.api_url, query, self.endpoint.headers


def _endpoint_reference(endpoint: Endpoint, tag_or_digest: str) -> Reference:
    return parse_reference(endpoint.crane_reference(tag_or_digest))


def plan(reference: Reference, crane: Crane) -> list[Source]:
    """The sources for ``reference`` in the order to ask them: mirrors, then the upstream; just the upstream when
    no configuration names a mirror for it. A configuration that cannot be used, or a registry the node blocks,
    raises its one error (MirrorConfigError, RegistryBlockedError)."""
    import os

    from .mirror_files import locate

    hosts_dirs = crane.access.hosts_dirs
    if not locate(os.environ, hosts_dirs=hosts_dirs).present():  # no mirror configuration on this node
        return [Source(None, reference, crane)]
    from .mirrors import plan_sources

    found: SourcePlan = plan_sources(reference, hosts_dirs=hosts_dirs)
    if not found.mirrors and (found.upstream is None or _same_place(found.upstream, reference)):
        return [Source(None, reference, crane)]
    sources = []
    for endpoint in found.endpoints:
        access = crane.access
        if endpoint.insecure and not access.insecure:
            access = replace(access, insecure=True, ca_file=None)
        sources.append(Source(endpoint, reference, crane if access is crane.access else Crane(access)))
    return sources


def _same_place(endpoint: Endpoint, reference: Reference) -> bool:
    """Whether the upstream endpoint is the reference's own registry and repository (no location rewriting)."""
    return endpoint.crane_usable and _endpoint_reference(endpoint, "latest").repository_name == \
        reference.repository_name
