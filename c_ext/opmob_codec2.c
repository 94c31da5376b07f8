/*
 * opmob_codec2.c - Codec2 through libcodec2, one codec state per stream.
 *
 * A state is made once (opmob_codec2_new, at stream set-up) and used for every frame of its
 * stream; it keeps the analysis and synthesis memories, so the bits equal `c2enc`'s for the same
 * speech fed from the start. libcodec2's own defaults are kept (Gray-coded bits, as c2enc).
 * PCM crosses this interface as s16le bytes and is converted to host shorts in a buffer inside
 * the state, so the byte order of the host never shows.
 *
 * libcodec2's decoder draws on a process-wide random generator (its phase synthesis), so decoded
 * audio depends on every decode made before in the process; encoded bits do not.
 */
#include <stdlib.h>
#include <string.h>

#include <codec2/codec2.h>

#include "opmob_internal.h"

struct opmob_codec2 {
    struct CODEC2 *c2;
    int32_t mode;  /* in bits per second, 700 for 700C */
    int32_t spf;   /* samples per frame */
    int32_t bits;  /* bits per frame */
    int32_t bytes; /* bytes per frame */
    short pcm[OPMOB_CODEC2_MAX_SAMPLES];
};

static int lib_mode(int32_t mode)
{
    switch (mode) {
    case 3200:
        return CODEC2_MODE_3200;
    case 2400:
        return CODEC2_MODE_2400;
    case 1600:
        return CODEC2_MODE_1600;
    case 1400:
        return CODEC2_MODE_1400;
    case 1300:
        return CODEC2_MODE_1300;
    case 1200:
        return CODEC2_MODE_1200;
    case 700:
        return CODEC2_MODE_700C;
    default:
        return -1;
    }
}

int32_t opmob_codec2_new(int32_t mode, opmob_codec2 **out)
{
    opmob_codec2 *c;
    int m = lib_mode(mode);
    if (out == NULL)
        return OPMOB_E_ARG;
    *out = NULL;
    if (m < 0)
        return OPMOB_E_ARG;
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return OPMOB_E_NOMEM;
    c->c2 = codec2_create(m);
    if (c->c2 == NULL) {
        free(c);
        return OPMOB_E_NOMEM;
    }
    c->mode = mode;
    c->spf = codec2_samples_per_frame(c->c2);
    c->bits = codec2_bits_per_frame(c->c2);
    c->bytes = codec2_bytes_per_frame(c->c2);
    /* The buffers here are sized for the 8 kHz modes; refuse a library that disagrees. */
    if (c->spf <= 0 || c->spf > OPMOB_CODEC2_MAX_SAMPLES || c->bytes <= 0 ||
        c->bytes > OPMOB_CODEC2_MAX_BYTES || c->bits > 8 * c->bytes) {
        opmob_codec2_free(c);
        return OPMOB_E_ARG;
    }
    *out = c;
    return OPMOB_OK;
}

void opmob_codec2_free(opmob_codec2 *c)
{
    if (c == NULL)
        return;
    if (c->c2 != NULL)
        codec2_destroy(c->c2);
    free(c);
}

int32_t opmob_codec2_samples_per_frame(const opmob_codec2 *c) { return c == NULL ? OPMOB_E_ARG : c->spf; }
int32_t opmob_codec2_bits_per_frame(const opmob_codec2 *c) { return c == NULL ? OPMOB_E_ARG : c->bits; }
int32_t opmob_codec2_bytes_per_frame(const opmob_codec2 *c) { return c == NULL ? OPMOB_E_ARG : c->bytes; }

void opmob_codec2_encode_frame(opmob_codec2 *c, const int16_t *pcm, uint8_t *bits)
{
    int32_t i;
    for (i = 0; i < c->spf; i++)
        c->pcm[i] = pcm[i];
    codec2_encode(c->c2, bits, c->pcm);
}

