/*
 * Unit test of filters/match.c: the route matcher (service, path exact / prefix / regex,
 * method, header and query conditions of every kind, case rules, query decoding, the regex
 * bounds, first match in config order across host-specific and host-less rules, errors, the
 * empty matcher, concurrent lookups), and a randomized differential test against a naive linear
 * matcher written here. Prints one line per check; exits 1 when any check fails.
 */
#include <pthread.h>
#include <regex.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "remora/match.h"

#include "check.h"

#define MAX_HDRS 8

typedef struct {
    const char *name, *value;
} hdr_t;

/* A request as NUL-terminated strings; NULL stays NULL. */
typedef struct {
    const char *host, *method, *path, *query;
    size_t n_hdrs;
    hdr_t hdrs[MAX_HDRS];
    size_t path_len; /* 0: strlen(path) */
} treq_t;

static int upper_lname; /* header lookups whose name was not lower-case */

static int header_cb(void *ctx, const char *lname, size_t lname_len, unsigned i, const char **v,
                     size_t *vlen)
{
    const treq_t *q = ctx;
    for (size_t k = 0; k < lname_len; k++)
        upper_lname += lname[k] >= 'A' && lname[k] <= 'Z';
    if (lname[lname_len] != '\0')
        upper_lname++;
    for (size_t k = 0; k < q->n_hdrs; k++) {
        if (strlen(q->hdrs[k].name) == lname_len && !strcasecmp(q->hdrs[k].name, lname) &&
            i-- == 0) {
            *v = q->hdrs[k].value;
            *vlen = strlen(q->hdrs[k].value);
            return 0;
        }
    }
    return -1;
}

static int find(const rmr_matcher_t *m, const treq_t *q)
{
    rmr_match_req_t r = {
        .host = q->host,
        .host_len = q->host ? strlen(q->host) : 0,
        .method = q->method,
        .method_len = q->method ? strlen(q->method) : 0,
        .path = q->path,
        .path_len = q->path_len ? q->path_len
                    : q->path   ? strlen(q->path)
                                : 0,
        .query = q->query,
        .query_len = q->query ? strlen(q->query) : 0,
        .header = header_cb,
        .ctx = (void *)q,
    };
    return rmr_matcher_find(m, &r);
}

/* The rule a request with just host, method and path takes. */
static int find_hmp(const rmr_matcher_t *m, const char *host, const char *method, const char *path)
{
    treq_t q = {.host = host, .method = method, .path = path};
    return find(m, &q);
}

static rmr_matcher_t *build(const rmr_match_rule_t *rules, size_t n)
{
    char err[256];
    rmr_matcher_t *m = rmr_matcher_new(rules, n, err, sizeof(err));
    if (!m)
        printf("     rmr_matcher_new: %s\n", err);
    return m;
}

#define NRULES(a) (sizeof(a) / sizeof((a)[0]))

static void test_empty(void)
{
    char err[64] = "x";
    rmr_matcher_t *m = rmr_matcher_new(NULL, 0, err, sizeof(err));
    CHECK(m != NULL);
    CHECK_STR(err, "");
    CHECK_INT(find_hmp(m, "a", "GET", "/"), -1);
    CHECK_INT(find_hmp(m, NULL, NULL, NULL), -1);
    rmr_matcher_free(m);
    rmr_matcher_free(NULL);
}

static void test_service(void)
{
    rmr_match_rule_t rules[] = {
        {.service = "Api.Example", .path_kind = RMR_PATH_PREFIX, .path = "/v1"},
        {.service = "api.example"},
        {.service = "web"},
        {.service = "", .path_kind = RMR_PATH_EXACT, .path = "/any"},
        {.service = NULL, .path_kind = RMR_PATH_EXACT, .path = "/any2"},
    };
    rmr_matcher_t *m = build(rules, NRULES(rules));
    CHECK(m != NULL);
    CHECK_INT(find_hmp(m, "api.example", "GET", "/v1/x"), 0);
    CHECK_INT(find_hmp(m, "API.EXAMPLE", "GET", "/v1/x"), 0);
    CHECK_INT(find_hmp(m, "aPi.eXample", "GET", "/v2"), 1);
    CHECK_INT(find_hmp(m, "WEB", "GET", "/any"), 2);
    CHECK_INT(find_hmp(m, "web2", "GET", "/any"), 3);
    CHECK_INT(find_hmp(m, "api.example.", "GET", "/v1"), -1); /* no normalisation */
    CHECK_INT(find_hmp(m, "api", "GET", "/v1"), -1);
    CHECK_INT(find_hmp(m, NULL, "GET", "/any"), 3);
    CHECK_INT(find_hmp(m, "", "GET", "/any2"), 4);
    CHECK_INT(find_hmp(m, NULL, "GET", "/v1"), -1);
    /* the host slice need not be NUL-terminated */
    rmr_match_req_t r = {.host = "webserver", .host_len = 3, .path = "/", .path_len = 1};
    CHECK_INT(rmr_matcher_find(m, &r), 2);
    rmr_matcher_free(m);
}

