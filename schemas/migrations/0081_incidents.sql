-- Incidents (issue 18; alerts/incidents.py, alerts/rules/incidents.yaml): alerts that share a place (the sorting
-- point, transfer station or furnace line of their device) and time are one incident with a root cause first, and
-- notifications go out per incident. Inhibited alerts keep their state; ``inhibited_by`` says what holds back their
-- notification. Safe to run twice.

CREATE TABLE IF NOT EXISTS incidents (
    incident_id      bigserial PRIMARY KEY,
    place            text NOT NULL,                -- a site id, or the subject key of an alert without a site
    kind             text NOT NULL DEFAULT 'alerts' CHECK (kind IN ('alerts', 'station_outage')),
    title            text NOT NULL,
    root_alert_id    bigint REFERENCES alerts (alert_id) ON DELETE SET NULL,
    severity         text NOT NULL CHECK (severity IN ('critical', 'major', 'minor', 'warning')),
    state            text NOT NULL CHECK (state IN ('open', 'resolved')),
    started_at       timestamptz NOT NULL,         -- device time: the earliest member's start
    opened_at        timestamptz NOT NULL,         -- the evaluator's clock when the incident was opened
    quiet_since      timestamptz,                  -- the evaluator's clock when every member was first seen resolved
    resolved_at      timestamptz,
    notified_at      timestamptz,                  -- first notification (after group_wait)
    last_notified_at timestamptz,
    member_order     bigint[] NOT NULL DEFAULT '{}',      -- member alert ids, root first, then by causal rank
    announced        jsonb NOT NULL DEFAULT '{}'::jsonb,  -- alert id → its reminder count, as last notified
    details          jsonb NOT NULL DEFAULT '{}'::jsonb,  -- e.g. a station outage: devices, offline
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- one open incident per place: two evaluators cannot open two
CREATE UNIQUE INDEX IF NOT EXISTS incidents_one_open_per_place ON incidents (place) WHERE state = 'open';
CREATE INDEX IF NOT EXISTS incidents_state_idx ON incidents (state, opened_at DESC, incident_id DESC);

ALTER TABLE alerts ADD COLUMN IF NOT EXISTS incident_id bigint REFERENCES incidents (incident_id) ON DELETE SET NULL;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS inhibited_by jsonb;  -- {"rule": …, …} while an inhibition holds it
CREATE INDEX IF NOT EXISTS alerts_incident_idx ON alerts (incident_id) WHERE incident_id IS NOT NULL;
-- the incident step's work: alerts that fired and belong to no incident yet
CREATE INDEX IF NOT EXISTS alerts_ungrouped_idx ON alerts (updated_at) WHERE incident_id IS NULL AND fired_at IS NOT NULL;

-- The outbox now holds one notification per incident event (alert_id: the incident's root alert).
ALTER TABLE alert_notifications ADD COLUMN IF NOT EXISTS incident_id bigint
    REFERENCES incidents (incident_id) ON DELETE CASCADE;
DO $$
BEGIN
    ALTER TABLE alert_notifications DROP CONSTRAINT IF EXISTS alert_notifications_event_check;
    ALTER TABLE alert_notifications ADD CONSTRAINT alert_notifications_event_check
        CHECK (event IN ('firing', 'updated', 'resolved', 'reminder'));
END $$;

-- the evaluator keeps incidents; the API reads them (a supervisor's acknowledgement of an incident writes the
-- members' alerts and history, which 0070 already grants)
GRANT SELECT, INSERT, UPDATE ON incidents TO sanitel_evaluator;
GRANT USAGE ON SEQUENCE incidents_incident_id_seq TO sanitel_evaluator;
GRANT SELECT ON incidents TO sanitel_api;
