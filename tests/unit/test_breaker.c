/*
 * Unit test of filters/breaker.c: limits (also from 4 threads at once), ejection after
 * consecutive failures, doubling ejection times, half-open probes, the ejection percentage,
 * latency outliers, stats, the JSON view and the logger. Time is passed explicitly; nothing
 * sleeps. Prints one line per check; exits 1 when any check fails.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "remora/breaker.h"

#include "check.h"

/* A configuration with small numbers that the tests can count to. */
static rmr_breaker_conf_t conf(void)
{
    rmr_breaker_conf_t c;
    rmr_breaker_conf_defaults(&c);
    c.consecutive_failures = 3;
    c.base_ejection_ms = 1000;
    c.max_ejection_ms = 5000;
    c.max_ejection_percent = 100;
    c.half_open_probes = 1;
    return c;
}

static void fail_n(rmr_breaker_t *b, int i, int n, uint64_t now)
{
    for (int k = 0; k < n; k++)
        rmr_breaker_report(b, i, RMR_OUT_5XX, 1000, 0, now);
}

/* Lets the ejection of i end and passes one probe of it; returns whether it was let through. */
static int probe_ok(rmr_breaker_t *b, int i, uint64_t now)
{
    int probe = 0, ok = rmr_breaker_allow(b, i, now, &probe);
    if (ok && probe)
        rmr_breaker_report(b, i, RMR_OUT_SUCCESS, 1000, 1, now);
    return ok && probe;
}

/* ---- logger ---- */

static char last_log[256];
static int logs;

static void logger(const char *svc, const char *addr, const char *event, const char *reason)
{
    snprintf(last_log, sizeof(last_log), "%s %s %s %s", svc, addr, event, reason);
    logs++;
}

/* ---- limits ---- */

static void test_limits(void)
{
    rmr_breaker_t *b = rmr_breaker_get("limits");
    CHECK(b != NULL);
    rmr_breaker_conf_t c = conf();
    c.max[RMR_LIM_REQUESTS] = 3;
    c.max[RMR_LIM_RETRIES] = 0;
    rmr_breaker_configure(b, &c);

    CHECK_INT(rmr_breaker_acquire(b, RMR_LIM_REQUESTS), 1);
    CHECK_INT(rmr_breaker_acquire(b, RMR_LIM_REQUESTS), 1);
    CHECK_INT(rmr_breaker_acquire(b, RMR_LIM_REQUESTS), 1);
    CHECK_INT(rmr_breaker_count(b, RMR_LIM_REQUESTS), 3);
    CHECK_INT(rmr_breaker_acquire(b, RMR_LIM_REQUESTS), 0);
    CHECK_INT(rmr_breaker_acquire(b, RMR_LIM_REQUESTS), 0);
    CHECK_INT(rmr_breaker_overflows(b, RMR_LIM_REQUESTS), 2);
    CHECK_INT(rmr_breaker_count(b, RMR_LIM_REQUESTS), 3);
    /* The other limits are separate. */
    CHECK_INT(rmr_breaker_overflows(b, RMR_LIM_PENDING), 0);
    CHECK_INT(rmr_breaker_count(b, RMR_LIM_PENDING), 0);

    rmr_breaker_release(b, RMR_LIM_REQUESTS);
    CHECK_INT(rmr_breaker_count(b, RMR_LIM_REQUESTS), 2);
    CHECK_INT(rmr_breaker_acquire(b, RMR_LIM_REQUESTS), 1);
    CHECK_INT(rmr_breaker_acquire(b, RMR_LIM_REQUESTS), 0);
    CHECK_INT(rmr_breaker_overflows(b, RMR_LIM_REQUESTS), 3);

    /* A lowered max takes effect at once: nothing more until the count is below it. */
    c.max[RMR_LIM_REQUESTS] = 2;
    rmr_breaker_configure(b, &c);
    CHECK_INT(rmr_breaker_acquire(b, RMR_LIM_REQUESTS), 0);
    rmr_breaker_release(b, RMR_LIM_REQUESTS);
    CHECK_INT(rmr_breaker_acquire(b, RMR_LIM_REQUESTS), 0);
    rmr_breaker_release(b, RMR_LIM_REQUESTS);
    CHECK_INT(rmr_breaker_acquire(b, RMR_LIM_REQUESTS), 1);
    for (int k = 0; k < 2; k++)
        rmr_breaker_release(b, RMR_LIM_REQUESTS);
    CHECK_INT(rmr_breaker_count(b, RMR_LIM_REQUESTS), 0);
    /* An unmatched release does not wrap the count. */
    rmr_breaker_release(b, RMR_LIM_REQUESTS);
    CHECK_INT(rmr_breaker_count(b, RMR_LIM_REQUESTS), 0);

    /* 0 is unlimited, and still counted. */
    int all = 1;
    for (int k = 0; k < 10000; k++)
        all &= rmr_breaker_acquire(b, RMR_LIM_RETRIES);
    CHECK(all);
    CHECK_INT(rmr_breaker_count(b, RMR_LIM_RETRIES), 10000);
    CHECK_INT(rmr_breaker_overflows(b, RMR_LIM_RETRIES), 0);
    for (int k = 0; k < 10000; k++)
        rmr_breaker_release(b, RMR_LIM_RETRIES);
    CHECK_INT(rmr_breaker_count(b, RMR_LIM_RETRIES), 0);
}

