"""``zcio bench``: zcio's paths measured beside the stdlib's, in one run.

Each case runs its contenders interleaved (A B A B ...) for several rounds and
reports medians, because throughput on a shared machine swings from run to
run while the order-averaged ratio holds. Memory a case uses is touched
before each round. Figures:

- for byte-moving cases: GiB/s (wall) and CPU seconds per GiB of the thread
  doing the moving (``RUSAGE_THREAD``), and the ratio of each to the stdlib's;
- for small-call cases: nanoseconds per call and the ratio to the stdlib's.

The ratio column is zcio / stdlib: above 1 is faster for GiB/s, below 1 is
better for CPU and for time per call.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence

from . import lowlevel
from ._binding import lib
from .streams import splice_pipe

GiB = 1 << 30
_HAVE_OS_SPLICE = hasattr(os, "splice")  # Python 3.10+
_RUSAGE = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)


@dataclass
class Sample:
    """One timed run: wall and CPU seconds, and the bytes or calls it did."""

    wall: float
    cpu: float
    units: int


def _cpu() -> float:
    ru = resource.getrusage(_RUSAGE)
    return ru.ru_utime + ru.ru_stime


def measure(fn: Callable[[], int]) -> Sample:
    """Run ``fn`` (which returns the units it did) and time it."""
    c0, t0 = _cpu(), time.perf_counter()
    units = fn()
    t1, c1 = time.perf_counter(), _cpu()
    return Sample(t1 - t0, c1 - c0, units)


@dataclass
class Contender:
    """One way of doing a case's job. ``role`` is "zcio", "stdlib" or "peer"."""

    role: str
    label: str
    run: Callable[[], Sample]


@dataclass
class Case:
    """A job and the contenders that do it. ``unit`` is "bytes" or "calls"."""

    name: str
    unit: str
    setup: Callable[[str, bool], "contextlib.AbstractContextManager[List[Contender]]"]


@dataclass
class Row:
    case: str
    unit: str
    role: str
    label: str
    samples: List[Sample] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Median GiB/s, or median calls per second."""
        scale = GiB if self.unit == "bytes" else 1
        return statistics.median(s.units / s.wall / scale for s in self.samples if s.wall > 0)

    @property
    def cpu_per_unit(self) -> float:
        """Median CPU seconds per GiB, or per call."""
        scale = GiB if self.unit == "bytes" else 1
        return statistics.median(s.cpu / (s.units / scale) for s in self.samples if s.units)


# ------------------------------------------------------------------ cases


def _calls(fn: Callable[[], object], n: int) -> Callable[[], Sample]:
    def run() -> Sample:
        def body() -> int:
            for _ in range(n):
                fn()
            return n

        return measure(body)

    return run


@contextlib.contextmanager
def _splice_pingpong(tmp: str, quick: bool) -> Iterator[List[Contender]]:
    """4 KiB moved back and forth between two pipes: two calls a round."""
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    try:
        os.write(w1, b"x" * 4096)
        n = 100_000 if quick else 300_000
        zs = lowlevel.splice

        def z() -> None:
            zs(r1, w2, 4096)
            zs(r2, w1, 4096)

        contenders = [Contender("zcio", "zcio.splice", _pairs(_calls(z, n)))]
        if _HAVE_OS_SPLICE:
            oss = os.splice

            def o() -> None:
                oss(r1, w2, 4096)
                oss(r2, w1, 4096)

            contenders.append(Contender("stdlib", "os.splice", _pairs(_calls(o, n))))
        yield contenders
    finally:
        for fd in (r1, w1, r2, w2):
            os.close(fd)


def _pairs(run: Callable[[], Sample]) -> Callable[[], Sample]:
    """Count each round of a ping-pong as its two calls."""

    def wrapped() -> Sample:
        s = run()
        return Sample(s.wall, s.cpu, s.units * 2)

    return wrapped


@contextlib.contextmanager
def _sendfile_devnull(tmp: str, quick: bool) -> Iterator[List[Contender]]:
    """4 KiB from a file at offset 0 to /dev/null: one call each."""
    path = os.path.join(tmp, "small.bin")
    with open(path, "wb") as f:
        f.write(os.urandom(4096))
    src = os.open(path, os.O_RDONLY)
    dst = os.open(os.devnull, os.O_WRONLY)
    try:
        n = 100_000 if quick else 300_000
        zsf, osf = lowlevel.sendfile, os.sendfile
        yield [
            Contender("zcio", "zcio.sendfile", _calls(lambda: zsf(dst, src, 0, 4096), n)),
            Contender("stdlib", "os.sendfile", _calls(lambda: osf(dst, src, 0, 4096), n)),
        ]
    finally:
        os.close(src)
        os.close(dst)


# ------------------------------------------------------------ byte movers
#
# Receivers are fixed and identical for every contender of a case, and they
# do not copy: a sink process splices what it receives to /dev/null and
# answers one byte per connection once it saw EOF, so a timed run ends when
# the bytes have really arrived. Only the moving thread's CPU is counted.

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


def _touch() -> None:
    """Touch fresh memory: a VM may have handed idle pages back to its host,
    and the first touch afterwards is slow for whichever contender comes next."""
    bytearray(128 << 20)


def _make_file(tmp: str, name: str, size: int) -> str:
    path = os.path.join(tmp, name)
    if not os.path.exists(path) or os.path.getsize(path) != size:
        block = os.urandom(1 << 20)
        with open(path, "wb") as f:
            for _ in range(size >> 20):
                f.write(block)
            f.write(block[: size & ((1 << 20) - 1)])
    return path


def _size(quick: bool) -> int:
    return (128 << 20) if quick else (512 << 20)


class _Sink:
    """The fixed receiving process: splices each connection to /dev/null."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SINK], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port))

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


