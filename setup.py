"""setuptools hook: ``pip install .`` compiles the C extension (c_ext/) into the ``opmob_c`` package.

Everything else about the package is in pyproject.toml. The module is built by the same script and
with the same strict flags as ``make setup`` (c_ext/build_opmob_c.py), into the wheel's build
directory, so an installed package never carries a module built for another interpreter. An
editable install (``make setup``'s ``pip install -e .``) skips it: ``make setup`` then builds the
module in the source tree, incrementally.

When it builds, the wheel is tagged for this interpreter and platform (it carries a ``.so``). When
it cannot (no compiler, no pkg-config, no libssl/codec2 headers), the package is built without it
(a pure ``py3-none-any`` wheel, whose relay runs the pure-Python backend) and one line says why
and what to install. ``OPMOB_C_EXT=require`` makes that a failure (CI, a Raspberry Pi that must
have the fast path); ``OPMOB_C_EXT=skip`` does not try.
"""

import importlib.util
import os
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
ENV = "OPMOB_C_EXT"
BUILD_DEPS = "a C compiler, pkg-config, python3-dev, libssl-dev and libcodec2-dev"


def _c_ext_builder():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("build_opmob_c", ROOT / "c_ext" / "build_opmob_c.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _why(e: BaseException) -> str:
    if isinstance(e, subprocess.CalledProcessError):
        cmd = e.cmd if isinstance(e.cmd, str) else " ".join(map(str, e.cmd[:2]))
        err = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr or ""
        last = err.strip().splitlines()[-1:] or [f"exit {e.returncode}"]
        return f"{cmd}: {last[0]}"
    if isinstance(e, FileNotFoundError):
        return f"{e.filename or e}: not found"
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


class BuildPyWithC(build_py):
    c_ext_built = False

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dest = Path(self.build_lib) / "opmob_c"
        # A module from an earlier build in this tree must not ship with a build that has none.
        for stale in dest.glob("_opmob_c*"):
            stale.unlink()
        mode = os.environ.get(ENV, "auto").strip().lower() or "auto"
        if mode not in ("auto", "require", "skip"):
            raise SystemExit(f"{ENV}={mode!r}: expected auto, require or skip")
        if mode == "skip":
            print(f"c_ext: not built ({ENV}=skip): the relay will run the pure-Python backend")
            return
        b = _c_ext_builder()
        temp = (Path(self.get_finalized_command("build").build_temp) / "opmob_c").resolve()
        try:
            target = b.build(dest.resolve(), temp, b.OPT)
        except Exception as e:  # a missing tool or header; cffi raises its own error types
            line = (
                f"c_ext: NOT built ({_why(e)}); install {BUILD_DEPS} and reinstall for the fast path; "
                "this package's relay runs the pure-Python backend"
            )
            if mode == "require":
                raise SystemExit(line.replace("NOT built", f"NOT built and {ENV}=require")) from e
            print(line)
            return
        print(f"c_ext: built {target.name} for this interpreter")
        self.c_ext_built = True


class BdistWheelTagged(bdist_wheel):
    """A wheel that carries the compiled module is tagged for its interpreter and platform."""

    def run(self) -> None:
        if not self.skip_build:
            self.run_command("build")
        built = self.get_finalized_command("build_py").c_ext_built
        self.root_is_pure = not built
        # install (finalised after this) then puts the packages in platlib, the wheel's root.
        self.distribution.has_ext_modules = lambda: built  # type: ignore[method-assign]
        super().run()


setup(cmdclass={"build_py": BuildPyWithC, "bdist_wheel": BdistWheelTagged})
