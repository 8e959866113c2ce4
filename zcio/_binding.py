"""Loads the compiled C core and checks that it matches this package.

``ffi`` and ``lib`` are the only objects typed ``Any`` in zcio; every other
module reaches the C core through :mod:`zcio.lowlevel` or this module.
"""
from __future__ import annotations

import sys
from typing import Any

from ._version import __version__

if not sys.platform.startswith("linux"):
    raise ImportError(
        "zcio supports Linux only: it is built on Linux system calls "
        "(splice, tee, vmsplice, sendfile, copy_file_range, MSG_ZEROCOPY); "
        f"this is {sys.platform!r}"
    )

try:
    from ._zcio import ffi as _ffi  # type: ignore[import-not-found]
    from ._zcio import lib as _lib
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "zcio's C extension (zcio._zcio) is not built. Install zcio with "
        "'pip install .' (or 'pip install -e .') so that cffi compiles csrc/; "
        "this needs a C compiler and the Python headers."
    ) from exc

ffi: Any = _ffi
lib: Any = _lib

_built = ffi.string(lib.zcio_build_version()).decode("ascii")
if _built != __version__:  # pragma: no cover - depends on the install
    raise ImportError(
        f"zcio's C extension was built for version {_built} but the Python "
        f"package is {__version__}: rebuild it with 'pip install .'"
    )
