/*
 * Unit test of proxy/loop.c on a real io_uring: the timer heap (order, re-arming, stopping,
 * callbacks that arm timers), cross-thread wake-ups, op completions dispatched through op->cb,
 * and the provided buffer ring with a multishot recv. Exits 77 (skipped) when io_uring cannot
 * be set up here. Prints one line per check; exits 1 when any check fails.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "remora/loop.h"

#include "check.h"

static rmr_loop_t loop;

static uint32_t rng = 12345;
static uint32_t rnd(void)
{
    rng = rng * 1103515245u + 12345u;
    return rng >> 8;
}

/* The heap is a min-heap on deadline and every slot names its index. */
static int heap_ok(const rmr_loop_t *l)
{
    for (uint32_t i = 0; i < l->nheap; i++) {
        if (l->heap[i]->slot != i + 1)
            return 0;
        if (i && l->heap[(i - 1) / 2]->deadline > l->heap[i]->deadline)
            return 0;
    }
    return 1;
}

/* Runs turns (each waiting at most 10 ms) until done() or limit_ms passes. */
static void turn_until(int (*done)(void), uint64_t limit_ms)
{
    uint64_t end = rmr_clock_ms() + limit_ms;
    while (!done() && rmr_clock_ms() < end)
        rmr_loop_turn(&loop, 10);
}

/* ---- timers ---- */

#define NT 1000

typedef struct ttimer {
    rmr_timer_t t;
    int id;
    int fired;
    uint64_t fired_at; /* loop.now_ms when it fired */
    uint64_t deadline; /* the deadline it was armed with */
} ttimer_t;

static ttimer_t tt[NT];
static int order[NT], nfired, fired_twice, fired_early;

static void on_ttimer(rmr_loop_t *l, rmr_timer_t *t)
{
    ttimer_t *x = (ttimer_t *)t;
    if (x->fired)
        fired_twice++;
    x->fired++;
    x->fired_at = l->now_ms;
    if (l->now_ms < x->deadline || rmr_timer_armed(t))
        fired_early++;
    if (nfired < NT)
        order[nfired] = x->id;
    nfired++;
}

static void tt_reset(void)
{
    memset(tt, 0, sizeof(tt));
    for (int i = 0; i < NT; i++) {
        tt[i].id = i;
        tt[i].t.cb = on_ttimer;
    }
    nfired = fired_twice = fired_early = 0;
}

static int fired_order_ok(int n)
{
    for (int i = 1; i < n; i++)
        if (tt[order[i]].deadline < tt[order[i - 1]].deadline)
            return 0;
    return 1;
}

static int want_fired;
static int enough_fired(void)
{
    return nfired >= want_fired;
}

static void test_timer_order_logical(void)
{
    /* Deadlines in the past of the real clock: one turn fires them all, in deadline order.
     * loop.now_ms is moved back so that the delays spread over a long range: up to 1000 s, or
     * less on a machine up for less than twice that (the monotonic clock starts at boot). */
    tt_reset();
    uint64_t now = rmr_clock_ms(), range = now / 2 < 1000000 ? now / 2 : 1000000;
    uint64_t base = now - 2 * range;
    loop.now_ms = base;
    for (int i = 0; i < NT; i++) {
        uint64_t d = rnd() % range;
        rmr_timer_set(&loop, &tt[i].t, d);
        tt[i].deadline = base + d + (d != 0);
    }
    CHECK_INT(loop.nheap, NT);
    CHECK(loop.capheap >= NT);
    CHECK(heap_ok(&loop));
    int deadlines_ok = 1, all_armed = 1;
    for (int i = 0; i < NT; i++) {
        if (tt[i].t.deadline != tt[i].deadline)
            deadlines_ok = 0;
        if (!rmr_timer_armed(&tt[i].t))
            all_armed = 0;
    }
    CHECK(deadlines_ok);
    CHECK(all_armed);
    rmr_loop_turn(&loop, 0);
    CHECK_INT(nfired, NT);
    CHECK_INT(fired_twice, 0);
    CHECK_INT(fired_early, 0);
    CHECK(fired_order_ok(NT < nfired ? NT : nfired));
    CHECK_INT(loop.nheap, 0);
}

