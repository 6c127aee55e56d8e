/**
 * Transport framings that run inside obfuscated2: abridged (`ef`), intermediate (`ee`) and
 * padded intermediate (`dd`), plus the quick-ack tokens sent back to clients. Decoders are
 * pure step functions over the bytes received so far.
 *
 * @module
 */
import { readU32, writeU32 } from "./bytes.ts";
import type { TransportTag } from "./obfuscated2.ts";

/** Why a decoder refused its input. */
export type FrameRejectReason = "frame_too_large" | "frame_overlong" | "frame_misaligned";

/** One decoder step: a frame, a request for more bytes, or a refusal. */
export type Step<T> =
  | { kind: "frame"; frame: T; rest: Uint8Array }
  | { kind: "need"; atLeast: number }
  | { kind: "reject"; reason: FrameRejectReason };

/** A decoded client packet. */
export interface Packet {
  /** The MTProto packet (a view into the input). */
  readonly payload: Uint8Array;
  /** The client asked Telegram to confirm receipt (quick ack). */
  readonly quickAck: boolean;
}

/** Largest packet accepted from a client (the Erlang proxy's limit). */
export const MAX_FRAME_BYTES = 1 << 20;

/**
 * Where {@linkcode scanFrame} found a frame (offsets into the scanned buffer), how many bytes it
 * still needs, or why it refused. One instance is reused for every scan: nothing is allocated
 * per frame, which matters when middle-proxy mode unframes every client packet.
 */
export class FrameSpan {
  /** The payload is `[payloadStart, payloadEnd)` (without the padding that can be told apart). */
  payloadStart = 0;
  payloadEnd = 0;
  /** With "frame": where the next frame starts. With "need": the buffer must reach this offset. */
  end = 0;
  quickAck = false;
  reason: FrameRejectReason | null = null;
}

/** What {@linkcode scanFrame} found. */
export type ScanResult = "frame" | "need" | "reject";

/** Scan one frame of `tag` starting at `buf[off]`, filling `span`. */
export function scanFrame(
  tag: TransportTag,
  buf: Uint8Array,
  off: number,
  span: FrameSpan,
): ScanResult {
  const avail = buf.length - off;
  let head: number;
  let len: number;
  let keep: number;
  if (tag === "abridged") {
    // A length in 4-byte words: short (1 byte, bit 7 = quick ack) or long (`7f` + u24).
    if (avail < 1) return _need(span, off + 1);
    const first = buf[off]!;
    span.quickAck = (first & 0x80) !== 0;
    let words = first & 0x7f;
    head = 1;
    if (words === 0x7f) {
      if (avail < 4) return _need(span, off + 4);
      words = buf[off + 1]! | (buf[off + 2]! << 8) | (buf[off + 3]! << 16);
      if (words < 0x7f) return _reject(span, "frame_overlong");
      head = 4;
    }
    len = words * 4;
    if (len > MAX_FRAME_BYTES) return _reject(span, "frame_too_large");
    keep = len;
  } else {
    // u32 LE length, bit 31 = quick ack.
    if (avail < 4) return _need(span, off + 4);
    const raw = readU32(buf, off);
    span.quickAck = (raw & 0x80000000) !== 0;
    len = raw & 0x7fffffff;
    head = 4;
    if (len > MAX_FRAME_BYTES) return _reject(span, "frame_too_large");
    if (tag === "intermediate" && len % 4 !== 0) return _reject(span, "frame_misaligned");
    // Padded: the client added 0..15 random bytes; only len % 4 of them can be told apart.
    keep = tag === "padded" ? len & ~3 : len;
  }
  if (avail < head + len) return _need(span, off + head + len);
  span.payloadStart = off + head;
  span.payloadEnd = off + head + keep;
  span.end = off + head + len;
  span.reason = null;
  return "frame";
}

function _need(span: FrameSpan, end: number): ScanResult {
  span.end = end;
  return "need";
}

function _reject(span: FrameSpan, reason: FrameRejectReason): ScanResult {
  span.reason = reason;
  return "reject";
}

/** Decode one frame of `tag` from the start of `buf` (see {@linkcode scanFrame}). */
export function decodeFrame(tag: TransportTag, buf: Uint8Array): Step<Packet> {
  const span = new FrameSpan();
  const r = scanFrame(tag, buf, 0, span);
  if (r === "need") return { kind: "need", atLeast: span.end };
  if (r === "reject") return { kind: "reject", reason: span.reason! };
  return {
    kind: "frame",
    frame: { payload: buf.subarray(span.payloadStart, span.payloadEnd), quickAck: span.quickAck },
    rest: buf.subarray(span.end),
  };
}

