/*
 * Statistics registry and rendering. See include/remora/stats.h.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "remora/buf.h"
#include "remora/stats.h"

const uint64_t rmr_hist_bounds_us[RMR_HIST_BUCKETS] = {
    250,    500,    1000,   2500,    5000,    10000,   25000,    50000,
    100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000, 30000000,
};

const char *const rmr_uerr_names[RMR_UERR_COUNT] = {
    "connect_failure", "connect_timeout", "reset", "timeout", "bad_response", "no_endpoint",
};

rmr_worker_stats_t rmr_wstats[RMR_MAX_WORKERS];
uint64_t rmr_config_reloads, rmr_config_reload_failures;

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static rmr_svc_stats_t **reg;
static size_t nreg, capreg;

rmr_svc_stats_t *rmr_stats_service(const char *name)
{
    rmr_svc_stats_t *s = NULL;
    pthread_mutex_lock(&reg_lock);
    for (size_t i = 0; i < nreg; i++)
        if (!strcmp(reg[i]->name, name)) {
            s = reg[i];
            goto out;
        }
    if (nreg == capreg) {
        size_t cap = capreg ? capreg * 2 : 16;
        rmr_svc_stats_t **r = realloc(reg, cap * sizeof(*r));
        if (!r)
            goto out;
        reg = r;
        capreg = cap;
    }
    if (posix_memalign((void **)&s, 64, sizeof(*s)) != 0) {
        s = NULL;
        goto out;
    }
    memset(s, 0, sizeof(*s));
    s->name = strdup(name);
    if (!s->name) {
        free(s);
        s = NULL;
        goto out;
    }
    reg[nreg++] = s;
out:
    pthread_mutex_unlock(&reg_lock);
    return s;
}

rmr_ep_stats_t *rmr_stats_endpoint(rmr_svc_stats_t *s, const char *address)
{
    rmr_ep_stats_t *e;
    pthread_mutex_lock(&reg_lock);
    for (e = s->endpoints; e; e = e->next)
        if (!strcmp(e->address, address))
            goto out;
    e = calloc(1, sizeof(*e));
    if (!e)
        goto out;
    e->address = strdup(address);
    if (!e->address) {
        free(e);
        e = NULL;
        goto out;
    }
    /* Readers walk the list without the lock: publish a fully built entry. */
    e->next = s->endpoints;
    __atomic_store_n(&s->endpoints, e, __ATOMIC_RELEASE);
out:
    pthread_mutex_unlock(&reg_lock);
    return e;
}

void rmr_stats_endpoint_sum(const rmr_ep_stats_t *e, unsigned nw, rmr_ep_counters_t *out)
{
    memset(out, 0, sizeof(*out));
    for (unsigned w = 0; w < nw; w++) {
        out->active += __atomic_load_n(&e->w[w].active, __ATOMIC_RELAXED);
        out->requests += __atomic_load_n(&e->w[w].requests, __ATOMIC_RELAXED);
        out->failures += __atomic_load_n(&e->w[w].failures, __ATOMIC_RELAXED);
    }
}

const char *const rmr_tlserr_names[RMR_TLSERR_COUNT] = {"handshake", "no-peer-cert",
                                                        "bad-peer-cert", "identity", "protocol"};
const char *const rmr_h2err_names[RMR_H2ERR_COUNT] = {"protocol", "rapid-reset", "control-flood",
                                                      "continuation-flood", "headers-too-large"};

rmr_tlserr_t rmr_tlserr_of(const char *kind)
{
    for (int i = 0; kind && i < RMR_TLSERR_COUNT; i++)
        if (!strcmp(kind, rmr_tlserr_names[i]))
            return (rmr_tlserr_t)i;
    return RMR_TLSERR_HANDSHAKE;
}

void rmr_hist_add(rmr_hist_t *h, uint64_t us)
{
    unsigned i = 0;
    while (i < RMR_HIST_BUCKETS && us > rmr_hist_bounds_us[i])
        i++;
    RMR_STAT_INC(h->bucket[i]);
    RMR_STAT_ADD(h->sum_us, us);
    RMR_STAT_INC(h->count);
}

#define LD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)

const char *const rmr_retry_reason_names[RMR_RETRY_REASONS] = {
    "connect-failure", "reset",           "refused-stream", "gateway-error", "5xx",
    "retriable-4xx",   "per-try-timeout", "status",
};
const char *const rmr_limit_names[4] = {"connections", "pending", "requests", "retries"};