#define THREADS 4
#define ROUNDS 50000
#define CONC_MAX 2

struct worker {
    rmr_breaker_t *b;
    atomic_int *held;    /* units held by all workers, counted by the workers themselves */
    atomic_int *highest; /* the most ever held at once */
    long granted, refused, above_max;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    for (int k = 0; k < ROUNDS; k++) {
        if (!rmr_breaker_acquire(w->b, RMR_LIM_CONNECTIONS)) {
            w->refused++;
            continue;
        }
        w->granted++;
        int now = atomic_fetch_add(w->held, 1) + 1;
        if (now > CONC_MAX || rmr_breaker_count(w->b, RMR_LIM_CONNECTIONS) > CONC_MAX)
            w->above_max++;
        int hi = atomic_load(w->highest);
        while (now > hi && !atomic_compare_exchange_weak(w->highest, &hi, now))
            ;
        if (k % 4 == 0)
            sched_yield(); /* hold it a while, so that the others run into the limit */
        atomic_fetch_sub(w->held, 1);
        rmr_breaker_release(w->b, RMR_LIM_CONNECTIONS);
    }
    return NULL;
}

static void test_limits_threads(void)
{
    rmr_breaker_t *b = rmr_breaker_get("threads");
    rmr_breaker_conf_t c = conf();
    c.max[RMR_LIM_CONNECTIONS] = CONC_MAX;
    rmr_breaker_configure(b, &c);
    atomic_int held = 0, highest = 0;
    struct worker w[THREADS];
    pthread_t t[THREADS];
    for (int k = 0; k < THREADS; k++) {
        w[k] = (struct worker){b, &held, &highest, 0, 0, 0};
        pthread_create(&t[k], NULL, worker_main, &w[k]);
    }
    long granted = 0, refused = 0, above = 0;
    for (int k = 0; k < THREADS; k++) {
        pthread_join(t[k], NULL);
        granted += w[k].granted;
        refused += w[k].refused;
        above += w[k].above_max;
    }
    printf("     %ld granted, %ld refused, at most %d held\n", granted, refused,
           atomic_load(&highest));
    CHECK_INT(above, 0);
    CHECK(atomic_load(&highest) <= CONC_MAX);
    CHECK(atomic_load(&highest) >= 1);
    CHECK_INT(granted + refused, (long)THREADS * ROUNDS);
    CHECK_INT(rmr_breaker_overflows(b, RMR_LIM_CONNECTIONS), refused);
    CHECK_INT(rmr_breaker_count(b, RMR_LIM_CONNECTIONS), 0);
}

/* ---- registry and endpoints ---- */

static void test_registry(void)
{
    rmr_breaker_t *a = rmr_breaker_get("reg-a"), *b = rmr_breaker_get("reg-b");
    CHECK(a != NULL && b != NULL);
    CHECK(a != b);
    CHECK(rmr_breaker_get("reg-a") == a);
    /* A reload keeps what is in flight. */
    CHECK_INT(rmr_breaker_acquire(a, RMR_LIM_PENDING), 1);
    rmr_breaker_conf_t c = conf();
    rmr_breaker_configure(rmr_breaker_get("reg-a"), &c);
    CHECK_INT(rmr_breaker_count(rmr_breaker_get("reg-a"), RMR_LIM_PENDING), 1);
    rmr_breaker_release(a, RMR_LIM_PENDING);

    int i0 = rmr_breaker_endpoint(a, "10.0.0.1:80");
    int i1 = rmr_breaker_endpoint(a, "10.0.0.2:80");
    CHECK_INT(i0, 0);
    CHECK_INT(i1, 1);
    CHECK_INT(rmr_breaker_endpoint(a, "10.0.0.1:80"), i0);
    CHECK_INT(rmr_breaker_endpoint(b, "10.0.0.2:80"), 0); /* per service */
    /* Many endpoints: several blocks and hash growth; indexes stay put. */
    char addr[32];
    int stable = 1;
    for (int k = 0; k < 1000; k++) {
        snprintf(addr, sizeof(addr), "10.1.%d.%d:8080", k / 256, k % 256);
        stable &= rmr_breaker_endpoint(a, addr) == k + 2;
    }
    CHECK(stable);
    for (int k = 999; k >= 0; k--) {
        snprintf(addr, sizeof(addr), "10.1.%d.%d:8080", k / 256, k % 256);
        stable &= rmr_breaker_endpoint(a, addr) == k + 2;
    }
    CHECK(stable);
    /* A reload that drops and re-adds an address keeps its index and its state. */
    rmr_breaker_configure(a, &c);
    fail_n(a, 700, 3, 100);
    CHECK_INT(rmr_breaker_state(a, 700, 100), RMR_EP_EJECTED);
    const char *set1[] = {"10.0.0.2:80", "10.9.9.9:1"};
    rmr_breaker_set_endpoints(a, set1, 2);
    CHECK_INT(rmr_breaker_endpoint(a, "10.9.9.9:1"), 1002);
    const char *set2[] = {"10.1.2.186:8080", "10.0.0.1:80"}; /* k = 698: index 700 */
    rmr_breaker_set_endpoints(a, set2, 2);
    CHECK_INT(rmr_breaker_endpoint(a, "10.1.2.186:8080"), 700);
    CHECK_INT(rmr_breaker_state(a, 700, 200), RMR_EP_EJECTED);
    CHECK_INT(rmr_breaker_endpoint(a, "10.0.0.1:80"), i0);
    /* Indexes that are not endpoints are let through and ignored. */
    int probe = 7;
    CHECK_INT(rmr_breaker_allow(a, -1, 0, &probe), 1);
    CHECK_INT(probe, 0);
    CHECK_INT(rmr_breaker_allow(a, 5000, 0, &probe), 1);
    rmr_breaker_report(a, -1, RMR_OUT_RESET, 0, 0, 0);
    CHECK_INT(rmr_breaker_state(a, 5000, 0), RMR_EP_HEALTHY);
}

