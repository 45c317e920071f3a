/*
 * libFuzzer target for the HTTP/1 head path: proxy/http1_parse.c (the span callbacks that
 * collect a head into an arena, the limits, h1_msg_analyze) driven by llhttp the way
 * proxy/http1.c drives it:
 *
 *   requests   a fresh h1_msg_t per message (stream_new), on_message_complete returns
 *              HPE_PAUSED and the caller resumes and feeds the rest (pipelining); CONNECT is
 *              refused in on_headers_complete; HPE_PAUSED_UPGRADE ends parsing (tunnel).
 *   responses  one h1_msg_t reset per message, interim 1xx responses do not pause, a HEAD
 *              request makes on_headers_complete return 1, a 101 to an upgrade request
 *              returns 2 (tunnel); after the pause the parser is resumed (connection reuse);
 *              llhttp_finish at EOF (close-delimited bodies).
 *
 * h1_msg_feed() is called before every llhttp_execute on the message being parsed, and from
 * on_message_begin for a request (the bytes of the execute that began it), as http1.c does.
 *
 * Input: byte 0 selects the mode, the rest is the stream.
 *   bit 0      0 request, 1 response
 *   bits 1-3   how the stream is cut into llhttp_execute calls (see chunk_len)
 *   bits 4-5   limits (max_bytes, max_hdrs)
 *   bit 6      response: the request was HEAD
 *   bit 7      response: the request asked for an upgrade
 *
 * Every chunk is copied into its own heap block of exactly its size and freed after its
 * execute, so ASan sees a read past a chunk or a span kept pointing into the input. After
 * each head: h1_msg_analyze, then every span is read byte by byte and the invariants are
 * checked; a violation calls abort(). The stream is parsed twice, cut as byte 0 says and in
 * one piece, and the two runs must agree on every completed head and on whether the stream
 * was refused: how bytes arrive must not change what the proxy accepts.
 *
 * Built with -fsanitize=fuzzer when -Dfuzz=true and the compiler is clang; otherwise
 * fuzz_http1_replay (this file + fuzz_replay.c) runs the same checks over the seed corpus.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <llhttp.h>

#include "http1_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "fuzz_http1: invariant failed at line %d: %s\n", __LINE__, #c);        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

typedef struct run {
    llhttp_t parser;
    h1_msg_t msg;
    int response;
    int head_req, upgrade_req;
    uint32_t max_bytes, max_hdrs;
    int msg_live;                      /* msg was initialised (requests: one per message) */
    int msg_current;                   /* msg is being parsed: h1_msg_feed before each execute */
    int refused;                       /* one of the h1_* callbacks returned -1 */
    int ended;                         /* a pause left for good: tunnel, or a refusal */
    const char *feed_start, *feed_end; /* the bytes of the current execute */
    uint64_t digest;                   /* FNV-1a over completed heads and bodies */
    unsigned heads;
    volatile unsigned sink;
} run_t;

static void mix(run_t *r, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        r->digest ^= b[i];
        r->digest *= 1099511628211ull;
    }
}

static void mix_u32(run_t *r, uint32_t v)
{
    mix(r, &v, sizeof(v));
}

/* Every byte of a span, so ASan reports a span that leaves the arena's allocation. */
static void walk_span(run_t *r, const h1_msg_t *m, h1_span_t s, int is_value)
{
    CHECK((uint64_t)s.off + s.len <= m->arena.len);
    if (!s.len)
        return;
    CHECK(m->arena.data != NULL);
    const unsigned char *p = (const unsigned char *)m->arena.data + s.off;
    unsigned acc = 0;
    for (uint32_t i = 0; i < s.len; i++) {
        acc += p[i];
        if (is_value)
            CHECK(p[i] != '\r' && p[i] != '\n' && p[i] != '\0');
    }
    r->sink += acc;
    mix_u32(r, s.len);
    mix(r, p, s.len);
}

static void check_msg(run_t *r, const h1_msg_t *m)
{
    CHECK(m->arena.len <= m->max_bytes);
    CHECK(m->arena.len <= m->arena.cap);
    CHECK(m->max_bytes == r->max_bytes && m->max_hdrs == r->max_hdrs);
    CHECK(m->nhdrs <= m->max_hdrs);
    CHECK(m->nhdrs <= m->caphdrs);
    CHECK(m->nhdrs == 0 || m->hdrs != NULL);
    walk_span(r, m, m->url, 0);
    walk_span(r, m, m->status_text, 0);
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        const h1_hdr_t *h = &m->hdrs[i];
        walk_span(r, m, h->name, 0);
        walk_span(r, m, h->value, 1);
    }
}

/* ---- span callbacks: the h1_* functions, with the refusal contract checked ---- */

