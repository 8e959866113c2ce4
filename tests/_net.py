"""Network facts and socket helpers shared by the tests."""
from __future__ import annotations

import socket

import pytest


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


HAS_IPV6 = _ipv6_loopback()
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback (::1) in this environment")


def read_to_eof(s: socket.socket) -> bytes:
    """Everything ``s`` receives until the peer's end of stream."""
    parts = []
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
