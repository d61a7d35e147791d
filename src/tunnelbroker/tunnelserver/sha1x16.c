/*
 * SHA-1 (FIPS 180-4) of up to sixteen messages per pass, one per 32-bit lane of AVX-512.
 *
 * Each pass loads one 64-byte block of every lane's message, transposes the 16x16 words so
 * that word t of all lanes sits in one register, and runs the 80 rounds on all lanes at
 * once. Messages are taken in the order of their block counts, so lanes of one pass mostly
 * end together; a lane that has ended gets a dummy block and keeps its state (masked add).
 * A block lying wholly inside one part of a message is read in place; the others (where
 * parts meet, and the padding) are assembled in a 64-byte scratch.
 */
#include "sha1x16.h"

#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_X16 1
#else
#define HAVE_X16 0
#endif

#define BLOCK 64
/* Messages sorted together by block count; more would only lengthen the sort. */
#define WINDOW 64

static size_t total_len(const sha1x16_msg *m)
{
    size_t n = 0;
    for (int p = 0; p < SHA1X16_PARTS; p++)
        n += m->len[p];
    return n;
}

/* Blocks in the padded message: the bytes, 0x80, zeros, the 64-bit bit length. */
static size_t block_count(size_t len) { return (len + 8) / BLOCK + 1; }

/* Bytes [off, off + 64) of the padded message of `total` bytes and `nb` blocks. */
static const uint8_t *block_at(const sha1x16_msg *m, size_t total, size_t nb, size_t off,
                               uint8_t *scratch)
{
    size_t base = 0;
    if (off + BLOCK <= total) {
        for (int p = 0; p < SHA1X16_PARTS; p++) {
            if (off >= base && off + BLOCK <= base + m->len[p])
                return m->part[p] + (off - base);
            base += m->len[p];
        }
        base = 0;
    }
    memset(scratch, 0, BLOCK);
    for (int p = 0; p < SHA1X16_PARTS; p++) {
        size_t lo = base > off ? base : off;
        size_t hi = base + m->len[p] < off + BLOCK ? base + m->len[p] : off + BLOCK;
        if (lo < hi)
            memcpy(scratch + (lo - off), m->part[p] + (lo - base), hi - lo);
        base += m->len[p];
    }
    if (total >= off && total < off + BLOCK)
        scratch[total - off] = 0x80;
    if (off / BLOCK == nb - 1) {
        uint64_t bits = (uint64_t)total * 8;
        for (int i = 0; i < 8; i++)
            scratch[BLOCK - 1 - i] = (uint8_t)(bits >> (8 * i));
    }
    return scratch;
}

#if HAVE_X16

#define TARGET __attribute__((target("avx512f,avx512bw")))

