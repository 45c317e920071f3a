/*
 * The trace store (rc_store.h): OTLP decoding into packed spans, the trace table, queries, and
 * the spans.log of --data.
 *
 * Each stored span is one malloc block: the rc_span_t, then its arrays, then its strings, so a
 * span is freed with one free() and copied out with one size computation. A trace is an array
 * of such blocks plus running aggregates (start, end, error), on a hash chain (by a keyed hash
 * of the trace id: ids come from the network) and on a list in order of last update, whose head
 * is evicted first.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "opentelemetry/proto/collector/trace/v1/trace_service.pb-c.h"
#include "remora/log.h"
#include "remora/siphash.h"
#include "rc_store.h"

typedef Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceRequest pb_request_t;
typedef Opentelemetry__Proto__Trace__V1__ResourceSpans pb_resource_spans_t;
typedef Opentelemetry__Proto__Trace__V1__ScopeSpans pb_scope_spans_t;
typedef Opentelemetry__Proto__Trace__V1__Span pb_span_t;
typedef Opentelemetry__Proto__Trace__V1__Span__Event pb_event_t;
typedef Opentelemetry__Proto__Common__V1__KeyValue pb_kv_t;
typedef Opentelemetry__Proto__Common__V1__AnyValue pb_any_t;

#define LOG_MAGIC "remora-spans-v1\n"
#define LOG_MAGIC_LEN 16

/* ---- small helpers ------------------------------------------------------------------------ */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32_ieee(const uint8_t *p, size_t n)
{
    pthread_once(&crc_once, crc_init);
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++)
        c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* SipHash-2-4 of a 16-byte trace id. */
static uint64_t siphash_id(const uint64_t key[2], const uint8_t id[RC_TRACE_ID_LEN])
{
    return rmr_siphash(key, id, RC_TRACE_ID_LEN);
}

static int all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* A growable string; on allocation failure it sets oom and drops further appends. */
typedef struct sb {
    char *p;
    size_t len, cap;
    int oom;
} sb_t;

static void sb_grow(sb_t *b, size_t more)
{
    if (b->oom)
        return;
    if (b->len + more + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more + 1)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return;
    }
    b->p = p;
    b->cap = cap;
}

static void sb_add(sb_t *b, const void *p, size_t n)
{
    sb_grow(b, n);
    if (b->oom)
        return;
    memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void sb_str(sb_t *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

/* Appends p[0..n) as valid UTF-8 without NUL: each invalid byte (and NUL) becomes U+FFFD. With
 * json, also escapes it as the inside of a JSON string. */
static void sb_utf8(sb_t *b, const uint8_t *p, size_t n, int json)
{
    static const char repl[] = "\xEF\xBF\xBD";
    size_t i = 0;
    while (i < n && !b->oom) {
        uint8_t c = p[i];
        size_t len = 0;
        if (c >= 0x01 && c < 0x80) {
            len = 1;
        } else if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
        }
        int ok = len > 0 && i + len <= n;
        for (size_t k = 1; ok && k < len; k++)
            ok = (p[i + k] & 0xC0) == 0x80;
        if (ok && len == 3) {
            uint8_t d = p[i + 1];
            ok = !(c == 0xE0 && d < 0xA0) && !(c == 0xED && d > 0x9F);
        } else if (ok && len == 4) {
            uint8_t d = p[i + 1];
            ok = !(c == 0xF0 && d < 0x90) && !(c == 0xF4 && d > 0x8F);
        }
        if (!ok) {
            sb_add(b, repl, 3);
            i++;
            continue;
        }
        if (json && len == 1 && (c < 0x20 || c == '"' || c == '\\')) {
            char esc[8];
            switch (c) {
            case '"':
                sb_add(b, "\\\"", 2);
                break;
            case '\\':
                sb_add(b, "\\\\", 2);
                break;
            case '\n':
                sb_add(b, "\\n", 2);
                break;
            case '\r':
                sb_add(b, "\\r", 2);
                break;
            case '\t':
                sb_add(b, "\\t", 2);
                break;
            default:
                snprintf(esc, sizeof(esc), "\\u%04x", c);
                sb_add(b, esc, 6);
            }
        } else {
            sb_add(b, p + i, len);
        }
        i += len;
    }
}

static void fmt_double(char *out, size_t n, double d)
{
    if (isnan(d)) {
        snprintf(out, n, "NaN");
        return;
    }
    if (isinf(d)) {
        snprintf(out, n, "%s", d > 0 ? "Infinity" : "-Infinity");
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, n, "%.*g", prec, d);
        if (strtod(out, NULL) == d)
            return;
    }
}

static void sb_base64(sb_t *b, const uint8_t *p, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n && !b->oom; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        char q[4] = {tab[(v >> 18) & 63], tab[(v >> 12) & 63], i + 1 < n ? tab[(v >> 6) & 63] : '=',
                     i + 2 < n ? tab[v & 63] : '='};
        sb_add(b, q, 4);
    }
}

/* Renders an AnyValue: as API.md's attribute string (json 0), or as a JSON value (json 1).
 * Nesting is bounded by the wire check (RC_OTLP_MAX_DEPTH), so the recursion is too. */
static void render_any(sb_t *b, const pb_any_t *v, int json)
{
    char num[40];
    if (!v) {
        if (json)
            sb_str(b, "null");
        return;
    }
    switch (v->value_case) {
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_STRING_VALUE: {
        const char *s = v->string_value ? v->string_value : "";
        if (json)
            sb_add(b, "\"", 1);
        sb_utf8(b, (const uint8_t *)s, strlen(s), json);
        if (json)
            sb_add(b, "\"", 1);
        break;
    }
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_BOOL_VALUE:
        sb_str(b, v->bool_value ? "true" : "false");
        break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_INT_VALUE:
        snprintf(num, sizeof(num), "%lld", (long long)v->int_value);
        sb_str(b, num);
        break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_DOUBLE_VALUE:
        fmt_double(num, sizeof(num), v->double_value);
        if (json && !isfinite(v->double_value)) {
            sb_add(b, "\"", 1);
            sb_str(b, num);
            sb_add(b, "\"", 1);
        } else {
            sb_str(b, num);
        }
        break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_BYTES_VALUE:
        if (json)
            sb_add(b, "\"", 1);
        sb_base64(b, v->bytes_value.data, v->bytes_value.len);
        if (json)
            sb_add(b, "\"", 1);
        break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_ARRAY_VALUE:
        sb_add(b, "[", 1);
        if (v->array_value) {
            for (size_t i = 0; i < v->array_value->n_values && !b->oom; i++) {
                if (i)
                    sb_add(b, ",", 1);
                render_any(b, v->array_value->values[i], 1);
            }
        }
        sb_add(b, "]", 1);
        break;
    case OPENTELEMETRY__PROTO__COMMON__V1__ANY_VALUE__VALUE_KVLIST_VALUE:
        sb_add(b, "{", 1);
        if (v->kvlist_value) {
            for (size_t i = 0; i < v->kvlist_value->n_values && !b->oom; i++) {
                const pb_kv_t *kv = v->kvlist_value->values[i];
                const char *k = kv && kv->key ? kv->key : "";
                if (i)
                    sb_add(b, ",", 1);
                sb_add(b, "\"", 1);
                sb_utf8(b, (const uint8_t *)k, strlen(k), 1);
                sb_add(b, "\":", 2);
                render_any(b, kv ? kv->value : NULL, 1);
            }
        }
        sb_add(b, "}", 1);
        break;
    default:
        if (json)
            sb_str(b, "null");
        break;
    }
}

