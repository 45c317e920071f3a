/*
 * Unit test of filters/idem.c: the Idempotency-Key store (key parsing and formatting, the
 * NEW / IN_FLIGHT / DONE / MISMATCH / FULL verdicts, what is stored and what is not, ttl expiry
 * and the sweep, LRU eviction, reconfiguration, the counters, and four threads sharing one
 * store). Prints one line per check; exits 1 when any check fails.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "remora/idem.h"

#include "check.h"

static const char HEAD[] = "content-type: application/json\r\nlocation: /orders/7\r\n";

static uint64_t fp_of(const char *method, const char *target)
{
    uint64_t h = rmr_hash64(RMR_HASH_INIT, method, strlen(method));
    h = rmr_hash64(h, " ", 1);
    return rmr_hash64(h, target, strlen(target));
}

static uint64_t hash_str(const char *s)
{
    return rmr_hash64(RMR_HASH_INIT, s, strlen(s));
}

static rmr_idem_verdict_t begin(rmr_idem_t *s, const char *key, uint64_t fp, uint64_t now,
                                rmr_idem_entry_t **e)
{
    return rmr_idem_begin(s, key, strlen(key), fp, now, e);
}

/* begin, dropping any reference it returns: for steps where only the verdict matters. */
static rmr_idem_verdict_t peek(rmr_idem_t *s, const char *key, uint64_t fp, uint64_t now)
{
    rmr_idem_entry_t *e;
    rmr_idem_verdict_t v = rmr_idem_begin(s, key, strlen(key), fp, now, &e);
    rmr_idem_entry_unref(e);
    return v;
}

static void finish(rmr_idem_t *s, const char *key, int status, const char *body, uint64_t now)
{
    rmr_idem_finish(s, key, strlen(key), RMR_HASH_INIT, status, HEAD, strlen(HEAD), body,
                    strlen(body), 1, now);
}

/* Begins and finishes key with a 200 whose body is the key itself. */
static void store(rmr_idem_t *s, const char *key, uint64_t fp, uint64_t now)
{
    CHECK_INT(peek(s, key, fp, now), RMR_IDEM_NEW);
    finish(s, key, 200, key, now);
}

static rmr_idem_stats_t stats(rmr_idem_t *s)
{
    rmr_idem_stats_t st;
    rmr_idem_get_stats(s, &st);
    return st;
}

static void test_hash(void)
{
    /* FNV-1a 64 test vectors. */
    CHECK(rmr_hash64(RMR_HASH_INIT, "", 0) == RMR_HASH_INIT);
    CHECK(rmr_hash64(RMR_HASH_INIT, "a", 1) == 0xaf63dc4c8601ec8cULL);
    CHECK(rmr_hash64(RMR_HASH_INIT, "foobar", 6) == 0x85944171f73967e8ULL);
    CHECK(rmr_hash64(rmr_hash64(RMR_HASH_INIT, "foo", 3), "bar", 3) == hash_str("foobar"));
    CHECK(fp_of("POST", "/orders") != fp_of("PUT", "/orders"));
}

