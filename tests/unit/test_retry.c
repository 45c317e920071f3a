/*
 * Unit test of filters/retry.c: retry policy words and conditions, method idempotency, full-jitter
 * backoff, Retry-After parsing, the retry budget, the token bucket, the named registry, and
 * budgets and buckets hammered by 4 threads. Prints one line per check; exits 1 when any check
 * fails.
 */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "remora/retry.h"

#include "check.h"

#define RA(s, now) rmr_retry_after_ms((s), strlen(s), (now))

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void test_policy_words(void)
{
    rmr_retry_policy_t p;
    memset(&p, 0xab, sizeof(p));
    rmr_retry_policy_defaults(&p);
    CHECK_INT(p.attempts, 1);
    CHECK_INT(p.per_try_ms, 0);
    CHECK_INT(p.on, 0);
    CHECK_INT(p.n_codes, 0);
    CHECK_INT(p.base_ms, 25);
    CHECK_INT(p.max_ms, 250);
    CHECK(p.budget_percent == 20.0);
    CHECK_INT(p.budget_min_per_s, 10);
    CHECK_INT(p.non_idempotent, RMR_NONIDEM_NEVER);

    static const struct {
        const char *w;
        uint32_t bit;
    } words[] = {
        {"connect-failure", RMR_RETRY_CONNECT_FAILURE},
        {"reset", RMR_RETRY_RESET},
        {"refused-stream", RMR_RETRY_REFUSED_STREAM},
        {"gateway-error", RMR_RETRY_GATEWAY_ERROR},
        {"5xx", RMR_RETRY_5XX},
        {"retriable-4xx", RMR_RETRY_RETRIABLE_4XX},
        {"per-try-timeout", RMR_RETRY_PER_TRY_TIMEOUT},
    };
    uint32_t all = 0;
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
        rmr_retry_policy_t q;
        rmr_retry_policy_defaults(&q);
        printf("     word %s\n", words[i].w);
        CHECK_INT(rmr_retry_policy_add_on(&q, words[i].w), 0);
        CHECK_INT(q.on, words[i].bit);
        CHECK_INT(q.n_codes, 0);
        CHECK_INT(rmr_retry_policy_add_on(&p, words[i].w), 0);
        all |= words[i].bit;
    }
    CHECK_INT(p.on, all);
    CHECK_INT(p.on, 0x7f);

    /* Bad words leave the policy as it was. */
    static const char *const bad[] = {"connect_failure",
                                      "Reset",
                                      "",
                                      "5XX",
                                      "600",
                                      "099",
                                      "50",
                                      "5033",
                                      "0503",
                                      "abc",
                                      "503 ",
                                      " 503",
                                      "4xx",
                                      "gateway-errors"};
    rmr_retry_policy_t before = p;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        printf("     bad word \"%s\"\n", bad[i]);
        CHECK_INT(rmr_retry_policy_add_on(&p, bad[i]), -1);
    }
    CHECK_INT(rmr_retry_policy_add_on(&p, NULL), -1);
    CHECK(!memcmp(&before, &p, sizeof(p)));

    /* Status codes: listed once, at most RMR_RETRY_MAX_CODES. */
    rmr_retry_policy_defaults(&p);
    CHECK_INT(rmr_retry_policy_add_on(&p, "503"), 0);
    CHECK_INT(rmr_retry_policy_add_on(&p, "429"), 0);
    CHECK_INT(rmr_retry_policy_add_on(&p, "503"), 0);
    CHECK_INT(p.n_codes, 2);
    CHECK_INT(p.codes[0], 503);
    CHECK_INT(p.codes[1], 429);
    CHECK_INT(p.on, 0);
    CHECK_INT(rmr_retry_policy_add_on(&p, "100"), 0);
    CHECK_INT(rmr_retry_policy_add_on(&p, "599"), 0);
    CHECK_INT(p.n_codes, 4);
    int full_ok = 1;
    for (int c = 200; p.n_codes < RMR_RETRY_MAX_CODES; c++) {
        char w[16];
        snprintf(w, sizeof(w), "%d", c);
        full_ok &= rmr_retry_policy_add_on(&p, w) == 0;
    }
    CHECK(full_ok);
    CHECK_INT(p.n_codes, RMR_RETRY_MAX_CODES);
    CHECK_INT(rmr_retry_policy_add_on(&p, "418"), -1);
    CHECK_INT(p.n_codes, RMR_RETRY_MAX_CODES);
    CHECK_INT(rmr_retry_policy_add_on(&p, "429"), 0);   /* already there */
    CHECK_INT(rmr_retry_policy_add_on(&p, "reset"), 0); /* words still fit */
    CHECK_INT(p.on, RMR_RETRY_RESET);
}

