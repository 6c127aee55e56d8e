/**
 * A local stand-in for the real HTTPS site the proxy fronts: a rustls server (Deno.listenTls) on
 * 127.0.0.1 with a self-signed certificate for the site's names, answering any HTTP/1.x request
 * with a fixed page and closing. Clients reach it through a small recording TCP relay (so every
 * raw byte in and out is logged per connection, and `close()` can drop any socket; `direct`
 * skips it). Plus the client side probes use: {@linkcode fetchThrough} (a
 * verified HTTPS GET with a chosen SNI over any port, e.g. the proxy's), {@linkcode rawExchange}
 * / {@linkcode rawProbe} (raw bytes in, whatever comes back out) and {@linkcode peerCertificate}.
 *
 * What the site (rustls via Deno 2.9.6) sends back, byte-exact, as asserted in
 * tests/https_site_test.ts:
 * - random bytes (first byte not a TLS content type), a plaintext `GET / HTTP/1.1` request, an
 *   SSLv2 hello, a bad record version or an oversized record header: the 7-byte TLS 1.2 alert
 *   record `15 03 03 00 02 02 32` (fatal decode_error), then a FIN;
 * - an application-data or ChangeCipherSpec record first: `15 03 03 00 02 02 0a` (fatal
 *   unexpected_message), then a FIN;
 * - a handshake record whose message claims a huge length, or a client alert: nothing, a FIN;
 * - a ClientHello with any SNI, covered by the certificate or not (a single certificate is
 *   served whatever the SNI): ServerHello (`16 03 03 ..`), ChangeCipherSpec
 *   (`14 03 03 00 01 01`), encrypted records (`17 03 03 ..`), then silence until the client
 *   finishes, closes (FIN back, no alert) or the site closes;
 * - nothing, or an incomplete record header: silence (there is no handshake timeout).
 *
 * @module
 */
import tls from "node:tls";
import { closeQuietly, dial, writeAll } from "./_io.ts";
import { makeSelfSignedCert } from "./self_signed.ts";

/** Options for {@linkcode startHttpsSite}. */
export interface HttpsSiteOptions {
  /** Names in the certificate; the first is the page's name. @default ["example.com"] */
  names?: string[];
  /** Page body. @default `<html>real site ${names[0]}</html>` */
  body?: string;
  /** Certificate validity in days. @default 30 */
  days?: number;
  /**
   * ALPN protocols to announce (the site only speaks HTTP/1.x, so "http/1.1" at most).
   * @default none: the ALPN extension is ignored
   */
  alpnProtocols?: string[];
  /**
   * Serve straight from Deno.listenTls, without the recording TCP relay that normally sits in
   * front of it (no `rawIn`/`rawOut` then). Caveat: Deno does not close the socket of a
   * TlsConn whose handshake never completed until the peer sends or closes, so `close()`
   * cannot drop silent connections in this mode. @default false
   */
  direct?: boolean;
}

/** What the site saw on one accepted connection. */
export interface SiteConnection {
  /** 1-based accept order. */
  readonly id: number;
  /** The TLS handshake completed. */
  handshake: boolean;
  /** Decrypted bytes received after the handshake. */
  bytesReceived: number;
  /** The HTTP request head (up to the blank line), once received. */
  request: string | null;
  /** Status of the response sent (200, or 400 for a request line that is not HTTP/1.x). */
  status: number | null;
  /** Why the connection ended abnormally (handshake or read error), if it did. */
  error: string | null;
  /** The connection is over: the TLS handler (and the relay) finished and closed it. */
  done: boolean;
  /** Every byte the client sent so far, as it arrived over TCP (null when `direct`). */
  rawIn: Uint8Array | null;
  /** Every byte the site sent so far over TCP (null when `direct`). */
  rawOut: Uint8Array | null;
}

