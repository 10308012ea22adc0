# Entry point of a host boot: the same runner as main.py on a board, with the host port.
import gc
from ferry_node import config, runner
import host_port


def main():
    cfg = config.load('/flash/vfs/ferry.json')
    cfg['dir'] = '/flash/vfs/ferry'
    port = host_port.HostPort()
    gc.collect()
    runner.run(port, cfg, host_port.HostApp())
