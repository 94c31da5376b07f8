"""``opmob pcap``: Wireshark for field engineers.

    opmob pcap lua                                      # the dissector's path, for tshark -X lua_script:
    opmob pcap decrypt --keylog KEYS call.pcapng call-plain.pcap

``decrypt`` turns a capture of a relay's traffic (pcap or pcapng, Ethernet, Linux cooked or raw
IP, IPv4 or IPv6) and the SRTP key log of that relay (``opmob relay run --srtp-keylog FILE``, a lab
relay only) into a classic pcap in which every SRTP packet is plain RTP and every SRTCP packet is
plain RTCP (so tshark shows every MCPT floor field: cause, priority, granted party, Floor
Indicator), and every protected signalling message is the same message sent open (flag P clear,
plaintext body, no tag: the dissector shows every field), with the capture's timestamps,
addresses and ports. Each packet is opened with the key whose authentication tag verifies, and a
packet no key opens is copied as captured and counted.

Key log format, one line per key the relay derived, in hex (SSLKEYLOGFILE's pattern; lines
starting with ``#`` are comments; the label, identity and SSRC are for people)::

    OPMOB_SRTP <master key> <master salt> [<label> <identity> <ssrc>]     device_up/down, link_tx/rx
    OPMOB_SIG <AES key Ke> <HMAC key Km> [<label> <identity> <ssrc>]      sig_up/down (protocol.md §5)
"""

from __future__ import annotations

import argparse
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from opmob_host import resources

KEYLOG_TAG = "OPMOB_SRTP"
KEYLOG_SIG_TAG = "OPMOB_SIG"
LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_SLL, LINKTYPE_SLL2 = 0, 1, 101, 113, 276
LINKTYPE_IPV4, LINKTYPE_IPV6 = 228, 229


class PcapError(Exception):
    """The capture or the key log cannot be read; the message says which and why."""


# --- reading captures ------------------------------------------------------------------------------


