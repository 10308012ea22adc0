# The host port: the board as the tests see it. Slots are files under /flash (mirrored to the
# host's flash directory), the boot selection is /flash/otadata.json (read by the host bootloader),
# MQTT and reset go through ferry_host, the module the worker thread registers.
import gc
import json
import os
import time
import ferry_host

BLOCK = 4096


class FileSlot:
    # esp32.Partition's block protocol over a slot file.
    def __init__(self, path):
        self.path = path
        self.blocks = os.stat(path)[6] // BLOCK
        self.f = open(path, 'r+b')

    def readblocks(self, block, buf, offset=0):
        self.f.seek(block * BLOCK + offset)
        self.f.readinto(buf)

    def writeblocks(self, block, buf, offset=None):
        if offset is None:
            # The simple form erases every block it covers first, as on the board.
            for b in range(block, block + (len(buf) + BLOCK - 1) // BLOCK):
                self.ioctl(6, b)
            offset = 0
        self.f.seek(block * BLOCK + offset)
        self.f.write(buf)

    def ioctl(self, op, arg):
        if op == 4:
            return self.blocks
        if op == 5:
            return BLOCK
        if op == 6:
            self.f.flush()
            ferry_host.erase(self.path, arg * BLOCK)
            return 0
        return None


class HostMQTT:
    # umqtt.simple.MQTTClient's calls, carried by the host's MQTT connection.
    def __init__(self, client_id):
        self.client_id = client_id
        self.cb = None

    def set_callback(self, f):
        self.cb = f

    def connect(self, clean_session=True):
        if ferry_host.connect(self.client_id):
            raise OSError(111, 'connect failed')

    def subscribe(self, topic, qos=0):
        if ferry_host.subscribe(topic.decode(), qos):
            raise OSError(104, 'subscribe failed')

    def publish(self, topic, msg, retain=False, qos=0):
        with open('/io/tx', 'wb') as f:
            f.write(msg)
        if ferry_host.publish(topic.decode(), qos):
            raise OSError(104, 'not connected')

    def check_msg(self):
        t = ferry_host.recv()
        if t is None:
            raise OSError(104, 'connection lost')
        if t:
            with open('/io/rx', 'rb') as f:
                msg = f.read()
            self.cb(t.encode(), msg)

    def ping(self):
        pass

    def disconnect(self):
        ferry_host.disconnect()


class HostPort:
    def __init__(self, flash='/flash'):
        self.flash = flash
        self.slots = {}

    def running_slot(self):
        return ferry_host.running_slot()

    def partition(self, slot):
        p = self.slots.get(slot)
        if p is None:
            p = self.slots[slot] = FileSlot('%s/ota_%d.bin' % (self.flash, slot))
        return p

    def _otadata(self, entry):
        tmp = self.flash + '/otadata.json.tmp'
        with open(tmp, 'w') as f:
            json.dump(entry, f)
        os.rename(tmp, self.flash + '/otadata.json')

    def _read_otadata(self):
        try:
            with open(self.flash + '/otadata.json') as f:
                return json.load(f)
        except (OSError, ValueError):
            return {'seq': 0, 'slot': 0, 'state': 'undefined'}

    def set_boot(self, slot):
        for p in self.slots.values():
            p.f.flush()
        seq = self._read_otadata().get('seq', 0) + 1
        self._otadata({'seq': seq, 'slot': slot, 'state': 'new'})

    def mark_valid(self):
        e = self._read_otadata()
        if e.get('state') == 'pending':
            e['state'] = 'valid'
            self._otadata(e)

    def reset(self):
        for p in self.slots.values():
            p.f.close()
        ferry_host.reset()

    def wdt_feed(self):
        pass

    def ticks_ms(self):
        return time.ticks_ms()

    def idle(self, ms):
        ferry_host.idle(ms)

    def self_test(self, version):
        return ferry_host.self_test(version)

    def mqtt_client(self, client_id, keepalive):
        return HostMQTT(client_id)

    def report_peak(self, bytes_):
        ferry_host.report_peak(bytes_)


class HostApp:
    # Stands in for the user's application: some versions crash at start (fault injection).
    def start(self, version):
        if not ferry_host.app_ok(version):
            raise RuntimeError('application %s crashed at start' % version)
