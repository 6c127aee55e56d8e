/**
 * A packet-shaped direct connection to a Telegram DC, for one client stream of a split-mode
 * back (or any {@linkcode TelegramStream} user that has packets rather than bytes): the proxy
 * dials the DC as its client (obfuscated2 with no secret, the client's transport tag, no fast
 * mode), frames and encrypts the packets it is given, and decrypts and unframes what the DC
 * answers. Reading stops while the client holds too many answer bytes it has not acknowledged.
 *
 * @module
 */
import type { StreamCipher } from "../crypto.ts";
import { closeQuietly, type Conn, DialTimeoutError, formatHostPort, writeAll } from "../net.ts";
import { logger } from "../ops/log.ts";
import { reportUnexpected } from "../ops/last_resort.ts";
import { frameLength, MAX_FRAME_BYTES, type Packet, writeFrame } from "../protocol/framing.ts";
import type { TransportTag } from "../protocol/obfuscated2.ts";
import { ServerFrameReader } from "../protocol/server_frame_reader.ts";
import type { DcRoute } from "./dc.ts";
import { openDirect } from "./direct.ts";
import {
  type TelegramClient,
  type TelegramCloseReason,
  TelegramOpenError,
  type TelegramStream,
  type TelegramTarget,
} from "./side.ts";

/** Options for {@linkcode openDirectStream}. */
export interface DirectStreamOptions {
  /** Connect timeout. */
  readonly timeoutMs: number;
  /** Aborts the dial (the stream is then not opened). */
  readonly signal?: AbortSignal;
  /**
   * Stop reading the DC while this many answer payload bytes are delivered to the client but
   * not yet acknowledged via `ack()`.
   */
  readonly windowBytes: number;
}

/**
 * A stream that frames each packet as it is handed over, so the caller may reuse the payload's
 * bytes as soon as the call returns (no copy to keep them).
 */
export interface PacketWriter {
  /**
   * Frame one packet into the next write (sent with everything else queued in the same turn of
   * the event loop). Resolves once that write is on the socket; packets of one write share one
   * promise, so a caller can tell a new write by a new promise.
   */
  sendPacket(payload: Uint8Array, quickAck: boolean): Promise<void>;
}

/** A stream whose reading its client can hold back for a while. */
export interface ReadPausable {
  /** Read no more (after a read under way) until resume(): what comes waits in the socket. */
  pause(): void;
  /** Read again (unless the window or another reason still holds the reader back). */
  resume(): void;
}

/** A direct DC stream; `finished` lets a caller (a test) wait for the very end. */
export interface DirectStream extends TelegramStream, PacketWriter, ReadPausable {
  /** Resolves once the socket is closed, the read loop has stopped and both ciphers are freed. */
  readonly finished: Promise<void>;
}

/**
 * Dial `route`'s DC (obfuscated2 init with `target.tag`, no secret, as `openDirect` does; no
 * fast mode), then carry packets: `send()` frames each packet in the tag's framing (padded:
 * 0..15 random padding bytes per frame, as clients add; a quick-ack request as the transport
 * encodes it) and encrypts it; a read loop decrypts the DC's bytes, unframes them and calls
 * `client.onPacket(payload)` per packet (transport errors such as −404 included) and
 * `client.onQuickAck(confirm)` per quick-ack token, with the confirm in the intermediate form
 * whatever the transport (what `quickAckToken(tag, confirm)` takes).
 *
 * Rejects with {@linkcode TelegramOpenError}: "timeout" when the dial ran out of time or
 * `signal` aborted it, "unreachable" otherwise.
 *
 * The stream ends with `client.onClose("close_ext")` when the DC closes, and "connection_lost"
 * on a socket error, on a frame that breaks the framing, or when a client callback throws
 * (logged). After `release()`, `onClose` is never called.
 *
 * @example Usage
 * ```ts ignore
 * const stream = await openDirectStream(routeDc(2, config.telegram), client, target, {
 *   timeoutMs: 10_000,
 *   windowBytes: 1 << 20,
 * });
 * await stream.send([{ payload, quickAck: false }]);
 * // client.onPacket(answer) ... then, once written to the client:
 * stream.ack(answer.length, 1);
 * stream.release();
 * ```
 */
