"""The writer against the real database: a reading the database refuses is dead-lettered alone, with its index,
and every other reading of the batch lands; nothing of a failed attempt survives it; dead letters store the raw
payload once per message, capped, and one message cannot create more than a bounded number of them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg
import pytest

from sanitel.db import apply_migrations, load_migrations, one_row
from sanitel.ingest.decode import decode_message
from sanitel.processors.derive import DERIVATIONS
from sanitel.processors.retention import apply_retention
from sanitel.processors.writer import DatabaseUnavailable, Message, ReadingWriter, WriteResult
from sanitel.schemas.readings import BinDeposit, BinStatus, table_columns
from sanitel.schemas.records import Decoded, Rejection, Row
from sanitel.servers import PostgresServer, free_port

CITY = "shenzhen"
DEVICE_TIME = datetime(2026, 3, 10, tzinfo=UTC)  # a fixed instant: nothing here reads the clock
RECEIVED = DEVICE_TIME + timedelta(seconds=5)
READING_TABLES = ("sweeper_telemetry", "station_telemetry", "bin_deposits", "bin_status", "camera_detections",
                  "cems_readings")


def message(topic: str, body: object) -> Message:
    payload = json.dumps(body).encode()
    return Message(topic, payload, RECEIVED, decode_message(topic, payload, RECEIVED))


def ts(offset_s: int) -> int:
    return int((DEVICE_TIME + timedelta(seconds=offset_s)).timestamp() * 1000)


def gateway(gateway_id: str, devices: list[str], offset_s: int = 0) -> Message:
    readings = [{"kind": "bin", "device_id": d, "stream": "event", "ts": ts(offset_s), "household_id": f"h-{i}",
                 "category": "kitchen", "weight_kg": 1.0 + i} for i, d in enumerate(devices)]
    return message(f"sanitation/{CITY}/gateway/{gateway_id}/batch", {"gateway_id": gateway_id, "readings": readings})


# gateways and the devices registered behind them (a gateway batch never registers a device)
BEHIND = {"gw-1": [f"bin-{i}" for i in range(6)], "gw-3": [f"bin-3{i}" for i in range(40)]}
REGISTERED = sum(map(len, BEHIND.values()))


def register_behind(db: str, behind: dict[str, list[str]]) -> None:
    with psycopg.connect(db) as conn:
        for gateway_id, devices in behind.items():
            conn.execute("INSERT INTO gateways (gateway_id) VALUES (%s)", (gateway_id,))
            conn.execute("INSERT INTO devices (device_id, kind, gateway_id) SELECT d, 'bin', %s FROM unnest(%s::text[]) d",
                         (gateway_id, devices))


def good_batch() -> list[Message]:
    """Good readings from several messages: a sweeper, a gateway batch of six bins, an array of bin statuses."""
    return [
        message(f"sanitation/{CITY}/sweeper/sw-1/telemetry", {"ts": ts(0), "seq": 1, "soc_pct": 80}),
        gateway("gw-1", [f"bin-{i}" for i in range(6)]),
        message(f"sanitation/{CITY}/bin/bin-s/status", [{"ts": ts(i), "fill_level_pct": 10.0 * i} for i in range(3)]),
    ]


def poison(batch: list[Message], at: int, column: str, value: Any, *, device_id: str | None = None) -> Row:
    """Make reading ``at`` of the gateway batch (message 1) carry ``value`` in ``column`` (and maybe another
    device id); returns the poisoned row."""
    rows = batch[1].decoded.rows
    row = rows[at]
    values = list(row.values)
    values[table_columns(BinDeposit).index(column)] = value
    if device_id is not None:
        values[0] = device_id
        row = msgspec.structs.replace(row, device_id=device_id)
    rows[at] = msgspec.structs.replace(row, values=tuple(values))
    return rows[at]


def counts(db: str) -> dict[str, int]:
    with psycopg.connect(db) as conn:
        return {t: int(one_row(conn.execute(f"SELECT count(*) FROM {t}"))[0])
                for t in (*READING_TABLES, "dead_letters", "dead_letter_payloads", "devices", "device_last_seen")}


def dead_letters(db: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db) as conn:
        return conn.execute(
            "SELECT d.topic, d.reason_code, d.reason, d.reading_index, d.kind, d.device_id, p.payload, p.size "
            "FROM dead_letters d JOIN dead_letter_payloads p ON p.sha256 = d.payload_sha256 "
            "ORDER BY d.topic, d.reading_index").fetchall()


@pytest.fixture
def make_writer(fresh_db: str) -> Iterator[Callable[..., ReadingWriter]]:
    made: list[ReadingWriter] = []

    register_behind(fresh_db, BEHIND)

    def make(**kwargs: Any) -> ReadingWriter:
        writer = ReadingWriter(fresh_db, collector_id="test-writer", auto_register=True, **kwargs)
        made.append(writer)
        return writer

    yield make
    for writer in made:
        writer.close()


POISONS: dict[str, tuple[int, str, Any, str | None, str]] = {
    # which reading of the gateway batch, what it gets, and what the dead letter's reason says: values the
    # schema allows but PostgreSQL or its driver cannot store, and a constraint the decoder does not check
    "nul_in_text": (2, "household_id", "h-\x00-padded", None, "invalid byte sequence"),
    "nul_in_jsonb": (2, "extra", {"note": "a\x00b"}, None, "unsupported Unicode escape sequence"),
    "check_constraint": (5, "category", "bogus", None, "violates check constraint"),
    # refused when the device is registered; as the first reading it also named the old fallback's dead letter,
    # which the database refused in turn: the batch was never acknowledged
    "nul_in_device_id": (0, "household_id", "h", "bin-\x00-0", "cannot contain NUL"),
    "lone_surrogate": (3, "household_id", "h-\ud800", None, "UnicodeEncodeError"),  # the driver cannot encode it
    "bigint_overflow": (2, "seq", 2**70, None, "OverflowError"),
}


@pytest.mark.parametrize("case", sorted(POISONS))
def test_one_refused_reading_is_dead_lettered_alone_and_the_rest_of_the_batch_lands(
        case: str, fresh_db: str, make_writer: Callable[..., ReadingWriter]) -> None:
    at, column, value, device_id, said = POISONS[case]
    writer = make_writer()
    batch = good_batch()
    bad = poison(batch, at, column, value, device_id=device_id)

    result = writer.write(batch)

    assert counts(fresh_db) == {
        "sweeper_telemetry": 1, "bin_deposits": 5, "bin_status": 3, "station_telemetry": 0, "camera_detections": 0,
        "cems_readings": 0, "dead_letters": 1, "dead_letter_payloads": 1, "devices": REGISTERED + 2,
        "device_last_seen": 1 + 5 + 1}
    [(topic, code, reason, index, kind, device, payload, size)] = dead_letters(fresh_db)
    assert (topic, code, index, kind) == (batch[1].topic, "storage_rejected", at, "bin")
    assert device == bad.device_id.replace("\x00", "\\x00")  # stored escaped: a dead letter is never refused
    assert said in reason and f"reading {at}" in reason
    assert bytes(payload) == batch[1].payload and size == len(batch[1].payload)
    assert result.accepted == {"sweeper": 1, "bin": 8}
    assert result.rejected == {("bin", "storage_rejected"): 1}
    assert sum(result.inserted.values()) == 9
    assert result.auto_registered == 2  # sw-1 and bin-s, each by the one attempt that committed it

    # a second, unrelated batch commits nothing of the failed attempts: the poisoned reading's device gets its
    # reading now that it is a good one
    before = counts(fresh_db)
    later = writer.write([gateway("gw-1", [f"bin-{at}"], offset_s=60)])
    assert later.rejected == {} and later.inserted == {"bin_deposits": 1}
    after = counts(fresh_db)
    assert after == before | {"bin_deposits": 6, "device_last_seen": 8}

    # redelivered, the same batch adds nothing: no second row, no second dead letter
    again = writer.write(batch)
    assert counts(fresh_db) == after
    assert again.rejected == {("bin", "storage_rejected"): 1} and sum(again.duplicates.values()) == 9


def test_several_refused_readings_across_messages_are_each_dead_lettered_with_their_index(
        fresh_db: str, make_writer: Callable[..., ReadingWriter]) -> None:
    writer = make_writer()
    batch = [*good_batch(), gateway("gw-3", [f"bin-3{i}" for i in range(40)], offset_s=30)]
    poison(batch, 0, "household_id", "\x00")
    poison(batch, 5, "category", "bogus")
    third = batch[3].decoded.rows
    for at in (7, 8, 39):  # neighbours, and the last reading of the batch
        values = list(third[at].values)
        values[table_columns(BinDeposit).index("extra")] = {"raw": "\x00"}
        third[at] = msgspec.structs.replace(third[at], values=tuple(values))

    result = writer.write(batch)

    refused = [(t, i, code) for t, code, _, i, *_ in dead_letters(fresh_db)]
    assert sorted(refused) == sorted([(batch[1].topic, 0, "storage_rejected"), (batch[1].topic, 5, "storage_rejected"),
                                      *((batch[3].topic, i, "storage_rejected") for i in (7, 8, 39))])
    assert counts(fresh_db)["bin_deposits"] == 6 - 2 + 40 - 3
    assert result.rejected == {("bin", "storage_rejected"): 5}
    assert counts(fresh_db)["dead_letter_payloads"] == 2  # once per message


def test_a_bug_in_the_write_path_is_isolated_as_internal_error_and_does_not_stall(
        fresh_db: str, make_writer: Callable[..., ReadingWriter], monkeypatch: pytest.MonkeyPatch) -> None:
    fill = table_columns(BinStatus).index("fill_level_pct")
    original = DERIVATIONS[BinStatus.table]

    def derive_with_a_bug(values: tuple[Any, ...]) -> tuple[Any, ...]:
        if values[fill] == 10.0:
            raise KeyError("a bug that only this value reaches")
        return original(values)

    monkeypatch.setitem(DERIVATIONS, BinStatus.table, derive_with_a_bug)
    writer = make_writer()
    batch = good_batch()

    result = writer.write(batch)

    [(topic, code, reason, index, kind, device, _, _)] = dead_letters(fresh_db)
    assert (topic, code, index, kind, device) == (batch[2].topic, "internal_error", 1, "bin", "bin-s")
    assert "KeyError" in reason
    assert counts(fresh_db)["bin_status"] == 2 and counts(fresh_db)["bin_deposits"] == 6
    assert result.rejected == {("bin", "internal_error"): 1}


def test_a_message_stores_its_payload_once_capped_and_at_most_the_bound_of_dead_letters(
        fresh_db: str, make_writer: Callable[..., ReadingWriter]) -> None:
    writer = make_writer(payload_keep_bytes=1024, dead_letters_per_message=100)
    topic = f"sanitation/{CITY}/sweeper/sw-7/telemetry"
    items: list[dict[str, object]] = [{"ts": ts(-i), "seq": i, "soc_pct": 140} for i in range(1000)]  # all bad
    items[500] = {"ts": ts(-500), "seq": 500, "soc_pct": 50}  # one good reading among them
    items[600] = {"ts": ts(-600), "seq": 600, "soc_pct": "high"}
    big = message(topic, items)
    assert len(big.decoded.rejections) == 999 and len(big.payload) > 20_000

    result = writer.write([big])

    with psycopg.connect(fresh_db) as conn:
        sha, size, kept = one_row(conn.execute("SELECT sha256, size, payload FROM dead_letter_payloads"))
        rows = conn.execute("SELECT reason_code, reading_index, reason, payload_sha256 FROM dead_letters "
                            "ORDER BY reading_index NULLS LAST").fetchall()
    assert (sha, size, bytes(kept)) == (hashlib.sha256(big.payload).hexdigest(), len(big.payload), big.payload[:1024])
    assert len(rows) == 101 and {r[3] for r in rows} == {sha}
    assert [r[1] for r in rows[:100]] == [i for i in range(101) if i != 100][:100]  # by index: 0…99 (500 landed)
    summary = rows[100]
    assert summary[0] == "more_rejections" and summary[1] is None
    assert "899 more rejections" in summary[2] and "out_of_range ×898" in summary[2] and "wrong_type ×1" in summary[2]
    assert result.rejected == {("sweeper", "out_of_range"): 998, ("sweeper", "wrong_type"): 1}
    assert counts(fresh_db)["sweeper_telemetry"] == 1

    # redelivered — alone, and twice in one batch — it adds nothing
    writer.write([big])
    writer.write([big, big])
    assert counts(fresh_db)["dead_letters"] == 101 and counts(fresh_db)["dead_letter_payloads"] == 1


def test_the_same_payload_on_two_messages_is_stored_once(
        fresh_db: str, make_writer: Callable[..., ReadingWriter]) -> None:
    writer = make_writer()
    first = Message(f"sanitation/{CITY}/sweeper/sw-1/telemetry", b"{broken", RECEIVED,
                    Decoded(rejections=[Rejection("invalid_json", "not JSON")]))
    second = msgspec.structs.replace(first, topic=f"sanitation/{CITY}/sweeper/sw-2/telemetry",
                                 received_at=RECEIVED + timedelta(minutes=1))
    writer.write([first])
    writer.write([second])
    with psycopg.connect(fresh_db) as conn:
        stored = conn.execute("SELECT first_received_at, last_received_at FROM dead_letter_payloads").fetchall()
    assert stored == [(RECEIVED, RECEIVED + timedelta(minutes=1))]
    assert counts(fresh_db)["dead_letters"] == 2


def test_retention_drops_old_dead_letters_and_the_payloads_nothing_refers_to(
        fresh_db: str, make_writer: Callable[..., ReadingWriter]) -> None:
    writer = make_writer()
    old = Message(f"sanitation/{CITY}/sweeper/sw-1/telemetry", b"{old", RECEIVED,
                  Decoded(rejections=[Rejection("invalid_json", "not JSON")]))
    recent = msgspec.structs.replace(old, payload=b"{recent", received_at=RECEIVED + timedelta(days=100))
    writer.write([old, recent])
    with psycopg.connect(fresh_db) as conn:
        dropped = apply_retention(conn, raw=timedelta(days=400), rollups=timedelta(days=400),
                                  dead_letters=timedelta(days=90), now=RECEIVED + timedelta(days=120))
        conn.commit()
        kept = conn.execute("SELECT size FROM dead_letter_payloads").fetchall()
    assert (dropped["dead_letters"], dropped["dead_letter_payloads"]) == (1, 1)
    assert kept == [(len(b"{recent"),)] and counts(fresh_db)["dead_letters"] == 1


def test_migration_moves_existing_payloads_once_capped_and_keeps_every_dead_letter(
        pg_server: PostgresServer) -> None:
    name = f"premigration_{free_port()}"
    admin = pg_server.url.rsplit("/", 1)[0] + "/postgres"
    url = pg_server.url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        with psycopg.connect(url, autocommit=True) as conn:  # the schema as it was before 0050
            conn.execute("CREATE TABLE schema_migrations (version text PRIMARY KEY, name text NOT NULL,"
                         " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
            for m in load_migrations():
                if m.version < "0050":
                    conn.execute(m.sql)
                    conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                                 (m.version, m.name, m.checksum))
            huge = b"x" * 100_000
            for i, (payload, at) in enumerate([(b"{bad", RECEIVED), (b"{bad", RECEIVED + timedelta(hours=1)),
                                               (huge, RECEIVED)]):
                conn.execute("INSERT INTO dead_letters (received_at, topic, payload, reason_code, reason, "
                             "message_key) VALUES (%s, 't', %s, 'invalid_json', 'r', %s)", (at, payload, f"k{i}"))

        assert apply_migrations(url)[0] == "0050"  # then the later ones
        assert apply_migrations(url) == []

        with psycopg.connect(url) as conn:
            payloads = conn.execute("SELECT sha256, size, length(payload), first_received_at, last_received_at "
                                    "FROM dead_letter_payloads ORDER BY size").fetchall()
            letters = conn.execute("SELECT message_key, payload_sha256 FROM dead_letters ORDER BY message_key").fetchall()
            columns = {r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns "
                                                  "WHERE table_name = 'dead_letters'").fetchall()}
            # the migration is safe to run twice, even by hand
            conn.execute(next(m.sql for m in load_migrations() if m.version == "0050"))
        bad, big = hashlib.sha256(b"{bad").hexdigest(), hashlib.sha256(huge).hexdigest()
        assert payloads == [(bad, 4, 4, RECEIVED, RECEIVED + timedelta(hours=1)),
                            (big, 100_000, 65_536, RECEIVED, RECEIVED)]
        assert letters == [("k0", bad), ("k1", bad), ("k2", big)]
        assert "payload" not in columns and "payload_sha256" in columns
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_a_database_lost_while_isolating_is_the_only_error_and_the_batch_then_lands_exactly_once(
        fresh_db: str, make_writer: Callable[..., ReadingWriter]) -> None:
    writer = make_writer()
    batch = good_batch()
    poison(batch, 1, "category", "bogus")
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        # the database goes away while the batch is being isolated: every session of the writer is ended
        conn.execute("CREATE FUNCTION end_writer() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                     "PERFORM pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = "
                     "'sanitel test-writer'; RETURN NULL; END $$")
        conn.execute("CREATE TRIGGER end_writer AFTER INSERT ON dead_letters EXECUTE FUNCTION end_writer()")
    with pytest.raises(DatabaseUnavailable):
        writer.write(batch)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("DROP TRIGGER end_writer ON dead_letters")
    assert counts(fresh_db)["dead_letters"] == 0
    result: WriteResult = writer.write(batch)  # reconnects; the redelivered batch is written exactly once
    assert result.rejected == {("bin", "storage_rejected"): 1}
    assert counts(fresh_db)["bin_deposits"] == 5 and counts(fresh_db)["dead_letters"] == 1


def test_a_refused_readings_registration_is_rolled_back_and_spends_no_registration(
        fresh_db: str, make_writer: Callable[..., ReadingWriter]) -> None:
    """Nothing of a failed attempt survives it, auto-registrations included, and only committed registrations
    count against the limit (the clock does not move: no token comes back)."""
    writer = make_writer(auto_register_per_minute=2, clock=lambda: 0.0)
    good = message(f"sanitation/{CITY}/sweeper/sw-1/telemetry", {"ts": ts(0), "seq": 1, "soc_pct": 80})
    bad = message(f"sanitation/{CITY}/sweeper/sw-2/telemetry", {"ts": ts(0), "seq": 2, "soc_pct": 80})
    [row] = bad.decoded.rows
    bad.decoded.rows[0] = msgspec.structs.replace(row, values=(*row.values[:2], 2**70, *row.values[3:]))  # seq

    result = writer.write([good, bad])

    assert result.rejected == {("sweeper", "storage_rejected"): 1} and result.auto_registered == 1
    with psycopg.connect(fresh_db) as conn:
        mine = {r[0] for r in conn.execute("SELECT device_id FROM devices WHERE auto_registered").fetchall()}
    assert mine == {"sw-1"}
    later = writer.write([message(f"sanitation/{CITY}/sweeper/sw-{i}/telemetry", {"ts": ts(i), "soc_pct": 1})
                          for i in (3, 4)])
    assert later.auto_registered == 1 and later.auto_register_refused == 1
    assert later.rejected == {("sweeper", "auto_register_limited"): 1}
