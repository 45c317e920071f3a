/*
 * Unit test of filters/gray.c: the hash (XXH64 vectors), smooth weighted round robin (its order,
 * exact shares, the allowed mask), weighted rendezvous ranking (checked against the formula with
 * libm's log, shares within half a point of the weights, the fallback order, stability when
 * weights change and when they do not), selectors, the lane store (TTL and LRU on a fake clock,
 * resizing, the registry, four threads) and the traceparent, baggage and Cookie parsers on good,
 * malformed and random input. Every parser call gets a heap copy of exactly len bytes, so a read
 * past the end shows under AddressSanitizer. Prints one line per check; exits 1 when any fails.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "remora/gray.h"

#include "check.h"

static uint64_t hash_str(const char *s)
{
    return rmr_gray_hash64(s, strlen(s), 0);
}

static void test_hash(void)
{
    /* Vectors of the reference xxHash library (XXH64). */
    unsigned char b[100];
    for (int i = 0; i < 100; i++)
        b[i] = (unsigned char)i;
    CHECK(rmr_gray_hash64("", 0, 0) == 0xef46db3751d8e999ULL);
    CHECK(rmr_gray_hash64("a", 1, 0) == 0xd24ec4f1a98c6e5bULL);
    CHECK(rmr_gray_hash64("abc", 3, 0) == 0x44bc2cf5ad770999ULL);
    CHECK(rmr_gray_hash64("abc", 3, 1) == 0xbea9ca8199328908ULL);
    CHECK(rmr_gray_hash64("0123456789abcdef", 16, 7) == 0x8fbf8acb214d5da5ULL);
    CHECK(hash_str("Nobody inspects the spammish repetition") == 0xfbcea83c8a378bf1ULL);
    CHECK(rmr_gray_hash64(b, 100, 0x9e3779b97f4a7c15ULL) == 0x3b97d91eba03e785ULL);
}

/* ---- smooth weighted round robin ---- */

/* Picks n times; counts go to cnt (n_sub entries); returns 0, or -1 when a pick was -1. */
static int swrr_count(rmr_swrr_t *s, long n, long *cnt, size_t n_sub)
{
    memset(cnt, 0, n_sub * sizeof(*cnt));
    for (long i = 0; i < n; i++) {
        int p = rmr_swrr_pick(s);
        if (p < 0 || (size_t)p >= n_sub)
            return -1;
        cnt[p]++;
    }
    return 0;
}

/* Whether every count is within slack picks of n * w / total. */
static int shares_exact(const long *cnt, const uint32_t *w, size_t k, long n, double slack)
{
    double total = 0;
    for (size_t i = 0; i < k; i++)
        total += w[i];
    for (size_t i = 0; i < k; i++) {
        double want = (double)n * w[i] / total;
        if (fabs((double)cnt[i] - want) > slack) {
            printf("     subset %zu: %ld picks, want %.1f\n", i, cnt[i], want);
            return 0;
        }
    }
    return 1;
}

static void test_swrr(void)
{
    rmr_swrr_t s;
    char seq[8] = {0};

    /* nginx's example. */
    uint32_t w511[] = {5, 1, 1};
    CHECK_INT(rmr_swrr_init(&s, w511, 3), 0);
    for (int r = 0; r < 2; r++) {
        for (int i = 0; i < 7; i++)
            seq[i] = (char)('a' + rmr_swrr_pick(&s));
        CHECK_STR(seq, "aabacaa"); /* the cycle repeats */
    }

    static const struct {
        uint32_t w[4];
        size_t n;
    } sets[] = {
        {{90, 10}, 2},      {{95, 5}, 2},      {{50, 30, 20}, 3}, {{1, 0, 3}, 3},
        {{7, 13, 1000}, 3}, {{1, 1, 1, 1}, 4}, {{0, 0, 1}, 3},    {{3}, 1},
    };
    long cnt[4];
    for (size_t k = 0; k < sizeof(sets) / sizeof(sets[0]); k++) {
        CHECK_INT(rmr_swrr_init(&s, sets[k].w, sets[k].n), 0);
        CHECK_INT(swrr_count(&s, 100000, cnt, sets[k].n), 0);
        CHECK(shares_exact(cnt, sets[k].w, sets[k].n, 100000, 2));
    }
    /* Exact over each whole cycle, not just on average: 50/30/20 in every 100 picks. */
    uint32_t w532[] = {50, 30, 20};
    rmr_swrr_init(&s, w532, 3);
    int cycles_ok = 1;
    for (int c = 0; c < 1000; c++) {
        swrr_count(&s, 100, cnt, 3);
        cycles_ok &= cnt[0] == 50 && cnt[1] == 30 && cnt[2] == 20;
    }
    CHECK(cycles_ok);
    /* Smooth: 95/5 spreads the five picks of v2 over the cycle, no two within 10 picks. */
    uint32_t w955[] = {95, 5};
    rmr_swrr_init(&s, w955, 2);
    int last = -100, min_gap = 1000;
    for (int i = 0; i < 1000; i++)
        if (rmr_swrr_pick(&s) == 1) {
            if (i - last < min_gap)
                min_gap = i - last;
            last = i;
        }
    CHECK(min_gap >= 10);

    /* All zero, none, too many. */
    uint32_t zero[3] = {0, 0, 0};
    CHECK_INT(rmr_swrr_init(&s, zero, 3), 0);
    CHECK_INT(rmr_swrr_pick(&s), -1);
    CHECK_INT(rmr_swrr_init(&s, NULL, 0), 0);
    CHECK_INT(rmr_swrr_pick(&s), -1);
    uint32_t many[RMR_GRAY_SUBSETS_MAX + 1];
    for (int i = 0; i <= RMR_GRAY_SUBSETS_MAX; i++)
        many[i] = 1;
    CHECK_INT(rmr_swrr_init(&s, many, RMR_GRAY_SUBSETS_MAX + 1), -1);
    CHECK_INT(rmr_swrr_pick(&s), -1);
    CHECK_INT(rmr_swrr_init(&s, many, RMR_GRAY_SUBSETS_MAX), 0);
    long cnt32[RMR_GRAY_SUBSETS_MAX];
    CHECK_INT(swrr_count(&s, 32 * 1000, cnt32, RMR_GRAY_SUBSETS_MAX), 0);
    CHECK(shares_exact(cnt32, many, RMR_GRAY_SUBSETS_MAX, 32 * 1000, 0));

    /* The largest weights do not overflow. */
    uint32_t big[] = {UINT32_MAX, UINT32_MAX, 1};
    rmr_swrr_init(&s, big, 3);
    long c2 = 0, c0 = 0;
    for (int i = 0; i < 100000; i++) {
        int p = rmr_swrr_pick(&s);
        c2 += p == 2;
        c0 += p == 0;
    }
    CHECK_INT(c2, 0);
    CHECK_INT(c0, 50000);

    /* Among the allowed ones only: those share exactly, the others are not picked. */
    uint32_t w1234[] = {10, 20, 30, 40};
    rmr_swrr_init(&s, w1234, 4);
    long m[4] = {0};
    int outside = 0;
    for (int i = 0; i < 90000; i++) {
        int p = rmr_swrr_pick_among(&s, 0x0e); /* 1, 2, 3 */
        if (p < 1 || p > 3)
            outside++;
        else
            m[p]++;
    }
    CHECK_INT(outside, 0);
    CHECK(labs(m[1] - 20000) <= 2 && labs(m[2] - 30000) <= 2 && labs(m[3] - 40000) <= 2);
    CHECK_INT(rmr_swrr_pick_among(&s, 0), -1);
    uint32_t w0x[] = {0, 5};
    rmr_swrr_init(&s, w0x, 2);
    CHECK_INT(rmr_swrr_pick_among(&s, 1), -1); /* the allowed one weighs 0 */
    CHECK_INT(rmr_swrr_pick_among(&s, 3), 1);
    /* Masks changing at random: the picks still follow the weights of the allowed ones. */
    rmr_swrr_init(&s, w1234, 4);
    unsigned seed = 7;
    long got[4] = {0};
    double want[4] = {0};
    for (int i = 0; i < 200000; i++) {
        uint32_t mask = (uint32_t)(rand_r(&seed) % 15 + 1);
        double tot = 0;
        for (int j = 0; j < 4; j++)
            tot += mask >> j & 1 ? w1234[j] : 0;
        for (int j = 0; j < 4; j++)
            want[j] += mask >> j & 1 ? w1234[j] / tot : 0;
        int p = rmr_swrr_pick_among(&s, mask);
        if (p >= 0 && (mask >> p & 1))
            got[p]++;
    }
    int follow = 1;
    for (int j = 0; j < 4; j++)
        follow &= fabs(got[j] - want[j]) < 0.01 * 200000;
    CHECK(follow);
    CHECK_INT(got[0] + got[1] + got[2] + got[3], 200000);
}

