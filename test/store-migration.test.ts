import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import t from 'tap';
import { AgentStore } from '../agent/store.js';

/** An agent database written before refusals had their own table: nothing it holds is lost on upgrade. */
const OLD_NODES = `CREATE TABLE nodes (
  id TEXT PRIMARY KEY, hw TEXT NOT NULL, running_version TEXT NOT NULL, running_digest BLOB,
  security_version INTEGER NOT NULL DEFAULT 0, slot INTEGER NOT NULL DEFAULT 0, image_state INTEGER NOT NULL DEFAULT 5,
  caps INTEGER NOT NULL DEFAULT 0, max_message INTEGER NOT NULL DEFAULT 0, window INTEGER NOT NULL DEFAULT 1,
  state TEXT NOT NULL DEFAULT 'idle', target_release TEXT, session INTEGER, chunk_size INTEGER NOT NULL DEFAULT 0,
  chunk_count INTEGER NOT NULL DEFAULT 0, bitmap BLOB, payload_encoding INTEGER NOT NULL DEFAULT 0, acks INTEGER NOT NULL DEFAULT 0,
  attempts INTEGER NOT NULL DEFAULT 0, retransmits INTEGER NOT NULL DEFAULT 0, bytes_sent INTEGER NOT NULL DEFAULT 0,
  reason INTEGER NOT NULL DEFAULT 0, detail TEXT NOT NULL DEFAULT '', stage_deadline INTEGER, last_seen INTEGER NOT NULL DEFAULT 0,
  refused TEXT NOT NULL DEFAULT '', updated_at INTEGER NOT NULL DEFAULT 0
);`;

t.test('the comma-separated refused column moves into the refusals table; new columns are added', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-store-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const db = new Database(path.join(dir, 'agent.db'));
  db.exec(OLD_NODES);
  db.prepare("INSERT INTO nodes (id, hw, running_version, state, refused) VALUES ('n1', 'hw', '1.0.0', 'rolledBack', 'rel-a,full:rel-b')").run();
  db.close();
  const store = new AgentStore(dir);
  t.teardown(() => store.close());
  t.same(store.refusals('n1'), [{ release: 'rel-a', kind: 'release' }, { release: 'rel-b', kind: 'delta' }]);
  const row = store.nodes()[0];
  t.equal(row.state, 'rolledBack', 'the node row is kept');
  t.equal(row.offerId, 0, 'new column offer_id defaults to 0');
  t.equal(row.nextRelease, null, 'new column next_release defaults to null');
  t.equal(row.rollout, null, 'new column rollout defaults to null');
  t.equal(row.wave, null, 'new column wave defaults to null');
  store.saveNode({ ...row, offerId: 5, rollout: 'r-1', wave: 2 });
  t.equal(store.nodes()[0].offerId, 5, 'and is written');
  t.same([store.nodes()[0].rollout, store.nodes()[0].wave], ['r-1', 2], 'rollout and wave are written');
  t.same(store.rollouts(), [], 'an older database gains the rollouts table');
  store.saveRollout('r-1', Buffer.from('doc'), '{"wave":1}');
  t.same(store.rollouts().map((r) => [r.id, r.doc.toString(), r.state]), [['r-1', 'doc', '{"wave":1}']], 'a rollout is stored');
});

t.test('refusals: at most 16 per node, newest kept', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-store-'));
  const store = new AgentStore(dir);
  t.teardown(() => {
    store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  for (let i = 0; i < 20; i++) store.addRefusal('n1', `r${i}`, 'release');
  const kept = store.refusals('n1').map((r) => r.release);
  t.equal(kept.length, 16);
  t.same(kept.slice(-2), ['r18', 'r19']);
  t.notOk(kept.includes('r0'), 'the oldest are forgotten');
});

t.test('withdrawals: an older database gains the table; a withdrawal survives reopening, a restore clears it', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-store-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const db = new Database(path.join(dir, 'agent.db'));
  db.exec(OLD_NODES);
  db.close();
  const store = new AgentStore(dir);
  t.same(store.withdrawals(), [], 'none on upgrade');
  store.setWithdrawal('hw', '2.0.0', true);
  store.setWithdrawal('hw', '1.0.0', true);
  store.close();
  const reopened = new AgentStore(dir);
  t.same(reopened.withdrawals(), [{ hw: 'hw', version: '1.0.0' }, { hw: 'hw', version: '2.0.0' }]);
  reopened.setWithdrawal('hw', '2.0.0', false);
  reopened.close();
  const third = new AgentStore(dir);
  t.teardown(() => third.close());
  t.same(third.withdrawals(), [{ hw: 'hw', version: '1.0.0' }]);
});
