"""The `dgnerf` command. Each sub-command lives in dgnerf/commands/<name>.py and exposes
`register(subparsers)`, which adds its parser and sets `func(args) -> int | None` as a default;
the modules are discovered, so adding a command never edits this file.

Bad input is one line on stderr, `dgnerf <command>: error: ...`, and exit status 2: argument-syntax
errors (the parser), user errors (dgnerf.errors.DgnerfError, and ValueError / OSError from argument
checks and files). Anything else is a bug: one line saying so, exit status 3. DGNERF_DEBUG=1 shows the
traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import re
import sys

import dgnerf
import dgnerf.commands as commands
from dgnerf import threads
from dgnerf.errors import DgnerfError

# Errors a user can act on: their message says what is wrong with an argument, a file or the machine.
USER_ERRORS = (DgnerfError, ValueError, OSError, MemoryError, RecursionError)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the usage block argparse prints first would bury the line that
    says what is wrong; `--help` still shows it."""

    def _get_values(self, action, arg_strings):
        # `--flag=--` reaches here as ['--'], which argparse strips to an empty list, handing the command [] as
        # the value: refuse it as the missing value it is
        if action.nargs is None and arg_strings == ["--"]:
            raise argparse.ArgumentError(action, "expected one argument")
        return super()._get_values(action, arg_strings)

    def error(self, message):
        if os.environ.get("DGNERF_DEBUG"):
            self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="dgnerf", description="Drivable, generalizable head radiance fields: train, render, fit, drive."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"dgnerf.commands.{mod.name}")
        module.register(sub)
    return parser


def _deepest(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The (sub-)parser of the command the arguments chose."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, subs[0].dest, None) if subs else None
        if not subs or name not in subs[0].choices:
            return parser
        parser = subs[0].choices[name]


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1:  # a list of problems (e.g. a dataset's) as one line: the head, then the first few
        items = [ln.lstrip("- ").strip() for ln in lines[1:]]
        more = f"; ... ({len(items) - 3} more)" if len(items) > 3 else ""
        text = lines[0].rstrip(":") + ": " + "; ".join(items[:3]) + more
    if isinstance(e, MemoryError):
        text = f"out of memory{': ' + str(e) if str(e) else ''} (an argument or a file asks for more than this machine has)"
    elif isinstance(e, RecursionError):
        text = "input nested too deeply to read (a JSON argument or file?)"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the sub-command's parser, so the line and its --help hint name the command typed
        _deepest(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    if args.version:
        print(dgnerf.__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    name = getattr(args, "command", None) or "dgnerf"
    threads.configure()  # the CPUs this process may use (affinity, cgroup quota), unless OMP_NUM_THREADS says
    threads.keep_freed_memory()  # freed memory stays for the next step instead of costing page faults again
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("dgnerf: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if os.environ.get("DGNERF_DEBUG"):
            raise
        print(f"dgnerf {name}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        if not _out_of_memory(e) or os.environ.get("DGNERF_DEBUG"):
            return _bug(name, e)
        # torch's allocators say it as a RuntimeError: what the arguments asked for does not fit here
        print(f"dgnerf {name}: error: out of memory ({_alloc_text(e)}); ask for less (sizes, batch) or use a "
              "machine with more memory", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the last line of defence: a bug, said in one line
        return _bug(name, e)
    return int(rc or 0)


def _out_of_memory(e: BaseException) -> bool:
    text = str(e)
    return "out of memory" in text.lower() or "can't allocate memory" in text


def _alloc_text(e: BaseException) -> str:
    m = re.search(r"tried to allocate (\d+) bytes", str(e))
    if m:
        return f"{int(m.group(1)) / 2**30:.1f} GiB asked for at once"
    return str(e).strip().splitlines()[0][:160]


def _bug(name: str, e: BaseException) -> int:
    if os.environ.get("DGNERF_DEBUG"):
        raise e
    print(f"dgnerf {name}: internal error ({type(e).__name__}: {str(e)[:300]}); this is a bug in dgnerf: "
          "rerun with DGNERF_DEBUG=1 for the traceback and report it", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
