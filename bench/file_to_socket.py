"""File -> socket at the floor: zcio's file->TCP paths beside nginx, Go and the stdlib.

    python bench/file_to_socket.py [--rounds N] [--gib G] [--pin split,same,none]
                                   [--only LABEL,...] [--compare DIR] [--install]

One G GiB file (default 1) is sent over loopback by each sender to one fixed
receiver -- this process, which sends a GET and splices the body from the
socket into /dev/null through a 1 MiB pipe (no copy), identical for every
sender. Each sender is its own process listening on 127.0.0.1 and answers any
request with an HTTP head and the whole file, then closes:

- nginx: one worker, ``sendfile on``, ``tcp_nopush on`` (Debian's default
  configuration: TCP_CORK around the response), ``sendfile_max_chunk`` left at
  its default (2m since 1.21.4); "nginx tcp_nopush off" is the same without
  the cork;
- Go: a raw TCP server whose ``io.Copy(conn, file)`` goes by sendfile
  through the netpoller (built at run time from the source below);
- socket.sendfile: ``sock.sendfile(file)`` on a blocking socket;
- zcio.splice_pipe: ``zcio.splice_pipe(file, sock)`` on a blocking socket;
- aio.sendfile (asyncio / uvloop): ``await zcio.aio.sendfile(sock, file)``;
- transport_sendfile (asyncio / uvloop): an asyncio streams server whose body
  goes by ``await zcio.aio.transport_sendfile(writer.transport, file)``
  (skipped where zcio has none);
- loop.sock_sendfile and loop.sendfile (asyncio): the stdlib loop's own, on a
  raw socket and on a streams transport, for reference.

``--compare DIR`` adds the zcio senders once more, importing zcio from DIR
(another checkout with its extension built in place, e.g. an older commit):
before and after in one run.

Senders run interleaved, round by round (the order reversed every other
round), with fresh memory touched before each repetition. The table gives
medians and the spread (min-max) of the sending process's CPU seconds per GiB
-- all its threads, from /proc/PID/task/*/schedstat (nanoseconds) -- with
its user/system split (/proc/PID/stat, tick-sampled), its context switches
per GiB (voluntary/involuntary), the receiver's CPU per GiB, and throughput
(which swings far more than CPU on a shared machine).

Where the two ends run decides much of the bill: on loopback the sender's
system time includes the TCP receive work its softirqs do for the receiver,
and when the ends share a CPU they also take turns on it. ``--pin`` takes one
or more placements, each measured as its own table: ``split`` puts every
sender on the last CPU and the receiver on the first (as bench/serve_peers.py
does), ``same`` puts both on the last CPU, ``none`` leaves it to the
scheduler. The header names the TCP congestion control: with BBR (and no fq
qdisc on lo) TCP paces by timers, which costs both ends CPU whenever its
bandwidth estimate falls below what the CPUs could move.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Set, Tuple

from _peers import PeerProcess, download, free_port, install, splice_sink

GiB = 1 << 30

# A Python sender: answers each connection's request with a head and the file.
SENDER = r"""
import asyncio, os, socket, sys
mode, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % os.path.getsize(path)
ls = socket.create_server(("127.0.0.1", port), backlog=16)
import zcio, zcio.aio

if mode in ("socket.sendfile", "zcio.splice_pipe"):
    while True:
        c, _ = ls.accept()
        with c, open(path, "rb") as f:
            buf = d = b"?"
            while d and b"\r\n\r\n" not in buf:
                buf += (d := c.recv(4096))
            if not d:
                continue  # a probe that connected and left
            c.sendall(head)
            if mode == "socket.sendfile":
                c.sendfile(f)
            else:
                zcio.splice_pipe(f, c)

async def handle(reader, writer):  # asyncio streams: the body through the transport
    try:
        await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()  # a probe that connected and left
        return
    writer.write(head)
    with open(path, "rb") as f:
        if mode.startswith("transport_sendfile"):
            await zcio.aio.transport_sendfile(writer.transport, f)
        else:
            await asyncio.get_running_loop().sendfile(writer.transport, f)
    writer.close()
    await writer.wait_closed()