/* ---- weighted rendezvous ---- */

enum { USERS = 100000 };

static int key_of(char *buf, size_t cap, int i)
{
    return snprintf(buf, cap, "user-%d", i);
}

/* The first subset of user i. */
static int first_of(int i, const uint64_t *ids, const uint32_t *w, size_t n)
{
    char k[32];
    uint8_t order[RMR_GRAY_SUBSETS_MAX];
    int len = key_of(k, sizeof(k), i);
    if (rmr_sticky_rank(k, (size_t)len, ids, w, n, order) < 1)
        return -1;
    return order[0];
}

/* Whether, over USERS keys, the first subset's shares are within 0.5 points of the weights. */
static int sticky_shares_ok(const uint64_t *ids, const uint32_t *w, size_t n)
{
    long cnt[RMR_GRAY_SUBSETS_MAX] = {0};
    double total = 0;
    for (size_t j = 0; j < n; j++)
        total += w[j];
    for (int i = 0; i < USERS; i++) {
        int f = first_of(i, ids, w, n);
        if (f < 0)
            return 0;
        cnt[f]++;
    }
    int ok = 1;
    for (size_t j = 0; j < n; j++) {
        double got = 100.0 * cnt[j] / USERS, want = 100.0 * w[j] / total;
        printf("     subset %zu: %.2f %%, weight %.2f %%\n", j, got, want);
        ok &= fabs(got - want) <= 0.5;
    }
    return ok;
}

/* The order by the documented formula, with libm's log. */
static void reference_rank(const char *key, size_t len, const uint64_t *ids, const uint32_t *w,
                           size_t n, uint8_t *order)
{
    double score[RMR_GRAY_SUBSETS_MAX];
    for (size_t i = 0; i < n; i++) {
        uint64_t h = rmr_gray_hash64(key, len, ids[i]);
        double u = ((double)(h >> 12) + 0.5) / 4503599627370496.0;
        score[i] = -log(u) / (w[i] ? w[i] : 1);
        order[i] = (uint8_t)i;
    }
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0; j--) {
            uint8_t a = order[j - 1], b = order[j];
            int za = !w[a], zb = !w[b];
            if (za < zb || (za == zb && score[a] <= score[b]))
                break;
            order[j - 1] = b;
            order[j] = a;
        }
}

static void test_sticky_basics(void)
{
    uint64_t ids[] = {hash_str("v1"), hash_str("v2"), hash_str("v3"), hash_str("v4")};
    uint32_t w[] = {50, 30, 0, 20};
    uint8_t order[RMR_GRAY_SUBSETS_MAX], again[RMR_GRAY_SUBSETS_MAX];

    CHECK_INT(rmr_sticky_rank("alice", 5, ids, w, 4, order), 3);
    CHECK_INT(order[3], 2); /* weight 0 last */
    CHECK(order[0] != order[1] && order[1] != order[2] && order[0] != order[2] && order[0] < 4 &&
          order[1] < 4 && order[2] < 4 && order[2] != 2);
    CHECK_INT(rmr_sticky_rank("alice", 5, ids, w, 4, again), 3);
    CHECK(!memcmp(order, again, 4));
    /* All zero: none leads, but every index is still written, once. */
    uint32_t zero[4] = {0};
    memset(order, 0xee, sizeof(order));
    CHECK_INT(rmr_sticky_rank("alice", 5, ids, zero, 4, order), 0);
    CHECK_INT(order[0] + order[1] + order[2] + order[3], 6);
    CHECK_INT(order[4], 0xee);
    /* Nothing, too many, the empty key. */
    CHECK_INT(rmr_sticky_rank("alice", 5, ids, w, 0, order), 0);
    uint64_t many_ids[RMR_GRAY_SUBSETS_MAX + 1];
    uint32_t many_w[RMR_GRAY_SUBSETS_MAX + 1];
    for (int i = 0; i <= RMR_GRAY_SUBSETS_MAX; i++) {
        many_ids[i] = (uint64_t)i;
        many_w[i] = 1;
    }
    memset(order, 0xee, sizeof(order));
    CHECK_INT(rmr_sticky_rank("k", 1, many_ids, many_w, RMR_GRAY_SUBSETS_MAX + 1, order), -1);
    CHECK_INT(order[0], 0xee);
    CHECK_INT(rmr_sticky_rank("k", 1, many_ids, many_w, RMR_GRAY_SUBSETS_MAX, order),
              RMR_GRAY_SUBSETS_MAX);
    uint32_t seen = 0;
    for (int i = 0; i < RMR_GRAY_SUBSETS_MAX; i++)
        seen |= 1u << (order[i] & 31);
    CHECK(seen == UINT32_MAX); /* all 32 indexes */
    CHECK_INT(rmr_sticky_rank(NULL, 0, ids, w, 4, order), 3);
    CHECK_INT(rmr_sticky_rank("", 0, ids, w, 4, again), 3);
    CHECK(!memcmp(order, again, 4));
    /* A key is its bytes: a NUL inside counts, the length decides. */
    int differ = 0;
    for (int i = 0; i < 200; i++) {
        char k[32];
        int n = key_of(k, sizeof(k), i);
        k[n] = '\0';
        rmr_sticky_rank(k, (size_t)n, ids, w, 4, order);
        rmr_sticky_rank(k, (size_t)n + 1, ids, w, 4, again);
        differ += memcmp(order, again, 4) != 0;
    }
    CHECK(differ > 50);

    /* The formula, as documented, with libm's log: the same order for every key. */
    uint32_t w2[] = {50, 30, 1, 20};
    int same = 1;
    for (int i = 0; i < USERS; i++) {
        char k[32];
        int n = key_of(k, sizeof(k), i);
        rmr_sticky_rank(k, (size_t)n, ids, w2, 4, order);
        reference_rank(k, (size_t)n, ids, w2, 4, again);
        if (memcmp(order, again, 4)) {
            printf("     %s: %d%d%d%d, reference %d%d%d%d\n", k, order[0], order[1], order[2],
                   order[3], again[0], again[1], again[2], again[3]);
            same = 0;
        }
    }
    CHECK(same);
    /* Equal ids score equally: ties go by index. */
    uint64_t twin[] = {42, 42};
    uint32_t w11[] = {1, 1};
    CHECK_INT(rmr_sticky_rank("bob", 3, twin, w11, 2, order), 2);
    CHECK(order[0] == 0 && order[1] == 1);
}

