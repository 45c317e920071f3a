/*
 * Unit test of proxy/http1_parse.c: llhttp drives the h1_msg_t span callbacks the way
 * proxy/http1.c does (h1_msg_feed() before each llhttp_execute), and the
 * collected spans, limits and header classification are checked. Prints one line per check;
 * exits 1 when any check fails.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http1_parse.h"

#include "check.h"

/* A span's bytes equal a literal exactly (case-sensitive). */
#define CHECK_SPAN(m, s, want)                                                                     \
    do {                                                                                           \
        const h1_msg_t *m_ = (m);                                                                  \
        h1_span_t s_ = (s);                                                                        \
        const char *w_ = (want);                                                                   \
        checks++;                                                                                  \
        if (s_.len == strlen(w_) && (s_.len == 0 || !memcmp(h1_str(m_, s_), w_, s_.len))) {        \
            printf("ok   %s == \"%s\"\n", #s, w_);                                                 \
        } else {                                                                                   \
            printf("FAIL %s:%d: %s: got \"%.*s\", want \"%s\"\n", __FILE__, __LINE__, #s,          \
                   (int)s_.len, s_.len ? h1_str(m_, s_) : "", w_);                                 \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

/* ---- the driver, as proxy/http1.c wires llhttp ---- */

typedef struct run {
    h1_msg_t msg;
    int headers_complete;
    int analyze_ret;
} run_t;

#define MSG(p) (&((run_t *)(p)->data)->msg)

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    return h1_on_url(MSG(p), at, len);
}
static int on_status(llhttp_t *p, const char *at, size_t len)
{
    return h1_on_status(MSG(p), at, len);
}
static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    return h1_on_header_field(MSG(p), at, len);
}
static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    return h1_on_header_value(MSG(p), at, len);
}
static int on_header_value_complete(llhttp_t *p)
{
    return h1_on_header_value_complete(MSG(p));
}
static int on_headers_complete(llhttp_t *p)
{
    run_t *r = p->data;
    r->headers_complete = 1;
    r->analyze_ret = h1_msg_analyze(&r->msg);
    return r->analyze_ret < 0 ? -1 : 0;
}

static llhttp_settings_t settings;

/*
 * Parses text (a request, or a response when resp) in chunks of chunk bytes (0: whole). The
 * text is copied into a fresh heap block per chunk so that spans can only be right if the
 * callbacks copy them. Returns llhttp's error (HPE_OK when all was consumed).
 */
static llhttp_errno_t parse(run_t *r, const char *text, size_t chunk, int resp)
{
    llhttp_t p;
    llhttp_init(&p, resp ? HTTP_RESPONSE : HTTP_REQUEST, &settings);
    p.data = r;
    r->headers_complete = 0;
    r->analyze_ret = 0;
    size_t len = strlen(text);
    if (!chunk)
        chunk = len;
    llhttp_errno_t err = HPE_OK;
    for (size_t off = 0; off < len; off += chunk) {
        size_t n = len - off < chunk ? len - off : chunk;
        char *c = malloc(n);
        memcpy(c, text + off, n);
        h1_msg_feed(&r->msg, c, n);
        err = llhttp_execute(&p, c, n);
        memset(c, '#', n); /* stale spans would now read '#' */
        free(c);
        if (err != HPE_OK)
            break;
    }
    return err;
}

static void run_init(run_t *r, uint32_t max_bytes, uint32_t max_hdrs)
{
    memset(r, 0, sizeof(*r));
    h1_msg_init(&r->msg, max_bytes, max_hdrs);
}

/* The index of the first header with this (exact) name, -1. */
static int hdr(const h1_msg_t *m, const char *name)
{
    for (uint32_t i = 0; i < m->nhdrs; i++)
        if (m->hdrs[i].name.len == strlen(name) &&
            !memcmp(h1_str(m, m->hdrs[i].name), name, strlen(name)))
            return (int)i;
    return -1;
}

/* ---- tests ---- */

static const char *basic_req = "GET /a/b?c=d&e=%20f HTTP/1.1\r\n"
                               "Host: example.com:8080\r\n"
                               "User-Agent: test/1.0 (x; y)\r\n"
                               "Accept:    */*   \r\n"
                               "X-Empty:\r\n"
                               "X-Tab:\tval\tue\r\n"
                               "\r\n";

