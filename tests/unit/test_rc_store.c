/*
 * Unit test of control/rc_store.c, remora-control's trace store, against what rc_store.h says:
 * spans grouped by trace with their parents, the service from service.name ("unknown" when
 * absent), the trace summaries and the listing's filters, attribute values rendered (ints and
 * doubles in decimal, bools, bytes in base64, arrays and key-value lists as JSON), strings cut
 * at RC_STR_MAX on a UTF-8 boundary and invalid UTF-8 made U+FFFD, eviction of whole traces
 * least recently updated first at max_spans, RC_TRACE_MAX_SPANS and the attribute/event caps,
 * refused spans and refused bodies (which change nothing), nesting at RC_OTLP_MAX_DEPTH, and
 * the data directory: replay after a restart, a torn or corrupt tail cut off, a half-written
 * header, the two log segments, a foreign log, the lock. The OTLP bodies are built here with
 * protobuf-c. Prints one line per check; exits 1 when any check fails.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "opentelemetry/proto/collector/trace/v1/trace_service.pb-c.h"
#include "rc_store.h"

#include "check.h"

typedef Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceRequest pb_request_t;
typedef Opentelemetry__Proto__Trace__V1__ResourceSpans pb_resource_spans_t;
typedef Opentelemetry__Proto__Trace__V1__ScopeSpans pb_scope_spans_t;
typedef Opentelemetry__Proto__Trace__V1__Span pb_span_t;
typedef Opentelemetry__Proto__Trace__V1__Span__Event pb_event_t;
typedef Opentelemetry__Proto__Trace__V1__Status pb_status_t;
typedef Opentelemetry__Proto__Resource__V1__Resource pb_resource_t;
typedef Opentelemetry__Proto__Common__V1__KeyValue pb_kv_t;
typedef Opentelemetry__Proto__Common__V1__AnyValue pb_any_t;
typedef Opentelemetry__Proto__Common__V1__ArrayValue pb_array_t;
typedef Opentelemetry__Proto__Common__V1__KeyValueList pb_kvlist_t;

#define T0 1700000000000000000ull /* unix ns */
#define MS 1000000ull
#define CAP 160 /* attributes or events a built span or event can take (over the caps) */

/* ---- building OTLP requests with protobuf-c -------------------------------------------------
 * Everything a request is made of is allocated in an arena, freed when the request is packed. */

static void **arena;
static size_t narena, arena_cap;

static void *A(size_t n)
{
    if (narena == arena_cap) {
        arena_cap = arena_cap ? arena_cap * 2 : 1024;
        arena = realloc(arena, arena_cap * sizeof(*arena));
        if (!arena)
            abort();
    }
    void *p = calloc(1, n ? n : 1);
    if (!p)
        abort();
    arena[narena++] = p;
    return p;
}

static void arena_free(void)
{
    while (narena)
        free(arena[--narena]);
}

static char *S(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(A(n), s, n);
}

/* A string of n copies of unit. */
static char *rep(const char *unit, size_t n)
{
    size_t u = strlen(unit);
    char *s = A(u * n + 1);
    for (size_t i = 0; i < n; i++)
        memcpy(s + i * u, unit, u);
    return s;
}

static const uint8_t *tid(unsigned n)
{
    uint8_t *p = A(RC_TRACE_ID_LEN);
    static const uint8_t base[12] = {0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3,
                                     0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d};
    memcpy(p, base, sizeof(base));
    p[12] = (uint8_t)(n >> 24);
    p[13] = (uint8_t)(n >> 16);
    p[14] = (uint8_t)(n >> 8);
    p[15] = (uint8_t)n;
    return p;
}

static const uint8_t *sid(unsigned n)
{
    uint8_t *p = A(RC_SPAN_ID_LEN);
    p[0] = 0x00;
    p[1] = 0xf0;
    p[2] = 0x67;
    p[3] = 0xaa;
    p[4] = (uint8_t)(n >> 24);
    p[5] = (uint8_t)(n >> 16);
    p[6] = (uint8_t)(n >> 8);
    p[7] = (uint8_t)n;
    return p;
}

/* Trace and span ids as the store hands them out, for comparisons (not in the arena). */
static void tid_of(unsigned n, uint8_t out[RC_TRACE_ID_LEN])
{
    memcpy(out, tid(n), RC_TRACE_ID_LEN);
}

static int sid_is(const uint8_t *id, unsigned n)
{
    return memcmp(id, sid(n), RC_SPAN_ID_LEN) == 0;
}

static pb_any_t *v_new(void)
{
    pb_any_t *v = A(sizeof(*v));
    opentelemetry__proto__common__v1__any_value__init(v);
    return v;
}

static pb_any_t *v_str(const char *s)
{
    pb_any_t *v = v_new();
    v->value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_STRING_VALUE;
    v->string_value = S(s);
    return v;
}

static pb_any_t *v_bool(int b)
{
    pb_any_t *v = v_new();
    v->value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_BOOL_VALUE;
    v->bool_value = b;
    return v;
}

static pb_any_t *v_int(int64_t i)
{
    pb_any_t *v = v_new();
    v->value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_INT_VALUE;
    v->int_value = i;
    return v;
}

static pb_any_t *v_double(double d)
{
    pb_any_t *v = v_new();
    v->value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_DOUBLE_VALUE;
    v->double_value = d;
    return v;
}

static pb_any_t *v_bytes(const void *p, size_t n)
{
    pb_any_t *v = v_new();
    v->value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_BYTES_VALUE;
    v->bytes_value.data = memcpy(A(n), p, n);
    v->bytes_value.len = n;
    return v;
}

/* An array of n values (pb_any_t *). */
static pb_any_t *v_array(size_t n, ...)
{
    pb_any_t *v = v_new();
    pb_array_t *a = A(sizeof(*a));
    opentelemetry__proto__common__v1__array_value__init(a);
    a->values = A(n * sizeof(*a->values));
    va_list ap;
    va_start(ap, n);
    for (size_t i = 0; i < n; i++)
        a->values[i] = va_arg(ap, pb_any_t *);
    va_end(ap);
    a->n_values = n;
    v->value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_ARRAY_VALUE;
    v->array_value = a;
    return v;
}

static pb_kv_t *kv(const char *key, pb_any_t *v)
{
    pb_kv_t *p = A(sizeof(*p));
    opentelemetry__proto__common__v1__key_value__init(p);
    p->key = S(key);
    p->value = v;
    return p;
}

/* A key-value list of n pairs (const char *key, pb_any_t *value). */
static pb_any_t *v_kvlist(size_t n, ...)
{
    pb_any_t *v = v_new();
    pb_kvlist_t *l = A(sizeof(*l));
    opentelemetry__proto__common__v1__key_value_list__init(l);
    l->values = A(n * sizeof(*l->values));
    va_list ap;
    va_start(ap, n);
    for (size_t i = 0; i < n; i++) {
        const char *k = va_arg(ap, const char *);
        l->values[i] = kv(k, va_arg(ap, pb_any_t *));
    }
    va_end(ap);
    l->n_values = n;
    v->value_case = OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_KVLIST_VALUE;
    v->kvlist_value = l;
    return v;
}

static pb_request_t *req_new(void)
{
    pb_request_t *r = A(sizeof(*r));
    opentelemetry__proto__collector__trace__v1__export_trace_service_request__init(r);
    r->resource_spans = A(16 * sizeof(*r->resource_spans));
    return r;
}

/* A new ResourceSpans of r with one ScopeSpans (room for cap spans); service NULL: no
 * service.name attribute (a host.name only). */