static void test_path(void)
{
    rmr_match_rule_t rules[] = {
        {.path_kind = RMR_PATH_EXACT, .path = "/a/b"},        /* 0 */
        {.path_kind = RMR_PATH_PREFIX, .path = "/a/b/"},      /* 1 */
        {.path_kind = RMR_PATH_REGEX, .path = "/u/[0-9]+"},   /* 2 */
        {.path_kind = RMR_PATH_REGEX, .path = "/x|/y"},       /* 3: whole path, either */
        {.path_kind = RMR_PATH_REGEX, .path = "/p)q"},        /* 4: a lone ')' is a literal */
        {.path_kind = RMR_PATH_PREFIX, .path = "/a"},         /* 5 */
        {.path_kind = RMR_PATH_EXACT, .path = ""},            /* 6 */
        {.path_kind = RMR_PATH_REGEX, .path = "/[)]+/[^]a]"}, /* 7: brackets keep ')' */
        {.path_kind = RMR_PATH_PREFIX, .path = ""},           /* 8: any path */
    };
    rmr_matcher_t *m = build(rules, NRULES(rules));
    CHECK(m != NULL);
    CHECK_INT(find_hmp(m, "h", "GET", "/a/b"), 0);
    CHECK_INT(find_hmp(m, "h", "GET", "/a/b/"), 1);
    CHECK_INT(find_hmp(m, "h", "GET", "/a/b/c/d"), 1);
    CHECK_INT(find_hmp(m, "h", "GET", "/a/bc"), 5);
    CHECK_INT(find_hmp(m, "h", "GET", "/a"), 5);
    CHECK_INT(find_hmp(m, "h", "GET", "/A/b"), 8); /* paths are case-sensitive */
    CHECK_INT(find_hmp(m, "h", "GET", "/u/123"), 2);
    CHECK_INT(find_hmp(m, "h", "GET", "/u/123/x"), 8); /* the regex must match the whole path */
    CHECK_INT(find_hmp(m, "h", "GET", "x/u/1"), 8);
    CHECK_INT(find_hmp(m, "h", "GET", "/x"), 3);
    CHECK_INT(find_hmp(m, "h", "GET", "/y"), 3);
    CHECK_INT(find_hmp(m, "h", "GET", "/xy"), 8);
    CHECK_INT(find_hmp(m, "h", "GET", "/x/y"), 8);
    CHECK_INT(find_hmp(m, "h", "GET", "/p)q"), 4);
    CHECK_INT(find_hmp(m, "h", "GET", "/pq)"), 8);
    CHECK_INT(find_hmp(m, "h", "GET", "/))/b"), 7);
    CHECK_INT(find_hmp(m, "h", "GET", "/))/a"), 8);
    CHECK_INT(find_hmp(m, "h", "GET", ""), 6);
    CHECK_INT(find_hmp(m, "h", "GET", NULL), 6);
    CHECK_INT(find_hmp(m, "h", "GET", "/zzz"), 8);
    /* a path slice is matched up to its length, whatever follows it */
    rmr_match_req_t r = {.path = "/a/b?x=1", .path_len = 4};
    CHECK_INT(rmr_matcher_find(m, &r), 0);
    rmr_matcher_free(m);
}

static void test_path_bounds(void)
{
    rmr_match_rule_t rules[] = {
        {.path_kind = RMR_PATH_REGEX, .path = "/a*"},
        {.path_kind = RMR_PATH_PREFIX, .path = "/a"},
        {.path_kind = RMR_PATH_REGEX, .path = "/.*"},
    };
    rmr_matcher_t *m = build(rules, NRULES(rules));
    CHECK(m != NULL);
    char *p = malloc(RMR_MATCH_REGEX_MAX + 2);
    p[0] = '/';
    memset(p + 1, 'a', RMR_MATCH_REGEX_MAX);
    treq_t q = {.host = "h", .path = p, .path_len = RMR_MATCH_REGEX_MAX};
    CHECK_INT(find(m, &q), 0); /* 8192 bytes: the regex is tried */
    q.path_len = RMR_MATCH_REGEX_MAX + 1;
    CHECK_INT(find(m, &q), 1); /* longer: no regex matches, the prefix still does */
    q.path = "/a\0a";          /* a NUL byte: no regex matches */
    q.path_len = 4;
    CHECK_INT(find(m, &q), 1);
    q.path = "/b\0a";
    CHECK_INT(find(m, &q), -1);
    free(p);
    rmr_matcher_free(m);
}

static void test_method(void)
{
    rmr_match_rule_t rules[] = {
        {.method = "POST", .path_kind = RMR_PATH_PREFIX, .path = "/o"},
        {.method = "", .path_kind = RMR_PATH_EXACT, .path = "/o/1"},
        {.method = "GET"},
    };
    rmr_matcher_t *m = build(rules, NRULES(rules));
    CHECK(m != NULL);
    CHECK_INT(find_hmp(m, "h", "POST", "/o/1"), 0);
    CHECK_INT(find_hmp(m, "h", "post", "/o/1"), 1); /* methods are case-sensitive */
    CHECK_INT(find_hmp(m, "h", "POSTX", "/o/2"), -1);
    CHECK_INT(find_hmp(m, "h", "POS", "/o/2"), -1);
    CHECK_INT(find_hmp(m, "h", NULL, "/o/2"), -1);
    CHECK_INT(find_hmp(m, "h", NULL, "/o/1"), 1);
    CHECK_INT(find_hmp(m, "h", "GET", "/o/2"), 2);
    CHECK_INT(find_hmp(m, "h", "get", "/z"), -1);
    rmr_matcher_free(m);
}

