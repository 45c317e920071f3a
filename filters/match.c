/*
 * Route matching, indexed so that a lookup's cost does not grow with the number of rules.
 *
 * The rules are sorted by (host, path kind, path, index) once; every index structure then
 * refers to a run of that order, and a run lists rule indexes in ascending (config) order:
 * - one hash table holds the hosts (each names its bucket; bucket 0 is the host-less rules)
 *   and, per bucket, the exact paths (each names the run of rules with that path);
 * - per bucket, a radix tree of the prefixes; a node names the run of rules whose prefix ends
 *   there, so walking the tree along the request path meets every prefix rule that applies;
 * - per bucket, the rest: rules with a path regex or no path condition.
 * A lookup visits the runs of the request host's bucket and of bucket 0. In each run it tries
 * the rules in order until one holds or the index reaches the best found so far, so the result
 * is the smallest index that holds: the first match in config order. The index settles host
 * and exact or prefix path; trying a rule checks the rest.
 */
#include <limits.h>
#include <regex.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "remora/match.h"

#define NONE UINT32_MAX
/* The table namespace of host keys; exact paths live in the namespace of their bucket. */
#define HOST_NS UINT32_MAX

struct cond {
    const char *name; /* lower-case for a header */
    size_t name_len;
    rmr_km_kind_t kind;
    const char *value;
    size_t value_len;
    int compiled; /* re holds a regex to free */
    regex_t re;
};

struct rule {
    const char *service; /* lower-case; NULL: any host */
    size_t service_len;
    rmr_path_kind_t path_kind; /* an empty prefix is made ANY */
    const char *path;
    size_t path_len;
    const char *method; /* NULL: any */
    size_t method_len;
    struct cond *headers, *query;
    size_t n_headers, n_query;
    int compiled;
    regex_t re;
};

/* A run of the sorted order: ids[off .. off + n). */
struct run {
    uint32_t off, n;
};

struct slot {
    const char *key; /* NULL: free */
    size_t klen;
    uint64_t h;
    uint32_t ns;
    struct run run; /* for a host, run.off is its bucket */
};

struct kid {
    unsigned char c; /* the first byte of the kid's label */
    uint32_t node;
};

struct node {
    const char *label; /* the bytes between the parent and this node */
    size_t label_len;
    uint32_t kids, n_kids; /* kid[kids .. kids + n_kids), sorted by c */
    struct run run;        /* rules whose prefix ends here */
};

struct bucket {
    struct run rest;
    uint32_t root; /* NONE: no prefix rules */
    int has_exact; /* some rules have an exact path */
};

struct rmr_matcher {
    size_t n;
    struct rule *rules;
    struct cond *conds;
    size_t n_conds;
    char *pool; /* every string the rules keep */
    uint32_t *ids;
    struct slot *slots;
    size_t mask;
    struct bucket *buckets;
    size_t n_buckets;
    struct node *nodes;
    size_t n_nodes;
    struct kid *kid;
    size_t n_kid;
};

static unsigned char lc(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + ('a' - 'A')) : c;
}

/* FNV-1a, optionally over lower-cased bytes. The keys come from the config, so a client can
 * only choose what to look up, not what collides. */
static uint64_t key_hash(const char *s, size_t n, int fold)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= fold ? lc((unsigned char)s[i]) : (unsigned char)s[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* The slot hash of a key in namespace ns: a lookup hashes the path once for two buckets. */
static uint64_t ns_hash(uint64_t kh, uint32_t ns)
{
    uint64_t h = kh ^ (ns * 0x9e3779b97f4a7c15ULL);
    h ^= h >> 31;
    h *= 0xbf58476d1ce4e5b9ULL;
    return h ^ (h >> 29);
}

static int eq_fold(const char *lower, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)lower[i] != lc((unsigned char)s[i]))
            return 0;
    return 1;
}

