/*
 * noalloc.c - checks opmob_c.h's promise "nothing allocates after set-up": the per-packet and
 * per-frame calls allocate nothing, in our code, in libcrypto or in libcodec2.
 *
 * Sessions, codecs and transcoder slots are made first, with the allocator unwatched. Then, for
 * `rounds` rounds (argv[1], default 3000), every per-packet and per-frame entry point runs with
 * the counter (alloc_count.c) armed around just that call, each operation in its own counter
 * slot, so a finding names the operation and the call stack of its first allocation (stderr).
 * Each result is checked too (lengths, AUTH_FAILED, REPLAYED, pipeline outputs), so a count of 0
 * cannot come from calls that fail early. SRTP sequence numbers start near 65535 so the ROC
 * rolls over during the run.
 *
 * OPMOB_NOALLOC_SELFCHECK=1: proves the counter sees what it must: one malloc of our own inside
 * the first armed srtp_protect/aes_cm call (that slot must read exactly 1), and probes that
 * allocate inside libcrypto (EVP_CIPHER_CTX_new) and libcodec2 (codec2_create), which must read
 * at least 1 each.
 *
 * Output: one JSON line on stdout, {"selfcheck", "rounds", "allocs", "frees", "ops": {name:
 * {"calls", "allocs", "frees"}}}. Exit 0 when nothing was allocated or freed while armed, 1 when
 * something was, 2 when a call gave a wrong result or set-up failed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <codec2/codec2.h>
#include <openssl/evp.h>

#include "alloc_count.h"
#include "opmob_c.h"

#define OPS(X)                                                             \
    X(SRTP_PROTECT_AES, "srtp_protect/aes_cm")                             \
    X(SRTP_UNPROTECT_AES, "srtp_unprotect/aes_cm")                         \
    X(SRTP_UNPROTECT_FORGED_AES, "srtp_unprotect_forged/aes_cm")           \
    X(SRTP_UNPROTECT_REPLAY_AES, "srtp_unprotect_replay/aes_cm")           \
    X(SRTP_PROTECT_RTCP_AES, "srtp_protect_rtcp/aes_cm")                   \
    X(SRTP_UNPROTECT_RTCP_AES, "srtp_unprotect_rtcp/aes_cm")               \
    X(SRTP_UNPROTECT_RTCP_FORGED_AES, "srtp_unprotect_rtcp_forged/aes_cm") \
    X(SRTP_UNPROTECT_RTCP_REPLAY_AES, "srtp_unprotect_rtcp_replay/aes_cm") \
    X(SRTP_PROTECT_GCM, "srtp_protect/gcm")                                \
    X(SRTP_UNPROTECT_GCM, "srtp_unprotect/gcm")                            \
    X(SRTP_UNPROTECT_FORGED_GCM, "srtp_unprotect_forged/gcm")              \
    X(SRTP_UNPROTECT_REPLAY_GCM, "srtp_unprotect_replay/gcm")              \
    X(SRTP_PROTECT_RTCP_GCM, "srtp_protect_rtcp/gcm")                      \
    X(SRTP_UNPROTECT_RTCP_GCM, "srtp_unprotect_rtcp/gcm")                  \
    X(SRTP_UNPROTECT_RTCP_FORGED_GCM, "srtp_unprotect_rtcp_forged/gcm")    \
    X(SRTP_UNPROTECT_RTCP_REPLAY_GCM, "srtp_unprotect_rtcp_replay/gcm")    \
    X(SRTP_BATCH_PROTECT, "srtp_batch/protect")                            \
    X(SRTP_BATCH_UNPROTECT, "srtp_batch/unprotect")                        \
    X(SRTP_BATCH_PROTECT_RTCP, "srtp_batch/protect_rtcp")                  \
    X(SRTP_BATCH_UNPROTECT_RTCP, "srtp_batch/unprotect_rtcp")              \
    X(DVI4_ENCODE, "dvi4_encode")                                          \
    X(DVI4_DECODE, "dvi4_decode")                                          \
    X(DVI4_DECODE_FRAME, "dvi4_decode/frame")                              \
    X(DVI4_BATCH_ENCODE, "dvi4_batch/encode")                              \
    X(DVI4_BATCH_DECODE, "dvi4_batch/decode")                              \
    X(CODEC2_ENCODE_3200, "codec2_encode/3200")                            \
    X(CODEC2_DECODE_3200, "codec2_decode/3200")                            \
    X(CODEC2_ENCODE_1600, "codec2_encode/1600")                            \
    X(CODEC2_DECODE_1600, "codec2_decode/1600")                            \
    X(CODEC2_ENCODE_700, "codec2_encode/700C")                             \
    X(CODEC2_DECODE_700, "codec2_decode/700C")                             \
    X(CODEC2_BATCH_ENCODE, "codec2_batch/encode")                          \
    X(CODEC2_BATCH_DECODE, "codec2_batch/decode")                          \
    X(TC_TO_CODEC2, "tc_run/to_codec2")                                    \
    X(TC_TO_DVI4, "tc_run/to_dvi4")                                        \
    X(PROBE_LIBCRYPTO, "selfcheck/libcrypto_EVP_CIPHER_CTX_new")           \
    X(PROBE_LIBCODEC2, "selfcheck/libcodec2_codec2_create")

#define OP_ENUM(id, name) OP_##id,
#define OP_NAME(id, name) name,
enum { OPS(OP_ENUM) OP_COUNT };
static const char *const op_names[OP_COUNT] = {OPS(OP_NAME)};

#define PROFILES 2 /* [0] AES_CM_128_HMAC_SHA1_80, [1] AEAD_AES_128_GCM */
#define MODES 3    /* Codec2 3200, 1600, 700C */
#define SLOTS (PROFILES * MODES)
#define STREAMS 4  /* SSRCs per profile for the single calls */
#define BATCH 4
#define PAYLOAD 84 /* a 20 ms DVI4 payload */
#define SPEECH_SAMPLES 8000
#define PKT_ROOM (OPMOB_MAX_PACKET + 64)

