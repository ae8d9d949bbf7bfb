"""Batched, idempotent writes of decoded messages into TimescaleDB.

One transaction per batch: each table's rows are binary-COPYed straight into its hypertable, under a savepoint
(the common batch holds nothing already stored). When that COPY is refused — a redelivered message or a duplicate
violates the unique ``(device_id, ts, seq)`` index, or a value is refused — the table is rolled back to the
savepoint and its rows are binary-COPYed into a per-session staging table and moved with ``INSERT … SELECT … ON
CONFLICT DO NOTHING`` instead, so a redelivered message adds nothing (issue 16: for every batch, the merge cost
PostgreSQL ~1.4× the CPU of the straight COPY). Unknown devices are registered, rejected readings go to the dead
letters and ``device_last_seen`` is upserted, all in that one transaction (while a backlog drains, the last-seen
rows may be held for a later batch's transaction instead: ``processors.last_seen``). Only after ``write`` returns
may the caller acknowledge the messages. The same transaction records the spans of device time it wrote to a
rolled-up table (``processors.stored_spans``), which tell the API what the rollups do not hold yet.

Who may speak for a device (issue 12; the registry is ``processors.registry``, kept current by LISTEN/NOTIFY):

- A reading from a gateway batch (``sanitation/{city}/gateway/{gw}/batch``) is accepted only for a device registered
  behind that gateway (``devices.gateway_id``); any other — unknown ones included — is ``not_behind_gateway``. A
  gateway batch never registers a device.
- A reading on a device's own topic registers its unknown device when ``auto_register`` is on, at most
  ``auto_register_per_minute`` devices per writer (a token bucket: a burst of that many, then that many a minute);
  beyond it, ``auto_register_limited``. Tokens are spent only by a committed registration.
- An HJ 212 frame's PW is checked against ``devices.hj212_password_hash``: wrong or absent →
  ``hj212_wrong_password``; no hash while ``require_hj212_password`` → ``hj212_no_password`` (an unregistered MN
  then is never auto-registered and is refused the same way). The stored value is never echoed.

What is in a batch never stops it. When the database refuses a batch for its content — any error but an
unavailable database: a value PostgreSQL cannot store, a constraint the schema did not catch, an identifier
it cannot register — the transaction is rolled back whole and the batch is isolated at the reading level:
the readings are split and each part retried in a transaction of its own, down to the readings that fail
alone. Where the database names the row (``COPY stage_…, line N``), or the driver fails while encoding one,
that reading is tried alone at once, the readings before it together, and those after it together; otherwise
the readings are bisected. A reading that fails alone is dead-lettered as ``storage_rejected`` with the
database's message, its index, kind and device; every other reading commits. An exception that is not the
database's (a bug in this code path) is isolated the same way and dead-lettered as ``internal_error`` with its
class, so it cannot stall the collector either. Nothing of a failed attempt survives it: each attempt is one
transaction, rolled back on failure (staged rows, registrations and dead letters with it), and the device
cache is only updated after a commit.

A write may follow another writer's commit (``Turn``: the collector's other commit lane): it reads its devices and
COPYs its readings while that commit runs, but registers no device, upserts no last-seen row, writes no dead letter
and does not commit before that commit has settled, so batches commit in the order they came. Should the commit
ahead wait for this write's rows (the same reading in both batches: a redelivery), this write rolls back and raises
``OutOfTurn``, to be written again after it.

``DatabaseUnavailable`` is the only error ``write`` raises for a batch (besides ``OutOfTurn``, which says nothing
of the batch either), and it never depends on the batch:
the connection is lost, or the server cannot take writes now (out of disk or memory, shutting down,
read-only, a lock conflict or deadlock to retry, a missing table or privilege). The caller spools the batch
and replays it later; the writes are idempotent. (Should even the fallback dead letter of a message fail to
commit, the exception is raised: a broken dead-letter table is not the content's fault.)

Dead letters keep the raw payload once per message, capped (``dead_letter_payloads``: the first
``payload_keep_bytes``, the full size and the sha256), and one ``dead_letters`` row per rejected message or
reading refers to it. One message stores at most ``dead_letters_per_message`` such rows and then one
``more_rejections`` row that counts the rest by reason; the metrics count every rejection. Text in a dead letter
is made storable (NUL and lone surrogates escaped), so a dead letter itself is never refused.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
import psycopg
from psycopg.types.json import Jsonb

from sanitel.processors.derive import DERIVATIONS
from sanitel.processors.last_seen import LAST_SEEN_HOLD_S, HeldLastSeen, Seen, merge_seen, upsert_last_seen
from sanitel.processors.registry import DeviceEntry, DeviceRegistry, Hj212Check
from sanitel.processors.stored_spans import SPANNED_TABLES, record_spans
from sanitel.schemas.readings import READING_TYPES, table_columns
from sanitel.schemas.records import Decoded, Rejection, Row

log = logging.getLogger("sanitel.writer")

T = TypeVar("T")


class DatabaseUnavailable(Exception):
    """The database cannot be reached now; the batch was not written."""


class OutOfTurn(Exception):
    """The write was rolled back: the commit it follows (``Turn``) was waiting for rows this write had COPYed, so
    neither could go on. Nothing of it is left; write it again once that commit has settled."""


@dataclass(frozen=True, slots=True)
class Turn:
    """The commit a write follows: the one before it, on the collector's other commit lane. The write takes no row
    lock that commit may need and does not commit before it has settled, so batches commit in the order they came
    and the alert evaluator's data clock (the newest reading stored) never runs ahead of a batch still in flight
    (with commits in any order it did: false ``device_offline`` alerts in tests/integration/
    test_truck_ground_truth.py)."""

    settled: Callable[[float], bool]  # waits up to that many seconds; True once it has committed or failed
    session_pid: Callable[[], int | None]  # its database session's backend pid, while it has one


class Message(msgspec.Struct, gc=False):
    """A received message and what decoding made of it (a Struct, made in C: one per message, issue 16)."""

    topic: str
    payload: bytes
    received_at: datetime
    decoded: Decoded


@dataclass
class WriteResult:
    inserted: Counter[str] = field(default_factory=Counter)  # by table
    duplicates: Counter[str] = field(default_factory=Counter)  # by table: rows already there
    accepted: Counter[str] = field(default_factory=Counter)  # readings by kind
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, reason_code), every rejection
    lags_s: list[float] = field(default_factory=list)  # device time → commit, sampled
    auto_registered: int = 0  # devices this batch registered
    auto_register_refused: int = 0  # unknown devices not registered: the auto-registration limit was reached


_COLUMNS = {t.table: table_columns(t) for t in READING_TYPES}
_TS = 1  # a row's device time, in every table's COPY order (schemas/readings.py table_columns)
_KIND_OF_TABLE = {t.table: t.kind for t in READING_TYPES}
_DEAD_LETTER_COLUMNS = ("received_at", "topic", "reason_code", "reason", "reading_index", "kind", "device_id",
                        "collector_id", "message_key", "payload_sha256")
_INSERT_DEAD_LETTERS = (f"INSERT INTO dead_letters ({', '.join(_DEAD_LETTER_COLUMNS)}) "
                        f"VALUES ({', '.join(['%s'] * len(_DEAD_LETTER_COLUMNS))}) ON CONFLICT (message_key) DO NOTHING")
# the row lock taken by DO UPDATE keeps retention from deleting a payload a dead letter is about to refer to
_INSERT_PAYLOADS = (
    "INSERT INTO dead_letter_payloads AS p (sha256, size, payload, first_received_at, last_received_at) "
    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (sha256) DO UPDATE SET "
    "first_received_at = least(p.first_received_at, EXCLUDED.first_received_at), "
    "last_received_at = greatest(p.last_received_at, EXCLUDED.last_received_at) "
    "WHERE EXCLUDED.last_received_at > p.last_received_at OR EXCLUDED.first_received_at < p.first_received_at")
_REASON_MAX_CHARS = 2000
_LAG_SAMPLES_PER_BATCH = 200
_TEXT_OID, _BPCHAR_OID = 25, 1042
_MERGE_AFTER_CONFLICT = 8  # batches of a table that take the staging merge at once after a conflict
_COPY_LINE = re.compile(r"COPY stage_(\w+), line (\d+)(?:, column (\w+))?")
_TURN_CHECK_S = 0.1  # how long a write waits for its turn before it asks whether the commit ahead waits for it

# SQLSTATEs that say the server cannot take writes now, whatever the batch holds: connection exceptions (08),
# insufficient resources (53), shutdown (57P), system errors (58), serialization failures and deadlocks (40),
# read-only transaction (25006), lock not available (55P03), statement timeout (57014), and a schema or
# privilege that is missing (42501, 42P01, 42703, 3F000). The batch is spooled and replayed later.
_UNAVAILABLE_PREFIXES = ("08", "53", "57P", "58", "40")
_UNAVAILABLE_STATES = frozenset({"25006", "55P03", "57014", "42501", "42P01", "42703", "3F000"})


def database_unavailable(exc: BaseException, connection_lost: bool) -> bool:
    """Whether ``exc``, raised while writing (after which the connection is lost, or not), means the database is
    unavailable rather than refusing what it was given."""
    if connection_lost or isinstance(exc, DatabaseUnavailable):
        return True
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:  # raised by the driver, not the server: only a lost connection counts
        return isinstance(exc, psycopg.OperationalError)
    return state.startswith(_UNAVAILABLE_PREFIXES) or state in _UNAVAILABLE_STATES


class TokenBucket:
    """At most ``capacity`` at once, refilled at ``per_minute`` a minute (``clock``: monotonic seconds). Thread-safe."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = max(0, per_minute)
        self._rate_s = self.capacity / 60.0
        self._clock = clock
        self._tokens = float(self.capacity)
        self._at = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.capacity), self._tokens + max(0.0, now - self._at) * self._rate_s)
        self._at = now

    def available(self) -> int:
        with self._lock:
            self._refill()
            return int(self._tokens)

    def take(self, n: int) -> None:
        with self._lock:
            self._refill()
            self._tokens = max(0.0, self._tokens - n)


