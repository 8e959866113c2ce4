"""TCP relay: zcio beside real peers (HAProxy with forced splice, a Go io.Copy
relay), each a separate process measured the same way.

    python bench/relay_peers.py [--install] [--quick] [--rounds N] [--gib G]

A fixed source process sends G GiB from a file through the relay under test
to a fixed sink process (which splices to /dev/null and answers one byte at
EOF, so a round ends when every byte arrived and the answer came back through
the relay). Contenders run interleaved, round by round; the table gives the
medians of throughput and of the relay process's CPU seconds per GiB (from
/proc/PID/stat), and ratios to zcio. Peers that are not installed are skipped
with a message; --install fetches them from Debian's packages (apt-get).

Relays under test:
- zcio proxy: the ``zcio proxy`` command on its RelayHub (C engine, one
  thread; the baseline of the ratios);
- zcio proxy --engine asyncio: zcio.aio.proxy on asyncio, and on uvloop
  where installed;
- zcio.proxy: the blocking ``zcio.proxy`` (splice through pooled pipes), one
  thread per direction;
- os.splice: a Python relay built on ``os.splice`` alone (same threads);
- recv_into/sendall: a Python relay that copies through user space;
- haproxy: ``mode tcp`` with ``option splice-request`` and
  ``option splice-response``, one thread;
- go: ``io.Copy`` both ways (which splices on Linux), GOMAXPROCS=2.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

from _peers import CLK, cpu_seconds, free_port, install, wait_port
from zcio import bench


PY_RELAY = r"""
import os, socket, sys, threading
mode, port, target = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if mode == "zcio":
    import zcio
ls = socket.create_server(("127.0.0.1", port))
print("ready", flush=True)

def half_close(s):
    try:
        s.shutdown(socket.SHUT_WR)
    except OSError:  # the peer already closed both ways (ENOTCONN)
        pass

def splice_loop(a, b):
    r, w = os.pipe()
    try:
        import fcntl
        fcntl.fcntl(w, 1031, 1 << 20)
    except OSError:
        pass
    while True:
        n = os.splice(a.fileno(), w, 1 << 20)
        if not n:
            break
        while n:
            n -= os.splice(r, b.fileno(), n)
    os.close(r); os.close(w)
    half_close(b)

def copy_loop(a, b):
    buf = bytearray(256 << 10)
    view = memoryview(buf)
    while True:
        n = a.recv_into(buf)
        if not n:
            break
        b.sendall(view[:n])
    half_close(b)

def handle(c):
    t = socket.create_connection(("127.0.0.1", target))
    if mode == "zcio":
        zcio.proxy(c, t)
    else:
        fn = splice_loop if mode == "splice" else copy_loop
        th = threading.Thread(target=fn, args=(t, c))
        th.start()
        fn(c, t)
        th.join()
    c.close(); t.close()

while True:
    c, _ = ls.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"""

GO_RELAY = """
package main

import (
	"fmt"
	"io"
	"net"
	"os"
)

func pipe(dst, src *net.TCPConn, done chan struct{}) {
	io.Copy(dst, src)
	dst.CloseWrite()
	done <- struct{}{}
}

func main() {
	ln, err := net.Listen("tcp", "127.0.0.1:"+os.Args[1])
	if err != nil {
		panic(err)
	}
	fmt.Println("ready")
	for {
		c, err := ln.Accept()
		if err != nil {
			panic(err)
		}
		go func(c net.Conn) {
			t, err := net.Dial("tcp", "127.0.0.1:"+os.Args[2])
			if err != nil {
				panic(err)
			}
			done := make(chan struct{}, 2)
			go pipe(t.(*net.TCPConn), c.(*net.TCPConn), done)
			go pipe(c.(*net.TCPConn), t.(*net.TCPConn), done)
			<-done
			<-done
			c.Close()
			t.Close()
		}(c)
	}
}
"""

HAPROXY_CFG = """
global
    nbthread 1
    maxconn 100
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option splice-request
    option splice-response
frontend relay
    bind 127.0.0.1:{port}
    default_backend sink
backend sink
    server s1 127.0.0.1:{target}
"""

SOURCE = r"""
import os, socket, sys
path, port = sys.argv[1], int(sys.argv[2])
for line in sys.stdin:
    s = socket.create_connection(("127.0.0.1", port))
    with open(path, "rb") as f:
        s.sendfile(f)
    s.shutdown(socket.SHUT_WR)
    assert s.recv(1) == b"k"
    s.close()
    print("done", flush=True)