/* The ops of one profile, in the order of OPS above. */
enum { S_PROTECT, S_UNPROTECT, S_FORGED, S_REPLAY, S_PROTECT_RTCP, S_UNPROTECT_RTCP, S_FORGED_RTCP, S_REPLAY_RTCP };
static const int srtp_op_base[PROFILES] = {OP_SRTP_PROTECT_AES, OP_SRTP_PROTECT_GCM};
static const int32_t profiles[PROFILES] = {OPMOB_SRTP_AES_CM_128_HMAC_SHA1_80, OPMOB_SRTP_AEAD_AES_128_GCM};
static const int32_t tag_len[PROFILES] = {OPMOB_SRTP_TAG_LEN, OPMOB_SRTP_GCM_TAG_LEN};
static const int32_t rtcp_trailer[PROFILES] = {OPMOB_SRTCP_TRAILER_LEN, OPMOB_SRTCP_GCM_TRAILER_LEN};
static const int32_t modes[MODES] = {3200, 1600, 700};
static const int codec2_op[MODES] = {OP_CODEC2_ENCODE_3200, OP_CODEC2_ENCODE_1600, OP_CODEC2_ENCODE_700};

static unsigned long calls[OP_COUNT];
static int inject;      /* self-check: one malloc of our own in the next srtp_protect/aes_cm */
static void *injected;

static uint8_t speech[2 * SPEECH_SAMPLES];

static void die(const char *what, long got)
{
    alloc_count_disarm();
    fprintf(stderr, "noalloc: %s: unexpected result %ld\n", what, got);
    exit(2);
}

static void begin(int op)
{
    calls[op]++;
    alloc_count_arm(op);
    if (inject && op == OP_SRTP_PROTECT_AES) {
        inject = 0;
        injected = malloc(24);
    }
}

/* r = the call, with only the call itself armed; the argument is evaluated between the two. */
#define MEASURE(op, call) (begin(op), measured = (call), alloc_count_disarm(), measured)
static int32_t measured;

static void want_eq(int32_t got, int32_t want, const char *what)
{
    if (got != want)
        die(what, got);
}

static void put16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
    put16(p, v >> 16);
    put16(p + 2, v & 0xFFFFu);
}

static size_t rtp_packet(uint8_t *p, uint32_t pt, uint32_t seq, uint32_t ts, uint32_t ssrc, const uint8_t *payload,
                         size_t len)
{
    p[0] = 0x80;
    p[1] = (uint8_t)pt;
    put16(p + 2, seq & 0xFFFFu);
    put32(p + 4, ts);
    put32(p + 8, ssrc);
    memcpy(p + 12, payload, len);
    return 12 + len;
}

