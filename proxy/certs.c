/*
 * The TLS contexts of the process: this sidecar's certificate (bootstrap `tls:` or the command
 * line) as a server for each inbound mode, and as a client for each upstream mode and ALPN.
 * Built on the main thread, held in slots that workers read when they open a connection, and
 * rebuilt whole when a file changes: a failed rebuild keeps the contexts that work.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "remora/log.h"
#include "proxy.h"
#include "tls.h"

static const char alpn_server[] = "\x02h2\x08http/1.1";
static const char alpn_h2[] = "\x02h2";
static const char alpn_h1[] = "\x08http/1.1";

static tls_slot_t *server_slot[4];    /* by rmr_tls_mode_t */
static tls_slot_t *client_slot[4][2]; /* by mode, then h2 */
static tls_ctx_t *loaded;             /* a context of the current set, for tls_ctx_changed */
static char trust_domain[256];

static void set_slot(tls_slot_t **slot, tls_ctx_t *c)
{
    if (!*slot)
        *slot = tls_slot_new(c);
    else
        tls_slot_set(*slot, c);
}

/* Builds every context the files allow; all or nothing. */
static int build(const char *cert, const char *key, const char *ca, char *err, size_t errlen)
{
    tls_ctx_t *srv[4] = {0}, *cli[4][2] = {{0}};
    int rc = -1;
    tls_conf_t sc = {.cert = cert,
                     .key = key,
                     .ca = ca,
                     .alpn = alpn_server,
                     .alpn_len = sizeof(alpn_server) - 1};
    if (!(srv[RMR_TLS_SIMPLE] = tls_ctx_server(&sc, err, errlen)))
        goto out;
    if (ca) {
        sc.require_peer_cert = 1;
        if (!(srv[RMR_TLS_MUTUAL] = tls_ctx_server(&sc, err, errlen)))
            goto out;
        sc.require_peer_cert = 0;
        sc.optional_peer_cert = 1;
        if (!(srv[RMR_TLS_PERMISSIVE] = tls_ctx_server(&sc, err, errlen)))
            goto out;
        for (int h2 = 0; h2 < 2; h2++) {
            tls_conf_t cc = {.cert = cert,
                             .key = key,
                             .ca = ca,
                             .alpn = h2 ? alpn_h2 : alpn_h1,
                             .alpn_len = h2 ? sizeof(alpn_h2) - 1 : sizeof(alpn_h1) - 1};
            if (!(cli[RMR_TLS_MUTUAL][h2] = tls_ctx_client(&cc, err, errlen)))
                goto out;
            cc.cert = cc.key = NULL;
            if (!(cli[RMR_TLS_SIMPLE][h2] = tls_ctx_client(&cc, err, errlen)))
                goto out;
        }
    }
    for (int i = 0; i < 4; i++) {
        set_slot(&server_slot[i], srv[i]);
        srv[i] = NULL;
        for (int h2 = 0; h2 < 2; h2++) {
            set_slot(&client_slot[i][h2], cli[i][h2]);
            cli[i][h2] = NULL;
        }
    }
    tls_ctx_unref(loaded);
    loaded = tls_slot_get(server_slot[RMR_TLS_SIMPLE]);
    const char *td = tls_ctx_trust_domain(loaded);
    snprintf(trust_domain, sizeof(trust_domain), "%s", td ? td : "");
    rc = 0;
out:
    for (int i = 0; i < 4; i++) {
        tls_ctx_unref(srv[i]);
        tls_ctx_unref(cli[i][0]);
        tls_ctx_unref(cli[i][1]);
    }
    return rc;
}

int rmr_tls_setup(rmr_config_t *c, char *err, size_t errlen)
{
    if (!c->tls_cert)
        return 0;
    if (build(c->tls_cert, c->tls_key, c->tls_ca, err, errlen) < 0)
        return -1;
    RMR_INFO("tls: identity %s",
             tls_ctx_identity(loaded) ? tls_ctx_identity(loaded) : "(none: no spiffe:// URI SAN)");
    return 0;
}

int rmr_tls_reload(const rmr_config_t *c, int force, char *err, size_t errlen)
{
    if (!c->tls_cert)
        return 0;
    if (!force && loaded && !tls_ctx_changed(loaded))
        return 0;
    if (build(c->tls_cert, c->tls_key, c->tls_ca, err, errlen) < 0)
        return -1;
    return 1;
}

tls_ctx_t *rmr_tls_server_ctx(rmr_tls_mode_t mode)
{
    return (unsigned)mode < 4 && server_slot[mode] ? tls_slot_get(server_slot[mode]) : NULL;
}

tls_ctx_t *rmr_tls_client_ctx(rmr_tls_mode_t mode, int h2)
{
    return (unsigned)mode < 4 && client_slot[mode][!!h2] ? tls_slot_get(client_slot[mode][!!h2])
                                                         : NULL;
}

void rmr_tls_identities(rmr_config_t *c)
{
    if (!trust_domain[0])
        return;
    for (size_t i = 0; i < c->n_services; i++) {
        rmr_service_conf_t *s = &c->services[i];
        if (s->default_identity || !strncmp(s->name, "inbound|", 8))
            continue;
        if (asprintf(&s->default_identity, "spiffe://%s/service/%s", trust_domain, s->name) < 0)
            s->default_identity = NULL;
    }
}
