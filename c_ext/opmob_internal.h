/* opmob_internal.h - helpers shared by the C sources; not part of the cffi interface. */
#ifndef OPMOB_INTERNAL_H
#define OPMOB_INTERNAL_H

#include "opmob_c.h"

#define OPMOB_RTP_HEADER_LEN 12u
#define OPMOB_RTCP_HEADER_LEN 8u

static inline uint32_t opmob_be16(const uint8_t *p) { return ((uint32_t)p[0] << 8) | p[1]; }

static inline uint32_t opmob_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void opmob_put_be16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void opmob_put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* rtp.header_length: the RTP header's length (fixed part, CSRCs, extension), or an error, with
   the twin's checks in the twin's order. */
static inline int32_t opmob_rtp_header_length(const uint8_t *pkt, size_t n)
{
    size_t hlen;
    if (n < OPMOB_RTP_HEADER_LEN)
        return OPMOB_E_TRUNCATED;
    if ((pkt[0] >> 6) != 2)
        return OPMOB_E_BAD_VERSION;
    hlen = OPMOB_RTP_HEADER_LEN + 4u * (size_t)(pkt[0] & 0x0F);
    if (pkt[0] & 0x10) {
        if (n < hlen + 4)
            return OPMOB_E_TRUNCATED;
        hlen += 4u + 4u * (size_t)opmob_be16(pkt + hlen + 2);
    }
    if (n < hlen)
        return OPMOB_E_TRUNCATED;
    return (int32_t)hlen;
}

/* The batch convention's argument checks (opmob_c.h): OPMOB_OK when the n inputs, back to back,
   fit in in_size and every array is there. */
int32_t opmob_batch_check(size_t nobj, const void *objs, const uint8_t *in, size_t in_size,
                          const uint32_t *in_len, size_t n, const uint8_t *out,
                          const uint32_t *out_len, const int32_t *status);

/* One batch item's result into the arrays; returns 1 for a success, else 0. */
static inline int32_t opmob_batch_item(int32_t r, size_t i, size_t *out_pos, uint32_t *out_len,
                                       int32_t *status)
{
    if (r >= 0) {
        out_len[i] = (uint32_t)r;
        status[i] = OPMOB_OK;
        *out_pos += (size_t)r;
        return 1;
    }
    out_len[i] = 0;
    status[i] = r;
    return 0;
}

/* The single-step DVI4 codec on int16 samples, used by the pipeline. */
void opmob_dvi4_encode_samples(opmob_dvi4_state *st, const int16_t *pcm, size_t n, uint8_t *codes);
void opmob_dvi4_decode_samples(int32_t predicted, int32_t index, const uint8_t *codes, size_t n,
                               int16_t *pcm, opmob_dvi4_state *end);
/* The Codec2 frame calls on int16 samples: exactly one frame. */
void opmob_codec2_encode_frame(opmob_codec2 *c, const int16_t *pcm, uint8_t *bits);
void opmob_codec2_decode_frame(opmob_codec2 *c, const uint8_t *bits, int16_t *pcm);

#endif
