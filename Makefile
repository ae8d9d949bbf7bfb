# The two set-up commands of the README, plus a few conveniences.
.PHONY: install run test test-unit lint bench-ingest

install:
	bash scripts/install.sh

run: install
	.venv/bin/sanitel run

# two test processes (pytest-xdist), each with its own PostgreSQL and Mosquitto; a file's tests stay in one process
# (their module fixtures are shared). Most of the suite waits on servers and subprocesses, so two processes halve
# it even on one core.
PYTEST_PARALLEL = -n 2 --dist loadfile

# lint first: a layering, type or style error fails before the slow tests start
test: install lint
	.venv/bin/pytest $(PYTEST_PARALLEL)

test-unit: install
	.venv/bin/pytest tests/unit

lint:
	bash scripts/lint.sh

bench-ingest: install
	.venv/bin/python bench/ingest/run.py
