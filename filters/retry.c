/*
 * Retry policy arithmetic, retry budgets and token buckets (see include/remora/retry.h).
 *
 * Budgets count with atomics: request_begin/end run for every request, so they never lock. Only
 * the per-second floor of a budget and a bucket's refill (a read-modify-write of several fields)
 * take a mutex, and never while holding another lock except the registry's.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "remora/retry.h"

#define DAY_S 86400

/* ---- policy ---- */

void rmr_retry_policy_defaults(rmr_retry_policy_t *p)
{
    memset(p, 0, sizeof(*p));
    p->attempts = 1;
    p->base_ms = 25;
    p->max_ms = 250;
    p->budget_percent = 20;
    p->budget_min_per_s = 10;
    p->non_idempotent = RMR_NONIDEM_NEVER;
}

static const struct {
    const char *word;
    uint32_t bit;
} on_words[] = {
    {"connect-failure", RMR_RETRY_CONNECT_FAILURE},
    {"reset", RMR_RETRY_RESET},
    {"refused-stream", RMR_RETRY_REFUSED_STREAM},
    {"gateway-error", RMR_RETRY_GATEWAY_ERROR},
    {"5xx", RMR_RETRY_5XX},
    {"retriable-4xx", RMR_RETRY_RETRIABLE_4XX},
    {"per-try-timeout", RMR_RETRY_PER_TRY_TIMEOUT},
};

int rmr_retry_policy_add_on(rmr_retry_policy_t *p, const char *word)
{
    if (!word)
        return -1;
    for (size_t i = 0; i < sizeof(on_words) / sizeof(on_words[0]); i++)
        if (!strcmp(word, on_words[i].word)) {
            p->on |= on_words[i].bit;
            return 0;
        }
    /* Exactly three digits: "0503" or "503 " are typos, not codes. */
    if (strlen(word) != 3 || word[0] < '1' || word[0] > '5' || word[1] < '0' || word[1] > '9' ||
        word[2] < '0' || word[2] > '9')
        return -1;
    uint16_t code = (uint16_t)((word[0] - '0') * 100 + (word[1] - '0') * 10 + (word[2] - '0'));
    for (uint32_t i = 0; i < p->n_codes; i++)
        if (p->codes[i] == code)
            return 0;
    if (p->n_codes >= RMR_RETRY_MAX_CODES)
        return -1;
    p->codes[p->n_codes++] = code;
    return 0;
}

const char *rmr_retry_should(const rmr_retry_policy_t *p, rmr_attempt_kind_t k, int status)
{
    switch (k) {
    case RMR_ATT_CONNECT_FAILURE:
        return p->on & RMR_RETRY_CONNECT_FAILURE ? "connect-failure" : NULL;
    case RMR_ATT_RESET:
        return p->on & RMR_RETRY_RESET ? "reset" : NULL;
    case RMR_ATT_REFUSED_STREAM:
        return p->on & RMR_RETRY_REFUSED_STREAM ? "refused-stream" : NULL;
    case RMR_ATT_PER_TRY_TIMEOUT:
        return p->on & RMR_RETRY_PER_TRY_TIMEOUT ? "per-try-timeout" : NULL;
    case RMR_ATT_STATUS:
        break;
    default:
        return NULL;
    }
    if (status < 100 || status > 599)
        return NULL;
    if ((p->on & RMR_RETRY_GATEWAY_ERROR) && status >= 502 && status <= 504)
        return "gateway-error";
    if ((p->on & RMR_RETRY_5XX) && status >= 500)
        return "5xx";
    if ((p->on & RMR_RETRY_RETRIABLE_4XX) && status == 409)
        return "retriable-4xx";
    uint32_t n = p->n_codes < RMR_RETRY_MAX_CODES ? p->n_codes : RMR_RETRY_MAX_CODES;
    for (uint32_t i = 0; i < n; i++)
        if (p->codes[i] == status)
            return "status";
    return NULL;
}

