"""The simulators' publisher without a broker: broker URLs (credentials, TLS, options) and one clear error
when nothing listens."""

from __future__ import annotations

import pytest

from sanitel.errors import SanitelError
from sanitel.mqtt_wire import BrokerTarget
from sanitel.servers import free_port
from sanitel.simulators.publisher import open_publisher


def test_broker_urls_parse_credentials_tls_and_options() -> None:
    plain = BrokerTarget.parse("mqtt://fleet%40sz:p%3Ass@broker.example:1884")
    assert (plain.host, plain.port, plain.username, plain.password, plain.tls) == (
        "broker.example", 1884, "fleet@sz", "p:ss", False)
    secure = BrokerTarget.parse("mqtts://u:pw@broker.example?ca=/etc/ca.pem&insecure=1&client_id=sim-7")
    assert (secure.port, secure.tls, secure.ca_file, secure.insecure, secure.client_id) == (
        8883, True, "/etc/ca.pem", True, "sim-7")
    assert secure.redacted() == "mqtts://u:***@broker.example?ca=/etc/ca.pem&insecure=1&client_id=sim-7"
    for bad, hint in (("http://x", "not a broker URL"), ("mqtt://x:99999", "malformed port"),
                      ("mqtt://x?verify=no", "unknown option")):
        with pytest.raises(SanitelError, match=hint):
            BrokerTarget.parse(bad)


@pytest.mark.parametrize("engine", ["paho", "fast"])
def test_unreachable_broker_is_one_clear_error(engine: str) -> None:
    with pytest.raises(SanitelError, match=r"cannot reach the broker at mqtt://127\.0\.0\.1:\d+ .*is it running"):
        open_publisher(f"mqtt://127.0.0.1:{free_port()}", engine=engine)
