/*
 * remora-control's HTTP/1.1 server (rc_http.h): listeners, the connection threads, the request
 * parser and the routes of control/API.md.
 *
 * The parser is strict where framing is concerned (one Content-Length or "chunked", never both,
 * no obs-fold, no bare CR), so that a proxy in front of us and we agree on where a request ends;
 * anything it refuses gets a 4xx/5xx and the connection is closed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <zlib.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "opentelemetry/proto/collector/trace/v1/trace_service.pb-c.h"
#include "remora/log.h"
#include "rc_http.h"

#define RC_MAX_HEADERS 100
#define RC_LINE_MAX 4096 /* a chunk-size line or trailer line */
#define RC_READ_MAX (64u << 10)
#define RC_DRAIN_MAX (32u << 20) /* bytes read and dropped while closing after an error */
#define RC_LIST_DEFAULT 100
#define RC_LIST_MAX 1000

__attribute__((weak)) int rc_grpc_serve(int fd, const char *pre, size_t prelen, rc_store_t *store)
{
    (void)pre;
    (void)prelen;
    (void)store;
    close(fd);
    return -ENOSYS;
}

/* Logs the first 10 occurrences at one call site, then one in 1000. */
#define LOG_SOME(counter, ...)                                                                     \
    do {                                                                                           \
        static unsigned long counter;                                                              \
        unsigned long n_ = __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED);                      \
        if (n_ < 10 || n_ % 1000 == 0)                                                             \
            RMR_WARN(__VA_ARGS__);                                                                 \
    } while (0)

/* ---- connection registry ------------------------------------------------------------------ */

static struct {
    pthread_mutex_t mu;
    pthread_cond_t idle;
    int fds[RC_MAX_CONNS]; /* fd + 1, 0 when the slot is free */
    int active;
    int stopping;
} reg = {.mu = PTHREAD_MUTEX_INITIALIZER, .idle = PTHREAD_COND_INITIALIZER};

static int reg_add(int fd)
{
    int slot = -1;
    pthread_mutex_lock(&reg.mu);
    if (!reg.stopping) {
        for (int i = 0; i < RC_MAX_CONNS; i++) {
            if (reg.fds[i] == 0) {
                reg.fds[i] = fd + 1;
                reg.active++;
                slot = i;
                break;
            }
        }
    }
    pthread_mutex_unlock(&reg.mu);
    return slot;
}

/* Before close(fd): rc_http_shutdown must never shut down a descriptor number reused since. */
static void reg_del(int slot)
{
    pthread_mutex_lock(&reg.mu);
    reg.fds[slot] = 0;
    if (--reg.active == 0)
        pthread_cond_broadcast(&reg.idle);
    pthread_mutex_unlock(&reg.mu);
}

int rc_http_shutdown(int timeout_ms)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
    if (deadline.tv_nsec >= 1000000000) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&reg.mu);
    reg.stopping = 1;
    for (int i = 0; i < RC_MAX_CONNS; i++)
        if (reg.fds[i])
            shutdown(reg.fds[i] - 1, SHUT_RDWR);
    int ret = 0;
    while (reg.active > 0 && ret == 0)
        ret = pthread_cond_timedwait(&reg.idle, &reg.mu, &deadline);
    int left = reg.active;
    pthread_mutex_unlock(&reg.mu);
    return left ? -ETIMEDOUT : 0;
}

/* ---- a growable string -------------------------------------------------------------------- */

typedef struct sb {
    char *p;
    size_t len, cap;
    int oom;
} sb_t;

