"""cffi builder for zcio's C core (API / out-of-line mode).

The cdef is csrc/zcio.h and the compiled source is csrc/zcio.c; the module it
produces is ``zcio._zcio``, which users never import directly. The package
version is stamped into the extension so that a stale build fails at import.
"""
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _read(*parts: str) -> str:
    with open(os.path.join(*parts), encoding="utf-8") as f:
        return f.read()


def _version() -> str:
    text = _read(ROOT, "zcio", "_version.py")
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    if match is None:
        raise RuntimeError("zcio/_version.py has no __version__ line")
    return match.group(1)


ffibuilder = FFI()
ffibuilder.cdef(_read(HERE, "zcio.h"))
ffibuilder.set_source(
    "zcio._zcio",
    _read(HERE, "zcio.c"),
    define_macros=[("ZCIO_BUILD_VERSION", '"%s"' % _version())],
    extra_compile_args=["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