async def serve():
    loop = asyncio.get_running_loop()
    if mode.startswith(("transport_sendfile", "loop.sendfile")):
        server = await asyncio.start_server(handle, sock=ls)
        await server.serve_forever()
    ls.setblocking(False)
    while True:
        c, _ = await loop.sock_accept(ls)
        with c, open(path, "rb") as f:
            c.setblocking(False)
            buf = d = b"?"
            while d and b"\r\n\r\n" not in buf:
                buf += (d := await loop.sock_recv(c, 4096))
            if not d:
                continue  # a probe that connected and left
            await loop.sock_sendall(c, head)
            if mode.startswith("aio.sendfile"):
                await zcio.aio.sendfile(c, f)
            else:
                await loop.sock_sendfile(c, f)

factory = None
if mode.endswith("uvloop"):
    import uvloop
    factory = uvloop.new_event_loop
with asyncio.Runner(loop_factory=factory) as runner:
    runner.run(serve())
"""
ZCIO_MODES = ["zcio.splice_pipe", "aio.sendfile asyncio", "aio.sendfile uvloop",
              "transport_sendfile asyncio", "transport_sendfile uvloop"]
PY_MODES = ["socket.sendfile", *ZCIO_MODES, "loop.sock_sendfile asyncio", "loop.sendfile asyncio"]

GO_SENDER = """package main

import ("bufio"; "fmt"; "io"; "net"; "os")

func serve(c net.Conn, path string) {
\tdefer c.Close()
\tr := bufio.NewReader(c)
\tfor { l, err := r.ReadString('\\n'); if err != nil { return }; if l == "\\r\\n" { break } }
\tf, err := os.Open(path); if err != nil { return }; defer f.Close()
\tst, _ := f.Stat()
\tfmt.Fprintf(c, "HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\nConnection: close\\r\\n\\r\\n", st.Size())
\tio.Copy(c, f) // *net.TCPConn.ReadFrom(*os.File): sendfile, non-blocking, netpoller
}

