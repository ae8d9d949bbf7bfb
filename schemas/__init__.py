"""The wire contract and the storage contract: typed schemas per device kind, topic grammar,
JSON Schema / AsyncAPI export, and the SQL migrations. Nothing here does I/O."""
