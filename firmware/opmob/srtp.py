"""SRTP and SRTCP with AES_CM_128_HMAC_SHA1_80 (RFC 3711) or AEAD_AES_128_GCM (RFC 7714), sans-I/O.

An ``SrtpSession`` is one crypto context for one master key, like a libsrtp session whose policy
is "any SSRC": a stream is made per SSRC when first used, outbound streams (``protect``) apart from
inbound ones (``unprotect``). Key derivation rate 0; 80-bit tags for SRTP and SRTCP; SRTCP is
always encrypted, and an SRTCP packet that says it is not (E = 0) is refused with BadValue, even
with a good tag, as libsrtp does: a peer sending floor control in clear is misconfigured, and
accepting it would hide that.

The output is byte-for-byte libsrtp 2's (tests/vectors/srtp_libsrtp.json), so the choices that the
RFC leaves open follow libsrtp:
- the packet index is estimated as libsrtp's ``rdbx`` does (RFC 3711 §3.3.1, but never guessing a
  ROC of -1 while the highest index is at most 2^15);
- the sender keeps the same replay window as the receiver and refuses to reuse an index, because
  a reused index means a reused keystream;
- the first SRTCP index sent is 1 (libsrtp counts before sending);
- a replay window of 128 by default, for SRTP and SRTCP alike.

Unprotect checks the tag before it moves any state: a forged packet changes no ROC, no window and
creates no stream. Streams are never evicted, since an evicted stream forgets its replay window and
its old packets would play again; once ``max_streams`` SSRCs are known in a direction, a new SSRC
gets ``UnknownStream``. As only an authentic packet creates an inbound stream, only a key holder
can fill the table.

The profile is chosen per session (``profile=``, the DTLS-SRTP protection profile ids):
``PROFILE_AES_CM_128_HMAC_SHA1_80`` (the default: 14-byte master salt, 10-byte tag) or
``PROFILE_AEAD_AES_128_GCM`` (3GPP TS 33.180's own; 12-byte master salt, 16-byte tag). GCM keeps
everything above (streams, index estimate, windows, order of checks) and changes the crypto, as
libsrtp does: session key and 12-byte salt from the same AES-CM KDF with the master salt
zero-padded to 14 bytes; IV = (00 00 || SSRC || ROC || SEQ) XOR salt, the whole RTP header as
AAD, the tag after the payload; SRTCP IV = (00 00 || SSRC || 00 00 || 0 || index) XOR salt, AAD =
header || E + index, laid out header | ciphertext | tag | E + index. GCM runs on CPython only
(``cryptography``'s AESGCM): MicroPython's ``cryptolib`` has no GCM, and the constructor says so.
The AES_CM paths, the accessory's, are the same code with or without GCM around.
"""

import struct

from opmob.compat import IS_MICROPYTHON, AesCtr, AesEcb, AesGcm, HmacSha1

if IS_MICROPYTHON:
    from uctypes import addressof
from opmob.errors import AuthFailed, BadValue, BadVersion, Oversized, Replayed, Truncated, UnknownStream
from opmob.rtp import MAX_PACKET

MASTER_KEY_LEN = 16
MASTER_SALT_LEN = 14
SESSION_KEY_LEN = 16
SESSION_SALT_LEN = 14
AUTH_KEY_LEN = 20
TAG_LEN = 10
RTCP_HEADER_LEN = 8
SRTCP_TRAILER_LEN = 4 + TAG_LEN  # E flag and 31-bit index, then the tag
MAX_PAYLOAD = AesCtr.MAX  # bytes under encryption in one packet
MAX_ROC = 0xFFFFFFFF
MAX_SRTCP_INDEX = 0x7FFFFFFF
DEFAULT_REPLAY_WINDOW = 128

# Protection profiles: their DTLS-SRTP protection profile ids (RFC 5764 §4.1.2, RFC 7714 §14.2).
PROFILE_AES_CM_128_HMAC_SHA1_80 = 1
PROFILE_AEAD_AES_128_GCM = 7
GCM_MASTER_SALT_LEN = 12
GCM_SESSION_SALT_LEN = 12
GCM_TAG_LEN = 16
GCM_SRTCP_TRAILER_LEN = GCM_TAG_LEN + 4  # the tag, then the E flag and 31-bit index