/** A running site; see {@linkcode startHttpsSite}. */
export interface HttpsSite {
  /** Always 127.0.0.1. */
  readonly hostname: string;
  /** The port clients connect to. */
  readonly port: number;
  /** Names the certificate covers. */
  readonly names: string[];
  /** The site's certificate (its own trust anchor: pass as `caCerts`). */
  readonly certPem: string;
  /** The page body. */
  readonly body: string;
  /** The exact HTTP response bytes sent to a valid request. */
  readonly response: Uint8Array;
  /** Connections accepted so far. */
  readonly connections: number;
  /** One record per accepted connection, in accept order. */
  readonly log: readonly SiteConnection[];
  /** Resolve once no connection is being handled (rejects after `timeoutMs`). */
  idle(timeoutMs?: number): Promise<void>;
  /** Close the listener and every live connection; resolves once all handlers returned. */
  close(): Promise<void>;
}

const MAX_HEAD = 64 * 1024;
const enc = new TextEncoder();
const dec = new TextDecoder();

function _httpResponse(status: number, reason: string, body: string): Uint8Array {
  const b = enc.encode(body);
  return enc.encode(
    `HTTP/1.1 ${status} ${reason}\r\nContent-Type: text/html; charset=utf-8\r\n` +
      `Content-Length: ${b.length}\r\nConnection: close\r\n\r\n${body}`,
  );
}

function _indexOfBlankLine(buf: Uint8Array, end: number): number {
  for (let i = 3; i < end; i++) {
    if (buf[i] === 10 && buf[i - 1] === 13 && buf[i - 2] === 10 && buf[i - 3] === 13) {
      return i + 1;
    }
  }
  return -1;
}

function _errorText(e: unknown): string {
  return e instanceof Error ? `${e.name}: ${e.message}` : String(e);
}

