/*
 * Fuzz target for remora-control's trace store (control/rc_store.c): the input is an OTLP
 * ExportTraceServiceRequest body, untrusted, as POST /v1/traces hands it to
 * rc_store_add_otlp_ex. The input goes to two stores:
 *
 *  - one kept across inputs (in memory, max_spans 2000, so whole traces get evicted), read back
 *    as control/rc_http.c and control/rc_grpc.c read it: the listing (all, and filtered by
 *    service, errors, since and limit), the traces this input touched and the newest few, each
 *    rendered as the JSON of GET /api/traces[/<id>] (then checked to be valid JSON) and packed
 *    as the gRPC ListTracesResponse / GetTraceResponse (then unpacked and compared);
 *  - a fresh one per input, compared with the request decoded here by protobuf-c: which spans
 *    were accepted, refused and duplicates, and each stored field against what rc_store.h says
 *    it is (strings made valid UTF-8 and cut at RC_STR_MAX on a character boundary, attribute
 *    values rendered as the header says, service.name or "unknown", kind and status mapped).
 *
 * Checks what rc_store.h promises (every string valid UTF-8 without NUL and at most
 * RC_STR_MAX bytes, the RC_* bounds, max_spans, the counters, the listing order, the summaries
 * against their spans, a refused body changes nothing) and abort()s, saying which, when one
 * fails. FUZZ_OTLP_VERBOSE=1 in the environment prints what each input did (for the replay).
 *
 *   CC=clang meson setup build-fuzz -Dfuzz=true && ninja -C build-fuzz tests/fuzz/fuzz_otlp
 *   rm -rf /tmp/corpus-otlp && cp -r tests/fuzz/corpus/otlp /tmp/corpus-otlp
 *   build-fuzz/tests/fuzz/fuzz_otlp -max_len=16384 /tmp/corpus-otlp
 *
 * tests/fuzz/make_otlp_corpus.py writes the seeds.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "opentelemetry/proto/collector/trace/v1/trace_service.pb-c.h"
#include "rc_store.h"
#include "remora/v1/control.pb-c.h"

typedef Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceRequest pb_request_t;
typedef Opentelemetry__Proto__Trace__V1__ResourceSpans pb_resource_spans_t;
typedef Opentelemetry__Proto__Trace__V1__Span pb_span_t;
typedef Opentelemetry__Proto__Trace__V1__Span__Event pb_event_t;
typedef Opentelemetry__Proto__Common__V1__KeyValue pb_kv_t;
typedef Opentelemetry__Proto__Common__V1__AnyValue pb_any_t;

#define MAX_SPANS 2000
#define NEWEST_CHECKED 3 /* traces of the listing fetched besides those the input touched */
#define LIST_RENDERED 16 /* summaries of the listing rendered as JSON and gRPC */

