/*
 * remora-control's listeners: HTTP/1.1 (the routes of control/API.md) on --http, and on --listen
 * HTTP/1.1 or, for connections that open with the HTTP/2 preface, gRPC through rc_grpc_serve.
 *
 * One accept thread per listener and one thread per connection, with blocking sockets: at most
 * RC_MAX_CONNS connections at a time (past that, new ones are closed at once), each idle at most
 * RC_IO_TIMEOUT_S seconds per read or write. HTTP/1.1 keep-alive and pipelining; request bodies
 * by Content-Length or chunked, at most RC_BODY_MAX bytes (413 past it); Content-Encoding other
 * than identity is refused (415).
 */
#ifndef RC_HTTP_H
#define RC_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "rc_store.h"

#define RC_MAX_CONNS 256
#define RC_IO_TIMEOUT_S 30
#define RC_HEAD_MAX (64u << 10)       /* request line and header fields: 431 past it */
#define RC_BODY_MAX RC_LOG_RECORD_MAX /* 16 MiB */

/* The client preface of HTTP/2 (RFC 9113 3.4), which gRPC clients send first. */
#define RC_H2_PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#define RC_H2_PREFACE_LEN 24

/*
 * The gRPC hook (implemented in control/rc_grpc.c). When a connection on --listen opens with
 * RC_H2_PREFACE, its connection thread calls
 *
 *     rc_grpc_serve(fd, pre, prelen, store)
 *
 * fd:     a connected TCP socket, blocking, with SO_RCVTIMEO and SO_SNDTIMEO of RC_IO_TIMEOUT_S
 *         seconds and TCP_NODELAY set (the callee may change them, e.g. clear the receive
 *         timeout for long-lived streams). Ownership passes to the callee: it must close fd
 *         before returning, on every path.
 * pre:    the bytes already read from the socket, prelen >= RC_H2_PREFACE_LEN of them, starting
 *         with the preface (and possibly more: the client's SETTINGS frame and beyond). They are
 *         owned by the caller and valid until the call returns.
 * store:  the trace store (rc_store.h: thread-safe), valid until the call returns.
 *
 * It serves the connection until the peer closes it or an error occurs, then returns 0, or a
 * negative errno-style code (logged at debug level only). It runs in the connection's own
 * thread, so it may block; RC_MAX_CONNS bounds how many run at once. At shutdown the caller
 * shuts the socket down (shutdown(2) on a descriptor of the same socket), so a blocked read or
 * write fails and the callee must then return promptly; it must not touch the store afterwards.
 *
 * control/rc_http.c holds a weak default that closes fd and returns -ENOSYS, so remora-control
 * links without rc_grpc.c. The strong definition overrides it only when rc_grpc.c is one of the
 * executable's own sources (control/meson.build adds it when the file exists), not inside a
 * static library, whose members a weak definition would leave unlinked.
 */
int rc_grpc_serve(int fd, const char *pre, size_t prelen, rc_store_t *store);

typedef struct rc_listener rc_listener_t;

/* Binds and listens on addr ("HOST:PORT", "[IPv6]:PORT", HOST a numeric address or a name,
 * empty for all; port 0 picks one) for the option `flag` ("--listen", "--http": used in
 * messages). grpc: also take HTTP/2 connections to rc_grpc_serve. Does not accept yet (clients
 * wait in the backlog). Returns NULL on failure with err naming the flag, the address and the
 * errno text. Main thread only. */
rc_listener_t *rc_listener_new(const char *flag, const char *addr, int grpc, char *err,
                               size_t errlen);
/* The bound address as "HOST:PORT" (the real port when 0 was asked for); owned by l. */
const char *rc_listener_addr(const rc_listener_t *l);
/* Starts the accept thread; connections serve store (which must outlive them: see
 * rc_http_shutdown). Returns 0 or a negative errno. Main thread only. */
int rc_listener_start(rc_listener_t *l, rc_store_t *store);
/* Stops accepting (joins the accept thread) and frees l. Connections keep running until
 * rc_http_shutdown. Main thread only; NULL is a no-op. */
void rc_listener_free(rc_listener_t *l);

/* Shuts every open connection down (HTTP/1.1 and gRPC) and waits up to timeout_ms for their
 * threads to end. Call after freeing the listeners. Returns 0, or -ETIMEDOUT when some are still
 * running (then the store must not be freed). Main thread only. */
int rc_http_shutdown(int timeout_ms);

/* The web page's files, embedded at build time by control/web_embed.py from control/web/. */
typedef struct rc_web_file {
    const char *name;         /* "index.html", "app.js", ... */
    const char *content_type; /* with charset for text */
    const unsigned char *data;
    size_t len;
} rc_web_file_t;

extern const rc_web_file_t rc_web_files[];
extern const size_t rc_web_nfiles;

#endif
