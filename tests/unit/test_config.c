/*
 * Unit test of control/config.c: loading, validating and compiling config snapshots.
 * Usage: test_config [EXAMPLES_DIR]   (default: RMR_SOURCE_ROOT/examples)
 * Works in a fresh temporary folder (bootstrap + mesh files written there). Prints one line per
 * check; exits 1 when any check fails.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "remora/config.h"
#include "remora/v1/mesh.pb-c.h"

#ifndef RMR_SOURCE_ROOT
#define RMR_SOURCE_ROOT "."
#endif

#include "check.h"

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = malloc(1 << 20);
    size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (buf)
        buf[n] = '\0';
    return buf;
}

static void spit(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(2);
    }
    fputs(text, f);
    fclose(f);
}

static char *mesh_text, *sidecar_text;

/* Writes sidecar.yaml (the example + extra lines) and mesh.yaml into the cwd. */
static void write_pair(const char *sidecar_extra, const char *mesh)
{
    size_t n = strlen(sidecar_text) + strlen(sidecar_extra) + 2;
    char *s = malloc(n);
    snprintf(s, n, "%s%s", sidecar_text, sidecar_extra);
    spit("sidecar.yaml", s);
    free(s);
    if (mesh)
        spit("mesh.yaml", mesh);
}

static int addr_is(const rmr_addr_t *a, int family, const char *ip, unsigned port)
{
    char buf[64];
    if (a->ss.ss_family != family)
        return 0;
    if (family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)&a->ss;
        inet_ntop(AF_INET, &s->sin_addr, buf, sizeof(buf));
        return a->len == sizeof(*s) && !strcmp(buf, ip) && ntohs(s->sin_port) == port;
    }
    const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)&a->ss;
    inet_ntop(AF_INET6, &s->sin6_addr, buf, sizeof(buf));
    return a->len == sizeof(*s) && !strcmp(buf, ip) && ntohs(s->sin6_port) == port;
}

static void test_addr_parse(void)
{
    rmr_addr_t a;
    CHECK(rmr_addr_parse("1.2.3.4:80", &a) == 0 && addr_is(&a, AF_INET, "1.2.3.4", 80) &&
          !strcmp(a.text, "1.2.3.4:80"));
    rmr_addr_clear(&a);
    CHECK(rmr_addr_parse("[::1]:8080", &a) == 0 && addr_is(&a, AF_INET6, "::1", 8080));
    rmr_addr_clear(&a);
    CHECK(rmr_addr_parse("localhost:80", &a) == 0 && addr_is(&a, AF_INET, "127.0.0.1", 80) &&
          !strcmp(a.text, "localhost:80"));
    rmr_addr_clear(&a);
    CHECK(rmr_addr_parse("0.0.0.0:0", &a) == 0 && addr_is(&a, AF_INET, "0.0.0.0", 0));
    rmr_addr_clear(&a);
    CHECK(rmr_addr_parse("127.0.0.1:65535", &a) == 0);
    rmr_addr_clear(&a);
    static const char *const bad[] = {
        "",
        "1.2.3.4",
        "1.2.3.4:",
        "1.2.3.4:65536",
        "1.2.3.4:8x",
        ":80",
        "::1:80",
        "[::1]80",
        "[::1]:",
        "[1.2.3.4]:80",
        "example.com:80",
        "1.2.3.256:80",
        "1.2.3.4:-1",
        "1.2.3.4:123456",
        "[::1:80",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = rmr_addr_parse(bad[i], &a);
        checks++;
        failures += rc != -EINVAL || a.text != NULL;
        printf("%s rmr_addr_parse(\"%s\") == -EINVAL\n", rc == -EINVAL ? "ok  " : "FAIL", bad[i]);
    }
    CHECK(rmr_addr_parse(NULL, &a) == -EINVAL);
    rmr_addr_clear(NULL);
}

