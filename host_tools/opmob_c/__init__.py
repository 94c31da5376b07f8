"""The relay's C hot path (``c_ext/``, cffi API mode) behind the API of the pure-Python twins.

Same classes, same methods, same bytes and the same typed errors (``opmob.errors``) as
``opmob.srtp``, ``opmob.dvi4``: a caller swaps one for the other (``opmob_host.accel.select``).
On top of the twins' API:

- batch forms, one C call for many packets or frames, over one object or many (one per item):
  ``SrtpSession.protect_batch`` & co., ``srtp_batch``; ``dvi4_encode_batch``,
  ``dvi4_decode_batch``; ``Codec2.encode``/``decode`` over several frames, ``codec2_batch``.
  Network-facing batches return, per item, the result or the ``WireError`` instance (not raised),
  so one bad packet costs that packet only;
- ``Codec2``: libcodec2, one state per object (make one per stream, at stream set-up);
- ``Transcoder``: the relay's pipeline for many streams at once, unprotect → DVI4 decode →
  Codec2 encode → protect (``to_codec2``) and the reverse (``to_dvi4``).

Objects are safe to share between threads (each holds a lock, and the C code never runs for one
object in two threads at once); batch calls take the locks of every object they touch.
The module imports only where the extension is built (``make setup``); ImportError otherwise.
"""

from __future__ import annotations

import struct
import threading
from array import array
from collections.abc import Iterable, Sequence
from itertools import accumulate, chain
from operator import attrgetter
from typing import Any

from opmob import dvi4 as _dvi4
from opmob import srtp as _srtp
from opmob.errors import (
    AuthFailed,
    BadValue,
    BadVersion,
    Oversized,
    Replayed,
    Truncated,
    UnknownStream,
    WireError,
)
from opmob.srtp import KeyExpired

from opmob_c._opmob_c import ffi, lib

__all__ = [
    "Codec2",
    "CODEC2_MODES",
    "PROFILE_AEAD_AES_128_GCM",
    "PROFILE_AES_CM_128_HMAC_SHA1_80",
    "Dvi4Decoder",
    "Dvi4Encoder",
    "SrtpSession",
    "Transcoder",
    "codec2_batch",
    "decode_frame",
    "dvi4_decode_batch",
    "dvi4_encode_batch",
    "encode_frame",
    "srtp_batch",
]

Buffer = bytes | bytearray | memoryview

MAX_PACKET = int(lib.OPMOB_MAX_PACKET)
#: SRTP protection profiles, the twin's constants (DTLS-SRTP protection profile ids).
PROFILE_AES_CM_128_HMAC_SHA1_80 = _srtp.PROFILE_AES_CM_128_HMAC_SHA1_80
PROFILE_AEAD_AES_128_GCM = _srtp.PROFILE_AEAD_AES_128_GCM
FRAME_SAMPLES = _dvi4.FRAME_SAMPLES
MAX_SAMPLES = _dvi4.MAX_SAMPLES
HEADER_LEN = _dvi4.HEADER_LEN

_WIRE: dict[int, tuple[type[WireError], str]] = {
    int(lib.OPMOB_E_TRUNCATED): (Truncated, "truncated"),
    int(lib.OPMOB_E_OVERSIZED): (Oversized, "too large"),
    int(lib.OPMOB_E_BAD_VERSION): (BadVersion, "version is not 2"),
    int(lib.OPMOB_E_BAD_VALUE): (BadValue, "bad value"),
    int(lib.OPMOB_E_AUTH_FAILED): (AuthFailed, "authentication tag mismatch"),
    int(lib.OPMOB_E_REPLAYED): (Replayed, "replayed or older than the replay window"),
    int(lib.OPMOB_E_UNKNOWN_STREAM): (UnknownStream, "unknown stream (table full or slot closed)"),
    int(lib.OPMOB_E_KEY_EXPIRED): (KeyExpired, "index space exhausted: the key must change"),
}


def _error(code: int, what: str) -> Exception:
    """The exception for a C result code (not raised here)."""
    known = _WIRE.get(code)
    if known is not None:
        return known[0](f"{what}: {known[1]}")
    if code == lib.OPMOB_E_ARG:
        return ValueError(f"{what}: bad argument or buffer too small")
    if code == lib.OPMOB_E_NOMEM:
        return MemoryError(what)
    return RuntimeError(f"{what}: libcrypto failed ({code})")


def _wire_or_raise(code: int, what: str) -> WireError:
    """A batch item's error as a value when it is a WireError; anything else is a bug: raised."""
    err = _error(code, what)
    if isinstance(err, WireError):
        return err
    raise err


def _in(data: Buffer) -> Any:
    return ffi.from_buffer("uint8_t[]", data)


