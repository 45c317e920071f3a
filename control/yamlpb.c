/*
 * YAML -> protobuf-c mapper: a recursive descent over libyaml's event stream, driven by the
 * target message's descriptors. Rules and limits are in include/remora/yamlpb.h.
 *
 * Every allocation is attached to the message tree before anything else can fail, so the one
 * cleanup path on error is protobuf_c_message_free_unpacked() of the root.
 */
#include "remora/yamlpb.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <yaml.h>

#define PATH_MAX_LEN 1024
#define KEY_SHOWN_MAX 64

struct line_ent {
    char *path;
    unsigned line;
};

struct rmr_yamlpb_lines {
    struct line_ent *v;
    size_t n, cap;
};

struct walker {
    yaml_parser_t parser;
    yaml_event_t ev;
    bool have_ev;
    bool failed;
    const char *name;
    char path[PATH_MAX_LEN];
    size_t plen;
    rmr_yamlpb_lines_t *lines;
    char *err;
    size_t errlen;
    unsigned depth;
    size_t items;
};

/* ------------------------------------------------------------------------------------------ */
/* errors and paths */

static int fail(struct walker *w, unsigned line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct walker *w, unsigned line, const char *fmt, ...)
{
    if (w->failed)
        return -EINVAL;
    w->failed = true;
    if (w->errlen == 0)
        return -EINVAL;
    int n;
    if (w->plen > 0)
        n = snprintf(w->err, w->errlen, "%s:%u: %s: ", w->name, line, w->path);
    else
        n = snprintf(w->err, w->errlen, "%s:%u: ", w->name, line);
    if (n >= 0 && (size_t)n < w->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(w->err + n, w->errlen - n, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

static unsigned ev_line(const struct walker *w)
{
    return (unsigned)w->ev.start_mark.line + 1;
}

/* Appends printf output to the path; returns the previous length for path_pop. */
static size_t path_push(struct walker *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static size_t path_push(struct walker *w, const char *fmt, ...)
{
    size_t old = w->plen;
    size_t room = sizeof(w->path) - old;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(w->path + old, room, fmt, ap);
    va_end(ap);
    if (n < 0)
        w->path[old] = '\0';
    else
        w->plen = (size_t)n < room ? old + (size_t)n : sizeof(w->path) - 1;
    return old;
}

static void path_pop(struct walker *w, size_t old)
{
    w->plen = old;
    w->path[old] = '\0';
}

static bool plain_key(const char *k, size_t len)
{
    if (len == 0 || len > KEY_SHOWN_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)k[i]) && k[i] != '_' && k[i] != '-')
            return false;
    return true;
}

/* Writes `["key"]` with quotes and backslashes escaped and long keys cut, for paths/messages. */
static void quote_short(const char *s, size_t len, char *out, size_t outlen)
{
    size_t o = 0;
    for (size_t i = 0; i < len && o + 8 < outlen; i++) {
        unsigned char c = (unsigned char)s[i];
        if (i >= KEY_SHOWN_MAX) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    out[o] = '\0';
}

static size_t path_push_key(struct walker *w, const char *k, size_t len)
{
    if (plain_key(k, len))
        return path_push(w, "%s%.*s", w->plen ? "." : "", (int)len, k);
    char q[KEY_SHOWN_MAX * 4 + 16];
    quote_short(k, len, q, sizeof(q));
    return path_push(w, "[\"%s\"]", q);
}

static int record_line(struct walker *w, unsigned line)
{
    rmr_yamlpb_lines_t *l = w->lines;
    if (!l)
        return 0;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        struct line_ent *v = realloc(l->v, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        l->v = v;
        l->cap = cap;
    }
    char *p = strdup(w->path);
    if (!p)
        return -ENOMEM;
    l->v[l->n].path = p;
    l->v[l->n].line = line;
    l->n++;
    return 0;
}

/* What the current event is, for "got ..." in messages. */
static const char *ev_what(const struct walker *w, char *buf, size_t len)
{
    switch (w->ev.type) {
    case YAML_MAPPING_START_EVENT:
        return "a mapping";
    case YAML_SEQUENCE_START_EVENT:
        return "a sequence";
    case YAML_SCALAR_EVENT: {
        char q[KEY_SHOWN_MAX * 4 + 16];
        quote_short((const char *)w->ev.data.scalar.value, w->ev.data.scalar.length, q, sizeof(q));
        snprintf(buf, len, "\"%s\"", q);
        return buf;
    }
    default:
        return "the end of a collection";
    }
}

/* ------------------------------------------------------------------------------------------ */
/* events */

static int next(struct walker *w)
{
    if (w->have_ev) {
        yaml_event_delete(&w->ev);
        w->have_ev = false;
    }
    if (!yaml_parser_parse(&w->parser, &w->ev)) {
        if (w->parser.error == YAML_MEMORY_ERROR)
            return -ENOMEM;
        unsigned line = (unsigned)w->parser.problem_mark.line + 1;
        const char *problem = w->parser.problem ? w->parser.problem : "syntax error";
        if (w->parser.context)
            return fail(w, line, "bad YAML: %s %s", problem, w->parser.context);
        return fail(w, line, "bad YAML: %s", problem);
    }
    w->have_ev = true;

    const yaml_char_t *anchor = NULL, *tag = NULL;
    switch (w->ev.type) {
    case YAML_ALIAS_EVENT:
        return fail(w, ev_line(w), "aliases (*%s) are not supported: write the value out",
                    (const char *)w->ev.data.alias.anchor);
    case YAML_SCALAR_EVENT:
        anchor = w->ev.data.scalar.anchor;
        tag = w->ev.data.scalar.tag;
        break;
    case YAML_SEQUENCE_START_EVENT:
        anchor = w->ev.data.sequence_start.anchor;
        tag = w->ev.data.sequence_start.tag;
        break;
    case YAML_MAPPING_START_EVENT:
        anchor = w->ev.data.mapping_start.anchor;
        tag = w->ev.data.mapping_start.tag;
        break;
    default:
        break;
    }
    if (anchor)
        return fail(w, ev_line(w), "anchors (&%s) are not supported: write the value out",
                    (const char *)anchor);
    if (tag)
        return fail(w, ev_line(w), "tags (%s) are not supported", (const char *)tag);
    return 0;
}

static bool ev_is_null(const struct walker *w)
{
    if (w->ev.type != YAML_SCALAR_EVENT || w->ev.data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *v = (const char *)w->ev.data.scalar.value;
    return !strcmp(v, "") || !strcmp(v, "~") || !strcmp(v, "null") || !strcmp(v, "Null") ||
           !strcmp(v, "NULL");
}

static int enter(struct walker *w)
{
    if (++w->depth > RMR_YAMLPB_MAX_DEPTH)
        return fail(w, ev_line(w), "nested deeper than %d levels", RMR_YAMLPB_MAX_DEPTH);
    return 0;
}

static int count_item(struct walker *w)
{
    if (++w->items > RMR_YAMLPB_MAX_ITEMS)
        return fail(w, ev_line(w), "more than %d items in one document", RMR_YAMLPB_MAX_ITEMS);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* descriptor shapes */

static bool is_duration(const ProtobufCMessageDescriptor *d)
{
    return !strcmp(d->name, "remora.v1.Duration") || !strcmp(d->name, "google.protobuf.Duration");
}

/* protoc turns map<K,V> foo_bar into `repeated FooBarEntry foo_bar` with fields key=1,
 * value=2; protobuf-c keeps no flag for it, so recognise that shape. */
static bool is_map_field(const ProtobufCFieldDescriptor *f)
{
    if (f->label != PROTOBUF_C_LABEL_REPEATED || f->type != PROTOBUF_C_TYPE_MESSAGE)
        return false;
    const ProtobufCMessageDescriptor *d = f->descriptor;
    if (d->n_fields != 2 || strcmp(d->fields[0].name, "key") || d->fields[0].id != 1 ||
        strcmp(d->fields[1].name, "value") || d->fields[1].id != 2)
        return false;
    char want[256];
    size_t o = 0;
    bool up = true;
    for (const char *p = f->name; *p && o + 6 < sizeof(want); p++) {
        if (*p == '_') {
            up = true;
            continue;
        }
        want[o++] = up ? (char)toupper((unsigned char)*p) : *p;
        up = false;
    }
    memcpy(want + o, "Entry", 6);
    return !strcmp(d->short_name, want);
}

static bool is_inline(const ProtobufCMessageDescriptor *d)
{
    return d->n_fields == 1 && is_map_field(&d->fields[0]);
}

static size_t elem_size(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_ENUM:
        return 4;
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return 8;
    case PROTOBUF_C_TYPE_STRING:
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(void *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    }
    return 8;
}

#define MEMBER(msg, off) ((void *)((char *)(msg) + (off)))

/* Makes room for one more element of a repeated field and returns it (zeroed); the caller
 * bumps the count once the element holds something the free path understands. */
static void *repeated_slot(ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f)
{
    size_t *n = MEMBER(msg, f->quantifier_offset);
    void **arr = MEMBER(msg, f->offset);
    size_t sz = elem_size(f->type);
    if (*n == 0 || (*n & (*n - 1)) == 0) {
        size_t cap = *n ? *n * 2 : 1;
        void *a = realloc(*arr, cap * sz);
        if (!a)
            return NULL;
        *arr = a;
    }
    void *slot = (char *)*arr + *n * sz;
    memset(slot, 0, sz);
    return slot;
}

static ProtobufCMessage *new_message(const ProtobufCMessageDescriptor *d)
{
    ProtobufCMessage *m = malloc(d->sizeof_message);
    if (m)
        protobuf_c_message_init(d, m);
    return m;
}

/* ------------------------------------------------------------------------------------------ */
/* scalars */

static const char *type_name(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        return "int32";
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        return "uint32";
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        return "int64";
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return "uint64";
    case PROTOBUF_C_TYPE_FLOAT:
        return "float";
    default:
        return "double";
    }
}

/* Decimal or 0x hex, optional sign. Returns 0, -EINVAL (not a number) or -ERANGE (more than
 * 64 bits of magnitude). */
static int parse_integer(const char *s, bool *neg, uint64_t *mag)
{
    *neg = false;
    if (*s == '-' || *s == '+')
        *neg = *s++ == '-';
    unsigned base = 10;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
    }
    if (!*s)
        return -EINVAL;
    uint64_t v = 0;
    bool overflow = false;
    for (; *s; s++) {
        unsigned d;
        if (*s >= '0' && *s <= '9')
            d = (unsigned)(*s - '0');
        else if (base == 16 && isxdigit((unsigned char)*s))
            d = (unsigned)(tolower((unsigned char)*s) - 'a' + 10);
        else
            return -EINVAL;
        if (__builtin_mul_overflow(v, base, &v) || __builtin_add_overflow(v, d, &v))
            overflow = true;
    }
    *mag = v;
    return overflow ? -ERANGE : 0;
}

static int set_integer(struct walker *w, const ProtobufCFieldDescriptor *f, void *dst,
                       const char *text)
{
    bool neg;
    uint64_t mag;
    int rc = parse_integer(text, &neg, &mag);
    bool is_unsigned = f->type == PROTOBUF_C_TYPE_UINT32 || f->type == PROTOBUF_C_TYPE_FIXED32 ||
                       f->type == PROTOBUF_C_TYPE_UINT64 || f->type == PROTOBUF_C_TYPE_FIXED64;
    char what[KEY_SHOWN_MAX * 4 + 32];
    if (rc == -EINVAL)
        return fail(w, ev_line(w), "expected %s, got %s",
                    is_unsigned ? "an unsigned integer" : "an integer",
                    ev_what(w, what, sizeof(what)));
    bool in_range = rc == 0;
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        in_range = in_range && (neg ? mag <= (uint64_t)INT32_MAX + 1 : mag <= INT32_MAX);
        if (in_range)
            *(int32_t *)dst = neg ? (int32_t)(-(int64_t)mag) : (int32_t)mag;
        break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        in_range = in_range && (neg ? mag <= (uint64_t)INT64_MAX + 1 : mag <= INT64_MAX);
        if (in_range)
            *(int64_t *)dst = neg ? (int64_t)(0 - mag) : (int64_t)mag;
        break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        in_range = in_range && (!neg || mag == 0) && mag <= UINT32_MAX;
        if (in_range)
            *(uint32_t *)dst = (uint32_t)mag;
        break;
    default:
        in_range = in_range && (!neg || mag == 0);
        if (in_range)
            *(uint64_t *)dst = mag;
        break;
    }
    if (!in_range) {
        const char *range = "";
        switch (f->type) {
        case PROTOBUF_C_TYPE_INT32:
        case PROTOBUF_C_TYPE_SINT32:
        case PROTOBUF_C_TYPE_SFIXED32:
            range = "-2147483648..2147483647";
            break;
        case PROTOBUF_C_TYPE_UINT32:
        case PROTOBUF_C_TYPE_FIXED32:
            range = "0..4294967295";
            break;
        case PROTOBUF_C_TYPE_UINT64:
        case PROTOBUF_C_TYPE_FIXED64:
            range = "0..18446744073709551615";
            break;
        default:
            range = "-9223372036854775808..9223372036854775807";
            break;
        }
        return fail(w, ev_line(w), "%s is out of range for %s (%s)", ev_what(w, what, sizeof(what)),
                    type_name(f->type), range);
    }
    return 0;
}

static int set_real(struct walker *w, const ProtobufCFieldDescriptor *f, void *dst,
                    const char *text)
{
    char what[KEY_SHOWN_MAX * 4 + 32];
    char *end;
    errno = 0;
    double v = *text && !isspace((unsigned char)*text) ? strtod(text, &end) : NAN;
    if (isnan(v) || *end || isinf(v) || (errno == ERANGE && fabs(v) > 1.0))
        return fail(w, ev_line(w), "expected a number, got %s", ev_what(w, what, sizeof(what)));
    /* strtod also takes hex floats and "infinity"; both are refused above or harmless. */
    if (f->type == PROTOBUF_C_TYPE_FLOAT) {
        if (fabs(v) > FLT_MAX)
            return fail(w, ev_line(w), "%s is out of range for float",
                        ev_what(w, what, sizeof(what)));
        *(float *)dst = (float)v;
    } else {
        *(double *)dst = v;
    }
    return 0;
}

/* CamelCase -> CAMEL_CASE_, the prefix protobuf style puts on enum value names. */
static void enum_prefix(const ProtobufCEnumDescriptor *e, char *buf, size_t len)
{
    size_t o = 0;
    const char *s = e->short_name;
    for (size_t i = 0; s[i] && o + 3 < len; i++) {
        if (i > 0 && isupper((unsigned char)s[i]) &&
            (islower((unsigned char)s[i - 1]) || isdigit((unsigned char)s[i - 1])))
            buf[o++] = '_';
        buf[o++] = (char)toupper((unsigned char)s[i]);
    }
    buf[o++] = '_';
    buf[o] = '\0';
}

const char *rmr_yamlpb_enum_name(const ProtobufCEnumDescriptor *e, int value, char *buf, size_t len)
{
    if (len == 0)
        return buf;
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(e, value);
    if (!v) {
        snprintf(buf, len, "%d", value);
        return buf;
    }
    char prefix[128];
    enum_prefix(e, prefix, sizeof(prefix));
    const char *n = v->name;
    size_t pl = strlen(prefix);
    if (!strncmp(n, prefix, pl) && n[pl])
        n += pl;
    size_t i = 0;
    for (; n[i] && i + 1 < len; i++)
        buf[i] = (char)tolower((unsigned char)n[i]);
    buf[i] = '\0';
    return buf;
}

static int set_enum(struct walker *w, const ProtobufCFieldDescriptor *f, void *dst,
                    const char *text)
{
    const ProtobufCEnumDescriptor *e = f->descriptor;
    char name[128];
    for (unsigned i = 0; i < e->n_values; i++) {
        rmr_yamlpb_enum_name(e, e->values[i].value, name, sizeof(name));
        if (!strcmp(name, text)) {
            *(int *)dst = e->values[i].value;
            return 0;
        }
    }
    char list[400], what[KEY_SHOWN_MAX * 4 + 32];
    size_t o = 0;
    list[0] = '\0';
    for (unsigned i = 0; i < e->n_values && o < sizeof(list); i++) {
        rmr_yamlpb_enum_name(e, e->values[i].value, name, sizeof(name));
        o += (size_t)snprintf(list + o, sizeof(list) - o, "%s%s", i ? ", " : "", name);
    }
    return fail(w, ev_line(w), "expected one of %s, got %s", list, ev_what(w, what, sizeof(what)));
}

static int64_t pow10i(unsigned n)
{
    int64_t p = 1;
    while (n--)
        p *= 10;
    return p;
}

int rmr_duration_parse(const char *text, int64_t *seconds, int32_t *nanos)
{
    static const struct {
        const char *u;
        int64_t ns;
    } units[] = {
        {"ns", 1},         {"us", 1000},       {"\xc2\xb5s", 1000},  {"ms", 1000000},
        {"s", 1000000000}, {"m", 60000000000}, {"h", 3600000000000},
    };
    const char *s = text;
    if (!s || !*s)
        return -EINVAL;
    if (!strcmp(s, "0")) {
        *seconds = 0;
        *nanos = 0;
        return 0;
    }
    /* Sum in nanoseconds held as 128 bits, then split, so "1.5h" and "90000000s" are exact. */
    __int128 total = 0;
    const __int128 limit = (__int128)INT64_MAX * 1000000000;
    while (*s) {
        if (!isdigit((unsigned char)*s) && *s != '.')
            return -EINVAL;
        __int128 ip = 0;
        int64_t frac = 0;
        unsigned fdigits = 0;
        bool digits = false;
        for (; isdigit((unsigned char)*s); s++) {
            ip = ip * 10 + (*s - '0');
            digits = true;
            if (ip > limit)
                return -EINVAL;
        }
        if (*s == '.') {
            s++;
            for (; isdigit((unsigned char)*s); s++) {
                digits = true;
                if (fdigits < 9) {
                    frac = frac * 10 + (*s - '0');
                    fdigits++;
                }
            }
        }
        if (!digits)
            return -EINVAL;
        size_t best = 0;
        int64_t unit = 0;
        for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
            size_t ul = strlen(units[i].u);
            if (ul > best && !strncmp(s, units[i].u, ul)) {
                best = ul;
                unit = units[i].ns;
            }
        }
        if (!unit)
            return -EINVAL;
        s += best;
        if (ip > (limit - total) / unit)
            return -EINVAL;
        total += ip * unit + (__int128)frac * unit / pow10i(fdigits);
        if (total > limit)
            return -EINVAL;
    }
    *seconds = (int64_t)(total / 1000000000);
    *nanos = (int32_t)(total % 1000000000);
    return 0;
}

static int set_duration(struct walker *w, const ProtobufCFieldDescriptor *f, void **dst)
{
    char what[KEY_SHOWN_MAX * 4 + 32];
    if (w->ev.type != YAML_SCALAR_EVENT)
        return fail(w, ev_line(w),
                    "expected a duration such as \"500ms\", \"1s\" or \"2m\", got %s",
                    ev_what(w, what, sizeof(what)));
    int64_t sec;
    int32_t ns;
    const char *text = (const char *)w->ev.data.scalar.value;
    if (strlen(text) != w->ev.data.scalar.length || rmr_duration_parse(text, &sec, &ns) < 0)
        return fail(w, ev_line(w),
                    "expected a duration such as \"500ms\", \"1s\" or \"2m\", got %s",
                    ev_what(w, what, sizeof(what)));
    const ProtobufCMessageDescriptor *d = f->descriptor;
    ProtobufCMessage *m = new_message(d);
    if (!m)
        return -ENOMEM;
    *dst = m;
    const ProtobufCFieldDescriptor *fs =
        protobuf_c_message_descriptor_get_field_by_name(d, "seconds");
    const ProtobufCFieldDescriptor *fn =
        protobuf_c_message_descriptor_get_field_by_name(d, "nanos");
    if (fs && fs->type == PROTOBUF_C_TYPE_INT64)
        *(int64_t *)MEMBER(m, fs->offset) = sec;
    if (fn && fn->type == PROTOBUF_C_TYPE_INT32)
        *(int32_t *)MEMBER(m, fn->offset) = ns;
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* the walk */

static int parse_message(struct walker *w, const ProtobufCMessageDescriptor *d,
                         ProtobufCMessage *msg);
static int parse_map(struct walker *w, const ProtobufCFieldDescriptor *f, ProtobufCMessage *msg);

/* Reads the current event (a non-null value) into one value of field f stored at dst. */
static int parse_one(struct walker *w, const ProtobufCFieldDescriptor *f, void *dst)
{
    char what[KEY_SHOWN_MAX * 4 + 32];
    if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
        const ProtobufCMessageDescriptor *d = f->descriptor;
        if (is_duration(d))
            return set_duration(w, f, dst);
        if (w->ev.type != YAML_MAPPING_START_EVENT && !ev_is_null(w))
            return fail(w, ev_line(w), "expected a mapping, got %s",
                        ev_what(w, what, sizeof(what)));
        ProtobufCMessage *m = new_message(d);
        if (!m)
            return -ENOMEM;
        *(ProtobufCMessage **)dst = m;
        return ev_is_null(w) ? 0 : parse_message(w, d, m);
    }
    if (w->ev.type != YAML_SCALAR_EVENT) {
        const char *want = "a string";
        switch (f->type) {
        case PROTOBUF_C_TYPE_BOOL:
            want = "true or false";
            break;
        case PROTOBUF_C_TYPE_ENUM:
            want = "a name";
            break;
        case PROTOBUF_C_TYPE_STRING:
        case PROTOBUF_C_TYPE_BYTES:
            break;
        case PROTOBUF_C_TYPE_FLOAT:
        case PROTOBUF_C_TYPE_DOUBLE:
            want = "a number";
            break;
        case PROTOBUF_C_TYPE_UINT32:
        case PROTOBUF_C_TYPE_UINT64:
        case PROTOBUF_C_TYPE_FIXED32:
        case PROTOBUF_C_TYPE_FIXED64:
            want = "an unsigned integer";
            break;
        default:
            want = "an integer";
        }
        return fail(w, ev_line(w), "expected %s, got %s", want, ev_what(w, what, sizeof(what)));
    }
    const char *text = (const char *)w->ev.data.scalar.value;
    size_t len = w->ev.data.scalar.length;
    if (strlen(text) != len)
        return fail(w, ev_line(w), "a value cannot contain a NUL character");
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: {
        char *s = strdup(text);
        if (!s)
            return -ENOMEM;
        *(char **)dst = s;
        return 0;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        ProtobufCBinaryData *b = dst;
        b->data = malloc(len ? len : 1);
        if (!b->data)
            return -ENOMEM;
        memcpy(b->data, text, len);
        b->len = len;
        return 0;
    }
    case PROTOBUF_C_TYPE_BOOL:
        if (!strcmp(text, "true") || !strcmp(text, "True") || !strcmp(text, "TRUE")) {
            *(protobuf_c_boolean *)dst = 1;
            return 0;
        }
        if (!strcmp(text, "false") || !strcmp(text, "False") || !strcmp(text, "FALSE")) {
            *(protobuf_c_boolean *)dst = 0;
            return 0;
        }
        return fail(w, ev_line(w), "expected true or false, got %s",
                    ev_what(w, what, sizeof(what)));
    case PROTOBUF_C_TYPE_ENUM:
        return set_enum(w, f, dst, text);
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE:
        return set_real(w, f, dst, text);
    default:
        return set_integer(w, f, dst, text);
    }
}

