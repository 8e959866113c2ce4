"""The C-facing side of :mod:`zcio.hub`: one hub's engine (``_Core``) and the
result queues (sinks) through which relays report back.

The engine threads never touch Python. Each relay's outcome comes back as a
record in a sink, a queue in C with an eventfd: the collector thread of
``RelayHub.relay``'s futures blocks on one (without the GIL), and each event
loop that awaits relays reads its own (:class:`_LoopSink`).
"""
from __future__ import annotations

import errno
import itertools
import os
import socket
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Protocol, Tuple

from ._binding import ffi, lib
from ._errors import transfer_error
from .lowlevel import _raise, _refuse_tls

if TYPE_CHECKING:  # pragma: no cover
    import asyncio

_BATCH = 64
_NEG_ESHUTDOWN = -errno.ESHUTDOWN

Outcome = Tuple[Optional[Tuple[int, int]], Optional[BaseException]]
Waiter = Callable[[Outcome], None]


def _pending(rec: Any, i: int) -> bytes:
    n = int(rec.pending_len[i])
    if n <= 0 or rec.pending[i] == ffi.NULL:
        return b""
    return bytes(ffi.buffer(rec.pending[i], n))


def _outcome(rec: Any) -> Outcome:
    """A relay record as (result, None) or (None, exception)."""
    relayed = (int(rec.transferred[0]), int(rec.transferred[1]))
    err = int(rec.err)
    if err == 0:
        return relayed, None
    pendings = (_pending(rec, 0), _pending(rec, 1))
    d = 1 if rec.err_dir else 0
    if err == errno.ECONNABORTED:
        message = "relay aborted by close()"
    elif err == errno.ECANCELED:
        message = "relay cancelled"
    else:
        message = f"relay {'b to a' if d else 'a to b'}: {os.strerror(err)}"
    exc = transfer_error(err, relayed[d], pendings[d], message)
    exc.relayed = relayed  # type: ignore[attr-defined]
    exc.pendings = pendings  # type: ignore[attr-defined]
    return None, exc


def _collect(ptr: Any, out: Any, timeout_ms: int) -> Tuple[int, List[Any]]:
    """Records waiting in a sink, each copied out and freed in C."""
    n = lib.zcio_sink_collect(ptr, out, _BATCH, timeout_ms)
    records = []
    for i in range(max(n, 0)):
        rec = out[i]
        records.append(
            (int(rec.kind), int(rec.id), _outcome(rec) if rec.kind == lib.ZCIO_REC_RELAY else None,
             int(rec.err), bytes(ffi.buffer(rec.peer, rec.peer_len)))
        )
        lib.zcio_result_free(ffi.addressof(out, i))
    return n, records


class _Listening(Protocol):
    """What a core asks of the listeners accepting through it (zcio.hub's)."""

    def finish(self) -> None: ...


def _stream_socket(sock: Any, name: str) -> int:
    _refuse_tls(sock)
    if not isinstance(sock, socket.socket):
        raise TypeError(f"{name} must be a socket.socket, not {type(sock).__name__}")
    fd = sock.fileno()
    if fd < 0:
        raise ValueError(f"{name} is closed")
    if sock.type != socket.SOCK_STREAM:
        raise ValueError(f"{name} must be a stream socket")
    return fd


class _Sink:
    """A C result queue and the waiters of the relays that report to it."""

    def __init__(self) -> None:
        out = ffi.new("zcio_sink **")
        n = lib.zcio_sink_new(out)
        if n < 0:
            _raise(-n)
        self.ptr = out[0]
        self.pid = os.getpid()
        self.fd: int = lib.zcio_sink_fd(self.ptr)
        self.waiters: Dict[int, Waiter] = {}
        self.out = ffi.new("zcio_relay_result[]", _BATCH)

    def dispatch(self, records: List[Any]) -> None:
        for _, rid, outcome, _, _ in records:
            waiter = self.waiters.pop(rid, None)
            if waiter is not None and outcome is not None:
                waiter(outcome)

    def release(self) -> None:
        ptr, self.ptr = self.ptr, None
        # In a forked child the parent's threads may have held its lock at
        # fork time: leave its C side alone (a few bytes and an eventfd).
        if ptr is not None and self.pid == os.getpid():
            lib.zcio_sink_release(ptr)


