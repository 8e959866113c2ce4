/*
 * hub.h -- the relay engine behind zcio.RelayHub.
 *
 * This file is both the cffi cdef (read by csrc/build.py) and a C header
 * (included by csrc/hub.c), so it holds only what both understand: integer
 * #defines, typedefs and prototypes, no include guard. Conventions as in
 * zcio.h: every symbol carries the zcio_ prefix, failures are -errno.
 *
 * A hub owns one or more engine threads, each with its own epoll set. A
 * relay joins one engine and never leaves it; zcio_hub_relay() takes
 * duplicates of its two fds, which the hub owns and closes when the relay
 * ends (the caller closes its own).
 * Results come back as records through a sink: a queue with an eventfd that
 * becomes readable when records wait (a collector thread blocks on it, or an
 * event loop watches it). No engine thread ever touches Python.
 */

/* Record kinds. */
#define ZCIO_REC_RELAY 1            /* a relay ended (or failed) */
#define ZCIO_REC_CONNECT_FAILED 2   /* a listener's connect to its target failed */

typedef struct zcio_hub zcio_hub;
typedef struct zcio_sink zcio_sink;
typedef struct zcio_listener zcio_listener;

typedef struct {
    uint64_t id;                 /* the caller's id (0 for a listener's relays) */
    int kind;                    /* ZCIO_REC_* */
    int err;                     /* 0: ended by EOF; else the errno that ended it */
    int err_dir;                 /* with err: 0 = a to b failed, 1 = b to a */
    int peer_len;                /* listener relays: the client's address */
    unsigned char peer[28];
    int64_t transferred[2];      /* bytes delivered a->b, b->a */
    int64_t spliced[2];          /* of those, bytes moved by splice */
    unsigned char *pending[2];   /* bytes read but not delivered (malloc'd) */
    int64_t pending_len[2];
} zcio_relay_result;

typedef struct {
    int64_t threads;
    int64_t relays_started;
    int64_t relays_active;
    int64_t relays_ended;         /* by EOF */
    int64_t relays_failed;        /* by an error, a cancel or close() */
    int64_t bytes_copied;         /* delivered through a buffer (recv/send) */
    int64_t bytes_spliced;        /* delivered through a pipe (splice) */
    int64_t copy_reads;           /* recv calls that returned bytes */
    int64_t splice_reads;         /* socket-to-pipe splices that returned bytes */
    int64_t to_splice;            /* switches of a direction from copy to splice */
    int64_t to_copy;              /* and back */
    int64_t buffers;              /* copy buffers held now (bytes waiting) */
    int64_t pipes_created;
    int64_t pipes_destroyed;
    int64_t pipes_in_use;
    int64_t pipes_free;
    int64_t pipes_exhausted;      /* a pipe was wanted and none was left */
    int64_t pipes_max;
    int64_t pipe_size;
    int64_t accepted;             /* by listeners */
    int64_t connect_failed;
} zcio_hub_stats;

typedef struct {
    int64_t accepted;
    int64_t active;
    int64_t peak;
    int64_t served;               /* relays that ended, connect failures included */
    int64_t bytes_up;             /* client to target */
    int64_t bytes_down;
    int64_t connect_failed;
} zcio_listener_stats;

/* A hub with `threads` engine threads and a pipe pool of at most max_pipes
 * pipes of pipe_size bytes (a refused resize keeps the default size).
 * Stores the hub in *out and returns 0, or returns -errno. The threads start
 * with every signal blocked, so signals go to the interpreter's threads. */
int zcio_hub_new(int threads, int64_t pipe_size, int max_pipes, zcio_hub **out);

/* End every relay (their records say ECONNABORTED; both sockets closed),
 * stop the listeners and join the threads. Idempotent; returns once done. */
void zcio_hub_close(zcio_hub *h);

/* Free a closed hub (or, in a forked child, the parent's copy of one). */
void zcio_hub_free(zcio_hub *h);

void zcio_hub_get_stats(zcio_hub *h, zcio_hub_stats *out);
/* Relays engine thread i holds now (-1 for a thread that does not exist). */
int64_t zcio_hub_thread_active(zcio_hub *h, int i);

/* Relay between two connected stream sockets until both ends reach EOF
 * (half_close: EOF one way shuts down the other's write side; 0: the first
 * EOF ends the relay), an error, a cancel or close. On success the hub owns
 * both fds (it makes them non-blocking and closes them at the end) and the
 * result is posted to `sink` with `id`; returns the engine index (>= 0).
 * -ESHUTDOWN after close, -ENOMEM: nothing was taken. */
int zcio_hub_relay(zcio_hub *h, int fd_a, int fd_b, int half_close, uint64_t id,
                   zcio_sink *sink);

/* Ask engine `engine` to end relay `id` (its record then says ECANCELED).
 * A relay that already ended is left alone. */
int zcio_hub_cancel(zcio_hub *h, int engine, uint64_t id);

/* Sinks: where records go. The caller holds one reference; each relay that
 * reports to a sink holds another. */
int zcio_sink_new(zcio_sink **out);
int zcio_sink_fd(zcio_sink *s);
/* Move up to max records into out. Waits up to timeout_ms (-1: forever) for
 * the first; returns how many, or -ESHUTDOWN once zcio_sink_shutdown() was
 * called and the queue is empty. Free each record's pending bytes with
 * zcio_result_free(). */
int zcio_sink_collect(zcio_sink *s, zcio_relay_result *out, int max, int timeout_ms);
/* Wake every collector; from now on an empty queue answers -ESHUTDOWN. */
void zcio_sink_shutdown(zcio_sink *s);
/* Drop the caller's reference; records posted afterwards are discarded. */
void zcio_sink_release(zcio_sink *s);
void zcio_result_free(zcio_relay_result *r);

/* Listeners: the hub accepts on listening sockets (which it then owns: one
 * that every engine waits on, or one per engine bound with SO_REUSEPORT),
 * connects each client to `addr` without blocking and relays the pair, all
 * on its engine threads. At most max_conns relays at once (the listener
 * stops accepting meanwhile). A failed connect posts a
 * ZCIO_REC_CONNECT_FAILED record to `sink` (one until zcio_listener_target
 * is called again); with `verbose` every relay's end is posted too. */
int zcio_hub_listen(zcio_hub *h, const int *fds, int nfds, const void *addr,
                    int addrlen, int max_conns, int connect_timeout_ms,
                    zcio_sink *sink, int verbose, zcio_listener **out);
int zcio_listener_target(zcio_listener *l, const void *addr, int addrlen);
/* Stop accepting, end the listener's relays (ECONNABORTED), close its fd;
 * returns once done. Idempotent. The listener's memory lives until the hub
 * is freed. */
void zcio_listener_close(zcio_listener *l);
void zcio_listener_get_stats(zcio_listener *l, zcio_listener_stats *out);
