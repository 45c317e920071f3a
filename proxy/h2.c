/*
 * HTTP/2 (RFC 9113) on the io_uring connections of http1.c, with nghttp2 on memory buffers:
 * received bytes go to nghttp2_session_mem_recv, and what nghttp2_session_mem_send frames is
 * appended to the connection's output, sent by the ring.
 *
 * Downstream, each client stream becomes a "virtual" conn_t (d->virt, d->parent, d->sid) with
 * a stream_t of its own: routing, dispatch, timeouts and local replies are those of HTTP/1.
 * The response body is appended to d->out and read from there by the stream's data provider.
 *
 * Upstream, an endpoint's HTTP/2 connections are shared by the streams of the worker, up to
 * the peer's SETTINGS_MAX_CONCURRENT_STREAMS; the request body waits in st->reqbody for the
 * data provider.
 *
 * Flow control is manual on both sides (no automatic WINDOW_UPDATE): received DATA is handed
 * back to the window only once the other side has taken it, so a slow reader holds at most a
 * window plus OUT_HIGH per stream.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <nghttp2/nghttp2.h>

#include "remora/log.h"
#include "http.h"
#include "tls.h"

#define H2_CONN_WINDOW (16u << 20) /* connection receive window, both directions */
#define H2_UP_DEFAULT_STREAMS 100  /* until the upstream's SETTINGS say */
#define H2_MAX_NV 256

struct h2conn {
    nghttp2_session *s;
    conn_t *c;
    list_t streams; /* downstream: virtual conns; upstream: stream_t.u2link */
    uint32_t nstreams;
    uint32_t max_streams; /* upstream: the peer's SETTINGS_MAX_CONCURRENT_STREAMS */
    uint64_t window_us;   /* start of the current one-second accounting window */
    uint32_t resets, control, continuations;
    unsigned in_io : 1, again : 1, goaway : 1, draining : 1, failed : 1;
};

static nghttp2_session_callbacks *down_cbs, *up_cbs;
static nghttp2_option *down_opt, *up_opt;

static const rmr_limits_t *limits_of(conn_t *c)
{
    return &c->w->view->config->limits;
}

/* ---- output ---- */

void h2_flush(conn_t *c)
{
    h2conn_t *h = c->h2;
    if (!h || c->closing)
        return;
    if (c->kind == CONN_UP && c->state == U_CONNECTING)
        return; /* on_connect flushes */
    if (h->in_io) {
        h->again = 1; /* inside nghttp2: the caller up the stack flushes */
        return;
    }
    h->in_io = 1;
    do {
        h->again = 0;
        while (pending(c) < OUT_HIGH) {
            const uint8_t *data;
            ssize_t n = nghttp2_session_mem_send(h->s, &data);
            if (n < 0) {
                RMR_DEBUG("h2: mem_send: %s", nghttp2_strerror((int)n));
                h->in_io = 0;
                conn_close(c);
                return;
            }
            if (n == 0)
                break;
            if (out_append(c, data, (size_t)n) < 0) {
                h->in_io = 0;
                conn_close(c);
                return;
            }
        }
    } while (h->again && !c->closing);
    h->in_io = 0;
    if (c->closing)
        return;
    conn_flush(c);
    if (!nghttp2_session_want_read(h->s) && !nghttp2_session_want_write(h->s) && !pending(c))
        conn_close(c); /* GOAWAY both ways, or a fatal error: the session is over */
    else if (h->draining && !h->nstreams && !pending(c))
        conn_close(c);
}

void h2_mark(conn_t *c)
{
    if (c->dirty || c->closing || !c->h2)
        return;
    c->dirty = 1;
    list_push(&c->w->h2dirty, &c->dirty_link);
}

void h2_flush_dirty(worker_t *w)
{
    while (!list_empty(&w->h2dirty)) {
        conn_t *c = list_entry(w->h2dirty.next, conn_t, dirty_link);
        list_del(&c->dirty_link);
        c->dirty = 0;
        h2_flush(c);
    }
}

void h2_after_send(conn_t *c)
{
    h2_flush(c);
}

/* ---- flood accounting ---- */

static int over_rate(conn_t *c, uint32_t *counter, uint32_t limit)
{
    h2conn_t *h = c->h2;
    uint64_t now = rmr_clock_us();
    if (now - h->window_us >= 1000000) {
        h->window_us = now;
        h->resets = h->control = 0;
    }
    return ++*counter > limit;
}

static int abuse(conn_t *c, rmr_h2err_t why)
{
    RMR_WARN("h2: client %s: %s: GOAWAY", c->client_ip[0] ? c->client_ip : "?",
             rmr_h2err_names[why]);
    RMR_STAT_INC(rmr_wstats[c->w->id].h2_errors[why]);
    nghttp2_session_terminate_session(c->h2->s, NGHTTP2_ENHANCE_YOUR_CALM);
    c->h2->failed = 1;
    return NGHTTP2_ERR_CALLBACK_FAILURE;
}

/* ---- downstream: requests in ---- */

static int on_begin_frame(nghttp2_session *s, const nghttp2_frame_hd *hd, void *ud)
{
    conn_t *c = ud;
    h2conn_t *h = c->h2;
    (void)s;
    if (hd->type == NGHTTP2_CONTINUATION) {
        if (++h->continuations > limits_of(c)->h2_max_continuations)
            return abuse(c, RMR_H2ERR_CONTINUATION_FLOOD);
    } else if (hd->type == NGHTTP2_HEADERS) {
        h->continuations = 0;
    }
    return 0;
}

