"""How long to wait after a registry answers 429 Too Many Requests or 503 Service Unavailable.

``Retry-After`` (RFC 9110 10.2.3) is either delay-seconds (``120``) or an HTTP-date; this reads it. The wait
itself is pull.py's ``Backoff``: what was asked plus jitter that only adds (so that a fleet throttled together does
not come back together), at most ``Backoff.MAX_WAIT``, within ``--retries`` and OCI_CRANE_RETRY_WINDOW: a
registry asking for an hour does not hold a model load for an hour. Standard library only.
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime

__all__ = ["RETRY_STATUSES", "parse_retry_after"]

RETRY_STATUSES = (429, 503)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """The seconds a ``Retry-After`` value asks for (0 for a date in the past), or None when absent or invalid."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():  # delay-seconds: 1*DIGIT, never negative or fractional
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT; a date without a zone is not one
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
