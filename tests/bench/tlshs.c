/* tlshs: new TLS handshakes per second against one server, for tests/bench/bench.sh.
 *
 * Usage: tlshs HOST PORT CONNS SECONDS [PATH]
 *
 * Keeps CONNS connections in flight. Each one: TCP connect, a full TLS handshake (no session
 * cache, no tickets: nothing can be resumed), "GET PATH HTTP/1.1" with "Connection: close", the
 * whole response read, then the server's close awaited (so TIME_WAIT stays on the server side)
 * and the socket closed; then a new connection takes its place. The certificate is not verified,
 * so that the client spends as little CPU as it can: the server's side of the handshake (ECDHE
 * and the signature) costs more than the client's (ECDHE only).
 *
 * Prints one line:  handshakes N seconds S rate R failed F resumed U proto P
 * (N: connections that got a whole 200 response and ended within SECONDS; R = N / S; F: the
 * others that ended within SECONDS; U: handshakes that were resumptions, which must be 0;
 * P: the TLS version of the last handshake).
 * Exit status 0 when N > 0 and U == 0.
 *
 * Build: cc -O2 -o tlshs tlshs.c -lssl -lcrypto
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { S_CONNECT, S_HANDSHAKE, S_WRITE, S_READ, S_DRAIN };

typedef struct conn {
    int fd, state;
    SSL *ssl;
    size_t sent, got;
    char buf[16384];
    long need; /* header + body bytes expected; -1 while the head is incomplete */
    int ok;    /* a whole 200 response was read */
    double started;
} conn_t;

static SSL_CTX *ctx;
static struct sockaddr_in sa;
static int ep;
static char req[512];
static size_t req_len;
static long n_ok, n_fail, n_resumed;
static double t_stop; /* connections that end after it are not counted */
static char proto[32] = "-";

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void conn_open(conn_t *c)
{
    memset(c, 0, offsetof(conn_t, buf));
    c->need = -1;
    c->started = now();
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        perror("tlshs: socket");
        exit(2);
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->state = S_CONNECT;
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno != EINPROGRESS) {
        c->state = -1; /* handled by the caller's first event: EPOLLERR/HUP */
    }
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
}

static void conn_close(conn_t *c, int ok)
{
    int counted = now() < t_stop;
    if (counted && ok)
        n_ok++;
    else if (counted)
        n_fail++;
    if (c->ssl) {
        if (counted && SSL_session_reused(c->ssl))
            n_resumed++;
        SSL_free(c->ssl);
    }
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->ssl = NULL;
    c->fd = -1;
}

