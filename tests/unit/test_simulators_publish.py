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


def test_each_load_worker_logs_in_as_a_user_of_its_own() -> None:
    """A broker that makes the user name the client id (the local stack's) would let workers sharing one user knock
    each other off; worker k > 0 uses <user>-<k+1>, which the local stack creates."""
    from sanitel.simulators.workers import worker_broker_url

    url = "mqtts://sanitel-simulator:p%40ss@127.0.0.1:18883?ca=/x/ca.pem"
    assert worker_broker_url(url, 0) == url
    assert worker_broker_url(url, 1) == "mqtts://sanitel-simulator-2:p%40ss@127.0.0.1:18883?ca=/x/ca.pem"
    assert worker_broker_url("mqtt://127.0.0.1:1883", 3) == "mqtt://127.0.0.1:1883"
