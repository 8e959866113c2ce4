/*
 * hub.c -- the relay engine behind zcio.RelayHub. See hub.h for the API.
 *
 * Each engine thread runs one epoll set, edge-triggered: every socket is
 * registered once for EPOLLIN|EPOLLOUT|EPOLLRDHUP|EPOLLPRI and never
 * modified, and the engine remembers per socket whether it may still be
 * readable or writable (cleared only by EAGAIN, or by a short read from a
 * TCP socket, which the kernel guarantees drained it). So a message costs one
 * recv and one send, and a stalled peer costs nothing: nothing is polled.
 *
 * Per direction (a->b, b->a) at most one thing is in flight: either bytes in
 * a buffer or bytes in a pipe, never both, and nothing more is read until
 * they are delivered. So a slow reader holds its writer back through TCP.
 *
 * Copy or splice, per direction, as HAProxy's splice-auto does: a direction
 * starts copying through the engine's 16 KiB scratch buffer (bytes a full
 * destination cannot take are kept in a buffer of their exact size); three
 * reads in a row that fill the 16 KiB promote it to splicing through a pipe
 * from the hub's bounded pool (taken only while bytes are in it); two short
 * reads (under 8 KiB) in a row, one splice under 4 KiB, or a second of
 * silence demote it again. No pipe left: the streamer copies 64 KiB a read.
 *
 * Locks: an engine holds its `lock` while it handles a batch of events (only
 * fork() waits for it); the other mutexes are leaves, held for a few
 * instructions and never while taking another, except hub->mu -> inbox_mu.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include "hub.h"

#ifndef F_SETPIPE_SZ
#define F_SETPIPE_SZ 1031
#define F_GETPIPE_SZ 1032
#endif
#ifndef EPOLLEXCLUSIVE
#define EPOLLEXCLUSIVE (1u << 28)
#endif

#define CHUNK (16 * 1024)      /* copy buffer; a read this full is "full" */
#define BIG_CHUNK (64 * 1024)  /* a streamer's reads when no pipe is left */
#define MIN_SPLICE (4 * 1024)  /* a splice smaller than this demotes at once */
#define PROMOTE_AFTER 3
#define DEMOTE_AFTER 2
#define IDLE_RESET_MS 1000
#define READS_PER_TURN 16      /* per direction, then other relays go first */
#define ACCEPTS_PER_TURN 16
#define MAX_EVENTS 128
#define ACCEPT_RETRY_MS 100    /* after EMFILE and the like */

enum { M_COPY, M_SPLICE };
enum { D_OPEN, D_EOF, D_DONE };
enum { TAG_A = 0, TAG_B = 1, TAG_LISTENER = 2, TAG_WAKE = 3 };
enum { CMD_CANCEL, CMD_UNLISTEN };

#define LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define FADD(p, v) __atomic_fetch_add((p), (v), __ATOMIC_ACQ_REL)
#define PEEK(p) __atomic_load_n((p), __ATOMIC_RELAXED)
/* A counter with a single writer (its engine) and racy readers (stats). */
#define BUMP(p, v) __atomic_store_n((p), *(p) + (v), __ATOMIC_RELAXED)

struct zc_pipe {
    int r, w;
    struct zc_pipe *next;
};

struct zc_pool {
    pthread_mutex_t mu;
    struct zc_pipe *free;
    int64_t nfree, in_use, max, size;
    int64_t created, destroyed, exhausted;
    int closed;
};

struct zc_sock {
    int fd;
    unsigned char readable;  /* may have bytes (or EOF) to read */
    unsigned char writable;  /* may take bytes */
    unsigned char trusty;    /* a short read means drained (TCP, no OOB seen) */
    unsigned char rdhup;     /* the peer's EOF or an error was seen: read to the end */
    unsigned char hup;       /* hang-up or error seen */
};

struct zc_dir {
    unsigned char mode, state, large, small, nosplice;
    int read_err;            /* an error met while topping up the pipe, for the next read */
    unsigned char *buf;      /* bytes waiting (scratch, or a malloc'd copy) */
    uint32_t off, len;
    struct zc_pipe *pipe;    /* held only while bytes are in it */
    int64_t pipe_len;
    int64_t transferred, spliced;
    int64_t last_read;
};

struct engine;

struct zc_conn {
    struct zc_sock s[2];
    struct zc_dir d[2];      /* d[0]: s[0] -> s[1]; d[1]: s[1] -> s[0] */
    uint64_t id;
    zcio_sink *sink;
    struct zcio_listener *lst;
    struct zc_conn *prev, *next;    /* engine's live list */
    struct zc_conn *cprev, *cnext;  /* engine's connecting list */
    struct zc_conn *run_next;       /* engine's run queue, or inbox */
    int64_t deadline;
    uint32_t slot, gen;             /* epoll events name (slot, gen): see on_event */
    unsigned char queued, connecting, half_close, stopping, ended, unslotted;
    int peer_len;
    unsigned char peer[28];
};

struct zc_cmd {
    int type;
    uint64_t id;
    struct zcio_listener *lst;
    struct zc_cmd *next;
};

struct counters {
    int64_t started, active, ended, failed, copied, spliced, copy_reads,
        splice_reads, to_splice, to_copy, buffers, accepted, connect_failed;
};

struct engine {
    zcio_hub *hub;
    int idx, epfd, efd, started, stop;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_mutex_t inbox_mu;
    struct zc_conn *inbox;
    struct zc_cmd *cmds;
    struct zc_conn *conns, *connecting, *runq, *grave, *spare;
    struct zc_conn **slots;  /* every relay this engine ever held, by slot */
    uint32_t nslots, cap_slots;
    int retry_accept;
    int64_t retry_at;
    int64_t now;
    unsigned char *scratch;
    struct counters c;
};

struct zc_target {
    int len;
    struct sockaddr_storage addr;
    struct zc_target *older;
};

struct zc_lfd {
    struct zcio_listener *l;
    int fd;
};

struct zcio_listener {
    zcio_hub *hub;
    struct zc_lfd *lfds;  /* one socket shared by the engines, or one each */
    int nfds, tcp, nodelay;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int armed, closing, closed, acks, retry;
    int64_t max, active, peak, accepted, served, up, down, connect_failed;
    int connect_timeout_ms, verbose, resolve_posted;
    struct zc_target *target;
    zcio_sink *sink;
    struct zcio_listener *next;
};

struct zcio_hub {
    pthread_mutex_t mu;
    int nthreads, closing, forked;
    unsigned rr;
    struct engine *eng;
    struct zc_pool pool;
    struct zcio_listener *listeners;
    zcio_hub *gnext;
};

struct zc_node {
    zcio_relay_result r;
    struct zc_node *next;
};

struct zcio_sink {
    pthread_mutex_t mu;
    int efd, refs, released, shut;
    struct zc_node *head, *tail;
};

/* Every hub of the process, for fork(). */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static zcio_hub *g_hubs;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

static void poke(int efd)
{
    uint64_t one = 1;
    ssize_t n;
    do
        n = write(efd, &one, sizeof one);
    while (n < 0 && errno == EINTR);
}

static int so_error(int fd)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        return errno;
    return err;
}

/* ------------------------------------------------------------------ sinks */

int zcio_sink_new(zcio_sink **out)
{
    zcio_sink *s = calloc(1, sizeof *s);
    if (s == NULL)
        return -ENOMEM;
    s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->efd < 0) {
        int err = errno;
        free(s);
        return -err;
    }
    pthread_mutex_init(&s->mu, NULL);
    s->refs = 1;
    *out = s;
    return 0;
}

