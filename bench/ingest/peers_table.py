"""The side-by-side table of issue 16 from the peer harness's ``results/raw.jsonl`` lines (no I/O here).

Each line is one measured run of one peer (``../shared/bench-peers/measure.py``). ``bench/ingest/peers.py`` adds two
keys when it collects them: ``round`` (the round of the benchmark; every peer runs once per round, so "the same run"
means the same round) and ``broker`` (``"inflight 0"``: the harness's broker, ``max_inflight_messages 0``;
``"inflight 20"``: Mosquitto's default). A line without them (a plain harness run) counts as round ``run``, broker
``"inflight 0"``.

Ratios are taken run by run against the peer measured in the same round on the same broker, then the median of those
per-round ratios is shown (so drift between rounds cancels out); rates and costs are medians with their range. Only
runs the harness marks ``complete`` and could time enter a median; the others are listed in the footnotes.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

Line = dict[str, Any]

DEFAULT_BROKER = "inflight 0"
DEFAULT_INFLIGHT_BROKER = "inflight 20"
DASH = "—"
REFERENCE_PEER = "backlog-nodered-batch500"
"""The peer every ratio is taken against: the fastest peer the harness measures (its README)."""
REFERENCE_LIVE_PEER = "nodered-batch500"


@dataclass(frozen=True)
class Consumer:
    """One row of the table: which harness peers (by name, on which broker) measure it."""

    label: str
    backlog: str | None
    live: str | None = None
    broker: str = DEFAULT_BROKER
    cpu_unmeasured: str | None = None  # why the harness cannot see this consumer's own CPU


X2_CPU = ("the harness measures only the wrapper script two_collectors.sh, not the two collectors "
          "(bench-peers README)")
WORKERS_CPU = ("the harness reads /proc/<pid>/stat of the parent process only; the worker processes' CPU is not in "
               "it until they are reaped")

CONSUMERS: tuple[Consumer, ...] = (
    Consumer("Node-RED 4.1, join 500 → multi-row INSERT, acks on receipt", REFERENCE_PEER, REFERENCE_LIVE_PEER),
    Consumer("sanitel, one collector", "backlog-sanitel", "sanitel"),
    Consumer("sanitel, two collectors on a shared subscription", "backlog-sanitel-x2", "sanitel-x2",
             cpu_unmeasured=X2_CPU),
    Consumer("sanitel, `collector --workers N`", "backlog-sanitel-workers", None, cpu_unmeasured=WORKERS_CPU),
    Consumer("Node-RED 4.1, broker at Mosquitto's default `max_inflight_messages 20`", REFERENCE_PEER, None,
             DEFAULT_INFLIGHT_BROKER),
    Consumer("sanitel, one collector, broker at Mosquitto's default `max_inflight_messages 20`", "backlog-sanitel",
             None, DEFAULT_INFLIGHT_BROKER),
)


@dataclass(frozen=True)
class Spread:
    """Median and range of one figure over the rounds."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return float(statistics.median(self.values))

    def text(self, fmt: Callable[[float], str], unit: str = "") -> str:
        """``median unit (low–high)``; the range only when the rounds differ at the shown precision."""
        if not self.values:
            return DASH
        low, high = min(self.values), max(self.values)
        main = fmt(self.median) + unit
        if len(self.values) == 1 or fmt(low) == fmt(high):
            return main
        return f"{main} ({fmt(low)}–{fmt(high)})"

    def as_json(self) -> dict[str, Any] | None:
        if not self.values:
            return None
        return {"median": self.median, "min": min(self.values), "max": max(self.values), "values": list(self.values)}


def spread(values: Iterable[float | None]) -> Spread:
    return Spread(tuple(v for v in values if v is not None))


@dataclass
class Row:
    consumer: Consumer
    live: Spread
    live_share_of_publisher: Spread
    drain: Spread
    drain_ratio: Spread
    consumer_cpu_ms: Spread
    postgres_cpu_ms: Spread
    postgres_ratio: Spread
    notes: list[str] = field(default_factory=list)


