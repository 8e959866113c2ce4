"""The first release's name for :mod:`zcio.http` (``FileServer``, ``serve``).

Kept so that ``from zcio.serve import FileServer`` goes on working; new code
imports from :mod:`zcio.http`.
"""
from __future__ import annotations

from .http import FileServer, serve

__all__ = ["FileServer", "serve"]
