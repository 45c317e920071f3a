/*
 * TLS on memory BIOs, see tls.h.
 *
 * Each tls_t holds an SSL whose read BIO receives the ciphertext fed from the socket and whose
 * write BIO collects what is to be sent. Plaintext written before the handshake is done waits
 * in a buffer of our own: SSL_write would refuse it, and the caller is promised that all of it
 * is taken.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "tls.h"

/* ECDHE only (forward secrecy), AEAD only (no CBC); TLS 1.3 suites are all AEAD. */
#define TLS12_CIPHERS                                                                              \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                                   \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                                   \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define TLS13_SUITES "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#define TLS_GROUPS "X25519:P-256:P-384"

#define SESS_BUCKETS 256
#define SESS_LIMIT 1024
/* A memory BIO found empty with more than this allocated is replaced by a new one, so that an
 * idle connection does not keep the buffer of its largest burst. */
#define BIO_KEEP 4096

typedef struct file_stamp {
    char *path;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
} file_stamp_t;

/* A client's last session with one destination: in a hash chain and in the LRU list. */
typedef struct sess_ent {
    struct sess_ent *hnext, *prev, *next;
    SSL_SESSION *sess;
    uint32_t hash;
    char key[];
} sess_ent_t;

struct tls_ctx {
    SSL_CTX *ssl;
    atomic_int refs;
    int server;
    file_stamp_t files[3];
    int nfiles;
    char *identity, *trust_domain;
    unsigned char *alpn; /* server: the protocols it speaks, wire format */
    size_t alpn_len;
    pthread_mutex_t sess_lock;
    sess_ent_t **buckets; /* client only; allocated with the ctx */
    sess_ent_t *lru_head, *lru_tail;
    size_t nsess, max_sess;
};

struct tls {
    SSL *ssl;
    BIO *rbio, *wbio; /* owned by ssl */
    tls_ctx_t *ctx;
    char *session_key;
    rmr_buf_t pending; /* plaintext not yet given to SSL_write, from pending_off */
    size_t pending_off;
    const char *alpn; /* a literal, or peer_alpn */
    char *peer_alpn, *peer_id, *err;
    const char *err_kind;
    unsigned offered; /* server: the highest version in the ClientHello */
    unsigned server : 1, hs_done : 1, failed : 1, shut : 1, shut_pending : 1;
};

/* ---- helpers ---- */

