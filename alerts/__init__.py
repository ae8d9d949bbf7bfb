"""Alert engine: rules are data, evaluated on device time, with a lifecycle kept in the database.

Read it as a pipeline, top to bottom:

    rules.py       rule models; YAML packs (alerts/rules/*.yaml) and API-managed rules, validated on load
    subjects.py    the registry as the engine sees it: devices, sites, scopes, per-site parameters
    queries.py     SQL per rule kind over the typed hypertables (and cems_averages)
    timeline.py    samples → episodes: for, hysteresis, keep-firing (pure, no I/O)
    evaluator.py   one evaluation pass: what changed, re-evaluate it, hand episodes to the lifecycle
    lifecycle.py   every state transition of an alert, in one place, each with a history row
    history.py     the one writer of a history row and its NOTIFY (the engine's and the API's changes)
    silences.py    label matchers and time windows that mute notifications
    notify/        outbox delivery: mqtt.py, webhook.py (own threads, retries); the live stream of
                   transitions (SSE) is the API's (``api/stream.py``, from the NOTIFYs)
    service.py     the loop: advisory lock, evaluate, notify, metrics, clean exit
    cli.py         ``sanitel evaluator`` and ``sanitel rules validate|list``
"""
