import crypto from 'node:crypto';

/**
 * Secrets that passed the KDF recently, so a reconnect does not pay scrypt again: a fleet of nodes
 * that reboot into a new image all log in again within minutes, and each scrypt is ~30 ms of a
 * gateway's CPU.
 *
 * An entry is HMAC-SHA-256(secret) under a random key of this process, filed under the identity's
 * name together with the stored scrypt hash it was checked against: re-keying the identity (a new
 * hash, also by another process) makes the entry useless, and revocation is checked after every
 * verification anyway. Nothing enters the cache but a secret the KDF accepted, so a wrong one always
 * pays the KDF (and the auth guards' back-off), as before. Bounded: the least recently used entries go.
 */
export class VerifiedCache {
  private readonly key = crypto.randomBytes(32);
  private readonly entries = new Map<string, { storedHash: Buffer; tag: Buffer }>();

  constructor(private readonly maxEntries = 10_000) {}

  get size(): number {
    return this.entries.size;
  }

  /** True when this secret was verified against this stored hash before. */
  has(username: string, storedHash: Buffer, secret: Buffer): boolean {
    const e = this.entries.get(username);
    if (!e || !e.storedHash.equals(storedHash)) return false;
    if (!crypto.timingSafeEqual(this.tag(username, secret), e.tag)) return false;
    this.entries.delete(username);
    this.entries.set(username, e); // most recently used last
    return true;
  }

  add(username: string, storedHash: Buffer, secret: Buffer): void {
    this.entries.delete(username);
    this.entries.set(username, { storedHash: Buffer.from(storedHash), tag: this.tag(username, secret) });
    while (this.entries.size > this.maxEntries) this.entries.delete(this.entries.keys().next().value as string);
  }

  private tag(username: string, secret: Buffer): Buffer {
    return crypto.createHmac('sha256', this.key).update(username).update('\0').update(secret).digest();
  }
}
