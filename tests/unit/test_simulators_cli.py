"""``sanitel simulate`` without a broker: help, one clear line for bad arguments and user errors, and the
progress line."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from sanitel.cli import main
from sanitel.servers import free_port
from sanitel.simulators.cli import ProgressLine
from sanitel.simulators.run import SimulationSummary


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["simulate", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for option in ("--scenario", "--rate", "--duration", "--faults", "--seed", "--speed", "--broker", "--once"):
        assert option in out


@pytest.mark.parametrize(("argv", "message"), [
    (["--speed", "fast"], "argument --speed: 'fast' is not a speed; use a factor such as 1, 60, 1440, or 'max'"),
    (["--speed", "-2"], "the factor must be above 0"),
    (["--duration", "a while"], "argument --duration: 'a while' is not a duration; use e.g. 30s, 15m, 2h or 1d"),
    (["--rate", "0"], "argument --rate: '0' must be a number above 0"),
    (["--start", "yesterday"], "argument --start: 'yesterday' is not a date-time; use RFC 3339"),
    (["--engine", "turbo"], "argument --engine: invalid choice: 'turbo'"),
])
def test_bad_arguments_are_one_clear_line(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["simulate", *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--scenario", "nowhere"], "sanitel: error: unknown scenario 'nowhere'"),
    (["--faults", "spike,gremlins"], "sanitel: error: --faults: unknown fault 'gremlins'"),
    (["--broker", "http://x"], "sanitel: error: 'http://x' is not a broker URL"),
])
def test_user_errors_are_reported_without_a_traceback(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, argv: list[str],
                                                      message: str) -> None:
    monkeypatch.setenv("SANITEL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SANITEL_MQTT_URL", f"mqtt://127.0.0.1:{free_port()}")
    assert main(["simulate", "--speed", "max", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unreachable_broker(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANITEL_DATA_DIR", str(tmp_path))
    port = free_port()
    assert main(["simulate", "--broker", f"mqtt://127.0.0.1:{port}", "--speed", "max", "--quiet"]) == 2
    assert f"cannot reach the broker at mqtt://127.0.0.1:{port}" in capsys.readouterr().err


class FakeTerminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_line_rewrites_itself_on_a_terminal_and_logs_lines_otherwise() -> None:
    summary = SimulationSummary("demo", 1, 1_795_300_000.0, 64, messages=1000, acked=990, elapsed_s=2.0)
    terminal = FakeTerminal(tty=True)
    line = ProgressLine(terminal, speed=1440)
    line.update(summary, 1_795_300_600.0)
    summary.messages = 3000
    line.update(summary, 1_795_301_200.0)
    line.finish()
    text = terminal.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n")
    assert "sim 2026-11-21T22:36:40Z | 1,000 msgs | 500 msg/s" in text
    assert "3,000 msgs" in text and "64 devices" in text and "acked 990" in text
    assert "errors 0" in text and "msg/s" in text and "00:00:02" in text
    log = FakeTerminal(tty=False)
    quiet = ProgressLine(log, speed=1440)
    quiet.update(summary, 1_795_300_600.0)
    quiet.update(summary, 1_795_300_700.0)  # within 10 s of the last line: not repeated
    assert log.getvalue().count("\n") == 1 and "\r" not in log.getvalue()
