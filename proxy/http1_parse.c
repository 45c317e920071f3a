#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http1_parse.h"

void h1_msg_init(h1_msg_t *m, uint32_t max_bytes, uint32_t max_hdrs)
{
    memset(m, 0, sizeof(*m));
    m->max_bytes = max_bytes;
    m->max_hdrs = max_hdrs;
    m->host = -1;
}

/* Whether data (after what came before, described by prev) ends in LF then only SP/HTAB. */
static uint8_t ends_nl_ws(const char *data, size_t len, uint8_t prev)
{
    while (len && (data[len - 1] == ' ' || data[len - 1] == '\t'))
        len--;
    if (!len)
        return prev;
    return data[len - 1] == '\n';
}

void h1_msg_feed(h1_msg_t *m, const char *data, size_t len)
{
    /* nl_ws describes what precedes this chunk until a callback has used it; store the state
     * at this chunk's start, and compute the state at its end for the next call. */
    m->nl_ws_start = m->nl_ws;
    m->nl_ws = ends_nl_ws(data, len, m->nl_ws);
    m->feed_start = data;
    m->feed_end = data + len;
}

void h1_msg_reset(h1_msg_t *m)
{
    m->arena.len = 0;
    m->arena.oom = 0;
    m->nhdrs = 0;
    m->in = 0;
    m->val_cut = 0;
    /* feed_start, feed_end, nl_ws and nl_ws_start describe the bytes being parsed, not the
     * message: a message begins (and is reset, as resp_on_message_begin does) inside an
     * llhttp_execute, after h1_msg_feed() told about the chunk; clearing nl_ws here would lose
     * "this chunk ends in LF and blanks" and let an obs-fold cut at that point through. */
    m->err_status = 0;
    m->err_reason = NULL;
    m->conn_tokens = 0;
    m->host = -1;
    memset(&m->url, 0, sizeof(m->url));
    memset(&m->status_text, 0, sizeof(m->status_text));
}

void h1_msg_free(h1_msg_t *m)
{
    rmr_buf_free(&m->arena);
    free(m->hdrs);
    m->hdrs = NULL;
    m->nhdrs = m->caphdrs = 0;
}

static int refuse(h1_msg_t *m, int status, const char *reason)
{
    m->err_status = status;
    m->err_reason = reason;
    return -1;
}

static int arena_add(h1_msg_t *m, h1_span_t *s, const char *at, size_t len)
{
    if (m->arena.len + len > m->max_bytes)
        return refuse(m, 431, "headers-too-large");
    if (s->len == 0)
        s->off = (uint32_t)m->arena.len;
    rmr_buf_append(&m->arena, at, len);
    if (m->arena.oom)
        return refuse(m, 503, "out-of-memory");
    s->len += (uint32_t)len;
    return 0;
}

int h1_on_url(h1_msg_t *m, const char *at, size_t len)
{
    return arena_add(m, &m->url, at, len);
}

int h1_on_status(h1_msg_t *m, const char *at, size_t len)
{
    return arena_add(m, &m->status_text, at, len);
}

int h1_on_header_field(h1_msg_t *m, const char *at, size_t len)
{
    if (m->in != 1) {
        if (m->nhdrs == m->max_hdrs)
            return refuse(m, 431, "headers-too-large");
        if (m->nhdrs == m->caphdrs) {
            uint32_t cap = m->caphdrs ? m->caphdrs * 2 : 16;
            if (cap > m->max_hdrs)
                cap = m->max_hdrs;
            h1_hdr_t *h = realloc(m->hdrs, cap * sizeof(*h));
            if (!h)
                return refuse(m, 503, "out-of-memory");
            m->hdrs = h;
            m->caphdrs = cap;
        }
        memset(&m->hdrs[m->nhdrs], 0, sizeof(m->hdrs[0]));
        m->nhdrs++;
        m->in = 1;
    }
    return arena_add(m, &m->hdrs[m->nhdrs - 1].name, at, len);
}

int h1_on_header_value(h1_msg_t *m, const char *at, size_t len)
{
    /* Control characters other than HTAB never belong in a field value (RFC 9110 5.5); a CR
     * or LF here would be a folded line or a smuggling attempt. */
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)at[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
            return refuse(m, 400, "bad-request");
    }
    if (!m->nhdrs || m->in == 0 || m->hdrs[m->nhdrs - 1].name.len == 0)
        return refuse(m, 400, "bad-request"); /* a value with no name before it */
    /* (llhttp reports an empty value as an empty span at the start of the next line.)
     * A second span of one value that does not follow a cut in the input is an obs-fold
     * continuation line (RFC 9112 5.2): refused, as a proxy must not pass it on. */
    if (m->in == 2 && !m->val_cut)
        return refuse(m, 400, "bad-request");
    if (m->in == 1 && len && m->feed_start && at >= m->feed_start && at <= m->feed_end) {
        /* The first span of a value: if only blanks stand between it and a line feed, the
         * field's own line had an empty value and this is its continuation line. */
        const char *p = at;
        while (p > m->feed_start && (p[-1] == ' ' || p[-1] == '\t'))
            p--;
        if (p > m->feed_start ? p[-1] == '\n' : m->nl_ws_start)
            return refuse(m, 400, "bad-request");
    }
    m->in = 2;
    m->val_cut = at + len == m->feed_end;
    return arena_add(m, &m->hdrs[m->nhdrs - 1].value, at, len);
}

