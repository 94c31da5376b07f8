/*
 * opmob_srtp.c - SRTP / SRTCP with AES_CM_128_HMAC_SHA1_80 (RFC 3711) or AEAD_AES_128_GCM
 * (RFC 7714) on OpenSSL's libcrypto, byte-for-byte and decision-for-decision the twin of
 * firmware/opmob/srtp.py (which mirrors libsrtp 2): an "any SSRC" session, streams made per SSRC
 * and direction on the first good packet and never evicted, libsrtp's ROC estimate, a replay
 * window on both sides, SRTCP always encrypted (E = 0 refused), the tag checked before any state
 * moves. The profile changes only the crypto and the tag's size and place; streams, index
 * estimate, replay windows and the order of the checks are the same for both.
 *
 * Crypto, all of it libcrypto's primitives; nothing here is a home-made cipher or hash:
 * - AES-128-CTR (RFC 3711 4.1.1) as AES-128-ECB, through one EVP_CIPHER_CTX per key (keyed once,
 *   never re-initialised), over the packet's counter blocks built here, XORed onto the payload.
 *   A payload is at most 68 blocks, so the block counter only ever moves the IV's low 16 bits,
 *   which start at zero: the same keystream as EVP's CTR mode. Re-IVing a CTR context per
 *   packet instead goes through OpenSSL 3's provider init path (parameter lookups) and cost
 *   about 3x the whole ECB call.
 * - HMAC-SHA1 (RFC 2104) on OpenSSL's SHA-1 (SHA1_Update/SHA1_Final): the SHA-1 states after
 *   the key XOR ipad and after the key XOR opad are computed once per key (hmac_key) and copied
 *   by value per packet, so a tag costs exactly the SHA-1 compressions of the message and of
 *   the inner digest. This is what libsrtp, OpenSSL's own HMAC and every other HMAC do inside;
 *   we do it by hand because OpenSSL 3.0's EVP_MAC_init re-initialisation duplicates provider
 *   digest contexts (an allocation and parameter lookups) per packet, half the time of the
 *   whole tag. tests/host/test_cext_srtp.py checks opmob_hmac_sha1 against the RFC 2202
 *   vectors and against OpenSSL's HMAC(). The SHA1_* calls are deprecated in OpenSSL 3 (not
 *   removed): the deprecation warnings are silenced for this file only, below.
 * - AEAD_AES_128_GCM: EVP_aes_128_gcm, one EVP_CIPHER_CTX per kind (SRTP, SRTCP) keyed once
 *   when the session is made; per packet only the 12-byte IV is set (EVP_CipherInit_ex with no
 *   cipher and no key), the AAD, payload and tag run through the same context. OpenSSL 3.0's
 *   GCM provider allocates nothing on that path (counted with CRYPTO_set_mem_functions over
 *   5,000 rounds of protect, forged and genuine unprotect, SRTCP both ways: none). Session keys
 *   come from the same AES-CM KDF with the 12-byte master salt zero-padded to 14, the session
 *   salt being the first 12 bytes of label 2 (5 for SRTCP): what libsrtp does, checked against
 *   it in tests/host/test_cext_srtp_gcm.py. There is no auth key; labels 1 and 4 go unused.
 * - AES-128-ECB once per session for the key derivation; CRYPTO_memcmp for tags.
 *
 * Memory: everything (stream table, replay bitmaps, contexts) is allocated by opmob_srtp_new;
 * the packet calls allocate nothing, here or in libcrypto (an ECB update on a keyed context,
 * SHA-1 on a stack SHA_CTX and re-IVing a keyed GCM context never allocate). Key-derived state
 * (the cipher contexts, the keyed SHA-1 states, the salt) lives in the session and is cleansed
 * or freed with it; per packet, the stack keeps only the packet's keystream and digests, which
 * reveal nothing beyond that packet.
 */
#define OPENSSL_SUPPRESS_DEPRECATED /* SHA1_Init/Update/Final: see the header comment */

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "opmob_internal.h"

#define MASTER_KEY_LEN 16u
#define MASTER_SALT_LEN 14u
#define SESSION_KEY_LEN 16u
#define SESSION_SALT_LEN 14u
#define AUTH_KEY_LEN 20u
#define TAG_LEN 10u
#define GCM_MASTER_SALT_LEN 12u
#define GCM_SALT_LEN 12u
#define GCM_IV_LEN 12u
#define GCM_TAG_LEN 16u
#define SHA1_LEN 20u
#define MAX_ROC 0xFFFFFFFFu
#define MAX_SRTCP_INDEX 0x7FFFFFFFu
#define E_FLAG 0x80000000u
#define MIN_WINDOW 64u
#define MAX_WINDOW 32767u
/* Replay bitmaps of all streams together may take at most this much memory. */
#define MAX_BITMAP_BYTES (64u * 1024u * 1024u)

typedef struct {
    uint32_t ssrc;
    uint32_t roc;        /* RTP: ROC and sequence number of the highest index */
    uint32_t seq;
    uint32_t rtcp_index; /* SRTCP: highest (inbound) or last sent (outbound) index */
    uint64_t *bits;      /* replay bitmaps, `words` each: bit k = highest index - k seen */
    uint64_t *rtcp_bits;
} stream_t;

typedef struct {
    uint32_t max;        /* entries */
    uint32_t count;
    uint32_t mask;       /* hash slots - 1 (slots a power of two >= 2 * max) */
    uint32_t *slots;     /* 0: empty, else entry index + 1 */
    stream_t *entries;
    uint32_t *free_list; /* free entry indices; the last one is used next */
    uint32_t nfree;
    uint64_t *bitmaps;
} table_t;

/* A keyed HMAC-SHA1: the SHA-1 states after one block of key XOR ipad, and of key XOR opad. */
typedef struct {
    SHA_CTX inner;
    SHA_CTX outer;
} hmac_key_t;

