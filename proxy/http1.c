/*
 * The HTTP/1.1 proxy hop.
 *
 * A downstream connection carries one stream (request/response exchange) at a time; pipelined
 * requests wait, parsed no further, in the connection's stash until the response before them
 * has been written. The request head is parsed by llhttp into the stream's arena, routed, and
 * re-serialised toward the upstream with hop-by-hop headers removed; bodies are streamed
 * through as they arrive (re-framed when chunked) and never held whole. The upstream response
 * travels back the same way.
 *
 * Every op a connection has in the kernel is counted in conn.ops; a closing connection is
 * freed only once that count reaches zero, so no completion ever points at freed memory.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <strings.h>
#include <unistd.h>

#include "remora/log.h"
#include "http.h"
#include "remora/v1/mesh.pb-c.h"
#include "tls.h"

static llhttp_settings_t req_settings, resp_settings;

static void recv_arm(conn_t *c);
static void down_feed(conn_t *d, const char *data, size_t len);
static void up_feed(conn_t *u, const char *data, size_t len);
static void stream_dispatch(conn_t *d);
static void up_fail(conn_t *u, int status, const char *reason);
static void deliver_eof(conn_t *c, int res);
static void tls_refused(conn_t *d, const char *kind, const char *why);
static void on_try_timer(rmr_loop_t *loop, rmr_timer_t *t);
static void idem_release(stream_t *st);

/* ---- buffers ---- */

/* Output buffers come from a per-worker pool: a streamed body grows a buffer to a few hundred
 * KiB, and handing that back to malloc each time would map and fault its pages anew. */
rmr_buf_t *wbuf_get(worker_t *w)
{
    if (w->nfree_bufs)
        return w->free_bufs[--w->nfree_bufs];
    if (w->nfree_big)
        return w->free_big[--w->nfree_big];
    rmr_buf_t *b = calloc(1, sizeof(*b));
    return b;
}

void wbuf_put(worker_t *w, rmr_buf_t *b)
{
    if (!b)
        return;
    b->len = 0;
    b->oom = 0;
    if (b->cap <= 32768 && w->nfree_bufs < sizeof(w->free_bufs) / sizeof(w->free_bufs[0])) {
        w->free_bufs[w->nfree_bufs++] = b;
        return;
    }
    if (b->cap <= 1024 * 1024 && w->nfree_big < sizeof(w->free_big) / sizeof(w->free_big[0])) {
        w->free_big[w->nfree_big++] = b;
        return;
    }
    rmr_buf_free(b);
    free(b);
}

rmr_buf_t *out_of(conn_t *c)
{
    if (!c->out)
        c->out = wbuf_get(c->w);
    return c->out;
}

size_t pending(const conn_t *c)
{
    return (c->out ? c->out->len - c->out_off : 0) +
           (c->sending ? c->sending->len - c->send_off : 0);
}

int out_append(conn_t *c, const void *p, size_t n)
{
    rmr_buf_t *b = out_of(c);
    if (!b)
        return -ENOMEM;
    rmr_buf_append(b, p, n);
    return b->oom ? -ENOMEM : 0;
}

/* ---- connection life ---- */

conn_t *conn_new(worker_t *w, conn_kind_t kind, int fd)
{
    conn_t *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->w = w;
    c->kind = kind;
    c->fd = fd;
    list_init(&c->link);
    w->nalloc++;
    return c;
}

void stream_free(conn_t *d)
{
    stream_t *st = d->st;
    if (!st)
        return;
    d->st = NULL;
    if (st->start_us) {
        if (st->route >= 0 && st->status)
            gray_account(st, 0);
        trace_finish(d, st);
        alog_request(d, st);
    }
    if (st->u2)
        h2_up_cancel(st);
    wbuf_put(d->w, st->reqbody);
    st->reqbody = NULL;
    rmr_timer_stop(&d->w->loop, &st->try_timer);
    if (st->probe) /* a half-open trial whose client left: its slot must not stay taken */
        try_report(st, st->resp_started ? RMR_OUT_SUCCESS : RMR_OUT_RESET);
    if (st->replay) {
        rmr_buf_free(st->replay);
        free(st->replay);
        st->replay = NULL;
    }
    if (st->cluster) {
        if (st->held_req)
            rmr_breaker_release(st->cluster->breaker, RMR_LIM_REQUESTS);
        if (st->held_retry) {
            rmr_breaker_release(st->cluster->breaker, RMR_LIM_RETRIES);
            rmr_budget_retry_end(st->cluster->budget);
        }
        if (st->budget_req)
            rmr_budget_request_end(st->cluster->budget);
    }
    idem_release(st);
    if (st->ep && st->ep->active) {
        st->ep->active--;
        RMR_STAT_DEC(st->ep->stats->active);
    }
    if (st->view)
        view_put(st->view);
    worker_t *w = d->w;
    /* Pooled while its memory is ordinary; a head that needed a lot goes back to malloc. */
    if (w->nfree_streams < sizeof(w->free_streams) / sizeof(w->free_streams[0]) &&
        st->req.arena.cap <= 16384 && st->resp.arena.cap <= 16384) {
        w->free_streams[w->nfree_streams++] = st;
        return;
    }
    h1_msg_free(&st->req);
    h1_msg_free(&st->resp);
    free(st);
}

void h1_pools_free(worker_t *w)
{
    while (w->nfree_streams) {
        stream_t *st = w->free_streams[--w->nfree_streams];
        h1_msg_free(&st->req);
        h1_msg_free(&st->resp);
        free(st);
    }
    while (w->nfree_bufs) {
        rmr_buf_t *b = w->free_bufs[--w->nfree_bufs];
        rmr_buf_free(b);
        free(b);
    }
    while (w->nfree_big) {
        rmr_buf_t *b = w->free_big[--w->nfree_big];
        rmr_buf_free(b);
        free(b);
    }
}

static void conn_free(conn_t *c)
{
    if (c->fd >= 0)
        close(c->fd);
    wbuf_put(c->w, c->out);
    wbuf_put(c->w, c->sending);
    wbuf_put(c->w, c->stash);
    if (c->kind == CONN_DOWN)
        stream_free(c);
    if (c->cx_breaker) {
        rmr_breaker_release(c->cx_breaker, RMR_LIM_CONNECTIONS);
        if (c->held_pending)
            rmr_breaker_release(c->cx_breaker, RMR_LIM_PENDING);
    }
    if (c->tls)
        tls_free(c->tls);
    c->w->nalloc--;
    free(c);
}

/* Drops the count of an op that completed for the last time. */
static void op_done(conn_t *c)
{
    if (--c->ops == 0 && c->closing)
        conn_free(c);
}

