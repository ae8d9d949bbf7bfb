"""The clearance model (sanitel/clearance.py, issue 15): a sorting point's schedule per category, parsed from its
site parameters with errors naming the site, the key and the fix; the day's verdict — pending, on_time, overdue,
late, missed, no_data — with "missed" never before the local day has ended and never on a deadline the fleet had
not reported by (issue 18); and the route-adherence measure of the daily report (processors/clearance.py). No
database, fixed instants."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any, get_args
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sanitel.clearance import (
    ClearanceSchedule,
    ClearanceStatus,
    PickupAt,
    day_bounds,
    deadline,
    judge_clearance,
    parse_clearance,
)
from sanitel.errors import ConfigError
from sanitel.processors.clearance import Pickup, Point, first_visits, in_order_visits, judge_point_day

SHANGHAI = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 11, 20)
KITCHEN = ClearanceSchedule("kitchen", time(10, 0), "daily")


def local(hh: int, mm: int = 0, day: date = DAY) -> datetime:
    return datetime.combine(day, time(hh, mm), SHANGHAI)


# the fleet's first data of DAY, when a test is not about it: 06:00 local, before every deadline it judges
FLEET_AT_SIX = local(6)


def judge(pickups: list[PickupAt], now: datetime, schedule: ClearanceSchedule = KITCHEN,
          fleet_first: datetime | None = FLEET_AT_SIX) -> str:
    return judge_clearance(schedule, DAY, SHANGHAI, pickups, now, fleet_first_report=fleet_first)


# --- parsing -------------------------------------------------------------------------------------------------

def test_the_contracts_example_parses() -> None:
    params = {"clearance": {"kitchen": {"by": "10:00", "every": "daily"}, "other": {"by": "18:00", "every": "daily"}},
              "odour_grade": 2}
    assert parse_clearance(params, where="sp-1") == [ClearanceSchedule("kitchen", time(10, 0), "daily"),
                                                     ClearanceSchedule("other", time(18, 0), "daily")]


def test_no_clearance_parameter_means_no_schedule() -> None:
    assert parse_clearance({}, where="sp-1") == []
    assert parse_clearance({"clearance": None}, where="sp-1") == []


def test_an_omitted_cadence_is_daily() -> None:
    assert parse_clearance({"clearance": {"other": {"by": "23:59"}}}, where="sp-1") == [
        ClearanceSchedule("other", time(23, 59), "daily")]


@pytest.mark.parametrize(("clearance", "key", "fix"), [
    (["kitchen"], "params.clearance", "map each category"),
    ({"food": {"by": "10:00"}}, "params.clearance.food", "recyclable, hazardous, kitchen, other"),
    ({"kitchen": "10:00"}, "params.clearance.kitchen", '"by": "HH:MM"'),
    ({"kitchen": {"every": "daily"}}, "params.clearance.kitchen.by", "HH:MM"),
    ({"kitchen": {"by": "24:00"}}, "params.clearance.kitchen.by", '"00:00" to "23:59"'),
    ({"kitchen": {"by": "9:00"}}, "params.clearance.kitchen.by", '"00:00" to "23:59"'),
    ({"kitchen": {"by": 600}}, "params.clearance.kitchen.by", "quoted"),  # YAML's reading of an unquoted 10:00
    ({"kitchen": {"by": "10:00", "every": "weekly"}}, "params.clearance.kitchen.every", "daily"),
    ({"kitchen": {"by": "10:00", "at": "x"}}, "params.clearance.kitchen", "only 'by' and 'every'"),
])
def test_errors_name_the_site_the_key_and_the_fix(clearance: Any, key: str, fix: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_clearance({"clearance": clearance}, where="sp-9")
    message = str(err.value)
    assert message.startswith(f"site sp-9: {key}")
    assert "fix:" in message and fix in message


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=3), max_leaves=10)
_entries = st.dictionaries(st.sampled_from(["kitchen", "other", "food", "by", ""]),
                           st.dictionaries(st.sampled_from(["by", "every", "at"]),
                                           _json | st.sampled_from(["10:00", "daily", "23:59", "25:00"]), max_size=3)
                           | _json, max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.just("clearance"), _json | _entries, max_size=1))
def test_the_parser_never_raises_anything_but_a_config_error(params: dict[str, Any]) -> None:
    try:
        schedules = parse_clearance(params, where="sp-1")
    except ConfigError as exc:
        assert "site sp-1: params.clearance" in str(exc) and "fix:" in str(exc)
    else:
        assert all(s.every == "daily" and s.category in ("recyclable", "hazardous", "kitchen", "other")
                   for s in schedules)


# --- judging ------------------------------------------------------------------------------------------------

def test_deadline_is_local_wall_clock_time() -> None:
    assert deadline(KITCHEN, DAY, SHANGHAI) == datetime(2026, 11, 20, 2, 0, tzinfo=UTC)


def test_a_deadline_in_a_skipped_hour_is_never_earlier_than_asked() -> None:
    berlin = ZoneInfo("Europe/Berlin")  # 2026-03-29 02:00 CET jumps to 03:00 CEST
    due = deadline(ClearanceSchedule("kitchen", time(2, 30), "daily"), date(2026, 3, 29), berlin)
    assert due.astimezone(UTC) == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # 03:30 CEST: after 02:30 CET would be
    start, end = day_bounds(date(2026, 3, 29), berlin)
    assert end - start == timedelta(hours=23)


def test_before_the_deadline_with_no_pickup_it_is_pending() -> None:
    assert judge([], local(9, 59)) == "pending"


def test_a_pickup_by_the_deadline_is_on_time_even_before_the_deadline() -> None:
    assert judge([PickupAt("kitchen", local(8))], local(9)) == "on_time"
    assert judge([PickupAt("kitchen", local(10))], local(23)) == "on_time"  # "by 10:00" includes 10:00


def test_a_pickup_without_category_counts_for_every_category() -> None:
    assert judge([PickupAt(None, local(8))], local(12)) == "on_time"


def test_a_pickup_of_another_category_does_not_count() -> None:
    assert judge([PickupAt("recyclable", local(8))], local(12)) == "overdue"


def test_after_the_deadline_with_no_pickup_it_is_overdue_until_the_day_ends() -> None:
    assert judge([], local(10, 1)) == "overdue"
    assert judge([], local(23, 59)) == "overdue"
    assert judge([], local(0, 0, DAY + timedelta(days=1))) == "missed"


def test_a_pickup_after_the_deadline_that_day_is_late() -> None:
    assert judge([PickupAt("kitchen", local(11))], local(12)) == "late"
    assert judge([PickupAt("kitchen", local(11))], local(0, 0, DAY + timedelta(days=2))) == "late"


def test_pickups_of_other_days_do_not_count() -> None:
    yesterday = PickupAt("kitchen", local(9, day=DAY - timedelta(days=1)))
    tomorrow = PickupAt("kitchen", local(0, 30, DAY + timedelta(days=1)))
    assert judge([yesterday, tomorrow], local(0, 0, DAY + timedelta(days=3))) == "missed"


# --- no_data: the fleet had not reported by the deadline ------------------------------------------------------

def test_a_deadline_the_fleet_had_not_reported_by_is_no_data_not_overdue_nor_missed() -> None:
    assert judge([], local(10, 1), fleet_first=None) == "no_data"  # nothing at all that day (yet)
    assert judge([], local(0, 0, DAY + timedelta(days=1)), fleet_first=None) == "no_data"
    assert judge([], local(12), fleet_first=local(11)) == "no_data"  # connected after the 10:00 deadline
    assert judge([], local(12), fleet_first=local(10)) == "overdue"  # a report at the deadline is in time
    assert judge([], local(0, 0, DAY + timedelta(days=1)), fleet_first=local(10)) == "missed"


def test_before_the_deadline_it_is_pending_whether_or_not_the_fleet_reported() -> None:
    assert judge([], local(9), fleet_first=None) == "pending"


def test_an_on_time_pickup_is_on_time_whatever_the_fleets_telemetry_says() -> None:
    # the pickup is truck data itself: telemetry lost or not, the point was cleared in time
    assert judge([PickupAt("kitchen", local(9))], local(12), fleet_first=None) == "on_time"


def test_a_pickup_of_another_category_by_the_deadline_is_fleet_data() -> None:
    # no telemetry stored, but a truck lifted the point's recyclables at 08:00: the fleet was reporting, and the
    # kitchen bins were not emptied by 10:00
    assert judge([PickupAt("recyclable", local(8))], local(12), fleet_first=None) == "overdue"
    assert judge([PickupAt("recyclable", local(8))], local(0, 0, DAY + timedelta(days=1)), fleet_first=None) == \
        "missed"


def test_a_late_pickup_after_a_silent_morning_is_no_data_not_late() -> None:
    # nothing from the fleet until 11:00: an earlier pickup may have been lost with the rest of the morning's data,
    # so the 11:00 pickup proves nothing about 10:00 (the alert gives no episode for it either)
    assert judge([PickupAt("kitchen", local(11))], local(12), fleet_first=local(11)) == "no_data"
    assert judge([PickupAt("kitchen", local(11))], local(12), fleet_first=local(7)) == "late"


def test_fleet_data_of_another_day_does_not_count() -> None:
    the_day_before = local(23, 0, DAY - timedelta(days=1))
    assert judge([], local(12), fleet_first=the_day_before) == "no_data"
    assert judge([PickupAt("other", the_day_before)], local(12), fleet_first=None) == "no_data"


def test_no_data_on_a_dst_day_compares_real_instants_not_wall_clocks() -> None:
    berlin = ZoneInfo("Europe/Berlin")  # 2026-10-25 03:00 CEST falls back to 02:00 CET: a 25-hour day
    day = date(2026, 10, 25)
    by_half_past_two = ClearanceSchedule("kitchen", time(2, 30), "daily")  # fold 0: 02:30 CEST = 00:30 UTC
    due = deadline(by_half_past_two, day, berlin)
    assert due == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    # 02:15 CET (the repeated hour, 01:15 UTC) reads earlier than 02:30 on the wall, but is 45 minutes after it
    second_quarter_past_two = datetime(2026, 10, 25, 1, 15, tzinfo=UTC)
    now = datetime(2026, 10, 25, 3, 0, tzinfo=UTC)
    assert judge_clearance(by_half_past_two, day, berlin, [], now,
                           fleet_first_report=second_quarter_past_two) == "no_data"
    assert judge_clearance(by_half_past_two, day, berlin, [PickupAt("other", second_quarter_past_two)], now,
                           fleet_first_report=None) == "no_data"
    first_quarter_past_two = datetime(2026, 10, 25, 0, 15, tzinfo=UTC)  # 02:15 CEST: before the deadline
    assert judge_clearance(by_half_past_two, day, berlin, [], now,
                           fleet_first_report=first_quarter_past_two) == "overdue"
    # the day has 25 hours: 23:30 local is 22:30 UTC, still the day (overdue); missed from 23:00 UTC only
    start, end = day_bounds(day, berlin)
    assert (start, end) == (datetime(2026, 10, 24, 22, 0, tzinfo=UTC), datetime(2026, 10, 25, 23, 0, tzinfo=UTC))
    assert judge_clearance(by_half_past_two, day, berlin, [], end - timedelta(minutes=30),
                           fleet_first_report=first_quarter_past_two) == "overdue"
    assert judge_clearance(by_half_past_two, day, berlin, [], end,
                           fleet_first_report=first_quarter_past_two) == "missed"
    assert judge_clearance(by_half_past_two, day, berlin, [], end, fleet_first_report=None) == "no_data"


def test_a_pickup_not_yet_happened_at_now_is_not_known() -> None:
    assert judge([PickupAt("kitchen", local(9))], local(8)) == "pending"


def test_naive_instants_are_refused() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        judge([], datetime(2026, 11, 20, 12))
    with pytest.raises(ValueError, match="no time zone"):
        judge([PickupAt("kitchen", datetime(2026, 11, 20, 9))], local(12))
    with pytest.raises(ValueError, match="no time zone"):
        judge([], local(12), fleet_first=datetime(2026, 11, 20, 9))


_instants = st.integers(min_value=-2 * 86_400, max_value=3 * 86_400).map(
    lambda s: local(0) + timedelta(seconds=s))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["kitchen", "other", None]), _instants), max_size=6), _instants,
       st.times(), st.none() | _instants)
def test_never_missed_before_the_day_has_ended_nor_without_data_and_always_final_after(
        raw: list[tuple[str | None, datetime]], now: datetime, by: time, fleet_first: datetime | None) -> None:
    schedule = ClearanceSchedule("kitchen", by.replace(second=0, microsecond=0, tzinfo=None), "daily")
    pickups = [PickupAt(c, t) for c, t in raw]
    status = judge_clearance(schedule, DAY, SHANGHAI, pickups, now, fleet_first_report=fleet_first)
    assert status in get_args(ClearanceStatus)
    start, end = day_bounds(DAY, SHANGHAI)
    due = deadline(schedule, DAY, SHANGHAI)
    data_by_due = [t for t in [fleet_first, *(p.at for p in pickups)] if t is not None and start <= t <= min(due, now)]
    if now < end:
        assert status != "missed"
    else:
        assert status in ("on_time", "late", "missed", "no_data")
    if status in ("late", "overdue", "missed"):
        assert data_by_due  # a verdict against the point needs the fleet's data by the deadline
    if status == "no_data":
        assert now >= due and not data_by_due


# --- the report's pure parts ---------------------------------------------------------------------------------

def test_route_adherence_counts_planned_points_visited_in_plan_order() -> None:
    assert in_order_visits(["a", "b", "c"], ["a", "b", "c"]) == 3
    assert in_order_visits(["a", "b", "c"], ["a", "c"]) == 2            # b skipped
    assert in_order_visits(["a", "b", "c"], ["c", "a", "b"]) == 2       # c out of order
    assert in_order_visits(["a", "b", "c"], ["x", "a", "y", "b", "c"]) == 3  # unplanned points cost nothing
    assert in_order_visits(["a", "b"], []) == 0
    assert in_order_visits([], ["a"]) == 0


def test_first_visits_are_in_time_order_of_first_pickup() -> None:
    pickups = [Pickup("b", "T1", None, local(9), 10), Pickup("a", "T1", None, local(8), 10),
               Pickup("a", "T1", None, local(10), 10), Pickup(None, "T1", None, local(7), 10)]
    assert first_visits(pickups) == ["a", "b"]


def test_judge_point_day_keeps_first_pickup_count_and_weight_per_category() -> None:
    point = Point("sp-1", "estate-1", "Asia/Shanghai", (KITCHEN, ClearanceSchedule("other", time(18), "daily")))
    pickups = [Pickup("sp-1", "T1", "kitchen", local(9), 120.0), Pickup("sp-1", "T1", "kitchen", local(9, 30), 30.0),
               Pickup("sp-1", "T1", "other", local(19), 200.0), Pickup("sp-2", "T1", "other", local(8), 99.0)]
    rows = judge_point_day(point, pickups, DAY, local(23), FLEET_AT_SIX)
    assert [(r.category, r.status, r.first_pickup_at, r.pickups, r.weight_kg) for r in rows] == [
        ("kitchen", "on_time", local(9), 2, 150.0), ("other", "late", local(19), 1, 200.0)]


def test_judge_point_day_counts_the_points_pickups_of_any_category_as_fleet_data() -> None:
    # no telemetry that day; the kitchen round at 09:00 shows the fleet was reporting by the 18:00 deadline of
    # "other", which is then overdue (not no_data); a pickup at another point is not this point's to pass on
    point = Point("sp-1", "estate-1", "Asia/Shanghai", (KITCHEN, ClearanceSchedule("other", time(18), "daily")))
    rows = judge_point_day(point, [Pickup("sp-1", "T1", "kitchen", local(9), 100.0)], DAY, local(19), None)
    assert [(r.category, r.status) for r in rows] == [("kitchen", "on_time"), ("other", "overdue")]
    elsewhere = [Pickup("sp-2", "T1", "other", local(9), 100.0)]
    assert [r.status for r in judge_point_day(point, elsewhere, DAY, local(19), None)] == ["no_data", "no_data"]
