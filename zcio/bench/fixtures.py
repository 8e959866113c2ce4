"""What the byte-moving cases (and the scripts under ``bench/``) stand on:
generated data files, fresh memory, and the fixed receiving processes.

Receivers are fixed and identical for every contender of a case, and they do
not copy: a sink process splices what it receives to /dev/null and answers
one byte per connection once it saw EOF, so a timed run ends when the bytes
have really arrived. Only the moving thread's CPU is counted.
"""
from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys

from .._binding import lib

__all__ = ["Sink", "Source", "data_size", "finish", "make_file", "set_pipe_size", "spawn_pipe_sink", "touch"]

_SINK = r"""
import os, socket, sys, fcntl
splice = getattr(os, "splice", None) or __import__("zcio").splice  # os.splice is 3.10+
ls = socket.create_server(("127.0.0.1", 0))
print(ls.getsockname()[1], flush=True)
null = os.open(os.devnull, os.O_WRONLY)
r, w = os.pipe()
try:
    fcntl.fcntl(w, 1031, 1 << 20)
except OSError:
    pass
while True:
    c, _ = ls.accept()
    while True:
        k = splice(c.fileno(), w, 1 << 20)
        if k == 0:
            break
        while k:
            k -= splice(r, null, k)
    c.sendall(b"k")
    c.close()
"""

# Sends `size` bytes of a file to 127.0.0.1:PORT each time a line arrives on stdin.
_SOURCE = r"""
import os, socket, sys
path, port = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY)
size = os.fstat(fd).st_size
for line in sys.stdin:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendfile(os.fdopen(os.dup(fd), "rb"))
    s.close()
    print("sent", flush=True)
"""

# Splices a pipe (the fd in argv[1]) to /dev/null until EOF.
_PIPE_SINK = r"""
import os, sys
splice = getattr(os, "splice", None) or __import__("zcio").splice  # os.splice is 3.10+
fd = int(sys.argv[1])
null = os.open(os.devnull, os.O_WRONLY)
while splice(fd, null, 1 << 20):
    pass
"""


def touch() -> None:
    """Touch fresh memory: a VM may have handed idle pages back to its host,
    and the first touch afterwards is slow for whichever contender comes next."""
    bytearray(128 << 20)


def make_file(tmp: str, name: str, size: int) -> str:
    """``tmp/name`` holding ``size`` random bytes (kept if it already has that size).

    Returns:
        The file's path.
    """
    path = os.path.join(tmp, name)
    if not os.path.exists(path) or os.path.getsize(path) != size:
        block = os.urandom(1 << 20)
        with open(path, "wb") as f:
            f.writelines(block for _ in range(size >> 20))
            f.write(block[: size & ((1 << 20) - 1)])
    return path


def data_size(quick: bool) -> int:
    """Bytes a byte-moving case moves per sample."""
    return (128 << 20) if quick else (512 << 20)


def set_pipe_size(fd: int, size: int = 1 << 20) -> None:
    """Grow a pipe to ``size`` bytes where the system allows it (else leave it)."""
    try:
        fcntl.fcntl(fd, lib.F_SETPIPE_SZ, size)
    except OSError:
        pass


class Sink:
    """The fixed receiving process: splices each connection to /dev/null."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _SINK], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def connect(self) -> socket.socket:
        """A new connection to the sink."""
        return socket.create_connection(("127.0.0.1", self.port))

    def close(self) -> None:
        """Stop the process."""
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


def finish(sock: socket.socket) -> None:
    """Half-close, then wait for the sink's acknowledgement of EOF."""
    sock.shutdown(socket.SHUT_WR)
    if sock.recv(1) != b"k":
        raise RuntimeError("the benchmark sink did not acknowledge")
    sock.close()


class Source:
    """A process that sends the file at ``path`` to 127.0.0.1:``port`` (by
    ``socket.sendfile``) each time :meth:`go` is called."""

    def __init__(self, path: str, port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SOURCE, path, str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )

    def go(self) -> None:
        """Start sending one copy of the file (on a new connection)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def wait_sent(self) -> None:
        """Wait until the copy started by :meth:`go` has been sent."""
        assert self.proc.stdout is not None
        self.proc.stdout.readline()

    def close(self) -> None:
        """End the process (it exits at the end of its input)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait()
        self.proc.stdout.close()


def spawn_pipe_sink(r: int) -> subprocess.Popen[bytes]:
    """A process that splices the pipe's read end ``r`` to /dev/null until EOF."""
    return subprocess.Popen([sys.executable, "-c", _PIPE_SINK, str(r)], pass_fds=(r,))
