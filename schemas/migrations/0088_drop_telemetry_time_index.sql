-- Sweeper and station telemetry without TimescaleDB's default `(ts DESC)` index (issue 16).
--
-- TimescaleDB creates it on every hypertable (create_hypertable's create_default_indexes). Its upkeep was 1.4-2.9 µs
-- of PostgreSQL's CPU per stored sweeper reading, 16-37 % of the backend's CPU per row (docs/benchmarks.md,
-- bench/ingest/costs.py time-index: alternated writer-only runs of 200,000 readings), and nothing needs it on these
-- two tables: every query of the API, the alert evaluator and the rollups names a device (the unique
-- `(device_id, ts, seq)` index serves it) or selects by write time (the `stored_at` BRIN index of 0011 serves it;
-- the alert evaluator's `changes`), and a whole-day or whole-chunk read scans the chunk anyway.
-- tests/integration/test_reading_indexes.py checks the plans.
DROP INDEX IF EXISTS sweeper_telemetry_ts_idx;
DROP INDEX IF EXISTS station_telemetry_ts_idx;
