import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import aedesPersistence from 'aedes-persistence';

/**
 * The embedded broker's persistence: aedes' in-memory persistence, with retained messages also
 * written to SQLite (`<data-dir>/retained.sqlite`) and loaded back at start-up. Retained releases
 * (manifests, parts) and node statuses then survive a broker or gateway restart without Redis.
 * Sessions, QoS 1/2 in-flight state and wills stay in memory: ferry uses clean sessions and its own
 * resumable transfers, so they carry nothing a restart must keep.
 */
export interface RetainedStore {
  /** Pass as aedes' `persistence` option. */
  persistence: unknown;
  readonly file: string;
  /** Closes the database (after aedes.close()). */
  close(): void;
}

interface StoredPacket {
  topic: string;
  payload: Buffer | string;
  qos: 0 | 1 | 2;
}

export function retainedStore(dataDirOrFile: string): RetainedStore {
  const file = dataDirOrFile.endsWith('.sqlite') ? dataDirOrFile : path.join(dataDirOrFile, 'retained.sqlite');
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  // WAL + NORMAL: a committed write survives a process crash; only a power cut may lose the last ones.
  db.pragma('synchronous = NORMAL');
  db.exec(`CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, payload BLOB NOT NULL, qos INTEGER NOT NULL)`);
  const put = db.prepare(`INSERT OR REPLACE INTO retained (topic, payload, qos) VALUES (?, ?, ?)`);
  const del = db.prepare(`DELETE FROM retained WHERE topic = ?`);
  const all = db.prepare(`SELECT topic, payload, qos FROM retained`);

  // A CommonJS module whose types declare an ES default export: at run time the import is the factory.
  const memory = (aedesPersistence as unknown as () => unknown)() as {
    setup(broker: unknown): Promise<void>;
    storeRetained(packet: StoredPacket, cb?: (err: Error | null) => void): Promise<void> | void;
  };
  const memorySetup = memory.setup.bind(memory);
  const memoryStore = memory.storeRetained.bind(memory);

  // aedes requires setup to be an AsyncFunction (it checks the constructor name).
  memory.setup = async function setup(broker: unknown): Promise<void> {
    await memorySetup(broker);
    for (const row of all.iterate() as Iterable<StoredPacket>) {
      await memoryStore({ cmd: 'publish', topic: row.topic, payload: row.payload, qos: row.qos, retain: true, dup: false } as StoredPacket);
    }
  };
  memory.storeRetained = (packet: StoredPacket, cb?: (err: Error | null) => void) => {
    // The parsed payload is a view into the socket read it came in (up to 64 KiB of other messages,
    // chunks among them); a retained message lives until replaced, so it keeps a copy of its own.
    const own = packet.payload.length === 0 ? packet : { ...packet, payload: ownCopy(packet.payload) };
    try {
      if (own.payload.length === 0) del.run(own.topic);
      else put.run(own.topic, own.payload, own.qos);
    } catch (err) {
      if (cb) return cb(err as Error);
      return Promise.reject(err as Error);
    }
    return memoryStore(own, cb);
  };

  return {
    persistence: memory,
    file,
    close() {
      if (db.open) db.close();
    },
  };
}

function ownCopy(payload: Buffer | string): Buffer {
  if (typeof payload === 'string') return Buffer.from(payload, 'utf8');
  const copy = Buffer.allocUnsafeSlow(payload.length);
  copy.set(payload);
  return copy;
}
