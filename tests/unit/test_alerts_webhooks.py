"""Webhook definitions as the CLI and the API check them (the same function): each refusal names the field."""

from __future__ import annotations

import pytest

from sanitel.alerts.cli import parse_match
from sanitel.alerts.notify.outbox import WebhookError, check_webhook, new_secret
from sanitel.errors import ConfigError


@pytest.mark.parametrize(("change", "field"), [
    ({"webhook_id": "no spaces"}, "webhook_id"),
    ({"url": "ftp://example.com/x"}, "url"),
    ({"url": "http://example.com:99999/"}, "url"),
    ({"url": "http://exa mple.com/"}, "url"),
    ({"url": "http://example.com/\r\nX-Injected: 1"}, "url"),  # no header injection through the URL
    ({"matchers": [{"label": "a", "value": "x"}, {"label": "b", "op": "=~", "value": "(x"}]}, "matchers.1.value"),
    ({"matchers": [{"label": "a", "op": "~~", "value": "x"}]}, "matchers.0.op"),
    ({"group_by": ["rule_id", "Site-Id"]}, "group_by.1"),
    ({"max_attempts": 0}, "max_attempts"),
])
def test_a_refused_webhook_names_the_field(change: dict[str, object], field: str) -> None:
    good: dict[str, object] = {"webhook_id": "ops", "url": "https://hooks.example.com/sanitel"}
    with pytest.raises(WebhookError) as caught:
        check_webhook(**(good | change))  # type: ignore[arg-type]
    assert caught.value.field == field


def test_matchers_are_stored_as_validated() -> None:
    assert check_webhook("ops", "http://127.0.0.1:8080/h", [{"label": "severity", "value": "critical"}]) == [
        {"label": "severity", "op": "=", "value": "critical"}]
    assert check_webhook("ops", "http://127.0.0.1:8080/h") == []  # no matchers: every alert


def test_cli_match_expressions() -> None:
    assert parse_match(["site_id=ts-1", "rule_id!=x", "severity=~critical|major", "kind!~bin|camera",
                        "summary=a=b"]) == [
        {"label": "site_id", "op": "=", "value": "ts-1"}, {"label": "rule_id", "op": "!=", "value": "x"},
        {"label": "severity", "op": "=~", "value": "critical|major"}, {"label": "kind", "op": "!~", "value": "bin|camera"},
        {"label": "summary", "op": "=", "value": "a=b"}]
    with pytest.raises(ConfigError, match=r"--match 'severity' \(matchers.0\)"):
        parse_match(["severity"])


def test_secrets_are_long_and_never_repeat() -> None:
    made = {new_secret() for _ in range(100)}
    assert len(made) == 100 and all(s.startswith("whsec_") and len(s) >= 40 for s in made)
