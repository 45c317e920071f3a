/*
 * The arithmetic of gray release for the router, with no I/O and no clock of its own: the
 * weighted split of a route's traffic over its subsets (smooth weighted round robin without
 * stickiness, weighted rendezvous hashing with it), subset selectors, the lane memory that maps
 * a trace to the lane its first request named, and the three header values these read
 * (traceparent, baggage, Cookie).
 *
 * Threads: rmr_swrr_t is per worker and unlocked (one thread at a time per object). The lane
 * store is shared by all workers and locks itself (one mutex, held for table work and a copy of
 * at most RMR_LANE_MAX bytes). Everything else is a pure function, callable from any thread.
 */
#ifndef REMORA_GRAY_H
#define REMORA_GRAY_H

#include <stddef.h>
#include <stdint.h>

#include "remora/config.h"

/* Most subsets one split may have: the allowed mask of rmr_swrr_pick_among is 32 bits. */
#define RMR_GRAY_SUBSETS_MAX 32

/* XXH64 of n bytes with seed (the published xxHash algorithm, so other tools can compute the
 * same values). Stable across versions, processes and machines; not keyed, so not for hash
 * tables fed with chosen keys. */
uint64_t rmr_gray_hash64(const void *p, size_t n, uint64_t seed);

/* ---- weighted split without stickiness ---- */

/* Smooth weighted round robin (nginx's): each pick adds every subset's weight to its current
 * value, takes the largest (the lowest index on ties) and subtracts the total from it. Over any
 * total consecutive picks from init each subset is picked exactly weight times, spread evenly
 * (5/1/1 gives a a b a c a a). Plain data, one per worker and split: no locking. */
typedef struct rmr_swrr {
    uint32_t n;
    uint32_t weight[RMR_GRAY_SUBSETS_MAX];
    int64_t current[RMR_GRAY_SUBSETS_MAX];
} rmr_swrr_t;

/* Sets the weights of n subsets (0 is allowed: never picked) and starts a new cycle. Returns 0,
 * or -1 when n > RMR_GRAY_SUBSETS_MAX (then every pick returns -1). Call again on reload. */
int rmr_swrr_init(rmr_swrr_t *s, const uint32_t *weights, size_t n);
/* The index of the next subset, or -1 when every weight is 0. */
int rmr_swrr_pick(rmr_swrr_t *s);
/* The same among the subsets whose bit (1u << index) is set in allowed (say, those with a
 * healthy endpoint); the others neither gain nor lose, so the allowed ones share their picks
 * exactly by weight. -1 when no allowed subset has a weight. */
int rmr_swrr_pick_among(rmr_swrr_t *s, uint32_t allowed);

/* ---- weighted split with stickiness ---- */

/* Ranks n subsets for a key (the bytes of a header or cookie value) by weighted rendezvous
 * hashing: subset i scores -ln(u_i) / weights[i], where u_i in (0, 1) comes from
 * rmr_gray_hash64(key, len, ids[i]), and the lowest score comes first. Subsets of weight 0 come
 * after all others (in the same order as if they weighed 1). Writes the n indexes (0 .. n-1) in
 * order to order_out and returns how many subsets lead with a weight above 0 (0 when all weigh
 * 0), or -1 when n > RMR_GRAY_SUBSETS_MAX (order_out untouched).
 *
 * The first subset is chosen with probability weights[i] / total over keys, and the next ones
 * are the choice among the rest in the same way, so the router takes the first subset with a
 * healthy endpoint. The same key, ids and weights always give the same order, in every process
 * and on every machine. Raising one subset's weight only moves keys onto it (and lowering one
 * only moves keys off it): a user on the canary at 5 % is still on it at 10 %.
 *
 * ids must stay the same across reloads and be the same in every sidecar: a hash of the
 * subset's name (rmr_gray_hash64(name, strlen(name), 0)) is better than its index in the
 * config, which shifts when subsets are added or reordered. Equal ids give equal scores. */
int rmr_sticky_rank(const char *key, size_t len, const uint64_t *ids, const uint32_t *weights,
                    size_t n, uint8_t *order_out);

/* ---- subset selectors ---- */

/* 1 when every key=value pair of sel is among labels (bytewise, case-sensitive), else 0. An empty
 * selector (nsel 0) matches everything, an endpoint without labels only the empty selector. */
int rmr_selector_match(const rmr_label_t *sel, size_t nsel, const rmr_label_t *labels,
                       size_t nlabels);

/* ---- lane memory ---- */

/* Longest lane name kept, in bytes. */
#define RMR_LANE_MAX 64
/* Most entries a lane store may hold. */
#define RMR_LANES_ENTRIES_MAX (1u << 30)

/* The lane of each recent trace, by trace id: the inbound side puts the lane a request named in
 * its baggage, and the outbound side finds it again for the calls the service makes within the
 * same trace when they do not carry the baggage on. */
typedef struct rmr_lanes rmr_lanes_t;

typedef struct rmr_lanes_stats {
    uint64_t entries;   /* traces held now (some may be past their ttl and not dropped yet) */
    uint64_t puts;      /* rmr_lanes_put calls that stored a lane (new or replaced) */
    uint64_t hits;      /* rmr_lanes_get calls that found one */
    uint64_t misses;    /* rmr_lanes_get calls that did not (absent, expired, or no room) */
    uint64_t evictions; /* entries dropped to make room, least recently used first */
    uint64_t expired;   /* entries dropped ttl_ms after they were last put or found */
} rmr_lanes_stats_t;