class _Scratch(threading.local):
    """Per-thread buffers for batch calls, grown as needed and reused (no allocation per call
    once warm): the output bytes, and the per-item output lengths and status codes, each with
    its cdata view made once (a from_buffer per call cost more than protecting a voice packet)."""

    def __init__(self) -> None:
        self.out = bytearray(0)
        self.out_c: Any = None
        self.out_len = array("I")
        self.status = array("i")
        self.arrays_c: tuple[Any, Any] = (None, None)

    def out_buf(self, size: int) -> bytearray:
        if len(self.out) < size:
            self.out = bytearray(max(size, 2 * len(self.out)))
            self.out_c = None
        return self.out

    def out_cdata(self, size: int) -> tuple[bytearray, Any]:
        out = self.out_buf(size)
        if self.out_c is None:
            self.out_c = ffi.from_buffer("uint8_t[]", out)
        return out, self.out_c

    def item_arrays(self, n: int) -> tuple[array[int], array[int], Any, Any]:
        """(out_len, status, their cdata), at least ``n`` entries; the C batch calls write the
        first ``n`` of both, so nothing of an earlier call is read back."""
        if len(self.status) < n:
            m = max(n, 2 * len(self.status), 64)
            self.out_len = array("I", bytes(4 * m))
            self.status = array("i", bytes(4 * m))
            self.arrays_c = (
                ffi.from_buffer("uint32_t[]", self.out_len),
                ffi.from_buffer("int32_t[]", self.status),
            )
        return self.out_len, self.status, self.arrays_c[0], self.arrays_c[1]


_scratch = _Scratch()


_lock_of = attrgetter("_lock")


class _Locks:
    """Acquire the locks of several objects in one order (no deadlock between batches)."""

    def __init__(self, objs: Iterable[Any]) -> None:
        # Unique locks in id order, without a Python-level step per object: a fan-out batch
        # has one session per packet, and this ran longer than the C call.
        locks = list(dict.fromkeys(map(_lock_of, objs)))
        locks.sort(key=id)
        self._locks = locks

    def __enter__(self) -> None:
        held = 0
        try:
            for lk in self._locks:
                lk.acquire()
                held += 1
        except BaseException:
            for lk in self._locks[:held]:
                lk.release()
            raise

    def __exit__(self, *exc: object) -> None:
        for lk in reversed(self._locks):
            lk.release()


def _pack(items: Sequence[Buffer]) -> tuple[Any, int, Any, array[int]]:
    """(input cdata, its size, the lengths as cdata and as an array) for a batch call."""
    lens = array("I", map(len, items))
    blob = b"".join(items)
    if len(blob) >= 1 << 32:
        raise ValueError("batch input larger than 4 GiB")
    return blob if blob else _ONE_BYTE, len(blob), _u32(lens), lens  # bytes: passed as is (see _one)


_ONE_BYTE = ffi.new("uint8_t[]", 1)


def _u32(a: array[int]) -> Any:
    return ffi.from_buffer("uint32_t[]", a) if len(a) else ffi.new("uint32_t[]", 1)


# Struct objects that cut ``count`` outputs of one ``size`` out of a buffer in one C call: for a
# batch of voice packets, the per-packet slicing in Python cost more than the SRTP itself.
_SPLIT_CHUNK = 1024
_split_structs: dict[tuple[int, int], struct.Struct] = {}


def _splitter(size: int, count: int) -> struct.Struct:
    key = (size, count)
    st = _split_structs.get(key)
    if st is None:
        if len(_split_structs) >= 64:  # odd sizes come and go; keep the cache small
            _split_structs.clear()
        st = _split_structs[key] = struct.Struct(f"{size}s" * count)
    return st


def _split(out: bytearray, out_len: array[int], count: int) -> list[bytes]:
    """The first ``count`` outputs, written back to back into ``out``, as bytes objects."""
    if count == 0:
        return []
    lens = out_len[:count]
    first = lens[0]
    if first and lens.count(first) == count:  # all one size: the common case of voice
        if count <= _SPLIT_CHUNK:
            return list(_splitter(first, count).unpack_from(out))
        res: list[bytes] = []
        step = first * _SPLIT_CHUNK
        full, rest = divmod(count, _SPLIT_CHUNK)
        whole = _splitter(first, _SPLIT_CHUNK)
        for k in range(full):
            res.extend(whole.unpack_from(out, k * step))
        if rest:
            res.extend(_splitter(first, rest).unpack_from(out, full * step))
        return res
    ends = list(accumulate(lens))
    raw = bytes(memoryview(out)[: ends[-1]])
    return [raw[a:b] for a, b in zip(chain((0,), ends), ends, strict=False)]


def _run_batch(
    fn: Any,
    op: int,
    ptrs: list[Any],
    ctype: str,
    items: Sequence[Buffer],
    out_size_of: Any,
    what: str,
) -> tuple[list[bytes], list[int] | None]:
    """Run one C batch call: (outputs, None) when every item succeeded, else (outputs with b""
    where an item failed, status codes)."""
    if not items:
        return [], None
    if len(ptrs) not in (1, len(items)):
        raise ValueError(f"{what}: one object, or one per item")
    return _call_batch(fn, op, ffi.new(ctype, ptrs), len(ptrs), items, out_size_of, what)


