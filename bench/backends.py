"""zcio under other servers: each framework's default beside the same
framework with zcio underneath, server CPU per unit of work.

    python bench/backends.py [--quick] [--rounds N] [--gib G] [--duration S] [--no-strace]

Pairs (each server a separate process on 127.0.0.1, a free port):
- uvicorn + Starlette ``FileResponse`` on uvloop: ``http="httptools"`` (the
  default; Starlette reads 64 KiB chunks in a thread) vs
  ``http=zcio.uvicorn.HttpToolsProtocol`` (pathsend by sendfile);
- aiohttp ``web.FileResponse`` on uvloop: ``uvloop.new_event_loop()`` (uvloop
  has no loop.sendfile: aiohttp reads chunks in an executor) vs
  ``zcio.aio.loop_factory(uvloop=True)``;
- asyncio streams on the stdlib loop, a handler that writes a header and
  ``await loop.sendfile(transport, file)``: ``asyncio.new_event_loop()``
  (asyncio's own native sendfile) vs ``zcio.aio.loop_factory(uvloop=False)``
  (the same call lands in ``zcio.aio.transport_sendfile``).
Access logs are off for all.

(a) One G GiB file (default 1) fetched over loopback by a fixed downloader:
    this process sends one GET and splices the body into /dev/null through a
    pipe, identical for every server; a sample is ``--repeat`` downloads
    (default 3), because /proc's CPU times come in 1/CLK_TCK steps. Rounds are interleaved (the order
    reversed every other round); medians of the server process's CPU seconds
    per GiB (utime + stime from /proc/PID/stat, all threads) and throughput.
(b) System calls per GiB of the stdlib-loop pair: ``strace -c -f -p PID``
    attached to the server during one more download each (not timed).
(c) 64 KiB files under keep-alive load: ``wrk -t1 -c32 -d<S>s``, interleaved
    rounds, median requests per server CPU-second.

With two or more CPUs every server is pinned to the last CPU and the client
side (this process, wrk) to the first: on loopback the kernel charges TCP
work to whichever process runs it. ``--no-pin`` turns that off. Run as
``--serve KIND --port P --root DIR`` the script is one of the servers.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

from _peers import CLK, PeerProcess, cpu_seconds, download, download_rounds, free_port, splice_sink
from zcio.bench.fixtures import touch

GiB = 1 << 30
SMALL_SIZE = 64 << 10
PAIRS = [
    ("uvicorn+Starlette (uvloop)", "uvicorn", "uvicorn-zcio"),
    ("aiohttp (uvloop)", "aiohttp", "aiohttp-zcio"),
    ("asyncio loop.sendfile (stdlib loop)", "streams", "streams-zcio"),
]
SERVER_CPUS: Optional[set] = None  # type: ignore[type-arg]


# ------------------------------------------------------------ the servers


def _serve_uvicorn(zcio_backed: bool, port: int, root: str) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import FileResponse
    from starlette.routing import Route

    async def file(request: Any) -> FileResponse:
        return FileResponse(os.path.join(root, request.path_params["name"]))

    app = Starlette(routes=[Route("/{name}", file)])
    http: Any = "httptools"
    if zcio_backed:
        import zcio.uvicorn

        http = zcio.uvicorn.HttpToolsProtocol
    uvicorn.run(app, host="127.0.0.1", port=port, http=http, loop="uvloop", lifespan="off",
                access_log=False, log_level="warning")


def _serve_aiohttp(zcio_backed: bool, port: int, root: str) -> None:
    import uvloop
    from aiohttp import web

    async def file(request: web.Request) -> web.FileResponse:
        return web.FileResponse(os.path.join(root, request.match_info["name"]))

    app = web.Application()
    app.router.add_get("/{name}", file)
    if zcio_backed:
        import zcio.aio

        loop = zcio.aio.loop_factory(uvloop=True)
    else:
        loop = uvloop.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=port, loop=loop, access_log=None, print=None)


def _serve_streams(zcio_backed: bool, port: int, root: str) -> None:
    """HTTP/1.1 keep-alive GETs answered with loop.sendfile on the stdlib loop."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                name = head.split(b" ", 2)[1].decode().lstrip("/")
                with open(os.path.join(root, name), "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                    await loop.sendfile(writer.transport, f)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handler, "127.0.0.1", port, backlog=256)
        async with server:
            await server.serve_forever()

    if zcio_backed:
        import zcio.aio

        loop = zcio.aio.loop_factory(uvloop=False)
    else:
        loop = asyncio.new_event_loop()
    loop.run_until_complete(main())


SERVE = {
    "uvicorn": lambda p, r: _serve_uvicorn(False, p, r),
    "uvicorn-zcio": lambda p, r: _serve_uvicorn(True, p, r),
    "aiohttp": lambda p, r: _serve_aiohttp(False, p, r),
    "aiohttp-zcio": lambda p, r: _serve_aiohttp(True, p, r),
    "streams": lambda p, r: _serve_streams(False, p, r),
    "streams-zcio": lambda p, r: _serve_streams(True, p, r),
}


class Server(PeerProcess):
    """``kind``'s server, run by this script with ``--serve``; stopped by SIGINT."""

    def __init__(self, kind: str, root: str) -> None:
        port = free_port()
        argv = [sys.executable, os.path.abspath(__file__), "--serve", kind, "--port", str(port), "--root", root]
        super().__init__(kind, argv, port, preexec_fn=_pin, stop_signal=signal.SIGINT)
        self.kind = kind


def _pin() -> None:
    if SERVER_CPUS is not None:
        os.sched_setaffinity(0, SERVER_CPUS)


# ------------------------------------------------------------ the client


def syscalls(servers: Dict[str, Server], size: int, reps: int) -> Dict[str, List[Tuple[float, Dict[str, int]]]]:
    """System calls per GiB of each server during one download, by strace -c."""
    strace = shutil.which("strace")
    out: Dict[str, List[Tuple[float, Dict[str, int]]]] = {k: [] for k in servers}
    if strace is None:
        print("strace: not installed, part (b) skipped", file=sys.stderr)
        return {}
    null, (r, w) = splice_sink()
    try:
        for rep in range(reps):
            order = list(servers.items())
            if rep % 2:
                order.reverse()
            for kind, s in order:
                log = tempfile.NamedTemporaryFile("w+", prefix="strace-", suffix=".txt")
                with log:
                    tracer = subprocess.Popen([strace, "-c", "-f", "-o", log.name, "-p", str(s.pid)],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                    time.sleep(1.0)  # attach to every thread
                    got = download(s.port, "/big.bin", null, (r, w))
                    time.sleep(0.1)
                    tracer.send_signal(signal.SIGINT)
                    tracer.wait(30)
                    per_call = _strace_counts(open(log.name).read())
                total = sum(per_call.values())
                out[kind].append((total / (got / GiB), per_call))
                top = ", ".join(f"{k} {v}" for k, v in sorted(per_call.items(), key=lambda kv: -kv[1])[:5])
                print(f"(b) rep {rep + 1}: {kind}: {total / (got / GiB):.0f} calls/GiB ({top})", file=sys.stderr)
    finally:
        for fd in (null, r, w):
            os.close(fd)
    return out


def _strace_counts(text: str) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        # "% time seconds usecs/call calls [errors] syscall"
        if len(parts) >= 5 and parts[-1] != "total" and re.match(r"^\d+\.\d+$", parts[0] or ""):
            try:
                counts[parts[-1]] = int(parts[3])
            except ValueError:
                continue
    return counts


def run_wrk(wrk: str, port: int, duration: int) -> int:
    out = subprocess.run(
        [wrk, "-t1", "-c32", f"-d{duration}s", f"http://127.0.0.1:{port}/small.bin"],
        capture_output=True, text=True, timeout=duration + 60, preexec_fn=_pin_client,
    )
    total = re.search(r"(\d+) requests in", out.stdout)
    if total is None:
        raise RuntimeError(f"wrk said: {out.stdout} {out.stderr}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    if bad:
        raise RuntimeError(f"wrk saw {bad.group(1)} error responses:\n{out.stdout}")
    return int(total.group(1))


CLIENT_CPUS: Optional[set] = None  # type: ignore[type-arg]


def _pin_client() -> None:
    if CLIENT_CPUS is not None:
        os.sched_setaffinity(0, CLIENT_CPUS)


def small_files(servers: Dict[str, Server], wrk: str, duration: int, rounds: int) -> Dict[str, List[float]]:
    samples: Dict[str, List[float]] = {k: [] for k in servers}
    for s in servers.values():
        run_wrk(wrk, s.port, 1)
    for rnd in range(rounds):
        order = list(servers.items())
        if rnd % 2:
            order.reverse()
        for kind, s in order:
            c0 = cpu_seconds(s.pid)
            total = run_wrk(wrk, s.port, duration)
            time.sleep(0.1)
            c1 = cpu_seconds(s.pid)
            samples[kind].append(total / max(c1 - c0, 1 / CLK))
            print(f"(c) round {rnd + 1}: {kind}: {total} requests, {samples[kind][-1]:.0f} req per CPU s",
                  file=sys.stderr)
    return samples


# ------------------------------------------------------------ report


def _med(xs: List[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--serve", choices=sorted(SERVE), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="3 rounds, 256 MiB, 2 s wrk runs")
    ap.add_argument("--rounds", type=int, default=None, help="rounds of (a) (default 5, quick 3); (c) uses the same")
    ap.add_argument("--gib", type=float, default=None, help="size of the big file (default 1, quick 0.25)")
    ap.add_argument("--duration", type=int, default=None, help="seconds per wrk run (default 4, quick 2)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="downloads per sample of (a) (default 3, quick 1): CPU time comes in 1/CLK_TCK steps")
    ap.add_argument("--no-strace", dest="strace", action="store_false", help="skip part (b)")
    ap.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin servers and client to CPUs")
    ap.add_argument("--only", default=None, help="comma-separated pair names: uvicorn, aiohttp, streams")
    args = ap.parse_args(argv)
    if args.serve:
        SERVE[args.serve](args.port, args.root)
        return 0

    global SERVER_CPUS, CLIENT_CPUS
    cpus = sorted(os.sched_getaffinity(0))
    placement = "not pinned"
    if args.pin and len(cpus) >= 2:
        SERVER_CPUS, CLIENT_CPUS = {cpus[-1]}, {cpus[0]}
        os.sched_setaffinity(0, CLIENT_CPUS)
        placement = f"servers on CPU {cpus[-1]}, client and wrk on CPU {cpus[0]}"
    rounds = args.rounds or (3 if args.quick else 5)
    size = int((args.gib or (0.25 if args.quick else 1.0)) * GiB)
    duration = args.duration or (2 if args.quick else 4)
    repeat = args.repeat or (1 if args.quick else 3)
    pairs = [p for p in PAIRS if args.only is None or p[1] in args.only.split(",")]
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk: not installed, part (c) skipped (apt-get install -y wrk)", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="zcio-backends-") as root:
        block = os.urandom(1 << 20)
        with open(os.path.join(root, "big.bin"), "wb") as f:
            for _ in range(size >> 20):
                f.write(block)
        with open(os.path.join(root, "small.bin"), "wb") as f:
            f.write(os.urandom(SMALL_SIZE))
        servers: Dict[str, Server] = {}
        try:
            for _, default, zcio_kind in pairs:
                for kind in (default, zcio_kind):
                    servers[kind] = Server(kind, root)
            a = download_rounds(servers, "/big.bin", rounds, touch, repeat)
            stdlib = {k: servers[k] for k in ("streams", "streams-zcio") if k in servers}
            b = syscalls(stdlib, size, 2) if args.strace and stdlib else {}
            c = small_files(servers, wrk, duration, rounds) if wrk else {}
        finally:
            for s in servers.values():
                s.close()

    print(f"zcio under other servers, loopback, {os.cpu_count()} CPUs ({placement}), CLK_TCK={CLK}; "
          "a shared machine: other work ran beside this one")
    print(f"\n(a) one {size / GiB:g} GiB file downloaded {repeat}x per sample, fixed splicing downloader, "
          f"{rounds} interleaved rounds, medians")
    print(f"{'framework':38} {'default s/GiB':>14} {'zcio s/GiB':>11} {'ratio':>6} "
          f"{'default GiB/s':>14} {'zcio GiB/s':>11}")
    for label, default, zk in pairs:
        dc, zc = _med([x[1] for x in a[default]]), _med([x[1] for x in a[zk]])
        dg, zg = _med([x[0] for x in a[default]]), _med([x[0] for x in a[zk]])
        print(f"{label:38} {dc:14.3f} {zc:11.3f} {zc / dc:6.2f} {dg:14.2f} {zg:11.2f}")
    if b:
        sd = _med([x[0] for x in b["streams"]])
        sz = _med([x[0] for x in b["streams-zcio"]])
        print(f"\n(b) system calls per GiB of the server (strace -c -f, {len(b['streams'])} downloads each, medians)")
        print(f"{'asyncio loop.sendfile':38} {sd:14.0f}")
        print(f"{'zcio transport_sendfile':38} {sz:14.0f}   ratio {sz / sd:.2f}")
        for kind in ("streams", "streams-zcio"):
            per = b[kind][-1][1]
            top = ", ".join(f"{k} {v}" for k, v in sorted(per.items(), key=lambda kv: -kv[1])[:5])
            print(f"  {kind}: {top} (last download)")
    if c:
        print(f"\n(c) one {SMALL_SIZE >> 10} KiB file, wrk -t1 -c32 -d{duration}s keep-alive, {rounds} rounds, "
              "median requests per server CPU-second")
        print(f"{'framework':38} {'default':>14} {'zcio':>11} {'ratio':>6}")
        for label, default, zk in pairs:
            dr, zr = _med(c[default]), _med(c[zk])
            print(f"{label:38} {dr:14.0f} {zr:11.0f} {zr / dr:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
