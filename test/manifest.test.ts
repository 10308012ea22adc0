import t from 'tap';
import { encodeCbor, decodeCbor } from '../shared/cbor.js';
import { Reason, ProtocolError } from '../shared/errors.js';
import { generateOperatorKey, peekManifest, sha256, signManifest, verifyManifest, type Manifest } from '../shared/manifest.js';
import { compareVersions } from '../shared/version.js';

const operator = generateOperatorKey();
const other = generateOperatorKey();
const image = Buffer.from('firmware image bytes');
const manifest: Manifest = { hw: 'esp32', version: '1.2.3', securityVersion: 4, size: image.length, digest: sha256(image), created: 1_700_000_000, flags: 0 };

function reasonOf(f: () => unknown): number | undefined {
  try {
    f();
    return undefined;
  } catch (err) {
    return err instanceof ProtocolError ? err.reason : -1;
  }
}

t.test('sign then verify returns the manifest', async (t) => {
  const bytes = signManifest(manifest, operator.privateKey);
  t.ok(bytes.length < 300, `manifest is ${bytes.length} bytes`);
  t.same(verifyManifest(bytes, [operator.publicKey]), manifest);
  t.same(peekManifest(bytes), manifest);
  t.same(verifyManifest(bytes, [other.publicKey, operator.publicKey]), manifest, 'any trusted key works');
});

t.test('COSE_Sign1 shape: untagged array of 4, alg EdDSA in the protected header', async (t) => {
  const bytes = signManifest(manifest, operator.privateKey);
  t.equal(bytes[0], 0x84, 'array(4), no tag 18 in front');
  const [prot, unprot, , sig] = decodeCbor(bytes) as [Buffer, Map<number, unknown>, Buffer, Buffer];
  t.same(decodeCbor(prot), new Map([[1, -8]]));
  t.equal((unprot.get(4) as Buffer).length, 8, 'kid is 8 bytes');
  t.equal(sig.length, 64);
});

t.test('any change between operator and node is detected', async (t) => {
  const bytes = signManifest(manifest, operator.privateKey);
  t.equal(reasonOf(() => verifyManifest(bytes, [other.publicKey])), Reason.unknownKey, 'wrong key (kid mismatch)');
  const [prot, unprot, payload, sig] = decodeCbor(bytes) as [Buffer, Map<number, unknown>, Buffer, Buffer];
  const forged = peekManifest(bytes);
  forged.version = '9.9.9';
  const forgedBody = decodeCbor(payload) as Map<number, unknown>;
  forgedBody.set(3, '9.9.9');
  t.equal(reasonOf(() => verifyManifest(encodeCbor([prot, unprot, encodeCbor(forgedBody), sig]), [operator.publicKey])), Reason.badSignature, 'payload edited');
  const flipped = Buffer.from(sig);
  flipped[5] ^= 1;
  t.equal(reasonOf(() => verifyManifest(encodeCbor([prot, unprot, payload, flipped]), [operator.publicKey])), Reason.badSignature, 'signature bit flipped');
  t.equal(reasonOf(() => verifyManifest(encodeCbor([prot, new Map(), payload, sig]), [other.publicKey])), Reason.badSignature, 'kid stripped, other key');
  t.equal(reasonOf(() => verifyManifest(encodeCbor([encodeCbor(new Map([[1, -7]])), unprot, payload, sig]), [operator.publicKey])), Reason.badSignature, 'alg swapped');
  t.equal(reasonOf(() => verifyManifest(Buffer.from([0x84, 0x40]), [operator.publicKey])), Reason.malformed, 'truncated');
  t.equal(reasonOf(() => verifyManifest(Buffer.alloc(2000, 0x40), [operator.publicKey])), Reason.oversize, 'oversize');
  // A gateway re-signing with its own key is not trusted by the node.
  t.equal(reasonOf(() => verifyManifest(signManifest({ ...manifest, version: '9.9.9' }, other.privateKey), [operator.publicKey])), Reason.unknownKey);
});

t.test('signing refuses invalid manifests', async (t) => {
  t.throws(() => signManifest({ ...manifest, hw: 'bad/hw' }, operator.privateKey), /hardware class/);
  t.throws(() => signManifest({ ...manifest, version: 'v1' }, operator.privateKey), /not a version/);
  t.throws(() => signManifest({ ...manifest, size: 0 }, operator.privateKey), /image size/);
  t.throws(() => signManifest({ ...manifest, securityVersion: -1 }, operator.privateKey), /security version/);
});

t.test('semantic version precedence', async (t) => {
  t.ok(compareVersions('1.10.0', '1.9.9') > 0);
  t.ok(compareVersions('1.0.0', '1.0.0-rc.1') > 0);
  t.ok(compareVersions('1.0.0-rc.2', '1.0.0-rc.10') < 0);
  t.ok(compareVersions('1.0.0-alpha', '1.0.0-beta') < 0);
  t.equal(compareVersions('2.3.4', '2.3.4'), 0);
  t.ok(compareVersions('garbage', '0.0.1') < 0);
});