def _call_batch(
    fn: Any, op: int, objs: Any, nobj: int, items: Sequence[Buffer], out_size_of: Any, what: str
) -> tuple[list[bytes], list[int] | None]:
    """_run_batch with the objects already a cdata array of ``nobj`` (1 or one per item)."""
    n = len(items)
    if n == 0:
        return [], None
    blob, size, lens, lens_a = _pack(items)
    out_size = max(1, int(out_size_of(size, lens_a)))
    out, out_c = _scratch.out_cdata(out_size)
    out_len, status, out_len_c, status_c = _scratch.item_arrays(n)
    rc = fn(op, objs, nobj, blob, size, lens, n, out_c, out_size, out_len_c, status_c)
    if rc < 0:
        raise _error(rc, what)
    res = _split(out, out_len, n)
    return res, None if rc == n else status[:n].tolist()


def _wire_results(res: list[bytes], status: list[int] | None, what: str) -> list[bytes | WireError]:
    if status is None:
        return res
    return [_wire_or_raise(c, what) if c else r for r, c in zip(res, status, strict=True)]


# -- SRTP / SRTCP --------------------------------------------------------------------------------


class SrtpSession:
    """``opmob.srtp.SrtpSession`` on libcrypto: same constructor, methods, bytes and errors.

    ``profile`` is ``PROFILE_AES_CM_128_HMAC_SHA1_80`` (the default; master salt 14 bytes) or
    ``PROFILE_AEAD_AES_128_GCM`` (master salt 12 bytes). ``max_streams`` is bounded here (at most
    65,536 per direction), since the C session allocates its stream table up front.
    """

    def __init__(
        self,
        master_key: Buffer,
        master_salt: Buffer,
        replay_window: int = _srtp.DEFAULT_REPLAY_WINDOW,
        max_streams: int = 64,
        profile: int = PROFILE_AES_CM_128_HMAC_SHA1_80,
    ) -> None:
        if not 64 <= replay_window < 0x8000:
            raise ValueError("SRTP replay window must be 64..32767")
        if max_streams < 1:
            raise ValueError("SRTP session needs room for at least one stream")
        if max_streams > lib.OPMOB_SRTP_MAX_STREAMS:
            raise ValueError("SRTP session of the C extension holds at most 65536 streams")
        salt_len = _srtp.master_salt_len(profile)  # ValueError for an unknown profile
        if len(master_key) != _srtp.MASTER_KEY_LEN or len(master_salt) != salt_len:
            raise ValueError(f"SRTP master key must be 16 bytes and master salt {salt_len}")
        p = ffi.new("opmob_srtp **")
        rc = lib.opmob_srtp_new_profile(
            profile,
            _in(master_key),
            len(master_key),
            _in(master_salt),
            len(master_salt),
            replay_window,
            max_streams,
            p,
        )
        if rc != 0:
            raise _error(rc, "SRTP session")
        self._s = ffi.gc(p[0], lib.opmob_srtp_free)
        self._objs = ffi.new("opmob_srtp *[]", [self._s])  # for batches of this session alone
        self.replay_window = replay_window
        self.max_streams = max_streams
        self.profile = profile
        self._out = ffi.new("uint8_t[]", MAX_PACKET)
        self._outbuf = ffi.buffer(self._out)
        self._words = int(lib.opmob_srtp_window_words(self._s))
        self._lock = threading.Lock()
        # Scratch for highest_index, made once: the relay asks it for every voice packet.
        self._q = (
            ffi.new("uint32_t *"),
            ffi.new("uint32_t *"),
            ffi.new("uint32_t *"),
            ffi.new("uint64_t[]", self._words),
            ffi.new("uint64_t[]", self._words),
        )

    def _one(self, fn: Any, data: Buffer, what: str) -> bytes:
        # cffi hands a bytes object's own memory to a uint8_t * parameter; wrapping it first
        # (from_buffer) cost as much as the C protect itself. Other buffers still need wrapping.
        src = data if type(data) is bytes else _in(data)
        with self._lock:
            n = fn(self._s, src, len(src), self._out, MAX_PACKET)
            if n < 0:
                raise _error(n, what)
            return self._outbuf[0:n]

    def protect(self, rtp: Buffer) -> bytes:
        """The SRTP packet for the RTP packet ``rtp``."""
        return self._one(lib.opmob_srtp_protect, rtp, "SRTP protect")

    def unprotect(self, srtp: Buffer) -> bytes:
        """The RTP packet inside ``srtp``; raises a WireError if it is not one."""
        return self._one(lib.opmob_srtp_unprotect, srtp, "SRTP unprotect")

    def protect_rtcp(self, rtcp: Buffer) -> bytes:
        """The SRTCP packet (encrypted, E = 1) for the RTCP packet ``rtcp``."""
        return self._one(lib.opmob_srtp_protect_rtcp, rtcp, "SRTCP protect")

    def unprotect_rtcp(self, srtcp: Buffer) -> bytes:
        """The RTCP packet inside ``srtcp``; raises a WireError if it is not one."""
        return self._one(lib.opmob_srtp_unprotect_rtcp, srtcp, "SRTCP unprotect")

    # Batch forms: one C call; per packet the result or its WireError (as a value).
    def protect_batch(self, packets: Sequence[Buffer]) -> list[bytes | WireError]:
        return srtp_batch(lib.OPMOB_OP_PROTECT, [self], packets)

    def unprotect_batch(self, packets: Sequence[Buffer]) -> list[bytes | WireError]:
        return srtp_batch(lib.OPMOB_OP_UNPROTECT, [self], packets)

    def protect_rtcp_batch(self, packets: Sequence[Buffer]) -> list[bytes | WireError]:
        return srtp_batch(lib.OPMOB_OP_PROTECT_RTCP, [self], packets)

    def unprotect_rtcp_batch(self, packets: Sequence[Buffer]) -> list[bytes | WireError]:
        return srtp_batch(lib.OPMOB_OP_UNPROTECT_RTCP, [self], packets)

    def stream_count(self, outbound: bool = False) -> int:
        with self._lock:
            return int(lib.opmob_srtp_stream_count(self._s, 1 if outbound else 0))

    def stream_state(self, ssrc: int, outbound: bool = False) -> tuple[int, int, int, int, int] | None:
        """(roc, highest seq, replay bits, SRTCP index, SRTCP replay bits), or None if unknown."""
        roc = ffi.new("uint32_t *")
        seq = ffi.new("uint32_t *")
        idx = ffi.new("uint32_t *")
        bits = ffi.new("uint64_t[]", self._words)
        rbits = ffi.new("uint64_t[]", self._words)
        with self._lock:
            found = lib.opmob_srtp_stream_state(
                self._s, ssrc & 0xFFFFFFFF, 1 if outbound else 0, roc, seq, idx, bits, rbits, self._words
            )
        if found < 0:
            raise _error(found, "SRTP stream state")
        if not found:
            return None

        def as_int(words: Any) -> int:
            return sum(int(words[i]) << (64 * i) for i in range(self._words))

        return (int(roc[0]), int(seq[0]), as_int(bits), int(idx[0]), as_int(rbits))

    def highest_index(self, ssrc: int, outbound: bool = False) -> int | None:
        """The highest packet index (ROC << 16 | seq) known for ``ssrc``, or None; see
        ``opmob.srtp.SrtpSession.highest_index``. Allocates no cffi object per call."""
        roc, seq, idx, bits, rbits = self._q
        with self._lock:
            found = lib.opmob_srtp_stream_state(
                self._s, ssrc & 0xFFFFFFFF, 1 if outbound else 0, roc, seq, idx, bits, rbits, self._words
            )
        if found < 0:
            raise _error(found, "SRTP stream state")
        return (int(roc[0]) << 16) | int(seq[0]) if found else None

    def remove_stream(self, ssrc: int) -> None:
        """Forget ``ssrc`` in both directions (see ``opmob.srtp.SrtpSession.remove_stream``)."""
        with self._lock:
            lib.opmob_srtp_remove_stream(self._s, ssrc & 0xFFFFFFFF)


