/* match_bench: the route matcher's lookup cost with 10 and with 1,000 rules.
 *
 * Usage: match_bench [LOOKUPS]   (lookups per case and size, default 2000000)
 *
 * The rules look like a mesh config's: per service a canary route (a header on /api/v1/), a
 * POST-only exact path, /api/v1/, /api/v2/ and /static/ prefixes; every 10th service (the first
 * included) a regex route, every 25th a route on a query parameter; 4 host-less routes at the end
 * (exact /healthz, a prefix, a method, a header). 10 rules are the first service (6 rules) and the
 * host-less tail; 1,000 rules are 190 services and the same tail. Requests carry three headers
 * and a query string.
 *
 * Cases: "early" hits the first service's API prefix, "late" the static prefix of the last
 * service with the same rules as the first (near the end of the config), "regex" the first
 * service's regex route, "miss-host" is an unknown host (only the host-less rules apply),
 * "miss-path" the first service with a path nothing matches. Prints one line per case: ns per
 * lookup with 10 and 1,000 rules, their ratio, and the rule each size found (the best of 3 runs
 * each). A benchmark, not a test: it asserts nothing about time; it exits 1 only when a lookup
 * finds another rule than the one it is built to find.
 *
 * Build: part of the meson build (tests/unit/match_bench); run the release build for figures.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "remora/match.h"

#define MAX_RULES 1000

static rmr_match_rule_t rules[MAX_RULES];
static char names[MAX_RULES][24];
static const rmr_km_t canary[] = {{.name = "x-canary", .kind = RMR_KM_EXACT, .value = "always"}};
static const rmr_km_t debug_q[] = {{.name = "debug", .kind = RMR_KM_PRESENT}};
static const rmr_km_t debug_h[] = {{.name = "x-debug", .kind = RMR_KM_PRESENT}};

/* Fills rules with n rules (n >= 4): services svc-0000.mesh... then the host-less tail. Returns
 * the number of rules; sets *services, and *last_service to the last one whose group is whole and
 * has the same rules as the first's (so that "late" does the same work as "early"). */
static int make_rules(int n, int *services, int *last_service)
{
    int k = 0, s = 0;
    *last_service = 0;
    while (k < n - 4) {
        char *svc = names[s];
        snprintf(svc, sizeof(names[s]), "svc-%04d.mesh", s);
        rmr_match_rule_t group[8];
        int g = 0;
        group[g++] = (rmr_match_rule_t){.service = svc,
                                        .path_kind = RMR_PATH_PREFIX,
                                        .path = "/api/v1/",
                                        .n_headers = 1,
                                        .headers = canary};
        group[g++] = (rmr_match_rule_t){.service = svc,
                                        .path_kind = RMR_PATH_EXACT,
                                        .path = "/api/v1/orders",
                                        .method = "POST"};
        group[g++] =
            (rmr_match_rule_t){.service = svc, .path_kind = RMR_PATH_PREFIX, .path = "/api/v1/"};
        group[g++] =
            (rmr_match_rule_t){.service = svc, .path_kind = RMR_PATH_PREFIX, .path = "/api/v2/"};
        if (s % 10 == 0)
            group[g++] = (rmr_match_rule_t){
                .service = svc, .path_kind = RMR_PATH_REGEX, .path = "/users/[0-9]+/profile"};
        if (s % 25 == 12)
            group[g++] = (rmr_match_rule_t){.service = svc,
                                            .path_kind = RMR_PATH_PREFIX,
                                            .path = "/search",
                                            .n_query = 1,
                                            .query = debug_q};
        group[g++] =
            (rmr_match_rule_t){.service = svc, .path_kind = RMR_PATH_PREFIX, .path = "/static/"};
        int i = 0;
        for (; i < g && k < n - 4; i++)
            rules[k++] = group[i];
        if (i == g && s % 10 == 0 && s % 25 != 12)
            *last_service = s;
        s++;
    }
    rules[k++] = (rmr_match_rule_t){.path_kind = RMR_PATH_EXACT, .path = "/healthz"};
    rules[k++] = (rmr_match_rule_t){.path_kind = RMR_PATH_PREFIX, .path = "/.well-known/"};
    rules[k++] = (rmr_match_rule_t){.method = "OPTIONS"};
    rules[k++] = (rmr_match_rule_t){.n_headers = 1, .headers = debug_h};
    *services = s;
    return k;
}

typedef struct {
    const char *name, *value;
} hdr_t;

static const hdr_t req_hdrs[] = {
    {"user-agent", "curl/8.5.0"},
    {"accept", "application/json"},
    {"x-request-id", "6f1c2a4e-0b7d-4c55-9d3e-1f2a3b4c5d6e"},
};