int rmr_method_idempotent(const char *method, size_t len)
{
    static const char *const idem[] = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"};
    if (!method)
        return 0;
    for (size_t i = 0; i < sizeof(idem) / sizeof(idem[0]); i++)
        if (strlen(idem[i]) == len && !memcmp(method, idem[i], len))
            return 1;
    return 0;
}

uint32_t rmr_backoff_ms(const rmr_retry_policy_t *p, uint32_t retry, uint64_t r)
{
    uint64_t base = p->base_ms;
    uint64_t max = p->max_ms ? p->max_ms : base * 10;
    uint32_t shift = retry > 1 ? retry - 1 : 0;
    /* base < 2^32, so a shift below 32 cannot overflow 64 bits. */
    uint64_t cap = shift >= 32 ? max : base << shift;
    if (cap > max)
        cap = max;
    if (cap > UINT32_MAX - 1)
        cap = UINT32_MAX - 1;
    /* The modulo bias is below 2^-31 for caps that fit 32 bits: not worth a rejection loop. */
    return (uint32_t)(r % (cap + 1));
}

/* ---- Retry-After ---- */

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

/* The year of a day counted from 1970-01-01 (the inverse of days_from_civil, year only). */
static int64_t year_of_days(int64_t z)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    return (int64_t)yoe + era * 400 + (mp >= 10); /* Jan and Feb belong to the next year */
}

struct cur {
    const char *p, *end;
};

static bool lit(struct cur *c, const char *s)
{
    size_t n = strlen(s);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, s, n))
        return false;
    c->p += n;
    return true;
}

/* Exactly n digits. */
static bool digits(struct cur *c, int n, int *out)
{
    int v = 0;
    if (c->end - c->p < n)
        return false;
    for (int i = 0; i < n; i++) {
        if (c->p[i] < '0' || c->p[i] > '9')
            return false;
        v = v * 10 + (c->p[i] - '0');
    }
    c->p += n;
    *out = v;
    return true;
}

/* One of names (case-insensitive, as senders are not all careful); its index or -1. */
static int name(struct cur *c, const char *const *names, int n)
{
    for (int i = 0; i < n; i++) {
        size_t len = strlen(names[i]);
        if ((size_t)(c->end - c->p) >= len && !strncasecmp(c->p, names[i], len)) {
            c->p += len;
            return i;
        }
    }
    return -1;
}

static const char *const wkdays[] = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};
static const char *const wkdays_long[] = {"Monday", "Tuesday",  "Wednesday", "Thursday",
                                          "Friday", "Saturday", "Sunday"};
static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

/* "HH:MM:SS" as seconds of the day; -1 when malformed. A leap second (60) is accepted. */
static int time_of_day(struct cur *c)
{
    int h, m, s;
    if (!digits(c, 2, &h) || !lit(c, ":") || !digits(c, 2, &m) || !lit(c, ":") ||
        !digits(c, 2, &s) || h > 23 || m > 59 || s > 60)
        return -1;
    return h * 3600 + m * 60 + s;
}