static void errf(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void errf(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* The reason of the most recent OpenSSL error, for load messages; clears the queue. */
static const char *ssl_reason(void)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    ERR_clear_error();
    return r ? r : "unknown error";
}

/* Why a PEM object could not be read from a file: absent, malformed, or OpenSSL's reason;
 * clears the queue. */
static const char *pem_reason(const char *what)
{
    unsigned long e;
    int asn1 = 0, none = 0;
    while ((e = ERR_get_error())) {
        if (ERR_GET_LIB(e) == ERR_LIB_ASN1)
            asn1 = 1;
        else if ((ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) ||
                 (ERR_GET_LIB(e) == ERR_LIB_OSSL_DECODER && ERR_GET_REASON(e) == ERR_R_UNSUPPORTED))
            none = 1;
    }
    if (asn1)
        return "malformed PEM data";
    return none ? what : "unreadable PEM data";
}

static uint32_t hash_str(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static const char *version_name(unsigned v)
{
    switch (v) {
    case 0x0300:
        return "SSLv3";
    case 0x0301:
        return "TLSv1.0";
    case 0x0302:
        return "TLSv1.1";
    case 0x0303:
        return "TLSv1.2";
    case 0x0304:
        return "TLSv1.3";
    }
    return NULL;
}

/* Finds name in an ALPN wire-format list; returns a pointer to its bytes in list, or NULL. */
static const unsigned char *alpn_find(const unsigned char *list, size_t len,
                                      const unsigned char *name, size_t nlen)
{
    for (size_t i = 0; i < len;) {
        size_t l = list[i];
        if (i + 1 + l > len)
            return NULL;
        if (l == nlen && !memcmp(list + i + 1, name, nlen))
            return list + i + 1;
        i += 1 + l;
    }
    return NULL;
}

static int alpn_valid(const unsigned char *list, size_t len)
{
    if (!len)
        return 0;
    for (size_t i = 0; i < len; i += 1 + list[i])
        if (!list[i] || i + 1 + list[i] > len)
            return 0;
    return 1;
}

/* The first spiffe:// URI SAN of x (malloc'd), or NULL. */
static char *cert_spiffe_id(X509 *x)
{
    GENERAL_NAMES *names = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    char *id = NULL;
    for (int i = 0; names && i < sk_GENERAL_NAME_num(names) && !id; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        if (g->type != GEN_URI)
            continue;
        const char *d = (const char *)ASN1_STRING_get0_data(g->d.uniformResourceIdentifier);
        int len = ASN1_STRING_length(g->d.uniformResourceIdentifier);
        if (len > 9 && !strncasecmp(d, "spiffe://", 9) && !memchr(d, 0, (size_t)len))
            id = strndup(d, (size_t)len);
    }
    GENERAL_NAMES_free(names);
    return id;
}

/* ---- contexts ---- */

static void sess_unlink(tls_ctx_t *c, sess_ent_t *e)
{
    sess_ent_t **pp = &c->buckets[e->hash % SESS_BUCKETS];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    if (e->prev)
        e->prev->next = e->next;
    else
        c->lru_head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->lru_tail = e->prev;
    c->nsess--;
    SSL_SESSION_free(e->sess);
    free(e);
}

static sess_ent_t *sess_find(tls_ctx_t *c, const char *key, uint32_t h)
{
    for (sess_ent_t *e = c->buckets[h % SESS_BUCKETS]; e; e = e->hnext)
        if (e->hash == h && !strcmp(e->key, key))
            return e;
    return NULL;
}

static void lru_front(tls_ctx_t *c, sess_ent_t *e)
{
    if (c->lru_head == e)
        return;
    if (e->prev) { /* linked: unlink first */
        e->prev->next = e->next;
        if (e->next)
            e->next->prev = e->prev;
        else
            c->lru_tail = e->prev;
    }
    e->prev = NULL;
    e->next = c->lru_head;
    if (c->lru_head)
        c->lru_head->prev = e;
    c->lru_head = e;
    if (!c->lru_tail)
        c->lru_tail = e;
}

/* Keeps sess (taking the caller's reference) as the session of key. 0, or -1 on OOM. */
static int sess_put(tls_ctx_t *c, const char *key, SSL_SESSION *sess)
{
    uint32_t h = hash_str(key);
    int rc = 0;
    pthread_mutex_lock(&c->sess_lock);
    sess_ent_t *e = sess_find(c, key, h);
    if (!c->max_sess) { /* resumption turned off */
        rc = -1;
        goto out;
    }
    if (e) {
        SSL_SESSION_free(e->sess);
        e->sess = sess;
        lru_front(c, e);
        goto out;
    }
    size_t klen = strlen(key);
    e = calloc(1, sizeof(*e) + klen + 1);
    if (!e) {
        rc = -1;
        goto out;
    }
    while (c->nsess >= c->max_sess && c->lru_tail)
        sess_unlink(c, c->lru_tail);
    memcpy(e->key, key, klen + 1);
    e->hash = h;
    e->sess = sess;
    e->hnext = c->buckets[h % SESS_BUCKETS];
    c->buckets[h % SESS_BUCKETS] = e;
    lru_front(c, e);
    c->nsess++;
out:
    pthread_mutex_unlock(&c->sess_lock);
    return rc;
}

/* A new reference to the session kept for key, or NULL. */
static SSL_SESSION *sess_get(tls_ctx_t *c, const char *key)
{
    uint32_t h = hash_str(key);
    SSL_SESSION *s = NULL;
    pthread_mutex_lock(&c->sess_lock);
    sess_ent_t *e = sess_find(c, key, h);
    if (e && SSL_SESSION_is_resumable(e->sess)) {
        s = e->sess;
        SSL_SESSION_up_ref(s);
        lru_front(c, e);
    }
    pthread_mutex_unlock(&c->sess_lock);
    return s;
}

static void sess_drop(tls_ctx_t *c, const char *key)
{
    uint32_t h = hash_str(key);
    pthread_mutex_lock(&c->sess_lock);
    sess_ent_t *e = sess_find(c, key, h);
    if (e)
        sess_unlink(c, e);
    pthread_mutex_unlock(&c->sess_lock);
}

/* OpenSSL's new-session callback of client contexts: 1 keeps the reference to sess. */
static int on_new_session(SSL *ssl, SSL_SESSION *sess)
{
    tls_t *t = SSL_get_app_data(ssl);
    if (!t || !t->session_key || !SSL_SESSION_is_resumable(sess))
        return 0;
    return sess_put(t->ctx, t->session_key, sess) == 0;
}

/* Notes the highest version the client offers, for the error message when it is too old. */
static int on_client_hello(SSL *ssl, int *al, void *arg)
{
    tls_t *t = SSL_get_app_data(ssl);
    if (!t)
        return SSL_CLIENT_HELLO_SUCCESS;
    unsigned v = SSL_client_hello_get0_legacy_version(ssl);
    const unsigned char *ext;
    size_t len;
    if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_supported_versions, &ext, &len) && len >= 1) {
        size_t end = 1 + (size_t)ext[0] < len ? 1 + (size_t)ext[0] : len;
        for (size_t i = 1; i + 1 < end; i += 2) {
            unsigned x = (unsigned)ext[i] << 8 | ext[i + 1];
            if (version_name(x) && x > v)
                v = x;
        }
    }
    t->offered = v;
    return SSL_CLIENT_HELLO_SUCCESS;
}

