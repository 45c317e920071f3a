/*
 * Unit test of control/yamlpb.c: the generic YAML -> protobuf-c mapper.
 * Usage: test_yamlpb [EXAMPLES_DIR]   (default: RMR_SOURCE_ROOT/examples)
 * Prints one line per check; exits 1 when any check fails.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "remora/v1/bootstrap.pb-c.h"
#include "remora/v1/mesh.pb-c.h"
#include "remora/yamlpb.h"

#ifndef RMR_SOURCE_ROOT
#define RMR_SOURCE_ROOT "."
#endif

#include "check.h"

#define CHECK_DUR(d, s, ns) CHECK((d) != NULL && (d)->seconds == (s) && (d)->nanos == (ns))

static const char *label(Remora__V1__Selector *sel, const char *key)
{
    for (size_t i = 0; sel && i < sel->n_labels; i++)
        if (!strcmp(sel->labels[i]->key, key))
            return sel->labels[i]->value;
    return NULL;
}

static void test_mesh_example(const char *dir)
{
    char path[1024], err[512];
    snprintf(path, sizeof(path), "%s/mesh.yaml", dir);
    ProtobufCMessage *msg = NULL;
    rmr_yamlpb_lines_t *lines = NULL;
    int rc = rmr_yamlpb_load(path, &remora__v1__mesh__descriptor, &msg, &lines, err, sizeof(err));
    if (rc != 0)
        printf("     error: %s\n", err);
    CHECK(rc == 0);
    if (rc != 0)
        return;
    Remora__V1__Mesh *m = (Remora__V1__Mesh *)msg;
    CHECK(m->n_services == 2);
    CHECK(m->n_routes == 2);
    if (m->n_services != 2 || m->n_routes != 2)
        goto out;

    Remora__V1__Service *s = m->services[0];
    CHECK_STR(s->name, "checkout");
    CHECK(s->n_endpoints == 2);
    CHECK_STR(s->endpoints[0]->address, "127.0.0.1:18081");
    CHECK(s->endpoints[1]->n_labels == 1);
    CHECK_STR(s->endpoints[1]->labels[0]->key, "version");
    CHECK_STR(s->endpoints[1]->labels[0]->value, "v2");
    CHECK(s->load_balancer == REMORA__V1__LOAD_BALANCER__LEAST_REQUEST);
    CHECK(s->protocol == REMORA__V1__PROTOCOL__HTTP1);
    CHECK_DUR(s->connect_timeout, 1, 0);
    CHECK(s->dns == NULL);
    CHECK(s->circuit_breaker != NULL);
    if (s->circuit_breaker) {
        Remora__V1__CircuitBreaker *cb = s->circuit_breaker;
        CHECK(cb->max_connections == 1024);
        CHECK(cb->max_pending_requests == 256);
        CHECK(cb->max_requests == 1024);
        CHECK(cb->max_retries == 16);
        Remora__V1__OutlierDetection *od = cb->outlier_detection;
        CHECK(od != NULL);
        if (od) {
            CHECK(od->consecutive_failures == 5);
            CHECK_DUR(od->interval, 1, 0);
            CHECK_DUR(od->base_ejection, 5, 0);
            CHECK_DUR(od->max_ejection, 120, 0);
            CHECK(od->max_ejection_percent == 50);
            CHECK(od->half_open_probes == 1);
        }
    }
    CHECK(s->idempotency != NULL && s->idempotency->enabled);
    if (s->idempotency) {
        CHECK_DUR(s->idempotency->ttl, 600, 0);
        CHECK(s->idempotency->max_entries == 100000);
        CHECK(s->idempotency->max_response_bytes == 65536);
    }

    s = m->services[1];
    CHECK_STR(s->name, "ledger");
    CHECK(s->n_endpoints == 0);
    CHECK(s->dns != NULL);
    if (s->dns) {
        CHECK_STR(s->dns->name, "localhost");
        CHECK(s->dns->port == 18091);
        CHECK_DUR(s->dns->refresh, 5, 0);
    }
    CHECK(s->load_balancer == REMORA__V1__LOAD_BALANCER__ROUND_ROBIN);

    Remora__V1__Route *r = m->routes[0];
    CHECK_STR(r->name, "checkout-gray");
    CHECK(r->match != NULL);
    if (r->match) {
        CHECK_STR(r->match->service, "checkout");
        CHECK(r->match->path_case == REMORA__V1__ROUTE_MATCH__PATH_PATH_PREFIX);
        CHECK_STR(r->match->path_prefix, "/");
    }
    CHECK_DUR(r->timeout, 3, 0);
    CHECK(r->n_split == 2);
    if (r->n_split == 2) {
        CHECK(r->split[0]->weight == 90);
        CHECK(r->split[1]->weight == 10);
        CHECK_STR(label(r->split[0]->subset, "version"), "v1");
        CHECK_STR(label(r->split[1]->subset, "version"), "v2");
    }
    CHECK(r->sticky && !strcmp(r->sticky->header, "x-user-id"));
    CHECK(r->lanes != NULL);
    if (r->lanes) {
        CHECK_STR(r->lanes->header, "x-lane");
        CHECK(r->lanes->n_map == 1);
        if (r->lanes->n_map == 1) {
            CHECK_STR(r->lanes->map[0]->key, "gray");
            CHECK_STR(label(r->lanes->map[0]->value, "version"), "v2");
        }
    }
    CHECK(r->mirror && r->mirror->percent == 0.0);
    if (r->mirror)
        CHECK_STR(label(r->mirror->subset, "version"), "v2");
    Remora__V1__RetryPolicy *rp = r->retry;
    CHECK(rp != NULL);
    if (rp) {
        CHECK(rp->attempts == 3);
        CHECK_DUR(rp->per_try_timeout, 0, 500000000);
        CHECK(rp->n_on == 4);
        if (rp->n_on == 4) {
            CHECK_STR(rp->on[0], "connect-failure");
            CHECK_STR(rp->on[2], "gateway-error");
            CHECK_STR(rp->on[3], "503");
        }
        CHECK(rp->backoff != NULL);
        if (rp->backoff) {
            CHECK_DUR(rp->backoff->base_, 0, 25000000);
            CHECK_DUR(rp->backoff->max, 0, 250000000);
        }
        CHECK(rp->budget && rp->budget->percent == 20.0 && rp->budget->min_per_second == 10);
        CHECK(rp->non_idempotent == REMORA__V1__NON_IDEMPOTENT__WITH_KEY);
    }
    CHECK(r->fault && r->fault->delay && r->fault->abort);
    if (r->fault && r->fault->delay && r->fault->abort) {
        CHECK(r->fault->delay->percent == 0.0);
        CHECK_DUR(r->fault->delay->duration, 0, 0);
        CHECK(r->fault->abort->status == 503);
    }
    r = m->routes[1];
    CHECK_STR(r->name, "ledger-default");
    CHECK(r->match && !strcmp(r->match->service, "ledger"));
    CHECK(r->match && r->match->path_case == REMORA__V1__ROUTE_MATCH__PATH__NOT_SET);
    CHECK(r->retry && r->retry->attempts == 2 && r->retry->n_on == 2);
    CHECK(r->retry && r->retry->non_idempotent == REMORA__V1__NON_IDEMPOTENT__NEVER);

    CHECK(m->tracing != NULL);
    if (m->tracing) {
        CHECK(m->tracing->sample_percent == 100.0);
        CHECK(m->tracing->n_propagate == 2);
        CHECK(m->tracing->n_propagate == 2 &&
              m->tracing->propagate[0] == REMORA__V1__PROPAGATION__W3C &&
              m->tracing->propagate[1] == REMORA__V1__PROPAGATION__B3);
        CHECK(m->tracing->export == NULL);
    }

    /* the line index */
    CHECK(rmr_yamlpb_line(lines, "services") == 3);
    CHECK(rmr_yamlpb_line(lines, "services[0]") == 4);
    CHECK(rmr_yamlpb_line(lines, "services[0].circuit_breaker.outlier_detection.base_ejection") ==
          18);
    CHECK(rmr_yamlpb_line(lines, "services[0].endpoints[1].labels.version") == 7);
    CHECK(rmr_yamlpb_line(lines, "services[1].dns.port") == 29);
    CHECK(rmr_yamlpb_line(lines, "routes[0].split[1].weight") == 40);
    CHECK(rmr_yamlpb_line(lines, "routes[0].lanes.map.gray.version") == 44);
    CHECK(rmr_yamlpb_line(lines, "routes[0].retry.on[3]") == 49);
    CHECK(rmr_yamlpb_line(lines, "routes[0].retry.backoff.base") == 50);
    /* absent fields fall back to their nearest written ancestor */
    CHECK(rmr_yamlpb_line(lines, "routes[1].retry.per_try_timeout") == 60);
    CHECK(rmr_yamlpb_line(lines, "routes[1].match.headers[0].name") == 58);
    CHECK(rmr_yamlpb_line(lines, "nothing.here") == 0);
    CHECK(rmr_yamlpb_line(NULL, "services") == 0);

    /* JSON rendering, and JSON read back through the mapper (JSON is flow YAML) */
    char *json = rmr_yamlpb_to_json(msg);
    CHECK(json != NULL);
    if (json) {
        CHECK(strstr(json, "\"base_ejection\": \"5s\"") != NULL);
        CHECK(strstr(json, "\"max_ejection\": \"2m\"") != NULL);
        CHECK(strstr(json, "\"per_try_timeout\": \"500ms\"") != NULL);
        CHECK(strstr(json, "\"backoff\": {\"base\": \"25ms\"") != NULL);
        CHECK(strstr(json, "\"load_balancer\": \"least_request\"") != NULL);
        CHECK(strstr(json, "\"map\": {\"gray\": {\"version\": \"v2\"}}") != NULL);
        CHECK(strstr(json, "\"propagate\": [\"w3c\", \"b3\"]") != NULL);
        ProtobufCMessage *again = NULL;
        rc = rmr_yamlpb_parse("json", json, strlen(json), &remora__v1__mesh__descriptor, &again,
                              NULL, err, sizeof(err));
        if (rc)
            printf("     error: %s\n", err);
        CHECK(rc == 0);
        if (again) {
            char *json2 = rmr_yamlpb_to_json(again);
            CHECK(json2 && !strcmp(json, json2));
            size_t n1 = protobuf_c_message_get_packed_size(msg);
            size_t n2 = protobuf_c_message_get_packed_size(again);
            CHECK(n1 == n2 && n1 > 0);
            free(json2);
            protobuf_c_message_free_unpacked(again, NULL);
        }
        free(json);
    }
