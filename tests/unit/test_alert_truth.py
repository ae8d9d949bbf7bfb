"""Scoring alerts against the simulator's ground truth (sanitel/alert_truth.py, issue 18): hand-built records and
alerts with the expected counts worked out beside them, the reading of ground-truth files, and property tests
(score never raises on well-formed inputs and its counts add up; the parsers raise only TruthError)."""

from __future__ import annotations

import contextlib
import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sanitel.alert_truth import ALSO, RaisedAlert, TruthError, load_truth, parse_alert, parse_record, run_score, score
from sanitel.cli import build_parser

T0 = datetime(2026, 3, 9, 0, 0, tzinfo=UTC)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def rfc(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record(device: str, start: float, end: float, *, alert: str | None = None, no_alert: str | None = None,
           fault: str = "fault", rows: str | None = None, point: str | None = None) -> dict[str, Any]:
    """A ground-truth record as simulators/truth.py writes it; start and end in minutes after T0."""
    effect: dict[str, Any] = {}
    if alert:
        effect["alert"] = alert
    if no_alert:
        effect["no_alert"] = no_alert
    if rows:
        effect["rows"] = rows
    return {"device_id": device, "kind": "x", "fault": fault, "source": "injected", "start": rfc(at(start)),
            "end": rfc(at(end)), "expected_effect": effect, "messages": 1,
            "details": {"point_id": point} if point else {}}


def alert(rule: str, subject: str, start: float, end: float | None, summary: str = "") -> dict[str, Any]:
    """A row of the alerts table (fired); start and end in minutes after T0, end None while it is open."""
    device = subject.split(":", 1)[1] if subject.startswith("device:") else None
    return {"rule_id": rule, "subject": subject, "device_id": device, "started_at": at(start),
            "resolved_at": None if end is None else at(end), "summary": summary, "fired_at": at(start)}


# --- hand-built cases ----------------------------------------------------------------------------------------------


def test_an_alert_raised_during_its_record_is_matched() -> None:
    # sw-0001 silent 08:00–08:30; the offline alert starts 15 min in (the timeout) and resolves with the next reading
    result = score([alert("device_offline", "device:sw-0001", 495, 510)],
                   [record("sw-0001", 480, 510, alert="device_offline", rows="missing")], until=at(1440))
    row = result.rules["device_offline"]
    assert (row.expected, row.matched, row.missed, row.raised, row.false) == (1, 1, 0, 1, 0)
    assert result.recall == 1.0 and result.passed and result.late == []


def test_a_record_without_its_alert_is_a_miss() -> None:
    # two full bins, one alert (on the first): 1 of 2 matched, recall 1 / 2 = 50 %
    truth = [record("bin-1", 100, 200, alert="bin_overflow"), record("bin-2", 100, 200, alert="bin_overflow")]
    result = score([alert("bin_overflow", "device:bin-1", 110, 205)], truth)
    row = result.rules["bin_overflow"]
    assert (row.expected, row.matched, row.missed) == (2, 1, 1)
    assert row.recall == pytest.approx(0.5) and result.recall == pytest.approx(0.5)
    assert [m.device_id for m in result.misses] == ["bin-2"] and not result.passed


def test_an_alert_of_another_device_or_rule_does_not_match() -> None:
    truth = [record("bin-1", 100, 200, alert="bin_overflow")]
    result = score([alert("bin_overflow", "device:bin-9", 110, 205), alert("bin_fire", "device:bin-1", 110, 205)],
                   truth)
    assert result.rules["bin_overflow"].missed == 1
    assert {j.alert.rule_id for j in result.false_alerts} == {"bin_overflow", "bin_fire"}


def test_the_match_window_is_the_record_widened_by_the_slack() -> None:
    truth = [record("ts-0001", 600, 660, alert="station_h2s")]
    # starts 2 h after the record ended (660 + 120 = 780): still inside the default 2 h slack
    assert score([alert("station_h2s", "device:ts-0001", 780, 800)], truth).rules["station_h2s"].matched == 1
    # one minute later: outside, so a miss and a false alert
    late = score([alert("station_h2s", "device:ts-0001", 781, 800)], truth)
    assert (late.rules["station_h2s"].missed, late.rules["station_h2s"].false) == (1, 1)
    # a narrower slack of 10 min: the alert at 780 is 120 min after the end, outside
    assert score([alert("station_h2s", "device:ts-0001", 780, 800)], truth,
                 slack=timedelta(minutes=10)).rules["station_h2s"].matched == 0


def test_an_alert_nothing_explains_is_false() -> None:
    result = score([alert("station_noise_night", "device:ts-0009", 840, 930, "night noise 50.7 dB(A)")],
                   [record("ts-0001", 100, 200, alert="station_h2s")])
    assert result.rules["station_noise_night"].false == 1 and result.total.false == 1
    (judged,) = result.false_alerts
    assert judged.reason == "no ground-truth record explains it"
    assert "station_noise_night device:ts-0009 2026-03-09T14:00Z–2026-03-09T15:30Z" in judged.describe()
    assert not result.passed


def test_also_siblings_explain_without_counting_for_recall() -> None:
    # a bin fire at point sp-7: the bin's own alert and the point camera's smoke detection
    truth = [record("bin-00002-k", 1170, 1200, alert="bin_fire", point="sp-7")]
    raised = [alert("bin_fire", "device:bin-00002-k", 1171, 1240), alert("camera_smoke_fire", "point:sp-7", 1170, 1180)]
    result = score(raised, truth)
    assert "camera_smoke_fire" in ALSO["bin_fire"]
    assert result.rules["bin_fire"].matched == 1
    camera = result.rules["camera_smoke_fire"]
    assert (camera.expected, camera.raised, camera.false) == (0, 1, 0)  # explained, but nothing expected it by name
    assert result.passed
    # without the ALSO map the camera's alert is false: the map is what explains it
    assert score(raised, truth, also={}).rules["camera_smoke_fire"].false == 1
    # the camera of another point is not explained by this fire
    other = score([*raised[:1], alert("camera_smoke_fire", "point:sp-8", 1170, 1180)], truth)
    assert other.rules["camera_smoke_fire"].false == 1


def test_a_sibling_alone_does_not_match_the_expected_rule() -> None:
    truth = [record("cems-p1-l2", 240, 300, alert="cems_nox_half_hourly")]
    result = score([alert("cems_nox_gb_1h", "device:cems-p1-l2", 240, 300)], truth)
    assert result.rules["cems_nox_half_hourly"].missed == 1 and result.rules["cems_nox_gb_1h"].false == 0


def test_an_alert_inside_a_no_alert_window_is_false_with_the_reason() -> None:
    # calibration 03:00–03:15; a CO half-hour alert 03:00–03:30 on the same unit: the truth says nothing fires there
    truth = [record("cems-p1-l1", 180, 195, no_alert="calibration", fault="calibration")]
    result = score([alert("cems_co_half_hourly", "device:cems-p1-l1", 180, 210)], truth)
    (judged,) = result.false_alerts
    assert judged.reason.startswith("during no_alert calibration (calibration on cems-p1-l1 2026-03-09T03:00Z")
    # the same alert on another unit is false for no stated reason
    other = score([alert("cems_co_half_hourly", "device:cems-p1-l2", 180, 210)], truth)
    assert other.false_alerts[0].reason == "no ground-truth record explains it"


def test_a_verdict_about_a_day_without_data_is_excluded() -> None:
    # the day's invalid verdict starts at the day's start (T0). The unit was silent 02:00–08:00: 6 h ≥ 5 half-hours
    # (2.5 h) of the day — a correct verdict no record names: excluded, neither false nor explained.
    silent_6h = [record("cems-p1-l1", 120, 480, alert="cems_offline", rows="missing", fault="silence")]
    raised = [alert("cems_offline", "device:cems-p1-l1", 135, 480), alert("cems_nox_daily_invalid",
                                                                          "device:cems-p1-l1", 0, 1440)]
    result = score(raised, silent_6h)
    row = result.rules["cems_nox_daily_invalid"]
    assert (row.raised, row.false, row.excluded) == (1, 0, 1) and result.passed
    assert "sent nothing for 6.0 h" in result.excluded[0].reason
    # silent 1 h only (02:00–03:00 < 2.5 h): the verdict is not explained by missing data — false
    silent_1h = [record("cems-p1-l1", 120, 180, alert="cems_offline", rows="missing", fault="silence")]
    short = score([alert("cems_offline", "device:cems-p1-l1", 135, 180), raised[1]], silent_1h)
    assert (short.rules["cems_nox_daily_invalid"].false, short.rules["cems_nox_daily_invalid"].excluded) == (1, 0)
    # two silences of 1.5 h each on the day add up to 3 h ≥ 2.5 h; overlapping spans count once (1.5 h + 1 h = 2.5 h)
    two = [record("cems-p1-l1", 60, 150, rows="missing"), record("cems-p1-l1", 600, 690, rows="missing")]
    assert score([raised[1]], two).rules["cems_nox_daily_invalid"].excluded == 1
    overlapping = [record("cems-p1-l1", 60, 150, rows="missing"), record("cems-p1-l1", 90, 210, rows="missing")]
    assert score([raised[1]], overlapping).rules["cems_nox_daily_invalid"].excluded == 1
    # a silence of the next day does not excuse this day's verdict
    next_day = [record("cems-p1-l1", 1440 + 60, 1440 + 480, rows="missing")]
    assert score([raised[1]], next_day).rules["cems_nox_daily_invalid"].false == 1


def test_an_alert_that_does_not_resolve_in_time_is_late() -> None:
    truth = [record("sw-0001", 480, 510, alert="device_offline", rows="missing")]
    # resolved 08:45: 15 min after the end, more than device_offline's 5 min
    late = score([alert("device_offline", "device:sw-0001", 495, 525)], truth, until=at(1440))
    assert [entry.entry.device_id for entry in late.late] == ["sw-0001"] and late.passed  # reported, not a fail
    # still open: late too
    assert len(score([alert("device_offline", "device:sw-0001", 495, None)], truth, until=at(1440)).late) == 1
    # a record ending within the last hour of the scored span is not checked: its alert may rightly be open
    assert score([alert("device_offline", "device:sw-0001", 495, None)], truth, until=at(540)).late == []


def test_nothing_expected_and_nothing_raised_is_a_pass() -> None:
    result = score([], [record("cems-p1-l1", 180, 195, no_alert="calibration")])
    assert result.rules == {} and result.recall == 1.0 and result.passed


def test_the_table_and_json_name_every_rule_and_the_totals() -> None:
    truth = [record("bin-1", 100, 200, alert="bin_overflow"), record("bin-2", 100, 200, alert="bin_overflow")]
    result = score([alert("bin_overflow", "device:bin-1", 110, 205), alert("bin_fire", "device:bin-3", 0, 10)],
                   truth)
    table = result.table()
    assert "bin_overflow                          2       1      1      1     0        0   50.0%" in table
    assert "total                                 2       1      1      2     1        0   50.0%" in table
    assert "missed (1):\n  bin_overflow for fault on bin-2" in table
    data = json.loads(json.dumps(result.as_json()))
    assert data["total"] == {"rule": "total", "expected": 2, "matched": 1, "missed": 1, "raised": 2, "false": 1,
                             "excluded": 0, "recall": 0.5}
    assert data["passed"] is False and data["false_alerts"][0]["rule"] == "bin_fire"


# --- inputs --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "message"), [
    ({"device_id": None}, "device_id must be a non-empty string"),
    ({"start": "yesterday"}, "is not an RFC 3339 time"),
    ({"end": "2026-03-09T01:00:00"}, "has no time zone offset"),
    ({"end": "2026-03-08T00:00:00Z"}, "before it starts"),
    ({"expected_effect": []}, "expected_effect and details must be objects"),
    ({"expected_effect": {"alert": 3}}, "alert must be a non-empty string"),
])
def test_a_malformed_record_is_refused_with_the_reason(change: dict[str, Any], message: str) -> None:
    with pytest.raises(TruthError, match=message):
        parse_record(record("sw-1", 0, 10, alert="device_offline") | change)


