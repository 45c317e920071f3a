/*
 * The circuit breaker of a service: limits on what is in flight (connections, pending requests,
 * requests, retries) and outlier detection over the service's endpoints (ejection after
 * consecutive failures or for latency, with doubling ejection times, a cap on the share of
 * endpoints ejected at once, and half-open probes before re-admission).
 *
 * One breaker per service, shared by every worker thread. All functions are thread-safe. The
 * request path (acquire/release, allow/report of a healthy endpoint) uses only atomics; a mutex
 * guards endpoint state changes, which are rare. Times are monotonic milliseconds (now_ms) given
 * by the caller, so the module never reads a clock.
 */
#ifndef REMORA_BREAKER_H
#define REMORA_BREAKER_H

#include <stddef.h>
#include <stdint.h>

/* The limits on what is in flight at once across the service. */
typedef enum {
    RMR_LIM_CONNECTIONS = 0, /* upstream connections open */
    RMR_LIM_PENDING,         /* requests waiting for a connection */
    RMR_LIM_REQUESTS,        /* requests in flight */
    RMR_LIM_RETRIES,         /* retries in flight */
    RMR_LIM__N
} rmr_limit_t;

typedef enum {
    RMR_EP_HEALTHY = 0, /* takes traffic */
    RMR_EP_EJECTED,     /* takes none until its ejection time is over */
    RMR_EP_HALF_OPEN /* takes half_open_probes trial requests, then is re-admitted or re-ejected */
} rmr_ep_state_t;

/* The outcome of one attempt to an endpoint. Every outcome but SUCCESS is a failure. */
typedef enum {
    RMR_OUT_SUCCESS = 0,
    RMR_OUT_5XX,
    RMR_OUT_RESET,
    RMR_OUT_CONNECT_FAILURE,
    RMR_OUT_TIMEOUT
} rmr_outcome_t;

typedef struct rmr_breaker_conf {
    uint32_t max[RMR_LIM__N];      /* indexed by rmr_limit_t; 0 = unlimited */
    uint32_t consecutive_failures; /* failures in a row that eject; 0 = outlier detection off
                                      (latency ejection too) */
    uint32_t interval_ms;          /* latency outlier evaluation period, default 1000 (0 = 1000) */
    uint32_t base_ejection_ms;     /* first ejection time, default 5000 */
    uint32_t max_ejection_ms;      /* cap of the doubling ejection time, default 300000; also how
                                      long an endpoint must stay healthy for its ejection count to
                                      reset (taken as base_ejection_ms when smaller) */
    uint32_t max_ejection_percent; /* of the current endpoint set ejected or half-open at once,
                                      default 10 (as Envoy); when > 0 and the set has >= 2
                                      endpoints, one endpoint may always be ejected */
    uint32_t half_open_probes;     /* successful trial requests that re-admit, default 1 (0 = 1) */
    double latency_factor;         /* default 3.0: an endpoint whose mean latency over the interval
                                      exceeds factor x the median of its peers' means is a latency
                                      outlier; <= 0 turns latency ejection off */
    uint32_t latency_min_us;       /* default 10000: ...and exceeds that median by at least this
                                      much; it also needs >= 10 samples in the interval */
} rmr_breaker_conf_t;

typedef struct rmr_breaker rmr_breaker_t;

/*
 * The process-wide breaker of service `name` (created on first call with the defaults of
 * rmr_breaker_conf_defaults, lives until rmr_breaker_free_all). Reloads call it again with the
 * same name and get the same object, so counts of requests in flight and endpoint states survive
 * a config reload. The name is copied. Returns NULL when out of memory. Any thread.
 */
rmr_breaker_t *rmr_breaker_get(const char *name);
/* Frees every breaker. At exit only, once no thread uses any breaker. */
void rmr_breaker_free_all(void);
/*
 * Replaces the configuration of b; takes effect at once (a lowered max refuses acquires until the
 * count drops below it). Turning outlier detection off re-admits every ejected endpoint. c is
 * copied. Any thread.
 */
void rmr_breaker_configure(rmr_breaker_t *b, const rmr_breaker_conf_t *c);
/* Fills c with the defaults: max = {1024, 1024, 1024, 3} (Envoy's), consecutive_failures 5, and the
 * defaults given beside each field above. */
void rmr_breaker_conf_defaults(rmr_breaker_conf_t *c);

/*
 * Limits. Acquire takes one unit of `which` and returns 1, or returns 0 (and counts an overflow
 * of that limit) when the count is already at the max. A limit of 0 always grants but still
 * counts. Each granted acquire must be matched by one release. Lock-free.
 */
int rmr_breaker_acquire(rmr_breaker_t *b, rmr_limit_t which);
void rmr_breaker_release(rmr_breaker_t *b, rmr_limit_t which);
/* The units of `which` held now. */
uint32_t rmr_breaker_count(rmr_breaker_t *b, rmr_limit_t which);
/* The acquires of `which` refused since the breaker was created. */
uint64_t rmr_breaker_overflows(rmr_breaker_t *b, rmr_limit_t which);

