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
#include <sys/sendfile.h>
#include <sys/socket.h>
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
        n += zcio_parse_cmsgs(control.buf, msg.msg_controllen, out + n, max - n);
    }
    return n;
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
