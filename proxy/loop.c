/*
 * The io_uring event loop. See include/remora/loop.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "remora/loop.h"

#define CQE_BATCH 256
#define BATCH_FROM 8 /* completions in a turn from which the next wait batches */
#define BATCH_MAX 32 /* completions the batched wait asks for, at most */

uint64_t rmr_clock_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

uint64_t rmr_clock_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

const char *rmr_loop_explain(int err)
{
    switch (err) {
    case -ENOSYS:
        return "io_uring is not available: the kernel lacks it (Linux >= 6.0 is needed) or a "
               "seccomp filter blocks io_uring_setup. In a container, allow the io_uring_setup, "
               "io_uring_enter and io_uring_register syscalls (e.g. docker run --security-opt "
               "seccomp=docker/seccomp-io_uring.json)";
    case -EPERM:
    case -EACCES:
        return "io_uring is not permitted: a seccomp profile or the sysctl "
               "kernel.io_uring_disabled forbids it. Set kernel.io_uring_disabled=0, or allow "
               "the io_uring_setup, io_uring_enter and io_uring_register syscalls in the "
               "container's seccomp profile";
    case -ENOMEM:
        return "io_uring could not lock memory for its rings: raise RLIMIT_MEMLOCK "
               "(ulimit -l) or run on Linux >= 5.12";
    case -EINVAL:
        return "io_uring rejected the ring setup: the kernel is too old (Linux >= 6.0 is needed)";
    case -ERANGE:
        return "the provided buffer count must be a power of two, at most 32768";
    default:
        return "io_uring setup failed";
    }
}

static void efd_arm(rmr_loop_t *loop);

static void on_efd(rmr_loop_t *loop, rmr_op_t *op, int res, unsigned flags)
{
    (void)op;
    (void)flags;
    if (res == -ECANCELED)
        return;
    efd_arm(loop);
    if (loop->on_wake)
        loop->on_wake(loop);
}

static void efd_arm(rmr_loop_t *loop)
{
    struct io_uring_sqe *sqe = rmr_loop_sqe(loop);
    io_uring_prep_read(sqe, loop->efd, &loop->efd_val, sizeof(loop->efd_val), 0);
    io_uring_sqe_set_data(sqe, &loop->efd_op);
}

static int setup_bufs(rmr_loop_t *loop, unsigned nbufs, unsigned bufsize)
{
    if (!nbufs || (nbufs & (nbufs - 1)) || nbufs > 32768)
        return -ERANGE; /* the kernel wants a power of two, at most 32768 */
    size_t ringsz = (size_t)nbufs * sizeof(struct io_uring_buf);
    void *mem = mmap(NULL, ringsz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return -errno;
    loop->br = mem;
    io_uring_buf_ring_init(loop->br);
    struct io_uring_buf_reg reg = {
        .ring_addr = (unsigned long)mem,
        .ring_entries = nbufs,
        .bgid = 0,
    };
    int ret = io_uring_register_buf_ring(&loop->ring, &reg, 0);
    if (ret < 0) {
        munmap(mem, ringsz);
        loop->br = NULL;
        return ret;
    }
    loop->nbufs = nbufs; /* from here on rmr_loop_free unmaps the ring */
    /* The buffers are mapped, not allocated: pages count toward RSS only once the kernel
     * writes into them, so a quiet worker stays small. */
    size_t total = (size_t)nbufs * bufsize;
    loop->bufs = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (loop->bufs == MAP_FAILED) {
        loop->bufs = NULL;
        return -ENOMEM;
    }
    loop->nbufs = nbufs;
    loop->bufsize = bufsize;
    loop->bufmask = io_uring_buf_ring_mask(nbufs);
    for (unsigned i = 0; i < nbufs; i++)
        io_uring_buf_ring_add(loop->br, rmr_loop_buf(loop, i), bufsize, i, loop->bufmask, i);
    io_uring_buf_ring_advance(loop->br, nbufs);
    loop->features |= RMR_LOOP_F_BUF_RING;
    return 0;
}

int rmr_loop_init(rmr_loop_t *loop, unsigned entries, unsigned nbufs, unsigned bufsize)
{
    memset(loop, 0, sizeof(*loop));
    loop->efd = -1;
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_COOP_TASKRUN;
    int ret = io_uring_queue_init_params(entries, &loop->ring, &p);
    if (ret == -EINVAL) { /* kernels before 6.1: no DEFER_TASKRUN */
        memset(&p, 0, sizeof(p));
        ret = io_uring_queue_init_params(entries, &loop->ring, &p);
    } else if (ret == 0) {
        loop->features |= RMR_LOOP_F_DEFER_TASKRUN;
    }
    if (ret < 0)
        return ret;
    if (!(p.features & IORING_FEAT_EXT_ARG)) {
        io_uring_queue_exit(&loop->ring);
        return -EINVAL;
    }
    ret = setup_bufs(loop, nbufs, bufsize);
    if (ret < 0)
        goto fail;
    loop->efd = eventfd(0, EFD_CLOEXEC);
    if (loop->efd < 0) {
        ret = -errno;
        goto fail;
    }
    loop->efd_op.cb = on_efd;
    efd_arm(loop);
    loop->capheap = 256;
    loop->heap = malloc(loop->capheap * sizeof(*loop->heap));
    if (!loop->heap) {
        ret = -ENOMEM;
        goto fail;
    }
    loop->now_ms = rmr_clock_ms();
    return 0;
fail:
    rmr_loop_free(loop);
    return ret;
}

void rmr_loop_free(rmr_loop_t *loop)
{
    if (loop->ring.ring_fd > 0)
        io_uring_queue_exit(&loop->ring);
    loop->ring.ring_fd = -1;
    if (loop->br)
        munmap(loop->br, (size_t)loop->nbufs * sizeof(struct io_uring_buf));
    if (loop->bufs)
        munmap(loop->bufs, (size_t)loop->nbufs * loop->bufsize);
    if (loop->efd >= 0)
        close(loop->efd);
    free(loop->heap);
    loop->br = NULL;
    loop->bufs = NULL;
    loop->heap = NULL;
    loop->efd = -1;
}

struct io_uring_sqe *rmr_loop_sqe(rmr_loop_t *loop)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&loop->ring);
    while (!sqe) {
        io_uring_submit(&loop->ring);
        sqe = io_uring_get_sqe(&loop->ring);
    }
    return sqe;
}