static void test_sticky_shares(void)
{
    uint64_t names[] = {hash_str("v1"), hash_str("v2"), hash_str("v3")};
    uint64_t index[] = {0, 1, 2};
    uint32_t w9010[] = {90, 10}, w955[] = {95, 5}, w532[] = {50, 30, 20};
    CHECK(sticky_shares_ok(names, w9010, 2));
    CHECK(sticky_shares_ok(names, w955, 2));
    CHECK(sticky_shares_ok(names, w532, 3));
    /* Config indexes as ids work too. */
    CHECK(sticky_shares_ok(index, w9010, 2));
    CHECK(sticky_shares_ok(index, w532, 3));
    /* Weights need not sum to 100, and a weight 0 in between takes nothing. */
    uint32_t w1_0_3[] = {1, 0, 3};
    CHECK(sticky_shares_ok(names, w1_0_3, 3));

    /* With v1 down the router takes the next: v2 and v3 share its users 30:20, and their own
     * users stay where they were. */
    long next[3] = {0};
    int own_kept = 1;
    for (int i = 0; i < USERS; i++) {
        char k[32];
        uint8_t order[3];
        int n = key_of(k, sizeof(k), i);
        rmr_sticky_rank(k, (size_t)n, names, w532, 3, order);
        int healthy = order[0] != 0 ? order[0] : order[1];
        next[healthy]++;
        own_kept &= order[0] == 0 || healthy == order[0];
    }
    CHECK(own_kept);
    CHECK_INT(next[0], 0);
    printf("     v1 down: v2 %.2f %%, v3 %.2f %%\n", 100.0 * next[1] / USERS,
           100.0 * next[2] / USERS);
    CHECK(fabs(100.0 * next[1] / USERS - 60) <= 0.5);
    CHECK(fabs(100.0 * next[2] / USERS - 40) <= 0.5);

    /* The whole order is a fair draw: with four equal weights, each of the 24 orders comes up
     * about as often (expected 4167, deviation about 63). */
    uint64_t ids4[] = {hash_str("a"), hash_str("b"), hash_str("c"), hash_str("d")};
    uint32_t w4[] = {1, 1, 1, 1};
    long perm[256] = {0};
    for (int i = 0; i < USERS; i++) {
        char k[32];
        uint8_t o[4];
        int n = key_of(k, sizeof(k), i);
        rmr_sticky_rank(k, (size_t)n, ids4, w4, 4, o);
        perm[o[0] << 6 | o[1] << 4 | o[2] << 2 | o[3]]++;
    }
    int kinds = 0, fair = 1;
    for (int p = 0; p < 256; p++)
        if (perm[p]) {
            kinds++;
            fair &= fabs(perm[p] - USERS / 24.0) < 0.08 * USERS / 24.0;
        }
    CHECK_INT(kinds, 24);
    CHECK(fair);
}

static void test_sticky_stable(void)
{
    enum { N = 10000 };
    uint64_t ids[] = {hash_str("v1"), hash_str("v2"), hash_str("v3")};
    static signed char before[N];

    /* 95/5 then 90/10: every user of v2 stays on v2; about 5 % of all users join it. */
    uint32_t w955[] = {95, 5}, w9010[] = {90, 10};
    long on_v2 = 0, moved = 0, left_v2 = 0, same = 1;
    for (int i = 0; i < N; i++) {
        before[i] = (signed char)first_of(i, ids, w955, 2);
        on_v2 += before[i] == 1;
    }
    for (int i = 0; i < N; i++) {
        int now = first_of(i, ids, w9010, 2);
        left_v2 += before[i] == 1 && now != 1;
        moved += before[i] == 0 && now == 1;
    }
    for (int i = 0; i < N; i++)
        same &= first_of(i, ids, w955, 2) == before[i];
    printf("     95/5: %ld on v2; 90/10: %ld joined, %ld left\n", on_v2, moved, left_v2);
    CHECK_INT(left_v2, 0);
    CHECK(labs(on_v2 - N / 20) < N / 100);
    CHECK(labs(moved - N / 20) < N / 100);
    CHECK(same); /* unchanged weights: nobody moves */

    /* Three subsets: raising v3 only moves users onto v3; lowering v2 only moves users off v2. */
    uint32_t w532[] = {50, 30, 20}, w534[] = {50, 30, 40}, w512[] = {50, 10, 20};
    long wrong_raise = 0, onto_v3 = 0, wrong_lower = 0, off_v2 = 0;
    for (int i = 0; i < N; i++)
        before[i] = (signed char)first_of(i, ids, w532, 3);
    for (int i = 0; i < N; i++) {
        int up = first_of(i, ids, w534, 3), down = first_of(i, ids, w512, 3);
        if (up != before[i]) {
            onto_v3++;
            wrong_raise += up != 2;
        }
        if (down != before[i]) {
            off_v2++;
            wrong_lower += before[i] != 1;
        }
    }
    printf("     50/30/20 -> 50/30/40: %ld moved; -> 50/10/20: %ld moved\n", onto_v3, off_v2);
    CHECK_INT(wrong_raise, 0);
    CHECK_INT(wrong_lower, 0);
    /* v3 goes from 20 % to 33.3 %, v2 from 30 % to 12.5 %. */
    CHECK(labs(onto_v3 - 1333) < 150);
    CHECK(labs(off_v2 - 1750) < 150);
    /* Adding a subset at weight 0 moves nobody. */
    uint64_t ids4[] = {ids[0], ids[1], ids[2], hash_str("v4")};
    uint32_t w5320[] = {50, 30, 20, 0};
    long moved0 = 0;
    for (int i = 0; i < N; i++)
        moved0 += first_of(i, ids4, w5320, 4) != before[i];
    CHECK_INT(moved0, 0);
}