def read_frames(path: Path) -> Iterator[tuple[float, int, bytes]]:
    """(seconds since the epoch, link type, frame) for every packet of a pcap or pcapng file."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise PcapError(f"{path}: cannot read the capture ({e.strerror})") from None
    if len(data) < 24:
        raise PcapError(f"{path}: not a capture (too short)")
    magic = data[:4]
    if magic == b"\x0a\x0d\x0d\x0a":
        yield from _pcapng(data, path)
        return
    for endian, nano_magic, usec_magic in (
        ("<", b"\x4d\x3c\xb2\xa1", b"\xd4\xc3\xb2\xa1"),
        (">", b"\xa1\xb2\x3c\x4d", b"\xa1\xb2\xc3\xd4"),
    ):
        if magic in (nano_magic, usec_magic):
            scale = 1e-9 if magic == nano_magic else 1e-6
            linktype = struct.unpack_from(endian + "I", data, 20)[0] & 0xFFFF
            off = 24
            while off + 16 <= len(data):
                sec, frac, caplen, _ = struct.unpack_from(endian + "IIII", data, off)
                off += 16
                yield sec + frac * scale, linktype, data[off : off + caplen]
                off += caplen
            return
    raise PcapError(f"{path}: not a pcap or pcapng capture (magic {magic.hex()})")


def _pcapng(data: bytes, path: Path) -> Iterator[tuple[float, int, bytes]]:
    off = 0
    endian = "<"
    ifaces: list[tuple[int, float]] = []  # (link type, seconds per timestamp unit)
    while off + 12 <= len(data):
        btype = struct.unpack_from(endian + "I", data, off)[0]
        if btype == 0x0A0D0D0A:  # section header: its byte order
            endian = "<" if data[off + 8 : off + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            ifaces = []
        blen = struct.unpack_from(endian + "I", data, off + 4)[0]
        if blen < 12 or off + blen > len(data):
            raise PcapError(f"{path}: damaged pcapng block at byte {off}")
        body = data[off + 8 : off + blen - 4]
        if btype == 1:  # interface description
            linktype = struct.unpack_from(endian + "H", body, 0)[0]
            res = 1e-6
            o = 8
            while o + 4 <= len(body):
                code, olen = struct.unpack_from(endian + "HH", body, o)
                if code == 0:
                    break
                if code == 9 and olen == 1:  # if_tsresol
                    v = body[o + 4]
                    res = 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0**-v
                o += 4 + ((olen + 3) & ~3)
            ifaces.append((linktype, res))
        elif btype == 6:  # enhanced packet
            iface, hi, lo, caplen = struct.unpack_from(endian + "IIII", body, 0)
            linktype, res = ifaces[iface]
            yield ((hi << 32) | lo) * res, linktype, body[20 : 20 + caplen]
        elif btype == 3 and ifaces:  # simple packet: no timestamp
            yield 0.0, ifaces[0][0], body[4:]
        off += blen


def udp_of(linktype: int, frame: bytes) -> tuple[bytes, bytes, int, int, bytes] | None:
    """(source address, destination address, source port, destination port, payload) of a UDP
    datagram in a frame, None for anything else (fragments included)."""
    if linktype == LINKTYPE_ETHERNET:
        off, ethertype = 14, struct.unpack_from(">H", frame, 12)[0] if len(frame) >= 14 else 0
        while ethertype in (0x8100, 0x88A8) and len(frame) >= off + 4:  # VLAN tags
            ethertype = struct.unpack_from(">H", frame, off + 2)[0]
            off += 4
        ip = frame[off:] if ethertype in (0x0800, 0x86DD) else b""
    elif linktype == LINKTYPE_SLL:
        ip = frame[16:]
    elif linktype == LINKTYPE_SLL2:
        ip = frame[20:]
    elif linktype == LINKTYPE_NULL:
        ip = frame[4:]
    elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        ip = frame
    else:
        return None
    if len(ip) >= 20 and ip[0] >> 4 == 4:
        ihl = (ip[0] & 0x0F) * 4
        frag = struct.unpack_from(">H", ip, 6)[0]
        if ip[9] != 17 or frag & 0x3FFF:
            return None
        total = struct.unpack_from(">H", ip, 2)[0]
        src, dst, udp = ip[12:16], ip[16:20], ip[ihl:total]
    elif len(ip) >= 40 and ip[0] >> 4 == 6:
        if ip[6] != 17:
            return None  # extension headers: not from a relay
        src, dst, udp = ip[8:24], ip[24:40], ip[40 : 40 + struct.unpack_from(">H", ip, 4)[0]]
    else:
        return None
    if len(udp) < 8:
        return None
    sport, dport, ulen = struct.unpack_from(">HHH", udp, 0)
    return src, dst, sport, dport, udp[8:ulen]


# --- writing -------------------------------------------------------------------------------------


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frame(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, ident: int) -> bytes:
    """An Ethernet II frame of IPv4 or IPv6 (by the address length) and UDP, checksums right."""
    ulen = 8 + len(payload)
    proto = 17
    pseudo = (
        src
        + dst
        + (struct.pack(">BBH", 0, proto, ulen) if len(src) == 4 else struct.pack(">IxxxB", ulen, proto))
    )
    udp = struct.pack(">HHHH", sport, dport, ulen, 0) + payload
    cs = _csum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack(">H", cs) + udp[8:]
    mac = bytes.fromhex("020000000002020000000001")
    if len(src) == 4:
        hdr = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + ulen, ident & 0xFFFF, 0x4000, 64, proto, 0, src, dst)
        hdr = hdr[:10] + struct.pack(">H", _csum(hdr)) + hdr[12:]
        return mac + b"\x08\x00" + hdr + udp
    hdr = struct.pack(">IHBB16s16s", 6 << 28, ulen, proto, 64, src, dst)
    return mac + b"\x86\xdd" + hdr + udp


def write_pcap(path: Path, records: list[tuple[float, bytes]]) -> None:
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET))
        for t, fr in records:
            ns = round(t * 1e9)
            f.write(struct.pack("<IIII", ns // 10**9, ns % 10**9, len(fr), len(fr)))
            f.write(fr)


# --- the key log ------------------------------------------------------------------------------------


def read_keylogs(path: Path) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    """The SRTP (master key, master salt) pairs and the signalling (AES key, HMAC key) pairs of a
    key log, each in order, without repeats."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise PcapError(f"{path}: cannot read the key log ({getattr(e, 'strerror', e)})") from None
    srtp: list[tuple[bytes, bytes]] = []
    sig: list[tuple[bytes, bytes]] = []
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        try:
            if parts[0] not in (KEYLOG_TAG, KEYLOG_SIG_TAG) or len(parts) < 3:
                raise ValueError
            pair = (bytes.fromhex(parts[1]), bytes.fromhex(parts[2]))
            if parts[0] == KEYLOG_SIG_TAG and (len(pair[0]) != 16 or len(pair[1]) < 16):
                raise ValueError
        except ValueError:
            raise PcapError(
                f"{path}:{n}: not a key log line ({KEYLOG_TAG} <key hex> <salt hex> ... or {KEYLOG_SIG_TAG} "
                "<AES key hex> <HMAC key hex> ...): the file `opmob relay run --srtp-keylog` writes"
            ) from None
        keys = sig if parts[0] == KEYLOG_SIG_TAG else srtp
        if pair not in keys:
            keys.append(pair)
    if not srtp and not sig:
        raise PcapError(f"{path}: no keys in the key log: was the relay started with --srtp-keylog?")
    return srtp, sig


