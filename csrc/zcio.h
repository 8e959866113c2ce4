/*
 * zcio.h -- the interface of zcio's C core, written as a cffi cdef.
 *
 * This file is read by csrc/build.py as the cdef; it is not compiled as C.
 * csrc/zcio.c is the implementation. Conventions:
 *   - every symbol carries the zcio_ prefix (the #defines below are the
 *     kernel's own constants, whose values cffi takes from the system headers);
 *   - a function that can fail returns -errno (never -1 with errno set), so
 *     errno cannot be clobbered between the call and the check;
 *   - ZCIO_EARG_COUNT / _FLAGS / _OFFSET are returned for a negative count,
 *     negative flags or an offset below -1; the Python layer turns them into
 *     ValueError (they lie outside the range of -errno);
 *   - the short forms take no offsets (NULL: use and advance the file
 *     position); in zcio_splice_at and zcio_copy_file_range_at an offset of
 *     -1 means NULL for that side; zcio_sendfile_at needs an offset >= 0.
 */

#define SPLICE_F_MOVE ...
#define SPLICE_F_NONBLOCK ...
#define SPLICE_F_MORE ...
#define SPLICE_F_GIFT ...
#define MSG_ZEROCOPY ...
#define SO_ZEROCOPY ...
#define SO_EE_ORIGIN_ZEROCOPY ...
#define SO_EE_CODE_ZEROCOPY_COPIED ...
#define MSG_CTRUNC ...
#define SOL_IP ...
#define SOL_IPV6 ...
#define IP_RECVERR ...
#define IPV6_RECVERR ...
#define F_GETPIPE_SZ ...
#define F_SETPIPE_SZ ...
#define MAP_HUGETLB ...

#define ZCIO_EARG_COUNT ...
#define ZCIO_EARG_FLAGS ...
#define ZCIO_EARG_OFFSET ...
#define ZCIO_CONTROL_SIZE ...

struct iovec {
    void *iov_base;
    size_t iov_len;
};

typedef struct {
    uint32_t first;   /* inclusive range of send ids, may wrap */
    uint32_t last;
    int copied;       /* SO_EE_CODE_ZEROCOPY_COPIED was set */
} zcio_completion;

const char *zcio_build_version(void);

/* One kernel call each (EINTR comes back to the caller as -EINTR). */
int64_t zcio_sendfile(int out_fd, int in_fd, int64_t count);
int64_t zcio_sendfile_at(int out_fd, int in_fd, int64_t offset, int64_t count);
int64_t zcio_splice(int fd_in, int fd_out, int64_t count, int flags);
int64_t zcio_splice_at(int fd_in, int fd_out, int64_t count, int64_t off_in,
                       int64_t off_out, int flags);
int64_t zcio_tee(int fd_in, int fd_out, int64_t count, int flags);
int64_t zcio_vmsplice(int fd, const struct iovec *iov, size_t n,
                      int flags);
int64_t zcio_copy_file_range(int fd_in, int fd_out, int64_t count);
int64_t zcio_copy_file_range_at(int fd_in, int fd_out, int64_t count,
                                int64_t off_in, int64_t off_out);
int64_t zcio_send(int fd, const void *buf, size_t len, int flags);

/* Drain up to max zero-copy completions from fd's error queue without
 * blocking; returns how many were stored in out, or -errno if the first
 * recvmsg failed with anything but EAGAIN. */
int zcio_read_completions(int fd, zcio_completion *out, int max);

/* Parse a recvmsg control buffer of len bytes (any alignment, any content);
 * stores up to max zero-copy completions and returns how many. */
int zcio_parse_cmsgs(const unsigned char *control, size_t len,
                     zcio_completion *out, int max);

/* mlock(2) of len bytes at addr (BufferPool's mlock=True): 0 or -errno. */
int zcio_mlock(const void *addr, size_t len);