static void sb_add(sb_t *b, const void *p, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void sb_str(sb_t *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

static void sb_fmt(sb_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_fmt(sb_t *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0)
        sb_add(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* A JSON string. The store's strings are valid UTF-8 already; this escapes what JSON needs. */
static void sb_json(sb_t *b, const char *s)
{
    sb_add(b, "\"", 1);
    const char *run = s;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        sb_add(b, run, (size_t)(s - run));
        if (c == '"')
            sb_add(b, "\\\"", 2);
        else if (c == '\\')
            sb_add(b, "\\\\", 2);
        else if (c == '\n')
            sb_add(b, "\\n", 2);
        else if (c == '\r')
            sb_add(b, "\\r", 2);
        else if (c == '\t')
            sb_add(b, "\\t", 2);
        else
            sb_fmt(b, "\\u%04x", c);
        run = s + 1;
    }
    sb_add(b, run, (size_t)(s - run));
    sb_add(b, "\"", 1);
}

static void sb_hex(sb_t *b, const uint8_t *p, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    sb_add(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        char two[2] = {hex[p[i] >> 4], hex[p[i] & 15]};
        sb_add(b, two, 2);
    }
    sb_add(b, "\"", 1);
}

/* ---- connections and requests ------------------------------------------------------------- */

typedef struct conn {
    int fd, slot, grpc;
    rc_store_t *store;
    char peer[INET6_ADDRSTRLEN + 8];
    char *buf; /* received bytes; reallocated as it grows */
    size_t len, cap;
    char *head; /* the current request's head, parsed in place: req_t points into it */
    size_t head_cap;
} conn_t;

typedef struct hdr {
    const char *name, *value;
} hdr_t;

typedef struct req {
    char *method, *target, *path, *query;
    int minor; /* HTTP/1.minor */
    hdr_t h[RC_MAX_HEADERS];
    int nh;
    int chunked, has_cl, keep_alive, expect_continue;
    uint64_t cl;
    const char *ctype, *cenc;
} req_t;

typedef struct resp {
    int status;
    const char *ctype;
    const char *body;
    size_t blen;
    char *owned; /* freed after sending */
    const char *allow;
    const char *cache;
    int close;
} resp_t;

static const char *reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 413:
        return "Content Too Large";
    case 415:
        return "Unsupported Media Type";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return "Unknown";
    }
}

static int send_all(int fd, struct iovec *v, int n)
{
    while (n > 0) {
        struct msghdr m = {.msg_iov = v, .msg_iovlen = (size_t)n};
        ssize_t w = sendmsg(fd, &m, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -errno;
        size_t left = (size_t)w;
        while (n > 0 && left >= v->iov_len) {
            left -= v->iov_len;
            v++;
            n--;
        }
        if (n > 0) {
            v->iov_base = (char *)v->iov_base + left;
            v->iov_len -= left;
        }
    }
    return 0;
}

/* Reads what the socket has into the buffer, growing it so that `room` bytes fit. Returns the
 * bytes read, 0 at EOF, -1 on error or timeout. */
static ssize_t fill(conn_t *c, size_t room)
{
    if (c->cap - c->len < room) {
        size_t cap = c->cap ? c->cap : 16384;
        while (cap - c->len < room)
            cap *= 2;
        char *p = realloc(c->buf, cap);
        if (!p)
            return -1;
        c->buf = p;
        c->cap = cap;
    }
    size_t want = c->cap - c->len;
    if (want > RC_READ_MAX && room <= RC_READ_MAX)
        want = RC_READ_MAX;
    for (;;) {
        ssize_t r = recv(c->fd, c->buf + c->len, want, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r > 0)
            c->len += (size_t)r;
        return r;
    }
}

/* Reads until the buffer holds n bytes. 0, or -1 on EOF, error or timeout. */
static int need(conn_t *c, size_t n)
{
    while (c->len < n) {
        size_t room = n - c->len;
        if (fill(c, room < RC_READ_MAX ? room : RC_READ_MAX) <= 0)
            return -1;
    }
    return 0;
}

/* Closes the write side and reads (and drops) what the client still sends for a moment, so
 * that our error reply is not lost to a reset when the client is still sending its body. */
static void lingering_close(conn_t *c)
{
    shutdown(c->fd, SHUT_WR);
    struct timeval tv = {1, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char tmp[16384];
    size_t total = 0;
    while (total < RC_DRAIN_MAX) {
        ssize_t r = recv(c->fd, tmp, sizeof(tmp), 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        total += (size_t)r;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (t.tv_sec - t0.tv_sec >= 2)
            break;
    }
}

static int send_resp(conn_t *c, const req_t *q, const resp_t *r)
{
    char head[512];
    int head_only = q && q->method && strcmp(q->method, "HEAD") == 0;
    int n =
        snprintf(head, sizeof(head),
                 "HTTP/1.1 %d %s\r\nServer: remora-control\r\nContent-Type: %s\r\n"
                 "Content-Length: %zu\r\nX-Content-Type-Options: nosniff\r\n"
                 "Cache-Control: %s\r\n%s%s%s%s\r\n",
                 r->status, reason(r->status), r->ctype ? r->ctype : "text/plain; charset=utf-8",
                 r->blen, r->cache ? r->cache : "no-store", r->allow ? "Allow: " : "",
                 r->allow ? r->allow : "", r->allow ? "\r\n" : "",
                 r->close             ? "Connection: close\r\n"
                 : q && q->minor == 0 ? "Connection: keep-alive\r\n"
                                      : "");
    struct iovec v[2] = {{head, (size_t)n}, {(void *)r->body, r->blen}};
    return send_all(c->fd, v, head_only || r->blen == 0 ? 1 : 2);
}

/* An error reply: JSON {"error": msg} under /api/, plain text elsewhere. */
static void set_error(resp_t *r, const req_t *q, int status, const char *msg)
{
    r->status = status;
    free(r->owned);
    r->owned = NULL;
    sb_t b = {0};
    if (q && q->path && strncmp(q->path, "/api/", 5) == 0) {
        sb_str(&b, "{\"error\":");
        sb_json(&b, msg);
        sb_str(&b, "}\n");
        r->ctype = "application/json";
    } else {
        sb_str(&b, msg);
        sb_str(&b, "\n");
        r->ctype = "text/plain; charset=utf-8";
    }
    if (b.oom) {
        free(b.p);
        r->body = "";
        r->blen = 0;
        return;
    }
    r->owned = b.p;
    r->body = b.p;
    r->blen = b.len;
}

static int is_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = 0;
    return s;
}

/* Does the comma-separated list v hold token tok (case-insensitive)? */
static int has_token(const char *v, const char *tok)
{
    size_t tl = strlen(tok);
    while (*v) {
        while (*v == ' ' || *v == '\t' || *v == ',')
            v++;
        const char *e = v;
        while (*e && *e != ',')
            e++;
        const char *end = e;
        while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        if ((size_t)(end - v) == tl && strncasecmp(v, tok, tl) == 0)
            return 1;
        v = e;
    }
    return 0;
}

/* Parses head (len bytes, ending with the blank line) in place. Returns 0, or the status to
 * answer with (and *why). */
static int parse_head(char *head, size_t len, req_t *q, const char **why)
{
    memset(q, 0, sizeof(*q));
    char *lines[RC_MAX_HEADERS + 2];
    int nl = 0;
    char *p = head, *end = head + len;
    while (p < end) {
        char *nlp = memchr(p, '\n', (size_t)(end - p));
        if (!nlp)
            break;
        size_t ll = (size_t)(nlp - p);
        if (ll > 0 && p[ll - 1] == '\r')
            ll--;
        if (memchr(p, '\r', ll) || memchr(p, 0, ll)) {
            *why = "a request line or header field holds a CR or NUL";
            return 400;
        }
        p[ll] = 0;
        if (*p == 0)
            break; /* the blank line */
        if (nl == RC_MAX_HEADERS + 1) {
            *why = "too many header fields";
            return 431;
        }
        lines[nl++] = p;
        p = nlp + 1;
    }
    if (nl == 0) {
        *why = "empty request";
        return 400;
    }

    /* METHOD SP request-target SP HTTP-version */
    char *m = lines[0], *sp1 = strchr(m, ' ');
    char *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
    if (!sp1 || !sp2 || strchr(sp2 + 1, ' ') || sp1 == m || sp2 == sp1 + 1) {
        *why = "malformed request line";
        return 400;
    }
    *sp1 = *sp2 = 0;
    q->method = m;
    q->target = sp1 + 1;
    const char *ver = sp2 + 1;
    for (const char *s = q->method; *s; s++) {
        if (!is_tchar((unsigned char)*s)) {
            *why = "malformed method";
            return 400;
        }
    }
    for (const unsigned char *s = (const unsigned char *)q->target; *s; s++) {
        if (*s <= 0x20 || *s >= 0x7f) {
            *why = "malformed request target";
            return 400;
        }
    }
    if (strncmp(ver, "HTTP/", 5) != 0 || !(ver[5] >= '0' && ver[5] <= '9') || ver[6] != '.' ||
        !(ver[7] >= '0' && ver[7] <= '9') || ver[8]) {
        *why = "malformed HTTP version";
        return 400;
    }
    if (ver[5] != '1') {
        *why = ver[5] == '2' ? "HTTP/2 is served (as gRPC) on the --listen port, with prior "
                               "knowledge; this port speaks HTTP/1.1"
                             : "only HTTP/1.0 and HTTP/1.1 are served";
        return 505;
    }
    q->minor = ver[7] - '0';

    int n_te = 0, conn_close = 0, conn_keep = 0;
    for (int i = 1; i < nl; i++) {
        char *l = lines[i];
        if (*l == ' ' || *l == '\t') {
            *why = "obsolete line folding in a header field";
            return 400;
        }
        char *colon = strchr(l, ':');
        if (!colon || colon == l) {
            *why = "malformed header field";
            return 400;
        }
        for (char *s = l; s < colon; s++) {
            if (!is_tchar((unsigned char)*s)) {
                *why = "malformed header field name";
                return 400;
            }
        }
        *colon = 0;
        char *v = trim(colon + 1);
        q->h[q->nh].name = l;
        q->h[q->nh].value = v;
        q->nh++;
        if (strcasecmp(l, "content-length") == 0) {
            size_t vl = strlen(v);
            if (vl == 0 || vl > 15 || strspn(v, "0123456789") != vl) {
                *why = "malformed Content-Length";
                return 400;
            }
            uint64_t cl = strtoull(v, NULL, 10);
            if (q->has_cl && cl != q->cl) {
                *why = "conflicting Content-Length fields";
                return 400;
            }
            q->has_cl = 1;
            q->cl = cl;
        } else if (strcasecmp(l, "transfer-encoding") == 0) {
            n_te++;
            if (strcasecmp(v, "chunked") != 0) {
                *why = has_token(v, "chunked") || *v
                           ? "only Transfer-Encoding: chunked is supported"
                           : "empty Transfer-Encoding";
                return *v ? 501 : 400;
            }
            q->chunked = 1;
        } else if (strcasecmp(l, "connection") == 0) {
            conn_close |= has_token(v, "close");
            conn_keep |= has_token(v, "keep-alive");
        } else if (strcasecmp(l, "expect") == 0) {
            q->expect_continue = strcasecmp(v, "100-continue") == 0;
        } else if (strcasecmp(l, "content-type") == 0) {
            q->ctype = v;
        } else if (strcasecmp(l, "content-encoding") == 0) {
            q->cenc = v;
        }
    }
    if (n_te > 1) {
        *why = "more than one Transfer-Encoding field";
        return 400;
    }
    if (q->chunked && q->has_cl) {
        *why = "both Content-Length and Transfer-Encoding";
        return 400;
    }
    if (q->chunked && q->minor == 0) {
        *why = "Transfer-Encoding in an HTTP/1.0 request";
        return 400;
    }
    q->keep_alive = q->minor == 1 ? !conn_close : (conn_keep && !conn_close);

    /* origin-form, or absolute-form (proxies) reduced to its path */
    char *t = q->target;
    if (strncasecmp(t, "http://", 7) == 0 || strncasecmp(t, "https://", 8) == 0) {
        char *slash = strchr(strstr(t, "://") + 3, '/');
        t = slash ? slash : "/";
    } else if (*t != '/' && strcmp(t, "*") != 0) {
        *why = "malformed request target";
        return 400;
    }
    char *qm = strchr(t, '?');
    if (qm) {
        *qm = 0;
        q->query = qm + 1;
    } else {
        q->query = "";
    }
    char *hash = strchr(q->query, '#');
    if (hash)
        *hash = 0;
    q->path = t;
    return 0;
}

/* ---- routes ------------------------------------------------------------------------------- */

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* 32 hex digits (either case) into id; 0 or -1. */
static int parse_trace_id(const char *s, uint8_t id[RC_TRACE_ID_LEN])
{
    if (strlen(s) != 2 * RC_TRACE_ID_LEN)
        return -1;
    for (int i = 0; i < RC_TRACE_ID_LEN; i++) {
        int a = hexval(s[2 * i]), b = hexval(s[2 * i + 1]);
        if (a < 0 || b < 0)
            return -1;
        id[i] = (uint8_t)(a << 4 | b);
    }
    return 0;
}

/* Percent-decodes s[0..n) ('+' is a space) into out (NUL-terminated). -1 when malformed, holds
 * a NUL, or does not fit. */
static int url_decode(const char *s, size_t n, char *out, size_t outsz)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        if (c == '+') {
            c = ' ';
        } else if (c == '%') {
            int a = i + 2 < n ? hexval(s[i + 1]) : -1;
            int b = i + 2 < n ? hexval(s[i + 2]) : -1;
            if (a < 0 || b < 0)
                return -1;
            c = a << 4 | b;
            i += 2;
        }
        if (c == 0 || o + 1 >= outsz)
            return -1;
        out[o++] = (char)c;
    }
    out[o] = 0;
    return 0;
}

/* The value of query parameter key (the last one when repeated) into out. Returns 1 found, 0
 * absent, -1 malformed. */
static int query_param(const char *query, const char *key, char *out, size_t outsz)
{
    int found = 0;
    const char *p = query;
    while (*p) {
        const char *amp = strchr(p, '&');
        size_t n = amp ? (size_t)(amp - p) : strlen(p);
        const char *eq = memchr(p, '=', n);
        size_t kn = eq ? (size_t)(eq - p) : n;
        char k[64];
        if (kn > 0 && url_decode(p, kn, k, sizeof(k)) == 0 && strcmp(k, key) == 0) {
            if (url_decode(eq ? eq + 1 : p + n, eq ? n - kn - 1 : 0, out, outsz) < 0)
                return -1;
            found = 1;
        }
        p += n;
        if (*p == '&')
            p++;
    }
    return found;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void set_json(resp_t *r, const req_t *q, sb_t *b)
{
    if (b->oom) {
        free(b->p);
        set_error(r, q, 500, "out of memory");
        return;
    }
    r->status = 200;
    r->ctype = "application/json";
    r->owned = b->p;
    r->body = b->p;
    r->blen = b->len;
}

static void route_list(const req_t *q, rc_store_t *store, resp_t *r)
{
    char service[1024], v[64];
    int errors_only = 0;
    uint64_t since_ns = 0;
    size_t limit = RC_LIST_DEFAULT;

    int f = query_param(q->query, "service", service, sizeof(service));
    if (f < 0) {
        set_error(r, q, 400, "service: malformed or too long");
        return;
    }
    if (f == 0)
        service[0] = 0;
    f = query_param(q->query, "errors", v, sizeof(v));
    if (f < 0) {
        set_error(r, q, 400, "errors: expected 1 or 0");
        return;
    }
    if (f && *v) {
        if (!strcmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "yes") ||
            !strcasecmp(v, "on"))
            errors_only = 1;
        else if (strcmp(v, "0") && strcasecmp(v, "false") && strcasecmp(v, "no") &&
                 strcasecmp(v, "off")) {
            set_error(r, q, 400, "errors: expected 1 or 0");
            return;
        }
    }
    f = query_param(q->query, "since", v, sizeof(v));
    if (f && *v) {
        size_t digits = strspn(v, "0123456789");
        int ok = digits > 0 &&
                 (v[digits] == 0 || (v[digits] == '.' && strspn(v + digits + 1, "0123456789") > 0 &&
                                     v[digits + 1 + strspn(v + digits + 1, "0123456789")] == 0));
        if (!ok) {
            set_error(r, q, 400, "since: expected a number of seconds");
            return;
        }
        double secs = strtod(v, NULL);
        uint64_t now = now_ns();
        since_ns = secs * 1e9 >= (double)now ? 0 : now - (uint64_t)(secs * 1e9);
    } else if (f < 0) {
        set_error(r, q, 400, "since: expected a number of seconds");
        return;
    }
    f = query_param(q->query, "limit", v, sizeof(v));
    if (f && *v) {
        size_t digits = strspn(v, "0123456789");
        if (digits == 0 || v[digits]) {
            set_error(r, q, 400, "limit: expected a whole number");
            return;
        }
        limit = digits > 6 ? RC_LIST_MAX : (size_t)strtoul(v, NULL, 10);
        if (limit > RC_LIST_MAX)
            limit = RC_LIST_MAX;
    } else if (f < 0) {
        set_error(r, q, 400, "limit: expected a whole number");
        return;
    }

    rc_trace_summary_t *sums = NULL;
    long n = rc_store_list(store, service, errors_only, since_ns, limit, &sums);
    if (n < 0) {
        set_error(r, q, 500, "out of memory");
        return;
    }
    sb_t b = {0};
    sb_str(&b, "{\"traces\":[");
    for (long i = 0; i < n; i++) {
        const rc_trace_summary_t *u = &sums[i];
        sb_str(&b, i ? ",{\"trace_id\":" : "{\"trace_id\":");
        sb_hex(&b, u->trace_id, RC_TRACE_ID_LEN);
        sb_str(&b, ",\"root_service\":");
        sb_json(&b, u->root_service);
        sb_str(&b, ",\"root_name\":");
        sb_json(&b, u->root_name);
        sb_fmt(&b, ",\"start_us\":%llu,\"duration_us\":%llu,\"spans\":%u,\"error\":%s,",
               (unsigned long long)(u->start_ns / 1000),
               (unsigned long long)(u->duration_ns / 1000), u->spans, u->error ? "true" : "false");
        sb_str(&b, "\"services\":[");
        for (size_t k = 0; k < u->nservices; k++) {
            if (k)
                sb_str(&b, ",");
            sb_json(&b, u->services[k]);
        }
        sb_str(&b, "]}");
    }
    sb_str(&b, "]}\n");
    rc_summaries_free(sums, (size_t)n);
    set_json(r, q, &b);
}

static void json_attrs(sb_t *b, const rc_attr_t *a, size_t n)
{
    sb_str(b, "{");
    for (size_t i = 0; i < n; i++) {
        if (i)
            sb_str(b, ",");
        sb_json(b, a[i].key);
        sb_str(b, ":");
        sb_json(b, a[i].value);
    }
    sb_str(b, "}");
}

static void route_trace(const req_t *q, const char *idhex, rc_store_t *store, resp_t *r)
{
    uint8_t id[RC_TRACE_ID_LEN];
    if (parse_trace_id(idhex, id) < 0) {
        set_error(r, q, 400, "a trace id is 32 hex digits");
        return;
    }
    rc_span_t *spans;
    size_t n;
    int ret = rc_store_get(store, id, &spans, &n);
    if (ret == -ENOENT) {
        set_error(r, q, 404, "trace not found");
        return;
    }
    if (ret < 0) {
        set_error(r, q, 500, "out of memory");
        return;
    }
    sb_t b = {0};
    sb_str(&b, "{\"trace_id\":");
    sb_hex(&b, id, RC_TRACE_ID_LEN);
    sb_str(&b, ",\"spans\":[");
    for (size_t i = 0; i < n; i++) {
        const rc_span_t *s = &spans[i];
        sb_str(&b, i ? ",{\"span_id\":" : "{\"span_id\":");
        sb_hex(&b, s->span_id, RC_SPAN_ID_LEN);
        sb_str(&b, ",\"parent_span_id\":");
        if (s->has_parent)
            sb_hex(&b, s->parent_id, RC_SPAN_ID_LEN);
        else
            sb_str(&b, "\"\"");
        sb_str(&b, ",\"service\":");
        sb_json(&b, s->service);
        sb_str(&b, ",\"name\":");
        sb_json(&b, s->name);
        sb_fmt(&b, ",\"kind\":\"%s\",\"start_us\":%llu,\"duration_us\":%llu,\"status\":\"%s\",",
               rc_span_kind_name(s->kind), (unsigned long long)(s->start_ns / 1000),
               (unsigned long long)(s->end_ns > s->start_ns ? (s->end_ns - s->start_ns) / 1000 : 0),
               rc_status_name(s->status_code));
        sb_str(&b, "\"status_message\":");
        sb_json(&b, s->status_message);
        sb_str(&b, ",\"attributes\":");
        json_attrs(&b, s->attrs, s->nattrs);
        sb_str(&b, ",\"events\":[");
        for (size_t e = 0; e < s->nevents; e++) {
            const rc_event_t *ev = &s->events[e];
            sb_str(&b, e ? ",{\"name\":" : "{\"name\":");
            sb_json(&b, ev->name);
            sb_fmt(&b,
                   ",\"time_us\":%llu,\"attributes\":", (unsigned long long)(ev->time_ns / 1000));
            json_attrs(&b, ev->attrs, ev->nattrs);
            sb_str(&b, "}");
        }
        sb_str(&b, "]}");
    }
    sb_str(&b, "]}\n");
    rc_spans_free(spans, n);
    set_json(r, q, &b);
}

static void route_stats(const req_t *q, rc_store_t *store, resp_t *r)
{
    rc_store_stats_t st;
    rc_store_stats(store, &st);
    int conns;
    pthread_mutex_lock(&reg.mu);
    conns = reg.active;
    pthread_mutex_unlock(&reg.mu);
    sb_t b = {0};
#define U(x) (unsigned long long)(x)
    sb_fmt(&b, "{\"spans\":%llu,\"traces\":%llu,\"bytes\":%llu,\"max_spans\":%llu,", U(st.spans),
           U(st.traces), U(st.bytes), U(st.max_spans));
    sb_fmt(&b, "\"accepted\":%llu,\"rejected\":%llu,\"duplicates\":%llu,\"bad_bodies\":%llu,",
           U(st.accepted), U(st.rejected), U(st.duplicates), U(st.bad_bodies));
    sb_fmt(&b, "\"evicted_traces\":%llu,\"evicted_spans\":%llu,\"loaded_spans\":%llu,",
           U(st.evicted_traces), U(st.evicted_spans), U(st.loaded_spans));
    sb_fmt(&b, "\"log_records\":%llu,\"log_errors\":%llu,\"connections\":%d}\n", U(st.log_records),
           U(st.log_errors), conns);
#undef U
    set_json(r, q, &b);
}

/* Inflates a gzip body (one or more members) into out, at most RC_BODY_MAX bytes: a small
 * body that inflates past that (a compression bomb) is refused, not followed. NULL, or why
 * the body is refused. */
static const char *gunzip(const char *in, size_t n, sb_t *out)
{
    z_stream z = {0};
    if (inflateInit2(&z, 15 + 32) != Z_OK) /* 15 + 32: a gzip or zlib header */
        return "out of memory";
    const char *why = NULL;
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)n;
    for (;;) {
        if (out->len == out->cap) {
            size_t cap = out->cap ? out->cap * 2 : (n < 4096 ? 16384 : n * 4);
            if (cap > RC_BODY_MAX)
                cap = RC_BODY_MAX;
            if (cap <= out->len) {
                why = "request body larger than 16 MiB once decompressed";
                break;
            }
            char *p = realloc(out->p, cap);
            if (!p) {
                why = "out of memory";
                break;
            }
            out->p = p;
            out->cap = cap;
        }
        z.next_out = (Bytef *)out->p + out->len;
        z.avail_out = (uInt)(out->cap - out->len);
        int rc = inflate(&z, Z_NO_FLUSH);
        out->len = out->cap - z.avail_out;
        if (rc == Z_STREAM_END) {
            if (!z.avail_in)
                break;
            /* another gzip member follows */
            if (inflateReset(&z) != Z_OK) {
                why = "malformed gzip body";
                break;
            }
            continue;
        }
        if (rc == Z_BUF_ERROR && !z.avail_in) {
            why = "truncated gzip body";
            break;
        }
        if (rc != Z_OK && rc != Z_BUF_ERROR) {
            why = "malformed gzip body";
            break;
        }
    }
    inflateEnd(&z);
    return why;
}

