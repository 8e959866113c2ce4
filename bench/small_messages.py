"""Small messages and short connections through ``zcio proxy``, beside HAProxy.

    python bench/small_messages.py [--install] [--quick] [--rounds N]
                                   [--requests N] [--connections N] [--json]

Every relay under test is a separate process in front of the same targets,
measured the same way: the load's requests per second, and the relay
process's CPU seconds per request (utime + stime from /proc/PID/stat, all
its threads). Contenders run interleaved (A B C, then C B A, ...); the table
gives medians and ratios to HAProxy from the same run.

Loads (50 concurrent connections each):
- ``redis -d 64`` / ``-d 512``: ``redis-benchmark -t set,get`` through the
  relay to a redis-server (request/response of 64-512 bytes);
- ``redis -d 64 -P 16``: the same, pipelined 16 deep;
- ``connections``: ``ab`` short connections (one request each, no
  keep-alive) through the relay to an HTTP responder (HAProxy ``mode http``
  answering itself, so the responder is C and the same for everyone).

Without redis-benchmark (or ab) a bounded Python client and echo server
stand in, so the relays' CPU per request is still comparable. --install
fetches haproxy, redis and ab from Debian's packages (apt-get).

Relays: HAProxy 2.6 ``mode tcp`` (one thread; and two), ``zcio proxy``
(the hub, one engine thread; and ``--threads 2``), and with --asyncio
``zcio proxy --engine asyncio`` (the event-loop relay it replaced).
"""
from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple

from _peers import cpu_seconds, free_port, install, wait_port

HAPROXY_TCP = """
global
    nbthread {threads}
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend relay
    bind 127.0.0.1:{port}
    default_backend target
backend target
    server t1 127.0.0.1:{target}
"""

HAPROXY_HTTP_RESPONDER = """
global
    nbthread 1
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend web
    bind 127.0.0.1:{port}
    http-request return status 200 content-type text/plain string "ok"
"""

# Stand-ins when redis or ab is missing: an echo server (bounded by its
# clients) and an HTTP responder that answers and closes.
PY_SERVER = r"""
import selectors, socket, sys
mode, port = sys.argv[1], int(sys.argv[2])
ls = socket.create_server(("127.0.0.1", port), backlog=4096)
ls.setblocking(False)
sel = selectors.DefaultSelector()
sel.register(ls, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        s = key.fileobj
        if s is ls:
            try:
                c, _ = ls.accept()
            except BlockingIOError:
                continue
            c.setblocking(False)
            sel.register(c, selectors.EVENT_READ)
            continue
        try:
            data = s.recv(65536)
        except BlockingIOError:
            continue
        except ConnectionError:
            data = b""
        if not data:
            sel.unregister(s); s.close(); continue
        if mode == "echo":
            s.sendall(data)
        else:
            s.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"); sel.unregister(s); s.close()
"""


class Proc:
    """A process this bench started (stopped by its PID at the end)."""

    def __init__(self, argv: List[str], port: int, env: Optional[Dict[str, str]] = None) -> None:
        self.port = port
        self.p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        wait_port(port, self.p)

    @property
    def pid(self) -> int:
        return self.p.pid

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def haproxy(tmp: str, name: str, text: str) -> Optional[List[str]]:
    exe = shutil.which("haproxy")
    if exe is None:
        return None
    cfg = os.path.join(tmp, name + ".cfg")
    with open(cfg, "w") as f:
        f.write(text)
    return [exe, "-db", "-f", cfg]


# ------------------------------------------------------------------ loads


def redis_load(port: int, requests: int, conns: int, size: int, pipeline: int) -> Tuple[int, float]:
    """(requests done, seconds) of redis-benchmark -t set,get through port."""
    argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(conns), "-n", str(requests),
            "-t", "set,get", "-d", str(size), "-P", str(pipeline), "--csv"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True).stdout
    seconds = 0.0
    done = 0
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if cells and cells[0] in ("SET", "GET"):
            seconds += requests / float(cells[1])
            done += requests
    if done != 2 * requests:
        raise RuntimeError(f"redis-benchmark said: {out!r}")
    return done, seconds


def ab_load(port: int, requests: int, conns: int) -> Tuple[int, float]:
    argv = ["ab", "-q", "-n", str(requests), "-c", str(conns), f"http://127.0.0.1:{port}/"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=True).stdout
    fields = {}
    for line in out.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            fields[k.strip()] = v.strip()
    done = int(fields["Complete requests"]) - int(fields["Failed requests"])
    if done != requests or fields.get("Non-2xx responses"):
        raise RuntimeError(f"ab: {done} of {requests} requests answered: {out!r}")
    return done, float(fields["Time taken for tests"].split()[0])