static void test_load_examples(void)
{
    rmr_conf_err_t err = {""};
    write_pair("mesh_file: mesh.yaml\n", mesh_text);
    rmr_config_t *c = rmr_config_load("sidecar.yaml", &err);
    if (!c)
        printf("     error: %s\n", err.msg);
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK(c->refs == 1);
    CHECK_STR(c->source, "sidecar.yaml");
    CHECK_STR(c->node, "checkout-1");
    CHECK_STR(c->service_name, "checkout");
    CHECK(c->workers == 2);
    CHECK(c->admin && addr_is(c->admin, AF_INET, "127.0.0.1", 15000));
    CHECK(c->mesh_pb != NULL && c->boot_pb != NULL);

    CHECK(c->n_listeners == 2);
    if (c->n_listeners == 2) {
        CHECK(c->listeners[0].inbound == 0 &&
              addr_is(&c->listeners[0].addr, AF_INET, "127.0.0.1", 15001));
        CHECK(c->listeners[1].inbound == 1 &&
              addr_is(&c->listeners[1].addr, AF_INET, "127.0.0.1", 15006));
        CHECK(c->listeners[1].inbound_service == 2);
    }

    CHECK(c->n_services == 3);
    if (c->n_services == 3) {
        const rmr_service_conf_t *s = &c->services[0];
        CHECK_STR(s->name, "checkout");
        CHECK(s->lb == RMR_LB_LEAST_REQUEST);
        CHECK(s->protocol == RMR_PROTO_HTTP1);
        CHECK(s->connect_timeout_ms == 1000);
        CHECK(s->idle_timeout_ms == 60000);
        CHECK(s->dns_name == NULL);
        CHECK(s->n_endpoints == 2);
        CHECK(s->n_endpoints == 2 && addr_is(&s->endpoints[1].addr, AF_INET, "127.0.0.1", 18082) &&
              s->endpoints[1].n_labels == 1 && !strcmp(s->endpoints[1].labels[0].key, "version") &&
              !strcmp(s->endpoints[1].labels[0].value, "v2"));
        CHECK(s->pb != NULL &&
              ((const Remora__V1__Service *)s->pb)->circuit_breaker->max_connections == 1024);

        s = &c->services[1];
        CHECK_STR(s->name, "ledger");
        CHECK(s->lb == RMR_LB_ROUND_ROBIN);
        CHECK_STR(s->dns_name, "localhost");
        CHECK(s->dns_port == 18091);
        CHECK(s->dns_refresh_ms == 5000);
        CHECK(s->n_endpoints == 0);

        s = &c->services[2];
        CHECK_STR(s->name, "inbound|checkout");
        CHECK(s->n_endpoints == 1 && addr_is(&s->endpoints[0].addr, AF_INET, "127.0.0.1", 18081));
        CHECK(s->pb == c->services[0].pb); /* the mesh's checkout: its idempotency settings */
    }
    CHECK(rmr_config_service(c, "ledger", 6) == 1);
    CHECK(rmr_config_service(c, "ledgerX", 6) == 1);
    CHECK(rmr_config_service(c, "ledge", 5) == -1);
    CHECK(rmr_config_service(c, "inbound|checkout", 16) == 2);

    CHECK(c->n_routes == 2);
    if (c->n_routes == 2) {
        const rmr_route_conf_t *r = &c->routes[0];
        CHECK_STR(r->name, "checkout-gray");
        CHECK_STR(r->match_service, "checkout");
        CHECK_STR(r->path_prefix, "/");
        CHECK(r->path_exact == NULL);
        CHECK(r->service == 0);
        CHECK(r->timeout_ms == 3000);
        const Remora__V1__Route *pb = r->pb;
        CHECK(pb && pb->n_split == 2 && pb->split[0]->weight == 90 && pb->split[1]->weight == 10);
        r = &c->routes[1];
        CHECK_STR(r->name, "ledger-default");
        CHECK(r->service == 1);
        CHECK(r->timeout_ms == 1000);
        CHECK(r->path_prefix == NULL);
    }
    CHECK(c->limits.max_header_bytes == 65536);
    CHECK(c->limits.max_headers == 100);
    CHECK(c->limits.max_body_bytes == 0);
    CHECK(c->limits.header_timeout_ms == 10000);
    CHECK(c->limits.request_timeout_ms == 15000);
    CHECK(c->limits.idle_timeout_ms == 60000);
    CHECK(c->limits.drain_timeout_ms == 10000);
    CHECK(c->limits.max_connections == 10000);

    char *json = rmr_config_to_json(c);
    CHECK(json != NULL);
    if (json) {
        CHECK(strstr(json, "\"node\": \"checkout-1\"") != NULL);
        CHECK(strstr(json, "{\"address\": \"127.0.0.1:15006\", \"direction\": \"inbound\", "
                           "\"service\": \"inbound|checkout\"}") != NULL);
        CHECK(strstr(json, "\"dns\": {\"name\": \"localhost\", \"port\": 18091") != NULL);
        CHECK(strstr(json, "\"base_ejection\": \"5s\"") != NULL);
        CHECK(
            strstr(json, "\"on\": [\"connect-failure\", \"reset\", \"gateway-error\", \"503\"]") !=
            NULL);
        free(json);
    }

    /* ref/unref, and a DNS-refreshed copy that outlives the original */
    CHECK(rmr_config_ref(c) == c && c->refs == 2);
    rmr_config_unref(c);
    CHECK(c->refs == 1);
    rmr_addr_t eps[2];
    memset(eps, 0, sizeof(eps));
    CHECK(rmr_addr_parse("10.0.0.1:18091", &eps[0]) == 0);
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&eps[1].ss;
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(18091);
    inet_pton(AF_INET6, "fd00::2", &s6->sin6_addr);
    eps[1].len = sizeof(*s6);
    rmr_config_t *d = rmr_config_with_endpoints(c, 1, eps, 2);
    rmr_addr_clear(&eps[0]);
    CHECK(d != NULL && d != c);
    CHECK(rmr_config_with_endpoints(c, 99, eps, 0) == NULL);
    rmr_config_unref(c);
    if (d) {
        CHECK(d->refs == 1);
        CHECK(d->n_services == 3 && d->services[1].n_endpoints == 2);
        CHECK(d->services[1].n_endpoints == 2 &&
              !strcmp(d->services[1].endpoints[0].addr.text, "10.0.0.1:18091") &&
              !strcmp(d->services[1].endpoints[1].addr.text, "[fd00::2]:18091") &&
              addr_is(&d->services[1].endpoints[1].addr, AF_INET6, "fd00::2", 18091));
        CHECK_STR(d->services[1].dns_name, "localhost");
        CHECK(d->services[0].n_endpoints == 2 && d->services[0].endpoints[0].n_labels == 1);
        /* the protobuf messages are still alive after the original went */
        CHECK(d->services[0].pb &&
              !strcmp(((const Remora__V1__Service *)d->services[0].pb)->name, "checkout"));
        CHECK(d->routes[0].pb &&
              ((const Remora__V1__Route *)d->routes[0].pb)->retry->attempts == 3);
        CHECK_STR(d->routes[0].path_prefix, "/");
        CHECK(d->n_listeners == 2 && d->listeners[1].inbound_service == 2);
        CHECK(d->admin && !strcmp(d->admin->text, "127.0.0.1:15000"));
        rmr_config_t *e = rmr_config_with_endpoints(d, 1, NULL, 0);
        CHECK(e && e->services[1].n_endpoints == 0 && e->mesh_pb == d->mesh_pb);
        rmr_config_unref(d);
        rmr_config_unref(e);
    }
}