static void route_otlp(conn_t *c, const req_t *q, const char *body, size_t blen, resp_t *r)
{
    uint64_t rejected = 0;
    char err[256];
    long n = rc_store_add_otlp_ex(c->store, body, blen, &rejected, err, sizeof(err));
    if (n < 0) {
        LOG_SOME(bad_otlp, "POST /v1/traces from %s: %s", c->peer, err);
        set_error(r, q, 400, err);
        return;
    }
    if (rejected)
        LOG_SOME(rejected_otlp, "POST /v1/traces from %s: %s", c->peer, err);
    Opentelemetry__Proto__Collector__Trace__V1__ExportTraceServiceResponse resp =
        OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_SERVICE_RESPONSE__INIT;
    Opentelemetry__Proto__Collector__Trace__V1__ExportTracePartialSuccess partial =
        OPENTELEMETRY__PROTO__COLLECTOR__TRACE__V1__EXPORT_TRACE_PARTIAL_SUCCESS__INIT;
    if (rejected) {
        partial.rejected_spans = (int64_t)rejected;
        partial.error_message = err;
        resp.partial_success = &partial;
    }
    size_t len =
        opentelemetry__proto__collector__trace__v1__export_trace_service_response__get_packed_size(
            &resp);
    uint8_t *out = malloc(len ? len : 1);
    if (!out) {
        set_error(r, q, 500, "out of memory");
        return;
    }
    opentelemetry__proto__collector__trace__v1__export_trace_service_response__pack(&resp, out);
    r->status = 200;
    r->ctype = "application/x-protobuf";
    r->owned = (char *)out;
    r->body = (char *)out;
    r->blen = len;
}

