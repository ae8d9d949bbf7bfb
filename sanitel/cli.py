"""The ``sanitel`` command. Each stage adds its own subcommands from ``<package>/cli.py``
(a ``register(subparsers)`` function); stages not built yet answer with a clear error."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

from sanitel import __version__
from sanitel.errors import SanitelError

# package → (its cli module, commands it will provide, the issue that builds them)
STAGES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("sanitel.stack_cli", ("stack", "migrate", "run"), "#2"),
    ("ingest.cli", ("collector",), "#3"),
    ("simulators.cli", ("simulate",), "#4"),
    ("alerts.cli", ("evaluator", "rules"), "#5"),
    ("api.cli", ("api", "keys", "devices"), "#6"),
    ("processors.cli", ("maintain",), "#2"),
    ("processors.report_cli", ("report",), "#7"),
)


def _not_built(command: str, issue: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        raise SanitelError(f"'sanitel {command}' is not built yet (issue {issue})")

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sanitel", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"sanitel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name, commands, issue in STAGES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module_name.startswith(exc.name):
                raise
            for command in commands:
                stub = sub.add_parser(command, help=f"(not built yet: issue {issue})")
                stub.set_defaults(func=_not_built(command, issue))
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SanitelError as exc:
        print(f"sanitel: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