static void test_parse_key(void)
{
    static const struct {
        const char *in, *want; /* want NULL: rejected */
    } cases[] = {
        {"\"abc\"", "abc"},
        {"  \"abc\"\t ", "abc"},
        {"\t\"abc\"", "abc"},
        {"\"a\\\"b\\\\c\"", "a\"b\\c"},
        {"\"\\\\\"", "\\"},
        {"\"8e03978e-40d5-43e8-bc93-6894a57f9324\"", "8e03978e-40d5-43e8-bc93-6894a57f9324"},
        {"\" \"", " "},
        {"\"a b~!#$%&'()*+,-./:;<=>?@[]^_`{|}\"", "a b~!#$%&'()*+,-./:;<=>?@[]^_`{|}"},
        /* parameters, as RFC 8941 allows on an item */
        {"\"k\";a=1", "k"},
        {"\"k\";a", "k"},
        {"\"k\";a;b=?0;c=?1 ", "k"},
        {"\"k\"; a=1;  b=2", "k"},
        {"\"k\";d=\"x\\\"y\";e=tok/x:y;f=:aGk=:;g=-1.5;*h=2;i-j_k.l*=Tok", "k"},
        {"\"k\";n=123456789012345;m=123456789012.123", "k"},
        /* empty */
        {"\"\"", NULL},
        {"", NULL},
        {"   ", NULL},
        /* missing quotes */
        {"abc", NULL},
        {"\"abc", NULL},
        {"abc\"", NULL},
        {"'abc'", NULL},
        /* escapes other than \" and \\ */
        {"\"a\\nb\"", NULL},
        {"\"a\\'b\"", NULL},
        {"\"a\\\"", NULL},
        {"\"a\\", NULL},
        /* characters outside 0x20-0x7e */
        {"\"a\x01z\"", NULL},
        {"\"a\tb\"", NULL},
        {"\"a\x7f\"", NULL},
        {"\"caf\xc3\xa9\"", NULL},
        /* trailing junk */
        {"\"abc\" x", NULL},
        {"\"abc\"x", NULL},
        {"\"a\",\"b\"", NULL},
        {"\"a\"\"b\"", NULL},
        /* malformed parameters */
        {"\"abc\" ;a=1", NULL},
        {"\"abc\";", NULL},
        {"\"abc\";A=1", NULL},
        {"\"abc\";1a=1", NULL},
        {"\"abc\";a=", NULL},
        {"\"abc\";a= 1", NULL},
        {"\"abc\";a=\"x", NULL},
        {"\"abc\";a=\"\x01\"", NULL},
        {"\"abc\";a=1.2345", NULL},
        {"\"abc\";a=1.", NULL},
        {"\"abc\";a=1234567890123456", NULL},
        {"\"abc\";a=1234567890123.5", NULL},
        {"\"abc\";a=-", NULL},
        {"\"abc\";a=?2", NULL},
        {"\"abc\";a=?", NULL},
        {"\"abc\";a=:YWJj", NULL},
        {"\"abc\";a=:Y!c:", NULL},
        {"\"abc\";a=@1659578233", NULL},
        {"\"abc\";a=1;", NULL},
        {"\"abc\";a=tok en", NULL},
    };
    char out[256];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int n = rmr_idem_parse_key(cases[i].in, strlen(cases[i].in), out, sizeof(out));
        printf("     parse [%s]\n", cases[i].in);
        if (cases[i].want) {
            CHECK_INT(n, strlen(cases[i].want));
            CHECK_STR(out, cases[i].want);
        } else {
            CHECK_INT(n, -1);
        }
    }

    /* A NUL inside, and a value that is not NUL-terminated (only n bytes are read). */
    CHECK_INT(rmr_idem_parse_key("\"a\0b\"", 5, out, sizeof(out)), -1);
    CHECK_INT(rmr_idem_parse_key("\"abc\"junk", 5, out, sizeof(out)), 3);
    CHECK_STR(out, "abc");
    CHECK_INT(rmr_idem_parse_key("\"abc\"", 4, out, sizeof(out)), -1);

    /* 255 bytes of content is the most; escapes count once. */
    char v[600], want[300];
    memset(want, 'x', 255);
    want[255] = '\0';
    snprintf(v, sizeof(v), "\"%s\"", want);
    CHECK_INT(rmr_idem_parse_key(v, strlen(v), out, sizeof(out)), 255);
    CHECK_STR(out, want);
    snprintf(v, sizeof(v), "\"%sx\"", want);
    CHECK_INT(rmr_idem_parse_key(v, strlen(v), out, sizeof(out)), -1);
    memset(want, 'y', 254);
    want[254] = '"';
    want[255] = '\0';
    char esc[300];
    memset(esc, 'y', 254);
    strcpy(esc + 254, "\\\"");
    snprintf(v, sizeof(v), "\"%s\"", esc);
    CHECK_INT(rmr_idem_parse_key(v, strlen(v), out, sizeof(out)), 255);
    CHECK_STR(out, want);
    snprintf(v, sizeof(v), "\"y%s\"", esc);
    CHECK_INT(rmr_idem_parse_key(v, strlen(v), out, sizeof(out)), -1);
    /* A smaller out caps the content too. */
    char small[4];
    CHECK_INT(rmr_idem_parse_key("\"abc\"", 5, small, sizeof(small)), 3);
    CHECK_STR(small, "abc");
    CHECK_INT(rmr_idem_parse_key("\"abcd\"", 6, small, sizeof(small)), -1);
}

static int is_lower_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static void test_format_key(void)
{
    char out[41];
    CHECK_INT(rmr_idem_format_key(out, 0, 0), 38);
    CHECK_STR(out, "\"00000000-0000-4000-8000-000000000000\"");
    CHECK_INT(rmr_idem_format_key(out, UINT64_MAX, UINT64_MAX), 38);
    CHECK_STR(out, "\"ffffffff-ffff-4fff-bfff-ffffffffffff\"");
    CHECK_INT(rmr_idem_format_key(out, 0x0123456789abcdefULL, 0xfedcba9876543210ULL), 38);
    CHECK_STR(out, "\"01234567-89ab-4def-bedc-ba9876543210\"");

    /* Many random values: the shape holds and the result parses back as a key. */
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    int shape_ok = 1, parse_ok = 1, variants[4] = {0};
    for (int i = 0; i < 1000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        uint64_t r1 = x;
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        size_t n = rmr_idem_format_key(out, r1, x);
        if (n != 38 || strlen(out) != 38 || out[0] != '"' || out[37] != '"' || out[15] != '4')
            shape_ok = 0;
        for (int j = 1; j < 37; j++) {
            int dash = j == 9 || j == 14 || j == 19 || j == 24;
            if (dash ? out[j] != '-' : !is_lower_hex(out[j]))
                shape_ok = 0;
        }
        const char *vc = strchr("89ab", out[20]);
        if (!vc || !out[20])
            shape_ok = 0;
        else
            variants[vc - "89ab"]++;
        char key[256];
        if (rmr_idem_parse_key(out, n, key, sizeof(key)) != 36 || memcmp(key, out + 1, 36))
            parse_ok = 0;
    }
    CHECK(shape_ok);
    CHECK(parse_ok);
    /* All four variant digits occur: the two free bits come from the input. */
    CHECK(variants[0] && variants[1] && variants[2] && variants[3]);
}

