import fs from 'node:fs';
import path from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import { loadMicroPython, type EmscriptenStream } from '@micropython/micropython-webassembly-pyscript/micropython.mjs';
import { Ctl, Exit, ringRead, type WorkerConfig, type WorkerEvent } from './micropython-link.js';

/**
 * One boot of a MicroPython node: real MicroPython (WebAssembly) running the client's own .py
 * source with the host port (node/micropython/host). The board's flash is a directory: it is
 * copied into the interpreter's /flash at boot and every write, rename and removal under /flash is
 * mirrored to it synchronously, so terminating this thread at any moment is a power cut that keeps
 * exactly what was written. A seeded cut (cutAtFlashOp) tears that write in half first.
 */
const cfg = workerData as WorkerConfig;
const ctl = new Int32Array(cfg.ctl);
const ring = new Uint8Array(cfg.ring);
const post = (e: WorkerEvent) => parentPort!.postMessage(e);
const O_CREAT = 0o100;
const O_TRUNC = 0o1000;

const mp = await loadMicroPython({ heapsize: 64 * 1024, stdout: (line) => post({ t: 'log', line }), stderr: (line) => post({ t: 'log', line }) });
const FS = mp.FS;

function copyIn(hostDir: string, mpDir: string): void {
  for (const name of fs.readdirSync(hostDir)) {
    const from = path.join(hostDir, name);
    const to = `${mpDir}/${name}`;
    if (fs.statSync(from).isDirectory()) {
      FS.mkdir(to);
      copyIn(from, to);
    } else FS.writeFile(to, fs.readFileSync(from));
  }
}

FS.mkdir('/flash');
copyIn(cfg.flashDir, '/flash');
FS.mkdir('/io');
FS.mkdir('/lib');
for (const dir of cfg.libDirs) {
  const name = path.basename(dir);
  const dest = name === 'host' ? '/lib' : `/lib/${name}`;
  if (dest !== '/lib') FS.mkdir(dest);
  for (const f of fs.readdirSync(dir)) if (f.endsWith('.py')) FS.writeFile(`${dest}/${f}`, fs.readFileSync(path.join(dir, f)));
}

// ---- flash mirror and power cuts ---------------------------------------------------------------
const host = (p: string): string | undefined => (p.startsWith('/flash/') ? path.join(cfg.flashDir, p.slice('/flash/'.length)) : undefined);
let flashOps = 0;

function powerCut(): never {
  post({ t: 'flashOps', count: flashOps });
  process.exit(Exit.powerCut);
}

/** Counts a flash operation; true when this one is the seeded cut. */
function flashOp(): boolean {
  flashOps++;
  if (Atomics.load(ctl, Ctl.cut)) powerCut();
  if (Atomics.load(ctl, Ctl.cutIn) > 0 && Atomics.sub(ctl, Ctl.cutIn, 1) === 1) return true;
  return cfg.cutAtFlashOp !== undefined && flashOps === cfg.cutAtFlashOp;
}

const { open, write, rename, unlink, mkdir } = FS;
FS.open = function (p, flags, mode) {
  const s = open.call(FS, p, flags, mode);
  const hp = host(s.path);
  if (hp && typeof flags === 'number' && flags & (O_CREAT | O_TRUNC)) {
    if (flashOp()) powerCut();
    if (flags & O_TRUNC || !fs.existsSync(hp)) fs.writeFileSync(hp, '');
  }
  return s;
};
FS.write = function (stream: EmscriptenStream, buffer, offset, length, position, canOwn) {
  const hp = host(stream.path);
  if (!hp) return write.call(FS, stream, buffer, offset, length, position, canOwn);
  const at = typeof position === 'number' ? position : stream.position;
  const torn = flashOp();
  const n = write.call(FS, stream, buffer, offset, torn ? length >> 1 : length, position, canOwn);
  const fd = fs.openSync(hp, 'r+');
  fs.writeSync(fd, Buffer.from(buffer.buffer, buffer.byteOffset + offset, n), 0, n, at);
  fs.closeSync(fd);
  if (torn) powerCut();
  return n;
};
FS.rename = function (from, to) {
  const hf = host(from);
  if (hf && flashOp()) powerCut();
  rename.call(FS, from, to);
  const ht = host(to);
  if (hf && ht) fs.renameSync(hf, ht);
};
FS.unlink = function (p) {
  const hp = host(p);
  if (hp && flashOp()) powerCut();
  unlink.call(FS, p);
  if (hp) fs.rmSync(hp, { force: true });
};
FS.mkdir = function (p, mode) {
  const r = mkdir.call(FS, p, mode);
  const hp = host(p);
  if (hp) fs.mkdirSync(hp, { recursive: true });
  return r;
};

