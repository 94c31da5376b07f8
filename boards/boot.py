# /boot.py on an OpMob accessory: runs first at every reset. Kept to the minimum, so that a
# technician's serial REPL is reachable whatever the app does; the app starts in /main.py.
import gc

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
gc.collect()
