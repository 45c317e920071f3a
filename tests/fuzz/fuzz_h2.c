/*
 * libFuzzer target for the downstream HTTP/2 path: a client's bytes through nghttp2 as
 * proxy/h2.c sets it up (h2_down_start: server session, the same options, SETTINGS and
 * connection window), with h2.c's callbacks copied here as closely as the io_uring/worker
 * machinery allows, and proxy/http1_parse.c (h1_msg_add, h1_on_url, h1_msg_analyze) collecting
 * each request head as the proxy does.
 *
 * What stands in for the machinery:
 *   conn_t/stream_t  the fields of proxy/http.h that h2.c uses; a client stream is a "virtual"
 *                    conn_t with its stream_t, from a pool of stream_t like stream_new's
 *                    (memory kept, h1_msg_reset), limits the defaults of control/config.c
 *                    (65536 head bytes, 100 headers, 128 streams, 1 MiB window, 200 resets,
 *                    100 SETTINGS+PING, 16 CONTINUATIONs per second).
 *   the clock        stands still: one input is far less than the one-second rate window.
 *   routing          a :path beginning with "/nope" matches no route (404 local reply, as
 *                    stream_route leaves it); every other request goes to a simulated upstream
 *                    that answers over the next event-loop turns: the head (resp_head_out ->
 *                    h2_resp_head), half the body, the rest (+ trailers), so the data provider
 *                    runs deferred and resumed (h2_stream_kick) as with a real upstream.
 *   the output       each h2_flush takes what nghttp2_session_mem_send frames and drops it
 *                    (the socket takes everything at once).
 *
 * Input: 3 control bytes, then the client's bytes (the client preface is put first unless
 * bit 2 says the input carries its own):
 *   byte 0  bits 0-1  how the bytes are cut into nghttp2_session_mem_recv calls (see cut_len)
 *           bit 2     no preface added
 *           bit 3     slow upstream: request DATA goes back to the window only on the next
 *                     event-loop turn (h2_stream_kick -> down_ack), not in on_data_chunk_recv
 *           bit 4     the upstream response has trailers
 *           bit 5     the upstream response body is 90000 bytes (flow control, several DATA,
 *                     down_read's compaction past 64 KiB) instead of 13
 *           bit 6     the upstream answers only once the request is complete
 *           bit 7     the proxy drains after the first chunk (GOAWAY; nghttp2 then ignores
 *                     new streams itself)
 *   byte 1  bits 0-1  upstream status: 200 with content-length, 200 without, 204, 304
 *           bits 2-3  limits.max_body_bytes: 0 (unlimited), 0, 100, 70000
 *           bit 4     a gRPC-style upstream: grpc-status in the trailers
 *   byte 2  seed of the cut points
 *
 * After each mem_recv: one event-loop turn (the simulated upstream, deferred window updates),
 * then h2_flush. Invariants are checked on every head and after every turn (abort()); every
 * chunk is copied into a heap block of its size, so ASan sees a pointer kept into the input.
 * At the end the connection is closed as h2_conn_closing does and everything is freed.
 *
 * Built with -fsanitize=fuzzer when -Dfuzz=true and the compiler is clang; otherwise
 * fuzz_h2_replay (this file + fuzz_replay.c) runs the same checks over the seed corpus.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>

#include <nghttp2/nghttp2.h>

#include "http1_parse.h"
#include "remora/buf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_h2: invariant failed at line %d: %s\n", __LINE__, #c);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* proxy/h2.c and proxy/http.h */
#define H2_CONN_WINDOW (16u << 20)
#define H2_MAX_NV 256

/* ---- the parts of proxy/http.h, proxy/proxy.h and the config that h2.c uses ---- */

typedef struct list {
    struct list *next, *prev;
} list_t;

static void list_init(list_t *l)
{
    l->next = l->prev = l;
}

static void list_push(list_t *head, list_t *n)
{
    n->prev = head->prev;
    n->next = head;
    head->prev->next = n;
    head->prev = n;
}

static void list_del(list_t *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->next = n->prev = n;
}

static int list_empty(const list_t *l)
{
    return l->next == l;
}

#define list_entry(p, type, member) ((type *)((char *)(p)-offsetof(type, member)))

typedef struct rmr_limits {
    uint32_t max_header_bytes, max_headers;
    uint64_t max_body_bytes;
    uint32_t h2_max_streams, h2_window, h2_max_resets, h2_max_control, h2_max_continuations;
} rmr_limits_t;