def test_an_alert_row_needs_a_rule_a_subject_and_an_aware_start() -> None:
    assert parse_alert({"rule_id": "r", "device_id": "d", "started_at": "2026-03-09T00:00:00Z"}).subject == "device:d"
    with pytest.raises(TruthError, match="neither a subject nor a device"):
        parse_alert({"rule_id": "r", "started_at": T0})
    with pytest.raises(TruthError, match="has no time zone offset"):
        parse_alert({"rule_id": "r", "subject": "site:s", "started_at": datetime(2026, 3, 9)})


def test_a_ground_truth_file_is_read_and_a_bad_line_named(tmp_path: Path) -> None:
    good = tmp_path / "truth.jsonl"
    good.write_text(json.dumps(record("sw-1", 0, 30, alert="device_offline", rows="missing")) + "\n\n")
    (entry,) = load_truth(good)
    assert (entry.device_id, entry.alert, entry.silent, entry.end - entry.start) == (
        "sw-1", "device_offline", True, timedelta(minutes=30))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + "{not json\n")
    with pytest.raises(TruthError, match=r"bad.jsonl:3: not a JSON record"):
        load_truth(bad)
    with pytest.raises(TruthError, match="cannot read the ground truth"):
        load_truth(tmp_path / "missing.jsonl")


