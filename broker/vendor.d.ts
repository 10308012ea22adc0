// aedes 1.x needs the async persistence class; the package's main export is a callback wrapper
// around it, so we load the class file directly. It ships no types: this is the part we use.
declare module 'aedes-persistence-redis/asyncPersistence.js' {
  import type { RedisOptions } from 'ioredis';
  export default class AsyncRedisPersistence {
    constructor(opts?: RedisOptions & { maxSessionDelivery?: number });
    setup(broker: unknown): Promise<void>;
    destroy(): Promise<void>;
  }
}
