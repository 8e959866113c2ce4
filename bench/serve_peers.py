"""Static file serving: ``zcio serve`` beside nginx and ``python -m http.server``.

    python bench/serve_peers.py [--install] [--quick] [--rounds N] [--gib G] [--duration S]

(a) Large file: one G GiB file (default 1) fetched over loopback by a fixed
    downloader -- this process, which sends one GET and splices the socket
    into /dev/null through a pipe, identical for every server. Contenders run
    interleaved, round by round (the order reversed every other round); the
    table gives medians of throughput and of the server process's CPU seconds
    per GiB (utime + stime from /proc/PID/stat; for nginx, its worker).
(b) Small files: ``wrk -t1 -c50 -d<S>s`` over 1000 files of 4 KiB (a Lua
    script cycles through their paths), interleaved rounds, median requests/s,
    the server's CPU microseconds per request and requests per server
    CPU-second relative to nginx's (the steady figure on a shared machine).
    Twice: with wrk's requests as they are (a head repeats every 1000
    requests), and with a header that makes every head unique (``X-Seq: n``),
    so that nothing a server remembers of a head it saw can help.

Servers, each a separate process on 127.0.0.1 and a free port:
- zcio serve (asyncio), zcio serve (uvloop): ``python -m zcio serve DIR --quiet``
  (and ``--uvloop``), so the access log is off as it is for nginx;
- nginx: 1 worker, ``sendfile on``, ``tcp_nopush on``, ``access_log off``,
  config, pid, logs and temp paths in the temp dir (``user root`` when run
  as root, so the worker can read the temp dir), run with
  ``nginx -p TMP -c CONF -g 'daemon off;'``;
- python -m http.server (part b only; its per-request log goes to /dev/null).

With two or more CPUs, every server is pinned to the last CPU and the
client side (this process, and wrk) to the first: on loopback the kernel
charges TCP work to whichever process runs it, and which CPUs the two ends
land on otherwise swings a server's CPU per GiB by half. --no-pin turns it off.

A peer that is not installed is skipped with a message; --install runs
``apt-get install -y nginx wrk``.
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
from typing import Dict, List, Optional, Set, Tuple

from _peers import CLK, PeerProcess, cpu_seconds, download_rounds, free_port, install
from zcio import bench

GiB = 1 << 30
SMALL_FILES = 1000
SMALL_SIZE = 4096

NGINX_CONF = """
{user}
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    include {mime};
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
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

WRK_SCRIPT = """
local n = 0
request = function()
    n = n + 1
    return wrk.format("GET", string.format("/small/f%d.bin", n % {count}))
end
"""

WRK_UNIQUE_SCRIPT = """
local n = 0
request = function()
    n = n + 1
    return wrk.format("GET", string.format("/small/f%d.bin", n % {count}), {{["X-Seq"] = tostring(n)}})
end
"""


SERVER_CPUS: Optional[Set[int]] = None  # set by main() when pinning


def _pin() -> None:
    if SERVER_CPUS is not None:
        os.sched_setaffinity(0, SERVER_CPUS)


class Server(PeerProcess):
    """A server process pinned by ``_pin`` (see ``--no-pin``)."""

    def __init__(self, label: str, argv: List[str], port: int, cwd: Optional[str] = None,
                 worker_of_master: bool = False) -> None:
        super().__init__(label, argv, port, cwd=cwd, preexec_fn=_pin, worker_of_master=worker_of_master)


def start_servers(tmp: str, root: str, with_http_server: bool) -> Dict[str, Server]:
    servers: Dict[str, Server] = {}
    for label, extra in (("zcio serve (asyncio)", []), ("zcio serve (uvloop)", ["--uvloop"])):
        if extra:
            try:
                import uvloop  # noqa: F401
            except ImportError:
                print("uvloop: not installed, zcio serve (uvloop) skipped", file=sys.stderr)
                continue
        port = free_port()
        argv = [sys.executable, "-m", "zcio", "serve", root, "--port", str(port), "--quiet", *extra]
        servers[label] = Server(label, argv, port)
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx:
        port = free_port()
        conf = os.path.join(tmp, "nginx.conf")
        mime = "/etc/nginx/mime.types"
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(
                user="user root;" if os.geteuid() == 0 else "",
                tmp=tmp, port=port, root=root,
                mime=mime if os.path.exists(mime) else os.devnull,
            ))
        servers["nginx (sendfile)"] = Server(
            "nginx (sendfile)", [nginx, "-p", tmp, "-e", os.path.join(tmp, "nginx-error.log"), "-c", conf,
                                 "-g", "daemon off;"], port, worker_of_master=True)
    else:
        print("nginx: not installed, skipped (run with --install)", file=sys.stderr)
    if with_http_server:
        port = free_port()
        servers["python -m http.server"] = Server(
            "python -m http.server",
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", root],
            port,
        )
    return servers


# ------------------------------------------------------------ (a) one big file


# ------------------------------------------------------------ (b) small files


def run_wrk(wrk: str, port: int, duration: int, script: str) -> Tuple[float, int]:
    out = subprocess.run(
        [wrk, "-t1", "-c50", f"-d{duration}s", "-s", script, f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=duration + 60,
    )
    m = re.search(r"Requests/sec:\s*([\d.]+)", out.stdout)
    total = re.search(r"(\d+) requests in", out.stdout)
    if m is None or total is None:
        raise RuntimeError(f"wrk said: {out.stdout} {out.stderr}")
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out.stdout)
    if bad:
        raise RuntimeError(f"wrk saw {bad.group(1)} error responses:\n{out.stdout}")
    return float(m.group(1)), int(total.group(1))


