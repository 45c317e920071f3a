/*
 * Gray release arithmetic: smooth weighted round robin, weighted rendezvous ranking, selector
 * matching, the lane store and the traceparent, baggage and Cookie parsers.
 *
 * The lane store is one fixed array of slots, allocated when the store is made, with a chained
 * hash index over it and one recency list. The ttl restarts whenever an entry is put or found
 * and every entry moves to the recent end at that moment, so the recency list is also the age
 * list: its old end is both what to evict and what expires next, and each call drops a few
 * expired entries from there. One mutex covers it all; the work under it is a short chain walk
 * and a copy of at most RMR_LANE_MAX bytes, which a sidecar's request rate keeps far from
 * contended.
 */
#include <assert.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "remora/gray.h"
#include "remora/siphash.h"

/* ---- hashing ---- */

#define P1 0x9E3779B185EBCA87ULL
#define P2 0xC2B2AE3D27D4EB4FULL
#define P3 0x165667B19E3779F9ULL
#define P4 0x85EBCA77C2B2AE63ULL
#define P5 0x27D4EB2F165667C5ULL

static uint64_t rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t le32(const unsigned char *p)
{
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24;
}

static uint64_t xxh_round(uint64_t acc, uint64_t in)
{
    acc += in * P2;
    return rotl(acc, 31) * P1;
}

static uint64_t xxh_merge(uint64_t h, uint64_t v)
{
    h ^= xxh_round(0, v);
    return h * P1 + P4;
}

uint64_t rmr_gray_hash64(const void *data, size_t n, uint64_t seed)
{
    const unsigned char *p = data;
    size_t i = 0;
    uint64_t h;
    if (n >= 32) {
        uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
        for (; n - i >= 32; i += 32) {
            v1 = xxh_round(v1, le64(p + i));
            v2 = xxh_round(v2, le64(p + i + 8));
            v3 = xxh_round(v3, le64(p + i + 16));
            v4 = xxh_round(v4, le64(p + i + 24));
        }
        h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
        h = xxh_merge(h, v1);
        h = xxh_merge(h, v2);
        h = xxh_merge(h, v3);
        h = xxh_merge(h, v4);
    } else {
        h = seed + P5;
    }
    h += (uint64_t)n;
    for (; n - i >= 8; i += 8) {
        h ^= xxh_round(0, le64(p + i));
        h = rotl(h, 27) * P1 + P4;
    }
    if (n - i >= 4) {
        h ^= le32(p + i) * P1;
        h = rotl(h, 23) * P2 + P3;
        i += 4;
    }
    for (; i < n; i++) {
        h ^= p[i] * P5;
        h = rotl(h, 11) * P1;
    }
    h ^= h >> 33;
    h *= P2;
    h ^= h >> 29;
    h *= P3;
    h ^= h >> 32;
    return h;
}

/* ---- smooth weighted round robin ---- */

int rmr_swrr_init(rmr_swrr_t *s, const uint32_t *weights, size_t n)
{
    memset(s, 0, sizeof(*s));
    if (n > RMR_GRAY_SUBSETS_MAX)
        return -1;
    s->n = (uint32_t)n;
    for (size_t i = 0; i < n; i++)
        s->weight[i] = weights[i];
    return 0;
}

int rmr_swrr_pick_among(rmr_swrr_t *s, uint32_t allowed)
{
    /* With at most 32 weights below 2^32 the total stays below 2^37; the current values sum to 0
     * and stay within a small multiple of the total, so int64_t is far from overflowing. */
    int64_t total = 0;
    int best = -1;
    for (uint32_t i = 0; i < s->n; i++) {
        if (!s->weight[i] || !(allowed >> i & 1))
            continue;
        s->current[i] += s->weight[i];
        total += s->weight[i];
        if (best < 0 || s->current[i] > s->current[best])
            best = (int)i;
    }
    if (best >= 0)
        s->current[best] -= total;
    return best;
}