static void test_timer_order_real(void)
{
    /* Real time: 1000 timers over 0..299 ms, driven by short turns. */
    tt_reset();
    rmr_loop_turn(&loop, 0); /* refresh now_ms */
    for (int i = 0; i < NT; i++) {
        uint64_t d = rnd() % 300;
        rmr_timer_set(&loop, &tt[i].t, d);
        tt[i].deadline = tt[i].t.deadline;
    }
    CHECK(heap_ok(&loop));
    want_fired = NT;
    uint64_t t0 = rmr_clock_ms();
    turn_until(enough_fired, 5000);
    uint64_t took = rmr_clock_ms() - t0;
    CHECK_INT(nfired, NT);
    CHECK_INT(fired_twice, 0);
    CHECK_INT(fired_early, 0);
    CHECK(fired_order_ok(NT < nfired ? NT : nfired));
    CHECK(took < 2000);
    int late = 0;
    for (int i = 0; i < NT; i++)
        if (tt[i].fired_at > tt[i].deadline + 200) /* generous: CI machines stall */
            late++;
    CHECK_INT(late, 0);
}

static void test_timer_rearm_stop(void)
{
    tt_reset();
    rmr_loop_turn(&loop, 0);
    uint64_t now = loop.now_ms;
    /* Two timers: moving one earlier and later changes which is next. */
    rmr_timer_set(&loop, &tt[0].t, 50);
    rmr_timer_set(&loop, &tt[1].t, 100);
    CHECK(loop.heap[0] == &tt[0].t);
    rmr_timer_set(&loop, &tt[0].t, 200); /* later */
    CHECK(loop.heap[0] == &tt[1].t);
    CHECK_INT(tt[0].t.deadline, now + 200 + 1); /* one tick up: never early */
    CHECK_INT(loop.nheap, 2);                   /* re-arming does not add a second entry */
    rmr_timer_set(&loop, &tt[0].t, 10);         /* earlier */
    CHECK(loop.heap[0] == &tt[0].t);
    CHECK_INT(loop.nheap, 2);
    rmr_timer_stop(&loop, &tt[0].t);
    CHECK(!rmr_timer_armed(&tt[0].t));
    CHECK_INT(loop.nheap, 1);
    CHECK(loop.heap[0] == &tt[1].t);
    rmr_timer_stop(&loop, &tt[0].t); /* twice: harmless */
    CHECK_INT(loop.nheap, 1);
    rmr_timer_stop(&loop, &tt[1].t);
    CHECK_INT(loop.nheap, 0);

    /* Many timers, then a random third re-armed (earlier or later), a third stopped. */
    tt_reset();
    rmr_loop_turn(&loop, 0);
    for (int i = 0; i < NT; i++)
        rmr_timer_set(&loop, &tt[i].t, 20 + rnd() % 200);
    int stopped[NT] = {0}, nstopped = 0;
    for (int i = 0; i < NT; i++) {
        uint32_t r = rnd() % 3;
        if (r == 0) {
            rmr_timer_set(&loop, &tt[i].t, rnd() % 250);
        } else if (r == 1) {
            rmr_timer_stop(&loop, &tt[i].t);
            stopped[i] = 1;
            nstopped++;
        }
    }
    for (int i = 0; i < NT; i++)
        tt[i].deadline = tt[i].t.deadline;
    CHECK(heap_ok(&loop));
    CHECK_INT(loop.nheap, NT - nstopped);
    int stopped_unarmed = 1;
    for (int i = 0; i < NT; i++)
        if (stopped[i] && rmr_timer_armed(&tt[i].t))
            stopped_unarmed = 0;
    CHECK(stopped_unarmed);
    want_fired = NT - nstopped;
    turn_until(enough_fired, 5000);
    /* Wait a little past the last deadline so a stopped timer would have had its chance. */
    uint64_t end = rmr_clock_ms() + 30;
    while (rmr_clock_ms() < end)
        rmr_loop_turn(&loop, 5);
    CHECK_INT(nfired, NT - nstopped);
    int stopped_fired = 0;
    for (int i = 0; i < NT; i++)
        if (stopped[i] && tt[i].fired)
            stopped_fired++;
    CHECK_INT(stopped_fired, 0);
    CHECK_INT(fired_twice, 0);
    CHECK_INT(fired_early, 0);
    CHECK(fired_order_ok(nfired < NT ? nfired : NT));
    CHECK_INT(loop.nheap, 0);
}