static int verbose;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("fuzz_otlp: invariant violated: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

#define ENSURE(c)                                                                                  \
    do {                                                                                           \
        if (!(c))                                                                                  \
            fail("%s:%d: %s", __FILE__, __LINE__, #c);                                             \
    } while (0)

/* ---- a growable buffer -------------------------------------------------------------------- */

typedef struct buf {
    char *p;
    size_t len, cap;
} buf_t;

static void b_add(buf_t *b, const void *p, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p)
            fail("out of memory");
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void b_str(buf_t *b, const char *s)
{
    b_add(b, s, strlen(s));
}

static void b_fmt(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void b_fmt(buf_t *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    b_add(b, tmp, n < 0 ? 0 : (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* ---- UTF-8, decoded here on its own (code points, not the store's byte tables) ------------- */

/* Length of the valid UTF-8 sequence at p (n bytes left), 0 when there is none (or NUL). */
static size_t utf8_seq(const uint8_t *p, size_t n)
{
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    uint8_t c = p[0];
    size_t len;
    uint32_t cp;
    if (c == 0)
        return 0;
    if (c < 0x80)
        return 1;
    if ((c & 0xE0) == 0xC0) {
        len = 2;
        cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3;
        cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t k = 1; k < len; k++) {
        if ((p[k] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (p[k] & 0x3F);
    }
    if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

static int utf8_valid(const char *s, size_t n)
{
    const uint8_t *p = (const uint8_t *)s;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(p + i, n - i);
        if (!k)
            return 0;
        i += k;
    }
    return 1;
}

/* A string the store handed out: valid UTF-8, no NUL, at most RC_STR_MAX bytes. */
static void check_str(const char *s, const char *what)
{
    if (!s)
        fail("%s is NULL", what);
    size_t n = strlen(s);
    if (n > RC_STR_MAX)
        fail("%s is %zu bytes, over RC_STR_MAX", what, n);
    if (!utf8_valid(s, n))
        fail("%s is not valid UTF-8", what);
}

/* Appends s[0..n) with each byte that does not start a valid sequence replaced by U+FFFD. */
static void b_sanitize(buf_t *b, const char *s, size_t n)
{
    const uint8_t *p = (const uint8_t *)s;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(p + i, n - i);
        if (k) {
            b_add(b, p + i, k);
            i += k;
        } else {
            b_add(b, "\xEF\xBF\xBD", 3);
            i++;
        }
    }
}

/* Cuts b (from offset from) to RC_STR_MAX bytes on a character boundary. */
static void b_cut(buf_t *b, size_t from)
{
    size_t len = b->len - from;
    if (len <= RC_STR_MAX)
        return;
    len = RC_STR_MAX;
    while (len > 0 && ((uint8_t)b->p[from + len] & 0xC0) == 0x80)
        len--;
    b->len = from + len;
    b->p[b->len] = 0;
}

/* What the store keeps of an OTLP string: made valid, then cut. */
static void b_expect_str(buf_t *b, const char *s)
{
    size_t from = b->len;
    s = s ? s : "";
    size_t n = strlen(s);
    /* a longer input cannot matter: every input byte is at least one output byte */
    b_sanitize(b, s, n > 3 * RC_STR_MAX ? 3 * RC_STR_MAX : n);
    b_add(b, "", 0);
    b_cut(b, from);
}

/* ---- JSON: escaping as rc_http.c's sb_json, and a validator -------------------------------- */

static void b_json_escape(buf_t *b, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"')
            b_str(b, "\\\"");
        else if (c == '\\')
            b_str(b, "\\\\");
        else if (c == '\n')
            b_str(b, "\\n");
        else if (c == '\r')
            b_str(b, "\\r");
        else if (c == '\t')
            b_str(b, "\\t");
        else if (c < 0x20)
            b_fmt(b, "\\u%04x", c);
        else
            b_add(b, s, 1);
    }
}

static void b_json(buf_t *b, const char *s)
{
    b_str(b, "\"");
    b_json_escape(b, s);
    b_str(b, "\"");
}

static void b_hex(buf_t *b, const uint8_t *p, size_t n)
{
    b_str(b, "\"");
    for (size_t i = 0; i < n; i++)
        b_fmt(b, "%02x", p[i]);
    b_str(b, "\"");
}

static const char *js_ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

static const char *js_value(const char *p, const char *e, int depth);

static const char *js_string(const char *p, const char *e)
{
    if (p >= e || *p != '"')
        return NULL;
    for (p++; p < e; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"')
            return p + 1;
        if (c < 0x20)
            return NULL;
        if (c == '\\') {
            if (++p >= e)
                return NULL;
            if (*p == 'u') {
                for (int k = 0; k < 4; k++)
                    if (++p >= e || !strchr("0123456789abcdefABCDEF", *p) || !*p)
                        return NULL;
            } else if (!strchr("\"\\/bfnrt", *p) || !*p) {
                return NULL;
            }
        }
    }
    return NULL;
}

static const char *js_digits(const char *p, const char *e)
{
    const char *q = p;
    while (p < e && *p >= '0' && *p <= '9')
        p++;
    return p > q ? p : NULL;
}

static const char *js_number(const char *p, const char *e)
{
    if (p < e && *p == '-')
        p++;
    if (p < e && *p == '0')
        p++;
    else if (!(p = js_digits(p, e)))
        return NULL;
    if (p < e && *p == '.' && !(p = js_digits(p + 1, e)))
        return NULL;
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < e && (*p == '+' || *p == '-'))
            p++;
        if (!(p = js_digits(p, e)))
            return NULL;
    }
    return p;
}

static const char *js_value(const char *p, const char *e, int depth)
{
    if (depth > 200)
        return NULL;
    p = js_ws(p, e);
    if (p >= e)
        return NULL;
    if (*p == '"')
        return js_string(p, e);
    if (*p == '[' || *p == '{') {
        char close = *p == '[' ? ']' : '}';
        int obj = *p == '{';
        p = js_ws(p + 1, e);
        if (p < e && *p == close)
            return p + 1;
        for (;;) {
            if (obj) {
                if (!(p = js_string(js_ws(p, e), e)))
                    return NULL;
                p = js_ws(p, e);
                if (p >= e || *p != ':')
                    return NULL;
                p++;
            }
            if (!(p = js_value(p, e, depth + 1)))
                return NULL;
            p = js_ws(p, e);
            if (p < e && *p == ',') {
                p++;
                continue;
            }
            if (p < e && *p == close)
                return p + 1;
            return NULL;
        }
    }
    static const char *const words[] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(words[i]);
        if ((size_t)(e - p) >= n && !memcmp(p, words[i], n))
            return p + n;
    }
    return js_number(p, e);
}

/* One JSON text, and valid UTF-8 throughout. */
static int json_valid(const char *p, size_t n)
{
    const char *e = p + n;
    const char *end = js_value(p, e, 0);
    return end && js_ws(end, e) == e && utf8_valid(p, n);
}

/* ---- the expected rendering of attribute values (rc_store.h, control/API.md) --------------- */

static void b_double(buf_t *b, double d, int json)
{
    char num[40];
    if (isnan(d) || isinf(d)) {
        const char *w = isnan(d) ? "NaN" : d > 0 ? "Infinity" : "-Infinity";
        if (json)
            b_str(b, "\"");
        b_str(b, w);
        if (json)
            b_str(b, "\"");
        return;
    }
    /* the shortest %g that reads back as the same double */
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(num, sizeof(num), "%.*g", prec, d);
        if (strtod(num, NULL) == d)
            break;
    }
    b_str(b, num);
}

static void b_base64(buf_t *b, const uint8_t *p, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i + 2 < n; i += 3) {
        char q[4] = {tab[p[i] >> 2], tab[(p[i] & 3) << 4 | p[i + 1] >> 4],
                     tab[(p[i + 1] & 15) << 2 | p[i + 2] >> 6], tab[p[i + 2] & 63]};
        b_add(b, q, 4);
    }
    size_t r = n % 3;
    if (r == 1) {
        char q[4] = {tab[p[n - 1] >> 2], tab[(p[n - 1] & 3) << 4], '=', '='};
        b_add(b, q, 4);
    } else if (r == 2) {
        char q[4] = {tab[p[n - 2] >> 2], tab[(p[n - 2] & 3) << 4 | p[n - 1] >> 4],
                     tab[(p[n - 1] & 15) << 2], '='};
        b_add(b, q, 4);
    }
}

/* An AnyValue as an attribute string (json 0) or a JSON value (json 1), before any cut. */
static void b_any(buf_t *b, const pb_any_t *v, int json)
{
    if (!v) {
        if (json)
            b_str(b, "null");
        return;
    }
    switch (v->value_case) {
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_STRING_VALUE: {
        const char *s = v->string_value ? v->string_value : "";
        if (json) {
            buf_t t = {0};
            b_sanitize(&t, s, strlen(s));
            b_add(&t, "", 0);
            b_json(b, t.p);
            free(t.p);
        } else {
            b_sanitize(b, s, strlen(s));
        }
        break;
    }
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_BOOL_VALUE:
        b_str(b, v->bool_value ? "true" : "false");
        break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_INT_VALUE:
        b_fmt(b, "%lld", (long long)v->int_value);
        break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_DOUBLE_VALUE:
        b_double(b, v->double_value, json);
        break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_BYTES_VALUE:
        if (json)
            b_str(b, "\"");
        b_base64(b, v->bytes_value.data, v->bytes_value.len);
        if (json)
            b_str(b, "\"");
        break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_ARRAY_VALUE:
        b_str(b, "[");
        for (size_t i = 0; v->array_value && i < v->array_value->n_values; i++) {
            if (i)
                b_str(b, ",");
            b_any(b, v->array_value->values[i], 1);
        }
        b_str(b, "]");
        break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_KVLIST_VALUE:
        b_str(b, "{");
        for (size_t i = 0; v->kvlist_value && i < v->kvlist_value->n_values; i++) {
            const pb_kv_t *kv = v->kvlist_value->values[i];
            const char *k = kv && kv->key ? kv->key : "";
            buf_t t = {0};
            b_sanitize(&t, k, strlen(k));
            b_add(&t, "", 0);
            if (i)
                b_str(b, ",");
            b_json(b, t.p);
            free(t.p);
            b_str(b, ":");
            b_any(b, kv ? kv->value : NULL, 1);
        }
        b_str(b, "}");
        break;
    default:
        if (json)
            b_str(b, "null");
        break;
    }
}

static void expect_eq(const char *got, const buf_t *want, const char *what)
{
    const char *w = want->p ? want->p : "";
    if (strcmp(got, w) != 0)
        fail("%s: stored \"%.80s\" (%zu bytes), expected \"%.80s\" (%zu bytes)", what, got,
             strlen(got), w, strlen(w));
}

/* An attribute as stored against the KeyValue it came from. */
static void expect_attr(const rc_attr_t *a, const pb_kv_t *kv)
{
    buf_t w = {0};
    b_expect_str(&w, kv->key);
    expect_eq(a->key, &w, "attribute key");
    w.len = 0;
    b_any(&w, kv->value, 0);
    b_add(&w, "", 0);
    size_t full = w.len;
    b_cut(&w, 0);
    expect_eq(a->value, &w, "attribute value");
    free(w.p);

    const pb_any_t *v = kv->value;
    if (!v)
        return;
    if (v->value_case == OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_DOUBLE_VALUE &&
        isfinite(v->double_value) && strtod(a->value, NULL) != v->double_value)
        fail("double attribute \"%s\" does not read back as %.17g", a->value, v->double_value);
    /* an uncut array or key-value list is a JSON text of its own */
    if ((v->value_case == OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_ARRAY_VALUE ||
         v->value_case == OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_KVLIST_VALUE) &&
        full <= RC_STR_MAX && !json_valid(a->value, strlen(a->value)))
        fail("array/kvlist attribute is not valid JSON: %.200s", a->value);
}

/* The attributes of a span or event as stored against the KeyValues they came from: the
 * first RC_SPAN_MAX_ATTRS of them, in order. */
static void expect_attrs(const rc_attr_t *a, size_t n, pb_kv_t **kvs, size_t nkvs)
{
    size_t k = 0;
    for (size_t i = 0; i < nkvs; i++)
        k += kvs[i] != NULL;
    ENSURE(n == (k < RC_SPAN_MAX_ATTRS ? k : RC_SPAN_MAX_ATTRS));
    k = 0;
    for (size_t i = 0; i < nkvs && k < n; i++)
        if (kvs[i])
            expect_attr(&a[k++], kvs[i]);
}

/* ---- checks on what the store hands out --------------------------------------------------- */

static int cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int cmp_id8(const void *a, const void *b)
{
    return memcmp(a, b, RC_SPAN_ID_LEN);
}

static void check_attrs(const rc_attr_t *a, size_t n, const char *what)
{
    if (n > RC_SPAN_MAX_ATTRS)
        fail("%s: %zu attributes, over RC_SPAN_MAX_ATTRS", what, n);
    if (n && !a)
        fail("%s: %zu attributes and no array", what, n);
    for (size_t i = 0; i < n; i++) {
        check_str(a[i].key, "attribute key");
        check_str(a[i].value, "attribute value");
    }
}

/* A span of a trace copied out by rc_store_get. */
static void check_span(const rc_span_t *s, const uint8_t *trace_id)
{
    static const uint8_t zero[RC_TRACE_ID_LEN];
    ENSURE(memcmp(s->trace_id, trace_id, RC_TRACE_ID_LEN) == 0);
    ENSURE(memcmp(s->trace_id, zero, RC_TRACE_ID_LEN) != 0);
    ENSURE(memcmp(s->span_id, zero, RC_SPAN_ID_LEN) != 0);
    ENSURE(s->has_parent == 0 || s->has_parent == 1);
    ENSURE((memcmp(s->parent_id, zero, RC_SPAN_ID_LEN) != 0) == s->has_parent);
    check_str(s->service, "service");
    ENSURE(s->service[0] != 0);
    check_str(s->name, "span name");
    check_str(s->status_message, "status message");
    ENSURE(s->kind >= 0 && s->kind <= 5);
    ENSURE(s->status_code == RC_STATUS_UNSET || s->status_code == RC_STATUS_OK ||
           s->status_code == RC_STATUS_ERROR);
    check_attrs(s->attrs, s->nattrs, "span");
    ENSURE(s->nevents <= RC_SPAN_MAX_EVENTS);
    ENSURE(s->nevents == 0 || s->events);
    for (size_t e = 0; e < s->nevents; e++) {
        check_str(s->events[e].name, "event name");
        check_attrs(s->events[e].attrs, s->events[e].nattrs, "event");
    }
}

/* The spans of a trace against its summary: count, start, duration, error, root, services. */
static void check_summary(const rc_trace_summary_t *u, const rc_span_t *sp, size_t n)
{
    ENSURE(n >= 1 && n <= RC_TRACE_MAX_SPANS);
    ENSURE(u->spans == n);
    uint64_t start = UINT64_MAX, end = 0;
    int error = 0;
    uint8_t(*ids)[RC_SPAN_ID_LEN] = malloc(n * RC_SPAN_ID_LEN);
    const char **svc = malloc(n * sizeof(*svc));
    if (!ids || !svc)
        fail("out of memory");
    for (size_t i = 0; i < n; i++) {
        check_span(&sp[i], u->trace_id);
        if (i)
            ENSURE(sp[i - 1].start_ns <= sp[i].start_ns); /* sorted by start */
        if (sp[i].start_ns < start)
            start = sp[i].start_ns;
        if (sp[i].end_ns > end)
            end = sp[i].end_ns;
        error |= sp[i].status_code == RC_STATUS_ERROR;
        memcpy(ids[i], sp[i].span_id, RC_SPAN_ID_LEN);
        svc[i] = sp[i].service;
    }
    ENSURE(u->start_ns == start);
    ENSURE(u->duration_ns == (end > start ? end - start : 0));
    ENSURE(u->error == error);

    qsort(ids, n, RC_SPAN_ID_LEN, cmp_id8);
    for (size_t i = 1; i < n; i++)
        ENSURE(memcmp(ids[i - 1], ids[i], RC_SPAN_ID_LEN) != 0); /* span ids distinct */
    /* the root: the earliest span whose parent is not in the trace (else the earliest) */
    const rc_span_t *root = &sp[0];
    for (size_t i = 0; i < n; i++) {
        if (!sp[i].has_parent || !bsearch(sp[i].parent_id, ids, n, RC_SPAN_ID_LEN, cmp_id8)) {
            root = &sp[i];
            break;
        }
    }
    check_str(u->root_service, "root service");
    check_str(u->root_name, "root name");
    if (strcmp(u->root_service, root->service) || strcmp(u->root_name, root->name))
        fail("root of the summary (%.60s, %.60s) is not the root span (%.60s, %.60s)",
             u->root_service, u->root_name, root->service, root->name);

    qsort(svc, n, sizeof(*svc), cmp_cstr);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (k == 0 || strcmp(svc[k - 1], svc[i]))
            svc[k++] = svc[i];
    ENSURE(u->nservices == k);
    for (size_t i = 0; i < k; i++) {
        check_str(u->services[i], "summary service");
        ENSURE(strcmp(u->services[i], svc[i]) == 0);
    }
    free(ids);
    free(svc);
}

/* ---- rendering as the HTTP API does (control/rc_http.c) ----------------------------------- */

static void render_list_json(const rc_trace_summary_t *sums, long n)
{
    buf_t b = {0};
    b_str(&b, "{\"traces\":[");
    for (long i = 0; i < n; i++) {
        const rc_trace_summary_t *u = &sums[i];
        b_str(&b, i ? ",{\"trace_id\":" : "{\"trace_id\":");
        b_hex(&b, u->trace_id, RC_TRACE_ID_LEN);
        b_str(&b, ",\"root_service\":");
        b_json(&b, u->root_service);
        b_str(&b, ",\"root_name\":");
        b_json(&b, u->root_name);
        b_fmt(&b, ",\"start_us\":%llu,\"duration_us\":%llu,\"spans\":%u,\"error\":%s,",
              (unsigned long long)(u->start_ns / 1000), (unsigned long long)(u->duration_ns / 1000),
              u->spans, u->error ? "true" : "false");
        b_str(&b, "\"services\":[");
        for (size_t k = 0; k < u->nservices; k++) {
            if (k)
                b_str(&b, ",");
            b_json(&b, u->services[k]);
        }
        b_str(&b, "]}");
    }
    b_str(&b, "]}\n");
    if (!json_valid(b.p, b.len))
        fail("the JSON of GET /api/traces is not valid: %.300s", b.p);
    free(b.p);
}

static void json_attrs(buf_t *b, const rc_attr_t *a, size_t n)
{
    b_str(b, "{");
    for (size_t i = 0; i < n; i++) {
        if (i)
            b_str(b, ",");
        b_json(b, a[i].key);
        b_str(b, ":");
        b_json(b, a[i].value);
    }
    b_str(b, "}");
}

static void render_trace_json(const uint8_t *id, const rc_span_t *spans, size_t n)
{
    buf_t b = {0};
    b_str(&b, "{\"trace_id\":");
    b_hex(&b, id, RC_TRACE_ID_LEN);
    b_str(&b, ",\"spans\":[");
    for (size_t i = 0; i < n; i++) {
        const rc_span_t *s = &spans[i];
        b_str(&b, i ? ",{\"span_id\":" : "{\"span_id\":");
        b_hex(&b, s->span_id, RC_SPAN_ID_LEN);
        b_str(&b, ",\"parent_span_id\":");
        if (s->has_parent)
            b_hex(&b, s->parent_id, RC_SPAN_ID_LEN);
        else
            b_str(&b, "\"\"");
        b_str(&b, ",\"service\":");
        b_json(&b, s->service);
        b_str(&b, ",\"name\":");
        b_json(&b, s->name);
        b_fmt(&b, ",\"kind\":\"%s\",\"start_us\":%llu,\"duration_us\":%llu,\"status\":\"%s\",",
              rc_span_kind_name(s->kind), (unsigned long long)(s->start_ns / 1000),
              (unsigned long long)(s->end_ns > s->start_ns ? (s->end_ns - s->start_ns) / 1000 : 0),
              rc_status_name(s->status_code));
        b_str(&b, "\"status_message\":");
        b_json(&b, s->status_message);
        b_str(&b, ",\"attributes\":");
        json_attrs(&b, s->attrs, s->nattrs);
        b_str(&b, ",\"events\":[");
        for (size_t e = 0; e < s->nevents; e++) {
            const rc_event_t *ev = &s->events[e];
            b_str(&b, e ? ",{\"name\":" : "{\"name\":");
            b_json(&b, ev->name);
            b_fmt(&b,
                  ",\"time_us\":%llu,\"attributes\":", (unsigned long long)(ev->time_ns / 1000));
            json_attrs(&b, ev->attrs, ev->nattrs);
            b_str(&b, "}");
        }
        b_str(&b, "]}");
    }
    b_str(&b, "]}\n");
    if (!json_valid(b.p, b.len))
        fail("the JSON of GET /api/traces/<id> is not valid: %.300s", b.p);
    free(b.p);
}

/* ---- packing as the gRPC service does (control/rc_grpc.c), and reading it back ------------- */

static void render_list_grpc(const rc_trace_summary_t *found, long n)
{
    Remora__V1__ListTracesResponse resp = REMORA__V1__LIST_TRACES_RESPONSE__INIT;
    Remora__V1__TraceSummary *sums = calloc((size_t)n + 1, sizeof(*sums));
    Remora__V1__TraceSummary **ptrs = calloc((size_t)n + 1, sizeof(*ptrs));
    if (!sums || !ptrs)
        fail("out of memory");
    for (long i = 0; i < n; i++) {
        Remora__V1__TraceSummary *t = &sums[i];
        const rc_trace_summary_t *f = &found[i];
        remora__v1__trace_summary__init(t);
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
    size_t len = remora__v1__list_traces_response__get_packed_size(&resp);
    uint8_t *out = malloc(len + 1);
    if (!out)
        fail("out of memory");
    ENSURE(remora__v1__list_traces_response__pack(&resp, out) == len);
    Remora__V1__ListTracesResponse *back = remora__v1__list_traces_response__unpack(NULL, len, out);
    if (!back)
        fail("the packed ListTracesResponse does not unpack");
    ENSURE(back->n_traces == (size_t)n);
    for (long i = 0; i < n; i++) {
        const Remora__V1__TraceSummary *t = back->traces[i];
        ENSURE(t->trace_id.len == RC_TRACE_ID_LEN &&
               !memcmp(t->trace_id.data, found[i].trace_id, RC_TRACE_ID_LEN));
        ENSURE(!strcmp(t->root_service, found[i].root_service));
        ENSURE(!strcmp(t->root_name, found[i].root_name));
        ENSURE(t->n_services == found[i].nservices);
        ENSURE(t->span_count == found[i].spans);
    }
    remora__v1__list_traces_response__free_unpacked(back, NULL);
    free(out);
    free(sums);
    free(ptrs);
}

static void render_trace_grpc(const uint8_t *trace_id, rc_span_t *spans, size_t n)
{
    Remora__V1__GetTraceResponse resp = REMORA__V1__GET_TRACE_RESPONSE__INIT;
    size_t nattrs = 0, nevents = 0, nevattrs = 0;
    for (size_t i = 0; i < n; i++) {
        nattrs += spans[i].nattrs;
        nevents += spans[i].nevents;
        for (size_t e = 0; e < spans[i].nevents; e++)
            nevattrs += spans[i].events[e].nattrs;
    }
    Remora__V1__Span *sp = calloc(n + 1, sizeof(*sp));
    Remora__V1__Span **sp_ptrs = calloc(n + 1, sizeof(*sp_ptrs));
    Remora__V1__Span__AttributesEntry *attrs = calloc(nattrs + 1, sizeof(*attrs));
    Remora__V1__Span__AttributesEntry **attr_ptrs = calloc(nattrs + 1, sizeof(*attr_ptrs));
    Remora__V1__SpanEvent *evs = calloc(nevents + 1, sizeof(*evs));
    Remora__V1__SpanEvent **ev_ptrs = calloc(nevents + 1, sizeof(*ev_ptrs));
    Remora__V1__SpanEvent__AttributesEntry *evattrs = calloc(nevattrs + 1, sizeof(*evattrs));
    Remora__V1__SpanEvent__AttributesEntry **evattr_ptrs =
        calloc(nevattrs + 1, sizeof(*evattr_ptrs));
    if (!sp || !sp_ptrs || !attrs || !attr_ptrs || !evs || !ev_ptrs || !evattrs || !evattr_ptrs)
        fail("out of memory");
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
        o->kind = (Remora__V1__SpanKind)s->kind;
        o->start_time_unix_nano = s->start_ns;
        o->duration_nano = s->end_ns > s->start_ns ? s->end_ns - s->start_ns : 0;
        o->status = (Remora__V1__SpanStatus)s->status_code;
        o->status_message = (char *)s->status_message;
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
    resp.trace_id.data = (uint8_t *)trace_id;
    resp.trace_id.len = RC_TRACE_ID_LEN;
    resp.spans = sp_ptrs;
    resp.n_spans = n;
    size_t len = remora__v1__get_trace_response__get_packed_size(&resp);
    uint8_t *out = malloc(len + 1);
    if (!out)
        fail("out of memory");
    ENSURE(remora__v1__get_trace_response__pack(&resp, out) == len);
    Remora__V1__GetTraceResponse *back = remora__v1__get_trace_response__unpack(NULL, len, out);
    if (!back)
        fail("the packed GetTraceResponse does not unpack");
    ENSURE(back->n_spans == n);
    for (size_t i = 0; i < n; i++) {
        const Remora__V1__Span *o = back->spans[i];
        ENSURE(!strcmp(o->service, spans[i].service) && !strcmp(o->name, spans[i].name));
        ENSURE(!strcmp(o->status_message, spans[i].status_message));
        ENSURE(o->n_attributes == spans[i].nattrs && o->n_events == spans[i].nevents);
        for (size_t a = 0; a < o->n_attributes; a++)
            ENSURE(!strcmp(o->attributes[a]->key, spans[i].attrs[a].key) &&
                   !strcmp(o->attributes[a]->value, spans[i].attrs[a].value));
        ENSURE((o->parent_span_id.len == RC_SPAN_ID_LEN) == spans[i].has_parent);
    }
    remora__v1__get_trace_response__free_unpacked(back, NULL);
    free(out);
    free(sp);
    free(sp_ptrs);
    free(attrs);
    free(attr_ptrs);
    free(evs);
    free(ev_ptrs);
    free(evattrs);
    free(evattr_ptrs);
}

/* ---- the listing --------------------------------------------------------------------------- */

static int summary_has_service(const rc_trace_summary_t *u, const char *service)
{
    for (size_t k = 0; k < u->nservices; k++)
        if (!strcmp(u->services[k], service))
            return 1;
    return 0;
}

/* Lists every trace of st and checks the listing against the counters, its order and its
 * filters; renders it. Returns the listing (caller frees) and its length. */
static long check_listing(rc_store_t *st, rc_trace_summary_t **out)
{
    rc_store_stats_t stats;
    rc_store_stats(st, &stats);
    rc_trace_summary_t *all = NULL;
    long n = rc_store_list(st, NULL, 0, 0, SIZE_MAX, &all);
    if (n < 0)
        fail("rc_store_list: %ld", n);
    ENSURE((n == 0) == (all == NULL));
    ENSURE((uint64_t)n == stats.traces);
    ENSURE(stats.spans <= stats.max_spans);
    uint64_t spans = 0;
    size_t errors = 0;
    for (long i = 0; i < n; i++) {
        const rc_trace_summary_t *u = &all[i];
        ENSURE(u->spans >= 1 && u->spans <= RC_TRACE_MAX_SPANS);
        ENSURE(u->nservices >= 1 && u->nservices <= u->spans);
        check_str(u->root_service, "root service");
        check_str(u->root_name, "root name");
        for (size_t k = 0; k < u->nservices; k++) {
            check_str(u->services[k], "summary service");
            if (k)
                ENSURE(strcmp(u->services[k - 1], u->services[k]) < 0); /* sorted, distinct */
        }
        ENSURE(summary_has_service(u, u->root_service));
        if (i) { /* newest first, then by trace id */
            const rc_trace_summary_t *p = &all[i - 1];
            ENSURE(p->start_ns > u->start_ns ||
                   (p->start_ns == u->start_ns &&
                    memcmp(p->trace_id, u->trace_id, RC_TRACE_ID_LEN) < 0));
        }
        spans += u->spans;
        errors += u->error != 0;
    }
    ENSURE(spans == stats.spans);

    if (n > 0) {
        /* the filters: by a service, errors only, a start bound, a limit */
        const char *svc = all[n / 2].services[0];
        size_t want = 0;
        for (long i = 0; i < n; i++)
            want += summary_has_service(&all[i], svc);
        rc_trace_summary_t *f = NULL;
        long m = rc_store_list(st, svc, 0, 0, SIZE_MAX, &f);
        ENSURE(m >= 0 && (size_t)m == want);
        for (long i = 0; i < m; i++)
            ENSURE(summary_has_service(&f[i], svc));
        rc_summaries_free(f, (size_t)(m > 0 ? m : 0));

        m = rc_store_list(st, "", 1, 0, SIZE_MAX, &f);
        ENSURE(m >= 0 && (size_t)m == errors);
        for (long i = 0; i < m; i++)
            ENSURE(f[i].error);
        rc_summaries_free(f, (size_t)(m > 0 ? m : 0));

        uint64_t since = all[n / 2].start_ns;
        want = 0;
        for (long i = 0; i < n; i++)
            want += all[i].start_ns >= since;
        m = rc_store_list(st, NULL, 0, since, SIZE_MAX, &f);
        ENSURE(m >= 0 && (size_t)m == want);
        rc_summaries_free(f, (size_t)(m > 0 ? m : 0));

        m = rc_store_list(st, NULL, 0, 0, 1, &f);
        ENSURE(m == 1 && !memcmp(f[0].trace_id, all[0].trace_id, RC_TRACE_ID_LEN));
        rc_summaries_free(f, 1);

        m = rc_store_list(st, NULL, 0, 0, 0, &f);
        ENSURE(m == 0 && f == NULL);
    }
    /* the JSON and the gRPC reply of the newest few (all of them cost more than they find) */
    render_list_json(all, n < LIST_RENDERED ? n : LIST_RENDERED);
    render_list_grpc(all, n < LIST_RENDERED ? n : LIST_RENDERED);
    *out = all;
    return n;
}

/* Fetches a trace of a listing, checks it against its summary, renders it. Returns the spans
 * (caller frees). */
static rc_span_t *check_trace(rc_store_t *st, const rc_trace_summary_t *u, size_t *n)
{
    rc_span_t *spans = NULL;
    int ret = rc_store_get(st, u->trace_id, &spans, n);
    if (ret != 0)
        fail("rc_store_get of a listed trace: %d", ret);
    check_summary(u, spans, *n);
    render_trace_json(u->trace_id, spans, *n);
    render_trace_grpc(u->trace_id, spans, *n);
    return spans;
}

/* ---- the request as decoded here ----------------------------------------------------------- */

typedef struct ref {
    const pb_span_t *ps;
    const pb_resource_spans_t *rs;
    size_t order; /* in the request */
} ref_t;

static int span_valid(const pb_span_t *ps)
{
    static const uint8_t zero[RC_TRACE_ID_LEN];
    return ps->trace_id.len == RC_TRACE_ID_LEN &&
           memcmp(ps->trace_id.data, zero, RC_TRACE_ID_LEN) != 0 &&
           ps->span_id.len == RC_SPAN_ID_LEN &&
           memcmp(ps->span_id.data, zero, RC_SPAN_ID_LEN) != 0 &&
           (ps->parent_span_id.len == 0 || ps->parent_span_id.len == RC_SPAN_ID_LEN);
}

static int cmp_ref(const void *a, const void *b)
{
    const ref_t *x = a, *y = b;
    int c = memcmp(x->ps->trace_id.data, y->ps->trace_id.data, RC_TRACE_ID_LEN);
    if (!c)
        c = memcmp(x->ps->span_id.data, y->ps->span_id.data, RC_SPAN_ID_LEN);
    if (!c)
        c = x->order < y->order ? -1 : x->order > y->order;
    return c;
}

/* The first of refs[0..n) with this trace and span id (refs sorted by cmp_ref), or NULL. */
static const ref_t *find_ref(const ref_t *refs, size_t n, const uint8_t *trace_id,
                             const uint8_t *span_id)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = memcmp(refs[mid].ps->trace_id.data, trace_id, RC_TRACE_ID_LEN);
        if (!c)
            c = memcmp(refs[mid].ps->span_id.data, span_id, RC_SPAN_ID_LEN);
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < n && !memcmp(refs[lo].ps->trace_id.data, trace_id, RC_TRACE_ID_LEN) &&
        !memcmp(refs[lo].ps->span_id.data, span_id, RC_SPAN_ID_LEN))
        return &refs[lo];
    return NULL;
}

/* The service the store gives the spans of rs: service.name rendered, or "unknown". */
static void b_expect_service(buf_t *b, const pb_resource_spans_t *rs)
{
    size_t from = b->len;
    for (size_t i = 0; rs->resource && i < rs->resource->n_attributes; i++) {
        const pb_kv_t *kv = rs->resource->attributes[i];
        if (kv && kv->key && !strcmp(kv->key, "service.name") && kv->value) {
            buf_t r = {0};
            b_any(&r, kv->value, 0);
            b_add(&r, "", 0);
            b_expect_str(b, r.p);
            free(r.p);
            break;
        }
    }
    if (b->len == from)
        b_str(b, "unknown");
}

/* A stored span against the OTLP span it came from. */
static void expect_span(const rc_span_t *s, const ref_t *r)
{
    const pb_span_t *ps = r->ps;
    buf_t w = {0};
    b_expect_service(&w, r->rs);
    expect_eq(s->service, &w, "service");
    w.len = 0;
    b_expect_str(&w, ps->name);
    expect_eq(s->name, &w, "span name");
    w.len = 0;
    b_expect_str(&w, ps->status ? ps->status->message : "");
    expect_eq(s->status_message, &w, "status message");
    free(w.p);

    static const uint8_t zero[RC_SPAN_ID_LEN];
    int has_parent = ps->parent_span_id.len == RC_SPAN_ID_LEN &&
                     memcmp(ps->parent_span_id.data, zero, RC_SPAN_ID_LEN) != 0;
    ENSURE(s->has_parent == has_parent);
    ENSURE(!has_parent || !memcmp(s->parent_id, ps->parent_span_id.data, RC_SPAN_ID_LEN));
    ENSURE(s->kind == (ps->kind >= 0 && ps->kind <= 5 ? (int)ps->kind : 0));
    int code = ps->status ? (int)ps->status->code : 0;
    ENSURE(s->status_code == (code == 1 || code == 2 ? code : 0));
    ENSURE(s->start_ns == ps->start_time_unix_nano && s->end_ns == ps->end_time_unix_nano);

    expect_attrs(s->attrs, s->nattrs, ps->attributes, ps->n_attributes);
    size_t k = 0;
    for (size_t e = 0; e < ps->n_events; e++)
        k += ps->events[e] != NULL;
    ENSURE(s->nevents == (k < RC_SPAN_MAX_EVENTS ? k : RC_SPAN_MAX_EVENTS));
    k = 0;
    for (size_t e = 0; e < ps->n_events && k < RC_SPAN_MAX_EVENTS; e++) {
        const pb_event_t *pe = ps->events[e];
        if (!pe)
            continue;
        const rc_event_t *ev = &s->events[k++];
        buf_t n = {0};
        b_expect_str(&n, pe->name);
        expect_eq(ev->name, &n, "event name");
        free(n.p);
        ENSURE(ev->time_ns == pe->time_unix_nano);
        expect_attrs(ev->attrs, ev->nattrs, pe->attributes, pe->n_attributes);
    }
}

/* The fresh store against the request: counts, then every stored span field by field. */
static void check_fresh(const uint8_t *data, size_t size, const ref_t *refs, size_t nvalid,
                        size_t ninvalid)
{
    char err[256];
    uint64_t rejected = 0;
    rc_store_t *f = rc_store_new(UINT64_MAX, NULL, err, sizeof(err));
    if (!f)
        fail("rc_store_new: %s", err);
    long acc = rc_store_add_otlp_ex(f, data, size, &rejected, err, sizeof(err));
    ENSURE(acc >= 0);

    /* unique (trace, span) pairs, and per trace */
    size_t unique = 0, traces = 0, full = 0;
    for (size_t i = 0; i < nvalid; i++) {
        if (i &&
            !memcmp(refs[i - 1].ps->trace_id.data, refs[i].ps->trace_id.data, RC_TRACE_ID_LEN) &&
            !memcmp(refs[i - 1].ps->span_id.data, refs[i].ps->span_id.data, RC_SPAN_ID_LEN))
            continue;
        unique++;
    }
    for (size_t i = 0, per = 0; i < nvalid; i++) {
        int new_trace = i == 0 || memcmp(refs[i - 1].ps->trace_id.data, refs[i].ps->trace_id.data,
                                         RC_TRACE_ID_LEN);
        if (new_trace) {
            traces++;
            per = 0;
        }
        if (new_trace ||
            memcmp(refs[i - 1].ps->span_id.data, refs[i].ps->span_id.data, RC_SPAN_ID_LEN))
            per++;
        if (per > RC_TRACE_MAX_SPANS)
            full = 1;
    }
    rc_store_stats_t st;
    rc_store_stats(f, &st);
    if (!full) { /* (past RC_TRACE_MAX_SPANS, refusals and duplicates mix: not counted here) */
        if ((size_t)acc != unique || rejected != ninvalid || st.duplicates != nvalid - unique)
            fail("fresh store: %ld accepted, %llu rejected, %llu duplicates; the request has "
                 "%zu valid spans (%zu distinct), %zu invalid",
                 acc, (unsigned long long)rejected, (unsigned long long)st.duplicates, nvalid,
                 unique, ninvalid);
        ENSURE(st.traces == traces && st.spans == unique);
    }
    ENSURE((rejected != 0) == (err[0] != 0));

    rc_trace_summary_t *all = NULL;
    long n = check_listing(f, &all);
    ENSURE((size_t)n == traces);
    for (long i = 0; i < n; i++) {
        size_t ns = 0;
        rc_span_t *spans = check_trace(f, &all[i], &ns);
        size_t prev_order = 0;
        for (size_t k = 0; k < ns; k++) {
            const ref_t *r = find_ref(refs, nvalid, spans[k].trace_id, spans[k].span_id);
            if (!r)
                fail("fresh store holds a span that is not in the request");
            expect_span(&spans[k], r);
            /* equal starts keep the order of arrival */
            if (k && spans[k - 1].start_ns == spans[k].start_ns)
                ENSURE(prev_order < r->order);
            prev_order = r->order;
        }
        rc_spans_free(spans, ns);
    }
    rc_summaries_free(all, (size_t)n);
    rc_store_free(f);
}

/* ---- the target ---------------------------------------------------------------------------- */

static rc_store_t *store;

static int cmp_trace_id(const void *a, const void *b)
{
    return memcmp(a, b, RC_TRACE_ID_LEN);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    if (!store) {
        verbose = getenv("FUZZ_OTLP_VERBOSE") && atoi(getenv("FUZZ_OTLP_VERBOSE")) > 0;
        store = rc_store_new(MAX_SPANS, NULL, err, sizeof(err));
        if (!store)
            fail("rc_store_new: %s", err);
    }

    rc_store_stats_t before, after;
    rc_store_stats(store, &before);
    uint64_t rejected = 12345;
    memset(err, 'x', sizeof(err));
    long acc = rc_store_add_otlp_ex(store, data, size, &rejected, err, sizeof(err));
    rc_store_stats(store, &after);
    ENSURE(memchr(err, 0, sizeof(err)) != NULL);
    check_str(err, "err");
    if (verbose)
        fprintf(stderr, "fuzz_otlp: %zu bytes: %ld accepted, %llu rejected: %s\n", size, acc,
                (unsigned long long)rejected, err);

    if (acc < 0) {
        /* refused whole: a reason, and nothing changed but the count of bad bodies */
        ENSURE(acc == -1 && err[0] != 0);
        ENSURE(after.bad_bodies == before.bad_bodies + 1);
        ENSURE(after.spans == before.spans && after.traces == before.traces);
        ENSURE(after.accepted == before.accepted && after.rejected == before.rejected);
        ENSURE(after.evicted_traces == before.evicted_traces);
    } else {
        ENSURE(after.bad_bodies == before.bad_bodies);
        ENSURE(after.accepted == before.accepted + (uint64_t)acc);
        ENSURE(after.rejected == before.rejected + rejected);
        ENSURE((rejected != 0) == (err[0] != 0));
        ENSURE(after.evicted_traces >= before.evicted_traces);
        ENSURE(after.spans + (after.evicted_spans - before.evicted_spans) ==
               before.spans + (uint64_t)acc);
    }
    ENSURE(after.spans <= MAX_SPANS);

    rc_trace_summary_t *all = NULL;
    long n = check_listing(store, &all);

    /* The request as protobuf-c decodes it (the store's own decoding passed, so this one is
     * within the same depth and size). */
    pb_request_t *req = NULL;
    ref_t *refs = NULL;
    size_t nvalid = 0, ninvalid = 0;
    if (acc >= 0) {
        req = opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(
            NULL, size, data);
        if (!req)
            fail("the store accepted a body that protobuf-c does not decode");
        size_t total = 0;
        for (size_t r = 0; r < req->n_resource_spans; r++)
            for (size_t k = 0; req->resource_spans[r] && k < req->resource_spans[r]->n_scope_spans;
                 k++)
                if (req->resource_spans[r]->scope_spans[k])
                    total += req->resource_spans[r]->scope_spans[k]->n_spans;
        refs = calloc(total + 1, sizeof(*refs));
        if (!refs)
            fail("out of memory");
        size_t order = 0;
        for (size_t r = 0; r < req->n_resource_spans; r++) {
            const pb_resource_spans_t *rs = req->resource_spans[r];
            for (size_t k = 0; rs && k < rs->n_scope_spans; k++) {
                for (size_t i = 0; rs->scope_spans[k] && i < rs->scope_spans[k]->n_spans; i++) {
                    const pb_span_t *ps = rs->scope_spans[k]->spans[i];
                    if (!ps)
                        continue;
                    if (span_valid(ps))
                        refs[nvalid++] = (ref_t){ps, rs, order++};
                    else
                        ninvalid++;
                }
            }
        }
        qsort(refs, nvalid, sizeof(*refs), cmp_ref);
        if (ninvalid + nvalid < RC_TRACE_MAX_SPANS - MAX_SPANS)
            ENSURE(rejected == ninvalid); /* no trace of the store can fill up */
        ENSURE((uint64_t)acc <= nvalid);
    }

    /* Fetch the traces the input touched that are still held, and the newest few. */
    size_t ntouched = 0;
    uint8_t(*touched)[RC_TRACE_ID_LEN] = calloc(nvalid + NEWEST_CHECKED + 1, RC_TRACE_ID_LEN);
    if (!touched)
        fail("out of memory");
    for (size_t i = 0; i < nvalid; i++)
        if (i == 0 ||
            memcmp(refs[i - 1].ps->trace_id.data, refs[i].ps->trace_id.data, RC_TRACE_ID_LEN))
            memcpy(touched[ntouched++], refs[i].ps->trace_id.data, RC_TRACE_ID_LEN);
    for (long i = 0; i < n && i < NEWEST_CHECKED; i++)
        memcpy(touched[ntouched++], all[i].trace_id, RC_TRACE_ID_LEN);
    qsort(touched, ntouched, RC_TRACE_ID_LEN, cmp_trace_id);
    for (long i = 0; i < n; i++) {
        if (!bsearch(all[i].trace_id, touched, ntouched, RC_TRACE_ID_LEN, cmp_trace_id))
            continue;
        size_t ns = 0;
        rc_span_t *spans = check_trace(store, &all[i], &ns);
        rc_spans_free(spans, ns);
    }
    /* a trace that is not held */
    uint8_t none[RC_TRACE_ID_LEN] = {0};
    rc_span_t *sp = (rc_span_t *)1;
    size_t ns = 7;
    ENSURE(rc_store_get(store, none, &sp, &ns) == -ENOENT && sp == NULL && ns == 0);
    free(touched);
    rc_summaries_free(all, (size_t)n);

    if (req) {
        check_fresh(data, size, refs, nvalid, ninvalid);
        opentelemetry__proto__collector__trace__v1__export_trace_service_request__free_unpacked(
            req, NULL);
    }
    free(refs);
    return 0;
}
