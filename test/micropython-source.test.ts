import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { loadMicroPython } from '@micropython/micropython-webassembly-pyscript/micropython.mjs';
import { MICROPYTHON_SOURCE } from '../device/micropython-host.js';

/**
 * The package a user copies to the board must be MicroPython, not CPython: every module is compiled
 * and imported by the interpreter itself, and imports only modules an ESP32 build has.
 */
const PKG = path.join(MICROPYTHON_SOURCE, 'ferry_node');
/** Modules of MicroPython's ESP32 port (and micropython-lib's umqtt.simple) the package may use. */
const ON_ESP32 = new Set(['gc', 'time', 'os', 'hashlib', 'binascii', 'json', 'sys', 'esp32', 'machine', 'network', 'umqtt.simple']);

t.test('every module compiles and imports in MicroPython; only the board port needs board modules', async (t) => {
  const out: string[] = [];
  const mp = await loadMicroPython({ stdout: (l) => out.push(l), stderr: (l) => out.push(l) });
  mp.FS.mkdir('/lib');
  mp.FS.mkdir('/lib/ferry_node');
  const files = fs.readdirSync(PKG).filter((f) => f.endsWith('.py'));
  for (const f of files) mp.FS.writeFile(`/lib/ferry_node/${f}`, fs.readFileSync(path.join(PKG, f)));
  mp.runPython("import sys\nsys.path.append('/lib')");
  for (const f of files) {
    const mod = f.replace(/\.py$/, '');
    mp.runPython(`try:\n    import ferry_node.${mod}\n    print('ok ${mod}')\nexcept ImportError as e:\n    print('importerror ${mod}', e)`);
  }
  for (const f of files) {
    const mod = f.replace(/\.py$/, '');
    if (mod === 'port_esp32') t.match(out.find((l) => l.includes(` ${mod}`)), /importerror port_esp32 no module named 'esp32'/, 'the ESP32 port compiles; only the board module is missing here');
    else t.ok(out.includes(`ok ${mod}`), `${mod} imports in MicroPython ${out.find((l) => l.includes(` ${mod} `)) ?? ''}`);
    const imports = [...fs.readFileSync(path.join(PKG, f), 'utf8').matchAll(/^\s*(?:import ([\w.]+)|from ([\w.]+) import)/gm)].map((m) => m[1] ?? m[2]);
    for (const name of imports) if (!name.startsWith('.')) t.ok(ON_ESP32.has(name), `${f} imports ${name}, which MicroPython on ESP32 has`);
  }
});