/* A timer whose callback arms another (now, and later), and one that re-arms itself. */
static rmr_timer_t chain_a, chain_b, chain_c, self_t;
static int chain_a_n, chain_b_n, chain_c_n, self_n;
static uint64_t chain_b_turn, chain_a_turn;

static void on_chain_c(rmr_loop_t *l, rmr_timer_t *t)
{
    chain_c_n++;
}
static void on_chain_b(rmr_loop_t *l, rmr_timer_t *t)
{
    chain_b_n++;
    chain_b_turn = l->turns;
    rmr_timer_set(l, &chain_c, 20);
}
static void on_chain_a(rmr_loop_t *l, rmr_timer_t *t)
{
    chain_a_n++;
    chain_a_turn = l->turns;
    rmr_timer_set(l, &chain_b, 0); /* due now: runs in the same pass */
}
static void on_self(rmr_loop_t *l, rmr_timer_t *t)
{
    if (++self_n < 5)
        rmr_timer_set(l, t, 1);
}
static int chain_done(void)
{
    return chain_c_n > 0 && self_n >= 5;
}

static void test_timer_chain(void)
{
    chain_a.cb = on_chain_a;
    chain_b.cb = on_chain_b;
    chain_c.cb = on_chain_c;
    self_t.cb = on_self;
    rmr_loop_turn(&loop, 0);
    rmr_timer_set(&loop, &chain_a, 5);
    rmr_timer_set(&loop, &self_t, 1);
    turn_until(chain_done, 3000);
    CHECK_INT(chain_a_n, 1);
    CHECK_INT(chain_b_n, 1);
    CHECK_INT(chain_c_n, 1);
    CHECK(chain_b_turn == chain_a_turn);
    CHECK_INT(self_n, 5);
    CHECK(!rmr_timer_armed(&self_t) && !rmr_timer_armed(&chain_c));
    CHECK_INT(loop.nheap, 0);

    /* A turn with no limit waits for the nearest timer and no longer. */
    rmr_timer_t t = {.cb = on_chain_c};
    chain_c_n = 0;
    rmr_loop_turn(&loop, 0);
    rmr_timer_set(&loop, &t, 40);
    uint64_t t0 = rmr_clock_ms();
    for (int i = 0; i < 10 && !chain_c_n; i++)
        rmr_loop_turn(&loop, UINT64_MAX);
    uint64_t took = rmr_clock_ms() - t0;
    CHECK_INT(chain_c_n, 1);
    CHECK(took >= 30 && took < 1000);
}

/* ---- wake ---- */

static pthread_t loop_thread;
static int woke, woke_on_loop_thread = 1;

static void on_wake(rmr_loop_t *l)
{
    woke++;
    if (!pthread_equal(pthread_self(), loop_thread))
        woke_on_loop_thread = 0;
}

static void *waker(void *arg)
{
    int n = *(int *)arg;
    for (int i = 0; i < n; i++) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
        rmr_loop_wake(&loop);
    }
    return NULL;
}

static int want_woke;
static int woke_enough(void)
{
    return woke >= want_woke;
}

