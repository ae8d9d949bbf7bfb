"""Operating-state marks without a database: the checks ``add_mark``/``correct_mark`` run before any SQL, the JSON
form the API and ``--json`` show, the CLI's time parser and table, and the API's request models — which, like every
parser here, raise nothing but their documented error on arbitrary input (hypothesis)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, get_args
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sanitel.api.routes.marks import MarkCode, MarkCorrectionIn, MarkIn, MarkOut
from sanitel.processors import marks_cli
from sanitel.processors.cems_marks import MARK_NAMES_ZH, MARKS, MarkInvalid, StoredMark, check_mark_fields

CST = timezone(timedelta(hours=8))
START = datetime(2026, 11, 28, 6, 0, tzinfo=CST)  # 2026-11-27T22:00Z
END = datetime(2026, 11, 28, 10, 30, tzinfo=CST)  # 2026-11-28T02:30Z
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def stored(**changes: Any) -> StoredMark:
    fields: dict[str, Any] = {
        "mark_id": 7, "device_id": "LHK-L1", "plant_id": "lhk", "line_id": "lhk-l1", "mark": "start_up",
        "starts_at": START, "ends_at": END, "reason": "cold start", "source": "api", "created_by": "duty",
        "created_at": datetime(2026, 11, 28, 6, 5, tzinfo=CST), "supersedes": None, "superseded_by": None,
        "withdrawn": False}
    return StoredMark(**(fields | changes))


def test_every_list_of_marks_is_the_same_list() -> None:
    """The API's Literal, the CLI's choices and the Chinese names must name exactly cems_marks.MARKS: a mark added
    to one and not the others would be accepted by one door and refused by the other."""
    assert get_args(MarkCode) == MARKS
    assert marks_cli._MARK_CHOICES == MARKS
    assert tuple(MARK_NAMES_ZH) == MARKS


@pytest.mark.parametrize(("args", "field"), [
    (("furnace_on_fire", START, END, "x"), "mark"),
    (("start_up", START.replace(tzinfo=None), END, "x"), "starts_at"),
    (("start_up", START, END.replace(tzinfo=None), "x"), "ends_at"),
    (("start_up", START, START, "x"), "ends_at"),  # an empty span: the end must be after the start
    (("start_up", END, START, "x"), "ends_at"),
    (("start_up", START, END, "   \n"), "reason"),
    (("start_up", START, END, "x" * 2001), "reason"),  # migration 0080: length(reason) BETWEEN 1 AND 2000
    (("start_up", START, END, "bad\x00byte"), "reason"),
    (("start_up", START, END, "bad \udcff byte"), "reason"),  # undecodable argv bytes (surrogateescape)
])
def test_mark_checks_name_the_field(args: tuple[Any, ...], field: str) -> None:
    with pytest.raises(MarkInvalid) as raised:
        check_mark_fields(*args)
    assert raised.value.field == field
    assert str(raised.value).startswith(f"{field}: ")


def test_mark_checks_accept_an_open_mark_and_blame_the_field_changed() -> None:
    check_mark_fields("cms_calibration", START, None, "x" * 2000)  # open, longest reason: fine
    check_mark_fields("start_up", START, START + timedelta(microseconds=1), "r")
    with pytest.raises(MarkInvalid) as raised:  # a correction that moved only the start past the kept end
        check_mark_fields("start_up", END, START, "r", blame="starts_at")
    assert raised.value.field == "starts_at"


def test_json_form_is_utc_with_the_chinese_name_and_status() -> None:
    # 06:00 +08:00 = 22:00 UTC the day before; 10:30 +08:00 = 02:30 UTC
    current = stored().as_json()
    assert current["starts_at"] == "2026-11-27T22:00:00+00:00" and current["ends_at"] == "2026-11-28T02:30:00+00:00"
    assert (current["mark_zh"], current["kind"], current["status"]) == ("启炉", "furnace", "current")
    assert stored(ends_at=None).as_json()["ends_at"] is None
    assert stored(superseded_by=9).status == "superseded"
    assert stored(withdrawn=True, supersedes=6).status == "withdrawn"
    assert stored(mark="cms_outage").as_json()["kind"] == "monitoring_system"
    MarkOut.model_validate(current)  # the API's response model takes the JSON form as it is


def test_cli_times_need_an_offset() -> None:
    assert marks_cli.parse_time("2026-11-28T06:00+08:00") == START
    assert marks_cli.parse_time("2026-11-27t22:00z") == START  # RFC 3339 allows lower case
    for bad in ("2026-11-28T06:00", "yesterday", "", "2026-13-01T00:00Z"):
        with pytest.raises(argparse.ArgumentTypeError):
            marks_cli.parse_time(bad)


@FAST
@given(st.text(max_size=40) | st.from_regex(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d)?([+-]\d\d:\d\d|Z)?\Z"))
def test_cli_time_parser_raises_only_its_argparse_error(text: str) -> None:
    try:
        value = marks_cli.parse_time(text)
    except argparse.ArgumentTypeError:
        return
    assert value.utcoffset() is not None


def test_table_shows_local_times_and_aligns_chinese_names() -> None:
    zone = ZoneInfo("Asia/Shanghai")
    rows = [marks_cli.table_row(stored(), zone), marks_cli.table_row(stored(mark_id=8, ends_at=None, mark="cms_fault",
                                                                           superseded_by=9), zone)]
    assert rows[0][5:7] == ("2026-11-28T06:00+08:00", "2026-11-28T10:30+08:00")
    assert rows[1][4] == "设备故障" and rows[1][6] == "open" and rows[1][7] == "superseded by 9"
    lines = marks_cli.format_table(rows).splitlines()
    # 启炉 is 2 characters, 4 columns wide; 设备故障 8 wide: the 'from' column starts at the same place on each line
    starts = [line.index("2026-11-28T06:00") for line in lines[1:]]
    widths = [marks_cli._width(line[:s]) for line, s in zip(lines[1:], starts, strict=True)]
    assert widths[0] == widths[1] == marks_cli._width(lines[0][:lines[0].index("from")])


def test_request_models_refuse_who_and_source_from_the_client() -> None:
    """created_by is the API key's name and source is 'api': a body that names either is refused, not obeyed."""
    body = {"mark": "start_up", "starts_at": START.isoformat(), "reason": "cold start"}
    MarkIn.model_validate(body)
    for spoof in ({"created_by": "plant manager"}, {"source": "dau"}):
        with pytest.raises(ValidationError) as raised:
            MarkIn.model_validate(body | spoof)
        assert raised.value.errors()[0]["loc"] == tuple(spoof)
        with pytest.raises(ValidationError):
            MarkCorrectionIn.model_validate({"reason": "fix"} | spoof)
    with pytest.raises(ValidationError) as raised:
        MarkIn.model_validate(body | {"starts_at": "2026-11-28T06:00:00"})  # no offset
    assert raised.value.errors()[0]["loc"] == ("starts_at",)
    with pytest.raises(ValidationError):
        MarkIn.model_validate(body | {"reason": " "})