int rmr_swrr_pick(rmr_swrr_t *s)
{
    return rmr_swrr_pick_among(s, UINT32_MAX);
}

/* ---- weighted rendezvous ---- */

/*
 * The natural logarithm of x in (0, 1], from +, -, * and / alone: the ranking must come out the
 * same in every sidecar whatever its libm, and the filters library does not link one. x = m 2^e
 * with m in [sqrt(1/2), sqrt(2)), ln m = 2 atanh(s) with s = (m - 1) / (m + 1), |s| < 0.172; the
 * series to s^21 leaves an error below 1e-18 of the result, so it is within a few ulp.
 */
static double ln01(double x)
{
    uint64_t bits;
    memcpy(&bits, &x, sizeof(bits));
    int e = (int)(bits >> 52 & 0x7ff) - 1023; /* x is normal: never below 2^-53 here */
    bits = (bits & 0x000fffffffffffffULL) | 0x3ff0000000000000ULL;
    double m;
    memcpy(&m, &bits, sizeof(m));
    if (m > 1.4142135623730951) {
        m *= 0.5;
        e++;
    }
    double s = (m - 1) / (m + 1), z = s * s;
    double t = 1.0 / 21;
    static const double inv[] = {1.0 / 19, 1.0 / 17, 1.0 / 15, 1.0 / 13, 1.0 / 11,
                                 1.0 / 9,  1.0 / 7,  1.0 / 5,  1.0 / 3,  1.0};
    for (size_t i = 0; i < sizeof(inv) / sizeof(inv[0]); i++)
        t = t * z + inv[i];
    /* ln 2 in two parts (fdlibm's): e * LN2_HI is exact. */
    const double LN2_HI = 6.93147180369123816490e-01, LN2_LO = 1.90821492927058770002e-10;
    return e * LN2_HI + (2 * s * t + e * LN2_LO);
}

int rmr_sticky_rank(const char *key, size_t len, const uint64_t *ids, const uint32_t *weights,
                    size_t n, uint8_t *order_out)
{
    if (n > RMR_GRAY_SUBSETS_MAX)
        return -1;
    double score[RMR_GRAY_SUBSETS_MAX];
    int live = 0;
    for (size_t i = 0; i < n; i++) {
        /* The top 52 bits, centred in their step: u is in [2^-53, 1 - 2^-53], exactly. */
        uint64_t h = rmr_gray_hash64(key, len, ids[i]);
        double u = ((double)(h >> 12) + 0.5) * (1.0 / 4503599627370496.0);
        double x = -ln01(u);
        score[i] = weights[i] ? x / weights[i] : x;
        live += weights[i] != 0;
    }
    /* Insertion sort: n is small. Weight 0 after the rest; ties (equal ids) by index. */
    for (size_t i = 0; i < n; i++) {
        size_t j = i;
        for (; j > 0; j--) {
            size_t o = order_out[j - 1];
            int zi = weights[i] == 0, zo = weights[o] == 0;
            if (zo < zi || (zo == zi && score[o] <= score[i]))
                break;
            order_out[j] = order_out[j - 1];
        }
        order_out[j] = (uint8_t)i;
    }
    return live;
}

/* ---- selectors ---- */

static int str_eq(const char *a, const char *b)
{
    return a == b || (a && b && !strcmp(a, b));
}

int rmr_selector_match(const rmr_label_t *sel, size_t nsel, const rmr_label_t *labels,
                       size_t nlabels)
{
    for (size_t i = 0; i < nsel; i++) {
        size_t j = 0;
        while (j < nlabels &&
               !(str_eq(sel[i].key, labels[j].key) && str_eq(sel[i].value, labels[j].value)))
            j++;
        if (j == nlabels)
            return 0;
    }
    return 1;
}

/* ---- lane store ---- */

/* Expired entries dropped per call at most: enough to outpace arrivals (one per put), few
 * enough to keep the lock short. */
#define SWEEP_MAX 4
#define NIL UINT32_MAX

