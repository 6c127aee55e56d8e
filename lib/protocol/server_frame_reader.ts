/**
 * Unframing of what a server (a Telegram DC) sends in a client transport, for the proxy acting
 * as the DC's client: packets in the transport's frames, plus quick-ack tokens, which carry no
 * length. Intermediate and padded send a token as a u32 LE with bit 31 set; abridged sends the
 * same 4 bytes reversed, so its first byte has bit 7 set. The client-direction decoders in
 * `framing.ts` read those bits as a quick-ack request instead, hence this separate scanner.
 *
 * Transport errors (a 4-byte frame holding a negative int32, such as −404) are ordinary
 * packets here: what to do with them is the caller's business.
 *
 * @module
 */
import { readU32 } from "./bytes.ts";
import { type FrameRejectReason, FrameSpan, MAX_FRAME_BYTES } from "./framing.ts";
import type { TransportTag } from "./obfuscated2.ts";

/** What {@linkcode scanServerFrame} found. */
export type ServerScanResult = "packet" | "quick_ack" | "need" | "reject";

/** Length of a quick-ack token on the wire (every transport). */
export const QUICK_ACK_TOKEN_LEN = 4;

/**
 * Largest padded frame accepted: a packet of {@linkcode MAX_FRAME_BYTES} plus the 0..15 bytes of
 * padding a sender may add.
 */
export const MAX_PADDED_SERVER_FRAME = MAX_FRAME_BYTES + 15;

/**
 * Scan one server-direction item of `tag` starting at `buf[off]`, filling `span`:
 * - "packet": the payload is `[payloadStart, payloadEnd)` (padded: rounded down to a multiple of
 *   4, the padding that can be told apart), the next item starts at `end`;
 * - "quick_ack": the token's 4 wire bytes are `[payloadStart, payloadEnd)` (see
 *   {@linkcode quickAckConfirm});
 * - "need": the buffer must reach `end`;
 * - "reject": `reason` says why (a length over the limit, or not a multiple of 4 in
 *   intermediate).
 *
 * The abridged long form with a short length (`7f 01 00 00`) is accepted: it is wasteful, not
 * ambiguous.
 *
 * @example Usage
 * ```ts
 * import { FrameSpan } from "./framing.ts";
 * import { scanServerFrame } from "./server_frame_reader.ts";
 * const span = new FrameSpan();
 * scanServerFrame("intermediate", Uint8Array.of(4, 0, 0, 0, 1, 2, 3, 4), 0, span); // "packet"
 * scanServerFrame("intermediate", Uint8Array.of(1, 2, 3, 0x84), 0, span); // "quick_ack"
 * ```
 */
export function scanServerFrame(
  tag: TransportTag,
  buf: Uint8Array,
  off: number,
  span: FrameSpan,
): ServerScanResult {
  const avail = buf.length - off;
  span.quickAck = false;
  let head: number;
  let len: number;
  let keep: number;
  if (tag === "abridged") {
    if (avail < 1) return _need(span, off + 1);
    const first = buf[off]!;
    if ((first & 0x80) !== 0) {
      if (avail < QUICK_ACK_TOKEN_LEN) return _need(span, off + QUICK_ACK_TOKEN_LEN);
      return _token(span, off);
    }
    let words = first;
    head = 1;
    if (words === 0x7f) {
      if (avail < 4) return _need(span, off + 4);
      words = buf[off + 1]! | (buf[off + 2]! << 8) | (buf[off + 3]! << 16);
      head = 4;
    }
    len = words * 4;
    if (len > MAX_FRAME_BYTES) return _reject(span, "frame_too_large");
    keep = len;
  } else {
    if (avail < 4) return _need(span, off + 4);
    const raw = readU32(buf, off);
    if ((raw & 0x80000000) !== 0) return _token(span, off);
    len = raw;
    head = 4;
    if (tag === "intermediate") {
      if (len > MAX_FRAME_BYTES) return _reject(span, "frame_too_large");
      if (len % 4 !== 0) return _reject(span, "frame_misaligned");
      keep = len;
    } else {
      if (len > MAX_PADDED_SERVER_FRAME) return _reject(span, "frame_too_large");
      keep = len & ~3;
    }
  }
  if (avail < head + len) return _need(span, off + head + len);
  span.payloadStart = off + head;
  span.payloadEnd = off + head + keep;
  span.end = off + head + len;
  span.reason = null;
  return "packet";
}

/**
 * The confirm of a quick-ack token as the intermediate transports carry it (the 4 bytes
 * `quickAckToken(tag, confirm)` in framing.ts expects), in a new array: abridged wire bytes are
 * reversed back, intermediate/padded ones copied as they are.
 *
 * @example Usage
 * ```ts
 * import { quickAckConfirm } from "./server_frame_reader.ts";
 * quickAckConfirm("abridged", Uint8Array.of(0x84, 3, 2, 1)); // Uint8Array [1, 2, 3, 0x84]
 * ```
 */
