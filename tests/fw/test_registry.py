"""opmob.registry: records, validation, vectors, export and import, on both runtimes."""

import json

from fwtest import ROOT, raises, unhex
from fwtmp import TempDir
from opmob import authvec
from opmob.errors import AuthFailed
from opmob.registry import KILLED, STUNNED, DeviceRecord, Registry, RegistryError
from opmob.store import FileStore, MemoryStore

EXAMPLE = ROOT + "/boards/rpi-relay/registry-example.json"
OLA = "ola.nordmann@no"
OLA_K = "202d01ac91fce0b3eef4a93dcc9999d1"
RAND = unhex("23553cbe9637a89d218ae64dae47bf35")


def example():
    with open(EXAMPLE) as f:
        return json.load(f)


def loaded(store=None):
    reg = Registry(store or MemoryStore(), "no")
    reg.load_export(example())
    return reg


def copy(doc):
    return json.loads(json.dumps(doc))


def device_doc(doc, identity):
    for d in doc["devices"]:
        if d["identity"] == identity:
            return d
    raise KeyError(identity)


def group_doc(doc, identity):
    for g in doc["groups"]:
        if g["identity"] == identity:
            return g
    raise KeyError(identity)


def test_example_loads_and_exports_the_same_document():
    doc = example()
    reg = Registry(MemoryStore(), "no")
    report = reg.load_export(doc)
    assert report["devices_added"] == 4 and report["groups_added"] == 3
    assert report["devices_updated"] == 0 and report["status_kept"] == []
    out = reg.export()
    want = copy(doc)
    del want["comment"]
    assert out == want
    # JSON-able, and loading it again changes nothing.
    again = reg.load_export(json.loads(json.dumps(out)))
    assert again["devices_added"] == again["devices_updated"] == again["groups_updated"] == 0

    ola = reg.device(OLA)
    assert ola.identity == OLA and ola.secret == unhex(OLA_K)
    assert ola.groups == ("fire-oslo@no", "rescue-nordic@no", "rescue-kiruna@se")
    assert ola.ceiling == 200 and ola.status == "active" and ola.vid == 0
    police = reg.group("police-ops@no")
    assert police.e2e is True and police.key_ids == (1, 2) and police.policy == "members"
    fire = reg.group("fire-oslo@no")
    assert fire.receive_only == ("trainee-1@no",) and fire.e2e is False and fire.key_ids == ()
    assert [d.identity for d in reg.devices()] == sorted(d["identity"] for d in doc["devices"])
    assert [g.identity for g in reg.groups()] == ["fire-oslo@no", "police-ops@no", "rescue-nordic@no"]
    assert reg.device("nobody@no") is None and reg.group("nothing@no") is None


def test_optional_fields_take_their_defaults():
    reg = Registry(MemoryStore(), "no")
    reg.load_export(
        {
            "format": "opmob-registry",
            "version": 1,
            "system": "no",
            "devices": [{"identity": "a@no", "secret": "ab" * 16, "groups": ["g@no"], "ceiling": 7}],
            "groups": [{"identity": "g@no", "policy": "open"}],
        }
    )
    a = reg.device("a@no")
    assert a.status == "active" and a.vid == 0 and a.cseq == 0
    g = reg.group("g@no")
    assert g.e2e is False and g.key_ids == () and g.receive_only == ()


def test_partner_view_has_no_secrets_and_loads_at_a_partner():
    home = loaded()
    home.next_vector(OLA, RAND)
    view = home.export(partner=True)
    text = json.dumps(view)
    assert view["view"] == "partner"
    for d in example()["devices"]:
        assert d["secret"] not in text
    for d in view["devices"]:
        assert sorted(d) == ["ceiling", "groups", "identity", "status"]
    assert view["groups"] == example()["groups"]

    partner = Registry(MemoryStore(), "se")
    partner.load_export(view)
    ola = partner.device(OLA)
    assert ola.secret is None and ola.vid is None and ola.cseq is None
    assert ola.ceiling == 200 and ola.groups == home.device(OLA).groups
    # A partner makes no vectors for another system's devices.
    e = raises(RegistryError, partner.next_vector, OLA, RAND)
    assert e.field == "secret"
    # Its own export covers its own system only.
    assert partner.export() == {
        "format": "opmob-registry",
        "version": 1,
        "system": "se",
        "view": "home",
        "devices": [],
        "groups": [],
    }
    # A partner view must not carry secrets or counters.
    for field, value in (("secret", OLA_K), ("vid", 3), ("cseq", 1)):
        bad = copy(view)
        device_doc(bad, OLA)[field] = value
        e = raises(RegistryError, Registry(MemoryStore(), "se").load_export, bad)
        assert e.field == field and OLA in e.record
        assert OLA_K not in str(e)
    # A partner view cannot overwrite records whose secret this registry holds.
    e = raises(RegistryError, home.load_export, view)
    assert e.field == "secret"