static void test_control_only(void)
{
    rmr_conf_err_t err = {""};
    write_pair("", NULL); /* the example as it is: no mesh_file */
    rmr_config_t *c = rmr_config_load("sidecar.yaml", &err);
    if (!c)
        printf("     error: %s\n", err.msg);
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK(c->n_routes == 0);
    CHECK(c->n_services == 1 && !strcmp(c->services[0].name, "inbound|checkout"));
    CHECK(c->services[0].pb == NULL);
    CHECK(c->n_listeners == 2 && c->listeners[1].inbound_service == 0);
    CHECK(c->mesh_pb != NULL && ((Remora__V1__Mesh *)c->mesh_pb)->n_services == 0);
    rmr_config_unref(c);

    /* limits and escaping in JSON */
    spit("boot2.yaml", "node: 'a\"b\\c\t'\n"
                       "outbound: {listen: '[::1]:15001'}\n"
                       "limits: {max_header_bytes: 8192, max_body_bytes: 1048576,\n"
                       "         request_timeout: 2.5s, drain_timeout: 0s}\n");
    c = rmr_config_load("boot2.yaml", &err);
    if (!c)
        printf("     error: %s\n", err.msg);
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK(c->limits.max_header_bytes == 8192);
    CHECK(c->limits.max_body_bytes == 1048576);
    CHECK(c->limits.request_timeout_ms == 2500);
    CHECK(c->limits.drain_timeout_ms == 10000);
    CHECK(c->admin == NULL);
    CHECK(c->n_listeners == 1 && addr_is(&c->listeners[0].addr, AF_INET6, "::1", 15001));
    CHECK(c->n_services == 0);
    char *json = rmr_config_to_json(c);
    CHECK(json && strstr(json, "\"node\": \"a\\\"b\\\\c\\t\"") != NULL);
    CHECK(json && strstr(json, "\"admin\": null") != NULL);
    free(json);
    rmr_config_unref(c);
}

