/**
 * Sockets: the only module (with crypto.ts) that touches runtime networking APIs.
 *
 * @module
 */

/** A TCP connection. */
export type Conn = Deno.TcpConn;

/** A TCP listener. */
export type Listener = Deno.TcpListener;

/** Start listening on `host:port` (port 0 picks a free port). */
export function listenTcp(host: string, port: number): Listener {
  return Deno.listen({ hostname: host, port, transport: "tcp" });
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

/** Close a connection, ignoring "already closed". */
export function closeQuietly(conn: { close(): void }): void {
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