static void test_headers(void)
{
    rmr_km_t present[] = {{.name = "X-Canary", .kind = RMR_KM_PRESENT}};
    rmr_km_t exact[] = {{.name = "x-user", .kind = RMR_KM_EXACT, .value = "Bob"}};
    rmr_km_t prefix[] = {{.name = "X-USER", .kind = RMR_KM_PREFIX, .value = "adm"}};
    rmr_km_t regex[] = {{.name = "x-id", .kind = RMR_KM_REGEX, .value = "[0-9]+"}};
    rmr_km_t absent[] = {{.name = "X-Trace", .kind = RMR_KM_ABSENT}};
    rmr_km_t both[] = {{.name = "x-a", .kind = RMR_KM_EXACT, .value = "1"},
                       {.name = "x-b", .kind = RMR_KM_EXACT}}; /* NULL value: "" */
    rmr_match_rule_t rules[] = {
        {.service = "h", .n_headers = 1, .headers = present},
        {.service = "h", .n_headers = 1, .headers = exact},
        {.service = "h", .n_headers = 1, .headers = prefix},
        {.service = "h", .n_headers = 1, .headers = regex},
        {.service = "h", .n_headers = 2, .headers = both},
        {.service = "h", .n_headers = 1, .headers = absent},
    };
    rmr_matcher_t *m = build(rules, NRULES(rules));
    CHECK(m != NULL);
    upper_lname = 0;
    treq_t q = {.host = "h", .path = "/", .n_hdrs = 1, .hdrs = {{"x-canary", ""}}};
    CHECK_INT(find(m, &q), 0);
    q.hdrs[0] = (hdr_t){"X-CANARY", "yes"};
    CHECK_INT(find(m, &q), 0);
    q.hdrs[0] = (hdr_t){"x-user", "Bob"};
    CHECK_INT(find(m, &q), 1);
    q.hdrs[0] = (hdr_t){"x-user", "bob"}; /* values are case-sensitive */
    CHECK_INT(find(m, &q), 5);
    q.hdrs[0] = (hdr_t){"x-user", "Bobby"};
    CHECK_INT(find(m, &q), 5);
    q.hdrs[0] = (hdr_t){"x-user", "admin"};
    CHECK_INT(find(m, &q), 2);
    q.hdrs[0] = (hdr_t){"x-user", "ad"};
    CHECK_INT(find(m, &q), 5);
    /* any occurrence may satisfy the condition */
    q.n_hdrs = 3;
    q.hdrs[0] = (hdr_t){"x-user", "carol"};
    q.hdrs[1] = (hdr_t){"x-other", "Bob"};
    q.hdrs[2] = (hdr_t){"X-User", "Bob"};
    CHECK_INT(find(m, &q), 1);
    q.n_hdrs = 1;
    q.hdrs[0] = (hdr_t){"x-id", "123"};
    CHECK_INT(find(m, &q), 3);
    q.hdrs[0] = (hdr_t){"x-id", "123a"}; /* whole value */
    CHECK_INT(find(m, &q), 5);
    q.hdrs[0] = (hdr_t){"x-id", ""};
    CHECK_INT(find(m, &q), 5);
    /* both conditions must hold */
    q.n_hdrs = 2;
    q.hdrs[0] = (hdr_t){"x-a", "1"};
    q.hdrs[1] = (hdr_t){"x-b", ""};
    CHECK_INT(find(m, &q), 4);
    q.hdrs[1] = (hdr_t){"x-b", "2"};
    CHECK_INT(find(m, &q), 5);
    q.hdrs[1] = (hdr_t){"x-c", ""};
    CHECK_INT(find(m, &q), 5);
    /* ABSENT fails on any occurrence, with any value, even empty */
    q.n_hdrs = 1;
    q.hdrs[0] = (hdr_t){"x-trace", ""};
    CHECK_INT(find(m, &q), -1);
    q.n_hdrs = 0;
    CHECK_INT(find(m, &q), 5);
    /* no header callback: no headers */
    rmr_match_req_t r = {.host = "h", .host_len = 1, .path = "/", .path_len = 1};
    CHECK_INT(rmr_matcher_find(m, &r), 5);
    CHECK_INT(upper_lname, 0);
    rmr_matcher_free(m);
}

static void test_header_bounds(void)
{
    rmr_km_t re[] = {{.name = "x", .kind = RMR_KM_REGEX, .value = "a*"}};
    rmr_km_t pre[] = {{.name = "x", .kind = RMR_KM_PREFIX, .value = "aaa"}};
    rmr_match_rule_t rules[] = {{.n_headers = 1, .headers = re}, {.n_headers = 1, .headers = pre}};
    rmr_matcher_t *m = build(rules, NRULES(rules));
    CHECK(m != NULL);
    char *v = malloc(RMR_MATCH_REGEX_MAX + 2);
    memset(v, 'a', RMR_MATCH_REGEX_MAX);
    v[RMR_MATCH_REGEX_MAX] = '\0';
    treq_t q = {.path = "/", .n_hdrs = 1, .hdrs = {{"x", v}}};
    CHECK_INT(find(m, &q), 0);
    v[RMR_MATCH_REGEX_MAX] = 'a';
    v[RMR_MATCH_REGEX_MAX + 1] = '\0';
    CHECK_INT(find(m, &q), 1);
    free(v);
    rmr_matcher_free(m);
}

