/*
 * zcio.c -- zcio's C core. See zcio.h for the conventions.
 *
 * Nothing here holds the GIL: cffi releases it around every call.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <linux/errqueue.h>

/* Older C libraries lack some of the kernel's names; the values are the
 * kernel's uapi ones. SO_ZEROCOPY differs on parisc, whose headers have it. */
#ifndef MSG_ZEROCOPY
#define MSG_ZEROCOPY 0x4000000
#endif
#ifndef SO_ZEROCOPY
#define SO_ZEROCOPY 60
#endif
#ifndef SO_EE_ORIGIN_ZEROCOPY
#define SO_EE_ORIGIN_ZEROCOPY 5
#endif
#ifndef SO_EE_CODE_ZEROCOPY_COPIED
#define SO_EE_CODE_ZEROCOPY_COPIED 1
#endif
#ifndef F_SETPIPE_SZ
#define F_SETPIPE_SZ 1031
#define F_GETPIPE_SZ 1032
#endif

#ifndef ZCIO_BUILD_VERSION
#error "ZCIO_BUILD_VERSION must be defined by the build"
#endif

/* Arguments the Python layer turns into ValueError (outside errno's range). */
#define ZCIO_EARG_COUNT (-0x10000)
#define ZCIO_EARG_FLAGS (-0x10001)
#define ZCIO_EARG_OFFSET (-0x10002)
/* Room for one cmsg carrying sock_extended_err plus an IPv6 offender
 * address, with generous slack: the kernel never needs to truncate. */
#define ZCIO_CONTROL_SIZE 256

typedef struct {
    uint32_t first;
    uint32_t last;
    int copied;
} zcio_completion;

static const char zcio_version_string[] = ZCIO_BUILD_VERSION;

const char *zcio_build_version(void) { return zcio_version_string; }

#define ZCIO_RET(expr) do { ssize_t r_ = (expr); return r_ < 0 ? -(int64_t)errno : (int64_t)r_; } while (0)

/* Each call comes in two forms: a short one for the common case (no offsets)
 * that keeps the per-call cost of the cffi boundary small -- every argument
 * costs a conversion -- and an _at form where an offset of -1 means NULL. */

int64_t zcio_sendfile(int out_fd, int in_fd, int64_t count)
{
    if (count < 0)
        return ZCIO_EARG_COUNT;
    ZCIO_RET(sendfile(out_fd, in_fd, NULL, (size_t)count));
}

int64_t zcio_sendfile_at(int out_fd, int in_fd, int64_t offset, int64_t count)
{
    if (count < 0)
        return ZCIO_EARG_COUNT;
    if (offset < 0)
        return ZCIO_EARG_OFFSET;
    off_t off = (off_t)offset;
    ZCIO_RET(sendfile(out_fd, in_fd, &off, (size_t)count));
}

int64_t zcio_splice(int fd_in, int fd_out, int64_t count, int flags)
{
    if (count < 0)
        return ZCIO_EARG_COUNT;
    if (flags < 0)
        return ZCIO_EARG_FLAGS;
    ZCIO_RET(splice(fd_in, NULL, fd_out, NULL, (size_t)count, (unsigned int)flags));
}

int64_t zcio_splice_at(int fd_in, int fd_out, int64_t count, int64_t off_in,
                       int64_t off_out, int flags)
{
    if (count < 0)
        return ZCIO_EARG_COUNT;
    if (flags < 0)
        return ZCIO_EARG_FLAGS;
    if (off_in < -1 || off_out < -1)
        return ZCIO_EARG_OFFSET;
    loff_t oi = (loff_t)off_in, oo = (loff_t)off_out;
    ZCIO_RET(splice(fd_in, off_in == -1 ? NULL : &oi,
                    fd_out, off_out == -1 ? NULL : &oo, (size_t)count,
                    (unsigned int)flags));
}

int64_t zcio_tee(int fd_in, int fd_out, int64_t count, int flags)
{
    if (count < 0)
        return ZCIO_EARG_COUNT;
    if (flags < 0)
        return ZCIO_EARG_FLAGS;
    ZCIO_RET(tee(fd_in, fd_out, (size_t)count, (unsigned int)flags));
}

int64_t zcio_vmsplice(int fd, const struct iovec *iov, size_t n, int flags)
{
    if (flags < 0)
        return ZCIO_EARG_FLAGS;
    /* On an fd open only for reading, vmsplice copies pipe data *into* iov,
     * which here may be immutable memory (a bytes object): refuse it. */
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return -(int64_t)errno;
    if ((fl & O_ACCMODE) == O_RDONLY)
        return -(int64_t)EBADF;
    ZCIO_RET(vmsplice(fd, iov, n, (unsigned int)flags));
}

