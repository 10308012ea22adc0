// aedes-persistence-redis ships no types. Its main export wraps the async Redis persistence in the
// same adapter aedes' default in-memory persistence uses (async methods, retained messages as
// streams), which is the shape aedes 1.x consumes. This declares the part we use.
declare module 'aedes-persistence-redis' {
  import type { Redis, RedisOptions } from 'ioredis';
  interface RedisPersistence {
    setup(broker: unknown): Promise<void>;
    destroy(): Promise<void>;
  }
  export default function aedesPersistenceRedis(opts?: RedisOptions & { conn?: Redis; maxSessionDelivery?: number }): RedisPersistence;
}