/* Server ALPN selection: h2 when both sides speak it, else the first of the server's list the
 * client offers, else no ALPN at all (the connection goes on). */
static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned inlen, void *arg)
{
    const tls_ctx_t *c = arg;
    const unsigned char *p;
    if (alpn_find(c->alpn, c->alpn_len, (const unsigned char *)"h2", 2) &&
        (p = alpn_find(in, inlen, (const unsigned char *)"h2", 2))) {
        *out = p;
        *outlen = 2;
        return SSL_TLSEXT_ERR_OK;
    }
    for (size_t i = 0; i < c->alpn_len; i += 1 + c->alpn[i]) {
        if ((p = alpn_find(in, inlen, c->alpn + i + 1, c->alpn[i]))) {
            *out = p;
            *outlen = c->alpn[i];
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_NOACK;
}

static void ctx_free(tls_ctx_t *c)
{
    if (!c)
        return;
    if (c->buckets) {
        while (c->lru_tail)
            sess_unlink(c, c->lru_tail);
        free(c->buckets);
    }
    SSL_CTX_free(c->ssl);
    for (int i = 0; i < c->nfiles; i++)
        free(c->files[i].path);
    free(c->identity);
    free(c->trust_domain);
    free(c->alpn);
    pthread_mutex_destroy(&c->sess_lock);
    free(c);
}

/* Opens path for reading and records its stamp (from the opened file, so a change made while
 * it is read is seen by tls_ctx_changed). Returns a BIO owning the file, or NULL with err. */
static BIO *open_file(tls_ctx_t *c, const char *path, const char *what, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    struct stat st;
    if (!f || fstat(fileno(f), &st) < 0) {
        errf(err, errlen, "tls: cannot read %s %s: %s", what, path, strerror(errno));
        if (f)
            fclose(f);
        return NULL;
    }
    BIO *b = BIO_new_fp(f, BIO_CLOSE);
    file_stamp_t *fs = &c->files[c->nfiles];
    if (!b || !(fs->path = strdup(path))) {
        errf(err, errlen, "tls: out of memory");
        if (b)
            BIO_free(b);
        else
            fclose(f);
        return NULL;
    }
    fs->dev = st.st_dev;
    fs->ino = st.st_ino;
    fs->size = st.st_size;
    fs->mtime = st.st_mtim;
    c->nfiles++;
    return b;
}

/* PEM passphrase callback: keys must not be encrypted (nothing may prompt on a terminal). */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    *(int *)u = 1;
    return -1;
}

static int load_cert_key(tls_ctx_t *c, const char *cert, const char *key, char *err, size_t errlen)
{
    X509 *leaf = NULL, *x;
    STACK_OF(X509) *chain = NULL;
    EVP_PKEY *pk = NULL;
    int rc = -1, encrypted = 0;

    ERR_clear_error();
    BIO *b = open_file(c, cert, "certificate", err, errlen);
    if (!b)
        goto fail;
    leaf = PEM_read_bio_X509(b, NULL, NULL, NULL);
    if (!leaf) {
        errf(err, errlen, "tls: cannot parse certificate %s: %s", cert,
             pem_reason("no certificate found"));
        goto fail;
    }
    if (!(chain = sk_X509_new_null()))
        goto oom;
    while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL))) {
        if (!sk_X509_push(chain, x)) {
            X509_free(x);
            goto oom;
        }
    }
    /* The loop ends at the end of the file (no start line) or at a broken certificate. */
    unsigned long e = ERR_peek_last_error();
    if (e && !(ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE)) {
        errf(err, errlen, "tls: cannot parse certificate %s: %s", cert,
             pem_reason("malformed PEM data"));
        goto fail;
    }
    ERR_clear_error();
    BIO_free(b);

    b = open_file(c, key, "key", err, errlen);
    if (!b)
        goto fail;
    pk = PEM_read_bio_PrivateKey(b, NULL, no_passphrase, &encrypted);
    if (!pk) {
        if (encrypted)
            errf(err, errlen, "tls: key %s is encrypted (not supported)", key);
        else
            errf(err, errlen, "tls: cannot parse key %s: %s", key,
                 pem_reason("no private key found"));
        goto fail;
    }
    if (!X509_check_private_key(leaf, pk)) {
        ERR_clear_error();
        errf(err, errlen, "tls: key %s does not match certificate %s", key, cert);
        goto fail;
    }
    if (!SSL_CTX_use_cert_and_key(c->ssl, leaf, pk, chain, 1)) {
        errf(err, errlen, "tls: cannot use certificate %s: %s", cert, ssl_reason());
        goto fail;
    }
    c->identity = cert_spiffe_id(leaf);
    if (c->identity) {
        const char *td = c->identity + 9, *slash = strchr(td, '/');
        size_t n = slash ? (size_t)(slash - td) : strlen(td);
        if (n && !(c->trust_domain = strndup(td, n)))
            goto oom;
    }
    rc = 0;
    goto fail;
