/*
 * Circuit breaking and outlier detection of a service; see include/remora/breaker.h.
 *
 * Locking: the limit counters and the per-endpoint hot fields (state, ejection end, failure run,
 * latency samples) are atomics, so the request path of a healthy endpoint never takes the lock.
 * Every state change happens under b->lock, which also guards the fields marked "locked"; the
 * hot fields are written with release under the lock and may be read without it.
 *
 * Endpoints never move or die before rmr_breaker_free_all: they live in blocks of doubling size
 * (block k holds EP_BLOCK0 << k endpoints), so an index stays valid and readers need no lock
 * while a writer appends. n_eps is published with release after the endpoint is written.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "remora/breaker.h"

#define EP_BLOCK0 16
#define EP_BLOCKS 28 /* 16 * (2^28 - 1) > INT_MAX endpoints */
#define HISTORY 8
#define MIN_SAMPLES 10

enum event { EV_EJECTED, EV_HALF_OPEN, EV_READMITTED, EV_REEJECTED };
static const char *const event_names[] = {"ejected", "half-open", "readmitted", "re-ejected"};

enum reason {
    R_CONSECUTIVE,
    R_LATENCY,
    R_PROBE_FAILED,
    R_PROBES_PASSED,
    R_EJECTION_OVER,
    R_DETECTION_OFF
};
static const char *const reason_names[] = {"consecutive-failures", "latency",
                                           "probe-failed",         "probes-passed",
                                           "ejection-over",        "detection-off"};

static const char *const state_names[] = {"healthy", "ejected", "half-open"};

struct history {
    uint64_t at_ms;
    uint8_t event, reason;
};

struct ep {
    /* Hot: atomics, aligned so that two endpoints never share a cache line. */
    _Alignas(64) atomic_int state; /* rmr_ep_state_t */
    _Atomic uint64_t until_ms;     /* end of the ejection while EJECTED */
    atomic_uint consec;            /* failures in a row */
    _Atomic uint64_t lat_sum_us, lat_n;
    /* Locked. */
    char *addr;
    bool member; /* of the current endpoint set */
    uint32_t ejections;
    uint64_t healthy_since_ms;
    uint32_t probes_taken, probes_ok; /* in this half-open round */
    uint64_t probe_at_ms;             /* when the last probe slot was taken */
    uint64_t mean_us;                 /* of the last completed interval */
    struct history hist[HISTORY];
    unsigned hist_n; /* events ever recorded; the ring holds the last HISTORY */
};

/* A limit counter on a cache line of its own: each is hit by every worker on every request. */
struct limit {
    _Alignas(64) atomic_uint count;
    atomic_uint max;
    _Atomic uint64_t overflows;
};

struct rmr_breaker {
    struct rmr_breaker *next;
    char *name;
    struct limit lim[RMR_LIM__N];
    _Alignas(64) atomic_uint cf;  /* conf.consecutive_failures, for the lock-free paths */
    _Atomic uint64_t next_due_ms; /* tick has nothing to do before this */
    atomic_int n_eps;

    pthread_mutex_t lock;
    /* Locked. */
    rmr_breaker_conf_t conf;
    struct ep *blocks[EP_BLOCKS];
    int *hash; /* open addressing of endpoint index + 1, 0 = empty */
    size_t hash_cap;
    uint64_t interval_end_ms;
    uint64_t last_now_ms;   /* the latest time seen, for changes made by configure */
    rmr_breaker_stats_t st; /* ejected_now is computed when asked */
};

typedef void (*log_fn_t)(const char *svc, const char *addr, const char *event, const char *reason);
static _Atomic(log_fn_t) log_fn;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static rmr_breaker_t *registry;

/* State changes to log once the lock is released. */
struct note {
    const char *addr;
    uint8_t event, reason;
};
struct notes {
    struct note *v;
    size_t n, cap;
    struct note inl[4];
};

static void notes_init(struct notes *ns)
{
    ns->v = ns->inl;
    ns->n = 0;
    ns->cap = sizeof(ns->inl) / sizeof(ns->inl[0]);
}