static const rc_web_file_t *web_file(const char *name)
{
    for (size_t i = 0; i < rc_web_nfiles; i++)
        if (strcmp(rc_web_files[i].name, name) == 0)
            return &rc_web_files[i];
    return NULL;
}

enum route { R_NONE, R_OTLP, R_LIST, R_TRACE, R_STATS, R_HEALTH, R_FILE };

/* Which route serves path; *file gets the page file for R_FILE. */
static enum route route_of(const char *path, const rc_web_file_t **file)
{
    uint8_t id[RC_TRACE_ID_LEN];
    *file = NULL;
    if (strcmp(path, "/v1/traces") == 0)
        return R_OTLP;
    if (strcmp(path, "/api/traces") == 0)
        return R_LIST;
    if (strncmp(path, "/api/traces/", 12) == 0)
        return R_TRACE;
    if (strcmp(path, "/api/stats") == 0)
        return R_STATS;
    if (strcmp(path, "/healthz") == 0)
        return R_HEALTH;
    if (strcmp(path, "/") == 0 ||
        (strncmp(path, "/trace/", 7) == 0 && parse_trace_id(path + 7, id) == 0)) {
        *file = web_file("index.html");
        return *file ? R_FILE : R_NONE;
    }
    if (path[0] == '/' && path[1] && !strchr(path + 1, '/')) {
        *file = web_file(path + 1);
        return *file ? R_FILE : R_NONE;
    }
    return R_NONE;
}

