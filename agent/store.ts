import Database from 'better-sqlite3';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import type { NodeRow, RefusalKind, ReleaseRow } from './types.js';

/**
 * The agent's durable state, in SQLite under the data dir. WAL mode with synchronous=NORMAL:
 * a kill -9 loses at most the last few transactions, never corrupts the file, and the node is the
 * source of truth for what it holds anyway (its Hello carries its bitmap). So bitmaps are written
 * coarsely; stage changes are written at once.
 *
 * Group commit: the writes of one event-loop turn share a transaction, committed right after the
 * turn (setImmediate). A commit costs some 15 times a write, and one message often writes several
 * rows (a state change is an event and a node row); a crash loses at most that turn's writes.
 */
const SCHEMA = `
CREATE TABLE IF NOT EXISTS releases (
  id TEXT PRIMARY KEY,
  hw TEXT NOT NULL,
  version TEXT NOT NULL,
  security_version INTEGER NOT NULL,
  size INTEGER NOT NULL,
  digest BLOB NOT NULL,
  manifest BLOB NOT NULL,
  flags INTEGER NOT NULL DEFAULT 0,
  received_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS releases_hw ON releases(hw);
CREATE TABLE IF NOT EXISTS nodes (
  id TEXT PRIMARY KEY,
  hw TEXT NOT NULL,
  running_version TEXT NOT NULL,
  running_digest BLOB,
  security_version INTEGER NOT NULL DEFAULT 0,
  slot INTEGER NOT NULL DEFAULT 0,
  image_state INTEGER NOT NULL DEFAULT 5,
  caps INTEGER NOT NULL DEFAULT 0,
  max_message INTEGER NOT NULL DEFAULT 0,
  window INTEGER NOT NULL DEFAULT 1,
  state TEXT NOT NULL DEFAULT 'idle',
  target_release TEXT,
  session INTEGER,
  chunk_size INTEGER NOT NULL DEFAULT 0,
  chunk_count INTEGER NOT NULL DEFAULT 0,
  bitmap BLOB,
  payload_encoding INTEGER NOT NULL DEFAULT 0,
  acks INTEGER NOT NULL DEFAULT 0,
  attempts INTEGER NOT NULL DEFAULT 0,
  retransmits INTEGER NOT NULL DEFAULT 0,
  bytes_sent INTEGER NOT NULL DEFAULT 0,
  reason INTEGER NOT NULL DEFAULT 0,
  detail TEXT NOT NULL DEFAULT '',
  stage_deadline INTEGER,
  last_seen INTEGER NOT NULL DEFAULT 0,
  offer_id INTEGER NOT NULL DEFAULT 0,
  next_release TEXT,
  updated_at INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS refusals (
  node TEXT NOT NULL,
  release TEXT NOT NULL,
  kind TEXT NOT NULL,
  at INTEGER NOT NULL,
  PRIMARY KEY (node, release, kind)
);
CREATE TABLE IF NOT EXISTS withdrawals (
  hw TEXT NOT NULL,
  version TEXT NOT NULL,
  at INTEGER NOT NULL,
  PRIMARY KEY (hw, version)
);
CREATE TABLE IF NOT EXISTS rollouts (
  id TEXT PRIMARY KEY,
  doc BLOB NOT NULL,
  state TEXT NOT NULL,
  updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  at INTEGER NOT NULL,
  node TEXT,
  kind TEXT NOT NULL,
  detail TEXT NOT NULL DEFAULT ''
);
`;

const NODE_COLUMNS: [keyof NodeRow, string][] = [
  ['id', 'id'], ['hw', 'hw'], ['runningVersion', 'running_version'], ['runningDigest', 'running_digest'],
  ['securityVersion', 'security_version'], ['slot', 'slot'], ['imageState', 'image_state'], ['caps', 'caps'],
  ['maxMessage', 'max_message'], ['window', 'window'], ['state', 'state'], ['targetRelease', 'target_release'],
  ['session', 'session'], ['chunkSize', 'chunk_size'], ['chunkCount', 'chunk_count'], ['bitmap', 'bitmap'],
  ['payloadEncoding', 'payload_encoding'], ['acks', 'acks'], ['attempts', 'attempts'], ['retransmits', 'retransmits'], ['bytesSent', 'bytes_sent'],
  ['reason', 'reason'], ['detail', 'detail'], ['stageDeadline', 'stage_deadline'], ['lastSeen', 'last_seen'],
  ['offerId', 'offer_id'], ['nextRelease', 'next_release'], ['updatedAt', 'updated_at'], ['rollout', 'rollout'], ['wave', 'wave'],
];

/** Columns added after the first schema: added to an older database on open. */
const ADDED_COLUMNS: [string, string][] = [
  ['offer_id', 'INTEGER NOT NULL DEFAULT 0'],
  ['next_release', 'TEXT'],
  ['rollout', 'TEXT'],
  ['wave', 'INTEGER'],
];

