/*
 * opmob_pipeline.c - the relay's transcoding hot path, many streams per call.
 *
 * TO_CODEC2 (accessory -> backhaul), per input packet of a slot:
 *   unprotect (slot's dvi4_rx session; none: plain RTP) -> RTP decode (rtp.decode: size, header,
 *   padding) -> payload type must be dvi4_pt (else BAD_VALUE) -> DVI4 decode of exactly 160
 *   samples (opmob.dvi4.Dvi4Decoder, its counters kept per slot) -> Codec2 encode once a whole
 *   Codec2 frame of speech is there (3200: every packet; 40 ms modes: every second packet) ->
 *   RTP header {V=2, M = any input's marker, PT codec2_pt, seq = the slot's own counter,
 *   ts = the first input's timestamp, SSRC codec2_ssrc} + the frame's bits -> protect (codec2_tx).
 * TO_DVI4 (backhaul -> accessory), per input packet:
 *   unprotect (codec2_rx) -> RTP decode -> payload type codec2_pt -> payload exactly one Codec2
 *   frame (shorter TRUNCATED, longer OVERSIZED) -> Codec2 decode -> per 160 samples: DVI4 encode
 *   (the slot's encoder state carries on) -> RTP header {M = the input's marker on the first,
 *   PT dvi4_pt, seq = own counter, ts = input ts + 160 k, SSRC dvi4_ssrc} -> protect (dvi4_tx).
 *
 * A 40 ms mode pairs consecutive 20 ms inputs: when an input's timestamp does not follow the one
 * waiting (loss, reordering), the waiting half frame is dropped (counted in `gaps`).
 * The result for each input is what the same single steps give one after the other; a failed
 * step leaves the steps before it done (a decoder's counters, a codec's memory), as they would be.
 */
#include <stdlib.h>
#include <string.h>

#include "opmob_internal.h"

#define DVI4_FRAME OPMOB_DVI4_FRAME_SAMPLES
#define DVI4_PAYLOAD (OPMOB_DVI4_HEADER_LEN + DVI4_FRAME / 2)

typedef struct {
    uint32_t open;
    opmob_tc_config cfg;
    opmob_codec2 *enc;
    opmob_codec2 *dec;
    uint32_t codec2_seq;
    uint32_t dvi4_seq;
    opmob_dvi4_state dvi4_enc;
    opmob_dvi4_dec dvi4_dec;
    int16_t pending[OPMOB_CODEC2_MAX_SAMPLES];
    uint32_t pending_samples;
    uint32_t pending_ts;
    uint32_t pending_marker;
    uint64_t gaps;
} tc_slot;

struct opmob_tc {
    uint32_t max;
    tc_slot *slots;
    uint8_t plain[OPMOB_MAX_PACKET]; /* an unprotected input */
    uint8_t pkt[OPMOB_MAX_PACKET];   /* an output before protection */
    int16_t pcm[OPMOB_CODEC2_MAX_SAMPLES];
    uint8_t codes[DVI4_FRAME / 2];
};

int32_t opmob_tc_new(uint32_t max_streams, opmob_tc **out)
{
    opmob_tc *t;
    if (out == NULL)
        return OPMOB_E_ARG;
    *out = NULL;
    if (max_streams < 1u || max_streams > OPMOB_TC_MAX_STREAMS)
        return OPMOB_E_ARG;
    t = calloc(1, sizeof(*t));
    if (t == NULL)
        return OPMOB_E_NOMEM;
    t->slots = calloc(max_streams, sizeof(tc_slot));
    if (t->slots == NULL) {
        free(t);
        return OPMOB_E_NOMEM;
    }
    t->max = max_streams;
    *out = t;
    return OPMOB_OK;
}

int32_t opmob_tc_close(opmob_tc *t, uint32_t slot)
{
    tc_slot *s;
    if (t == NULL || slot >= t->max)
        return OPMOB_E_ARG;
    s = &t->slots[slot];
    opmob_codec2_free(s->enc);
    opmob_codec2_free(s->dec);
    memset(s, 0, sizeof(*s));
    return OPMOB_OK;
}