func main() {
\tln, err := net.Listen("tcp", "127.0.0.1:"+os.Args[1]); if err != nil { panic(err) }
\tfor { c, err := ln.Accept(); if err == nil { go serve(c, os.Args[2]) } }
}
"""

NGINX_CONF = """
{user}
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 64; }}
http {{
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush {nopush};
    keepalive_timeout 0;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


def place(pid: int, cpus: Set[int]) -> None:
    """Set the CPU affinity of every thread of a process."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:  # a thread that just ended
            pass


class Sender(PeerProcess):
    """A sender process; ``pid`` is the process doing the work (nginx's worker)."""


class Usage:
    """CPU nanoseconds (schedstat), user/system ticks and context switches of
    every thread of a process, read at one moment."""

    def __init__(self, pid: int) -> None:
        self.ns = self.vcsw = self.ivcsw = 0
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        self.utime, self.stime = int(fields[11]), int(fields[12])
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    self.ns += int(f.read().split()[0])
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    status = f.read()
            except FileNotFoundError:  # a thread that just ended
                continue
            for key, value in re.findall(r"^(voluntary|nonvoluntary)_ctxt_switches:\s*(\d+)", status, re.MULTILINE):
                if key == "voluntary":
                    self.vcsw += int(value)
                else:
                    self.ivcsw += int(value)


def start_senders(tmp: str, path: str, only: Optional[List[str]], compare: Optional[str] = None) -> Dict[str, Sender]:
    """Start every sender that ``only`` (substrings of labels) selects."""
    senders: Dict[str, Sender] = {}

    def want(label: str) -> bool:
        return only is None or any(o in label for o in only)

    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    for label, nopush in (("nginx", "on"), ("nginx tcp_nopush off", "off")):
        if nginx and want(label):
            port = free_port()
            prefix = os.path.join(tmp, f"nginx-{nopush}")
            os.mkdir(prefix)
            conf = os.path.join(prefix, "nginx.conf")
            with open(conf, "w") as f:
                f.write(NGINX_CONF.format(user="user root;" if os.geteuid() == 0 else "", tmp=prefix, port=port,
                                          root=os.path.dirname(path), nopush=nopush))
            senders[label] = Sender(label, [nginx, "-p", prefix, "-e", os.path.join(prefix, "nginx-error.log"),
                                            "-c", conf, "-g", "daemon off;"], port, worker_of_master=True)
        elif want(label):
            print("nginx: not installed, skipped (run with --install)", file=sys.stderr)
    go = shutil.which("go") or ("/usr/lib/go/bin/go" if os.path.exists("/usr/lib/go/bin/go") else None)
    if go and want("Go"):
        src, exe = os.path.join(tmp, "sender.go"), os.path.join(tmp, "gosender")
        with open(src, "w") as f:
            f.write(GO_SENDER)
        env = {**os.environ, "GOCACHE": os.path.join(tmp, "gocache"), "GOPATH": os.path.join(tmp, "gopath"),
               "GO111MODULE": "off"}
        subprocess.run([go, "build", "-o", exe, src], check=True, env=env)
        port = free_port()
        senders["Go io.Copy"] = Sender("Go io.Copy", [exe, str(port), path], port)
    elif want("Go"):
        print("go: not installed, skipped (run with --install)", file=sys.stderr)
    try:
        import uvloop
    except ImportError:
        print("uvloop: not installed, aio.sendfile uvloop skipped", file=sys.stderr)
        uvloop = None
    runs: List[Tuple[str, str, Optional[Dict[str, str]]]] = [(m, m, None) for m in PY_MODES]
    if compare is not None:
        name = os.path.basename(os.path.normpath(compare))
        env = {**os.environ, "PYTHONPATH": os.path.abspath(compare)}
        runs += [(f"{m} ({name})", m, env) for m in ZCIO_MODES]
    transports = {}  # env of a run -> whether its zcio has transport_sendfile
    for label, mode, env in runs:
        if not want(label) or (uvloop is None and mode.endswith("uvloop")):
            continue
        if mode.startswith("transport_sendfile"):
            key = None if env is None else env["PYTHONPATH"]
            if key not in transports:
                probe = [sys.executable, "-c", "import zcio.aio; zcio.aio.transport_sendfile"]
                transports[key] = subprocess.run(probe, env=env, capture_output=True, check=False).returncode == 0
            if not transports[key]:
                print(f"{label}: this zcio has no aio.transport_sendfile, skipped", file=sys.stderr)
                continue
        port = free_port()
        senders[label] = Sender(label, [sys.executable, "-c", SENDER, mode, str(port), path], port, env=env)
    return senders


Sample = Dict[str, float]


def measure(s: Sender, null: int, pipe: Tuple[int, int], touch: Callable[[], None]) -> Sample:
    """One download from ``s``: its CPU and context switches per GiB, and more."""
    touch()
    u0, r0, t0 = Usage(s.pid), time.thread_time(), time.perf_counter()
    got = download(s.port, "/big.bin", null, pipe)
    t1, r1 = time.perf_counter(), time.thread_time()
    time.sleep(0.05)  # the sender closes and returns to accept()
    u1 = Usage(s.pid)
    gib = got / GiB
    clk = os.sysconf("SC_CLK_TCK")
    return {
        "gibs": gib / (t1 - t0),
        "cpu": (u1.ns - u0.ns) / 1e9 / gib,
        "user": (u1.utime - u0.utime) / clk / gib,
        "sys": (u1.stime - u0.stime) / clk / gib,
        "vcsw": (u1.vcsw - u0.vcsw) / gib,
        "ivcsw": (u1.ivcsw - u0.ivcsw) / gib,
        "recv_cpu": (r1 - r0) / gib,
    }


def touch() -> None:
    """Touch fresh memory: a VM may have handed idle pages back to its host,
    and the first touch afterwards is slow for whichever sender comes next."""
    bytearray(128 << 20)


def make_file(path: str, size: int) -> None:
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        f.writelines(block for _ in range(size >> 20))
        f.write(block[: size & ((1 << 20) - 1)])


def placements(names: List[str]) -> List[Tuple[str, Optional[Set[int]], Optional[Set[int]]]]:
    """(description, sender CPUs, receiver CPUs) for each named placement."""
    cpus = sorted(os.sched_getaffinity(0))
    out: List[Tuple[str, Optional[Set[int]], Optional[Set[int]]]] = []
    for name in names:
        if name == "none" or len(cpus) < 2:
            out.append(("not pinned", None, None))
        elif name == "split":
            out.append((f"split: senders on CPU {cpus[-1]}, receiver on CPU {cpus[0]}", {cpus[-1]}, {cpus[0]}))
        elif name == "same":
            out.append((f"same: senders and receiver on CPU {cpus[-1]}", {cpus[-1]}, {cpus[-1]}))
        else:
            raise SystemExit(f"unknown placement {name!r} (split, same, none)")
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds per placement (default 7)")
    ap.add_argument("--gib", type=float, default=1.0, help="size of the file in GiB (default 1)")
    ap.add_argument("--pin", default="split",
                    help="placements, comma-separated: split (default), same, none; each gets its own table")
    ap.add_argument("--only", default=None, help="comma-separated substrings of the sender labels to run")
    ap.add_argument("--compare", default=None, metavar="DIR",
                    help="also run the zcio senders with zcio imported from DIR (a built checkout)")
    ap.add_argument("--install", action="store_true", help="apt-get install nginx and golang-go first")
    args = ap.parse_args(argv)
    if args.install:
        install(["nginx", "golang-go"])
    size = int(args.gib * GiB)
    only = args.only.split(",") if args.only else None
    where = placements(args.pin.split(","))
    everywhere = set(os.sched_getaffinity(0))
    null, (r, w) = splice_sink()
    tables: List[Tuple[str, Dict[str, List[Sample]]]] = []
    with tempfile.TemporaryDirectory(prefix="zcio-f2s-") as tmp:
        root = os.path.join(tmp, "www")
        os.mkdir(root)
        make_file(os.path.join(root, "big.bin"), size)
        senders = start_senders(tmp, os.path.join(root, "big.bin"), only, args.compare)
        try:
            for s in senders.values():  # warm the page cache and each sender
                download(s.port, "/big.bin", null, (r, w))
            for desc, sender_cpus, receiver_cpus in where:
                for s in senders.values():
                    place(s.pid, sender_cpus or everywhere)
                os.sched_setaffinity(0, receiver_cpus or everywhere)
                samples: Dict[str, List[Sample]] = {k: [] for k in senders}
                tables.append((desc, samples))
                for rnd in range(args.rounds):
                    order = list(senders.items())
                    if rnd % 2:
                        order.reverse()
                    for label, s in order:
                        x = measure(s, null, (r, w), touch)
                        samples[label].append(x)
                        print(f"{desc.split(':')[0]} round {rnd + 1}: {label:30} {x['gibs']:5.2f} GiB/s "
                              f"{x['cpu']:.3f} CPU s/GiB csw {x['vcsw']:.0f}/{x['ivcsw']:.0f} "
                              f"receiver {x['recv_cpu']:.3f}", file=sys.stderr)
        finally:
            for s in senders.values():
                s.close()
            for fd in (null, r, w):
                os.close(fd)
    for desc, samples in tables:
        report(samples, size, args.rounds, desc)
    return 0


def _sysctl(name: str) -> str:
    try:
        with open(f"/proc/sys/{name.replace('.', '/')}") as f:
            return f.read().strip()
    except OSError:
        return "?"


def report(samples: Dict[str, List[Sample]], size: int, rounds: int, placement: str) -> None:
    def med(label: str, key: str) -> float:
        return statistics.median(x[key] for x in samples[label])

    print(f"\nfile -> socket, one {size / GiB:g} GiB file into a fixed splicing receiver, loopback, "
          f"{os.cpu_count()} CPUs, {placement}; Linux {os.uname().release}, "
          f"tcp_congestion_control={_sysctl('net.ipv4.tcp_congestion_control')}; "
          f"{rounds} rounds interleaved, medians")
    print(f"{'sender':36} {'CPU s/GiB':>9} {'(min-max)':>13} {'vs nginx':>8} {'user':>6} {'sys':>6} "
          f"{'vcsw/GiB':>9} {'ivcsw/GiB':>9} {'recv s/GiB':>10} {'GiB/s':>6}")
    ref = med("nginx", "cpu") if "nginx" in samples else float("nan")
    for label, xs in samples.items():
        cpus = [x["cpu"] for x in xs]
        c = statistics.median(cpus)
        spread = f"({min(cpus):.3f}-{max(cpus):.3f})"
        print(f"{label:36} {c:9.3f} {spread:>13} {c / ref:8.2f} {med(label, 'user'):6.3f} {med(label, 'sys'):6.3f} "
              f"{med(label, 'vcsw'):9.0f} {med(label, 'ivcsw'):9.0f} {med(label, 'recv_cpu'):10.3f} "
              f"{med(label, 'gibs'):6.2f}")


if __name__ == "__main__":
    sys.exit(main())
