/*
 * Traffic mirroring's sender. See include/remora/mirror.h.
 *
 * A shadow has exactly one operation (connect, then send(s), then recv(s)) in the ring at any
 * time, and its memory is freed only from that operation's completion: so nothing the kernel may
 * still name (the op as user_data, the sockaddr, the request, the receive buffer) outlives the
 * shadow. The timeout and rmr_mirror_free do not end a shadow themselves; they cancel its
 * operation and let the completion (-ECANCELED, or the op's own result if it won the race) end
 * it. The cancel SQEs carry user_data 0, which the loop reaps without dispatching; they name the
 * op by value only, and they are always submitted before the op's completion can be dispatched
 * (they are queued either by a timer, after the turn's dispatch, or by rmr_mirror_free before it
 * runs a turn), so a freed shadow's address cannot be reused by a new op that a stale cancel
 * would hit.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "remora/loop.h"
#include "remora/mirror.h"

enum { S_CONNECT, S_SEND, S_RECV };
enum { OUT_COMPLETED, OUT_FAILED, OUT_TIMEOUT };

typedef struct shadow {
    rmr_op_t op; /* first: the op pointer is the shadow */
    rmr_timer_t timer;
    rmr_mirror_t *m;
    struct shadow *prev, *next;
    int fd;
    uint8_t state;     /* S_* */
    uint8_t timed_out; /* the timer fired and cancelled op */
    uint8_t aborted;   /* rmr_mirror_free cancelled op */
    uint8_t answered;  /* a status line was read */
    uint8_t nhead;     /* bytes of "HTTP/" matched so far; 0xff: the response is not HTTP */
    socklen_t salen;
    size_t n, off; /* request length, bytes sent */
    struct sockaddr_storage sa;
    char rbuf[RMR_MIRROR_RECV_BUF];
    char req[];
} shadow_t;

struct rmr_mirror {
    rmr_loop_t *loop;
    uint32_t max_inflight;
    size_t max_bytes;
    int freeing;
    shadow_t *live; /* the shadows in flight */
    rmr_mirror_stats_t st;
};

/* Process-wide totals, for the admin thread. */
static uint64_t tot_sent, tot_dropped, tot_completed, tot_failed, tot_timeouts;
static uint64_t tot_inflight, tot_bytes;

#define ADD(x, v) __atomic_add_fetch(&(x), (v), __ATOMIC_RELAXED)
#define SUB(x, v) __atomic_sub_fetch(&(x), (v), __ATOMIC_RELAXED)
#define LD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)

static void on_op(rmr_loop_t *loop, rmr_op_t *op, int res, unsigned flags);

rmr_mirror_t *rmr_mirror_new(rmr_loop_t *loop, uint32_t max_inflight, size_t max_bytes)
{
    rmr_mirror_t *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->loop = loop;
    m->max_inflight = max_inflight ? max_inflight : RMR_MIRROR_DEFAULT_INFLIGHT;
    m->max_bytes = max_bytes ? max_bytes : RMR_MIRROR_DEFAULT_BYTES;
    return m;
}

