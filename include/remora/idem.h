/*
 * The inbound idempotency store of draft-ietf-httpapi-idempotency-key-header: the first request
 * with a given Idempotency-Key is processed, its response kept for ttl, and repeats of the key
 * are answered from the store (or with 409 while the first is still in flight, 422 when the key
 * comes back with another request).
 *
 * One store is shared by all worker threads: every function below may be called from any thread
 * unless its comment says otherwise; the store locks itself (one mutex, held only for table
 * work, never while copying or freeing response bytes).
 *
 * Entries are keyed by the key string alone. Each request's method and target are summed up in
 * fp (rmr_hash64), its body in body_hash; the store keeps them to tell a true repeat from a
 * reuse of the key. Memory per key is bounded by the key (at most RMR_IDEM_KEY_MAX bytes when
 * it comes from rmr_idem_parse_key), RMR_IDEM_HEAD_MAX bytes of response head and
 * max_response_bytes of response body; the number of keys by max_entries.
 */
#ifndef REMORA_IDEM_H
#define REMORA_IDEM_H

#include <stddef.h>
#include <stdint.h>

typedef struct rmr_idem rmr_idem_t;
typedef struct rmr_idem_entry rmr_idem_entry_t; /* a reference-counted stored response */

/* Longest key content rmr_idem_parse_key accepts, in bytes after unescaping. */
#define RMR_IDEM_KEY_MAX 255
/* Largest response head (field lines) the store keeps: a response with a larger head is not
 * stored (as 503 would not be), so that one entry's memory stays bounded. The proxy accepts
 * heads up to 1 MiB from HTTP/2 upstreams, so nothing it passes on is refused for its head. */
#define RMR_IDEM_HEAD_MAX (1u << 20)

typedef struct rmr_idem_stats {
    uint64_t entries;    /* keys held now (in flight and done) */
    uint64_t in_flight;  /* of which in flight */
    uint64_t stored;     /* responses stored, total */
    uint64_t replays;    /* repeats answered from the store (counted by rmr_idem_begin returning
                            DONE) */
    uint64_t conflicts;  /* repeats while in flight (409) */
    uint64_t mismatches; /* same key, other request (422), counted by begin and by
                            rmr_idem_entry_matches_body returning 0 */
    uint64_t evictions;  /* done entries dropped to stay within max_entries (least recently used
                            first) */
    uint64_t expired;    /* entries dropped after ttl */
    uint64_t not_stored; /* finished with a status meaning "not processed" (502, 503, 504), or
                            aborted */
} rmr_idem_stats_t;

typedef enum {
    RMR_IDEM_NEW = 0,   /* first sight (or the previous try was not stored): an in-flight entry
                           now holds the key; the caller must call rmr_idem_finish or
                           rmr_idem_abort exactly once */
    RMR_IDEM_IN_FLIGHT, /* the same key is in flight: answer 409 */
    RMR_IDEM_DONE,      /* a stored response: *entry is a new reference */
    RMR_IDEM_MISMATCH,  /* the key was used with another method/target (fp differs): answer 422 */
    RMR_IDEM_FULL,      /* max_entries are all in flight: nothing can be evicted; answer 503 */
} rmr_idem_verdict_t;

/* Makes a store holding at most max_entries keys (0: none, every begin is FULL) for ttl_ms each,
 * keeping at most max_response_bytes of each response body. Returns NULL when out of memory.
 * The caller owns the store and frees it with rmr_idem_free. */
rmr_idem_t *rmr_idem_new(uint64_t max_entries, uint32_t ttl_ms, uint64_t max_response_bytes);
/* Frees the store and its references to stored responses; entries the caller still holds stay
 * valid until their rmr_idem_entry_unref. No other thread may be using the store. NULL is a
 * no-op. */
void rmr_idem_free(rmr_idem_t *s);
/* Changes limits on config reload; shrinking evicts LRU done entries (counted as evictions) until
 * at most max_entries keys are held, or only in-flight ones are left. A new ttl applies to the
 * entries already held; a new max_response_bytes to responses finished from now on. */
void rmr_idem_configure(rmr_idem_t *s, uint64_t max_entries, uint32_t ttl_ms,
                        uint64_t max_response_bytes);

/* 64-bit FNV-1a, chainable: start with RMR_HASH_INIT and feed the pieces in order; the result is
 * the same as one call over their concatenation. For fingerprints (fp, body_hash), not for hash
 * tables exposed to chosen keys: it has no secret seed. */
#define RMR_HASH_INIT 0xcbf29ce484222325ULL
uint64_t rmr_hash64(uint64_t h, const void *p, size_t n);