static void test_should(void)
{
    rmr_retry_policy_t none, p;
    rmr_retry_policy_defaults(&none);
    /* An empty policy retries nothing. */
    CHECK_STR(rmr_retry_should(&none, RMR_ATT_CONNECT_FAILURE, 0), NULL);
    CHECK_STR(rmr_retry_should(&none, RMR_ATT_RESET, 0), NULL);
    CHECK_STR(rmr_retry_should(&none, RMR_ATT_REFUSED_STREAM, 0), NULL);
    CHECK_STR(rmr_retry_should(&none, RMR_ATT_PER_TRY_TIMEOUT, 0), NULL);
    CHECK_STR(rmr_retry_should(&none, RMR_ATT_STATUS, 503), NULL);

    /* Each kind is retried by its own bit only. */
    static const struct {
        const char *w;
        rmr_attempt_kind_t k;
    } kinds[] = {
        {"connect-failure", RMR_ATT_CONNECT_FAILURE},
        {"reset", RMR_ATT_RESET},
        {"refused-stream", RMR_ATT_REFUSED_STREAM},
        {"per-try-timeout", RMR_ATT_PER_TRY_TIMEOUT},
    };
    for (size_t i = 0; i < 4; i++) {
        rmr_retry_policy_defaults(&p);
        rmr_retry_policy_add_on(&p, kinds[i].w);
        printf("     on: [%s]\n", kinds[i].w);
        for (size_t j = 0; j < 4; j++)
            CHECK_STR(rmr_retry_should(&p, kinds[j].k, 0), i == j ? kinds[i].w : NULL);
        CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 503), NULL);
    }
    rmr_retry_policy_defaults(&p);
    rmr_retry_policy_add_on(&p, "5xx");
    rmr_retry_policy_add_on(&p, "gateway-error");
    rmr_retry_policy_add_on(&p, "retriable-4xx");
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_RESET, 0), NULL); /* 5xx is not reset */
    CHECK_STR(rmr_retry_should(&p, (rmr_attempt_kind_t)99, 503), NULL);

    /* gateway-error: 502, 503, 504 only. */
    rmr_retry_policy_defaults(&p);
    rmr_retry_policy_add_on(&p, "gateway-error");
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 502), "gateway-error");
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 503), "gateway-error");
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 504), "gateway-error");
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 500), NULL);
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 501), NULL);
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 505), NULL);
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 200), NULL);
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_CONNECT_FAILURE, 0), NULL);

    /* 5xx: 500..599. */
    rmr_retry_policy_defaults(&p);
    rmr_retry_policy_add_on(&p, "5xx");
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 500), "5xx");
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 503), "5xx");
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 599), "5xx");
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 499), NULL);
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 409), NULL);
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 600), NULL);
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 0), NULL);
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, -500), NULL);

    /* retriable-4xx: 409. */
    rmr_retry_policy_defaults(&p);
    rmr_retry_policy_add_on(&p, "retriable-4xx");
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 409), "retriable-4xx");
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 408), NULL);
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 429), NULL);
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 503), NULL);

    /* Listed codes. */
    rmr_retry_policy_defaults(&p);
    rmr_retry_policy_add_on(&p, "429");
    rmr_retry_policy_add_on(&p, "503");
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 429), "status");
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 503), "status");
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 502), NULL);
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 430), NULL);
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_RESET, 429), NULL);

    /* The config example: on: [connect-failure, reset, gateway-error, "503"]. */
    rmr_retry_policy_defaults(&p);
    CHECK_INT(rmr_retry_policy_add_on(&p, "connect-failure"), 0);
    CHECK_INT(rmr_retry_policy_add_on(&p, "reset"), 0);
    CHECK_INT(rmr_retry_policy_add_on(&p, "gateway-error"), 0);
    CHECK_INT(rmr_retry_policy_add_on(&p, "503"), 0);
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 503), "gateway-error"); /* the bit first */
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 500), NULL);
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_CONNECT_FAILURE, 0), "connect-failure");
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_RESET, 0), "reset");
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_REFUSED_STREAM, 0), NULL);
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_PER_TRY_TIMEOUT, 0), NULL);
    /* Both 5xx and gateway-error: the narrower reason wins where both match. */
    rmr_retry_policy_add_on(&p, "5xx");
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 504), "gateway-error");
    CHECK_STR(rmr_retry_should(&p, RMR_ATT_STATUS, 500), "5xx");
}

static void test_methods(void)
{
    static const char *const yes[] = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"};
    static const char *const no[] = {"POST", "PATCH", "CONNECT", "get",    "Put",
                                     "GETX", "GE",    "",        "DELETED"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        printf("     method %s\n", yes[i]);
        CHECK_INT(rmr_method_idempotent(yes[i], strlen(yes[i])), 1);
    }
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
        printf("     method \"%s\"\n", no[i]);
        CHECK_INT(rmr_method_idempotent(no[i], strlen(no[i])), 0);
    }
    /* Only len bytes count: the method is a slice of the request line. */
    CHECK_INT(rmr_method_idempotent("GET /x HTTP/1.1", 3), 1);
    CHECK_INT(rmr_method_idempotent("POST /x HTTP/1.1", 4), 0);
    CHECK_INT(rmr_method_idempotent("PUTS", 3), 1);
    CHECK_INT(rmr_method_idempotent(NULL, 0), 0);
}