/* The slot of key k in namespace ns (kh: key_hash of k), or NULL. */
static const struct slot *slot_find(const rmr_matcher_t *m, uint32_t ns, uint64_t kh, const char *k,
                                    size_t n, int fold)
{
    uint64_t h = ns_hash(kh, ns);
    /* The table is never more than half full, so the probe ends on a free slot. */
    for (size_t i = h & m->mask;; i = (i + 1) & m->mask) {
        const struct slot *s = &m->slots[i];
        if (!s->key)
            return NULL;
        if (s->h == h && s->ns == ns && s->klen == n &&
            (fold ? eq_fold(s->key, k, n) : !n || !memcmp(s->key, k, n)))
            return s;
    }
}

static void slot_add(rmr_matcher_t *m, uint32_t ns, const char *k, size_t n, struct run run)
{
    uint64_t h = ns_hash(key_hash(k, n, 0), ns); /* host keys are lower-case already */
    size_t i = h & m->mask;
    while (m->slots[i].key)
        i = (i + 1) & m->mask;
    m->slots[i] = (struct slot){.key = k, .klen = n, .h = h, .ns = ns, .run = run};
}

/* ---- lookup ---- */

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = lc(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* The next byte of a percent-decoded query piece, or -1 at its end. */
static int dec_next(const char **p, const char *end)
{
    if (*p == end)
        return -1;
    unsigned char c = (unsigned char)*(*p)++;
    if (c == '+')
        return ' ';
    if (c == '%' && end - *p >= 2) {
        int hi = hexval((unsigned char)(*p)[0]), lo = hexval((unsigned char)(*p)[1]);
        if (hi >= 0 && lo >= 0) {
            *p += 2;
            return hi << 4 | lo;
        }
    }
    return c;
}

/* Whether raw[0..n), decoded, equals want (whole: 1) or starts with it (whole: 0). */
static int dec_eq(const char *raw, size_t n, const char *want, size_t wlen, int whole)
{
    const char *p = raw, *end = raw + n;
    for (size_t i = 0; i < wlen; i++)
        if (dec_next(&p, end) != (unsigned char)want[i])
            return 0;
    return !whole || p == end;
}

/* Matches the n bytes in buf, which has room for one more, against a compiled regex. */
static int regex_buf(const regex_t *re, char *buf, size_t n)
{
    if (memchr(buf, '\0', n))
        return 0;
    buf[n] = '\0';
    return regexec(re, buf, 0, NULL, 0) == 0;
}

/* Matches s[0..n) against a compiled regex through buf (RMR_MATCH_REGEX_MAX + 1 bytes). */
static int regex_holds(const regex_t *re, const char *s, size_t n, char *buf)
{
    if (n > RMR_MATCH_REGEX_MAX)
        return 0;
    if (n)
        memcpy(buf, s, n);
    return regex_buf(re, buf, n);
}

static int value_holds(const struct cond *c, const char *v, size_t n, char *buf)
{
    switch (c->kind) {
    case RMR_KM_EXACT:
        return n == c->value_len && !memcmp(v, c->value, n);
    case RMR_KM_PREFIX:
        return n >= c->value_len && !memcmp(v, c->value, c->value_len);
    case RMR_KM_REGEX:
        return regex_holds(&c->re, v, n, buf);
    default:
        return 1;
    }
}

static int header_holds(const struct cond *c, const rmr_match_req_t *r, char *buf)
{
    const char *v;
    size_t n;
    if (!r->header)
        return c->kind == RMR_KM_ABSENT;
    for (unsigned i = 0; r->header(r->ctx, c->name, c->name_len, i, &v, &n) == 0; i++) {
        if (c->kind == RMR_KM_ABSENT)
            return 0;
        if (value_holds(c, v, n, buf))
            return 1;
    }
    return c->kind == RMR_KM_ABSENT;
}

static int query_value_holds(const struct cond *c, const char *v, size_t n, char *buf)
{
    switch (c->kind) {
    case RMR_KM_EXACT:
        return dec_eq(v, n, c->value, c->value_len, 1);
    case RMR_KM_PREFIX:
        return dec_eq(v, n, c->value, c->value_len, 0);
    case RMR_KM_REGEX: {
        const char *p = v, *end = v + n;
        size_t k = 0;
        int b;
        while ((b = dec_next(&p, end)) >= 0) {
            if (k == RMR_MATCH_QUERY_REGEX_MAX)
                return 0;
            buf[k++] = (char)b;
        }
        return regex_buf(&c->re, buf, k);
    }
    default:
        return 1;
    }
}

static int query_holds(const struct cond *c, const rmr_match_req_t *r, char *buf)
{
    if (!r->query)
        return c->kind == RMR_KM_ABSENT;
    const char *p = r->query, *end = r->query + r->query_len;
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        if (stop > p) {
            const char *eq = memchr(p, '=', (size_t)(stop - p));
            const char *v = eq ? eq + 1 : stop;
            if (dec_eq(p, (size_t)((eq ? eq : stop) - p), c->name, c->name_len, 1)) {
                if (c->kind == RMR_KM_ABSENT)
                    return 0;
                if (query_value_holds(c, v, (size_t)(stop - v), buf))
                    return 1;
            }
        }
        p = stop + 1;
    }
    return c->kind == RMR_KM_ABSENT;
}