int64_t zcio_copy_file_range_at(int fd_in, int fd_out, int64_t count,
                                int64_t off_in, int64_t off_out);

int64_t zcio_copy_file_range(int fd_in, int fd_out, int64_t count)
{
    return zcio_copy_file_range_at(fd_in, fd_out, count, -1, -1);
}

int64_t zcio_copy_file_range_at(int fd_in, int fd_out, int64_t count,
                                int64_t off_in, int64_t off_out)
{
    if (count < 0)
        return ZCIO_EARG_COUNT;
    if (off_in < -1 || off_out < -1)
        return ZCIO_EARG_OFFSET;
#ifdef SYS_copy_file_range
    loff_t oi = (loff_t)off_in, oo = (loff_t)off_out;
    /* The raw syscall: glibc before 2.27 has no wrapper, and some later
     * ones emulated it in user space. */
    ZCIO_RET(syscall(SYS_copy_file_range, fd_in, off_in == -1 ? NULL : &oi,
                     fd_out, off_out == -1 ? NULL : &oo, (size_t)count, 0u));
#else
    (void)fd_in; (void)fd_out;
    return -ENOSYS;
#endif
}

int64_t zcio_send(int fd, const void *buf, size_t len, int flags)
{
    if (flags < 0)
        return ZCIO_EARG_FLAGS;
    ZCIO_RET(send(fd, buf, len, flags | MSG_ZEROCOPY));
}

static int zcio_is_recverr(int level, int type)
{
    return (level == SOL_IP && type == IP_RECVERR) ||
           (level == SOL_IPV6 && type == IPV6_RECVERR);
}

int zcio_parse_cmsgs(const unsigned char *control, size_t len,
                     zcio_completion *out, int max)
{
    /* Walk the buffer with offsets and memcpy rather than CMSG_NXTHDR and
     * casts: the input may be truncated (MSG_CTRUNC), unaligned, or garbage,
     * and nothing outside [control, control + len) may be read. */
    const size_t data_off = CMSG_LEN(0);
    const size_t need = CMSG_LEN(sizeof(struct sock_extended_err));
    size_t off = 0;
    int n = 0;

    if (control == NULL || max <= 0)
        return 0;
    while (n < max && len - off >= sizeof(struct cmsghdr)) {
        struct cmsghdr h;
        memcpy(&h, control + off, sizeof h);
        if (h.cmsg_len < sizeof(struct cmsghdr) || h.cmsg_len > len - off)
            break;  /* malformed, or cut short by MSG_CTRUNC */
        if (h.cmsg_len >= need && zcio_is_recverr(h.cmsg_level, h.cmsg_type)) {
            struct sock_extended_err ee;
            memcpy(&ee, control + off + data_off, sizeof ee);
            if (ee.ee_errno == 0 && ee.ee_origin == SO_EE_ORIGIN_ZEROCOPY) {
                out[n].first = ee.ee_info;
                out[n].last = ee.ee_data;
                out[n].copied = (ee.ee_code & SO_EE_CODE_ZEROCOPY_COPIED) != 0;
                n++;
            }
        }
        size_t step = CMSG_ALIGN(h.cmsg_len);
        if (step >= len - off)
            break;
        off += step;
    }
    return n;
}

int zcio_read_completions(int fd, zcio_completion *out, int max)
{
    int n = 0;
    while (n < max) {
        union {
            struct cmsghdr align;
            unsigned char buf[ZCIO_CONTROL_SIZE];
        } control;
        struct msghdr msg;
        memset(&msg, 0, sizeof msg);
        msg.msg_control = control.buf;
        msg.msg_controllen = sizeof control.buf;
        ssize_t r = recvmsg(fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            /* Keep what was drained; the error comes back on the next call. */
            return n > 0 ? n : -errno;
        }
        /* The kernel flags every error-queue message MSG_ERRQUEUE. A socket
         * without an error queue (AF_UNIX) ignores the flag and returns
         * ordinary data, which would make this loop spin forever. */
        if (!(msg.msg_flags & MSG_ERRQUEUE))
            return n > 0 ? n : -EOPNOTSUPP;
        n += zcio_parse_cmsgs(control.buf, msg.msg_controllen, out + n, max - n);
    }
    return n;
}

int zcio_mlock(const void *addr, size_t len)
{
    return mlock(addr, len) == 0 ? 0 : -errno;
}