/* ---- consecutive failures ---- */

static void test_consecutive(void)
{
    rmr_breaker_t *b = rmr_breaker_get("consec");
    rmr_breaker_conf_t c = conf();
    rmr_breaker_configure(b, &c);
    int e = rmr_breaker_endpoint(b, "a:1");
    rmr_breaker_endpoint(b, "b:1");
    int probe = 0;

    /* A success in between resets the run. */
    fail_n(b, e, 2, 10);
    rmr_breaker_report(b, e, RMR_OUT_SUCCESS, 1000, 0, 10);
    fail_n(b, e, 2, 10);
    CHECK_INT(rmr_breaker_state(b, e, 10), RMR_EP_HEALTHY);
    CHECK_INT(rmr_breaker_allow(b, e, 10, &probe), 1);

    /* Every kind of failure counts. */
    rmr_breaker_report(b, e, RMR_OUT_SUCCESS, 1000, 0, 10);
    rmr_breaker_report(b, e, RMR_OUT_RESET, 0, 0, 10);
    rmr_breaker_report(b, e, RMR_OUT_CONNECT_FAILURE, 0, 0, 10);
    CHECK_INT(rmr_breaker_state(b, e, 10), RMR_EP_HEALTHY);
    rmr_breaker_report(b, e, RMR_OUT_TIMEOUT, 5000000, 0, 10);
    CHECK_INT(rmr_breaker_state(b, e, 10), RMR_EP_EJECTED);
    CHECK_INT(rmr_breaker_allow(b, e, 10, &probe), 0);
    CHECK_INT(probe, 0);
    CHECK_INT(rmr_breaker_allow(b, e, 1009, &probe), 0);
    /* Reports of requests that were in flight change nothing. */
    fail_n(b, e, 10, 500);
    CHECK_INT(rmr_breaker_state(b, e, 1009), RMR_EP_EJECTED);
    /* base_ejection after the first ejection. */
    CHECK_INT(rmr_breaker_state(b, e, 1010), RMR_EP_HALF_OPEN);

    rmr_breaker_stats_t st;
    rmr_breaker_get_stats(b, &st);
    CHECK_INT(st.ejections_failures, 1);
    CHECK_INT(st.ejected_now, 1);

    /* Detection off: nothing is ejected, and what was is re-admitted. */
    c.consecutive_failures = 0;
    rmr_breaker_configure(b, &c);
    CHECK_INT(rmr_breaker_state(b, e, 1010), RMR_EP_HEALTHY);
    fail_n(b, e, 50, 1020);
    CHECK_INT(rmr_breaker_state(b, e, 1020), RMR_EP_HEALTHY);
    CHECK_INT(rmr_breaker_allow(b, e, 1020, &probe), 1);
    CHECK_INT(probe, 0);
}

/* ---- ejection times and probes ---- */

/* Ejects e (healthy) by failures at now; returns the ejection time, in steps of 250 ms. */
static uint64_t ejection_length(rmr_breaker_t *b, int e, uint64_t now)
{
    fail_n(b, e, 3, now);
    uint64_t t = now;
    while (t < now + 1000000 && rmr_breaker_state(b, e, t) == RMR_EP_EJECTED)
        t += 250;
    return t - now;
}