def _finish(sock: socket.socket) -> None:
    """Half-close, then wait for the sink's acknowledgement of EOF."""
    sock.shutdown(socket.SHUT_WR)
    if sock.recv(1) != b"k":
        raise RuntimeError("the benchmark sink did not acknowledge")
    sock.close()


def _timed_send(send: Callable[[int, socket.socket], None], sink: _Sink, path: str, size: int) -> Callable[[], Sample]:
    def run() -> Sample:
        _touch()
        sock = sink.connect()
        fd = os.open(path, os.O_RDONLY)
        try:
            def body() -> int:
                send(fd, sock)
                _finish(sock)
                return size

            return measure(body)
        finally:
            os.close(fd)
            sock.close()

    return run


@contextlib.contextmanager
def _file_to_socket(tmp: str, quick: bool) -> Iterator[List[Contender]]:
    size = _size(quick)
    path = _make_file(tmp, "data.bin", size)
    sink = _Sink()
    try:
        def z(fd: int, sock: socket.socket) -> None:
            splice_pipe(fd, sock)

        def std(fd: int, sock: socket.socket) -> None:
            with os.fdopen(os.dup(fd), "rb") as f:
                sock.sendfile(f)

        def rw(fd: int, sock: socket.socket) -> None:
            buf = bytearray(256 << 10)
            view = memoryview(buf)
            while True:
                n = os.readv(fd, [buf])
                if not n:
                    return
                sock.sendall(view[:n])

        yield [
            Contender("zcio", "zcio.splice_pipe", _timed_send(z, sink, path, size)),
            Contender("stdlib", "socket.sendfile", _timed_send(std, sink, path, size)),
            Contender("peer", "read + sendall", _timed_send(rw, sink, path, size)),
        ]
    finally:
        sink.close()


@contextlib.contextmanager
def _socket_to_socket(tmp: str, quick: bool) -> Iterator[List[Contender]]:
    """A relay: a source process sends a file to us, we relay it to the sink."""
    size = _size(quick)
    path = _make_file(tmp, "data.bin", size)
    sink = _Sink()
    listener = socket.create_server(("127.0.0.1", 0))
    src = subprocess.Popen(
        [sys.executable, "-c", _SOURCE, path, str(listener.getsockname()[1])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert src.stdin is not None and src.stdout is not None

    def relay(move: Callable[[socket.socket, socket.socket], int]) -> Callable[[], Sample]:
        def run() -> Sample:
            _touch()
            out = sink.connect()
            src.stdin.write("go\n")  # type: ignore[union-attr]
            src.stdin.flush()  # type: ignore[union-attr]
            conn, _ = listener.accept()
            try:
                def body() -> int:
                    n = move(conn, out)
                    _finish(out)
                    return n

                sample = measure(body)
            finally:
                conn.close()
                out.close()
            src.stdout.readline()  # type: ignore[union-attr]
            if sample.units != size:
                raise RuntimeError(f"relay moved {sample.units} of {size} bytes")
            return sample

        return run

    def z(a: socket.socket, b: socket.socket) -> int:
        return splice_pipe(a, b)

    def rw(a: socket.socket, b: socket.socket) -> int:
        buf = bytearray(256 << 10)
        view = memoryview(buf)
        total = 0
        while True:
            n = a.recv_into(buf)
            if not n:
                return total
            b.sendall(view[:n])
            total += n

    def spl(a: socket.socket, b: socket.socket) -> int:
        r, w = os.pipe()
        try:
            fcntl.fcntl(w, lib.F_SETPIPE_SZ, 1 << 20)
        except OSError:
            pass
        total = 0
        try:
            while True:
                n = os.splice(a.fileno(), w, 1 << 20)
                if not n:
                    return total
                while n:
                    k = os.splice(r, b.fileno(), n)
                    n -= k
                    total += k
        finally:
            os.close(r)
            os.close(w)

    contenders = [
        Contender("zcio", "zcio.splice_pipe", relay(z)),
        Contender("stdlib", "recv_into + sendall", relay(rw)),
    ]
    if _HAVE_OS_SPLICE:
        contenders.append(Contender("peer", "os.splice loop", relay(spl)))
    try:
        yield contenders
    finally:
        src.stdin.close()
        src.wait()
        src.stdout.close()
        listener.close()
        sink.close()


@contextlib.contextmanager
def _file_to_file(tmp: str, quick: bool) -> Iterator[List[Contender]]:
    size = _size(quick)
    path = _make_file(tmp, "data.bin", size)
    out = os.path.join(tmp, "copy.bin")

    def run(copy: Callable[[], None]) -> Callable[[], Sample]:
        def timed() -> Sample:
            _touch()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out)

            def body() -> int:
                copy()
                return size

            return measure(body)

        return timed

    def z() -> None:
        with open(path, "rb") as f, open(out, "wb") as g:
            splice_pipe(f, g)

    def std() -> None:
        shutil.copyfile(path, out)

    try:
        yield [
            Contender("zcio", "zcio.splice_pipe", run(z)),
            Contender("stdlib", "shutil.copyfile", run(std)),
        ]
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out)