typedef struct {
    EVP_CIPHER_CTX *ecb; /* AES_CM: the CTR keystream */
    EVP_CIPHER_CTX *gcm; /* GCM: keyed once, re-IVed per packet */
    hmac_key_t mac;      /* AES_CM only */
    uint8_t salt[SESSION_SALT_LEN]; /* GCM: the first 12 bytes */
} kind_t;

struct opmob_srtp {
    kind_t rtp;
    kind_t rtcp;
    int gcm;
    uint32_t tag_len;     /* TAG_LEN or GCM_TAG_LEN */
    uint32_t trailer_len; /* SRTCP: tag_len + 4 (E flag and index) */
    uint32_t window;
    uint32_t words;
    table_t tx;
    table_t rx;
};

/* ---- replay bitmaps ------------------------------------------------------------------------ */

static int bit_test(const uint64_t *bits, uint32_t k) { return (int)((bits[k >> 6] >> (k & 63u)) & 1u); }

static void bit_set(uint64_t *bits, uint32_t k) { bits[k >> 6] |= (uint64_t)1 << (k & 63u); }

/* _check_window: d = candidate index - highest index. */
static int32_t window_check(const opmob_srtp *s, const uint64_t *bits, int64_t d)
{
    if (d <= 0) {
        if (d <= -(int64_t)s->window)
            return OPMOB_E_REPLAYED;
        if (bit_test(bits, (uint32_t)-d))
            return OPMOB_E_REPLAYED;
    }
    return OPMOB_OK;
}

/* _add_to_window: bits = ((bits << d) | 1) masked to the window for d > 0, else set bit -d. */
static void window_add(const opmob_srtp *s, uint64_t *bits, int64_t d)
{
    uint32_t words = s->words;
    if (d <= 0) {
        bit_set(bits, (uint32_t)-d);
        return;
    }
    if (d >= (int64_t)s->window) {
        memset(bits, 0, (size_t)words * sizeof(uint64_t));
    } else {
        uint32_t ws = (uint32_t)d >> 6, bs = (uint32_t)d & 63u, w;
        for (w = words; w-- > 0;) {
            uint64_t v = 0;
            if (w >= ws) {
                v = bits[w - ws] << bs;
                if (bs != 0 && w >= ws + 1)
                    v |= bits[w - ws - 1] >> (64u - bs);
            }
            bits[w] = v;
        }
        if (s->window & 63u)
            bits[words - 1] &= ((uint64_t)1 << (s->window & 63u)) - 1u;
    }
    bits[0] |= 1u;
}

/* ---- stream table: open addressing, linear probing, backward-shift deletion --------------- */

static uint32_t hash_ssrc(uint32_t ssrc) { return (uint32_t)(ssrc * 2654435761u) ^ (ssrc >> 16); }

static int table_init(table_t *t, uint32_t max, uint32_t words)
{
    uint32_t nslots = 1, i;
    while (nslots < 2u * max)
        nslots <<= 1;
    memset(t, 0, sizeof(*t));
    t->max = max;
    t->mask = nslots - 1u;
    t->slots = calloc(nslots, sizeof(uint32_t));
    t->entries = calloc(max, sizeof(stream_t));
    t->free_list = calloc(max, sizeof(uint32_t));
    t->bitmaps = calloc((size_t)max * 2u * words, sizeof(uint64_t));
    if (t->slots == NULL || t->entries == NULL || t->free_list == NULL || t->bitmaps == NULL)
        return OPMOB_E_NOMEM;
    for (i = 0; i < max; i++) {
        t->entries[i].bits = t->bitmaps + (size_t)i * 2u * words;
        t->entries[i].rtcp_bits = t->entries[i].bits + words;
        t->free_list[i] = max - 1u - i; /* entry 0 is used first */
    }
    t->nfree = max;
    return OPMOB_OK;
}

static void table_free(table_t *t)
{
    free(t->slots);
    free(t->entries);
    free(t->free_list);
    free(t->bitmaps);
}

/* The slot holding ssrc, or the empty slot where it would go. */
static uint32_t table_probe(const table_t *t, uint32_t ssrc)
{
    uint32_t i = hash_ssrc(ssrc) & t->mask;
    while (t->slots[i] != 0 && t->entries[t->slots[i] - 1u].ssrc != ssrc)
        i = (i + 1u) & t->mask;
    return i;
}

static stream_t *table_find(const table_t *t, uint32_t ssrc)
{
    uint32_t i = table_probe(t, ssrc);
    return t->slots[i] != 0 ? &t->entries[t->slots[i] - 1u] : NULL;
}

/* _stream: the stream for ssrc, or a zeroed fresh one (*is_new = 1) that table_commit enters
   once the packet has passed every check; UNKNOWN_STREAM when the table is full. */
static int32_t table_get(const opmob_srtp *s, table_t *t, uint32_t ssrc, stream_t **st, int *is_new)
{
    stream_t *e = table_find(t, ssrc);
    if (e != NULL) {
        *st = e;
        *is_new = 0;
        return OPMOB_OK;
    }
    if (t->count >= t->max || t->nfree == 0)
        return OPMOB_E_UNKNOWN_STREAM;
    e = &t->entries[t->free_list[t->nfree - 1u]];
    e->ssrc = ssrc;
    e->roc = 0;
    e->seq = 0;
    e->rtcp_index = 0;
    memset(e->bits, 0, (size_t)s->words * 2u * sizeof(uint64_t));
    *st = e;
    *is_new = 1;
    return OPMOB_OK;
}

static void table_commit(table_t *t, stream_t *e, int is_new)
{
    if (!is_new)
        return;
    t->slots[table_probe(t, e->ssrc)] = t->free_list[t->nfree - 1u] + 1u;
    t->nfree--;
    t->count++;
}

