/*
 * The filters of a view: each service's circuit breaker, retry budget and idempotency store,
 * each route's retry policy and rate limit, compiled from the mesh's protobuf messages when a
 * worker builds its view of a snapshot. The state itself lives in filters/, shared by the
 * workers and kept across reloads by name; a view only holds pointers to it.
 */
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "remora/log.h"
#include "remora/v1/mesh.pb-c.h"

static uint32_t dur_ms(const Remora__V1__Duration *d, uint32_t def)
{
    if (!d)
        return def;
    uint64_t ms = (uint64_t)d->seconds * 1000 + (uint64_t)d->nanos / 1000000;
    return ms > UINT32_MAX ? UINT32_MAX : (uint32_t)ms;
}

/* ---- idempotency stores, one per service name, for the life of the process ---- */

static pthread_mutex_t idem_lock = PTHREAD_MUTEX_INITIALIZER;
static struct idem_reg {
    char *name;
    rmr_idem_t *store;
    struct idem_reg *next;
} * idem_regs;

static rmr_idem_t *idem_get(const char *name, const Remora__V1__Idempotency *c)
{
    uint64_t max_entries = c->max_entries ? c->max_entries : 100000;
    uint32_t ttl = dur_ms(c->ttl, 600000);
    uint64_t max_resp = c->max_response_bytes ? c->max_response_bytes : 65536;
    pthread_mutex_lock(&idem_lock);
    struct idem_reg *r;
    for (r = idem_regs; r; r = r->next)
        if (!strcmp(r->name, name))
            break;
    rmr_idem_t *s = NULL;
    if (r) {
        s = r->store;
        rmr_idem_configure(s, max_entries, ttl, max_resp);
    } else if ((r = calloc(1, sizeof(*r))) && (r->name = strdup(name)) &&
               (r->store = rmr_idem_new(max_entries, ttl, max_resp))) {
        r->next = idem_regs;
        idem_regs = r;
        s = r->store;
    } else if (r) {
        free(r->name);
        free(r);
    }
    pthread_mutex_unlock(&idem_lock);
    return s;
}

/* Calls fn for each idempotency store (admin metrics). */
void filters_idem_each(void (*fn)(const char *name, rmr_idem_t *s, void *arg), void *arg)
{
    pthread_mutex_lock(&idem_lock);
    for (struct idem_reg *r = idem_regs; r; r = r->next)
        fn(r->name, r->store, arg);
    pthread_mutex_unlock(&idem_lock);
}

static void breaker_log(const char *svc, const char *addr, const char *event, const char *reason)
{
    RMR_WARN("outlier: service %s endpoint %s %s (%s)", svc, addr, event, reason);
}

/* The breaker's name for a service: "inbound|x" shares nothing with "x". */
static int cluster_setup(cluster_t *c)
{
    const rmr_service_conf_t *sc = c->conf;
    const Remora__V1__Service *pb = sc->pb;
    c->breaker = rmr_breaker_get(sc->name);
    c->budget = rmr_budget_get(sc->name);
    if (!c->breaker || !c->budget)
        return -1;
    rmr_breaker_conf_t bc;
    rmr_breaker_conf_defaults(&bc);
    /* limits only where the mesh sets them: a sidecar does not cap what it was not told to */
    memset(bc.max, 0, sizeof(bc.max));
    const Remora__V1__CircuitBreaker *cb = pb ? pb->circuit_breaker : NULL;
    /* the inbound service takes the mesh entry's idempotency, not its caller-side limits */
    int inbound = !strncmp(sc->name, "inbound|", 8);
    if (cb && !inbound) {
        bc.max[RMR_LIM_CONNECTIONS] = cb->max_connections;
        bc.max[RMR_LIM_PENDING] = cb->max_pending_requests;
        bc.max[RMR_LIM_REQUESTS] = cb->max_requests;
        bc.max[RMR_LIM_RETRIES] = cb->max_retries;
        const Remora__V1__OutlierDetection *od = cb->outlier_detection;
        if (od) {
            bc.consecutive_failures = od->consecutive_failures ? od->consecutive_failures : 5;
            bc.interval_ms = dur_ms(od->interval, bc.interval_ms);
            bc.base_ejection_ms = dur_ms(od->base_ejection, bc.base_ejection_ms);
            bc.max_ejection_ms = dur_ms(od->max_ejection, bc.max_ejection_ms);
            if (od->max_ejection_percent)
                bc.max_ejection_percent = od->max_ejection_percent;
            if (od->half_open_probes)
                bc.half_open_probes = od->half_open_probes;
            c->outlier = 1;
        }
    }
    rmr_breaker_configure(c->breaker, &bc);
    /* DNS may give many endpoints: the list is on the heap, not the stack */
    const char **addrs = malloc((c->n_endpoints ? c->n_endpoints : 1) * sizeof(*addrs));
    if (!addrs)
        return -1;
    for (uint32_t k = 0; k < c->n_endpoints; k++) {
        addrs[k] = c->endpoints[k].conf->addr.text;
        c->endpoints[k].bidx = rmr_breaker_endpoint(c->breaker, addrs[k]);
        if (c->endpoints[k].bidx < 0) {
            free(addrs);
            return -1;
        }
    }
    rmr_breaker_set_endpoints(c->breaker, addrs, c->n_endpoints);
    free(addrs);
    if (inbound && pb && pb->idempotency && pb->idempotency->enabled) {
        c->idem = idem_get(sc->name, pb->idempotency);
        if (!c->idem)
            return -1;
    }
    return 0;
}