int rmr_retry_reason_of(const char *reason)
{
    for (int i = 0; i < RMR_RETRY_REASONS - 1; i++)
        if (!strcmp(rmr_retry_reason_names[i], reason))
            return i;
    return RMR_RETRY_REASONS - 1;
}

static void sum_counters(const rmr_svc_stats_t *s, unsigned nw, rmr_counters_t *out)
{
    memset(out, 0, sizeof(*out));
    for (unsigned w = 0; w < nw; w++) {
        const rmr_counters_t *c = &s->w[w];
        out->requests += LD(c->requests);
        for (int i = 0; i < RMR_RETRY_REASONS; i++)
            out->retries[i] += LD(c->retries[i]);
        out->retries_refused += LD(c->retries_refused);
        for (int i = 0; i < 4; i++)
            out->overflows[i] += LD(c->overflows[i]);
        out->rate_limited += LD(c->rate_limited);
        for (int i = 0; i < 6; i++)
            out->responses[i] += LD(c->responses[i]);
        for (int i = 0; i < RMR_UERR_COUNT; i++)
            out->upstream_errors[i] += LD(c->upstream_errors[i]);
        out->upstream_cx_total += LD(c->upstream_cx_total);
        out->upstream_cx_active += LD(c->upstream_cx_active);
        for (int i = 0; i <= RMR_HIST_BUCKETS; i++)
            out->latency.bucket[i] += LD(c->latency.bucket[i]);
        out->latency.sum_us += LD(c->latency.sum_us);
        out->latency.count += LD(c->latency.count);
    }
}

static void sum_worker(unsigned nw, rmr_worker_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    for (unsigned w = 0; w < nw; w++) {
        const rmr_worker_stats_t *c = &rmr_wstats[w];
        out->downstream_cx_total += LD(c->downstream_cx_total);
        out->downstream_cx_active += LD(c->downstream_cx_active);
        out->downstream_rq_total += LD(c->downstream_rq_total);
        out->bad_requests += LD(c->bad_requests);
        out->config_swaps += LD(c->config_swaps);
        out->h2_connections += LD(c->h2_connections);
        out->h2_streams += LD(c->h2_streams);
        for (int i = 0; i < RMR_H2ERR_COUNT; i++)
            out->h2_errors[i] += LD(c->h2_errors[i]);
        out->tls_handshakes += LD(c->tls_handshakes);
        out->tls_resumed += LD(c->tls_resumed);
        out->tls_upstream_handshakes += LD(c->tls_upstream_handshakes);
        for (int i = 0; i < RMR_TLSERR_COUNT; i++)
            out->tls_errors[i] += LD(c->tls_errors[i]);
        for (int i = 0; i < 6; i++)
            out->local_replies[i] += LD(c->local_replies[i]);
        for (int i = 0; i <= RMR_HIST_BUCKETS; i++)
            out->latency.bucket[i] += LD(c->latency.bucket[i]);
        out->latency.sum_us += LD(c->latency.sum_us);
        out->latency.count += LD(c->latency.count);
    }
}

static size_t snapshot(rmr_svc_stats_t ***out)
{
    pthread_mutex_lock(&reg_lock);
    size_t n = nreg;
    *out = malloc((n ? n : 1) * sizeof(**out));
    if (*out)
        memcpy(*out, reg, n * sizeof(**out));
    else
        n = 0;
    pthread_mutex_unlock(&reg_lock);
    return n;
}

