/*
 * The admin listener, on the main thread's ring: /ready /stats /stats/prometheus /config
 * /clusters. One request per connection (Connection: close); small and never on the request
 * path of the data plane.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "remora/log.h"
#include "proxy.h"
#include "admin.h"

#define ADMIN_REQ_MAX 8192

typedef struct admin_conn {
    rmr_op_t recv_op, send_op;
    int fd;
    size_t len;
    char *resp;
    size_t resp_len, resp_off;
    rmr_timer_t timer;
    int ops;
    int closing;
    char req[ADMIN_REQ_MAX];
} admin_conn_t;

static struct {
    rmr_loop_t *loop;
    rmr_op_t accept_op;
    int fd;
    int armed;
} adm = {.fd = -1};

static void admin_free(admin_conn_t *a)
{
    rmr_timer_stop(adm.loop, &a->timer);
    close(a->fd);
    free(a->resp);
    free(a);
}

static void admin_close(admin_conn_t *a)
{
    a->closing = 1;
    rmr_timer_stop(adm.loop, &a->timer);
    if (a->ops == 0) {
        admin_free(a);
        return;
    }
    shutdown(a->fd, SHUT_RDWR);
}

static void on_admin_send(rmr_loop_t *loop, rmr_op_t *op, int res, unsigned flags);

static void admin_send(admin_conn_t *a)
{
    struct io_uring_sqe *sqe = rmr_loop_sqe(adm.loop);
    io_uring_prep_send(sqe, a->fd, a->resp + a->resp_off, a->resp_len - a->resp_off, MSG_NOSIGNAL);
    io_uring_sqe_set_data(sqe, &a->send_op);
    a->ops++;
}

static void on_admin_send(rmr_loop_t *loop, rmr_op_t *op, int res, unsigned flags)
{
    admin_conn_t *a = (admin_conn_t *)((char *)op - offsetof(admin_conn_t, send_op));
    (void)loop;
    (void)flags;
    a->ops--;
    if (!a->closing && res > 0) {
        a->resp_off += (size_t)res;
        if (a->resp_off < a->resp_len) {
            admin_send(a);
            return;
        }
    }
    admin_close(a);
}

static void respond(admin_conn_t *a, int status, const char *ctype, char *body)
{
    const char *text = status == 200   ? "OK"
                       : status == 404 ? "Not Found"
                       : status == 405 ? "Method Not Allowed"
                       : status == 503 ? "Service Unavailable"
                                       : "Error";
    size_t blen = body ? strlen(body) : 0;
    rmr_buf_t b = {0};
    rmr_buf_printf(&b,
                   "HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %zu\r\n"
                   "connection: close\r\n\r\n",
                   status, text, ctype, blen);
    rmr_buf_append(&b, body, blen);
    free(body);
    if (b.oom) {
        rmr_buf_free(&b);
        admin_close(a);
        return;
    }
    a->resp = b.data;
    a->resp_len = b.len;
    a->resp_off = 0;
    admin_send(a);
}

static void handle(admin_conn_t *a)
{
    char method[8], path[256];
    if (sscanf(a->req, "%7s %255s", method, path) != 2) {
        respond(a, 400, "text/plain", strdup("bad request\n"));
        return;
    }
    char *q = strchr(path, '?');
    if (q)
        *q = 0;
    if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
        respond(a, 405, "text/plain", strdup("only GET\n"));
        return;
    }
    unsigned nw = rmr_g.nworkers;
    if (!strcmp(path, "/ready")) {
        if (__atomic_load_n(&rmr_g.draining, __ATOMIC_ACQUIRE))
            respond(a, 503, "text/plain", strdup("draining\n"));
        else
            respond(a, 200, "text/plain", strdup("ready\n"));
    } else if (!strcmp(path, "/stats")) {
        respond(a, 200, "application/json", rmr_stats_render_json(nw));
    } else if (!strcmp(path, "/stats/prometheus")) {
        respond(a, 200, "text/plain; version=0.0.4", admin_render_prometheus(nw));
    } else if (!strcmp(path, "/config")) {
        pthread_mutex_lock(&rmr_g.config_lock);
        char *j = rmr_config_to_json(rmr_g.config);
        pthread_mutex_unlock(&rmr_g.config_lock);
        respond(a, 200, "application/json", j);
    } else if (!strcmp(path, "/clusters")) {
        respond(a, 200, "application/json", admin_render_clusters(nw));
    } else {
        respond(a, 404, "text/plain",
                strdup("not found; try /ready /stats /stats/prometheus /config /clusters\n"));
    }
}

static void on_admin_recv(rmr_loop_t *loop, rmr_op_t *op, int res, unsigned flags);

static void admin_recv(admin_conn_t *a)
{
    struct io_uring_sqe *sqe = rmr_loop_sqe(adm.loop);
    io_uring_prep_recv(sqe, a->fd, a->req + a->len, ADMIN_REQ_MAX - 1 - a->len, 0);
    io_uring_sqe_set_data(sqe, &a->recv_op);
    a->ops++;
}

static void on_admin_recv(rmr_loop_t *loop, rmr_op_t *op, int res, unsigned flags)
{
    admin_conn_t *a = (admin_conn_t *)((char *)op - offsetof(admin_conn_t, recv_op));
    (void)loop;
    (void)flags;
    a->ops--;
    if (a->closing || res <= 0) {
        if (!a->closing)
            admin_close(a);
        else if (a->ops == 0)
            admin_free(a);
        return;
    }
    a->len += (size_t)res;
    a->req[a->len] = 0;
    if (strstr(a->req, "\r\n\r\n") || strstr(a->req, "\n\n")) {
        rmr_timer_stop(adm.loop, &a->timer);
        handle(a);
    } else if (a->len >= ADMIN_REQ_MAX - 1) {
        respond(a, 431, "text/plain", strdup("request too large\n"));
    } else {
        admin_recv(a);
    }
}

static void on_admin_timer(rmr_loop_t *loop, rmr_timer_t *t)
{
    admin_conn_t *a = (admin_conn_t *)((char *)t - offsetof(admin_conn_t, timer));
    (void)loop;
    admin_close(a);
}

static void admin_arm(void);

static void on_admin_accept(rmr_loop_t *loop, rmr_op_t *op, int res, unsigned flags)
{
    (void)loop;
    (void)op;
    if (!(flags & IORING_CQE_F_MORE))
        adm.armed = 0;
    if (res >= 0) {
        admin_conn_t *a = calloc(1, sizeof(*a));
        if (!a) {
            close(res);
        } else {
            a->fd = res;
            a->recv_op.cb = on_admin_recv;
            a->send_op.cb = on_admin_send;
            a->timer.cb = on_admin_timer;
            rmr_timer_set(adm.loop, &a->timer, 5000);
            admin_recv(a);
        }
    }
    if (!adm.armed && adm.fd >= 0)
        admin_arm();
}

static void admin_arm(void)
{
    struct io_uring_sqe *sqe = rmr_loop_sqe(adm.loop);
    io_uring_prep_multishot_accept(sqe, adm.fd, NULL, NULL, SOCK_CLOEXEC);
    io_uring_sqe_set_data(sqe, &adm.accept_op);
    adm.armed = 1;
}

int admin_start(rmr_loop_t *loop, const rmr_addr_t *addr)
{
    int fd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&addr->ss, addr->len) < 0 || listen(fd, 128) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    adm.loop = loop;
    adm.fd = fd;
    adm.accept_op.cb = on_admin_accept;
    admin_arm();
    return 0;
}

/* One metric family of the filters: HELP and TYPE once, then a sample per service. */
struct fam {
    const char *name, *type, *help;
};