static pb_scope_spans_t *resource_cap(pb_request_t *r, const char *service, size_t cap)
{
    pb_resource_spans_t *rs = A(sizeof(*rs));
    opentelemetry__proto__trace__v1__resource_spans__init(rs);
    pb_resource_t *res = A(sizeof(*res));
    opentelemetry__proto__resource__v1__resource__init(res);
    res->attributes = A(2 * sizeof(*res->attributes));
    res->attributes[res->n_attributes++] = kv("host.name", v_str("test-host"));
    if (service)
        res->attributes[res->n_attributes++] = kv("service.name", v_str(service));
    rs->resource = res;
    pb_scope_spans_t *ss = A(sizeof(*ss));
    opentelemetry__proto__trace__v1__scope_spans__init(ss);
    ss->spans = A(cap * sizeof(*ss->spans));
    rs->scope_spans = A(sizeof(*rs->scope_spans));
    rs->scope_spans[0] = ss;
    rs->n_scope_spans = 1;
    r->resource_spans[r->n_resource_spans++] = rs;
    return ss;
}

static pb_scope_spans_t *resource(pb_request_t *r, const char *service)
{
    return resource_cap(r, service, 64);
}

/* A span of trace t, id s, parent p (0: none), starting at start and lasting dur. */
static pb_span_t *span(pb_scope_spans_t *ss, unsigned t, unsigned s, unsigned p, const char *name,
                       uint64_t start, uint64_t dur)
{
    pb_span_t *sp = A(sizeof(*sp));
    opentelemetry__proto__trace__v1__span__init(sp);
    sp->trace_id.data = (uint8_t *)tid(t);
    sp->trace_id.len = RC_TRACE_ID_LEN;
    sp->span_id.data = (uint8_t *)sid(s);
    sp->span_id.len = RC_SPAN_ID_LEN;
    if (p) {
        sp->parent_span_id.data = (uint8_t *)sid(p);
        sp->parent_span_id.len = RC_SPAN_ID_LEN;
    }
    sp->name = S(name);
    sp->kind = OPENTELEMETRY__PROTO__TRACE__V1__SPAN__SPAN_KIND__SPAN_KIND_INTERNAL;
    sp->start_time_unix_nano = start;
    sp->end_time_unix_nano = start + dur;
    ss->spans[ss->n_spans++] = sp;
    return sp;
}

static void span_attr(pb_span_t *sp, const char *key, pb_any_t *v)
{
    if (!sp->attributes)
        sp->attributes = A(CAP * sizeof(*sp->attributes));
    sp->attributes[sp->n_attributes++] = kv(key, v);
}

static void span_status(pb_span_t *sp, int code, const char *message)
{
    pb_status_t *st = A(sizeof(*st));
    opentelemetry__proto__trace__v1__status__init(st);
    st->code = (Opentelemetry__Proto__Trace__V1__Status__StatusCode)code;
    st->message = S(message);
    sp->status = st;
}

static pb_event_t *span_event(pb_span_t *sp, const char *name, uint64_t t)
{
    if (!sp->events)
        sp->events = A(CAP * sizeof(*sp->events));
    pb_event_t *e = A(sizeof(*e));
    opentelemetry__proto__trace__v1__span__event__init(e);
    e->name = S(name);
    e->time_unix_nano = t;
    e->attributes = A(CAP * sizeof(*e->attributes));
    sp->events[sp->n_events++] = e;
    return e;
}

static void event_attr(pb_event_t *e, const char *key, pb_any_t *v)
{
    e->attributes[e->n_attributes++] = kv(key, v);
}

/* A packed body (the caller frees it); frees what the request was built of. */
typedef struct body {
    uint8_t *p;
    size_t len;
} body_t;

static body_t pack(pb_request_t *r)
{
    body_t b;
    b.len =
        opentelemetry__proto__collector__trace__v1__export_trace_service_request__get_packed_size(
            r);
    b.p = malloc(b.len + 1);
    if (!b.p)
        abort();
    opentelemetry__proto__collector__trace__v1__export_trace_service_request__pack(r, b.p);
    arena_free();
    return b;
}

/* A request of one trace t with n spans (ids first, first+1, ...; the first the parent of the
 * rest) of service svc. */
static body_t simple(unsigned t, unsigned first, unsigned n, const char *svc, uint64_t start)
{
    pb_request_t *r = req_new();
    pb_scope_spans_t *ss = resource_cap(r, svc, n);
    for (unsigned i = 0; i < n; i++) {
        char name[32];
        snprintf(name, sizeof(name), "op-%u", first + i);
        span(ss, t, first + i, i ? first : 0, name, start + i * MS, MS);
    }
    return pack(r);
}

/* ---- reading the store back ----------------------------------------------------------------- */

static char err[512];
static uint64_t rejected;

static long add(rc_store_t *s, body_t b)
{
    long n = rc_store_add_otlp_ex(s, b.p, b.len, &rejected, err, sizeof(err));
    free(b.p);
    return n;
}

static rc_store_stats_t stats(rc_store_t *s)
{
    rc_store_stats_t st;
    rc_store_stats(s, &st);
    return st;
}

/* The spans of trace t (NULL when not held; *n their number). */
static rc_span_t *get(rc_store_t *s, unsigned t, size_t *n)
{
    uint8_t id[RC_TRACE_ID_LEN];
    rc_span_t *spans = NULL;
    tid_of(t, id);
    arena_free();
    *n = 0;
    if (rc_store_get(s, id, &spans, n) != 0)
        return NULL;
    return spans;
}

static int held(rc_store_t *s, unsigned t)
{
    size_t n;
    rc_span_t *sp = get(s, t, &n);
    rc_spans_free(sp, n);
    return sp != NULL;
}

static size_t nspans_of(rc_store_t *s, unsigned t)
{
    size_t n;
    rc_span_t *sp = get(s, t, &n);
    rc_spans_free(sp, n);
    return n;
}

static const rc_attr_t *attr(const rc_attr_t *a, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(a[i].key, key))
            return &a[i];
    return NULL;
}

static const char *attr_value(const rc_span_t *sp, const char *key)
{
    const rc_attr_t *a = attr(sp->attrs, sp->nattrs, key);
    return a ? a->value : "(absent)";
}

static int utf8_valid(const char *s)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t n = strlen(s);
    for (size_t i = 0; i < n;) {
        uint8_t c = p[i];
        size_t len = c < 0x80             ? 1
                     : (c & 0xE0) == 0xC0 ? 2
                     : (c & 0xF0) == 0xE0 ? 3
                     : (c & 0xF8) == 0xF0 ? 4
                                          : 0;
        if (!len || i + len > n)
            return 0;
        uint32_t cp = len == 1 ? c : c & (0x7F >> len);
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return 0;
            cp = cp << 6 | (p[i + k] & 0x3F);
        }
        static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += len;
    }
    return 1;
}

static int all_of(const char *s, char c)
{
    for (; *s; s++)
        if (*s != c)
            return 0;
    return 1;
}

/* ---- the tests --------------------------------------------------------------------------------
 */

