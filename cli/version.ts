import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * ferry's own version, from the package.json it ships with (dist/cli/version.js sits two levels
 * below it). Read at call time: `ferry --version` is the only user, and a copy in code would drift.
 */
export function ferryVersion(): string {
  const file = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../package.json');
  const pkg = JSON.parse(fs.readFileSync(file, 'utf8')) as { version?: unknown };
  if (typeof pkg.version !== 'string') throw new Error(`${file} has no version field`);
  return pkg.version;
}
