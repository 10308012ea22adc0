import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { CONTENT_TYPE as METRICS_TYPE } from './exposition.js';
import { LiveUpdates, type LiveOptions } from './live.js';
import { metricsText } from './metrics.js';
import { PAGE_CSS, PAGE_HTML, PAGE_JS } from './page.js';
import { snapshot, type StatusSources } from './snapshot.js';

export interface StatusServerOptions extends StatusSources, Partial<LiveOptions> {
  port: number;
  /** Listen address; default 127.0.0.1 (the page is read-only, but no reason to face a network by default). */
  host?: string;
  log?: (level: 'info' | 'warn' | 'error', msg: string) => void;
}

export interface StatusServer {
  port: number;
  url: string;
  live: LiveUpdates;
  close(): Promise<void>;
}

/** Caps on what a request may bring: checked before any work is done for it. */
export const HTTP_LIMITS = { maxUrl: 2048, maxHeaderBytes: 8192, maxHeaders: 40, maxConnections: 128, headersTimeoutMs: 10_000 } as const;

const DEFAULT_LIVE: LiveOptions = { maxClients: 32, maxBacklogBytes: 4 * 1024 * 1024, flushMs: 250, heartbeatMs: 15_000 };

/** Every response: no caching, no sniffing, no framing, no referrer; the page may load only its own script and style. */
const COMMON_HEADERS = {
  'Cache-Control': 'no-store',
  'X-Content-Type-Options': 'nosniff',
  'X-Frame-Options': 'DENY',
  'Referrer-Policy': 'no-referrer',
  'Cross-Origin-Resource-Policy': 'same-origin',
  'Content-Security-Policy': "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
};

type Static = { type: string; body: Buffer };
const STATIC: Record<string, Static> = {
  '/': { type: 'text/html; charset=utf-8', body: Buffer.from(PAGE_HTML) },
  '/app.js': { type: 'text/javascript; charset=utf-8', body: Buffer.from(PAGE_JS) },
  '/app.css': { type: 'text/css; charset=utf-8', body: Buffer.from(PAGE_CSS) },
};

const LOOPBACK_NAMES = new Set(['localhost', '127.0.0.1', '[::1]']);

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.');
}

/**
 * `ferry gateway --http PORT` / `ferry agent --http PORT`: the read-only status page (`/`, its
 * script and style), `/api/status` (JSON snapshot), `/api/events` (Server-Sent Events) and
 * `/metrics` (Prometheus). Only GET and HEAD; every path is a fixed table entry (nothing is read from
 * disk, so no path reaches a file); errors are one line of text. Bound to loopback, it also refuses
 * requests whose Host header names anything but loopback, so a web page on another origin cannot
 * reach it through DNS rebinding.
 */
