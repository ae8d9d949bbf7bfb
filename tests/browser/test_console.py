"""The supervisor console in headless Chromium against the real API (issue 14, item 6)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg.rows import dict_row

from sanitel.alerts.rules import RuleSet, load_rule_file
from sanitel.ingest.collector import Collector
from sanitel.processors.cems_averages import local_day_bounds, run_scheduled
from sanitel.servers import MosquittoServer
from tests.browser.conftest import WAIT_MS, Console, ConsolePage
from tests.support.alerts_db import run
from tests.support.api_helpers import NOW
from tests.support.db_clock import database_now
from tests.support.mqtt_tools import publish

OpenPage = Callable[..., ConsolePage]
RULES_DIR = Path(__file__).resolve().parents[2] / "alerts" / "rules"

# Two open alerts at the seeded registry's sites (tests/support/api_helpers.py), as the engine stores them.
ALERTS_SQL = """
INSERT INTO alerts (alert_id, rule_id, fingerprint, device_id, site_id, kind, severity, state, labels, summary,
                    value, threshold, started_at, fired_at) VALUES
  (1, 'station_h2s', 'station_h2s:ts-1', 'TS-1', 'ts-1', 'transfer_station', 'major', 'firing',
   '{"rule_id": "station_h2s", "site_id": "ts-1", "severity": "major", "team": "stations"}',
   'ts-1: boundary H2S 0.080 mg/m³ above 0.06', 0.08, 0.06, %(t)s, %(t)s),
  (2, 'bin_overflow', 'bin_overflow:BIN-1', 'BIN-1', 'sp-1', 'bin', 'minor', 'firing',
   '{"rule_id": "bin_overflow", "site_id": "sp-1", "severity": "minor", "team": "collection"}',
   'BIN-1: bin 95 %% full', 95, 90, %(t)s, %(t)s);
SELECT setval(pg_get_serial_sequence('alerts', 'alert_id'), 100);
"""


def add_alerts(db: str) -> None:
    with psycopg.connect(db, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:  # several statements
        conn.execute(ALERTS_SQL, {"t": NOW})


def rows(db: str, sql: str, *params: object) -> list[dict[str, Any]]:
    with psycopg.connect(db, row_factory=dict_row) as conn:
        return conn.execute(sql, params).fetchall()


def test_sign_in_keeps_the_key_for_the_tab_only_and_sign_out_forgets_it(console: Console, open_page: OpenPage) -> None:
    cp = open_page(console)
    cp.sign_in(console.supervisor)
    page = cp.page
    assert page.evaluate("sessionStorage.getItem('sanitel.apiKey')") == console.supervisor
    stored = page.evaluate("JSON.stringify(Object.assign({}, localStorage))")
    assert console.supervisor not in stored and page.evaluate("document.cookie") == ""
    assert "sup-wang" in page.inner_text("#who")
    page.click("#signout")
    page.wait_for_selector("#signin:not([hidden])")
    assert page.evaluate("sessionStorage.getItem('sanitel.apiKey')") is None
    assert page.is_hidden("nav.pages")


# --- the alerts board -----------------------------------------------------------------------------------------

def _bin_fire_rules() -> RuleSet:
    """The shipped bin_fire rule alone: the other shipped rules would judge the seeded fleet by today's clock."""
    rules = RuleSet()
    for rule in load_rule_file(RULES_DIR / "sorting_point.yaml"):
        if rule.id == "bin_fire":
            rules.add(rule, "sorting_point.yaml")
    return rules


@pytest.fixture
def evaluator(console: Console) -> Iterator[None]:
    """Evaluation passes every half second on the database's clock, as the evaluator service runs them."""
    stop = threading.Event()
    rules = _bin_fire_rules()

    def loop() -> None:
        while not stop.is_set():
            run(console.db, rules, now=database_now(console.db), data_quiet_after=timedelta(minutes=2))
            stop.wait(0.5)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(10)