# Key derivation labels (RFC 3711 §4.3.1, §4.3.2).
LABEL_RTP_ENCRYPTION = 0
LABEL_RTP_AUTH = 1
LABEL_RTP_SALT = 2
LABEL_RTCP_ENCRYPTION = 3
LABEL_RTCP_AUTH = 4
LABEL_RTCP_SALT = 5

_E_FLAG = 0x80000000


class KeyExpired(BadValue):
    """A stream has used up its index space (2^48 SRTP, 2^31 SRTCP packets): the key must change."""

    counter = "key_expired"


def kdf(master_key, master_salt, label, length):
    """The AES-CM key derivation PRF of RFC 3711 §4.3.1 with key derivation rate 0. A 12-byte
    master salt (GCM) is zero-padded to 14 bytes, as libsrtp does."""
    n = len(master_salt)
    if len(master_key) != MASTER_KEY_LEN or (n != MASTER_SALT_LEN and n != GCM_MASTER_SALT_LEN):
        raise ValueError("SRTP master key must be 16 bytes and master salt 14 (12 for GCM)")
    if not 0 <= label <= 255:
        raise ValueError("SRTP key derivation label out of range")
    # key_id = label || r with r = 0 (rate 0): the label lands on byte 7 of the 14-byte salt.
    iv = bytearray(master_salt) + bytes(16 - n)
    iv[7] ^= label
    ecb = AesEcb(master_key)
    out = b""
    j = 0
    while len(out) < length:
        iv[14] = j >> 8
        iv[15] = j & 0xFF
        out += ecb.encrypt_block(iv)
        j += 1
    return out[:length]


def derive_session_keys(master_key, master_salt):
    """(rtp_key, rtp_auth_key, rtp_salt, rtcp_key, rtcp_auth_key, rtcp_salt) for one master key."""
    return (
        kdf(master_key, master_salt, LABEL_RTP_ENCRYPTION, SESSION_KEY_LEN),
        kdf(master_key, master_salt, LABEL_RTP_AUTH, AUTH_KEY_LEN),
        kdf(master_key, master_salt, LABEL_RTP_SALT, SESSION_SALT_LEN),
        kdf(master_key, master_salt, LABEL_RTCP_ENCRYPTION, SESSION_KEY_LEN),
        kdf(master_key, master_salt, LABEL_RTCP_AUTH, AUTH_KEY_LEN),
        kdf(master_key, master_salt, LABEL_RTCP_SALT, SESSION_SALT_LEN),
    )


class SessionCrypto:
    """The session keys of one kind (SRTP or SRTCP): AES-CM cipher, HMAC-SHA1, IV salt."""

    def __init__(self, key, auth_key, salt):
        if len(key) != SESSION_KEY_LEN or len(salt) != SESSION_SALT_LEN:
            raise ValueError("SRTP session key must be 16 bytes and session salt 14")
        self.ctr = AesCtr(key)
        self.mac = HmacSha1(auth_key)
        # The salt is kept as integers so an IV costs one pack_into and no allocation.
        self._s0, self._s1, self._s2, self._s3 = struct.unpack(">IIIH", salt)
        self._iv = bytearray(16)

    def iv(self, ssrc, index_hi, index_lo):
        """IV = salt * 2^16 XOR SSRC * 2^64 XOR index * 2^16 (§4.1.1), for the 48-bit index
        ``index_hi * 2^16 + index_lo``. The buffer is reused: consume it before the next call."""
        iv = self._iv
        struct.pack_into(">IIIH", iv, 0, self._s0, self._s1 ^ ssrc, self._s2 ^ index_hi, self._s3 ^ index_lo)
        return iv

    def tag(self, *parts):
        return self.mac.digest(*parts)[:TAG_LEN]


def master_salt_len(profile):
    """The master salt length of ``profile``; ValueError for a profile we do not have."""
    if profile == PROFILE_AES_CM_128_HMAC_SHA1_80:
        return MASTER_SALT_LEN
    if profile == PROFILE_AEAD_AES_128_GCM:
        return GCM_MASTER_SALT_LEN
    raise ValueError("unknown SRTP profile %r" % (profile,))