static void test_doubling(void)
{
    rmr_breaker_t *b = rmr_breaker_get("doubling");
    rmr_breaker_conf_t c = conf(); /* base 1000, max 5000 */
    rmr_breaker_configure(b, &c);
    int e = rmr_breaker_endpoint(b, "a:1");
    rmr_breaker_endpoint(b, "b:1");
    int probe = 0;
    uint64_t now = 0;

    /* Consecutive-failure ejections between re-admissions: 1000, 2000, 4000, then the cap. */
    static const uint64_t want[] = {1000, 2000, 4000, 5000, 5000};
    for (int k = 0; k < 5; k++) {
        uint64_t len = ejection_length(b, e, now);
        CHECK_INT(len, want[k]);
        now += len;
        CHECK_INT(rmr_breaker_state(b, e, now), RMR_EP_HALF_OPEN);
        CHECK(probe_ok(b, e, now));
        CHECK_INT(rmr_breaker_state(b, e, now), RMR_EP_HEALTHY);
        now += 10;
    }
    rmr_breaker_stats_t st;
    rmr_breaker_get_stats(b, &st);
    CHECK_INT(st.ejections_failures, 5);
    CHECK_INT(st.readmissions, 5);
    CHECK_INT(st.probes, 5);

    /* Healthy for max_ejection_ms: the count resets, and the next ejection is base again. */
    now += 5000;
    CHECK_INT(ejection_length(b, e, now), 1000);
    now += 1000;
    CHECK(probe_ok(b, e, now));

    /* Probe failures re-eject at once with doubled time, capped by max. */
    c.max_ejection_ms = 100000;
    rmr_breaker_configure(b, &c);
    now += 200000; /* the count resets */
    fail_n(b, e, 3, now);
    now += 1000;
    static const uint64_t re[] = {2000, 4000, 8000, 16000};
    for (int k = 0; k < 4; k++) {
        CHECK_INT(rmr_breaker_allow(b, e, now, &probe), 1);
        CHECK_INT(probe, 1);
        rmr_breaker_report(b, e, RMR_OUT_CONNECT_FAILURE, 0, 1, now);
        CHECK_INT(rmr_breaker_state(b, e, now), RMR_EP_EJECTED);
        CHECK_INT(rmr_breaker_allow(b, e, now + re[k] - 1, &probe), 0);
        now += re[k];
    }
    CHECK_INT(rmr_breaker_state(b, e, now), RMR_EP_HALF_OPEN);
}

static void test_half_open(void)
{
    rmr_breaker_t *b = rmr_breaker_get("half-open");
    rmr_breaker_conf_t c = conf();
    c.half_open_probes = 2;
    rmr_breaker_configure(b, &c);
    int e = rmr_breaker_endpoint(b, "a:1");
    rmr_breaker_endpoint(b, "b:1");
    int p1 = 0, p2 = 0, p3 = 0;

    fail_n(b, e, 3, 0);
    /* The tick turns ended ejections half-open. */
    rmr_breaker_tick(b, 999);
    CHECK_INT(rmr_breaker_state(b, e, 999), RMR_EP_EJECTED);
    rmr_breaker_tick(b, 1000);
    rmr_breaker_stats_t st;
    rmr_breaker_get_stats(b, &st);
    CHECK_INT(st.ejected_now, 1); /* half-open still counts */
    CHECK_INT(rmr_breaker_state(b, e, 0), RMR_EP_HALF_OPEN);

    /* Only two probe slots. */
    CHECK_INT(rmr_breaker_allow(b, e, 1000, &p1), 1);
    CHECK_INT(p1, 1);
    CHECK_INT(rmr_breaker_allow(b, e, 1000, &p2), 1);
    CHECK_INT(p2, 1);
    CHECK_INT(rmr_breaker_allow(b, e, 1000, &p3), 0);
    CHECK_INT(p3, 0);
    /* Requests that were in flight before the ejection decide nothing. */
    rmr_breaker_report(b, e, RMR_OUT_SUCCESS, 100, 0, 1001);
    rmr_breaker_report(b, e, RMR_OUT_RESET, 100, 0, 1001);
    CHECK_INT(rmr_breaker_state(b, e, 1001), RMR_EP_HALF_OPEN);
    /* One success is not enough, and a decided probe keeps its slot. */
    rmr_breaker_report(b, e, RMR_OUT_SUCCESS, 100, p1, 1001);
    CHECK_INT(rmr_breaker_state(b, e, 1001), RMR_EP_HALF_OPEN);
    CHECK_INT(rmr_breaker_allow(b, e, 1001, &p3), 0);
    rmr_breaker_report(b, e, RMR_OUT_SUCCESS, 100, p2, 1002);
    CHECK_INT(rmr_breaker_state(b, e, 1002), RMR_EP_HEALTHY);
    CHECK_INT(rmr_breaker_allow(b, e, 1002, &p3), 1);
    CHECK_INT(p3, 0);
    rmr_breaker_get_stats(b, &st);
    CHECK_INT(st.readmissions, 1);
    CHECK_INT(st.probes, 2);
    CHECK_INT(st.ejected_now, 0);
    /* Re-admission resets the run of failures. */
    fail_n(b, e, 2, 1003);
    CHECK_INT(rmr_breaker_state(b, e, 1003), RMR_EP_HEALTHY);

    /* Second ejection (2000 ms); one failed probe of two re-ejects (4000 ms), and the other
     * probe's late success decides nothing. */
    fail_n(b, e, 1, 1003);
    CHECK_INT(rmr_breaker_state(b, e, 1003), RMR_EP_EJECTED);
    CHECK_INT(rmr_breaker_allow(b, e, 3002, &p1), 0);
    CHECK_INT(rmr_breaker_allow(b, e, 3003, &p1), 1);
    CHECK_INT(rmr_breaker_allow(b, e, 3003, &p2), 1);
    rmr_breaker_report(b, e, RMR_OUT_5XX, 100, p1, 3010);
    CHECK_INT(rmr_breaker_state(b, e, 3010), RMR_EP_EJECTED);
    rmr_breaker_report(b, e, RMR_OUT_SUCCESS, 100, p2, 3011);
    CHECK_INT(rmr_breaker_state(b, e, 3011), RMR_EP_EJECTED);
    CHECK_INT(rmr_breaker_allow(b, e, 7009, &p1), 0);
    CHECK_INT(rmr_breaker_allow(b, e, 7010, &p1), 1);
    CHECK_INT(p1, 1);
    CHECK_INT(rmr_breaker_allow(b, e, 7010, &p2), 1);
    CHECK_INT(p2, 1);
    rmr_breaker_get_stats(b, &st);
    CHECK_INT(st.ejections_failures, 3);

    /* Probes never reported give their slots back after max(base_ejection, interval). */
    CHECK_INT(rmr_breaker_allow(b, e, 8009, &p3), 0);
    CHECK_INT(rmr_breaker_allow(b, e, 8010, &p1), 1);
    CHECK_INT(p1, 1);
    rmr_breaker_report(b, e, RMR_OUT_SUCCESS, 100, p1, 8020);
    CHECK_INT(rmr_breaker_state(b, e, 8020), RMR_EP_HALF_OPEN);
    CHECK_INT(rmr_breaker_allow(b, e, 8020, &p2), 1); /* both lost slots came back */
    CHECK_INT(p2, 1);
    CHECK_INT(rmr_breaker_allow(b, e, 8020, &p3), 0);
    rmr_breaker_report(b, e, RMR_OUT_SUCCESS, 100, p2, 8030);
    CHECK_INT(rmr_breaker_state(b, e, 8030), RMR_EP_HEALTHY);
}