static void test_flows(void)
{
    rmr_idem_t *s = rmr_idem_new(100, 60000, 1024);
    uint64_t post = fp_of("POST", "/orders"), put = fp_of("PUT", "/orders");
    rmr_idem_entry_t *e = (rmr_idem_entry_t *)1;
    size_t n;

    CHECK_INT(begin(s, "k1", post, 0, &e), RMR_IDEM_NEW);
    CHECK(e == NULL);
    CHECK_INT(stats(s).in_flight, 1);
    e = (rmr_idem_entry_t *)1;
    CHECK_INT(begin(s, "k1", post, 1, &e), RMR_IDEM_IN_FLIGHT);
    CHECK(e == NULL);
    CHECK_INT(begin(s, "k1", put, 1, &e), RMR_IDEM_MISMATCH);
    CHECK(e == NULL);
    /* Another key is independent. */
    CHECK_INT(begin(s, "k2", put, 2, &e), RMR_IDEM_NEW);

    rmr_idem_finish(s, "k1", 2, hash_str("{\"qty\":1}"), 201, HEAD, strlen(HEAD), "created", 7, 1,
                    5);
    CHECK_INT(stats(s).in_flight, 1);
    CHECK_INT(begin(s, "k1", post, 10, &e), RMR_IDEM_DONE);
    CHECK(e != NULL);
    if (e) {
        CHECK_INT(rmr_idem_entry_status(e), 201);
        const char *h = rmr_idem_entry_head(e, &n);
        CHECK_INT(n, strlen(HEAD));
        CHECK(n == strlen(HEAD) && !memcmp(h, HEAD, n));
        const char *b = rmr_idem_entry_body(e, &n);
        CHECK_INT(n, 7);
        CHECK(n == 7 && !memcmp(b, "created", 7));
        CHECK_INT(rmr_idem_entry_body_kept(e), 1);
        CHECK_INT(rmr_idem_entry_matches_body(s, e, hash_str("{\"qty\":1}")), 1);
        CHECK_INT(rmr_idem_entry_matches_body(s, e, hash_str("{\"qty\":2}")), 0);
        CHECK_INT(rmr_idem_entry_matches_body(s, e, RMR_HASH_INIT), 0);
        rmr_idem_entry_unref(e);
    }
    /* Done, with another method: still a mismatch, and no reference. */
    e = (rmr_idem_entry_t *)1;
    CHECK_INT(begin(s, "k1", put, 11, &e), RMR_IDEM_MISMATCH);
    CHECK(e == NULL);
    /* A request with no body matches a stored request with no body. */
    rmr_idem_finish(s, "k2", 2, RMR_HASH_INIT, 204, "", 0, NULL, 0, 1, 12);
    CHECK_INT(begin(s, "k2", put, 13, &e), RMR_IDEM_DONE);
    if (e) {
        CHECK_INT(rmr_idem_entry_status(e), 204);
        CHECK(rmr_idem_entry_head(e, &n) != NULL && n == 0);
        CHECK(rmr_idem_entry_body(e, &n) != NULL && n == 0);
        CHECK_INT(rmr_idem_entry_matches_body(s, e, RMR_HASH_INIT), 1);
        rmr_idem_entry_unref(e);
    }
    /* Keys are compared byte for byte, length included. */
    CHECK_INT(rmr_idem_begin(s, "k1x", 2, post, 14, &e), RMR_IDEM_DONE);
    rmr_idem_entry_unref(e);
    CHECK_INT(peek(s, "K1", post, 14), RMR_IDEM_NEW);
    rmr_idem_abort(s, "K1", 2);

    rmr_idem_stats_t st = stats(s);
    CHECK_INT(st.entries, 2);
    CHECK_INT(st.in_flight, 0);
    CHECK_INT(st.stored, 2);
    CHECK_INT(st.replays, 3);
    CHECK_INT(st.conflicts, 1);
    CHECK_INT(st.mismatches, 4); /* two by begin, two by rmr_idem_entry_matches_body */
    CHECK_INT(st.evictions, 0);
    CHECK_INT(st.expired, 0);
    CHECK_INT(st.not_stored, 1);
    rmr_idem_free(s);
}

