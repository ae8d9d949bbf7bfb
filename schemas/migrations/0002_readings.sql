-- One typed hypertable per reading kind, partitioned on device time, unique on (device_id, ts, seq)
-- so that a redelivered message is harmless. `seq` is 0 for devices without a sequence number.
-- `extra` keeps unknown fields; `received_at` is when the collector took the message.

CREATE TABLE IF NOT EXISTS sweeper_telemetry (
    device_id            text NOT NULL,
    ts                   timestamptz NOT NULL,
    seq                  bigint NOT NULL DEFAULT 0,
    received_at          timestamptz NOT NULL,
    lat                  double precision,
    lon                  double precision,
    speed_kmh            real,
    heading_deg          real,
    odometer_km          double precision,
    soc_pct              real,
    pack_voltage_v       real,
    pack_current_a       real,
    cell_voltage_max_v   real,
    cell_voltage_min_v   real,
    battery_temp_max_c   real,
    battery_temp_min_c   real,
    insulation_kohm      real,
    motor_temp_c         real,
    motor_rpm            real,
    charging_state       text,
    work_mode            text,
    fan_speed_rpm        real,
    brush_on             boolean,
    water_tank_pct       real,
    hopper_fill_pct      real,
    swept_distance_km    double precision,
    work_hours_h         double precision,
    alarm_level          smallint,
    alarm_flags          bigint,
    extra                jsonb,
    UNIQUE (device_id, ts, seq)
);

CREATE TABLE IF NOT EXISTS station_telemetry (
    device_id             text NOT NULL,
    ts                    timestamptz NOT NULL,
    seq                   bigint NOT NULL DEFAULT 0,
    received_at           timestamptz NOT NULL,
    compactor_running     boolean,
    compactor_pressure_mpa real,
    hopper_level_pct      real,
    h2s_mg_m3             real,
    nh3_mg_m3             real,
    odour_concentration   real,
    noise_dba             real,
    leachate_level_pct    real,
    deodoriser_on         boolean,
    truck_id              text,
    weighbridge_in_t      real,
    weighbridge_out_t     real,
    extra                 jsonb,
    UNIQUE (device_id, ts, seq)
);

CREATE TABLE IF NOT EXISTS bin_deposits (
    device_id     text NOT NULL,
    ts            timestamptz NOT NULL,
    seq           bigint NOT NULL DEFAULT 0,
    received_at   timestamptz NOT NULL,
    point_id      text,
    household_id  text NOT NULL,
    category      text NOT NULL CHECK (category IN ('recyclable', 'hazardous', 'kitchen', 'other')),
    weight_kg     real NOT NULL,
    extra         jsonb,
    UNIQUE (device_id, ts, seq)
);

CREATE TABLE IF NOT EXISTS bin_status (
    device_id       text NOT NULL,
    ts              timestamptz NOT NULL,
    seq             bigint NOT NULL DEFAULT 0,
    received_at     timestamptz NOT NULL,
    point_id        text,
    fill_level_pct  real,
    lid_open        boolean,
    temperature_c   real,
    fire_alarm      boolean,
    battery_pct     real,
    extra           jsonb,
    UNIQUE (device_id, ts, seq)
);

CREATE TABLE IF NOT EXISTS camera_detections (
    device_id    text NOT NULL,
    ts           timestamptz NOT NULL,
    seq          bigint NOT NULL DEFAULT 0,
    received_at  timestamptz NOT NULL,
    point_id     text,
    detection    text NOT NULL,
    confidence   real NOT NULL,
    object_count integer,
    image_ref    text,
    extra        jsonb,
    UNIQUE (device_id, ts, seq)
);

-- CEMS: one row per device-time and data kind (rtd, minute, hour, day), measured and normalised
-- (`_zs`, 11 % O2 dry as reported by the analyser) values and the HJ 212 flag of each pollutant.
CREATE TABLE IF NOT EXISTS cems_readings (
    device_id           text NOT NULL,
    ts                  timestamptz NOT NULL,
    seq                 bigint NOT NULL DEFAULT 0,
    data_kind           text NOT NULL DEFAULT 'rtd' CHECK (data_kind IN ('rtd', 'minute', 'hour', 'day')),
    received_at         timestamptz NOT NULL,
    plant_id            text,
    line_id             text,
    source              text NOT NULL DEFAULT 'json' CHECK (source IN ('json', 'hj212')),
    dust_mg_m3          real, dust_zs_mg_m3 real, dust_flag char(1),
    so2_mg_m3           real, so2_zs_mg_m3  real, so2_flag  char(1),
    nox_mg_m3           real, nox_zs_mg_m3  real, nox_flag  char(1),
    co_mg_m3            real, co_zs_mg_m3   real, co_flag   char(1),
    hcl_mg_m3           real, hcl_zs_mg_m3  real, hcl_flag  char(1),
    hf_mg_m3            real, hf_zs_mg_m3   real, hf_flag   char(1),
    toc_mg_m3           real, toc_zs_mg_m3  real, toc_flag  char(1),
    nh3_mg_m3           real, nh3_zs_mg_m3  real, nh3_flag  char(1),
    hg_mg_m3            real, hg_zs_mg_m3   real, hg_flag   char(1),
    o2_pct              real, o2_flag       char(1),
    h2o_pct             real, h2o_flag      char(1),
    flue_temp_c         real,
    flue_pressure_kpa   real,
    flue_velocity_m_s   real,
    flue_flow_m3_h      double precision,
    furnace_temp_c      real,
    gas_is_dry          boolean NOT NULL DEFAULT true,
    extra               jsonb,
    UNIQUE (device_id, ts, data_kind, seq)
);

SELECT create_hypertable(t, 'ts', chunk_time_interval => i, if_not_exists => true)
FROM (VALUES ('sweeper_telemetry', interval '1 day'),
             ('station_telemetry', interval '1 day'),
             ('bin_deposits',      interval '7 days'),
             ('bin_status',        interval '1 day'),
             ('camera_detections', interval '7 days'),
             ('cems_readings',     interval '7 days')) AS h (t, i);

-- The unique constraints above index (device_id, ts, seq); queries by device want ts DESC first.
CREATE INDEX IF NOT EXISTS sweeper_telemetry_device_ts ON sweeper_telemetry (device_id, ts DESC);
CREATE INDEX IF NOT EXISTS station_telemetry_device_ts ON station_telemetry (device_id, ts DESC);
CREATE INDEX IF NOT EXISTS bin_deposits_device_ts ON bin_deposits (device_id, ts DESC);
CREATE INDEX IF NOT EXISTS bin_deposits_household_ts ON bin_deposits (household_id, ts DESC);
CREATE INDEX IF NOT EXISTS bin_status_device_ts ON bin_status (device_id, ts DESC);
CREATE INDEX IF NOT EXISTS camera_detections_device_ts ON camera_detections (device_id, ts DESC);
CREATE INDEX IF NOT EXISTS cems_readings_device_ts ON cems_readings (device_id, ts DESC);
