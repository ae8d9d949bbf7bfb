"""MQTT collectors: connect, subscribe, receive, decode, validate, hand batches on, acknowledge."""
