/*
 * Load balancing over a cluster's endpoints, as one worker sees them.
 */
#include "proxy.h"

static endpoint_t *lb_pick(worker_t *w, cluster_t *c)
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
        uint64_t r = worker_rand(w);
        uint32_t a = (uint32_t)(r % n);
        uint32_t b = (uint32_t)((r >> 32) % (n - 1));
        if (b >= a)
            b++;
        endpoint_t *ea = &c->endpoints[a], *eb = &c->endpoints[b];
        return eb->active < ea->active ? eb : ea;
    }
    case RMR_LB_RANDOM:
    case RMR_LB_RING_HASH: /* with no hash key yet, a ring is a random pick */
        return &c->endpoints[worker_rand(w) % n];
    case RMR_LB_ROUND_ROBIN:
    default:
        return &c->endpoints[c->rr++ % n];
    }
}

/* May a request go to ep now (outlier detection)? Takes a half-open probe slot when it says so. */
static int usable(worker_t *w, cluster_t *c, endpoint_t *ep, int *probe)
{
    *probe = 0;
    return !c->outlier || rmr_breaker_allow(c->breaker, ep->bidx, w->loop.now_ms, probe);
}

/*
 * Picks an endpoint for a request: the load balancer's choice, unless outlier detection keeps
 * it out or it is `avoid` (the endpoint a retry leaves); then the next usable one. NULL when
 * none is usable. *probe: the request is a half-open trial of the endpoint.
 */
endpoint_t *cluster_pick(worker_t *w, cluster_t *c, const endpoint_t *avoid, int *probe)
{
    *probe = 0;
    endpoint_t *ep = lb_pick(w, c);
    if (!ep)
        return NULL;
    if (ep != avoid || c->n_endpoints == 1) {
        if (usable(w, c, ep, probe))
            return ep;
    }
    uint32_t start = (uint32_t)(ep - c->endpoints);
    for (uint32_t i = 1; i < c->n_endpoints; i++) {
        endpoint_t *e = &c->endpoints[(start + i) % c->n_endpoints];
        if (e != avoid && usable(w, c, e, probe))
            return e;
    }
    if (avoid && usable(w, c, (endpoint_t *)avoid, probe))
        return (endpoint_t *)avoid;
    return NULL;
}
