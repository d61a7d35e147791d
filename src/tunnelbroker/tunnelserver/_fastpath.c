/*
 * The tunnel server's C fast path: the common case of forwarding, off the GIL.
 *
 * Theory of operation
 * -------------------
 * An Engine owns no descriptor: Python opens the TUN, the raw protocol-41 socket, the TSP
 * UDP sockets and the AYIYA socket and hands their numbers in. start() runs one pthread that
 * never touches the interpreter: epoll over those descriptors, then per wake-up a batch of
 *
 *   TUN read -> longest-prefix match on the destination -> encapsulate -> sendmmsg
 *   recvmmsg -> tunnel by outer source (and port) -> ingress filter -> TUN write
 *   recvmmsg (AYIYA) -> tunnel by identity -> clock, SHA-1, replay -> ingress filter -> TUN
 *
 * Only the common case is decided here. Everything else is *punted*: copied into a bounded
 * queue and signalled on an eventfd, where the Python slow path (ForwardingCore, the tested
 * reference) takes it with take_punts(). Punted: IPv4 from the TUN (v4v6), packets for
 * tunnels this code does not encapsulate (v4v6: kind PUNT), packets over the tunnel MTU
 * (Packet Too Big is built in Python), packets to the server's tunnel address (keepalive
 * echo), data from unknown endpoints, every UDP datagram that is not IPv6 (TSP signalling,
 * first nibble 0xF, goes back to the asyncio listener from there), and every AYIYA datagram
 * other than a signed, fresh Forward of IPv6 from the tunnel's current endpoint (NOOPs, echo
 * requests, IPv4 inside, unknown identities, anything malformed, and a datagram from a new
 * address, which may move the tunnel: Python decides that).
 *
 * What this code does decide, it decides exactly as ForwardingCore does: the same drop
 * reasons (MALFORMED, NO_ROUTE, SPOOFED_SOURCE, LINK_LOCAL; BAD_AYIYA with the AyiyaDrop
 * reason apart) and the same counters. A packet is counted once, by whichever side handles
 * it: punted packets are counted in Python.
 *
 * AYIYA's replay cache (protocols/ayiya/replay.py ReplayCache, same slots, same rules) lives
 * here, one per tunnel: Python checks punted datagrams against it through
 * ayiya_replay_check(), so a datagram accepted on either side is a replay on both.
 *
 * Every length read off the network or the TUN is checked before it is used.
 *
 * Locking: one mutex guards the tables, the counters and the punt queue. The forwarding
 * thread holds it while it handles one batch (never while it waits in epoll); Python methods
 * take it with the GIL released, so a busy forwarding thread never stalls the interpreter
 * and Python never stalls forwarding for longer than a table change.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "sha1x16.h"

/* Packets per system call and per wake-up of one descriptor. */
#define BATCH 64
/* Bytes per packet buffer: the largest IPv4/UDP payload, so nothing is ever truncated. */
#define SLOT 65536
/* TSP UDP sockets one engine reads (one per listening IPv4 address). */
#define MAX_UDP 8
/* Inner prefixes per tunnel (its address, its routed /64, a delegated prefix). */
#define MAX_PREFIXES 8
/* Packets waiting for the slow path; past this they are dropped as OVERLOAD. */
#define PUNT_CAP 4096

/* AYIYA, the profile AICCU and sixxsd speak (protocols/ayiya/codec.py, docs/sixxs.md):
 * 8-byte fixed header, 16-byte identity (an IPv6 address), 20-byte SHA-1 signature. */
#define AY_FIXED 8
#define AY_SIG_START 24 /* AY_FIXED + identity */
#define AY_HEADER 44    /* AY_SIG_START + signature */
#define AY_KEY 20       /* SHA1(tunnel secret) */
/* Bytes 0-3 of a Forward of IPv6: IdLen 4 | IdType integer; SigLen 5 | SHA-1;
 * AuthMethod shared secret | OpCode FORWARD; Next Header 41. */
#define AY_B0 0x41
#define AY_B1 0x52
#define AY_B2_FORWARD 0x11
#define AY_NH_IPV6 41
/* Fewer datagrams than this to hash in one batch go one by one through libcrypto (SHA-NI),
 * the rest through sixteen-lane SHA-1 (sha1x16.c), which costs the same for a full set of
 * lanes as for one: it breaks even at about five (bench/README.md). */
#define X16_MIN 6
/* ReplayCache: 1024 slots of 8 digest bytes (replay.py DEFAULT_SLOTS, _KEY_BYTES). */
#define REPLAY_SLOTS 1024
#define REPLAY_KEY 8

/* Tunnel kinds: which encapsulation this code performs itself. */
enum { KIND_PUNT = 0, KIND_V6V4 = 1, KIND_V6UDPV4 = 2, KIND_AYIYA = 3 };
/* Where a punted packet came from. */
enum { PUNT_TUN = 0, PUNT_PROTO41 = 1, PUNT_UDP = 2, PUNT_AYIYA = 3 };
/* Drop reasons; the names are ForwardingCore's Drop members. */
enum { D_MALFORMED, D_NO_ROUTE, D_SPOOFED_SOURCE, D_LINK_LOCAL, D_OVERLOAD, D_BAD_AYIYA, N_DROPS };
static const char *const drop_names[N_DROPS] = {
    "MALFORMED", "NO_ROUTE", "SPOOFED_SOURCE", "LINK_LOCAL", "OVERLOAD", "BAD_AYIYA",
};
/* Why an AYIYA datagram was dropped here; the names are AyiyaDrop members. Each one also
 * counts as D_BAD_AYIYA, as ForwardingCore._ayiya_drop does. */
enum { A_CLOCK_SKEW, A_BAD_SIGNATURE, A_REPLAYED, N_AYIYA_DROPS };
static const char *const ayiya_drop_names[N_AYIYA_DROPS] = {
    "CLOCK_SKEW", "BAD_SIGNATURE", "REPLAYED",
};
/* ReplayCache verdicts (replay.py Verdict). */
enum { V_ACCEPTED = 0, V_REPLAYED = 1, V_STALE = 2 };
/* epoll tags. */
enum { TAG_WAKE = 0, TAG_TUN = 1, TAG_RAW41 = 2, TAG_AYIYA = 3, TAG_UDP = 16 };
/* Hash key kinds. */
enum { K_ID = 1, K_V4 = 2, K_UDP = 3, K_ROUTE = 4, K_IDENTITY = 5 };

/* ------------------------------------------------------------------ hash table */

typedef struct {
    uint8_t kind;
    uint8_t plen;
    uint16_t port;
    uint32_t zero; /* padding kept zero so keys compare with memcmp */
    uint8_t addr[16];
} hkey;

typedef struct {
    hkey key;
    int32_t val;
    uint8_t state; /* 0 empty, 1 used, 2 deleted */
} hentry;

typedef struct {
    hentry *e;
    size_t cap; /* a power of two */
    size_t used;
    size_t tombs;
} htab;

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static uint64_t hkey_hash(const hkey *k)
{
    uint64_t w[3];
    memcpy(w, k, sizeof w);
    uint64_t h = w[0] * 0x9E3779B97F4A7C15ULL;
    h ^= rotl64(w[1] * 0xC2B2AE3D27D4EB4FULL, 31);
    h ^= rotl64(w[2] * 0x165667B19E3779F9ULL, 17);
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDULL;
    h ^= h >> 33;
    return h;
}

static int32_t ht_get(const htab *t, const hkey *k)
{
    if (t->cap == 0)
        return -1;
    size_t mask = t->cap - 1;
    for (size_t i = hkey_hash(k) & mask;; i = (i + 1) & mask) {
        const hentry *e = &t->e[i];
        if (e->state == 0)
            return -1;
        if (e->state == 1 && memcmp(&e->key, k, sizeof *k) == 0)
            return e->val;
    }
}

static int ht_resize(htab *t, size_t cap)
{
    hentry *old = t->e;
    size_t oldcap = t->cap;
    hentry *e = calloc(cap, sizeof *e);
    if (e == NULL)
        return -1;
    t->e = e;
    t->cap = cap;
    t->used = 0;
    t->tombs = 0;
    for (size_t i = 0; i < oldcap; i++) {
        if (old[i].state != 1)
            continue;
        size_t j = hkey_hash(&old[i].key) & (cap - 1);
        while (e[j].state != 0)
            j = (j + 1) & (cap - 1);
        e[j] = old[i];
        t->used++;
    }
    free(old);
    return 0;
}

/* Insert or replace; -1 when out of memory (the table is unchanged then). */
static int ht_put(htab *t, const hkey *k, int32_t val)
{
    /* At most half full, counting deleted entries, so probes stay short. */
    if ((t->used + t->tombs + 1) * 2 > t->cap) {
        size_t cap = 16;
        while (cap < (t->used + 1) * 4)
            cap <<= 1;
        if (ht_resize(t, cap) != 0)
            return -1;
    }
    size_t mask = t->cap - 1;
    hentry *free_slot = NULL;
    for (size_t i = hkey_hash(k) & mask;; i = (i + 1) & mask) {
        hentry *e = &t->e[i];
        if (e->state == 1 && memcmp(&e->key, k, sizeof *k) == 0) {
            e->val = val;
            return 0;
        }
        if (e->state == 2 && free_slot == NULL)
            free_slot = e;
        if (e->state == 0) {
            if (free_slot == NULL)
                free_slot = e;
            else
                t->tombs--;
            free_slot->key = *k;
            free_slot->val = val;
            free_slot->state = 1;
            t->used++;
            return 0;
        }
    }
}

static void ht_del(htab *t, const hkey *k)
{
    if (t->cap == 0)
        return;
    size_t mask = t->cap - 1;
    for (size_t i = hkey_hash(k) & mask;; i = (i + 1) & mask) {
        hentry *e = &t->e[i];
        if (e->state == 0)
            return;
        if (e->state == 1 && memcmp(&e->key, k, sizeof *k) == 0) {
            e->state = 2;
            t->used--;
            t->tombs++;
            return;
        }
    }
}

