/*
 * opmob_dvi4.c - DVI4 / IMA ADPCM (RFC 3551 4.5.1), bit-identical to firmware/opmob/dvi4.py.
 *
 * Payload: predicted (int16 BE), step index (uint8, 0..88), reserved (uint8), then two coded
 * samples per octet, the first in the high nibble. PCM is s16le whatever the host's byte order.
 * The arithmetic is the IMA reference's (and audioop's): successive approximation of the
 * difference, the reconstruction built alongside, clamps to int16 and to the index table.
 */
#include "opmob_internal.h"

static const int32_t STEP_SIZES[89] = {
    7,     8,     9,     10,    11,    12,    13,    14,    16,    17,    19,    21,    23,
    25,    28,    31,    34,    37,    41,    45,    50,    55,    60,    66,    73,    80,
    88,    97,    107,   118,   130,   143,   157,   173,   190,   209,   230,   253,   279,
    307,   337,   371,   408,   449,   494,   544,   598,   658,   724,   796,   876,   963,
    1060,  1166,  1282,  1411,  1552,  1707,  1878,  2066,  2272,  2499,  2749,  3024,  3327,
    3660,  4026,  4428,  4871,  5358,  5894,  6484,  7132,  7845,  8630,  9493,  10442, 11487,
    12635, 13899, 15289, 16818, 18500, 20350, 22385, 24623, 27086, 29794, 32767,
};

static const int32_t INDEX_ADJUST[8] = {-1, -1, -1, -1, 2, 4, 6, 8};

static inline int32_t clamp_index(int32_t i)
{
    return i < 0 ? 0 : (i > OPMOB_DVI4_MAX_INDEX ? OPMOB_DVI4_MAX_INDEX : i);
}

/* A 16-bit pattern as a signed value, without implementation-defined conversions. */
static inline int32_t s16(uint32_t v) { return (v & 0x8000u) ? (int32_t)(v & 0x7FFFu) - 32768 : (int32_t)(v & 0x7FFFu); }

static inline int32_t clamp16(int32_t v) { return v < -32768 ? -32768 : (v > 32767 ? 32767 : v); }

/* One sample through the encoder: returns the 4-bit code, moves *valpred and *index. */
static inline uint32_t encode_one(int32_t sample, int32_t *valpred, int32_t *index)
{
    int32_t step = STEP_SIZES[*index];
    int32_t diff;
    int32_t vpdiff = step >> 3;
    uint32_t code;
    if (sample < *valpred) {
        diff = *valpred - sample;
        code = 8;
    } else {
        diff = sample - *valpred;
        code = 0;
    }
    if (diff >= step) {
        code |= 4;
        diff -= step;
        vpdiff += step;
    }
    if (diff >= step >> 1) {
        code |= 2;
        diff -= step >> 1;
        vpdiff += step >> 1;
    }
    if (diff >= step >> 2) {
        code |= 1;
        vpdiff += step >> 2;
    }
    *valpred = clamp16((code & 8) ? *valpred - vpdiff : *valpred + vpdiff);
    *index = clamp_index(*index + INDEX_ADJUST[code & 7]);
    return code;
}

static inline int32_t decode_one(uint32_t code, int32_t *valpred, int32_t *index)
{
    int32_t step = STEP_SIZES[*index];
    int32_t vpdiff = step >> 3;
    if (code & 4)
        vpdiff += step;
    if (code & 2)
        vpdiff += step >> 1;
    if (code & 1)
        vpdiff += step >> 2;
    *valpred = clamp16((code & 8) ? *valpred - vpdiff : *valpred + vpdiff);
    *index = clamp_index(*index + INDEX_ADJUST[code & 7]);
    return *valpred;
}

void opmob_dvi4_encode_samples(opmob_dvi4_state *st, const int16_t *pcm, size_t n, uint8_t *codes)
{
    int32_t valpred = st->predicted;
    int32_t index = st->index;
    size_t i;
    for (i = 0; i + 1 < n; i += 2) {
        uint32_t hi = encode_one(pcm[i], &valpred, &index);
        uint32_t lo = encode_one(pcm[i + 1], &valpred, &index);
        codes[i >> 1] = (uint8_t)((hi << 4) | lo);
    }
    st->predicted = valpred;
    st->index = index;
}

void opmob_dvi4_decode_samples(int32_t predicted, int32_t index, const uint8_t *codes, size_t n,
                               int16_t *pcm, opmob_dvi4_state *end)
{
    size_t i;
    for (i = 0; i + 1 < n; i += 2) {
        uint32_t octet = codes[i >> 1];
        pcm[i] = (int16_t)decode_one(octet >> 4, &predicted, &index);
        pcm[i + 1] = (int16_t)decode_one(octet & 15, &predicted, &index);
    }
    end->predicted = predicted;
    end->index = index;
}

static int32_t valid_state(const opmob_dvi4_state *st)
{
    return st->predicted >= -32768 && st->predicted <= 32767 && st->index >= 0 &&
           st->index <= OPMOB_DVI4_MAX_INDEX;
}

