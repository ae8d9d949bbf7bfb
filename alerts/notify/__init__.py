"""Notification sinks, fed from the outbox (``outbox.py``) that transitions write: ``mqtt.py`` (QoS 1 on
``sanitation/{city}/alerts/{severity}``) and ``webhook.py`` (own threads, retries with backoff). The live
stream is the API's (``api/stream.py``: LISTEN on the NOTIFYs that ``alerts/history.py`` sends)."""
