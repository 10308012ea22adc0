import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Flash, PowerCut, SECTOR_SIZE } from '../device/flash.js';
import { Nvs } from '../device/nvs.js';
import { SecurityCounter } from '../device/efuse.js';

t.test('erase sets 0xFF; a write only clears bits (NOR semantics)', async (t) => {
  const f = new Flash(4 * SECTOR_SIZE);
  t.ok(f.read(0, 16).equals(Buffer.alloc(16, 0xff)), 'blank flash reads erased');
  f.write(100, Buffer.from([0b1100_1100, 0x0f]));
  t.same([...f.read(100, 2)], [0b1100_1100, 0x0f]);
  f.write(100, Buffer.from([0b1010_1010, 0xf0]));
  t.same([...f.read(100, 2)], [0b1000_1000, 0x00], 'writing over unerased data ANDs the bits');
  f.erase(0, SECTOR_SIZE);
  t.ok(f.read(100, 2).equals(Buffer.from([0xff, 0xff])), 'erase restores 0xFF');
  t.throws(() => f.erase(100, SECTOR_SIZE), RangeError, 'erase must be sector-aligned');
  t.throws(() => f.write(4 * SECTOR_SIZE - 1, Buffer.alloc(2)), RangeError, 'no writes past the end');
  t.equal(f.stats.erases, 1);
  t.equal(f.stats.writes, 2);
  t.equal(f.sectorErases(0), 1);
});

t.test('writes spanning sectors land byte for byte', async (t) => {
  const f = new Flash(4 * SECTOR_SIZE);
  const data = Buffer.from(Array.from({ length: 6000 }, (_, i) => i & 0xff));
  f.write(SECTOR_SIZE - 1000, data);
  t.ok(f.read(SECTOR_SIZE - 1000, data.length).equals(data));
});

t.test('power cut before an operation: nothing changes', async (t) => {
  const f = new Flash(2 * SECTOR_SIZE);
  f.armPowerCut({ at: 2, mode: 'before' });
  f.write(0, Buffer.from([1]));
  t.throws(() => f.write(1, Buffer.from([2])), PowerCut);
  t.same([...f.read(0, 2)], [1, 0xff], 'first write landed, the cut one did not');
  f.write(1, Buffer.from([2]));
  t.same([...f.read(0, 2)], [1, 2], 'the injector fires once');
});

t.test('power cut after an operation: it completed', async (t) => {
  const f = new Flash(2 * SECTOR_SIZE);
  f.write(0, Buffer.from([0]));
  f.armPowerCut({ at: 1, mode: 'after' });
  let cut: unknown;
  try {
    f.erase(0, SECTOR_SIZE);
  } catch (err) {
    cut = err;
  }
  t.ok(cut instanceof PowerCut && cut.mode === 'after' && cut.op.kind === 'erase', 'cut after the erase');
  t.same([...f.read(0, 1)], [0xff]);
});

t.test('torn write: only a prefix reaches the flash', async (t) => {
  const f = new Flash(2 * SECTOR_SIZE);
  f.armPowerCut({ at: 1, mode: 'torn', fraction: 0.5 });
  t.throws(() => f.write(10, Buffer.alloc(8, 0)), PowerCut);
  t.same([...f.read(10, 8)], [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
});

t.test('torn erase leaves garbage in the sector it was working on', async (t) => {
  const f = new Flash(2 * SECTOR_SIZE);
  f.write(0, Buffer.alloc(SECTOR_SIZE, 0));
  f.armPowerCut({ at: 1, mode: 'torn', fraction: 0 });
  t.throws(() => f.erase(0, SECTOR_SIZE), PowerCut);
  const s = f.read(0, SECTOR_SIZE);
  t.notOk(s.equals(Buffer.alloc(SECTOR_SIZE, 0xff)), 'not erased');
  t.notOk(s.equals(Buffer.alloc(SECTOR_SIZE, 0)), 'not intact either');
});

t.test('operation counter and hook see every erase and write', async (t) => {
  const f = new Flash(2 * SECTOR_SIZE);
  const seen: string[] = [];
  f.onOperation = (op) => seen.push(`${op.kind}#${op.seq}`);
  f.erase(0, SECTOR_SIZE);
  f.write(0, Buffer.from([1]));
  t.same(seen, ['erase#1', 'write#2']);
  t.equal(f.operations, 2);
});

t.test('file-backed flash survives a restart of the process', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-flash-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'n.flash');
  const a = new Flash(4 * SECTOR_SIZE, { file });
  a.write(5000, Buffer.from('hello'));
  a.close();
  const b = new Flash(4 * SECTOR_SIZE, { file });
  t.equal(b.read(5000, 5).toString(), 'hello');
  t.ok(b.read(0, 4).equals(Buffer.alloc(4, 0xff)), 'untouched sectors read erased');
  b.close();
});

