/*
 * The HTTP proxy hop's private types, shared by the HTTP/1 codec (http1.c), the HTTP/2 codec
 * (h2.c) and the TLS glue.
 *
 * A conn_t is a TCP connection, to a client (downstream) or to an upstream endpoint, that
 * speaks HTTP/1.1 or HTTP/2, in plaintext or TLS. A stream (one request/response exchange)
 * belongs to a downstream conn_t: the connection itself for HTTP/1, or a "virtual" conn_t per
 * HTTP/2 stream whose parent is the real connection. The request and response logic (routing,
 * dispatch, timeouts, local replies) then runs the same for both; only the framing differs.
 * Toward the upstream, a stream holds either an HTTP/1 conn_t of its own (d->peer) or a stream
 * of a shared HTTP/2 upstream conn_t (st->u2, st->u2sid).
 */
#ifndef REMORA_HTTP_H
#define REMORA_HTTP_H

#include <netinet/in.h>
#include <arpa/inet.h>
#include <linux/time_types.h>

#include "proxy.h"
#include "http1_parse.h"

#define OUT_HIGH (256 * 1024) /* stop reading the source past this much unsent output */
#define STASH_MAX (64 * 1024) /* pipelined bytes kept while a response is pending */
#define MAX_IDLE_PER_ENDPOINT 1024

typedef enum {
    D_IDLE = 0, /* between requests */
    D_HEAD,     /* reading a request head */
    D_STREAM,   /* a request is routed; body and/or response flowing */
    D_TUNNEL,   /* after 101 Switching Protocols */
    D_CLOSING,  /* a final reply is being written; close after it */
} dstate_t;

typedef enum {
    U_CONNECTING = 0,
    U_ACTIVE,
    U_IDLE,
    U_TUNNEL,
} ustate_t;

typedef enum { FRAME_NONE = 0, FRAME_CL, FRAME_CHUNKED, FRAME_CLOSE } frame_t;

/* What a connection speaks. */
typedef enum { P_H1 = 0, P_H2, P_SNIFF /* not known yet: the first bytes decide */ } cproto_t;

typedef struct h2conn h2conn_t;
typedef struct tls tls_t;

typedef struct stream {
    h1_msg_t req;  /* parsed request head; spans into req.arena */
    h1_msg_t resp; /* parsed response head (then trailers, from an HTTP/2 upstream) */
    view_t *view;
    cluster_t *cluster;
    endpoint_t *ep;
    uint64_t start_us;
    uint32_t timeout_ms;
    frame_t req_out;     /* framing toward an HTTP/1 upstream */
    frame_t resp_out;    /* framing toward an HTTP/1 client */
    uint64_t body_in;    /* request body bytes so far */
    uint64_t req_cl;     /* Content-Length of the request */
    int status;          /* of the final response */
    uint64_t resp_cl;    /* its Content-Length, when resp_has_cl */
    conn_t *d;           /* the downstream (connection or HTTP/2 stream) it belongs to */
    list_t u2link;       /* in the upstream HTTP/2 connection's streams */
    uint32_t u2_unacked; /* response DATA not yet handed back to the upstream's window */
    char method[24];
    /* toward an HTTP/2 upstream */
    conn_t *u2;
    int32_t u2sid;
    rmr_buf_t *reqbody; /* request body not yet taken by the upstream session */
    size_t reqbody_off;
    /* filters: retries */
    int route;              /* index of the route in the view, -1: none */
    uint32_t attempt;       /* tries so far, the current one included */
    uint64_t try_start_us;  /* when the current try was sent */
    rmr_timer_t try_timer;  /* per-try timeout, then the backoff before the next try */
    rmr_buf_t *replay;      /* the request body so far, kept to send again (malloc'd) */
    endpoint_t *last_ep;    /* the endpoint of the failed try: the next one avoids it */
    char idem_gen[48];      /* an Idempotency-Key value remora added ("" none) */
    uint32_t retry_after_s; /* Retry-After of a local 429 */
    /* filters: inbound de-duplication */
    char *idem_key;                 /* the request's key (malloc'd), while the store holds it */
    uint64_t idem_fp;               /* hash of method and target */
    uint64_t body_hash;             /* of the request body so far */
    rmr_idem_entry_t *idem_hit;     /* a stored response to answer with once the body is read */
    rmr_buf_t *cap_head, *cap_body; /* the response as the store will keep it (malloc'd) */
    unsigned req_done : 1, resp_started : 1, resp_done : 1, head_req : 1, upgrade : 1,
        keepalive : 1, replayable : 1, retried : 1, tunnel_ok : 1, has_cl : 1, client11 : 1,
        grpc : 1, trailers : 1, u2_open : 1, resp_eof : 1, resp_has_cl : 1, resp_nobody : 1,
        keep_body : 1, replay_over : 1, retry_wait : 1, retry_status : 1, held_req : 1,
        held_retry : 1, budget_req : 1, probe : 1, idem_new : 1, cap_over : 1, has_idem_key : 1,
        up_sent : 1, /* an HTTP/2 upstream stream was opened for it already */
        fault : 2,   /* 1: aborted by a fault, 2: delayed by one */
        mirrored : 1, mirror_want : 1, replayed : 1, lane_in_req : 1,
        body_held : 1; /* the body waits in the replay copy for a delayed first try */
    /* gray release (gray.c) */
    const subset_t *subset;              /* the subset that served, NULL: no route */
    uint8_t order[RMR_GRAY_SUBSETS_MAX]; /* the split's subsets in the order to try them */
    uint8_t n_order;
    int8_t lane_sub; /* the route's lane subset for the request's lane, -1: none */
    uint8_t lane_len;
    char lane[RMR_LANE_MAX + 1];
    uint32_t fault_delay_ms;
    const char *reason; /* of a local reply (static text), for the access log */
    /* tracing (trace.c) */
    uint8_t trace_id[16], trace_parent[8], span_id[8];
    uint64_t trace_start_ns, trace_end_ns;
    void *trace_ev; /* retry events, malloc'd on the first */
    uint8_t trace_nev;
    unsigned trace_live : 1, trace_has_parent : 1, trace_sampled : 1;
} stream_t;

