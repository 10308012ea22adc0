# The signed manifest (docs/protocol.md section 3): an untagged COSE_Sign1 over a CBOR map,
# Ed25519 with the operator key. Checks run in the order section 3 gives.
# Imported at boot, not per Offer: compiling a module at run time costs far more heap than it holds.
import binascii
import hashlib
from . import cbor
from . import ed25519
from .errors import Refused, MALFORMED, BAD_SIGNATURE, UNKNOWN_KEY, UNSUPPORTED_VERSION, BAD_FIELD, OVERSIZE

MAX_MANIFEST = 1024
ALG_EDDSA = -8


class Manifest:
    def __init__(self, m):
        self.hw = m[2]
        self.version = m[3]
        self.security_version = m[4]
        self.size = m[5]
        self.digest = m[6]
        self.created = m[7]
        self.flags = m.get(8, 0)


def key_id(public):
    return hashlib.sha256(public).digest()[:8]


def verify(blob, keys):
    # A generator (use with yield from). blob: the manifest bytes from the Offer; keys: raw 32-byte
    # operator public keys. Returns a Manifest; raises Refused(reason, detail).
    if len(blob) > MAX_MANIFEST:
        raise Refused(OVERSIZE, 'manifest is %d bytes, limit %d' % (len(blob), MAX_MANIFEST))
    env = cbor.decode_all(blob)
    if not isinstance(env, list) or len(env) != 4:
        raise Refused(MALFORMED, 'manifest: expected a COSE_Sign1 array of 4')
    prot, unprot, payload, sig = env
    if not isinstance(prot, bytes) or not isinstance(payload, bytes) or not isinstance(sig, bytes) or not isinstance(unprot, dict):
        raise Refused(MALFORMED, 'manifest: COSE_Sign1 fields have the wrong types')
    hdr = cbor.decode_all(prot)
    if not isinstance(hdr, dict) or hdr.get(1) != ALG_EDDSA:
        raise Refused(BAD_SIGNATURE, 'manifest: protected header must name alg EdDSA (-8)')
    if len(sig) != 64:
        raise Refused(BAD_SIGNATURE, 'manifest: Ed25519 signature must be 64 bytes')
    kid = unprot.get(4)
    candidates = [k for k in keys if kid is None or key_id(k) == kid]
    if not candidates:
        raise Refused(UNKNOWN_KEY, 'manifest signed by unknown key %s' % (binascii.hexlify(kid).decode() if isinstance(kid, bytes) else '(no kid)'))
    tbs = cbor.encode(['Signature1', prot, b'', payload])
    ok = False
    for k in candidates:
        if (yield from ed25519.verify(k, tbs, sig)):
            ok = True
            break
    if not ok:
        raise Refused(BAD_SIGNATURE, 'manifest signature does not verify')
    return Manifest(_body(payload))


def _body(payload):
    m = cbor.decode_all(payload)
    if not isinstance(m, dict):
        raise Refused(MALFORMED, 'manifest payload is not a map')
    if m.get(1) != 1:
        raise Refused(UNSUPPORTED_VERSION, 'manifest format %r is not supported' % (m.get(1),))
    _want(m, 2, str, 32)
    _want(m, 3, str, 32)
    _want(m, 4, int, 0xffffffff)
    _want(m, 5, int, 64 * 1024 * 1024)
    _want(m, 6, bytes, 32)
    _want(m, 7, int, 0xffffffffffff)
    if 8 in m:
        _want(m, 8, int, 0xffff)
    if len(m[6]) != 32 or m[5] < 1 or parse_version(m[3]) is None:
        raise Refused(BAD_FIELD, 'manifest: bad digest, size or version')
    return m


def _want(m, key, kind, limit):
    v = m.get(key)
    if not isinstance(v, kind) or isinstance(v, bool):
        raise Refused(BAD_FIELD, 'manifest key %d has the wrong type' % key)
    if (v if kind is int else len(v)) > limit or (kind is int and v < 0):
        raise Refused(BAD_FIELD, 'manifest key %d is out of range' % key)


def _num(s):
    if not s or len(s) > 9 or not s.isdigit() or (len(s) > 1 and s[0] == '0'):
        return None
    return int(s)


def parse_version(v):
    # MAJOR.MINOR.PATCH[-PRE] -> (major, minor, patch, pre or None); None when it is not one.
    if not isinstance(v, str) or len(v) > 32:
        return None
    core, sep, pre = v.partition('-')
    parts = core.split('.')
    if len(parts) != 3:
        return None
    nums = [_num(p) for p in parts]
    if None in nums:
        return None
    if sep and (not pre or len(pre) > 20):
        return None
    return (nums[0], nums[1], nums[2], pre if sep else None)


def compare_versions(a, b):
    # Semver precedence: negative when a < b. Unparseable versions sort lowest.
    pa = parse_version(a)
    pb = parse_version(b)
    if pa is None or pb is None:
        return (pa is not None) - (pb is not None)
    for i in range(3):
        if pa[i] != pb[i]:
            return -1 if pa[i] < pb[i] else 1
    xa, xb = pa[3], pb[3]
    if xa == xb:
        return 0
    if xa is None:
        return 1
    if xb is None:
        return -1
    la, lb = xa.split('.'), xb.split('.')
    for i in range(max(len(la), len(lb))):
        if i >= len(la):
            return -1
        if i >= len(lb):
            return 1
        u, w = la[i], lb[i]
        if u.isdigit() and w.isdigit():
            if int(u) != int(w):
                return -1 if int(u) < int(w) else 1
        elif u != w:
            return -1 if u < w else 1
    return 0
