# The ESP32 port: OTA slots through esp32.Partition, watchdog, reset, umqtt.simple.
# Other boards implement the same methods (see docs/node-micropython.md, "Porting").
import esp32
import machine
import network
import time
from umqtt.simple import MQTTClient


class Esp32Port:
    def __init__(self, cfg, self_test=None, wdt_ms=30000, battery=None):
        self.cfg = cfg
        self._self_test = self_test
        # battery: the board's gauge, a function returning percent (e.g. from an ADC divider); None: mains.
        if battery is not None:
            self.battery = battery
        self.wdt = machine.WDT(timeout=wdt_ms) if wdt_ms else None
        self._running = esp32.Partition(esp32.Partition.RUNNING)
        self._slots = {}

    def _network(self):
        # Wi-Fi from the provisioning file ("wifi": {"ssid", "password"}), if it has one; an
        # OSError here makes the runner back off and try again (seed 001 #4, #12).
        w = self.cfg.get('wifi')
        if not w:
            return
        sta = network.WLAN(network.STA_IF)
        sta.active(True)
        if sta.isconnected():
            return
        sta.connect(w['ssid'], w.get('password') or '')
        for _ in range(100):
            if sta.isconnected():
                return
            self.wdt_feed()
            time.sleep_ms(100)
        raise OSError(116, 'wifi: not connected to %s' % w['ssid'])

    def running_slot(self):
        return self._label_slot(self._running.info()[4])

    @staticmethod
    def _label_slot(label):
        # 'ota_0' -> 0, 'ota_1' -> 1
        return int(label[4:]) if label.startswith('ota_') else 0

    def partition(self, slot):
        p = self._slots.get(slot)
        if p is None:
            found = esp32.Partition.find(esp32.Partition.TYPE_APP, label='ota_%d' % slot)
            if not found:
                raise OSError(19, 'no partition ota_%d' % slot)
            p = found[0]
            self._slots[slot] = p
        return p

    def set_boot(self, slot):
        self.partition(slot).set_boot()

    def mark_valid(self):
        esp32.Partition.mark_app_valid_cancel_rollback()

    def reset(self):
        machine.reset()

    def wdt_feed(self):
        if self.wdt:
            self.wdt.feed()

    def ticks_ms(self):
        return time.ticks_ms()

    def idle(self, ms):
        time.sleep_ms(ms)

    def self_test(self, version):
        # The application's own check of the new image; reaching the broker already passed.
        return self._self_test(version) if self._self_test else True

    def mqtt_client(self, client_id, keepalive):
        self._network()
        c = self.cfg
        return MQTTClient(client_id, c['broker'], port=c.get('port', 0), user=c.get('user', client_id),
                          password=c.get('password'), keepalive=keepalive)
