-- Columns the alert engine keeps beside 0003's alerts table.
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS subject text;                   -- device:ID, site:ID, point:ID
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS condition_ended_at timestamptz; -- device time; keep-firing runs from here
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS peak_value double precision;    -- worst value of the episode
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS resolved_by text;               -- who cleared it by hand, if anyone
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS silenced_by bigint;             -- the silence that muted it last
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS reminders integer NOT NULL DEFAULT 0;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS annotations jsonb NOT NULL DEFAULT '{}'::jsonb;
CREATE INDEX IF NOT EXISTS alerts_fingerprint_idx ON alerts (fingerprint, started_at DESC);
-- Reminders scan firing, unacknowledged alerts.
CREATE INDEX IF NOT EXISTS alerts_unacked_firing_idx ON alerts (last_notified_at)
    WHERE state = 'firing' AND acknowledged_at IS NULL;