static void test_parse_in_memory(void)
{
    rmr_conf_err_t err = {""};
    rmr_config_t *c = rmr_config_parse("boot", sidecar_text, strlen(sidecar_text), "pushed",
                                       mesh_text, strlen(mesh_text), &err);
    if (!c)
        printf("     error: %s\n", err.msg);
    CHECK(c && c->n_services == 3 && c->n_routes == 2 && c->routes[1].service == 1);
    rmr_config_unref(c);
    static const char bad[] = "routes:\n- name: r\n  match: {service: nope}\n";
    c = rmr_config_parse("boot", sidecar_text, strlen(sidecar_text), "pushed", bad, sizeof(bad) - 1,
                         &err);
    CHECK(c == NULL);
    CHECK_STR(err.msg, "pushed:3: routes[0].match.service: no service named \"nope\"");
    c = rmr_config_parse("boot", "node: [", 7, "pushed", NULL, 0, &err);
    CHECK(c == NULL);
    CHECK_STR(err.msg, "boot:1: node: expected a string, got a sequence");
    c = rmr_config_parse("boot", "node: \"a", 8, "pushed", NULL, 0, &err);
    CHECK(c == NULL);
    CHECK_STR(err.msg, "boot:1: node: bad YAML: found unexpected end of stream while scanning a "
                       "quoted scalar");
}

static void test_regex_route(void)
{
    rmr_conf_err_t err = {""};
    static const char mesh[] = "services: [{name: s, endpoints: [{address: 127.0.0.1:9}]}]\n"
                               "routes:\n"
                               "- {name: api, match: {service: s, path_regex: '^/api/[0-9]+$',"
                               " method: POST}}\n";
    rmr_config_t *c = rmr_config_parse("boot", "outbound: {listen: 127.0.0.1:1}", 31, "mesh", mesh,
                                       sizeof(mesh) - 1, &err);
    if (!c)
        printf("     error: %s\n", err.msg);
    CHECK(c != NULL);
    if (!c)
        return;
    const rmr_route_conf_t *r = &c->routes[0];
    CHECK_STR(r->path_regex, "^/api/[0-9]+$");
    CHECK_STR(r->method, "POST");
    CHECK(r->path_prefix == NULL && r->path_exact == NULL);
    CHECK(r->path_re && regexec(r->path_re, "/api/12", 0, NULL, 0) == 0 &&
          regexec(r->path_re, "/api/x", 0, NULL, 0) == REG_NOMATCH);
    rmr_addr_t ep = {0};
    CHECK(rmr_addr_parse("127.0.0.1:10", &ep) == 0);
    rmr_config_t *d = rmr_config_with_endpoints(c, 0, &ep, 1);
    rmr_addr_clear(&ep);
    CHECK(d && d->routes[0].path_re && d->routes[0].path_re != r->path_re);
    rmr_config_unref(c);
    CHECK(d && d->routes[0].path_re && regexec(d->routes[0].path_re, "/api/7", 0, NULL, 0) == 0);
    CHECK(d && !strcmp(d->routes[0].method, "POST"));
    rmr_config_unref(d);
}