static void notes_push(struct notes *ns, const char *addr, enum event ev, enum reason r)
{
    if (ns->n == ns->cap) {
        /* Nobody may wait for a log line, so without memory the line is dropped. */
        size_t cap = ns->cap * 2;
        struct note *v = malloc(cap * sizeof(*v));
        if (!v)
            return;
        memcpy(v, ns->v, ns->n * sizeof(*v));
        if (ns->v != ns->inl)
            free(ns->v);
        ns->v = v;
        ns->cap = cap;
    }
    ns->v[ns->n++] = (struct note){addr, (uint8_t)ev, (uint8_t)r};
}

/* Calls the logger for each note and frees them. Outside b->lock. */
static void notes_emit(const rmr_breaker_t *b, struct notes *ns)
{
    log_fn_t fn = atomic_load_explicit(&log_fn, memory_order_acquire);
    for (size_t k = 0; fn && k < ns->n; k++)
        fn(b->name, ns->v[k].addr, event_names[ns->v[k].event], reason_names[ns->v[k].reason]);
    if (ns->v != ns->inl)
        free(ns->v);
    notes_init(ns);
}

static uint64_t since(uint64_t now, uint64_t t)
{
    /* Workers' clocks are read at different moments, so "now" may trail a stored time. */
    return now > t ? now - t : 0;
}

/* Block k and the offset in it of endpoint i. */
static struct ep *ep_at(const rmr_breaker_t *b, int i)
{
    uint64_t q = ((uint64_t)i / EP_BLOCK0) + 1;
    int k = 63 - __builtin_clzll(q);
    size_t off = (size_t)i - (size_t)EP_BLOCK0 * (((size_t)1 << k) - 1);
    return &b->blocks[k][off];
}

/* Endpoint i, or NULL when i is not an endpoint. Any thread. */
static struct ep *ep_get(rmr_breaker_t *b, int i)
{
    if (i < 0 || i >= atomic_load_explicit(&b->n_eps, memory_order_acquire))
        return NULL;
    return ep_at(b, i);
}

static int ep_state(struct ep *e)
{
    return atomic_load_explicit(&e->state, memory_order_acquire);
}

static void set_state(struct ep *e, rmr_ep_state_t s)
{
    atomic_store_explicit(&e->state, (int)s, memory_order_release);
}

void rmr_breaker_conf_defaults(rmr_breaker_conf_t *c)
{
    *c = (rmr_breaker_conf_t){
        .max = {[RMR_LIM_CONNECTIONS] = 1024,
                [RMR_LIM_PENDING] = 1024,
                [RMR_LIM_REQUESTS] = 1024,
                [RMR_LIM_RETRIES] = 3},
        .consecutive_failures = 5,
        .interval_ms = 1000,
        .base_ejection_ms = 5000,
        .max_ejection_ms = 300000,
        .max_ejection_percent = 10,
        .half_open_probes = 1,
        .latency_factor = 3.0,
        .latency_min_us = 10000,
    };
}

/* ---- registry ---- */

static void breaker_free(rmr_breaker_t *b)
{
    int n = atomic_load_explicit(&b->n_eps, memory_order_acquire);
    for (int i = 0; i < n; i++)
        free(ep_at(b, i)->addr);
    for (int k = 0; k < EP_BLOCKS; k++)
        free(b->blocks[k]);
    free(b->hash);
    free(b->name);
    pthread_mutex_destroy(&b->lock);
    free(b);
}

static void apply_conf(rmr_breaker_t *b, const rmr_breaker_conf_t *c, struct notes *ns);

rmr_breaker_t *rmr_breaker_get(const char *name)
{
    pthread_mutex_lock(&registry_lock);
    rmr_breaker_t *b;
    for (b = registry; b; b = b->next)
        if (!strcmp(b->name, name))
            goto out;
    /* _Alignas members need an aligned allocation; the size is a multiple of 64 already. */
    b = aligned_alloc(_Alignof(rmr_breaker_t), sizeof(*b));
    if (!b)
        goto out;
    memset(b, 0, sizeof(*b));
    b->name = strdup(name);
    if (!b->name || pthread_mutex_init(&b->lock, NULL) != 0) {
        free(b->name);
        free(b);
        b = NULL;
        goto out;
    }
    rmr_breaker_conf_t c;
    rmr_breaker_conf_defaults(&c);
    struct notes ns;
    notes_init(&ns);
    apply_conf(b, &c, &ns); /* nothing is ejected yet, so nothing to log */
    b->next = registry;
    registry = b;
out:
    pthread_mutex_unlock(&registry_lock);
    return b;
}

