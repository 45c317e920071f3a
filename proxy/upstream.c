/*
 * Load balancing over a cluster's endpoints, as one worker sees them.
 */
#include "proxy.h"

static inline uint64_t rng_next(worker_t *w)
{
    /* xorshift64*: fast, and good enough to pick between endpoints */
    uint64_t x = w->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    w->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

endpoint_t *cluster_pick(worker_t *w, cluster_t *c)
{
    uint32_t n = c->n_endpoints;
    if (n == 0)
        return NULL;
    if (n == 1)
        return &c->endpoints[0];
    switch (c->conf->lb) {
    case RMR_LB_LEAST_REQUEST: {
        /* Power of two choices: two distinct endpoints at random, the less busy wins; ties go
         * to the first, which is random too. */
        uint64_t r = rng_next(w);
        uint32_t a = (uint32_t)(r % n);
        uint32_t b = (uint32_t)((r >> 32) % (n - 1));
        if (b >= a)
            b++;
        endpoint_t *ea = &c->endpoints[a], *eb = &c->endpoints[b];
        return eb->active < ea->active ? eb : ea;
    }
    case RMR_LB_RANDOM:
    case RMR_LB_RING_HASH: /* with no hash key yet, a ring is a random pick */
        return &c->endpoints[rng_next(w) % n];
    case RMR_LB_ROUND_ROBIN:
    default:
        return &c->endpoints[c->rr++ % n];
    }
}