/* Draws n backoffs for retry number `retry`; checks all within [0, cap], that both ends are
 * reached and that the mean is within 2 % of cap / 2. */
static void check_backoff(const rmr_retry_policy_t *p, uint32_t retry, uint32_t cap, uint64_t *rs)
{
    const int n = 200000;
    uint32_t lo = UINT32_MAX, hi = 0;
    double sum = 0;
    for (int i = 0; i < n; i++) {
        uint32_t d = rmr_backoff_ms(p, retry, splitmix64(rs));
        lo = d < lo ? d : lo;
        hi = d > hi ? d : hi;
        sum += d;
    }
    double mean = sum / n;
    printf("     base %u max %u retry %u: min %u max %u mean %.2f (cap %u)\n", p->base_ms,
           p->max_ms, retry, lo, hi, mean, cap);
    CHECK_INT(lo, 0);
    CHECK_INT(hi, cap);
    CHECK(fabs(mean - cap / 2.0) <= cap * 0.02 + 0.01);
}

static void test_backoff(void)
{
    uint64_t rs = 42;
    rmr_retry_policy_t p;
    rmr_retry_policy_defaults(&p); /* 25 ms .. 250 ms */
    check_backoff(&p, 1, 25, &rs);
    check_backoff(&p, 2, 50, &rs);
    check_backoff(&p, 3, 100, &rs);
    check_backoff(&p, 4, 200, &rs);
    check_backoff(&p, 5, 250, &rs); /* 400 capped */
    check_backoff(&p, 6, 250, &rs);
    check_backoff(&p, 0, 25, &rs); /* 0 is taken as the first retry */
    /* Shifts that would overflow still give the cap. */
    check_backoff(&p, 33, 250, &rs);
    check_backoff(&p, 64, 250, &rs);
    check_backoff(&p, UINT32_MAX, 250, &rs);
    /* Any random bits stay within bounds. */
    CHECK(rmr_backoff_ms(&p, 1, UINT64_MAX) <= 25);
    CHECK(rmr_backoff_ms(&p, 9, UINT64_MAX) <= 250);
    CHECK_INT(rmr_backoff_ms(&p, 1, 0), 0);

    /* max 0 means 10 x base. */
    p.base_ms = 30;
    p.max_ms = 0;
    check_backoff(&p, 2, 60, &rs);
    check_backoff(&p, 10, 300, &rs);
    /* A base above max is capped by max from the first retry. */
    p.base_ms = 100;
    p.max_ms = 40;
    check_backoff(&p, 1, 40, &rs);
    /* No base, no wait. */
    p.base_ms = 0;
    p.max_ms = 0;
    int zero = 1;
    for (uint32_t r = 0; r < 70; r++)
        zero &= rmr_backoff_ms(&p, r, splitmix64(&rs)) == 0;
    CHECK(zero);
    /* Huge values neither overflow nor exceed the max. */
    p.base_ms = UINT32_MAX;
    p.max_ms = UINT32_MAX;
    int big_ok = 1;
    for (int i = 0; i < 1000; i++)
        big_ok &= rmr_backoff_ms(&p, (uint32_t)(i % 40), splitmix64(&rs)) <= UINT32_MAX - 1;
    CHECK(big_ok);
}

