-- Evaluator state, kept in the database so a restart neither loses nor repeats an alert.

-- When a row became visible to the evaluator. `received_at` cannot serve: a spooled message keeps its
-- old receive time when it is replayed hours later. The writer's INSERT … SELECT fills this from the
-- default, i.e. the writing transaction's start, which the evaluator compares with the start of the
-- oldest open transaction to know which rows are surely committed (see alerts/queries.py).
-- A constant-at-ALTER default: adding the column does not rewrite existing chunks.
ALTER TABLE sweeper_telemetry ADD COLUMN IF NOT EXISTS stored_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE station_telemetry ADD COLUMN IF NOT EXISTS stored_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE bin_deposits      ADD COLUMN IF NOT EXISTS stored_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE bin_status        ADD COLUMN IF NOT EXISTS stored_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE camera_detections ADD COLUMN IF NOT EXISTS stored_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE cems_readings     ADD COLUMN IF NOT EXISTS stored_at timestamptz NOT NULL DEFAULT now();

-- BRIN: stored_at grows with the physical order of the rows, so a tiny index finds the newest rows
-- without slowing the writer the way a B-tree on the hot path would.
CREATE INDEX IF NOT EXISTS sweeper_telemetry_stored_brin ON sweeper_telemetry USING brin (stored_at);
CREATE INDEX IF NOT EXISTS station_telemetry_stored_brin ON station_telemetry USING brin (stored_at);
CREATE INDEX IF NOT EXISTS bin_deposits_stored_brin      ON bin_deposits      USING brin (stored_at);
CREATE INDEX IF NOT EXISTS bin_status_stored_brin        ON bin_status        USING brin (stored_at);
CREATE INDEX IF NOT EXISTS camera_detections_stored_brin ON camera_detections USING brin (stored_at);
CREATE INDEX IF NOT EXISTS cems_readings_stored_brin     ON cems_readings     USING brin (stored_at);

-- Per source table: every row stored before `stored_upto` has been evaluated.
CREATE TABLE IF NOT EXISTS alert_watermarks (
    source       text PRIMARY KEY,
    stored_upto  timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Per rule and subject: where evaluation stopped (device time) and the condition's state there,
-- so the next pass resumes instead of re-reading history.
CREATE TABLE IF NOT EXISTS alert_eval_state (
    rule_id          text NOT NULL,
    subject          text NOT NULL,          -- device:ID, site:ID or point:ID
    evaluated_upto   timestamptz NOT NULL,   -- device time of the last sample taken into account
    active           boolean NOT NULL DEFAULT false,
    cursor           jsonb NOT NULL DEFAULT '{}'::jsonb,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rule_id, subject)
);
CREATE INDEX IF NOT EXISTS alert_eval_state_active_idx ON alert_eval_state (rule_id) WHERE active;
