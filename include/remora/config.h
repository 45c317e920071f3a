/*
 * remora runtime configuration: the immutable, reference-counted snapshot that the data plane
 * reads. It is compiled from the protobuf messages of proto/ (which come from YAML, from the
 * control plane, or from the command line) and validated whole before anyone sees it.
 *
 * Threads: a snapshot is built on the main thread and is read-only afterwards; any thread may
 * take and drop references.
 */
#ifndef REMORA_CONFIG_H
#define REMORA_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <netinet/in.h>
#include <regex.h>

typedef enum rmr_lb {
    RMR_LB_ROUND_ROBIN = 0,
    RMR_LB_LEAST_REQUEST,
    RMR_LB_RANDOM,
    RMR_LB_RING_HASH,
} rmr_lb_t;

typedef enum rmr_proto {
    RMR_PROTO_HTTP1 = 0,
    RMR_PROTO_HTTP2,
    RMR_PROTO_AUTO,
} rmr_proto_t;

/* How a connection between sidecars is protected (values as proto TlsMode). */
typedef enum rmr_tls_mode {
    RMR_TLS_DISABLE = 0,
    RMR_TLS_MUTUAL,
    RMR_TLS_SIMPLE,
    RMR_TLS_PERMISSIVE, /* inbound only: mTLS or plaintext */
} rmr_tls_mode_t;

typedef struct rmr_label {
    char *key;
    char *value;
} rmr_label_t;

/* A socket address as written by a user, "host:port", "[v6]:port", parsed once. */
typedef struct rmr_addr {
    struct sockaddr_storage ss;
    socklen_t len;
    char *text; /* as written, for logs and /clusters */
} rmr_addr_t;

typedef struct rmr_endpoint_conf {
    rmr_addr_t addr;
    size_t n_labels;
    rmr_label_t *labels;
} rmr_endpoint_conf_t;

typedef struct rmr_service_conf {
    char *name;
    rmr_lb_t lb;
    rmr_proto_t protocol;
    uint32_t connect_timeout_ms; /* default 1000 */
    uint32_t idle_timeout_ms;    /* upstream keep-alive idle timeout, default 60000 */
    size_t n_endpoints;
    rmr_endpoint_conf_t *endpoints;
    /* DNS discovery: dns_name != NULL means endpoints come from c-ares and are replaced on
     * each refresh; the static list above then holds the last answer (possibly empty). */
    char *dns_name;
    uint16_t dns_port;
    uint32_t dns_refresh_ms; /* default 5000 */
    /* The Remora__V1__Service it came from, for later filters (circuit_breaker,
     * idempotency...). For the inbound service "inbound|<service>": the mesh's entry named
     * <service> when there is one, else NULL. NULL for none from the command line. */
    const void *pb;
    /* TLS toward the endpoints; the strings point into pb (or the command line). */
    rmr_tls_mode_t tls_mode;
    const char *tls_sni; /* NULL: the service's name */
    size_t n_identities; /* server identities accepted; 0: the default below */
    char *const *identities;
    char *default_identity; /* spiffe://<trust domain>/service/<name>, owned; NULL
                               until the sidecar's own certificate is known */
} rmr_service_conf_t;

typedef struct rmr_route_conf {
    char *name;
    char *match_service; /* Host/:authority without port; NULL matches any */
    char *path_prefix;   /* NULL or "" matches any */
    char *path_exact;    /* NULL: not used */
    char *path_regex;    /* POSIX ERE on the whole path, NULL: not used; compiled in path_re */
    regex_t *path_re;    /* path_regex compiled (REG_EXTENDED | REG_NOSUB), owned */
    char *method;        /* NULL: any method */
    /* match.headers and match.query are in pb (Remora__V1__KeyMatch) */
    size_t service;      /* index into rmr_config_t.services */
    uint32_t timeout_ms; /* whole request, 0 = the listener's default */
    const void *pb;      /* the Remora__V1__Route it came from */
} rmr_route_conf_t;

typedef struct rmr_listener_conf {
    rmr_addr_t addr;
    int inbound;            /* 1: to the local app; 0: outbound, routed by Host */
    size_t inbound_service; /* inbound: index of the local-app service in services[] */
    rmr_tls_mode_t tls_mode;
    size_t n_allow;     /* caller identities let in; 0: any the trust bundle vouches for */
    char *const *allow; /* into the bootstrap message */
} rmr_listener_conf_t;

typedef struct rmr_limits {
    uint32_t max_header_bytes;     /* request/response head, default 65536 (431 past it) */
    uint32_t max_headers;          /* default 100 */
    uint64_t max_body_bytes;       /* request body, 0 = unlimited (413 past it) */
    uint32_t header_timeout_ms;    /* first byte to end of request head, default 10000 (408) */
    uint32_t request_timeout_ms;   /* default route timeout, default 15000 (504) */
    uint32_t idle_timeout_ms;      /* downstream keep-alive idle, default 60000 */
    uint32_t drain_timeout_ms;     /* SIGTERM grace, default 10000 */
    uint32_t max_connections;      /* per worker, default 10000 */
    uint32_t h2_max_streams;       /* concurrent streams per client connection, default 128 */
    uint32_t h2_window;            /* stream receive window, default 1 MiB */
    uint32_t h2_max_resets;        /* client RST_STREAMs per second before GOAWAY, default 200 */
    uint32_t h2_max_control;       /* SETTINGS+PING per second before GOAWAY, default 100 */
    uint32_t h2_max_continuations; /* CONTINUATION frames in one header block, default 16 */
} rmr_limits_t;