typedef enum { FRAME_NONE = 0, FRAME_CL, FRAME_CHUNKED, FRAME_CLOSE } frame_t;

/* the simulated upstream's progress on a stream */
enum { UP_NONE = 0, UP_WAIT, UP_HEAD, UP_BODY, UP_DONE };

typedef struct stream {
    h1_msg_t req, resp;
    frame_t req_out, resp_out;
    uint64_t body_in, req_cl;
    int status;
    uint64_t resp_cl;
    char method[24];
    unsigned req_done : 1, resp_started : 1, resp_done : 1, head_req : 1, has_cl : 1, grpc : 1,
        trailers : 1, resp_eof : 1, resp_has_cl : 1, resp_nobody : 1;
    int up; /* UP_*: the simulated upstream */
} stream_t;

typedef struct h2conn h2conn_t;
typedef struct worker worker_t;
typedef struct conn conn_t;

typedef struct conn {
    worker_t *w;
    unsigned closing : 1, virt : 1;
    rmr_buf_t *out;
    list_t link; /* virt: in the parent's streams */
    stream_t *st;
    h2conn_t *h2;
    conn_t *parent;
    int32_t sid;
    size_t out_off;
    uint32_t unacked;
    uint32_t rst_code;
    uint64_t fz_rx; /* the harness's own count of the stream's request DATA */
} conn_t;

struct h2conn {
    nghttp2_session *s;
    conn_t *c;
    list_t streams;
    uint32_t nstreams;
    uint64_t window_us;
    uint32_t resets, control, continuations;
    unsigned in_io : 1, again : 1, goaway : 1, draining : 1, failed : 1;
};

struct worker {
    rmr_limits_t limits;
    int draining;
    stream_t *free_streams[128];
    unsigned nfree_streams;
    unsigned nalloc;
    /* the run's knobs (byte 0 and 1) */
    int slow_upstream, up_trailers, up_big, up_after_req, up_status_sel, up_grpc;
    uint64_t sent; /* bytes mem_send framed */
    /* what happened, for FUZZ_H2_TRACE */
    unsigned t_streams, t_refused, t_heads, t_local, t_up, t_closed, t_abuse, t_413;
    int t_recv_err;
    uint64_t digest; /* over what the proxy saw: heads, bodies */
    volatile unsigned sink;
};

static nghttp2_session_callbacks *down_cbs;
static nghttp2_option *down_opt;

static const rmr_limits_t *limits_of(conn_t *c)
{
    return &c->w->limits;
}

static uint64_t rmr_clock_us(void)
{
    return 0; /* see the top: one input runs inside one rate window */
}

static void mix(worker_t *w, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        w->digest ^= b[i];
        w->digest *= 1099511628211ull;
    }
}

/* Every byte of a span, so ASan reports a span that leaves the arena's allocation. */
static void walk_span(worker_t *w, const h1_msg_t *m, h1_span_t s)
{
    CHECK((uint64_t)s.off + s.len <= m->arena.len);
    if (!s.len)
        return;
    CHECK(m->arena.data != NULL);
    mix(w, m->arena.data + s.off, s.len);
}

static void check_msg(worker_t *w, const h1_msg_t *m)
{
    CHECK(m->arena.len <= m->max_bytes);
    CHECK(m->arena.len <= m->arena.cap);
    CHECK(m->nhdrs <= m->max_hdrs);
    CHECK(m->nhdrs <= m->caphdrs);
    CHECK(m->nhdrs == 0 || m->hdrs != NULL);
    walk_span(w, m, m->url);
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        walk_span(w, m, m->hdrs[i].name);
        walk_span(w, m, m->hdrs[i].value);
    }
}

/* ---- http1.c: buffers, conns and streams (what h2.c calls of it) ---- */

static rmr_buf_t *out_of(conn_t *c)
{
    if (!c->out)
        c->out = calloc(1, sizeof(*c->out)); /* wbuf_get */
    return c->out;
}

static int out_append(conn_t *c, const void *p, size_t n)
{
    rmr_buf_t *b = out_of(c);
    if (!b)
        return -1;
    rmr_buf_append(b, p, n);
    return b->oom ? -1 : 0;
}

static stream_t *stream_new(conn_t *d)
{
    worker_t *w = d->w;
    const rmr_limits_t *lim = &w->limits;
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
        h1_msg_init(&st->resp, 1024 * 1024, 1000);
        if (rmr_buf_reserve(&st->req.arena, 512) < 0 || rmr_buf_reserve(&st->resp.arena, 512) < 0) {
            h1_msg_free(&st->req);
            h1_msg_free(&st->resp);
            free(st);
            return NULL;
        }
    }
    return st;
}

