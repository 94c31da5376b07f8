"""The one place where CPython and MicroPython differ.

Everything else in ``opmob`` imports these names and stays runtime-neutral:

- ``IS_MICROPYTHON``, ``const``;
- ``micropython``: the real module on MicroPython, a shim on CPython. MicroPython's compiler
  recognises ``@micropython.viper`` / ``@micropython.native`` by *name* at compile time (they are
  not run-time attributes), so a module writes ``from opmob.compat import micropython`` and then the
  literal decorator ``@micropython.viper``; on CPython the shim makes the decorator a no-op, so a viper
  function must also be correct as plain Python;
- ``ptr8``, ``ptr16``, ``ptr32``: viper's pointer casts are resolved by the compiler, so these globals
  only matter on CPython, where they give an indexable view with viper's unsigned element types
  (store values masked to the element width, as viper silently truncates);
- ``AesCtr``: AES-128 counter mode keystream XOR of at most ``MAX`` bytes, the block counter
  stepping in the IV's low 16 bits (RFC 3711 §4.1.1; a call that would carry out of them raises
  ValueError). CPython uses OpenSSL through ``cryptography``; MicroPython builds CTR on
  ``cryptolib.aes`` in ECB mode (the port has no CTR mode);
- ``AesEcb``: single-block AES encryption, for key derivation;
- ``AesGcm``: AES-128-GCM with a 12-byte IV and a 16-byte tag (SRTP's AEAD_AES_128_GCM profile),
  ``cryptography``'s AESGCM on CPython; None on MicroPython, whose ``cryptolib`` has no GCM (and a
  GHASH of our own is not vetted crypto);
- ``HmacSha1``, ``HmacSha256``: HMAC (RFC 2104). MicroPython has no ``hmac`` module, so they
  are built on ``hashlib``;
- ``xor_into``: ``dst[i] ^= src[i]``, in viper on MicroPython.
"""

import sys

IS_MICROPYTHON = sys.implementation.name == "micropython"

