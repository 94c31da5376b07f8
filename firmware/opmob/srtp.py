"""SRTP and SRTCP with AES_CM_128_HMAC_SHA1_80 (RFC 3711), sans-I/O.

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
"""

import struct

from opmob.compat import AesCtr, AesEcb, HmacSha1
from opmob.errors import AuthFailed, BadValue, BadVersion, Oversized, Replayed, Truncated, UnknownStream
from opmob.rtp import MAX_PACKET, header_length

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
    """The AES-CM key derivation PRF of RFC 3711 §4.3.1 with key derivation rate 0."""
    if len(master_key) != MASTER_KEY_LEN or len(master_salt) != MASTER_SALT_LEN:
        raise ValueError("SRTP master key must be 16 bytes and master salt 14")
    if not 0 <= label <= 255:
        raise ValueError("SRTP key derivation label out of range")
    # key_id = label || r with r = 0 (rate 0): the label lands on byte 7 of the 14-byte salt.
    iv = bytearray(master_salt) + b"\x00\x00"
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


class _Stream:
    # One SSRC in one direction. RTP: ROC and sequence number of the highest index, and the replay
    # bitmap (bit k = highest index - k seen). SRTCP: highest (inbound) or last sent (outbound)
    # index and its bitmap. All zero at start, as in libsrtp: inbound, nothing is seen yet, so
    # index 0 is still acceptable; outbound, the first SRTCP index is 1.
    __slots__ = ("roc", "seq", "bits", "rtcp_index", "rtcp_bits")

    def __init__(self):
        self.roc = 0
        self.seq = 0
        self.bits = 0
        self.rtcp_index = 0
        self.rtcp_bits = 0


def _estimate(st, s):
    """(ROC guessed for sequence number s, its index minus the highest index), as libsrtp's rdbx."""
    roc = st.roc
    hs = st.seq
    if roc == 0 and hs <= 0x8000:
        # Early in a stream a guess of ROC - 1 could only be -1: take the sequence number as is.
        return 0, s - hs
    if hs < 0x8000:
        if s - hs > 0x8000:
            return roc - 1, s - hs - 0x10000
        return roc, s - hs
    if hs - 0x8000 > s:
        if roc == MAX_ROC:
            raise KeyExpired("SRTP rollover counter exhausted")
        return roc + 1, s - hs + 0x10000
    return roc, s - hs


def _check_window(bits, d, window):
    # d = candidate index - highest index; d > 0 is always new.
    if d <= 0:
        if d <= -window:
            raise Replayed("index older than the replay window")
        if (bits >> -d) & 1:
            raise Replayed("index already seen")


def _add_to_window(bits, d, window):
    if d > 0:
        if d >= window:
            return 1  # the whole window slid past; avoids shifting a huge integer
        return ((bits << d) | 1) & ((1 << window) - 1)
    return bits | (1 << -d)


def _tag_equal(tag, pkt, off):
    # Looks at all bytes whatever the first difference, so timing tells nothing of where it lies.
    d = 0
    for i in range(TAG_LEN):
        d |= tag[i] ^ pkt[off + i]
    return d == 0


