import t from 'tap';
import { applyStoredDelta, applyStoredDeltaSync, DeltaInstall, type DeltaInput } from '../device/delta-install.js';
import { Flash, PowerCut, SECTOR_SIZE } from '../device/flash.js';
import { makeLayout } from '../device/layout.js';
import { payloadOffset } from '../device/transfer.js';
import { createPatch } from '../shared/delta/index.js';
import { ProtocolError, Reason } from '../shared/errors.js';
import { Encoding } from '../shared/messages.js';
import { sha256 } from '../shared/manifest.js';
import { firmware } from './helpers/fixtures.js';

/**
 * The node's side of a delta on a simulated NOR flash: running image in ota_0, the patch parked at
 * the top of ota_1, the new image written from the start of ota_1 (device/delta-install.ts).
 */
const OLD = firmware('shell/old');
const NEW = firmware('shell/new');
const PATCH = createPatch(OLD, NEW);
const layout = makeLayout(512 * 1024);
const [RUN, TARGET] = layout.slots;

function sectors(n: number): number {
  return Math.ceil(n / SECTOR_SIZE) * SECTOR_SIZE;
}

/** A flash holding `running` in ota_0 and `patch` parked in ota_1, and the install input for it. */
function board(opts: { running?: Buffer; patch?: Buffer; baseDigest?: Buffer; expectedSize?: number } = {}): { flash: Flash; input: DeltaInput } {
  const running = opts.running ?? OLD;
  const patch = opts.patch ?? PATCH;
  const flash = new Flash(layout.flashSize);
  flash.erase(RUN.offset, sectors(running.length));
  flash.write(RUN.offset, running);
  const at = payloadOffset(Encoding.delta, TARGET.size, patch.length);
  flash.erase(TARGET.offset + at, TARGET.size - at);
  flash.write(TARGET.offset + at, patch);
  return {
    flash,
    input: {
      flash, running: RUN, runningSize: running.length, target: TARGET, patchOffset: at, patchSize: patch.length,
      baseDigest: opts.baseDigest ?? sha256(OLD), expectedSize: opts.expectedSize ?? NEW.length,
    },
  };
}

function refusal(fn: () => unknown): ProtocolError {
  try {
    fn();
  } catch (err) {
    if (err instanceof ProtocolError) return err;
    throw err;
  }
  throw new Error('expected a refusal');
}

t.test('applies in slices with the event loop running between them', async (t) => {
  const { flash, input } = board();
  let finished = false;
  let turns = 0;
  const tick = () => {
    turns++;
    if (!finished) setImmediate(tick);
  };
  setImmediate(tick);
  const r = await applyStoredDelta(input, { sliceBytes: 4096 });
  finished = true;
  t.ok(r.digest.equals(sha256(NEW)), 'the new image, read back from flash');
  t.equal(r.size, NEW.length);
  t.ok(flash.read(TARGET.offset, NEW.length).equals(NEW));
  // 141,800 B hashed and read back in 4 KiB slices (the writes in between take fewer: one patch
  // piece can expand to several KiB of copied image).
  t.ok(r.slices > 2 * Math.floor(NEW.length / 4096), `${r.slices} slices`);
  t.ok(turns >= r.slices - 1, `other callbacks ran ${turns} times during the apply`);
  t.ok(r.peakWorkingMemory <= 16 * 1024, `applier working memory ${r.peakWorkingMemory} B`);
  t.ok(flash.read(RUN.offset, OLD.length).equals(OLD), 'running slot untouched');
});

t.test('an apply whose node moved on stops writing', async (t) => {
  const { flash, input } = board();
  let slices = 0;
  await t.rejects(applyStoredDelta(input, { sliceBytes: 4096, alive: () => ++slices < 8 }), { name: 'InstallAborted' });
  const written = flash.stats.bytesWritten;
  await new Promise((resolve) => setImmediate(resolve));
  t.equal(flash.stats.bytesWritten, written, 'nothing written after the abort');
  t.ok(written - OLD.length - PATCH.length < NEW.length, 'stopped part way');
});

t.test('base checks: the running slot must hash to the patch base, and the patch must name the offered base', async (t) => {
  const rotted = Buffer.from(OLD);
  rotted[70_000] ^= 0x10;
  const a = board({ running: rotted });
  const e1 = refusal(() => applyStoredDeltaSync(a.input));
  t.equal(e1.reason, Reason.deltaBaseMismatch);
  t.match(e1.message, /running slot hashes to [0-9a-f]{16}…, the patch is for [0-9a-f]{16}…: the running image is not the patch's base/);
  t.ok(a.flash.read(RUN.offset, rotted.length).equals(rotted), 'running slot untouched');
  t.ok(a.flash.isErased(TARGET.offset, NEW.length), 'nothing written to the other slot either');

  const b = board({ baseDigest: sha256(Buffer.from('another image')) });
  const e2 = refusal(() => new DeltaInstall(b.input));
  t.equal(e2.reason, Reason.deltaBaseMismatch);
  t.match(e2.message, /patch header names base [0-9a-f]{16}…, the offer named [0-9a-f]{16}…/);

  const c = board({ running: OLD.subarray(0, OLD.length - 4) });
  const e3 = refusal(() => new DeltaInstall(c.input));
  t.equal(e3.reason, Reason.deltaBaseMismatch);
  t.match(e3.message, /patch is for a 141800-byte base, the running image has 141796 bytes/);
});

t.test('bad patches are refused with the reason, the running image untouched', async (t) => {
  const cases: [string, Parameters<typeof board>[0], RegExp][] = [
    ['truncated', { patch: PATCH.subarray(0, PATCH.length - 40) }, /truncated patch|corrupted patch/],
    ['header damaged', { patch: Buffer.concat([PATCH.subarray(0, 30), Buffer.from([PATCH[30] ^ 1]), PATCH.subarray(31)]) }, /corrupted patch header: CRC-32/],
    ['body damaged', { patch: Buffer.concat([PATCH.subarray(0, 400), Buffer.from([PATCH[400] ^ 0xff]), PATCH.subarray(401)]) }, /corrupted patch|digest .* differs|longer than declared/],
    ['not a patch', { patch: Buffer.alloc(200, 0x41) }, /not a ferry delta patch/],
    ['manifest size differs', { expectedSize: NEW.length - 1 }, /patch makes a 141800-byte image, the manifest says 141799/],
  ];
  for (const [what, opts, msg] of cases) {
    const { flash, input } = board(opts);
    const e = refusal(() => applyStoredDeltaSync(input));
    t.ok([Reason.deltaFailed, Reason.oversize].includes(e.reason as 22), `${what}: reason ${e.reason}`);
    t.match(e.message, msg, `${what}: ${e.message}`);
    t.ok(flash.read(RUN.offset, OLD.length).equals(OLD), `${what}: running slot untouched`);
  }
});

t.test('a power cut during the apply stays a power cut; the apply runs again from the start', async (t) => {
  for (const at of [1, 9, 40]) {
    const { flash, input } = board();
    flash.armPowerCut({ at, mode: 'torn', fraction: 0.5 });
    t.throws(() => applyStoredDeltaSync(input), PowerCut, `cut at write/erase #${at} surfaces as PowerCut`);
    const again = await applyStoredDelta(input);
    t.ok(again.digest.equals(sha256(NEW)), `after the cut at #${at} the re-run yields the new image`);
    t.ok(flash.read(RUN.offset, OLD.length).equals(OLD));
  }
});