/** Refusals a node keeps, newest last: older ones are forgotten (a bound, not a policy). */
const MAX_REFUSALS_PER_NODE = 16;

/** Keeps at most this many event rows: the log is for diagnosis, not an archive. */
const MAX_EVENTS = 50_000;

export interface StoredEvent {
  /** The row's sequence number: increasing, what history requests page by. */
  seq: number;
  at: number;
  node: string | null;
  kind: string;
  detail: string;
}

/** Emits every event row as it is written: what tests and live tools wait on instead of polling. */
export class AgentStore extends EventEmitter<{ event: [StoredEvent] }> {
  readonly db: Database.Database;
  readonly imagesDir: string;
  private readonly upsertNode: Database.Statement;
  private readonly insertEvent: Database.Statement;
  private eventsSinceTrim = 0;
  /** SQLite statements that wrote, since open: the wear and I/O figure of the agent's state. */
  writes = 0;
  /** Transactions committed (each a WAL append): what the writes cost in I/O. */
  commits = 0;
  private commitScheduled = false;

  constructor(dataDir: string) {
    super();
    fs.mkdirSync(dataDir, { recursive: true });
    this.imagesDir = path.join(dataDir, 'images');
    fs.mkdirSync(this.imagesDir, { recursive: true });
    this.db = new Database(path.join(dataDir, 'agent.db'));
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    this.db.pragma('busy_timeout = 2000');
    this.db.exec(SCHEMA);
    this.migrate();
    const cols = NODE_COLUMNS.map(([, c]) => c);
    this.upsertNode = this.db.prepare(
      `INSERT INTO nodes (${cols.join(',')}) VALUES (${NODE_COLUMNS.map(([k]) => '@' + k).join(',')})
       ON CONFLICT(id) DO UPDATE SET ${cols.filter((c) => c !== 'id').map((c) => `${c}=excluded.${c}`).join(',')}`,
    );
    this.insertEvent = this.db.prepare('INSERT INTO events (at, node, kind, detail) VALUES (?, ?, ?, ?)');
    this.removeStrayTempImages();
  }

  /** Older databases: add new columns; move the old comma-separated `refused` column into the refusals table. */
  private migrate(): void {
    const have = new Set((this.db.prepare('PRAGMA table_info(nodes)').all() as { name: string }[]).map((c) => c.name));
    for (const [name, decl] of ADDED_COLUMNS) if (!have.has(name)) this.db.exec(`ALTER TABLE nodes ADD COLUMN ${name} ${decl}`);
    if (!have.has('refused')) return;
    const rows = this.db.prepare("SELECT id, refused FROM nodes WHERE refused != ''").all() as { id: string; refused: string }[];
    const move = this.db.transaction(() => {
      for (const r of rows) {
        for (const item of r.refused.split(',').filter(Boolean)) {
          const delta = item.startsWith('full:');
          this.addRefusal(r.id, delta ? item.slice(5) : item, delta ? 'delta' : 'release');
        }
      }
      this.db.exec("UPDATE nodes SET refused = ''");
    });
    move();
  }

  /** Remembers that a node refused (or rolled back from) a release, or could not use a delta of it. */
  addRefusal(node: string, release: string, kind: RefusalKind): void {
    this.db.prepare('INSERT OR REPLACE INTO refusals (node, release, kind, at) VALUES (?, ?, ?, ?)').run(node, release, kind, Date.now());
    this.db
      .prepare('DELETE FROM refusals WHERE node = ? AND rowid NOT IN (SELECT rowid FROM refusals WHERE node = ? ORDER BY at DESC, rowid DESC LIMIT ?)')
      .run(node, node, MAX_REFUSALS_PER_NODE);
  }

  refusals(node: string): { release: string; kind: RefusalKind }[] {
    return this.db.prepare('SELECT release, kind FROM refusals WHERE node = ? ORDER BY at, rowid').all(node) as { release: string; kind: RefusalKind }[];
  }

  /**
   * Remembers (or forgets) an operator's withdrawal of hw/version: honoured from the agent's start,
   * before the retained marker is delivered again. Keyed by hw/version, not release id: a marker may
   * name a release the agent does not hold yet.
   */
  setWithdrawal(hw: string, version: string, on: boolean): void {
    this.beginWrite();
    if (on) this.db.prepare('INSERT OR REPLACE INTO withdrawals (hw, version, at) VALUES (?, ?, ?)').run(hw, version, Date.now());
    else this.db.prepare('DELETE FROM withdrawals WHERE hw = ? AND version = ?').run(hw, version);
  }

  withdrawals(): { hw: string; version: string }[] {
    return this.db.prepare('SELECT hw, version FROM withdrawals ORDER BY hw, version').all() as { hw: string; version: string }[];
  }

  /** Half-written image files from a crash mid-save are garbage: the release is fetched again. */
  private removeStrayTempImages(): void {
    for (const f of fs.readdirSync(this.imagesDir)) if (f.endsWith('.tmp')) fs.rmSync(path.join(this.imagesDir, f), { force: true });
  }