static void stream_free(conn_t *d)
{
    stream_t *st = d->st;
    if (!st)
        return;
    d->st = NULL;
    worker_t *w = d->w;
    if (w->nfree_streams < sizeof(w->free_streams) / sizeof(w->free_streams[0]) &&
        st->req.arena.cap <= 16384 && st->resp.arena.cap <= 16384) {
        w->free_streams[w->nfree_streams++] = st;
        return;
    }
    h1_msg_free(&st->req);
    h1_msg_free(&st->resp);
    free(st);
}

static void h2_stream_closing(conn_t *d);

/* conn_close + conn_free of a virtual conn */
static void conn_close(conn_t *d)
{
    if (d->closing)
        return;
    d->closing = 1;
    CHECK(d->virt);
    h2_stream_closing(d);
    if (d->out) {
        rmr_buf_free(d->out);
        free(d->out);
    }
    stream_free(d);
    d->w->nalloc--;
    free(d);
}

static void h2_mark(conn_t *c)
{
    (void)c; /* the event loop flushes after every turn */
}

static void h2_stream_kick(conn_t *d);

static void conn_flush(conn_t *c)
{
    if (c->virt)
        h2_stream_kick(c);
}

static const char *reason_text(const char *reason)
{
    static const struct {
        const char *reason, *text;
    } texts[] = {
        {"bad-request", "the request is malformed"},
        {"no-route", "no route matches this request"},
        {"body-too-large", "the request body is larger than allowed"},
        {"headers-too-large", "the request head is larger than allowed"},
        {"method-not-allowed", "this method is not proxied"},
        {"out-of-memory", "the proxy is out of memory"},
    };
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
        if (!strcmp(texts[i].reason, reason))
            return texts[i].text;
    return reason;
}

static void h2_local_reply(conn_t *d, int status, const char *reason);

static void local_reply(conn_t *d, int status, const char *reason, int keep)
{
    (void)keep;
    CHECK(d->virt);
    h2_local_reply(d, status, reason);
}

static void stream_fail(conn_t *d, int status, const char *reason)
{
    stream_t *st = d->st;
    if (!st || st->resp_started || st->resp_done) {
        conn_close(d);
        return;
    }
    st->resp_done = 1;
    local_reply(d, status, reason, st->req_done);
}

/* stream_route: gRPC detection as there; "/nope..." matches no route; others go upstream */
static void stream_route(conn_t *d)
{
    stream_t *st = d->st;
    h1_msg_t *m = &st->req;
    for (uint32_t i = 0; i < m->nhdrs; i++)
        if (h1_span_eq(m, m->hdrs[i].name, "content-type") && m->hdrs[i].value.len >= 16 &&
            !strncasecmp(h1_str(m, m->hdrs[i].value), "application/grpc", 16)) {
            st->grpc = 1;
            break;
        }
    if (m->url.len >= 5 && !memcmp(h1_str(m, m->url), "/nope", 5)) {
        m->err_status = 404;
        m->err_reason = "no-route";
        return;
    }
    st->up = UP_WAIT;
}

static void req_body_out(conn_t *d, const char *at, size_t len)
{
    mix(d->w, at, len); /* to the upstream */
}

static void req_end_out(conn_t *d)
{
    stream_t *st = d->st;
    st->req_done = 1;
}

static void h2_resp_head(conn_t *d, const h1_msg_t *m, int status);

static void resp_head_out(conn_t *d, const h1_msg_t *m, int status, int has_cl, uint64_t cl,
                          int chunked_or_unknown)
{
    stream_t *st = d->st;
    int interim = status >= 100 && status < 200 && status != 101;
    if (!interim) {
        st->resp_started = 1;
        st->status = status;
        st->resp_has_cl = has_cl && !chunked_or_unknown;
        st->resp_cl = cl;
    }
    if (!interim)
        h2_resp_head(d, m, status);
}

static void resp_body_out(conn_t *d, const char *at, size_t len)
{
    out_append(d, at, len);
}

static void resp_end_out(conn_t *d)
{
    d->st->resp_done = 1;
}

/* ---- proxy/h2.c: output ---- */

