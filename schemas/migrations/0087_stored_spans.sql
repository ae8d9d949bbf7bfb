-- Rollup freshness from one row per transaction instead of one index entry per reading (issue 16).
--
-- 0062 let the API find the buckets a rollup does not hold yet (rows stored after the processor's watermark) with a
-- `(device_id, stored_at)` B-tree on sweeper_telemetry and station_telemetry. Its upkeep was about a third of
-- PostgreSQL's CPU per stored reading in a backlog drain (6.3-7.9 µs a row with it, 4.5-5.2 without, alternated runs
-- in docs/benchmarks.md), and it answered one question only. 0062 named the cheaper way, done here: the writer
-- records, in the transaction that stores a batch, the spans of device time it wrote to each rolled-up table
-- (processors/stored_spans.py; one row, whatever the batch size). The API reads the spans stored after the
-- watermark — one row per transaction since the last pass — and probes only those spans of one device through the
-- unique `(device_id, ts, seq)` index, keeping the rows stored after the watermark (api/queries/readings.py
-- unrolled_buckets). Each pass of the scheduled processor deletes the
-- spans its watermark has passed (processors/maintenance.py).
--
-- Only the collector's writer (processors/writer.py) records spans. A row written to these tables any other way (by
-- hand, with psql) is served from the rollup until the next pass rolls it up, as every row was before 0062.
-- cems_readings keeps its `(device_id, stored_at)` index: the alert evaluator selects CEMS readings by it, and five
-- plants write few rows.

CREATE TABLE IF NOT EXISTS stored_spans (
    table_name text           NOT NULL,
    stored_at  timestamptz    NOT NULL DEFAULT now(),  -- the transaction's start, as the rows' own stored_at
    spans      tstzmultirange NOT NULL                 -- device times (ts) the transaction wrote to table_name
);
CREATE INDEX IF NOT EXISTS stored_spans_table_stored ON stored_spans (table_name, stored_at);

-- Rows stored after the watermark before this migration: one span over them, found while 0062's index still exists,
-- so that nothing stored before the upgrade is hidden until the next pass. (No watermark: the API reads the whole
-- series raw anyway.)
INSERT INTO stored_spans (table_name, stored_at, spans)
SELECT 'sweeper_telemetry', max(t.stored_at), tstzmultirange(tstzrange(min(t.ts), max(t.ts), '[]'))
FROM sweeper_telemetry t JOIN maintenance_watermarks w ON w.name = 'rollup:sweeper_telemetry'
WHERE t.stored_at > w.watermark HAVING count(*) > 0;
INSERT INTO stored_spans (table_name, stored_at, spans)
SELECT 'station_telemetry', max(t.stored_at), tstzmultirange(tstzrange(min(t.ts), max(t.ts), '[]'))
FROM station_telemetry t JOIN maintenance_watermarks w ON w.name = 'rollup:station_telemetry'
WHERE t.stored_at > w.watermark HAVING count(*) > 0;

DROP INDEX IF EXISTS sweeper_telemetry_device_stored;
DROP INDEX IF EXISTS station_telemetry_device_stored;

GRANT INSERT ON stored_spans TO sanitel_ingest;
GRANT SELECT ON stored_spans TO sanitel_api;
GRANT SELECT, DELETE ON stored_spans TO sanitel_processor;
