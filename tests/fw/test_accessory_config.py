# The provisioned configuration (accessory/config.py) and group selection with its persistent
# state (accessory/groups.py). Runs under CPython and MicroPython.
import json

from fwtest import raises, unhex
from fwtmp import TempDir, exists, read_bytes, write_bytes
from opmob import sig
from opmob.accessory import config as cf
from opmob.accessory import groups as gr

SECRET = "202d01ac91fce0b3eef4a93dcc9999d1"
GKEY = "00112233445566778899aabbccddeeff"


def _doc():
    return {
        "format": "opmob-accessory",
        "version": 1,
        "identity": "ola.nordmann@no",
        "secret": SECRET,
        "home": "no",
        "partners": ["se"],
        "relays": [
            {
                "identity": "relay-1@no",
                "host": "192.168.4.1",
                "port": 7700,
                "ssid": "opmob-no-1",
                "psk": "fire-and-rescue",
            },
            {"identity": "relay-7@se", "host": "10.7.0.1", "ssid": "opmob-se-7"},
        ],
        "groups": [
            {"identity": "fire-oslo@no", "priority": 100, "label": "Fire Oslo"},
            "rescue-nordic@no",
        ],
        "scan": [{"identity": "police-ops@no", "priority": 10}, {"identity": "ems@no", "priority": 50}],
        "keys": [{"group": "police-ops@no", "key_id": 1, "key": GKEY}],
        "floor_priority": 100,
    }


def _problems(doc):
    e = raises(cf.ConfigError, cf.AccessoryConfig.from_dict, doc, "cfg.json")
    return e, [p[0] for p in e.problems]


def test_a_provisioned_configuration_loads():
    c = cf.AccessoryConfig.from_dict(_doc())
    assert c.identity == "ola.nordmann@no" and len(c.secret) == 16 and c.home == "no"
    assert c.relays[1] == {
        "identity": "relay-7@se",
        "host": "10.7.0.1",
        "port": 7700,
        "ssid": "opmob-se-7",
        "psk": None,
    }
    assert c.relay_for_ssid("opmob-no-1")["identity"] == "relay-1@no"
    assert [g["identity"] for g in c.talk_groups] == ["fire-oslo@no", "rescue-nordic@no"]
    assert c.talk_groups[1] == {"identity": "rescue-nordic@no", "priority": 0, "label": "rescue-nordic"}
    assert c.keys[("police-ops@no", 1)] == unhex(GKEY)
    assert c.floor_priority == 100 and not c.killed
    assert SECRET not in repr(c) and "hidden" in repr(c)


def test_every_problem_is_named_and_secrets_never_shown():
    doc = _doc()
    doc["secret"] = SECRET[:-1] + "g"  # not hex
    doc["relays"][0]["host"] = "relay.example"  # not numeric
    doc["relays"][1]["identity"] = "relay-1@dk"  # not home, not a partner
    doc["groups"].append("fire-oslo@no")  # twice
    doc["keys"][0]["key"] = GKEY[:30]
    doc["colour"] = "red"
    e, keys = _problems(doc)
    assert keys == [
        "colour",
        "secret",
        "relays[0].host",
        "relays[1].identity",
        "groups[2].identity",
        "keys[0].key",
    ], keys
    msg = str(e)
    assert "cfg.json" in msg and SECRET[:20] not in msg and GKEY[:20] not in msg
    doc = _doc()
    doc["identity"] = "ola.nordmann@se"  # home "no" no longer matches
    _e, keys = _problems(doc)
    assert keys == ["home"]


def test_missing_and_damaged_files_are_reported_without_contents():
    e = raises(cf.ConfigError, cf.load, "/nonexistent/config.json")
    assert "not provisioned" in str(e) and "file not found" in str(e)
    with TempDir() as d:
        text = json.dumps(_doc())
        write_bytes(d + "/c.json", text[: text.index(SECRET) + 10].encode())  # cut inside the secret
        e = raises(cf.ConfigError, cf.load, d + "/c.json")
        assert "not valid JSON" in str(e) and SECRET[:10] not in str(e)
        write_bytes(d + "/c.json", json.dumps(_doc()).encode())
        assert cf.load(d + "/c.json").identity == "ola.nordmann@no"


def test_kill_erases_the_secret_atomically():
    with TempDir() as d:
        path = d + "/config.json"
        write_bytes(path, json.dumps(_doc()).encode())
        c = cf.load(path)
        cf.erase_secret(path, c)
        assert c.killed and c.secret is None and c.keys == {}
        text = read_bytes(path).decode()
        assert SECRET not in text and GKEY not in text and not exists(path + ".tmp")
        again = cf.load(path)
        assert again.killed and again.secret is None and again.identity == "ola.nordmann@no"


def _cfg():
    return cf.AccessoryConfig.from_dict(_doc())


def test_groups_selection_scan_and_ranks():
    c = _cfg()
    g = gr.Groups(c.talk_groups, c.scan_groups)
    assert g.selected == "fire-oslo@no" and g.scan_on
    # Scan list by priority: ems (50) before police-ops (10).
    assert g.listening() == ["fire-oslo@no", "ems@no", "police-ops@no"]
    assert g.affiliations() == [
        ("fire-oslo@no", 100, sig.AFF_SELECTED),
        ("ems@no", 50, sig.AFF_SCAN),
        ("police-ops@no", 10, sig.AFF_SCAN),
    ]
    assert g.rank("fire-oslo@no") == 0 and g.rank("ems@no") == 1 and g.rank("police-ops@no") == 2
    assert g.rank("rescue-nordic@no") is None
    assert (
        g.step(1) == "rescue-nordic@no" and g.step(1) == "fire-oslo@no" and g.step(-1) == "rescue-nordic@no"
    )
    assert not g.set_scan(False)
    assert g.listening() == ["rescue-nordic@no"] and g.rank("ems@no") is None


def test_selection_survives_a_reboot_and_a_damaged_store_is_set_aside():
    c = _cfg()
    logs = []
    with TempDir() as d:
        st = gr.State(d + "/state", logs.append)
        g = gr.Groups(c.talk_groups, c.scan_groups, st)
        g.step(1)
        g.set_scan(False)
        assert st.save_windows((7, 5), (None, 0))
        st.close()
        # Reboot.
        st = gr.State(d + "/state", logs.append)
        g = gr.Groups(c.talk_groups, c.scan_groups, st)
        assert g.selected == "rescue-nordic@no" and not g.scan_on
        assert st.windows() == ((7, 5), None)
        st.close()
        # A flipped byte in the groups file: set aside, defaults, a message, no crash.
        path = d + "/state/groups.json"
        data = bytearray(read_bytes(path))
        data[-3] ^= 0x20
        write_bytes(path, bytes(data))
        st = gr.State(d + "/state", logs.append)
        g = gr.Groups(c.talk_groups, c.scan_groups, st)
        assert g.selected == "fire-oslo@no" and g.scan_on
        assert exists(d + "/state.damaged/groups.json")
        assert len(logs) == 1 and "damaged" in logs[0], logs
        # A selection that no longer exists in the configuration falls back to the first group.
        st.put("groups", "selection", {"talk": "gone@no", "scan": "yes"})
        g = gr.Groups(c.talk_groups, c.scan_groups, st)
        assert g.selected == "fire-oslo@no" and g.scan_on
        st.close()
