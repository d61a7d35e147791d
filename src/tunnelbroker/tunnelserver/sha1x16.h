/*
 * SHA-1 of many messages at once: sixteen lanes of AVX-512, one message per lane.
 *
 * AYIYA signs and verifies every datagram with SHA-1 (docs/sixxs.md). One message at a time,
 * even with the CPU's SHA instructions, the hash is a serial chain of 80 rounds per 64-byte
 * block; sixteen independent messages in the lanes of one register do sixteen chains for about
 * the price of four. The fast path hashes a whole batch of datagrams this way.
 */
#ifndef TB_SHA1X16_H
#define TB_SHA1X16_H

#include <stddef.h>
#include <stdint.h>

#define SHA1X16_LANES 16
#define SHA1X16_PARTS 3

/* One message: the concatenation of up to SHA1X16_PARTS byte ranges (unused ones have
 * len 0), and where its 20-byte digest goes. */
typedef struct {
    const uint8_t *part[SHA1X16_PARTS];
    size_t len[SHA1X16_PARTS];
    uint8_t *out;
} sha1x16_msg;

/* Whether this CPU runs sha1x16() (AVX-512 F and BW); checked once. */
int sha1x16_usable(void);

/* The SHA-1 of each of msgs[0..n), any n; only where sha1x16_usable(). */
void sha1x16(const sha1x16_msg *msgs, size_t n);

#endif
