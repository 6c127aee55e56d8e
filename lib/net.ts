/**
 * Sockets: the only module (with crypto.ts) that touches runtime networking APIs.
 *
 * @module
 */

/** A TCP connection. */
export type Conn = Deno.TcpConn;

/** A TCP listener. */
export type Listener = Deno.TcpListener;

/**
 * Start listening on `host:port` (port 0 picks a free port). With `reusePort`, other sockets
 * (worker threads, or the next process during an upgrade) may listen on the same port and the
 * kernel spreads new connections over them (SO_REUSEPORT; Deno needs --unstable-net).
 */
export function listenTcp(
  host: string,
  port: number,
  options: { reusePort?: boolean } = {},
): Listener {
  if (options.reusePort) return Deno.listen({ hostname: host, port, reusePort: true });
  return Deno.listen({ hostname: host, port, transport: "tcp" });
}

let reusePortProbe: string | null | undefined;

/**
 * Why sockets cannot share a port here (no --unstable-net, or an OS without SO_REUSEPORT
 * load balancing), or null when they can. Probed once on 127.0.0.1.
 */
export function reusePortUnavailable(): string | null {
  if (reusePortProbe !== undefined) return reusePortProbe;
  if (Deno.build.os !== "linux" && Deno.build.os !== "freebsd") {
    return reusePortProbe = `${Deno.build.os} does not spread connections over shared ports`;
  }
  try {
    const a = Deno.listen({ hostname: "127.0.0.1", port: 0, reusePort: true });
    try {
      const b = Deno.listen({
        hostname: "127.0.0.1",
        port: (a.addr as Deno.NetAddr).port,
        reusePort: true,
      });
      b.close();
    } finally {
      a.close();
    }
    reusePortProbe = null;
  } catch (e) {
    reusePortProbe = e instanceof Error ? e.message : String(e);
  }
  return reusePortProbe;
}

/** Error raised when a dial does not finish in time. */
export class DialTimeoutError extends Error {
  constructor(host: string, port: number, ms: number) {
    super(`Connect to ${formatHostPort(host, port)} timed out after ${ms} ms`);
    this.name = "DialTimeoutError";
  }
}

/** Dial `host:port` within `timeoutMs`; also gives up when `signal` aborts. */
export async function dialTcp(
  host: string,
  port: number,
  options: { timeoutMs: number; signal?: AbortSignal },
): Promise<Conn> {
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, options.timeoutMs);
  const onAbort = () => controller.abort();
  options.signal?.addEventListener("abort", onAbort, { once: true });
  try {
    const conn = await Deno.connect({
      hostname: host,
      port,
      transport: "tcp",
      signal: controller.signal,
    });
    conn.setNoDelay(true);
    return conn;
  } catch (e) {
    if (timedOut) throw new DialTimeoutError(host, port, options.timeoutMs);
    throw e;
  } finally {
    clearTimeout(timer);
    options.signal?.removeEventListener("abort", onAbort);
  }
}

/** Write every byte of `data`, however many calls the socket needs. */
export async function writeAll(
  conn: { write(data: Uint8Array): Promise<number> },
  data: Uint8Array,
): Promise<void> {
  let off = 0;
  while (off < data.length) off += await conn.write(data.subarray(off));
}

/**
 * Connections closeQuietly has closed: closing one again would throw BadResource, and building
 * that error (with its stack) costs more than the close (about a tenth of a direct session's CPU).
 */
const _closed = new WeakSet<object>();

/** Close a connection, ignoring "already closed". */
export function closeQuietly(conn: { close(): void }): void {
  if (_closed.has(conn)) return;
  _closed.add(conn);
  try {
    conn.close();
  } catch {
    // Already closed.
  }
}

/** `host:port`, with brackets around an IPv6 literal. */
export function formatHostPort(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

/** The remote address of a connection as `host:port`. */
export function remoteAddress(conn: Conn): string {
  const a = conn.remoteAddr;
  return formatHostPort(a.hostname, a.port);
}
