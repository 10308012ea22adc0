/**
 * Network failures of the commands in words: "port 1883 is in use", not "listen EADDRINUSE: address
 * already in use 0.0.0.0:1883"; "cannot reach the broker at …: connection refused".
 */

const NET_ERRORS: Record<string, string> = {
  ECONNREFUSED: 'connection refused',
  ECONNRESET: 'connection reset',
  ENOTFOUND: 'host not found',
  EAI_AGAIN: 'host name lookup failed (no DNS yet?)',
  ETIMEDOUT: 'timed out',
  EHOSTUNREACH: 'host unreachable',
  ENETUNREACH: 'network unreachable',
};

/** "connection refused", "host not found", … or the error's own message. */
export function netProblem(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return (e.code && NET_ERRORS[e.code]) ?? e.message;
}

/** Why a listener could not open on host:port, in words (err from net.Server 'error'). */
export function listenProblem(err: unknown, host: string): string {
  const e = err as NodeJS.ErrnoException & { port?: number };
  const port = e.port ?? '?';
  switch (e.code) {
    case 'EADDRINUSE':
      return `port ${port} is in use${host === '0.0.0.0' || host === '::' ? '' : ` on ${host}`}`;
    case 'EACCES':
    case 'EPERM':
      return `port ${port} needs privileges (below 1024: root or CAP_NET_BIND_SERVICE)`;
    case 'EADDRNOTAVAIL':
      return `--host ${host} is not an address of this machine`;
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return `--host ${host}: no such host`;
    default:
      return e.message;
  }
}

/** A listener error (it has a syscall 'listen' or a bind code) rather than something else failing. */
export function isListenError(err: unknown): boolean {
  const e = err as NodeJS.ErrnoException;
  return e?.syscall === 'listen' || e?.syscall === 'bind' || e?.code === 'EADDRINUSE' || e?.code === 'EADDRNOTAVAIL';
}

/**
 * A one-shot client's work against a broker (publish a release, read statuses), its connection
 * failure put in words: "cannot reach the broker at mqtt://…: connection refused".
 */
export async function reachingBroker<T>(url: string, work: Promise<T>): Promise<T> {
  try {
    return await work;
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.syscall === 'connect' || e.syscall === 'getaddrinfo' || (e.code && NET_ERRORS[e.code])) throw new Error(`cannot reach the broker at ${url}: ${netProblem(e)}`);
    if (/^Connection refused: /.test(e.message)) throw new Error(`the broker at ${url} refused the connection: ${e.message.slice('Connection refused: '.length)}`);
    throw err;
  }
}