static void test_grouping(void)
{
    printf("-- spans grouped by trace, parents, services, summaries, the listing\n");
    rc_store_t *s = rc_store_new(1000, NULL, err, sizeof(err));
    CHECK(s != NULL);
    CHECK_STR(err, "");

    pb_request_t *r = req_new();
    pb_scope_spans_t *fe = resource(r, "frontend");
    pb_scope_spans_t *be = resource(r, "backend");
    pb_scope_spans_t *anon = resource(r, NULL);
    pb_span_t *sp = span(fe, 1, 1, 0, "GET /", T0, 50 * MS);
    sp->kind = OPENTELEMETRY__PROTO__TRACE__V1__SPAN__SPAN_KIND__SPAN_KIND_SERVER;
    sp = span(fe, 1, 2, 1, "call backend", T0 + 1 * MS, 40 * MS);
    sp->kind = OPENTELEMETRY__PROTO__TRACE__V1__SPAN__SPAN_KIND__SPAN_KIND_CLIENT;
    span(anon, 2, 10, 0, "job", T0 + 100 * MS, 5 * MS);
    sp = span(be, 1, 3, 2, "handle", T0 + 2 * MS, 30 * MS);
    span_status(sp, RC_STATUS_ERROR, "boom");
    sp = span(be, 1, 4, 3, "db", T0 + 3 * MS, 60 * MS); /* ends last: T0 + 63 ms */
    sp->kind = 9;                                       /* out of range: stored as 0 */
    span_status(sp, 7, "odd code");                     /* out of range: stored as UNSET */
    CHECK_INT(add(s, pack(r)), 5);
    CHECK_INT(rejected, 0);
    CHECK_STR(err, "");
    rc_store_stats_t st = stats(s);
    CHECK_INT(st.spans, 5);
    CHECK_INT(st.traces, 2);
    CHECK_INT(st.accepted, 5);
    CHECK_INT(st.max_spans, 1000);

    rc_trace_summary_t *sums = NULL;
    long n = rc_store_list(s, NULL, 0, 0, 100, &sums);
    CHECK_INT(n, 2);
    uint8_t id1[RC_TRACE_ID_LEN], id2[RC_TRACE_ID_LEN];
    tid_of(1, id1);
    tid_of(2, id2);
    if (n == 2) {
        /* newest first: trace 2 started later */
        CHECK(memcmp(sums[0].trace_id, id2, RC_TRACE_ID_LEN) == 0);
        CHECK(memcmp(sums[1].trace_id, id1, RC_TRACE_ID_LEN) == 0);
        CHECK_STR(sums[0].root_service, "unknown");
        CHECK_STR(sums[0].root_name, "job");
        CHECK_INT(sums[0].spans, 1);
        CHECK_INT(sums[0].error, 0);
        CHECK_INT(sums[0].nservices, 1);
        CHECK_STR(sums[0].services[0], "unknown");
        CHECK_INT(sums[0].duration_ns, 5 * MS);
        CHECK_STR(sums[1].root_service, "frontend");
        CHECK_STR(sums[1].root_name, "GET /");
        CHECK_INT(sums[1].spans, 4);
        CHECK_INT(sums[1].error, 1);
        CHECK_INT(sums[1].start_ns, T0);
        CHECK_INT(sums[1].duration_ns, 63 * MS);
        CHECK_INT(sums[1].nservices, 2);
        if (sums[1].nservices == 2) {
            CHECK_STR(sums[1].services[0], "backend");
            CHECK_STR(sums[1].services[1], "frontend");
        }
    }
    rc_summaries_free(sums, (size_t)n);

    size_t ns;
    rc_span_t *spans = get(s, 1, &ns);
    CHECK(spans != NULL);
    CHECK_INT(ns, 4);
    if (spans && ns == 4) {
        /* sorted by start */
        CHECK_STR(spans[0].name, "GET /");
        CHECK_STR(spans[1].name, "call backend");
        CHECK_STR(spans[2].name, "handle");
        CHECK_STR(spans[3].name, "db");
        CHECK(memcmp(spans[2].trace_id, id1, RC_TRACE_ID_LEN) == 0);
        CHECK(sid_is(spans[0].span_id, 1));
        CHECK_INT(spans[0].has_parent, 0);
        uint8_t zero[RC_SPAN_ID_LEN] = {0};
        CHECK(memcmp(spans[0].parent_id, zero, RC_SPAN_ID_LEN) == 0);
        CHECK_INT(spans[1].has_parent, 1);
        CHECK(sid_is(spans[1].parent_id, 1));
        CHECK(sid_is(spans[2].parent_id, 2));
        CHECK(sid_is(spans[3].parent_id, 3));
        CHECK_STR(spans[0].service, "frontend");
        CHECK_STR(spans[2].service, "backend");
        CHECK_STR(rc_span_kind_name(spans[0].kind), "SERVER");
        CHECK_STR(rc_span_kind_name(spans[1].kind), "CLIENT");
        CHECK_INT(spans[3].kind, 0);
        CHECK_INT(spans[2].status_code, RC_STATUS_ERROR);
        CHECK_STR(rc_status_name(spans[2].status_code), "error");
        CHECK_STR(spans[2].status_message, "boom");
        CHECK_INT(spans[3].status_code, RC_STATUS_UNSET);
        CHECK_STR(spans[0].status_message, "");
        CHECK_INT(spans[1].start_ns, T0 + MS);
        CHECK_INT(spans[1].end_ns, T0 + 41 * MS);
        CHECK_INT(spans[0].nattrs, 0);
        CHECK_INT(spans[0].nevents, 0);
    }
    rc_spans_free(spans, ns);
    spans = get(s, 2, &ns);
    CHECK_INT(ns, 1);
    if (spans && ns == 1)
        CHECK_STR(spans[0].service, "unknown");
    rc_spans_free(spans, ns);

    /* not held */
    uint8_t id9[RC_TRACE_ID_LEN];
    tid_of(9, id9);
    spans = (rc_span_t *)&ns;
    ns = 5;
    CHECK_INT(rc_store_get(s, id9, &spans, &ns), -ENOENT);
    CHECK(spans == NULL && ns == 0);

    /* the filters */
    n = rc_store_list(s, "backend", 0, 0, 100, &sums);
    CHECK_INT(n, 1);
    if (n == 1)
        CHECK(memcmp(sums[0].trace_id, id1, RC_TRACE_ID_LEN) == 0);
    rc_summaries_free(sums, (size_t)n);
    n = rc_store_list(s, "unknown", 0, 0, 100, &sums);
    CHECK_INT(n, 1);
    if (n == 1)
        CHECK(memcmp(sums[0].trace_id, id2, RC_TRACE_ID_LEN) == 0);
    rc_summaries_free(sums, (size_t)n);
    n = rc_store_list(s, "nobody", 0, 0, 100, &sums);
    CHECK_INT(n, 0);
    CHECK(sums == NULL);
    n = rc_store_list(s, "", 1, 0, 100, &sums);
    CHECK_INT(n, 1);
    if (n == 1)
        CHECK(memcmp(sums[0].trace_id, id1, RC_TRACE_ID_LEN) == 0);
    rc_summaries_free(sums, (size_t)n);
    n = rc_store_list(s, NULL, 0, T0 + 50 * MS, 100, &sums);
    CHECK_INT(n, 1);
    if (n == 1)
        CHECK(memcmp(sums[0].trace_id, id2, RC_TRACE_ID_LEN) == 0);
    rc_summaries_free(sums, (size_t)n);
    n = rc_store_list(s, NULL, 0, T0, 1, &sums);
    CHECK_INT(n, 1);
    if (n == 1)
        CHECK(memcmp(sums[0].trace_id, id2, RC_TRACE_ID_LEN) == 0);
    rc_summaries_free(sums, (size_t)n);

    /* The root is the earliest span whose parent is not in the trace: here span 20 (its parent
     * never came), not the later span 21 without a parent; and service.name as an int, or "". */
    r = req_new();
    pb_scope_spans_t *a = resource(r, "late-root");
    span(a, 3, 21, 0, "no parent", T0 + 20, MS);
    span(a, 3, 20, 99, "orphan", T0 + 10, MS);
    span(a, 3, 22, 20, "child of the orphan", T0 + 5, MS);
    pb_scope_spans_t *num = resource(r, NULL);
    r->resource_spans[1]->resource->attributes[1] = kv("service.name", v_int(42));
    r->resource_spans[1]->resource->n_attributes = 2;
    span(num, 4, 1, 0, "numbered", T0, MS);
    pb_scope_spans_t *empty = resource(r, "");
    span(empty, 5, 1, 0, "empty service", T0, MS);
    CHECK_INT(add(s, pack(r)), 5);
    uint8_t id3[RC_TRACE_ID_LEN];
    tid_of(3, id3);
    n = rc_store_list(s, "late-root", 0, 0, 100, &sums);
    CHECK_INT(n, 1);
    if (n == 1) {
        CHECK(memcmp(sums[0].trace_id, id3, RC_TRACE_ID_LEN) == 0);
        CHECK_STR(sums[0].root_name, "orphan");
        CHECK_INT(sums[0].start_ns, T0 + 5);
    }
    rc_summaries_free(sums, (size_t)n);
    spans = get(s, 4, &ns);
    CHECK(ns == 1 && !strcmp(spans[0].service, "42"));
    rc_spans_free(spans, ns);
    spans = get(s, 5, &ns);
    CHECK(ns == 1 && !strcmp(spans[0].service, "unknown"));
    rc_spans_free(spans, ns);

    /* a span id sent again: ignored, counted, not logged as refused */
    CHECK_INT(add(s, simple(1, 1, 1, "frontend", T0)), 0);
    CHECK_INT(rejected, 0);
    CHECK_STR(err, "");
    CHECK_INT(stats(s).duplicates, 1);
    CHECK_INT(nspans_of(s, 1), 4);
    /* the same span id in another trace is another span */
    CHECK_INT(add(s, simple(6, 1, 1, "frontend", T0)), 1);
    rc_store_free(s);
}

