/*
 * The inbound idempotency store (draft-ietf-httpapi-idempotency-key-header): a hash table of
 * keys, each in flight or done, shared by the workers under one mutex.
 *
 * Every key sits on the age list, ordered by the time its ttl counts from (begin while in
 * flight, finish once done). All keys share one ttl, so the head of that list is always the
 * next to expire, and each call drops a few expired keys from there: memory comes back at a
 * steady pace instead of in one long sweep. Done keys also sit on the LRU list, which chooses
 * what to evict when max_entries is reached; in-flight keys are never evicted, since their
 * requests are still running and a repeat must get 409, not a second execution.
 *
 * The lock covers table and list work only. Node allocation happens before it is taken,
 * response bytes are copied before it is taken, and whatever a call drops is freed after it
 * is released.
 */
#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "remora/idem.h"
#include "remora/siphash.h"

/* Expired keys dropped per call at most: enough to outpace arrivals (one key per begin), small
 * enough that no call holds the lock for long. */
#define SWEEP_MAX 4
/* Buckets moved per call while the table grows: the table doubles when it holds as many keys as
 * buckets, so the move ends long before the next doubling is due. */
#define REHASH_BUCKETS 16
#define REHASH_VISITS 64
#define TABLE_MIN 16

struct rmr_idem_entry {
    _Atomic uint32_t refs;
    int status;
    int body_kept;
    uint64_t body_hash;
    size_t headlen, bodylen;
    const char *head, *body; /* point into data */
    char data[];
};

struct link {
    struct link *prev, *next;
};

struct node {
    struct node *next;      /* hash chain; after removal, the list of nodes to free */
    struct link age;        /* every key, oldest t0 first */
    struct link lru;        /* done keys, least recently used first */
    rmr_idem_entry_t *resp; /* NULL while in flight */
    uint64_t hash, fp, t0;
    size_t klen;
    char key[];
};

#define NODE_OF(l, field) ((struct node *)((char *)(l)-offsetof(struct node, field)))

struct table {
    struct node **b;
    size_t mask, used;
};

struct rmr_idem {
    pthread_mutex_t mu;
    /* t[1].b is non-NULL while the table grows: buckets below rehash have moved to t[1]. */
    struct table t[2];
    size_t rehash;
    struct link age, lru;
    uint64_t max_entries;
    uint32_t ttl;
    uint64_t now; /* the latest now_ms seen, for calls that get none */
    /* Read without the lock by finish, which sizes its copy before locking. */
    _Atomic uint64_t max_body;
    uint64_t sipkey[2]; /* set once by rmr_idem_new */
    rmr_idem_stats_t st;
};

static void link_init(struct link *l)
{
    l->prev = l->next = l;
}

static void link_del(struct link *l)
{
    l->prev->next = l->next;
    l->next->prev = l->prev;
    l->prev = l->next = l;
}

static void link_add_tail(struct link *head, struct link *l)
{
    l->prev = head->prev;
    l->next = head;
    head->prev->next = l;
    head->prev = l;
}