@contextlib.contextmanager
def _file_to_pipe(tmp: str, quick: bool) -> Iterator[List[Contender]]:
    size = _size(quick)
    path = _make_file(tmp, "data.bin", size)

    def run(move: Callable[[int, int], None]) -> Callable[[], Sample]:
        def timed() -> Sample:
            _touch()
            r, w = os.pipe()
            try:
                fcntl.fcntl(w, lib.F_SETPIPE_SZ, 1 << 20)
            except OSError:
                pass
            fd = os.open(path, os.O_RDONLY)
            sink = _spawn_pipe_sink(r)
            os.close(r)
            try:
                def body() -> int:
                    move(fd, w)
                    os.close(w)
                    sink.wait()
                    return size

                return measure(body)
            finally:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.close(w)
                sink.wait()

        return timed

    def z(fd: int, w: int) -> None:
        splice_pipe(fd, w)

    def spl(fd: int, w: int) -> None:
        while os.splice(fd, w, 1 << 20):
            pass

    def rw(fd: int, w: int) -> None:
        while True:
            data = os.read(fd, 1 << 20)
            if not data:
                return
            view = memoryview(data)
            while view:
                view = view[os.write(w, view) :]

    if _HAVE_OS_SPLICE:
        yield [
            Contender("zcio", "zcio.splice_pipe", run(z)),
            Contender("stdlib", "os.splice loop", run(spl)),
            Contender("peer", "os.read + os.write", run(rw)),
        ]
    else:  # os.splice is 3.10+: the stdlib's way is then read + write
        yield [
            Contender("zcio", "zcio.splice_pipe", run(z)),
            Contender("stdlib", "os.read + os.write", run(rw)),
        ]


def _spawn_pipe_sink(r: int) -> "subprocess.Popen[bytes]":
    """A process that splices the pipe's read end to /dev/null until EOF."""
    return subprocess.Popen([sys.executable, "-c", _PIPE_SINK, str(r)], pass_fds=(r,))


CASES: List[Case] = [
    Case("file → TCP socket", "bytes", _file_to_socket),
    Case("TCP → TCP relay", "bytes", _socket_to_socket),
    Case("file → file", "bytes", _file_to_file),
    Case("file → pipe", "bytes", _file_to_pipe),
    Case("splice 4 KiB pipe ping-pong", "calls", _splice_pingpong),
    Case("sendfile 4 KiB file→/dev/null", "calls", _sendfile_devnull),
]


def all_cases() -> List[Case]:
    """This module's cases, then the MSG_ZEROCOPY ones (which import this one)."""
    from ._bench_zerocopy import CASES as ZEROCOPY_CASES

    return CASES[:4] + ZEROCOPY_CASES + CASES[4:]


# ------------------------------------------------------------------ running


def run_cases(
    cases: Sequence[Case],
    *,
    quick: bool = False,
    rounds: Optional[int] = None,
    log: Callable[[str], None] = lambda s: None,
) -> List[Row]:
    """Run every case's contenders interleaved for ``rounds`` rounds."""
    rounds = rounds or (3 if quick else 7)
    rows: List[Row] = []
    with tempfile.TemporaryDirectory(prefix="zcio-bench-") as tmp:
        for case in cases:
            log(f"{case.name} ...")
            with case.setup(tmp, quick) as contenders:
                case_rows = [Row(case.name, case.unit, c.role, c.label) for c in contenders]
                for c in contenders:  # one untimed warm-up each
                    c.run()
                for r in range(rounds):
                    order = list(zip(contenders, case_rows))
                    if r % 2:
                        order.reverse()
                    for c, row in order:
                        row.samples.append(c.run())
            rows.extend(case_rows)
    return rows