/* The media type of a Content-Type value, without parameters, is application/x-protobuf. */
static int is_protobuf(const char *ct)
{
    if (!ct)
        return 0;
    static const char want[] = "application/x-protobuf";
    size_t n = sizeof(want) - 1;
    if (strncasecmp(ct, want, n) != 0)
        return 0;
    const char *rest = ct + n;
    while (*rest == ' ' || *rest == '\t')
        rest++;
    return *rest == 0 || *rest == ';';
}

/* Decodes a chunked body that starts at *pos into body. 0, or the status to answer with. */
static int read_chunked(conn_t *c, size_t start, size_t *pos, sb_t *body)
{
    size_t p = *pos;
    for (;;) {
        /* chunk-size [ chunk-ext ] CRLF */
        char *nl;
        while (!(nl = memchr(c->buf + p, '\n', c->len - p))) {
            if (c->len - p > RC_LINE_MAX || fill(c, RC_READ_MAX) <= 0)
                return c->len - p > RC_LINE_MAX ? 400 : -1;
        }
        size_t line_end = (size_t)(nl - c->buf);
        if (line_end - p > RC_LINE_MAX)
            return 400;
        uint64_t size = 0;
        size_t i = p, digits = 0;
        while (i < line_end && hexval((unsigned char)c->buf[i]) >= 0) {
            if (size > (RC_BODY_MAX + 1ull))
                return 413;
            size = size * 16 + (uint64_t)hexval((unsigned char)c->buf[i]);
            i++;
            digits++;
        }
        if (digits == 0)
            return 400;
        while (i < line_end && (c->buf[i] == ' ' || c->buf[i] == '\t'))
            i++;
        if (i < line_end && c->buf[i] != ';' && !(c->buf[i] == '\r' && i + 1 == line_end))
            return 400;
        if (size > RC_BODY_MAX - body->len)
            return 413;
        p = line_end + 1;
        if (size == 0) {
            /* trailer fields, then the blank line */
            size_t trailers = 0;
            for (;;) {
                while (!(nl = memchr(c->buf + p, '\n', c->len - p))) {
                    if (c->len - p > RC_LINE_MAX || fill(c, RC_READ_MAX) <= 0)
                        return c->len - p > RC_LINE_MAX ? 400 : -1;
                }
                size_t l = (size_t)(nl - (c->buf + p));
                trailers += l + 1;
                if (trailers > RC_HEAD_MAX)
                    return 431;
                p += l + 1;
                if (l == 0 || (l == 1 && c->buf[p - 2] == '\r'))
                    break;
            }
            *pos = p;
            return 0;
        }
        if (need(c, p + size + 1) < 0)
            return -1;
        sb_add(body, c->buf + p, size);
        if (body->oom)
            return 500;
        p += size;
        if (c->buf[p] == '\r') {
            if (need(c, p + 2) < 0)
                return -1;
            p++;
        }
        if (c->buf[p] != '\n')
            return 400;
        p++;
        /* Drop what has been decoded so that the raw buffer stays small. */
        if (p - start > (256u << 10)) {
            memmove(c->buf + start, c->buf + p, c->len - p);
            c->len -= p - start;
            p = start;
        }
    }
}