void conn_close(conn_t *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    rmr_timer_stop(&c->w->loop, &c->timer);
    worker_t *w = c->w;
    if (c->virt) {
        h2_stream_closing(c);
        conn_t *u = c->peer;
        c->peer = NULL;
        if (u) {
            u->peer = NULL;
            up_release(u, 0);
        }
        conn_free(c);
        return;
    }
    if (c->h2)
        h2_conn_closing(c);
    if (c->tls && c->tls_done && !c->sending && c->fd >= 0) {
        /* close_notify, best effort: the socket is idle, one non-blocking send */
        tls_shutdown(c->tls);
        rmr_buf_t *b = wbuf_get(w);
        if (b) {
            tls_out(c->tls, b);
            if (b->len && send(c->fd, b->data, b->len, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
                RMR_DEBUG("tls: close_notify not sent: %s", strerror(errno));
            wbuf_put(w, b);
        }
    }
    if (c->kind == CONN_DOWN) {
        list_del(&c->link);
        w->nconns--;
        RMR_STAT_DEC(rmr_wstats[w->id].downstream_cx_active);
        conn_t *u = c->peer;
        c->peer = NULL;
        if (u) {
            u->peer = NULL;
            up_release(u, 0);
        }
    } else {
        if (c->state == U_IDLE && c->in_list) {
            list_del(&c->link);
            c->in_list = 0;
            c->ep->nidle--;
        }
        if (c->ep)
            RMR_STAT_DEC(c->ep->cluster->stats->upstream_cx_active);
        conn_t *d = c->peer;
        c->peer = NULL;
        if (d)
            d->peer = NULL;
    }
    if (c->ops) {
        struct io_uring_sqe *sqe = rmr_loop_sqe(&w->loop);
        io_uring_prep_cancel_fd(sqe, c->fd, IORING_ASYNC_CANCEL_ALL);
        io_uring_sqe_set_data64(sqe, 0);
        /* shutdown also wakes a send blocked on a full socket buffer */
        shutdown(c->fd, SHUT_RDWR);
    } else {
        conn_free(c);
    }
    if (w->draining && w->nconns == 0)
        w->loop.stop = 1;
}

/* ---- sending ---- */

static void submit_send(conn_t *c)
{
    struct io_uring_sqe *sqe = rmr_loop_sqe(&c->w->loop);
    io_uring_prep_send(sqe, c->fd, c->sending->data + c->send_off, c->sending->len - c->send_off,
                       MSG_NOSIGNAL | MSG_WAITALL);
    io_uring_sqe_set_data(sqe, &c->send_op);
    c->ops++;
}

void conn_flush(conn_t *c)
{
    if (c->virt) {
        h2_stream_kick(c);
        return;
    }
    if (c->closing || c->sending)
        return;
    if (c->tls) {
        /* Plaintext goes through the TLS engine once the handshake is done and the peer's
         * identity was admitted (tls_established); until then only handshake records leave.
         * What leaves is the ciphertext the engine produced. */
        if (c->tls_done && c->out && c->out->len) {
            if (tls_write(c->tls, c->out->data, c->out->len) < 0) {
                RMR_DEBUG("tls: %s", tls_error(c->tls));
                conn_close(c);
                return;
            }
            c->out->len = 0;
        }
        if (!tls_out_pending(c->tls))
            return;
        rmr_buf_t *b = wbuf_get(c->w);
        if (!b) {
            conn_close(c);
            return;
        }
        tls_out(c->tls, b);
        c->sending = b;
        c->send_off = 0;
        submit_send(c);
        return;
    }
    if (!c->out || !c->out->len)
        return;
    c->sending = c->out;
    c->out = NULL;
    c->send_off = 0;
    submit_send(c);
}

static void down_after_send(conn_t *d);
static void up_after_send(conn_t *u);

static void on_send(rmr_loop_t *loop, rmr_op_t *op, int res, unsigned flags)
{
    conn_t *c = (conn_t *)((char *)op - offsetof(conn_t, send_op));
    (void)loop;
    (void)flags;
    /* The op's count in c->ops keeps c alive until op_done() below, whatever the handlers
     * close on the way. */
    if (c->closing)
        goto out;
    if (res <= 0) {
        if (c->kind == CONN_UP)
            up_fail(c, 502, "upstream-reset");
        else
            conn_close(c);
        goto out;
    }
    c->send_off += (size_t)res;
    if (c->send_off < c->sending->len) {
        submit_send(c);
        goto out;
    }
    wbuf_put(c->w, c->sending);
    c->sending = NULL;
    conn_flush(c);
    if (c->kind == CONN_DOWN && c->state == D_STREAM && c->st)
        rmr_timer_set(&c->w->loop, &c->timer, c->st->timeout_ms);
    if (c->proto == P_H2)
        h2_after_send(c);
    else if (c->kind == CONN_DOWN)
        down_after_send(c);
    else
        up_after_send(c);
out:
    op_done(c);
}

/* ---- receiving ---- */

static void on_recv(rmr_loop_t *loop, rmr_op_t *op, int res, unsigned flags);

static void recv_arm(conn_t *c)
{
    if (c->recv_armed || c->closing)
        return;
    struct io_uring_sqe *sqe = rmr_loop_sqe(&c->w->loop);
    io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = 0;
    io_uring_sqe_set_data(sqe, &c->recv_op);
    c->recv_armed = 1;
    c->ops++;
}

/* Stops reading c until recv_resume(): its output toward the peer is full. */
void recv_pause(conn_t *c)
{
    if (c->recv_paused)
        return;
    c->recv_paused = 1;
    if (c->recv_armed) {
        struct io_uring_sqe *sqe = rmr_loop_sqe(&c->w->loop);
        io_uring_prep_cancel(sqe, &c->recv_op, 0);
        io_uring_sqe_set_data64(sqe, 0);
    }
}

void recv_resume(conn_t *c)
{
    if (!c->recv_paused)
        return;
    c->recv_paused = 0;
    recv_arm(c);
}

static const char h2_preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/* Plaintext from c, to the codec it speaks. */
static void deliver(conn_t *c, const char *data, size_t len)
{
    if (c->proto == P_H2) {
        h2_feed(c, data, len);
        return;
    }
    if (c->kind == CONN_UP) {
        up_feed(c, data, len);
        return;
    }
    if (c->proto == P_SNIFF) {
        /* The client preface of HTTP/2 with prior knowledge, or anything else: HTTP/1. */
        size_t n = len < sizeof(h2_preface) - 1 ? len : sizeof(h2_preface) - 1;
        if (!memcmp(data, h2_preface, n)) {
            if (h2_down_start(c) < 0)
                return;
            h2_feed(c, data, len);
            return;
        }
        c->proto = P_H1;
    }
    down_feed(c, data, len);
}

/* The TLS handshake of c just completed: check the peer, pick the codec by ALPN. */
static int tls_established(conn_t *c)
{
    c->tls_done = 1;
    worker_t *w = c->w;
    if (c->kind == CONN_DOWN) {
        const rmr_config_t *cfg = w->view->config;
        const rmr_listener_conf_t *lc =
            c->lst->index < cfg->n_listeners ? &cfg->listeners[c->lst->index] : NULL;
        if (lc && lc->tls_mode != RMR_TLS_SIMPLE &&
            (lc->tls_mode != RMR_TLS_PERMISSIVE || tls_peer_identity(c->tls)) &&
            tls_check_identity(c->tls, (const char *const *)lc->allow, lc->n_allow) < 0) {
            tls_refused(c, tls_error_kind(c->tls), tls_error(c->tls));
            return -1;
        }
        RMR_STAT_INC(rmr_wstats[w->id].tls_handshakes);
        if (tls_resumed(c->tls))
            RMR_STAT_INC(rmr_wstats[w->id].tls_resumed);
        const char *alpn = tls_alpn(c->tls);
        if (alpn && !strcmp(alpn, "h2"))
            return h2_down_start(c);
        c->proto = P_H1;
        return 0;
    }
    const rmr_service_conf_t *sc = c->ep->cluster->conf;
    const char *const *ids = (const char *const *)sc->identities;
    size_t n = sc->n_identities;
    if (!n && sc->default_identity) {
        ids = (const char *const *)&sc->default_identity;
        n = 1;
    }
    if (tls_check_identity(c->tls, ids, n) < 0) {
        RMR_WARN("upstream %s (%s): TLS refused: %s", c->ep->conf->addr.text, sc->name,
                 tls_error(c->tls));
        RMR_STAT_INC(rmr_wstats[w->id].tls_errors[RMR_TLSERR_IDENTITY]);
        RMR_STAT_INC(c->ep->stats->failures);
        RMR_STAT_INC(c->ep->cluster->stats->upstream_errors[RMR_UERR_CONNECT_FAILURE]);
        up_fail(c, 502, "tls-failure");
        return -1;
    }
    RMR_STAT_INC(rmr_wstats[w->id].tls_upstream_handshakes);
    return 0;
}

/* Ciphertext from c: decrypt and deliver what it holds; answer the handshake. */
static void tls_input(conn_t *c, const char *data, size_t len)
{
    char plain[16384];
    if (tls_feed(c->tls, data, len) < 0) {
        conn_close(c);
        return;
    }
    for (;;) {
        long n = tls_read(c->tls, plain, sizeof(plain));
        if (n > 0 && !c->tls_done && tls_established(c) < 0)
            return;
        if (n == 0 && !c->tls_done && tls_handshake_done(c->tls) && tls_established(c) < 0)
            return;
        if (n > 0) {
            deliver(c, plain, (size_t)n);
            if (c->closing)
                return;
            continue;
        }
        if (n == 0)
            break;
        if (n == TLS_EOF) {
            conn_flush(c);
            deliver_eof(c, 0);
            return;
        }
        /* TLS_ERR */
        if (!c->tls_done) {
            if (c->kind == CONN_DOWN) {
                tls_refused(c, tls_error_kind(c->tls), tls_error(c->tls));
            } else {
                RMR_WARN("upstream %s: TLS handshake failed: %s", c->ep->conf->addr.text,
                         tls_error(c->tls));
                RMR_STAT_INC(rmr_wstats[c->w->id].tls_errors[RMR_TLSERR_HANDSHAKE]);
                RMR_STAT_INC(c->ep->stats->failures);
                RMR_STAT_INC(c->ep->cluster->stats->upstream_errors[RMR_UERR_CONNECT_FAILURE]);
                up_fail(c, 502, "tls-failure");
            }
            return;
        }
        RMR_DEBUG("tls: %s", tls_error(c->tls));
        if (c->kind == CONN_UP) {
            /* e.g. the server refused our certificate after a TLS 1.3 handshake */
            RMR_WARN("upstream %s: TLS: %s", c->ep->conf->addr.text, tls_error(c->tls));
            RMR_STAT_INC(rmr_wstats[c->w->id].tls_errors[rmr_tlserr_of(tls_error_kind(c->tls))]);
            RMR_STAT_INC(c->ep->stats->failures);
            up_fail(c, 502, "tls-failure");
            return;
        }
        deliver_eof(c, -1);
        return;
    }
    conn_flush(c); /* handshake records, alerts, key updates */
}

/* EOF (res 0) or an error (res < 0) on c. */
static void deliver_eof(conn_t *c, int res)
{
    if (c->closing)
        return;
    if (c->tls && !c->tls_done && c->kind == CONN_UP) {
        RMR_WARN("upstream %s: closed during the TLS handshake (does it speak TLS?)",
                 c->ep->conf->addr.text);
        RMR_STAT_INC(rmr_wstats[c->w->id].tls_errors[RMR_TLSERR_HANDSHAKE]);
        RMR_STAT_INC(c->ep->stats->failures);
        up_fail(c, 502, "tls-failure");
        return;
    }
    if (c->proto == P_H2) {
        h2_feed(c, NULL, 0);
        return;
    }
    if (c->kind == CONN_UP) {
        up_feed(c, NULL, res == 0 ? 0 : (size_t)-1);
    } else if (res == 0 && c->st && c->st->req_done && !c->st->resp_done && c->state == D_STREAM) {
        /* A client that half-closed after a whole request still gets its response. */
        c->close_after = 1;
        c->recv_paused = 1;
    } else {
        conn_close(c);
    }
}

static void on_recv(rmr_loop_t *loop, rmr_op_t *op, int res, unsigned flags)
{
    conn_t *c = (conn_t *)((char *)op - offsetof(conn_t, recv_op));
    int more = flags & IORING_CQE_F_MORE;
    if (flags & IORING_CQE_F_BUFFER) {
        unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;
        /* The feed copies what it keeps: the buffer goes back at once. */
        if (res > 0 && !c->closing) {
            if (c->tls_sniff) {
                /* permissive: a TLS record (handshake, 0x16) starts TLS, anything else is
                 * plaintext */
                c->tls_sniff = 0;
                if (*(const unsigned char *)rmr_loop_buf(loop, bid) == 0x16) {
                    tls_ctx_t *ctx = rmr_tls_server_ctx(RMR_TLS_PERMISSIVE);
                    c->tls = ctx ? tls_new(ctx, 1, NULL, NULL) : NULL;
                    tls_ctx_unref(ctx);
                    if (!c->tls)
                        conn_close(c);
                }
            }
            if (c->closing)
                ;
            else if (c->tls)
                tls_input(c, rmr_loop_buf(loop, bid), (size_t)res);
            else
                deliver(c, rmr_loop_buf(loop, bid), (size_t)res);
        }
        rmr_loop_buf_put(loop, bid);
    } else if (!c->closing && res != -ENOBUFS && res != -ECANCELED) {
        deliver_eof(c, res);
    }
    if (!more) {
        /* The multishot ended (out of buffers, cancelled, or the data above was its last):
         * re-arm unless paused or closing. */
        c->recv_armed = 0;
        if (!c->closing && !c->recv_paused && res != 0 &&
            !(res < 0 && res != -ENOBUFS && res != -ECANCELED))
            recv_arm(c);
        op_done(c);
    }
}

/* ---- local replies ---- */

static const char *status_text(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Content Too Large";
    case 422:
        return "Unprocessable Content";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Error";
    }
}

const char *reason_text(const char *reason)
{
    static const struct {
        const char *reason, *text;
    } texts[] = {
        {"bad-request", "the request is malformed"},
        {"no-route", "no route matches this request"},
        {"header-timeout", "the request head did not arrive in time"},
        {"body-too-large", "the request body is larger than allowed"},
        {"headers-too-large", "the request head is larger than allowed"},
        {"connect-failure", "could not connect to the upstream"},
        {"connect-timeout", "timed out connecting to the upstream"},
        {"upstream-reset", "the upstream closed or reset the connection"},
        {"bad-upstream-response", "the upstream sent a malformed response"},
        {"no-endpoint", "the service has no endpoint"},
        {"upstream-timeout", "the upstream did not answer in time"},
        {"method-not-allowed", "this method is not proxied"},
        {"out-of-memory", "the proxy is out of memory"},
        {"draining", "the proxy is shutting down"},
        {"tls-failure", "the TLS handshake with the upstream failed"},
        {"rate-limited", "the route's rate limit is exceeded; retry later"},
        {"overflow-requests", "the service has too many requests in flight"},
        {"overflow-pending", "the service has too many requests waiting for a connection"},
        {"overflow-connections", "the service has too many connections"},
        {"no-healthy-endpoint", "every endpoint of the service is ejected"},
        {"idempotency-key-malformed", "the Idempotency-Key is not a valid string"},
        {"idempotency-key-in-flight", "a request with this Idempotency-Key is in progress"},
        {"idempotency-key-mismatch", "this Idempotency-Key was used for another request"},
        {"idempotency-store-full", "too many requests with an Idempotency-Key are in progress"},
    };
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
        if (!strcmp(texts[i].reason, reason))
            return texts[i].text;
    return reason;
}

/*
 * Writes a reply of remora's own to the client. keep: whether the connection may carry
 * another request after it.
 */
void local_reply(conn_t *d, int status, const char *reason, int keep)
{
    if (d->st) {
        if (d->st->trace_live)
            trace_end(d->st);
        d->st->reason = reason;
        if (!d->st->status)
            d->st->status = status;
    }
    if (d->virt) {
        h2_local_reply(d, status, reason);
        return;
    }
    const char *text = reason_text(reason);
    int n = (int)strlen(text) + 9;
    rmr_buf_t *b = out_of(d);
    if (!b) {
        conn_close(d);
        return;
    }
    char ra[32] = "";
    if (d->st && d->st->retry_after_s)
        snprintf(ra, sizeof(ra), "retry-after: %u\r\n", (unsigned)d->st->retry_after_s);
    rmr_buf_printf(b,
                   "HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
                   "x-remora-error: %s\r\n%s%s\r\nremora: %s\n",
                   status, status_text(status), n, reason, ra, keep ? "" : "connection: close\r\n",
                   text);
    RMR_STAT_INC(rmr_wstats[d->w->id].local_replies[status / 100]);
    if (status == 400)
        RMR_STAT_INC(rmr_wstats[d->w->id].bad_requests);
    if (!keep) {
        d->close_after = 1;
        d->state = D_CLOSING;
        recv_pause(d);
        /* A client that does not read its reply must not hold the connection forever. */
        rmr_timer_set(&d->w->loop, &d->timer, 5000);
    }
    conn_flush(d);
}

/* ---- downstream timers ---- */

void on_down_timer(rmr_loop_t *loop, rmr_timer_t *t)
{
    conn_t *d = (conn_t *)((char *)t - offsetof(conn_t, timer));
    (void)loop;
    switch (d->state) {
    case D_HEAD:
        local_reply(d, 408, "header-timeout", 0);
        break;
    case D_STREAM:
        if (d->st && !d->st->resp_started) {
            if (d->st->cluster)
                RMR_STAT_INC(d->st->cluster->stats->upstream_errors[RMR_UERR_TIMEOUT]);
            stream_fail(d, 504, "upstream-timeout");
        } else {
            conn_close(d);
        }
        break;
    default:
        conn_close(d);
        break;
    }
}

/* ---- accepting ---- */

void h1_accept(worker_t *w, listener_t *l, int fd)
{
    if (!w->view || w->draining || w->nconns >= w->view->config->limits.max_connections) {
        close(fd);
        return;
    }
    conn_t *d = conn_new(w, CONN_DOWN, fd);
    if (!d) {
        close(fd);
        return;
    }
    d->lst = l;
    d->recv_op.cb = on_recv;
    d->send_op.cb = on_send;
    d->timer.cb = on_down_timer;
    d->proto = P_SNIFF;
    llhttp_init(&d->parser, HTTP_REQUEST, &req_settings);
    d->parser.data = d;
    list_push(&w->conns, &d->link);
    w->nconns++;
    RMR_STAT_INC(rmr_wstats[w->id].downstream_cx_total);
    RMR_STAT_INC(rmr_wstats[w->id].downstream_cx_active);
    d->state = D_IDLE;
    rmr_timer_set(&w->loop, &d->timer, w->view->config->limits.header_timeout_ms);
    const rmr_config_t *cfg = w->view->config;
    if (l->index < cfg->n_listeners && cfg->listeners[l->index].tls_mode == RMR_TLS_PERMISSIVE) {
        d->tls_sniff = 1; /* the first byte tells TLS from plaintext */
    } else if (l->index < cfg->n_listeners &&
               cfg->listeners[l->index].tls_mode != RMR_TLS_DISABLE) {
        tls_ctx_t *ctx = rmr_tls_server_ctx(cfg->listeners[l->index].tls_mode);
        d->tls = ctx ? tls_new(ctx, 1, NULL, NULL) : NULL;
        tls_ctx_unref(ctx);
        if (!d->tls) {
            RMR_WARN("listener %s: no TLS context for a new connection", l->conf->addr.text);
            conn_close(d);
            return;
        }
    }
    recv_arm(d);
}

/* A client's TLS handshake failed or its identity is not let in: log, count, close. */
static void tls_refused(conn_t *d, const char *kind, const char *why)
{
    client_ip_fill(d);
    RMR_WARN("listener %s: TLS from %s refused: %s", d->lst->conf->addr.text, d->client_ip, why);
    RMR_STAT_INC(rmr_wstats[d->w->id].tls_errors[rmr_tlserr_of(kind)]);
    conn_flush(d); /* the alert, when there is one */
    d->close_after = 1;
    d->state = D_CLOSING;
    recv_pause(d);
    rmr_timer_set(&d->w->loop, &d->timer, 1000);
    if (!pending(d))
        conn_close(d);
}

/* Closes idle connections and asks busy ones to close after their response. */
void h1_drain(worker_t *w)
{
    list_t *p = w->conns.next;
    while (p != &w->conns) {
        conn_t *d = list_entry(p, conn_t, link);
        p = p->next;
        if (d->proto == P_H2)
            h2_drain(d);
        else if (d->state == D_IDLE && !pending(d))
            conn_close(d);
        else
            d->close_after = 1;
    }
}

/* ---- request parsing (downstream) ---- */

stream_t *stream_new(conn_t *d)
{
    worker_t *w = d->w;
    const rmr_limits_t *lim = &w->view->config->limits;
    stream_t *st;
    if (w->nfree_streams) {
        /* reuse: keep the message memory, forget the rest */
        st = w->free_streams[--w->nfree_streams];
        h1_msg_t req = st->req, resp = st->resp;
        memset(st, 0, sizeof(*st));
        st->req = req;
        st->resp = resp;
        h1_msg_reset(&st->req);
        h1_msg_reset(&st->resp);
        st->req.max_bytes = lim->max_header_bytes;
        st->req.max_hdrs = lim->max_headers;
    } else {
        st = calloc(1, sizeof(*st));
        if (!st)
            return NULL;
        h1_msg_init(&st->req, lim->max_header_bytes, lim->max_headers);
        h1_msg_init(&st->resp, 1024 * 1024, 1000); /* upstreams are trusted more, not blindly */
        if (rmr_buf_reserve(&st->req.arena, 512) < 0 || rmr_buf_reserve(&st->resp.arena, 512) < 0) {
            h1_msg_free(&st->req);
            h1_msg_free(&st->resp);
            free(st);
            return NULL;
        }
    }
    st->view = view_get(w->view);
    st->keepalive = 1;
    st->d = d;
    st->route = -1;
    st->lane_sub = -1;
    st->try_timer.cb = on_try_timer;
    list_init(&st->u2link);
    return st;
}

static int req_on_message_begin(llhttp_t *p)
{
    conn_t *d = p->data;
    if (d->st) /* a request while the previous one is pending cannot happen: we pause */
        return -1;
    d->st = stream_new(d);
    if (!d->st) {
        return -1;
    }
    d->state = D_HEAD;
    h1_msg_feed(&d->st->req, d->feed_start, (size_t)(d->feed_end - d->feed_start));
    return 0;
}

#define REQ_MSG(p) (&((conn_t *)(p)->data)->st->req)

static int req_on_url(llhttp_t *p, const char *at, size_t len)
{
    return h1_on_url(REQ_MSG(p), at, len);
}
static int req_on_header_field(llhttp_t *p, const char *at, size_t len)
{
    return h1_on_header_field(REQ_MSG(p), at, len);
}
static int req_on_header_value(llhttp_t *p, const char *at, size_t len)
{
    return h1_on_header_value(REQ_MSG(p), at, len);
}
static int req_on_header_value_complete(llhttp_t *p)
{
    return h1_on_header_value_complete(REQ_MSG(p));
}

/* Splits an absolute-form target "http://authority/path" into its parts. */
static int split_absolute(const char *u, size_t n, const char **auth, size_t *alen,
                          const char **path, size_t *plen)
{
    size_t skip;
    if (n >= 7 && !strncasecmp(u, "http://", 7))
        skip = 7;
    else
        return 0;
    const char *a = u + skip, *e = u + n;
    const char *q = a;
    while (q < e && *q != '/' && *q != '?' && *q != '#')
        q++;
    *auth = a;
    *alen = (size_t)(q - a);
    *path = q < e ? q : "/";
    *plen = q < e ? (size_t)(e - q) : 1;
    return 1;
}

void req_target(const h1_msg_t *m, const char **auth, size_t *alen, const char **path, size_t *plen)
{
    const char *u = h1_str(m, m->url);
    if (split_absolute(u, m->url.len, auth, alen, path, plen))
        return;
    *path = u;
    *plen = m->url.len;
    *auth = m->host >= 0 ? h1_str(m, m->hdrs[m->host].value) : NULL;
    *alen = m->host >= 0 ? m->hdrs[m->host].value.len : 0;
}

/* The request's authority (absolute-form target first, then Host), port stripped. */
static void req_authority(const stream_t *st, const char **host, size_t *hlen, const char **path,
                          size_t *plen, const char **full, size_t *flen)
{
    const h1_msg_t *m = &st->req;
    const char *u = h1_str(m, m->url);
    *path = u;
    *plen = m->url.len;
    *full = NULL;
    *flen = 0;
    if (!split_absolute(u, m->url.len, full, flen, path, plen) && m->host >= 0) {
        *full = h1_str(m, m->hdrs[m->host].value);
        *flen = m->hdrs[m->host].value.len;
    }
    *host = *full;
    *hlen = *flen;
    if (!*host)
        return;
    /* strip :port, keeping [v6] literals whole */
    size_t i = *hlen;
    while (i > 0 && (*host)[i - 1] >= '0' && (*host)[i - 1] <= '9')
        i--;
    if (i > 0 && i < *hlen && (*host)[i - 1] == ':')
        *hlen = i - 1;
}

static ssize_t route_request(conn_t *d, const char *host, size_t hlen, const char *path,
                             size_t plen, uint32_t *timeout_ms, int *route)
{
    const rmr_config_t *cfg = d->st->view->config;
    /* The listener as the request's snapshot sees it: a reload may have moved the index of
     * the local app's service. */
    if (d->lst->index >= cfg->n_listeners)
        return -1;
    const rmr_listener_conf_t *lc = &cfg->listeners[d->lst->index];
    if (lc->inbound)
        return (ssize_t)lc->inbound_service;
    int i = gray_match(d, host, hlen, path, plen);
    if (i >= 0) {
        const rmr_route_conf_t *r = &cfg->routes[i];
        if (r->timeout_ms)
            *timeout_ms = r->timeout_ms;
        *route = i;
        return (ssize_t)r->service;
    }
    if (host) {
        /* a service is reachable by its name, unless routes own its host */
        ssize_t svc = rmr_config_service(cfg, host, hlen);
        if (svc >= 0 && (size_t)svc < d->st->view->n_clusters && d->st->view->clusters[svc].routed)
            return -1;
        return svc;
    }
    return -1;
}

static int find_header(const h1_msg_t *m, const char *lname)
{
    for (uint32_t i = 0; i < m->nhdrs; i++)
        if (!m->hdrs[i].dropped && h1_span_eq(m, m->hdrs[i].name, lname))
            return (int)i;
    return -1;
}

static uint64_t span_u64(const h1_msg_t *m, h1_span_t v)
{
    const char *p = h1_str(m, v);
    uint64_t n = 0;
    for (uint32_t i = 0; i < v.len && p[i] >= '0' && p[i] <= '9' && n < UINT32_MAX; i++)
        n = n * 10 + (uint64_t)(p[i] - '0');
    return n;
}

static const route_rt_t *stream_rt(const stream_t *st)
{
    return st->route >= 0 && st->view->routes ? &st->view->routes[st->route] : NULL;
}

static uint64_t deadline_ms(const stream_t *st)
{
    return st->start_us / 1000 + st->timeout_ms;
}

uint64_t deadline_header_ms(conn_t *d)
{
    const stream_t *st = d->st;
    const route_rt_t *rt = stream_rt(st);
    if (!rt || !rt->deadline || find_header(&st->req, "x-remora-deadline-ms") >= 0)
        return 0;
    /* the route's deadline, for the callee's sidecar (and app) to stop in time; now is the
     * turn's clock, a little older than the request: clamp */
    uint64_t dl = deadline_ms(st), now = d->w->loop.now_ms;
    return dl <= now ? 1 : dl - now > st->timeout_ms ? st->timeout_ms : dl - now;
}

static void emit_headers(rmr_buf_t *b, const h1_msg_t *m, int skip_host)
{
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        const h1_hdr_t *h = &m->hdrs[i];
        if (h->dropped || (skip_host && h->kind == H_HOST))
            continue;
        size_t nl = h->name.len, vl = h->value.len;
        if (rmr_buf_reserve(b, nl + vl + 4) < 0)
            return;
        char *o = b->data + b->len;
        memcpy(o, h1_str(m, h->name), nl);
        o[nl] = ':';
        o[nl + 1] = ' ';
        if (vl)
            memcpy(o + nl + 2, h1_str(m, h->value), vl);
        o[nl + 2 + vl] = '\r';
        o[nl + 3 + vl] = '\n';
        b->len += nl + vl + 4;
    }
}

