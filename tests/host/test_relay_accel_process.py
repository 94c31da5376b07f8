"""``opmob relay run`` on either SRTP backend: ``relay.accel = "c"`` (the C extension) and
``"pure"`` (the twin) both serve registration and a voice fan-out; OPMOB_ACCEL overrides the key;
the backend is logged once and shown in the status (``driver.accel``)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest
from opmob_host.accel import ENV
from relayproc import RelayProc, export_doc, short_dir, toml
from test_relay_loopback import G2, PEOPLE, G, voice_fan_out


class AccelRelay(RelayProc):
    def __init__(self, *a: Any, accel: str | None = None, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.accel = accel

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        if self.accel is not None:
            cfg["relay"]["accel"] = self.accel
        return cfg


def serve_voice(accel: str | None, want: str) -> str:
    with short_dir() as d:
        doc, secrets = export_doc(PEOPLE, [G, G2])
        with AccelRelay(d, doc, accel=accel) as r:

            async def main() -> None:
                await voice_fan_out(r, secrets)
                st = await r.astatus()
                assert st["driver"]["accel"] == want
                assert st["counters"]["registrations"] >= 5 and st["counters"]["voice_out"] >= 16

            asyncio.run(asyncio.wait_for(main(), 60))
            out = r.output()
    lines = [ln for ln in out.splitlines() if "SRTP per-packet path:" in ln]
    assert len(lines) == 1, out[-2000:]
    return lines[0]


@pytest.mark.parametrize("accel", ["c", "pure"])
def test_relay_run_serves_registration_and_voice_on_either_backend(
    monkeypatch: pytest.MonkeyPatch, accel: str
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    line = serve_voice(accel, accel)
    assert f"SRTP per-packet path: {accel} (" in line and "relay.accel" in line


def test_the_default_is_the_extension_and_the_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert "path: c (C extension" in serve_voice(None, "c")  # auto, and it is built here
    monkeypatch.setenv(ENV, "pure")
    line = serve_voice("c", "pure")
    assert "path: pure (pure-Python twin" in line and f"from {ENV}" in line


def test_a_bad_environment_value_stops_the_relay_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "fast")
    with short_dir() as d:
        doc, _ = export_doc(PEOPLE, [G, G2])
        r = AccelRelay(d, doc, accel="c")
        cfg = d / "relay.toml"
        cfg.write_text(toml(r.config()))
        proc = subprocess.run(
            [sys.executable, "-m", "opmob_host.cli", "relay", "run", "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=d,
        )
    assert proc.returncode == 2, proc.stderr
    assert f"{ENV}='fast'" in proc.stderr and "auto, c, pure" in proc.stderr


def test_accel_c_without_the_extension_is_refused_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from opmob.relay_config import RelayConfig
    from opmob_host.relay_cmd import Failure, select_accel

    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setitem(sys.modules, "opmob_c", None)  # import opmob_c: ImportError
    cfg = RelayConfig.from_dict(
        {"relay": {"identity": "relay-1@no", "accel": "c"}, "registry": {"path": "x"}}
    )
    with pytest.raises(Failure) as e:
        select_accel(cfg, "relay.toml")
    assert e.value.code == 2 and "relay.toml relay.accel = c" in str(e.value) and "make setup" in str(e.value)
    cfg.accel = "auto"
    assert select_accel(cfg, "relay.toml")[0].name == "pure"