/* ------------------------------------------------------------------ tunnels */

/* One AYIYA tunnel's link: who signs what, where the peer is, and its replay cache. */
typedef struct {
    uint8_t ident[16]; /* the peer's identity: its datagrams find the tunnel by it */
    uint8_t local[16]; /* ours, in every datagram we send */
    uint8_t key[AY_KEY];
    uint8_t has_endpoint; /* remote4/port of the tunnel hold the peer's (learnt) address */
    uint8_t has_newest;
    uint32_t window;      /* clock window, seconds either way */
    int64_t newest;       /* the newest epoch accepted */
    uint32_t used;        /* slots holding a digest */
    uint8_t *slots;       /* REPLAY_SLOTS * REPLAY_KEY, allocated at the first datagram */
} ayiya_link;

typedef struct {
    int64_t id;
    uint8_t in_use;
    uint8_t kind;
    uint8_t sock_fixed; /* the socket was given, not learnt from the client's packets */
    uint8_t dirty;      /* counters changed since take_counters() */
    uint8_t remote4[4];
    uint16_t port;    /* host order */
    int32_t sock;     /* UDP socket index to send on; -1 until known */
    uint32_t local4;  /* our address the client sends to (network order); 0 unknown */
    uint32_t mtu;
    uint32_t nprefix;
    uint8_t server_inner[16];
    uint8_t pfx[MAX_PREFIXES][16];
    uint8_t plen[MAX_PREFIXES];
    ayiya_link *ay; /* KIND_AYIYA only; owned by the tunnel's slot */
    /* Counted since the last take_counters(); Python adds them to its totals. */
    uint64_t pin, pout, bin, bout;
    double last_seen;
} tunnel;

/* A batch of datagrams for one socket, sent with one sendmmsg. */
typedef struct {
    unsigned n;
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH][2]; /* [0] the AYIYA header when there is one, then the packet */
    uint8_t head[BATCH][AY_HEADER];
    sha1x16_msg sign[BATCH]; /* AYIYA: what to sign, before the queue is sent */
    uint8_t bad[BATCH];      /* not to be sent (its signature could not be made) */
    struct sockaddr_in to[BATCH];
    union {
        char buf[CMSG_SPACE(sizeof(struct in_pktinfo))];
        struct cmsghdr align;
    } ctrl[BATCH];
} outq;

typedef struct {
    int fd;     /* -1: slot free */
    int any;    /* bound to 0.0.0.0: replies need IP_PKTINFO to leave from the right address */
} udpsock;

typedef struct punt {
    uint8_t kind;
    int8_t sock;
    uint16_t port;
    uint8_t src[4];
    uint32_t local4;
    uint32_t len;
    uint8_t data[];
} punt;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;
    int lock_ok;
    int tun_fd;
    int raw41_fd;
    int ayiya_fd;
    int epfd;
    int wake_fd;
    int punt_fd;
    pthread_t thread;
    int running;
    atomic_int stopping;
    atomic_int thread_dead;
    int thread_errno;

    udpsock udp[MAX_UDP];

    tunnel *tunnels;
    size_t ntunnels; /* slots allocated */
    size_t live;
    int32_t *free_slots;
    size_t nfree;
    htab index;                /* K_ID, K_V4, K_UDP, K_ROUTE -> slot */
    uint32_t plen_count[129];  /* routes per prefix length */
    uint8_t plens[129];        /* lengths in use, longest first */
    unsigned nplens;

    punt *ring[PUNT_CAP];
    size_t ring_head, ring_count;
    int punt_signalled;

    uint64_t drops[N_DROPS];
    uint64_t ayiya_drops[N_AYIYA_DROPS];
    uint64_t drops_taken; /* dropped before the last take_drops(), for stats() */
    uint64_t send_errors;
    uint64_t fast_in, fast_out, punted, batches;
    uint64_t lane_hashes; /* AYIYA signatures made by sha1x16() */

    /* Forwarding thread buffers. */
    uint8_t *tunbuf;   /* BATCH * SLOT */
    uint8_t *rxbuf;    /* BATCH * SLOT */
    struct mmsghdr rx_msgs[BATCH];
    struct iovec rx_iov[BATCH];
    struct sockaddr_in rx_from[BATCH];
    union {
        char buf[CMSG_SPACE(sizeof(struct in_pktinfo))];
        struct cmsghdr align;
    } rx_ctrl[BATCH];
    outq *q41;
    outq *qudp[MAX_UDP];
    outq *qayiya;
    /* SHA-1 for AYIYA, used by the forwarding thread only (under the lock). */
    EVP_MD *sha1_fetched; /* OpenSSL 3: fetched once, so no init looks it up again */
    const EVP_MD *sha1;
    EVP_MD_CTX *md;
    int x16; /* sha1x16() runs here */
} Engine;

static double now_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* AYIYA's epochs are wall-clock seconds (Python: monotonic now + wall_offset). */
static double now_wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Take the engine lock from Python without holding the GIL while waiting. */
static void lock_from_python(Engine *e)
{
    if (pthread_mutex_trylock(&e->lock) != 0) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&e->lock);
        Py_END_ALLOW_THREADS
    }
}

static void route_key(hkey *k, const uint8_t *addr, unsigned plen)
{
    memset(k, 0, sizeof *k);
    k->kind = K_ROUTE;
    k->plen = (uint8_t)plen;
    unsigned whole = plen / 8, bits = plen % 8;
    memcpy(k->addr, addr, whole);
    if (bits)
        k->addr[whole] = addr[whole] & (uint8_t)(0xFF << (8 - bits));
}

static void id_key(hkey *k, int64_t id)
{
    memset(k, 0, sizeof *k);
    k->kind = K_ID;
    memcpy(k->addr, &id, sizeof id);
}

static void identity_key(hkey *k, const uint8_t *ident)
{
    memset(k, 0, sizeof *k);
    k->kind = K_IDENTITY;
    memcpy(k->addr, ident, 16);
}

/* How datagrams from the tunnel's client find it: by outer source, or by AYIYA identity. */
static void endpoint_key(hkey *k, const tunnel *t)
{
    if (t->kind == KIND_AYIYA) {
        identity_key(k, t->ay->ident);
        return;
    }
    memset(k, 0, sizeof *k);
    k->kind = t->kind == KIND_V6UDPV4 ? K_UDP : K_V4;
    memcpy(k->addr, t->remote4, 4);
    k->port = t->kind == KIND_V6UDPV4 ? t->port : 0;
}

static void rebuild_plens(Engine *e)
{
    e->nplens = 0;
    for (int l = 128; l >= 0; l--)
        if (e->plen_count[l])
            e->plens[e->nplens++] = (uint8_t)l;
}

static tunnel *route_lookup(Engine *e, const uint8_t *dst)
{
    hkey k;
    for (unsigned i = 0; i < e->nplens; i++) {
        route_key(&k, dst, e->plens[i]);
        int32_t s = ht_get(&e->index, &k);
        if (s >= 0)
            return &e->tunnels[s];
    }
    return NULL;
}

static int prefix_match(const uint8_t *addr, const uint8_t *pfx, unsigned plen)
{
    unsigned whole = plen / 8, bits = plen % 8;
    if (memcmp(addr, pfx, whole) != 0)
        return 0;
    if (bits) {
        uint8_t mask = (uint8_t)(0xFF << (8 - bits));
        return (addr[whole] & mask) == (pfx[whole] & mask);
    }
    return 1;
}

static int source_allowed(const tunnel *t, const uint8_t *src)
{
    for (uint32_t i = 0; i < t->nprefix; i++)
        if (prefix_match(src, t->pfx[i], t->plen[i]))
            return 1;
    return 0;
}

/* Unlink slot s from every index that points at it (as ForwardingCore.remove does). Its AYIYA
 * link stays with the slot's copy: the caller keeps or frees it (ayiya_free). */
static ayiya_link *unlink_tunnel(Engine *e, int32_t s)
{
    tunnel *t = &e->tunnels[s];
    hkey k;
    for (uint32_t i = 0; i < t->nprefix; i++) {
        route_key(&k, t->pfx[i], t->plen[i]);
        if (ht_get(&e->index, &k) == s) {
            ht_del(&e->index, &k);
            e->plen_count[t->plen[i]]--;
        }
    }
    rebuild_plens(e);
    if (t->kind != KIND_PUNT) {
        endpoint_key(&k, t);
        if (ht_get(&e->index, &k) == s)
            ht_del(&e->index, &k);
    }
    id_key(&k, t->id);
    ht_del(&e->index, &k);
    t->in_use = 0;
    e->free_slots[e->nfree++] = s;
    e->live--;
    ayiya_link *ay = t->ay;
    t->ay = NULL;
    return ay;
}

static void ayiya_free(ayiya_link *ay)
{
    if (ay != NULL) {
        free(ay->slots);
        free(ay);
    }
}

/* ------------------------------------------------------------------ AYIYA */

/* ReplayCache.check_and_record (protocols/ayiya/replay.py), the same table and rules: the
 * slot is named by digest bytes 8-9, it keeps bytes 0-7; a digest still in its slot is a
 * replay; a datagram that would move the tunnel must be newer than all accepted before; an
 * all-zero key would read as an empty slot, so such a digest is not remembered.
 * -1: out of memory (nothing recorded). */
static int replay_check(ayiya_link *a, int64_t epoch, const uint8_t *digest, int moving)
{
    if (a->slots == NULL) {
        a->slots = calloc(REPLAY_SLOTS, REPLAY_KEY);
        if (a->slots == NULL)
            return -1;
    }
    static const uint8_t empty[REPLAY_KEY];
    uint8_t *held = a->slots + (size_t)(((digest[8] << 8) | digest[9]) & (REPLAY_SLOTS - 1)) *
                                   REPLAY_KEY;
    int remember = memcmp(digest, empty, REPLAY_KEY) != 0;
    if (remember && memcmp(held, digest, REPLAY_KEY) == 0)
        return V_REPLAYED;
    if (moving && a->has_newest && epoch <= a->newest)
        return V_STALE;
    if (remember) {
        if (memcmp(held, empty, REPLAY_KEY) == 0)
            a->used++;
        memcpy(held, digest, REPLAY_KEY);
    }
    if (!a->has_newest || epoch > a->newest) {
        a->newest = epoch;
        a->has_newest = 1;
    }
    return V_ACCEPTED;
}

