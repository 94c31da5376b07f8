# MicroPython manifest: freezes OpMob's accessory firmware into a MicroPython image for the ESP32
# boards (esp32-s3-ptt, esp32-devkitc). Frozen code runs from flash, leaving the heap to the app.
#
#   cd micropython/ports/esp32
#   make BOARD=ESP32_GENERIC_S3 BOARD_VARIANT=SPIRAM_OCT FROZEN_MANIFEST=/path/to/opmob/boards/manifest.py
#
# Paths below are relative to this file. docs/accessory.md ("Building and flashing") has the rest.

# The port's own frozen modules (asyncio, and the rest of a standard image).
include("$(PORT_DIR)/boards/manifest.py")  # noqa: F821 - manifest functions

# The protocol core a device needs (the relay's own modules stay out of the accessory image).
package(  # noqa: F821
    "opmob",
    files=(
        "__init__.py",
        "authvec.py",
        "compat.py",
        "device.py",
        "dvi4.py",
        "errors.py",
        "floorid.py",
        "mcpt.py",
        "relay_uasyncio.py",  # re-exports uasyncio_driver's Driver, which the app imports from it
        "rtp.py",
        "sig.py",
        "srtp.py",
        "store.py",
        "ticks.py",  # the cores' integer-millisecond clock
        "txn.py",
        "uasyncio_driver.py",  # its Driver puts the DeviceSession on a UDP socket
        "accessory/__init__.py",
        "accessory/app.py",
        "accessory/audio.py",
        "accessory/board.py",
        "accessory/config.py",
        "accessory/groups.py",
        "accessory/hw.py",
        "accessory/hw_esp32.py",
        "accessory/jitter.py",
        "accessory/link.py",
        "accessory/main.py",
        "accessory/ptt.py",
        "accessory/selftest.py",  # opmob verify's check of the peripherals
        "accessory/tones.py",
    ),
    base_path="../firmware",
)