static void test_attributes(void)
{
    printf("-- attribute values rendered as rc_store.h says\n");
    rc_store_t *s = rc_store_new(1000, NULL, err, sizeof(err));
    pb_request_t *r = req_new();
    pb_span_t *sp = span(resource(r, "attrs"), 1, 1, 0, "attrs", T0, MS);
    span_attr(sp, "str", v_str("hello \"world\"\t"));
    span_attr(sp, "t", v_bool(1));
    span_attr(sp, "f", v_bool(0));
    span_attr(sp, "int", v_int(-42));
    span_attr(sp, "int_min", v_int(INT64_MIN));
    span_attr(sp, "dbl", v_double(1.5));
    span_attr(sp, "dbl_tenth", v_double(0.1));
    span_attr(sp, "dbl_big", v_double(1e300));
    span_attr(sp, "dbl_third", v_double(1.0 / 3));
    span_attr(sp, "nan", v_double(NAN));
    span_attr(sp, "inf", v_double(INFINITY));
    span_attr(sp, "ninf", v_double(-INFINITY));
    span_attr(sp, "bytes3", v_bytes("\x00\xff\x10", 3));
    span_attr(sp, "bytes2", v_bytes("hi", 2));
    span_attr(sp, "bytes1", v_bytes("h", 1));
    span_attr(sp, "bytes0", v_bytes("", 0));
    span_attr(sp, "arr",
              v_array(6, v_int(1), v_str("x\"y\\z\t"), v_bool(1), v_double(2.5), v_new(),
                      v_bytes("hi", 2)));
    span_attr(sp, "arr_special", v_array(2, v_double(NAN), v_double(-INFINITY)));
    span_attr(sp, "arr_empty", v_array(0));
    span_attr(sp, "kv",
              v_kvlist(3, "k", v_str("v"), "n", v_int(7), "in",
                       v_array(2, v_bool(0), v_kvlist(1, "deep", v_str("\x01")))));
    span_attr(sp, "kv_empty", v_kvlist(0));
    span_attr(sp, "unset", v_new());
    span_attr(sp, "no_value", NULL);
    pb_event_t *ev = span_event(sp, "retry", T0 + 5);
    event_attr(ev, "attempt", v_int(2));
    event_attr(ev, "why", v_str("timeout"));
    span_event(sp, "done", T0 + 9);
    CHECK_INT(add(s, pack(r)), 1);

    size_t n;
    rc_span_t *spans = get(s, 1, &n);
    CHECK_INT(n, 1);
    if (!spans || n != 1) {
        rc_store_free(s);
        return;
    }
    const rc_span_t *x = &spans[0];
    CHECK_INT(x->nattrs, 23);
    CHECK_STR(x->attrs[0].key, "str"); /* in the order sent */
    CHECK_STR(x->attrs[22].key, "no_value");
    CHECK_STR(attr_value(x, "str"), "hello \"world\"\t");
    CHECK_STR(attr_value(x, "t"), "true");
    CHECK_STR(attr_value(x, "f"), "false");
    CHECK_STR(attr_value(x, "int"), "-42");
    CHECK_STR(attr_value(x, "int_min"), "-9223372036854775808");
    CHECK_STR(attr_value(x, "dbl"), "1.5");
    CHECK_STR(attr_value(x, "dbl_tenth"), "0.1");
    CHECK_STR(attr_value(x, "dbl_big"), "1e+300");
    CHECK(strtod(attr_value(x, "dbl_third"), NULL) == 1.0 / 3);
    CHECK_STR(attr_value(x, "nan"), "NaN");
    CHECK_STR(attr_value(x, "inf"), "Infinity");
    CHECK_STR(attr_value(x, "ninf"), "-Infinity");
    CHECK_STR(attr_value(x, "bytes3"), "AP8Q");
    CHECK_STR(attr_value(x, "bytes2"), "aGk=");
    CHECK_STR(attr_value(x, "bytes1"), "aA==");
    CHECK_STR(attr_value(x, "bytes0"), "");
    CHECK_STR(attr_value(x, "arr"), "[1,\"x\\\"y\\\\z\\t\",true,2.5,null,\"aGk=\"]");
    CHECK_STR(attr_value(x, "arr_special"), "[\"NaN\",\"-Infinity\"]");
    CHECK_STR(attr_value(x, "arr_empty"), "[]");
    CHECK_STR(attr_value(x, "kv"), "{\"k\":\"v\",\"n\":7,\"in\":[false,{\"deep\":\"\\u0001\"}]}");
    CHECK_STR(attr_value(x, "kv_empty"), "{}");
    CHECK_STR(attr_value(x, "unset"), "");
    CHECK_STR(attr_value(x, "no_value"), "");
    CHECK_INT(x->nevents, 2);
    if (x->nevents == 2) {
        CHECK_STR(x->events[0].name, "retry");
        CHECK_INT(x->events[0].time_ns, T0 + 5);
        CHECK_INT(x->events[0].nattrs, 2);
        CHECK_STR(attr(x->events[0].attrs, x->events[0].nattrs, "attempt")->value, "2");
        CHECK_STR(attr(x->events[0].attrs, x->events[0].nattrs, "why")->value, "timeout");
        CHECK_STR(x->events[1].name, "done");
        CHECK_INT(x->events[1].nattrs, 0);
    }
    rc_spans_free(spans, n);

    /* at most RC_SPAN_MAX_ATTRS attributes and RC_SPAN_MAX_EVENTS events (each with at most
     * RC_SPAN_MAX_ATTRS attributes): the first ones */
    r = req_new();
    sp = span(resource(r, "wide"), 2, 1, 0, "wide", T0, MS);
    char key[32];
    for (int i = 0; i < RC_SPAN_MAX_ATTRS + 5; i++) {
        snprintf(key, sizeof(key), "a%d", i);
        span_attr(sp, key, v_int(i));
    }
    for (int e = 0; e < RC_SPAN_MAX_EVENTS + 3; e++) {
        snprintf(key, sizeof(key), "e%d", e);
        ev = span_event(sp, key, T0 + (uint64_t)e);
        for (int i = 0; i < (e == 0 ? RC_SPAN_MAX_ATTRS + 2 : 1); i++) {
            snprintf(key, sizeof(key), "x%d", i);
            event_attr(ev, key, v_int(i));
        }
    }
    CHECK_INT(add(s, pack(r)), 1);
    spans = get(s, 2, &n);
    if (spans && n == 1) {
        CHECK_INT(spans[0].nattrs, RC_SPAN_MAX_ATTRS);
        CHECK_STR(spans[0].attrs[RC_SPAN_MAX_ATTRS - 1].key, "a127");
        CHECK_INT(spans[0].nevents, RC_SPAN_MAX_EVENTS);
        CHECK_STR(spans[0].events[RC_SPAN_MAX_EVENTS - 1].name, "e127");
        CHECK_INT(spans[0].events[0].nattrs, RC_SPAN_MAX_ATTRS);
        CHECK_INT(spans[0].events[1].nattrs, 1);
    } else {
        CHECK(!"trace 2 held");
    }
    rc_spans_free(spans, n);
    rc_store_free(s);
}

