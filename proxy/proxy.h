/*
 * Private types of the data plane: workers, their views of a config snapshot, upstream
 * clusters and connections.
 */
#ifndef REMORA_PROXY_H
#define REMORA_PROXY_H

#include <pthread.h>
#include <semaphore.h>
#include <stdint.h>

#include <llhttp.h>

#include "remora/buf.h"
#include "remora/config.h"
#include "remora/loop.h"
#include "remora/stats.h"
#include "remora/breaker.h"
#include "remora/idem.h"
#include "remora/retry.h"
#include "remora/gray.h"
#include "remora/match.h"
#include "remora/mirror.h"

typedef struct worker worker_t;
typedef struct view view_t;
typedef struct cluster cluster_t;
typedef struct endpoint endpoint_t;
typedef struct conn conn_t;

/* An intrusive doubly-linked list. */
typedef struct list {
    struct list *prev, *next;
} list_t;

static inline void list_init(list_t *l)
{
    l->prev = l->next = l;
}
static inline int list_empty(const list_t *l)
{
    return l->next == l;
}
static inline void list_push(list_t *head, list_t *n)
{
    n->next = head->next;
    n->prev = head;
    head->next->prev = n;
    head->next = n;
}
static inline void list_del(list_t *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}
#define list_entry(p, type, member) ((type *)((char *)(p)-offsetof(type, member)))

/* One endpoint of a cluster, as one worker sees it. */
struct endpoint {
    const rmr_endpoint_conf_t *conf;
    cluster_t *cluster;
    uint32_t active;          /* requests in flight from this worker */
    uint32_t nidle;           /* idle keep-alive connections */
    rmr_ep_counters_t *stats; /* this worker's slot, for /clusters */
    list_t idle;              /* of conn_t.link: idle HTTP/1 connections */
    list_t h2conns;           /* of conn_t.link: HTTP/2 connections, shared by streams */
    uint32_t nh2;
    int bidx; /* its index in the cluster's breaker */
};

/* A service of the config, as one worker sees it. */
struct cluster {
    const rmr_service_conf_t *conf;
    view_t *view;
    rmr_counters_t *stats; /* this worker's slot of the service's stats */
    uint32_t n_endpoints;
    uint32_t rr;
    endpoint_t *endpoints;
    /* filters/: process-wide state of the service, shared by the workers */
    rmr_breaker_t *breaker;
    rmr_budget_t *budget;
    rmr_idem_t *idem; /* inbound de-duplication; NULL when off */
    int outlier;      /* outlier detection configured */
    int routed;       /* routes name its host: a request none of them matches is not sent to
                         it by name (404) */
};

/* One worker's counters for one route and subset (gray.c). */
typedef struct rmr_subset_counters {
    uint64_t requests;
    uint64_t responses[6]; /* index = status / 100 */
    uint64_t mirrored;
} __attribute__((aligned(64))) rmr_subset_counters_t;
typedef struct rmr_subset_stats rmr_subset_stats_t;

/* The endpoints of a cluster that a label selector picks, as one view sees them. */
typedef struct subset {
    char *name;    /* "version=v2" as written ("" for all endpoints), for logs and stats */
    uint32_t n;    /* endpoints */
    uint32_t *idx; /* into the cluster's endpoints */
    uint32_t rr;   /* round robin within the subset (this worker's) */
    rmr_subset_stats_t *stats;
} subset_t;

/* A route's gray release (gray.c). */
typedef struct gray {
    subset_t all; /* every endpoint: the stats of a route without split */
    uint32_t n_split;
    subset_t *split;
    uint32_t weights[RMR_GRAY_SUBSETS_MAX];
    uint64_t ids[RMR_GRAY_SUBSETS_MAX];
    rmr_swrr_t swrr;                           /* this worker's weighted round robin */
    const char *sticky_header, *sticky_cookie; /* into the config's messages; NULL: none */
    const char *lane_header;                   /* NULL: the default, x-lane */
    uint32_t n_lanes;
    const char **lane_names;
    subset_t *lanes;
    subset_t mirror;
    uint32_t mirror_ppm; /* share of requests mirrored, per million */
    uint32_t delay_ppm, delay_ms, abort_ppm, abort_status;
    int fault_header; /* x-remora-fault honoured */
} gray_t;