static void check_basic(run_t *r, const char *how)
{
    h1_msg_t *m = &r->msg;
    printf("     basic request, %s\n", how);
    CHECK(r->headers_complete);
    CHECK_INT(r->analyze_ret, 0);
    CHECK_INT(m->err_status, 0);
    CHECK_SPAN(m, m->url, "/a/b?c=d&e=%20f");
    CHECK_INT(m->nhdrs, 5);
    if (m->nhdrs != 5)
        return;
    CHECK_SPAN(m, m->hdrs[0].name, "Host");
    CHECK_SPAN(m, m->hdrs[0].value, "example.com:8080");
    CHECK_SPAN(m, m->hdrs[1].name, "User-Agent");
    CHECK_SPAN(m, m->hdrs[1].value, "test/1.0 (x; y)");
    CHECK_SPAN(m, m->hdrs[2].name, "Accept");
    CHECK(m->hdrs[2].value.len >= 3 && !memcmp(h1_str(m, m->hdrs[2].value), "*/*", 3));
    CHECK_SPAN(m, m->hdrs[3].name, "X-Empty");
    CHECK_INT(m->hdrs[3].value.len, 0);
    CHECK_SPAN(m, m->hdrs[4].name, "X-Tab");
    CHECK_SPAN(m, m->hdrs[4].value, "val\tue");
    CHECK_INT(m->host, 0);
    CHECK_INT(m->hdrs[0].kind, H_HOST);
    CHECK_INT(m->hdrs[0].dropped, 0);
    CHECK_INT(m->hdrs[1].kind, H_OTHER);
    CHECK_INT(m->conn_tokens, 0);
}

static int same_spans(const h1_msg_t *a, const h1_msg_t *b)
{
    if (a->nhdrs != b->nhdrs || a->url.len != b->url.len ||
        memcmp(h1_str(a, a->url), h1_str(b, b->url), a->url.len))
        return 0;
    if (a->status_text.len != b->status_text.len ||
        (a->status_text.len &&
         memcmp(h1_str(a, a->status_text), h1_str(b, b->status_text), a->status_text.len)))
        return 0;
    for (uint32_t i = 0; i < a->nhdrs; i++) {
        const h1_hdr_t *x = &a->hdrs[i], *y = &b->hdrs[i];
        if (x->name.len != y->name.len || x->value.len != y->value.len ||
            memcmp(h1_str(a, x->name), h1_str(b, y->name), x->name.len) ||
            (x->value.len && memcmp(h1_str(a, x->value), h1_str(b, y->value), x->value.len)) ||
            x->kind != y->kind || x->dropped != y->dropped)
            return 0;
    }
    return a->conn_tokens == b->conn_tokens && a->host == b->host;
}

/* Parses text in two chunks cut at cut; returns llhttp's error. */
static llhttp_errno_t parse_split(run_t *r, const char *text, size_t cut)
{
    size_t len = strlen(text);
    llhttp_t p;
    llhttp_init(&p, HTTP_REQUEST, &settings);
    p.data = r;
    r->headers_complete = 0;
    char *a = strndup(text, cut), *b = strdup(text + cut);
    h1_msg_feed(&r->msg, a, cut);
    llhttp_errno_t err = llhttp_execute(&p, a, cut);
    memset(a, '#', cut);
    if (err == HPE_OK) {
        h1_msg_feed(&r->msg, b, len - cut);
        err = llhttp_execute(&p, b, len - cut);
    }
    free(a);
    free(b);
    return err;
}