static int down_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    conn_t *c = ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    worker_t *w = c->w;
    if (w->draining || c->h2->draining) {
        nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_REFUSED_STREAM);
        return 0;
    }
    conn_t *d = conn_new(w, CONN_DOWN, -1);
    if (!d)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    d->virt = 1;
    d->parent = c;
    d->sid = f->hd.stream_id;
    d->lst = c->lst;
    d->proto = P_H2;
    d->timer.cb = on_down_timer;
    d->st = stream_new(d);
    if (!d->st) {
        w->nalloc--;
        free(d);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    list_push(&c->h2->streams, &d->link);
    c->h2->nstreams++;
    d->state = D_HEAD;
    d->st->client11 = 1;
    d->st->start_us = rmr_clock_us();
    nghttp2_session_set_stream_user_data(s, d->sid, d);
    RMR_STAT_INC(rmr_wstats[w->id].h2_streams);
    RMR_STAT_INC(rmr_wstats[w->id].downstream_rq_total);
    return 0;
}

static int down_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                       const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    (void)flags;
    (void)ud;
    conn_t *d = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (!d || f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0; /* trailers of a request are not forwarded */
    stream_t *st = d->st;
    h1_msg_t *m = &st->req;
    if (m->err_status)
        return 0;
    const char *n = (const char *)name, *v = (const char *)value;
    if (nlen && n[0] == ':') {
        if (nlen == 7 && !memcmp(n, ":method", 7)) {
            if (vlen >= sizeof(st->method)) {
                m->err_status = 400;
                m->err_reason = "bad-request";
                return 0;
            }
            memcpy(st->method, v, vlen);
            st->method[vlen] = 0;
        } else if (nlen == 5 && !memcmp(n, ":path", 5)) {
            h1_on_url(m, v, vlen);
        } else if (nlen == 10 && !memcmp(n, ":authority", 10)) {
            h1_msg_add(m, "host", 4, v, vlen);
        }
        return 0;
    }
    if (nlen == 4 && !memcmp(n, "host", 4)) {
        /* :authority wins (RFC 9113 8.3.1); a Host beside it must agree, and is not doubled */
        for (uint32_t i = 0; i < m->nhdrs; i++)
            if (h1_span_eq(m, m->hdrs[i].name, "host"))
                return 0;
    }
    h1_msg_add(m, n, nlen, v, vlen);
    if (m->err_status == 431)
        RMR_STAT_INC(rmr_wstats[d->w->id].h2_errors[RMR_H2ERR_HEADERS_TOO_LARGE]);
    return 0;
}

/* Hands received request DATA back to the client's window once the upstream side has room. */
static void down_ack(conn_t *d)
{
    if (!d->unacked || !d->parent || d->sid <= 0)
        return;
    stream_t *st = d->st;
    size_t backlog = 0;
    if (st && st->u2)
        backlog = st->reqbody ? st->reqbody->len - st->reqbody_off : 0;
    else if (d->peer)
        backlog = pending(d->peer);
    if (backlog > OUT_HIGH)
        return;
    nghttp2_session_consume(d->parent->h2->s, d->sid, d->unacked);
    d->unacked = 0;
    h2_mark(d->parent);
}

static void request_head_done(conn_t *d, int end_stream)
{
    stream_t *st = d->st;
    h1_msg_t *m = &st->req;
    const rmr_limits_t *lim = &st->view->config->limits;
    if (!m->err_status && h1_msg_analyze(m) < 0) {
        /* several Host: nghttp2 lets a Host header through beside :authority */
    }
    if (!m->err_status && (!st->method[0] || !m->url.len) && strcmp(st->method, "CONNECT")) {
        m->err_status = 400;
        m->err_reason = "bad-request";
    }
    if (!m->err_status && !strcmp(st->method, "CONNECT")) {
        m->err_status = 405;
        m->err_reason = "method-not-allowed";
    }
    st->head_req = !strcmp(st->method, "HEAD");
    for (uint32_t i = 0; i < m->nhdrs; i++) /* so that refusals below answer gRPC callers in gRPC */
        if (h1_span_eq(m, m->hdrs[i].name, "content-type") && m->hdrs[i].value.len >= 16 &&
            !strncasecmp(h1_str(m, m->hdrs[i].value), "application/grpc", 16))
            st->grpc = 1;
    if (end_stream) {
        st->req_out = FRAME_NONE;
    } else {
        st->req_out = FRAME_CHUNKED;
        for (uint32_t i = 0; i < m->nhdrs; i++)
            if (m->hdrs[i].kind == H_CONTENT_LENGTH) {
                const char *v = h1_str(m, m->hdrs[i].value);
                uint64_t n = 0;
                for (uint32_t k = 0; k < m->hdrs[i].value.len; k++)
                    n = n * 10 + (uint64_t)(v[k] - '0'); /* nghttp2 checked the digits */
                st->has_cl = 1;
                st->req_cl = n;
                st->req_out = n ? FRAME_CL : FRAME_NONE;
                if (lim->max_body_bytes && n > lim->max_body_bytes) {
                    m->err_status = 413;
                    m->err_reason = "body-too-large";
                }
            }
    }
    if (end_stream) {
        for (uint32_t i = 0; i < m->nhdrs; i++)
            if (m->hdrs[i].kind == H_CONTENT_LENGTH)
                st->has_cl = 1;
    }
    if (m->err_status) {
        if (m->err_status == 400)
            RMR_STAT_INC(rmr_wstats[d->w->id].bad_requests);
        st->req_done = end_stream;
        local_reply(d, m->err_status, m->err_reason, 1);
        return;
    }
    stream_route(d);
    if (d->closing)
        return;
    if (m->err_status == 404) {
        local_reply(d, 404, "no-route", 1);
        return;
    }
    if (end_stream)
        req_end_out(d);
}

