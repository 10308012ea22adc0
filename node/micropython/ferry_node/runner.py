# The main loop: umqtt.simple-shaped calls only (connect, subscribe, check_msg, publish, ping),
# so the same loop runs on an ESP32 and in the host tests. The port supplies the rest.
# step() does one bounded piece of work; run() is the board's forever loop around it.
import time
from .node import Node

KEEPALIVE_S = 60


class Runner:
    def __init__(self, port, cfg, app=None):
        self.port = port
        self.node = Node(port, cfg)
        self.app = app
        self.client = None
        self.backoff = 500
        self.retry_at = None
        self.pinged = 0
        self.turn = 0

    def start(self):
        node = self.node
        node.boot()
        if self.app is not None and not node.recovery:
            try:
                self.app.start(node.running()[0])
            except Exception as e:
                # An application that cannot start: remember why and reset; the failed-start
                # streak grows and ends in recovery mode (seed 000).
                node.record_error('app start', e)
                self.port.reset()

    def step(self):
        # Returns True when there is more to do at once, False when the caller may idle.
        port = self.port
        node = self.node
        port.wdt_feed()
        client = self.client
        try:
            if client is None:
                return self._connect()
            self.turn ^= 1
            if node.job is not None and self.turn:
                node.run_job()
            else:
                # Messages are read during long work too (every other step), so a repeated Offer
                # or a Query is seen while a signature is being checked.
                node.received = False
                client.check_msg()
                node.tick(port.ticks_ms())
            node.flush(client)
            node.measure()
            if node.reboot_due:
                _close(client)
                port.reset()
            if node.received or node.job is not None:
                return True
            now = port.ticks_ms()
            if time.ticks_diff(now, self.pinged) > KEEPALIVE_S * 500:
                client.ping()
                self.pinged = now
            return False
        except OSError as e:
            node.on_disconnect()
            node.log('connection lost:', e)
            _close(self.client)
            self.client = None
            self.retry_at = time.ticks_add(port.ticks_ms(), self.backoff)
            self.backoff = min(self.backoff * 2, 30000)
            return False
        except Exception as e:
            # Anything else is a bug: keep the evidence, then start clean (seed 001 #5).
            node.record_error('main loop', e)
            _close(self.client)
            port.reset()

    def _connect(self):
        port = self.port
        node = self.node
        if self.retry_at is not None and time.ticks_diff(port.ticks_ms(), self.retry_at) < 0:
            return False
        client = port.mqtt_client(node.id, KEEPALIVE_S)
        client.set_callback(node.on_message)
        self.client = client
        client.connect()
        client.subscribe(node.topic_dn, 1)
        self.pinged = port.ticks_ms()
        node.on_connect(self.pinged)
        self.backoff = 500
        return True

    def run(self):
        self.start()
        while True:
            if not self.step():
                self.port.idle(10)


def _close(client):
    if client is None:
        return
    try:
        client.disconnect()
    except Exception:
        pass
