/*
 * opmob_c.h - the relay's C hot path: DVI4, Codec2, SRTP/SRTCP and the transcoding pipeline.
 *
 * Every function here has a pure-Python twin in firmware/opmob (dvi4.py, srtp.py, rtp.py) and
 * gives the same bytes and the same errors for the same input; host_tools/opmob_c wraps them with
 * the twins' Python API. Conventions, everywhere:
 *
 * - Every buffer comes with its size; a function never reads or writes outside [buf, buf + size).
 * - Results are int32_t: >= 0 is success (a byte or item count), < 0 is one of OPMOB_E_*.
 *   Wire errors (TRUNCATED .. KEY_EXPIRED) are what a packet from the network can cause; ARG is
 *   a caller error (Python ValueError); CRYPTO and NOMEM are failures of libcrypto or malloc.
 * - Nothing allocates after set-up: sessions, codecs and transcoders allocate everything when
 *   they are made (*_new, *_open) and the per-packet and per-frame calls only use that memory.
 *   The one exception is inside libcodec2: its 700C encoder mallocs and frees four small blocks
 *   per frame (tests/host/test_cext_noalloc.py counts it and everything else).
 * - An object is not thread-safe: one thread at a time per object (the Python wrapper locks).
 * - Batch calls ("many packets, many streams, one call") share one calling convention:
 *     objs, nobj   the object for item i is objs[nobj == 1 ? 0 : i]; nobj is 1 or n;
 *     in, in_size  all inputs back to back in one buffer, item i in_len[i] bytes long;
 *     n            the number of items;
 *     out, out_size
 *                  the outputs back to back, each written where the previous one ended;
 *     out_len[i]   bytes written for item i (0 when it failed);
 *     status[i]    0 or the item's OPMOB_E_* code; a failed item does not stop the batch
 *                  (an item whose output does not fit in what is left of out gets OPMOB_E_ARG).
 *   The call returns the number of items that succeeded, or OPMOB_E_ARG (nothing done) when the
 *   arrays do not fit the buffers. Items run in order, so several items for one stateful object
 *   behave exactly as the same single calls one after the other.
 *
 * The part between CDEF BEGIN and CDEF END is also fed to cffi (c_ext/build_opmob_c.py), so it
 * holds plain declarations only: no macros, no preprocessor lines.
 */
#ifndef OPMOB_C_H
#define OPMOB_C_H

#include <stddef.h>
#include <stdint.h>

/* CDEF BEGIN */

enum {
    OPMOB_OK = 0,
    OPMOB_E_TRUNCATED = -1,
    OPMOB_E_OVERSIZED = -2,
    OPMOB_E_BAD_VERSION = -3,
    OPMOB_E_BAD_VALUE = -4,
    OPMOB_E_AUTH_FAILED = -5,
    OPMOB_E_REPLAYED = -6,
    OPMOB_E_UNKNOWN_STREAM = -7,
    OPMOB_E_KEY_EXPIRED = -8,
    OPMOB_E_ARG = -9,
    OPMOB_E_CRYPTO = -10,
    OPMOB_E_NOMEM = -11
};

enum {
    OPMOB_MAX_PACKET = 1500,          /* rtp.MAX_PACKET */
    OPMOB_SRTP_MAX_PAYLOAD = 1088,    /* srtp.MAX_PAYLOAD: bytes under encryption */
    OPMOB_SRTP_TAG_LEN = 10,          /* AES_CM_128_HMAC_SHA1_80 */
    OPMOB_SRTCP_TRAILER_LEN = 14,     /* E flag and index, then the tag */
    OPMOB_SRTP_GCM_TAG_LEN = 16,      /* AEAD_AES_128_GCM */
    OPMOB_SRTCP_GCM_TRAILER_LEN = 20, /* the tag, then E flag and index */
    OPMOB_SRTP_MAX_STREAMS = 65536,   /* per direction, per session */
    OPMOB_DVI4_HEADER_LEN = 4,
    OPMOB_DVI4_FRAME_SAMPLES = 160,
    OPMOB_DVI4_MAX_SAMPLES = 960,
    OPMOB_DVI4_MAX_INDEX = 88,
    OPMOB_CODEC2_MAX_SAMPLES = 320,   /* per frame, the 40 ms modes */
    OPMOB_CODEC2_MAX_BYTES = 8,       /* per frame */
    OPMOB_TC_MAX_STREAMS = 65536
};

/* SRTP protection profiles: the DTLS-SRTP protection profile ids (RFC 5764, RFC 7714). */
enum {
    OPMOB_SRTP_AES_CM_128_HMAC_SHA1_80 = 1,  /* RFC 3711: master salt 14 bytes, tag 10 */
    OPMOB_SRTP_AEAD_AES_128_GCM = 7          /* RFC 7714: master salt 12 bytes, tag 16 */
};

