# Field readers for decoded messages, and the header reader of the Chunk fast path.
from . import errors as R
from .errors import Refused


def uint(m, key, limit):
    v = m.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise Refused(R.BAD_FIELD, 'key %d: expected an unsigned integer' % key)
    if v > limit:
        raise Refused(R.OVERSIZE, 'key %d: %d exceeds %d' % (key, v, limit))
    return v


def bytes_(m, key, limit, exact=None):
    v = m.get(key)
    if not isinstance(v, bytes):
        raise Refused(R.BAD_FIELD, 'key %d: expected a byte string' % key)
    if exact is not None and len(v) != exact:
        raise Refused(R.BAD_FIELD, 'key %d: expected %d bytes' % (key, exact))
    if len(v) > limit:
        raise Refused(R.OVERSIZE, 'key %d: %d bytes exceeds %d' % (key, len(v), limit))
    return v


def arg(at, buf, n, key, major):
    # Reads `key` then an item of `major` at at[0]: its argument, or None when the message
    # is not laid out that way. Advances at[0] past the header.
    p = at[0]
    if p + 1 >= n or buf[p] != key or buf[p + 1] >> 5 != major:
        return None
    info = buf[p + 1] & 31
    p += 2
    if info < 24:
        at[0] = p
        return info
    if info > 27:
        return None
    size = 1 << (info - 24)
    if p + size > n:
        return None
    v = 0
    end = p + size
    while p < end:
        v = (v << 8) | buf[p]
        p += 1
    at[0] = p
    return v
