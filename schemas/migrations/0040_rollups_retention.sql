-- Rollups and retention are run by the project's own scheduled processor (processors/maintenance.py),
-- so one tested code path serves every TimescaleDB edition (no continuous aggregates, no policies).

-- Buckets to recompute are found by `stored_at` (when a row was committed; migration 0011 adds it and its
-- BRIN indexes), so late data — including a spool replay hours after receipt — lands in its bucket.

-- 5-minute rollups of the numeric telemetry that dashboards and the API chart. Column names are
-- <reading column>_<avg|min|max>: the rollup processor derives its SQL from them.
CREATE TABLE IF NOT EXISTS sweeper_telemetry_5m (
    device_id              text NOT NULL,
    bucket                 timestamptz NOT NULL,
    n                      integer NOT NULL,
    soc_pct_avg real, soc_pct_min real, soc_pct_max real,
    speed_kmh_avg real, speed_kmh_max real,
    battery_temp_max_c_avg real, battery_temp_max_c_max real,
    pack_current_a_avg real,
    insulation_kohm_min real,
    motor_temp_c_max real,
    water_tank_pct_avg real, water_tank_pct_min real,
    hopper_fill_pct_avg real, hopper_fill_pct_max real,
    PRIMARY KEY (device_id, bucket)
);
CREATE TABLE IF NOT EXISTS station_telemetry_5m (
    device_id              text NOT NULL,
    bucket                 timestamptz NOT NULL,
    n                      integer NOT NULL,
    h2s_mg_m3_avg real, h2s_mg_m3_max real,
    nh3_mg_m3_avg real, nh3_mg_m3_max real,
    odour_concentration_avg real, odour_concentration_max real,
    noise_dba_avg real, noise_dba_max real,
    compactor_pressure_mpa_max real,
    hopper_level_pct_avg real, hopper_level_pct_max real,
    leachate_level_pct_avg real, leachate_level_pct_max real,
    PRIMARY KEY (device_id, bucket)
);
SELECT create_hypertable(t, 'bucket', chunk_time_interval => interval '30 days', if_not_exists => true)
FROM (VALUES ('sweeper_telemetry_5m'), ('station_telemetry_5m')) AS h (t);

CREATE TABLE IF NOT EXISTS maintenance_watermarks (
    name        text PRIMARY KEY,
    watermark   timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
