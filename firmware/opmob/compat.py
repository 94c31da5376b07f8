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

    class AesEcb:
        def __init__(self, key):
            self._aes = cryptolib.aes(bytes(key), 1)

        def encrypt_block(self, block):
            return self._aes.encrypt(bytes(block))

    class AesCtr:
        """AES-CTR keystream with a 16-bit block counter in the low bytes of the IV (RFC 3711)."""

        MAX = 1024 + 64

        def __init__(self, key):
            self._aes = cryptolib.aes(bytes(key), 1)
            self._ctr = bytearray(self.MAX + 16)
            self._ks = bytearray(self.MAX + 16)

        def xor(self, iv, data, out):
            """out[:len(data)] = data XOR keystream(iv). ``out`` may be ``data`` (in place)."""
            n = len(data)
            if n > self.MAX:
                raise ValueError("AesCtr: payload too large")
            nblocks = (n + 15) >> 4
            if ((iv[14] << 8) | iv[15]) + nblocks > 0x10000:
                raise ValueError("AesCtr: block counter would leave its 16 bits")
            ctr = self._ctr
            ctr[0:16] = iv
            _ctr_fill(ctr, nblocks)
            span = nblocks * 16
            self._aes.encrypt(memoryview(ctr)[:span], memoryview(self._ks)[:span])
            if out is not data:
                out[:n] = data
            xor_into(out, self._ks, n)
            return out

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

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

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

    class HmacSha1:
        def __init__(self, key):
            self._base = hmac.new(bytes(key), digestmod=hashlib.sha1)

        def digest(self, *parts):
            h = self._base.copy()
            for p in parts:
                h.update(p)
            return h.digest()

    class HmacSha256:
        def __init__(self, key):
            self._base = hmac.new(bytes(key), digestmod=hashlib.sha256)

        def digest(self, *parts):
            h = self._base.copy()
            for p in parts:
                h.update(p)
            return h.digest()
