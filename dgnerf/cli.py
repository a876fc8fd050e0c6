"""The `dgnerf` command. Each sub-command lives in dgnerf/commands/<name>.py and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int | None` as a default;
the modules are discovered, so adding a command never edits this file.

User errors (dgnerf.errors.DgnerfError, and ValueError / FileNotFoundError from argument checks) are
printed as one line on stderr with exit status 2; set DGNERF_DEBUG=1 to see the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

import dgnerf
import dgnerf.commands as commands
from dgnerf.errors import DgnerfError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dgnerf", description="Drivable, generalizable head radiance fields: train, render, fit, drive."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"dgnerf.commands.{mod.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(dgnerf.__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("dgnerf: interrupted", file=sys.stderr)
        return 130
    except (DgnerfError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        if os.environ.get("DGNERF_DEBUG"):
            raise
        print(f"dgnerf {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