static void test_retry_after(void)
{
    const int64_t t0 = 784111777; /* Sun, 06 Nov 1994 08:49:37 GMT */
    const int64_t cap = 24 * 3600 * 1000LL;
    CHECK_INT(RMR_RETRY_AFTER_MAX_MS, cap);

    /* delta-seconds */
    CHECK_INT(RA("120", t0), 120000);
    CHECK_INT(RA("0", t0), 0);
    CHECK_INT(RA("1", 0), 1000);
    CHECK_INT(RA("007", t0), 7000);
    CHECK_INT(RA(" \t120 ", t0), 120000);
    CHECK_INT(RA("86399", t0), 86399000LL);
    CHECK_INT(RA("86400", t0), cap);
    CHECK_INT(RA("86401", t0), cap);
    CHECK_INT(RA("4294967296", t0), cap);
    CHECK_INT(RA("99999999999999999999999999999999999999", t0), cap);
    CHECK_INT(rmr_retry_after_ms("120xyz", 3, t0), 120000); /* only n bytes */
    CHECK_INT(rmr_retry_after_ms("12", 1, t0), 1000);

    /* HTTP-dates in the three forms. */
    CHECK_INT(RA("Sun, 06 Nov 1994 08:49:37 GMT", t0 - 120), 120000);
    CHECK_INT(RA("Sunday, 06-Nov-94 08:49:37 GMT", t0 - 120), 120000);
    CHECK_INT(RA("Sun Nov  6 08:49:37 1994", t0 - 120), 120000);
    CHECK_INT(RA("Wed Nov 16 08:49:37 1994", t0 - 120), cap); /* ten days on */
    CHECK_INT(RA("Wed Nov 16 08:49:37 1994", t0 + 10 * 86400 - 1), 1000);
    CHECK_INT(RA("  Sun, 06 Nov 1994 08:49:38 GMT\t", t0), 1000);
    CHECK_INT(RA("sun, 06 nov 1994 08:49:38 GMT", t0), 1000);
    CHECK_INT(RA("Thu, 01 Jan 1970 00:00:10 GMT", 0), 10000);
    CHECK_INT(RA("Sat, 01 Jan 2000 00:00:00 GMT", 946684800 - 3600), 3600000);
    CHECK_INT(RA("Thu, 29 Feb 1996 00:00:00 GMT", 825552000 - 5), 5000); /* leap day */
    CHECK_INT(RA("Tue, 29 Feb 2000 00:00:00 GMT", 951782400 - 5), 5000);
    /* RFC 850's two-digit year: the most recent year with those digits, unless within 50 years. */
    CHECK_INT(RA("Saturday, 01-Jan-00 00:00:00 GMT", 946684800 - 60), 60000);
    CHECK_INT(RA("Saturday, 01-Jan-00 00:00:00 GMT", 946684800 + 60), 0);
    CHECK_INT(RA("Thursday, 01-Jan-70 00:00:10 GMT", 5), 5000);
    /* Seen from 2023, "30" is 2030 (the future, capped) and "80" is 1980 (the past). */
    CHECK_INT(RA("Tuesday, 01-Jan-30 00:00:00 GMT", 1700000000), cap);
    CHECK_INT(RA("Tuesday, 01-Jan-80 00:00:00 GMT", 1700000000), 0);

    /* Past and present dates wait 0; far ones are capped. */
    CHECK_INT(RA("Sun, 06 Nov 1994 08:49:37 GMT", t0), 0);
    CHECK_INT(RA("Sun, 06 Nov 1994 08:49:37 GMT", t0 + 1), 0);
    CHECK_INT(RA("Sun, 06 Nov 1994 08:49:37 GMT", 1700000000), 0);
    CHECK_INT(RA("Sun, 06 Nov 1994 08:49:37 GMT", t0 - 86400), cap);
    CHECK_INT(RA("Sun, 06 Nov 1994 08:49:37 GMT", t0 - 86399), 86399000LL);
    CHECK_INT(RA("Fri, 31 Dec 9999 23:59:59 GMT", t0), cap);
    CHECK_INT(RA("Sat, 01 Jan 0000 00:00:00 GMT", t0), 0);
    CHECK_INT(RA("Sun, 06 Nov 1994 08:49:37 GMT", INT64_MAX), 0);
    CHECK_INT(RA("Sun, 06 Nov 1994 08:49:37 GMT", INT64_MIN), cap);
    CHECK_INT(RA("Sunday, 06-Nov-94 08:49:37 GMT", INT64_MIN), cap);
    CHECK_INT(RA("Sunday, 06-Nov-94 08:49:37 GMT", INT64_MAX), 0);

    /* Malformed. */
    static const char *const bad[] = {
        "",
        "   ",
        "-5",
        "+5",
        "1.5",
        "12a",
        "12 34",
        "0x10",
        "soon",
        "tomorrow",
        "Sun, 06 Nov 1994 08:49:37 UTC",
        "Sun, 06 Nov 1994 08:49:37",
        "Sun, 06 Nov 1994 08:49:37 GMT junk",
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Sun, 6 Nov 1994 08:49:37 GMT",
        "Sun 06 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nox 1994 08:49:37 GMT",
        "Sun, 31 Feb 1994 08:49:37 GMT",
        "Sun, 29 Feb 1900 08:49:37 GMT",
        "Sun, 31 Apr 1994 08:49:37 GMT",
        "Sun, 00 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 06 Nov 1994 08:49:61 GMT",
        "Sun, 06 Nov 1994 8:49:37 GMT",
        "Xyz, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-1994 08:49:37 GMT",
        "Sunday, 06 Nov 1994 08:49:37 GMT",
        "Sun Nov 6 08:49:37 1994",
        "Sun Nov  6 08:49:37 94",
        "Sun Nov  6 08:49:37 1994 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        printf("     bad \"%s\"\n", bad[i]);
        CHECK_INT(RA(bad[i], t0), -1);
    }
    CHECK_INT(rmr_retry_after_ms(NULL, 0, t0), -1);
    CHECK_INT(rmr_retry_after_ms("Sun, 06 Nov 1994 08:49:37 GMT", 20, t0), -1); /* cut short */
    /* A NUL inside the slice is not the end of it. */
    CHECK_INT(rmr_retry_after_ms("12\0003", 4, t0), -1);
}