/* ---- the OTLP wire check and the decoding budget ------------------------------------------ */

static int read_varint(const uint8_t *p, size_t n, size_t *i, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*i >= n)
            return -1;
        uint8_t c = p[(*i)++];
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* protobuf-c unpacks submessages recursively with no depth limit: a body of nested AnyValue
 * arrays would overflow the stack. This walks the wire format with the same descriptors first
 * and refuses nesting deeper than RC_OTLP_MAX_DEPTH (its own recursion is bounded by it). */
static int wire_check(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t n, int depth)
{
    if (depth > RC_OTLP_MAX_DEPTH)
        return -1;
    size_t i = 0;
    while (i < n) {
        uint64_t tag, v;
        if (read_varint(p, n, &i, &tag) < 0 || (tag >> 3) == 0 || (tag >> 3) > UINT32_MAX)
            return -1;
        switch (tag & 7) {
        case 0:
            if (read_varint(p, n, &i, &v) < 0)
                return -1;
            break;
        case 1:
            if (n - i < 8)
                return -1;
            i += 8;
            break;
        case 5:
            if (n - i < 4)
                return -1;
            i += 4;
            break;
        case 2: {
            if (read_varint(p, n, &i, &v) < 0 || v > n - i)
                return -1;
            const ProtobufCFieldDescriptor *f =
                protobuf_c_message_descriptor_get_field(d, (unsigned)(tag >> 3));
            if (f && f->type == PROTOBUF_C_TYPE_MESSAGE &&
                wire_check(f->descriptor, p + i, (size_t)v, depth + 1) < 0)
                return -1;
            i += (size_t)v;
            break;
        }
        default:
            return -1;
        }
    }
    return 0;
}

/* protobuf-c's allocations for one body are capped, so that a small body of many empty
 * messages cannot make the decoder take gigabytes. */
typedef struct budget {
    size_t used, limit;
    int exhausted;
} budget_t;

#define BUDGET_HDR 16

static void *budget_alloc(void *data, size_t n)
{
    budget_t *b = data;
    if (n > b->limit - b->used || n + BUDGET_HDR > b->limit - b->used) {
        b->exhausted = 1;
        return NULL;
    }
    size_t *h = malloc(n + BUDGET_HDR);
    if (!h)
        return NULL;
    h[0] = n;
    b->used += n + BUDGET_HDR;
    return (char *)h + BUDGET_HDR;
}

static void budget_free(void *data, void *p)
{
    budget_t *b = data;
    if (!p)
        return;
    size_t *h = (size_t *)((char *)p - BUDGET_HDR);
    b->used -= h[0] + BUDGET_HDR;
    free(h);
}

/* ---- building packed spans ---------------------------------------------------------------- */

/* A span being converted: strings live in the sb pool (offsets, since the pool moves), then the
 * whole thing is packed into one block. */
typedef struct str_ref {
    size_t off, len;
} str_ref_t;

typedef struct attr_build {
    str_ref_t key, value;
} attr_build_t;

typedef struct event_build {
    str_ref_t name;
    uint64_t time_ns;
    size_t first_attr, nattrs; /* into the attrs array of the builder */
} event_build_t;

typedef struct span_build {
    sb_t pool;
    attr_build_t attrs[RC_SPAN_MAX_ATTRS * (RC_SPAN_MAX_EVENTS + 1)];
    size_t nattrs_total;
    size_t span_nattrs; /* the span's own: attrs[0..span_nattrs) */
    event_build_t events[RC_SPAN_MAX_EVENTS];
    size_t nevents;
    str_ref_t service, name, status_message;
    /* the view handed to span_copy */
    rc_attr_t view_attrs[RC_SPAN_MAX_ATTRS];
    rc_event_t view_events[RC_SPAN_MAX_EVENTS];
    rc_attr_t view_ev_attrs[RC_SPAN_MAX_ATTRS * RC_SPAN_MAX_EVENTS];
} span_build_t;

/* Cuts the pool back to `from + max` bytes at a UTF-8 boundary. */
static str_ref_t pool_end(sb_t *pool, size_t from)
{
    if (pool->oom)
        return (str_ref_t){0, 0};
    size_t len = pool->len - from;
    if (len > RC_STR_MAX) {
        len = RC_STR_MAX;
        while (len > 0 && ((uint8_t)pool->p[from + len] & 0xC0) == 0x80)
            len--;
        pool->len = from + len;
    }
    sb_add(pool, "", 1); /* NUL terminator inside the pool */
    return (str_ref_t){from, len};
}

static str_ref_t pool_str(sb_t *pool, const char *s, size_t n)
{
    size_t from = pool->len;
    /* More than 3x the cap in input cannot matter after cutting. */
    sb_utf8(pool, (const uint8_t *)s, n > 3 * RC_STR_MAX ? 3 * RC_STR_MAX : n, 0);
    return pool_end(pool, from);
}

static str_ref_t pool_cstr(sb_t *pool, const char *s)
{
    return pool_str(pool, s ? s : "", s ? strlen(s) : 0);
}

static str_ref_t pool_any(sb_t *pool, const pb_any_t *v)
{
    size_t from = pool->len;
    render_any(pool, v, 0);
    return pool_end(pool, from);
}

static size_t add_attrs(span_build_t *b, pb_kv_t **kvs, size_t n)
{
    size_t added = 0;
    for (size_t i = 0; i < n && added < RC_SPAN_MAX_ATTRS; i++) {
        if (!kvs[i])
            continue;
        attr_build_t *a = &b->attrs[b->nattrs_total++];
        a->key = pool_cstr(&b->pool, kvs[i]->key);
        a->value = pool_any(&b->pool, kvs[i]->value);
        added++;
    }
    return added;
}

static size_t align8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

