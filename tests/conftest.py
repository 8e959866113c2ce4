"""Shared fixtures: fd-leak accounting around every test, and fd factories."""
from __future__ import annotations

import gc
import os
import socket
from typing import Callable, Iterator, List, Tuple

import pytest


def _warm_up_event_loops() -> None:
    """uvloop opens a process-wide pipe with its first loop and keeps it; open
    it before any test so that it is not counted as a leak."""
    try:
        import asyncio

        import uvloop
    except ImportError:
        return
    loop = uvloop.new_event_loop()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()


_warm_up_event_loops()


def _open_fds() -> List[Tuple[int, str]]:
    fds = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own fd, closed by now
            continue
        fds.append((int(name), target))
    return sorted(fds)


def _pooled_fds() -> set:
    """fds of the free pipes that live pools keep for reuse (bounded, not leaks)."""
    from zcio import pipes

    fds = set()
    for pool in list(pipes._pools):
        for p in list(pool._free):
            fds.update((p.r, p.w))
    return fds


@pytest.fixture(autouse=True)
def no_fd_leaks() -> Iterator[None]:
    """Fail a test that leaves an fd open that was not open before it, or a
    pooled pipe checked out."""
    from zcio import pipes

    gc.collect()
    before = set(_open_fds())
    yield
    gc.collect()
    pooled = _pooled_fds()
    leaked = sorted(fd for fd in set(_open_fds()) - before if fd[0] not in pooled)
    assert not leaked, f"file descriptors leaked: {leaked}"
    in_use = {repr(p): p.in_use for p in list(pipes._pools) if p.in_use}
    assert not in_use, f"pooled pipes not returned: {in_use}"


@pytest.fixture
def pipe() -> Iterator[Callable[[], Tuple[int, int]]]:
    """Factory of pipes (r, w) that are closed after the test."""
    made: List[int] = []

    def make() -> Tuple[int, int]:
        r, w = os.pipe()
        made.extend((r, w))
        return r, w

    yield make
    for fd in made:
        try:
            os.close(fd)
        except OSError:
            pass


@pytest.fixture
def tcp_pair() -> Iterator[Callable[..., Tuple[socket.socket, socket.socket]]]:
    """Factory of connected TCP sockets over loopback (client, server)."""
    made: List[socket.socket] = []

    def make(family: int = socket.AF_INET) -> Tuple[socket.socket, socket.socket]:
        host = "127.0.0.1" if family == socket.AF_INET else "::1"
        with socket.socket(family, socket.SOCK_STREAM) as listener:
            listener.bind((host, 0))
            listener.listen(1)
            client = socket.create_connection(listener.getsockname()[:2], timeout=10)
            server, _ = listener.accept()
        server.settimeout(10)
        made.extend((client, server))
        return client, server

    yield make
    for s in made:
        s.close()


@pytest.fixture
def socketpair() -> Iterator[Callable[[], Tuple[socket.socket, socket.socket]]]:
    made: List[socket.socket] = []

    def make() -> Tuple[socket.socket, socket.socket]:
        a, b = socket.socketpair()
        made.extend((a, b))
        return a, b

    yield make
    for s in made:
        s.close()
