-- Alert rules managed through the API. They sit beside the YAML packs shipped in alerts/rules/:
-- a row whose rule_id equals a shipped rule's id replaces that rule (that is how an admin edits a
-- default); `definition` is the same mapping a YAML rule is, validated by alerts.rules on write and
-- again on load.
CREATE TABLE IF NOT EXISTS alert_rules (
    rule_id     text PRIMARY KEY CHECK (rule_id ~ '^[a-z0-9][a-z0-9_.-]*$'),
    definition  jsonb NOT NULL,
    enabled     boolean NOT NULL DEFAULT true,
    created_by  text NOT NULL DEFAULT 'unknown',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text NOT NULL DEFAULT 'unknown',
    updated_at  timestamptz NOT NULL DEFAULT now()
);
