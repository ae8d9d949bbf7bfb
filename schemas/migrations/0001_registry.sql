-- Registry: sites (districts, estates, stations, plants and their lines) and devices.
CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE IF NOT EXISTS sites (
    site_id     text PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('district', 'estate', 'urban_village', 'sorting_point',
                                              'transfer_station', 'depot', 'plant', 'line')),
    name        text NOT NULL,
    parent_id   text REFERENCES sites (site_id),
    timezone    text NOT NULL DEFAULT 'Asia/Shanghai',
    latitude    double precision,
    longitude   double precision,
    -- per-site rule parameters: odour_grade, noise_class, permit limits, …
    params      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS sites_parent_idx ON sites (parent_id);

CREATE TABLE IF NOT EXISTS devices (
    device_id            text PRIMARY KEY,
    kind                 text NOT NULL CHECK (kind IN ('sweeper', 'transfer_station', 'bin', 'camera', 'cems')),
    site_id              text REFERENCES sites (site_id),
    name                 text,
    -- MQTT credentials: a salted hash, never the password itself
    mqtt_username        text UNIQUE,
    mqtt_password_hash   text,
    inactivity_timeout_s integer NOT NULL DEFAULT 900 CHECK (inactivity_timeout_s > 0),
    metadata             jsonb NOT NULL DEFAULT '{}'::jsonb,
    auto_registered      boolean NOT NULL DEFAULT false,
    registered_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS devices_kind_idx ON devices (kind);
CREATE INDEX IF NOT EXISTS devices_site_idx ON devices (site_id);

-- Kept apart from devices so the hot path's upsert touches a narrow row.
CREATE TABLE IF NOT EXISTS device_last_seen (
    device_id      text PRIMARY KEY REFERENCES devices (device_id) ON DELETE CASCADE,
    last_ts        timestamptz NOT NULL,  -- newest device time seen
    last_seq       bigint,
    last_received  timestamptz NOT NULL   -- when we last heard from it (receive time)
);