export function quickAckConfirm(tag: TransportTag, token: Uint8Array): Uint8Array {
  const out = token.slice(0, QUICK_ACK_TOKEN_LEN);
  return tag === "abridged" ? out.reverse() : out;
}

function _token(span: FrameSpan, off: number): ServerScanResult {
  span.quickAck = true;
  span.payloadStart = off;
  span.payloadEnd = off + QUICK_ACK_TOKEN_LEN;
  span.end = off + QUICK_ACK_TOKEN_LEN;
  span.reason = null;
  return "quick_ack";
}

function _need(span: FrameSpan, end: number): ServerScanResult {
  span.end = end;
  return "need";
}

function _reject(span: FrameSpan, reason: FrameRejectReason): ServerScanResult {
  span.reason = reason;
  return "reject";
}

/** One thing a server sent: a packet (a view) or a quick-ack confirm (a copy, intermediate form). */
export type ServerItem =
  | { readonly kind: "packet"; readonly data: Uint8Array }
  | { readonly kind: "quick_ack"; readonly confirm: Uint8Array };

/**
 * Reads packets and quick-ack tokens out of a server's plaintext stream, chunk by chunk. Items
 * wholly inside a chunk come out as views into it; only an item split across chunks is copied,
 * into a buffer that grows with what has arrived (never with the length a header claims).
 *
 * @example Usage
 * ```ts
 * import { ServerFrameReader } from "./server_frame_reader.ts";
 * const reader = new ServerFrameReader("abridged");
 * reader.push(Uint8Array.of(1, 9, 9)); // []
 * reader.push(Uint8Array.of(9, 9, 0x84, 3, 2, 1));
 * // [{ kind: "packet", data: [9, 9, 9, 9] }, { kind: "quick_ack", confirm: [1, 2, 3, 0x84] }]
 * ```
 */
export class ServerFrameReader {
  readonly #tag: TransportTag;
  readonly #span = new FrameSpan();
  /** Bytes of an incomplete item carried over from earlier chunks. */
  #pending: Uint8Array = _EMPTY;
  #pendingLen = 0;
  /** The carry-over buffer whose item the last `push` handed out, reused once that is used. */
  #handedOut: Uint8Array | null = null;

  constructor(tag: TransportTag) {
    this.#tag = tag;
  }

  /** Bytes held of an incomplete item. */
  get buffered(): number {
    return this.#pendingLen;
  }

  /**
   * Feed the next chunk. Returns the complete items (packet views valid until the next call)
   * or why the stream is broken (the reader is then unusable).
   */
  push(chunk: Uint8Array): ServerItem[] | FrameRejectReason {
    const out: ServerItem[] = [];
    const span = this.#span;
    const tag = this.#tag;
    if (this.#handedOut !== null) {
      // The caller is done with the last call's items. A large buffer is not kept.
      if (this.#pendingLen === 0 && this.#handedOut.length <= _KEEP_PENDING) {
        this.#pending = this.#handedOut;
      }
      this.#handedOut = null;
    }
    let off = 0;
    while (this.#pendingLen > 0) {
      const held = this.#pending.subarray(0, this.#pendingLen);
      const r = scanServerFrame(tag, held, 0, span);
      if (r === "reject") return span.reason!;
      if (r !== "need") {
        out.push(_item(tag, r, held, span));
        this.#handedOut = this.#pending;
        this.#pending = _EMPTY;
        this.#pendingLen = 0;
        break;
      }
      if (off === chunk.length) return out;
      const take = Math.min(span.end - this.#pendingLen, chunk.length - off);
      this.#hold(chunk.subarray(off, off + take), span.end);
      off += take;
    }
    while (off < chunk.length) {
      const r = scanServerFrame(tag, chunk, off, span);
      if (r === "reject") return span.reason!;
      if (r === "need") {
        this.#hold(chunk.subarray(off), span.end - off);
        break;
      }
      out.push(_item(tag, r, chunk, span));
      off = span.end;
    }
    return out;
  }

  /** Append `bytes` to the carried-over item, which will need `itemLen` bytes in all. */
  #hold(bytes: Uint8Array, itemLen: number): void {
    const need = this.#pendingLen + bytes.length;
    if (this.#pending.length < need) {
      const size = Math.min(Math.max(need, 2 * this.#pending.length, 256), itemLen);
      const bigger = new Uint8Array(size);
      bigger.set(this.#pending.subarray(0, this.#pendingLen));
      this.#pending = bigger;
    }
    this.#pending.set(bytes, this.#pendingLen);
    this.#pendingLen = need;
  }
}

const _EMPTY = new Uint8Array(0);

/** A carry-over buffer up to this size is kept for the next split item. */
const _KEEP_PENDING = 64 * 1024;

function _item(
  tag: TransportTag,
  r: "packet" | "quick_ack",
  buf: Uint8Array,
  span: FrameSpan,
): ServerItem {
  const bytes = buf.subarray(span.payloadStart, span.payloadEnd);
  return r === "packet"
    ? { kind: "packet", data: bytes }
    : { kind: "quick_ack", confirm: quickAckConfirm(tag, bytes) };
}
