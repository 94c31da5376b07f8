"""A minimal classic-pcap writer, so conformance tests can hand our bytes to tshark.

Each payload becomes one Ethernet II / IPv4 / UDP frame between two fixed documentation addresses
(RFC 5737), with a valid IPv4 header checksum and the UDP checksum left at zero (allowed over IPv4), so
tshark reports no malformed lower layers. Timestamps advance 20 ms per frame.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

PCAP_MAGIC = 0xA1B2C3D4  # microsecond timestamps
LINKTYPE_ETHERNET = 1
SNAPLEN = 65535

SRC_MAC = bytes.fromhex("020000000001")
DST_MAC = bytes.fromhex("020000000002")
SRC_IP = bytes((192, 0, 2, 1))
DST_IP = bytes((198, 51, 100, 2))


def ipv4_checksum(header: bytes) -> int:
    """RFC 791 header checksum: ones' complement of the ones' complement sum of 16-bit words."""
    total = sum(struct.unpack(f">{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(payload: bytes, sport: int, dport: int, ident: int = 0) -> bytes:
    """One Ethernet II frame carrying ``payload`` in IPv4/UDP."""
    udp = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
    total = 20 + len(udp)
    if total > 0xFFFF:
        raise ValueError("UDP payload too large for one IPv4 datagram")
    hdr = struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, ident & 0xFFFF, 0x4000, 64, 17, 0, SRC_IP, DST_IP)
    hdr = hdr[:10] + struct.pack(">H", ipv4_checksum(hdr)) + hdr[12:]
    return DST_MAC + SRC_MAC + b"\x08\x00" + hdr + udp


def write_pcap(path: str | Path, udp_payloads: Iterable[bytes], sport: int, dport: int) -> Path:
    """Write one frame per payload, 20 ms apart, to a classic pcap file at ``path``."""
    return write_records(path, ((i * 0.020, sport, dport, p) for i, p in enumerate(udp_payloads)))


def write_records(path: str | Path, records: Iterable[tuple[float, int, int, bytes]]) -> Path:
    """Write ``(seconds, sport, dport, payload)`` records as Ethernet/IPv4/UDP frames."""
    path = Path(path)
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET))
        for i, (t, sport, dport, payload) in enumerate(records):
            frame = udp_frame(bytes(payload), sport, dport, ident=i)
            usec = 1_700_000_000 * 1_000_000 + round(t * 1_000_000)
            f.write(struct.pack("<IIII", usec // 1_000_000, usec % 1_000_000, len(frame), len(frame)))
            f.write(frame)
    return path
