/*
 * Unit test of proxy/tls.c: TLS on memory BIOs, a client and a server in one process pumping
 * each other's output (handshake, data, ALPN, mTLS and identities, refusals and their reasons,
 * session resumption, reload detection, slots, large writes, close_notify).
 *
 * Usage: test_tls [CERTS_SH]   (default: RMR_SOURCE_ROOT/tests/certs.sh)
 * The certificates are made by certs.sh in a fresh temporary folder, removed at the end.
 * Prints one line per check; exits 1 when any check fails.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "remora/buf.h"
#include "tls.h"

#ifndef RMR_SOURCE_ROOT
#define RMR_SOURCE_ROOT "."
#endif

#include "check.h"

#define ID(svc) "spiffe://remora.test/service/" svc

static char dir[256];

/* The path of a file of the certificates folder (a few of them live at once). */
static const char *P(const char *name)
{
    static char ring[16][512];
    static int i;
    char *p = ring[i++ % 16];
    snprintf(p, sizeof(ring[0]), "%s/%s", dir, name);
    return p;
}

static int run(char *const argv[])
{
    pid_t pid = fork();
    if (pid == 0) {
        execvp(argv[0], argv);
        _exit(127);
    }
    int st;
    if (pid < 0 || waitpid(pid, &st, 0) < 0)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* ---- contexts ---- */

typedef struct opts {
    const char *cert; /* file base name: "checkout" for checkout.pem + checkout.key */
    const char *ca;   /* "ca" or NULL */
    int require, optional;
    const char *alpn;
} opts_t;

static tls_ctx_t *mk(int server, opts_t o)
{
    char cert[512], key[512], ca[512], err[512] = "";
    snprintf(cert, sizeof(cert), "%s/%s.pem", dir, o.cert ? o.cert : "");
    snprintf(key, sizeof(key), "%s/%s.key", dir, o.cert ? o.cert : "");
    snprintf(ca, sizeof(ca), "%s/%s.pem", dir, o.ca ? o.ca : "");
    tls_conf_t conf = {
        .cert = o.cert ? cert : NULL,
        .key = o.cert ? key : NULL,
        .ca = o.ca ? ca : NULL,
        .require_peer_cert = o.require,
        .optional_peer_cert = o.optional,
        .alpn = o.alpn,
        .alpn_len = o.alpn ? strlen(o.alpn) : 0,
    };
    tls_ctx_t *c =
        server ? tls_ctx_server(&conf, err, sizeof(err)) : tls_ctx_client(&conf, err, sizeof(err));
    if (!c)
        printf("     ctx error: %s\n", err);
    return c;
}

#define SERVER(...) mk(1, (opts_t){__VA_ARGS__})
#define CLIENT(...) mk(0, (opts_t){__VA_ARGS__})

/* ---- two ends pumping each other ---- */

typedef struct end {
    tls_t *t;
    rmr_buf_t got;
    int eof, err;
} end_t;

static size_t feed_chunk; /* 0: feed everything at once; else in slices of this size */

static void drain(end_t *e)
{
    char buf[5000];
    while (!e->eof && !e->err) {
        long n = tls_read(e->t, buf, sizeof(buf));
        if (n > 0)
            rmr_buf_append(&e->got, buf, (size_t)n);
        else if (n == TLS_EOF)
            e->eof = 1;
        else if (n == TLS_ERR)
            e->err = 1;
        else
            break;
    }
}

/* Moves from's output to to, reading to's plaintext as it goes. Returns the bytes moved. */
static size_t xfer(end_t *from, end_t *to)
{
    rmr_buf_t b = {0};
    size_t n = tls_out(from->t, &b);
    for (size_t off = 0; off < n;) {
        size_t k = feed_chunk && n - off > feed_chunk ? feed_chunk : n - off;
        if (tls_feed(to->t, b.data + off, k) < 0)
            break;
        drain(to);
        off += k;
    }
    rmr_buf_free(&b);
    return n;
}

static void pump(end_t *c, end_t *s)
{
    drain(c);
    drain(s);
    for (int i = 0; i < 100000; i++) {
        size_t m = xfer(c, s);
        m += xfer(s, c);
        if (!m)
            return;
    }
    printf("     pump did not settle\n");
}

/* A client on cc and a server on sc, handshake pumped to the end (or to the failure). */
static void conn(end_t *c, end_t *s, tls_ctx_t *cc, tls_ctx_t *sc, const char *session_key)
{
    memset(c, 0, sizeof(*c));
    memset(s, 0, sizeof(*s));
    c->t = tls_new(cc, 0, "checkout", session_key);
    s->t = tls_new(sc, 1, NULL, NULL);
    if (!c->t || !s->t) {
        printf("     tls_new failed\n");
        exit(1);
    }
    if (tls_connect(c->t) < 0)
        c->err = 1;
    pump(c, s);
}

static void end_free(end_t *e)
{
    tls_free(e->t);
    rmr_buf_free(&e->got);
    memset(e, 0, sizeof(*e));
}

static int got_is(const end_t *e, const char *s)
{
    return e->got.len == strlen(s) && !memcmp(e->got.data, s, e->got.len);
}

/* ---- tests ---- */

static void test_basic(void)
{
    printf("-- handshake and data\n");
    tls_ctx_t *sc = SERVER(.cert = "checkout");
    tls_ctx_t *cc = CLIENT(.ca = "ca");
    CHECK(sc && cc);
    CHECK_STR(tls_ctx_identity(sc), ID("checkout"));
    CHECK_STR(tls_ctx_trust_domain(sc), "remora.test");
    CHECK_STR(tls_ctx_identity(cc), NULL);
    CHECK_STR(tls_ctx_trust_domain(cc), NULL);

    end_t c = {0}, s = {0};
    memset(&c, 0, sizeof(c));
    c.t = tls_new(cc, 0, "checkout", NULL);
    s.t = tls_new(sc, 1, NULL, NULL);
    CHECK_INT(tls_connect(c.t), 0);
    CHECK(tls_out_pending(c.t) > 0); /* the ClientHello */
    CHECK(!tls_handshake_done(c.t));
    /* Written before the handshake: kept, sent once it is done. */
    CHECK_INT(tls_write(c.t, "ping", 4), 0);
    pump(&c, &s);
    CHECK(tls_handshake_done(c.t) && tls_handshake_done(s.t));
    CHECK(!c.err && !s.err);
    CHECK_STR(tls_version(c.t), "TLSv1.3");
    CHECK_STR(tls_version(s.t), "TLSv1.3");
    CHECK(got_is(&s, "ping"));
    CHECK_INT(tls_write(s.t, "pong", 4), 0);
    CHECK(tls_out_pending(s.t) > 4);
    pump(&c, &s);
    CHECK(got_is(&c, "pong"));
    CHECK(!tls_resumed(c.t));
    CHECK_STR(tls_alpn(c.t), NULL);
    CHECK_STR(tls_peer_identity(c.t), ID("checkout"));
    CHECK_STR(tls_peer_identity(s.t), NULL);
    CHECK_STR(tls_error(c.t), NULL);
    CHECK_STR(tls_error_kind(s.t), NULL);

    /* The client checks the server's identity. */
    const char *ok[] = {ID("ledger"), ID("checkout")}, *bad[] = {ID("ledger")};
    CHECK_INT(tls_check_identity(c.t, ok, 2), 0);
    CHECK_INT(tls_check_identity(c.t, NULL, 0), 0);
    CHECK_INT(tls_check_identity(c.t, bad, 1), -1);
    CHECK_STR(tls_error(c.t), "peer identity " ID("checkout") " is not allowed");
    CHECK_STR(tls_error_kind(c.t), "identity");
    /* The server asked for no certificate. */
    CHECK_INT(tls_check_identity(s.t, NULL, 0), -1);
    CHECK_STR(tls_error(s.t), "peer presented no certificate");
    CHECK_STR(tls_error_kind(s.t), "no-peer-cert");
    /* An identity refusal does not break the connection. */
    CHECK_INT(tls_write(c.t, "more", 4), 0);
    pump(&c, &s);
    CHECK(got_is(&s, "pingmore"));
    end_free(&c);
    end_free(&s);

    /* A client that verifies nothing (ca NULL) connects, but no identity check passes. */
    tls_ctx_t *rogue_srv = SERVER(.cert = "rogue");
    tls_ctx_t *blind = CLIENT(.ca = NULL);
    conn(&c, &s, blind, rogue_srv, NULL);
    CHECK(tls_handshake_done(c.t) && !c.err && !s.err);
    CHECK_STR(tls_peer_identity(c.t), ID("checkout"));
    CHECK_INT(tls_check_identity(c.t, NULL, 0), -1);
    CHECK_STR(tls_error_kind(c.t), "bad-peer-cert");
    CHECK_STR(tls_error(c.t), "peer certificate: unable to get local issuer certificate");
    end_free(&c);
    end_free(&s);

    /* A server speaking TLS 1.2 only. */
    tls_ctx_t *sc12 = SERVER(.cert = "checkout");
    SSL_CTX_set_max_proto_version(tls_ctx_ssl(sc12), TLS1_2_VERSION);
    conn(&c, &s, cc, sc12, NULL);
    CHECK(tls_handshake_done(c.t) && !c.err && !s.err);
    CHECK_STR(tls_version(c.t), "TLSv1.2");
    CHECK_STR(tls_peer_identity(c.t), ID("checkout"));
    CHECK_INT(tls_write(c.t, "twelve", 6), 0);
    pump(&c, &s);
    CHECK(got_is(&s, "twelve"));
    end_free(&c);
    end_free(&s);

    tls_ctx_unref(sc12);
    tls_ctx_unref(rogue_srv);
    tls_ctx_unref(blind);
    tls_ctx_unref(sc);
    tls_ctx_unref(cc);
}

static void test_alpn(void)
{
    printf("-- ALPN\n");
    /* The server lists http/1.1 first, and still prefers h2 when the client offers both. */
    tls_ctx_t *sc = SERVER(.cert = "checkout", .alpn = "\x08http/1.1\x02h2");
    tls_ctx_t *both = CLIENT(.ca = "ca", .alpn = "\x08http/1.1\x02h2");
    tls_ctx_t *h1 = CLIENT(.ca = "ca", .alpn = "\x08http/1.1");
    tls_ctx_t *other = CLIENT(.ca = "ca", .alpn = "\x06spdy/3");
    tls_ctx_t *none = CLIENT(.ca = "ca");
    tls_ctx_t *sc_none = SERVER(.cert = "checkout");
    end_t c, s;

    conn(&c, &s, both, sc, NULL);
    CHECK(tls_handshake_done(c.t) && !c.err && !s.err);
    CHECK_STR(tls_alpn(c.t), "h2");
    CHECK_STR(tls_alpn(s.t), "h2");
    end_free(&c);
    end_free(&s);

    conn(&c, &s, h1, sc, NULL);
    CHECK_STR(tls_alpn(c.t), "http/1.1");
    CHECK_STR(tls_alpn(s.t), "http/1.1");
    end_free(&c);
    end_free(&s);

    /* No overlap: no ALPN, and the connection goes on. */
    conn(&c, &s, other, sc, NULL);
    CHECK(tls_handshake_done(c.t) && tls_handshake_done(s.t) && !c.err && !s.err);
    CHECK_STR(tls_alpn(c.t), NULL);
    CHECK_STR(tls_alpn(s.t), NULL);
    end_free(&c);
    end_free(&s);

    conn(&c, &s, none, sc, NULL);
    CHECK(tls_handshake_done(c.t) && !c.err);
    CHECK_STR(tls_alpn(s.t), NULL);
    end_free(&c);
    end_free(&s);

    conn(&c, &s, both, sc_none, NULL);
    CHECK(tls_handshake_done(c.t) && !c.err);
    CHECK_STR(tls_alpn(c.t), NULL);
    end_free(&c);
    end_free(&s);

    /* A malformed list is a load error. */
    char err[256] = "";
    tls_conf_t bad = {.ca = P("ca.pem"), .alpn = "\x05h2", .alpn_len = 3};
    CHECK(tls_ctx_client(&bad, err, sizeof(err)) == NULL);
    CHECK_STR(err, "tls: malformed ALPN protocol list");

    tls_ctx_unref(sc);
    tls_ctx_unref(sc_none);
    tls_ctx_unref(both);
    tls_ctx_unref(h1);
    tls_ctx_unref(other);
    tls_ctx_unref(none);
}

static void test_mtls(void)
{
    printf("-- mTLS\n");
    tls_ctx_t *sc = SERVER(.cert = "checkout", .ca = "ca", .require = 1);
    tls_ctx_t *cc = CLIENT(.cert = "client", .ca = "ca");
    CHECK_STR(tls_ctx_identity(cc), ID("client"));
    end_t c, s;
    conn(&c, &s, cc, sc, NULL);
    CHECK(tls_handshake_done(c.t) && tls_handshake_done(s.t) && !c.err && !s.err);
    CHECK_STR(tls_peer_identity(s.t), ID("client"));
    CHECK_STR(tls_peer_identity(c.t), ID("checkout"));
    const char *allow[] = {ID("client")}, *deny[] = {ID("ledger"), ID("checkout")};
    CHECK_INT(tls_check_identity(s.t, allow, 1), 0);
    CHECK_INT(tls_check_identity(s.t, NULL, 0), 0);
    CHECK_INT(tls_check_identity(s.t, deny, 2), -1);
    CHECK_STR(tls_error(s.t), "peer identity " ID("client") " is not allowed");
    CHECK_STR(tls_error_kind(s.t), "identity");
    const char *srv[] = {ID("checkout")};
    CHECK_INT(tls_check_identity(c.t, srv, 1), 0);
    CHECK_INT(tls_write(c.t, "hello", 5), 0);
    CHECK_INT(tls_write(s.t, "world", 5), 0);
    pump(&c, &s);
    CHECK(got_is(&s, "hello"));
    CHECK(got_is(&c, "world"));
    end_free(&c);
    end_free(&s);

    /* A client without a certificate. */
    tls_ctx_t *anon = CLIENT(.ca = "ca");
    conn(&c, &s, anon, sc, NULL);
    CHECK(s.err);
    CHECK_STR(tls_error_kind(s.t), "no-peer-cert");
    CHECK_STR(tls_error(s.t), "peer sent no certificate");
    /* TLS 1.3: the client's handshake is over when the server refuses; the alert says why. */
    CHECK(c.err);
    CHECK_STR(tls_error(c.t), "peer sent alert: certificate required");
    CHECK(tls_read(c.t, (char[8]){0}, 8) == TLS_ERR);
    CHECK(tls_write(c.t, "x", 1) == TLS_ERR);
    end_free(&c);
    end_free(&s);

    /* The same over TLS 1.2. */
    tls_ctx_t *anon12 = CLIENT(.ca = "ca");
    SSL_CTX_set_max_proto_version(tls_ctx_ssl(anon12), TLS1_2_VERSION);
    conn(&c, &s, anon12, sc, NULL);
    CHECK(s.err && c.err);
    CHECK_STR(tls_error_kind(s.t), "no-peer-cert");
    CHECK_STR(tls_error_kind(c.t), "handshake");
    CHECK(!tls_handshake_done(c.t));
    end_free(&c);
    end_free(&s);

    /* Permissive: a certificate is asked for, not required. */
    tls_ctx_t *perm = SERVER(.cert = "checkout", .ca = "ca", .optional = 1);
    conn(&c, &s, anon, perm, NULL);
    CHECK(tls_handshake_done(s.t) && !s.err && !c.err);
    CHECK_STR(tls_peer_identity(s.t), NULL);
    CHECK_INT(tls_check_identity(s.t, NULL, 0), -1);
    CHECK_STR(tls_error(s.t), "peer presented no certificate");
    CHECK_STR(tls_error_kind(s.t), "no-peer-cert");
    end_free(&c);
    end_free(&s);
    conn(&c, &s, cc, perm, NULL);
    CHECK(tls_handshake_done(s.t) && !s.err && !c.err);
    CHECK_STR(tls_peer_identity(s.t), ID("client"));
    CHECK_INT(tls_check_identity(s.t, allow, 1), 0);
    end_free(&c);
    end_free(&s);

    /* A valid certificate without a spiffe:// identity. */
    tls_ctx_t *noid = CLIENT(.cert = "noid", .ca = "ca");
    CHECK_STR(tls_ctx_identity(noid), NULL);
    CHECK_STR(tls_ctx_trust_domain(noid), NULL);
    conn(&c, &s, noid, sc, NULL);
    CHECK(tls_handshake_done(s.t) && !s.err && !c.err);
    CHECK_STR(tls_peer_identity(s.t), NULL);
    CHECK_INT(tls_check_identity(s.t, NULL, 0), -1);
    CHECK_STR(tls_error(s.t), "peer certificate has no spiffe:// identity");
    CHECK_STR(tls_error_kind(s.t), "identity");
    end_free(&c);
    end_free(&s);

    tls_ctx_unref(noid);
    tls_ctx_unref(perm);
    tls_ctx_unref(anon);
    tls_ctx_unref(anon12);
    tls_ctx_unref(sc);
    tls_ctx_unref(cc);
}

static void test_bad_certs(void)
{
    printf("-- refused certificates\n");
    tls_ctx_t *sc = SERVER(.cert = "checkout", .ca = "ca", .require = 1);
    tls_ctx_t *rogue = CLIENT(.cert = "rogue", .ca = "ca");
    tls_ctx_t *expired = CLIENT(.cert = "expired", .ca = "ca");
    tls_ctx_t *cc = CLIENT(.cert = "client", .ca = "ca");
    tls_ctx_t *rogue_srv = SERVER(.cert = "rogue");
    tls_ctx_t *expired_srv = SERVER(.cert = "expired");
    tls_ctx_t *perm = SERVER(.cert = "checkout", .ca = "ca", .optional = 1);
    end_t c, s;

    conn(&c, &s, rogue, sc, NULL);
    CHECK(s.err && !tls_handshake_done(s.t));
    CHECK_STR(tls_error_kind(s.t), "bad-peer-cert");
    CHECK_STR(tls_error(s.t), "peer certificate: unable to get local issuer certificate");
    CHECK(c.err);
    CHECK_STR(tls_error(c.t), "peer sent alert: unknown CA");
    end_free(&c);
    end_free(&s);

    conn(&c, &s, expired, sc, NULL);
    CHECK(s.err);
    CHECK_STR(tls_error_kind(s.t), "bad-peer-cert");
    CHECK_STR(tls_error(s.t), "peer certificate: certificate has expired");
    end_free(&c);
    end_free(&s);

    /* Permissive mode still refuses a certificate that fails verification. */
    conn(&c, &s, rogue, perm, NULL);
    CHECK(s.err);
    CHECK_STR(tls_error_kind(s.t), "bad-peer-cert");
    end_free(&c);
    end_free(&s);

    /* The client refuses a server of another CA, or an expired one. */
    conn(&c, &s, cc, rogue_srv, NULL);
    CHECK(c.err && !tls_handshake_done(c.t));
    CHECK_STR(tls_error_kind(c.t), "bad-peer-cert");
    CHECK_STR(tls_error(c.t), "peer certificate: unable to get local issuer certificate");
    CHECK(s.err);
    CHECK_STR(tls_error(s.t), "peer sent alert: unknown CA");
    end_free(&c);
    end_free(&s);

    conn(&c, &s, cc, expired_srv, NULL);
    CHECK(c.err);
    CHECK_STR(tls_error_kind(c.t), "bad-peer-cert");
    CHECK_STR(tls_error(c.t), "peer certificate: certificate has expired");
    end_free(&c);
    end_free(&s);

    tls_ctx_unref(sc);
    tls_ctx_unref(rogue);
    tls_ctx_unref(expired);
    tls_ctx_unref(cc);
    tls_ctx_unref(rogue_srv);
    tls_ctx_unref(expired_srv);
    tls_ctx_unref(perm);
}

static void test_protocol(void)
{
    printf("-- protocol versions and non-TLS input\n");
    tls_ctx_t *sc = SERVER(.cert = "checkout");
    /* A client that may speak TLS 1.0 and 1.1 only (which OpenSSL 3 allows at level 0 only). */
    tls_ctx_t *old = CLIENT(.ca = "ca");
    SSL_CTX *ssl = tls_ctx_ssl(old);
    SSL_CTX_set_security_level(ssl, 0);
    CHECK(SSL_CTX_set_cipher_list(ssl, "DEFAULT:@SECLEVEL=0") == 1);
    CHECK(SSL_CTX_set_min_proto_version(ssl, TLS1_VERSION) == 1);
    CHECK(SSL_CTX_set_max_proto_version(ssl, TLS1_1_VERSION) == 1);
    end_t c, s;
    conn(&c, &s, old, sc, NULL);
    CHECK(s.err && c.err);
    CHECK_STR(tls_error_kind(s.t), "protocol");
    CHECK_STR(tls_error(s.t), "protocol version not supported (client offered TLSv1.1)");
    CHECK_STR(tls_error_kind(c.t), "protocol");
    CHECK_STR(tls_error(c.t), "peer sent alert: protocol version");
    end_free(&c);
    end_free(&s);

    /* Plaintext HTTP on the TLS port. */
    s.t = tls_new(sc, 1, NULL, NULL);
    const char *req = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK_INT(tls_feed(s.t, req, strlen(req)), 0);
    drain(&s);
    CHECK(s.err);
    CHECK_STR(tls_error_kind(s.t), "protocol");
    CHECK_STR(tls_error(s.t), "plaintext HTTP request on a TLS port");
    CHECK(tls_read(s.t, (char[8]){0}, 8) == TLS_ERR);
    end_free(&s);

    /* A server connection is not started with tls_connect. */
    s.t = tls_new(sc, 1, NULL, NULL);
    CHECK_INT(tls_connect(s.t), TLS_ERR);
    end_free(&s);

    tls_ctx_unref(sc);
    tls_ctx_unref(old);
}

static void test_resumption(int max_version, const char *version)
{
    printf("-- session resumption, %s\n", version);
    tls_ctx_t *sc = SERVER(.cert = "checkout", .ca = "ca", .require = 1);
    tls_ctx_t *cc = CLIENT(.cert = "client", .ca = "ca");
    SSL_CTX_set_max_proto_version(tls_ctx_ssl(cc), max_version);
    end_t c, s;

    conn(&c, &s, cc, sc, "10.0.0.1:443");
    CHECK(tls_handshake_done(c.t) && !c.err && !s.err);
    CHECK_STR(tls_version(c.t), version);
    CHECK(!tls_resumed(c.t) && !tls_resumed(s.t));
    /* pump() read after the handshake: a TLS 1.3 ticket has been processed. */
    CHECK_INT(tls_ctx_session_count(cc), 1);
    end_free(&c);
    end_free(&s);

    conn(&c, &s, cc, sc, "10.0.0.1:443");
    CHECK(tls_handshake_done(c.t) && !c.err && !s.err);
    CHECK(tls_resumed(c.t));
    CHECK(tls_resumed(s.t));
    /* The identities survive resumption. */
    CHECK_STR(tls_peer_identity(s.t), ID("client"));
    CHECK_STR(tls_peer_identity(c.t), ID("checkout"));
    CHECK_INT(tls_check_identity(s.t, NULL, 0), 0);
    CHECK_INT(tls_check_identity(c.t, NULL, 0), 0);
    CHECK_INT(tls_write(c.t, "again", 5), 0);
    pump(&c, &s);
    CHECK(got_is(&s, "again"));
    end_free(&c);
    end_free(&s);

    /* Another destination, or none, is not resumed. */
    conn(&c, &s, cc, sc, "10.0.0.2:443");
    CHECK(tls_handshake_done(c.t) && !tls_resumed(c.t));
    end_free(&c);
    end_free(&s);
    conn(&c, &s, cc, sc, NULL);
    CHECK(tls_handshake_done(c.t) && !tls_resumed(c.t));
    end_free(&c);
    end_free(&s);
    CHECK_INT(tls_ctx_session_count(cc), 2);

    /* A reloaded server (new ticket keys) refuses the session: a full handshake follows. */
    tls_ctx_t *sc2 = SERVER(.cert = "checkout", .ca = "ca", .require = 1);
    conn(&c, &s, cc, sc2, "10.0.0.1:443");
    CHECK(tls_handshake_done(c.t) && !c.err && !s.err);
    CHECK(!tls_resumed(c.t));
    CHECK_STR(tls_peer_identity(s.t), ID("client"));
    end_free(&c);
    end_free(&s);
    conn(&c, &s, cc, sc2, "10.0.0.1:443");
    CHECK(tls_resumed(c.t));
    end_free(&c);
    end_free(&s);

    /* The cache is bounded: the least recently used destination goes first. */
    tls_ctx_set_session_limit(cc, 2);
    CHECK_INT(tls_ctx_session_count(cc), 2);
    conn(&c, &s, cc, sc, "a");
    end_free(&c);
    end_free(&s);
    conn(&c, &s, cc, sc, "b");
    end_free(&c);
    end_free(&s);
    CHECK_INT(tls_ctx_session_count(cc), 2);
    conn(&c, &s, cc, sc, "a"); /* a is now the most recent */
    CHECK(tls_resumed(c.t));
    end_free(&c);
    end_free(&s);
    conn(&c, &s, cc, sc, "c"); /* evicts b */
    end_free(&c);
    end_free(&s);
    conn(&c, &s, cc, sc, "a");
    CHECK(tls_resumed(c.t));
    end_free(&c);
    end_free(&s);
    conn(&c, &s, cc, sc, "b");
    CHECK(!tls_resumed(c.t));
    end_free(&c);
    end_free(&s);
    CHECK_INT(tls_ctx_session_count(cc), 2);

    /* A failed identity check forgets the session. */
    conn(&c, &s, cc, sc, "b");
    CHECK(tls_resumed(c.t));
    const char *deny[] = {ID("ledger")};
    CHECK_INT(tls_check_identity(c.t, deny, 1), -1);
    end_free(&c);
    end_free(&s);
    CHECK_INT(tls_ctx_session_count(cc), 1);
    conn(&c, &s, cc, sc, "b");
    CHECK(!tls_resumed(c.t));
    end_free(&c);
    end_free(&s);

    /* A limit of 0 turns resumption off. */
    tls_ctx_set_session_limit(cc, 0);
    CHECK_INT(tls_ctx_session_count(cc), 0);
    conn(&c, &s, cc, sc, "a");
    end_free(&c);
    end_free(&s);
    conn(&c, &s, cc, sc, "a");
    CHECK(tls_handshake_done(c.t) && !tls_resumed(c.t));
    end_free(&c);
    end_free(&s);
    CHECK_INT(tls_ctx_session_count(cc), 0);

    tls_ctx_unref(sc);
    tls_ctx_unref(sc2);
    tls_ctx_unref(cc);
}

static void copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    char buf[4096];
    size_t n;
    while (in && out && (n = fread(buf, 1, sizeof(buf), in)) > 0)
        fwrite(buf, 1, n, out);
    if (in)
        fclose(in);
    if (out)
        fclose(out);
}