static void test_strings(void)
{
    printf("-- long strings cut at RC_STR_MAX on a UTF-8 boundary, invalid UTF-8 made U+FFFD\n");
    rc_store_t *s = rc_store_new(1000, NULL, err, sizeof(err));
    pb_request_t *r = req_new();
    pb_scope_spans_t *ss = resource(r, rep("s", RC_STR_MAX + 7));
    pb_span_t *sp = span(ss, 1, 1, 0, rep("n", RC_STR_MAX + 100), T0, MS);
    span_status(sp, RC_STATUS_OK, rep("m", RC_STR_MAX * 2));
    /* "a" then 2-byte characters: byte RC_STR_MAX is the middle of one */
    char *two = A(RC_STR_MAX + 2);
    two[0] = 'a';
    memcpy(two + 1, rep("\xc3\xa9", RC_STR_MAX / 2), RC_STR_MAX);
    span_attr(sp, "two", v_str(two));
    span_attr(sp, "three", v_str(rep("\xe2\x82\xac", 6000))); /* euro signs */
    span_attr(sp, "four", v_str(rep("\xf0\x9f\x98\x80", 5000)));
    span_attr(sp, rep("k", RC_STR_MAX + 1), v_str("v"));
    span_attr(sp, "bytes", v_bytes(rep("\xaa", 12300), 12300)); /* base64: 16400 */
    span_attr(sp, "arr", v_array(2, v_str(rep("x", RC_STR_MAX)), v_int(1)));
    pb_event_t *ev = span_event(sp, rep("e", RC_STR_MAX + 1), T0);
    event_attr(ev, "ek", v_str(rep("\xc3\xa9", RC_STR_MAX)));
    CHECK_INT(add(s, pack(r)), 1);
    size_t n;
    rc_span_t *spans = get(s, 1, &n);
    if (spans && n == 1) {
        const rc_span_t *x = &spans[0];
        CHECK_INT(strlen(x->service), RC_STR_MAX);
        CHECK(all_of(x->service, 's'));
        CHECK_INT(strlen(x->name), RC_STR_MAX);
        CHECK(all_of(x->name, 'n'));
        CHECK_INT(strlen(x->status_message), RC_STR_MAX);
        const char *v = attr_value(x, "two");
        CHECK_INT(strlen(v), RC_STR_MAX - 1); /* the cut character is left out whole */
        CHECK(utf8_valid(v));
        CHECK(!strcmp(v + strlen(v) - 2, "\xc3\xa9"));
        v = attr_value(x, "three");
        CHECK_INT(strlen(v), RC_STR_MAX / 3 * 3);
        CHECK(utf8_valid(v));
        v = attr_value(x, "four");
        CHECK_INT(strlen(v), RC_STR_MAX); /* 4096 whole characters */
        CHECK(utf8_valid(v));
        CHECK_INT(strlen(x->attrs[3].key), RC_STR_MAX);
        v = attr_value(x, "bytes");
        CHECK_INT(strlen(v), RC_STR_MAX);
        CHECK_INT(strlen(attr_value(x, "arr")), RC_STR_MAX);
        CHECK_INT(x->nevents, 1);
        if (x->nevents == 1) {
            CHECK_INT(strlen(x->events[0].name), RC_STR_MAX);
            CHECK_INT(strlen(x->events[0].attrs[0].value), RC_STR_MAX);
            CHECK(utf8_valid(x->events[0].attrs[0].value));
        }
    } else {
        CHECK(!"trace 1 held");
    }
    rc_spans_free(spans, n);

    r = req_new();
    ss = resource(r, "svc\xff");
    sp = span(ss, 2, 1, 0,
              "a\xff"
              "b",
              T0, MS);
    span_status(sp, RC_STATUS_ERROR, "msg \xc3(");
    span_attr(sp, "overlong", v_str("\xc0\xaf"));
    span_attr(sp, "surrogate", v_str("\xed\xa0\x80"));
    span_attr(sp, "too_big", v_str("\xf4\x90\x80\x80"));
    span_attr(sp, "cut", v_str("x\xe2\x82"));
    span_attr(sp, "lone", v_str("\x80z"));
    span_attr(sp, "valid", v_str("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xef\xbf\xbf"));
    span_attr(sp, "k\xfe", v_str("key"));
    span_attr(sp, "arr", v_array(1, v_str("\xff")));
    span_attr(sp, "kv", v_kvlist(1, "\xfe", v_str("v")));
    ev = span_event(sp, "ev\xf8", T0);
    event_attr(ev, "ek", v_str("\xc1\xbf"));
    span(ss, 2, 2, 1, "fine", T0 + 1, MS);
    CHECK_INT(add(s, pack(r)), 2);
    CHECK_INT(rejected, 0);
    spans = get(s, 2, &n);
    if (spans && n == 2) {
        const rc_span_t *x = &spans[0];
#define FFFD "\xef\xbf\xbd"
        CHECK_STR(x->service, "svc" FFFD);
        CHECK_STR(x->name, "a" FFFD "b");
        CHECK_STR(x->status_message, "msg " FFFD "(");
        CHECK_STR(attr_value(x, "overlong"), FFFD FFFD);
        CHECK_STR(attr_value(x, "surrogate"), FFFD FFFD FFFD);
        CHECK_STR(attr_value(x, "too_big"), FFFD FFFD FFFD FFFD);
        CHECK_STR(attr_value(x, "cut"), "x" FFFD FFFD);
        CHECK_STR(attr_value(x, "lone"), FFFD "z");
        CHECK_STR(attr_value(x, "valid"), "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xef\xbf\xbf");
        CHECK_STR(attr_value(x, "k" FFFD), "key");
        CHECK_STR(attr_value(x, "arr"), "[\"" FFFD "\"]");
        CHECK_STR(attr_value(x, "kv"), "{\"" FFFD "\":\"v\"}");
        CHECK_STR(x->events[0].name, "ev" FFFD);
        CHECK_STR(x->events[0].attrs[0].value, FFFD FFFD);
        CHECK_STR(spans[1].service, "svc" FFFD);
#undef FFFD
    } else {
        CHECK(!"trace 2 held with 2 spans");
    }
    rc_spans_free(spans, n);

    rc_trace_summary_t *sums;
    long m = rc_store_list(s, "svc\xef\xbf\xbd", 0, 0, 10, &sums);
    CHECK_INT(m, 1);
    if (m == 1)
        CHECK(utf8_valid(sums[0].root_service) && utf8_valid(sums[0].root_name));
    rc_summaries_free(sums, (size_t)m);
    rc_store_free(s);
}