/* Serialises the request head toward the upstream into b. */
static void build_upstream_head(conn_t *d, rmr_buf_t *b)
{
    stream_t *st = d->st;
    const h1_msg_t *m = &st->req;
    const char *host, *path, *full;
    size_t hlen, plen, flen;
    req_authority(st, &host, &hlen, &path, &plen, &full, &flen);
    rmr_buf_str(b, st->method);
    rmr_buf_append(b, " ", 1);
    rmr_buf_append(b, path, plen);
    rmr_buf_str(b, " HTTP/1.1\r\n");
    if (full) {
        rmr_buf_str(b, "host: ");
        rmr_buf_append(b, full, flen);
        rmr_buf_str(b, "\r\n");
    }
    emit_headers(b, m, 1);
    if (st->upgrade) {
        for (uint32_t i = 0; i < m->nhdrs; i++)
            if (m->hdrs[i].kind == H_UPGRADE) {
                rmr_buf_str(b, "connection: upgrade\r\nupgrade: ");
                rmr_buf_append(b, h1_str(m, m->hdrs[i].value), m->hdrs[i].value.len);
                rmr_buf_str(b, "\r\n");
                break;
            }
    }
    if (st->req_out == FRAME_CHUNKED)
        rmr_buf_str(b, "transfer-encoding: chunked\r\n");
    else if (st->has_cl) {
        rmr_buf_lit(b, "content-length: ");
        rmr_buf_u64(b, st->req_cl);
        rmr_buf_lit(b, "\r\n");
    }
    /* X-Forwarded-For: the values received, in order, then this client. */
    rmr_buf_str(b, "x-forwarded-for: ");
    for (uint32_t i = 0; i < m->nhdrs; i++)
        if (m->hdrs[i].kind == H_X_FORWARDED_FOR && m->hdrs[i].value.len) {
            rmr_buf_append(b, h1_str(m, m->hdrs[i].value), m->hdrs[i].value.len);
            rmr_buf_append(b, ", ", 2);
        }
    rmr_buf_str(b, d->client_ip);
    rmr_buf_str(b, "\r\n");
    if (st->idem_gen[0]) {
        rmr_buf_str(b, "idempotency-key: ");
        rmr_buf_str(b, st->idem_gen);
        rmr_buf_str(b, "\r\n");
    }
    uint64_t left = deadline_header_ms(d);
    if (left) {
        rmr_buf_lit(b, "x-remora-deadline-ms: ");
        rmr_buf_u64(b, left);
        rmr_buf_lit(b, "\r\n");
    }
    rmr_buf_str(b, "\r\n");
}

