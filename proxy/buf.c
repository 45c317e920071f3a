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
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || rmr_buf_reserve(b, (size_t)n + 1) < 0)
        return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
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
