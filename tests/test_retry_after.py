"""registry/retry_after.py reads Retry-After (seconds or an HTTP-date); pull.Backoff waits it, capped, with jitter
that only adds."""

from __future__ import annotations

from datetime import datetime, timezone
from email.utils import format_datetime

import pytest

from oci_crane_loader.pull import Backoff
from oci_crane_loader.registry.retry_after import parse_retry_after

NOW = datetime(2026, 12, 4, 6, 0, 0, tzinfo=timezone.utc).timestamp()


def http_date(seconds_from_now: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW + seconds_from_now, tz=timezone.utc), usegmt=True)


@pytest.mark.parametrize(("value", "seconds"), [
    ("120", 120.0), (" 7 ", 7.0), ("0", 0.0),
    (http_date(30), 30.0), (http_date(-30), 0.0),  # a date already past: retry now
    ("Fri, 04 Dec 2026 06:01:00 GMT", 60.0),
    (None, None), ("", None), ("-5", None), ("1.5", None), ("soon", None), ("Fri, 04 Dec 2026 06:01:00", None),
])
def test_parse(value, seconds):
    assert parse_retry_after(value, now=NOW) == seconds


def test_the_wait_is_what_was_asked_plus_jitter_that_only_adds():
    waits = {Backoff(retries=20, window=3600, kept=0).next_wait(0, asked=10.0) for _ in range(50)}
    assert len(waits) > 1 and all(10.0 <= wait <= 12.5 for wait in waits)  # never less than asked


def test_the_cap_bounds_a_server_that_asks_for_an_hour():
    assert Backoff(retries=5, window=3600, kept=0).next_wait(0, asked=3600.0) == Backoff.MAX_WAIT
    assert Backoff(retries=5, window=3600, kept=0).next_wait(0, asked=parse_retry_after(http_date(86400),
                                                                                          now=NOW)) == Backoff.MAX_WAIT


def test_the_window_and_the_retries_bound_the_waiting():
    assert Backoff(retries=5, window=10, kept=0).next_wait(0, asked=30.0) is None  # past the window: give up
    backoff = Backoff(retries=1, window=3600, kept=0)
    assert backoff.next_wait(0, asked=1.0) is not None and backoff.next_wait(0, asked=1.0) is None
