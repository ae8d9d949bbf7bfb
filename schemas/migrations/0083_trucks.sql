-- Collection trucks and weighbridge tickets (issue 15): a sixth device kind, two typed reading tables for it, one
-- for the tickets of a plant's or transfer station's weighbridge (a `transfer_station`-kind device, stream `event`),
-- and the trucks' planned routes. Columns follow schemas/readings.py (TruckTelemetry, TruckEvent, WeighbridgeTicket);
-- the conventions are 0002's: partitioned on device time, unique on (device_id, ts, seq) so a redelivery is harmless,
-- `received_at` when the collector took the message, `extra` the unknown fields; `stored_at` and its BRIN as 0011
-- added to every reading table (the alert evaluator finds new rows by it).

-- A device may now be a truck. The constraint is 0001's, unnamed there, so PostgreSQL's name for it.
ALTER TABLE devices DROP CONSTRAINT IF EXISTS devices_kind_check;
ALTER TABLE devices ADD CONSTRAINT devices_kind_check
    CHECK (kind IN ('sweeper', 'transfer_station', 'bin', 'camera', 'cems', 'truck'));

CREATE TABLE IF NOT EXISTS truck_telemetry (
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
    alarm_level          smallint,
    alarm_flags          bigint,
    powertrain           text CHECK (powertrain IN ('electric', 'diesel', 'cng', 'hybrid')),
    load_kg              real,
    rated_payload_kg     real,
    compactor_state      text CHECK (compactor_state IN ('idle', 'compacting', 'fault')),
    lifter_state         text CHECK (lifter_state IN ('stowed', 'lifting', 'fault')),
    route_id             text,
    shift_state          text CHECK (shift_state IN ('depot', 'to_route', 'collecting', 'to_tip', 'tipping',
                                                     'returning', 'off_shift')),
    extra                jsonb,
    stored_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (device_id, ts, seq)
);

CREATE TABLE IF NOT EXISTS truck_events (
    device_id    text NOT NULL,
    ts           timestamptz NOT NULL,
    seq          bigint NOT NULL DEFAULT 0,
    received_at  timestamptz NOT NULL,
    event        text NOT NULL CHECK (event IN ('pickup', 'tip')),
    weight_kg    real NOT NULL,
    point_id     text,
    bin_tag      text,
    category     text CHECK (category IN ('recyclable', 'hazardous', 'kitchen', 'other')),
    site_id      text,
    lat          double precision,
    lon          double precision,
    extra        jsonb,
    stored_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (device_id, ts, seq),
    -- the decoder rejects these first (missing_field); the table refuses them too
    CHECK (event <> 'pickup' OR point_id IS NOT NULL OR coalesce(bin_tag, '') <> ''),
    CHECK (event <> 'tip' OR site_id IS NOT NULL)
);