static void test_not_stored(void)
{
    rmr_idem_t *s = rmr_idem_new(100, 60000, 1024);
    static const int gone[] = {502, 503, 504};
    for (int i = 0; i < 3; i++) {
        CHECK_INT(peek(s, "k", 1, i), RMR_IDEM_NEW);
        finish(s, "k", gone[i], "try again", i);
        CHECK_INT(stats(s).entries, 0);
        /* the retry runs the request */
        CHECK_INT(peek(s, "k", 1, i), RMR_IDEM_NEW);
        rmr_idem_abort(s, "k", 1);
        CHECK_INT(stats(s).entries, 0);
    }
    /* Other statuses, errors included, were processed: kept. */
    static const int kept[] = {200, 400, 409, 500, 501};
    for (int i = 0; i < 5; i++) {
        char key[8];
        snprintf(key, sizeof(key), "s%d", kept[i]);
        CHECK_INT(peek(s, key, 1, 10), RMR_IDEM_NEW);
        finish(s, key, kept[i], "", 10);
        rmr_idem_entry_t *e;
        CHECK_INT(begin(s, key, 1, 11, &e), RMR_IDEM_DONE);
        if (e) {
            CHECK_INT(rmr_idem_entry_status(e), kept[i]);
            rmr_idem_entry_unref(e);
        }
    }
    /* A head past RMR_IDEM_HEAD_MAX is not kept. */
    size_t big = RMR_IDEM_HEAD_MAX + 1;
    char *head = malloc(big);
    memset(head, 'h', big);
    CHECK_INT(peek(s, "bighead", 1, 12), RMR_IDEM_NEW);
    rmr_idem_finish(s, "bighead", 7, RMR_HASH_INIT, 200, head, big, "", 0, 1, 12);
    CHECK_INT(peek(s, "bighead", 1, 13), RMR_IDEM_NEW);
    rmr_idem_finish(s, "bighead", 7, RMR_HASH_INIT, 200, head, big - 1, "", 0, 1, 13);
    rmr_idem_entry_t *e;
    CHECK_INT(begin(s, "bighead", 1, 14, &e), RMR_IDEM_DONE);
    if (e) {
        size_t n;
        rmr_idem_entry_head(e, &n);
        CHECK_INT(n, RMR_IDEM_HEAD_MAX);
        rmr_idem_entry_unref(e);
    }
    free(head);

    rmr_idem_stats_t st = stats(s);
    CHECK_INT(st.not_stored, 7); /* 3 gateway errors, 3 aborts, 1 big head */
    CHECK_INT(st.stored, 6);
    CHECK_INT(st.entries, 6);

    /* finish and abort of keys that are not in flight change nothing. */
    finish(s, "never", 200, "x", 20);
    rmr_idem_abort(s, "never", 5);
    rmr_idem_abort(s, "s200", 4);
    finish(s, "s200", 201, "again", 20);
    CHECK_INT(begin(s, "s200", 1, 21, &e), RMR_IDEM_DONE);
    if (e) {
        CHECK_INT(rmr_idem_entry_status(e), 200);
        rmr_idem_entry_unref(e);
    }
    st = stats(s);
    CHECK_INT(st.not_stored, 7);
    CHECK_INT(st.stored, 6);
    CHECK_INT(st.entries, 6);
    CHECK_INT(st.in_flight, 0);
    rmr_idem_free(s);
}

static void test_abort(void)
{
    rmr_idem_t *s = rmr_idem_new(100, 60000, 1024);
    CHECK_INT(peek(s, "k", 1, 0), RMR_IDEM_NEW);
    CHECK_INT(peek(s, "k", 1, 1), RMR_IDEM_IN_FLIGHT);
    rmr_idem_abort(s, "k", 1);
    rmr_idem_stats_t st = stats(s);
    CHECK_INT(st.entries, 0);
    CHECK_INT(st.in_flight, 0);
    CHECK_INT(st.not_stored, 1);
    /* The key is free: the next try is NEW, even with another request. */
    CHECK_INT(peek(s, "k", 2, 2), RMR_IDEM_NEW);
    finish(s, "k", 200, "ok", 3);
    CHECK_INT(peek(s, "k", 2, 4), RMR_IDEM_DONE);
    CHECK_INT(peek(s, "k", 1, 4), RMR_IDEM_MISMATCH);
    rmr_idem_free(s);
}

static void test_big_body(void)
{
    rmr_idem_t *s = rmr_idem_new(100, 60000, 8);
    rmr_idem_entry_t *e;
    size_t n;
    /* larger than max_response_bytes, as the caller says */
    CHECK_INT(peek(s, "a", 1, 0), RMR_IDEM_NEW);
    rmr_idem_finish(s, "a", 1, 7, 200, HEAD, strlen(HEAD), "0123", 4, 0, 1);
    /* larger than max_response_bytes, though the caller says complete */
    CHECK_INT(peek(s, "b", 1, 0), RMR_IDEM_NEW);
    rmr_idem_finish(s, "b", 1, 7, 200, HEAD, strlen(HEAD), "0123456789", 10, 1, 1);
    /* exactly max_response_bytes */
    CHECK_INT(peek(s, "c", 1, 0), RMR_IDEM_NEW);
    rmr_idem_finish(s, "c", 1, 7, 200, HEAD, strlen(HEAD), "01234567", 8, 1, 1);

    static const char *keys[] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++) {
        CHECK_INT(begin(s, keys[i], 1, 2, &e), RMR_IDEM_DONE);
        if (!e)
            continue;
        CHECK_INT(rmr_idem_entry_status(e), 200);
        const char *h = rmr_idem_entry_head(e, &n);
        CHECK(n == strlen(HEAD) && !memcmp(h, HEAD, n));
        const char *b = rmr_idem_entry_body(e, &n);
        CHECK(b != NULL);
        CHECK_INT(rmr_idem_entry_body_kept(e), i == 2);
        CHECK_INT(n, i == 2 ? 8 : 0);
        CHECK_INT(rmr_idem_entry_matches_body(s, e, 7), 1);
        rmr_idem_entry_unref(e);
    }
    /* A new limit applies to the next responses. */
    rmr_idem_configure(s, 100, 60000, 16);
    CHECK_INT(peek(s, "d", 1, 3), RMR_IDEM_NEW);
    rmr_idem_finish(s, "d", 1, 7, 200, HEAD, strlen(HEAD), "0123456789", 10, 1, 4);
    CHECK_INT(begin(s, "d", 1, 5, &e), RMR_IDEM_DONE);
    if (e) {
        CHECK_INT(rmr_idem_entry_body_kept(e), 1);
        CHECK(rmr_idem_entry_body(e, &n) && n == 10);
        rmr_idem_entry_unref(e);
    }
    CHECK_INT(stats(s).stored, 4);
    rmr_idem_free(s);
}