/* SHA-1 of a datagram with the key standing in its signature field (codec.compute_signature):
 * head is its first 24 bytes (fixed header and identity), payload what follows the signature. */
static int ayiya_sign(Engine *e, const uint8_t *head, const uint8_t *key, const uint8_t *payload,
                      size_t n, uint8_t out[AY_KEY])
{
    unsigned int len = 0;
    return EVP_DigestInit_ex(e->md, e->sha1, NULL) == 1 &&
           EVP_DigestUpdate(e->md, head, AY_SIG_START) == 1 &&
           EVP_DigestUpdate(e->md, key, AY_KEY) == 1 &&
           (n == 0 || EVP_DigestUpdate(e->md, payload, n) == 1) &&
           EVP_DigestFinal_ex(e->md, out, &len) == 1 && len == AY_KEY;
}

/* The signature of each of jobs[0..n) (head, key and payload as in ayiya_sign): in lanes when
 * there are enough, the rest one by one. ok[i] = 0 where none could be made. */
static void ayiya_sign_many(Engine *e, const sha1x16_msg *jobs, size_t n, uint8_t *ok)
{
    size_t lanes = 0;
    if (e->x16 && n >= X16_MIN) {
        /* A last set of lanes too empty to pay goes to libcrypto instead. */
        lanes = n % SHA1X16_LANES >= X16_MIN ? n : n - n % SHA1X16_LANES;
        sha1x16(jobs, lanes);
        memset(ok, 1, lanes);
        e->lane_hashes += lanes;
    }
    for (size_t i = lanes; i < n; i++)
        ok[i] = (uint8_t)ayiya_sign(e, jobs[i].part[0], jobs[i].part[1], jobs[i].part[2],
                                    jobs[i].len[2], jobs[i].out);
}

/* Where message i of an AYIYA datagram's signature is: head (24 bytes), key, payload. */
static void ayiya_job(sha1x16_msg *j, const uint8_t *head, const uint8_t *key,
                      const uint8_t *payload, size_t n, uint8_t *out)
{
    j->part[0] = head;
    j->len[0] = AY_SIG_START;
    j->part[1] = key;
    j->len[1] = AY_KEY;
    j->part[2] = payload;
    j->len[2] = n;
    j->out = out;
}

/* ------------------------------------------------------------------ the slow-path queue */

static void punt_packet(Engine *e, int kind, int sock, const uint8_t *p, size_t n,
                        const uint8_t *src4, uint16_t port, uint32_t local4)
{
    if (e->ring_count >= PUNT_CAP) {
        e->drops[D_OVERLOAD]++;
        return;
    }
    punt *q = malloc(sizeof *q + n);
    if (q == NULL) {
        e->drops[D_OVERLOAD]++;
        return;
    }
    q->kind = (uint8_t)kind;
    q->sock = (int8_t)sock;
    q->port = port;
    if (src4 != NULL)
        memcpy(q->src, src4, 4);
    else
        memset(q->src, 0, 4);
    q->local4 = local4;
    q->len = (uint32_t)n;
    memcpy(q->data, p, n);
    e->ring[(e->ring_head + e->ring_count) % PUNT_CAP] = q;
    e->ring_count++;
    e->punted++;
    if (!e->punt_signalled) {
        uint64_t one = 1;
        e->punt_signalled = 1;
        if (write(e->punt_fd, &one, sizeof one) < 0) {
            /* Cannot fail short of a counter overflow; Python also polls on a timer. */
        }
    }
}

/* ------------------------------------------------------------------ forwarding */

static void flush(Engine *e, int fd, outq *q)
{
    unsigned off = 0, guard = 0;
    while (off < q->n && guard++ < 4 * BATCH) {
        if (q->bad[off]) {
            e->send_errors++;
            off++;
            continue;
        }
        unsigned end = off + 1;
        while (end < q->n && !q->bad[end])
            end++;
        int r = sendmmsg(fd, q->msgs + off, end - off, MSG_DONTWAIT);
        if (r > 0) {
            off += (unsigned)r;
        } else if (r < 0 && errno == EINTR) {
            continue;
        } else {
            /* This datagram failed (full buffer, unreachable): drop it as a router would. */
            e->send_errors++;
            off++;
        }
    }
    memset(q->bad, 0, q->n);
    q->n = 0;
}

/* Queue packet p (n bytes) for addr4:port; head: NULL, or q->head[q->n] holding the AYIYA
 * header that goes before it. */
static void enqueue(outq *q, const uint8_t *head, uint8_t *p, size_t n, const uint8_t *addr4,
                    uint16_t port, uint32_t local4)
{
    unsigned i = q->n++;
    struct iovec *v = q->iov[i];
    size_t nv = 0;
    if (head != NULL) {
        v[nv].iov_base = (void *)head;
        v[nv++].iov_len = AY_HEADER;
    }
    v[nv].iov_base = p;
    v[nv++].iov_len = n;
    memset(&q->to[i], 0, sizeof q->to[i]);
    q->to[i].sin_family = AF_INET;
    q->to[i].sin_port = htons(port);
    memcpy(&q->to[i].sin_addr, addr4, 4);
    struct msghdr *m = &q->msgs[i].msg_hdr;
    memset(m, 0, sizeof *m);
    m->msg_name = &q->to[i];
    m->msg_namelen = sizeof q->to[i];
    m->msg_iov = v;
    m->msg_iovlen = nv;
    if (local4) {
        /* Leave from the address the client sent to (tsp.md §2.3). */
        memset(q->ctrl[i].buf, 0, sizeof q->ctrl[i].buf);
        m->msg_control = q->ctrl[i].buf;
        m->msg_controllen = sizeof q->ctrl[i].buf;
        struct cmsghdr *c = CMSG_FIRSTHDR(m);
        c->cmsg_level = IPPROTO_IP;
        c->cmsg_type = IP_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
        struct in_pktinfo info;
        memset(&info, 0, sizeof info);
        info.ipi_spec_dst.s_addr = local4;
        memcpy(CMSG_DATA(c), &info, sizeof info);
    }
}

/* The engine's one TSP socket, if it has exactly one and it is bound to one address; else -1.
 * A v6udpv4 tunnel not heard from yet (only signalled: a download before the client's first
 * packet) can be sent on it, from the only address the client can have signalled to. With
 * several sockets, or one bound to 0.0.0.0, which address the client targeted is known only
 * from its packets (or to Python, from the signalling): punt until then. */
static int sole_bound_udp(const Engine *e)
{
    int found = -1;
    for (int s = 0; s < MAX_UDP; s++) {
        if (e->udp[s].fd < 0)
            continue;
        if (found >= 0 || e->udp[s].any)
            return -1;
        found = s;
    }
    return found;
}

static void tun_batch(Engine *e)
{
    uint32_t epoch = 0; /* AYIYA's, read once per batch (0: not yet) */
    for (int i = 0; i < BATCH; i++) {
        uint8_t *p = e->tunbuf + (size_t)i * SLOT;
        ssize_t r = read(e->tun_fd, p, SLOT);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            break; /* EAGAIN: drained (errors other than that: try again next wake-up) */
        }
        size_t n = (size_t)r;
        if (n < 1) {
            e->drops[D_MALFORMED]++;
            continue;
        }
        unsigned version = p[0] >> 4;
        if (version == 4) {
            punt_packet(e, PUNT_TUN, -1, p, n, NULL, 0, 0);
            continue;
        }
        if (version != 6 || n < 40) {
            e->drops[D_MALFORMED]++;
            continue;
        }
        tunnel *t = route_lookup(e, p + 24);
        if (t == NULL) {
            e->drops[D_NO_ROUTE]++;
            continue;
        }
        if (t->kind == KIND_PUNT || n > t->mtu) {
            punt_packet(e, PUNT_TUN, -1, p, n, NULL, 0, 0);
            continue;
        }
        if (t->kind == KIND_V6V4) {
            if (e->raw41_fd < 0) {
                punt_packet(e, PUNT_TUN, -1, p, n, NULL, 0, 0);
                continue;
            }
            enqueue(e->q41, NULL, p, n, t->remote4, 0, 0);
        } else if (t->kind == KIND_AYIYA) {
            if (e->ayiya_fd < 0 || !t->ay->has_endpoint) {
                /* No datagram from the client yet: the core counts NO_ENDPOINT. */
                punt_packet(e, PUNT_TUN, -1, p, n, NULL, 0, 0);
                continue;
            }
            /* codec.build_forward: our identity, the epoch in whole seconds, signed. */
            uint8_t *h = e->qayiya->head[e->qayiya->n];
            if (epoch == 0)
                epoch = (uint32_t)(uint64_t)now_wall();
            h[0] = AY_B0;
            h[1] = AY_B1;
            h[2] = AY_B2_FORWARD;
            h[3] = AY_NH_IPV6;
            h[4] = (uint8_t)(epoch >> 24);
            h[5] = (uint8_t)(epoch >> 16);
            h[6] = (uint8_t)(epoch >> 8);
            h[7] = (uint8_t)epoch;
            memcpy(h + AY_FIXED, t->ay->local, 16);
            /* Signed with the rest of the batch, before it is sent. */
            ayiya_job(&e->qayiya->sign[e->qayiya->n], h, t->ay->key, p, n, h + AY_SIG_START);
            enqueue(e->qayiya, h, p, n, t->remote4, t->port, 0);
        } else {
            int s = t->sock;
            if (s < 0 && !t->sock_fixed)
                s = sole_bound_udp(e);
            if (s < 0 || s >= MAX_UDP || e->udp[s].fd < 0 ||
                (e->udp[s].any && !t->local4 && !t->sock_fixed)) {
                /* Not heard from yet: Python knows the signalled address to send from. */
                punt_packet(e, PUNT_TUN, -1, p, n, NULL, 0, 0);
                continue;
            }
            enqueue(e->qudp[s], NULL, p, n, t->remote4, t->port, t->local4);
        }
        t->pout++;
        t->bout += n;
        t->dirty = 1;
        e->fast_out++;
    }
    if (e->q41->n)
        flush(e, e->raw41_fd, e->q41);
    if (e->qayiya->n) {
        outq *q = e->qayiya;
        uint8_t ok[BATCH];
        ayiya_sign_many(e, q->sign, q->n, ok);
        for (unsigned i = 0; i < q->n; i++)
            q->bad[i] = !ok[i];
        flush(e, e->ayiya_fd, q);
    }
    for (int s = 0; s < MAX_UDP; s++)
        if (e->qudp[s]->n)
            flush(e, e->udp[s].fd, e->qudp[s]);
}