def test_correction_model_tells_absent_end_from_explicit_null() -> None:
    assert "ends_at" not in MarkCorrectionIn.model_validate({"reason": "r"}).model_fields_set  # keep the end
    assert "ends_at" in MarkCorrectionIn.model_validate({"reason": "r", "ends_at": None}).model_fields_set  # reopen


_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=20)
def _iso(seconds: int, minutes: int | None) -> str:
    """A time from 1970 to 2200 (the API's range; _times adds some outside it), naive or at a whole-minute offset."""
    naive = datetime(1970, 1, 2) + timedelta(seconds=seconds)
    return (naive if minutes is None else naive.replace(tzinfo=timezone(timedelta(minutes=minutes)))).isoformat()


_times = (st.builds(_iso, st.integers(0, 229 * 365 * 86_400), st.none() | st.integers(-1439, 1439))
          | st.sampled_from(["2026-11-28T06:00+08:00", "99999-01-01T00:00Z", "1969-12-31T23:59Z", "2026-02-30T00:00Z"]))
_marks = st.sampled_from(MARKS)
_reasons = st.text(max_size=20) | st.sampled_from(["cold start", " ", "\x00", "a" * 2001])
# mostly a body of the right shape with any values (so valid ones are reached), sometimes any JSON at all
_shaped = st.fixed_dictionaries({"reason": _reasons, "mark": _marks, "starts_at": _times},
                                optional={"ends_at": st.none() | _times})
_extra = st.sampled_from(["withdraw", "created_by", "source", "x"])
_shaped_plus = st.builds(lambda body, key, value: body | {key: value}, _shaped, _extra, st.booleans() | _json)
_odd = st.fixed_dictionaries({"reason": _reasons | _json},
                             optional={"mark": _json | st.text(max_size=12), "starts_at": _json, "ends_at": _json})
_bodies = st.one_of(_shaped, _shaped, _shaped_plus, _odd, _json)  # twice: valid bodies weigh more


@FAST
@given(_bodies)
def test_request_models_raise_only_validation_errors_on_arbitrary_json(body: Any) -> None:
    for model in (MarkIn, MarkCorrectionIn):
        try:
            parsed = model.model_validate(body)
        except ValidationError:
            continue
        event(f"{model.__name__} accepted")  # --hypothesis-show-statistics: valid bodies are reached too
        # what validated is what the checks before the SQL accept too (or refuse with a MarkInvalid)
        assert parsed.reason.strip() and "\x00" not in parsed.reason
        if isinstance(parsed, MarkIn):
            assert parsed.starts_at.tzinfo is not None
            try:
                check_mark_fields(parsed.mark, parsed.starts_at, parsed.ends_at, parsed.reason)
            except MarkInvalid as exc:
                assert exc.field == "ends_at"  # the one cross-field rule the model leaves to the check
            assert parsed.starts_at.astimezone(UTC).year >= 1970