static void test_ttl(void)
{
    rmr_idem_t *s = rmr_idem_new(100, 1000, 64);
    /* In flight: abandoned once as old as ttl. */
    CHECK_INT(peek(s, "k", 1, 0), RMR_IDEM_NEW);
    CHECK_INT(peek(s, "k", 1, 999), RMR_IDEM_IN_FLIGHT);
    CHECK_INT(peek(s, "k", 1, 1000), RMR_IDEM_NEW);
    CHECK_INT(stats(s).expired, 1);
    CHECK_INT(stats(s).entries, 1);
    /* Done: ttl counts from the finish. */
    finish(s, "k", 200, "ok", 1500);
    CHECK_INT(peek(s, "k", 1, 2499), RMR_IDEM_DONE);
    CHECK_INT(peek(s, "k", 1, 2500), RMR_IDEM_NEW);
    CHECK_INT(stats(s).expired, 2);
    /* A finish after its entry expired is dropped. */
    finish(s, "k", 200, "late", 3600);
    rmr_idem_stats_t st = stats(s);
    CHECK_INT(st.expired, 3);
    CHECK_INT(st.entries, 0);
    CHECK_INT(st.stored, 1);
    CHECK_INT(peek(s, "k", 1, 3601), RMR_IDEM_NEW);
    rmr_idem_abort(s, "k", 1);

    /* A shorter ttl on reload applies to what is held. */
    store(s, "r", 1, 5000);
    CHECK_INT(peek(s, "r", 1, 5500), RMR_IDEM_DONE);
    rmr_idem_configure(s, 100, 100, 64);
    CHECK_INT(peek(s, "r", 1, 5500), RMR_IDEM_NEW);
    rmr_idem_abort(s, "r", 1);
    rmr_idem_free(s);

    /* The sweep: expired keys go a few per call, oldest first, with no lookup of them. */
    s = rmr_idem_new(100, 100, 64);
    char key[16];
    for (int i = 0; i < 10; i++) {
        snprintf(key, sizeof(key), "old%d", i);
        store(s, key, 1, (uint64_t)i);
    }
    CHECK_INT(stats(s).entries, 10);
    /* At 105, old0..old5 are expired (aged 100 or more), old6..old9 not. */
    CHECK_INT(peek(s, "fresh", 1, 105), RMR_IDEM_NEW);
    st = stats(s);
    CHECK(st.expired >= 1 && st.expired <= 6);
    CHECK_INT(st.entries, 11 - st.expired);
    for (int i = 0; i < 10; i++)
        rmr_idem_abort(s, "unknown", 7); /* no clock: sweeps at the latest time seen */
    st = stats(s);
    CHECK_INT(st.expired, 6);
    CHECK_INT(st.entries, 5);
    for (int i = 6; i < 10; i++) {
        snprintf(key, sizeof(key), "old%d", i);
        CHECK_INT(peek(s, key, 1, 105), RMR_IDEM_DONE);
    }
    /* Much later, every call drops more until all are gone. */
    for (int i = 0; i < 10; i++)
        rmr_idem_abort(s, "unknown", 7);
    finish(s, "fresh", 200, "", 10000);
    st = stats(s);
    CHECK_INT(st.entries, 0);
    CHECK_INT(st.expired, 11);
    rmr_idem_free(s);

    /* ttl 0 keeps nothing. */
    s = rmr_idem_new(100, 0, 64);
    CHECK_INT(peek(s, "z", 1, 50), RMR_IDEM_NEW);
    CHECK_INT(peek(s, "z", 1, 50), RMR_IDEM_NEW);
    CHECK_INT(stats(s).expired, 1);
    rmr_idem_free(s);
}