/* Parses an Idempotency-Key field value: an RFC 8941 sf-string, optional surrounding OWS, "..."
 * with printable ASCII 0x20-0x7e inside, escapes only \" and \\; content length 1..255 after
 * unescaping; nothing after the closing quote but OWS. Parameters (";a=b", ";a", "; b=?1",
 * directly after the closing quote as RFC 8941 has it) are accepted and ignored if well-formed
 * (lowercase key, value an RFC 8941 bare item: integer, decimal, string, token, byte sequence,
 * boolean), else the value is rejected.
 * Writes the unescaped content (NUL-terminated) to out (outsz >= 256) and returns its length, or
 * -1 when malformed (out then holds nothing useful). */
int rmr_idem_parse_key(const char *v, size_t n, char *out, size_t outsz);

/* Formats a new key as a field value: a quoted UUID v4 from 128 random bits (r1 the first 64, r2
 * the last; 6 of them are replaced by the version and variant),
 * "\"xxxxxxxx-xxxx-4xxx-Yxxx-xxxxxxxxxxxx\"" (Y in 8..b), lowercase hex, NUL-terminated; out has
 * >= 41 bytes; returns the length (38). */
size_t rmr_idem_format_key(char *out, uint64_t r1, uint64_t r2);

/* Looks the key (klen bytes, normally from rmr_idem_parse_key) up for a request whose method
 * and target hash to fp, at now_ms (monotonic ms). Expired entries (done or in flight, aged
 * ttl_ms or more; the age counts from the begin while in flight, from the finish once done) count
 * as absent: they are dropped (counted as expired). On NEW the caller owes one
 * rmr_idem_finish or rmr_idem_abort for the key; on DONE it owns *entry (one reference, to drop
 * with rmr_idem_entry_unref) and should check the body with rmr_idem_entry_matches_body before
 * replaying; *entry is set to NULL otherwise. A begin that finds no room (or no memory) for a new
 * key returns FULL. Each call also drops a few expired keys, oldest first. */
rmr_idem_verdict_t rmr_idem_begin(rmr_idem_t *s, const char *key, size_t klen, uint64_t fp,
                                  uint64_t now_ms, rmr_idem_entry_t **entry);

/* The NEW request's outcome. body_hash: hash of the whole request body as received
 * (RMR_HASH_INIT for none). head: the response's header field lines ("name: value\r\n" repeated)
 * to replay; body/bodylen what was captured of the response body; body_complete: 0 when the
 * response body was larger than max_response_bytes (then the body is not kept, the entry still
 * becomes DONE with status and head, and rmr_idem_entry_body_kept says 0; a bodylen above
 * max_response_bytes is treated the same). Status 502, 503 and 504, and a head longer than
 * RMR_IDEM_HEAD_MAX, are not stored: the key is freed as by rmr_idem_abort. The store copies
 * head and body; the caller keeps its buffers. The ttl of a stored response counts from now_ms.
 * A finish for a key that is not in flight (it expired meanwhile) is ignored; if the key has
 * been begun again since, the finish completes that newer entry, so ttl should exceed the
 * longest request. */
void rmr_idem_finish(rmr_idem_t *s, const char *key, size_t klen, uint64_t body_hash, int status,
                     const char *head, size_t headlen, const char *body, size_t bodylen,
                     int body_complete, uint64_t now_ms);
/* The NEW request ended with no response to keep (reset, client gone): the key is free again
 * (counted as not_stored, or as expired when the entry was older than ttl). Ignored when the key
 * is not in flight. */
void rmr_idem_abort(rmr_idem_t *s, const char *key, size_t klen);

/* The stored response's status code. */
int rmr_idem_entry_status(const rmr_idem_entry_t *e);
/* The stored response's header field lines; *len gets their length. Owned by the entry. */
const char *rmr_idem_entry_head(const rmr_idem_entry_t *e, size_t *len);
/* The stored response body (*len 0 and a non-NULL pointer when none was kept). Owned by the
 * entry. */
const char *rmr_idem_entry_body(const rmr_idem_entry_t *e, size_t *len);
/* 1 when the whole response body was kept, 0 when it was larger than max_response_bytes. */
int rmr_idem_entry_body_kept(const rmr_idem_entry_t *e);
/* 1 when the repeat's request body hash equals the original's; 0 (counted as a mismatch)
 * otherwise */
int rmr_idem_entry_matches_body(rmr_idem_t *s, const rmr_idem_entry_t *e, uint64_t body_hash);
/* Drops one reference; the last frees the response. Any thread; needs no store (the entry may
 * outlive eviction and even rmr_idem_free). NULL is a no-op. */
void rmr_idem_entry_unref(rmr_idem_entry_t *e);

/* Copies the counters at one instant. */
void rmr_idem_get_stats(rmr_idem_t *s, rmr_idem_stats_t *out);

#endif