/* A store for at most max_entries traces, each forgotten ttl_ms after it was last put or found
 * (ttl 0: at once). Its memory is allocated here, about 120 bytes per entry (the pages are
 * touched as entries are first used), and never grows. Returns NULL when max_entries exceeds
 * RMR_LANES_ENTRIES_MAX or without memory. Owned by the caller, who frees it with rmr_lanes_free.
 */
rmr_lanes_t *rmr_lanes_new(size_t max_entries, uint32_t ttl_ms);
/* Frees s (NULL is fine). No thread may be using it. Not for stores from rmr_lanes_get_store. */
void rmr_lanes_free(rmr_lanes_t *s);
/* Sets new limits. A new ttl applies to the entries held. A new max_entries reallocates the
 * store, keeping the most recently used entries that fit (the others count as evictions).
 * Returns 0, or -1 when max_entries is too large or memory runs out: then only the ttl changes.
 */
int rmr_lanes_configure(rmr_lanes_t *s, size_t max_entries, uint32_t ttl_ms);
/* Remembers lane (lane_len bytes, copied) for the trace at now_ms (a monotonic clock in ms shared
 * by the callers), replacing the lane it had. When the store is full the least recently used
 * entry makes room. Returns 0, or -1 when lane_len is 0 or above RMR_LANE_MAX or the store holds
 * no entries (max_entries 0): then nothing changes. */
int rmr_lanes_put(rmr_lanes_t *s, const uint8_t trace_id[16], const char *lane, size_t lane_len,
                  uint64_t now_ms);
/* Copies the lane of the trace to out with a NUL after it and returns its length, restarting its
 * ttl; -1 when there is none, when it expired (it is then dropped), or when out has no room for
 * lane and NUL (cap RMR_LANE_MAX + 1 always suffices). out is not written on -1. */
int rmr_lanes_get(rmr_lanes_t *s, const uint8_t trace_id[16], char *out, size_t cap,
                  uint64_t now_ms);
/* Copies the counters at one instant. */
void rmr_lanes_get_stats(rmr_lanes_t *s, rmr_lanes_stats_t *out);

/* The process-wide store of that name, so lanes survive config reloads: made with max_entries
 * and ttl_ms on first use, or the existing one given them by rmr_lanes_configure (if that fails,
 * the store keeps its size). Owned by the registry and freed by rmr_lanes_free_all. NULL when
 * name is NULL, or when a new store cannot be made. Thread-safe. */
rmr_lanes_t *rmr_lanes_get_store(const char *name, size_t max_entries, uint32_t ttl_ms);
/* Frees every store of the registry. At exit, when no thread uses them any more. */
void rmr_lanes_free_all(void);

/* ---- header values ----
 * Each parser reads exactly len bytes (v needs no NUL and may contain any byte), keeps no state
 * and allocates nothing. v is the field value as the HTTP codec hands it over, with the leading
 * and trailing whitespace of the field line already removed. */

typedef struct rmr_traceparent {
    uint8_t version;
    uint8_t trace_id[16];
    uint8_t parent_id[8];
    uint8_t flags; /* bit 0: sampled */
} rmr_traceparent_t;

/* Parses a traceparent value (W3C Trace Context level 1): "vv-<32 hex trace id>-<16 hex parent
 * id>-ff", lower-case hex only. The version may not be ff; the trace and parent ids may not be
 * all zeros. Version 00 is exactly 55 bytes long; a later version at least 55, and if longer the
 * 56th byte is '-' (what follows is not read). Returns 0 with *out filled, or -1 (*out then
 * holds nothing useful). */
int rmr_traceparent_parse(const char *v, size_t len, rmr_traceparent_t *out);

/* Finds the value of the list member named key (NUL-terminated, compared bytewise) in a baggage
 * value (W3C Baggage: "k=v;prop, k2=v2", OWS around the separators, at most 180 members). The
 * whole value must follow the grammar, or nothing in it is trusted. *val points into v (its
 * percent-encoding left as it is) and *vlen gets its length. The first member with that key
 * wins. Returns 0, or -1 when there is no such member, its value is empty, or v is malformed. */
int rmr_baggage_lane(const char *v, size_t len, const char *key, const char **val, size_t *vlen);

/* Finds the cookie named name (NUL-terminated, compared bytewise) in a Cookie value
 * ("a=b; c=d"): *val points into v at its value, without the double quotes of a quoted value, and
 * *vlen gets its length. Pairs are split at ';' and trimmed of SP and HTAB; pairs that are not
 * name=value are skipped, whatever they hold. The value found must be RFC 6265 cookie-octets,
 * optionally in one pair of double quotes. The first pair with that name wins (RFC 6265 sends
 * the most specific first). Returns 0, or -1 when there is no such cookie, its value is empty or
 * it is not made of cookie-octets. HTTP/2 may split cookies over several fields: call once per
 * field, or on the fields joined with "; ". */
int rmr_cookie_get(const char *v, size_t len, const char *name, const char **val, size_t *vlen);

#endif