static int after(run_t *r, int rc)
{
    CHECK(rc == 0 || rc == -1);
    if (rc == -1) {
        CHECK(r->msg.err_status == 400 || r->msg.err_status == 431 || r->msg.err_status == 503);
        CHECK(r->msg.err_reason != NULL);
        r->refused = 1;
    } else {
        CHECK(r->msg.err_status == 0);
    }
    CHECK(r->msg.arena.len <= r->msg.max_bytes);
    CHECK(r->msg.nhdrs <= r->msg.max_hdrs);
    return rc;
}

static void note_feed(run_t *r, const char *at, size_t len)
{
    /* a span always lies inside the bytes of the current execute */
    CHECK(at != NULL);
    CHECK(at >= r->feed_start && at + len <= r->feed_end);
    CHECK(r->msg.feed_end == r->feed_end);
}

static int cb_url(llhttp_t *p, const char *at, size_t len)
{
    run_t *r = p->data;
    note_feed(r, at, len);
    return after(r, h1_on_url(&r->msg, at, len));
}

static int cb_status(llhttp_t *p, const char *at, size_t len)
{
    run_t *r = p->data;
    note_feed(r, at, len);
    return after(r, h1_on_status(&r->msg, at, len));
}

static int cb_header_field(llhttp_t *p, const char *at, size_t len)
{
    run_t *r = p->data;
    note_feed(r, at, len);
    return after(r, h1_on_header_field(&r->msg, at, len));
}

static int cb_header_value(llhttp_t *p, const char *at, size_t len)
{
    run_t *r = p->data;
    note_feed(r, at, len);
    return after(r, h1_on_header_value(&r->msg, at, len));
}

static int cb_header_value_complete(llhttp_t *p)
{
    run_t *r = p->data;
    return after(r, h1_on_header_value_complete(&r->msg));
}

static int cb_body(llhttp_t *p, const char *at, size_t len)
{
    run_t *r = p->data;
    note_feed(r, at, len);
    mix(r, at, len); /* the body, in order, whatever the cuts */
    return 0;
}

/* Common part of on_headers_complete: analyze, walk, check. -1 when analyze refused. */
static int head_done(run_t *r, llhttp_t *p)
{
    h1_msg_t *m = &r->msg;
    /* a refusal stops llhttp, so a complete head was never refused */
    CHECK(m->err_status == 0);
    CHECK(!r->refused);
    CHECK(m->in == 0);
    int rc = h1_msg_analyze(m);
    CHECK(rc == 0 || rc == -1);
    if (rc < 0) {
        CHECK(m->err_status == 400 && m->err_reason);
        r->refused = 1;
        /* the only refusal of analyze: several Host headers */
        int hosts = 0;
        for (uint32_t i = 0; i < m->nhdrs; i++)
            hosts += h1_span_eq(m, m->hdrs[i].name, "host");
        CHECK(hosts > 1);
        check_msg(r, m);
        return -1;
    }
    check_msg(r, m);
    int hosts = 0, cl = 0, te = 0, conn_upgrade = 0;
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        const h1_hdr_t *h = &m->hdrs[i];
        CHECK(h->name.len > 0);
        CHECK(h->kind <= H_TRAILER);
        switch (h->kind) {
        case H_HOST:
            hosts++;
            CHECK(m->host == (int)i);
            CHECK(h1_span_eq(m, h->name, "host"));
            break;
        case H_CONTENT_LENGTH:
            cl++;
            CHECK(h->dropped);
            break;
        case H_TRANSFER_ENCODING:
            te++;
            CHECK(h->dropped);
            break;
        case H_CONNECTION:
        case H_KEEP_ALIVE:
        case H_PROXY_CONNECTION:
        case H_TE:
        case H_UPGRADE:
        case H_X_FORWARDED_FOR:
            CHECK(h->dropped); /* written anew by the proxy, never passed on */
            break;
        default:
            break;
        }
        /* the framing headers are recognised whatever their case */
        if (h1_span_eq(m, h->name, "content-length") || h1_span_eq(m, h->name, "transfer-encoding"))
            CHECK(h->dropped);
        mix_u32(r, h->kind | (uint32_t)h->dropped << 8);
    }
    CHECK(hosts <= 1);
    CHECK(m->host == -1 || hosts == 1);
    /* llhttp's framing came from headers the module saw and will not forward */
    if (p->flags & F_CHUNKED)
        CHECK(te > 0);
    if (p->flags & F_CONTENT_LENGTH)
        CHECK(cl > 0);
    (void)conn_upgrade;
    mix_u32(r, m->conn_tokens);
    mix_u32(r, (uint32_t)m->host);
    mix_u32(r, p->method | (uint32_t)p->status_code << 8);
    r->heads++;
    return 0;
}

