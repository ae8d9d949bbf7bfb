# The two set-up commands of the README, plus a few conveniences.
.PHONY: install run test test-unit lint bench-ingest

install:
	bash scripts/install.sh

run: install
	.venv/bin/sanitel run

# lint first: a layering, type or style error fails before the slow tests start
test: install lint
	.venv/bin/pytest

test-unit: install
	.venv/bin/pytest tests/unit

lint:
	bash scripts/lint.sh

bench-ingest: install
	.venv/bin/python bench/ingest/run.py
