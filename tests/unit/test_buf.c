/*
 * Unit test of proxy/buf.c: the growable byte buffer (append and printf growth, JSON string
 * escaping, free). Prints one line per check; exits 1 when any check fails.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "remora/buf.h"

#include "check.h"

/* Compares the buffer's bytes (not NUL-terminated) with a C string. */
#define CHECK_BUF(b, want)                                                                         \
    do {                                                                                           \
        const char *w_ = (want);                                                                   \
        size_t wl_ = strlen(w_);                                                                   \
        checks++;                                                                                  \
        if ((b)->len == wl_ && (wl_ == 0 || !memcmp((b)->data, w_, wl_))) {                        \
            printf("ok   %s == \"%s\"\n", #b, w_);                                                 \
        } else {                                                                                   \
            printf("FAIL %s:%d: %s: got \"%.*s\" (%zu bytes), want \"%s\"\n", __FILE__, __LINE__,  \
                   #b, (int)(b)->len, (b)->data ? (b)->data : "", (b)->len, w_);                   \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

/* Byte i of the pattern used by the growth tests. */
static char pat(size_t i)
{
    return (char)('a' + (i * 7 + i / 26) % 26);
}

static void test_append_growth(void)
{
    static const size_t sizes[] = {0,   1,    2,    255,  256,  257,   511,   512,
                                   513, 1000, 4095, 4096, 4097, 65535, 65536, 100003};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        size_t n = sizes[k];
        char *src = malloc(n + 1);
        for (size_t i = 0; i < n; i++)
            src[i] = pat(i);
        /* One append of n bytes. */
        rmr_buf_t b = {0};
        rmr_buf_append(&b, src, n);
        int whole_ok = b.len == n && b.cap >= n && !b.oom && (n == 0 || !memcmp(b.data, src, n));
        /* n appends of 1 byte, then chunks of 37 bytes. */
        rmr_buf_t c = {0}, d = {0};
        for (size_t i = 0; i < n; i++)
            rmr_buf_append(&c, src + i, 1);
        int bytes_ok = c.len == n && c.cap >= n && !c.oom && (n == 0 || !memcmp(c.data, src, n));
        for (size_t i = 0; i < n; i += 37)
            rmr_buf_append(&d, src + i, n - i < 37 ? n - i : 37);
        int chunks_ok = d.len == n && d.cap >= n && !d.oom && (n == 0 || !memcmp(d.data, src, n));
        printf("     size %zu\n", n);
        CHECK(whole_ok);
        CHECK(bytes_ok);
        CHECK(chunks_ok);
        rmr_buf_free(&b);
        rmr_buf_free(&c);
        rmr_buf_free(&d);
        free(src);
    }

    /* An empty append allocates nothing. */
    rmr_buf_t e = {0};
    rmr_buf_append(&e, "x", 0);
    CHECK(e.data == NULL && e.len == 0 && e.cap == 0);

    /* Reserve: the first reservation is at least 256, capacity grows by doubling, and a
     * reservation that fits keeps the data pointer. */
    rmr_buf_t r = {0};
    CHECK(rmr_buf_reserve(&r, 1) == 0);
    CHECK(r.cap == 256 && r.len == 0);
    rmr_buf_append(&r, "hello", 5);
    char *before = r.data;
    CHECK(rmr_buf_reserve(&r, 251) == 0);
    CHECK(r.data == before && r.cap == 256);
    CHECK(rmr_buf_reserve(&r, 252) == 0);
    CHECK(r.cap == 512);
    CHECK(r.len == 5 && !memcmp(r.data, "hello", 5));
    CHECK(rmr_buf_reserve(&r, 10000) == 0);
    CHECK(r.cap == 16384 && r.cap - r.len >= 10000);
    CHECK(r.len == 5 && !memcmp(r.data, "hello", 5));
    rmr_buf_free(&r);
}

static void test_printf_growth(void)
{
    /* printf with results of many lengths, appended after existing content. */
    static const int widths[] = {0, 1, 10, 249, 250, 251, 255, 256, 257, 1000, 5000, 70000};
    for (size_t k = 0; k < sizeof(widths) / sizeof(widths[0]); k++) {
        int w = widths[k];
        rmr_buf_t b = {0};
        rmr_buf_str(&b, "head:");
        rmr_buf_printf(&b, "%*d|%s", w, 42, "tail");
        size_t want = 5 + (size_t)(w > 2 ? w : 2) + 5;
        printf("     width %d\n", w);
        CHECK(b.len == want);
        CHECK(!b.oom);
        CHECK(b.len >= 12 && !memcmp(b.data, "head:", 5));
        CHECK(b.len >= 12 && !memcmp(b.data + b.len - 7, "42|tail", 7));
        /* printf leaves a NUL after the text (within cap) but does not count it. */
        CHECK(b.cap > b.len && b.data[b.len] == '\0');
        int spaces_ok = 1;
        for (size_t i = 5; i < b.len - 7; i++)
            if (b.data[i] != ' ')
                spaces_ok = 0;
        CHECK(spaces_ok);
        rmr_buf_free(&b);
    }

    /* Many small printfs cross several reallocations and keep every byte. */
    rmr_buf_t b = {0};
    for (int i = 0; i < 5000; i++)
        rmr_buf_printf(&b, "%d,", i);
    rmr_buf_t want = {0};
    char tmp[16];
    for (int i = 0; i < 5000; i++) {
        int n = snprintf(tmp, sizeof(tmp), "%d,", i);
        rmr_buf_append(&want, tmp, (size_t)n);
    }
    CHECK(b.len == want.len);
    CHECK(b.len == want.len && !memcmp(b.data, want.data, b.len));
    CHECK(!b.oom);
    rmr_buf_free(&b);
    rmr_buf_free(&want);

    /* An empty format appends nothing. */
    rmr_buf_t e = {0};
    rmr_buf_str(&e, "ab");
    rmr_buf_printf(&e, "%s", "");
    CHECK_BUF(&e, "ab");
    rmr_buf_free(&e);
}

static void json(rmr_buf_t *b, const char *s)
{
    b->len = 0;
    rmr_buf_json_str(b, s);
}

static void test_json_str(void)
{
    rmr_buf_t b = {0};
    json(&b, "");
    CHECK_BUF(&b, "\"\"");
    json(&b, NULL);
    CHECK_BUF(&b, "\"\"");
    json(&b, "plain text 123");
    CHECK_BUF(&b, "\"plain text 123\"");
    json(&b, "say \"hi\"");
    CHECK_BUF(&b, "\"say \\\"hi\\\"\"");
    json(&b, "C:\\path\\x");
    CHECK_BUF(&b, "\"C:\\\\path\\\\x\"");
    json(&b, "\\\"");
    CHECK_BUF(&b, "\"\\\\\\\"\"");
    json(&b, "a\nb\tc\rd");
    CHECK_BUF(&b, "\"a\\u000ab\\u0009c\\u000dd\"");
    json(&b, "\x01\x1f");
    CHECK_BUF(&b, "\"\\u0001\\u001f\"");
    json(&b, " ~\x7f");
    CHECK_BUF(&b, "\" ~\x7f\""); /* DEL and space are legal in JSON strings */
    json(&b, "caf\xc3\xa9");
    CHECK_BUF(&b, "\"caf\xc3\xa9\""); /* UTF-8 passes through */
    /* After each call, the buffer is appended to, not replaced. */
    b.len = 0;
    rmr_buf_json_str(&b, "a");
    rmr_buf_str(&b, ":");
    rmr_buf_json_str(&b, "b\"");
    CHECK_BUF(&b, "\"a\":\"b\\\"\"");

    /* All 31 control characters escape to \u00XX and every other byte stays. */
    char all[256];
    for (int i = 1; i < 256; i++)
        all[i - 1] = (char)i;
    all[255] = '\0';
    json(&b, all);
    rmr_buf_t want = {0};
    rmr_buf_str(&want, "\"");
    for (int i = 1; i < 256; i++) {
        if (i < 0x20)
            rmr_buf_printf(&want, "\\u%04x", i);
        else if (i == '"' || i == '\\') {
            char e[2] = {'\\', (char)i};
            rmr_buf_append(&want, e, 2);
        } else {
            char ch = (char)i;
            rmr_buf_append(&want, &ch, 1);
        }
    }
    rmr_buf_str(&want, "\"");
    CHECK(b.len == want.len && !memcmp(b.data, want.data, b.len));
    CHECK(b.len == 2 + 31 * 6 + 2 * 2 + (255 - 31 - 2));
    rmr_buf_free(&want);

    /* A long string that crosses reallocation while escaping. */
    rmr_buf_t l = {0};
    char *big = malloc(3001);
    for (int i = 0; i < 3000; i++)
        big[i] = i % 3 == 0 ? '"' : i % 3 == 1 ? '\n' : 'x';
    big[3000] = '\0';
    rmr_buf_json_str(&l, big);
    CHECK(l.len == 2 + 1000 * 2 + 1000 * 6 + 1000);
    CHECK(l.len > 8 && !memcmp(l.data, "\"\\\"\\u000ax\\\"", 12));
    free(big);
    rmr_buf_free(&l);
    rmr_buf_free(&b);
}

/* The number formatters of the request path, against printf over edge and random values; and
 * printf into a buffer whose room is exactly the text, one byte short, and one byte over. */
static void test_numbers(void)
{
    static const unsigned long long edge[] = {0,
                                              1,
                                              9,
                                              10,
                                              99,
                                              100,
                                              4095,
                                              4096,
                                              65535,
                                              1000000,
                                              4294967295ull,
                                              4294967296ull,
                                              18446744073709551615ull};
    int dec_ok = 1, hex_ok = 1;
    unsigned long long x = 88172645463325252ull;
    for (size_t i = 0; i < 200000; i++) {
        unsigned long long v;
        if (i < sizeof(edge) / sizeof(edge[0])) {
            v = edge[i];
        } else {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            v = x >> (x % 64);
        }
        char got[24], want[24];
        size_t n = rmr_fmt_u64(got, v);
        int wn = snprintf(want, sizeof(want), "%llu", v);
        if (n != (size_t)wn || memcmp(got, want, n)) {
            if (dec_ok)
                printf("FAIL decimal %llu: got \"%.*s\"\n", v, (int)n, got);
            dec_ok = 0;
        }
        n = rmr_fmt_hex(got, v);
        wn = snprintf(want, sizeof(want), "%llx", v);
        if (n != (size_t)wn || memcmp(got, want, n)) {
            if (hex_ok)
                printf("FAIL hex %llu: got \"%.*s\"\n", v, (int)n, got);
            hex_ok = 0;
        }
    }
    CHECK(dec_ok);
    CHECK(hex_ok);
    rmr_buf_t b = {0};
    rmr_buf_lit(&b, "content-length: ");
    rmr_buf_u64(&b, 1234567);
    rmr_buf_lit(&b, "; chunk ");
    rmr_buf_hex(&b, 0xbeef);
    CHECK_BUF(&b, "content-length: 1234567; chunk beef");
    rmr_buf_free(&b);
    for (int extra = -1; extra <= 1; extra++) {
        rmr_buf_t p = {0};
        rmr_buf_reserve(&p, 256);
        p.len = p.cap - (10 + (size_t)(extra + 1)); /* room: 9, 10 or 11 bytes */
        memset(p.data, 'x', p.len);
        size_t base = p.len;
        rmr_buf_printf(&p, "%s-%d", "abcdefgh", 7); /* 10 characters */
        CHECK(p.len == base + 10 && !memcmp(p.data + base, "abcdefgh-7", 10) &&
              p.data[base - 1] == 'x');
        rmr_buf_free(&p);
    }
}

static void test_free(void)
{
    rmr_buf_t b = {0};
    rmr_buf_str(&b, "some text");
    b.oom = 1;
    rmr_buf_free(&b);
    CHECK(b.data == NULL);
    CHECK(b.len == 0);
    CHECK(b.cap == 0);
    CHECK(b.oom == 0);
    /* Freeing twice is harmless, and the buffer is usable again afterwards. */
    rmr_buf_free(&b);
    CHECK(b.data == NULL && b.len == 0 && b.cap == 0);
    rmr_buf_str(&b, "again");
    CHECK_BUF(&b, "again");
    CHECK(b.cap == 256);
    rmr_buf_free(&b);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    test_append_growth();
    test_printf_growth();
    test_json_str();
    test_numbers();
    test_free();
    return check_summary();
}
