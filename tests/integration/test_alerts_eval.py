"""Each rule kind, hand-computed against rows inserted by SQL into a fresh database, through real passes."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from tests.support.alerts_db import (
    T0,
    add_device,
    add_site,
    alerts,
    at,
    history,
    insert,
    ruleset,
    run,
    series,
)

LOW_SOC = {"id": "t.low_soc", "kind": "threshold", "summary": "SOC {value:.0f} % < {threshold:.0f} %",
           "severity": "major", "source": "sweeper_telemetry", "field": "soc_pct", "op": "<", "threshold": 20,
           "clear": 25, "for": "2m"}


@pytest.fixture
def sweeper_db(fresh_db: str) -> str:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        add_device(conn, "sw-1", "sweeper")
    return fresh_db


def _soc(url: str, start_min: float, values: list[float]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        insert(conn, "sweeper_telemetry", "sw-1", series(at(start_min), 30, values, "soc_pct"))


def test_threshold_for_and_hysteresis_pending_firing_resolved(sweeper_db: str) -> None:
    rules = ruleset(LOW_SOC)
    # 0:00 30 · 0:30 25 · 1:00 19 (breach) · 1:30 18 · 2:00 21 (dead band holds) · 2:30 19
    _soc(sweeper_db, 0, [30, 25, 19, 18, 21, 19])
    run(sweeper_db, rules)
    (alert,) = alerts(sweeper_db)
    assert alert["state"] == "pending" and alert["started_at"] == at(1)
    # 3:00 18 → the condition has held 2 minutes (1:00 → 3:00): fires at 3:00 device time
    _soc(sweeper_db, 3, [18])
    run(sweeper_db, rules)
    (alert,) = alerts(sweeper_db)
    assert alert["state"] == "firing" and alert["fired_at"] == at(3) and alert["peak_value"] == 18
    assert alert["summary"] == "SOC 18 % < 20 %"
    # 3:30 24 (dead band: still firing) · 4:00 26 (≥ clear 25: resolved at 4:00)
    _soc(sweeper_db, 3.5, [24])
    run(sweeper_db, rules)
    assert alerts(sweeper_db)[0]["state"] == "firing"
    _soc(sweeper_db, 4, [26])
    run(sweeper_db, rules)
    (alert,) = alerts(sweeper_db)
    assert alert["state"] == "resolved" and alert["resolved_at"] == at(4)
    assert history(sweeper_db, alert["alert_id"]) == ["pending", "firing", "resolved"]


def test_threshold_shorter_than_for_never_fires(sweeper_db: str) -> None:
    # breach 1:00–2:00 only (1 minute < for 2m), then clear: no alert at all once replayed in one pass
    _soc(sweeper_db, 0, [30, 30, 19, 18, 17, 26, 30])
    run(sweeper_db, ruleset(LOW_SOC))
    assert alerts(sweeper_db) == []


def test_keep_firing_for_bridges_a_short_clear(sweeper_db: str) -> None:
    rule = {**LOW_SOC, "clear": None, "for": "0s", "keep_firing_for": "2m"}
    # breach 0:00, clear 0:30, breach 1:30 (within 2m of the clear: same alert), clear 2:00 …
    # device time reaches 2:00 + 2m = 4:00 at the reading of 4:00: resolved at 4:00
    _soc(sweeper_db, 0, [10, 30, 30, 15, 30, 30, 30, 30, 30])
    run(sweeper_db, ruleset(rule))
    (alert,) = alerts(sweeper_db)
    assert alert["started_at"] == at(0) and alert["fired_at"] == at(0)
    assert alert["state"] == "resolved" and alert["resolved_at"] == at(4)
    assert alert["condition_ended_at"] == at(2)


def test_for_readings_needs_consecutive_readings(fresh_db: str) -> None:
    rule = {"id": "t.overflow", "kind": "threshold", "summary": "bin full", "severity": "minor",
            "source": "bin_status", "field": "fill_level_pct", "op": ">=", "threshold": 90, "clear": 50,
            "for_readings": 3}
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        add_device(conn, "bin-1", "bin")
        add_device(conn, "bin-2", "bin")
        # bin-1: a noisy spike (95, then 70 in the dead band, 96, 60): never 3 in a row
        insert(conn, "bin_status", "bin-1", series(at(0), 600, [40, 95, 70, 96, 60, 40], "fill_level_pct"))
        # bin-2: 91, 93, 97 → fires at the third; emptied to 10 → resolved
        insert(conn, "bin_status", "bin-2", series(at(0), 600, [40, 91, 93, 97, 10], "fill_level_pct"))
    run(fresh_db, ruleset(rule))
    (alert,) = alerts(fresh_db)
    assert alert["device_id"] == "bin-2" and alert["started_at"] == at(10) and alert["fired_at"] == at(30)
    assert alert["resolved_at"] == at(40)


# --- windows ---------------------------------------------------------------------------------------

H2S_30M = {"id": "t.h2s_30m", "kind": "window", "summary": "avg {value:.3f}", "severity": "minor",
           "source": "station_telemetry", "field": "h2s_mg_m3", "aggregate": "avg", "window": "30m",
           "op": ">", "threshold": 0.06}


def _station(url: str, params: dict[str, Any] | None = None, tz: str = "Asia/Shanghai") -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        add_site(conn, "ts-1", params=params, tz=tz)
        add_device(conn, "st-1", "transfer_station", site="ts-1")


def _h2s(url: str, start_min: float, values: list[float], step_s: float = 300, **extra: object) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        insert(conn, "station_telemetry", "st-1", series(at(start_min), step_s, values, "h2s_mg_m3", **extra))


def test_window_average_is_clock_aligned(fresh_db: str) -> None:
    _station(fresh_db)
    # Readings every 5 min from 00:15. The window 00:00-00:30 holds 00:15, 00:20, 00:25 → (0.05+0.07+0.09)/3
    # = 0.07 > 0.06; 00:30-01:00 holds 0.05 ×6 → 0.05: clear. A sliding 30-minute window ending at 00:40
    # would hold 0.07, 0.09, 0.05, 0.05, 0.05, 0.05 → 0.06 (not above): alignment matters.
    _h2s(fresh_db, 15, [0.05, 0.07, 0.09, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05])
    run(fresh_db, ruleset(H2S_30M))
    (alert,) = alerts(fresh_db)
    assert alert["started_at"] == at(0) and alert["fired_at"] == at(30)
    assert alert["value"] == pytest.approx(0.07) and alert["summary"] == "avg 0.070"
    assert alert["state"] == "resolved" and alert["resolved_at"] == at(30)


@pytest.mark.clock
def test_daily_window_follows_the_site_local_midnight(fresh_db: str) -> None:
    # Asia/Shanghai is UTC+8: local midnight is 16:00 UTC the day before. Two readings on either side of it
    # belong to different days; in UTC they would share one.
    rule = {**H2S_30M, "id": "t.h2s_day", "window": "1d", "threshold": 0.5}
    _station(fresh_db)
    day_start = datetime.combine(T0.date(), time(0), ZoneInfo("Asia/Shanghai"))
    assert day_start == T0 - timedelta(hours=8)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        insert(conn, "station_telemetry", "st-1", [{"ts": day_start - timedelta(minutes=30), "h2s_mg_m3": 0.9},
                                                  {"ts": day_start + timedelta(minutes=30), "h2s_mg_m3": 0.1}])
    run(fresh_db, ruleset(rule))
    (alert,) = alerts(fresh_db)
    assert alert["started_at"] == day_start - timedelta(days=1) and alert["value"] == pytest.approx(0.9)
    assert alert["resolved_at"] == day_start


def test_late_reading_re_evaluates_its_window(fresh_db: str) -> None:
    _station(fresh_db)
    rules = ruleset(H2S_30M)
    # 00:00-00:30 averages 0.05 and closes (a 00:35 reading arrived): no alert
    _h2s(fresh_db, 0, [0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05])
    run(fresh_db, rules)
    assert alerts(fresh_db) == []
    # a reading for 00:12 arrives late: the window's average becomes (0.05×6 + 0.4)/7 = 0.1 → alert
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        insert(conn, "station_telemetry", "st-1", [{"ts": at(12), "seq": 99, "h2s_mg_m3": 0.4}])
    report = run(fresh_db, rules)
    (alert,) = alerts(fresh_db)
    assert alert["started_at"] == at(0) and alert["value"] == pytest.approx(0.1)
    assert alert["state"] == "resolved" and alert["resolved_at"] == at(30)
    assert [e for _, e in report.transitions] == ["firing", "resolved"]
    # and evaluating again finds nothing new: no repeat
    assert run(fresh_db, rules).transitions == []


def test_a_backlog_does_not_close_windows_by_the_wall_clock(fresh_db: str) -> None:
    """A collector draining a backlog stores a window's readings hours after its end. While rows keep arriving,
    windows close by the data clock (the newest device time stored), not by the wall clock a day ahead: a window is
    judged on all its readings, not on the half that had arrived (issue 18: a false night-noise alert)."""
    _station(fresh_db)
    rules, quiet_after = ruleset(H2S_30M), timedelta(minutes=2)  # the service's default
    # the first half of 00:00-00:30 is high (0.1 > 0.06); the wall clock (NOW) is a day later
    _h2s(fresh_db, 0, [0.1, 0.1, 0.1])
    run(fresh_db, rules, data_quiet_after=quiet_after)
    assert alerts(fresh_db) == []  # by the wall clock the window was closed, and its average 0.1 would fire
    # the rest of the window and the next arrive: (0.1×3 + 0.01×3)/6 = 0.055, not above
    _h2s(fresh_db, 15, [0.01, 0.01, 0.01, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05])
    run(fresh_db, rules, data_quiet_after=quiet_after)
    assert alerts(fresh_db) == []


def test_flagged_readings_do_not_count(fresh_db: str) -> None:
    rule = {"id": "t.nox", "kind": "threshold", "summary": "nox", "severity": "major", "source": "cems_readings",
            "field": "nox_zs_mg_m3", "op": ">", "threshold": 300, "for": "2m"}
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        add_device(conn, "cems-1", "cems")
        # calibration gas, maintenance, fault and stopped readings are far above the limit: ignored.
        # One valid reading in between (N at 02:00) is also above, but alone it lasts 0 minutes.
        rows = [{"ts": at(m), "nox_zs_mg_m3": 900.0, "nox_flag": flag}
                for m, flag in [(0, "C"), (1, "M"), (2, "N"), (3, "D"), (4, "F"), (5, "C")]]
        rows += [{"ts": at(6), "nox_zs_mg_m3": 100.0, "nox_flag": "N"}]
        insert(conn, "cems_readings", "cems-1", rows)
    run(fresh_db, ruleset(rule))
    assert alerts(fresh_db) == []
    # the same values flagged N would have fired (02:00 → 05:00 ≥ 2 minutes)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("UPDATE cems_readings SET nox_flag = 'N', stored_at = clock_timestamp()")
    run(fresh_db, ruleset(rule))
    (alert,) = alerts(fresh_db)
    assert alert["started_at"] == at(0) and alert["resolved_at"] == at(6)


# --- counts ----------------------------------------------------------------------------------------

MIS_SORTING = {"id": "t.mis_sorting", "kind": "event_count", "summary": "{point}: {value:.0f}", "severity": "warning",
               "source": "camera_detections", "where": {"detection": "mis_sorted", "confidence": {">=": 0.6}},
               "per": "point", "window": "1h", "threshold": 3}


def _detections(conn: psycopg.Connection, device_id: str, minutes: list[float], point: str | None,
                detection: str = "mis_sorted", confidence: float = 0.9) -> None:
    insert(conn, "camera_detections", device_id, [
        {"ts": at(m), "detection": detection, "confidence": confidence, "point_id": point} for m in minutes])


@pytest.mark.clock
def test_event_count_per_point_fires_early_and_resolves_on_an_empty_hour(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        add_site(conn, "sp-1", "sorting_point")
        add_device(conn, "cam-1", "camera", site="sp-1")
        add_device(conn, "cam-2", "camera", site="sp-1")
        # two cameras at one point: 2 + 1 counted in hour 0 (low confidence and other kinds do not count)
        _detections(conn, "cam-1", [5, 20], "sp-1")
        _detections(conn, "cam-2", [40], "sp-1")
        _detections(conn, "cam-2", [41], "sp-1", confidence=0.3)
        _detections(conn, "cam-2", [42], "sp-1", detection="littering")
    rules = ruleset(MIS_SORTING)
    run(fresh_db, rules)
    (alert,) = alerts(fresh_db)
    assert alert["subject"] == "point:sp-1" and alert["value"] == 3 and alert["fired_at"] == at(60)
    assert alert["summary"] == "sp-1: 3"
    # hour 1 has no detection at all: counted 0 once it closed (wall clock) → resolved at its start
    assert alerts(fresh_db)[0]["resolved_at"] == at(60)


@pytest.mark.clock
def test_event_count_fires_before_the_window_closes(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        add_device(conn, "cam-1", "camera")
        _detections(conn, "cam-1", [0, 1, 2], None)
    rule = {**MIS_SORTING, "per": "device"}
    # evaluate "during" hour 0: the window is open and already has 3
    run(fresh_db, ruleset(rule), now=at(10))
    (alert,) = alerts(fresh_db)
    assert alert["state"] == "firing" and alert["started_at"] == at(0)
    # the window closes with 3: still one alert; the next hour is empty: resolved
    run(fresh_db, ruleset(rule), now=at(125))
    (alert,) = alerts(fresh_db)
    assert alert["state"] == "resolved" and alert["resolved_at"] == at(60)


# --- rate ------------------------------------------------------------------------------------------

def test_rate_of_change_over_a_look_back(sweeper_db: str) -> None:
    rule = {"id": "t.temp_rise", "kind": "rate", "summary": "{value:.1f} °C/min", "severity": "critical",
            "source": "sweeper_telemetry", "field": "battery_temp_max_c", "over": "5m", "op": ">",
            "threshold": 2.0, "clear": 0.5, "for": "1m"}
    # every 30 s: flat 30 °C for 5 min, then +1.5 °C per 30 s (3 °C/min) for 4 min, then flat
    flat = [30.0] * 10
    rising = [30.0 + 1.5 * (i + 1) for i in range(8)]
    values = flat + rising + [rising[-1]] * 12
    with psycopg.connect(sweeper_db, autocommit=True) as conn:
        insert(conn, "sweeper_telemetry", "sw-1", series(at(0), 30, values, "battery_temp_max_c"))
    run(sweeper_db, ruleset(rule))
    (alert,) = alerts(sweeper_db)
    # the rise runs 5:00 (31.5) → 8:30 (42). Rate = (v − v 5 min before) / 5: at 7:30 (39 − 30)/5 = 1.8;
    # at 8:00 (40.5 − 30)/5 = 2.1 > 2 → starts; for 1m → fires at 9:00 ((42 − 30)/5 = 2.4)
    assert alert["started_at"] == at(8) and alert["fired_at"] == at(9)
    # flat from 8:30: at 12:30 (42 − 39)/5 = 0.6 (dead band), at 13:00 (42 − 40.5)/5 = 0.3 < 0.5: resolved
    assert alert["state"] == "resolved" and alert["resolved_at"] == at(13)


def test_single_spike_does_not_fire_a_rate_rule(sweeper_db: str) -> None:
    rule = {"id": "t.temp_rise", "kind": "rate", "summary": "r", "severity": "critical",
            "source": "sweeper_telemetry", "field": "battery_temp_max_c", "over": "5m", "op": ">",
            "threshold": 2.0, "for": "1m"}
    values = [30.0] * 12 + [120.0] + [30.0] * 12  # one wild probe reading (the simulator's spike fault)
    with psycopg.connect(sweeper_db, autocommit=True) as conn:
        insert(conn, "sweeper_telemetry", "sw-1", series(at(0), 30, values, "battery_temp_max_c"))
    run(sweeper_db, ruleset(rule))
    assert alerts(sweeper_db) == []


# --- offline ---------------------------------------------------------------------------------------

OFFLINE = {"id": "t.offline", "kind": "offline", "summary": "{device_id} silent > {timeout_s:.0f}s",
           "severity": "minor", "scope": {"kinds": ["transfer_station"]}}


@pytest.mark.clock
def test_offline_gap_in_device_time_with_a_per_device_timeout(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        add_device(conn, "st-fast", "transfer_station", timeout_s=300)
        add_device(conn, "st-slow", "transfer_station", timeout_s=1800)
        # both: readings every minute, a 20-minute silence from 00:10 to 00:30, then on again
        for device in ("st-fast", "st-slow"):
            minutes = [m for m in range(0, 41) if not 10 < m < 30]
            insert(conn, "station_telemetry", device, [{"ts": at(m), "noise_dba": 50.0} for m in minutes])
    run(fresh_db, ruleset(OFFLINE), now=at(41))
    (alert,) = alerts(fresh_db)  # only the device whose timeout (5 min) the silence exceeded
    assert alert["device_id"] == "st-fast" and alert["summary"] == "st-fast silent > 300s"
    assert alert["started_at"] == at(15) and alert["resolved_at"] == at(30)


@pytest.mark.clock
def test_offline_live_by_receive_time_then_back(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        add_device(conn, "st-1", "transfer_station", timeout_s=600)
        insert(conn, "station_telemetry", "st-1", [{"ts": at(0), "noise_dba": 50.0}])
    rules = ruleset(OFFLINE)
    run(fresh_db, rules, now=at(5))
    assert alerts(fresh_db) == []
    run(fresh_db, rules, now=at(11))  # 11 minutes after it was last heard from
    (alert,) = alerts(fresh_db)
    assert alert["state"] == "firing" and alert["started_at"] == at(10)
    run(fresh_db, rules, now=at(12))
    assert len(alerts(fresh_db)) == 1  # still the same alert: no repeat
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        insert(conn, "station_telemetry", "st-1", [{"ts": at(40), "noise_dba": 50.0}])
    run(fresh_db, rules, now=at(40))
    (alert,) = alerts(fresh_db)
    assert alert["state"] == "resolved" and alert["resolved_at"] == at(40)


# --- per-site parameters ---------------------------------------------------------------------------

H2S_BY_GRADE = {"id": "t.h2s", "kind": "threshold", "summary": "{value} > {threshold} (grade {odour_grade})",
                "severity": "major", "source": "station_telemetry", "field": "h2s_mg_m3", "op": ">",
                "threshold": {"param": "odour_grade", "default": "2", "values": {"1": 0.03, "2": 0.06}}}


@pytest.mark.parametrize(("params", "fires", "threshold"), [
    ({}, False, None),                                       # grade 2 by default: 0.05 is fine
    ({"odour_grade": 1}, True, 0.03),                        # grade 1 station
    ({"odour_grade": 2, "limits": {"t.h2s": 0.04}}, True, 0.04),  # a stricter permit
    ({"odour_grade": 1, "disabled_rules": ["t.*"]}, False, None),
])
def test_limits_per_site(fresh_db: str, params: dict[str, Any], fires: bool, threshold: float | None) -> None:
    _station(fresh_db, params)
    _h2s(fresh_db, 0, [0.05, 0.05])
    run(fresh_db, ruleset(H2S_BY_GRADE))
    found = alerts(fresh_db)
    assert bool(found) == fires
    if fires:
        assert found[0]["threshold"] == pytest.approx(threshold)


def test_site_params_inherit_down_the_tree(fresh_db: str) -> None:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        add_site(conn, "district-1", "district", params={"odour_grade": 1})
        add_site(conn, "ts-1", parent="district-1")
        add_device(conn, "st-1", "transfer_station", site="ts-1")
    _h2s(fresh_db, 0, [0.05])
    run(fresh_db, ruleset(H2S_BY_GRADE))
    (alert,) = alerts(fresh_db)
    assert alert["summary"] == "0.05 > 0.03 (grade 1)" and alert["labels"]["district"] == "district-1"


@pytest.mark.clock
def test_noise_day_and_night_limits_by_local_time(fresh_db: str) -> None:
    rules = ruleset(
        {"id": "t.noise_day", "kind": "window", "summary": "day", "severity": "minor", "source": "station_telemetry",
         "field": "noise_dba", "aggregate": "leq", "window": "10m", "local_hours": "06:00-22:00", "op": ">",
         "threshold": 60},
        {"id": "t.noise_night", "kind": "window", "summary": "night", "severity": "minor",
         "source": "station_telemetry", "field": "noise_dba", "aggregate": "leq", "window": "10m",
         "local_hours": "22:00-06:00", "op": ">", "threshold": 50})
    _station(fresh_db)
    # 21:50-22:10 local (13:50-14:10 UTC) the evening before T0, at a steady 55 dB(A): fine by day, above the
    # night limit
    start = datetime.combine(T0.date() - timedelta(days=1), time(21, 50), ZoneInfo("Asia/Shanghai"))
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        insert(conn, "station_telemetry", "st-1", series(start, 60, [55.0] * 20, "noise_dba"))
    run(fresh_db, rules)
    (alert,) = alerts(fresh_db)
    assert alert["rule_id"] == "t.noise_night" and alert["started_at"] == start + timedelta(minutes=10)


def test_leq_is_an_energy_mean(fresh_db: str) -> None:
    rule = {"id": "t.leq", "kind": "window", "summary": "{value:.2f}", "severity": "minor",
            "source": "station_telemetry", "field": "noise_dba", "aggregate": "leq", "window": "10m",
            "op": ">", "threshold": 60}
    _station(fresh_db)
    # 50 and 70 dB(A): arithmetic mean 60 (not above), energy mean 10·log10((1e5 + 1e7)/2) = 67.03
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        insert(conn, "station_telemetry", "st-1", series(at(0), 300, [50.0, 70.0, 40.0, 40.0], "noise_dba"))
    run(fresh_db, ruleset(rule))
    (alert,) = alerts(fresh_db)
    assert alert["value"] == pytest.approx(67.033, abs=1e-3)
