-- Background stages report each successful pass, so that /health, Prometheus and an alert can say when one has
-- stopped (issue 17): the collector (every collector_heartbeat_s while it can reach broker and database), the
-- scheduled processor (each maintenance pass), the alert evaluator (each evaluation pass).
-- Times are the reporting process's clock, like the collector's receive times.
CREATE TABLE IF NOT EXISTS stage_heartbeats (
    stage         text NOT NULL CHECK (stage IN ('collector', 'processor', 'evaluator')),
    instance      text NOT NULL,
    interval_s    double precision NOT NULL CHECK (interval_s > 0),  -- how often it means to report
    last_pass_at  timestamptz NOT NULL,                              -- its last successful pass
    started_at    timestamptz NOT NULL,                              -- when this instance started
    PRIMARY KEY (stage, instance)
);