void rmr_breaker_free_all(void)
{
    pthread_mutex_lock(&registry_lock);
    rmr_breaker_t *b = registry;
    registry = NULL;
    pthread_mutex_unlock(&registry_lock);
    while (b) {
        rmr_breaker_t *next = b->next;
        breaker_free(b);
        b = next;
    }
}

void rmr_breaker_set_logger(void (*fn)(const char *svc, const char *addr, const char *event,
                                       const char *reason))
{
    atomic_store_explicit(&log_fn, fn, memory_order_release);
}

/* ---- state changes (all under b->lock) ---- */

static void record(rmr_breaker_t *b, struct ep *e, uint64_t now, enum event ev, enum reason r,
                   struct notes *ns)
{
    if (now > b->last_now_ms)
        b->last_now_ms = now;
    e->hist[e->hist_n % HISTORY] = (struct history){now, (uint8_t)ev, (uint8_t)r};
    e->hist_n++;
    notes_push(ns, e->addr, ev, r);
}

/* Lowers next_due_ms to t, so that tick ends the ejection in time. */
static void due_by(rmr_breaker_t *b, uint64_t t)
{
    if (t < atomic_load_explicit(&b->next_due_ms, memory_order_relaxed))
        atomic_store_explicit(&b->next_due_ms, t, memory_order_relaxed);
}

/* base * 2^(n - 1), capped by max_ejection_ms. */
static uint64_t ejection_ms(const rmr_breaker_conf_t *c, uint32_t n)
{
    uint64_t d = c->base_ejection_ms, max = c->max_ejection_ms;
    for (uint32_t k = 1; k < n && d < max; k++)
        d *= 2;
    return d < max ? d : max;
}

/* The ejection count resets once the endpoint has stayed healthy for max_ejection_ms. */
static void decay(rmr_breaker_t *b, struct ep *e, uint64_t now)
{
    if (e->ejections && ep_state(e) == RMR_EP_HEALTHY &&
        since(now, e->healthy_since_ms) >= b->conf.max_ejection_ms)
        e->ejections = 0;
}

static void eject_for(rmr_breaker_t *b, struct ep *e, uint64_t now)
{
    e->ejections++;
    uint64_t until = now + ejection_ms(&b->conf, e->ejections);
    atomic_store_explicit(&e->until_ms, until, memory_order_relaxed);
    set_state(e, RMR_EP_EJECTED);
    due_by(b, until);
}

/* May one more endpoint of the current set be ejected under max_ejection_percent? */
static bool under_cap(rmr_breaker_t *b)
{
    uint32_t pct = b->conf.max_ejection_percent;
    if (pct == 0)
        return false;
    uint64_t members = 0, out = 0;
    int n = atomic_load_explicit(&b->n_eps, memory_order_relaxed);
    for (int i = 0; i < n; i++) {
        struct ep *e = ep_at(b, i);
        if (!e->member)
            continue;
        members++;
        out += ep_state(e) != RMR_EP_HEALTHY;
    }
    if ((out + 1) * 100 <= members * pct)
        return true;
    /* A small service would otherwise never eject anything at Envoy's default of 10%. */
    return out == 0 && members >= 2;
}

/* Ejects healthy endpoint e for reason r if the percentage allows; returns whether it did. */
static bool try_eject(rmr_breaker_t *b, struct ep *e, uint64_t now, enum reason r, struct notes *ns)
{
    if (!e->member)
        return false;
    if (!under_cap(b)) {
        b->st.ejections_refused++;
        return false;
    }
    decay(b, e, now);
    eject_for(b, e, now);
    if (r == R_LATENCY)
        b->st.ejections_latency++;
    else
        b->st.ejections_failures++;
    record(b, e, now, EV_EJECTED, r, ns);
    return true;
}

