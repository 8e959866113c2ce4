"""What the peer benchmarks in bench/ share: ports, process CPU, installs, a
server process, an HTTP download into /dev/null and the interleaved rounds of
downloads that measure a server's CPU per GiB."""
from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

CLK = os.sysconf("SC_CLK_TCK")
GiB = 1 << 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads included (CLK_TCK steps)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def wait_port(port: int, proc: "Optional[subprocess.Popen[bytes]]" = None, timeout: float = 20.0) -> None:
    """Wait until something accepts on 127.0.0.1:port (and ``proc`` lives)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def install(packages: Sequence[str]) -> None:
    """Install Debian packages (the peers measured beside zcio)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=False, env=env)


def download(port: int, path: str, null: int, pipe: Tuple[int, int]) -> int:
    """GET ``path`` and splice the body to /dev/null; returns the body size."""
    r, w = pipe
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                raise RuntimeError(f"connection closed in the head: {buf!r}")
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"unexpected answer: {head[:200]!r}")
        m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.I)
        if m is None:
            raise RuntimeError("no Content-Length")
        length = int(m.group(1))
        got = len(body)
        fd = s.fileno()
        while got < length:
            n = os.splice(fd, w, min(1 << 20, length - got))
            if n == 0:
                break
            got += n
            while n:
                n -= os.splice(r, null, n)
        if got != length:
            raise RuntimeError(f"short body: {got} of {length}")
        return got


class PeerProcess:
    """A server started for a benchmark; ``pid`` is the process doing the work
    (for nginx, its one worker). ``close()`` stops it by ``stop_signal``."""

    def __init__(self, label: str, argv: List[str], port: int, *, cwd: Optional[str] = None,
                 env: Optional[Dict[str, str]] = None, preexec_fn: Optional[Callable[[], None]] = None,
                 worker_of_master: bool = False, stop_signal: int = signal.SIGTERM) -> None:
        self.label = label
        self.port = port
        self.stop_signal = stop_signal
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=preexec_fn)
        wait_port(port, self.proc)
        self.pid = self._only_child() if worker_of_master else self.proc.pid

    def _only_child(self) -> int:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            kids: List[int] = []
            for task in os.listdir(f"/proc/{self.proc.pid}/task"):
                with open(f"/proc/{self.proc.pid}/task/{task}/children") as f:
                    kids += [int(k) for k in f.read().split()]
            if len(kids) == 1:
                return kids[0]
            time.sleep(0.05)
        raise RuntimeError(f"{self.label}: expected one worker process")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def splice_sink() -> Tuple[int, Tuple[int, int]]:
    """/dev/null and a 1 MiB pipe to splice downloads into (close all three)."""
    null = os.open(os.devnull, os.O_WRONLY)
    r, w = os.pipe()
    try:
        fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ
    except OSError:
        pass
    return null, (r, w)


def download_rounds(servers: Mapping[str, Any], path: str, rounds: int, touch: Callable[[], None],
                    repeat: int = 1) -> Dict[str, List[Tuple[float, float]]]:
    """GET ``path`` from each server (objects with ``.port`` and ``.pid``),
    ``repeat`` times a sample, in rounds whose order alternates; returns per
    server the samples (GiB/s, server CPU s/GiB). One warm-up download each."""
    null, (r, w) = splice_sink()
    samples: Dict[str, List[Tuple[float, float]]] = {k: [] for k in servers}
    try:
        for s in servers.values():  # warm the page cache and each server
            download(s.port, path, null, (r, w))
        for rnd in range(rounds):
            order = list(servers.items())
            if rnd % 2:
                order.reverse()
            for label, s in order:
                touch()
                c0, t0 = cpu_seconds(s.pid), time.perf_counter()
                got = sum(download(s.port, path, null, (r, w)) for _ in range(repeat))
                t1 = time.perf_counter()
                time.sleep(0.05)  # let the server finish its bookkeeping (close, log)
                c1 = cpu_seconds(s.pid)
                samples[label].append((got / (t1 - t0) / GiB, (c1 - c0) / (got / GiB)))
                print(f"round {rnd + 1}: {label}: {samples[label][-1][0]:.2f} GiB/s, "
                      f"{samples[label][-1][1]:.3f} CPU s/GiB", file=sys.stderr)
    finally:
        for fd in (null, r, w):
            os.close(fd)
    return samples
