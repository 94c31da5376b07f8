"""The C extension's "no allocation per packet" promise (c_ext/opmob_c.h), measured.

``c_ext/tests/noalloc.c`` is built with gcc together with the extension's C sources, the same
strict flags and the same libcrypto/libcodec2 as the cffi build (both taken from
``c_ext/build_opmob_c.py``), and ``c_ext/tests/alloc_count.c``, which defines malloc and friends
in the executable so that libcrypto's and libcodec2's calls reach it as well. It sets everything
up, then runs every per-packet and per-frame call for a few thousand rounds with the counter armed
around each call, and prints the counts per operation as one JSON line.

The self-check comes first: without it, all-zero counts could just mean a counter that sees
nothing. It must count the one malloc the driver injects into an armed call, and allocations made
inside libcrypto and inside libcodec2.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
C_EXT = ROOT / "c_ext"
DRIVER_SOURCES = [C_EXT / "tests" / "noalloc.c", C_EXT / "tests" / "alloc_count.c"]
ROUNDS = 3000
SELFCHECK_ROUNDS = 20
INJECTED_INTO = "srtp_protect/aes_cm"
PROBES = ["selfcheck/libcrypto_EVP_CIPHER_CTX_new", "selfcheck/libcodec2_codec2_create"]
# The one exception, inside libcodec2 (1.0.5, Debian's): its 700C encoder makes and frees two
# vector-quantiser search lists per frame (rate_K_mbest_encode -> mbest_create, two mallocs each;
# mbest_destroy). Four small blocks taken and given back within the call, so nothing accumulates;
# our code has no hand in it. These operations encode one 700C frame per call in the driver; a
# libcodec2 that stops allocating makes this fail, and the exception goes.
CODEC2_700C_ALLOCS_PER_FRAME = 4
CODEC2_700C_OPS = ("codec2_encode/700C", "codec2_batch/encode", "tc_run/to_codec2")

Report = dict[str, Any]


def build_script() -> ModuleType:
    """c_ext/build_opmob_c.py, for its flags, sources and pkg-config packages: one source of truth."""
    spec = importlib.util.spec_from_file_location("build_opmob_c", C_EXT / "build_opmob_c.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found (Debian: build-essential; `make setup` installs it)")
    b = build_script()
    packages = [str(p) for p in b.PKG_CONFIG]
    if shutil.which("pkg-config") is None:
        pytest.skip("pkg-config not found (`make setup` installs it)")
    if subprocess.run(["pkg-config", "--exists", *packages], check=False).returncode != 0:
        pytest.skip(
            f"headers of {' '.join(packages)} not found (Debian: libssl-dev libcodec2-dev; `make setup`)"
        )
    exe = tmp_path_factory.mktemp("noalloc") / "noalloc"
    cmd = [
        gcc,
        *[str(f) for f in b.OPT],
        *[str(f) for f in b.STRICT],
        *[str(f) for f in b.pkg_config("--cflags")],
        "-I",
        str(C_EXT),
        *[str(s) for s in DRIVER_SOURCES],
        *[str(C_EXT / s) for s in b.SOURCES],
        *[str(f) for f in b.pkg_config("--libs")],
        "-ldl",  # dlsym: in libc since glibc 2.34, a separate library before
        "-o",
        str(exe),
    ]
    t0 = time.monotonic()
    built = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert built.returncode == 0, f"{' '.join(cmd)}\n{built.stderr}"
    print(f"\nnoalloc: built in {time.monotonic() - t0:.1f} s")
    return exe


def run(exe: Path, rounds: int, selfcheck: bool) -> tuple[int, Report, str]:
    env = dict(os.environ)
    # `make sanitize` preloads libasan for CPython; the driver is its own, uninstrumented program
    # whose allocator must be the first malloc the dynamic linker finds.
    env.pop("LD_PRELOAD", None)
    env["OPMOB_NOALLOC_SELFCHECK"] = "1" if selfcheck else "0"
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(exe), str(rounds)], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    # 2: a call gave a wrong result or set-up failed, so the counts would mean nothing.
    assert proc.returncode in (0, 1), f"noalloc exited {proc.returncode}\n{proc.stderr}"
    report: Report = json.loads(proc.stdout)
    print(f"noalloc: {rounds} rounds{' (self-check)' if selfcheck else ''} in {time.monotonic() - t0:.1f} s")
    return proc.returncode, report, proc.stderr


@functools.cache
def selfcheck_report(exe: Path) -> tuple[int, Report, str]:
    return run(exe, SELFCHECK_ROUNDS, selfcheck=True)


def table(report: Report) -> str:
    ops: dict[str, dict[str, int]] = report["ops"]
    width = max(len(name) for name in ops)
    lines = [f"  {'operation':<{width}}  {'calls':>6}  {'allocs':>6}  {'frees':>6}"]
    lines += [f"  {n:<{width}}  {c['calls']:>6}  {c['allocs']:>6}  {c['frees']:>6}" for n, c in ops.items()]
    return "\n".join(lines)


def test_counter_sees_an_injected_malloc_and_library_allocations(driver: Path) -> None:
    rc, report, stderr = selfcheck_report(driver)
    print(table(report))
    ops = report["ops"]
    assert ops[INJECTED_INTO]["allocs"] == 1, stderr
    for probe in PROBES:
        assert ops[probe]["calls"] == 1 and ops[probe]["allocs"] >= 1, f"{probe} unseen\n{stderr}"
    assert rc == 1, "the driver must fail when it counted an allocation"


def test_per_packet_calls_allocate_nothing_but_libcodec2s_700c_encoder(driver: Path) -> None:
    rc, check, _ = selfcheck_report(driver)
    assert rc == 1 and check["ops"][INJECTED_INTO]["allocs"] == 1, "the counter failed its self-check"
    rc, report, stderr = run(driver, ROUNDS, selfcheck=False)
    print(table(report))
    ops: dict[str, dict[str, int]] = report["ops"]
    measured = {name: c for name, c in ops.items() if name not in PROBES}
    assert all(c["calls"] >= ROUNDS for c in measured.values()), "an operation did not run every round"
    for name in CODEC2_700C_OPS:
        c = measured.pop(name)
        want = CODEC2_700C_ALLOCS_PER_FRAME * c["calls"]
        assert c["allocs"] == c["frees"] == want, (
            f"{name}: {c}, libcodec2's 700C encoder makes {want}\n{stderr}"
        )
    found = {name: (c["allocs"], c["frees"]) for name, c in measured.items() if c["allocs"] or c["frees"]}
    assert not found, f"allocations (allocs, frees) in per-packet calls: {found}\n{stderr}"
    assert rc == 1  # the driver fails on any allocation: libcodec2's 700C ones