struct slot {
    uint8_t id[16];
    uint64_t t;     /* last put or found */
    uint32_t hash;  /* low bits of the keyed hash, for the bucket */
    uint32_t chain; /* next in bucket (index + 1, 0 ends); next free slot while unused */
    uint32_t older, newer;
    uint8_t len;
    char lane[RMR_LANE_MAX];
};

struct rmr_lanes {
    pthread_mutex_t mu;
    struct slot *slots;
    uint32_t *buckets; /* index + 1 of the first slot; 0: empty (so calloc gives an empty index) */
    uint32_t cap, mask;
    uint32_t fresh;     /* slots below it have been used */
    uint32_t free_list; /* index + 1; 0: none */
    uint32_t oldest, newest;
    uint32_t ttl;
    uint64_t now;  /* the latest now_ms seen */
    uint64_t k[2]; /* SipHash key, set once by rmr_lanes_new */
    rmr_lanes_stats_t st;
    /* registry links, used only by rmr_lanes_get_store */
    char *name;
    struct rmr_lanes *next;
};

/* SipHash-2-4 of a 16-byte trace id under the store's secret key: trace ids come from clients,
 * who must not be able to pick ids that all land in one bucket. */
static uint64_t sip16(const uint64_t k[2], const uint8_t id[16])
{
    return rmr_siphash(k, id, 16);
}

static int expired(const rmr_lanes_t *s, const struct slot *e, uint64_t now)
{
    /* Workers read the clock before locking, so now may lag a t set by another by a little. */
    uint64_t age = now > e->t ? now - e->t : 0;
    return age >= s->ttl;
}

/* Restarts the ttl; a clock read a little before another thread's stays behind. */
static void touch(struct slot *e, uint64_t now)
{
    if (now > e->t)
        e->t = now;
}

static void list_unlink(rmr_lanes_t *s, uint32_t i)
{
    struct slot *e = &s->slots[i];
    if (e->older != NIL)
        s->slots[e->older].newer = e->newer;
    else
        s->oldest = e->newer;
    if (e->newer != NIL)
        s->slots[e->newer].older = e->older;
    else
        s->newest = e->older;
}

static void list_push_newest(rmr_lanes_t *s, uint32_t i)
{
    struct slot *e = &s->slots[i];
    e->older = s->newest;
    e->newer = NIL;
    if (s->newest != NIL)
        s->slots[s->newest].newer = i;
    else
        s->oldest = i;
    s->newest = i;
}

/* The slot holding id, or NIL. */
static uint32_t find(const rmr_lanes_t *s, uint32_t h, const uint8_t id[16])
{
    for (uint32_t j = s->buckets[h & s->mask]; j; j = s->slots[j - 1].chain)
        if (!memcmp(s->slots[j - 1].id, id, 16))
            return j - 1;
    return NIL;
}

static void drop(rmr_lanes_t *s, uint32_t i)
{
    struct slot *e = &s->slots[i];
    uint32_t *pp = &s->buckets[e->hash & s->mask];
    while (*pp != i + 1) {
        assert(*pp);
        pp = &s->slots[*pp - 1].chain;
    }
    *pp = e->chain;
    list_unlink(s, i);
    e->chain = s->free_list;
    s->free_list = i + 1;
    s->st.entries--;
}

static void sweep(rmr_lanes_t *s, uint64_t now)
{
    if (now > s->now)
        s->now = now;
    for (int i = 0; i < SWEEP_MAX && s->oldest != NIL && expired(s, &s->slots[s->oldest], s->now);
         i++) {
        drop(s, s->oldest);
        s->st.expired++;
    }
}

