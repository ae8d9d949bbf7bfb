"""``sanitel marks``: a plant's operating-state marks per furnace line (issue 13; processors/cems_marks.py).

    sanitel marks add --plant P --line L --mark start_up --from 2026-11-28T06:00+08:00 [--to …] --reason "…" [--by NAME]
    sanitel marks list --plant P [--line L] [--from …] [--to …] [--all]
    sanitel marks correct MARK_ID [--mark M] [--from …] [--to …] --reason "…" [--by NAME]
    sanitel marks withdraw MARK_ID --reason "…" [--by NAME]
    sanitel marks history MARK_ID

Who set a mark is ``--by``, else the operating-system user; its source is ``cli``. A mark is never edited: a
correction or a withdrawal is a new mark that supersedes it (the database refuses anything else). Connects as the
API's database role, which may add marks and link corrections but not rewrite or delete them. Output is a table,
times in the plant's time zone, or ``--json`` (times in UTC).
"""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from sanitel.errors import SanitelError

if TYPE_CHECKING:
    import psycopg

    from sanitel.processors.cems_marks import MarkError, StoredMark

# the API's field names as this command's options, so a refusal names the option to fix
_OPTIONS = {"mark": "--mark", "starts_at": "--from", "ends_at": "--to", "reason": "--reason", "created_by": "--by",
            "line": "--line", "withdraw": "withdraw"}
_MARK_CHOICES = ("bake_out", "start_up", "shut_down", "shut", "fault", "accident",
                 "cms_maintenance", "cms_calibration", "cms_fault", "cms_outage")  # cems_marks.MARKS (a test holds it)


def parse_time(text: str) -> datetime:
    """An RFC 3339 / ISO 8601 time with an offset (2026-11-28T06:00+08:00, …Z); argparse's error otherwise."""
    try:
        value = datetime.fromisoformat(text.strip().upper())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time; write e.g. 2026-11-28T06:00+08:00") from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone offset; write e.g. 2026-11-28T06:00+08:00")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("marks", help="operating-state marks of incinerator lines (启炉, 停炉, 故障 …): audit trail")
    msub = p.add_subparsers(dest="marks_command", required=True, metavar="ACTION")
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--json", action="store_true", help="JSON (times in UTC) instead of a table")
    who = argparse.ArgumentParser(add_help=False)
    who.add_argument("--by", help="who sets it (default: the operating-system user)")
    who.add_argument("--reason", required=True, help="why (required)")

    add = msub.add_parser("add", parents=[out, who], help="mark a line's state over a time span")
    add.add_argument("--plant", required=True, help="plant site id")
    add.add_argument("--line", required=True, help="line site id or CEMS device id")
    add.add_argument("--mark", required=True, choices=_MARK_CHOICES)
    add.add_argument("--from", dest="starts_at", required=True, type=parse_time, metavar="TIME", help="start, with offset")
    add.add_argument("--to", dest="ends_at", type=parse_time, metavar="TIME", help="end (exclusive); none while it lasts")
    add.set_defaults(func=run_add)

    ls = msub.add_parser("list", parents=[out], help="a plant's marks (in force; --all: the whole audit trail)")
    ls.add_argument("--plant", required=True, help="plant site id")
    ls.add_argument("--line", help="one line: site id or CEMS device id")
    ls.add_argument("--from", dest="start", type=parse_time, metavar="TIME", help="marks ending after this time")
    ls.add_argument("--to", dest="end", type=parse_time, metavar="TIME", help="marks starting before this time")
    ls.add_argument("--all", action="store_true", help="also corrected and withdrawn marks")
    ls.set_defaults(func=run_list)

    fix = msub.add_parser("correct", parents=[out, who], help="correct a mark (a new mark supersedes it)")
    fix.add_argument("mark_id", type=int)
    fix.add_argument("--mark", choices=_MARK_CHOICES, help="the corrected mark")
    fix.add_argument("--from", dest="starts_at", type=parse_time, metavar="TIME", help="the corrected start")
    fix.add_argument("--to", dest="ends_at", type=parse_time, metavar="TIME", help="corrected end (closes an open mark)")
    fix.set_defaults(func=run_correct)

    wd = msub.add_parser("withdraw", parents=[out, who], help="withdraw a mark (it stays in the history)")
    wd.add_argument("mark_id", type=int)
    wd.set_defaults(func=run_withdraw)

    hist = msub.add_parser("history", parents=[out], help="a mark and every correction of it, oldest first")
    hist.add_argument("mark_id", type=int)
    hist.set_defaults(func=run_history)


def _connect() -> psycopg.Connection:
    from sanitel.db import connect
    from sanitel.settings import load_settings

    return connect(load_settings().database_url_for("api"), autocommit=True)


def _by(args: argparse.Namespace) -> str:
    return str(args.by) if args.by else getpass.getuser()


