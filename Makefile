# The two set-up commands of the README, plus a few conveniences.
.PHONY: install run test lint bench-ingest

install:
	bash scripts/install.sh

run: install
	.venv/bin/sanitel run

test: install
	.venv/bin/ruff check .
	.venv/bin/pytest

lint:
	.venv/bin/ruff check .

bench-ingest: install
	.venv/bin/python bench/ingest/run.py