/* Index arrays for cap entries; 0 or -1 (nothing allocated). */
static int arrays_new(size_t cap, struct slot **slots, uint32_t **buckets, uint32_t *mask)
{
    if (cap > RMR_LANES_ENTRIES_MAX)
        return -1;
    size_t nb = 1;
    while (nb < cap)
        nb <<= 1;
    /* One slot at least, so that slots is never NULL. */
    *slots = malloc((cap ? cap : 1) * sizeof(**slots));
    *buckets = calloc(nb, sizeof(**buckets));
    if (!*slots || !*buckets) {
        free(*slots);
        free(*buckets);
        return -1;
    }
    *mask = (uint32_t)(nb - 1);
    return 0;
}

rmr_lanes_t *rmr_lanes_new(size_t max_entries, uint32_t ttl_ms)
{
    rmr_lanes_t *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    if (arrays_new(max_entries, &s->slots, &s->buckets, &s->mask))
        goto fail;
    if (pthread_mutex_init(&s->mu, NULL))
        goto fail;
    s->cap = (uint32_t)max_entries;
    s->oldest = s->newest = NIL;
    s->ttl = ttl_ms;
    if (getrandom(s->k, sizeof(s->k), GRND_NONBLOCK) != (ssize_t)sizeof(s->k)) {
        /* Early boot without entropy: a weaker key beats no store. */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        s->k[0] = rmr_gray_hash64(&ts, sizeof(ts), (uintptr_t)s);
        s->k[1] = rmr_gray_hash64(&ts, sizeof(ts), s->k[0]);
    }
    return s;
fail:
    free(s->slots);
    free(s->buckets);
    free(s);
    return NULL;
}

void rmr_lanes_free(rmr_lanes_t *s)
{
    if (!s)
        return;
    pthread_mutex_destroy(&s->mu);
    free(s->slots);
    free(s->buckets);
    free(s->name);
    free(s);
}

int rmr_lanes_configure(rmr_lanes_t *s, size_t max_entries, uint32_t ttl_ms)
{
    struct slot *slots = NULL;
    uint32_t *buckets = NULL, mask = 0;
    pthread_mutex_lock(&s->mu);
    s->ttl = ttl_ms;
    int resize = max_entries != s->cap;
    pthread_mutex_unlock(&s->mu);
    if (!resize)
        return 0;
    /* Allocated before locking; should another thread resize meanwhile, this one still wins. */
    if (arrays_new(max_entries, &slots, &buckets, &mask))
        return -1;

    pthread_mutex_lock(&s->mu);
    struct slot *old = s->slots;
    uint32_t *old_buckets = s->buckets, i = s->newest, k = 0;
    /* Most recent first into the new array, then link them oldest to newest. */
    for (; i != NIL && k < max_entries; i = old[i].older) {
        if (expired(s, &old[i], s->now)) {
            s->st.expired++;
            continue;
        }
        slots[k++] = old[i];
    }
    for (; i != NIL; i = old[i].older) {
        if (expired(s, &old[i], s->now))
            s->st.expired++;
        else
            s->st.evictions++;
    }
    s->slots = slots;
    s->buckets = buckets;
    s->mask = mask;
    s->cap = (uint32_t)max_entries;
    s->fresh = k;
    s->free_list = 0;
    s->oldest = s->newest = NIL;
    s->st.entries = k;
    while (k-- > 0) {
        struct slot *e = &slots[k];
        e->chain = buckets[e->hash & mask];
        buckets[e->hash & mask] = k + 1;
        list_push_newest(s, k);
    }
    pthread_mutex_unlock(&s->mu);
    free(old);
    free(old_buckets);
    return 0;
}