/* An ejection that is over makes the endpoint HALF_OPEN, with a fresh round of probes. */
static void expire(rmr_breaker_t *b, struct ep *e, uint64_t now, struct notes *ns)
{
    if (ep_state(e) != RMR_EP_EJECTED ||
        now < atomic_load_explicit(&e->until_ms, memory_order_relaxed))
        return;
    e->probes_taken = e->probes_ok = 0;
    set_state(e, RMR_EP_HALF_OPEN);
    record(b, e, now, EV_HALF_OPEN, R_EJECTION_OVER, ns);
}

static void readmit(rmr_breaker_t *b, struct ep *e, uint64_t now, enum reason r, struct notes *ns)
{
    atomic_store_explicit(&e->consec, 0, memory_order_relaxed);
    e->healthy_since_ms = now;
    e->probes_taken = e->probes_ok = 0;
    set_state(e, RMR_EP_HEALTHY);
    record(b, e, now, EV_READMITTED, r, ns);
}

static void apply_conf(rmr_breaker_t *b, const rmr_breaker_conf_t *c, struct notes *ns)
{
    b->conf = *c;
    if (b->conf.interval_ms == 0)
        b->conf.interval_ms = 1000; /* 0 would run the latency check on every tick */
    if (b->conf.half_open_probes == 0)
        b->conf.half_open_probes = 1; /* 0 would never re-admit */
    if (b->conf.max_ejection_ms < b->conf.base_ejection_ms)
        b->conf.max_ejection_ms = b->conf.base_ejection_ms;
    for (int w = 0; w < RMR_LIM__N; w++)
        atomic_store_explicit(&b->lim[w].max, c->max[w], memory_order_relaxed);
    atomic_store_explicit(&b->cf, c->consecutive_failures, memory_order_relaxed);
    if (c->consecutive_failures == 0) {
        /* Nothing would end these ejections the normal way once detection is off. */
        int n = atomic_load_explicit(&b->n_eps, memory_order_relaxed);
        for (int i = 0; i < n; i++) {
            struct ep *e = ep_at(b, i);
            if (ep_state(e) != RMR_EP_HEALTHY)
                readmit(b, e, b->last_now_ms, R_DETECTION_OFF, ns);
        }
    }
    /* The next tick recomputes what is due under the new times. */
    atomic_store_explicit(&b->next_due_ms, 0, memory_order_relaxed);
}

void rmr_breaker_configure(rmr_breaker_t *b, const rmr_breaker_conf_t *c)
{
    struct notes ns;
    notes_init(&ns);
    pthread_mutex_lock(&b->lock);
    apply_conf(b, c, &ns);
    pthread_mutex_unlock(&b->lock);
    notes_emit(b, &ns);
}

/* ---- limits ---- */

int rmr_breaker_acquire(rmr_breaker_t *b, rmr_limit_t which)
{
    struct limit *l = &b->lim[which];
    uint32_t max = atomic_load_explicit(&l->max, memory_order_relaxed);
    if (max == 0) {
        atomic_fetch_add_explicit(&l->count, 1, memory_order_relaxed);
        return 1;
    }
    unsigned cur = atomic_load_explicit(&l->count, memory_order_relaxed);
    do {
        if (cur >= max) {
            atomic_fetch_add_explicit(&l->overflows, 1, memory_order_relaxed);
            return 0;
        }
    } while (!atomic_compare_exchange_weak_explicit(&l->count, &cur, cur + 1, memory_order_relaxed,
                                                    memory_order_relaxed));
    return 1;
}

void rmr_breaker_release(rmr_breaker_t *b, rmr_limit_t which)
{
    struct limit *l = &b->lim[which];
    /* An unmatched release would wrap the count and block the limit for good; stop at 0. */
    unsigned cur = atomic_load_explicit(&l->count, memory_order_relaxed);
    while (cur > 0 && !atomic_compare_exchange_weak_explicit(
                          &l->count, &cur, cur - 1, memory_order_relaxed, memory_order_relaxed))
        ;
}