out:
    rmr_yamlpb_lines_free(lines);
    protobuf_c_message_free_unpacked(msg, NULL);
}

static void test_sidecar_example(const char *dir)
{
    char path[1024], err[512];
    snprintf(path, sizeof(path), "%s/sidecar.yaml", dir);
    ProtobufCMessage *msg = NULL;
    int rc =
        rmr_yamlpb_load(path, &remora__v1__bootstrap__descriptor, &msg, NULL, err, sizeof(err));
    if (rc != 0)
        printf("     error: %s\n", err);
    CHECK(rc == 0);
    if (rc != 0)
        return;
    Remora__V1__Bootstrap *b = (Remora__V1__Bootstrap *)msg;
    CHECK_STR(b->node, "checkout-1");
    CHECK_STR(b->service, "checkout");
    CHECK(b->n_labels == 1 && !strcmp(b->labels[0]->key, "version") &&
          !strcmp(b->labels[0]->value, "v1"));
    CHECK(b->inbound && !strcmp(b->inbound->listen, "127.0.0.1:15006") &&
          !strcmp(b->inbound->app, "127.0.0.1:18081"));
    CHECK(b->outbound && !strcmp(b->outbound->listen, "127.0.0.1:15001"));
    CHECK_STR(b->admin, "127.0.0.1:15000");
    CHECK_STR(b->control, "127.0.0.1:15010");
    CHECK_STR(b->cache_dir, "/tmp/remora-checkout-1");
    CHECK_STR(b->mesh_file, "");
    CHECK(b->workers == 2);
    CHECK(b->limits == NULL);
    protobuf_c_message_free_unpacked(msg, NULL);
}