def annotate(line: Line, round_no: int | None = None, broker: str | None = None, name: str | None = None) -> Line:
    """A copy of a harness line with its round, broker and (for a renamed variant) peer name set."""
    out = dict(line)
    out["round"] = round_no if round_no is not None else out.get("round", out.get("run", 1))
    out["broker"] = broker or out.get("broker", DEFAULT_BROKER)
    if name:
        out["harness_name"] = out["name"]
        out["name"] = name
    return out


def _index(lines: Iterable[Line]) -> dict[tuple[str, str], dict[int, Line]]:
    """(peer, broker) → round → line; a later line for the same round replaces an earlier one."""
    idx: dict[tuple[str, str], dict[int, Line]] = {}
    for raw in lines:
        line = annotate(raw)
        idx.setdefault((line["name"], line["broker"]), {})[int(line["round"])] = line
    return idx


def _complete(runs: dict[int, Line]) -> dict[int, Line]:
    """Runs that count: complete, and timed (a drain over before the first poll has no rate and no cost)."""
    return {r: line for r, line in runs.items() if line.get("status") == "complete" and line.get("rows_per_s")}


def rows_landed(line: Line) -> int | None:
    """Distinct readings in the table at the end of the run (duplicates are not work done)."""
    value = line.get("distinct_keys", line.get("rows_final"))
    return int(value) if value else None


def postgres_ms_per_row(line: Line) -> float | None:
    rows, cpu = rows_landed(line), line.get("postgres_cpu_s")
    if not rows or cpu is None:
        return None
    return 1000.0 * float(cpu) / rows


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _rate(line: Line) -> float | None:
    value = line.get("rows_per_s")
    return float(value) if value else None


def _quality_notes(peer: str, broker: str, runs: dict[int, Line]) -> list[str]:
    notes = []
    for r, line in sorted(runs.items()):
        problems = []
        if line.get("status") != "complete":
            problems.append(f"status {line.get('status')}" + (f" ({line['error']})" if line.get("error") else ""))
        if line.get("status") == "complete" and not line.get("rows_per_s"):
            problems.append("all rows were in the table at the first poll: too few readings to time the drain; "
                            "left out of the medians")
        for key in ("lost", "duplicates"):
            if line.get(key):
                problems.append(f"{key} {line[key]:,}")
        if problems:
            notes.append(f"`{peer}` ({broker}) round {r}: " + ", ".join(problems)
                         + ("; left out of the medians" if line.get("status") != "complete" else ""))
    return notes


def build_rows(lines: Iterable[Line], consumers: Sequence[Consumer] = CONSUMERS) -> list[Row]:
    """One row per consumer that has at least one line; ratios per round against REFERENCE_PEER on that broker."""
    idx = _index(lines)
    rows = []
    for c in consumers:
        backlog_all = idx.get((c.backlog, c.broker), {}) if c.backlog else {}
        live_all = idx.get((c.live, c.broker), {}) if c.live else {}
        if not backlog_all and not live_all:
            continue
        backlog, live = _complete(backlog_all), _complete(live_all)
        ref = _complete(idx.get((REFERENCE_PEER, c.broker), {}))
        ref_live = _complete(idx.get((REFERENCE_LIVE_PEER, c.broker), {}))
        # cost per reading: from the drain when there is one (it ranks consumers), else from the live runs
        cost_runs, cost_ref = (backlog, ref) if backlog else (live, ref_live)
        cpu_ms = spread(None if c.cpu_unmeasured else line.get("peer_cpu_ms_per_row") for line in cost_runs.values())
        rows.append(Row(
            consumer=c,
            live=spread(_rate(line) for line in live.values()),
            live_share_of_publisher=spread(_ratio(_rate(line), line.get("publish_msg_per_s")) for line in live.values()),
            drain=spread(_rate(line) for line in backlog.values()),
            drain_ratio=spread(_ratio(_rate(line), _rate(ref[r])) for r, line in backlog.items() if r in ref),
            consumer_cpu_ms=cpu_ms,
            postgres_cpu_ms=spread(postgres_ms_per_row(line) for line in cost_runs.values()),
            postgres_ratio=spread(_ratio(postgres_ms_per_row(line), postgres_ms_per_row(cost_ref[r]))
                                  for r, line in cost_runs.items() if r in cost_ref),
            notes=(_quality_notes(c.backlog, c.broker, backlog_all) if c.backlog else [])
            + (_quality_notes(c.live, c.broker, live_all) if c.live else []),
        ))
    return rows


