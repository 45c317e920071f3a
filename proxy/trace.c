/*
 * Full-link tracing in the data plane: trace context propagation (W3C traceparent, B3 single and
 * multi-header, x-request-id), one span per request (SERVER on the inbound listener, CLIENT on
 * the outbound one) with an event per retry, and OTLP/HTTP export off the request path.
 *
 * Propagation: the incoming context is read from traceparent, else from b3, else from
 * X-B3-TraceId/X-B3-SpanId/X-B3-Sampled; with none a new trace starts, sampled by
 * tracing.sample_percent. Each hop gets a span id of its own, which goes upstream as the
 * parent: the original traceparent/B3 headers are dropped and rewritten (tracestate and baggage
 * pass as they are). x-request-id is kept, or generated when absent.
 *
 * Spans: recorded when the trace is sampled, or whatever the sampling when the request failed
 * (5xx, or no response): every error is kept. A finished span is one malloc'd record that the
 * worker pushes onto its own lock-free queue (one producer, one consumer); a full queue drops
 * and counts. The exporter thread drains the queues every EXPORT_EVERY_MS (or sooner when one
 * fills up), encodes OTLP ExportTraceServiceRequest with protobuf-c and POSTs it over HTTP/1.1
 * with timeouts, retrying a failed batch with backoff before dropping it (counted). The request
 * path never waits for export.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "remora/gray.h"
#include "remora/log.h"
#include "remora/v1/bootstrap.pb-c.h"
#include "remora/v1/mesh.pb-c.h"
#include "http.h"
#include "tls.h"

#define SPANQ_SIZE 2048       /* records per worker, a power of two */
#define EXPORT_EVERY_MS 500   /* the exporter's period */
#define EXPORT_BATCH_MAX 2048 /* spans per POST */
#define EXPORT_TIMEOUT_MS 2000
#define EXPORT_RETRIES 3
#define SPAN_EVENTS_MAX 8

typedef struct span_ev {
    uint64_t t_ns;
    uint32_t attempt;
    char reason[24];
    char endpoint[48];
} span_ev_t;

#define SPAN_ATTRS_MAX 1536 /* bytes of attributes a span keeps; past it, the rest is dropped */

/* A finished span, written in place into its worker's ring (no allocation on the request path,
 * no memory passed between threads): the attributes are "key\0value\0" pairs; a key that
 * starts with '#' holds an integer, with '?' a boolean (the mark is not part of the key). */
typedef struct span_rec {
    uint8_t trace_id[16], span_id[8], parent_id[8];
    uint8_t has_parent, kind, error, flags;
    uint64_t start_ns, end_ns;
    uint32_t n_ev;
    span_ev_t ev[SPAN_EVENTS_MAX];
    char name[128];
    char status_msg[48];
    uint32_t alen, dropped_attrs;
    char attrs[SPAN_ATTRS_MAX];
} span_rec_t;

struct span_q {
    _Atomic uint32_t head; /* written by the exporter */
    char pad[60];
    _Atomic uint32_t tail; /* written by the worker */
    span_rec_t slot[SPANQ_SIZE];
};

typedef struct abuf {
    span_rec_t *r;
} abuf_t;

uint64_t rmr_spans_exported, rmr_spans_dropped, rmr_spans_failed, rmr_span_batches_failed;

/* Where spans go and what they say of this sidecar; a reload hands a new one to the exporter. */
typedef struct ex_target {
    int on;  /* 0: nowhere (spans are dropped, counted) */
    int tls; /* https: the collector's certificate is verified against the system's trust
                store (or SSL_CERT_FILE / SSL_CERT_DIR), and its name against the URL's host */
    char host[256], port[8], path[512];
    char service[128], node[128], version[64];
    char headers[4096]; /* tracing.export.headers as "name: value\r\n" lines */
} ex_target_t;

static struct {
    pthread_t thread;
    int running, stop;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    ex_target_t t;    /* the exporter thread's own */
    ex_target_t next; /* set by a reload under lock, taken by the exporter at its next wake */
    int retarget;
    int fd;
    SSL_CTX *ctx; /* for https targets, made at the first one */
    SSL *ssl;     /* on fd, when the target is https */
} ex = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER, .fd = -1};

/* ---- ids and header values ---- */

static const char hexd[] = "0123456789abcdef";

static void hex(char *out, const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hexd[b[i] >> 4];
        out[2 * i + 1] = hexd[b[i] & 15];
    }
    out[2 * n] = 0;
}

static int unhex(const char *s, size_t n, uint8_t *out)
{
    for (size_t i = 0; i < n; i += 2) {
        int v = 0;
        for (int k = 0; k < 2; k++) {
            char c = s[i + k];
            int d = c >= '0' && c <= '9'   ? c - '0'
                    : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                           : -1;
            if (d < 0)
                return -1;
            v = v * 16 + d;
        }
        out[i / 2] = (uint8_t)v;
    }
    return 0;
}

/* Copies s (NULL: "") into out of size cap, cut to fit, always terminated. */
static void copy_str(char *out, size_t cap, const char *s)
{
    size_t n = s ? strnlen(s, cap - 1) : 0;
    memcpy(out, s ? s : "", n);
    out[n] = 0;
}

static int zero(const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (b[i])
            return 0;
    return 1;
}

/* A B3 trace id: 16 or 32 hex (a 64-bit id is padded on the left). */
static int b3_trace_id(const char *s, size_t n, uint8_t id[16])
{
    memset(id, 0, 16);
    if (n == 32)
        return unhex(s, 32, id) < 0 || zero(id, 16) ? -1 : 0;
    if (n == 16)
        return unhex(s, 16, id + 8) < 0 || zero(id, 16) ? -1 : 0;
    return -1;
}

static int b3_span_id(const char *s, size_t n, uint8_t id[8])
{
    return n != 16 || unhex(s, 16, id) < 0 || zero(id, 8) ? -1 : 0;
}

static int hdr(const h1_msg_t *m, const char *name, const char **v, size_t *n, int *idx)
{
    for (uint32_t i = 0; i < m->nhdrs; i++)
        if (!m->hdrs[i].dropped && h1_span_eq(m, m->hdrs[i].name, name)) {
            *v = h1_str(m, m->hdrs[i].value);
            *n = m->hdrs[i].value.len;
            if (idx)
                *idx = (int)i;
            return 0;
        }
    return -1;
}

static void drop_hdr(h1_msg_t *m, const char *name)
{
    for (uint32_t i = 0; i < m->nhdrs; i++)
        if (h1_span_eq(m, m->hdrs[i].name, name))
            m->hdrs[i].dropped = 1;
}

