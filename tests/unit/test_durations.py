"""The one duration grammar (``sanitel.durations``), shared by alert rules, scenarios, faults, the
simulator's command line and the API's bucket parameter."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sanitel.durations import format_duration, parse_duration

S = timedelta(seconds=1)


@pytest.mark.parametrize(("value", "expected"), [
    ("90", 90 * S),  # a bare number: seconds
    ("0.5", S / 2),
    ("90s", 90 * S),
    ("15m", 15 * 60 * S),
    ("2h", 2 * 3600 * S),
    ("1d", 86400 * S),
    ("250ms", timedelta(milliseconds=250)),
    ("1.5h", 5400 * S),
    ("1h30m", 5400 * S),
    ("1d2h3m4s5ms", timedelta(days=1, hours=2, minutes=3, seconds=4, milliseconds=5)),
    (" 30 s ", 30 * S),  # blanks around the text and between number and unit
    ("1h 30m", 5400 * S),
    ("0s", timedelta(0)),
    (45, 45 * S),  # Python callers: seconds …
    (2.5, 2.5 * S),
    (timedelta(minutes=3), 180 * S),  # … or a timedelta
])
def test_accepted(value: object, expected: timedelta) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize(("value", "message"), [
    ("", "is not a duration; use e.g. 30s, 15m, 2h or 1d"),
    ("five minutes", "is not a duration"),
    ("5 minutes", "is not a duration"),
    ("m", "is not a duration"),
    ("1h30", "is not a duration"),  # every part needs a unit once one has
    (".5s", "is not a duration"),
    ("1e3s", "is not a duration"),
    ("30m1h", "write each unit once, largest first"),
    ("1m2m", "write each unit once, largest first"),
    ("-5m", "is not a duration"),  # no sign unless asked for
    (-1, "must be zero or more seconds"),
    (timedelta(seconds=-1), "must be zero or more seconds"),
    (True, "is not a duration"),  # an int to Python, never a duration
    (None, "is not a duration"),
    (float("nan"), "is not a duration"),
    (float("inf"), "is not a duration"),
    ("9" * 30 + "d", "too long a duration"),
])
def test_refused(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(value)


@pytest.mark.parametrize(("value", "expected"), [
    ("+10m", 600 * S), ("-2h", -7200 * S), ("10m", 600 * S), (-30, -30 * S), (" - 1h30m", -5400 * S),
])
def test_signed(value: object, expected: timedelta) -> None:
    assert parse_duration(value, signed=True) == expected


@pytest.mark.parametrize(("duration", "text"), [
    (timedelta(0), "0s"), (90 * S, "1m30s"), (5400 * S, "1h30m"), (timedelta(days=1), "1d"),
    (timedelta(milliseconds=1500), "1s500ms"), (timedelta(hours=-2), "-2h"),
    (timedelta(microseconds=999), "0s"),  # below a millisecond: dropped
])
def test_format(duration: timedelta, text: str) -> None:
    assert format_duration(duration) == text


@given(st.timedeltas(min_value=timedelta(days=-10**5), max_value=timedelta(days=10**5)))
def test_format_then_parse_is_the_same_to_the_millisecond(duration: timedelta) -> None:
    whole_ms = timedelta(milliseconds=abs(duration) // timedelta(milliseconds=1))
    assert parse_duration(format_duration(duration), signed=True) == (whole_ms if duration >= timedelta(0) else -whole_ms)
