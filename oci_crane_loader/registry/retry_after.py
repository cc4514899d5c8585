"""How long to wait after a registry answers 429 Too Many Requests or 503 Service Unavailable.

``Retry-After`` (RFC 9110 10.2.3) is either delay-seconds (``120``) or an HTTP-date. We honour it, bounded: a
mirror or registry asking for an hour must not hold a model load for an hour (the caller decides whether to wait
the capped time or to try the next endpoint), and jitter spreads the fleet's retries, so that many pods throttled
together do not return together. The cap is a parameter: ``OCI_CRANE_MAX_RETRY_AFTER`` in settings.py should
carry it (seconds, default ``DEFAULT_CAP``). Standard library only, and errors.py.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime

from ..errors import SettingsError

__all__ = ["DEFAULT_CAP", "RETRY_STATUSES", "parse_retry_after", "retry_wait"]

DEFAULT_CAP = 60.0  # seconds: what OCI_CRANE_MAX_RETRY_AFTER should default to
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


def retry_wait(value: str | None, *, cap: float = DEFAULT_CAP, fallback: float = 1.0, jitter: float = 0.2,
               now: float | None = None, uniform: Callable[[], float] = random.random) -> float:
    """Seconds to wait before the next try: what ``Retry-After`` asks (``fallback`` when it says nothing usable),
    plus up to ``jitter`` of it at random, never more than ``cap``. Jitter only adds: the server asked for at
    least that long."""
    if not cap > 0:  # also NaN
        raise SettingsError(f"the Retry-After cap must be a positive number of seconds, not {cap!r}",
                            "set OCI_CRANE_MAX_RETRY_AFTER to a positive number of seconds, or unset it for 60")
    asked = parse_retry_after(value, now=now)
    base = fallback if asked is None else asked
    return min(cap, max(0.0, base) * (1.0 + jitter * uniform()))
