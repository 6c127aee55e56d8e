/**
 * Incremental unframing of a client's plaintext transport stream (middle-proxy mode re-frames:
 * every client packet becomes one RPC_PROXY_REQ). Frames wholly inside a chunk come out as
 * views into it; only a frame split across chunks is copied.
 *
 * @module
 */
import {
  decodeFrame,
  type FrameRejectReason,
  FrameSpan,
  type Packet,
  scanFrame,
} from "./framing.ts";
import type { TransportTag } from "./obfuscated2.ts";

/** Reads packets out of a stream of plaintext chunks. */
export class PacketReader {
  readonly #tag: TransportTag;
  readonly #span = new FrameSpan();
  /** Bytes of an incomplete frame carried over from earlier chunks. */
  #pending: Uint8Array = new Uint8Array(0);
  #pendingLen = 0;

  constructor(tag: TransportTag) {
    this.#tag = tag;
  }

  /**
   * Feed the next chunk. Returns the complete packets (views valid until the next call) or
   * why the stream is broken.
   */
  push(chunk: Uint8Array): Packet[] | FrameRejectReason {
    const out: Packet[] = [];
    let buf = chunk;
    if (this.#pendingLen > 0) {
      // Finish the carried-over frame: append (amortised growth), decode, then go on in place.
      const before = this.#pendingLen;
      this.#append(chunk);
      const view = this.#pending.subarray(0, this.#pendingLen);
      const step = decodeFrame(this.#tag, view);
      if (step.kind === "reject") return step.reason;
      if (step.kind === "need") return out;
      out.push({ payload: step.frame.payload.slice(), quickAck: step.frame.quickAck });
      const frameEnd = view.length - step.rest.length;
      this.#pendingLen = 0;
      buf = chunk.subarray(frameEnd - before);
    }
    // Offsets, not views: one view (the payload) per packet.
    const span = this.#span;
    let off = 0;
    while (off < buf.length) {
      const r = scanFrame(this.#tag, buf, off, span);
      if (r === "reject") return span.reason!;
      if (r === "need") {
        this.#append(off === 0 ? buf : buf.subarray(off));
        break;
      }
      out.push({
        payload: buf.subarray(span.payloadStart, span.payloadEnd),
        quickAck: span.quickAck,
      });
      off = span.end;
    }
    return out;
  }

  #append(bytes: Uint8Array): void {
    const need = this.#pendingLen + bytes.length;
    if (this.#pending.length < need) {
      const bigger = new Uint8Array(Math.max(need, this.#pending.length * 2, 256));
      bigger.set(this.#pending.subarray(0, this.#pendingLen));
      this.#pending = bigger;
    }
    this.#pending.set(bytes, this.#pendingLen);
    this.#pendingLen = need;
  }
}
