/*
 * libFuzzer target: the relay's pipeline on arbitrary packets, both directions, in every
 * supported Codec2 mode, on a plain slot (the bytes reach the RTP, DVI4 and Codec2 decoders
 * directly) and an SRTP slot (the bytes are first protected under the slot's key, so the
 * authenticated path is reached too), plus Codec2 decode of arbitrary bits.
 */
#include <stdlib.h>
#include <string.h>

#include "opmob_c.h"

static void fail(void) { abort(); }

static opmob_tc *tc[3];
static opmob_srtp *acc_tx, *acc_rx, *back_tx, *back_rx, *out_tx;
static opmob_codec2 *c2[3];

static void setup(void)
{
    static const int32_t modes[3] = {3200, 1600, 700};
    uint8_t key[16], salt[14];
    int i;
    memset(key, 0x11, sizeof(key));
    memset(salt, 0x22, sizeof(salt));
    if (opmob_srtp_new(key, 16, salt, 14, 128, 64, &acc_tx) || opmob_srtp_new(key, 16, salt, 14, 128, 64, &acc_rx) ||
        opmob_srtp_new(key, 16, salt, 14, 128, 64, &back_tx) || opmob_srtp_new(key, 16, salt, 14, 128, 64, &back_rx) ||
        opmob_srtp_new(key, 16, salt, 14, 128, 64, &out_tx))
        fail();
    for (i = 0; i < 3; i++) {
        opmob_tc_config cfg;
        memset(&cfg, 0, sizeof(cfg));
        cfg.codec2_mode = modes[i];
        cfg.dvi4_pt = 5;
        cfg.codec2_pt = 96;
        cfg.codec2_ssrc = 0x1234;
        cfg.dvi4_ssrc = 0x5678;
        if (opmob_tc_new(2, &tc[i]) || opmob_tc_open(tc[i], 0, &cfg) || opmob_codec2_new(modes[i], &c2[i]))
            fail();
        cfg.dvi4_rx = acc_rx;
        cfg.codec2_tx = out_tx;
        cfg.codec2_rx = back_rx;
        cfg.dvi4_tx = out_tx;
        if (opmob_tc_open(tc[i], 1, &cfg))
            fail();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    uint8_t out[4 * (OPMOB_MAX_PACKET + 64)];
    uint8_t prot[OPMOB_MAX_PACKET + 64];
    uint8_t pcm[2 * 320 * 8];
    uint32_t slots[2] = {0, 1}, in_len[2], out_len[4];
    int32_t status[2], r, k, i;
    uint8_t *copy;
    size_t total;
    int which;
    if (!ready) {
        setup();
        ready = 1;
    }
    if (size < 1)
        return 0;
    which = data[0] % 3;
    copy = malloc(2 * size + 64);
    if (copy == NULL)
        return 0;
    /* Item 0: the bytes as they are on the plain slot; item 1: protected for the SRTP slot. */
    memcpy(copy, data + 1, size - 1);
    in_len[0] = (uint32_t)(size - 1);
    r = (data[0] & 0x80) ? opmob_srtp_protect(back_tx, data + 1, size - 1, prot, sizeof(prot))
                         : opmob_srtp_protect(acc_tx, data + 1, size - 1, prot, sizeof(prot));
    if (r < 0) {
        memcpy(copy + size - 1, data + 1, size - 1);
        in_len[1] = (uint32_t)(size - 1);
    } else {
        memcpy(copy + size - 1, prot, (size_t)r);
        in_len[1] = (uint32_t)r;
    }
    total = in_len[0] + in_len[1];
    k = opmob_tc_run(tc[which], (data[0] & 0x80) ? OPMOB_TC_TO_DVI4 : OPMOB_TC_TO_CODEC2, slots, copy, total, in_len,
                     2, out, sizeof(out), 4, out_len, status);
    if (k < 0)
        fail();
    for (i = 0; i < 2; i++)
        if (status[i] > 2)
            fail();
    /* Codec2 decode of the raw bytes, when they are whole frames. */
    r = opmob_codec2_decode(c2[which], copy, size - 1 > 64 ? 64 : size - 1, pcm, sizeof(pcm));
    (void)r;
    free(copy);
    return 0;
}