oom:
    errf(err, errlen, "tls: out of memory");
fail:
    BIO_free(b);
    X509_free(leaf);
    sk_X509_pop_free(chain, X509_free);
    EVP_PKEY_free(pk);
    return rc;
}

static int load_ca(tls_ctx_t *c, const char *ca, char *err, size_t errlen)
{
    ERR_clear_error();
    BIO *b = open_file(c, ca, "CA bundle", err, errlen);
    if (!b)
        return -1;
    STACK_OF(X509_INFO) *infos = PEM_X509_INFO_read_bio(b, NULL, NULL, NULL);
    BIO_free(b);
    if (!infos) {
        errf(err, errlen, "tls: cannot parse CA bundle %s: %s", ca,
             pem_reason("malformed PEM data"));
        return -1;
    }
    X509_STORE *store = SSL_CTX_get_cert_store(c->ssl);
    int n = 0, rc = 0;
    for (int i = 0; i < sk_X509_INFO_num(infos); i++) {
        X509_INFO *xi = sk_X509_INFO_value(infos, i);
        if (!xi->x509)
            continue;
        if (!X509_STORE_add_cert(store, xi->x509)) {
            errf(err, errlen, "tls: cannot use CA bundle %s: %s", ca, ssl_reason());
            rc = -1;
            break;
        }
        n++;
    }
    sk_X509_INFO_pop_free(infos, X509_INFO_free);
    if (!rc && !n) {
        errf(err, errlen, "tls: no certificate in CA bundle %s", ca);
        rc = -1;
    }
    return rc;
}