/* A null item of a repeated or map field: messages become empty messages (the wire format
 * cannot hold a missing element), scalars are an error. */
static int null_item(struct walker *w, const ProtobufCFieldDescriptor *f, void *dst)
{
    if (f->type == PROTOBUF_C_TYPE_MESSAGE && !is_duration(f->descriptor)) {
        ProtobufCMessage *m = new_message(f->descriptor);
        if (!m)
            return -ENOMEM;
        *(ProtobufCMessage **)dst = m;
        return 0;
    }
    return fail(w, ev_line(w), "a value is required here, got null");
}

static int parse_repeated(struct walker *w, const ProtobufCFieldDescriptor *f,
                          ProtobufCMessage *msg)
{
    char what[KEY_SHOWN_MAX * 4 + 32];
    if (w->ev.type != YAML_SEQUENCE_START_EVENT)
        return fail(w, ev_line(w), "expected a sequence, got %s", ev_what(w, what, sizeof(what)));
    int rc = enter(w);
    if (rc < 0)
        return rc;
    size_t *n = MEMBER(msg, f->quantifier_offset);
    for (;;) {
        if ((rc = next(w)) < 0)
            return rc;
        if (w->ev.type == YAML_SEQUENCE_END_EVENT)
            break;
        if ((rc = count_item(w)) < 0)
            return rc;
        size_t old = path_push(w, "[%zu]", *n);
        if ((rc = record_line(w, ev_line(w))) < 0)
            return rc;
        void *slot = repeated_slot(msg, f);
        if (!slot)
            return -ENOMEM;
        /* The slot is zeroed, which the free path treats as empty; count it now so that
         * whatever parse_one attaches is freed on failure. */
        (*n)++;
        rc = ev_is_null(w) ? null_item(w, f, slot) : parse_one(w, f, slot);
        if (rc < 0)
            return rc;
        path_pop(w, old);
    }
    w->depth--;
    return 0;
}

