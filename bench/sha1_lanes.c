/*
 * SHA-1 of AYIYA-shaped messages (24-byte head, 20-byte key, payload): sixteen AVX-512 lanes
 * (src/tunnelbroker/tunnelserver/sha1x16.c) against libcrypto one message at a time, as the
 * fast path uses it (EVP with SHA1 fetched once). bench_sha1_lanes.py builds and runs this.
 *
 * Output, one line per case: "<total bytes> <messages per call> <x16 ns/msg> <evp ns/msg>".
 * Every digest of the lanes is checked against libcrypto's before timing.
 */
#include "sha1x16.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAXN 64

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 0.5;
    static const int sizes[] = {108, 620, 1444};
    static const int counts[] = {1, 2, 4, 6, 8, 16, 32, 64};
    static uint8_t data[MAXN][2048], lanes[MAXN][20], ref[MAXN][20];
    sha1x16_msg m[MAXN];
    if (!sha1x16_usable()) {
        fprintf(stderr, "no AVX-512 F and BW here\n");
        return 2;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_MD *md = EVP_MD_fetch(NULL, "SHA1", NULL);
    srand(7);
    for (int i = 0; i < MAXN; i++)
        for (int j = 0; j < 2048; j++)
            data[i][j] = (uint8_t)rand();
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
        int size = sizes[si];
        for (int i = 0; i < MAXN; i++) {
            m[i].part[0] = data[i];
            m[i].len[0] = 24;
            m[i].part[1] = data[i] + 24;
            m[i].len[1] = 20;
            m[i].part[2] = data[i] + 44;
            m[i].len[2] = (size_t)size - 44;
            m[i].out = lanes[i];
        }
        for (size_t ci = 0; ci < sizeof counts / sizeof *counts; ci++) {
            int n = counts[ci];
            unsigned len;
            sha1x16(m, (size_t)n);
            for (int i = 0; i < n; i++) {
                EVP_DigestInit_ex(ctx, md, NULL);
                for (int p = 0; p < 3; p++)
                    EVP_DigestUpdate(ctx, m[i].part[p], m[i].len[p]);
                EVP_DigestFinal_ex(ctx, ref[i], &len);
                if (memcmp(lanes[i], ref[i], 20) != 0) {
                    fprintf(stderr, "digest %d of %d (%d bytes) differs\n", i, n, size);
                    return 1;
                }
            }
            long calls = 0;
            double t0 = now(), t1;
            do {
                for (int r = 0; r < 64; r++)
                    sha1x16(m, (size_t)n);
                calls += 64;
            } while ((t1 = now()) - t0 < seconds);
            double x16 = (t1 - t0) / (double)calls / n * 1e9;
            calls = 0;
            t0 = now();
            do {
                for (int r = 0; r < 64; r++)
                    for (int i = 0; i < n; i++) {
                        EVP_DigestInit_ex(ctx, md, NULL);
                        for (int p = 0; p < 3; p++)
                            EVP_DigestUpdate(ctx, m[i].part[p], m[i].len[p]);
                        EVP_DigestFinal_ex(ctx, ref[i], &len);
                    }
                calls += 64;
            } while ((t1 = now()) - t0 < seconds);
            double evp = (t1 - t0) / (double)calls / n * 1e9;
            printf("%d %d %.1f %.1f\n", size, n, x16, evp);
        }
    }
    EVP_MD_free(md);
    EVP_MD_CTX_free(ctx);
    return 0;
}