static void h2_flush(conn_t *c)
{
    h2conn_t *h = c->h2;
    if (!h || c->closing)
        return;
    if (h->in_io) {
        h->again = 1;
        return;
    }
    h->in_io = 1;
    do {
        h->again = 0;
        for (;;) {
            const uint8_t *data;
            ssize_t n = nghttp2_session_mem_send(h->s, &data);
            if (n < 0) {
                h->in_io = 0;
                c->closing = 1; /* conn_close: the session is torn down at the end */
                return;
            }
            if (n == 0)
                break;
            c->w->sent += (uint64_t)n;
            c->w->sink += data[0] + data[n - 1]; /* the bytes are readable */
        }
    } while (h->again && !c->closing);
    h->in_io = 0;
    if (c->closing)
        return;
    if (!nghttp2_session_want_read(h->s) && !nghttp2_session_want_write(h->s))
        c->closing = 1; /* GOAWAY both ways, or a fatal error: the session is over */
    else if (h->draining && !h->nstreams)
        c->closing = 1;
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

static int abuse(conn_t *c)
{
    c->w->t_abuse++;
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
            return abuse(c);
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
        w->t_refused++;
        return 0;
    }
    w->t_streams++;
    /* a stream the session has open has no conn yet */
    CHECK(nghttp2_session_get_stream_user_data(s, f->hd.stream_id) == NULL);
    conn_t *d = calloc(1, sizeof(*d)); /* conn_new */
    if (!d)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    w->nalloc++;
    d->w = w;
    d->virt = 1;
    d->parent = c;
    d->sid = f->hd.stream_id;
    d->st = stream_new(d);
    if (!d->st) {
        w->nalloc--;
        free(d);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    list_push(&c->h2->streams, &d->link);
    c->h2->nstreams++;
    nghttp2_session_set_stream_user_data(s, d->sid, d);
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
    CHECK(!d->closing && d->sid == f->hd.stream_id);
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
        CHECK(m->arena.len <= m->max_bytes && m->nhdrs <= m->max_hdrs);
        return 0;
    }
    if (nlen == 4 && !memcmp(n, "host", 4)) {
        /* :authority wins (RFC 9113 8.3.1); a Host beside it must agree, and is not doubled */
        for (uint32_t i = 0; i < m->nhdrs; i++)
            if (h1_span_eq(m, m->hdrs[i].name, "host"))
                return 0;
    }
    h1_msg_add(m, n, nlen, v, vlen);
    /* h1_msg_add's refusal contract */
    CHECK(m->err_status == 0 || m->err_status == 400 || m->err_status == 431 ||
          m->err_status == 503);
    CHECK(m->arena.len <= m->max_bytes && m->nhdrs <= m->max_hdrs);
    return 0;
}

/* Hands received request DATA back to the client's window once the upstream side has room. */
static void down_ack(conn_t *d)
{
    if (!d->unacked || !d->parent || d->sid <= 0)
        return;
    /* backlog: request bytes the upstream has not taken; the simulated upstream takes them on
     * the next event-loop turn when slow, at once otherwise */
    nghttp2_session_consume(d->parent->h2->s, d->sid, d->unacked);
    d->unacked = 0;
    h2_mark(d->parent);
}

/* RFC 9110 5.6.2 token characters */
static int is_tchar(unsigned char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* The invariants of a request head once request_head_done has classified it. */
static void check_head(conn_t *d)
{
    worker_t *w = d->w;
    stream_t *st = d->st;
    h1_msg_t *m = &st->req;
    check_msg(w, m);
    CHECK(strlen(st->method) < sizeof(st->method));
    /* What reaches an HTTP/1 upstream as "METHOD path HTTP/1.1" and "name: value" lines cannot
     * break out of them: nghttp2 checked the method, path, names and values. */
    for (const char *p = st->method; *p; p++)
        CHECK(is_tchar((unsigned char)*p));
    for (uint32_t k = 0; k < m->url.len; k++) {
        unsigned char ch = (unsigned char)h1_str(m, m->url)[k];
        CHECK(ch > 0x20 && ch != 0x7f);
    }
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        const h1_hdr_t *h = &m->hdrs[i];
        for (uint32_t k = 0; k < h->name.len; k++) {
            unsigned char ch = (unsigned char)h1_str(m, h->name)[k];
            CHECK(is_tchar(ch) && !(ch >= 'A' && ch <= 'Z'));
        }
        int host = h1_span_eq(m, h->name, "host");
        for (uint32_t k = 0; k < h->value.len; k++) {
            unsigned char ch = (unsigned char)h1_str(m, h->value)[k];
            CHECK(ch != 0 && ch != '\r' && ch != '\n');
            if (host) /* :authority or Host: where the request is routed */
                CHECK(ch > 0x20 && ch != 0x7f && ch != '/' && ch != '?' && ch != '#');
        }
    }
    if (m->err_status)
        return;
    /* a request that goes on has a method and a path, and one Host at most */
    CHECK(st->method[0] && m->url.len);
    int hosts = 0, cls = 0;
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        const h1_hdr_t *h = &m->hdrs[i];
        CHECK(h->name.len > 0);
        if (h1_span_eq(m, h->name, "host")) {
            hosts++;
            CHECK(m->host == (int)i);
        }
        if (h->kind == H_CONTENT_LENGTH) {
            cls++;
            /* the digits request_head_done reads without looking: nghttp2 checked them */
            const char *v = h1_str(m, h->value);
            CHECK(h->value.len > 0);
            for (uint32_t k = 0; k < h->value.len; k++)
                CHECK(v[k] >= '0' && v[k] <= '9');
            CHECK(st->has_cl);
        }
        mix(w, &h->kind, 1);
    }
    CHECK(hosts <= 1);
    CHECK(cls <= 1);
    CHECK(strcmp(st->method, "CONNECT"));
}