def test_home_view_of_a_registry_without_secrets_is_refused():
    reg = Registry(MemoryStore(), "no")
    reg.load_export(loaded().export(partner=True))  # a relay of "no" that is not the home
    e = raises(RegistryError, reg.export)
    assert e.record == "export"
    assert len(reg.export(partner=True)["devices"]) == 4


# (mutation of the example, record named, field named, words in the message)
def _cases():
    def dev(field, value, ident=OLA):
        def f(doc):
            if value is _DELETE:
                del device_doc(doc, ident)[field]
            else:
                device_doc(doc, ident)[field] = value

        return f

    def grp(field, value, ident="police-ops@no"):
        def f(doc):
            if value is _DELETE:
                del group_doc(doc, ident)[field]
            else:
                group_doc(doc, ident)[field] = value

        return f

    def top(field, value):
        def f(doc):
            if value is _DELETE:
                del doc[field]
            else:
                doc[field] = value

        return f

    d_ola = "device '%s'" % OLA
    g_pol = "group 'police-ops@no'"
    return [
        (top("format", "opmob-fleet"), "export", "format", "opmob-registry"),
        (top("format", _DELETE), "export", "format", "opmob-registry"),
        (top("version", 2), "export", "version", "version 1"),
        (top("system", "NO"), "export", "system", "system code"),
        (top("system", "se"), "export", "system", "home view"),
        (top("view", "full"), "export", "view", "'home' or 'partner'"),
        (top("devices", {}), "export", "devices", "list"),
        (top("groups", "x"), "export", "groups", "list"),
        (top("comment", 5), "export", "comment", "string"),
        (top("generated", "today"), "export", "generated", "unknown field"),
        (dev("identity", "Ola@no"), "devices[2]", "identity", "name@system"),
        (dev("identity", "ola@se"), "device 'ola@se'", "identity", "system 'se'"),
        (dev("secret", OLA_K[:-1]), d_ola, "secret", "32 hex digits"),
        (dev("secret", OLA_K[:-1] + "g"), d_ola, "secret", "32 hex digits"),
        (dev("secret", _DELETE), d_ola, "secret", "32 hex digits"),
        (dev("groups", "fire-oslo@no"), d_ola, "groups", "list"),
        (dev("groups", ["fire-oslo@no", "fire-oslo@no"]), d_ola, "groups", "twice"),
        (dev("groups", ["fire oslo@no"]), d_ola, "groups", "identity"),
        (dev("groups", ["fire-olso@no"]), d_ola, "groups", "not defined"),
        (dev("groups", _DELETE), d_ola, "groups", "missing"),
        (dev("ceiling", 256), d_ola, "ceiling", "0..255"),
        (dev("ceiling", -1), d_ola, "ceiling", "0..255"),
        (dev("ceiling", True), d_ola, "ceiling", "0..255"),
        (dev("ceiling", "200"), d_ola, "ceiling", "0..255"),
        (dev("ceiling", _DELETE), d_ola, "ceiling", "0..255"),
        (dev("status", "lost"), d_ola, "status", "active, stunned, killed"),
        (dev("vid", -1), d_ola, "vid", "0..4294967295"),
        (dev("vid", 2**32), d_ola, "vid", "0..4294967295"),
        (dev("vid", 1.5), d_ola, "vid", "integer"),
        (dev("cseq", None), d_ola, "cseq", "integer"),
        (dev("celing", 10), d_ola, "celing", "unknown field"),
        (grp("policy", "closed"), g_pol, "policy", "'open' or 'members'"),
        (grp("policy", _DELETE), g_pol, "policy", "'open' or 'members'"),
        (grp("e2e", "yes"), g_pol, "e2e", "true or false"),
        (grp("key_ids", []), g_pol, "key_ids", "at least one"),
        (grp("key_ids", [1, 1]), g_pol, "key_ids", "twice"),
        (grp("key_ids", [65536]), g_pol, "key_ids", "0..65535"),
        (grp("key_ids", 1), g_pol, "key_ids", "list"),
        (grp("key_ids", [3], "fire-oslo@no"), "group 'fire-oslo@no'", "key_ids", "end-to-end"),
        (grp("receive_only", ["nobody"]), g_pol, "receive_only", "identity"),
        (grp("receive_only", None), g_pol, "receive_only", "list"),
        (grp("identity", "police-ops@se"), "group 'police-ops@se'", "identity", "system 'se'"),
        (grp("members", []), g_pol, "members", "unknown field"),
    ]