t.test('NVS: values survive reload; a torn last record is ignored and the one before stands', async (t) => {
  const f = new Flash(8 * SECTOR_SIZE);
  const part = { offset: 0, size: 4 * SECTOR_SIZE };
  const nvs = new Nvs(f, part);
  nvs.put(1, Buffer.from('first'));
  nvs.put(2, Buffer.from('other'));
  t.equal(new Nvs(f, part).get(1)?.toString(), 'first');
  f.armPowerCut({ at: 1, mode: 'torn', fraction: 0.6 });
  t.throws(() => nvs.put(1, Buffer.from('second value, longer')), PowerCut);
  const after = new Nvs(f, part);
  t.equal(after.get(1)?.toString(), 'first', 'torn record ignored');
  t.equal(after.get(2)?.toString(), 'other');
  after.put(1, Buffer.from('third'));
  const again = new Nvs(f, part);
  t.equal(again.get(1)?.toString(), 'third', 'writing after a torn tail works (compacted)');
  t.equal(again.get(2)?.toString(), 'other', 'compaction kept the other key');
  again.delete(2);
  t.equal(new Nvs(f, part).get(2), undefined, 'deleted');
});

t.test('NVS: compaction when a bank fills; a cut during compaction keeps the old bank', async (t) => {
  const f = new Flash(4 * SECTOR_SIZE);
  const part = { offset: 0, size: 2 * SECTOR_SIZE };
  const nvs = new Nvs(f, part);
  for (let i = 0; i < 200; i++) nvs.put(i % 3, Buffer.from(`value ${i}`.padEnd(40, '.')));
  t.ok(nvs.compactions > 0, 'compacted');
  const reloaded = new Nvs(f, part);
  t.equal(reloaded.get(1)?.toString().trimEnd().replace(/\.+$/, ''), 'value 199');
  // Cut in the middle of every operation of the next put, one at a time: never lose the old value.
  for (let at = 1; at <= 6; at++) {
    const n = new Nvs(f, part);
    const before = n.get(0)?.toString();
    f.armPowerCut({ at, mode: 'torn', fraction: 0.5 });
    let cut = false;
    try {
      for (let i = 0; i < 100; i++) n.put(0, Buffer.from(`cut ${at} ${i}`.padEnd(40, '.')));
    } catch (err) {
      if (!(err instanceof PowerCut)) throw err;
      cut = true;
    }
    f.disarm();
    const v = new Nvs(f, part).get(0)?.toString();
    t.ok(cut, `cut at ${at}`);
    t.ok(v !== undefined && (v === before || v.startsWith(`cut ${at} `)), `value intact after cut at ${at}`);
  }
});

t.test('security counter only goes up and ignores a torn raise', async (t) => {
  const f = new Flash(SECTOR_SIZE);
  const c = new SecurityCounter(f, { offset: 0, size: SECTOR_SIZE });
  t.equal(c.value, 0);
  c.raise(3);
  c.raise(1);
  t.equal(c.value, 3, 'never lowered');
  f.armPowerCut({ at: 1, mode: 'torn', fraction: 0.5 });
  t.throws(() => c.raise(9), PowerCut);
  t.equal(c.value, 3, 'torn raise ignored');
  c.raise(9);
  t.equal(c.value, 9);
});
