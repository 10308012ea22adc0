import http from 'node:http';
import net from 'node:net';

/**
 * HTTP clients that send exactly what the test says: the path as written (fetch would normalize
 * "/../"), any method, any headers; and an SSE reader that collects events as they come.
 */
export function raw(base: string, method: string, path: string, headers: Record<string, string> = {}, body?: string): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, method, path, headers, agent: false }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** Bytes as written, on a fresh socket; resolves with everything the server sent before closing. */
export function rawBytes(base: string, request: string): Promise<string> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const s = net.connect(Number(u.port), u.hostname);
    let text = '';
    s.on('data', (d) => (text += d.toString()));
    s.on('end', () => resolve(text));
    s.on('close', () => resolve(text));
    s.on('error', reject);
    s.write(request);
  });
}

export interface SseEvent {
  event: string;
  data: string;
}

export interface SseClient {
  status: number;
  events: SseEvent[];
  /** Resolves with the first event (past or future) that matches. */
  next(pred: (e: SseEvent) => boolean): Promise<SseEvent>;
  closed: Promise<void>;
  close(): void;
}

/** Opens `/api/events` and parses the stream; resolves once the response head is in. */
export function sse(base: string): Promise<SseClient> {
  const u = new URL('/api/events', base);
  return new Promise((resolve, reject) => {
    const req = http.get({ host: u.hostname, port: u.port, path: u.pathname, agent: false }, (res) => {
      const events: SseEvent[] = [];
      const waiters = new Set<() => void>();
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        buf += d;
        let end: number;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, end);
          buf = buf.slice(end + 2);
          let event = 'message';
          const data: string[] = [];
          for (const line of block.split('\n')) {
            if (line.startsWith('event: ')) event = line.slice(7);
            else if (line.startsWith('data: ')) data.push(line.slice(6));
          }
          if (data.length > 0) events.push({ event, data: data.join('\n') });
        }
        for (const w of [...waiters]) w();
      });
      const closed = new Promise<void>((r) => res.on('close', () => r()));
      resolve({
        status: res.statusCode ?? 0,
        events,
        next(pred) {
          return new Promise((ok, fail) => {
            const check = () => {
              const e = events.find(pred);
              if (!e) return;
              waiters.delete(check);
              ok(e);
            };
            waiters.add(check);
            check();
            void closed.then(() => waiters.has(check) && fail(new Error(`stream closed before a matching event; got ${events.map((e) => e.event).join(',')}`)));
          });
        },
        closed,
        close: () => req.destroy(),
      });
    });
    req.on('error', reject);
  });
}

/** Parsed Prometheus text: families (HELP, TYPE) and samples; throws on any malformed line. */
export function parseExposition(text: string): { types: Map<string, string>; help: Map<string, string>; samples: { name: string; labels: Record<string, string>; value: number }[] } {
  const types = new Map<string, string>();
  const help = new Map<string, string>();
  const samples: { name: string; labels: Record<string, string>; value: number }[] = [];
  if (!text.endsWith('\n')) throw new Error('exposition does not end with a line feed');
  for (const line of text.slice(0, -1).split('\n')) {
    let m: RegExpExecArray | null;
    if ((m = /^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) (.*)$/.exec(line))) help.set(m[1], m[2]);
    else if ((m = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line))) types.set(m[1], m[2]);
    else if ((m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*)\})? (\S+)$/.exec(line))) {
      const labels: Record<string, string> = {};
      for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
        labels[l[1]] = l[2].replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
      }
      if (!types.has(m[1]) || !help.has(m[1])) throw new Error(`sample before its HELP/TYPE: ${line}`);
      const value = m[3] === '+Inf' ? Infinity : m[3] === '-Inf' ? -Infinity : Number(m[3]);
      if (Number.isNaN(value) && m[3] !== 'NaN') throw new Error(`bad value: ${line}`);
      samples.push({ name: m[1], labels, value });
    } else throw new Error(`not an exposition line: ${JSON.stringify(line)}`);
  }
  return { types, help, samples };
}
