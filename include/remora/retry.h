/*
 * The arithmetic of retries and rate limiting: which attempt outcomes a route's retry policy
 * retries, full-jitter backoff, Retry-After parsing, the retry budget of a service and the token
 * bucket of a route's rate_limit. Nothing here does I/O or reads the clock: callers pass the time
 * and the random bits, so every decision can be replayed in a test.
 *
 * The policy is plain data converted from config by the caller (this module knows no protobuf).
 * Policies and the pure functions need no locking. Budgets and buckets are shared by the workers:
 * each of their functions may be called from any thread.
 */
#ifndef REMORA_RETRY_H
#define REMORA_RETRY_H

#include <stddef.h>
#include <stdint.h>

/* Retry conditions, as bits. */
#define RMR_RETRY_CONNECT_FAILURE 0x01
#define RMR_RETRY_RESET 0x02
#define RMR_RETRY_REFUSED_STREAM 0x04
#define RMR_RETRY_GATEWAY_ERROR 0x08 /* 502, 503, 504 */
#define RMR_RETRY_5XX 0x10
#define RMR_RETRY_RETRIABLE_4XX 0x20 /* 409 */
#define RMR_RETRY_PER_TRY_TIMEOUT 0x40
#define RMR_RETRY_MAX_CODES 16

/* Whether a request with a non-idempotent method (POST, PATCH, ...) may be retried: never, only
 * when it carries an Idempotency-Key, or always. */
typedef enum { RMR_NONIDEM_NEVER = 0, RMR_NONIDEM_WITH_KEY, RMR_NONIDEM_ALWAYS } rmr_nonidem_t;

/* A route's retry policy. Plain data: copy it freely; fill it with rmr_retry_policy_defaults()
 * and then the config's values. */
typedef struct rmr_retry_policy {
    uint32_t attempts;                   /* tries in all; 1 = no retry */
    uint32_t per_try_ms;                 /* 0: only the route timeout */
    uint32_t on;                         /* RMR_RETRY_* bits */
    uint16_t codes[RMR_RETRY_MAX_CODES]; /* listed status codes */
    uint32_t n_codes;
    uint32_t base_ms, max_ms;  /* backoff; defaults 25 and 250 (max 0 means 10 x base) */
    double budget_percent;     /* default 20 */
    uint32_t budget_min_per_s; /* default 10 */
    rmr_nonidem_t non_idempotent;
} rmr_retry_policy_t;

/* Fills *p with the defaults: 1 attempt (no retry), no per-try timeout, no conditions, backoff
 * 25 ms to 250 ms, budget 20 % with 10 retries per second, non-idempotent requests never. */
void rmr_retry_policy_defaults(rmr_retry_policy_t *p);

/* Adds one `on` word ("connect-failure", "reset", "refused-stream", "gateway-error", "5xx",
 * "retriable-4xx", "per-try-timeout", or a status "100".."599"). Returns 0 (also when the word
 * was already there), or -1 with an unknown word or when RMR_RETRY_MAX_CODES codes are already
 * listed; *p is unchanged on -1. */
int rmr_retry_policy_add_on(rmr_retry_policy_t *p, const char *word);

/* What happened to an attempt. */
typedef enum {
    RMR_ATT_STATUS = 0,      /* a response head with a status arrived */
    RMR_ATT_CONNECT_FAILURE, /* no connection (refused, unreachable, connect timeout, TLS) */
    RMR_ATT_RESET,           /* the connection or stream died before a response head */
    RMR_ATT_REFUSED_STREAM,  /* HTTP/2 REFUSED_STREAM or GOAWAY above the stream: never processed */
    RMR_ATT_PER_TRY_TIMEOUT  /* per_try_ms elapsed without a response head */
} rmr_attempt_kind_t;

/* Does the policy retry this outcome (status used with RMR_ATT_STATUS)? Returns a short static
 * reason string for logs and headers ("connect-failure", "reset", "refused-stream",
 * "gateway-error", "5xx", "retriable-4xx", "per-try-timeout", or "status" for a listed code), or
 * NULL when it is not retriable. Each kind is matched only by its own bit: "5xx" does not imply
 * "reset". A status matching several conditions gives the first of gateway-error, 5xx,
 * retriable-4xx, status. Neither attempts nor the method are considered here. */
const char *rmr_retry_should(const rmr_retry_policy_t *p, rmr_attempt_kind_t k, int status);

/* Is the method idempotent per RFC 9110 (GET HEAD OPTIONS TRACE PUT DELETE)? Methods are
 * case-sensitive, so "get" is not. Returns 1 or 0. */
int rmr_method_idempotent(const char *method, size_t len);

/* Full-jitter backoff before retry number `retry` (1 for the first retry; 0 is taken as 1):
 * uniform in [0, min(max, base * 2^(retry-1))] ms, from 64 random bits r. A max_ms of 0 means
 * 10 x base_ms. */