static void test_wake(void)
{
    loop_thread = pthread_self();
    loop.on_wake = on_wake;
    pthread_t th;
    int one = 1;
    want_woke = 1;
    pthread_create(&th, NULL, waker, &one);
    uint64_t t0 = rmr_clock_ms();
    while (!woke && rmr_clock_ms() - t0 < 3000)
        rmr_loop_turn(&loop, UINT64_MAX); /* no timer, no limit: only the wake ends it */
    pthread_join(th, NULL);
    CHECK_INT(woke, 1);
    CHECK(woke_on_loop_thread);
    /* The eventfd read is re-armed: more wakes keep arriving. */
    int three = 3;
    want_woke = 4;
    pthread_create(&th, NULL, waker, &three);
    turn_until(woke_enough, 3000);
    pthread_join(th, NULL);
    CHECK_INT(woke, 4);
    CHECK(woke_on_loop_thread);
    /* Several wakes before a turn coalesce into at least one on_wake, and none is lost. */
    int before = woke;
    rmr_loop_wake(&loop);
    rmr_loop_wake(&loop);
    rmr_loop_wake(&loop);
    want_woke = before + 1;
    turn_until(woke_enough, 1000);
    CHECK(woke >= before + 1 && woke <= before + 3);
    loop.on_wake = NULL;
}

/* ---- ops ---- */

typedef struct top {
    rmr_op_t op;
    int n;
    int res;
    unsigned flags;
    rmr_loop_t *loop;
} top_t;

static void on_top(rmr_loop_t *l, rmr_op_t *op, int res, unsigned flags)
{
    top_t *t = (top_t *)op;
    t->n++;
    t->res = res;
    t->flags = flags;
    t->loop = l;
}

static top_t *cur_op;
static int op_done(void)
{
    return cur_op->n > 0;
}

static void test_ops(void)
{
    /* NOP. */
    top_t nop = {.op.cb = on_top};
    struct io_uring_sqe *sqe = rmr_loop_sqe(&loop);
    CHECK(sqe != NULL);
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data(sqe, &nop.op);
    cur_op = &nop;
    turn_until(op_done, 2000);
    CHECK_INT(nop.n, 1);
    CHECK_INT(nop.res, 0);
    CHECK(!(nop.flags & IORING_CQE_F_MORE));
    CHECK(nop.loop == &loop);

    /* A read on a pipe. */
    int pfd[2];
    CHECK(pipe(pfd) == 0);
    char buf[32] = {0};
    top_t rd = {.op.cb = on_top};
    sqe = rmr_loop_sqe(&loop);
    io_uring_prep_read(sqe, pfd[0], buf, sizeof(buf), 0);
    io_uring_sqe_set_data(sqe, &rd.op);
    rmr_loop_turn(&loop, 0); /* submitted; nothing to read yet */
    CHECK_INT(rd.n, 0);
    CHECK_INT(write(pfd[1], "hello", 5), 5);
    cur_op = &rd;
    turn_until(op_done, 2000);
    CHECK_INT(rd.n, 1);
    CHECK_INT(rd.res, 5);
    CHECK(!memcmp(buf, "hello", 5));
    close(pfd[0]);
    close(pfd[1]);

    /* A failing op: the negative errno reaches the callback. */
    top_t bad = {.op.cb = on_top};
    sqe = rmr_loop_sqe(&loop);
    io_uring_prep_read(sqe, 1 << 20, buf, sizeof(buf), 0);
    io_uring_sqe_set_data(sqe, &bad.op);
    cur_op = &bad;
    turn_until(op_done, 2000);
    CHECK_INT(bad.n, 1);
    CHECK_INT(bad.res, -EBADF);

    /* user_data 0: reaped, counted, never dispatched (it would crash on a NULL op). */
    uint64_t cqes = loop.cqes;
    sqe = rmr_loop_sqe(&loop);
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data(sqe, NULL);
    top_t after = {.op.cb = on_top};
    sqe = rmr_loop_sqe(&loop);
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data(sqe, &after.op);
    cur_op = &after;
    turn_until(op_done, 2000);
    CHECK_INT(after.n, 1);
    CHECK(loop.cqes - cqes >= 2);

    /* More SQEs than the ring holds (64) and more CQEs than one batch (256): rmr_loop_sqe
     * submits when full, and every completion is dispatched exactly once. */
    enum { MANY = 600 };
    static top_t many[MANY];
    for (int i = 0; i < MANY; i++) {
        many[i].op.cb = on_top;
        sqe = rmr_loop_sqe(&loop);
        io_uring_prep_nop(sqe);
        io_uring_sqe_set_data(sqe, &many[i].op);
    }
    uint64_t end = rmr_clock_ms() + 3000;
    int done = 0;
    while (rmr_clock_ms() < end) {
        rmr_loop_turn(&loop, 10);
        done = 0;
        for (int i = 0; i < MANY; i++)
            done += many[i].n > 0;
        if (done == MANY)
            break;
    }
    int once = 1, zero = 1;
    for (int i = 0; i < MANY; i++) {
        if (many[i].n != 1)
            once = 0;
        if (many[i].res != 0)
            zero = 0;
    }
    CHECK_INT(done, MANY);
    CHECK(once);
    CHECK(zero);
}