export async function openDirectStream(
  route: DcRoute,
  client: TelegramClient,
  target: TelegramTarget,
  options: DirectStreamOptions,
): Promise<DirectStream> {
  if (!(options.windowBytes > 0)) {
    throw new RangeError(`Window must be a positive number of bytes: got ${options.windowBytes}`);
  }
  const where = formatHostPort(route.address.host, route.address.port);
  const signal = options.signal;
  if (signal?.aborted) throw new TelegramOpenError("timeout", `DC ${where}: aborted`);
  let dc;
  try {
    dc = await openDirect(
      route,
      target.tag,
      signal ? { timeoutMs: options.timeoutMs, signal } : { timeoutMs: options.timeoutMs },
    );
  } catch (e) {
    if (e instanceof DialTimeoutError) throw new TelegramOpenError("timeout", e.message);
    if (signal?.aborted) throw new TelegramOpenError("timeout", `DC ${where}: aborted`);
    throw new TelegramOpenError("unreachable", `DC ${where}: ${_message(e)}`);
  }
  const { conn, encryptor, decryptor } = dc;
  if (decryptor === null || signal?.aborted) {
    // Aborted while the init was written: nobody would release the stream.
    closeQuietly(conn);
    encryptor.close();
    decryptor?.close();
    throw new TelegramOpenError("timeout", `DC ${where}: aborted`);
  }
  return new _DirectStream(conn, encryptor, decryptor, client, target.tag, options.windowBytes);
}

function _message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

const _log = logger("telegram");

/**
 * Read buffer sizes: idle, active, bulk (an idle stream's pending read pins its buffer). An idle
 * stream reads into a small slot of a shared slab (no buffer object of its own); a full read
 * moves it up to the pooled buffers, a sparse one back.
 */
const _READ_SIZES = [256, 16384, 65536] as const;
/** A read this short at a larger size goes back to the idle slot. */
const _SPARSE_READ = 1024;
/** Free read buffers of the larger sizes, shared by every stream (reads never overlap a use). */
const _freeReadBuffers: Uint8Array[][] = [[], [], []];
const _FREE_READ_BUFFERS_MAX = [0, 256, 64] as const;

function _takeReadBuffer(level: number): Uint8Array {
  return _freeReadBuffers[level]!.pop() ?? new Uint8Array(_READ_SIZES[level]!);
}

function _giveReadBuffer(level: number, buf: Uint8Array): void {
  const free = _freeReadBuffers[level]!;
  if (free.length < _FREE_READ_BUFFERS_MAX[level]!) free.push(buf);
}

/** Idle read slots: views into shared slabs, one per stream while its read loop runs. */
const _SLOTS_PER_SLAB = 256;
const _freeSlots: Uint8Array[] = [];

function _takeSlot(): Uint8Array {
  if (_freeSlots.length === 0) {
    const slab = new Uint8Array(_READ_SIZES[0] * _SLOTS_PER_SLAB);
    for (let i = _SLOTS_PER_SLAB - 1; i >= 0; i--) {
      _freeSlots.push(slab.subarray(i * _READ_SIZES[0], (i + 1) * _READ_SIZES[0]));
    }
  }
  return _freeSlots.pop()!;
}

/**
 * Write buffers: a batch of framed packets is built in one of these (pooled, shared by every
 * stream: a small one for the usual few packets, a large one for bulk) and goes back once
 * written; a batch that outgrows the large size gets a buffer of its own.
 */
const _SMALL_WRITE = 2048;
const _LARGE_WRITE = 65536;
const _freeSmallWrites: Uint8Array[] = [];
const _freeLargeWrites: Uint8Array[] = [];
const _FREE_SMALL_WRITES_MAX = 256;
const _FREE_LARGE_WRITES_MAX = 64;