uint64_t rmr_hash64(uint64_t h, const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++) {
        h ^= c[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* ---- the table ---- */

static int table_init(struct table *t, size_t size)
{
    t->b = calloc(size, sizeof(*t->b));
    t->mask = size - 1;
    t->used = 0;
    return t->b ? 0 : -1;
}

static struct node **find(struct rmr_idem *s, uint64_t h, const char *key, size_t klen)
{
    for (int i = 0; i < 2 && s->t[i].b; i++) {
        for (struct node **pp = &s->t[i].b[h & s->t[i].mask]; *pp; pp = &(*pp)->next) {
            struct node *n = *pp;
            if (n->hash == h && n->klen == klen && !memcmp(n->key, key, klen))
                return pp;
        }
    }
    return NULL;
}

static void table_insert(struct rmr_idem *s, struct node *n)
{
    struct table *t = s->t[1].b ? &s->t[1] : &s->t[0];
    struct node **b = &t->b[n->hash & t->mask];
    n->next = *b;
    *b = n;
    t->used++;
    /* Grow at load 1; when memory is short, carry on with longer chains. */
    if (!s->t[1].b && s->t[0].used > s->t[0].mask) {
        if (table_init(&s->t[1], 2 * (s->t[0].mask + 1)))
            s->t[1] = (struct table){0};
        s->rehash = 0;
    }
}

static void table_remove(struct rmr_idem *s, struct node *n)
{
    for (int i = 0; i < 2 && s->t[i].b; i++) {
        for (struct node **pp = &s->t[i].b[n->hash & s->t[i].mask]; *pp; pp = &(*pp)->next) {
            if (*pp == n) {
                *pp = n->next;
                s->t[i].used--;
                return;
            }
        }
    }
    assert(!"node not in table");
}

/* Moves a few buckets of a growing table to the new one; swaps them when all have moved. */
static void rehash_step(struct rmr_idem *s)
{
    if (!s->t[1].b)
        return;
    for (int moved = 0, visits = 0;
         moved < REHASH_BUCKETS && visits < REHASH_VISITS && s->rehash <= s->t[0].mask;
         visits++, s->rehash++) {
        struct node *n = s->t[0].b[s->rehash];
        if (!n)
            continue;
        moved++;
        s->t[0].b[s->rehash] = NULL;
        while (n) {
            struct node *next = n->next;
            struct node **b = &s->t[1].b[n->hash & s->t[1].mask];
            n->next = *b;
            *b = n;
            s->t[0].used--;
            s->t[1].used++;
            n = next;
        }
    }
    if (s->rehash > s->t[0].mask) {
        free(s->t[0].b);
        s->t[0] = s->t[1];
        s->t[1] = (struct table){0};
        s->rehash = 0;
    }
}

/* ---- keys ---- */

static int expired(const struct rmr_idem *s, const struct node *n, uint64_t now)
{
    /* Workers read the clock before locking, so now may lag a t0 set by another by a little. */
    uint64_t age = now > n->t0 ? now - n->t0 : 0;
    return age >= s->ttl;
}

/* Takes n out of the table and lists onto *grave, to be freed once the lock is released. */
static void drop(struct rmr_idem *s, struct node *n, struct node **grave)
{
    table_remove(s, n);
    link_del(&n->age);
    if (n->resp)
        link_del(&n->lru);
    else
        s->st.in_flight--;
    s->st.entries--;
    n->next = *grave;
    *grave = n;
}

static void bury(struct node *grave)
{
    while (grave) {
        struct node *next = grave->next;
        rmr_idem_entry_unref(grave->resp);
        free(grave);
        grave = next;
    }
}

static void sweep(struct rmr_idem *s, uint64_t now, struct node **grave)
{
    if (now > s->now)
        s->now = now;
    for (int i = 0; i < SWEEP_MAX && s->age.next != &s->age; i++) {
        struct node *n = NODE_OF(s->age.next, age);
        if (!expired(s, n, s->now))
            break;
        drop(s, n, grave);
        s->st.expired++;
    }
}

/* Evicts least recently used done keys while more than keep keys are held. */
static void evict_to(struct rmr_idem *s, uint64_t keep, struct node **grave)
{
    while (s->st.entries > keep && s->lru.next != &s->lru) {
        drop(s, NODE_OF(s->lru.next, lru), grave);
        s->st.evictions++;
    }
}

rmr_idem_t *rmr_idem_new(uint64_t max_entries, uint32_t ttl_ms, uint64_t max_response_bytes)
{
    rmr_idem_t *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    if (table_init(&s->t[0], TABLE_MIN))
        goto fail;
    if (pthread_mutex_init(&s->mu, NULL))
        goto fail;
    link_init(&s->age);
    link_init(&s->lru);
    s->max_entries = max_entries;
    s->ttl = ttl_ms;
    atomic_init(&s->max_body, max_response_bytes);
    if (getrandom(s->sipkey, sizeof(s->sipkey), GRND_NONBLOCK) != (ssize_t)sizeof(s->sipkey)) {
        /* Early boot without entropy: a weaker key beats no store. */
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        s->sipkey[0] = rmr_hash64(RMR_HASH_INIT, &ts, sizeof(ts));
        s->sipkey[1] = rmr_hash64(s->sipkey[0], &s, sizeof(s));
    }
    return s;
fail:
    free(s->t[0].b);
    free(s);
    return NULL;
}

void rmr_idem_free(rmr_idem_t *s)
{
    if (!s)
        return;
    struct node *grave = NULL;
    while (s->age.next != &s->age)
        drop(s, NODE_OF(s->age.next, age), &grave);
    bury(grave);
    free(s->t[0].b);
    free(s->t[1].b);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

void rmr_idem_configure(rmr_idem_t *s, uint64_t max_entries, uint32_t ttl_ms,
                        uint64_t max_response_bytes)
{
    struct node *grave = NULL;
    pthread_mutex_lock(&s->mu);
    s->max_entries = max_entries;
    s->ttl = ttl_ms;
    atomic_store(&s->max_body, max_response_bytes);
    evict_to(s, max_entries, &grave);
    pthread_mutex_unlock(&s->mu);
    bury(grave);
}

rmr_idem_verdict_t rmr_idem_begin(rmr_idem_t *s, const char *key, size_t klen, uint64_t fp,
                                  uint64_t now_ms, rmr_idem_entry_t **entry)
{
    rmr_idem_verdict_t v;
    uint64_t h = rmr_siphash(s->sipkey, key, klen);
    /* Most keys are seen once, so the node is made ready before locking. */
    struct node *fresh = malloc(sizeof(*fresh) + klen + 1), *grave = NULL;
    *entry = NULL;
    pthread_mutex_lock(&s->mu);
    rehash_step(s);
    sweep(s, now_ms, &grave);
    struct node **pp = find(s, h, key, klen);
    if (pp && expired(s, *pp, now_ms)) {
        drop(s, *pp, &grave);
        s->st.expired++;
    } else if (pp) {
        struct node *n = *pp;
        if (n->fp != fp) {
            v = RMR_IDEM_MISMATCH;
            s->st.mismatches++;
        } else if (!n->resp) {
            v = RMR_IDEM_IN_FLIGHT;
            s->st.conflicts++;
        } else {
            v = RMR_IDEM_DONE;
            atomic_fetch_add_explicit(&n->resp->refs, 1, memory_order_relaxed);
            *entry = n->resp;
            link_del(&n->lru);
            link_add_tail(&s->lru, &n->lru);
            s->st.replays++;
        }
        goto out;
    }
    if (s->max_entries)
        evict_to(s, s->max_entries - 1, &grave);
    if (!fresh || s->st.entries >= s->max_entries) {
        v = RMR_IDEM_FULL;
        goto out;
    }
    fresh->hash = h;
    fresh->fp = fp;
    fresh->t0 = now_ms;
    fresh->resp = NULL;
    fresh->klen = klen;
    memcpy(fresh->key, key, klen);
    fresh->key[klen] = '\0';
    link_init(&fresh->lru);
    link_add_tail(&s->age, &fresh->age);
    table_insert(s, fresh);
    s->st.entries++;
    s->st.in_flight++;
    fresh = NULL;
    v = RMR_IDEM_NEW;
out:
    pthread_mutex_unlock(&s->mu);
    free(fresh);
    bury(grave);
    return v;
}

/* Makes the stored copy of a response; NULL when out of memory. */
static rmr_idem_entry_t *entry_new(uint64_t body_hash, int status, const char *head, size_t headlen,
                                   const char *body, size_t bodylen, int body_kept)
{
    if (!body_kept)
        bodylen = 0;
    /* Room for a NUL after head and after body, so neither pointer is ever NULL. */
    rmr_idem_entry_t *e = malloc(sizeof(*e) + headlen + bodylen + 2);
    if (!e)
        return NULL;
    atomic_init(&e->refs, 1);
    e->status = status;
    e->body_kept = body_kept;
    e->body_hash = body_hash;
    e->headlen = headlen;
    e->bodylen = bodylen;
    if (headlen)
        memcpy(e->data, head, headlen);
    e->data[headlen] = '\0';
    if (bodylen)
        memcpy(e->data + headlen + 1, body, bodylen);
    e->data[headlen + 1 + bodylen] = '\0';
    e->head = e->data;
    e->body = e->data + headlen + 1;
    return e;
}

void rmr_idem_finish(rmr_idem_t *s, const char *key, size_t klen, uint64_t body_hash, int status,
                     const char *head, size_t headlen, const char *body, size_t bodylen,
                     int body_complete, uint64_t now_ms)
{
    rmr_idem_entry_t *e = NULL;
    struct node *grave = NULL;
    uint64_t h = rmr_siphash(s->sipkey, key, klen);
    /* 502, 503 and 504 say the request may not have been processed: a retry must run it. */
    if (status != 502 && status != 503 && status != 504 && headlen <= RMR_IDEM_HEAD_MAX) {
        int kept = body_complete && bodylen <= atomic_load(&s->max_body);
        e = entry_new(body_hash, status, head, headlen, body, bodylen, kept);
    }
    pthread_mutex_lock(&s->mu);
    rehash_step(s);
    sweep(s, now_ms, &grave);
    struct node **pp = find(s, h, key, klen);
    struct node *n = pp ? *pp : NULL;
    if (!n || n->resp) {
        /* Not in flight: it expired, and maybe was stored by a later try. */
    } else if (expired(s, n, now_ms)) {
        drop(s, n, &grave);
        s->st.expired++;
    } else if (!e) {
        drop(s, n, &grave);
        s->st.not_stored++;
    } else {
        n->resp = e;
        e = NULL;
        n->t0 = now_ms;
        link_del(&n->age);
        link_add_tail(&s->age, &n->age);
        link_add_tail(&s->lru, &n->lru);
        s->st.in_flight--;
        s->st.stored++;
        /* Keys held past a shrink by in-flight requests go as those finish. */
        evict_to(s, s->max_entries, &grave);
    }
    pthread_mutex_unlock(&s->mu);
    rmr_idem_entry_unref(e);
    bury(grave);
}

void rmr_idem_abort(rmr_idem_t *s, const char *key, size_t klen)
{
    struct node *grave = NULL;
    uint64_t h = rmr_siphash(s->sipkey, key, klen);
    pthread_mutex_lock(&s->mu);
    rehash_step(s);
    sweep(s, s->now, &grave);
    struct node **pp = find(s, h, key, klen);
    if (pp && !(*pp)->resp) {
        int old = expired(s, *pp, s->now);
        drop(s, *pp, &grave);
        if (old)
            s->st.expired++;
        else
            s->st.not_stored++;
    }
    pthread_mutex_unlock(&s->mu);
    bury(grave);
}

int rmr_idem_entry_status(const rmr_idem_entry_t *e)
{
    return e->status;
}

const char *rmr_idem_entry_head(const rmr_idem_entry_t *e, size_t *len)
{
    *len = e->headlen;
    return e->head;
}

const char *rmr_idem_entry_body(const rmr_idem_entry_t *e, size_t *len)
{
    *len = e->bodylen;
    return e->body;
}

int rmr_idem_entry_body_kept(const rmr_idem_entry_t *e)
{
    return e->body_kept;
}

int rmr_idem_entry_matches_body(rmr_idem_t *s, const rmr_idem_entry_t *e, uint64_t body_hash)
{
    if (e->body_hash == body_hash)
        return 1;
    pthread_mutex_lock(&s->mu);
    s->st.mismatches++;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

void rmr_idem_entry_unref(rmr_idem_entry_t *e)
{
    if (e && atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1)
        free(e);
}

void rmr_idem_get_stats(rmr_idem_t *s, rmr_idem_stats_t *out)
{
    pthread_mutex_lock(&s->mu);
    *out = s->st;
    pthread_mutex_unlock(&s->mu);
}

/* ---- the field value ---- */

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static int is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int is_lcalpha(char c)
{
    return c >= 'a' && c <= 'z';
}

static int is_tchar(char c)
{
    return is_alpha(c) || is_digit(c) || (c && strchr("!#$%&'*+-.^_`|~", c));
}

static int is_base64(char c)
{
    return is_alpha(c) || is_digit(c) || c == '+' || c == '/' || c == '=';
}

/* Parses an sf-string starting at v[i] (the opening quote); returns the index after the closing
 * quote, or -1. When out is not NULL, the content goes there (at most cap bytes, else -1) and its
 * length to *len. */
static long sf_string(const char *v, size_t n, size_t i, char *out, size_t cap, size_t *len)
{
    size_t k = 0;
    if (i >= n || v[i] != '"')
        return -1;
    for (i++; i < n; i++) {
        char c = v[i];
        if (c == '"') {
            if (len)
                *len = k;
            return (long)i + 1;
        }
        if (c == '\\') {
            if (++i >= n || (v[i] != '"' && v[i] != '\\'))
                return -1;
            c = v[i];
        } else if ((unsigned char)c < 0x20 || (unsigned char)c > 0x7e) {
            return -1;
        }
        if (out) {
            if (k >= cap)
                return -1;
            out[k] = c;
        }
        k++;
    }
    return -1; /* no closing quote */
}

/* Parses an RFC 8941 bare item (a parameter's value) at v[i]; returns the index after it, or -1.
 */
static long bare_item(const char *v, size_t n, size_t i)
{
    if (i >= n)
        return -1;
    char c = v[i];
    if (c == '"')
        return sf_string(v, n, i, NULL, 0, NULL);
    if (c == '-' || is_digit(c)) {
        size_t ints = 0, fracs = 0;
        if (c == '-')
            i++;
        for (; i < n && is_digit(v[i]); i++)
            ints++;
        if (ints == 0)
            return -1;
        if (i < n && v[i] == '.') {
            for (i++; i < n && is_digit(v[i]); i++)
                fracs++;
            return ints <= 12 && fracs >= 1 && fracs <= 3 ? (long)i : -1;
        }
        return ints <= 15 ? (long)i : -1;
    }
    if (is_alpha(c) || c == '*') {
        for (i++; i < n && (is_tchar(v[i]) || v[i] == ':' || v[i] == '/'); i++)
            ;
        return (long)i;
    }
    if (c == ':') {
        for (i++; i < n && is_base64(v[i]); i++)
            ;
        return i < n && v[i] == ':' ? (long)i + 1 : -1;
    }
    if (c == '?')
        return i + 1 < n && (v[i + 1] == '0' || v[i + 1] == '1') ? (long)i + 2 : -1;
    return -1;
}

/* Parses ";key[=value]" parameters at v[i] as RFC 8941 section 4.2.3.2 does; returns the index
 * after them, or -1. */
static long parameters(const char *v, size_t n, size_t i)
{
    while (i < n && v[i] == ';') {
        for (i++; i < n && v[i] == ' '; i++)
            ;
        if (i >= n || !(is_lcalpha(v[i]) || v[i] == '*'))
            return -1;
        for (i++; i < n && (is_lcalpha(v[i]) || is_digit(v[i]) || (v[i] && strchr("_-.*", v[i])));
             i++)
            ;
        if (i < n && v[i] == '=') {
            long j = bare_item(v, n, i + 1);
            if (j < 0)
                return -1;
            i = (size_t)j;
        }
    }
    return (long)i;
}

int rmr_idem_parse_key(const char *v, size_t n, char *out, size_t outsz)
{
    size_t i = 0, len = 0;
    if (!outsz)
        return -1;
    size_t cap = outsz - 1 < RMR_IDEM_KEY_MAX ? outsz - 1 : RMR_IDEM_KEY_MAX;
    while (i < n && (v[i] == ' ' || v[i] == '\t'))
        i++;
    long j = sf_string(v, n, i, out, cap, &len);
    if (j < 0 || len == 0)
        goto fail;
    j = parameters(v, n, (size_t)j);
    if (j < 0)
        goto fail;
    for (i = (size_t)j; i < n && (v[i] == ' ' || v[i] == '\t'); i++)
        ;
    if (i != n)
        goto fail;
    out[len] = '\0';
    return (int)len;
fail:
    out[0] = '\0';
    return -1;
}

size_t rmr_idem_format_key(char *out, uint64_t r1, uint64_t r2)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char b[16];
    for (int i = 0; i < 8; i++) {
        b[i] = (unsigned char)(r1 >> (56 - 8 * i));
        b[8 + i] = (unsigned char)(r2 >> (56 - 8 * i));
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* variant 10xx (RFC 9562) */
    size_t k = 0;
    out[k++] = '"';
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[k++] = '-';
        out[k++] = hex[b[i] >> 4];
        out[k++] = hex[b[i] & 15];
    }
    out[k++] = '"';
    out[k] = '\0';
    return k;
}
