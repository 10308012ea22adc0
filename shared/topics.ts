/**
 * MQTT topic layout of protocol v1. Every topic sits under a configurable prefix (default "ferry").
 * Device ids and hardware classes become topic levels, so they are restricted to characters that
 * can never be MQTT wildcards or separators.
 */
export const DEFAULT_PREFIX = 'ferry';
export const DEVICE_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$/;

export function isDeviceId(id: string): boolean {
  return DEVICE_ID_PATTERN.test(id);
}

export interface Topics {
  prefix: string;
  /** node → agent: Hello, Ack, Report. QoS 1. */
  up(deviceId: string): string;
  /** agent → node: Offer, Chunk (QoS 0), Activate, Cancel, Error (QoS 1). */
  down(deviceId: string): string;
  /** agent → everyone: retained JSON status of one node. */
  status(deviceId: string): string;
  /** broker → everyone: retained presence ("online"/"offline") of one node. */
  presence(deviceId: string): string;
  /** operator → agents: retained signed manifest of a release. */
  releaseManifest(hw: string, version: string): string;
  /** operator → agents: retained image part N of a release. */
  releasePart(hw: string, version: string, index: number): string;
  /** agent → operators: retained JSON verdict of one agent on a release (accepted or refused). */
  releaseStatus(hw: string, version: string, agent: string): string;
  releaseStatusWildcard(hw: string, version: string): string;
  /** operator → agents: retained withdraw marker of a release (empty payload clears it). */
  releaseWithdrawn(hw: string, version: string): string;
  withdrawnWildcard: string;
  /** Every release status of every release. */
  allReleaseStatusWildcard: string;
  /** agent → operators: the agent's events as they happen (batches, QoS 1, not retained). */
  agentEvents(agent: string): string;
  agentEventsWildcard: string;
  /** operator → every agent: a request for event history; the last level is the operator's name. */
  eventsRequest(operator: string): string;
  eventsRequestWildcard: string;
  /** agent → one operator: the history that operator asked for. */
  eventsResponse(agent: string, operator: string): string;
  eventsResponseWildcard(operator: string): string;
  /** broker → agents, operators: retained JSON facts the broker holds about node `<id>` (its groups). */
  info(deviceId: string): string;
  infoWildcard: string;
  /** operator → agents: retained signed rollout document (docs/protocol.md section 2.4). */
  rollout(id: string): string;
  rolloutWildcard: string;
  /** agent → operators, agents: retained JSON state of one agent in one rollout. */
  rolloutState(id: string, agent: string): string;
  rolloutStateWildcard: string;
  upWildcard: string;
  statusWildcard: string;
  presenceWildcard: string;
  manifestWildcard: string;
  partWildcard(hw: string, version: string): string;
  /** Extracts the device id from an up/status/presence topic, or undefined. */
  deviceOf(topic: string): string | undefined;
}

export function topics(prefix = DEFAULT_PREFIX): Topics {
  if (!/^[A-Za-z0-9_-]+(\/[A-Za-z0-9_-]+)*$/.test(prefix)) throw new Error(`topic prefix "${prefix}" must be plain topic levels without wildcards`);
  const depth = prefix.split('/').length;
  return {
    prefix,
    up: (id) => `${prefix}/d/${id}/up`,
    down: (id) => `${prefix}/d/${id}/dn`,
    status: (id) => `${prefix}/d/${id}/status`,
    presence: (id) => `${prefix}/d/${id}/presence`,
    releaseManifest: (hw, v) => `${prefix}/r/${hw}/${v}/manifest`,
    releasePart: (hw, v, i) => `${prefix}/r/${hw}/${v}/part/${i}`,
    releaseStatus: (hw, v, agent) => `${prefix}/r/${hw}/${v}/status/${agent}`,
    releaseStatusWildcard: (hw, v) => `${prefix}/r/${hw}/${v}/status/+`,
    releaseWithdrawn: (hw, v) => `${prefix}/r/${hw}/${v}/withdrawn`,
    withdrawnWildcard: `${prefix}/r/+/+/withdrawn`,
    allReleaseStatusWildcard: `${prefix}/r/+/+/status/+`,
    agentEvents: (agent) => `${prefix}/a/${agent}/events`,
    agentEventsWildcard: `${prefix}/a/+/events`,
    eventsRequest: (op) => `${prefix}/e/req/${op}`,
    eventsRequestWildcard: `${prefix}/e/req/+`,
    eventsResponse: (agent, op) => `${prefix}/a/${agent}/events/res/${op}`,
    eventsResponseWildcard: (op) => `${prefix}/a/+/events/res/${op}`,
    info: (id) => `${prefix}/d/${id}/info`,
    infoWildcard: `${prefix}/d/+/info`,
    rollout: (id) => `${prefix}/rollout/${id}`,
    rolloutWildcard: `${prefix}/rollout/+`,
    rolloutState: (id, agent) => `${prefix}/rollout/${id}/state/${agent}`,
    rolloutStateWildcard: `${prefix}/rollout/+/state/+`,
    upWildcard: `${prefix}/d/+/up`,
    statusWildcard: `${prefix}/d/+/status`,
    presenceWildcard: `${prefix}/d/+/presence`,
    manifestWildcard: `${prefix}/r/+/+/manifest`,
    partWildcard: (hw, v) => `${prefix}/r/${hw}/${v}/part/+`,
    deviceOf(topic) {
      const levels = topic.split('/');
      if (levels.length !== depth + 3 || levels[depth] !== 'd') return undefined;
      if (levels.slice(0, depth).join('/') !== prefix) return undefined;
      const id = levels[depth + 1];
      return isDeviceId(id) ? id : undefined;
    },
  };
}