int rmr_lanes_put(rmr_lanes_t *s, const uint8_t trace_id[16], const char *lane, size_t lane_len,
                  uint64_t now_ms)
{
    if (lane_len == 0 || lane_len > RMR_LANE_MAX)
        return -1;
    uint32_t h = (uint32_t)sip16(s->k, trace_id);
    int rc = 0;
    pthread_mutex_lock(&s->mu);
    sweep(s, now_ms);
    uint32_t i = find(s, h, trace_id);
    if (i != NIL) {
        list_unlink(s, i);
    } else if (s->cap == 0) {
        rc = -1;
        goto out;
    } else {
        if (s->st.entries == s->cap) {
            /* Not expired: the sweep would have dropped it, and made room. */
            drop(s, s->oldest);
            s->st.evictions++;
        }
        if (s->free_list) {
            i = s->free_list - 1;
            s->free_list = s->slots[i].chain;
        } else {
            assert(s->fresh < s->cap);
            i = s->fresh++;
        }
        struct slot *e = &s->slots[i];
        memcpy(e->id, trace_id, 16);
        e->hash = h;
        e->t = now_ms;
        e->chain = s->buckets[h & s->mask];
        s->buckets[h & s->mask] = i + 1;
        s->st.entries++;
    }
    struct slot *e = &s->slots[i];
    touch(e, now_ms);
    e->len = (uint8_t)lane_len;
    memcpy(e->lane, lane, lane_len);
    list_push_newest(s, i);
    s->st.puts++;
out:
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int rmr_lanes_get(rmr_lanes_t *s, const uint8_t trace_id[16], char *out, size_t cap,
                  uint64_t now_ms)
{
    uint32_t h = (uint32_t)sip16(s->k, trace_id);
    int len = -1;
    pthread_mutex_lock(&s->mu);
    sweep(s, now_ms);
    uint32_t i = find(s, h, trace_id);
    if (i != NIL && expired(s, &s->slots[i], now_ms)) {
        drop(s, i);
        s->st.expired++;
    } else if (i != NIL && s->slots[i].len < cap) {
        struct slot *e = &s->slots[i];
        touch(e, now_ms);
        list_unlink(s, i);
        list_push_newest(s, i);
        memcpy(out, e->lane, e->len);
        out[e->len] = '\0';
        len = e->len;
    }
    if (len < 0)
        s->st.misses++;
    else
        s->st.hits++;
    pthread_mutex_unlock(&s->mu);
    return len;
}

void rmr_lanes_get_stats(rmr_lanes_t *s, rmr_lanes_stats_t *out)
{
    pthread_mutex_lock(&s->mu);
    *out = s->st;
    pthread_mutex_unlock(&s->mu);
}

/* ---- registry ---- */

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static rmr_lanes_t *reg_stores;

rmr_lanes_t *rmr_lanes_get_store(const char *name, size_t max_entries, uint32_t ttl_ms)
{
    if (!name)
        return NULL;
    pthread_mutex_lock(&reg_lock);
    rmr_lanes_t *s;
    for (s = reg_stores; s; s = s->next)
        if (!strcmp(s->name, name)) {
            rmr_lanes_configure(s, max_entries, ttl_ms);
            goto out;
        }
    s = rmr_lanes_new(max_entries, ttl_ms);
    if (!s)
        goto out;
    if (!(s->name = strdup(name))) {
        rmr_lanes_free(s);
        s = NULL;
        goto out;
    }
    s->next = reg_stores;
    reg_stores = s;
out:
    pthread_mutex_unlock(&reg_lock);
    return s;
}

void rmr_lanes_free_all(void)
{
    pthread_mutex_lock(&reg_lock);
    rmr_lanes_t *s = reg_stores;
    reg_stores = NULL;
    pthread_mutex_unlock(&reg_lock);
    while (s) {
        rmr_lanes_t *next = s->next;
        rmr_lanes_free(s);
        s = next;
    }
}

/* ---- header values ---- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1; /* upper case is not allowed either */
}

