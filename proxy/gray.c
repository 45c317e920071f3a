/*
 * Gray release on the request path: route matching, subsets, weighted and sticky splits,
 * lanes (and the lane memory that keeps a trace in its lane across hops), mirroring and
 * fault drills. The arithmetic lives in filters/ (match.c, gray.c); this file binds it to
 * the config, to a worker's view and to the stream.
 *
 * How a request finds its endpoint:
 *   1. the first route whose match holds (rmr_matcher_find: flat cost however many routes);
 *   2. its lane: the route's lane header, or `lane=` in W3C baggage; when neither is there
 *      and the request is outbound, the lane the inbound side remembered for its trace id;
 *   3. candidate subsets in order: the lane's subset (when the route maps the lane and the
 *      subset has endpoints), then the split: for a sticky key, the subsets ranked by weighted
 *      rendezvous hashing of the key; otherwise the one smooth weighted round robin picks,
 *      then the rest; with no split, all endpoints;
 *   4. at dispatch, the first candidate with a usable endpoint (outlier detection) serves;
 *      an ejected endpoint moves a user to another version only when its version has no
 *      usable endpoint left.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "remora/gray.h"
#include "remora/log.h"
#include "remora/match.h"
#include "remora/mirror.h"
#include "remora/v1/bootstrap.pb-c.h"
#include "remora/v1/mesh.pb-c.h"
#include "http.h"

#define DEFAULT_LANE_HEADER "x-lane"
#define FAULT_HEADER "x-remora-fault"
#define SHADOW_MAX (64 * 1024) /* request body bytes a mirror copies; larger: not mirrored */

/* ---- per route and subset counters (a registry that outlives reloads, like stats.c's) ---- */

struct rmr_subset_stats {
    char *route, *subset;
    rmr_subset_counters_t w[RMR_MAX_WORKERS];
};

static pthread_mutex_t sreg_lock = PTHREAD_MUTEX_INITIALIZER;
static rmr_subset_stats_t **sreg;
static size_t nsreg, capsreg;

static rmr_subset_stats_t *subset_stats(const char *route, const char *subset)
{
    rmr_subset_stats_t *s = NULL;
    pthread_mutex_lock(&sreg_lock);
    for (size_t i = 0; i < nsreg; i++)
        if (!strcmp(sreg[i]->route, route) && !strcmp(sreg[i]->subset, subset)) {
            s = sreg[i];
            goto out;
        }
    if (nsreg == capsreg) {
        size_t cap = capsreg ? capsreg * 2 : 16;
        rmr_subset_stats_t **r = realloc(sreg, cap * sizeof(*r));
        if (!r)
            goto out;
        sreg = r;
        capsreg = cap;
    }
    if (posix_memalign((void **)&s, 64, sizeof(*s)) != 0) {
        s = NULL;
        goto out;
    }
    memset(s, 0, sizeof(*s));
    s->route = strdup(route);
    s->subset = strdup(subset);
    if (!s->route || !s->subset) {
        free(s->route);
        free(s->subset);
        free(s);
        s = NULL;
        goto out;
    }
    sreg[nsreg++] = s;
out:
    pthread_mutex_unlock(&sreg_lock);
    return s;
}

static void prom_label(rmr_buf_t *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            rmr_buf_append(b, "\\", 1);
        if (*s == '\n')
            rmr_buf_append(b, "\\n", 2);
        else
            rmr_buf_append(b, s, 1);
    }
}

