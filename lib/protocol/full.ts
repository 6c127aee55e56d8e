/**
 * The full codec used toward middle proxies (protocol.md §4.4):
 * `len u32 LE | seq i32 LE | body | crc32 u32 LE`, then optional `04 00 00 00` padding words up
 * to a multiple of 16 bytes. Sequence numbers start at -2 in each direction.
 *
 * Three layers, each usable alone:
 * - {@linkcode decodeFull} / {@linkcode encodeFull}: pure functions over one frame;
 * - {@linkcode FullDecoder} / {@linkcode FullEncoder}: keep the sequence numbers and, for the
 *   decoder, the bytes of a frame split across chunks;
 * - {@linkcode FullCodec}: the same plus the AES-CBC ciphers of an RPC connection, switched on
 *   after the plaintext nonce exchange.
 *
 * @module
 */
import { concatBytes, readU32, writeU32 } from "./bytes.ts";
import type { StreamCipher } from "../crypto.ts";
import { crc32, crc32Known, crc32Range, crc32Words } from "./crc32.ts";

/** Why the full decoder refused its input. */
export type FullRejectReason = "bad_length" | "bad_crc" | "bad_seq";

/** One decoded full-codec frame. */
export interface FullFrame {
  /** Sequence number carried by the frame. */
  readonly seq: number;
  /** The body (a view into the input). */
  readonly body: Uint8Array;
}

/** One decoder step: a frame, a request for more bytes, or a refusal. */
export type FullStep =
  | { kind: "frame"; frame: FullFrame; rest: Uint8Array }
  | { kind: "need"; atLeast: number }
  | { kind: "reject"; reason: FullRejectReason };

/** Options for {@linkcode decodeFull}. */
export interface DecodeFullOptions {
  /** Refuse the frame (`bad_seq`) when its seq differs. @default no check */
  expectedSeq?: number;
  /** Verify the CRC (Erlang's `mtp_full_check_crc32`). @default true */
  checkCrc?: boolean;
}

/** What a decoder produced from one chunk: the frames, and the refusal that stopped it. */
export interface FullDecodeResult {
  /** Bodies decoded, in order (views into the input or into the decoder's own buffers). */
  frames: Uint8Array[];
  /** Set when the stream is broken; the decoder then refuses everything after it. */
  reject: FullRejectReason | null;
}

/**
 * Receives decoded bodies without an array of them: body `i` is `buf[start, end)`, valid as
 * long as a body from {@linkcode FullDecoder.push} would be. The decoder makes one view per
 * frame, of the body past its first `skip` bytes (an RPC answer's type, flags and connection
 * id, say), and checks the CRC over it, so that neither side needs another.
 */
export interface FullFrameSink {
  /** Bytes at the front of each body that `tail` leaves out. */
  readonly skip: number;
  /** `tail` is `buf[min(start + skip, end), end)`. */
  frame(buf: Uint8Array, start: number, end: number, tail: Uint8Array): void;
}

/** Bytes of `len`, `seq` and `crc` around a body. */
export const FULL_OVERHEAD = 12;
/** Largest `len` a frame may declare (2^24). */
export const MAX_FULL_LEN = 1 << 24;
/** Largest body a frame can carry. */
export const MAX_FULL_BODY = MAX_FULL_LEN - FULL_OVERHEAD;
/** Sequence number of the first frame in each direction. */
export const FIRST_SEQ = -2;

function _isPadWord(buf: Uint8Array, off: number): boolean {
  return buf[off] === 4 && buf[off + 1] === 0 && buf[off + 2] === 0 && buf[off + 3] === 0;
}

// _scan reports through these instead of an object per frame (calls never overlap).
const SCAN_FRAME = 0;
const SCAN_NEED = 1;
const SCAN_REJECT = 2;
/** Start of the frame found (after padding words). */
let _start = 0;
/** End of the frame found, or how far the buffer must reach for `SCAN_NEED`. */
let _end = 0;
let _seq = 0;
let _reason: FullRejectReason = "bad_length";