/* Finds the end of the request head (after its blank line). Returns 1 with *end, 0 on a clean
 * EOF or timeout before any byte, -1 on EOF/error mid-head, -2 when the head is too large. */
static int read_head(conn_t *c, size_t *end)
{
    size_t scanned = 0;
    for (;;) {
        /* Empty lines before a request line are ignored (RFC 9112 2.2). */
        size_t skip = 0;
        while (skip < c->len && (c->buf[skip] == '\r' || c->buf[skip] == '\n'))
            skip++;
        if (skip) {
            memmove(c->buf, c->buf + skip, c->len - skip);
            c->len -= skip;
            scanned = 0;
        }
        for (size_t i = scanned > 0 ? scanned : 1; i < c->len; i++) {
            if (c->buf[i] == '\n' && (c->buf[i - 1] == '\n' ||
                                      (c->buf[i - 1] == '\r' && i >= 2 && c->buf[i - 2] == '\n'))) {
                if (i + 1 > RC_HEAD_MAX)
                    return -2;
                *end = i + 1;
                return 1;
            }
        }
        scanned = c->len > 2 ? c->len - 2 : 0;
        if (c->len > RC_HEAD_MAX)
            return -2;
        ssize_t r = fill(c, 16384);
        if (r <= 0)
            return c->len == 0 ? 0 : -1;
    }
}