static void request_head_done(conn_t *d, int end_stream)
{
    stream_t *st = d->st;
    h1_msg_t *m = &st->req;
    const rmr_limits_t *lim = limits_of(d);
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
    check_head(d);
    d->w->t_heads++;
    if (m->err_status) {
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
        if (d && (f->hd.flags & NGHTTP2_FLAG_END_STREAM) && !d->st->req_done) {
            /* nghttp2 checked the length against content-length */
            CHECK(!d->st->has_cl || d->fz_rx == d->st->req_cl);
            req_end_out(d);
        }
        break;
    case NGHTTP2_RST_STREAM:
        if (over_rate(c, &h->resets, lim->h2_max_resets))
            return abuse(c);
        break;
    case NGHTTP2_SETTINGS:
    case NGHTTP2_PING:
        if (!(f->hd.flags & NGHTTP2_FLAG_ACK) && over_rate(c, &h->control, lim->h2_max_control))
            return abuse(c);
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
    if (d) {
        /* nghttp2 refuses DATA past the content-length before it is delivered */
        d->fz_rx += len;
        CHECK(!d->st->has_cl || d->fz_rx <= d->st->req_cl);
    }
    if (!d || d->st->req.err_status || d->st->resp_done) {
        nghttp2_session_consume(s, sid, len); /* nobody wants it: give the window back */
        return 0;
    }
    stream_t *st = d->st;
    st->body_in += len;
    uint64_t max = limits_of(d)->max_body_bytes;
    if (max && st->body_in > max) {
        nghttp2_session_consume(s, sid, len);
        st->req.err_status = 413;
        st->req.err_reason = "body-too-large";
        stream_fail(d, 413, "body-too-large");
        return 0;
    }
    d->unacked += (uint32_t)len;
    req_body_out(d, (const char *)data, len);
    if (!d->closing) {
        if (!d->w->slow_upstream)
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
    CHECK(d->sid == sid && d->parent == c);
    nghttp2_session_set_stream_user_data(s, sid, NULL);
    d->sid = 0; /* the stream is gone: nothing to reset */
    c->w->t_closed++;
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
    CHECK(d && !d->closing && d->sid == sid);
    CHECK(nghttp2_session_get_stream_user_data(s, sid) == d);
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
        /* (pending(d) <= OUT_HIGH / 2: recv_resume of the upstream, h2_up_ack) */
    }
    CHECK(!d->out || d->out_off <= d->out->len);
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

static void h2_resp_head(conn_t *d, const h1_msg_t *m, int status)
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
    nghttp2_submit_response(d->parent->h2->s, d->sid, nv, k, body ? &prd : NULL);
}

/* gRPC status codes for remora's own replies. */
static int grpc_status_of(int status)
{
    switch (status) {
    case 400:
        return 13;
    case 404:
        return 12;
    case 408:
    case 504:
        return 4;
    case 413:
    case 431:
        return 8;
    case 405:
        return 12;
    default:
        return 14;
    }
}

static void h2_local_reply(conn_t *d, int status, const char *reason)
{
    stream_t *st = d->st;
    if (d->sid <= 0 || !d->parent || !st)
        return;
    const char *text = reason_text(reason);
    char sbuf[8], lbuf[24], gbuf[8];
    nghttp2_nv nv[8];
    size_t k = 0;
    st->resp_done = 1;
    st->resp_started = 1;
    st->status = status;
    d->w->t_local++;
    d->w->t_413 += status == 413;
#ifdef FUZZ_H2_TRACE
    fprintf(stderr, "  stream %d: local reply %d %s%s\n", d->sid, status, reason,
            st->grpc ? " (gRPC)" : "");
#endif
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
        nghttp2_data_provider prd = {.source.ptr = d, .read_callback = down_read};
        nghttp2_submit_response(d->parent->h2->s, d->sid, nv, k, st->head_req ? NULL : &prd);
    }
#undef NV
    h2_mark(d->parent);
}

