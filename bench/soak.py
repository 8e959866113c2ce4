"""Memory and fds across a long transfer: RSS and the fd count must stay flat.

    python bench/soak.py [--gib 10]

Relays G GiB from a source process, through ``zcio.splice_pipe`` in this
process (socket -> pooled pipe -> socket), to a sink process, sampling this
process's RSS and open fd count from the progress callback every 256 MiB.
Prints the samples' spread; the check is that RSS moves by no more than 2 MiB
and the fd count not at all once the transfer is running.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from typing import List, Optional

import zcio
from zcio import bench

SOURCE = r"""
import os, socket, sys
port, total = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
zero = os.open("/dev/zero", os.O_RDONLY)
r, w = os.pipe()
left = total
while left:
    n = os.splice(zero, w, min(left, 1 << 16))
    while n:
        k = os.splice(r, s.fileno(), n)
        n -= k
        left -= k
s.close()
"""


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gib", type=float, default=10.0)
    args = ap.parse_args(argv)
    total = int(args.gib * (1 << 30))
    sink = bench.fixtures.Sink()
    listener = socket.create_server(("127.0.0.1", 0))
    src = subprocess.Popen([sys.executable, "-c", SOURCE, str(listener.getsockname()[1]), str(total)])
    conn, _ = listener.accept()
    out = sink.connect()
    samples: List["tuple[int, int, int]"] = []
    step = 256 << 20
    nxt = [step]

    def progress(done: int) -> None:
        if done >= nxt[0] or done == total:
            samples.append((done, rss(), fds()))
            nxt[0] = done + step

    try:
        n = zcio.splice_pipe(conn, out, progress=progress)
        bench.fixtures.finish(out)
    finally:
        conn.close()
        listener.close()
        src.wait()
        sink.close()
    assert n == total, (n, total)
    steady = samples[1:]  # after the first slice: pool pipe and buffers exist
    rss_spread = max(s[1] for s in steady) - min(s[1] for s in steady)
    fd_spread = max(s[2] for s in steady) - min(s[2] for s in steady)
    print(f"moved {n / (1 << 30):.1f} GiB in {len(samples)} samples")
    print(f"RSS: first {samples[0][1] / (1 << 20):.1f} MiB, spread after that {rss_spread / (1 << 20):.2f} MiB")
    print(f"fds: {samples[0][2]}, spread {fd_spread}")
    ok = rss_spread <= 2 << 20 and fd_spread == 0
    print("flat" if ok else "NOT flat")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
