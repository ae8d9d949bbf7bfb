"""Issue 15, item 5 in the console: the daily clearance and street sanitation index pages in headless Chromium
against the real API, on the district the clearance report's own tests seed (tests/integration/
test_clearance_report.py: points on time, late and missed, a route, tickets, a week of bins, alerts and sweeping).
Every figure a page shows is compared with the API's answer to that page's own request, in English and Chinese;
the CSV links give the API's CSV; an unknown status is shown by its name; the default day and week are the site's.

The API judges "as of now": it runs at a fixed instant after the seeded week (time-machine), the browser's clock
is set where a test depends on it (Playwright's clock)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import time_machine
from playwright.sync_api import Page, Response, Route

from tests.browser.conftest import Console, ConsolePage
from tests.integration.test_clearance_report import AFTER_WEEK, DAY, seed_day, seed_week

OpenPage = Callable[..., ConsolePage]
WEEK = "2026-W47"  # DAY's ISO week
CLEARANCE = f"#/clearance?site=d1&day={DAY}"
INDEX = f"#/index?site=d1&week={WEEK}"
LANGS = {"en": "en-US", "zh-CN": "zh-CN"}
MISSED = {"en": "Missed", "zh-CN": "漏收"}
POINT_HEADER = {"en": "Point", "zh-CN": "投放点"}
CLEARANCE_COMPONENT = {"en": "On-time clearance", "zh-CN": "按时清运"}
# a translation key shown instead of its text (a schedule error's "params.clearance.kitchen.by" is the API's)
UNTRANSLATED = re.compile(r"(?<![\w.])(?:clearance|index|component|report|status|category|nav)\.[A-Za-z_.]+")


@pytest.fixture
def district(console: Console) -> Iterator[Console]:
    """The console on the clearance tests' district d1 (Asia/Shanghai), the API's clock after the seeded week."""
    with psycopg.connect(console.db, autocommit=True) as conn:
        seed_day(conn)
        seed_week(conn)
    with time_machine.travel(AFTER_WEEK, tick=True):
        yield console


def num(value: float) -> str:
    """A number as the page writes it (Intl.NumberFormat, at most one decimal; en and zh-CN alike)."""
    text = f"{value:,.1f}"
    return text[:-2] if text.endswith(".0") else text


def pct(value: float | None) -> str:
    return "—" if value is None else f"{num(value)} %"


def open_report(cp: ConsolePage, token: str, hash_: str, api_path: str) -> dict[str, Any]:
    """Sign in straight onto a report page; the API's JSON that the page itself asked for."""
    with cp.page.expect_response(lambda r: api_path in r.url and r.request.method == "GET") as answer:
        cp.sign_in(token, hash_)
    cp.page.wait_for_selector("#view[data-ready]")
    response: Response = answer.value
    assert response.ok, response.status
    body: dict[str, Any] = response.json()
    return body


def cells(page: Page, selector: str) -> list[str]:
    return [text.strip() for text in page.locator(selector).all_inner_texts()]


# --- daily clearance -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("lang", list(LANGS))
def test_the_clearance_page_shows_the_apis_figures(district: Console, open_page: OpenPage, lang: str) -> None:
    cp = open_page(district, locale=LANGS[lang])
    report = open_report(cp, district.viewer, CLEARANCE, "/reports/clearance?")
    page = cp.page
    assert page.get_attribute("html", "lang") == lang
    # not vacuous: the seeded day has two on time, one late, one missed and a route that skipped p2
    assert (report["totals"]["on_time"], report["totals"]["missed"], len(report["points"])) == (2, 1, 4)

    for key, value in report["totals"].items():
        shown = page.inner_text(f"[data-total='{key}'] dd")
        assert shown == (pct(value) if key == "on_time_pct" else str(value)), key
    assert page.inner_text("[data-total=missed] dt") == MISSED[lang]

    streets = page.locator("table.streets tbody tr")
    assert [streets.nth(i).get_attribute("data-street") for i in range(streets.count())] == [
        s["street_id"] for s in report["streets"]]
    for street in report["streets"]:
        row = f"table.streets tr[data-street='{street['street_id']}']"
        for key, value in street.items():
            if key not in ("street_id", "scheduled", "on_time_pct"):
                assert page.inner_text(f"{row} [data-count='{key}']") == str(value), (street["street_id"], key)
        assert page.inner_text(f"{row} [data-col=on_time_pct]") == pct(street["on_time_pct"])

    assert page.inner_text("table.points thead th:first-child") == POINT_HEADER[lang]
    for point in report["points"]:
        row = f"table.points tr[data-point='{point['point_id']}'][data-category='{point['category']}']"
        assert page.get_attribute(f"{row} .status", "data-status") == point["status"]
        assert f"{num(point['weight_kg'])} kg" in page.inner_text(row)

    (route,) = report["routes"]
    assert page.inner_text(f"tr[data-route='{route['route_id']}'] [data-col=adherence_pct]") == pct(
        route["adherence_pct"]) == "66.7 %"
    assert "Point 2" in page.inner_text(f"tr[data-route='{route['route_id']}']")  # skipped, by its name

    for row in report["tonnage"]:
        for key in ("collected_kg", "received_kg", "difference_kg"):
            assert page.inner_text(f"table.tonnage tr[data-category='{row['category']}'] [data-col={key}]") == (
                f"{num(row[key])} kg")
    drawn = json.loads(page.get_attribute("[data-chart=tonnage]", "data-drawn") or "[]")
    assert drawn == [[r["category"], r["collected_kg"], r["received_kg"]] for r in report["tonnage"]] != []
    assert page.locator("[data-chart=tonnage] canvas").count() >= 1
    assert page.locator("a.csv").count() == 4