static void test_basic_and_chunking(void)
{
    run_t whole;
    run_init(&whole, 8192, 100);
    CHECK_INT(parse(&whole, basic_req, 0, 0), HPE_OK);
    check_basic(&whole, "whole");

    /* Every chunk size: 1 byte at a time, a few odd sizes. Value spans cut across chunks are
     * continuations of one value, not obs-fold. */
    static const size_t sizes[] = {1, 2, 3, 5, 7, 13, 29};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        run_t r;
        run_init(&r, 8192, 100);
        llhttp_errno_t err = parse(&r, basic_req, sizes[k], 0);
        char how[64];
        snprintf(how, sizeof(how), "fed %zu byte(s) at a time", sizes[k]);
        printf("     %s\n", how);
        CHECK_INT(err, HPE_OK);
        CHECK_INT(r.msg.err_status, 0);
        CHECK(same_spans(&r.msg, &whole.msg));
        if (sizes[k] == 1)
            check_basic(&r, how);
        h1_msg_free(&r.msg);
    }
    /* Every split point in two chunks. */
    size_t len = strlen(basic_req);
    int all_same = 1, all_ok = 1;
    for (size_t cut = 1; cut < len; cut++) {
        run_t r;
        run_init(&r, 8192, 100);
        llhttp_errno_t e2 = parse_split(&r, basic_req, cut);
        if (e2 != HPE_OK || r.msg.err_status) {
            printf("     split at %zu: %s, err_status %d\n", cut, llhttp_errno_name(e2),
                   r.msg.err_status);
            all_ok = 0;
        } else if (!same_spans(&r.msg, &whole.msg)) {
            printf("     split at %zu: spans differ\n", cut);
            all_same = 0;
        }
        h1_msg_free(&r.msg);
    }
    CHECK(all_ok);
    CHECK(all_same);
    h1_msg_free(&whole.msg);
}

static void test_response(void)
{
    const char *resp = "HTTP/1.1 404 Not Found Here\r\n"
                       "Content-Length: 0\r\n"
                       "Connection: keep-alive\r\n"
                       "Server: x\r\n\r\n";
    run_t r, r1;
    run_init(&r, 8192, 100);
    run_init(&r1, 8192, 100);
    CHECK_INT(parse(&r, resp, 0, 1), HPE_OK);
    CHECK_INT(parse(&r1, resp, 1, 1), HPE_OK);
    CHECK_SPAN(&r.msg, r.msg.status_text, "Not Found Here");
    CHECK_SPAN(&r1.msg, r1.msg.status_text, "Not Found Here");
    CHECK(same_spans(&r.msg, &r1.msg));
    CHECK_INT(r.msg.nhdrs, 3);
    CHECK_INT(r.msg.hdrs[0].kind, H_CONTENT_LENGTH);
    CHECK_INT(r.msg.hdrs[0].dropped, 1);
    CHECK_INT(r.msg.conn_tokens, H1_CONN_KEEPALIVE);
    CHECK_INT(r.msg.hdrs[2].dropped, 0);
    h1_msg_free(&r.msg);
    h1_msg_free(&r1.msg);
}