static void test_eviction(void)
{
    printf("-- max_spans: whole traces evicted, least recently updated first\n");
    rc_store_t *s = rc_store_new(10, NULL, err, sizeof(err));
    CHECK_INT(add(s, simple(1, 1, 3, "a", T0)), 3);
    CHECK_INT(add(s, simple(2, 1, 3, "a", T0)), 3);
    CHECK_INT(add(s, simple(3, 1, 3, "a", T0)), 3);
    CHECK_INT(add(s, simple(1, 4, 1, "a", T0)), 1); /* trace 1 moves to the back: 2, 3, 1 */
    rc_store_stats_t st = stats(s);
    CHECK_INT(st.spans, 10);
    CHECK_INT(st.evicted_traces, 0);
    CHECK_INT(add(s, simple(4, 1, 2, "a", T0)), 2); /* 12 spans: trace 2 goes */
    st = stats(s);
    CHECK(!held(s, 2));
    CHECK(held(s, 1) && held(s, 3) && held(s, 4));
    CHECK_INT(nspans_of(s, 1), 4);
    CHECK_INT(st.spans, 9);
    CHECK_INT(st.traces, 3);
    CHECK_INT(st.evicted_traces, 1);
    CHECK_INT(st.evicted_spans, 3);
    CHECK_INT(add(s, simple(5, 1, 2, "a", T0)), 2); /* 11: trace 3 goes, not 1 */
    st = stats(s);
    CHECK(!held(s, 3));
    CHECK(held(s, 1) && held(s, 4) && held(s, 5));
    CHECK_INT(st.spans, 8);
    CHECK_INT(st.evicted_traces, 2);
    CHECK_INT(st.evicted_spans, 6);
    /* one body over several traces evicts as many as it takes */
    pb_request_t *r = req_new();
    pb_scope_spans_t *ss = resource(r, "b");
    span(ss, 6, 1, 0, "x", T0, MS);
    span(ss, 7, 1, 0, "x", T0, MS);
    span(ss, 6, 2, 1, "x", T0, MS);
    span(ss, 8, 1, 0, "x", T0, MS);
    span(ss, 8, 2, 1, "x", T0, MS);
    CHECK_INT(add(s, pack(r)), 5); /* 13: traces 1 (4 spans) goes: 9 */
    st = stats(s);
    CHECK(!held(s, 1));
    CHECK(held(s, 4) && held(s, 5) && held(s, 6) && held(s, 7) && held(s, 8));
    CHECK_INT(st.spans, 9);
    CHECK_INT(st.traces, 5);
    CHECK_INT(st.evicted_traces, 3);
    CHECK_INT(st.evicted_spans, 10);
    CHECK_INT(st.accepted, 19);
    rc_trace_summary_t *sums;
    long n = rc_store_list(s, NULL, 0, 0, 100, &sums);
    CHECK_INT(n, 5);
    rc_summaries_free(sums, (size_t)n);
    rc_store_free(s);
}

static void test_trace_cap(void)
{
    printf("-- RC_TRACE_MAX_SPANS spans per trace\n");
    rc_store_t *s = rc_store_new(100000, NULL, err, sizeof(err));
    long total = 0;
    for (unsigned first = 1; first <= RC_TRACE_MAX_SPANS; first += 1000)
        total += add(s, simple(1, first, 1000, "big", T0));
    CHECK_INT(total, RC_TRACE_MAX_SPANS);
    CHECK_INT(nspans_of(s, 1), RC_TRACE_MAX_SPANS);
    pb_request_t *r = req_new();
    pb_scope_spans_t *ss = resource(r, "big");
    for (unsigned i = 0; i < 5; i++)
        span(ss, 1, RC_TRACE_MAX_SPANS + 1 + i, 1, "one too many", T0, MS);
    span(ss, 2, 1, 0, "another trace", T0, MS);
    span(ss, 1, 1, 0, "a duplicate, not a refusal", T0, MS);
    CHECK_INT(add(s, pack(r)), 1);
    CHECK_INT(rejected, 5);
    CHECK(strstr(err, "5 spans rejected") != NULL);
    CHECK(strstr(err, "trace holds 10000 spans already") != NULL);
    rc_store_stats_t st = stats(s);
    CHECK_INT(st.rejected, 5);
    CHECK_INT(st.duplicates, 1);
    CHECK_INT(st.spans, RC_TRACE_MAX_SPANS + 1);
    CHECK_INT(nspans_of(s, 1), RC_TRACE_MAX_SPANS);
    rc_trace_summary_t *sums;
    long n = rc_store_list(s, "big", 0, 0, 10, &sums);
    CHECK_INT(n, 2);
    CHECK(n == 2 && (sums[0].spans == RC_TRACE_MAX_SPANS || sums[1].spans == RC_TRACE_MAX_SPANS));
    rc_summaries_free(sums, (size_t)n);
    rc_store_free(s);
}

/* An AnyValue of depth arrays nested around a string. */
static pb_any_t *nested(int depth)
{
    pb_any_t *v = v_str("leaf");
    for (int i = 0; i < depth; i++)
        v = v_array(1, v);
    return v;
}

static body_t nested_body(unsigned t, int depth)
{
    pb_request_t *r = req_new();
    pb_span_t *sp = span(resource(r, "deep"), t, 1, 0, "deep", T0, MS);
    span_attr(sp, "deep", nested(depth));
    return pack(r);
}

static void check_refused(rc_store_t *s, const char *what, const void *p, size_t len)
{
    rc_store_stats_t before = stats(s), after;
    rejected = 99;
    err[0] = 0;
    long n = rc_store_add_otlp_ex(s, p, len, &rejected, err, sizeof(err));
    after = stats(s);
    printf("     %s: %s\n", what, err);
    CHECK_INT(n, -1);
    CHECK(err[0] != 0);
    CHECK_INT(rejected, 0);
    CHECK_INT(after.bad_bodies, before.bad_bodies + 1);
    CHECK(after.spans == before.spans && after.traces == before.traces &&
          after.accepted == before.accepted && after.rejected == before.rejected &&
          after.log_records == before.log_records);
}

