# Boot-time bookkeeping (seed 000) and the trial boot: boot counting, failed-start streaks and
# recovery mode, what a trial boot's outcome was, the self-test, and rollback.
from . import errors as R

# Keys of the 'node' record.
N_SLOTS, N_COUNTER, N_OUTCOME, N_RECOVERY, N_TRIAL, N_BOOTS, N_STARTS, N_ERROR = 1, 2, 3, 4, 5, 6, 7, 8
# Trial record: [slot, previous slot, version, session, self-test started, security version, reason,
#                boot slot switched]
T_SLOT, T_PREV, T_VERSION, T_SESSION, T_STARTED, T_SECURITY, T_REASON, T_SWITCHED = 0, 1, 2, 3, 4, 5, 6, 7
REPORT = 3
CONFIRMED, ROLLED_BACK = 3, 4
ZERO_DIGEST = bytes(32)


def load_record(store, cfg):
    rec = store.load('node')
    if not isinstance(rec, dict) or not isinstance(rec.get(N_SLOTS), dict):
        rec = {N_SLOTS: {}, N_COUNTER: cfg.get('security_version', 0), N_BOOTS: 0, N_STARTS: 0}
    return rec


def count_boot(node):
    # Counted first, before anything that could fail: a boot that never gets up still counts.
    rec = node.rec
    if node.slot not in rec[N_SLOTS]:
        c = node.cfg
        rec[N_SLOTS][node.slot] = [c['version'], c.get('digest', ZERO_DIGEST), c.get('size', 0), rec.get(N_COUNTER, 0)]
    rec[N_BOOTS] = rec.get(N_BOOTS, 0) + 1
    rec[N_STARTS] = rec.get(N_STARTS, 0) + 1
    settle_trial(node)
    if rec[N_STARTS] > node.safe_mode_after and not rec.get(N_RECOVERY):
        rec[N_RECOVERY] = 1
        node.log('recovery mode:', rec[N_STARTS] - 1, 'failed starts in a row')
    node.save()


def in_trial(rec, slot):
    t = rec.get(N_TRIAL)
    return bool(t) and t[T_SLOT] == slot


def settle_trial(node):
    # After an activation: are we the new image on its first boot, or back on the old one?
    rec = node.rec
    t = rec.get(N_TRIAL)
    if not t:
        return
    if t[T_SLOT] == node.slot and not t[T_STARTED]:
        return  # first boot of the new image: the self-test decides
    if t[T_SLOT] == node.slot:
        # Reset during the self-test and booted the trial image again (a bootloader without
        # rollback): go back ourselves.
        t[T_REASON] = R.WATCHDOG
        node.save()
        node.port.set_boot(t[T_PREV])
        node.port.reset()
        return
    if len(t) <= T_SWITCHED or not t[T_SWITCHED]:
        # Power went during the activation, before the boot selection was known to be switched:
        # nothing was tried. The verified transfer is still stored; the agent activates again.
        rec[N_TRIAL] = None
        node.log('activation of', t[T_VERSION], 'was interrupted: not switched')
        return
    reason = t[T_REASON] or (R.WATCHDOG if t[T_STARTED] else R.BOOT_FAILED)
    rec[N_OUTCOME] = [t[T_VERSION], ROLLED_BACK, reason]
    rec[N_TRIAL] = None
    node.pending.append({0: REPORT, 1: t[T_SESSION], 2: ROLLED_BACK, 3: reason, 4: t[T_VERSION]})
    node.log('rolled back from', t[T_VERSION], 'reason', reason)


def begin_trial(node, slot, entry, session):
    # The trial record reaches flash before the boot slot changes: whichever image boots next
    # knows what was tried.
    t = [slot, node.slot, entry[0], session, False, entry[3], None, False]
    node.rec[N_TRIAL] = t
    node.save()
    node.port.set_boot(slot)
    t[T_SWITCHED] = True
    node.save()


def app_up(node):
    # The application started: the failed-start streak ends (seed 000's counter reset).
    if node.rec.get(N_STARTS) and not in_trial(node.rec, node.slot):
        node.rec[N_STARTS] = 0
        node.save()


def self_test(node):
    rec = node.rec
    t = rec[N_TRIAL]
    t[T_STARTED] = True
    node.save()
    node.log('self-test of', t[T_VERSION])
    ok = False
    try:
        ok = node.port.self_test(t[T_VERSION])
    except Exception as e:
        node.record_error('self-test', e)
    if ok:
        try:
            node.port.mark_valid()
        except OSError as e:
            node.record_error('mark valid', e)  # firmware built without rollback support
        rec[N_COUNTER] = max(rec.get(N_COUNTER, 0), t[T_SECURITY])
        rec[N_OUTCOME] = [t[T_VERSION], CONFIRMED, R.NONE]
        rec[N_TRIAL] = None
        rec[N_RECOVERY] = None
        rec[N_STARTS] = 0
        node.save()
        node.log('confirmed', t[T_VERSION])
        node.report(t[T_SESSION], CONFIRMED, R.NONE, t[T_VERSION])
        node.hello_due = True
        return
    t[T_REASON] = R.SELF_TEST_FAILED
    node.save()
    node.log('self-test failed: rolling back to slot', t[T_PREV])
    node.port.set_boot(t[T_PREV])
    node.reboot_due = True