struct look {
    const rmr_matcher_t *m;
    const rmr_match_req_t *r;
    uint64_t path_hash; /* key_hash of the path, once a bucket has needed it */
    int hashed;
    uint32_t best; /* the smallest index found to hold so far; m->n: none */
    char *buf;     /* RMR_MATCH_REGEX_MAX + 1 bytes for regex subjects */
};

/* The conditions the index leaves to check: method, headers, query, the path regex (dearest). */
static int rest_holds(const struct look *l, const struct rule *u)
{
    const rmr_match_req_t *r = l->r;
    if (u->method &&
        (u->method_len != r->method_len || memcmp(u->method, r->method, r->method_len)))
        return 0;
    for (size_t i = 0; i < u->n_headers; i++)
        if (!header_holds(&u->headers[i], r, l->buf))
            return 0;
    for (size_t i = 0; i < u->n_query; i++)
        if (!query_holds(&u->query[i], r, l->buf))
            return 0;
    if (u->path_kind == RMR_PATH_REGEX)
        return regex_holds(&u->re, r->path, r->path_len, l->buf);
    return 1;
}

static void try_run(struct look *l, struct run run)
{
    const uint32_t *ids = l->m->ids + run.off;
    for (uint32_t k = 0; k < run.n && ids[k] < l->best; k++) {
        if (rest_holds(l, &l->m->rules[ids[k]])) {
            l->best = ids[k];
            return;
        }
    }
}

static void try_bucket(struct look *l, uint32_t b)
{
    const rmr_matcher_t *m = l->m;
    const struct bucket *bk = &m->buckets[b];
    const char *path = l->r->path;
    size_t plen = l->r->path_len;
    try_run(l, bk->rest);
    if (bk->has_exact) {
        if (!l->hashed) {
            l->path_hash = key_hash(path, plen, 0);
            l->hashed = 1;
        }
        const struct slot *s = slot_find(m, b, l->path_hash, path, plen, 0);
        if (s)
            try_run(l, s->run);
    }
    size_t pos = 0;
    for (uint32_t ni = bk->root; ni != NONE;) {
        const struct node *nd = &m->nodes[ni];
        if (nd->run.n)
            try_run(l, nd->run);
        if (pos == plen || !nd->n_kids)
            break;
        const struct kid *k = m->kid + nd->kids;
        size_t lo = 0, hi = nd->n_kids;
        unsigned char c = (unsigned char)path[pos];
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (k[mid].c < c)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo == nd->n_kids || k[lo].c != c)
            break;
        const struct node *next = &m->nodes[k[lo].node];
        if (plen - pos < next->label_len || memcmp(path + pos, next->label, next->label_len))
            break;
        pos += next->label_len;
        ni = k[lo].node;
    }
}

int rmr_matcher_find(const rmr_matcher_t *m, const rmr_match_req_t *r)
{
    char buf[RMR_MATCH_REGEX_MAX + 1];
    struct look l = {.m = m, .r = r, .best = (uint32_t)m->n, .buf = buf};
    if (!m->n)
        return -1;
    if (r->host_len) {
        uint64_t kh = key_hash(r->host, r->host_len, 1);
        const struct slot *s = slot_find(m, HOST_NS, kh, r->host, r->host_len, 1);
        if (s)
            try_bucket(&l, s->run.off);
    }
    try_bucket(&l, 0);
    return l.best < m->n ? (int)l.best : -1;
}

