"""Process limits the servers need lifted."""
from __future__ import annotations

import resource

__all__ = ["raise_fd_limit"]


def raise_fd_limit(needed: int) -> int:
    """Lift the soft RLIMIT_NOFILE toward ``needed`` (at most the hard limit).

    A server for N connections needs about 2N fds (a relay) or N plus the
    files it serves; the usual soft limit of 1024 would make it fail with
    EMFILE long before its own bound.

    Returns:
        The soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft
