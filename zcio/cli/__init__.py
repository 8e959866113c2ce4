"""The ``zcio`` command (also ``python -m zcio``): a thin client of the API.

One module per command, each with ``add_arguments(parser)`` and
``run(args) -> int``; beside them what the commands share: the parser and
the types of its numbers (:mod:`.options`), one-line errors (:mod:`.errors`),
the event loop choice (:mod:`.loops`), fd limits (:mod:`.limits`), the
progress bar (:mod:`.progress`) and the charts (:mod:`.plots`). Nothing in
the library imports this package.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Protocol

from .. import __version__
from . import bench, copy, info, proxy, serve
from .options import Parser

__all__ = ["build_parser", "main"]


class Command(Protocol):
    """What a command module offers."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


_COMMANDS: list[tuple[str, Command, str]] = [
    ("bench", bench, "measure zcio's paths against the stdlib's (the main job)"),
    ("copy", copy, "copy SRC to DST by the cheapest kernel path ('-' is stdin/stdout)"),
    ("serve", serve, "serve DIR over HTTP/1.1 (GET/HEAD, Range, keep-alive) with sendfile"),
    ("proxy", proxy, "relay TCP connections from LISTEN to TARGET (copy or splice, in C)"),
    ("info", info, "what this kernel and process can do (features())"),
]


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; each sets ``args.run``."""
    p = Parser(
        prog="zcio",
        description="Linux zero-copy I/O toolkit: benchmarks, copying, serving, relaying and a kernel feature report.",
    )
    p.add_argument("--version", action="version", version=f"zcio {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, command, text in _COMMANDS:
        c = sub.add_parser(name, help=text, description=text)
        command.add_arguments(c)
        c.set_defaults(run=command.run)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 done, 1 failed (one line on stderr), 2 bad usage,
        130 interrupted.
    """
    args = build_parser().parse_args(argv)
    try:
        status: int = args.run(args)
        sys.stdout.flush()
    except KeyboardInterrupt:  # where a command has nothing more to say about it
        print(f"zcio {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout's reader left (``zcio info | head -1``): say nothing more, and
        # keep the interpreter from failing again as it flushes at exit.
        with contextlib.suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return 1
    return status