int32_t opmob_dvi4_encode(opmob_dvi4_state *st, const uint8_t *pcm, size_t pcm_len, uint8_t *out,
                          size_t out_cap)
{
    int32_t valpred, index;
    size_t n, i, need;
    if (st == NULL || pcm == NULL || out == NULL || !valid_state(st))
        return OPMOB_E_ARG;
    /* _pcm_samples: a non-zero even sample count (4 PCM bytes per code octet), at most 960. */
    if ((pcm_len & 3u) != 0 || pcm_len == 0 || pcm_len > 2u * OPMOB_DVI4_MAX_SAMPLES)
        return OPMOB_E_ARG;
    n = pcm_len >> 1;
    need = OPMOB_DVI4_HEADER_LEN + (n >> 1);
    if (out_cap < need)
        return OPMOB_E_ARG;
    valpred = st->predicted;
    index = st->index;
    opmob_put_be16(out, (uint32_t)valpred & 0xFFFFu);
    out[2] = (uint8_t)index;
    out[3] = 0;
    for (i = 0; i < n; i += 2) {
        int32_t s0 = s16(pcm[2 * i] | ((uint32_t)pcm[2 * i + 1] << 8));
        int32_t s1 = s16(pcm[2 * i + 2] | ((uint32_t)pcm[2 * i + 3] << 8));
        uint32_t hi = encode_one(s0, &valpred, &index);
        uint32_t lo = encode_one(s1, &valpred, &index);
        out[OPMOB_DVI4_HEADER_LEN + (i >> 1)] = (uint8_t)((hi << 4) | lo);
    }
    st->predicted = valpred;
    st->index = index;
    return (int32_t)need;
}

int32_t opmob_dvi4_payload_samples(const opmob_dvi4_dec *d, const uint8_t *payload, size_t len)
{
    if (payload == NULL)
        return OPMOB_E_ARG;
    /* _payload_samples, in the twin's order: length against the rule, then the step index. */
    if (d == NULL || d->samples == 0) {
        if (len <= OPMOB_DVI4_HEADER_LEN)
            return OPMOB_E_TRUNCATED;
        if (len > OPMOB_DVI4_HEADER_LEN + (OPMOB_DVI4_MAX_SAMPLES >> 1))
            return OPMOB_E_OVERSIZED;
    } else {
        size_t need;
        if (d->samples < 2 || (d->samples & 1) || d->samples > OPMOB_DVI4_MAX_SAMPLES)
            return OPMOB_E_ARG;
        need = OPMOB_DVI4_HEADER_LEN + ((size_t)d->samples >> 1);
        if (len < need)
            return OPMOB_E_TRUNCATED;
        if (len > need)
            return OPMOB_E_OVERSIZED;
    }
    if (payload[2] > OPMOB_DVI4_MAX_INDEX)
        return OPMOB_E_BAD_VALUE;
    return (int32_t)((len - OPMOB_DVI4_HEADER_LEN) << 1);
}

int32_t opmob_dvi4_decode(opmob_dvi4_dec *d, const uint8_t *payload, size_t len, uint8_t *out,
                          size_t out_cap)
{
    size_t n, i;
    int32_t valpred, index;
    uint32_t head;
    int32_t r;
    if (payload == NULL || out == NULL)
        return OPMOB_E_ARG;
    r = opmob_dvi4_payload_samples(d, payload, len);
    if (r < 0)
        return r;
    n = (len - OPMOB_DVI4_HEADER_LEN) << 1;
    if (out_cap < 2 * n)
        return OPMOB_E_ARG;
    head = opmob_be16(payload);
    valpred = s16(head);
    index = payload[2];
    for (i = 0; i < n; i += 2) {
        uint32_t octet = payload[OPMOB_DVI4_HEADER_LEN + (i >> 1)];
        uint32_t v0 = (uint32_t)decode_one(octet >> 4, &valpred, &index) & 0xFFFFu;
        uint32_t v1 = (uint32_t)decode_one(octet & 15, &valpred, &index) & 0xFFFFu;
        out[2 * i] = (uint8_t)v0;
        out[2 * i + 1] = (uint8_t)(v0 >> 8);
        out[2 * i + 2] = (uint8_t)v1;
        out[2 * i + 3] = (uint8_t)(v1 >> 8);
    }
    if (d != NULL) {
        if (d->frames != 0 &&
            ((int32_t)payload[2] != d->index || head != ((uint32_t)d->predicted & 0xFFFFu)))
            d->resyncs++;
        if (payload[3] != 0)
            d->reserved_nonzero++;
        d->frames++;
        d->predicted = valpred;
        d->index = index;
    }
    return (int32_t)(2 * n);
}

int32_t opmob_batch_check(size_t nobj, const void *objs, const uint8_t *in, size_t in_size,
                          const uint32_t *in_len, size_t n, const uint8_t *out,
                          const uint32_t *out_len, const int32_t *status)
{
    size_t i, total = 0;
    if (n == 0)
        return OPMOB_OK;
    if ((nobj != 1 && nobj != n) || objs == NULL || in == NULL || in_len == NULL || out == NULL ||
        out_len == NULL || status == NULL)
        return OPMOB_E_ARG;
    for (i = 0; i < n; i++) {
        if (in_len[i] > in_size - total)
            return OPMOB_E_ARG;
        total += in_len[i];
    }
    return OPMOB_OK;
}

int32_t opmob_dvi4_batch(int32_t op, void *const *objs, size_t nobj, const uint8_t *in,
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
        void *obj = objs[nobj == 1 ? 0 : i];
        int32_t r;
        if (op == OPMOB_OP_ENCODE)
            r = opmob_dvi4_encode((opmob_dvi4_state *)obj, in + in_pos, in_len[i], out + out_pos,
                                  out_size - out_pos);
        else
            r = opmob_dvi4_decode((opmob_dvi4_dec *)obj, in + in_pos, in_len[i], out + out_pos,
                                  out_size - out_pos);
        in_pos += in_len[i];
        ok += opmob_batch_item(r, i, &out_pos, out_len, status);
    }
    return ok;
}
