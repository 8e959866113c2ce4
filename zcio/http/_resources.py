"""What the file server serves: confined opens, directory listings, MIME types.

Every file is opened relative to an fd of the root directory, so that
nothing outside the root can come out:

- where the kernel has ``openat2`` (Linux 5.6), one call with
  ``RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`` resolves the whole path and
  fails with EXDEV if any step -- a ``..`` or a symlink -- would leave the
  root;
- elsewhere (an older kernel, a seccomp filter that refuses it) the path is
  walked one directory at a time from the root's fd with ``O_NOFOLLOW`` at
  each step, so a symlink on the way stops the walk (ELOOP or ENOTDIR);
- either way, a path that meets a symlink leading out (EXDEV), an absolute
  symlink, or a symlink the walk refused takes the slow path: the whole
  path is resolved with ``os.path.realpath`` and served only if
  ``os.path.commonpath`` puts it under the root.

A symlink that stays inside the root is followed; one that leads out gives
403, as does anything that is not a regular file or a directory.
"""
from __future__ import annotations

import errno
import html
import mimetypes
import os
import stat
import struct
import urllib.parse

from .._binding import ffi, lib
from ._request import HttpError

__all__ = ["Root", "display", "facts", "open_error"]

_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Compressed files are served as what they are, not with a Content-Encoding.
_ENCODED_TYPES = {"gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz"}
_MAX_TYPES = 1024


def open_error(err: int | None) -> HttpError:
    """The answer for an errno met while opening a file."""
    if err in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
        return HttpError(404)
    if err in (errno.EACCES, errno.EPERM, errno.ELOOP, errno.ENXIO, errno.ENODEV, errno.EWOULDBLOCK,
               errno.EXDEV):
        return HttpError(403)
    if err in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
        return HttpError(503)
    return HttpError(500)


def display(name: bytes) -> str:
    """A file name as text (undecodable bytes replaced)."""
    return name.decode("utf-8", "replace")


_open_beneath = lib.zcio_open_beneath  # (dirfd, path, flags) -> fd or -errno
_open_stat = lib.zcio_open_stat  # (dirfd, path, flags, int64_t[5]) -> fd or -errno
_RECORD = struct.Struct("=5q")  # what zcio_open_stat writes


def facts(record: bytes | bytearray) -> tuple[int, int, int, int, int]:
    """``(st_mode, st_ino, st_size, st_mtime_ns, st_ctime_ns)`` of a record
    from :meth:`Root.lookup`."""
    mode, ino, size, mtime_ns, ctime_ns = _RECORD.unpack(record)
    return mode, ino, size, mtime_ns, ctime_ns


