# The main loop: umqtt.simple-shaped calls only (connect, subscribe, check_msg, publish, ping),
# so the same loop runs on an ESP32 and in the host tests. The port supplies the rest.
import gc
import time
from .node import Node

KEEPALIVE_S = 60


def run(port, cfg, app=None):
    node = Node(port, cfg)
    node.boot()
    if app is not None and not node.recovery:
        try:
            app.start(node.running()[0])
        except Exception as e:
            # An application that cannot start: remember why and reset; the failed-start streak
            # grows and ends in recovery mode (seed 000).
            node.record_error('app start', e)
            port.reset()
    backoff = 500
    while True:
        client = port.mqtt_client(node.id, KEEPALIVE_S)
        try:
            client.set_callback(node.on_message)
            client.connect()
            client.subscribe(node.topic_dn, 1)
            node.on_connect(port.ticks_ms())
            backoff = 500
            pinged = port.ticks_ms()
            while True:
                port.wdt_feed()
                node.received = False
                client.check_msg()
                now = port.ticks_ms()
                node.tick(now)
                node.flush(client)
                if node.reboot_due:
                    _close(client)
                    port.reset()
                if node.received:
                    node.measure()
                    gc.collect()
                    continue
                if time.ticks_diff(now, pinged) > KEEPALIVE_S * 500:
                    client.ping()
                    pinged = now
                port.idle(10)
        except OSError as e:
            node.on_disconnect()
            node.log('connection lost:', e)
            _close(client)
            port.idle(backoff)
            backoff = min(backoff * 2, 30000)
        except Exception as e:
            # Anything else is a bug: keep the evidence, then start clean (seed 001 #5).
            node.record_error('main loop', e)
            _close(client)
            port.reset()


def _close(client):
    try:
        client.disconnect()
    except Exception:
        pass