static int down_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    conn_t *c = ud;
    h2conn_t *h = c->h2;
    const rmr_limits_t *lim = limits_of(c);
    conn_t *d = f->hd.stream_id ? nghttp2_session_get_stream_user_data(s, f->hd.stream_id) : NULL;
    switch (f->hd.type) {
    case NGHTTP2_HEADERS:
        if (!d)
            return 0;
        if (f->headers.cat == NGHTTP2_HCAT_REQUEST)
            request_head_done(d, (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0);
        else if ((f->hd.flags & NGHTTP2_FLAG_END_STREAM) && !d->st->req_done)
            req_end_out(d); /* trailers end the request; they are not forwarded */
        break;
    case NGHTTP2_DATA:
        if (d && (f->hd.flags & NGHTTP2_FLAG_END_STREAM) && !d->st->req_done)
            req_end_out(d);
        break;
    case NGHTTP2_RST_STREAM:
        if (over_rate(c, &h->resets, lim->h2_max_resets))
            return abuse(c, RMR_H2ERR_RAPID_RESET);
        break;
    case NGHTTP2_SETTINGS:
    case NGHTTP2_PING:
        if (!(f->hd.flags & NGHTTP2_FLAG_ACK) && over_rate(c, &h->control, lim->h2_max_control))
            return abuse(c, RMR_H2ERR_CONTROL_FLOOD);
        break;
    default:
        break;
    }
    return 0;
}

static int down_data_chunk(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data,
                           size_t len, void *ud)
{
    (void)flags;
    (void)ud;
    conn_t *d = nghttp2_session_get_stream_user_data(s, sid);
    if (!d || d->st->req.err_status || d->st->resp_done) {
        nghttp2_session_consume(s, sid, len); /* nobody wants it: give the window back */
        return 0;
    }
    stream_t *st = d->st;
    st->body_in += len;
    uint64_t max = st->view->config->limits.max_body_bytes;
    if (max && st->body_in > max) {
        nghttp2_session_consume(s, sid, len);
        st->req.err_status = 413;
        st->req.err_reason = "body-too-large";
        stream_fail(d, 413, "body-too-large");
        return 0;
    }
    d->unacked += (uint32_t)len;
    req_body_out(d, (const char *)data, len);
    /* a failure on the way may have closed and freed d (its stream data is then cleared) */
    if (nghttp2_session_get_stream_user_data(s, sid) == d) {
        if (d->peer && d->peer->state != U_CONNECTING)
            conn_flush(d->peer);
        down_ack(d);
    }
    return 0;
}

static int down_stream_close(nghttp2_session *s, int32_t sid, uint32_t code, void *ud)
{
    conn_t *c = ud;
    conn_t *d = nghttp2_session_get_stream_user_data(s, sid);
    (void)code;
    if (!d)
        return 0;
    nghttp2_session_set_stream_user_data(s, sid, NULL);
    d->sid = 0; /* the stream is gone: nothing to reset */
    conn_close(d);
    if (c->h2->draining && !c->h2->nstreams)
        c->h2->again = 1;
    return 0;
}

/* The response body of a client stream: what d->out holds. */
static ssize_t down_read(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    (void)ud;
    conn_t *d = src->ptr;
    stream_t *st = d->st;
    size_t avail = d->out ? d->out->len - d->out_off : 0;
    size_t n = avail < length ? avail : length;
    if (n) {
        memcpy(buf, d->out->data + d->out_off, n);
        d->out_off += n;
        if (d->out_off == d->out->len)
            d->out->len = d->out_off = 0;
        else if (d->out_off > (64u << 10)) {
            memmove(d->out->data, d->out->data + d->out_off, d->out->len - d->out_off);
            d->out->len -= d->out_off;
            d->out_off = 0;
        }
        if (pending(d) <= OUT_HIGH / 2) {
            if (d->peer && d->peer->recv_paused)
                recv_resume(d->peer);
            if (st->u2_unacked)
                h2_up_ack(st);
        }
    }
    if (n == avail && st->resp_done) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        st->resp_eof = 1;
        if (st->trailers) {
            nghttp2_nv nv[H2_MAX_NV];
            size_t k = 0;
            const h1_msg_t *m = &st->resp;
            for (uint32_t i = 0; i < m->nhdrs && k < H2_MAX_NV; i++) {
                const h1_hdr_t *hd = &m->hdrs[i];
                nv[k++] =
                    (nghttp2_nv){(uint8_t *)h1_str(m, hd->name), (uint8_t *)h1_str(m, hd->value),
                                 hd->name.len, hd->value.len, NGHTTP2_NV_FLAG_NONE};
            }
            if (nghttp2_submit_trailer(s, sid, nv, k) == 0)
                *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        }
        return (ssize_t)n;
    }
    if (n == 0)
        return NGHTTP2_ERR_DEFERRED;
    return (ssize_t)n;
}

/* Headers that belong to one HTTP/1 connection and never cross into HTTP/2. */
static int h2_forbidden(const h1_msg_t *m, const h1_hdr_t *h)
{
    switch (h->kind) {
    case H_CONNECTION:
    case H_KEEP_ALIVE:
    case H_PROXY_CONNECTION:
    case H_TRANSFER_ENCODING:
    case H_UPGRADE:
    case H_HOST:
        return 1;
    case H_TE:
        return !h1_span_eq(m, h->value, "trailers");
    default:
        return h->dropped;
    }
}

static void lower(const h1_msg_t *m, h1_span_t s)
{
    char *p = (char *)h1_str(m, s);
    for (uint32_t i = 0; i < s.len; i++)
        if (p[i] >= 'A' && p[i] <= 'Z')
            p[i] = (char)(p[i] + 32);
}