/* ---- building ---- */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Copies s (NULL: "") into the pool at *p, lower-cased when fold; sets *len. */
static const char *pool_dup(char **p, const char *s, size_t *len, int fold)
{
    char *d = *p;
    size_t n = s ? strlen(s) : 0;
    for (size_t i = 0; i < n; i++)
        d[i] = fold ? (char)lc((unsigned char)s[i]) : s[i];
    d[n] = '\0';
    *p += n + 1;
    *len = n;
    return d;
}

/* "^(re)$" for re. glibc reads a ')' that closes no '(' as a literal, but inside our group it
 * would close the group instead and change the meaning ("a)b" would match "ab)"), so such a ')'
 * is escaped. re has compiled on its own already, so its brackets are well-formed. */
static char *anchored(const char *re, size_t n)
{
    char *out = malloc(2 * n + 5), *o = out;
    size_t depth = 0;
    if (!out)
        return NULL;
    *o++ = '^';
    *o++ = '(';
    for (size_t i = 0; i < n; i++) {
        char c = re[i];
        if (c == '\\' && i + 1 < n) {
            *o++ = c;
            *o++ = re[++i];
            continue;
        }
        if (c == '[') {
            /* A bracket expression: ']' first (after an optional '^') is a member, and
             * "[:class:]", "[.coll.]", "[=equiv=]" may hold ']' and ')'. */
            size_t j = i + 1;
            if (j < n && re[j] == '^')
                j++;
            if (j < n && re[j] == ']')
                j++;
            while (j < n && re[j] != ']') {
                if (re[j] == '[' && j + 1 < n && strchr(":.=", re[j + 1])) {
                    char d = re[j + 1];
                    for (j += 2; j + 1 < n && !(re[j] == d && re[j + 1] == ']'); j++)
                        ;
                    j += 2;
                } else {
                    j++;
                }
            }
            if (j >= n)
                j = n - 1;
            memcpy(o, re + i, j - i + 1);
            o += j - i + 1;
            i = j;
            continue;
        }
        if (c == '(') {
            depth++;
        } else if (c == ')') {
            if (depth)
                depth--;
            else
                *o++ = '\\';
        }
        *o++ = c;
    }
    *o++ = ')';
    *o++ = '$';
    *o = '\0';
    return out;
}

/* Compiles re (n bytes) whole into *out; 0, or -1 with the message in err. */
static int compile(regex_t *out, const char *re, size_t n, const char *what, size_t rule, char *err,
                   size_t errlen)
{
    char msg[128];
    int rc = regcomp(out, re, REG_EXTENDED | REG_NOSUB);
    if (rc == 0) {
        regfree(out);
        char *a = anchored(re, n);
        if (!a) {
            set_err(err, errlen, "out of memory");
            return -1;
        }
        rc = regcomp(out, a, REG_EXTENDED | REG_NOSUB);
        free(a);
        if (rc == 0)
            return 0;
    }
    regerror(rc, out, msg, sizeof(msg));
    if (rc == REG_ESPACE)
        set_err(err, errlen, "out of memory");
    else
        set_err(err, errlen, "rule %zu: %s \"%s\": %s", rule, what, re, msg);
    return -1;
}

static int copy_conds(struct cond *c, const rmr_km_t *km, size_t n, int header, char **pool,
                      size_t rule, char *err, size_t errlen)
{
    const char *what = header ? "header" : "query parameter";
    for (size_t i = 0; i < n; i++) {
        c[i].name = pool_dup(pool, km[i].name, &c[i].name_len, header);
        c[i].kind = km[i].kind;
        c[i].value = pool_dup(pool, km[i].value, &c[i].value_len, 0);
        if (c[i].kind == RMR_KM_REGEX) {
            char label[96];
            snprintf(label, sizeof(label), "%s \"%.40s\" regex", what, c[i].name);
            if (compile(&c[i].re, c[i].value, c[i].value_len, label, rule, err, errlen))
                return -1;
            c[i].compiled = 1;
        }
    }
    return 0;
}