static const struct fam idem_fams[] = {
    {"remora_idempotency_entries", "gauge", "Keys held by the idempotency store."},
    {"remora_idempotency_in_flight", "gauge", "Keys whose first request is in progress."},
    {"remora_idempotency_stored_total", "counter", "Responses stored."},
    {"remora_idempotency_replays_total", "counter", "Repeats answered from the store."},
    {"remora_idempotency_conflicts_total", "counter", "Repeats while in flight (409)."},
    {"remora_idempotency_mismatches_total", "counter", "Keys reused for another request (422)."},
    {"remora_idempotency_evictions_total", "counter", "Entries dropped for max_entries."},
    {"remora_idempotency_expired_total", "counter", "Entries dropped after their ttl."},
};

struct idem_walk {
    rmr_buf_t *b;
    size_t fam;
};

static void idem_metric(const char *name, rmr_idem_t *s, void *arg)
{
    struct idem_walk *iw = arg;
    rmr_idem_stats_t st;
    rmr_idem_get_stats(s, &st);
    const uint64_t v[] = {st.entries,   st.in_flight,  st.stored,    st.replays,
                          st.conflicts, st.mismatches, st.evictions, st.expired};
    /* the store belongs to the inbound service "inbound|x": label it with x */
    const char *svc = !strncmp(name, "inbound|", 8) ? name + 8 : name;
    rmr_buf_printf(iw->b, "%s{service=\"%s\"} %lu\n", idem_fams[iw->fam].name, svc, v[iw->fam]);
}

