/**
 * The bulk byte relay: a `read(buf)` / in-place cipher / `write` loop per direction, with reused
 * buffers. Web Streams cost twice the CPU and four times the memory here (perf-facts.md), so the
 * steady state stays on this loop.
 *
 * Buffers start small, so that idle connections (whose pending read pins its buffer) stay
 * light, step up while reads come back full and step down when traffic is sparse again. Larger
 * buffers are shared through a pool.
 *
 * @module
 */
import type { StreamCipher } from "../crypto.ts";
import { reportUnexpected } from "../ops/last_resort.ts";
import {
  MAX_RECORD_PAYLOAD,
  RECORD_HEADER_LEN,
  type TlsRecordReader,
} from "../protocol/fake_tls.ts";

/** Buffer sizes by level: idle, active, bulk. */
const LEVEL_SIZES = [512, 16384, 65536] as const;
/** How many free buffers of each level the pool keeps. */
const POOL_CAPS = [65536, 256, 64] as const;
/** Idle buffers are carved from slabs of this many: an ArrayBuffer apiece costs more in V8. */
const SLAB_COUNT = 128;

/** A free list of relay buffers per size level. */
export class BufferPool {
  #free: Uint8Array[][] = LEVEL_SIZES.map(() => []);

  /** A buffer of the given level (0 = smallest). */
  get(level: number): Uint8Array {
    const free = this.#free[level]!;
    const buf = free.pop();
    if (buf) return buf;
    const size = LEVEL_SIZES[level]!;
    if (level > 0) return new Uint8Array(size);
    const slab = new Uint8Array(size * SLAB_COUNT);
    for (let i = 1; i < SLAB_COUNT; i++) free.push(slab.subarray(i * size, (i + 1) * size));
    return slab.subarray(0, size);
  }

  /** Return a buffer obtained from {@linkcode get}. */
  put(level: number, buf: Uint8Array): void {
    const list = this.#free[level]!;
    if (list.length < POOL_CAPS[level]!) list.push(buf);
  }
}

/** Shared by every relay of the process. */
export const relayBuffers: BufferPool = new BufferPool();

/** Something a relay reads from and writes to. */
export interface RelaySocket {
  read(buf: Uint8Array): Promise<number | null>;
  write(buf: Uint8Array): Promise<number>;
}

/** One direction of a relay. */
export interface PumpOptions {
  /** Applied in order, in place, to every chunk (decrypt from the source, encrypt to the sink). */
  readonly ciphers: readonly StreamCipher[];
  /** Strip TLS record framing from what the source sends (fake-TLS client to proxy). */
  readonly unwrapTls?: TlsRecordReader;
  /** Wrap what goes to the sink in TLS ApplicationData records (proxy to fake-TLS client). */
  readonly wrapTls?: boolean;
  /** Told about traffic and the end (one host object for both directions: no closures). */
  readonly host: PumpHost;
  /** Which direction this is, passed back to the host. */
  readonly side: PumpSide;
  /** Looks at the data after the first `at` ciphers; may stop the pump (server error filter). */
  readonly inspect?: ChunkInspector;
}

/** Watches a pump's data. */
export interface ChunkInspector {
  /** How many of the pump's ciphers run before `check`. */
  readonly at: number;
  /** "stop" ends the pump with "server_error"; "done" means nothing more to look at. */
  check(data: Uint8Array): "ok" | "stop" | "done";
  /** Release resources; called when the pump ends while the inspector was still active. */
  close(): void;
}

/** The two directions of a relay. */
export type PumpSide = "client" | "dc";

/** Receives what pumps report. */
export interface PumpHost {
  /**
   * `bytes` were read from the source of `side`, for idle tracking and traffic counters. May
   * return how many ms to wait before reading that source again (a rate limit): the pump writes
   * what it has, then pauses, and asks again with 0 bytes when it wakes (waits are taken in
   * steps of at most {@linkcode MAX_PAUSE_MS}, so that a closed connection is noticed soon).
   */
  pumped(side: PumpSide, bytes: number): number | void;
  /**
   * The pump of `side` stopped. Called once per pump. `error` is what was thrown when `end` is
   * "internal_error".
   */
  pumpEnded(side: PumpSide, end: PumpEnd, error?: unknown): void;
}

/** How a pump ended. */
export type PumpEnd =
  | "eof"
  | "tls_unexpected_record"
  | "tls_bad_version"
  | "tls_malformed"
  | "tls_too_large"
  | "server_error"
  /** Something threw while handling a chunk (a cipher, the host, an inspector): a bug. */
  | "internal_error";

