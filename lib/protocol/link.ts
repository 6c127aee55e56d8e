/**
 * Split-mode link frames: the byte stream inside a link's decrypted records, which multiplexes
 * many client connections between a front proxy and a back proxy. A frame is a 10-byte header
 * (u8 type, u8 flags, u32 LE stream id, u32 LE payload length) and its payload; a frame may span
 * records and records may hold many frames. Stream 0 carries link control frames.
 *
 * Pure: {@linkcode LinkFrameReader} turns bytes into sink calls, {@linkcode LinkFrameWriter}
 * turns calls into bytes. The data path (DATA, ANSWER, ACK) allocates nothing per frame beyond
 * the payload view the sink receives.
 *
 * @module
 */
import type { TransportTag } from "./obfuscated2.ts";
import { formatIp, ipv6Mapped } from "./rpc.ts";

/** Link protocol version sent in HELLO and WELCOME. */
export const LINK_VERSION = 1;
/** Frame header length. */
export const LINK_FRAME_HEADER = 10;
/** Largest frame payload: a 1 MiB Telegram packet plus room for its framing. */
export const LINK_MAX_PAYLOAD = (1 << 20) + 64;
/** Longest OPENED "where" text and CLOSE detail, in UTF-8 bytes (longer text is cut). */
export const LINK_MAX_TEXT = 200;
/** Longest HELLO name, in UTF-8 bytes. */
export const LINK_MAX_NAME = 64;

/** Frame type codes. */
export const LinkFrameType = {
  HELLO: 0x01,
  WELCOME: 0x02,
  PING: 0x03,
  PONG: 0x04,
  GOAWAY: 0x05,
  OPEN: 0x10,
  OPENED: 0x11,
  DATA: 0x12,
  ANSWER: 0x13,
  QUICK_ACK: 0x14,
  ACK: 0x15,
  CLOSE: 0x16,
} as const;

/** DATA flag: the client asked for a quick ack. */
export const LINK_FLAG_QUICK_ACK = 0x01;

/** Why a stream was closed, as carried by CLOSE (the code is the index in this list). */
export const LINK_CLOSE_REASONS = [
  "client_closed",
  "close_ext",
  "connection_lost",
  "backpressure",
  "dc_unreachable",
  "dc_timeout",
  "shutdown",
  "bad_frame",
  "refused",
  "protocol_error",
] as const;

/** Why a stream was closed. */
export type LinkCloseReason = typeof LINK_CLOSE_REASONS[number];

/** HELLO (front → back, stream 0): who the front is and how much it lets the back send. */
export interface LinkHelloFrame {
  version: number;
  capabilities: number;
  /** Bytes of ANSWER payload the back may have unacknowledged per stream. */
  window: number;
  /** The front's name for logs (1-64 UTF-8 bytes). */
  name: string;
}

/** WELCOME (back → front, stream 0): the answer to HELLO. */
export interface LinkWelcomeFrame {
  version: number;
  capabilities: number;
  /** Bytes of DATA payload the front may have unacknowledged per stream. */
  window: number;
  /** 8 random bytes per back process: a front notices a restarted back by a new value. */
  instance: Uint8Array;
}

/** OPEN (front → back): a new stream for a client. */
export interface LinkOpenFrame {
  /** Telegram DC id (negative for media DCs). */
  dcId: number;
  /** The client's transport. */
  tag: TransportTag;
  /** The client's address ("1.2.3.4" or an IPv6 literal). */
  clientIp: string;
  clientPort: number;
  /** The 16-byte ad tag for middle proxies, or null for none. */
  adTag: Uint8Array | null;
}

/** OPENED (back → front): the stream reached Telegram. */
export interface LinkOpenedFrame {
  /** The DC id actually used. */
  dcId: number;
  via: "direct" | "middle";
  /** Where the back connected, for logs (at most 200 UTF-8 bytes). */
  where: string;
}

/** What a {@linkcode LinkFrameReader} calls, one method per frame type. */
export interface LinkFrameSink {
  hello(f: LinkHelloFrame): void;
  welcome(f: LinkWelcomeFrame): void;
  ping(id: bigint): void;
  pong(id: bigint): void;
  goaway(graceMs: number): void;
  open(stream: number, f: LinkOpenFrame): void;
  opened(stream: number, f: LinkOpenedFrame): void;
  /** A client packet; `payload` is a view valid during the call. */
  data(stream: number, payload: Uint8Array, quickAck: boolean): void;
  /** A Telegram packet; `payload` is a view valid during the call. */
  answer(stream: number, payload: Uint8Array): void;
  /** A quick-ack confirmation (4 bytes; a view valid during the call). */
  quickAck(stream: number, confirm: Uint8Array): void;
  /** `bytes` of DATA or ANSWER payload were delivered: that much credit comes back. */
  ack(stream: number, bytes: number): void;
  close(stream: number, reason: LinkCloseReason, detail: string): void;
}

