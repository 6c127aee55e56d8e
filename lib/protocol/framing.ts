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

/** Decode one abridged frame: a length in 4-byte words, short (1 byte) or long (`7f` + u24). */
export function decodeAbridged(buf: Uint8Array): Step<Packet> {
  if (buf.length < 1) return { kind: "need", atLeast: 1 };
  const first = buf[0]!;
  const quickAck = (first & 0x80) !== 0;
  let words = first & 0x7f;
  let head = 1;
  if (words === 0x7f) {
    if (buf.length < 4) return { kind: "need", atLeast: 4 };
    words = buf[1]! | (buf[2]! << 8) | (buf[3]! << 16);
    if (words < 0x7f) return { kind: "reject", reason: "frame_overlong" };
    head = 4;
  }
  const len = words * 4;
  if (len > MAX_FRAME_BYTES) return { kind: "reject", reason: "frame_too_large" };
  if (buf.length < head + len) return { kind: "need", atLeast: head + len };
  return {
    kind: "frame",
    frame: { payload: buf.subarray(head, head + len), quickAck },
    rest: buf.subarray(head + len),
  };
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

function _decodeLengthPrefixed(buf: Uint8Array, padded: boolean): Step<Packet> {
  if (buf.length < 4) return { kind: "need", atLeast: 4 };
  const raw = readU32(buf, 0);
  const quickAck = (raw & 0x80000000) !== 0;
  const len = raw & 0x7fffffff;
  if (len > MAX_FRAME_BYTES) return { kind: "reject", reason: "frame_too_large" };
  if (!padded && len % 4 !== 0) return { kind: "reject", reason: "frame_misaligned" };
  if (buf.length < 4 + len) return { kind: "need", atLeast: 4 + len };
  // Padded: the client added 0..15 random bytes; only len % 4 of them can be told apart.
  const keep = padded ? len & ~3 : len;
  return {
    kind: "frame",
    frame: { payload: buf.subarray(4, 4 + keep), quickAck },
    rest: buf.subarray(4 + len),
  };
}

/** Decode one intermediate frame: u32 LE length (bit 31 = quick ack) and payload. */
export function decodeIntermediate(buf: Uint8Array): Step<Packet> {
  return _decodeLengthPrefixed(buf, false);
}

/** Decode one padded-intermediate frame, dropping the `len % 4` padding bytes. */
export function decodePadded(buf: Uint8Array): Step<Packet> {
  return _decodeLengthPrefixed(buf, true);
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

/** Decode one frame of the given transport. */
export function decodeFrame(tag: TransportTag, buf: Uint8Array): Step<Packet> {
  if (tag === "abridged") return decodeAbridged(buf);
  return _decodeLengthPrefixed(buf, tag === "padded");
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
  const pad = tag === "padded" ? padding : padding.subarray(0, 0);
  writeU32(out, off, payload.length + pad.length);
  out.set(payload, off + 4);
  out.set(pad, off + 4 + payload.length);
}