/* ---- ejection percentage ---- */

static void test_percent(void)
{
    rmr_breaker_t *b = rmr_breaker_get("percent");
    rmr_breaker_conf_t c = conf();
    c.max_ejection_percent = 50;
    rmr_breaker_configure(b, &c);
    const char *four[] = {"a:1", "b:1", "c:1", "d:1"};
    rmr_breaker_set_endpoints(b, four, 4);
    int e[4];
    for (int k = 0; k < 4; k++)
        e[k] = rmr_breaker_endpoint(b, four[k]);

    fail_n(b, e[0], 3, 0);
    fail_n(b, e[1], 3, 0);
    fail_n(b, e[2], 3, 0);
    CHECK_INT(rmr_breaker_state(b, e[0], 0), RMR_EP_EJECTED);
    CHECK_INT(rmr_breaker_state(b, e[1], 0), RMR_EP_EJECTED);
    CHECK_INT(rmr_breaker_state(b, e[2], 0), RMR_EP_HEALTHY);
    rmr_breaker_stats_t st;
    rmr_breaker_get_stats(b, &st);
    CHECK_INT(st.ejections_refused, 1);
    CHECK_INT(st.ejections_failures, 2);
    CHECK_INT(st.ejected_now, 2);
    /* The refused run starts over: one more failure is not a second refusal. */
    fail_n(b, e[2], 1, 0);
    rmr_breaker_get_stats(b, &st);
    CHECK_INT(st.ejections_refused, 1);

    /* Dropping an ejected endpoint from the set makes room. */
    const char *three[] = {"b:1", "c:1", "d:1"};
    rmr_breaker_set_endpoints(b, three, 3);
    rmr_breaker_get_stats(b, &st);
    CHECK_INT(st.ejected_now, 1);
    fail_n(b, e[2], 2, 0);
    CHECK_INT(rmr_breaker_state(b, e[2], 0), RMR_EP_HEALTHY); /* 2 of 3 > 50% */
    rmr_breaker_get_stats(b, &st);
    CHECK_INT(st.ejections_refused, 2);
    const char *five[] = {"b:1", "c:1", "d:1", "e:1"};
    rmr_breaker_set_endpoints(b, five, 4);
    fail_n(b, e[2], 3, 0);
    CHECK_INT(rmr_breaker_state(b, e[2], 0), RMR_EP_EJECTED); /* 2 of 4 */

    /* Two endpoints at 10%: one may still be ejected, not both. */
    rmr_breaker_t *t = rmr_breaker_get("percent-two");
    c.max_ejection_percent = 10;
    rmr_breaker_configure(t, &c);
    int x = rmr_breaker_endpoint(t, "x:1"), y = rmr_breaker_endpoint(t, "y:1");
    fail_n(t, x, 3, 0);
    fail_n(t, y, 3, 0);
    CHECK_INT(rmr_breaker_state(t, x, 0), RMR_EP_EJECTED);
    CHECK_INT(rmr_breaker_state(t, y, 0), RMR_EP_HEALTHY);
    rmr_breaker_get_stats(t, &st);
    CHECK_INT(st.ejections_refused, 1);

    /* A lone endpoint at 10% is never ejected; at 0% nothing is. */
    rmr_breaker_t *one = rmr_breaker_get("percent-one");
    rmr_breaker_configure(one, &c);
    int z = rmr_breaker_endpoint(one, "z:1");
    fail_n(one, z, 3, 0);
    CHECK_INT(rmr_breaker_state(one, z, 0), RMR_EP_HEALTHY);
    c.max_ejection_percent = 0;
    rmr_breaker_t *zero = rmr_breaker_get("percent-zero");
    rmr_breaker_configure(zero, &c);
    int z0 = rmr_breaker_endpoint(zero, "z:1");
    rmr_breaker_endpoint(zero, "z:2");
    fail_n(zero, z0, 3, 0);
    CHECK_INT(rmr_breaker_state(zero, z0, 0), RMR_EP_HEALTHY);
}