static void test_query(void)
{
    rmr_km_t q_present[] = {{.name = "debug", .kind = RMR_KM_PRESENT}};
    rmr_km_t q_exact[] = {{.name = "user name", .kind = RMR_KM_EXACT, .value = "a b&c"}};
    rmr_km_t q_prefix[] = {{.name = "v", .kind = RMR_KM_PREFIX, .value = "2."}};
    rmr_km_t q_regex[] = {{.name = "id", .kind = RMR_KM_REGEX, .value = "[0-9]{3}"}};
    rmr_km_t q_empty[] = {{.name = "flag", .kind = RMR_KM_EXACT, .value = ""}};
    rmr_km_t q_absent[] = {{.name = "Skip", .kind = RMR_KM_ABSENT}};
    rmr_match_rule_t rules[] = {
        {.n_query = 1, .query = q_present}, /* 0 */
        {.n_query = 1, .query = q_exact},   /* 1 */
        {.n_query = 1, .query = q_prefix},  /* 2 */
        {.n_query = 1, .query = q_regex},   /* 3 */
        {.n_query = 1, .query = q_empty},   /* 4 */
        {.n_query = 1, .query = q_absent},  /* 5 */
    };
    rmr_matcher_t *m = build(rules, NRULES(rules));
    CHECK(m != NULL);
    static const struct {
        const char *query;
        int want;
    } cases[] = {
        {"debug", 0},
        {"debug=1", 0},
        {"x=1&debug=", 0},
        {"de%62ug=1", 0}, /* names are decoded */
        {"DEBUG=1", 5},   /* query names are case-sensitive */
        {"debugx=1", 5},
        {"user+name=a+b%26c", 1},
        {"user%20name=a%20b%26c", 1},
        {"user%20name=a b%26c", 1},
        {"user name=a+b&c", 5}, /* '&' splits before decoding */
        {"user+name=a+b%26c&debug", 0},
        {"v=2.1", 2},
        {"v=2%2E1", 2},
        {"v=3.2.", 5},
        {"v=1&v=2.0", 2}, /* any occurrence */
        {"id=123", 3},
        {"id=%31%32%33", 3},
        {"id=1234", 5},
        {"id=12", 5},
        {"flag", 4}, /* no '=': an empty value */
        {"flag=", 4},
        {"flag=0", 5},
        {"&&flag&&", 4},
        {"id=%zz&v=%2", 5}, /* bad escapes stay as they are */
        {"v=2%", 5},
        {"v=%32.", 2},
        {"Skip=1", -1},
        {"Skip", -1},
        {"skip", 5},
        {"", 5},
        {"=debug", 5},
        {"id=1=2", 5},
    };
    for (size_t i = 0; i < NRULES(cases); i++) {
        treq_t q = {.host = "h", .path = "/", .query = cases[i].query};
        printf("     query [%s]\n", cases[i].query);
        CHECK_INT(find(m, &q), cases[i].want);
    }
    treq_t q = {.host = "h", .path = "/", .query = NULL};
    CHECK_INT(find(m, &q), 5);
    /* a query slice is read up to its length */
    rmr_match_req_t r = {.path = "/", .path_len = 1, .query = "debug#x", .query_len = 5};
    CHECK_INT(rmr_matcher_find(m, &r), 0);
    rmr_matcher_free(m);
}

static void test_query_bounds(void)
{
    enum { MAX = RMR_MATCH_QUERY_REGEX_MAX };
    rmr_km_t re[] = {{.name = "q", .kind = RMR_KM_REGEX, .value = "b*"}};
    char *big = malloc(MAX + 2);
    memset(big, 'b', MAX + 1);
    big[MAX + 1] = '\0';
    rmr_km_t ex[] = {{.name = "q", .kind = RMR_KM_EXACT, .value = big}};
    rmr_km_t pre[] = {{.name = "q", .kind = RMR_KM_PREFIX, .value = "bbb"}};
    rmr_match_rule_t rules[] = {
        {.n_query = 1, .query = re},
        {.n_query = 1, .query = ex},
        {.n_query = 1, .query = pre},
    };
    rmr_matcher_t *m = build(rules, NRULES(rules));
    CHECK(m != NULL);
    /* "q=" and MAX encoded b's (3 bytes each, so 3 * MAX raw bytes): the regex sees MAX */
    char *s = malloc(2 + 3 * (MAX + 1) + 1);
    memcpy(s, "q=", 2);
    for (int i = 0; i <= MAX; i++)
        memcpy(s + 2 + 3 * i, "%62", 3);
    s[2 + 3 * MAX] = '\0';
    treq_t q = {.path = "/", .query = s};
    CHECK_INT(find(m, &q), 0);
    s[2 + 3 * MAX] = '%';
    s[2 + 3 * (MAX + 1)] = '\0'; /* MAX + 1 decoded bytes: too long for a regex */
    CHECK_INT(find(m, &q), 1);   /* exact and prefix have no bound */
    s[2 + 3 * MAX + 1] = '6';
    s[2 + 3 * MAX + 2] = '3'; /* ...c */
    CHECK_INT(find(m, &q), 2);
    /* a decoded NUL byte: no regex matches */
    q.query = "q=b%00b";
    CHECK_INT(find(m, &q), -1);
    q.query = "q=bbb%00b";
    CHECK_INT(find(m, &q), 2);
    free(s);
    free(big);
    rmr_matcher_free(m);
}