static void test_lru(void)
{
    rmr_idem_t *s = rmr_idem_new(3, 1000000, 64);
    store(s, "a", 1, 1);
    store(s, "b", 1, 2);
    store(s, "c", 1, 3);                          /* LRU: a b c */
    CHECK_INT(peek(s, "a", 1, 4), RMR_IDEM_DONE); /* a b c -> b c a */
    CHECK_INT(stats(s).evictions, 0);
    CHECK_INT(peek(s, "d", 1, 5), RMR_IDEM_NEW); /* evicts b */
    CHECK_INT(stats(s).evictions, 1);
    CHECK_INT(stats(s).entries, 3);
    finish(s, "d", 200, "d", 6);                  /* c a d */
    CHECK_INT(peek(s, "c", 1, 7), RMR_IDEM_DONE); /* a d c */
    CHECK_INT(peek(s, "b", 1, 8), RMR_IDEM_NEW);  /* b was gone; evicts a */
    CHECK_INT(stats(s).evictions, 2);
    CHECK_INT(peek(s, "d", 1, 9), RMR_IDEM_DONE); /* c d */
    CHECK_INT(peek(s, "c", 1, 9), RMR_IDEM_DONE); /* d c */
    CHECK_INT(peek(s, "a", 1, 10), RMR_IDEM_NEW); /* a was gone; evicts d */
    CHECK_INT(stats(s).evictions, 3);
    CHECK_INT(peek(s, "e", 1, 11), RMR_IDEM_NEW); /* evicts c: b, a, e in flight */
    CHECK_INT(stats(s).evictions, 4);
    /* Full: all in flight, nothing to evict. Keys held still answer. */
    CHECK_INT(peek(s, "f", 1, 12), RMR_IDEM_FULL);
    CHECK_INT(peek(s, "a", 1, 12), RMR_IDEM_IN_FLIGHT);
    rmr_idem_stats_t st = stats(s);
    CHECK_INT(st.entries, 3);
    CHECK_INT(st.in_flight, 3);
    CHECK_INT(st.evictions, 4);
    rmr_idem_abort(s, "a", 1);
    CHECK_INT(peek(s, "f", 1, 13), RMR_IDEM_NEW);
    finish(s, "b", 200, "b", 14);
    CHECK_INT(peek(s, "g", 1, 15), RMR_IDEM_NEW); /* evicts b, the only one done */
    CHECK_INT(stats(s).evictions, 5);
    CHECK_INT(peek(s, "b", 1, 16), RMR_IDEM_FULL);
    rmr_idem_abort(s, "e", 1);
    rmr_idem_abort(s, "f", 1);
    rmr_idem_abort(s, "g", 1);
    st = stats(s);
    CHECK_INT(st.entries, 0);
    CHECK_INT(st.stored, 5);
    CHECK_INT(st.not_stored, 4);
    rmr_idem_free(s);

    /* max_entries 0: nothing is ever held. */
    s = rmr_idem_new(0, 1000, 64);
    CHECK_INT(peek(s, "a", 1, 1), RMR_IDEM_FULL);
    CHECK_INT(stats(s).entries, 0);
    rmr_idem_free(s);
}

static void test_reconfigure(void)
{
    rmr_idem_t *s = rmr_idem_new(10, 1000000, 64);
    char key[16];
    for (int i = 0; i < 6; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        store(s, key, 1, (uint64_t)i);
    }
    CHECK_INT(peek(s, "i0", 1, 10), RMR_IDEM_NEW);
    CHECK_INT(peek(s, "i1", 1, 10), RMR_IDEM_NEW);
    CHECK_INT(peek(s, "k0", 1, 11), RMR_IDEM_DONE); /* LRU: k1 k2 k3 k4 k5 k0 */
    rmr_idem_entry_t *held;
    CHECK_INT(begin(s, "k1", 1, 11, &held), RMR_IDEM_DONE); /* k2 k3 k4 k5 k0 k1 */
    CHECK_INT(stats(s).entries, 8);

    /* Shrink to 3: the five least recently used done keys go, in-flight ones stay. */
    rmr_idem_configure(s, 3, 1000000, 64);
    rmr_idem_stats_t st = stats(s);
    CHECK_INT(st.entries, 3);
    CHECK_INT(st.in_flight, 2);
    CHECK_INT(st.evictions, 5);
    CHECK_INT(peek(s, "k1", 1, 12), RMR_IDEM_DONE);
    /* The reference taken before the shrink outlives the eviction. */
    CHECK_INT(peek(s, "k2", 1, 12), RMR_IDEM_NEW); /* k2 was evicted; evicts k1 */
    CHECK_INT(stats(s).evictions, 6);
    if (held) {
        size_t n;
        const char *b = rmr_idem_entry_body(held, &n);
        CHECK(n == 2 && !memcmp(b, "k1", 2));
        CHECK_INT(rmr_idem_entry_status(held), 200);
    }

    /* Shrink below the in-flight count: nothing can go now; keys go as they finish. */
    rmr_idem_configure(s, 1, 1000000, 64);
    st = stats(s);
    CHECK_INT(st.entries, 3);
    CHECK_INT(st.evictions, 6);
    CHECK_INT(peek(s, "x", 1, 13), RMR_IDEM_FULL);
    finish(s, "i0", 200, "i0", 14);
    st = stats(s);
    CHECK_INT(st.stored, 7);
    CHECK_INT(st.entries, 2);
    CHECK_INT(st.evictions, 7);
    rmr_idem_abort(s, "i1", 2);
    finish(s, "k2", 200, "k2", 15);
    st = stats(s);
    CHECK_INT(st.entries, 1);
    CHECK_INT(st.in_flight, 0);
    CHECK_INT(peek(s, "k2", 1, 16), RMR_IDEM_DONE);

    /* Growing back keeps what is held. */
    rmr_idem_configure(s, 1000, 1000000, 64);
    CHECK_INT(peek(s, "k2", 1, 17), RMR_IDEM_DONE);
    CHECK_INT(stats(s).entries, 1);

    /* A reference outlives the store itself. */
    rmr_idem_entry_t *last;
    CHECK_INT(begin(s, "k2", 1, 18, &last), RMR_IDEM_DONE);
    rmr_idem_free(s);
    if (last) {
        size_t n;
        const char *b = rmr_idem_entry_body(last, &n);
        CHECK(n == 2 && !memcmp(b, "k2", 2));
    }
    rmr_idem_entry_unref(last);
    rmr_idem_entry_unref(held);
}