/** Growable byte log. */
class _Bytes {
  #buf = new Uint8Array(1024);
  #len = 0;
  push(chunk: Uint8Array): void {
    if (this.#len + chunk.length > this.#buf.length) {
      const next = new Uint8Array(Math.max(this.#buf.length * 2, this.#len + chunk.length));
      next.set(this.#buf.subarray(0, this.#len));
      this.#buf = next;
    }
    this.#buf.set(chunk, this.#len);
    this.#len += chunk.length;
  }
  bytes(): Uint8Array {
    return this.#buf.slice(0, this.#len);
  }
}

class _Site implements HttpsSite {
  readonly hostname = "127.0.0.1";
  readonly port: number;
  readonly names: string[];
  readonly certPem: string;
  readonly body: string;
  readonly response: Uint8Array;
  readonly log: SiteConnection[] = [];
  readonly #badRequest = _httpResponse(400, "Bad Request", "<html>400 Bad Request</html>");
  readonly #tls: Deno.TlsListener;
  readonly #front: Deno.TcpListener | null;
  readonly #live = new Set<Deno.Conn>();
  readonly #tasks = new Set<Promise<void>>();
  /** Relayed connections by the relay's local port (= the TLS connection's remote port). */
  readonly #tapByPort = new Map<number, SiteConnection>();
  /** TLS connections accepted before their relay registered (same key). */
  readonly #tapWaiters = new Map<number, (rec: SiteConnection | null) => void>();
  readonly #idleWaiters = new Set<() => void>();
  /** Parts (relay, TLS handler) still running per connection; `done` once none are. */
  readonly #parts = new Map<SiteConnection, number>();
  #closed: Promise<void> | null = null;

  constructor(
    names: string[],
    body: string,
    certPem: string,
    keyPem: string,
    direct: boolean,
    alpnProtocols: string[] | undefined,
  ) {
    this.names = names;
    this.body = body;
    this.certPem = certPem;
    this.response = _httpResponse(200, "OK", body);
    this.#tls = Deno.listenTls({
      hostname: "127.0.0.1",
      port: 0,
      cert: certPem,
      key: keyPem,
      ...(alpnProtocols ? { alpnProtocols } : {}),
    });
    this.#front = direct ? null : Deno.listen({ hostname: "127.0.0.1", port: 0 });
    this.port = (this.#front ?? this.#tls).addr.port;
    this.#track(this.#acceptTls());
    if (this.#front) this.#track(this.#acceptFront(this.#front));
  }

  get connections(): number {
    return this.log.length;
  }

  idle(timeoutMs = 5000): Promise<void> {
    if (this.#isIdle()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!this.#isIdle()) return;
        clearTimeout(timer);
        this.#idleWaiters.delete(check);
        resolve();
      };
      const timer = setTimeout(() => {
        this.#idleWaiters.delete(check);
        reject(new Error(`HTTPS site not idle after ${timeoutMs} ms`));
      }, timeoutMs);
      this.#idleWaiters.add(check);
    });
  }

  close(): Promise<void> {
    this.#closed ??= (async () => {
      closeQuietly(this.#tls);
      if (this.#front) closeQuietly(this.#front);
      for (const c of this.#live) closeQuietly(c);
      for (const w of this.#tapWaiters.values()) w(null);
      this.#tapWaiters.clear();
      while (this.#tasks.size > 0) await Promise.allSettled([...this.#tasks]);
    })();
    return this.#closed;
  }

  #isIdle(): boolean {
    return this.#live.size === 0 && this.#parts.size === 0 && this.#tapByPort.size === 0;
  }

  #track(task: Promise<void>): void {
    this.#tasks.add(task);
    task.finally(() => {
      this.#tasks.delete(task);
      for (const w of [...this.#idleWaiters]) w();
    });
  }

  #newRecord(): SiteConnection {
    const rec: SiteConnection = {
      id: this.log.length + 1,
      handshake: false,
      bytesReceived: 0,
      request: null,
      status: null,
      error: null,
      done: false,
      rawIn: null,
      rawOut: null,
    };
    this.log.push(rec);
    return rec;
  }

  async #acceptTls(): Promise<void> {
    while (true) {
      let conn: Deno.TlsConn;
      try {
        conn = await this.#tls.accept();
      } catch {
        return; // Listener closed.
      }
      if (this.#closed) {
        closeQuietly(conn);
        continue;
      }
      this.#live.add(conn);
      this.#track(this.#serve(conn, this.#front ? this.#tapRecord(conn.remoteAddr.port) : null));
    }
  }

  /** The relay's record for the TLS connection from `port` (null if the site closes first). */
  #tapRecord(port: number): Promise<SiteConnection | null> {
    const rec = this.#tapByPort.get(port);
    if (rec) {
      this.#tapByPort.delete(port);
      return Promise.resolve(rec);
    }
    if (this.#closed) return Promise.resolve(null);
    return new Promise((resolve) => this.#tapWaiters.set(port, resolve));
  }

  #partStarted(rec: SiteConnection): void {
    this.#parts.set(rec, (this.#parts.get(rec) ?? 0) + 1);
    rec.done = false;
  }

  #partEnded(rec: SiteConnection): void {
    const left = (this.#parts.get(rec) ?? 1) - 1;
    if (left > 0) {
      this.#parts.set(rec, left);
    } else {
      this.#parts.delete(rec);
      rec.done = true;
    }
  }

  async #serve(conn: Deno.TlsConn, tapped: Promise<SiteConnection | null> | null): Promise<void> {
    const rec = (tapped ? await tapped : null) ?? this.#newRecord();
    this.#partStarted(rec);
    try {
      await conn.handshake();
      rec.handshake = true;
      const buf = new Uint8Array(MAX_HEAD);
      let len = 0;
      let headEnd = -1;
      while (headEnd < 0 && len < buf.length) {
        const n = await conn.read(buf.subarray(len));
        if (n === null) break;
        len += n;
        rec.bytesReceived += n;
        headEnd = _indexOfBlankLine(buf, len);
      }
      if (headEnd < 0) return; // EOF or oversized head: just close, like a server would.
      rec.request = dec.decode(buf.subarray(0, headEnd));
      const ok = /^[A-Z]+ \S+ HTTP\/1\.[01]\r\n/.test(rec.request);
      rec.status = ok ? 200 : 400;
      await writeAll(conn, ok ? this.response : this.#badRequest);
    } catch (e) {
      rec.error = _errorText(e);
    } finally {
      closeQuietly(conn); // Sends close_notify when the handshake completed.
      this.#live.delete(conn);
      this.#partEnded(rec);
    }
  }

  async #acceptFront(front: Deno.TcpListener): Promise<void> {
    while (true) {
      let outer: Deno.TcpConn;
      try {
        outer = await front.accept();
      } catch {
        return;
      }
      if (this.#closed) {
        closeQuietly(outer);
        continue;
      }
      this.#live.add(outer);
      this.#track(this.#relay(outer));
    }
  }

  /** Relay one client connection to the TLS listener, recording both directions. */
  async #relay(outer: Deno.TcpConn): Promise<void> {
    const rec = this.#newRecord();
    this.#partStarted(rec);
    const rawIn = new _Bytes();
    const rawOut = new _Bytes();
    rec.rawIn = rawIn.bytes();
    rec.rawOut = rawOut.bytes();
    let inner: Deno.TcpConn | null = null;
    try {
      inner = await dial("127.0.0.1", this.#tls.addr.port, 5000);
      const port = inner.localAddr.port;
      const waiter = this.#tapWaiters.get(port);
      if (waiter) {
        this.#tapWaiters.delete(port);
        waiter(rec);
      } else {
        this.#tapByPort.set(port, rec); // Taken by #tapRecord when the TLS side accepts.
      }
      this.#live.add(inner);
      const a = inner;
      const closeBoth = () => {
        closeQuietly(outer);
        closeQuietly(a);
      };
      await Promise.all([
        // Client -> site: a FIN is passed on; when the site is gone, stop and let the other
        // direction deliver what the site sent last (an alert) before closing.
        _pipe(outer, a, (chunk) => {
          rawIn.push(chunk);
          rec.rawIn = rawIn.bytes();
        }, { onEof: () => a.closeWrite(), onReadError: closeBoth, onWriteError: () => {} }),
        // Site -> client: when the site is done, so is the connection.
        _pipe(a, outer, (chunk) => {
          rawOut.push(chunk);
          rec.rawOut = rawOut.bytes();
        }, { onEof: closeBoth, onReadError: closeBoth, onWriteError: closeBoth }),
      ]);
    } catch (e) {
      rec.error ??= _errorText(e);
    } finally {
      closeQuietly(outer);
      this.#live.delete(outer);
      if (inner) {
        closeQuietly(inner);
        this.#live.delete(inner);
      }
      this.#partEnded(rec);
    }
  }
}

/**
 * Copy `from` to `to` until EOF (then `onEof`), a read error (then `onReadError`) or a write
 * error (then `onWriteError`); never rejects.
 */
async function _pipe(
  from: Deno.TcpConn,
  to: Deno.TcpConn,
  onData: (chunk: Uint8Array) => void,
  handlers: { onEof: () => unknown; onReadError: () => void; onWriteError: () => void },
): Promise<void> {
  const buf = new Uint8Array(65536);
  while (true) {
    let n: number | null;
    try {
      n = await from.read(buf);
    } catch {
      handlers.onReadError();
      return;
    }
    if (n === null) break;
    onData(buf.subarray(0, n));
    try {
      await writeAll(to, buf.subarray(0, n));
    } catch {
      handlers.onWriteError();
      return;
    }
  }
  try {
    await handlers.onEof();
  } catch {
    // The other side is already closed.
  }
}

/**
 * Start a local HTTPS site on 127.0.0.1 (a fresh port) with a self-signed certificate.
 *
 * @example Usage
 * ```ts ignore
 * const site = await startHttpsSite({ names: ["example.com"] });
 * const res = await fetchThrough(site.port, { sni: "example.com", caCertPem: site.certPem });
 * await site.close();
 * ```
 */
export async function startHttpsSite(options: HttpsSiteOptions = {}): Promise<HttpsSite> {
  const names = options.names ?? ["example.com"];
  const { certPem, keyPem } = await makeSelfSignedCert(
    options.days === undefined ? { names } : { names, days: options.days },
  );
  const body = options.body ?? `<html>real site ${names[0]}</html>`;
  return new _Site(names, body, certPem, keyPem, options.direct ?? false, options.alpnProtocols);
}

// --- Clients ------------------------------------------------------------------------------

/** Options for {@linkcode fetchThrough}. */
export interface FetchThroughOptions {
  /** Server name: sent as SNI and checked against the certificate. */
  sni: string;
  /** The only extra trust anchor (the site's `certPem`). */
  caCertPem: string;
  /** Request path. @default "/" */
  path?: string;
  /** Host header. @default sni */
  host?: string;
  /** Where to connect. @default "127.0.0.1" */
  hostname?: string;
  /** Overall deadline. @default 5000 */
  timeoutMs?: number;
}

/** A parsed HTTP/1.x response. */
export interface FetchResult {
  /** Status code. */
  status: number;
  /** Header names lower-cased (last value wins). */
  headers: Record<string, string>;
  /** Body (decoded as UTF-8). */
  body: string;
  /** The whole response as received. */
  raw: Uint8Array;
}

/**
 * HTTPS GET over a plain TCP connection to `hostname:port` (default 127.0.0.1), upgraded with
 * Deno.startTls: SNI = `sni`, verified against `caCertPem` only for that name (no DNS). Reads
 * until the server closes and parses the response.
 *
 * Deno.TlsConn does not expose the peer certificate; a successful handshake here proves the
 * server presented a certificate chaining to `caCertPem` and valid for `sni` (use
 * {@linkcode peerCertificate} to get the certificate itself).
 */
export async function fetchThrough(
  port: number,
  options: FetchThroughOptions,
): Promise<FetchResult> {
  const timeoutMs = options.timeoutMs ?? 5000;
  const host = options.hostname ?? "127.0.0.1";
  const tcp = await dial(host, port, timeoutMs);
  let conn: Deno.Conn = tcp;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    closeQuietly(conn);
  }, timeoutMs);
  const raw = new _Bytes();
  try {
    const tlsConn = await Deno.startTls(tcp, {
      hostname: options.sni,
      caCerts: [options.caCertPem],
    });
    conn = tlsConn;
    await tlsConn.handshake();
    const request =
      `GET ${options.path ?? "/"} HTTP/1.1\r\nHost: ${options.host ?? options.sni}\r\n` +
      `User-Agent: mtproxy-tests\r\nAccept: */*\r\nConnection: close\r\n\r\n`;
    await writeAll(tlsConn, enc.encode(request));
    const buf = new Uint8Array(65536);
    let readError: unknown = null;
    try {
      while (true) {
        const n = await tlsConn.read(buf);
        if (n === null) break;
        raw.push(buf.subarray(0, n));
      }
    } catch (e) {
      readError = e;
    }
    if (timedOut) throw new Error(`fetchThrough timed out after ${timeoutMs} ms`);
    const parsed = _parseResponse(raw.bytes());
    // A close without close_notify is fine once a Content-Length body is complete.
    if (readError !== null && !parsed?.complete) throw readError;
    if (!parsed) {
      throw new Error(`Not an HTTP response: ${JSON.stringify(dec.decode(raw.bytes()))}`);
    }
    return parsed.result;
  } catch (e) {
    if (timedOut) throw new Error(`fetchThrough timed out after ${timeoutMs} ms`);
    throw e;
  } finally {
    clearTimeout(timer);
    closeQuietly(conn);
  }
}