def _refusal(exc: MarkError) -> SanitelError:
    """A refusal in this command's words: the option to fix rather than the API's field name."""
    from sanitel.processors.cems_marks import MarkInvalid

    if isinstance(exc, MarkInvalid):
        return SanitelError(f"{_OPTIONS.get(exc.field, exc.field)}: {exc.detail}")
    return exc


def run_add(args: argparse.Namespace) -> int:
    from sanitel.processors import cems_marks

    with _connect() as conn:
        try:
            device_id = cems_marks.line_device(conn, args.plant, args.line)
            stored = cems_marks.add_mark(conn, device_id=device_id, mark=args.mark, starts_at=args.starts_at,
                                         ends_at=args.ends_at, reason=args.reason, source="cli", created_by=_by(args))
        except cems_marks.MarkError as exc:
            raise _refusal(exc) from None
        _print(conn, [stored], args.json)
    return 0


def run_list(args: argparse.Namespace) -> int:
    from sanitel.processors import cems_marks

    if args.start and args.end and args.end <= args.start:
        raise SanitelError("--to must be after --from")
    with _connect() as conn:
        try:
            devices = ([cems_marks.line_device(conn, args.plant, args.line)] if args.line
                       else cems_marks.plant_mark_devices(conn, args.plant))
        except cems_marks.MarkError as exc:
            raise _refusal(exc) from None
        _print(conn, cems_marks.list_marks(conn, devices, args.start, args.end, include_superseded=args.all),
               args.json)
    return 0


def run_correct(args: argparse.Namespace) -> int:
    from sanitel.processors import cems_marks

    with _connect() as conn:
        try:
            stored = cems_marks.correct_mark(
                conn, args.mark_id, mark=args.mark, starts_at=args.starts_at,
                ends_at=args.ends_at if args.ends_at is not None else cems_marks.KEEP,
                reason=args.reason, source="cli", created_by=_by(args))
        except cems_marks.MarkError as exc:
            raise _refusal(exc) from None
        _print(conn, [stored], args.json)
    return 0


def run_withdraw(args: argparse.Namespace) -> int:
    from sanitel.processors import cems_marks

    with _connect() as conn:
        try:
            stored = cems_marks.correct_mark(conn, args.mark_id, reason=args.reason, source="cli",
                                             created_by=_by(args), withdraw=True)
        except cems_marks.MarkError as exc:
            raise _refusal(exc) from None
        _print(conn, [stored], args.json)
    return 0


def run_history(args: argparse.Namespace) -> int:
    from sanitel.processors import cems_marks

    with _connect() as conn:
        chain = cems_marks.mark_history(conn, args.mark_id)
        if not chain:
            raise SanitelError(f"mark {args.mark_id} does not exist; 'sanitel marks list --plant P --all' lists them")
        _print(conn, chain, args.json)
    return 0


# --- output ------------------------------------------------------------------------------------------------

COLUMNS = ("id", "line", "device", "mark", "标记", "from", "to", "status", "by", "source", "reason")


def _print(conn: psycopg.Connection, marks: Sequence[StoredMark], as_json: bool) -> None:
    if as_json:
        print(json.dumps([m.as_json() for m in marks], indent=2, ensure_ascii=False))
        return
    if not marks:
        print("no marks")
        return
    zones = {p: _plant_zone(conn, p) for p in {m.plant_id for m in marks}}
    print(format_table([table_row(m, zones[m.plant_id]) for m in marks]))


def _plant_zone(conn: psycopg.Connection, plant_id: str | None) -> ZoneInfo:
    from sanitel.processors.cems_averages import DEFAULT_TZ

    row = conn.execute("SELECT timezone FROM sites WHERE site_id = %s", (plant_id,)).fetchone()
    return ZoneInfo(row[0] if row and row[0] else DEFAULT_TZ)


def table_row(m: StoredMark, zone: ZoneInfo) -> tuple[str, ...]:
    """One mark as the table shows it: times in the plant's zone, to the minute; an open mark's end is 'open'."""
    def local(ts: datetime | None) -> str:
        return ts.astimezone(zone).isoformat(timespec="minutes") if ts else "open"

    status = m.status + (f" by {m.superseded_by}" if m.superseded_by else "")
    return (str(m.mark_id), m.line_id or "-", m.device_id, m.mark, m.mark_zh, local(m.starts_at),
            local(m.ends_at), status, m.created_by, m.source, m.reason)


def format_table(rows: Sequence[tuple[str, ...]]) -> str:
    """Left-aligned columns under ``COLUMNS``; a wide (CJK) character counts as two columns."""
    widths = [max(_width(c) for c in col) for col in zip(COLUMNS, *rows, strict=True)]
    return "\n".join("  ".join(cell + " " * (w - _width(cell)) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in (COLUMNS, *rows))


def _width(text: str) -> int:
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
