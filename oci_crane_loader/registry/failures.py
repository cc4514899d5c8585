"""The one table from what a registry answered to the typed error we raise: crane's stderr (crane.py) and an
HTTP status (transfer.py) land on the same classes with the same words, typed by what went wrong (not found,
refused credentials, rate limited, network, TLS, integrity), never by which road saw it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .. import errors


@dataclass(frozen=True)
class Failure:
    error: type[errors.CraneError]
    what: str  # the cause's first words, before what the registry or crane said


CREDENTIAL_HELPER = Failure(errors.CredentialHelperError, "the docker credential helper failed")
TLS = Failure(errors.TLSError, "TLS handshake with the registry failed")
UNAUTHORIZED = Failure(errors.UnauthorizedError, "the registry refused our credentials")
RATE_LIMITED = Failure(errors.RateLimitedError, "the registry is rate limiting us")
# 503 with a Retry-After: not broken, busy (RFC 9110 15.6.4); waited for as a 429 is.
OVERLOADED = Failure(errors.RateLimitedError, "the registry is overloaded and asked us to come back later")
NOT_FOUND = Failure(errors.NotFoundError, "not found in the registry")
INTEGRITY = Failure(errors.CraneIntegrityError, "downloaded bytes do not match their digest")
NETWORK = Failure(errors.NetworkError, "cannot reach the registry")
# A storage host (where a registry redirects blob GETs) refusing its presigned URL: the URL expired or was cut
# short, not our credentials. A network error, so retried: the next try asks the registry for a fresh URL.
STORAGE_REFUSED = Failure(errors.NetworkError, "the storage URL the registry redirected to was refused")
SERVER_ERROR = Failure(errors.NetworkError, "the registry could not serve the request")  # 5xx and the like

# crane's stderr, in order: a credential-helper failure also mentions the registry, a TLS failure may end in EOF.
STDERR_RULES: list[tuple[re.Pattern[str], Failure]] = [
    (re.compile(r"error getting credentials|credential helper|docker-credential-"), CREDENTIAL_HELPER),
    (re.compile(r"x509:|tls:|certificate|server gave HTTP response to HTTPS client"), TLS),
    (re.compile(r"UNAUTHORIZED|DENIED|authentication required|401 Unauthorized|403 Forbidden"), UNAUTHORIZED),
    (re.compile(r"TOOMANYREQUESTS|429 Too Many Requests"), RATE_LIMITED),
    (re.compile(r"MANIFEST_UNKNOWN|NAME_UNKNOWN|BLOB_UNKNOWN|404 Not Found|not found"), NOT_FOUND),
    (re.compile(r"error verifying|does not match|digest mismatch|unexpected digest"), INTEGRITY),
    (re.compile(r"connection refused|no such host|i/o timeout|network is unreachable|connection reset|"
                r"unexpected EOF|context deadline exceeded|server misbehaving|no route to host|EOF$"), NETWORK),
]

_STATUSES = {401: UNAUTHORIZED, 403: UNAUTHORIZED, 404: NOT_FOUND, 416: INTEGRITY, 429: RATE_LIMITED}
# What a 416 means for a blob GET: we asked for bytes inside the descriptor's size, so the blob is smaller.
_STATUS_WORDS = {416: "the blob is smaller than its descriptor says"}


def from_stderr(stderr: str) -> Failure | None:
    return next((failure for pattern, failure in STDERR_RULES if pattern.search(stderr)), None)


def from_status(status: int, *, from_registry: bool) -> Failure:
    """The failure an HTTP answer means; ``from_registry`` False for a storage host the registry redirected to."""
    if not from_registry and status in (401, 403):
        return STORAGE_REFUSED
    return _STATUSES.get(status, SERVER_ERROR)


def status_error(status: int, where: str, *, from_registry: bool = True,
                 retry_after: str | None = None) -> errors.CraneError:
    """The typed error for an HTTP ``status``; ``where`` says which URL answered (no query string).
    ``retry_after``: the answer's Retry-After header, kept on the error (``retry_after`` seconds, or None) so
    that a retry waits as long as the registry asked (bounded: see pull.Backoff)."""
    from .retry_after import RETRY_STATUSES, parse_retry_after

    asked = parse_retry_after(retry_after) if status in RETRY_STATUSES else None
    failure = OVERLOADED if status == 503 and asked is not None else from_status(status, from_registry=from_registry)
    words = _STATUS_WORDS.get(status, failure.what)
    error = failure.error(f"{words}: {where} answered {status}")
    error.retry_after = asked
    return error
