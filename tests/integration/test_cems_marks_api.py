"""Operating-state marks as first-class data (issue 13, Must show 1, the plant's side), against a real TimescaleDB:
the API (run as the API's own database role, sanitel_api, so its grants are what is tested), the ``sanitel marks``
command (as that role too), and the audit trail the database enforces (migration 0080's trigger).

Every time is fixed (late November 2026, Shenzhen time); nothing depends on the clock.
"""

from __future__ import annotations

import getpass
import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import errors

from sanitel.api.app import create_app
from sanitel.cli import main as sanitel_main
from sanitel.db import one_row
from sanitel.processors import cems_marks
from sanitel.processors.cems_marks import MarkConflict
from tests.integration.security.as_roles import enable_logins, role_url
from tests.support.api_helpers import api_settings, assert_error, auth, mint_key

CST = timezone(timedelta(hours=8))
WINDOW = {"from": "2026-11-28T00:00:00+08:00", "to": "2026-11-29T00:00:00+08:00"}

REGISTRY = """
INSERT INTO sites (site_id, kind, name, parent_id, timezone) VALUES
  ('lhk', 'plant', 'Laohukeng', NULL, 'Asia/Shanghai'),
  ('lhk-l1', 'line', 'Line 1', 'lhk', 'Asia/Shanghai'),
  ('lhk-l2', 'line', 'Line 2', 'lhk', 'Asia/Shanghai'),
  ('nsh', 'plant', 'Nanshan', NULL, 'Asia/Shanghai'),
  ('nsh-l1', 'line', 'Line 1', 'nsh', 'Asia/Shanghai'),
  ('depot-1', 'depot', 'Depot 1', NULL, 'Asia/Shanghai');
INSERT INTO devices (device_id, kind, site_id) VALUES
  ('LHK-L1', 'cems', 'lhk-l1'), ('LHK-L2', 'cems', 'lhk-l2'), ('NSH-L1', 'cems', 'nsh-l1'),
  ('SW-1', 'sweeper', 'depot-1'), ('LHK-SW', 'sweeper', 'lhk-l1');
"""


def at(hh: int, mm: int = 0, day: int = 28) -> str:
    return datetime(2026, 11, day, hh, mm, tzinfo=CST).isoformat()


def body(**changes: Any) -> dict[str, Any]:
    return {"mark": "start_up", "starts_at": at(6), "reason": "cold start after the annual overhaul"} | changes


def count_marks(db: str) -> int:
    with psycopg.connect(db) as conn:
        return int(one_row(conn.execute("SELECT count(*) FROM cems_marks"))[0])


@pytest.fixture
def db(fresh_db: str) -> str:
    enable_logins(fresh_db)
    with psycopg.connect(fresh_db) as conn:
        conn.execute(REGISTRY)
    return fresh_db


@pytest.fixture
def client(db: str, tmp_path: Path) -> Iterator[TestClient]:
    # the API as it is deployed: on its own role, which may add marks and link corrections, nothing more
    with TestClient(create_app(api_settings(db, tmp_path, api_database_url=role_url(db, "api")))) as c:
        yield c


@pytest.fixture
def supervisor(db: str) -> dict[str, str]:
    return auth(mint_key(db, "supervisor", "duty-supervisor"))


@pytest.fixture
def viewer(db: str) -> dict[str, str]:
    return auth(mint_key(db, "viewer", "control-room"))


