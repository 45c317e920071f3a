/*
 * SipHash-2-4 under a secret key: for tables whose keys come from clients (idempotency keys,
 * trace ids), who must not be able to pick keys that all land in one bucket.
 */
#ifndef REMORA_SIPHASH_H
#define REMORA_SIPHASH_H

#include <stddef.h>
#include <stdint.h>

#define RMR_SIP_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define RMR_SIPROUND                                                                               \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = RMR_SIP_ROTL(v1, 13);                                                                 \
        v1 ^= v0;                                                                                  \
        v0 = RMR_SIP_ROTL(v0, 32);                                                                 \
        v2 += v3;                                                                                  \
        v3 = RMR_SIP_ROTL(v3, 16);                                                                 \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = RMR_SIP_ROTL(v3, 21);                                                                 \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = RMR_SIP_ROTL(v1, 17);                                                                 \
        v1 ^= v2;                                                                                  \
        v2 = RMR_SIP_ROTL(v2, 32);                                                                 \
    } while (0)

static inline uint64_t rmr_siphash(const uint64_t k[2], const void *p, size_t n)
{
    const unsigned char *in = p;
    uint64_t v0 = 0x736f6d6570736575ULL ^ k[0], v1 = 0x646f72616e646f6dULL ^ k[1];
    uint64_t v2 = 0x6c7967656e657261ULL ^ k[0], v3 = 0x7465646279746573ULL ^ k[1];
    size_t end = n & ~(size_t)7;
    for (size_t i = 0; i < end; i += 8) {
        uint64_t m = 0;
        for (int j = 0; j < 8; j++)
            m |= (uint64_t)in[i + j] << (8 * j);
        v3 ^= m;
        RMR_SIPROUND;
        RMR_SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)n << 56;
    for (size_t j = 0; j < (n & 7); j++)
        b |= (uint64_t)in[end + j] << (8 * j);
    v3 ^= b;
    RMR_SIPROUND;
    RMR_SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    RMR_SIPROUND;
    RMR_SIPROUND;
    RMR_SIPROUND;
    RMR_SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

#undef RMR_SIPROUND
#undef RMR_SIP_ROTL

#endif