/* A route's filters, as one view sees them. */
typedef struct route_rt {
    rmr_retry_policy_t retry; /* attempts 1: no retry */
    rmr_bucket_t *bucket;     /* rate_limit; NULL when none */
    int deadline;             /* send x-remora-deadline-ms: the route sets a timeout or retries */
    gray_t gray;
} route_rt_t;

/* One worker's view of one config snapshot. Streams hold a reference so that a reload never
 * pulls a cluster from under a request. */
struct view {
    int refs;
    rmr_config_t *config;
    uint32_t n_clusters;
    cluster_t *clusters;
    route_rt_t *routes; /* one per config route */
    rmr_matcher_t *matcher;
    rmr_lanes_t *lanes;        /* the process's lane memory */
    const char **lane_headers; /* every lane header the routes name (x-lane by default) */
    uint32_t n_lane_headers;
    /* tracing (trace.c): the mesh's tracing block */
    int trace_on, trace_w3c, trace_b3;
    uint32_t trace_ppm; /* head sampling, per million */
};

/* A TCP connection, to a client (downstream) or to an upstream endpoint. */
typedef enum { CONN_DOWN = 0, CONN_UP } conn_kind_t;

typedef struct listener {
    rmr_op_t accept_op;
    worker_t *w;
    const rmr_listener_conf_t *conf; /* in the config remora started with, which main keeps
                                        for the life of the process; for its address only */
    size_t index;                    /* the same listener in any later snapshot */
    int fd;
    int armed;
} listener_t;

struct worker {
    rmr_loop_t loop;
    unsigned id;
    pthread_t thread;
    view_t *view;
    uint64_t config_gen;
    size_t n_listeners;
    listener_t *listeners;
    list_t conns;   /* all downstream connections */
    list_t h2dirty; /* HTTP/2 connections with frames to send, flushed at the end of the turn */
    uint32_t nconns;
    int draining;
    uint64_t drain_deadline;
    rmr_timer_t drain_timer;
    rmr_timer_t filter_timer; /* filters_tick, every 100 ms */
    int start_err;            /* result of setup, read by main */
    sem_t started;
    int exited;
    int running;     /* the loop exists: it may be woken */
    uint32_t nalloc; /* conn_t objects alive, both kinds */
    char start_msg[256];
    rmr_buf_t *free_bufs[64]; /* output buffer pool: small ones */
    unsigned nfree_bufs;
    rmr_buf_t *free_big[8]; /* ... and a few large ones, kept for streaming bodies */
    unsigned nfree_big;
    void *free_streams[128]; /* stream_t pool (http1.c) */
    unsigned nfree_streams;
    uint64_t rng;
    rmr_counters_t *unrouted; /* this worker's slot of the stats of service "" */
    rmr_mirror_t *mirror;     /* shadow requests in flight */
    struct span_q *spanq;     /* finished spans for the exporter (trace.c); NULL: none */
    /* the access log (alog.c) */
    rmr_buf_t alog_buf, alog_out; /* lines being added; lines being written */
    size_t alog_off;              /* of alog_out, written so far */
    rmr_op_t alog_op;
    int alog_busy, alog_warned;
    long alog_sec;
    char alog_stamp[32];
};

/* The global state shared by main and workers. */
typedef struct remora {
    unsigned nworkers;
    worker_t *workers;
    pthread_mutex_t config_lock;
    rmr_config_t *config; /* current snapshot; under config_lock */
    uint64_t config_gen;  /* bumped on each swap; read by workers each turn */
    int draining;
    uint32_t batch_wait_us; /* --batch-wait-us: see rmr_loop_t.batch_wait_us */
    uint32_t busy_poll_us;  /* --busy-poll-us: see rmr_loop_t.busy_poll_us */
} remora_t;

extern remora_t rmr_g;