void rmr_loop_wake(rmr_loop_t *loop)
{
    uint64_t one = 1;
    ssize_t n = write(loop->efd, &one, sizeof(one));
    (void)n;
}

void rmr_loop_buf_put(rmr_loop_t *loop, unsigned bid)
{
    io_uring_buf_ring_add(loop->br, rmr_loop_buf(loop, bid), loop->bufsize, bid, loop->bufmask, 0);
    io_uring_buf_ring_advance(loop->br, 1);
}

/* ---- timers: a binary min-heap on deadline ---- */

static void heap_swap(rmr_timer_t **h, uint32_t a, uint32_t b)
{
    rmr_timer_t *t = h[a];
    h[a] = h[b];
    h[b] = t;
    h[a]->slot = a + 1;
    h[b]->slot = b + 1;
}

static void heap_up(rmr_timer_t **h, uint32_t i)
{
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (h[p]->deadline <= h[i]->deadline)
            break;
        heap_swap(h, p, i);
        i = p;
    }
}

static void heap_down(rmr_timer_t **h, uint32_t n, uint32_t i)
{
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && h[l]->deadline < h[m]->deadline)
            m = l;
        if (r < n && h[r]->deadline < h[m]->deadline)
            m = r;
        if (m == i)
            break;
        heap_swap(h, m, i);
        i = m;
    }
}

void rmr_timer_stop(rmr_loop_t *loop, rmr_timer_t *t)
{
    if (!t->slot)
        return;
    uint32_t i = t->slot - 1;
    t->slot = 0;
    loop->nheap--;
    if (i == loop->nheap)
        return;
    loop->heap[i] = loop->heap[loop->nheap];
    loop->heap[i]->slot = i + 1;
    heap_down(loop->heap, loop->nheap, i);
    heap_up(loop->heap, i);
}

void rmr_timer_set(rmr_loop_t *loop, rmr_timer_t *t, uint64_t ms)
{
    /* now_ms is the turn's clock cut down to the millisecond: one more tick keeps a timer of
     * ms > 0 from firing before ms have passed since it was armed. */
    uint64_t deadline = loop->now_ms + ms + (ms != 0);
    if (t->slot) {
        uint32_t i = t->slot - 1;
        uint64_t old = t->deadline;
        t->deadline = deadline;
        if (deadline < old)
            heap_up(loop->heap, i);
        else if (deadline > old)
            heap_down(loop->heap, loop->nheap, i);
        return;
    }
    if (loop->nheap == loop->capheap) {
        uint32_t cap = loop->capheap * 2;
        rmr_timer_t **h = realloc(loop->heap, cap * sizeof(*h));
        if (!h)
            abort(); /* out of memory at a size that a worker cannot survive anyway */
        loop->heap = h;
        loop->capheap = cap;
    }
    t->deadline = deadline;
    loop->heap[loop->nheap] = t;
    t->slot = ++loop->nheap;
    heap_up(loop->heap, loop->nheap - 1);
}

static void run_timers(rmr_loop_t *loop)
{
    /* At most the timers armed now: one that re-arms itself for 0 ms waits for the next turn
     * instead of spinning here. */
    uint32_t budget = loop->nheap;
    while (budget-- && loop->nheap && loop->heap[0]->deadline <= loop->now_ms) {
        rmr_timer_t *t = loop->heap[0];
        rmr_timer_stop(loop, t);
        t->cb(loop, t);
    }
}

