"""Commands of issue #7 (incinerator CEMS):

    sanitel report emissions --plant P [--line L] --day YYYY-MM-DD [--format json|csv|png] [--out FILE]
    sanitel report emissions --plant P [--line L] --year YYYY [--format json|csv] [--out FILE]
    sanitel report recompute --device D --from YYYY-MM-DD [--to YYYY-MM-DD]

and of issue #15 (daily clearance, the weekly street sanitation index):

    sanitel report clearance --district SITE --day YYYY-MM-DD [--format json|csv] [--section S] [--out FILE]
    sanitel report sanitation-index --week YYYY-Www [--district SITE] [--format json|csv] [--out FILE]

(``sanitel hj212-listener``, the HJ 212 TCP intake, is ingest's: ingest/cli.py.)
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sanitel.errors import SanitelError

if TYPE_CHECKING:
    import psycopg


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = sub.add_parser("report", help="emission compliance (GB 18485-2014, EU 2010/75/EU), daily clearance, "
                                           "street sanitation index")
    rsub = report.add_subparsers(dest="report_command", required=True, metavar="REPORT")
    em = rsub.add_parser("emissions", help="a plant's (or line's) compliance for one local day, or its annual report")
    em.add_argument("--plant", required=True, help="plant site id")
    em.add_argument("--line", help="one line (line site id or CEMS device id)")
    when = em.add_mutually_exclusive_group(required=True)
    when.add_argument("--day", type=_day, help="local day, YYYY-MM-DD: the daily report")
    when.add_argument("--year", type=_year, help="local calendar year, YYYY: the annual report (EU yearly rules, "
                                                 "GB exceedance days, Order No. 10 marked hours)")
    em.add_argument("--format", choices=("json", "csv", "png"), default="json")
    em.add_argument("--out", type=Path, help="file to write (default: stdout; required for png)")
    em.add_argument("--recompute", action="store_true", help="recompute the day's averages first")
    em.set_defaults(func=run_report)
    rc = rsub.add_parser("recompute", help="recompute a device's averages over local days (after a backfill)")
    rc.add_argument("--device", required=True)
    rc.add_argument("--from", dest="first", required=True, type=_day)
    rc.add_argument("--to", dest="last", type=_day, help="last day, inclusive (default: --from)")
    rc.set_defaults(func=run_recompute)
    cl = rsub.add_parser("clearance", help="daily clearance of a district or street (issue 15): points, routes, "
                                           "tonnage")
    cl.add_argument("--district", required=True, help="site id: a district, a street (estate / urban village) or "
                                                      "any site above sorting points")
    cl.add_argument("--day", required=True, type=_day, help="local day of the site, YYYY-MM-DD")
    cl.add_argument("--format", choices=("json", "csv"), default="json")
    cl.add_argument("--section", choices=("points", "streets", "routes", "tonnage"), default="points",
                    help="the table --format csv writes (json has them all)")
    cl.add_argument("--out", type=Path, help="file to write (default: stdout)")
    cl.set_defaults(func=run_clearance)
    si = rsub.add_parser("sanitation-index", help="weekly street sanitation index, ranked, with week-on-week change "
                                                  "(docs/sanitation-index.md)")
    si.add_argument("--week", required=True, type=_week, help="ISO week, YYYY-Www (the streets' local weeks)")
    si.add_argument("--district", help="site id whose streets to rank (default: every street)")
    si.add_argument("--format", choices=("json", "csv"), default="json")
    si.add_argument("--out", type=Path, help="file to write (default: stdout)")
    si.set_defaults(func=run_sanitation_index)


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day YYYY-MM-DD") from None


def _week(text: str) -> date:
    from sanitel.processors.sanitation_index import parse_week

    try:
        return parse_week(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _year(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) == 4 and 1970 <= int(text) <= 9998):
        raise argparse.ArgumentTypeError(f"{text!r} is not a year YYYY")
    return int(text)


def _connect(*, recompute: bool) -> psycopg.Connection:
    """Reports read as the API's role; recomputing averages writes them, which only the processor's role may."""
    from sanitel.db import connect
    from sanitel.settings import load_settings

    return connect(load_settings().database_url_for("processor" if recompute else "api"), autocommit=True)


def run_report(args: argparse.Namespace) -> int:
    from sanitel.processors import compliance
    from sanitel.processors.cems_averages import local_day_bounds, recompute

    if args.year is not None:
        return run_annual(args)
    if args.format == "png" and args.out is None:
        raise SanitelError("--format png writes a binary file: give --out FILE")
    with _connect(recompute=args.recompute) as conn:
        if args.recompute:
            for device_id in compliance.plant_devices(conn, args.plant, args.line):
                start, end = local_day_bounds(args.day, compliance.plant_timezone(conn, args.plant))
                recompute(conn, device_id, start, end)
        report = compliance.build_report(conn, args.plant, args.day, args.line)
        if not report["lines"]:
            raise SanitelError(f"no CEMS averages for plant {args.plant!r}"
                               f"{f' line {args.line!r}' if args.line else ''} on {args.day}; "
                               "is 'sanitel maintain' running? (or add --recompute)")
        if args.format == "png":
            data: bytes | str = compliance.report_png(
                report, compliance.half_hour_series(conn, args.plant, args.day, args.line))
        elif args.format == "csv":
            data = compliance.report_csv(report)
        else:
            data = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    _emit(data, args.out)
    return 0


def run_annual(args: argparse.Namespace) -> int:
    from sanitel.processors import annual_report

    if args.format == "png":
        raise SanitelError("the annual report is json or csv (--format png draws one day: use --day)")
    if args.recompute:
        raise SanitelError("--recompute recomputes one day: use 'sanitel report recompute --device D --from … --to …'")
    with _connect(recompute=False) as conn:
        report = annual_report.build_annual(conn, args.plant, args.year, args.line)
        if not report["lines"]:
            raise SanitelError(f"no CEMS averages or judgements for plant {args.plant!r}"
                               f"{f' line {args.line!r}' if args.line else ''} in {args.year}")
    data = (annual_report.annual_csv(report) if args.format == "csv"
            else json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    _emit(data, args.out)
    return 0


def _emit(data: bytes | str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(data if isinstance(data, str) else data.decode())
    elif isinstance(data, bytes):
        out.write_bytes(data)
    else:
        out.write_text(data, encoding="utf-8")


def run_recompute(args: argparse.Namespace) -> int:
    from sanitel.processors.cems_averages import device_placement, local_day_bounds, recompute

    last = args.last or args.first
    if last < args.first:
        raise SanitelError("--to is before --from")
    with _connect(recompute=True) as conn:
        tz = device_placement(conn, args.device).tz
        start, _ = local_day_bounds(args.first, tz)
        _, end = local_day_bounds(last, tz)
        n = recompute(conn, args.device, start, end)
    print(f"{n} averages written for {args.device}, {args.first} … {last}")
    return 0



def run_clearance(args: argparse.Namespace) -> int:
    from sanitel.processors import clearance

    with _connect(recompute=False) as conn:
        try:
            report = clearance.build_report(conn, args.district, args.day, datetime.now(UTC))
        except LookupError as exc:
            raise SanitelError(f"{exc.args[0]}; list sites with GET /sites") from None
    data = (clearance.report_csv(report, args.section) if args.format == "csv"
            else json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    _emit(data, args.out)
    return 0


def run_sanitation_index(args: argparse.Namespace) -> int:
    from sanitel.processors import clearance, sanitation_index

    with _connect(recompute=False) as conn:
        if args.district is not None and clearance.site_info(conn, args.district) is None:
            raise SanitelError(f"site {args.district!r} does not exist; list sites with GET /sites")
        report = sanitation_index.build_index(conn, args.district, args.week, datetime.now(UTC))
    data = (sanitation_index.index_csv(report) if args.format == "csv"
            else json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    _emit(data, args.out)
    return 0