void h2_resp_head(conn_t *d, const h1_msg_t *m, int status)
{
    if (d->sid <= 0 || !d->parent)
        return;
    stream_t *st = d->st;
    nghttp2_nv nv[H2_MAX_NV];
    size_t k = 0;
    char sbuf[8], clbuf[24];
    snprintf(sbuf, sizeof(sbuf), "%03d", status);
    nv[k++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)sbuf, 7, 3, NGHTTP2_NV_FLAG_NONE};
    for (uint32_t i = 0; i < m->nhdrs && k < H2_MAX_NV - 2; i++) {
        const h1_hdr_t *h = &m->hdrs[i];
        if (h2_forbidden(m, h) || h->kind == H_CONTENT_LENGTH)
            continue;
        lower(m, h->name);
        nv[k++] = (nghttp2_nv){(uint8_t *)h1_str(m, h->name), (uint8_t *)h1_str(m, h->value),
                               h->name.len, h->value.len, NGHTTP2_NV_FLAG_NONE};
    }
    if (st->resp_has_cl && status != 204 && status != 304) {
        int n = snprintf(clbuf, sizeof(clbuf), "%lu", (unsigned long)st->resp_cl);
        nv[k++] = (nghttp2_nv){(uint8_t *)"content-length", (uint8_t *)clbuf, 14, (size_t)n,
                               NGHTTP2_NV_FLAG_NONE};
    }
    int body = !(st->head_req || st->resp_nobody || status == 204 || status == 304 ||
                 (st->resp_has_cl && st->resp_cl == 0 && !st->trailers));
    nghttp2_data_provider prd = {.source.ptr = d, .read_callback = down_read};
    int rv = nghttp2_submit_response(d->parent->h2->s, d->sid, nv, k, body ? &prd : NULL);
    if (rv < 0)
        RMR_DEBUG("h2: submit_response: %s", nghttp2_strerror(rv));
}

void h2_resp_trailers(conn_t *d, const h1_msg_t *m)
{
    (void)m;
    d->st->trailers = 1; /* sent by the data provider after the body */
}

/* gRPC status codes for remora's own replies. */
static int grpc_status_of(int status)
{
    switch (status) {
    case 400:
        return 13; /* INTERNAL */
    case 404:
        return 12; /* UNIMPLEMENTED */
    case 408:
    case 504:
        return 4; /* DEADLINE_EXCEEDED */
    case 413:
    case 431:
        return 8; /* RESOURCE_EXHAUSTED */
    case 405:
        return 12;
    case 429:
        return 8; /* RESOURCE_EXHAUSTED */
    case 409:
        return 10; /* ABORTED */
    case 422:
        return 9; /* FAILED_PRECONDITION */
    default:
        return 14; /* UNAVAILABLE */
    }
}

void h2_local_reply(conn_t *d, int status, const char *reason)
{
    stream_t *st = d->st;
    if (d->sid <= 0 || !d->parent || !st)
        return;
    const char *text = reason_text(reason);
    char sbuf[8], lbuf[24], gbuf[8];
    nghttp2_nv nv[8];
    size_t k = 0;
    RMR_STAT_INC(rmr_wstats[d->w->id].local_replies[status / 100]);
    st->resp_done = 1;
    st->resp_started = 1;
    st->status = status;
#define NV(n, v, vl)                                                                               \
    nv[k++] = (nghttp2_nv)                                                                         \
    {                                                                                              \
        (uint8_t *)(n), (uint8_t *)(v), strlen(n), (vl), 0                                         \
    }
    if (st->grpc) {
        /* A gRPC caller gets a gRPC error: trailers-only, the HTTP status 200. */
        char msg[160];
        snprintf(gbuf, sizeof(gbuf), "%d", grpc_status_of(status));
        snprintf(msg, sizeof(msg), "%s: %s", reason, text);
        text = msg;
        NV(":status", "200", 3);
        NV("content-type", "application/grpc", 16);
        NV("grpc-status", gbuf, strlen(gbuf));
        NV("grpc-message", text, strlen(text));
        NV("x-remora-error", reason, strlen(reason));
        nghttp2_submit_response(d->parent->h2->s, d->sid, nv, k, NULL);
    } else {
        rmr_buf_t *b = out_of(d);
        if (b) {
            b->len = 0;
            d->out_off = 0;
            rmr_buf_printf(b, "remora: %s\n", text);
        }
        snprintf(sbuf, sizeof(sbuf), "%03d", status);
        int n = snprintf(lbuf, sizeof(lbuf), "%zu", b ? b->len : 0);
        NV(":status", sbuf, 3);
        NV("content-type", "text/plain", 10);
        NV("content-length", lbuf, (size_t)n);
        NV("x-remora-error", reason, strlen(reason));
        char rabuf[16];
        if (st->retry_after_s)
            NV("retry-after", rabuf,
               (size_t)snprintf(rabuf, sizeof(rabuf), "%u", (unsigned)st->retry_after_s));
        nghttp2_data_provider prd = {.source.ptr = d, .read_callback = down_read};
        nghttp2_submit_response(d->parent->h2->s, d->sid, nv, k, st->head_req ? NULL : &prd);
    }
#undef NV
    h2_mark(d->parent);
}

void h2_stream_kick(conn_t *d)
{
    conn_t *c = d->parent;
    if (!c || c->closing)
        return;
    if (d->sid > 0) {
        nghttp2_session_resume_data(c->h2->s, d->sid);
        down_ack(d);
    }
    h2_mark(c);
}

void h2_stream_closing(conn_t *d)
{
    conn_t *c = d->parent;
    list_del(&d->link);
    if (!c || !c->h2)
        return;
    c->h2->nstreams--;
    if (d->sid > 0) {
        nghttp2_session_set_stream_user_data(c->h2->s, d->sid, NULL);
        nghttp2_submit_rst_stream(c->h2->s, NGHTTP2_FLAG_NONE, d->sid,
                                  d->rst_code ? d->rst_code : NGHTTP2_INTERNAL_ERROR);
        d->sid = 0;
        h2_mark(c);
    }
    if (!c->h2->nstreams && !c->closing)
        rmr_timer_set(&c->w->loop, &c->timer, limits_of(c)->idle_timeout_ms);
}