static void table_remove(table_t *t, uint32_t ssrc)
{
    uint32_t j = table_probe(t, ssrc), k;
    if (t->slots[j] == 0)
        return;
    t->free_list[t->nfree++] = t->slots[j] - 1u;
    t->count--;
    for (;;) {
        t->slots[j] = 0;
        k = j;
        for (;;) {
            uint32_t home;
            k = (k + 1u) & t->mask;
            if (t->slots[k] == 0)
                return;
            home = hash_ssrc(t->entries[t->slots[k] - 1u].ssrc) & t->mask;
            /* Leave the entry at k if its home lies cyclically in (j, k]. */
            if (j <= k ? (j < home && home <= k) : (j < home || home <= k))
                continue;
            break;
        }
        t->slots[j] = t->slots[k];
        j = k;
    }
}

/* ---- crypto ---------------------------------------------------------------------------- */

static int32_t aes_ecb_blocks(const uint8_t key[MASTER_KEY_LEN], const uint8_t *in, uint8_t *out,
                              size_t n)
{
    int32_t rc = OPMOB_E_CRYPTO;
    int outl = 0;
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL)
        return OPMOB_E_NOMEM;
    if (EVP_EncryptInit_ex(ctx, EVP_aes_128_ecb(), NULL, key, NULL) == 1 &&
        EVP_CIPHER_CTX_set_padding(ctx, 0) == 1 && EVP_EncryptUpdate(ctx, out, &outl, in, (int)n) == 1 &&
        (size_t)outl == n)
        rc = OPMOB_OK;
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

int32_t opmob_srtp_kdf(const uint8_t *master_key, size_t key_len, const uint8_t *master_salt,
                       size_t salt_len, uint32_t label, uint8_t *out, size_t out_len)
{
    /* key_id = label || r with r = 0: the label lands on byte 7 of the 14-byte salt. At most 32
       bytes are ever derived (an auth key is 20), two blocks. A GCM master salt is 12 bytes;
       libsrtp runs the same 14-byte PRF on it with two zero bytes after it. */
    uint8_t iv[2 * 16];
    uint8_t ks[2 * 16];
    size_t j;
    int32_t rc;
    if (master_key == NULL || master_salt == NULL || out == NULL || key_len != MASTER_KEY_LEN ||
        (salt_len != MASTER_SALT_LEN && salt_len != GCM_MASTER_SALT_LEN) || label > 255u ||
        out_len > sizeof(ks))
        return OPMOB_E_ARG;
    for (j = 0; j < 2; j++) {
        memset(iv + 16 * j, 0, 16);
        memcpy(iv + 16 * j, master_salt, salt_len);
        iv[16 * j + 7] ^= (uint8_t)label;
        iv[16 * j + 14] = 0;
        iv[16 * j + 15] = (uint8_t)j;
    }
    rc = aes_ecb_blocks(master_key, iv, ks, sizeof(ks));
    if (rc == OPMOB_OK)
        memcpy(out, ks, out_len);
    OPENSSL_cleanse(ks, sizeof(ks));
    return rc;
}

/* RFC 2104 set-up: a key longer than a block is hashed first; the key, zero-padded to a block,
   XOR ipad resp. opad, run through SHA-1 once. The SHA1_* calls return 1 on success. */
static int32_t hmac_key(hmac_key_t *h, const uint8_t *key, size_t len)
{
    uint8_t k[SHA_CBLOCK], pad[SHA_CBLOCK];
    size_t i;
    int ok;
    memset(k, 0, sizeof(k));
    if (len > SHA_CBLOCK) {
        SHA_CTX c;
        ok = SHA1_Init(&c) == 1 && SHA1_Update(&c, key, len) == 1 && SHA1_Final(k, &c) == 1;
        OPENSSL_cleanse(&c, sizeof(c));
        if (!ok) {
            OPENSSL_cleanse(k, sizeof(k));
            return OPMOB_E_CRYPTO;
        }
    } else if (len != 0) {
        memcpy(k, key, len);
    }
    for (i = 0; i < SHA_CBLOCK; i++)
        pad[i] = (uint8_t)(k[i] ^ 0x36u);
    ok = SHA1_Init(&h->inner) == 1 && SHA1_Update(&h->inner, pad, sizeof(pad)) == 1;
    for (i = 0; i < SHA_CBLOCK; i++)
        pad[i] = (uint8_t)(k[i] ^ 0x5Cu);
    ok = ok && SHA1_Init(&h->outer) == 1 && SHA1_Update(&h->outer, pad, sizeof(pad)) == 1;
    OPENSSL_cleanse(k, sizeof(k));
    OPENSSL_cleanse(pad, sizeof(pad));
    return ok ? OPMOB_OK : OPMOB_E_CRYPTO;
}

/* HMAC-SHA1 over a || b (b may be empty), the full 20 bytes into mac: the keyed states copied
   by value (no allocation), then H(inner state, a || b) and H(outer state, inner digest). */
static int32_t hmac2(const hmac_key_t *h, const uint8_t *a, size_t alen, const uint8_t *b, size_t blen,
                     uint8_t mac[SHA1_LEN])
{
    SHA_CTX c = h->inner;
    uint8_t inner[SHA1_LEN];
    if (SHA1_Update(&c, a, alen) != 1 || (blen != 0 && SHA1_Update(&c, b, blen) != 1) ||
        SHA1_Final(inner, &c) != 1)
        return OPMOB_E_CRYPTO;
    c = h->outer;
    if (SHA1_Update(&c, inner, sizeof(inner)) != 1 || SHA1_Final(mac, &c) != 1)
        return OPMOB_E_CRYPTO;
    return OPMOB_OK;
}