/*
 * Endpoints are named by address text ("127.0.0.1:8080", copied). Returns the endpoint's index,
 * creating it; the index is the same for the same address for the life of the breaker (across
 * reloads). -1 when out of memory. A new endpoint belongs to the current endpoint set until the
 * next rmr_breaker_set_endpoints that leaves it out. Takes the mutex: call it when building a
 * config, not per request.
 */
int rmr_breaker_endpoint(rmr_breaker_t *b, const char *addr);
/*
 * Sets the current endpoint set of the service (creating endpoints not yet known). Only these
 * count toward max_ejection_percent, appear in rmr_breaker_render_json and in ejected_now; the
 * others keep their state (in case they come back) but are not ejected any more. Addresses
 * that cannot be created for lack of memory are left out.
 */
void rmr_breaker_set_endpoints(rmr_breaker_t *b, const char *const *addrs, size_t n);

/*
 * May a request go to endpoint i now? HEALTHY: 1. EJECTED: 0 until its ejection time is over,
 * then it becomes HALF_OPEN. HALF_OPEN: 1 while fewer than half_open_probes trial requests have
 * been let through in this half-open round (the call takes a probe slot and sets *probe to 1;
 * that request must then be reported with probe = 1; a slot not reported within
 * max(base_ejection_ms, interval_ms) is given back, so a lost probe cannot keep the endpoint
 * half-open for good), else 0. *probe is 0 otherwise. An index that is not an endpoint (such as -1
 * from rmr_breaker_endpoint) is allowed. Lock-free for a healthy endpoint.
 */
int rmr_breaker_allow(rmr_breaker_t *b, int i, uint64_t now_ms, int *probe);
/*
 * The outcome of a request to endpoint i (latency_us of the attempt). Failures (all but SUCCESS)
 * in a row reaching consecutive_failures eject a healthy endpoint for base * 2^(ejections - 1) ms
 * (capped by max_ejection_ms), unless max_ejection_percent would be exceeded: then the ejection is
 * counted as refused, the run starts over and the endpoint stays healthy. A probe's failure
 * re-ejects at once with doubled time; half_open_probes successful probes re-admit it (HEALTHY,
 * consecutive failures reset). The ejection count resets to 0 once the endpoint has stayed
 * healthy for max_ejection_ms. Reports of non-probe requests to an endpoint that is not healthy
 * (they were in flight when it was ejected) change nothing. probe: the value rmr_breaker_allow set.
 * Latencies of SUCCESS, 5XX and TIMEOUT outcomes of healthy endpoints are the latency samples.
 * Lock-free unless the state changes.
 */
void rmr_breaker_report(rmr_breaker_t *b, int i, rmr_outcome_t o, uint64_t latency_us, int probe,
                        uint64_t now_ms);
/*
 * Called often (each worker calls it about every 100 ms; one atomic load when nothing is due;
 * a trylock lets only one caller do the work): ejections that ended become HALF_OPEN; every
 * interval_ms (the first call counts as the end of an interval), the latency outlier check over
 * HEALTHY endpoints of the current set with >= 10 samples (needs at least 3 of them, so that each
 * has peers; each is compared with the median of the OTHERS' means), then the interval's samples
 * reset.
 */
void rmr_breaker_tick(rmr_breaker_t *b, uint64_t now_ms);
/* The state of endpoint i (an ejection that is over makes it HALF_OPEN first); HEALTHY for an
 * index that is not an endpoint. */
rmr_ep_state_t rmr_breaker_state(rmr_breaker_t *b, int i, uint64_t now_ms);

/*
 * Counters for metrics: ejections by reason (consecutive failures, including re-ejections of
 * failed probes; latency), re-admissions by probes, refused ejections (percent cap), probes let
 * through;
 * ejected_now is the endpoints of the current set that are EJECTED or HALF_OPEN.
 */
typedef struct rmr_breaker_stats {
    uint64_t ejections_failures, ejections_latency, readmissions, ejections_refused, probes;
    uint32_t ejected_now;
} rmr_breaker_stats_t;
void rmr_breaker_get_stats(rmr_breaker_t *b, rmr_breaker_stats_t *out);

/*
 * Writes JSON of the state of every endpoint of the current set: an array of objects
 * {"address","state":"healthy|ejected|half-open","consecutive_failures","ejections",
 * "ejected_until_ms" (remaining ms, 0 when not ejected),"mean_latency_us" (over the last
 * completed interval),"history":[{"at_ms_ago","event":"ejected|half-open|readmitted|re-ejected",
 * "reason":"consecutive-failures|latency|probe-failed|probes-passed|ejection-over|
 * detection-off"}...]} with the last 8 events per endpoint, oldest first. Writes at most cap
 * bytes, NUL-terminated when cap > 0 (out may be NULL when cap is 0); returns the length it
 * needed, without the NUL (like snprintf).
 */
size_t rmr_breaker_render_json(rmr_breaker_t *b, char *out, size_t cap, uint64_t now_ms);
/*
 * Sets the state change callback for logs, (service, address, event, reason) with the words of
 * the JSON history; NULL for none. It is called outside the breaker's mutex, from whichever
 * thread caused the change; the strings live as long as the breaker.
 */
void rmr_breaker_set_logger(void (*fn)(const char *svc, const char *addr, const char *event,
                                       const char *reason));

#endif