/* A sender report with one word of sender info per round, 28 bytes. */
static size_t rtcp_packet(uint8_t *p, uint32_t ssrc, uint32_t round)
{
    memset(p, 0, 28);
    p[0] = 0x80;
    p[1] = 200;
    put16(p + 2, 6);
    put32(p + 4, ssrc);
    put32(p + 16, round);
    return 28;
}

/* Voiced-like audio: a 140 Hz triangle under a slow envelope, plus noise, so Codec2's analysis
   runs its full path (silence could take shortcuts). */
static void make_speech(void)
{
    uint32_t lcg = 12345u;
    int32_t i;
    for (i = 0; i < SPEECH_SAMPLES; i++) {
        int32_t ph = i % 57, tri = (ph < 28 ? ph : 57 - ph) * 400 - 5600;
        int32_t env = (i / 800) % 2 ? 4 : 1, noise;
        uint32_t u;
        lcg = lcg * 1103515245u + 12345u;
        noise = (int32_t)((lcg >> 16) & 0x3FFu) - 512;
        u = (uint32_t)(tri * env + noise) & 0xFFFFu;
        speech[2 * i] = (uint8_t)u;
        speech[2 * i + 1] = (uint8_t)(u >> 8);
    }
}

/* 2 * samples bytes of audio for this round. */
static const uint8_t *pcm_at(uint32_t round, size_t samples)
{
    size_t span = SPEECH_SAMPLES - samples;
    return speech + 2u * ((round * 160u) % span);
}

static opmob_srtp *new_session(int p, uint32_t max_streams)
{
    static const uint8_t key[16] = {0xe1, 0xf9, 0x7a, 0x0d, 0x3e, 0x01, 0x8b, 0xe0,
                                    0xd6, 0x4f, 0xa3, 0x2c, 0x06, 0xde, 0x41, 0x39};
    static const uint8_t salt[14] = {0x0e, 0xc6, 0x75, 0xad, 0x49, 0x8a, 0xfe,
                                     0xeb, 0xb6, 0x96, 0x0b, 0x3a, 0xab, 0xe6};
    opmob_srtp *s = NULL;
    int32_t rc = opmob_srtp_new_profile(profiles[p], key, 16, salt, p ? 12 : 14, 128, max_streams, &s);
    if (rc != OPMOB_OK)
        die("opmob_srtp_new_profile", rc);
    return s;
}

/* ---- SRTP: single calls of one profile ---------------------------------------------------- */

static opmob_srtp *tx[PROFILES], *rx[PROFILES];

static void srtp_round(int p, uint32_t round)
{
    const int op = srtp_op_base[p];
    uint32_t ssrc = 0x10000000u + round % STREAMS;
    uint32_t seq = 65000u + round / STREAMS; /* rolls over: the ROC moves */
    uint8_t plain[PKT_ROOM], prot[PKT_ROOM], forged[PKT_ROOM], back[PKT_ROOM];
    int32_t n, len;

    len = (int32_t)rtp_packet(plain, 5, seq, round * 160u, ssrc, pcm_at(round, 2 * PAYLOAD), PAYLOAD);
    n = MEASURE(op + S_PROTECT, opmob_srtp_protect(tx[p], plain, (size_t)len, prot, sizeof(prot)));
    want_eq(n, len + tag_len[p], op_names[op + S_PROTECT]);
    memcpy(forged, prot, (size_t)n);
    forged[12] ^= 0x01; /* the first payload byte: covered by the tag in both profiles */
    want_eq(MEASURE(op + S_FORGED, opmob_srtp_unprotect(rx[p], forged, (size_t)n, back, sizeof(back))),
            OPMOB_E_AUTH_FAILED, op_names[op + S_FORGED]);
    want_eq(MEASURE(op + S_UNPROTECT, opmob_srtp_unprotect(rx[p], prot, (size_t)n, back, sizeof(back))), len,
            op_names[op + S_UNPROTECT]);
    if (memcmp(back, plain, (size_t)len) != 0)
        die("srtp_unprotect gave other bytes", 0);
    want_eq(MEASURE(op + S_REPLAY, opmob_srtp_unprotect(rx[p], prot, (size_t)n, back, sizeof(back))),
            OPMOB_E_REPLAYED, op_names[op + S_REPLAY]);

    len = (int32_t)rtcp_packet(plain, ssrc, round);
    n = MEASURE(op + S_PROTECT_RTCP, opmob_srtp_protect_rtcp(tx[p], plain, (size_t)len, prot, sizeof(prot)));
    want_eq(n, len + rtcp_trailer[p], op_names[op + S_PROTECT_RTCP]);
    memcpy(forged, prot, (size_t)n);
    forged[8] ^= 0x01; /* the first encrypted byte */
    want_eq(MEASURE(op + S_FORGED_RTCP, opmob_srtp_unprotect_rtcp(rx[p], forged, (size_t)n, back, sizeof(back))),
            OPMOB_E_AUTH_FAILED, op_names[op + S_FORGED_RTCP]);
    want_eq(MEASURE(op + S_UNPROTECT_RTCP, opmob_srtp_unprotect_rtcp(rx[p], prot, (size_t)n, back, sizeof(back))),
            len, op_names[op + S_UNPROTECT_RTCP]);
    if (memcmp(back, plain, (size_t)len) != 0)
        die("srtp_unprotect_rtcp gave other bytes", 0);
    want_eq(MEASURE(op + S_REPLAY_RTCP, opmob_srtp_unprotect_rtcp(rx[p], prot, (size_t)n, back, sizeof(back))),
            OPMOB_E_REPLAYED, op_names[op + S_REPLAY_RTCP]);
}