def _baseline(rows: Sequence[Row], case: str) -> Optional[Row]:
    return next((r for r in rows if r.case == case and r.role == "stdlib"), None)


def ratios(rows: Sequence[Row]) -> List[Dict[str, object]]:
    """Rows as dicts with the ratio to the case's stdlib contender."""
    out: List[Dict[str, object]] = []
    for row in rows:
        base = _baseline(rows, row.case)
        d: Dict[str, object] = {"case": row.case, "unit": row.unit, "role": row.role, "label": row.label}
        if row.unit == "bytes":
            d["gib_per_s"] = row.rate
            d["cpu_s_per_gib"] = row.cpu_per_unit
            if base is not None:
                d["speed_ratio"] = row.rate / base.rate
                d["cpu_ratio"] = row.cpu_per_unit / base.cpu_per_unit if base.cpu_per_unit else None
        else:
            d["ns_per_call"] = 1e9 / row.rate
            d["cpu_ns_per_call"] = row.cpu_per_unit * 1e9
            if base is not None:
                d["time_ratio"] = base.rate / row.rate
        d["samples"] = len(row.samples)
        out.append(d)
    return out


def format_table(results: Sequence[Dict[str, object]]) -> str:
    head = f"{'case':34} {'contender':30} {'speed':>14} {'CPU':>16} {'ratio to stdlib':>22}"
    lines = [head, "-" * len(head)]
    last = None
    for d in results:
        case = str(d["case"]) if d["case"] != last else ""
        last = d["case"]
        if d["unit"] == "bytes":
            speed = f"{d['gib_per_s']:.2f} GiB/s"
            cpu = f"{d['cpu_s_per_gib']:.3f} s/GiB"
            if d["role"] == "stdlib" or "speed_ratio" not in d:
                ratio = "(baseline)" if d["role"] == "stdlib" else ""
            else:
                cr = d.get("cpu_ratio")
                ratio = f"{d['speed_ratio']:.2f}x speed" + (f", {cr:.2f}x CPU" if cr else "")
        else:
            speed = f"{d['ns_per_call']:.0f} ns/call"
            cpu = f"{d['cpu_ns_per_call']:.0f} ns CPU"
            if d["role"] == "stdlib":
                ratio = "(baseline)"
            else:
                ratio = f"{d['time_ratio']:.2f}x time" if "time_ratio" in d else ""
        lines.append(f"{case:34} {d['label']:30} {speed:>14} {cpu:>16} {ratio:>22}")
    return "\n".join(lines)


def plot(results: Sequence[Dict[str, object]], path: str) -> None:
    """Write a PNG bar chart of the ratios (needs matplotlib: zcio[plot])."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit("--plot needs matplotlib: pip install 'zcio[plot]'") from exc
    shown = [d for d in results if d["role"] != "stdlib"]
    labels = [f"{d['case']}\n{d['label']}" for d in shown]
    values = [
        float(d["cpu_ratio"]) if d.get("cpu_ratio") else float(d.get("time_ratio") or 0)  # type: ignore[arg-type]
        for d in shown
    ]
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(shown) + 1.5))
    ax.barh(range(len(shown)), values, color=["#2a7" if v <= 1 else "#c52" for v in values])
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("CPU per GiB (or time per call) relative to the stdlib; < 1 is better")
    ax.set_title(f"zcio bench, Linux {platform.release()}, Python {platform.python_version()}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer rounds (under a minute)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.add_argument("--plot", metavar="FILE", help="also write a PNG chart of the ratios to FILE")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per case (default 9, quick 5)")
    p.add_argument("--case", action="append", metavar="TEXT", help="only cases whose name contains TEXT (repeatable)")


def main(args: argparse.Namespace) -> int:
    every = all_cases()
    cases = [c for c in every if not args.case or any(t in c.name for t in args.case)]
    if not cases:
        print(f"no case matches {args.case}; cases: {[c.name for c in every]}", file=sys.stderr)
        return 2
    log = (lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr, flush=True))
    rows = run_cases(cases, quick=args.quick, rounds=args.rounds, log=log)
    results = ratios(rows)
    if args.json:
        print(json.dumps({"python": platform.python_version(), "kernel": platform.release(), "results": results}, indent=2))
    else:
        print(format_table(results))
    if args.plot:
        plot(results, args.plot)
    return 0
