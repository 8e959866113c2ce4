"""The zcio command line: a thin client of the API, with one-line errors."""
from __future__ import annotations

import io
import json
import os
import pathlib
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import zcio
from zcio import bench
from zcio.cli import main
from zcio.cli.bench import format_table
from zcio.cli.info import format_features
from zcio.cli.loops import new_event_loop
from zcio.cli.progress import ProgressBar

WAIT = 60  # seconds: a bound for a child that misbehaves, never a timing assert


def run(*args: str, stdin: bytes = b"", **kw) -> subprocess.CompletedProcess:
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.run([sys.executable, "-m", "zcio", *args], input=stdin, timeout=120, check=False, **kw)


def one_line(text: str) -> str:
    assert text.endswith("\n") and text.count("\n") == 1, repr(text)
    assert "Traceback" not in text
    return text


# ------------------------------------------------------------------ commands


def test_help_lists_the_commands():
    out = run("--help")
    assert out.returncode == 0
    for cmd in (b"bench", b"copy", b"serve", b"proxy", b"info"):
        assert cmd in out.stdout


def test_the_console_script_and_python_m_are_one_cli():
    import importlib.metadata

    scripts = importlib.metadata.distribution("zcio").entry_points
    (script,) = [e for e in scripts if e.group == "console_scripts" and e.name == "zcio"]
    assert script.value == "zcio.cli:main"
    assert script.load() is main


def test_info_prints_features(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    f = zcio.features()
    assert "kernel" in text and f["kernel"] in text
    assert "SO_ZEROCOPY on TCP" in text
    assert text == format_features(f) + "\n"


def test_a_reader_that_left_gets_no_traceback():
    r, w = os.pipe()
    os.close(r)  # like `zcio info | head -0`
    try:
        out = run("info", stdout=w)
    finally:
        os.close(w)
    assert out.returncode == 1
    assert out.stderr == b""


def test_copy_file_to_file_keeps_mode(tmp_path):
    src = tmp_path / "s"
    src.write_bytes(os.urandom(300_000))
    os.chmod(src, 0o640)
    out = run("copy", str(src), str(tmp_path / "d"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "d").read_bytes() == src.read_bytes()
    assert os.stat(tmp_path / "d").st_mode & 0o777 == 0o640
    assert out.stderr == b""  # no progress bar when stderr is not a terminal


def test_copy_truncates_a_longer_destination(tmp_path, capsys):
    src, dst = tmp_path / "s", tmp_path / "d"
    src.write_bytes(b"short")
    dst.write_bytes(b"x" * 100_000)
    assert main(["copy", str(src), str(dst)]) == 0
    assert dst.read_bytes() == b"short"


def test_copy_stdin_to_stdout_with_count():
    data = os.urandom(200_000)
    out = run("copy", "--count", "150000", "-", "-", stdin=data)
    assert out.returncode == 0, out.stderr
    assert out.stdout == data[:150_000]


def test_copy_offset_and_progress(tmp_path, capsys):
    src = tmp_path / "s"
    src.write_bytes(b"0123456789" * 1000)
    assert main(["copy", "--offset", "5", "--progress", str(src), str(tmp_path / "d")]) == 0
    assert (tmp_path / "d").read_bytes() == src.read_bytes()[5:]
    err = capsys.readouterr().err
    assert "100.0%" in err and err.endswith("\n")


# ------------------------------------------------------ copy: the same file


def _same_file_refused(capsys, src: pathlib.Path, dst: str, data: bytes) -> None:
    assert main(["copy", str(src), dst]) == 1
    err = one_line(capsys.readouterr().err)
    assert err.startswith("zcio copy: ") and "are the same file" in err
    assert src.read_bytes() == data  # untouched: not truncated, not appended to


@pytest.mark.parametrize("how", ["path", "hard link", "symlink", "dot path"])
def test_copy_refuses_the_same_file_like_cp(tmp_path, capsys, how):
    data = os.urandom(100_000)
    src = tmp_path / "x"
    src.write_bytes(data)
    if how == "path":
        dst = str(src)
    elif how == "hard link":
        os.link(src, tmp_path / "link")
        dst = str(tmp_path / "link")
    elif how == "symlink":
        os.symlink(src, tmp_path / "sym")
        dst = str(tmp_path / "sym")
    else:
        dst = str(tmp_path / "." / "x")
    _same_file_refused(capsys, src, dst, data)


def test_copy_refuses_the_same_file_through_proc_self_fd(tmp_path, capsys):
    data = os.urandom(10_000)
    src = tmp_path / "x"
    src.write_bytes(data)
    fd = os.open(src, os.O_WRONLY | os.O_APPEND)
    try:
        _same_file_refused(capsys, src, f"/proc/self/fd/{fd}", data)
    finally:
        os.close(fd)


def test_copy_refuses_stdout_that_is_the_source(tmp_path):
    data = os.urandom(10_000)
    src = tmp_path / "x"
    src.write_bytes(data)
    with open(src, "ab") as appended:  # zcio copy x - >> x
        out = run("copy", str(src), "-", stdout=appended, stderr=subprocess.PIPE)
    assert out.returncode == 1
    assert "are the same file" in one_line(out.stderr.decode())
    assert src.read_bytes() == data


# ------------------------------------------------------- one-line errors


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["copy", "--count", "-1", "a", "b"], "argument --count: must be >= 0, got -1"),
        (["copy", "--offset", "-5", "a", "b"], "argument --offset: must be >= 0, got -5"),
        (["copy", "--offset", str(1 << 63), "a", "b"], "argument --offset: must be at most 2**63-1"),
        (["copy", "--count", "ten", "a", "b"], "argument --count: not a whole number: 'ten'"),
        (["copy", "--timeout", "-1", "a", "b"], "argument --timeout: must be a finite number >= 0"),
        (["copy", "--timeout", "nan", "a", "b"], "argument --timeout: must be a finite number >= 0"),
        (["copy", "a"], "the following arguments are required: DST"),
        (["bench", "--rounds", "-1"], "argument --rounds: must be 1 or more, got -1"),
        (["bench", "--rounds", "0"], "argument --rounds: must be 1 or more, got 0"),
        (["proxy", "--max-connections", "0", "1", "2"], "argument --max-connections: must be 1 or more"),
        (["nosuchcommand"], "invalid choice: 'nosuchcommand'"),
    ],
)
def test_bad_numbers_and_usage_are_one_line_and_exit_2(capsys, argv, expected):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith(f"zcio {argv[0]}: " if argv[0] != "nosuchcommand" else "zcio: ")
    assert expected in err


