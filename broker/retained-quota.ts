/**
 * Retained bytes per identity. A retained message lives on the broker (and on disk) until someone
 * overwrites or clears it, so without a cap one client could park any amount of data there and
 * have it served to every `#` subscriber. Each retained topic is charged to whoever wrote it last;
 * overwriting or clearing it (an empty retained payload) credits the previous writer.
 *
 * The table holds only topics written since the broker started: messages restored from disk at
 * start-up are charged to nobody until someone rewrites them.
 */
export type RetainVerdict = { ok: true } | { ok: false; reason: string };

/** Per-topic bookkeeping overhead charged on top of topic + payload bytes. */
const ENTRY_OVERHEAD = 64;

export class RetainedQuota {
  private readonly byTopic = new Map<string, { owner: string; bytes: number }>();
  private readonly used = new Map<string, number>();

  /**
   * Charges a retained publish of `payloadBytes` on `topic` to `owner` if it fits in `cap`, and
   * records it. An empty payload clears the topic and always passes.
   */
  charge(owner: string, cap: number, topic: string, payloadBytes: number): RetainVerdict {
    const prev = this.byTopic.get(topic);
    if (payloadBytes === 0) {
      if (prev) this.release(topic, prev);
      return { ok: true };
    }
    const bytes = Buffer.byteLength(topic) + payloadBytes + ENTRY_OVERHEAD;
    const mine = this.usedBy(owner) - (prev?.owner === owner ? prev.bytes : 0);
    if (mine + bytes > cap) return { ok: false, reason: `retained bytes would reach ${mine + bytes}, limit ${cap}` };
    if (prev) this.release(topic, prev);
    this.byTopic.set(topic, { owner, bytes });
    this.used.set(owner, this.usedBy(owner) + bytes);
    return { ok: true };
  }

  usedBy(owner: string): number {
    return this.used.get(owner) ?? 0;
  }

  private release(topic: string, prev: { owner: string; bytes: number }): void {
    this.byTopic.delete(topic);
    const left = this.usedBy(prev.owner) - prev.bytes;
    if (left > 0) this.used.set(prev.owner, left);
    else this.used.delete(prev.owner);
  }
}
