"""Build the C extension ``opmob_c._opmob_c`` with cffi in API mode.

    .venv/bin/python c_ext/build_opmob_c.py              # into host_tools/opmob_c/ (make setup)
    .venv/bin/python c_ext/build_opmob_c.py --sanitize   # ASan + UBSan build into build/sanitize/

The default build is incremental: it does nothing when the module is newer than every source
(the C files, the header, this script), so ``make setup`` stays quick. Our own C is compiled
with ``-std=c99 -pedantic -Wall -Wextra -Werror`` (and more); the cffi-generated wrapper, which
includes Python.h, with ``-Wall -Wextra -Werror`` (less the warnings cffi's generated code
trips). libcrypto and libcodec2 come from pkg-config.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PACKAGE = ROOT / "host_tools" / "opmob_c"
HEADER = HERE / "opmob_c.h"
SOURCES = ["opmob_dvi4.c", "opmob_srtp.c", "opmob_codec2.c", "opmob_pipeline.c"]
MODULE = "opmob_c._opmob_c"
PKG_CONFIG = ["libcrypto", "codec2"]

WARN = ["-Wall", "-Wextra", "-Werror"]
# Our sources: portable C99, and stricter than the wrapper.
STRICT = WARN + [
    "-std=c99",
    "-pedantic",
    "-Wshadow",
    "-Wconversion",
    "-Wstrict-prototypes",
    "-Wmissing-prototypes",
    "-Wvla",
    "-Wcast-qual",
]
# cffi's generated wrapper: unused parameters and missing-field initialisers are its style.
WRAPPER = WARN + ["-Wno-unused-parameter", "-Wno-missing-field-initializers"]
OPT = ["-O2", "-fno-strict-aliasing"]
SANITIZE = [
    "-O1",
    "-g",
    "-fno-omit-frame-pointer",
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
]


def cdef_text() -> str:
    """The declarations between CDEF BEGIN and CDEF END in the header, for cffi."""
    text = HEADER.read_text()
    start = text.index("/* CDEF BEGIN */") + len("/* CDEF BEGIN */")
    return text[start : text.index("/* CDEF END */")]


def pkg_config(*args: str) -> list[str]:
    out = subprocess.run(["pkg-config", *args, *PKG_CONFIG], check=True, capture_output=True, text=True)
    return shlex.split(out.stdout)


def sources() -> list[Path]:
    return [HERE / s for s in SOURCES] + [HEADER, HERE / "opmob_internal.h", Path(__file__).resolve()]


def ext_name() -> str:
    return "_opmob_c" + str(sysconfig.get_config_var("EXT_SUFFIX"))


def up_to_date(target: Path) -> bool:
    if not target.exists():
        return False
    built = target.stat().st_mtime
    return all(p.stat().st_mtime <= built for p in sources())


def compile_objects(build: Path, flags: list[str]) -> list[str]:
    """Our sources to objects with the strict flags; returns the object paths."""
    cc = os.environ.get("CC", str(sysconfig.get_config_var("CC") or "cc").split()[0])
    cflags = pkg_config("--cflags")
    objs = []
    for src in SOURCES:
        obj = build / (Path(src).stem + ".o")
        cmd = [cc, "-fPIC", *flags, *STRICT, *cflags, "-I", str(HERE), "-c", str(HERE / src), "-o", str(obj)]
        subprocess.run(cmd, check=True)
        objs.append(str(obj))
    return objs


def make_ffi(objects: list[str], flags: list[str]):  # type: ignore[no-untyped-def]
    from cffi import FFI

    ffi = FFI()
    ffi.cdef(cdef_text())
    libs = pkg_config("--libs")
    ffi.set_source(
        MODULE,
        '#include "opmob_c.h"\n',
        include_dirs=[str(HERE)],
        extra_objects=objects,
        extra_compile_args=[*flags, *WRAPPER, *pkg_config("--cflags")],
        extra_link_args=[
            *(["-fsanitize=address,undefined"] if "-fsanitize=address,undefined" in flags else []),
            *libs,
        ],
    )
    return ffi


def build(dest: Path, build_dir: Path, flags: list[str]) -> Path:
    build_dir.mkdir(parents=True, exist_ok=True)
    objects = compile_objects(build_dir, flags)
    ffi = make_ffi(objects, flags)
    built = Path(ffi.compile(tmpdir=str(build_dir), verbose=False))
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / built.name
    tmp = target.with_suffix(target.suffix + ".tmp")
    shutil.copy2(built, tmp)
    os.replace(tmp, target)  # a running process keeps the old mapping
    os.utime(target)
    return target


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sanitize", action="store_true", help="ASan + UBSan build into build/sanitize/opmob_c")
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = p.parse_args()
    if args.sanitize:
        dest = ROOT / "build" / "sanitize" / "opmob_c"
        if args.force or not up_to_date(dest / ext_name()):
            target = build(dest, ROOT / "build" / "sanitize" / "obj", SANITIZE)
            print(f"c_ext: built {target.relative_to(ROOT)} (ASan + UBSan)")
        # The sanitized package is this package's Python with the sanitized module beside it.
        for py in PACKAGE.glob("*.py"):
            shutil.copy2(py, dest / py.name)
        return 0
    target = PACKAGE / ext_name()
    if not args.force and up_to_date(target):
        print(f"c_ext: {target.relative_to(ROOT)} is up to date")
        return 0
    target = build(PACKAGE, ROOT / "build" / "c_ext", OPT)
    print(f"c_ext: built {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