def test_a_bin_fire_published_through_the_broker_appears_live_is_acknowledged_and_resolved(
        console: Console, open_page: OpenPage, mqtt_server: MosquittoServer,
        make_collector: Callable[..., Collector], evaluator: None) -> None:
    with psycopg.connect(console.db, autocommit=True) as conn:
        conn.execute("INSERT INTO devices (device_id, kind, site_id, name) VALUES ('bin-f1', 'bin', 'sp-1', 'Bin F1')")
    make_collector(console.db, mqtt_server.url)
    cp = open_page(console)
    cp.sign_in(console.supervisor)
    page = cp.page
    page.wait_for_selector(".stream[data-stream=live]")  # subscribed: what happens from now on arrives live
    assert page.locator("[data-rule=bin_fire]").count() == 0
    ts_ms = int(database_now(console.db).timestamp() * 1000)
    publish(mqtt_server.port, [("sanitation/shenzhen/bin/bin-f1/status",
                                json.dumps({"ts": ts_ms, "fill_level_pct": 40, "fire_alarm": True}).encode())])
    # broker → collector → database → evaluator → NOTIFY → SSE → board, with no reload (the 10 s)
    card = page.wait_for_selector("[data-rule=bin_fire]", timeout=WAIT_MS)
    assert card is not None and "fire alarm" in card.inner_text()
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1  # the same document
    alert_id = int(card.get_attribute("data-alert-id") or 0)

    page.click(f"[data-alert-id='{alert_id}'] [data-action=ack]")
    page.fill("dialog.ask [name=value]", "fire service called")
    page.click("dialog.ask button[type=submit]")
    page.wait_for_selector(f"[data-alert-id='{alert_id}'] .ack")
    [row] = rows(console.db, "SELECT acknowledged_by, ack_comment FROM alerts WHERE alert_id = %s", alert_id)
    assert row == {"acknowledged_by": "sup-wang", "ack_comment": "fire service called"}
    # the history timeline shows the acknowledgement with who did it
    page.click(f"[data-alert-id='{alert_id}'] [data-action=history]")
    timeline = page.wait_for_selector(f"[data-alert-id='{alert_id}'] .timeline")
    assert timeline is not None and "sup-wang" in timeline.inner_text()
    # the fire is out: resolved by hand, the card leaves the board
    page.click(f"[data-alert-id='{alert_id}'] [data-action=resolve]")
    page.fill("dialog.ask [name=value]", "extinguished")
    page.click("dialog.ask button[type=submit]")
    page.wait_for_selector(f"[data-alert-id='{alert_id}']", state="detached")
    [row] = rows(console.db, "SELECT state, resolved_by FROM alerts WHERE alert_id = %s", alert_id)
    assert row == {"state": "resolved", "resolved_by": "sup-wang"}


def test_a_silence_is_previewed_then_created(console: Console, open_page: OpenPage) -> None:
    add_alerts(console.db)
    cp = open_page(console)
    cp.sign_in(console.supervisor)
    page = cp.page
    page.click("[data-alert-id='1'] [data-action=silence]")
    dialog = page.locator("dialog.silence-dialog")
    # prefilled from the alert: rule_id = station_h2s, site_id = ts-1
    assert dialog.locator(".matcher [name=value]").evaluate_all("els => els.map(e => e.value)") == ["station_h2s", "ts-1"]
    dialog.locator("[data-role=preview]").click()
    page.wait_for_selector("dialog.silence-dialog .preview[data-matched='1']")
    assert "ts-1: boundary H2S" in dialog.locator(".preview").inner_text()
    # a broader matcher: every open alert of severity major or minor
    dialog.locator(".matcher [data-role=remove]").nth(1).click()
    dialog.locator(".matcher [name=label]").fill("severity")
    dialog.locator(".matcher [name=op]").select_option("=~")
    dialog.locator(".matcher [name=value]").fill("major|minor")
    dialog.locator("[data-role=preview]").click()
    page.wait_for_selector("dialog.silence-dialog .preview[data-matched='2']")
    dialog.locator("[name=comment]").fill("compactor maintenance")
    dialog.locator("button[type=submit]").click()
    page.wait_for_selector(".silence-list [data-silence-id]")
    [silence] = rows(console.db, "SELECT matchers, created_by, comment FROM silences")
    assert silence == {"matchers": [{"label": "severity", "op": "=~", "value": "major|minor"}],
                       "created_by": "sup-wang", "comment": "compactor maintenance"}


