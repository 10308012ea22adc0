import crypto from 'node:crypto';

/**
 * A fresh client secret: 24 random bytes in base64url (32 characters). Never one that begins with
 * `-` or `_`: `--password -x…` would read as a flag, and a leading `_` looks like a typo to a person
 * copying it. Such a draw (1 in 32) is simply discarded and the secret drawn again.
 */
export function newSecret(): string {
  for (;;) {
    const s = crypto.randomBytes(24).toString('base64url');
    if (/^[A-Za-z0-9]/.test(s)) return s;
  }
}
