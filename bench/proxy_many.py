"""1,000 concurrent connections through ``zcio proxy``: pipes and fds stay bounded.

    python bench/proxy_many.py [--connections 1000] [--uvloop]

Starts ``zcio proxy`` in front of a sink that reads every connection to EOF
and answers one byte. Opens N client connections, has each send 256 KiB
(while all N are open), samples the proxy process's open fds from
/proc/PID/fd at its peak, then closes them and checks every answer. The
check: beyond what the idle proxy holds (its listener, the event loop's own
fds), at most 2 sockets per connection and no more pipes than its pool's
bound (``max_pipes``) allows -- the rest of
the connections relay by copying, which zcio.stats() counts as
"splice_via_pipe:pool_exhausted".
"""
from __future__ import annotations

import argparse
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from typing import List, Optional

import zcio

SINK = r"""
import socket, threading
ls = socket.create_server(("127.0.0.1", 0), backlog=4096)
print(ls.getsockname()[1], flush=True)
def serve(c):
    with c:
        while c.recv(1 << 20):
            pass
        c.sendall(b"k")
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def fd_kinds(pid: int) -> "tuple[int, int, int]":
    """(sockets, pipes, all) open in a process, stdin/stdout/stderr aside."""
    socks = pipes = total = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        if name in ("0", "1", "2"):
            continue
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        total += 1
        socks += target.startswith("socket:")
        pipes += target.startswith("pipe:")
    return socks, pipes, total


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--uvloop", action="store_true")
    args = ap.parse_args(argv)
    n = args.connections
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None
    target = int(sink.stdout.readline())
    flags = ["--uvloop"] if args.uvloop else []
    proxy = subprocess.Popen(
        [sys.executable, "-m", "zcio", "proxy", *flags, "--max-connections", str(n + 10), "0", str(target)],
        stderr=subprocess.PIPE, text=True,
    )
    assert proxy.stderr is not None
    port = int(proxy.stderr.readline().split()[2].rsplit(":", 1)[1])
    max_pipes = zcio.PipePool().max_pipes  # the same sizing the proxy's default pool uses
    idle_socks, idle_pipes, _ = fd_kinds(proxy.pid)  # its listener and the loop's own
    clients: List[socket.socket] = []
    peak = (0, 0, 0)
    try:
        for _ in range(n):
            clients.append(socket.create_connection(("127.0.0.1", port), timeout=60))
        data = os.urandom(256 << 10)
        sel = selectors.DefaultSelector()
        views = {}
        for c in clients:
            c.setblocking(False)
            views[c] = memoryview(data)
            sel.register(c, selectors.EVENT_WRITE)
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                s = fd_kinds(proxy.pid)
                peak = max(peak, s, key=lambda t: t[2])
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        while views:
            for key, _ in sel.select(60):
                c = key.fileobj
                try:
                    sent = c.send(views[c])  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                views[c] = views[c][sent:]  # type: ignore[index]
                if not views[c]:  # type: ignore[index]
                    del views[c]  # type: ignore[arg-type]
                    sel.unregister(c)
                    c.shutdown(socket.SHUT_WR)  # type: ignore[union-attr]
        answers = 0
        for c in clients:
            c.setblocking(True)
            answers += c.recv(1) == b"k"
        stop.set()
        sampler.join()
    finally:
        for c in clients:
            c.close()
        proxy.terminate()
        proxy.wait(30)
        sink.kill()
        sink.wait()
    socks, pipes, total = peak
    print(f"{n} connections through zcio proxy{' (uvloop)' if args.uvloop else ''}: {answers} answered")
    print(f"proxy's peak: {total} fds = {socks} sockets + {pipes} pipe ends + {total - socks - pipes} other")
    print(f"idle: {idle_socks} sockets, {idle_pipes} pipe ends (listener, the loop's own)")
    print(f"bounds: sockets <= idle + 2 x {n}, pipe ends <= idle + 2 x max_pipes ({max_pipes})")
    ok = answers == n and socks <= idle_socks + 2 * n and pipes <= idle_pipes + 2 * max_pipes
    print("within bounds" if ok else "NOT within bounds")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