/**
 * Whether the frame at `buf[off]` ending at `end` (its CRC in the last 4 bytes) checks out,
 * `tail` being a view of its last bytes before the CRC: the bytes in front of it are summed
 * in place, the view by crc32.
 */
function _crcOk(buf: Uint8Array, off: number, end: number, tail: Uint8Array): boolean {
  const tailAt = end - 4 - tail.length;
  return crc32(tail, crc32Range(buf, off, tailAt, 0)) === readU32(buf, end - 4);
}

/** Look for one frame in `buf[from:limit]`, skipping padding words. Offsets are absolute. */
function _scan(
  buf: Uint8Array,
  from: number,
  limit: number,
  expectedSeq: number | null,
  checkCrc: boolean,
): number {
  let off = from;
  for (;;) {
    if (limit - off < 4) {
      _end = off + 4;
      return SCAN_NEED;
    }
    const len = readU32(buf, off);
    if (len === 4) {
      off += 4; // a padding word
      continue;
    }
    if (len < FULL_OVERHEAD || len > MAX_FULL_LEN || len % 4 !== 0) {
      _reason = "bad_length";
      return SCAN_REJECT;
    }
    const end = off + len;
    if (limit < end) {
      _end = end;
      return SCAN_NEED;
    }
    if (checkCrc && crc32(buf.subarray(off, end - 4)) !== readU32(buf, end - 4)) {
      _reason = "bad_crc";
      return SCAN_REJECT;
    }
    const seq = readU32(buf, off + 4) | 0;
    if (expectedSeq !== null && seq !== expectedSeq) {
      _reason = "bad_seq";
      return SCAN_REJECT;
    }
    _start = off;
    _end = end;
    _seq = seq;
    return SCAN_FRAME;
  }
}

function _decode(buf: Uint8Array, expectedSeq: number | null, checkCrc: boolean): FullStep {
  const r = _scan(buf, 0, buf.length, expectedSeq, checkCrc);
  if (r === SCAN_NEED) return { kind: "need", atLeast: _end };
  if (r === SCAN_REJECT) return { kind: "reject", reason: _reason };
  return {
    kind: "frame",
    frame: { seq: _seq, body: buf.subarray(_start + 8, _end - 4) },
    rest: buf.subarray(_end),
  };
}

/**
 * Decode one full-codec frame from the start of `buf`, skipping `04 00 00 00` padding words in
 * front of it. `need.atLeast` counts from the start of `buf`, padding included.
 *
 * @example Usage
 * ```ts
 * import { decodeFull, encodeFull } from "./full.ts";
 * const wire = encodeFull(Uint8Array.of(1, 1, 1, 1), 0);
 * const step = decodeFull(wire, { expectedSeq: 0 });
 * if (step.kind === "frame") console.log(step.frame.body); // Uint8Array(4) [1, 1, 1, 1]
 * ```
 */
export function decodeFull(buf: Uint8Array, options: DecodeFullOptions = {}): FullStep {
  return _decode(buf, options.expectedSeq ?? null, options.checkCrc ?? true);
}

function _bodyLength(body: FullBody): number {
  if (body instanceof Uint8Array) return body.length;
  let n = 0;
  for (const part of body) n += part.length;
  return n;
}

/** Bytes one frame takes on the wire for a body of `bodyLength` bytes. */
export function fullFrameLength(bodyLength: number, pad: boolean): number {
  const len = bodyLength + FULL_OVERHEAD;
  return pad ? (len + 15) & ~15 : len;
}

/** A frame body, whole or in parts (for example an RPC header and the client's packet). */
export type FullBody = Uint8Array | readonly Uint8Array[];

function _checkBody(bodyLen: number): void {
  if (bodyLen % 4 !== 0) {
    throw new RangeError(`Full-codec body must be a multiple of 4 bytes: got ${bodyLen}`);
  }
  if (bodyLen > MAX_FULL_BODY) {
    throw new RangeError(`Full-codec body must be at most ${MAX_FULL_BODY} bytes: got ${bodyLen}`);
  }
}