uint32_t rmr_breaker_count(rmr_breaker_t *b, rmr_limit_t which)
{
    return atomic_load_explicit(&b->lim[which].count, memory_order_relaxed);
}

uint64_t rmr_breaker_overflows(rmr_breaker_t *b, rmr_limit_t which)
{
    return atomic_load_explicit(&b->lim[which].overflows, memory_order_relaxed);
}

/* ---- endpoints ---- */

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* The slot of addr in the hash: its index + 1, or the empty slot where it would go. */
static int *hash_slot(rmr_breaker_t *b, const char *addr)
{
    size_t mask = b->hash_cap - 1;
    for (size_t s = hash_str(addr) & mask;; s = (s + 1) & mask)
        if (!b->hash[s] || !strcmp(ep_at(b, b->hash[s] - 1)->addr, addr))
            return &b->hash[s];
}

static int hash_grow(rmr_breaker_t *b)
{
    size_t cap = b->hash_cap ? b->hash_cap * 2 : 64;
    int *h = calloc(cap, sizeof(*h)), *old = b->hash;
    if (!h)
        return -ENOMEM;
    b->hash = h;
    b->hash_cap = cap;
    int n = atomic_load_explicit(&b->n_eps, memory_order_relaxed);
    for (int i = 0; i < n; i++)
        *hash_slot(b, ep_at(b, i)->addr) = i + 1;
    free(old);
    return 0;
}

/* The index of addr, creating the endpoint (a member of the set); -1 on OOM. Under b->lock. */
static int find_or_add(rmr_breaker_t *b, const char *addr)
{
    int n = atomic_load_explicit(&b->n_eps, memory_order_relaxed);
    if (b->hash_cap) {
        int *s = hash_slot(b, addr);
        if (*s)
            return *s - 1;
    }
    if (n == INT32_MAX)
        return -1;
    if (((size_t)n + 1) * 2 > b->hash_cap && hash_grow(b) < 0)
        return -1;
    uint64_t q = ((uint64_t)n / EP_BLOCK0) + 1;
    int k = 63 - __builtin_clzll(q);
    if (!b->blocks[k]) {
        size_t size = ((size_t)EP_BLOCK0 << k) * sizeof(struct ep);
        struct ep *blk = aligned_alloc(_Alignof(struct ep), size);
        if (!blk)
            return -1;
        memset(blk, 0, size);
        b->blocks[k] = blk;
    }
    struct ep *e = ep_at(b, n);
    char *a = strdup(addr);
    if (!a)
        return -1;
    memset(e, 0, sizeof(*e));
    e->addr = a;
    e->member = true;
    *hash_slot(b, addr) = n + 1;
    atomic_store_explicit(&b->n_eps, n + 1, memory_order_release);
    return n;
}

int rmr_breaker_endpoint(rmr_breaker_t *b, const char *addr)
{
    pthread_mutex_lock(&b->lock);
    int i = find_or_add(b, addr);
    pthread_mutex_unlock(&b->lock);
    return i;
}

void rmr_breaker_set_endpoints(rmr_breaker_t *b, const char *const *addrs, size_t n)
{
    pthread_mutex_lock(&b->lock);
    int have = atomic_load_explicit(&b->n_eps, memory_order_relaxed);
    for (int i = 0; i < have; i++)
        ep_at(b, i)->member = false;
    for (size_t k = 0; k < n; k++) {
        int i = find_or_add(b, addrs[k]);
        if (i >= 0)
            ep_at(b, i)->member = true;
    }
    pthread_mutex_unlock(&b->lock);
}

/* ---- request path ---- */

static uint64_t probe_lease_ms(const rmr_breaker_conf_t *c)
{
    return c->base_ejection_ms > c->interval_ms ? c->base_ejection_ms : c->interval_ms;
}