_DELETE = object()


def test_validation_errors_name_the_record_and_the_field():
    for mutate, record, field, words in _cases():
        doc = example()
        mutate(doc)
        e = raises(RegistryError, Registry(MemoryStore(), "no").load_export, doc)
        assert isinstance(e, ValueError)
        assert e.record == record and e.field == field, (record, field, e.record, e.field, str(e))
        assert words in str(e), (words, str(e))
        assert record in str(e) and ("'%s'" % field) in str(e)
        for d in example()["devices"]:
            assert d["secret"] not in str(e)


def test_structural_errors():
    reg = Registry(MemoryStore(), "no")
    for doc in (None, [], "x"):
        e = raises(RegistryError, reg.load_export, doc)
        assert e.record == "export"
    doc = example()
    doc["devices"].append(copy(doc["devices"][0]))
    e = raises(RegistryError, reg.load_export, doc)
    assert "twice" in str(e) and e.record == "device 'dispatch-oslo@no'"
    doc = example()
    doc["groups"].append(copy(doc["groups"][0]))
    e = raises(RegistryError, reg.load_export, doc)
    assert "twice" in str(e) and e.record == "group 'fire-oslo@no'"
    doc = example()
    doc["devices"][1] = "kari"
    e = raises(RegistryError, reg.load_export, doc)
    assert e.record == "devices[1]" and "object" in str(e)
    raises(RegistryError, Registry, MemoryStore(), "NO")
    raises(RegistryError, Registry, MemoryStore(), "")
    raises(RegistryError, Registry, MemoryStore(), None)


def test_load_is_all_or_nothing():
    store = MemoryStore()
    reg = loaded(store)
    before_devices = store.items("device")
    before_groups = store.items("group")
    doc = example()
    # Valid changes first, a bad record last: none of it may land.
    device_doc(doc, OLA)["ceiling"] = 10
    doc["devices"].append({"identity": "new@no", "secret": "cd" * 16, "groups": [], "ceiling": 1})
    doc["groups"].append({"identity": "new-group@no", "policy": "open"})
    doc["groups"].append({"identity": "broken@no", "policy": "open", "e2e": True})
    raises(RegistryError, reg.load_export, doc)
    assert store.items("device") == before_devices and store.items("group") == before_groups
    assert reg.device(OLA).ceiling == 200 and reg.device("new@no") is None
    assert reg.group("new-group@no") is None
    # The same load without the bad record goes through, and updates count as updates.
    doc["groups"].pop()
    report = reg.load_export(doc)
    assert report == {
        "devices_added": 1,
        "devices_updated": 1,
        "groups_added": 1,
        "groups_updated": 0,
        "status_kept": [],
    }
    assert reg.device(OLA).ceiling == 10 and reg.device("new@no").ceiling == 1


def test_load_is_all_or_nothing_on_a_file_store_too():
    with TempDir() as d:
        reg = loaded(FileStore(d))
        doc = example()
        doc["devices"].append({"identity": "new@no", "secret": "cd" * 16, "groups": ["g2@no"], "ceiling": 1})
        doc["groups"].append({"identity": "g2@no", "policy": "members"})
        reg.load_export(doc)
        reg2 = Registry(FileStore(d), "no")
        assert reg2.device("new@no").groups == ("g2@no",) and reg2.group("g2@no").policy == "members"
        assert reg2.export() == reg.export()