static void test_simple(void)
{
    rmr_conf_err_t err = {""};
    rmr_config_t *c = rmr_config_simple(
        "127.0.0.1:8080", "127.0.0.1:9001, [::1]:9002,localhost:9003", 4, "127.0.0.1:9901", &err);
    if (!c)
        printf("     error: %s\n", err.msg);
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK_STR(c->source, "command line");
    CHECK(c->workers == 4);
    CHECK(c->boot_pb == NULL && c->mesh_pb != NULL);
    CHECK(c->admin && addr_is(c->admin, AF_INET, "127.0.0.1", 9901));
    CHECK(c->n_listeners == 1 && c->listeners[0].inbound == 0 &&
          addr_is(&c->listeners[0].addr, AF_INET, "127.0.0.1", 8080));
    CHECK(c->n_services == 1);
    CHECK_STR(c->services[0].name, "upstream");
    CHECK(c->services[0].n_endpoints == 3);
    CHECK(c->services[0].n_endpoints == 3 &&
          addr_is(&c->services[0].endpoints[1].addr, AF_INET6, "::1", 9002) &&
          addr_is(&c->services[0].endpoints[2].addr, AF_INET, "127.0.0.1", 9003));
    CHECK(c->services[0].connect_timeout_ms == 1000);
    CHECK(c->n_routes == 1);
    CHECK(c->n_routes == 1 && c->routes[0].service == 0 && c->routes[0].match_service == NULL &&
          c->routes[0].path_prefix == NULL && c->routes[0].pb != NULL);
    CHECK(c->limits.request_timeout_ms == 15000 && c->limits.max_headers == 100);
    CHECK(c->node != NULL);
    char *json = rmr_config_to_json(c);
    CHECK(json && strstr(json, "\"source\": \"command line\"") != NULL);
    free(json);
    rmr_config_unref(c);

    c = rmr_config_simple("127.0.0.1:8080", "127.0.0.1:9001", 0, NULL, &err);
    CHECK(c && c->admin == NULL && c->workers == 0);
    rmr_config_unref(c);

    static const struct {
        const char *listen, *upstream, *admin, *want;
    } bad[] = {
        {"127.0.0.1:8080", "127.0.0.1:9001,nope", NULL,
         "command line: --upstream: expected ip:port, [ipv6]:port or localhost:port, got \"nope\""},
        {"127.0.0.1:8080", " , ", NULL,
         "command line: --upstream: at least one address is required"},
        {"127.0.0.1:8080", "", NULL, "command line: --upstream: at least one address is required"},
        {"8080", "127.0.0.1:9001", NULL,
         "command line: --listen: expected ip:port, [ipv6]:port or localhost:port, got \"8080\""},
        {"127.0.0.1:8080", "127.0.0.1:9001", "x",
         "command line: --admin: expected ip:port, [ipv6]:port or localhost:port, got \"x\""},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err.msg[0] = '\0';
        c = rmr_config_simple(bad[i].listen, bad[i].upstream, 1, bad[i].admin, &err);
        int ok = c == NULL && !strcmp(err.msg, bad[i].want);
        checks++;
        failures += !ok;
        printf("%s simple %zu: %s\n", ok ? "ok  " : "FAIL", i, err.msg);
        rmr_config_unref(c);
    }
}

/* Semantic errors: a mesh edited from the example (one line replaced) or a bootstrap. */
struct bad {
    const char *find, *replace; /* in the example mesh.yaml; find NULL: boot_extra only */
    const char *boot_extra;
    const char *want;
};

