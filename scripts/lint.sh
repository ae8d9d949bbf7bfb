#!/usr/bin/env bash
# Style (ruff), one-way layers (import-linter) and types (mypy) over the whole tree.
# import-linter and mypy read the sanitel.* namespace through a symlink view (scripts/namespace_view.py),
# because they cannot follow the editable install's import hook.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
view="$(.venv/bin/python scripts/namespace_view.py)"
root="$PWD"
# from inside the view: import-linter puts the working directory first on sys.path
(cd "$view" && PYTHONPATH="$view" "$root/.venv/bin/lint-imports" --config "$root/pyproject.toml")