static const struct fam outlier_fams[] = {
    {"remora_outlier_ejections_total", "counter",
     "Endpoints ejected by outlier detection, by reason."},
    {"remora_outlier_ejections_refused_total", "counter",
     "Ejections refused by max_ejection_percent."},
    {"remora_outlier_readmissions_total", "counter", "Ejected endpoints re-admitted."},
    {"remora_outlier_ejected", "gauge", "Endpoints out (ejected or half-open) now."},
};

/* The data plane's metrics, then those of the filters' shared state. */
char *admin_render_prometheus(unsigned nw)
{
    char *base = rmr_stats_render_prometheus(nw);
    if (!base)
        return NULL;
    rmr_buf_t b = {0};
    rmr_buf_str(&b, base);
    free(base);
    pthread_mutex_lock(&rmr_g.config_lock);
    rmr_config_t *cfg = rmr_config_ref(rmr_g.config);
    pthread_mutex_unlock(&rmr_g.config_lock);
    for (size_t f = 0; f < sizeof(outlier_fams) / sizeof(outlier_fams[0]); f++) {
        rmr_buf_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", outlier_fams[f].name,
                       outlier_fams[f].help, outlier_fams[f].name, outlier_fams[f].type);
        for (size_t i = 0; i < cfg->n_services; i++) {
            rmr_breaker_t *br = rmr_breaker_get(cfg->services[i].name);
            if (!br)
                continue;
            rmr_breaker_stats_t bs;
            rmr_breaker_get_stats(br, &bs);
            const char *n = cfg->services[i].name;
            if (f == 0)
                rmr_buf_printf(&b,
                               "%s{service=\"%s\",reason=\"consecutive-failures\"} %lu\n"
                               "%s{service=\"%s\",reason=\"latency\"} %lu\n",
                               outlier_fams[f].name, n, bs.ejections_failures, outlier_fams[f].name,
                               n, bs.ejections_latency);
            else
                rmr_buf_printf(&b, "%s{service=\"%s\"} %lu\n", outlier_fams[f].name, n,
                               f == 1   ? bs.ejections_refused
                               : f == 2 ? bs.readmissions
                                        : (uint64_t)bs.ejected_now);
        }
    }
    rmr_config_unref(cfg);
    for (size_t f = 0; f < sizeof(idem_fams) / sizeof(idem_fams[0]); f++) {
        rmr_buf_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", idem_fams[f].name, idem_fams[f].help,
                       idem_fams[f].name, idem_fams[f].type);
        struct idem_walk iw = {&b, f};
        filters_idem_each(idem_metric, &iw);
    }
    gray_render_prometheus(&b, nw);
    trace_render_prometheus(&b);
    rmr_lanes_t *lanes = gray_lanes_store();
    if (lanes) {
        rmr_lanes_stats_t ls;
        rmr_lanes_get_stats(lanes, &ls);
        rmr_buf_printf(&b,
                       "# HELP remora_lane_memory_entries Traces whose lane is remembered.\n"
                       "# TYPE remora_lane_memory_entries gauge\nremora_lane_memory_entries %lu\n"
                       "# HELP remora_lane_memory_total Lane memory operations, by kind.\n"
                       "# TYPE remora_lane_memory_total counter\n"
                       "remora_lane_memory_total{op=\"put\"} %lu\n"
                       "remora_lane_memory_total{op=\"hit\"} %lu\n"
                       "remora_lane_memory_total{op=\"miss\"} %lu\n"
                       "remora_lane_memory_total{op=\"eviction\"} %lu\n"
                       "remora_lane_memory_total{op=\"expired\"} %lu\n",
                       (unsigned long)ls.entries, (unsigned long)ls.puts, (unsigned long)ls.hits,
                       (unsigned long)ls.misses, (unsigned long)ls.evictions,
                       (unsigned long)ls.expired);
    }
    rmr_buf_printf(&b,
                   "# HELP remora_access_log_dropped_total Access-log lines dropped: the log could "
                   "not keep up.\n# TYPE remora_access_log_dropped_total counter\n"
                   "remora_access_log_dropped_total %lu\n"
                   "# HELP remora_access_log_errors_total Access-log writes that failed.\n"
                   "# TYPE remora_access_log_errors_total counter\n"
                   "remora_access_log_errors_total %lu\n",
                   (unsigned long)__atomic_load_n(&rmr_alog_dropped, __ATOMIC_RELAXED),
                   (unsigned long)__atomic_load_n(&rmr_alog_errors, __ATOMIC_RELAXED));
    rmr_buf_append(&b, "", 1);
    if (b.oom) {
        rmr_buf_free(&b);
        return NULL;
    }
    return b.data;
}

