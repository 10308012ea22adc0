# Copy to the board as /main.py. Starts the ferry client; pass your application module as `app`
# (with start(version) and, optionally, self_test(version)) to have it started and checked.
from ferry_node import config, runner
from ferry_node.port_esp32 import Esp32Port

cfg = config.load('/ferry.json')
try:
    import app
except ImportError:
    app = None
port = Esp32Port(cfg, self_test=getattr(app, 'self_test', None))
runner.run(port, cfg, app)