def test_vid_rises_and_survives_a_restart():
    with TempDir() as d:
        reg = loaded(FileStore(d))
        k = unhex(OLA_K)
        vids = []
        for i in range(5):
            rand = bytes([i]) * 16
            vid, r, xres, ks, autn = reg.next_vector(OLA, rand)
            assert (vid, r, xres, ks, autn) == authvec.make_vector(k, rand, vid)
            # The device accepts it: the AUTN was made with its K.
            assert authvec.device_respond(k, rand, autn, vid) == (xres, ks)
            vids.append(vid)
        assert vids == [1, 2, 3, 4, 5]
        assert reg.device(OLA).vid == 5
        # No close(): a crash right after next_vector returned must not lose the vid.
        reg2 = Registry(FileStore(d), "no")
        assert reg2.device(OLA).vid == 5
        assert reg2.next_vector(OLA, RAND)[0] == 6
        # Other devices have counters of their own.
        assert reg2.next_vector("kari.hansen@no", RAND)[0] == 1
        # Re-importing the old export never lowers a counter.
        reg2.load_export(example())
        assert reg2.device(OLA).vid == 6
        assert reg2.next_vector(OLA, RAND)[0] == 7
        # An export that is ahead raises it.
        doc = example()
        device_doc(doc, OLA)["vid"] = 100
        reg2.load_export(doc)
        assert reg2.next_vector(OLA, RAND)[0] == 101
        raises(ValueError, reg2.next_vector, OLA, RAND[:15])
        assert reg2.device(OLA).vid == 101
        e = raises(RegistryError, reg2.next_vector, "nobody@no", RAND)
        assert "unknown" in str(e)


def test_vid_space_is_finite():
    reg = loaded()
    doc = example()
    device_doc(doc, OLA)["vid"] = 0xFFFFFFFF
    reg.load_export(doc)
    e = raises(RegistryError, reg.next_vector, OLA, RAND)
    assert e.field == "vid" and reg.device(OLA).vid == 0xFFFFFFFF


def test_resync_moves_the_counter_above_what_the_device_has_seen():
    reg = loaded()
    k = unhex(OLA_K)
    reg.next_vector(OLA, RAND)
    good = authvec.auts(k, RAND, 1200)
    raises(AuthFailed, reg.resync, OLA, RAND, 1200, bytes(16))
    raises(AuthFailed, reg.resync, OLA, RAND, 1300, good)  # AUTS binds the vid
    assert reg.device(OLA).vid == 1
    reg.resync(OLA, RAND, 1200, good)
    assert reg.next_vector(OLA, RAND)[0] == 1201
    reg.resync(OLA, RAND, 5, authvec.auts(k, RAND, 5))  # never lowers
    assert reg.device(OLA).vid == 1201


def test_device_control_proofs_use_a_persisted_sequence():
    with TempDir() as d:
        reg = loaded(FileStore(d))
        k = unhex(OLA_K)
        seq, proof = reg.next_control(OLA, 3)
        assert seq == 1
        authvec.check_control_proof(k, OLA, 3, 1, proof)
        assert Registry(FileStore(d), "no").next_control(OLA, 2)[0] == 2


def test_killed_is_final():
    with TempDir() as d:
        reg = loaded(FileStore(d))
        assert reg.set_status(OLA, STUNNED).status == STUNNED
        assert reg.set_status(OLA, "active").status == "active"
        reg.set_status(OLA, KILLED)
        for status in ("active", "stunned"):
            e = raises(RegistryError, reg.set_status, OLA, status)
            assert "final" in str(e)
        assert reg.set_status(OLA, KILLED).status == KILLED
        reg2 = Registry(FileStore(d), "no")
        assert reg2.device(OLA).status == KILLED
        # No vectors, no commands for a killed device.
        e = raises(RegistryError, reg2.next_vector, OLA, RAND)
        assert e.field == "status"
        raises(RegistryError, reg2.next_control, OLA, 2)
        # An export saying "active" does not revive it.
        report = reg2.load_export(example())
        assert report["status_kept"] == [OLA]
        assert reg2.device(OLA).status == KILLED
        raises(RegistryError, reg2.set_status, "nobody@no", KILLED)
        raises(RegistryError, reg2.set_status, "kari.hansen@no", "gone")