# Output room per packet: the most any profile adds (GCM's 16-byte tag, its 20-byte SRTCP
# trailer), so a fan-out may mix profiles and no session is looked at per call; the unused bytes
# are per-thread scratch.
_SRTP_STRIDE = {
    int(lib.OPMOB_OP_PROTECT): max(lib.OPMOB_SRTP_TAG_LEN, lib.OPMOB_SRTP_GCM_TAG_LEN),
    int(lib.OPMOB_OP_PROTECT_RTCP): max(lib.OPMOB_SRTCP_TRAILER_LEN, lib.OPMOB_SRTCP_GCM_TRAILER_LEN),
    int(lib.OPMOB_OP_UNPROTECT): 0,
    int(lib.OPMOB_OP_UNPROTECT_RTCP): 0,
}


def srtp_batch(
    op: int, sessions: Sequence[SrtpSession], packets: Sequence[Buffer]
) -> list[bytes | WireError]:
    """One C call for many packets: ``op`` is ``lib.OPMOB_OP_PROTECT``, ``_UNPROTECT``,
    ``_PROTECT_RTCP`` or ``_UNPROTECT_RTCP``; ``sessions`` one for all packets or one per packet
    (fan-out: the same packet under each listener's key). Packets of one session run in order,
    exactly as the single calls would."""
    extra = _SRTP_STRIDE.get(int(op))
    if extra is None:
        raise ValueError("unknown SRTP batch operation")
    for s in sessions:
        if not isinstance(s, SrtpSession):
            raise TypeError("srtp_batch needs opmob_c.SrtpSession objects")

    def out_size(size: int, lens: array[int]) -> int:
        return size + extra * len(lens)

    if len(sessions) == 1:  # many packets of one session: its own pointer array, one lock
        s = sessions[0]
        with s._lock:
            res, status = _call_batch(lib.opmob_srtp_batch, op, s._objs, 1, packets, out_size, "SRTP batch")
    else:
        with _Locks(sessions):
            res, status = _run_batch(
                lib.opmob_srtp_batch,
                op,
                [s._s for s in sessions],
                "opmob_srtp *[]",
                packets,
                out_size,
                "SRTP batch",
            )
    return _wire_results(res, status, "SRTP")