/**
 * Fault injection for tests: when set, each pump started afterwards passes its ciphers through
 * it (a test wraps one client's ciphers in one that throws). Read once per pump start; null in
 * production.
 */
export const pumpFaults: {
  ciphers: ((side: PumpSide, ciphers: readonly StreamCipher[]) => readonly StreamCipher[]) | null;
} = { ciphers: null };

/**
 * Move bytes from `src` to `dst` until `src` ends, then tell the host. Socket errors (a reset, or
 * the other direction closing the sockets) end the pump with "eof"; protocol errors name
 * themselves; anything thrown while handling a chunk ends it with "internal_error" (never as a
 * rejection nobody handles).
 *
 * The loop is written with callbacks rather than as an async function: it is parked on a read
 * for the whole life of an idle connection, and a suspended async function (generator, its
 * registers, await closures) costs about half a kilobyte more per direction.
 */
export function startPump(src: RelaySocket, dst: RelaySocket, options: PumpOptions): void {
  new _Pump(src, dst, options).read();
}

/** The longest single pause a host's wait makes; a longer wait is taken in steps. */
export const MAX_PAUSE_MS = 250;

/** Headers for up to four records: a 64 KiB read becomes at most four 16 KiB records. */
export const TLS_HEADROOM = RECORD_HEADER_LEN * Math.ceil(LEVEL_SIZES[2] / MAX_RECORD_PAYLOAD);

/**
 * Turn `len` bytes at `buf[headroom..]` into ApplicationData records of at most 16 KiB, in place:
 * each chunk moves left by the headers that precede it (the last one stays put), and the
 * headers go into the gaps. Returns where the records start. One write then carries them all,
 * instead of one system call per record.
 */
export function frameTlsRecords(buf: Uint8Array, headroom: number, len: number): number {
  const records = Math.ceil(len / MAX_RECORD_PAYLOAD);
  const start = headroom - RECORD_HEADER_LEN * records;
  for (let i = 0; i < records; i++) {
    const from = headroom + i * MAX_RECORD_PAYLOAD;
    const size = Math.min(MAX_RECORD_PAYLOAD, len - i * MAX_RECORD_PAYLOAD);
    const at = start + i * (RECORD_HEADER_LEN + MAX_RECORD_PAYLOAD);
    if (i < records - 1) buf.copyWithin(at + RECORD_HEADER_LEN, from, from + size);
    buf[at] = 0x17;
    buf[at + 1] = 0x03;
    buf[at + 2] = 0x03;
    buf[at + 3] = size >> 8;
    buf[at + 4] = size & 0xff;
  }
  return start;
}

class _Pump {
  readonly #src: RelaySocket;
  readonly #dst: RelaySocket;
  // The options, copied into fields: this object lives as long as the connection.
  readonly #ciphers: readonly StreamCipher[];
  readonly #unwrapTls: TlsRecordReader | undefined;
  readonly #wrapTls: boolean;
  readonly #host: PumpHost;
  readonly #side: PumpSide;
  #inspect: ChunkInspector | undefined;
  readonly #headroom: number;
  readonly #maxLevel: number;
  #level = 0;
  #buf: Uint8Array | null;
  /** What reads go into: the buffer after the headroom (made once per buffer, not per read). */
  #readView: Uint8Array | null = null;
  /** Bytes requested by the pending read, and bytes it returned. */
  #room = 0;
  #got = 0;
  /** The pending write: buf[#written, #end). */
  #written = 0;
  #end = 0;
  /** What the host asked to wait after the last read (ms), before reading again. */
  #wait = 0;

  constructor(src: RelaySocket, dst: RelaySocket, options: PumpOptions) {
    this.#src = src;
    this.#dst = dst;
    this.#ciphers = pumpFaults.ciphers?.(options.side, options.ciphers) ?? options.ciphers;
    this.#unwrapTls = options.unwrapTls;
    this.#wrapTls = options.wrapTls ?? false;
    this.#host = options.host;
    this.#side = options.side;
    this.#inspect = options.inspect;
    // Room in front for one record header per 16 KiB the read may bring (see frameTlsRecords).
    this.#headroom = this.#wrapTls ? TLS_HEADROOM : 0;
    this.#maxLevel = LEVEL_SIZES.length - 1;
    this.#buf = relayBuffers.get(0);
  }

