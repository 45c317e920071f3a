/*
 * A growable byte buffer. Used for output queues and rendered text. Not thread-safe.
 * Allocation failure leaves the buffer as it was and sets oom, which callers check once at
 * the end of a sequence of appends.
 */
#ifndef REMORA_BUF_H
#define REMORA_BUF_H

#include <stdarg.h>
#include <stddef.h>
#include <string.h>

typedef struct rmr_buf {
    char *data;
    size_t len, cap;
    int oom;
} rmr_buf_t;

/* Makes room for n more bytes; 0 or -ENOMEM. */
int rmr_buf_reserve(rmr_buf_t *b, size_t n);
void rmr_buf_append(rmr_buf_t *b, const void *p, size_t n);
void rmr_buf_printf(rmr_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal, quotes included. */
void rmr_buf_json_str(rmr_buf_t *b, const char *s);
void rmr_buf_free(rmr_buf_t *b);

static inline void rmr_buf_str(rmr_buf_t *b, const char *s)
{
    rmr_buf_append(b, s, strlen(s));
}

/* A string literal, its length known at compile time. */
#define rmr_buf_lit(b, s) rmr_buf_append((b), "" s, sizeof(s) - 1)

/* v in decimal (at most 20 characters) or lower-case hex (at most 16) at out, not terminated;
 * returns the length. The request path formats numbers with these, not printf. */
size_t rmr_fmt_u64(char *out, unsigned long long v);
size_t rmr_fmt_hex(char *out, unsigned long long v);
void rmr_buf_u64(rmr_buf_t *b, unsigned long long v);
void rmr_buf_hex(rmr_buf_t *b, unsigned long long v);

#endif