def _int(x: float) -> str:
    return f"{x:,.0f}"


def _times(x: float) -> str:
    return f"{x:.2f}"


def _ms(x: float) -> str:
    return f"{x:.3f}"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}"


class _Footnotes:
    """Numbered footnotes, one per distinct text."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"


def _cell(s: Spread, fmt: Callable[[float], str], unit: str, notes: _Footnotes, why_missing: str) -> str:
    return s.text(fmt, unit) if s.values else f"{DASH} {notes.mark(why_missing)}"


def render_markdown(rows: Sequence[Row], extra_notes: Sequence[str] = ()) -> str:
    notes = _Footnotes()
    out = ["| consumer | live rows/s; share of the publisher's rate | backlog drain rows/s (median, range) | "
           "ratio to the best peer in the same run | consumer CPU per row | PostgreSQL CPU per row | "
           "PostgreSQL CPU per row ÷ Node-RED's |",
           "|---|---|---|---|---|---|---|"]
    for row in rows:
        c = row.consumer
        live = (f"{row.live.text(_int)}; {row.live_share_of_publisher.text(_pct, ' %')} of the publisher's"
                if row.live.values else
                f"{DASH} {notes.mark('not run live: the drain of a queued backlog ranks consumers (bench-peers README)')}")
        not_drained = "no complete backlog run"
        cpu_why = c.cpu_unmeasured or "no complete run with the consumer's CPU"
        is_reference = c.backlog == REFERENCE_PEER
        out.append(" | ".join([
            f"| {c.label}",
            live,
            _cell(row.drain, _int, "", notes, not_drained),
            "1.00× (the reference)" if is_reference and row.drain.values else
            _cell(row.drain_ratio, _times, "×", notes, f"no complete `{REFERENCE_PEER}` run in the same round"),
            _cell(row.consumer_cpu_ms, _ms, " ms", notes, cpu_why),
            _cell(row.postgres_cpu_ms, _ms, " ms", notes, "no complete run"),
            "1.00× (the reference)" if is_reference and row.postgres_cpu_ms.values else
            _cell(row.postgres_ratio, _times, "×", notes, "no complete Node-RED run in the same round"),
        ]) + " |")
        for text in row.notes:
            notes.mark(text)
    out.append("")
    out.append("Ratios are per round (same broker, same database, same readings), then the median over the rounds. "
               "CPU per row: from the backlog drain when there is one (consumer: its CPU after start-up ÷ rows; "
               "PostgreSQL: all postgres processes from the consumer's start to the last row ÷ distinct rows), "
               "else from the live runs. The harness counts as PostgreSQL every process named `postgres` on the "
               "machine (bench-peers procstat.group_cpu), other clusters included: on a shared machine the "
               "PostgreSQL figures are an upper bound.")
    out.extend(f"{i}. {text}" for i, text in enumerate([*notes.texts, *extra_notes], start=1))
    return "\n".join(out) + "\n"


def rows_as_json(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [{"consumer": r.consumer.label, "backlog_peer": r.consumer.backlog, "live_peer": r.consumer.live,
             "broker": r.consumer.broker, "live_rows_per_s": r.live.as_json(),
             "live_share_of_publisher": r.live_share_of_publisher.as_json(),
             "drain_rows_per_s": r.drain.as_json(), "drain_ratio_to_reference": r.drain_ratio.as_json(),
             "consumer_cpu_ms_per_row": r.consumer_cpu_ms.as_json(),
             "postgres_cpu_ms_per_row": r.postgres_cpu_ms.as_json(),
             "postgres_cpu_ratio_to_reference": r.postgres_ratio.as_json(),
             "cpu_unmeasured": r.consumer.cpu_unmeasured, "notes": r.notes} for r in rows]