/* ---- provided buffers ---- */

typedef struct trecv {
    rmr_op_t op;
    int n, nomore;
    int res[64];
    unsigned flags[64];
    char data[64][16];
} trecv_t;

static trecv_t rv;

static void on_recv(rmr_loop_t *l, rmr_op_t *op, int res, unsigned flags)
{
    trecv_t *r = (trecv_t *)op;
    if (r->n < 64) {
        r->res[r->n] = res;
        r->flags[r->n] = flags;
        if (res > 0 && (flags & IORING_CQE_F_BUFFER))
            memcpy(r->data[r->n], rmr_loop_buf(l, flags >> IORING_CQE_BUFFER_SHIFT),
                   res < 15 ? (size_t)res : 15);
    }
    if (!(flags & IORING_CQE_F_MORE))
        r->nomore++;
    r->n++;
}

static int want_recv;
static int recv_enough(void)
{
    return rv.n >= want_recv;
}

static void arm_recv(int fd)
{
    struct io_uring_sqe *sqe = rmr_loop_sqe(&loop);
    io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = 0;
    io_uring_sqe_set_data(sqe, &rv.op);
}

static void test_buffers(void)
{
    CHECK(loop.features & RMR_LOOP_F_BUF_RING);
    CHECK_INT(loop.nbufs, 16);
    CHECK_INT(loop.bufsize, 4096);
    CHECK(rmr_loop_buf(&loop, 3) == loop.bufs + 3 * 4096);
    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    memset(&rv, 0, sizeof(rv));
    rv.op.cb = on_recv;
    arm_recv(sv[0]);
    rmr_loop_turn(&loop, 0);
    CHECK_INT(rv.n, 0);

    /* One message: delivered in a buffer, with F_MORE; returned with rmr_loop_buf_put. Many
     * rounds: more than nbufs, so the buffers must come back to be reused. */
    int rounds_ok = 1;
    for (int i = 0; i < 40; i++) {
        char msg[16];
        int len = snprintf(msg, sizeof(msg), "msg-%d", i);
        int before = rv.n;
        if (write(sv[1], msg, (size_t)len) != len)
            rounds_ok = 0;
        want_recv = before + 1;
        turn_until(recv_enough, 2000);
        if (rv.n != before + 1 || rv.res[before] != len ||
            !(rv.flags[before] & IORING_CQE_F_BUFFER) || !(rv.flags[before] & IORING_CQE_F_MORE) ||
            memcmp(rv.data[before], msg, (size_t)len)) {
            printf("     round %d: n %d res %d flags 0x%x\n", i, rv.n,
                   rv.n > before ? rv.res[before] : 0, rv.n > before ? rv.flags[before] : 0);
            rounds_ok = 0;
            break;
        }
        rmr_loop_buf_put(&loop, rv.flags[before] >> IORING_CQE_BUFFER_SHIFT);
        if (rv.n >= 60) { /* keep within the record */
            rv.n = 0;
        }
    }
    CHECK(rounds_ok);
    CHECK_INT(rv.nomore, 0);

    /* Exhaustion: hold every buffer; the next message ends the multishot recv with -ENOBUFS
     * (a CQE without F_MORE), not a crash. */
    memset(&rv, 0, sizeof(rv));
    rv.op.cb = on_recv;
    unsigned held[32];
    int nheld = 0, got_enobufs = 0;
    for (int i = 0; i < 20 && !rv.nomore; i++) {
        char msg[16];
        int len = snprintf(msg, sizeof(msg), "x%02d", i);
        int before = rv.n;
        CHECK_INT(write(sv[1], msg, (size_t)len), len);
        want_recv = before + 1;
        turn_until(recv_enough, 2000);
        if (rv.n > before) {
            if (rv.res[before] > 0 && (rv.flags[before] & IORING_CQE_F_BUFFER))
                held[nheld++] = rv.flags[before] >> IORING_CQE_BUFFER_SHIFT;
            if (rv.res[before] == -ENOBUFS)
                got_enobufs = 1;
        }
    }
    printf("     %d buffers held when the recv ended\n", nheld);
    CHECK_INT(nheld, 16);
    CHECK_INT(rv.nomore, 1);
    CHECK(got_enobufs);
    CHECK(rv.n > 0 && !(rv.flags[rv.n - 1] & IORING_CQE_F_MORE));
    int distinct = 1;
    for (int i = 0; i < nheld; i++)
        for (int j = 0; j < i; j++)
            if (held[i] == held[j] || held[i] >= 16)
                distinct = 0;
    CHECK(distinct);

    /* Give them back, re-arm: the unread message arrives. */
    for (int i = 0; i < nheld; i++)
        rmr_loop_buf_put(&loop, held[i]);
    int before = rv.n;
    arm_recv(sv[0]);
    want_recv = before + 1;
    turn_until(recv_enough, 2000);
    CHECK(rv.n > before);
    CHECK(rv.n > before && rv.res[before] == 3 && !memcmp(rv.data[before], "x16", 3));
    CHECK(rv.n > before && (rv.flags[before] & IORING_CQE_F_MORE));
    if (rv.n > before && (rv.flags[before] & IORING_CQE_F_BUFFER))
        rmr_loop_buf_put(&loop, rv.flags[before] >> IORING_CQE_BUFFER_SHIFT);

    /* Closing the peer ends the recv: res 0, no F_MORE. */
    close(sv[1]);
    int nomore = rv.nomore;
    before = rv.n;
    want_recv = before + 1;
    turn_until(recv_enough, 2000);
    CHECK(rv.n > before && rv.res[before] == 0 && !(rv.flags[before] & IORING_CQE_F_MORE));
    CHECK_INT(rv.nomore, nomore + 1);
    close(sv[0]);
}