void gray_render_prometheus(rmr_buf_t *b, unsigned nw)
{
    pthread_mutex_lock(&sreg_lock);
    size_t n = nsreg;
    pthread_mutex_unlock(&sreg_lock); /* entries are never removed nor moved once listed */
    static const char *const fam[3][2] = {
        {"remora_route_requests_total", "Requests by route and subset (\"\": no split)."},
        {"remora_route_responses_total", "Responses by route, subset and status class."},
        {"remora_route_mirrored_total", "Shadow copies sent, by route and mirror subset."},
    };
    for (int f = 0; f < 3; f++) {
        rmr_buf_printf(b, "# HELP %s %s\n# TYPE %s counter\n", fam[f][0], fam[f][1], fam[f][0]);
        for (size_t i = 0; i < n; i++) {
            pthread_mutex_lock(&sreg_lock);
            rmr_subset_stats_t *s = sreg[i];
            pthread_mutex_unlock(&sreg_lock);
            rmr_subset_counters_t t = {0};
            for (unsigned k = 0; k < nw && k < RMR_MAX_WORKERS; k++) {
                t.requests += __atomic_load_n(&s->w[k].requests, __ATOMIC_RELAXED);
                t.mirrored += __atomic_load_n(&s->w[k].mirrored, __ATOMIC_RELAXED);
                for (int c = 1; c < 6; c++)
                    t.responses[c] += __atomic_load_n(&s->w[k].responses[c], __ATOMIC_RELAXED);
            }
            if (f == 2 && !t.mirrored)
                continue;
            if (f < 2 && !t.requests && !t.responses[2] && !t.responses[5])
                continue;
            for (int c = f == 1 ? 1 : 0; c < (f == 1 ? 6 : 1); c++) {
                rmr_buf_printf(b, "%s{route=\"", fam[f][0]);
                prom_label(b, s->route);
                rmr_buf_str(b, "\",subset=\"");
                prom_label(b, s->subset);
                if (f == 1)
                    rmr_buf_printf(b, "\",class=\"%dxx\"} %lu\n", c, t.responses[c]);
                else
                    rmr_buf_printf(b, "\"} %lu\n", f == 0 ? t.requests : t.mirrored);
            }
        }
    }
    rmr_mirror_stats_t ms;
    rmr_mirror_totals(&ms);
    rmr_buf_printf(b,
                   "# HELP remora_mirror_total Shadow requests, by outcome.\n"
                   "# TYPE remora_mirror_total counter\n"
                   "remora_mirror_total{outcome=\"sent\"} %lu\n"
                   "remora_mirror_total{outcome=\"dropped\"} %lu\n"
                   "remora_mirror_total{outcome=\"completed\"} %lu\n"
                   "remora_mirror_total{outcome=\"failed\"} %lu\n"
                   "remora_mirror_total{outcome=\"timeout\"} %lu\n"
                   "# HELP remora_mirror_in_flight Shadow requests in flight.\n"
                   "# TYPE remora_mirror_in_flight gauge\nremora_mirror_in_flight %u\n",
                   (unsigned long)ms.sent, (unsigned long)ms.dropped, (unsigned long)ms.completed,
                   (unsigned long)ms.failed, (unsigned long)ms.timeouts, (unsigned)ms.inflight);
}

/* ---- setup ---- */

static rmr_lanes_t *lanes_store; /* for the admin thread */
/* Set once any lane was remembered: until then an outbound request need not take the lane
 * memory's lock to learn that it holds nothing. */
static int lanes_used;

rmr_lanes_t *gray_lanes_store(void)
{
    return __atomic_load_n(&lanes_store, __ATOMIC_ACQUIRE);
}

/* "key=value,key=value" of a selector, in the order written */
static char *selector_name(const Remora__V1__Selector *sel)
{
    rmr_buf_t b = {0};
    for (size_t i = 0; sel && i < sel->n_labels; i++)
        rmr_buf_printf(&b, "%s%s=%s", i ? "," : "", sel->labels[i]->key, sel->labels[i]->value);
    rmr_buf_append(&b, "", 1);
    if (b.oom) {
        rmr_buf_free(&b);
        return NULL;
    }
    return b.data;
}

static int subset_build(subset_t *s, const cluster_t *c, const Remora__V1__Selector *sel,
                        const char *route)
{
    rmr_label_t want[32];
    size_t nw = 0;
    for (size_t i = 0; sel && i < sel->n_labels && nw < 32; i++)
        want[nw++] = (rmr_label_t){sel->labels[i]->key, sel->labels[i]->value};
    s->name = selector_name(sel);
    s->idx = calloc(c->n_endpoints ? c->n_endpoints : 1, sizeof(*s->idx));
    if (!s->name || !s->idx)
        return -1;
    s->n = 0;
    for (uint32_t k = 0; k < c->n_endpoints; k++) {
        const rmr_endpoint_conf_t *e = c->endpoints[k].conf;
        if (rmr_selector_match(want, nw, e->labels, e->n_labels))
            s->idx[s->n++] = k;
    }
    s->rr = c->rr; /* the worker's starting point, so workers do not all start together */
    s->stats = subset_stats(route, s->name);
    return s->stats ? 0 : -1;
}

