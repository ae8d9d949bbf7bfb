"""Operating-state marks of a furnace line (issue 13; migration 0080; docs/compliance.md).

Marks follow the MEE rules for marking automatic-monitoring data of municipal-waste incineration power plants
(announcement 2019 No. 50): the plant marks each furnace's state, and the monitoring-system states, over time.

- furnace marks (the line is not in normal operation): ``bake_out`` 烘炉, ``start_up`` 启炉, ``shut_down`` 停炉,
  ``shut`` 停运, ``fault`` 故障, ``accident`` 事故;
- monitoring-system marks (the line runs, its measurements are not valid): ``cms_maintenance`` 维护,
  ``cms_calibration`` 校准, ``cms_fault`` 设备故障, ``cms_outage`` 断电/通讯中断.

Where they come from:
- the plant, through the API and CLI (``cems_marks`` rows: who, when, why; corrections are new rows that
  supersede, never rewrites);
- the data unit (DAU), where it sends them: a JSON reading's ``extra.operating_mark`` (one of the codes
  above; the simulator's older ``extra.operating_state`` start_up/shut_down/off maps to start_up/shut_down/
  shut). Consecutive readings with the same mark make one mark from the first reading to the next reading
  without it (source ``dau``). HJ 212-2017 has no furnace-state field; its per-value flags (F, M, C, D) are
  handled as flags by processors/cems_averages.py, not as marks.

``effective_marks`` merges both: the current (not superseded, not withdrawn) stored marks and the DAU's.

Writing (the API's ``/plants/{id}/…/marks`` and ``sanitel marks``): ``add_mark``, ``correct_mark`` (also withdraws
and closes an open mark), ``mark_history``, ``list_marks``. The audit trail is the database's to enforce (migration
0080's trigger: a stored mark is never rewritten or deleted; the only change is setting ``superseded_by`` once); the
functions here check a request first, so that a refusal names the field and the fix. Problems raise ``MarkError``
(a ``SanitelError``): ``MarkNotFound`` (HTTP 404), ``MarkConflict`` (409), ``MarkInvalid`` (422, with its field).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import psycopg

from sanitel.errors import SanitelError

FURNACE_MARKS: tuple[str, ...] = ("bake_out", "start_up", "shut_down", "shut", "fault", "accident")
CMS_MARKS: tuple[str, ...] = ("cms_maintenance", "cms_calibration", "cms_fault", "cms_outage")
MARKS: tuple[str, ...] = FURNACE_MARKS + CMS_MARKS
MARK_NAMES_ZH: dict[str, str] = {
    "bake_out": "烘炉", "start_up": "启炉", "shut_down": "停炉", "shut": "停运", "fault": "故障", "accident": "事故",
    "cms_maintenance": "维护", "cms_calibration": "校准", "cms_fault": "设备故障", "cms_outage": "断电/通讯中断",
}
# the simulator's and older units' extra.operating_state
_LEGACY_STATES = {"start_up": "start_up", "shut_down": "shut_down", "off": "shut"}


@dataclass(frozen=True, slots=True)
class Mark:
    mark: str
    start: datetime
    end: datetime | None  # None: still open
    source: str  # api | cli | dau
    mark_id: int | None = None  # None for a DAU mark (not stored)
    reason: str = ""
    created_by: str = ""

    def overlaps(self, start: datetime, end: datetime) -> bool:
        return self.start < end and (self.end is None or self.end > start)

    def covers(self, ts: datetime) -> bool:
        return self.start <= ts and (self.end is None or ts < self.end)

    @property
    def furnace(self) -> bool:
        return self.mark in FURNACE_MARKS


def reading_mark(row: dict[str, Any]) -> str | None:
    """The mark a DAU sent with one reading (its ``extra``), or None."""
    extra = row.get("extra") or {}
    mark = extra.get("operating_mark")
    if isinstance(mark, str) and mark in MARKS:
        return mark
    state = extra.get("operating_state")
    return _LEGACY_STATES.get(state) if isinstance(state, str) else None


def dau_marks(rows: Sequence[dict[str, Any]]) -> list[Mark]:
    """Marks from readings sorted by ts (each with ``ts`` and ``extra``): a run of readings with the same mark
    lasts from its first reading to the first reading after it (open at the end of the rows)."""
    out: list[Mark] = []
    current: tuple[str, datetime] | None = None
    for row in rows:
        mark = reading_mark(row)
        if current is not None and mark != current[0]:
            out.append(Mark(current[0], current[1], row["ts"], "dau", created_by="data unit"))
            current = None
        if mark is not None and current is None:
            current = (mark, row["ts"])
    if current is not None:
        out.append(Mark(current[0], current[1], None, "dau", created_by="data unit"))
    return out


_STORED = ("mark_id", "mark", "starts_at", "ends_at", "source", "reason", "created_by")


def stored_marks(conn: psycopg.Connection, device_id: str, start: datetime, end: datetime) -> list[Mark]:
    """The current stored marks of a line's CEMS unit that overlap [start, end): not superseded by a
    correction, not withdrawn."""
    rows = conn.execute(
        f"SELECT {', '.join(_STORED)} FROM cems_marks WHERE device_id = %s AND superseded_by IS NULL"
        " AND NOT withdrawn AND starts_at < %s AND (ends_at IS NULL OR ends_at > %s) ORDER BY starts_at, mark_id",
        (device_id, end, start)).fetchall()
    return [Mark(mark, s, e, source, mark_id, reason, by) for mark_id, mark, s, e, source, reason, by in rows]


def effective_marks(conn: psycopg.Connection, device_id: str, start: datetime, end: datetime,
                    readings: Sequence[dict[str, Any]] | None = None) -> list[Mark]:
    """Stored marks and, when the readings of [start, end) are given (with ``ts`` and ``extra``), the DAU's
    marks in them; sorted by start."""
    marks = stored_marks(conn, device_id, start, end)
    if readings is not None:
        marks += [m for m in dau_marks(readings) if m.overlaps(start, end)]
    return sorted(marks, key=lambda m: (m.start, m.mark))


def mark_at(marks: Sequence[Mark], ts: datetime) -> Mark | None:
    """The mark covering ``ts``; a furnace mark wins over a monitoring-system mark (the line is not in
    normal operation, whatever its analysers do)."""
    covering = [m for m in marks if m.covers(ts)]
    return min(covering, key=lambda m: (not m.furnace, m.start)) if covering else None


# --- writing marks: the plant's, through the API and the CLI -------------------------------------------

SOURCES: tuple[str, ...] = ("api", "cli", "dau")  # migration 0080's CHECK
MAX_REASON = 2000  # migration 0080's CHECK on reason


class MarkError(SanitelError):
    """A mark request that cannot be carried out; the message says why and what to do instead."""


class MarkNotFound(MarkError):
    """Unknown plant, line, CEMS device or mark (HTTP 404)."""


class MarkConflict(MarkError):
    """The mark was already corrected or withdrawn (HTTP 409); ``newer`` is the mark that superseded it."""

    def __init__(self, message: str, newer: int | None = None) -> None:
        super().__init__(message)
        self.newer = newer


class MarkInvalid(MarkError):
    """A field that does not validate (HTTP 422): ``field`` is its name (mark, starts_at, ends_at, reason, …)."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