int32_t opmob_hmac_sha1(const uint8_t *key, size_t key_len, const uint8_t *msg, size_t msg_len,
                        uint8_t *out, size_t out_cap)
{
    hmac_key_t h;
    int32_t rc;
    if ((key == NULL && key_len != 0) || (msg == NULL && msg_len != 0) || out == NULL ||
        out_cap < SHA1_LEN)
        return OPMOB_E_ARG;
    rc = hmac_key(&h, key, key_len);
    if (rc == OPMOB_OK)
        rc = hmac2(&h, msg_len != 0 ? msg : (const uint8_t *)"", msg_len, NULL, 0, out);
    OPENSSL_cleanse(&h, sizeof(h));
    return rc == OPMOB_OK ? (int32_t)SHA1_LEN : rc;
}

/* GCM: the session key and the 12-byte session salt; the context keyed here for good. */
static int32_t kind_init_gcm(kind_t *k, const uint8_t *mk, const uint8_t *ms, uint32_t label_enc,
                             uint32_t label_salt)
{
    uint8_t key[SESSION_KEY_LEN];
    int32_t rc;
    rc = opmob_srtp_kdf(mk, MASTER_KEY_LEN, ms, GCM_MASTER_SALT_LEN, label_enc, key, sizeof(key));
    if (rc == OPMOB_OK)
        rc = opmob_srtp_kdf(mk, MASTER_KEY_LEN, ms, GCM_MASTER_SALT_LEN, label_salt, k->salt,
                            GCM_SALT_LEN);
    if (rc == OPMOB_OK) {
        k->gcm = EVP_CIPHER_CTX_new();
        rc = k->gcm == NULL ? OPMOB_E_NOMEM : OPMOB_E_CRYPTO;
        if (k->gcm != NULL && EVP_EncryptInit_ex(k->gcm, EVP_aes_128_gcm(), NULL, key, NULL) == 1 &&
            EVP_CIPHER_CTX_get_iv_length(k->gcm) == (int)GCM_IV_LEN)
            rc = OPMOB_OK;
    }
    OPENSSL_cleanse(key, sizeof(key));
    return rc;
}

static int32_t kind_init(kind_t *k, const uint8_t *mk, const uint8_t *ms, uint32_t label_enc,
                         uint32_t label_auth, uint32_t label_salt)
{
    uint8_t key[SESSION_KEY_LEN];
    uint8_t auth[AUTH_KEY_LEN];
    int32_t rc;
    rc = opmob_srtp_kdf(mk, MASTER_KEY_LEN, ms, MASTER_SALT_LEN, label_enc, key, sizeof(key));
    if (rc == OPMOB_OK)
        rc = opmob_srtp_kdf(mk, MASTER_KEY_LEN, ms, MASTER_SALT_LEN, label_auth, auth, sizeof(auth));
    if (rc == OPMOB_OK)
        rc = opmob_srtp_kdf(mk, MASTER_KEY_LEN, ms, MASTER_SALT_LEN, label_salt, k->salt,
                            sizeof(k->salt));
    if (rc == OPMOB_OK)
        rc = hmac_key(&k->mac, auth, sizeof(auth));
    if (rc == OPMOB_OK) {
        k->ecb = EVP_CIPHER_CTX_new();
        rc = k->ecb == NULL ? OPMOB_E_NOMEM : OPMOB_E_CRYPTO;
        if (k->ecb != NULL && EVP_EncryptInit_ex(k->ecb, EVP_aes_128_ecb(), NULL, key, NULL) == 1 &&
            EVP_CIPHER_CTX_set_padding(k->ecb, 0) == 1)
            rc = OPMOB_OK;
    }
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(auth, sizeof(auth));
    return rc;
}

static void kind_free(kind_t *k)
{
    EVP_CIPHER_CTX_free(k->ecb);
    EVP_CIPHER_CTX_free(k->gcm);
    OPENSSL_cleanse(&k->mac, sizeof(k->mac));
    OPENSSL_cleanse(k->salt, sizeof(k->salt));
}

/* p[0..10) ^= SSRC || the 48-bit index hi * 2^16 + lo, big-endian: the part of the IV that both
   profiles build alike, at a different offset. */
static void xor_ssrc_index(uint8_t *p, uint32_t ssrc, uint32_t hi, uint32_t lo)
{
    p[0] ^= (uint8_t)(ssrc >> 24);
    p[1] ^= (uint8_t)(ssrc >> 16);
    p[2] ^= (uint8_t)(ssrc >> 8);
    p[3] ^= (uint8_t)ssrc;
    p[4] ^= (uint8_t)(hi >> 24);
    p[5] ^= (uint8_t)(hi >> 16);
    p[6] ^= (uint8_t)(hi >> 8);
    p[7] ^= (uint8_t)hi;
    p[8] ^= (uint8_t)(lo >> 8);
    p[9] ^= (uint8_t)lo;
}

/* IV = salt * 2^16 XOR SSRC * 2^64 XOR index * 2^16 for the 48-bit index hi * 2^16 + lo. */
static void make_iv(const kind_t *k, uint32_t ssrc, uint32_t hi, uint32_t lo, uint8_t iv[16])
{
    memcpy(iv, k->salt, SESSION_SALT_LEN);
    iv[14] = 0;
    iv[15] = 0;
    xor_ssrc_index(iv + 4, ssrc, hi, lo);
}

/* RFC 7714 8.1 and 9.1: IV = (00 00 || SSRC || index) XOR the 12-byte salt, the index being
   ROC || SEQ for SRTP and 00 00 || 0 || 31-bit index for SRTCP: both hi * 2^16 + lo in 48 bits. */
static void gcm_iv(const kind_t *k, uint32_t ssrc, uint32_t hi, uint32_t lo, uint8_t iv[GCM_IV_LEN])
{
    memcpy(iv, k->salt, GCM_SALT_LEN);
    xor_ssrc_index(iv + 2, ssrc, hi, lo);
}

/* out[0..n) = AES-GCM of in[0..n) under iv, authenticating aad || aad2 (aad2 may be empty), and
   the 16-byte tag into tag. out == in allowed. */