/* ---- latency outliers ---- */

static void samples(rmr_breaker_t *b, int i, int n, uint64_t us, uint64_t now)
{
    for (int k = 0; k < n; k++)
        rmr_breaker_report(b, i, RMR_OUT_SUCCESS, us, 0, now);
}

static void test_latency(void)
{
    rmr_breaker_t *b = rmr_breaker_get("latency");
    rmr_breaker_conf_t c = conf();
    c.max_ejection_percent = 50;
    rmr_breaker_configure(b, &c);
    int e[4];
    const char *names[] = {"l0:1", "l1:1", "l2:1", "l3:1"};
    for (int k = 0; k < 4; k++)
        e[k] = rmr_breaker_endpoint(b, names[k]);

    /* The first tick ends the first interval. Few samples of the slow one: nothing happens. */
    samples(b, e[0], 20, 10000, 0);
    samples(b, e[1], 20, 12000, 0);
    samples(b, e[2], 20, 11000, 0);
    samples(b, e[3], 9, 900000, 0);
    rmr_breaker_tick(b, 100);
    for (int k = 0; k < 4; k++)
        CHECK_INT(rmr_breaker_state(b, e[k], 100), RMR_EP_HEALTHY);

    /* Samples reset with the interval, and the next check is due an interval later. */
    samples(b, e[3], 1, 900000, 200);
    rmr_breaker_tick(b, 1099);
    CHECK_INT(rmr_breaker_state(b, e[3], 1099), RMR_EP_HEALTHY);
    samples(b, e[0], 20, 10000, 1100);
    samples(b, e[1], 20, 12000, 1100);
    samples(b, e[2], 20, 11000, 1100);
    rmr_breaker_tick(b, 1100); /* the 9 of the first interval are gone: e[3] has 1 */
    CHECK_INT(rmr_breaker_state(b, e[3], 1100), RMR_EP_HEALTHY);

    /* Slow by a factor but not by latency_min_us: not an outlier. */
    samples(b, e[0], 20, 1000, 1200);
    samples(b, e[1], 20, 1200, 1200);
    samples(b, e[2], 20, 1100, 1200);
    samples(b, e[3], 20, 9000, 1200);
    rmr_breaker_tick(b, 2100);
    CHECK_INT(rmr_breaker_state(b, e[3], 2100), RMR_EP_HEALTHY);

    /* Only two endpoints with enough samples: no peers to compare with. */
    samples(b, e[0], 20, 10000, 2200);
    samples(b, e[3], 20, 900000, 2200);
    rmr_breaker_tick(b, 3100);
    CHECK_INT(rmr_breaker_state(b, e[3], 3100), RMR_EP_HEALTHY);

    /* One slow endpoint among four. The median is of the others, so the fast ones are not
     * compared with a median that the slow one pulls up. */
    samples(b, e[0], 20, 10000, 3200);
    samples(b, e[1], 20, 12000, 3200);
    samples(b, e[2], 20, 11000, 3200);
    samples(b, e[3], 10, 900000, 3200);
    rmr_breaker_tick(b, 4100);
    CHECK_INT(rmr_breaker_state(b, e[3], 4100), RMR_EP_EJECTED);
    for (int k = 0; k < 3; k++)
        CHECK_INT(rmr_breaker_state(b, e[k], 4100), RMR_EP_HEALTHY);
    rmr_breaker_stats_t st;
    rmr_breaker_get_stats(b, &st);
    CHECK_INT(st.ejections_latency, 1);
    CHECK_INT(st.ejections_failures, 0);

    /* The ejection ends at the tick due for it. */
    rmr_breaker_tick(b, 5099);
    CHECK_INT(rmr_breaker_state(b, e[3], 5099), RMR_EP_EJECTED);
    rmr_breaker_tick(b, 5100);
    rmr_breaker_get_stats(b, &st);
    CHECK_INT(st.ejected_now, 1);
    int probe = 0;
    CHECK_INT(rmr_breaker_allow(b, e[3], 5100, &probe), 1);
    CHECK_INT(probe, 1);
}

