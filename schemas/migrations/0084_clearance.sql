-- Daily clearance (issue 15, item 3): one row per sorting point, waste category and local day with a schedule
-- (the point's `clearance` site parameter), judged by sanitel/clearance.py `judge_clearance` from the trucks'
-- pickups (truck_events, event 'pickup'). Written by the scheduled processor (processors/clearance.py): a row of
-- a day still running is updated each pass (pending → on_time, overdue → late, …); "missed" only once the day has
-- ended (issue 18: no premature verdicts).
CREATE TABLE IF NOT EXISTS clearance_days (
    point_id         text NOT NULL,
    category         text NOT NULL CHECK (category IN ('recyclable', 'hazardous', 'kitchen', 'other')),
    day              date NOT NULL,                  -- local day of the point (sites.timezone)
    street_id        text,                           -- the point's parent site (estate / urban village)
    due_by           time NOT NULL,                  -- the schedule's local deadline that day
    deadline         timestamptz NOT NULL,
    status           text NOT NULL CHECK (status IN ('pending', 'on_time', 'overdue', 'late', 'missed')),
    first_pickup_at  timestamptz,                    -- first pickup of the category that day (None: none yet)
    pickups          integer NOT NULL DEFAULT 0,
    weight_kg        double precision NOT NULL DEFAULT 0,
    judged_at        timestamptz NOT NULL,           -- the pass's clock when this status was given
    PRIMARY KEY (point_id, category, day)
);
CREATE INDEX IF NOT EXISTS clearance_days_day_idx ON clearance_days (day, street_id);

-- Grants (0070's rule): the processor writes the rows, the API and reports read them.
GRANT SELECT, INSERT, UPDATE ON clearance_days TO sanitel_processor;
GRANT SELECT ON clearance_days TO sanitel_api;
-- (truck_events, weighbridge_tickets and truck_routes: read by both, granted by 0083.)