struct seen_key {
    const char *key; /* points into the entry message */
    unsigned line;
};

static int cmp_seen(const void *a, const void *b)
{
    const struct seen_key *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    return c ? c : (x->line > y->line) - (x->line < y->line);
}

/* Duplicate keys of one map, found by sorting once the map is read: O(n log n) however many
 * entries a hostile file has. Only string keys are checked by text; other key types compare
 * by their YAML spelling, which is what the user sees. */
static int check_dup_keys(struct walker *w, struct seen_key *keys, size_t n)
{
    if (n < 2)
        return 0;
    qsort(keys, n, sizeof(*keys), cmp_seen);
    for (size_t i = 1; i < n; i++) {
        if (strcmp(keys[i - 1].key, keys[i].key))
            continue;
        size_t old = path_push_key(w, keys[i].key, strlen(keys[i].key));
        int rc = fail(w, keys[i].line, "duplicate key (first at line %u)", keys[i - 1].line);
        path_pop(w, old);
        return rc;
    }
    return 0;
}

static int parse_map(struct walker *w, const ProtobufCFieldDescriptor *f, ProtobufCMessage *msg)
{
    char what[KEY_SHOWN_MAX * 4 + 32];
    if (w->ev.type != YAML_MAPPING_START_EVENT)
        return fail(w, ev_line(w), "expected a mapping, got %s", ev_what(w, what, sizeof(what)));
    int rc = enter(w);
    if (rc < 0)
        return rc;
    const ProtobufCMessageDescriptor *ed = f->descriptor;
    const ProtobufCFieldDescriptor *kf = &ed->fields[0], *vf = &ed->fields[1];
    size_t *n = MEMBER(msg, f->quantifier_offset);
    struct seen_key *keys = NULL;
    size_t nkeys = 0, capkeys = 0;
    char **key_texts = NULL; /* YAML spellings of non-string keys, freed below */
    for (;;) {
        if ((rc = next(w)) < 0)
            goto out;
        if (w->ev.type == YAML_MAPPING_END_EVENT)
            break;
        if ((rc = count_item(w)) < 0)
            goto out;
        if (w->ev.type != YAML_SCALAR_EVENT) {
            rc = fail(w, ev_line(w), "a key must be a scalar, got %s",
                      ev_what(w, what, sizeof(what)));
            goto out;
        }
        const char *ktext = (const char *)w->ev.data.scalar.value;
        size_t klen = w->ev.data.scalar.length;
        unsigned kline = ev_line(w);
        size_t old = path_push_key(w, ktext, klen);
        /* Keys stay short and printable so that every rendering of them (paths, JSON read
         * back as YAML, whose implicit keys end at 1024 characters) stays within bounds. */
        if (klen > RMR_YAMLPB_MAX_KEY) {
            rc = fail(w, kline, "a key must be at most %d bytes", RMR_YAMLPB_MAX_KEY);
            goto out;
        }
        for (size_t i = 0; i < klen; i++) {
            unsigned char ch = (unsigned char)ktext[i];
            if (ch < 0x20 || ch == 0x7f ||
                (ch == 0xc2 && i + 1 < klen && (unsigned char)ktext[i + 1] < 0xa0)) {
                rc = fail(w, kline, "a key cannot contain control characters");
                goto out;
            }
        }
        if ((rc = record_line(w, kline)) < 0)
            goto out;
        ProtobufCMessage **slot = repeated_slot(msg, f);
        if (!slot) {
            rc = -ENOMEM;
            goto out;
        }
        ProtobufCMessage *e = new_message(ed);
        if (!e) {
            rc = -ENOMEM;
            goto out;
        }
        *slot = e;
        (*n)++;
        if ((rc = parse_one(w, kf, MEMBER(e, kf->offset))) < 0)
            goto out;
        if (nkeys == capkeys) {
            size_t cap = capkeys ? capkeys * 2 : 16;
            struct seen_key *k = realloc(keys, cap * sizeof(*k));
            char **t = realloc(key_texts, cap * sizeof(*t));
            if (k)
                keys = k;
            if (t)
                key_texts = t;
            if (!k || !t) {
                rc = -ENOMEM;
                goto out;
            }
            capkeys = cap;
        }
        key_texts[nkeys] = NULL;
        if (kf->type == PROTOBUF_C_TYPE_STRING) {
            keys[nkeys].key = *(char **)MEMBER(e, kf->offset);
        } else {
            key_texts[nkeys] = strdup(ktext);
            if (!key_texts[nkeys]) {
                rc = -ENOMEM;
                goto out;
            }
            keys[nkeys].key = key_texts[nkeys];
        }
        keys[nkeys++].line = kline;

        if ((rc = next(w)) < 0)
            goto out;
        if (ev_is_null(w))
            rc = vf->type == PROTOBUF_C_TYPE_MESSAGE ? null_item(w, vf, MEMBER(e, vf->offset)) : 0;
        else
            rc = parse_one(w, vf, MEMBER(e, vf->offset));
        if (rc < 0)
            goto out;
        path_pop(w, old);
    }
    rc = check_dup_keys(w, keys, nkeys);
    w->depth--;
out:
    for (size_t i = 0; i < nkeys; i++)
        free(key_texts[i]);
    free(key_texts);
    free(keys);
    return rc;
}

