-- Deposits per sorting point (the API's "per point" view); per household is indexed in 0002.
CREATE INDEX IF NOT EXISTS bin_deposits_point_ts ON bin_deposits (point_id, ts DESC);