static const struct bad bad_configs[] = {
    {"      service: checkout\n", "      service: checkout2\n", NULL,
     "mesh.yaml:35: routes[0].match.service: no service named \"checkout2\""},
    {"address: 127.0.0.1:18082", "address: 127.0.0.1", NULL,
     "mesh.yaml:7: services[0].endpoints[1].address: expected ip:port, [ipv6]:port or "
     "localhost:port, got \"127.0.0.1\""},
    {"address: 127.0.0.1:18082", "address: 127.0.0.1:0", NULL,
     "mesh.yaml:7: services[0].endpoints[1].address: port 0 is not a valid endpoint port"},
    {"weight: 90", "weight: 0", NULL, NULL},
    {"  - name: ledger\n", "  - name: checkout\n", NULL,
     "mesh.yaml:28: services[1].name: duplicate service \"checkout\" (first at line 4)"},
    {"  - name: ledger-default\n", "  - name: checkout-gray\n", NULL,
     "mesh.yaml:57: routes[1].name: duplicate route \"checkout-gray\" (first at line 33)"},
    {"{subset: {version: v2}, weight: 10}", "{subset: {version: v3}, weight: 10}", NULL,
     "mesh.yaml:40: routes[0].split[1].subset: no endpoint of service \"checkout\" has labels "
     "{version=v3}"},
    {"map: {gray: {version: v2}}", "map: {gray: {version: v2, zone: a}}", NULL,
     "mesh.yaml:44: routes[0].lanes.map.gray: no endpoint of service \"checkout\" has labels "
     "{version=v2, zone=a}"},
    {"mirror: {subset: {version: v2}, percent: 0}", "mirror: {subset: {version: v2}, percent: 101}",
     NULL, "mesh.yaml:45: routes[0].mirror.percent: a percentage must be within 0..100, got 101"},
    {"      attempts: 3 ", "      attempts: 0 ", NULL,
     "mesh.yaml:47: routes[0].retry.attempts: must be at least 1 (the first try counts)"},
    {"retry: {attempts: 2, on:", "retry: {on:", NULL,
     "mesh.yaml:60: routes[1].retry.attempts: must be at least 1 (the first try counts)"},
    {"gateway-error, \"503\"]", "gateway-error, \"600\"]", NULL,
     "mesh.yaml:49: routes[0].retry.on[3]: expected connect-failure, reset, refused-stream, "
     "gateway-error, 5xx, retriable-4xx, per-try-timeout or a status code, got \"600\""},
    {"budget: {percent: 20,", "budget: {percent: -1,", NULL,
     "mesh.yaml:51: routes[0].retry.budget.percent: a percentage must be within 0..100, got -1"},
    {"backoff: {base: 25ms, max: 250ms}", "backoff: {base: 25ms, max: 5ms}", NULL,
     "mesh.yaml:50: routes[0].retry.backoff.max: must not be shorter than base"},
    {"abort: {percent: 0, status: 503}", "abort: {percent: 1, status: 99}", NULL,
     "mesh.yaml:55: routes[0].fault.abort.status: an HTTP status within 200..599 is required, "
     "got 99"},
    {"max_ejection_percent: 50", "max_ejection_percent: 150", NULL,
     "mesh.yaml:20: services[0].circuit_breaker.outlier_detection.max_ejection_percent: a "
     "percentage must be within 0..100, got 150"},
    {"max_ejection: 2m", "max_ejection: 1s", NULL,
     "mesh.yaml:19: services[0].circuit_breaker.outlier_detection.max_ejection: must not be "
     "shorter than base_ejection"},
    {"connect_timeout: 1s", "connect_timeout: 0s", NULL,
     "mesh.yaml:9: services[0].connect_timeout: must be at least 1ms"},
    {"    dns: {name: localhost, port: 18091, refresh: 5s}",
     "    dns: {name: localhost, refresh: 5s}", NULL,
     "mesh.yaml:29: services[1].dns.port: a port within 1..65535 is required"},
    {"      path_prefix: /\n", "      path_prefix: api\n", NULL,
     "mesh.yaml:36: routes[0].match.path_prefix: must start with '/', got \"api\""},
    {"      path_prefix: /\n", "      path_regex: \"[a\"\n", NULL,
     "mesh.yaml:36: routes[0].match.path_regex: bad regular expression: Unmatched [, [^, [:, "
     "[., or [="},
    {"sticky: {header: x-user-id}", "sticky: {header: x-user-id, cookie: u}", NULL,
     "mesh.yaml:41: routes[0].sticky: give exactly one of header or cookie"},
    {"  sample_percent: 100", "  sample_percent: 100.5", NULL,
     "mesh.yaml:63: tracing.sample_percent: a percentage must be within 0..100, got 100.5"},
    {"  propagate: [w3c, b3]", "  propagate: [w3c, w3c]", NULL,
     "mesh.yaml:64: tracing.propagate[1]: listed twice"},
    {"  # export: {", "  export: {otlp_http: \"ftp://x\"} #", NULL,
     "mesh.yaml:65: tracing.export.otlp_http: expected an http:// or https:// URL, got "
     "\"ftp://x\""},
    {"max_connections: 1024", "max_connections: lots", NULL,
     "mesh.yaml:11: services[0].circuit_breaker.max_connections: expected an unsigned integer, "
     "got \"lots\""},
    {NULL, NULL, "mesh_file: missing.yaml\n",
     "sidecar.yaml:12: mesh_file: missing.yaml: No such file or directory"},
    {NULL, NULL, "admin: nowhere\n", "sidecar.yaml:12: admin: duplicate key (first at line 7)"},
    {"admin: 127.0.0.1:15000", "admin: nowhere:1", "",
     "sidecar.yaml:7: admin: expected ip:port, [ipv6]:port or localhost:port, got \"nowhere:1\""},
    {"app: 127.0.0.1:18081", "app: 127.0.0.1", "",
     "sidecar.yaml:5: inbound.app: expected ip:port, [ipv6]:port or localhost:port, got "
     "\"127.0.0.1\""},
    {"inbound:  {listen: 127.0.0.1:15006, ", "inbound:  {", "",
     "sidecar.yaml:5: inbound.listen: an address host:port is required"},
    {"service: checkout ", "# service: checkout ", "",
     "sidecar.yaml:5: inbound: needs `service:`, the name of the service this sidecar fronts"},
    {"control: 127.0.0.1:15010", "control: 127.0.0.1", "",
     "sidecar.yaml:8: control: expected host:port, got \"127.0.0.1\""},
    {"workers: 2", "workers: 5000", "", "sidecar.yaml:11: workers: at most 1024 workers, got 5000"},
    {NULL, NULL, "limits: {max_header_bytes: 100}\n",
     "sidecar.yaml:12: limits.max_header_bytes: must be at least 1024, got 100"},
    {NULL, NULL, "limits: {idle_timeout: 2000000h}\n",
     "sidecar.yaml:12: limits.idle_timeout: duration out of range (0s..4294967s)"},
};