/* ---- stats, JSON, logger ---- */

static void test_json(void)
{
    rmr_breaker_set_logger(logger);
    rmr_breaker_t *b = rmr_breaker_get("json");
    rmr_breaker_conf_t c = conf();
    rmr_breaker_configure(b, &c);
    const char *set[] = {"10.0.0.1:80", "10.0.0.2:80", "we\"ird"};
    rmr_breaker_set_endpoints(b, set, 3);
    int a = rmr_breaker_endpoint(b, set[0]), d = rmr_breaker_endpoint(b, set[1]);

    logs = 0;
    fail_n(b, a, 3, 1000);
    CHECK_INT(logs, 1);
    CHECK_STR(last_log, "json 10.0.0.1:80 ejected consecutive-failures");
    rmr_breaker_tick(b, 2000);
    CHECK_INT(logs, 2);
    CHECK_STR(last_log, "json 10.0.0.1:80 half-open ejection-over");
    int probe = 0;
    CHECK_INT(rmr_breaker_allow(b, a, 2100, &probe), 1);
    rmr_breaker_report(b, a, RMR_OUT_TIMEOUT, 0, probe, 2100);
    CHECK_INT(logs, 3);
    CHECK_STR(last_log, "json 10.0.0.1:80 re-ejected probe-failed");
    rmr_breaker_report(b, d, RMR_OUT_SUCCESS, 3000, 0, 2100);
    rmr_breaker_report(b, d, RMR_OUT_5XX, 5000, 0, 2100);
    rmr_breaker_report(b, d, RMR_OUT_RESET, 900000, 0, 2100); /* not a latency sample */
    rmr_breaker_report(b, d, RMR_OUT_SUCCESS, 4000, 0, 2100);
    rmr_breaker_tick(b, 3100);

    char buf[4096];
    size_t n = rmr_breaker_render_json(b, buf, sizeof(buf), 3500);
    printf("     %s\n", buf);
    CHECK_INT(n, strlen(buf));
    CHECK(buf[0] == '[' && buf[n - 1] == ']');
    CHECK(strstr(buf,
                 "{\"address\":\"10.0.0.1:80\",\"state\":\"ejected\","
                 "\"consecutive_failures\":3,\"ejections\":2,\"ejected_until_ms\":600,") != NULL);
    CHECK(strstr(buf, "\"history\":[{\"at_ms_ago\":2500,\"event\":\"ejected\",\"reason\":"
                      "\"consecutive-failures\"},{\"at_ms_ago\":1500,\"event\":\"half-open\","
                      "\"reason\":\"ejection-over\"},{\"at_ms_ago\":1400,\"event\":\"re-ejected\","
                      "\"reason\":\"probe-failed\"}]}") != NULL);
    CHECK(strstr(buf, "{\"address\":\"10.0.0.2:80\",\"state\":\"healthy\","
                      "\"consecutive_failures\":0,\"ejections\":0,\"ejected_until_ms\":0,"
                      "\"mean_latency_us\":4000,\"history\":[]}") != NULL);
    CHECK(strstr(buf, "\"address\":\"we\\\"ird\"") != NULL);

    /* Truncation: snprintf's contract. */
    char small[16];
    memset(small, 'x', sizeof(small));
    CHECK_INT(rmr_breaker_render_json(b, small, sizeof(small), 3500), n);
    CHECK_INT(strlen(small), sizeof(small) - 1);
    CHECK(!memcmp(small, buf, sizeof(small) - 1));
    CHECK_INT(rmr_breaker_render_json(b, NULL, 0, 3500), n);

    /* Only the last 8 events, and endpoints outside the set are not shown. */
    uint64_t now = 4100;
    for (int k = 0; k < 6; k++) {
        rmr_breaker_allow(b, a, now, &probe);
        rmr_breaker_report(b, a, RMR_OUT_RESET, 0, probe, now);
        now += 10000;
    }
    rmr_breaker_render_json(b, buf, sizeof(buf), now);
    const char *p = strstr(buf, "\"history\":[");
    int events = 0;
    for (const char *q = p; q && (q = strstr(q + 1, "at_ms_ago")) && q < strstr(p, "]");)
        events++;
    CHECK_INT(events, 8);
    const char *only[] = {"10.0.0.2:80"};
    rmr_breaker_set_endpoints(b, only, 1);
    n = rmr_breaker_render_json(b, buf, sizeof(buf), now);
    CHECK(strstr(buf, "10.0.0.1:80") == NULL);
    CHECK(strstr(buf, "\"address\":\"10.0.0.2:80\"") != NULL);

    rmr_breaker_stats_t st;
    rmr_breaker_get_stats(b, &st);
    CHECK_INT(st.ejections_failures, 8);
    CHECK_INT(st.probes, 7);
    CHECK_INT(st.readmissions, 0);
    CHECK_INT(st.ejected_now, 0); /* a: not in the set any more */

    /* Detection off re-admits, and says so. */
    rmr_breaker_set_endpoints(b, set, 3);
    c.consecutive_failures = 0;
    rmr_breaker_configure(b, &c);
    CHECK_STR(last_log, "json 10.0.0.1:80 readmitted detection-off");
    rmr_breaker_set_logger(NULL);
    c.consecutive_failures = 3;
    rmr_breaker_configure(b, &c);
    int before = logs;
    fail_n(b, d, 3, now);
    CHECK_INT(rmr_breaker_state(b, d, now), RMR_EP_EJECTED);
    CHECK_INT(logs, before);
}