/* Reads n bytes of lower-case hex at v into out; 0, or -1 when a character is not hex. */
static int hex_bytes(const char *v, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(v[2 * i]), lo = hexval(v[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

static int all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

int rmr_traceparent_parse(const char *v, size_t len, rmr_traceparent_t *out)
{
    /* vv-<32>-<16>-ff: dashes at 2, 35 and 52, 55 bytes in all. */
    if (len < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-')
        return -1;
    if (hex_bytes(v, &out->version, 1) || out->version == 0xff)
        return -1;
    if (out->version == 0 ? len != 55 : len > 55 && v[55] != '-')
        return -1;
    if (hex_bytes(v + 3, out->trace_id, 16) || all_zero(out->trace_id, 16))
        return -1;
    if (hex_bytes(v + 36, out->parent_id, 8) || all_zero(out->parent_id, 8))
        return -1;
    return hex_bytes(v + 53, &out->flags, 1);
}

static int is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static int is_tchar(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* RFC 6265 cookie-octet; W3C Baggage's baggage-octet is the same set. */
static int is_octet(char c)
{
    unsigned char u = (unsigned char)c;
    return u >= 0x21 && u <= 0x7e && u != '"' && u != ',' && u != ';' && u != '\\';
}

static size_t skip_ows(const char *v, size_t len, size_t i)
{
    while (i < len && is_ows(v[i]))
        i++;
    return i;
}

/* The end of a token starting at i (i itself when there is none). */
static size_t token_end(const char *v, size_t len, size_t i)
{
    while (i < len && is_tchar(v[i]))
        i++;
    return i;
}

static size_t octets_end(const char *v, size_t len, size_t i)
{
    while (i < len && is_octet(v[i]))
        i++;
    return i;
}

/* Whether v[a, b) is exactly the NUL-terminated s. */
static int span_is(const char *v, size_t a, size_t b, const char *s)
{
    size_t n = strlen(s);
    return b - a == n && !memcmp(v + a, s, n);
}

/* W3C Baggage allows 180 list members. */
#define BAGGAGE_MEMBERS_MAX 180

int rmr_baggage_lane(const char *v, size_t len, const char *key, const char **val, size_t *vlen)
{
    int found = 0, members = 0;
    size_t i = skip_ows(v, len, 0);
    for (;;) {
        if (++members > BAGGAGE_MEMBERS_MAX)
            return -1;
        /* key OWS "=" OWS value */
        size_t k0 = i, k1 = token_end(v, len, i);
        if (k1 == k0)
            return -1;
        i = skip_ows(v, len, k1);
        if (i >= len || v[i] != '=')
            return -1;
        size_t v0 = skip_ows(v, len, i + 1), v1 = octets_end(v, len, v0);
        i = skip_ows(v, len, v1);
        /* *( OWS ";" OWS property ), property = key OWS [ "=" OWS value ] */
        while (i < len && v[i] == ';') {
            size_t p0 = skip_ows(v, len, i + 1), p1 = token_end(v, len, p0);
            if (p1 == p0)
                return -1;
            i = skip_ows(v, len, p1);
            if (i < len && v[i] == '=')
                i = skip_ows(v, len, octets_end(v, len, skip_ows(v, len, i + 1)));
        }
        if (!found && span_is(v, k0, k1, key)) {
            found = 1;
            *val = v + v0;
            *vlen = v1 - v0;
        }
        if (i == len)
            break;
        if (v[i] != ',')
            return -1;
        i = skip_ows(v, len, i + 1);
    }
    return found && *vlen ? 0 : -1;
}

int rmr_cookie_get(const char *v, size_t len, const char *name, const char **val, size_t *vlen)
{
    for (size_t i = 0; i < len;) {
        size_t end = i;
        while (end < len && v[end] != ';')
            end++;
        size_t a = skip_ows(v, end, i), eq = a;
        while (eq < end && v[eq] != '=')
            eq++;
        size_t b = eq;
        while (b > a && is_ows(v[b - 1]))
            b--;
        if (eq < end && span_is(v, a, b, name)) {
            size_t c = skip_ows(v, end, eq + 1), d = end;
            while (d > c && is_ows(v[d - 1]))
                d--;
            if (d - c >= 2 && v[c] == '"' && v[d - 1] == '"') {
                c++;
                d--;
            }
            if (c == d || octets_end(v, d, c) != d)
                return -1;
            *val = v + c;
            *vlen = d - c;
            return 0;
        }
        i = end + 1;
    }
    return -1;
}
