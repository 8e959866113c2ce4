"""Zero-copy sends and buffer lifetime: ZeroCopySender, Ticket, BufferPool.

With ``MSG_ZEROCOPY`` (and with ``vmsplice``) the kernel keeps reading the
caller's memory after the system call returned. Python, meanwhile, is free to
resize a ``bytearray`` or hand a freed buffer's memory to the next object;
the kernel would then transmit whatever is there now. This package closes
that gap:

- **Pins.** Every buffer handed to :meth:`ZeroCopySender.sendall` or
  ``Pipe.vmsplice`` is pinned with ``ffi.from_buffer`` (the buffer export is
  held: a ``bytearray`` cannot be resized, ``BufferError``; the object
  cannot be freed). The pin belongs to the :class:`Ticket` the call returns
  and is released exactly once, when the ticket is done: when the kernel's
  completions cover every send id that referenced the buffer, or when the
  pipe's reader has consumed past the vmspliced bytes. Dropping the ticket
  does not release the pin early: the socket's record (or, for vmsplice,
  ``zcio._tickets``) keeps a reference to every ticket that is not done.

- **Completion tracking.** Each successful ``send()`` with ``MSG_ZEROCOPY``
  takes the next id of the socket's 32-bit counter (a partial send on a
  stream socket takes one; a failed send none). Completions are inclusive,
  coalesced ranges that may arrive out of order and wrap past ``2**32 - 1``;
  :class:`CompletionTracker` turns them into "these ids are done".

- **Per-socket state outlives the sender.** The id counter belongs to the
  socket, not to the sender, so zcio keeps one small record per socket
  (keyed by the socket's inode) holding the tracker and the tickets still in
  flight. A second sender on the same socket -- after the first was closed --
  continues the id sequence. Two open senders on one socket are refused.
  Do not mix ``zcio.send_zerocopy`` and a sender on one socket: the ids would
  no longer line up.

- **The graveyard.** :meth:`ZeroCopySender.close` flushes with a bounded
  wait. If completions still have not come (a stalled peer), the pins are
  *not* released: the socket's record, with its pending tickets, is parked
  in a process-wide graveyard and reaped later -- opportunistically by later
  calls into this package (a new sender, ``sendall``, ``flush``, ``close``),
  explicitly by :func:`reap_graveyard`, and once more (bounded, 1 s) at
  interpreter exit. A sender that is garbage-collected unclosed parks its
  record the same way, and warns (ResourceWarning). If the socket itself is
  closed while tickets are parked, their completions can never be read
  again, yet the kernel may still transmit the pages (a closed TCP socket
  keeps sending its queued data): those pins are then kept for the life of
  the process and counted as ``abandoned`` in :func:`graveyard_stats`. To
  avoid that, ``flush()`` (or ``close(timeout=...)`` long enough) before
  closing a socket whose peer may be slow.

- **ENOBUFS.** A zero-copy send fails with ENOBUFS when the socket's
  ancillary memory (``optmem_max``, which every not-yet-reaped notification
  counts against) or the locked-memory limit is exhausted. The sender reaps
  completions every ``reap_every`` (32) zero-copy sends, as the kernel's
  selftest does. On ENOBUFS with sends in flight it reaps and retries (waiting
  up to 50 ms for POLLERR when nothing was ready); with nothing in flight --
  or when that brief wait brought nothing -- it sends that chunk by plain
  copy: no notification can be waited for that might never come.

- **policy="auto".** Loopback and veth to a local socket always copy (the
  completions say ``COPIED``), so ``MSG_ZEROCOPY`` only adds work there.
  With ``policy="auto"`` a sender stops passing ``MSG_ZEROCOPY`` once
  :data:`AUTO_COPIED_LIMIT` (32) consecutive send ids were reported copied
  with no true zero-copy completion in between, or once
  :data:`AUTO_ENOBUFS_LIMIT` (8) consecutive ENOBUFS came with nothing in
  flight (a locked-memory limit too small for any send); from then on it
  sends by plain copy and its tickets are done at once. ``stats`` says so
  (``policy_switched_off``, ``switch_reason``); the decision lasts for the
  sender's life (a new sender on the socket starts afresh). ``"always"`` and
  ``"never"`` force the choice.

- **Threads and fork.** One thread at a time may call ``sendall`` on a
  sender (a second one gets RuntimeError); tickets may be polled and waited
  on from any thread, and whoever reaps finishes everyone's tickets. After
  ``os.fork()`` the child forgets the parent's records (reading their error
  queues would steal the parent's completions) and keeps any parked pins for
  good; do not use a parent's sender in the child.

:class:`BufferPool` hands out page-aligned buffers from one anonymous
``mmap`` and takes a buffer back only when its user released it *and* every
ticket referencing its memory (sender or vmsplice) is done -- the safe way to
reuse memory under zero-copy sends.

The rooms: :mod:`._tracker` (send ids), :mod:`._registry` (per-socket
records, the graveyard, fork), :mod:`._step` (one sendall as a step that
sends or says what to wait for), :mod:`.sender` (the blocking driver:
ZeroCopySender), :mod:`.aio` (the asyncio driver: AsyncZeroCopySender, also
in :mod:`zcio.aio`), :mod:`.bufpool` (BufferPool). Tickets are
:mod:`zcio._tickets`; vmsplice tickets live with ``Pipe`` in :mod:`zcio.pipes`.
"""
from __future__ import annotations

from .._tickets import Ticket
from ._registry import (
    AUTO_COPIED_LIMIT,
    AUTO_ENOBUFS_LIMIT,
    graveyard_stats,
    reap_graveyard,
)
from ._tracker import CompletionTracker
from .bufpool import BufferPool, PoolBuffer
from .sender import DEFAULT_THRESHOLD, ZeroCopySender

__all__ = [
    "AUTO_COPIED_LIMIT",
    "AUTO_ENOBUFS_LIMIT",
    "DEFAULT_THRESHOLD",
    "BufferPool",
    "CompletionTracker",
    "PoolBuffer",
    "Ticket",
    "ZeroCopySender",
    "graveyard_stats",
    "reap_graveyard",
]