/** A write buffer of at least `size` bytes. */
function _takeWriteBuffer(size: number): Uint8Array {
  if (size <= _SMALL_WRITE) return _freeSmallWrites.pop() ?? new Uint8Array(_SMALL_WRITE);
  if (size <= _LARGE_WRITE) return _freeLargeWrites.pop() ?? new Uint8Array(_LARGE_WRITE);
  return new Uint8Array(size);
}

function _giveWriteBuffer(buf: Uint8Array): void {
  if (buf.length === _SMALL_WRITE) {
    if (_freeSmallWrites.length < _FREE_SMALL_WRITES_MAX) _freeSmallWrites.push(buf);
  } else if (buf.length === _LARGE_WRITE) {
    if (_freeLargeWrites.length < _FREE_LARGE_WRITES_MAX) _freeLargeWrites.push(buf);
  }
}

/** Random bytes for padding, drawn from the CSPRNG a few KiB at a time. */
const _random = new Uint8Array(4096);
let _randomAt = _random.length;

/** `n` (at most 4096) fresh random bytes: a view valid until the next call. */
function _randomBytes(n: number): Uint8Array {
  if (_randomAt + n > _random.length) {
    crypto.getRandomValues(_random);
    _randomAt = 0;
  }
  const out = _random.subarray(_randomAt, _randomAt + n);
  _randomAt += n;
  return out;
}

/** Framed packets waiting for one write (or in it), and the promise their senders hold. */
interface _Batch {
  buf: Uint8Array;
  len: number;
  readonly done: PromiseWithResolvers<void>;
}

class _DirectStream implements DirectStream {
  readonly #conn: Conn;
  readonly #encryptor: StreamCipher;
  readonly #decryptor: StreamCipher;
  readonly #client: TelegramClient;
  readonly #tag: TransportTag;
  readonly #window: number;
  /** Answer payload bytes handed to the client and not acknowledged yet. */
  #unacked = 0;
  /** Set while the read loop waits for acks (or for resume()). */
  #resume: (() => void) | null = null;
  /** pause() holds the reader back. */
  #paused = false;
  /** The socket is closed (released, or the stream ended). */
  #closed = false;
  #released = false;
  /** Framed packets for the next write (null: none), and full batches before it, in order. */
  #batch: _Batch | null = null;
  #full: _Batch[] | null = null;
  #flushing = false;
  #encryptorClosed = false;
  readonly finished: Promise<void>;

  constructor(
    conn: Conn,
    encryptor: StreamCipher,
    decryptor: StreamCipher,
    client: TelegramClient,
    tag: TransportTag,
    windowBytes: number,
  ) {
    this.#conn = conn;
    this.#encryptor = encryptor;
    this.#decryptor = decryptor;
    this.#client = client;
    this.#tag = tag;
    this.#window = windowBytes;
    this.finished = this.#readLoop();
  }

