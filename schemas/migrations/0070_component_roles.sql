-- Least privilege: one database role per component (issue 12; docs/security.md says who may do what).
--
-- !! EVERY LATER MIGRATION THAT ADDS A TABLE, SEQUENCE OR FUNCTION MUST GRANT ON IT TOO (as this file does), to exactly the roles
-- !! below whose code uses it (a new column of an existing table is covered by its table's grant, except in the
-- !! column lists of `devices` and `gateways`). A component runs as its role: anything not granted is
-- !! "permission denied" there, although the test suite (connected as the superuser) still passes.
-- !! tests/integration/security/test_db_roles.py proves the grants; run the suite as the roles with
-- !! `pytest -p tests.integration.security.as_roles tests/integration` to find a missing one.
--
-- The owner is no role of ours: it is whoever runs the migrations (SANITEL_DATABASE_URL, `sanitel migrate`) and so
-- owns every table. The local stack migrates as the cluster's superuser (CREATE EXTENSION timescaledb needs one);
-- a deployment may use any role that owns the schema, may create roles (CREATEROLE) and has TimescaleDB installed.
-- The component roles are created NOLOGIN: deploying means `ALTER ROLE … LOGIN PASSWORD …` (the local stack does it,
-- sanitel/db.py provision_component_roles) and pointing SANITEL_<COMPONENT>_DATABASE_URL at them.
--
--   sanitel_ingest     collector and HJ 212 listener: insert readings, dead letters, last-seen; auto-register devices
--   sanitel_api        the HTTP API and its CLI: reads what the routes show; writes keys, registry, silences, rules,
--                      webhooks, alert acknowledgements; never readings
--   sanitel_evaluator  alert evaluator: reads readings and registry; writes alerts, its state, the notification outbox
--   sanitel_processor  scheduled processor: rollups, CEMS averages, watermarks, retention (drop_chunks through
--                      sanitel_drop_chunks below, as dropping a chunk needs the table's owner)
--
-- Roles are cluster-wide, so several databases of one cluster (the test suite's) share them: creation is idempotent
-- and tolerates a concurrent creator; grants are per database. Safe to run twice.

DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['sanitel_ingest', 'sanitel_api', 'sanitel_evaluator', 'sanitel_processor'] LOOP
        CONTINUE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r);
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN
                NULL;  -- another database of this cluster created it a moment ago
            WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'role % does not exist and % may not create roles', r, current_user
                    USING HINT = format('as a superuser, run CREATE ROLE %I NOLOGIN (or grant CREATEROLE to %I), '
                                        'then sanitel migrate again', r, current_user);
        END;
    END LOOP;
END
$$;

-- Nobody but the owner creates objects in our schema (PostgreSQL < 15 lets PUBLIC create in `public`; CVE-2018-1058).
-- Temporary tables stay allowed: the collector stages every batch in them (TEMP on the database is PUBLIC's default).
DO $$
BEGIN
    EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC', current_schema());
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO sanitel_ingest, sanitel_api, sanitel_evaluator, sanitel_processor',
                   current_schema());
END
$$;

-- every component checks at start that the schema is current (sanitel/db.py require_current_schema)
GRANT SELECT ON schema_migrations TO sanitel_ingest, sanitel_api, sanitel_evaluator, sanitel_processor;

-- ---------------------------------------------------------------------------------------------------------------
-- sanitel_ingest
-- ---------------------------------------------------------------------------------------------------------------
-- Readings: INSERT … ON CONFLICT DO NOTHING; SELECT because the writer's staging tables are
-- CREATE TEMP TABLE … (LIKE <table>), which needs it. Never UPDATE, DELETE or TRUNCATE: stored readings are final.
-- (TimescaleDB passes a hypertable's grants on to its chunks, present and future.)
GRANT SELECT, INSERT ON sweeper_telemetry, station_telemetry, bin_deposits, bin_status, camera_detections,
                        cems_readings TO sanitel_ingest;
GRANT SELECT, INSERT ON dead_letters TO sanitel_ingest;
GRANT USAGE ON SEQUENCE dead_letters_id_seq TO sanitel_ingest;
-- a payload seen again only widens its first/last-seen window (ON CONFLICT DO UPDATE)
GRANT SELECT, INSERT ON dead_letter_payloads TO sanitel_ingest;
GRANT UPDATE (first_received_at, last_received_at) ON dead_letter_payloads TO sanitel_ingest;
GRANT SELECT, INSERT ON device_last_seen TO sanitel_ingest;
GRANT UPDATE (last_ts, last_seq, last_received) ON device_last_seen TO sanitel_ingest;
-- The registry: what a device is, which gateway it sits behind and its HJ 212 password hash — not the broker
-- credentials. Auto-registration inserts a bare device: the ingest role cannot give one broker credentials, an
-- HJ 212 password or a gateway.
GRANT SELECT (device_id, kind, site_id, name, gateway_id, hj212_password_hash, inactivity_timeout_s, metadata,
              auto_registered, registered_at) ON devices TO sanitel_ingest;
GRANT INSERT (device_id, kind, site_id, name, inactivity_timeout_s, metadata, auto_registered) ON devices
    TO sanitel_ingest;
GRANT SELECT (gateway_id, name, site_id, registered_at) ON gateways TO sanitel_ingest;
GRANT SELECT ON sites TO sanitel_ingest;

-- ---------------------------------------------------------------------------------------------------------------
-- sanitel_api
-- ---------------------------------------------------------------------------------------------------------------
-- Reads: everything the routes, /health, /metrics and reports show (no evaluator internals: alert_eval_state).
GRANT SELECT ON sweeper_telemetry, station_telemetry, bin_deposits, bin_status, camera_detections, cems_readings,
                sweeper_telemetry_5m, station_telemetry_5m, cems_averages, maintenance_watermarks,
                device_last_seen, dead_letters, dead_letter_payloads,
                alerts, alert_history, alert_rules, silences, alert_notifications, alert_webhooks,
                alert_webhook_deliveries, alert_watermarks
    TO sanitel_api;
-- keys: made and revoked (revoked ones stay, for the audit trail: no DELETE)
GRANT SELECT, INSERT, UPDATE ON api_keys TO sanitel_api;
-- the registry and broker accounts (the API writes the broker's password file and ACL from them)
GRANT SELECT, INSERT, UPDATE, DELETE ON sites, devices, gateways, mqtt_service_users TO sanitel_api;
-- people's actions on alerts: silences, acknowledgement, assignment (with their history), rules, webhooks
GRANT INSERT, UPDATE ON silences TO sanitel_api;
GRANT USAGE ON SEQUENCE silences_silence_id_seq TO sanitel_api;
GRANT UPDATE ON alerts TO sanitel_api;
GRANT INSERT ON alert_history TO sanitel_api;
GRANT USAGE ON SEQUENCE alert_history_id_seq TO sanitel_api;
GRANT INSERT, UPDATE, DELETE ON alert_rules, alert_webhooks TO sanitel_api;

-- ---------------------------------------------------------------------------------------------------------------
-- sanitel_evaluator
-- ---------------------------------------------------------------------------------------------------------------
GRANT SELECT ON sweeper_telemetry, station_telemetry, bin_deposits, bin_status, camera_detections, cems_readings,
                sweeper_telemetry_5m, station_telemetry_5m, cems_averages, maintenance_watermarks,
                device_last_seen, sites, alert_rules, silences
    TO sanitel_evaluator;
GRANT SELECT (device_id, kind, site_id, name, gateway_id, inactivity_timeout_s, metadata, auto_registered,
              registered_at) ON devices TO sanitel_evaluator;
GRANT SELECT, INSERT, UPDATE ON alerts, alert_watermarks, alert_notifications TO sanitel_evaluator;
GRANT SELECT, INSERT ON alert_history TO sanitel_evaluator;
GRANT SELECT, INSERT, UPDATE ON alert_eval_state, alert_webhook_deliveries TO sanitel_evaluator;
-- `sanitel evaluator --webhook URL` registers receivers; deliveries sign with their secret. Removing one is the
-- API's (and `sanitel webhooks`, which connects as the API's role).
GRANT SELECT, INSERT, UPDATE ON alert_webhooks TO sanitel_evaluator;
GRANT USAGE ON SEQUENCE alerts_alert_id_seq, alert_history_id_seq, alert_notifications_notification_id_seq
    TO sanitel_evaluator;

-- ---------------------------------------------------------------------------------------------------------------
-- sanitel_processor
-- ---------------------------------------------------------------------------------------------------------------
GRANT SELECT ON sweeper_telemetry, station_telemetry, bin_deposits, bin_status, camera_detections, cems_readings,
                sites
    TO sanitel_processor;
GRANT SELECT (device_id, kind, site_id, name, gateway_id, inactivity_timeout_s, metadata, auto_registered,
              registered_at) ON devices TO sanitel_processor;
-- rollups are upserted (ON CONFLICT DO UPDATE), CEMS averages replaced (DELETE + COPY) per device and period
GRANT SELECT, INSERT, UPDATE ON sweeper_telemetry_5m, station_telemetry_5m, maintenance_watermarks
    TO sanitel_processor;
GRANT SELECT, INSERT, DELETE ON cems_averages TO sanitel_processor;
-- retention of rejected messages (plain deletes)
GRANT SELECT, DELETE ON dead_letters, dead_letter_payloads TO sanitel_processor;

-- Retention drops whole chunks, and drop_chunks needs the hypertable's owner: the processor calls this function,
-- which runs as the owner (SECURITY DEFINER) but only for the tables with retention, and never for data younger
-- than 12 hours (the shortest retention the settings allow is a day; 12 h absorb clock skew between the processor's
-- host and the database). search_path is pinned, so a caller's objects can never stand in for ours
-- (https://www.postgresql.org/docs/current/sql-createfunction.html#SQL-CREATEFUNCTION-SECURITY).
CREATE OR REPLACE FUNCTION sanitel_drop_chunks(p_table text, p_older_than timestamptz) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    dropped integer;
BEGIN
    IF p_table IS NULL OR p_table NOT IN ('sweeper_telemetry', 'station_telemetry', 'bin_deposits', 'bin_status',
            'camera_detections', 'cems_readings', 'sweeper_telemetry_5m', 'station_telemetry_5m', 'cems_averages') THEN
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
-- pinned to our schema and TimescaleDB's, wherever they are (pg_temp last: a caller's temp objects come after ours)
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION sanitel_drop_chunks(text, timestamptz) SET search_path = pg_catalog, %I, %I, pg_temp',
                   current_schema(),
                   (SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'timescaledb'));
END
$$;
REVOKE ALL ON FUNCTION sanitel_drop_chunks(text, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sanitel_drop_chunks(text, timestamptz) TO sanitel_processor;

-- ---------------------------------------------------------------------------------------------------------------
-- Stage heartbeats (migration 0063): each background stage records its passes; the API and the evaluator read them.
-- ---------------------------------------------------------------------------------------------------------------
GRANT SELECT, INSERT, UPDATE ON stage_heartbeats TO sanitel_ingest, sanitel_evaluator, sanitel_processor;
GRANT DELETE ON stage_heartbeats TO sanitel_processor;  -- retention: instances silent for a week
GRANT SELECT ON stage_heartbeats TO sanitel_api;

-- ---------------------------------------------------------------------------------------------------------------
-- The evaluator waits for the oldest open transaction before it trusts that rows are committed
-- (alerts/queries.py safe_upto), and so does the scheduled processor's rollup watermark (processors/rollups.py
-- settled_upto). pg_stat_activity hides other roles' transactions unless one has pg_read_all_stats; without it both
-- fall back to a fixed settle time (slower alerts and rollups, still correct).
-- Granting it needs ADMIN on pg_read_all_stats (a superuser has it): where the owner lacks that, a DBA may grant it.
-- ---------------------------------------------------------------------------------------------------------------
DO $$
BEGIN
    GRANT pg_read_all_stats TO sanitel_evaluator, sanitel_processor;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'could not grant pg_read_all_stats to sanitel_evaluator, sanitel_processor (alerts and rollups '
                  'settle later); a superuser may: GRANT pg_read_all_stats TO sanitel_evaluator, sanitel_processor';
END
$$;