static int route_setup(route_rt_t *rt, const rmr_route_conf_t *rc)
{
    const Remora__V1__Route *pb = rc->pb;
    rmr_retry_policy_defaults(&rt->retry);
    rt->retry.attempts = 1;
    const Remora__V1__RetryPolicy *rp = pb ? pb->retry : NULL;
    if (rp) {
        rt->retry.attempts = rp->attempts ? rp->attempts : 1;
        rt->retry.per_try_ms = dur_ms(rp->per_try_timeout, 0);
        if (rp->n_on == 0) {
            rmr_retry_policy_add_on(&rt->retry, "connect-failure");
            rmr_retry_policy_add_on(&rt->retry, "reset");
            rmr_retry_policy_add_on(&rt->retry, "refused-stream");
        }
        for (size_t k = 0; k < rp->n_on; k++)
            if (rmr_retry_policy_add_on(&rt->retry, rp->on[k]) < 0)
                RMR_WARN("route %s: retry.on: unknown \"%s\" ignored", rc->name, rp->on[k]);
        if (rp->backoff) {
            rt->retry.base_ms = dur_ms(rp->backoff->base_, rt->retry.base_ms);
            rt->retry.max_ms = dur_ms(rp->backoff->max, rt->retry.base_ms * 10);
        }
        if (rp->budget && (rp->budget->percent > 0 || rp->budget->min_per_second)) {
            /* as written, 0 included; an empty block keeps the defaults (20%, 10/s) */
            rt->retry.budget_percent = rp->budget->percent;
            rt->retry.budget_min_per_s = rp->budget->min_per_second;
        }
        rt->retry.non_idempotent =
            rp->non_idempotent == REMORA__V1__NON_IDEMPOTENT__WITH_KEY ? RMR_NONIDEM_WITH_KEY
            : rp->non_idempotent == REMORA__V1__NON_IDEMPOTENT__ALWAYS ? RMR_NONIDEM_ALWAYS
                                                                       : RMR_NONIDEM_NEVER;
    }
    rt->deadline = rc->timeout_ms || rt->retry.attempts > 1;
    if (pb && pb->rate_limit && pb->rate_limit->requests_per_second > 0) {
        rt->bucket =
            rmr_bucket_get(rc->name, pb->rate_limit->requests_per_second, pb->rate_limit->burst);
        if (!rt->bucket)
            return -1;
    }
    return 0;
}

/* Once, before the workers start. */
void filters_init(void)
{
    rmr_breaker_set_logger(breaker_log);
}

int filters_view_setup(worker_t *w, view_t *v)
{
    for (uint32_t i = 0; i < v->n_clusters; i++)
        if (cluster_setup(&v->clusters[i]) < 0)
            return -1;
    const rmr_config_t *cfg = v->config;
    v->routes = calloc(cfg->n_routes ? cfg->n_routes : 1, sizeof(route_rt_t));
    if (!v->routes)
        return -1;
    for (size_t i = 0; i < cfg->n_routes; i++)
        if (route_setup(&v->routes[i], &cfg->routes[i]) < 0)
            return -1;
    return gray_view_setup(w, v);
}

void filters_view_free(view_t *v)
{
    gray_view_free(v);
    free(v->routes);
    v->routes = NULL;
}

/* Every worker calls this about every 100 ms: ejections end, latency outliers are found. */
void filters_tick(worker_t *w)
{
    view_t *v = w->view;
    if (!v)
        return;
    for (uint32_t i = 0; i < v->n_clusters; i++)
        if (v->clusters[i].outlier)
            rmr_breaker_tick(v->clusters[i].breaker, w->loop.now_ms);
}