static int header_cb(void *ctx, const char *lname, size_t lname_len, unsigned i, const char **v,
                     size_t *vlen)
{
    for (size_t k = 0; k < sizeof(req_hdrs) / sizeof(req_hdrs[0]); k++) {
        if (strlen(req_hdrs[k].name) == lname_len && !strcasecmp(req_hdrs[k].name, lname) &&
            i-- == 0) {
            *v = req_hdrs[k].value;
            *vlen = strlen(req_hdrs[k].value);
            return 0;
        }
    }
    return -1;
}

static rmr_match_req_t req(const char *host, const char *method, const char *path)
{
    static const char query[] = "page=2&sort=name";
    return (rmr_match_req_t){.host = host,
                             .host_len = strlen(host),
                             .method = method,
                             .method_len = strlen(method),
                             .path = path,
                             .path_len = strlen(path),
                             .query = query,
                             .query_len = sizeof(query) - 1,
                             .header = header_cb};
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* ns per lookup over `lookups` lookups of r. */
static double time_run(const rmr_matcher_t *m, const rmr_match_req_t *r, long lookups)
{
    volatile int sink = 0;
    double t0 = now_ns();
    for (long i = 0; i < lookups; i++)
        sink += rmr_matcher_find(m, r);
    (void)sink;
    return (now_ns() - t0) / (double)lookups;
}

#define CASES 5
#define RUNS 5

int main(int argc, char **argv)
{
    long lookups = argc > 1 ? atol(argv[1]) : 2000000;
    static const int sizes[2] = {10, MAX_RULES};
    static const char *const case_names[CASES] = {"early", "late", "regex", "miss-host",
                                                  "miss-path"};
    rmr_matcher_t *m[2];
    rmr_match_req_t r[2][CASES];
    double ns[2][CASES];
    int found[2][CASES], want[2][CASES];
    static char late_host[2][24];
    int bad = 0;
    if (lookups <= 0) {
        fprintf(stderr, "usage: match_bench [LOOKUPS]\n");
        return 2;
    }
    for (int z = 0; z < 2; z++) {
        int last, services;
        char err[256];
        int n = make_rules(sizes[z], &services, &last);
        m[z] = rmr_matcher_new(rules, (size_t)n, err, sizeof(err));
        if (!m[z]) {
            fprintf(stderr, "match_bench: %s\n", err);
            return 1;
        }
        snprintf(late_host[z], sizeof(late_host[z]), "svc-%04d.mesh", last);
        /* The rule each case must find. */
        int late = -1, regex = -1;
        for (int i = 0; i < n; i++) {
            if (rules[i].service && !strcmp(rules[i].service, late_host[z]) &&
                !strcmp(rules[i].path, "/static/"))
                late = i;
            if (regex < 0 && rules[i].path_kind == RMR_PATH_REGEX)
                regex = i;
        }
        r[z][0] = req("svc-0000.mesh", "GET", "/api/v1/users/42");
        r[z][1] = req(late_host[z], "GET", "/static/js/app.3f9a1c.js");
        r[z][2] = req("SVC-0000.mesh", "GET", "/users/1234/profile");
        r[z][3] = req("unknown.mesh", "GET", "/api/v1/users/42");
        r[z][4] = req("svc-0000.mesh", "GET", "/nothing/here");
        int w[CASES] = {2, late, regex, -1, -1};
        for (int c = 0; c < CASES; c++) {
            want[z][c] = w[c];
            found[z][c] = rmr_matcher_find(m[z], &r[z][c]);
            bad |= found[z][c] != w[c];
        }
        printf("%d rules: %d services and 4 host-less rules; late: %s, rule %d\n", n, services,
               late_host[z], late);
    }
    /* The sizes take turns, so that a change of load on the machine hits both alike; each
     * figure is the best of RUNS. */
    for (int run = 0; run < RUNS; run++) {
        for (int c = 0; c < CASES; c++) {
            for (int z = 0; z < 2; z++) {
                double t = time_run(m[z], &r[z][c], lookups);
                if (run == 0 || t < ns[z][c])
                    ns[z][c] = t;
            }
        }
    }
    printf("%-10s %12s %12s %7s   %s\n", "case", "10 rules", "1000 rules", "ratio", "rule found");
    for (int c = 0; c < CASES; c++)
        printf("%-10s %9.1f ns %9.1f ns %7.2f   %d / %d%s\n", case_names[c], ns[0][c], ns[1][c],
               ns[1][c] / ns[0][c], found[0][c], found[1][c],
               found[0][c] != want[0][c] || found[1][c] != want[1][c] ? "  WRONG" : "");
    rmr_matcher_free(m[0]);
    rmr_matcher_free(m[1]);
    return bad;
}
