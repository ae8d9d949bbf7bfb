-- Rollup freshness (issue 17): which buckets of a device received rows after the scheduled processor last
-- rolled them up.
--
-- A rollup (sweeper/station 5-minute, cems_averages) holds every row stored up to its watermark
-- (maintenance_watermarks, a `stored_at` time). Rows stored after it — live data, and back-fills or spool
-- replays whose device times lie anywhere in the past — are not in it yet. The API finds them per device
-- with this index, `device_id = $1 AND stored_at > $watermark`: an index range that holds only the rows
-- written since the last pass (seconds to minutes of one device, or one back-fill), whatever range of
-- device time a request covers. The BRIN on stored_at (0011) cannot answer per device; the (device_id, ts)
-- indexes would visit every reading of the requested range.
-- Cost: one more B-tree entry per row on the three tables that have rollups, about 50 bytes a row; the
-- alternative — the writer marking dirty buckets in a side table — is cheaper still and can replace it.
-- CREATE INDEX on a hypertable indexes every chunk; on a large existing database run this migration in a
-- quiet hour (it takes a SHARE lock: writes wait while each chunk is indexed).

CREATE INDEX IF NOT EXISTS sweeper_telemetry_device_stored ON sweeper_telemetry (device_id, stored_at);
CREATE INDEX IF NOT EXISTS station_telemetry_device_stored ON station_telemetry (device_id, stored_at);
CREATE INDEX IF NOT EXISTS cems_readings_device_stored ON cems_readings (device_id, stored_at);

-- The CEMS averages processor now finds changed periods by stored_at (its BRIN, 0011), not received_at:
-- a spool replay keeps its old receive time and was missed. The receive-time index has no other reader.
DROP INDEX IF EXISTS cems_readings_received_at;
