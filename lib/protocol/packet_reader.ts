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
  /** What `push` returns, reused: the array and its packet objects live until the next push. */
  readonly #out: _MutablePacket[] = [];
  /**
   * Packets this push has found: `#out` is filled by index and cut to this length on return
   * (emptying it first would drop its backing store, to be regrown by every push).
   */
  #count = 0;
  readonly #packets: _MutablePacket[] = [];

  constructor(tag: TransportTag) {
    this.#tag = tag;
  }

  /**
   * Feed the next chunk. Returns the complete packets or why the stream is broken. The array,
   * its packets and their payloads (views) are valid until the next call: they are reused.
   */
  push(chunk: Uint8Array): Packet[] | FrameRejectReason {
    this.#count = 0;
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
        this.#add(this.#pending.subarray(span.payloadStart, span.payloadEnd), span.quickAck);
        this.#handedOut = this.#pending;
        this.#pending = _EMPTY;
        this.#pendingLen = 0;
        break;
      }
      if (off === chunk.length) return this.#result();
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
      this.#add(chunk.subarray(span.payloadStart, span.payloadEnd), span.quickAck);
      off = span.end;
    }
    return this.#result();
  }

  /** What `push` returns: `#out` cut to the packets found, older payloads let go. */
  #result(): Packet[] {
    const out = this.#out;
    const n = this.#count;
    if (out.length !== n) out.length = n;
    this.#forgetStale();
    return out;
  }

  /**
   * Let go of the payloads older pushes left in the kept packet objects (they may be the only
   * reference to a large buffer), and of most objects once traffic is sparse.
   */
  #forgetStale(): void {
    const packets = this.#packets;
    const n = this.#out.length;
    for (let i = n; i < packets.length && packets[i]!.payload !== _EMPTY; i++) {
      packets[i]!.payload = _EMPTY;
    }
    if (n <= 1 && packets.length > _PACKETS_IDLE) packets.length = _PACKETS_IDLE;
  }

  /** Append a packet to what this push returns, in a packet object kept from earlier pushes. */
  #add(payload: Uint8Array, quickAck: boolean): void {
    const packets = this.#packets;
    const n = this.#count++;
    let p = packets[n];
    if (p === undefined) {
      p = { payload, quickAck };
      if (n < _PACKETS_KEPT) packets.push(p);
    } else {
      p.payload = payload;
      p.quickAck = quickAck;
    }
    this.#out[n] = p;
  }

  /** Append `bytes` to the carried-over frame, which will need `frameLen` bytes in all. */
  #hold(bytes: Uint8Array, frameLen: number): void {
    const need = this.#pendingLen + bytes.length;
    if (this.#pending.length < need) {
      // Room in proportion to what the client really sent, never to the length it claims (a
      // header alone must not buy a large buffer): a small shared buffer for a small frame (the
      // usual one cut by the end of a read) once 256 bytes are here, a large one once a good
      // part of a frame that fits one is here, else twice what is held.
      const small = frameLen <= _SMALL_SPLIT_BUFFER && need >= _SMALL_SPLIT_MIN;
      const shared = !small && frameLen <= _SPLIT_BUFFER && need >= _SPLIT_BUFFER / 4;
      const bigger = small
        ? _smallSplitBuffers.pop() ?? new Uint8Array(_SMALL_SPLIT_BUFFER)
        : shared
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

/** A packet object of the reader's own (consumers see {@linkcode Packet}, read-only). */
interface _MutablePacket {
  payload: Uint8Array;
  quickAck: boolean;
}

/**
 * Packet objects a reader keeps for reuse: a 64 KiB read of 1 KiB packets holds 64. A push
 * of at most one packet cuts them to `_PACKETS_IDLE`.
 */
const _PACKETS_KEPT = 128;
const _PACKETS_IDLE = 4;

/**
 * Shared buffers for frames split across reads (up to a 16 KiB packet and then some): a reader
 * holds one only while a frame is incomplete, so idle clients keep none, and a busy one does not
 * allocate per split frame.
 */
const _SPLIT_BUFFER = 32 * 1024;
const _SPLIT_BUFFERS_MAX = 64;
const _splitBuffers: Uint8Array[] = [];

/**
 * The same for small frames (a 1 KiB packet cut by the end of a read), from 256 bytes held:
 * what a buffer of its own would take at least.
 */
const _SMALL_SPLIT_BUFFER = 2 * 1024;
const _SMALL_SPLIT_MIN = 256;
const _SMALL_SPLIT_BUFFERS_MAX = 256;
const _smallSplitBuffers: Uint8Array[] = [];

function _recycle(buf: Uint8Array): void {
  if (buf.length === _SPLIT_BUFFER) {
    if (_splitBuffers.length < _SPLIT_BUFFERS_MAX) _splitBuffers.push(buf);
  } else if (buf.length === _SMALL_SPLIT_BUFFER) {
    if (_smallSplitBuffers.length < _SMALL_SPLIT_BUFFERS_MAX) _smallSplitBuffers.push(buf);
  }
}
