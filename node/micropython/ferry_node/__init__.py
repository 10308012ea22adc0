# ferry node client for MicroPython (protocol v1, docs/protocol.md).