/* The worker's xorshift64* generator: fast, and good enough to pick endpoints, jitter backoffs
 * and make Idempotency-Keys unique. Not for secrets. */
static inline uint64_t worker_rand(worker_t *w)
{
    uint64_t x = w->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    w->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* gray.c: routing, subsets, lanes, mirroring and faults */
int gray_view_setup(worker_t *w, view_t *v);
void gray_view_free(view_t *v);
void gray_render_prometheus(rmr_buf_t *b, unsigned nworkers);
rmr_lanes_t *gray_lanes_store(void); /* the lane memory, NULL before the first view */

/* trace.c: spans and their export. trace_view_setup reads the mesh's tracing block into a view;
 * the exporter (a thread of its own) starts before the workers serve and stops after them. */
void trace_view_setup(view_t *v);
int trace_exporter_start(const rmr_config_t *cfg, char *err, size_t errlen);
/* A reload: with apply 0, checks cfg's export target (-1 with err when it is unusable, and the
 * reload is refused); with apply 1, hands it to the exporter (or starts the exporter) without a
 * restart. */
int trace_exporter_reload(const rmr_config_t *cfg, int apply, char *err, size_t errlen);
void trace_exporter_stop(void);
void trace_render_prometheus(rmr_buf_t *b);

/* alog.c: the access log. alog_open/alog_reopen on the main thread (path "-": standard output,
 * NULL: none); the rest on each worker. */
int alog_open(const char *path, char *err, size_t errlen);
int alog_reopen(const char *path, char *err, size_t errlen);
int alog_enabled(void);
void alog_tick(worker_t *w);
void alog_worker_exit(worker_t *w);
extern uint64_t rmr_alog_dropped, rmr_alog_errors;

/* filter.c: the filters of a view (built with it), and their admin output */
void filters_init(void);
int filters_view_setup(worker_t *w, view_t *v);
void filters_view_free(view_t *v);
void filters_tick(worker_t *w);
void filters_idem_each(void (*fn)(const char *name, rmr_idem_t *s, void *arg), void *arg);

/* worker.c */
int worker_start(worker_t *w);
void worker_notify(worker_t *w);
view_t *view_get(view_t *v);
void view_put(view_t *v);

/* Output buffer pool (per worker). */
rmr_buf_t *wbuf_get(worker_t *w);
void wbuf_put(worker_t *w, rmr_buf_t *b);

/* http1.c */
void h1_accept(worker_t *w, listener_t *l, int fd);
void h1_drain(worker_t *w);
void h1_pool_drop(endpoint_t *ep);
/* Moves the idle connections of from into to (same address, a newer view). */
void h1_pool_move(endpoint_t *from, endpoint_t *to);
/* Closes every downstream connection of w at once. */
void h1_close_all(worker_t *w);
/* Frees w's pools of buffers and streams (at worker exit). */
void h1_pools_free(worker_t *w);

/* h2.c */
void h2_flush_dirty(worker_t *w);
void h2_pool_drop(endpoint_t *ep);
void h2_pool_move(endpoint_t *from, endpoint_t *to);

/* certs.c: the TLS contexts of this process, built from the config's certificate files (or the
 * command line) and swapped when the files change. The getters return a new reference (NULL
 * when TLS is not configured); tls_ctx_unref() it. */
struct tls_ctx;
int rmr_tls_setup(rmr_config_t *c, char *err, size_t errlen);
/* Re-reads the files if they changed (force: always). 1 reloaded, 0 unchanged, -1 failed (the
 * old contexts stay; err says why). Main thread. */
int rmr_tls_reload(const rmr_config_t *c, int force, char *err, size_t errlen);
struct tls_ctx *rmr_tls_server_ctx(rmr_tls_mode_t mode);
struct tls_ctx *rmr_tls_client_ctx(rmr_tls_mode_t mode, int h2);
/* Fills the services' default_identity from this sidecar's own trust domain. */
void rmr_tls_identities(rmr_config_t *c);

/* upstream.c */
endpoint_t *cluster_pick(worker_t *w, cluster_t *c, const subset_t *sub, const endpoint_t *avoid,
                         int *probe);

#endif