/* ---- all of it from 4 threads ---- */

static atomic_int ev_eject, ev_readmit, ev_half_open;

static void count_logger(const char *svc, const char *addr, const char *event, const char *reason)
{
    if (!strcmp(event, "ejected") || !strcmp(event, "re-ejected"))
        atomic_fetch_add(&ev_eject, 1);
    else if (!strcmp(event, "readmitted"))
        atomic_fetch_add(&ev_readmit, 1);
    else if (!strcmp(event, "half-open"))
        atomic_fetch_add(&ev_half_open, 1);
}

static _Atomic uint64_t clock_ms;
static atomic_int over_cap;

static void *stress_main(void *arg)
{
    rmr_breaker_t *b = arg;
    unsigned seed = (unsigned)(uintptr_t)&seed;
    for (int k = 0; k < 20000; k++) {
        uint64_t now = atomic_fetch_add(&clock_ms, 1) / 4;
        int i = rand_r(&seed) % 4, probe = 0;
        if (!rmr_breaker_allow(b, i, now, &probe))
            continue;
        /* Endpoint 0 always fails, 1 half of the time, 2 and 3 never. */
        int fail = i == 0 || (i == 1 && rand_r(&seed) % 2);
        rmr_breaker_report(b, i, fail ? RMR_OUT_5XX : RMR_OUT_SUCCESS, 1000 + (uint64_t)i, probe,
                           now);
        if (k % 64 == 0) {
            rmr_breaker_tick(b, now);
            rmr_breaker_stats_t st;
            rmr_breaker_get_stats(b, &st);
            if (st.ejected_now > 2)
                atomic_fetch_add(&over_cap, 1);
        }
        if (k % 1000 == 0) {
            char buf[2048];
            rmr_breaker_render_json(b, buf, sizeof(buf), now);
        }
    }
    return NULL;
}

static void test_stress(void)
{
    rmr_breaker_set_logger(count_logger);
    rmr_breaker_t *b = rmr_breaker_get("stress");
    rmr_breaker_conf_t c = conf();
    c.base_ejection_ms = 50;
    c.max_ejection_ms = 400;
    c.max_ejection_percent = 50;
    c.half_open_probes = 2;
    rmr_breaker_configure(b, &c);
    const char *set[] = {"s0:1", "s1:1", "s2:1", "s3:1"};
    rmr_breaker_set_endpoints(b, set, 4);
    pthread_t t[THREADS];
    for (int k = 0; k < THREADS; k++)
        pthread_create(&t[k], NULL, stress_main, b);
    for (int k = 0; k < THREADS; k++)
        pthread_join(t[k], NULL);
    rmr_breaker_set_logger(NULL);
    rmr_breaker_stats_t st;
    rmr_breaker_get_stats(b, &st);
    printf("     %llu ejections, %llu readmissions, %llu refused, %llu probes\n",
           (unsigned long long)st.ejections_failures, (unsigned long long)st.readmissions,
           (unsigned long long)st.ejections_refused, (unsigned long long)st.probes);
    CHECK_INT(atomic_load(&over_cap), 0);
    CHECK(st.ejections_failures > 0);
    CHECK_INT(atomic_load(&ev_eject), st.ejections_failures + st.ejections_latency);
    CHECK_INT(atomic_load(&ev_readmit), st.readmissions);
    CHECK(st.readmissions <= st.probes);
    CHECK(atomic_load(&ev_half_open) >= (int)st.readmissions);
    CHECK_INT(rmr_breaker_state(b, 2, 0), RMR_EP_HEALTHY);
}

int main(void)
{
    test_limits();
    test_limits_threads();
    test_registry();
    test_consecutive();
    test_doubling();
    test_half_open();
    test_percent();
    test_latency();
    test_json();
    test_stress();
    rmr_breaker_free_all();
    return check_summary();
}