/* The first rule in config order wins, whichever index structure holds it. */
static void test_order(void)
{
    rmr_km_t canary[] = {{.name = "x-canary", .kind = RMR_KM_EXACT, .value = "1"}};
    rmr_match_rule_t rules[] = {
        {.service = "a",
         .path_kind = RMR_PATH_PREFIX,
         .path = "/api/v1/",
         .n_headers = 1,
         .headers = canary},                                                      /* 0 */
        {.path_kind = RMR_PATH_EXACT, .path = "/healthz"},                        /* 1 */
        {.service = "a", .path_kind = RMR_PATH_PREFIX, .path = "/api/"},          /* 2 */
        {.service = "a", .path_kind = RMR_PATH_EXACT, .path = "/api/v1/x"},       /* 3 */
        {.path_kind = RMR_PATH_PREFIX, .path = "/api/v1/x"},                      /* 4 */
        {.service = "a", .path_kind = RMR_PATH_EXACT, .path = "/healthz"},        /* 5 */
        {.service = "b", .path_kind = RMR_PATH_REGEX, .path = "/api/v[0-9]/x.*"}, /* 6 */
        {.method = "DELETE"},                                                     /* 7 */
        {.service = "b", .path_kind = RMR_PATH_PREFIX, .path = "/api/v1"},        /* 8 */
        {.service = "a", .path_kind = RMR_PATH_PREFIX, .path = "/"},              /* 9 */
        {.path_kind = RMR_PATH_PREFIX, .path = "/api/v1/y"},                      /* 10 */
        {.service = "b"},                                                         /* 11 */
        {.path_kind = RMR_PATH_PREFIX, .path = "/"},                              /* 12 */
    };
    rmr_matcher_t *m = build(rules, NRULES(rules));
    CHECK(m != NULL);
    treq_t q = {.host = "a",
                .method = "GET",
                .path = "/api/v1/x",
                .n_hdrs = 1,
                .hdrs = {{"x-canary", "1"}}};
    CHECK_INT(find(m, &q), 0);
    q.n_hdrs = 0;
    CHECK_INT(find(m, &q), 2); /* a shorter prefix earlier beats the exact path */
    CHECK_INT(find_hmp(m, "a", "GET", "/healthz"), 1);
    CHECK_INT(find_hmp(m, "b", "GET", "/healthz"), 1);
    CHECK_INT(find_hmp(m, "c", "GET", "/api/v1/x"), 4);
    CHECK_INT(find_hmp(m, "c", "GET", "/api/v1/y/z"), 10);
    CHECK_INT(find_hmp(m, "b", "GET", "/api/v1/x"), 4); /* host-less beats a later host rule */
    CHECK_INT(find_hmp(m, "b", "GET", "/api/v2/x"), 6);
    CHECK_INT(find_hmp(m, "b", "DELETE", "/api/v1"), 7);
    CHECK_INT(find_hmp(m, "b", "GET", "/api/v1"), 8);
    CHECK_INT(find_hmp(m, "b", "GET", "/api/v1/y"), 8); /* a host rule beats a later host-less */
    CHECK_INT(find_hmp(m, "a", "DELETE", "/zz"), 7);
    CHECK_INT(find_hmp(m, "a", "GET", "/zz"), 9);
    CHECK_INT(find_hmp(m, "a", "GET", "zz"), -1);
    CHECK_INT(find_hmp(m, "b", "GET", "zz"), 11);
    CHECK_INT(find_hmp(m, "c", "GET", "/zz"), 12);
    CHECK_INT(find_hmp(m, NULL, "GET", "/api/v1/y"), 10);
    rmr_matcher_free(m);
}

/* The matcher keeps copies: the caller's strings may change once it is built. */
static void test_copies(void)
{
    char svc[] = "Svc", path[] = "/p", hname[] = "X-K", hval[] = "v", method[] = "GET";
    rmr_km_t h[] = {{.name = hname, .kind = RMR_KM_EXACT, .value = hval}};
    rmr_match_rule_t rules[] = {{.service = svc,
                                 .path_kind = RMR_PATH_PREFIX,
                                 .path = path,
                                 .method = method,
                                 .n_headers = 1,
                                 .headers = h}};
    rmr_matcher_t *m = build(rules, 1);
    CHECK(m != NULL);
    memset(svc, 'z', 3);
    memset(path, 'z', 2);
    memset(hname, 'z', 3);
    memset(hval, 'z', 1);
    memset(method, 'z', 3);
    memset(rules, 0, sizeof(rules));
    treq_t q = {.host = "svc", .method = "GET", .path = "/p1", .n_hdrs = 1, .hdrs = {{"x-k", "v"}}};
    CHECK_INT(find(m, &q), 0);
    rmr_matcher_free(m);
}

static int starts(const char *s, const char *prefix)
{
    return !strncmp(s, prefix, strlen(prefix));
}

