"""The HTTP API (FastAPI): devices and sites, readings, deposits, alerts and silences, reports, health."""