/* Checks what the copy relies on and adds up the pool bytes and conditions. */
static int measure(const rmr_match_rule_t *rules, size_t n, size_t *bytes, size_t *n_conds,
                   char *err, size_t errlen)
{
    *bytes = *n_conds = 0;
    for (size_t i = 0; i < n; i++) {
        const rmr_match_rule_t *u = &rules[i];
        if ((unsigned)u->path_kind > RMR_PATH_REGEX) {
            set_err(err, errlen, "rule %zu: unknown path kind %d", i, (int)u->path_kind);
            return -1;
        }
        *bytes += (u->service ? strlen(u->service) : 0) + (u->path ? strlen(u->path) : 0) +
                  (u->method ? strlen(u->method) : 0) + 3;
        for (int q = 0; q < 2; q++) {
            const rmr_km_t *km = q ? u->query : u->headers;
            size_t nk = q ? u->n_query : u->n_headers;
            for (size_t k = 0; k < nk; k++) {
                const char *what = q ? "query parameter" : "header";
                if (!km[k].name || !km[k].name[0]) {
                    set_err(err, errlen, "rule %zu: %s %zu: empty name", i, what, k);
                    return -1;
                }
                if ((unsigned)km[k].kind > RMR_KM_ABSENT) {
                    set_err(err, errlen, "rule %zu: %s \"%s\": unknown kind %d", i, what,
                            km[k].name, (int)km[k].kind);
                    return -1;
                }
                *bytes += strlen(km[k].name) + (km[k].value ? strlen(km[k].value) : 0) + 2;
            }
            *n_conds += nk;
        }
    }
    return 0;
}

enum { K_REST, K_EXACT, K_PREFIX };

struct entry {
    const char *svc; /* NULL: any host */
    size_t svc_len;
    const char *s; /* the path, "" for K_REST */
    size_t len;
    int kind;
    uint32_t rule;
};

static int bytes_cmp(const char *a, size_t an, const char *b, size_t bn)
{
    size_t k = an < bn ? an : bn;
    int c = k ? memcmp(a, b, k) : 0;
    if (c)
        return c;
    return an < bn ? -1 : an > bn;
}

static int same_svc(const struct entry *a, const struct entry *b)
{
    if (!a->svc || !b->svc)
        return !a->svc && !b->svc;
    return !bytes_cmp(a->svc, a->svc_len, b->svc, b->svc_len);
}

static int entry_cmp(const void *pa, const void *pb)
{
    const struct entry *a = pa, *b = pb;
    if (!a->svc != !b->svc)
        return a->svc ? 1 : -1;
    int c = a->svc ? bytes_cmp(a->svc, a->svc_len, b->svc, b->svc_len) : 0;
    if (c)
        return c;
    if (a->kind != b->kind)
        return a->kind - b->kind;
    c = bytes_cmp(a->s, a->len, b->s, b->len);
    if (c)
        return c;
    return a->rule < b->rule ? -1 : a->rule > b->rule;
}

struct task {
    uint32_t node;
    size_t lo, hi, depth;
};

static uint32_t node_add(rmr_matcher_t *m, const char *label, size_t len)
{
    m->nodes[m->n_nodes] = (struct node){.label = label, .label_len = len};
    return (uint32_t)m->n_nodes++;
}

/* Builds the radix tree of the sorted prefix entries e[lo..hi) of one bucket; returns its root.
 * Every node but the root ends a prefix or has two kids or more, so a bucket with k distinct
 * prefixes takes at most 2k nodes besides its root. Iterative: a long chain of nested prefixes
 * must not run out of stack. */
