/*
 * HTTP/1 message heads: llhttp span callbacks collect the start line and headers of one message
 * into an arena, with limits, and classify the headers a proxy must act on. Shared by the
 * proxy and the fuzz target. Not thread-safe; one h1_msg_t per message being parsed.
 */
#ifndef REMORA_HTTP1_PARSE_H
#define REMORA_HTTP1_PARSE_H

#include <stdint.h>
#include <llhttp.h>

#include "remora/buf.h"

typedef struct h1_span {
    uint32_t off, len;
} h1_span_t;

/* Headers a proxy treats specially. */
enum {
    H_OTHER = 0,
    H_CONNECTION,
    H_KEEP_ALIVE,
    H_PROXY_CONNECTION,
    H_TE,
    H_TRANSFER_ENCODING,
    H_UPGRADE,
    H_CONTENT_LENGTH,
    H_HOST,
    H_X_FORWARDED_FOR,
    H_TRAILER, /* end-to-end: classified, forwarded */
};

typedef struct h1_hdr {
    h1_span_t name, value;
    uint8_t kind;    /* H_* */
    uint8_t dropped; /* named by Connection: or hop-by-hop: not forwarded */
} h1_hdr_t;

/* Connection header tokens. */
#define H1_CONN_CLOSE 0x1
#define H1_CONN_KEEPALIVE 0x2
#define H1_CONN_UPGRADE 0x4

typedef struct h1_msg {
    rmr_buf_t arena;
    h1_span_t url, status_text;
    h1_hdr_t *hdrs;
    uint32_t nhdrs, caphdrs;
    uint32_t max_bytes;                /* head bytes allowed (431 past it) */
    uint32_t max_hdrs;                 /* headers allowed (431 past it) */
    uint8_t in;                        /* 1: inside a header name, 2: inside a value */
    uint8_t val_cut;                   /* the last value span ended where the fed bytes ended */
    const char *feed_start, *feed_end; /* the bytes given to llhttp_execute: h1_msg_feed() */
    uint8_t nl_ws;                     /* the bytes fed so far end in LF then only SP/HTAB */
    uint8_t nl_ws_start;               /* the same, before the current chunk */
    int err_status;                    /* set by a callback that refused the message: 400 or 431 */
    const char *err_reason;
    /* filled by h1_msg_analyze() */
    uint32_t conn_tokens;
    int host; /* index of Host, -1 */
} h1_msg_t;

void h1_msg_init(h1_msg_t *m, uint32_t max_bytes, uint32_t max_hdrs);

/*
 * Tells m about the bytes the caller is about to give llhttp_execute, so that the callbacks can
 * tell a value cut by the end of the input from an obs-fold continuation. Call before every
 * llhttp_execute while m is the message being parsed.
 */
void h1_msg_feed(h1_msg_t *m, const char *data, size_t len);
/* Forgets the message, keeps the memory. */
void h1_msg_reset(h1_msg_t *m);
void h1_msg_free(h1_msg_t *m);

/* Span callbacks; each returns 0 or -1 (then err_status says why). */
int h1_on_url(h1_msg_t *m, const char *at, size_t len);
int h1_on_status(h1_msg_t *m, const char *at, size_t len);
int h1_on_header_field(h1_msg_t *m, const char *at, size_t len);
int h1_on_header_value(h1_msg_t *m, const char *at, size_t len);
int h1_on_header_value_complete(h1_msg_t *m);
/* Adds a whole header (from an HTTP/2 peer, whose codec checked its characters). */
int h1_msg_add(h1_msg_t *m, const char *name, size_t nlen, const char *value, size_t vlen);

/*
 * Classifies headers once the head is complete: hop-by-hop headers and those named in
 * Connection are marked dropped, Connection tokens are collected. Returns 0, or -1 with
 * err_status 400 when the head is one a proxy must refuse (e.g. several Host headers).
 */
int h1_msg_analyze(h1_msg_t *m);

static inline const char *h1_str(const h1_msg_t *m, h1_span_t s)
{
    return m->arena.data + s.off;
}

/* Case-insensitive (ASCII letters) equality of a span with a name of n bytes. */
int h1_span_ieq(const h1_msg_t *m, h1_span_t s, const char *lc, size_t n);

/* Case-insensitive compare of a span with a literal (inline: a literal's length is
 * known at compile time, and most spans differ in length). */
static inline int h1_span_eq(const h1_msg_t *m, h1_span_t s, const char *lit)
{
    size_t n = strlen(lit);
    return s.len == n && h1_span_ieq(m, s, lit, n);
}

#endif