typedef struct rmr_config {
    int refs;              /* atomic; see rmr_config_ref/unref */
    char *source;          /* file it came from, or "command line" */
    unsigned workers;      /* 0 = one per core */
    uint32_t busy_poll_us; /* bootstrap busy_poll; 0 = off */
    char *node;
    char *service_name; /* the service this sidecar fronts, may be NULL */
    rmr_addr_t *admin;  /* NULL: no admin listener */
    size_t n_listeners;
    rmr_listener_conf_t *listeners;
    /* the mesh's services in order, then "inbound|<service>" (the local app) when the
     * bootstrap has inbound */
    size_t n_services;
    rmr_service_conf_t *services;
    size_t n_routes;
    rmr_route_conf_t *routes;
    rmr_limits_t limits;
    char *access_log;     /* bootstrap access_log resolved against its folder, "-" for stdout;
                             NULL: none */
    uint32_t lane_ttl_ms; /* lane memory: default 300000 */
    uint32_t lane_max;    /* default 100000 */
    size_t n_labels;      /* this sidecar's own labels (bootstrap labels), into boot_pb */
    rmr_label_t *labels;
    /* This sidecar's certificate files (bootstrap `tls:`), resolved against the bootstrap's
     * folder, or set from the command line; NULL when none. Valid in every copy. */
    const char *tls_cert, *tls_key, *tls_ca;
    void *mesh_pb; /* Remora__V1__Mesh *, owned */
    void *boot_pb; /* Remora__V1__Bootstrap *, owned, NULL from the command line */
    /* Reference-counted owner of mesh_pb, boot_pb (and the YAML line index): copies made by
     * rmr_config_with_endpoints share it, so pb pointers stay valid in every copy. */
    struct rmr_config_shared *shared;
} rmr_config_t;

/* Error text: "file:line: field: message". */
typedef struct rmr_conf_err {
    char msg[512];
} rmr_conf_err_t;

/*
 * Loads `remora --config FILE`: the sidecar bootstrap, and the mesh_file it names (a relative
 * path is taken from the bootstrap's folder). Returns a snapshot with one reference, or NULL
 * with err filled in ("file:line: field: message").
 */
rmr_config_t *rmr_config_load(const char *bootstrap_path, rmr_conf_err_t *err);

/*
 * As rmr_config_load, from YAML text in memory: the bootstrap boot_yaml[0..boot_len) and the
 * mesh mesh_yaml[0..mesh_len) (NULL: no mesh; the bootstrap's mesh_file is not read). The names
 * are used in errors. For remora-control validating a pushed mesh, and for the fuzzer.
 * Returns a snapshot with one reference, or NULL with err filled in.
 */
rmr_config_t *rmr_config_parse(const char *boot_name, const char *boot_yaml, size_t boot_len,
                               const char *mesh_name, const char *mesh_yaml, size_t mesh_len,
                               rmr_conf_err_t *err);

/*
 * Builds the one-route config of `remora --listen A --upstream B [--workers N] [--admin C]`:
 * one outbound listener, one service "upstream" whose endpoints are the comma-separated
 * addresses of `upstream`, one catch-all route "default" to it. admin may be NULL. Returns a
 * snapshot with one reference (mesh_pb holds the equivalent Mesh, boot_pb is NULL), or NULL
 * with err filled in ("command line: --upstream: message").
 */
rmr_config_t *rmr_config_simple(const char *listen, const char *upstream, unsigned workers,
                                const char *admin, rmr_conf_err_t *err);

/*
 * Parses "host:port", "[v6]:port" (numeric host, or "localhost" meaning 127.0.0.1; port
 * 0..65535). 0, -EINVAL, or -ENOMEM. On success out->text is a malloc'd copy of text that the
 * caller releases with rmr_addr_clear; on failure out is zeroed and owns nothing.
 */
int rmr_addr_parse(const char *text, rmr_addr_t *out);

/* Frees what rmr_addr_parse allocated in a (its text) and zeroes it. NULL is fine. */
void rmr_addr_clear(rmr_addr_t *a);

/* Looks up a service by name (name[0..len), not NUL-terminated); -1 when none. */
ssize_t rmr_config_service(const rmr_config_t *c, const char *name, size_t len);

/* Takes one more reference (atomic, any thread); returns c. */
rmr_config_t *rmr_config_ref(rmr_config_t *c);
/* Drops one reference (atomic, any thread); the last one frees the snapshot. NULL is fine. */
void rmr_config_unref(rmr_config_t *c);

/*
 * A copy of c with service `svc`'s endpoints replaced by eps (copied; eps[i].text may be NULL,
 * it is then rendered from the address; the new endpoints have no labels). Used by DNS
 * refresh. The copy has one reference and shares c's protobuf messages (reference-counted), so
 * c may be unref'd first. Returns NULL on allocation failure or when svc is out of range.
 */
rmr_config_t *rmr_config_with_endpoints(const rmr_config_t *c, size_t svc, const rmr_addr_t *eps,
                                        size_t n);

/*
 * Renders the snapshot as JSON for the admin /config endpoint: source, node, listeners,
 * services, routes, limits, and the whole mesh message under "mesh". malloc'd, caller frees;
 * NULL on allocation failure.
 */
char *rmr_config_to_json(const rmr_config_t *c);

#endif
