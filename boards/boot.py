# /boot.py on an OpMob accessory: runs first at every reset. Kept to the minimum, so that a
# technician's serial REPL is reachable whatever the app does; the app starts in /main.py.
import gc

try:
    import esp

    esp.osdebug(None)  # the ESP-IDF's log lines would interleave with the console messages
except ImportError:
    pass
gc.collect()
