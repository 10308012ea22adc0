import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { decode as cborgDecode } from 'cborg';
import { loadMicroPython } from '@micropython/micropython-webassembly-pyscript/micropython.mjs';
import { MICROPYTHON_SOURCE } from '../device/micropython-host.js';
import { encodeCbor } from '../shared/cbor.js';

/**
 * The MicroPython client's CBOR (ferry_node/cbor.py) in MicroPython: what it writes is what ferry's
 * encoder writes for the same value, byte for byte, and a strict second decoder (cborg) reads it;
 * what it refuses is everything outside the protocol's subset, each with reason malformed.
 */
t.test('the MicroPython CBOR subset: same bytes as ferry, refusals named', async (t) => {
  const lines: string[] = [];
  const mp = await loadMicroPython({ stdout: (l) => lines.push(l), stderr: (l) => lines.push(l) });
  mp.FS.mkdir('/lib');
  mp.FS.mkdir('/lib/ferry_node');
  const pkg = path.join(MICROPYTHON_SOURCE, 'ferry_node');
  for (const f of fs.readdirSync(pkg)) if (f.endsWith('.py')) mp.FS.writeFile(`/lib/ferry_node/${f}`, fs.readFileSync(path.join(pkg, f)));
  mp.runPython("import sys\nsys.path.append('/lib')\nfrom ferry_node import cbor\nfrom ferry_node.errors import Refused");

  const value = new Map<number, unknown>([[0, 2], [1, 4294967295], [2, 23], [3, 24], [4, 255], [5, 256], [6, 65536], [7, Buffer.from('abc')], [8, 'héllo'], [9, [1, -8, -300, null, true, false]], [10, new Map([[1, Buffer.alloc(0)]])]]);
  mp.runPython(`v = {0: 2, 1: 4294967295, 2: 23, 3: 24, 4: 255, 5: 256, 6: 65536, 7: b'abc', 8: 'h\\u00e9llo', 9: [1, -8, -300, None, True, False], 10: {1: b''}}
open('/enc', 'wb').write(cbor.encode(v))
print('round', cbor.decode_all(cbor.encode(v)) == v)`);
  const enc = Buffer.from(mp.FS.readFile('/enc'));
  t.ok(enc.equals(encodeCbor(value)), `MicroPython encodes as ferry does (${enc.toString('hex')})`);
  t.doesNotThrow(() => cborgDecode(enc, { useMaps: true, strict: true }), 'strict cborg reads it');
  t.ok(lines.includes('round True'), 'and decodes it back');

  const refused: [string, string][] = [
    ['a tag', 'd82a01'],
    ['indefinite array', '9f01ff'],
    ['float', 'fa3f800000'],
    ['simple value 16', 'f0'],
    ['text map key', 'a1616101'],
    ['truncated', '5a00001000'],
    ['trailing bytes', '0101'],
    ['nested too deep', '818181818101'],
    ['map longer than the message', 'bb00000000ffffffff'],
  ];
  for (const [what, hex] of refused) {
    lines.length = 0;
    mp.runPython(`try:\n    cbor.decode_all(bytes.fromhex('${hex}'))\n    print('accepted')\nexcept Refused as e:\n    print('refused', e.reason, e.detail)`);
    t.match(lines[0], /^refused 1 /, `${what} is refused as malformed: ${lines[0]}`);
  }
});