static void subset_free(subset_t *s)
{
    free(s->name);
    free(s->idx);
    s->name = NULL;
    s->idx = NULL;
}

static uint32_t pct_ppm(double p)
{
    return p <= 0 ? 0 : p >= 100 ? 1000000 : (uint32_t)lround(p * 10000.0);
}

static uint32_t dur_ms(const Remora__V1__Duration *d)
{
    if (!d)
        return 0;
    uint64_t ms = (uint64_t)d->seconds * 1000 + (uint64_t)d->nanos / 1000000;
    return ms > UINT32_MAX ? UINT32_MAX : (uint32_t)ms;
}

static int gray_route_setup(view_t *v, route_rt_t *rt, const rmr_route_conf_t *rc)
{
    gray_t *g = &rt->gray;
    const Remora__V1__Route *pb = rc->pb;
    const cluster_t *c = &v->clusters[rc->service];
    if (subset_build(&g->all, c, NULL, rc->name) < 0)
        return -1;
    if (!pb)
        return 0;
    if (pb->n_split) {
        size_t n = pb->n_split < RMR_GRAY_SUBSETS_MAX ? pb->n_split : RMR_GRAY_SUBSETS_MAX;
        g->split = calloc(n, sizeof(*g->split));
        if (!g->split)
            return -1;
        g->n_split = (uint32_t)n;
        for (size_t i = 0; i < n; i++) {
            if (subset_build(&g->split[i], c, pb->split[i]->subset, rc->name) < 0)
                return -1;
            g->weights[i] = pb->split[i]->weight;
            g->ids[i] = rmr_gray_hash64(g->split[i].name, strlen(g->split[i].name), 0);
        }
        rmr_swrr_init(&g->swrr, g->weights, n);
    }
    if (pb->sticky) {
        g->sticky_header = pb->sticky->header && *pb->sticky->header ? pb->sticky->header : NULL;
        g->sticky_cookie = pb->sticky->cookie && *pb->sticky->cookie ? pb->sticky->cookie : NULL;
    }
    if (pb->lanes) {
        g->lane_header = pb->lanes->header && *pb->lanes->header ? pb->lanes->header : NULL;
        if (pb->lanes->n_map) {
            g->lanes = calloc(pb->lanes->n_map, sizeof(*g->lanes));
            g->lane_names = calloc(pb->lanes->n_map, sizeof(*g->lane_names));
            if (!g->lanes || !g->lane_names)
                return -1;
            g->n_lanes = (uint32_t)pb->lanes->n_map;
            for (size_t i = 0; i < pb->lanes->n_map; i++) {
                g->lane_names[i] = pb->lanes->map[i]->key;
                if (subset_build(&g->lanes[i], c, pb->lanes->map[i]->value, rc->name) < 0)
                    return -1;
            }
        }
    }
    if (pb->mirror && pb->mirror->percent > 0) {
        if (subset_build(&g->mirror, c, pb->mirror->subset, rc->name) < 0)
            return -1;
        g->mirror_ppm = pct_ppm(pb->mirror->percent);
    }
    if (pb->fault) {
        const Remora__V1__Fault *f = pb->fault;
        if (f->delay) {
            g->delay_ppm = pct_ppm(f->delay->percent);
            g->delay_ms = dur_ms(f->delay->duration);
        }
        if (f->abort) {
            g->abort_ppm = pct_ppm(f->abort->percent);
            g->abort_status = f->abort->status ? f->abort->status : 503;
        } else {
            g->abort_status = 503;
        }
        g->fault_header = f->allow_header;
    }
    return 0;
}

