# Copy to the board as /main.py. Starts the ferry client; an application module `app` (on the
# board's filesystem) with start(version) and, optionally, self_test(version) is started and checked.
from ferry_node import config
from ferry_node.runner import Runner
from ferry_node.port_esp32 import Esp32Port

cfg = config.load('/ferry.json')
try:
    import app
except ImportError:
    app = None
Runner(Esp32Port(cfg, self_test=getattr(app, 'self_test', None)), cfg, app).run()