def py_echo_load(port: int, requests: int, conns: int, size: int, pipeline: int) -> Tuple[int, float]:
    """Bounded Python client: conns connections, each sending ``pipeline``
    messages of ``size`` bytes and waiting for their echo, until done."""
    sel = selectors.DefaultSelector()
    msg = b"m" * size * pipeline
    left = requests
    state: Dict[socket.socket, int] = {}
    t0 = time.perf_counter()
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        s.sendall(msg)
        left -= pipeline
        state[s] = len(msg)
    done = 0
    deadline = time.monotonic() + 600
    while state:
        assert time.monotonic() < deadline, "echo load did not finish"
        for key, _ in sel.select(1.0):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            state[s] -= len(s.recv(65536))
            if state[s] == 0:
                done += pipeline
                if left > 0:
                    s.sendall(msg)
                    left -= pipeline
                    state[s] = len(msg)
                else:
                    sel.unregister(s)
                    del state[s]
                    s.close()
    sel.close()
    return done, time.perf_counter() - t0


def py_conn_load(port: int, requests: int, conns: int) -> Tuple[int, float]:
    """Short connections, ``conns`` at once: connect, send a request, read
    the answer to EOF, close."""
    sel = selectors.DefaultSelector()
    started = done = 0
    t0 = time.perf_counter()

    def start() -> None:
        nonlocal started
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        sel.register(s, selectors.EVENT_WRITE)
        started += 1

    for _ in range(min(conns, requests)):
        start()
    deadline = time.monotonic() + 600
    while done < requests:
        assert time.monotonic() < deadline, "connection load did not finish"
        for key, ev in sel.select(1.0):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            if ev & selectors.EVENT_WRITE:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                sel.modify(s, selectors.EVENT_READ)
            elif not s.recv(65536):
                sel.unregister(s)
                s.close()
                done += 1
                if started < requests:
                    start()
    sel.close()
    return done, time.perf_counter() - t0