  read(): void {
    const buf = this.#buf!;
    const headroom = this.#headroom;
    this.#room = buf.length - headroom;
    const view = headroom === 0 ? buf : (this.#readView ??= buf.subarray(headroom));
    try {
      this.#src.read(view).then(
        this.#onRead,
        this.#onFail,
      );
    } catch {
      this.#finish("eof");
    }
  }

  // The promise callbacks catch everything: a throw in them would reject a promise that nobody
  // handles, and Deno ends the process on that.
  #onRead = (n: number | null): void => {
    try {
      this.#handleRead(n);
    } catch (e) {
      this.#fail(e);
    }
  };

  #handleRead(n: number | null): void {
    if (n === null) return this.#finish("eof");
    const buf = this.#buf!;
    const headroom = this.#headroom;
    this.#wait = this.#host.pumped(this.#side, n) || 0;
    this.#got = n;
    let len = n;
    if (this.#unwrapTls) {
      const out = this.#unwrapTls.unwrap(buf.subarray(0, n));
      if (typeof out === "string") return this.#finish(out);
      len = out;
    }
    if (len === 0) return this.#next();
    const data = buf.subarray(headroom, headroom + len);
    const ciphers = this.#ciphers;
    const inspect = this.#inspect;
    if (inspect) {
      for (let i = 0; i < inspect.at; i++) ciphers[i]!.update(data);
      const verdict = inspect.check(data);
      if (verdict === "stop") return this.#finish("server_error");
      if (verdict === "done") this.#inspect = undefined;
      for (let i = inspect.at; i < ciphers.length; i++) ciphers[i]!.update(data);
    } else {
      for (const c of ciphers) c.update(data);
    }
    this.#written = this.#wrapTls ? frameTlsRecords(buf, headroom, len) : 0;
    this.#end = headroom + len;
    this.#write();
  }

  #write(): void {
    try {
      this.#dst.write(this.#buf!.subarray(this.#written, this.#end)).then(
        this.#onWritten,
        this.#onFail,
      );
    } catch {
      this.#finish("eof");
    }
  }

  #onWritten = (n: number): void => {
    try {
      this.#written += n;
      if (this.#written < this.#end) return this.#write();
      this.#next();
    } catch (e) {
      this.#fail(e);
    }
  };

  /** Resize the buffer to the traffic (step up after a full read, down when sparse), read on. */
  #next(): void {
    const n = this.#got;
    if (n === this.#room && this.#level < this.#maxLevel) {
      relayBuffers.put(this.#level, this.#buf!);
      this.#buf = relayBuffers.get(++this.#level);
      this.#readView = null;
    } else if (n < LEVEL_SIZES[0] / 2 && this.#level > 0) {
      relayBuffers.put(this.#level, this.#buf!);
      this.#level = 0;
      this.#buf = relayBuffers.get(0);
      this.#readView = null;
    }
    if (this.#wait > 0) return this.#pause();
    this.read();
  }

  /** Wait as the host asked (its source's bytes stay in the socket meanwhile), then read on. */
  #pause(): void {
    const ms = Math.min(this.#wait, MAX_PAUSE_MS);
    this.#wait = 0;
    setTimeout(this.#wake, ms);
  }

  #wake = (): void => {
    try {
      if (this.#buf === null) return;
      // Ask again: other connections of the same user may have spent the time meanwhile.
      this.#wait = this.#host.pumped(this.#side, 0) || 0;
      if (this.#wait > 0) return this.#pause();
      this.read();
    } catch (e) {
      this.#fail(e);
    }
  };

  #onFail = (): void => {
    try {
      this.#finish("eof");
    } catch (e) {
      this.#fail(e);
    }
  };

  /** Something threw: end with "internal_error", or report it if the host threw while ending. */
  #fail(e: unknown): void {
    if (this.#buf !== null) {
      try {
        this.#finish("internal_error", e);
        return;
      } catch (e2) {
        e = e2;
      }
    }
    reportUnexpected(`Relay (${this.#side} side): the host failed at the end of a pump`, e);
  }

  #finish(end: PumpEnd, error?: unknown): void {
    if (this.#buf === null) return;
    const inspect = this.#inspect;
    this.#inspect = undefined;
    relayBuffers.put(this.#level, this.#buf);
    this.#buf = null;
    this.#readView = null;
    try {
      inspect?.close();
    } finally {
      if (end === "internal_error") this.#host.pumpEnded(this.#side, end, error);
      else this.#host.pumpEnded(this.#side, end);
    }
  }
}
