"""The PTT accessory's firmware (docs/accessory.md): boot, board definitions and the hardware
layer, the provisioned configuration, groups, the app's tasks; the PTT client, tones and voice
paths (docs/accessory-audio.md). Start it with ``opmob.accessory.main.run()``."""