# -- DVI4 -----------------------------------------------------------------------------------------


def _pcm_samples(nbytes: int) -> int:
    # opmob.dvi4._pcm_samples, same rule and messages.
    if nbytes & 3 or nbytes == 0:
        raise ValueError(f"DVI4 needs a non-zero, even number of s16 samples, got {nbytes} bytes")
    if nbytes > 2 * MAX_SAMPLES:
        raise ValueError(f"DVI4 block of {nbytes >> 1} samples exceeds {MAX_SAMPLES}")
    return nbytes >> 1


def _out(out: Any, need: int) -> Any:
    # opmob.dvi4._out: the caller's buffer, checked, or a new bytearray.
    if out is None:
        return bytearray(need)
    if len(out) < need:
        raise ValueError(f"output buffer holds {len(out)} bytes, {need} needed")
    out[0] = out[0]
    return out


class Dvi4Encoder:
    """``opmob.dvi4.Dvi4Encoder`` in C: PCM to DVI4 payloads, the state carried along."""

    def __init__(self, predicted: int = 0, index: int = 0) -> None:
        self._st = ffi.new("opmob_dvi4_state *")
        self._lock = threading.Lock()
        self.reset(predicted, index)

    def reset(self, predicted: int = 0, index: int = 0) -> None:
        _dvi4.check_state(predicted, index)
        self._st.predicted = predicted
        self._st.index = index

    @property
    def predicted(self) -> int:
        return int(self._st.predicted)

    @predicted.setter
    def predicted(self, value: int) -> None:
        _dvi4.check_state(value, self.index)
        self._st.predicted = value

    @property
    def index(self) -> int:
        return int(self._st.index)

    @index.setter
    def index(self, value: int) -> None:
        _dvi4.check_state(self.predicted, value)
        self._st.index = value

    def encode(self, pcm: Buffer, out: Any = None) -> Any:
        """One payload from ``pcm`` (s16le); ``out`` as in the twin."""
        src = _in(pcm)
        n = _pcm_samples(len(src))
        need = HEADER_LEN + (n >> 1)
        out = _out(out, need)
        with self._lock:
            r = lib.opmob_dvi4_encode(self._st, src, len(src), ffi.from_buffer("uint8_t[]", out), need)
        if r < 0:
            raise _error(r, "DVI4 encode")
        return out

    def encode_batch(self, pcms: Sequence[Buffer]) -> list[bytes]:
        """Consecutive blocks of this stream, one C call: the payloads, in order."""
        return dvi4_encode_batch([self], pcms)


class Dvi4Decoder:
    """``opmob.dvi4.Dvi4Decoder`` in C: the state from each payload's header, with the counters
    ``frames``, ``resyncs`` and ``reserved_nonzero``."""

    def __init__(self, samples: int | None = FRAME_SAMPLES) -> None:
        if samples is not None and (samples < 2 or samples & 1 or samples > MAX_SAMPLES):
            raise ValueError(f"DVI4 block size {samples} not an even count in 2..{MAX_SAMPLES}")
        self._d = ffi.new("opmob_dvi4_dec *")
        self._d.samples = 0 if samples is None else samples
        self._lock = threading.Lock()

    @property
    def samples(self) -> int | None:
        return int(self._d.samples) or None

    @property
    def predicted(self) -> int:
        return int(self._d.predicted)

    @property
    def index(self) -> int:
        return int(self._d.index)

    @property
    def frames(self) -> int:
        return int(self._d.frames)

    @property
    def resyncs(self) -> int:
        return int(self._d.resyncs)

    @property
    def reserved_nonzero(self) -> int:
        return int(self._d.reserved_nonzero)

    def decode(self, payload: Buffer, out: Any = None) -> Any:
        """PCM for one payload; Truncated, Oversized or BadValue for a bad one (the decoder then
        stays untouched); ``out`` as in the twin."""
        src = _in(payload)
        with self._lock:
            n = lib.opmob_dvi4_payload_samples(self._d, src, len(src))
            if n < 0:
                raise _error(n, "DVI4 decode")
            out = _out(out, 2 * n)
            r = lib.opmob_dvi4_decode(self._d, src, len(src), ffi.from_buffer("uint8_t[]", out), 2 * n)
        if r < 0:
            raise _error(r, "DVI4 decode")
        return out

    def decode_batch(self, payloads: Sequence[Buffer]) -> list[bytes | WireError]:
        return dvi4_decode_batch([self], payloads)