int rmr_breaker_allow(rmr_breaker_t *b, int i, uint64_t now_ms, int *probe)
{
    *probe = 0;
    struct ep *e = ep_get(b, i);
    if (!e)
        return 1;
    int s = ep_state(e);
    if (s == RMR_EP_HEALTHY)
        return 1;
    if (s == RMR_EP_EJECTED && now_ms < atomic_load_explicit(&e->until_ms, memory_order_relaxed))
        return 0;
    struct notes ns;
    notes_init(&ns);
    pthread_mutex_lock(&b->lock);
    expire(b, e, now_ms, &ns);
    int ok;
    switch (ep_state(e)) {
    case RMR_EP_HEALTHY:
        ok = 1;
        break;
    case RMR_EP_HALF_OPEN:
        /* A probe that is never reported (its request died before the try) would keep the
         * endpoint half-open for good: its slot is given back after a while. */
        if (e->probes_taken >= b->conf.half_open_probes &&
            since(now_ms, e->probe_at_ms) >= probe_lease_ms(&b->conf))
            e->probes_taken = e->probes_ok;
        ok = e->probes_taken < b->conf.half_open_probes;
        if (ok) {
            e->probes_taken++;
            e->probe_at_ms = now_ms;
            b->st.probes++;
            *probe = 1;
        }
        break;
    default:
        ok = 0;
    }
    pthread_mutex_unlock(&b->lock);
    notes_emit(b, &ns);
    return ok;
}

static void report_probe(rmr_breaker_t *b, struct ep *e, rmr_outcome_t o, uint64_t now)
{
    struct notes ns;
    notes_init(&ns);
    pthread_mutex_lock(&b->lock);
    /* A probe of a round that is over (detection turned off, or another probe failed first)
     * decides nothing. */
    if (ep_state(e) == RMR_EP_HALF_OPEN) {
        if (o != RMR_OUT_SUCCESS) {
            eject_for(b, e, now);
            b->st.ejections_failures++;
            record(b, e, now, EV_REEJECTED, R_PROBE_FAILED, &ns);
        } else if (e->probes_ok < e->probes_taken && ++e->probes_ok >= b->conf.half_open_probes) {
            b->st.readmissions++;
            readmit(b, e, now, R_PROBES_PASSED, &ns);
        }
    }
    pthread_mutex_unlock(&b->lock);
    notes_emit(b, &ns);
}

void rmr_breaker_report(rmr_breaker_t *b, int i, rmr_outcome_t o, uint64_t latency_us, int probe,
                        uint64_t now_ms)
{
    struct ep *e = ep_get(b, i);
    if (!e)
        return;
    if (probe) {
        report_probe(b, e, o, now_ms);
        return;
    }
    unsigned cf = atomic_load_explicit(&b->cf, memory_order_relaxed);
    if (cf == 0 || ep_state(e) != RMR_EP_HEALTHY)
        return;
    /* Resets and connect failures end before the endpoint served anything: no latency. */
    if (o == RMR_OUT_SUCCESS || o == RMR_OUT_5XX || o == RMR_OUT_TIMEOUT) {
        atomic_fetch_add_explicit(&e->lat_sum_us, latency_us, memory_order_relaxed);
        atomic_fetch_add_explicit(&e->lat_n, 1, memory_order_relaxed);
    }
    if (o == RMR_OUT_SUCCESS) {
        /* Read first: a store on every success would bounce the line between workers. */
        if (atomic_load_explicit(&e->consec, memory_order_relaxed))
            atomic_store_explicit(&e->consec, 0, memory_order_relaxed);
        return;
    }
    if (atomic_fetch_add_explicit(&e->consec, 1, memory_order_relaxed) + 1 < cf)
        return;
    struct notes ns;
    notes_init(&ns);
    pthread_mutex_lock(&b->lock);
    /* Since the add, another worker may have ejected it, a success may have ended the run, or
     * detection may have been turned off. */
    uint32_t need = b->conf.consecutive_failures;
    if (need && ep_state(e) == RMR_EP_HEALTHY &&
        atomic_load_explicit(&e->consec, memory_order_relaxed) >= need) {
        if (!try_eject(b, e, now_ms, R_CONSECUTIVE, &ns))
            atomic_store_explicit(&e->consec, 0, memory_order_relaxed);
    }
    pthread_mutex_unlock(&b->lock);
    notes_emit(b, &ns);
}