static tls_ctx_t *ctx_new(const tls_conf_t *conf, int server, char *err, size_t errlen)
{
    tls_ctx_t *c = calloc(1, sizeof(*c));
    if (!c) {
        errf(err, errlen, "tls: out of memory");
        return NULL;
    }
    atomic_init(&c->refs, 1);
    pthread_mutex_init(&c->sess_lock, NULL);
    c->server = server;
    c->max_sess = SESS_LIMIT;
    ERR_clear_error();
    if (!(c->ssl = SSL_CTX_new(TLS_method()))) {
        errf(err, errlen, "tls: cannot make a context: %s", ssl_reason());
        goto fail;
    }
    if (!SSL_CTX_set_min_proto_version(c->ssl, TLS1_2_VERSION) ||
        !SSL_CTX_set_cipher_list(c->ssl, TLS12_CIPHERS) ||
        !SSL_CTX_set_ciphersuites(c->ssl, TLS13_SUITES) ||
        !SSL_CTX_set1_groups_list(c->ssl, TLS_GROUPS)) {
        errf(err, errlen, "tls: cannot set protocol parameters: %s", ssl_reason());
        goto fail;
    }
    SSL_CTX_set_options(c->ssl, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(c->ssl, SSL_MODE_RELEASE_BUFFERS);

    if (conf->alpn) {
        if (!alpn_valid((const unsigned char *)conf->alpn, conf->alpn_len)) {
            errf(err, errlen, "tls: malformed ALPN protocol list");
            goto fail;
        }
        if (!(c->alpn = malloc(conf->alpn_len)))
            goto oom;
        memcpy(c->alpn, conf->alpn, conf->alpn_len);
        c->alpn_len = conf->alpn_len;
    }
    if (!conf->cert != !conf->key) {
        errf(err, errlen, "tls: a certificate needs a key and a key a certificate");
        goto fail;
    }
    if (server && !conf->cert) {
        errf(err, errlen, "tls: a server needs a certificate and a key");
        goto fail;
    }
    if (conf->cert && load_cert_key(c, conf->cert, conf->key, err, errlen) < 0)
        goto fail;
    if (conf->ca && load_ca(c, conf->ca, err, errlen) < 0)
        goto fail;

    if (server) {
        int mode = SSL_VERIFY_NONE;
        if (conf->require_peer_cert)
            mode = SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
        else if (conf->optional_peer_cert)
            mode = SSL_VERIFY_PEER;
        if (mode != SSL_VERIFY_NONE && !conf->ca) {
            errf(err, errlen, "tls: verifying client certificates needs a CA bundle");
            goto fail;
        }
        SSL_CTX_set_verify(c->ssl, mode, NULL);
        /* Needed to resume sessions whose client was verified. */
        SSL_CTX_set_session_id_context(c->ssl, (const unsigned char *)"remora", 6);
        SSL_CTX_set_session_cache_mode(c->ssl, SSL_SESS_CACHE_SERVER);
        SSL_CTX_sess_set_cache_size(c->ssl, 4096);
        /* Clients keep one session per destination: one ticket is enough. */
        SSL_CTX_set_num_tickets(c->ssl, 1);
        SSL_CTX_set_client_hello_cb(c->ssl, on_client_hello, NULL);
        if (c->alpn)
            SSL_CTX_set_alpn_select_cb(c->ssl, on_alpn, c);
    } else {
        SSL_CTX_set_verify(c->ssl, conf->ca ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
        SSL_CTX_set_session_cache_mode(c->ssl,
                                       SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(c->ssl, on_new_session);
        if (!(c->buckets = calloc(SESS_BUCKETS, sizeof(*c->buckets))))
            goto oom;
        /* Returns 0 on success. */
        if (c->alpn && SSL_CTX_set_alpn_protos(c->ssl, c->alpn, (unsigned)c->alpn_len)) {
            errf(err, errlen, "tls: cannot set ALPN: %s", ssl_reason());
            goto fail;
        }
    }
    return c;
oom:
    errf(err, errlen, "tls: out of memory");
fail:
    ERR_clear_error();
    ctx_free(c);
    return NULL;
}

tls_ctx_t *tls_ctx_server(const tls_conf_t *conf, char *err, size_t errlen)
{
    return ctx_new(conf, 1, err, errlen);
}

tls_ctx_t *tls_ctx_client(const tls_conf_t *conf, char *err, size_t errlen)
{
    return ctx_new(conf, 0, err, errlen);
}

tls_ctx_t *tls_ctx_ref(tls_ctx_t *c)
{
    if (c)
        atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    return c;
}

void tls_ctx_unref(tls_ctx_t *c)
{
    if (c && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
        ctx_free(c);
}

int tls_ctx_changed(const tls_ctx_t *c)
{
    for (int i = 0; i < c->nfiles; i++) {
        const file_stamp_t *f = &c->files[i];
        struct stat st;
        if (stat(f->path, &st) < 0 || st.st_dev != f->dev || st.st_ino != f->ino ||
            st.st_size != f->size || st.st_mtim.tv_sec != f->mtime.tv_sec ||
            st.st_mtim.tv_nsec != f->mtime.tv_nsec)
            return 1;
    }
    return 0;
}

const char *tls_ctx_trust_domain(const tls_ctx_t *c)
{
    return c->trust_domain;
}

const char *tls_ctx_identity(const tls_ctx_t *c)
{
    return c->identity;
}

SSL_CTX *tls_ctx_ssl(tls_ctx_t *c)
{
    return c->ssl;
}

void tls_ctx_set_session_limit(tls_ctx_t *c, size_t n)
{
    pthread_mutex_lock(&c->sess_lock);
    c->max_sess = n;
    while (c->nsess > n && c->lru_tail)
        sess_unlink(c, c->lru_tail);
    pthread_mutex_unlock(&c->sess_lock);
}

size_t tls_ctx_session_count(tls_ctx_t *c)
{
    pthread_mutex_lock(&c->sess_lock);
    size_t n = c->nsess;
    pthread_mutex_unlock(&c->sess_lock);
    return n;
}

/* ---- slots ---- */

struct tls_slot {
    pthread_mutex_t lock;
    tls_ctx_t *ctx;
};

tls_slot_t *tls_slot_new(tls_ctx_t *initial)
{
    tls_slot_t *s = calloc(1, sizeof(*s));
    if (!s) {
        tls_ctx_unref(initial);
        return NULL;
    }
    pthread_mutex_init(&s->lock, NULL);
    s->ctx = initial;
    return s;
}

tls_ctx_t *tls_slot_get(tls_slot_t *s)
{
    pthread_mutex_lock(&s->lock);
    tls_ctx_t *c = tls_ctx_ref(s->ctx);
    pthread_mutex_unlock(&s->lock);
    return c;
}

void tls_slot_set(tls_slot_t *s, tls_ctx_t *c)
{
    pthread_mutex_lock(&s->lock);
    tls_ctx_t *old = s->ctx;
    s->ctx = c;
    pthread_mutex_unlock(&s->lock);
    tls_ctx_unref(old);
}

void tls_slot_free(tls_slot_t *s)
{
    if (!s)
        return;
    tls_ctx_unref(s->ctx);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

/* ---- connections ---- */

static BIO *mem_bio(void)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (b)
        BIO_set_mem_eof_return(b, -1); /* empty means "retry", never end of stream */
    return b;
}

tls_t *tls_new(tls_ctx_t *ctx, int server, const char *sni, const char *session_key)
{
    tls_t *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->server = !!server;
    if (!(t->ssl = SSL_new(ctx->ssl)))
        goto fail;
    t->ctx = tls_ctx_ref(ctx);
    if (!(t->rbio = mem_bio()))
        goto fail;
    if (!(t->wbio = mem_bio())) {
        BIO_free(t->rbio);
        goto fail;
    }
    SSL_set_bio(t->ssl, t->rbio, t->wbio);
    SSL_set_app_data(t->ssl, t);
    if (server) {
        SSL_set_accept_state(t->ssl);
    } else {
        SSL_set_connect_state(t->ssl);
        unsigned char addr[16];
        /* RFC 6066: SNI names a host, never an address. */
        if (sni && *sni && inet_pton(AF_INET, sni, addr) != 1 &&
            inet_pton(AF_INET6, sni, addr) != 1 && !SSL_set_tlsext_host_name(t->ssl, sni))
            goto fail;
        if (session_key && ctx->buckets) {
            if (!(t->session_key = strdup(session_key)))
                goto fail;
            SSL_SESSION *s = sess_get(ctx, session_key);
            if (s) {
                SSL_set_session(t->ssl, s);
                SSL_SESSION_free(s);
            }
        }
    }
    return t;
fail:
    ERR_clear_error();
    tls_free(t);
    return NULL;
}

void tls_free(tls_t *t)
{
    if (!t)
        return;
    /* Without this, OpenSSL takes a connection freed before close_notify for a broken one and
     * marks its session not resumable; connections of a pool are closed like that. */
    if (t->hs_done && !t->failed)
        SSL_set_shutdown(t->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_free(t->ssl);
    tls_ctx_unref(t->ctx);
    free(t->session_key);
    rmr_buf_free(&t->pending);
    free(t->peer_alpn);
    free(t->peer_id);
    free(t->err);
    free(t);
}

static void set_error(tls_t *t, const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_error(tls_t *t, const char *kind, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    free(t->err);
    if (vasprintf(&t->err, fmt, ap) < 0)
        t->err = NULL;
    va_end(ap);
    t->err_kind = kind;
}

/* The name of an alert: OpenSSL 3.0 knows the names of TLS 1.3's new alerts only as error
 * reasons ("tlsv13 alert certificate required"). */
static const char *alert_name(int desc, unsigned long e)
{
    const char *s = SSL_alert_desc_string_long(desc);
    if (strcmp(s, "unknown"))
        return s;
    const char *r = ERR_reason_error_string(e), *a = r ? strstr(r, "alert ") : NULL;
    return a ? a + 6 : s;
}

/* Marks t failed with the reason OpenSSL gives (its error queue, the verify result); clears the
 * queue. Returns TLS_ERR. */
static int fail(tls_t *t, int ssl_err)
{
    unsigned long e, first = 0, first_ssl = 0;
    while ((e = ERR_get_error())) {
        if (!first)
            first = e;
        if (!first_ssl && ERR_GET_LIB(e) == ERR_LIB_SSL)
            first_ssl = e;
    }
    e = first_ssl ? first_ssl : first;
    int reason = first_ssl ? ERR_GET_REASON(first_ssl) : 0;
    long vr = SSL_get_verify_result(t->ssl);
    const char *kind = t->hs_done ? "protocol" : "handshake";

    t->failed = 1;
    switch (reason) {
    case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
        set_error(t, "no-peer-cert", "peer sent no certificate");
        break;
    case SSL_R_CERTIFICATE_VERIFY_FAILED:
        if (vr != X509_V_OK)
            set_error(t, "bad-peer-cert", "peer certificate: %s",
                      X509_verify_cert_error_string(vr));
        else
            set_error(t, "bad-peer-cert", "peer certificate verification failed");
        break;
    case SSL_R_UNSUPPORTED_PROTOCOL:
    case SSL_R_VERSION_TOO_LOW:
    case SSL_R_VERSION_TOO_HIGH:
    case SSL_R_WRONG_SSL_VERSION:
    case SSL_R_NO_PROTOCOLS_AVAILABLE:
        if (t->server && version_name(t->offered))
            set_error(t, "protocol", "protocol version not supported (client offered %s)",
                      version_name(t->offered));
        else
            set_error(t, "protocol", "protocol version not supported");
        break;
    case SSL_R_HTTP_REQUEST:
        set_error(t, "protocol", "plaintext HTTP request on a TLS port");
        break;
    case SSL_R_WRONG_VERSION_NUMBER:
        set_error(t, "protocol", "not TLS (wrong version number)");
        break;
    case SSL_R_NO_SHARED_CIPHER:
        set_error(t, "protocol", "no shared cipher");
        break;
    default:
        if (reason >= SSL_AD_REASON_OFFSET && reason < SSL_AD_REASON_OFFSET + 256) {
            int desc = reason - SSL_AD_REASON_OFFSET;
            set_error(t, desc == SSL_AD_PROTOCOL_VERSION ? "protocol" : kind, "peer sent alert: %s",
                      alert_name(desc, first_ssl));
        } else if (e && ERR_reason_error_string(e)) {
            set_error(t, kind, "%s", ERR_reason_error_string(e));
        } else {
            set_error(t, kind,
                      ssl_err == SSL_ERROR_SYSCALL ? "unexpected end of stream" : "TLS error");
        }
    }
    ERR_clear_error();
    /* A session that ended like this is not worth offering again. */
    if (t->session_key)
        sess_drop(t->ctx, t->session_key);
    return TLS_ERR;
}

/* Replaces an empty memory BIO holding a large buffer by a fresh one. */
static void shrink_bios(tls_t *t)
{
    BUF_MEM *bm;
    if (!BIO_ctrl_pending(t->wbio) && BIO_get_mem_ptr(t->wbio, &bm) > 0 && bm->max > BIO_KEEP) {
        BIO *b = mem_bio();
        if (b) {
            SSL_set0_wbio(t->ssl, b);
            t->wbio = b;
        }
    }
    if (!BIO_ctrl_pending(t->rbio) && BIO_get_mem_ptr(t->rbio, &bm) > 0 && bm->max > BIO_KEEP) {
        BIO *b = mem_bio();
        if (b) {
            SSL_set0_rbio(t->ssl, b);
            t->rbio = b;
        }
    }
}

/* Gives SSL_write what waits in pending. 0, or TLS_ERR. */
static int flush_pending(tls_t *t)
{
    while (t->pending_off < t->pending.len) {
        size_t n;
        ERR_clear_error();
        if (!SSL_write_ex(t->ssl, t->pending.data + t->pending_off, t->pending.len - t->pending_off,
                          &n)) {
            int e = SSL_get_error(t->ssl, 0);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                return 0;
            return fail(t, e);
        }
        t->pending_off += n;
    }
    rmr_buf_free(&t->pending);
    t->pending = (rmr_buf_t){0};
    t->pending_off = 0;
    if (t->shut_pending) {
        t->shut_pending = 0;
        t->shut = 1;
        SSL_shutdown(t->ssl);
        ERR_clear_error();
    }
    return 0;
}

static int handshake_done(tls_t *t)
{
    const unsigned char *p;
    unsigned len;
    t->hs_done = 1;
    SSL_get0_alpn_selected(t->ssl, &p, &len);
    if (len == 2 && !memcmp(p, "h2", 2)) {
        t->alpn = "h2";
    } else if (len == 8 && !memcmp(p, "http/1.1", 8)) {
        t->alpn = "http/1.1";
    } else if (len) {
        if (!(t->peer_alpn = strndup((const char *)p, len)))
            goto oom;
        t->alpn = t->peer_alpn;
    }
    X509 *peer = SSL_get0_peer_certificate(t->ssl);
    errno = 0;
    if (peer && !(t->peer_id = cert_spiffe_id(peer)) && errno == ENOMEM)
        goto oom;
    return flush_pending(t);
oom:
    t->failed = 1;
    set_error(t, "handshake", "out of memory");
    return TLS_ERR;
}

int tls_feed(tls_t *t, const void *data, size_t len)
{
    size_t n;
    if (!len)
        return 0;
    if (!BIO_write_ex(t->rbio, data, len, &n) || n != len) {
        ERR_clear_error();
        return -1;
    }
    return 0;
}

long tls_read(tls_t *t, void *buf, size_t cap)
{
    if (t->failed)
        return TLS_ERR;
    ERR_clear_error();
    if (!t->hs_done) {
        int r = SSL_do_handshake(t->ssl);
        if (r != 1) {
            int e = SSL_get_error(t->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                return 0;
            return fail(t, e);
        }
        if (handshake_done(t) < 0)
            return TLS_ERR;
    } else if (t->pending_off < t->pending.len && flush_pending(t) < 0) {
        return TLS_ERR;
    }
    if (!cap)
        return 0;
    if (cap > LONG_MAX)
        cap = LONG_MAX;
    size_t n;
    ERR_clear_error();
    if (SSL_read_ex(t->ssl, buf, cap, &n))
        return (long)n;
    int e = SSL_get_error(t->ssl, 0);
    switch (e) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        shrink_bios(t);
        return 0;
    case SSL_ERROR_ZERO_RETURN:
        return TLS_EOF;
    }
    return fail(t, e);
}

int tls_write(tls_t *t, const void *data, size_t len)
{
    if (t->failed)
        return TLS_ERR;
    if (t->shut || t->shut_pending) {
        set_error(t, "protocol", "write after close_notify");
        return TLS_ERR;
    }
    if (!len)
        return 0;
    if (t->hs_done && t->pending_off == t->pending.len) {
        size_t n = 0;
        ERR_clear_error();
        if (SSL_write_ex(t->ssl, data, len, &n) && n == len)
            return 0;
        if (n == 0) {
            int e = SSL_get_error(t->ssl, 0);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
                return fail(t, e);
        }
        data = (const char *)data + n;
        len -= n;
    }
    rmr_buf_append(&t->pending, data, len);
    if (t->pending.oom) {
        t->failed = 1;
        set_error(t, "protocol", "out of memory");
        return TLS_ERR;
    }
    return t->hs_done ? flush_pending(t) : 0;
}

int tls_connect(tls_t *t)
{
    if (t->server || t->failed)
        return TLS_ERR;
    ERR_clear_error();
    int r = SSL_do_handshake(t->ssl);
    if (r == 1)
        return handshake_done(t);
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    return fail(t, e);
}

size_t tls_out(tls_t *t, rmr_buf_t *b)
{
    size_t n = BIO_ctrl_pending(t->wbio), got = 0;
    if (!n || rmr_buf_reserve(b, n) < 0)
        return 0;
    if (BIO_read_ex(t->wbio, b->data + b->len, n, &got))
        b->len += got;
    shrink_bios(t);
    return got;
}

size_t tls_out_pending(const tls_t *t)
{
    return BIO_ctrl_pending(t->wbio);
}

void tls_shutdown(tls_t *t)
{
    if (t->failed || t->shut || t->shut_pending)
        return;
    if (!t->hs_done || t->pending_off < t->pending.len) {
        t->shut_pending = 1;
        return;
    }
    t->shut = 1;
    SSL_shutdown(t->ssl);
    ERR_clear_error();
}

int tls_handshake_done(const tls_t *t)
{
    return t->hs_done;
}

int tls_resumed(const tls_t *t)
{
    return t->hs_done && SSL_session_reused(t->ssl);
}

const char *tls_alpn(const tls_t *t)
{
    return t->alpn;
}

const char *tls_version(const tls_t *t)
{
    return SSL_get_version(t->ssl);
}

const char *tls_peer_identity(const tls_t *t)
{
    return t->peer_id;
}

int tls_check_identity(tls_t *t, const char *const *allowed, size_t n)
{
    if (!t->hs_done) {
        set_error(t, "handshake", "handshake not done");
        goto fail;
    }
    if (!SSL_get0_peer_certificate(t->ssl)) {
        set_error(t, "no-peer-cert", "peer presented no certificate");
        goto fail;
    }
    long vr = SSL_get_verify_result(t->ssl);
    if (vr != X509_V_OK) {
        set_error(t, "bad-peer-cert", "peer certificate: %s", X509_verify_cert_error_string(vr));
        goto fail;
    }
    if (!t->peer_id) {
        set_error(t, "identity", "peer certificate has no spiffe:// identity");
        goto fail;
    }
    if (!n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (allowed[i] && !strcmp(allowed[i], t->peer_id))
            return 0;
    set_error(t, "identity", "peer identity %s is not allowed", t->peer_id);
fail:
    if (t->session_key)
        sess_drop(t->ctx, t->session_key);
    return -1;
}

const char *tls_error(const tls_t *t)
{
    if (t->err)
        return t->err;
    return t->err_kind ? "out of memory" : NULL;
}

const char *tls_error_kind(const tls_t *t)
{
    return t->err_kind;
}
