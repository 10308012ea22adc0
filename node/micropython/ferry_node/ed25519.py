# Ed25519 signature verification (RFC 8032 section 5.1.7), pure Python, verify only.
# SHA-512 is included because MicroPython's hashlib has no sha512 on ESP32. Work is sliced
# (generators) into steps that each leave only a few KiB of garbage.
# Cofactorless check: encode([S]B - [k]A) and compare with R; timing does not matter (public data).

_M64 = 0xffffffffffffffff
_K = None


def _primes(count):
    out = []
    n = 2
    while len(out) < count:
        prime = True
        for p in out:
            if p * p > n:
                break
            if n % p == 0:
                prime = False
                break
        if prime:
            out.append(n)
        n += 1
    return out


def _k512():
    # First 64 bits of the fractional parts of the cube roots of the first 80 primes.
    global _K
    if _K is None:
        k = []
        for p in _primes(80):
            k.append(_frac_root(p, 3))
            yield
        _K = k
    return _K


def _frac_root(p, e):
    # floor(frac(p ** (1/e)) * 2**64) by integer Newton iteration on p * 2**(64*e).
    x = p << (64 * e)
    r = 1 << (_bits(x) // e + 1)
    while True:
        y = ((e - 1) * r + x // (r ** (e - 1))) // e
        if y >= r:
            break
        r = y
    return r & _M64


def _bits(x):
    n = 0
    while x:
        x >>= 32
        n += 32
    return n


def _rotr(x, n):
    return ((x >> n) | (x << (64 - n))) & _M64


def sha512(data):
    # A generator: yields between slices of work, returns the digest (use with yield from).
    k = yield from _k512()
    h = []
    for p in (2, 3, 5, 7, 11, 13, 17, 19):
        h.append(_frac_root(p, 2))
        yield
    n = len(data)
    msg = bytearray(data)
    msg.append(0x80)
    while len(msg) % 128 != 112:
        msg.append(0)
    msg.extend((n * 8).to_bytes(16, 'big'))
    w = [0] * 80
    for off in range(0, len(msg), 128):
        for i in range(16):
            w[i] = int.from_bytes(msg[off + 8 * i:off + 8 * i + 8], 'big')
        for i in range(16, 80):
            a = w[i - 15]
            b = w[i - 2]
            s0 = _rotr(a, 1) ^ _rotr(a, 8) ^ (a >> 7)
            s1 = _rotr(b, 19) ^ _rotr(b, 61) ^ (b >> 6)
            w[i] = (w[i - 16] + s0 + w[i - 7] + s1) & _M64
            if i & 7 == 7:
                yield
        a, b, c, d, e, f, g, hh = h
        for i in range(80):
            t1 = (hh + (_rotr(e, 14) ^ _rotr(e, 18) ^ _rotr(e, 41)) + ((e & f) ^ (~e & g)) + k[i] + w[i]) & _M64
            t2 = ((_rotr(a, 28) ^ _rotr(a, 34) ^ _rotr(a, 39)) + ((a & b) ^ (a & c) ^ (b & c))) & _M64
            hh = g
            g = f
            f = e
            e = (d + t1) & _M64
            d = c
            c = b
            b = a
            a = (t1 + t2) & _M64
            if i & 3 == 3:
                yield
        h = [(x + y) & _M64 for x, y in zip(h, (a, b, c, d, e, f, g, hh))]
    out = bytearray()
    for x in h:
        out.extend(x.to_bytes(8, 'big'))
    return bytes(out)


_P = (1 << 255) - 19
_L = (1 << 252) + 27742317777372353535851937790883648493
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_I = pow(2, (_P - 1) // 4, _P)  # sqrt(-1)
_BY = 4 * pow(5, _P - 2, _P) % _P
_BX = 15112221349535400772501151409588531511454012693041857206046113283949847762202  # RFC 8032 5.1
_BASE = (_BX, _BY, 1, _BX * _BY % _P)


def _add(p, q):
    # Extended twisted Edwards coordinates (RFC 8032 5.1.4).
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % _P
    b = (y1 + x1) * (y2 + x2) % _P
    c = 2 * t1 * t2 * _D % _P
    d = 2 * z1 * z2 % _P
    e = b - a
    f = d - c
    g = d + c
    h = b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _double(p):
    x1, y1, z1, _ = p
    a = x1 * x1 % _P
    b = y1 * y1 % _P
    c = 2 * z1 * z1 % _P
    h = a + b
    e = h - (x1 + y1) * (x1 + y1)
    g = a - b
    f = c + g
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _pow(b, e):
    # b ** e mod p, yielding every 8 bits (the built-in three-argument pow runs in one go).
    r = 1
    b %= _P
    n = 0
    while e:
        if e & 1:
            r = r * b % _P
        b = b * b % _P
        e >>= 1
        n += 1
        if n & 7 == 0:
            yield
    yield
    return r


def _recover_x(y, sign):
    if y >= _P:
        return None
    x2 = (y * y - 1) * (yield from _pow(_D * y * y + 1, _P - 2)) % _P
    if x2 == 0:
        return None if sign else 0
    x = yield from _pow(x2, (_P + 3) // 8)
    if (x * x - x2) % _P != 0:
        x = x * _I % _P
    if (x * x - x2) % _P != 0:
        return None
    if (x & 1) != sign:
        x = _P - x
    return x


def _decode_point(b):
    y = int.from_bytes(b, 'little')
    sign = y >> 255
    y &= (1 << 255) - 1
    x = yield from _recover_x(y, sign)
    if x is None:
        return None
    return (x, y, 1, x * y % _P)


def _encode_point(p):
    x, y, z, _ = p
    zi = yield from _pow(z, _P - 2)
    x = x * zi % _P
    y = y * zi % _P
    return (y | ((x & 1) << 255)).to_bytes(32, 'little')


def verify(public, msg, sig):
    # A generator returning True when sig (64 bytes) is public's (32 bytes) Ed25519 signature over
    # msg. It yields every few steps so the caller can keep its connection and watchdog served and,
    # on a port without automatic collection between steps, collect garbage.
    if len(public) != 32 or len(sig) != 64:
        return False
    a = yield from _decode_point(public)
    if a is None:
        return False
    s = int.from_bytes(sig[32:], 'little')
    if s >= _L:
        return False
    k = int.from_bytes((yield from sha512(bytes(sig[:32]) + bytes(public) + bytes(msg))), 'little') % _L
    base = _BASE
    neg_a = ((_P - a[0]) % _P, a[1], 1, (_P - a[3]) % _P)
    both = _add(base, neg_a)
    q = (0, 1, 1, 0)
    for i in range(255, -1, -1):
        q = _double(q)
        sb = (s >> i) & 1
        kb = (k >> i) & 1
        if sb and kb:
            q = _add(q, both)
        elif sb:
            q = _add(q, base)
        elif kb:
            q = _add(q, neg_a)
        yield
    global _K
    _K = None  # 80 constants, ~3 KiB: rebuilt on the next check rather than kept on the heap
    return (yield from _encode_point(q)) == bytes(sig[:32])
