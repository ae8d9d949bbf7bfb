"""Stream processors: derived values, batched idempotent writes into TimescaleDB, rollups, last-seen."""
