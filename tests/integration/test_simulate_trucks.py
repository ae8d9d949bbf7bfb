"""``sanitel simulate`` of a district slice publishes the truck fleet through a real broker (private Mosquitto, no
mocks): telemetry and pickup/tip events on the trucks' topics and weighbridge tickets on the stations' ``event``
topics, exactly as generated, each valid against the wire contract; a truck fault's ground truth is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from sanitel.cli import main
from sanitel.schemas.readings import TruckEvent, TruckTelemetry, WeighbridgeTicket
from sanitel.servers import MosquittoServer
from sanitel.simulators.contract import check_message
from sanitel.simulators.run import generate
from sanitel.simulators.scenario import load_scenario
from sanitel.simulators.truth import read_ground_truth
from tests.support.mqtt_tools import TopicRecorder

CITY = "simtrucks"
# the morning shift of a tenth of the district: the truck leaves at 05:00, works its 15 points and tips before 08:00
START, HOURS, SEED = "2026-03-09T04:30:00+08:00", 4, 5


def expected(faults: str) -> list[tuple[str, bytes]]:
    """What the same run generates without a broker, on the subscribed topics."""
    scenario = load_scenario("district").scaled(0.1)
    return [(topic, payload) for topic, payload, _ in
            generate(scenario, seed=SEED, start=START, duration_s=HOURS * 3600.0, city=CITY,
                     faults=[] if faults == "none" else faults)
            if "/truck/" in topic or (topic.endswith("/event") and "/transfer_station/" in topic)]


@pytest.mark.parametrize("faults", ["none", "overweight"])
def test_a_district_slice_publishes_its_trucks_and_tickets(mqtt_server: MosquittoServer, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str], faults: str) -> None:
    topics = [f"sanitation/{CITY}/truck/#", f"sanitation/{CITY}/transfer_station/+/event"]
    subscriber = TopicRecorder(mqtt_server.port, topics, client_id=f"sub-{CITY}-{mqtt_server.port}")
    truth = tmp_path / "gt.jsonl"
    try:
        code = main(["simulate", "--scenario", "district", "--scale", "0.1", "--broker", mqtt_server.url, "--city",
                     CITY, "--speed", "max", "--start", START, "--duration", f"{HOURS}h", "--seed", str(SEED),
                     "--faults", faults, "--quiet", "--ground-truth", str(truth)])
        want = expected(faults)
        got = subscriber.wait_for(len(want))
    finally:
        subscriber.close()
    assert code == 0, capsys.readouterr()
    assert "errors 0" in capsys.readouterr().out
    assert sorted(got) == sorted(want)  # every message arrived, nothing else
    per_topic = {topic: [p for t, p in got if t == topic] for topic, _ in got}
    assert all(per_topic[t] == [p for w, p in want if w == t] for t in per_topic)  # in order per topic
    kinds = {type(r.reading) for topic, payload in got for r in check_message(topic, payload)}
    assert kinds == {TruckTelemetry, TruckEvent, WeighbridgeTicket}
    records = [r for r in read_ground_truth(truth) if r["kind"] == "truck"]
    if faults == "none":
        assert records == []
    else:
        assert [(r["fault"], r["source"], r["expected_effect"]) for r in records] == [
            ("overweight", "injected", {"alert": "truck_overweight"})]
