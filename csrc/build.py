"""cffi builder for zcio's C core (API / out-of-line mode).

The cdef is csrc/zcio.h plus csrc/hub.h; the compiled sources are csrc/zcio.c
and csrc/hub.c (the relay engine, which includes hub.h). The module it
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
ffibuilder.cdef(_read(HERE, "hub.h"))
ffibuilder.set_source(
    "zcio._zcio",
    _read(HERE, "zcio.c") + '\n#include "hub.h"\n',
    # Relative to the build's working directory (setuptools wants them so).
    sources=[os.path.relpath(os.path.join(HERE, "hub.c"))],
    include_dirs=[os.path.relpath(HERE)],
    define_macros=[("ZCIO_BUILD_VERSION", '"%s"' % _version())],
    extra_compile_args=["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-pthread"],
    extra_link_args=["-pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