static void on_h2_timer(rmr_loop_t *loop, rmr_timer_t *t)
{
    conn_t *c = (conn_t *)((char *)t - offsetof(conn_t, timer));
    (void)loop;
    if (c->h2 && c->h2->nstreams) {
        rmr_timer_set(&c->w->loop, &c->timer, limits_of(c)->idle_timeout_ms);
        return;
    }
    /* idle: say goodbye properly, then close */
    if (c->h2 && !c->h2->goaway) {
        c->h2->goaway = 1;
        c->h2->draining = 1;
        nghttp2_submit_goaway(c->h2->s, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(c->h2->s), NGHTTP2_NO_ERROR,
                              NULL, 0);
        h2_flush(c);
        if (!c->closing)
            rmr_timer_set(&c->w->loop, &c->timer, 1000);
        return;
    }
    conn_close(c);
}

int h2_down_start(conn_t *d)
{
    const rmr_limits_t *lim = limits_of(d);
    h2conn_t *h = calloc(1, sizeof(*h));
    if (!h || nghttp2_session_server_new2(&h->s, down_cbs, d, down_opt) != 0) {
        free(h);
        conn_close(d);
        return -1;
    }
    h->c = d;
    list_init(&h->streams);
    h->window_us = rmr_clock_us();
    d->h2 = h;
    d->proto = P_H2;
    d->state = D_IDLE;
    d->timer.cb = on_h2_timer;
    rmr_timer_set(&d->w->loop, &d->timer, lim->idle_timeout_ms);
    client_ip_fill(d);
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, lim->h2_max_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, lim->h2_window},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, lim->max_header_bytes},
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
    };
    nghttp2_submit_settings(h->s, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0]));
    nghttp2_session_set_local_window_size(h->s, NGHTTP2_FLAG_NONE, 0, H2_CONN_WINDOW);
    RMR_STAT_INC(rmr_wstats[d->w->id].h2_connections);
    return 0;
}

void h2_drain(conn_t *d)
{
    h2conn_t *h = d->h2;
    if (!h || h->draining)
        return;
    h->draining = 1;
    h->goaway = 1;
    nghttp2_submit_goaway(h->s, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(h->s),
                          NGHTTP2_NO_ERROR, NULL, 0);
    h2_flush(d);
}

void h2_feed(conn_t *c, const char *data, size_t len)
{
    h2conn_t *h = c->h2;
    if (!data) {
        conn_close(c);
        return;
    }
    if (c->kind == CONN_DOWN && !h->nstreams)
        rmr_timer_set(&c->w->loop, &c->timer, limits_of(c)->idle_timeout_ms);
    h->in_io = 1;
    ssize_t rv = nghttp2_session_mem_recv(h->s, (const uint8_t *)data, len);
    h->in_io = 0;
    if (c->closing)
        return;
    if (rv < 0) {
        if (!h->failed) {
            RMR_DEBUG("h2: %s %s: %s", c->kind == CONN_DOWN ? "client" : "upstream",
                      c->kind == CONN_DOWN ? c->client_ip : c->ep->conf->addr.text,
                      nghttp2_strerror((int)rv));
            if (c->kind == CONN_DOWN) {
                rmr_h2err_t why =
                    rv == NGHTTP2_ERR_FLOODED ? RMR_H2ERR_CONTROL_FLOOD : RMR_H2ERR_PROTOCOL;
                RMR_STAT_INC(rmr_wstats[c->w->id].h2_errors[why]);
            }
            h->failed = 1;
            nghttp2_session_terminate_session(h->s, rv == NGHTTP2_ERR_FLOODED
                                                        ? NGHTTP2_ENHANCE_YOUR_CALM
                                                        : NGHTTP2_PROTOCOL_ERROR);
        }
        /* send the GOAWAY, then close */
        recv_pause(c);
        h2_flush(c);
        if (!c->closing) {
            c->close_after = 1;
            if (!pending(c))
                conn_close(c);
            else
                rmr_timer_set(&c->w->loop, &c->timer, 1000);
        }
        return;
    }
    h2_flush(c);
}

/* ---- upstream ---- */

static void up_detach(stream_t *st)
{
    conn_t *u = st->u2;
    if (!u)
        return;
    list_del(&st->u2link);
    if (u->h2) {
        u->h2->nstreams--;
        if (st->u2_open)
            nghttp2_session_set_stream_user_data(u->h2->s, st->u2sid, NULL);
        if (!u->h2->nstreams && !u->closing)
            rmr_timer_set(&u->w->loop, &u->timer, u->ep->cluster->conf->idle_timeout_ms);
    }
    st->u2 = NULL;
    st->u2_open = 0;
}

void h2_up_cancel(stream_t *st)
{
    conn_t *u = st->u2;
    if (!u)
        return;
    int32_t sid = st->u2sid;
    int open = st->u2_open;
    up_detach(st);
    if (open && u->h2 && !u->closing) {
        nghttp2_submit_rst_stream(u->h2->s, NGHTTP2_FLAG_NONE, sid, NGHTTP2_CANCEL);
        h2_mark(u);
    }
}

void h2_up_ack(stream_t *st)
{
    conn_t *u = st->u2;
    if (!u || !st->u2_open || !st->u2_unacked)
        return;
    nghttp2_session_consume(u->h2->s, st->u2sid, st->u2_unacked);
    st->u2_unacked = 0;
    h2_mark(u);
}

void h2_up_body(conn_t *d)
{
    stream_t *st = d->st;
    conn_t *u = st->u2;
    if (!u || !st->u2_open || !u->h2)
        return;
    nghttp2_session_resume_data(u->h2->s, st->u2sid);
    h2_mark(u);
}

