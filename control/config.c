/*
 * Config snapshots: bootstrap + mesh (YAML via yamlpb, or built from the command line) are
 * validated whole, then compiled into the rmr_config_t the data plane reads.
 *
 * Validation errors name "FILE:LINE: FIELD.PATH: message"; the line comes from the YAML line
 * index of the file the field was written in.
 */
#include "remora/config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <regex.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "remora/v1/bootstrap.pb-c.h"
#include "remora/v1/mesh.pb-c.h"
#include "remora/yamlpb.h"

typedef Remora__V1__Mesh Mesh;
typedef Remora__V1__Bootstrap Bootstrap;
typedef Remora__V1__Service Service;
typedef Remora__V1__Route Route;
typedef Remora__V1__Selector Selector;
typedef Remora__V1__Duration Duration;

struct rmr_config_shared {
    int refs;
    Mesh *mesh;
    Bootstrap *boot;
    char *tls_files[3]; /* cert, key, ca resolved against the bootstrap's folder */
};

/* Where errors point: one YAML file and its line index (lines NULL: no line numbers). */
struct src {
    const char *file;
    const rmr_yamlpb_lines_t *lines;
};

struct ctx {
    rmr_conf_err_t *err;
    struct src mesh, boot;
};

static int verr(const struct src *s, rmr_conf_err_t *err, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int verr(const struct src *s, rmr_conf_err_t *err, const char *path, const char *fmt, ...)
{
    if (!err)
        return -EINVAL;
    unsigned line = rmr_yamlpb_line(s->lines, path);
    int n;
    if (line)
        n = snprintf(err->msg, sizeof(err->msg), "%s:%u: %s: ", s->file, line, path);
    else
        n = snprintf(err->msg, sizeof(err->msg), "%s: %s: ", s->file, path);
    if (n >= 0 && (size_t)n < sizeof(err->msg)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg + n, sizeof(err->msg) - n, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

static void set_err(rmr_conf_err_t *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void set_err(rmr_conf_err_t *err, const char *fmt, ...)
{
    if (!err)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
}

#define P(buf, ...) (snprintf(buf, sizeof(buf), __VA_ARGS__), buf)

static bool empty(const char *s)
{
    return !s || !*s;
}

/* ------------------------------------------------------------------------------------------ */
/* addresses */

int rmr_addr_parse(const char *text, rmr_addr_t *out)
{
    char host[64];
    const char *hs, *he, *ps;
    memset(out, 0, sizeof(*out));
    if (!text)
        return -EINVAL;
    if (text[0] == '[') {
        hs = text + 1;
        he = strchr(hs, ']');
        if (!he || he[1] != ':')
            return -EINVAL;
        ps = he + 2;
    } else {
        he = strrchr(text, ':');
        if (!he)
            return -EINVAL;
        hs = text;
        ps = he + 1;
        if (memchr(hs, ':', (size_t)(he - hs)))
            return -EINVAL; /* a bare IPv6 address needs brackets */
    }
    size_t hl = (size_t)(he - hs);
    if (hl == 0 || hl >= sizeof(host))
        return -EINVAL;
    memcpy(host, hs, hl);
    host[hl] = '\0';
    if (!*ps || strlen(ps) > 5)
        return -EINVAL;
    unsigned port = 0;
    for (const char *p = ps; *p; p++) {
        if (*p < '0' || *p > '9')
            return -EINVAL;
        port = port * 10 + (unsigned)(*p - '0');
    }
    if (port > 65535)
        return -EINVAL;
    if (text[0] == '[') {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&out->ss;
        if (inet_pton(AF_INET6, host, &s6->sin6_addr) != 1)
            return -EINVAL;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        out->len = sizeof(*s6);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&out->ss;
        if (!strcmp(host, "localhost"))
            strcpy(host, "127.0.0.1");
        if (inet_pton(AF_INET, host, &s4->sin_addr) != 1)
            return -EINVAL;
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        out->len = sizeof(*s4);
    }
    out->text = strdup(text);
    if (!out->text) {
        memset(out, 0, sizeof(*out));
        return -ENOMEM;
    }
    return 0;
}

void rmr_addr_clear(rmr_addr_t *a)
{
    if (!a)
        return;
    free(a->text);
    memset(a, 0, sizeof(*a));
}

static uint16_t addr_port(const rmr_addr_t *a)
{
    if (a->ss.ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
    return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
}

/* Copies src into dst; a NULL text is rendered from the address. */
static int addr_copy(rmr_addr_t *dst, const rmr_addr_t *src)
{
    memset(dst, 0, sizeof(*dst));
    memcpy(&dst->ss, &src->ss, sizeof(dst->ss));
    dst->len = src->len;
    if (src->text) {
        dst->text = strdup(src->text);
    } else {
        char ip[INET6_ADDRSTRLEN], buf[INET6_ADDRSTRLEN + 16];
        if (src->ss.ss_family == AF_INET6) {
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)&src->ss)->sin6_addr, ip,
                      sizeof(ip));
            snprintf(buf, sizeof(buf), "[%s]:%u", ip, addr_port(src));
        } else {
            inet_ntop(AF_INET, &((const struct sockaddr_in *)&src->ss)->sin_addr, ip, sizeof(ip));
            snprintf(buf, sizeof(buf), "%s:%u", ip, addr_port(src));
        }
        dst->text = strdup(buf);
    }
    return dst->text ? 0 : -ENOMEM;
}

/* "host:port" where host may be a DNS name: for control-plane addresses. */
static bool host_port_ok(const char *s)
{
    const char *c = strrchr(s, ':');
    if (!c || c == s || !c[1] || strlen(c + 1) > 5)
        return false;
    unsigned port = 0;
    for (const char *p = c + 1; *p; p++) {
        if (*p < '0' || *p > '9')
            return false;
        port = port * 10 + (unsigned)(*p - '0');
    }
    return port > 0 && port <= 65535;
}

/* ------------------------------------------------------------------------------------------ */
/* freeing */

static void shared_unref(struct rmr_config_shared *sh)
{
    if (!sh || __atomic_sub_fetch(&sh->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    if (sh->mesh)
        protobuf_c_message_free_unpacked(&sh->mesh->base, NULL);
    if (sh->boot)
        protobuf_c_message_free_unpacked(&sh->boot->base, NULL);
    for (int i = 0; i < 3; i++)
        free(sh->tls_files[i]);
    free(sh);
}

static void service_clear(rmr_service_conf_t *s)
{
    free(s->name);
    for (size_t i = 0; i < s->n_endpoints; i++) {
        rmr_endpoint_conf_t *e = &s->endpoints[i];
        rmr_addr_clear(&e->addr);
        for (size_t k = 0; k < e->n_labels; k++) {
            free(e->labels[k].key);
            free(e->labels[k].value);
        }
        free(e->labels);
    }
    free(s->endpoints);
    free(s->dns_name);
    free(s->default_identity);
}

static void route_clear(rmr_route_conf_t *r)
{
    free(r->name);
    free(r->match_service);
    free(r->path_prefix);
    free(r->path_exact);
    free(r->path_regex);
    free(r->method);
    if (r->path_re) {
        regfree(r->path_re);
        free(r->path_re);
    }
}

/* Compiles r->path_regex into r->path_re; the text was validated already. */
static int route_compile_regex(rmr_route_conf_t *r)
{
    if (!r->path_regex)
        return 0;
    r->path_re = malloc(sizeof(*r->path_re));
    if (!r->path_re)
        return -ENOMEM;
    /* The regex matches the whole path, as route matchers do elsewhere. */
    size_t n = strlen(r->path_regex) + 5;
    char *anchored = malloc(n);
    if (!anchored) {
        free(r->path_re);
        r->path_re = NULL;
        return -ENOMEM;
    }
    snprintf(anchored, n, "^(%s)$", r->path_regex);
    int rc = regcomp(r->path_re, anchored, REG_EXTENDED | REG_NOSUB);
    free(anchored);
    if (rc != 0) {
        free(r->path_re);
        r->path_re = NULL;
        return -ENOMEM;
    }
    return 0;
}

static void config_free(rmr_config_t *c)
{
    if (!c)
        return;
    free(c->source);
    free(c->node);
    free(c->service_name);
    free(c->access_log);
    free(c->labels);
    if (c->admin) {
        rmr_addr_clear(c->admin);
        free(c->admin);
    }
    for (size_t i = 0; i < c->n_listeners; i++)
        rmr_addr_clear(&c->listeners[i].addr);
    free(c->listeners);
    for (size_t i = 0; i < c->n_services; i++)
        service_clear(&c->services[i]);
    free(c->services);
    for (size_t i = 0; i < c->n_routes; i++)
        route_clear(&c->routes[i]);
    free(c->routes);
    shared_unref(c->shared);
    free(c);
}

rmr_config_t *rmr_config_ref(rmr_config_t *c)
{
    if (c)
        __atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
    return c;
}

void rmr_config_unref(rmr_config_t *c)
{
    if (c && __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0)
        config_free(c);
}

/* ------------------------------------------------------------------------------------------ */
/* validation helpers */

/* Milliseconds of d, or def when d is NULL. Refuses what does not fit uint32 ms, and zero
 * when !zero_ok. */
static int dur_ms(const struct ctx *x, const struct src *s, const char *path, const Duration *d,
                  uint32_t def, bool zero_ok, uint32_t *out)
{
    if (!d) {
        *out = def;
        return 0;
    }
    if (d->seconds < 0 || d->nanos < 0 || d->seconds > UINT32_MAX / 1000)
        return verr(s, x->err, path, "duration out of range (0s..%us)", UINT32_MAX / 1000);
    uint64_t ms = (uint64_t)d->seconds * 1000 + (uint64_t)d->nanos / 1000000;
    if (ms > UINT32_MAX)
        return verr(s, x->err, path, "duration out of range (0s..%us)", UINT32_MAX / 1000);
    if (ms == 0 && !zero_ok)
        return verr(s, x->err, path, "must be at least 1ms");
    *out = (uint32_t)ms;
    return 0;
}

static int percent_ok(const struct ctx *x, const struct src *s, const char *path, double v)
{
    if (!isfinite(v) || v < 0 || v > 100)
        return verr(s, x->err, path, "a percentage must be within 0..100, got %g", v);
    return 0;
}

static bool is_token(const char *s)
{
    if (empty(s))
        return false;
    for (; *s; s++)
        if (!strchr("!#$%&'*+-.^_`|~", *s) && !(*s >= '0' && *s <= '9') &&
            !(*s >= 'a' && *s <= 'z') && !(*s >= 'A' && *s <= 'Z'))
            return false;
    return true;
}

static int regex_ok(const struct ctx *x, const struct src *s, const char *path, const char *re)
{
    regex_t r;
    int rc = regcomp(&r, re, REG_EXTENDED | REG_NOSUB);
    if (rc != 0) {
        char msg[128];
        regerror(rc, &r, msg, sizeof(msg));
        return verr(s, x->err, path, "bad regular expression: %s", msg);
    }
    regfree(&r);
    return 0;
}

static const char *endpoint_label(const Remora__V1__Endpoint *e, const char *key)
{
    for (size_t i = 0; i < e->n_labels; i++)
        if (!strcmp(e->labels[i]->key, key))
            return e->labels[i]->value;
    return NULL;
}

static bool selector_matches(const Selector *sel, const Remora__V1__Endpoint *e)
{
    for (size_t i = 0; sel && i < sel->n_labels; i++) {
        const char *v = endpoint_label(e, sel->labels[i]->key);
        if (!v || strcmp(v, sel->labels[i]->value))
            return false;
    }
    return true;
}

/* A selector on a service with static endpoints must pick at least one of them. */
static int selector_ok(const struct ctx *x, const char *path, const Selector *sel,
                       const Service *svc)
{
    if (!sel || !svc || svc->dns)
        return 0;
    for (size_t i = 0; i < svc->n_endpoints; i++)
        if (selector_matches(sel, svc->endpoints[i]))
            return 0;
    char want[160];
    size_t o = 0;
    want[0] = '\0';
    for (size_t i = 0; i < sel->n_labels && o < sizeof(want); i++)
        o += (size_t)snprintf(want + o, sizeof(want) - o, "%s%s=%s", i ? ", " : "",
                              sel->labels[i]->key, sel->labels[i]->value);
    return verr(&x->mesh, x->err, path, "no endpoint of service \"%s\" has labels {%s}", svc->name,
                want);
}

static const Service *find_service(const Mesh *m, const char *name)
{
    for (size_t i = 0; i < m->n_services; i++)
        if (!strcmp(m->services[i]->name, name))
            return m->services[i];
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* mesh validation */

static int check_service(const struct ctx *x, const Mesh *m, size_t i)
{
    const Service *s = m->services[i];
    const struct src *src = &x->mesh;
    char p[256];
    if (empty(s->name))
        return verr(src, x->err, P(p, "services[%zu].name", i), "a service needs a name");
    if (strchr(s->name, '|') || strchr(s->name, ':') || strchr(s->name, '/'))
        return verr(src, x->err, P(p, "services[%zu].name", i),
                    "\"%s\": a service name cannot contain '|', ':' or '/'", s->name);
    for (size_t k = 0; k < i; k++)
        if (!strcmp(m->services[k]->name, s->name)) {
            char q[64];
            return verr(src, x->err, P(p, "services[%zu].name", i),
                        "duplicate service \"%s\" (first at line %u)", s->name,
                        rmr_yamlpb_line(src->lines, P(q, "services[%zu]", k)));
        }
    if (s->dns && s->n_endpoints)
        return verr(src, x->err, P(p, "services[%zu].dns", i),
                    "a service takes either endpoints or dns, not both");
    if (s->tls && s->tls->mode == REMORA__V1__TLS_MODE__PERMISSIVE)
        return verr(
            src, x->err, P(p, "services[%zu].tls.mode", i),
            "permissive is for the inbound listener; toward a service use mutual or simple");
    for (size_t k = 0; s->tls && k < s->tls->n_identities; k++)
        if (strncmp(s->tls->identities[k], "spiffe://", 9))
            return verr(src, x->err, P(p, "services[%zu].tls.identities[%zu]", i, k),
                        "expected an identity spiffe://<trust-domain>/..., got \"%s\"",
                        s->tls->identities[k]);
    /* A service with no endpoints is valid (scaled to zero): its requests get 503. */
    for (size_t k = 0; k < s->n_endpoints; k++) {
        const Remora__V1__Endpoint *e = s->endpoints[k];
        rmr_addr_t a;
        if (rmr_addr_parse(e->address, &a) < 0)
            return verr(src, x->err, P(p, "services[%zu].endpoints[%zu].address", i, k),
                        "expected ip:port, [ipv6]:port or localhost:port, got \"%s\"", e->address);
        uint16_t port = addr_port(&a);
        rmr_addr_clear(&a);
        if (port == 0)
            return verr(src, x->err, P(p, "services[%zu].endpoints[%zu].address", i, k),
                        "port 0 is not a valid endpoint port");
    }
    uint32_t ms;
    if (s->dns) {
        if (empty(s->dns->name))
            return verr(src, x->err, P(p, "services[%zu].dns.name", i), "a name is required");
        if (s->dns->port == 0 || s->dns->port > 65535)
            return verr(src, x->err, P(p, "services[%zu].dns.port", i),
                        "a port within 1..65535 is required");
        if (dur_ms(x, src, P(p, "services[%zu].dns.refresh", i), s->dns->refresh, 5000, false,
                   &ms) < 0)
            return -EINVAL;
    }
    if (dur_ms(x, src, P(p, "services[%zu].connect_timeout", i), s->connect_timeout, 1000, false,
               &ms) < 0 ||
        dur_ms(x, src, P(p, "services[%zu].idle_timeout", i), s->idle_timeout, 60000, false, &ms) <
            0)
        return -EINVAL;
    const Remora__V1__CircuitBreaker *cb = s->circuit_breaker;
    if (cb && cb->outlier_detection) {
        const Remora__V1__OutlierDetection *od = cb->outlier_detection;
        const char *base = "services[%zu].circuit_breaker.outlier_detection.%s";
        uint32_t a, b;
        if (od->max_ejection_percent > 100)
            return verr(src, x->err, P(p, base, i, "max_ejection_percent"),
                        "a percentage must be within 0..100, got %u", od->max_ejection_percent);
        if (dur_ms(x, src, P(p, base, i, "interval"), od->interval, 1000, false, &ms) < 0 ||
            dur_ms(x, src, P(p, base, i, "base_ejection"), od->base_ejection, 30000, false, &a) <
                0 ||
            dur_ms(x, src, P(p, base, i, "max_ejection"), od->max_ejection, 300000, false, &b) < 0)
            return -EINVAL;
        if (od->base_ejection && od->max_ejection && a > b)
            return verr(src, x->err, P(p, base, i, "max_ejection"),
                        "must not be shorter than base_ejection");
    }
    if (s->idempotency && s->idempotency->enabled &&
        dur_ms(x, src, P(p, "services[%zu].idempotency.ttl", i), s->idempotency->ttl, 600000, false,
               &ms) < 0)
        return -EINVAL;
    return 0;
}

static bool retry_on_ok(const char *v)
{
    static const char *const known[] = {"connect-failure", "reset", "refused-stream",
                                        "gateway-error",   "5xx",   "retriable-4xx",
                                        "per-try-timeout"};
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (!strcmp(v, known[i]))
            return true;
    return strlen(v) == 3 && v[0] >= '1' && v[0] <= '5' && v[1] >= '0' && v[1] <= '9' &&
           v[2] >= '0' && v[2] <= '9';
}

static int check_key_matches(const struct ctx *x, const char *what, size_t i,
                             Remora__V1__KeyMatch **km, size_t n)
{
    char p[256];
    for (size_t k = 0; k < n; k++) {
        if (empty(km[k]->name))
            return verr(&x->mesh, x->err, P(p, "routes[%zu].match.%s[%zu].name", i, what, k),
                        "a name is required");
        if (km[k]->value_case == REMORA__V1__KEY_MATCH__VALUE_REGEX &&
            regex_ok(x, &x->mesh, P(p, "routes[%zu].match.%s[%zu].regex", i, what, k),
                     km[k]->regex) < 0)
            return -EINVAL;
        if (km[k]->absent && km[k]->value_case != REMORA__V1__KEY_MATCH__VALUE__NOT_SET)
            return verr(&x->mesh, x->err, P(p, "routes[%zu].match.%s[%zu].absent", i, what, k),
                        "absent cannot be combined with exact, prefix or regex");
    }
    return 0;
}

static int check_route(const struct ctx *x, const Mesh *m, size_t i, bool catch_all_ok)
{
    const Route *r = m->routes[i];
    const struct src *src = &x->mesh;
    char p[256];
    uint32_t ms, a, b;
    if (empty(r->name))
        return verr(src, x->err, P(p, "routes[%zu].name", i), "a route needs a name");
    for (size_t k = 0; k < i; k++)
        if (!strcmp(m->routes[k]->name, r->name)) {
            char q[64];
            return verr(src, x->err, P(p, "routes[%zu].name", i),
                        "duplicate route \"%s\" (first at line %u)", r->name,
                        rmr_yamlpb_line(src->lines, P(q, "routes[%zu]", k)));
        }
    const Remora__V1__RouteMatch *mt = r->match;
    const Service *svc = NULL;
    if (!mt || empty(mt->service)) {
        if (!catch_all_ok)
            return verr(src, x->err, P(p, "routes[%zu].match.service", i),
                        "the service the route sends to is required");
    } else if (!(svc = find_service(m, mt->service))) {
        return verr(src, x->err, P(p, "routes[%zu].match.service", i), "no service named \"%s\"",
                    mt->service);
    }
    if (mt) {
        if (mt->path_case == REMORA__V1__ROUTE_MATCH__PATH_PATH_PREFIX && mt->path_prefix[0] != '/')
            return verr(src, x->err, P(p, "routes[%zu].match.path_prefix", i),
                        "must start with '/', got \"%s\"", mt->path_prefix);
        if (mt->path_case == REMORA__V1__ROUTE_MATCH__PATH_PATH_EXACT && mt->path_exact[0] != '/')
            return verr(src, x->err, P(p, "routes[%zu].match.path_exact", i),
                        "must start with '/', got \"%s\"", mt->path_exact);
        if (mt->path_case == REMORA__V1__ROUTE_MATCH__PATH_PATH_REGEX &&
            regex_ok(x, src, P(p, "routes[%zu].match.path_regex", i), mt->path_regex) < 0)
            return -EINVAL;
        if (!empty(mt->method) && !is_token(mt->method))
            return verr(src, x->err, P(p, "routes[%zu].match.method", i),
                        "\"%s\" is not an HTTP method", mt->method);
        if (check_key_matches(x, "headers", i, mt->headers, mt->n_headers) < 0 ||
            check_key_matches(x, "query", i, mt->query, mt->n_query) < 0)
            return -EINVAL;
    }
    if (dur_ms(x, src, P(p, "routes[%zu].timeout", i), r->timeout, 0, true, &ms) < 0)
        return -EINVAL;
    if (r->n_split) {
        uint64_t total = 0;
        for (size_t k = 0; k < r->n_split; k++) {
            total += r->split[k]->weight;
            if (selector_ok(x, P(p, "routes[%zu].split[%zu].subset", i, k), r->split[k]->subset,
                            svc) < 0)
                return -EINVAL;
        }
        if (total == 0)
            return verr(src, x->err, P(p, "routes[%zu].split", i),
                        "the weights cannot all be zero");
    }
    if (r->sticky) {
        bool h = !empty(r->sticky->header), c = !empty(r->sticky->cookie);
        if (h == c)
            return verr(src, x->err, P(p, "routes[%zu].sticky", i),
                        "give exactly one of header or cookie");
        if (h && !is_token(r->sticky->header))
            return verr(src, x->err, P(p, "routes[%zu].sticky.header", i),
                        "\"%s\" is not a header name", r->sticky->header);
    }
    if (r->lanes) {
        if (!is_token(r->lanes->header))
            return verr(src, x->err, P(p, "routes[%zu].lanes.header", i),
                        "a header name is required");
        for (size_t k = 0; k < r->lanes->n_map; k++) {
            char q[64];
            snprintf(q, sizeof(q), "routes[%zu].lanes.map", i);
            /* same spelling as yamlpb's paths for plain keys; others fall back to the map */
            const char *key = r->lanes->map[k]->key;
            if (strlen(key) < 64 &&
                strspn(key, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                            "0123456789_-") == strlen(key) &&
                *key)
                snprintf(p, sizeof(p), "%s.%.63s", q, key);
            else
                snprintf(p, sizeof(p), "%s", q);
            if (selector_ok(x, p, r->lanes->map[k]->value, svc) < 0)
                return -EINVAL;
        }
    }
    if (r->mirror) {
        if (percent_ok(x, src, P(p, "routes[%zu].mirror.percent", i), r->mirror->percent) < 0 ||
            selector_ok(x, P(p, "routes[%zu].mirror.subset", i), r->mirror->subset, svc) < 0)
            return -EINVAL;
    }
    const Remora__V1__RetryPolicy *rp = r->retry;
    if (rp) {
        if (rp->attempts < 1)
            return verr(src, x->err, P(p, "routes[%zu].retry.attempts", i),
                        "must be at least 1 (the first try counts)");
        if (rp->attempts > 100)
            return verr(src, x->err, P(p, "routes[%zu].retry.attempts", i),
                        "%u attempts is more than 100", rp->attempts);
        if (dur_ms(x, src, P(p, "routes[%zu].retry.per_try_timeout", i), rp->per_try_timeout, 0,
                   true, &ms) < 0)
            return -EINVAL;
        for (size_t k = 0; k < rp->n_on; k++)
            if (!retry_on_ok(rp->on[k]))
                return verr(src, x->err, P(p, "routes[%zu].retry.on[%zu]", i, k),
                            "expected connect-failure, reset, refused-stream, gateway-error, "
                            "5xx, retriable-4xx, per-try-timeout or a status code, got \"%s\"",
                            rp->on[k]);
        if (rp->backoff) {
            if (dur_ms(x, src, P(p, "routes[%zu].retry.backoff.base", i), rp->backoff->base_, 25,
                       false, &a) < 0 ||
                dur_ms(x, src, P(p, "routes[%zu].retry.backoff.max", i), rp->backoff->max, 250,
                       false, &b) < 0)
                return -EINVAL;
            if (a > b)
                return verr(src, x->err, P(p, "routes[%zu].retry.backoff.max", i),
                            "must not be shorter than base");
        }
        if (rp->budget && percent_ok(x, src, P(p, "routes[%zu].retry.budget.percent", i),
                                     rp->budget->percent) < 0)
            return -EINVAL;
    }
    if (r->fault) {
        const Remora__V1__Fault *f = r->fault;
        if (f->delay && (percent_ok(x, src, P(p, "routes[%zu].fault.delay.percent", i),
                                    f->delay->percent) < 0 ||
                         dur_ms(x, src, P(p, "routes[%zu].fault.delay.duration", i),
                                f->delay->duration, 0, true, &ms) < 0))
            return -EINVAL;
        if (f->abort) {
            if (percent_ok(x, src, P(p, "routes[%zu].fault.abort.percent", i), f->abort->percent) <
                0)
                return -EINVAL;
            if ((f->abort->percent > 0 || f->abort->status) &&
                (f->abort->status < 200 || f->abort->status > 599))
                return verr(src, x->err, P(p, "routes[%zu].fault.abort.status", i),
                            "an HTTP status within 200..599 is required, got %u", f->abort->status);
        }
    }
    if (r->rate_limit) {
        double rps = r->rate_limit->requests_per_second;
        if (!isfinite(rps) || rps <= 0)
            return verr(src, x->err, P(p, "routes[%zu].rate_limit.requests_per_second", i),
                        "must be a positive number");
    }
    return 0;
}

static int check_mesh(const struct ctx *x, const Mesh *m, bool catch_all_ok)
{
    char p[256];
    for (size_t i = 0; i < m->n_services; i++)
        if (check_service(x, m, i) < 0)
            return -EINVAL;
    for (size_t i = 0; i < m->n_routes; i++)
        if (check_route(x, m, i, catch_all_ok) < 0)
            return -EINVAL;
    const Remora__V1__Tracing *t = m->tracing;
    if (t) {
        if (percent_ok(x, &x->mesh, "tracing.sample_percent", t->sample_percent) < 0)
            return -EINVAL;
        for (size_t i = 0; i < t->n_propagate; i++)
            for (size_t k = 0; k < i; k++)
                if (t->propagate[k] == t->propagate[i])
                    return verr(&x->mesh, x->err, P(p, "tracing.propagate[%zu]", i),
                                "listed twice");
        if (t->export && !empty(t->export->otlp_http) &&
            strncmp(t->export->otlp_http, "http://", 7) &&
            strncmp(t->export->otlp_http, "https://", 8))
            return verr(&x->mesh, x->err, "tracing.export.otlp_http",
                        "expected an http:// or https:// URL, got \"%s\"", t->export->otlp_http);
        if (t->export && t->export->n_headers > 16)
            return verr(&x->mesh, x->err, "tracing.export.headers", "at most 16 headers, got %zu",
                        t->export->n_headers);
        size_t hbytes = 0;
        for (size_t i = 0; t->export && i < t->export->n_headers; i++) {
            const Remora__V1__TraceExport__HeadersEntry *h = t->export->headers[i];
            if (!is_token(h->key))
                return verr(&x->mesh, x->err, P(p, "tracing.export.headers.%s", h->key),
                            "not a header name");
            static const char *const own[] = {"host",       "content-type",      "content-length",
                                              "connection", "transfer-encoding", "user-agent"};
            for (size_t k = 0; k < sizeof(own) / sizeof(own[0]); k++)
                if (!strcasecmp(h->key, own[k]))
                    return verr(&x->mesh, x->err, P(p, "tracing.export.headers.%s", h->key),
                                "set by remora itself");
            for (const char *c = h->value ? h->value : ""; *c; c++)
                if ((unsigned char)*c < 0x20 && *c != '\t')
                    return verr(&x->mesh, x->err, P(p, "tracing.export.headers.%s", h->key),
                                "a control character in the value");
            hbytes += strlen(h->key) + (h->value ? strlen(h->value) : 0) + 4;
        }
        if (hbytes > 4000)
            return verr(&x->mesh, x->err, "tracing.export.headers",
                        "more than 4000 bytes of headers");
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* compiling */

static int listener_add(rmr_config_t *c, const rmr_addr_t *a, int inbound, size_t svc,
                        const rmr_listener_conf_t *tls_from)
{
    rmr_listener_conf_t *l = realloc(c->listeners, (c->n_listeners + 1) * sizeof(*l));
    if (!l)
        return -ENOMEM;
    c->listeners = l;
    l = &c->listeners[c->n_listeners];
    memset(l, 0, sizeof(*l));
    if (addr_copy(&l->addr, a) < 0)
        return -ENOMEM;
    c->n_listeners++;
    l->inbound = inbound;
    l->inbound_service = svc;
    if (tls_from) {
        l->tls_mode = tls_from->tls_mode;
        l->n_allow = tls_from->n_allow;
        l->allow = tls_from->allow;
    }
    return 0;
}

static char *dup_or_null(const char *s)
{
    return empty(s) ? NULL : strdup(s);
}

static int compile_service(const Service *s, rmr_service_conf_t *o)
{
    uint32_t ms = 0;
    struct ctx none = {0};
    o->name = strdup(s->name);
    if (!o->name)
        return -ENOMEM;
    o->lb = (rmr_lb_t)s->load_balancer;
    o->protocol = (rmr_proto_t)s->protocol;
    dur_ms(&none, &none.mesh, "", s->connect_timeout, 1000, false, &ms);
    o->connect_timeout_ms = ms;
    dur_ms(&none, &none.mesh, "", s->idle_timeout, 60000, false, &ms);
    o->idle_timeout_ms = ms;
    o->pb = s;
    o->tls_mode = s->tls ? (rmr_tls_mode_t)s->tls->mode : RMR_TLS_DISABLE;
    if (s->tls) {
        o->tls_sni = empty(s->tls->sni) ? NULL : s->tls->sni;
        o->n_identities = s->tls->n_identities;
        o->identities = s->tls->identities;
    }
    if (s->dns) {
        o->dns_name = strdup(s->dns->name);
        if (!o->dns_name)
            return -ENOMEM;
        o->dns_port = (uint16_t)s->dns->port;
        dur_ms(&none, &none.mesh, "", s->dns->refresh, 5000, false, &ms);
        o->dns_refresh_ms = ms;
    } else {
        o->dns_refresh_ms = 5000;
    }
    if (s->n_endpoints) {
        o->endpoints = calloc(s->n_endpoints, sizeof(*o->endpoints));
        if (!o->endpoints)
            return -ENOMEM;
    }
    for (size_t k = 0; k < s->n_endpoints; k++) {
        const Remora__V1__Endpoint *e = s->endpoints[k];
        rmr_endpoint_conf_t *oe = &o->endpoints[k];
        int rc = rmr_addr_parse(e->address, &oe->addr);
        if (rc < 0)
            return rc;
        o->n_endpoints++;
        if (e->n_labels) {
            oe->labels = calloc(e->n_labels, sizeof(*oe->labels));
            if (!oe->labels)
                return -ENOMEM;
        }
        for (size_t j = 0; j < e->n_labels; j++) {
            oe->labels[j].key = strdup(e->labels[j]->key);
            oe->labels[j].value = strdup(e->labels[j]->value);
            oe->n_labels++;
            if (!oe->labels[j].key || !oe->labels[j].value)
                return -ENOMEM;
        }
    }
    return 0;
}

static int bootstrap_limits(const struct ctx *x, const Remora__V1__Limits *l, rmr_limits_t *o)
{
    const struct src *b = &x->boot;
    o->max_header_bytes = l && l->max_header_bytes ? l->max_header_bytes : 65536;
    o->max_headers = l && l->max_headers ? l->max_headers : 100;
    o->max_body_bytes = l ? l->max_body_bytes : 0;
    o->max_connections = l && l->max_connections ? l->max_connections : 10000;
    if (o->max_header_bytes < 1024)
        return verr(b, x->err, "limits.max_header_bytes", "must be at least 1024, got %u",
                    o->max_header_bytes);
    if (o->max_header_bytes > (64u << 20))
        return verr(b, x->err, "limits.max_header_bytes", "must be at most 67108864, got %u",
                    o->max_header_bytes);
    const Duration *ht = l ? l->header_timeout : NULL, *rt = l ? l->request_timeout : NULL;
    const Duration *it = l ? l->idle_timeout : NULL, *dt = l ? l->drain_timeout : NULL;
    /* zero means "the default" for these, as for the integers above */
    if (dur_ms(x, b, "limits.header_timeout", ht, 10000, true, &o->header_timeout_ms) < 0 ||
        dur_ms(x, b, "limits.request_timeout", rt, 15000, true, &o->request_timeout_ms) < 0 ||
        dur_ms(x, b, "limits.idle_timeout", it, 60000, true, &o->idle_timeout_ms) < 0 ||
        dur_ms(x, b, "limits.drain_timeout", dt, 10000, true, &o->drain_timeout_ms) < 0)
        return -EINVAL;
    if (!o->header_timeout_ms)
        o->header_timeout_ms = 10000;
    if (!o->request_timeout_ms)
        o->request_timeout_ms = 15000;
    if (!o->idle_timeout_ms)
        o->idle_timeout_ms = 60000;
    if (!o->drain_timeout_ms)
        o->drain_timeout_ms = 10000;
    const Remora__V1__Limits__Http2 *h2 = l ? l->http2 : NULL;
    o->h2_max_streams = h2 && h2->max_concurrent_streams ? h2->max_concurrent_streams : 128;
    o->h2_window = h2 && h2->initial_window ? h2->initial_window : 1u << 20;
    o->h2_max_resets = h2 && h2->max_resets_per_second ? h2->max_resets_per_second : 200;
    o->h2_max_control = h2 && h2->max_control_per_second ? h2->max_control_per_second : 100;
    o->h2_max_continuations = h2 && h2->max_continuations ? h2->max_continuations : 16;
    if (o->h2_window > 0x7fffffffu)
        return verr(b, x->err, "limits.http2.initial_window", "must be at most 2147483647");
    if (o->h2_window < 65535)
        return verr(b, x->err, "limits.http2.initial_window", "must be at least 65535");
    return 0;
}

static int parse_listen(const struct ctx *x, const char *path, const char *text, rmr_addr_t *a)
{
    if (empty(text))
        return verr(&x->boot, x->err, path, "an address host:port is required");
    int rc = rmr_addr_parse(text, a);
    if (rc == -ENOMEM)
        return rc;
    if (rc < 0)
        return verr(&x->boot, x->err, path,
                    "expected ip:port, [ipv6]:port or localhost:port, got \"%s\"", text);
    return 0;
}

/*
 * Validates mesh (+ boot when not NULL) and builds a snapshot that takes ownership of both
 * messages (they are freed on failure too).
 */
static rmr_config_t *compile(const struct ctx *x, Mesh *mesh, Bootstrap *boot, const char *source,
                             bool catch_all_ok)
{
    rmr_config_t *c = NULL;
    rmr_addr_t a = {0};
    char p[300];
    int rc = -ENOMEM;

    c = calloc(1, sizeof(*c));
    if (!c)
        goto nomem_loose;
    c->shared = calloc(1, sizeof(*c->shared));
    if (!c->shared)
        goto nomem_loose;
    c->shared->refs = 1;
    c->shared->mesh = mesh;
    c->shared->boot = boot;
    c->refs = 1;
    c->mesh_pb = mesh;
    c->boot_pb = boot;
    if (!(c->source = strdup(source)))
        goto fail;

    if (check_mesh(x, mesh, catch_all_ok) < 0) {
        rc = -EINVAL;
        goto fail;
    }

    size_t n_svc = mesh->n_services + (boot && boot->inbound ? 1 : 0);
    if (n_svc) {
        c->services = calloc(n_svc, sizeof(*c->services));
        if (!c->services)
            goto fail;
    }
    for (size_t i = 0; i < mesh->n_services; i++) {
        rc = compile_service(mesh->services[i], &c->services[c->n_services++]);
        if (rc < 0)
            goto fail;
    }
    if (mesh->n_routes) {
        c->routes = calloc(mesh->n_routes, sizeof(*c->routes));
        if (!c->routes)
            goto fail;
    }
    for (size_t i = 0; i < mesh->n_routes; i++) {
        const Route *r = mesh->routes[i];
        rmr_route_conf_t *o = &c->routes[c->n_routes++];
        const Remora__V1__RouteMatch *mt = r->match;
        o->pb = r;
        o->name = strdup(r->name);
        if (!o->name)
            goto fail;
        if (mt && !empty(mt->service)) {
            o->match_service = strdup(mt->service);
            if (!o->match_service)
                goto fail;
            o->service = (size_t)rmr_config_service(c, mt->service, strlen(mt->service));
        }
        if (mt && mt->path_case == REMORA__V1__ROUTE_MATCH__PATH_PATH_PREFIX &&
            !(o->path_prefix = dup_or_null(mt->path_prefix)) && !empty(mt->path_prefix))
            goto fail;
        if (mt && mt->path_case == REMORA__V1__ROUTE_MATCH__PATH_PATH_EXACT &&
            !(o->path_exact = dup_or_null(mt->path_exact)) && !empty(mt->path_exact))
            goto fail;
        if (mt && mt->path_case == REMORA__V1__ROUTE_MATCH__PATH_PATH_REGEX &&
            !(o->path_regex = dup_or_null(mt->path_regex)) && !empty(mt->path_regex))
            goto fail;
        if (mt && !empty(mt->method) && !(o->method = strdup(mt->method)))
            goto fail;
        if (route_compile_regex(o) < 0)
            goto fail;
        uint32_t ms = 0;
        dur_ms(x, &x->mesh, "", r->timeout, 0, true, &ms);
        o->timeout_ms = ms;
    }

    if (!boot) {
        c->limits = (rmr_limits_t){65536, 100, 0,        10000, 15000, 60000, 10000,
                                   10000, 128, 1u << 20, 200,   100,   16};
        return c;
    }

    /* the bootstrap */
    rc = -EINVAL;
    if (boot->workers > 1024) {
        verr(&x->boot, x->err, "workers", "at most 1024 workers, got %u", boot->workers);
        goto fail;
    }
    c->workers = boot->workers;
    if (boot->busy_poll) {
        const Duration *d = boot->busy_poll;
        if (d->seconds < 0 || d->nanos < 0 || d->seconds > 0 || d->nanos > 10000000) {
            verr(&x->boot, x->err, "busy_poll", "expected 0..10ms");
            goto fail;
        }
        c->busy_poll_us = (uint32_t)(d->nanos / 1000);
    }
    if (!empty(boot->node)) {
        c->node = strdup(boot->node);
    } else {
        char host[256] = "remora";
        gethostname(host, sizeof(host) - 1);
        host[sizeof(host) - 1] = '\0';
        c->node = strdup(host);
    }
    if (!c->node)
        goto nomem;
    if (!empty(boot->service) && !(c->service_name = strdup(boot->service)))
        goto nomem;
    if (!empty(boot->control) && !host_port_ok(boot->control)) {
        verr(&x->boot, x->err, "control", "expected host:port, got \"%s\"", boot->control);
        goto fail;
    }
    if (!empty(boot->admin)) {
        c->admin = calloc(1, sizeof(*c->admin));
        if (!c->admin)
            goto nomem;
        if ((rc = parse_listen(x, "admin", boot->admin, c->admin)) < 0)
            goto fail;
    }
    if ((rc = bootstrap_limits(x, boot->limits, &c->limits)) < 0)
        goto fail;
    if (!empty(boot->access_log)) {
        const char *al = boot->access_log, *slash = strrchr(source, '/');
        if (!strcmp(al, "-") || al[0] == '/' || !slash)
            c->access_log = strdup(al);
        else if (asprintf(&c->access_log, "%.*s/%s", (int)(slash - source), source, al) < 0)
            c->access_log = NULL;
        if (!c->access_log)
            goto nomem;
    }
    c->lane_ttl_ms = 300000;
    c->lane_max = 100000;
    if (boot->lane_memory) {
        uint32_t ms = 0;
        if (boot->lane_memory->ttl) {
            if (dur_ms(x, &x->boot, "lane_memory.ttl", boot->lane_memory->ttl, 1, false, &ms) < 0) {
                rc = -EINVAL;
                goto fail;
            }
            c->lane_ttl_ms = ms;
        }
        if (boot->lane_memory->max_entries > 10000000) {
            rc = verr(&x->boot, x->err, "lane_memory.max_entries", "at most 10000000, got %u",
                      boot->lane_memory->max_entries);
            goto fail;
        }
        if (boot->lane_memory->max_entries)
            c->lane_max = boot->lane_memory->max_entries;
    }
    if (boot->n_labels) {
        c->labels = calloc(boot->n_labels, sizeof(*c->labels));
        if (!c->labels)
            goto nomem;
        for (size_t i = 0; i < boot->n_labels; i++) {
            c->labels[i].key = boot->labels[i]->key;
            c->labels[i].value = boot->labels[i]->value;
        }
        c->n_labels = boot->n_labels;
    }
    if (boot->tls) {
        const char *files[3] = {boot->tls->cert, boot->tls->key, boot->tls->ca};
        static const char *const names[3] = {"tls.cert", "tls.key", "tls.ca"};
        const char *slash = strrchr(source, '/');
        for (int i = 0; i < 3; i++) {
            if (empty(files[i])) {
                if (i < 2) {
                    rc = verr(&x->boot, x->err, names[i], "a PEM file is required");
                    goto fail;
                }
                continue;
            }
            char *path;
            if (files[i][0] == '/' || !slash)
                path = strdup(files[i]);
            else if (asprintf(&path, "%.*s/%s", (int)(slash - source), source, files[i]) < 0)
                path = NULL;
            if (!path)
                goto nomem;
            if (access(path, R_OK) < 0) {
                rc = verr(&x->boot, x->err, names[i], "cannot read %s: %s", path, strerror(errno));
                free(path);
                goto fail;
            }
            c->shared->tls_files[i] = path;
        }
        c->tls_cert = c->shared->tls_files[0];
        c->tls_key = c->shared->tls_files[1];
        c->tls_ca = c->shared->tls_files[2];
    }
    for (size_t i = 0; i < mesh->n_services; i++) {
        const rmr_service_conf_t *sv = &c->services[i];
        if (sv->tls_mode == RMR_TLS_MUTUAL && !c->tls_cert) {
            rc = verr(&x->mesh, x->err, P(p, "services[%zu].tls.mode", i),
                      "mutual TLS needs the sidecar's certificate (`tls:` in the bootstrap %s)",
                      x->boot.file);
            goto fail;
        }
        if (sv->tls_mode != RMR_TLS_DISABLE && !c->tls_ca) {
            rc = verr(&x->mesh, x->err, P(p, "services[%zu].tls.mode", i),
                      "TLS toward a service needs a trust bundle (`tls.ca` in the bootstrap %s)",
                      x->boot.file);
            goto fail;
        }
    }
    if (!boot->inbound && !boot->outbound) {
        rc = verr(&x->boot, x->err, "outbound", "at least one of inbound and outbound is needed");
        goto fail;
    }
    if (boot->outbound) {
        if ((rc = parse_listen(x, "outbound.listen", boot->outbound->listen, &a)) < 0 ||
            (rc = listener_add(c, &a, 0, 0, NULL)) < 0)
            goto fail;
        rmr_addr_clear(&a);
    }
    if (boot->inbound) {
        const Remora__V1__Bootstrap__Inbound *in = boot->inbound;
        rmr_addr_t app = {0};
        if (empty(boot->service)) {
            rc = verr(&x->boot, x->err, "inbound",
                      "needs `service:`, the name of the service this sidecar fronts");
            goto fail;
        }
        if ((rc = parse_listen(x, "inbound.listen", in->listen, &a)) < 0 ||
            (rc = parse_listen(x, "inbound.app", in->app, &app)) < 0)
            goto fail;
        rmr_service_conf_t *s = &c->services[c->n_services];
        s->endpoints = calloc(1, sizeof(*s->endpoints));
        if (!s->endpoints) {
            rmr_addr_clear(&app);
            goto nomem;
        }
        s->endpoints[0].addr = app;
        s->n_endpoints = 1;
        c->n_services++;
        s->name = strdup(P(p, "inbound|%s", boot->service));
        if (!s->name)
            goto nomem;
        /* the mesh's own entry for this service carries its inbound settings (idempotency) */
        const Service *self = find_service(mesh, boot->service);
        s->pb = self;
        s->lb = RMR_LB_ROUND_ROBIN;
        s->protocol = self ? (rmr_proto_t)self->protocol : RMR_PROTO_HTTP1;
        s->connect_timeout_ms = 1000;
        s->idle_timeout_ms = 60000;
        s->dns_refresh_ms = 5000;
        rmr_listener_conf_t tl = {
            .tls_mode = (rmr_tls_mode_t)in->tls, .n_allow = in->n_allow, .allow = in->allow};
        if (tl.tls_mode != RMR_TLS_DISABLE && !c->tls_cert) {
            rc = verr(&x->boot, x->err, "inbound.tls",
                      "needs the sidecar's certificate: `tls: {cert: FILE, key: FILE, ca: FILE}`");
            goto fail;
        }
        if (tl.tls_mode != RMR_TLS_DISABLE && tl.tls_mode != RMR_TLS_SIMPLE && !c->tls_ca) {
            rc = verr(&x->boot, x->err, "tls.ca",
                      "mutual TLS needs a trust bundle to verify callers against");
            goto fail;
        }
        for (size_t i = 0; i < in->n_allow; i++)
            if (strncmp(in->allow[i], "spiffe://", 9)) {
                rc = verr(&x->boot, x->err, P(p, "inbound.allow[%zu]", i),
                          "expected an identity spiffe://<trust-domain>/..., got \"%s\"",
                          in->allow[i]);
                goto fail;
            }
        if ((rc = listener_add(c, &a, 1, c->n_services - 1, &tl)) < 0)
            goto fail;
        rmr_addr_clear(&a);
    }
    return c;

nomem_loose:
    /* nothing owns the messages yet */
    if (mesh)
        protobuf_c_message_free_unpacked(&mesh->base, NULL);
    if (boot)
        protobuf_c_message_free_unpacked(&boot->base, NULL);
    free(c);
    set_err(x->err, "%s: out of memory", source);
    return NULL;
nomem:
    rc = -ENOMEM;
fail:
    if (rc == -ENOMEM)
        set_err(x->err, "%s: out of memory", source);
    rmr_addr_clear(&a);
    config_free(c);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* public entry points */

rmr_config_t *rmr_config_load(const char *bootstrap_path, rmr_conf_err_t *err)
{
    ProtobufCMessage *bm = NULL, *mm = NULL;
    rmr_yamlpb_lines_t *bl = NULL, *ml = NULL;
    char *mesh_path = NULL;
    rmr_config_t *c = NULL;
    char e[sizeof(err->msg)];
    struct ctx x = {.err = err, .boot = {bootstrap_path, NULL}, .mesh = {NULL, NULL}};

    if (rmr_yamlpb_load(bootstrap_path, &remora__v1__bootstrap__descriptor, &bm, &bl, e,
                        sizeof(e)) < 0) {
        set_err(err, "%s", e);
        goto out;
    }
    x.boot.lines = bl;
    Bootstrap *boot = (Bootstrap *)bm;
    if (!empty(boot->mesh_file)) {
        const char *slash = strrchr(bootstrap_path, '/');
        if (boot->mesh_file[0] == '/' || !slash) {
            mesh_path = strdup(boot->mesh_file);
        } else if (asprintf(&mesh_path, "%.*s/%s", (int)(slash - bootstrap_path), bootstrap_path,
                            boot->mesh_file) < 0) {
            mesh_path = NULL;
        }
        if (!mesh_path) {
            set_err(err, "%s: out of memory", bootstrap_path);
            goto out;
        }
        int rc = rmr_yamlpb_load(mesh_path, &remora__v1__mesh__descriptor, &mm, &ml, e, sizeof(e));
        if (rc < 0) {
            /* a missing file is the bootstrap's fault: point at mesh_file */
            if (rc == -ENOENT || rc == -EACCES || rc == -EISDIR)
                verr(&x.boot, err, "mesh_file", "%s", e);
            else
                set_err(err, "%s", e);
            goto out;
        }
    } else {
        mm = malloc(sizeof(Mesh));
        if (!mm) {
            set_err(err, "%s: out of memory", bootstrap_path);
            goto out;
        }
        remora__v1__mesh__init((Mesh *)mm);
    }
    x.mesh.file = mesh_path ? mesh_path : bootstrap_path;
    x.mesh.lines = ml;
    c = compile(&x, (Mesh *)mm, boot, bootstrap_path, false);
    mm = bm = NULL; /* compile owns them now */
out:
    if (mm)
        protobuf_c_message_free_unpacked(mm, NULL);
    if (bm)
        protobuf_c_message_free_unpacked(bm, NULL);
    rmr_yamlpb_lines_free(bl);
    rmr_yamlpb_lines_free(ml);
    free(mesh_path);
    return c;
}

rmr_config_t *rmr_config_parse(const char *boot_name, const char *boot_yaml, size_t boot_len,
                               const char *mesh_name, const char *mesh_yaml, size_t mesh_len,
                               rmr_conf_err_t *err)
{
    ProtobufCMessage *bm = NULL, *mm = NULL;
    rmr_yamlpb_lines_t *bl = NULL, *ml = NULL;
    rmr_config_t *c = NULL;
    char e[sizeof(err->msg)];
    struct ctx x = {.err = err, .boot = {boot_name, NULL}, .mesh = {mesh_name, NULL}};

    if (rmr_yamlpb_parse(boot_name, boot_yaml ? boot_yaml : "", boot_yaml ? boot_len : 0,
                         &remora__v1__bootstrap__descriptor, &bm, &bl, e, sizeof(e)) < 0 ||
        rmr_yamlpb_parse(mesh_name, mesh_yaml ? mesh_yaml : "", mesh_yaml ? mesh_len : 0,
                         &remora__v1__mesh__descriptor, &mm, &ml, e, sizeof(e)) < 0) {
        set_err(err, "%s", e);
        goto out;
    }
    x.boot.lines = bl;
    x.mesh.lines = ml;
    c = compile(&x, (Mesh *)mm, (Bootstrap *)bm, boot_name, false);
    mm = bm = NULL; /* compile owns them now */
out:
    if (mm)
        protobuf_c_message_free_unpacked(mm, NULL);
    if (bm)
        protobuf_c_message_free_unpacked(bm, NULL);
    rmr_yamlpb_lines_free(bl);
    rmr_yamlpb_lines_free(ml);
    return c;
}

/* Appends a new message to a repeated message field. */
#define PB_PUSH(parent, field, type, init)                                                         \
    __extension__({                                                                                \
        type *m_ = malloc(sizeof(type));                                                           \
        type **a_ = m_ ? realloc((parent)->field, ((parent)->n_##field + 1) * sizeof(*a_)) : NULL; \
        if (m_ && a_) {                                                                            \
            init(m_);                                                                              \
            (parent)->field = a_;                                                                  \
            a_[(parent)->n_##field++] = m_;                                                        \
        } else {                                                                                   \
            free(m_);                                                                              \
            m_ = NULL;                                                                             \
        }                                                                                          \
        m_;                                                                                        \
    })

rmr_config_t *rmr_config_simple(const char *listen, const char *upstream, unsigned workers,
                                const char *admin, rmr_conf_err_t *err)
{
    Mesh *mesh = NULL;
    rmr_config_t *c = NULL;
    rmr_addr_t a = {0};
    char *list = NULL;
    struct ctx x = {.err = err, .mesh = {"command line", NULL}, .boot = {"command line", NULL}};

    if (rmr_addr_parse(listen, &a) < 0) {
        set_err(err,
                "command line: --listen: expected ip:port, [ipv6]:port or localhost:port, "
                "got \"%s\"",
                listen ? listen : "");
        return NULL;
    }
    rmr_addr_clear(&a);
    if (admin && rmr_addr_parse(admin, &a) < 0) {
        set_err(err,
                "command line: --admin: expected ip:port, [ipv6]:port or localhost:port, "
                "got \"%s\"",
                admin);
        return NULL;
    }
    rmr_addr_clear(&a);
    if (workers > 1024) {
        set_err(err, "command line: --workers: at most 1024, got %u", workers);
        return NULL;
    }
    if (empty(upstream)) {
        set_err(err, "command line: --upstream: at least one address is required");
        return NULL;
    }

    mesh = malloc(sizeof(*mesh));
    if (!mesh)
        goto nomem;
    remora__v1__mesh__init(mesh);
    Service *s = PB_PUSH(mesh, services, Service, remora__v1__service__init);
    if (!s || !(s->name = strdup("upstream")))
        goto nomem;
    if (!(list = strdup(upstream)))
        goto nomem;
    char *save = NULL;
    for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        size_t tl = strlen(tok);
        while (tl && tok[tl - 1] == ' ')
            tok[--tl] = '\0';
        if (!*tok)
            continue;
        if (rmr_addr_parse(tok, &a) < 0) {
            set_err(err,
                    "command line: --upstream: expected ip:port, [ipv6]:port or "
                    "localhost:port, got \"%s\"",
                    tok);
            goto fail;
        }
        rmr_addr_clear(&a);
        Remora__V1__Endpoint *e =
            PB_PUSH(s, endpoints, Remora__V1__Endpoint, remora__v1__endpoint__init);
        if (!e || !(e->address = strdup(tok)))
            goto nomem;
    }
    if (!s->n_endpoints) {
        set_err(err, "command line: --upstream: at least one address is required");
        goto fail;
    }
    Route *r = PB_PUSH(mesh, routes, Route, remora__v1__route__init);
    if (!r || !(r->name = strdup("default")))
        goto nomem;
    free(list);
    list = NULL;

    c = compile(&x, mesh, NULL, "command line", true);
    mesh = NULL;
    if (!c)
        return NULL;
    c->workers = workers;
    if (rmr_addr_parse(listen, &a) < 0)
        goto nomem; /* parsed fine above: only ENOMEM is left */
    int rc = listener_add(c, &a, 0, 0, NULL);
    rmr_addr_clear(&a);
    if (rc < 0)
        goto nomem;
    if (admin) {
        c->admin = calloc(1, sizeof(*c->admin));
        if (!c->admin || rmr_addr_parse(admin, c->admin) < 0)
            goto nomem;
    }
    char host[256] = "remora";
    gethostname(host, sizeof(host) - 1);
    host[sizeof(host) - 1] = '\0';
    if (!(c->node = strdup(host)))
        goto nomem;
    return c;

nomem:
    set_err(err, "command line: out of memory");
fail:
    free(list);
    if (mesh)
        protobuf_c_message_free_unpacked(&mesh->base, NULL);
    rmr_config_unref(c);
    return NULL;
}

ssize_t rmr_config_service(const rmr_config_t *c, const char *name, size_t len)
{
    for (size_t i = 0; c && i < c->n_services; i++)
        if (strlen(c->services[i].name) == len && !memcmp(c->services[i].name, name, len))
            return (ssize_t)i;
    return -1;
}

/* ------------------------------------------------------------------------------------------ */
/* copies */

static int service_copy(rmr_service_conf_t *d, const rmr_service_conf_t *s, bool endpoints)
{
    *d = *s;
    d->name = NULL;
    d->dns_name = NULL;
    d->endpoints = NULL;
    d->n_endpoints = 0;
    d->default_identity = NULL;
    if (s->default_identity && !(d->default_identity = strdup(s->default_identity)))
        return -ENOMEM;
    if (!(d->name = strdup(s->name)))
        return -ENOMEM;
    if (s->dns_name && !(d->dns_name = strdup(s->dns_name)))
        return -ENOMEM;
    if (!endpoints || !s->n_endpoints)
        return 0;
    d->endpoints = calloc(s->n_endpoints, sizeof(*d->endpoints));
    if (!d->endpoints)
        return -ENOMEM;
    for (size_t i = 0; i < s->n_endpoints; i++) {
        rmr_endpoint_conf_t *de = &d->endpoints[i];
        const rmr_endpoint_conf_t *se = &s->endpoints[i];
        if (addr_copy(&de->addr, &se->addr) < 0) {
            d->n_endpoints = i + 1;
            return -ENOMEM;
        }
        d->n_endpoints = i + 1;
        if (se->n_labels) {
            de->labels = calloc(se->n_labels, sizeof(*de->labels));
            if (!de->labels)
                return -ENOMEM;
        }
        for (size_t k = 0; k < se->n_labels; k++) {
            de->labels[k].key = strdup(se->labels[k].key);
            de->labels[k].value = strdup(se->labels[k].value);
            de->n_labels = k + 1;
            if (!de->labels[k].key || !de->labels[k].value)
                return -ENOMEM;
        }
    }
    return 0;
}

static char *sdup(const char *s, bool *ok)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *ok = false;
    return d;
}

rmr_config_t *rmr_config_with_endpoints(const rmr_config_t *c, size_t svc, const rmr_addr_t *eps,
                                        size_t n)
{
    if (!c || svc >= c->n_services)
        return NULL;
    rmr_config_t *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    bool ok = true;
    d->refs = 1;
    d->workers = c->workers;
    d->busy_poll_us = c->busy_poll_us;
    d->limits = c->limits;
    d->tls_cert = c->tls_cert;
    d->tls_key = c->tls_key;
    d->tls_ca = c->tls_ca;
    d->mesh_pb = c->mesh_pb;
    d->boot_pb = c->boot_pb;
    d->shared = c->shared;
    if (d->shared)
        __atomic_add_fetch(&d->shared->refs, 1, __ATOMIC_RELAXED);
    d->source = sdup(c->source, &ok);
    d->node = sdup(c->node, &ok);
    d->service_name = sdup(c->service_name, &ok);
    d->access_log = sdup(c->access_log, &ok);
    d->lane_ttl_ms = c->lane_ttl_ms;
    d->lane_max = c->lane_max;
    if (!ok)
        goto fail;
    if (c->n_labels) {
        d->labels = calloc(c->n_labels, sizeof(*d->labels));
        if (!d->labels)
            goto fail;
        memcpy(d->labels, c->labels, c->n_labels * sizeof(*d->labels)); /* into the shared pb */
        d->n_labels = c->n_labels;
    }
    if (c->admin) {
        d->admin = calloc(1, sizeof(*d->admin));
        if (!d->admin || addr_copy(d->admin, c->admin) < 0)
            goto fail;
    }
    for (size_t i = 0; i < c->n_listeners; i++)
        if (listener_add(d, &c->listeners[i].addr, c->listeners[i].inbound,
                         c->listeners[i].inbound_service, &c->listeners[i]) < 0)
            goto fail;
    if (c->n_services) {
        d->services = calloc(c->n_services, sizeof(*d->services));
        if (!d->services)
            goto fail;
    }
    for (size_t i = 0; i < c->n_services; i++) {
        d->n_services = i + 1;
        if (service_copy(&d->services[i], &c->services[i], i != svc) < 0)
            goto fail;
    }
    rmr_service_conf_t *s = &d->services[svc];
    if (n) {
        s->endpoints = calloc(n, sizeof(*s->endpoints));
        if (!s->endpoints)
            goto fail;
    }
    for (size_t i = 0; i < n; i++) {
        if (addr_copy(&s->endpoints[i].addr, &eps[i]) < 0) {
            s->n_endpoints = i + 1;
            goto fail;
        }
        s->n_endpoints = i + 1;
    }
    if (c->n_routes) {
        d->routes = calloc(c->n_routes, sizeof(*d->routes));
        if (!d->routes)
            goto fail;
    }
    for (size_t i = 0; i < c->n_routes; i++) {
        const rmr_route_conf_t *r = &c->routes[i];
        rmr_route_conf_t *o = &d->routes[i];
        d->n_routes = i + 1;
        *o = *r;
        o->name = sdup(r->name, &ok);
        o->match_service = sdup(r->match_service, &ok);
        o->path_prefix = sdup(r->path_prefix, &ok);
        o->path_exact = sdup(r->path_exact, &ok);
        o->path_regex = sdup(r->path_regex, &ok);
        o->method = sdup(r->method, &ok);
        o->path_re = NULL;
        if (!ok || route_compile_regex(o) < 0)
            goto fail;
    }
    return d;
fail:
    config_free(d);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* JSON */

struct out {
    char *b;
    size_t used, cap;
    bool oom;
};

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(struct out *o, const char *fmt, ...)
{
    if (o->oom)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || o->used + (size_t)n + 1 > o->cap) {
        size_t cap = o->cap ? o->cap : 1024;
        while (n >= 0 && cap < o->used + (size_t)n + 1)
            cap *= 2;
        char *b = n < 0 ? NULL : realloc(o->b, cap);
        if (!b) {
            o->oom = true;
            return;
        }
        o->b = b;
        o->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(o->b + o->used, o->cap - o->used, fmt, ap);
    va_end(ap);
    o->used += (size_t)n;
}

static void put_str(struct out *o, const char *s)
{
    if (o->oom)
        return;
    if (!s) {
        put(o, "null");
        return;
    }
    if (rmr_json_string(&o->b, &o->used, &o->cap, s, strlen(s)) < 0)
        o->oom = true;
}

static const char *const lb_names[] = {"round_robin", "least_request", "random", "ring_hash"};
static const char *const proto_names[] = {"http1", "http2", "auto"};

char *rmr_config_to_json(const rmr_config_t *c)
{
    struct out o = {0};
    if (!c)
        return strdup("null");
    put(&o, "{\n  \"source\": ");
    put_str(&o, c->source);
    put(&o, ",\n  \"node\": ");
    put_str(&o, c->node);
    put(&o, ",\n  \"service\": ");
    put_str(&o, c->service_name);
    put(&o, ",\n  \"workers\": %u,\n  \"busy_poll_us\": %u,\n  \"admin\": ", c->workers,
        c->busy_poll_us);
    put_str(&o, c->admin ? c->admin->text : NULL);
    put(&o, ",\n  \"listeners\": [");
    for (size_t i = 0; i < c->n_listeners; i++) {
        const rmr_listener_conf_t *l = &c->listeners[i];
        put(&o, "%s\n    {\"address\": ", i ? "," : "");
        put_str(&o, l->addr.text);
        put(&o, ", \"direction\": \"%s\"", l->inbound ? "inbound" : "outbound");
        if (l->inbound && l->inbound_service < c->n_services) {
            put(&o, ", \"service\": ");
            put_str(&o, c->services[l->inbound_service].name);
        }
        put(&o, "}");
    }
    put(&o, "%s],\n  \"services\": [", c->n_listeners ? "\n  " : "");
    for (size_t i = 0; i < c->n_services; i++) {
        const rmr_service_conf_t *s = &c->services[i];
        put(&o, "%s\n    {\"name\": ", i ? "," : "");
        put_str(&o, s->name);
        put(&o, ", \"load_balancer\": \"%s\", \"protocol\": \"%s\"",
            (unsigned)s->lb < 4 ? lb_names[s->lb] : "?",
            (unsigned)s->protocol < 3 ? proto_names[s->protocol] : "?");
        put(&o, ", \"connect_timeout_ms\": %u, \"idle_timeout_ms\": %u", s->connect_timeout_ms,
            s->idle_timeout_ms);
        if (s->dns_name) {
            put(&o, ", \"dns\": {\"name\": ");
            put_str(&o, s->dns_name);
            put(&o, ", \"port\": %u, \"refresh_ms\": %u}", s->dns_port, s->dns_refresh_ms);
        }
        put(&o, ", \"endpoints\": [");
        for (size_t k = 0; k < s->n_endpoints; k++) {
            const rmr_endpoint_conf_t *e = &s->endpoints[k];
            put(&o, "%s{\"address\": ", k ? ", " : "");
            put_str(&o, e->addr.text);
            if (e->n_labels) {
                put(&o, ", \"labels\": {");
                for (size_t j = 0; j < e->n_labels; j++) {
                    put(&o, "%s", j ? ", " : "");
                    put_str(&o, e->labels[j].key);
                    put(&o, ": ");
                    put_str(&o, e->labels[j].value);
                }
                put(&o, "}");
            }
            put(&o, "}");
        }
        put(&o, "]}");
    }
    put(&o, "%s],\n  \"routes\": [", c->n_services ? "\n  " : "");
    for (size_t i = 0; i < c->n_routes; i++) {
        const rmr_route_conf_t *r = &c->routes[i];
        put(&o, "%s\n    {\"name\": ", i ? "," : "");
        put_str(&o, r->name);
        put(&o, ", \"match_service\": ");
        put_str(&o, r->match_service);
        put(&o, ", \"path_prefix\": ");
        put_str(&o, r->path_prefix);
        put(&o, ", \"path_exact\": ");
        put_str(&o, r->path_exact);
        put(&o, ", \"path_regex\": ");
        put_str(&o, r->path_regex);
        put(&o, ", \"method\": ");
        put_str(&o, r->method);
        put(&o, ", \"service\": ");
        put_str(&o, r->service < c->n_services ? c->services[r->service].name : NULL);
        put(&o, ", \"timeout_ms\": %u}", r->timeout_ms);
    }
    const rmr_limits_t *l = &c->limits;
    put(&o,
        "%s],\n  \"limits\": {\"max_header_bytes\": %u, \"max_headers\": %u, "
        "\"max_body_bytes\": %llu, \"header_timeout_ms\": %u, \"request_timeout_ms\": %u, "
        "\"idle_timeout_ms\": %u, \"drain_timeout_ms\": %u, \"max_connections\": %u}",
        c->n_routes ? "\n  " : "", l->max_header_bytes, l->max_headers,
        (unsigned long long)l->max_body_bytes, l->header_timeout_ms, l->request_timeout_ms,
        l->idle_timeout_ms, l->drain_timeout_ms, l->max_connections);
    char *mesh = c->mesh_pb ? rmr_yamlpb_to_json(c->mesh_pb) : NULL;
    if (c->mesh_pb && !mesh)
        o.oom = true;
    put(&o, ",\n  \"mesh\": %s\n}\n", mesh ? mesh : "null");
    free(mesh);
    if (o.oom) {
        free(o.b);
        return NULL;
    }
    return o.b;
}
