"""RTP fixed header (RFC 3550 §5.1): encode and decode, sans-I/O.

The header is kept as plain fields so the hot path can rewrite a header in place (a relay changes
only SSRC, sequence number and timestamp when it re-originates a stream).
"""

import struct

from opmob.errors import BadValue, BadVersion, Oversized, Truncated

RTP_VERSION = 2
HEADER_LEN = 12
MAX_PACKET = 1500  # one Ethernet MTU: anything larger is not ours

PT_DVI4_8K = 5  # RFC 3551 static payload type


class RtpHeader:
    __slots__ = ("marker", "pt", "seq", "ts", "ssrc", "csrcs", "ext_profile", "ext", "padding")

    def __init__(self, pt, seq, ts, ssrc, marker=False, csrcs=(), ext_profile=None, ext=b"", padding=0):
        self.pt = pt
        self.seq = seq
        self.ts = ts
        self.ssrc = ssrc
        self.marker = marker
        self.csrcs = tuple(csrcs)
        self.ext_profile = ext_profile
        self.ext = ext
        self.padding = padding

    def __eq__(self, other):
        return isinstance(other, RtpHeader) and all(
            getattr(self, k) == getattr(other, k) for k in RtpHeader.__slots__
        )

    def __repr__(self):
        return "RtpHeader(pt=%d, seq=%d, ts=%d, ssrc=0x%08x, m=%d)" % (
            self.pt,
            self.seq,
            self.ts,
            self.ssrc,
            self.marker,
        )

    def encode(self):
        if not 0 <= self.pt <= 127:
            raise BadValue("RTP payload type out of range")
        if len(self.csrcs) > 15:
            raise BadValue("more than 15 CSRCs")
        if self.ext_profile is not None and len(self.ext) % 4:
            raise BadValue("RTP header extension not a multiple of 4 bytes")
        b0 = (RTP_VERSION << 6) | len(self.csrcs)
        if self.ext_profile is not None:
            b0 |= 0x10
        if self.padding:
            b0 |= 0x20
        b1 = (0x80 if self.marker else 0) | self.pt
        out = struct.pack(">BBHII", b0, b1, self.seq & 0xFFFF, self.ts & 0xFFFFFFFF, self.ssrc & 0xFFFFFFFF)
        for c in self.csrcs:
            out += struct.pack(">I", c)
        if self.ext_profile is not None:
            out += struct.pack(">HH", self.ext_profile, len(self.ext) // 4) + self.ext
        return out


def header_length(pkt):
    """Length of the RTP header (fixed part, CSRCs and extension) of ``pkt``; checks the bounds."""
    n = len(pkt)
    if n < HEADER_LEN:
        raise Truncated("RTP packet shorter than 12 bytes")
    b0 = pkt[0]
    if b0 >> 6 != RTP_VERSION:
        raise BadVersion("RTP version is not 2")
    hlen = HEADER_LEN + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if n < hlen + 4:
            raise Truncated("RTP header extension cut short")
        hlen += 4 + 4 * ((pkt[hlen + 2] << 8) | pkt[hlen + 3])
    if n < hlen:
        raise Truncated("RTP header longer than the packet")
    return hlen


def decode(pkt):
    """Split an RTP packet into (RtpHeader, payload). Padding is removed from the payload."""
    if len(pkt) > MAX_PACKET:
        raise Oversized("RTP packet larger than %d bytes" % MAX_PACKET)
    hlen = header_length(pkt)
    b0, b1, seq, ts, ssrc = struct.unpack_from(">BBHII", pkt, 0)
    cc = b0 & 0x0F
    csrcs = struct.unpack_from(">" + "I" * cc, pkt, HEADER_LEN) if cc else ()
    ext_profile = None
    ext = b""
    if b0 & 0x10:
        o = HEADER_LEN + 4 * cc
        ext_profile = (pkt[o] << 8) | pkt[o + 1]
        ext = bytes(pkt[o + 4 : hlen])
    end = len(pkt)
    padding = 0
    if b0 & 0x20:
        padding = pkt[-1]
        if padding == 0 or hlen + padding > end:
            raise BadValue("RTP padding count invalid")
        end -= padding
    hdr = RtpHeader(b1 & 0x7F, seq, ts, ssrc, bool(b1 & 0x80), csrcs, ext_profile, ext, padding)
    return hdr, bytes(pkt[hlen:end])


def encode(hdr, payload):
    """An RTP packet from a header and payload (padding, if asked, is added here)."""
    out = hdr.encode() + payload
    if hdr.padding:
        if not 1 <= hdr.padding <= 255:
            raise BadValue("RTP padding count out of range")
        out += bytes(hdr.padding - 1) + bytes((hdr.padding,))
    return out
