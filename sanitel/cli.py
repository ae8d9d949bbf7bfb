"""The ``sanitel`` command. Each stage adds its own subcommands from ``<package>/cli.py``
(a ``register(subparsers)`` function)."""

from __future__ import annotations

import argparse
import importlib
import sys

from sanitel import __version__
from sanitel.errors import SanitelError

# the modules whose register(subparsers) add the commands, in the order --help lists them
STAGE_CLIS: tuple[str, ...] = (
    "sanitel.stack_cli",
    "sanitel.ingest.cli",
    "sanitel.simulators.cli",
    "sanitel.alerts.cli",
    "sanitel.api.cli",
    "sanitel.processors.cli",
    "sanitel.processors.report_cli",
    "sanitel.processors.marks_cli",
    "sanitel.alert_truth",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sanitel", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"sanitel {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in STAGE_CLIS:
        importlib.import_module(module_name).register(sub)
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