class _Keep(enum.Enum):
    KEEP = "keep"


# correct_mark(ends_at=KEEP): the correction keeps the mark's end (None would reopen it)
KEEP: Literal[_Keep.KEEP] = _Keep.KEEP


@dataclass(frozen=True, slots=True)
class StoredMark:
    """One row of ``cems_marks``: a mark as the plant set it, or a correction or withdrawal of one."""

    mark_id: int
    device_id: str
    plant_id: str | None
    line_id: str | None
    mark: str
    starts_at: datetime
    ends_at: datetime | None  # None: still open
    reason: str
    source: str
    created_by: str
    created_at: datetime
    supersedes: int | None  # the mark this row corrects
    superseded_by: int | None  # the correction that replaced this row
    withdrawn: bool  # this row is a correction that removes the mark

    @property
    def status(self) -> str:
        """current (in force) | superseded (a later correction replaced it) | withdrawn (removed by this row)."""
        if self.superseded_by is not None:
            return "superseded"
        return "withdrawn" if self.withdrawn else "current"

    @property
    def mark_zh(self) -> str:
        """The mark's name in the MEE marking rules."""
        return MARK_NAMES_ZH[self.mark]

    def as_json(self) -> dict[str, Any]:
        """JSON-able, times RFC 3339 in UTC, with the Chinese name of the mark (the API's and ``--json``'s form)."""
        return {
            "mark_id": self.mark_id, "plant_id": self.plant_id, "line_id": self.line_id, "device_id": self.device_id,
            "mark": self.mark, "mark_zh": self.mark_zh,
            "kind": "furnace" if self.mark in FURNACE_MARKS else "monitoring_system",
            "starts_at": _utc(self.starts_at), "ends_at": _utc(self.ends_at) if self.ends_at else None,
            "reason": self.reason, "source": self.source, "created_by": self.created_by,
            "created_at": _utc(self.created_at), "supersedes": self.supersedes, "superseded_by": self.superseded_by,
            "withdrawn": self.withdrawn, "status": self.status,
        }