/* ---- requests (proxy/http1.c req_settings) ---- */

static int req_message_begin(llhttp_t *p)
{
    run_t *r = p->data;
    /* stream_new: a fresh message with the configured limits */
    if (r->msg_live)
        h1_msg_free(&r->msg);
    h1_msg_init(&r->msg, r->max_bytes, r->max_hdrs);
    r->msg_live = 1;
    r->msg_current = 1;
    /* req_on_message_begin: the message learns about the bytes of this execute */
    h1_msg_feed(&r->msg, r->feed_start, (size_t)(r->feed_end - r->feed_start));
    return 0;
}

static int req_headers_complete(llhttp_t *p)
{
    run_t *r = p->data;
    if (head_done(r, p) < 0)
        return -1;
    if (p->method == HTTP_CONNECT) {
        r->msg.err_status = 405;
        r->msg.err_reason = "method-not-allowed";
        r->refused = 1;
        return -1;
    }
    return 0;
}

static int req_message_complete(llhttp_t *p)
{
    run_t *r = p->data;
    mix_u32(r, 0x4d534743); /* message end marker */
    CHECK(r->msg.err_status == 0);
    check_msg(r, &r->msg); /* trailers went into the same message */
    r->msg_current = 0;    /* the stream ends before the next message is parsed */
    return HPE_PAUSED;
}

/* ---- responses (proxy/http1.c resp_settings) ---- */

static int resp_message_begin(llhttp_t *p)
{
    run_t *r = p->data;
    h1_msg_reset(&r->msg);
    CHECK(r->msg.arena.len == 0 && r->msg.nhdrs == 0 && r->msg.err_status == 0);
    return 0;
}

static int resp_headers_complete(llhttp_t *p)
{
    run_t *r = p->data;
    if (head_done(r, p) < 0)
        return -1;
    int status = p->status_code;
    int interim = status >= 100 && status < 200 && status != 101;
    if (status == 101 && r->upgrade_req)
        return 2;
    if (r->head_req && !interim)
        return 1;
    return 0;
}

static int resp_message_complete(llhttp_t *p)
{
    run_t *r = p->data;
    int status = p->status_code;
    mix_u32(r, 0x4d534743);
    CHECK(r->msg.err_status == 0);
    check_msg(r, &r->msg);
    if (status >= 100 && status < 200 && status != 101)
        return 0;
    return HPE_PAUSED;
}

static llhttp_settings_t req_settings, resp_settings;

static void settings_init(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    llhttp_settings_init(&req_settings);
    req_settings.on_message_begin = req_message_begin;
    req_settings.on_url = cb_url;
    req_settings.on_header_field = cb_header_field;
    req_settings.on_header_value = cb_header_value;
    req_settings.on_header_value_complete = cb_header_value_complete;
    req_settings.on_headers_complete = req_headers_complete;
    req_settings.on_body = cb_body;
    req_settings.on_message_complete = req_message_complete;

    llhttp_settings_init(&resp_settings);
    resp_settings.on_message_begin = resp_message_begin;
    resp_settings.on_status = cb_status;
    resp_settings.on_header_field = cb_header_field;
    resp_settings.on_header_value = cb_header_value;
    resp_settings.on_header_value_complete = cb_header_value_complete;
    resp_settings.on_headers_complete = resp_headers_complete;
    resp_settings.on_body = cb_body;
    resp_settings.on_message_complete = resp_message_complete;
}

/* ---- feeding ---- */

/* Length of the next chunk at offset off of the stream s[0..n). */
static size_t chunk_len(unsigned pattern, const uint8_t *s, size_t n, size_t off, unsigned idx,
                        uint32_t *rng)
{
    size_t left = n - off, k;
    switch (pattern) {
    case 0: /* all at once */
        return left;
    case 1: /* byte by byte */
        return 1;
    case 2:
        k = 2;
        break;
    case 3:
        k = 3 + idx % 5;
        break;
    case 4:
        k = 16;
        break;
    case 5: /* cut just after each CR */
        for (k = 0; off + k < n && s[off + k] != '\r'; k++)
            ;
        k++;
        break;
    case 6: /* cut just after each LF, ':' or SP: at the edges of spans */
        for (k = 0; off + k < n && s[off + k] != '\n' && s[off + k] != ':' && s[off + k] != ' ';
             k++)
            ;
        k++;
        break;
    default: /* pseudo-random 1..32 */
        *rng = *rng * 1103515245u + 12345u;
        k = 1 + (*rng >> 16) % 32;
        break;
    }
    return k < left ? k : left;
}

