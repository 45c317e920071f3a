/*
 * Load balancing over a cluster's endpoints (or a subset of them), as one worker sees them.
 */
#include "proxy.h"

/* The i-th endpoint of the candidates: the subset's, or the cluster's when sub is NULL. */
static inline endpoint_t *nth(cluster_t *c, const subset_t *sub, uint32_t i)
{
    return &c->endpoints[sub ? sub->idx[i] : i];
}

static endpoint_t *lb_pick(worker_t *w, cluster_t *c, const subset_t *sub, uint32_t *at)
{
    uint32_t n = sub ? sub->n : c->n_endpoints;
    if (n == 0)
        return NULL;
    uint32_t i;
    if (n == 1) {
        i = 0;
    } else {
        switch (c->conf->lb) {
        case RMR_LB_LEAST_REQUEST: {
            /* Power of two choices: two distinct endpoints at random, the less busy wins; ties
             * go to the first, which is random too. */
            uint64_t r = worker_rand(w);
            uint32_t a = (uint32_t)(r % n);
            uint32_t b = (uint32_t)((r >> 32) % (n - 1));
            if (b >= a)
                b++;
            i = nth(c, sub, b)->active < nth(c, sub, a)->active ? b : a;
            break;
        }
        case RMR_LB_RANDOM:
        case RMR_LB_RING_HASH: /* with no hash key yet, a ring is a random pick */
            i = (uint32_t)(worker_rand(w) % n);
            break;
        case RMR_LB_ROUND_ROBIN:
        default:
            /* a subset keeps its own turn: the cluster's would be skewed by the others' picks */
            i = (sub ? ((subset_t *)sub)->rr++ : c->rr++) % n;
            break;
        }
    }
    *at = i;
    return nth(c, sub, i);
}

/* May a request go to ep now (outlier detection)? Takes a half-open probe slot when it says so. */
static int usable(worker_t *w, cluster_t *c, endpoint_t *ep, int *probe)
{
    *probe = 0;
    return !c->outlier || rmr_breaker_allow(c->breaker, ep->bidx, w->loop.now_ms, probe);
}

/*
 * Picks an endpoint for a request among the subset's (all the cluster's when sub is NULL): the
 * load balancer's choice, unless outlier detection keeps it out or it is `avoid` (the endpoint
 * a retry leaves); then the next usable one. NULL when none is usable. *probe: the request is a
 * half-open trial of the endpoint.
 */
endpoint_t *cluster_pick(worker_t *w, cluster_t *c, const subset_t *sub, const endpoint_t *avoid,
                         int *probe)
{
    *probe = 0;
    uint32_t start = 0, n = sub ? sub->n : c->n_endpoints;
    endpoint_t *ep = lb_pick(w, c, sub, &start);
    if (!ep)
        return NULL;
    if (ep != avoid || n == 1) {
        if (usable(w, c, ep, probe))
            return ep;
    }
    int avoid_in = ep == avoid;
    for (uint32_t i = 1; i < n; i++) {
        endpoint_t *e = nth(c, sub, (start + i) % n);
        if (e == avoid) {
            avoid_in = 1;
            continue;
        }
        if (usable(w, c, e, probe))
            return e;
    }
    if (avoid && avoid_in && usable(w, c, (endpoint_t *)avoid, probe))
        return (endpoint_t *)avoid;
    return NULL;
}
