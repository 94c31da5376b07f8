"""The C extension's sources compile for aarch64 (Raspberry Pi OS, 64-bit) with the strict flags of
c_ext/build_opmob_c.py, so that a Raspberry Pi build failure shows here first (issue 12).

The cross compiler and its C library headers are Debian's ``gcc-aarch64-linux-gnu`` and
``libc6-dev-arm64-cross`` (the Makefile's apt list). libcrypto's and codec2's headers are the
host's: they are the same on every architecture except OpenSSL's two generated configuration
headers, which are taken from the host's multiarch directory (both LP64 Linux, so the same
definitions the Pi's package has). Only the objects are built: linking needs the Pi's libraries.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CROSS = "aarch64-linux-gnu-gcc"


def _builder():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("build_opmob_c", ROOT / "c_ext" / "build_opmob_c.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _openssl_config(dest: Path) -> Path:
    """A directory with OpenSSL's architecture-specific headers only (openssl/opensslconf.h, ...)."""
    multiarch = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True).stdout.strip()
    src = Path("/usr/include") / multiarch / "openssl"
    if not (src / "opensslconf.h").is_file():
        pytest.skip(f"no {src}/opensslconf.h: install libssl-dev (make setup)")
    (dest / "openssl").mkdir(parents=True)
    for h in src.glob("*.h"):
        shutil.copy2(h, dest / "openssl" / h.name)
    return dest


def test_c_ext_sources_compile_for_aarch64(tmp_path: Path) -> None:
    if shutil.which(CROSS) is None:
        pytest.skip(
            f"{CROSS} not installed: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross (make setup)"
        )
    b = _builder()
    conf = _openssl_config(tmp_path / "inc")
    cflags = b.pkg_config("--cflags")
    for src in b.SOURCES:
        obj = tmp_path / (Path(src).stem + ".o")
        cmd = [CROSS, "-fPIC", *b.OPT, *b.STRICT, *cflags, "-idirafter", str(conf), "-I", str(b.HERE)]
        r = subprocess.run([*cmd, "-c", str(b.HERE / src), "-o", str(obj)], capture_output=True, text=True)
        assert r.returncode == 0, f"{src} for aarch64:\n{r.stderr}"
        header = obj.read_bytes()[:20]
        # ELF, 64-bit, little-endian, e_machine 183 (EM_AARCH64).
        assert header[:4] == b"\x7fELF" and header[4] == 2 and header[5] == 1, header
        assert int.from_bytes(header[18:20], "little") == 183, header