/* Probe: call a syscall by number with all-invalid arguments and return
 * -errno (ENOSYS: absent; EPERM: filtered; anything else: present). */
int zcio_probe_syscall(const char *name);

/* openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS: open path (relative
 * to dirfd) only if every step of its resolution, symlinks included, stays
 * beneath dirfd; escaping gives -EXDEV. flags are open(2)'s. Returns the fd,
 * or -errno (-ENOSYS where the kernel or the headers lack openat2). */
int zcio_open_beneath(int dirfd, const char *path, int flags);

/* zcio_open_beneath, then fstat of what it opened, in one call: info gets
 * st_mode, st_ino, st_size, st_mtime (ns) and st_ctime (ns). Returns the fd,
 * or -errno (from the open, or from fstat after closing the fd). */
int zcio_open_stat(int dirfd, const char *path, int flags, int64_t info[5]);

/* ------------------------------------------------------------------------
 * The transfer loop behind splice_pipe. One zcio_pump call moves bytes from
 * src to dst by one method until the transfer is done, an error occurs, or a
 * budget (bytes moved, milliseconds spent) runs out; the Python layer calls
 * it again, so signals, timeouts and progress callbacks get their turn.
 * Every field that counts bytes is exact whatever the outcome.
 */
#define ZCIO_M_SENDFILE ...
#define ZCIO_M_COPY_FILE_RANGE ...
#define ZCIO_M_SPLICE ...
#define ZCIO_M_PIPE ...
#define ZCIO_M_RW ...

#define ZCIO_DONE ...
#define ZCIO_MORE ...
#define ZCIO_WAIT ...

typedef struct {
    int method;           /* ZCIO_M_* */
    int src;
    int dst;
    int pipe_r;           /* ZCIO_M_PIPE: the intermediate pipe */
    int pipe_w;
    int64_t src_off;      /* -1: use and advance src's file position */
    int64_t remaining;    /* bytes still to take from src; -1: until EOF */
    int64_t chunk;        /* most bytes per system call */
    int64_t in_flight;    /* taken from src, not yet delivered (pipe or buf) */
    int64_t transferred;  /* delivered to dst */
    int64_t calls;        /* system calls that moved bytes or saw EOF */
    int eof;              /* src reported end of file */
    unsigned char *buf;   /* ZCIO_M_RW: the copy buffer */
    int64_t buf_size;     /* ZCIO_M_RW: bytes buf holds; no read takes more */
    int64_t buf_pos;      /* ZCIO_M_RW: pending bytes start at buf + buf_pos */
    int sparse;           /* keep src's holes (src_off >= 0, both regular files) */
    int64_t data_end;     /* sparse: where the data extent at src_off ends */
    int64_t dst_pos;      /* sparse: dst's file position (where the next byte lands) */
    int64_t dst_keep;     /* sparse: dst's size before the transfer; a hole
                             below it is copied as zeros, above it skipped */
    int64_t holes;        /* sparse: bytes of transferred that were holes skipped */
    int nwait;            /* with ZCIO_WAIT: what the transfer waits for */
    int wait_fd[2];
    int wait_events[2];   /* POLLIN or POLLOUT */
} zcio_xfer;

/* With sparse set, a hole of src (SEEK_DATA/SEEK_HOLE) that lands beyond
 * dst_keep is not copied: dst is extended over it (ftruncate) and its position
 * moved past it, and the hole counts as transferred. Where dst still holds
 * older bytes the hole is copied as zeros. A filesystem that cannot say where
 * its holes are turns sparse off.
 *
 * Returns ZCIO_DONE (count reached or src at EOF, nothing in flight),
 * ZCIO_MORE (a budget ran out or a signal arrived: call again), ZCIO_WAIT
 * (an fd is not ready: nwait/wait_fd/wait_events say which; when may_wait
 * is set the call first waited for it for the rest of max_ms), or -errno. */
int zcio_pump(zcio_xfer *x, int64_t max_bytes, int max_ms, int may_wait);
