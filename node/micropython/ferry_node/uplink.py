# The node's Hello and Ack (docs/protocol.md section 4), built from its state.
from . import cbor
from . import lifecycle as L

HELLO, ACK = 1, 2
VALID, PENDING_VERIFY, RECOVERY = 2, 1, 6
CAP_ROLLBACK, CAP_ANTI_ROLLBACK = 2, 4
MAX_ACK_BITS = 8192


def hello(node):
    v = node.running()
    rec = node.rec
    state = RECOVERY if node.recovery else PENDING_VERIFY if node.in_trial() else VALID
    m = {0: HELLO, 1: 1, 2: node.id, 3: node.hw, 4: v[0], 5: v[1], 6: rec.get(L.N_COUNTER, 0), 7: node.slot, 8: state,
         9: node.max_message, 10: CAP_ROLLBACK | CAP_ANTI_ROLLBACK, 11: node.window, 14: rec[L.N_BOOTS]}
    d = node.download
    if d:
        m[12] = {1: d.session, 2: d.meta[5], 3: d.meta[4], 4: d.bitmap.bits}
    o = rec.get(L.N_OUTCOME)
    if o:
        m[13] = {1: o[0], 2: o[1], 3: o[2]}
    b = node.battery()
    if b is not None:
        m[15] = b  # battery percent; absent means mains powered (rollouts skip low nodes)
    return cbor.encode(m)


def ack(node, everything, offer_id):
    # base = first missing chunk, then what is stored after it; the answer to an Offer covers
    # everything (and carries the offer id, key 4).
    d = node.download
    base = d.bitmap.first_missing()
    span = MAX_ACK_BITS if everything else min(MAX_ACK_BITS, max(1024, 16 * node.window))
    m = {0: ACK, 1: d.session, 2: base, 4: offer_id}
    if base < d.total:
        m[3] = d.bitmap.since(base, span)
    return cbor.encode(m)