int zcio_probe_syscall(const char *name)
{
    long nr = -1;
    long r;
    if (strcmp(name, "sendfile") == 0) nr = SYS_sendfile;
    else if (strcmp(name, "splice") == 0) nr = SYS_splice;
    else if (strcmp(name, "tee") == 0) nr = SYS_tee;
    else if (strcmp(name, "vmsplice") == 0) nr = SYS_vmsplice;
#ifdef SYS_copy_file_range
    else if (strcmp(name, "copy_file_range") == 0) nr = SYS_copy_file_range;
#endif
#ifdef SYS_io_uring_setup
    else if (strcmp(name, "io_uring_setup") == 0) nr = SYS_io_uring_setup;
#endif
    if (nr < 0)
        return -ENOSYS;
    /* Invalid fds and a zero count: the answer is 0 or EBADF where the call
     * exists, ENOSYS where it does not, EPERM where a filter refuses it. */
    if (nr == SYS_splice
#ifdef SYS_copy_file_range
        || nr == SYS_copy_file_range
#endif
        )
        r = syscall(nr, -1, NULL, -1, NULL, (size_t)0, 0u);
#ifdef SYS_io_uring_setup
    else if (nr == SYS_io_uring_setup)
        r = syscall(nr, 0u, NULL);  /* zero entries: EINVAL where supported */
#endif
    else if (nr == SYS_vmsplice)
        r = syscall(nr, -1, NULL, (size_t)0, 0u);
    else  /* sendfile(out, in, offset, count), tee(in, out, len, flags) */
        r = syscall(nr, -1, -1, NULL, (size_t)0);
    return r < 0 ? -errno : 0;
}

/* ------------------------------------------------------------------------
 * Confined opens for the file server. openat2 has no C library wrapper on
 * older systems: call it by number, with the uapi's struct open_how.
 */
#if defined(__has_include)
#if __has_include(<linux/openat2.h>)
#include <linux/openat2.h>
#define ZCIO_HAVE_OPENAT2_H 1
#endif
#endif
#ifndef ZCIO_HAVE_OPENAT2_H
struct open_how {
    uint64_t flags;
    uint64_t mode;
    uint64_t resolve;
};
#define RESOLVE_NO_MAGICLINKS 0x02
#define RESOLVE_BENEATH 0x08
#endif

int zcio_open_beneath(int dirfd, const char *path, int flags)
{
#ifdef SYS_openat2
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = (uint64_t)(unsigned int)flags;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    long fd = syscall(SYS_openat2, dirfd, path, &how, sizeof how);
    return fd < 0 ? -errno : (int)fd;
#else
    (void)dirfd;
    (void)path;
    (void)flags;
    return -ENOSYS;
#endif
}

