"""The zcio command line: a thin client of the API."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import zcio
from zcio import bench
from zcio.__main__ import format_features, main


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zcio", *args], input=stdin, capture_output=True, timeout=120
    )


def test_help_lists_the_commands():
    out = run("--help")
    assert out.returncode == 0
    for cmd in (b"bench", b"copy", b"info"):
        assert cmd in out.stdout


def test_info_prints_features(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    f = zcio.features()
    assert "kernel" in text and f["kernel"] in text
    assert "SO_ZEROCOPY on TCP" in text
    assert text == format_features(f) + "\n"


def test_copy_file_to_file_keeps_mode(tmp_path):
    src = tmp_path / "s"
    src.write_bytes(os.urandom(300_000))
    os.chmod(src, 0o640)
    out = run("copy", str(src), str(tmp_path / "d"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "d").read_bytes() == src.read_bytes()
    assert os.stat(tmp_path / "d").st_mode & 0o777 == 0o640
    assert out.stderr == b""  # no progress bar when stderr is not a terminal


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
    assert "100.0%" in err


def test_copy_missing_source_fails_cleanly(tmp_path):
    out = run("copy", str(tmp_path / "missing"), str(tmp_path / "d"))
    assert out.returncode == 1
    assert b"No such file" in out.stderr
    assert not (tmp_path / "d").exists()


def test_bench_json_small_call_cases():
    out = run("bench", "--quick", "--rounds", "2", "--case", "ping-pong", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    rows = doc["results"]
    z = next(r for r in rows if r["role"] == "zcio")
    assert z["ns_per_call"] > 0 and z["samples"] == 2
    if hasattr(os, "splice"):
        assert {r["label"] for r in rows} == {"zcio.splice", "os.splice"}
        assert z["time_ratio"] > 0
    else:  # os.splice is 3.10+: no baseline to compare with
        assert {r["label"] for r in rows} == {"zcio.splice"}
        assert "time_ratio" not in z


def test_bench_unknown_case_is_an_error():
    out = run("bench", "--case", "no such case")
    assert out.returncode == 2


def test_ratios_are_against_the_stdlib_row():
    rows = [
        bench.Row("c", "bytes", "zcio", "z", [bench.Sample(1.0, 0.5, 2 << 30)]),
        bench.Row("c", "bytes", "stdlib", "s", [bench.Sample(2.0, 2.0, 2 << 30)]),
    ]
    z, s = bench.ratios(rows)
    assert z["gib_per_s"] == 2.0 and s["gib_per_s"] == 1.0
    assert z["speed_ratio"] == 2.0
    assert z["cpu_ratio"] == 0.25
    assert "(baseline)" in bench.format_table([z, s])


def test_plot_writes_a_png_or_says_what_is_missing(tmp_path):
    rows = bench.ratios(
        [
            bench.Row("c", "calls", "zcio", "z", [bench.Sample(1.0, 1.0, 100)]),
            bench.Row("c", "calls", "stdlib", "s", [bench.Sample(1.0, 1.0, 120)]),
        ]
    )
    path = tmp_path / "p.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit, match=r"zcio\[plot\]"):
            bench.plot(rows, str(path))
    else:
        bench.plot(rows, str(path))
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