// ---- the host module Python imports as ferry_host ----------------------------------------------
/** Posts a request and waits for the owner's answer: true when it succeeded. */
function request(e: WorkerEvent, ms = 15_000): boolean {
  Atomics.store(ctl, Ctl.reply, 0);
  post(e);
  const deadline = Date.now() + ms;
  while (Atomics.load(ctl, Ctl.reply) === 0 && Date.now() < deadline) Atomics.wait(ctl, Ctl.reply, 0, 50);
  return Atomics.load(ctl, Ctl.reply) === 1;
}

function idle(ms: number): void {
  if (Atomics.load(ctl, Ctl.cut)) powerCut();
  const seq = Atomics.load(ctl, Ctl.rxSeq);
  if (Atomics.load(ctl, Ctl.used) === 0) Atomics.wait(ctl, Ctl.rxSeq, seq, ms);
}

let peak = 0;
const erased = new Uint8Array(4096).fill(0xff);
mp.registerJsModule('ferry_host', {
  running_slot: () => cfg.slot,
  connect: (clientId: string) => (request({ t: 'connect', clientId }) ? 0 : 1),
  subscribe: (topic: string, qos: number) => (request({ t: 'subscribe', topic, qos }) ? 0 : 1),
  publish: (topic: string, qos: number) => {
    if (!Atomics.load(ctl, Ctl.link)) return 1;
    post({ t: 'publish', topic, payload: FS.readFile('/io/tx'), qos });
    return 0;
  },
  /** The next message's topic (its payload is in /io/rx), '' when none is waiting, null when the link is down. */
  recv: () => {
    if (Atomics.load(ctl, Ctl.cut)) powerCut();
    const m = ringRead(ctl, ring);
    if (m) {
      FS.writeFile('/io/rx', m.payload);
      return m.topic;
    }
    return Atomics.load(ctl, Ctl.link) ? '' : null;
  },
  idle,
  disconnect: () => post({ t: 'disconnect' }),
  /** Clean reset: the owner sends what was published, closes the connection, then we stop. */
  reset: () => {
    request({ t: 'reset' });
    process.exit(Exit.reset);
  },
  /** Erases one 4 KiB block of a slot file (a flash operation like any write). */
  erase: (p: string, offset: number) => {
    const s = FS.open(p, 'r+');
    try {
      FS.write(s, erased, 0, erased.length, offset);
    } finally {
      FS.close(s);
    }
  },
  self_test: (version: string) => {
    if (cfg.selfTestHang.includes(version)) process.exit(Exit.watchdog);
    return !cfg.selfTestFail.includes(version);
  },
  app_ok: (version: string) => !cfg.crashAtStart.includes(version),
  report_peak: (bytes: number) => {
    if (bytes > peak) {
      peak = bytes;
      post({ t: 'peak', bytes });
    }
  },
});

try {
  mp.runPython('import host_main\n_step = host_main.boot()');
  const step = mp.globals.get('_step') as () => boolean;
  // The board's Runner.run loop, driven from here: each step returns to JavaScript, where the
  // WebAssembly build runs its deferred garbage collection.
  for (;;) {
    if (!step()) idle(10);
  }
} catch (err) {
  post({ t: 'log', line: `crashed: ${(err as Error).message}` });
  process.exit(Exit.crashed);
}