class SrtpSession:
    """One SRTP/SRTCP crypto context for one master key, any SSRC (see the module docstring)."""

    def __init__(self, master_key, master_salt, replay_window=DEFAULT_REPLAY_WINDOW, max_streams=64):
        # libsrtp's bounds: RFC 3711 §3.3.2 asks for at least 64, and at 2^15 the window would
        # reach indices whose ROC the estimate cannot tell apart.
        if not 64 <= replay_window < 0x8000:
            raise ValueError("SRTP replay window must be 64..32767")
        if max_streams < 1:
            raise ValueError("SRTP session needs room for at least one stream")
        keys = derive_session_keys(master_key, master_salt)
        self.replay_window = replay_window
        self.max_streams = max_streams
        self._rtp = SessionCrypto(keys[0], keys[1], keys[2])
        self._rtcp = SessionCrypto(keys[3], keys[4], keys[5])
        self._tx = {}
        self._rx = {}

    # -- stream table -----------------------------------------------------------------------

    def _stream(self, table, ssrc):
        # Returns (stream, is_new); a new stream is entered in the table only by the caller, once
        # the packet has passed every check.
        st = table.get(ssrc)
        if st is not None:
            return st, False
        if len(table) >= self.max_streams:
            raise UnknownStream("SRTP stream table full (%d SSRCs)" % self.max_streams)
        return _Stream(), True

    def stream_count(self, outbound=False):
        return len(self._tx if outbound else self._rx)

    def stream_state(self, ssrc, outbound=False):
        """(roc, highest seq, replay bits, SRTCP index, SRTCP replay bits), or None if unknown."""
        st = (self._tx if outbound else self._rx).get(ssrc)
        if st is None:
            return None
        return (st.roc, st.seq, st.bits, st.rtcp_index, st.rtcp_bits)

    def remove_stream(self, ssrc):
        """Forget ``ssrc`` in both directions (a member left). Its old packets would then be
        accepted again, so only do this when the SSRC will not be used again under this key."""
        self._tx.pop(ssrc, None)
        self._rx.pop(ssrc, None)

    # -- SRTP -----------------------------------------------------------------------------------

    def protect(self, rtp):
        """The SRTP packet for the RTP packet ``rtp``."""
        n = len(rtp)
        hlen = header_length(rtp)
        if n - hlen > MAX_PAYLOAD or n + TAG_LEN > MAX_PACKET:
            raise Oversized("RTP packet too large to protect")
        seq = (rtp[2] << 8) | rtp[3]
        ssrc = struct.unpack_from(">I", rtp, 8)[0]
        st, new = self._stream(self._tx, ssrc)
        roc, d = _estimate(st, seq)
        _check_window(st.bits, d, self.replay_window)
        c = self._rtp
        out = bytearray(n + TAG_LEN)
        out[:n] = rtp
        mv = memoryview(out)
        body = mv[hlen:n]
        c.ctr.xor(c.iv(ssrc, roc, seq), body, body)
        out[n:] = c.tag(mv[:n], struct.pack(">I", roc))
        self._commit_rtp(self._tx, ssrc, st, new, roc, seq, d)
        return bytes(out)

    def unprotect(self, srtp):
        """The RTP packet inside the SRTP packet ``srtp``; raises a WireError if it is not one."""
        n = len(srtp)
        if n > MAX_PACKET:
            raise Oversized("SRTP packet larger than %d bytes" % MAX_PACKET)
        hlen = header_length(srtp)
        end = n - TAG_LEN
        if end < hlen:
            raise Truncated("SRTP packet too short for its header and tag")
        if end - hlen > MAX_PAYLOAD:
            raise Oversized("SRTP payload too large")
        seq = (srtp[2] << 8) | srtp[3]
        ssrc = struct.unpack_from(">I", srtp, 8)[0]
        st, new = self._stream(self._rx, ssrc)
        roc, d = _estimate(st, seq)
        _check_window(st.bits, d, self.replay_window)
        c = self._rtp
        mv = memoryview(srtp)
        if not _tag_equal(c.tag(mv[:end], struct.pack(">I", roc)), srtp, end):
            raise AuthFailed("SRTP authentication tag mismatch")
        out = bytearray(end)
        out[:hlen] = mv[:hlen]
        c.ctr.xor(c.iv(ssrc, roc, seq), mv[hlen:end], memoryview(out)[hlen:])
        self._commit_rtp(self._rx, ssrc, st, new, roc, seq, d)
        return bytes(out)

    def _commit_rtp(self, table, ssrc, st, new, roc, seq, d):
        st.bits = _add_to_window(st.bits, d, self.replay_window)
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
        if n - RTCP_HEADER_LEN > MAX_PAYLOAD or n + SRTCP_TRAILER_LEN > MAX_PACKET:
            raise Oversized("RTCP packet too large to protect")
        ssrc = struct.unpack_from(">I", rtcp, 4)[0]
        st, new = self._stream(self._tx, ssrc)
        index = st.rtcp_index + 1
        if index > MAX_SRTCP_INDEX:
            raise KeyExpired("SRTCP index exhausted")
        c = self._rtcp
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
        if n < RTCP_HEADER_LEN + SRTCP_TRAILER_LEN:
            raise Truncated("SRTCP packet too short for header, index and tag")
        if srtcp[0] >> 6 != 2:
            raise BadVersion("RTCP version is not 2")
        end = n - SRTCP_TRAILER_LEN
        if end - RTCP_HEADER_LEN > MAX_PAYLOAD:
            raise Oversized("SRTCP payload too large")
        word = struct.unpack_from(">I", srtcp, end)[0]
        if not word & _E_FLAG:
            raise BadValue("SRTCP packet not encrypted (E = 0)")
        index = word & MAX_SRTCP_INDEX
        ssrc = struct.unpack_from(">I", srtcp, 4)[0]
        st, new = self._stream(self._rx, ssrc)
        d = index - st.rtcp_index
        _check_window(st.rtcp_bits, d, self.replay_window)
        c = self._rtcp
        mv = memoryview(srtcp)
        if not _tag_equal(c.tag(mv[: end + 4]), srtcp, end + 4):
            raise AuthFailed("SRTCP authentication tag mismatch")
        out = bytearray(end)
        out[:RTCP_HEADER_LEN] = mv[:RTCP_HEADER_LEN]
        c.ctr.xor(
            c.iv(ssrc, index >> 16, index & 0xFFFF),
            mv[RTCP_HEADER_LEN:end],
            memoryview(out)[RTCP_HEADER_LEN:],
        )
        st.rtcp_bits = _add_to_window(st.rtcp_bits, d, self.replay_window)
        if d > 0:
            st.rtcp_index = index
        if new:
            self._rx[ssrc] = st
        return bytes(out)