static void end(shadow_t *s, int outcome, int reset)
{
    rmr_mirror_t *m = s->m;
    rmr_timer_stop(m->loop, &s->timer);
    if (reset) {
        /* An abortive close: unsent request bytes (a target that never read them) would
         * otherwise keep the socket and its buffers alive in the kernel after we are gone. */
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    close(s->fd);
    if (s->prev)
        s->prev->next = s->next;
    else
        m->live = s->next;
    if (s->next)
        s->next->prev = s->prev;
    m->st.inflight--;
    m->st.bytes -= s->n;
    SUB(tot_inflight, 1);
    SUB(tot_bytes, s->n);
    switch (outcome) {
    case OUT_COMPLETED:
        m->st.completed++;
        ADD(tot_completed, 1);
        break;
    case OUT_TIMEOUT:
        m->st.timeouts++;
        ADD(tot_timeouts, 1);
        break;
    default:
        m->st.failed++;
        ADD(tot_failed, 1);
        break;
    }
    free(s);
}

static void cancel(shadow_t *s)
{
    struct io_uring_sqe *sqe = rmr_loop_sqe(s->m->loop);
    io_uring_prep_cancel(sqe, &s->op, 0);
    io_uring_sqe_set_data64(sqe, 0);
}

static void on_timeout(rmr_loop_t *loop, rmr_timer_t *t)
{
    shadow_t *s = (shadow_t *)((char *)t - offsetof(shadow_t, timer));
    s->timed_out = 1;
    cancel(s);
}

static void arm_send(shadow_t *s, int poll_first)
{
    struct io_uring_sqe *sqe = rmr_loop_sqe(s->m->loop);
    io_uring_prep_send(sqe, s->fd, s->req + s->off, s->n - s->off, MSG_NOSIGNAL);
#ifdef IORING_RECVSEND_POLL_FIRST
    if (poll_first)
        sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
#endif
    io_uring_sqe_set_data(sqe, &s->op);
}

static void arm_recv(shadow_t *s, int poll_first)
{
    struct io_uring_sqe *sqe = rmr_loop_sqe(s->m->loop);
    io_uring_prep_recv(sqe, s->fd, s->rbuf, sizeof(s->rbuf), 0);
#ifdef IORING_RECVSEND_POLL_FIRST
    if (poll_first)
        sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
#endif
    io_uring_sqe_set_data(sqe, &s->op);
}

/* Looks for the status line: "HTTP/" at the start of the response, then a LF. */
static void scan(shadow_t *s, const char *p, size_t n)
{
    static const char pre[] = "HTTP/";
    while (n && s->nhead < 5) {
        if (*p != pre[s->nhead]) {
            s->nhead = 0xff;
            return;
        }
        s->nhead++;
        p++;
        n--;
    }
    if (s->nhead == 5 && memchr(p, '\n', n))
        s->answered = 1;
}

static void on_op(rmr_loop_t *loop, rmr_op_t *op, int res, unsigned flags)
{
    shadow_t *s = (shadow_t *)op;
    if (s->aborted) {
        end(s, OUT_FAILED, 1);
        return;
    }
    if (s->timed_out) {
        /* whatever op returned, it was the last: the time is up */
        end(s, s->answered ? OUT_COMPLETED : OUT_TIMEOUT, 1);
        return;
    }
    /* -EAGAIN only if the ring tried a non-blocking socket outside its own poll: wait for
     * readiness and try again (the timer still bounds it). */
    switch (s->state) {
    case S_CONNECT:
        if (res < 0) {
            end(s, OUT_FAILED, 1);
            return;
        }
        s->state = S_SEND;
        arm_send(s, 0);
        return;
    case S_SEND:
        if (res == -EAGAIN) {
            arm_send(s, 1);
            return;
        }
        if (res <= 0) { /* 0 for a non-empty send: never expected, taken as an error */
            end(s, OUT_FAILED, 1);
            return;
        }
        s->off += (size_t)res;
        if (s->off < s->n) {
            arm_send(s, 0);
            return;
        }
        s->state = S_RECV;
        arm_recv(s, 0);
        return;
    default:
        if (res == -EAGAIN) {
            arm_recv(s, 1);
            return;
        }
        if (res > 0) {
            if (!s->answered && s->nhead != 0xff)
                scan(s, s->rbuf, (size_t)res);
            arm_recv(s, 0);
            return;
        }
        /* EOF or an error (a reset): the target has had its say, or not */
        end(s, s->answered ? OUT_COMPLETED : OUT_FAILED, res < 0);
        return;
    }
}

int rmr_mirror_send(rmr_mirror_t *m, const struct sockaddr *sa, socklen_t salen, const char *req,
                    size_t n, uint32_t timeout_ms)
{
    shadow_t *s = NULL;
    if (m->freeing || !n || !sa || !salen || salen > sizeof(struct sockaddr_storage) ||
        m->st.inflight >= m->max_inflight || n > m->max_bytes - m->st.bytes)
        goto fail;
    s = malloc(sizeof(*s) + n);
    if (!s)
        goto fail;
    s->fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->fd < 0)
        goto fail;
    /* No flush for a shadow: a full queue means the worker is busy with real work. */
    struct io_uring_sqe *sqe = io_uring_get_sqe(&m->loop->ring);
    if (!sqe)
        goto fail;
    s->op.cb = on_op;
    memset(&s->timer, 0, sizeof(s->timer));
    s->timer.cb = on_timeout;
    s->m = m;
    s->state = S_CONNECT;
    s->timed_out = s->aborted = s->answered = s->nhead = 0;
    s->n = n;
    s->off = 0;
    memcpy(&s->sa, sa, salen); /* the kernel reads it when the turn submits */
    s->salen = salen;
    memcpy(s->req, req, n);
    io_uring_prep_connect(sqe, s->fd, (const struct sockaddr *)&s->sa, s->salen);
    io_uring_sqe_set_data(sqe, &s->op);
    rmr_timer_set(m->loop, &s->timer, timeout_ms ? timeout_ms : RMR_MIRROR_DEFAULT_TIMEOUT_MS);
    s->prev = NULL;
    s->next = m->live;
    if (m->live)
        m->live->prev = s;
    m->live = s;
    m->st.sent++;
    m->st.inflight++;
    m->st.bytes += n;
    ADD(tot_sent, 1);
    ADD(tot_inflight, 1);
    ADD(tot_bytes, n);
    return 0;
fail:
    if (s && s->fd >= 0)
        close(s->fd);
    free(s);
    m->st.dropped++;
    ADD(tot_dropped, 1);
    return -1;
}

void rmr_mirror_get_stats(const rmr_mirror_t *m, rmr_mirror_stats_t *out)
{
    *out = m->st;
}

void rmr_mirror_totals(rmr_mirror_stats_t *out)
{
    out->sent = LD(tot_sent);
    out->dropped = LD(tot_dropped);
    out->completed = LD(tot_completed);
    out->failed = LD(tot_failed);
    out->timeouts = LD(tot_timeouts);
    out->inflight = (uint32_t)LD(tot_inflight);
    out->bytes = (size_t)LD(tot_bytes);
}

void rmr_mirror_free(rmr_mirror_t *m)
{
    if (!m)
        return;
    m->freeing = 1;
    for (shadow_t *s = m->live; s; s = s->next) {
        s->aborted = 1;
        rmr_timer_stop(m->loop, &s->timer);
        cancel(s);
    }
    /* Each turn submits the cancels (first) and dispatches what completes; the shadows end
     * themselves. Cancelling a socket op is immediate, so this takes a turn or two. */
    while (m->live)
        rmr_loop_turn(m->loop, 100);
    free(m);
}