static void gray_route_free(route_rt_t *rt)
{
    gray_t *g = &rt->gray;
    subset_free(&g->all);
    for (uint32_t i = 0; i < g->n_split; i++)
        subset_free(&g->split[i]);
    free(g->split);
    for (uint32_t i = 0; i < g->n_lanes; i++)
        subset_free(&g->lanes[i]);
    free(g->lanes);
    free(g->lane_names);
    subset_free(&g->mirror);
}

static rmr_km_kind_t km_kind(const Remora__V1__KeyMatch *k, const char **value)
{
    *value = NULL;
    if (k->absent)
        return RMR_KM_ABSENT;
    switch (k->value_case) {
    case REMORA__V1__KEY_MATCH__VALUE_EXACT:
        *value = k->exact;
        return RMR_KM_EXACT;
    case REMORA__V1__KEY_MATCH__VALUE_PREFIX:
        *value = k->prefix;
        return RMR_KM_PREFIX;
    case REMORA__V1__KEY_MATCH__VALUE_REGEX:
        *value = k->regex;
        return RMR_KM_REGEX;
    default:
        return RMR_KM_PRESENT;
    }
}

static rmr_matcher_t *matcher_build(const rmr_config_t *cfg)
{
    size_t n = cfg->n_routes, nkm = 0;
    for (size_t i = 0; i < n; i++) {
        const Remora__V1__Route *pb = cfg->routes[i].pb;
        if (pb && pb->match)
            nkm += pb->match->n_headers + pb->match->n_query;
    }
    rmr_match_rule_t *rules = calloc(n ? n : 1, sizeof(*rules));
    rmr_km_t *kms = calloc(nkm ? nkm : 1, sizeof(*kms));
    rmr_matcher_t *m = NULL;
    if (!rules || !kms)
        goto out;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const rmr_route_conf_t *r = &cfg->routes[i];
        rmr_match_rule_t *u = &rules[i];
        u->service = r->match_service;
        u->method = r->method;
        if (r->path_exact) {
            u->path_kind = RMR_PATH_EXACT;
            u->path = r->path_exact;
        } else if (r->path_regex) {
            u->path_kind = RMR_PATH_REGEX;
            u->path = r->path_regex;
        } else if (r->path_prefix && r->path_prefix[0]) {
            u->path_kind = RMR_PATH_PREFIX;
            u->path = r->path_prefix;
        } else {
            u->path_kind = RMR_PATH_ANY;
        }
        const Remora__V1__Route *pb = r->pb;
        if (!pb || !pb->match)
            continue;
        u->headers = &kms[k];
        u->n_headers = pb->match->n_headers;
        for (size_t j = 0; j < pb->match->n_headers; j++, k++) {
            kms[k].name = pb->match->headers[j]->name;
            kms[k].kind = km_kind(pb->match->headers[j], &kms[k].value);
        }
        u->query = &kms[k];
        u->n_query = pb->match->n_query;
        for (size_t j = 0; j < pb->match->n_query; j++, k++) {
            kms[k].name = pb->match->query[j]->name;
            kms[k].kind = km_kind(pb->match->query[j], &kms[k].value);
        }
    }
    char err[256];
    m = rmr_matcher_new(rules, n, err, sizeof(err));
    if (!m)
        RMR_ERR("routes: %s", err);
out:
    free(rules);
    free(kms);
    return m;
}

static int add_lane_header(view_t *v, const char *name)
{
    for (uint32_t i = 0; i < v->n_lane_headers; i++)
        if (!strcasecmp(v->lane_headers[i], name))
            return 0;
    const char **p = realloc(v->lane_headers, (v->n_lane_headers + 1) * sizeof(*p));
    if (!p)
        return -1;
    v->lane_headers = p;
    v->lane_headers[v->n_lane_headers++] = name;
    return 0;
}

