/*
 * The Idempotency-Key store at 100k entries: memory per entry and the cost of each operation.
 * A benchmark, run by hand (never a test):
 *
 *   build/tests/bench/idem_bench [ENTRIES] [BODY_BYTES]
 *
 * Fills a store of ENTRIES keys (default 100,000) with finished requests, each holding a
 * typical small JSON response (a 50-byte head and BODY_BYTES of body, default 64), then times
 * lookups of held keys (a replay: begin returns DONE), lookups of absent keys (begin returns NEW
 * and abort), and the insert of new keys into the full store (begin NEW, finish, and the
 * eviction of the least recently used entry). Memory is the heap growth (glibc mallinfo2) per
 * held entry, everything included: key, table slot, LRU links, stored head and body.
 */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "remora/idem.h"

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static uint64_t rnd(void)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 0x2545F4914F6CDD1DULL;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static size_t heap_used(void)
{
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}

/* key i: the unquoted UUID a caller sidecar would generate */
static size_t make_key(char *out, uint64_t i)
{
    char q[48];
    size_t n = rmr_idem_format_key(q, i * 0x9e3779b97f4a7c15ULL + 1, i ^ 0xdeadbeefcafef00dULL);
    memcpy(out, q + 1, n - 2);
    out[n - 2] = 0;
    return n - 2;
}

int main(int argc, char **argv)
{
    uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 100000;
    size_t body_len = argc > 2 ? strtoul(argv[2], NULL, 10) : 64;
    if (n == 0 || body_len > (1u << 20)) {
        fprintf(stderr, "usage: idem_bench [ENTRIES>0] [BODY_BYTES<=1MiB]\n");
        return 2;
    }
    static const char head[] = "content-type: application/json\r\ncontent-length: 64\r\n";
    char *body = malloc(body_len + 1);
    char(*keys)[40] = malloc(n * sizeof(*keys));
    size_t *klen = malloc(n * sizeof(*klen));
    if (!body || !keys || !klen)
        return 1;
    memset(body, 'x', body_len);
    for (uint64_t i = 0; i < n; i++)
        klen[i] = make_key(keys[i], i);

    size_t h0 = heap_used();
    rmr_idem_t *s = rmr_idem_new(n, 600000, 65536);
    uint64_t now = 1000;
    double t0 = now_s();
    for (uint64_t i = 0; i < n; i++) {
        rmr_idem_entry_t *e;
        uint64_t fp = rmr_hash64(RMR_HASH_INIT, keys[i], klen[i]);
        if (rmr_idem_begin(s, keys[i], klen[i], fp, now, &e) != RMR_IDEM_NEW) {
            fprintf(stderr, "fill: key %llu not new\n", (unsigned long long)i);
            return 1;
        }
        rmr_idem_finish(s, keys[i], klen[i], RMR_HASH_INIT, 200, head, sizeof(head) - 1, body,
                        body_len, 1, now);
    }
    double t_fill = now_s() - t0;
    size_t h1 = heap_used();
    rmr_idem_stats_t st;
    rmr_idem_get_stats(s, &st);
    printf("entries held            %llu (of %llu), response %zu + %zu bytes\n",
           (unsigned long long)st.entries, (unsigned long long)n, sizeof(head) - 1, body_len);
    printf("heap per entry          %.0f bytes (%.1f MiB for all)\n", (double)(h1 - h0) / (double)n,
           (double)(h1 - h0) / 1048576.0);
    printf("insert (begin+finish)   %.0f ns (filling an empty store)\n", t_fill * 1e9 / (double)n);

    /* replays: random held keys */
    uint64_t reps = 2000000, hits = 0;
    t0 = now_s();
    for (uint64_t k = 0; k < reps; k++) {
        uint64_t i = rnd() % n;
        rmr_idem_entry_t *e;
        uint64_t fp = rmr_hash64(RMR_HASH_INIT, keys[i], klen[i]);
        if (rmr_idem_begin(s, keys[i], klen[i], fp, now, &e) == RMR_IDEM_DONE) {
            hits++;
            rmr_idem_entry_unref(e);
        }
    }
    double t_hit = now_s() - t0;
    printf("lookup, held key        %.0f ns (DONE %llu of %llu)\n", t_hit * 1e9 / (double)reps,
           (unsigned long long)hits, (unsigned long long)reps);

    /* misses: absent keys, begin NEW then abort (a table-full store must take them) */
    char mk[40];
    uint64_t news = 0;
    t0 = now_s();
    for (uint64_t k = 0; k < reps; k++) {
        size_t ml = make_key(mk, n + 1 + k);
        rmr_idem_entry_t *e;
        if (rmr_idem_begin(s, mk, ml, 1, now, &e) == RMR_IDEM_NEW) {
            news++;
            rmr_idem_abort(s, mk, ml);
        }
    }
    double t_miss = now_s() - t0;
    printf("lookup, absent key      %.0f ns (begin NEW + abort; NEW %llu of %llu)\n",
           t_miss * 1e9 / (double)reps, (unsigned long long)news, (unsigned long long)reps);

    /* inserts into the full store: each evicts the least recently used entry */
    uint64_t ins = n;
    t0 = now_s();
    for (uint64_t k = 0; k < ins; k++) {
        size_t ml = make_key(mk, 10 * n + k);
        rmr_idem_entry_t *e;
        if (rmr_idem_begin(s, mk, ml, 1, now, &e) == RMR_IDEM_NEW)
            rmr_idem_finish(s, mk, ml, RMR_HASH_INIT, 200, head, sizeof(head) - 1, body, body_len,
                            1, now);
    }
    double t_ins = now_s() - t0;
    rmr_idem_get_stats(s, &st);
    printf("insert into full store  %.0f ns (begin+finish+eviction; %llu evictions)\n",
           t_ins * 1e9 / (double)ins, (unsigned long long)st.evictions);
    rmr_idem_free(s);
    free(body);
    free(keys);
    free(klen);
    return 0;
}