function _parseResponse(raw: Uint8Array): { result: FetchResult; complete: boolean } | null {
  const headEnd = _indexOfBlankLine(raw, raw.length);
  if (headEnd < 0) return null;
  const [statusLine = "", ...lines] = dec.decode(raw.subarray(0, headEnd - 4)).split("\r\n");
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(statusLine);
  if (!m) return null;
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const i = line.indexOf(":");
    if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
  }
  const bodyBytes = raw.subarray(headEnd);
  const length = headers["content-length"];
  const complete = length !== undefined && bodyBytes.length >= Number(length);
  return {
    result: { status: Number(m[1]), headers, body: dec.decode(bodyBytes), raw },
    complete,
  };
}

/** How a {@linkcode rawProbe} connection ended. */
export type ProbeEnd = "eof" | "reset" | "timeout";

/** What a raw probe saw. */
export interface RawProbeResult {
  /** Everything received, in order. */
  bytes: Uint8Array;
  /** The peer closed (FIN), reset/aborted, or nothing ended it before the deadline. */
  end: ProbeEnd;
  /** Milliseconds from connect to the end. */
  ms: number;
}

/** Options for {@linkcode rawProbe}. */
export interface RawProbeOptions {
  /** Where to connect. @default "127.0.0.1" */
  hostname?: string;
  /** Send a FIN after the bytes (shutdown write). @default false */
  halfClose?: boolean;
}

