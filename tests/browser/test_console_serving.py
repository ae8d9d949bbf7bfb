"""How the API serves the console (no browser needed): the page at /, its files with a strict
Content-Security-Policy and revalidating cache headers, no inline script and nothing from another origin, both
translations complete, the JSON API and /docs unchanged; ``GET /me``; the silence preview."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sanitel.api import console as console_module
from sanitel.api.app import create_app
from sanitel.api.console import STATIC_DIR
from tests.browser.test_console import ALERTS_SQL
from tests.support.api_helpers import NOW, api_settings, assert_error, auth, mint_key, seed

JS_DIR = STATIC_DIR / "js"


@pytest.fixture
def client(fresh_db: str, tmp_path: Path) -> Iterator[TestClient]:
    seed(fresh_db)
    with psycopg.connect(fresh_db, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        conn.execute(ALERTS_SQL, {"t": NOW})
    with TestClient(create_app(api_settings(fresh_db, tmp_path))) as c:
        yield c


def test_the_page_and_its_files_are_served_with_a_strict_csp_and_revalidation(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for response in (page, client.get("/console/js/main.js"), client.get("/console/vendor/echarts.esm.min.js")):
        assert response.status_code == 200, response.url
        csp = response.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "frame-ancestors 'none'" in csp and "connect-src 'self'" in csp
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-content-type-options"] == "nosniff"
    assert "javascript" in client.get("/console/js/main.js").headers["content-type"]
    assert client.get("/console/i18n/zh-CN.json").json()["nav.alerts"] == "告警"
    assert client.get("/console/nothing.js").status_code == 404


def test_the_json_api_and_its_docs_keep_working(client: TestClient, fresh_db: str) -> None:
    missing = client.get("/no-such-endpoint")
    assert missing.status_code == 404 and "error" in missing.json()  # the API's error shape, not the console's
    assert client.get("/docs").status_code == 200
    assert "/me" in client.get("/openapi.json").json()["paths"]
    assert client.get("/sites", headers=auth(mint_key(fresh_db, "viewer"))).status_code == 200


def test_me_tells_the_keys_name_and_role(client: TestClient, fresh_db: str) -> None:
    assert_error(client.get("/me"), 401, "unauthorized")
    body = client.get("/me", headers=auth(mint_key(fresh_db, "viewer", "li"))).json()
    assert (body["name"], body["role"]) == ("li", "viewer")
    assert client.get("/me", headers=auth(mint_key(fresh_db, "supervisor"))).json()["role"] == "supervisor"


class _Markup(HTMLParser):
    """Every inline script, event-handler attribute, style attribute and off-origin URL of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "script" and not named.get("src"):
            self._in_script = True
        for name, value in attrs:
            if name.startswith("on") or name == "style":
                self.problems.append(f"<{tag} {name}>")
            if name in ("src", "href") and value and re.match(r"^(https?:)?//", value):
                self.problems.append(f"<{tag} {name}={value}>: another origin")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("inline <script>")


def test_no_inline_script_and_nothing_from_another_origin() -> None:
    markup = _Markup()
    markup.feed((STATIC_DIR / "index.html").read_text())
    assert markup.problems == []
    for module in JS_DIR.rglob("*.js"):
        text = module.read_text()
        assert not re.search(r"https?://", text), f"{module.name} names another origin"
        # markup built in JS is bound to the same rules: no handler attributes, no style attributes
        assert not re.search(r"\son[a-z]+=|\sstyle=", text), module.name
        assert "eval(" not in text and "new Function" not in text, module.name


def _keys_used() -> set[str]:
    """Translation keys named literally in the modules and markup: t("a.b"), data-i18n="a.b", data-i18n-*="a.b"."""
    found: set[str] = set()
    for path in [*JS_DIR.rglob("*.js"), STATIC_DIR / "index.html"]:
        text = path.read_text()
        found |= set(re.findall(r"""\bt\(\s*["']([a-zA-Z]+\.[\w.-]+)["']""", text))
        found |= set(re.findall(r"""data-i18n(?:-[a-z]+)?=["']([a-zA-Z]+\.[\w.-]+)["']""", text))
    return found