static void h2_stream_kick(conn_t *d)
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

static void h2_stream_closing(conn_t *d)
{
    conn_t *c = d->parent;
    list_del(&d->link);
    if (!c || !c->h2)
        return;
    CHECK(c->h2->nstreams > 0);
    c->h2->nstreams--;
    if (d->sid > 0) {
        nghttp2_session_set_stream_user_data(c->h2->s, d->sid, NULL);
        nghttp2_submit_rst_stream(c->h2->s, NGHTTP2_FLAG_NONE, d->sid,
                                  d->rst_code ? d->rst_code : NGHTTP2_INTERNAL_ERROR);
        d->sid = 0;
        h2_mark(c);
    }
}

static int h2_down_start(conn_t *d)
{
    const rmr_limits_t *lim = limits_of(d);
    h2conn_t *h = calloc(1, sizeof(*h));
    if (!h || nghttp2_session_server_new2(&h->s, down_cbs, d, down_opt) != 0) {
        free(h);
        return -1;
    }
    h->c = d;
    list_init(&h->streams);
    h->window_us = rmr_clock_us();
    d->h2 = h;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, lim->h2_max_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, lim->h2_window},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, lim->max_header_bytes},
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
    };
    nghttp2_submit_settings(h->s, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0]));
    nghttp2_session_set_local_window_size(h->s, NGHTTP2_FLAG_NONE, 0, H2_CONN_WINDOW);
    return 0;
}

static void h2_drain(conn_t *d)
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

/* h2_feed: 0 when the connection goes on */
static int h2_feed(conn_t *c, const char *data, size_t len)
{
    h2conn_t *h = c->h2;
    h->in_io = 1;
    ssize_t rv = nghttp2_session_mem_recv(h->s, (const uint8_t *)data, len);
    h->in_io = 0;
    if (c->closing)
        return -1;
    if (rv < 0) {
        c->w->t_recv_err = (int)rv;
        if (!h->failed) {
            h->failed = 1;
            nghttp2_session_terminate_session(h->s, rv == NGHTTP2_ERR_FLOODED
                                                        ? NGHTTP2_ENHANCE_YOUR_CALM
                                                        : NGHTTP2_PROTOCOL_ERROR);
        }
        /* send the GOAWAY, then close */
        h2_flush(c);
        c->closing = 1;
        return -1;
    }
    CHECK((size_t)rv == len); /* mem_recv takes all it is given */
    h2_flush(c);
    return c->closing ? -1 : 0;
}

/* h2_conn_closing of a client connection */
static void h2_conn_closing(conn_t *c)
{
    h2conn_t *h = c->h2;
    while (!list_empty(&h->streams)) {
        conn_t *d = list_entry(h->streams.next, conn_t, link);
        d->sid = 0;
        conn_close(d);
    }
    CHECK(h->nstreams == 0);
    nghttp2_session_del(h->s);
    free(h);
    c->h2 = NULL;
}

static int on_error(nghttp2_session *s, int code, const char *msg, size_t len, void *ud)
{
    (void)s;
    (void)code;
    (void)ud;
    (void)msg;
    (void)len; /* RMR_DEBUG */
    return 0;
}

/* ---- the simulated upstream and the event loop ---- */

#define BODY_SMALL 13 /* bytes of a small upstream body */

static void up_body(conn_t *d, size_t from, size_t to)
{
    char blk[1024];
    for (size_t off = from; off < to;) {
        size_t n = to - off < sizeof(blk) ? to - off : sizeof(blk);
        for (size_t i = 0; i < n; i++)
            blk[i] = (char)('a' + (off + i) % 26);
        resp_body_out(d, blk, n);
        off += n;
    }
}