/* Bytes a span's arrays and strings take after its rc_span_t, 8-aligned. */
static size_t span_extra_size(const rc_span_t *s)
{
    size_t n = s->nattrs * sizeof(rc_attr_t) + s->nevents * sizeof(rc_event_t);
    size_t str = strlen(s->service) + strlen(s->name) + strlen(s->status_message) + 3;
    for (size_t i = 0; i < s->nattrs; i++)
        str += strlen(s->attrs[i].key) + strlen(s->attrs[i].value) + 2;
    for (size_t e = 0; e < s->nevents; e++) {
        const rc_event_t *ev = &s->events[e];
        n += ev->nattrs * sizeof(rc_attr_t);
        str += strlen(ev->name) + 1;
        for (size_t i = 0; i < ev->nattrs; i++)
            str += strlen(ev->attrs[i].key) + strlen(ev->attrs[i].value) + 2;
    }
    return align8(n + str);
}

static const char *put_str(char **strs, const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = *strs;
    memcpy(d, s, n);
    *strs += n;
    return d;
}

/* Copies src into *dst with its arrays and strings at *cur (span_extra_size(src) bytes, 8-aligned
 * on entry); advances *cur by that much. */
static void span_copy(rc_span_t *dst, const rc_span_t *src, char **cur)
{
    char *base = *cur;
    *dst = *src;
    rc_attr_t *attrs = (rc_attr_t *)base;
    rc_event_t *events = (rc_event_t *)(base + src->nattrs * sizeof(rc_attr_t));
    char *p = (char *)(events + src->nevents);
    size_t eattrs = 0;
    for (size_t e = 0; e < src->nevents; e++)
        eattrs += src->events[e].nattrs;
    rc_attr_t *ev_attrs = (rc_attr_t *)p;
    char *strs = p + eattrs * sizeof(rc_attr_t);

    dst->service = put_str(&strs, src->service);
    dst->name = put_str(&strs, src->name);
    dst->status_message = put_str(&strs, src->status_message);
    for (size_t i = 0; i < src->nattrs; i++) {
        attrs[i].key = put_str(&strs, src->attrs[i].key);
        attrs[i].value = put_str(&strs, src->attrs[i].value);
    }
    dst->attrs = src->nattrs ? attrs : NULL;
    for (size_t e = 0; e < src->nevents; e++) {
        const rc_event_t *se = &src->events[e];
        events[e] = *se;
        events[e].name = put_str(&strs, se->name);
        events[e].attrs = se->nattrs ? ev_attrs : NULL;
        for (size_t i = 0; i < se->nattrs; i++) {
            ev_attrs[i].key = put_str(&strs, se->attrs[i].key);
            ev_attrs[i].value = put_str(&strs, se->attrs[i].value);
        }
        ev_attrs += se->nattrs;
    }
    dst->events = src->nevents ? events : NULL;
    *cur = base + span_extra_size(src);
}

/* A stored span: one block, the rc_span_t first. */
typedef struct stored_span {
    rc_span_t s;
    size_t bytes; /* of the whole block */
} stored_span_t;