# --- decrypting ----------------------------------------------------------------------------------


def is_rtcp(p: bytes) -> bool:
    return len(p) >= 8 and 192 <= p[1] <= 223  # RFC 5761: RTCP packet types 192..223


class Opener:
    """SRTP and SRTCP opened with the key whose tag verifies, remembered per stream."""

    def __init__(self, keys: list[tuple[bytes, bytes]]) -> None:
        from opmob_host import accel

        cls = accel.select().SrtpSession
        self.sessions = [cls(k, s, max_streams=4096) for k, s in keys]
        self.known: dict[tuple[Any, ...], Any] = {}

    def open(self, stream: tuple[Any, ...], payload: bytes) -> bytes | None:
        from opmob.errors import WireError

        rtcp = is_rtcp(payload)
        ssrc = payload[4:8] if rtcp else payload[8:12]
        key = (*stream, rtcp, ssrc)
        order = [self.known[key]] if key in self.known else []
        order += [s for s in self.sessions if s not in order]
        for s in order:
            try:
                out = bytes(s.unprotect_rtcp(payload) if rtcp else s.unprotect(payload))
            except WireError:
                continue
            self.known[key] = s
            return out
        return None


class SigOpener:
    """Protected signalling opened with the key whose tag verifies (remembered per session and
    direction), and written back as the same message sent open."""

    def __init__(self, keys: list[tuple[bytes, bytes]]) -> None:
        from opmob import sig

        self.keys = [sig.SigKey(mac, enc) for enc, mac in keys]
        self.known: dict[tuple[Any, ...], Any] = {}

    def open(self, payload: bytes) -> bytes | None:
        """The open form of a protected message (P clear, plaintext body, no tag), None when no
        key's tag verifies; a message sent open is returned as it is."""
        from opmob import sig
        from opmob.errors import WireError

        try:
            h = sig.peek(payload)
        except WireError:
            return payload  # not well-formed: shown as captured, the dissector says what is wrong
        if not h.flags & sig.FLAG_PROTECTED:
            return payload
        head, body = payload[: sig.HEADER_LEN], payload[sig.HEADER_LEN : sig.HEADER_LEN + h.length]
        tag = payload[sig.HEADER_LEN + h.length :]
        stream = (h.session, h.flags & sig.FLAG_DOWN)
        order = [self.known[stream]] if stream in self.known else []
        order += [k for k in self.keys if k not in order]
        for k in order:
            plain = k.crypt(tag, body)
            if sig.ct_equal(k.tag(head, plain), tag):
                self.known[stream] = k
                return head[:4] + bytes([h.flags & ~sig.FLAG_PROTECTED]) + head[5:] + plain
        return None


