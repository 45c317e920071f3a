/*
 * Unit test of proxy/stats.c: the service and endpoint registries, histogram bucket placement,
 * summing worker slots, and the Prometheus and JSON renderings (both parsed back here).
 * Prints one line per check; exits 1 when any check fails.
 */
#include <ctype.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "remora/stats.h"

#include "check.h"

#define CHECK_U64(a, b)                                                                            \
    do {                                                                                           \
        unsigned long long a_ = (a), b_ = (b);                                                     \
        checks++;                                                                                  \
        if (a_ == b_) {                                                                            \
            printf("ok   %s == %llu\n", #a, b_);                                                   \
        } else {                                                                                   \
            printf("FAIL %s:%d: %s: got %llu, want %llu\n", __FILE__, __LINE__, #a, a_, b_);       \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

/* ---- registries ---- */

static void test_registry(void)
{
    rmr_svc_stats_t *a = rmr_stats_service("svc-a");
    rmr_svc_stats_t *a2 = rmr_stats_service("svc-a");
    rmr_svc_stats_t *b = rmr_stats_service("svc-b");
    CHECK(a != NULL && b != NULL);
    CHECK(a == a2);
    CHECK(a != b);
    CHECK(a && !strcmp(a->name, "svc-a"));
    CHECK(b && !strcmp(b->name, "svc-b"));
    CHECK(((uintptr_t)a & 63) == 0); /* slots are cache-line aligned */
    CHECK(((uintptr_t)&a->w[1] & 63) == 0);
    /* A prefix or a case variant is another service. */
    rmr_svc_stats_t *p = rmr_stats_service("svc");
    rmr_svc_stats_t *u = rmr_stats_service("SVC-A");
    CHECK(p != a && p != b && u != a && u != p);
    /* Many services: the registry grows past its first capacity and keeps earlier pointers. */
    rmr_svc_stats_t *many[40];
    char name[32];
    for (int i = 0; i < 40; i++) {
        snprintf(name, sizeof(name), "bulk-%d", i);
        many[i] = rmr_stats_service(name);
    }
    int same = 1, distinct = 1;
    for (int i = 0; i < 40; i++) {
        snprintf(name, sizeof(name), "bulk-%d", i);
        if (rmr_stats_service(name) != many[i])
            same = 0;
        for (int j = 0; j < i; j++)
            if (many[j] == many[i])
                distinct = 0;
    }
    CHECK(same);
    CHECK(distinct);
    CHECK(rmr_stats_service("svc-a") == a);

    /* Endpoints. */
    rmr_ep_stats_t *e1 = rmr_stats_endpoint(a, "10.0.0.1:8080");
    rmr_ep_stats_t *e1b = rmr_stats_endpoint(a, "10.0.0.1:8080");
    rmr_ep_stats_t *e2 = rmr_stats_endpoint(a, "10.0.0.2:8080");
    rmr_ep_stats_t *eb = rmr_stats_endpoint(b, "10.0.0.1:8080");
    CHECK(e1 != NULL && e2 != NULL && eb != NULL);
    CHECK(e1 == e1b);
    CHECK(e1 != e2);
    CHECK(e1 != eb); /* the same address under another service is another entry */
    CHECK(e1 && !strcmp(e1->address, "10.0.0.1:8080"));
    int listed1 = 0, listed2 = 0, n = 0;
    for (rmr_ep_stats_t *e = a->endpoints; e; e = e->next, n++) {
        listed1 += e == e1;
        listed2 += e == e2;
    }
    CHECK(n == 2 && listed1 == 1 && listed2 == 1);

    e1->w[0].requests = 3;
    e1->w[1].requests = 4;
    e1->w[5].requests = 100;
    e1->w[0].active = 1;
    e1->w[1].active = 2;
    e1->w[0].failures = 7;
    e1->w[63].failures = 1;
    rmr_ep_counters_t sum;
    memset(&sum, 0xff, sizeof(sum));
    rmr_stats_endpoint_sum(e1, 2, &sum);
    CHECK_U64(sum.requests, 7);
    CHECK_U64(sum.active, 3);
    CHECK_U64(sum.failures, 7);
    rmr_stats_endpoint_sum(e1, 6, &sum);
    CHECK_U64(sum.requests, 107);
    rmr_stats_endpoint_sum(e1, RMR_MAX_WORKERS, &sum);
    CHECK_U64(sum.failures, 8);
    rmr_stats_endpoint_sum(e1, 0, &sum);
    CHECK_U64(sum.requests + sum.active + sum.failures, 0);
    rmr_stats_endpoint_sum(e2, RMR_MAX_WORKERS, &sum);
    CHECK_U64(sum.requests + sum.active + sum.failures, 0);
}

/* ---- histograms ---- */

static void test_hist(void)
{
    CHECK(rmr_hist_bounds_us[0] == 250);
    int ascending = 1;
    for (int i = 1; i < RMR_HIST_BUCKETS; i++)
        if (rmr_hist_bounds_us[i] <= rmr_hist_bounds_us[i - 1])
            ascending = 0;
    CHECK(ascending);

    for (int i = 0; i < RMR_HIST_BUCKETS; i++) {
        uint64_t bound = rmr_hist_bounds_us[i];
        rmr_hist_t h;
        memset(&h, 0, sizeof(h));
        rmr_hist_add(&h, bound);
        printf("     bound %llu us\n", (unsigned long long)bound);
        CHECK_U64(h.bucket[i], 1); /* exactly a bound: that bucket (le) */
        rmr_hist_add(&h, bound + 1);
        CHECK_U64(h.bucket[i + 1], 1); /* one more: the next */
        rmr_hist_add(&h, bound - 1);
        /* one less: still this bucket (bounds are far apart, so it is above the one below) */
        CHECK_U64(h.bucket[i], 2);
        CHECK_U64(h.count, 3);
        CHECK_U64(h.sum_us, 3 * bound);
        uint64_t total = 0;
        for (int k = 0; k <= RMR_HIST_BUCKETS; k++)
            total += h.bucket[k];
        CHECK_U64(total, 3);
    }
    rmr_hist_t h;
    memset(&h, 0, sizeof(h));
    rmr_hist_add(&h, 0);
    CHECK_U64(h.bucket[0], 1);
    rmr_hist_add(&h, 31000000);
    rmr_hist_add(&h, UINT64_MAX / 2);
    CHECK_U64(h.bucket[RMR_HIST_BUCKETS], 2);
    CHECK_U64(h.count, 3);
}

/* ---- Prometheus text format: a parser ---- */

typedef struct sample {
    char name[128];
    char labels[512]; /* raw label text, le="..." removed */
    char le[32];      /* "" when the sample has no le label */
    double value;
    int line;
} sample_t;

static sample_t samples[4096];
static int nsamples;
static char fam_name[64][128], fam_type[64][16];
static int nfam;

static int fam_find(const char *n)
{
    for (int i = 0; i < nfam; i++)
        if (!strcmp(fam_name[i], n))
            return i;
    return -1;
}

/* The family a sample belongs to: its name, or for a histogram its name less the suffix. */
static int sample_family(const char *name)
{
    int f = fam_find(name);
    if (f >= 0)
        return f;
    static const char *sfx[] = {"_bucket", "_sum", "_count"};
    for (int k = 0; k < 3; k++) {
        size_t nl = strlen(name), sl = strlen(sfx[k]);
        if (nl > sl && !strcmp(name + nl - sl, sfx[k])) {
            char base[128];
            snprintf(base, sizeof(base), "%.*s", (int)(nl - sl), name);
            f = fam_find(base);
            if (f >= 0 && !strcmp(fam_type[f], "histogram"))
                return f;
        }
    }
    return -1;
}

static int is_name_start(int c)
{
    return isalpha(c) || c == '_' || c == ':';
}
static int is_name_char(int c)
{
    return isalnum(c) || c == '_' || c == ':';
}

static char perr[256];

/* Parses one sample line into s. Returns 0, or -1 with perr set. */
static int parse_sample(const char *l, sample_t *s)
{
    const char *p = l;
    size_t n = 0;
    memset(s, 0, sizeof(*s));
    if (!is_name_start((unsigned char)*p)) {
        snprintf(perr, sizeof(perr), "bad metric name start");
        return -1;
    }
    while (is_name_char((unsigned char)*p) && n < sizeof(s->name) - 1)
        s->name[n++] = *p++;
    size_t ln = 0;
    if (*p == '{') {
        p++;
        int first = 1;
        while (*p != '}') {
            if (!first) {
                if (*p != ',') {
                    snprintf(perr, sizeof(perr), "expected , between labels");
                    return -1;
                }
                p++;
                if (*p == '}')
                    break; /* trailing comma */
            }
            first = 0;
            const char *lname = p;
            if (!is_name_start((unsigned char)*p) || *p == ':') {
                snprintf(perr, sizeof(perr), "bad label name");
                return -1;
            }
            while (is_name_char((unsigned char)*p) && *p != ':')
                p++;
            size_t lnl = (size_t)(p - lname);
            if (*p++ != '=' || *p++ != '"') {
                snprintf(perr, sizeof(perr), "expected =\" after label name");
                return -1;
            }
            const char *vstart = p;
            while (*p && *p != '"') {
                if (*p == '\\') {
                    if (p[1] != '\\' && p[1] != '"' && p[1] != 'n') {
                        snprintf(perr, sizeof(perr), "bad escape in label value");
                        return -1;
                    }
                    p += 2;
                } else if (*p == '\n') {
                    snprintf(perr, sizeof(perr), "raw newline in label value");
                    return -1;
                } else {
                    p++;
                }
            }
            if (*p != '"') {
                snprintf(perr, sizeof(perr), "unterminated label value");
                return -1;
            }
            size_t vl = (size_t)(p - vstart);
            p++;
            if (lnl == 2 && !strncmp(lname, "le", 2)) {
                snprintf(s->le, sizeof(s->le), "%.*s", (int)vl, vstart);
            } else {
                int w = snprintf(s->labels + ln, sizeof(s->labels) - ln, "%s%.*s=\"%.*s\"",
                                 ln ? "," : "", (int)lnl, lname, (int)vl, vstart);
                ln += (size_t)w;
            }
        }
        p++;
    }
    if (*p != ' ') {
        snprintf(perr, sizeof(perr), "expected one space before the value");
        return -1;
    }
    p++;
    char *end;
    s->value = strtod(p, &end);
    if (end == p || *end != '\0') {
        snprintf(perr, sizeof(perr), "bad value \"%s\"", p);
        return -1;
    }
    return 0;
}

/* Parses the whole exposition into samples[]; returns the number of malformed lines. */
static int parse_prometheus(char *text, int *bad_type_order)
{
    int bad = 0, line = 0;
    nsamples = 0;
    nfam = 0;
    *bad_type_order = 0;
    char *save = NULL;
    int last_fam = -1;
    char seen_samples[64] = {0};
    for (char *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        line++;
        if (l[0] == '#') {
            char fname[128], ftype[16];
            if (!strncmp(l, "# TYPE ", 7)) {
                if (sscanf(l, "# TYPE %127s %15s", fname, ftype) != 2 ||
                    (strcmp(ftype, "counter") && strcmp(ftype, "gauge") &&
                     strcmp(ftype, "histogram") && strcmp(ftype, "summary") &&
                     strcmp(ftype, "untyped"))) {
                    printf("     line %d: bad TYPE line: %s\n", line, l);
                    bad++;
                } else if (fam_find(fname) >= 0) {
                    printf("     line %d: second TYPE for %s\n", line, fname);
                    bad++;
                } else if (nfam < 64) {
                    strcpy(fam_name[nfam], fname);
                    strcpy(fam_type[nfam], ftype);
                    nfam++;
                }
            } else if (strncmp(l, "# HELP ", 7)) {
                printf("     line %d: comment neither HELP nor TYPE: %s\n", line, l);
                bad++;
            }
            continue;
        }
        if (nsamples == (int)(sizeof(samples) / sizeof(samples[0]))) {
            bad++;
            break;
        }
        sample_t *s = &samples[nsamples];
        if (parse_sample(l, s) < 0) {
            printf("     line %d: %s: %s\n", line, perr, l);
            bad++;
            continue;
        }
        s->line = line;
        nsamples++;
        int f = sample_family(s->name);
        if (f < 0) {
            printf("     line %d: sample of %s before any # TYPE of its family\n", line, s->name);
            (*bad_type_order)++;
        } else {
            /* A family's samples are contiguous. */
            if (f != last_fam && seen_samples[f]) {
                printf("     line %d: samples of %s are not contiguous\n", line, fam_name[f]);
                (*bad_type_order)++;
            }
            seen_samples[f] = 1;
            last_fam = f;
        }
    }
    return bad;
}

/* The value of the sample with this name and labels (le excluded); NAN when absent. */
static double find(const char *name, const char *labels)
{
    for (int i = 0; i < nsamples; i++)
        if (!strcmp(samples[i].name, name) && !strcmp(samples[i].labels, labels) &&
            !samples[i].le[0])
            return samples[i].value;
    return NAN;
}

/* Checks every histogram series: le ascending, cumulative, ends with +Inf == _count.
 * Returns the number of series checked; *bad counts those that fail. */
static int check_histograms(int *bad)
{
    int series = 0;
    *bad = 0;
    for (int i = 0; i < nsamples; i++) {
        sample_t *s = &samples[i];
        size_t nl = strlen(s->name);
        if (nl < 7 || strcmp(s->name + nl - 7, "_bucket"))
            continue;
        /* Start of a series: the first bucket with these labels. */
        int first = 1;
        for (int j = 0; j < i; j++)
            if (!strcmp(samples[j].name, s->name) && !strcmp(samples[j].labels, s->labels))
                first = 0;
        if (!first)
            continue;
        series++;
        double prev_le = -INFINITY, prev_v = 0, inf_v = NAN;
        int nb = 0, ok = 1;
        for (int j = i; j < nsamples; j++) {
            sample_t *b = &samples[j];
            if (strcmp(b->name, s->name) || strcmp(b->labels, s->labels))
                continue;
            nb++;
            if (!b->le[0]) {
                printf("     %s{%s}: bucket without le\n", s->name, s->labels);
                ok = 0;
                continue;
            }
            double le = !strcmp(b->le, "+Inf") ? INFINITY : strtod(b->le, NULL);
            if (!(le > prev_le)) {
                printf("     %s{%s}: le %s not ascending\n", s->name, s->labels, b->le);
                ok = 0;
            }
            if (b->value < prev_v) {
                printf("     %s{%s}: bucket le=%s %g < %g: not cumulative\n", s->name, s->labels,
                       b->le, b->value, prev_v);
                ok = 0;
            }
            prev_le = le;
            prev_v = b->value;
            if (isinf(le))
                inf_v = b->value;
        }
        char base[128], cname[140];
        snprintf(base, sizeof(base), "%.*s", (int)(nl - 7), s->name);
        snprintf(cname, sizeof(cname), "%s_count", base);
        double count = find(cname, s->labels);
        if (nb != RMR_HIST_BUCKETS + 1 || isnan(inf_v) || isnan(count) || inf_v != count ||
            !isinf(prev_le)) {
            printf("     %s{%s}: %d buckets, +Inf %g, _count %g\n", s->name, s->labels, nb, inf_v,
                   count);
            ok = 0;
        }
        snprintf(cname, sizeof(cname), "%s_sum", base);
        if (isnan(find(cname, s->labels))) {
            printf("     %s{%s}: no _sum\n", s->name, s->labels);
            ok = 0;
        }
        if (!ok)
            (*bad)++;
    }
    return series;
}

/* The le="..." bucket value of a series. */
static double bucket(const char *name, const char *labels, const char *le)
{
    for (int i = 0; i < nsamples; i++)
        if (!strcmp(samples[i].name, name) && !strcmp(samples[i].labels, labels) &&
            !strcmp(samples[i].le, le))
            return samples[i].value;
    return NAN;
}

static void test_prometheus(void)
{
    rmr_svc_stats_t *a = rmr_stats_service("svc-a");
    rmr_svc_stats_t *b = rmr_stats_service("svc-b");
    rmr_svc_stats_t *q = rmr_stats_service("we\"ird\\svc\nx");
    a->w[0].requests = 10;
    a->w[1].requests = 5;
    a->w[2].requests = 1000; /* outside nworkers = 2: not counted */
    a->w[0].responses[2] = 8;
    a->w[1].responses[2] = 4;
    a->w[1].responses[5] = 3;
    a->w[0].upstream_errors[RMR_UERR_RESET] = 2;
    a->w[1].upstream_errors[RMR_UERR_RESET] = 1;
    a->w[0].upstream_cx_total = 6;
    a->w[1].upstream_cx_active = 2;
    b->w[1].requests = 9;
    q->w[0].requests = 1;
    /* Latencies spread across slots and buckets, some exactly on a bound. */
    rmr_hist_add(&a->w[0].latency, 250);      /* le 0.00025 */
    rmr_hist_add(&a->w[0].latency, 251);      /* le 0.0005 */
    rmr_hist_add(&a->w[1].latency, 1000);     /* le 0.001 */
    rmr_hist_add(&a->w[1].latency, 40000000); /* +Inf only */
    rmr_hist_add(&a->w[1].latency, 100);      /* le 0.00025 */
    rmr_wstats[0].downstream_cx_total = 11;
    rmr_wstats[1].downstream_cx_total = 22;
    rmr_wstats[0].bad_requests = 1;
    rmr_wstats[1].local_replies[4] = 2;
    rmr_wstats[0].local_replies[4] = 3;
    rmr_hist_add(&rmr_wstats[0].latency, 500);
    rmr_hist_add(&rmr_wstats[1].latency, 30000000);
    rmr_hist_add(&rmr_wstats[1].latency, 30000001);
    rmr_config_reloads = 4;

    char *text = rmr_stats_render_prometheus(2);
    CHECK(text != NULL);
    if (!text)
        return;
    size_t tl = strlen(text);
    CHECK(tl > 0 && text[tl - 1] == '\n');
    /* The escaped label of the odd service appears verbatim. */
    CHECK(strstr(text, "remora_requests_total{service=\"we\\\"ird\\\\svc\\nx\"} 1\n") != NULL);
    int bad_order;
    char *copy = strdup(text);
    int bad = parse_prometheus(copy, &bad_order);
    free(copy);
    CHECK(bad == 0);
    CHECK(bad_order == 0);
    CHECK(nsamples > 100);
    CHECK(fam_find("remora_request_duration_seconds") >= 0 &&
          !strcmp(fam_type[fam_find("remora_request_duration_seconds")], "histogram"));
    CHECK(fam_find("remora_downstream_connections_active") >= 0 &&
          !strcmp(fam_type[fam_find("remora_downstream_connections_active")], "gauge"));
    int hbad;
    int series = check_histograms(&hbad);
    CHECK(series >= 4); /* per service (at least 3 + the bulk ones) and the downstream one */
    CHECK(hbad == 0);

    /* Values: slots 0 and 1 summed, slot 2 ignored. */
    CHECK(find("remora_requests_total", "service=\"svc-a\"") == 15);
    CHECK(find("remora_requests_total", "service=\"svc-b\"") == 9);
    CHECK(find("remora_requests_total", "service=\"we\\\"ird\\\\svc\\nx\"") == 1);
    CHECK(find("remora_responses_total", "service=\"svc-a\",code=\"2xx\"") == 12);
    CHECK(find("remora_responses_total", "service=\"svc-a\",code=\"5xx\"") == 3);
    CHECK(find("remora_responses_total", "service=\"svc-a\",code=\"4xx\"") == 0);
    CHECK(find("remora_upstream_errors_total", "service=\"svc-a\",reason=\"reset\"") == 3);
    CHECK(find("remora_upstream_errors_total", "service=\"svc-a\",reason=\"timeout\"") == 0);
    CHECK(find("remora_upstream_connections_total", "service=\"svc-a\"") == 6);
    CHECK(find("remora_upstream_connections_active", "service=\"svc-a\"") == 2);
    CHECK(find("remora_downstream_connections_total", "") == 33);
    CHECK(find("remora_bad_requests_total", "") == 1);
    CHECK(find("remora_local_replies_total", "code=\"4xx\"") == 5);
    CHECK(find("remora_config_reloads_total", "") == 4);

    const char *h = "remora_request_duration_seconds_bucket", *sa = "service=\"svc-a\"";
    CHECK(bucket(h, sa, "0.00025") == 2);
    CHECK(bucket(h, sa, "0.0005") == 3);
    CHECK(bucket(h, sa, "0.001") == 4);
    CHECK(bucket(h, sa, "30") == 4);
    CHECK(bucket(h, sa, "+Inf") == 5);
    CHECK(find("remora_request_duration_seconds_count", sa) == 5);
    CHECK(fabs(find("remora_request_duration_seconds_sum", sa) - 40.001601) < 1e-9);
    const char *dh = "remora_downstream_request_duration_seconds_bucket";
    CHECK(bucket(dh, "", "0.0005") == 1);
    CHECK(bucket(dh, "", "30") == 2);
    CHECK(bucket(dh, "", "+Inf") == 3);
    CHECK(find("remora_downstream_request_duration_seconds_count", "") == 3);
    /* An idle service has zeros throughout. */
    CHECK(bucket(h, "service=\"bulk-3\"", "+Inf") == 0);

    /* One worker: only slot 0. */
    char *one = rmr_stats_render_prometheus(1);
    CHECK(one != NULL);
    if (one) {
        int bo;
        CHECK(parse_prometheus(one, &bo) == 0 && bo == 0);
        CHECK(find("remora_requests_total", "service=\"svc-a\"") == 10);
        CHECK(find("remora_downstream_connections_total", "") == 11);
        CHECK(bucket(h, sa, "+Inf") == 2);
        free(one);
    }
    free(text);
}

/* ---- JSON: a strict validator ---- */

static const char *jp;

static void jws(void)
{
    while (*jp == ' ' || *jp == '\t' || *jp == '\n' || *jp == '\r')
        jp++;
}

static int jvalue(int depth);

static int jstring(void)
{
    if (*jp != '"')
        return -1;
    jp++;
    while (*jp != '"') {
        unsigned char c = (unsigned char)*jp;
        if (c == 0 || c < 0x20)
            return -1;
        if (c == '\\') {
            jp++;
            if (*jp == 'u') {
                for (int i = 1; i <= 4; i++)
                    if (!isxdigit((unsigned char)jp[i]))
                        return -1;
                jp += 5;
                continue;
            }
            if (!strchr("\"\\/bfnrt", *jp) || !*jp)
                return -1;
        }
        jp++;
    }
    jp++;
    return 0;
}

static int jnumber(void)
{
    const char *s = jp;
    if (*jp == '-')
        jp++;
    if (*jp == '0')
        jp++;
    else if (*jp >= '1' && *jp <= '9')
        while (isdigit((unsigned char)*jp))
            jp++;
    else
        return -1;
    if (*jp == '.') {
        jp++;
        if (!isdigit((unsigned char)*jp))
            return -1;
        while (isdigit((unsigned char)*jp))
            jp++;
    }
    if (*jp == 'e' || *jp == 'E') {
        jp++;
        if (*jp == '+' || *jp == '-')
            jp++;
        if (!isdigit((unsigned char)*jp))
            return -1;
        while (isdigit((unsigned char)*jp))
            jp++;
    }
    return jp > s ? 0 : -1;
}

static int jvalue(int depth)
{
    if (depth > 64)
        return -1;
    jws();
    if (*jp == '{') {
        jp++;
        jws();
        if (*jp == '}') {
            jp++;
            return 0;
        }
        for (;;) {
            jws();
            if (jstring() < 0)
                return -1;
            jws();
            if (*jp++ != ':')
                return -1;
            if (jvalue(depth + 1) < 0)
                return -1;
            jws();
            if (*jp == ',') {
                jp++;
                continue;
            }
            if (*jp == '}') {
                jp++;
                return 0;
            }
            return -1;
        }
    }
    if (*jp == '[') {
        jp++;
        jws();
        if (*jp == ']') {
            jp++;
            return 0;
        }
        for (;;) {
            if (jvalue(depth + 1) < 0)
                return -1;
            jws();
            if (*jp == ',') {
                jp++;
                continue;
            }
            if (*jp == ']') {
                jp++;
                return 0;
            }
            return -1;
        }
    }
    if (*jp == '"')
        return jstring();
    if (!strncmp(jp, "true", 4) || !strncmp(jp, "null", 4)) {
        jp += 4;
        return 0;
    }
    if (!strncmp(jp, "false", 5)) {
        jp += 5;
        return 0;
    }
    return jnumber();
}

static int json_valid(const char *s)
{
    jp = s;
    if (jvalue(0) < 0)
        return 0;
    jws();
    return *jp == '\0';
}

/* Runs python3's json module on text when python3 is there: 1 valid, 0 invalid, -1 no python. */
static int python_json_valid(const char *text)
{
    if (access("/usr/bin/python3", X_OK) != 0)
        return -1;
    FILE *p = popen("/usr/bin/python3 -c 'import json,sys; json.load(sys.stdin)' 2>&1", "w");
    if (!p)
        return -1;
    fputs(text, p);
    int st = pclose(p);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

static void test_json(void)
{
    /* The validator itself. */
    CHECK(json_valid("{\"a\":[1,2,{\"b\":\"x\\\"y\"}],\"c\":-0.5e3}\n"));
    CHECK(!json_valid("{\"a\":1,}"));
    CHECK(!json_valid("{\"a\":\"x\ny\"}"));
    CHECK(!json_valid("{\"a\":1}}"));

    char *j = rmr_stats_render_json(2);
    CHECK(j != NULL);
    if (!j)
        return;
    CHECK(json_valid(j));
    int py = python_json_valid(j);
    if (py < 0)
        printf("     (no /usr/bin/python3: JSON checked by the built-in validator only)\n");
    else
        CHECK(py == 1);
    CHECK(strstr(j, "\"name\":\"svc-a\",\"requests\":15,") != NULL);
    CHECK(strstr(j, "\"name\":\"we\\\"ird\\\\svc\\u000ax\"") != NULL);
    CHECK(strstr(j, "\"cx_total\":33,") != NULL);
    CHECK(strstr(j, "\"local_replies\":{\"1xx\":0,\"2xx\":0,\"3xx\":0,\"4xx\":5,\"5xx\":0}") !=
          NULL);
    CHECK(strstr(j, "\"reset\":3") != NULL);
    CHECK(strstr(j, "\"latency_us\":{\"count\":5,\"sum\":40001601}") != NULL);
    CHECK(strstr(j, "\"reloads\":4,") != NULL);
    free(j);

    char *j0 = rmr_stats_render_json(0);
    CHECK(j0 != NULL && json_valid(j0));
    CHECK(j0 && strstr(j0, "\"name\":\"svc-a\",\"requests\":0,") != NULL);
    free(j0);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    test_registry();
    test_hist();
    test_prometheus();
    test_json();
    return check_summary();
}