class GcmCrypto:
    """The session key and 12-byte salt of one kind (SRTP or SRTCP) under AEAD_AES_128_GCM."""

    def __init__(self, key, salt):
        if len(key) != SESSION_KEY_LEN or len(salt) != GCM_SESSION_SALT_LEN:
            raise ValueError("SRTP GCM session key must be 16 bytes and session salt 12")
        self.aead = AesGcm(key)
        self._salt = bytes(salt)

    def iv(self, ssrc, index_hi, index_lo):
        """IV = (00 00 || SSRC || 48-bit index) XOR salt (RFC 7714 §8.1, §9.1), the index being
        ``index_hi * 2^16 + index_lo``: ROC || SEQ, or 00 00 || 0 || the SRTCP index."""
        v = struct.pack(">HIIH", 0, ssrc, index_hi, index_lo)
        return bytes(a ^ b for a, b in zip(v, self._salt))


class _Stream:
    # One SSRC in one direction. RTP: ROC and sequence number of the highest index, and its replay
    # bitmap. SRTCP: highest (inbound) or last sent (outbound) index and its bitmap. All zero at
    # start, as in libsrtp: inbound, nothing is seen yet, so index 0 is still acceptable; outbound,
    # the first SRTCP index is 1.
    #
    # A bitmap is a ring of ``cap`` bits (a power of two >= the replay window, dividing 2^16):
    # bit ``-i & (cap - 1)`` says whether index i was seen, exact for the ``cap`` indices up to the
    # highest. A fixed bytearray, so a packet makes no long integers (as a shifted window would).
    # Since cap divides 2^16, an RTP index's position follows from its sequence number alone.
    __slots__ = ("roc", "seq", "bits", "rtcp_index", "rtcp_bits")

    def __init__(self, nbytes):
        self.roc = 0
        self.seq = 0
        self.bits = bytearray(nbytes)
        self.rtcp_index = 0
        self.rtcp_bits = bytearray(nbytes)


def _seen(ring, pos):
    return (ring[pos >> 3] >> (pos & 7)) & 1


def _check_window(ring, mask, top, d, window):
    # d = candidate index - highest index (top, or just its low bits); d > 0 is always new.
    if d <= 0:
        if d <= -window:
            raise Replayed("index older than the replay window")
        if _seen(ring, -(top + d) & mask):
            raise Replayed("index already seen")


def _add_to_window(ring, mask, top, d):
    if d > 0:
        if d > mask:
            for i in range(len(ring)):
                ring[i] = 0
        else:
            # The indices passed over were not seen: clear what the ring held for them.
            k = 1
            while k < d:
                p = -(top + k) & mask
                ring[p >> 3] &= ~(1 << (p & 7)) & 0xFF
                k += 1
    p = -(top + d) & mask
    ring[p >> 3] |= 1 << (p & 7)


def _window_int(ring, mask, top, window):
    # The window as the integer whose bit k says whether highest - k was seen (stream_state).
    # Index i sits at ring bit -i mod cap, so that is the ring rotated right by -highest mod cap.
    cap = mask + 1
    r = int.from_bytes(ring, "little")
    q = -top & mask
    return ((r >> q) | (r << (cap - q))) & ((1 << window) - 1)


def _tag_equal(tag, pkt, off):
    # Looks at all bytes whatever the first difference, so timing tells nothing of where it lies.
    d = 0
    for i in range(TAG_LEN):
        d |= tag[i] ^ pkt[off + i]
    return d == 0


def _rtp_header_length(buf, n):
    # rtp.header_length for the first n bytes of buf (a caller buffer may be longer).
    if n < 12:
        raise Truncated("RTP packet shorter than 12 bytes")
    b0 = buf[0]
    if b0 >> 6 != 2:
        raise BadVersion("RTP version is not 2")
    hlen = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if n < hlen + 4:
            raise Truncated("RTP header extension cut short")
        hlen += 4 + 4 * ((buf[hlen + 2] << 8) | buf[hlen + 3])
    if n < hlen:
        raise Truncated("RTP header longer than the packet")
    return hlen


def _rtp_header_length_to_protect(buf, n, tag_len):
    """The header's length of the RTP packet ``buf[:n]`` to protect in place with a ``tag_len``-byte
    tag, once its sizes and the room after it are checked."""
    hlen = _rtp_header_length(buf, n)
    if n - hlen > MAX_PAYLOAD or n + tag_len > MAX_PACKET:
        raise Oversized("RTP packet too large to protect")
    if n + tag_len > len(buf):
        raise ValueError("SRTP protect_into: no room for the tag")
    return hlen