void opmob_tc_free(opmob_tc *t)
{
    uint32_t i;
    if (t == NULL)
        return;
    for (i = 0; i < t->max; i++)
        opmob_tc_close(t, i);
    free(t->slots);
    free(t);
}

int32_t opmob_tc_open(opmob_tc *t, uint32_t slot, const opmob_tc_config *cfg)
{
    tc_slot *s;
    opmob_codec2 *enc = NULL, *dec = NULL;
    int32_t rc;
    if (t == NULL || cfg == NULL || slot >= t->max || cfg->dvi4_pt > 127u || cfg->codec2_pt > 127u ||
        cfg->codec2_seq > 0xFFFFu || cfg->dvi4_seq > 0xFFFFu || cfg->dvi4_enc.predicted < -32768 ||
        cfg->dvi4_enc.predicted > 32767 || cfg->dvi4_enc.index < 0 ||
        cfg->dvi4_enc.index > OPMOB_DVI4_MAX_INDEX)
        return OPMOB_E_ARG;
    rc = opmob_codec2_new(cfg->codec2_mode, &enc);
    if (rc == OPMOB_OK)
        rc = opmob_codec2_new(cfg->codec2_mode, &dec);
    if (rc == OPMOB_OK && opmob_codec2_samples_per_frame(enc) % DVI4_FRAME != 0)
        rc = OPMOB_E_ARG;
    if (rc != OPMOB_OK) {
        opmob_codec2_free(enc);
        opmob_codec2_free(dec);
        return rc;
    }
    opmob_tc_close(t, slot);
    s = &t->slots[slot];
    s->open = 1;
    s->cfg = *cfg;
    s->enc = enc;
    s->dec = dec;
    s->codec2_seq = cfg->codec2_seq;
    s->dvi4_seq = cfg->dvi4_seq;
    s->dvi4_enc = cfg->dvi4_enc;
    s->dvi4_dec.samples = DVI4_FRAME;
    return OPMOB_OK;
}

int32_t opmob_tc_info_get(const opmob_tc *t, uint32_t slot, opmob_tc_info *info)
{
    const tc_slot *s;
    if (t == NULL || info == NULL || slot >= t->max)
        return OPMOB_E_ARG;
    s = &t->slots[slot];
    memset(info, 0, sizeof(*info));
    info->open = s->open;
    info->codec2_seq = s->codec2_seq;
    info->dvi4_seq = s->dvi4_seq;
    info->dvi4_enc = s->dvi4_enc;
    info->dvi4_dec = s->dvi4_dec;
    info->pending_samples = s->pending_samples;
    info->gaps = s->gaps;
    return OPMOB_OK;
}

/* rtp.decode's checks and split: the payload [*off, *off + *len) and the header fields. */
static int32_t rtp_split(const uint8_t *pkt, size_t n, size_t *off, size_t *len)
{
    int32_t h;
    size_t end = n;
    if (n > OPMOB_MAX_PACKET)
        return OPMOB_E_OVERSIZED;
    h = opmob_rtp_header_length(pkt, n);
    if (h < 0)
        return h;
    if (pkt[0] & 0x20) {
        size_t padding = pkt[n - 1];
        if (padding == 0 || (size_t)h + padding > end)
            return OPMOB_E_BAD_VALUE;
        end -= padding;
    }
    *off = (size_t)h;
    *len = end - (size_t)h;
    return OPMOB_OK;
}

/* The input's plain RTP: unprotected into t->plain, or the input itself without a session. */
static int32_t plain_input(opmob_tc *t, opmob_srtp *rx, const uint8_t *in, size_t n,
                           const uint8_t **pkt, size_t *plen)
{
    int32_t r;
    if (rx == NULL) {
        *pkt = in;
        *plen = n;
        return OPMOB_OK;
    }
    r = opmob_srtp_unprotect(rx, in, n, t->plain, sizeof(t->plain));
    if (r < 0)
        return r;
    *pkt = t->plain;
    *plen = (size_t)r;
    return OPMOB_OK;
}

