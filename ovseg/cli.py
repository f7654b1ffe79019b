"""The commands' shared edge: a user's mistake is one line on stderr and exit code 2, not a traceback.

    @command("pretrain")
    def main(argv: list[str] | None = None) -> int: ...

User errors are what a person can fix by changing the command, the config or the files given: a bad config
value (``ConfigError``, any ``ValueError``), a missing, existing or unreadable path, a YAML file that does not
parse. Every other exception is a bug and keeps its traceback; ``--debug`` shows the traceback of a user
error too (``add_debug`` puts the flag in a command's ``--help``).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence

import yaml

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError,
                                                NotADirectoryError, PermissionError, yaml.YAMLError)


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (YAML and JSON errors span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def fail(prog: str, exc: BaseException, debug: bool = False) -> int:
    """Report a user error as ``<prog>: error: <message>`` and return exit code 2; with ``debug``, re-raise it."""
    if debug:
        raise exc
    print(f"{prog}: error: {one_line(exc)}", file=sys.stderr, flush=True)
    return 2


def add_debug(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (default: one line)")
    return parser


def command(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a command's ``main(argv) -> int`` so that a user error becomes one line and exit code 2."""

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(argv: Sequence[str] | None = None) -> int:
            debug = "--debug" in (sys.argv[1:] if argv is None else argv)
            try:
                return main(argv)
            except USER_ERRORS as exc:
                return fail(prog, exc, debug)

        return run

    return wrap