/* An HTTP-date (RFC 9110 section 5.6.7) as seconds since the epoch; false when malformed. */
static bool http_date(struct cur *c, int64_t now_unix, int64_t *out)
{
    int day, mon, year, tod;
    if (name(c, wkdays_long, 7) >= 0) {
        /* RFC 850: "Sunday, 06-Nov-94 08:49:37 GMT" */
        int yy;
        if (!lit(c, ", ") || !digits(c, 2, &day) || !lit(c, "-") ||
            (mon = name(c, months, 12)) < 0 || !lit(c, "-") || !digits(c, 2, &yy) || !lit(c, " ") ||
            (tod = time_of_day(c)) < 0 || !lit(c, " GMT"))
            return false;
        /* RFC 9110: a two-digit year more than 50 years in the future is in the past century;
         * otherwise it is the nearest year with those digits ("00" seen from 1999 is 2000). */
        /* Clamped to years 1970..9999 so that no absurd clock overflows the arithmetic. */
        int64_t now = now_unix < 0 ? 0 : now_unix > 253402300799 ? 253402300799 : now_unix;
        int64_t now_year = year_of_days(now / DAY_S);
        int64_t y = now_year - (now_year % 100 + 100) % 100 + yy;
        if (y > now_year + 50)
            y -= 100;
        else if (y <= now_year - 50)
            y += 100;
        year = (int)y;
    } else if (name(c, wkdays, 7) >= 0) {
        if (lit(c, ", ")) {
            /* IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT" */
            if (!digits(c, 2, &day) || !lit(c, " ") || (mon = name(c, months, 12)) < 0 ||
                !lit(c, " ") || !digits(c, 4, &year) || !lit(c, " ") ||
                (tod = time_of_day(c)) < 0 || !lit(c, " GMT"))
                return false;
        } else {
            /* asctime: "Sun Nov  6 08:49:37 1994" */
            if (!lit(c, " ") || (mon = name(c, months, 12)) < 0 || !lit(c, " "))
                return false;
            /* the day is "06" or " 6" */
            bool one_digit = lit(c, " ");
            if (!digits(c, one_digit ? 1 : 2, &day))
                return false;
            if (!lit(c, " ") || (tod = time_of_day(c)) < 0 || !lit(c, " ") || !digits(c, 4, &year))
                return false;
        }
    } else {
        return false;
    }
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (c->p != c->end || day < 1 || day > mdays[mon] || (mon == 1 && day == 29 && !leap))
        return false;
    *out = days_from_civil(year, (unsigned)mon + 1, (unsigned)day) * DAY_S + tod;
    return true;
}

int64_t rmr_retry_after_ms(const char *v, size_t n, int64_t now_unix)
{
    if (!v)
        return -1;
    while (n && (*v == ' ' || *v == '\t')) {
        v++;
        n--;
    }
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    if (!n)
        return -1;
    if (v[0] >= '0' && v[0] <= '9') {
        uint64_t s = 0;
        for (size_t i = 0; i < n; i++) {
            if (v[i] < '0' || v[i] > '9')
                return -1;
            if (s <= DAY_S) /* saturate: any longer is capped anyway */
                s = s * 10 + (uint64_t)(v[i] - '0');
        }
        return s >= DAY_S ? RMR_RETRY_AFTER_MAX_MS : (int64_t)s * 1000;
    }
    struct cur c = {v, v + n};
    int64_t t;
    if (!http_date(&c, now_unix, &t))
        return -1;
    /* t lies within years 0..10099, so t - DAY_S cannot overflow; now_unix may be anything. */
    if (now_unix >= t)
        return 0;
    if (now_unix <= t - DAY_S)
        return RMR_RETRY_AFTER_MAX_MS;
    return (t - now_unix) * 1000;
}

/* ---- budget ---- */

struct rmr_budget {
    _Atomic uint64_t active, retries_active, retries_total, exhausted;
    pthread_mutex_t floor_lock; /* guards floor_sec and floor_used */
    uint64_t floor_sec;         /* the second of now_ms that floor_used counts */
    uint32_t floor_used;        /* retries let through by min_per_s in that second */
    /* registry links, used only by rmr_budget_get */
    char *name;
    struct rmr_budget *next;
};

rmr_budget_t *rmr_budget_new(void)
{
    rmr_budget_t *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    if (pthread_mutex_init(&b->floor_lock, NULL)) {
        free(b);
        return NULL;
    }
    return b;
}

void rmr_budget_free(rmr_budget_t *b)
{
    if (!b)
        return;
    pthread_mutex_destroy(&b->floor_lock);
    free(b->name);
    free(b);
}

/* Decrements *v unless it is 0: an unmatched end must not wrap the count to 2^64 - 1, which would
 * open the budget without limit. */
static void dec_sat(_Atomic uint64_t *v)
{
    uint64_t cur = atomic_load_explicit(v, memory_order_relaxed);
    while (cur && !atomic_compare_exchange_weak_explicit(v, &cur, cur - 1, memory_order_relaxed,
                                                         memory_order_relaxed))
        ;
}