static void want(conn_t *c, int err)
{
    struct epoll_event ev = {.events = err == SSL_ERROR_WANT_WRITE ? EPOLLOUT : EPOLLIN,
                             .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* parse the head once it is whole: status 200 and Content-Length, or chunked's last chunk */
static void head_check(conn_t *c)
{
    c->buf[c->got < sizeof(c->buf) ? c->got : sizeof(c->buf) - 1] = '\0';
    char *end = strstr(c->buf, "\r\n\r\n");
    if (!end)
        return;
    if (strncmp(c->buf, "HTTP/1.1 200 ", 13) && strncmp(c->buf, "HTTP/1.0 200 ", 13)) {
        c->need = 0; /* not 200: a failure once closed */
        c->ok = -1;
        return;
    }
    const char *cl = strcasestr(c->buf, "\r\ncontent-length:");
    long hl = end + 4 - c->buf;
    c->need = cl && cl < end ? hl + strtol(cl + 17, NULL, 10) : 0;
}

/* advance one connection as far as it goes; returns 1 when it is finished (closed) */
static int step(conn_t *c, uint32_t events)
{
    int r, e;
    if (c->state == -1 || (c->state == S_CONNECT && (events & (EPOLLERR | EPOLLHUP)))) {
        conn_close(c, 0);
        return 1;
    }
    if (c->state == S_CONNECT) {
        int err = 0;
        socklen_t l = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) {
            conn_close(c, 0);
            return 1;
        }
        c->ssl = SSL_new(ctx);
        SSL_set_fd(c->ssl, c->fd);
        SSL_set_tlsext_host_name(c->ssl, "localhost");
        SSL_set_connect_state(c->ssl);
        c->state = S_HANDSHAKE;
    }
    if (c->state == S_HANDSHAKE) {
        r = SSL_do_handshake(c->ssl);
        if (r != 1) {
            e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                want(c, e);
                return 0;
            }
            conn_close(c, 0);
            return 1;
        }
        snprintf(proto, sizeof(proto), "%s", SSL_get_version(c->ssl));
        c->state = S_WRITE;
    }
    if (c->state == S_WRITE) {
        while (c->sent < req_len) {
            r = SSL_write(c->ssl, req + c->sent, (int)(req_len - c->sent));
            if (r <= 0) {
                e = SSL_get_error(c->ssl, r);
                if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
                    want(c, e);
                    return 0;
                }
                conn_close(c, 0);
                return 1;
            }
            c->sent += r;
        }
        c->state = S_READ;
        want(c, SSL_ERROR_WANT_READ);
    }
    for (;;) { /* S_READ and S_DRAIN: read to the server's close */
        char tmp[16384], *dst = tmp;
        size_t room = sizeof(tmp);
        if (c->state == S_READ && c->got < sizeof(c->buf) - 1) {
            dst = c->buf + c->got;
            room = sizeof(c->buf) - 1 - c->got;
        }
        r = SSL_read(c->ssl, dst, (int)room);
        if (r > 0) {
            if (c->state == S_READ) {
                c->got += r;
                if (c->need < 0)
                    head_check(c);
                if (c->need >= 0 && (long)c->got >= c->need) {
                    if (c->ok == 0)
                        c->ok = 1;
                    c->state = S_DRAIN;
                }
            }
            continue;
        }
        e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            want(c, e);
            return 0;
        }
        /* EOF, close_notify or reset: the exchange is over */
        conn_close(c, c->ok == 1);
        return 1;
    }
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: tlshs HOST PORT CONNS SECONDS [PATH]\n");
        return 2;
    }
    int nconn = atoi(argv[3]);
    double secs = atof(argv[4]);
    const char *path = argc > 5 ? argv[5] : "/";
    if (nconn < 1 || secs <= 0) {
        fprintf(stderr, "tlshs: bad CONNS or SECONDS\n");
        return 2;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1) {
        fprintf(stderr, "tlshs: HOST must be an IPv4 address\n");
        return 2;
    }
    req_len =
        (size_t)snprintf(req, sizeof(req),
                         "GET %s HTTP/1.1\r\nHost: localhost\r\nUser-Agent: remora-bench-tlshs\r\n"
                         "Connection: close\r\n\r\n",
                         path);

    ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof(alpn) - 1);

    ep = epoll_create1(EPOLL_CLOEXEC);
    conn_t *cs = calloc((size_t)nconn, sizeof(*cs));
    double t0 = now(), stop = t0 + secs;
    t_stop = stop;
    for (int i = 0; i < nconn; i++)
        conn_open(&cs[i]);
    int live = nconn;
    struct epoll_event evs[256];
    while (live > 0) {
        int n = epoll_wait(ep, evs, 256, 100);
        double t = now();
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c->fd < 0)
                continue;
            if (step(c, evs[i].events)) {
                if (t < stop)
                    conn_open(c);
                else
                    live--;
            }
        }
        if (t >= stop + 2) { /* stragglers after the end (not counted): give up on them */
            for (int i = 0; i < nconn; i++)
                if (cs[i].fd >= 0)
                    conn_close(&cs[i], 0);
            break;
        }
        for (int i = 0; i < nconn; i++) /* one that hangs for 5 s is a failure */
            if (cs[i].fd >= 0 && t - cs[i].started > 5) {
                conn_close(&cs[i], 0);
                if (t < stop)
                    conn_open(&cs[i]);
                else
                    live--;
            }
    }
    double el = secs; /* only the connections that ended within it were counted */
    printf("handshakes %ld seconds %.2f rate %.0f failed %ld resumed %ld proto %s\n", n_ok, el,
           n_ok / el, n_fail, n_resumed, proto);
    return n_ok > 0 && n_resumed == 0 ? 0 : 1;
}