struct conn {
    rmr_op_t recv_op, send_op, connect_op;
    worker_t *w;
    conn_kind_t kind;
    int fd;
    int ops; /* ops in the kernel whose last completion is still due */
    unsigned recv_armed : 1, recv_paused : 1, closing : 1, reused : 1, close_after : 1, in_list : 1,
        in_parse : 1, virt : 1, tls_done : 1, tls_sniff : 1;
    uint8_t state;
    uint8_t proto;      /* cproto_t */
    rmr_buf_t *out;     /* bytes to send, appended (plaintext when tls) */
    rmr_buf_t *sending; /* bytes owned by the send op in flight */
    size_t send_off;
    rmr_buf_t *stash; /* downstream: pipelined bytes not yet parsed */
    llhttp_t parser;
    list_t link; /* downstream: worker's conns (virt: the parent's streams); upstream: endpoint's
                    idle list (h2: the endpoint's shared connections) */
    rmr_timer_t timer;
    conn_t *peer;
    stream_t *st;   /* downstream: the current stream */
    endpoint_t *ep; /* upstream: its endpoint */
    const listener_t *lst;
    const char *feed_start, *feed_end; /* the bytes being parsed */
    struct __kernel_timespec connect_ts;
    h2conn_t *h2;      /* an HTTP/2 connection's session */
    list_t dirty_link; /* in w->h2dirty when dirty */
    unsigned dirty : 1;
    tls_t *tls;
    /* a virtual conn (one HTTP/2 stream of a client connection) */
    conn_t *parent;
    int32_t sid;
    size_t out_off;    /* bytes of out already framed into DATA */
    uint32_t unacked;  /* request DATA bytes not yet handed back to the flow-control window */
    uint32_t rst_code; /* the RST_STREAM code to reset the stream with, 0: INTERNAL_ERROR */
    rmr_breaker_t *cx_breaker; /* upstream: counted in this breaker's connections */
    unsigned held_pending : 1; /* ... and in its pending requests, until connected */
    int fail_status;           /* upstream: why it failed, for the streams it carried */
    const char *fail_reason;
    char client_ip[INET6_ADDRSTRLEN];
};

/* http1.c: shared with h2.c */
rmr_buf_t *out_of(conn_t *c);
size_t pending(const conn_t *c);
int out_append(conn_t *c, const void *p, size_t n);
conn_t *conn_new(worker_t *w, conn_kind_t kind, int fd);
void conn_close(conn_t *c);
void conn_flush(conn_t *c);
void recv_pause(conn_t *c);
void recv_resume(conn_t *c);
stream_t *stream_new(conn_t *d);
void stream_free(conn_t *d);
void stream_record(conn_t *d);
void stream_fail(conn_t *d, int status, const char *reason);
void stream_route(conn_t *d);
void up_release(conn_t *u, int reusable);
void local_reply(conn_t *d, int status, const char *reason, int keep);
const char *reason_text(const char *reason);
conn_t *up_connect(worker_t *w, endpoint_t *ep, int *err);
void resp_head_out(conn_t *d, const h1_msg_t *m, int status, int has_cl, uint64_t cl,
                   int chunked_or_unknown);
void resp_body_out(conn_t *d, const char *at, size_t len);
void resp_end_out(conn_t *d);
void req_body_out(conn_t *d, const char *at, size_t len);
void req_end_out(conn_t *d);
void down_feed_h1(conn_t *d, const char *data, size_t len);
void client_ip_fill(conn_t *d);
void on_down_timer(rmr_loop_t *loop, rmr_timer_t *t);
/* The outcome of the stream's current try, for outlier detection; once per try. */
void try_report(stream_t *st, rmr_outcome_t o);
/* The current try of d's stream failed (k; status for RMR_ATT_STATUS; Retry-After in ms or 0):
 * 1 when another try is scheduled after the backoff (the caller leaves the upstream and answers
 * nothing), 0 when the caller answers as without retries. */