/* Builds the packed block of one OTLP span, or NULL (err says why) when it is refused. */
static stored_span_t *span_from_pb(span_build_t *b, const pb_span_t *ps, const char *service,
                                   size_t service_len, char *err, size_t errlen, int *oom)
{
    if (ps->trace_id.len != RC_TRACE_ID_LEN || all_zero(ps->trace_id.data, RC_TRACE_ID_LEN)) {
        set_err(err, errlen, "span with a trace_id of %zu bytes (want 16, not all zero)",
                ps->trace_id.len);
        return NULL;
    }
    if (ps->span_id.len != RC_SPAN_ID_LEN || all_zero(ps->span_id.data, RC_SPAN_ID_LEN)) {
        set_err(err, errlen, "span with a span_id of %zu bytes (want 8, not all zero)",
                ps->span_id.len);
        return NULL;
    }
    if (ps->parent_span_id.len != 0 && ps->parent_span_id.len != RC_SPAN_ID_LEN) {
        set_err(err, errlen, "span with a parent_span_id of %zu bytes (want 0 or 8)",
                ps->parent_span_id.len);
        return NULL;
    }

    b->pool.len = 0;
    b->pool.oom = 0;
    b->nattrs_total = 0;
    b->nevents = 0;
    b->service = pool_str(&b->pool, service, service_len);
    b->name = pool_cstr(&b->pool, ps->name);
    b->status_message = pool_cstr(&b->pool, ps->status ? ps->status->message : NULL);
    b->span_nattrs = add_attrs(b, ps->attributes, ps->n_attributes);
    for (size_t e = 0; e < ps->n_events && b->nevents < RC_SPAN_MAX_EVENTS; e++) {
        const pb_event_t *pe = ps->events[e];
        if (!pe)
            continue;
        event_build_t *eb = &b->events[b->nevents++];
        eb->name = pool_cstr(&b->pool, pe->name);
        eb->time_ns = pe->time_unix_nano;
        eb->first_attr = b->nattrs_total;
        eb->nattrs = add_attrs(b, pe->attributes, pe->n_attributes);
    }
    if (b->pool.oom) {
        *oom = 1;
        set_err(err, errlen, "out of memory");
        return NULL;
    }

    /* A view with pointers into the pool, then packed. */
    const char *pool = b->pool.p;
    rc_attr_t *attrs = b->view_attrs, *ev_attrs = b->view_ev_attrs;
    rc_event_t *events = b->view_events;
    rc_span_t v = {0};
    memcpy(v.trace_id, ps->trace_id.data, RC_TRACE_ID_LEN);
    memcpy(v.span_id, ps->span_id.data, RC_SPAN_ID_LEN);
    if (ps->parent_span_id.len == RC_SPAN_ID_LEN &&
        !all_zero(ps->parent_span_id.data, RC_SPAN_ID_LEN)) {
        memcpy(v.parent_id, ps->parent_span_id.data, RC_SPAN_ID_LEN);
        v.has_parent = 1;
    }
    v.service = *(pool + b->service.off) ? pool + b->service.off : "unknown";
    v.name = pool + b->name.off;
    v.kind = (ps->kind >= 0 && ps->kind <= 5) ? (int)ps->kind : 0;
    v.start_ns = ps->start_time_unix_nano;
    v.end_ns = ps->end_time_unix_nano;
    int code = ps->status ? (int)ps->status->code : 0;
    v.status_code = (code == RC_STATUS_OK || code == RC_STATUS_ERROR) ? code : RC_STATUS_UNSET;
    v.status_message = pool + b->status_message.off;
    for (size_t i = 0; i < b->span_nattrs; i++) {
        attrs[i].key = pool + b->attrs[i].key.off;
        attrs[i].value = pool + b->attrs[i].value.off;
    }
    v.attrs = attrs;
    v.nattrs = b->span_nattrs;
    size_t k = 0;
    for (size_t e = 0; e < b->nevents; e++) {
        const event_build_t *eb = &b->events[e];
        events[e].name = pool + eb->name.off;
        events[e].time_ns = eb->time_ns;
        events[e].attrs = &ev_attrs[k];
        events[e].nattrs = eb->nattrs;
        for (size_t i = 0; i < eb->nattrs; i++, k++) {
            ev_attrs[k].key = pool + b->attrs[eb->first_attr + i].key.off;
            ev_attrs[k].value = pool + b->attrs[eb->first_attr + i].value.off;
        }
    }
    v.events = events;
    v.nevents = b->nevents;

    size_t bytes = sizeof(stored_span_t) + span_extra_size(&v);
    stored_span_t *ss = malloc(bytes);
    if (!ss) {
        *oom = 1;
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    char *cur = (char *)(ss + 1);
    span_copy(&ss->s, &v, &cur);
    ss->bytes = bytes;
    return ss;
}

/* ---- the store ---------------------------------------------------------------------------- */

typedef struct trace {
    uint8_t id[RC_TRACE_ID_LEN];
    struct trace *hnext;       /* hash chain */
    struct trace *prev, *next; /* update order: head is evicted first */
    stored_span_t **spans;     /* in arrival order */
    size_t nspans, cap;
    uint64_t start_ns, end_ns;
    int error;
    int root_dirty; /* root_idx must be computed again: a span came since */
    size_t root_idx;
    size_t bytes;
} trace_t;

typedef struct span_log {
    char *dir, *cur_path, *old_path;
    int fd, lock_fd;
    uint64_t seg_spans, seg_bytes; /* in the current segment */
    off_t size;                    /* of the current segment */
    pthread_mutex_t mu;
} span_log_t;

struct rc_store {
    pthread_mutex_t mu;
    uint64_t max_spans, max_bytes;
    uint64_t hash_key[2];
    trace_t **buckets;
    size_t nbuckets;
    trace_t *head, *tail;
    rc_store_stats_t st;
    span_log_t *log;
    int replaying;
};

static size_t bucket_of(const rc_store_t *s, const uint8_t *id)
{
    return (size_t)siphash_id(s->hash_key, id) & (s->nbuckets - 1);
}

static trace_t *find_trace(const rc_store_t *s, const uint8_t *id)
{
    for (trace_t *t = s->buckets[bucket_of(s, id)]; t; t = t->hnext)
        if (memcmp(t->id, id, RC_TRACE_ID_LEN) == 0)
            return t;
    return NULL;
}

static void grow_table(rc_store_t *s)
{
    size_t n = s->nbuckets * 2;
    trace_t **nb = calloc(n, sizeof(*nb));
    if (!nb)
        return; /* longer chains, still correct */
    trace_t **old = s->buckets;
    size_t oldn = s->nbuckets;
    s->buckets = nb;
    s->nbuckets = n;
    for (size_t i = 0; i < oldn; i++) {
        trace_t *t = old[i];
        while (t) {
            trace_t *next = t->hnext;
            size_t b = bucket_of(s, t->id);
            t->hnext = nb[b];
            nb[b] = t;
            t = next;
        }
    }
    free(old);
}

static void list_unlink(rc_store_t *s, trace_t *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else
        s->head = t->next;
    if (t->next)
        t->next->prev = t->prev;
    else
        s->tail = t->prev;
    t->prev = t->next = NULL;
}

static void list_append(rc_store_t *s, trace_t *t)
{
    t->prev = s->tail;
    t->next = NULL;
    if (s->tail)
        s->tail->next = t;
    else
        s->head = t;
    s->tail = t;
}

static void hash_unlink(rc_store_t *s, trace_t *t)
{
    trace_t **pp = &s->buckets[bucket_of(s, t->id)];
    while (*pp != t)
        pp = &(*pp)->hnext;
    *pp = t->hnext;
}

static void trace_free(trace_t *t)
{
    for (size_t i = 0; i < t->nspans; i++)
        free(t->spans[i]);
    free(t->spans);
    free(t);
}

/* Adds one span under the lock. Returns 1 added, 0 duplicate (freed), -1 refused (freed). */
static int add_span_locked(rc_store_t *s, stored_span_t *ss, char *err, size_t errlen)
{
    trace_t *t = find_trace(s, ss->s.trace_id);
    if (!t) {
        t = calloc(1, sizeof(*t));
        if (!t) {
            free(ss);
            set_err(err, errlen, "out of memory");
            return -1;
        }
        memcpy(t->id, ss->s.trace_id, RC_TRACE_ID_LEN);
        t->start_ns = UINT64_MAX;
        size_t b = bucket_of(s, t->id);
        t->hnext = s->buckets[b];
        s->buckets[b] = t;
        list_append(s, t);
        s->st.traces++;
        if (s->st.traces > s->nbuckets)
            grow_table(s);
    } else {
        for (size_t i = 0; i < t->nspans; i++) {
            if (memcmp(t->spans[i]->s.span_id, ss->s.span_id, RC_SPAN_ID_LEN) == 0) {
                free(ss);
                s->st.duplicates++;
                return 0;
            }
        }
        if (t->nspans >= RC_TRACE_MAX_SPANS) {
            free(ss);
            set_err(err, errlen, "trace holds %d spans already", RC_TRACE_MAX_SPANS);
            return -1;
        }
        list_unlink(s, t);
        list_append(s, t);
    }
    if (t->nspans == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 4;
        stored_span_t **sp = realloc(t->spans, cap * sizeof(*sp));
        if (!sp) {
            free(ss);
            set_err(err, errlen, "out of memory");
            if (t->nspans == 0) { /* the trace was just made for this span */
                hash_unlink(s, t);
                list_unlink(s, t);
                s->st.traces--;
                trace_free(t);
            }
            return -1;
        }
        t->spans = sp;
        t->cap = cap;
    }
    t->spans[t->nspans++] = ss;
    t->root_dirty = 1;
    if (ss->s.start_ns < t->start_ns)
        t->start_ns = ss->s.start_ns;
    if (ss->s.end_ns > t->end_ns)
        t->end_ns = ss->s.end_ns;
    if (ss->s.status_code == RC_STATUS_ERROR)
        t->error = 1;
    t->bytes += ss->bytes;
    s->st.spans++;
    s->st.bytes += ss->bytes;
    return 1;
}

/* Evicts from the head until within bounds; the evicted traces are chained on *dead (by next)
 * to be freed after the lock is dropped. */
static void evict_locked(rc_store_t *s, trace_t **dead)
{
    while (s->head && (s->st.spans > s->max_spans || s->st.bytes > s->max_bytes)) {
        trace_t *t = s->head;
        list_unlink(s, t);
        hash_unlink(s, t);
        s->st.traces--;
        s->st.spans -= t->nspans;
        s->st.bytes -= t->bytes;
        s->st.evicted_traces++;
        s->st.evicted_spans += t->nspans;
        t->next = *dead;
        *dead = t;
    }
}

static int log_append(rc_store_t *s, const void *buf, size_t len, uint64_t spans);

static long ingest(rc_store_t *s, const void *buf, size_t len, uint64_t *rejected_out, char *err,
                   size_t errlen)
{
    uint64_t rejected = 0;
    set_err(err, errlen, "%s", "");
    if (rejected_out)
        *rejected_out = 0;
    if (!buf && len) {
        set_err(err, errlen, "no body");
        return -1;
    }
    if (len > RC_LOG_RECORD_MAX) {
        set_err(err, errlen, "body of %zu bytes is over the %u byte limit", len, RC_LOG_RECORD_MAX);
        goto bad;
    }
    if (wire_check(
            &opentelemetry__proto__collector__trace__v1__export_trace_service_request__descriptor,
            buf, len, 0) < 0) {
        set_err(err, errlen,
                "not an OTLP ExportTraceServiceRequest (bad protobuf wire format, or nesting "
                "deeper than %d)",
                RC_OTLP_MAX_DEPTH);
        goto bad;
    }
    budget_t budget = {0, len > (512u << 20) / 64 ? (512u << 20) : len * 64 + (1u << 20), 0};
    ProtobufCAllocator alloc = {budget_alloc, budget_free, &budget};
    pb_request_t *req =
        opentelemetry__proto__collector__trace__v1__export_trace_service_request__unpack(&alloc,
                                                                                         len, buf);
    if (!req) {
        set_err(err, errlen, "not an OTLP ExportTraceServiceRequest (protobuf decoding failed%s)",
                budget.exhausted ? ": too many values" : "");
        goto bad;
    }

    /* Convert every span outside the lock. */
    size_t total = 0;
    for (size_t r = 0; r < req->n_resource_spans; r++) {
        const pb_resource_spans_t *rs = req->resource_spans[r];
        for (size_t k = 0; rs && k < rs->n_scope_spans; k++)
            if (rs->scope_spans[k])
                total += rs->scope_spans[k]->n_spans;
    }
    stored_span_t **conv = total ? calloc(total, sizeof(*conv)) : NULL;
    span_build_t *b = total ? calloc(1, sizeof(*b)) : NULL;
    if (total && (!conv || !b)) {
        free(conv);
        free(b);
        opentelemetry__proto__collector__trace__v1__export_trace_service_request__free_unpacked(
            req, &alloc);
        set_err(err, errlen, "out of memory");
        return -1;
    }
    size_t nconv = 0;
    char why[160] = "";
    int oom = 0;
    for (size_t r = 0; r < req->n_resource_spans; r++) {
        const pb_resource_spans_t *rs = req->resource_spans[r];
        if (!rs)
            continue;
        const char *service = "unknown";
        size_t service_len = 7;
        sb_t rendered = {0};
        if (rs->resource) {
            for (size_t i = 0; i < rs->resource->n_attributes; i++) {
                const pb_kv_t *kv = rs->resource->attributes[i];
                if (kv && kv->key && strcmp(kv->key, "service.name") == 0 && kv->value) {
                    render_any(&rendered, kv->value, 0);
                    if (rendered.len > 0 && !rendered.oom) {
                        service = rendered.p;
                        service_len = rendered.len;
                    }
                    break;
                }
            }
        }
        for (size_t k = 0; k < rs->n_scope_spans; k++) {
            const pb_scope_spans_t *sc = rs->scope_spans[k];
            for (size_t i = 0; sc && i < sc->n_spans; i++) {
                if (!sc->spans[i])
                    continue;
                char e[160];
                stored_span_t *ss =
                    span_from_pb(b, sc->spans[i], service, service_len, e, sizeof(e), &oom);
                if (ss) {
                    conv[nconv++] = ss;
                } else {
                    rejected++;
                    if (!why[0])
                        snprintf(why, sizeof(why), "%s", e);
                }
            }
        }
        free(rendered.p);
    }
    if (b)
        free(b->pool.p);
    free(b);
    opentelemetry__proto__collector__trace__v1__export_trace_service_request__free_unpacked(req,
                                                                                            &alloc);

    long accepted = 0;
    trace_t *dead = NULL;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < nconv; i++) {
        char e[160];
        int r = add_span_locked(s, conv[i], e, sizeof(e));
        if (r > 0) {
            accepted++;
        } else if (r < 0) {
            rejected++;
            if (!why[0])
                snprintf(why, sizeof(why), "%s", e);
        }
    }
    evict_locked(s, &dead);
    s->st.accepted += (uint64_t)accepted;
    s->st.rejected += rejected;
    if (s->replaying)
        s->st.loaded_spans += (uint64_t)accepted;
    pthread_mutex_unlock(&s->mu);
    free(conv);
    while (dead) {
        trace_t *next = dead->next;
        trace_free(dead);
        dead = next;
    }

    if (rejected) {
        set_err(err, errlen, "%llu span%s rejected: %s", (unsigned long long)rejected,
                rejected == 1 ? "" : "s", why);
    }
    if (rejected_out)
        *rejected_out = rejected;
    if (accepted > 0 && s->log && !s->replaying)
        log_append(s, buf, len, (uint64_t)accepted);
    return accepted;

bad:
    pthread_mutex_lock(&s->mu);
    s->st.bad_bodies++;
    pthread_mutex_unlock(&s->mu);
    return -1;
}