/* ---- SRTP: the batch entry, a fan-out mixing both profiles -------------------------------- */

static void srtp_batch_round(uint32_t round)
{
    opmob_srtp *txs[BATCH], *rxs[BATCH];
    uint8_t in[BATCH * PKT_ROOM], prot[BATCH * PKT_ROOM], back[BATCH * PKT_ROOM];
    uint32_t in_len[BATCH], prot_len[BATCH], back_len[BATCH];
    int32_t status[BATCH];
    size_t i, pos = 0, total = 0;

    for (i = 0; i < BATCH; i++) {
        txs[i] = tx[i % PROFILES];
        rxs[i] = rx[i % PROFILES];
        in_len[i] = (uint32_t)rtp_packet(in + pos, 5, round, round * 160u, 0x20000000u + (uint32_t)i,
                                         pcm_at(round + (uint32_t)i, 2 * PAYLOAD), PAYLOAD);
        pos += in_len[i];
    }
    want_eq(MEASURE(OP_SRTP_BATCH_PROTECT, opmob_srtp_batch(OPMOB_OP_PROTECT, txs, BATCH, in, pos, in_len, BATCH, prot,
                                                            sizeof(prot), prot_len, status)),
            BATCH, op_names[OP_SRTP_BATCH_PROTECT]);
    for (i = 0; i < BATCH; i++)
        total += prot_len[i];
    want_eq(MEASURE(OP_SRTP_BATCH_UNPROTECT, opmob_srtp_batch(OPMOB_OP_UNPROTECT, rxs, BATCH, prot, total, prot_len,
                                                              BATCH, back, sizeof(back), back_len, status)),
            BATCH, op_names[OP_SRTP_BATCH_UNPROTECT]);
    if (memcmp(back, in, pos) != 0)
        die("srtp_batch unprotect gave other bytes", 0);

    for (pos = 0, i = 0; i < BATCH; i++) {
        in_len[i] = (uint32_t)rtcp_packet(in + pos, 0x20000000u + (uint32_t)i, round);
        pos += in_len[i];
    }
    want_eq(MEASURE(OP_SRTP_BATCH_PROTECT_RTCP, opmob_srtp_batch(OPMOB_OP_PROTECT_RTCP, txs, BATCH, in, pos, in_len,
                                                                 BATCH, prot, sizeof(prot), prot_len, status)),
            BATCH, op_names[OP_SRTP_BATCH_PROTECT_RTCP]);
    for (total = 0, i = 0; i < BATCH; i++)
        total += prot_len[i];
    want_eq(MEASURE(OP_SRTP_BATCH_UNPROTECT_RTCP, opmob_srtp_batch(OPMOB_OP_UNPROTECT_RTCP, rxs, BATCH, prot, total,
                                                                   prot_len, BATCH, back, sizeof(back), back_len,
                                                                   status)),
            BATCH, op_names[OP_SRTP_BATCH_UNPROTECT_RTCP]);
}