def test_both_languages_translate_every_label_the_page_uses() -> None:
    en = json.loads((STATIC_DIR / "i18n" / "en.json").read_text())
    zh = json.loads((STATIC_DIR / "i18n" / "zh-CN.json").read_text())
    assert set(en) == set(zh)
    used = _keys_used()
    assert len(used) > 50 and used <= set(en), sorted(used - set(en))
    # a Chinese label is Chinese (units and codes aside): no English left untranslated
    untranslated = [k for k, v in zh.items() if v == en[k] and re.search(r"[a-z]{4,}", v)]
    assert untranslated == []
    for prefix, values in (("severity", ("critical", "major", "minor", "warning")),
                           ("state", ("pending", "firing", "resolved")),
                           ("role", ("viewer", "supervisor", "admin"))):
        assert {f"{prefix}.{v}" for v in values} <= set(en)


# --- silence preview ------------------------------------------------------------------------------------------

def test_silence_preview_matches_open_alerts_like_the_engine(client: TestClient, fresh_db: str) -> None:
    viewer = auth(mint_key(fresh_db, "viewer"))

    def preview(*matchers: dict[str, str]) -> dict[str, Any]:
        response = client.post("/silences/preview", json={"matchers": list(matchers)}, headers=viewer)
        assert response.status_code == 200, response.text
        return response.json()

    assert preview({"label": "site_id", "value": "ts-1"})["matched"] == 1
    both = preview({"label": "severity", "op": "=~", "value": "major|minor"})
    assert both["matched"] == 2 and {a["alert_id"] for a in both["alerts"]} == {1, 2}
    assert preview({"label": "team", "op": "!=", "value": "stations"})["matched"] == 1
    # =~ matches the whole value (RE2 fullmatch), as the engine's silences do
    assert preview({"label": "severity", "op": "=~", "value": "maj"})["matched"] == 0
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("UPDATE alerts SET state = 'resolved', resolved_at = now() WHERE alert_id = 1")
    assert preview({"label": "site_id", "value": "ts-1"})["matched"] == 0  # resolved: nothing left to silence
    assert client.get("/silences", headers=viewer).json()["items"] == []  # a preview creates nothing


def test_silence_preview_refuses_what_a_silence_would_refuse(client: TestClient, fresh_db: str) -> None:
    viewer = auth(mint_key(fresh_db, "viewer"))
    bad = client.post("/silences/preview", json={"matchers": [{"label": "rule_id", "op": "=~", "value": "(a"}]},
                      headers=viewer)
    assert_error(bad, 422, "validation_error", "body.matchers.0.value")
    assert_error(client.post("/silences/preview", json={"matchers": []}, headers=viewer), 422, "validation_error")
    assert_error(client.post("/silences/preview", json={"matchers": [{"label": "x", "value": "y"}]}), 401,
                 "unauthorized")


@pytest.fixture
def viewer(fresh_db: str) -> dict[str, str]:
    return auth(mint_key(fresh_db, "viewer"))


# the client and key are shared by the examples on purpose: a preview changes nothing
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(max_size=40), op=st.sampled_from(["=", "!=", "=~", "!~"]))
def test_silence_preview_never_fails_on_any_matcher_value(client: TestClient, viewer: dict[str, str], value: str,
                                                          op: str) -> None:
    response = client.post("/silences/preview", json={"matchers": [{"label": "rule_id", "op": op, "value": value}]},
                           headers=viewer)
    assert response.status_code in (200, 422), response.text
    if response.status_code == 422:
        assert response.json()["error"]["field"].startswith("body.matchers.0")


def test_an_install_without_the_console_files_still_serves_the_api(fresh_db: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(console_module, "STATIC_DIR", tmp_path / "missing")
    with TestClient(create_app(api_settings(fresh_db, tmp_path))) as c:
        assert_error(c.get("/"), 404, "not_found")
        assert c.get("/console/js/main.js").status_code == 404
        assert c.get("/sites", headers=auth(mint_key(fresh_db, "viewer"))).status_code == 200