static ssize_t up_read(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t length,
                       uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    (void)s;
    (void)sid;
    (void)ud;
    stream_t *st = src->ptr;
    rmr_buf_t *b = st->reqbody;
    size_t avail = b ? b->len - st->reqbody_off : 0;
    size_t n = avail < length ? avail : length;
    if (n) {
        memcpy(buf, b->data + st->reqbody_off, n);
        st->reqbody_off += n;
        if (st->reqbody_off == b->len)
            b->len = st->reqbody_off = 0;
        else if (st->reqbody_off > (64u << 10)) {
            memmove(b->data, b->data + st->reqbody_off, b->len - st->reqbody_off);
            b->len -= st->reqbody_off;
            st->reqbody_off = 0;
        }
        conn_t *d = st->d;
        if (d && avail - n <= OUT_HIGH / 2) {
            if (d->virt)
                down_ack(d);
            else if (d->recv_paused && d->state == D_STREAM)
                recv_resume(d);
        }
    }
    if (n == avail && st->req_done) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        return (ssize_t)n;
    }
    return n ? (ssize_t)n : NGHTTP2_ERR_DEFERRED;
}

static int up_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    (void)ud;
    stream_t *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (st && f->hd.type == NGHTTP2_HEADERS)
        h1_msg_reset(&st->resp);
    return 0;
}

static int up_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    (void)flags;
    (void)ud;
    stream_t *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (!st || f->hd.type != NGHTTP2_HEADERS)
        return 0;
    if (nlen == 7 && !memcmp(name, ":status", 7)) {
        int v = 0;
        for (size_t i = 0; i < vlen; i++)
            v = v * 10 + (value[i] - '0');
        st->status = v; /* resp_head_out sets it again for the final response */
        return 0;
    }
    if (nlen && name[0] == ':')
        return 0;
    if (h1_msg_add(&st->resp, (const char *)name, nlen, (const char *)value, vlen) < 0)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets the stream: a 502 follows */
    return 0;
}

static void up_response_done(stream_t *st)
{
    conn_t *d = st->d;
    up_detach(st);
    resp_end_out(d);
    conn_flush(d);
}

static int up_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    conn_t *u = ud;
    h2conn_t *h = u->h2;
    stream_t *st =
        f->hd.stream_id ? nghttp2_session_get_stream_user_data(s, f->hd.stream_id) : NULL;
    switch (f->hd.type) {
    case NGHTTP2_SETTINGS:
        h->max_streams =
            nghttp2_session_get_remote_settings(s, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
        break;
    case NGHTTP2_GOAWAY:
        /* no new streams here; those above last_stream_id are closed REFUSED by nghttp2 */
        h->goaway = 1;
        if (u->in_list) {
            list_del(&u->link);
            u->in_list = 0;
            u->ep->nh2--;
        }
        break;
    case NGHTTP2_HEADERS: {
        if (!st)
            break;
        conn_t *d = st->d;
        int end = (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
        if (!st->resp_started) {
            int status = st->status;
            if (status >= 100 && status < 200)
                break; /* interim */
            h1_msg_t *m = &st->resp;
            int has_cl = 0;
            uint64_t cl = 0;
            h1_msg_analyze(m);
            for (uint32_t i = 0; i < m->nhdrs; i++)
                if (m->hdrs[i].kind == H_CONTENT_LENGTH) {
                    has_cl = 1;
                    cl = strtoull(h1_str(m, m->hdrs[i].value), NULL, 10);
                }
            if (end && !has_cl && !d->virt) {
                has_cl = 1; /* an HTTP/1 client: no body follows */
                cl = 0;
            }
            rmr_timer_stop(&d->w->loop, &st->try_timer);
            try_report(st, status >= 500 ? RMR_OUT_5XX : RMR_OUT_SUCCESS);
            if (status >= 400 && try_again(d, RMR_ATT_STATUS, status, resp_retry_after_ms(m))) {
                h2_up_cancel(st); /* this response is dropped; another try follows */
                break;
            }
            rmr_timer_set(&d->w->loop, &d->timer, st->timeout_ms);
            st->resp_nobody = end; /* trailers-only (gRPC errors): one HEADERS frame */
            resp_head_out(d, m, status, has_cl, cl, !has_cl);
            if (d->virt)
                st->resp_out = FRAME_NONE;
        } else {
            /* trailers: kept in st->resp until the body is through */
            h1_msg_analyze(&st->resp);
            st->trailers = 1;
        }
        if (end)
            up_response_done(st);
        else
            conn_flush(d);
        break;
    }
    case NGHTTP2_DATA:
        if (st && (f->hd.flags & NGHTTP2_FLAG_END_STREAM))
            up_response_done(st);
        break;
    default:
        break;
    }
    return 0;
}

static int up_data_chunk(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data,
                         size_t len, void *ud)
{
    (void)flags;
    (void)ud;
    stream_t *st = nghttp2_session_get_stream_user_data(s, sid);
    if (!st || !st->resp_started) {
        nghttp2_session_consume(s, sid, len);
        return 0;
    }
    conn_t *d = st->d;
    resp_body_out(d, (const char *)data, len);
    conn_flush(d);
    if (pending(d) <= OUT_HIGH)
        nghttp2_session_consume(s, sid, len);
    else
        st->u2_unacked += (uint32_t)len;
    return 0;
}

static int up_stream_close(nghttp2_session *s, int32_t sid, uint32_t code, void *ud)
{
    (void)ud;
    stream_t *st = nghttp2_session_get_stream_user_data(s, sid);
    if (!st)
        return 0;
    conn_t *d = st->d;
    up_detach(st);
    if (st->resp_done)
        return 0;
    int refused = code == NGHTTP2_REFUSED_STREAM;
    if (!st->resp_started) {
        /* A refused stream was never processed (RFC 9113 8.7): the endpoint is not at fault,
         * and the request is safe to send again whatever its method. */
        if (refused)
            st->try_start_us = 0;
        else
            try_report(st, RMR_OUT_RESET);
        if (try_again(d, refused ? RMR_ATT_REFUSED_STREAM : RMR_ATT_RESET, 0, 0))
            return 0;
        if (refused && !st->retried && (st->req_out == FRAME_NONE || st->replay)) {
            /* without a retry policy that covers it, once anyway, with what was kept */
            st->retried = 1;
            h2_up_dispatch(d);
            return 0;
        }
    }
    RMR_STAT_INC(st->cluster->stats->upstream_errors[RMR_UERR_RESET]);
    if (st->ep)
        RMR_STAT_INC(st->ep->stats->failures);
    if (!st->resp_started) {
        stream_fail(d, 502, "upstream-reset");
        return 0;
    }
    d->rst_code = code ? code : NGHTTP2_INTERNAL_ERROR;
    conn_close(d); /* the client sees the reset: a stream reset, or a closed connection */
    return 0;
}

static conn_t *up_session(worker_t *w, endpoint_t *ep)
{
    list_t *p;
    for (p = ep->h2conns.next; p != &ep->h2conns; p = p->next) {
        conn_t *u = list_entry(p, conn_t, link);
        if (!u->closing && u->h2 && !u->h2->goaway && u->h2->nstreams < u->h2->max_streams)
            return u;
    }
    int err = 0;
    conn_t *u = up_connect(w, ep, &err);
    if (!u)
        return NULL;
    h2conn_t *h = calloc(1, sizeof(*h));
    if (!h || nghttp2_session_client_new2(&h->s, up_cbs, u, up_opt) != 0) {
        free(h);
        conn_close(u);
        return NULL;
    }
    h->c = u;
    h->max_streams = H2_UP_DEFAULT_STREAMS;
    list_init(&h->streams);
    u->h2 = h;
    u->proto = P_H2;
    const rmr_limits_t *lim = &w->view->config->limits;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, lim->h2_window},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, 1u << 20},
    };
    nghttp2_submit_settings(h->s, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0]));
    nghttp2_session_set_local_window_size(h->s, NGHTTP2_FLAG_NONE, 0, H2_CONN_WINDOW);
    list_push(&ep->h2conns, &u->link);
    u->in_list = 1;
    ep->nh2++;
    return u;
}