static int32_t gcm_seal(const kind_t *k, const uint8_t iv[GCM_IV_LEN], const uint8_t *aad,
                        size_t aad_len, const uint8_t *aad2, size_t aad2_len, const uint8_t *in,
                        uint8_t *out, size_t n, uint8_t *tag)
{
    EVP_CIPHER_CTX *c = k->gcm;
    uint8_t t[GCM_TAG_LEN];
    int outl = 0;
    if (EVP_EncryptInit_ex(c, NULL, NULL, NULL, iv) != 1 ||
        EVP_EncryptUpdate(c, NULL, &outl, aad, (int)aad_len) != 1 ||
        (aad2_len != 0 && EVP_EncryptUpdate(c, NULL, &outl, aad2, (int)aad2_len) != 1) ||
        (n != 0 && (EVP_EncryptUpdate(c, out, &outl, in, (int)n) != 1 || (size_t)outl != n)) ||
        EVP_EncryptFinal_ex(c, out + n, &outl) != 1 || outl != 0 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_GET_TAG, (int)GCM_TAG_LEN, t) != 1)
        return OPMOB_E_CRYPTO;
    memcpy(tag, t, GCM_TAG_LEN);
    return OPMOB_OK;
}

/* The inverse of gcm_seal: AUTH_FAILED when the tag does not match, and then out[0..n) is
   zeroed, so no unauthenticated plaintext is left behind. out == in allowed. */
static int32_t gcm_open(const kind_t *k, const uint8_t iv[GCM_IV_LEN], const uint8_t *aad,
                        size_t aad_len, const uint8_t *aad2, size_t aad2_len, const uint8_t *in,
                        uint8_t *out, size_t n, const uint8_t *tag)
{
    EVP_CIPHER_CTX *c = k->gcm;
    uint8_t t[GCM_TAG_LEN];
    int outl = 0, ok;
    memcpy(t, tag, GCM_TAG_LEN); /* SET_TAG takes a non-const pointer */
    if (EVP_DecryptInit_ex(c, NULL, NULL, NULL, iv) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_AEAD_SET_TAG, (int)GCM_TAG_LEN, t) != 1 ||
        EVP_DecryptUpdate(c, NULL, &outl, aad, (int)aad_len) != 1 ||
        (aad2_len != 0 && EVP_DecryptUpdate(c, NULL, &outl, aad2, (int)aad2_len) != 1) ||
        (n != 0 && (EVP_DecryptUpdate(c, out, &outl, in, (int)n) != 1 || (size_t)outl != n)))
        return OPMOB_E_CRYPTO;
    ok = EVP_DecryptFinal_ex(c, out + n, &outl);
    if (ok != 1) {
        memset(out, 0, n);
        return OPMOB_E_AUTH_FAILED;
    }
    return OPMOB_OK;
}

#define CTR_BLOCKS ((OPMOB_SRTP_MAX_PAYLOAD + 15) / 16)

/* out[0..n) = in[0..n) XOR the AES-CTR keystream from iv (out == in allowed). n is at most
   OPMOB_SRTP_MAX_PAYLOAD, so block j's counter is iv with j in its low 16 bits (zero in iv). */
static int32_t ctr_xor(const kind_t *k, const uint8_t iv[16], const uint8_t *in, uint8_t *out, size_t n)
{
    uint8_t ks[CTR_BLOCKS * 16];
    size_t nb = (n + 15u) / 16u, j, i = 0;
    int outl = 0;
    if (n == 0)
        return OPMOB_OK;
    if (nb > CTR_BLOCKS)
        return OPMOB_E_ARG;
    for (j = 0; j < nb; j++) {
        memcpy(ks + 16u * j, iv, 14);
        ks[16u * j + 14u] = (uint8_t)(j >> 8);
        ks[16u * j + 15u] = (uint8_t)j;
    }
    if (EVP_EncryptUpdate(k->ecb, ks, &outl, ks, (int)(16u * nb)) != 1 || (size_t)outl != 16u * nb)
        return OPMOB_E_CRYPTO;
    for (; i + 8u <= n; i += 8u) {
        uint64_t x, y;
        memcpy(&x, in + i, 8);
        memcpy(&y, ks + i, 8);
        x ^= y;
        memcpy(out + i, &x, 8);
    }
    for (; i < n; i++)
        out[i] = (uint8_t)(in[i] ^ ks[i]);
    return OPMOB_OK;
}

/* ---- session ------------------------------------------------------------------------------- */

int32_t opmob_srtp_new_profile(int32_t profile, const uint8_t *master_key, size_t key_len,
                               const uint8_t *master_salt, size_t salt_len, uint32_t replay_window,
                               uint32_t max_streams, opmob_srtp **out)
{
    opmob_srtp *s;
    int32_t rc;
    uint32_t words;
    int gcm = profile == OPMOB_SRTP_AEAD_AES_128_GCM;
    if (out == NULL)
        return OPMOB_E_ARG;
    *out = NULL;
    if ((profile != OPMOB_SRTP_AES_CM_128_HMAC_SHA1_80 && !gcm) || master_key == NULL ||
        master_salt == NULL || key_len != MASTER_KEY_LEN ||
        salt_len != (gcm ? GCM_MASTER_SALT_LEN : MASTER_SALT_LEN) || replay_window < MIN_WINDOW ||
        replay_window > MAX_WINDOW || max_streams < 1u || max_streams > OPMOB_SRTP_MAX_STREAMS)
        return OPMOB_E_ARG;
    words = (replay_window + 63u) / 64u;
    if ((uint64_t)max_streams * 2u * 2u * words * sizeof(uint64_t) > MAX_BITMAP_BYTES)
        return OPMOB_E_ARG;
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return OPMOB_E_NOMEM;
    s->window = replay_window;
    s->words = words;
    s->gcm = gcm;
    s->tag_len = gcm ? GCM_TAG_LEN : TAG_LEN;
    s->trailer_len = s->tag_len + 4u;
    if (gcm) {
        rc = kind_init_gcm(&s->rtp, master_key, master_salt, 0, 2);
        if (rc == OPMOB_OK)
            rc = kind_init_gcm(&s->rtcp, master_key, master_salt, 3, 5);
    } else {
        rc = kind_init(&s->rtp, master_key, master_salt, 0, 1, 2);
        if (rc == OPMOB_OK)
            rc = kind_init(&s->rtcp, master_key, master_salt, 3, 4, 5);
    }
    if (rc == OPMOB_OK)
        rc = table_init(&s->tx, max_streams, words);
    if (rc == OPMOB_OK)
        rc = table_init(&s->rx, max_streams, words);
    if (rc != OPMOB_OK) {
        opmob_srtp_free(s);
        return rc;
    }
    *out = s;
    return OPMOB_OK;
}