char *rmr_stats_render_json(unsigned nw)
{
    rmr_buf_t b = {0};
    rmr_worker_stats_t ws;
    sum_worker(nw, &ws);
    rmr_buf_printf(&b,
                   "{\"downstream\":{\"cx_total\":%lu,\"cx_active\":%lu,\"rq_total\":%lu,"
                   "\"bad_requests\":%lu,\"local_replies\":{",
                   ws.downstream_cx_total, ws.downstream_cx_active, ws.downstream_rq_total,
                   ws.bad_requests);
    for (int i = 1; i < 6; i++)
        rmr_buf_printf(&b, "%s\"%dxx\":%lu", i > 1 ? "," : "", i, ws.local_replies[i]);
    rmr_buf_printf(&b, "}},\"http2\":{\"connections\":%lu,\"streams\":%lu", ws.h2_connections,
                   ws.h2_streams);
    for (int i = 0; i < RMR_H2ERR_COUNT; i++)
        rmr_buf_printf(&b, ",\"%s\":%lu", rmr_h2err_names[i], ws.h2_errors[i]);
    rmr_buf_printf(&b,
                   "},\"tls\":{\"handshakes\":%lu,\"resumed\":%lu,\"upstream_handshakes\":%lu,"
                   "\"errors\":{",
                   ws.tls_handshakes, ws.tls_resumed, ws.tls_upstream_handshakes);
    for (int i = 0; i < RMR_TLSERR_COUNT; i++)
        rmr_buf_printf(&b, "%s\"%s\":%lu", i ? "," : "", rmr_tlserr_names[i], ws.tls_errors[i]);
    rmr_buf_printf(&b, "}},\"config\":{\"reloads\":%lu,\"reload_failures\":%lu},\"services\":[",
                   LD(rmr_config_reloads), LD(rmr_config_reload_failures));
    rmr_svc_stats_t **s;
    size_t n = snapshot(&s);
    for (size_t i = 0; i < n; i++) {
        rmr_counters_t c;
        sum_counters(s[i], nw, &c);
        rmr_buf_str(&b, i ? ",{\"name\":" : "{\"name\":");
        rmr_buf_json_str(&b, s[i]->name);
        rmr_buf_printf(&b, ",\"requests\":%lu,\"responses\":{", c.requests);
        for (int k = 1; k < 6; k++)
            rmr_buf_printf(&b, "%s\"%dxx\":%lu", k > 1 ? "," : "", k, c.responses[k]);
        rmr_buf_printf(&b,
                       "},\"upstream_cx_total\":%lu,\"upstream_cx_active\":%lu,"
                       "\"upstream_errors\":{",
                       c.upstream_cx_total, c.upstream_cx_active);
        for (int k = 0; k < RMR_UERR_COUNT; k++)
            rmr_buf_printf(&b, "%s\"%s\":%lu", k ? "," : "", rmr_uerr_names[k],
                           c.upstream_errors[k]);
        rmr_buf_printf(&b, "},\"latency_us\":{\"count\":%lu,\"sum\":%lu}}", c.latency.count,
                       c.latency.sum_us);
    }
    free(s);
    rmr_buf_str(&b, "]}\n");
    rmr_buf_append(&b, "", 1);
    if (b.oom) {
        rmr_buf_free(&b);
        return NULL;
    }
    return b.data;
}

static void prom_hist(rmr_buf_t *b, const char *name, const char *labels, const rmr_hist_t *h)
{
    uint64_t cum = 0;
    const char *sep = labels[0] ? "," : "";
    for (int i = 0; i < RMR_HIST_BUCKETS; i++) {
        cum += h->bucket[i];
        rmr_buf_printf(b, "%s_bucket{%s%sle=\"%g\"} %lu\n", name, labels, sep,
                       (double)rmr_hist_bounds_us[i] / 1e6, cum);
    }
    cum += h->bucket[RMR_HIST_BUCKETS];
    rmr_buf_printf(b, "%s_bucket{%s%sle=\"+Inf\"} %lu\n", name, labels, sep, cum);
    rmr_buf_printf(b, "%s_sum{%s} %.6f\n", name, labels, (double)h->sum_us / 1e6);
    rmr_buf_printf(b, "%s_count{%s} %lu\n", name, labels, h->count);
}

/* Label values: a service name is validated on load, but escape anyway. */
static void prom_label(rmr_buf_t *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            rmr_buf_append(b, "\\", 1);
        if (*s == '\n') {
            rmr_buf_str(b, "\\n");
            continue;
        }
        rmr_buf_append(b, s, 1);
    }
}

