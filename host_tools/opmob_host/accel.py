"""Choose the relay's hot path: the C extension (``opmob_c``) or the pure-Python twins.

    backend = accel.select()            # OPMOB_ACCEL=auto|c|pure, default auto
    backend = accel.select("pure")      # force the twins (tests, debugging)
    session = backend.SrtpSession(key, salt)
    backend.protect_batch(session, packets)   # the same call whichever backend

``auto`` takes the extension where it is built (``make setup``) and the twins otherwise; ``c``
raises ``AccelUnavailable`` when the extension is not built, so a relay configured for it never
runs silently slower. Both backends have the same classes (``SrtpSession``, ``Dvi4Encoder``,
``Dvi4Decoder``), functions (``encode_frame``, ``decode_frame``) and batch helpers, with the same
bytes and errors; only the C backend has ``Codec2`` and ``Transcoder`` (``None`` on the pure one:
there is no pure-Python Codec2, so a relay without the extension cannot transcode).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opmob import dvi4 as _pure_dvi4
from opmob import srtp as _pure_srtp
from opmob.errors import WireError

ENV = "OPMOB_ACCEL"
CHOICES = ("auto", "c", "pure")

Buffer = bytes | bytearray | memoryview


class AccelUnavailable(ImportError):
    """The C extension was asked for but is not built here."""


def _loop(method: str, sessions: Sequence[Any], packets: Sequence[Buffer]) -> list[bytes | WireError]:
    """The batch contract on any session type: per packet its result or its WireError."""
    if len(sessions) not in (1, len(packets)) and packets:
        raise ValueError("one session, or one per packet")
    out: list[bytes | WireError] = []
    for i, p in enumerate(packets):
        s = sessions[0] if len(sessions) == 1 else sessions[i]
        try:
            out.append(getattr(s, method)(p))
        except WireError as e:
            out.append(e)
    return out


@dataclass(frozen=True)
class Backend:
    name: str  # "c" or "pure"
    SrtpSession: Any
    Dvi4Encoder: Any
    Dvi4Decoder: Any
    encode_frame: Any
    decode_frame: Any
    Codec2: Any  # None on the pure backend
    Transcoder: Any  # None on the pure backend
    _module: Any = None

    @property
    def can_transcode(self) -> bool:
        return self.Codec2 is not None

    def link_codec(self, max_streams: int = 256) -> LinkTranscoder | None:
        """``Relay(codec=...)`` for codec2 links: None on the pure backend (no Codec2)."""
        if self.Transcoder is None:
            return None
        return LinkTranscoder(self.Transcoder(max_streams))

    def _srtp(self, op: str, sessions: Sequence[Any], packets: Sequence[Buffer]) -> list[bytes | WireError]:
        if self._module is not None:
            lib = self._module.lib
            code = {
                "protect": lib.OPMOB_OP_PROTECT,
                "unprotect": lib.OPMOB_OP_UNPROTECT,
                "protect_rtcp": lib.OPMOB_OP_PROTECT_RTCP,
                "unprotect_rtcp": lib.OPMOB_OP_UNPROTECT_RTCP,
            }[op]
            return self._module.srtp_batch(code, sessions, packets)
        return _loop(op, sessions, packets)

    # ``sessions``: one session for every packet, or a sequence with one per packet.
    def protect_batch(self, sessions: Any, packets: Sequence[Buffer]) -> list[bytes | WireError]:
        return self._srtp("protect", _as_seq(sessions), packets)

    def unprotect_batch(self, sessions: Any, packets: Sequence[Buffer]) -> list[bytes | WireError]:
        return self._srtp("unprotect", _as_seq(sessions), packets)

    def protect_rtcp_batch(self, sessions: Any, packets: Sequence[Buffer]) -> list[bytes | WireError]:
        return self._srtp("protect_rtcp", _as_seq(sessions), packets)

    def unprotect_rtcp_batch(self, sessions: Any, packets: Sequence[Buffer]) -> list[bytes | WireError]:
        return self._srtp("unprotect_rtcp", _as_seq(sessions), packets)


class LinkTranscoder:
    """The relay core's codec interface (``Relay(codec=...)``) on ``opmob_c.Transcoder``.

    The core protects and unprotects with its link and device keys itself, so every slot runs on
    plain RTP (no sessions); a slot's output SSRC is the link stream's, and its sequence numbers
    carry on across talkers, which keeps the link's SRTP context following one stream.
    """

    def __init__(self, transcoder: Any) -> None:
        self._t = transcoder
        self._free = list(range(transcoder.max_streams - 1, -1, -1))

    def open(self, mode: str, ssrc: int) -> int:
        if not self._free:
            raise WireError("no free transcoder slot")
        slot = self._free.pop()
        self._t.open(slot, codec2_ssrc=ssrc, dvi4_ssrc=ssrc, mode=mode)
        return slot

    def close(self, slot: int) -> None:
        self._t.close(slot)
        self._free.append(slot)

    def to_codec2(self, slot: int, pkt: Buffer) -> list[bytes]:
        return _one(self._t.to_codec2([(slot, pkt)])[0])

    def to_dvi4(self, slot: int, pkt: Buffer) -> list[bytes]:
        return _one(self._t.to_dvi4([(slot, pkt)])[0])


def _one(r: list[bytes] | WireError) -> list[bytes]:
    if isinstance(r, WireError):
        raise r
    return r


def _as_seq(sessions: Any) -> Sequence[Any]:
    return sessions if isinstance(sessions, list | tuple) else [sessions]


PURE = Backend(
    name="pure",
    SrtpSession=_pure_srtp.SrtpSession,
    Dvi4Encoder=_pure_dvi4.Dvi4Encoder,
    Dvi4Decoder=_pure_dvi4.Dvi4Decoder,
    encode_frame=_pure_dvi4.encode_frame,
    decode_frame=_pure_dvi4.decode_frame,
    Codec2=None,
    Transcoder=None,
)


def _c_backend() -> Backend:
    try:
        import opmob_c
    except ImportError as e:
        raise AccelUnavailable(f"the C extension is not built ({e}): run `make setup`") from e
    return Backend(
        name="c",
        SrtpSession=opmob_c.SrtpSession,
        Dvi4Encoder=opmob_c.Dvi4Encoder,
        Dvi4Decoder=opmob_c.Dvi4Decoder,
        encode_frame=opmob_c.encode_frame,
        decode_frame=opmob_c.decode_frame,
        Codec2=opmob_c.Codec2,
        Transcoder=opmob_c.Transcoder,
        _module=opmob_c,
    )


def select(prefer: str | None = None) -> Backend:
    """The backend for ``prefer`` (``auto``, ``c`` or ``pure``; None: $OPMOB_ACCEL, else auto)."""
    choice = (prefer if prefer is not None else os.environ.get(ENV, "auto")).strip().lower() or "auto"
    if choice not in CHOICES:
        raise ValueError(f"{ENV}/prefer must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice == "pure":
        return PURE
    if choice == "c":
        return _c_backend()
    try:
        return _c_backend()
    except AccelUnavailable:
        return PURE