static void test_refused(void)
{
    printf("-- refused spans, refused bodies\n");
    rc_store_t *s = rc_store_new(1000, NULL, err, sizeof(err));
    pb_request_t *r = req_new();
    pb_scope_spans_t *ss = resource(r, "ids");
    pb_span_t *sp = span(ss, 1, 1, 0, "trace id of 15", T0, MS);
    sp->trace_id.len = 15;
    sp = span(ss, 1, 2, 0, "no span id", T0, MS);
    sp->span_id.len = 0;
    sp = span(ss, 1, 3, 0, "parent of 4", T0, MS);
    sp->parent_span_id.data = (uint8_t *)sid(1);
    sp->parent_span_id.len = 4;
    sp = span(ss, 1, 4, 0, "zero trace id", T0, MS);
    sp->trace_id.data = A(RC_TRACE_ID_LEN);
    sp = span(ss, 1, 5, 0, "zero span id", T0, MS);
    sp->span_id.data = A(RC_SPAN_ID_LEN);
    sp = span(ss, 1, 6, 0, "zero parent: a root", T0, MS);
    sp->parent_span_id.data = A(RC_SPAN_ID_LEN);
    sp->parent_span_id.len = RC_SPAN_ID_LEN;
    CHECK_INT(add(s, pack(r)), 1);
    CHECK_INT(rejected, 5);
    CHECK_STR(err, "5 spans rejected: span with a trace_id of 15 bytes (want 16, not all zero)");
    rc_store_stats_t st = stats(s);
    CHECK_INT(st.rejected, 5);
    CHECK_INT(st.spans, 1);
    size_t n;
    rc_span_t *spans = get(s, 1, &n);
    CHECK(n == 1 && spans[0].has_parent == 0 && sid_is(spans[0].span_id, 6));
    rc_spans_free(spans, n);
    /* with rc_store_add_otlp (no count): the same answer */
    r = req_new();
    sp = span(resource(r, "ids"), 2, 1, 0, "span id of 9", T0, MS);
    sp->span_id.data = memcpy(A(9), sid(1), RC_SPAN_ID_LEN);
    sp->span_id.data[8] = 1;
    sp->span_id.len = 9;
    body_t b9 = pack(r);
    CHECK_INT(rc_store_add_otlp(s, b9.p, b9.len, err, sizeof(err)), 0);
    CHECK_STR(err, "1 span rejected: span with a span_id of 9 bytes (want 8, not all zero)");
    free(b9.p);

    /* Bodies that are not requests: nothing changes but bad_bodies. */
    body_t good = simple(3, 1, 3, "good", T0);
    check_refused(s, "truncated by one byte", good.p, good.len - 1);
    check_refused(s, "truncated in half", good.p, good.len / 2);
    check_refused(s, "a length past the end",
                  "\x0a\x05"
                  "abc",
                  5);
    check_refused(s, "a group wire type", "\x0b\x0c", 2);
    check_refused(s, "field number 0", "\x02\x00", 2);
    check_refused(s, "a varint that does not end", "\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
                  11);
    uint8_t *bad = malloc(good.len + 4);
    memcpy(bad, good.p, good.len);
    memcpy(bad + good.len, "\x0a\x7f\x00\x00", 4); /* a ResourceSpans cut short, at the end */
    check_refused(s, "garbage after a good request", bad, good.len + 4);
    free(bad);
    body_t deep = nested_body(4, 40);
    check_refused(s, "nested 40 deep", deep.p, deep.len);
    free(deep.p);
    size_t big = RC_LOG_RECORD_MAX + 1;
    uint8_t *huge = calloc(1, big);
    check_refused(s, "over RC_LOG_RECORD_MAX", huge, big);
    free(huge);
    CHECK_INT(stats(s).bad_bodies, 9);
    CHECK(!held(s, 3));
    /* and the good body still goes in */
    CHECK_INT(add(s, good), 3);
    CHECK_INT(stats(s).spans, 4);
    /* an empty body is an empty request */
    CHECK_INT(rc_store_add_otlp_ex(s, "", 0, &rejected, err, sizeof(err)), 0);
    CHECK_STR(err, "");

    /* RC_OTLP_MAX_DEPTH: AnyValue at depth 5 + 2 * arrays; 13 arrays (depth 31) pass, 14
     * (depth 33) do not */
    CHECK_INT(add(s, nested_body(5, 13)), 1);
    spans = get(s, 5, &n);
    CHECK(n == 1 && !strcmp(spans[0].attrs[0].value, "[[[[[[[[[[[[[\"leaf\"]]]]]]]]]]]]]"));
    rc_spans_free(spans, n);
    CHECK_INT(add(s, nested_body(6, 14)), -1);
    CHECK(strstr(err, "nesting deeper than 32") != NULL);
    rc_store_free(s);

    /* max_spans 0 */
    CHECK(rc_store_new(0, NULL, err, sizeof(err)) == NULL);
    CHECK(err[0] != 0);
}

/* ---- the data directory ------------------------------------------------------------------------
 */

static char tmpdir[256];

static char *path_in(const char *dir, const char *name)
{
    static char p[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof(p[k]), "%s/%s", dir, name);
    return p[k];
}

static long long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

static int write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(p, 1, n, f);
    return fclose(f) == 0 && w == n ? 0 : -1;
}

static void test_persistence(void)
{
    printf("-- the data directory: replay, torn tails, the lock\n");
    char *data = path_in(tmpdir, "data"); /* does not exist yet: created */
    char dir[512];
    snprintf(dir, sizeof(dir), "%s", data);
    char *log = path_in(dir, "spans.log");
    char logp[512];
    snprintf(logp, sizeof(logp), "%s", log);

    rc_store_t *s = rc_store_new(1000, dir, err, sizeof(err));
    CHECK(s != NULL);
    CHECK_STR(err, "");
    if (!s)
        return;
    CHECK_INT(file_size(logp), 16); /* the header */

    /* the lock: a second store on the directory fails */
    rc_store_t *s2 = rc_store_new(1000, dir, err, sizeof(err));
    CHECK(s2 == NULL);
    CHECK(strstr(err, "in use") != NULL);
    printf("     second store: %s\n", err);
    rc_store_free(s2);

    body_t a = simple(1, 1, 2, "alpha", T0);
    body_t b = simple(2, 1, 1, "beta", T0 + MS);
    size_t alen = a.len, blen = b.len;
    CHECK_INT(add(s, a), 2);
    CHECK_INT(add(s, b), 1);
    CHECK_INT(add(s, simple(1, 1, 1, "alpha", T0)), 0); /* a duplicate only: not logged */
    CHECK_INT(add(s, nested_body(9, 40)), -1);          /* refused: not logged */
    rc_store_stats_t st = stats(s);
    CHECK_INT(st.log_records, 2);
    CHECK_INT(st.log_errors, 0);
    CHECK_INT(file_size(logp), 16 + 8 + (long long)alen + 8 + (long long)blen);
    rc_store_free(s);

    /* reopened: the same traces */
    s = rc_store_new(1000, dir, err, sizeof(err));
    CHECK(s != NULL);
    if (!s)
        return;
    st = stats(s);
    CHECK_INT(st.traces, 2);
    CHECK_INT(st.spans, 3);
    CHECK_INT(st.loaded_spans, 3);
    CHECK_INT(st.accepted, 3);
    CHECK_INT(st.log_records, 0);
    size_t n;
    rc_span_t *spans = get(s, 1, &n);
    CHECK(n == 2 && !strcmp(spans[0].name, "op-1") && !strcmp(spans[1].name, "op-2") &&
          !strcmp(spans[1].service, "alpha") && sid_is(spans[1].parent_id, 1));
    rc_spans_free(spans, n);
    CHECK_INT(nspans_of(s, 2), 1);
    body_t c = simple(3, 1, 1, "gamma", T0 + 2 * MS);
    size_t clen = c.len;
    CHECK_INT(add(s, c), 1);
    rc_store_free(s);
    long long good_end = 16 + 8 + (long long)alen + 8 + (long long)blen;
    CHECK_INT(file_size(logp), good_end + 8 + (long long)clen);

    /* a torn tail: the last record cut mid-way (a crash while writing) */
    CHECK_INT(truncate(logp, good_end + 8 + (off_t)clen - 3), 0);
    s = rc_store_new(1000, dir, err, sizeof(err));
    CHECK(s != NULL);
    if (!s)
        return;
    CHECK(held(s, 1) && held(s, 2));
    CHECK(!held(s, 3));
    CHECK_INT(stats(s).loaded_spans, 3);
    CHECK_INT(file_size(logp), good_end); /* cut off */
    CHECK_INT(add(s, simple(4, 1, 1, "delta", T0)), 1);
    rc_store_free(s);
    s = rc_store_new(1000, dir, err, sizeof(err));
    CHECK(s != NULL);
    if (!s)
        return;
    CHECK(held(s, 1) && held(s, 2) && held(s, 4)); /* the new record follows good ones */
    CHECK_INT(stats(s).loaded_spans, 4);
    long long size = file_size(logp);
    rc_store_free(s);

    /* a torn record header, and a corrupt record (checksum) */
    FILE *f = fopen(logp, "ab");
    CHECK(f != NULL);
    if (f) {
        fwrite("\x10\x00\x00", 1, 3, f);
        fclose(f);
    }
    s = rc_store_new(1000, dir, err, sizeof(err));
    CHECK(s != NULL && held(s, 4));
    CHECK_INT(file_size(logp), size);
    rc_store_free(s);
    f = fopen(logp, "r+b");
    CHECK(f != NULL);
    if (f) { /* the last byte of the last record (trace 4's) */
        fseek(f, size - 1, SEEK_SET);
        int ch = fgetc(f);
        fseek(f, size - 1, SEEK_SET);
        fputc(ch ^ 0x55, f);
        fclose(f);
    }
    s = rc_store_new(1000, dir, err, sizeof(err));
    CHECK(s != NULL);
    if (!s)
        return;
    CHECK(held(s, 1) && held(s, 2));
    CHECK(!held(s, 4));
    CHECK_INT(file_size(logp), good_end);
    rc_store_free(s);

    /* a header cut short (a crash while the log was created): started afresh, and what is
     * added then survives the next restart */
    CHECK_INT(write_file(logp, "remora-", 7), 0);
    s = rc_store_new(1000, dir, err, sizeof(err));
    CHECK(s != NULL);
    if (!s)
        return;
    CHECK_INT(stats(s).traces, 0);
    CHECK_INT(add(s, simple(5, 1, 1, "epsilon", T0)), 1);
    rc_store_free(s);
    char head[16] = {0};
    f = fopen(logp, "rb");
    if (f) {
        CHECK_INT(fread(head, 1, sizeof(head), f), 16);
        fclose(f);
    }
    CHECK(memcmp(head, "remora-spans-v1\n", 16) == 0);
    s = rc_store_new(1000, dir, err, sizeof(err));
    CHECK(s != NULL);
    if (s) {
        printf("     after a cut header: %s\n", err);
        CHECK(held(s, 5));
        rc_store_free(s);
    }

    /* a file that is not a span log: refused, and left alone */
    CHECK_INT(write_file(logp, "not a span log at all\n", 22), 0);
    s = rc_store_new(1000, dir, err, sizeof(err));
    CHECK(s == NULL);
    CHECK(strstr(err, "not a remora-control span log") != NULL);
    CHECK_INT(file_size(logp), 22);
    rc_store_free(s);
    /* the lock went with the failed store */
    CHECK_INT(unlink(logp), 0);
    s = rc_store_new(1000, dir, err, sizeof(err));
    CHECK(s != NULL);
    rc_store_free(s);

    /* a data directory that is a file */
    char *notdir = path_in(tmpdir, "plain-file");
    CHECK_INT(write_file(notdir, "x", 1), 0);
    s = rc_store_new(1000, notdir, err, sizeof(err));
    CHECK(s == NULL);
    CHECK(strstr(err, notdir) != NULL);
    rc_store_free(s);
    unlink(notdir);
    unlink(path_in(dir, "spans.log"));
    unlink(path_in(dir, "spans.log.1"));
    unlink(path_in(dir, "lock"));
    rmdir(dir);
}