/* Serves HTTP/1.1 requests until the connection ends. */
static void serve_http(conn_t *c)
{
    for (;;) {
        size_t head_end;
        int hr = read_head(c, &head_end);
        if (hr == 0 || hr == -1)
            return;
        req_t q;
        resp_t r = {0};
        const char *why = NULL;
        if (hr == -2) {
            memset(&q, 0, sizeof(q));
            set_error(&r, NULL, 431, "request head larger than 64 KiB");
            r.close = 1;
            send_resp(c, NULL, &r);
            free(r.owned);
            lingering_close(c);
            return;
        }
        if (head_end > c->head_cap) {
            char *h = realloc(c->head, head_end);
            if (!h)
                return;
            c->head = h;
            c->head_cap = head_end;
        }
        memcpy(c->head, c->buf, head_end);
        int st = parse_head(c->head, head_end, &q, &why);
        if (st) {
            set_error(&r, q.path ? &q : NULL, st, why);
            r.close = 1;
            send_resp(c, NULL, &r);
            RMR_DEBUG("%s: %d %s", c->peer, st, why);
            free(r.owned);
            lingering_close(c);
            return;
        }

        const rc_web_file_t *file;
        enum route rt = route_of(q.path, &file);
        int is_get = !strcmp(q.method, "GET") || !strcmp(q.method, "HEAD");
        int has_body = q.chunked || (q.has_cl && q.cl > 0);
        /* Checks that need no body. */
        st = 0;
        if (rt == R_NONE) {
            st = 404;
            why = "not found";
        } else if (rt == R_OTLP && strcmp(q.method, "POST") != 0) {
            st = 405;
            why = "POST an OTLP ExportTraceServiceRequest here";
            r.allow = "POST";
        } else if (rt != R_OTLP && !is_get) {
            st = 405;
            why = "method not allowed";
            r.allow = "GET, HEAD";
        } else if (q.has_cl && q.cl > RC_BODY_MAX) {
            st = 413;
            why = "request body larger than 16 MiB";
        } else if (rt == R_OTLP && q.cenc && strcasecmp(q.cenc, "identity") != 0 &&
                   strcasecmp(q.cenc, "gzip") != 0) {
            st = 415;
            why = "Content-Encoding must be gzip or identity";
        } else if (rt == R_OTLP && !is_protobuf(q.ctype)) {
            st = 415;
            why = "Content-Type must be application/x-protobuf (OTLP/HTTP binary protobuf)";
        }
        if (st) {
            const char *allow = r.allow;
            set_error(&r, &q, st, why);
            r.allow = allow;
            /* A small declared body is read and dropped so that the connection can go on. */
            int drop = has_body && !q.chunked && !q.expect_continue && q.cl <= (1u << 20) &&
                       need(c, head_end + q.cl) == 0;
            r.close = !q.keep_alive || (has_body && !drop);
            int ok = send_resp(c, &q, &r) == 0;
            RMR_DEBUG("%s: %s %s -> %d", c->peer, q.method, q.path, st);
            free(r.owned);
            if (!ok)
                return;
            if (r.close) {
                lingering_close(c);
                return;
            }
            size_t used = head_end + (drop ? q.cl : 0);
            memmove(c->buf, c->buf + used, c->len - used);
            c->len -= used;
            continue;
        }

        /* The body. */
        const char *body = NULL;
        size_t blen = 0, used = head_end;
        sb_t chunked = {0};
        if (has_body && q.expect_continue && c->len == head_end) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            struct iovec v = {(void *)cont, sizeof(cont) - 1};
            if (send_all(c->fd, &v, 1) < 0)
                return;
        }
        if (q.chunked) {
            size_t pos = head_end;
            st = read_chunked(c, head_end, &pos, &chunked);
            if (st) {
                free(chunked.p);
                if (st < 0)
                    return;
                set_error(&r, &q, st,
                          st == 413   ? "request body larger than 16 MiB"
                          : st == 431 ? "trailer fields larger than 64 KiB"
                          : st == 500 ? "out of memory"
                                      : "malformed chunked body");
                r.close = 1;
                send_resp(c, &q, &r);
                free(r.owned);
                lingering_close(c);
                return;
            }
            body = chunked.p ? chunked.p : "";
            blen = chunked.len;
            used = pos;
        } else if (has_body) {
            if (need(c, head_end + q.cl) < 0)
                return;
            body = c->buf + head_end;
            blen = q.cl;
            used = head_end + q.cl;
        }

        switch (rt) {
        case R_OTLP:
            if (q.cenc && !strcasecmp(q.cenc, "gzip")) {
                sb_t plain = {0};
                const char *bad = gunzip(body ? body : "", blen, &plain);
                if (bad) {
                    set_error(&r, &q, strstr(bad, "larger") ? 413 : 400, bad);
                } else {
                    route_otlp(c, &q, plain.p ? plain.p : "", plain.len, &r);
                }
                free(plain.p);
                break;
            }
            route_otlp(c, &q, body ? body : "", blen, &r);
            break;
        case R_LIST:
            route_list(&q, c->store, &r);
            break;
        case R_TRACE:
            route_trace(&q, q.path + 12, c->store, &r);
            break;
        case R_STATS:
            route_stats(&q, c->store, &r);
            break;
        case R_HEALTH:
            r.status = 200;
            r.body = "ok";
            r.blen = 2;
            break;
        case R_FILE:
            r.status = 200;
            r.ctype = file->content_type;
            r.body = (const char *)file->data;
            r.blen = file->len;
            r.cache = "no-cache";
            break;
        case R_NONE:
            break;
        }
        free(chunked.p);
        r.close = !q.keep_alive;
        int ok = send_resp(c, &q, &r) == 0;
        RMR_DEBUG("%s: %s %s -> %d (%zu bytes)", c->peer, q.method, q.path, r.status, r.blen);
        free(r.owned);
        if (!ok || r.close)
            return;
        memmove(c->buf, c->buf + used, c->len - used);
        c->len -= used;
        /* After a large body, give the memory back: an idle connection keeps 64 KiB. */
        if (c->cap > (1u << 20) && c->len <= RC_READ_MAX) {
            char *p = realloc(c->buf, RC_READ_MAX);
            if (p) {
                c->buf = p;
                c->cap = RC_READ_MAX;
            }
        }
    }
}

/* Reads until the first bytes tell HTTP/2 (the preface) from HTTP/1.1. 1 HTTP/2, 0 HTTP/1.1,
 * -1 when the connection ended first. */
static int sniff_h2(conn_t *c)
{
    while (c->len < RC_H2_PREFACE_LEN) {
        if (memcmp(c->buf, RC_H2_PREFACE, c->len) != 0)
            return 0;
        if (fill(c, RC_READ_MAX) <= 0)
            return -1;
    }
    return memcmp(c->buf, RC_H2_PREFACE, RC_H2_PREFACE_LEN) == 0;
}