int h1_msg_add(h1_msg_t *m, const char *name, size_t nlen, const char *value, size_t vlen)
{
    m->in = 0;
    if (!nlen)
        return refuse(m, 400, "bad-request");
    if (h1_on_header_field(m, name, nlen) < 0)
        return -1;
    m->in = 0;
    return arena_add(m, &m->hdrs[m->nhdrs - 1].value, value, vlen);
}

int h1_on_header_value_complete(h1_msg_t *m)
{
    if (!m->nhdrs || m->hdrs[m->nhdrs - 1].name.len == 0)
        return refuse(m, 400, "bad-request");
    m->in = 0;
    m->val_cut = 0;
    return 0;
}

int h1_span_ieq(const h1_msg_t *m, h1_span_t s, const char *lc, size_t n)
{
    if (s.len != n)
        return 0;
    const char *p = h1_str(m, s);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i], l = (unsigned char)lc[i];
        if (c != l && (c | 0x20) != (l | 0x20))
            return 0;
        if (c != l && !((c | 0x20) >= 'a' && (c | 0x20) <= 'z'))
            return 0;
    }
    return 1;
}

static uint8_t classify(const h1_msg_t *m, h1_span_t name)
{
    /* every header of every message comes through here: lengths first, no strlen */
#define K(s, k)                                                                                    \
    {                                                                                              \
        s, sizeof(s) - 1, k                                                                        \
    }
    static const struct {
        const char *name;
        uint8_t len, kind;
    } known[] = {
        K("connection", H_CONNECTION),
        K("keep-alive", H_KEEP_ALIVE),
        K("proxy-connection", H_PROXY_CONNECTION),
        K("te", H_TE),
        K("transfer-encoding", H_TRANSFER_ENCODING),
        K("upgrade", H_UPGRADE),
        K("content-length", H_CONTENT_LENGTH),
        K("host", H_HOST),
        K("x-forwarded-for", H_X_FORWARDED_FOR),
        K("trailer", H_TRAILER),
    };
#undef K
    if (name.len < 2 || name.len > 17)
        return H_OTHER;
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (known[i].len == name.len && h1_span_ieq(m, name, known[i].name, known[i].len))
            return known[i].kind;
    return H_OTHER;
}

/* Calls fn for each comma-separated token of a header value, trimmed. */
static void each_token(const char *v, size_t len, void (*fn)(const char *, size_t, void *),
                       void *arg)
{
    size_t i = 0;
    while (i < len) {
        while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < len && v[i] != ',')
            i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t'))
            e--;
        if (e > s)
            fn(v + s, e - s, arg);
    }
}

static void conn_token(const char *t, size_t n, void *arg)
{
    h1_msg_t *m = arg;
    if (n == 5 && !strncasecmp(t, "close", 5))
        m->conn_tokens |= H1_CONN_CLOSE;
    else if (n == 10 && !strncasecmp(t, "keep-alive", 10))
        m->conn_tokens |= H1_CONN_KEEPALIVE;
    else if (n == 7 && !strncasecmp(t, "upgrade", 7))
        m->conn_tokens |= H1_CONN_UPGRADE;
    /* Any other token names a header that is hop-by-hop for this connection. */
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        h1_span_t nm = m->hdrs[i].name;
        if (nm.len == n && !strncasecmp(h1_str(m, nm), t, n))
            m->hdrs[i].dropped = 1;
    }
}

int h1_msg_analyze(h1_msg_t *m)
{
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        h1_hdr_t *h = &m->hdrs[i];
        h->kind = classify(m, h->name);
        switch (h->kind) {
        case H_HOST:
            if (m->host >= 0)
                return refuse(m, 400, "bad-request"); /* RFC 9112 3.2: several Host */
            m->host = (int)i;
            break;
        case H_CONNECTION:
        case H_KEEP_ALIVE:
        case H_PROXY_CONNECTION:
        case H_TE:
        case H_TRANSFER_ENCODING:
        case H_UPGRADE:
        case H_CONTENT_LENGTH:
        case H_X_FORWARDED_FOR:
            /* Framing, XFF and hop-by-hop headers are written anew by the proxy. */
            h->dropped = 1;
            break;
        default:
            break;
        }
    }
    for (uint32_t i = 0; i < m->nhdrs; i++)
        if (m->hdrs[i].kind == H_CONNECTION)
            each_token(h1_str(m, m->hdrs[i].value), m->hdrs[i].value.len, conn_token, m);
    return 0;
}
