/**
 * Incremental unframing of a client's plaintext transport stream (middle-proxy mode re-frames:
 * every client packet becomes one RPC_PROXY_REQ). Frames wholly inside a chunk come out as
 * views into it; only a frame split across chunks is copied.
 *
 * @module
 */
import { type FrameRejectReason, FrameSpan, type Packet, scanFrame } from "./framing.ts";
import type { TransportTag } from "./obfuscated2.ts";

/** Reads packets out of a stream of plaintext chunks. */
export class PacketReader {
  readonly #tag: TransportTag;
  readonly #span = new FrameSpan();
  /** Bytes of an incomplete frame carried over from earlier chunks (none: `_EMPTY`). */
  #pending: Uint8Array = _EMPTY;
  #pendingLen = 0;
  /** The buffer of a carried-over frame handed out by the last `push`, until the next one. */
  #handedOut: Uint8Array | null = null;

  constructor(tag: TransportTag) {
    this.#tag = tag;
  }

  /**
   * Feed the next chunk. Returns the complete packets (views valid until the next call) or
   * why the stream is broken.
   */
  push(chunk: Uint8Array): Packet[] | FrameRejectReason {
    const out: Packet[] = [];
    const span = this.#span;
    if (this.#handedOut !== null) {
      _recycle(this.#handedOut); // the caller is done with the last call's packets
      this.#handedOut = null;
    }
    let off = 0;
    // Finish a carried-over frame, taking from `chunk` only the bytes it still needs.
    while (this.#pendingLen > 0) {
      const held = this.#pending.subarray(0, this.#pendingLen);
      const r = scanFrame(this.#tag, held, 0, span);
      if (r === "reject") return span.reason!;
      if (r === "frame") {
        out.push({
          payload: this.#pending.subarray(span.payloadStart, span.payloadEnd),
          quickAck: span.quickAck,
        });
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
    // Offsets, not views: one view (the payload) per packet.
    while (off < chunk.length) {
      const r = scanFrame(this.#tag, chunk, off, span);
      if (r === "reject") return span.reason!;
      if (r === "need") {
        this.#hold(chunk.subarray(off), span.end - off);
        break;
      }
      out.push({
        payload: chunk.subarray(span.payloadStart, span.payloadEnd),
        quickAck: span.quickAck,
      });
      off = span.end;
    }
    return out;
  }

  /** Append `bytes` to the carried-over frame, which will need `frameLen` bytes in all. */
  #hold(bytes: Uint8Array, frameLen: number): void {
    const need = this.#pendingLen + bytes.length;
    if (this.#pending.length < need) {
      // Room in proportion to what the client really sent, never to the length it claims (a
      // header alone must not buy a large buffer): a shared buffer once a good part of a frame
      // that fits one is here, else twice what is held.
      const shared = frameLen <= _SPLIT_BUFFER && need >= _SPLIT_BUFFER / 4;
      const bigger = shared
        ? _splitBuffers.pop() ?? new Uint8Array(_SPLIT_BUFFER)
        : new Uint8Array(Math.min(Math.max(need, 2 * this.#pending.length, 256), frameLen));
      bigger.set(this.#pending.subarray(0, this.#pendingLen));
      _recycle(this.#pending);
      this.#pending = bigger;
    }
    this.#pending.set(bytes, this.#pendingLen);
    this.#pendingLen = need;
  }
}

const _EMPTY = new Uint8Array(0);

/**
 * Shared buffers for frames split across reads (up to a 16 KiB packet and then some): a reader
 * holds one only while a frame is incomplete, so idle clients keep none, and a busy one does not
 * allocate per split frame.
 */
const _SPLIT_BUFFER = 32 * 1024;
const _SPLIT_BUFFERS_MAX = 64;
const _splitBuffers: Uint8Array[] = [];

function _recycle(buf: Uint8Array): void {
  if (buf.length === _SPLIT_BUFFER && _splitBuffers.length < _SPLIT_BUFFERS_MAX) {
    _splitBuffers.push(buf);
  }
}