def _srtp_header_length(buf, n, tag_len):
    """The RTP header's length in the SRTP packet ``buf[:n]`` with a ``tag_len``-byte tag, once the
    packet's sizes are checked (an int: no allocation on the accessory's path)."""
    if n > MAX_PACKET:
        raise Oversized("SRTP packet larger than %d bytes" % MAX_PACKET)
    hlen = _rtp_header_length(buf, n)
    if n - tag_len < hlen:
        raise Truncated("SRTP packet too short for its header and tag")
    if n - tag_len - hlen > MAX_PAYLOAD:
        raise Oversized("SRTP payload too large")
    return hlen


def _u32(buf, off):
    return (buf[off] << 24) | (buf[off + 1] << 16) | (buf[off + 2] << 8) | buf[off + 3]


class SrtpSession:
    """One SRTP/SRTCP crypto context for one master key, any SSRC (see the module docstring)."""

    def __init__(
        self,
        master_key,
        master_salt,
        replay_window=DEFAULT_REPLAY_WINDOW,
        max_streams=64,
        profile=PROFILE_AES_CM_128_HMAC_SHA1_80,
    ):
        # libsrtp's bounds: RFC 3711 §3.3.2 asks for at least 64, and at 2^15 the window would
        # reach indices whose ROC the estimate cannot tell apart.
        if not 64 <= replay_window < 0x8000:
            raise ValueError("SRTP replay window must be 64..32767")
        if max_streams < 1:
            raise ValueError("SRTP session needs room for at least one stream")
        salt_len = master_salt_len(profile)
        gcm = profile == PROFILE_AEAD_AES_128_GCM
        if gcm and AesGcm is None:
            raise ValueError(
                "SRTP profile AEAD_AES_128_GCM is not available on MicroPython (cryptolib has no "
                "AES-GCM): use AES_CM_128_HMAC_SHA1_80"
            )
        if len(master_key) != MASTER_KEY_LEN or len(master_salt) != salt_len:
            raise ValueError("SRTP master key must be 16 bytes and master salt %d" % salt_len)
        self.replay_window = replay_window
        self.max_streams = max_streams
        self.profile = profile
        cap = 64
        while cap < replay_window:
            cap <<= 1
        self._mask = cap - 1
        self._gcm = gcm
        if gcm:
            # No auth keys: the GCM tag is the cipher's own (labels 1 and 4 go unused).
            self._rtp = GcmCrypto(
                kdf(master_key, master_salt, LABEL_RTP_ENCRYPTION, SESSION_KEY_LEN),
                kdf(master_key, master_salt, LABEL_RTP_SALT, GCM_SESSION_SALT_LEN),
            )
            self._rtcp = GcmCrypto(
                kdf(master_key, master_salt, LABEL_RTCP_ENCRYPTION, SESSION_KEY_LEN),
                kdf(master_key, master_salt, LABEL_RTCP_SALT, GCM_SESSION_SALT_LEN),
            )
            self.tag_len = GCM_TAG_LEN
            self._trailer = GCM_SRTCP_TRAILER_LEN
        else:
            keys = derive_session_keys(master_key, master_salt)
            self._rtp = SessionCrypto(keys[0], keys[1], keys[2])
            self._rtcp = SessionCrypto(keys[3], keys[4], keys[5])
            self.tag_len = TAG_LEN
            self._trailer = SRTCP_TRAILER_LEN
        self._tx = {}
        self._rx = {}
        # Per-packet scratch: the ROC of the last estimate, a saved tag, and a view of the
        # authenticated bytes of the last buffer (reused while the buffer and length repeat).
        self._est_roc = 0
        self._tag_save = bytearray(TAG_LEN)
        self._auth_buf = None
        self._auth_len = -1
        self._auth_addr = -1
        self._auth_view = None

    # -- stream table -----------------------------------------------------------------------

    def _stream(self, table, ssrc):
        # Returns (stream, is_new); a new stream is entered in the table only by the caller, once
        # the packet has passed every check.
        st = table.get(ssrc)
        if st is not None:
            return st, False
        return self._new_stream(table), True

    def _new_stream(self, table):
        if len(table) >= self.max_streams:
            raise UnknownStream("SRTP stream table full (%d SSRCs)" % self.max_streams)
        return _Stream((self._mask + 1) >> 3)

    def stream_count(self, outbound=False):
        return len(self._tx if outbound else self._rx)

    def stream_state(self, ssrc, outbound=False):
        """(roc, highest seq, replay bits, SRTCP index, SRTCP replay bits), or None if unknown.
        Replay bits as an integer: bit k set when the highest index - k was seen."""
        st = (self._tx if outbound else self._rx).get(ssrc)
        if st is None:
            return None
        m = self._mask
        w = self.replay_window
        return (
            st.roc,
            st.seq,
            _window_int(st.bits, m, st.seq, w),
            st.rtcp_index,
            _window_int(st.rtcp_bits, m, st.rtcp_index, w),
        )

    def highest_index(self, ssrc, outbound=False):
        """The highest packet index (ROC << 16 | seq) known for ``ssrc``, or None: what a relay
        needs per forwarded packet, without building the replay window as stream_state does."""
        st = (self._tx if outbound else self._rx).get(ssrc)
        if st is None:
            return None
        return (st.roc << 16) | st.seq

    def remove_stream(self, ssrc):
        """Forget ``ssrc`` in both directions (a member left). Its old packets would then be
        accepted again, so only do this when the SSRC will not be used again under this key."""
        self._tx.pop(ssrc, None)
        self._rx.pop(ssrc, None)

    def _estimate(self, st, s):
        """Index of sequence number s minus the highest index, as libsrtp's rdbx; the ROC guessed
        for s is left in self._est_roc (no tuple per packet)."""
        roc = st.roc
        hs = st.seq
        if roc == 0 and hs <= 0x8000:
            # Early in a stream a guess of ROC - 1 could only be -1: take the sequence number as is.
            self._est_roc = 0
            return s - hs
        if hs < 0x8000:
            if s - hs > 0x8000:
                self._est_roc = roc - 1
                return s - hs - 0x10000
            self._est_roc = roc
            return s - hs
        if hs - 0x8000 > s:
            if roc == MAX_ROC:
                raise KeyExpired("SRTP rollover counter exhausted")
            self._est_roc = roc + 1
            return s - hs + 0x10000
        self._est_roc = roc
        return s - hs

    def _auth_mv(self, buf, n):
        # memoryview(buf)[:n] for hashlib. MicroPython: kept while the same buffer, at the same
        # address (a resized bytearray moves), comes back with the same n (a voice path reuses one
        # buffer and one frame size), so no view is made per packet. CPython: a fresh view, as a
        # kept one would stop the caller from resizing its bytearray.
        if not IS_MICROPYTHON:
            return memoryview(buf)[:n]
        addr = addressof(buf)
        if buf is not self._auth_buf or n != self._auth_len or addr != self._auth_addr:
            self._auth_view = memoryview(buf)[:n]
            self._auth_buf = buf
            self._auth_len = n
            self._auth_addr = addr
        return self._auth_view

    # -- SRTP -----------------------------------------------------------------------------------

    def protect(self, rtp):
        """The SRTP packet for the RTP packet ``rtp``."""
        n = len(rtp)
        out = bytearray(n + self.tag_len)
        out[:n] = rtp
        self.protect_into(out, n)
        self._auth_buf = self._auth_view = None
        return bytes(out)

    def protect_into(self, buf, n):
        """Protect in place the RTP packet in ``buf[:n]``; ``buf`` must have ``tag_len`` bytes of
        room after it. Returns the SRTP packet's length (n + tag_len). On error neither ``buf`` nor
        the session changes. AES_CM allocates only what hashlib makes (see HmacSha1.digest1)."""
        if self._gcm:
            return self._gcm_protect_into(buf, n)
        hlen = _rtp_header_length_to_protect(buf, n, TAG_LEN)
        seq = (buf[2] << 8) | buf[3]
        ssrc = _u32(buf, 8)
        table = self._tx
        st = table.get(ssrc)
        new = st is None
        if new:
            st = self._new_stream(table)
        d = self._estimate(st, seq)
        roc = self._est_roc
        m = self._mask
        _check_window(st.bits, m, st.seq, d, self.replay_window)
        c = self._rtp
        c.ctr.xor_at(c.iv(ssrc, roc, seq), buf, hlen, buf, hlen, n - hlen)
        # Authenticated: the packet, then the ROC, written where the tag goes, then overwritten.
        struct.pack_into(">I", buf, n, roc)
        t = c.mac.digest1(self._auth_mv(buf, n + 4))
        for i in range(TAG_LEN):
            buf[n + i] = t[i]
        self._commit_rtp(table, ssrc, st, new, roc, seq, d)
        return n + TAG_LEN

    def unprotect(self, srtp):
        """The RTP packet inside the SRTP packet ``srtp``; raises a WireError if it is not one."""
        n = len(srtp)
        if n > MAX_PACKET:
            raise Oversized("SRTP packet larger than %d bytes" % MAX_PACKET)
        buf = bytearray(srtp)
        end = self.unprotect_into(buf, n)
        self._auth_buf = self._auth_view = None
        return bytes(buf[:end])

    def unprotect_into(self, buf, n):
        """Unprotect in place the SRTP packet in ``buf[:n]``; returns the RTP packet's length
        (``buf[:length]`` is then the RTP packet). Raises a WireError if it is not one; then the
        session is unchanged, and so is ``buf``. The tag is checked before any state moves."""
        if self._gcm:
            return self._gcm_unprotect_into(buf, n)
        hlen = _srtp_header_length(buf, n, TAG_LEN)
        end = n - TAG_LEN
        seq = (buf[2] << 8) | buf[3]
        ssrc = _u32(buf, 8)
        table = self._rx
        st = table.get(ssrc)
        new = st is None
        if new:
            st = self._new_stream(table)
        d = self._estimate(st, seq)
        roc = self._est_roc
        m = self._mask
        _check_window(st.bits, m, st.seq, d, self.replay_window)
        c = self._rtp
        # The tag moves aside so the ROC can follow the packet in the same buffer.
        save = self._tag_save
        for i in range(TAG_LEN):
            save[i] = buf[end + i]
        struct.pack_into(">I", buf, end, roc)
        t = c.mac.digest1(self._auth_mv(buf, end + 4))
        if not _tag_equal(t, save, 0):
            for i in range(TAG_LEN):
                buf[end + i] = save[i]
            raise AuthFailed("SRTP authentication tag mismatch")
        c.ctr.xor_at(c.iv(ssrc, roc, seq), buf, hlen, buf, hlen, end - hlen)
        self._commit_rtp(table, ssrc, st, new, roc, seq, d)
        return end

    # -- SRTP, AEAD_AES_128_GCM (CPython only: allocation is no concern here) -----------------------

    def _index(self, table, ssrc, seq):
        # (stream, is_new, d) with the ROC in self._est_roc; the AES_CM paths inline this, since
        # the tuple would be an allocation per packet on MicroPython.
        st = table.get(ssrc)
        new = st is None
        if new:
            st = self._new_stream(table)
        d = self._estimate(st, seq)
        _check_window(st.bits, self._mask, st.seq, d, self.replay_window)
        return st, new, d

    def _gcm_protect_into(self, buf, n):
        hlen = _rtp_header_length_to_protect(buf, n, GCM_TAG_LEN)
        seq = (buf[2] << 8) | buf[3]
        ssrc = _u32(buf, 8)
        st, new, d = self._index(self._tx, ssrc, seq)
        roc = self._est_roc
        c = self._rtp
        # AAD: the whole header, CSRCs and extension included (RFC 7714 §8.2).
        buf[hlen : n + GCM_TAG_LEN] = c.aead.seal(c.iv(ssrc, roc, seq), buf[hlen:n], buf[:hlen])
        self._commit_rtp(self._tx, ssrc, st, new, roc, seq, d)
        return n + GCM_TAG_LEN

    def _gcm_unprotect_into(self, buf, n):
        hlen = _srtp_header_length(buf, n, GCM_TAG_LEN)
        end = n - GCM_TAG_LEN
        seq = (buf[2] << 8) | buf[3]
        ssrc = _u32(buf, 8)
        st, new, d = self._index(self._rx, ssrc, seq)
        roc = self._est_roc
        c = self._rtp
        plain = c.aead.open(c.iv(ssrc, roc, seq), buf[hlen:n], buf[:hlen])
        if plain is None:
            raise AuthFailed("SRTP authentication tag mismatch")
        buf[hlen:end] = plain
        self._commit_rtp(self._rx, ssrc, st, new, roc, seq, d)
        return end

    def _commit_rtp(self, table, ssrc, st, new, roc, seq, d):
        m = self._mask
        _add_to_window(st.bits, m, st.seq, d)
        if d > 0:
            st.roc = roc
            st.seq = seq
        if new:
            table[ssrc] = st

    # -- SRTCP ----------------------------------------------------------------------------------

    def protect_rtcp(self, rtcp):
        """The SRTCP packet (encrypted, E = 1) for the RTCP packet ``rtcp`` (simple or compound)."""
        n = len(rtcp)
        if n < RTCP_HEADER_LEN:
            raise Truncated("RTCP packet shorter than 8 bytes")
        if rtcp[0] >> 6 != 2:
            raise BadVersion("RTCP version is not 2")
        if n - RTCP_HEADER_LEN > MAX_PAYLOAD or n + self._trailer > MAX_PACKET:
            raise Oversized("RTCP packet too large to protect")
        ssrc = struct.unpack_from(">I", rtcp, 4)[0]
        st, new = self._stream(self._tx, ssrc)
        index = st.rtcp_index + 1
        if index > MAX_SRTCP_INDEX:
            raise KeyExpired("SRTCP index exhausted")
        c = self._rtcp
        if self._gcm:
            # header | ciphertext | tag | E + index, with header || E + index as the AAD.
            head = bytes(rtcp[:RTCP_HEADER_LEN])
            word = struct.pack(">I", _E_FLAG | index)
            sealed = c.aead.seal(
                c.iv(ssrc, index >> 16, index & 0xFFFF), rtcp[RTCP_HEADER_LEN:n], head + word
            )
            out = head + sealed + word
        else:
            out = bytearray(n + SRTCP_TRAILER_LEN)
            out[:n] = rtcp
            mv = memoryview(out)
            body = mv[RTCP_HEADER_LEN:n]
            c.ctr.xor(c.iv(ssrc, index >> 16, index & 0xFFFF), body, body)
            struct.pack_into(">I", out, n, _E_FLAG | index)
            out[n + 4 :] = c.tag(mv[: n + 4])
        st.rtcp_index = index
        if new:
            self._tx[ssrc] = st
        return bytes(out)

    def unprotect_rtcp(self, srtcp):
        """The RTCP packet inside the SRTCP packet ``srtcp``; raises a WireError if it is not one."""
        n = len(srtcp)
        if n > MAX_PACKET:
            raise Oversized("SRTCP packet larger than %d bytes" % MAX_PACKET)
        if n < RTCP_HEADER_LEN + self._trailer:
            raise Truncated("SRTCP packet too short for header, index and tag")
        if srtcp[0] >> 6 != 2:
            raise BadVersion("RTCP version is not 2")
        end = n - self._trailer
        if end - RTCP_HEADER_LEN > MAX_PAYLOAD:
            raise Oversized("SRTCP payload too large")
        # AES_CM: E + index, then the tag; GCM: the tag, then E + index.
        word = struct.unpack_from(">I", srtcp, n - 4 if self._gcm else end)[0]
        if not word & _E_FLAG:
            raise BadValue("SRTCP packet not encrypted (E = 0)")
        index = word & MAX_SRTCP_INDEX
        ssrc = struct.unpack_from(">I", srtcp, 4)[0]
        st, new = self._stream(self._rx, ssrc)
        d = index - st.rtcp_index
        m = self._mask
        _check_window(st.rtcp_bits, m, st.rtcp_index, d, self.replay_window)
        c = self._rtcp
        mv = memoryview(srtcp)
        if self._gcm:
            head = bytes(mv[:RTCP_HEADER_LEN])
            plain = c.aead.open(
                c.iv(ssrc, index >> 16, index & 0xFFFF),
                mv[RTCP_HEADER_LEN : n - 4],
                head + bytes(mv[n - 4 : n]),
            )
            if plain is None:
                raise AuthFailed("SRTCP authentication tag mismatch")
            out = head + plain
        else:
            if not _tag_equal(c.tag(mv[: end + 4]), srtcp, end + 4):
                raise AuthFailed("SRTCP authentication tag mismatch")
            out = bytearray(end)
            out[:RTCP_HEADER_LEN] = mv[:RTCP_HEADER_LEN]
            c.ctr.xor(
                c.iv(ssrc, index >> 16, index & 0xFFFF),
                mv[RTCP_HEADER_LEN:end],
                memoryview(out)[RTCP_HEADER_LEN:],
            )
        _add_to_window(st.rtcp_bits, m, st.rtcp_index, d)
        if d > 0:
            st.rtcp_index = index
        if new:
            self._rx[ssrc] = st
        return bytes(out)