static uint32_t tree_build(rmr_matcher_t *m, const struct entry *e, size_t lo, size_t hi,
                           struct task *stack)
{
    uint32_t root = node_add(m, "", 0);
    size_t top = 0;
    stack[top++] = (struct task){root, lo, hi, 0};
    while (top) {
        struct task t = stack[--top];
        size_t k = t.lo, groups = 0;
        /* Sorted order puts the prefix that ends here first, with equal ones in rule order. */
        while (k < t.hi && e[k].len == t.depth)
            k++;
        m->nodes[t.node].run = (struct run){(uint32_t)t.lo, (uint32_t)(k - t.lo)};
        for (size_t a = k, b; a < t.hi; a = b, groups++)
            for (b = a + 1; b < t.hi && e[b].s[t.depth] == e[a].s[t.depth]; b++)
                ;
        m->nodes[t.node].kids = (uint32_t)m->n_kid;
        m->nodes[t.node].n_kids = (uint32_t)groups;
        struct kid *kid = m->kid + m->n_kid;
        m->n_kid += groups;
        for (size_t a = k, b; a < t.hi; a = b) {
            for (b = a + 1; b < t.hi && e[b].s[t.depth] == e[a].s[t.depth]; b++)
                ;
            /* In sorted order, the first and last of a group share what all of it shares. */
            size_t d = t.depth + 1;
            while (d < e[a].len && d < e[b - 1].len && e[a].s[d] == e[b - 1].s[d])
                d++;
            uint32_t child = node_add(m, e[a].s + t.depth, d - t.depth);
            *kid++ = (struct kid){(unsigned char)e[a].s[t.depth], child};
            stack[top++] = (struct task){child, a, b, d};
        }
    }
    return root;
}

/* Sorts the rules into entries and builds the table, the buckets and the trees over them. */
static int index_build(rmr_matcher_t *m)
{
    size_t n = m->n, n_keys = 0, n_prefix = 0;
    struct entry *e = malloc((n ? n : 1) * sizeof(*e));
    struct task *stack = NULL;
    if (!e)
        return -1;
    for (size_t i = 0; i < n; i++) {
        const struct rule *u = &m->rules[i];
        int kind = u->path_kind == RMR_PATH_EXACT    ? K_EXACT
                   : u->path_kind == RMR_PATH_PREFIX ? K_PREFIX
                                                     : K_REST;
        e[i] = (struct entry){.svc = u->service,
                              .svc_len = u->service_len,
                              .s = kind == K_REST ? "" : u->path,
                              .len = kind == K_REST ? 0 : u->path_len,
                              .kind = kind,
                              .rule = (uint32_t)i};
    }
    qsort(e, n, sizeof(*e), entry_cmp);
    m->n_buckets = 1;
    for (size_t i = 0; i < n; i++) {
        m->ids[i] = e[i].rule;
        if (e[i].svc && (i == 0 || !same_svc(&e[i - 1], &e[i]))) {
            m->n_buckets++;
            n_keys++;
        }
        if (e[i].kind == K_EXACT &&
            (i == 0 || e[i - 1].kind != K_EXACT || !same_svc(&e[i - 1], &e[i]) ||
             bytes_cmp(e[i - 1].s, e[i - 1].len, e[i].s, e[i].len)))
            n_keys++;
        n_prefix += e[i].kind == K_PREFIX;
    }
    size_t cap = 8;
    while (cap < 2 * n_keys)
        cap *= 2;
    size_t max_nodes = 2 * n_prefix + m->n_buckets;
    m->mask = cap - 1;
    m->slots = calloc(cap, sizeof(*m->slots));
    m->buckets = calloc(m->n_buckets, sizeof(*m->buckets));
    m->nodes = malloc(max_nodes * sizeof(*m->nodes));
    m->kid = malloc(max_nodes * sizeof(*m->kid));
    stack = malloc(max_nodes * sizeof(*stack));
    if (!m->slots || !m->buckets || !m->nodes || !m->kid || !stack)
        goto fail;
    for (size_t b = 0; b < m->n_buckets; b++)
        m->buckets[b].root = NONE;
    uint32_t next_bucket = 1;
    for (size_t i = 0, j; i < n; i = j) {
        uint32_t b = 0;
        for (j = i + 1; j < n && same_svc(&e[i], &e[j]); j++)
            ;
        if (e[i].svc) {
            b = next_bucket++;
            slot_add(m, HOST_NS, e[i].svc, e[i].svc_len, (struct run){b, 1});
        }
        struct bucket *bk = &m->buckets[b];
        size_t k = i;
        while (k < j && e[k].kind == K_REST)
            k++;
        bk->rest = (struct run){(uint32_t)i, (uint32_t)(k - i)};
        while (k < j && e[k].kind == K_EXACT) {
            size_t r = k + 1;
            while (r < j && e[r].kind == K_EXACT && !bytes_cmp(e[r].s, e[r].len, e[k].s, e[k].len))
                r++;
            slot_add(m, b, e[k].s, e[k].len, (struct run){(uint32_t)k, (uint32_t)(r - k)});
            bk->has_exact = 1;
            k = r;
        }
        if (k < j)
            bk->root = tree_build(m, e, k, j, stack);
    }
    free(stack);
    free(e);
    return 0;
fail:
    free(stack);
    free(e);
    return -1;
}