/* The incoming context: 0 with *sampled (-1 when the caller left the decision to us), or -1. */
static int context_in(const h1_msg_t *m, uint8_t tid[16], uint8_t pid[8], int *sampled)
{
    const char *v;
    size_t n;
    rmr_traceparent_t tp;
    if (hdr(m, "traceparent", &v, &n, NULL) == 0 && rmr_traceparent_parse(v, n, &tp) == 0) {
        memcpy(tid, tp.trace_id, 16);
        memcpy(pid, tp.parent_id, 8);
        *sampled = tp.flags & 1;
        return 0;
    }
    if (hdr(m, "b3", &v, &n, NULL) == 0) {
        /* {traceid}-{spanid}[-{sampling}[-{parentspanid}]], or just the sampling */
        const char *d1 = memchr(v, '-', n);
        if (d1) {
            const char *d2 = memchr(d1 + 1, '-', (size_t)(v + n - d1 - 1));
            const char *se = d2 ? d2 : v + n;
            if (b3_trace_id(v, (size_t)(d1 - v), tid) == 0 &&
                b3_span_id(d1 + 1, (size_t)(se - d1 - 1), pid) == 0) {
                *sampled = -1;
                if (d2 && d2 + 1 < v + n)
                    *sampled = d2[1] == '1' || d2[1] == 'd';
                return 0;
            }
        }
    }
    const char *t, *s;
    size_t tn, sn;
    if (hdr(m, "x-b3-traceid", &t, &tn, NULL) == 0 && hdr(m, "x-b3-spanid", &s, &sn, NULL) == 0 &&
        b3_trace_id(t, tn, tid) == 0 && b3_span_id(s, sn, pid) == 0) {
        *sampled = -1;
        if (hdr(m, "x-b3-sampled", &v, &n, NULL) == 0 && n)
            *sampled = v[0] == '1' || v[0] == 't';
        if (hdr(m, "x-b3-flags", &v, &n, NULL) == 0 && n == 1 && v[0] == '1')
            *sampled = 1;
        return 0;
    }
    return -1;
}

/* Adds a header remora writes; it does not count against the client's limits, and a failure
 * leaves the request as it was. */
int msg_add_own(h1_msg_t *m, const char *name, const char *value, size_t vlen)
{
    int es = m->err_status;
    const char *er = m->err_reason;
    uint32_t mh = m->max_hdrs, mb = m->max_bytes;
    m->max_hdrs += 8;
    m->max_bytes += 1024;
    int rc = h1_msg_add(m, name, strlen(name), value, vlen);
    m->max_hdrs = mh;
    m->max_bytes = mb;
    if (rc < 0) {
        m->err_status = es;
        m->err_reason = er;
    }
    return rc;
}

/* ---- the request path ---- */

void trace_view_setup(view_t *v)
{
    const Remora__V1__Mesh *mesh = v->config->mesh_pb;
    const Remora__V1__Tracing *t = mesh ? mesh->tracing : NULL;
    v->trace_on = t != NULL;
    v->trace_w3c = 1;
    v->trace_b3 = 0;
    v->trace_ppm = 0;
    if (!t)
        return;
    double p = t->sample_percent;
    v->trace_ppm = p <= 0 ? 0 : p >= 100 ? 1000000 : (uint32_t)(p * 10000.0 + 0.5);
    if (t->n_propagate) {
        v->trace_w3c = 0;
        for (size_t i = 0; i < t->n_propagate; i++) {
            if (t->propagate[i] == REMORA__V1__PROPAGATION__B3)
                v->trace_b3 = 1;
            else
                v->trace_w3c = 1;
        }
    }
}

void trace_request(conn_t *d)
{
    stream_t *st = d->st;
    worker_t *w = d->w;
    const view_t *v = st->view;
    h1_msg_t *m = &st->req;
    int sampled = -1;
    st->trace_has_parent = context_in(m, st->trace_id, st->trace_parent, &sampled) == 0;
    if (!st->trace_has_parent) {
        uint64_t a = worker_rand(w), b = worker_rand(w);
        memcpy(st->trace_id, &a, 8);
        memcpy(st->trace_id + 8, &b, 8);
        if (zero(st->trace_id, 16))
            st->trace_id[15] = 1;
    }
    if (sampled < 0)
        sampled =
            v->trace_ppm >= 1000000 || (v->trace_ppm && worker_rand(w) % 1000000 < v->trace_ppm);
    st->trace_sampled = (unsigned)sampled;
    uint64_t s = worker_rand(w);
    memcpy(st->span_id, &s, 8);
    if (zero(st->span_id, 8))
        st->span_id[7] = 1;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    st->trace_start_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    st->trace_live = 1;
    /* what goes upstream: this hop's span as the parent */
    char tid[33], sid[17], val[56];
    hex(tid, st->trace_id, 16);
    hex(sid, st->span_id, 8);
    drop_hdr(m, "traceparent");
    if (v->trace_w3c) { /* 00-{32 hex}-{16 hex}-{flags} */
        memcpy(val, "00-", 3);
        memcpy(val + 3, tid, 32);
        val[35] = '-';
        memcpy(val + 36, sid, 16);
        memcpy(val + 52, sampled ? "-01" : "-00", 3);
        msg_add_own(m, "traceparent", val, 55);
    }
    if (v->trace_b3) {
        drop_hdr(m, "b3");
        drop_hdr(m, "x-b3-traceid");
        drop_hdr(m, "x-b3-spanid");
        drop_hdr(m, "x-b3-parentspanid");
        drop_hdr(m, "x-b3-sampled");
        drop_hdr(m, "x-b3-flags");
        msg_add_own(m, "x-b3-traceid", tid, 32);
        msg_add_own(m, "x-b3-spanid", sid, 16);
        if (st->trace_has_parent) {
            char pid[17];
            hex(pid, st->trace_parent, 8);
            msg_add_own(m, "x-b3-parentspanid", pid, 16);
        }
        msg_add_own(m, "x-b3-sampled", sampled ? "1" : "0", 1);
    }
    const char *x;
    size_t xn;
    if (hdr(m, "x-request-id", &x, &xn, NULL) < 0) {
        char id[48];
        size_t n = rmr_idem_format_key(id, worker_rand(w), worker_rand(w)); /* "uuid" quoted */
        msg_add_own(m, "x-request-id", id + 1, n - 2);
    }
}

