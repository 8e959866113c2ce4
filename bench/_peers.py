"""What the peer benchmarks in bench/ share: ports, process CPU, installs, an
HTTP download into /dev/null."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from typing import Optional, Sequence, Tuple

CLK = os.sysconf("SC_CLK_TCK")


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