/** Decode one abridged frame: a length in 4-byte words, short (1 byte) or long (`7f` + u24). */
export function decodeAbridged(buf: Uint8Array): Step<Packet> {
  return decodeFrame("abridged", buf);
}

/** Encode one abridged frame (payload length must be a multiple of 4). */
export function encodeAbridged(payload: Uint8Array): Uint8Array {
  if (payload.length % 4 !== 0) {
    throw new RangeError(`Abridged payload must be a multiple of 4 bytes: got ${payload.length}`);
  }
  const words = payload.length / 4;
  const head = words < 0x7f ? 1 : 4;
  const out = new Uint8Array(head + payload.length);
  if (head === 1) {
    out[0] = words;
  } else {
    out[0] = 0x7f;
    out[1] = words & 0xff;
    out[2] = (words >>> 8) & 0xff;
    out[3] = (words >>> 16) & 0xff;
  }
  out.set(payload, head);
  return out;
}

/** Decode one intermediate frame: u32 LE length (bit 31 = quick ack) and payload. */
export function decodeIntermediate(buf: Uint8Array): Step<Packet> {
  return decodeFrame("intermediate", buf);
}

/** Decode one padded-intermediate frame, dropping the `len % 4` padding bytes. */
export function decodePadded(buf: Uint8Array): Step<Packet> {
  return decodeFrame("padded", buf);
}

/** Encode one intermediate frame. */
export function encodeIntermediate(payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + payload.length);
  writeU32(out, 0, payload.length);
  out.set(payload, 4);
  return out;
}

/** Encode one padded-intermediate frame with the given 0..3 padding bytes. */
export function encodePadded(payload: Uint8Array, padding: Uint8Array): Uint8Array {
  if (padding.length > 3) throw new RangeError(`Padding must be 0-3 bytes: got ${padding.length}`);
  const out = new Uint8Array(4 + payload.length + padding.length);
  writeU32(out, 0, payload.length + padding.length);
  out.set(payload, 4);
  out.set(padding, 4 + payload.length);
  return out;
}

/**
 * Encode one frame of the given transport; `padding` (0-3 bytes) is used only by `padded`.
 */
export function encodeFrame(
  tag: TransportTag,
  payload: Uint8Array,
  padding: Uint8Array = new Uint8Array(0),
): Uint8Array {
  if (tag === "abridged") return encodeAbridged(payload);
  if (tag === "intermediate") return encodeIntermediate(payload);
  return encodePadded(payload, padding);
}

/**
 * The quick-ack token a client expects for a confirmed packet: sent with no length prefix,
 * byte-reversed for abridged, as is for the intermediate transports.
 */
export function quickAckToken(tag: TransportTag, confirm: Uint8Array): Uint8Array {
  const out = confirm.slice(0, 4);
  return tag === "abridged" ? out.reverse() : out;
}

/** Length of a frame of `payloadLen` bytes plus `padLen` padding (padded only) in `tag`. */
export function frameLength(tag: TransportTag, payloadLen: number, padLen = 0): number {
  if (tag === "abridged") return (payloadLen / 4 < 0x7f ? 1 : 4) + payloadLen;
  return 4 + payloadLen + (tag === "padded" ? padLen : 0);
}

/**
 * Write one frame into `out` at `off` (exactly {@linkcode frameLength} bytes), so a caller can
 * leave room around it (e.g. for TLS record headers) without a second copy.
 */
export function writeFrame(
  tag: TransportTag,
  payload: Uint8Array,
  padding: Uint8Array,
  out: Uint8Array,
  off: number,
): void {
  if (tag === "abridged") {
    if (payload.length % 4 !== 0) {
      throw new RangeError(`Abridged payload must be a multiple of 4 bytes: got ${payload.length}`);
    }
    const words = payload.length / 4;
    if (words < 0x7f) {
      out[off] = words;
      out.set(payload, off + 1);
    } else {
      out[off] = 0x7f;
      out[off + 1] = words & 0xff;
      out[off + 2] = (words >>> 8) & 0xff;
      out[off + 3] = (words >>> 16) & 0xff;
      out.set(payload, off + 4);
    }
    return;
  }
  const padLen = tag === "padded" ? padding.length : 0;
  writeU32(out, off, payload.length + padLen);
  out.set(payload, off + 4);
  if (padLen > 0) out.set(padding, off + 4 + payload.length);
}
