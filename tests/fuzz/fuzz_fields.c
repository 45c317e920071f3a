/*
 * Fuzz target for the header values the filters parse from untrusted peers: Idempotency-Key
 * (an RFC 8941 sf-string, filters/idem.c) and Retry-After (delta-seconds or an HTTP-date,
 * filters/retry.c), and those of gray release (filters/gray.c): traceparent, baggage's lane
 * entry, a Cookie. The first byte picks the parser, the rest is the field value. Checks what
 * the parsers promise: a key is 1..255 bytes of printable ASCII, NUL-terminated; a wait is
 * -1 or within 0..24 h; what baggage and cookie return lies inside the value.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "remora/idem.h"
#include "remora/retry.h"
#include "remora/gray.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *v = (const char *)data + 1;
    size_t n = size - 1;
    if (data[0] % 8 >= 4) {
        const char *val = NULL;
        size_t vlen = 0;
        int rc;
        rmr_traceparent_t tp;
        switch (data[0] % 8) {
        case 4:
            rc = rmr_traceparent_parse(v, n, &tp);
            if (rc == 0 && (n < 55 || tp.version == 0xff))
                abort();
            return 0;
        case 5:
            rc = rmr_baggage_lane(v, n, "lane", &val, &vlen);
            break;
        default:
            rc = rmr_cookie_get(v, n, "uid", &val, &vlen);
            break;
        }
        if (rc == 0 && (vlen == 0 || val < v || val + vlen > v + n))
            abort();
        return 0;
    }
    if (data[0] & 1) {
        char out[256];
        memset(out, 'x', sizeof(out));
        int k = rmr_idem_parse_key(v, n, out, sizeof(out));
        if (k >= 0) {
            if (k < 1 || k > 255 || out[k] != 0)
                abort();
            for (int i = 0; i < k; i++)
                if (out[i] < 0x20 || out[i] > 0x7e)
                    abort();
        }
    } else {
        int64_t now = data[0] & 2 ? 1700000000 : 0;
        int64_t ms = rmr_retry_after_ms(v, n, now);
        if (ms < -1 || ms > RMR_RETRY_AFTER_MAX_MS)
            abort();
    }
    return 0;
}