static void test_changed_and_errors(void)
{
    printf("-- reload detection and load errors\n");
    copy_file(P("checkout.pem"), P("r.pem"));
    copy_file(P("checkout.key"), P("r.key"));
    copy_file(P("ca.pem"), P("rca.pem"));
    tls_ctx_t *c = SERVER(.cert = "r", .ca = "rca", .require = 1);
    CHECK(c != NULL);
    CHECK_INT(tls_ctx_changed(c), 0);

    /* A new mtime. */
    struct timespec ts[2] = {{.tv_sec = 1700000000}, {.tv_sec = 1700000000}};
    CHECK_INT(utimensat(AT_FDCWD, P("r.pem"), ts, 0), 0);
    CHECK_INT(tls_ctx_changed(c), 1);
    tls_ctx_t *c2 = SERVER(.cert = "r", .ca = "rca", .require = 1);
    CHECK_INT(tls_ctx_changed(c2), 0);
    /* The CA bundle rewritten (new inode, other size). */
    copy_file(P("rogue-ca.pem"), P("rca.tmp"));
    CHECK_INT(rename(P("rca.tmp"), P("rca.pem")), 0);
    CHECK_INT(tls_ctx_changed(c2), 1);
    tls_ctx_t *c3 = SERVER(.cert = "r", .ca = "rca", .require = 1);
    CHECK_INT(tls_ctx_changed(c3), 0);
    /* A vanished key. */
    CHECK_INT(unlink(P("r.key")), 0);
    CHECK_INT(tls_ctx_changed(c3), 1);
    tls_ctx_unref(c);
    tls_ctx_unref(c2);
    tls_ctx_unref(c3);

    char err[1024], want[1024];
    tls_conf_t conf = {.cert = P("missing.pem"), .key = P("checkout.key")};
    CHECK(tls_ctx_server(&conf, err, sizeof(err)) == NULL);
    snprintf(want, sizeof(want), "tls: cannot read certificate %s: No such file or directory",
             P("missing.pem"));
    CHECK_STR(err, want);

    conf = (tls_conf_t){.cert = P("checkout.pem"), .key = P("r.key")};
    CHECK(tls_ctx_server(&conf, err, sizeof(err)) == NULL);
    snprintf(want, sizeof(want), "tls: cannot read key %s: No such file or directory", P("r.key"));
    CHECK_STR(err, want);

    conf = (tls_conf_t){.cert = P("checkout.pem"), .key = P("ledger.key")};
    CHECK(tls_ctx_server(&conf, err, sizeof(err)) == NULL);
    snprintf(want, sizeof(want), "tls: key %s does not match certificate %s", P("ledger.key"),
             P("checkout.pem"));
    CHECK_STR(err, want);

    conf = (tls_conf_t){.cert = P("checkout.key"), .key = P("checkout.key")};
    CHECK(tls_ctx_client(&conf, err, sizeof(err)) == NULL);
    snprintf(want, sizeof(want), "tls: cannot parse certificate %s: no certificate found",
             P("checkout.key"));
    CHECK_STR(err, want);

    conf = (tls_conf_t){.cert = P("checkout.pem"), .key = P("checkout.pem")};
    CHECK(tls_ctx_client(&conf, err, sizeof(err)) == NULL);
    snprintf(want, sizeof(want), "tls: cannot parse key %s: no private key found",
             P("checkout.pem"));
    CHECK_STR(err, want);

    /* A certificate whose base64 is damaged. */
    FILE *f = fopen(P("broken.pem"), "w");
    fputs("-----BEGIN CERTIFICATE-----\nMIIBAAAA\n-----END CERTIFICATE-----\n", f);
    fclose(f);
    conf = (tls_conf_t){.cert = P("broken.pem"), .key = P("checkout.key")};
    CHECK(tls_ctx_client(&conf, err, sizeof(err)) == NULL);
    snprintf(want, sizeof(want), "tls: cannot parse certificate %s: malformed PEM data",
             P("broken.pem"));
    CHECK_STR(err, want);
    conf = (tls_conf_t){.ca = P("broken.pem")};
    CHECK(tls_ctx_client(&conf, err, sizeof(err)) == NULL);
    snprintf(want, sizeof(want), "tls: cannot parse CA bundle %s: malformed PEM data",
             P("broken.pem"));
    CHECK_STR(err, want);

    conf = (tls_conf_t){.ca = P("nope.pem")};
    CHECK(tls_ctx_client(&conf, err, sizeof(err)) == NULL);
    snprintf(want, sizeof(want), "tls: cannot read CA bundle %s: No such file or directory",
             P("nope.pem"));
    CHECK_STR(err, want);

    conf = (tls_conf_t){.ca = P("checkout.key")};
    CHECK(tls_ctx_client(&conf, err, sizeof(err)) == NULL);
    snprintf(want, sizeof(want), "tls: no certificate in CA bundle %s", P("checkout.key"));
    CHECK_STR(err, want);

    conf = (tls_conf_t){.ca = P("ca.pem")};
    CHECK(tls_ctx_server(&conf, err, sizeof(err)) == NULL);
    CHECK_STR(err, "tls: a server needs a certificate and a key");

    conf =
        (tls_conf_t){.cert = P("checkout.pem"), .key = P("checkout.key"), .require_peer_cert = 1};
    CHECK(tls_ctx_server(&conf, err, sizeof(err)) == NULL);
    CHECK_STR(err, "tls: verifying client certificates needs a CA bundle");

    conf = (tls_conf_t){.cert = P("checkout.pem")};
    CHECK(tls_ctx_client(&conf, err, sizeof(err)) == NULL);
    CHECK_STR(err, "tls: a certificate needs a key and a key a certificate");
}