static void test_classification(void)
{
    const char *req = "GET / HTTP/1.1\r\n"
                      "host: a.example\r\n"
                      "Connection: Keep-Alive, X-Secret ,  Upgrade,close\r\n"
                      "X-Secret: s1\r\n"
                      "x-secret: s2\r\n"
                      "X-Kept: k\r\n"
                      "Keep-Alive: timeout=5\r\n"
                      "Proxy-Connection: keep-alive\r\n"
                      "TE: trailers\r\n"
                      "Upgrade: websocket\r\n"
                      "X-Forwarded-For: 1.2.3.4\r\n"
                      "Trailer: X-T\r\n"
                      "Proxy-Authorization: Basic Zm9v\r\n"
                      "Content-Length: 0\r\n"
                      "\r\n";
    run_t r;
    run_init(&r, 8192, 100);
    llhttp_errno_t err = parse(&r, req, 0, 0);
    h1_msg_t *m = &r.msg;
    CHECK(err == HPE_OK || err == HPE_PAUSED_UPGRADE);
    CHECK_INT(r.analyze_ret, 0);
    CHECK_INT(m->nhdrs, 13);
    CHECK_INT(m->conn_tokens, H1_CONN_CLOSE | H1_CONN_KEEPALIVE | H1_CONN_UPGRADE);
    CHECK_INT(m->host, 0);
    int i;
    CHECK_INT(m->hdrs[0].kind, H_HOST);
    CHECK_INT(m->hdrs[0].dropped, 0);
    i = hdr(m, "Connection");
    CHECK(i >= 0 && m->hdrs[i].kind == H_CONNECTION && m->hdrs[i].dropped);
    i = hdr(m, "X-Secret");
    CHECK(i >= 0 && m->hdrs[i].kind == H_OTHER && m->hdrs[i].dropped); /* named in Connection */
    i = hdr(m, "x-secret");
    CHECK(i >= 0 && m->hdrs[i].dropped); /* case-insensitively */
    i = hdr(m, "X-Kept");
    CHECK(i >= 0 && !m->hdrs[i].dropped);
    i = hdr(m, "Keep-Alive");
    CHECK(i >= 0 && m->hdrs[i].kind == H_KEEP_ALIVE && m->hdrs[i].dropped);
    i = hdr(m, "Proxy-Connection");
    CHECK(i >= 0 && m->hdrs[i].kind == H_PROXY_CONNECTION && m->hdrs[i].dropped);
    i = hdr(m, "TE");
    CHECK(i >= 0 && m->hdrs[i].kind == H_TE && m->hdrs[i].dropped);
    i = hdr(m, "Upgrade");
    CHECK(i >= 0 && m->hdrs[i].kind == H_UPGRADE && m->hdrs[i].dropped);
    i = hdr(m, "X-Forwarded-For");
    CHECK(i >= 0 && m->hdrs[i].kind == H_X_FORWARDED_FOR && m->hdrs[i].dropped);
    i = hdr(m, "Trailer");
    CHECK(i >= 0 && m->hdrs[i].kind == H_TRAILER && !m->hdrs[i].dropped);
    i = hdr(m, "Proxy-Authorization");
    CHECK(i >= 0 && !m->hdrs[i].dropped);
    i = hdr(m, "Content-Length");
    CHECK(i >= 0 && m->hdrs[i].kind == H_CONTENT_LENGTH && m->hdrs[i].dropped);

    /* Only close. */
    h1_msg_reset(m);
    CHECK_INT(parse(&r, "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", 0, 0), HPE_OK);
    CHECK_INT(m->conn_tokens, H1_CONN_CLOSE);
    /* Tokens that only look alike are not tokens; substrings do not match. */
    h1_msg_reset(m);
    CHECK_INT(parse(&r,
                    "GET / HTTP/1.1\r\nHost: h\r\nConnection: closed, keep-alivex, upgrad\r\n"
                    "Close: 1\r\nclosed: 2\r\n\r\n",
                    0, 0),
              HPE_OK);
    CHECK_INT(m->conn_tokens, 0);
    i = hdr(m, "Close");
    CHECK(i >= 0 && !m->hdrs[i].dropped);
    i = hdr(m, "closed");
    CHECK(i >= 0 && m->hdrs[i].dropped);
    /* Two Connection headers: tokens of both count. */
    h1_msg_reset(m);
    CHECK_INT(parse(&r,
                    "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nX-A: 1\r\n"
                    "Connection: x-a\r\n\r\n",
                    0, 0),
              HPE_OK);
    CHECK_INT(m->conn_tokens, H1_CONN_CLOSE);
    i = hdr(m, "X-A");
    CHECK(i >= 0 && m->hdrs[i].dropped);

    /* Two Host headers: refused with 400, in any case. */
    h1_msg_reset(m);
    err = parse(&r, "GET / HTTP/1.1\r\nHost: a\r\nX: y\r\nhOST: b\r\n\r\n", 0, 0);
    CHECK(err != HPE_OK);
    CHECK(r.headers_complete);
    CHECK_INT(r.analyze_ret, -1);
    CHECK_INT(m->err_status, 400);
    /* No Host: host stays -1. */
    h1_msg_reset(m);
    CHECK_INT(parse(&r, "GET / HTTP/1.0\r\nX: y\r\n\r\n", 0, 0), HPE_OK);
    CHECK_INT(m->host, -1);
    h1_msg_free(m);
}