/* ---- selectors ---- */

static void test_selector(void)
{
    rmr_label_t labels[] = {{"version", "v2"}, {"zone", "a"}, {"track", "canary"}};
    rmr_label_t s_v2[] = {{"version", "v2"}};
    rmr_label_t s_v1[] = {{"version", "v1"}};
    rmr_label_t s_both[] = {{"track", "canary"}, {"version", "v2"}};
    rmr_label_t s_miss[] = {{"version", "v2"}, {"zone", "b"}};
    rmr_label_t s_case[] = {{"Version", "v2"}};
    rmr_label_t s_prefix[] = {{"version", "v"}};
    rmr_label_t s_swap[] = {{"v2", "version"}};
    rmr_label_t s_dup[] = {{"version", "v2"}, {"version", "v1"}};
    CHECK_INT(rmr_selector_match(NULL, 0, labels, 3), 1);
    CHECK_INT(rmr_selector_match(NULL, 0, NULL, 0), 1);
    CHECK_INT(rmr_selector_match(s_v2, 1, labels, 3), 1);
    CHECK_INT(rmr_selector_match(s_v1, 1, labels, 3), 0);
    CHECK_INT(rmr_selector_match(s_both, 2, labels, 3), 1);
    CHECK_INT(rmr_selector_match(s_miss, 2, labels, 3), 0);
    CHECK_INT(rmr_selector_match(s_case, 1, labels, 3), 0);
    CHECK_INT(rmr_selector_match(s_prefix, 1, labels, 3), 0);
    CHECK_INT(rmr_selector_match(s_swap, 1, labels, 3), 0);
    CHECK_INT(rmr_selector_match(s_dup, 2, labels, 3), 0);
    CHECK_INT(rmr_selector_match(s_v2, 1, NULL, 0), 0);
    CHECK_INT(rmr_selector_match(s_v2, 1, labels, 1), 1);
    CHECK_INT(rmr_selector_match(s_both, 2, labels, 2), 0); /* track is the third label */
    rmr_label_t empty_val[] = {{"version", ""}};
    rmr_label_t l_empty[] = {{"version", ""}};
    CHECK_INT(rmr_selector_match(empty_val, 1, labels, 3), 0);
    CHECK_INT(rmr_selector_match(empty_val, 1, l_empty, 1), 1);
}

/* ---- lanes ---- */

static void tid(uint8_t id[16], uint64_t a)
{
    memset(id, 0, 16);
    for (int i = 0; i < 8; i++)
        id[8 + i] = (uint8_t)(a >> (8 * i));
    id[0] = 0x4b; /* never all zero */
}

static int put(rmr_lanes_t *s, uint64_t t, const char *lane, uint64_t now)
{
    uint8_t id[16];
    tid(id, t);
    return rmr_lanes_put(s, id, lane, strlen(lane), now);
}

static char got[RMR_LANE_MAX + 1];

/* The lane of trace t (in got), or "-" when there is none. */
static const char *get(rmr_lanes_t *s, uint64_t t, uint64_t now)
{
    uint8_t id[16];
    tid(id, t);
    memset(got, 'X', sizeof(got));
    int n = rmr_lanes_get(s, id, got, sizeof(got), now);
    if (n < 0)
        return "-";
    if ((size_t)n != strlen(got))
        return "(length wrong)";
    return got;
}

static rmr_lanes_stats_t lstats(rmr_lanes_t *s)
{
    rmr_lanes_stats_t st;
    rmr_lanes_get_stats(s, &st);
    return st;
}

static void test_lanes_basic(void)
{
    rmr_lanes_t *s = rmr_lanes_new(100, 60000);
    CHECK(s != NULL);
    CHECK_INT(put(s, 1, "feature-x", 0), 0);
    CHECK_STR(get(s, 1, 1), "feature-x");
    CHECK_STR(get(s, 2, 1), "-");
    CHECK_INT(put(s, 1, "feature-y", 2), 0); /* replaces */
    CHECK_STR(get(s, 1, 3), "feature-y");
    CHECK_INT(lstats(s).entries, 1);

    /* Lane lengths: 1 to 64. */
    char lane[RMR_LANE_MAX + 2];
    memset(lane, 'l', sizeof(lane));
    lane[RMR_LANE_MAX] = '\0';
    CHECK_INT(put(s, 3, lane, 4), 0);
    CHECK_STR(get(s, 3, 5), lane);
    lane[RMR_LANE_MAX] = 'l';
    lane[RMR_LANE_MAX + 1] = '\0';
    CHECK_INT(put(s, 4, lane, 6), -1);
    CHECK_STR(get(s, 4, 7), "-");
    CHECK_INT(put(s, 3, lane, 6), -1);
    CHECK_INT(strlen(get(s, 3, 7)), RMR_LANE_MAX); /* the refused put changed nothing */
    CHECK_INT(put(s, 5, "", 8), -1);
    uint8_t id[16];
    tid(id, 6);
    CHECK_INT(rmr_lanes_put(s, id, "a\0b", 3, 8), 0); /* bytes, not a C string */
    char out[8];
    CHECK_INT(rmr_lanes_get(s, id, out, sizeof(out), 9), 3);
    CHECK(!memcmp(out, "a\0b", 4));

    /* out must hold lane and NUL. */
    char wide[16];
    tid(id, 1);
    CHECK_INT(rmr_lanes_get(s, id, wide, 10, 10), 9);
    CHECK_STR(wide, "feature-y");
    memset(wide, 'X', sizeof(wide));
    CHECK_INT(rmr_lanes_get(s, id, wide, 9, 10), -1);
    CHECK_INT(wide[0], 'X');
    CHECK_INT(rmr_lanes_get(s, id, wide, 0, 10), -1);

    /* Ids differing in one byte are different traces. */
    uint8_t a[16], b[16];
    tid(a, 7);
    memcpy(b, a, 16);
    b[15] ^= 1;
    CHECK_INT(rmr_lanes_put(s, a, "A", 1, 11), 0);
    CHECK_INT(rmr_lanes_put(s, b, "B", 1, 11), 0);
    CHECK_INT(rmr_lanes_get(s, a, out, sizeof(out), 12), 1);
    CHECK_STR(out, "A");
    CHECK_INT(rmr_lanes_get(s, b, out, sizeof(out), 12), 1);
    CHECK_STR(out, "B");

    rmr_lanes_stats_t st = lstats(s);
    CHECK_INT(st.entries, 5);
    CHECK_INT(st.puts, 6);
    CHECK_INT(st.hits, 8);
    CHECK_INT(st.misses, 4);
    CHECK_INT(st.evictions, 0);
    CHECK_INT(st.expired, 0);
    rmr_lanes_free(s);
    rmr_lanes_free(NULL);

    /* max_entries 0 holds nothing; too many is refused. */
    s = rmr_lanes_new(0, 1000);
    CHECK(s != NULL);
    if (s) {
        CHECK_INT(put(s, 1, "x", 0), -1);
        CHECK_STR(get(s, 1, 0), "-");
        st = lstats(s);
        CHECK_INT(st.entries, 0);
        CHECK_INT(st.puts, 0);
        CHECK_INT(st.misses, 1);
        rmr_lanes_free(s);
    }
    CHECK(rmr_lanes_new((size_t)RMR_LANES_ENTRIES_MAX + 1, 1000) == NULL);
}