void rmr_matcher_free(rmr_matcher_t *m)
{
    if (!m)
        return;
    for (size_t i = 0; m->rules && i < m->n; i++)
        if (m->rules[i].compiled)
            regfree(&m->rules[i].re);
    for (size_t i = 0; m->conds && i < m->n_conds; i++)
        if (m->conds[i].compiled)
            regfree(&m->conds[i].re);
    free(m->rules);
    free(m->conds);
    free(m->pool);
    free(m->ids);
    free(m->slots);
    free(m->buckets);
    free(m->nodes);
    free(m->kid);
    free(m);
}

rmr_matcher_t *rmr_matcher_new(const rmr_match_rule_t *rules, size_t n, char *err, size_t errlen)
{
    size_t bytes, n_conds;
    set_err(err, errlen, "%s", "");
    if (n > INT_MAX - 1) {
        set_err(err, errlen, "%zu rules: more than %d", n, INT_MAX - 1);
        return NULL;
    }
    if (measure(rules, n, &bytes, &n_conds, err, errlen))
        return NULL;
    rmr_matcher_t *m = calloc(1, sizeof(*m));
    if (!m)
        goto oom;
    m->n = n;
    m->n_conds = n_conds;
    /* One element at least each, so that NULL always means out of memory. */
    m->rules = calloc(n ? n : 1, sizeof(*m->rules));
    m->conds = calloc(n_conds ? n_conds : 1, sizeof(*m->conds));
    m->ids = malloc((n ? n : 1) * sizeof(*m->ids));
    m->pool = malloc(bytes ? bytes : 1);
    if (!m->rules || !m->conds || !m->ids || !m->pool)
        goto oom;
    char *p = m->pool;
    struct cond *c = m->conds;
    for (size_t i = 0; i < n; i++) {
        const rmr_match_rule_t *in = &rules[i];
        struct rule *u = &m->rules[i];
        u->service = pool_dup(&p, in->service, &u->service_len, 1);
        u->path = pool_dup(&p, in->path, &u->path_len, 0);
        u->method = pool_dup(&p, in->method, &u->method_len, 0);
        if (!u->service_len)
            u->service = NULL;
        if (!u->method_len)
            u->method = NULL;
        u->path_kind = in->path_kind;
        if (u->path_kind == RMR_PATH_PREFIX && !u->path_len)
            u->path_kind = RMR_PATH_ANY;
        if (u->path_kind == RMR_PATH_REGEX) {
            if (compile(&u->re, u->path, u->path_len, "path regex", i, err, errlen))
                goto fail;
            u->compiled = 1;
        }
        u->headers = c;
        u->n_headers = in->n_headers;
        if (copy_conds(c, in->headers, in->n_headers, 1, &p, i, err, errlen))
            goto fail;
        c += in->n_headers;
        u->query = c;
        u->n_query = in->n_query;
        if (copy_conds(c, in->query, in->n_query, 0, &p, i, err, errlen))
            goto fail;
        c += in->n_query;
    }
    if (index_build(m))
        goto oom;
    return m;
oom:
    set_err(err, errlen, "out of memory");
fail:
    rmr_matcher_free(m);
    return NULL;
}