void client_ip_fill(conn_t *d)
{
    if (d->client_ip[0])
        return;
    if (d->virt) {
        memcpy(d->client_ip, d->parent->client_ip, sizeof(d->client_ip));
        if (d->client_ip[0])
            return;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    int fd = d->virt ? d->parent->fd : d->fd;
    if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, d->client_ip,
                      sizeof(d->client_ip));
        else if (ss.ss_family == AF_INET6)
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, d->client_ip,
                      sizeof(d->client_ip));
    }
    if (!d->client_ip[0])
        strcpy(d->client_ip, "unknown");
    if (d->virt)
        memcpy(d->parent->client_ip, d->client_ip, sizeof(d->client_ip));
}

/* A gRPC request's grpc-timeout ("100m", "5S", ...) in milliseconds; 0 when absent or bad. */
static uint32_t grpc_timeout_ms(const h1_msg_t *m)
{
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        const h1_hdr_t *h = &m->hdrs[i];
        if (!h1_span_eq(m, h->name, "grpc-timeout") || h->value.len < 2 || h->value.len > 9)
            continue;
        const char *v = h1_str(m, h->value);
        uint64_t n = 0;
        for (uint32_t k = 0; k + 1 < h->value.len; k++) {
            if (v[k] < '0' || v[k] > '9')
                return 0;
            n = n * 10 + (uint64_t)(v[k] - '0');
        }
        switch (v[h->value.len - 1]) {
        case 'H':
            n *= 3600000;
            break;
        case 'M':
            n *= 60000;
            break;
        case 'S':
            n *= 1000;
            break;
        case 'm':
            break;
        case 'u':
            n = (n + 999) / 1000;
            break;
        case 'n':
            n = (n + 999999) / 1000000;
            break;
        default:
            return 0;
        }
        if (n == 0)
            n = 1;
        return n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
    }
    return 0;
}

/*
 * The request head of d's stream is complete and analysed (HTTP/1 or HTTP/2): route it and
 * dispatch it. On no route, st->req.err_status is 404 and the caller answers.
 */

/* ---- filters on the request path (filters/ holds the state and the rules) ---- */

/* The outcome of the current try, for outlier detection; once per try. */
void try_report(stream_t *st, rmr_outcome_t o)
{
    if (!st->try_start_us)
        return;
    if (st->ep && st->cluster && st->cluster->outlier)
        rmr_breaker_report(st->cluster->breaker, st->ep->bidx, o, rmr_clock_us() - st->try_start_us,
                           st->probe, st->d->w->loop.now_ms);
    st->try_start_us = 0;
    st->probe = 0;
}

/* Leaves the upstream of the current try without reusing it. */
static void try_detach(conn_t *d)
{
    stream_t *st = d->st;
    if (d->peer) {
        conn_t *u = d->peer;
        d->peer = NULL;
        u->peer = NULL;
        up_release(u, 0);
    }
    if (st->u2)
        h2_up_cancel(st);
}

/*
 * The current try of d's stream failed: k (with the status for RMR_ATT_STATUS). Returns 1 when
 * the route's retry policy, the method, the body kept, the deadline, max_retries and the retry
 * budget all allow another try, which is then scheduled after the backoff; the caller leaves
 * the upstream and answers nothing. 0: the caller answers as without retries.
 */
int try_again(conn_t *d, rmr_attempt_kind_t k, int status, int64_t retry_after_ms)
{
    stream_t *st = d->st;
    worker_t *w = d->w;
    if (!st || !st->cluster || st->resp_started || st->resp_done || st->upgrade || st->retry_wait)
        return 0;
    const route_rt_t *rt = stream_rt(st);
    if (!rt || st->attempt >= rt->retry.attempts)
        return 0;
    const char *why = rmr_retry_should(&rt->retry, k, status);
    if (!why)
        return 0;
    /* After a connect failure or a refused stream the app never saw the request; otherwise it
     * may have, and only an idempotent request (or one the callee de-duplicates) is safe. */
    int maybe_seen = k != RMR_ATT_CONNECT_FAILURE && k != RMR_ATT_REFUSED_STREAM;
    if (maybe_seen && !rmr_method_idempotent(st->method, strlen(st->method)) &&
        (rt->retry.non_idempotent == RMR_NONIDEM_NEVER ||
         (rt->retry.non_idempotent == RMR_NONIDEM_WITH_KEY && !st->has_idem_key)))
        return 0;
    if (st->replay_over)
        return 0; /* the body that left is not kept */
    uint64_t wait = rmr_backoff_ms(&rt->retry, st->attempt, worker_rand(w));
    if (retry_after_ms > 0 && (uint64_t)retry_after_ms > wait)
        wait = (uint64_t)retry_after_ms;
    if (w->loop.now_ms + wait >= deadline_ms(st))
        return 0;
    rmr_breaker_t *b = st->cluster->breaker;
    if (st->held_retry) {
        rmr_breaker_release(b, RMR_LIM_RETRIES);
        rmr_budget_retry_end(st->cluster->budget);
        st->held_retry = 0;
    }
    if (!rmr_breaker_acquire(b, RMR_LIM_RETRIES)) {
        RMR_STAT_INC(st->cluster->stats->overflows[RMR_LIM_RETRIES]);
        RMR_STAT_INC(st->cluster->stats->retries_refused);
        return 0;
    }
    if (!rmr_budget_retry_begin(st->cluster->budget, rt->retry.budget_percent,
                                rt->retry.budget_min_per_s, w->loop.now_ms)) {
        rmr_breaker_release(b, RMR_LIM_RETRIES);
        RMR_STAT_INC(st->cluster->stats->retries_refused);
        return 0;
    }
    st->held_retry = 1;
    RMR_STAT_INC(st->cluster->stats->retries[rmr_retry_reason_of(why)]);
    trace_attempt(st, why);
    RMR_DEBUG("retry %u of %s %s to %s: %s, in %lu ms", st->attempt, st->method,
              st->cluster->conf->name, st->ep ? st->ep->conf->addr.text : "-", why,
              (unsigned long)wait);
    st->last_ep = st->ep;
    st->retry_wait = 1;
    rmr_timer_set(&w->loop, &st->try_timer, wait);
    return 1;
}

/* The per-try timeout, or the end of the backoff before the next try. */
static void on_try_timer(rmr_loop_t *loop, rmr_timer_t *t)
{
    stream_t *st = (stream_t *)((char *)t - offsetof(stream_t, try_timer));
    conn_t *d = st->d;
    (void)loop;
    if (st->resp_started || st->resp_done || d->st != st)
        return;
    if (st->retry_wait) {
        st->retry_wait = 0;
        stream_dispatch(d);
        return;
    }
    RMR_STAT_INC(st->cluster->stats->upstream_errors[RMR_UERR_TIMEOUT]);
    try_report(st, RMR_OUT_TIMEOUT);
    if (try_again(d, RMR_ATT_PER_TRY_TIMEOUT, 0, 0)) {
        try_detach(d);
        return;
    }
    stream_fail(d, 504, "upstream-timeout");
}

/* ---- inbound de-duplication by Idempotency-Key ---- */

static void idem_release(stream_t *st)
{
    if (st->idem_key && st->idem_new && st->cluster && st->cluster->idem)
        rmr_idem_abort(st->cluster->idem, st->idem_key, strlen(st->idem_key));
    st->idem_new = 0;
    free(st->idem_key);
    st->idem_key = NULL;
    if (st->idem_hit)
        rmr_idem_entry_unref(st->idem_hit);
    st->idem_hit = NULL;
    rmr_buf_t *bufs[2] = {st->cap_head, st->cap_body};
    for (int i = 0; i < 2; i++)
        if (bufs[i]) {
            rmr_buf_free(bufs[i]);
            free(bufs[i]);
        }
    st->cap_head = st->cap_body = NULL;
}

