import net from 'node:net';
import { Aedes } from 'aedes';

/**
 * A plain aedes broker on loopback (port 0 by default) standing in for the LNS's MQTT broker (ChirpStack ships
 * with Mosquitto, no ferry ACLs): for the simulator's tests and the LoRa bench.
 */
export interface PlainBroker {
  url: string;
  close(): Promise<void>;
}

export async function startPlainBroker(port = 0): Promise<PlainBroker> {
  const aedes = await Aedes.createBroker();
  const server = net.createServer(aedes.handle);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  const addr = server.address() as net.AddressInfo;
  return {
    url: `mqtt://127.0.0.1:${addr.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => aedes.close(() => resolve()));
      }),
  };
}
