# Provisioning: one JSON file on the board (default /ferry.json), written once per device.
#   id, hw, version         device id, hardware class, version of the image it was flashed with
#   broker, port, user, password   MQTT broker and this device's credentials (user = id)
#   keys                    operator Ed25519 public keys, 64 hex digits each (raw 32 bytes)
#   digest, size            optional: SHA-256 (hex) and size of the flashed image
#   prefix, window, save_every, chunk, safe_mode_after, dir   optional tuning
import binascii
import json


def load(path='/ferry.json'):
    with open(path) as f:
        cfg = json.load(f)
    for k in ('id', 'hw', 'version', 'keys'):
        if k not in cfg:
            raise ValueError('%s: missing "%s"' % (path, k))
    cfg['keys'] = [binascii.unhexlify(k) for k in cfg['keys']]
    for k in cfg['keys']:
        if len(k) != 32:
            raise ValueError('%s: an operator key must be 32 bytes (64 hex digits)' % path)
    if 'digest' in cfg:
        cfg['digest'] = binascii.unhexlify(cfg['digest'])
    return cfg
