/*
 * Traffic mirroring's sender: fire-and-forget shadow copies of requests, on a worker's io_uring
 * loop. Each shadow is one TCP connection of its own: IORING_OP_CONNECT, IORING_OP_SEND of the
 * whole request (short sends resumed), then IORING_OP_RECV into a private 4 KiB buffer, discarded,
 * until EOF; one timer bounds the whole exchange. A shadow never touches the loop's provided
 * buffer ring and never makes the real request wait or fail: whatever cannot be started at once
 * (limits, memory, socket(), a full submission queue) is dropped and counted.
 *
 * Bounds, per instance: at most max_inflight shadows, and at most max_bytes of request copies, in
 * flight. Memory held is the request copies plus about 4.3 KiB per shadow in flight (the receive
 * buffer, the address, bookkeeping: one malloc per shadow), i.e. at most
 * max_bytes + max_inflight * 4.3 KiB; and one socket per shadow.
 *
 * Outcomes: every shadow started (sent) ends as exactly one of
 *   completed  a response status line ("HTTP/" ... LF) was read, then the connection ended: EOF,
 *              a reset, or the timeout (a target that answers and keeps the connection open is
 *              closed at the timeout and counts here);
 *   failed     connect, send or recv failed (refused, reset, unreachable...), the target closed
 *              before a status line, or rmr_mirror_free cancelled the shadow;
 *   timeouts   timeout_ms passed before a status line was read (a silent target, or one that
 *              never reads the request).
 * So sent == completed + failed + timeouts + inflight at all times.
 *
 * Threads: an instance belongs to its loop's thread; every function below must be called on that
 * thread, except rmr_mirror_totals (any thread).
 */
#ifndef REMORA_MIRROR_H
#define REMORA_MIRROR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "remora/loop.h"

typedef struct rmr_mirror rmr_mirror_t;

#define RMR_MIRROR_DEFAULT_INFLIGHT 64
#define RMR_MIRROR_DEFAULT_BYTES (4u << 20)
#define RMR_MIRROR_DEFAULT_TIMEOUT_MS 1000
/* Bytes of each shadow's private receive buffer: the response is read into it and discarded. */
#define RMR_MIRROR_RECV_BUF 4096

typedef struct rmr_mirror_stats {
    uint64_t sent;      /* shadows started */
    uint64_t dropped;   /* refused by rmr_mirror_send: limits, bad input, no memory, socket()
                           failed, no free SQE, instance being freed */
    uint64_t completed; /* ended after a response status line (see the top of this file) */
    uint64_t failed;    /* ended in an error, or cancelled by rmr_mirror_free */
    uint64_t timeouts;  /* ended by the timeout before a status line */
    uint32_t inflight;  /* started and not ended */
    size_t bytes;       /* request bytes held by the shadows in flight */
} rmr_mirror_stats_t;

/*
 * Makes a sender on loop for at most max_inflight shadows (0: RMR_MIRROR_DEFAULT_INFLIGHT) and
 * at most max_bytes request bytes (0: RMR_MIRROR_DEFAULT_BYTES) in flight. Returns NULL when out
 * of memory. The caller owns the sender and frees it with rmr_mirror_free before freeing loop.
 */
rmr_mirror_t *rmr_mirror_new(rmr_loop_t *loop, uint32_t max_inflight, size_t max_bytes);

/*
 * Starts a shadow: connects to sa (salen bytes, IPv4 or IPv6; copied), sends req[0..n) (a whole
 * HTTP/1.1 request, head with "connection: close" then the body, as the caller built it; copied,
 * the caller keeps req), reads the response and discards it until EOF, then closes. Gives up
 * after timeout_ms (0: RMR_MIRROR_DEFAULT_TIMEOUT_MS) counted from this call over connect, send
 * and recv together, cancelling the pending operation and closing the socket (with a reset, so
 * that no unsent bytes linger in the kernel).
 * Returns 0 when started (counted as sent; the outcome is counted later, see the top of this
 * file), or -1 when dropped (counted as dropped, nothing is kept): max_inflight shadows or
 * max_bytes request bytes would be exceeded (a request larger than max_bytes is always dropped),
 * n is 0, sa is NULL or salen does not fit a sockaddr_storage, out of memory, socket() failed,
 * the loop's submission queue is full (it is not flushed for a shadow), or m is being freed.
 * Never blocks, never runs the loop. The first SQE is queued now and submitted by the loop's next
 * turn.
 */
int rmr_mirror_send(rmr_mirror_t *m, const struct sockaddr *sa, socklen_t salen, const char *req,
                    size_t n, uint32_t timeout_ms);

/* Copies this instance's counters into *out. */
void rmr_mirror_get_stats(const rmr_mirror_t *m, rmr_mirror_stats_t *out);

/*
 * Copies the process-wide totals over all instances, past and present, into *out (inflight and
 * bytes: now, over the live instances). Read with relaxed atomics, one counter at a time: the
 * counters are each exact but not one snapshot. Any thread, e.g. the admin thread.
 */
void rmr_mirror_totals(rmr_mirror_stats_t *out);

/*
 * Cancels every shadow in flight (each counted as failed), waits for the ring to give back every
 * operation that names one, and frees m. To wait it runs turns of m's loop (rmr_loop_turn), which
 * dispatch the loop's other completions and timers as usual; so call it on the loop's thread,
 * before rmr_loop_free, and never from inside a callback or timer of that loop (a completion
 * already taken by the running turn would never come back, and this would wait forever). Returns
 * at once when nothing is in flight. NULL is a no-op.
 */
void rmr_mirror_free(rmr_mirror_t *m);

#endif