class _LoopSink(_Sink):
    """Results for one event loop: its reader on the sink's eventfd resolves
    the loop's futures. Lives while relays of that loop are in flight."""

    def __init__(self, core: "_Core", loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.core = core
        self.loop = loop
        try:
            loop.add_reader(self.fd, self.drain)
        except BaseException:
            self.release()
            raise

    def drain(self) -> None:
        while self.ptr is not None:
            n, records = _collect(self.ptr, self.out, 0)
            self.dispatch(records)
            if n < _BATCH:
                break
        if not self.waiters:
            self.close()

    def close(self) -> None:
        if self.ptr is None:
            return
        with self.core.lock:
            if self.core.loop_sinks.get(self.loop) is self:
                del self.core.loop_sinks[self.loop]
        if not self.loop.is_closed():
            self.loop.remove_reader(self.fd)
        self.release()


class _Core:
    """What a RelayHub's finalizer and threads hold (never the hub itself)."""

    def __init__(self, ptr: Any, threads: int) -> None:
        self.ptr = ptr
        self.threads = threads
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.close_lock = threading.Lock()
        self.state = "open"  # open -> closing -> closed; or forked
        self.ids = itertools.count(1)
        self.sync: Optional[_Sink] = None
        self.collector: Optional[threading.Thread] = None
        self.loop_sinks: Dict[asyncio.AbstractEventLoop, _LoopSink] = {}
        self.final_stats: Optional[Dict[str, Any]] = None
        self.listeners: weakref.WeakSet[_Listening] = weakref.WeakSet()

    def check_open(self) -> None:
        if self.state == "forked" or self.pid != os.getpid():
            raise RuntimeError("this RelayHub belongs to the parent process; create one in the child")
        if self.state != "open":
            raise RuntimeError("the RelayHub is closed")

    # -- relays ---------------------------------------------------------
    def submit(
        self, a: socket.socket, b: socket.socket, half_close: bool, sink: _Sink, waiter: Waiter
    ) -> Tuple[int, int]:
        fa, fb = _stream_socket(a, "a"), _stream_socket(b, "b")
        if fa == fb:
            raise ValueError("a and b must be different sockets")
        with self.lock:
            self.check_open()
            rid = next(self.ids)
            sink.waiters[rid] = waiter
            engine = lib.zcio_hub_relay(self.ptr, fa, fb, 1 if half_close else 0, rid, sink.ptr)
            if engine < 0:
                del sink.waiters[rid]
                if engine == _NEG_ESHUTDOWN:
                    raise RuntimeError("the RelayHub is closed")
                _raise(-engine)
        # The hub relays duplicates of its own: the caller's fds are closed
        # here (an exception before then leaves the objects open, never two
        # owners of one fd number).
        a.close()
        b.close()
        return engine, rid

    def cancel(self, engine: int, rid: int) -> None:
        with self.lock:
            if self.state == "open" and self.pid == os.getpid():
                lib.zcio_hub_cancel(self.ptr, engine, rid)

    def sync_sink(self) -> _Sink:
        """The sink of RelayHub.relay()'s futures (its collector starts now)."""
        if self.sync is None:
            sink = _Sink()
            thread = threading.Thread(target=self._collect, args=(sink,), name="zcio-hub-collector", daemon=True)
            thread.start()
            self.sync, self.collector = sink, thread
        return self.sync

    def _collect(self, sink: _Sink) -> None:
        out = ffi.new("zcio_relay_result[]", _BATCH)
        try:
            while True:
                n, records = _collect(sink.ptr, out, -1)  # blocks without the GIL
                if n == _NEG_ESHUTDOWN:
                    return
                if n < 0:
                    _raise(-n)
                sink.dispatch(records)
        finally:
            sink.release()

    def loop_sink(self, loop: asyncio.AbstractEventLoop) -> _LoopSink:
        with self.lock:
            sink = self.loop_sinks.get(loop)
        if sink is None:
            sink = _LoopSink(self, loop)
            with self.lock:
                self.loop_sinks[loop] = sink
        return sink

    # -- the rest -------------------------------------------------------
    def stats(self) -> Dict[str, Any]:
        with self.lock:
            if self.final_stats is not None:
                return self.final_stats
            if self.state == "forked" or self.pid != os.getpid():
                raise RuntimeError("this RelayHub belongs to the parent process")
            s = ffi.new("zcio_hub_stats *")
            lib.zcio_hub_get_stats(self.ptr, s)
            per_thread = [lib.zcio_hub_thread_active(self.ptr, i) for i in range(self.threads)]
        return {
            "threads": s.threads,
            "active_per_thread": per_thread,
            "relays": {"started": s.relays_started, "active": s.relays_active,
                       "ended": s.relays_ended, "failed": s.relays_failed},
            "bytes": {"copy": s.bytes_copied, "splice": s.bytes_spliced},
            "reads": {"copy": s.copy_reads, "splice": s.splice_reads},
            "switches": {"to_splice": s.to_splice, "to_copy": s.to_copy},
            "buffers": s.buffers,
            "pipes": {"created": s.pipes_created, "destroyed": s.pipes_destroyed,
                      "in_use": s.pipes_in_use, "free": s.pipes_free,
                      "exhausted": s.pipes_exhausted, "max": s.pipes_max, "size": s.pipe_size},
            "accepted": s.accepted,
            "connect_failed": s.connect_failed,
        }

    def close(self) -> None:
        with self.lock:
            if self.state != "open" and threading.current_thread() is self.collector:
                return  # a future's callback: the close in progress (or done) stands
        with self.close_lock:  # a second close() waits for the first
            with self.lock:
                if self.state == "open" and self.pid != os.getpid():
                    self.state = "forked"
                done = self.state != "open"
                if not done:
                    self.state = "closing"  # relay() refuses from now on
            if not done:
                self._close()
        # A close() made by a future's callback returns before its collector
        # thread ends and releases its sink: every close() waits for that.
        self._join_collector()

    def _close(self) -> None:
        """End the relays, the collector and the engines; free the C hub."""
        lib.zcio_hub_close(self.ptr)  # every relay ended, records posted
        sync, collector = self.sync, self.collector
        if sync is not None and collector is not None:
            lib.zcio_sink_shutdown(sync.ptr)  # the collector drains, then ends
            self._join_collector()
        for sink in list(self.loop_sinks.values()):
            if sink.loop.is_closed():  # nobody will drain it
                sink.close()
        stats = self.stats()
        with self.lock:
            for listener in list(self.listeners):
                listener.finish()
            self.final_stats = stats
            self.state = "closed"
            lib.zcio_hub_free(self.ptr)
            self.ptr = None

    def _join_collector(self) -> None:
        """Wait until the collector thread ended (and released its sink),
        unless this is that thread."""
        collector = self.collector
        if collector is not None and collector is not threading.current_thread():
            collector.join()

    def forget_in_child(self) -> None:
        # The engine threads and the parent's relays are not ours; their C
        # state stays allocated (the C fork handler closed its fds).
        self.state = "forked"
        self.lock = threading.Lock()
        self.close_lock = threading.Lock()
        self.sync = None
        self.collector = None
        self.loop_sinks = {}


#: Every live core, so that a forked child can disown its parent's.
cores: "weakref.WeakSet[_Core]" = weakref.WeakSet()


def _forget_in_child() -> None:
    for core in list(cores):
        core.forget_in_child()


os.register_at_fork(after_in_child=_forget_in_child)