int32_t opmob_srtp_new(const uint8_t *master_key, size_t key_len, const uint8_t *master_salt,
                       size_t salt_len, uint32_t replay_window, uint32_t max_streams, opmob_srtp **out)
{
    return opmob_srtp_new_profile(OPMOB_SRTP_AES_CM_128_HMAC_SHA1_80, master_key, key_len, master_salt,
                                  salt_len, replay_window, max_streams, out);
}

void opmob_srtp_free(opmob_srtp *s)
{
    if (s == NULL)
        return;
    kind_free(&s->rtp);
    kind_free(&s->rtcp);
    table_free(&s->tx);
    table_free(&s->rx);
    free(s);
}

/* _estimate: the ROC for sequence number sn and the index difference d, as libsrtp's rdbx. */
static int32_t estimate(const stream_t *st, uint32_t sn, uint32_t *roc, int64_t *d)
{
    int64_t s = sn, hs = st->seq;
    if (st->roc == 0 && hs <= 0x8000) {
        *roc = 0;
        *d = s - hs;
    } else if (hs < 0x8000) {
        if (s - hs > 0x8000) {
            *roc = st->roc - 1u; /* st->roc >= 1 here: roc 0 took the first branch */
            *d = s - hs - 0x10000;
        } else {
            *roc = st->roc;
            *d = s - hs;
        }
    } else if (hs - 0x8000 > s) {
        if (st->roc == MAX_ROC)
            return OPMOB_E_KEY_EXPIRED;
        *roc = st->roc + 1u;
        *d = s - hs + 0x10000;
    } else {
        *roc = st->roc;
        *d = s - hs;
    }
    return OPMOB_OK;
}

static void commit_rtp(const opmob_srtp *s, table_t *t, stream_t *st, int is_new, uint32_t roc,
                       uint32_t seq, int64_t d)
{
    window_add(s, st->bits, d);
    if (d > 0) {
        st->roc = roc;
        st->seq = seq;
    }
    table_commit(t, st, is_new);
}

int32_t opmob_srtp_protect(opmob_srtp *s, const uint8_t *in, size_t n, uint8_t *out, size_t out_cap)
{
    int32_t h, rc;
    size_t hlen, tag_len;
    uint32_t seq, ssrc, roc = 0;
    int64_t d = 0;
    stream_t *st;
    int is_new;
    uint8_t iv[16], mac[SHA1_LEN];
    if (s == NULL || in == NULL || out == NULL)
        return OPMOB_E_ARG;
    tag_len = s->tag_len;
    h = opmob_rtp_header_length(in, n);
    if (h < 0)
        return h;
    hlen = (size_t)h;
    if (n - hlen > OPMOB_SRTP_MAX_PAYLOAD || n + tag_len > OPMOB_MAX_PACKET)
        return OPMOB_E_OVERSIZED;
    if (out_cap < n + tag_len)
        return OPMOB_E_ARG;
    seq = opmob_be16(in + 2);
    ssrc = opmob_be32(in + 8);
    rc = table_get(s, &s->tx, ssrc, &st, &is_new);
    if (rc == OPMOB_OK)
        rc = estimate(st, seq, &roc, &d);
    if (rc == OPMOB_OK)
        rc = window_check(s, st->bits, d);
    if (rc != OPMOB_OK)
        return rc;
    memcpy(out, in, hlen);
    if (s->gcm) {
        /* AAD: the whole header, CSRCs and extension included. */
        gcm_iv(&s->rtp, ssrc, roc, seq, iv);
        rc = gcm_seal(&s->rtp, iv, in, hlen, NULL, 0, in + hlen, out + hlen, n - hlen, out + n);
        if (rc != OPMOB_OK)
            return rc;
        commit_rtp(s, &s->tx, st, is_new, roc, seq, d);
        return (int32_t)(n + tag_len);
    }
    make_iv(&s->rtp, ssrc, roc, seq, iv);
    rc = ctr_xor(&s->rtp, iv, in + hlen, out + hlen, n - hlen);
    /* The tag covers packet || ROC: the ROC goes where the tag will, for one MAC update. */
    opmob_put_be32(out + n, roc);
    if (rc == OPMOB_OK)
        rc = hmac2(&s->rtp.mac, out, n + 4u, NULL, 0, mac);
    if (rc != OPMOB_OK)
        return rc;
    memcpy(out + n, mac, TAG_LEN);
    commit_rtp(s, &s->tx, st, is_new, roc, seq, d);
    return (int32_t)(n + TAG_LEN);
}