def decrypt(capture: Path, keylog: Path, out: Path) -> dict[str, int]:
    from opmob import sig

    srtp_keys, sig_keys = read_keylogs(keylog)
    opener = Opener(srtp_keys)
    sig_opener = SigOpener(sig_keys)
    counts = {"signalling": 0, "signalling_opened": 0, "rtp": 0, "rtcp": 0, "no_key": 0, "other": 0}
    records: list[tuple[float, bytes]] = []
    for i, (t, linktype, fr) in enumerate(read_frames(capture)):
        udp = udp_of(linktype, fr)
        if udp is None:
            counts["other"] += 1
            continue
        src, dst, sport, dport, payload = udp
        if sig.is_sig(payload):
            counts["signalling"] += 1
            opened = sig_opener.open(payload)
            if opened is None:
                counts["no_key"] += 1
            elif opened is not payload:
                counts["signalling_opened"] += 1
                payload = opened
        elif len(payload) >= 12 and payload[0] >> 6 == 2:
            plain = opener.open((src, sport, dst, dport), payload)
            if plain is None:
                counts["no_key"] += 1
            else:
                counts["rtcp" if is_rtcp(payload) else "rtp"] += 1
                payload = plain
        else:
            counts["other"] += 1
        records.append((t, frame(src, dst, sport, dport, payload, i)))
    write_pcap(out, records)
    return counts


# --- the command ----------------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "pcap",
        help="Wireshark for field engineers: the OpMob dissector, and captures decrypted with a key log",
        description="`lua` prints the path of the Wireshark dissector for OpMob signalling (tshark -X "
        "lua_script:PATH). `decrypt` opens the SRTP, SRTCP and protected signalling of a capture with a "
        "lab relay's key log (opmob relay run --srtp-keylog) and writes a plain pcap in which tshark "
        "shows every signalling field, every RTP packet and every MCPT floor field.",
    )
    ps = p.add_subparsers(dest="pcap_command", metavar="ACTION", required=True)
    ps.add_parser(
        "lua",
        help="print the path of the OpMob Wireshark dissector (opmob.lua)",
        description="Print the path of opmob.lua, shipped with this package: tshark -X lua_script:PATH, "
        "or copy it to Wireshark's personal plugins folder (Help > About Wireshark > Folders).",
    )
    d = ps.add_parser(
        "decrypt",
        help="a capture plus a relay's key log -> a plain pcap",
        description="Write OUTPUT: the capture's UDP datagrams, SRTP and SRTCP opened with the keys of "
        "the key log (plain RTP and RTCP), protected signalling opened (sent open: flag P clear, no "
        "tag). Then: tshark -X lua_script:$(opmob pcap lua) -r OUTPUT.",
    )
    d.add_argument("--keylog", required=True, help="the key log of opmob relay run --srtp-keylog")
    d.add_argument("capture", help="the capture (pcap or pcapng: tcpdump -w, dumpcap, tshark -w)")
    d.add_argument("output", help="the plain pcap to write")


def run(args: argparse.Namespace) -> int:
    if args.pcap_command == "lua":
        print(resources.wireshark_lua())
        return 0
    try:
        counts = decrypt(Path(args.capture), Path(args.keylog), Path(args.output))
    except PcapError as e:
        print(f"opmob pcap decrypt: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"opmob pcap decrypt: {args.output}: cannot write ({e.strerror})", file=sys.stderr)
        return 1
    print(
        f"opmob pcap decrypt: {args.output}: {counts['rtp']} RTP and {counts['rtcp']} RTCP packets opened, "
        f"{counts['signalling']} signalling messages ({counts['signalling_opened']} protected ones opened)"
        + (
            f", {counts['no_key']} protected packets without a key (copied as captured)"
            if counts["no_key"]
            else ""
        )
    )
    return 0
