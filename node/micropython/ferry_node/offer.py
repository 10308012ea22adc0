# What a node checks in an Offer once the manifest signature holds (docs/protocol.md section 3,
# then the transfer parameters of section 5), in that order.
from . import errors as R
from .lifecycle import N_COUNTER
from .manifest import compare_versions
from .transfer import chunk_count

CHUNK_OVERHEAD = 20  # CBOR framing of a Chunk around its data, worst case (section 5)


def check(node, man, enc, size, digest, chunk):
    # Section 3's checks after the signature, in order. Reason none = already running it.
    run = node.running()
    if man.hw != node.hw:
        return R.WRONG_HARDWARE, 'release is for %s, this node is %s' % (man.hw, node.hw)
    cmp = compare_versions(man.version, run[0])
    if cmp == 0 and man.digest == run[1]:
        return R.NONE, 'already running'
    if cmp <= 0:
        return R.DOWNGRADE, '%s is not newer than %s' % (man.version, run[0])
    if man.security_version < node.rec.get(N_COUNTER, 0):
        return R.SECURITY_DOWNGRADE, 'security version %d < %d' % (man.security_version, node.rec[N_COUNTER])
    part = node.port.partition(1 - node.slot)
    room = part.ioctl(4, 0) * part.ioctl(5, 0)
    if man.size > room:
        return R.NO_SPACE, '%d-byte image does not fit the %d-byte slot' % (man.size, room)
    if enc != 0:
        return R.DELTA_FAILED, 'this node does not apply delta patches'
    if size != man.size or digest != man.digest:
        return R.BAD_FIELD, 'full-image offer must carry the manifest size and digest'
    fits = node.max_message - 7 - len(node.topic_dn) - CHUNK_OVERHEAD
    if chunk > fits:
        return R.OVERSIZE, 'chunk size %d exceeds what max-message %d allows' % (chunk, node.max_message)
    if chunk < 1 or chunk_count(size, chunk) > 65536:
        return R.BAD_FIELD, 'chunk size %d is not usable for %d bytes' % (chunk, size)
    return None