int zcio_sink_fd(zcio_sink *s) { return s->efd; }

static void result_free(zcio_relay_result *r)
{
    for (int i = 0; i < 2; i++) {
        free(r->pending[i]);
        r->pending[i] = NULL;
        r->pending_len[i] = 0;
    }
}

void zcio_result_free(zcio_relay_result *r) { result_free(r); }

static void sink_unref(zcio_sink *s)
{
    if (s == NULL || FADD(&s->refs, -1) != 1)
        return;
    struct zc_node *n = s->head;
    while (n != NULL) {
        struct zc_node *next = n->next;
        result_free(&n->r);
        free(n);
        n = next;
    }
    close_fd(&s->efd);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static void sink_post(zcio_sink *s, zcio_relay_result *r)
{
    struct zc_node *n = s == NULL ? NULL : malloc(sizeof *n);
    if (n == NULL) {
        result_free(r);
        return;
    }
    n->r = *r;
    n->next = NULL;
    pthread_mutex_lock(&s->mu);
    if (s->released) {
        pthread_mutex_unlock(&s->mu);
        result_free(&n->r);
        free(n);
        return;
    }
    int was_empty = s->head == NULL;
    if (s->tail != NULL)
        s->tail->next = n;
    else
        s->head = n;
    s->tail = n;
    if (was_empty)
        poke(s->efd);
    pthread_mutex_unlock(&s->mu);
}

int zcio_sink_collect(zcio_sink *s, zcio_relay_result *out, int max, int timeout_ms)
{
    for (;;) {
        uint64_t v;
        ssize_t rd = read(s->efd, &v, sizeof v); /* reset before looking */
        (void)rd;
        int n = 0, shut;
        pthread_mutex_lock(&s->mu);
        while (n < max && s->head != NULL) {
            struct zc_node *node = s->head;
            s->head = node->next;
            if (s->head == NULL)
                s->tail = NULL;
            out[n++] = node->r;
            free(node);
        }
        shut = s->shut;
        pthread_mutex_unlock(&s->mu);
        if (n > 0)
            return n;
        if (shut)
            return -ESHUTDOWN;
        if (timeout_ms == 0)
            return 0;
        struct pollfd p = {.fd = s->efd, .events = POLLIN};
        int r = poll(&p, 1, timeout_ms);
        if (r == 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -errno;
    }
}

void zcio_sink_shutdown(zcio_sink *s)
{
    pthread_mutex_lock(&s->mu);
    s->shut = 1;
    poke(s->efd);
    pthread_mutex_unlock(&s->mu);
}

void zcio_sink_release(zcio_sink *s)
{
    pthread_mutex_lock(&s->mu);
    s->released = 1;
    pthread_mutex_unlock(&s->mu);
    sink_unref(s);
}

/* ------------------------------------------------------------------- pipes */

static struct zc_pipe *pool_get(struct zc_pool *p)
{
    struct zc_pipe *pipe = NULL;
    pthread_mutex_lock(&p->mu);
    if (p->free != NULL) {
        pipe = p->free;
        p->free = pipe->next;
        p->nfree--;
        p->in_use++;
    } else if (p->in_use + p->nfree < p->max && !p->closed) {
        int fds[2];
        pipe = malloc(sizeof *pipe);
        if (pipe != NULL && pipe2(fds, O_NONBLOCK | O_CLOEXEC) == 0) {
            pipe->r = fds[0];
            pipe->w = fds[1];
            p->created++;
            p->in_use++;
            /* A refused resize keeps the default size; but past the user's
             * pipe-user-pages-soft a new pipe holds one page: useless here. */
            if (fcntl(pipe->w, F_SETPIPE_SZ, (int)p->size) < 0 &&
                fcntl(pipe->w, F_GETPIPE_SZ) < CHUNK) {
                close(pipe->r);
                close(pipe->w);
                free(pipe);
                pipe = NULL;
                p->in_use--;
                p->destroyed++;
                p->exhausted++;
            }
        } else {
            free(pipe); /* EMFILE and the like: as good as exhausted */
            pipe = NULL;
            p->exhausted++;
        }
    } else {
        p->exhausted++;
    }
    pthread_mutex_unlock(&p->mu);
    return pipe;
}

/* Give a pipe back: kept if empty, destroyed if it may hold bytes. */
static void pool_put(struct zc_pool *p, struct zc_pipe *pipe, int empty)
{
    pthread_mutex_lock(&p->mu);
    p->in_use--;
    if (empty && !p->closed) {
        pipe->next = p->free;
        p->free = pipe;
        p->nfree++;
        pipe = NULL;
    } else {
        p->destroyed++;
    }
    pthread_mutex_unlock(&p->mu);
    if (pipe != NULL) {
        close(pipe->r);
        close(pipe->w);
        free(pipe);
    }
}

/* ------------------------------------------------------------ directions */

static void demote(struct engine *e, struct zc_dir *d)
{
    d->mode = M_COPY;
    d->large = d->small = 0;
    BUMP(&e->c.to_copy, 1);
}

/* The streamer heuristic. Promotion looks at each copy read: three in a
 * row that fill the 16 KiB buffer (a second of silence starts the count
 * again). Demotion looks at a turn (the reads of one wake-up until EAGAIN, a
 * full destination or the budget), as HAProxy's does, not at each call:
 * the last read of a busy turn is often small. */
static void observe_read(struct engine *e, struct zc_dir *d, int64_t n)
{
    if (e->now - d->last_read > IDLE_RESET_MS)
        d->large = 0;
    d->last_read = e->now;
    if (d->mode != M_COPY)
        return;
    if (n < CHUNK) {
        d->large = 0;
    } else if (++d->large >= PROMOTE_AFTER && !d->nosplice) {
        d->mode = M_SPLICE;
        d->large = d->small = 0;
        BUMP(&e->c.to_splice, 1);
    }
}

static void observe_turn(struct engine *e, struct zc_dir *d, int64_t got, int spliced)
{
    if (d->mode != M_SPLICE)
        return;
    if (got >= CHUNK / 2)
        d->small = 0;
    else if (d->small < 255)
        d->small++;
    if (d->small >= DEMOTE_AFTER || (spliced && got < MIN_SPLICE))
        demote(e, d);
}

/* Keep bytes that are still in the engine's scratch buffer in their own. */
static int stash(struct engine *e, struct zc_dir *d)
{
    if (d->buf != e->scratch)
        return 0;
    unsigned char *copy = malloc(d->len);
    if (copy == NULL)
        return -ENOMEM;
    memcpy(copy, e->scratch + d->off, d->len);
    d->buf = copy;
    d->off = 0;
    BUMP(&e->c.buffers, 1);
    return 0;
}

static void drop_buffer(struct engine *e, struct zc_dir *d)
{
    if (d->buf != NULL && d->buf != e->scratch) {
        free(d->buf);
        BUMP(&e->c.buffers, -1);
    }
    d->buf = NULL;
    d->off = d->len = 0;
}

/* Deliver what is in flight. 1: all delivered; 0: dst is full; -errno. */
static int flush(struct engine *e, struct zc_dir *d, struct zc_sock *dst)
{
    while (d->pipe_len > 0) {
        if (!dst->writable)
            return 0;
        ssize_t n = splice(d->pipe->r, NULL, dst->fd, NULL, (size_t)d->pipe_len,
                           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                dst->writable = 0;
                return 0;
            }
            return -errno;
        }
        if (n == 0)
            return -EIO; /* cannot happen with bytes in the pipe */
        d->pipe_len -= n;
        d->transferred += n;
        d->spliced += n;
        BUMP(&e->c.spliced, n);
    }
    if (d->pipe != NULL) {
        pool_put(&e->hub->pool, d->pipe, 1);
        d->pipe = NULL;
    }
    while (d->len > 0) {
        if (!dst->writable)
            return stash(e, d);
        ssize_t n = send(dst->fd, d->buf + d->off, d->len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int err = errno;
            int r = stash(e, d);
            if (err == EAGAIN) {
                dst->writable = 0;
                return r;
            }
            return -err;
        }
        d->off += (uint32_t)n;
        d->len -= (uint32_t)n;
        d->transferred += n;
        BUMP(&e->c.copied, n);
    }
    drop_buffer(e, d);
    return 1;
}

/* Read once from src (nothing is in flight). >0 bytes, 0 EOF, -errno. */
static int64_t dir_read(struct engine *e, struct zc_dir *d, struct zc_sock *src)
{
    struct zc_pool *pool = &e->hub->pool;
    if (d->read_err) {
        int err = d->read_err;
        d->read_err = 0;
        return -err;
    }
    if (d->mode == M_SPLICE && e->now - d->last_read > IDLE_RESET_MS)
        demote(e, d);
    if (d->mode == M_SPLICE) {
        struct zc_pipe *p = pool_get(pool);
        if (p != NULL) {
            ssize_t n;
            do
                n = splice(src->fd, NULL, p->w, NULL, (size_t)pool->size,
                           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            while (n < 0 && errno == EINTR);
            if (n > 0) {
                /* Top the pipe up while bytes keep arriving (as a blocking
                 * splice does), so that it is delivered in big pieces. An
                 * EAGAIN here proves nothing (the pipe may be out of slots):
                 * src stays readable until a read into an empty pipe says so. */
                int64_t total = n;
                while (total < pool->size) {
                    n = splice(src->fd, NULL, p->w, NULL, (size_t)(pool->size - total),
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
                    if (n > 0) {
                        total += n;
                        continue;
                    }
                    if (n < 0 && errno == EINTR)
                        continue;
                    if (n < 0 && errno != EAGAIN)
                        d->read_err = errno; /* reported by the next read */
                    break; /* EOF: the next read sees it again */
                }
                d->pipe = p;
                d->pipe_len = total;
                BUMP(&e->c.splice_reads, 1);
                observe_read(e, d, total);
                return total;
            }
            int err = n < 0 ? errno : 0;
            pool_put(pool, p, 1);
            if (n == 0)
                return 0;
            if (err != EINVAL && err != ENOSYS && err != EOPNOTSUPP)
                return -err;
            d->nosplice = 1; /* this socket does not splice: copy for good */
            demote(e, d);
        }
    }
    size_t cap = d->mode == M_SPLICE ? BIG_CHUNK : CHUNK;
    ssize_t n;
    do
        n = recv(src->fd, e->scratch, cap, MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    if (n == 0)
        return 0;
    if ((size_t)n < cap && src->trusty && !src->rdhup)
        src->readable = 0; /* a short read from TCP drained the socket */
    d->buf = e->scratch;
    d->off = 0;
    d->len = (uint32_t)n;
    BUMP(&e->c.copy_reads, 1);
    observe_read(e, d, n);
    return n;
}

/* One turn of direction i: deliver, read, until it cannot go on.
 * 0, or -errno: direction i failed. Adds what it read to *got. */
static int dir_turn(struct engine *e, struct zc_conn *c, int i, int *more, int64_t *got, int *spliced)
{
    struct zc_dir *d = &c->d[i];
    struct zc_sock *src = &c->s[i], *dst = &c->s[1 - i];
    int reads = 0;
    for (;;) {
        if (d->state == D_DONE)
            return 0;
        int r = flush(e, d, dst);
        if (r <= 0)
            return r;
        if (d->state == D_EOF || c->stopping) {
            /* (When the other way is done too, close() sends the FIN.) */
            if (d->state == D_EOF && c->half_close && c->d[1 - i].state != D_DONE)
                (void)shutdown(dst->fd, SHUT_WR);
            d->state = D_DONE;
            return 0;
        }
        if (!src->readable)
            return 0;
        if (reads++ == READS_PER_TURN) {
            *more = 1;
            return 0;
        }
        int64_t n = dir_read(e, d, src);
        if (n == -EAGAIN) {
            src->readable = 0;
            return 0;
        }
        if (n < 0)
            return (int)n;
        if (n == 0) {
            d->state = D_EOF;
            if (!c->half_close)
                c->stopping = 1;
        }
        *got += n;
        *spliced |= d->pipe_len > 0;
    }
}

/* Move direction i as far as it goes now. 0, or -errno: direction i failed. */
static int dir_run(struct engine *e, struct zc_conn *c, int i, int *more)
{
    int64_t got = 0;
    int spliced = 0;
    int r = dir_turn(e, c, i, more, &got, &spliced);
    if (got > 0)
        observe_turn(e, &c->d[i], got, spliced);
    return r;
}

/* Take the bytes a direction read but did not deliver (for the record). */
static void take_pending(struct engine *e, struct zc_dir *d, unsigned char **out, int64_t *len)
{
    *out = NULL;
    *len = 0;
    if (d->pipe != NULL) {
        int64_t want = d->pipe_len, got = 0;
        unsigned char *buf = want > 0 ? malloc((size_t)want) : NULL;
        while (buf != NULL && got < want) {
            ssize_t n = read(d->pipe->r, buf + got, (size_t)(want - got));
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
            got += n;
        }
        pool_put(&e->hub->pool, d->pipe, got == want);
        d->pipe = NULL;
        d->pipe_len = 0;
        *out = buf;
        *len = buf != NULL ? got : 0;
    }
    if (d->len > 0) {
        unsigned char *buf = malloc(d->len);
        if (buf != NULL) {
            memcpy(buf, d->buf + d->off, d->len);
            *out = buf;
            *len = d->len;
        }
    }
    drop_buffer(e, d);
}

/* ------------------------------------------------------------ listeners */

/* One listening socket: every engine waits on it (EPOLLEXCLUSIVE: one is
 * woken). Several (SO_REUSEPORT): socket k belongs to engine k % threads,
 * and the kernel spreads the connections over them. */
static void lst_set_armed(struct zcio_listener *l, int on)
{
    zcio_hub *h = l->hub;
    for (int k = 0; k < l->nfds; k++) {
        struct zc_lfd *f = &l->lfds[k];
        int first = l->nfds == 1 ? 0 : k % h->nthreads;
        int last = l->nfds == 1 ? h->nthreads - 1 : first;
        for (int i = first; i <= last; i++) {
            if (on) {
                struct epoll_event ev = {.events = EPOLLIN | (l->nfds == 1 ? EPOLLEXCLUSIVE : 0),
                                         .data.u64 = (uint64_t)(uintptr_t)f | TAG_LISTENER};
                (void)epoll_ctl(h->eng[i].epfd, EPOLL_CTL_ADD, f->fd, &ev);
            } else {
                (void)epoll_ctl(h->eng[i].epfd, EPOLL_CTL_DEL, f->fd, NULL);
            }
        }
    }
    l->armed = on;
}

static void lst_close_fds(struct zcio_listener *l)
{
    for (int k = 0; k < l->nfds; k++)
        close_fd(&l->lfds[k].fd);
}

/* Stop accepting while max relays run (re-checked under the lock). */
static void lst_pause(struct zcio_listener *l, int force)
{
    pthread_mutex_lock(&l->mu);
    if (l->armed && (force || LOAD(&l->active) >= l->max))
        lst_set_armed(l, 0);
    if (force)
        l->retry = 1;
    pthread_mutex_unlock(&l->mu);
}

static void lst_resume(struct zcio_listener *l, int retry)
{
    pthread_mutex_lock(&l->mu);
    if (retry)
        l->retry = 0;
    if (!l->armed && !l->retry && !LOAD(&l->closing) && LOAD(&l->active) < l->max)
        lst_set_armed(l, 1);
    pthread_mutex_unlock(&l->mu);
}

/* ------------------------------------------------------------ relays */

static void conn_unlink(struct engine *e, struct zc_conn *c)
{
    if (c->prev != NULL)
        c->prev->next = c->next;
    else if (e->conns == c)
        e->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

static void connecting_unlink(struct engine *e, struct zc_conn *c)
{
    if (!c->connecting)
        return;
    if (c->cprev != NULL)
        c->cprev->cnext = c->cnext;
    else
        e->connecting = c->cnext;
    if (c->cnext != NULL)
        c->cnext->cprev = c->cprev;
    c->cprev = c->cnext = NULL;
    c->connecting = 0;
}

/* End a relay: record, close both sockets, free it after this turn. */
static void conn_end(struct engine *e, struct zc_conn *c, int err, int dir)
{
    if (c->ended)
        return;
    c->ended = 1;
    connecting_unlink(e, c);
    zcio_relay_result r;
    memset(&r, 0, sizeof r);
    r.kind = ZCIO_REC_RELAY;
    r.id = c->id;
    r.err = err;
    r.err_dir = dir;
    for (int i = 0; i < 2; i++) {
        r.transferred[i] = c->d[i].transferred;
        r.spliced[i] = c->d[i].spliced;
        take_pending(e, &c->d[i], &r.pending[i], &r.pending_len[i]);
    }
    /* No EPOLL_CTL_DEL: a copy of an fd that lives on elsewhere (a dup, a
     * vfork child before its exec) may keep it in the set, but its events
     * name a (slot, generation) that no longer matches, and are dropped. */
    for (int i = 0; i < 2; i++)
        close_fd(&c->s[i].fd);
    conn_unlink(e, c);
    BUMP(&e->c.active, -1);
    if (err)
        BUMP(&e->c.failed, 1);
    else
        BUMP(&e->c.ended, 1);
    struct zcio_listener *l = c->lst;
    if (l != NULL) {
        r.peer_len = c->peer_len;
        memcpy(r.peer, c->peer, sizeof r.peer);
        FADD(&l->up, r.transferred[0]);
        FADD(&l->down, r.transferred[1]);
        FADD(&l->served, 1);
        FADD(&l->active, -1);
        if (l->verbose)
            sink_post(l->sink, &r);
        else
            result_free(&r);
        lst_resume(l, 0);
    } else {
        sink_post(c->sink, &r);
        sink_unref(c->sink);
        c->sink = NULL;
    }
    if (!c->queued) {
        c->run_next = e->grave;
        e->grave = c;
    } /* else the run queue frees it */
}

/* A relay's memory, from the spares or a new slot; NULL when out of memory. */
static struct zc_conn *conn_alloc(struct engine *e)
{
    struct zc_conn *c = e->spare;
    if (c != NULL) {
        e->spare = c->run_next;
        uint32_t slot = c->slot, gen = c->gen;
        memset(c, 0, sizeof *c);
        c->slot = slot;
        c->gen = gen;
        return c;
    }
    if (e->nslots == e->cap_slots) {
        uint32_t cap = e->cap_slots ? 2 * e->cap_slots : 64;
        if (cap > (1u << 30))
            return NULL;
        struct zc_conn **slots = realloc(e->slots, cap * sizeof *slots);
        if (slots == NULL)
            return NULL;
        e->slots = slots;
        e->cap_slots = cap;
    }
    c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->slot = e->nslots;
    e->slots[e->nslots++] = c;
    return c;
}

/* A relay that ended: its slot's next user gets a new generation. */
static void conn_free(struct engine *e, struct zc_conn *c)
{
    for (int i = 0; i < 2; i++)
        drop_buffer(e, &c->d[i]);
    if (c->unslotted) {
        free(c);
        return;
    }
    c->gen++;
    c->run_next = e->spare;
    e->spare = c;
}

static void runq_push(struct engine *e, struct zc_conn *c)
{
    if (c->queued)
        return;
    c->queued = 1;
    c->run_next = e->runq;
    e->runq = c;
}

static void conn_step(struct engine *e, struct zc_conn *c)
{
    if (c->ended || c->connecting)
        return;
    int more = 0;
    for (int pass = 0; pass < 2; pass++) {
        unsigned char stopping = c->stopping;
        for (int i = 0; i < 2; i++) {
            int r = dir_run(e, c, i, &more);
            if (r < 0) {
                conn_end(e, c, -r, i);
                return;
            }
        }
        if (c->stopping == stopping)
            break;
    }
    if (c->d[0].state == D_DONE && c->d[1].state == D_DONE) {
        conn_end(e, c, 0, 0);
        return;
    }
    /* A peer that hung up or failed, with nothing more to read from it: the
     * direction that writes to it cannot succeed, and may wait forever. A
     * peer that failed (a reset) while its own direction still waits to
     * deliver ends the relay too: that direction would not read again until
     * the other side drains, and a reset ends both directions. */
    for (int side = 0; side < 2; side++) {
        if (!c->s[side].hup)
            continue;
        if (c->d[side].state == D_DONE && c->d[1 - side].state != D_DONE) {
            int err = so_error(c->s[side].fd);
            conn_end(e, c, err ? err : EPIPE, 1 - side);
            return;
        }
        if (c->d[side].state != D_DONE) {
            int err = so_error(c->s[side].fd);
            if (err) {
                conn_end(e, c, err, side);
                return;
            }
        }
    }
    if (more)
        runq_push(e, c);
}

static int conn_register(struct engine *e, struct zc_conn *c, int side)
{
    struct epoll_event ev = {
        .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI | EPOLLET,
        .data.u64 = ((uint64_t)c->gen << 32) | ((uint64_t)c->slot << 2) | (uint64_t)side,
    };
    return epoll_ctl(e->epfd, EPOLL_CTL_ADD, c->s[side].fd, &ev) < 0 ? -errno : 0;
}

static void conn_link(struct engine *e, struct zc_conn *c)
{
    c->prev = NULL;
    c->next = e->conns;
    if (e->conns != NULL)
        e->conns->prev = c;
    e->conns = c;
    for (int i = 0; i < 2; i++)
        c->d[i].last_read = e->now;
    BUMP(&e->c.started, 1);
    BUMP(&e->c.active, 1);
}

/* A socket whose close() would linger (SO_LINGER with a timeout) is made to
 * close in the background: the engine closes sockets on its own thread, and
 * a lingering close there would hold up every relay of that thread. A
 * zero timeout (reset on close) never blocks and is kept. */
static void no_lingering_close(int fd)
{
    struct linger lg;
    socklen_t len = sizeof lg;
    if (getsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, &len) == 0 && lg.l_onoff && lg.l_linger > 0) {
        lg.l_onoff = 0;
        (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
}

static int sock_setup(struct zc_sock *s, int fd)
{
    no_lingering_close(fd);
    int one = 1, proto = 0, domain = 0;
    socklen_t len = sizeof proto;
    s->fd = fd;
    if (getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &len) == 0 &&
        (len = sizeof domain, getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0) &&
        proto == IPPROTO_TCP && (domain == AF_INET || domain == AF_INET6)) {
        s->trusty = 1;
        /* A relay forwards each message as it comes: the sender already
         * decided when to send it. */
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return 0;
}

static void connect_failed(struct engine *e, struct zc_conn *c, int err)
{
    struct zcio_listener *l = c->lst;
    FADD(&l->connect_failed, 1);
    BUMP(&e->c.connect_failed, 1);
    int zero = 0;
    if (l->sink != NULL && __atomic_compare_exchange_n(&l->resolve_posted, &zero, 1, 0,
                                                       __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        zcio_relay_result r;
        memset(&r, 0, sizeof r);
        r.kind = ZCIO_REC_CONNECT_FAILED;
        r.err = err;
        sink_post(l->sink, &r);
    }
    conn_end(e, c, err, 0);
}

static void connect_done(struct engine *e, struct zc_conn *c, uint32_t events)
{
    if (events & (EPOLLERR | EPOLLHUP)) {
        int err = so_error(c->s[1].fd);
        connect_failed(e, c, err ? err : ECONNREFUSED);
        return;
    }
    connecting_unlink(e, c);
    conn_step(e, c);
}

static void lst_accept(struct engine *e, struct zc_lfd *f)
{
    struct zcio_listener *l = f->l;
    /* A socket shared by several engines: one connection per wake-up (it
     * stays ready, level-triggered), so that a busy engine leaves the next
     * one to a waiting engine. */
    int most = l->nfds == 1 && e->hub->nthreads > 1 ? 1 : ACCEPTS_PER_TURN;
    for (int k = 0; k < most; k++) {
        if (LOAD(&l->closing))
            return;
        if (FADD(&l->active, 1) >= l->max) {
            FADD(&l->active, -1);
            lst_pause(l, 0);
            return;
        }
        struct sockaddr_storage peer;
        socklen_t plen = sizeof peer;
        int fd = accept4(f->fd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int err = errno;
            FADD(&l->active, -1);
            if (err == EINTR || err == ECONNABORTED || err == EPROTO || err == EPERM)
                continue;
            if (err != EAGAIN && err != EWOULDBLOCK) {
                /* Out of fds or memory, or a listener shut down under us
                 * (EINVAL): it stays readable (level-triggered), so waiting
                 * for it again would spin; pause and retry later. */
                lst_pause(l, 1);
                e->retry_accept = 1;
                e->retry_at = e->now + ACCEPT_RETRY_MS;
            }
            return;
        }
        no_lingering_close(fd); /* a listener's options are inherited */
        int64_t active = LOAD(&l->active), peak = LOAD(&l->peak);
        while (active > peak &&
               !__atomic_compare_exchange_n(&l->peak, &peak, active, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            ;
        FADD(&l->accepted, 1);
        BUMP(&e->c.accepted, 1);
        struct zc_conn *c = conn_alloc(e);
        if (c == NULL) {
            close(fd);
            FADD(&l->active, -1);
            FADD(&l->served, 1);
            continue;
        }
        c->lst = l;
        c->half_close = 1;
        c->s[0].fd = fd;
        c->s[0].trusty = (unsigned char)l->tcp;
        c->s[1].fd = -1;
        c->peer_len = plen <= sizeof c->peer ? (int)plen : 0;
        memcpy(c->peer, &peer, (size_t)c->peer_len);
        int one = 1;
        if (!l->nodelay) /* else inherited from the listener */
            (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn_link(e, c);
        struct zc_target *t = LOAD(&l->target);
        int up = socket(t->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (up < 0) {
            connect_failed(e, c, errno);
            continue;
        }
        c->s[1].fd = up;
        if (t->addr.ss_family == AF_INET || t->addr.ss_family == AF_INET6) {
            c->s[1].trusty = 1;
            (void)setsockopt(up, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        }
        int err = 0;
        if (connect(up, (struct sockaddr *)&t->addr, (socklen_t)t->len) < 0) {
            err = errno;
            if (err == EINPROGRESS || err == EINTR) {
                err = 0;
                c->connecting = 1;
                c->deadline = e->now + l->connect_timeout_ms;
                c->cnext = e->connecting;
                if (e->connecting != NULL)
                    e->connecting->cprev = c;
                e->connecting = c;
            }
        }
        if (err == 0)
            err = -conn_register(e, c, 0);
        if (err == 0)
            err = -conn_register(e, c, 1);
        if (err != 0)
            connect_failed(e, c, err);
    }
}

/* ------------------------------------------------------------ engine */

static void handle_inbox(struct engine *e)
{
    pthread_mutex_lock(&e->inbox_mu);
    struct zc_conn *adds = e->inbox;
    struct zc_cmd *cmds = e->cmds;
    e->inbox = NULL;
    e->cmds = NULL;
    pthread_mutex_unlock(&e->inbox_mu);
    while (adds != NULL) {
        struct zc_conn *t = adds, *c = conn_alloc(e);
        adds = t->run_next;
        if (c != NULL) {
            uint32_t slot = c->slot, gen = c->gen;
            *c = *t; /* the caller's thread built it; it takes a slot here */
            c->slot = slot;
            c->gen = gen;
            free(t);
        } else {
            c = t; /* out of memory: end it (ENOMEM) without a slot */
            c->unslotted = 1;
        }
        c->run_next = NULL;
        conn_link(e, c);
        if (c->unslotted) {
            conn_end(e, c, ENOMEM, 0);
            continue;
        }
        int err = LOAD(&e->stop) ? ECONNABORTED : 0;
        if (err == 0)
            err = -conn_register(e, c, 0);
        if (err == 0)
            err = -conn_register(e, c, 1);
        if (err != 0)
            conn_end(e, c, err, 0);
    }
    /* Commands were pushed last-first: run them in order. */
    struct zc_cmd *ordered = NULL;
    while (cmds != NULL) {
        struct zc_cmd *next = cmds->next;
        cmds->next = ordered;
        ordered = cmds;
        cmds = next;
    }
    while (ordered != NULL) {
        struct zc_cmd *cmd = ordered;
        ordered = cmd->next;
        struct zc_conn *c = e->conns;
        while (c != NULL) {
            struct zc_conn *next = c->next;
            if (cmd->type == CMD_CANCEL && c->lst == NULL && c->id == cmd->id) {
                conn_end(e, c, ECANCELED, 0);
                break;
            }
            if (cmd->type == CMD_UNLISTEN && c->lst == cmd->lst)
                conn_end(e, c, ECONNABORTED, 0);
            c = next;
        }
        if (cmd->type == CMD_UNLISTEN) {
            struct zcio_listener *l = cmd->lst;
            pthread_mutex_lock(&l->mu);
            l->acks++;
            pthread_cond_broadcast(&l->cv);
            pthread_mutex_unlock(&l->mu);
        }
        free(cmd);
    }
}

static void on_event(struct engine *e, struct epoll_event *ev)
{
    uint64_t u = ev->data.u64;
    unsigned tag = (unsigned)(u & 3);
    uint32_t m = ev->events;
    if (tag == TAG_WAKE) {
        uint64_t v;
        ssize_t rd = read(e->efd, &v, sizeof v);
        (void)rd;
        handle_inbox(e);
        return;
    }
    if (tag == TAG_LISTENER) {
        lst_accept(e, (struct zc_lfd *)(uintptr_t)(u & ~(uint64_t)3));
        return;
    }
    /* A relay's events name its slot and generation: an event for a relay
     * that ended (earlier in this batch, or long ago through a copy of its
     * fd) names an old generation and is dropped. */
    uint32_t slot = (uint32_t)(u >> 2) & ((1u << 30) - 1), gen = (uint32_t)(u >> 32);
    if (slot >= e->nslots)
        return;
    struct zc_conn *c = e->slots[slot];
    if (c->gen != gen || c->ended)
        return;
    struct zc_sock *s = &c->s[tag];
    if (m & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR | EPOLLPRI))
        s->readable = 1;
    if (m & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        s->rdhup = 1;
    if (m & EPOLLPRI) {
        s->trusty = 0; /* urgent data can end a read early: read to EAGAIN */
        /* splice() stops at the urgent mark and reports EAGAIN from then on,
         * which would stall the direction for good; recv() steps over it. */
        c->d[tag].nosplice = 1;
        if (c->d[tag].mode == M_SPLICE)
            demote(e, &c->d[tag]);
    }
    if (m & (EPOLLOUT | EPOLLHUP | EPOLLERR))
        s->writable = 1;
    if (m & (EPOLLHUP | EPOLLERR))
        s->hup = 1;
    if (c->connecting) {
        if (tag == TAG_B && (m & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            connect_done(e, c, m);
        return;
    }
    conn_step(e, c);
}

static void expire(struct engine *e)
{
    struct zc_conn *c = e->connecting;
    while (c != NULL) {
        struct zc_conn *next = c->cnext;
        if (c->deadline <= e->now)
            connect_failed(e, c, ETIMEDOUT);
        c = next;
    }
    if (e->retry_accept && e->retry_at <= e->now) {
        e->retry_accept = 0;
        zcio_hub *h = e->hub;
        pthread_mutex_lock(&h->mu);
        for (struct zcio_listener *l = h->listeners; l != NULL; l = l->next)
            lst_resume(l, 1);
        pthread_mutex_unlock(&h->mu);
    }
}

static int next_timeout(struct engine *e)
{
    if (e->runq != NULL)
        return 0;
    int64_t soonest = -1;
    for (struct zc_conn *c = e->connecting; c != NULL; c = c->cnext)
        if (soonest < 0 || c->deadline < soonest)
            soonest = c->deadline;
    if (e->retry_accept && (soonest < 0 || e->retry_at < soonest))
        soonest = e->retry_at;
    if (soonest < 0)
        return -1;
    int64_t ms = soonest - now_ms();
    /* CLOCK_MONOTONIC_COARSE ticks every few ms: never spin on a deadline. */
    return ms < 1 ? 1 : (ms > 60000 ? 60000 : (int)ms);
}

static void free_grave(struct engine *e)
{
    while (e->grave != NULL) {
        struct zc_conn *c = e->grave;
        e->grave = c->run_next;
        conn_free(e, c);
    }
}

static void run_queue(struct engine *e)
{
    struct zc_conn *q = e->runq;
    e->runq = NULL;
    while (q != NULL) {
        struct zc_conn *c = q;
        q = c->run_next;
        c->run_next = NULL;
        c->queued = 0;
        if (c->ended)
            conn_free(e, c);
        else
            conn_step(e, c);
    }
}

static void engine_stop(struct engine *e)
{
    handle_inbox(e); /* new relays are aborted, listeners acknowledged */
    while (e->conns != NULL)
        conn_end(e, e->conns, ECONNABORTED, 0);
    while (e->runq != NULL) {
        struct zc_conn *c = e->runq;
        e->runq = c->run_next;
        conn_free(e, c);
    }
    free_grave(e);
}

static void *engine_main(void *arg)
{
    struct engine *e = arg;
    struct epoll_event ev[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(e->epfd, ev, MAX_EVENTS, next_timeout(e));
        pthread_mutex_lock(&e->lock);
        e->now = now_ms();
        for (int i = 0; i < n; i++)
            on_event(e, &ev[i]);
        run_queue(e);
        expire(e);
        free_grave(e);
        if (LOAD(&e->stop)) {
            engine_stop(e);
            pthread_mutex_unlock(&e->lock);
            return NULL;
        }
        pthread_mutex_unlock(&e->lock);
    }
}

/* ------------------------------------------------------------ fork */

static void fork_prepare(void)
{
    pthread_mutex_lock(&g_mu);
    for (zcio_hub *h = g_hubs; h != NULL; h = h->gnext) {
        for (int i = 0; i < h->nthreads; i++)
            pthread_mutex_lock(&h->eng[i].lock);
        pthread_mutex_lock(&h->mu);
        for (int i = 0; i < h->nthreads; i++)
            pthread_mutex_lock(&h->eng[i].inbox_mu);
        pthread_mutex_lock(&h->pool.mu);
        for (struct zcio_listener *l = h->listeners; l != NULL; l = l->next)
            pthread_mutex_lock(&l->mu);
    }
}

static void fork_unlock(zcio_hub *h)
{
    for (struct zcio_listener *l = h->listeners; l != NULL; l = l->next)
        pthread_mutex_unlock(&l->mu);
    pthread_mutex_unlock(&h->pool.mu);
    for (int i = 0; i < h->nthreads; i++)
        pthread_mutex_unlock(&h->eng[i].inbox_mu);
    pthread_mutex_unlock(&h->mu);
    for (int i = 0; i < h->nthreads; i++)
        pthread_mutex_unlock(&h->eng[i].lock);
}

static void fork_parent(void)
{
    for (zcio_hub *h = g_hubs; h != NULL; h = h->gnext)
        fork_unlock(h);
    pthread_mutex_unlock(&g_mu);
}

static void close_conn_fds(struct zc_conn *c)
{
    for (int i = 0; i < 2; i++) {
        close_fd(&c->s[i].fd);
        if (c->d[i].pipe != NULL) {
            close_fd(&c->d[i].pipe->r);
            close_fd(&c->d[i].pipe->w);
        }
    }
}

/* In the child: the engine threads are gone. Close every fd the parent's
 * hubs hold, so that no relayed connection is kept open by the child. */
static void fork_child(void)
{
    for (zcio_hub *h = g_hubs; h != NULL; h = h->gnext) {
        h->forked = 1;
        h->closing = 1;
        for (int i = 0; i < h->nthreads; i++) {
            struct engine *e = &h->eng[i];
            e->started = 0;
            for (struct zc_conn *c = e->conns; c != NULL; c = c->next)
                close_conn_fds(c);
            for (struct zc_conn *c = e->inbox; c != NULL; c = c->run_next)
                close_conn_fds(c);
            close_fd(&e->epfd);
            close_fd(&e->efd);
        }
        for (struct zc_pipe *p = h->pool.free; p != NULL; p = p->next) {
            close_fd(&p->r);
            close_fd(&p->w);
        }
        for (struct zcio_listener *l = h->listeners; l != NULL; l = l->next)
            lst_close_fds(l);
        fork_unlock(h);
    }
    pthread_mutex_unlock(&g_mu);
}

static void register_fork_handlers(void)
{
    (void)pthread_atfork(fork_prepare, fork_parent, fork_child);
}

/* ------------------------------------------------------------ the hub */

int zcio_hub_new(int threads, int64_t pipe_size, int max_pipes, zcio_hub **out)
{
    if (threads < 1 || pipe_size <= 0 || max_pipes < 0)
        return -EINVAL;
    pthread_once(&g_once, register_fork_handlers);
    zcio_hub *h = calloc(1, sizeof *h);
    if (h == NULL)
        return -ENOMEM;
    h->eng = calloc((size_t)threads, sizeof *h->eng);
    if (h->eng == NULL) {
        free(h);
        return -ENOMEM;
    }
    pthread_mutex_init(&h->mu, NULL);
    pthread_mutex_init(&h->pool.mu, NULL);
    h->pool.size = pipe_size;
    h->pool.max = max_pipes;
    h->nthreads = threads;
    int err = 0;
    for (int i = 0; i < threads; i++) {
        struct engine *e = &h->eng[i];
        e->hub = h;
        e->idx = i;
        e->epfd = e->efd = -1;
        pthread_mutex_init(&e->lock, NULL);
        pthread_mutex_init(&e->inbox_mu, NULL);
        e->now = now_ms();
        e->scratch = malloc(BIG_CHUNK);
        e->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (e->epfd < 0 && err == 0)
            err = errno;
        e->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (e->efd < 0 && err == 0)
            err = errno;
        if (e->scratch == NULL && err == 0)
            err = ENOMEM;
        if (err == 0) {
            struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TAG_WAKE};
            if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->efd, &ev) < 0)
                err = errno;
        }
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old); /* the threads inherit it */
    for (int i = 0; i < threads && err == 0; i++) {
        err = pthread_create(&h->eng[i].thread, NULL, engine_main, &h->eng[i]);
        if (err == 0)
            h->eng[i].started = 1;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err != 0) {
        zcio_hub_close(h);
        zcio_hub_free(h);
        return -err;
    }
    pthread_mutex_lock(&g_mu);
    h->gnext = g_hubs;
    g_hubs = h;
    pthread_mutex_unlock(&g_mu);
    *out = h;
    return 0;
}

void zcio_hub_close(zcio_hub *h)
{
    pthread_mutex_lock(&h->mu);
    int already = h->closing;
    h->closing = 1;
    pthread_mutex_unlock(&h->mu);
    if (already || h->forked)
        return;
    for (int i = 0; i < h->nthreads; i++) {
        STORE(&h->eng[i].stop, 1);
        if (h->eng[i].efd >= 0)
            poke(h->eng[i].efd);
    }
    for (int i = 0; i < h->nthreads; i++) {
        if (h->eng[i].started) {
            pthread_join(h->eng[i].thread, NULL);
            h->eng[i].started = 0;
        }
    }
    pthread_mutex_lock(&h->mu);
    for (struct zcio_listener *l = h->listeners; l != NULL; l = l->next) {
        pthread_mutex_lock(&l->mu);
        STORE(&l->closing, 1);
        l->armed = 0;
        lst_close_fds(l);
        l->closed = 1;
        pthread_cond_broadcast(&l->cv);
        pthread_mutex_unlock(&l->mu);
    }
    pthread_mutex_unlock(&h->mu);
    pthread_mutex_lock(&h->pool.mu);
    h->pool.closed = 1;
    struct zc_pipe *p = h->pool.free;
    h->pool.free = NULL;
    h->pool.destroyed += h->pool.nfree;
    h->pool.nfree = 0;
    pthread_mutex_unlock(&h->pool.mu);
    while (p != NULL) {
        struct zc_pipe *next = p->next;
        close(p->r);
        close(p->w);
        free(p);
        p = next;
    }
    for (int i = 0; i < h->nthreads; i++) {
        close_fd(&h->eng[i].epfd);
        close_fd(&h->eng[i].efd);
    }
}

void zcio_hub_free(zcio_hub *h)
{
    pthread_mutex_lock(&g_mu);
    for (zcio_hub **pp = &g_hubs; *pp != NULL; pp = &(*pp)->gnext) {
        if (*pp == h) {
            *pp = h->gnext;
            break;
        }
    }
    pthread_mutex_unlock(&g_mu);
    while (h->listeners != NULL) {
        struct zcio_listener *l = h->listeners;
        h->listeners = l->next;
        struct zc_target *t = l->target;
        while (t != NULL) {
            struct zc_target *older = t->older;
            free(t);
            t = older;
        }
        if (l->sink != NULL)
            sink_unref(l->sink);
        free(l->lfds);
        if (!h->forked) {
            pthread_mutex_destroy(&l->mu);
            pthread_cond_destroy(&l->cv);
        }
        free(l);
    }
    for (int i = 0; i < h->nthreads; i++) {
        struct engine *e = &h->eng[i];
        if (!h->forked) { /* in a forked child the parent's state may be mid-change */
            for (uint32_t k = 0; k < e->nslots; k++)
                free(e->slots[k]);
            free(e->slots);
        }
        free(e->scratch);
        if (!h->forked) {
            pthread_mutex_destroy(&e->lock);
            pthread_mutex_destroy(&e->inbox_mu);
        }
    }
    if (!h->forked) {
        pthread_mutex_destroy(&h->mu);
        pthread_mutex_destroy(&h->pool.mu);
    }
    free(h->eng);
    free(h);
}

void zcio_hub_get_stats(zcio_hub *h, zcio_hub_stats *out)
{
    memset(out, 0, sizeof *out);
    out->threads = h->nthreads;
    for (int i = 0; i < h->nthreads; i++) {
        struct counters *c = &h->eng[i].c;
        out->relays_started += PEEK(&c->started);
        out->relays_active += PEEK(&c->active);
        out->relays_ended += PEEK(&c->ended);
        out->relays_failed += PEEK(&c->failed);
        out->bytes_copied += PEEK(&c->copied);
        out->bytes_spliced += PEEK(&c->spliced);
        out->copy_reads += PEEK(&c->copy_reads);
        out->splice_reads += PEEK(&c->splice_reads);
        out->to_splice += PEEK(&c->to_splice);
        out->to_copy += PEEK(&c->to_copy);
        out->buffers += PEEK(&c->buffers);
        out->accepted += PEEK(&c->accepted);
        out->connect_failed += PEEK(&c->connect_failed);
    }
    pthread_mutex_lock(&h->pool.mu);
    out->pipes_created = h->pool.created;
    out->pipes_destroyed = h->pool.destroyed;
    out->pipes_in_use = h->pool.in_use;
    out->pipes_free = h->pool.nfree;
    out->pipes_exhausted = h->pool.exhausted;
    out->pipes_max = h->pool.max;
    out->pipe_size = h->pool.size;
    pthread_mutex_unlock(&h->pool.mu);
}

int64_t zcio_hub_thread_active(zcio_hub *h, int i)
{
    return i < 0 || i >= h->nthreads ? -1 : PEEK(&h->eng[i].c.active);
}

/* Fail a zcio_hub_relay() that had made its duplicates (h->mu held). */
static int relay_refused(zcio_hub *h, struct zc_conn *c, const int fds[2], int err)
{
    pthread_mutex_unlock(&h->mu);
    for (int i = 0; i < 2; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    free(c);
    return -err;
}

int zcio_hub_relay(zcio_hub *h, int fd_a, int fd_b, int half_close, uint64_t id, zcio_sink *sink)
{
    int flags[2], fds[2] = {-1, -1};
    struct zc_conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return -ENOMEM;
    pthread_mutex_lock(&h->mu);
    if (h->closing)
        return relay_refused(h, c, fds, ESHUTDOWN);
    /* The hub works on duplicates of its own: the caller closes its fds
     * whenever it likes (an exception between this call and that close
     * cannot leave two owners closing the same fd number). */
    fds[0] = fcntl(fd_a, F_DUPFD_CLOEXEC, 0);
    if (fds[0] < 0)
        return relay_refused(h, c, fds, errno);
    fds[1] = fcntl(fd_b, F_DUPFD_CLOEXEC, 0);
    if (fds[1] < 0)
        return relay_refused(h, c, fds, errno);
    for (int i = 0; i < 2; i++) {
        flags[i] = fcntl(fds[i], F_GETFL);
        if (flags[i] < 0 || (!(flags[i] & O_NONBLOCK) && fcntl(fds[i], F_SETFL, flags[i] | O_NONBLOCK) < 0)) {
            int err = errno;
            if (i == 1)
                (void)fcntl(fds[0], F_SETFL, flags[0]);
            return relay_refused(h, c, fds, err);
        }
    }
    for (int i = 0; i < 2; i++)
        sock_setup(&c->s[i], fds[i]);
    c->id = id;
    c->half_close = half_close != 0;
    c->sink = sink;
    if (sink != NULL)
        FADD(&sink->refs, 1);
    struct engine *e = &h->eng[h->rr++ % (unsigned)h->nthreads];
    pthread_mutex_lock(&e->inbox_mu);
    int was_empty = e->inbox == NULL && e->cmds == NULL;
    c->run_next = e->inbox;
    e->inbox = c;
    pthread_mutex_unlock(&e->inbox_mu);
    pthread_mutex_unlock(&h->mu);
    if (was_empty)
        poke(e->efd);
    return e->idx;
}

static int push_cmd(zcio_hub *h, int engine, struct zc_cmd *cmd)
{
    /* h->mu is held: close() cannot have stopped the engine yet. */
    struct engine *e = &h->eng[engine];
    pthread_mutex_lock(&e->inbox_mu);
    int was_empty = e->inbox == NULL && e->cmds == NULL;
    cmd->next = e->cmds;
    e->cmds = cmd;
    pthread_mutex_unlock(&e->inbox_mu);
    if (was_empty)
        poke(e->efd);
    return 0;
}

int zcio_hub_cancel(zcio_hub *h, int engine, uint64_t id)
{
    if (engine < 0 || engine >= h->nthreads)
        return -EINVAL;
    struct zc_cmd *cmd = calloc(1, sizeof *cmd);
    if (cmd == NULL)
        return -ENOMEM;
    cmd->type = CMD_CANCEL;
    cmd->id = id;
    pthread_mutex_lock(&h->mu);
    if (h->closing) {
        pthread_mutex_unlock(&h->mu);
        free(cmd);
        return 0; /* close() ends it */
    }
    push_cmd(h, engine, cmd);
    pthread_mutex_unlock(&h->mu);
    return 0;
}

/* ------------------------------------------------------------ listen API */

static struct zc_target *target_new(const void *addr, int addrlen)
{
    if (addrlen <= 0 || (size_t)addrlen > sizeof(struct sockaddr_storage))
        return NULL;
    struct zc_target *t = calloc(1, sizeof *t);
    if (t != NULL) {
        memcpy(&t->addr, addr, (size_t)addrlen);
        t->len = addrlen;
    }
    return t;
}

int zcio_hub_listen(zcio_hub *h, const int *fds, int nfds, const void *addr, int addrlen,
                    int max_conns, int connect_timeout_ms, zcio_sink *sink, int verbose,
                    zcio_listener **out)
{
    if (max_conns < 1 || connect_timeout_ms < 0 || nfds < 1)
        return -EINVAL;
    struct zcio_listener *l = calloc(1, sizeof *l);
    if (l == NULL)
        return -ENOMEM;
    l->lfds = calloc((size_t)nfds, sizeof *l->lfds);
    l->target = target_new(addr, addrlen);
    if (l->target == NULL || l->lfds == NULL) {
        int err = l->target == NULL ? EINVAL : ENOMEM;
        free(l->target);
        free(l->lfds);
        free(l);
        return -err;
    }
    for (int k = 0; k < nfds; k++) {
        int flags = fcntl(fds[k], F_GETFL);
        if (flags < 0 || fcntl(fds[k], F_SETFL, flags | O_NONBLOCK) < 0) {
            int err = errno;
            free(l->target);
            free(l->lfds);
            free(l);
            return -err;
        }
        l->lfds[k].l = l;
        l->lfds[k].fd = fds[k];
    }
    l->nfds = nfds;
    int one = 1, proto = 0, domain = 0;
    socklen_t len = sizeof proto;
    l->tcp = getsockopt(fds[0], SOL_SOCKET, SO_PROTOCOL, &proto, &len) == 0 &&
             (len = sizeof domain, getsockopt(fds[0], SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0) &&
             proto == IPPROTO_TCP && (domain == AF_INET || domain == AF_INET6);
    /* Accepted sockets inherit TCP_NODELAY from the listener on Linux. */
    l->nodelay = l->tcp;
    for (int k = 0; k < nfds && l->tcp; k++)
        if (setsockopt(fds[k], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
            l->nodelay = 0;
    l->hub = h;
    l->max = max_conns;
    l->connect_timeout_ms = connect_timeout_ms;
    l->verbose = verbose;
    l->sink = sink;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    pthread_mutex_lock(&h->mu);
    if (h->closing) {
        pthread_mutex_unlock(&h->mu);
        pthread_mutex_destroy(&l->mu);
        pthread_cond_destroy(&l->cv);
        free(l->target);
        free(l->lfds);
        free(l);
        return -ESHUTDOWN; /* the fds stay non-blocking: the caller closes them */
    }
    if (sink != NULL)
        FADD(&sink->refs, 1);
    l->next = h->listeners;
    h->listeners = l;
    pthread_mutex_lock(&l->mu);
    lst_set_armed(l, 1);
    pthread_mutex_unlock(&l->mu);
    pthread_mutex_unlock(&h->mu);
    *out = l;
    return 0;
}

int zcio_listener_target(zcio_listener *l, const void *addr, int addrlen)
{
    struct zc_target *t = target_new(addr, addrlen);
    if (t == NULL)
        return -EINVAL;
    pthread_mutex_lock(&l->mu);
    t->older = l->target; /* engines may still read the old one: freed with l */
    STORE(&l->target, t);
    STORE(&l->resolve_posted, 0);
    pthread_mutex_unlock(&l->mu);
    return 0;
}

void zcio_listener_close(zcio_listener *l)
{
    zcio_hub *h = l->hub;
    pthread_mutex_lock(&h->mu);
    pthread_mutex_lock(&l->mu);
    int first = !l->closing;
    STORE(&l->closing, 1);
    if (l->armed)
        lst_set_armed(l, 0);
    pthread_mutex_unlock(&l->mu);
    if (!first || h->closing) {
        pthread_mutex_unlock(&h->mu);
        return; /* another close, or the hub's, finishes the job */
    }
    for (int i = 0; i < h->nthreads; i++) {
        struct zc_cmd *cmd = calloc(1, sizeof *cmd);
        if (cmd == NULL) {
            pthread_mutex_lock(&l->mu);
            l->acks++; /* out of memory: that engine's relays run on */
            pthread_mutex_unlock(&l->mu);
            continue;
        }
        cmd->type = CMD_UNLISTEN;
        cmd->lst = l;
        push_cmd(h, i, cmd);
    }
    pthread_mutex_unlock(&h->mu);
    pthread_mutex_lock(&l->mu);
    while (l->acks < h->nthreads && !l->closed)
        pthread_cond_wait(&l->cv, &l->mu);
    lst_close_fds(l);
    l->closed = 1;
    pthread_mutex_unlock(&l->mu);
}

void zcio_listener_get_stats(zcio_listener *l, zcio_listener_stats *out)
{
    out->accepted = LOAD(&l->accepted);
    out->active = LOAD(&l->active);
    out->peak = LOAD(&l->peak);
    out->served = LOAD(&l->served);
    out->bytes_up = LOAD(&l->up);
    out->bytes_down = LOAD(&l->down);
    out->connect_failed = LOAD(&l->connect_failed);
}
