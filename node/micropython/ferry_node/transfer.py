# A download into the inactive slot and its persistence (docs/protocol.md section 5).
# Chunk i is written at i * chunk_size of the slot. Each 4 KiB flash block is erased right before
# the first write into it; which blocks are erased lives in RAM and, after a reboot, is derived from
# the saved bitmap (a block holding a saved chunk was erased before that chunk was written).
# Records: 'xfer' (the Offer, written when a transfer starts or changes session) and 'bits'
# (8-byte digest prefix + bitmap, written every save_every new chunks and at completion).
import hashlib

BLOCK = 4096


class Bitmap:
    # LSB-first: chunk i is bit i & 7 of byte i >> 3.
    def __init__(self, size, raw=None):
        self.size = size
        self.bits = bytearray((size + 7) >> 3)
        self.count = 0
        self.floor = 0
        if raw:
            n = min(len(raw), len(self.bits))
            self.bits[0:n] = raw[0:n]
            spare = len(self.bits) * 8 - size
            if spare and self.bits:
                self.bits[-1] &= 0xff >> spare
            for b in self.bits:
                while b:
                    b &= b - 1
                    self.count += 1

    def has(self, i):
        return 0 <= i < self.size and (self.bits[i >> 3] >> (i & 7)) & 1

    def set(self, i):
        m = 1 << (i & 7)
        if self.bits[i >> 3] & m:
            return False
        self.bits[i >> 3] |= m
        self.count += 1
        return True

    def complete(self):
        return self.count == self.size

    def first_missing(self):
        i = self.floor
        while i < self.size:
            if (i & 7) == 0 and i + 8 <= self.size and self.bits[i >> 3] == 0xff:
                i += 8
                continue
            if not self.has(i):
                break
            i += 1
        self.floor = i
        return i

    def since(self, base, max_bits):
        # Bits from base on, re-based to 0, trailing zero bytes dropped: the selective part of an Ack.
        end = min(self.size, base + max_bits)
        last = -1
        for i in range(end - 1, base - 1, -1):
            if self.has(i):
                last = i
                break
        if last < 0:
            return None
        out = bytearray((last - base + 8) >> 3)
        for i in range(base, last + 1):
            if self.has(i):
                j = i - base
                out[j >> 3] |= 1 << (j & 7)
        return bytes(out)


def chunk_count(size, chunk):
    return (size + chunk - 1) // chunk


class Download:
    def __init__(self, store, slot, part, meta, raw_bits, save_every):
        # meta: {1: session, 2: encoding, 3: payload size, 4: chunk size, 5: payload digest,
        #        6: base digest or None, 7: manifest bytes, 8: offer id or None}
        self.store = store
        self.slot = slot
        self.part = part
        self.meta = meta
        self.save_every = save_every
        self.total = chunk_count(meta[3], meta[4])
        self.bitmap = Bitmap(self.total, raw_bits)
        self.erased = bytearray((part.ioctl(4, 0) + 7) >> 3)
        self.since_save = 0
        self.verified = False
        for i in range(self.total):
            if self.bitmap.has(i):
                self._mark_blocks(i)

    @classmethod
    def begin(cls, store, slot, part, meta, save_every):
        store.remove('bits')
        store.save('xfer', meta)
        return cls(store, slot, part, meta, None, save_every)

    @classmethod
    def load(cls, store, slot, part, save_every):
        meta = store.load('xfer')
        if not isinstance(meta, dict) or meta.get(3, 0) < 1 or meta.get(4, 0) < 1 or not isinstance(meta.get(5), bytes):
            return None
        if meta[3] > part.ioctl(4, 0) * BLOCK:
            return None
        saved = store.load('bits')
        raw = None
        if isinstance(saved, dict) and saved.get(1) == meta[5][:8] and isinstance(saved.get(2), bytes):
            raw = saved[2]
        return cls(store, slot, part, meta, raw, save_every)

    @staticmethod
    def discard(store):
        store.remove('bits')
        store.remove('xfer')

    @property
    def session(self):
        return self.meta[1]

    def complete(self):
        return self.bitmap.complete()

    def expected_length(self, i):
        return min(self.meta[4], self.meta[3] - i * self.meta[4])

    def adopt(self, meta):
        self.meta = meta
        self.store.save('xfer', meta)

    def _mark_blocks(self, i):
        start = i * self.meta[4]
        s = start // BLOCK
        last = (start + self.expected_length(i) - 1) // BLOCK
        while s <= last:
            self.erased[s >> 3] |= 1 << (s & 7)
            s += 1

    def store_chunk(self, i, data):
        # data: a buffer of exactly expected_length(i) bytes. Returns False for a duplicate.
        if self.bitmap.has(i):
            return False
        off = i * self.meta[4]
        s = off // BLOCK
        last = (off + len(data) - 1) // BLOCK
        while s <= last:
            m = 1 << (s & 7)
            if not self.erased[s >> 3] & m:
                self.part.ioctl(6, s)
                self.erased[s >> 3] |= m
            s += 1
        self.part.writeblocks(off // BLOCK, data, off % BLOCK)
        self.bitmap.set(i)
        self.verified = False
        self.since_save += 1
        if self.since_save >= self.save_every or self.bitmap.complete():
            self.save()
        return True

    def save(self):
        self.store.save('bits', {1: self.meta[5][:8], 2: self.bitmap.bits})
        self.since_save = 0

    def hasher(self):
        # Reads the payload back from flash and hashes it: a running hash is never trusted.
        return SlotHash(self.part, self.meta[3])


class SlotHash:
    # SHA-256 of the first `size` bytes of a slot, one block per step.
    def __init__(self, part, size):
        self.part = part
        self.left = size
        self.block = 0
        self.h = hashlib.sha256()

    def done(self):
        return self.left <= 0

    def step(self, buf):
        self.part.readblocks(self.block, buf, 0)
        take = min(len(buf), self.left)
        self.h.update(memoryview(buf)[:take] if take < len(buf) else buf)
        self.left -= take
        self.block += len(buf) // BLOCK

    def digest(self):
        return self.h.digest()