int try_again(conn_t *d, rmr_attempt_kind_t k, int status, int64_t retry_after_ms);
/* gray.c: the request side of gray release. gray_match: the first route whose match holds, or
 * -1. gray_request: lane, subsets, faults and the mirror decision of a routed request; 0: go
 * on, 1: answered (a fault abort), 2: delay the first try by st->fault_delay_ms. gray_pick:
 * the endpoint of a try. gray_account: a request (1) or its response (0) in the route and
 * subset stats. gray_mirror_start at the first dispatch, gray_mirror_end once the request body
 * is whole: send the shadow copy when one is due. */
int gray_match(conn_t *d, const char *host, size_t hlen, const char *path, size_t plen);
int gray_request(conn_t *d, int inbound);
endpoint_t *gray_pick(worker_t *w, stream_t *st, const endpoint_t *avoid, int *probe);
void gray_account(stream_t *st, int request);
void gray_mirror_start(conn_t *d);
void gray_mirror_end(conn_t *d);
/* trace.c: the trace context of a routed request (read, then rewritten for upstream), an event
 * per retry, and the span at the stream's end. msg_add_own: adds a header of remora's own to a
 * request (not counted against the client's limits); -1 leaves the request as it was. */
void trace_request(conn_t *d);
void trace_attempt(stream_t *st, const char *reason);
void trace_finish(conn_t *d, stream_t *st);
void trace_end(stream_t *st); /* the response is complete: the span's end time */
int msg_add_own(h1_msg_t *m, const char *name, const char *value, size_t vlen);
/* alog.c: the access-log line of d's stream */
void alog_request(conn_t *d, const stream_t *st);
#define RETRY_BODY_MAX (64 * 1024) /* request body kept to send again on a retry */
/* The request's authority and origin-form path: from an absolute-form target, else the Host
 * header (*auth NULL and *alen 0 when there is none) and the target as it is. */
void req_target(const h1_msg_t *m, const char **auth, size_t *alen, const char **path,
                size_t *plen);
/* The x-remora-deadline-ms to send upstream for d's stream (ms left of the route's timeout), or
 * 0 when none is sent (no timeout or retries on the route, or the client sent one). */
uint64_t deadline_header_ms(conn_t *d);
/* The Retry-After of a response head, in ms from now; 0 when none or unreadable. */
int64_t resp_retry_after_ms(const h1_msg_t *m);

/* h2.c */
/* A downstream connection turned out to speak HTTP/2 (preface or ALPN): starts its session and
 * feeds what was read. -1: the connection was closed. */
int h2_down_start(conn_t *d);
/* Bytes from an HTTP/2 connection (either kind); data NULL: EOF or error. */
void h2_feed(conn_t *c, const char *data, size_t len);
/* Frames what the session has to send into c->out and flushes. */
void h2_flush(conn_t *c);
/* Asks for h2_flush(c) at the end of this loop turn: never re-enters a session. */
void h2_mark(conn_t *c);
/* After a send of an HTTP/2 connection completed. */
void h2_after_send(conn_t *c);
/* A virtual stream's response bytes or state changed: let the session frame them. */
void h2_stream_kick(conn_t *d);
/* Answers an HTTP/2 stream with a reply of remora's own. */
void h2_local_reply(conn_t *d, int status, const char *reason);
/* The virtual conn d is closing: reset its stream unless it ended. */
void h2_stream_closing(conn_t *d);
/* c (either kind) is closing: its streams are reset or failed, its session freed. */
void h2_conn_closing(conn_t *c);
/* Sends the routed stream of d to an HTTP/2 upstream of its endpoint st->ep; a second try sends
 * the body kept for replay again. 0, or -1 when this try failed (stream_fail was called, or
 * another try is scheduled). */
int h2_up_dispatch(conn_t *d);
/* The downstream side of an upstream HTTP/2 stream is gone: reset it. */
void h2_up_cancel(stream_t *st);
/* More request body (or its end) for an upstream HTTP/2 stream. */
void h2_up_body(conn_t *d);
/* The client of st drained its output: hand back the upstream stream's window. */
void h2_up_ack(stream_t *st);
/* Sends GOAWAY to an HTTP/2 client connection (drain): streams in flight finish. */
void h2_drain(conn_t *d);
/* Response head, body and end toward an HTTP/2 client (virtual conn d). */
void h2_resp_head(conn_t *d, const h1_msg_t *m, int status);
/* Trailers toward an HTTP/2 client (from an HTTP/2 upstream). */
void h2_resp_trailers(conn_t *d, const h1_msg_t *m);
/* Closes the upstream HTTP/2 connections of an endpoint (its view is going away). */
void h2_pool_drop(endpoint_t *ep);
/* The upstream HTTP/2 connections of from move to to (a newer view). */
void h2_pool_move(endpoint_t *from, endpoint_t *to);

#endif