static char *replace_once(const char *text, const char *find, const char *rep)
{
    const char *at = strstr(text, find);
    if (!at)
        return NULL;
    size_t n = strlen(text) - strlen(find) + strlen(rep) + 1;
    char *out = malloc(n);
    snprintf(out, n, "%.*s%s%s", (int)(at - text), text, rep, at + strlen(find));
    return out;
}

static void test_bad_configs(void)
{
    for (size_t i = 0; i < sizeof(bad_configs) / sizeof(bad_configs[0]); i++) {
        const struct bad *b = &bad_configs[i];
        rmr_conf_err_t err = {""};
        int in_boot = b->boot_extra && b->find;
        char *mesh = NULL, *boot = NULL;
        if (b->find && !in_boot) {
            mesh = replace_once(mesh_text, b->find, b->replace);
        } else if (in_boot) {
            boot = replace_once(sidecar_text, b->find, b->replace);
        }
        if (b->find && !mesh && !boot) {
            checks++;
            failures++;
            printf("FAIL bad config %zu: \"%s\" not found in the example\n", i, b->find);
            continue;
        }
        spit("mesh.yaml", mesh ? mesh : mesh_text);
        size_t n = strlen(sidecar_text) + 256;
        char *s = malloc(n);
        snprintf(s, n, "%s%s", boot ? boot : sidecar_text,
                 b->boot_extra && !in_boot ? b->boot_extra : "mesh_file: mesh.yaml\n");
        spit("sidecar.yaml", s);
        free(s);
        rmr_config_t *c = rmr_config_load("sidecar.yaml", &err);
        int ok;
        if (!b->want) {
            /* a change that must stay valid: only one weight at zero */
            ok = c != NULL;
        } else {
            ok = c == NULL && !strcmp(err.msg, b->want);
        }
        checks++;
        failures += !ok;
        printf("%s bad config %zu: %s\n", ok ? "ok  " : "FAIL", i, c ? "(loaded)" : err.msg);
        if (!ok && b->want)
            printf("     want: %s\n", b->want);
        rmr_config_unref(c);
        free(mesh);
        free(boot);
    }

    /* all weights zero */
    char *m1 = replace_once(mesh_text, "weight: 90", "weight: 0");
    char *m2 = m1 ? replace_once(m1, "weight: 10", "weight: 0") : NULL;
    rmr_conf_err_t err = {""};
    write_pair("mesh_file: mesh.yaml\n", m2 ? m2 : "");
    rmr_config_t *c = rmr_config_load("sidecar.yaml", &err);
    CHECK(c == NULL);
    CHECK_STR(err.msg, "mesh.yaml:38: routes[0].split: the weights cannot all be zero");
    rmr_config_unref(c);
    free(m1);
    free(m2);

    /* the bootstrap file itself missing, and a mapper error in it */
    c = rmr_config_load("nope.yaml", &err);
    CHECK(c == NULL);
    CHECK_STR(err.msg, "nope.yaml: No such file or directory");
    spit("b3.yaml", "outbound: {listen: 127.0.0.1:1}\nworkers: many\n");
    c = rmr_config_load("b3.yaml", &err);
    CHECK(c == NULL);
    CHECK_STR(err.msg, "b3.yaml:2: workers: expected an unsigned integer, got \"many\"");
    spit("b4.yaml", "node: x\n");
    c = rmr_config_load("b4.yaml", &err);
    CHECK(c == NULL);
    CHECK_STR(err.msg, "b4.yaml: outbound: at least one of inbound and outbound is needed");

    /* mesh_file relative to the bootstrap's folder, from another cwd */
    write_pair("mesh_file: mesh.yaml\n", mesh_text);
    char cwd[1024], path[1100];
    if (getcwd(cwd, sizeof(cwd))) {
        snprintf(path, sizeof(path), "%s/sidecar.yaml", cwd);
        CHECK(chdir("/") == 0);
        c = rmr_config_load(path, &err);
        if (!c)
            printf("     error: %s\n", err.msg);
        CHECK(c != NULL && c->n_routes == 2);
        rmr_config_unref(c);
        /* and an error there names the mesh file by its full path */
        CHECK(chdir(cwd) == 0);
    }
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : RMR_SOURCE_ROOT "/examples";
    char path[1024];
    snprintf(path, sizeof(path), "%s/mesh.yaml", dir);
    mesh_text = slurp(path);
    snprintf(path, sizeof(path), "%s/sidecar.yaml", dir);
    sidecar_text = slurp(path);
    if (!mesh_text || !sidecar_text) {
        fprintf(stderr, "cannot read the examples in %s\n", dir);
        return 1;
    }
    char tmpl[] = "/tmp/rmr-test-config-XXXXXX";
    if (!mkdtemp(tmpl) || chdir(tmpl) < 0) {
        perror("mkdtemp");
        return 1;
    }
    test_addr_parse();
    test_load_examples();
    test_control_only();
    test_parse_in_memory();
    test_regex_route();
    test_simple();
    test_bad_configs();
    static const char *const files[] = {"sidecar.yaml", "mesh.yaml", "boot2.yaml", "b3.yaml",
                                        "b4.yaml"};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
        unlink(files[i]);
    if (chdir("/") == 0)
        rmdir(tmpl);
    free(mesh_text);
    free(sidecar_text);
    return check_summary();
}
