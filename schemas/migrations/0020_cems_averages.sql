-- Incinerator emission averages (issue #7), maintained by processors/cems_averages.py — a rollup
-- table of our own, not a continuous aggregate, so the Apache edition serves it (DESIGN.md §4).
--
-- One row per device (one stack line), pollutant, averaging period, standard and period start:
--   period   10min (EU CO) · 30min (EU half-hourly) · 1h (GB 18485 1-hour) · 1d (EU daily / GB 24-hour)
--   standard eu | gb — the daily average differs: EU from validated half-hours, GB from valid hours
--   avg_zs_mg_m3   mean of the valid normalised values (11 % O2, dry); NULL when there are none
--   avg_meas_mg_m3 mean of the measured (as-sent) values of the same valid readings, for comparison
--   n_valid / n_discarded   readings (10min, 30min, 1h) or sub-periods (1d) counted / discarded
--   discarded      reason → count (flag_C, flag_M, o2_guard, no_o2 …; for 1d: invalid/missing/not_operating)
--   covered_s      time covered by valid readings (sub-day periods), what the validity rule tests
--   status         valid | invalid | missing | not_operating | in_progress
-- Safe to run twice.

CREATE TABLE IF NOT EXISTS cems_averages (
    device_id       text NOT NULL,
    pollutant       text NOT NULL,
    period          text NOT NULL CHECK (period IN ('10min', '30min', '1h', '1d')),
    standard        text NOT NULL CHECK (standard IN ('eu', 'gb')),
    period_start    timestamptz NOT NULL,
    period_end      timestamptz NOT NULL,
    plant_id        text,
    line_id         text,
    avg_zs_mg_m3    double precision,
    avg_meas_mg_m3  double precision,
    n_valid         integer NOT NULL DEFAULT 0,
    n_discarded     integer NOT NULL DEFAULT 0,
    discarded       jsonb NOT NULL DEFAULT '{}'::jsonb,
    covered_s       double precision,
    status          text NOT NULL CHECK (status IN ('valid', 'invalid', 'missing', 'not_operating', 'in_progress')),
    valid           boolean NOT NULL,
    computed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device_id, pollutant, period, standard, period_start)
);

SELECT create_hypertable('cems_averages', 'period_start', chunk_time_interval => interval '30 days',
                         if_not_exists => true);

CREATE INDEX IF NOT EXISTS cems_averages_plant_day ON cems_averages (plant_id, period, period_start DESC);

-- recompute_since() finds the periods that received new rows by receive time (late data).
CREATE INDEX IF NOT EXISTS cems_readings_received_at ON cems_readings (received_at);

-- Its watermark lives in maintenance_watermarks (migration 0040) with the scheduled processor's others.