static void put_header(uint8_t *p, uint32_t marker, uint32_t pt, uint32_t seq, uint32_t ts, uint32_t ssrc)
{
    p[0] = 0x80;
    p[1] = (uint8_t)((marker ? 0x80u : 0u) | pt);
    opmob_put_be16(p + 2, seq);
    opmob_put_be32(p + 4, ts);
    opmob_put_be32(p + 8, ssrc);
}

/* Protect (or copy) the plain packet t->pkt[0..plen) into out[0..cap). */
static int32_t emit(opmob_tc *t, opmob_srtp *tx, size_t plen, uint8_t *out, size_t cap)
{
    if (tx != NULL)
        return opmob_srtp_protect(tx, t->pkt, plen, out, cap);
    if (cap < plen)
        return OPMOB_E_ARG;
    memcpy(out, t->pkt, plen);
    return (int32_t)plen;
}

static int32_t to_codec2(opmob_tc *t, tc_slot *s, const uint8_t *in, size_t n, uint8_t *out,
                         size_t cap, uint32_t *out_len)
{
    const uint8_t *pkt;
    size_t plen, off, len;
    uint32_t ts, marker, spf;
    int32_t r, i;
    r = plain_input(t, s->cfg.dvi4_rx, in, n, &pkt, &plen);
    if (r == OPMOB_OK)
        r = rtp_split(pkt, plen, &off, &len);
    if (r != OPMOB_OK)
        return r;
    if ((uint32_t)(pkt[1] & 0x7F) != s->cfg.dvi4_pt)
        return OPMOB_E_BAD_VALUE;
    /* Dvi4Decoder(samples=160).decode, into 16-bit samples; out is scratch for the bytes. */
    r = opmob_dvi4_decode(&s->dvi4_dec, pkt + off, len, (uint8_t *)t->pcm, sizeof(t->pcm));
    if (r < 0)
        return r;
    ts = opmob_be32(pkt + 4);
    marker = pkt[1] >> 7;
    spf = (uint32_t)opmob_codec2_samples_per_frame(s->enc);
    if (s->pending_samples != 0 && ts != s->pending_ts + s->pending_samples) {
        s->gaps++;
        s->pending_samples = 0;
    }
    if (s->pending_samples == 0) {
        s->pending_ts = ts;
        s->pending_marker = 0;
    }
    s->pending_marker |= marker;
    {
        const uint8_t *b = (const uint8_t *)t->pcm;
        for (i = 0; i < DVI4_FRAME; i++) {
            uint32_t v = (uint32_t)b[2 * i] | ((uint32_t)b[2 * i + 1] << 8);
            s->pending[s->pending_samples + (uint32_t)i] =
                (int16_t)((v & 0x8000u) ? (int32_t)(v & 0x7FFFu) - 32768 : (int32_t)v);
        }
    }
    s->pending_samples += DVI4_FRAME;
    if (s->pending_samples < spf)
        return 0;
    {
        size_t nbytes = (size_t)opmob_codec2_bytes_per_frame(s->enc);
        put_header(t->pkt, s->pending_marker, s->cfg.codec2_pt, s->codec2_seq, s->pending_ts,
                   s->cfg.codec2_ssrc);
        opmob_codec2_encode_frame(s->enc, s->pending, t->pkt + OPMOB_RTP_HEADER_LEN);
        s->pending_samples = 0;
        r = emit(t, s->cfg.codec2_tx, OPMOB_RTP_HEADER_LEN + nbytes, out, cap);
        if (r < 0)
            return r;
        s->codec2_seq = (s->codec2_seq + 1u) & 0xFFFFu;
        *out_len = (uint32_t)r;
        return 1;
    }
}