/* ---- the turn ---- */

struct done {
    rmr_op_t *op;
    int res;
    unsigned flags;
};

/* Submits what the turn queued and asks for completions without sleeping until some come, for
 * at most busy_poll_us (and not past the nearest timer, wait_ms away). Returns 1 when the
 * completion queue has entries. With DEFER_TASKRUN, completions are only posted when the
 * thread enters the kernel for them, so each poll is a (short) io_uring_enter. */
static int busy_poll(rmr_loop_t *loop, uint64_t wait_ms)
{
    uint64_t now = rmr_clock_us(), span = loop->busy_poll_us;
    if (wait_ms < span / 1000)
        span = wait_ms * 1000;
    uint64_t until = now + span;
    int ret = io_uring_submit_and_get_events(&loop->ring);
    (void)ret;
    while (!io_uring_cq_ready(&loop->ring)) {
        if (rmr_clock_us() >= until)
            return 0;
        ret = io_uring_get_events(&loop->ring);
    }
    loop->polls++;
    return 1;
}

void rmr_loop_run(rmr_loop_t *loop)
{
    while (!loop->stop)
        rmr_loop_turn(loop, UINT64_MAX);
}

/* How long the turn may sleep: max_wait_ms, or less when a timer is due sooner. */
static uint64_t turn_wait(const rmr_loop_t *loop, uint64_t max_wait_ms)
{
    uint64_t wait = max_wait_ms;
    if (loop->nheap) {
        uint64_t d = loop->heap[0]->deadline;
        uint64_t until_timer = d > loop->now_ms ? d - loop->now_ms : 0;
        if (until_timer < wait)
            wait = until_timer;
    }
    return wait;
}

void rmr_loop_turn(rmr_loop_t *loop, uint64_t max_wait_ms)
{
    struct done batch[CQE_BATCH];
    struct __kernel_timespec ts, *tsp = NULL;
    struct io_uring_cqe *cqe;
    uint64_t wait = turn_wait(loop, max_wait_ms);
    int batching = loop->batch_wait_us && loop->last_reaped >= BATCH_FROM &&
                   (uint64_t)loop->batch_wait_us < wait * 1000;
    if (loop->busy_poll_us && loop->last_reaped && !batching && wait != 0) {
        uint64_t t0 = loop->now_ms;
        if (busy_poll(loop, wait))
            goto reap;
        /* nothing came: sleep for what is left */
        loop->now_ms = rmr_clock_ms();
        uint64_t spent = loop->now_ms - t0;
        if (max_wait_ms != UINT64_MAX)
            max_wait_ms = max_wait_ms > spent ? max_wait_ms - spent : 0;
        wait = turn_wait(loop, max_wait_ms);
    }
    if (wait != UINT64_MAX) {
        ts.tv_sec = (long long)(wait / 1000);
        ts.tv_nsec = (long long)(wait % 1000) * 1000000;
        tsp = &ts;
    }
    unsigned want = 1;
    if (batching) {
        want = loop->last_reaped / 2 < BATCH_MAX ? loop->last_reaped / 2 : BATCH_MAX;
        ts.tv_sec = 0;
        ts.tv_nsec = (long long)loop->batch_wait_us * 1000;
        tsp = &ts;
    }
    /* The one syscall of the turn: submit what the last turn queued, wait for completions or
     * the nearest timer. */
    int ret = io_uring_submit_and_wait_timeout(&loop->ring, &cqe, want, tsp, NULL);
    (void)ret; /* -ETIME and -EINTR only mean there may be nothing to reap */
reap:
    loop->now_ms = rmr_clock_ms();
    loop->last_reaped = 0;
    for (;;) {
        unsigned head, n = 0, walked = 0;
        io_uring_for_each_cqe(&loop->ring, head, cqe)
        {
            if (n == CQE_BATCH)
                break;
            walked++;
            if (!cqe->user_data)
                continue; /* cancellations and other fire-and-forget ops */
            batch[n].op = (rmr_op_t *)(uintptr_t)cqe->user_data;
            batch[n].res = cqe->res;
            batch[n].flags = cqe->flags;
            n++;
        }
        if (!walked)
            break;
        loop->turns++;
        loop->cqes += walked;
        loop->last_reaped += walked;
        /* Advance first, then dispatch: callbacks may queue new SQEs and never see a CQE
         * twice. */
        io_uring_cq_advance(&loop->ring, walked);
        for (unsigned i = 0; i < n; i++)
            batch[i].op->cb(loop, batch[i].op, batch[i].res, batch[i].flags);
        if (n < CQE_BATCH)
            break;
    }
    run_timers(loop);
    if (loop->before_wait)
        loop->before_wait(loop);
}
