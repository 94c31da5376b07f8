"""``opmob_host.accel``: the relay's choice between the C extension and the pure-Python twins."""

from __future__ import annotations

import struct
import sys

import opmob_c
import pytest
from opmob import dvi4, srtp
from opmob.errors import AuthFailed, Replayed, WireError
from opmob_host import accel

KEY, SALT = bytes(range(16)), bytes(range(16, 30))


def test_auto_takes_the_extension_and_settings_force_either(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(accel.ENV, raising=False)
    assert accel.select().name == "c" and accel.select().SrtpSession is opmob_c.SrtpSession
    assert accel.select().can_transcode and accel.select("c").Transcoder is opmob_c.Transcoder
    pure = accel.select("pure")
    assert (pure.SrtpSession, pure.Dvi4Encoder, pure.Dvi4Decoder) == (
        srtp.SrtpSession,
        dvi4.Dvi4Encoder,
        dvi4.Dvi4Decoder,
    )
    assert (pure.encode_frame, pure.decode_frame, pure.Codec2) == (dvi4.encode_frame, dvi4.decode_frame, None)
    assert not pure.can_transcode
    monkeypatch.setenv(accel.ENV, "pure")
    assert accel.select().name == "pure"
    assert accel.select("c").name == "c"  # an explicit argument wins over the environment
    monkeypatch.setenv(accel.ENV, " C ")
    assert accel.select().name == "c"
    monkeypatch.setenv(accel.ENV, "fast")
    with pytest.raises(ValueError):
        accel.select()


def test_without_the_extension_auto_falls_back_and_c_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(accel.ENV, raising=False)
    monkeypatch.setitem(sys.modules, "opmob_c", None)  # as if never built: import fails
    assert accel.select().name == "pure"
    with pytest.raises(accel.AccelUnavailable, match="make setup"):
        accel.select("c")


@pytest.mark.parametrize("name", ["c", "pure"])
def test_batch_helpers_same_results_on_both(name: str) -> None:
    b = accel.select(name)
    tx, rx = b.SrtpSession(KEY, SALT), b.SrtpSession(KEY, SALT)
    plain = [struct.pack(">BBHII", 0x80, 5, s, 160 * s, 0x42) + bytes([s]) * 84 for s in range(10)]
    prot = b.protect_batch(tx, plain)
    ref = srtp.SrtpSession(KEY, SALT)
    assert prot == [ref.protect(p) for p in plain]
    bad = bytearray(prot[3])  # type: ignore[arg-type]
    bad[-1] ^= 1
    got = b.unprotect_batch(rx, [*prot[:3], bytes(bad), prot[3], prot[3]])
    assert got[:3] == plain[:3] and got[4] == plain[3]
    assert isinstance(got[3], AuthFailed) and isinstance(got[5], Replayed)
    rtcp = [struct.pack(">BBHI", 0x80, 201, 1, 0x42 + i) for i in range(3)]
    sessions = [b.SrtpSession(KEY, SALT) for _ in rtcp]
    out = b.protect_rtcp_batch(sessions, rtcp)
    assert out == [srtp.SrtpSession(KEY, SALT).protect_rtcp(p) for p in rtcp]
    assert b.unprotect_rtcp_batch(b.SrtpSession(KEY, SALT), out) == rtcp
    assert all(not isinstance(x, WireError) for x in out)