/* An IPv6 packet from tunnel t's client: filter it, then into the TUN. 1: punt it. */
static int from_client6(Engine *e, tunnel *t, const uint8_t *p, size_t n, double now)
{
    if (n < 40 || p[0] >> 4 != 6) {
        e->drops[D_MALFORMED]++;
        return 0;
    }
    const uint8_t *src = p + 8, *dst = p + 24;
    if ((src[0] == 0xFE && (src[1] & 0xC0) == 0x80) || src[0] == 0xFF) {
        /* The client kernel's Router Solicitations and the like (tsp.md §2.6). */
        e->drops[D_LINK_LOCAL]++;
        return 0;
    }
    if (!source_allowed(t, src)) {
        e->drops[D_SPOOFED_SOURCE]++;
        return 0;
    }
    if (memcmp(dst, t->server_inner, 16) == 0)
        return 1; /* the keepalive echo (or junk to us): ForwardingCore answers */
    t->last_seen = now;
    t->pin++;
    t->bin += n;
    t->dirty = 1;
    if (dst[0] == 0xFF || (dst[0] == 0xFE && (dst[1] & 0xC0) == 0x80)) {
        e->drops[D_LINK_LOCAL]++;
        return 0;
    }
    if (write(e->tun_fd, p, n) < 0)
        e->send_errors++;
    else
        e->fast_in++;
    return 0;
}

static int receive_batch(Engine *e, int fd, int want_pktinfo)
{
    for (int i = 0; i < BATCH; i++) {
        e->rx_iov[i].iov_base = e->rxbuf + (size_t)i * SLOT;
        e->rx_iov[i].iov_len = SLOT;
        struct msghdr *m = &e->rx_msgs[i].msg_hdr;
        memset(m, 0, sizeof *m);
        m->msg_name = &e->rx_from[i];
        m->msg_namelen = sizeof e->rx_from[i];
        m->msg_iov = &e->rx_iov[i];
        m->msg_iovlen = 1;
        if (want_pktinfo) {
            m->msg_control = e->rx_ctrl[i].buf;
            m->msg_controllen = sizeof e->rx_ctrl[i].buf;
        }
        e->rx_msgs[i].msg_len = 0;
    }
    int r;
    do {
        r = recvmmsg(fd, e->rx_msgs, BATCH, MSG_DONTWAIT, NULL);
    } while (r < 0 && errno == EINTR);
    /* r < 0 also for a queued ICMP error on a UDP socket: reading clears it; not fatal. */
    return r;
}

static void raw41_batch(Engine *e)
{
    int r = receive_batch(e, e->raw41_fd, 0);
    double now = now_mono();
    hkey k;
    for (int i = 0; i < r; i++) {
        const uint8_t *p = e->rxbuf + (size_t)i * SLOT;
        size_t n = e->rx_msgs[i].msg_len;
        if (e->rx_msgs[i].msg_hdr.msg_flags & MSG_TRUNC) {
            e->drops[D_MALFORMED]++;
            continue;
        }
        /* A raw IPv4 socket hands us the whole packet: header, then the IPv6 packet. */
        if (n < 20 || p[0] >> 4 != 4) {
            e->drops[D_MALFORMED]++;
            continue;
        }
        size_t ihl = (size_t)(p[0] & 0x0F) * 4;
        if (ihl < 20 || ihl > n) {
            e->drops[D_MALFORMED]++;
            continue;
        }
        memset(&k, 0, sizeof k);
        k.kind = K_V4;
        memcpy(k.addr, p + 12, 4);
        int32_t s = ht_get(&e->index, &k);
        if (s < 0) {
            punt_packet(e, PUNT_PROTO41, -1, p + ihl, n - ihl, p + 12, 0, 0);
            continue;
        }
        if (from_client6(e, &e->tunnels[s], p + ihl, n - ihl, now))
            punt_packet(e, PUNT_PROTO41, -1, p + ihl, n - ihl, p + 12, 0, 0);
    }
}

static void udp_batch(Engine *e, int idx)
{
    int r = receive_batch(e, e->udp[idx].fd, 1);
    double now = now_mono();
    hkey k;
    for (int i = 0; i < r; i++) {
        const uint8_t *p = e->rxbuf + (size_t)i * SLOT;
        size_t n = e->rx_msgs[i].msg_len;
        struct msghdr *m = &e->rx_msgs[i].msg_hdr;
        if (m->msg_namelen < sizeof(struct sockaddr_in) || e->rx_from[i].sin_family != AF_INET)
            continue;
        if (n == 0)
            continue; /* as the listener: an empty datagram is nothing at all */
        if (m->msg_flags & MSG_TRUNC) {
            e->drops[D_MALFORMED]++;
            continue;
        }
        uint32_t local4 = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c != NULL; c = CMSG_NXTHDR(m, c)) {
            if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_PKTINFO &&
                c->cmsg_len >= CMSG_LEN(sizeof(struct in_pktinfo))) {
                struct in_pktinfo info;
                memcpy(&info, CMSG_DATA(c), sizeof info);
                local4 = info.ipi_addr.s_addr;
            }
        }
        const uint8_t *src4 = (const uint8_t *)&e->rx_from[i].sin_addr;
        uint16_t port = ntohs(e->rx_from[i].sin_port);
        if (p[0] >> 4 != 6) {
            /* TSP signalling (0xF) and anything odd: the listener decides and counts. */
            punt_packet(e, PUNT_UDP, idx, p, n, src4, port, local4);
            continue;
        }
        memset(&k, 0, sizeof k);
        k.kind = K_UDP;
        k.port = port;
        memcpy(k.addr, src4, 4);
        int32_t s = ht_get(&e->index, &k);
        if (s < 0) {
            punt_packet(e, PUNT_UDP, idx, p, n, src4, port, local4);
            continue;
        }
        tunnel *t = &e->tunnels[s];
        if (!t->sock_fixed) {
            /* Answer on the socket and from the address the client uses. */
            t->sock = idx;
            t->local4 = local4;
        }
        if (from_client6(e, t, p, n, now))
            punt_packet(e, PUNT_UDP, idx, p, n, src4, port, local4);
    }
}

static void ayiya_drop(Engine *e, int why)
{
    e->ayiya_drops[why]++;
    e->drops[D_BAD_AYIYA]++;
}

/* What the first look at an AYIYA datagram decided (ForwardingCore.from_ayiya's checks up to
 * the signature): its tunnel's slot (>= 0: the signature is next), or one of these. */
enum { AY_PUNT = -1, AY_DONE = -2 };

static int32_t ayiya_tunnel(Engine *e, const uint8_t *p, size_t n, double wall)
{
    /* Only a Forward of IPv6 in the profile is decided here; codec.decode names the rest. */
    if (n < AY_HEADER || p[0] != AY_B0 || p[1] != AY_B1 || p[2] != AY_B2_FORWARD ||
        p[3] != AY_NH_IPV6)
        return AY_PUNT;
    const uint8_t *payload = p + AY_HEADER;
    size_t plen = n - AY_HEADER;
    /* codec.check_payload for Next Header 41: exactly one whole IPv6 packet. */
    if (plen < 40 || payload[0] >> 4 != 6 || 40 + (((size_t)payload[4] << 8) | payload[5]) != plen)
        return AY_PUNT;
    hkey k;
    identity_key(&k, p + AY_FIXED);
    int32_t s = ht_get(&e->index, &k);
    if (s < 0)
        return AY_PUNT; /* UNKNOWN_IDENTITY */
    /* verify._check: the clock, then the signature, the replay cache last. */
    uint32_t epoch = ((uint32_t)p[4] << 24) | ((uint32_t)p[5] << 16) | ((uint32_t)p[6] << 8) | p[7];
    if (fabs(wall - (double)epoch) > (double)e->tunnels[s].ay->window) {
        ayiya_drop(e, A_CLOCK_SKEW);
        return AY_DONE;
    }
    return s;
}

/* The rest for a datagram of tunnel slot s whose signature should be sig: forwarded or
 * dropped here, or 1: punt it (the core decides). */
static int ayiya_signed(Engine *e, int32_t s, const uint8_t *p, size_t n, const uint8_t *sig,
                        const uint8_t *src4, uint16_t port, double now)
{
    tunnel *t = &e->tunnels[s];
    ayiya_link *a = t->ay;
    const uint8_t *payload = p + AY_HEADER;
    if (CRYPTO_memcmp(sig, p + AY_SIG_START, AY_KEY) != 0) {
        ayiya_drop(e, A_BAD_SIGNATURE);
        return 0;
    }
    /* From anywhere but the tunnel's endpoint (or before the first datagram) it would move
     * the tunnel: Python decides, against this same replay cache. Authentic ones only, so
     * forged floods from other addresses stay here. */
    if (!a->has_endpoint || memcmp(t->remote4, src4, 4) != 0 || t->port != port)
        return 1;
    /* The keepalive echo: answered in Python, which must still find the datagram new, so the
     * cache is not touched here. */
    if (memcmp(payload + 24, t->server_inner, 16) == 0)
        return 1;
    uint32_t epoch = ((uint32_t)p[4] << 24) | ((uint32_t)p[5] << 16) | ((uint32_t)p[6] << 8) | p[7];
    int v = replay_check(a, epoch, p + AY_SIG_START, 0);
    if (v < 0) {
        e->drops[D_OVERLOAD]++;
        return 0;
    }
    if (v != V_ACCEPTED) {
        ayiya_drop(e, A_REPLAYED);
        return 0;
    }
    /* Any valid datagram proves the tunnel alive, whatever happens to its payload. */
    t->last_seen = now;
    t->dirty = 1;
    return from_client6(e, t, payload, n - AY_HEADER, now);
}

