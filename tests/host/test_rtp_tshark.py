"""RTP headers we encode, as tshark decodes them (tshark is the reference we did not write);
and hypothesis bad input against rtp.decode."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from fuzzing import fuzz
from hypothesis import given
from hypothesis import strategies as st
from opmob import rtp
from opmob.errors import WireError
from opmob_host.pcap import write_pcap

TSHARK = shutil.which("tshark")
PORT = 41500


@pytest.mark.skipif(TSHARK is None, reason="tshark not installed: run `make setup`")
def test_tshark_decodes_our_rtp_headers(tmp_path: Path) -> None:
    headers = [
        rtp.RtpHeader(5, 65535, 0, 0x0A000001, marker=True),
        rtp.RtpHeader(5, 0, 160, 0x0A000001),
        rtp.RtpHeader(96, 7, 0xFFFFFFFF, 0xDEADBEEF, csrcs=(1, 2, 3)),
        rtp.RtpHeader(0, 1, 2, 3, ext_profile=0xBEDE, ext=b"\x10\x01\x00\x00"),
        rtp.RtpHeader(5, 9, 99, 4, padding=4),
    ]
    pkts = [rtp.encode(h, bytes(84)) for h in headers]
    cap = write_pcap(tmp_path / "rtp.pcap", pkts, PORT, PORT)
    fields = [
        "rtp.version",
        "rtp.marker",
        "rtp.p_type",
        "rtp.seq",
        "rtp.timestamp",
        "rtp.ssrc",
        "rtp.cc",
        "rtp.ext",
        "rtp.padding",
    ]
    cmd = [TSHARK, "-r", str(cap), "-d", f"udp.port=={PORT},rtp", "-T", "fields", "-E", "separator=;"]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    assert len(out) == len(headers)
    for h, line in zip(headers, out, strict=True):
        v = line.split(";")
        assert v[0] == "2"
        assert v[1] in (("1", "True") if h.marker else ("0", "False"))
        assert int(v[2]) == h.pt
        assert int(v[3]) == h.seq
        assert int(v[4]) == h.ts
        assert int(v[5], 16) == h.ssrc
        assert int(v[6]) == len(h.csrcs)
        assert v[7] in (("1", "True") if h.ext_profile is not None else ("0", "False"))
        assert v[8] in (("1", "True") if h.padding else ("0", "False"))


@fuzz
@given(st.binary(max_size=200))
def test_decode_random_bytes_raises_only_wire_errors(data: bytes) -> None:
    try:
        rtp.decode(data)
    except WireError:
        pass


@fuzz
@given(st.binary(min_size=12, max_size=120), st.integers(0, 255))
def test_decode_plausible_headers_raises_only_wire_errors(data: bytes, b0_low: int) -> None:
    try:
        hdr, payload = rtp.decode(bytes([0x80 | (b0_low & 0x3F)]) + data[1:])
    except WireError:
        return
    assert len(payload) <= len(data)
    assert hdr.encode()[:12][2:] == data[2:12]
