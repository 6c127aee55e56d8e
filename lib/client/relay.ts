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
import {
  MAX_RECORD_PAYLOAD,
  RECORD_HEADER_LEN,
  type TlsRecordReader,
} from "../protocol/fake_tls.ts";
import { writeAll } from "../net.ts";

/** Buffer sizes by level: idle, active, bulk. */
const LEVEL_SIZES = [1024, RECORD_HEADER_LEN + MAX_RECORD_PAYLOAD, 65536] as const;
/** How many free buffers of each level the pool keeps. */
const POOL_CAPS = [4096, 256, 64] as const;

/** A free list of relay buffers per size level. */
export class BufferPool {
  #free: Uint8Array[][] = LEVEL_SIZES.map(() => []);

  /** A buffer of the given level (0 = smallest). */
  get(level: number): Uint8Array {
    return this.#free[level]!.pop() ?? new Uint8Array(LEVEL_SIZES[level]!);
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
  /** Called with the byte count of every chunk read, for idle tracking and traffic counters. */
  readonly onData: (bytes: number) => void;
}

/** How a pump ended. */
export type PumpEnd =
  | "eof"
  | "tls_unexpected_record"
  | "tls_bad_version"
  | "tls_malformed"
  | "tls_too_large";

/**
 * Move bytes from `src` to `dst` until `src` ends. Socket errors (a reset, or the other
 * direction closing the sockets) end the pump with "eof"; protocol errors name themselves.
 */
export async function pump(
  src: RelaySocket,
  dst: RelaySocket,
  options: PumpOptions,
): Promise<PumpEnd> {
  const { ciphers, unwrapTls, wrapTls, onData } = options;
  const headroom = wrapTls ? RECORD_HEADER_LEN : 0;
  // A TLS record carries at most 16384 bytes: one read fills one record, no copying.
  const maxLevel = wrapTls ? 1 : LEVEL_SIZES.length - 1;
  let level = 0;
  let buf = relayBuffers.get(level);
  try {
    while (true) {
      const room = Math.min(buf.length - headroom, wrapTls ? MAX_RECORD_PAYLOAD : buf.length);
      const n = await src.read(buf.subarray(headroom, headroom + room));
      if (n === null) return "eof";
      onData(n);
      let len = n;
      if (unwrapTls) {
        const out = unwrapTls.unwrap(buf.subarray(0, n));
        if (typeof out === "string") return out;
        len = out;
      }
      if (len > 0) {
        const data = buf.subarray(headroom, headroom + len);
        for (const c of ciphers) c.update(data);
        if (wrapTls) {
          buf[0] = 0x17;
          buf[1] = 0x03;
          buf[2] = 0x03;
          buf[3] = len >> 8;
          buf[4] = len & 0xff;
        }
        await writeAll(dst, buf.subarray(0, headroom + len));
      }
      if (n === room && level < maxLevel) {
        relayBuffers.put(level, buf);
        buf = relayBuffers.get(++level);
      } else if (n < LEVEL_SIZES[0] / 2 && level > 0) {
        relayBuffers.put(level, buf);
        level = 0;
        buf = relayBuffers.get(level);
      }
    }
  } catch {
    return "eof";
  } finally {
    relayBuffers.put(level, buf);
  }
}
