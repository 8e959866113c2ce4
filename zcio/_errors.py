"""zcio's exceptions.

Each refines a builtin and also inherits :class:`ZcioError`, so callers can
catch either the builtin they already handle or everything zcio raises.
"""
from __future__ import annotations


class ZcioError(Exception):
    """Base class of the exceptions defined by zcio."""
