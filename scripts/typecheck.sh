#!/usr/bin/env bash
# Types (mypy, settings in pyproject.toml [tool.mypy]) over the whole tree: the sanitel package, tests and bench.
# mypy reads the sanitel.* namespace through the symlink view of scripts/namespace_view.py, because it cannot
# follow the editable install's import hook. Extra arguments go to mypy (e.g. --no-incremental).
set -euo pipefail
cd "$(dirname "$0")/.."
view="$(realpath --relative-to=. "$(.venv/bin/python scripts/namespace_view.py)")"
# errors name the real files (alerts/rules.py), not their links in the view (build/namespace/sanitel/alerts/rules.py)
real_paths=()
for link in "$view"/sanitel/*; do
    if [[ -L "$link" ]]; then
        real_paths+=(-e "s#^${link}\([/:]\)#$(realpath --relative-to=. "$link")\1#")
    fi
done
# one run: the package through the view (modules sanitel.*), tests and bench from the repository (tests.*,
# bench.*: explicit_package_bases); MYPYPATH (also mypy_path) puts the view before the repository's own sanitel/
MYPYPATH="$view" .venv/bin/mypy "$@" "$view/sanitel" tests bench | sed "${real_paths[@]}"