static void test_lanes_ttl(void)
{
    rmr_lanes_t *s = rmr_lanes_new(100, 100);
    put(s, 1, "one", 1000);
    CHECK_STR(get(s, 1, 1099), "one"); /* age 99; the ttl restarts */
    CHECK_STR(get(s, 1, 1198), "one"); /* age 99 again */
    CHECK_STR(get(s, 1, 1298), "-");   /* age 100: gone */
    rmr_lanes_stats_t st = lstats(s);
    CHECK_INT(st.expired, 1);
    CHECK_INT(st.entries, 0);
    CHECK_INT(st.misses, 1);

    /* A put restarts the ttl too. */
    put(s, 2, "two", 2000);
    put(s, 2, "two", 2090);
    CHECK_STR(get(s, 2, 2150), "two");
    /* A clock behind the entry's time counts as age 0, and does not move its time back. */
    CHECK_STR(get(s, 2, 100), "two");
    CHECK_STR(get(s, 2, 2249), "two");
    CHECK_INT(lstats(s).expired, 1);

    /* Each call drops up to four expired entries from the old end, found or not. */
    for (uint64_t t = 10; t < 20; t++)
        put(s, t, "old", 3000); /* the first drops trace 2 */
    st = lstats(s);
    CHECK_INT(st.expired, 2);
    CHECK_INT(st.entries, 10);
    put(s, 99, "new", 3050);
    CHECK_INT(lstats(s).entries, 11);
    CHECK_STR(get(s, 99, 3120), "new"); /* the ten are past their ttl now: four go */
    st = lstats(s);
    CHECK_INT(st.entries, 7);
    CHECK_INT(st.expired, 6);
    put(s, 98, "new", 3121); /* four more go */
    CHECK_INT(lstats(s).entries, 4);
    CHECK_STR(get(s, 15, 3122), "-"); /* the last two go, 99 stays */
    CHECK_STR(get(s, 19, 3122), "-");
    st = lstats(s);
    CHECK_INT(st.entries, 2);
    CHECK_INT(st.expired, 12);

    /* An expired entry beyond the sweep's reach is dropped when found. */
    put(s, 50, "a", 4000);
    for (uint64_t t = 51; t < 60; t++)
        put(s, t, "b", 4001);
    uint64_t before = lstats(s).expired;
    CHECK_STR(get(s, 59, 4200), "-"); /* four swept, then 59 itself */
    st = lstats(s);
    CHECK_INT(st.expired - before, 5);
    CHECK_INT(st.entries, 5);
    CHECK_STR(get(s, 50, 4200), "-"); /* 50 was among the four */
    CHECK_INT(lstats(s).expired - before, 9);

    /* A shorter ttl on reconfigure applies to what is held. */
    CHECK_INT(rmr_lanes_configure(s, 100, 10), 0);
    put(s, 99, "new", 5000);
    put(s, 98, "new", 5001);
    CHECK_STR(get(s, 99, 5005), "new");
    CHECK_STR(get(s, 98, 5011), "-");
    CHECK_STR(get(s, 99, 5014), "new");
    rmr_lanes_free(s);

    /* ttl 0: nothing is remembered. */
    s = rmr_lanes_new(10, 0);
    CHECK_INT(put(s, 1, "x", 5), 0);
    CHECK_STR(get(s, 1, 5), "-");
    CHECK_INT(lstats(s).expired, 1);
    rmr_lanes_free(s);
}

static void test_lanes_lru(void)
{
    rmr_lanes_t *s = rmr_lanes_new(3, 1000000);
    put(s, 1, "a", 1);
    put(s, 2, "b", 2);
    put(s, 3, "c", 3);
    CHECK_STR(get(s, 1, 4), "a"); /* recency: b c a */
    put(s, 4, "d", 5);            /* evicts b */
    CHECK_STR(get(s, 2, 6), "-");
    CHECK_STR(get(s, 3, 6), "c"); /* a d c */
    CHECK_STR(get(s, 1, 6), "a"); /* d c a */
    CHECK_STR(get(s, 4, 6), "d"); /* c a d */
    put(s, 3, "c2", 7);           /* a d c */
    put(s, 5, "e", 8);            /* evicts a */
    CHECK_STR(get(s, 1, 9), "-");
    CHECK_STR(get(s, 3, 9), "c2");
    rmr_lanes_stats_t st = lstats(s);
    CHECK_INT(st.evictions, 2);
    CHECK_INT(st.entries, 3);
    CHECK_INT(st.expired, 0);
    rmr_lanes_free(s);

    /* Expired entries make room before anything is evicted. */
    s = rmr_lanes_new(2, 100);
    put(s, 1, "a", 0);
    put(s, 2, "b", 10);
    put(s, 3, "c", 100); /* 1 expired */
    st = lstats(s);
    CHECK_INT(st.evictions, 0);
    CHECK_INT(st.expired, 1);
    CHECK_INT(st.entries, 2);
    put(s, 4, "d", 105); /* 2 is 95 ms old: evicted */
    st = lstats(s);
    CHECK_INT(st.evictions, 1);
    CHECK_INT(st.expired, 1);
    CHECK_STR(get(s, 2, 105), "-");
    CHECK_STR(get(s, 3, 105), "c");
    rmr_lanes_free(s);

    /* Many traces through a small store: the most recent ones stay. */
    enum { CAP = 1000, N = 20000 };
    s = rmr_lanes_new(CAP, 1000000);
    char lane[16];
    for (int i = 0; i < N; i++) {
        snprintf(lane, sizeof(lane), "l%d", i);
        put(s, (uint64_t)i * 0x9e3779b97f4a7c15ULL, lane, (uint64_t)i);
    }
    int recent_ok = 1, old_gone = 1;
    for (int i = N - CAP; i < N; i++) {
        snprintf(lane, sizeof(lane), "l%d", i);
        recent_ok &= !strcmp(get(s, (uint64_t)i * 0x9e3779b97f4a7c15ULL, N), lane);
    }
    for (int i = 0; i < N - CAP; i++)
        old_gone &= !strcmp(get(s, (uint64_t)i * 0x9e3779b97f4a7c15ULL, N), "-");
    CHECK(recent_ok);
    CHECK(old_gone);
    st = lstats(s);
    CHECK_INT(st.entries, CAP);
    CHECK_INT(st.evictions, N - CAP);
    CHECK_INT(st.puts, N);
    CHECK_INT(st.hits, CAP);
    CHECK_INT(st.misses, N - CAP);
    rmr_lanes_free(s);
}

