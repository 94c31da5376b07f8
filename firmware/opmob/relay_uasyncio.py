"""The MicroPython relay: ``micropython -m opmob.relay_uasyncio relay.json [status_every_s]``.

``main()`` checks the configuration (the sections of relay.toml as JSON), opens the registry and
its store, builds the relay core and runs it on ``uasyncio_driver.Driver``, the generic asyncio
driver (docs/relay-drivers.md). The driver's names (``Driver``, ``open_udp``, ``serve``,
``run_forever``) are importable from here too, as before the split.
"""

import json
import sys

from opmob.ticks import now_ms
from opmob.uasyncio_driver import Driver, open_udp, run_forever, serve  # noqa: F401  (re-exported)


def _beside(config_path, path):
    if path.startswith("/"):
        return path
    i = config_path.rfind("/")
    return path if i < 0 else config_path[: i + 1] + path


def _fail(config_path, msg):
    print("opmob relay: %s: %s" % (config_path, msg), file=sys.stderr)
    return 2


def main(config_path, status_every=60):
    """Run the relay from a JSON configuration (the sections of relay.toml as JSON objects).

    Returns the process exit code: 0 after Ctrl-C, 2 for a configuration or import the technician
    must fix, 1 when the relay cannot start (port in use, registry unreadable).
    """
    import os

    from opmob.registry import Registry, RegistryError
    from opmob.relay import Relay
    from opmob.relay_config import ConfigError, RelayConfig, load_link_keys
    from opmob.store import FileStore, StoreError

    try:
        with open(config_path) as f:
            doc = json.load(f)
    except OSError as e:
        return _fail(
            config_path,
            "cannot read the configuration (%s); give the path of the relay's JSON configuration" % e,
        )
    except ValueError as e:
        return _fail(config_path, "not valid JSON (%s)" % e)
    try:
        cfg = RelayConfig.from_dict(doc)
    except ConfigError as e:
        return _fail(config_path, str(e))
    # Relative paths in the configuration are taken from its directory, as the CPython driver does.
    cfg.registry_path = _beside(config_path, cfg.registry_path)
    if cfg.registry_import:
        cfg.registry_import = _beside(config_path, cfg.registry_import)
    for i, lk in enumerate(cfg.links):
        if lk.transcodes:
            # There is no Codec2 on MicroPython: only links that carry DVI4 as it is.
            return _fail(
                config_path,
                'link[%d] to %s: codec %s needs Codec2, which this MicroPython relay does not have; use codec = "dvi4"'
                % (i, lk.peer, lk.codec),
            )
        lk.key_file = _beside(config_path, lk.key_file)
    try:
        load_link_keys(cfg)
    except ConfigError as e:
        return _fail(config_path, str(e))

    try:
        store = FileStore(cfg.registry_path)
    except StoreError as e:
        print("opmob relay: %s; check that the directory exists and is writable" % e, file=sys.stderr)
        return 1
    try:
        try:
            registry = Registry(store, cfg.system)
        except RegistryError as e:
            return _fail(cfg.registry_path, "%s; give this relay its own [registry] path" % e)
        if cfg.registry_import:
            rc = _import(registry, cfg.registry_import)
            if rc:
                return rc
        core = Relay(cfg, registry, store, os.urandom, now_ms())
        try:
            sock = open_udp(cfg.listen_host, cfg.listen_port)
        except OSError as e:
            print(
                "opmob relay: cannot listen on udp %s:%d (%s); is another relay running? change [listen] port"
                % (cfg.listen_host, cfg.listen_port, e),
                file=sys.stderr,
            )
            return 1
        try:
            print(
                "opmob relay %s: serving udp %s:%d, status on the console every %g s"
                % (cfg.identity, cfg.listen_host, cfg.listen_port, status_every)
            )
            run_forever(Driver(core, sock), status_every)
        finally:
            sock.close()
    finally:
        store.close()
    print("opmob relay: stopped")
    return 0


def _import(registry, path):
    from opmob.store import StoreError

    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as e:
        return _fail(path, "cannot read the registry export (%s)" % e)
    except ValueError as e:
        return _fail(path, "not valid JSON (%s); nothing was imported" % e)
    try:
        report = registry.load_export(doc)
    except ValueError as e:
        return _fail(path, "%s; nothing was imported" % e)
    except StoreError as e:
        print("opmob relay: %s: could not be stored (%s); nothing was imported" % (path, e), file=sys.stderr)
        return 1
    print(
        "opmob relay: registry import %s: %d devices added, %d updated, %d groups added, %d updated"
        % (
            path,
            report.get("devices_added", 0),
            report.get("devices_updated", 0),
            report.get("groups_added", 0),
            report.get("groups_updated", 0),
        )
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print("usage: micropython -m opmob.relay_uasyncio relay.json [status_every_s]", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 60))
