/**
 * Socket helpers shared by the kit: a byte queue that a background reader fills and callers
 * wait on with timeouts (timeouts never cancel a read, so no op leaks), plus write/close helpers.
 *
 * @module
 */

import { closeQuietly, writeAll } from "../../lib/net.ts";

export { closeQuietly, writeAll };

/** Bytes read so far from one socket, with waiting by condition and deadline. */
export class ByteQueue {
  #buf = new Uint8Array(65536);
  #start = 0;
  #end = 0;
  #done = false;
  #error: Error | null = null;
  #waiters = new Set<() => void>();

  /** Bytes available. */
  get length(): number {
    return this.#end - this.#start;
  }

  /** The peer closed (or the read failed); no more bytes will arrive. */
  get done(): boolean {
    return this.#done;
  }

  /** The read error that ended the queue, or null after a clean EOF. */
  get error(): Error | null {
    return this.#error;
  }

  /** Append bytes (copied). */
  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    if (this.#start === this.#end) this.#start = this.#end = 0;
    if (this.#end + chunk.length > this.#buf.length) {
      const have = this.length;
      if (have + chunk.length <= this.#buf.length / 2) {
        this.#buf.copyWithin(0, this.#start, this.#end);
      } else {
        let size = this.#buf.length * 2;
        while (size < (have + chunk.length) * 2) size *= 2;
        const next = new Uint8Array(size);
        next.set(this.#buf.subarray(this.#start, this.#end));
        this.#buf = next;
      }
      this.#start = 0;
      this.#end = have;
    }
    this.#buf.set(chunk, this.#end);
    this.#end += chunk.length;
    this.#notify();
  }

  /** Mark the end of input; `error` when the read failed rather than hit EOF. */
  finish(error: Error | null = null): void {
    if (this.#done) return;
    this.#done = true;
    this.#error = error;
    this.#notify();
  }

  /** A view of the available bytes; valid until the next push or take. */
  view(): Uint8Array {
    return this.#buf.subarray(this.#start, this.#end);
  }

  /** Remove and return (a copy of) the first `n` bytes. */
  take(n: number): Uint8Array {
    if (n > this.length) throw new RangeError(`Cannot take ${n} bytes: only ${this.length} queued`);
    const out = this.#buf.slice(this.#start, this.#start + n);
    this.#start += n;
    return out;
  }

  /** Remove and return everything queued. */
  takeAll(): Uint8Array {
    return this.take(this.length);
  }

  /**
   * Wait until `ready()` holds. Rejects when input ends first (`Connection closed before
   * <what>`) or after `timeoutMs` (`Timed out after N ms waiting for <what>`).
   */
  wait(ready: () => boolean, timeoutMs: number, what: string): Promise<void> {
    if (ready()) return Promise.resolve();
    if (this.#done) return Promise.reject(this.#closedError(what));
    return new Promise((resolve, reject) => {
      const check = () => {
        if (ready()) {
          cleanup();
          resolve();
        } else if (this.#done) {
          cleanup();
          reject(this.#closedError(what));
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.#waiters.delete(check);
      };
      this.#waiters.add(check);
    });
  }

  /** Resolve once input has ended (never rejects). */
  ended(): Promise<void> {
    if (this.#done) return Promise.resolve();
    return new Promise((resolve) => {
      const check = () => {
        if (this.#done) {
          this.#waiters.delete(check);
          resolve();
        }
      };
      this.#waiters.add(check);
    });
  }

  #closedError(what: string): Error {
    const why = this.#error ? `: ${this.#error.message}` : "";
    return new Error(`Connection closed before ${what}${why}`);
  }

  #notify(): void {
    for (const w of [...this.#waiters]) w();
  }
}

/** Whether an error only says the socket was closed under a pending read or write. */
export function isClosedError(e: unknown): boolean {
  return e instanceof Deno.errors.BadResource || e instanceof Deno.errors.Interrupted ||
    e instanceof Deno.errors.ConnectionReset || e instanceof Deno.errors.BrokenPipe ||
    e instanceof Deno.errors.NotConnected || e instanceof Deno.errors.ConnectionAborted;
}

/** Dial 127.0.0.1 (or `host`) with a timeout; the timer is always cleared. */
export async function dial(host: string, port: number, timeoutMs: number): Promise<Deno.TcpConn> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  try {
    const conn = await Deno.connect({ hostname: host, port, signal: controller.signal });
    conn.setNoDelay(true);
    return conn;
  } catch (e) {
    if (controller.signal.aborted) {
      throw new Error(`Connect to ${host}:${port} timed out after ${timeoutMs} ms`);
    }
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

/** Read from `conn` into `queue` until EOF or error, passing each chunk through `transform`. */
export async function pumpInto(
  conn: Deno.Conn,
  queue: ByteQueue,
  transform: (chunk: Uint8Array) => Uint8Array = (c) => c,
): Promise<void> {
  const buf = new Uint8Array(65536);
  try {
    while (true) {
      const n = await conn.read(buf);
      if (n === null) break;
      queue.push(transform(buf.subarray(0, n)));
    }
    queue.finish();
  } catch (e) {
    queue.finish(isClosedError(e) ? null : e instanceof Error ? e : new Error(String(e)));
  }
}

/** A promise that resolves after `ms` (the timer always runs to completion). */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Waits for conditions on a fake server's state: `changed()` after every change re-checks them,
 * so no test polls.
 */
export class ChangeWaiters {
  readonly #waiters = new Set<() => void>();

  /** `what` names the server in the timeout error. */
  constructor(readonly what: string) {}

  /** Resolve once `condition` holds; reject after `timeoutMs`. */
  wait(condition: () => boolean, timeoutMs: number): Promise<void> {
    if (condition()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        if (condition()) {
          cleanup();
          resolve();
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`Timed out after ${timeoutMs} ms waiting for the ${this.what}`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.#waiters.delete(check);
      };
      this.#waiters.add(check);
    });
  }

  /** The state changed: re-check every pending condition. */
  changed(): void {
    if (this.#waiters.size === 0) return;
    for (const w of [...this.#waiters]) w();
  }
}