/* Answers d's stream with the stored response of its key (the request body was read). */
static void idem_replay(conn_t *d)
{
    stream_t *st = d->st;
    rmr_idem_entry_t *e = st->idem_hit;
    st->idem_hit = NULL;
    if (!rmr_idem_entry_matches_body(st->cluster->idem, e, st->body_hash)) {
        rmr_idem_entry_unref(e);
        stream_fail(d, 422, "idempotency-key-mismatch");
        return;
    }
    st->replayed = 1;
    /* The stored head becomes the response message, as if the app had sent it again. */
    h1_msg_t *m = &st->resp;
    h1_msg_reset(m);
    size_t hl, bl;
    const char *h = rmr_idem_entry_head(e, &hl), *end = h + hl;
    while (h < end) {
        const char *eol = memchr(h, '\n', (size_t)(end - h));
        const char *colon = memchr(h, ':', (size_t)((eol ? eol : end) - h));
        size_t ll = (size_t)((eol ? eol : end) - h);
        if (colon) {
            const char *v = colon + 1;
            while (v < h + ll && *v == ' ')
                v++;
            size_t vl = (size_t)(h + ll - v);
            while (vl && (v[vl - 1] == '\r' || v[vl - 1] == ' '))
                vl--;
            h1_msg_add(m, h, (size_t)(colon - h), v, vl);
        }
        h = eol ? eol + 1 : end;
    }
    const char *body = rmr_idem_entry_body(e, &bl);
    h1_msg_add(m, "x-remora-idempotent-replay", 26,
               rmr_idem_entry_body_kept(e) ? "1" : "1; body-not-kept",
               rmr_idem_entry_body_kept(e) ? 1 : 16);
    int status = rmr_idem_entry_status(e);
    resp_head_out(d, m, status, 1, bl, 0);
    if (bl && !st->head_req)
        resp_body_out(d, body, bl);
    resp_end_out(d);
    rmr_idem_entry_unref(e);
    conn_flush(d);
}

/*
 * A request to a service with idempotency on: 0 to go on to the app, 1 when it was answered
 * (or will be, once its body is read).
 */
static int idem_request(conn_t *d)
{
    stream_t *st = d->st;
    h1_msg_t *m = &st->req;
    int i = find_header(m, "idempotency-key");
    if (i < 0)
        return 0;
    char key[256];
    int kl =
        rmr_idem_parse_key(h1_str(m, m->hdrs[i].value), m->hdrs[i].value.len, key, sizeof(key));
    if (kl <= 0) {
        stream_fail(d, 400, "idempotency-key-malformed");
        return 1;
    }
    const char *host, *path, *full;
    size_t hlen, plen, flen;
    req_authority(st, &host, &hlen, &path, &plen, &full, &flen);
    st->idem_fp = rmr_hash64(rmr_hash64(RMR_HASH_INIT, st->method, strlen(st->method)), path, plen);
    st->body_hash = RMR_HASH_INIT;
    rmr_idem_entry_t *e = NULL;
    switch (
        rmr_idem_begin(st->cluster->idem, key, (size_t)kl, st->idem_fp, d->w->loop.now_ms, &e)) {
    case RMR_IDEM_NEW:
        st->idem_key = strdup(key);
        if (!st->idem_key) {
            rmr_idem_abort(st->cluster->idem, key, (size_t)kl);
            stream_fail(d, 503, "out-of-memory");
            return 1;
        }
        st->idem_new = 1;
        return 0;
    case RMR_IDEM_IN_FLIGHT:
        stream_fail(d, 409, "idempotency-key-in-flight");
        return 1;
    case RMR_IDEM_MISMATCH:
        stream_fail(d, 422, "idempotency-key-mismatch");
        return 1;
    case RMR_IDEM_FULL:
        stream_fail(d, 503, "idempotency-store-full");
        return 1;
    case RMR_IDEM_DONE:
    default:
        /* answered by req_end_out, once the body (to compare) is read */
        st->idem_hit = e;
        return 1;
    }
}

/* Keeps what the store will hold of the response: its head now, its body as it passes. */
static void idem_capture_head(stream_t *st, const h1_msg_t *m)
{
    st->cap_head = calloc(1, sizeof(rmr_buf_t));
    st->cap_body = calloc(1, sizeof(rmr_buf_t));
    if (!st->cap_head || !st->cap_body) {
        st->cap_over = 1;
        return;
    }
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        const h1_hdr_t *h = &m->hdrs[i];
        if (h->dropped || h->kind == H_CONTENT_LENGTH || h->kind == H_TRANSFER_ENCODING ||
            h1_span_eq(m, h->name, "x-remora-idempotent-replay"))
            continue;
        rmr_buf_append(st->cap_head, h1_str(m, h->name), h->name.len);
        rmr_buf_append(st->cap_head, ": ", 2);
        rmr_buf_append(st->cap_head, h1_str(m, h->value), h->value.len);
        rmr_buf_append(st->cap_head, "\r\n", 2);
    }
}

static void idem_capture_body(stream_t *st, const char *at, size_t len, uint64_t max)
{
    if (!st->cap_body || st->cap_over)
        return;
    if (st->cap_body->len + len > max) {
        st->cap_over = 1;
        return;
    }
    rmr_buf_append(st->cap_body, at, len);
}

static uint64_t idem_max_body(const stream_t *st)
{
    const Remora__V1__Service *pb = st->cluster ? st->cluster->conf->pb : NULL;
    uint64_t max = pb && pb->idempotency ? pb->idempotency->max_response_bytes : 0;
    return max ? max : 65536;
}

/* The response of a NEW keyed request is complete: the store keeps it. */
static void idem_finish(conn_t *d)
{
    stream_t *st = d->st;
    if (!st->idem_new || !st->cluster || !st->cluster->idem)
        return;
    rmr_buf_t empty = {0};
    rmr_buf_t *h = st->cap_head ? st->cap_head : &empty, *b = st->cap_body ? st->cap_body : &empty;
    rmr_idem_finish(st->cluster->idem, st->idem_key, strlen(st->idem_key), st->body_hash,
                    st->status, h->data ? h->data : "", h->len, b->data ? b->data : "", b->len,
                    !st->cap_over && !h->oom && !b->oom, d->w->loop.now_ms);
    st->idem_new = 0;
}

/*
 * The filters of a routed request, before its first try: circuit-breaker limit, rate limit,
 * retry bookkeeping and Idempotency-Key, inbound de-duplication. 0 to dispatch; 1 when the
 * request was answered or waits for its body.
 */
static int filters_request(conn_t *d)
{
    stream_t *st = d->st;
    worker_t *w = d->w;
    cluster_t *c = st->cluster;
    const route_rt_t *rt = stream_rt(st);
    if (rt && rt->bucket) {
        uint32_t ra = 1;
        if (!rmr_bucket_take(rt->bucket, rmr_clock_us(), &ra)) {
            RMR_STAT_INC(c->stats->rate_limited);
            st->retry_after_s = ra;
            stream_fail(d, 429, "rate-limited");
            return 1;
        }
    }
    if (!rmr_breaker_acquire(c->breaker, RMR_LIM_REQUESTS)) {
        RMR_STAT_INC(c->stats->overflows[RMR_LIM_REQUESTS]);
        stream_fail(d, 503, "overflow-requests");
        return 1;
    }
    st->held_req = 1;
    if (rt && rt->retry.attempts > 1) {
        st->keep_body = st->req_out != FRAME_NONE;
        rmr_budget_request_begin(c->budget);
        st->budget_req = 1;
        if (!rmr_method_idempotent(st->method, strlen(st->method))) {
            if (find_header(&st->req, "idempotency-key") >= 0) {
                st->has_idem_key = 1;
            } else if (rt->retry.non_idempotent == RMR_NONIDEM_WITH_KEY) {
                rmr_idem_format_key(st->idem_gen, worker_rand(w), worker_rand(w));
                st->has_idem_key = 1;
            }
        }
    }
    if (c->idem && idem_request(d))
        return 1;
    return 0;
}

void stream_route(conn_t *d)
{
    stream_t *st = d->st;
    worker_t *w = d->w;
    const rmr_limits_t *lim = &st->view->config->limits;
    h1_msg_t *m = &st->req;
    client_ip_fill(d);
    for (uint32_t i = 0; i < m->nhdrs; i++)
        if (h1_span_eq(m, m->hdrs[i].name, "content-type") && m->hdrs[i].value.len >= 16 &&
            !strncasecmp(h1_str(m, m->hdrs[i].value), "application/grpc", 16)) {
            st->grpc = 1;
            break;
        }
    const char *host, *path, *full;
    size_t hlen, plen, flen;
    req_authority(st, &host, &hlen, &path, &plen, &full, &flen);
    uint32_t timeout = lim->request_timeout_ms;
    ssize_t svc = route_request(d, host, hlen, path, plen, &timeout, &st->route);
    if (st->grpc) {
        uint32_t g = grpc_timeout_ms(m);
        if (g && g < timeout)
            timeout = g;
    }
    /* Inbound, the caller's sidecar says how long its route has left: no point working past
     * that. */
    const rmr_config_t *cfg = st->view->config;
    int hd = d->lst->index < cfg->n_listeners && cfg->listeners[d->lst->index].inbound
                 ? find_header(m, "x-remora-deadline-ms")
                 : -1;
    if (hd >= 0) {
        uint32_t left = (uint32_t)span_u64(m, m->hdrs[hd].value);
        if (left && left < timeout)
            timeout = left;
    }
    st->timeout_ms = timeout;
    d->state = D_STREAM;
    rmr_timer_set(&w->loop, &d->timer, timeout);
    if (svc < 0 || (size_t)svc >= st->view->n_clusters) {
        /* counted under service="" so that request totals include what matched no route */
        RMR_STAT_INC(w->unrouted->requests);
        RMR_STAT_INC(w->unrouted->responses[4]);
        m->err_status = 404;
        m->err_reason = "no-route";
        return;
    }
    st->cluster = &st->view->clusters[svc];
    RMR_STAT_INC(st->cluster->stats->requests);
    st->replayable = st->req_out == FRAME_NONE && !st->upgrade;
    if (st->view->trace_on)
        trace_request(d);
    int g = gray_request(d, cfg->listeners[d->lst->index].inbound);
    if (g == 1)
        return; /* a fault answered */
    if (filters_request(d) != 0)
        return;
    if (g == 2) {
        /* a fault delay: the try timer dispatches, as after a backoff */
        st->retry_wait = 1;
        rmr_timer_set(&w->loop, &st->try_timer, st->fault_delay_ms);
        return;
    }
    stream_dispatch(d);
}