def post_mark(client: TestClient, headers: dict[str, str], line: str = "lhk-l1", plant: str = "lhk",
              **changes: Any) -> dict[str, Any]:
    response = client.post(f"/plants/{plant}/lines/{line}/marks", json=body(**changes), headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def correct(client: TestClient, headers: dict[str, str], mark_id: int, plant: str = "lhk", **fields: Any) -> Any:
    return client.post(f"/plants/{plant}/marks/{mark_id}/corrections", json=fields, headers=headers)


# --- what the plant does -------------------------------------------------------------------------------------

def test_a_mark_is_set_closed_listed_and_withdrawn_with_its_history(client: TestClient, supervisor: dict[str, str],
                                                                    viewer: dict[str, str], db: str) -> None:
    opened = post_mark(client, supervisor)  # an open start-up: no end yet
    assert opened | {"mark_id": 0, "created_at": ""} == {
        "mark_id": 0, "plant_id": "lhk", "line_id": "lhk-l1", "device_id": "LHK-L1", "mark": "start_up",
        "mark_zh": "启炉", "kind": "furnace",
        "starts_at": "2026-11-27T22:00:00+00:00",  # 06:00 +08:00 is 22:00 UTC the day before
        "ends_at": None, "reason": "cold start after the annual overhaul", "source": "api",
        "created_by": "duty-supervisor",  # the key's name
        "created_at": "", "supersedes": None, "superseded_by": None, "withdrawn": False, "status": "current"}
    # the line named by its CEMS device: the same line's device, placed from the registry
    other = post_mark(client, supervisor, line="LHK-L2", mark="cms_calibration", starts_at=at(9), ends_at=at(9, 40),
                      reason="O2 analyser calibration")
    assert (other["line_id"], other["mark_zh"], other["kind"]) == ("lhk-l2", "校准", "monitoring_system")

    closed = correct(client, supervisor, opened["mark_id"], ends_at=at(10, 30), reason="850 °C reached at 10:30")
    assert closed.status_code == 201, closed.text
    closed_mark = closed.json()
    assert closed_mark["supersedes"] == opened["mark_id"] and closed_mark["status"] == "current"
    assert (closed_mark["mark"], closed_mark["starts_at"]) == ("start_up", opened["starts_at"])  # kept
    assert closed_mark["ends_at"] == "2026-11-28T02:30:00+00:00"  # 10:30 +08:00

    listed = client.get("/plants/lhk/marks", params=WINDOW, headers=viewer).json()
    assert [m["mark_id"] for m in listed["items"]] == [closed_mark["mark_id"], other["mark_id"]]  # by start
    trail = client.get("/plants/lhk/marks", params=WINDOW | {"include_superseded": "true"}, headers=viewer).json()
    assert [(m["mark_id"], m["status"]) for m in trail["items"]] == [
        (opened["mark_id"], "superseded"), (closed_mark["mark_id"], "current"), (other["mark_id"], "current")]
    assert trail["items"][0]["superseded_by"] == closed_mark["mark_id"]
    one_line = client.get("/plants/lhk/marks", params=WINDOW | {"line": "lhk-l2"}, headers=viewer).json()
    assert [m["mark_id"] for m in one_line["items"]] == [other["mark_id"]]
    later = client.get("/plants/lhk/marks", params={"from": at(0, day=29), "to": at(0, day=30)}, headers=viewer)
    assert later.json()["items"] == []  # both end on the 28th

    withdrawn = correct(client, supervisor, closed_mark["mark_id"], withdraw=True, reason="entered on the wrong line")
    assert withdrawn.status_code == 201, withdrawn.text
    assert (withdrawn.json()["withdrawn"], withdrawn.json()["status"]) == (True, "withdrawn")
    listed = client.get("/plants/lhk/marks", params=WINDOW, headers=viewer).json()
    assert [m["mark_id"] for m in listed["items"]] == [other["mark_id"]]  # a withdrawn mark is out of force

    for asked in (opened["mark_id"], withdrawn.json()["mark_id"]):  # the whole chain, whichever link is asked
        history = client.get(f"/plants/lhk/marks/{asked}/history", headers=viewer).json()
        assert [m["mark_id"] for m in history["items"]] == [opened["mark_id"], closed_mark["mark_id"],
                                                             withdrawn.json()["mark_id"]]
        assert [m["created_by"] for m in history["items"]] == ["duty-supervisor"] * 3
        assert history["current_mark_id"] is None  # withdrawn: nothing of it is in force
    # what the report and the alerts read: the one mark in force
    with psycopg.connect(db) as conn:
        in_force = [m for d in ("LHK-L1", "LHK-L2") for m in cems_marks.effective_marks(
            conn, d, datetime(2026, 11, 28, tzinfo=CST), datetime(2026, 11, 29, tzinfo=CST))]
    assert [(m.mark, m.created_by) for m in in_force] == [("cms_calibration", "duty-supervisor")]


def test_validation_errors_name_the_field_and_store_nothing(client: TestClient, supervisor: dict[str, str],
                                                            db: str) -> None:
    for bad, field in ((body(ends_at=at(5)), "body.ends_at"),  # ends before it starts
                       (body(ends_at=at(6)), "body.ends_at"),  # an empty span
                       (body(starts_at="2026-11-28T06:00:00"), "body.starts_at"),  # no offset: ambiguous
                       (body(mark="on_fire"), "body.mark"),
                       (body(reason="  "), "body.reason")):
        assert_error(client.post("/plants/lhk/lines/lhk-l1/marks", json=bad, headers=supervisor), 422,
                     "validation_error", field)
    assert count_marks(db) == 0
    mark = post_mark(client, supervisor, ends_at=at(8))
    # moving only the start past the kept end blames the start; a withdrawal that also edits is refused
    assert_error(correct(client, supervisor, mark["mark_id"], starts_at=at(9), reason="r"), 422, "validation_error",
                 "body.starts_at")
    assert_error(correct(client, supervisor, mark["mark_id"], withdraw=True, ends_at=at(7), reason="r"), 422,
                 "validation_error", "body.withdraw")
    assert count_marks(db) == 1


def test_an_explicit_null_end_reopens_a_mark(client: TestClient, supervisor: dict[str, str]) -> None:
    mark = post_mark(client, supervisor, ends_at=at(8))
    reopened = correct(client, supervisor, mark["mark_id"], ends_at=None, reason="the start-up is not over")
    assert reopened.status_code == 201 and reopened.json()["ends_at"] is None
    kept = correct(client, supervisor, reopened.json()["mark_id"], mark="bake_out", reason="it was a bake-out")
    assert (kept.json()["mark"], kept.json()["ends_at"]) == ("bake_out", None)  # absent ends_at: kept (open)


# --- threats ----------------------------------------------------------------------------------------------

def test_a_viewer_cannot_create_or_correct_marks(client: TestClient, supervisor: dict[str, str],
                                                 viewer: dict[str, str], db: str) -> None:
    """Attack: a read-only key (a dashboard's) marks a furnace 'start-up' over an exceedance, which takes the period
    out of the judgement. Marking needs the supervisor role, the one that may silence alerts."""
    error = assert_error(client.post("/plants/lhk/lines/lhk-l1/marks", json=body(), headers=viewer), 403, "forbidden")
    assert "supervisor" in error["message"]
    mark = post_mark(client, supervisor, ends_at=at(8))
    assert_error(correct(client, viewer, mark["mark_id"], ends_at=at(23), reason="stretch it"), 403, "forbidden")
    assert_error(correct(client, viewer, mark["mark_id"], withdraw=True, reason="gone"), 403, "forbidden")
    assert count_marks(db) == 1


def test_who_set_a_mark_cannot_be_spoofed_from_the_body(client: TestClient, supervisor: dict[str, str],
                                                        db: str) -> None:
    """Attack: a supervisor records a mark as someone else's (or as the data unit's) to hide who set it. The body
    has no such fields: naming them is refused, and the stored mark carries the key's name and source 'api'."""
    for spoof in ({"created_by": "plant manager"}, {"source": "dau"}):
        field = f"body.{next(iter(spoof))}"
        assert_error(client.post("/plants/lhk/lines/lhk-l1/marks", json=body(**spoof), headers=supervisor), 422,
                     "validation_error", field)
    mark = post_mark(client, supervisor)
    assert_error(correct(client, supervisor, mark["mark_id"], reason="r", created_by="plant manager"), 422,
                 "validation_error", "body.created_by")
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT created_by, source FROM cems_marks").fetchall() == [("duty-supervisor", "api")]


def test_marks_of_another_plants_line_are_404(client: TestClient, supervisor: dict[str, str], viewer: dict[str, str],
                                              db: str) -> None:
    """Attack: through the path of a plant it may mark, a caller reaches another plant's line or marks (or a device
    that is not a CEMS unit). Every such path is 404, and nothing is stored."""
    for plant, line in (("lhk", "nsh-l1"), ("lhk", "NSH-L1"), ("lhk", "SW-1"), ("lhk", "LHK-SW"), ("lhk", "lhk"),
                        ("nowhere", "lhk-l1"), ("lhk-l1", "lhk-l1")):
        assert_error(client.post(f"/plants/{plant}/lines/{line}/marks", json=body(), headers=supervisor), 404,
                     "not_found")
    assert count_marks(db) == 0
    theirs = post_mark(client, supervisor, plant="nsh", line="nsh-l1")
    assert_error(correct(client, supervisor, theirs["mark_id"], withdraw=True, reason="r"), 404, "not_found")
    assert_error(client.get(f"/plants/lhk/marks/{theirs['mark_id']}/history", headers=viewer), 404, "not_found")
    assert client.get("/plants/lhk/marks", params=WINDOW, headers=viewer).json()["items"] == []
    assert_error(client.get("/plants/lhk/marks", params=WINDOW | {"line": "nsh-l1"}, headers=viewer), 404,
                 "not_found")
    assert_error(client.get("/plants/nowhere/marks", params=WINDOW, headers=viewer), 404, "not_found")
    assert_error(correct(client, supervisor, 999_999, reason="r"), 404, "not_found")
    assert count_marks(db) == 1


def test_correcting_a_superseded_mark_is_409_naming_the_newer(client: TestClient, supervisor: dict[str, str],
                                                               db: str) -> None:
    """Attack (or a stale screen): correcting a mark that was already corrected would fork its history, two marks in
    force for one. Only the newest of a chain can be corrected; the answer names it."""
    first = post_mark(client, supervisor)
    second = correct(client, supervisor, first["mark_id"], ends_at=at(10), reason="closed").json()
    error = assert_error(correct(client, supervisor, first["mark_id"], ends_at=at(23), reason="stale"), 409,
                         "conflict")
    assert f"mark {second['mark_id']}" in error["message"]
    gone = correct(client, supervisor, second["mark_id"], withdraw=True, reason="wrong line").json()
    error = assert_error(correct(client, supervisor, gone["mark_id"], ends_at=at(23), reason="revive"), 409,
                         "conflict")
    assert "withdraw" in error["message"]
    assert count_marks(db) == 3


def test_two_corrections_racing_for_one_mark_make_one_correction(db: str) -> None:
    """Two supervisors correct the same mark at once. The first holds the mark's row until it commits; the second
    then finds it corrected and is refused, naming the first's correction — never a fork of the history."""
    api = role_url(db, "api")
    with psycopg.connect(api, autocommit=True) as conn:
        mark = cems_marks.add_mark(conn, device_id="LHK-L1", mark="fault", starts_at=datetime(2026, 11, 28, 1,
                                   tzinfo=CST), ends_at=None, reason="ID fan trip", source="cli", created_by="a")
    outcome: list[BaseException | cems_marks.StoredMark] = []
    with psycopg.connect(api) as first:  # a transaction, held open
        newer = cems_marks.correct_mark(first, mark.mark_id, ends_at=datetime(2026, 11, 28, 3, tzinfo=CST),
                                        reason="fan restarted", source="cli", created_by="a")

        def second() -> None:
            with psycopg.connect(api, autocommit=True) as conn:
                try:
                    outcome.append(cems_marks.correct_mark(conn, mark.mark_id, ends_at=datetime(2026, 11, 28, 5,
                                   tzinfo=CST), reason="fan restarted", source="cli", created_by="b"))
                except MarkConflict as exc:
                    outcome.append(exc)

        thread = threading.Thread(target=second)
        thread.start()
        wait_for_a_lock_wait(db)  # the second is blocked on the first's row lock
        assert not outcome
        first.commit()
    thread.join(10)
    [refused] = outcome
    assert isinstance(refused, MarkConflict) and refused.newer == newer.mark_id
    with psycopg.connect(db) as conn:
        assert one_row(conn.execute("SELECT count(*) FROM cems_marks WHERE supersedes = %s", (mark.mark_id,)))[0] == 1


def wait_for_a_lock_wait(db: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(db, autocommit=True) as conn:
        while not one_row(conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted"))[0]:
            assert time.monotonic() < deadline, "the second correction never waited for the first"
            time.sleep(0.02)


def test_the_database_refuses_to_rewrite_or_delete_a_mark(client: TestClient, supervisor: dict[str, str],
                                                         db: str) -> None:
    """Attack: with database access (the owner's, or the API's role through a flaw), shorten a fault mark, move it
    over an exceedance, un-withdraw it, unlink a correction, or delete it — a silent rewrite of the trail. The
    trigger refuses every change but setting superseded_by once, for the owner too; the API's role may not even try
    (its grants: INSERT, and UPDATE of superseded_by alone)."""
    first = post_mark(client, supervisor, ends_at=at(8))
    second = correct(client, supervisor, first["mark_id"], ends_at=at(9), reason="closed").json()
    rewrites = ("UPDATE cems_marks SET ends_at = ends_at - interval '1 hour' WHERE mark_id = %(id)s",
                "UPDATE cems_marks SET starts_at = starts_at + interval '1 day' WHERE mark_id = %(id)s",
                "UPDATE cems_marks SET reason = 'nothing happened' WHERE mark_id = %(id)s",
                "UPDATE cems_marks SET created_by = 'someone else' WHERE mark_id = %(id)s",
                "UPDATE cems_marks SET withdrawn = true WHERE mark_id = %(id)s",
                "UPDATE cems_marks SET mark = 'accident' WHERE mark_id = %(id)s")
    relinks = ("UPDATE cems_marks SET superseded_by = NULL WHERE mark_id = %(old)s",  # un-correct it
               "UPDATE cems_marks SET superseded_by = %(id)s WHERE mark_id = %(old)s")  # set a second time
    deletes = ("DELETE FROM cems_marks WHERE mark_id = %(id)s",)
    ids = {"id": second["mark_id"], "old": first["mark_id"]}
    with psycopg.connect(db, autocommit=True) as owner:
        for statement in (*rewrites, *relinks, *deletes):
            with pytest.raises(errors.RaiseException, match="audit trail"):
                owner.execute(statement, ids)
    with psycopg.connect(role_url(db, "api"), autocommit=True) as api:
        for statement in (*rewrites, *deletes):
            with pytest.raises(errors.InsufficientPrivilege):
                api.execute(statement, ids)
        for statement in relinks:  # the one column it may update: still only once
            with pytest.raises(errors.RaiseException, match="audit trail"):
                api.execute(statement, ids)
        with pytest.raises(errors.InsufficientPrivilege):
            api.execute("TRUNCATE cems_marks")
    with psycopg.connect(db) as conn:
        rows = conn.execute("SELECT mark_id, ends_at, superseded_by FROM cems_marks ORDER BY mark_id").fetchall()
    assert rows == [(first["mark_id"], datetime(2026, 11, 28, 8, tzinfo=CST), second["mark_id"]),
                    (second["mark_id"], datetime(2026, 11, 28, 9, tzinfo=CST), None)]


# --- the command line ----------------------------------------------------------------------------------------

@pytest.fixture
def cli(db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``sanitel marks`` connected as the API's role, as deployed."""
    monkeypatch.setenv("SANITEL_DATABASE_URL", db)
    monkeypatch.setenv("SANITEL_API_DATABASE_URL", role_url(db, "api"))
    monkeypatch.setenv("SANITEL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SANITEL_CONFIG", str(tmp_path / "none.yaml"))
    (tmp_path / "none.yaml").write_text("{}\n")


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, Any]]:
    assert sanitel_main(["marks", *argv, "--json"]) == 0, capsys.readouterr().err
    out: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return out


@pytest.mark.usefixtures("cli")
def test_cli_adds_corrects_withdraws_lists_and_shows_history(capsys: pytest.CaptureFixture[str]) -> None:
    [added] = run_json(capsys, "add", "--plant", "lhk", "--line", "lhk-l1", "--mark", "shut_down",
                       "--from", "2026-11-28T20:00+08:00", "--reason", "planned stop for boiler cleaning")
    assert (added["created_by"], added["source"], added["ends_at"]) == (getpass.getuser(), "cli", None)
    assert added["starts_at"] == "2026-11-28T12:00:00+00:00"  # 20:00 +08:00
    [closed] = run_json(capsys, "correct", str(added["mark_id"]), "--to", "2026-11-28T23:30+08:00",
                        "--reason", "furnace out at 23:30", "--by", "shift B")
    assert (closed["supersedes"], closed["created_by"], closed["ends_at"]) == (
        added["mark_id"], "shift B", "2026-11-28T15:30:00+00:00")
    assert [m["mark_id"] for m in run_json(capsys, "list", "--plant", "lhk")] == [closed["mark_id"]]
    assert len(run_json(capsys, "list", "--plant", "lhk", "--all")) == 2
    assert run_json(capsys, "list", "--plant", "lhk", "--line", "lhk-l2") == []

    # the table: local times, the Chinese name, who, and the status of each row of the trail
    assert sanitel_main(["marks", "history", str(added["mark_id"])]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["id", "line", "device", "mark", "标记", "from", "to", "status", "by", "source",
                                "reason"]
    assert "停炉" in table[1] and "2026-11-28T20:00+08:00" in table[1] and "open" in table[1]
    assert f"superseded by {closed['mark_id']}" in table[1]
    assert "2026-11-28T23:30+08:00" in table[2] and "shift B" in table[2] and "current" in table[2]

    [gone] = run_json(capsys, "withdraw", str(closed["mark_id"]), "--reason", "duplicate of the DAU's mark")
    assert gone["status"] == "withdrawn"
    assert run_json(capsys, "list", "--plant", "lhk") == []


@pytest.mark.usefixtures("cli")
def test_cli_errors_are_one_message_naming_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    [added] = run_json(capsys, "add", "--plant", "lhk", "--line", "LHK-L1", "--mark", "fault",
                       "--from", "2026-11-28T01:00+08:00", "--reason", "ID fan trip")
    [newer] = run_json(capsys, "correct", str(added["mark_id"]), "--to", "2026-11-28T02:00+08:00", "--reason", "ok")
    cases = [
        (["correct", str(added["mark_id"]), "--to", "2026-11-28T03:00+08:00", "--reason", "x"],
         f"mark {newer['mark_id']}"),  # already corrected: names the newer
        (["add", "--plant", "lhk", "--line", "lhk-l1", "--mark", "fault", "--from", "2026-11-28T05:00+08:00",
          "--to", "2026-11-28T04:00+08:00", "--reason", "x"], "--to: "),
        (["add", "--plant", "lhk", "--line", "nsh-l1", "--mark", "fault", "--from", "2026-11-28T05:00+08:00",
          "--reason", "x"], "no line 'nsh-l1'"),
        (["add", "--plant", "lhk", "--line", "lhk-l1", "--mark", "fault", "--from", "2026-11-28T05:00+08:00",
          "--reason", " "], "--reason: "),
        (["history", "999999"], "does not exist"),
    ]
    for argv, expected in cases:
        assert sanitel_main(["marks", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("sanitel: error: ") and expected in err and "Traceback" not in err, err
    with pytest.raises(SystemExit):  # argparse: a time without an offset never reaches the database
        sanitel_main(["marks", "add", "--plant", "lhk", "--line", "lhk-l1", "--mark", "fault",
                      "--from", "2026-11-28T05:00", "--reason", "x"])
    assert "no time zone offset" in capsys.readouterr().err