def test_the_clearance_csv_links_give_the_apis_csv(district: Console, open_page: OpenPage, tmp_path: Path) -> None:
    cp = open_page(district)
    open_report(cp, district.viewer, CLEARANCE, "/reports/clearance?")
    page = cp.page
    for section in ("points", "routes"):
        link = page.locator(f"[data-role=csv-{section}] a.csv")
        href = link.get_attribute("href") or ""
        assert "format=csv" in href and f"section={section}" in href
        with page.expect_download() as download:
            link.click()
        saved = download.value.path()
        assert saved is not None and download.value.suggested_filename == f"clearance-d1-{DAY}-{section}.csv"
        api = page.request.get(f"{district.url}{href}", headers={"Authorization": f"Bearer {district.viewer}"})
        assert api.ok and Path(saved).read_text() == api.text()
    assert "R1" in Path(saved).read_text() and "p2" in Path(saved).read_text()  # the routes CSV: p2 skipped


def test_a_csv_link_downloads_once_after_the_page_was_opened_before(district: Console, open_page: OpenPage) -> None:
    """Every page draws into the same view element: a click listener left there by an earlier visit would fetch and
    save the CSV once more per visit."""
    cp = open_page(district)
    cp.sign_in(district.viewer, CLEARANCE)
    page = cp.page
    for hash_ in ("#/alerts", INDEX, CLEARANCE):
        page.evaluate("h => { location.hash = h; }", hash_)
        page.wait_for_selector(f"#view[data-page={hash_[2:].split('?')[0]}][data-ready]")
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url) if "format=csv" in request.url else None)
    with page.expect_download():
        page.click("[data-role=csv-streets] a.csv")
    # the listeners run on the click, each fetching at once: by the first download every fetch has been asked for
    assert len(fetched) == 1, fetched


def test_a_status_the_page_does_not_know_is_shown_by_its_name_and_no_data_has_its_own_look(
        district: Console, open_page: OpenPage) -> None:
    """no_data (no truck reported: nothing to judge) and any status the API may add later."""
    cp = open_page(district)
    page = cp.page

    def with_new_statuses(route: Route) -> None:
        response = route.fetch()
        body = response.json()
        body["points"][0]["status"] = "no_data"
        body["points"][1]["status"] = "under_review"
        body["totals"]["under_review"] = 1
        route.fulfill(response=response, json=body)

    page.route("**/reports/clearance?*", with_new_statuses)
    cp.sign_in(district.viewer, CLEARANCE)
    page.wait_for_selector("#view[data-ready]")
    assert page.inner_text("table.points .status[data-status=no_data]") == "No data"
    assert page.inner_text("table.points .status[data-status=under_review]") == "under_review"
    assert page.inner_text("[data-total=under_review] dd") == "1"
    assert page.inner_text("table.streets thead").count("under_review") == 1  # a column of its own
    style = "el => [getComputedStyle(el).borderStyle, getComputedStyle(el).backgroundColor]"
    no_data = page.eval_on_selector("table.points .status[data-status=no_data]", style)
    unknown = page.eval_on_selector("table.points .status[data-status=under_review]", style)
    missed = page.eval_on_selector("table.points .status[data-status=missed]", style)
    assert no_data[0] == "dashed" and len({tuple(no_data), tuple(unknown), tuple(missed)}) == 3


# --- the street sanitation index -------------------------------------------------------------------------------