def small_files(servers: Dict[str, Server], wrk: str, scripts: Dict[str, str], duration: int,
                rounds: int) -> Dict[str, Dict[str, List[Tuple[float, float]]]]:
    """Per script (kind of request), per server: (req/s, server CPU us/req)
    of each round; in a round every server runs every script in turn, so
    that the kinds see the same machine."""
    samples: Dict[str, Dict[str, List[Tuple[float, float]]]] = {
        kind: {k: [] for k in servers} for kind in scripts
    }
    for s in servers.values():  # warm-up
        for script in scripts.values():
            run_wrk(wrk, s.port, 1, script)
    for rnd in range(rounds):
        order = list(servers.items())
        if rnd % 2:
            order.reverse()
        for label, s in order:
            for kind, script in scripts.items():
                c0 = cpu_seconds(s.pid)
                rps, total = run_wrk(wrk, s.port, duration, script)
                time.sleep(0.1)
                c1 = cpu_seconds(s.pid)
                samples[kind][label].append((rps, (c1 - c0) / total * 1e6))
                print(f"(b) round {rnd + 1}: {label}, {kind}: {rps:.0f} req/s, "
                      f"{samples[kind][label][-1][1]:.1f} CPU us/req", file=sys.stderr)
    return samples


# ------------------------------------------------------------ report


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--install", action="store_true", help="apt-get install nginx and wrk first")
    ap.add_argument("--quick", action="store_true", help="fewer rounds, 256 MiB, 2 s wrk runs")
    ap.add_argument("--rounds", type=int, default=None, help="rounds of (a) (default 7, quick 3); (b) uses half")
    ap.add_argument("--gib", type=float, default=None, help="size of the big file (default 1, quick 0.25)")
    ap.add_argument("--duration", type=int, default=None, help="seconds per wrk run (default 5, quick 2)")
    ap.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin servers and client to CPUs")
    ap.add_argument("--part", choices=("a", "b", "both"), default="both", help="run only part (a) or (b)")
    args = ap.parse_args(argv)
    global SERVER_CPUS
    cpus = sorted(os.sched_getaffinity(0))
    placement = "not pinned"
    if args.pin and len(cpus) >= 2:
        SERVER_CPUS = {cpus[-1]}
        os.sched_setaffinity(0, {cpus[0]})
        placement = f"servers on CPU {cpus[-1]}, client and wrk on CPU {cpus[0]}"
    if args.install:
        install(["nginx", "wrk"])
    rounds = args.rounds or (3 if args.quick else 7)
    wrk_rounds = max(1, rounds // 2)
    size = int((args.gib or (0.25 if args.quick else 1.0)) * GiB)
    duration = args.duration or (2 if args.quick else 5)
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk: not installed, part (b) skipped (run with --install)", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="zcio-serve-") as tmp:
        root = os.path.join(tmp, "www")
        os.makedirs(os.path.join(root, "small"))
        bench.fixtures.make_file(root, "big.bin", size)
        block = os.urandom(SMALL_SIZE)
        for i in range(SMALL_FILES):
            with open(os.path.join(root, "small", f"f{i}.bin"), "wb") as f:
                f.write(block)
        scripts = {}
        for kind, text in (("repeated heads", WRK_SCRIPT), ("unique heads", WRK_UNIQUE_SCRIPT)):
            scripts[kind] = os.path.join(tmp, kind.replace(" ", "-") + ".lua")
            with open(scripts[kind], "w") as f:
                f.write(text.format(count=SMALL_FILES))
        servers = start_servers(tmp, root, with_http_server=wrk is not None and args.part != "a")
        b: Dict[str, Dict[str, List[Tuple[float, float]]]] = {}
        try:
            big = {k: v for k, v in servers.items() if k != "python -m http.server"}
            a = download_rounds(big, "/big.bin", rounds, bench.fixtures.touch) if args.part != "b" else {}
            if wrk and args.part != "a":
                b = small_files(servers, wrk, scripts, duration, wrk_rounds)
        finally:
            for s in servers.values():
                s.close()
    print(f"zcio serve beside peers, loopback, {os.cpu_count()} CPUs ({placement}), CLK_TCK={CLK}")
    if a:
        print(f"\n(a) one {size / GiB:g} GiB file, fixed splicing downloader, {rounds} rounds, medians")
        print(f"{'server':24} {'GiB/s':>8} {'CPU s/GiB':>10} {'GiB/s vs nginx':>15} {'CPU vs nginx':>13}")
        ref = a.get("nginx (sendfile)")
        ref_g = statistics.median(x[0] for x in ref) if ref else float("nan")
        ref_c = statistics.median(x[1] for x in ref) if ref else float("nan")
        for label, ss in a.items():
            g = statistics.median(x[0] for x in ss)
            c = statistics.median(x[1] for x in ss)
            print(f"{label:24} {g:8.2f} {c:10.3f} {g / ref_g:15.2f} {c / ref_c if ref_c else float('nan'):13.2f}")
    for kind, samples in b.items():
        print(f"\n(b) {SMALL_FILES} files of {SMALL_SIZE} bytes, {kind}, wrk -t1 -c50 -d{duration}s, "
              f"{wrk_rounds} rounds, medians")
        print(f"{'server':24} {'req/s':>10} {'CPU us/req':>11} {'req/CPU-s vs nginx':>19} {'vs http.server':>15}")
        hs = samples.get("python -m http.server")
        hs_r = statistics.median(x[0] for x in hs) if hs else float("nan")
        ng = samples.get("nginx (sendfile)")
        ng_us = statistics.median(x[1] for x in ng) if ng else float("nan")
        for label, ss in samples.items():
            rps = statistics.median(x[0] for x in ss)
            us = statistics.median(x[1] for x in ss)
            print(f"{label:24} {rps:10.0f} {us:11.1f} {ng_us / us:19.2f} {rps / hs_r:15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