int32_t opmob_srtp_unprotect(opmob_srtp *s, const uint8_t *in, size_t n, uint8_t *out, size_t out_cap)
{
    int32_t h, rc;
    size_t hlen, end;
    uint32_t seq, ssrc, roc = 0;
    int64_t d = 0;
    stream_t *st;
    int is_new;
    uint8_t iv[16], roc_be[4], mac[SHA1_LEN];
    if (s == NULL || in == NULL || out == NULL)
        return OPMOB_E_ARG;
    if (n > OPMOB_MAX_PACKET)
        return OPMOB_E_OVERSIZED;
    h = opmob_rtp_header_length(in, n);
    if (h < 0)
        return h;
    hlen = (size_t)h;
    if (n < hlen + s->tag_len)
        return OPMOB_E_TRUNCATED;
    end = n - s->tag_len;
    if (end - hlen > OPMOB_SRTP_MAX_PAYLOAD)
        return OPMOB_E_OVERSIZED;
    if (out_cap < end)
        return OPMOB_E_ARG;
    seq = opmob_be16(in + 2);
    ssrc = opmob_be32(in + 8);
    rc = table_get(s, &s->rx, ssrc, &st, &is_new);
    if (rc == OPMOB_OK)
        rc = estimate(st, seq, &roc, &d);
    if (rc == OPMOB_OK)
        rc = window_check(s, st->bits, d);
    if (rc != OPMOB_OK)
        return rc;
    if (s->gcm) {
        memcpy(out, in, hlen);
        gcm_iv(&s->rtp, ssrc, roc, seq, iv);
        rc = gcm_open(&s->rtp, iv, in, hlen, NULL, 0, in + hlen, out + hlen, end - hlen, in + end);
        if (rc != OPMOB_OK)
            return rc;
        commit_rtp(s, &s->rx, st, is_new, roc, seq, d);
        return (int32_t)end;
    }
    if (out_cap >= end + 4u) {
        /* packet || ROC laid out in out for one MAC update, then decrypted there in place. */
        memcpy(out, in, end);
        opmob_put_be32(out + end, roc);
        rc = hmac2(&s->rtp.mac, out, end + 4u, NULL, 0, mac);
    } else {
        opmob_put_be32(roc_be, roc);
        rc = hmac2(&s->rtp.mac, in, end, roc_be, sizeof(roc_be), mac);
        if (rc == OPMOB_OK)
            memcpy(out, in, end);
    }
    if (rc != OPMOB_OK)
        return rc;
    if (CRYPTO_memcmp(mac, in + end, TAG_LEN) != 0)
        return OPMOB_E_AUTH_FAILED;
    make_iv(&s->rtp, ssrc, roc, seq, iv);
    rc = ctr_xor(&s->rtp, iv, out + hlen, out + hlen, end - hlen);
    if (rc != OPMOB_OK)
        return rc;
    commit_rtp(s, &s->rx, st, is_new, roc, seq, d);
    return (int32_t)end;
}

int32_t opmob_srtp_protect_rtcp(opmob_srtp *s, const uint8_t *in, size_t n, uint8_t *out,
                                size_t out_cap)
{
    int32_t rc;
    uint32_t ssrc, index;
    stream_t *st;
    int is_new;
    uint8_t iv[16], mac[SHA1_LEN];
    if (s == NULL || in == NULL || out == NULL)
        return OPMOB_E_ARG;
    if (n < OPMOB_RTCP_HEADER_LEN)
        return OPMOB_E_TRUNCATED;
    if ((in[0] >> 6) != 2)
        return OPMOB_E_BAD_VERSION;
    if (n - OPMOB_RTCP_HEADER_LEN > OPMOB_SRTP_MAX_PAYLOAD || n + s->trailer_len > OPMOB_MAX_PACKET)
        return OPMOB_E_OVERSIZED;
    if (out_cap < n + s->trailer_len)
        return OPMOB_E_ARG;
    ssrc = opmob_be32(in + 4);
    rc = table_get(s, &s->tx, ssrc, &st, &is_new);
    if (rc != OPMOB_OK)
        return rc;
    if (st->rtcp_index >= MAX_SRTCP_INDEX)
        return OPMOB_E_KEY_EXPIRED;
    index = st->rtcp_index + 1u;
    memcpy(out, in, OPMOB_RTCP_HEADER_LEN);
    if (s->gcm) {
        /* header | ciphertext | tag | E + index; AAD: header || E + index. */
        uint8_t *word = out + n + GCM_TAG_LEN;
        opmob_put_be32(word, E_FLAG | index);
        gcm_iv(&s->rtcp, ssrc, index >> 16, index & 0xFFFFu, iv);
        rc = gcm_seal(&s->rtcp, iv, in, OPMOB_RTCP_HEADER_LEN, word, 4u, in + OPMOB_RTCP_HEADER_LEN,
                      out + OPMOB_RTCP_HEADER_LEN, n - OPMOB_RTCP_HEADER_LEN, out + n);
        if (rc != OPMOB_OK)
            return rc;
        st->rtcp_index = index;
        table_commit(&s->tx, st, is_new);
        return (int32_t)(n + s->trailer_len);
    }
    make_iv(&s->rtcp, ssrc, index >> 16, index & 0xFFFFu, iv);
    rc = ctr_xor(&s->rtcp, iv, in + OPMOB_RTCP_HEADER_LEN, out + OPMOB_RTCP_HEADER_LEN,
                 n - OPMOB_RTCP_HEADER_LEN);
    opmob_put_be32(out + n, E_FLAG | index);
    if (rc == OPMOB_OK)
        rc = hmac2(&s->rtcp.mac, out, n + 4u, NULL, 0, mac);
    if (rc != OPMOB_OK)
        return rc;
    memcpy(out + n + 4u, mac, TAG_LEN);
    st->rtcp_index = index;
    table_commit(&s->tx, st, is_new);
    return (int32_t)(n + OPMOB_SRTCP_TRAILER_LEN);
}