static void test_durations(void)
{
    static const struct {
        const char *text;
        int rc;
        int64_t s;
        int32_t ns;
    } t[] = {
        {"500ms", 0, 0, 500000000},
        {"1s", 0, 1, 0},
        {"2m", 0, 120, 0},
        {"1h", 0, 3600, 0},
        {"0s", 0, 0, 0},
        {"0", 0, 0, 0},
        {"1.5s", 0, 1, 500000000},
        {"1m30s", 0, 90, 0},
        {"250us", 0, 0, 250000},
        {"7ns", 0, 0, 7},
        {"1.5h", 0, 5400, 0},
        {"0.001ms", 0, 0, 1000},
        {"", -EINVAL, 0, 0},
        {"5", -EINVAL, 0, 0},
        {"-1s", -EINVAL, 0, 0},
        {"1x", -EINVAL, 0, 0},
        {"s", -EINVAL, 0, 0},
        {"1 s", -EINVAL, 0, 0},
        {".s", -EINVAL, 0, 0},
        {"99999999999999999999999h", -EINVAL, 0, 0},
        {"9999999999999999999999h", -EINVAL, 0, 0}, /* found by the fuzzer: 128-bit overflow */
        {"9223372036854775807s", 0, INT64_MAX, 0},
        {"9223372036854775808s", -EINVAL, 0, 0},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        int64_t s = -1;
        int32_t ns = -1;
        int rc = rmr_duration_parse(t[i].text, &s, &ns);
        int ok = rc == t[i].rc && (rc != 0 || (s == t[i].s && ns == t[i].ns));
        checks++;
        printf("%s duration \"%s\" -> rc %d, %lld s %d ns\n", ok ? "ok  " : "FAIL", t[i].text, rc,
               (long long)s, ns);
        failures += !ok;
    }
}