rmr_ep_state_t rmr_breaker_state(rmr_breaker_t *b, int i, uint64_t now_ms)
{
    struct ep *e = ep_get(b, i);
    if (!e)
        return RMR_EP_HEALTHY;
    int s = ep_state(e);
    if (s != RMR_EP_EJECTED || now_ms < atomic_load_explicit(&e->until_ms, memory_order_relaxed))
        return (rmr_ep_state_t)s;
    struct notes ns;
    notes_init(&ns);
    pthread_mutex_lock(&b->lock);
    expire(b, e, now_ms, &ns);
    s = ep_state(e);
    pthread_mutex_unlock(&b->lock);
    notes_emit(b, &ns);
    return (rmr_ep_state_t)s;
}

/* ---- tick: ejections that ended, latency outliers ---- */

struct cand {
    struct ep *e;
    double mean;
};

static int cmp_cand(const void *pa, const void *pb)
{
    double a = ((const struct cand *)pa)->mean, b = ((const struct cand *)pb)->mean;
    return (a > b) - (a < b);
}

/* Ends the interval: ejects latency outliers among healthy members with enough samples, then
 * resets every endpoint's samples. */
static void latency_check(rmr_breaker_t *b, uint64_t now, struct notes *ns)
{
    int n = atomic_load_explicit(&b->n_eps, memory_order_relaxed);
    bool on = b->conf.consecutive_failures > 0 && b->conf.latency_factor > 0;
    struct cand *c = on && n >= 3 ? malloc((size_t)n * sizeof(*c)) : NULL;
    size_t k = 0;
    for (int i = 0; i < n; i++) {
        struct ep *e = ep_at(b, i);
        /* A report between the two exchanges may land half in each interval; it is one sample. */
        uint64_t sum = atomic_exchange_explicit(&e->lat_sum_us, 0, memory_order_relaxed);
        uint64_t cnt = atomic_exchange_explicit(&e->lat_n, 0, memory_order_relaxed);
        e->mean_us = cnt ? sum / cnt : 0;
        if (c && e->member && ep_state(e) == RMR_EP_HEALTHY && cnt >= MIN_SAMPLES)
            c[k++] = (struct cand){e, (double)sum / (double)cnt};
    }
    if (k >= 3) {
        qsort(c, k, sizeof(*c), cmp_cand);
        /* Slowest first, so that the worst outliers get the ejections the percentage allows.
         * The median is of the others: with few endpoints the outlier would pull it up. */
        for (size_t p = k; p-- > 0;) {
            size_t m = k - 1;
#define OTHER(j) c[(j) < p ? (j) : (j) + 1].mean
            double med = m % 2 ? OTHER(m / 2) : (OTHER(m / 2 - 1) + OTHER(m / 2)) / 2;
#undef OTHER
            double mean = c[p].mean;
            if (mean > b->conf.latency_factor * med && mean - med >= b->conf.latency_min_us)
                try_eject(b, c[p].e, now, R_LATENCY, ns);
        }
    }
    free(c);
}

void rmr_breaker_tick(rmr_breaker_t *b, uint64_t now_ms)
{
    if (now_ms < atomic_load_explicit(&b->next_due_ms, memory_order_relaxed))
        return;
    if (pthread_mutex_trylock(&b->lock) != 0)
        return;
    struct notes ns;
    notes_init(&ns);
    if (now_ms > b->last_now_ms)
        b->last_now_ms = now_ms;
    if (now_ms >= b->interval_end_ms) {
        latency_check(b, now_ms, &ns);
        b->interval_end_ms = now_ms + b->conf.interval_ms;
    }
    uint64_t next = b->interval_end_ms;
    int n = atomic_load_explicit(&b->n_eps, memory_order_relaxed);
    for (int i = 0; i < n; i++) {
        struct ep *e = ep_at(b, i);
        expire(b, e, now_ms, &ns);
        uint64_t until = atomic_load_explicit(&e->until_ms, memory_order_relaxed);
        if (ep_state(e) == RMR_EP_EJECTED && until < next)
            next = until;
    }
    atomic_store_explicit(&b->next_due_ms, next, memory_order_relaxed);
    pthread_mutex_unlock(&b->lock);
    notes_emit(b, &ns);
}