void rmr_budget_request_begin(rmr_budget_t *b)
{
    atomic_fetch_add_explicit(&b->active, 1, memory_order_relaxed);
}

void rmr_budget_request_end(rmr_budget_t *b)
{
    dec_sat(&b->active);
}

int rmr_budget_retry_begin(rmr_budget_t *b, double percent, uint32_t min_per_s, uint64_t now_ms)
{
    /* The percent share first, without a lock: the compare-and-swap makes the check and the count
     * one step, so concurrent callers can never push the retries in flight past the share. */
    if (percent > 0) {
        double share =
            percent / 100.0 * (double)atomic_load_explicit(&b->active, memory_order_relaxed);
        uint64_t cur = atomic_load_explicit(&b->retries_active, memory_order_relaxed);
        /* The epsilon keeps 20 % of 10 at 2 when the product comes out as 1.9999999. */
        while ((double)(cur + 1) <= share + 1e-9) {
            if (atomic_compare_exchange_weak_explicit(&b->retries_active, &cur, cur + 1,
                                                      memory_order_relaxed, memory_order_relaxed)) {
                atomic_fetch_add_explicit(&b->retries_total, 1, memory_order_relaxed);
                return 1;
            }
        }
    }
    /* Then the floor, so a service with little traffic can still retry at all. */
    int ok = 0;
    if (min_per_s) {
        uint64_t sec = now_ms / 1000;
        pthread_mutex_lock(&b->floor_lock);
        if (sec > b->floor_sec) {
            b->floor_sec = sec;
            b->floor_used = 0;
        }
        if (b->floor_used < min_per_s) {
            b->floor_used++;
            ok = 1;
        }
        pthread_mutex_unlock(&b->floor_lock);
    }
    if (ok) {
        atomic_fetch_add_explicit(&b->retries_active, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&b->retries_total, 1, memory_order_relaxed);
    } else {
        atomic_fetch_add_explicit(&b->exhausted, 1, memory_order_relaxed);
    }
    return ok;
}

void rmr_budget_retry_end(rmr_budget_t *b)
{
    dec_sat(&b->retries_active);
}

void rmr_budget_get_stats(rmr_budget_t *b, rmr_budget_stats_t *out)
{
    out->active = atomic_load_explicit(&b->active, memory_order_relaxed);
    out->retries_active = atomic_load_explicit(&b->retries_active, memory_order_relaxed);
    out->retries_total = atomic_load_explicit(&b->retries_total, memory_order_relaxed);
    out->exhausted = atomic_load_explicit(&b->exhausted, memory_order_relaxed);
}

/* ---- token bucket ---- */

struct rmr_bucket {
    pthread_mutex_t lock; /* guards rps, burst, tokens, last_us, started */
    double rps, burst, tokens;
    uint64_t last_us;
    bool started; /* last_us is set by the first take: the bucket does not know the clock before */
    _Atomic uint64_t limited;
    /* registry links, used only by rmr_bucket_get */
    char *name;
    struct rmr_bucket *next;
};

static bool rps_ok(double rps)
{
    return isfinite(rps) && rps > 0;
}

static double burst_of(double rps, uint32_t burst)
{
    if (burst)
        return burst;
    double c = ceil(rps);
    return c < 1 ? 1 : c > UINT32_MAX ? UINT32_MAX : c;
}

rmr_bucket_t *rmr_bucket_new(double rps, uint32_t burst)
{
    if (!rps_ok(rps))
        return NULL;
    rmr_bucket_t *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    if (pthread_mutex_init(&b->lock, NULL)) {
        free(b);
        return NULL;
    }
    b->rps = rps;
    b->burst = burst_of(rps, burst);
    b->tokens = b->burst;
    return b;
}

void rmr_bucket_free(rmr_bucket_t *b)
{
    if (!b)
        return;
    pthread_mutex_destroy(&b->lock);
    free(b->name);
    free(b);
}

