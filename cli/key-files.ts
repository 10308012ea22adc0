import fs from 'node:fs';
import type { KeyObject } from 'node:crypto';
import { loadPrivateKey, loadPublicKey } from '../shared/manifest.js';

/**
 * Reading files named on the command line, and the operator's key files in particular. Each failure
 * is one line that names the flag, the file and what is wrong with it (not an OpenSSL decoder error,
 * and never a private key silently taken as a trust anchor: Node derives the public half from it).
 */

const FILE_ERRORS: Record<string, string> = {
  ENOENT: 'no such file',
  EACCES: 'permission denied',
  EPERM: 'permission denied',
  EISDIR: 'is a directory, not a file',
  ENOTDIR: 'no such file (a part of the path is not a directory)',
  ELOOP: 'too many symbolic links',
  EROFS: 'read-only file system',
  ENOSPC: 'no space left on the device',
};

/** The words for a failed file operation: "no such file", "permission denied", … */
export function fileProblem(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return (e.code && FILE_ERRORS[e.code]) ?? e.code ?? e.message;
}

/** The file's bytes, or an error `<what> <file>: no such file` (what: a flag like --trust, or a noun). */
export function readFileOrFail(file: string, what: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new Error(`${what} ${file}: ${fileProblem(err)}`);
  }
}

type PemKind = 'private' | 'public' | 'certificate' | 'other' | 'none';

/** What a PEM file holds, from its first BEGIN line. */
export function pemKind(text: string): PemKind {
  const m = /-----BEGIN ([A-Z0-9 ]+)-----/.exec(text);
  if (!m) return 'none';
  if (/PRIVATE KEY$/.test(m[1])) return 'private';
  if (/PUBLIC KEY$/.test(m[1])) return 'public';
  if (m[1] === 'CERTIFICATE') return 'certificate';
  return 'other';
}

/** The operator's Ed25519 private key (from `ferry keygen`), given as `flag`. */
export function readOperatorKey(file: string, flag = '--key'): KeyObject {
  const pem = readFileOrFail(file, flag);
  const kind = pemKind(pem.toString('latin1'));
  if (kind === 'public') throw new Error(`${flag} ${file} is a public key; give the operator's private key (operator.key from ferry keygen)`);
  if (kind !== 'private') throw new Error(`${flag} ${file} is not a PEM private key (operator.key from ferry keygen)`);
  try {
    return loadPrivateKey(pem);
  } catch (err) {
    throw new Error(`${flag} ${file}: ${keyProblem(err)}`);
  }
}

/** Operator public keys (trust anchors) given as `flag`, once or repeated. */
export function readTrustKeys(files: string | string[] | undefined, flag = '--trust'): KeyObject[] {
  const list = files === undefined ? [] : Array.isArray(files) ? files : [files];
  return list.map((file) => {
    const pem = readFileOrFail(file, flag);
    const kind = pemKind(pem.toString('latin1'));
    if (kind === 'private') throw new Error(`${flag} ${file} is a private key; give the operator's public key (operator.pub)`);
    if (kind !== 'public') throw new Error(`${flag} ${file} is not a PEM public key (operator.pub from ferry keygen)`);
    try {
      return loadPublicKey(pem);
    } catch (err) {
      throw new Error(`${flag} ${file}: ${keyProblem(err)}`);
    }
  });
}

/** OpenSSL's decoder messages say nothing to a user; the key-type check in shared/manifest does. */
function keyProblem(err: unknown): string {
  const msg = (err as Error).message;
  return /DECODER|asn1|unsupported/i.test(msg) ? 'the PEM block is damaged or not a key ferry can read' : msg;
}
