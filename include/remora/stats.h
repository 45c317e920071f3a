/*
 * Statistics. Each worker writes only its own slot (no atomic read-modify-write on the request
 * path); the admin thread sums the slots with relaxed loads. Per-service counters live in a
 * registry keyed by service name that outlives config reloads, so counts survive a reload.
 *
 * Threads: rmr_stats_service() on the main thread only (while building a config view);
 * RMR_STAT_* from the worker that owns slot w; rmr_stats_render_* from the main thread.
 */
#ifndef REMORA_STATS_H
#define REMORA_STATS_H

#include <stddef.h>
#include <stdint.h>

#define RMR_MAX_WORKERS 64

/* Latency histogram bounds in microseconds; one more bucket for +Inf. */
#define RMR_HIST_BUCKETS 16
extern const uint64_t rmr_hist_bounds_us[RMR_HIST_BUCKETS];

typedef enum rmr_uerr {
    RMR_UERR_CONNECT_FAILURE = 0,
    RMR_UERR_CONNECT_TIMEOUT,
    RMR_UERR_RESET,
    RMR_UERR_TIMEOUT,
    RMR_UERR_BAD_RESPONSE,
    RMR_UERR_NO_ENDPOINT,
    RMR_UERR_COUNT
} rmr_uerr_t;
extern const char *const rmr_uerr_names[RMR_UERR_COUNT];

typedef struct rmr_hist {
    uint64_t bucket[RMR_HIST_BUCKETS + 1];
    uint64_t sum_us;
    uint64_t count;
} rmr_hist_t;

/* Why a request was tried again (as rmr_retry_should's reasons). */
#define RMR_RETRY_REASONS 8
extern const char *const rmr_retry_reason_names[RMR_RETRY_REASONS];
/* The index of a reason name; the last one ("status") for an unknown one. */
int rmr_retry_reason_of(const char *reason);
/* Circuit-breaker limits, as rmr_limit_t. */
extern const char *const rmr_limit_names[4];

/* One worker's counters for one service (or for the whole worker). */
typedef struct rmr_counters {
    uint64_t requests;
    uint64_t retries[RMR_RETRY_REASONS];
    uint64_t retries_refused; /* wanted, but the budget or max_retries said no */
    uint64_t overflows[4];    /* requests refused by a circuit-breaker limit */
    uint64_t rate_limited;
    uint64_t responses[6]; /* index = status / 100, 0 unused */
    uint64_t upstream_errors[RMR_UERR_COUNT];
    uint64_t upstream_cx_total;
    uint64_t upstream_cx_active;
    rmr_hist_t latency;
} __attribute__((aligned(64))) rmr_counters_t;

/* One worker's counters for one endpoint. */
typedef struct rmr_ep_counters {
    uint64_t active;   /* requests in flight */
    uint64_t requests; /* requests sent */
    uint64_t failures; /* connect failures, resets, bad responses */
} rmr_ep_counters_t;

typedef struct rmr_ep_stats {
    char *address;
    struct rmr_ep_stats *next;
    rmr_ep_counters_t w[RMR_MAX_WORKERS];
} rmr_ep_stats_t;

typedef struct rmr_svc_stats {
    char *name;
    rmr_ep_stats_t *endpoints; /* a list; appended under the registry lock, never removed */
    rmr_counters_t w[RMR_MAX_WORKERS];
} rmr_svc_stats_t;

typedef enum rmr_tlserr {
    RMR_TLSERR_HANDSHAKE = 0, /* any other handshake failure */
    RMR_TLSERR_NO_PEER_CERT,  /* mTLS: the peer presented no certificate */
    RMR_TLSERR_BAD_PEER_CERT, /* it did not verify against the trust bundle */
    RMR_TLSERR_IDENTITY,      /* it verified, but its identity is not allowed */
    RMR_TLSERR_PROTOCOL,      /* version or cipher not acceptable */
    RMR_TLSERR_COUNT
} rmr_tlserr_t;
extern const char *const rmr_tlserr_names[RMR_TLSERR_COUNT];
/* The index of a tls_error_kind() name; RMR_TLSERR_HANDSHAKE for an unknown one. */
rmr_tlserr_t rmr_tlserr_of(const char *kind);

/* HTTP/2 protection events. */
typedef enum rmr_h2err {
    RMR_H2ERR_PROTOCOL = 0, /* the peer broke RFC 9113: GOAWAY sent */
    RMR_H2ERR_RAPID_RESET,
    RMR_H2ERR_CONTROL_FLOOD,
    RMR_H2ERR_CONTINUATION_FLOOD,
    RMR_H2ERR_HEADERS_TOO_LARGE,
    RMR_H2ERR_COUNT
} rmr_h2err_t;
extern const char *const rmr_h2err_names[RMR_H2ERR_COUNT];

/* Whole-worker counters beyond the per-service ones. */
typedef struct rmr_worker_stats {
    uint64_t downstream_cx_total;
    uint64_t downstream_cx_active;
    uint64_t downstream_rq_total;
    uint64_t local_replies[6];
    uint64_t bad_requests;
    uint64_t config_swaps;
    uint64_t h2_connections; /* downstream connections that spoke HTTP/2 */
    uint64_t h2_streams;     /* HTTP/2 requests received */
    uint64_t h2_errors[RMR_H2ERR_COUNT];
    uint64_t tls_handshakes; /* downstream, completed and admitted */
    uint64_t tls_resumed;
    uint64_t tls_upstream_handshakes;
    uint64_t tls_errors[RMR_TLSERR_COUNT]; /* both directions */
    rmr_hist_t latency;
} __attribute__((aligned(64))) rmr_worker_stats_t;

extern rmr_worker_stats_t rmr_wstats[RMR_MAX_WORKERS];
extern uint64_t rmr_config_reloads, rmr_config_reload_failures;

/* The stats of service name, created on first use; never freed. NULL on allocation failure.
 * Any thread. */
rmr_svc_stats_t *rmr_stats_service(const char *name);
/* The stats of one endpoint of s, by address, created on first use; never freed. Any thread. */
rmr_ep_stats_t *rmr_stats_endpoint(rmr_svc_stats_t *s, const char *address);
/* Sums an endpoint's counters over nworkers. */
void rmr_stats_endpoint_sum(const rmr_ep_stats_t *e, unsigned nworkers, rmr_ep_counters_t *out);

#define RMR_STAT_ADD(field, n) __atomic_store_n(&(field), (field) + (n), __ATOMIC_RELAXED)
#define RMR_STAT_INC(field) RMR_STAT_ADD(field, 1)
#define RMR_STAT_DEC(field) __atomic_store_n(&(field), (field)-1, __ATOMIC_RELAXED)

void rmr_hist_add(rmr_hist_t *h, uint64_t us);

/* Renders all stats; malloc'd text, caller frees. nworkers: slots in use. */
char *rmr_stats_render_json(unsigned nworkers);
char *rmr_stats_render_prometheus(unsigned nworkers);

#endif