static void test_errors(void)
{
    char err[256];
    rmr_km_t bad_h[] = {{.name = "X-Id", .kind = RMR_KM_REGEX, .value = "[0-9"}};
    rmr_km_t bad_q[] = {{.name = "id", .kind = RMR_KM_REGEX, .value = "a{2,1}"}};
    rmr_km_t no_name[] = {{.name = "a", .kind = RMR_KM_PRESENT}, {.name = "", .kind = 0}};
    rmr_km_t bad_kind[] = {{.name = "a", .kind = (rmr_km_kind_t)9}};
    rmr_match_rule_t ok = {.path_kind = RMR_PATH_REGEX, .path = "/a"};
    rmr_match_rule_t rules[2] = {ok, {.path_kind = RMR_PATH_REGEX, .path = "/a("}};
    CHECK(rmr_matcher_new(rules, 2, err, sizeof(err)) == NULL);
    printf("     err: %s\n", err);
    CHECK_STR(err, "rule 1: path regex \"/a(\": Unmatched ( or \\(");
    rules[1] = (rmr_match_rule_t){.n_headers = 1, .headers = bad_h};
    CHECK(rmr_matcher_new(rules, 2, err, sizeof(err)) == NULL);
    printf("     err: %s\n", err);
    CHECK(starts(err, "rule 1: header \"x-id\" regex \"[0-9\": Unmatched"));
    rules[1] = (rmr_match_rule_t){.n_query = 1, .query = bad_q};
    CHECK(rmr_matcher_new(rules, 2, err, sizeof(err)) == NULL);
    printf("     err: %s\n", err);
    CHECK(starts(err, "rule 1: query parameter \"id\" regex \"a{2,1}\": Invalid"));
    rules[1] = (rmr_match_rule_t){.n_headers = 2, .headers = no_name};
    CHECK(rmr_matcher_new(rules, 2, err, sizeof(err)) == NULL);
    CHECK_STR(err, "rule 1: header 1: empty name");
    rules[1] = (rmr_match_rule_t){.n_query = 1, .query = bad_kind};
    CHECK(rmr_matcher_new(rules, 2, err, sizeof(err)) == NULL);
    CHECK_STR(err, "rule 1: query parameter \"a\": unknown kind 9");
    rules[1] = (rmr_match_rule_t){.path_kind = (rmr_path_kind_t)7};
    CHECK(rmr_matcher_new(rules, 2, err, sizeof(err)) == NULL);
    CHECK_STR(err, "rule 1: unknown path kind 7");
    /* a short buffer gets a truncated, terminated message; no buffer is fine too */
    rules[1] = (rmr_match_rule_t){.path_kind = RMR_PATH_REGEX, .path = "("};
    CHECK(rmr_matcher_new(rules, 2, err, 8) == NULL);
    CHECK_STR(err, "rule 1:");
    CHECK(rmr_matcher_new(rules, 2, NULL, 0) == NULL);
    /* a regex that is fine alone is fine */
    rules[1] = (rmr_match_rule_t){.path_kind = RMR_PATH_REGEX, .path = "a)|(b"};
    CHECK(rmr_matcher_new(rules, 2, err, sizeof(err)) == NULL); /* unmatched '(' */
    rules[1] = (rmr_match_rule_t){.path_kind = RMR_PATH_REGEX, .path = "a)|b"};
    rmr_matcher_t *m = rmr_matcher_new(rules, 2, err, sizeof(err));
    CHECK(m != NULL);
    CHECK_INT(find_hmp(m, "h", "GET", "a)"), 1);
    CHECK_INT(find_hmp(m, "h", "GET", "b"), 1);
    CHECK_INT(find_hmp(m, "h", "GET", "a)b"), -1);
    rmr_matcher_free(m);
}

/* ---- the differential test ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)((rng_state >> 11) % n);
}

#define PICK(a) ((a)[rnd(sizeof(a) / sizeof((a)[0]))])

static const char *const path_regexes[] = {
    "/a.*", "/(a|b)+", "[/ab]*b", "/a|/ab",   "(/a)?/b",   "",     "/",
    ".*",   "/a)",     "/[a)]*",  "(/a|/b)*", "/a{1,2}b?", "/a)b", "a)|/b",
};
static const char *const services[] = {NULL, "", "a.svc", "A.Svc", "b.svc", "c", "c", "a.svc"};
static const char *const methods[] = {NULL, "", "GET", "POST", "get", NULL, NULL};
static const char *const hnames[] = {"x-a", "X-A", "x-b", "X-C"};
static const char *const hvalues[] = {"", "1", "12", "a", "A", "1.*", "[0-9]+", "a|1"};
static const char *const qnames[] = {"q", "Q", "r", "a b", "a+b"};
static const char *const qvalues[] = {"", "1", "x y", "%", "1.*", "[0-9]+", "a=b", "12"};
static const char *const hosts[] = {NULL, "", "a.svc", "A.SVC", "b.svc", "B.svc", "c", "d"};
static const char *const rmethods[] = {NULL, "GET", "POST", "get", "PUT", "GET"};
static const char *const rhnames[] = {"x-a", "X-A", "x-b", "x-c", "X-C", "y"};
static const char *const rhvalues[] = {"", "1", "12", "a", "A", "123", "1a"};
static const char *const qpieces[] = {
    "q=1",   "q=%31",   "q",   "Q=x",     "r=a+b", "a+b=1", "a%20b=2", "q=%zz", "",      "a%2Bb=1",
    "r=x+y", "r=x%20y", "r=%", "q=a%3Db", "r=12",  "q=%3",  "q==1",    "r=%25", "q=a=b",
};

/* A random string over "/ab)" of 0..max bytes, in buf. */
static const char *rnd_path(char *buf, uint32_t max)
{
    static const char alpha[] = "/////aaaaaabbbbbb)";
    uint32_t n = rnd(max + 1);
    for (uint32_t i = 0; i < n; i++)
        buf[i] = alpha[rnd(sizeof(alpha) - 1)];
    buf[n] = '\0';
    return buf;
}

#define MAX_RULES 200

typedef struct {
    rmr_match_rule_t rules[MAX_RULES];
    rmr_km_t km[MAX_RULES][4];
    char paths[MAX_RULES][8];
    size_t n;
} ruleset_t;

