"""The relay-core bench rows (bench_relay_core.py): present, named and in their units. Their values
are figures for ``opmob bench`` to report, not asserted here."""

from __future__ import annotations

from opmob_host import bench_relay_core


def test_rows_name_their_figures() -> None:
    rows = bench_relay_core.rows()
    names = [r[0] for r in rows]
    assert names == [
        "relay.deadline_us.groups_10",
        "relay.deadline_us.groups_1000",
        "relay.register_us.sessions_10",
        "relay.register_us.sessions_10000",
        "relay.register_ratio.sessions_10000_over_10",
    ]
    for name, value, unit in rows:
        assert isinstance(value, float) and value > 0, name
        assert unit == ("x" if "ratio" in name else "us"), name