static void test_slot(void)
{
    printf("-- slots\n");
    tls_ctx_t *a = SERVER(.cert = "checkout"), *b = SERVER(.cert = "ledger");
    tls_slot_t *slot = tls_slot_new(a);
    CHECK(slot != NULL);
    tls_ctx_t *g = tls_slot_get(slot);
    CHECK(g == a);
    tls_slot_set(slot, b);
    tls_ctx_t *h = tls_slot_get(slot);
    CHECK(h == b);
    /* The reference taken before the swap keeps the old ctx alive and usable. */
    CHECK_STR(tls_ctx_identity(g), ID("checkout"));
    CHECK_STR(tls_ctx_identity(h), ID("ledger"));
    tls_ctx_t *cc = CLIENT(.ca = "ca");
    end_t c, s;
    conn(&c, &s, cc, g, NULL);
    CHECK(tls_handshake_done(c.t) && !c.err);
    CHECK_STR(tls_peer_identity(c.t), ID("checkout"));
    end_free(&c);
    end_free(&s);
    tls_ctx_unref(g);
    tls_ctx_unref(h);
    tls_ctx_unref(cc);
    tls_slot_free(slot);

    tls_slot_t *empty = tls_slot_new(NULL);
    CHECK(tls_slot_get(empty) == NULL);
    tls_slot_free(empty);
}

