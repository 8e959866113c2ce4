"""The command line's parser and the argparse types of its numbers and paths.

Every number a user types is checked by its type here, so a bad value ends
in one line on stderr and exit status 2 before anything runs.
"""
from __future__ import annotations

import argparse
import math
import os
from typing import NoReturn

__all__ = ["Parser", "byte_count", "output_file", "port", "positive_int", "seconds", "timeout"]

_OFF_MAX = (1 << 63) - 1  # off_t


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``prog: message``), exit 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``message`` on one line with a pointer to ``--help``, and exit 2."""
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def byte_count(text: str) -> int:
    """A count of bytes or a file offset: a whole number from 0 to 2**63-1."""
    n = _int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    if n > _OFF_MAX:
        raise argparse.ArgumentTypeError(f"must be at most 2**63-1, got {text}")
    return n


def positive_int(text: str) -> int:
    """A whole number >= 1 (rounds, connections)."""
    n = _int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text}")
    return n


def port(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535."""
    n = _int(text)
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port from 0 to 65535, got {text}")
    return n


def seconds(text: str) -> float:
    """A duration in seconds: a finite number >= 0."""
    try:
        s = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(s) and s >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return s


def timeout(text: str) -> float:
    """A time limit in seconds: a finite number > 0."""
    s = seconds(text)
    if s == 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return s


def output_file(text: str) -> str:
    """A file the command will write later: its directory must exist and be
    writable, and the path must not be a directory, so that a mistake shows
    before a long run instead of after it."""
    if not text:
        raise argparse.ArgumentTypeError("empty file name")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory")
    parent = os.path.dirname(text) or "."
    if not os.path.isdir(parent):
        raise argparse.ArgumentTypeError(f"no such directory: {parent!r}")
    target = text if os.path.exists(text) else parent
    if not os.access(target, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write to {target!r}: permission denied")
    return text

