/**
 * The broker's public API, for `ferry broker`, `ferry gateway`, `ferry demo` and anyone loading the
 * ferry plugin into their own aedes. docs/broker.md describes the behaviour.
 */
export { installFerryPlugin, type FerryPlugin, type FerryPluginOptions, type LogFn } from './plugin.js';
export { IdentityStore, ROLES, type AddOptions, type Credentials, type Identity, type VerifyResult } from './identity-store.js';
export { TopicAcl, servesMatcher, type Principal, type Role, type TopicClass } from './acl.js';
export { DEFAULT_LIMITS, parseLimitFlags, resolveLimits, type Limits, type LimitsInput, type PayloadLimits, type RateLimit } from './limits.js';
export { guardFrames, type FrameLimits } from './frame-guard.js';
export { retainedStore, type RetainedStore } from './retained-store.js';
export { provision } from './provision.js';
export { redisBackends, type RedisBackends } from './redis.js';
export { startBroker, type BrokerOptions, type RunningBroker, type TlsListenerOptions } from './server.js';