static void test_budget(void)
{
    rmr_budget_t *b = rmr_budget_new();
    rmr_budget_stats_t st;
    CHECK(b != NULL);
    rmr_budget_get_stats(b, &st);
    CHECK_INT(st.active, 0);
    CHECK_INT(st.retries_active, 0);
    CHECK_INT(st.retries_total, 0);
    CHECK_INT(st.exhausted, 0);

    /* No active request and no floor: nothing. */
    CHECK_INT(rmr_budget_retry_begin(b, 20, 0, 1000), 0);

    /* 20 % of 10 active = 2 retries in flight. */
    for (int i = 0; i < 10; i++)
        rmr_budget_request_begin(b);
    CHECK_INT(rmr_budget_retry_begin(b, 20, 0, 1000), 1);
    CHECK_INT(rmr_budget_retry_begin(b, 20, 0, 1000), 1);
    CHECK_INT(rmr_budget_retry_begin(b, 20, 0, 1000), 0);
    rmr_budget_get_stats(b, &st);
    CHECK_INT(st.active, 10);
    CHECK_INT(st.retries_active, 2);
    CHECK_INT(st.retries_total, 2);
    CHECK_INT(st.exhausted, 2);

    /* Plus the floor: 3 more in this second, then exhausted. */
    CHECK_INT(rmr_budget_retry_begin(b, 20, 3, 1000), 1);
    CHECK_INT(rmr_budget_retry_begin(b, 20, 3, 1500), 1);
    CHECK_INT(rmr_budget_retry_begin(b, 20, 3, 1999), 1);
    CHECK_INT(rmr_budget_retry_begin(b, 20, 3, 1999), 0);
    CHECK_INT(rmr_budget_retry_begin(b, 20, 3, 1200), 0);
    rmr_budget_get_stats(b, &st);
    CHECK_INT(st.retries_active, 5);
    CHECK_INT(st.retries_total, 5);
    CHECK_INT(st.exhausted, 4);
    /* The next second brings 3 more; a time behind it counts in it. */
    CHECK_INT(rmr_budget_retry_begin(b, 20, 3, 2000), 1);
    CHECK_INT(rmr_budget_retry_begin(b, 20, 3, 2999), 1);
    CHECK_INT(rmr_budget_retry_begin(b, 20, 3, 1000), 1);
    CHECK_INT(rmr_budget_retry_begin(b, 20, 3, 2500), 0);
    rmr_budget_get_stats(b, &st);
    CHECK_INT(st.retries_active, 8);
    CHECK_INT(st.retries_total, 8);
    CHECK_INT(st.exhausted, 5);

    /* Release: the percent share comes back as retries end. */
    for (int i = 0; i < 8; i++)
        rmr_budget_retry_end(b);
    rmr_budget_get_stats(b, &st);
    CHECK_INT(st.retries_active, 0);
    CHECK_INT(rmr_budget_retry_begin(b, 20, 0, 2500), 1);
    CHECK_INT(rmr_budget_retry_begin(b, 20, 0, 2500), 1);
    CHECK_INT(rmr_budget_retry_begin(b, 20, 0, 2500), 0);
    rmr_budget_retry_end(b);
    CHECK_INT(rmr_budget_retry_begin(b, 20, 0, 2500), 1);
    rmr_budget_retry_end(b);
    rmr_budget_retry_end(b);
    /* Unmatched ends do not wrap the counts (which would open the budget). */
    rmr_budget_retry_end(b);
    rmr_budget_get_stats(b, &st);
    CHECK_INT(st.retries_active, 0);

    /* Other shares: 50 % of 5 = 2 (2.5 rounds down), 100 % of 10 = 10, 0 % = none. */
    for (int i = 0; i < 5; i++)
        rmr_budget_request_end(b);
    rmr_budget_get_stats(b, &st);
    CHECK_INT(st.active, 5);
    int n = 0;
    while (n < 100 && rmr_budget_retry_begin(b, 50, 0, 3000))
        n++;
    CHECK_INT(n, 2);
    for (int i = 0; i < n; i++)
        rmr_budget_retry_end(b);
    for (int i = 0; i < 5; i++)
        rmr_budget_request_begin(b);
    n = 0;
    while (n < 100 && rmr_budget_retry_begin(b, 100, 0, 3000))
        n++;
    CHECK_INT(n, 10);
    for (int i = 0; i < n; i++)
        rmr_budget_retry_end(b);
    CHECK_INT(rmr_budget_retry_begin(b, 0, 0, 3000), 0);
    /* 0 % with a floor: the floor alone. */
    n = 0;
    while (n < 100 && rmr_budget_retry_begin(b, 0, 4, 4000))
        n++;
    CHECK_INT(n, 4);
    for (int i = 0; i < n; i++)
        rmr_budget_retry_end(b);

    for (int i = 0; i < 10; i++)
        rmr_budget_request_end(b);
    rmr_budget_request_end(b); /* unmatched */
    rmr_budget_get_stats(b, &st);
    CHECK_INT(st.active, 0);
    CHECK_INT(st.retries_active, 0);
    CHECK_INT(st.retries_total, 8 + 3 + 2 + 10 + 4);
    rmr_budget_free(b);
    rmr_budget_free(NULL);
}