/** Write one frame at `off`; returns where it ends (padding included). */
function _writeFrame(
  out: Uint8Array,
  off: number,
  body: FullBody,
  bodyLen: number,
  seq: number,
  pad: boolean,
): number {
  const len = bodyLen + FULL_OVERHEAD;
  writeU32(out, off, len);
  writeU32(out, off + 4, seq);
  // The CRC over the parts as given: no view of the frame per frame.
  let c = crc32Words(len, seq);
  if (body instanceof Uint8Array) {
    out.set(body, off + 8);
    c = crc32(body, c);
  } else {
    let at = off + 8;
    for (const part of body) {
      out.set(part, at);
      at += part.length;
      c = crc32(part, c);
    }
  }
  const crcAt = off + len - 4;
  writeU32(out, crcAt, c);
  const end = off + fullFrameLength(bodyLen, pad);
  for (let at = off + len; at < end; at += 4) writeU32(out, at, 4); // 04 00 00 00
  return end;
}

/** `_writeFrame` for a body given as two parts (header and payload): no array per frame. */
function _writePair(
  out: Uint8Array,
  off: number,
  head: Uint8Array,
  tail: Uint8Array,
  seq: number,
  pad: boolean,
): number {
  const bodyLen = head.length + tail.length;
  const len = bodyLen + FULL_OVERHEAD;
  writeU32(out, off, len);
  writeU32(out, off + 4, seq);
  out.set(head, off + 8);
  if (tail.length > 0) out.set(tail, off + 8 + head.length);
  const crcAt = off + len - 4;
  // Over the parts as given (no view of the frame): len and seq, the head, the tail.
  const c = crc32Words(len, seq);
  // A client's RPC header is registered with its CRC worked out: four table lookups.
  const withHead = head.length <= 128 ? crc32Known(head, c) : crc32(head, c);
  writeU32(out, crcAt, crc32(tail, withHead));
  const end = off + fullFrameLength(bodyLen, pad);
  for (let at = off + len; at < end; at += 4) writeU32(out, at, 4); // 04 00 00 00
  return end;
}

/**
 * Encode one frame with sequence number `seq`. A body given in parts is copied once, straight
 * into the frame. With `pad`, `04 00 00 00` words follow until the length is a multiple of 16.
 *
 * @example Usage
 * ```ts
 * import { encodeFull } from "./full.ts";
 * encodeFull(Uint8Array.of(1, 1, 1, 1), 0); // 10000000 00000000 01010101 1627afa0
 * ```
 */
export function encodeFull(body: FullBody, seq: number, pad = false): Uint8Array {
  const bodyLen = _bodyLength(body);
  _checkBody(bodyLen);
  const out = new Uint8Array(fullFrameLength(bodyLen, pad));
  _writeFrame(out, 0, body, bodyLen, seq, pad);
  return out;
}

/** Options for {@linkcode FullEncoder} and {@linkcode FullDecoder}. */
export interface FullSeqOptions {
  /** Sequence number of the first frame. @default -2 */
  firstSeq?: number;
}

/**
 * The sending half: numbers frames from -2 up.
 *
 * @example Usage
 * ```ts
 * import { FullEncoder } from "./full.ts";
 * const enc = new FullEncoder();
 * const first = enc.encode(new Uint8Array(32), true); // seq -2, padded to 48 bytes
 * console.log(first.length, enc.nextSeq); // 48 -1
 * ```
 */
export class FullEncoder {
  #seq: number;

  constructor(options: FullSeqOptions = {}) {
    this.#seq = options.firstSeq ?? FIRST_SEQ;
  }

  /** Sequence number the next frame gets. */
  get nextSeq(): number {
    return this.#seq;
  }