class Root:
    """The served directory: confined opens under it, listings, MIME types.

    Owns an ``O_PATH`` fd of the directory between :meth:`open` and
    :meth:`close`.

    Args:
        directory: the directory (symlinks in its own path are resolved once).

    Raises:
        FileNotFoundError, NotADirectoryError: ``directory`` is not one.
    """

    def __init__(self, directory: os.PathLike[str] | str) -> None:
        root = os.path.realpath(os.fsencode(directory))
        if not os.path.isdir(root):
            err = errno.ENOENT if not os.path.exists(root) else errno.ENOTDIR
            raise OSError(err, os.strerror(err), os.fsdecode(directory))
        self.path = root
        self.fd = -1
        self.beneath = False  # openat2 works here
        self._record = bytearray(_RECORD.size)  # filled by zcio_open_stat, through _facts
        self._facts = ffi.from_buffer("int64_t[]", self._record)
        self._types: dict[str, str] = {}

    def open(self) -> None:
        """Take the root's fd and find out whether openat2 works here."""
        mimetypes.init()  # reads the system's tables now rather than on a first request
        self.fd = os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        fd = _open_beneath(self.fd, b".", _OPEN_FLAGS)
        self.beneath = fd >= 0
        if fd >= 0:
            os.close(fd)

    def close(self) -> None:
        """Release the root's fd (idempotent)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def lookup(self, rel: bytes) -> tuple[int, bytes | bytearray]:
        """Open ``rel`` (segments joined by ``/``, none of them ``.``, ``..``
        or empty; ``b""`` is the root), confined to the root.

        Returns:
            ``(fd, record)``: the fd (the caller closes it) and the file's
            stat facts as a record for :func:`facts` -- st_mode, st_ino,
            st_size, st_mtime_ns, st_ctime_ns as five native int64, which
            also tell two versions of a file apart by plain comparison. The
            record may be a buffer that the next lookup overwrites: copy it
            (``bytes()``) or read it (:func:`facts`) first.

        Raises:
            HttpError: 404, 403, 503 or 500 (see :func:`open_error`).
        """
        if self.beneath:  # open and fstat in one call to the C core
            fd: int = _open_stat(self.fd, rel or b".", _OPEN_FLAGS, self._facts)
            if fd >= 0:
                return fd, self._record
            fd = self._refused(rel, fd)
        else:
            try:
                fd = self._walk(rel.split(b"/") if rel else [])
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise open_error(exc.errno) from None
                fd = self._open_resolved(rel)
        try:
            st = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            raise open_error(exc.errno) from None
        return fd, _RECORD.pack(st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _refused(self, rel: bytes, fd: int) -> int:
        """openat2 said -errno ``fd``: retry EINTR, resolve EXDEV and ELOOP
        (a symlink on the way) the slow way, refuse the rest."""
        while fd == -errno.EINTR:
            fd = _open_beneath(self.fd, rel or b".", _OPEN_FLAGS)
        if fd >= 0:
            return fd
        if fd not in (-errno.EXDEV, -errno.ELOOP):
            raise open_error(-fd)
        return self._open_resolved(rel)

    def _walk(self, segments: list[bytes]) -> int:
        if not segments:
            return os.open(".", _OPEN_FLAGS | os.O_NOFOLLOW, dir_fd=self.fd)
        dirs: list[int] = []
        try:
            at = self.fd
            for seg in segments[:-1]:
                at = os.open(seg, _DIR_FLAGS, dir_fd=at)
                dirs.append(at)
            return os.open(segments[-1], _OPEN_FLAGS | os.O_NOFOLLOW, dir_fd=at)
        finally:
            for d in dirs:
                os.close(d)

    def _open_resolved(self, rel: bytes) -> int:
        """The slow path: resolve every symlink, then serve only inside."""
        real = os.path.realpath(self.path + b"/" + rel)
        if os.path.commonpath([self.path, real]) != self.path:
            raise HttpError(403)
        try:
            return os.open(real, _OPEN_FLAGS)
        except OSError as exc:
            raise open_error(exc.errno) from None

    def index(self, rel: bytes) -> tuple[int, bytes | bytearray] | None:
        """The directory's index.html if it is a regular file, else None."""
        try:
            fd, info = self.lookup(rel + b"/index.html" if rel else b"index.html")
        except HttpError as err:
            if err.status == 404:
                return None
            raise
        if stat.S_ISREG(facts(info)[0]):
            return fd, info
        os.close(fd)
        return None

    def listing(self, fd: int, segments: list[bytes]) -> bytes:
        """A minimal HTML listing of the directory open as ``fd``: names
        HTML-escaped, links percent-encoded, directories with a slash."""
        shown = html.escape("/" + "/".join(display(s) for s in segments) + ("/" if segments else ""))
        rows = [] if not segments else ['<li><a href="../">../</a></li>']
        entries = []
        with os.scandir(fd) as it:
            for e in it:
                try:
                    is_dir = e.is_dir()
                except OSError:
                    is_dir = False
                entries.append((e.name, is_dir))
        for entry, is_dir in sorted(entries):
            raw = os.fsencode(entry)
            slash = "/" if is_dir else ""
            rows.append(f'<li><a href="{html.escape(urllib.parse.quote(raw))}{slash}">'
                        f"{html.escape(display(raw))}{slash}</a></li>")
        page = (
            f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>Index of {shown}</title></head>\n'
            f"<body><h1>Index of {shown}</h1>\n<ul>\n" + "\n".join(rows) + "\n</ul></body></html>\n"
        )
        return page.encode("utf-8")

    def content_type(self, name: bytes) -> str:
        """The Content-Type for a file name, by its extension."""
        ext = os.path.splitext(display(name))[1]
        ctype = self._types.get(ext)
        if ctype is None:
            guess, encoding = mimetypes.guess_type("x" + ext, strict=False)
            if encoding is not None:
                guess = _ENCODED_TYPES.get(encoding, "application/octet-stream")
            ctype = guess or "application/octet-stream"
            if len(self._types) < _MAX_TYPES:
                self._types[ext] = ctype
        return ctype