static int set_oneof(struct walker *w, const ProtobufCMessageDescriptor *d,
                     const ProtobufCFieldDescriptor *f, ProtobufCMessage *msg, unsigned line)
{
    uint32_t *c = MEMBER(msg, f->quantifier_offset);
    if (*c == 0 || *c == f->id) {
        *c = f->id;
        return 0;
    }
    char list[300];
    size_t o = 0;
    list[0] = '\0';
    for (unsigned i = 0; i < d->n_fields && o < sizeof(list); i++)
        if ((d->fields[i].flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            d->fields[i].quantifier_offset == f->quantifier_offset)
            o += (size_t)snprintf(list + o, sizeof(list) - o, "%s%s", o ? ", " : "",
                                  d->fields[i].name);
    return fail(w, line, "only one of %s may be set", list);
}

static int parse_field(struct walker *w, const ProtobufCMessageDescriptor *d,
                       const ProtobufCFieldDescriptor *f, ProtobufCMessage *msg, unsigned kline)
{
    if (ev_is_null(w))
        return 0;
    if (is_map_field(f))
        return parse_map(w, f, msg);
    if (f->label == PROTOBUF_C_LABEL_REPEATED)
        return parse_repeated(w, f, msg);
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
        int rc = set_oneof(w, d, f, msg, kline);
        if (rc < 0)
            return rc;
    }
    if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->quantifier_offset &&
        f->type != PROTOBUF_C_TYPE_MESSAGE && f->type != PROTOBUF_C_TYPE_STRING &&
        !(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
        *(protobuf_c_boolean *)MEMBER(msg, f->quantifier_offset) = 1;
    return parse_one(w, f, MEMBER(msg, f->offset));
}

/* Length of a field's YAML name: its .proto name without a trailing '_'. */
static size_t yaml_name_len(const ProtobufCFieldDescriptor *f)
{
    size_t n = strlen(f->name);
    return n > 1 && f->name[n - 1] == '_' ? n - 1 : n;
}

static const ProtobufCFieldDescriptor *find_field(const ProtobufCMessageDescriptor *d,
                                                  const char *key, size_t klen)
{
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(d, key);
    if (f && yaml_name_len(f) == klen)
        return f;
    char k[128];
    if (klen + 2 > sizeof(k))
        return NULL;
    memcpy(k, key, klen);
    k[klen] = '_';
    k[klen + 1] = '\0';
    return protobuf_c_message_descriptor_get_field_by_name(d, k);
}

static int parse_message(struct walker *w, const ProtobufCMessageDescriptor *d,
                         ProtobufCMessage *msg)
{
    char what[KEY_SHOWN_MAX * 4 + 32];
    if (w->ev.type != YAML_MAPPING_START_EVENT)
        return fail(w, ev_line(w), "expected a mapping, got %s", ev_what(w, what, sizeof(what)));
    if (is_inline(d))
        return parse_map(w, &d->fields[0], msg);
    int rc = enter(w);
    if (rc < 0)
        return rc;
    unsigned *seen = calloc(d->n_fields ? d->n_fields : 1, sizeof(*seen));
    if (!seen)
        return -ENOMEM;
    for (;;) {
        if ((rc = next(w)) < 0)
            goto out;
        if (w->ev.type == YAML_MAPPING_END_EVENT)
            break;
        if ((rc = count_item(w)) < 0)
            goto out;
        if (w->ev.type != YAML_SCALAR_EVENT) {
            rc = fail(w, ev_line(w), "a key must be a field name, got %s",
                      ev_what(w, what, sizeof(what)));
            goto out;
        }
        const char *key = (const char *)w->ev.data.scalar.value;
        size_t klen = w->ev.data.scalar.length;
        unsigned kline = ev_line(w);
        size_t old = path_push_key(w, key, klen);
        const ProtobufCFieldDescriptor *f = strlen(key) == klen ? find_field(d, key, klen) : NULL;
        if (!f) {
            char list[400];
            size_t o = 0;
            list[0] = '\0';
            for (unsigned i = 0; i < d->n_fields && o < sizeof(list); i++)
                o += (size_t)snprintf(list + o, sizeof(list) - o, "%s%.*s", i ? ", " : "",
                                      (int)yaml_name_len(&d->fields[i]), d->fields[i].name);
            rc = fail(w, kline, "unknown field (expected one of: %s)", list);
            goto out;
        }
        size_t idx = (size_t)(f - d->fields);
        if (seen[idx]) {
            rc = fail(w, kline, "duplicate key (first at line %u)", seen[idx]);
            goto out;
        }
        seen[idx] = kline;
        if ((rc = record_line(w, kline)) < 0)
            goto out;
        if ((rc = next(w)) < 0)
            goto out;
        if ((rc = parse_field(w, d, f, msg, kline)) < 0)
            goto out;
        path_pop(w, old);
    }
    w->depth--;
    rc = 0;
out:
    free(seen);
    return rc;
}

static int parse_document(struct walker *w, const ProtobufCMessageDescriptor *d,
                          ProtobufCMessage *msg)
{
    char what[KEY_SHOWN_MAX * 4 + 32];
    int rc;
    if ((rc = next(w)) < 0) /* STREAM_START */
        return rc;
    if ((rc = next(w)) < 0)
        return rc;
    if (w->ev.type == YAML_STREAM_END_EVENT)
        return 0;
    /* DOCUMENT_START */
    if ((rc = next(w)) < 0)
        return rc;
    if (!ev_is_null(w)) {
        if (w->ev.type != YAML_MAPPING_START_EVENT)
            return fail(w, ev_line(w), "expected a mapping of fields at the top, got %s",
                        ev_what(w, what, sizeof(what)));
        if ((rc = parse_message(w, d, msg)) < 0)
            return rc;
    }
    if ((rc = next(w)) < 0) /* DOCUMENT_END */
        return rc;
    if ((rc = next(w)) < 0)
        return rc;
    if (w->ev.type != YAML_STREAM_END_EVENT)
        return fail(w, ev_line(w), "only one YAML document is allowed");
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* line index */

static int cmp_line_ent(const void *a, const void *b)
{
    const struct line_ent *x = a, *y = b;
    int c = strcmp(x->path, y->path);
    return c ? c : (x->line > y->line) - (x->line < y->line);
}

void rmr_yamlpb_lines_free(rmr_yamlpb_lines_t *lines)
{
    if (!lines)
        return;
    for (size_t i = 0; i < lines->n; i++)
        free(lines->v[i].path);
    free(lines->v);
    free(lines);
}

static const struct line_ent *lines_find(const rmr_yamlpb_lines_t *l, const char *path)
{
    size_t lo = 0, hi = l->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(l->v[mid].path, path);
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < l->n && !strcmp(l->v[lo].path, path) ? &l->v[lo] : NULL;
}

unsigned rmr_yamlpb_line(const rmr_yamlpb_lines_t *lines, const char *path)
{
    if (!lines || !path)
        return 0;
    char buf[PATH_MAX_LEN];
    size_t n = strlen(path);
    if (n >= sizeof(buf))
        n = sizeof(buf) - 1;
    memcpy(buf, path, n);
    buf[n] = '\0';
    while (n > 0) {
        const struct line_ent *e = lines_find(lines, buf);
        if (e)
            return e->line;
        /* drop the last component: ".name", "[3]" or "[\"key\"]" */
        size_t i = n;
        if (buf[n - 1] == ']') {
            while (i > 0 && buf[i - 1] != '[')
                i--;
            i = i ? i - 1 : 0;
        } else {
            while (i > 0 && buf[i - 1] != '.' && buf[i - 1] != ']')
                i--;
            if (i > 0 && buf[i - 1] == '.')
                i--;
        }
        n = i;
        buf[n] = '\0';
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* entry points */

int rmr_yamlpb_parse(const char *name, const void *buf, size_t len,
                     const ProtobufCMessageDescriptor *desc, ProtobufCMessage **out,
                     rmr_yamlpb_lines_t **lines, char *err, size_t errlen)
{
    struct walker *w = NULL;
    ProtobufCMessage *msg = NULL;
    int rc;
    *out = NULL;
    if (lines)
        *lines = NULL;
    if (errlen)
        err[0] = '\0';
    if (len > RMR_YAMLPB_MAX_INPUT) {
        if (errlen)
            snprintf(err, errlen, "%s: larger than %u bytes", name, RMR_YAMLPB_MAX_INPUT);
        return -EFBIG;
    }
    w = calloc(1, sizeof(*w));
    if (!w)
        goto nomem;
    w->name = name;
    w->err = err;
    w->errlen = errlen;
    if (lines) {
        w->lines = calloc(1, sizeof(*w->lines));
        if (!w->lines)
            goto nomem;
    }
    msg = new_message(desc);
    if (!msg)
        goto nomem;
    if (!yaml_parser_initialize(&w->parser))
        goto nomem;
    yaml_parser_set_input_string(&w->parser, buf, len);
    yaml_parser_set_encoding(&w->parser, YAML_UTF8_ENCODING);
    rc = parse_document(w, desc, msg);
    if (w->have_ev)
        yaml_event_delete(&w->ev);
    yaml_parser_delete(&w->parser);
    if (rc < 0)
        goto fail;
    if (lines) {
        if (w->lines->n > 1)
            qsort(w->lines->v, w->lines->n, sizeof(w->lines->v[0]), cmp_line_ent);
        *lines = w->lines;
    }
    free(w);
    *out = msg;
    return 0;

nomem:
    rc = -ENOMEM;
fail:
    if (rc == -ENOMEM && errlen)
        snprintf(err, errlen, "%s: out of memory", name);
    if (msg)
        protobuf_c_message_free_unpacked(msg, NULL);
    if (w)
        rmr_yamlpb_lines_free(w->lines);
    free(w);
    return rc;
}

int rmr_yamlpb_load(const char *path, const ProtobufCMessageDescriptor *desc,
                    ProtobufCMessage **out, rmr_yamlpb_lines_t **lines, char *err, size_t errlen)
{
    char *buf = NULL;
    size_t len = 0;
    int rc;
    *out = NULL;
    if (lines)
        *lines = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        goto fail_errno;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        goto fail_errno;
    }
    if (st.st_size > (off_t)RMR_YAMLPB_MAX_INPUT) {
        if (errlen)
            snprintf(err, errlen, "%s: larger than %u bytes", path, RMR_YAMLPB_MAX_INPUT);
        rc = -EFBIG;
        goto fail;
    }
    /* Read to EOF rather than trusting st_size (pipes, /proc, files that grow). */
    size_t cap = (size_t)st.st_size + 1;
    buf = malloc(cap);
    if (!buf) {
        rc = -ENOMEM;
        goto fail_errno;
    }
    for (;;) {
        if (len == cap) {
            if (cap > RMR_YAMLPB_MAX_INPUT) {
                if (errlen)
                    snprintf(err, errlen, "%s: larger than %u bytes", path, RMR_YAMLPB_MAX_INPUT);
                rc = -EFBIG;
                goto fail;
            }
            char *b = realloc(buf, cap * 2);
            if (!b) {
                rc = -ENOMEM;
                goto fail_errno;
            }
            buf = b;
            cap *= 2;
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = -errno;
            goto fail_errno;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    fd = -1;
    rc = rmr_yamlpb_parse(path, buf, len, desc, out, lines, err, errlen);
    free(buf);
    return rc;

fail_errno:
    if (errlen)
        snprintf(err, errlen, "%s: %s", path, strerror(-rc));
fail:
    if (fd >= 0)
        close(fd);
    free(buf);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* JSON rendering */

struct jbuf {
    char *b;
    size_t used, cap;
    int rc;
};

static int jgrow(char **buf, size_t *used, size_t *cap, size_t more)
{
    if (*used + more + 1 <= *cap)
        return 0;
    size_t c = *cap ? *cap : 256;
    while (c < *used + more + 1)
        c *= 2;
    char *b = realloc(*buf, c);
    if (!b)
        return -ENOMEM;
    *buf = b;
    *cap = c;
    return 0;
}

static void jput(struct jbuf *j, const char *s, size_t n)
{
    if (j->rc < 0)
        return;
    if ((j->rc = jgrow(&j->b, &j->used, &j->cap, n)) < 0)
        return;
    memcpy(j->b + j->used, s, n);
    j->used += n;
    j->b[j->used] = '\0';
}

static void jputs(struct jbuf *j, const char *s)
{
    jput(j, s, strlen(s));
}

static void jprintf(struct jbuf *j, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void jprintf(struct jbuf *j, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0)
        jput(j, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    unsigned min;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        min = 0x10000;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    unsigned cp = c & (0xff >> (len + 1));
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

int rmr_json_string(char **buf, size_t *used, size_t *cap, const char *s, size_t len)
{
    struct jbuf j = {*buf, *used, *cap, 0};
    const unsigned char *p = (const unsigned char *)s;
    jput(&j, "\"", 1);
    for (size_t i = 0; i < len && j.rc == 0;) {
        unsigned char c = p[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            jput(&j, e, 2);
            i++;
        } else if (c == '\n') {
            jput(&j, "\\n", 2);
            i++;
        } else if (c == '\t') {
            jput(&j, "\\t", 2);
            i++;
        } else if (c == '\r') {
            jput(&j, "\\r", 2);
            i++;
        } else if (c < 0x20 || c == 0x7f) {
            jprintf(&j, "\\u%04x", c);
            i++;
        } else {
            size_t n = utf8_len(p + i, len - i);
            unsigned cp = n == 2 ? ((c & 0x1fu) << 6 | (p[i + 1] & 0x3fu))
                          : n == 3
                              ? ((c & 0x0fu) << 12 | (p[i + 1] & 0x3fu) << 6 | (p[i + 2] & 0x3fu))
                              : 0;
            if (n == 0) {
                jput(&j, "\\ufffd", 6); /* not UTF-8: JSON cannot carry it */
                i++;
            } else if ((cp >= 0x80 && cp <= 0x9f) || cp == 0x2028 || cp == 0x2029 || cp == 0xfeff) {
                /* C1 controls, YAML's extra line breaks (NEL, LS, PS) and BOM: escaped so
                 * the JSON reads back the same as YAML and is safe to paste into JS */
                jprintf(&j, "\\u%04x", cp);
                i += n;
            } else {
                jput(&j, (const char *)p + i, n);
                i += n;
            }
        }
    }
    jput(&j, "\"", 1);
    *buf = j.b;
    *used = j.used;
    *cap = j.cap;
    return j.rc;
}

static void jstr(struct jbuf *j, const char *s, size_t len)
{
    if (j->rc < 0)
        return;
    j->rc = rmr_json_string(&j->b, &j->used, &j->cap, s, len);
}

static void json_duration(struct jbuf *j, const ProtobufCMessage *m)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    const ProtobufCFieldDescriptor *fs =
        protobuf_c_message_descriptor_get_field_by_name(d, "seconds");
    const ProtobufCFieldDescriptor *fn =
        protobuf_c_message_descriptor_get_field_by_name(d, "nanos");
    int64_t s = fs ? *(const int64_t *)MEMBER(m, fs->offset) : 0;
    int32_t ns = fn ? *(const int32_t *)MEMBER(m, fn->offset) : 0;
    if (ns == 0) {
        if (s != 0 && s % 3600 == 0)
            jprintf(j, "\"%" PRId64 "h\"", s / 3600);
        else if (s != 0 && s % 60 == 0)
            jprintf(j, "\"%" PRId64 "m\"", s / 60);
        else
            jprintf(j, "\"%" PRId64 "s\"", s);
    } else if (s >= 0 && s < 1000000 && ns > 0 && ns % 1000000 == 0) {
        jprintf(j, "\"%" PRId64 "ms\"", s * 1000 + ns / 1000000);
    } else {
        jprintf(j, "\"%" PRId64 ".%09ds\"", s, (int)(ns < 0 ? -ns : ns));
    }
}

static void json_message(struct jbuf *j, const ProtobufCMessage *m, unsigned depth);

static void json_value(struct jbuf *j, const ProtobufCFieldDescriptor *f, const void *v,
                       unsigned depth)
{
    char name[128];
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        jprintf(j, "%" PRId32, *(const int32_t *)v);
        break;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        jprintf(j, "%" PRIu32, *(const uint32_t *)v);
        break;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        jprintf(j, "%" PRId64, *(const int64_t *)v);
        break;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        jprintf(j, "%" PRIu64, *(const uint64_t *)v);
        break;
    case PROTOBUF_C_TYPE_FLOAT:
        jprintf(j, "%.9g", (double)*(const float *)v);
        break;
    case PROTOBUF_C_TYPE_DOUBLE:
        jprintf(j, "%.17g", *(const double *)v);
        break;
    case PROTOBUF_C_TYPE_BOOL:
        jputs(j, *(const protobuf_c_boolean *)v ? "true" : "false");
        break;
    case PROTOBUF_C_TYPE_ENUM:
        rmr_yamlpb_enum_name(f->descriptor, *(const int *)v, name, sizeof(name));
        jstr(j, name, strlen(name));
        break;
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(const char *const *)v;
        jstr(j, s ? s : "", s ? strlen(s) : 0);
        break;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *b = v;
        jstr(j, (const char *)b->data, b->len);
        break;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *m = *(const ProtobufCMessage *const *)v;
        if (!m)
            jputs(j, "null");
        else
            json_message(j, m, depth + 1);
        break;
    }
    }
}

static void json_map(struct jbuf *j, const ProtobufCFieldDescriptor *f, const ProtobufCMessage *m,
                     unsigned depth)
{
    size_t n = *(const size_t *)MEMBER(m, f->quantifier_offset);
    ProtobufCMessage *const *arr = *(ProtobufCMessage *const *const *)MEMBER(m, f->offset);
    const ProtobufCMessageDescriptor *ed = f->descriptor;
    jputs(j, "{");
    for (size_t i = 0; i < n; i++) {
        if (i)
            jputs(j, ", ");
        const ProtobufCFieldDescriptor *kf = &ed->fields[0];
        if (kf->type == PROTOBUF_C_TYPE_STRING) {
            const char *k = *(const char *const *)MEMBER(arr[i], kf->offset);
            jstr(j, k ? k : "", k ? strlen(k) : 0);
        } else {
            jputs(j, "\"");
            json_value(j, kf, MEMBER(arr[i], kf->offset), depth);
            jputs(j, "\"");
        }
        jputs(j, ": ");
        json_value(j, &ed->fields[1], MEMBER(arr[i], ed->fields[1].offset), depth);
    }
    jputs(j, "}");
}

static bool is_zero(const ProtobufCFieldDescriptor *f, const void *v)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(const char *const *)v;
        return !s || !*s;
    }
    case PROTOBUF_C_TYPE_MESSAGE:
        return *(const void *const *)v == NULL;
    case PROTOBUF_C_TYPE_BYTES:
        return ((const ProtobufCBinaryData *)v)->len == 0;
    case PROTOBUF_C_TYPE_BOOL:
        return *(const protobuf_c_boolean *)v == 0;
    case PROTOBUF_C_TYPE_FLOAT:
        return *(const float *)v == 0;
    case PROTOBUF_C_TYPE_DOUBLE:
        return *(const double *)v == 0;
    default: {
        size_t sz = elem_size(f->type);
        return sz == 4 ? *(const uint32_t *)v == 0 : *(const uint64_t *)v == 0;
    }
    }
}

static void json_message(struct jbuf *j, const ProtobufCMessage *m, unsigned depth)
{
    const ProtobufCMessageDescriptor *d = m->descriptor;
    if (depth > RMR_YAMLPB_MAX_DEPTH) {
        jputs(j, "null");
        return;
    }
    if (is_duration(d)) {
        json_duration(j, m);
        return;
    }
    if (is_inline(d)) {
        json_map(j, &d->fields[0], m, depth);
        return;
    }
    jputs(j, "{");
    bool first = true;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        const void *v = MEMBER(m, f->offset);
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            if (*(const uint32_t *)MEMBER(m, f->quantifier_offset) != f->id)
                continue;
        } else if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            if (*(const size_t *)MEMBER(m, f->quantifier_offset) == 0)
                continue;
        } else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->quantifier_offset &&
                   f->type != PROTOBUF_C_TYPE_MESSAGE && f->type != PROTOBUF_C_TYPE_STRING) {
            if (!*(const protobuf_c_boolean *)MEMBER(m, f->quantifier_offset))
                continue;
        } else if (is_zero(f, v)) {
            continue;
        }
        jputs(j, first ? "" : ", ");
        first = false;
        jstr(j, f->name, yaml_name_len(f));
        jputs(j, ": ");
        if (is_map_field(f)) {
            json_map(j, f, m, depth);
        } else if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = *(const size_t *)MEMBER(m, f->quantifier_offset);
            const char *arr = *(const char *const *)v;
            size_t sz = elem_size(f->type);
            jputs(j, "[");
            for (size_t k = 0; k < n; k++) {
                if (k)
                    jputs(j, ", ");
                json_value(j, f, arr + k * sz, depth);
            }
            jputs(j, "]");
        } else {
            json_value(j, f, v, depth);
        }
    }
    jputs(j, "}");
}

char *rmr_yamlpb_to_json(const ProtobufCMessage *msg)
{
    struct jbuf j = {0};
    if (!msg)
        jputs(&j, "null");
    else
        json_message(&j, msg, 0);
    if (j.rc < 0) {
        free(j.b);
        return NULL;
    }
    return j.b;
}