static void test_bucket(void)
{
    uint32_t ra = 0;
    /* 10 per second, burst 5: five at once, then refusals. */
    rmr_bucket_t *b = rmr_bucket_new(10, 5);
    CHECK(b != NULL);
    int n = 0;
    while (n < 100 && rmr_bucket_take(b, 1000000, NULL))
        n++;
    CHECK_INT(n, 5);
    CHECK_INT(rmr_bucket_limited(b), 1);
    ra = 0;
    CHECK_INT(rmr_bucket_take(b, 1000000, &ra), 0);
    CHECK_INT(ra, 1); /* 0.1 s, rounded up to whole seconds */
    CHECK_INT(rmr_bucket_limited(b), 2);
    /* 50 ms gives half a token: still refused. */
    CHECK_INT(rmr_bucket_take(b, 1050000, &ra), 0);
    /* 100 ms gives one. */
    CHECK_INT(rmr_bucket_take(b, 1100000, &ra), 1);
    CHECK_INT(rmr_bucket_take(b, 1100000, &ra), 0);
    /* Refill in steps of 10 ms: ten of them make exactly one token despite rounding. */
    int got = 0;
    for (int i = 1; i <= 10; i++)
        got += rmr_bucket_take(b, 1100000 + (uint64_t)i * 10000, NULL);
    CHECK_INT(got, 1);
    /* A long pause refills to the burst, not beyond. */
    n = 0;
    while (n < 100 && rmr_bucket_take(b, 60000000, NULL))
        n++;
    CHECK_INT(n, 5);
    /* A time behind the last adds nothing. */
    CHECK_INT(rmr_bucket_take(b, 30000000, &ra), 0);
    CHECK_INT(rmr_bucket_take(b, 60000000, &ra), 0);
    CHECK_INT(rmr_bucket_take(b, 60100000, &ra), 1);
    CHECK_INT(rmr_bucket_limited(b), 2 + 1 + 1 + 9 + 1 + 2);

    /* Reconfigure to a smaller burst: tokens capped. */
    rmr_bucket_configure(b, 10, 20);
    CHECK_INT(rmr_bucket_take(b, 62100000, NULL), 1); /* 2 s: 20 tokens, one taken */
    rmr_bucket_configure(b, 10, 3);
    n = 0;
    while (n < 100 && rmr_bucket_take(b, 62100000, NULL))
        n++;
    CHECK_INT(n, 3);
    /* A larger burst and rate keep the (empty) bucket empty until time passes, then refill
     * at the new rate. */
    rmr_bucket_configure(b, 100, 50);
    CHECK_INT(rmr_bucket_take(b, 62100000, NULL), 0);
    n = 0;
    while (n < 100 && rmr_bucket_take(b, 62200000, NULL))
        n++;
    CHECK_INT(n, 10);
    /* A bad rate is ignored. */
    rmr_bucket_configure(b, 0, 1);
    rmr_bucket_configure(b, NAN, 1);
    rmr_bucket_configure(b, -5, 1);
    n = 0;
    while (n < 100 && rmr_bucket_take(b, 63200000, NULL))
        n++;
    CHECK_INT(n, 50);
    rmr_bucket_free(b);

    /* Slow rates: retry_after_s counts whole seconds to the next token. */
    b = rmr_bucket_new(0.25, 1);
    CHECK_INT(rmr_bucket_take(b, 0, &ra), 1);
    CHECK_INT(rmr_bucket_take(b, 0, &ra), 0);
    CHECK_INT(ra, 4);
    CHECK_INT(rmr_bucket_take(b, 2000000, &ra), 0);
    CHECK_INT(ra, 2);
    CHECK_INT(rmr_bucket_take(b, 2500000, &ra), 0);
    CHECK_INT(ra, 2); /* 1.5 s rounds up */
    CHECK_INT(rmr_bucket_take(b, 3999999, &ra), 0);
    CHECK_INT(ra, 1);
    CHECK_INT(rmr_bucket_take(b, 4000000, &ra), 1);
    rmr_bucket_free(b);
    b = rmr_bucket_new(1e-6, 1);
    CHECK_INT(rmr_bucket_take(b, 0, &ra), 1);
    CHECK_INT(rmr_bucket_take(b, 0, &ra), 0);
    CHECK_INT(ra, 86400); /* capped at a day */
    rmr_bucket_free(b);

    /* burst 0: ceil(rps), at least 1. */
    b = rmr_bucket_new(2.5, 0);
    n = 0;
    while (n < 100 && rmr_bucket_take(b, 0, NULL))
        n++;
    CHECK_INT(n, 3);
    rmr_bucket_configure(b, 0.1, 0);
    n = 0;
    while (n < 100 && rmr_bucket_take(b, 100000000, NULL))
        n++;
    CHECK_INT(n, 1);
    rmr_bucket_free(b);
    b = rmr_bucket_new(100, 0);
    n = 0;
    while (n < 1000 && rmr_bucket_take(b, 0, NULL))
        n++;
    CHECK_INT(n, 100);
    rmr_bucket_free(b);

    CHECK(rmr_bucket_new(0, 5) == NULL);
    CHECK(rmr_bucket_new(-1, 5) == NULL);
    CHECK(rmr_bucket_new(NAN, 5) == NULL);
    CHECK(rmr_bucket_new(INFINITY, 5) == NULL);
    rmr_bucket_free(NULL);
}