int gray_view_setup(worker_t *w, view_t *v)
{
    (void)w;
    const rmr_config_t *cfg = v->config;
    trace_view_setup(v);
    v->matcher = matcher_build(cfg);
    if (!v->matcher)
        return -1;
    for (size_t i = 0; i < cfg->n_routes; i++) {
        if (gray_route_setup(v, &v->routes[i], &cfg->routes[i]) < 0)
            return -1;
        const char *ms = cfg->routes[i].match_service;
        ssize_t ci = ms ? rmr_config_service(cfg, ms, strlen(ms)) : -1;
        if (ci >= 0 && (size_t)ci < v->n_clusters)
            v->clusters[ci].routed = 1;
        const char *lh = v->routes[i].gray.lane_header;
        if (lh && add_lane_header(v, lh) < 0)
            return -1;
    }
    if (!v->n_lane_headers && add_lane_header(v, DEFAULT_LANE_HEADER) < 0)
        return -1;
    v->lanes = rmr_lanes_get_store("lanes", cfg->lane_max ? cfg->lane_max : 100000,
                                   cfg->lane_ttl_ms ? cfg->lane_ttl_ms : 300000);
    if (v->lanes)
        __atomic_store_n(&lanes_store, v->lanes, __ATOMIC_RELEASE);
    return v->lanes ? 0 : -1;
}

void gray_view_free(view_t *v)
{
    for (size_t i = 0; v->routes && i < v->config->n_routes; i++)
        gray_route_free(&v->routes[i]);
    rmr_matcher_free(v->matcher);
    v->matcher = NULL;
    free(v->lane_headers);
    v->lane_headers = NULL;
    v->n_lane_headers = 0;
}

/* ---- route matching ---- */

static int hdr_lookup(void *ctx, const char *lname, size_t nlen, unsigned idx, const char **v,
                      size_t *vlen)
{
    const h1_msg_t *m = ctx;
    unsigned seen = 0;
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        const h1_hdr_t *h = &m->hdrs[i];
        if (h->name.len != nlen || strncasecmp(h1_str(m, h->name), lname, nlen))
            continue;
        if (seen++ == idx) {
            *v = h1_str(m, h->value);
            *vlen = h->value.len;
            return 0;
        }
    }
    return -1;
}

int gray_match(conn_t *d, const char *host, size_t hlen, const char *path, size_t plen)
{
    const view_t *v = d->st->view;
    if (!v->matcher)
        return -1;
    const char *q = memchr(path, '?', plen);
    rmr_match_req_t r = {
        .host = host,
        .host_len = host ? hlen : 0,
        .method = d->st->method,
        .method_len = strlen(d->st->method),
        .path = path,
        .path_len = q ? (size_t)(q - path) : plen,
        .query = q ? q + 1 : NULL,
        .query_len = q ? plen - (size_t)(q - path) - 1 : 0,
        .header = hdr_lookup,
        .ctx = &d->st->req,
    };
    return rmr_matcher_find(v->matcher, &r);
}

/* ---- the request ---- */

static int find_hdr(const h1_msg_t *m, const char *name, const char **v, size_t *vlen)
{
    return hdr_lookup((void *)m, name, strlen(name), 0, v, vlen);
}

static int lane_ok(const char *s, size_t n)
{
    if (!n || n > RMR_LANE_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return 0;
    }
    return 1;
}

/* The request's lane from its headers: a lane header, then baggage's lane entry. */
static void lane_from_headers(stream_t *st, const char *route_header)
{
    const h1_msg_t *m = &st->req;
    const char *v;
    size_t n;
    if (route_header && find_hdr(m, route_header, &v, &n) == 0 && lane_ok(v, n))
        goto found;
    for (uint32_t i = 0; i < st->view->n_lane_headers; i++)
        if (find_hdr(m, st->view->lane_headers[i], &v, &n) == 0 && lane_ok(v, n))
            goto found;
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        const h1_hdr_t *h = &m->hdrs[i];
        if (h1_span_eq(m, h->name, "baggage") &&
            rmr_baggage_lane(h1_str(m, h->value), h->value.len, "lane", &v, &n) == 0 &&
            lane_ok(v, n))
            goto found;
    }
    return;
found:
    memcpy(st->lane, v, n);
    st->lane_len = (uint8_t)n;
    st->lane_in_req = 1;
}

static int trace_id_of(const stream_t *st, uint8_t id[16])
{
    if (st->trace_live) { /* tracing read the context already (and made one when absent) */
        memcpy(id, st->trace_id, 16);
        return 0;
    }
    const char *v;
    size_t n;
    rmr_traceparent_t tp;
    if (find_hdr(&st->req, "traceparent", &v, &n) < 0 || rmr_traceparent_parse(v, n, &tp) < 0)
        return -1;
    memcpy(id, tp.trace_id, 16);
    return 0;
}

