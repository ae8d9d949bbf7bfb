"""Batched, idempotent writes of decoded messages into TimescaleDB.

One transaction per batch: rows are binary-COPYed into per-session staging tables and moved with
``INSERT … SELECT … ON CONFLICT DO NOTHING`` (COPY-class speed, and a redelivered message adds
nothing); rejected readings go to ``dead_letters``; ``device_last_seen`` is upserted. Only after
``write`` returns may the caller acknowledge the messages to the broker.

Errors: ``DatabaseUnavailable`` when the database cannot be reached (the caller spools); a row the
database refuses (a constraint the schema did not catch) is isolated and dead-lettered as
``storage_rejected`` — one poison message never blocks the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from sanitel.processors.derive import DERIVATIONS
from sanitel.schemas.readings import READING_TYPES, table_columns
from sanitel.schemas.records import Decoded, Rejection, Row

log = logging.getLogger("sanitel.writer")


class DatabaseUnavailable(Exception):
    """The database cannot be reached now; the batch was not written."""


@dataclass(slots=True)
class Message:
    """A received message and what decoding made of it."""

    topic: str
    payload: bytes
    received_at: datetime
    decoded: Decoded


@dataclass
class WriteResult:
    inserted: Counter[str] = field(default_factory=Counter)  # by table
    duplicates: Counter[str] = field(default_factory=Counter)  # by table: rows already there
    accepted: Counter[str] = field(default_factory=Counter)  # readings by kind
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, reason_code)
    lags_s: list[float] = field(default_factory=list)  # device time → commit, sampled


_COLUMNS = {t.table: table_columns(t) for t in READING_TYPES}
_KIND_OF_TABLE = {t.table: t.kind for t in READING_TYPES}
_DEAD_LETTER_COLUMNS = ("received_at", "topic", "payload", "reason_code", "reason", "reading_index", "kind",
                        "device_id", "collector_id", "message_key")
_LAG_SAMPLES_PER_BATCH = 200
_TEXT_OID, _BPCHAR_OID = 25, 1042


class ReadingWriter:
    """Owns one connection. Not thread-safe: one writer per writer thread."""

    def __init__(self, url: str, *, collector_id: str, auto_register: bool) -> None:
        self.url = url
        self.collector_id = collector_id
        self.auto_register = auto_register
        self._conn: psycopg.Connection | None = None
        self._device_kinds: dict[str, str] = {}
        self._hj212_passwords: dict[str, str | None] = {}
        self._copy_types: dict[str, list[int]] = {}

    # --- connection ------------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = psycopg.connect(self.url, connect_timeout=5, application_name=f"sanitel {self.collector_id}")
            for table, columns in _COLUMNS.items():
                conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS stage_{table} (LIKE {table} INCLUDING DEFAULTS) "
                             "ON COMMIT DELETE ROWS")
                types: dict[str, int] = dict(conn.execute(
                    "SELECT attname, atttypid::int FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0",
                    (table,)).fetchall())
                # bpchar has no binary dumper in psycopg; its wire format is text's
                self._copy_types[table] = [_TEXT_OID if types[c] == _BPCHAR_OID else types[c] for c in columns]
            conn.commit()
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(str(exc).strip()) from None
        self._conn = conn
        return conn

    def ping(self) -> bool:
        try:
            conn = self._connection()
            conn.execute("SELECT 1")
            conn.rollback()
            return True
        except (DatabaseUnavailable, psycopg.OperationalError):
            self.close()
            return False

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    # --- writing ---------------------------------------------------------------------------
    def write(self, messages: list[Message]) -> WriteResult:
        """Write a batch durably (one transaction). Raises DatabaseUnavailable and leaves nothing half done."""
        try:
            return self._write(messages)
        except psycopg.OperationalError as exc:
            self.close()
            raise DatabaseUnavailable(str(exc).strip()) from None
        except psycopg.Error as exc:
            # A row the database refused: isolate the message(s) that cause it.
            self._rollback()
            if len(messages) == 1:
                return self._write_refused(messages[0], exc)
            log.warning("batch refused (%r); isolating the offending message", exc)
            result = WriteResult()
            for message in messages:
                _merge(result, self.write([message]))
            return result

    def _write(self, messages: list[Message]) -> WriteResult:
        conn = self._connection()
        result = WriteResult()
        kinds = self._resolve_devices(conn, messages)
        rows: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        dead: list[tuple[Any, ...]] = []
        last_seen: dict[str, tuple[datetime, int, datetime]] = {}
        for message in messages:
            for rejection in message.decoded.rejections:
                dead.append(self._dead_letter(message, rejection))
                result.rejected[(rejection.kind or "unknown", rejection.reason_code)] += 1
            for row in message.decoded.rows:
                problem = _registry_problem(row, kinds.get(row.device_id), self._hj212_passwords.get(row.device_id))
                if problem is not None:
                    dead.append(self._dead_letter(message, problem))
                    result.rejected[(row.kind, problem.reason_code)] += 1
                    continue
                derive = DERIVATIONS.get(row.table)
                rows[row.table].append(derive(row.values) if derive else row.values)
                result.accepted[row.kind] += 1
                seen = last_seen.get(row.device_id)
                if seen is None or row.ts >= seen[0]:
                    last_seen[row.device_id] = (row.ts, row.values[2], message.received_at)
        with conn.cursor() as cur:
            for table, table_rows in rows.items():
                inserted = self._copy_and_merge(cur, table, table_rows)
                result.inserted[table] += inserted
                result.duplicates[table] += len(table_rows) - inserted
            if dead:
                cur.executemany(
                    f"INSERT INTO dead_letters ({', '.join(_DEAD_LETTER_COLUMNS)}) "
                    f"VALUES ({', '.join(['%s'] * len(_DEAD_LETTER_COLUMNS))}) ON CONFLICT (message_key) DO NOTHING",
                    dead,
                )
            if last_seen:
                self._upsert_last_seen(cur, last_seen)
        conn.commit()
        committed = datetime.now(UTC)
        step = max(1, sum(len(r) for r in rows.values()) // _LAG_SAMPLES_PER_BATCH)
        result.lags_s = [(committed - r[1]).total_seconds() for rs in rows.values() for r in rs[::step]]
        return result

    def _copy_and_merge(self, cur: psycopg.Cursor, table: str, rows: list[tuple[Any, ...]]) -> int:
        columns = _COLUMNS[table]
        extra_at = len(columns) - 1
        with cur.copy(f"COPY stage_{table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(self._copy_types[table])
            for row in rows:
                if row[extra_at] is not None:
                    row = (*row[:extra_at], Jsonb(row[extra_at]))
                copy.write_row(row)
        cur.execute(f"INSERT INTO {table} SELECT * FROM stage_{table} ON CONFLICT DO NOTHING")
        return cur.rowcount

    @staticmethod
    def _upsert_last_seen(cur: psycopg.Cursor, last_seen: dict[str, tuple[datetime, int, datetime]]) -> None:
        ids = sorted(last_seen)  # a fixed order: two collectors never deadlock on these rows
        cur.execute(
            """
            INSERT INTO device_last_seen (device_id, last_ts, last_seq, last_received)
            SELECT * FROM unnest(%s::text[], %s::timestamptz[], %s::bigint[], %s::timestamptz[])
            ON CONFLICT (device_id) DO UPDATE SET
                last_seq = CASE WHEN EXCLUDED.last_ts >= device_last_seen.last_ts
                                THEN EXCLUDED.last_seq ELSE device_last_seen.last_seq END,
                last_ts = greatest(device_last_seen.last_ts, EXCLUDED.last_ts),
                last_received = greatest(device_last_seen.last_received, EXCLUDED.last_received)
            """,
            (ids, [last_seen[i][0] for i in ids], [last_seen[i][1] for i in ids], [last_seen[i][2] for i in ids]),
        )

    def _resolve_devices(self, conn: psycopg.Connection, messages: list[Message]) -> dict[str, str]:
        """Registered kind of every device in the batch; auto-registers unknown ones when allowed."""
        wanted = {row.device_id: row.kind for m in messages for row in m.decoded.rows}
        missing = [d for d in wanted if d not in self._device_kinds]
        if missing:
            if self.auto_register:
                ids = sorted(missing)
                conn.execute(
                    "INSERT INTO devices (device_id, kind, auto_registered) "
                    "SELECT d, k, true FROM unnest(%s::text[], %s::text[]) AS t (d, k) ON CONFLICT DO NOTHING",
                    (ids, [wanted[i] for i in ids]),
                )
            found = conn.execute("SELECT device_id, kind, metadata->>'hj212_password' FROM devices "
                                 "WHERE device_id = ANY(%s)", (missing,)).fetchall()
            conn.commit()
            for device_id, kind, password in found:
                self._device_kinds[device_id] = kind
                self._hj212_passwords[device_id] = password
        return {d: self._device_kinds[d] for d in wanted if d in self._device_kinds}

    def _dead_letter(self, message: Message, rejection: Rejection) -> tuple[Any, ...]:
        key = hashlib.sha256(
            f"{message.topic}\0{rejection.index}\0{rejection.reason_code}\0".encode() + message.payload
        ).hexdigest()
        return (message.received_at, message.topic, message.payload, rejection.reason_code, rejection.reason[:2000],
                rejection.index, rejection.kind, rejection.device_id, self.collector_id, key)

    def _write_refused(self, message: Message, exc: psycopg.Error) -> WriteResult:
        reason = f"the database refused the message: {exc.diag.message_primary or exc}"
        refused = Decoded(rejections=[Rejection("storage_rejected", reason, None, r.kind, r.device_id)
                                      for r in message.decoded.rows[:1]] or
                          [Rejection("storage_rejected", reason)])
        refused.rejections += message.decoded.rejections
        return self._write([Message(message.topic, message.payload, message.received_at, refused)])

    def _rollback(self) -> None:
        if self._conn is not None:
            try:
                self._conn.rollback()
            except psycopg.Error:
                self.close()


def _registry_problem(row: Row, registered_kind: str | None, hj212_password: str | None) -> Rejection | None:
    if registered_kind is None:
        return Rejection("unknown_device", f"device {row.device_id!r} is not registered (auto-registration is off); "
                         "register it with 'sanitel devices register' or the API", row.index, row.kind, row.device_id)
    if registered_kind != row.kind:
        return Rejection("kind_mismatch", f"device {row.device_id!r} is registered as a {registered_kind}, "
                         f"not a {row.kind}", row.index, row.kind, row.device_id)
    if row.via_hj212 and hj212_password is not None and row.hj212_pw != hj212_password:
        shown = "absent" if row.hj212_pw is None else "wrong"
        return Rejection("hj212_wrong_password", f"PW is {shown} for MN {row.device_id} (devices.metadata"
                         ".hj212_password)", row.index, row.kind, row.device_id)
    return None


def _merge(into: WriteResult, other: WriteResult) -> None:
    into.inserted.update(other.inserted)
    into.duplicates.update(other.duplicates)
    into.accepted.update(other.accepted)
    into.rejected.update(other.rejected)
    into.lags_s.extend(other.lags_s)