static void test_large_and_close(void)
{
    printf("-- large writes, close_notify\n");
    tls_ctx_t *sc = SERVER(.cert = "checkout", .alpn = "\x02h2");
    tls_ctx_t *cc = CLIENT(.ca = "ca", .alpn = "\x02h2");
    end_t c, s;
    conn(&c, &s, cc, sc, NULL);
    CHECK(tls_handshake_done(c.t));

    size_t n = 1 << 20;
    char *big = malloc(n), *big2 = malloc(n);
    for (size_t i = 0; i < n; i++) {
        big[i] = (char)(i * 31 + i / 977);
        big2[i] = (char)(i * 7 + 3);
    }
    /* Both ways at once, delivered in odd slices (records split across feeds). */
    CHECK_INT(tls_write(c.t, big, n), 0);
    CHECK_INT(tls_write(s.t, big2, n / 2), 0);
    CHECK_INT(tls_write(s.t, big2 + n / 2, n - n / 2), 0);
    CHECK(tls_out_pending(c.t) > n);
    feed_chunk = 4093;
    pump(&c, &s);
    feed_chunk = 0;
    CHECK(s.got.len == n && !memcmp(s.got.data, big, n));
    CHECK(c.got.len == n && !memcmp(c.got.data, big2, n));
    CHECK_INT(tls_out_pending(c.t), 0);

    /* close_notify both ways. */
    tls_shutdown(c.t);
    CHECK(tls_out_pending(c.t) > 0);
    CHECK_INT(tls_write(c.t, "late", 4), TLS_ERR);
    pump(&c, &s);
    CHECK(s.eof && !s.err);
    CHECK_INT(tls_read(s.t, big, 16), TLS_EOF);
    /* Half-closed: the server may still answer. */
    CHECK_INT(tls_write(s.t, "bye", 3), 0);
    tls_shutdown(s.t);
    pump(&c, &s);
    CHECK(c.eof && !c.err);
    CHECK(c.got.len == n + 3 && !memcmp(c.got.data + n, "bye", 3));
    end_free(&c);
    end_free(&s);

    /* Written and closed before the handshake: the data, then close_notify. */
    memset(&c, 0, sizeof(c));
    memset(&s, 0, sizeof(s));
    c.t = tls_new(cc, 0, "checkout", NULL);
    s.t = tls_new(sc, 1, NULL, NULL);
    CHECK_INT(tls_write(c.t, big, 100000), 0);
    tls_shutdown(c.t);
    CHECK_INT(tls_connect(c.t), 0);
    pump(&c, &s);
    CHECK(s.got.len == 100000 && !memcmp(s.got.data, big, 100000));
    CHECK(s.eof && !s.err);
    end_free(&c);
    end_free(&s);

    free(big);
    free(big2);
    tls_ctx_unref(sc);
    tls_ctx_unref(cc);
}