/* The sticky key of the request, or NULL. */
static const char *sticky_key(const stream_t *st, const gray_t *g, size_t *len)
{
    const h1_msg_t *m = &st->req;
    const char *v;
    size_t n;
    if (g->sticky_header && find_hdr(m, g->sticky_header, &v, &n) == 0 && n) {
        *len = n;
        return v;
    }
    if (g->sticky_cookie) {
        for (uint32_t i = 0; i < m->nhdrs; i++) {
            const h1_hdr_t *h = &m->hdrs[i];
            if (h1_span_eq(m, h->name, "cookie") &&
                rmr_cookie_get(h1_str(m, h->value), h->value.len, g->sticky_cookie, &v, &n) == 0 &&
                n) {
                *len = n;
                return v;
            }
        }
    }
    return NULL;
}

/* x-remora-fault: "abort", "abort=503", "delay", "delay=200ms", comma-separated */
static void fault_header(const stream_t *st, const gray_t *g, int *abort, uint32_t *status,
                         int *delay, uint32_t *ms)
{
    const char *v;
    size_t n;
    if (find_hdr(&st->req, FAULT_HEADER, &v, &n) < 0)
        return;
    const char *e = v + n;
    while (v < e) {
        while (v < e && (*v == ' ' || *v == ',' || *v == '\t'))
            v++;
        const char *t = v;
        while (v < e && *v != ',')
            v++;
        const char *te = v;
        while (te > t && (te[-1] == ' ' || te[-1] == '\t'))
            te--;
        const char *eq = memchr(t, '=', (size_t)(te - t));
        size_t kl = (size_t)((eq ? eq : te) - t);
        uint64_t num = 0;
        int digits = 0;
        const char *p = eq ? eq + 1 : te;
        while (p < te && *p >= '0' && *p <= '9' && num < 3600000) {
            num = num * 10 + (uint64_t)(*p++ - '0');
            digits++;
        }
        if (kl == 5 && !strncmp(t, "abort", 5)) {
            *abort = 1;
            *status = g->abort_status;
            if (eq && digits && p == te && num >= 200 && num <= 599)
                *status = (uint32_t)num;
        } else if (kl == 5 && !strncmp(t, "delay", 5)) {
            *delay = 1;
            *ms = g->delay_ms ? g->delay_ms : 1000;
            if (eq && digits) {
                if (p + 2 == te && !strncmp(p, "ms", 2))
                    *ms = (uint32_t)num;
                else if (p + 1 == te && *p == 's')
                    *ms = (uint32_t)(num * 1000 > 3600000 ? 3600000 : num * 1000);
            }
        }
    }
}

static int rand_ppm(worker_t *w, uint32_t ppm)
{
    return ppm && (ppm >= 1000000 || worker_rand(w) % 1000000 < ppm);
}

