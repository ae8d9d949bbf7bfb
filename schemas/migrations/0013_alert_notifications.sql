-- Notification outbox: written in the same transaction as the transition that caused it, delivered
-- after commit. A crash between the two delivers late, never never.
CREATE TABLE IF NOT EXISTS alert_notifications (
    notification_id   bigserial PRIMARY KEY,
    alert_id          bigint NOT NULL REFERENCES alerts (alert_id) ON DELETE CASCADE,
    history_id        bigint REFERENCES alert_history (id) ON DELETE SET NULL,
    event             text NOT NULL CHECK (event IN ('firing', 'resolved', 'reminder')),
    severity          text NOT NULL,
    payload           jsonb NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    mqtt_published_at timestamptz,
    mqtt_attempts     integer NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS alert_notifications_mqtt_pending_idx ON alert_notifications (notification_id)
    WHERE mqtt_published_at IS NULL;

-- Webhook receivers (managed by the API or `sanitel evaluator --webhook`). `matchers` use the silence
-- matcher format; an empty list takes every alert.
CREATE TABLE IF NOT EXISTS alert_webhooks (
    webhook_id     text PRIMARY KEY,
    url            text NOT NULL CHECK (url ~ '^https?://'),
    matchers       jsonb NOT NULL DEFAULT '[]'::jsonb,
    group_by       text[] NOT NULL DEFAULT ARRAY['rule_id', 'site_id'],
    send_resolved  boolean NOT NULL DEFAULT true,
    max_attempts   integer NOT NULL DEFAULT 10 CHECK (max_attempts > 0),
    enabled        boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS alert_webhook_deliveries (
    notification_id  bigint NOT NULL REFERENCES alert_notifications (notification_id) ON DELETE CASCADE,
    webhook_id       text NOT NULL REFERENCES alert_webhooks (webhook_id) ON DELETE CASCADE,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    delivered_at     timestamptz,
    PRIMARY KEY (notification_id, webhook_id)
);
CREATE INDEX IF NOT EXISTS alert_webhook_deliveries_due_idx
    ON alert_webhook_deliveries (webhook_id, next_attempt_at) WHERE status = 'pending';