/* r[i] holds 16 words of lane i; afterwards r[t] holds word t of every lane. */
TARGET static inline void transpose(__m512i r[16])
{
    __m512i a[16], b[16];
    for (int i = 0; i < 8; i++) {
        a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    /* b[4g + j], 128-bit chunk k: word 4k + j of lanes 4g .. 4g + 3. */
    for (int g = 0; g < 4; g++) {
        b[4 * g] = _mm512_unpacklo_epi64(a[4 * g], a[4 * g + 2]);
        b[4 * g + 1] = _mm512_unpackhi_epi64(a[4 * g], a[4 * g + 2]);
        b[4 * g + 2] = _mm512_unpacklo_epi64(a[4 * g + 1], a[4 * g + 3]);
        b[4 * g + 3] = _mm512_unpackhi_epi64(a[4 * g + 1], a[4 * g + 3]);
    }
    /* Gather chunk k of the four groups: word 4k + j of all sixteen lanes. */
    for (int j = 0; j < 4; j++) {
        __m512i e0 = _mm512_shuffle_i32x4(b[j], b[4 + j], 0x44);
        __m512i e1 = _mm512_shuffle_i32x4(b[j], b[4 + j], 0xEE);
        __m512i e2 = _mm512_shuffle_i32x4(b[8 + j], b[12 + j], 0x44);
        __m512i e3 = _mm512_shuffle_i32x4(b[8 + j], b[12 + j], 0xEE);
        r[j] = _mm512_shuffle_i32x4(e0, e2, 0x88);
        r[4 + j] = _mm512_shuffle_i32x4(e0, e2, 0xDD);
        r[8 + j] = _mm512_shuffle_i32x4(e1, e3, 0x88);
        r[12 + j] = _mm512_shuffle_i32x4(e1, e3, 0xDD);
    }
}

/* Ternary-logic truth tables of SHA-1's round functions of (b, c, d). */
#define F_CH 0xCA     /* b ? c : d */
#define F_PARITY 0x96 /* b ^ c ^ d */
#define F_MAJ 0xE8    /* majority */

/* The schedule, in a ring of sixteen: W[t] = rotl1(W[t-3] ^ W[t-8] ^ W[t-14] ^ W[t-16]). */
#define W(t)                                                                                  \
    ((t) < 16 ? w[(t) & 15]                                                                   \
              : (w[(t) & 15] = _mm512_rol_epi32(                                              \
                     _mm512_xor_si512(_mm512_ternarylogic_epi32(w[((t) - 3) & 15],            \
                                                                w[((t) - 8) & 15],            \
                                                                w[((t) - 14) & 15], F_PARITY), \
                                      w[(t) & 15]),                                           \
                     1)))

/* e += rotl5(a) + f(b, c, d) + K + W[t]; b = rotl30(b). The caller renames the rest. */
#define RND(a, b, c, d, e, F, K, t)                                                           \
    do {                                                                                      \
        e = _mm512_add_epi32(e, _mm512_add_epi32(K, W(t)));                                   \
        e = _mm512_add_epi32(e, _mm512_add_epi32(_mm512_rol_epi32(a, 5),                       \
                                                 _mm512_ternarylogic_epi32(b, c, d, F)));      \
        b = _mm512_rol_epi32(b, 30);                                                          \
    } while (0)
#define R5(F, K, t)                                                                           \
    RND(a, b, c, d, e, F, K, t);                                                              \
    RND(e, a, b, c, d, F, K, (t) + 1);                                                        \
    RND(d, e, a, b, c, F, K, (t) + 2);                                                        \
    RND(c, d, e, a, b, F, K, (t) + 3);                                                        \
    RND(b, c, d, e, a, F, K, (t) + 4)
#define R20(F, K, t)                                                                          \
    R5(F, K, t);                                                                              \
    R5(F, K, (t) + 5);                                                                        \
    R5(F, K, (t) + 10);                                                                       \
    R5(F, K, (t) + 15)

/* One block of each lane into the state h; lanes outside `active` keep theirs. */
TARGET static void compress(__m512i h[5], const uint8_t *const rows[16], __mmask16 active)
{
    /* SHA-1 words are big-endian. */
    const __m512i bswap = _mm512_broadcast_i32x4(
        _mm_setr_epi8(3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12));
    __m512i w[16];
    for (int i = 0; i < 16; i++)
        w[i] = _mm512_shuffle_epi8(_mm512_loadu_si512((const void *)rows[i]), bswap);
    transpose(w);
    __m512i a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    const __m512i k0 = _mm512_set1_epi32(0x5A827999), k1 = _mm512_set1_epi32(0x6ED9EBA1),
                  k2 = _mm512_set1_epi32((int)0x8F1BBCDC), k3 = _mm512_set1_epi32((int)0xCA62C1D6);
    R20(F_CH, k0, 0);
    R20(F_PARITY, k1, 20);
    R20(F_MAJ, k2, 40);
    R20(F_PARITY, k3, 60);
    h[0] = _mm512_mask_add_epi32(h[0], active, h[0], a);
    h[1] = _mm512_mask_add_epi32(h[1], active, h[1], b);
    h[2] = _mm512_mask_add_epi32(h[2], active, h[2], c);
    h[3] = _mm512_mask_add_epi32(h[3], active, h[3], d);
    h[4] = _mm512_mask_add_epi32(h[4], active, h[4], e);
}

/* Messages m[0..k), k <= 16, in one set of lanes. */
TARGET static void hash_lanes(const sha1x16_msg *const *m, size_t k)
{
    static const uint8_t dummy[BLOCK];
    _Alignas(64) uint8_t scratch[SHA1X16_LANES][BLOCK];
    size_t total[SHA1X16_LANES], nb[SHA1X16_LANES], most = 0;
    for (size_t i = 0; i < k; i++) {
        total[i] = total_len(m[i]);
        nb[i] = block_count(total[i]);
        if (nb[i] > most)
            most = nb[i];
    }
    __m512i h[5] = {
        _mm512_set1_epi32(0x67452301), _mm512_set1_epi32((int)0xEFCDAB89),
        _mm512_set1_epi32((int)0x98BADCFE), _mm512_set1_epi32(0x10325476),
        _mm512_set1_epi32((int)0xC3D2E1F0),
    };
    for (size_t blk = 0; blk < most; blk++) {
        const uint8_t *rows[SHA1X16_LANES];
        __mmask16 active = 0;
        for (size_t i = 0; i < SHA1X16_LANES; i++) {
            if (i < k && blk < nb[i]) {
                rows[i] = block_at(m[i], total[i], nb[i], blk * BLOCK, scratch[i]);
                active |= (__mmask16)(1u << i);
            } else {
                rows[i] = dummy;
            }
        }
        compress(h, rows, active);
    }
    _Alignas(64) uint32_t words[5][SHA1X16_LANES];
    for (int j = 0; j < 5; j++)
        _mm512_store_si512((void *)words[j], h[j]);
    for (size_t i = 0; i < k; i++)
        for (int j = 0; j < 5; j++) {
            uint32_t v = words[j][i];
            m[i]->out[4 * j] = (uint8_t)(v >> 24);
            m[i]->out[4 * j + 1] = (uint8_t)(v >> 16);
            m[i]->out[4 * j + 2] = (uint8_t)(v >> 8);
            m[i]->out[4 * j + 3] = (uint8_t)v;
        }
}

int sha1x16_usable(void)
{
    static int usable = -1;
    if (usable < 0) {
        __builtin_cpu_init();
        usable = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
    }
    return usable;
}

void sha1x16(const sha1x16_msg *msgs, size_t n)
{
    const sha1x16_msg *order[WINDOW];
    size_t nb[WINDOW];
    for (size_t start = 0; start < n; start += WINDOW) {
        size_t w = n - start < WINDOW ? n - start : WINDOW;
        /* Insertion sort by block count: stable, and at most WINDOW entries. */
        for (size_t i = 0; i < w; i++) {
            const sha1x16_msg *m = &msgs[start + i];
            size_t b = block_count(total_len(m)), j = i;
            for (; j > 0 && nb[j - 1] > b; j--) {
                order[j] = order[j - 1];
                nb[j] = nb[j - 1];
            }
            order[j] = m;
            nb[j] = b;
        }
        for (size_t i = 0; i < w; i += SHA1X16_LANES)
            hash_lanes(order + i, w - i < SHA1X16_LANES ? w - i : SHA1X16_LANES);
    }
}

#else

int sha1x16_usable(void) { return 0; }

void sha1x16(const sha1x16_msg *msgs, size_t n)
{
    (void)msgs;
    (void)n;
    (void)block_at;
}

#endif