def test_missing_source_fails_cleanly(tmp_path):
    out = run("copy", str(tmp_path / "missing"), str(tmp_path / "d"))
    assert out.returncode == 1
    err = one_line(out.stderr.decode())
    assert err == f"zcio copy: '{tmp_path / 'missing'}': No such file or directory\n"
    assert not (tmp_path / "d").exists()


def test_a_full_device_is_one_line_with_the_accounting(tmp_path):
    src = tmp_path / "s"
    src.write_bytes(os.urandom(100_000))
    out = run("copy", str(src), "/dev/full")
    assert out.returncode == 1
    err = one_line(out.stderr.decode())
    assert err.startswith("zcio copy: No space left on device after 0 bytes"), err


def test_a_directory_as_source_is_one_line(tmp_path):
    out = run("copy", str(tmp_path), str(tmp_path / "d"))
    assert out.returncode == 1
    assert "Is a directory" in one_line(out.stderr.decode())


def test_an_offset_on_a_pipe_is_one_line():
    out = run("copy", "--offset", "5", "-", "-", stdin=b"hello, world")
    assert out.returncode == 1
    assert out.stdout == b""
    one_line(out.stderr.decode())


# ------------------------------------------------------------- Ctrl-C


def _open_writer_when_read(path: pathlib.Path, proc: subprocess.Popen) -> int:
    """Open the FIFO for writing once ``proc`` opened it for reading."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            assert time.monotonic() < deadline, "zcio copy never opened its source"
            time.sleep(0.01)
            continue
        os.set_blocking(fd, True)
        return fd


def _read_exactly(fd: int, n: int) -> bytes:
    got = b""
    while len(got) < n:
        ready, _, _ = select.select([fd], [], [], WAIT)
        assert ready, f"zcio copy delivered {len(got)} of {n} bytes"
        chunk = os.read(fd, n - len(got))
        assert chunk, "EOF before all bytes arrived"
        got += chunk
    return got


def _wait_until_asleep(proc: subprocess.Popen) -> None:
    """Wait until ``proc`` sleeps in a system call.

    A SIGINT that lands while the copy runs Python code between two kernel
    calls is only acted on after the next call returns, and with blocking fds
    that call may wait for input that never comes; this test is about what
    the command says once interrupted, so it signals a sleeping process.
    """
    deadline = time.monotonic() + WAIT
    while True:
        with open(f"/proc/{proc.pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
        if state == "S":
            return
        assert time.monotonic() < deadline, f"zcio copy never went to sleep (state {state})"
        time.sleep(0.001)


def test_ctrl_c_in_copy_reports_the_bytes_copied(tmp_path):
    """A FIFO source that stays open: once the bytes written so far came out
    of the (FIFO) destination, SIGINT must end the copy with one line that
    says how many, and exit 130."""
    src, dst = tmp_path / "in", tmp_path / "out"
    os.mkfifo(src)
    os.mkfifo(dst)
    reader = os.open(dst, os.O_RDONLY | os.O_NONBLOCK)  # so that zcio's open does not wait
    # `zcio copy SRC DST`, with Python's SIGINT handler installed even if this
    # process was started with SIGINT ignored (as background jobs are)
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from zcio.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, "copy", str(src), str(dst)], stderr=subprocess.PIPE)
    writer = -1
    try:
        writer = _open_writer_when_read(src, proc)
        data = os.urandom(300_000)  # more than the two FIFOs hold: it must flow
        feeder = threading.Thread(target=os.write, args=(writer, data))
        feeder.start()
        assert _read_exactly(reader, len(data)) == data
        feeder.join()
        _wait_until_asleep(proc)  # the copy now waits in the kernel for more input
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT) == 130
        err = one_line(proc.stderr.read().decode())
        assert err == f"zcio copy: interrupted after {len(data)} bytes\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        os.close(reader)
        if writer >= 0:
            os.close(writer)


# --------------------------------------------------------- progress bar


def screen(text: str) -> list[str]:
    """What a terminal shows after ``text``: \\r returns to column 0 and
    later characters overwrite earlier ones."""
    rows, row, col = [], [], 0
    for ch in text:
        if ch == "\r":
            col = 0
        elif ch == "\n":
            rows.append("".join(row).rstrip())
            row, col = [], 0
        else:
            if col < len(row):
                row[col] = ch
            else:
                row.append(ch)
            col += 1
    if row:
        rows.append("".join(row).rstrip())
    return rows


def test_progress_bar_leaves_nothing_of_a_longer_line():
    out, now = io.StringIO(), [0.0]
    bar = ProgressBar(out, None, clock=lambda: now[0])
    now[0] = 1.0
    bar(3 << 30)  # "3.0 GiB  3.0 GiB/s": a long line
    now[0] = 1000.0
    bar(3 << 30)  # the rate fell: "3.0 GiB  3.1 MiB/s", as long
    now[0] = 10_000_000.0
    bar(3 << 30)  # "3.0 GiB  322 B/s": shorter
    bar.close()
    assert screen(out.getvalue()) == ["3.0 GiB  322 B/s"]


def test_progress_bar_with_a_total_draws_at_most_hz_and_always_the_end():
    out, now = io.StringIO(), [0.0]
    bar = ProgressBar(out, 1000, hz=10, clock=lambda: now[0])
    now[0] = 1.0
    bar(100)
    now[0] = 1.05
    bar(200)  # within 0.1 s of the last draw: skipped
    assert "200 B" not in out.getvalue()
    bar(1000)  # the end is always drawn
    bar.close()
    (line,) = screen(out.getvalue())
    assert line.startswith("[" + "#" * 30 + "] 100.0%  1000 B / 1000 B")
    assert "left" not in line


@pytest.mark.parametrize("width", [200, 80, 60, 40, 20])
def test_progress_line_never_wraps(width):
    bar = ProgressBar(io.StringIO(), 3 << 30)
    line = bar.render(1 << 30, 10.0, width)
    assert len(line) < width and "33.3%" in line
    assert ("[" in line) == (width >= 60)


def test_progress_bar_close_before_any_draw_writes_nothing():
    out = io.StringIO()
    ProgressBar(out, 10).close()
    assert out.getvalue() == ""


# ----------------------------------------------------------------- loops


def test_uvloop_asked_for_but_missing_says_so_once(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    loop, kind = new_event_loop(True, "zcio proxy")
    loop.close()
    assert kind == "asyncio"
    assert one_line(capsys.readouterr().err) == "zcio proxy: uvloop is not installed; using asyncio's loop\n"


def test_the_library_prints_nothing_about_loops():
    import zcio.aio

    assert not hasattr(zcio.aio, "new_event_loop")


# ----------------------------------------------------------------- bench


def test_bench_json_small_call_cases():
    out = run("bench", "--quick", "--rounds", "2", "--case", "ping-pong", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    rows = doc["results"]
    z = next(r for r in rows if r["role"] == "zcio")
    assert z["ns_per_call"] > 0 and z["samples"] == 2
    if hasattr(os, "splice"):
        assert {r["label"] for r in rows} == {"zcio.splice", "os.splice"}
        assert z["time_ratio"] > 0 and len(z["speed_ratio_rounds"]) == 2
    else:  # os.splice is 3.10+: no baseline to compare with
        assert {r["label"] for r in rows} == {"zcio.splice"}
        assert "time_ratio" not in z


def test_bench_unknown_case_is_an_error():
    out = run("bench", "--case", "no such case")
    assert out.returncode == 2
    one_line(out.stderr.decode())


def test_ratios_are_against_the_stdlib_row_round_by_round():
    rows = [
        bench.Row("c", "bytes", "zcio", "z", [bench.Sample(1.0, 0.5, 2 << 30), bench.Sample(1.0, 1.0, 2 << 30)]),
        bench.Row("c", "bytes", "stdlib", "s", [bench.Sample(2.0, 2.0, 2 << 30), bench.Sample(4.0, 2.0, 2 << 30)]),
    ]
    z, s = bench.ratios(rows)
    assert z["gib_per_s"] == 2.0 and s["gib_per_s"] == 0.75
    assert z["speed_ratio"] == pytest.approx(8 / 3)
    assert z["speed_ratio_rounds"] == [2.0, 4.0]
    assert z["cpu_ratio_rounds"] == [0.25, 0.5]
    assert s["speed_ratio_rounds"] == [1.0, 1.0]
    assert "(baseline)" in format_table([z, s])


def test_run_cases_interleaves_and_reverses_every_other_round():
    import contextlib

    order = []

    def contender(name):
        def go():
            order.append(name)
            return bench.Sample(1.0, 1.0, 1)

        return bench.Contender("zcio" if name == "a" else "stdlib", name, go)

    @contextlib.contextmanager
    def setup(tmp, quick):
        yield [contender("a"), contender("b")]

    rows = bench.run_cases([bench.Case("c", "calls", setup)], rounds=3)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-ups, then A B, B A, A B
    assert [len(r.samples) for r in rows] == [3, 3]
    with pytest.raises(ValueError):
        bench.run_cases([bench.Case("c", "calls", setup)], rounds=0)


@pytest.mark.parametrize("where", ["missing dir", "a directory"])
def test_plot_path_is_checked_before_the_run(tmp_path, where):
    target = tmp_path / "nope" / "chart.png" if where == "missing dir" else tmp_path
    out = run("bench", "--case", "ping-pong", "--rounds", "1", "--plot", str(target))
    assert out.returncode == 2
    err = one_line(out.stderr.decode())
    assert err.startswith("zcio bench: argument --plot: ")
    assert "ping-pong" not in err and out.stdout == b""  # nothing ran


def test_plot_without_matplotlib_says_so_before_the_run(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["matplotlib"] = None  # as if not installed
        from zcio.cli import main
        sys.exit(main(["bench", "--case", "ping-pong", "--rounds", "1", "--plot", {str(tmp_path / "c.png")!r}]))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, check=False)
    assert out.returncode == 2
    assert one_line(out.stderr.decode()) == "zcio bench: --plot: needs matplotlib: pip install 'zcio[plot]'\n"
    assert out.stdout == b"" and not (tmp_path / "c.png").exists()


def test_plot_draws_a_png(tmp_path):
    pytest.importorskip("matplotlib")  # the optional `plot` extra
    results = bench.ratios(
        [
            bench.Row("bytes case", "bytes", "zcio", "z", [bench.Sample(1.0, 0.5, 1 << 30)] * 3),
            bench.Row("bytes case", "bytes", "stdlib", "s", [bench.Sample(2.0, 1.0, 1 << 30)] * 3),
            bench.Row("bytes case", "bytes", "peer", "p", [bench.Sample(50.0, 40.0, 1 << 30)] * 3),
            bench.Row("calls case", "calls", "zcio", "z", [bench.Sample(1.0, 1.0, 100)] * 3),
            bench.Row("calls case", "calls", "stdlib", "s", [bench.Sample(1.0, 1.0, 120)] * 3),
            bench.Row("no baseline", "calls", "zcio", "z", [bench.Sample(1.0, 1.0, 100)] * 3),
        ]
    )
    path = tmp_path / "p.png"
    # matplotlib keeps its font files open: draw in a child, not in this process
    code = "import json, sys; from zcio.cli.plots import plot; plot(json.load(sys.stdin), sys.argv[1])"
    out = subprocess.run([sys.executable, "-c", code, str(path)], input=json.dumps(results).encode(),
                         capture_output=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------ the rooms


def test_importing_the_library_loads_no_cli():
    code = textwrap.dedent(
        """
        import importlib, pkgutil, sys, zcio
        def load(package):
            for m in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
                if m.name not in ("zcio.cli", "zcio.bench", "zcio.__main__"):
                    module = importlib.import_module(m.name)
                    if m.ispkg:
                        load(module)
        load(zcio)
        print(sorted(n for n in sys.modules if n.startswith(("zcio.cli", "zcio.bench"))))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "[]\n"