static void test_lanes_resize(void)
{
    rmr_lanes_t *s = rmr_lanes_new(10, 1000);
    char lane[16];
    for (int i = 0; i < 10; i++) {
        snprintf(lane, sizeof(lane), "l%d", i);
        put(s, (uint64_t)i, lane, (uint64_t)i);
    }
    CHECK_STR(get(s, 0, 10), "l0"); /* recency: 1 2 ... 9 0 */
    /* Shrink to 4: 7 8 9 0 stay. */
    CHECK_INT(rmr_lanes_configure(s, 4, 1000), 0);
    rmr_lanes_stats_t st = lstats(s);
    CHECK_INT(st.entries, 4);
    CHECK_INT(st.evictions, 6);
    CHECK_STR(get(s, 1, 11), "-");
    CHECK_STR(get(s, 6, 11), "-");
    CHECK_STR(get(s, 7, 11), "l7"); /* 8 9 0 7 */
    CHECK_STR(get(s, 0, 11), "l0"); /* 8 9 7 0 */
    CHECK_STR(get(s, 9, 11), "l9"); /* 8 7 0 9 */
    put(s, 20, "l20", 12);          /* evicts 8, the oldest after the move */
    CHECK_STR(get(s, 8, 13), "-");
    CHECK_STR(get(s, 7, 13), "l7");
    /* Grow: all stay, there is room for more, and the order is kept. */
    CHECK_INT(rmr_lanes_configure(s, 6, 1000), 0);
    CHECK_INT(lstats(s).entries, 4);
    put(s, 21, "l21", 14);
    put(s, 22, "l22", 14);
    CHECK_INT(lstats(s).entries, 6);
    put(s, 23, "l23", 15); /* evicts 0, the oldest: 0 9 20 7 21 22 */
    CHECK_STR(get(s, 0, 16), "-");
    CHECK_STR(get(s, 9, 16), "l9");
    /* Expired entries are not carried over: they count as expired. At 16, only 9 is younger
     * than 1 ms. */
    uint64_t before = lstats(s).expired;
    CHECK_INT(rmr_lanes_configure(s, 8, 1), 0);
    st = lstats(s);
    CHECK_INT(st.entries, 1);
    CHECK_INT(st.expired - before, 5);
    /* Same size: only the ttl changes. */
    put(s, 30, "l30", 100);
    CHECK_INT(rmr_lanes_configure(s, 8, 1000), 0);
    CHECK_STR(get(s, 30, 500), "l30");
    /* Down to zero, and back. */
    CHECK_INT(rmr_lanes_configure(s, 0, 1000), 0);
    CHECK_INT(lstats(s).entries, 0);
    CHECK_INT(put(s, 31, "x", 600), -1);
    CHECK_INT(rmr_lanes_configure(s, 2, 1000), 0);
    CHECK_INT(put(s, 31, "x", 600), 0);
    CHECK_STR(get(s, 31, 601), "x");
    /* Too large: refused, the ttl still changes. */
    CHECK_INT(rmr_lanes_configure(s, (size_t)RMR_LANES_ENTRIES_MAX + 1, 5), -1);
    CHECK_STR(get(s, 31, 605), "x");
    CHECK_STR(get(s, 31, 611), "-");
    rmr_lanes_free(s);
}

static void test_lanes_registry(void)
{
    rmr_lanes_t *a = rmr_lanes_get_store("mesh", 10, 1000);
    CHECK(a != NULL);
    put(a, 1, "kept", 0);
    /* A reload: same store, new limits, lanes kept. */
    rmr_lanes_t *b = rmr_lanes_get_store("mesh", 20, 2000);
    CHECK(a == b);
    CHECK_STR(get(b, 1, 1500), "kept");
    rmr_lanes_t *c = rmr_lanes_get_store("other", 10, 1000);
    CHECK(c != NULL && c != a);
    CHECK_STR(get(c, 1, 1), "-");
    CHECK(rmr_lanes_get_store(NULL, 10, 1000) == NULL);
    CHECK(rmr_lanes_get_store("huge", (size_t)RMR_LANES_ENTRIES_MAX + 1, 1000) == NULL);
    /* A failed resize keeps the store and its size. */
    CHECK(rmr_lanes_get_store("mesh", (size_t)RMR_LANES_ENTRIES_MAX + 1, 1000) == a);
    CHECK_STR(get(a, 1, 1501), "kept");
    rmr_lanes_free_all();
    rmr_lanes_t *d = rmr_lanes_get_store("mesh", 10, 1000);
    CHECK(d != NULL);
    CHECK_STR(get(d, 1, 1502), "-"); /* a new store after free_all */
    rmr_lanes_free_all();
}

/*
 * Four threads on 4096 traces with room for 1024: each put stores "lane-<trace>", so every lane
 * a get returns must name the trace it was asked for. The clock is one shared counter and the
 * ttl far away, so nothing expires; every put stores, and every get is a hit or a miss.
 */
enum { MT_THREADS = 4, MT_TRACES = 4096, MT_ROOM = 1024, MT_ITERS = 100000 };
static rmr_lanes_t *mt_store;
static _Atomic long mt_puts, mt_gets, mt_hits, mt_bad, mt_clock;

static void *mt_worker(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg * 2654435761u + 99u;
    char want[32], out[RMR_LANE_MAX + 1];
    uint8_t id[16];
    for (int i = 0; i < MT_ITERS; i++) {
        int k = rand_r(&seed) % MT_TRACES;
        tid(id, (uint64_t)k);
        int wl = snprintf(want, sizeof(want), "lane-%d", k);
        uint64_t now = (uint64_t)atomic_fetch_add(&mt_clock, 1);
        if (rand_r(&seed) % 2) {
            if (rmr_lanes_put(mt_store, id, want, (size_t)wl, now) == 0)
                atomic_fetch_add(&mt_puts, 1);
            else
                atomic_fetch_add(&mt_bad, 1);
        } else {
            atomic_fetch_add(&mt_gets, 1);
            int n = rmr_lanes_get(mt_store, id, out, sizeof(out), now);
            if (n >= 0) {
                atomic_fetch_add(&mt_hits, 1);
                if (n != wl || strcmp(out, want))
                    atomic_fetch_add(&mt_bad, 1);
            }
        }
        if (i % 20000 == 0) {
            rmr_lanes_stats_t st;
            rmr_lanes_get_stats(mt_store, &st);
            if (st.entries > MT_ROOM)
                atomic_fetch_add(&mt_bad, 1);
        }
    }
    return NULL;
}

