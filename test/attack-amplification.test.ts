import t from 'tap';
import type { MqttClient } from 'mqtt';
import { sha256 } from '../shared/manifest.js';
import { Capability, decodeDown, encodeMessage, ImageState, MsgType, PROTOCOL_VERSION } from '../shared/messages.js';
import { connect, end, publish, subscribe } from './helpers/broker-support.js';
import { makeWorld } from './helpers/world.js';

/**
 * Issue 10 item 6: a node that says Hello and answers every Offer with "I hold nothing" (Ack base 0),
 * 20 times a second, must not make the agent resend more than its per-node resend budget: resends
 * cost airtime on a shared link. A bounded loop on loopback; the budget is checked against the time
 * the loop actually took (a bound, not a timing assertion).
 */
const HW = 'esp32-amp';
const WINDOW = 16;
const BUDGET = { windows: 4, perMs: 1000 };

t.test('Hellos and base-0 Acks at 20/s from one node: resends stay within the budget', async (t) => {
  const world = await makeWorld({ agent: { resendBudget: BUDGET } });
  const id = 'amp-1';
  const up = `ferry/d/${id}/up`;
  const c: MqttClient = await connect(world.broker.url, { clientId: id });
  t.teardown(async () => {
    await end(c);
    await world.close();
  });
  await subscribe(c, `ferry/d/${id}/dn`);
  let session = 0;
  let offerId = 0;
  let chunkSize = 0;
  let bytes = 0;
  const seen = new Set<number>();
  let firstBytes = 0;
  let offeredAt = 0;
  let offered!: () => void;
  const gotOffer = new Promise<void>((r) => (offered = r));
  c.on('message', (_tp, payload) => {
    const m = decodeDown(payload);
    if (m.type === MsgType.offer) {
      if (!offeredAt) offeredAt = performance.now();
      session = m.session;
      offerId = m.offerId;
      chunkSize = m.chunkSize;
      offered();
      // Answer every Offer at once: "I hold nothing".
      c.publish(up, encodeMessage({ type: MsgType.ack, session, base: 0, answers: offerId }), { qos: 1 });
    } else if (m.type === MsgType.chunk) {
      bytes += m.data.length;
      if (!seen.has(m.index)) {
        seen.add(m.index);
        firstBytes += m.data.length;
      }
    }
  });
  const hello = encodeMessage({
    type: MsgType.hello, proto: PROTOCOL_VERSION, deviceId: id, hw: HW, version: '1.0.0', digest: sha256(Buffer.from('factory')),
    securityVersion: 0, slot: 0, imageState: ImageState.valid, maxMessage: 1024, caps: Capability.rollback, window: WINDOW,
  });
  await publish(c, up, hello);
  await world.publish({ hw: HW, version: '1.1.0', size: 256 * 1024 });
  await gotOffer;
  // The abuse: 60 rounds, 50 ms apart, of Hello (no transfer-state) and a base-0 Ack.
  for (let i = 0; i < 60; i++) {
    await publish(c, up, hello);
    await publish(c, up, encodeMessage({ type: MsgType.ack, session, base: 0, answers: offerId }));
    await new Promise((r) => setTimeout(r, 50));
  }
  // Let what the agent already decided to send arrive (a round trip through the broker).
  await publish(c, up, encodeMessage({ type: MsgType.ack, session, base: 0 }));
  await new Promise((r) => setTimeout(r, 100));
  const elapsedMs = performance.now() - offeredAt;
  const capacity = BUDGET.windows * WINDOW * chunkSize;
  // The bucket starts full, refills at its capacity per interval; a pump may overdraw by what it had chosen.
  const allowed = capacity + (elapsedMs / BUDGET.perMs) * capacity + WINDOW * chunkSize;
  const resent = bytes - firstBytes;
  t.ok(resent > 0, `the node did get resends (${resent} B)`);
  t.ok(resent <= allowed, `resent ${resent} B in ${Math.round(elapsedMs)} ms ≤ budget ${Math.round(allowed)} B (${BUDGET.windows} windows of ${WINDOW} × ${chunkSize} B per ${BUDGET.perMs} ms, plus one window)`);
  t.comment(`chunk bytes delivered ${bytes} (first copies ${firstBytes}, resent ${resent}) for a 262144 B image`);
});