void rmr_bucket_configure(rmr_bucket_t *b, double rps, uint32_t burst)
{
    if (!rps_ok(rps))
        return;
    pthread_mutex_lock(&b->lock);
    b->rps = rps;
    b->burst = burst_of(rps, burst);
    if (b->tokens > b->burst)
        b->tokens = b->burst;
    pthread_mutex_unlock(&b->lock);
}

int rmr_bucket_take(rmr_bucket_t *b, uint64_t now_us, uint32_t *retry_after_s)
{
    int ok;
    double wait_s = 0;
    pthread_mutex_lock(&b->lock);
    if (!b->started) {
        b->started = true;
        b->last_us = now_us;
    } else if (now_us > b->last_us) {
        /* Workers read the clock before queueing on the lock, so times arrive slightly out of
         * order: an earlier one adds nothing rather than moving last_us back and counting the
         * same interval twice. */
        b->tokens += (double)(now_us - b->last_us) * b->rps / 1e6;
        if (b->tokens > b->burst)
            b->tokens = b->burst;
        b->last_us = now_us;
    }
    /* The epsilon absorbs rounding in the sum of refills: 10 steps of 0.1 make one token. */
    ok = b->tokens >= 1 - 1e-9;
    if (ok) {
        b->tokens -= 1;
        if (b->tokens < 0)
            b->tokens = 0;
    } else {
        wait_s = (1 - b->tokens) / b->rps;
    }
    pthread_mutex_unlock(&b->lock);
    if (ok)
        return 1;
    atomic_fetch_add_explicit(&b->limited, 1, memory_order_relaxed);
    if (retry_after_s) {
        double s = ceil(wait_s - 1e-9);
        *retry_after_s = s < 1 ? 1 : s > DAY_S ? DAY_S : (uint32_t)s;
    }
    return 0;
}

uint64_t rmr_bucket_limited(rmr_bucket_t *b)
{
    return atomic_load_explicit(&b->limited, memory_order_relaxed);
}

/* ---- registry ---- */

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static rmr_budget_t *reg_budgets;
static rmr_bucket_t *reg_buckets;

rmr_budget_t *rmr_budget_get(const char *service)
{
    if (!service)
        return NULL;
    pthread_mutex_lock(&reg_lock);
    rmr_budget_t *b;
    for (b = reg_budgets; b; b = b->next)
        if (!strcmp(b->name, service))
            goto out;
    b = rmr_budget_new();
    if (!b)
        goto out;
    if (!(b->name = strdup(service))) {
        rmr_budget_free(b);
        b = NULL;
        goto out;
    }
    b->next = reg_budgets;
    reg_budgets = b;
out:
    pthread_mutex_unlock(&reg_lock);
    return b;
}

rmr_bucket_t *rmr_bucket_get(const char *route, double rps, uint32_t burst)
{
    if (!route)
        return NULL;
    pthread_mutex_lock(&reg_lock);
    rmr_bucket_t *b;
    for (b = reg_buckets; b; b = b->next)
        if (!strcmp(b->name, route)) {
            rmr_bucket_configure(b, rps, burst);
            goto out;
        }
    b = rmr_bucket_new(rps, burst);
    if (!b)
        goto out;
    if (!(b->name = strdup(route))) {
        rmr_bucket_free(b);
        b = NULL;
        goto out;
    }
    b->next = reg_buckets;
    reg_buckets = b;
out:
    pthread_mutex_unlock(&reg_lock);
    return b;
}

void rmr_retry_free_all(void)
{
    pthread_mutex_lock(&reg_lock);
    while (reg_budgets) {
        rmr_budget_t *b = reg_budgets;
        reg_budgets = b->next;
        rmr_budget_free(b);
    }
    while (reg_buckets) {
        rmr_bucket_t *b = reg_buckets;
        reg_buckets = b->next;
        rmr_bucket_free(b);
    }
    pthread_mutex_unlock(&reg_lock);
}