static void *conn_main(void *arg)
{
    conn_t *c = arg;
    rmr_log_set_thread("conn");
    struct timeval tv = {RC_IO_TIMEOUT_S, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

    int h2 = 0;
    if (c->grpc) {
        if (!c->buf) {
            c->buf = malloc(16384);
            c->cap = c->buf ? 16384 : 0;
        }
        h2 = c->buf ? sniff_h2(c) : -1;
    }
    if (h2 == 1) {
        /* The callee closes its descriptor; ours stays registered (and is what rc_http_shutdown
         * shuts down) until we close it below. */
        int gfd = fcntl(c->fd, F_DUPFD_CLOEXEC, 0);
        if (gfd >= 0) {
            RMR_DEBUG("%s: HTTP/2 connection to gRPC", c->peer);
            int ret = rc_grpc_serve(gfd, c->buf, c->len, c->store);
            if (ret < 0)
                RMR_DEBUG("%s: gRPC connection ended: %s", c->peer, strerror(-ret));
        }
    } else if (h2 == 0) {
        serve_http(c);
    }
    int fd = c->fd, slot = c->slot;
    free(c->buf);
    free(c->head);
    free(c);
    reg_del(slot);
    close(fd);
    return NULL;
}

/* ---- listeners ---------------------------------------------------------------------------- */

struct rc_listener {
    char flag[16];
    char addr[INET6_ADDRSTRLEN + 8];
    int fd, grpc, started, stop;
    rc_store_t *store;
    pthread_t thread;
};

static void format_addr(const struct sockaddr *sa, char *out, size_t n)
{
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &s4->sin_addr, host, sizeof(host));
        port = ntohs(s4->sin_port);
        snprintf(out, n, "%s:%u", host, port);
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof(host));
        port = ntohs(s6->sin6_port);
        snprintf(out, n, "[%s]:%u", host, port);
    } else {
        snprintf(out, n, "?");
    }
}

static void start_conn(rc_listener_t *l, int fd, const struct sockaddr *sa)
{
    char peer[INET6_ADDRSTRLEN + 8];
    format_addr(sa, peer, sizeof(peer));
    int slot = reg_add(fd);
    if (slot < 0) {
        LOG_SOME(full, "%s: %d connections open already: closing the one from %s", l->flag,
                 RC_MAX_CONNS, peer);
        close(fd);
        return;
    }
    conn_t *c = calloc(1, sizeof(*c));
    pthread_attr_t attr;
    int ret = ENOMEM;
    if (c) {
        c->fd = fd;
        c->slot = slot;
        c->grpc = l->grpc;
        c->store = l->store;
        memcpy(c->peer, peer, sizeof(peer));
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 1u << 20);
        pthread_t t;
        ret = pthread_create(&t, &attr, conn_main, c);
        pthread_attr_destroy(&attr);
    }
    if (ret != 0) {
        LOG_SOME(nothread, "%s: cannot start a connection thread: %s", l->flag, strerror(ret));
        free(c);
        reg_del(slot);
        close(fd);
    }
}

static void *accept_main(void *arg)
{
    rc_listener_t *l = arg;
    rmr_log_set_thread(l->grpc ? "listen" : "http");
    for (;;) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &sl, SOCK_CLOEXEC);
        if (fd >= 0) {
            start_conn(l, fd, (struct sockaddr *)&ss);
            continue;
        }
        if (__atomic_load_n(&l->stop, __ATOMIC_ACQUIRE))
            break;
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        LOG_SOME(accept_err, "%s %s: accept: %s", l->flag, l->addr, strerror(errno));
        usleep(100000); /* EMFILE and the like: wait for descriptors to free up */
    }
    return NULL;
}

rc_listener_t *rc_listener_new(const char *flag, const char *addr, int grpc, char *err,
                               size_t errlen)
{
    char host[256], port[16];
    const char *colon;
    if (addr[0] == '[') {
        const char *rb = strchr(addr, ']');
        if (!rb || rb[1] != ':' || (size_t)(rb - addr - 1) >= sizeof(host)) {
            snprintf(err, errlen, "%s %s: expected [IPv6]:PORT", flag, addr);
            return NULL;
        }
        memcpy(host, addr + 1, (size_t)(rb - addr - 1));
        host[rb - addr - 1] = 0;
        colon = rb + 1;
    } else {
        colon = strrchr(addr, ':');
        if (!colon || (size_t)(colon - addr) >= sizeof(host) ||
            memchr(addr, ':', (size_t)(colon - addr))) {
            snprintf(err, errlen, "%s %s: expected ADDR:PORT (e.g. 127.0.0.1:4318)", flag, addr);
            return NULL;
        }
        memcpy(host, addr, (size_t)(colon - addr));
        host[colon - addr] = 0;
    }
    const char *ps = colon + 1;
    size_t pl = strlen(ps);
    if (pl == 0 || pl > 5 || strspn(ps, "0123456789") != pl || atoi(ps) > 65535) {
        snprintf(err, errlen, "%s %s: the port must be a number 0..65535", flag, addr);
        return NULL;
    }
    snprintf(port, sizeof(port), "%s", ps);

    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int g = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (g != 0) {
        snprintf(err, errlen, "%s %s: cannot resolve \"%s\": %s", flag, addr, host,
                 g == EAI_SYSTEM ? strerror(errno) : gai_strerror(g));
        return NULL;
    }
    int fd = -1, saved = 0;
    const char *what = "socket";
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            saved = errno;
            what = "socket";
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
            saved = errno;
            what = "cannot bind";
        } else if (listen(fd, 511) < 0) {
            saved = errno;
            what = "cannot listen";
        } else {
            break;
        }
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        snprintf(err, errlen, "%s %s: %s: %s", flag, addr, what, strerror(saved));
        return NULL;
    }
    rc_listener_t *l = calloc(1, sizeof(*l));
    if (!l) {
        close(fd);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    snprintf(l->flag, sizeof(l->flag), "%s", flag);
    l->fd = fd;
    l->grpc = grpc;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        format_addr((struct sockaddr *)&ss, l->addr, sizeof(l->addr));
    else
        snprintf(l->addr, sizeof(l->addr), "%s", addr);
    return l;
}

const char *rc_listener_addr(const rc_listener_t *l)
{
    return l->addr;
}

int rc_listener_start(rc_listener_t *l, rc_store_t *store)
{
    l->store = store;
    int ret = pthread_create(&l->thread, NULL, accept_main, l);
    if (ret != 0)
        return -ret;
    l->started = 1;
    return 0;
}

void rc_listener_free(rc_listener_t *l)
{
    if (!l)
        return;
    if (l->started) {
        __atomic_store_n(&l->stop, 1, __ATOMIC_RELEASE);
        shutdown(l->fd, SHUT_RDWR); /* wakes accept() */
        pthread_join(l->thread, NULL);
    }
    close(l->fd);
    free(l);
}
