"""Broker password hashes (ours and mosquitto_passwd's are one format: the tool runs, no broker does) and the
password file and ACL generated from the registry."""

from __future__ import annotations

import logging
import re
import stat
import subprocess
from pathlib import Path

import pytest

from sanitel.broker_auth import (
    GATEWAY,
    BrokerAccount,
    BrokerAuthFiles,
    acl_file_text,
    hash_password,
    password_file_text,
    verify_password,
)
from sanitel.schemas.topics import DEVICE_KINDS, STREAMS


def test_hash_format_matches_mosquitto_passwd(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(path), "dev1", "s3cret"], check=True)
    made_by_mosquitto = path.read_text().strip().split(":", 1)[1]
    assert made_by_mosquitto.startswith("$7$")
    assert verify_password("s3cret", made_by_mosquitto) and not verify_password("other", made_by_mosquitto)
    ours = hash_password("s3cret")
    _, seven, iterations, salt, digest = ours.split("$")
    assert seven == "7" and int(iterations) >= 101 and len(salt) == 16 and len(digest) == 88
    assert verify_password("s3cret", ours) and not verify_password("s3creT", ours)


# --- the ACL generated from the registry -------------------------------------------------------------------

def _account(username: str, *, role: str | None = None, kind: str | None = None) -> BrokerAccount:
    return BrokerAccount(username, hash_password("x", iterations=1), role, kind)


def _blocks(acl: str) -> dict[str, list[str]]:
    """user → its topic lines, as Mosquitto reads the file (comments and blank lines ignored)."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in acl.splitlines():
        if line.startswith("user "):
            current = blocks.setdefault(line.removeprefix("user "), [])
        elif line.startswith(("topic ", "pattern ")):
            assert current is not None, f"{line!r} outside a user block would apply to anonymous clients"
            current.append(line)
    return blocks


def test_acl_gives_each_device_only_its_own_kind_and_streams() -> None:
    """The old pattern ``sanitation/{city}/+/%u/+`` let any device write gateway/<its id>/batch (and so readings
    for any device and kind), any kind and any stream name. Now: no pattern, one block per device."""
    acl = acl_file_text([_account("SW-1", kind="sweeper"), _account("CEMS-1", kind="cems")], "shenzhen")
    assert "pattern" not in acl and "%u" not in acl
    blocks = _blocks(acl)
    assert blocks["SW-1"] == [f"topic write sanitation/shenzhen/sweeper/SW-1/{s}" for s in STREAMS]
    assert blocks["CEMS-1"] == [f"topic write sanitation/shenzhen/cems/CEMS-1/{s}" for s in (*STREAMS, "hj212")]
    assert not any("+" in rule or "#" in rule or "gateway" in rule for rule in blocks["SW-1"] + blocks["CEMS-1"])


def test_acl_gives_a_gateway_only_its_batch_topic() -> None:
    blocks = _blocks(acl_file_text([_account("GW-1", kind=GATEWAY)], "shenzhen"))
    assert blocks == {"GW-1": ["topic write sanitation/shenzhen/gateway/GW-1/batch"]}


def test_acl_service_roles_have_exactly_their_topics() -> None:
    roles = ("collector", "hj212", "evaluator", "api_probe", "simulator", "service")
    blocks = _blocks(acl_file_text([_account(f"svc-{r}", role=r) for r in roles], "lyon"))
    assert blocks["svc-collector"] == ["topic read sanitation/lyon/#"]  # reads everything, writes nothing
    assert blocks["svc-hj212"] == ["topic write sanitation/lyon/cems/+/hj212"]
    assert blocks["svc-evaluator"] == ["topic write sanitation/lyon/alerts/#"]
    assert blocks["svc-api_probe"] == []  # connect only
    assert blocks["svc-service"] == ["topic read sanitation/lyon/#", "topic write sanitation/lyon/alerts/#"]
    simulator = blocks["svc-simulator"]
    assert sorted(simulator) == sorted(f"topic write sanitation/lyon/{k}/+/+" for k in (*DEVICE_KINDS, GATEWAY))
    # only the evaluator (and the legacy combined account) may publish alerts
    writers = {user for user, rules in blocks.items() for rule in rules if rule.startswith("topic write")
               and re.fullmatch(rule.split()[-1].replace("+", "[^/]+").replace("#", ".*"),
                                "sanitation/lyon/alerts/critical")}
    assert writers == {"svc-evaluator", "svc-service"}
    # no account reaches another city
    assert all("/lyon/" in rule for rules in blocks.values() for rule in rules)


def test_usernames_that_would_corrupt_the_files_are_left_out_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A ':' in a username splits its password-file line elsewhere ("a:b:$7$…" logs in as "a" with a broken
    hash); whitespace or wildcards would change the ACL's meaning. Such accounts never reach either file."""
    good = _account("SW-1", kind="sweeper")
    bad = [_account("SW:2", kind="sweeper"), _account("SW 3", kind="sweeper"), _account("SW+", kind="sweeper"),
           _account("GW#", kind=GATEWAY), _account("svc\nuser x", role="collector"),
           BrokerAccount("SW-4", "$7$1$abc$def\nSW-5:$7$1$x$y", None, "sweeper")]
    with caplog.at_level(logging.ERROR, logger="sanitel.broker_auth"):
        passwd = password_file_text([good, *bad])
        acl = acl_file_text([good, *bad], "shenzhen")
    assert [line.split(":", 1)[0] for line in passwd.splitlines()] == ["SW-1"]
    assert all(line.count(":") == 1 for line in passwd.splitlines())
    assert set(_blocks(acl)) == {"SW-1"}
    assert "SW:2" in caplog.text and "SW-4" in caplog.text


def test_one_username_namespace_service_accounts_win() -> None:
    accounts = [_account("dup", kind=GATEWAY), _account("dup", kind="sweeper"), _account("dup", role="collector")]
    assert _blocks(acl_file_text(accounts, "shenzhen")) == {"dup": ["topic read sanitation/shenzhen/#"]}
    assert password_file_text(accounts).count("dup:") == 1


def test_unknown_roles_kinds_and_bad_cities() -> None:
    blocks = _blocks(acl_file_text([_account("x", role="root"), _account("y")], "shenzhen"))
    assert blocks == {"y": []}  # an unknown role is left out; a device of no known kind gets nothing
    with pytest.raises(ValueError, match="city"):
        acl_file_text([], "shen zhen")


def test_files_are_written_private(tmp_path: Path) -> None:
    files = BrokerAuthFiles(tmp_path / "auth" / "passwd", tmp_path / "auth" / "acl")
    files.write([_account("SW-1", kind="sweeper")], "shenzhen")
    for path in (files.password_file, files.acl_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in files.password_file.parent.iterdir() if p.name.startswith(".")]  # no temp left