/* Several threads sharing a client ctx (its session cache) and a server ctx. */
typedef struct th_arg {
    tls_ctx_t *cc, *sc;
    int id, ok;
} th_arg_t;

static void *th_main(void *p)
{
    th_arg_t *a = p;
    for (int i = 0; i < 12; i++) {
        char key[32];
        snprintf(key, sizeof(key), "10.0.0.%d:443", (a->id + i) % 3);
        end_t c, s;
        conn(&c, &s, a->cc, a->sc, key);
        char msg[32];
        int len = snprintf(msg, sizeof(msg), "t%d-%d", a->id, i);
        tls_write(c.t, msg, (size_t)len);
        pump(&c, &s);
        if (tls_handshake_done(c.t) && !c.err && !s.err && got_is(&s, msg))
            a->ok++;
        end_free(&c);
        end_free(&s);
    }
    return NULL;
}

static void test_threads(void)
{
    printf("-- threads\n");
    tls_ctx_t *sc = SERVER(.cert = "checkout", .ca = "ca", .require = 1);
    tls_ctx_t *cc = CLIENT(.cert = "client", .ca = "ca");
    pthread_t th[4];
    th_arg_t args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (th_arg_t){.cc = cc, .sc = sc, .id = i};
        pthread_create(&th[i], NULL, th_main, &args[i]);
    }
    int ok = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ok += args[i].ok;
    }
    CHECK_INT(ok, 48);
    CHECK_INT(tls_ctx_session_count(cc), 3);
    tls_ctx_unref(sc);
    tls_ctx_unref(cc);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *script = argc > 1 ? argv[1] : RMR_SOURCE_ROOT "/tests/certs.sh";
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof(dir), "%s/test_tls.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir)) {
        printf("FAIL mkdtemp %s: %s\n", dir, strerror(errno));
        return 1;
    }
    char *mk_argv[] = {"bash", (char *)script, dir, NULL};
    int rc = run(mk_argv);
    if (rc != 0) {
        printf("FAIL %s %s: exit %d\n", script, dir, rc);
        char *rm_argv[] = {"rm", "-rf", dir, NULL};
        run(rm_argv);
        return 1;
    }

    test_basic();
    test_alpn();
    test_mtls();
    test_bad_certs();
    test_protocol();
    test_resumption(TLS1_3_VERSION, "TLSv1.3");
    test_resumption(TLS1_2_VERSION, "TLSv1.2");
    test_changed_and_errors();
    test_slot();
    test_large_and_close();
    test_threads();

    char *rm_argv[] = {"rm", "-rf", dir, NULL};
    run(rm_argv);
    return check_summary();
}