static int req_on_headers_complete(llhttp_t *p)
{
    conn_t *d = p->data;
    stream_t *st = d->st;
    worker_t *w = d->w;
    const rmr_limits_t *lim = &st->view->config->limits;
    h1_msg_t *m = &st->req;
    RMR_STAT_INC(rmr_wstats[w->id].downstream_rq_total);
    st->start_us = rmr_clock_us();
    if (h1_msg_analyze(m) < 0)
        return -1;
    if (p->method == HTTP_CONNECT) {
        m->err_status = 405;
        m->err_reason = "method-not-allowed";
        return -1;
    }
    {
        const char *mn = llhttp_method_name(p->method);
        size_t ml = strlen(mn);
        if (ml >= sizeof(st->method))
            ml = sizeof(st->method) - 1;
        memcpy(st->method, mn, ml);
        st->method[ml] = 0;
    }
    st->client11 = p->http_major == 1 && p->http_minor >= 1;
    st->keepalive = llhttp_should_keep_alive(p) && !(m->conn_tokens & H1_CONN_CLOSE);
    st->head_req = p->method == HTTP_HEAD;
    st->upgrade = p->upgrade && (m->conn_tokens & H1_CONN_UPGRADE);
    if (p->flags & F_CHUNKED) {
        st->req_out = FRAME_CHUNKED;
    } else if (p->flags & F_CONTENT_LENGTH) {
        st->has_cl = 1;
        st->req_cl = p->content_length;
        st->req_out = p->content_length ? FRAME_CL : FRAME_NONE;
        if (lim->max_body_bytes && p->content_length > lim->max_body_bytes) {
            m->err_status = 413;
            m->err_reason = "body-too-large";
            return -1;
        }
    } else {
        st->req_out = FRAME_NONE;
    }
    stream_route(d);
    /* Not malformed: with no body left to read the connection stays usable. */
    return 0;
}

/* Request body bytes toward the upstream of d's stream, framed as it needs them. */
void req_body_out(conn_t *d, const char *at, size_t len)
{
    stream_t *st = d->st;
    if (st->keep_body && !st->replay_over) {
        if (!st->replay)
            st->replay = calloc(1, sizeof(rmr_buf_t));
        if (!st->replay || st->replay->len + len > RETRY_BODY_MAX) {
            st->replay_over = 1; /* too large to send again: no retry once it started */
            if (st->replay) {
                rmr_buf_free(st->replay);
                free(st->replay);
                st->replay = NULL;
            }
        } else {
            rmr_buf_append(st->replay, at, len);
        }
    }
    if (st->idem_new || st->idem_hit)
        st->body_hash = rmr_hash64(st->body_hash, at, len);
    if (st->u2) {
        if (!st->reqbody)
            st->reqbody = wbuf_get(d->w);
        if (!st->reqbody) {
            stream_fail(d, 503, "out-of-memory");
            return;
        }
        rmr_buf_append(st->reqbody, at, len);
        h2_up_body(d);
        if (st->reqbody && st->reqbody->len - st->reqbody_off > OUT_HIGH && !d->virt)
            recv_pause(d);
        return;
    }
    conn_t *u = d->peer;
    if (!u) /* the upstream failed already; the reply is on its way */
        return;
    if (st->req_out == FRAME_CHUNKED) {
        char hdr[24];
        size_t n = rmr_fmt_hex(hdr, len);
        memcpy(hdr + n, "\r\n", 2);
        out_append(u, hdr, n + 2);
        out_append(u, at, len);
        out_append(u, "\r\n", 2);
    } else {
        out_append(u, at, len);
    }
    if (pending(u) > OUT_HIGH && !d->virt)
        recv_pause(d);
}

/* The request body of d's stream is complete. */
void req_end_out(conn_t *d)
{
    stream_t *st = d->st;
    st->req_done = 1;
    if (st->req.err_status)
        return;
    if (st->idem_hit) {
        idem_replay(d);
        return;
    }
    if (st->mirror_want)
        gray_mirror_end(d);
    if (st->u2)
        h2_up_body(d);
    else if (d->peer && st->req_out == FRAME_CHUNKED)
        out_append(d->peer, "0\r\n\r\n", 5);
}

static int req_on_body(llhttp_t *p, const char *at, size_t len)
{
    conn_t *d = p->data;
    stream_t *st = d->st;
    if (st->req.err_status) /* refused: swallow the body of a request answered locally */
        return 0;
    st->body_in += len;
    uint64_t max = st->view->config->limits.max_body_bytes;
    if (max && st->body_in > max) {
        st->req.err_status = 413;
        st->req.err_reason = "body-too-large";
        return -1;
    }
    req_body_out(d, at, len);
    return 0;
}

static int req_on_message_complete(llhttp_t *p)
{
    req_end_out(p->data);
    return HPE_PAUSED;
}

/* Feeds client bytes to the request parser, or stashes them while a response is pending. */
static void down_feed(conn_t *d, const char *data, size_t len)
{
    worker_t *w = d->w;
    if (d->state == D_TUNNEL) {
        if (d->peer) {
            out_append(d->peer, data, len);
            conn_flush(d->peer);
            if (pending(d->peer) > OUT_HIGH)
                recv_pause(d);
        }
        rmr_timer_set(&w->loop, &d->timer, w->view->config->limits.idle_timeout_ms);
        return;
    }
    if (d->state == D_CLOSING)
        return;
    if (d->st && d->st->req_done) {
        /* Pipelined: keep for later, bounded. */
        if (!d->stash)
            d->stash = wbuf_get(w);
        if (!d->stash || d->stash->len + len > STASH_MAX) {
            recv_pause(d);
            if (!d->stash || d->stash->len + len > STASH_MAX + 65536) {
                conn_close(d);
                return;
            }
        }
        rmr_buf_append(d->stash, data, len);
        return;
    }
    if (d->state == D_IDLE) {
        d->state = D_HEAD;
        rmr_timer_set(&w->loop, &d->timer, w->view->config->limits.header_timeout_ms);
    }
    if (d->st)
        h1_msg_feed(&d->st->req, data, len);
    d->feed_start = data;
    d->feed_end = data + len;
    d->in_parse = 1;
    llhttp_errno_t err = llhttp_execute(&d->parser, data, len);
    d->in_parse = 0;
    /* One send toward the upstream for all that this chunk produced. */
    if (d->peer && d->peer->state != U_CONNECTING)
        conn_flush(d->peer);
    if (err == HPE_OK)
        return;
    stream_t *st = d->st;
    if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
        const char *pos = llhttp_get_error_pos(&d->parser);
        size_t used = pos && pos >= data && pos <= data + len ? (size_t)(pos - data) : len;
        if (used < len) {
            if (!d->stash)
                d->stash = wbuf_get(w);
            if (d->stash)
                rmr_buf_append(d->stash, data + used, len - used);
        }
        if (st && st->req.err_status == 404) {
            local_reply(d, 404, "no-route", st->keepalive && !st->upgrade);
            st->resp_done = 1;
        }
        return;
    }
    /* A parse error, or a callback that refused the request. */
    int status = 400;
    const char *reason = "bad-request";
    if (st && st->req.err_status) {
        status = st->req.err_status;
        reason = st->req.err_reason;
    }
    RMR_DEBUG("refusing request: %s (%s)", llhttp_errno_name(err),
              llhttp_get_error_reason(&d->parser));
    if (st && st->resp_started) {
        conn_close(d);
        return;
    }
    if (d->peer) {
        conn_t *u = d->peer;
        d->peer = NULL;
        u->peer = NULL;
        up_release(u, 0);
    }
    if (st)
        st->resp_done = 1;
    local_reply(d, status, reason, 0);
}

/* ---- upstream connections ---- */

static void on_connect(rmr_loop_t *loop, rmr_op_t *op, int res, unsigned flags);
static void on_up_timer(rmr_loop_t *loop, rmr_timer_t *t);

conn_t *up_connect(worker_t *w, endpoint_t *ep, int *err)
{
    const rmr_addr_t *a = &ep->conf->addr;
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *err = -errno;
        return NULL;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    conn_t *u = conn_new(w, CONN_UP, fd);
    if (!u) {
        close(fd);
        *err = -ENOMEM;
        return NULL;
    }
    u->ep = ep;
    u->recv_op.cb = on_recv;
    u->send_op.cb = on_send;
    u->connect_op.cb = on_connect;
    u->timer.cb = on_up_timer;
    u->state = U_CONNECTING;
    llhttp_init(&u->parser, HTTP_RESPONSE, &resp_settings);
    u->parser.data = u;
    const rmr_service_conf_t *sc = ep->cluster->conf;
    if (sc->tls_mode != RMR_TLS_DISABLE) {
        tls_ctx_t *ctx = rmr_tls_client_ctx(sc->tls_mode, sc->protocol == RMR_PROTO_HTTP2);
        u->tls =
            ctx ? tls_new(ctx, 0, sc->tls_sni ? sc->tls_sni : sc->name, ep->conf->addr.text) : NULL;
        tls_ctx_unref(ctx);
        if (!u->tls) {
            /* counted as a connection the caller sees fail */
            u->ep = NULL;
            w->nalloc--;
            free(u);
            close(fd);
            *err = -ENOKEY;
            return NULL;
        }
    }
    /* The connect and its linked timeout must go in the same submission. */
    if (io_uring_sq_space_left(&w->loop.ring) < 2)
        io_uring_submit(&w->loop.ring);
    struct io_uring_sqe *sqe = rmr_loop_sqe(&w->loop);
    io_uring_prep_connect(sqe, fd, (const struct sockaddr *)&a->ss, a->len);
    io_uring_sqe_set_data(sqe, &u->connect_op);
    sqe->flags |= IOSQE_IO_LINK;
    u->ops++;
    /* The timespec lives in the connection: the kernel reads it when the turn submits. */
    uint32_t ms = ep->cluster->conf->connect_timeout_ms;
    u->connect_ts.tv_sec = ms / 1000;
    u->connect_ts.tv_nsec = (long long)(ms % 1000) * 1000000;
    sqe = rmr_loop_sqe(&w->loop);
    io_uring_prep_link_timeout(sqe, &u->connect_ts, 0);
    io_uring_sqe_set_data64(sqe, 0);
    RMR_STAT_INC(ep->cluster->stats->upstream_cx_total);
    RMR_STAT_INC(ep->cluster->stats->upstream_cx_active);
    return u;
}

static void on_connect(rmr_loop_t *loop, rmr_op_t *op, int res, unsigned flags)
{
    conn_t *u = (conn_t *)((char *)op - offsetof(conn_t, connect_op));
    (void)loop;
    (void)flags;
    if (u->closing)
        goto out;
    if (u->held_pending) {
        u->held_pending = 0;
        rmr_breaker_release(u->cx_breaker, RMR_LIM_PENDING);
    }
    if (res < 0) {
        RMR_STAT_INC(u->ep->stats->failures);
        if (res == -ECANCELED || res == -ETIME) {
            RMR_STAT_INC(u->ep->cluster->stats->upstream_errors[RMR_UERR_CONNECT_TIMEOUT]);
            up_fail(u, 504, "connect-timeout");
        } else {
            RMR_STAT_INC(u->ep->cluster->stats->upstream_errors[RMR_UERR_CONNECT_FAILURE]);
            up_fail(u, 502, "connect-failure");
        }
        goto out;
    }
    u->state = U_ACTIVE;
    recv_arm(u);
    if (u->tls && tls_connect(u->tls) < 0) {
        RMR_WARN("upstream %s: TLS: %s", u->ep->conf->addr.text, tls_error(u->tls));
        up_fail(u, 502, "tls-failure");
        goto out;
    }
    if (u->proto == P_H2)
        h2_flush(u);
    else
        conn_flush(u);
out:
    op_done(u);
}

static void on_up_timer(rmr_loop_t *loop, rmr_timer_t *t)
{
    conn_t *u = (conn_t *)((char *)t - offsetof(conn_t, timer));
    (void)loop;
    conn_close(u); /* idle in the pool for too long */
}