/**
 * Connect, write `bytes`, and read until the peer closes or `timeoutMs` passes; then close.
 * Write errors (the peer already reset) are ignored: what came back is the answer.
 */
export async function rawProbe(
  port: number,
  bytes: Uint8Array,
  timeoutMs: number,
  options: RawProbeOptions = {},
): Promise<RawProbeResult> {
  const started = performance.now();
  const conn = await dial(options.hostname ?? "127.0.0.1", port, timeoutMs);
  const got = new _Bytes();
  let end: ProbeEnd | null = null;
  const timer = setTimeout(() => {
    end ??= "timeout";
    closeQuietly(conn);
  }, timeoutMs);
  try {
    const reading = (async () => {
      const buf = new Uint8Array(65536);
      try {
        while (true) {
          const n = await conn.read(buf);
          if (n === null) {
            end ??= "eof";
            return;
          }
          got.push(buf.subarray(0, n));
        }
      } catch (e) {
        end ??= e instanceof Deno.errors.BadResource || e instanceof Deno.errors.Interrupted
          ? "timeout"
          : "reset";
      }
    })();
    try {
      await writeAll(conn, bytes);
      if (options.halfClose) await conn.closeWrite();
    } catch {
      // The peer may close or reset before taking everything.
    }
    await reading;
  } finally {
    clearTimeout(timer);
    closeQuietly(conn);
  }
  return { bytes: got.bytes(), end: end ?? "eof", ms: performance.now() - started };
}