static void test_enum_names(void)
{
    char buf[64];
    CHECK_STR(rmr_yamlpb_enum_name(&remora__v1__load_balancer__descriptor,
                                   REMORA__V1__LOAD_BALANCER__RING_HASH, buf, sizeof(buf)),
              "ring_hash");
    CHECK_STR(rmr_yamlpb_enum_name(&remora__v1__non_idempotent__descriptor,
                                   REMORA__V1__NON_IDEMPOTENT__WITH_KEY, buf, sizeof(buf)),
              "with_key");
    CHECK_STR(rmr_yamlpb_enum_name(&remora__v1__propagation__descriptor, 42, buf, sizeof(buf)),
              "42");
}

/* Good inputs that exercise the generic rules beyond the examples. */
static void test_good_inputs(void)
{
    char err[512];
    ProtobufCMessage *msg = NULL;
    const char *y = "services:\n"
                    "- name: a\n"
                    "  endpoints:\n"
                    "  - address: 10.0.0.1:80\n"
                    "  - {address: \"[::1]:80\", labels: {\"a.b\": 'x y', zone: ~}}\n"
                    "  - ~\n"
                    "  protocol: http2\n"
                    "  connect_timeout: 1m30s\n"
                    "  circuit_breaker: {max_connections: 0xff}\n"
                    "routes: []\n"
                    "tracing: {sample_percent: 0.5, export: {otlp_http: 'http://c:4318/v1'}}\n";
    int rc = rmr_yamlpb_parse("g.yaml", y, strlen(y), &remora__v1__mesh__descriptor, &msg, NULL,
                              err, sizeof(err));
    if (rc)
        printf("     error: %s\n", err);
    CHECK(rc == 0);
    if (rc == 0) {
        Remora__V1__Mesh *m = (Remora__V1__Mesh *)msg;
        Remora__V1__Service *s = m->services[0];
        CHECK(s->n_endpoints == 3);
        CHECK(s->n_endpoints == 3 && s->endpoints[2] != NULL && s->endpoints[2]->address[0] == 0);
        CHECK(s->endpoints[1]->n_labels == 2 && !strcmp(s->endpoints[1]->labels[0]->key, "a.b") &&
              !strcmp(s->endpoints[1]->labels[0]->value, "x y") &&
              !strcmp(s->endpoints[1]->labels[1]->value, ""));
        CHECK(s->protocol == REMORA__V1__PROTOCOL__HTTP2);
        CHECK_DUR(s->connect_timeout, 90, 0);
        CHECK(s->circuit_breaker && s->circuit_breaker->max_connections == 255);
        CHECK(m->n_routes == 0);
        CHECK(m->tracing && m->tracing->sample_percent == 0.5);
        CHECK(m->tracing && m->tracing->export &&
              !strcmp(m->tracing->export->otlp_http, "http://c:4318/v1"));
        protobuf_c_message_free_unpacked(msg, NULL);
    }
    /* an empty document is an empty message */
    rc = rmr_yamlpb_parse("e.yaml", "", 0, &remora__v1__mesh__descriptor, &msg, NULL, err,
                          sizeof(err));
    CHECK(rc == 0 && ((Remora__V1__Mesh *)msg)->n_services == 0);
    if (rc == 0)
        protobuf_c_message_free_unpacked(msg, NULL);
    rc = rmr_yamlpb_parse("e.yaml", "# nothing\n---\n...\n", 18, &remora__v1__mesh__descriptor,
                          &msg, NULL, err, sizeof(err));
    CHECK(rc == 0);
    if (rc == 0)
        protobuf_c_message_free_unpacked(msg, NULL);
    rc = rmr_yamlpb_load("/nonexistent/x.yaml", &remora__v1__mesh__descriptor, &msg, NULL, err,
                         sizeof(err));
    CHECK(rc == -ENOENT && msg == NULL);
    CHECK_STR(err, "/nonexistent/x.yaml: No such file or directory");
}