/* ---- DVI4 ------------------------------------------------------------------------------------ */

static opmob_dvi4_state enc_state, batch_state;
static opmob_dvi4_dec dec, batch_dec[2];

static void dvi4_round(uint32_t round)
{
    uint8_t payload[PAYLOAD], pcm[2 * 160], in[BATCH * 2 * 160], out[BATCH * 2 * 160];
    uint32_t in_len[BATCH], out_len[BATCH];
    int32_t status[BATCH];
    opmob_dvi4_state *enc_objs[1];
    opmob_dvi4_dec *dec_objs[BATCH];
    size_t i;

    want_eq(MEASURE(OP_DVI4_ENCODE, opmob_dvi4_encode(&enc_state, pcm_at(round, 160), 320, payload, sizeof(payload))),
            PAYLOAD, op_names[OP_DVI4_ENCODE]);
    want_eq(MEASURE(OP_DVI4_DECODE, opmob_dvi4_decode(&dec, payload, PAYLOAD, pcm, sizeof(pcm))), 320,
            op_names[OP_DVI4_DECODE]);
    want_eq(MEASURE(OP_DVI4_DECODE_FRAME, opmob_dvi4_decode(NULL, payload, PAYLOAD, pcm, sizeof(pcm))), 320,
            op_names[OP_DVI4_DECODE_FRAME]);

    /* Consecutive frames of one stream, then one decoder per payload (NULL: decode_frame). */
    memcpy(in, pcm_at(round, BATCH * 160), sizeof(in));
    for (i = 0; i < BATCH; i++)
        in_len[i] = 320;
    enc_objs[0] = &batch_state;
    want_eq(MEASURE(OP_DVI4_BATCH_ENCODE, opmob_dvi4_batch(OPMOB_OP_ENCODE, (void *const *)enc_objs, 1, in, sizeof(in),
                                                           in_len, BATCH, out, sizeof(out), out_len, status)),
            BATCH, op_names[OP_DVI4_BATCH_ENCODE]);
    for (i = 0; i < BATCH; i++)
        dec_objs[i] = i % 2 ? NULL : &batch_dec[i / 2];
    want_eq(MEASURE(OP_DVI4_BATCH_DECODE,
                    opmob_dvi4_batch(OPMOB_OP_DECODE, (void *const *)dec_objs, BATCH, out, BATCH * PAYLOAD, out_len,
                                     BATCH, in, sizeof(in), in_len, status)),
            BATCH, op_names[OP_DVI4_BATCH_DECODE]);
}

/* ---- Codec2 ---------------------------------------------------------------------------------- */

static opmob_codec2 *c2_enc[MODES], *c2_dec[MODES], *c2_batch_enc[MODES], *c2_batch_dec[MODES];

static void codec2_round(uint32_t round)
{
    uint8_t bits[MODES * OPMOB_CODEC2_MAX_BYTES], pcm[MODES * 2 * OPMOB_CODEC2_MAX_SAMPLES];
    uint32_t in_len[MODES], bits_len[MODES], pcm_len[MODES];
    int32_t status[MODES];
    size_t m, pos = 0;

    for (m = 0; m < MODES; m++) {
        int op = codec2_op[m];
        int32_t spf = opmob_codec2_samples_per_frame(c2_enc[m]), nb = opmob_codec2_bytes_per_frame(c2_enc[m]);
        want_eq(MEASURE(op, opmob_codec2_encode(c2_enc[m], pcm_at(round, (size_t)spf), 2u * (size_t)spf, bits,
                                                sizeof(bits))),
                nb, op_names[op]);
        want_eq(MEASURE(op + 1, opmob_codec2_decode(c2_dec[m], bits, (size_t)nb, pcm, sizeof(pcm))), 2 * spf,
                op_names[op + 1]);
    }

    /* One frame per mode in one call, each with its own codec. */
    for (m = 0; m < MODES; m++) {
        in_len[m] = 2u * (uint32_t)opmob_codec2_samples_per_frame(c2_batch_enc[m]);
        memcpy(pcm + pos, pcm_at(round, in_len[m] / 2u), in_len[m]);
        pos += in_len[m];
    }
    want_eq(MEASURE(OP_CODEC2_BATCH_ENCODE, opmob_codec2_batch(OPMOB_OP_ENCODE, c2_batch_enc, MODES, pcm, pos, in_len,
                                                               MODES, bits, sizeof(bits), bits_len, status)),
            MODES, op_names[OP_CODEC2_BATCH_ENCODE]);
    for (pos = 0, m = 0; m < MODES; m++)
        pos += bits_len[m];
    want_eq(MEASURE(OP_CODEC2_BATCH_DECODE, opmob_codec2_batch(OPMOB_OP_DECODE, c2_batch_dec, MODES, bits, pos,
                                                               bits_len, MODES, pcm, sizeof(pcm), pcm_len, status)),
            MODES, op_names[OP_CODEC2_BATCH_DECODE]);
}