long rc_store_add_otlp_ex(rc_store_t *s, const void *buf, size_t len, uint64_t *rejected, char *err,
                          size_t errlen)
{
    return ingest(s, buf, len, rejected, err, errlen);
}

long rc_store_add_otlp(rc_store_t *s, const void *buf, size_t len, char *err, size_t errlen)
{
    return ingest(s, buf, len, NULL, err, errlen);
}

/* ---- queries ------------------------------------------------------------------------------ */

static int cmp_trace_newest(const void *a, const void *b)
{
    const trace_t *x = *(trace_t *const *)a, *y = *(trace_t *const *)b;
    if (x->start_ns != y->start_ns)
        return x->start_ns > y->start_ns ? -1 : 1;
    return memcmp(x->id, y->id, RC_TRACE_ID_LEN);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The root: the earliest span whose parent is not in the trace (the earliest span if every
 * parent is there, as in a cycle). Cached until the trace changes; the parent lookup goes
 * through a sorted copy of the span ids, so a trace of RC_TRACE_MAX_SPANS spans costs
 * n log n, not n^2, under the lock. */
static const rc_span_t *root_span(trace_t *t)
{
    if (!t->root_dirty)
        return &t->spans[t->root_idx]->s;
    uint64_t *ids = malloc(t->nspans * sizeof(*ids));
    if (ids) {
        for (size_t i = 0; i < t->nspans; i++)
            memcpy(&ids[i], t->spans[i]->s.span_id, RC_SPAN_ID_LEN);
        qsort(ids, t->nspans, sizeof(*ids), cmp_u64);
    }
    size_t best = SIZE_MAX, first = 0;
    for (size_t i = 0; i < t->nspans; i++) {
        const rc_span_t *sp = &t->spans[i]->s;
        if (sp->start_ns < t->spans[first]->s.start_ns)
            first = i;
        if (sp->has_parent) {
            int present = 0;
            if (ids) {
                uint64_t pid;
                memcpy(&pid, sp->parent_id, RC_SPAN_ID_LEN);
                present = bsearch(&pid, ids, t->nspans, sizeof(*ids), cmp_u64) != NULL;
            } else {
                for (size_t k = 0; k < t->nspans && !present; k++)
                    present = !memcmp(t->spans[k]->s.span_id, sp->parent_id, RC_SPAN_ID_LEN);
            }
            if (present)
                continue;
        }
        if (best == SIZE_MAX || sp->start_ns < t->spans[best]->s.start_ns)
            best = i;
    }
    free(ids);
    t->root_idx = best != SIZE_MAX ? best : first;
    t->root_dirty = 0;
    return &t->spans[t->root_idx]->s;
}

/* The distinct services of t into tmp (sorted); returns their number. */
static size_t trace_services(const trace_t *t, const char **tmp)
{
    for (size_t i = 0; i < t->nspans; i++)
        tmp[i] = t->spans[i]->s.service;
    qsort(tmp, t->nspans, sizeof(*tmp), cmp_str);
    size_t n = 0;
    for (size_t i = 0; i < t->nspans; i++)
        if (n == 0 || strcmp(tmp[n - 1], tmp[i]) != 0)
            tmp[n++] = tmp[i];
    return n;
}

static int trace_matches(const trace_t *t, const char *service, int errors_only, uint64_t since_ns)
{
    if (errors_only && !t->error)
        return 0;
    if (t->start_ns < since_ns)
        return 0;
    if (!service || !*service)
        return 1;
    for (size_t i = 0; i < t->nspans; i++)
        if (strcmp(t->spans[i]->s.service, service) == 0)
            return 1;
    return 0;
}

long rc_store_list(rc_store_t *s, const char *service, int errors_only, uint64_t since_ns,
                   size_t limit, rc_trace_summary_t **out)
{
    *out = NULL;
    pthread_mutex_lock(&s->mu);
    size_t n = 0;
    trace_t **sel = NULL;
    const char **tmp = NULL;
    rc_trace_summary_t *sums = NULL;
    if (limit == 0 || s->st.traces == 0)
        goto done;
    sel = malloc(s->st.traces * sizeof(*sel));
    if (!sel)
        goto oom;
    for (trace_t *t = s->head; t; t = t->next)
        if (trace_matches(t, service, errors_only, since_ns))
            sel[n++] = t;
    qsort(sel, n, sizeof(*sel), cmp_trace_newest);
    if (n > limit)
        n = limit;
    if (n == 0)
        goto done;

    size_t maxspans = 0;
    for (size_t i = 0; i < n; i++)
        if (sel[i]->nspans > maxspans)
            maxspans = sel[i]->nspans;
    tmp = malloc(maxspans * sizeof(*tmp));
    if (!tmp)
        goto oom;
    /* Sizes first, then one block: summaries, service pointer arrays, strings. */
    size_t nptr = 0, nstr = 0;
    for (size_t i = 0; i < n; i++) {
        const rc_span_t *root = root_span(sel[i]);
        nstr += strlen(root->service) + strlen(root->name) + 2;
        size_t k = trace_services(sel[i], tmp);
        nptr += k;
        for (size_t j = 0; j < k; j++)
            nstr += strlen(tmp[j]) + 1;
    }
    sums = malloc(n * sizeof(*sums) + nptr * sizeof(char *) + nstr);
    if (!sums)
        goto oom;
    const char **ptrs = (const char **)(sums + n);
    char *strs = (char *)(ptrs + nptr);
    for (size_t i = 0; i < n; i++) {
        trace_t *t = sel[i];
        rc_trace_summary_t *u = &sums[i];
        const rc_span_t *root = root_span(t);
        memcpy(u->trace_id, t->id, RC_TRACE_ID_LEN);
        u->root_service = put_str(&strs, root->service);
        u->root_name = put_str(&strs, root->name);
        u->start_ns = t->start_ns;
        u->duration_ns = t->end_ns > t->start_ns ? t->end_ns - t->start_ns : 0;
        u->spans = (uint32_t)t->nspans;
        u->error = t->error;
        size_t k = trace_services(t, tmp);
        u->services = ptrs;
        u->nservices = k;
        for (size_t j = 0; j < k; j++)
            ptrs[j] = put_str(&strs, tmp[j]);
        ptrs += k;
    }
done:
    pthread_mutex_unlock(&s->mu);
    free(sel);
    free(tmp);
    *out = sums;
    return (long)(sums ? n : 0);
oom:
    pthread_mutex_unlock(&s->mu);
    free(sel);
    free(tmp);
    return -ENOMEM;
}

void rc_summaries_free(rc_trace_summary_t *sums, size_t n)
{
    (void)n;
    free(sums);
}

typedef struct ordered {
    const rc_span_t *sp;
    size_t idx;
} ordered_t;

static int cmp_ordered(const void *a, const void *b)
{
    const ordered_t *x = a, *y = b;
    if (x->sp->start_ns != y->sp->start_ns)
        return x->sp->start_ns < y->sp->start_ns ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

int rc_store_get(rc_store_t *s, const uint8_t trace_id[RC_TRACE_ID_LEN], rc_span_t **spans,
                 size_t *n)
{
    *spans = NULL;
    *n = 0;
    pthread_mutex_lock(&s->mu);
    const trace_t *t = find_trace(s, trace_id);
    if (!t) {
        pthread_mutex_unlock(&s->mu);
        return -ENOENT;
    }
    ordered_t *ord = malloc(t->nspans * sizeof(*ord));
    size_t bytes = t->nspans * sizeof(rc_span_t);
    for (size_t i = 0; i < t->nspans; i++)
        bytes += span_extra_size(&t->spans[i]->s);
    rc_span_t *out = ord ? malloc(bytes) : NULL;
    if (!out) {
        pthread_mutex_unlock(&s->mu);
        free(ord);
        return -ENOMEM;
    }
    for (size_t i = 0; i < t->nspans; i++)
        ord[i] = (ordered_t){&t->spans[i]->s, i};
    qsort(ord, t->nspans, sizeof(*ord), cmp_ordered);
    char *cur = (char *)(out + t->nspans);
    for (size_t i = 0; i < t->nspans; i++)
        span_copy(&out[i], ord[i].sp, &cur);
    *n = t->nspans;
    pthread_mutex_unlock(&s->mu);
    free(ord);
    *spans = out;
    return 0;
}

void rc_spans_free(rc_span_t *spans, size_t n)
{
    (void)n;
    free(spans);
}

void rc_store_stats(rc_store_t *s, rc_store_stats_t *out)
{
    pthread_mutex_lock(&s->mu);
    *out = s->st;
    pthread_mutex_unlock(&s->mu);
}

const char *rc_span_kind_name(int kind)
{
    static const char *const names[] = {"UNSPECIFIED", "INTERNAL", "SERVER",
                                        "CLIENT",      "PRODUCER", "CONSUMER"};
    return kind >= 0 && kind <= 5 ? names[kind] : "UNSPECIFIED";
}

const char *rc_status_name(int code)
{
    return code == RC_STATUS_OK ? "ok" : code == RC_STATUS_ERROR ? "error" : "unset";
}

/* ---- the span log ------------------------------------------------------------------------- */

static ssize_t read_full(int fd, void *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

static int write_full(int fd, const struct iovec *iov, int iovcnt)
{
    struct iovec v[4];
    memcpy(v, iov, (size_t)iovcnt * sizeof(*v));
    int i = 0;
    while (i < iovcnt) {
        ssize_t w = writev(fd, v + i, iovcnt - i);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        size_t left = (size_t)w;
        while (i < iovcnt && left >= v[i].iov_len)
            left -= v[i++].iov_len;
        if (i < iovcnt) {
            v[i].iov_base = (char *)v[i].iov_base + left;
            v[i].iov_len -= left;
        }
    }
    return 0;
}

static void put_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Replays one segment into the store. Returns 0, or -1 with err set when the file is not a span
 * log. *good_end gets the offset after the last good record; *spans the spans it added. */
static int replay(rc_store_t *s, int fd, const char *path, off_t *good_end, uint64_t *spans,
                  char *err, size_t errlen)
{
    uint8_t magic[LOG_MAGIC_LEN];
    *spans = 0;
    *good_end = 0;
    ssize_t r = read_full(fd, magic, sizeof(magic));
    if (r < 0) {
        set_err(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    if (r < LOG_MAGIC_LEN && memcmp(magic, LOG_MAGIC, (size_t)r) == 0)
        return 0; /* empty, or a crash while the header was written: start afresh */
    if (r < LOG_MAGIC_LEN || memcmp(magic, LOG_MAGIC, LOG_MAGIC_LEN) != 0) {
        set_err(err, errlen, "%s is not a remora-control span log (bad header); move it away",
                path);
        return -1;
    }
    off_t off = LOG_MAGIC_LEN;
    *good_end = off;
    uint64_t records = 0;
    uint8_t *body = NULL;
    const char *why = NULL;
    for (;;) {
        uint8_t hdr[8];
        r = read_full(fd, hdr, sizeof(hdr));
        if (r == 0)
            break;
        if (r < (ssize_t)sizeof(hdr)) {
            why = r < 0 ? strerror(errno) : "torn record header";
            break;
        }
        uint32_t len = get_le32(hdr), crc = get_le32(hdr + 4);
        if (len > RC_LOG_RECORD_MAX) {
            why = "record length out of range";
            break;
        }
        free(body);
        body = malloc(len ? len : 1);
        if (!body) {
            why = "out of memory";
            break;
        }
        r = read_full(fd, body, len);
        if (r < (ssize_t)len) {
            why = r < 0 ? strerror(errno) : "torn record";
            break;
        }
        if (crc32_ieee(body, len) != crc) {
            why = "record checksum mismatch";
            break;
        }
        char e[200];
        long n = ingest(s, body, len, NULL, e, sizeof(e));
        if (n > 0)
            *spans += (uint64_t)n;
        off += 8 + (off_t)len;
        *good_end = off;
        records++;
    }
    free(body);
    struct stat st;
    if (why && fstat(fd, &st) == 0)
        RMR_WARN("%s: %s at offset %lld; ignoring the %lld bytes from there", path, why,
                 (long long)*good_end, (long long)(st.st_size - *good_end));
    RMR_INFO("%s: replayed %llu records, %llu spans", path, (unsigned long long)records,
             (unsigned long long)*spans);
    return 0;
}

static int open_segment(span_log_t *lg, char *err, size_t errlen)
{
    lg->fd = open(lg->cur_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (lg->fd < 0) {
        set_err(err, errlen, "cannot create %s: %s", lg->cur_path, strerror(errno));
        return -1;
    }
    struct iovec v = {LOG_MAGIC, LOG_MAGIC_LEN};
    int ret = write_full(lg->fd, &v, 1);
    if (ret < 0) {
        set_err(err, errlen, "cannot write %s: %s", lg->cur_path, strerror(-ret));
        close(lg->fd);
        lg->fd = -1;
        return -1;
    }
    lg->size = LOG_MAGIC_LEN;
    lg->seg_spans = lg->seg_bytes = 0;
    return 0;
}

static int log_append(rc_store_t *s, const void *buf, size_t len, uint64_t spans)
{
    span_log_t *lg = s->log;
    int ret = 0;
    pthread_mutex_lock(&lg->mu);
    if (lg->fd >= 0 && (lg->seg_spans >= s->max_spans || lg->seg_bytes >= RC_LOG_SEGMENT_MAX)) {
        close(lg->fd);
        lg->fd = -1;
        char e[300];
        if (rename(lg->cur_path, lg->old_path) < 0)
            RMR_WARN("cannot rename %s to %s: %s", lg->cur_path, lg->old_path, strerror(errno));
        if (open_segment(lg, e, sizeof(e)) < 0)
            RMR_WARN("%s", e);
    }
    if (lg->fd < 0) {
        ret = -EBADF;
        goto out;
    }
    uint8_t hdr[8];
    put_le32(hdr, (uint32_t)len);
    put_le32(hdr + 4, crc32_ieee(buf, len));
    struct iovec v[2] = {{hdr, sizeof(hdr)}, {(void *)buf, len}};
    ret = write_full(lg->fd, v, 2);
    if (ret < 0) {
        /* Cut a partial record off so that later records follow a good one. */
        if (ftruncate(lg->fd, lg->size) < 0 || lseek(lg->fd, lg->size, SEEK_SET) < 0)
            RMR_WARN("cannot cut %s back to %lld bytes: %s", lg->cur_path, (long long)lg->size,
                     strerror(errno));
        goto out;
    }
    lg->size += (off_t)(sizeof(hdr) + len);
    lg->seg_bytes += sizeof(hdr) + len;
    lg->seg_spans += spans;
out:
    pthread_mutex_unlock(&lg->mu);
    pthread_mutex_lock(&s->mu);
    if (ret < 0)
        s->st.log_errors++;
    else
        s->st.log_records++;
    pthread_mutex_unlock(&s->mu);
    if (ret < 0) {
        static __thread unsigned warned;
        if (warned++ % 1000 == 0)
            RMR_WARN("cannot append to %s: %s (the spans stay in memory only)", lg->cur_path,
                     strerror(-ret));
    }
    return ret;
}

static void log_free(span_log_t *lg)
{
    if (!lg)
        return;
    if (lg->fd >= 0)
        close(lg->fd);
    if (lg->lock_fd >= 0)
        close(lg->lock_fd);
    pthread_mutex_destroy(&lg->mu);
    free(lg->dir);
    free(lg->cur_path);
    free(lg->old_path);
    free(lg);
}

static char *path_join(const char *dir, const char *name)
{
    char *p = NULL;
    if (asprintf(&p, "%s/%s", dir, name) < 0)
        return NULL;
    return p;
}

static int log_open(rc_store_t *s, const char *dir, char *err, size_t errlen)
{
    span_log_t *lg = calloc(1, sizeof(*lg));
    if (!lg) {
        set_err(err, errlen, "out of memory");
        return -1;
    }
    lg->fd = lg->lock_fd = -1;
    pthread_mutex_init(&lg->mu, NULL);
    s->log = lg;
    char *lock_path = NULL;
    int fd = -1;
    lg->dir = strdup(dir);
    lg->cur_path = path_join(dir, "spans.log");
    lg->old_path = path_join(dir, "spans.log.1");
    lock_path = path_join(dir, "lock");
    if (!lg->dir || !lg->cur_path || !lg->old_path || !lock_path) {
        set_err(err, errlen, "out of memory");
        goto fail;
    }
    if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
        set_err(err, errlen, "cannot create data directory %s: %s", dir, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (stat(dir, &st) < 0) {
        set_err(err, errlen, "data directory %s: %s", dir, strerror(errno));
        goto fail;
    }
    if (!S_ISDIR(st.st_mode)) {
        set_err(err, errlen, "data directory %s: %s", dir, strerror(ENOTDIR));
        goto fail;
    }
    lg->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lg->lock_fd < 0) {
        set_err(err, errlen, "cannot open %s: %s", lock_path, strerror(errno));
        goto fail;
    }
    if (flock(lg->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        set_err(err, errlen, "data directory %s is in use by another remora-control (%s)", dir,
                errno == EWOULDBLOCK ? "locked" : strerror(errno));
        goto fail;
    }

    s->replaying = 1;
    off_t good;
    uint64_t spans;
    fd = open(lg->old_path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        int r = replay(s, fd, lg->old_path, &good, &spans, err, errlen);
        close(fd);
        fd = -1;
        if (r < 0)
            goto fail;
    } else if (errno != ENOENT) {
        set_err(err, errlen, "cannot open %s: %s", lg->old_path, strerror(errno));
        goto fail;
    }
    fd = open(lg->cur_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        set_err(err, errlen, "cannot open %s: %s", lg->cur_path, strerror(errno));
        goto fail;
    }
    if (replay(s, fd, lg->cur_path, &good, &spans, err, errlen) < 0)
        goto fail;
    s->replaying = 0;
    if (good == 0) {
        struct iovec v = {LOG_MAGIC, LOG_MAGIC_LEN};
        /* at offset 0: replay read the cut header, and left the offset after it */
        int ret =
            ftruncate(fd, 0) < 0 || lseek(fd, 0, SEEK_SET) < 0 ? -errno : write_full(fd, &v, 1);
        if (ret < 0) {
            set_err(err, errlen, "cannot write %s: %s", lg->cur_path, strerror(-ret));
            goto fail;
        }
        good = LOG_MAGIC_LEN;
    } else if (fstat(fd, &st) == 0 && st.st_size > good && ftruncate(fd, good) < 0) {
        set_err(err, errlen, "cannot cut the torn tail of %s: %s", lg->cur_path, strerror(errno));
        goto fail;
    }
    if (lseek(fd, good, SEEK_SET) < 0) {
        set_err(err, errlen, "cannot seek %s: %s", lg->cur_path, strerror(errno));
        goto fail;
    }
    /* Writable at all? A read-only file fails here, not at the first export. */
    if (access(lg->cur_path, W_OK) < 0) {
        set_err(err, errlen, "cannot write %s: %s", lg->cur_path, strerror(errno));
        goto fail;
    }
    lg->fd = fd;
    lg->size = good;
    lg->seg_bytes = (uint64_t)good;
    lg->seg_spans = spans;
    free(lock_path);
    return 0;
fail:
    s->replaying = 0;
    if (fd >= 0)
        close(fd);
    free(lock_path);
    return -1;
}

/* ---- life cycle --------------------------------------------------------------------------- */

rc_store_t *rc_store_new(uint64_t max_spans, const char *data_dir, char *err, size_t errlen)
{
    set_err(err, errlen, "%s", "");
    if (max_spans == 0) {
        set_err(err, errlen, "max_spans must be at least 1");
        return NULL;
    }
    rc_store_t *s = calloc(1, sizeof(*s));
    if (!s) {
        set_err(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&s->mu, NULL);
    s->max_spans = max_spans;
    s->max_bytes = RC_STORE_MAX_BYTES;
    s->st.max_spans = max_spans;
    s->nbuckets = 1024;
    s->buckets = calloc(s->nbuckets, sizeof(*s->buckets));
    if (!s->buckets) {
        set_err(err, errlen, "out of memory");
        goto fail;
    }
    if (getrandom(s->hash_key, sizeof(s->hash_key), 0) != sizeof(s->hash_key)) {
        /* No entropy yet (early boot): the address and time are a weak but usable key. */
        s->hash_key[0] = (uint64_t)(uintptr_t)s ^ (uint64_t)time(NULL);
        s->hash_key[1] = (uint64_t)(uintptr_t)&s ^ 0x9e3779b97f4a7c15ULL;
    }
    if (data_dir && log_open(s, data_dir, err, errlen) < 0)
        goto fail;
    return s;
fail:
    rc_store_free(s);
    return NULL;
}

void rc_store_free(rc_store_t *s)
{
    if (!s)
        return;
    trace_t *t = s->head;
    while (t) {
        trace_t *next = t->next;
        trace_free(t);
        t = next;
    }
    free(s->buckets);
    log_free(s->log);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