def test_an_import_never_revives_a_stunned_device():
    reg = loaded()
    reg.set_status("kari.hansen@no", STUNNED)
    report = reg.load_export(example())
    assert report["status_kept"] == ["kari.hansen@no"]
    assert reg.device("kari.hansen@no").status == STUNNED
    # An export may stun or kill, though.
    doc = example()
    device_doc(doc, OLA)["status"] = KILLED
    reg.load_export(doc)
    assert reg.device(OLA).status == KILLED


def test_may_affiliate():
    reg = loaded()
    cases = [
        (OLA, "fire-oslo@no", True),  # members group it lists
        (OLA, "police-ops@no", False),  # members group it does not list
        ("kari.hansen@no", "police-ops@no", True),
        ("kari.hansen@no", "fire-oslo@no", False),
        ("trainee-1@no", "fire-oslo@no", True),  # receive-only members still listen
        ("trainee-1@no", "rescue-nordic@no", True),  # open group: any known device
        ("kari.hansen@no", "rescue-nordic@no", True),
        (OLA, "rescue-kiruna@se", True),  # foreign group, no record here: its own list decides
        ("kari.hansen@no", "rescue-kiruna@se", False),
        (OLA, "unknown@no", False),  # a group of this system that does not exist
        ("nobody@no", "rescue-nordic@no", False),  # unknown device, even for an open group
        (OLA, "not an identity", False),
    ]
    for dev, grp, want in cases:
        assert reg.may_affiliate(dev, grp) is want, (dev, grp)
    reg.set_status(OLA, STUNNED)
    assert reg.may_affiliate(OLA, "fire-oslo@no") is False
    assert reg.may_affiliate(OLA, "rescue-nordic@no") is False
    reg.set_status(OLA, "active")
    assert reg.may_affiliate(OLA, "fire-oslo@no") is True
    reg.set_status(OLA, KILLED)
    assert reg.may_affiliate(OLA, "rescue-nordic@no") is False


def test_secrets_stay_out_of_repr_and_errors():
    reg = loaded()
    ola = reg.device(OLA)
    for text in (repr(ola), str(ola), repr(reg.devices())):
        assert OLA_K not in text and "<hidden>" in text
    assert "202d01ac" not in repr(ola)
    doc = example()
    device_doc(doc, OLA)["secret"] = OLA_K.upper()[:-1] + "Z"
    e = raises(RegistryError, Registry(MemoryStore(), "no").load_export, doc)
    assert OLA_K.upper()[:-1] not in str(e) and OLA_K not in str(e).lower()
    assert "DeviceRecord" in repr(DeviceRecord("a@no", None, (), 1, "active", None, None))


def test_store_is_bound_to_its_system_and_checked_at_start():
    store = MemoryStore()
    loaded(store)
    e = raises(RegistryError, Registry, store, "se")
    assert "'no'" in str(e) and "'se'" in str(e)
    assert Registry(store, "no").device(OLA) is not None
    # A record damaged in the store is named when the registry starts.
    bad = store.get("device", OLA)
    bad["ceiling"] = 999
    store.put("device", OLA, bad)
    e = raises(RegistryError, Registry, store, "no")
    assert OLA in e.record and e.field == "ceiling"
    bad["ceiling"] = 1
    store.put("device", "other@no", bad)  # key and identity disagree
    store.put("device", OLA, dict(bad, identity=OLA))
    e = raises(RegistryError, Registry, store, "no")
    assert e.field == "identity" and "other@no" in e.record
    # A secret for another system's device is never held.
    store2 = MemoryStore()
    Registry(store2, "se")
    store2.put("device", OLA, device_doc(example(), OLA))
    e = raises(RegistryError, Registry, store2, "se")
    assert e.field == "secret" and OLA_K not in str(e)