def encode_frame(
    pcm: Buffer, state: tuple[int, int] | None = None, out: Any = None
) -> tuple[Any, tuple[int, int]]:
    """``opmob.dvi4.encode_frame``: (payload, state after it)."""
    st = ffi.new("opmob_dvi4_state *")
    if state is not None:
        _dvi4.check_state(state[0], state[1])
        st.predicted, st.index = state
    src = _in(pcm)
    n = _pcm_samples(len(src))
    need = HEADER_LEN + (n >> 1)
    out = _out(out, need)
    r = lib.opmob_dvi4_encode(st, src, len(src), ffi.from_buffer("uint8_t[]", out), need)
    if r < 0:
        raise _error(r, "DVI4 encode")
    return out, (int(st.predicted), int(st.index))


def decode_frame(payload: Buffer, out: Any = None) -> Any:
    """``opmob.dvi4.decode_frame``: PCM for a payload of any even sample count up to 960."""
    src = _in(payload)
    n = lib.opmob_dvi4_payload_samples(ffi.NULL, src, len(src))
    if n < 0:
        raise _error(n, "DVI4 decode")
    out = _out(out, 2 * n)
    r = lib.opmob_dvi4_decode(ffi.NULL, src, len(src), ffi.from_buffer("uint8_t[]", out), 2 * n)
    if r < 0:
        raise _error(r, "DVI4 decode")
    return out


def dvi4_encode_batch(encoders: Sequence[Dvi4Encoder], pcms: Sequence[Buffer]) -> list[bytes]:
    """Many blocks in one C call; ``encoders`` one for all (consecutive blocks of one stream) or
    one per block (one frame of each of many streams). Every block is checked first (ValueError,
    nothing encoded), as PCM is local input, not network input."""
    for p in pcms:
        _pcm_samples(len(p))
    with _Locks(encoders):
        res, status = _run_batch(
            lib.opmob_dvi4_batch,
            lib.OPMOB_OP_ENCODE,
            [e._st for e in encoders],
            "void *[]",
            pcms,
            lambda size, lens: size // 4 + HEADER_LEN * len(lens),
            "DVI4 encode batch",
        )
    if status is not None:
        raise _error(next(c for c in status if c), "DVI4 encode batch")
    return res


def dvi4_decode_batch(
    decoders: Sequence[Dvi4Decoder | None], payloads: Sequence[Buffer]
) -> list[bytes | WireError]:
    """Many payloads in one C call; ``decoders`` one for all or one per payload (None: the rules
    of ``decode_frame``). Per payload its PCM or its WireError."""
    real = [d for d in decoders if d is not None]
    with _Locks(real):
        res, status = _run_batch(
            lib.opmob_dvi4_batch,
            lib.OPMOB_OP_DECODE,
            [ffi.NULL if d is None else d._d for d in decoders],
            "void *[]",
            payloads,
            lambda size, lens: 4 * size,
            "DVI4 decode batch",
        )
    return _wire_results(res, status, "DVI4 decode")


# -- Codec2 ---------------------------------------------------------------------------------------

#: Mode names and the libcodec2 modes behind them (all 8 kHz).
CODEC2_MODES = {
    "3200": 3200,
    "2400": 2400,
    "1600": 1600,
    "1400": 1400,
    "1300": 1300,
    "1200": 1200,
    "700C": 700,
}


def _mode(mode: str | int) -> tuple[str, int]:
    name = str(mode).upper()
    if name == "700":
        name = "700C"
    if name not in CODEC2_MODES:
        raise ValueError(f"Codec2 mode {mode!r} not one of {', '.join(CODEC2_MODES)}")
    return name, CODEC2_MODES[name]