/* One step of the upstream's answer to stream d (as up_frame_recv/up_data_chunk would). */
static void upstream_step(conn_t *d)
{
    worker_t *w = d->w;
    stream_t *st = d->st;
    if (st->up == UP_NONE || st->up == UP_DONE)
        return;
    if (st->req.err_status || st->resp_done) {
        st->up = UP_DONE; /* answered locally meanwhile */
        return;
    }
    static const int statuses[4] = {200, 200, 204, 304};
    int status = statuses[w->up_status_sel];
    int nobody = status == 204 || status == 304;
    size_t blen = nobody ? 0 : w->up_big ? 90000 : BODY_SMALL;
    switch (st->up) {
    case UP_WAIT: {
        if (w->up_after_req && !st->req_done)
            return;
        h1_msg_t *m = &st->resp;
        h1_msg_reset(m); /* up_begin_headers */
        h1_msg_add(m, "Content-Type", 12, w->up_grpc ? "application/grpc" : "text/plain",
                   w->up_grpc ? 16 : 10);
        h1_msg_add(m, "Connection", 10, "keep-alive, X-Hop", 17);
        h1_msg_add(m, "X-Hop", 5, "dropped", 7);
        h1_msg_add(m, "TE", 2, "trailers", 8);
        h1_msg_add(m, "X-Served-By", 11, "fuzz", 4);
        char cl[24];
        int n = snprintf(cl, sizeof(cl), "%zu", blen);
        int has_cl = w->up_status_sel != 1 && !w->up_grpc;
        if (has_cl)
            h1_msg_add(m, "Content-Length", 14, cl, (size_t)n);
        CHECK(m->err_status == 0);
        h1_msg_analyze(m);
        resp_head_out(d, m, status, has_cl, blen, 0);
        st->resp_out = FRAME_NONE;
        st->up = UP_HEAD;
        w->t_up++;
        conn_flush(d);
        break;
    }
    case UP_HEAD:
        up_body(d, 0, blen / 2);
        st->up = UP_BODY;
        conn_flush(d);
        break;
    case UP_BODY:
        up_body(d, blen / 2, blen);
        if (w->up_trailers || w->up_grpc) {
            h1_msg_t *m = &st->resp;
            h1_msg_reset(m);
            h1_msg_add(m, "grpc-status", 11, "0", 1);
            h1_msg_add(m, "X-Trailer", 9, "t", 1);
            h1_msg_analyze(m);
            st->trailers = 1;
        }
        resp_end_out(d);
        st->up = UP_DONE;
        conn_flush(d);
        break;
    }
}

/* What stays true between event-loop turns. */
static void check_conn(conn_t *c)
{
    h2conn_t *h = c->h2;
    uint32_t n = 0;
    for (list_t *p = h->streams.next; p != &h->streams; p = p->next) {
        conn_t *d = list_entry(p, conn_t, link);
        CHECK(!d->closing && d->parent == c);
        /* a stream the proxy holds is one the session still knows: closed streams freed */
        CHECK(d->sid > 0);
        CHECK(nghttp2_session_get_stream_user_data(h->s, d->sid) == d);
        CHECK(!d->out || d->out_off <= d->out->len);
        n++;
    }
    CHECK(n == h->nstreams);
    CHECK(c->w->nalloc == n);
}

static void loop_turn(conn_t *c)
{
    h2conn_t *h = c->h2;
    /* streams do not go away here: nothing below calls into nghttp2's receive or send */
    for (list_t *p = h->streams.next; p != &h->streams; p = p->next) {
        conn_t *d = list_entry(p, conn_t, link);
        upstream_step(d);
        if (c->w->slow_upstream)
            down_ack(d); /* the upstream took the request bytes */
    }
    h2_flush(c);
    if (!c->closing)
        check_conn(c);
}

/* Length of the next mem_recv at offset off of the n bytes. */
static size_t cut_len(unsigned mode, unsigned seed, size_t n, size_t off, unsigned idx,
                      uint32_t *rng)
{
    size_t left = n - off, k;
    switch (mode) {
    case 0: /* all at once */
        return left;
    case 1: /* four pieces, cut where the seed says */
        if (idx >= 3)
            return left;
        k = (size_t)((uint64_t)n * ((seed * (idx + 1) * 73u) & 255u) / 256u);
        k = k > off ? k - off : 1;
        break;
    case 2: /* pseudo-random 1..64 */
        *rng = *rng * 1103515245u + 12345u;
        k = 1 + (*rng >> 16) % 64;
        break;
    default: /* 1..8 bytes */
        k = 1 + (seed + idx) % 8;
        break;
    }
    return k < left ? k : left;
}

