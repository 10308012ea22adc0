# Entry point of a host boot: the board's Runner with the host port. The worker thread calls
# step() from JavaScript: MicroPython's WebAssembly build collects garbage only between such calls
# (gc.collect() inside a call is deferred to the next one), so each step asks for a collection and
# the heap a step ends with is what was alive before it plus what it allocated.
import gc
from ferry_node import config
from ferry_node.runner import Runner
import host_port


def boot():
    cfg = config.load('/flash/vfs/ferry.json')
    cfg['dir'] = '/flash/vfs/ferry'
    r = Runner(host_port.HostPort(), cfg, host_port.HostApp())
    r.start()
    step = r.step

    def host_step():
        gc.collect()
        return step()
    return host_step