uint32_t rmr_backoff_ms(const rmr_retry_policy_t *p, uint32_t retry, uint64_t r);

/* The longest wait rmr_retry_after_ms() returns: 24 hours. */
#define RMR_RETRY_AFTER_MAX_MS (24 * 3600 * 1000LL)

/* Retry-After field value of n bytes (no NUL needed; surrounding spaces and tabs ignored):
 * delta-seconds ("120") or an HTTP-date: IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"), the
 * obsolete RFC 850 ("Sunday, 06-Nov-94 08:49:37 GMT") and asctime ("Sun Nov  6 08:49:37 1994")
 * forms. Returns the wait in ms from now_unix (seconds since the epoch; a date in the past gives
 * 0), capped at RMR_RETRY_AFTER_MAX_MS, or -1 when malformed. */
int64_t rmr_retry_after_ms(const char *v, size_t n, int64_t now_unix);

/* Retry budget, shared by the workers of a service: retries in flight may not exceed percent of
 * active requests, except that min_per_second retries per second are always allowed on top. */
typedef struct rmr_budget rmr_budget_t;

/* A new, empty budget owned by the caller (free with rmr_budget_free), or NULL without memory. */
rmr_budget_t *rmr_budget_new(void);
/* Frees b (NULL is fine). No thread may be using it. Not for budgets from rmr_budget_get(). */
void rmr_budget_free(rmr_budget_t *b);
/* An active request (its first attempt) starts. */
void rmr_budget_request_begin(rmr_budget_t *b);
/* It ends (each begin gets one end; an unmatched end is ignored). */
void rmr_budget_request_end(rmr_budget_t *b);
/* 1 (and a retry is counted in flight) when a retry may start now, else 0 (counted as exhausted).
 * The retry may start when the retries in flight plus this one are at most percent % of the
 * active requests, or else when fewer than min_per_s retries were let through by that floor in
 * the current second of now_ms (a clock in ms shared by the callers; a time behind the current
 * second counts in the current second). Each 1 needs one rmr_budget_retry_end(). */
int rmr_budget_retry_begin(rmr_budget_t *b, double percent, uint32_t min_per_s, uint64_t now_ms);
/* A retry that rmr_budget_retry_begin() let through has ended. */
void rmr_budget_retry_end(rmr_budget_t *b);

typedef struct rmr_budget_stats {
    uint64_t active;         /* requests in flight */
    uint64_t retries_active; /* retries in flight */
    uint64_t retries_total;  /* retries let through so far */
    uint64_t exhausted;      /* retries refused so far */
} rmr_budget_stats_t;
/* A snapshot of b's counters (each read atomically, not all together). */
void rmr_budget_get_stats(rmr_budget_t *b, rmr_budget_stats_t *out);

/* Token bucket for a route's rate_limit, shared by the workers. It starts full. */
typedef struct rmr_bucket rmr_bucket_t;

/* A new full bucket refilled at rps tokens per second and holding at most burst tokens (burst 0
 * means ceil(rps), at least 1). Owned by the caller (free with rmr_bucket_free). NULL when rps is
 * not a positive finite number, or without memory. */
rmr_bucket_t *rmr_bucket_new(double rps, uint32_t burst);
/* Frees b (NULL is fine). No thread may be using it. Not for buckets from rmr_bucket_get(). */
void rmr_bucket_free(rmr_bucket_t *b);
/* Sets a new rate and burst; keeps the tokens it has, capped by the new burst. A rps that is not
 * a positive finite number is ignored (rate and burst stay as they were). */
void rmr_bucket_configure(rmr_bucket_t *b, double rps, uint32_t burst);
/* Takes one token at now_us (a clock in microseconds shared by the callers; a time behind the
 * last one seen adds nothing). Returns 1 when a token was taken; 0 when empty, with
 * *retry_after_s (if not NULL) set to the whole seconds (>= 1, at most 86400) until a token is
 * there. */
int rmr_bucket_take(rmr_bucket_t *b, uint64_t now_us, uint32_t *retry_after_s);
/* Requests refused so far. */
uint64_t rmr_bucket_limited(rmr_bucket_t *b);

/* A named registry so reloads keep state: the process-wide budget of a service and bucket of a
 * route, created on first use, owned by the registry and freed by rmr_retry_free_all() at exit.
 * Thread-safe. */

/* The budget of the named service; NULL when service is NULL or without memory. */
rmr_budget_t *rmr_budget_get(const char *service);
/* The bucket of the named route, made with rps and burst, or an existing one configured with
 * them (rmr_bucket_configure). NULL when route is NULL, when a new bucket cannot be made (bad rps,
 * no memory). */
rmr_bucket_t *rmr_bucket_get(const char *route, double rps, uint32_t burst);
/* Frees every budget and bucket of the registry. At exit, when no thread uses them any more. */
void rmr_retry_free_all(void);

#endif