/* A batch from the AYIYA socket, in three passes so the signatures are made together: which
 * tunnel (and the clock), every signature, then the rest in the order they came. Nothing the
 * first two passes read changes during the third: the tables change only under the lock. */
static void ayiya_batch(Engine *e)
{
    int r = receive_batch(e, e->ayiya_fd, 0);
    double now = now_mono(), wall = now_wall();
    int32_t slot[BATCH];
    sha1x16_msg jobs[BATCH];
    uint8_t sig[BATCH][AY_KEY], ok[BATCH];
    size_t njobs = 0;
    for (int i = 0; i < r; i++) {
        const uint8_t *p = e->rxbuf + (size_t)i * SLOT;
        size_t n = e->rx_msgs[i].msg_len;
        struct msghdr *m = &e->rx_msgs[i].msg_hdr;
        slot[i] = AY_DONE;
        if (m->msg_namelen < sizeof(struct sockaddr_in) || e->rx_from[i].sin_family != AF_INET)
            continue;
        if (m->msg_flags & MSG_TRUNC) {
            e->drops[D_MALFORMED]++;
            continue;
        }
        slot[i] = ayiya_tunnel(e, p, n, wall);
        if (slot[i] >= 0) {
            ayiya_job(&jobs[njobs], p, e->tunnels[slot[i]].ay->key, p + AY_HEADER,
                      n - AY_HEADER, sig[njobs]);
            njobs++;
        }
    }
    ayiya_sign_many(e, jobs, njobs, ok);
    size_t j = 0;
    for (int i = 0; i < r; i++) {
        if (slot[i] == AY_DONE)
            continue;
        const uint8_t *p = e->rxbuf + (size_t)i * SLOT;
        size_t n = e->rx_msgs[i].msg_len;
        const uint8_t *src4 = (const uint8_t *)&e->rx_from[i].sin_addr;
        uint16_t port = ntohs(e->rx_from[i].sin_port);
        int punt = 1;
        if (slot[i] >= 0) {
            /* No hash made (cannot happen short of OOM): Python has its own. */
            punt = !ok[j] || ayiya_signed(e, slot[i], p, n, sig[j], src4, port, now);
            j++;
        }
        if (punt)
            punt_packet(e, PUNT_AYIYA, -1, p, n, src4, port, 0);
    }
}

static void *run(void *arg)
{
    Engine *e = arg;
    struct epoll_event ev[16];
    /* Named for top -H and the benchmark's per-thread CPU figures. */
    pthread_setname_np(pthread_self(), "tb-fastpath");
    while (!atomic_load(&e->stopping)) {
        int n = epoll_wait(e->epfd, ev, 16, 1000);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            e->thread_errno = errno;
            atomic_store(&e->thread_dead, 1);
            break;
        }
        pthread_mutex_lock(&e->lock);
        for (int i = 0; i < n; i++) {
            uint32_t tag = ev[i].data.u32;
            if (tag == TAG_WAKE) {
                uint64_t v;
                if (read(e->wake_fd, &v, sizeof v) < 0) {
                    /* EAGAIN: another wake-up already read it */
                }
            } else if (tag == TAG_TUN) {
                tun_batch(e);
            } else if (tag == TAG_RAW41 && e->raw41_fd >= 0) {
                raw41_batch(e);
            } else if (tag == TAG_AYIYA && e->ayiya_fd >= 0) {
                ayiya_batch(e);
            } else if (tag >= TAG_UDP && tag < TAG_UDP + MAX_UDP && e->udp[tag - TAG_UDP].fd >= 0) {
                udp_batch(e, (int)(tag - TAG_UDP));
            }
        }
        e->batches++;
        pthread_mutex_unlock(&e->lock);
    }
    return NULL;
}

/* ------------------------------------------------------------------ Python API */

static void engine_stop_thread(Engine *e)
{
    if (!e->running)
        return;
    atomic_store(&e->stopping, 1);
    uint64_t one = 1;
    if (write(e->wake_fd, &one, sizeof one) < 0) {
        /* the thread also wakes within a second on its own */
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_join(e->thread, NULL);
    Py_END_ALLOW_THREADS
    e->running = 0;
}

static void Engine_dealloc(Engine *e)
{
    engine_stop_thread(e);
    for (size_t i = 0; i < e->ring_count; i++)
        free(e->ring[(e->ring_head + i) % PUNT_CAP]);
    e->ring_count = 0;
    for (size_t s = 0; s < e->ntunnels; s++)
        if (e->tunnels[s].in_use)
            ayiya_free(e->tunnels[s].ay);
    free(e->tunnels);
    free(e->free_slots);
    free(e->index.e);
    free(e->tunbuf);
    free(e->rxbuf);
    free(e->q41);
    free(e->qayiya);
    for (int s = 0; s < MAX_UDP; s++)
        free(e->qudp[s]);
    EVP_MD_CTX_free(e->md);
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    EVP_MD_free(e->sha1_fetched);
#endif
    if (e->epfd >= 0)
        close(e->epfd);
    if (e->wake_fd >= 0)
        close(e->wake_fd);
    if (e->punt_fd >= 0)
        close(e->punt_fd);
    if (e->lock_ok)
        pthread_mutex_destroy(&e->lock);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static PyObject *Engine_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    Engine *e = (Engine *)type->tp_alloc(type, 0);
    if (e == NULL)
        return NULL;
    e->tun_fd = e->raw41_fd = e->ayiya_fd = e->epfd = e->wake_fd = e->punt_fd = -1;
    for (int s = 0; s < MAX_UDP; s++)
        e->udp[s].fd = -1;
    return (PyObject *)e;
}

static int epoll_add(int epfd, int fd, uint32_t tag)
{
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.u32 = tag;
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

static int Engine_init(Engine *e, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"tun_fd", "raw41_fd", NULL};
    int tun_fd, raw41_fd = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "i|i", kwlist, &tun_fd, &raw41_fd))
        return -1;
    if (e->epfd >= 0) {
        PyErr_SetString(PyExc_RuntimeError, "Engine already initialised");
        return -1;
    }
    if (tun_fd < 0) {
        PyErr_SetString(PyExc_ValueError, "tun_fd must be an open descriptor");
        return -1;
    }
    if (pthread_mutex_init(&e->lock, NULL) != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_mutex_init failed");
        return -1;
    }
    e->lock_ok = 1;
    e->tun_fd = tun_fd;
    e->raw41_fd = raw41_fd;
    e->tunbuf = malloc((size_t)BATCH * SLOT);
    e->rxbuf = malloc((size_t)BATCH * SLOT);
    e->q41 = calloc(1, sizeof(outq));
    e->qayiya = calloc(1, sizeof(outq));
    int ok = e->tunbuf && e->rxbuf && e->q41 && e->qayiya;
    for (int s = 0; s < MAX_UDP && ok; s++)
        ok = (e->qudp[s] = calloc(1, sizeof(outq))) != NULL;
    if (!ok) {
        PyErr_NoMemory();
        return -1;
    }
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
    /* EVP_sha1() would be looked up in the provider on every EVP_DigestInit_ex: twice the
     * cost of hashing a small packet. */
    e->sha1_fetched = EVP_MD_fetch(NULL, "SHA1", NULL);
    e->sha1 = e->sha1_fetched != NULL ? e->sha1_fetched : EVP_sha1();
#else
    e->sha1 = EVP_sha1();
#endif
    e->md = EVP_MD_CTX_new();
    e->x16 = sha1x16_usable();
    if (e->sha1 == NULL || e->md == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL has no SHA-1 here");
        return -1;
    }
    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    e->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    e->punt_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (e->epfd < 0 || e->wake_fd < 0 || e->punt_fd < 0 ||
        epoll_add(e->epfd, e->wake_fd, TAG_WAKE) < 0 || epoll_add(e->epfd, tun_fd, TAG_TUN) < 0 ||
        (raw41_fd >= 0 && epoll_add(e->epfd, raw41_fd, TAG_RAW41) < 0)) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    return 0;
}

#define CHECK_INIT(e, ret)                                                     \
    if ((e)->epfd < 0) {                                                       \
        PyErr_SetString(PyExc_RuntimeError, "Engine.__init__ was not called"); \
        return ret;                                                            \
    }