static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    unsigned b0 = data[0], b1 = data[1], seed = data[2];
    static const uint64_t body_lim[4] = {0, 0, 100, 70000};
    worker_t w;
    memset(&w, 0, sizeof(w));
    w.limits = (rmr_limits_t){.max_header_bytes = 65536,
                              .max_headers = 100,
                              .max_body_bytes = body_lim[(b1 >> 2) & 3],
                              .h2_max_streams = 128,
                              .h2_window = 1u << 20,
                              .h2_max_resets = 200,
                              .h2_max_control = 100,
                              .h2_max_continuations = 16};
    w.slow_upstream = (b0 >> 3) & 1;
    w.up_trailers = (b0 >> 4) & 1;
    w.up_big = (b0 >> 5) & 1;
    w.up_after_req = (b0 >> 6) & 1;
    w.up_status_sel = b1 & 3;
    w.up_grpc = (b1 >> 4) & 1;
    w.digest = 14695981039346656037ull;

    /* the client's bytes */
    size_t plen = (b0 & 4) ? 0 : sizeof(preface) - 1;
    size_t n = plen + size - 3;
    uint8_t *in = malloc(n ? n : 1);
    if (!in)
        return 0;
    memcpy(in, preface, plen);
    memcpy(in + plen, data + 3, size - 3);

    conn_t c;
    memset(&c, 0, sizeof(c));
    c.w = &w;
    if (h2_down_start(&c) < 0) {
        free(in);
        return 0;
    }
    h2_flush(&c); /* the server's SETTINGS go out first */

    uint32_t rng = (uint32_t)size * 2654435761u ^ seed;
    size_t off = 0;
    unsigned idx = 0;
    while (off < n && !c.closing) {
        size_t k = cut_len(b0 & 3, seed, n, off, idx++, &rng);
        char *chunk = malloc(k);
        if (!chunk)
            break;
        memcpy(chunk, in + off, k);
        int rc = h2_feed(&c, chunk, k);
        free(chunk);
        off += k;
        if (rc < 0)
            break;
        if (!c.closing)
            check_conn(&c);
        if (idx == 1 && (b0 & 0x80) && !c.closing) {
            w.draining = 1; /* worker_wake: h1_drain drains each connection */
            h2_drain(&c);
        }
        if (!c.closing)
            loop_turn(&c);
    }
    /* the client is quiet now: the upstream finishes what it has */
    for (int i = 0; i < 4 && !c.closing; i++)
        loop_turn(&c);

#ifdef FUZZ_H2_TRACE /* cc -DFUZZ_H2_TRACE ...: what each seed does */
    fprintf(stderr,
            "  fed %zu/%zu in %u: streams %u (refused %u), heads %u, local %u (413: %u), "
            "upstream %u, closed %u, left %u; abuse %u, recv %s; sent %llu%s\n",
            off, n, idx, w.t_streams, w.t_refused, w.t_heads, w.t_local, w.t_413, w.t_up,
            w.t_closed, c.h2->nstreams, w.t_abuse,
            w.t_recv_err ? nghttp2_strerror(w.t_recv_err) : "ok", (unsigned long long)w.sent,
            c.closing ? ", closed" : "");
#endif
    h2_conn_closing(&c);
    CHECK(w.nalloc == 0);
    while (w.nfree_streams) {
        stream_t *st = w.free_streams[--w.nfree_streams];
        h1_msg_free(&st->req);
        h1_msg_free(&st->resp);
        free(st);
    }
    free(in);
    w.sink += (unsigned)w.digest + (unsigned)w.sent;
    return 0;
}

/* h2_init */
__attribute__((constructor)) static void fuzz_h2_init(void)
{
    nghttp2_session_callbacks_new(&down_cbs);
    nghttp2_session_callbacks_set_on_begin_frame_callback(down_cbs, on_begin_frame);
    nghttp2_session_callbacks_set_on_begin_headers_callback(down_cbs, down_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(down_cbs, down_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(down_cbs, down_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(down_cbs, down_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(down_cbs, down_stream_close);
    nghttp2_session_callbacks_set_error_callback2(down_cbs, on_error);

    nghttp2_option_new(&down_opt);
    nghttp2_option_set_no_auto_window_update(down_opt, 1);
    nghttp2_option_set_max_settings(down_opt, 64);
    nghttp2_option_set_max_outbound_ack(down_opt, 1000);
    /* limits.http2.max_continuations decides, in on_begin_frame */
    nghttp2_option_set_max_continuations(down_opt, 1u << 20);
}

__attribute__((destructor)) static void fuzz_h2_fini(void)
{
    nghttp2_session_callbacks_del(down_cbs);
    nghttp2_option_del(down_opt);
}