int gray_request(conn_t *d, int inbound)
{
    stream_t *st = d->st;
    worker_t *w = d->w;
    view_t *v = st->view;
    const route_rt_t *rt = st->route >= 0 ? &v->routes[st->route] : NULL;
    const gray_t *g = rt ? &rt->gray : NULL;
    st->n_order = 0;
    st->lane_sub = -1;
    lane_from_headers(st, g ? g->lane_header : NULL);
    uint8_t tid[16];
    if (inbound) {
        /* remember the trace's lane for the app's own calls, which may carry only traceparent */
        if (st->lane_len && trace_id_of(st, tid) == 0 &&
            rmr_lanes_put(v->lanes, tid, st->lane, st->lane_len, w->loop.now_ms) == 0 &&
            !__atomic_load_n(&lanes_used, __ATOMIC_RELAXED))
            __atomic_store_n(&lanes_used, 1, __ATOMIC_RELAXED);
        return 0;
    }
    if (!st->lane_len && __atomic_load_n(&lanes_used, __ATOMIC_RELAXED) &&
        trace_id_of(st, tid) == 0) {
        int n = rmr_lanes_get(v->lanes, tid, st->lane, sizeof(st->lane), w->loop.now_ms);
        if (n > 0 && lane_ok(st->lane, (size_t)n)) {
            st->lane_len = (uint8_t)n;
            /* put it back on the call, for the next hop's sidecar */
            const char *h = g && g->lane_header ? g->lane_header : v->lane_headers[0];
            if (msg_add_own(&st->req, h, st->lane, st->lane_len) < 0)
                RMR_DEBUG("lane: no room to add %s", h);
        }
    }
    if (!g)
        return 0;
    /* candidates: the lane's subset, then the split */
    if (st->lane_len) {
        for (uint32_t i = 0; i < g->n_lanes; i++)
            if (strlen(g->lane_names[i]) == st->lane_len &&
                !memcmp(g->lane_names[i], st->lane, st->lane_len) && g->lanes[i].n) {
                st->lane_sub = (int8_t)i;
                break;
            }
    }
    if (g->n_split) {
        size_t klen;
        const char *key = sticky_key(st, g, &klen);
        if (key) {
            int live = rmr_sticky_rank(key, klen, g->ids, g->weights, g->n_split, st->order);
            st->n_order = live > 0 ? (uint8_t)live : 0;
        } else {
            int p = rmr_swrr_pick(&((gray_t *)g)->swrr);
            uint8_t k = 0;
            if (p >= 0)
                st->order[k++] = (uint8_t)p;
            for (uint32_t i = 0; i < g->n_split; i++)
                if ((int)i != p && g->weights[i])
                    st->order[k++] = (uint8_t)i;
            st->n_order = k;
        }
    }
    /* faults: drills by header where the route allows it, then the configured percentages */
    int abort = 0, delay = 0;
    uint32_t status = 0, ms = 0;
    if (g->fault_header)
        fault_header(st, g, &abort, &status, &delay, &ms);
    if (!abort && rand_ppm(w, g->abort_ppm)) {
        abort = 1;
        status = g->abort_status;
    }
    if (!delay && rand_ppm(w, g->delay_ppm)) {
        delay = 1;
        ms = g->delay_ms;
    }
    if (abort) {
        st->fault = 1;
        gray_account(st, 1);
        stream_fail(d, (int)status, "fault-abort");
        return 1;
    }
    if (rand_ppm(w, g->mirror_ppm) && g->mirror.n)
        st->mirror_want = 1;
    /* A delayed request's body waits in the replay copy: only bodies that fit are delayed. */
    if (delay && ms &&
        (st->req_out == FRAME_NONE || (st->has_cl && st->req_cl <= RETRY_BODY_MAX))) {
        st->fault = 2;
        st->fault_delay_ms = ms;
        if (st->req_out != FRAME_NONE) {
            st->keep_body = 1;
            st->body_held = 1;
        }
        return 2;
    }
    return 0;
}

endpoint_t *gray_pick(worker_t *w, stream_t *st, const endpoint_t *avoid, int *probe)
{
    cluster_t *c = st->cluster;
    const route_rt_t *rt = st->route >= 0 ? &st->view->routes[st->route] : NULL;
    const gray_t *g = rt ? &rt->gray : NULL;
    endpoint_t *ep;
    if (g && st->lane_sub >= 0) {
        const subset_t *s = &g->lanes[st->lane_sub];
        if ((ep = cluster_pick(w, c, s, avoid, probe))) {
            st->subset = s;
            return ep;
        }
    }
    if (g && g->n_split) {
        for (uint8_t i = 0; i < st->n_order; i++) {
            const subset_t *s = &g->split[st->order[i]];
            if (s->n && (ep = cluster_pick(w, c, s, avoid, probe))) {
                st->subset = s;
                return ep;
            }
        }
        return NULL;
    }
    st->subset = g ? &g->all : NULL;
    return cluster_pick(w, c, NULL, avoid, probe);
}