class Codec2:
    """One Codec2 stream through libcodec2 (encoder and decoder memories; use one object per
    stream and direction). PCM is s16le at 8 kHz; bits are libcodec2's packed frames, as
    ``c2enc`` writes them. libcodec2's decoder draws on a process-wide random generator, so
    decoded audio depends on the decodes made before it in the process; bits never do."""

    def __init__(self, mode: str | int = "3200") -> None:
        self.mode, m = _mode(mode)
        p = ffi.new("opmob_codec2 **")
        rc = lib.opmob_codec2_new(m, p)
        if rc != 0:
            raise _error(rc, "Codec2")
        self._c = ffi.gc(p[0], lib.opmob_codec2_free)
        self.samples_per_frame = int(lib.opmob_codec2_samples_per_frame(self._c))
        self.bits_per_frame = int(lib.opmob_codec2_bits_per_frame(self._c))
        self.bytes_per_frame = int(lib.opmob_codec2_bytes_per_frame(self._c))
        self.frame_ms = self.samples_per_frame // 8
        self._lock = threading.Lock()

    def encode(self, pcm: Buffer) -> bytes:
        """Bits for a whole number (at least one) of frames of s16le speech; ValueError otherwise."""
        src = _in(pcm)
        fb = 2 * self.samples_per_frame
        if len(src) == 0 or len(src) % fb:
            raise ValueError(f"Codec2 {self.mode} takes whole frames of {fb} bytes, got {len(src)}")
        out = bytearray(len(src) // fb * self.bytes_per_frame)
        with self._lock:
            r = lib.opmob_codec2_encode(self._c, src, len(src), ffi.from_buffer("uint8_t[]", out), len(out))
        if r < 0:
            raise _error(r, "Codec2 encode")
        return bytes(out)

    def decode(self, bits: Buffer) -> bytes:
        """s16le speech for a whole number (at least one) of frames; Truncated otherwise."""
        src = _in(bits)
        bpf = self.bytes_per_frame
        if len(src) < bpf or len(src) % bpf:
            raise Truncated(
                f"Codec2 {self.mode}: {len(src)} bytes is not a whole number of {bpf}-byte frames"
            )
        out = bytearray(len(src) // bpf * 2 * self.samples_per_frame)
        with self._lock:
            r = lib.opmob_codec2_decode(self._c, src, len(src), ffi.from_buffer("uint8_t[]", out), len(out))
        if r < 0:
            raise _error(r, "Codec2 decode")
        return bytes(out)


def codec2_batch(op: int, codecs: Sequence[Codec2], items: Sequence[Buffer]) -> list[bytes | Exception]:
    """Many frames (or runs of frames) in one C call: ``op`` is ``lib.OPMOB_OP_ENCODE`` (items:
    PCM; a bad length is ValueError) or ``lib.OPMOB_OP_DECODE`` (items: bits; a bad length is
    Truncated); ``codecs`` one for all or one per item. Per item its output or its error."""
    if op not in (lib.OPMOB_OP_ENCODE, lib.OPMOB_OP_DECODE):
        raise ValueError("unknown Codec2 batch operation")
    if not codecs:
        raise ValueError("codec2_batch needs at least one codec")

    # Output bounds: encode at most 8 bytes per 160 samples; decode at most 320 samples per
    # 4 bytes (700C), the extremes over the modes.
    def out_size(size: int, lens: array[int]) -> int:
        if op == lib.OPMOB_OP_ENCODE:
            return size // 320 * 8 + 8
        return size // 4 * 640 + 640

    with _Locks(codecs):
        res, status = _run_batch(
            lib.opmob_codec2_batch,
            op,
            [c._c for c in codecs],
            "opmob_codec2 *[]",
            items,
            out_size,
            "Codec2 batch",
        )
    if status is None:
        return list(res)
    return [_error(c, "Codec2") if c else r for r, c in zip(res, status, strict=True)]


# -- The relay's pipeline ------------------------------------------------------------------------


class Transcoder:
    """The relay's transcoding hot path for up to ``max_streams`` slots, many packets per call.

    A slot is one talker's stream crossing between an accessory link (DVI4, PT 5) and a backhaul
    link (Codec2, ``mode``): it owns a Codec2 encoder and decoder (made in ``open``), a DVI4
    encoder state, the DVI4 decoder counters, and the sequence numbers of the two streams it
    sends. ``to_codec2`` runs unprotect → DVI4 decode → Codec2 encode → protect; ``to_dvi4``
    unprotect → Codec2 decode → DVI4 encode → protect (``c_ext/opmob_pipeline.c`` spells out
    each step and header field). A session None means plain RTP on that side (e.g. to fan the
    DVI4 out under each listener's key with ``srtp_batch``). The sessions given to a slot are
    used by it until it is closed; the Transcoder keeps them alive.
    """

    def __init__(self, max_streams: int = 256) -> None:
        if not 1 <= max_streams <= lib.OPMOB_TC_MAX_STREAMS:
            raise ValueError("Transcoder holds 1..65536 streams")
        p = ffi.new("opmob_tc **")
        rc = lib.opmob_tc_new(max_streams, p)
        if rc != 0:
            raise _error(rc, "Transcoder")
        self._t = ffi.gc(p[0], lib.opmob_tc_free)
        self.max_streams = max_streams
        self._slots: dict[int, tuple[str, list[SrtpSession]]] = {}
        self._lock = threading.Lock()

    def open(
        self,
        slot: int,
        *,
        codec2_ssrc: int,
        dvi4_ssrc: int,
        mode: str | int = "3200",
        codec2_pt: int = 96,
        dvi4_pt: int = _dvi4.PAYLOAD_TYPE,
        codec2_seq: int = 0,
        dvi4_seq: int = 0,
        dvi4_state: tuple[int, int] = (0, 0),
        dvi4_rx: SrtpSession | None = None,
        codec2_tx: SrtpSession | None = None,
        codec2_rx: SrtpSession | None = None,
        dvi4_tx: SrtpSession | None = None,
    ) -> None:
        """(Re)open ``slot``: its codec states are made here, once."""
        name, m = _mode(mode)
        _dvi4.check_state(*dvi4_state)
        if not 0 <= slot < self.max_streams:
            raise ValueError(f"slot {slot} outside 0..{self.max_streams - 1}")
        sessions = [s for s in (dvi4_rx, codec2_tx, codec2_rx, dvi4_tx) if s is not None]
        for s in sessions:
            if not isinstance(s, SrtpSession):
                raise TypeError("Transcoder sessions must be opmob_c.SrtpSession objects")
        cfg = ffi.new("opmob_tc_config *")
        cfg.codec2_mode = m
        cfg.dvi4_pt = dvi4_pt
        cfg.codec2_pt = codec2_pt
        cfg.codec2_ssrc = codec2_ssrc
        cfg.codec2_seq = codec2_seq
        cfg.dvi4_ssrc = dvi4_ssrc
        cfg.dvi4_seq = dvi4_seq
        cfg.dvi4_enc.predicted, cfg.dvi4_enc.index = dvi4_state
        cfg.dvi4_rx = ffi.NULL if dvi4_rx is None else dvi4_rx._s
        cfg.codec2_tx = ffi.NULL if codec2_tx is None else codec2_tx._s
        cfg.codec2_rx = ffi.NULL if codec2_rx is None else codec2_rx._s
        cfg.dvi4_tx = ffi.NULL if dvi4_tx is None else dvi4_tx._s
        with self._lock:
            rc = lib.opmob_tc_open(self._t, slot, cfg)
            if rc != 0:
                raise _error(rc, "Transcoder open")
            self._slots[slot] = (name, sessions)

    def close(self, slot: int) -> None:
        with self._lock:
            if slot in self._slots:
                lib.opmob_tc_close(self._t, slot)
                del self._slots[slot]

    def info(self, slot: int) -> dict[str, Any]:
        """The slot's state: sequence numbers, DVI4 encoder state and decoder counters."""
        i = ffi.new("opmob_tc_info *")
        with self._lock:
            if not 0 <= slot < self.max_streams:
                raise ValueError(f"slot {slot} outside 0..{self.max_streams - 1}")
            lib.opmob_tc_info_get(self._t, slot, i)
            mode = self._slots[slot][0] if slot in self._slots else None
        return {
            "open": bool(i.open),
            "mode": mode,
            "codec2_seq": int(i.codec2_seq),
            "dvi4_seq": int(i.dvi4_seq),
            "dvi4_state": (int(i.dvi4_enc.predicted), int(i.dvi4_enc.index)),
            "dvi4_frames": int(i.dvi4_dec.frames),
            "dvi4_resyncs": int(i.dvi4_dec.resyncs),
            "pending_samples": int(i.pending_samples),
            "gaps": int(i.gaps),
        }

    def to_codec2(self, items: Sequence[tuple[int, Buffer]]) -> list[list[bytes] | WireError]:
        """Accessory → backhaul for (slot, packet) items: per item its 0 or 1 output packets
        (a 40 ms mode sends every second time) or its WireError."""
        return self._run(lib.OPMOB_TC_TO_CODEC2, items, 1)

    def to_dvi4(self, items: Sequence[tuple[int, Buffer]]) -> list[list[bytes] | WireError]:
        """Backhaul → accessory for (slot, packet) items: per item its 1 or 2 output packets
        (20 ms each) or its WireError."""
        return self._run(lib.OPMOB_TC_TO_DVI4, items, 2)

    def _run(
        self, direction: int, items: Sequence[tuple[int, Buffer]], per_item: int
    ) -> list[list[bytes] | WireError]:
        n = len(items)
        if n == 0:
            return []
        slots = array("I", [0]) * n
        packets: list[Buffer] = []
        for k, (slot, pkt) in enumerate(items):
            if not 0 <= slot < self.max_streams:
                raise ValueError(f"slot {slot} outside 0..{self.max_streams - 1}")
            slots[k] = slot
            packets.append(pkt)
        blob, size, lens, _ = _pack(packets)
        max_out = per_item * n
        out_size = max_out * MAX_PACKET
        out = _scratch.out_buf(out_size)
        out_len = array("I", bytes(4 * max_out))
        status = array("i", bytes(4 * n))
        with self._lock:
            sessions = [s for slot in set(slots) if slot in self._slots for s in self._slots[slot][1]]
            with _Locks(sessions):
                rc = lib.opmob_tc_run(
                    self._t,
                    direction,
                    ffi.from_buffer("uint32_t[]", slots),
                    blob,
                    size,
                    lens,
                    n,
                    ffi.from_buffer("uint8_t[]", out),
                    out_size,
                    max_out,
                    ffi.from_buffer("uint32_t[]", out_len),
                    ffi.from_buffer("int32_t[]", status),
                )
        if rc < 0:
            raise _error(rc, "Transcoder")
        packets_out = _split(out, out_len, rc)
        results: list[list[bytes] | WireError] = []
        k = 0
        for code in status:
            if code < 0:
                results.append(_wire_or_raise(code, "Transcoder"))
            else:
                results.append(packets_out[k : k + code])
                k += code
        return results
