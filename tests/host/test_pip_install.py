"""``pip install .`` builds the C extension (issue 5): from the repository's files alone (no module
built by ``make setup`` among them), the installed package carries an ``opmob_c`` that imports and
works, compiled for this interpreter by setup.py with the strict flags of c_ext/build_opmob_c.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _checkout(dest: Path) -> None:
    """The files a clean checkout has (tracked, or new and not ignored) — never a built module."""
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for raw in names:
        if not raw:
            continue
        src = ROOT / raw.decode()
        if src.is_file():
            (dest / raw.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / raw.decode())


def test_pip_install_builds_the_c_extension(tmp_path: Path) -> None:
    src, site = tmp_path / "src", tmp_path / "site"
    _checkout(src)
    assert not list(src.rglob("_opmob_c*.so")), "the checkout must not carry a built module"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-build-isolation"]
        + ["--no-deps", "--target", str(site), str(src)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    built = list((site / "opmob_c").glob("_opmob_c*.so"))
    assert len(built) == 1, sorted(p.name for p in (site / "opmob_c").iterdir())
    probe = (
        "import opmob_c, opmob_c._opmob_c as m\n"
        "print(opmob_c.__file__)\nprint(m.__file__)\n"
        "print(opmob_c.Codec2('3200').encode(bytes(640)).hex())\n"
        "enc = opmob_c.Dvi4Encoder()\nprint(len(enc.encode(bytes(320))))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    pkg, mod, bits, dvi4 = r.stdout.split()
    assert Path(pkg).is_relative_to(site) and Path(mod).is_relative_to(site), r.stdout
    assert len(bytes.fromhex(bits)) == 16  # two 20 ms Codec2 3200 frames of 8 bytes
    assert int(dvi4) == 4 + 80  # RFC 3551 DVI4, 160 samples: 4-byte state header, 4 bits per sample