char *rmr_stats_render_prometheus(unsigned nw)
{
    rmr_buf_t b = {0};
    rmr_worker_stats_t ws;
    sum_worker(nw, &ws);
    rmr_svc_stats_t **s;
    size_t n = snapshot(&s);
    rmr_counters_t *c = calloc(n ? n : 1, sizeof(*c));
    if (!c) {
        free(s);
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        sum_counters(s[i], nw, &c[i]);
    rmr_buf_t *lb = calloc(n ? n : 1, sizeof(*lb));
    for (size_t i = 0; lb && i < n; i++) {
        rmr_buf_str(&lb[i], "service=\"");
        prom_label(&lb[i], s[i]->name);
        rmr_buf_append(&lb[i], "\"", 2); /* with the NUL */
    }
    if (!lb)
        goto out;

    rmr_buf_str(&b, "# HELP remora_downstream_connections_total Connections accepted.\n"
                    "# TYPE remora_downstream_connections_total counter\n");
    rmr_buf_printf(&b, "remora_downstream_connections_total %lu\n", ws.downstream_cx_total);
    rmr_buf_str(&b, "# HELP remora_downstream_connections_active Connections open now.\n"
                    "# TYPE remora_downstream_connections_active gauge\n");
    rmr_buf_printf(&b, "remora_downstream_connections_active %lu\n", ws.downstream_cx_active);
    rmr_buf_str(&b, "# HELP remora_downstream_requests_total Requests received, routed or not.\n"
                    "# TYPE remora_downstream_requests_total counter\n");
    rmr_buf_printf(&b, "remora_downstream_requests_total %lu\n", ws.downstream_rq_total);
    rmr_buf_str(&b, "# HELP remora_bad_requests_total Requests refused as malformed.\n"
                    "# TYPE remora_bad_requests_total counter\n");
    rmr_buf_printf(&b, "remora_bad_requests_total %lu\n", ws.bad_requests);
    rmr_buf_str(&b, "# HELP remora_local_replies_total Responses remora made itself.\n"
                    "# TYPE remora_local_replies_total counter\n");
    for (int k = 1; k < 6; k++)
        rmr_buf_printf(&b, "remora_local_replies_total{code=\"%dxx\"} %lu\n", k,
                       ws.local_replies[k]);
    rmr_buf_str(&b, "# HELP remora_http2_connections_total Client connections that spoke HTTP/2.\n"
                    "# TYPE remora_http2_connections_total counter\n");
    rmr_buf_printf(&b, "remora_http2_connections_total %lu\n", ws.h2_connections);
    rmr_buf_str(&b, "# HELP remora_http2_streams_total HTTP/2 requests received.\n"
                    "# TYPE remora_http2_streams_total counter\n");
    rmr_buf_printf(&b, "remora_http2_streams_total %lu\n", ws.h2_streams);
    rmr_buf_str(&b, "# HELP remora_http2_errors_total HTTP/2 connections ended for abuse or "
                    "protocol errors, by reason.\n# TYPE remora_http2_errors_total counter\n");
    for (int k = 0; k < RMR_H2ERR_COUNT; k++)
        rmr_buf_printf(&b, "remora_http2_errors_total{reason=\"%s\"} %lu\n", rmr_h2err_names[k],
                       ws.h2_errors[k]);
    rmr_buf_str(&b, "# HELP remora_tls_handshakes_total TLS handshakes completed, by direction.\n"
                    "# TYPE remora_tls_handshakes_total counter\n");
    rmr_buf_printf(&b, "remora_tls_handshakes_total{direction=\"downstream\"} %lu\n",
                   ws.tls_handshakes);
    rmr_buf_printf(&b, "remora_tls_handshakes_total{direction=\"upstream\"} %lu\n",
                   ws.tls_upstream_handshakes);
    rmr_buf_str(&b, "# HELP remora_tls_resumed_total Downstream TLS sessions resumed.\n"
                    "# TYPE remora_tls_resumed_total counter\n");
    rmr_buf_printf(&b, "remora_tls_resumed_total %lu\n", ws.tls_resumed);
    rmr_buf_str(&b, "# HELP remora_tls_errors_total TLS handshakes refused or failed, by reason.\n"
                    "# TYPE remora_tls_errors_total counter\n");
    for (int k = 0; k < RMR_TLSERR_COUNT; k++)
        rmr_buf_printf(&b, "remora_tls_errors_total{reason=\"%s\"} %lu\n", rmr_tlserr_names[k],
                       ws.tls_errors[k]);
    rmr_buf_str(&b, "# HELP remora_config_reloads_total Config snapshots swapped in.\n"
                    "# TYPE remora_config_reloads_total counter\n");
    rmr_buf_printf(&b, "remora_config_reloads_total %lu\n", LD(rmr_config_reloads));
    rmr_buf_str(&b, "# HELP remora_config_reload_failures_total Config loads refused.\n"
                    "# TYPE remora_config_reload_failures_total counter\n");
    rmr_buf_printf(&b, "remora_config_reload_failures_total %lu\n", LD(rmr_config_reload_failures));

    rmr_buf_str(&b, "# HELP remora_requests_total Requests routed to a service.\n"
                    "# TYPE remora_requests_total counter\n");
    for (size_t i = 0; i < n; i++)
        rmr_buf_printf(&b, "remora_requests_total{%s} %lu\n", lb[i].data, c[i].requests);
    rmr_buf_str(&b, "# HELP remora_responses_total Responses sent for routed requests, by class.\n"
                    "# TYPE remora_responses_total counter\n");
    for (size_t i = 0; i < n; i++)
        for (int k = 1; k < 6; k++)
            rmr_buf_printf(&b, "remora_responses_total{%s,code=\"%dxx\"} %lu\n", lb[i].data, k,
                           c[i].responses[k]);
    rmr_buf_str(&b, "# HELP remora_upstream_errors_total Upstream failures, by reason.\n"
                    "# TYPE remora_upstream_errors_total counter\n");
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < RMR_UERR_COUNT; k++)
            rmr_buf_printf(&b, "remora_upstream_errors_total{%s,reason=\"%s\"} %lu\n", lb[i].data,
                           rmr_uerr_names[k], c[i].upstream_errors[k]);
    rmr_buf_str(&b, "# HELP remora_retries_total Requests tried again, by reason.\n"
                    "# TYPE remora_retries_total counter\n");
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < RMR_RETRY_REASONS; k++)
            if (c[i].retries[k])
                rmr_buf_printf(&b, "remora_retries_total{%s,reason=\"%s\"} %lu\n", lb[i].data,
                               rmr_retry_reason_names[k], c[i].retries[k]);
    rmr_buf_str(&b, "# HELP remora_retries_refused_total Retries the budget or max_retries "
                    "refused.\n"
                    "# TYPE remora_retries_refused_total counter\n");
    for (size_t i = 0; i < n; i++)
        rmr_buf_printf(&b, "remora_retries_refused_total{%s} %lu\n", lb[i].data,
                       c[i].retries_refused);
    rmr_buf_str(&b, "# HELP remora_circuit_breaker_overflows_total Requests refused (503) by a "
                    "circuit-breaker limit.\n"
                    "# TYPE remora_circuit_breaker_overflows_total counter\n");
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < 4; k++)
            rmr_buf_printf(&b, "remora_circuit_breaker_overflows_total{%s,limit=\"%s\"} %lu\n",
                           lb[i].data, rmr_limit_names[k], c[i].overflows[k]);
    rmr_buf_str(&b, "# HELP remora_rate_limited_total Requests refused (429) by a route's rate "
                    "limit.\n"
                    "# TYPE remora_rate_limited_total counter\n");
    for (size_t i = 0; i < n; i++)
        rmr_buf_printf(&b, "remora_rate_limited_total{%s} %lu\n", lb[i].data, c[i].rate_limited);
    rmr_buf_str(&b, "# HELP remora_upstream_connections_total Upstream connections opened.\n"
                    "# TYPE remora_upstream_connections_total counter\n");
    for (size_t i = 0; i < n; i++)
        rmr_buf_printf(&b, "remora_upstream_connections_total{%s} %lu\n", lb[i].data,
                       c[i].upstream_cx_total);
    rmr_buf_str(&b, "# HELP remora_upstream_connections_active Upstream connections open.\n"
                    "# TYPE remora_upstream_connections_active gauge\n");
    for (size_t i = 0; i < n; i++)
        rmr_buf_printf(&b, "remora_upstream_connections_active{%s} %lu\n", lb[i].data,
                       c[i].upstream_cx_active);
    rmr_buf_str(&b, "# HELP remora_request_duration_seconds Time from request head to "
                    "response end.\n"
                    "# TYPE remora_request_duration_seconds histogram\n");
    for (size_t i = 0; i < n; i++)
        prom_hist(&b, "remora_request_duration_seconds", lb[i].data, &c[i].latency);
    rmr_buf_str(&b, "# HELP remora_downstream_request_duration_seconds All requests, local "
                    "replies included.\n"
                    "# TYPE remora_downstream_request_duration_seconds histogram\n");
    prom_hist(&b, "remora_downstream_request_duration_seconds", "", &ws.latency);
out:
    for (size_t i = 0; lb && i < n; i++)
        rmr_buf_free(&lb[i]);
    free(lb);
    free(c);
    free(s);
    rmr_buf_append(&b, "", 1);
    if (b.oom || !lb) {
        rmr_buf_free(&b);
        return NULL;
    }
    return b.data;
}