int h2_up_dispatch(conn_t *d)
{
    stream_t *st = d->st;
    worker_t *w = d->w;
    conn_t *u = up_session(w, st->ep);
    if (!u) {
        RMR_STAT_INC(st->cluster->stats->upstream_errors[RMR_UERR_CONNECT_FAILURE]);
        try_report(st, RMR_OUT_CONNECT_FAILURE);
        if (!try_again(d, RMR_ATT_CONNECT_FAILURE, 0, 0))
            stream_fail(d, 502, "connect-failure");
        return -1;
    }
    if ((st->up_sent || st->body_held) && st->keep_body) {
        /* another try: the body so far goes again, from the copy kept for replay */
        if (st->reqbody)
            st->reqbody->len = st->reqbody_off = 0;
        if (st->replay && st->replay->len) {
            if (!st->reqbody)
                st->reqbody = wbuf_get(w);
            if (st->reqbody)
                rmr_buf_append(st->reqbody, st->replay->data, st->replay->len);
            if (!st->reqbody || st->reqbody->oom) {
                stream_fail(d, 503, "out-of-memory");
                return -1;
            }
        }
    }
    st->up_sent = 1;
    rmr_timer_stop(&w->loop, &u->timer);
    const h1_msg_t *m = &st->req;
    nghttp2_nv nv[H2_MAX_NV];
    size_t k = 0;
    const char *path, *auth;
    size_t plen, alen;
    req_target(m, &auth, &alen, &path, &plen);
    if (!auth) {
        auth = st->cluster->conf->name;
        alen = strlen(auth);
    }
#define NV(n, nl, v, vl) nv[k++] = (nghttp2_nv){(uint8_t *)(n), (uint8_t *)(v), (nl), (vl), 0}
    NV(":method", 7, st->method, strlen(st->method));
    NV(":scheme", 7, u->tls ? "https" : "http", u->tls ? 5 : 4);
    NV(":authority", 10, auth, alen);
    NV(":path", 5, path, plen);
    char xff[512];
    size_t xl = 0;
    for (uint32_t i = 0; i < m->nhdrs && k < H2_MAX_NV - 5; i++) {
        const h1_hdr_t *h = &m->hdrs[i];
        if (h->kind == H_X_FORWARDED_FOR) {
            int n = snprintf(xff + xl, sizeof(xff) - xl, "%.*s, ", (int)h->value.len,
                             h1_str(m, h->value));
            if (n > 0 && (size_t)n < sizeof(xff) - xl)
                xl += (size_t)n;
            continue;
        }
        if (h->kind == H_CONTENT_LENGTH) {
            if (st->has_cl)
                NV("content-length", 14, h1_str(m, h->value), h->value.len);
            continue;
        }
        if (h2_forbidden(m, h))
            continue;
        lower(m, h->name);
        NV(h1_str(m, h->name), h->name.len, h1_str(m, h->value), h->value.len);
    }
    int n = snprintf(xff + xl, sizeof(xff) - xl, "%s", d->client_ip);
    if (n > 0)
        xl += (size_t)n;
    if (xl >= sizeof(xff))
        xl = sizeof(xff) - 1;
    NV("x-forwarded-for", 15, xff, xl);
    if (st->idem_gen[0]) /* generated for with_key; the same on every try */
        NV("idempotency-key", 15, st->idem_gen, strlen(st->idem_gen));
    char dl[24];
    uint64_t left = deadline_header_ms(d);
    if (left) {
        int dn = snprintf(dl, sizeof(dl), "%lu", (unsigned long)left);
        NV("x-remora-deadline-ms", 20, dl, (size_t)dn);
    }
#undef NV
    int body = st->req_out != FRAME_NONE && !(st->req_done && !st->reqbody);
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = up_read};
    if (st->req_out != FRAME_NONE)
        body = 1;
    int32_t sid = nghttp2_submit_request(u->h2->s, NULL, nv, k, body ? &prd : NULL, st);
    if (sid < 0) {
        RMR_WARN("upstream %s: cannot submit a request: %s", st->ep->conf->addr.text,
                 nghttp2_strerror(sid));
        stream_fail(d, 502, "upstream-reset");
        return -1;
    }
    st->u2 = u;
    st->u2sid = sid;
    st->u2_open = 1;
    list_push(&u->h2->streams, &st->u2link);
    u->h2->nstreams++;
    h2_mark(u);
    return 0;
}