# ------------------------------------------------------------------ main


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--install", action="store_true", help="apt-get install haproxy redis-server redis-tools apache2-utils")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--requests", type=int, default=None,
                    help="requests per redis test (default 100000, pipelined 5x; quick 20000)")
    ap.add_argument("--connections", type=int, default=None, help="short connections per round (default 20000; quick 3000)")
    ap.add_argument("--asyncio", action="store_true", help="also measure 'zcio proxy --engine asyncio'")
    ap.add_argument("--json", action="store_true", help="print the medians as JSON")
    args = ap.parse_args(argv)
    if args.install:
        install(["haproxy", "redis-server", "redis-tools", "apache2-utils"])
    rounds = args.rounds or (3 if args.quick else 7)
    # CPU comes in 10 ms ticks: enough work per sample for a ~1% resolution.
    nreq = args.requests or (20000 if args.quick else 100000)
    nconn = args.connections or (3000 if args.quick else 20000)
    conc = 50
    have_redis = shutil.which("redis-server") and shutil.which("redis-benchmark")
    have_ab = shutil.which("ab") is not None
    if not shutil.which("haproxy"):
        print("haproxy: not installed, the peer is skipped (run with --install)", file=sys.stderr)
    load1 = os.getloadavg()
    procs: List[Proc] = []
    with tempfile.TemporaryDirectory(prefix="zcio-small-") as tmp:
        try:
            # Targets.
            if have_redis:
                port = free_port()
                procs.append(Proc(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                   "--appendonly", "no", "--dir", tmp], port))
                echo_target = port
            else:
                print("redis: not installed, a Python echo client and server stand in", file=sys.stderr)
                port = free_port()
                procs.append(Proc([sys.executable, "-c", PY_SERVER, "echo", str(port)], port))
                echo_target = port
            port = free_port()
            web = haproxy(tmp, "web", HAPROXY_HTTP_RESPONDER.format(port=port))
            procs.append(Proc(web or [sys.executable, "-c", PY_SERVER, "http", str(port)], port))
            web_target = port
            # Relays: one process per (contender, target).
            contenders: Dict[str, Callable[[int, int], Optional[List[str]]]] = {}
            for n in (1, 2):
                contenders[f"haproxy ({n} thread{'s' if n > 1 else ''})"] = (
                    lambda port, target, n=n: haproxy(tmp, f"tcp{port}", HAPROXY_TCP.format(threads=n, port=port, target=target)))
            for n in (1, 2):
                contenders[f"zcio proxy --threads {n}"] = (
                    lambda port, target, n=n: [sys.executable, "-m", "zcio", "proxy", "--threads", str(n),
                                               "--max-connections", "5000", str(port), str(target)])
            if args.asyncio:
                contenders["zcio proxy --engine asyncio"] = (
                    lambda port, target: [sys.executable, "-m", "zcio", "proxy", "--engine", "asyncio",
                                          "--max-connections", "5000", str(port), str(target)])
            relays: Dict[Tuple[str, str], Proc] = {}
            for name, make in contenders.items():
                for kind, target in (("echo", echo_target), ("web", web_target)):
                    port = free_port()
                    cmd = make(port, target)
                    if cmd is None:
                        break
                    relays[(name, kind)] = Proc(cmd, port)
                    procs.append(relays[(name, kind)])
            names = sorted({name for name, _ in relays}, key=list(contenders).index)

            loads: List[Tuple[str, str, Callable[[int], Tuple[int, float]]]] = []
            for size, pipe in ((64, 1), (512, 1), (64, 16)):
                label = f"redis -d {size}" + (f" -P {pipe}" if pipe > 1 else "") if have_redis else \
                        f"echo {size} B" + (f" x{pipe}" if pipe > 1 else "")
                n = nreq * (5 if pipe > 1 else 1)
                if have_redis:
                    fn = (lambda port, size=size, pipe=pipe, n=n: redis_load(port, n, conc, size, pipe))
                else:
                    fn = (lambda port, size=size, pipe=pipe, n=n: py_echo_load(port, n, conc, size, pipe))
                loads.append((label, "echo", fn))
            loads.append(("connections" + (" (ab)" if have_ab else " (Python client)"), "web",
                          (lambda port: ab_load(port, nconn, conc)) if have_ab else
                          (lambda port: py_conn_load(port, nconn, conc))))

            samples: Dict[Tuple[str, str], List[Tuple[float, float]]] = {}
            for r in range(rounds):
                for label, kind, fn in loads:
                    order = names if r % 2 == 0 else names[::-1]
                    for name in order:
                        proc = relays[(name, kind)]
                        c0 = cpu_seconds(proc.pid)
                        done, seconds = fn(proc.port)
                        time.sleep(0.05)  # the relay's last closes
                        c1 = cpu_seconds(proc.pid)
                        s = (done / seconds, (c1 - c0) / done * 1e6)
                        samples.setdefault((label, name), []).append(s)
                        print(f"round {r + 1}: {label}: {name}: {s[0]:,.0f} req/s, {s[1]:.2f} us CPU/req",
                              file=sys.stderr)
        finally:
            for p in procs:
                p.stop()
    load2 = os.getloadavg()
    med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in samples.items()}
    if args.json:
        print(json.dumps({f"{k[0]} | {k[1]}": {"req_per_s": v[0], "cpu_us_per_req": v[1]} for k, v in med.items()},
                         indent=2))
        return 0
    print(f"Small messages through a relay: {conc} connections, {rounds} interleaved rounds, medians; "
          f"CPU of the relay process. Load average {load1[0]:.1f} before, {load2[0]:.1f} after "
          f"({os.cpu_count()} CPUs){' -- a busy machine: trust the CPU column' if max(load1[0], load2[0]) > 1 else ''}.")
    peer = names[0] if names[0].startswith("haproxy") else None
    for label, _, _ in loads:
        print(f"\n{label}")
        print(f"  {'relay':30} {'req/s':>10} {'CPU us/req':>11} {'req/s vs haproxy':>17} {'CPU vs haproxy':>15}")
        for name in names:
            rps, cpu = med[(label, name)]
            if peer:
                prps, pcpu = med[(label, peer)]
                ratios = f"{rps / prps:17.2f} {cpu / pcpu:15.2f}"
            else:
                ratios = f"{'-':>17} {'-':>15}"
            print(f"  {name:30} {rps:10,.0f} {cpu:11.2f} {ratios}")
        one, two = med.get((label, "zcio proxy --threads 1")), med.get((label, "zcio proxy --threads 2"))
        if one and two:
            print(f"  zcio proxy: 2 engine threads / 1: {two[0] / one[0]:.2f}x the req/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
