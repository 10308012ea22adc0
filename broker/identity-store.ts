import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { isDeviceId } from '../shared/topics.js';
import { checkServesEntry, isGroupName, type Role } from './acl.js';
import { threadKdf, type Kdf } from './kdf.js';
import { newSecret } from './secret.js';
import { VerifiedCache } from './verified-cache.js';

/**
 * Identities the broker admits: nodes, agents, operators. Secrets are stored only as scrypt hashes
 * with a per-identity salt and compared in constant time. The store is one SQLite file so the CLI
 * (`ferry devices add`) and a running broker can share it: the broker notices other writers through
 * `PRAGMA data_version` (see {@link IdentityStore.changedSinceLastCheck}).
 */
export const ROLES: readonly Role[] = ['node', 'agent', 'operator'];

export interface Identity {
  username: string;
  role: Role;
  groups: string[];
  serves: string[];
  createdAt: string;
  revokedAt: string | null;
}

export interface AddOptions {
  /** Node: groups it belongs to. */
  groups?: string[];
  /** Agent: device-id globs, `group:NAME`, or `*`. Defaults to `*` (serves every node). */
  serves?: string[];
  /** Use this secret instead of generating one (tests, demos). At least 16 characters. */
  password?: string;
  /** Replace an existing identity of the same name (re-provisioning prints a new secret). */
  replace?: boolean;
}

export interface Credentials {
  username: string;
  password: string;
}

export type VerifyResult = { ok: true; identity: Identity } | { ok: false; reason: string };

/** scrypt cost: N=2^14, r=8 (the interactive-login figure from the scrypt paper), ~30 ms, 16 MiB. */
const SCRYPT = { N: 16384, r: 8, p: 1, maxmem: 64 * 1024 * 1024 } as const;
const HASH_LEN = 32;
const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$/;

interface Row {
  username: string;
  role: Role;
  salt: Buffer;
  hash: Buffer;
  groups: string;
  serves: string;
  created_at: string;
  revoked_at: string | null;
}

export class IdentityStore {
  readonly file: string;
  private readonly db: Database.Database;
  private lastDataVersion: number;
  /** Bumped on our own writes, which data_version does not count (it only counts other connections). */
  private localWrites = 0;
  private seenLocalWrites = 0;
  /**
   * Typical duration of one scrypt here (moving average, ms): an unknown name waits this long instead
   * of burning the KDF, so it answers in about the time a wrong secret takes without costing CPU.
   */
  private scryptMs: number | undefined;
  /** Secrets the KDF accepted lately: a reconnect skips it (broker/verified-cache.ts). */
  private readonly verified = new VerifiedCache();
  private calibration: Promise<void> | undefined;

  /**
   * Opens (creating if needed) `<dataDir>/identities.sqlite`, or the file itself when it ends in .sqlite.
   * `kdf`: where scrypt runs (broker/kdf.ts); the default, one dedicated thread, suits a broker.
   */
  static open(dataDirOrFile: string, opts: { kdf?: Kdf } = {}): IdentityStore {
    const file = dataDirOrFile.endsWith('.sqlite') ? dataDirOrFile : path.join(dataDirOrFile, 'identities.sqlite');
    fs.mkdirSync(path.dirname(file), { recursive: true });
    return new IdentityStore(file, opts.kdf ?? threadKdf);
  }

  private constructor(
    file: string,
    private readonly kdf: Kdf,
  ) {
    this.file = file;
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    // Several processes (CLI, brokers) may write; wait for a lock instead of failing at once.
    this.db.pragma('busy_timeout = 5000');
    this.db.exec(`CREATE TABLE IF NOT EXISTS identities (
      username TEXT PRIMARY KEY,
      role TEXT NOT NULL CHECK (role IN ('node', 'agent', 'operator')),
      salt BLOB NOT NULL,
      hash BLOB NOT NULL,
      groups TEXT NOT NULL DEFAULT '[]',
      serves TEXT NOT NULL DEFAULT '[]',
      created_at TEXT NOT NULL,
      revoked_at TEXT
    )`);
    try {
      fs.chmodSync(file, 0o600);
    } catch {
      // Best effort: the hashes are not secrets, but nobody else needs to read them either.
    }
    this.lastDataVersion = this.dataVersion();
  }

  close(): void {
    this.db.close();
  }