struct bad {
    int boot; /* 0: Mesh, 1: Bootstrap */
    const char *yaml;
    const char *want;
};

static const struct bad bad_inputs[] = {
    {0, "services:\n  - name: a\n    circuit_breaker:\n      max_connections: lots\n",
     "t.yaml:4: services[0].circuit_breaker.max_connections: expected an unsigned integer, got "
     "\"lots\""},
    {0, "services:\n  - name: a\n    circuit_breakr: {}\n",
     "t.yaml:3: services[0].circuit_breakr: unknown field (expected one of: name, endpoints, dns, "
     "load_balancer, protocol, connect_timeout, circuit_breaker, idempotency, idle_timeout, tls)"},
    {0, "services:\n- name: a\n  connect_timeout: 5\n",
     "t.yaml:3: services[0].connect_timeout: expected a duration such as \"500ms\", \"1s\" or "
     "\"2m\", got \"5\""},
    {0, "services:\n- name: a\n  connect_timeout: {seconds: 1}\n",
     "t.yaml:3: services[0].connect_timeout: expected a duration such as \"500ms\", \"1s\" or "
     "\"2m\", got a mapping"},
    {0, "services:\n- name: a\n  circuit_breaker: {max_requests: 4294967296}\n",
     "t.yaml:3: services[0].circuit_breaker.max_requests: \"4294967296\" is out of range for "
     "uint32 (0..4294967295)"},
    {0, "routes:\n- split:\n  - weight: -5\n",
     "t.yaml:3: routes[0].split[0].weight: \"-5\" is out of range for uint32 (0..4294967295)"},
    {0, "services:\n- name: a\n  name: b\n",
     "t.yaml:3: services[0].name: duplicate key (first at line 2)"},
    {0, "services:\n- endpoints:\n  - labels: {version: v1,\n      version: v2}\n",
     "t.yaml:4: services[0].endpoints[0].labels.version: duplicate key (first at line 3)"},
    {0, "routes:\n- lanes: {map: {gray: {version: v2, version: v3}}}\n",
     "t.yaml:2: routes[0].lanes.map.gray.version: duplicate key (first at line 2)"},
    {0, "services:\n- name: a\n  load_balancer: fastest\n",
     "t.yaml:3: services[0].load_balancer: expected one of round_robin, least_request, random, "
     "ring_hash, got \"fastest\""},
    {0, "services:\n- name: a\n  load_balancer: LEAST_REQUEST\n",
     "t.yaml:3: services[0].load_balancer: expected one of round_robin, least_request, random, "
     "ring_hash, got \"LEAST_REQUEST\""},
    {0, "services:\n  - name: [a, b]\n",
     "t.yaml:2: services[0].name: expected a string, got a sequence"},
    {0, "services: {name: a}\n", "t.yaml:1: services: expected a sequence, got a mapping"},
    {0, "services:\n- name: a\n  idempotency: {enabled: yes}\n",
     "t.yaml:3: services[0].idempotency.enabled: expected true or false, got \"yes\""},
    {0, "routes:\n- mirror: {percent: lots}\n",
     "t.yaml:2: routes[0].mirror.percent: expected a number, got \"lots\""},
    {0, "routes:\n- mirror: {percent: .nan}\n",
     "t.yaml:2: routes[0].mirror.percent: expected a number, got \".nan\""},
    {0, "routes:\n- match: {path_prefix: /a, path_exact: /b}\n",
     "t.yaml:2: routes[0].match.path_exact: only one of path_prefix, path_exact, path_regex may "
     "be set"},
    {0, "services:\n- name: a\n  endpoints: [\n",
     "t.yaml:4: services[0].endpoints: bad YAML: did not find expected node content while "
     "parsing a flow node"},
    {0, "services:\n- name: a\n\tb: 1\n",
     "t.yaml:3: services[0].name: bad YAML: found a tab character that violates indentation "
     "while scanning a plain scalar"},
    {0, "services:\n- &x {name: a}\n- *x\n",
     "t.yaml:2: services: anchors (&x) are not supported: write the value out"},
    {0, "services:\n- {name: a}\n- *x\n",
     "t.yaml:3: services: aliases (*x) are not supported: write the value out"},
    {0, "services:\n- name: !!str a\n",
     "t.yaml:2: services[0].name: tags (tag:yaml.org,2002:str) "
     "are not supported"},
    {0, "- a\n- b\n", "t.yaml:1: expected a mapping of fields at the top, got a sequence"},
    {0, "services: []\n---\nroutes: []\n", "t.yaml:2: only one YAML document is allowed"},
    {0, "? [a]\n: b\n", "t.yaml:1: a key must be a field name, got a sequence"},
    {0, "services:\n- endpoints:\n  - labels: {[x]: y}\n",
     "t.yaml:3: services[0].endpoints[0].labels: a key must be a scalar, got a sequence"},
    {0, "services:\n- endpoints:\n  - labels: {a: [y]}\n",
     "t.yaml:3: services[0].endpoints[0].labels.a: expected a string, got a sequence"},
    {0, "routes:\n- retry:\n    on: [reset, ~]\n",
     "t.yaml:3: routes[0].retry.on[1]: a value is required here, got null"},
    {0, "routes:\n- retry:\n    backoff: {base_: 1s}\n",
     "t.yaml:3: routes[0].retry.backoff.base_: unknown field (expected one of: base, max)"},
    {0, "routes:\n- name: \"a\\0b\"\n",
     "t.yaml:2: routes[0].name: a value cannot contain a NUL character"},
    {0, "routes:\n- lanes: {map: {\"a.b\": {v: 1}, \"a.b\": {}}}\n",
     "t.yaml:2: routes[0].lanes.map[\"a.b\"]: duplicate key (first at line 2)"},
    {0, "services:\n- endpoints:\n  - labels: {\"a\\tb\": x}\n",
     "t.yaml:3: services[0].endpoints[0].labels[\"a\\x09b\"]: a key cannot contain control "
     "characters"},
    {1, "workers: -1\n", "t.yaml:1: workers: \"-1\" is out of range for uint32 (0..4294967295)"},
    {1, "limits:\n  max_body_bytes: 18446744073709551616\n",
     "t.yaml:2: limits.max_body_bytes: \"18446744073709551616\" is out of range for uint64 "
     "(0..18446744073709551615)"},
    {1, "limits:\n  idle_timeout: -1s\n",
     "t.yaml:2: limits.idle_timeout: expected a duration such as \"500ms\", \"1s\" or \"2m\", got "
     "\"-1s\""},
    {1, "inbound: 127.0.0.1:80\n", "t.yaml:1: inbound: expected a mapping, got \"127.0.0.1:80\""},
    {1, "node: a\nnode: b\n", "t.yaml:2: node: duplicate key (first at line 1)"},
    {1, "labels: [a]\n", "t.yaml:1: labels: expected a mapping, got a sequence"},
};