/** Write raw `bytes` and return everything received until the peer closes or `timeoutMs`. */
export async function rawExchange(
  port: number,
  bytes: Uint8Array,
  timeoutMs: number,
): Promise<Uint8Array> {
  return (await rawProbe(port, bytes, timeoutMs)).bytes;
}

/** Options for {@linkcode peerCertificate}. */
export interface PeerCertificateOptions {
  /** SNI to send (nothing is verified). */
  sni: string;
  /** Where to connect. @default "127.0.0.1" */
  hostname?: string;
  /** @default 5000 */
  timeoutMs?: number;
}

/**
 * The certificate a TLS server at `hostname:port` presents for `sni`, as PEM, fetched without
 * verifying it (node:tls `getPeerCertificate`; Deno.TlsConn has no such accessor).
 */
export function peerCertificate(port: number, options: PeerCertificateOptions): Promise<string> {
  const timeoutMs = options.timeoutMs ?? 5000;
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host: options.hostname ?? "127.0.0.1",
      port,
      servername: options.sni,
      rejectUnauthorized: false,
    });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`peerCertificate timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once("secureConnect", () => {
      clearTimeout(timer);
      const der = new Uint8Array(socket.getPeerCertificate(false).raw);
      socket.destroy();
      const b64 = btoa(Array.from(der, (b) => String.fromCharCode(b)).join(""));
      const lines = b64.match(/.{1,64}/g) ?? [];
      resolve(`-----BEGIN CERTIFICATE-----\n${lines.join("\n")}\n-----END CERTIFICATE-----\n`);
    });
    socket.once("error", (e) => {
      clearTimeout(timer);
      socket.destroy();
      reject(e);
    });
  });
}