  /** Encode `body` as the next frame, padded to a multiple of 16 bytes when `pad` is set. */
  encode(body: FullBody, pad = false): Uint8Array {
    const out = encodeFull(body, this.#seq, pad);
    this.#seq = (this.#seq + 1) | 0;
    return out;
  }

  /**
   * Encode several bodies as consecutive frames in one buffer: one allocation (and, in
   * {@linkcode FullCodec}, one cipher call) for a whole batch of small messages.
   */
  encodeMany(
    bodies: readonly FullBody[],
    pad = false,
    alloc: (total: number) => Uint8Array = _alloc,
  ): Uint8Array {
    const lengths = bodies.map(_bodyLength);
    let total = 0;
    for (const n of lengths) {
      _checkBody(n);
      total += fullFrameLength(n, pad);
    }
    const buf = alloc(total);
    if (buf.length < total) {
      throw new RangeError(`Batch buffer too small: ${buf.length} < ${total}`);
    }
    const out = buf.length === total ? buf : buf.subarray(0, total);
    let off = 0;
    for (let i = 0; i < bodies.length; i++) {
      off = _writeFrame(out, off, bodies[i]!, lengths[i]!, this.#seq, pad);
      this.#seq = (this.#seq + 1) | 0;
    }
    return out;
  }

  /**
   * {@linkcode FullEncoder.encodeMany} for bodies given as pairs: body `i` is
   * `parts[2i] ++ parts[2i+1]` (an RPC header and a client's packet, say), for the first
   * `count` parts (all by default: a caller can keep one array with room to spare). Nothing is
   * allocated per frame.
   */
  encodePairs(
    parts: readonly Uint8Array[],
    pad = false,
    alloc: (total: number) => Uint8Array = _alloc,
    count: number = parts.length,
  ): Uint8Array {
    if (count % 2 !== 0 || count > parts.length) {
      throw new RangeError(`Parts must come in pairs: got ${count} of ${parts.length}`);
    }
    let total = 0;
    for (let i = 0; i < count; i += 2) {
      const n = parts[i]!.length + parts[i + 1]!.length;
      _checkBody(n);
      total += fullFrameLength(n, pad);
    }
    const buf = alloc(total);
    if (buf.length < total) {
      throw new RangeError(`Batch buffer too small: ${buf.length} < ${total}`);
    }
    const out = buf.length === total ? buf : buf.subarray(0, total);
    let off = 0;
    for (let i = 0; i < count; i += 2) {
      off = _writePair(out, off, parts[i]!, parts[i + 1]!, this.#seq, pad);
      this.#seq = (this.#seq + 1) | 0;
    }
    return out;
  }
}

function _alloc(total: number): Uint8Array {
  return new Uint8Array(total);
}

/** Options for {@linkcode FullDecoder}. */
export interface FullDecoderOptions extends FullSeqOptions {
  /** Verify each frame's CRC. @default true */
  checkCrc?: boolean;
}

/** Room kept for a partial frame whose length is not known yet (header and padding words). */
const SMALL_PENDING = 16;
/** Reuse mode keeps a spare buffer up to this size (a rare larger frame gets its own). */
const MAX_SPARE = 256 * 1024;

/**
 * The receiving half: takes chunks cut anywhere, returns the frame bodies in order and checks
 * every frame's length, CRC and seq. A frame inside one chunk comes back as a view into that
 * chunk; a frame split across chunks is gathered into a buffer of its own, which is never
 * reused. So bodies stay valid as long as the caller leaves its chunks alone.
 *
 * @example Usage
 * ```ts
 * import { FullDecoder, FullEncoder } from "./full.ts";
 * const enc = new FullEncoder();
 * const wire = enc.encode(new Uint8Array(8), true);
 * const dec = new FullDecoder();
 * dec.push(wire.subarray(0, 5)); // { frames: [], reject: null }
 * dec.push(wire.subarray(5)); // { frames: [Uint8Array(8)], reject: null }
 * ```
 */
export class FullDecoder {
  #seq: number;
  #checkCrc: boolean;
  #reject: FullRejectReason | null = null;
  /** Bytes of a frame split across chunks (padding words in front of it included). */
  #pending: Uint8Array | null = null;
  #pendingLen = 0;
  /** How many bytes `#pending` must hold before the next decode attempt. */
  #pendingNeed = 0;
  /** Reuse mode: the buffer of a split frame handed out by this push, and one free for reuse. */
  #reuse = false;
  #handedOut: Uint8Array | null = null;
  #spare: Uint8Array | null = null;

  constructor(options: FullDecoderOptions = {}) {
    this.#seq = options.firstSeq ?? FIRST_SEQ;
    this.#checkCrc = options.checkCrc ?? true;
  }

  /** Sequence number the next frame must carry. */
  get nextSeq(): number {
    return this.#seq;
  }

  /** Bytes held of a frame not complete yet. */
  get pendingBytes(): number {
    return this.#pendingLen;
  }

  /** The refusal that broke the stream, or null. */
  get rejected(): FullRejectReason | null {
    return this.#reject;
  }

  /**
   * From now on, bodies stay valid only until the next `push`: the buffers that gather frames
   * split across chunks are reused instead of allocated per frame (one per chunk boundary, which
   * kept the GC busy at middle-proxy speeds).
   */
  reuseBuffers(): void {
    this.#reuse = true;
  }

  /**
   * Decode what `chunk` completes. Bodies are appended to `frames` (a fresh array by default).
   * After a refusal every later call returns the same refusal and no frames.
   */
  push(chunk: Uint8Array, frames: Uint8Array[] = []): FullDecodeResult {
    const collect = _collector;
    collect.frames = frames;
    try {
      return { frames, reject: this.pushTo(chunk, collect) };
    } finally {
      collect.frames = _NO_FRAMES;
    }
  }

  /**
   * Like {@linkcode FullDecoder.push}, handing each body to `sink` as offsets (no array and no
   * view per frame). Returns the refusal, or null.
   */
  pushTo(chunk: Uint8Array, sink: FullFrameSink): FullRejectReason | null {
    if (this.#reject !== null) return this.#reject;
    if (this.#handedOut !== null) {
      // The caller is done with the bodies of the previous push.
      if (this.#handedOut.length <= MAX_SPARE) this.#spare = this.#handedOut;
      this.#handedOut = null;
    }
    let off = 0;
    let pending = this.#pending;
    while (pending !== null) {
      const take = Math.min(this.#pendingNeed - this.#pendingLen, chunk.length - off);
      pending.set(chunk.subarray(off, off + take), this.#pendingLen);
      this.#pendingLen += take;
      off += take;
      if (this.#pendingLen < this.#pendingNeed) return null;
      const r = _scan(pending, 0, this.#pendingLen, null, false);
      if (r === SCAN_REJECT) return this.#fail(_reason);
      if (r === SCAN_NEED) {
        if (_end > pending.length) {
          const spare = this.#spare;
          const grown = spare !== null && spare.length >= _end ? spare : new Uint8Array(_end);
          if (grown === spare) this.#spare = null;
          grown.set(pending.subarray(0, this.#pendingLen));
          pending = this.#pending = grown;
        }
        this.#pendingNeed = _end;
        continue;
      }
      // The pending bytes end exactly where the frame ends (`need` sizes are exact).
      const whole = pending;
      const tail = this.#check(whole, sink.skip);
      if (tail === null) return this.#reject!;
      const start = _start + 8;
      const end = _end - 4;
      this.#seq = (this.#seq + 1) | 0;
      if (this.#reuse) this.#handedOut = pending;
      pending = this.#pending = null;
      this.#pendingLen = 0;
      this.#pendingNeed = 0;
      sink.frame(whole, start, end, tail);
    }
    const limit = chunk.length;
    while (off < limit) {
      const r = _scan(chunk, off, limit, null, false);
      if (r === SCAN_FRAME) {
        const tail = this.#check(chunk, sink.skip);
        if (tail === null) return this.#reject!;
        const start = _start + 8;
        const end = _end - 4;
        this.#seq = (this.#seq + 1) | 0;
        off = _end;
        sink.frame(chunk, start, end, tail);
        continue;
      }
      if (r === SCAN_REJECT) return this.#fail(_reason);
      const need = _end;
      // Drop whole padding words now rather than hold them: senders pad nearly every frame.
      while (limit - off >= 4 && _isPadWord(chunk, off)) off += 4;
      if (off === limit) break;
      const size = Math.max(need - off, SMALL_PENDING);
      const spare = this.#spare;
      const held = spare !== null && spare.length >= size ? spare : new Uint8Array(size);
      this.#spare = null;
      held.set(chunk.subarray(off));
      this.#pending = held;
      this.#pendingLen = limit - off;
      this.#pendingNeed = need - off;
      break;
    }
    return null;
  }

  /**
   * The frame `_scan` just found in `buf`: its tail view (body past `skip` bytes) once its CRC
   * and seq check out, or null after failing the stream (as `_scan` would have: CRC first).
   */
  #check(buf: Uint8Array, skip: number): Uint8Array | null {
    const frameAt = _start;
    const frameEnd = _end;
    const bodyEnd = frameEnd - 4;
    const tail = buf.subarray(Math.min(frameAt + 8 + skip, bodyEnd), bodyEnd);
    if (this.#checkCrc && !_crcOk(buf, frameAt, frameEnd, tail)) {
      this.#fail("bad_crc");
      return null;
    }
    if ((readU32(buf, frameAt + 4) | 0) !== this.#seq) {
      this.#fail("bad_seq");
      return null;
    }
    return tail;
  }

  #fail(reason: FullRejectReason): FullRejectReason {
    this.#reject = reason;
    this.#pending = null;
    this.#pendingLen = 0;
    return reason;
  }
}

const _NO_FRAMES: Uint8Array[] = [];

/** The sink behind {@linkcode FullDecoder.push}: views into an array (calls never overlap). */
const _collector = {
  frames: _NO_FRAMES,
  skip: 0,
  frame(_buf: Uint8Array, _start: number, _end: number, body: Uint8Array): void {
    this.frames.push(body);
  },
};

/** Options for {@linkcode FullCodec}. */
export interface FullCodecOptions {
  /** Verify the CRC of received frames. @default true */
  checkCrc?: boolean;
  /**
   * Pad plaintext frames (the RPC_NONCE) to 16 bytes too, as the Erlang and Python proxies do.
   * Official middle proxies do not. Encrypted frames are always padded.
   * @default true
   */
  padPlaintext?: boolean;
}

/**
 * Both directions of one middle-proxy connection: full-codec framing plus the AES-CBC
 * ciphers, which {@linkcode FullCodec.startEncryption} switches on after the nonce exchange.
 *
 * Before encryption is on, {@linkcode FullCodec.decode} returns at most one frame per call and
 * keeps any later bytes undecoded (in this protocol the only plaintext frame each way is the
 * nonce, and what follows it is ciphertext). Once encryption is on, a call with an empty chunk
 * decodes the bytes kept back.
 *
 * `decode` takes its chunk over: it decrypts it in place and the bodies it returns may be views
 * into it. `encode` returns a fresh buffer, already encrypted.
 *
 * @example Usage
 * ```ts
 * import { FullCodec } from "./full.ts";
 * const a = new FullCodec();
 * const b = new FullCodec();
 * const r = b.decode(a.encode(new Uint8Array(32)));
 * console.log(r.frames.length, r.reject); // 1 null
 * a.close();
 * b.close();
 * ```
 */
export class FullCodec {
  #encoder = new FullEncoder();
  #padPlaintext: boolean;
  #checkCrc: boolean;
  #encryptor: StreamCipher | null = null;
  #decryptor: StreamCipher | null = null;
  #reject: FullRejectReason | null = null;

  // Plaintext phase.
  #plainSeq = FIRST_SEQ;
  /** Bytes received but not decoded yet: after the plaintext frame, or an undecided pad word. */
  #held: Uint8Array | null = null;
  /** Bytes consumed before encryption came on; the sender pads them to 16 (or not at all). */
  #plainConsumed = 0;
  #skipAlignPad = false;

  // Encrypted phase.
  #decoder: FullDecoder | null = null;
  /** Ciphertext of an incomplete 16-byte block. */
  #block = new Uint8Array(16);
  #blockLen = 0;
  /** Reuse mode: decodeTo keeps one block buffer (its bodies are used up during the call). */
  #reuse = false;

  constructor(options: FullCodecOptions = {}) {
    this.#padPlaintext = options.padPlaintext ?? true;
    this.#checkCrc = options.checkCrc ?? true;
  }

  /**
   * Once encryption is on, bodies from `decode` stay valid only until the next `decode` (see
   * {@linkcode FullDecoder.reuseBuffers}).
   */
  reuseBuffers(): void {
    if (this.#decoder === null) throw new Error("Encryption is not on yet");
    this.#decoder.reuseBuffers();
    this.#reuse = true;
  }

  /** True once {@linkcode FullCodec.startEncryption} ran. */
  get encrypted(): boolean {
    return this.#decryptor !== null;
  }

  /** Sequence number of the next frame sent. */
  get nextSendSeq(): number {
    return this.#encoder.nextSeq;
  }

  /** Sequence number the next received frame must carry. */
  get nextReceiveSeq(): number {
    return this.#decoder?.nextSeq ?? this.#plainSeq;
  }

  /**
   * Switch on AES-CBC both ways. The codec owns the ciphers from here on and closes them in
   * {@linkcode FullCodec.close} (when this throws, they stay the caller's). Padding words the peer sent after its plaintext frame (up to a
   * multiple of 16) are skipped; bytes after them are decrypted.
   */
  startEncryption(encryptor: StreamCipher, decryptor: StreamCipher): void {
    if (this.#decryptor !== null) throw new Error("Encryption is already on");
    this.#encryptor = encryptor;
    this.#decryptor = decryptor;
    this.#decoder = new FullDecoder({ firstSeq: this.#plainSeq, checkCrc: this.#checkCrc });
    this.#skipAlignPad = this.#plainConsumed % 16 !== 0;
  }

  /** Frame `body` (given whole or in parts), pad and encrypt it as encryption requires. */
  encode(body: FullBody): Uint8Array {
    const enc = this.#encryptor;
    const out = this.#encoder.encode(body, enc !== null || this.#padPlaintext);
    enc?.update(out);
    return out;
  }

  /**
   * Frame, pad and encrypt several bodies into one buffer (see
   * {@linkcode FullEncoder.encodeMany}). `alloc(total)` may hand out a reused buffer of at least
   * `total` bytes (the frames go at its start); by default each batch gets a fresh one.
   */
  encodeMany(bodies: readonly FullBody[], alloc?: (total: number) => Uint8Array): Uint8Array {
    const enc = this.#encryptor;
    const out = this.#encoder.encodeMany(bodies, enc !== null || this.#padPlaintext, alloc);
    enc?.update(out);
    return out;
  }

  /**
   * Frame, pad and encrypt bodies given as pairs into one buffer (see
   * {@linkcode FullEncoder.encodePairs}, `count` too; `alloc` as for
   * {@linkcode FullCodec.encodeMany}).
   */
  encodePairs(
    parts: readonly Uint8Array[],
    alloc?: (total: number) => Uint8Array,
    count?: number,
  ): Uint8Array {
    const enc = this.#encryptor;
    const out = this.#encoder.encodePairs(parts, enc !== null || this.#padPlaintext, alloc, count);
    enc?.update(out);
    return out;
  }

  /**
   * Like {@linkcode FullCodec.decode}, handing each body to `sink` as offsets instead of
   * returning views in an array. Returns the refusal, or null. After
   * {@linkcode FullCodec.reuseBuffers}, a body is valid only while the sink handles it.
   */
  decodeTo(chunk: Uint8Array, sink: FullFrameSink): FullRejectReason | null {
    if (
      this.#reject !== null || this.#decryptor === null || this.#held !== null ||
      this.#skipAlignPad
    ) {
      // The plaintext phase and its leftovers: rare, through the array form.
      const r = this.decode(chunk);
      for (const body of r.frames) {
        sink.frame(body, 0, body.length, body.subarray(Math.min(sink.skip, body.length)));
      }
      return r.reject;
    }
    return this.#decodeCipher(chunk, sink, this.#reuse);
  }

  /** Decrypt and decode `chunk` (see the class notes on plaintext and ownership). */
  decode(chunk: Uint8Array): FullDecodeResult {
    if (this.#reject !== null) return { frames: [], reject: this.#reject };
    let data = chunk;
    if (this.#held !== null) {
      data = concatBytes([this.#held, chunk]);
      this.#held = null;
    }
    if (this.#decryptor === null) return this.#decodePlain(data);
    if (this.#skipAlignPad) {
      while (this.#plainConsumed % 16 !== 0) {
        if (data.length < 4) {
          this.#held = data.slice();
          return { frames: [], reject: null };
        }
        if (!_isPadWord(data, 0)) break;
        data = data.subarray(4);
        this.#plainConsumed += 4;
      }
      this.#skipAlignPad = false;
    }
    const frames: Uint8Array[] = [];
    const collect = _collector;
    collect.frames = frames;
    try {
      return { frames, reject: this.#decodeCipher(data, collect, false) };
    } finally {
      collect.frames = _NO_FRAMES;
    }
  }

  /** Close both ciphers. Safe to call more than once. */
  close(): void {
    this.#encryptor?.close();
    this.#decryptor?.close();
  }

  #decodePlain(data: Uint8Array): FullDecodeResult {
    const step = _decode(data, this.#plainSeq, this.#checkCrc);
    if (step.kind === "need") {
      if (data.length > 0) this.#held = data.slice();
      return { frames: [], reject: null };
    }
    if (step.kind === "reject") {
      this.#reject = step.reason;
      return { frames: [], reject: step.reason };
    }
    this.#plainSeq = (this.#plainSeq + 1) | 0;
    this.#plainConsumed += data.length - step.rest.length;
    if (step.rest.length > 0) this.#held = step.rest.slice();
    return { frames: [step.frame.body], reject: null };
  }

  /** `keepBlock`: the sink is done with every body when this returns (see decodeTo). */
  #decodeCipher(
    data: Uint8Array,
    sink: FullFrameSink,
    keepBlock: boolean,
  ): FullRejectReason | null {
    const decoder = this.#decoder!;
    const decryptor = this.#decryptor!;
    let off = 0;
    if (this.#blockLen > 0) {
      off = Math.min(16 - this.#blockLen, data.length);
      this.#block.set(data.subarray(0, off), this.#blockLen);
      this.#blockLen += off;
      if (this.#blockLen < 16) return null;
      // The decoder may return views into this block: hand it over and start a new one
      // (unless the sink uses bodies up before this returns).
      const block = this.#block;
      if (!keepBlock) this.#block = new Uint8Array(16);
      this.#blockLen = 0;
      decryptor.update(block);
      if (decoder.pushTo(block, sink) !== null) return this.#fail(decoder);
    }
    const whole = (data.length - off) & ~15;
    if (whole > 0) {
      const mid = off === 0 && whole === data.length ? data : data.subarray(off, off + whole);
      decryptor.update(mid);
      if (decoder.pushTo(mid, sink) !== null) return this.#fail(decoder);
    }
    const tail = data.length - off - whole;
    if (tail > 0) {
      this.#block.set(data.subarray(data.length - tail));
      this.#blockLen = tail;
    }
    return null;
  }

  #fail(decoder: FullDecoder): FullRejectReason | null {
    this.#reject = decoder.rejected;
    return this.#reject;
  }
}