@pytest.mark.parametrize("lang", list(LANGS))
def test_the_index_page_shows_the_apis_ranking_components_and_weights(
        district: Console, open_page: OpenPage, lang: str) -> None:
    cp = open_page(district, locale=LANGS[lang])
    report = open_report(cp, district.viewer, INDEX, "/reports/sanitation-index?")
    page = cp.page
    streets = report["streets"]
    assert len(streets) == 2 and report["weights"]["clearance"] == 0.4 and report["week"] == WEEK

    rows = page.locator("table.ranking tbody tr")
    assert [rows.nth(i).get_attribute("data-street") for i in range(rows.count())] == [s["street_id"] for s in streets]
    for street in streets:
        row = f"table.ranking tr[data-street='{street['street_id']}']"
        assert page.inner_text(f"{row} [data-col=rank]") == str(street["rank"])
        assert page.inner_text(f"{row} [data-col=index]") == num(street["index"])
        assert page.inner_text(f"{row} [data-col=previous_index]") == num(street["previous_index"])
        change = street["change"]
        arrow, sign = ("▲", "+") if change > 0 else ("▼", "−") if change < 0 else ("=", "±")
        assert page.inner_text(f"{row} [data-col=change]") == f"{arrow} {sign}{num(abs(change))}"
        for name, value in street["components"].items():
            assert page.inner_text(f"{row} [data-component='{name}']") == ("—" if value is None else num(value)), name

    # the explanation names every component the API weighs, with the API's weight
    listed = page.locator("ul.components li")
    assert [listed.nth(i).get_attribute("data-component") for i in range(listed.count())] == list(report["weights"])
    for name, weight in report["weights"].items():
        assert f"{round(weight * 100)} %" in page.inner_text(f"ul.components li[data-component='{name}']")
    assert CLEARANCE_COMPONENT[lang] in page.inner_text("ul.components li[data-component=clearance]")
    assert CLEARANCE_COMPONENT[lang] in page.inner_text("table.ranking thead")

    drawn = json.loads(page.get_attribute(".index-chart", "data-drawn") or "[]")
    assert drawn == [[s["street_id"], s["index"]] for s in streets if s["index"] is not None]
    assert page.locator(".index-chart canvas").count() >= 1
    assert "format=csv" in (page.get_attribute("a.csv", "href") or "")


def test_the_default_day_and_week_are_the_last_whole_ones_in_the_sites_zone(
        district: Console, open_page: OpenPage) -> None:
    """Monday 2026-11-23 01:00 in Shanghai is still Sunday 22 in UTC and west of it (the browser's zone in the
    suite): in the site's zone yesterday is the 22nd and the last whole week W47, not the 21st and W46."""
    cp = open_page(district)
    cp.page.clock.set_fixed_time(datetime(2026, 11, 22, 17, 0, tzinfo=UTC))
    cp.sign_in(district.viewer, "#/clearance?site=d1")
    page = cp.page
    page.wait_for_selector("#view[data-page=clearance][data-ready]")
    assert page.input_value("[name=day]") == "2026-11-22"
    page.click("nav.pages a[data-page=index]")
    page.wait_for_selector("#view[data-page=index][data-ready]")
    assert page.input_value("[name=week]") == "2026-W47"


# --- both pages: small screens, both languages, keyboard -------------------------------------------------------

@pytest.mark.parametrize("width", [1280, 390])
def test_both_pages_fit_the_screen_in_both_languages_without_console_errors(
        district: Console, open_page: OpenPage, width: int) -> None:
    cp = open_page(district, viewport={"width": width, "height": 800})
    cp.sign_in(district.viewer, CLEARANCE)
    page = cp.page
    for lang in ("en", "zh-CN"):
        page.select_option("#lang", lang)
        page.wait_for_selector(f"html[lang={lang}]")
        for hash_, name in ((CLEARANCE, "clearance"), (INDEX, "index")):
            page.evaluate("h => { location.hash = h; }", hash_)
            page.wait_for_selector(f"#view[data-page={name}][data-ready]")
            # nothing wider than the screen but tables, which scroll in their own box
            assert page.evaluate("document.documentElement.scrollWidth") <= width + 1, (lang, name)
            # every label translated: no key shown in its place (a missing key shows itself)
            assert not UNTRANSLATED.findall(page.inner_text("#view")), (lang, name)
    assert not cp.unexpected()


def test_the_keyboard_reaches_the_pages_their_choices_and_downloads(district: Console, open_page: OpenPage) -> None:
    cp = open_page(district)
    cp.sign_in(district.viewer)
    page = cp.page
    page.focus("nav.pages a[data-page=clearance]")
    page.keyboard.press("Enter")
    page.wait_for_selector("#view[data-page=clearance][data-ready]")
    # the default area is the first district by name ("District 1" = d1): choose the day with the keyboard
    page.focus("[name=day]")
    page.keyboard.type(DAY.strftime("%m%d%Y"))  # Chromium's date field in en-US: month, day, year
    # Each whole date typed on the way (year 0002, 0020, 0202, 2026) asks for a report, and each answer redraws the
    # download links: wait for the typed day's, or the link tabbed to below may be replaced under the focus.
    page.wait_for_selector(f"#view[data-page=clearance][data-ready] a.csv[href*='day={DAY.isoformat()}']")
    page.wait_for_selector("table.routes tr[data-route=R1]")
    seen = []
    for _ in range(12):
        page.keyboard.press("Tab")
        seen.append(page.evaluate("document.activeElement.className || document.activeElement.name || ''"))
        if seen[-1] == "csv":
            break
    assert seen[-1] == "csv", seen
    with page.expect_download() as download:
        page.keyboard.press("Enter")
    assert download.value.suggested_filename.endswith(".csv")
