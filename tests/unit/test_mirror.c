/*
 * Unit test of proxy/mirror.c on a real io_uring against small TCP servers on 127.0.0.1, each
 * driven by poll in a thread of its own: the exact bytes arrive (and are a copy), limits on count
 * and bytes drop what does not fit, every shadow started ends in exactly one outcome, a refused
 * connect and a reset fail, a silent target and one that never reads a 1 MiB request time out
 * and see the connection closed, a target that answers and keeps the connection open counts as
 * completed, a full submission queue drops, and rmr_mirror_free with shadows in flight frees
 * everything (run under -Db_sanitize=address,undefined to see it). Exits 77 (skipped) when
 * io_uring cannot be set up here. Prints one line per check; exits 1 when any check fails.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "remora/loop.h"
#include "remora/mirror.h"

#include "check.h"

static rmr_loop_t loop;

/* What the instances freed so far had counted, to check the process-wide totals. */
static rmr_mirror_stats_t past;

/* ---- the test server ---- */

typedef enum {
    SV_RESPOND,   /* read the request, wait delay_ms, write resp, close */
    SV_KEEP_OPEN, /* read the request, write resp, keep the connection open */
    SV_SILENT,    /* read everything, never answer, never close */
    SV_NO_READ,   /* accept, never read */
    SV_RESET,     /* read the request, close with a reset */
} sv_mode_t;

#define SV_CONNS 512
#define SV_CAPTURE (512 * 1024)

typedef struct sv_conn {
    int fd;
    size_t got;
    uint64_t ready_at; /* ms when the request was whole + delay; 0: not yet whole */
    int answered;
} sv_conn_t;

typedef struct server {
    int lfd, port;
    int stop[2];
    pthread_t th;
    sv_mode_t mode;
    size_t expect; /* request length */
    int delay_ms;
    const char *resp;
    /* results, read by the test with atomic loads */
    int accepted, requests, peer_closed;
    char *capture; /* the first connection's bytes, up to SV_CAPTURE */
    size_t captured;
    sv_conn_t c[SV_CONNS];
    int nc;
} server_t;

static int ld(const int *p)
{
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}

static void inc(int *p)
{
    __atomic_add_fetch(p, 1, __ATOMIC_RELEASE);
}

static void sv_drop(server_t *sv, int i, int reset)
{
    if (reset) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(sv->c[i].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    close(sv->c[i].fd);
    sv->c[i] = sv->c[--sv->nc];
}

static void *sv_run(void *arg)
{
    server_t *sv = arg;
    struct pollfd pf[SV_CONNS + 2];
    char buf[65536];
    for (;;) {
        int np = 0;
        pf[np++] = (struct pollfd){.fd = sv->stop[0], .events = POLLIN};
        pf[np++] = (struct pollfd){.fd = sv->lfd, .events = POLLIN};
        int waiting = 0;
        for (int i = 0; i < sv->nc; i++) {
            short ev = sv->mode == SV_NO_READ ? 0 : POLLIN; /* HUP and ERR come anyway */
            pf[np++] = (struct pollfd){.fd = sv->c[i].fd, .events = ev};
            if (sv->c[i].ready_at && !sv->c[i].answered)
                waiting = 1;
        }
        int nconn = sv->nc;
        if (poll(pf, (nfds_t)np, waiting ? 5 : 50) < 0 && errno != EINTR)
            break;
        if (pf[0].revents)
            break;
        /* connections, last first so that sv_drop's swap keeps the indices valid */
        for (int i = nconn - 1; i >= 0; i--) {
            sv_conn_t *c = &sv->c[i];
            short re = pf[2 + i].revents;
            if (sv->mode == SV_NO_READ) {
                if (re & (POLLHUP | POLLERR)) {
                    inc(&sv->peer_closed);
                    sv_drop(sv, i, 0);
                }
                continue;
            }
            if (re & (POLLIN | POLLHUP | POLLERR)) {
                ssize_t r = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
                if (r > 0) {
                    if (sv->accepted == 1 && sv->captured < SV_CAPTURE) {
                        size_t k = (size_t)r < SV_CAPTURE - sv->captured
                                       ? (size_t)r
                                       : SV_CAPTURE - sv->captured;
                        memcpy(sv->capture + sv->captured, buf, k);
                        sv->captured += k;
                    }
                    c->got += (size_t)r;
                    if (!c->ready_at && c->got >= sv->expect) {
                        c->ready_at = rmr_clock_ms() + (uint64_t)sv->delay_ms;
                        inc(&sv->requests);
                    }
                } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                    inc(&sv->peer_closed);
                    sv_drop(sv, i, 0);
                    continue;
                }
            }
            if (c->ready_at && !c->answered && rmr_clock_ms() >= c->ready_at) {
                c->answered = 1;
                if (sv->mode == SV_RESET) {
                    sv_drop(sv, i, 1);
                    continue;
                }
                if (sv->mode == SV_SILENT)
                    continue;
                ssize_t w = send(c->fd, sv->resp, strlen(sv->resp), MSG_NOSIGNAL);
                (void)w;
                if (sv->mode == SV_RESPOND)
                    sv_drop(sv, i, 0);
            }
        }
        if (pf[1].revents & POLLIN) {
            for (;;) {
                int fd = accept4(sv->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0)
                    break;
                if (sv->nc == SV_CONNS) {
                    close(fd);
                    continue;
                }
                /* only the first connection is captured: while accepted is 1 */
                sv->c[sv->nc++] = (sv_conn_t){.fd = fd};
                inc(&sv->accepted);
            }
        }
    }
    for (int i = 0; i < sv->nc; i++)
        close(sv->c[i].fd);
    sv->nc = 0;
    return NULL;
}