/* ---- The pipeline: one slot per (profile, mode), SRTP on every side ------------------------ */

static opmob_tc *tc;
static opmob_srtp *acc_tx[SLOTS], *back_tx[SLOTS];
static opmob_dvi4_state tc_feed[SLOTS]; /* encodes the accessories' DVI4 input */
static int32_t tc_spf[SLOTS], tc_bytes[SLOTS];

static void tc_setup(void)
{
    uint32_t s;
    int32_t rc = opmob_tc_new(SLOTS, &tc);
    if (rc != OPMOB_OK)
        die("opmob_tc_new", rc);
    for (s = 0; s < SLOTS; s++) {
        int p = (int)(s / MODES);
        opmob_codec2 *c;
        opmob_tc_config cfg;
        memset(&cfg, 0, sizeof(cfg));
        cfg.codec2_mode = modes[s % MODES];
        cfg.dvi4_pt = 5;
        cfg.codec2_pt = 96;
        cfg.codec2_ssrc = 0x50000000u + s;
        cfg.dvi4_ssrc = 0x60000000u + s;
        cfg.dvi4_rx = new_session(p, 4);
        cfg.codec2_tx = new_session(p, 4);
        cfg.codec2_rx = new_session(p, 4);
        cfg.dvi4_tx = cfg.codec2_tx;
        acc_tx[s] = new_session(p, 4);
        back_tx[s] = new_session(p, 4);
        rc = opmob_tc_open(tc, s, &cfg);
        if (rc != OPMOB_OK)
            die("opmob_tc_open", rc);
        rc = opmob_codec2_new(cfg.codec2_mode, &c);
        if (rc != OPMOB_OK)
            die("opmob_codec2_new", rc);
        tc_spf[s] = opmob_codec2_samples_per_frame(c);
        tc_bytes[s] = opmob_codec2_bytes_per_frame(c);
        opmob_codec2_free(c);
    }
}

static void tc_round(uint32_t round)
{
    uint32_t slots[SLOTS], in_len[SLOTS], out_len[2 * SLOTS];
    uint8_t in[SLOTS * PKT_ROOM], out[2 * SLOTS * PKT_ROOM], plain[PKT_ROOM], payload[PAYLOAD];
    int32_t status[SLOTS], r, want = 0;
    size_t s, pos = 0;

    /* Accessory -> backhaul: a protected 20 ms DVI4 packet per slot; 3200 sends a frame per packet,
       the 40 ms modes every second one. */
    for (s = 0; s < SLOTS; s++) {
        size_t n;
        slots[s] = (uint32_t)s;
        r = opmob_dvi4_encode(&tc_feed[s], pcm_at(round, 160), 320, payload, sizeof(payload));
        n = rtp_packet(plain, 5, round, round * 160u, 0x30000000u + (uint32_t)s, payload, (size_t)r);
        r = opmob_srtp_protect(acc_tx[s], plain, n, in + pos, PKT_ROOM);
        if (r < 0)
            die("protect the pipeline's DVI4 input", r);
        in_len[s] = (uint32_t)r;
        pos += (size_t)r;
        want += tc_spf[s] == 160 || round % 2 == 1;
    }
    want_eq(MEASURE(OP_TC_TO_CODEC2, opmob_tc_run(tc, OPMOB_TC_TO_CODEC2, slots, in, pos, in_len, SLOTS, out,
                                                  sizeof(out), 2 * SLOTS, out_len, status)),
            want, op_names[OP_TC_TO_CODEC2]);

    /* Backhaul -> accessory: a protected Codec2 frame per slot, each giving 1 or 2 DVI4 packets. */
    for (pos = 0, want = 0, s = 0; s < SLOTS; s++) {
        size_t n;
        uint8_t bits[OPMOB_CODEC2_MAX_BYTES];
        memcpy(bits, pcm_at(round + (uint32_t)s, OPMOB_CODEC2_MAX_BYTES), sizeof(bits));
        n = rtp_packet(plain, 96, round, round * (uint32_t)tc_spf[s], 0x40000000u + (uint32_t)s, bits,
                       (size_t)tc_bytes[s]);
        r = opmob_srtp_protect(back_tx[s], plain, n, in + pos, PKT_ROOM);
        if (r < 0)
            die("protect the pipeline's Codec2 input", r);
        in_len[s] = (uint32_t)r;
        pos += (size_t)r;
        want += tc_spf[s] / 160;
    }
    want_eq(MEASURE(OP_TC_TO_DVI4, opmob_tc_run(tc, OPMOB_TC_TO_DVI4, slots, in, pos, in_len, SLOTS, out,
                                                sizeof(out), 2 * SLOTS, out_len, status)),
            want, op_names[OP_TC_TO_DVI4]);
}

