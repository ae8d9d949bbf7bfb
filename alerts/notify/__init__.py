"""Notification sinks, fed from the outbox (``outbox.py``) that transitions write: ``mqtt.py`` (QoS 1 on
``sanitation/{city}/alerts/{severity}``), ``webhook.py`` (own threads, retries with backoff) and
``stream.py`` (LISTEN/NOTIFY for the API's live stream)."""
