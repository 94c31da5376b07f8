"""Every file under firmware/ compiles with mpy-cross (the MicroPython cross-compiler, a tool we did
not write) for the ESP32 (xtensawin) and for x64, and the x64 .mpy files import and run on the
MicroPython unix port: what ships frozen or deployed is what the tests ran."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MPY_CROSS = ROOT / ".venv" / "bin" / "mpy-cross"
MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"
FIRMWARE_FILES = sorted(p for p in (ROOT / "firmware").rglob("*.py") if "__pycache__" not in p.parts)


def test_firmware_tree_is_not_empty() -> None:
    assert len(FIRMWARE_FILES) >= 5


@pytest.mark.parametrize("arch", ["xtensawin", "x64"])
@pytest.mark.parametrize("src", FIRMWARE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_compiles(src: Path, arch: str, tmp_path: Path) -> None:
    out = tmp_path / (src.stem + ".mpy")
    proc = subprocess.run(
        [str(MPY_CROSS), f"-march={arch}", "-o", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"mpy-cross -march={arch} rejects {src}:\n{proc.stderr}"
    assert out.stat().st_size > 0


def test_compiled_core_imports_on_unix_port(tmp_path: Path) -> None:
    """The x64 .mpy build of the package (no .py sources beside it) imports under MicroPython."""
    pkg_src = ROOT / "firmware" / "opmob"
    pkg_out = tmp_path / "opmob"
    pkg_out.mkdir()
    modules = []
    for src in sorted(pkg_src.glob("*.py")):
        subprocess.run(
            [str(MPY_CROSS), "-march=x64", "-o", str(pkg_out / (src.stem + ".mpy")), str(src)],
            check=True,
            timeout=60,
        )
        if src.stem != "__init__":
            modules.append(src.stem)
    # '.frozen' keeps the port's frozen modules (asyncio) importable, as on a device.
    script = f"import sys\nsys.path[:] = ['{tmp_path}', '.frozen']\n"
    script += "".join(f"import opmob.{m}\n" for m in modules)
    script += "import opmob\nprint('imported', opmob.__file__)\n"
    proc = subprocess.run([str(MICROPYTHON), "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ".mpy" in proc.stdout