/* One execute with the caller's bookkeeping (down_feed/up_feed). 1: keep feeding. */
static int feed(run_t *r, const char *data, size_t len)
{
    while (len) {
        r->feed_start = data;
        r->feed_end = data + len;
        if (r->msg_current) /* before each execute, as down_feed and up_feed do */
            h1_msg_feed(&r->msg, data, len);
        llhttp_errno_t err = llhttp_execute(&r->parser, data, len);
        if (err == HPE_OK)
            return 1;
        if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
            CHECK(!r->refused);
            const char *pos = llhttp_get_error_pos(&r->parser);
            CHECK(pos && pos >= data && pos <= data + len);
            size_t used = (size_t)(pos - data);
            if (err == HPE_PAUSED_UPGRADE || r->parser.upgrade) {
                /* a tunnel: what follows is not HTTP any more */
                mix_u32(r, 0x54554e4e);
                r->ended = 1;
                return 0;
            }
            /* stream_end / up_release: resume, the rest is the next message */
            llhttp_resume(&r->parser);
            data += used;
            len -= used;
            continue;
        }
        /* A parse error or a refusal: the proxy answers and closes. */
        if (r->msg_live && r->msg.err_status)
            CHECK(r->refused); /* err_status set means a callback returned -1 */
        if (r->refused)
            CHECK(err == HPE_USER || err == HPE_CB_HEADER_VALUE_COMPLETE ||
                  err == HPE_CB_HEADERS_COMPLETE);
        mix_u32(r, 0x45525221);
        r->ended = 1;
        return 0;
    }
    return 1;
}

static uint64_t run_stream(unsigned sel, unsigned pattern, const uint8_t *s, size_t n,
                           unsigned *heads)
{
    static const uint32_t bytes_lim[4] = {65536, 1024, 64, 1024 * 1024};
    static const uint32_t hdrs_lim[4] = {100, 4, 1, 1000};
    run_t r;
    memset(&r, 0, sizeof(r));
    r.response = sel & 1;
    r.head_req = (sel >> 6) & 1;
    r.upgrade_req = (sel >> 7) & 1;
    r.max_bytes = bytes_lim[(sel >> 4) & 3];
    r.max_hdrs = hdrs_lim[(sel >> 4) & 3];
    r.digest = 14695981039346656037ull;
    llhttp_init(&r.parser, r.response ? HTTP_RESPONSE : HTTP_REQUEST,
                r.response ? &resp_settings : &req_settings);
    r.parser.data = &r;
    if (r.response) {
        /* the proxy keeps one response message per stream and resets it per message */
        h1_msg_init(&r.msg, r.max_bytes, r.max_hdrs);
        r.msg_live = 1;
        r.msg_current = 1;
    }
    uint32_t rng = (uint32_t)n * 2654435761u;
    size_t off = 0;
    unsigned idx = 0;
    while (off < n && !r.ended) {
        size_t k = chunk_len(pattern, s, n, off, idx++, &rng);
        char *chunk = malloc(k);
        if (!chunk)
            break;
        memcpy(chunk, s + off, k);
        feed(&r, chunk, k);
        free(chunk);
        off += k;
    }
    if (!r.ended && r.response) {
        /* EOF from the upstream: a close-delimited body ends here */
        llhttp_errno_t err = llhttp_finish(&r.parser);
        mix_u32(&r, (uint32_t)(err == HPE_OK));
    }
#ifdef FUZZ_HTTP1_TRACE /* cc -DFUZZ_HTTP1_TRACE ...: what each seed does */
    fprintf(stderr, "  cut %u: %u heads, %s, err_status %d, llhttp %s\n", pattern, r.heads,
            r.ended ? (r.parser.upgrade ? "ended (tunnel/pause)" : "ended (error)") : "open",
            r.msg_live ? r.msg.err_status : 0, llhttp_errno_name(llhttp_get_errno(&r.parser)));
#endif
    if (r.msg_live)
        h1_msg_free(&r.msg);
    *heads = r.heads;
    return r.digest ^ (uint64_t)r.ended << 63;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    settings_init();
    unsigned sel = data[0];
    unsigned pattern = (sel >> 1) & 7;
    unsigned heads_cut, heads_whole;
    uint64_t cut = run_stream(sel, pattern, data + 1, size - 1, &heads_cut);
    if (pattern != 0) {
        uint64_t whole = run_stream(sel, 0, data + 1, size - 1, &heads_whole);
        if (cut != whole || heads_cut != heads_whole) {
            fprintf(stderr, "fuzz_http1: cut %u gives %u heads, whole gives %u; digests %s\n",
                    pattern, heads_cut, heads_whole, cut == whole ? "agree" : "differ");
            abort();
        }
    }
    return 0;
}
