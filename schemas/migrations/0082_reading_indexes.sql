-- One index fewer to maintain per stored reading (issue 16: PostgreSQL spent ~1.6x a plain multi-row INSERT's CPU
-- per row).
--
-- 0002 gave every reading table a `(device_id, ts DESC)` index beside its unique constraint on
-- `(device_id, ts, seq)` (cems_readings: `(device_id, ts, data_kind, seq)`). The unique index already serves every
-- query that index was for: equality on device_id, a range or an order on ts — a B-tree is scanned backwards just as
-- well, so `WHERE device_id = $1 ORDER BY ts DESC LIMIT 1` is an Index Scan Backward on it. Every reading paid one
-- more index entry for nothing. tests/integration/test_reading_indexes.py proves, with EXPLAIN, that the API's and
-- the alert evaluator's reading queries still use an index on every chunk.
--
-- Kept: the unique indexes (idempotence), TimescaleDB's default `ts DESC` index (the evaluator's `changes` selects by
-- `ts >= horizon` across devices), bin_deposits_household_ts / bin_deposits_point_ts (other leading columns), the
-- stored_at BRINs (0011) and `(device_id, stored_at)` indexes (0062).
--
-- DROP INDEX on a hypertable drops the index of every chunk. It takes an ACCESS EXCLUSIVE lock on the table for
-- the moment of the drop (no rebuild); IF EXISTS makes it safe to repeat and on a database that never had them.

DROP INDEX IF EXISTS sweeper_telemetry_device_ts;
DROP INDEX IF EXISTS station_telemetry_device_ts;
DROP INDEX IF EXISTS bin_deposits_device_ts;
DROP INDEX IF EXISTS bin_status_device_ts;
DROP INDEX IF EXISTS camera_detections_device_ts;
DROP INDEX IF EXISTS cems_readings_device_ts;