static void test_lanes_threads(void)
{
    mt_store = rmr_lanes_new(MT_ROOM, 1000000000);
    pthread_t t[MT_THREADS];
    for (uintptr_t i = 0; i < MT_THREADS; i++)
        pthread_create(&t[i], NULL, mt_worker, (void *)i);
    for (int i = 0; i < MT_THREADS; i++)
        pthread_join(t[i], NULL);
    rmr_lanes_stats_t st = lstats(mt_store);
    printf("     %ld puts, %ld gets, %ld hits; %llu evictions\n", (long)mt_puts, (long)mt_gets,
           (long)mt_hits, (unsigned long long)st.evictions);
    CHECK_INT(mt_bad, 0);
    CHECK_INT(mt_puts + mt_gets, MT_THREADS * MT_ITERS);
    CHECK_INT(st.puts, mt_puts);
    CHECK_INT(st.hits, mt_hits);
    CHECK_INT(st.misses, mt_gets - mt_hits);
    CHECK_INT(st.entries, MT_ROOM);
    CHECK(st.evictions > 0);
    CHECK(mt_hits > 0 && mt_hits < mt_gets);
    CHECK_INT(st.expired, 0);
    /* Afterwards: exactly the entries held answer, each with its own lane. */
    long held = 0;
    int right = 1;
    for (int k = 0; k < MT_TRACES; k++) {
        char want[32];
        snprintf(want, sizeof(want), "lane-%d", k);
        const char *g = get(mt_store, (uint64_t)k, (uint64_t)mt_clock);
        if (strcmp(g, "-")) {
            held++;
            right &= !strcmp(g, want);
        }
    }
    CHECK_INT(held, MT_ROOM);
    CHECK(right);
    rmr_lanes_free(mt_store);
}

/* ---- header values ---- */

/* A heap copy of exactly the bytes of s (n of them), so that reading past them is caught. */
static char *exact(const char *s, size_t n)
{
    char *p = malloc(n ? n : 1);
    if (n)
        memcpy(p, s, n);
    return p;
}

static int tp_parse(const char *s, rmr_traceparent_t *out)
{
    size_t n = strlen(s);
    char *p = exact(s, n);
    int rc = rmr_traceparent_parse(p, n, out);
    free(p);
    return rc;
}

