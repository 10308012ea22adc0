/**
 * The MicroPython client in real MicroPython (WebAssembly): heap it needs and the cost of checking a
 * manifest signature in pure Python.
 *
 *   node dist/scripts/bench/micropython.js [--image BYTES] [--runs N] [--json]
 *
 * - code: gc.mem_alloc() after importing the whole package (compiled from .py on the heap);
 * - update: one node takes a full update (4 KiB chunks) from the real agent over aedes; peak is the
 *   highest gc.mem_alloc() at the end of a runner step (what was alive before the step plus all it
 *   allocated: the WebAssembly build collects only between steps, so this bounds what a 64 KiB heap
 *   must hold);
 * - verify: manifest.verify (COSE_Sign1 + Ed25519 + SHA-512 in Python) stepped as the runner steps
 *   it (a collection between steps) and in one call, beside Node's native verify in the same run.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { verify as nativeVerify } from 'node:crypto';
import { loadMicroPython } from '@micropython/micropython-webassembly-pyscript/micropython.mjs';
import { makeWorld } from '../../test/helpers/world.js';
import { MicroPythonNode, MICROPYTHON_SOURCE } from '../../device/micropython-host.js';
import { demoImage } from '../../harness/images.js';
import { generateOperatorKey, sha256, signManifest } from '../../shared/manifest.js';
import { encodeCbor, decodeCbor } from '../../shared/cbor.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: number) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : dflt;
};
const json = args.includes('--json');
const imageSize = opt('image', 256 * 1024);
const runs = opt('runs', 5);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function verifyFigures() {
  const key = generateOperatorKey();
  const image = demoImage('bench', '1.1.0', 1024);
  const blob = signManifest({ hw: 'bench', version: '1.1.0', securityVersion: 0, size: image.length, digest: sha256(image), created: 1, flags: 0 }, key.privateKey);
  const raw = key.publicKey.export({ format: 'der', type: 'spki' }).subarray(-32);
  const mp = await loadMicroPython({ stdout: () => {} });
  mp.FS.mkdir('/lib');
  mp.FS.mkdir('/lib/ferry_node');
  const pkg = path.join(MICROPYTHON_SOURCE, 'ferry_node');
  for (const f of fs.readdirSync(pkg)) if (f.endsWith('.py')) mp.FS.writeFile(`/lib/ferry_node/${f}`, fs.readFileSync(path.join(pkg, f)));
  mp.FS.writeFile('/blob', blob);
  mp.FS.writeFile('/key', raw);
  mp.runPython("import sys, gc, time\nsys.path.append('/lib')\ngc.collect()");
  mp.runPython('base = gc.mem_alloc()');
  mp.runPython('from ferry_node import cbor, errors, store, transfer, manifest, ed25519, lifecycle, node, runner, config');
  mp.runPython('gc.collect()');
  mp.runPython('code = gc.mem_alloc() - base');
  const code = mp.globals.get('code') as number;
  mp.runPython(`
blob = open('/blob', 'rb').read()
key = open('/key', 'rb').read()
def start():
    global g
    g = manifest.verify(blob, [key])
def step():
    gc.collect()
    a = gc.mem_alloc()
    try:
        next(g)
    except StopIteration as e:
        return -1
    return gc.mem_alloc() - a
def whole():
    t = time.ticks_ms()
    for _ in manifest.verify(blob, [key]):
        pass
    return time.ticks_diff(time.ticks_ms(), t)
`);
  const start = mp.globals.get('start') as () => void;
  const step = mp.globals.get('step') as () => number;
  const whole = mp.globals.get('whole') as () => number;
  const stepped: number[] = [];
  const single: number[] = [];
  const native: number[] = [];
  let steps = 0;
  let maxStepGarbage = 0;
  const tbs = encodeCbor(['Signature1', (decodeCbor(blob) as Uint8Array[])[0], Buffer.alloc(0), (decodeCbor(blob) as Uint8Array[])[2]]);
  const sig = (decodeCbor(blob) as Uint8Array[])[3];
  for (let r = 0; r < runs; r++) {
    let t0 = performance.now();
    start();
    steps = 0;
    for (;;) {
      const d = step();
      if (d < 0) break;
      steps++;
      maxStepGarbage = Math.max(maxStepGarbage, d);
    }
    stepped.push(performance.now() - t0);
    single.push(whole());
    t0 = performance.now();
    for (let i = 0; i < 100; i++) nativeVerify(null, tbs, key.publicKey, sig);
    native.push((performance.now() - t0) / 100);
  }
  return { code, steps, maxStepGarbage, steppedMs: median(stepped), singleCallMs: median(single), nativeMs: median(native) };
}

async function updateFigures() {
  const world = await makeWorld();
  const flashDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-bench-mpy-'));
  const node = new MicroPythonNode({
    brokerUrl: world.broker.url, deviceId: 'bench-1', hw: 'bench', version: '1.0.0', trust: [world.key.publicKey], flashDir,
    image: demoImage('bench', '1.0.0', 64 * 1024), slotSize: Math.ceil(imageSize / 4096) * 4096,
  });
  let boot = 0;
  node.once('peak', (b: number) => (boot = b));
  try {
    await node.start();
    await world.until('bench-1', () => true, 'hello');
    const t0 = performance.now();
    await world.publish({ hw: 'bench', version: '1.1.0', size: imageSize });
    const s = await world.until('bench-1', (s) => s.state === 'confirmed', 'confirmed', 300_000);
    return { seconds: (performance.now() - t0) / 1000, chunks: s.total, bootHeap: boot, peakHeap: node.peakHeap };
  } finally {
    await node.stop();
    await world.close();
    fs.rmSync(flashDir, { recursive: true, force: true });
  }
}

/** Bytes one stored chunk allocates inside the client (the received message itself not counted). */
async function perChunkFigures() {
  const mp = await loadMicroPython({ stdout: (l) => process.stderr.write(`${l}\n`) });
  mp.FS.mkdir('/lib');
  mp.FS.mkdir('/lib/ferry_node');
  const pkg = path.join(MICROPYTHON_SOURCE, 'ferry_node');
  for (const f of fs.readdirSync(pkg)) if (f.endsWith('.py')) mp.FS.writeFile(`/lib/ferry_node/${f}`, fs.readFileSync(path.join(pkg, f)));
  mp.runPython(`
import sys, gc
sys.path.append('/lib')
from ferry_node.node import Node
from ferry_node.transfer import Download
from ferry_node import cbor
class Slot:
    # RAM slot with esp32.Partition's block protocol
    def __init__(self, blocks):
        self.mem = bytearray(blocks * 4096)
        self.mv = memoryview(self.mem)
    def readblocks(self, b, buf, off=0):
        buf[:] = self.mv[b * 4096 + off:b * 4096 + off + len(buf)]
    def writeblocks(self, b, buf, off=0):
        self.mv[b * 4096 + off:b * 4096 + off + len(buf)] = buf
    def ioctl(self, op, arg):
        return 64 if op == 4 else 4096 if op == 5 else 0
class Port:
    def running_slot(self): return 0
    def partition(self, slot): return SLOT
    def ticks_ms(self): return 0
SLOT = Slot(64)
n = Node(Port(), {'id': 'b', 'hw': 'b', 'version': '1.0.0', 'keys': [], 'dir': '/st', 'window': 1024, 'save_every': 1000})
n.boot()
n.download = Download.begin(n.store, 1, SLOT, {1: 5, 2: 0, 3: 64 * 4096, 4: 4096, 5: bytes(32), 6: None, 7: b''}, 1000)
msgs = [cbor.encode({0: 17, 1: 5, 2: i, 3: bytes(4096)}) for i in range(8)]
def one(i):
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    n.on_message(n.topic_dn, msgs[i])
    d = gc.mem_alloc() - a
    gc.enable()
    return d
`);
  const one = mp.globals.get('one') as (i: number) => number;
  const per: number[] = [];
  for (let i = 0; i < 8; i++) per.push(one(i));
  return Math.max(...per.slice(1));
}

