/* remora-control's gRPC service remora.v1.Control (proto/remora/v1/control.proto) on one
 * HTTP/2 connection: nghttp2 in server mode over a blocking socket, unary calls only.
 *
 * gRPC over HTTP/2 as this file speaks it: a request is POST :path /remora.v1.Control/<Method>
 * with content-type application/grpc[+proto|;...]; its body is one message behind a 5-byte
 * prefix (compressed flag, big-endian length). A reply is :status 200, content-type
 * application/grpc, one prefixed message, then trailers grpc-status: 0. A failed call is a
 * trailers-only reply: one HEADERS frame with :status 200, grpc-status and grpc-message
 * (percent-encoded), ending the stream. A request that is not gRPC at all gets an HTTP status
 * (405 for a method other than POST, 415 for another content-type). */

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>

#include "rc_http.h"
#include "rc_store.h"
#include "remora/v1/control.pb-c.h"

/* A request message is a handful of filters: 32 KiB leaves room for any service name the store
 * can hold (RC_STR_MAX) and bounds what a connection's streams can make us buffer. */
#define MAX_REQUEST (32u << 10)
/* gRPC clients refuse replies past their receive limit (4 MiB by default, remoractl 64 MiB);
 * a larger trace is refused here rather than packed for nobody. */
#define MAX_REPLY (64u << 20)
/* Replies packed but not yet taken by a client that does not read: past this, further calls on
 * the connection get RESOURCE_EXHAUSTED instead of more memory. */
#define MAX_PENDING (64u << 20)
#define MAX_STREAMS 32
/* Nothing received for this long: the client has gone, or keeps a channel it does not use
 * (it reconnects on its next call). Longer than RC_IO_TIMEOUT_S: gRPC channels are reused. */
#define IDLE_TIMEOUT_MS (120 * 1000)

enum grpc_code {
    GRPC_OK = 0,
    GRPC_INVALID_ARGUMENT = 3,
    GRPC_NOT_FOUND = 5,
    GRPC_RESOURCE_EXHAUSTED = 8,
    GRPC_UNIMPLEMENTED = 12,
    GRPC_INTERNAL = 13,
};

struct stream {
    struct stream *prev, *next; /* the connection's open streams */
    int32_t id;
    char path[128];
    bool path_too_long;
    bool post;
    bool grpc_ct;
    bool too_large;
    uint8_t *req;
    size_t req_len, req_cap;
    uint8_t *reply; /* framed message */
    size_t reply_len, reply_off;
};

struct conn {
    nghttp2_session *session;
    rc_store_t *store;
    struct stream *streams; /* nghttp2_session_del frees its streams without on_close */
    size_t pending;         /* bytes of the replies of open streams */
};

/* ---- the two methods: request bytes in, packed reply or a status out ----------------------- */

struct result {
    int code;      /* enum grpc_code */
    char msg[160]; /* grpc-message when code != 0 */
    uint8_t *framed;
    size_t framed_len;
};

static int fail(struct result *r, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct result *r, int code, const char *fmt, ...)
{
    va_list ap;
    r->code = code;
    va_start(ap, fmt);
    vsnprintf(r->msg, sizeof r->msg, fmt, ap);
    va_end(ap);
    return -1;
}

/* Packs msg behind the 5-byte gRPC prefix into r->framed. */
static int frame(struct result *r, const ProtobufCMessage *msg)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    if (len > MAX_REPLY)
        return fail(r, GRPC_RESOURCE_EXHAUSTED, "reply of %zu bytes exceeds %u", len, MAX_REPLY);
    r->framed = malloc(5 + len);
    if (!r->framed)
        return fail(r, GRPC_RESOURCE_EXHAUSTED, "out of memory");
    r->framed[0] = 0;
    r->framed[1] = (uint8_t)(len >> 24);
    r->framed[2] = (uint8_t)(len >> 16);
    r->framed[3] = (uint8_t)(len >> 8);
    r->framed[4] = (uint8_t)len;
    protobuf_c_message_pack(msg, r->framed + 5);
    r->framed_len = 5 + len;
    return 0;
}

