# The CBOR subset of docs/protocol.md: unsigned and negative integers, byte and text strings,
# definite arrays and maps, false/true/null. Tags, indefinite lengths, floats and other simple
# values are refused with reason malformed; so are non-minimal lengths beyond 64 bits.
from .errors import Refused, MALFORMED

_MAX_DEPTH = 4


def _fail(detail):
    raise Refused(MALFORMED, detail)


def head(buf, pos, end):
    # Returns (major, argument, next position) of the item header at pos.
    if pos >= end:
        _fail('truncated CBOR')
    ib = buf[pos]
    major = ib >> 5
    info = ib & 31
    pos += 1
    if info < 24:
        return major, info, pos
    if info > 27:
        _fail('indefinite length or reserved header 0x%02x' % ib)
    n = 1 << (info - 24)
    if pos + n > end:
        _fail('truncated CBOR')
    v = 0
    for i in range(n):
        v = (v << 8) | buf[pos + i]
    return major, v, pos + n


def decode(buf, pos=0, end=None, depth=0):
    # Decodes one item at pos; returns (value, next position). Byte strings come back as bytes.
    if end is None:
        end = len(buf)
    major, v, pos = head(buf, pos, end)
    if major == 0:
        return v, pos
    if major == 1:
        return -1 - v, pos
    if major == 2 or major == 3:
        if pos + v > end:
            _fail('truncated string')
        b = bytes(buf[pos:pos + v])
        if major == 3:
            try:
                b = b.decode()
            except UnicodeError:
                _fail('text string is not UTF-8')
        return b, pos + v
    if depth >= _MAX_DEPTH:
        _fail('nested deeper than %d' % _MAX_DEPTH)
    if major == 4:
        if v > end - pos:
            _fail('array longer than the message')
        out = []
        for _ in range(v):
            item, pos = decode(buf, pos, end, depth + 1)
            out.append(item)
        return out, pos
    if major == 5:
        if v > end - pos:
            _fail('map longer than the message')
        out = {}
        for _ in range(v):
            k, pos = decode(buf, pos, end, depth + 1)
            if not isinstance(k, int):
                _fail('map key is not an integer')
            item, pos = decode(buf, pos, end, depth + 1)
            out[k] = item
        return out, pos
    if major == 7:
        if v == 20:
            return False, pos
        if v == 21:
            return True, pos
        if v == 22:
            return None, pos
        _fail('float or simple value %d' % v)
    _fail('tag (major type 6)')


def decode_all(buf, end=None):
    # Exactly one item filling buf[:end].
    if end is None:
        end = len(buf)
    v, pos = decode(buf, 0, end)
    if pos != end:
        _fail('%d bytes after the CBOR item' % (end - pos))
    return v


def _head(out, major, v):
    if v < 24:
        out.append((major << 5) | v)
    elif v < 0x100:
        out.append((major << 5) | 24)
        out.append(v)
    elif v < 0x10000:
        out.append((major << 5) | 25)
        out.extend(v.to_bytes(2, 'big'))
    elif v < 0x100000000:
        out.append((major << 5) | 26)
        out.extend(v.to_bytes(4, 'big'))
    else:
        out.append((major << 5) | 27)
        out.extend(v.to_bytes(8, 'big'))


def encode_into(out, v):
    # Appends v to the bytearray out. Maps are written in ascending key order.
    if v is False or v is True or v is None:
        out.append(0xf4 if v is False else 0xf5 if v is True else 0xf6)
    elif isinstance(v, int):
        if v >= 0:
            _head(out, 0, v)
        else:
            _head(out, 1, -1 - v)
    elif isinstance(v, str):
        b = v.encode()
        _head(out, 3, len(b))
        out.extend(b)
    elif isinstance(v, (bytes, bytearray, memoryview)):
        _head(out, 2, len(v))
        out.extend(v)
    elif isinstance(v, (list, tuple)):
        _head(out, 4, len(v))
        for item in v:
            encode_into(out, item)
    elif isinstance(v, dict):
        keys = sorted(k for k in v if v[k] is not None)
        _head(out, 5, len(keys))
        for k in keys:
            encode_into(out, k)
            encode_into(out, v[k])
    else:
        raise TypeError('cannot encode %s' % type(v))


def encode(v):
    out = bytearray()
    encode_into(out, v)
    return bytes(out)