/* Gives u back to its endpoint's pool, or closes it. u has no peer any more. */
void up_release(conn_t *u, int reusable)
{
    u->peer = NULL;
    endpoint_t *ep = u->ep;
    if (!reusable || u->closing || u->state != U_ACTIVE || pending(u) ||
        ep->nidle >= MAX_IDLE_PER_ENDPOINT || u->w->draining || u->recv_paused) {
        conn_close(u);
        return;
    }
    u->state = U_IDLE;
    list_push(&ep->idle, &u->link);
    u->in_list = 1;
    ep->nidle++;
    rmr_timer_set(&u->w->loop, &u->timer, ep->cluster->conf->idle_timeout_ms);
}

/* Closes an endpoint's idle connections (its view is going away). */
void h1_pool_drop(endpoint_t *ep)
{
    while (!list_empty(&ep->idle)) {
        conn_t *u = list_entry(ep->idle.next, conn_t, link);
        conn_close(u);
    }
}

void h1_pool_move(endpoint_t *from, endpoint_t *to)
{
    while (!list_empty(&from->idle)) {
        conn_t *u = list_entry(from->idle.next, conn_t, link);
        list_del(&u->link);
        from->nidle--;
        u->ep = to;
        list_push(&to->idle, &u->link);
        to->nidle++;
    }
}

void h1_close_all(worker_t *w)
{
    while (!list_empty(&w->conns))
        conn_close(list_entry(w->conns.next, conn_t, link));
}

/* Picks an endpoint and a connection for the routed request of d, and sends its head. */
static void stream_dispatch(conn_t *d)
{
    stream_t *st = d->st;
    worker_t *w = d->w;
    int probe = 0;
    endpoint_t *ep = gray_pick(w, st, st->last_ep, &probe);
    if (!ep) {
        RMR_STAT_INC(st->cluster->stats->upstream_errors[RMR_UERR_NO_ENDPOINT]);
        stream_fail(d, 503, st->cluster->n_endpoints ? "no-healthy-endpoint" : "no-endpoint");
        return;
    }
    if (!st->attempt++) {
        gray_account(st, 1); /* in the subset that serves the first try */
        if (st->mirror_want)
            gray_mirror_start(d);
    }
    st->probe = probe;
    /* the try's start, for the latency outlier check; only "a try is open" without one */
    st->try_start_us = st->cluster->outlier ? rmr_clock_us() : 1;
    const route_rt_t *rt = stream_rt(st);
    if (rt && rt->retry.per_try_ms)
        rmr_timer_set(&w->loop, &st->try_timer, rt->retry.per_try_ms);
    if (st->ep && st->ep->active) {
        st->ep->active--;
        RMR_STAT_DEC(st->ep->stats->active);
    }
    st->ep = ep;
    ep->active++;
    RMR_STAT_INC(ep->stats->active);
    RMR_STAT_INC(ep->stats->requests);
    if (st->cluster->conf->protocol == RMR_PROTO_HTTP2) {
        h2_up_dispatch(d);
        return;
    }
    conn_t *u = NULL;
    if (!list_empty(&ep->idle)) {
        u = list_entry(ep->idle.next, conn_t, link);
        list_del(&u->link);
        u->in_list = 0;
        ep->nidle--;
        rmr_timer_stop(&w->loop, &u->timer);
        u->state = U_ACTIVE;
        u->reused = 1;
    } else {
        rmr_breaker_t *b = st->cluster->breaker;
        if (!rmr_breaker_acquire(b, RMR_LIM_CONNECTIONS)) {
            RMR_STAT_INC(st->cluster->stats->overflows[RMR_LIM_CONNECTIONS]);
            stream_fail(d, 503, "overflow-connections");
            return;
        }
        if (!rmr_breaker_acquire(b, RMR_LIM_PENDING)) {
            rmr_breaker_release(b, RMR_LIM_CONNECTIONS);
            RMR_STAT_INC(st->cluster->stats->overflows[RMR_LIM_PENDING]);
            stream_fail(d, 503, "overflow-pending");
            return;
        }
        int err = 0;
        u = up_connect(w, ep, &err);
        if (!u) {
            rmr_breaker_release(b, RMR_LIM_CONNECTIONS);
            rmr_breaker_release(b, RMR_LIM_PENDING);
            if (err == -ENOKEY)
                RMR_WARN("upstream %s: no TLS context for a new connection", ep->conf->addr.text);
            else
                RMR_WARN("upstream %s: cannot open a socket: %s", ep->conf->addr.text,
                         strerror(-err));
            RMR_STAT_INC(st->cluster->stats->upstream_errors[RMR_UERR_CONNECT_FAILURE]);
            try_report(st, RMR_OUT_CONNECT_FAILURE);
            if (!try_again(d, RMR_ATT_CONNECT_FAILURE, 0, 0))
                stream_fail(d, 502, "connect-failure");
            return;
        }
        u->cx_breaker = b;
        u->held_pending = 1;
    }
    u->peer = d;
    d->peer = u;
    h1_msg_reset(&st->resp);
    rmr_buf_t *b = out_of(u);
    if (!b) {
        stream_fail(d, 503, "out-of-memory");
        return;
    }
    build_upstream_head(d, b);
    int resend = st->attempt > 1 || st->body_held;
    if (resend && st->replay && st->replay->len) {
        /* a retry: the body so far goes again; what is still to come follows as it arrives */
        if (st->req_out == FRAME_CHUNKED) {
            rmr_buf_hex(b, st->replay->len);
            rmr_buf_lit(b, "\r\n");
        }
        rmr_buf_append(b, st->replay->data, st->replay->len);
        if (st->req_out == FRAME_CHUNKED)
            rmr_buf_append(b, "\r\n", 2);
    }
    if (resend && st->req_done && st->req_out == FRAME_CHUNKED)
        rmr_buf_append(b, "0\r\n\r\n", 5);
    if (b->oom) {
        stream_fail(d, 503, "out-of-memory");
        return;
    }
    /* Inside the request parser the flush waits for the end of the chunk; a re-dispatch
     * (stream retry) flushes now. */
    if (u->state == U_ACTIVE && !d->in_parse)
        conn_flush(u);
}

/*
 * The upstream side of d's stream failed before or during the response. If nothing was
 * written to the client yet, answer locally; otherwise the client connection must close.
 */
void stream_fail(conn_t *d, int status, const char *reason)
{
    stream_t *st = d->st;
    if (st)
        try_report(st, status == 504 ? RMR_OUT_TIMEOUT : RMR_OUT_RESET);
    if (d->peer) {
        conn_t *u = d->peer;
        d->peer = NULL;
        u->peer = NULL;
        up_release(u, 0);
    }
    if (!st || st->resp_started || st->resp_done) {
        conn_close(d);
        return;
    }
    if (st->cluster)
        RMR_STAT_INC(st->cluster->stats->responses[status / 100]);
    st->resp_done = 1;
    /* keep-alive only when the whole request was read */
    local_reply(d, status, reason, st->req_done && st->keepalive);
}

/* The upstream connection u failed: answer its stream's client, and close u. */
static void up_fail(conn_t *u, int status, const char *reason)
{
    u->fail_status = status; /* for the streams of an HTTP/2 connection */
    u->fail_reason = reason;
    conn_t *d = u->peer;
    u->peer = NULL;
    if (d) {
        d->peer = NULL;
        int connect = !strcmp(reason, "connect-failure") || !strcmp(reason, "connect-timeout") ||
                      !strcmp(reason, "tls-failure");
        if (d->st) {
            try_report(d->st, connect ? RMR_OUT_CONNECT_FAILURE : RMR_OUT_RESET);
            if (try_again(d, connect ? RMR_ATT_CONNECT_FAILURE : RMR_ATT_RESET, 0, 0)) {
                conn_close(u);
                return;
            }
        }
        stream_fail(d, status, reason);
    }
    conn_close(u);
}

/* ---- response parsing (upstream) ---- */

#define RESP_MSG(p) (&((conn_t *)(p)->data)->peer->st->resp)

static int resp_on_message_begin(llhttp_t *p)
{
    conn_t *u = p->data;
    if (!u->peer || !u->peer->st)
        return -1; /* bytes from an upstream nobody asked */
    h1_msg_reset(RESP_MSG(p));
    return 0;
}
static int resp_on_status(llhttp_t *p, const char *at, size_t len)
{
    return h1_on_status(RESP_MSG(p), at, len);
}
static int resp_on_header_field(llhttp_t *p, const char *at, size_t len)
{
    return h1_on_header_field(RESP_MSG(p), at, len);
}
static int resp_on_header_value(llhttp_t *p, const char *at, size_t len)
{
    return h1_on_header_value(RESP_MSG(p), at, len);
}
static int resp_on_header_value_complete(llhttp_t *p)
{
    return h1_on_header_value_complete(RESP_MSG(p));
}

/*
 * The response head of d's stream, toward its client. m: the head as parsed (or gathered from
 * an HTTP/2 upstream). has_cl/cl: the response's Content-Length. Interim responses (1xx but
 * 101) may come before the final one. For an HTTP/1 client the framing is chosen here.
 */
void resp_head_out(conn_t *d, const h1_msg_t *m, int status, int has_cl, uint64_t cl,
                   int chunked_or_unknown)
{
    stream_t *st = d->st;
    int interim = status >= 100 && status < 200 && status != 101;
    if (!interim && st->attempt > 1 && m == &st->resp) {
        char n[20];
        h1_msg_add(&st->resp, "x-remora-attempts", 17, n, rmr_fmt_u64(n, st->attempt));
    }
    if (!interim && st->idem_new)
        idem_capture_head(st, m);
    if (!interim) {
        st->resp_started = 1;
        st->status = status;
        st->resp_has_cl = has_cl && !chunked_or_unknown;
        st->resp_cl = cl;
    }
    if (d->virt) {
        if (!interim)
            h2_resp_head(d, m, status);
        return;
    }
    int client11 = st->client11;
    rmr_buf_t *b = out_of(d);
    if (!b)
        return;
    if (!interim && (!st->keepalive || d->close_after || d->w->draining))
        d->close_after = 1;
    if (status == 101 && st->upgrade) {
        st->tunnel_ok = 1;
        st->resp_out = FRAME_NONE;
    } else if (interim || status == 204 || status == 304 || st->head_req) {
        st->resp_out = FRAME_NONE;
    } else if (chunked_or_unknown || !has_cl) {
        st->resp_out = client11 ? FRAME_CHUNKED : FRAME_CLOSE;
    } else {
        st->resp_out = FRAME_CL;
    }
    if (st->resp_out == FRAME_CLOSE)
        d->close_after = 1;
    rmr_buf_lit(b, "HTTP/1.1 ");
    rmr_buf_u64(b, (unsigned)status);
    rmr_buf_lit(b, " ");
    if (m->status_text.len)
        rmr_buf_append(b, h1_str(m, m->status_text), m->status_text.len);
    else
        rmr_buf_str(b, status_text(status));
    rmr_buf_str(b, "\r\n");
    emit_headers(b, m, 0);
    if (st->tunnel_ok) {
        for (uint32_t i = 0; i < m->nhdrs; i++)
            if (m->hdrs[i].kind == H_UPGRADE) {
                rmr_buf_str(b, "connection: upgrade\r\nupgrade: ");
                rmr_buf_append(b, h1_str(m, m->hdrs[i].value), m->hdrs[i].value.len);
                rmr_buf_str(b, "\r\n");
            }
    } else if (!interim) {
        if (st->resp_out == FRAME_CHUNKED)
            rmr_buf_str(b, "transfer-encoding: chunked\r\n");
        else if (has_cl && status != 204) {
            rmr_buf_lit(b, "content-length: ");
            rmr_buf_u64(b, cl);
            rmr_buf_lit(b, "\r\n");
        }
        if (d->close_after)
            rmr_buf_str(b, "connection: close\r\n");
        else if (!client11)
            rmr_buf_str(b, "connection: keep-alive\r\n"); /* an HTTP/1.0 client asked for it */
    }
    rmr_buf_str(b, "\r\n");
}