static int32_t to_dvi4(opmob_tc *t, tc_slot *s, const uint8_t *in, size_t n, uint8_t *out,
                       size_t cap, size_t room, uint32_t *out_len)
{
    const uint8_t *pkt;
    size_t plen, off, len, bytes;
    size_t used = 0;
    uint32_t ts, marker, spf, k, chunks;
    int32_t r;
    r = plain_input(t, s->cfg.codec2_rx, in, n, &pkt, &plen);
    if (r == OPMOB_OK)
        r = rtp_split(pkt, plen, &off, &len);
    if (r != OPMOB_OK)
        return r;
    if ((uint32_t)(pkt[1] & 0x7F) != s->cfg.codec2_pt)
        return OPMOB_E_BAD_VALUE;
    bytes = (size_t)opmob_codec2_bytes_per_frame(s->dec);
    if (len < bytes)
        return OPMOB_E_TRUNCATED;
    if (len > bytes)
        return OPMOB_E_OVERSIZED;
    spf = (uint32_t)opmob_codec2_samples_per_frame(s->dec);
    chunks = spf / DVI4_FRAME;
    if (room < chunks)
        return OPMOB_E_ARG;
    ts = opmob_be32(pkt + 4);
    marker = pkt[1] >> 7;
    opmob_codec2_decode_frame(s->dec, pkt + off, t->pcm);
    for (k = 0; k < chunks; k++) {
        uint8_t *p = t->pkt;
        put_header(p, k == 0 ? marker : 0, s->cfg.dvi4_pt, s->dvi4_seq, ts + DVI4_FRAME * k,
                   s->cfg.dvi4_ssrc);
        opmob_put_be16(p + OPMOB_RTP_HEADER_LEN, (uint32_t)s->dvi4_enc.predicted & 0xFFFFu);
        p[OPMOB_RTP_HEADER_LEN + 2] = (uint8_t)s->dvi4_enc.index;
        p[OPMOB_RTP_HEADER_LEN + 3] = 0;
        opmob_dvi4_encode_samples(&s->dvi4_enc, t->pcm + DVI4_FRAME * k, DVI4_FRAME,
                                  p + OPMOB_RTP_HEADER_LEN + OPMOB_DVI4_HEADER_LEN);
        r = emit(t, s->cfg.dvi4_tx, OPMOB_RTP_HEADER_LEN + DVI4_PAYLOAD, out + used, cap - used);
        if (r < 0)
            return r;
        s->dvi4_seq = (s->dvi4_seq + 1u) & 0xFFFFu;
        out_len[k] = (uint32_t)r;
        used += (size_t)r;
    }
    return (int32_t)chunks;
}

int32_t opmob_tc_run(opmob_tc *t, int32_t dir, const uint32_t *slots, const uint8_t *in, size_t in_size,
                     const uint32_t *in_len, size_t n, uint8_t *out, size_t out_size, size_t max_out,
                     uint32_t *out_len, int32_t *status)
{
    size_t i, k = 0, in_pos = 0, out_pos = 0;
    if (t == NULL || (dir != OPMOB_TC_TO_CODEC2 && dir != OPMOB_TC_TO_DVI4) || max_out > (size_t)INT32_MAX)
        return OPMOB_E_ARG;
    if (n == 0)
        return 0;
    if (slots == NULL || opmob_batch_check(1, t, in, in_size, in_len, n, out, out_len, status) != OPMOB_OK)
        return OPMOB_E_ARG;
    for (i = 0; i < n; i++) {
        if (slots[i] >= t->max)
            return OPMOB_E_ARG;
    }
    for (i = 0; i < n; i++) {
        tc_slot *s = &t->slots[slots[i]];
        const uint8_t *src = in + in_pos;
        int32_t r;
        in_pos += in_len[i];
        if (!s->open)
            r = OPMOB_E_UNKNOWN_STREAM;
        else if (dir == OPMOB_TC_TO_CODEC2)
            r = k < max_out ? to_codec2(t, s, src, in_len[i], out + out_pos, out_size - out_pos, &out_len[k])
                            : OPMOB_E_ARG;
        else
            r = to_dvi4(t, s, src, in_len[i], out + out_pos, out_size - out_pos, max_out - k, &out_len[k]);
        status[i] = r;
        if (r > 0) {
            size_t j;
            for (j = 0; j < (size_t)r; j++)
                out_pos += out_len[k + j];
            k += (size_t)r;
        }
    }
    return (int32_t)k;
}
