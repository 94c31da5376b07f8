/*
 * libFuzzer target: SRTP/SRTCP unprotect on arbitrary bytes, and round trips.
 *
 * The first input byte picks the case: unprotect / unprotect_rtcp of the rest as it is (the
 * network's view: nothing may crash, leak or read out of bounds), or protect then unprotect of
 * the rest (what one side protected, the other must give back exactly; a damaged copy must be
 * refused). Its bit 0x40 picks the profile: AES_CM_128_HMAC_SHA1_80 or AEAD_AES_128_GCM, each
 * with its own sessions, so both tag sizes and SRTCP layouts meet the same inputs. Sessions live
 * across inputs, so stream tables fill and replay windows move, and are made anew every 4096
 * inputs. Built by `make fuzz` with clang -fsanitize=fuzzer,address,undefined.
 */
#include <stdlib.h>
#include <string.h>

#include "opmob_c.h"

/* [0]: AES_CM, [1]: GCM. */
static opmob_srtp *txs[2], *rxs[2], *rx2s[2];
static unsigned long inputs;

static void fail(void) { abort(); }

static void fresh(void)
{
    static const uint8_t key[16] = {0xe1, 0xf9, 0x7a, 0x0d, 0x3e, 0x01, 0x8b, 0xe0,
                                    0xd6, 0x4f, 0xa3, 0x2c, 0x06, 0xde, 0x41, 0x39};
    static const uint8_t salt[14] = {0x0e, 0xc6, 0x75, 0xad, 0x49, 0x8a, 0xfe,
                                     0xeb, 0xb6, 0x96, 0x0b, 0x3a, 0xab, 0xe6};
    static const int32_t profiles[2] = {OPMOB_SRTP_AES_CM_128_HMAC_SHA1_80, OPMOB_SRTP_AEAD_AES_128_GCM};
    static const size_t salt_len[2] = {14, 12};
    int p;
    for (p = 0; p < 2; p++) {
        opmob_srtp_free(txs[p]);
        opmob_srtp_free(rxs[p]);
        opmob_srtp_free(rx2s[p]);
        if (opmob_srtp_new_profile(profiles[p], key, 16, salt, salt_len[p], 128, 16, &txs[p]) != 0 ||
            opmob_srtp_new_profile(profiles[p], key, 16, salt, salt_len[p], 128, 16, &rxs[p]) != 0 ||
            opmob_srtp_new_profile(profiles[p], key, 16, salt, salt_len[p], 200, 3, &rx2s[p]) != 0)
            fail();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t prot[OPMOB_MAX_PACKET + 64];
    uint8_t back[OPMOB_MAX_PACKET + 64];
    uint8_t *copy;
    int32_t n, m;
    uint32_t lens[3];
    int32_t status[3];
    uint32_t out_len[3];
    opmob_srtp *objs[1];
    opmob_srtp *tx, *rx, *rx2;
    if (inputs++ % 4096 == 0)
        fresh();
    if (size == 0)
        return 0;
    tx = txs[(data[0] >> 6) & 1];
    rx = rxs[(data[0] >> 6) & 1];
    rx2 = rx2s[(data[0] >> 6) & 1];
    /* The rest in a buffer of its own size, so ASan sees any read past its end. */
    copy = malloc(size - 1 ? size - 1 : 1);
    if (copy == NULL)
        return 0;
    memcpy(copy, data + 1, size - 1);
    size -= 1;
    switch (data[0] % 6) {
    case 0:
        opmob_srtp_unprotect(rx, copy, size, back, sizeof(back));
        opmob_srtp_unprotect(rx2, copy, size, back, sizeof(back));
        break;
    case 1:
        opmob_srtp_unprotect_rtcp(rx, copy, size, back, sizeof(back));
        opmob_srtp_unprotect_rtcp(rx2, copy, size, back, sizeof(back));
        break;
    case 2:
    case 3: {
        int rtcp = data[0] % 6 == 3;
        n = rtcp ? opmob_srtp_protect_rtcp(tx, copy, size, prot, sizeof(prot))
                 : opmob_srtp_protect(tx, copy, size, prot, sizeof(prot));
        if (n < 0)
            break;
        if (size > 0 && (data[0] & 0x80)) {
            /* A damaged copy must be refused, whatever bit. */
            uint8_t bad[OPMOB_MAX_PACKET + 64];
            memcpy(bad, prot, (size_t)n);
            bad[(size_t)data[0] % (size_t)n] ^= 0x04;
            m = rtcp ? opmob_srtp_unprotect_rtcp(rx, bad, (size_t)n, back, sizeof(back))
                     : opmob_srtp_unprotect(rx, bad, (size_t)n, back, sizeof(back));
            if (m >= 0)
                fail();
        }
        m = rtcp ? opmob_srtp_unprotect_rtcp(rx, prot, (size_t)n, back, sizeof(back))
                 : opmob_srtp_unprotect(rx, prot, (size_t)n, back, sizeof(back));
        if (m != (int32_t)size || memcmp(back, copy, size) != 0)
            fail();
        break;
    }
    default: {
        /* The batch entry: the input cut in up to three packets. */
        size_t a = size / 3, b = size / 3, c = size - a - b;
        uint8_t out[3 * (OPMOB_MAX_PACKET + 64)];
        lens[0] = (uint32_t)a;
        lens[1] = (uint32_t)b;
        lens[2] = (uint32_t)c;
        objs[0] = rx;
        if (opmob_srtp_batch(data[0] & 1 ? OPMOB_OP_UNPROTECT : OPMOB_OP_UNPROTECT_RTCP, objs, 1, copy, size, lens, 3,
                             out, sizeof(out), out_len, status) < 0)
            fail();
        break;
    }
    }
    free(copy);
    return 0;
}
