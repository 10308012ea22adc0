# Small persistent records on the board's filesystem. Each record is CBOR plus the first 4 bytes
# of its SHA-256, written to NAME.tmp and renamed over NAME (atomic on LittleFS, the ESP32 default),
# so a power cut leaves the old record or the new one, never a torn one. A record that fails its
# checksum reads as absent: nothing loaded is trusted beyond what its checksum proves.
import hashlib
import os
from . import cbor


class Store:
    def __init__(self, directory):
        self.dir = directory
        try:
            os.mkdir(directory)
        except OSError:
            pass

    def path(self, name):
        return self.dir + '/' + name

    def load(self, name):
        for p in (self.path(name), self.path(name) + '.tmp'):
            v = self._read(p)
            if v is not None:
                return v
        return None

    def _read(self, p):
        try:
            with open(p, 'rb') as f:
                raw = f.read()
        except OSError:
            return None
        if len(raw) < 5 or hashlib.sha256(raw[4:]).digest()[:4] != raw[:4]:
            return None
        try:
            return cbor.decode_all(memoryview(raw)[4:])
        except Exception:
            return None

    def save(self, name, value):
        body = cbor.encode(value)
        p = self.path(name)
        tmp = p + '.tmp'
        with open(tmp, 'wb') as f:
            f.write(hashlib.sha256(body).digest()[:4])
            f.write(body)
        try:
            os.rename(tmp, p)
        except OSError:
            # FAT cannot rename over an existing file: remove, then rename. load() falls back to
            # the complete .tmp if power goes in between.
            self.remove(name)
            os.rename(tmp, p)

    def remove(self, name):
        try:
            os.remove(self.path(name))
        except OSError:
            pass

    def cleanup(self, keep):
        # Startup cleanup: leftover .tmp files and records no longer used. Returns what it removed.
        gone = []
        try:
            names = os.listdir(self.dir)
        except OSError as e:
            return ['cannot list %s: %s' % (self.dir, e)]
        for n in names:
            base = n[:-4] if n.endswith('.tmp') else n
            if n.endswith('.tmp') or base not in keep:
                if n.endswith('.tmp') and base in keep and self._read(self.path(base)) is None:
                    # The rename never happened and no good record exists: keep the .tmp as the record.
                    try:
                        if self._read(self.path(n)) is not None:
                            os.rename(self.path(n), self.path(base))
                            continue
                    except OSError:
                        pass
                try:
                    os.remove(self.path(n))
                    gone.append(n)
                except OSError as e:
                    gone.append('%s (not removed: %s)' % (n, e))
        return gone