static const char resp_ok[] = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

static server_t *sv_start(sv_mode_t mode, size_t expect, int delay_ms, const char *resp)
{
    server_t *sv = calloc(1, sizeof(*sv));
    sv->mode = mode;
    sv->expect = expect;
    sv->delay_ms = delay_ms;
    sv->resp = resp ? resp : resp_ok;
    sv->capture = malloc(SV_CAPTURE);
    sv->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(sv->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (mode == SV_NO_READ) {
        /* A small window and a small MSS (the SYN-ACK caps the sender's), so that a large
         * request fills what the kernels buffer and the sender's send waits: loopback's 64 KiB
         * MSS would let the sender's buffer grow past a few MiB at once. */
        int small = 4096, mss = 1000;
        setsockopt(sv->lfd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
        setsockopt(sv->lfd, IPPROTO_TCP, TCP_MAXSEG, &mss, sizeof(mss));
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    if (bind(sv->lfd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(sv->lfd, 1024) < 0 ||
        getsockname(sv->lfd, (struct sockaddr *)&a, &alen) < 0) {
        perror("server");
        exit(1);
    }
    sv->port = ntohs(a.sin_port);
    if (pipe(sv->stop) < 0 || pthread_create(&sv->th, NULL, sv_run, sv) != 0) {
        perror("server");
        exit(1);
    }
    return sv;
}

static void sv_stop(server_t *sv)
{
    ssize_t w = write(sv->stop[1], "x", 1);
    (void)w;
    pthread_join(sv->th, NULL);
    close(sv->stop[0]);
    close(sv->stop[1]);
    close(sv->lfd);
    free(sv->capture);
    free(sv);
}

static struct sockaddr_in addr_of(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    return a;
}

/* A port nothing listens on: bound, then closed. */
static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = addr_of(0);
    socklen_t alen = sizeof(a);
    bind(fd, (struct sockaddr *)&a, sizeof(a));
    getsockname(fd, (struct sockaddr *)&a, &alen);
    close(fd);
    return ntohs(a.sin_port);
}

/* ---- helpers ---- */

static rmr_mirror_stats_t stats(const rmr_mirror_t *m)
{
    rmr_mirror_stats_t s;
    rmr_mirror_get_stats(m, &s);
    return s;
}

/* Runs turns (each waiting at most 10 ms) until m has nothing in flight or limit_ms passes. */
static void drain(rmr_mirror_t *m, uint64_t limit_ms)
{
    uint64_t end = rmr_clock_ms() + limit_ms;
    while (stats(m).inflight && rmr_clock_ms() < end)
        rmr_loop_turn(&loop, 10);
}

/* Runs turns until *p reaches want or limit_ms passes. */
static void turn_until_count(const int *p, int want, uint64_t limit_ms)
{
    uint64_t end = rmr_clock_ms() + limit_ms;
    while (ld(p) < want && rmr_clock_ms() < end)
        rmr_loop_turn(&loop, 10);
}

/* Waits (without the loop) until *p reaches want or limit_ms passes. */
static void wait_count(const int *p, int want, uint64_t limit_ms)
{
    uint64_t end = rmr_clock_ms() + limit_ms;
    while (ld(p) < want && rmr_clock_ms() < end) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* Frees m, adding its counts to past first (those it cancels are added as failed). */
static void mirror_free(rmr_mirror_t *m)
{
    rmr_mirror_stats_t s = stats(m);
    past.sent += s.sent;
    past.dropped += s.dropped;
    past.completed += s.completed;
    past.failed += s.failed + s.inflight;
    past.timeouts += s.timeouts;
    rmr_mirror_free(m);
}

/* "POST /mirror HTTP/1.1" with a body of blen bytes of a pattern; the caller frees it. */
static char *make_req(size_t blen, size_t *n)
{
    char head[256];
    int hl = snprintf(head, sizeof(head),
                      "POST /mirror HTTP/1.1\r\nhost: shadow.test\r\nx-remora-shadow: 1\r\n"
                      "content-length: %zu\r\nconnection: close\r\n\r\n",
                      blen);
    char *r = malloc((size_t)hl + blen);
    memcpy(r, head, (size_t)hl);
    for (size_t i = 0; i < blen; i++)
        r[hl + i] = (char)('a' + (i * 7 + i / 251) % 26);
    *n = (size_t)hl + blen;
    return r;
}

/* ---- tests ---- */

static void test_exact_bytes(void)
{
    size_t blens[] = {5, 300 * 1024};
    for (int k = 0; k < 2; k++) {
        size_t n;
        char *req = make_req(blens[k], &n);
        char *want = malloc(n);
        memcpy(want, req, n);
        server_t *sv = sv_start(SV_RESPOND, n, 0, NULL);
        rmr_mirror_t *m = rmr_mirror_new(&loop, 0, 0);
        CHECK(m != NULL);
        struct sockaddr_in a = addr_of(sv->port);
        CHECK_INT(rmr_mirror_send(m, (struct sockaddr *)&a, sizeof(a), req, n, 5000), 0);
        /* the shadow holds a copy: the caller's buffer and address may go at once */
        memset(req, 'X', n);
        free(req);
        memset(&a, 0, sizeof(a));
        rmr_mirror_stats_t s = stats(m);
        CHECK_INT(s.sent, 1);
        CHECK_INT(s.inflight, 1);
        CHECK_INT(s.bytes, n);
        drain(m, 5000);
        s = stats(m);
        CHECK_INT(s.inflight, 0);
        CHECK_INT(s.bytes, 0);
        CHECK_INT(s.completed, 1);
        CHECK_INT(s.failed + s.timeouts + s.dropped, 0);
        CHECK_INT(ld(&sv->requests), 1);
        CHECK_INT(sv->captured, n);
        CHECK(sv->captured == n && !memcmp(sv->capture, want, n));
        free(want);
        mirror_free(m);
        sv_stop(sv);
    }
}

static void test_limits(void)
{
    /* 200 shadows as fast as they come, to a server that answers each after 300 ms: the first
     * 64 go, the rest are dropped until some end. */
    size_t n;
    char *req = make_req(100, &n);
    server_t *sv = sv_start(SV_RESPOND, n, 300, NULL);
    rmr_mirror_t *m = rmr_mirror_new(&loop, 64, 0);
    struct sockaddr_in a = addr_of(sv->port);
    int ok = 0, bad = 0, over = 0;
    for (int i = 0; i < 200; i++) {
        int r = rmr_mirror_send(m, (struct sockaddr *)&a, sizeof(a), req, n, 5000);
        if (r == 0)
            ok++;
        else if (r == -1)
            bad++;
        rmr_mirror_stats_t s = stats(m);
        if (s.inflight > 64 || s.bytes != (size_t)s.inflight * n)
            over++;
        if (i % 8 == 7)
            rmr_loop_turn(&loop, 0);
    }
    rmr_mirror_stats_t s = stats(m);
    printf("     200 shadows: %d sent, %d dropped\n", ok, bad);
    CHECK_INT(ok + bad, 200);
    CHECK_INT(s.sent, ok);
    CHECK_INT(s.dropped, bad);
    CHECK(s.sent >= 64);
    CHECK(s.dropped > 0);
    CHECK_INT(s.sent + s.dropped, 200);
    CHECK_INT(over, 0);
    drain(m, 10000);
    s = stats(m);
    CHECK_INT(s.inflight, 0);
    CHECK_INT(s.bytes, 0);
    CHECK_INT(s.completed + s.failed + s.timeouts, s.sent);
    CHECK_INT(s.completed, s.sent); /* the 5 s timeout is far beyond the 300 ms answers */
    CHECK_INT(ld(&sv->requests), (int)s.sent);
    mirror_free(m);
    sv_stop(sv);

    /* Bytes: 300-byte requests under a 1000-byte cap: three fit, the fourth does not; one larger
     * than the cap never fits. A silent server keeps them in flight. */
    static char r300[300], r1001[1001];
    memset(r300, 'x', sizeof(r300));
    memset(r1001, 'y', sizeof(r1001));
    n = sizeof(r300);
    sv = sv_start(SV_SILENT, n, 0, NULL);
    a = addr_of(sv->port);
    m = rmr_mirror_new(&loop, 64, 1000);
    for (int i = 0; i < 3; i++)
        CHECK_INT(rmr_mirror_send(m, (struct sockaddr *)&a, sizeof(a), r300, n, 5000), 0);
    CHECK_INT(rmr_mirror_send(m, (struct sockaddr *)&a, sizeof(a), r300, n, 5000), -1);
    CHECK_INT(stats(m).bytes, 900);
    CHECK_INT(rmr_mirror_send(m, (struct sockaddr *)&a, sizeof(a), r300, 100, 5000), 0);
    CHECK_INT(stats(m).bytes, 1000);
    CHECK_INT(rmr_mirror_send(m, (struct sockaddr *)&a, sizeof(a), r300, 1, 5000), -1);
    /* bad input is dropped, not a crash */
    CHECK_INT(rmr_mirror_send(m, (struct sockaddr *)&a, sizeof(a), r300, 0, 5000), -1);
    CHECK_INT(rmr_mirror_send(m, NULL, sizeof(a), r300, 10, 5000), -1);
    CHECK_INT(rmr_mirror_send(m, (struct sockaddr *)&a, 1000, r300, 10, 5000), -1);
    rmr_mirror_stats_t s2 = stats(m);
    CHECK_INT(s2.sent, 4);
    CHECK_INT(s2.dropped, 5);
    CHECK_INT(s2.inflight, 4);
    turn_until_count(&sv->requests, 3, 5000);
    CHECK(ld(&sv->requests) >= 3);
    mirror_free(m); /* four in flight, cancelled */
    m = rmr_mirror_new(&loop, 64, 1000);
    CHECK_INT(rmr_mirror_send(m, (struct sockaddr *)&a, sizeof(a), r1001, 1001, 5000), -1);
    CHECK_INT(stats(m).dropped, 1);
    mirror_free(m);
    sv_stop(sv);
    free(req);
}

/* One shadow to port: checks its single outcome. */
static void one(int port, size_t blen, uint32_t timeout_ms, uint64_t completed, uint64_t failed,
                uint64_t timeouts)
{
    size_t n;
    char *req = make_req(blen, &n);
    rmr_mirror_t *m = rmr_mirror_new(&loop, 0, 0);
    struct sockaddr_in a = addr_of(port);
    uint64_t t0 = rmr_clock_ms();
    CHECK_INT(rmr_mirror_send(m, (struct sockaddr *)&a, sizeof(a), req, n, timeout_ms), 0);
    free(req);
    drain(m, 5000);
    uint64_t took = rmr_clock_ms() - t0;
    rmr_mirror_stats_t s = stats(m);
    printf("     ended after %llu ms\n", (unsigned long long)took);
    CHECK_INT(s.inflight, 0);
    CHECK_INT(s.bytes, 0);
    CHECK_INT(s.sent, 1);
    CHECK_INT(s.completed, completed);
    CHECK_INT(s.failed, failed);
    CHECK_INT(s.timeouts, timeouts);
    mirror_free(m);
}

static void test_refused(void)
{
    one(closed_port(), 10, 5000, 0, 1, 0);
}

static void test_reset(void)
{
    size_t n;
    char *req = make_req(10, &n);
    free(req);
    server_t *sv = sv_start(SV_RESET, n, 0, NULL);
    one(sv->port, 10, 5000, 0, 1, 0);
    CHECK_INT(ld(&sv->requests), 1);
    sv_stop(sv);
}

static void test_not_http(void)
{
    /* EOF before a status line: failed */
    size_t n;
    free(make_req(10, &n));
    server_t *sv = sv_start(SV_RESPOND, n, 0, "SSH-2.0-OpenSSH\r\n");
    one(sv->port, 10, 5000, 0, 1, 0);
    sv_stop(sv);
    /* an empty answer: failed */
    sv = sv_start(SV_RESPOND, n, 0, "");
    one(sv->port, 10, 5000, 0, 1, 0);
    sv_stop(sv);
}

static void test_silent(void)
{
    size_t n;
    free(make_req(10, &n));
    server_t *sv = sv_start(SV_SILENT, n, 0, NULL);
    one(sv->port, 10, 300, 0, 0, 1);
    CHECK_INT(ld(&sv->requests), 1);
    wait_count(&sv->peer_closed, 1, 3000);
    CHECK_INT(ld(&sv->peer_closed), 1); /* the timeout closed the connection */
    sv_stop(sv);
}

static void test_no_read(void)
{
    size_t n;
    free(make_req(1 << 20, &n));
    server_t *sv = sv_start(SV_NO_READ, n, 0, NULL);
    one(sv->port, 1 << 20, 400, 0, 0, 1);
    CHECK_INT(ld(&sv->accepted), 1);
    wait_count(&sv->peer_closed, 1, 3000);
    CHECK_INT(ld(&sv->peer_closed), 1);
    sv_stop(sv);
}

static void test_keep_open(void)
{
    /* answered, then the connection stays open: the timeout closes it, counted completed */
    size_t n;
    free(make_req(10, &n));
    server_t *sv = sv_start(SV_KEEP_OPEN, n, 0, NULL);
    one(sv->port, 10, 300, 1, 0, 0);
    wait_count(&sv->peer_closed, 1, 3000);
    CHECK_INT(ld(&sv->peer_closed), 1);
    sv_stop(sv);
    /* the status line alone is enough */
    sv = sv_start(SV_KEEP_OPEN, n, 0, "HTTP/1.1 200 OK\r\n");
    one(sv->port, 10, 300, 1, 0, 0);
    sv_stop(sv);
}

static void test_free_in_flight(void)
{
    /* Shadows in every state: connected and waiting for an answer, blocked in a 1 MiB send,
     * queued but not even submitted. rmr_mirror_free cancels them all and returns. */
    size_t n, nbig;
    char *req = make_req(10, &n);
    char *big = make_req(1 << 20, &nbig);
    server_t *silent = sv_start(SV_SILENT, n, 0, NULL);
    server_t *noread = sv_start(SV_NO_READ, nbig, 0, NULL);
    rmr_mirror_stats_t t0;
    rmr_mirror_totals(&t0);
    rmr_mirror_t *m = rmr_mirror_new(&loop, 0, 8u << 20);
    struct sockaddr_in as = addr_of(silent->port), an = addr_of(noread->port);
    for (int i = 0; i < 10; i++)
        CHECK_INT(rmr_mirror_send(m, (struct sockaddr *)&as, sizeof(as), req, n, 10000), 0);
    for (int i = 0; i < 3; i++)
        CHECK_INT(rmr_mirror_send(m, (struct sockaddr *)&an, sizeof(an), big, nbig, 10000), 0);
    turn_until_count(&silent->requests, 10, 5000);
    CHECK_INT(ld(&silent->requests), 10);
    turn_until_count(&noread->accepted, 3, 5000);
    CHECK_INT(ld(&noread->accepted), 3);
    for (int i = 0; i < 5; i++)
        CHECK_INT(rmr_mirror_send(m, (struct sockaddr *)&as, sizeof(as), req, n, 10000), 0);
    rmr_mirror_stats_t s = stats(m);
    CHECK_INT(s.inflight, 18);
    CHECK_INT(s.bytes, 15 * n + 3 * nbig);
    rmr_mirror_totals(&t0);
    CHECK_INT(t0.inflight, 18);
    CHECK_INT(t0.bytes, 15 * n + 3 * nbig);
    uint64_t start = rmr_clock_ms();
    mirror_free(m);
    uint64_t took = rmr_clock_ms() - start;
    printf("     rmr_mirror_free took %llu ms\n", (unsigned long long)took);
    CHECK(took < 5000); /* long before the 10 s timeouts */
    rmr_mirror_stats_t t1;
    rmr_mirror_totals(&t1);
    CHECK_INT(t1.inflight, 0);
    CHECK_INT(t1.bytes, 0);
    CHECK_INT(t1.failed - t0.failed, 18);
    /* the servers see every connection closed (the five queued last may or may not have
     * connected before their cancel) */
    uint64_t end = rmr_clock_ms() + 3000;
    while ((ld(&silent->peer_closed) < 10 || ld(&silent->peer_closed) != ld(&silent->accepted)) &&
           rmr_clock_ms() < end) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    int acc = ld(&silent->accepted);
    CHECK(acc >= 10 && acc <= 15);
    CHECK_INT(ld(&silent->peer_closed), acc);
    wait_count(&noread->peer_closed, 3, 3000);
    CHECK_INT(ld(&noread->peer_closed), 3);
    /* the loop still works, and stray completions of the cancels are harmless */
    for (int i = 0; i < 5; i++)
        rmr_loop_turn(&loop, 5);
    rmr_mirror_free(NULL);
    /* an instance with nothing in flight frees at once */
    m = rmr_mirror_new(&loop, 0, 0);
    mirror_free(m);
    sv_stop(silent);
    sv_stop(noread);
    free(req);
    free(big);
}

static void test_no_sqe(void)
{
    /* A small ring: the shadows that do not find a free SQE are dropped (the queue is not
     * flushed for them); the others go on normally once the loop turns. */
    rmr_loop_t small;
    int ret = rmr_loop_init(&small, 8, 4, 4096);
    CHECK_INT(ret, 0);
    if (ret < 0)
        return;
    size_t n;
    char *req = make_req(10, &n);
    server_t *sv = sv_start(SV_RESPOND, n, 0, NULL);
    rmr_mirror_t *m = rmr_mirror_new(&small, 0, 0);
    struct sockaddr_in a = addr_of(sv->port);
    int space = (int)io_uring_sq_space_left(&small.ring);
    printf("     %d free SQEs\n", space);
    CHECK(space > 0 && space < 20);
    int ok = 0;
    for (int i = 0; i < 20; i++)
        ok += rmr_mirror_send(m, (struct sockaddr *)&a, sizeof(a), req, n, 5000) == 0;
    CHECK_INT(ok, space);
    rmr_mirror_stats_t s = stats(m);
    CHECK_INT(s.sent, space);
    CHECK_INT(s.dropped, 20 - space);
    uint64_t end = rmr_clock_ms() + 5000;
    while (stats(m).inflight && rmr_clock_ms() < end)
        rmr_loop_turn(&small, 10);
    s = stats(m);
    CHECK_INT(s.inflight, 0);
    CHECK_INT(s.completed, space);
    past.sent += s.sent;
    past.dropped += s.dropped;
    past.completed += s.completed;
    past.failed += s.failed;
    past.timeouts += s.timeouts;
    rmr_mirror_free(m);
    rmr_loop_free(&small);
    sv_stop(sv);
    free(req);
}

static void test_totals(void)
{
    rmr_mirror_stats_t t;
    rmr_mirror_totals(&t);
    CHECK_INT(t.sent, past.sent);
    CHECK_INT(t.dropped, past.dropped);
    CHECK_INT(t.completed, past.completed);
    CHECK_INT(t.failed, past.failed);
    CHECK_INT(t.timeouts, past.timeouts);
    CHECK_INT(t.completed + t.failed + t.timeouts, t.sent);
    CHECK_INT(t.inflight, 0);
    CHECK_INT(t.bytes, 0);
}

static void on_alarm(int sig)
{
    static const char msg[] = "FAIL timed out: a wait that nothing ended\n";
    ssize_t n = write(1, msg, sizeof(msg) - 1);
    (void)n;
    _exit(1);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGALRM, on_alarm);
    alarm(60);
    int ret = rmr_loop_init(&loop, 256, 16, 4096);
    if (ret == -ENOSYS || ret == -EPERM || ret == -EACCES) {
        printf("skipped: rmr_loop_init: %s: %s\n", strerror(-ret), rmr_loop_explain(ret));
        return 77;
    }
    CHECK_INT(ret, 0);
    if (ret < 0)
        return check_summary();

    test_exact_bytes();
    test_limits();
    test_refused();
    test_reset();
    test_not_http();
    test_silent();
    test_no_read();
    test_keep_open();
    test_free_in_flight();
    test_no_sqe();
    test_totals();

    rmr_loop_free(&loop);
    return check_summary();
}
