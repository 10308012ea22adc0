import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { PatchCache } from '../agent/patches.js';
import { applyPatch, deltaArchFor, detectImage, readPatchHeader } from '../shared/delta/index.js';
import { sha256 } from '../shared/manifest.js';
import { Capability } from '../shared/messages.js';
import { firmware } from './helpers/fixtures.js';

/** The agent's patch cache keeps one patch per instruction set, made for what the node announces. */
t.test('patch cache: one patch per instruction set, each rebuilding the target; forget drops them all', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-patch-cache-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const cache = new PatchCache(dir);
  t.teardown(() => cache.close());
  const base = { image: firmware('shell/old'), digest: sha256(firmware('shell/old')) };
  const target = { image: firmware('shell/new'), digest: sha256(firmware('shell/new')) };
  const thumbNode = Capability.delta | Capability.deltaThumb2;
  const arch = deltaArchFor(thumbNode, target.image);
  t.equal(arch, detectImage(target.image).arch === 'thumb2' ? 'thumb2' : 'none', 'a Thumb-2 node gets Thumb-2 prediction for a Cortex-M image');
  const plain = await cache.get(base, target);
  const predicted = await cache.get(base, target, undefined, arch);
  t.equal(readPatchHeader(plain).version, 2, 'the default (capability 1 only) is a version 2 patch');
  for (const [what, patch] of [['plain', plain], ['predicted', predicted]] as const) {
    t.ok(applyPatch(base.image, patch).image.equals(target.image), `${what} patch rebuilds the target`);
  }
  if (arch !== 'none') {
    t.equal(readPatchHeader(predicted).version, 3, 'the Thumb-2 patch is version 3');
    t.ok(predicted.length < plain.length, `and smaller (${predicted.length} B < ${plain.length} B)`);
  }
  t.ok(cache.cached(base.digest, target.digest)?.equals(plain), 'plain cached under its own key');
  t.ok(cache.cached(base.digest, target.digest, arch)?.equals(predicted), 'predicted cached under its own key');
  const again = new PatchCache(dir);
  t.teardown(() => again.close());
  t.ok(again.cached(base.digest, target.digest, arch)?.equals(predicted), 'kept on disk across restarts');
  cache.forget(base.digest, target.digest);
  t.equal(cache.cached(base.digest, target.digest), undefined, 'forget drops the plain patch');
  t.equal(cache.cached(base.digest, target.digest, arch), undefined, 'and every instruction-set variant');
});