def test_a_viewer_sees_no_write_button_and_a_forced_write_shows_the_apis_403(
        console: Console, open_page: OpenPage) -> None:
    add_alerts(console.db)
    cp = open_page(console)
    cp.allow(r"status of 403")  # Chromium logs the refused request; the page shows the API's message
    cp.sign_in(console.viewer)
    page = cp.page
    page.wait_for_selector("[data-alert-id='1']")
    writes = page.locator("button.write")
    assert writes.count() >= 4 and all(not writes.nth(i).is_visible() for i in range(writes.count()))
    assert page.locator("[data-alert-id='1'] [data-action=history]").is_visible()
    # forced: un-hide the acknowledge button as a curious user could, and use it. One step: the board redraws once
    # its stream listens (it reads the list again), and a redraw between un-hiding and clicking hides it again.
    page.eval_on_selector("[data-alert-id='1'] [data-action=ack]", "b => { b.hidden = false; b.click(); }")
    page.click("dialog.ask button[type=submit]")
    toast = page.wait_for_selector("#toast[data-kind=error]:not([hidden])")
    assert toast is not None and "403" in toast.inner_text() and "supervisor" in toast.inner_text()
    assert rows(console.db, "SELECT acknowledged_by FROM alerts WHERE alert_id = 1") == [{"acknowledged_by": None}]


def test_an_action_on_a_board_opened_before_asks_once_and_acts_once(console: Console, open_page: OpenPage) -> None:
    """Every page draws into the same view element: a click listener an earlier visit of the board left there would
    open one dialog, and send one acknowledgement, per visit."""
    add_alerts(console.db)
    cp = open_page(console)
    cp.sign_in(console.supervisor)
    page = cp.page
    for hash_ in ("#/fleet", "#/alerts"):
        page.evaluate("h => { location.hash = h; }", hash_)
        page.wait_for_selector(f"#view[data-page={hash_[2:]}][data-ready]")
    page.wait_for_selector("[data-alert-id='1']")
    posted: list[str] = []
    page.on("request", lambda request: posted.append(request.url) if request.method == "POST" else None)
    page.click("[data-alert-id='1'] [data-action=ack]")
    page.wait_for_selector("dialog.ask")
    assert page.locator("dialog.ask").count() == 1
    page.click("dialog.ask button[type=submit]")
    page.wait_for_selector("[data-alert-id='1'] .ack")
    assert [url.rsplit("/", 2)[-2:] for url in posted] == [["1", "acknowledge"]]


def test_switching_to_chinese_changes_every_label_and_back(console: Console, open_page: OpenPage) -> None:
    add_alerts(console.db)
    cp = open_page(console)
    cp.sign_in(console.supervisor)
    page = cp.page
    page.wait_for_selector("[data-alert-id='1']")
    assert page.inner_text("nav.pages a[data-page=alerts]") == "Alerts"
    page.select_option("#lang", "zh-CN")
    page.wait_for_selector("html[lang=zh-CN]")  # (wait_for_function would need eval, which the CSP forbids)
    page.wait_for_selector("[data-alert-id='1']")
    assert page.inner_text("nav.pages a[data-page=alerts]") == "告警"
    assert page.inner_text("#signout") == "退出登录"
    assert page.inner_text(".sev-major h2 .badge") == "重要"
    assert page.inner_text("[data-alert-id='1'] [data-action=ack]") == "确认"
    page.select_option("#lang", "en")
    page.wait_for_selector("html[lang=en]")
    assert page.inner_text("nav.pages a[data-page=alerts]") == "Alerts"


# --- incineration ---------------------------------------------------------------------------------------------

PLANT_TZ = "Asia/Shanghai"
PLANT_DAY = date(2024, 5, 1)


def add_plant_day(db: str) -> None:
    """A plant with one line and a day of minute readings (NOx normalised to 200 mg/m³, one hour at 350), averaged
    by the scheduled processor as in tests/integration/test_cems_compliance.py."""
    start, _ = local_day_bounds(PLANT_DAY, PLANT_TZ)
    ten = datetime(2024, 5, 1, 10, tzinfo=ZoneInfo(PLANT_TZ)).astimezone(UTC)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("INSERT INTO sites (site_id, kind, name, timezone) VALUES ('lhk', 'plant', 'Laohukeng', %s)",
                     (PLANT_TZ,))
        conn.execute("INSERT INTO sites (site_id, kind, name, parent_id, timezone)"
                     " VALUES ('lhk-l1', 'line', 'Line 1', 'lhk', %s)", (PLANT_TZ,))
        conn.execute("INSERT INTO devices (device_id, kind, site_id) VALUES ('LHK-L1', 'cems', 'lhk-l1')")
        with conn.cursor().copy("COPY cems_readings (device_id, ts, data_kind, received_at, nox_mg_m3, nox_flag, o2_pct,"
                                " o2_flag) FROM STDIN") as copy:
            for i in range(1440):
                t = start + timedelta(minutes=i)
                nox = 210.0 if ten <= t < ten + timedelta(hours=1) else 180.0
                copy.write_row(("LHK-L1", t, "minute", start + timedelta(days=1), nox, "N", 15.0, "N"))
        assert run_scheduled(conn) is not None