static uint64_t now_unix_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void list_traces(rc_store_t *store, const uint8_t *msg, size_t len, struct result *r)
{
    Remora__V1__ListTracesRequest *req;
    Remora__V1__ListTracesResponse resp = REMORA__V1__LIST_TRACES_RESPONSE__INIT;
    Remora__V1__TraceSummary *sums = NULL, **ptrs = NULL;
    rc_trace_summary_t *found = NULL;
    uint64_t since_ns = 0;
    size_t limit;
    long n;

    req = remora__v1__list_traces_request__unpack(NULL, len, msg);
    if (!req) {
        fail(r, GRPC_INVALID_ARGUMENT, "ListTracesRequest does not decode");
        return;
    }
    limit = req->limit == 0 ? 100 : req->limit > 1000 ? 1000 : req->limit;
    if (req->since_seconds) {
        uint64_t now = now_unix_ns();
        /* a window longer than the epoch is "any time": since_ns 0 */
        if (req->since_seconds < now / 1000000000u)
            since_ns = now - req->since_seconds * 1000000000u;
    }
    n = rc_store_list(store, req->service, req->errors_only, since_ns, limit, &found);
    remora__v1__list_traces_request__free_unpacked(req, NULL);
    if (n < 0) {
        fail(r, GRPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    if (n > 0) {
        sums = calloc((size_t)n, sizeof *sums);
        ptrs = calloc((size_t)n, sizeof *ptrs);
        if (!sums || !ptrs) {
            fail(r, GRPC_RESOURCE_EXHAUSTED, "out of memory");
            goto out;
        }
    }
    for (long i = 0; i < n; i++) {
        Remora__V1__TraceSummary *t = &sums[i];
        const rc_trace_summary_t *f = &found[i];
        remora__v1__trace_summary__init(t);
        /* the reply only points into found: nothing is copied, nothing written through */
        t->trace_id.data = (uint8_t *)f->trace_id;
        t->trace_id.len = RC_TRACE_ID_LEN;
        t->root_service = (char *)f->root_service;
        t->root_name = (char *)f->root_name;
        t->start_time_unix_nano = f->start_ns;
        t->duration_nano = f->duration_ns;
        t->span_count = f->spans;
        t->error = f->error != 0;
        t->services = (char **)f->services;
        t->n_services = f->nservices;
        ptrs[i] = t;
    }
    resp.traces = ptrs;
    resp.n_traces = (size_t)n;
    frame(r, &resp.base);
out:
    free(sums);
    free(ptrs);
    if (found)
        rc_summaries_free(found, (size_t)n);
}

static void get_trace(rc_store_t *store, const uint8_t *msg, size_t len, struct result *r)
{
    Remora__V1__GetTraceRequest *req;
    Remora__V1__GetTraceResponse resp = REMORA__V1__GET_TRACE_RESPONSE__INIT;
    uint8_t id[RC_TRACE_ID_LEN];
    rc_span_t *spans = NULL;
    size_t n = 0, nattrs = 0, nevents = 0, nevattrs = 0;
    Remora__V1__Span *sp = NULL, **sp_ptrs = NULL;
    Remora__V1__Span__AttributesEntry *attrs = NULL, **attr_ptrs = NULL;
    Remora__V1__SpanEvent *evs = NULL, **ev_ptrs = NULL;
    Remora__V1__SpanEvent__AttributesEntry *evattrs = NULL, **evattr_ptrs = NULL;
    char hex[2 * RC_TRACE_ID_LEN + 1];
    int rc;

    req = remora__v1__get_trace_request__unpack(NULL, len, msg);
    if (!req) {
        fail(r, GRPC_INVALID_ARGUMENT, "GetTraceRequest does not decode");
        return;
    }
    if (req->trace_id.len != RC_TRACE_ID_LEN) {
        fail(r, GRPC_INVALID_ARGUMENT, "trace_id must be %d bytes, not %zu", RC_TRACE_ID_LEN,
             req->trace_id.len);
        remora__v1__get_trace_request__free_unpacked(req, NULL);
        return;
    }
    memcpy(id, req->trace_id.data, RC_TRACE_ID_LEN);
    remora__v1__get_trace_request__free_unpacked(req, NULL);
    for (int i = 0; i < RC_TRACE_ID_LEN; i++)
        snprintf(hex + 2 * i, 3, "%02x", id[i]);

    rc = rc_store_get(store, id, &spans, &n);
    if (rc == -ENOENT) {
        fail(r, GRPC_NOT_FOUND, "trace %s not found", hex);
        return;
    }
    if (rc < 0) {
        fail(r, GRPC_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }

    for (size_t i = 0; i < n; i++) {
        nattrs += spans[i].nattrs;
        nevents += spans[i].nevents;
        for (size_t e = 0; e < spans[i].nevents; e++)
            nevattrs += spans[i].events[e].nattrs;
    }
    /* +1: calloc(0) may return NULL */
    sp = calloc(n + 1, sizeof *sp);
    sp_ptrs = calloc(n + 1, sizeof *sp_ptrs);
    attrs = calloc(nattrs + 1, sizeof *attrs);
    attr_ptrs = calloc(nattrs + 1, sizeof *attr_ptrs);
    evs = calloc(nevents + 1, sizeof *evs);
    ev_ptrs = calloc(nevents + 1, sizeof *ev_ptrs);
    evattrs = calloc(nevattrs + 1, sizeof *evattrs);
    evattr_ptrs = calloc(nevattrs + 1, sizeof *evattr_ptrs);
    if (!sp || !sp_ptrs || !attrs || !attr_ptrs || !evs || !ev_ptrs || !evattrs || !evattr_ptrs) {
        fail(r, GRPC_RESOURCE_EXHAUSTED, "out of memory");
        goto out;
    }

    size_t ai = 0, ei = 0, eai = 0;
    for (size_t i = 0; i < n; i++) {
        rc_span_t *s = &spans[i];
        Remora__V1__Span *o = &sp[i];
        remora__v1__span__init(o);
        o->span_id.data = s->span_id;
        o->span_id.len = RC_SPAN_ID_LEN;
        if (s->has_parent) {
            o->parent_span_id.data = s->parent_id;
            o->parent_span_id.len = RC_SPAN_ID_LEN;
        }
        o->service = (char *)s->service;
        o->name = (char *)s->name;
        o->kind = s->kind >= 0 && s->kind <= 5 ? (Remora__V1__SpanKind)s->kind
                                               : REMORA__V1__SPAN_KIND__SPAN_KIND_UNSPECIFIED;
        o->start_time_unix_nano = s->start_ns;
        o->duration_nano = s->end_ns > s->start_ns ? s->end_ns - s->start_ns : 0;
        o->status = s->status_code == RC_STATUS_OK ? REMORA__V1__SPAN_STATUS__SPAN_STATUS_OK
                    : s->status_code == RC_STATUS_ERROR
                        ? REMORA__V1__SPAN_STATUS__SPAN_STATUS_ERROR
                        : REMORA__V1__SPAN_STATUS__SPAN_STATUS_UNSET;
        o->status_message = (char *)(s->status_message ? s->status_message : "");
        o->attributes = &attr_ptrs[ai];
        o->n_attributes = s->nattrs;
        for (size_t a = 0; a < s->nattrs; a++, ai++) {
            remora__v1__span__attributes_entry__init(&attrs[ai]);
            attrs[ai].key = (char *)s->attrs[a].key;
            attrs[ai].value = (char *)s->attrs[a].value;
            attr_ptrs[ai] = &attrs[ai];
        }
        o->events = &ev_ptrs[ei];
        o->n_events = s->nevents;
        for (size_t e = 0; e < s->nevents; e++, ei++) {
            const rc_event_t *se = &s->events[e];
            Remora__V1__SpanEvent *oe = &evs[ei];
            remora__v1__span_event__init(oe);
            oe->name = (char *)se->name;
            oe->time_unix_nano = se->time_ns;
            oe->attributes = &evattr_ptrs[eai];
            oe->n_attributes = se->nattrs;
            for (size_t a = 0; a < se->nattrs; a++, eai++) {
                remora__v1__span_event__attributes_entry__init(&evattrs[eai]);
                evattrs[eai].key = (char *)se->attrs[a].key;
                evattrs[eai].value = (char *)se->attrs[a].value;
                evattr_ptrs[eai] = &evattrs[eai];
            }
            ev_ptrs[ei] = oe;
        }
        sp_ptrs[i] = o;
    }
    resp.trace_id.data = id;
    resp.trace_id.len = RC_TRACE_ID_LEN;
    resp.spans = sp_ptrs;
    resp.n_spans = n;
    frame(r, &resp.base);
out:
    free(sp);
    free(sp_ptrs);
    free(attrs);
    free(attr_ptrs);
    free(evs);
    free(ev_ptrs);
    free(evattrs);
    free(evattr_ptrs);
    rc_spans_free(spans, n);
}

/* Runs the call of stream st: checks the framing, dispatches on the path. */
static void call(struct conn *c, struct stream *st, struct result *r)
{
    static const char prefix[] = "/remora.v1.Control/";
    const char *method;
    uint32_t mlen;

    if (st->path_too_long || strncmp(st->path, prefix, sizeof prefix - 1) != 0) {
        fail(r, GRPC_UNIMPLEMENTED, "unknown service in %s%s", st->path,
             st->path_too_long ? "..." : "");
        return;
    }
    method = st->path + sizeof prefix - 1;
    if (strcmp(method, "ListTraces") != 0 && strcmp(method, "GetTrace") != 0) {
        fail(r, GRPC_UNIMPLEMENTED, "unknown method %s of remora.v1.Control", method);
        return;
    }
    if (st->too_large) {
        fail(r, GRPC_RESOURCE_EXHAUSTED, "request larger than %u bytes", MAX_REQUEST);
        return;
    }
    if (st->req_len < 5) {
        fail(r, GRPC_INVALID_ARGUMENT, "a request message is expected (%zu bytes received)",
             st->req_len);
        return;
    }
    if (st->req[0] != 0) {
        fail(r, GRPC_UNIMPLEMENTED, "compressed messages are not supported");
        return;
    }
    mlen = (uint32_t)st->req[1] << 24 | (uint32_t)st->req[2] << 16 | (uint32_t)st->req[3] << 8 |
           st->req[4];
    if ((size_t)mlen < st->req_len - 5) {
        fail(r, GRPC_INVALID_ARGUMENT, "more than one request message for a unary call");
        return;
    }
    if ((size_t)mlen > st->req_len - 5) {
        fail(r, GRPC_INVALID_ARGUMENT, "request message cut short (%u of %u bytes)",
             (unsigned)(st->req_len - 5), mlen);
        return;
    }
    if (method[0] == 'L')
        list_traces(c->store, st->req + 5, mlen, r);
    else
        get_trace(c->store, st->req + 5, mlen, r);
}

/* ---- HTTP/2 ------------------------------------------------------------------------------- */

#define NV(n, v, vlen)                                                                             \
    {                                                                                              \
        (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, (vlen), NGHTTP2_NV_FLAG_NONE                \
    }

/* grpc-message percent-encoding: everything outside printable ASCII, and '%' itself. */
static size_t percent_encode(char *out, size_t cap, const char *in)
{
    static const char digits[] = "0123456789ABCDEF";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p && o + 4 <= cap; p++) {
        if (*p >= 0x20 && *p <= 0x7e && *p != '%') {
            out[o++] = (char)*p;
        } else {
            out[o++] = '%';
            out[o++] = digits[*p >> 4];
            out[o++] = digits[*p & 15];
        }
    }
    out[o] = 0;
    return o;
}

static ssize_t reply_read(nghttp2_session *session, int32_t sid, uint8_t *buf, size_t len,
                          uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    struct stream *st = src->ptr;
    size_t n = st->reply_len - st->reply_off;
    if (n > len)
        n = len;
    memcpy(buf, st->reply + st->reply_off, n);
    st->reply_off += n;
    if (st->reply_off == st->reply_len) {
        nghttp2_nv trailers[] = {NV("grpc-status", "0", 1)};
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        /* the trailers end the stream, not this DATA frame */
        if (nghttp2_submit_trailer(session, sid, trailers, 1) == 0)
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
    }
    return (ssize_t)n;
}

static int respond(struct conn *c, struct stream *st)
{
    struct result r = {.code = GRPC_OK};
    char status[12], enc[3 * sizeof r.msg + 1];

    if (!st->post) {
        nghttp2_nv h[] = {NV(":status", "405", 3), NV("allow", "POST", 4)};
        return nghttp2_submit_response(c->session, st->id, h, 2, NULL);
    }
    if (!st->grpc_ct) {
        nghttp2_nv h[] = {NV(":status", "415", 3)};
        return nghttp2_submit_response(c->session, st->id, h, 1, NULL);
    }
    call(c, st, &r);
    if (r.framed && c->pending > 0 && c->pending + r.framed_len > MAX_PENDING) {
        free(r.framed);
        r.framed = NULL;
        fail(&r, GRPC_RESOURCE_EXHAUSTED, "too many replies waiting for this client to read them");
    }
    if (r.code == GRPC_OK && r.framed) {
        nghttp2_nv h[] = {NV(":status", "200", 3), NV("content-type", "application/grpc", 16)};
        nghttp2_data_provider prd = {.source.ptr = st, .read_callback = reply_read};
        st->reply = r.framed;
        st->reply_len = r.framed_len;
        c->pending += r.framed_len;
        return nghttp2_submit_response(c->session, st->id, h, 2, &prd);
    }
    if (r.code == GRPC_OK) /* frame() failed without saying why: cannot happen */
        fail(&r, GRPC_INTERNAL, "no reply");
    snprintf(status, sizeof status, "%d", r.code);
    size_t elen = percent_encode(enc, sizeof enc, r.msg);
    nghttp2_nv h[] = {NV(":status", "200", 3), NV("content-type", "application/grpc", 16),
                      NV("grpc-status", status, strlen(status)), NV("grpc-message", enc, elen)};
    return nghttp2_submit_response(c->session, st->id, h, 4, NULL);
}

static bool grpc_content_type(const uint8_t *v, size_t len)
{
    static const char ct[] = "application/grpc";
    size_t n = sizeof ct - 1;
    if (len < n || strncasecmp((const char *)v, ct, n) != 0)
        return false;
    return len == n || v[n] == '+' || v[n] == ';';
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *f, void *ud)
{
    struct stream *st;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    st = calloc(1, sizeof *st);
    if (!st)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets this stream only */
    struct conn *c = ud;
    st->id = f->hd.stream_id;
    st->next = c->streams;
    if (c->streams)
        c->streams->prev = st;
    c->streams = st;
    nghttp2_session_set_stream_user_data(session, st->id, st);
    return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    struct stream *st;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    st = nghttp2_session_get_stream_user_data(session, f->hd.stream_id);
    if (!st)
        return 0;
    if (namelen == 7 && memcmp(name, ":method", 7) == 0) {
        st->post = valuelen == 4 && memcmp(value, "POST", 4) == 0;
    } else if (namelen == 5 && memcmp(name, ":path", 5) == 0) {
        if (valuelen >= sizeof st->path) {
            valuelen = sizeof st->path - 1;
            st->path_too_long = true;
        }
        memcpy(st->path, value, valuelen);
        st->path[valuelen] = 0;
    } else if (namelen == 12 && memcmp(name, "content-type", 12) == 0) {
        st->grpc_ct = grpc_content_type(value, valuelen);
    }
    return 0;
}

static int on_data(nghttp2_session *session, uint8_t flags, int32_t sid, const uint8_t *data,
                   size_t len, void *ud)
{
    struct stream *st = nghttp2_session_get_stream_user_data(session, sid);
    if (!st || st->too_large)
        return 0;
    if (st->req_len + len > MAX_REQUEST) {
        st->too_large = true;
        return 0;
    }
    if (st->req_len + len > st->req_cap) {
        size_t cap = st->req_cap ? st->req_cap : 256;
        while (cap < st->req_len + len)
            cap *= 2;
        uint8_t *nb = realloc(st->req, cap);
        if (!nb)
            return nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, sid,
                                             NGHTTP2_INTERNAL_ERROR);
        st->req = nb;
        st->req_cap = cap;
    }
    memcpy(st->req + st->req_len, data, len);
    st->req_len += len;
    return 0;
}

static int on_frame(nghttp2_session *session, const nghttp2_frame *f, void *ud)
{
    struct stream *st;
    if ((f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) ||
        !(f->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    st = nghttp2_session_get_stream_user_data(session, f->hd.stream_id);
    if (!st)
        return 0;
    if (respond(ud, st) != 0)
        return nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, st->id,
                                         NGHTTP2_INTERNAL_ERROR);
    return 0;
}

static void stream_free(struct conn *c, struct stream *st)
{
    if (st->prev)
        st->prev->next = st->next;
    else
        c->streams = st->next;
    if (st->next)
        st->next->prev = st->prev;
    c->pending -= st->reply_len;
    free(st->req);
    free(st->reply);
    free(st);
}

static int on_close(nghttp2_session *session, int32_t sid, uint32_t error_code, void *ud)
{
    struct stream *st = nghttp2_session_get_stream_user_data(session, sid);
    if (!st)
        return 0;
    nghttp2_session_set_stream_user_data(session, sid, NULL);
    stream_free(ud, st);
    return 0;
}

/* Sends what nghttp2 has queued. Returns the number of bytes sent, or a negative errno. */
static long send_pending(nghttp2_session *session, int fd)
{
    const uint8_t *data;
    ssize_t n;
    long sent = 0;
    while ((n = nghttp2_session_mem_send(session, &data)) > 0) {
        sent += n;
        while (n > 0) {
            ssize_t w = send(fd, data, (size_t)n, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                return errno == EAGAIN ? -ETIMEDOUT : -errno;
            }
            data += w;
            n -= w;
        }
    }
    return n < 0 ? -EPROTO : sent;
}

/* Serves gRPC on fd until the peer closes the connection, breaks the protocol, stays idle
 * IDLE_TIMEOUT_MS, or the caller shuts the socket down; then closes fd (it is ours, rc_http.h).
 * pre/prelen: the bytes the caller already read (the client preface and maybe more), fed to
 * nghttp2 first. Sends are bounded by the caller's SO_SNDTIMEO. Returns 0 when the connection
 * ended cleanly (closed, shut down, GOAWAY, idle), -EPROTO on an HTTP/2 protocol error (a GOAWAY
 * was sent when possible), -ETIMEDOUT when a send stalled, -ENOMEM, or another -errno of
 * poll/recv/send. Runs in the connection's thread; shares only the store, which locks itself. */
int rc_grpc_serve(int fd, const char *pre, size_t prelen, rc_store_t *store)
{
    struct conn c = {.store = store};
    nghttp2_session_callbacks *cbs = NULL;
    uint8_t buf[16384];
    int ret = -ENOMEM;

    if (nghttp2_session_callbacks_new(&cbs) != 0)
        goto out;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_close);
    if (nghttp2_session_server_new(&c.session, cbs, &c) != 0)
        goto out;

    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS},
                                   {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, 64 << 10}};
    if (nghttp2_submit_settings(c.session, NGHTTP2_FLAG_NONE, iv, 2) != 0)
        goto out;

    ret = 0;
    if (prelen > 0 && nghttp2_session_mem_recv(c.session, (const uint8_t *)pre, prelen) < 0)
        ret = -EPROTO;
    while (ret == 0 &&
           (nghttp2_session_want_read(c.session) || nghttp2_session_want_write(c.session))) {
        long sent = send_pending(c.session, fd);
        if (sent < 0) {
            ret = (int)sent;
            break;
        }
        /* after a GOAWAY: only writes are left, and data a closed window holds back never goes */
        if (!nghttp2_session_want_read(c.session)) {
            if (sent == 0)
                break;
            continue;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int rc = poll(&p, 1, IDLE_TIMEOUT_MS);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc < 0) {
            ret = -errno;
            break;
        }
        if (rc == 0) {
            /* every call is answered at once, so silence means the client has gone */
            nghttp2_session_terminate_session(c.session, NGHTTP2_NO_ERROR);
            send_pending(c.session, fd);
            break;
        }
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            ret = errno == ECONNRESET ? 0 : -errno;
            break;
        }
        if (n == 0)
            break;
        if (nghttp2_session_mem_recv(c.session, buf, (size_t)n) < 0)
            ret = -EPROTO;
    }
    if (ret == -EPROTO)
        send_pending(c.session, fd); /* the GOAWAY nghttp2 queued, if any */
out:
    if (c.session)
        nghttp2_session_del(c.session);
    while (c.streams)
        stream_free(&c, c.streams);
    close(fd);
    if (cbs)
        nghttp2_session_callbacks_del(cbs);
    return ret;
}
