"""registry/retry_after.py: Retry-After as seconds or an HTTP-date, capped, with jitter that only adds."""

from __future__ import annotations

from datetime import datetime, timezone
from email.utils import format_datetime

import pytest

from oci_crane_loader.errors import SettingsError
from oci_crane_loader.registry.retry_after import parse_retry_after, retry_wait

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
    assert retry_wait("10", now=NOW, uniform=lambda: 0.0) == 10.0
    assert retry_wait("10", now=NOW, jitter=0.2, uniform=lambda: 1.0) == pytest.approx(12.0)
    waits = {retry_wait("10", now=NOW) for _ in range(50)}
    assert len(waits) > 1 and all(10.0 <= w <= 12.0 for w in waits)


def test_the_cap_bounds_a_server_that_asks_for_an_hour():
    assert retry_wait("3600", cap=30.0, now=NOW) == 30.0
    assert retry_wait(http_date(86400), cap=45.0, now=NOW) == 45.0


def test_no_usable_header_waits_the_fallback():
    assert retry_wait(None, fallback=2.0, uniform=lambda: 0.0) == 2.0
    assert retry_wait("garbage", fallback=3.0, now=NOW, uniform=lambda: 0.5, jitter=0.2) == pytest.approx(3.3)


@pytest.mark.parametrize("cap", [0, -1, float("nan")])
def test_a_cap_that_is_not_positive_is_refused(cap):
    with pytest.raises(SettingsError, match="OCI_CRANE_MAX_RETRY_AFTER"):
        retry_wait("1", cap=cap)
