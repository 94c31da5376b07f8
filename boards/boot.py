# /boot.py on an OpMob accessory: runs first at every reset. Kept to the minimum, so that a
# technician's serial REPL is reachable whatever the app does; the app starts in /main.py.
import gc
import sys

# What `opmob deploy` wrote to /lib runs, not a copy frozen into the image ('.frozen' comes before
# /lib by default): the firmware a technician last deployed is the one that runs, and the one
# `opmob verify` checks.
if "/lib" in sys.path:
    sys.path.remove("/lib")
sys.path.insert(sys.path.index(".frozen") if ".frozen" in sys.path else len(sys.path), "/lib")


# A deploy's switch to its new files that a power loss cut short is completed before anything is
# imported from /lib: the device runs the old set or the new set, never a mix. opmob deploy sends
# this very function for its own switch (host_tools/opmob_host/deploy.py, switch_code).
def _opmob_switch(stage, journal):
    import json
    import os

    try:
        f = open(journal)
    except OSError:
        return -1
    try:
        j = json.load(f)
    finally:
        f.close()
    for p in j["move"]:
        try:
            os.stat(stage + p)
        except OSError:
            continue
        d = ""
        for part in p.split("/")[1:-1]:
            d += "/" + part
            try:
                os.mkdir(d)
            except OSError:
                pass
        os.rename(stage + p, p)
    for p in j["remove"]:
        try:
            os.remove(p)
        except OSError:
            pass
    os.remove(journal)
    return len(j["move"])


try:
    if _opmob_switch("/.opmob-stage", "/.opmob-switch.json") >= 0:
        print("boot: completed the switch to the files of an interrupted opmob deploy")
except Exception as e:  # never stop the boot here: the REPL must stay reachable
    print("boot: an interrupted deploy could not be completed (run opmob deploy):", repr(e))
del _opmob_switch

try:
    import esp

    esp.osdebug(None)  # the ESP-IDF's log lines would interleave with the console messages
except ImportError:
    pass
try:
    # A watchdog the app started before this (soft) reset is still running: keep it fed until the
    # app takes it over, or the board resets under a technician's mpremote session.
    from opmob.accessory.hw_esp32 import hold_after_reset

    hold_after_reset()
except ImportError:  # not a board (a virtual device), or no firmware deployed yet
    pass
except Exception as e:  # never stop the boot here: the REPL must stay reachable
    print("boot: the watchdog could not be held:", repr(e))
gc.collect()
