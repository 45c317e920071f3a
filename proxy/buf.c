#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "remora/buf.h"

int rmr_buf_reserve(rmr_buf_t *b, size_t n)
{
    if (b->cap - b->len >= n)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < n)
        cap *= 2;
    char *d = realloc(b->data, cap);
    if (!d) {
        b->oom = 1;
        return -ENOMEM;
    }
    b->data = d;
    b->cap = cap;
    return 0;
}

void rmr_buf_append(rmr_buf_t *b, const void *p, size_t n)
{
    if (!n || rmr_buf_reserve(b, n) < 0)
        return;
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

void rmr_buf_printf(rmr_buf_t *b, const char *fmt, ...)
{
    /* Format once into the room there is; only a text longer than that is formatted twice. */
    va_list ap;
    size_t room = b->cap - b->len;
    va_start(ap, fmt);
    int n = vsnprintf(room ? b->data + b->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < room) {
        b->len += (size_t)n;
        return;
    }
    if (rmr_buf_reserve(b, (size_t)n + 1) < 0)
        return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

size_t rmr_fmt_u64(char *out, unsigned long long v)
{
    char t[20];
    size_t n = 0;
    do {
        t[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = t[n - 1 - i];
    return n;
}

size_t rmr_fmt_hex(char *out, unsigned long long v)
{
    static const char d[] = "0123456789abcdef";
    char t[16];
    size_t n = 0;
    do {
        t[n++] = d[v & 15];
        v >>= 4;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = t[n - 1 - i];
    return n;
}

void rmr_buf_u64(rmr_buf_t *b, unsigned long long v)
{
    if (rmr_buf_reserve(b, 20) < 0)
        return;
    b->len += rmr_fmt_u64(b->data + b->len, v);
}

void rmr_buf_hex(rmr_buf_t *b, unsigned long long v)
{
    if (rmr_buf_reserve(b, 16) < 0)
        return;
    b->len += rmr_fmt_hex(b->data + b->len, v);
}

void rmr_buf_json_str(rmr_buf_t *b, const char *s)
{
    rmr_buf_append(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        if (*p == '"' || *p == '\\') {
            char e[2] = {'\\', (char)*p};
            rmr_buf_append(b, e, 2);
        } else if (*p < 0x20) {
            rmr_buf_printf(b, "\\u%04x", *p);
        } else {
            rmr_buf_append(b, p, 1);
        }
    }
    rmr_buf_append(b, "\"", 1);
}

void rmr_buf_free(rmr_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
}