  /**
   * Frame packets into the next write, with whatever else is queued in the same turn of the
   * event loop, in one encrypted write. Resolves once they are on the DC's socket. The packets
   * are framed before this returns: their bytes may be reused at once.
   */
  send(packets: readonly Packet[]): Promise<void> {
    if (this.#closed) return Promise.reject(new Error("Direct DC stream is closed"));
    if (packets.length === 0) return Promise.resolve();
    if (this.#tag === "abridged") {
      for (const p of packets) {
        if (p.payload.length % 4 !== 0) return _misaligned(p.payload.length);
      }
    }
    for (const p of packets) this.#put(p.payload, p.quickAck);
    return this.#schedule();
  }

  sendPacket(payload: Uint8Array, quickAck: boolean): Promise<void> {
    if (this.#closed) return Promise.reject(new Error("Direct DC stream is closed"));
    if (this.#tag === "abridged" && payload.length % 4 !== 0) return _misaligned(payload.length);
    this.#put(payload, quickAck);
    return this.#schedule();
  }

  ack(bytes: number, _packets: number): void {
    if (!(bytes > 0) || this.#unacked === 0) return;
    this.#unacked = Math.max(0, this.#unacked - bytes);
    this.#wake();
  }

  pause(): void {
    this.#paused = true;
  }

  resume(): void {
    this.#paused = false;
    this.#wake();
  }

  /** Let a waiting reader go on, if nothing holds it back any more. */
  #wake(): void {
    if (this.#resume !== null && this.#unacked < this.#window && !this.#paused) {
      const resume = this.#resume;
      this.#resume = null;
      resume();
    }
  }

  release(): void {
    this.#released = true;
    this.#shutdown(null, "released");
  }

  /** The current batch's promise; its write starts in a microtask. */
  #schedule(): Promise<void> {
    if (!this.#flushing) {
      this.#flushing = true;
      queueMicrotask(() => this.#flush());
    }
    return this.#batch!.done.promise;
  }

  /**
   * Frame one packet into the current batch (padded: a random length 0..15 and random padding
   * bytes, never taking a frame past the 1 MiB that receivers accept).
   */
  #put(payload: Uint8Array, quickAck: boolean): void {
    const tag = this.#tag;
    const len = payload.length;
    let pad = 0;
    if (tag === "padded") {
      pad = Math.min(_randomBytes(1)[0]! & 15, Math.max(0, MAX_FRAME_BYTES - len));
    }
    const size = frameLength(tag, len, pad);
    const batch = this.#room(size);
    const off = batch.len;
    writeFrame(tag, payload, pad > 0 ? _randomBytes(pad) : _NO_PADDING, batch.buf, off);
    if (quickAck) {
      // Abridged: bit 7 of the first length byte; intermediate/padded: bit 31 of the u32 LE.
      if (tag === "abridged") batch.buf[off]! |= 0x80;
      else batch.buf[off + 3]! |= 0x80;
    }
    batch.len = off + size;
  }

  /**
   * The current batch, with room for `size` more bytes. A full batch goes to the queue as it is
   * (no regrowth copy) when the packet fits a pooled buffer: the next write takes it, the one
   * after that the new batch.
   */
  #room(size: number): _Batch {
    const batch = this.#batch;
    if (batch !== null && batch.len + size <= batch.buf.length) return batch;
    if (batch !== null) {
      if (batch.buf.length === _SMALL_WRITE && batch.len + size <= _LARGE_WRITE) {
        // A few small packets, then a large one: move to a large buffer (a small copy).
        const large = _takeWriteBuffer(_LARGE_WRITE);
        large.set(batch.buf.subarray(0, batch.len));
        _giveWriteBuffer(batch.buf);
        batch.buf = large;
        return batch;
      }
      if (size > _LARGE_WRITE) {
        // A packet too large for a pooled buffer goes in this write, in a buffer of its own.
        const bigger = _takeWriteBuffer(batch.len + size);
        bigger.set(batch.buf.subarray(0, batch.len));
        _giveWriteBuffer(batch.buf);
        batch.buf = bigger;
        return batch;
      }
      (this.#full ??= []).push(batch);
    }
    const next = { buf: _takeWriteBuffer(size), len: 0, done: Promise.withResolvers<void>() };
    // One send() may fill several batches and return the last one's promise: a failure of the
    // others is seen there too (they are written first), so theirs need no handler.
    next.done.promise.catch(() => {});
    this.#batch = next;
    return next;
  }

  /** The next batch to write: a full one in order, else the current one. */
  #nextBatch(): _Batch | null {
    const full = this.#full;
    if (full !== null) {
      const batch = full.shift()!;
      if (full.length === 0) this.#full = null;
      return batch;
    }
    const batch = this.#batch;
    this.#batch = null;
    return batch;
  }

  async #flush(): Promise<void> {
    try {
      while (!this.#closed) {
        const batch = this.#nextBatch();
        if (batch === null) break;
        const bytes = batch.buf.subarray(0, batch.len);
        try {
          this.#encryptor.update(bytes);
          await writeAll(this.#conn, bytes);
        } catch (e) {
          batch.done.reject(e);
          this.#shutdown("connection_lost", `write failed: ${_message(e)}`);
          return;
        }
        _giveWriteBuffer(batch.buf);
        batch.done.resolve();
      }
    } finally {
      this.#flushing = false;
      if (this.#closed) {
        this.#failQueued();
        this.#closeEncryptor();
      }
    }
  }

  async #readLoop(): Promise<void> {
    const slot = _takeSlot();
    let level = 0;
    let buf = slot;
    let reader: ServerFrameReader | null = null;
    let reason: TelegramCloseReason = "close_ext";
    let why = "the DC closed the connection";
    try {
      while (!this.#closed) {
        if (this.#unacked >= this.#window || this.#paused) {
          // Backpressure: the client has not written out what it was given yet, or cannot
          // take more now.
          await new Promise<void>((r) => (this.#resume = r));
          continue;
        }
        const n = await this.#conn.read(buf);
        if (n === null) break;
        if (this.#closed) break;
        this.#decrypt(buf, n);
        reader ??= new ServerFrameReader(this.#tag);
        let bad: string | null;
        try {
          bad = this.#deliver(reader, buf, n);
        } catch (e) {
          reason = "connection_lost";
          why = `client callback threw: ${_message(e)}`;
          reportUnexpected("Direct DC stream: a client callback threw; the stream was closed", e);
          break;
        }
        if (bad !== null) {
          reason = "connection_lost";
          why = `bad frame from the DC: ${bad}`;
          break;
        }
        // A reader with no split item to carry is let go (an idle stream keeps none, nor the
        // carry-over buffer of its last large packet); the next read gets a fresh one.
        if (reader.buffered === 0) reader = null;
        // Follow the traffic: a bigger buffer after a full read, the idle slot when sparse.
        if (n === buf.length && level < _READ_SIZES.length - 1) {
          if (level > 0) _giveReadBuffer(level, buf);
          buf = _takeReadBuffer(++level);
        } else if (n < _SPARSE_READ && level > 0) {
          _giveReadBuffer(level, buf);
          level = 0;
          buf = slot;
        }
      }
    } catch (e) {
      reason = "connection_lost";
      why = _message(e);
    } finally {
      if (level > 0) _giveReadBuffer(level, buf);
      _freeSlots.push(slot);
      this.#decryptor.close();
      this.#shutdown(reason, why);
    }
  }

  #decrypt(buf: Uint8Array, n: number): void {
    this.#decryptor.update(buf.subarray(0, n));
  }

  /**
   * Unframe the `n` bytes read (and decrypted) into `buf` and hand them to the client; returns
   * why the framing is broken, or null (a throwing callback throws). Its own frame, so that
   * nothing of it (views, items) stays referenced while the read loop waits.
   */
  #deliver(reader: ServerFrameReader, buf: Uint8Array, n: number): string | null {
    const chunk = buf.subarray(0, n);
    const items = reader.push(chunk);
    if (typeof items === "string") return items;
    for (const item of items) {
      if (this.#closed) break;
      if (item.kind === "packet") {
        this.#unacked += item.data.length;
        this.#client.onPacket(item.data);
      } else {
        this.#client.onQuickAck(item.confirm);
      }
    }
    return null;
  }

  /** Close the socket once; tell the client `reason` unless it released the stream. */
  #shutdown(reason: TelegramCloseReason | null, why: string): void {
    if (this.#closed) return;
    this.#closed = true;
    closeQuietly(this.#conn);
    const resume = this.#resume;
    this.#resume = null;
    resume?.();
    if (!this.#flushing) {
      this.#failQueued();
      this.#closeEncryptor();
    }
    if (reason === null || this.#released) return;
    _log.debug("Direct DC stream closed: {why}", { why });
    try {
      this.#client.onClose(reason);
    } catch (e) {
      reportUnexpected("Direct DC stream: the client's onClose threw", e);
    }
  }

  #failQueued(): void {
    for (let batch = this.#nextBatch(); batch !== null; batch = this.#nextBatch()) {
      batch.done.reject(new Error("Direct DC stream is closed"));
    }
  }

  #closeEncryptor(): void {
    if (this.#encryptorClosed) return;
    this.#encryptorClosed = true;
    this.#encryptor.close();
  }
}

const _NO_PADDING = new Uint8Array(0);

function _misaligned(length: number): Promise<never> {
  return Promise.reject(
    new RangeError(`Abridged payload must be a multiple of 4 bytes: got ${length}`),
  );
}