/* Enough keys to grow the table many times, with keys removed while it grows. */
static void test_growth(void)
{
    enum { N = 50000 };
    rmr_idem_t *s = rmr_idem_new(N, 100000000, 64);
    char key[32], body[32];
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof(key), "growth-key-%d", i);
        if (peek(s, key, (uint64_t)i, (uint64_t)i) != RMR_IDEM_NEW)
            break;
        if (i % 3 == 2) {
            rmr_idem_abort(s, key, strlen(key));
        } else {
            snprintf(body, sizeof(body), "body-%d", i);
            finish(s, key, 200, body, (uint64_t)i);
        }
    }
    rmr_idem_stats_t st = stats(s);
    CHECK_INT(st.entries, N - N / 3);
    CHECK_INT(st.not_stored, N / 3);
    int ok = 1;
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof(key), "growth-key-%d", i);
        rmr_idem_entry_t *e;
        rmr_idem_verdict_t v = begin(s, key, (uint64_t)i, N, &e);
        if (i % 3 == 2) {
            ok &= v == RMR_IDEM_NEW;
            rmr_idem_abort(s, key, strlen(key));
        } else {
            size_t n;
            snprintf(body, sizeof(body), "body-%d", i);
            ok &= v == RMR_IDEM_DONE && e && !strcmp(rmr_idem_entry_body(e, &n), body) &&
                  n == strlen(body);
        }
        rmr_idem_entry_unref(e);
    }
    CHECK(ok);
    st = stats(s);
    CHECK_INT(st.replays, N - N / 3);
    CHECK_INT(st.evictions, 0);
    CHECK_INT(st.entries, N - N / 3);
    rmr_idem_free(s);
}

/*
 * Four threads on 48 overlapping keys with room for 24. Each NEW holder marks its key HELD
 * before anything else and marks the outcome before calling finish or abort, so that the next
 * NEW of that key (which the store can only grant after that call) sees the previous
 * generation's end: FREE (not stored) or STORED (then it must have been evicted since).
 */
enum { MT_THREADS = 4, MT_KEYS = 48, MT_ROOM = 24, MT_ITERS = 40000 };
enum { K_FREE, K_HELD, K_STORED };

static struct {
    _Atomic int state;
    _Atomic long news, unstored, gone_seen;
} mt_key[MT_KEYS];
static rmr_idem_t *mt_store;
static _Atomic long mt_verdicts[5], mt_double_holders, mt_bad_replays, mt_clock;

static void *mt_worker(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg * 2654435761u + 12345u;
    char key[16];
    for (int i = 0; i < MT_ITERS; i++) {
        int k = rand_r(&seed) % MT_KEYS;
        int klen = snprintf(key, sizeof(key), "key-%d", k);
        /* now and then, the same key with another request */
        uint64_t fp = (uint64_t)k + (rand_r(&seed) % 64 == 0);
        uint64_t now = (uint64_t)atomic_fetch_add(&mt_clock, 1);
        rmr_idem_entry_t *e;
        rmr_idem_verdict_t v = rmr_idem_begin(mt_store, key, (size_t)klen, fp, now, &e);
        atomic_fetch_add(&mt_verdicts[v], 1);
        if (v == RMR_IDEM_NEW) {
            int old = atomic_exchange(&mt_key[k].state, K_HELD);
            if (old == K_HELD)
                atomic_fetch_add(&mt_double_holders, 1);
            else if (old == K_STORED)
                atomic_fetch_add(&mt_key[k].gone_seen, 1);
            atomic_fetch_add(&mt_key[k].news, 1);
            int r = rand_r(&seed) % 8;
            if (r == 0) {
                atomic_store(&mt_key[k].state, K_FREE);
                atomic_fetch_add(&mt_key[k].unstored, 1);
                rmr_idem_abort(mt_store, key, (size_t)klen);
            } else if (r == 1) {
                atomic_store(&mt_key[k].state, K_FREE);
                atomic_fetch_add(&mt_key[k].unstored, 1);
                rmr_idem_finish(mt_store, key, (size_t)klen, (uint64_t)k, 503, "", 0, "", 0, 1,
                                now + 1);
            } else {
                atomic_store(&mt_key[k].state, K_STORED);
                rmr_idem_finish(mt_store, key, (size_t)klen, (uint64_t)k, 200, HEAD, strlen(HEAD),
                                key, (size_t)klen, 1, now + 1);
            }
        } else if (v == RMR_IDEM_DONE) {
            size_t n;
            const char *b = e ? rmr_idem_entry_body(e, &n) : NULL;
            if (!b || n != (size_t)klen || memcmp(b, key, n) || rmr_idem_entry_status(e) != 200 ||
                !rmr_idem_entry_matches_body(mt_store, e, (uint64_t)k))
                atomic_fetch_add(&mt_bad_replays, 1);
            rmr_idem_entry_unref(e);
        } else if (e) {
            atomic_fetch_add(&mt_bad_replays, 1);
        }
    }
    return NULL;
}