"""


def start_relays(tmp: str, target: int) -> Dict[str, "tuple[subprocess.Popen, int]"]:
    relays: Dict[str, "tuple[subprocess.Popen, int]"] = {}
    for mode, label in (("zcio", "zcio.proxy"), ("splice", "os.splice relay"), ("copy", "recv_into/sendall")):
        port = free_port()
        p = subprocess.Popen([sys.executable, "-c", PY_RELAY, mode, str(port), str(target)], stdout=subprocess.DEVNULL)
        relays[label] = (p, port)
    for flags, label in (([], "zcio proxy (hub)"), (["--engine", "asyncio"], "zcio proxy (asyncio)"),
                         (["--engine", "asyncio", "--uvloop"], "zcio proxy (uvloop)")):
        if "--uvloop" in flags and importlib.util.find_spec("uvloop") is None:
            print("uvloop: not installed, 'zcio proxy --uvloop' skipped", file=sys.stderr)
            continue
        port = free_port()
        p = subprocess.Popen([sys.executable, "-m", "zcio", "proxy", *flags, str(port), str(target)],
                             stderr=subprocess.DEVNULL)
        relays[label] = (p, port)
    haproxy = shutil.which("haproxy")
    if haproxy:
        port = free_port()
        cfg = os.path.join(tmp, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(HAPROXY_CFG.format(port=port, target=target))
        relays["haproxy (splice)"] = (subprocess.Popen([haproxy, "-db", "-f", cfg]), port)
    else:
        print("haproxy: not installed, skipped (run with --install)", file=sys.stderr)
    go = shutil.which("go")
    if go:
        src = os.path.join(tmp, "relay.go")
        with open(src, "w") as f:
            f.write(GO_RELAY)
        exe = os.path.join(tmp, "gorelay")
        env = {**os.environ, "GOCACHE": os.path.join(tmp, "gocache"), "GOPATH": os.path.join(tmp, "gopath"),
               "GO111MODULE": "off"}
        subprocess.run([go, "build", "-o", exe, src], check=True, env=env)
        port = free_port()
        relays["go io.Copy"] = (
            subprocess.Popen([exe, str(port), str(target)], env={**env, "GOMAXPROCS": "2"}, stdout=subprocess.DEVNULL),
            port,
        )
    else:
        print("go: not installed, skipped (run with --install)", file=sys.stderr)
    for _, port in relays.values():
        wait_port(port)
    return relays


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--install", action="store_true", help="apt-get install haproxy and golang-go first")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--gib", type=float, default=None, help="GiB per round (default 1, quick 0.25)")
    args = ap.parse_args(argv)
    if args.install:
        install(["haproxy", "golang-go"])
    rounds = args.rounds or (3 if args.quick else 7)
    size = int((args.gib or (0.25 if args.quick else 1.0)) * (1 << 30))
    with tempfile.TemporaryDirectory(prefix="zcio-relay-") as tmp:
        path = bench.fixtures.make_file(tmp, "data.bin", size)
        sink = bench.fixtures.Sink()
        relays = start_relays(tmp, sink.port)
        samples: Dict[str, List["tuple[float, float]"]] = {k: [] for k in relays}
        try:
            for r in range(rounds):
                order = list(relays.items())
                if r % 2:
                    order.reverse()
                for label, (proc, port) in order:
                    bench.fixtures.touch()
                    src = subprocess.Popen([sys.executable, "-c", SOURCE, path, str(port)],
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                    assert src.stdin and src.stdout
                    c0, t0 = cpu_seconds(proc.pid), time.perf_counter()
                    src.stdin.write("go\n")
                    src.stdin.flush()
                    assert src.stdout.readline().strip() == "done"
                    t1 = time.perf_counter()
                    time.sleep(0.05)  # let the relay's threads finish their bookkeeping
                    c1 = cpu_seconds(proc.pid)
                    src.stdin.close()
                    src.wait()
                    src.stdout.close()
                    samples[label].append((size / (t1 - t0) / (1 << 30), (c1 - c0) / (size / (1 << 30))))
                    print(f"round {r + 1}: {label}: {samples[label][-1][0]:.2f} GiB/s, "
                          f"{samples[label][-1][1]:.3f} s/GiB", file=sys.stderr)
        finally:
            for proc, _ in relays.values():
                proc.kill()
                proc.wait()
            sink.close()
    base = samples["zcio proxy (hub)"]
    bz = statistics.median(s[1] for s in base)
    gz = statistics.median(s[0] for s in base)
    print(f"TCP relay, {size / (1 << 30):g} GiB a round, {rounds} rounds, medians "
          f"(CPU of the relay process; CLK_TCK={CLK})")
    print(f"{'relay':22} {'GiB/s':>8} {'CPU s/GiB':>10} {'hub CPU / this':>16} {'hub GiB/s / this':>18}")
    for label, ss in samples.items():
        g = statistics.median(s[0] for s in ss)
        c = statistics.median(s[1] for s in ss)
        print(f"{label:22} {g:8.2f} {c:10.3f} {bz / c if c else float('nan'):16.2f} {gz / g:18.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