void h2_pool_drop(endpoint_t *ep)
{
    while (!list_empty(&ep->h2conns)) {
        conn_t *u = list_entry(ep->h2conns.next, conn_t, link);
        list_del(&u->link);
        u->in_list = 0;
        ep->nh2--;
        if (!u->h2 || !u->h2->nstreams)
            conn_close(u);
        else
            u->h2->goaway = 1; /* its streams finish; no new ones */
    }
}

void h2_pool_move(endpoint_t *from, endpoint_t *to)
{
    const rmr_service_conf_t *a = from->cluster->conf, *b = to->cluster->conf;
    if (a->protocol != b->protocol || a->tls_mode != b->tls_mode)
        return; /* a connection of another kind: it dies with the old view */
    while (!list_empty(&from->h2conns)) {
        conn_t *u = list_entry(from->h2conns.next, conn_t, link);
        list_del(&u->link);
        from->nh2--;
        u->ep = to;
        list_push(&to->h2conns, &u->link);
        to->nh2++;
    }
}

void h2_conn_closing(conn_t *c)
{
    h2conn_t *h = c->h2;
    if (c->dirty) {
        list_del(&c->dirty_link);
        c->dirty = 0;
    }
    if (c->kind == CONN_DOWN) {
        while (!list_empty(&h->streams)) {
            conn_t *d = list_entry(h->streams.next, conn_t, link);
            d->sid = 0;
            conn_close(d);
        }
    } else {
        if (c->in_list) {
            list_del(&c->link);
            c->in_list = 0;
            c->ep->nh2--;
        }
        int never = c->state == U_CONNECTING;
        while (!list_empty(&h->streams)) {
            stream_t *st = list_entry(h->streams.next, stream_t, u2link);
            conn_t *d = st->d;
            up_detach(st);
            if (st->resp_done)
                continue;
            if (st->cluster)
                RMR_STAT_INC(st->cluster->stats->upstream_errors[RMR_UERR_RESET]);
            if (!st->resp_started) {
                const char *why = c->fail_reason;
                int connect = never || (why && (!strcmp(why, "connect-failure") ||
                                                !strcmp(why, "connect-timeout") ||
                                                !strcmp(why, "tls-failure")));
                try_report(st, connect ? RMR_OUT_CONNECT_FAILURE : RMR_OUT_RESET);
                if (try_again(d, connect ? RMR_ATT_CONNECT_FAILURE : RMR_ATT_RESET, 0, 0))
                    continue;
            }
            if (!st->resp_started && c->fail_reason)
                stream_fail(d, c->fail_status, c->fail_reason);
            else if (!st->resp_started)
                stream_fail(d, 502, never ? "connect-failure" : "upstream-reset");
            else
                conn_close(d);
        }
    }
    nghttp2_session_del(h->s);
    free(h);
    c->h2 = NULL;
    if (c->proto == P_H2)
        c->proto = P_H1; /* nothing of HTTP/2 is left on it */
}

/* ---- callbacks ---- */

static int on_error(nghttp2_session *s, int code, const char *msg, size_t len, void *ud)
{
    (void)s;
    (void)code;
    (void)ud;
    RMR_DEBUG("h2: %.*s", (int)len, msg);
    return 0;
}

__attribute__((constructor)) static void h2_init(void)
{
    nghttp2_session_callbacks_new(&down_cbs);
    nghttp2_session_callbacks_set_on_begin_frame_callback(down_cbs, on_begin_frame);
    nghttp2_session_callbacks_set_on_begin_headers_callback(down_cbs, down_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(down_cbs, down_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(down_cbs, down_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(down_cbs, down_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(down_cbs, down_stream_close);
    nghttp2_session_callbacks_set_error_callback2(down_cbs, on_error);

    nghttp2_session_callbacks_new(&up_cbs);
    nghttp2_session_callbacks_set_on_begin_headers_callback(up_cbs, up_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(up_cbs, up_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(up_cbs, up_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(up_cbs, up_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(up_cbs, up_stream_close);
    nghttp2_session_callbacks_set_error_callback2(up_cbs, on_error);

    nghttp2_option_new(&down_opt);
    nghttp2_option_set_no_auto_window_update(down_opt, 1);
    nghttp2_option_set_max_settings(down_opt, 64);
    nghttp2_option_set_max_outbound_ack(down_opt, 1000);
    /* limits.http2.max_continuations decides, in on_begin_frame */
    nghttp2_option_set_max_continuations(down_opt, 1u << 20);
    nghttp2_option_new(&up_opt);
    nghttp2_option_set_no_auto_window_update(up_opt, 1);
}