const v = await verifyFigures();
const perChunk = await perChunkFigures();
const u = await updateFigures();
if (json) process.stdout.write(`${JSON.stringify({ verify: v, perChunkBytes: perChunk, update: { imageSize, ...u } })}\n`);
else {
  const kb = (b: number) => `${(b / 1024).toFixed(1)} KiB`;
  console.log(`MicroPython client (MicroPython 1.27 WebAssembly, ${runs} runs, medians)`);
  console.log(`code on the heap        ${kb(v.code)} (the package imported from .py)`);
  console.log(`full update            ${kb(imageSize)} in ${u.chunks} chunks of 4 KiB, ${u.seconds.toFixed(1)} s to confirmed`);
  console.log(`peak heap              ${u.peakHeap} B (${kb(u.peakHeap)}; ${u.peakHeap <= 65536 ? 'within' : 'OVER'} 64 KiB), first step after boot ${kb(u.bootHeap)}`);
  console.log(`per chunk              ${perChunk} B allocated by the client per stored 4 KiB chunk (beyond the message)`);
  console.log(`manifest verify        stepped ${v.steppedMs.toFixed(1)} ms in ${v.steps} steps (max ${kb(v.maxStepGarbage)} garbage per step), one call ${v.singleCallMs} ms`);
  console.log(`native (Node) verify   ${v.nativeMs.toFixed(3)} ms: pure Python is ${(v.singleCallMs / v.nativeMs).toFixed(0)}x slower here`);
}
process.exit(0);