def _utc(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat()


_ROW = ("mark_id", "device_id", "plant_id", "line_id", "mark", "starts_at", "ends_at", "reason", "source",
        "created_by", "created_at", "supersedes", "superseded_by", "withdrawn")
_ROW_SQL = ", ".join(_ROW)


def _stored(row: Sequence[Any]) -> StoredMark:
    return StoredMark(*row)


# --- checks (before the database's CHECKs, so that a refusal names the field and the fix) ---------------

def check_time(field: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise MarkInvalid(field, f"{value.isoformat()} has no time zone offset; write it as e.g. "
                                 "2026-11-28T06:00+08:00")


def check_mark_fields(mark: str, starts_at: datetime, ends_at: datetime | None, reason: str, *,
                      blame: str = "ends_at") -> None:
    """A mark's own fields: a known mark, aware times with the end after the start, a reason that says why.
    ``blame`` names the field an end-not-after-start is charged to (the one the caller changed)."""
    if mark not in MARKS:
        raise MarkInvalid("mark", f"{mark!r} is not a mark; use one of {', '.join(MARKS)}")
    check_time("starts_at", starts_at)
    if ends_at is not None:
        check_time("ends_at", ends_at)
        if ends_at <= starts_at:
            raise MarkInvalid(blame, f"the end ({ends_at.isoformat()}) must be after the start "
                                     f"({starts_at.isoformat()}); leave the end out for a mark still open")
    check_text("reason", reason, MAX_REASON, "say why the line is marked (e.g. 'cold start after the overhaul')")


def check_text(field: str, text: str, max_length: int, hint: str) -> None:
    if not text.strip():
        raise MarkInvalid(field, f"must not be blank: {hint}")
    if len(text) > max_length:
        raise MarkInvalid(field, f"is {len(text)} characters long; at most {max_length}")
    if "\x00" in text:
        raise MarkInvalid(field, "contains a NUL character (U+0000); remove it")
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate, e.g. from undecodable command-line bytes
        raise MarkInvalid(field, "is not valid Unicode text; retype it") from None


def _check_origin(source: str, created_by: str) -> None:
    if source not in SOURCES:
        raise MarkInvalid("source", f"{source!r} is not a source; use one of {', '.join(SOURCES)}")
    check_text("created_by", created_by, 200, "name who sets the mark")


# --- the registry: which CEMS device is a line's, and where a device stands ----------------------------

def require_plant(conn: psycopg.Connection, plant_id: str) -> None:
    if conn.execute("SELECT 1 FROM sites WHERE site_id = %s AND kind = 'plant'", (plant_id,)).fetchone() is None:
        raise MarkNotFound(f"plant {plant_id!r} does not exist (no site of kind plant with that id)")


def line_device(conn: psycopg.Connection, plant_id: str, line: str) -> str:
    """The CEMS device of one of the plant's lines; ``line`` is the line's site id or the device's id."""
    require_plant(conn, plant_id)
    rows = conn.execute(
        "SELECT d.device_id FROM devices d JOIN sites s ON s.site_id = d.site_id WHERE d.kind = 'cems'"
        " AND (s.site_id = %(p)s OR (s.kind = 'line' AND s.parent_id = %(p)s))"
        " AND ((s.kind = 'line' AND s.site_id = %(l)s) OR d.device_id = %(l)s) ORDER BY d.device_id",
        {"p": plant_id, "l": line}).fetchall()
    if not rows:
        raise MarkNotFound(f"plant {plant_id!r} has no line {line!r}: name a line site under the plant, or a "
                           "CEMS device registered there")
    if len(rows) > 1:
        raise MarkInvalid("line", f"line {line!r} has {len(rows)} CEMS devices ({', '.join(r[0] for r in rows)}); "
                                  "name the device instead")
    device_id: str = rows[0][0]
    return device_id


def plant_mark_devices(conn: psycopg.Connection, plant_id: str) -> list[str]:
    """The plant's CEMS devices (registered under it or its lines) and any device with marks stored for it."""
    require_plant(conn, plant_id)
    rows = conn.execute(
        "SELECT d.device_id FROM devices d JOIN sites s ON s.site_id = d.site_id WHERE d.kind = 'cems'"
        " AND (s.site_id = %(p)s OR (s.kind = 'line' AND s.parent_id = %(p)s))"
        " UNION SELECT device_id FROM cems_marks WHERE plant_id = %(p)s", {"p": plant_id}).fetchall()
    return sorted(r[0] for r in rows)


def device_line(conn: psycopg.Connection, device_id: str) -> tuple[str, str | None]:
    """(plant_id, line_id) of a registered CEMS device, from the registry: device → line site → plant (a device
    registered at the plant itself has no line id)."""
    row = conn.execute(
        "SELECT d.kind, s.kind, s.site_id, p.site_id FROM devices d LEFT JOIN sites s ON s.site_id = d.site_id"
        " LEFT JOIN sites p ON p.site_id = s.parent_id AND p.kind = 'plant' WHERE d.device_id = %s",
        (device_id,)).fetchone()
    if row is None or row[0] != "cems":
        raise MarkNotFound(f"{device_id!r} is not a registered CEMS device; register it with "
                           f"'sanitel devices register {device_id} --kind cems --site LINE'")
    _, site_kind, site_id, plant_id = row
    if site_kind == "line" and plant_id is not None:
        return plant_id, site_id
    if site_kind == "plant":
        return site_id, None
    raise MarkInvalid("device_id", f"CEMS device {device_id!r} is not at a plant's line (its site is {site_id!r});"
                                   " register it under a line site whose parent is the plant")


# --- writes ----------------------------------------------------------------------------------------------

def add_mark(conn: psycopg.Connection, *, device_id: str, mark: str, starts_at: datetime, ends_at: datetime | None,
             reason: str, source: str, created_by: str) -> StoredMark:
    """Store a new mark of a CEMS device's line (``ends_at`` None: still open), its plant and line taken from the
    registry."""
    check_mark_fields(mark, starts_at, ends_at, reason)
    _check_origin(source, created_by)
    plant_id, line_id = device_line(conn, device_id)
    row = conn.execute(
        "INSERT INTO cems_marks (device_id, plant_id, line_id, mark, starts_at, ends_at, reason, source, created_by)"
        f" VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_ROW_SQL}",
        (device_id, plant_id, line_id, mark, starts_at, ends_at, reason, source, created_by)).fetchone()
    assert row is not None  # INSERT … RETURNING one row
    return _stored(row)


# One statement, so one transaction whatever the caller's connection (autocommit included): the correction row and
# the old row's superseded_by land together or not at all. FOR UPDATE makes a concurrent correction of the same mark
# wait, then find superseded_by set and insert nothing; the unique index on supersedes is the last line.
_CORRECT = f"""
WITH old AS (
    SELECT mark_id, device_id, plant_id, line_id FROM cems_marks
    WHERE mark_id = %(old)s AND superseded_by IS NULL AND NOT withdrawn FOR UPDATE
), ins AS (
    INSERT INTO cems_marks (device_id, plant_id, line_id, mark, starts_at, ends_at, reason, source, created_by,
                            supersedes, withdrawn)
    SELECT device_id, plant_id, line_id, %(mark)s, %(starts_at)s, %(ends_at)s, %(reason)s, %(source)s,
           %(created_by)s, mark_id, %(withdrawn)s FROM old
    RETURNING {_ROW_SQL}
), linked AS (
    UPDATE cems_marks SET superseded_by = ins.mark_id FROM ins WHERE cems_marks.mark_id = ins.supersedes
    RETURNING cems_marks.mark_id
)
SELECT {_ROW_SQL} FROM ins
"""


def get_mark(conn: psycopg.Connection, mark_id: int) -> StoredMark | None:
    row = conn.execute(f"SELECT {_ROW_SQL} FROM cems_marks WHERE mark_id = %s", (mark_id,)).fetchone()
    return _stored(row) if row else None


def _correctable(conn: psycopg.Connection, mark_id: int, plant_id: str | None) -> StoredMark:
    """The mark to correct: it exists (at ``plant_id`` when given) and is the newest of its chain."""
    old = get_mark(conn, mark_id)
    if old is None or (plant_id is not None and old.plant_id != plant_id):
        raise MarkNotFound(f"mark {mark_id} does not exist" + (f" at plant {plant_id!r}" if plant_id else ""))
    if old.superseded_by is not None:
        raise MarkConflict(f"mark {mark_id} was already corrected by mark {old.superseded_by}; correct mark "
                           f"{old.superseded_by} (the newest of its history) instead", newer=old.superseded_by)
    if old.withdrawn:
        raise MarkConflict(f"mark {mark_id} is a withdrawal (of mark {old.supersedes}); a withdrawn mark stays "
                           "withdrawn: add a new mark instead")
    return old


def correct_mark(conn: psycopg.Connection, mark_id: int, *, mark: str | None = None,
                 starts_at: datetime | None = None, ends_at: datetime | Literal[_Keep.KEEP] | None = KEEP,
                 reason: str, source: str, created_by: str, withdraw: bool = False,
                 plant_id: str | None = None) -> StoredMark:
    """Correct a mark: a new row with the changed fields (the rest kept) that ``supersedes`` it, and the old row's
    ``superseded_by`` set, at once. ``ends_at`` KEEP keeps the end, a time closes or moves it, None reopens it.
    ``withdraw`` removes the mark (a row with ``withdrawn`` set, its fields as they were). ``plant_id`` limits the
    correction to that plant's marks (the API's path). The newest row of a chain is the one that can be corrected:
    correcting an older one is a ``MarkConflict`` naming the newer."""
    old = _correctable(conn, mark_id, plant_id)
    if withdraw and (mark is not None or starts_at is not None or ends_at is not KEEP):
        raise MarkInvalid("withdraw", "a withdrawal removes the mark as it stands: give only the reason (to change "
                                      "the mark instead, leave withdraw out)")
    new_mark = mark if mark is not None else old.mark
    new_start = starts_at if starts_at is not None else old.starts_at
    new_end = old.ends_at if ends_at is KEEP else ends_at
    check_mark_fields(new_mark, new_start, new_end, reason, blame="starts_at" if ends_at is KEEP else "ends_at")
    _check_origin(source, created_by)
    try:
        row = conn.execute(_CORRECT, {"old": mark_id, "mark": new_mark, "starts_at": new_start, "ends_at": new_end,
                                      "reason": reason, "source": source, "created_by": created_by,
                                      "withdrawn": withdraw}).fetchone()
    except psycopg.errors.UniqueViolation:  # a concurrent correction of the same mark won the race
        raise MarkConflict(f"mark {mark_id} was corrected by someone else a moment ago; see its history and "
                           "correct the newest mark") from None
    if row is None:  # corrected or withdrawn between the check above and the statement: say by which
        _correctable(conn, mark_id, plant_id)
        raise MarkConflict(f"mark {mark_id} was corrected a moment ago; see its history")
    return _stored(row)


def mark_history(conn: psycopg.Connection, mark_id: int) -> list[StoredMark]:
    """Every row of the mark's chain of corrections, oldest first, whichever of them ``mark_id`` names; empty when
    there is no such mark."""
    rows = conn.execute(
        "WITH RECURSIVE back(id) AS ("
        "  SELECT %(id)s::bigint UNION SELECT m.supersedes FROM cems_marks m JOIN back ON m.mark_id = back.id"
        "  WHERE m.supersedes IS NOT NULL"
        "), fwd(id) AS ("
        "  SELECT %(id)s::bigint UNION SELECT m.superseded_by FROM cems_marks m JOIN fwd ON m.mark_id = fwd.id"
        "  WHERE m.superseded_by IS NOT NULL"
        f") SELECT {_ROW_SQL} FROM cems_marks WHERE mark_id IN (SELECT id FROM back UNION SELECT id FROM fwd)"
        " ORDER BY mark_id", {"id": mark_id}).fetchall()
    return [_stored(r) for r in rows]


def list_marks(conn: psycopg.Connection, device_ids: Sequence[str], start: datetime | None, end: datetime | None,
               include_superseded: bool = False, *, after: tuple[datetime, int] | None = None,
               limit: int | None = None) -> list[StoredMark]:
    """The devices' marks overlapping [start, end) (None: unbounded), by start: the current ones, or with
    ``include_superseded`` every row (superseded marks and withdrawals too). ``after`` (starts_at, mark_id) and
    ``limit`` page through them."""
    rows = conn.execute(
        f"SELECT {_ROW_SQL} FROM cems_marks WHERE device_id = ANY(%(devices)s)"
        " AND (%(end)s::timestamptz IS NULL OR starts_at < %(end)s)"
        " AND (%(start)s::timestamptz IS NULL OR ends_at IS NULL OR ends_at > %(start)s)"
        " AND (%(all)s OR (superseded_by IS NULL AND NOT withdrawn))"
        " AND (%(after_ts)s::timestamptz IS NULL OR (starts_at, mark_id) > (%(after_ts)s, %(after_id)s::bigint))"
        " ORDER BY starts_at, mark_id LIMIT %(limit)s",
        {"devices": list(device_ids), "start": start, "end": end, "all": include_superseded,
         "after_ts": after[0] if after else None, "after_id": after[1] if after else None, "limit": limit}).fetchall()
    return [_stored(r) for r in rows]
