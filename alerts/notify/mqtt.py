"""MQTT sink: each outbox notification is published to ``sanitation/{city}/alerts/{severity}`` at QoS 1,
and marked published only after the broker's PUBACK. While the broker is unreachable nothing is
marked and the next pass retries, in order; webhooks are delivered by their own threads meanwhile.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import timedelta
from typing import Any

import paho.mqtt.client as mqtt
import psycopg

from sanitel.mqtt_wire import BrokerTarget, paho_client
from sanitel.schemas.topics import alert_topic

log = logging.getLogger("sanitel.alerts.mqtt")

MAX_AGE = timedelta(days=1)  # older unpublished notifications are stale news: left undelivered


class MqttSink:
    """A paho client with its own network thread (reconnects by itself). Thread-safe ``publish``."""

    def __init__(self, url: str, city: str, client_id: str = "sanitel-evaluator", *,
                 publish_timeout_s: float = 5.0) -> None:
        broker = BrokerTarget.parse(url)
        self.city = city
        self.publish_timeout_s = publish_timeout_s
        self._connected = threading.Event()
        self.client = paho_client(broker, client_id)  # MQTT 3.1.1, clean session
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        if not getattr(reason, "is_failure", False):
            self._connected.set()
        else:
            log.warning("alert publisher: broker refused the connection: %s", reason)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        self._connected.clear()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def publish(self, severity: str, payload: dict[str, Any]) -> bool:
        """True once the broker has acknowledged the message (QoS 1)."""
        if not self.connected:
            return False
        info = self.client.publish(alert_topic(self.city, severity), json.dumps(payload, default=str), qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        try:
            info.wait_for_publish(self.publish_timeout_s)
        except (RuntimeError, ValueError):
            return False
        return info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def deliver_pending(conn: psycopg.Connection, sink: MqttSink, limit: int = 500) -> tuple[int, int]:
    """Publish unpublished notifications in order; returns (published, failed). Stops at the first
    failure so that notifications keep their order. Rows are locked (SKIP LOCKED) while published, so
    two evaluators never send the same one twice."""
    published = failed = 0
    with conn.transaction():
        rows = conn.execute(
            "SELECT notification_id, severity, payload FROM alert_notifications"
            " WHERE mqtt_published_at IS NULL AND created_at > now() - %s"
            " ORDER BY notification_id LIMIT %s FOR UPDATE SKIP LOCKED", (MAX_AGE, limit)).fetchall()
        for notification_id, severity, payload in rows:
            if sink.publish(severity, payload):
                conn.execute("UPDATE alert_notifications SET mqtt_published_at = now(),"
                             " mqtt_attempts = mqtt_attempts + 1 WHERE notification_id = %s", (notification_id,))
                published += 1
            else:
                conn.execute("UPDATE alert_notifications SET mqtt_attempts = mqtt_attempts + 1"
                             " WHERE notification_id = %s", (notification_id,))
                failed += 1
                break
    return published, failed
