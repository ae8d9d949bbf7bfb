"""``sanitel simulate`` against the private broker: a real run with a summary, and one reporting cycle."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sanitel.cli import main
from sanitel.servers import MosquittoServer
from sanitel.simulators.truth import read_ground_truth


def test_a_run_prints_a_summary_and_writes_ground_truth(
        mqtt_server: MosquittoServer, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANITEL_DATA_DIR", str(tmp_path))
    code = main(["simulate", "--broker", mqtt_server.url, "--city", "simcli", "--speed", "max", "--duration", "2h",
                 "--start", "2026-11-22T06:00:00+08:00", "--faults", "silence,spike", "--seed", "4"])
    assert code == 0
    captured = capsys.readouterr()
    assert "simulating demo (70 devices)" in captured.err and "2 h simulated" in captured.err
    assert "scenario demo, seed 4, 70 devices" in captured.out
    assert "faults injected: silence 1, spike 1" in captured.out
    assert "acknowledged" in captured.out and "errors 0" in captured.out
    truth = tmp_path / "simulator" / "ground-truth-demo-4.jsonl"
    assert {r["fault"] for r in read_ground_truth(truth) if r["source"] == "injected"} == {"silence", "spike"}


def test_once_runs_one_reporting_cycle(mqtt_server: MosquittoServer, capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    code = main(["simulate", "--broker", mqtt_server.url, "--city", "simonce", "--speed", "max", "--once", "--quiet",
                 "--start", "2026-11-22T12:00:00+08:00", "--ground-truth", str(tmp_path / "gt.jsonl")])
    assert code == 0
    out = capsys.readouterr().out
    # five minutes (the bins' cadence): every device on a cadence reported at least once
    assert "simulated 2026-11-22T04:00:00.000Z → 2026-11-22T04:0" in out
    counts = {k: int(n.replace(",", "")) for k, n in re.findall(r"(\w+) ([\d,]+)", out.split("MB): ")[1].split("\n")[0])}
    assert counts["sweeper"] >= 8 and counts["transfer_station"] >= 3 and counts["bin"] >= 40 and counts["cems"] >= 3
