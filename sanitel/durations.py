"""Durations as people write them — in alert rules, scenario and fault files, command-line options and
API parameters — with one grammar for all of them:

    duration := number                    a number of seconds: 90, 0.5
              | part { part }             units from largest to smallest, each at most once: 1h30m
    part     := number unit               2h, 1.5h, 250ms
    unit     := d | h | m | s | ms        days, hours, minutes, seconds, milliseconds
    number   := digits [ "." digits ]

Blanks around the text and between parts are ignored (``"30 s"``, ``"1h 30m"``). A duration is never
negative, except where a sign is asked for (``signed=True``: clock-skew offsets such as ``-2h``).
Python callers may also pass a number of seconds or a ``timedelta``.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta

_NUMBER = r"\d+(?:\.\d+)?"
_UNIT_NAMES = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds", "ms": "milliseconds"}
_UNIT_ORDER = ("d", "h", "m", "s", "ms")  # largest first
_PART = re.compile(rf"({_NUMBER})\s*(ms|d|h|m|s)")  # "ms" before "m": the longer unit wins
# the whole grammar, e.g. for an OpenAPI ``pattern`` (the sign is not part of it)
DURATION_PATTERN = rf"^\s*(?:{_NUMBER}|(?:{_NUMBER}\s*(?:ms|d|h|m|s)\s*)+)$"
_DURATION = re.compile(DURATION_PATTERN)
_HINT = "use e.g. 30s, 15m, 2h or 1d"


def parse_duration(value: object, *, signed: bool = False) -> timedelta:
    """``value`` — text in the grammar above, a number of seconds or a timedelta — as a timedelta.

    Raises ValueError naming the accepted forms (pydantic turns it into a validation error)."""
    try:
        duration = _duration(value, signed)
    except OverflowError:  # more days than a timedelta holds
        raise ValueError(f"{value!r} is too long a duration") from None
    if duration < timedelta(0) and not signed:
        raise ValueError(f"{value!r} is not a duration; it must be zero or more seconds")
    return duration


def format_duration(duration: timedelta) -> str:
    """The shortest text in the grammar for ``duration``: ``1h30m``, ``90ms``, ``0s``; ``-2h`` if negative.
    Sub-millisecond remainders are dropped."""
    if duration < timedelta(0):
        return "-" + format_duration(-duration)
    rest = duration // timedelta(milliseconds=1)
    parts = []
    for unit in _UNIT_ORDER:
        size = timedelta(**{_UNIT_NAMES[unit]: 1}) // timedelta(milliseconds=1)
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts) or "0s"


def _duration(value: object, signed: bool) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return timedelta(seconds=value)
    if isinstance(value, str):
        return _parse_text(value, signed)
    raise ValueError(f"{value!r} is not a duration; {_HINT}")  # bool: an int to Python, never a duration to a person


def _parse_text(text: str, signed: bool) -> timedelta:
    body = text.strip()
    sign = 1
    if signed and body[:1] in ("+", "-"):
        sign, body = (-1 if body[0] == "-" else 1), body[1:]
    if not _DURATION.match(body):
        raise ValueError(f"{text!r} is not a duration; {_HINT}")
    parts = _PART.findall(body)
    if not parts:  # a bare number: seconds
        return sign * timedelta(seconds=float(body))
    ranks = [_UNIT_ORDER.index(unit) for _, unit in parts]
    if ranks != sorted(set(ranks)):
        raise ValueError(f"{text!r} is not a duration; write each unit once, largest first (e.g. 1h30m)")
    return sign * sum((timedelta(**{_UNIT_NAMES[unit]: float(number)}) for number, unit in parts), timedelta(0))