class RegistrationAllowance:
    """A collector's auto-registrations, shared by its writers (one a commit lane). A writer that registers holds
    it from counting what is left until its transaction has committed or rolled back, so two writers never both
    spend the same allowance; writers that register nothing never touch it (the common batch)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.bucket = TokenBucket(per_minute, clock)
        self.lock = threading.Lock()


class AttemptFailed(Exception):
    """One attempt at writing a set of readings failed (and was rolled back). ``culprit`` is the position of the
    reading that caused it, when known (the database named its COPY line, or the driver failed encoding it)."""

    def __init__(self, cause: BaseException, culprit: int | None = None) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.culprit = culprit


def isolate(items: Sequence[T], attempt: Callable[[list[T]], None],
            failed: AttemptFailed | None = None) -> list[tuple[T, BaseException]]:
    """Write ``items`` with ``attempt`` (one transaction per call; it rolls back and raises AttemptFailed),
    splitting what fails until every failing item stands alone; returns those with the error of their own
    attempt. Every other item is written by exactly one successful attempt. ``failed``: how an attempt at all of
    ``items`` (more than one) already failed — they are split at once.

    A failed part whose culprit is named is split into what precedes it, the culprit alone, and what follows;
    otherwise into halves. k bad items among n cost at most about 2·k·log2(n) attempts, 1 + 3·k when every
    culprit is named. Errors other than AttemptFailed (the database unavailable) propagate.
    """
    refused: list[tuple[T, BaseException]] = []
    todo: list[list[T]] = []
    if failed is not None and len(items) > 1:
        todo.extend(reversed(_split(list(items), failed)))
    elif items:
        todo.append(list(items))
    while todo:
        part = todo.pop()
        try:
            attempt(part)
        except AttemptFailed as failure:
            if len(part) == 1:
                refused.append((part[0], failure.cause))
            else:
                todo.extend(reversed(_split(part, failure)))  # in order: the first part is tried next
    return refused


def _split(part: list[T], failed: AttemptFailed) -> list[list[T]]:
    """Around a named culprit (what precedes it mostly got through already: it commits in one attempt, and what
    follows fails, if at all, at its next culprit), else into halves."""
    culprit = failed.culprit
    if culprit is not None and 0 <= culprit < len(part):
        return [p for p in (part[:culprit], [part[culprit]], part[culprit + 1:]) if p]
    mid = len(part) // 2
    return [part[:mid], part[mid:]]


class _Item(msgspec.Struct, gc=False):  # one per reading: made in C, a third of a slotted dataclass's cost
    """One reading of the batch: its message (by position in the batch) and its row."""

    message: int
    row: Row


@dataclass(slots=True)
class _Progress:
    """The reading an attempt is preparing or encoding, to name it when our side fails on it."""

    position: int | None = None


@dataclass(slots=True)
class _Attempt:
    """What a committed attempt did: its counts, and the registry problems it found (not yet dead-lettered)."""

    result: WriteResult
    problems: list[tuple[int, Rejection]]


@dataclass(slots=True)
class _Devices:
    """The registry as one attempt sees it: every device of its readings that is registered (``entries``), what
    was read in its transaction (``read``: cached only after it commits, read at ``token``), the devices it
    registers and the unknown ones the limit refused."""

    entries: dict[str, DeviceEntry]
    read: dict[str, DeviceEntry]
    token: int
    registered: list[str]
    limited: frozenset[str]


class ReadingWriter:
    """Owns one connection. Not thread-safe: one writer per writer thread.

    ``registry``: shared device cache (the collector starts it, so it follows registry changes); by default one of
    its own, not listening, whose entries live at most ``registry.refresh_s``. ``clock``: monotonic seconds, for the
    auto-registration limit."""

    def __init__(self, url: str, *, collector_id: str, auto_register: bool, payload_keep_bytes: int = 64 * 1024,
                 dead_letters_per_message: int = 100, registry: DeviceRegistry | None = None,
                 auto_register_per_minute: int = 60, require_hj212_password: bool = True,
                 clock: Callable[[], float] = time.monotonic, more_waiting: Callable[[], bool] | None = None) -> None:
        self.url = url
        self.collector_id = collector_id
        self.auto_register = auto_register
        self.payload_keep_bytes = payload_keep_bytes
        self.dead_letters_per_message = dead_letters_per_message
        self.require_hj212_password = require_hj212_password
        self.registry = registry if registry is not None else DeviceRegistry(url, clock=clock)
        self._allowance = RegistrationAllowance(auto_register_per_minute, clock)
        self._registrations = self._allowance.bucket
        self._holds_allowance = False
        self._conn: psycopg.Connection | None = None
        self.session_pid: int | None = None  # the connection's backend, for a write that follows this one's commit
        self._copy_types: dict[str, list[int]] = {}
        self._merge_only: Counter[str] = Counter()  # table → batches left that take the merge at once
        self._turn: Turn | None = None  # the commit the write under way follows, until it has settled
        # whether more messages wait behind the batch being written: its last-seen rows may then be held back
        # (``processors.last_seen``); never, by default
        self._more_waiting = more_waiting or (lambda: False)
        self._held_last_seen = HeldLastSeen(LAST_SEEN_HOLD_S, clock)

    # --- connection ------------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = psycopg.connect(self.url, connect_timeout=5, application_name=f"sanitel {self.collector_id}")
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(_describe(exc)) from None
        try:
            for table, columns in _COLUMNS.items():
                # CHECK constraints too: a value the table refuses is then refused by the COPY, which names its line
                conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS stage_{table} "
                             f"(LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS) ON COMMIT DELETE ROWS")
                types: dict[str, int] = dict(conn.execute(
                    "SELECT attname, atttypid::int FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0",
                    (table,)).fetchall())
                # bpchar has no binary dumper in psycopg; its wire format is text's
                self._copy_types[table] = [_TEXT_OID if types[c] == _BPCHAR_OID else types[c] for c in columns]
            conn.commit()
        except psycopg.Error as exc:  # the set-up does not depend on any batch: the database is not usable now
            with contextlib.suppress(psycopg.Error):
                conn.close()
            raise DatabaseUnavailable(_describe(exc)) from None
        self._conn = conn
        self.session_pid = conn.info.backend_pid
        return conn

    def twin(self) -> ReadingWriter:
        """Another writer on a connection of its own, for a batch that commits while this one's does (the
        collector's second commit lane): the same settings, device cache, auto-registration allowance and held
        last-seen rows."""
        twin = copy.copy(self)
        twin._conn = None
        twin.session_pid = None
        twin._turn = None
        twin._copy_types = {}
        twin._merge_only = Counter()
        twin._holds_allowance = False
        return twin

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
        self.session_pid = None
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def flush_last_seen(self) -> None:
        """Upsert, in a transaction of their own, the last-seen rows held back while a backlog drained (for when no
        batch follows to carry them). Raises DatabaseUnavailable, and they stay held; rows the database refuses (a
        device deleted meanwhile) are dropped, logged, as in a batch's transaction."""
        rows = self._held_last_seen.take_unless_waiting(False)
        if not rows:
            return
        try:
            conn = self._connection()
            with conn.cursor() as cur:
                self._upsert_own_and_held_last_seen(cur, {}, rows)
            conn.commit()
        except BaseException as exc:
            self._held_last_seen.hold(rows)
            if isinstance(exc, psycopg.Error):
                self._recover(exc)  # raises DatabaseUnavailable when that is what it was
            raise

    # --- writing ---------------------------------------------------------------------------
    def _wait_turn(self, conn: psycopg.Connection | None) -> None:
        """Wait until the commit this write follows (``Turn``) has settled. ``conn``: this write's transaction,
        holding rows it COPYed — should that commit's session be waiting for them, raise OutOfTurn (the caller
        rolls back): the two would otherwise wait for each other for ever."""
        turn = self._turn
        if turn is None:
            return
        while not turn.settled(_TURN_CHECK_S):
            ahead = turn.session_pid()
            if conn is None or ahead is None or self.session_pid is None:
                continue
            row = conn.execute("SELECT %s = ANY(pg_blocking_pids(%s))", (self.session_pid, ahead)).fetchone()
            if row is not None and row[0]:
                raise OutOfTurn(f"the commit ahead (session {ahead}) waits for rows this write holds")
        self._turn = None

    def write(self, messages: list[Message], turn: Turn | None = None) -> WriteResult:
        """Write a batch durably: readings and dead letters; after ``turn``'s commit, when given. Raises
        DatabaseUnavailable or OutOfTurn (nothing of the failed attempt is left) and nothing for the batch's
        content."""
        self._turn = turn
        try:
            return self._write(messages)
        finally:
            self._turn = None

    def _write(self, messages: list[Message]) -> WriteResult:
        items = [_Item(i, row) for i, message in enumerate(messages) for row in message.decoded.rows]
        try:  # the common case: one transaction (which only reads the messages' rejection lists)
            return self._attempt(messages, items, [message.decoded.rejections for message in messages]).result
        except AttemptFailed as exc:
            failed = exc
            log.warning("batch of %d messages refused (%s); isolating the readings that cause it",
                        len(messages), _describe(exc.cause))
        self._wait_turn(None)  # the isolation's many transactions come after it: rare, and nothing is held now

        result = WriteResult()
        dead = [list(message.decoded.rejections) for message in messages]  # the isolation adds to these

        def attempt(part: list[_Item]) -> None:
            done = self._attempt(messages, part, None)
            _merge(result, done.result)
            for index, problem in done.problems:
                dead[index].append(problem)

        # a single reading is retried alone, without the dead letters: the failure may have been theirs
        refused = isolate(items, attempt, failed if len(items) > 1 else None)
        for item, cause in refused:
            dead[item.message].append(_refusal(item.row, cause))
        if refused:
            log.warning("dead-lettered %d of %d readings the database refused: %s", len(refused), len(items),
                        "; ".join(f"{messages[i.message].topic} #{i.row.index}: {_describe(c)}"
                                  for i, c in refused[:5]))
        self._write_dead_letters(messages, dead, result)
        return result

    def _attempt(self, messages: list[Message], items: list[_Item],
                 dead: list[list[Rejection]] | None) -> _Attempt:
        """Write these readings in one transaction — and, when ``dead`` is given, the batch's dead letters with
        them (registry problems included); otherwise registry problems are returned for the caller to
        dead-letter. Rolls back and raises AttemptFailed on a refusal, DatabaseUnavailable when unavailable."""
        try:
            return self._attempt_holding_allowance(messages, items, dead)
        finally:
            if self._holds_allowance:  # taken by _resolve_devices for registering: the attempt has ended
                self._holds_allowance = False
                self._allowance.lock.release()

    def _attempt_holding_allowance(self, messages: list[Message], items: list[_Item],
                                   dead: list[list[Rejection]] | None) -> _Attempt:
        conn = self._connection()
        result = WriteResult()
        copied: dict[str, list[int]] = defaultdict(list)  # table → positions in ``items``, in COPY order
        progress = _Progress()
        held: dict[str, Seen] | None = None  # last-seen rows taken to upsert with this batch's own; None: held back
        try:
            devices = self._resolve_devices(conn, items)
            rows: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
            problems: list[tuple[int, Rejection]] = []
            last_seen: dict[str, Seen] = {}
            entries = devices.entries
            for position, item in enumerate(items):
                progress.position = position
                row = item.row
                entry = entries.get(row.device_id)
                # the common reading — on its device's own topic, registered as its kind — needs no more checking
                if entry is None or entry.kind != row.kind or row.gateway_id is not None or row.via_hj212:
                    problem = self._registry_problem(row, entry, devices.limited)
                    if problem is not None:
                        problems.append((item.message, problem))
                        continue
                derive = DERIVATIONS.get(row.table)
                rows[row.table].append(derive(row.values) if derive else row.values)
                copied[row.table].append(position)
                seen = last_seen.get(row.device_id)
                if seen is None or row.ts >= seen[0]:
                    last_seen[row.device_id] = (row.ts, row.values[2], messages[item.message].received_at)
            progress.position = None
            for table, table_rows in rows.items():  # a table holds readings of one kind
                result.accepted[_KIND_OF_TABLE[table]] += len(table_rows)
            with conn.cursor() as cur:
                for table, table_rows in rows.items():
                    inserted = self._store(cur, table, table_rows, copied[table], progress)
                    if table in SPANNED_TABLES:
                        record_spans(cur, table, [r[_TS] for r in table_rows])
                    result.inserted[table] += inserted
                    result.duplicates[table] += len(table_rows) - inserted
                self._wait_turn(conn)  # what follows takes row locks the commit ahead may need, then commits
                if dead is not None:
                    letters = [list(d) for d in dead] if problems else dead  # ``dead`` itself is never changed
                    for index, problem in problems:
                        letters[index].append(problem)
                    problems = []
                    self._stage_dead_letters(cur, messages, letters)
                    _count_rejections(result, letters)
                held = self._held_last_seen.take_unless_waiting(self._more_waiting())
                if held is not None:
                    self._upsert_own_and_held_last_seen(cur, last_seen, held)
            conn.commit()
        except DatabaseUnavailable:
            self._held_last_seen.hold(held or {})  # given back: the transaction failed
            self.close()
            raise
        except OutOfTurn as exc:
            self._held_last_seen.hold(held or {})  # given back: the transaction failed
            self._recover(exc)  # rolled back (DatabaseUnavailable if even that failed)
            raise
        except Exception as exc:
            self._held_last_seen.hold(held or {})  # given back: the transaction failed
            self._recover(exc)  # raises DatabaseUnavailable when that is what it was
            raise AttemptFailed(exc, _culprit(exc, copied, progress)) from exc
        if held is None:
            self._held_last_seen.hold(last_seen)  # committed: a later batch's transaction upserts them
        # committed: only now may the cache learn what this transaction read and registered
        self.registry.remember(devices.read, devices.token)
        self._registrations.take(len(devices.registered))
        result.auto_registered = len(devices.registered)
        result.auto_register_refused = len(devices.limited)
        if devices.limited:
            log.warning("auto-registration limit reached (%d a minute): %d unknown devices not registered, their "
                        "readings dead-lettered as auto_register_limited", self._registrations.capacity,
                        len(devices.limited))
        committed = datetime.now(UTC)
        step = max(1, sum(len(r) for r in rows.values()) // _LAG_SAMPLES_PER_BATCH)
        result.lags_s = [(committed - r[_TS]).total_seconds() for rs in rows.values() for r in rs[::step]]
        return _Attempt(result, problems)

    def _store(self, cur: psycopg.Cursor, table: str, rows: list[tuple[Any, ...]], positions: list[int],
               progress: _Progress) -> int:
        """Store one table's rows of the attempt; returns how many were new (the rest were already there).

        The common batch has no row the table already holds, so it is COPYed straight into the hypertable, under
        a savepoint. Should that COPY be refused — a redelivery or duplicate (a unique violation), or anything the
        content causes — it is rolled back to the savepoint and the rows take the staging merge, which skips what
        is already there and names the line of a reading the database refuses, as before. After a fallback the
        next ``_MERGE_AFTER_CONFLICT`` batches of that table take the merge at once: redeliveries come in runs
        (a reconnect, a replayed spool), and each would otherwise pay for a refused COPY first."""
        if self._merge_only[table] > 0:
            self._merge_only[table] -= 1
            return self._copy_and_merge(cur, table, rows, positions, progress)
        cur.execute("SAVEPOINT fast_copy")
        try:
            self._copy(cur, table, table, rows, positions, progress)
        except Exception as exc:
            conn = cur.connection
            if database_unavailable(exc, conn.closed or conn.broken):
                raise
            cur.execute("ROLLBACK TO SAVEPOINT fast_copy")
            self._merge_only[table] = _MERGE_AFTER_CONFLICT
            return self._copy_and_merge(cur, table, rows, positions, progress)
        cur.execute("RELEASE SAVEPOINT fast_copy")
        return len(rows)

    def _copy_and_merge(self, cur: psycopg.Cursor, table: str, rows: list[tuple[Any, ...]], positions: list[int],
                        progress: _Progress) -> int:
        self._copy(cur, f"stage_{table}", table, rows, positions, progress)
        cur.execute(f"INSERT INTO {table} SELECT * FROM stage_{table} ON CONFLICT DO NOTHING")
        return cur.rowcount

    def _copy(self, cur: psycopg.Cursor, target: str, table: str, rows: list[tuple[Any, ...]], positions: list[int],
              progress: _Progress) -> None:
        """Binary-COPY ``rows`` of ``table`` into ``target`` (the table itself, or its staging table)."""
        columns = _COLUMNS[table]
        extra_at = len(columns) - 1
        with cur.copy(f"COPY {target} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(self._copy_types[table])
            for position, row in zip(positions, rows, strict=True):
                progress.position = position
                if row[extra_at] is not None:
                    row = (*row[:extra_at], Jsonb(row[extra_at]))
                copy.write_row(row)
            progress.position = None

    def _upsert_own_and_held_last_seen(self, cur: psycopg.Cursor, own: dict[str, Seen], held: dict[str, Seen]) -> None:
        """Upsert the batch's last-seen rows and those held for it. The held ones go under a savepoint: a device
        deleted since its reading was committed refuses its row (the foreign key), and that must not refuse this
        batch; they are dropped instead (logged), and the batch's own rows take the usual way."""
        if held:
            cur.execute("SAVEPOINT held_last_seen")
            try:
                self._upsert_last_seen(cur, merge_seen(dict(held), own))
                cur.execute("RELEASE SAVEPOINT held_last_seen")
                return
            except psycopg.Error as exc:
                conn = cur.connection
                if database_unavailable(exc, conn.closed or conn.broken):
                    raise
                cur.execute("ROLLBACK TO SAVEPOINT held_last_seen")
                log.warning("dropped the held last-seen rows of %d devices, refused: %s", len(held), _describe(exc))
        if own:
            self._upsert_last_seen(cur, own)

    @staticmethod
    def _upsert_last_seen(cur: psycopg.Cursor, rows: dict[str, Seen]) -> None:
        upsert_last_seen(cur, rows)  # (a method: tests hold a transaction here, before its commit)

    def _resolve_devices(self, conn: psycopg.Connection, items: list[_Item]) -> _Devices:
        """The registry entry of every device of these readings, from the cache or read in the attempt's
        transaction, registering unknown ones where allowed (in that transaction) up to the limit."""
        ids: set[str] = set()
        candidates: dict[str, str] = {}  # device → kind, for the readings that may register their device
        for item in items:
            row = item.row
            ids.add(row.device_id)
            # never through a gateway batch; an HJ 212 MN only when passwords are not required
            if row.gateway_id is None and not (row.via_hj212 and self.require_hj212_password):
                candidates.setdefault(row.device_id, row.kind)
        token, cached = self.registry.cached(ids)
        missing = sorted(ids - cached.keys())
        read = self.registry.lookup(missing, conn) if missing else {}
        registered: list[str] = []
        limited: frozenset[str] = frozenset()
        unknown = [d for d in missing if d not in read and d in candidates]
        if not (unknown and self.auto_register):
            return _Devices(cached | read, read, token, registered, limited)
        self._wait_turn(conn)  # the commit ahead may register the same devices, or wait for the allowance
        # held until the attempt ends (``_attempt``): the other commit lane counts what is left after this spends it
        self._allowance.lock.acquire()
        self._holds_allowance = True
        try:
            allowed = self._registrations.available()
            register, limited = unknown[:allowed], frozenset(unknown[allowed:])
            if register:
                registered = [r[0] for r in conn.execute(
                    "INSERT INTO devices (device_id, kind, auto_registered) "
                    "SELECT d, k, true FROM unnest(%s::text[], %s::text[]) AS t (d, k) ON CONFLICT DO NOTHING "
                    "RETURNING device_id", (register, [candidates[d] for d in register])).fetchall()]
                read |= self.registry.lookup(register, conn)  # also those another collector registered meanwhile
        except BaseException:
            self._holds_allowance = False
            self._allowance.lock.release()
            raise
        return _Devices(cached | read, read, token, registered, limited)

    def _registry_problem(self, row: Row, entry: DeviceEntry | None, limited: frozenset[str]) -> Rejection | None:
        device = row.device_id
        if row.gateway_id is not None and (entry is None or entry.gateway_id != row.gateway_id):
            # the same words whether the device is unknown or behind another gateway: nothing to enumerate
            return Rejection("not_behind_gateway", f"device {device!r} is not registered behind gateway "
                             f"{row.gateway_id!r}; a gateway may only send readings of its own devices (register "
                             "the device with that gateway)", row.index, row.kind, device)
        if row.via_hj212:
            check = self.registry.check_password(device, entry, row.hj212_pw,
                                                 require_password=self.require_hj212_password)
            if check is Hj212Check.WRONG_PASSWORD:
                shown = "absent" if row.hj212_pw is None else "wrong"
                return Rejection("hj212_wrong_password", f"PW is {shown} for MN {device} (it does not match the "
                                 "registered HJ 212 password)", row.index, row.kind, device)
            if check is Hj212Check.NO_PASSWORD or (check is Hj212Check.UNKNOWN_DEVICE and self.require_hj212_password):
                registered = "has no registered HJ 212 password" if entry is not None else "is not registered"
                return Rejection("hj212_no_password", f"MN {device} {registered}, and frames need one "
                                 "(SANITEL_HJ212_REQUIRE_PASSWORD); set it with the device's HJ 212 password",
                                 row.index, row.kind, device)
        if entry is None:
            if device in limited:
                return Rejection("auto_register_limited", f"device {device!r} is not registered, and this collector "
                                 f"registered {self._registrations.capacity} devices in the last minute "
                                 "(SANITEL_AUTO_REGISTER_PER_MINUTE); register it with 'sanitel devices register' or "
                                 "the API", row.index, row.kind, device)
            return Rejection("unknown_device", f"device {device!r} is not registered (auto-registration is off); "
                             "register it with 'sanitel devices register' or the API", row.index, row.kind, device)
        if entry.kind != row.kind:
            return Rejection("kind_mismatch", f"device {device!r} is registered as a {entry.kind}, "
                             f"not a {row.kind}", row.index, row.kind, device)
        return None

    # --- dead letters ----------------------------------------------------------------------
    def _write_dead_letters(self, messages: list[Message], dead: list[list[Rejection]], result: WriteResult) -> None:
        """Commit the dead letters of a batch whose readings were isolated. Should that fail for anything but an
        unavailable database (a bug: they are made storable), each message gets one ``internal_error`` dead
        letter with its payload instead; should that fail too, the error is raised."""
        if not any(dead):
            return
        try:
            self._commit_dead_letters(messages, dead)
        except AttemptFailed as failed:
            log.error("the dead letters of a batch could not be stored (%s); storing one internal_error per message",
                      _describe(failed.cause))
            fallback = [[Rejection("internal_error", f"the dead letters of this message could not be stored: "
                                   f"{_describe(failed.cause)}")] if d else [] for d in dead]
            try:
                self._commit_dead_letters(messages, fallback)
            except AttemptFailed as again:
                raise again.cause from None
        _count_rejections(result, dead)

    def _commit_dead_letters(self, messages: list[Message], dead: list[list[Rejection]]) -> None:
        conn = self._connection()
        try:
            with conn.cursor() as cur:
                self._stage_dead_letters(cur, messages, dead)
            conn.commit()
        except Exception as exc:
            self._recover(exc)
            raise AttemptFailed(exc) from exc

    def _stage_dead_letters(self, cur: psycopg.Cursor, messages: list[Message], dead: list[list[Rejection]]) -> None:
        """Insert the payload (once per message) and the dead-letter rows of every message with rejections."""
        payloads: dict[str, tuple[str, int, bytes, datetime, datetime]] = {}
        letters: list[tuple[Any, ...]] = []
        for message, rejections in zip(messages, dead, strict=True):
            if not rejections:
                continue
            digest = hashlib.sha256(message.payload).hexdigest()
            at = message.received_at
            if digest in payloads:  # the same payload twice in a batch (a redelivery): one row
                _, size, kept, first, last = payloads[digest]
                payloads[digest] = (digest, size, kept, min(first, at), max(last, at))
            else:
                payloads[digest] = (digest, len(message.payload), message.payload[:self.payload_keep_bytes], at, at)
            letters += self.dead_letter_rows(message, rejections, digest)
        if not letters:
            return
        # a fixed order: two collectors writing the same payloads or keys never deadlock
        cur.executemany(_INSERT_PAYLOADS, [payloads[d] for d in sorted(payloads)])
        letters.sort(key=lambda letter: str(letter[8]))  # message_key
        cur.executemany(_INSERT_DEAD_LETTERS, letters)

    def dead_letter_rows(self, message: Message, rejections: list[Rejection], digest: str) -> list[tuple[Any, ...]]:
        """The ``dead_letters`` rows of one message (``_DEAD_LETTER_COLUMNS``): one per rejection, message-level
        ones first, then by reading index, at most ``dead_letters_per_message``; then one ``more_rejections``
        row counting the rest by reason. Keys are stable, so a redelivered message adds no row."""
        ordered = sorted(rejections, key=lambda r: (r.index is not None, r.index or 0))  # stable: ties keep order
        kept, rest = ordered[:self.dead_letters_per_message], ordered[self.dead_letters_per_message:]
        occurrences: Counter[tuple[int | None, str]] = Counter()
        rows: list[tuple[Any, ...]] = []
        for r in kept:
            nth = occurrences[(r.index, r.reason_code)]
            occurrences[(r.index, r.reason_code)] += 1
            key = _message_key(message, f"{r.index}\0{r.reason_code}\0", nth)
            rows.append(self._letter(message, r.reason_code, r.reason, r.index, r.kind, r.device_id, key, digest))
        if rest:
            reasons = Counter(r.reason_code for r in rest).most_common()
            kinds = {r.kind for r in rest}
            reason = (f"{len(rest)} more rejections in this message, not stored one by one (the first "
                      f"{len(kept)} are): " + ", ".join(f"{code} ×{n}" for code, n in reasons))
            rows.append(self._letter(message, "more_rejections", reason, None, kinds.pop() if len(kinds) == 1 else None,
                                     None, _message_key(message, "*\0more_rejections\0", 0), digest))
        return rows

    def _letter(self, message: Message, code: str, reason: str, index: int | None, kind: str | None,
                device_id: str | None, key: str, digest: str) -> tuple[Any, ...]:
        return (message.received_at, _storable(message.topic), _storable(code), _storable(reason[:_REASON_MAX_CHARS]),
                index, _storable(kind), _storable(device_id), _storable(self.collector_id), key, digest)

    # --- failures --------------------------------------------------------------------------
    def _recover(self, exc: BaseException) -> None:
        """Roll back the failed attempt; raise DatabaseUnavailable if that is why it failed."""
        conn = self._conn
        unavailable = database_unavailable(exc, conn is None or conn.closed or conn.broken)
        if conn is not None and not unavailable:
            try:
                conn.rollback()
            except psycopg.Error:
                unavailable = True
        if unavailable:
            self.close()
            raise DatabaseUnavailable(_describe(exc)) from None


def _culprit(exc: BaseException, copied: dict[str, list[int]], progress: _Progress) -> int | None:
    """The position of the reading that caused ``exc``, when the database names it (``COPY stage_…, line N``) or
    our side failed while preparing or encoding it."""
    if isinstance(exc, psycopg.Error) and exc.sqlstate is not None:  # the server's: a COPY line, or no reading
        match = _COPY_LINE.search(exc.diag.context or "")
        if match is None:
            return None
        positions = copied.get(match.group(1), [])
        line = int(match.group(2))
        return positions[line - 1] if 0 < line <= len(positions) else None
    return progress.position


def _refusal(row: Row, exc: BaseException) -> Rejection:
    """The dead letter of a reading that failed alone: what the database said, or the exception of a bug."""
    where = f"reading {row.index}" if row.index is not None else "the reading"
    if isinstance(exc, psycopg.Error):
        detail = exc.diag.message_primary or str(exc).strip()
        match = _COPY_LINE.search(exc.diag.context or "")
        column = f" (column {match.group(3)})" if match is not None and match.group(3) else ""
        return Rejection("storage_rejected", f"the database refused {where}{column}: {detail}", row.index, row.kind,
                         row.device_id)
    if isinstance(exc, (UnicodeEncodeError, OverflowError)):  # the driver cannot encode a value for the database
        return Rejection("storage_rejected", f"{where} cannot be stored: {type(exc).__name__}: {exc}", row.index,
                         row.kind, row.device_id)
    return Rejection("internal_error", f"{type(exc).__name__} while writing {where}: {exc}", row.index, row.kind,
                     row.device_id)


def _message_key(message: Message, part: str, nth: int) -> str:
    """Unique per rejection of a message: topic, index and reason, and the whole payload (the n-th repeat of the
    same index and reason gets a suffix; the first keeps the key earlier versions gave it)."""
    digest = hashlib.sha256(f"{message.topic}\0{part}".encode("utf-8", "surrogatepass"))
    digest.update(message.payload)
    return digest.hexdigest() + (f"/{nth}" if nth else "")


def _storable(text: str | None) -> str | None:
    """Text PostgreSQL can store: NUL and lone surrogates escaped (``\\x00``, ``\\ud800``)."""
    if text is None:
        return None
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _describe(exc: BaseException) -> str:
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        return exc.diag.message_primary
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _count_rejections(result: WriteResult, dead: list[list[Rejection]]) -> None:
    for rejections in dead:
        for r in rejections:
            result.rejected[(r.kind or "unknown", r.reason_code)] += 1


def _merge(into: WriteResult, other: WriteResult) -> None:
    into.inserted.update(other.inserted)
    into.duplicates.update(other.duplicates)
    into.accepted.update(other.accepted)
    into.rejected.update(other.rejected)
    into.lags_s.extend(other.lags_s)
    into.auto_registered += other.auto_registered
    into.auto_register_refused += other.auto_register_refused
