/*
 * libFuzzer target: DVI4 decode (a decoder with each payload-size rule, and decode_frame) and
 * encode of arbitrary bytes, single and batch. Every accepted payload must decode to exactly
 * 4 * (len - 4) bytes of PCM, and the decoder's state must stay a valid codec state.
 */
#include <stdlib.h>
#include <string.h>

#include "opmob_c.h"

static void fail(void) { abort(); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const int32_t rules[4] = {160, 0, 2, 960};
    uint8_t pcm[2 * OPMOB_DVI4_MAX_SAMPLES];
    uint8_t payload[OPMOB_DVI4_HEADER_LEN + OPMOB_DVI4_MAX_SAMPLES / 2];
    uint8_t *copy = malloc(size ? size : 1);
    int32_t r, n, i;
    opmob_dvi4_dec d;
    opmob_dvi4_state st;
    if (copy == NULL)
        return 0;
    memcpy(copy, data, size);
    for (i = 0; i < 4; i++) {
        memset(&d, 0, sizeof(d));
        d.samples = rules[i];
        n = opmob_dvi4_payload_samples(&d, copy, size);
        r = opmob_dvi4_decode(&d, copy, size, pcm, sizeof(pcm));
        /* The check and the decode agree: the same error, or 2 bytes per sample. */
        if (r != (n < 0 ? n : 2 * n))
            fail();
        if (r >= 0 && ((size_t)r != 4 * (size - 4) || d.index < 0 || d.index > 88 || d.frames != 1))
            fail();
    }
    r = opmob_dvi4_decode(NULL, copy, size, pcm, sizeof(pcm));
    if (r >= 0 && (size_t)r != 4 * (size - 4))
        fail();
    /* Encode the bytes as PCM from a state taken from them, then decode what came out. */
    st.predicted = size >= 2 ? (int32_t)((data[0] << 8) | data[1]) - 32768 : 0;
    st.index = size >= 3 ? data[2] % 89 : 0;
    r = opmob_dvi4_encode(&st, copy, size, payload, sizeof(payload));
    if (r >= 0) {
        if ((size_t)r != 4 + size / 4 || st.index < 0 || st.index > 88)
            fail();
        if (opmob_dvi4_decode(NULL, payload, (size_t)r, pcm, sizeof(pcm)) != (int32_t)size)
            fail();
    }
    {
        /* The batch entry, two decoders and decode_frame's rule. */
        uint32_t lens[3], out_len[3];
        int32_t status[3];
        uint8_t out[3 * 2 * OPMOB_DVI4_MAX_SAMPLES];
        opmob_dvi4_dec d2;
        void *objs[3];
        memset(&d, 0, sizeof(d));
        memset(&d2, 0, sizeof(d2));
        d.samples = 160;
        objs[0] = &d;
        objs[1] = NULL;
        objs[2] = &d2;
        lens[0] = (uint32_t)(size / 3);
        lens[1] = (uint32_t)(size / 3);
        lens[2] = (uint32_t)(size - 2 * (size / 3));
        if (opmob_dvi4_batch(OPMOB_OP_DECODE, objs, 3, copy, size, lens, 3, out, sizeof(out), out_len, status) < 0)
            fail();
    }
    free(copy);
    return 0;
}