static void test_traceparent(void)
{
    static const char good[] = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    static const uint8_t trace[16] = {0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6,
                                      0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36};
    static const uint8_t parent[8] = {0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7};
    rmr_traceparent_t tp;
    CHECK_INT(strlen(good), 55);
    CHECK_INT(tp_parse(good, &tp), 0);
    CHECK_INT(tp.version, 0);
    CHECK(!memcmp(tp.trace_id, trace, 16));
    CHECK(!memcmp(tp.parent_id, parent, 8));
    CHECK_INT(tp.flags, 1);
    CHECK_INT(tp_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", &tp), 0);
    CHECK_INT(tp.flags, 0);
    CHECK_INT(tp_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe", &tp), 0);
    CHECK_INT(tp.flags, 0xfe);
    CHECK_INT(tp_parse("00-00000000000000000000000000000001-0000000000000001-09", &tp), 0);
    /* Later versions: 55 bytes, or more after a '-'. */
    CHECK_INT(tp_parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", &tp), 0);
    CHECK_INT(tp.version, 1);
    CHECK_INT(tp_parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever", &tp),
              0);
    CHECK_INT(tp.version, 0xcc);
    CHECK(!memcmp(tp.trace_id, trace, 16));
    CHECK_INT(tp_parse("fe-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", &tp), 0);

    static const char *bad[] = {
        "",
        "00",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",    /* 54 bytes */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",  /* version 00, longer */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",  /* version 00, longer */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",  /* trailing space */
        " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  /* leading space */
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",  /* later version, no '-' */
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.a", /* later version, no '-' */
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   /* version ff */
        "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   /* not hex */
        "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   /* upper case */
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",   /* upper case */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",   /* upper case */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",   /* upper case */
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",   /* zero trace id */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",   /* zero parent id */
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",   /* separators */
        "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01", /* dash moved */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-701",
        "0-04bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e47-6-00f067aa0ba902b7-01", /* '-' inside an id */
        "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-x1",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        printf("     traceparent [%s]\n", bad[i]);
        CHECK_INT(tp_parse(bad[i], &tp), -1);
    }
    /* Every prefix of a good value is refused; a NUL inside is not hex. */
    int prefixes_refused = 1;
    for (size_t n = 0; n < 55; n++) {
        char *p = exact(good, n);
        prefixes_refused &= rmr_traceparent_parse(p, n, &tp) == -1;
        free(p);
    }
    CHECK(prefixes_refused);
    char nul[55];
    memcpy(nul, good, 55);
    nul[10] = '\0';
    CHECK_INT(rmr_traceparent_parse(nul, 55, &tp), -1);
}

/* The value of key in baggage s, or "-" when rmr_baggage_lane returns -1. */
static const char *bag(const char *s, const char *key)
{
    static char buf[256];
    size_t n = strlen(s), vlen = 0;
    const char *val = NULL;
    char *p = exact(s, n);
    int rc = rmr_baggage_lane(p, n, key, &val, &vlen);
    if (rc == 0 && val >= p && val + vlen <= p + n && vlen < sizeof(buf)) {
        memcpy(buf, val, vlen);
        buf[vlen] = '\0';
    } else {
        snprintf(buf, sizeof(buf), rc == 0 ? "(outside)" : "-");
    }
    free(p);
    return buf;
}

static void test_baggage(void)
{
    CHECK_STR(bag("lane=feature-x", "lane"), "feature-x");
    CHECK_STR(bag("userId=alice,lane=feature-x", "lane"), "feature-x");
    CHECK_STR(bag("lane=feature-x,userId=alice", "lane"), "feature-x");
    CHECK_STR(bag("  userId = alice ,\tlane = feature-x ; prop1 ; p2=v2 , z=1  ", "lane"),
              "feature-x");
    CHECK_STR(bag("lane=a;ttl=30;secret,x=y", "lane"), "a");
    CHECK_STR(bag("lane=f%20x", "lane"), "f%20x"); /* percent-encoding left as is */
    CHECK_STR(bag("lane=a=b", "lane"), "a=b");     /* '=' is a baggage-octet */
    CHECK_STR(bag("lane=1,lane=2", "lane"), "1");  /* the first wins */
    CHECK_STR(bag("Lane=x,lane=y", "lane"), "y");  /* keys are case-sensitive */
    CHECK_STR(bag("lanes=x,xlane=y", "lane"), "-");
    CHECK_STR(bag("userId=alice", "lane"), "-");
    CHECK_STR(bag("k=v;lane=x", "lane"), "-"); /* a property is not a member */
    CHECK_STR(bag("lane=", "lane"), "-");      /* empty */
    CHECK_STR(bag("lane= ;p", "lane"), "-");
    CHECK_STR(bag("a=,lane=x", "lane"), "x"); /* another member's empty value is fine */
    CHECK_STR(bag("lane=x,a=", "lane"), "x");
    CHECK_STR(bag("a=1,b=2;p=,lane=z", "lane"), "z");

    static const char *bad[] = {
        "",
        " ",
        "lane",
        "lane x",
        "=x",
        "lane=x,",
        ",lane=x",
        "lane=x,,a=b",
        "lane=x y",
        "lane=\"x\"",
        "lane=x\\y",
        "lane=x;",
        "lane=x;=v",
        "lane=x;p=v v",
        "la ne=x",
        "la(ne=x",
        "lane=x\x01",
        "lane=caf\xc3\xa9",
        "a=b c,lane=x", /* one bad member spoils all */
        "a=b,lane=x,@=y",
        "lane=x;p=\"q\"",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        printf("     baggage [%s]\n", bad[i]);
        CHECK_STR(bag(bad[i], "lane"), "-");
    }
    /* 180 members at most. */
    char big[180 * 8 + 32];
    size_t n = 0;
    for (int i = 0; i < 179; i++)
        n += (size_t)snprintf(big + n, sizeof(big) - n, "k%d=v,", i);
    snprintf(big + n, sizeof(big) - n, "lane=x");
    CHECK_STR(bag(big, "lane"), "x");
    snprintf(big + n, sizeof(big) - n, "k=v,lane=x");
    CHECK_STR(bag(big, "lane"), "-");
    /* A NUL is not a baggage-octet; only len bytes are read. */
    const char *val;
    size_t vlen;
    CHECK_INT(rmr_baggage_lane("lane=x\0y", 8, "lane", &val, &vlen), -1);
    CHECK_INT(rmr_baggage_lane("lane=xyz", 6, "lane", &val, &vlen), 0);
    CHECK_INT(vlen, 1);
}

/* The value of cookie name in s, or "-" when rmr_cookie_get returns -1. */
static const char *cookie(const char *s, const char *name)
{
    static char buf[256];
    size_t n = strlen(s), vlen = 0;
    const char *val = NULL;
    char *p = exact(s, n);
    int rc = rmr_cookie_get(p, n, name, &val, &vlen);
    if (rc == 0 && val >= p && val + vlen <= p + n && vlen < sizeof(buf)) {
        memcpy(buf, val, vlen);
        buf[vlen] = '\0';
    } else {
        snprintf(buf, sizeof(buf), rc == 0 ? "(outside)" : "-");
    }
    free(p);
    return buf;
}

static void test_cookie(void)
{
    CHECK_STR(cookie("uid=42", "uid"), "42");
    CHECK_STR(cookie("a=b; uid=42; c=d", "uid"), "42");
    CHECK_STR(cookie("a=b;uid=42", "uid"), "42");
    CHECK_STR(cookie("  uid = 42 ;x=y", "uid"), "42");
    CHECK_STR(cookie("uid=\"quoted\"", "uid"), "quoted");
    CHECK_STR(cookie("uid=a=b", "uid"), "a=b");
    CHECK_STR(cookie("uid=1; uid=2", "uid"), "1");
    CHECK_STR(cookie("UID=1; uid=2", "uid"), "2");
    CHECK_STR(cookie("xuid=1; uidx=2", "uid"), "-");
    CHECK_STR(cookie("junk; weird stuff, \"here\"; uid=7", "uid"), "7"); /* others skipped */
    CHECK_STR(cookie("a=b c; uid=7", "uid"), "7");
    CHECK_STR(cookie("uid=7;", "uid"), "7");
    CHECK_STR(cookie("; ;uid=7", "uid"), "7");
    CHECK_STR(cookie("a=\x01; uid=7", "uid"), "7");
    CHECK_STR(cookie("", "uid"), "-");
    CHECK_STR(cookie("uid", "uid"), "-");
    CHECK_STR(cookie("uid=", "uid"), "-");
    CHECK_STR(cookie("uid=\"\"", "uid"), "-");
    CHECK_STR(cookie("uid=\"", "uid"), "-");
    CHECK_STR(cookie("uid=\"abc", "uid"), "-");
    CHECK_STR(cookie("uid=abc\"", "uid"), "-");
    CHECK_STR(cookie("uid=\"a\"b\"", "uid"), "-");
    CHECK_STR(cookie("uid=a b", "uid"), "-");
    CHECK_STR(cookie("uid=a,b", "uid"), "-");
    CHECK_STR(cookie("uid=a\\b", "uid"), "-");
    CHECK_STR(cookie("uid=caf\xc3\xa9", "uid"), "-");
    CHECK_STR(cookie("uid=a\x7f", "uid"), "-");
    CHECK_STR(cookie("uid=bad b; uid=good", "uid"), "-"); /* the first decides */
    const char *val;
    size_t vlen;
    CHECK_INT(rmr_cookie_get("uid=ab\0c", 8, "uid", &val, &vlen), -1);
    CHECK_INT(rmr_cookie_get("uid=abcd", 6, "uid", &val, &vlen), 0);
    CHECK_INT(vlen, 2);
}

/* Random and mutated input through the three parsers: no crash, no read outside (under ASan),
 * and whatever is returned lies inside the input. */
static void test_parsers_random(void)
{
    static const char *seeds[] = {
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        "a=1, lane = dev ;p;q=r,b=2",
        "x=y; lane=dev; uid=\"7\"",
    };
    static const char alphabet[] = "-0af=;,\" \tlane\\\x01\xff";
    unsigned seed = 1;
    char buf[128];
    int inside = 1, parsed = 0;
    for (int it = 0; it < 200000; it++) {
        size_t n;
        if (it % 2) {
            const char *s0 = seeds[rand_r(&seed) % 4];
            n = strlen(s0);
            memcpy(buf, s0, n);
            for (int m = rand_r(&seed) % 4; m >= 0 && n; m--)
                buf[rand_r(&seed) % n] = alphabet[rand_r(&seed) % (sizeof(alphabet) - 1)];
            n = (size_t)rand_r(&seed) % (n + 1);
        } else {
            n = (size_t)rand_r(&seed) % sizeof(buf);
            for (size_t i = 0; i < n; i++)
                buf[i] = alphabet[rand_r(&seed) % (sizeof(alphabet) - 1)];
        }
        char *p = exact(buf, n);
        rmr_traceparent_t tp;
        const char *val;
        size_t vlen;
        parsed += rmr_traceparent_parse(p, n, &tp) == 0;
        if (rmr_baggage_lane(p, n, "lane", &val, &vlen) == 0) {
            parsed++;
            inside &= val >= p && vlen > 0 && val + vlen <= p + n;
        }
        if (rmr_cookie_get(p, n, "lane", &val, &vlen) == 0) {
            parsed++;
            inside &= val >= p && vlen > 0 && val + vlen <= p + n;
        }
        free(p);
    }
    CHECK(inside);
    CHECK(parsed > 1000);
}

int main(void)
{
    test_hash();
    test_swrr();
    test_sticky_basics();
    test_sticky_shares();
    test_sticky_stable();
    test_selector();
    test_lanes_basic();
    test_lanes_ttl();
    test_lanes_lru();
    test_lanes_resize();
    test_lanes_registry();
    test_lanes_threads();
    test_traceparent();
    test_baggage();
    test_cookie();
    test_parsers_random();
    return check_summary();
}