static void test_threads(void)
{
    mt_store = rmr_idem_new(MT_ROOM, 1000000000, 64);
    pthread_t t[MT_THREADS];
    for (uintptr_t i = 0; i < MT_THREADS; i++)
        pthread_create(&t[i], NULL, mt_worker, (void *)i);
    for (int i = 0; i < MT_THREADS; i++)
        pthread_join(t[i], NULL);

    rmr_idem_stats_t st = stats(mt_store);
    long news = 0, unstored = 0, gone_seen = 0, stored_now = 0, total = 0;
    int per_key_ok = 1;
    for (int k = 0; k < MT_KEYS; k++) {
        int state = atomic_load(&mt_key[k].state);
        news += mt_key[k].news;
        unstored += mt_key[k].unstored;
        gone_seen += mt_key[k].gone_seen;
        stored_now += state == K_STORED;
        /* one NEW per generation: each ended unstored, or stored and then dropped, or is the
         * stored one now */
        if (mt_key[k].news != mt_key[k].unstored + mt_key[k].gone_seen + (state == K_STORED) ||
            state == K_HELD)
            per_key_ok = 0;
    }
    for (int v = 0; v < 5; v++)
        total += mt_verdicts[v];
    printf("     %ld NEW, %ld IN_FLIGHT, %ld DONE, %ld MISMATCH, %ld FULL; %llu evictions\n",
           (long)mt_verdicts[0], (long)mt_verdicts[1], (long)mt_verdicts[2], (long)mt_verdicts[3],
           (long)mt_verdicts[4], (unsigned long long)st.evictions);
    CHECK_INT(total, MT_THREADS * MT_ITERS);
    CHECK_INT(mt_double_holders, 0);
    CHECK_INT(mt_bad_replays, 0);
    CHECK(per_key_ok);
    CHECK_INT(news, mt_verdicts[RMR_IDEM_NEW]);
    CHECK(mt_verdicts[RMR_IDEM_NEW] > MT_KEYS && mt_verdicts[RMR_IDEM_DONE] > 0 &&
          mt_verdicts[RMR_IDEM_MISMATCH] > 0);
    CHECK_INT(mt_verdicts[RMR_IDEM_FULL], 0); /* at most 4 in flight, room for 24 */
    CHECK_INT(st.in_flight, 0);
    CHECK_INT(st.stored + st.not_stored, news);
    CHECK_INT(st.not_stored, unstored);
    CHECK_INT(st.replays, mt_verdicts[RMR_IDEM_DONE]);
    CHECK_INT(st.conflicts, mt_verdicts[RMR_IDEM_IN_FLIGHT]);
    CHECK_INT(st.mismatches, mt_verdicts[RMR_IDEM_MISMATCH]);
    CHECK_INT(st.expired, 0);
    CHECK(st.evictions > 0);
    CHECK(st.entries <= MT_ROOM);
    CHECK_INT(st.stored, st.evictions + st.entries);

    /* Each key marked STORED is held or was evicted unseen; each FREE one is absent. */
    rmr_idem_configure(mt_store, 1000, 1000000000, 64); /* so that the probes evict nothing */
    long held = 0, evicted_unseen = 0;
    int free_ok = 1;
    for (int k = 0; k < MT_KEYS; k++) {
        char key[16];
        snprintf(key, sizeof(key), "key-%d", k);
        rmr_idem_entry_t *e;
        rmr_idem_verdict_t v = begin(mt_store, key, UINT64_MAX, (uint64_t)mt_clock, &e);
        rmr_idem_entry_unref(e);
        if (v == RMR_IDEM_NEW)
            rmr_idem_abort(mt_store, key, strlen(key));
        if (atomic_load(&mt_key[k].state) == K_STORED) {
            held += v == RMR_IDEM_MISMATCH;
            evicted_unseen += v == RMR_IDEM_NEW;
        } else if (v != RMR_IDEM_NEW) {
            free_ok = 0;
        }
    }
    CHECK(free_ok);
    CHECK_INT(held, st.entries);
    CHECK_INT(held + evicted_unseen, stored_now);
    CHECK_INT(st.evictions, gone_seen + evicted_unseen);
    rmr_idem_free(mt_store);
}

int main(void)
{
    test_hash();
    test_parse_key();
    test_format_key();
    test_flows();
    test_not_stored();
    test_abort();
    test_big_body();
    test_ttl();
    test_lru();
    test_reconfigure();
    test_growth();
    test_threads();
    return check_summary();
}