/** Why a frame stream was refused (the link must close). */
export type LinkFrameReject = "frame_too_large" | "unknown_frame" | "bad_payload";

const TAG_CODES: readonly TransportTag[] = ["abridged", "intermediate", "padded"];
const OPEN_LEN = 2 + 1 + 16 + 2;
const AD_TAG_LEN = 16;
const EMPTY = new Uint8Array(0);

/** swap() keeps buffers up to this size whatever their use. */
const _KEEP_BUFFER = 1 << 20;
/** A larger one is sized down when it stayed under a quarter full over this many swaps. */
const _SHRINK_AFTER = 64;

const utf8 = new TextDecoder("utf-8", { fatal: true });
const encoder = new TextEncoder();

function _u16(b: Uint8Array, o: number): number {
  return b[o]! | (b[o + 1]! << 8);
}

function _u32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24)) >>> 0;
}

function _u64(b: Uint8Array, o: number): bigint {
  return (BigInt(_u32(b, o + 4)) << 32n) | BigInt(_u32(b, o));
}

function _known(type: number): boolean {
  return (type >= LinkFrameType.HELLO && type <= LinkFrameType.GOAWAY) ||
    (type >= LinkFrameType.OPEN && type <= LinkFrameType.CLOSE);
}

/** Whether frames of this type belong to stream 0 (control) rather than a client stream. */
function _isControl(type: number): boolean {
  return type <= LinkFrameType.GOAWAY;
}

/** UTF-8 text, or null when it is not valid UTF-8. */
function _text(b: Uint8Array): string | null {
  try {
    return utf8.decode(b);
  } catch {
    return null;
  }
}

/**
 * Incremental frame reader: feed decrypted record payloads in any chunking; every whole frame
 * goes to the sink, in order. A frame that lies whole in one push is handed over as a view of
 * that push; only a frame split across pushes is copied. After a reject the reader stays
 * refused.
 *
 * @example Usage
 * ```ts
 * import { LinkFrameReader, LinkFrameWriter, type LinkFrameSink } from "./link.ts";
 *
 * const w = new LinkFrameWriter();
 * w.ping(7n);
 * const seen: bigint[] = [];
 * const sink = { ping: (id: bigint) => seen.push(id) } as unknown as LinkFrameSink;
 * const reject = new LinkFrameReader().push(w.take(), sink);
 * if (reject !== null || seen[0] !== 7n) throw new Error("bad frame");
 * ```
 */
export class LinkFrameReader {
  /** Bytes of the current frame's header seen so far (10 once it is parsed). */
  #headHave = 0;
  readonly #head = new Uint8Array(LINK_FRAME_HEADER);
  #type = 0;
  #flags = 0;
  #stream = 0;
  #len = 0;
  /** The body of a frame split across pushes. */
  #body: Uint8Array = EMPTY;
  #bodyHave = 0;
  #failed: LinkFrameReject | null = null;