static void test_bad_inputs(void)
{
    for (size_t i = 0; i < sizeof(bad_inputs) / sizeof(bad_inputs[0]); i++) {
        const struct bad *b = &bad_inputs[i];
        char err[512] = "";
        ProtobufCMessage *msg = (ProtobufCMessage *)1;
        rmr_yamlpb_lines_t *lines = (rmr_yamlpb_lines_t *)1;
        const ProtobufCMessageDescriptor *d =
            b->boot ? &remora__v1__bootstrap__descriptor : &remora__v1__mesh__descriptor;
        size_t len = strlen(b->yaml);
        int rc = rmr_yamlpb_parse("t.yaml", b->yaml, len, d, &msg, &lines, err, sizeof(err));
        int ok = rc == -EINVAL && msg == NULL && lines == NULL && !strcmp(err, b->want);
        checks++;
        failures += !ok;
        printf("%s bad input %zu: %s\n", ok ? "ok  " : "FAIL", i, err);
        if (!ok)
            printf("     want: %s\n", b->want);
        if (rc == 0) {
            protobuf_c_message_free_unpacked(msg, NULL);
            rmr_yamlpb_lines_free(lines);
        }
    }
}

/* Hostile shapes: bounded depth, bounded size, no crash. */
static void test_limits(void)
{
    char err[512];
    ProtobufCMessage *msg = NULL;
    size_t n = 100000;
    char *deep = malloc(2 * n + 32);
    strcpy(deep, "services: ");
    size_t o = strlen(deep);
    for (size_t i = 0; i < n; i++)
        deep[o++] = '[';
    for (size_t i = 0; i < n; i++)
        deep[o++] = ']';
    deep[o] = '\0';
    int rc = rmr_yamlpb_parse("deep.yaml", deep, o, &remora__v1__mesh__descriptor, &msg, NULL, err,
                              sizeof(err));
    CHECK(rc == -EINVAL);
    CHECK_STR(err, "deep.yaml:1: services[0]: expected a mapping, got a sequence");
    free(deep);

    size_t big = RMR_YAMLPB_MAX_INPUT + 1;
    char *huge = malloc(big);
    memset(huge, '#', big);
    rc = rmr_yamlpb_parse("huge.yaml", huge, big, &remora__v1__mesh__descriptor, &msg, NULL, err,
                          sizeof(err));
    CHECK(rc == -EFBIG);
    free(huge);

    /* many items: stopped at RMR_YAMLPB_MAX_ITEMS */
    size_t items = RMR_YAMLPB_MAX_ITEMS + 10;
    char *many = malloc(items * 4 + 64);
    strcpy(many, "routes: [");
    o = strlen(many);
    for (size_t i = 0; i < items; i++) {
        memcpy(many + o, "{},", 3);
        o += 3;
    }
    many[o++] = ']';
    many[o] = '\0';
    rc = rmr_yamlpb_parse("many.yaml", many, o, &remora__v1__mesh__descriptor, &msg, NULL, err,
                          sizeof(err));
    CHECK(rc == -EINVAL && strstr(err, "more than 200000 items") != NULL);
    free(many);

    /* map keys are bounded */
    char key[400];
    snprintf(key, sizeof(key), "node: a\nlabels: {%0300d: v}\n", 7);
    rc = rmr_yamlpb_parse("k.yaml", key, strlen(key), &remora__v1__bootstrap__descriptor, &msg,
                          NULL, err, sizeof(err));
    CHECK(rc == -EINVAL && strstr(err, "k.yaml:2: labels[\"000") == err &&
          strstr(err, "...\"]: a key must be at most 256 bytes") != NULL);

    /* a tiny error buffer is truncated, never overrun */
    char tiny[8];
    rc = rmr_yamlpb_parse("t.yaml", "x: 1\n", 5, &remora__v1__mesh__descriptor, &msg, NULL, tiny,
                          sizeof(tiny));
    CHECK(rc == -EINVAL && strlen(tiny) == 7);
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : RMR_SOURCE_ROOT "/examples";
    test_mesh_example(dir);
    test_sidecar_example(dir);
    test_durations();
    test_enum_names();
    test_good_inputs();
    test_bad_inputs();
    test_limits();
    return check_summary();
}