/* Batch operations. */
enum {
    OPMOB_OP_PROTECT = 0,
    OPMOB_OP_UNPROTECT = 1,
    OPMOB_OP_PROTECT_RTCP = 2,
    OPMOB_OP_UNPROTECT_RTCP = 3,
    OPMOB_OP_ENCODE = 4,
    OPMOB_OP_DECODE = 5,
    OPMOB_TC_TO_CODEC2 = 0,   /* unprotect -> DVI4 decode -> Codec2 encode -> protect */
    OPMOB_TC_TO_DVI4 = 1      /* unprotect -> Codec2 decode -> DVI4 encode -> protect */
};

/* ---- DVI4 / IMA ADPCM, RFC 3551 (twin: opmob.dvi4) ---------------------------------------- */

typedef struct {
    int32_t predicted;   /* -32768..32767: the next payload's header */
    int32_t index;       /* 0..88 */
} opmob_dvi4_state;

typedef struct {
    int32_t samples;     /* coded samples a payload must hold; 0: any even count up to 960 */
    int32_t predicted;   /* state after the last payload decoded */
    int32_t index;
    uint64_t frames;
    uint64_t resyncs;
    uint64_t reserved_nonzero;
} opmob_dvi4_dec;

/* One payload (4-byte header + codes) from pcm (s16le, a non-zero even number of samples, at most
   960) starting at *st; *st becomes the state after it. Returns the payload length. */
int32_t opmob_dvi4_encode(opmob_dvi4_state *st, const uint8_t *pcm, size_t pcm_len,
                          uint8_t *out, size_t out_cap);

/* The coded samples in payload under d's rule (NULL: decode_frame's), or the wire error that
   opmob_dvi4_decode would return; moves nothing. */
int32_t opmob_dvi4_payload_samples(const opmob_dvi4_dec *d, const uint8_t *payload, size_t len);

/* PCM (s16le) for one payload. d: a decoder (its samples rule, counters and state move on
   success only), or NULL for decode_frame (any even count). Returns the PCM length in bytes. */
int32_t opmob_dvi4_decode(opmob_dvi4_dec *d, const uint8_t *payload, size_t len,
                          uint8_t *out, size_t out_cap);

/* op: OPMOB_OP_ENCODE (objs: opmob_dvi4_state) or OPMOB_OP_DECODE (objs: opmob_dvi4_dec, a NULL
   entry meaning decode_frame). */
int32_t opmob_dvi4_batch(int32_t op, void *const *objs, size_t nobj,
                         const uint8_t *in, size_t in_size, const uint32_t *in_len, size_t n,
                         uint8_t *out, size_t out_size, uint32_t *out_len, int32_t *status);

/* ---- SRTP / SRTCP, AES_CM_128_HMAC_SHA1_80 and AEAD_AES_128_GCM on libcrypto (twin: opmob.srtp) */

typedef struct opmob_srtp opmob_srtp;

/* profile: OPMOB_SRTP_AES_CM_128_HMAC_SHA1_80 (master salt 14 bytes) or OPMOB_SRTP_AEAD_AES_128_GCM
   (master salt 12); master key 16 bytes; replay_window 64..32767; max_streams 1..65536 per
   direction. */
int32_t opmob_srtp_new_profile(int32_t profile, const uint8_t *master_key, size_t key_len,
                               const uint8_t *master_salt, size_t salt_len, uint32_t replay_window,
                               uint32_t max_streams, opmob_srtp **out);
/* opmob_srtp_new_profile with OPMOB_SRTP_AES_CM_128_HMAC_SHA1_80. */
int32_t opmob_srtp_new(const uint8_t *master_key, size_t key_len, const uint8_t *master_salt,
                       size_t salt_len, uint32_t replay_window, uint32_t max_streams,
                       opmob_srtp **out);
void opmob_srtp_free(opmob_srtp *s);

/* Each returns the output length; out may not overlap in. */
int32_t opmob_srtp_protect(opmob_srtp *s, const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap);
int32_t opmob_srtp_unprotect(opmob_srtp *s, const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap);
int32_t opmob_srtp_protect_rtcp(opmob_srtp *s, const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap);
int32_t opmob_srtp_unprotect_rtcp(opmob_srtp *s, const uint8_t *in, size_t in_len, uint8_t *out, size_t out_cap);

/* op: OPMOB_OP_PROTECT .. OPMOB_OP_UNPROTECT_RTCP; objs: opmob_srtp. */
int32_t opmob_srtp_batch(int32_t op, opmob_srtp *const *objs, size_t nobj,
                         const uint8_t *in, size_t in_size, const uint32_t *in_len, size_t n,
                         uint8_t *out, size_t out_size, uint32_t *out_len, int32_t *status);

uint32_t opmob_srtp_stream_count(const opmob_srtp *s, int32_t outbound);
uint32_t opmob_srtp_window_words(const opmob_srtp *s);
/* 1 and the state when the stream exists, 0 when not. bits and rtcp_bits receive `words`
   64-bit words (words >= opmob_srtp_window_words), least significant word first. */
int32_t opmob_srtp_stream_state(const opmob_srtp *s, uint32_t ssrc, int32_t outbound,
                                uint32_t *roc, uint32_t *seq, uint32_t *rtcp_index,
                                uint64_t *bits, uint64_t *rtcp_bits, size_t words);