int32_t opmob_srtp_unprotect_rtcp(opmob_srtp *s, const uint8_t *in, size_t n, uint8_t *out,
                                  size_t out_cap)
{
    int32_t rc;
    size_t end;
    uint32_t word, index, ssrc;
    int64_t d;
    stream_t *st;
    int is_new;
    uint8_t iv[16], mac[SHA1_LEN];
    if (s == NULL || in == NULL || out == NULL)
        return OPMOB_E_ARG;
    if (n > OPMOB_MAX_PACKET)
        return OPMOB_E_OVERSIZED;
    if (n < OPMOB_RTCP_HEADER_LEN + s->trailer_len)
        return OPMOB_E_TRUNCATED;
    if ((in[0] >> 6) != 2)
        return OPMOB_E_BAD_VERSION;
    end = n - s->trailer_len;
    if (end - OPMOB_RTCP_HEADER_LEN > OPMOB_SRTP_MAX_PAYLOAD)
        return OPMOB_E_OVERSIZED;
    if (out_cap < end)
        return OPMOB_E_ARG;
    /* AES_CM: E + index, then the tag; GCM: the tag, then E + index. */
    word = opmob_be32(s->gcm ? in + n - 4u : in + end);
    if (!(word & E_FLAG))
        return OPMOB_E_BAD_VALUE;
    index = word & MAX_SRTCP_INDEX;
    ssrc = opmob_be32(in + 4);
    rc = table_get(s, &s->rx, ssrc, &st, &is_new);
    if (rc != OPMOB_OK)
        return rc;
    d = (int64_t)index - (int64_t)st->rtcp_index;
    rc = window_check(s, st->rtcp_bits, d);
    if (rc != OPMOB_OK)
        return rc;
    if (s->gcm) {
        memcpy(out, in, OPMOB_RTCP_HEADER_LEN);
        gcm_iv(&s->rtcp, ssrc, index >> 16, index & 0xFFFFu, iv);
        rc = gcm_open(&s->rtcp, iv, in, OPMOB_RTCP_HEADER_LEN, in + n - 4u, 4u,
                      in + OPMOB_RTCP_HEADER_LEN, out + OPMOB_RTCP_HEADER_LEN,
                      end - OPMOB_RTCP_HEADER_LEN, in + end);
    } else {
        rc = hmac2(&s->rtcp.mac, in, end + 4u, NULL, 0, mac);
        if (rc != OPMOB_OK)
            return rc;
        if (CRYPTO_memcmp(mac, in + end + 4u, TAG_LEN) != 0)
            return OPMOB_E_AUTH_FAILED;
        memcpy(out, in, OPMOB_RTCP_HEADER_LEN);
        make_iv(&s->rtcp, ssrc, index >> 16, index & 0xFFFFu, iv);
        rc = ctr_xor(&s->rtcp, iv, in + OPMOB_RTCP_HEADER_LEN, out + OPMOB_RTCP_HEADER_LEN,
                     end - OPMOB_RTCP_HEADER_LEN);
    }
    if (rc != OPMOB_OK)
        return rc;
    window_add(s, st->rtcp_bits, d);
    if (d > 0)
        st->rtcp_index = index;
    table_commit(&s->rx, st, is_new);
    return (int32_t)end;
}

int32_t opmob_srtp_batch(int32_t op, opmob_srtp *const *objs, size_t nobj, const uint8_t *in,
                         size_t in_size, const uint32_t *in_len, size_t n, uint8_t *out,
                         size_t out_size, uint32_t *out_len, int32_t *status)
{
    size_t i, in_pos = 0, out_pos = 0;
    int32_t ok = 0;
    int32_t (*fn)(opmob_srtp *, const uint8_t *, size_t, uint8_t *, size_t);
    switch (op) {
    case OPMOB_OP_PROTECT:
        fn = opmob_srtp_protect;
        break;
    case OPMOB_OP_UNPROTECT:
        fn = opmob_srtp_unprotect;
        break;
    case OPMOB_OP_PROTECT_RTCP:
        fn = opmob_srtp_protect_rtcp;
        break;
    case OPMOB_OP_UNPROTECT_RTCP:
        fn = opmob_srtp_unprotect_rtcp;
        break;
    default:
        return OPMOB_E_ARG;
    }
    if (opmob_batch_check(nobj, objs, in, in_size, in_len, n, out, out_len, status) != OPMOB_OK)
        return OPMOB_E_ARG;
    for (i = 0; i < n; i++) {
        int32_t r = fn(objs[nobj == 1 ? 0 : i], in + in_pos, in_len[i], out + out_pos, out_size - out_pos);
        in_pos += in_len[i];
        ok += opmob_batch_item(r, i, &out_pos, out_len, status);
    }
    return ok;
}

uint32_t opmob_srtp_stream_count(const opmob_srtp *s, int32_t outbound)
{
    if (s == NULL)
        return 0;
    return outbound ? s->tx.count : s->rx.count;
}

uint32_t opmob_srtp_window_words(const opmob_srtp *s) { return s == NULL ? 0 : s->words; }

int32_t opmob_srtp_stream_state(const opmob_srtp *s, uint32_t ssrc, int32_t outbound, uint32_t *roc,
                                uint32_t *seq, uint32_t *rtcp_index, uint64_t *bits,
                                uint64_t *rtcp_bits, size_t words)
{
    const stream_t *st;
    if (s == NULL || roc == NULL || seq == NULL || rtcp_index == NULL || bits == NULL ||
        rtcp_bits == NULL || words < s->words)
        return OPMOB_E_ARG;
    st = table_find(outbound ? &s->tx : &s->rx, ssrc);
    if (st == NULL)
        return 0;
    *roc = st->roc;
    *seq = st->seq;
    *rtcp_index = st->rtcp_index;
    memcpy(bits, st->bits, (size_t)s->words * sizeof(uint64_t));
    memcpy(rtcp_bits, st->rtcp_bits, (size_t)s->words * sizeof(uint64_t));
    return 1;
}

void opmob_srtp_remove_stream(opmob_srtp *s, uint32_t ssrc)
{
    if (s == NULL)
        return;
    table_remove(&s->tx, ssrc);
    table_remove(&s->rx, ssrc);
}