static void test_segments(void)
{
    printf("-- the two log segments\n");
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/segments", tmpdir);
    char cur[600], old[600];
    snprintf(cur, sizeof(cur), "%s/spans.log", dir);
    snprintf(old, sizeof(old), "%s/spans.log.1", dir);

    rc_store_t *s = rc_store_new(4, dir, err, sizeof(err));
    CHECK(s != NULL);
    if (!s)
        return;
    CHECK_INT(add(s, simple(1, 1, 2, "seg", T0)), 2);
    CHECK_INT(add(s, simple(2, 1, 2, "seg", T0 + 1)), 2);
    CHECK_INT(file_size(old), -1);
    CHECK_INT(add(s, simple(3, 1, 2, "seg", T0 + 2)), 2); /* spans.log held 4: it rotates */
    CHECK(file_size(old) > 16);
    CHECK_INT(add(s, simple(4, 1, 2, "seg", T0 + 3)), 2);
    rc_store_stats_t st = stats(s);
    CHECK_INT(st.spans, 4); /* traces 3 and 4 */
    CHECK_INT(st.log_records, 4);
    rc_store_free(s);

    /* both segments replay: with room for all, the four traces */
    s = rc_store_new(100, dir, err, sizeof(err));
    CHECK(s != NULL);
    if (!s)
        return;
    st = stats(s);
    CHECK_INT(st.traces, 4);
    CHECK_INT(st.loaded_spans, 8);
    CHECK(held(s, 1) && held(s, 2) && held(s, 3) && held(s, 4));
    rc_store_free(s);
    /* with max_spans 4, the newest: 3 and 4 */
    s = rc_store_new(4, dir, err, sizeof(err));
    CHECK(s != NULL);
    if (!s)
        return;
    CHECK(!held(s, 1) && !held(s, 2) && held(s, 3) && held(s, 4));
    CHECK_INT(add(s, simple(5, 1, 2, "seg", T0 + 4)), 2); /* rotates again: 1 and 2 gone */
    rc_store_free(s);
    s = rc_store_new(100, dir, err, sizeof(err));
    CHECK(s != NULL);
    if (!s)
        return;
    CHECK(!held(s, 1) && !held(s, 2) && held(s, 3) && held(s, 4) && held(s, 5));
    rc_store_free(s);
    unlink(cur);
    unlink(old);
    unlink(path_in(dir, "lock"));
    rmdir(dir);
}

/* ---- threads -----------------------------------------------------------------------------------
 */

struct worker {
    rc_store_t *s;
    unsigned base;
    long added;
};

static void *adder(void *arg)
{
    struct worker *w = arg;
    char e[256];
    for (unsigned i = 0; i < 200; i++) {
        /* built outside the arena: the arena is not shared between threads */
        uint8_t body[64];
        size_t len = 0;
        uint8_t span[48];
        size_t sl = 0;
        span[sl++] = 0x0a; /* trace_id */
        span[sl++] = 16;
        memcpy(span + sl, "\x4b\xf9\x2f\x35\x77\xb3\x4d\xa6\xa3\xce\x92\x9d", 12);
        sl += 12;
        unsigned t = w->base + i;
        span[sl++] = (uint8_t)(t >> 24);
        span[sl++] = (uint8_t)(t >> 16);
        span[sl++] = (uint8_t)(t >> 8);
        span[sl++] = (uint8_t)t;
        memcpy(span + sl, "\x12\x08\x00\xf0\x67\xaa\x00\x00\x00\x01", 10); /* span_id */
        sl += 10;
        memcpy(span + sl, "\x2a\x01x", 3); /* name "x" */
        sl += 3;
        body[len++] = 0x0a; /* resource_spans { scope_spans { spans { ... } } } */
        body[len++] = (uint8_t)(sl + 4);
        body[len++] = 0x12;
        body[len++] = (uint8_t)(sl + 2);
        body[len++] = 0x12;
        body[len++] = (uint8_t)sl;
        memcpy(body + len, span, sl);
        len += sl;
        long n = rc_store_add_otlp(w->s, body, len, e, sizeof(e));
        if (n > 0)
            w->added += n;
        rc_trace_summary_t *sums;
        long m = rc_store_list(w->s, NULL, 0, 0, 5, &sums);
        if (m > 0) {
            rc_span_t *sp;
            size_t ns;
            if (rc_store_get(w->s, sums[0].trace_id, &sp, &ns) == 0)
                rc_spans_free(sp, ns);
            rc_summaries_free(sums, (size_t)m);
        }
    }
    return NULL;
}

static void test_threads(void)
{
    printf("-- four threads on one store\n");
    rc_store_t *s = rc_store_new(500, NULL, err, sizeof(err));
    pthread_t th[4];
    struct worker w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (struct worker){s, 1000u * (unsigned)(i + 1), 0};
        pthread_create(&th[i], NULL, adder, &w[i]);
    }
    long added = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        added += w[i].added;
    }
    rc_store_stats_t st = stats(s);
    CHECK_INT(added, 800);
    CHECK_INT(st.accepted, 800);
    CHECK_INT(st.spans, 500);
    CHECK_INT(st.evicted_spans, 300);
    rc_store_free(s);
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(tmpdir, sizeof(tmpdir), "%s/test_rc_store.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(tmpdir)) {
        printf("FAIL mkdtemp %s: %s\n", tmpdir, strerror(errno));
        return 1;
    }
    test_grouping();
    test_attributes();
    test_strings();
    test_eviction();
    test_trace_cap();
    test_refused();
    test_persistence();
    test_segments();
    test_threads();
    arena_free();
    free(arena);
    rmdir(tmpdir);
    return check_summary();
}