static void test_registry(void)
{
    rmr_budget_t *a = rmr_budget_get("svc-a");
    CHECK(a != NULL);
    CHECK(rmr_budget_get("svc-a") == a);
    rmr_budget_t *b = rmr_budget_get("svc-b");
    CHECK(b != NULL && b != a);
    CHECK(rmr_budget_get(NULL) == NULL);
    /* State survives another lookup (a reload). */
    rmr_budget_request_begin(a);
    rmr_budget_stats_t st;
    rmr_budget_get_stats(rmr_budget_get("svc-a"), &st);
    CHECK_INT(st.active, 1);
    rmr_budget_get_stats(b, &st);
    CHECK_INT(st.active, 0);

    rmr_bucket_t *r = rmr_bucket_get("route-1", 10, 5);
    CHECK(r != NULL);
    CHECK_INT(rmr_bucket_take(r, 0, NULL), 1);
    /* The same route gets the same bucket, configured anew: 4 tokens left, capped at 2. */
    CHECK(rmr_bucket_get("route-1", 10, 2) == r);
    CHECK_INT(rmr_bucket_take(r, 0, NULL), 1);
    CHECK_INT(rmr_bucket_take(r, 0, NULL), 1);
    CHECK_INT(rmr_bucket_take(r, 0, NULL), 0);
    CHECK_INT(rmr_bucket_limited(rmr_bucket_get("route-1", 10, 2)), 1);
    rmr_bucket_t *r2 = rmr_bucket_get("route-2", 1, 1);
    CHECK(r2 != NULL && r2 != r);
    CHECK(rmr_bucket_get("route-3", 0, 1) == NULL); /* a bad rate makes no bucket */
    CHECK(rmr_bucket_get(NULL, 1, 1) == NULL);
    /* An existing bucket given a bad rate keeps its own. */
    CHECK(rmr_bucket_get("route-2", -1, 1) == r2);

    rmr_retry_free_all();
    /* After free_all, names start afresh. */
    rmr_budget_get_stats(rmr_budget_get("svc-a"), &st);
    CHECK_INT(st.active, 0);
    r = rmr_bucket_get("route-1", 10, 5);
    int n = 0;
    while (n < 100 && rmr_bucket_take(r, 0, NULL))
        n++;
    CHECK_INT(n, 5);
    CHECK_INT(rmr_bucket_limited(r), 1);
    rmr_retry_free_all();
}

/* ---- 4 threads ---- */

#define THREADS 4
#define ROUNDS 20000
#define HOLD 8

struct shared {
    rmr_budget_t *budget;
    rmr_bucket_t *bucket;
    double percent;                    /* the budget's share */
    uint32_t min_per_s;                /* and floor */
    uint64_t limit;                    /* the most retries that may be in flight */
    _Atomic uint64_t in_flight, peak;  /* retries this test holds */
    _Atomic uint64_t granted, refused; /* budget answers */
    _Atomic uint64_t taken[3];         /* bucket tokens taken in each phase */
    _Atomic uint64_t clock_us;         /* the shared clock of phase 3 */
    pthread_barrier_t barrier;
};

static void *budget_worker(void *arg)
{
    struct shared *s = arg;
    pthread_barrier_wait(&s->barrier);
    for (int i = 0; i < ROUNDS / HOLD; i++) {
        /* Each round is a request that wants HOLD retries at once: 4 x HOLD is well above the
         * limit, so the threads race for the last places. Its own begin and end move active
         * between 25 and 29, which keeps 20 % at 5. */
        rmr_budget_request_begin(s->budget);
        int held = 0;
        for (int k = 0; k < HOLD; k++) {
            /* A fixed now_ms: the floor lets through min_per_s retries in all, no more. */
            if (!rmr_budget_retry_begin(s->budget, s->percent, s->min_per_s, 7000)) {
                atomic_fetch_add(&s->refused, 1);
                continue;
            }
            atomic_fetch_add(&s->granted, 1);
            held++;
            uint64_t now = atomic_fetch_add(&s->in_flight, 1) + 1;
            uint64_t peak = atomic_load(&s->peak);
            while (now > peak && !atomic_compare_exchange_weak(&s->peak, &peak, now))
                ;
        }
        if (i % 3 == 0)
            sched_yield();
        for (int k = 0; k < held; k++) {
            atomic_fetch_sub(&s->in_flight, 1);
            rmr_budget_retry_end(s->budget);
        }
        rmr_budget_request_end(s->budget);
    }
    return NULL;
}