export async function startStatusServer(o: StatusServerOptions): Promise<StatusServer> {
  const host = o.host ?? '127.0.0.1';
  const live = new LiveUpdates(o, { ...DEFAULT_LIVE, ...definedOnly({ maxClients: o.maxClients, maxBacklogBytes: o.maxBacklogBytes, flushMs: o.flushMs, heartbeatMs: o.heartbeatMs }), log: o.log });
  const checkHost = isLoopback(host);
  const server = http.createServer({ maxHeaderSize: HTTP_LIMITS.maxHeaderBytes, headersTimeout: HTTP_LIMITS.headersTimeoutMs, requestTimeout: HTTP_LIMITS.headersTimeoutMs, keepAliveTimeout: 5000 }, (req, res) => {
    try {
      handle(req, res);
    } catch (err) {
      o.log?.('error', `http: ${req.method} ${req.url?.slice(0, 200)}: ${(err as Error).stack ?? err}`);
      if (!res.headersSent) fail(res, 500, 'internal error');
      else res.destroy();
    }
  });
  server.maxHeadersCount = HTTP_LIMITS.maxHeaders;
  server.maxConnections = HTTP_LIMITS.maxConnections + (o.maxClients ?? DEFAULT_LIVE.maxClients);
  server.on('clientError', (err: NodeJS.ErrnoException, socket) => {
    if (!socket.writable) return socket.destroy();
    const status = err.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? '408 Request Timeout' : '400 Bad Request';
    const body = `${status.slice(4).toLowerCase()}\n`;
    socket.end(`HTTP/1.1 ${status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
  });

  // CONNECT never reaches the request handler; without this listener Node would just drop the socket.
  server.on('connect', (req: IncomingMessage, socket: Duplex) => {
    const body = 'method CONNECT not allowed: this server is read-only (GET, HEAD)\n';
    socket.end(`HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
  });

  const handle = (req: IncomingMessage, res: ServerResponse) => {
    const url = req.url ?? '/';
    if (url.length > HTTP_LIMITS.maxUrl) return fail(res, 414, `URL longer than ${HTTP_LIMITS.maxUrl} bytes`);
    if (checkHost && !LOOPBACK_NAMES.has(hostName(req.headers.host))) return fail(res, 421, 'this server answers only to localhost, 127.0.0.1 or [::1]');
    if (req.method !== 'GET' && req.method !== 'HEAD') return fail(res, 405, `method ${(req.method ?? '').slice(0, 16)} not allowed: this server is read-only (GET, HEAD)`, { Allow: 'GET, HEAD' });
    if ((req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0') || req.headers['transfer-encoding'] !== undefined) {
      return fail(res, 413, 'a GET or HEAD request carries no body');
    }
    const path = url.split('?')[0];
    const asset = STATIC[path];
    if (asset) return send(req, res, 200, asset.type, asset.body);
    // Browsers ask for it unprompted; an empty answer keeps their consoles clean.
    if (path === '/favicon.ico') return send(req, res, 204, 'image/x-icon', Buffer.alloc(0));
    if (path === '/metrics') return send(req, res, 200, METRICS_TYPE, Buffer.from(metricsText(o, { sseClients: live.clientCount, sseDropped: live.dropped })));
    if (path === '/api/status') return send(req, res, 200, 'application/json; charset=utf-8', Buffer.from(JSON.stringify(snapshot(o))));
    if (path === '/api/events') {
      if (!live.add(req, res, COMMON_HEADERS)) fail(res, 503, `${live.clientCount} live viewers already: try again later`, { 'Retry-After': '10' });
      return;
    }
    fail(res, 404, 'not found');
  };

  live.start();
  const port = await new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, host, () => {
      server.off('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
  const urlHost = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host.includes(':') ? `[${host}]` : host;
  return {
    port,
    url: `http://${urlHost}:${port}`,
    live,
    close() {
      live.close();
      server.closeAllConnections();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function send(req: IncomingMessage, res: ServerResponse, status: number, type: string, body: Buffer): void {
  res.writeHead(status, { ...COMMON_HEADERS, 'Content-Type': type, 'Content-Length': body.length });
  res.end(req.method === 'HEAD' ? undefined : body);
}

/** A one-line error. The request's remainder is not read: the connection closes after it. */
function fail(res: ServerResponse, status: number, message: string, extra: Record<string, string> = {}): void {
  const body = Buffer.from(`${message}\n`);
  res.writeHead(status, { ...COMMON_HEADERS, ...extra, 'Content-Type': 'text/plain; charset=utf-8', 'Content-Length': body.length, Connection: 'close' });
  res.end(res.req.method === 'HEAD' ? undefined : body);
}

/** The host name of a Host header, without its port ("[::1]:8080" → "[::1]"). */
function hostName(header: string | undefined): string {
  if (!header) return '';
  const h = header.toLowerCase();
  if (h.startsWith('[')) return h.slice(0, h.indexOf(']') + 1);
  const colon = h.indexOf(':');
  return colon < 0 ? h : h.slice(0, colon);
}

function definedOnly<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
