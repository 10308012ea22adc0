import t from 'tap';
import { TopicAcl, type Principal } from '../broker/acl.js';

// Who may use the event-log topics (docs/protocol.md 2.3): operators read, agents speak for themselves.
const acl = new TopicAcl('ferry');
const who = (role: Principal['role'], id: string): Principal => ({ role, id, groups: [], serves: ['*'] });
const alice = who('operator', 'alice');
const bob = who('operator', 'bob');
const gw = who('agent', 'gw-1');
const other = who('agent', 'gw-2');
const node = who('node', 'node-1');
const all = () => true;

t.test('live events: only the agent named in the topic publishes; only operators read', async (t) => {
  t.ok(acl.canPublish(gw, 'ferry/a/gw-1/events', all, all), 'the agent itself');
  t.notOk(acl.canPublish(other, 'ferry/a/gw-1/events', all, all), 'not another agent');
  t.notOk(acl.canPublish(alice, 'ferry/a/gw-1/events', all, all), 'not an operator');
  t.ok(acl.canRead(alice, 'ferry/a/gw-1/events', all), 'operators read');
  t.notOk(acl.canRead(node, 'ferry/a/gw-1/events', all), 'nodes do not');
  t.notOk(acl.canRead(other, 'ferry/a/gw-1/events', all), 'agents do not');
  t.ok(acl.canSubscribe(alice, 'ferry/a/+/events', all), 'an operator may subscribe to every agent');
  t.notOk(acl.canSubscribe(node, 'ferry/a/+/events', all), 'a node may not');
});

t.test('history: an operator asks under its own name, and only it reads the answer', async (t) => {
  t.ok(acl.canPublish(alice, 'ferry/e/req/alice', all, all), 'alice asks as alice');
  t.notOk(acl.canPublish(alice, 'ferry/e/req/bob', all, all), 'not as bob');
  t.notOk(acl.canPublish(node, 'ferry/e/req/node-1', all, all), 'a node cannot ask');
  t.notOk(acl.canPublish(gw, 'ferry/e/req/gw-1', all, all), 'nor can an agent');
  t.ok(acl.canRead(gw, 'ferry/e/req/alice', all), 'agents read requests');
  t.ok(acl.canSubscribe(gw, 'ferry/e/req/+', all), 'all of them');
  t.notOk(acl.canRead(bob, 'ferry/e/req/alice', all), 'operators do not read each other’s requests');
  t.ok(acl.canPublish(gw, 'ferry/a/gw-1/events/res/alice', all, all), 'the agent answers under its own name');
  t.notOk(acl.canPublish(other, 'ferry/a/gw-1/events/res/alice', all, all), 'not under another agent’s');
  t.ok(acl.canRead(alice, 'ferry/a/gw-1/events/res/alice', all), 'alice reads her answers');
  t.notOk(acl.canRead(bob, 'ferry/a/gw-1/events/res/alice', all), 'bob does not');
  t.ok(acl.canSubscribe(alice, 'ferry/a/+/events/res/alice', all), 'alice subscribes to her answers from every agent');
  t.notOk(acl.canSubscribe(bob, 'ferry/a/+/events/res/alice', all), 'bob cannot subscribe to them');
  t.equal(acl.classify('ferry/a/gw-1/events/res').kind, 'invalid', 'a truncated topic is nothing');
  t.equal(acl.classify('ferry/e/req/a/b').kind, 'invalid', 'nor is a longer one');
});
