"""setuptools hook: ``pip install .`` compiles the C extension (c_ext/) into the ``opmob_c`` package.

Everything else about the package is in pyproject.toml. The module is built by the same script and
with the same strict flags as ``make setup`` (c_ext/build_opmob_c.py), into the wheel's build
directory, so an installed package never carries a module built for another interpreter. An
editable install (``make setup``'s ``pip install -e .``) skips it: ``make setup`` then builds the
module in the source tree, incrementally.
"""

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _c_ext_builder():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("build_opmob_c", ROOT / "c_ext" / "build_opmob_c.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class BuildPyWithC(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        b = _c_ext_builder()
        dest = Path(self.build_lib) / "opmob_c"
        temp = (Path(self.get_finalized_command("build").build_temp) / "opmob_c").resolve()
        target = b.build(dest.resolve(), temp, b.OPT)
        print(f"c_ext: built {target.name} for this interpreter")


setup(cmdclass={"build_py": BuildPyWithC})
