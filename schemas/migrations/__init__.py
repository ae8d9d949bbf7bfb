"""Versioned SQL migrations, applied in file-name order by ``sanitel.db.apply_migrations``.

Number ranges: 0001-0009 foundation and ingestion, 0010-0019 alerts, 0020-0029 CEMS compliance,
0030-0039 API (keys), 0040- maintenance/rollups. Each file must be safe to run twice."""