static void rnd_rules(ruleset_t *rs)
{
    /* mostly up to 40 rules; some tiny sets, and a few large ones with long runs of rules that
     * share a host and path */
    uint32_t r = rnd(20);
    rs->n = r < 2 ? rnd(3) : r == 2 ? 100 + rnd(MAX_RULES - 99) : rnd(41);
    for (size_t i = 0; i < rs->n; i++) {
        rmr_match_rule_t *u = &rs->rules[i];
        *u = (rmr_match_rule_t){.service = PICK(services), .method = PICK(methods)};
        u->path_kind = (rmr_path_kind_t)rnd(4);
        if (u->path_kind == RMR_PATH_REGEX)
            u->path = PICK(path_regexes);
        else if (u->path_kind != RMR_PATH_ANY || rnd(2))
            u->path = rnd(10) ? rnd_path(rs->paths[i], 5) : NULL;
        u->n_headers = rnd(3) == 0 ? 1 + rnd(2) : 0;
        u->n_query = rnd(3) == 0 ? 1 + rnd(2) : 0;
        u->headers = rs->km[i];
        u->query = rs->km[i] + 2;
        for (size_t k = 0; k < 4; k++) {
            int q = k >= 2;
            rs->km[i][k] =
                (rmr_km_t){.name = q ? PICK(qnames) : PICK(hnames),
                           .kind = (rmr_km_kind_t)rnd(5),
                           .value = rnd(10) ? (q ? PICK(qvalues) : PICK(hvalues)) : NULL};
        }
    }
}

static void rnd_req(treq_t *q, char *path, char *query, size_t qcap)
{
    *q = (treq_t){.host = PICK(hosts), .method = PICK(rmethods)};
    q->path = rnd(20) ? rnd_path(path, 7) : NULL;
    q->n_hdrs = rnd(5);
    for (size_t k = 0; k < q->n_hdrs; k++)
        q->hdrs[k] = (hdr_t){PICK(rhnames), PICK(rhvalues)};
    if (rnd(4) == 0) {
        q->query = NULL;
        return;
    }
    size_t len = 0, pieces = rnd(5);
    query[0] = '\0';
    for (size_t k = 0; k < pieces; k++) {
        const char *p = PICK(qpieces);
        len += (size_t)snprintf(query + len, qcap - len, "%s%s", k ? "&" : "", p);
    }
    q->query = query;
}

/* The reference: a linear scan, written apart from the matcher. */

static struct {
    const char *re;
    regex_t c;
} re_cache[64];
static size_t re_cached;

/* Whether re matches all of s: POSIX finds the leftmost-longest match, which spans all of s
 * exactly when some match does. */
static int whole(const char *re, const char *s)
{
    re = re ? re : "";
    size_t i = 0;
    while (i < re_cached && strcmp(re_cache[i].re, re))
        i++;
    if (i == re_cached) {
        if (re_cached == 64 || regcomp(&re_cache[i].c, re, REG_EXTENDED)) {
            printf("FAIL reference regex %s\n", re);
            exit(2);
        }
        re_cache[i].re = re;
        re_cached++;
    }
    regmatch_t mt[1];
    return regexec(&re_cache[i].c, s, 1, mt, 0) == 0 && mt[0].rm_so == 0 &&
           (size_t)mt[0].rm_eo == strlen(s);
}

static int ref_hex(char c)
{
    static const char digits[] = "0123456789abcdef";
    const char *d = c ? strchr(digits, c >= 'A' && c <= 'Z' ? c + 32 : c) : NULL;
    return d ? (int)(d - digits) : -1;
}

static void ref_decode(const char *s, size_t n, char *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '+') {
            out[k++] = ' ';
        } else if (s[i] == '%' && i + 2 < n && ref_hex(s[i + 1]) >= 0 && ref_hex(s[i + 2]) >= 0) {
            out[k++] = (char)(ref_hex(s[i + 1]) * 16 + ref_hex(s[i + 2]));
            i += 2;
        } else {
            out[k++] = s[i];
        }
    }
    out[k] = '\0';
}

static int ref_value(const rmr_km_t *c, const char *v)
{
    const char *want = c->value ? c->value : "";
    switch (c->kind) {
    case RMR_KM_EXACT:
        return !strcmp(v, want);
    case RMR_KM_PREFIX:
        return !strncmp(v, want, strlen(want));
    case RMR_KM_REGEX:
        return whole(want, v);
    default:
        return 1;
    }
}

static int ref_key(const rmr_km_t *c, int query, const treq_t *q)
{
    int seen = 0, held = 0;
    if (!query) {
        for (size_t k = 0; k < q->n_hdrs; k++) {
            if (strcasecmp(q->hdrs[k].name, c->name))
                continue;
            seen = 1;
            held |= ref_value(c, q->hdrs[k].value);
        }
    } else if (q->query) {
        const char *p = q->query;
        for (;;) {
            size_t n = strcspn(p, "&");
            if (n) {
                char name[256], value[256];
                const char *eq = memchr(p, '=', n);
                size_t nl = eq ? (size_t)(eq - p) : n;
                ref_decode(p, nl, name);
                ref_decode(eq ? eq + 1 : p + n, eq ? n - nl - 1 : 0, value);
                if (!strcmp(name, c->name)) {
                    seen = 1;
                    held |= ref_value(c, value);
                }
            }
            if (!p[n])
                break;
            p += n + 1;
        }
    }
    return c->kind == RMR_KM_ABSENT ? !seen : held;
}

