/*
 * remora event loop: one io_uring per thread, one submit-and-wait per turn, completions drained
 * in a batch and dispatched after the ring is advanced (never re-entrantly), a timer heap whose
 * nearest deadline becomes the wait timeout, and a provided buffer ring for multishot recv.
 *
 * Threads: a loop belongs to the thread that created it; nothing here is thread-safe except
 * rmr_loop_wake().
 */
#ifndef REMORA_LOOP_H
#define REMORA_LOOP_H

#include <stdint.h>
#include <stddef.h>
#include <liburing.h>

typedef struct rmr_loop rmr_loop_t;
typedef struct rmr_op rmr_op_t;

/*
 * Called once per completion of op. res is the cqe's res (a negative errno on failure),
 * flags its flags (IORING_CQE_F_MORE: the multishot op stays armed; IORING_CQE_F_BUFFER: the
 * upper bits name a provided buffer that the callback now owns and must give back with
 * rmr_loop_buf_put()).
 */
typedef void (*rmr_op_cb)(rmr_loop_t *loop, rmr_op_t *op, int res, unsigned flags);

/* An operation in flight. Its owner keeps it (and every byte it names) alive until the last
 * completion, i.e. one without IORING_CQE_F_MORE. */
struct rmr_op {
    rmr_op_cb cb;
};

typedef struct rmr_timer rmr_timer_t;
typedef void (*rmr_timer_cb)(rmr_loop_t *loop, rmr_timer_t *t);
struct rmr_timer {
    uint64_t deadline; /* ms, monotonic */
    uint32_t slot;     /* heap index + 1; 0 when not armed */
    rmr_timer_cb cb;
};

struct rmr_loop {
    struct io_uring ring;
    uint64_t now_ms; /* refreshed once per turn */
    /* timers: binary min-heap of pointers */
    rmr_timer_t **heap;
    uint32_t nheap, capheap;
    /* provided buffers, group 0 */
    struct io_uring_buf_ring *br;
    char *bufs;
    uint32_t nbufs, bufsize, bufmask;
    int bufs_out; /* buffers handed to callbacks and not yet returned */
    /* wake-up from other threads */
    int efd;
    uint64_t efd_val;
    rmr_op_t efd_op;
    void (*on_wake)(rmr_loop_t *loop);
    /* Runs at the end of every turn, before the next wait: for work batched over a turn. */
    void (*before_wait)(rmr_loop_t *loop);
    int stop;
    /* Batching under load: after a turn that reaped many completions, the next wait asks the
     * kernel for a share of that many, for at most batch_wait_us, so that each turn carries
     * more work and the peers get fewer, fuller writes and fewer wake-ups. After a turn that
     * reaped a few, the wait is for one completion, as ever, so a quiet worker's latency is
     * untouched. 0 turns it off. */
    uint32_t batch_wait_us;
    /* Busy polling: after a turn that reaped something, the loop asks the kernel for completions
     * without sleeping, for up to busy_poll_us, before it waits. A reply that comes within that
     * time is handled without the wake-up of a sleeping thread (on a virtual machine, tens of
     * microseconds). A quiet worker polls once for that long after its last work, then sleeps;
     * one that is never idle for as long burns its core. 0 (the default) turns it off. */
    uint32_t busy_poll_us;
    uint64_t polls;       /* turns whose completions came while polling */
    unsigned last_reaped; /* completions reaped by the last turn */
    uint64_t turns, cqes; /* turns that reaped something, and what they reaped */
    unsigned features;    /* RMR_LOOP_F_* */
    void *data;
};

#define RMR_LOOP_F_DEFER_TASKRUN 0x1
#define RMR_LOOP_F_BUF_RING 0x2

/*
 * Sets up the ring (entries SQEs) and nbufs provided buffers of bufsize bytes (nbufs a power
 * of two). Returns 0, or a negative errno: -ENOSYS/-EPERM when io_uring is not allowed here
 * (see rmr_loop_explain()).
 */
int rmr_loop_init(rmr_loop_t *loop, unsigned entries, unsigned nbufs, unsigned bufsize);
void rmr_loop_free(rmr_loop_t *loop);

/* Explains an rmr_loop_init() failure to a user: what is wrong and how to fix it. */
const char *rmr_loop_explain(int err);

/* A free SQE; submits first when the ring is full. Never NULL. */
struct io_uring_sqe *rmr_loop_sqe(rmr_loop_t *loop);

/* Runs turns until loop->stop is set. */
void rmr_loop_run(rmr_loop_t *loop);
/* One turn: submit, wait for a completion, a timer, or max_wait_ms (UINT64_MAX: no limit),
 * then dispatch what completed and the timers due. */
void rmr_loop_turn(rmr_loop_t *loop, uint64_t max_wait_ms);

/* Wakes the loop from another thread: on_wake runs on the loop's thread. Async-signal-safe. */
void rmr_loop_wake(rmr_loop_t *loop);

/* Arms (or re-arms) t to fire after ms milliseconds: never sooner, and within the turn after the
 * deadline's millisecond ends. ms = 0 fires on the next turn. */
void rmr_timer_set(rmr_loop_t *loop, rmr_timer_t *t, uint64_t ms);
void rmr_timer_stop(rmr_loop_t *loop, rmr_timer_t *t);
static inline int rmr_timer_armed(const rmr_timer_t *t)
{
    return t->slot != 0;
}

/* The data of provided buffer bid. */
static inline char *rmr_loop_buf(rmr_loop_t *loop, unsigned bid)
{
    return loop->bufs + (size_t)bid * loop->bufsize;
}
/* Gives buffer bid back to the kernel. */
void rmr_loop_buf_put(rmr_loop_t *loop, unsigned bid);

uint64_t rmr_clock_ms(void);
uint64_t rmr_clock_us(void);

#endif
