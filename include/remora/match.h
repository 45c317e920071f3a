/*
 * Route matching: which of the mesh config's routes (proto/remora/v1/mesh.proto, RouteMatch and
 * KeyMatch) a request takes. The first rule in config order whose conditions all hold wins, as
 * a linear scan would have it, but a lookup does not scan the rules: they are indexed by host
 * (a hash table of the lower-cased service names), then inside each host by exact path (a hash
 * table) and path prefix (a radix tree walked along the request path). Only the rules that the
 * index cannot sort out are tried one by one: those of the request's host and the host-less
 * ones that have a path regex or no path condition. A lookup thus costs about the path's length
 * plus the candidates it tries, not the number of rules; keep host-less regex rules few.
 *
 * Conditions of a rule, all of which must hold:
 * - service: the request's host (without port), compared case-insensitively (ASCII);
 * - path: none, exact, prefix, or a POSIX extended regex that must match the whole path
 *   (compiled as "^(re)$", a ')' that closes no '(' kept a literal as glibc reads it alone); the
 *   path is matched without its query string;
 * - method: exact and case-sensitive;
 * - headers: names case-insensitive; one occurrence of the header satisfying the condition is
 *   enough (ABSENT: there is none at all); values compared as the caller passes them;
 * - query parameters: names case-sensitive; the query is split on '&', each piece into name and
 *   value at its first '=' (no '=': an empty value; empty pieces are skipped), and both are
 *   compared after percent-decoding ("%XX" with two hex digits gives that byte, '+' a space;
 *   other '%' stay as they are). One parameter satisfying the condition is enough.
 * Key conditions are the KeyMatch: PRESENT (the name is there, any value), EXACT, PREFIX, REGEX
 * (whole value, POSIX extended), ABSENT (the name is not there at all).
 *
 * A regex sees at most RMR_MATCH_REGEX_MAX bytes (path, header value) or
 * RMR_MATCH_QUERY_REGEX_MAX bytes (decoded query value): a longer subject, or one holding a NUL
 * byte, does not match the regex. Exact and prefix comparisons have no such bound.
 *
 * A matcher is immutable once built: any number of threads may call rmr_matcher_find on it at
 * once. glibc's regexec serialises calls on the same compiled regex, so threads that often try
 * the same regex rule wait on each other; a matcher per worker avoids that.
 */
#ifndef REMORA_MATCH_H
#define REMORA_MATCH_H

#include <stddef.h>

/* Longest path or header value a regex condition is tried on, in bytes: a lookup copies the
 * subject into a stack buffer one byte larger to NUL-terminate it, so as not to allocate. */
#define RMR_MATCH_REGEX_MAX 8192
/* Longest query parameter value, after percent-decoding, a regex condition is tried on. */
#define RMR_MATCH_QUERY_REGEX_MAX 4096

typedef struct rmr_matcher rmr_matcher_t;

typedef enum {
    RMR_KM_PRESENT, /* the name is there; value unused */
    RMR_KM_EXACT,   /* one value equals value */
    RMR_KM_PREFIX,  /* one value starts with value */
    RMR_KM_REGEX,   /* one value matches value, a POSIX ERE, as a whole */
    RMR_KM_ABSENT,  /* the name is not there at all; value unused */
} rmr_km_kind_t;

/* A header or query parameter condition (KeyMatch). name: non-empty; a header name in any case.
 * value: NULL reads as "". */
typedef struct rmr_km {
    const char *name;
    rmr_km_kind_t kind;
    const char *value;
} rmr_km_t;

typedef enum {
    RMR_PATH_ANY,    /* no path condition; path unused */
    RMR_PATH_EXACT,  /* the path equals path */
    RMR_PATH_PREFIX, /* the path starts with path ("" or NULL: any path) */
    RMR_PATH_REGEX,  /* the path matches path, a POSIX ERE, as a whole */
} rmr_path_kind_t;

/* One route's conditions (RouteMatch). NULL strings read as "". service "": any host; method
 * "": any method. headers and query may be NULL when their count is 0. */
typedef struct rmr_match_rule {
    const char *service;
    rmr_path_kind_t path_kind;
    const char *path;
    const char *method;
    size_t n_headers;
    const rmr_km_t *headers;
    size_t n_query;
    const rmr_km_t *query;
} rmr_match_rule_t;

/* Finds the value of the i-th occurrence (from 0) of the header named lname (lower-case,
 * NUL-terminated, lname_len bytes) in the request of ctx: sets *v and *vlen and returns 0, or
 * returns -1 when there are no more than i occurrences. */
typedef int (*rmr_match_header_fn)(void *ctx, const char *lname, size_t lname_len, unsigned i,
                                   const char **v, size_t *vlen);

/* A request, as (pointer, length) slices that need no NUL. A NULL pointer needs a 0 length. */
typedef struct rmr_match_req {
    const char *host; /* Host or :authority without port; NULL or "": matches host-less rules
                         only */
    size_t host_len;
    const char *method;
    size_t method_len;
    const char *path; /* without '?' and the query */
    size_t path_len;
    const char *query; /* after the '?'; NULL: none */
    size_t query_len;
    rmr_match_header_fn header; /* NULL: the request has no headers */
    void *ctx;                  /* passed to header */
} rmr_match_req_t;

/* Builds a matcher for rules[0..n) (n may be 0: nothing matches). Copies everything it keeps:
 * the caller may free rules once it returns. Returns the matcher, owned by the caller (free it
 * with rmr_matcher_free), or NULL with a NUL-terminated message in err (errlen bytes at most;
 * err may be NULL) naming the rule by its index, as in
 * "rule 3: path regex \"/a(\": Unmatched ( or \\(", when a regex does not compile, a header or
 * query name is empty, a kind is out of range, there are more than INT_MAX - 1 rules, or memory
 * runs out ("out of memory"). Any thread. */
rmr_matcher_t *rmr_matcher_new(const rmr_match_rule_t *rules, size_t n, char *err, size_t errlen);

/* Frees the matcher; no lookup may be running on it. NULL is a no-op. */
void rmr_matcher_free(rmr_matcher_t *m);

/* The index of the first rule that r matches, or -1 when none does. Does not allocate (glibc's
 * regexec does, while it fills a regex's state cache on its first uses); uses about
 * RMR_MATCH_REGEX_MAX bytes of stack. Any thread, concurrently with other lookups. */
int rmr_matcher_find(const rmr_matcher_t *m, const rmr_match_req_t *r);

#endif