  /** Feed decrypted bytes (any chunking); calls the sink per frame in order; returns a reject reason or null. */
  push(plain: Uint8Array, sink: LinkFrameSink): LinkFrameReject | null {
    if (this.#failed !== null) return this.#failed;
    const n = plain.length;
    let p = 0;
    while (p < n) {
      if (this.#headHave === LINK_FRAME_HEADER) {
        // The body of a split frame.
        const k = Math.min(this.#len - this.#bodyHave, n - p);
        this.#body.set(plain.subarray(p, p + k), this.#bodyHave);
        this.#bodyHave += k;
        p += k;
        if (this.#bodyHave < this.#len) break;
        this.#headHave = 0;
        const r = this.#dispatch(this.#body, 0, sink);
        if (r !== null) return this.#fail(r);
        continue;
      }
      if (this.#headHave > 0 || n - p < LINK_FRAME_HEADER) {
        // A split header.
        const head = this.#head;
        while (p < n && this.#headHave < LINK_FRAME_HEADER) head[this.#headHave++] = plain[p++]!;
        if (this.#headHave < LINK_FRAME_HEADER) break;
        const r = this.#header(head, 0);
        if (r !== null) return this.#fail(r);
        if (this.#len === 0 || n - p >= this.#len) {
          // The body is here whole after all.
          this.#headHave = 0;
          const d = this.#dispatch(plain, p, sink);
          if (d !== null) return this.#fail(d);
          p += this.#len;
        } else {
          this.#startBody();
        }
        continue;
      }
      // A frame boundary with the header whole in this push.
      const r = this.#header(plain, p);
      if (r !== null) return this.#fail(r);
      p += LINK_FRAME_HEADER;
      if (n - p >= this.#len) {
        const d = this.#dispatch(plain, p, sink);
        if (d !== null) return this.#fail(d);
        p += this.#len;
      } else {
        this.#headHave = LINK_FRAME_HEADER;
        this.#startBody();
      }
    }
    return null;
  }

  #fail(r: LinkFrameReject): LinkFrameReject {
    this.#failed = r;
    this.#body = EMPTY;
    return r;
  }

  #header(b: Uint8Array, o: number): LinkFrameReject | null {
    const type = b[o]!;
    const len = _u32(b, o + 6);
    if (!_known(type)) return "unknown_frame";
    if (len > LINK_MAX_PAYLOAD) return "frame_too_large";
    this.#type = type;
    this.#flags = b[o + 1]!;
    this.#stream = _u32(b, o + 2);
    this.#len = len;
    return null;
  }

  #startBody(): void {
    this.#headHave = LINK_FRAME_HEADER;
    this.#bodyHave = 0;
    if (this.#body.length < this.#len) {
      let size = Math.max(4096, this.#body.length);
      while (size < this.#len) size *= 2;
      this.#body = new Uint8Array(Math.min(size, LINK_MAX_PAYLOAD));
    }
  }

  /** Hand the current frame, whose payload is `b[o .. o + len)`, to the sink. */
  #dispatch(b: Uint8Array, o: number, sink: LinkFrameSink): LinkFrameReject | null {
    const type = this.#type;
    const stream = this.#stream;
    const len = this.#len;
    if (_isControl(type) !== (stream === 0)) return "bad_payload";
    switch (type) {
      case LinkFrameType.DATA:
        sink.data(stream, b.subarray(o, o + len), (this.#flags & LINK_FLAG_QUICK_ACK) !== 0);
        return null;
      case LinkFrameType.ANSWER:
        sink.answer(stream, b.subarray(o, o + len));
        return null;
      case LinkFrameType.ACK:
        if (len !== 4) return "bad_payload";
        sink.ack(stream, _u32(b, o));
        return null;
      case LinkFrameType.QUICK_ACK:
        if (len !== 4) return "bad_payload";
        sink.quickAck(stream, b.subarray(o, o + 4));
        return null;
      case LinkFrameType.PING:
      case LinkFrameType.PONG: {
        if (len !== 8) return "bad_payload";
        const id = _u64(b, o);
        if (type === LinkFrameType.PING) sink.ping(id);
        else sink.pong(id);
        return null;
      }
      case LinkFrameType.GOAWAY:
        if (len !== 4) return "bad_payload";
        sink.goaway(_u32(b, o));
        return null;
      case LinkFrameType.HELLO: {
        if (len < 11) return "bad_payload";
        const nameLen = b[o + 10]!;
        if (nameLen < 1 || nameLen > LINK_MAX_NAME || len !== 11 + nameLen) return "bad_payload";
        const name = _text(b.subarray(o + 11, o + 11 + nameLen));
        if (name === null) return "bad_payload";
        sink.hello({
          version: _u16(b, o),
          capabilities: _u32(b, o + 2),
          window: _u32(b, o + 6),
          name,
        });
        return null;
      }
      case LinkFrameType.WELCOME:
        if (len !== 18) return "bad_payload";
        sink.welcome({
          version: _u16(b, o),
          capabilities: _u32(b, o + 2),
          window: _u32(b, o + 6),
          instance: b.slice(o + 10, o + 18),
        });
        return null;
      case LinkFrameType.OPEN: {
        if (len !== OPEN_LEN && len !== OPEN_LEN + AD_TAG_LEN) return "bad_payload";
        const tag = TAG_CODES[b[o + 2]!];
        if (tag === undefined) return "bad_payload";
        sink.open(stream, {
          dcId: (_u16(b, o) << 16) >> 16,
          tag,
          clientIp: formatIp(b.subarray(o + 3, o + 19)),
          clientPort: _u16(b, o + 19),
          adTag: len === OPEN_LEN ? null : b.slice(o + OPEN_LEN, o + OPEN_LEN + AD_TAG_LEN),
        });
        return null;
      }
      case LinkFrameType.OPENED: {
        if (len < 3 || len > 3 + LINK_MAX_TEXT) return "bad_payload";
        const via = b[o + 2];
        if (via !== 0 && via !== 1) return "bad_payload";
        const where = _text(b.subarray(o + 3, o + len));
        if (where === null) return "bad_payload";
        sink.opened(stream, {
          dcId: (_u16(b, o) << 16) >> 16,
          via: via === 0 ? "direct" : "middle",
          where,
        });
        return null;
      }
      case LinkFrameType.CLOSE: {
        if (len < 1 || len > 1 + LINK_MAX_TEXT) return "bad_payload";
        const detail = _text(b.subarray(o + 1, o + len));
        if (detail === null) return "bad_payload";
        sink.close(stream, LINK_CLOSE_REASONS[b[o]!] ?? "protocol_error", detail);
        return null;
      }
    }
    return "unknown_frame";
  }
}

/** `text` as UTF-8, cut at a character boundary to at most `max` bytes. */
function _utf8Capped(text: string, max: number): Uint8Array {
  const bytes = encoder.encode(text);
  if (bytes.length <= max) return bytes;
  let end = max;
  // Step back over continuation bytes (10xxxxxx) to the start of the cut character.
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end);
}

function _checkStream(stream: number, control: boolean): void {
  if (!Number.isInteger(stream) || stream < 0 || stream > 0xffff_ffff) {
    throw new RangeError(`Stream id must be a u32: got ${stream}`);
  }
  if (control ? stream !== 0 : stream === 0) {
    throw new RangeError(`Stream id 0 is for control frames only: got ${stream}`);
  }
}

function _checkU32(what: string, v: number): void {
  if (!Number.isInteger(v) || v < 0 || v > 0xffff_ffff) {
    throw new RangeError(`${what} must be a u32: got ${v}`);
  }
}

/**
 * Frame writer: appends frames to one growing buffer that is reused after each
 * {@linkcode LinkFrameWriter.take}. No per-frame arrays; a payload is copied once, into the
 * buffer. Misuse (a stream id out of range, a name too long) throws a RangeError.
 *
 * @example Usage
 * ```ts
 * import { LinkFrameWriter } from "./link.ts";
 *
 * const w = new LinkFrameWriter();
 * w.data(1, Uint8Array.of(1, 2, 3), false);
 * w.ack(1, 3);
 * const bytes = w.take(); // 13 + 14 bytes, ready to seal into records
 * if (bytes.length !== 27) throw new Error("bad length");
 * ```
 */
export class LinkFrameWriter {
  #buf = new Uint8Array(4096);
  #len = 0;
  /** Set by take(): the next write starts over at offset 0. */
  #taken = false;
  /** The other buffer of swap(), and the most bytes held since each buffer was last sized. */
  #spare: Uint8Array<ArrayBuffer> | null = null;
  #peak = 0;
  #sparePeak = 0;
  #swaps = 0;

  /** Bytes written since the last take() or swap(). */
  get length(): number {
    return this.#taken ? 0 : this.#len;
  }

  /** The frames written since the last take(), as one view (valid until the next write after take). */
  take(): Uint8Array {
    if (this.#taken) return EMPTY;
    this.#taken = true;
    return this.#buf.subarray(0, this.#len);
  }

  /**
   * The frames written since the last take() or swap(), as one view that stays valid until the
   * next swap(): new frames go to a second buffer meanwhile, so a caller can write the view out
   * piece by piece while frames keep coming (no copy either way).
   */
  swap(): Uint8Array {
    const n = this.length;
    if (n === 0) return EMPTY;
    const out = this.#buf.subarray(0, n);
    const spare = this.#spare ?? new Uint8Array(this.#buf.length);
    this.#spare = this.#buf;
    this.#buf = spare;
    const peak = this.#peak;
    this.#peak = this.#sparePeak;
    this.#sparePeak = peak;
    this.#len = 0;
    this.#taken = false;
    if (++this.#swaps >= _SHRINK_AFTER) this.#shrink();
    return out;
  }

  /**
   * Every so many swaps: a buffer larger than it needs to be (under a quarter full all the
   * while) is sized down, so one burst's buffers are not kept for ever.
   */
  #shrink(): void {
    this.#swaps = 0;
    const size = (peak: number) => {
      let s = _KEEP_BUFFER;
      while (s < 2 * peak) s *= 2;
      return s;
    };
    if (this.#buf.length > _KEEP_BUFFER && this.#peak < this.#buf.length / 4) {
      this.#buf = new Uint8Array(size(this.#peak));
    }
    const spare = this.#spare;
    if (spare && spare.length > _KEEP_BUFFER && this.#sparePeak < spare.length / 4) {
      this.#spare = new Uint8Array(size(this.#sparePeak));
    }
    this.#peak = 0;
    this.#sparePeak = 0;
  }

  /** HELLO on stream 0. */
  hello(f: LinkHelloFrame): void {
    const name = encoder.encode(f.name);
    if (name.length < 1 || name.length > LINK_MAX_NAME) {
      throw new RangeError(`Link name must be 1-64 UTF-8 bytes: got ${name.length}`);
    }
    _checkU32("Capabilities", f.capabilities);
    _checkU32("Window", f.window);
    const o = this.#frame(LinkFrameType.HELLO, 0, 0, 11 + name.length);
    const b = this.#buf;
    this.#put16(o, f.version);
    this.#put32(o + 2, f.capabilities);
    this.#put32(o + 6, f.window);
    b[o + 10] = name.length;
    b.set(name, o + 11);
  }

  /** WELCOME on stream 0. */
  welcome(f: LinkWelcomeFrame): void {
    if (f.instance.length !== 8) {
      throw new RangeError(`Instance id must be 8 bytes: got ${f.instance.length}`);
    }
    _checkU32("Capabilities", f.capabilities);
    _checkU32("Window", f.window);
    const o = this.#frame(LinkFrameType.WELCOME, 0, 0, 18);
    this.#put16(o, f.version);
    this.#put32(o + 2, f.capabilities);
    this.#put32(o + 6, f.window);
    this.#buf.set(f.instance, o + 10);
  }

  /** PING on stream 0. */
  ping(id: bigint): void {
    this.#put64(this.#frame(LinkFrameType.PING, 0, 0, 8), id);
  }

  /** PONG on stream 0 (echoes a ping's id). */
  pong(id: bigint): void {
    this.#put64(this.#frame(LinkFrameType.PONG, 0, 0, 8), id);
  }

  /** GOAWAY on stream 0: the sender is shutting down within `graceMs`; no new streams. */
  goaway(graceMs: number): void {
    const ms = Math.max(0, Math.min(0xffff_ffff, Math.round(graceMs)));
    this.#put32(this.#frame(LinkFrameType.GOAWAY, 0, 0, 4), ms);
  }

  /** OPEN a stream for a client. */
  open(stream: number, f: LinkOpenFrame): void {
    _checkStream(stream, false);
    const tag = TAG_CODES.indexOf(f.tag);
    if (tag < 0) throw new RangeError(`Unknown transport tag: "${f.tag}"`);
    if (!Number.isInteger(f.dcId) || f.dcId < -32768 || f.dcId > 32767) {
      throw new RangeError(`DC id must be an i16: got ${f.dcId}`);
    }
    if (!Number.isInteger(f.clientPort) || f.clientPort < 0 || f.clientPort > 0xffff) {
      throw new RangeError(`Port must be a u16: got ${f.clientPort}`);
    }
    if (f.adTag !== null && f.adTag.length !== AD_TAG_LEN) {
      throw new RangeError(`Ad tag must be 16 bytes: got ${f.adTag.length}`);
    }
    const ip = ipv6Mapped(f.clientIp);
    const o = this.#frame(
      LinkFrameType.OPEN,
      0,
      stream,
      OPEN_LEN + (f.adTag === null ? 0 : AD_TAG_LEN),
    );
    const b = this.#buf;
    this.#put16(o, f.dcId & 0xffff);
    b[o + 2] = tag;
    b.set(ip, o + 3);
    this.#put16(o + 19, f.clientPort);
    if (f.adTag !== null) b.set(f.adTag, o + OPEN_LEN);
  }

  /** OPENED: the stream reached Telegram. `where` is cut to 200 UTF-8 bytes. */
  opened(stream: number, f: LinkOpenedFrame): void {
    _checkStream(stream, false);
    if (!Number.isInteger(f.dcId) || f.dcId < -32768 || f.dcId > 32767) {
      throw new RangeError(`DC id must be an i16: got ${f.dcId}`);
    }
    const where = _utf8Capped(f.where, LINK_MAX_TEXT);
    const o = this.#frame(LinkFrameType.OPENED, 0, stream, 3 + where.length);
    this.#put16(o, f.dcId & 0xffff);
    this.#buf[o + 2] = f.via === "direct" ? 0 : 1;
    this.#buf.set(where, o + 3);
  }

  /** DATA: one client packet. */
  data(stream: number, payload: Uint8Array, quickAck: boolean): void {
    this.#payload(LinkFrameType.DATA, quickAck ? LINK_FLAG_QUICK_ACK : 0, stream, payload);
  }

  /** ANSWER: one Telegram packet. */
  answer(stream: number, payload: Uint8Array): void {
    this.#payload(LinkFrameType.ANSWER, 0, stream, payload);
  }

  /** QUICK_ACK: a 4-byte confirmation. */
  quickAck(stream: number, confirm: Uint8Array): void {
    if (confirm.length !== 4) {
      throw new RangeError(`Quick ack must be 4 bytes: got ${confirm.length}`);
    }
    this.#payload(LinkFrameType.QUICK_ACK, 0, stream, confirm);
  }

  /** ACK: `bytes` of payload were delivered (credit back to the sender). */
  ack(stream: number, bytes: number): void {
    _checkStream(stream, false);
    _checkU32("Acknowledged bytes", bytes);
    this.#put32(this.#frame(LinkFrameType.ACK, 0, stream, 4), bytes);
  }

  /** CLOSE a stream. `detail` is cut to 200 UTF-8 bytes. */
  close(stream: number, reason: LinkCloseReason, detail: string): void {
    _checkStream(stream, false);
    const code = LINK_CLOSE_REASONS.indexOf(reason);
    if (code < 0) throw new RangeError(`Unknown close reason: "${reason}"`);
    const text = _utf8Capped(detail, LINK_MAX_TEXT);
    const o = this.#frame(LinkFrameType.CLOSE, 0, stream, 1 + text.length);
    this.#buf[o] = code;
    this.#buf.set(text, o + 1);
  }

  #payload(type: number, flags: number, stream: number, payload: Uint8Array): void {
    _checkStream(stream, false);
    if (payload.length > LINK_MAX_PAYLOAD) {
      throw new RangeError(
        `Frame payload must be at most ${LINK_MAX_PAYLOAD} bytes: got ${payload.length}`,
      );
    }
    const o = this.#frame(type, flags, stream, payload.length);
    this.#buf.set(payload, o);
  }

  /** Reserve a frame, write its header; returns the payload offset. */
  #frame(type: number, flags: number, stream: number, len: number): number {
    if (this.#taken) {
      this.#taken = false;
      this.#len = 0;
      // Let one large burst's buffer go.
      if (this.#buf.length > 4 * LINK_MAX_PAYLOAD) this.#buf = new Uint8Array(65536);
    }
    const need = this.#len + LINK_FRAME_HEADER + len;
    if (need > this.#buf.length) {
      let size = this.#buf.length * 2;
      while (size < need) size *= 2;
      const bigger = new Uint8Array(size);
      bigger.set(this.#buf.subarray(0, this.#len));
      this.#buf = bigger;
    }
    const o = this.#len;
    const b = this.#buf;
    b[o] = type;
    b[o + 1] = flags;
    this.#put32(o + 2, stream);
    this.#put32(o + 6, len);
    this.#len = need;
    if (need > this.#peak) this.#peak = need;
    return o + LINK_FRAME_HEADER;
  }

  #put16(o: number, v: number): void {
    const b = this.#buf;
    b[o] = v & 0xff;
    b[o + 1] = (v >>> 8) & 0xff;
  }

  #put32(o: number, v: number): void {
    const b = this.#buf;
    b[o] = v & 0xff;
    b[o + 1] = (v >>> 8) & 0xff;
    b[o + 2] = (v >>> 16) & 0xff;
    b[o + 3] = (v >>> 24) & 0xff;
  }

  #put64(o: number, v: bigint): void {
    const x = BigInt.asUintN(64, v);
    this.#put32(o, Number(x & 0xffff_ffffn));
    this.#put32(o + 4, Number(x >> 32n));
  }
}
