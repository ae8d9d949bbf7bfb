-- Rejected input: raw bytes, topic, reason — nothing is silently dropped.
CREATE TABLE IF NOT EXISTS dead_letters (
    id             bigserial PRIMARY KEY,
    received_at    timestamptz NOT NULL,
    topic          text NOT NULL,
    payload        bytea NOT NULL,
    reason_code    text NOT NULL,          -- machine-readable: invalid_json, out_of_range, …
    reason         text NOT NULL,          -- human-readable, names the field
    reading_index  integer,                -- position in an array / gateway batch, when one reading failed
    kind           text,
    device_id      text,
    collector_id   text,
    -- the same rejected message redelivered must not be stored twice
    message_key    text NOT NULL,
    UNIQUE (message_key)
);
CREATE INDEX IF NOT EXISTS dead_letters_received_idx ON dead_letters (received_at DESC);
CREATE INDEX IF NOT EXISTS dead_letters_reason_idx ON dead_letters (reason_code, received_at DESC);

-- Alerts: one open alert per (rule, subject) — the dedup key is `fingerprint`.
CREATE TABLE IF NOT EXISTS alerts (
    alert_id        bigserial PRIMARY KEY,
    rule_id         text NOT NULL,
    fingerprint     text NOT NULL,
    device_id       text,
    site_id         text,
    kind            text,
    severity        text NOT NULL CHECK (severity IN ('critical', 'major', 'minor', 'warning')),
    state           text NOT NULL CHECK (state IN ('pending', 'firing', 'resolved')),
    labels          jsonb NOT NULL DEFAULT '{}'::jsonb,
    summary         text NOT NULL DEFAULT '',
    value           double precision,
    threshold       double precision,
    started_at      timestamptz NOT NULL,   -- device time the condition began
    fired_at        timestamptz,
    resolved_at     timestamptz,
    acknowledged_by text,
    acknowledged_at timestamptz,
    ack_comment     text,
    assignee        text,
    last_notified_at timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_one_open_per_fingerprint
    ON alerts (fingerprint) WHERE state <> 'resolved';
CREATE INDEX IF NOT EXISTS alerts_state_idx ON alerts (state, severity, started_at DESC);
CREATE INDEX IF NOT EXISTS alerts_device_idx ON alerts (device_id, started_at DESC);
CREATE INDEX IF NOT EXISTS alerts_site_idx ON alerts (site_id, started_at DESC);

CREATE TABLE IF NOT EXISTS alert_history (
    id          bigserial PRIMARY KEY,
    alert_id    bigint NOT NULL REFERENCES alerts (alert_id) ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT now(),
    from_state  text,
    to_state    text NOT NULL,     -- pending/firing/resolved, or acknowledged/assigned/reminded/notified
    actor       text,
    comment     text,
    details     jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS alert_history_alert_idx ON alert_history (alert_id, at);

CREATE TABLE IF NOT EXISTS silences (
    silence_id  bigserial PRIMARY KEY,
    matchers    jsonb NOT NULL,     -- [{"label": "site_id", "op": "=", "value": "ts-001"}, …]
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL CHECK (ends_at > starts_at),
    created_by  text NOT NULL,
    comment     text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS silences_window_idx ON silences (ends_at, starts_at);