static void test_obs_fold(void)
{
    static const char *const folds[] = {
        "GET / HTTP/1.1\r\nHost: h\r\nX-Fold: first\r\n  second\r\nX: y\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX-Fold: first\r\n\tsecond\r\nX: y\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX-Fold: first\n second\r\nX: y\r\n\r\n",
        /* A fold after an empty or blank first line: llhttp gives no span for the first
         * line, so the continuation arrives as the value's first span. */
        "GET / HTTP/1.1\r\nHost: h\r\nX-Fold:\r\n second\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX-Fold:  \r\n second\r\nX: y\r\n\r\n",
    };
    for (size_t f = 0; f < sizeof(folds) / sizeof(folds[0]); f++) {
        const char *folded = folds[f];
        size_t len = strlen(folded);
        printf("     obs-fold variant %zu\n", f);
        run_t r;
        run_init(&r, 8192, 100);
        llhttp_errno_t err = parse(&r, folded, 0, 0);
        CHECK(err != HPE_OK);
        CHECK(!r.headers_complete);
        if (f != 2) /* variants llhttp itself passes to the callbacks: refused by us */
            CHECK_INT(r.msg.err_status, 400);
        /* Refused whatever the chunking, including a cut just before or after the fold's
         * line break, where the value span ends exactly at the end of the fed bytes. */
        int accepted = 0; /* chunkings that let the fold through */
        for (size_t chunk = 1; chunk <= len; chunk++) {
            h1_msg_reset(&r.msg);
            err = parse(&r, folded, chunk, 0);
            if ((err == HPE_OK || r.headers_complete) && accepted++ < 3) {
                printf("     chunks of %zu: %s, err_status %d, headers_complete %d\n", chunk,
                       llhttp_errno_name(err), r.msg.err_status, r.headers_complete);
            }
        }
        CHECK(accepted == 0);
        int accepted_split = 0;
        for (size_t cut = 1; cut < len; cut++) {
            h1_msg_reset(&r.msg);
            err = parse_split(&r, folded, cut);
            if ((err == HPE_OK || r.headers_complete) && accepted_split++ < 3) {
                printf("     split at %zu: %s, err_status %d, headers_complete %d\n", cut,
                       llhttp_errno_name(err), r.msg.err_status, r.headers_complete);
            }
        }
        CHECK(accepted_split == 0);
        h1_msg_free(&r.msg);
    }
}

static void test_bad_values(void)
{
    run_t r;
    run_init(&r, 8192, 100);
    h1_msg_t *m = &r.msg;
    /* Through llhttp: NUL and a bare CR inside a value are refused (by llhttp or by us). */
    static const char nul_req[] = "GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n";
    llhttp_t p;
    llhttp_init(&p, HTTP_REQUEST, &settings);
    p.data = &r;
    h1_msg_feed(m, nul_req, sizeof(nul_req) - 1);
    llhttp_errno_t err = llhttp_execute(&p, nul_req, sizeof(nul_req) - 1);
    CHECK(err != HPE_OK);
    CHECK(!r.headers_complete);
    h1_msg_reset(m);
    err = parse(&r, "GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n", 0, 0);
    CHECK(err != HPE_OK);
    CHECK(!r.headers_complete);
    h1_msg_reset(m);
    err = parse(&r, "GET / HTTP/1.1\r\nHost: h\r\n: novalue\r\n\r\n", 0, 0);
    CHECK(err != HPE_OK);
    CHECK(!r.headers_complete);

    /* The callbacks themselves, whatever llhttp lets through. */
    static const struct {
        const char *v;
        size_t n;
    } bad[] = {{"a\0b", 3}, {"a\rb", 3}, {"a\nb", 3}, {"\x01", 1}, {"x\x7f", 2}, {"\x1f", 1}};
    for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        h1_msg_reset(m);
        CHECK_INT(h1_on_header_field(m, "X", 1), 0);
        h1_msg_feed(m, bad[k].v, bad[k].n);
        printf("     value byte 0x%02x\n", (unsigned char)bad[k].v[bad[k].n > 1 ? 1 : 0]);
        CHECK_INT(h1_on_header_value(m, bad[k].v, bad[k].n), -1);
        CHECK_INT(m->err_status, 400);
    }
    /* HTAB and obs-text bytes are allowed. */
    h1_msg_reset(m);
    CHECK_INT(h1_on_header_field(m, "X", 1), 0);
    const char ok_v[] = "a\tb \xc3\xa9\x80\xff";
    h1_msg_feed(m, ok_v, sizeof(ok_v) - 1);
    CHECK_INT(h1_on_header_value(m, ok_v, sizeof(ok_v) - 1), 0);
    CHECK_SPAN(m, m->hdrs[0].value, ok_v);
    CHECK_INT(h1_on_header_value_complete(m), 0);

    /* Empty header name: a value with no name, or a field span of zero length. */
    h1_msg_reset(m);
    h1_msg_feed(m, "v", 1);
    CHECK_INT(h1_on_header_value(m, "v", 1), -1);
    CHECK_INT(m->err_status, 400);
    h1_msg_reset(m);
    CHECK_INT(h1_on_header_field(m, "", 0), 0);
    CHECK_INT(h1_on_header_value(m, "v", 1), -1);
    CHECK_INT(m->err_status, 400);
    h1_msg_reset(m);
    CHECK_INT(h1_on_header_field(m, "", 0), 0);
    CHECK_INT(h1_on_header_value_complete(m), -1);
    CHECK_INT(m->err_status, 400);
    h1_msg_free(m);
}