void rmr_breaker_get_stats(rmr_breaker_t *b, rmr_breaker_stats_t *out)
{
    pthread_mutex_lock(&b->lock);
    *out = b->st;
    out->ejected_now = 0;
    int n = atomic_load_explicit(&b->n_eps, memory_order_relaxed);
    for (int i = 0; i < n; i++) {
        struct ep *e = ep_at(b, i);
        out->ejected_now += e->member && ep_state(e) != RMR_EP_HEALTHY;
    }
    pthread_mutex_unlock(&b->lock);
}

/* ---- JSON ---- */

/* Writes what fits of the output and counts all of it, like snprintf. */
struct jw {
    char *out;
    size_t cap, len;
};

static void jw_put(struct jw *w, const char *s, size_t n)
{
    if (w->len < w->cap) {
        size_t room = w->cap - w->len;
        memcpy(w->out + w->len, s, n < room ? n : room);
    }
    w->len += n;
}

static void jw_str(struct jw *w, const char *s)
{
    jw_put(w, s, strlen(s));
}

static void jw_u64(struct jw *w, uint64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof(tmp), "%llu", (unsigned long long)v);
    jw_put(w, tmp, (size_t)n);
}

/* A JSON string literal of s. */
static void jw_quoted(struct jw *w, const char *s)
{
    jw_put(w, "\"", 1);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            char esc[2] = {'\\', (char)ch};
            jw_put(w, esc, 2);
        } else if (ch < 0x20) {
            char esc[8];
            snprintf(esc, sizeof(esc), "\\u%04x", ch);
            jw_put(w, esc, 6);
        } else {
            jw_put(w, s, 1);
        }
    }
    jw_put(w, "\"", 1);
}

size_t rmr_breaker_render_json(rmr_breaker_t *b, char *out, size_t cap, uint64_t now_ms)
{
    struct jw w = {out, cap, 0};
    struct notes ns;
    notes_init(&ns);
    pthread_mutex_lock(&b->lock);
    int n = atomic_load_explicit(&b->n_eps, memory_order_relaxed);
    bool first = true;
    jw_str(&w, "[");
    for (int i = 0; i < n; i++) {
        struct ep *e = ep_at(b, i);
        if (!e->member)
            continue;
        expire(b, e, now_ms, &ns);
        decay(b, e, now_ms);
        int s = ep_state(e);
        uint64_t until = atomic_load_explicit(&e->until_ms, memory_order_relaxed);
        jw_str(&w, first ? "{\"address\":" : ",{\"address\":");
        first = false;
        jw_quoted(&w, e->addr);
        jw_str(&w, ",\"state\":\"");
        jw_str(&w, state_names[s]);
        jw_str(&w, "\",\"consecutive_failures\":");
        jw_u64(&w, atomic_load_explicit(&e->consec, memory_order_relaxed));
        jw_str(&w, ",\"ejections\":");
        jw_u64(&w, e->ejections);
        jw_str(&w, ",\"ejected_until_ms\":");
        jw_u64(&w, s == RMR_EP_EJECTED ? since(until, now_ms) : 0);
        jw_str(&w, ",\"mean_latency_us\":");
        jw_u64(&w, e->mean_us);
        jw_str(&w, ",\"history\":[");
        unsigned from = e->hist_n > HISTORY ? e->hist_n - HISTORY : 0;
        for (unsigned h = from; h < e->hist_n; h++) {
            const struct history *ev = &e->hist[h % HISTORY];
            jw_str(&w, h == from ? "{\"at_ms_ago\":" : ",{\"at_ms_ago\":");
            jw_u64(&w, since(now_ms, ev->at_ms));
            jw_str(&w, ",\"event\":\"");
            jw_str(&w, event_names[ev->event]);
            jw_str(&w, "\",\"reason\":\"");
            jw_str(&w, reason_names[ev->reason]);
            jw_str(&w, "\"}");
        }
        jw_str(&w, "]}");
    }
    jw_str(&w, "]");
    pthread_mutex_unlock(&b->lock);
    notes_emit(b, &ns);
    if (cap > 0)
        out[w.len < cap ? w.len : cap - 1] = '\0';
    return w.len;
}