void opmob_codec2_decode_frame(opmob_codec2 *c, const uint8_t *bits, int16_t *pcm)
{
    int32_t i;
    codec2_decode(c->c2, c->pcm, bits);
    for (i = 0; i < c->spf; i++)
        pcm[i] = c->pcm[i];
}

int32_t opmob_codec2_encode(opmob_codec2 *c, const uint8_t *pcm, size_t pcm_len, uint8_t *out,
                            size_t out_cap)
{
    size_t frame_bytes, frames, f;
    int32_t i;
    if (c == NULL || pcm == NULL || out == NULL)
        return OPMOB_E_ARG;
    frame_bytes = 2u * (size_t)c->spf;
    if (pcm_len == 0 || pcm_len % frame_bytes != 0)
        return OPMOB_E_ARG;
    frames = pcm_len / frame_bytes;
    if (out_cap / (size_t)c->bytes < frames || frames > (size_t)INT32_MAX / (size_t)c->bytes)
        return OPMOB_E_ARG;
    for (f = 0; f < frames; f++) {
        const uint8_t *p = pcm + f * frame_bytes;
        for (i = 0; i < c->spf; i++) {
            uint32_t v = (uint32_t)p[2 * i] | ((uint32_t)p[2 * i + 1] << 8);
            c->pcm[i] = (short)((v & 0x8000u) ? (int32_t)(v & 0x7FFFu) - 32768 : (int32_t)v);
        }
        codec2_encode(c->c2, out + f * (size_t)c->bytes, c->pcm);
    }
    return (int32_t)(frames * (size_t)c->bytes);
}

int32_t opmob_codec2_decode(opmob_codec2 *c, const uint8_t *bits, size_t len, uint8_t *out,
                            size_t out_cap)
{
    size_t frame_bytes, frames, f;
    int32_t i;
    if (c == NULL || bits == NULL || out == NULL)
        return OPMOB_E_ARG;
    /* Bits come from the network: a missing or partial frame is Truncated. */
    if (len < (size_t)c->bytes || len % (size_t)c->bytes != 0)
        return OPMOB_E_TRUNCATED;
    frames = len / (size_t)c->bytes;
    frame_bytes = 2u * (size_t)c->spf;
    if (out_cap / frame_bytes < frames || frames > (size_t)INT32_MAX / frame_bytes)
        return OPMOB_E_ARG;
    for (f = 0; f < frames; f++) {
        uint8_t *p = out + f * frame_bytes;
        codec2_decode(c->c2, c->pcm, bits + f * (size_t)c->bytes);
        for (i = 0; i < c->spf; i++) {
            uint32_t v = (uint32_t)(int32_t)c->pcm[i] & 0xFFFFu;
            p[2 * i] = (uint8_t)v;
            p[2 * i + 1] = (uint8_t)(v >> 8);
        }
    }
    return (int32_t)(frames * frame_bytes);
}

int32_t opmob_codec2_batch(int32_t op, opmob_codec2 *const *objs, size_t nobj, const uint8_t *in,
                           size_t in_size, const uint32_t *in_len, size_t n, uint8_t *out,
                           size_t out_size, uint32_t *out_len, int32_t *status)
{
    size_t i, in_pos = 0, out_pos = 0;
    int32_t ok = 0;
    if (op != OPMOB_OP_ENCODE && op != OPMOB_OP_DECODE)
        return OPMOB_E_ARG;
    if (opmob_batch_check(nobj, objs, in, in_size, in_len, n, out, out_len, status) != OPMOB_OK)
        return OPMOB_E_ARG;
    for (i = 0; i < n; i++) {
        opmob_codec2 *c = objs[nobj == 1 ? 0 : i];
        int32_t r = op == OPMOB_OP_ENCODE
                        ? opmob_codec2_encode(c, in + in_pos, in_len[i], out + out_pos, out_size - out_pos)
                        : opmob_codec2_decode(c, in + in_pos, in_len[i], out + out_pos, out_size - out_pos);
        in_pos += in_len[i];
        ok += opmob_batch_item(r, i, &out_pos, out_len, status);
    }
    return ok;
}
