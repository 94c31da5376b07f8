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