void opmob_srtp_remove_stream(opmob_srtp *s, uint32_t ssrc);
/* The RFC 3711 4.3.1 key derivation (rate 0), for tests. A 12-byte master salt (GCM) is
   zero-padded to 14, as libsrtp does. */
int32_t opmob_srtp_kdf(const uint8_t *master_key, size_t key_len, const uint8_t *master_salt,
                       size_t salt_len, uint32_t label, uint8_t *out, size_t out_len);
/* HMAC-SHA1 (RFC 2104) of msg under key (any length) as the SRTP tags compute it, for tests:
   writes 20 bytes and returns 20. */
int32_t opmob_hmac_sha1(const uint8_t *key, size_t key_len, const uint8_t *msg, size_t msg_len,
                        uint8_t *out, size_t out_cap);

/* ---- Codec2 through libcodec2 ------------------------------------------------------------ */

typedef struct opmob_codec2 opmob_codec2;

/* mode: 3200, 2400, 1600, 1400, 1300, 1200 or 700 (700C). */
int32_t opmob_codec2_new(int32_t mode, opmob_codec2 **out);
void opmob_codec2_free(opmob_codec2 *c);
int32_t opmob_codec2_samples_per_frame(const opmob_codec2 *c);
int32_t opmob_codec2_bits_per_frame(const opmob_codec2 *c);
int32_t opmob_codec2_bytes_per_frame(const opmob_codec2 *c);
/* pcm: s16le, a whole non-zero number of frames; returns the bytes written (frames * bytes). */
int32_t opmob_codec2_encode(opmob_codec2 *c, const uint8_t *pcm, size_t pcm_len,
                            uint8_t *out, size_t out_cap);
/* bits: a whole non-zero number of frames; returns the PCM bytes written. */
int32_t opmob_codec2_decode(opmob_codec2 *c, const uint8_t *bits, size_t len,
                            uint8_t *out, size_t out_cap);
/* op: OPMOB_OP_ENCODE or OPMOB_OP_DECODE; objs: opmob_codec2. */
int32_t opmob_codec2_batch(int32_t op, opmob_codec2 *const *objs, size_t nobj,
                           const uint8_t *in, size_t in_size, const uint32_t *in_len, size_t n,
                           uint8_t *out, size_t out_size, uint32_t *out_len, int32_t *status);

/* ---- The relay's transcoding pipeline -------------------------------------------------- */

typedef struct opmob_tc opmob_tc;

typedef struct {
    int32_t codec2_mode;       /* as opmob_codec2_new */
    uint32_t dvi4_pt;          /* payload type of the DVI4 side: checked on input, written on output */
    uint32_t codec2_pt;        /* payload type of the Codec2 side */
    uint32_t codec2_ssrc;      /* SSRC of the Codec2 stream this slot sends */
    uint32_t codec2_seq;       /* its next sequence number (0..65535) */
    uint32_t dvi4_ssrc;        /* SSRC of the DVI4 stream this slot sends */
    uint32_t dvi4_seq;         /* its next sequence number */
    opmob_dvi4_state dvi4_enc; /* the DVI4 encoder's start state */
    opmob_srtp *dvi4_rx;       /* sessions; NULL: plain RTP on that side */
    opmob_srtp *codec2_tx;
    opmob_srtp *codec2_rx;
    opmob_srtp *dvi4_tx;
} opmob_tc_config;

typedef struct {
    uint32_t open;
    uint32_t codec2_seq;
    uint32_t dvi4_seq;
    opmob_dvi4_state dvi4_enc;
    opmob_dvi4_dec dvi4_dec;
    uint32_t pending_samples;  /* DVI4 samples waiting for a 40 ms Codec2 frame */
    uint64_t gaps;             /* pending samples dropped because the next frame did not follow */
} opmob_tc_info;

int32_t opmob_tc_new(uint32_t max_streams, opmob_tc **out);
void opmob_tc_free(opmob_tc *t);
/* Creates the slot's two Codec2 states (encoder and decoder) now, not per frame. */
int32_t opmob_tc_open(opmob_tc *t, uint32_t slot, const opmob_tc_config *cfg);
int32_t opmob_tc_close(opmob_tc *t, uint32_t slot);
int32_t opmob_tc_info_get(const opmob_tc *t, uint32_t slot, opmob_tc_info *info);
/* dir: OPMOB_TC_TO_CODEC2 or OPMOB_TC_TO_DVI4. Inputs as in the batch convention, item i for
   slot slots[i]. Item i makes status[i] >= 0 packets (TO_CODEC2: 0 or 1; TO_DVI4: 1 or 2),
   written back to back in out with lengths out_len[k], k counting outputs over the whole call
   (at most max_out); status[i] < 0 is the item's error. Returns the number of outputs, or
   OPMOB_E_ARG (nothing done). */
int32_t opmob_tc_run(opmob_tc *t, int32_t dir, const uint32_t *slots,
                     const uint8_t *in, size_t in_size, const uint32_t *in_len, size_t n,
                     uint8_t *out, size_t out_size, size_t max_out,
                     uint32_t *out_len, int32_t *status);

/* CDEF END */

#endif