/* ---- self-check probes: allocations that must be seen ---------------------------------------- */

static void probes(void)
{
    EVP_CIPHER_CTX *ctx;
    struct CODEC2 *c2;
    begin(OP_PROBE_LIBCRYPTO);
    ctx = EVP_CIPHER_CTX_new();
    alloc_count_disarm();
    EVP_CIPHER_CTX_free(ctx);
    begin(OP_PROBE_LIBCODEC2);
    c2 = codec2_create(CODEC2_MODE_3200);
    alloc_count_disarm();
    codec2_destroy(c2);
}

int main(int argc, char **argv)
{
    const char *sc = getenv("OPMOB_NOALLOC_SELFCHECK");
    int selfcheck = sc != NULL && strcmp(sc, "1") == 0;
    long rounds = argc > 1 ? strtol(argv[1], NULL, 10) : 3000;
    unsigned long allocs = 0, frees = 0;
    uint32_t round;
    int p, m, op;

    if (rounds < 1 || rounds > 1000000)
        die("rounds (argv[1])", rounds);
    alloc_count_init();
    make_speech();
    for (p = 0; p < PROFILES; p++) {
        tx[p] = new_session(p, 16);
        rx[p] = new_session(p, 16);
    }
    for (m = 0; m < MODES; m++) {
        opmob_codec2 **all[4] = {&c2_enc[m], &c2_dec[m], &c2_batch_enc[m], &c2_batch_dec[m]};
        int k;
        for (k = 0; k < 4; k++) {
            int32_t rc = opmob_codec2_new(modes[m], all[k]);
            if (rc != OPMOB_OK)
                die("opmob_codec2_new", rc);
        }
    }
    dec.samples = 160;
    batch_dec[0].samples = batch_dec[1].samples = 160;
    tc_setup();

    inject = selfcheck;
    for (round = 0; round < (uint32_t)rounds; round++) {
        for (p = 0; p < PROFILES; p++)
            srtp_round(p, round);
        srtp_batch_round(round);
        dvi4_round(round);
        codec2_round(round);
        tc_round(round);
    }
    if (selfcheck)
        probes();
    free(injected);

    printf("{\"selfcheck\": %s, \"rounds\": %ld, \"ops\": {", selfcheck ? "true" : "false", rounds);
    for (op = 0; op < OP_COUNT; op++) {
        alloc_count_t c = alloc_count_get(op);
        allocs += c.allocs;
        frees += c.frees;
        printf("%s\"%s\": {\"calls\": %lu, \"allocs\": %lu, \"frees\": %lu}", op ? ", " : "", op_names[op], calls[op],
               c.allocs, c.frees);
    }
    printf("}, \"allocs\": %lu, \"frees\": %lu}\n", allocs, frees);
    fflush(stdout);
    for (op = 0; op < OP_COUNT; op++) {
        alloc_count_t c = alloc_count_get(op);
        if (c.allocs != 0) {
            fprintf(stderr, "noalloc: %s: %lu allocations; the first one's call stack:\n", op_names[op], c.allocs);
            alloc_count_print_stack(op);
        }
    }
    return allocs != 0 || frees != 0;
}