def test_incineration_chart_renders_with_its_limit_lines_and_downloads(console: Console, open_page: OpenPage) -> None:
    add_plant_day(console.db)
    cp = open_page(console)
    cp.sign_in(console.supervisor, f"#/incineration?plant=lhk&day={PLANT_DAY}")
    page = cp.page
    chart = page.wait_for_selector(".inc-chart[data-limit-lines]")
    assert chart is not None
    # NOx: GB 1-hour and 24-hour, EU half-hour (A) and daily limits, from the compliance report
    assert int(chart.get_attribute("data-limit-lines") or 0) >= 3
    assert page.locator(".inc-chart canvas").count() >= 1
    assert "NOx" in page.inner_text(".chart-title")
    assert "exceeded" in page.inner_text(".checks")  # 350 mg/m³ for an hour exceeds GB 1-hour 300
    with page.expect_download() as png:
        page.click("button[data-action=png]")
    assert png.value.suggested_filename.endswith(".png")
    # every page draws into the same view element: a click listener an earlier visit left there would fetch once more
    for hash_ in ("#/alerts", f"#/incineration?plant=lhk&day={PLANT_DAY}"):
        page.evaluate("h => { location.hash = h; }", hash_)
        page.wait_for_selector(f"#view[data-page={hash_[2:].split('?')[0]}][data-ready]")
    page.wait_for_selector(".inc-chart[data-limit-lines]")
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url) if "format=csv" in request.url else None)
    with page.expect_download() as csv:
        page.click("button[data-action=csv]")
    path = csv.value.path()
    assert path is not None and "gb.1h" in Path(path).read_text()
    assert len(fetched) == 1, fetched  # one per click, however often the page was opened


# --- every page -----------------------------------------------------------------------------------------------

PAGES = ("alerts", "fleet", "stations", "sorting", "incineration")


@pytest.mark.parametrize("width", [1280, 390])
def test_every_page_renders_without_console_errors_in_both_languages(
        console: Console, open_page: OpenPage, width: int) -> None:
    add_alerts(console.db)
    add_plant_day(console.db)
    cp = open_page(console, viewport={"width": width, "height": 800})
    cp.sign_in(console.supervisor)
    page = cp.page
    for lang in ("en", "zh-CN"):
        page.select_option("#lang", lang)
        for name in PAGES:
            page.click(f"nav.pages a[data-page={name}]")
            page.wait_for_selector(f"#view[data-page={name}][data-ready]")
            # nothing wider than the screen but tables, which scroll in their own box
            assert page.evaluate("document.documentElement.scrollWidth") <= width + 1, (lang, name)
    assert not cp.unexpected()


def test_keyboard_reaches_sign_in_navigation_and_actions(console: Console, open_page: OpenPage) -> None:
    add_alerts(console.db)
    cp = open_page(console)
    page = cp.page
    page.goto(console.url)
    # the form appears once the translations are in, with the keyboard on the key field (typed before it, the first
    # characters went nowhere and the sign-in was refused in some runs)
    page.wait_for_selector("#apikey:focus", timeout=WAIT_MS)
    page.keyboard.type(console.supervisor)
    page.keyboard.press("Enter")
    page.wait_for_selector("[data-alert-id='1']")
    # signed in, the keyboard is on the navigation (the hidden form's field kept it nowhere in particular: the Tabs
    # below then started past the navigation in some runs)
    assert page.evaluate("document.activeElement.dataset.page") == "alerts"
    seen = []
    for _ in range(20):
        page.keyboard.press("Tab")
        seen.append(page.evaluate("document.activeElement.dataset.page || document.activeElement.dataset.action || ''"))
    assert "fleet" in seen and "ack" in seen
    page.focus("nav.pages a[data-page=incineration]")
    page.keyboard.press("Enter")
    page.wait_for_selector("#view[data-page=incineration]")