def test_the_command_is_registered() -> None:
    args = build_parser().parse_args(["truth", "score", "--ground-truth", "t.jsonl", "--from", "2026-03-09T00:00+08:00",
                                      "--json", "--report-only"])
    assert (args.func, args.ground_truth, args.json, args.report_only) == (run_score, Path("t.jsonl"), True, True)
    assert args.since == datetime.fromisoformat("2026-03-09T00:00+08:00") and args.until is None


def test_the_command_refuses_an_empty_ground_truth_without_a_span(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    args = build_parser().parse_args(["truth", "score", "--ground-truth", str(empty)])
    with pytest.raises(TruthError, match="holds no records"):
        run_score(args, io.StringIO())


# --- properties ----------------------------------------------------------------------------------------------------

DEVICES = ("sw-1", "bin-1", "cems-1")
RULES = ("device_offline", "bin_overflow", "bin_fire", "camera_smoke_fire", "cems_nox_daily_invalid")
minutes = st.floats(min_value=-600, max_value=3000, allow_nan=False)


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    start = draw(minutes)
    return record(draw(st.sampled_from(DEVICES)), start, start + draw(st.floats(0, 1500)),
                  alert=draw(st.none() | st.sampled_from(RULES)), no_alert=draw(st.none() | st.just("calibration")),
                  rows=draw(st.none() | st.sampled_from(["missing", "stored"])),
                  point=draw(st.none() | st.just("sp-1")))


@st.composite
def alerts(draw: st.DrawFn) -> dict[str, Any]:
    start = draw(minutes)
    end = draw(st.none() | st.floats(0, 1500))
    subject = draw(st.sampled_from([f"device:{d}" for d in DEVICES] + ["point:sp-1", "site:p1"]))
    return alert(draw(st.sampled_from(RULES)), subject, start, None if end is None else start + end)


@PROPERTY
@given(st.lists(alerts(), max_size=12), st.lists(records(), max_size=12),
       st.none() | minutes.map(at), st.integers(0, 300).map(lambda m: timedelta(minutes=m)))
def test_score_never_raises_and_its_counts_add_up(raised: list[dict[str, Any]], truth: list[dict[str, Any]],
                                                  until: datetime | None, slack: timedelta) -> None:
    result = score(raised, truth, until=until, slack=slack)
    assert 0.0 <= result.recall <= 1.0
    for row in result.rules.values():
        assert 0.0 <= row.recall <= 1.0
        assert row.matched + row.missed == row.expected
        assert row.false + row.excluded <= row.raised
    total = result.total
    assert total.expected == sum(r["expected_effect"].get("alert") is not None for r in truth)
    assert total.raised == len(raised) and len(result.misses) == total.missed
    assert result.passed == (total.missed == 0 and total.false == 0)
    json.dumps(result.as_json())
    assert result.table()
    # the indexed matching says what the plain definition (module docstring) says, record by record
    entries, parsed = [parse_record(r) for r in truth], [parse_alert(a) for a in raised]

    def near(e: Any, a: RaisedAlert) -> bool:
        return a.at(e) and a.overlaps(e.start - slack, e.end + slack)

    matched = sum(any(a.rule_id == e.alert and near(e, a) for a in parsed) for e in entries if e.alert)
    unexplained = sum(not any(e.alert and a.rule_id in {e.alert, *ALSO.get(e.alert, ())} and near(e, a)
                              for e in entries) for a in parsed)
    assert (total.matched, total.false + total.excluded) == (matched, unexplained)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                        max_size=5), max_leaves=20)