static void *bucket_worker(void *arg)
{
    struct shared *s = arg;
    pthread_barrier_wait(&s->barrier);
    /* Phase 1: all at one instant, so the burst is all there is. */
    for (int i = 0; i < ROUNDS / 4; i++)
        if (rmr_bucket_take(s->bucket, 1000000, NULL))
            atomic_fetch_add(&s->taken[0], 1);
    pthread_barrier_wait(&s->barrier);
    /* Phase 2: a second later, refilled to the burst (not to rps). */
    for (int i = 0; i < ROUNDS / 4; i++)
        if (rmr_bucket_take(s->bucket, 2000000, NULL))
            atomic_fetch_add(&s->taken[1], 1);
    pthread_barrier_wait(&s->barrier);
    /* Phase 3: a clock moving 10 us per call, read before the take as a worker would. */
    for (int i = 0; i < ROUNDS; i++) {
        uint64_t now = atomic_fetch_add(&s->clock_us, 10);
        uint32_t ra = 0;
        if (rmr_bucket_take(s->bucket, now, &ra))
            atomic_fetch_add(&s->taken[2], 1);
        else if (ra != 1) /* at 1000 per second a token is never a second away */
            atomic_fetch_add(&s->refused, 1);
    }
    return NULL;
}

/* 4 threads take retries from a budget with 25 active requests (up to 29 with the threads' own)
 * and check that at most limit are ever in flight. */
static void run_budget_threads(double percent, uint32_t min_per_s, uint64_t limit)
{
    struct shared s;
    memset(&s, 0, sizeof(s));
    pthread_t t[THREADS];
    s.percent = percent;
    s.min_per_s = min_per_s;
    s.limit = limit;
    s.budget = rmr_budget_new();
    for (int i = 0; i < 25; i++)
        rmr_budget_request_begin(s.budget);
    pthread_barrier_init(&s.barrier, NULL, THREADS);
    for (int i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, budget_worker, &s);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&s.barrier);
    rmr_budget_stats_t st;
    rmr_budget_get_stats(s.budget, &st);
    printf("     budget %g %% + %u/s: granted %llu, refused %llu, peak in flight %llu (limit "
           "%llu)\n",
           percent, min_per_s, (unsigned long long)s.granted, (unsigned long long)s.refused,
           (unsigned long long)s.peak, (unsigned long long)s.limit);
    CHECK(atomic_load(&s.peak) <= s.limit);
    CHECK(atomic_load(&s.peak) >= (percent > 0 ? 5 : 1));
    CHECK(atomic_load(&s.refused) > 0);
    CHECK_INT(atomic_load(&s.granted) + atomic_load(&s.refused), THREADS * ROUNDS);
    CHECK_INT(st.retries_total, atomic_load(&s.granted));
    CHECK_INT(st.exhausted, atomic_load(&s.refused));
    CHECK_INT(st.retries_active, 0);
    CHECK_INT(st.active, 25);
    if (percent == 0) /* the floor alone: exactly min_per_s in the one second used */
        CHECK_INT(atomic_load(&s.granted), min_per_s);
    rmr_budget_free(s.budget);
}

static void test_threads(void)
{
    struct shared s;
    pthread_t t[THREADS];

    /* 20 % of 25..29 = 5; then the same plus a floor of 5; then the floor alone. */
    run_budget_threads(20, 0, 5);
    run_budget_threads(20, 5, 5 + 5);
    run_budget_threads(0, 5, 5);

    /* Bucket: 1000 per second, burst 50. */
    memset(&s, 0, sizeof(s));
    s.bucket = rmr_bucket_new(1000, 50);
    atomic_store(&s.clock_us, 3000000);
    pthread_barrier_init(&s.barrier, NULL, THREADS);
    for (int i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, bucket_worker, &s);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&s.barrier);
    uint64_t elapsed_us = atomic_load(&s.clock_us) - 3000000;
    uint64_t bound = 50 + elapsed_us * 1000 / 1000000; /* burst + refill over the clock's span */
    printf("     bucket: phase 1 %llu, phase 2 %llu, phase 3 %llu of at most %llu\n",
           (unsigned long long)s.taken[0], (unsigned long long)s.taken[1],
           (unsigned long long)s.taken[2], (unsigned long long)bound);
    CHECK_INT(atomic_load(&s.taken[0]), 50);
    CHECK_INT(atomic_load(&s.taken[1]), 50);
    CHECK(atomic_load(&s.taken[2]) <= bound);
    CHECK(atomic_load(&s.taken[2]) >= 50); /* a second after phase 2: full again */
    CHECK_INT(atomic_load(&s.refused), 0);
    CHECK_INT(rmr_bucket_limited(s.bucket),
              2 * (ROUNDS / 4) * THREADS - 100 + THREADS * ROUNDS - atomic_load(&s.taken[2]));
    rmr_bucket_free(s.bucket);
}

int main(void)
{
    test_policy_words();
    test_should();
    test_methods();
    test_backoff();
    test_retry_after();
    test_budget();
    test_bucket();
    test_registry();
    test_threads();
    return check_summary();
}
