# The node side of ferry protocol v1 (docs/protocol.md): Hello, Offer/Chunk/Ack, Activate,
# Cancel, Query and reports. Event driven: the runner feeds it messages (on_message), time (tick)
# and connection events, runs its long work (signature check, read-back hash) one slice per step
# (run_job), and publishes what it queued (flush).
import gc
import time
from . import cbor
from . import errors as R
from . import lifecycle as L
from . import uplink
from .errors import Refused
from .manifest import verify as verify_manifest
from .offer import check as check_offer, CHUNK_OVERHEAD
from .wire import uint, bytes_, arg
from .store import Store
from .transfer import Download, BLOCK

HELLO, ACK, REPORT = 1, 2, 3
OFFER, CHUNK, ACTIVATE, CANCEL, ERROR, QUERY = 16, 17, 18, 19, 20, 21
VERIFIED, REBOOTING, CONFIRMED, ROLLED_BACK, REJECTED = 1, 2, 3, 4, 5


class Node:
    def __init__(self, port, cfg):
        self.port = port
        self.cfg = cfg
        self.id = cfg['id']
        self.hw = cfg['hw']
        self.keys = cfg['keys']
        prefix = cfg.get('prefix', 'ferry')
        self.topic_up = ('%s/d/%s/up' % (prefix, self.id)).encode()
        self.topic_dn = ('%s/d/%s/dn' % (prefix, self.id)).encode()
        self.window = cfg.get('window', 8)
        self.save_every = cfg.get('save_every', 8)
        # Largest PUBLISH we take: a chunk of `chunk` bytes plus fixed header, topic and framing.
        self.max_message = cfg.get('max_message') or cfg.get('chunk', 4096) + 5 + 2 + len(self.topic_dn) + CHUNK_OVERHEAD
        self.safe_mode_after = cfg.get('safe_mode_after', 3)
        self.selftest_delay = cfg.get('selftest_delay_ms', 50)
        self.store = Store(cfg.get('dir', '/ferry'))
        self.rec = None
        self.slot = 0
        self.download = None
        self.job = None
        self.offer = None
        self.trusted = None
        self.pending = []
        self.outbox = []
        self.hello_due = False
        self.ack_due = False
        self.ack_all = False
        self.ack_offer = None
        self.new_since_ack = 0
        self.selftest_at = None
        self.selftest_ran = False
        self.reboot_due = False
        self.activated = None
        self.received = False
        self.connected = False
        self.last_reject = {}
        self.peak = 0
        self._at = [0]
        self._report_peak = getattr(port, 'report_peak', None)

    # ---- helpers -----------------------------------------------------------------------------
    def log(self, *a):
        print('ferry:', *a)

    def measure(self):
        a = gc.mem_alloc()
        if a > self.peak:
            self.peak = a
            if self._report_peak:
                self._report_peak(a)

    def save(self):
        self.store.save('node', self.rec)

    def running(self):
        return self.rec[L.N_SLOTS][self.slot]

    @property
    def recovery(self):
        return bool(self.rec.get(L.N_RECOVERY))

    def in_trial(self):
        return L.in_trial(self.rec, self.slot)

    def battery(self):
        # A port with a battery gauge has battery() -> 0..100; one without is mains powered.
        f = getattr(self.port, 'battery', None)
        if f is None:
            return None
        v = f()
        return None if v is None else max(0, min(100, int(v)))

    def record_error(self, where, exc):
        # Seed 001 #5: the last failure survives the reboot for whoever inspects the node later.
        text = '%s: %s' % (type(exc).__name__, exc)
        self.log('error in', where, text)
        try:
            self.rec[L.N_ERROR] = [where, text[:100], self.rec.get(L.N_BOOTS, 0)]
            self.save()
        except Exception:
            pass

    # ---- boot ----------------------------------------------------------------------------------
    def boot(self):
        self.rec = L.load_record(self.store, self.cfg)
        self.slot = self.port.running_slot()
        L.count_boot(self)
        for gone in self.store.cleanup(('node', 'xfer', 'bits')):
            self.log('cleanup: removed', gone)
        d = None
        if not self.rec.get(L.N_TRIAL):
            try:
                d = Download.load(self.store, 1 - self.slot, self.port.partition(1 - self.slot), self.save_every)
            except Exception as e:
                self.record_error('load transfer', e)
        if d is None:
            Download.discard(self.store)
        self.download = d
        self.log('booted slot %d %s boot #%d%s%s%s' % (
            self.slot, self.running()[0], self.rec[L.N_BOOTS], ' (trial)' if self.in_trial() else '',
            ' (recovery)' if self.recovery else '', ' resuming %d/%d chunks' % (d.bitmap.count, d.total) if d else ''))

    # ---- connection and time -------------------------------------------------------------------
    def on_connect(self, now):
        self.connected = True
        self.hello_due = True
        self.outbox = self.pending + self.outbox
        self.pending = []
        d = self.download
        if d and d.complete() and not d.verified and self.job is None:
            # Complete when power went: the agent waits for `verified` and sends nothing that
            # would make us look at it again.
            self.job = self._finish(d)
        if self.in_trial() and not self.selftest_ran:
            self.selftest_at = time.ticks_add(now, self.selftest_delay)
        if not self.in_trial():
            L.app_up(self)

    def on_disconnect(self):
        self.connected = False
        self.ack_due = False

    def tick(self, now):
        if self.selftest_at is not None and time.ticks_diff(now, self.selftest_at) >= 0 and not self.hello_due and self.connected:
            self.selftest_at = None
            self.selftest_ran = True
            self.guard(L.self_test, self)

    def run_job(self):
        # One slice of the long work in progress.
        try:
            next(self.job)
        except StopIteration:
            self.job = None
        except Exception as e:
            self.job = None
            self._failed(e, 'job')

    def flush(self, client):
        if not self.connected:
            return
        if self.hello_due:
            self.hello_due = False
            client.publish(self.topic_up, self.hello(), False, 1)
        if self.ack_due and self.download:
            self.ack_due = False
            msg = self.ack()
            self.ack_all = False
            self.ack_offer = None
            client.publish(self.topic_up, msg, False, 1)
        while self.outbox:
            # Taken off the queue only once published: a report is not lost with the connection.
            client.publish(self.topic_up, cbor.encode(self.outbox[0]), False, 1)
            self.outbox.pop(0)

    # ---- messages out --------------------------------------------------------------------------
    def hello(self):
        return uplink.hello(self)

    def ack(self):
        self.new_since_ack = 0
        return uplink.ack(self, self.ack_all, self.ack_offer)

    def report(self, session, stage, reason, version=None, detail=None):
        if len(self.outbox) >= 8:
            self.outbox.pop(0)
        self.outbox.append({0: REPORT, 1: session, 2: stage, 3: reason, 4: version, 5: detail[:128] if detail else None})

    def reject(self, session, reason, detail, version=None):
        # At most one refusal a second per reason, so garbage cannot make us flood the uplink.
        self.log('rejected', reason, detail)
        now = self.port.ticks_ms()
        last = self.last_reject.get(reason)
        if last is not None and time.ticks_diff(now, last) < 1000:
            return
        self.last_reject[reason] = now
        if version is not None and session:
            self.rec[L.N_OUTCOME] = [version, REJECTED, reason]
            self.save()
        self.report(session, REJECTED, reason, version, detail)

    def _ack(self, everything=False, offer_id=None):
        self.ack_due = True
        if everything:
            self.ack_all = True
        if offer_id is not None:
            self.ack_offer = offer_id

    # ---- messages in ---------------------------------------------------------------------------
    def _failed(self, e, where):
        if isinstance(e, Refused):
            self.reject(0, e.reason, e.detail)
        else:
            # A flash failure or a bug: persisted, reported, and the node carries on.
            self.record_error(where, e)
            self.reject(0, R.FLASH_ERROR, '%s: %s' % (type(e).__name__, e))

    def guard(self, fn, *args):
        try:
            fn(*args)
        except Exception as e:
            self._failed(e, fn.__name__)

    def on_message(self, topic, msg):
        # umqtt.simple's callback: (topic, message), both bytes.
        self.received = True
        if topic != self.topic_dn:
            return
        if len(msg) + 7 + len(topic) > self.max_message + 2:
            self.reject(0, R.OVERSIZE, 'message of %d bytes exceeds max-message %d' % (len(msg), self.max_message))
            return
        is_chunk = len(msg) > 3 and msg[0] == 0xa4 and msg[1] == 0 and msg[2] == CHUNK
        if is_chunk:
            if self.job is None:
                self.guard(self.on_chunk, msg)
            return
        try:
            m = cbor.decode_all(msg)
            if not isinstance(m, dict):
                raise Refused(R.MALFORMED, 'message is not a map')
            for k in m:
                if k < 0 or k > 23:
                    raise Refused(R.MALFORMED, 'map key %d is not 0..23' % k)
            t = m.get(0)
            fn = {OFFER: self.on_offer, ACTIVATE: self.on_activate, CANCEL: self.on_cancel,
                  QUERY: self.on_query, ERROR: self.on_error, CHUNK: self.on_chunk_map}.get(t)
            if fn is None:
                raise Refused(R.UNKNOWN_TYPE, 'message type %r is not an agent-to-node message' % (t,))
        except Refused as e:
            self.reject(0, e.reason, e.detail)
            return
        if self.job is not None and t in (ACTIVATE, CHUNK):
            # Busy checking a signature or a digest: the agent repeats these.
            self.log('busy: message type', t, 'dropped')
            return
        self.guard(fn, m)

    def on_query(self, m):
        self.hello_due = True

    def on_error(self, m):
        self.log('agent error', m.get(1), m.get(2))

    def on_offer(self, m):
        if self.in_trial() or self.activated is not None:
            self.log('offer ignored: trial boot or reboot under way')
            return
        offer_id = m.get(8)
        o = (uint(m, 1, 0xffffffff), bytes_(m, 2, 1024), uint(m, 3, 1), uint(m, 4, 64 * 1024 * 1024),
             bytes_(m, 5, 32, 32), uint(m, 6, 1 << 20), offer_id if isinstance(offer_id, int) else None)
        if self.job is not None:
            # The agent repeated its Offer while we still check the signature: the answer goes to
            # the newest one (its session and offer id), or the agent would never take it.
            if self.offer is not None and self.offer[1:6] == o[1:6]:
                self.offer = o
            return
        self.offer = o
        self.job = self._offer()

    def _trusted(self, blob):
        # The manifest, checked once per boot: a repeated Offer or the final check of the same
        # bytes reuses the verdict instead of paying for Ed25519 again.
        t = self.trusted
        if t is not None and t[0] == blob:
            return t[1]
        man = yield from verify_manifest(blob, self.keys)
        self.trusted = (blob, man)
        return man

    def _offer(self):
        blob = self.offer[1]
        try:
            try:
                man = yield from self._trusted(blob)
            except Refused as e:
                self.reject(self.offer[0], e.reason, e.detail)
                return
            session, blob, enc, size, digest, chunk, offer_id = self.offer
        finally:
            self.offer = None
        refusal = check_offer(self, man, enc, size, digest, chunk)
        if refusal:
            if refusal[0] == R.NONE:
                self.report(session, CONFIRMED, R.NONE, man.version, 'already running')
            else:
                self.reject(session, refusal[0], refusal[1], man.version)
            return
        meta = {1: session, 2: enc, 3: size, 4: chunk, 5: digest, 6: None, 7: blob}
        d = self.download
        if d and d.meta[5] == digest and d.meta[4] == chunk and d.meta[3] == size and d.meta[2] == enc:
            if d.meta[1] != session or d.meta[7] != blob:
                d.adopt(meta)
            self.log('resumed session %d: %d/%d chunks stored' % (session, d.bitmap.count, d.total))
        else:
            self.download = d = None
            inactive = 1 - self.slot
            d = self.download = Download.begin(self.store, inactive, self.port.partition(inactive), meta, self.save_every)
            self.log('downloading session %d: %s, %d bytes in %d chunks of %d' % (session, man.version, size, d.total, chunk))
        self._ack(True, offer_id)
        if d.complete():
            yield from self._finish(d)

    def on_chunk(self, msg):
        # Fast path for {0: 17, 1: session, 2: index, 3: data}: nothing decoded into objects, the
        # data goes to flash from a view of the received message (no tuples, no copies).
        n = len(msg)
        self._at[0] = 3
        session = arg(self._at, msg, n, 1, 0)
        index = arg(self._at, msg, n, 2, 0) if session is not None else None
        length = arg(self._at, msg, n, 3, 2) if index is not None else None
        if length is None:
            return self.on_chunk_map(cbor.decode_all(msg))
        p = self._at[0]
        if p + length != n:
            raise Refused(R.MALFORMED, 'chunk: data length does not match the message')
        self._store(session, index, memoryview(msg)[p:n])

    def on_chunk_map(self, m):
        if not isinstance(m, dict) or m.get(0) != CHUNK:
            raise Refused(R.MALFORMED, 'chunk is not a map')
        self._store(uint(m, 1, 0xffffffff), uint(m, 2, 65535), bytes_(m, 3, 1 << 20))

    def _store(self, session, index, data):
        d = self.download
        if d is None or session != d.session:
            self.reject(session, R.UNKNOWN_SESSION, 'no transfer with session %d' % session)
            return
        if index >= d.total or len(data) != d.expected_length(index):
            self.log('chunk %d of %d bytes does not fit the transfer' % (index, len(data)))
            return
        if not d.store_chunk(index, data):
            self._ack()
            return
        self.new_since_ack += 1
        if d.complete():
            self._ack()
            self.job = self._finish(d)
        elif self.new_since_ack >= max(1, min(self.window // 2, 8)):
            self._ack()

    def _finish(self, d):
        # Every chunk is stored: check the manifest again, read the slot back, compare digests.
        man = yield from self._trusted(d.meta[7])
        h = d.hasher()
        buf = bytearray(BLOCK)  # the read buffer, only while hashing what the slot holds
        while not h.done():
            h.step(buf)
            self.port.wdt_feed()
            yield
        digest = h.digest()
        if digest != d.meta[5] or digest != man.digest:
            Download.discard(self.store)
            self.download = None
            self.reject(d.session, R.DIGEST_MISMATCH, 'stored image does not match its digest', man.version)
            return
        self.rec[L.N_SLOTS][d.slot] = [man.version, digest, man.size, man.security_version]
        self.save()
        d.verified = True
        self.log('verified', man.version, man.size, 'bytes')
        self.report(d.session, VERIFIED, R.NONE, man.version)

    def on_activate(self, m):
        session = uint(m, 1, 0xffffffff)
        if self.activated == session:
            self.report(session, REBOOTING, R.NONE, None, 'already activated, rebooting')
            return
        d = self.download
        if d is None or d.session != session:
            o = self.rec.get(L.N_OUTCOME)
            if o and d is None and o[1] == CONFIRMED and o[0] == self.running()[0]:
                self.report(session, CONFIRMED, R.NONE, o[0])
            elif not self.in_trial():
                self.reject(session, R.UNKNOWN_SESSION, 'no verified transfer with session %d' % session)
            return
        if not d.complete():
            self.reject(session, R.BAD_FIELD, 'activate before the transfer is complete (%d/%d)' % (d.bitmap.count, d.total))
            return
        if not d.verified:
            self.job = self._finish(d)  # reports verified when done; the agent repeats Activate
            return
        e = self.rec[L.N_SLOTS][d.slot]
        L.begin_trial(self, d.slot, e, session)
        Download.discard(self.store)
        self.download = None
        self.activated = session
        self.report(session, REBOOTING, R.NONE, e[0])
        self.reboot_due = True
        self.log('activated', e[0], 'in slot', d.slot)

    def on_cancel(self, m):
        session = uint(m, 1, 0xffffffff)
        d = self.download
        if d is None or d.session != session or self.activated is not None:
            return  # not ours, or already marked for the trial boot: our reports tell the truth
        Download.discard(self.store)
        self.download = None
        self.job = None
        self.ack_due = False
        self.log('cancelled session', session)
        self.report(session, REJECTED, R.CANCELLED, None, 'cancelled by the agent')