static int ref_find(const ruleset_t *rs, const treq_t *q)
{
    for (size_t i = 0; i < rs->n; i++) {
        const rmr_match_rule_t *u = &rs->rules[i];
        const char *path = q->path ? q->path : "";
        const char *want = u->path ? u->path : "";
        if (u->service && u->service[0] && (!q->host || strcasecmp(u->service, q->host)))
            continue;
        if (u->method && u->method[0] && (!q->method || strcmp(u->method, q->method)))
            continue;
        if (u->path_kind == RMR_PATH_EXACT && strcmp(path, want))
            continue;
        if (u->path_kind == RMR_PATH_PREFIX && strncmp(path, want, strlen(want)))
            continue;
        if (u->path_kind == RMR_PATH_REGEX && !whole(want, path))
            continue;
        int ok = 1;
        for (size_t k = 0; ok && k < u->n_headers; k++)
            ok = ref_key(&u->headers[k], 0, q);
        for (size_t k = 0; ok && k < u->n_query; k++)
            ok = ref_key(&u->query[k], 1, q);
        if (ok)
            return (int)i;
    }
    return -1;
}

static void print_case(const ruleset_t *rs, const treq_t *q, int got, int want)
{
    printf("     mismatch: got %d, want %d; request host=%s method=%s path=%s query=%s\n", got,
           want, q->host ? q->host : "(null)", q->method ? q->method : "(null)",
           q->path ? q->path : "(null)", q->query ? q->query : "(null)");
    for (size_t k = 0; k < q->n_hdrs; k++)
        printf("       header %s: %s\n", q->hdrs[k].name, q->hdrs[k].value);
    for (size_t i = 0; i < rs->n; i++) {
        const rmr_match_rule_t *u = &rs->rules[i];
        printf("       rule %zu: service=%s kind=%d path=%s method=%s", i,
               u->service ? u->service : "(null)", u->path_kind, u->path ? u->path : "(null)",
               u->method ? u->method : "(null)");
        for (size_t k = 0; k < u->n_headers + u->n_query; k++) {
            const rmr_km_t *c = k < u->n_headers ? &u->headers[k] : &u->query[k - u->n_headers];
            printf(" %s[%s %d %s]", k < u->n_headers ? "h" : "q", c->name, c->kind,
                   c->value ? c->value : "(null)");
        }
        printf("\n");
    }
}

static void test_differential(void)
{
    enum { SETS = 3000, REQS = 300 };
    static ruleset_t rs;
    long mismatches = 0, matched = 0, none = 0, total = 0;
    long by_rule[MAX_RULES] = {0};
    char path[16], query[256];
    for (int s = 0; s < SETS; s++) {
        rnd_rules(&rs);
        rmr_matcher_t *m = build(rs.rules, rs.n);
        if (!m) {
            mismatches++;
            continue;
        }
        for (int k = 0; k < REQS; k++) {
            treq_t q;
            rnd_req(&q, path, query, sizeof(query));
            int got = find(m, &q), want = ref_find(&rs, &q);
            total++;
            if (got != want && mismatches++ < 5)
                print_case(&rs, &q, got, want);
            if (want >= 0) {
                matched++;
                by_rule[want]++;
            } else {
                none++;
            }
        }
        rmr_matcher_free(m);
    }
    printf("     %ld lookups: %ld matched, %ld matched nothing\n", total, matched, none);
    CHECK_INT(mismatches, 0);
    /* the sample is varied: both outcomes are common, and late rules win too */
    CHECK(matched > total / 4);
    CHECK(none > total / 10);
    CHECK(by_rule[20] > 100);
}

/* ---- threads ---- */

#define MT_REQS 64

static rmr_matcher_t *mt_m;
static ruleset_t mt_rs;
static treq_t mt_req[MT_REQS];
static char mt_path[MT_REQS][16], mt_query[MT_REQS][256];
static int mt_want[MT_REQS];

static void *mt_worker(void *arg)
{
    long bad = 0;
    for (int i = 0; i < 20000; i++) {
        int k = (i + (int)(intptr_t)arg * 7) % MT_REQS;
        bad += find(mt_m, &mt_req[k]) != mt_want[k];
    }
    return (void *)(intptr_t)bad;
}

static void test_threads(void)
{
    do {
        rnd_rules(&mt_rs);
    } while (mt_rs.n < 30);
    mt_m = build(mt_rs.rules, mt_rs.n);
    CHECK(mt_m != NULL);
    int distinct = 0;
    for (int k = 0; k < MT_REQS; k++) {
        rnd_req(&mt_req[k], mt_path[k], mt_query[k], sizeof(mt_query[k]));
        mt_want[k] = ref_find(&mt_rs, &mt_req[k]);
        distinct += mt_want[k] >= 0;
    }
    CHECK(distinct > 0);
    pthread_t t[4];
    for (intptr_t i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, mt_worker, (void *)i);
    long bad = 0;
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(t[i], &r);
        bad += (long)(intptr_t)r;
    }
    CHECK_INT(bad, 0);
    rmr_matcher_free(mt_m);
}

int main(void)
{
    test_empty();
    test_service();
    test_path();
    test_path_bounds();
    test_method();
    test_headers();
    test_header_bounds();
    test_query();
    test_query_bounds();
    test_order();
    test_copies();
    test_errors();
    test_differential();
    test_threads();
    for (size_t i = 0; i < re_cached; i++)
        regfree(&re_cache[i].c);
    return check_summary();
}