record_like = st.fixed_dictionaries({}, optional={
    "device_id": json_values | st.text(max_size=8), "fault": json_values | st.text(max_size=8),
    "start": json_values | st.datetimes().map(lambda t: t.isoformat()) | st.just("2026-03-09T00:00:00Z"),
    "end": json_values | st.datetimes(timezones=st.just(UTC)).map(lambda t: t.isoformat()),
    "expected_effect": json_values | st.fixed_dictionaries({}, optional={"alert": json_values, "rows": json_values,
                                                                         "no_alert": json_values}),
    "details": json_values | st.fixed_dictionaries({}, optional={"point_id": json_values}),
})


@PROPERTY
@given(json_values | record_like)
def test_parse_record_raises_only_truth_error(value: Any) -> None:
    try:
        entry = parse_record(value)
    except TruthError:
        return
    assert entry.end >= entry.start and entry.device_id


@PROPERTY
@given(json_values | st.fixed_dictionaries({}, optional={
    "rule_id": json_values | st.text(max_size=8), "subject": json_values | st.text(max_size=8),
    "device_id": json_values, "started_at": json_values | st.datetimes(timezones=st.just(UTC)),
    "resolved_at": json_values | st.datetimes(), "summary": json_values}))
def test_parse_alert_raises_only_truth_error(value: Any) -> None:
    try:
        parsed = parse_alert(value)
    except TruthError:
        return
    assert isinstance(parsed, RaisedAlert) and parsed.started_at.tzinfo is not None


@PROPERTY
@given(st.binary(max_size=300))
def test_load_truth_raises_only_truth_error(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.getbasetemp() / "truth-property.jsonl"  # one file, rewritten by each example
    path.write_bytes(data)
    with contextlib.suppress(TruthError):
        load_truth(path)