void trace_end(stream_t *st)
{
    if (st->trace_end_ns)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    st->trace_end_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void trace_attempt(stream_t *st, const char *reason)
{
    if (!st->trace_live)
        return;
    if (!st->trace_ev) {
        st->trace_ev = calloc(SPAN_EVENTS_MAX, sizeof(span_ev_t));
        if (!st->trace_ev)
            return;
    }
    if (st->trace_nev >= SPAN_EVENTS_MAX)
        return;
    span_ev_t *e = &((span_ev_t *)st->trace_ev)[st->trace_nev++];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    e->t_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    e->attempt = st->attempt;
    copy_str(e->reason, sizeof(e->reason), reason);
    copy_str(e->endpoint, sizeof(e->endpoint), st->ep ? st->ep->conf->addr.text : NULL);
}

/* An attribute, as the record keeps it: {type: 1 string, 2 bool, 3 int}{key length: 1 byte}
 * {key}{value length: 2 bytes}{value, an int in decimal}. Keys are literals, their lengths
 * known at compile time: neither the request path nor the exporter measures a string. */
static void attr_k(abuf_t *b, uint8_t type, const char *key, size_t kl, const char *v, size_t n)
{
    if (!v || !n)
        return;
    span_rec_t *r = b->r;
    if (r->alen + kl + n + 4 > SPAN_ATTRS_MAX) {
        r->dropped_attrs++;
        return;
    }
    char *o = r->attrs + r->alen;
    o[0] = (char)type;
    o[1] = (char)kl;
    memcpy(o + 2, key, kl);
    o[2 + kl] = (char)(n & 0xff);
    o[3 + kl] = (char)(n >> 8);
    memcpy(o + 4 + kl, v, n);
    r->alen += (uint32_t)(kl + n + 4);
}

#define attr(b, key, v, n) attr_k((b), 1, key, sizeof(key) - 1, (v), (n))
#define attr_s(b, key, v)                                                                          \
    do {                                                                                           \
        const char *v_ = (v);                                                                      \
        if (v_)                                                                                    \
            attr_k((b), 1, key, sizeof(key) - 1, v_, strlen(v_));                                  \
    } while (0)
#define attr_i(b, key, v)                                                                          \
    do {                                                                                           \
        char n_[20];                                                                               \
        attr_k((b), 3, key, sizeof(key) - 1, n_, rmr_fmt_u64(n_, (v)));                            \
    } while (0)
#define attr_b(b, key) attr_k((b), 2, key, sizeof(key) - 1, "true", 4)

/* The next free record of w's ring, or NULL when it is full (or there is no exporter). */
static span_rec_t *spanq_reserve(worker_t *w)
{
    struct span_q *q = __atomic_load_n(&w->spanq, __ATOMIC_ACQUIRE); /* set once, by a reload */
    if (!q)
        return NULL;
    uint32_t t = atomic_load_explicit(&q->tail, memory_order_relaxed);
    uint32_t h = atomic_load_explicit(&q->head, memory_order_acquire);
    return t - h >= SPANQ_SIZE ? NULL : &q->slot[t & (SPANQ_SIZE - 1)];
}

static void spanq_commit(worker_t *w)
{
    struct span_q *q = w->spanq;
    uint32_t t = atomic_load_explicit(&q->tail, memory_order_relaxed);
    uint32_t h = atomic_load_explicit(&q->head, memory_order_relaxed);
    atomic_store_explicit(&q->tail, t + 1, memory_order_release);
    if (t + 1 - h == SPANQ_SIZE / 4) /* filling up: ask for an early export */
        pthread_cond_signal(&ex.cond);
}

void trace_finish(conn_t *d, stream_t *st)
{
    if (!st->trace_live)
        return;
    st->trace_live = 0;
    int error = st->status >= 500 || st->status == 0;
    if (!(st->trace_sampled || error) || !__atomic_load_n(&ex.running, __ATOMIC_ACQUIRE)) {
        free(st->trace_ev);
        st->trace_ev = NULL;
        return;
    }
    const rmr_config_t *cfg = st->view->config;
    const conn_t *top = d->virt ? d->parent : d;
    int inbound =
        top->lst && top->lst->index < cfg->n_listeners && cfg->listeners[top->lst->index].inbound;
    const h1_msg_t *m = &st->req;
    span_rec_t *r = spanq_reserve(d->w);
    if (!r) {
        free(st->trace_ev);
        st->trace_ev = NULL;
        __atomic_add_fetch(&rmr_spans_dropped, 1, __ATOMIC_RELAXED);
        return;
    }
    r->alen = r->dropped_attrs = 0;
    abuf_t b = {r};
    const char *path, *auth;
    size_t plen, alen;
    req_target(m, &auth, &alen, &path, &plen);
    const char *qm = memchr(path, '?', plen);
    size_t pn = qm ? (size_t)(qm - path) : plen;
    attr_s(&b, "http.request.method", st->method);
    attr(&b, "url.path", path, pn > 1024 ? 1024 : pn);
    attr(&b, "server.address", auth, alen > 256 ? 256 : alen);
    attr_s(&b, "client.address", d->client_ip);
    attr_s(&b, "network.protocol.version", d->virt ? "2" : "1.1");
    if (st->status)
        attr_i(&b, "http.response.status_code", st->status);
    const char *x;
    size_t xn;
    if (hdr(m, "x-request-id", &x, &xn, NULL) == 0)
        attr(&b, "http.request.header.x-request-id", x, xn > 128 ? 128 : xn);
    if (st->cluster)
        attr_s(&b, "remora.service", st->cluster->conf->name);
    const char *route =
        st->route >= 0 && (size_t)st->route < cfg->n_routes ? cfg->routes[st->route].name : NULL;
    if (route) {
        attr_s(&b, "http.route", route);
        attr_s(&b, "remora.route", route);
    }
    if (st->subset && st->subset->name && st->subset->name[0]) {
        attr_s(&b, "remora.subset", st->subset->name);
        /* the version of the subset, when its selector names one */
        const char *vv = strstr(st->subset->name, "version=");
        if (vv && (vv == st->subset->name || vv[-1] == ',')) {
            const char *e = strchr(vv, ',');
            attr(&b, "remora.version", vv + 8, e ? (size_t)(e - vv - 8) : strlen(vv + 8));
        }
    }
    if (st->lane_len)
        attr(&b, "remora.lane", st->lane, st->lane_len);
    if (st->attempt)
        attr_i(&b, "remora.attempts", st->attempt);
    if (st->ep)
        attr_s(&b, "remora.upstream", st->ep->conf->addr.text);
    if (st->reason) {
        attr_s(&b, "remora.reason", st->reason);
        if (!strncmp(st->reason, "overflow-", 9) || !strcmp(st->reason, "no-healthy-endpoint"))
            attr_s(&b, "remora.breaker", st->reason);
    }
    if (st->fault)
        attr_s(&b, "remora.fault", st->fault == 1 ? "abort" : "delay");
    if (st->replayed)
        attr_b(&b, "remora.idempotent_replay");
    if (st->mirrored)
        attr_b(&b, "remora.mirrored");
    if (top->tls) {
        const char *id = tls_peer_identity(top->tls);
        attr_s(&b, "tls.peer.identity", id);
    }
    memcpy(r->trace_id, st->trace_id, 16);
    memcpy(r->span_id, st->span_id, 8);
    memcpy(r->parent_id, st->trace_parent, 8);
    r->has_parent = st->trace_has_parent;
    r->kind = inbound ? 2 : 3;
    r->error = (uint8_t)error;
    r->flags = st->trace_sampled;
    r->start_ns = st->trace_start_ns;
    trace_end(st); /* when the response did not complete: now */
    r->end_ns = st->trace_end_ns;
    {
        size_t ml = strnlen(st->method, sizeof(st->method) - 1);
        size_t room = sizeof(r->name) - 1 - ml - 1;
        size_t cp = pn > 100 ? 100 : pn;
        if (cp > room)
            cp = room;
        memcpy(r->name, st->method, ml);
        r->name[ml] = ' ';
        memcpy(r->name + ml + 1, path, cp);
        r->name[ml + 1 + cp] = 0;
    }
    r->status_msg[0] = 0;
    if (error)
        copy_str(r->status_msg, sizeof(r->status_msg),
                 st->reason   ? st->reason
                 : st->status ? "upstream 5xx"
                              : "no response");
    r->n_ev = st->trace_nev;
    if (st->trace_ev)
        memcpy(r->ev, st->trace_ev, st->trace_nev * sizeof(span_ev_t));
    free(st->trace_ev);
    st->trace_ev = NULL;
    spanq_commit(d->w);
}

/* ---- export ---- */

/*
 * The OTLP encoder: ExportTraceServiceRequest written straight from the span records, field by
 * field (the wire format of the published protos: proto/opentelemetry/ documents every field
 * number used here). protobuf-c's generic packer walks descriptors and measures every string
 * twice; this writes each byte once. A nested message is written after a one-byte length
 * placeholder, and moved right when its length needs more bytes: lengths stay minimal varints.
 * The tests decode the result with npm's otlp-transformer and with python3-protobuf.
 */
typedef struct pb {
    uint8_t *p;
    size_t len, cap;
    int oom;
} pb_t;

static int pb_grow(pb_t *b, size_t n)
{
    if (b->oom)
        return -1;
    size_t cap = b->cap ? b->cap : 65536;
    while (cap < b->len + n)
        cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

/* Room for n more bytes: the common case inline, growth out of line. */
static inline int pb_room(pb_t *b, size_t n)
{
    return __builtin_expect(b->len + n <= b->cap && !b->oom, 1) ? 0 : pb_grow(b, n);
}

static size_t varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static size_t put_varint(uint8_t *o, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        o[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    o[n++] = (uint8_t)v;
    return n;
}

static void pb_varint(pb_t *b, uint64_t v)
{
    if (pb_room(b, 10) < 0)
        return;
    while (v >= 0x80) {
        b->p[b->len++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    b->p[b->len++] = (uint8_t)v;
}

static void pb_tag(pb_t *b, unsigned field, unsigned wire)
{
    pb_varint(b, (uint64_t)field << 3 | wire);
}

static void pb_bytes(pb_t *b, unsigned field, const void *v, size_t n)
{
    pb_tag(b, field, 2);
    pb_varint(b, n);
    if (pb_room(b, n) < 0)
        return;
    memcpy(b->p + b->len, v, n);
    b->len += n;
}

static void pb_str(pb_t *b, unsigned field, const char *s)
{
    if (s && *s)
        pb_bytes(b, field, s, strlen(s));
}

static void pb_fixed(pb_t *b, unsigned field, uint64_t v, int bytes)
{
    pb_tag(b, field, bytes == 8 ? 1 : 5);
    if (pb_room(b, 8) < 0)
        return;
    for (int i = 0; i < bytes; i++)
        b->p[b->len++] = (uint8_t)(v >> (8 * i));
}

/* Starts a nested message: its tag and a one-byte length placeholder; returns where its body
 * begins, for pb_end. */
static size_t pb_begin(pb_t *b, unsigned field)
{
    pb_tag(b, field, 2);
    if (pb_room(b, 1) < 0)
        return 0;
    b->p[b->len++] = 0;
    return b->len;
}

static void pb_end(pb_t *b, size_t start)
{
    if (b->oom)
        return;
    size_t n = b->len - start, vl = varint_len(n);
    if (vl > 1) {
        if (pb_room(b, vl - 1) < 0)
            return;
        memmove(b->p + start + vl - 1, b->p + start, n);
        b->len += vl - 1;
    }
    uint8_t *q = b->p + start - 1;
    uint64_t v = n;
    while (v >= 0x80) {
        *q++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *q = (uint8_t)v;
}

/* A nested message expected to be 128 bytes to 16 KiB long, as spans are: a two-byte length
 * placeholder, so it moves only when it turns out shorter or longer. */
static size_t pb_begin2(pb_t *b, unsigned field)
{
    pb_tag(b, field, 2);
    if (pb_room(b, 2) < 0)
        return 0;
    b->len += 2;
    return b->len;
}

static void pb_end2(pb_t *b, size_t start)
{
    if (b->oom)
        return;
    size_t n = b->len - start, vl = varint_len(n);
    if (vl != 2) {
        if (vl > 2 && pb_room(b, vl - 2) < 0)
            return;
        memmove(b->p + start - 2 + vl, b->p + start, n);
        b->len = b->len + vl - 2;
    }
    put_varint(b->p + start - 2, n);
}

/* KeyValue {1 key, 2 AnyValue {1 string | 2 bool | 3 int}}, its lengths computed up front:
 * type 1 string, 2 bool ("true" or not), 3 int (decimal). */
static void pb_kv_n(pb_t *b, unsigned field, int type, const char *k, size_t kl, const char *v,
                    size_t vl)
{
    uint64_t iv = 0;
    size_t any; /* AnyValue's length */
    if (type == 3) {
        int neg = vl && v[0] == '-';
        for (size_t i = (size_t)neg; i < vl && v[i] >= '0' && v[i] <= '9'; i++)
            iv = iv * 10 + (uint64_t)(v[i] - '0');
        if (neg)
            iv = (uint64_t) - (int64_t)iv;
        any = 1 + varint_len(iv);
    } else if (type == 2) {
        iv = vl == 4 && !memcmp(v, "true", 4);
        any = 2;
    } else {
        any = 1 + varint_len(vl) + vl;
    }
    size_t body = 1 + varint_len(kl) + kl + 1 + varint_len(any) + any;
    pb_tag(b, field, 2);
    pb_varint(b, body);
    pb_bytes(b, 1, k, kl);
    pb_tag(b, 2, 2);
    pb_varint(b, any);
    if (type == 1) {
        pb_bytes(b, 1, v, vl);
    } else {
        pb_tag(b, (unsigned)type, 0);
        pb_varint(b, iv);
    }
}

/* The same from C strings, the key marked "#" for an int or "?" for a bool. */
static void pb_kv(pb_t *b, unsigned field, const char *k, const char *v)
{
    int type = k[0] == '#' ? 3 : k[0] == '?' ? 2 : 1;
    if (type != 1)
        k++;
    pb_kv_n(b, field, type, k, strlen(k), v, strlen(v));
}

static pb_t ex_pb;   /* the exporter's output buffer, kept from batch to batch */
static pb_t ex_head; /* the messages around the spans, written once the spans' length is known */

#define EX_HEADROOM 1024 /* room before the spans for what encloses them */

/* Encodes recs[0..n) as an ExportTraceServiceRequest into ex_pb, from ex_pb.p + *at; -1 on no
 * memory. The spans are written first, after some headroom; then the ResourceSpans and
 * ScopeSpans around them are written with their lengths known, right before them, so the batch
 * is never moved to widen a length. */
static int encode(span_rec_t **recs, size_t n, size_t *at)
{
    pb_t *b = &ex_pb;
    b->len = 0;
    b->oom = 0;
    if (pb_room(b, EX_HEADROOM) < 0)
        return -1;
    b->len = EX_HEADROOM;
    for (size_t i = 0; i < n; i++) {
        const span_rec_t *r = recs[i];
        size_t sp = pb_begin2(b, 2); /* Span */
        pb_bytes(b, 1, r->trace_id, 16);
        pb_bytes(b, 2, r->span_id, 8);
        if (r->has_parent)
            pb_bytes(b, 4, r->parent_id, 8);
        pb_str(b, 5, r->name);
        pb_tag(b, 6, 0);
        pb_varint(b, r->kind); /* 2 SERVER, 3 CLIENT */
        pb_fixed(b, 7, r->start_ns, 8);
        pb_fixed(b, 8, r->end_ns, 8);
        for (size_t off = 0; off + 4 <= r->alen;) {
            const char *a = r->attrs + off;
            size_t kl = (uint8_t)a[1];
            size_t vl = (uint8_t)a[2 + kl] | (size_t)(uint8_t)a[3 + kl] << 8;
            pb_kv_n(b, 9, (uint8_t)a[0], a + 2, kl, a + 4 + kl, vl);
            off += 4 + kl + vl;
        }
        if (r->dropped_attrs) {
            pb_tag(b, 10, 0);
            pb_varint(b, r->dropped_attrs);
        }
        for (uint32_t k = 0; k < r->n_ev; k++) {
            size_t ev = pb_begin(b, 11); /* Span.Event */
            pb_fixed(b, 1, r->ev[k].t_ns, 8);
            pb_bytes(b, 2, "retry", 5);
            char num[20];
            pb_kv_n(b, 3, 3, "remora.attempt", 14, num, rmr_fmt_u64(num, r->ev[k].attempt));
            pb_kv(b, 3, "remora.retry_reason", r->ev[k].reason);
            pb_kv(b, 3, "remora.upstream", r->ev[k].endpoint);
            pb_end(b, ev);
        }
        size_t st = pb_begin(b, 15); /* Status */
        pb_str(b, 2, r->status_msg);
        if (r->error) {
            pb_tag(b, 3, 0);
            pb_varint(b, 2); /* STATUS_CODE_ERROR */
        }
        pb_end(b, st);
        pb_fixed(b, 16, 0x100u | r->flags, 4); /* the sampled flag; "is remote" known */
        pb_end2(b, sp);
    }
    if (b->oom)
        return -1;
    size_t spans = b->len - EX_HEADROOM;
    /* ScopeSpans {1 InstrumentationScope, 2 Span...}: the scope, then its length to come */
    pb_t *h = &ex_head;
    h->len = 0;
    h->oom = 0;
    size_t sc = pb_begin(h, 1);
    pb_str(h, 1, "remora");
    pb_str(h, 2, REMORA_VERSION);
    pb_end(h, sc);
    size_t scope_len = h->len;
    /* ResourceSpans {1 Resource, 2 ScopeSpans} */
    size_t res_at = h->len;
    size_t res = pb_begin(h, 1);
    pb_kv(h, 1, "service.name", ex.t.service);
    pb_kv(h, 1, "service.instance.id", ex.t.node);
    if (ex.t.version[0])
        pb_kv(h, 1, "service.version", ex.t.version);
    pb_end(h, res);
    size_t res_len = h->len - res_at;
    size_t ss_len = scope_len + spans;
    size_t rs_len = res_len + 1 + varint_len(ss_len) + ss_len;
    size_t head = 1 + varint_len(rs_len) + res_len + 1 + varint_len(ss_len) + scope_len;
    if (h->oom || head > EX_HEADROOM)
        return -1;
    /* ExportTraceServiceRequest {1 ResourceSpans}: tag, length, resource, ScopeSpans' tag and
     * length, scope; then the spans already in place */
    uint8_t *o = b->p + EX_HEADROOM - head;
    *o++ = 1 << 3 | 2;
    o += put_varint(o, rs_len);
    memcpy(o, h->p + res_at, res_len);
    o += res_len;
    *o++ = 2 << 3 | 2;
    o += put_varint(o, ss_len);
    memcpy(o, h->p, scope_len);
    *at = EX_HEADROOM - head;
    return 0;
}

static int wait_fd(int fd, short ev, int ms)
{
    struct pollfd p = {fd, ev, 0};
    int r;
    do
        r = poll(&p, 1, ms);
    while (r < 0 && errno == EINTR);
    return r > 0 ? 0 : -1;
}

/* Why the last export failed, for the log line that says it did (the exporter thread's). */
static char ex_why[320];

static int ex_connect(void)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    int g = getaddrinfo(ex.t.host, ex.t.port, &hints, &ai);
    if (g != 0 || !ai) {
        snprintf(ex_why, sizeof(ex_why), "cannot resolve %s: %s", ex.t.host,
                 g ? gai_strerror(g) : "no address");
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        int err = 0;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 &&
            (errno != EINPROGRESS || wait_fd(fd, POLLOUT, EXPORT_TIMEOUT_MS) < 0)) {
            err = errno == EINPROGRESS ? ETIMEDOUT : errno;
        } else {
            socklen_t el = sizeof(err);
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
        }
        if (err) {
            snprintf(ex_why, sizeof(ex_why), "connect: %s", strerror(err));
            close(fd);
            fd = -1;
        }
    } else {
        snprintf(ex_why, sizeof(ex_why), "socket: %s", strerror(errno));
    }
    freeaddrinfo(ai);
    return fd;
}

static void ex_close(void)
{
    if (ex.ssl) {
        SSL_free(ex.ssl);
        ex.ssl = NULL;
    }
    if (ex.fd >= 0)
        close(ex.fd);
    ex.fd = -1;
}

/* Waits for what OpenSSL asked for after a call that returned rc; -1 on an error or timeout. */
static int ssl_wait(int rc)
{
    int e = SSL_get_error(ex.ssl, rc);
    if (e == SSL_ERROR_WANT_READ)
        return wait_fd(ex.fd, POLLIN, EXPORT_TIMEOUT_MS);
    if (e == SSL_ERROR_WANT_WRITE)
        return wait_fd(ex.fd, POLLOUT, EXPORT_TIMEOUT_MS);
    return -1;
}

/* TLS on the connected ex.fd, the peer verified as the target's host; 0 or -1 (logged once
 * per failing stretch by the caller's "export failed" line, with the reason here at debug). */
static int ex_tls_start(void)
{
    if (!ex.ctx) {
        ex.ctx = SSL_CTX_new(TLS_client_method());
        if (!ex.ctx)
            return -1;
        SSL_CTX_set_min_proto_version(ex.ctx, TLS1_2_VERSION);
        SSL_CTX_set_default_verify_paths(ex.ctx);
        SSL_CTX_set_verify(ex.ctx, SSL_VERIFY_PEER, NULL);
    }
    ex.ssl = SSL_new(ex.ctx);
    if (!ex.ssl)
        return -1;
    SSL_set_fd(ex.ssl, ex.fd);
    struct in6_addr a6;
    struct in_addr a4;
    int is_ip = inet_pton(AF_INET, ex.t.host, &a4) == 1 || inet_pton(AF_INET6, ex.t.host, &a6) == 1;
    if (is_ip) {
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ex.ssl), ex.t.host);
    } else {
        SSL_set_tlsext_host_name(ex.ssl, ex.t.host);
        SSL_set1_host(ex.ssl, ex.t.host);
    }
    for (;;) {
        int rc = SSL_connect(ex.ssl);
        if (rc == 1)
            return 0;
        if (ssl_wait(rc) < 0) {
            long v = SSL_get_verify_result(ex.ssl);
            unsigned long e = ERR_peek_last_error();
            snprintf(ex_why, sizeof(ex_why), "TLS: %s",
                     v != X509_V_OK ? X509_verify_cert_error_string(v)
                     : e            ? ERR_reason_error_string(e)
                                    : "handshake failed");
            ERR_clear_error();
            return -1;
        }
    }
}

static int ex_send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n && ex.ssl) {
        size_t w = 0;
        int rc = SSL_write_ex(ex.ssl, c, n, &w);
        if (rc <= 0) {
            if (ssl_wait(rc) < 0)
                return -1;
            continue;
        }
        c += w;
        n -= w;
    }
    while (n) {
        ssize_t k = send(fd, c, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EAGAIN) {
            if (wait_fd(fd, POLLOUT, EXPORT_TIMEOUT_MS) < 0)
                return -1;
            continue;
        }
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        c += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Reads what is there (waiting up to the export timeout for something): bytes read, or -1. */
static ssize_t ex_recv(void *buf, size_t n)
{
    if (!ex.ssl) {
        if (wait_fd(ex.fd, POLLIN, EXPORT_TIMEOUT_MS) < 0)
            return -1;
        ssize_t k = recv(ex.fd, buf, n, 0);
        return k > 0 ? k : -1;
    }
    for (;;) {
        size_t got = 0;
        int rc = SSL_read_ex(ex.ssl, buf, n, &got);
        if (rc == 1)
            return (ssize_t)got;
        if (ssl_wait(rc) < 0)
            return -1;
    }
}

/* POSTs body; 0 when the collector answered 2xx. Keeps the connection when it can. */
static int ex_post(const uint8_t *body, size_t len)
{
    for (int pass = 0; pass < 2; pass++) {
        int fresh = ex.fd < 0;
        if (ex.fd < 0 && (ex.fd = ex_connect()) < 0)
            return -1;
        if (fresh && ex.t.tls && ex_tls_start() < 0) {
            ex_close();
            return -1;
        }
        char head[1024 + sizeof(ex.t.headers)];
        int hn = snprintf(head, sizeof(head),
                          "POST %s HTTP/1.1\r\nhost: %s:%s\r\ncontent-type: "
                          "application/x-protobuf\r\ncontent-length: %zu\r\nuser-agent: remora/%s"
                          "\r\n%s\r\n",
                          ex.t.path, ex.t.host, ex.t.port, len, REMORA_VERSION, ex.t.headers);
        if (hn < 0 || (size_t)hn >= sizeof(head))
            return -1;
        char resp[4096];
        size_t got = 0;
        int status = -1;
        snprintf(ex_why, sizeof(ex_why), "the connection failed while sending");
        if (ex_send_all(ex.fd, head, (size_t)hn) == 0 && ex_send_all(ex.fd, body, len) == 0) {
            /* the head, then the body by content-length (a small protobuf) */
            char *end = NULL;
            while (!end && got < sizeof(resp) - 1) {
                ssize_t k = ex_recv(resp + got, sizeof(resp) - 1 - got);
                if (k <= 0)
                    break;
                got += (size_t)k;
                resp[got] = 0;
                end = strstr(resp, "\r\n\r\n");
            }
            if (!end)
                snprintf(ex_why, sizeof(ex_why), "no HTTP response");
            if (end && sscanf(resp, "HTTP/1.%*d %d", &status) == 1) {
                size_t cl = 0;
                const char *c = strcasestr(resp, "\r\ncontent-length:");
                if (c)
                    cl = strtoul(c + 17, NULL, 10);
                size_t have = got - (size_t)(end + 4 - resp);
                int close_it = strcasestr(resp, "\r\nconnection: close") != NULL;
                while (have < cl) {
                    ssize_t k = ex_recv(resp, sizeof(resp));
                    if (k <= 0)
                        break;
                    have += (size_t)k;
                }
                if (have < cl || close_it)
                    ex_close();
                if (status < 200 || status >= 300)
                    snprintf(ex_why, sizeof(ex_why), "the collector answered %d", status);
                return status >= 200 && status < 300 ? 0 : -1;
            }
        }
        ex_close();
        if (fresh)
            return -1; /* a new connection failed: no second pass */
    }
    return -1;
}

/* Points out[] at the records waiting in the workers' rings (up to cap), without releasing
 * them: release() hands them back once they are encoded. */
static uint32_t taken[RMR_MAX_WORKERS];

static size_t drain(span_rec_t **out, size_t cap)
{
    size_t n = 0;
    for (unsigned i = 0; i < rmr_g.nworkers; i++) {
        taken[i] = 0;
        struct span_q *q = rmr_g.workers[i].spanq;
        if (!q)
            continue;
        uint32_t h = atomic_load_explicit(&q->head, memory_order_relaxed);
        uint32_t t = atomic_load_explicit(&q->tail, memory_order_acquire);
        while (h != t && n < cap) {
            out[n++] = &q->slot[h++ & (SPANQ_SIZE - 1)];
            taken[i]++;
        }
    }
    return n;
}

static void release(void)
{
    for (unsigned i = 0; i < rmr_g.nworkers; i++) {
        struct span_q *q = rmr_g.workers[i].spanq;
        if (q && taken[i])
            atomic_store_explicit(&q->head,
                                  atomic_load_explicit(&q->head, memory_order_relaxed) + taken[i],
                                  memory_order_release);
        taken[i] = 0;
    }
}

static void *exporter_main(void *arg)
{
    (void)arg;
    rmr_log_set_thread("trace");
    span_rec_t **batch = malloc(EXPORT_BATCH_MAX * sizeof(*batch));
    if (!batch)
        return NULL;
    int failing = 0;
    for (;;) {
        pthread_mutex_lock(&ex.lock);
        if (!ex.stop) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            uint64_t ns = (uint64_t)ts.tv_nsec + EXPORT_EVERY_MS * 1000000ull;
            ts.tv_sec += (time_t)(ns / 1000000000ull);
            ts.tv_nsec = (long)(ns % 1000000000ull);
            pthread_cond_timedwait(&ex.cond, &ex.lock, &ts);
        }
        int stop = ex.stop;
        if (ex.retarget) {
            ex.t = ex.next;
            ex.retarget = 0;
            ex_close();
            failing = 0;
        }
        pthread_mutex_unlock(&ex.lock);
        size_t n;
        while ((n = drain(batch, EXPORT_BATCH_MAX)) > 0) {
            size_t off = 0;
            int enc = encode(batch, n, &off);
            release();      /* encoded (or lost to no memory): the workers may reuse the records */
            if (!ex.t.on) { /* tracing on, export nowhere: counted as dropped */
                __atomic_add_fetch(&rmr_spans_dropped, n, __ATOMIC_RELAXED);
                if (n < EXPORT_BATCH_MAX)
                    break;
                continue;
            }
            int ok = -1;
            for (int k = 0; enc == 0 && k < (stop ? 1 : EXPORT_RETRIES) && ok < 0; k++) {
                if (k)
                    usleep(200000u << (k - 1)); /* 200, 400 ms */
                ok = ex_post(ex_pb.p + off, ex_pb.len - off);
            }
            if (ok == 0) {
                __atomic_add_fetch(&rmr_spans_exported, n, __ATOMIC_RELAXED);
                if (failing)
                    RMR_INFO("trace export to %s:%s works again", ex.t.host, ex.t.port);
                failing = 0;
            } else {
                __atomic_add_fetch(&rmr_spans_failed, n, __ATOMIC_RELAXED);
                __atomic_add_fetch(&rmr_span_batches_failed, 1, __ATOMIC_RELAXED);
                if (!failing)
                    RMR_WARN("trace export to %s:%s%s failed (%s): %zu spans dropped (counted; "
                             "requests are not affected)",
                             ex.t.host, ex.t.port, ex.t.path, ex_why[0] ? ex_why : "unknown", n);
                failing = 1;
            }
            if (n < EXPORT_BATCH_MAX)
                break;
        }
        if (stop)
            break;
    }
    free(batch);
    free(ex_pb.p);
    ex_pb = (pb_t){0};
    free(ex_head.p);
    ex_head = (pb_t){0};
    ex_close();
    SSL_CTX_free(ex.ctx);
    ex.ctx = NULL;
    return NULL;
}

/* "http[s]://host[:port][/path]" -> t's host, port, path and tls; -1 when not that form. */
static int parse_url(const char *url, ex_target_t *t)
{
    if (!strncmp(url, "https://", 8))
        t->tls = 1;
    else if (strncmp(url, "http://", 7))
        return -1;
    const char *h = url + (t->tls ? 8 : 7), *slash = strchr(h, '/');
    size_t hl = slash ? (size_t)(slash - h) : strlen(h);
    const char *colon = NULL;
    if (h[0] == '[') {
        const char *rb = memchr(h, ']', hl);
        if (!rb)
            return -1;
        colon = rb + 1 < h + hl && rb[1] == ':' ? rb + 1 : NULL;
        snprintf(t->host, sizeof(t->host), "%.*s", (int)(rb - h - 1), h + 1);
    } else {
        colon = memchr(h, ':', hl);
        snprintf(t->host, sizeof(t->host), "%.*s", (int)((colon ? colon : h + hl) - h), h);
    }
    if (colon)
        snprintf(t->port, sizeof(t->port), "%.*s", (int)(h + hl - colon - 1), colon + 1);
    else
        snprintf(t->port, sizeof(t->port), "%s", t->tls ? "443" : "80");
    snprintf(t->path, sizeof(t->path), "%s", slash ? slash : "/v1/traces");
    return t->host[0] && atoi(t->port) > 0 ? 0 : -1;
}

/* cfg's export target: 1 with *t filled, 0 when cfg exports nowhere (no tracing block, or no
 * export and no control plane), -1 with err when its URL is not one we can use. */
static int target_of(const rmr_config_t *cfg, ex_target_t *t, char *err, size_t errlen)
{
    const Remora__V1__Mesh *mesh = cfg->mesh_pb;
    const Remora__V1__Bootstrap *boot = cfg->boot_pb;
    memset(t, 0, sizeof(*t));
    if (!mesh || !mesh->tracing)
        return 0;
    const char *url = mesh->tracing->export && mesh->tracing->export->otlp_http &&
                              mesh->tracing->export->otlp_http[0]
                          ? mesh->tracing->export->otlp_http
                          : NULL;
    char buf[600];
    if (!url && boot && boot->control && boot->control[0]) {
        snprintf(buf, sizeof(buf), "http://%s/v1/traces", boot->control);
        url = buf;
    }
    if (!url)
        return 0;
    if (parse_url(url, t) < 0) {
        snprintf(err, errlen,
                 "tracing.export.otlp_http: \"%s\" is not http[s]://host[:port][/path]", url);
        return -1;
    }
    t->on = 1;
    const Remora__V1__TraceExport *e = mesh->tracing->export;
    size_t hl = 0;
    for (size_t i = 0; e && i < e->n_headers; i++) {
        int n = snprintf(t->headers + hl, sizeof(t->headers) - hl, "%s: %s\r\n", e->headers[i]->key,
                         e->headers[i]->value ? e->headers[i]->value : "");
        if (n < 0 || (size_t)n >= sizeof(t->headers) - hl) {
            snprintf(err, errlen, "tracing.export.headers: more than %zu bytes",
                     sizeof(t->headers) - 1);
            return -1;
        }
        hl += (size_t)n;
    }
    snprintf(t->service, sizeof(t->service), "%s",
             cfg->service_name ? cfg->service_name : "remora");
    snprintf(t->node, sizeof(t->node), "%s", cfg->node ? cfg->node : "remora");
    for (size_t i = 0; i < cfg->n_labels; i++)
        if (!strcmp(cfg->labels[i].key, "version"))
            snprintf(t->version, sizeof(t->version), "%s", cfg->labels[i].value);
    return 1;
}

static int exporter_run(const ex_target_t *t, char *err, size_t errlen)
{
    for (unsigned i = 0; i < rmr_g.nworkers; i++) {
        if (rmr_g.workers[i].spanq)
            continue;
        struct span_q *q = calloc(1, sizeof(struct span_q));
        if (!q) {
            snprintf(err, errlen, "tracing: out of memory");
            return -1;
        }
        __atomic_store_n(&rmr_g.workers[i].spanq, q, __ATOMIC_RELEASE);
    }
    ex.t = *t;
    ex.stop = 0;
    if (pthread_create(&ex.thread, NULL, exporter_main, NULL) != 0) {
        snprintf(err, errlen, "tracing: cannot start the exporter thread");
        return -1;
    }
    __atomic_store_n(&ex.running, 1, __ATOMIC_RELEASE);
    RMR_INFO("tracing: spans exported to %s://%s:%s%s", t->tls ? "https" : "http", t->host, t->port,
             t->path);
    return 0;
}

int trace_exporter_start(const rmr_config_t *cfg, char *err, size_t errlen)
{
    ex_target_t t;
    int rc = target_of(cfg, &t, err, errlen);
    if (rc < 0)
        return -1;
    if (rc == 0) {
        if (cfg->mesh_pb && ((const Remora__V1__Mesh *)cfg->mesh_pb)->tracing)
            RMR_INFO("tracing: no export and no control plane: trace context is propagated, "
                     "spans are not exported");
        return 0;
    }
    return exporter_run(&t, err, errlen);
}

int trace_exporter_reload(const rmr_config_t *cfg, int apply, char *err, size_t errlen)
{
    ex_target_t t;
    int rc = target_of(cfg, &t, err, errlen);
    if (rc < 0 || !apply)
        return rc < 0 ? -1 : 0;
    if (!ex.running)
        return rc ? exporter_run(&t, err, errlen) : 0;
    pthread_mutex_lock(&ex.lock);
    const ex_target_t *cur = ex.retarget ? &ex.next : &ex.t;
    int changed = memcmp(cur, &t, sizeof(t)) != 0;
    if (changed) {
        ex.next = t;
        ex.retarget = 1;
        pthread_cond_signal(&ex.cond);
    }
    pthread_mutex_unlock(&ex.lock);
    if (changed && t.on)
        RMR_INFO("tracing: spans now exported to %s://%s:%s%s", t.tls ? "https" : "http", t.host,
                 t.port, t.path);
    else if (changed)
        RMR_INFO("tracing: spans are no longer exported (no export and no control plane)");
    return 0;
}

void trace_exporter_stop(void)
{
    if (!ex.running)
        return;
    pthread_mutex_lock(&ex.lock);
    ex.stop = 1;
    pthread_cond_signal(&ex.cond);
    pthread_mutex_unlock(&ex.lock);
    pthread_join(ex.thread, NULL);
    __atomic_store_n(&ex.running, 0, __ATOMIC_RELEASE);
    for (unsigned i = 0; i < rmr_g.nworkers; i++) {
        struct span_q *q = rmr_g.workers[i].spanq;
        if (!q)
            continue;
        free(q);
        rmr_g.workers[i].spanq = NULL;
    }
}

void trace_render_prometheus(rmr_buf_t *b)
{
    uint32_t queued = 0;
    for (unsigned i = 0; i < rmr_g.nworkers; i++) {
        struct span_q *q = rmr_g.workers[i].spanq;
        if (q)
            queued += atomic_load_explicit(&q->tail, memory_order_relaxed) -
                      atomic_load_explicit(&q->head, memory_order_relaxed);
    }
    rmr_buf_printf(b,
                   "# HELP remora_trace_spans_total Spans finished, by outcome of their export.\n"
                   "# TYPE remora_trace_spans_total counter\n"
                   "remora_trace_spans_total{outcome=\"exported\"} %lu\n"
                   "remora_trace_spans_total{outcome=\"dropped\"} %lu\n"
                   "remora_trace_spans_total{outcome=\"failed\"} %lu\n"
                   "# HELP remora_trace_export_failures_total Export batches the collector did "
                   "not take.\n# TYPE remora_trace_export_failures_total counter\n"
                   "remora_trace_export_failures_total %lu\n"
                   "# HELP remora_trace_spans_queued Spans waiting for export.\n"
                   "# TYPE remora_trace_spans_queued gauge\nremora_trace_spans_queued %u\n",
                   (unsigned long)__atomic_load_n(&rmr_spans_exported, __ATOMIC_RELAXED),
                   (unsigned long)__atomic_load_n(&rmr_spans_dropped, __ATOMIC_RELAXED),
                   (unsigned long)__atomic_load_n(&rmr_spans_failed, __ATOMIC_RELAXED),
                   (unsigned long)__atomic_load_n(&rmr_span_batches_failed, __ATOMIC_RELAXED),
                   queued);
}