if IS_MICROPYTHON:
    import hashlib

    import cryptolib
    import micropython

    const = micropython.const
    # Placeholders: inside viper code the compiler treats these names as casts.
    ptr8 = ptr16 = ptr32 = None

    @micropython.viper
    def xor_into(dst, src, n: int):
        d = ptr8(dst)
        s = ptr8(src)
        i = 0
        while i < n:
            d[i] = d[i] ^ s[i]
            i += 1

    @micropython.viper
    def _ctr_fill(ctr, nblocks: int):
        # Write nblocks successive big-endian counter blocks into ctr[16:], starting from ctr[0:16].
        # Only the low 16 bits of the counter step (RFC 3711 keeps the block index in 16 bits).
        c = ptr8(ctr)
        base = (c[14] << 8) | c[15]
        b = 1
        while b < nblocks:
            o = b * 16
            i = 0
            while i < 14:
                c[o + i] = c[i]
                i += 1
            v = (base + b) & 0xFFFF
            c[o + 14] = v >> 8
            c[o + 15] = v & 0xFF
            b += 1

    AesGcm = None

    class AesEcb:
        def __init__(self, key):
            self._aes = cryptolib.aes(bytes(key), 1)

        def encrypt_block(self, block):
            return self._aes.encrypt(bytes(block))

    @micropython.viper
    def _xor_ks(dst, doff: int, src, soff: int, ks, n: int):
        # dst[doff + i] = src[soff + i] ^ ks[i]; dst may be src with doff == soff (in place).
        d = ptr8(dst)
        s = ptr8(src)
        k = ptr8(ks)
        i = 0
        while i < n:
            d[doff + i] = s[soff + i] ^ k[i]
            i += 1

    _AES_MAX = const(1024 + 64)
    # Scratch shared by every AesCtr: counter blocks and keystream live only within one xor call,
    # which never yields, so instances (one per SRTP/SRTCP/signalling context) need not own them.
    _ctr_scratch = bytearray(_AES_MAX + 16)
    _ks_scratch = bytearray(_AES_MAX + 16)
    # Views of the first 16 * k bytes of each, made the first time k blocks are encrypted and kept:
    # a packet size seen once costs two memoryviews once, not per packet.
    _ctr_views = [None] * ((_AES_MAX + 15) // 16 + 1)
    _ks_views = [None] * ((_AES_MAX + 15) // 16 + 1)

    class AesCtr:
        """AES-CTR keystream with a 16-bit block counter in the low bytes of the IV (RFC 3711)."""

        MAX = _AES_MAX

        def __init__(self, key):
            self._aes = cryptolib.aes(bytes(key), 1)

        def xor(self, iv, data, out):
            """out[:len(data)] = data XOR keystream(iv). ``out`` may be ``data`` (in place)."""
            self.xor_at(iv, data, 0, out, 0, len(data))
            return out

        def xor_at(self, iv, src, soff, dst, doff, n):
            """dst[doff:doff + n] = src[soff:soff + n] XOR keystream(iv), allocating nothing once
            a payload size has been seen. ``dst`` may be ``src`` with ``doff == soff``."""
            if n > _AES_MAX:
                raise ValueError("AesCtr: payload too large")
            if n < 0 or soff + n > len(src) or doff + n > len(dst):
                raise ValueError("AesCtr: range outside the buffer")
            nblocks = (n + 15) >> 4
            if ((iv[14] << 8) | iv[15]) + nblocks > 0x10000:
                raise ValueError("AesCtr: block counter would leave its 16 bits")
            if nblocks == 0:
                return
            ctr = _ctr_scratch
            for i in range(16):
                ctr[i] = iv[i]
            _ctr_fill(ctr, nblocks)
            vc = _ctr_views[nblocks]
            if vc is None:
                vc = _ctr_views[nblocks] = memoryview(ctr)[: nblocks * 16]
                _ks_views[nblocks] = memoryview(_ks_scratch)[: nblocks * 16]
            self._aes.encrypt(vc, _ks_views[nblocks])
            _xor_ks(dst, doff, src, soff, _ks_scratch, n)

    class HmacSha1:
        def __init__(self, key):
            if len(key) > 64:
                key = hashlib.sha1(key).digest()
            key = bytes(key) + bytes(64 - len(key))
            self._ipad = bytes(b ^ 0x36 for b in key)
            self._opad = bytes(b ^ 0x5C for b in key)

        def digest(self, *parts):
            h = hashlib.sha1(self._ipad)
            for p in parts:
                h.update(p)
            o = hashlib.sha1(self._opad)
            o.update(h.digest())
            return o.digest()

        def digest1(self, data):
            """The HMAC of one buffer. hashlib has no copy(), so each call makes two sha1 objects
            and two 20-byte digests: the only allocation left on the SRTP packet path."""
            h = hashlib.sha1(self._ipad)
            h.update(data)
            o = hashlib.sha1(self._opad)
            o.update(h.digest())
            return o.digest()

    class HmacSha256:
        def __init__(self, key):
            if len(key) > 64:
                key = hashlib.sha256(key).digest()
            key = bytes(key) + bytes(64 - len(key))
            self._ipad = bytes(b ^ 0x36 for b in key)
            self._opad = bytes(b ^ 0x5C for b in key)

        def digest(self, *parts):
            h = hashlib.sha256(self._ipad)
            for p in parts:
                h.update(p)
            o = hashlib.sha256(self._opad)
            o.update(h.digest())
            return o.digest()

else:
    import hashlib
    import hmac

    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    def const(x):
        return x

    class _MicroPythonShim:
        """``micropython`` on CPython: compiler hints become no-ops."""

        @staticmethod
        def viper(f):
            return f

        native = viper

        @staticmethod
        def const(x):
            return x

    micropython = _MicroPythonShim()

    def ptr8(buf):
        return buf

    def ptr16(buf):
        return memoryview(buf).cast("B").cast("H")

    def ptr32(buf):
        return memoryview(buf).cast("B").cast("I")

    def xor_into(dst, src, n):
        dst[:n] = (int.from_bytes(dst[:n], "little") ^ int.from_bytes(src[:n], "little")).to_bytes(
            n, "little"
        )

    class AesEcb:
        def __init__(self, key):
            self._enc = Cipher(algorithms.AES(bytes(key)), modes.ECB()).encryptor()

        def encrypt_block(self, block):
            return self._enc.update(bytes(block))

    class AesCtr:
        """AES-CTR keystream with a 16-bit block counter in the low bytes of the IV (RFC 3711)."""

        MAX = 1024 + 64

        def __init__(self, key):
            self._alg = algorithms.AES(bytes(key))

        def xor(self, iv, data, out):
            n = len(data)
            if n > self.MAX:
                raise ValueError("AesCtr: payload too large")
            # OpenSSL carries into all 128 bits, the MicroPython twin into 16 only: refusing any
            # carry out of the low 16 bits keeps both twins byte-identical (SRTP IVs end in 0000).
            if ((iv[14] << 8) | iv[15]) + ((n + 15) >> 4) > 0x10000:
                raise ValueError("AesCtr: block counter would leave its 16 bits")
            res = Cipher(self._alg, modes.CTR(bytes(iv))).encryptor().update(bytes(data))
            out[:n] = res
            return out

        def xor_at(self, iv, src, soff, dst, doff, n):
            if n < 0 or soff + n > len(src) or doff + n > len(dst):
                raise ValueError("AesCtr: range outside the buffer")
            dst[doff : doff + n] = self.xor(iv, bytes(src[soff : soff + n]), bytearray(n))

    class AesGcm:
        """AES-GCM, 12-byte IV, 16-byte tag appended to the ciphertext."""

        TAG_LEN = 16

        def __init__(self, key):
            self._aead = AESGCM(bytes(key))

        def seal(self, iv, data, aad):
            """ciphertext || tag."""
            return self._aead.encrypt(bytes(iv), bytes(data), bytes(aad))

        def open(self, iv, sealed, aad):
            """The plaintext of ciphertext || tag, or None when the tag does not match."""
            try:
                return self._aead.decrypt(bytes(iv), bytes(sealed), bytes(aad))
            except InvalidTag:
                return None

    class HmacSha1:
        def __init__(self, key):
            self._base = hmac.new(bytes(key), digestmod=hashlib.sha1)

        def digest(self, *parts):
            h = self._base.copy()
            for p in parts:
                h.update(p)
            return h.digest()

        def digest1(self, data):
            h = self._base.copy()
            h.update(data)
            return h.digest()

    class HmacSha256:
        def __init__(self, key):
            self._base = hmac.new(bytes(key), digestmod=hashlib.sha256)

        def digest(self, *parts):
            h = self._base.copy()
            for p in parts:
                h.update(p)
            return h.digest()


# --- Drivers: clock, UDP addresses, waiting for a socket -------------------------------------------
# Used by the asyncio drivers (relay_uasyncio.py and the accessory), never by the sans-I/O cores.
#
# - ``monotonic()``: float seconds from an arbitrary start, never going back. MicroPython has no
#   ``time.monotonic``; its ``ticks_ms`` wraps, so the wrap-safe differences are accumulated (the
#   driver calls this far more often than once per half wrap period, 6 days on the unix port).
#   Counting from the first call keeps the numbers small: on ports with single-precision floats
#   (ESP32) a float near 10^5 s still resolves about 8 ms.
# - ``addr_from_recv(a)``: the peer of ``recvfrom`` as CPython gives it, ``(host, port)`` (IPv6:
#   ``(host, port, flowinfo, scope_id)``). The unix port returns a raw sockaddr instead; bare-metal
#   ports already return a tuple. Cores therefore see the same address values on every runtime.
# - ``addr_for_send(addr)``: what ``sendto`` takes for such a tuple (the unix port wants the raw
#   sockaddr again). Numeric hosts only: a relay answers the addresses it received from.
# - ``wait_readable(sock)``: awaitable that completes when ``sock`` has data, without busy polling:
#   on MicroPython it parks the task in asyncio's own ``select.poll`` (the mechanism asyncio's
#   streams use), so a datagram wakes the task at once and an idle relay costs no CPU.
#   ``ReadWait(sock)`` is the same, awaited again and again without an object per wait.
# - ``sleep_ms(ms)``: asyncio sleep of whole milliseconds. On MicroPython it returns asyncio's one
#   reusable sleep object, so awaiting it allocates nothing (the audio tasks rely on that).
# - ``ticks_ms()``: integer milliseconds for the audio paths, to be compared modulo 2^30
#   (``accessory.jitter.tdiff``): a small int where a float time would be a heap object.

if IS_MICROPYTHON:
    import time as _time

    _mono = [_time.ticks_ms(), 0]

    def monotonic():
        t = _time.ticks_ms()
        _mono[1] += _time.ticks_diff(t, _mono[0])
        _mono[0] = t
        return _mono[1] / 1000

    ticks_ms = _time.ticks_ms

    _ADDR_CACHE_MAX = const(64)
    _sendto_cache = {}
    _recv_cache = {}

    def _remember(cache, key, value):
        # Bounded: peers come from the network, so the caches must not grow with them.
        if len(cache) >= _ADDR_CACHE_MAX:
            cache.clear()
        cache[key] = value
        return value

    def addr_from_recv(a):
        if isinstance(a, tuple):
            return a
        # The same peers send again and again: their converted address is kept, keyed by the
        # raw sockaddr (a dict lookup allocates nothing; converting makes a tuple and a string,
        # 160 bytes per datagram).
        addr = _recv_cache.get(a)
        if addr is not None:
            return addr
        import socket

        parts = socket.sockaddr(a)
        host = socket.inet_ntop(parts[0], parts[1])
        if len(parts) > 3:
            return _remember(_recv_cache, a, (host, parts[2], parts[3], parts[4]))
        return _remember(_recv_cache, a, (host, parts[2]))

    def addr_for_send(addr):
        raw = _sendto_cache.get(addr)
        if raw is None:
            import socket

            raw = _remember(
                _sendto_cache, addr, socket.getaddrinfo(addr[0], addr[1], 0, socket.SOCK_DGRAM)[0][-1]
            )
        return raw

    def wait_readable(sock):
        import asyncio

        yield asyncio.core._io_queue.queue_read(sock)

    class ReadWait:
        """``wait_readable(sock)`` as one object awaited again and again: calling a generator
        function makes a generator object (64 bytes) per wait, which a receive loop woken 50
        times a second in a call should not. Built as asyncio's own ``sleep_ms`` object is: it
        parks the task in the IO queue, and when the task resumes ends with a kept
        StopIteration. One per task (a cancelled wait leaves it armed: make a new one)."""

        def __init__(self, sock):
            import asyncio

            self.queue = asyncio.core._io_queue
            self.sock = sock
            self.armed = False
            self.exc = StopIteration()

        def __iter__(self):
            return self

        def __next__(self):
            if not self.armed:
                self.armed = True
                self.queue.queue_read(self.sock)
                return None
            self.armed = False
            self.exc.__traceback__ = None
            raise self.exc

    def sleep_ms(ms):
        import asyncio

        return asyncio.sleep_ms(ms)

else:
    import time as _time

    monotonic = _time.monotonic

    def ticks_ms():
        return int(_time.monotonic() * 1000)

    def addr_from_recv(a):
        return a

    def addr_for_send(addr):
        return addr

    def _set_ready(fut):
        if not fut.done():
            fut.set_result(None)

    async def wait_readable(sock):
        import asyncio

        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        fd = sock.fileno()
        loop.add_reader(fd, _set_ready, fut)
        try:
            await fut
        finally:
            loop.remove_reader(fd)

    async def sleep_ms(ms):
        import asyncio

        await asyncio.sleep(ms / 1000)

    class ReadWait:
        """See the MicroPython twin: here each wait is ``wait_readable``'s coroutine."""

        def __init__(self, sock):
            self.sock = sock

        def __await__(self):
            return wait_readable(self.sock).__await__()


# --- Files: private, durable writes ----------------------------------------------------------------
# Used by opmob.store's FileStore, never by the sans-I/O cores.
#
# - ``open_private(path)``: a new or truncated file for writing bytes, readable by its owner only
#   (0600), since stores hold device secrets. MicroPython's ``open`` cannot set a mode: on the unix
#   port run the relay under umask 077 (systemd: UMask=0077); an ESP32's littlefs has no
#   permissions to set.
# - ``fsync_file(f)``: push ``f``'s data to stable storage before a rename publishes it. MicroPython
#   has no fsync: littlefs commits on close; on the unix port the data reaches the kernel, so it
#   survives a killed process but not a power cut.
# - ``fsync_dir(path)``: make a rename inside ``path`` durable (POSIX); nothing to do on MicroPython.
# - ``mkdir_private(path)``: a directory only its owner can enter, where modes exist.

if IS_MICROPYTHON:
    import os as _os

    def open_private(path):
        return open(path, "wb")

    def fsync_file(f):
        f.flush()

    def fsync_dir(path):
        pass

    def mkdir_private(path):
        _os.mkdir(path)

else:
    import os as _os

    def open_private(path):
        fd = _os.open(path, _os.O_WRONLY | _os.O_CREAT | _os.O_TRUNC, 0o600)
        try:
            # O_CREAT's mode applies only to a new file; an old one keeps its mode unless told.
            _os.fchmod(fd, 0o600)
            return _os.fdopen(fd, "wb")
        except BaseException:
            _os.close(fd)
            raise

    def fsync_file(f):
        f.flush()
        _os.fsync(f.fileno())

    def fsync_dir(path):
        fd = _os.open(path, _os.O_RDONLY)
        try:
            _os.fsync(fd)
        finally:
            _os.close(fd)

    def mkdir_private(path):
        _os.mkdir(path, 0o700)