  /** Provisions an identity and returns its credentials: the only time the secret exists in clear. */
  async add(role: Role, username: string, opts: AddOptions = {}): Promise<Credentials> {
    if (!ROLES.includes(role)) throw new Error(`unknown role "${role}": use node, agent or operator`);
    const pattern = role === 'node' ? isDeviceId(username) : NAME_PATTERN.test(username);
    if (!pattern) throw new Error(`${role === "node" ? "device id" : `${role} name`} "${username}" must match [A-Za-z0-9][A-Za-z0-9_.:-]{0,63}`);
    const groups = opts.groups ?? [];
    if (groups.length > 0 && role !== 'node') throw new Error('--group applies to nodes only');
    for (const g of groups) if (!isGroupName(g)) throw new Error(`group "${g}" must match [A-Za-z0-9][A-Za-z0-9_.-]{0,31}`);
    if (opts.serves && role !== 'agent') throw new Error('--serves applies to agents only');
    const serves = role === 'agent' ? (opts.serves && opts.serves.length > 0 ? opts.serves : ['*']) : [];
    for (const s of serves) {
      const problem = checkServesEntry(s);
      if (problem) throw new Error(problem);
    }
    if (opts.password !== undefined && opts.password.length < 16) throw new Error('a given password must be at least 16 characters');
    const existing = this.row(username);
    if (existing && !existing.revoked_at && !opts.replace) throw new Error(`identity "${username}" already exists (${existing.role}); revoke it first or pass replace`);
    const password = opts.password ?? newSecret();
    const salt = crypto.randomBytes(16);
    const hash = await this.timedScrypt(Buffer.from(password, 'utf8'), salt);
    this.db
      .prepare(`INSERT OR REPLACE INTO identities (username, role, salt, hash, groups, serves, created_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)`)
      .run(username, role, salt, hash, JSON.stringify(groups), JSON.stringify(serves), new Date().toISOString());
    this.localWrites++;
    return { username, password };
  }

  /**
   * Checks a username/secret pair. A known name costs one scrypt (none when the same secret passed
   * lately); an unknown one costs none but waits about as long (see scryptMs), so neither timing nor
   * the answer tells which names exist.
   */
  async verify(username: string, password: Buffer | string): Promise<VerifyResult> {
    const row = this.row(username);
    if (!row) {
      await this.calibrated();
      await new Promise((r) => setTimeout(r, this.scryptMs! * (0.9 + Math.random() * 0.2)));
      return { ok: false, reason: `unknown identity "${username}"` };
    }
    const pw = typeof password === 'string' ? Buffer.from(password, 'utf8') : password;
    let match = this.verified.has(username, row.hash, pw);
    if (!match) {
      const got = await this.timedScrypt(pw, row.salt);
      match = got.length === row.hash.length && crypto.timingSafeEqual(got, row.hash);
      if (match && !row.revoked_at) this.verified.add(username, row.hash, pw);
    }
    if (row.revoked_at) return { ok: false, reason: `identity "${username}" was revoked at ${row.revoked_at}` };
    if (!match) return { ok: false, reason: `wrong secret for "${username}"` };
    return { ok: true, identity: toIdentity(row) };
  }

  /** The live (not revoked) identity of that name: used for TLS client certificates, where the CN is the proof. */
  get(username: string): Identity | undefined {
    const row = this.row(username);
    return row && !row.revoked_at ? toIdentity(row) : undefined;
  }

  /** Marks an identity revoked; a running broker disconnects it. Returns false when there was no such live identity. */
  revoke(username: string): boolean {
    const res = this.db.prepare(`UPDATE identities SET revoked_at = ? WHERE username = ? AND revoked_at IS NULL`).run(new Date().toISOString(), username);
    if (res.changes > 0) this.localWrites++;
    return res.changes > 0;
  }

  list(role?: Role): Identity[] {
    const rows = (role
      ? this.db.prepare(`SELECT * FROM identities WHERE role = ? ORDER BY username`).all(role)
      : this.db.prepare(`SELECT * FROM identities ORDER BY role, username`).all()) as Row[];
    return rows.map(toIdentity);
  }

  /** Groups of a live node (empty for unknown ids), for agents that serve `group:NAME`. */
  groupsOf(deviceId: string): string[] {
    const row = this.db.prepare(`SELECT groups FROM identities WHERE username = ? AND role = 'node' AND revoked_at IS NULL`).get(deviceId) as { groups: string } | undefined;
    return row ? (JSON.parse(row.groups) as string[]) : [];
  }

  /** True once after any write since the previous call, by this or another process. */
  changedSinceLastCheck(): boolean {
    const v = this.dataVersion();
    const changed = v !== this.lastDataVersion || this.localWrites !== this.seenLocalWrites;
    this.lastDataVersion = v;
    this.seenLocalWrites = this.localWrites;
    return changed;
  }

  private dataVersion(): number {
    return this.db.pragma('data_version', { simple: true }) as number;
  }

  private row(username: string): Row | undefined {
    return this.db.prepare(`SELECT * FROM identities WHERE username = ?`).get(username) as Row | undefined;
  }

  private async timedScrypt(pw: Buffer, salt: Buffer): Promise<Buffer> {
    const start = performance.now();
    const out = await this.kdf(pw, salt, HASH_LEN, SCRYPT);
    const ms = performance.now() - start;
    this.scryptMs = this.scryptMs === undefined ? ms : this.scryptMs * 0.8 + ms * 0.2;
    return out;
  }

  /** One scrypt of throwaway input, once, when nothing has measured the KDF yet. */
  private calibrated(): Promise<void> {
    if (this.scryptMs !== undefined) return Promise.resolve();
    this.calibration ??= this.timedScrypt(crypto.randomBytes(24), crypto.randomBytes(16)).then(() => {});
    return this.calibration;
  }
}

function toIdentity(r: Row): Identity {
  return {
    username: r.username,
    role: r.role,
    groups: JSON.parse(r.groups) as string[],
    serves: JSON.parse(r.serves) as string[],
    createdAt: r.created_at,
    revokedAt: r.revoked_at,
  };
}