static void test_limits(void)
{
    /* max_bytes counts the URL, names and values. */
    const char *req = "GET /0123456789 HTTP/1.1\r\nHost: abcdefghij\r\nX-Y: 0123456789\r\n\r\n";
    size_t head = strlen("/0123456789") + strlen("Host") + strlen("abcdefghij") + strlen("X-Y") +
                  strlen("0123456789");
    run_t r;
    run_init(&r, (uint32_t)head, 100);
    CHECK_INT(parse(&r, req, 0, 0), HPE_OK);
    CHECK_INT(r.msg.err_status, 0);
    CHECK_INT(r.msg.arena.len, head);
    h1_msg_free(&r.msg);
    run_init(&r, (uint32_t)head, 100);
    CHECK_INT(parse(&r, req, 1, 0), HPE_OK); /* one byte at a time: same total */
    CHECK_INT(r.msg.err_status, 0);
    h1_msg_free(&r.msg);
    run_init(&r, (uint32_t)head - 1, 100);
    CHECK(parse(&r, req, 0, 0) != HPE_OK);
    CHECK_INT(r.msg.err_status, 431);
    CHECK(r.msg.err_reason && !strcmp(r.msg.err_reason, "headers-too-large"));
    CHECK(!r.headers_complete);
    h1_msg_free(&r.msg);
    run_init(&r, (uint32_t)head - 1, 100);
    CHECK(parse(&r, req, 3, 0) != HPE_OK);
    CHECK_INT(r.msg.err_status, 431);
    h1_msg_free(&r.msg);
    /* A URL alone past the limit. */
    run_init(&r, 8, 100);
    CHECK(parse(&r, req, 0, 0) != HPE_OK);
    CHECK_INT(r.msg.err_status, 431);
    h1_msg_free(&r.msg);

    /* max_hdrs: exactly the limit passes; one more is 431. */
    rmr_buf_t b = {0};
    rmr_buf_str(&b, "GET / HTTP/1.1\r\nHost: h\r\n");
    for (int i = 1; i < 40; i++)
        rmr_buf_printf(&b, "X-H%d: %d\r\n", i, i);
    rmr_buf_str(&b, "\r\n");
    rmr_buf_append(&b, "", 1);
    run_init(&r, 1 << 20, 40);
    CHECK_INT(parse(&r, b.data, 0, 0), HPE_OK);
    CHECK_INT(r.msg.nhdrs, 40);
    CHECK_INT(r.msg.err_status, 0);
    CHECK(r.msg.caphdrs >= 40 && r.msg.caphdrs <= 40); /* capped at max_hdrs */
    CHECK_SPAN(&r.msg, r.msg.hdrs[39].name, "X-H39");
    CHECK_SPAN(&r.msg, r.msg.hdrs[39].value, "39");
    h1_msg_free(&r.msg);
    run_init(&r, 1 << 20, 39);
    CHECK(parse(&r, b.data, 0, 0) != HPE_OK);
    CHECK_INT(r.msg.err_status, 431);
    CHECK(r.msg.err_reason && !strcmp(r.msg.err_reason, "headers-too-large"));
    CHECK_INT(r.msg.nhdrs, 39);
    h1_msg_free(&r.msg);
    run_init(&r, 1 << 20, 39);
    CHECK(parse(&r, b.data, 1, 0) != HPE_OK);
    CHECK_INT(r.msg.err_status, 431);
    h1_msg_free(&r.msg);
    run_init(&r, 1 << 20, 0);
    CHECK(parse(&r, "GET / HTTP/1.1\r\nHost: h\r\n\r\n", 0, 0) != HPE_OK);
    CHECK_INT(r.msg.err_status, 431);
    h1_msg_free(&r.msg);
    rmr_buf_free(&b);
}