/* Response body bytes toward d's client. */
void resp_body_out(conn_t *d, const char *at, size_t len)
{
    stream_t *st = d->st;
    if (st->idem_new)
        idem_capture_body(st, at, len, idem_max_body(st));
    if (st->resp_out == FRAME_CHUNKED) {
        char hdr[24];
        size_t n = rmr_fmt_hex(hdr, len);
        memcpy(hdr + n, "\r\n", 2);
        out_append(d, hdr, n + 2);
        out_append(d, at, len);
        out_append(d, "\r\n", 2);
    } else {
        out_append(d, at, len);
    }
}

/* The response of d's stream is complete (trailers, if any, were given before). */
void resp_end_out(conn_t *d)
{
    stream_t *st = d->st;
    if (st->resp_out == FRAME_CHUNKED && st->trailers) {
        rmr_buf_t *b = out_of(d);
        if (b) {
            rmr_buf_str(b, "0\r\n");
            emit_headers(b, &st->resp, 0);
            rmr_buf_str(b, "\r\n");
        }
    } else if (st->resp_out == FRAME_CHUNKED) {
        out_append(d, "0\r\n\r\n", 5);
    }
    idem_finish(d);
    stream_record(d);
    st->resp_done = 1;
}

int64_t resp_retry_after_ms(const h1_msg_t *m)
{
    int ra = find_header(m, "retry-after");
    if (ra < 0)
        return 0;
    int64_t ms = rmr_retry_after_ms(h1_str(m, m->hdrs[ra].value), m->hdrs[ra].value.len,
                                    (int64_t)time(NULL));
    return ms > 0 ? ms : 0;
}

static int resp_on_headers_complete(llhttp_t *p)
{
    conn_t *u = p->data;
    conn_t *d = u->peer;
    stream_t *st = d->st;
    h1_msg_t *m = &st->resp;
    if (h1_msg_analyze(m) < 0)
        return -1;
    int status = p->status_code;
    int interim = status >= 100 && status < 200 && status != 101;
    if (!interim) {
        rmr_timer_stop(&d->w->loop, &st->try_timer);
        try_report(st, status >= 500 ? RMR_OUT_5XX : RMR_OUT_SUCCESS);
        if (status >= 400 && stream_rt(st)) {
            if (try_again(d, RMR_ATT_STATUS, status, resp_retry_after_ms(m))) {
                /* this response is dropped, with its connection; up_feed leaves it */
                st->retry_status = 1;
                return -1;
            }
        }
    }
    resp_head_out(d, m, status, (p->flags & F_CONTENT_LENGTH) != 0, p->content_length,
                  (p->flags & F_CHUNKED) != 0);
    if (d->virt) {
        if (interim)
            return 0;
        /* HTTP/2 frames the body itself; a HEAD response has none to read */
        st->resp_out = FRAME_NONE;
        return st->head_req ? 1 : 0;
    }
    if (!d->out || d->out->oom)
        return -1;
    if (st->tunnel_ok)
        return 2;
    if (st->head_req && !interim)
        return 1;
    return 0;
}

static int resp_on_body(llhttp_t *p, const char *at, size_t len)
{
    conn_t *u = p->data;
    conn_t *d = u->peer;
    resp_body_out(d, at, len);
    if (pending(d) > OUT_HIGH)
        recv_pause(u);
    return 0;
}

void stream_record(conn_t *d)
{
    stream_t *st = d->st;
    if (st->trace_live)
        trace_end(st);
    uint64_t us = rmr_clock_us() - st->start_us;
    int cls = st->status / 100;
    if (cls < 1 || cls > 5)
        cls = 5;
    if (st->cluster) {
        RMR_STAT_INC(st->cluster->stats->responses[cls]);
        rmr_hist_add(&st->cluster->stats->latency, us);
    }
    rmr_hist_add(&rmr_wstats[d->w->id].latency, us);
}

static int resp_on_message_complete(llhttp_t *p)
{
    conn_t *u = p->data;
    conn_t *d = u->peer;
    int status = p->status_code;
    if (status >= 100 && status < 200 && status != 101)
        return 0; /* an interim response: the final one follows */
    resp_end_out(d);
    return HPE_PAUSED;
}

/* Feeds upstream bytes to the response parser. len (size_t)-1 means a reset, data NULL and
 * len 0 the upstream's EOF. */
static void up_feed(conn_t *u, const char *data, size_t len)
{
    conn_t *d = u->peer;
    if (u->state == U_TUNNEL) {
        if (!d || !data) {
            /* The upstream ended the tunnel: the client gets what is queued, then EOF. */
            if (d) {
                d->close_after = 1;
                d->peer = NULL;
                if (!pending(d))
                    conn_close(d);
            }
            conn_close(u);
            return;
        }
        out_append(d, data, len);
        conn_flush(d);
        if (pending(d) > OUT_HIGH)
            recv_pause(u);
        return;
    }
    if (!d || !d->st) {
        /* An idle pooled connection: EOF, a reset, or bytes nobody asked for. */
        conn_close(u);
        return;
    }
    stream_t *st = d->st;
    llhttp_errno_t err;
    if (!data) {
        if (len == 0 && st->resp_started) {
            /* A body delimited by close ends here: finishing runs on_message_complete, which
             * pauses as after any response. */
            err = llhttp_finish(&u->parser);
            if ((err == HPE_OK || err == HPE_PAUSED) && st->resp_done) {
                d->peer = NULL;
                up_release(u, 0);
                conn_flush(d);
                return;
            }
        }
        /* Closed or reset before the response was complete. */
        if (!st->resp_started && u->reused && st->replayable && !st->retried) {
            /* A keep-alive connection the upstream closed as we reused it: the request never
             * reached the app. Try once more on a fresh connection. */
            st->retried = 1;
            d->peer = NULL;
            u->peer = NULL;
            conn_close(u);
            stream_dispatch(d);
            return;
        }
        RMR_STAT_INC(u->ep->stats->failures);
        RMR_STAT_INC(st->cluster->stats->upstream_errors[RMR_UERR_RESET]);
        up_fail(u, 502, "upstream-reset");
        return;
    }
    rmr_timer_set(&d->w->loop, &d->timer, st->timeout_ms);
    h1_msg_feed(&st->resp, data, len);
    err = llhttp_execute(&u->parser, data, len);
    /* One send for all that this chunk produced: head and body leave together. */
    conn_flush(d);
    if (err == HPE_OK)
        return;
    if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
        const char *pos = llhttp_get_error_pos(&u->parser);
        size_t used = pos && pos >= data && pos <= data + len ? (size_t)(pos - data) : len;
        if (st->tunnel_ok) {
            if (used < len)
                out_append(d, data + used, len - used);
            u->state = U_TUNNEL;
            d->state = D_TUNNEL;
            if (d->stash && d->stash->len) {
                out_append(u, d->stash->data, d->stash->len);
                d->stash->len = 0;
                conn_flush(u);
            }
            llhttp_resume_after_upgrade(&d->parser);
            conn_flush(d);
            return;
        }
        llhttp_resume(&u->parser);
        /* Bytes after the response, or a response the upstream wants closed: no reuse. */
        int reusable = used == len && llhttp_should_keep_alive(&u->parser) && st->req_done;
        d->peer = NULL;
        up_release(u, reusable);
        return;
    }
    if (st->retry_status) {
        st->retry_status = 0;
        d->peer = NULL;
        u->peer = NULL;
        conn_close(u);
        return;
    }
    RMR_WARN("upstream %s: bad response: %s", u->ep->conf->addr.text, llhttp_errno_name(err));
    RMR_STAT_INC(u->ep->stats->failures);
    RMR_STAT_INC(st->cluster->stats->upstream_errors[RMR_UERR_BAD_RESPONSE]);
    up_fail(u, 502, "bad-upstream-response");
}

/* ---- after a send completed ---- */

static void up_after_send(conn_t *u)
{
    conn_t *d = u->peer;
    if (d && d->virt && d->unacked && pending(u) <= OUT_HIGH / 2) {
        h2_stream_kick(d); /* hands the client's window back */
        return;
    }
    if (d && d->recv_paused && pending(u) <= OUT_HIGH / 2 && d->state != D_CLOSING)
        recv_resume(d);
}

/* The stream is over: count it, and make the connection ready for the next request. */
static void stream_end(conn_t *d)
{
    worker_t *w = d->w;
    stream_t *st = d->st;
    if (d->peer) { /* the request body was still flowing: the upstream cannot be reused */
        conn_t *u = d->peer;
        d->peer = NULL;
        u->peer = NULL;
        up_release(u, 0);
    }
    int keep = st->keepalive && st->req_done && !d->close_after && !w->draining;
    stream_free(d);
    if (!keep) {
        conn_close(d);
        return;
    }
    d->state = D_IDLE;
    rmr_timer_set(&w->loop, &d->timer, w->view->config->limits.idle_timeout_ms);
    llhttp_resume(&d->parser);
    if (d->stash && d->stash->len) {
        rmr_buf_t *s = d->stash;
        d->stash = NULL;
        down_feed(d, s->data, s->len);
        wbuf_put(w, s);
    }
    if (!d->closing)
        recv_resume(d);
}

static void down_after_send(conn_t *d)
{
    if (d->peer && d->peer->recv_paused && pending(d) <= OUT_HIGH / 2)
        recv_resume(d->peer);
    if (d->st && d->st->u2_unacked && pending(d) <= OUT_HIGH / 2)
        h2_up_ack(d->st);
    if (pending(d))
        return;
    if (d->state == D_CLOSING) {
        conn_close(d);
        return;
    }
    if (d->state == D_TUNNEL) {
        if (d->close_after && !d->peer)
            conn_close(d);
        return;
    }
    if (d->st && d->st->resp_done)
        stream_end(d);
}

/* ---- settings ---- */

__attribute__((constructor)) static void h1_settings_init(void)
{
    llhttp_settings_init(&req_settings);
    req_settings.on_message_begin = req_on_message_begin;
    req_settings.on_url = req_on_url;
    req_settings.on_header_field = req_on_header_field;
    req_settings.on_header_value = req_on_header_value;
    req_settings.on_header_value_complete = req_on_header_value_complete;
    req_settings.on_headers_complete = req_on_headers_complete;
    req_settings.on_body = req_on_body;
    req_settings.on_message_complete = req_on_message_complete;

    llhttp_settings_init(&resp_settings);
    resp_settings.on_message_begin = resp_on_message_begin;
    resp_settings.on_status = resp_on_status;
    resp_settings.on_header_field = resp_on_header_field;
    resp_settings.on_header_value = resp_on_header_value;
    resp_settings.on_header_value_complete = resp_on_header_value_complete;
    resp_settings.on_headers_complete = resp_on_headers_complete;
    resp_settings.on_body = resp_on_body;
    resp_settings.on_message_complete = resp_on_message_complete;
}
