"""All SQL the API runs, one module per resource. Values always travel as parameters; the only
identifiers composed into SQL come from ``api.catalog`` (the wire contract), quoted with psycopg.sql."""
