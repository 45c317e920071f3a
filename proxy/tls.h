/*
 * TLS on memory BIOs. The socket I/O is done elsewhere (io_uring): the caller feeds the
 * ciphertext it received with tls_feed, reads plaintext with tls_read, hands plaintext to
 * tls_write and sends what tls_out moves out. After every tls_feed/tls_read/tls_write/
 * tls_connect/tls_shutdown the caller checks tls_out_pending: the handshake, session tickets,
 * key updates and alerts produce ciphertext at any of them.
 *
 * A tls_ctx_t may be shared by every thread; a tls_t belongs to one thread.
 */
#ifndef REMORA_TLS_H
#define REMORA_TLS_H

#include <stddef.h>

#include <openssl/ssl.h>

#include "remora/buf.h"

typedef struct tls_ctx tls_ctx_t; /* an SSL_CTX plus what was loaded; refcounted (atomic) */
typedef struct tls tls_t;         /* one connection's TLS state: SSL + two memory BIOs */

typedef struct tls_conf {
    const char *cert, *key; /* PEM files; server: required; client: optional (mTLS) */
    const char *ca;         /* PEM trust bundle. Server: verifies client certificates (needed
                             * by require/optional_peer_cert). Client: verifies the server's
                             * chain; NULL verifies nothing, which only tests may do. */
    int require_peer_cert;  /* server: refuse clients without a valid certificate (mTLS) */
    int optional_peer_cert; /* server: ask for one, accept without (permissive); a certificate
                             * that is presented and fails verification is still refused */
    const char *alpn;       /* ALPN protocol list in wire format, e.g. "\x02h2\x08http/1.1";
                             * NULL: none */
    size_t alpn_len;
} tls_conf_t;

/* Makes a server or client context from conf (TLS 1.2 and 1.3, ECDHE with AES-GCM or
 * ChaCha20). Returns a context holding one reference, or NULL with err set ("tls: cannot read
 * certificate /path: No such file or directory", "tls: key /path does not match certificate
 * /path", ...). Any thread; the files are read now. */
tls_ctx_t *tls_ctx_server(const tls_conf_t *conf, char *err, size_t errlen);
tls_ctx_t *tls_ctx_client(const tls_conf_t *conf, char *err, size_t errlen);
/* Adds a reference (returns c; NULL passes through). Any thread. */
tls_ctx_t *tls_ctx_ref(tls_ctx_t *c);
/* Drops a reference; the last one frees the context. NULL is ignored. Any thread. */
void tls_ctx_unref(tls_ctx_t *c);
/* 1 if any file the ctx was loaded from changed (mtime, size, inode) or vanished since it was
 * loaded, else 0. */
int tls_ctx_changed(const tls_ctx_t *c);
/* The trust domain of the ctx's own certificate's spiffe:// URI SAN ("example.org"), or NULL.
 * Lives as long as the ctx. */
const char *tls_ctx_trust_domain(const tls_ctx_t *c);
/* The identity (URI SAN spiffe://...) of the ctx's own certificate, or NULL. */
const char *tls_ctx_identity(const tls_ctx_t *c);
/* The OpenSSL context, for tuning beyond tls_conf_t (tests use it to offer old versions). */
SSL_CTX *tls_ctx_ssl(tls_ctx_t *c);
/* Client: the most sessions kept for resumption (default 1024; the least recently used goes
 * first), and how many are kept now. */
void tls_ctx_set_session_limit(tls_ctx_t *c, size_t n);
size_t tls_ctx_session_count(tls_ctx_t *c);

/* A slot holding the current ctx of a role, swapped by the main thread on reload and read by
 * worker threads when they create a connection (mutex inside; cheap). */
typedef struct tls_slot tls_slot_t;
tls_slot_t *tls_slot_new(tls_ctx_t *initial);   /* takes the reference (may be NULL); NULL on OOM
                                                 * (the reference is dropped) */
tls_ctx_t *tls_slot_get(tls_slot_t *s);         /* returns a new reference, or NULL */
void tls_slot_set(tls_slot_t *s, tls_ctx_t *c); /* takes the reference; drops the old one */
void tls_slot_free(tls_slot_t *s);              /* drops the reference held */

/* A connection on ctx (which it references until tls_free). server: sni NULL. client: sni for
 * SNI (not sent when it is an IP address); session_key: a string naming the destination (e.g.
 * "10.0.0.1:443") under which the client ctx keeps the last session for resumption (NULL: no
 * resumption). Returns NULL on OOM. */
tls_t *tls_new(tls_ctx_t *ctx, int server, const char *sni, const char *session_key);
void tls_free(tls_t *t);
/* Ciphertext received from the socket (copied). Returns 0, or -1 on OOM. */
int tls_feed(tls_t *t, const void *data, size_t len);
/* Plaintext out: >0 bytes read into buf; 0: nothing more until more ciphertext is fed (the
 * handshake may have produced output: check tls_out); TLS_EOF: the peer sent close_notify;
 * TLS_ERR: fatal, tls_error() says why (an alert for the peer may wait in tls_out). Drives the
 * handshake. */
#define TLS_EOF (-1)
#define TLS_ERR (-2)
long tls_read(tls_t *t, void *buf, size_t cap);
/* Plaintext in, to be encrypted; all of it is taken (kept until the handshake is done, then
 * encrypted by the tls_read that completes it). Returns 0 or TLS_ERR (failed connection, write
 * after tls_shutdown, OOM). */
int tls_write(tls_t *t, const void *data, size_t len);
/* Starts the handshake on a client (produces the ClientHello). 0 or TLS_ERR. */
int tls_connect(tls_t *t);
/* Moves pending ciphertext (handshake records, encrypted data, alerts) into b (appended).
 * Returns bytes moved; 0 with b->oom set when b could not grow. */
size_t tls_out(tls_t *t, rmr_buf_t *b);
size_t tls_out_pending(const tls_t *t);
/* Queues close_notify (after any plaintext still waiting for the handshake). */
void tls_shutdown(tls_t *t);
int tls_handshake_done(const tls_t *t);
int tls_resumed(const tls_t *t);
const char *tls_alpn(const tls_t *t);          /* "h2", "http/1.1", or NULL (NUL-terminated) */
const char *tls_version(const tls_t *t);       /* "TLSv1.3" ... */
const char *tls_peer_identity(const tls_t *t); /* the peer cert's first spiffe:// URI SAN, or
                                                * NULL; set when the handshake is done */
/* Checks the verified peer identity against allowed[0..n) (exact match); n == 0 accepts any
 * verified identity. Returns 0, or -1 and sets tls_error() ("peer identity X is not allowed",
 * "peer presented no certificate", "peer certificate has no spiffe:// identity"). */
int tls_check_identity(tls_t *t, const char *const *allowed, size_t n);
/* A short human reason for the last failure ("peer certificate: certificate has expired",
 * "peer sent no certificate", "protocol version not supported (client offered TLSv1.1)",
 * "peer sent alert: unknown CA", ...), or NULL; and a short machine reason for stats:
 * "handshake", "no-peer-cert", "bad-peer-cert", "identity", "protocol" (or NULL). */
const char *tls_error(const tls_t *t);
const char *tls_error_kind(const tls_t *t);

#endif