-- device_id is the weighbridge (a transfer_station device); ts the ticket time. Weights in kg, as weighed (real
-- would round a 100 t ticket to ~8 g: double precision keeps the ticket's figures).
CREATE TABLE IF NOT EXISTS weighbridge_tickets (
    device_id    text NOT NULL,
    ts           timestamptz NOT NULL,
    seq          bigint NOT NULL DEFAULT 0,
    received_at  timestamptz NOT NULL,
    ticket_id    text NOT NULL,
    truck_id     text NOT NULL,
    gross_kg     double precision NOT NULL,
    tare_kg      double precision NOT NULL,
    net_kg       double precision NOT NULL,
    category     text CHECK (category IN ('recyclable', 'hazardous', 'kitchen', 'other')),
    direction    text NOT NULL DEFAULT 'in' CHECK (direction IN ('in', 'out')),
    extra        jsonb,
    stored_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (device_id, ts, seq)
);

SELECT create_hypertable(t, 'ts', chunk_time_interval => i, if_not_exists => true)
FROM (VALUES ('truck_telemetry',     interval '1 day'),
             ('truck_events',        interval '7 days'),
             ('weighbridge_tickets', interval '7 days')) AS h (t, i);

-- Beside the unique (device_id, ts, seq) index, which serves per-device queries (0082): the stored_at BRIN (0011),
-- and the other leading columns the clearance model and the truck alerts ask by: a point's pickups, a truck's
-- tickets.
CREATE INDEX IF NOT EXISTS truck_telemetry_stored_brin     ON truck_telemetry     USING brin (stored_at);
CREATE INDEX IF NOT EXISTS truck_events_stored_brin        ON truck_events        USING brin (stored_at);
CREATE INDEX IF NOT EXISTS weighbridge_tickets_stored_brin ON weighbridge_tickets USING brin (stored_at);
CREATE INDEX IF NOT EXISTS truck_events_point_ts ON truck_events (point_id, ts DESC) WHERE point_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS weighbridge_tickets_truck_ts ON weighbridge_tickets (truck_id, ts DESC);

-- Planned routes: the ordered sorting points a truck collects in a shift, and where it tips. Shift times are local
-- to the points' sites; valid_to NULL means open-ended.
CREATE TABLE IF NOT EXISTS truck_routes (
    route_id      text PRIMARY KEY,
    truck_id      text NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    shift_start   time NOT NULL,
    shift_end     time NOT NULL,
    points        text[] NOT NULL CHECK (cardinality(points) >= 1),
    tip_site_id   text REFERENCES sites (site_id),
    valid_from    date NOT NULL,
    valid_to      date,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (valid_to IS NULL OR valid_to >= valid_from)
);
CREATE INDEX IF NOT EXISTS truck_routes_truck_idx ON truck_routes (truck_id);

-- Grants (0070's rule: every new table, to exactly the roles whose code uses it).
GRANT SELECT, INSERT ON truck_telemetry, truck_events, weighbridge_tickets TO sanitel_ingest;
GRANT SELECT ON truck_telemetry, truck_events, weighbridge_tickets TO sanitel_api;
GRANT SELECT, INSERT, UPDATE, DELETE ON truck_routes TO sanitel_api;
GRANT SELECT ON truck_telemetry, truck_events, weighbridge_tickets, truck_routes TO sanitel_evaluator;
GRANT SELECT ON truck_telemetry, truck_events, weighbridge_tickets, truck_routes TO sanitel_processor;

-- Retention: the new reading tables join the ones sanitel_drop_chunks may drop (0070's function, otherwise
-- unchanged). CREATE OR REPLACE keeps its owner and grants; its pinned search_path is set again below.
CREATE OR REPLACE FUNCTION sanitel_drop_chunks(p_table text, p_older_than timestamptz) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    dropped integer;
BEGIN
    IF p_table IS NULL OR p_table NOT IN ('sweeper_telemetry', 'station_telemetry', 'bin_deposits', 'bin_status',
            'camera_detections', 'cems_readings', 'truck_telemetry', 'truck_events', 'weighbridge_tickets',
            'sweeper_telemetry_5m', 'station_telemetry_5m', 'cems_averages') THEN
        RAISE EXCEPTION 'sanitel_drop_chunks: % is not a table with retention', p_table
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF p_older_than IS NULL OR p_older_than > now() - interval '12 hours' THEN
        RAISE EXCEPTION 'sanitel_drop_chunks: refusing to drop data younger than 12 hours (older_than %)', p_older_than
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT count(*) INTO dropped FROM drop_chunks(p_table::regclass, older_than => p_older_than);
    RETURN dropped;
END
$$;
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION sanitel_drop_chunks(text, timestamptz) SET search_path = pg_catalog, %I, %I, pg_temp',
                   current_schema(),
                   (SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'timescaledb'));
END
$$;
REVOKE ALL ON FUNCTION sanitel_drop_chunks(text, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sanitel_drop_chunks(text, timestamptz) TO sanitel_processor;