  close(): void {
    this.commit();
    this.db.close();
  }

  /** Opens the turn's transaction before a write; the commit follows after the turn. */
  private beginWrite(): void {
    this.writes++;
    if (this.db.inTransaction) return;
    this.db.exec('BEGIN');
    if (!this.commitScheduled) {
      this.commitScheduled = true;
      setImmediate(() => this.commit());
    }
  }

  /** Commits the open write transaction, if any (also before close). */
  commit(): void {
    this.commitScheduled = false;
    if (!this.db.open || !this.db.inTransaction) return;
    this.db.exec('COMMIT');
    this.commits++;
  }

  imagePath(digest: Buffer): string {
    return path.join(this.imagesDir, `${digest.toString('hex')}.bin`);
  }

  /** Writes the image durably (temp file, fsync, rename), then records the release. */
  saveRelease(row: ReleaseRow, image: Buffer): void {
    const final = this.imagePath(row.digest);
    if (!fs.existsSync(final)) {
      const tmp = `${final}.${process.pid}.tmp`;
      const fd = fs.openSync(tmp, 'w');
      try {
        fs.writeSync(fd, image);
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      fs.renameSync(tmp, final);
    }
    this.beginWrite();
    this.db
      .prepare(
        `INSERT OR IGNORE INTO releases (id, hw, version, security_version, size, digest, manifest, flags, received_at)
         VALUES (@id, @hw, @version, @securityVersion, @size, @digest, @manifest, @flags, @receivedAt)`,
      )
      .run(row);
  }

  hasRelease(id: string): boolean {
    return this.db.prepare('SELECT 1 FROM releases WHERE id = ?').get(id) !== undefined;
  }

  releases(): ReleaseRow[] {
    return (this.db.prepare('SELECT * FROM releases').all() as Record<string, unknown>[]).map(toRelease);
  }

  loadImage(row: ReleaseRow): Buffer | undefined {
    try {
      return fs.readFileSync(this.imagePath(row.digest));
    } catch {
      return undefined;
    }
  }

  saveNode(row: NodeRow): void {
    this.beginWrite();
    this.upsertNode.run(row);
  }

  /** Stores a rollout: its signed document and this agent's state of it (JSON). */
  saveRollout(id: string, doc: Buffer, state: string): void {
    this.beginWrite();
    this.db.prepare('INSERT OR REPLACE INTO rollouts (id, doc, state, updated_at) VALUES (?, ?, ?, ?)').run(id, doc, state, Date.now());
  }

  rollouts(): { id: string; doc: Buffer; state: string }[] {
    return this.db.prepare('SELECT id, doc, state FROM rollouts ORDER BY id').all() as { id: string; doc: Buffer; state: string }[];
  }

  nodes(): NodeRow[] {
    return (this.db.prepare('SELECT * FROM nodes ORDER BY id').all() as Record<string, unknown>[]).map(toNode);
  }

  event(node: string | null, kind: string, detail = ''): void {
    const at = Date.now();
    this.beginWrite();
    const seq = Number(this.insertEvent.run(at, node, kind, detail).lastInsertRowid);
    if (this.listenerCount('event') > 0) this.emit('event', { seq, at, node, kind, detail });
    if (++this.eventsSinceTrim >= 1000) {
      this.eventsSinceTrim = 0;
      this.db.prepare('DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - ?').run(MAX_EVENTS);
    }
  }

  /** Events newest first: of one node or all, only those before `before` (a seq) when given. */
  eventPage(node: string | undefined, before: number | undefined, limit: number): StoredEvent[] {
    const where = [node !== undefined ? 'node = @node' : '', before !== undefined ? 'seq < @before' : ''].filter(Boolean);
    const sql = `SELECT seq, at, node, kind, detail FROM events ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY seq DESC LIMIT @limit`;
    return this.db.prepare(sql).all({ node, before, limit }) as StoredEvent[];
  }

  events(node?: string, limit = 100): { at: number; node: string | null; kind: string; detail: string }[] {
    const sql = node
      ? 'SELECT at, node, kind, detail FROM events WHERE node = ? ORDER BY seq DESC LIMIT ?'
      : 'SELECT at, node, kind, detail FROM events ORDER BY seq DESC LIMIT ?';
    const args = node ? [node, limit] : [limit];
    return this.db.prepare(sql).all(...args) as { at: number; node: string | null; kind: string; detail: string }[];
  }
}

function toRelease(r: Record<string, unknown>): ReleaseRow {
  return {
    id: r.id as string,
    hw: r.hw as string,
    version: r.version as string,
    securityVersion: r.security_version as number,
    size: r.size as number,
    digest: r.digest as Buffer,
    manifest: r.manifest as Buffer,
    flags: r.flags as number,
    receivedAt: r.received_at as number,
  };
}

function toNode(r: Record<string, unknown>): NodeRow {
  const out: Record<string, unknown> = {};
  for (const [k, c] of NODE_COLUMNS) out[k] = r[c];
  return out as unknown as NodeRow;
}