static PyObject *Engine_start(Engine *e, PyObject *noargs)
{
    CHECK_INIT(e, NULL);
    if (e->running) {
        PyErr_SetString(PyExc_RuntimeError, "the fast path is already running");
        return NULL;
    }
    atomic_store(&e->stopping, 0);
    int err = pthread_create(&e->thread, NULL, run, e);
    if (err != 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    e->running = 1;
    Py_RETURN_NONE;
}

static PyObject *Engine_stop(Engine *e, PyObject *noargs)
{
    engine_stop_thread(e);
    Py_RETURN_NONE;
}

/* The address socket fd is bound to, into *sa; -1 with a Python error (OSError, or
 * ValueError saying `not_ipv4`) unless it is an IPv4 socket. */
static int ipv4_socket(int fd, struct sockaddr_in *sa, const char *not_ipv4)
{
    socklen_t len = sizeof *sa;
    if (getsockname(fd, (struct sockaddr *)sa, &len) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (sa->sin_family != AF_INET) {
        PyErr_SetString(PyExc_ValueError, not_ipv4);
        return -1;
    }
    return 0;
}

static PyObject *Engine_add_udp(Engine *e, PyObject *args)
{
    int fd;
    if (!PyArg_ParseTuple(args, "i", &fd))
        return NULL;
    CHECK_INIT(e, NULL);
    struct sockaddr_in sa;
    if (ipv4_socket(fd, &sa, "v6udpv4 sockets are IPv4 (AF_INET)") < 0)
        return NULL;
    int on = 1;
    if (setsockopt(fd, IPPROTO_IP, IP_PKTINFO, &on, sizeof on) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    lock_from_python(e);
    int idx = -1;
    for (int s = 0; s < MAX_UDP; s++)
        if (e->udp[s].fd < 0) {
            idx = s;
            break;
        }
    if (idx < 0) {
        pthread_mutex_unlock(&e->lock);
        PyErr_Format(PyExc_ValueError, "at most %d UDP sockets", MAX_UDP);
        return NULL;
    }
    if (epoll_add(e->epfd, fd, TAG_UDP + (uint32_t)idx) < 0) {
        pthread_mutex_unlock(&e->lock);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    e->udp[idx].fd = fd;
    e->udp[idx].any = sa.sin_addr.s_addr == htonl(INADDR_ANY);
    pthread_mutex_unlock(&e->lock);
    return PyLong_FromLong(idx);
}

static PyObject *Engine_remove_udp(Engine *e, PyObject *args)
{
    int idx;
    if (!PyArg_ParseTuple(args, "i", &idx))
        return NULL;
    CHECK_INIT(e, NULL);
    if (idx < 0 || idx >= MAX_UDP) {
        PyErr_SetString(PyExc_ValueError, "no such UDP socket index");
        return NULL;
    }
    lock_from_python(e);
    if (e->udp[idx].fd >= 0) {
        /* Under the lock: once this returns the thread never touches the descriptor again,
         * so the caller may close it. */
        epoll_ctl(e->epfd, EPOLL_CTL_DEL, e->udp[idx].fd, NULL);
        e->udp[idx].fd = -1;
        for (size_t s = 0; s < e->ntunnels; s++) {
            tunnel *t = &e->tunnels[s];
            if (t->in_use && t->sock == idx && !t->sock_fixed) {
                t->sock = -1;
                t->local4 = 0;
            }
        }
    }
    pthread_mutex_unlock(&e->lock);
    Py_RETURN_NONE;
}

static PyObject *Engine_add_ayiya(Engine *e, PyObject *args)
{
    int fd;
    if (!PyArg_ParseTuple(args, "i", &fd))
        return NULL;
    CHECK_INIT(e, NULL);
    struct sockaddr_in sa;
    if (ipv4_socket(fd, &sa, "the AYIYA socket is IPv4 (AF_INET)") < 0)
        return NULL;
    lock_from_python(e);
    if (e->ayiya_fd >= 0) {
        pthread_mutex_unlock(&e->lock);
        PyErr_SetString(PyExc_ValueError, "the engine already has an AYIYA socket");
        return NULL;
    }
    if (epoll_add(e->epfd, fd, TAG_AYIYA) < 0) {
        pthread_mutex_unlock(&e->lock);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    e->ayiya_fd = fd;
    pthread_mutex_unlock(&e->lock);
    Py_RETURN_NONE;
}

static PyObject *Engine_remove_ayiya(Engine *e, PyObject *noargs)
{
    CHECK_INIT(e, NULL);
    lock_from_python(e);
    if (e->ayiya_fd >= 0) {
        /* Under the lock, as remove_udp: the caller may close the socket on return. */
        epoll_ctl(e->epfd, EPOLL_CTL_DEL, e->ayiya_fd, NULL);
        e->ayiya_fd = -1;
    }
    pthread_mutex_unlock(&e->lock);
    Py_RETURN_NONE;
}

static PyObject *counters_tuple(const tunnel *t)
{
    return Py_BuildValue("(LKKKKd)", (long long)t->id, (unsigned long long)t->pin,
                         (unsigned long long)t->pout, (unsigned long long)t->bin,
                         (unsigned long long)t->bout, t->last_seen);
}

static int32_t new_slot(Engine *e)
{
    if (e->nfree)
        return e->free_slots[--e->nfree];
    size_t cap = e->ntunnels ? e->ntunnels * 2 : 64;
    if (cap > INT32_MAX)
        return -1;
    tunnel *t = realloc(e->tunnels, cap * sizeof *t);
    if (t == NULL)
        return -1;
    e->tunnels = t;
    int32_t *f = realloc(e->free_slots, cap * sizeof *f);
    if (f == NULL)
        return -1;
    e->free_slots = f;
    for (size_t s = cap; s > e->ntunnels + 1; s--)
        e->free_slots[e->nfree++] = (int32_t)(s - 1);
    memset(&e->tunnels[e->ntunnels], 0, (cap - e->ntunnels) * sizeof *t);
    int32_t got = (int32_t)e->ntunnels;
    e->ntunnels = cap;
    return got;
}

static PyObject *Engine_set_tunnel(Engine *e, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"tunnel_id", "kind",     "remote",   "port",  "server_inner",
                             "mtu",       "prefixes", "sock",     "identity", "local",
                             "key",       "clock_window", NULL};
    long long id;
    int kind, port, sock = -1, window = 120;
    unsigned int mtu;
    Py_buffer remote, inner;
    PyObject *prefixes;
    const char *ident = NULL, *local = NULL, *key = NULL;
    Py_ssize_t ident_len = 0, local_len = 0, key_len = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Liy*iy*IO|iy#y#y#i", kwlist, &id, &kind, &remote,
                                     &port, &inner, &mtu, &prefixes, &sock, &ident, &ident_len,
                                     &local, &local_len, &key, &key_len, &window))
        return NULL;
    tunnel t;
    memset(&t, 0, sizeof t);
    PyObject *seq = NULL;
    const char *err = NULL;
    if (kind != KIND_PUNT && kind != KIND_V6V4 && kind != KIND_V6UDPV4 && kind != KIND_AYIYA)
        err = "kind must be KIND_PUNT, KIND_V6V4, KIND_V6UDPV4 or KIND_AYIYA";
    else if (kind == KIND_AYIYA && remote.len != 0 && remote.len != 4)
        err = "remote must be 4 bytes (an IPv4 address), or empty (AYIYA: not known yet)";
    else if (kind != KIND_PUNT && kind != KIND_AYIYA && remote.len != 4)
        err = "remote must be 4 bytes (an IPv4 address)";
    else if (port < 0 || port > 65535)
        err = "port must be 0..65535";
    else if (inner.len != 16)
        err = "server_inner must be 16 bytes (an IPv6 address)";
    else if (sock < -1 || sock >= MAX_UDP)
        err = "sock must be -1 or a UDP socket index";
    else if (kind == KIND_AYIYA && (ident_len != 16 || local_len != 16 || key_len != AY_KEY))
        err = "AYIYA needs identity and local (16 bytes each) and key (SHA1(secret), 20 bytes)";
    else if (kind == KIND_AYIYA && window < 0)
        err = "clock_window must be >= 0";
    if (err == NULL) {
        seq = PySequence_Fast(prefixes, "prefixes must be a sequence of (bytes, length)");
        if (seq == NULL) {
            PyBuffer_Release(&remote);
            PyBuffer_Release(&inner);
            return NULL;
        }
        Py_ssize_t np = PySequence_Fast_GET_SIZE(seq);
        if (np > MAX_PREFIXES)
            err = "too many prefixes for the fast path";
        for (Py_ssize_t i = 0; i < np && err == NULL; i++) {
            PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
            const char *addr;
            Py_ssize_t alen;
            int plen;
            if (!PyArg_ParseTuple(item, "y#i", &addr, &alen, &plen)) {
                Py_DECREF(seq);
                PyBuffer_Release(&remote);
                PyBuffer_Release(&inner);
                return NULL;
            }
            if (alen != 16 || plen < 0 || plen > 128) {
                err = "a prefix is (16 bytes, 0..128)";
                break;
            }
            memcpy(t.pfx[i], addr, 16);
            t.plen[i] = (uint8_t)plen;
            t.nprefix++;
        }
        Py_DECREF(seq);
    }
    if (err != NULL) {
        PyBuffer_Release(&remote);
        PyBuffer_Release(&inner);
        PyErr_SetString(PyExc_ValueError, err);
        return NULL;
    }
    t.id = id;
    t.in_use = 1;
    t.kind = (uint8_t)kind;
    if (remote.len == 4 && kind != KIND_PUNT)
        memcpy(t.remote4, remote.buf, 4);
    t.port = (uint16_t)port;
    memcpy(t.server_inner, inner.buf, 16);
    t.mtu = mtu;
    t.sock = sock;
    t.sock_fixed = sock >= 0;
    /* AYIYA: a fresh link, unless the tunnel keeps its key (below). Allocated before the lock. */
    ayiya_link *fresh = NULL;
    if (kind == KIND_AYIYA) {
        fresh = calloc(1, sizeof *fresh);
        if (fresh == NULL) {
            PyBuffer_Release(&remote);
            PyBuffer_Release(&inner);
            return PyErr_NoMemory();
        }
        memcpy(fresh->ident, ident, 16);
        memcpy(fresh->local, local, 16);
        memcpy(fresh->key, key, AY_KEY);
        fresh->has_endpoint = remote.len == 4;
        fresh->window = (uint32_t)window;
    }
    PyBuffer_Release(&remote);
    PyBuffer_Release(&inner);
    if (e->epfd < 0) {
        free(fresh);
        PyErr_SetString(PyExc_RuntimeError, "Engine.__init__ was not called");
        return NULL;
    }

    lock_from_python(e);
    hkey k;
    id_key(&k, id);
    int32_t old = ht_get(&e->index, &k);
    ayiya_link *drop = NULL;
    t.ay = fresh;
    if (old >= 0) {
        /* Replaced (ForwardingCore.add removes first): counts not yet taken carry over. */
        tunnel *o = &e->tunnels[old];
        t.pin = o->pin;
        t.pout = o->pout;
        t.bin = o->bin;
        t.bout = o->bout;
        t.last_seen = o->last_seen;
        t.dirty = o->dirty;
        ayiya_link *was = unlink_tunnel(e, old);
        if (fresh != NULL && was != NULL && memcmp(was->key, fresh->key, AY_KEY) == 0) {
            /* The same secret keeps its replay cache, as ForwardingCore.add keeps the link: a
             * fresh one would take old datagrams again. */
            memcpy(was->ident, fresh->ident, 16);
            memcpy(was->local, fresh->local, 16);
            was->has_endpoint = fresh->has_endpoint;
            was->window = fresh->window;
            t.ay = was;
            drop = fresh;
        } else {
            drop = was;
        }
    }
    int32_t s = new_slot(e);
    if (s < 0 || ht_put(&e->index, &k, s) != 0) {
        if (s >= 0)
            e->free_slots[e->nfree++] = s;
        pthread_mutex_unlock(&e->lock);
        ayiya_free(t.ay);
        ayiya_free(drop);
        return PyErr_NoMemory();
    }
    e->tunnels[s] = t;
    e->live++;
    int oom = 0;
    for (uint32_t i = 0; i < t.nprefix; i++) {
        route_key(&k, t.pfx[i], t.plen[i]);
        if (ht_get(&e->index, &k) < 0)
            e->plen_count[t.plen[i]]++;
        oom |= ht_put(&e->index, &k, s);
    }
    rebuild_plens(e);
    if (kind != KIND_PUNT) {
        endpoint_key(&k, &t);
        oom |= ht_put(&e->index, &k, s);
    }
    if (oom) {
        ayiya_free(unlink_tunnel(e, s));
        pthread_mutex_unlock(&e->lock);
        ayiya_free(drop);
        return PyErr_NoMemory();
    }
    pthread_mutex_unlock(&e->lock);
    ayiya_free(drop);
    Py_RETURN_NONE;
}

static PyObject *Engine_set_endpoint(Engine *e, PyObject *args)
{
    long long id;
    const char *remote;
    Py_ssize_t rlen;
    int port;
    if (!PyArg_ParseTuple(args, "Ly#i", &id, &remote, &rlen, &port))
        return NULL;
    CHECK_INIT(e, NULL);
    if ((rlen != 0 && rlen != 4) || port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "an endpoint is (4 bytes or empty, 0..65535)");
        return NULL;
    }
    lock_from_python(e);
    hkey k;
    id_key(&k, id);
    int32_t s = ht_get(&e->index, &k);
    int found = s >= 0 && e->tunnels[s].kind == KIND_AYIYA;
    if (found) {
        tunnel *t = &e->tunnels[s];
        if (rlen == 4)
            memcpy(t->remote4, remote, 4);
        t->port = (uint16_t)port;
        t->ay->has_endpoint = rlen == 4;
    }
    pthread_mutex_unlock(&e->lock);
    return PyBool_FromLong(found);
}

/* The AYIYA link of tunnel id, under the lock; NULL (and KeyError set, after unlocking) if
 * the engine has no such AYIYA tunnel. */
static ayiya_link *locked_link(Engine *e, long long id)
{
    hkey k;
    id_key(&k, id);
    lock_from_python(e);
    int32_t s = ht_get(&e->index, &k);
    if (s >= 0 && e->tunnels[s].kind == KIND_AYIYA)
        return e->tunnels[s].ay;
    pthread_mutex_unlock(&e->lock);
    PyErr_Format(PyExc_KeyError, "no AYIYA tunnel %lld in the engine", id);
    return NULL;
}

static PyObject *Engine_ayiya_replay_check(Engine *e, PyObject *args)
{
    long long id, epoch;
    const char *digest;
    Py_ssize_t dlen;
    int moving;
    if (!PyArg_ParseTuple(args, "LLy#p", &id, &epoch, &digest, &dlen, &moving))
        return NULL;
    CHECK_INIT(e, NULL);
    if (dlen < 10) {
        PyErr_SetString(PyExc_ValueError, "a digest has at least 10 bytes");
        return NULL;
    }
    ayiya_link *a = locked_link(e, id);
    if (a == NULL)
        return NULL;
    int v = replay_check(a, (int64_t)epoch, (const uint8_t *)digest, moving);
    pthread_mutex_unlock(&e->lock);
    if (v < 0)
        return PyErr_NoMemory();
    return PyLong_FromLong(v);
}

static PyObject *Engine_ayiya_replay_state(Engine *e, PyObject *args)
{
    long long id;
    if (!PyArg_ParseTuple(args, "L", &id))
        return NULL;
    CHECK_INIT(e, NULL);
    ayiya_link *a = locked_link(e, id);
    if (a == NULL)
        return NULL;
    int has = a->has_newest;
    long long newest = a->newest;
    unsigned long used = a->used;
    pthread_mutex_unlock(&e->lock);
    if (!has)
        return Py_BuildValue("(Ok)", Py_None, used);
    return Py_BuildValue("(Lk)", newest, used);
}

static PyObject *Engine_ayiya_replay_seen(Engine *e, PyObject *args)
{
    long long id;
    const char *digest;
    Py_ssize_t dlen;
    if (!PyArg_ParseTuple(args, "Ly#", &id, &digest, &dlen))
        return NULL;
    CHECK_INIT(e, NULL);
    if (dlen < 10) {
        PyErr_SetString(PyExc_ValueError, "a digest has at least 10 bytes");
        return NULL;
    }
    ayiya_link *a = locked_link(e, id);
    if (a == NULL)
        return NULL;
    static const uint8_t empty[REPLAY_KEY];
    int seen = 0;
    if (a->slots != NULL && memcmp(digest, empty, REPLAY_KEY) != 0) {
        const uint8_t *d = (const uint8_t *)digest;
        size_t off = (size_t)(((d[8] << 8) | d[9]) & (REPLAY_SLOTS - 1)) * REPLAY_KEY;
        seen = memcmp(a->slots + off, d, REPLAY_KEY) == 0;
    }
    pthread_mutex_unlock(&e->lock);
    return PyBool_FromLong(seen);
}

static PyObject *Engine_remove_tunnel(Engine *e, PyObject *args)
{
    long long id;
    if (!PyArg_ParseTuple(args, "L", &id))
        return NULL;
    CHECK_INIT(e, NULL);
    lock_from_python(e);
    hkey k;
    id_key(&k, id);
    int32_t s = ht_get(&e->index, &k);
    if (s < 0) {
        pthread_mutex_unlock(&e->lock);
        Py_RETURN_NONE;
    }
    tunnel last = e->tunnels[s];
    ayiya_link *ay = unlink_tunnel(e, s);
    pthread_mutex_unlock(&e->lock);
    ayiya_free(ay);
    return counters_tuple(&last);
}

static PyObject *Engine_take_counters(Engine *e, PyObject *noargs)
{
    CHECK_INIT(e, NULL);
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    /* Copy under the lock, build objects after it (allocation may run the GC). */
    size_t cap = 0, n = 0;
    tunnel *copy = NULL;
    lock_from_python(e);
    for (size_t s = 0; s < e->ntunnels; s++)
        cap += e->tunnels[s].in_use && e->tunnels[s].dirty;
    if (cap) {
        copy = malloc(cap * sizeof *copy);
        if (copy != NULL) {
            for (size_t s = 0; s < e->ntunnels; s++) {
                tunnel *t = &e->tunnels[s];
                if (!t->in_use || !t->dirty)
                    continue;
                copy[n++] = *t;
                t->pin = t->pout = t->bin = t->bout = 0;
                t->dirty = 0;
            }
        }
    }
    pthread_mutex_unlock(&e->lock);
    if (cap && copy == NULL) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    for (size_t i = 0; i < n; i++) {
        PyObject *item = counters_tuple(&copy[i]);
        if (item == NULL || PyList_Append(out, item) != 0) {
            /* The deltas taken are lost with the error; counters are not worth a crash. */
            Py_XDECREF(item);
            Py_DECREF(out);
            free(copy);
            return NULL;
        }
        Py_DECREF(item);
    }
    free(copy);
    return out;
}

/* {name: count} for the nonzero counts d[0..n) named by names. */
static PyObject *counts_dict(const uint64_t *d, const char *const *names, int n)
{
    PyObject *out = PyDict_New();
    if (out == NULL)
        return NULL;
    for (int i = 0; i < n; i++) {
        if (!d[i])
            continue;
        PyObject *v = PyLong_FromUnsignedLongLong(d[i]);
        if (v == NULL || PyDict_SetItemString(out, names[i], v) != 0) {
            Py_XDECREF(v);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(v);
    }
    return out;
}

static PyObject *Engine_take_drops(Engine *e, PyObject *noargs)
{
    CHECK_INIT(e, NULL);
    uint64_t d[N_DROPS];
    lock_from_python(e);
    memcpy(d, e->drops, sizeof d);
    memset(e->drops, 0, sizeof e->drops);
    for (int i = 0; i < N_DROPS; i++)
        e->drops_taken += d[i];
    pthread_mutex_unlock(&e->lock);
    return counts_dict(d, drop_names, N_DROPS);
}

static PyObject *Engine_take_ayiya_drops(Engine *e, PyObject *noargs)
{
    CHECK_INIT(e, NULL);
    uint64_t d[N_AYIYA_DROPS];
    lock_from_python(e);
    memcpy(d, e->ayiya_drops, sizeof d);
    memset(e->ayiya_drops, 0, sizeof e->ayiya_drops);
    pthread_mutex_unlock(&e->lock);
    return counts_dict(d, ayiya_drop_names, N_AYIYA_DROPS);
}

static PyObject *Engine_take_punts(Engine *e, PyObject *args)
{
    int max = 256;
    if (!PyArg_ParseTuple(args, "|i", &max))
        return NULL;
    CHECK_INIT(e, NULL);
    if (max < 1 || max > PUNT_CAP)
        max = PUNT_CAP;
    punt *taken[PUNT_CAP];
    size_t n = 0;
    lock_from_python(e);
    while (n < (size_t)max && e->ring_count) {
        taken[n++] = e->ring[e->ring_head];
        e->ring_head = (e->ring_head + 1) % PUNT_CAP;
        e->ring_count--;
    }
    if (e->ring_count == 0) {
        /* The next punt signals the eventfd again. */
        e->punt_signalled = 0;
    }
    pthread_mutex_unlock(&e->lock);
    PyObject *out = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; i < n; i++) {
        punt *q = taken[i];
        if (out != NULL) {
            PyObject *item = Py_BuildValue("(iiy#y#iy#)", q->kind, q->sock, (const char *)q->data,
                                           (Py_ssize_t)q->len, (const char *)q->src,
                                           (Py_ssize_t)4, q->port, (const char *)&q->local4,
                                           (Py_ssize_t)4);
            if (item == NULL)
                Py_CLEAR(out);
            else
                PyList_SET_ITEM(out, (Py_ssize_t)i, item);
        }
        free(q);
    }
    return out;
}

static PyObject *Engine_stats(Engine *e, PyObject *noargs)
{
    CHECK_INIT(e, NULL);
    lock_from_python(e);
    uint64_t dropped = e->drops_taken;
    for (int i = 0; i < N_DROPS; i++)
        dropped += e->drops[i];
    unsigned long long v[10] = {e->fast_in, e->fast_out, e->punted,
                                e->send_errors, e->batches, e->live,
                                e->ring_count, (unsigned)e->thread_errno, dropped,
                                e->lane_hashes};
    pthread_mutex_unlock(&e->lock);
    return Py_BuildValue("{sKsKsKsKsKsKsKsKsKsK}", "fast_in", v[0], "fast_out", v[1], "punted",
                         v[2], "send_errors", v[3], "batches", v[4], "tunnels", v[5], "queued",
                         v[6], "thread_errno", v[7], "dropped", v[8], "sha1_lanes", v[9]);
}

static PyObject *Engine_get_punt_fd(Engine *e, void *closure) { return PyLong_FromLong(e->punt_fd); }

static PyObject *Engine_get_running(Engine *e, void *closure)
{
    /* False too once the thread has ended on an error (thread_errno in stats()). */
    return PyBool_FromLong(e->running && !atomic_load(&e->stopping) &&
                           !atomic_load(&e->thread_dead));
}

static PyMethodDef Engine_methods[] = {
    {"start", (PyCFunction)Engine_start, METH_NOARGS, "Start the forwarding thread."},
    {"stop", (PyCFunction)Engine_stop, METH_NOARGS, "Stop and join the forwarding thread."},
    {"add_udp", (PyCFunction)Engine_add_udp, METH_VARARGS,
     "add_udp(fd) -> index: read and send v6udpv4 on this IPv4 UDP socket."},
    {"remove_udp", (PyCFunction)Engine_remove_udp, METH_VARARGS,
     "remove_udp(index): stop using the socket (it may be closed once this returns)."},
    {"add_ayiya", (PyCFunction)Engine_add_ayiya, METH_VARARGS,
     "add_ayiya(fd): read and send AYIYA on this IPv4 UDP socket."},
    {"remove_ayiya", (PyCFunction)Engine_remove_ayiya, METH_NOARGS,
     "Stop using the AYIYA socket (it may be closed once this returns)."},
    {"set_tunnel", (PyCFunction)(void (*)(void))Engine_set_tunnel, METH_VARARGS | METH_KEYWORDS,
     "set_tunnel(tunnel_id, kind, remote, port, server_inner, mtu, prefixes, sock=-1, "
     "identity=b'', local=b'', key=b'', clock_window=120)."},
    {"set_endpoint", (PyCFunction)Engine_set_endpoint, METH_VARARGS,
     "set_endpoint(tunnel_id, remote, port) -> found: where an AYIYA tunnel's client is now."},
    {"ayiya_replay_check", (PyCFunction)Engine_ayiya_replay_check, METH_VARARGS,
     "ayiya_replay_check(tunnel_id, epoch, digest, moving) -> 0 accepted, 1 replayed, 2 stale."},
    {"ayiya_replay_state", (PyCFunction)Engine_ayiya_replay_state, METH_VARARGS,
     "ayiya_replay_state(tunnel_id) -> (newest epoch or None, slots used)."},
    {"ayiya_replay_seen", (PyCFunction)Engine_ayiya_replay_seen, METH_VARARGS,
     "ayiya_replay_seen(tunnel_id, digest) -> whether the digest is in the cache."},
    {"remove_tunnel", (PyCFunction)Engine_remove_tunnel, METH_VARARGS,
     "remove_tunnel(id) -> its untaken counters (id, pin, pout, bin, bout, last_seen) or None."},
    {"take_counters", (PyCFunction)Engine_take_counters, METH_NOARGS,
     "Counters since the last call, per tunnel that moved: (id, pin, pout, bin, bout, seen)."},
    {"take_drops", (PyCFunction)Engine_take_drops, METH_NOARGS,
     "Drops since the last call: {Drop name: count}."},
    {"take_ayiya_drops", (PyCFunction)Engine_take_ayiya_drops, METH_NOARGS,
     "AYIYA drops since the last call: {AyiyaDrop name: count} (each also a BAD_AYIYA)."},
    {"take_punts", (PyCFunction)Engine_take_punts, METH_VARARGS,
     "take_punts(max=256) -> [(kind, sock, data, src4, port, local4)] for the slow path."},
    {"stats", (PyCFunction)Engine_stats, METH_NOARGS, "Totals since the engine was made."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Engine_getset[] = {
    {"punt_fd", (getter)Engine_get_punt_fd, NULL, "eventfd, readable when punts wait", NULL},
    {"running", (getter)Engine_get_running, NULL, "whether the thread runs", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tunnelbroker.tunnelserver._fastpath.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The forwarding fast path: a C thread over a TUN and tunnel sockets.",
    .tp_new = Engine_new,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
    .tp_getset = Engine_getset,
};

/* sha1_lanes([(part, ...), ...]): sha1x16() from Python, so tests can hold it to hashlib. */
static PyObject *sha1_lanes(PyObject *mod, PyObject *arg)
{
    if (!sha1x16_usable()) {
        PyErr_SetString(PyExc_RuntimeError, "sixteen-lane SHA-1 needs AVX-512 F and BW");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(arg, "sha1_lanes takes a list of tuples of bytes");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    sha1x16_msg *msgs = PyMem_Calloc((size_t)n + 1, sizeof *msgs);
    PyObject *outs = PyList_New(n);
    PyObject *result = NULL;
    if (msgs == NULL || outs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *parts = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(parts) || PyTuple_GET_SIZE(parts) > SHA1X16_PARTS) {
            PyErr_SetString(PyExc_TypeError, "each message is a tuple of at most 3 bytes objects");
            goto done;
        }
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(parts); k++) {
            PyObject *b = PyTuple_GET_ITEM(parts, k);
            if (!PyBytes_Check(b)) {
                PyErr_SetString(PyExc_TypeError, "message parts are bytes");
                goto done;
            }
            msgs[i].part[k] = (const uint8_t *)PyBytes_AS_STRING(b);
            msgs[i].len[k] = (size_t)PyBytes_GET_SIZE(b);
        }
        PyObject *out = PyBytes_FromStringAndSize(NULL, AY_KEY);
        if (out == NULL)
            goto done;
        PyList_SET_ITEM(outs, i, out);
        msgs[i].out = (uint8_t *)PyBytes_AS_STRING(out);
    }
    /* The tuples, hence the bytes, are held by seq until the hashes are made. */
    sha1x16(msgs, (size_t)n);
    result = outs;
    outs = NULL;
done:
    Py_XDECREF(outs);
    PyMem_Free(msgs);
    Py_DECREF(seq);
    return result;
}

static PyMethodDef module_methods[] = {
    {"sha1_lanes", sha1_lanes, METH_O,
     "sha1_lanes(messages) -> [SHA-1 of b''.join(parts) for parts in messages], in lanes."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastpath",
    "The tunnel server's forwarding fast path (see _fastpath.c).", -1, module_methods, NULL, NULL,
    NULL, NULL,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
    if (PyType_Ready(&EngineType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0 ||
        PyModule_AddIntConstant(m, "KIND_PUNT", KIND_PUNT) < 0 ||
        PyModule_AddIntConstant(m, "KIND_V6V4", KIND_V6V4) < 0 ||
        PyModule_AddIntConstant(m, "KIND_V6UDPV4", KIND_V6UDPV4) < 0 ||
        PyModule_AddIntConstant(m, "KIND_AYIYA", KIND_AYIYA) < 0 ||
        PyModule_AddIntConstant(m, "PUNT_AYIYA", PUNT_AYIYA) < 0 ||
        PyModule_AddIntConstant(m, "REPLAY_SLOTS", REPLAY_SLOTS) < 0 ||
        PyModule_AddIntConstant(m, "SHA1_LANES", sha1x16_usable()) < 0 ||
        PyModule_AddIntConstant(m, "X16_MIN", X16_MIN) < 0 ||
        PyModule_AddIntConstant(m, "PUNT_TUN", PUNT_TUN) < 0 ||
        PyModule_AddIntConstant(m, "PUNT_PROTO41", PUNT_PROTO41) < 0 ||
        PyModule_AddIntConstant(m, "PUNT_UDP", PUNT_UDP) < 0 ||
        PyModule_AddIntConstant(m, "BATCH", BATCH) < 0 ||
        PyModule_AddIntConstant(m, "MAX_PREFIXES", MAX_PREFIXES) < 0 ||
        PyModule_AddIntConstant(m, "PUNT_CAP", PUNT_CAP) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