char *admin_render_clusters(unsigned nw)
{
    rmr_buf_t b = {0};
    pthread_mutex_lock(&rmr_g.config_lock);
    rmr_config_t *cfg = rmr_config_ref(rmr_g.config);
    pthread_mutex_unlock(&rmr_g.config_lock);
    rmr_buf_str(&b, "{\"services\":[");
    for (size_t i = 0; i < cfg->n_services; i++) {
        const rmr_service_conf_t *sc = &cfg->services[i];
        rmr_svc_stats_t *ss = rmr_stats_service(sc->name);
        rmr_buf_str(&b, i ? ",{\"name\":" : "{\"name\":");
        rmr_buf_json_str(&b, sc->name);
        static const char *const lbs[] = {"round_robin", "least_request", "random", "ring_hash"};
        rmr_buf_printf(&b, ",\"load_balancer\":\"%s\"", lbs[sc->lb & 3]);
        if (sc->dns_name) {
            rmr_buf_str(&b, ",\"dns\":");
            rmr_buf_json_str(&b, sc->dns_name);
        }
        rmr_breaker_t *br = rmr_breaker_get(sc->name);
        if (br) {
            /* outlier detection: each endpoint's state, ejections and recent history */
            char tmp[1];
            size_t need = rmr_breaker_render_json(br, tmp, sizeof(tmp), rmr_clock_ms());
            char *j = malloc(need + 1);
            if (j) {
                rmr_breaker_render_json(br, j, need + 1, rmr_clock_ms());
                rmr_buf_str(&b, ",\"outlier\":");
                rmr_buf_str(&b, j);
                free(j);
            }
        }
        rmr_buf_str(&b, ",\"endpoints\":[");
        for (size_t k = 0; k < sc->n_endpoints; k++) {
            const rmr_endpoint_conf_t *e = &sc->endpoints[k];
            rmr_ep_counters_t sum = {0};
            rmr_ep_stats_t *es = ss ? rmr_stats_endpoint(ss, e->addr.text) : NULL;
            if (es)
                rmr_stats_endpoint_sum(es, nw, &sum);
            rmr_buf_str(&b, k ? ",{\"address\":" : "{\"address\":");
            rmr_buf_json_str(&b, e->addr.text);
            static const char *const states[] = {"healthy", "ejected", "half-open"};
            int bi = br ? rmr_breaker_endpoint(br, e->addr.text) : -1;
            rmr_ep_state_t es_ = bi >= 0 ? rmr_breaker_state(br, bi, rmr_clock_ms()) : 0;
            rmr_buf_printf(&b,
                           ",\"state\":\"%s\",\"active_requests\":%lu,\"requests\":%lu,"
                           "\"failures\":%lu,\"labels\":{",
                           states[es_ % 3], sum.active, sum.requests, sum.failures);
            for (size_t l = 0; l < e->n_labels; l++) {
                if (l)
                    rmr_buf_str(&b, ",");
                rmr_buf_json_str(&b, e->labels[l].key);
                rmr_buf_str(&b, ":");
                rmr_buf_json_str(&b, e->labels[l].value);
            }
            rmr_buf_str(&b, "}}");
        }
        rmr_buf_str(&b, "]}");
    }
    rmr_buf_str(&b, "]}\n");
    rmr_buf_append(&b, "", 1);
    rmr_config_unref(cfg);
    if (b.oom) {
        rmr_buf_free(&b);
        return NULL;
    }
    return b.data;
}
