"""The wire contract and the storage contract: typed schemas per device kind, topic grammar, the decoded
records (rows, rejections) ingest hands to processors, JSON Schema / AsyncAPI export, and the SQL migrations.
Nothing here does I/O, and nothing here imports the rest of sanitel: it is the bottom layer."""
