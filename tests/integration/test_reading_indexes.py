"""Every reading query of the API, the alert evaluator and the rollups still finds its rows through an index once
migration 0082 dropped the `(device_id, ts DESC)` indexes, and 0088 TimescaleDB's `(ts DESC)` index on sweeper and
station telemetry: the unique `(device_id, ts, seq)` index serves them (a B-tree is scanned backwards as well as
forwards), and what is selected by write time, the `stored_at` BRIN.

The queries are the real functions, run on a connection whose cursors first EXPLAIN each statement they execute
(same text, same parameters); the plans are checked on every chunk of a reading hypertable: no Seq Scan. The tables
hold two days of readings from 20 devices and are ANALYZEd, so the planner chooses by cost, not because the tables
are empty."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from sanitel.alerts import queries
from sanitel.alerts.rules import EventCountRule, RateRule, ThresholdRule, load_rules
from sanitel.api.catalog import metric_for
from sanitel.api.queries import readings
from sanitel.db import load_migrations
from sanitel.processors import rollups

READING_TABLES = ("sweeper_telemetry", "station_telemetry", "bin_deposits", "bin_status", "camera_detections",
                  "cems_readings", "truck_telemetry", "truck_events", "weighbridge_tickets")
END = datetime(2026, 3, 3, tzinfo=UTC)  # data: the two days before; nothing here reads the clock
TZ = "Asia/Shanghai"
DEVICES = 20
# one reading per device every two minutes; stored 5 s after its device time
_FILL = """
    INSERT INTO {table} (device_id, ts, seq, received_at, stored_at{columns})
    SELECT %(prefix)s || d, t, 0, t, t + interval '5 seconds'{values}
    FROM generate_series(1, %(devices)s) d,
         generate_series(%(end)s::timestamptz - interval '2 days', %(end)s::timestamptz - interval '2 minutes',
                         interval '2 minutes') t"""
_FILLS = {
    "sweeper_telemetry": ("sw-", ", soc_pct, battery_temp_max_c", ", 50 + d, 30 + d"),
    "camera_detections": ("cam-", ", point_id, detection, confidence", ", 'pt-' || d, 'mis_sorted', 0.95"),
    "cems_readings": ("cems-", ", dust_mg_m3", ", 5 + d"),
}


_INDEX_SCANS = {"Index Scan", "Index Scan Backward", "Index Only Scan", "Index Only Scan Backward",
                "Bitmap Heap Scan"}  # a Bitmap Heap Scan reads what its Bitmap Index Scan found


def _plan(cursor: psycopg.Cursor[Any], query: Any, params: Any) -> Any:
    explain = sql.SQL("EXPLAIN (FORMAT JSON) ") + (query if isinstance(query, sql.Composable) else sql.SQL(query))
    cursor.execute(explain, params)
    return (cursor.fetchone() or [None])[0]


class _Explaining:
    """Cursor mixin: EXPLAIN a SELECT/WITH/INSERT before running it, recording (statement, plan)."""

    plans: list[tuple[str, Any]]

    @staticmethod
    def _explainable(text: str) -> bool:
        return text.lstrip().split(None, 1)[0].upper() in {"SELECT", "WITH", "INSERT"}


class ExplainingCursor(psycopg.Cursor[Any], _Explaining):
    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        text = query.as_string(self.connection) if isinstance(query, sql.Composable) else str(query)
        if self._explainable(text):
            with psycopg.Cursor(self.connection) as plain:
                _Explaining.plans.append((text, _plan(plain, query, params)))
        return super().execute(query, params, **kwargs)


class AsyncExplainingCursor(psycopg.AsyncCursor[Any], _Explaining):
    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        text = query.as_string(self.connection) if isinstance(query, sql.Composable) else str(query)
        if self._explainable(text):
            async with psycopg.AsyncCursor(self.connection) as plain:
                explain = sql.SQL("EXPLAIN (FORMAT JSON) ") + (
                    query if isinstance(query, sql.Composable) else sql.SQL(query))
                await plain.execute(explain, params)
                row = await plain.fetchone()
                _Explaining.plans.append((text, row[0] if row else None))
        return await super().execute(query, params, **kwargs)


@pytest.fixture
def readings_db(fresh_db: str) -> Iterator[str]:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        for table, (prefix, columns, values) in _FILLS.items():
            conn.execute(sql.SQL(_FILL).format(table=sql.Identifier(table), columns=sql.SQL(columns),
                                               values=sql.SQL(values)),
                         {"prefix": prefix, "devices": DEVICES, "end": END})
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
    _Explaining.plans = []
    yield fresh_db


def _chunks(db: str) -> dict[str, str]:
    """Chunk → its reading hypertable."""
    with psycopg.connect(db) as conn:
        return dict(conn.execute("SELECT chunk_name, hypertable_name FROM timescaledb_information.chunks"
                                 " WHERE hypertable_name = ANY(%s)", (list(READING_TABLES),)).fetchall())


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


def _scans(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    return (n for n in _nodes(node) if "Relation Name" in n)


def _reading_scans(db: str) -> list[tuple[str, str, str, str | None]]:
    """(statement, chunk, scan, index) of every scan of a reading hypertable's chunk (the hypertable itself is the
    ChunkAppend above them); scan is the node type, with " Backward" when an index is read newest first."""
    chunks = _chunks(db)
    out = []
    for text, plan in _Explaining.plans:
        for node in _scans(plan[0]["Plan"]):
            relation = node["Relation Name"]
            if relation in chunks:
                backward = " Backward" if node.get("Scan Direction") == "Backward" else ""
                out.append((" ".join(text.split()), relation, node["Node Type"] + backward,
                            node.get("Index Name")))
    return out


def _rules() -> dict[str, Any]:
    ruleset, _ = load_rules()
    return ruleset.rules


def test_the_device_ts_indexes_are_gone_and_the_unique_and_time_indexes_remain(fresh_db: str) -> None:
    with psycopg.connect(fresh_db) as conn:
        indexes = {(t, i) for t, i in conn.execute(
            "SELECT tablename, indexname FROM pg_indexes WHERE tablename = ANY(%s)", (list(READING_TABLES),))}
        # and on the chunks, which inherit the hypertable's indexes
        chunk_indexes = conn.execute(
            "SELECT count(*) FROM pg_indexes i JOIN timescaledb_information.chunks c ON c.chunk_name = i.tablename"
            " WHERE c.hypertable_name = ANY(%s) AND i.indexname LIKE '%%_device_ts'", (list(READING_TABLES),)
        ).fetchone()
    for table in READING_TABLES:
        assert (table, f"{table}_device_ts") not in indexes
        # TimescaleDB's, dropped by 0088 on the two telemetry tables only
        assert ((table, f"{table}_ts_idx") in indexes) is (table not in ("sweeper_telemetry", "station_telemetry"))
        assert any(i.endswith("_seq_key") for t, i in indexes if t == table)  # the unique index: idempotence
    assert ("bin_deposits", "bin_deposits_household_ts") in indexes  # other leading columns: kept
    assert chunk_indexes == (0,)


def test_the_migration_is_safe_to_repeat(fresh_db: str) -> None:
    [migration] = [m for m in load_migrations() if m.version == "0082"]
    with psycopg.connect(fresh_db) as conn:
        conn.execute(migration.sql)  # on a database that already applied it: nothing to drop, no error
        conn.execute("CREATE INDEX sweeper_telemetry_device_ts ON sweeper_telemetry (device_id, ts DESC)")
        conn.execute(migration.sql)  # on one that still has them (created before 0082): dropped
        assert conn.execute("SELECT to_regclass('sweeper_telemetry_device_ts')").fetchone() == (None,)


def test_api_reading_queries_use_an_index_on_every_chunk(readings_db: str) -> None:
    soc, dust = metric_for("sweeper", "soc_pct"), metric_for("cems", "dust_mg_m3")
    assert soc is not None and dust is not None

    with psycopg.connect(readings_db, autocommit=True) as conn:  # rows of two hours stored after a watermark
        conn.execute("INSERT INTO stored_spans (table_name, stored_at, spans) VALUES ('sweeper_telemetry', %s,"
                     " tstzmultirange(tstzrange(%s, %s, '[]')))", (END, END - timedelta(hours=3),
                                                                  END - timedelta(hours=1)))

    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(readings_db, cursor_factory=AsyncExplainingCursor) as conn:
            assert await readings.latest_of_device(conn, "sweeper_telemetry", "sw-3") is not None
            # the buckets a rollup does not hold yet (migration 0087): the spans, probed through the unique index
            assert len(await readings.unrolled_buckets(conn, "sweeper_telemetry", "sw-3", END - timedelta(days=1),
                                                       END - timedelta(hours=6), END, timedelta(minutes=5), TZ)) == 25
            assert len(await readings.latest_of_devices(conn, "sweeper_telemetry", ["sw-1", "sw-2"])) == 2
            for metric, device in ((soc, "sw-3"), (dust, "cems-3")):
                assert await readings.raw_history(conn, metric, device, END - timedelta(hours=1), END, None, 100,
                                                  None)
                assert await readings.bucketed_history(conn, metric, device, END - timedelta(hours=6), END,
                                                       timedelta(minutes=5), "avg", TZ, None)
                assert await readings.bucketed_history_in(
                    conn, metric, device, [(END - timedelta(hours=3), END - timedelta(hours=2))],
                    timedelta(minutes=5), "avg", TZ, None)

    asyncio.run(run())
    scans = _reading_scans(readings_db)
    assert len(_Explaining.plans) == 9 and len({statement for statement, *_ in scans}) == 9
    assert [s for s in scans if s[2] not in _INDEX_SCANS] == []
    # the late-bucket probe reads the unique index once per span (its bounds in the index condition), never the
    # device's rows over the whole request
    [unrolled] = [plan for text, plan in _Explaining.plans if "stored_spans" in text]
    probes = [n for n in _nodes(unrolled[0]["Plan"]) if (n.get("Index Name") or "").endswith("_seq_key")]
    assert probes and all("lower(" in n["Index Cond"] and "upper(" in n["Index Cond"] for n in probes)
    latest = [s for s in scans if "LIMIT 1" in s[0]]
    assert latest and all(s[2] == "Index Scan Backward" and (s[3] or "").endswith("_seq_key") for s in latest)


def test_evaluator_reading_queries_by_device_use_an_index_on_every_chunk(readings_db: str) -> None:
    rules = _rules()
    low_soc, rising, mis_sorting = rules["sweeper_low_soc"], rules["sweeper_battery_temp_rising"], \
        rules["camera_mis_sorting"]
    assert isinstance(low_soc, ThresholdRule) and isinstance(rising, RateRule)
    assert isinstance(mis_sorting, EventCountRule)
    sweepers = [queries.Request("sw-3", "sw-3", TZ, END - timedelta(minutes=30))]
    cameras = [queries.Request("cam-3", "cam-3", TZ, END - timedelta(hours=1))]
    upto = END + timedelta(hours=1)
    with psycopg.connect(readings_db, cursor_factory=ExplainingCursor) as conn:
        assert queries.reading_rows(conn, low_soc, sweepers, upto, lookback=5)
        assert queries.rate_rows(conn, rising, sweepers, upto)
        assert queries.window_rows(conn, mis_sorting, cameras, upto)
        assert queries.previous_reading(conn, ["sweeper_telemetry"], {"sw-3": END - timedelta(minutes=10)},
                                        END - timedelta(days=1))

    scans = _reading_scans(readings_db)
    assert len({statement for statement, *_ in scans}) == 4  # each reads reading chunks
    assert len({chunk for _, chunk, _, _ in scans}) == 3  # two days of sweeper_telemetry, one camera_detections chunk
    assert [s for s in scans if s[2] not in _INDEX_SCANS] == []
    [previous] = [s for s in scans if "max(t.ts)" in s[0]]  # newest before an instant: the unique index, backwards
    assert previous[2].endswith("Backward") and (previous[3] or "").endswith("_seq_key")


def _by_stored_at(conn: psycopg.Connection) -> None:
    """The queries that select what was stored lately, across devices: the evaluator's changes (its data clock is
    their newest device time) and the rollup refresh."""
    upto = END + timedelta(hours=1)
    assert queries.changes(conn, "sweeper_telemetry", END - timedelta(minutes=5), upto, END - timedelta(days=1))
    rollups.refresh(conn, "sweeper_telemetry", END - timedelta(minutes=10), upto)


def _plans_without_costs(plans: list[tuple[str, Any]]) -> list[str]:
    return [str(_shape(plan[0]["Plan"])) for _, plan in plans]


def _shape(node: dict[str, Any]) -> tuple[Any, ...]:
    return (node["Node Type"], node.get("Relation Name"), node.get("Index Name"),
            tuple(_shape(child) for child in node.get("Plans", [])))


def test_queries_by_stored_at_never_used_the_dropped_index_and_have_an_index_path(readings_db: str) -> None:
    """Selected by stored_at across devices, these read small chunks whole (cheaper than the BRIN at this size);
    the dropped index could not serve them: their plans are the same with it restored. With sequential scans
    priced out — as on a large chunk — every chunk is read through an index: the stored_at BRIN (TimescaleDB's ts
    index, which could serve them too, is dropped on sweeper and station telemetry by migration 0088)."""
    with psycopg.connect(readings_db, cursor_factory=ExplainingCursor) as conn:
        _by_stored_at(conn)
        conn.rollback()
        without = _plans_without_costs(_Explaining.plans)
        _Explaining.plans = []
        conn.execute("CREATE INDEX sweeper_telemetry_device_ts ON sweeper_telemetry (device_id, ts DESC)")
        _by_stored_at(conn)
        conn.rollback()
        assert _plans_without_costs(_Explaining.plans) == without
        _Explaining.plans = []
        conn.execute("SET enable_seqscan = off")
        _by_stored_at(conn)
        conn.rollback()

    scans = _reading_scans(readings_db)
    assert len({statement for statement, *_ in scans}) == 2
    assert [s for s in scans if s[2] not in _INDEX_SCANS] == []