static void test_reset(void)
{
    run_t r;
    run_init(&r, 1 << 16, 100);
    rmr_buf_t b = {0};
    rmr_buf_str(&b, "GET /first HTTP/1.1\r\nHost: one\r\n");
    for (int i = 0; i < 30; i++)
        rmr_buf_printf(&b, "X-Long-%d: %0200d\r\n", i, i);
    rmr_buf_str(&b, "Connection: close\r\n\r\n");
    rmr_buf_append(&b, "", 1);
    CHECK_INT(parse(&r, b.data, 0, 0), HPE_OK);
    CHECK_INT(r.msg.nhdrs, 32);
    char *arena = r.msg.arena.data;
    size_t cap = r.msg.arena.cap;
    h1_hdr_t *hdrs = r.msg.hdrs;
    uint32_t caphdrs = r.msg.caphdrs;
    CHECK(r.msg.conn_tokens == H1_CONN_CLOSE && r.msg.host == 0);
    /* A refused state too, which reset must clear. */
    r.msg.err_status = 431;
    r.msg.err_reason = "x";
    h1_msg_reset(&r.msg);
    CHECK(r.msg.arena.data == arena && r.msg.arena.cap == cap);
    CHECK(r.msg.hdrs == hdrs && r.msg.caphdrs == caphdrs);
    CHECK(r.msg.arena.len == 0 && r.msg.nhdrs == 0);
    CHECK(r.msg.err_status == 0 && r.msg.err_reason == NULL);
    CHECK(r.msg.conn_tokens == 0 && r.msg.host == -1 && r.msg.url.len == 0);
    CHECK(r.msg.in == 0 && r.msg.val_cut == 0);
    CHECK_INT(parse(&r, "GET /second HTTP/1.1\r\nHost: two\r\n\r\n", 0, 0), HPE_OK);
    CHECK(r.msg.arena.data == arena && r.msg.hdrs == hdrs);
    CHECK_SPAN(&r.msg, r.msg.url, "/second");
    CHECK_INT(r.msg.nhdrs, 1);
    CHECK_SPAN(&r.msg, r.msg.hdrs[0].value, "two");
    CHECK_INT(r.msg.conn_tokens, 0);
    /* Reset mid-value (a message abandoned half-way) leaves no state behind. */
    h1_msg_reset(&r.msg);
    llhttp_t p;
    llhttp_init(&p, HTTP_REQUEST, &settings);
    p.data = &r;
    const char *half = "GET / HTTP/1.1\r\nX-Half: abc";
    h1_msg_feed(&r.msg, half, strlen(half));
    CHECK_INT(llhttp_execute(&p, half, strlen(half)), HPE_OK);
    CHECK(r.msg.in == 2 && r.msg.val_cut == 1);
    h1_msg_reset(&r.msg);
    CHECK_INT(parse(&r, "GET /third HTTP/1.1\r\nHost: three\r\n\r\n", 0, 0), HPE_OK);
    CHECK_SPAN(&r.msg, r.msg.url, "/third");
    CHECK_SPAN(&r.msg, r.msg.hdrs[0].name, "Host");
    CHECK_SPAN(&r.msg, r.msg.hdrs[0].value, "three");
    h1_msg_free(&r.msg);
    CHECK(r.msg.hdrs == NULL && r.msg.arena.data == NULL && r.msg.caphdrs == 0);
    rmr_buf_free(&b);
}

static void test_span_eq(void)
{
    h1_msg_t m;
    h1_msg_init(&m, 1024, 10);
    h1_span_t s = {0, 0};
    CHECK_INT(h1_on_url(&m, "Content-LENGTH", 14), 0);
    s = m.url;
    CHECK(h1_span_eq(&m, s, "content-length"));
    CHECK(h1_span_eq(&m, s, "CONTENT-LENGTH"));
    CHECK(!h1_span_eq(&m, s, "content-lengt"));
    CHECK(!h1_span_eq(&m, s, "content-lengths"));
    CHECK(!h1_span_eq(&m, s, "content_length"));
    h1_span_t empty = {0, 0};
    CHECK(h1_span_eq(&m, empty, ""));
    CHECK(!h1_span_eq(&m, empty, "c"));
    h1_span_t part = {8, 6};
    CHECK(h1_span_eq(&m, part, "length"));
    h1_msg_free(&m);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    llhttp_settings_init(&settings);
    settings.on_url = on_url;
    settings.on_status = on_status;
    settings.on_header_field = on_header_field;
    settings.on_header_value = on_header_value;
    settings.on_header_value_complete = on_header_value_complete;
    settings.on_headers_complete = on_headers_complete;
    test_basic_and_chunking();
    test_response();
    test_classification();
    test_obs_fold();
    test_bad_values();
    test_limits();
    test_reset();
    test_span_eq();
    return check_summary();
}