int zcio_open_stat(int dirfd, const char *path, int flags, int64_t info[5])
{
    struct stat st;
    int fd = zcio_open_beneath(dirfd, path, flags);
    if (fd < 0)
        return fd;
    if (fstat(fd, &st) < 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    info[0] = (int64_t)st.st_mode;
    info[1] = (int64_t)st.st_ino;
    info[2] = (int64_t)st.st_size;
    info[3] = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    info[4] = (int64_t)st.st_ctim.tv_sec * 1000000000 + st.st_ctim.tv_nsec;
    return fd;
}

/* ------------------------------------------------------------------------
 * The transfer loop. */
#include <poll.h>
#include <time.h>

#define ZCIO_M_SENDFILE 1
#define ZCIO_M_COPY_FILE_RANGE 2
#define ZCIO_M_SPLICE 3
#define ZCIO_M_PIPE 4
#define ZCIO_M_RW 5

#define ZCIO_DONE 0
#define ZCIO_MORE 1
#define ZCIO_WAIT 2

typedef struct {
    int method;
    int src;
    int dst;
    int pipe_r;
    int pipe_w;
    int64_t src_off;
    int64_t remaining;
    int64_t chunk;
    int64_t in_flight;
    int64_t transferred;
    int64_t calls;
    int eof;
    unsigned char *buf;
    int64_t buf_size;
    int64_t buf_pos;
    int sparse;
    int64_t data_end;
    int64_t dst_pos;
    int64_t dst_keep;
    int64_t holes;
    int nwait;
    int wait_fd[2];
    int wait_events[2];
} zcio_xfer;

static int64_t zcio_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* After EAGAIN on a call that involves two fds, narrow the wait down to the
 * ones that are not ready now: waiting on a ready one would spin. When both
 * look ready (the call refused all the same), keep both; the caller backs off
 * briefly. Returns -errno if poll fails. */
static int zcio_narrow(zcio_xfer *x)
{
    struct pollfd q[2];
    int i, n = 0;
    if (x->nwait < 2)
        return 0;
    for (i = 0; i < 2; i++) {
        q[i].fd = x->wait_fd[i];
        q[i].events = (short)x->wait_events[i];
        q[i].revents = 0;
    }
    if (poll(q, 2, 0) < 0)
        return -errno;
    for (i = 0; i < 2; i++) {
        if (q[i].revents == 0) {
            x->wait_fd[n] = x->wait_fd[i];
            x->wait_events[n] = x->wait_events[i];
            n++;
        }
    }
    if (n > 0)
        x->nwait = n;
    return 0;
}

/* Wait for what x->nwait/wait_fd/wait_events name, at most ms milliseconds.
 * Returns 1 when ready, 0 on timeout, -errno on error (EINTR included). */
static int zcio_wait(const zcio_xfer *x, int ms)
{
    struct pollfd p[2];
    int i, r;
    for (i = 0; i < x->nwait; i++) {
        p[i].fd = x->wait_fd[i];
        p[i].events = (short)x->wait_events[i];
        p[i].revents = 0;
    }
    if (x->nwait == 2 && ms > 1)
        ms = 1;  /* both looked ready, yet the call would block: back off */
    r = poll(p, (nfds_t)x->nwait, ms);
    if (r < 0)
        return -errno;
    return r > 0;
}

static int64_t zcio_want(const zcio_xfer *x)
{
    int64_t want = x->chunk;
    if (x->remaining >= 0 && x->remaining < want)
        want = x->remaining;
    if (x->sparse && x->data_end - x->src_off < want)
        want = x->data_end - x->src_off;  /* stop where the data extent ends */
    return want;
}

/* Sparse: src_off has reached the end of the data extent found last. Find
 * the next one. Returns the bytes of a hole skipped (> 0) -- dst extended
 * over them and its position moved past them --, 0 when the next bytes are
 * to be copied (data_end > src_off is set, or sparse is off), or -errno when
 * dst could not be extended. */
static int64_t zcio_skip_hole(zcio_xfer *x)
{
    off_t data = lseek(x->src, (off_t)x->src_off, SEEK_DATA);
    int64_t len;

    if (data < 0 && errno == ENXIO)
        data = lseek(x->src, 0, SEEK_END);  /* no data after src_off: a hole to EOF */
    if (data < 0) {
        x->sparse = 0;  /* this filesystem cannot say: copy everything */
        return 0;
    }
    if ((int64_t)data <= x->src_off) {
        /* At data (or at or past EOF, which the method will report). */
        off_t end = (int64_t)data == x->src_off ? lseek(x->src, data, SEEK_HOLE) : -1;
        x->data_end = end > (off_t)x->src_off ? (int64_t)end : INT64_MAX;
        return 0;
    }
    len = (int64_t)data - x->src_off;
    if (x->remaining >= 0 && len > x->remaining)
        len = x->remaining;
    if (x->dst_pos < x->dst_keep) {
        /* dst holds older bytes here: copy the hole's zeros over them. */
        int64_t over = x->dst_keep - x->dst_pos;
        x->data_end = x->src_off + (over < len ? over : len);
        return 0;
    }
    if (ftruncate(x->dst, (off_t)(x->dst_pos + len)) < 0 ||
        lseek(x->dst, (off_t)(x->dst_pos + len), SEEK_SET) < 0)
        return -(int64_t)errno;
    x->data_end = x->src_off;  /* look again after the hole */
    return len;
}

/* Take up to want bytes from src into the intermediate pipe or buffer.
 * Returns bytes taken (0 at EOF) or -errno. */
static int64_t zcio_take(zcio_xfer *x, int64_t want)
{
    loff_t off = (loff_t)x->src_off;
    ssize_t n;
    if (x->method == ZCIO_M_PIPE) {
        n = splice(x->src, x->src_off >= 0 ? &off : NULL, x->pipe_w, NULL,
                   (size_t)want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    } else {
        if (x->buf == NULL || x->buf_size <= 0)
            return -EINVAL;
        if (want > x->buf_size)
            want = x->buf_size;
        if (x->src_off >= 0)
            n = pread(x->src, x->buf, (size_t)want, (off_t)x->src_off);
        else
            n = read(x->src, x->buf, (size_t)want);
    }
    if (n < 0)
        return -errno;
    x->buf_pos = 0;
    return n;
}

/* Deliver up to in_flight bytes from the intermediate pipe or buffer. */
static int64_t zcio_give(zcio_xfer *x)
{
    ssize_t n;
    if (x->method == ZCIO_M_PIPE) {
        n = splice(x->pipe_r, NULL, x->dst, NULL, (size_t)x->in_flight,
                   SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    } else {
        /* What is in flight must lie inside the buffer. */
        if (x->buf == NULL || x->buf_pos < 0 || x->buf_pos > x->buf_size ||
            x->in_flight > x->buf_size - x->buf_pos)
            return -EFAULT;
        n = write(x->dst, x->buf + x->buf_pos, (size_t)x->in_flight);
    }
    if (n < 0)
        return -errno;
    x->buf_pos += n;
    return n;
}

/* One step of a method that moves src -> dst in one call. */
static int64_t zcio_direct(zcio_xfer *x, int64_t want)
{
    loff_t off = (loff_t)x->src_off;
    off_t soff = (off_t)x->src_off;
    ssize_t n;
    switch (x->method) {
    case ZCIO_M_SENDFILE:
        n = sendfile(x->dst, x->src, x->src_off >= 0 ? &soff : NULL, (size_t)want);
        break;
    case ZCIO_M_COPY_FILE_RANGE:
#ifdef SYS_copy_file_range
        n = syscall(SYS_copy_file_range, x->src, x->src_off >= 0 ? &off : NULL,
                    x->dst, NULL, (size_t)want, 0u);
#else
        errno = ENOSYS;
        n = -1;
#endif
        break;
    default: /* ZCIO_M_SPLICE */
        n = splice(x->src, x->src_off >= 0 ? &off : NULL, x->dst, NULL,
                   (size_t)want, SPLICE_F_MOVE);
        break;
    }
    return n < 0 ? -errno : n;
}

int zcio_pump(zcio_xfer *x, int64_t max_bytes, int max_ms, int may_wait)
{
    const int64_t start = zcio_now_ms();
    int64_t moved = 0;

    x->nwait = 0;
    for (;;) {
        int64_t n;
        int delivering = 0, skipped = 0;

        if (x->in_flight > 0) {
            delivering = 1;
            n = zcio_give(x);
        } else if (x->eof || x->remaining == 0) {
            return ZCIO_DONE;
        } else if (x->sparse && x->src_off >= x->data_end &&
                   (n = zcio_skip_hole(x)) != 0) {
            skipped = 1;
        } else if (x->method == ZCIO_M_PIPE || x->method == ZCIO_M_RW) {
            n = zcio_take(x, zcio_want(x));
        } else {
            n = zcio_direct(x, zcio_want(x));
        }

        if (n >= 0) {
            x->calls++;
            if (delivering) {
                x->in_flight -= n;
                x->transferred += n;
                x->dst_pos += n;
            } else if (skipped) {
                if (x->remaining > 0)
                    x->remaining -= n;
                x->src_off += n;
                x->transferred += n;
                x->holes += n;
                x->dst_pos += n;
            } else if (n == 0) {
                x->eof = 1;
            } else {
                if (x->remaining > 0)
                    x->remaining -= n;
                if (x->src_off >= 0)
                    x->src_off += n;
                if (x->method == ZCIO_M_PIPE || x->method == ZCIO_M_RW) {
                    x->in_flight = n;
                } else {
                    x->transferred += n;
                    x->dst_pos += n;
                }
            }
            moved += n;
            if (x->in_flight == 0 && (x->eof || x->remaining == 0))
                return ZCIO_DONE;
            if (moved >= max_bytes || zcio_now_ms() - start >= max_ms)
                return ZCIO_MORE;
            continue;
        }
        if (n == -EINTR)
            return ZCIO_MORE;
        if (n != -EAGAIN && n != -EWOULDBLOCK)
            return (int)n;

        /* Would block: say what for. Delivering, or a method whose source is
         * a file, waits on dst; taking into our own (empty) pipe or buffer
         * waits on src; a direct splice may be blocked by either end. */
        x->nwait = 0;
        if (delivering || x->method == ZCIO_M_SENDFILE ||
            x->method == ZCIO_M_COPY_FILE_RANGE || x->method == ZCIO_M_SPLICE) {
            x->wait_fd[x->nwait] = x->dst;
            x->wait_events[x->nwait++] = POLLOUT;
        }
        if (!delivering && (x->method == ZCIO_M_SPLICE || x->method == ZCIO_M_PIPE ||
                            x->method == ZCIO_M_RW)) {
            x->wait_fd[x->nwait] = x->src;
            x->wait_events[x->nwait++] = POLLIN;
        }
        int r = zcio_narrow(x);
        if (r < 0)
            return r;
        int64_t left = max_ms - (zcio_now_ms() - start);
        if (!may_wait || left <= 0)
            return ZCIO_WAIT;
        r = zcio_wait(x, (int)left);
        if (r == -EINTR)
            return ZCIO_MORE;
        if (r < 0)
            return r;
        if (r == 0)
            return ZCIO_WAIT;
    }
}
