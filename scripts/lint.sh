#!/usr/bin/env bash
# Style (ruff), one-way layers (import-linter), types (mypy) and dead code (vulture) over the whole tree.
# import-linter and mypy read the sanitel.* namespace through a symlink view (scripts/namespace_view.py),
# because they cannot follow the editable install's import hook.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
.venv/bin/ruff check .
view="$(.venv/bin/python scripts/namespace_view.py)"
# from inside the view: import-linter puts the working directory first on sys.path
(cd "$view" && PYTHONPATH="$view" "$root/.venv/bin/lint-imports" "$root/pyproject.toml")
bash scripts/typecheck.sh
# framework callbacks and data fields that vulture cannot see used are listed, with reasons, in the whitelist
.venv/bin/vulture ingest processors alerts api simulators schemas sanitel scripts/vulture_whitelist.py --min-confidence 60