static void on_alarm(int sig)
{
    static const char msg[] = "FAIL timed out: the loop hung (a wait that nothing ended)\n";
    ssize_t n = write(1, msg, sizeof(msg) - 1);
    (void)n;
    _exit(1);
}

/* ---- busy polling ---- */

static int bp_fd;
static void *late_writer(void *arg)
{
    (void)arg;
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
    if (write(bp_fd, "x", 1) != 1)
        abort();
    return NULL;
}

static void queue_nop(top_t *t)
{
    struct io_uring_sqe *sqe = rmr_loop_sqe(&loop);
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data(sqe, &t->op);
}

static void test_busy_poll(void)
{
    int pfd[2];
    CHECK(pipe(pfd) == 0);
    char buf[8];
    uint32_t batch = loop.batch_wait_us;
    loop.batch_wait_us = 0;

    /* After a turn with work, a completion that comes within busy_poll_us is reaped by
     * polling: the turn does not sleep. 2 s is far longer than the writer's 20 ms. */
    loop.busy_poll_us = 2000000;
    top_t nop = {.op.cb = on_top}, rd = {.op.cb = on_top};
    queue_nop(&nop);
    cur_op = &nop;
    turn_until(op_done, 2000);
    CHECK_INT(nop.n, 1);
    struct io_uring_sqe *sqe = rmr_loop_sqe(&loop);
    io_uring_prep_read(sqe, pfd[0], buf, sizeof(buf), 0);
    io_uring_sqe_set_data(sqe, &rd.op);
    bp_fd = pfd[1];
    pthread_t th;
    pthread_create(&th, NULL, late_writer, NULL);
    uint64_t polls = loop.polls;
    rmr_loop_turn(&loop, UINT64_MAX);
    pthread_join(th, NULL);
    CHECK_INT(rd.n, 1);
    CHECK_INT(rd.res, 1);
    CHECK_INT(loop.polls, polls + 1);

    /* Polling stops at the nearest timer: the timer fires on time, not after the poll. */
    rmr_timer_t t = {.cb = on_chain_c};
    chain_c_n = 0;
    nop.n = 0;
    queue_nop(&nop);
    turn_until(op_done, 2000); /* work, so the next turn polls */
    rmr_timer_set(&loop, &t, 30);
    polls = loop.polls;
    uint64_t t0 = rmr_clock_ms();
    for (int i = 0; i < 10 && !chain_c_n; i++)
        rmr_loop_turn(&loop, UINT64_MAX);
    uint64_t took = rmr_clock_ms() - t0;
    CHECK_INT(chain_c_n, 1);
    CHECK(took >= 30 && took < 1000); /* not the 2 s of busy_poll_us */
    CHECK_INT(loop.polls, polls);

    /* A short poll with nothing to reap falls back to sleeping: a completion that comes
     * after it is still reaped, by the wait, and counted as no poll. */
    loop.busy_poll_us = 1000;
    nop.n = 0;
    queue_nop(&nop);
    turn_until(op_done, 2000);
    rd.n = 0;
    sqe = rmr_loop_sqe(&loop);
    io_uring_prep_read(sqe, pfd[0], buf, sizeof(buf), 0);
    io_uring_sqe_set_data(sqe, &rd.op);
    pthread_create(&th, NULL, late_writer, NULL);
    polls = loop.polls;
    for (int i = 0; i < 10 && !rd.n; i++)
        rmr_loop_turn(&loop, UINT64_MAX);
    pthread_join(th, NULL);
    CHECK_INT(rd.n, 1);
    CHECK_INT(loop.polls, polls);

    loop.busy_poll_us = 0;
    loop.batch_wait_us = batch;
    close(pfd[0]);
    close(pfd[1]);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGALRM, on_alarm);
    alarm(60); /* a hung loop fails the test instead of hanging it */
    int ret = rmr_loop_init(&loop, 64, 16, 4096);
    if (ret == -ENOSYS || ret == -EPERM || ret == -EACCES) {
        printf("skipped: rmr_loop_init: %s: %s\n", strerror(-ret), rmr_loop_explain(ret));
        return 77;
    }
    CHECK_INT(ret, 0);
    if (ret < 0) {
        printf("rmr_loop_init: %s: %s\n", strerror(-ret), rmr_loop_explain(ret));
        printf("%d checks, %d failed\n", checks, failures);
        return 1;
    }
    printf("     features: defer_taskrun %d, buf_ring %d\n",
           !!(loop.features & RMR_LOOP_F_DEFER_TASKRUN), !!(loop.features & RMR_LOOP_F_BUF_RING));
    CHECK(loop.efd >= 0);
    CHECK(loop.heap != NULL);
    CHECK(loop.now_ms > 0);

    test_timer_order_logical();
    test_timer_order_real();
    test_timer_rearm_stop();
    test_timer_chain();
    test_wake();
    test_ops();
    test_buffers();
    test_busy_poll();

    rmr_loop_free(&loop);
    CHECK(loop.heap == NULL && loop.bufs == NULL && loop.br == NULL && loop.efd == -1);
    CHECK_INT(loop.ring.ring_fd, -1);
    return check_summary();
}