void gray_account(stream_t *st, int request)
{
    const route_rt_t *rt = st->route >= 0 ? &st->view->routes[st->route] : NULL;
    if (!rt)
        return;
    const subset_t *s = st->subset ? st->subset : &rt->gray.all;
    if (!s->stats)
        return;
    rmr_subset_counters_t *c = &s->stats->w[st->d->w->id];
    if (request) {
        RMR_STAT_INC(c->requests);
        return;
    }
    int cls = st->status / 100;
    if (cls >= 1 && cls <= 5)
        RMR_STAT_INC(c->responses[cls]);
}

/* ---- mirroring ---- */

/* The shadow copy of d's request, to an endpoint of the route's mirror subset: the request as
 * it goes upstream, marked x-remora-shadow: 1, with its body when it was kept whole. */
void gray_mirror(conn_t *d, const char *body, size_t blen)
{
    stream_t *st = d->st;
    worker_t *w = d->w;
    st->mirror_want = 0;
    const route_rt_t *rt = st->route >= 0 ? &st->view->routes[st->route] : NULL;
    if (!rt || !rt->gray.mirror.n || !w->mirror)
        return;
    const subset_t *s = &rt->gray.mirror;
    const endpoint_t *ep = &st->cluster->endpoints[s->idx[worker_rand(w) % s->n]];
    const h1_msg_t *m = &st->req;
    rmr_buf_t b = {0};
    const char *auth, *path;
    size_t alen, plen;
    req_target(m, &auth, &alen, &path, &plen);
    if (!auth) {
        auth = st->cluster->conf->name;
        alen = strlen(auth);
    }
    rmr_buf_printf(&b, "%s %.*s HTTP/1.1\r\nhost: %.*s\r\n", st->method, (int)plen, path, (int)alen,
                   auth);
    for (uint32_t i = 0; i < m->nhdrs; i++) {
        const h1_hdr_t *h = &m->hdrs[i];
        if (h->dropped || (int)i == m->host || h->kind == H_CONTENT_LENGTH ||
            h->kind == H_TRANSFER_ENCODING || h->kind == H_CONNECTION ||
            h1_span_eq(m, h->name, "x-remora-shadow") || h1_span_eq(m, h->name, "expect"))
            continue;
        rmr_buf_append(&b, h1_str(m, h->name), h->name.len);
        rmr_buf_append(&b, ": ", 2);
        rmr_buf_append(&b, h1_str(m, h->value), h->value.len);
        rmr_buf_append(&b, "\r\n", 2);
    }
    if (st->idem_gen[0])
        rmr_buf_printf(&b, "idempotency-key: %s\r\n", st->idem_gen);
    rmr_buf_printf(&b, "x-remora-shadow: 1\r\ncontent-length: %zu\r\nconnection: close\r\n\r\n",
                   blen);
    if (blen)
        rmr_buf_append(&b, body, blen);
    uint32_t timeout = st->timeout_ms ? st->timeout_ms : 15000;
    if (!b.oom && rmr_mirror_send(w->mirror, (const struct sockaddr *)&ep->conf->addr.ss,
                                  ep->conf->addr.len, b.data, b.len, timeout) == 0) {
        st->mirrored = 1;
        if (s->stats)
            RMR_STAT_INC(s->stats->w[w->id].mirrored);
    }
    rmr_buf_free(&b);
}

/* At dispatch: a request with no body is mirrored now; one with a body once it is whole (its
 * copy is kept for the purpose, up to SHADOW_MAX). */
void gray_mirror_start(conn_t *d)
{
    stream_t *st = d->st;
    if (!st->mirror_want)
        return;
    if (st->req_out == FRAME_NONE || (st->req_done && !st->body_in)) {
        gray_mirror(d, NULL, 0);
        return;
    }
    if (st->has_cl && st->req_cl > SHADOW_MAX) {
        st->mirror_want = 0; /* too large to copy: not mirrored */
        return;
    }
    st->keep_body = 1; /* the replay copy serves the mirror too */
}

void gray_mirror_end(conn_t *d)
{
    stream_t *st = d->st;
    if (!st->mirror_want)
        return;
    if (st->replay_over || (st->replay && st->replay->len > SHADOW_MAX)) {
        st->mirror_want = 0;
        return;
    }
    gray_mirror(d, st->replay ? st->replay->data : NULL, st->replay ? st->replay->len : 0);
}
