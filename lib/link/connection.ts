/**
 * One established split-mode link (after the fake-TLS handshake), as both ends see it: AEAD
 * records on the socket, frames inside them. Frames queued during one turn of the event loop go
 * out sealed in one write; a read loop opens records and hands every frame to the owner's sink.
 * The link watches itself: a ping after `keepaliveMs` without sending, and death after
 * `timeoutMs` without receiving anything.
 *
 * @module
 */
import type { AesOptions } from "../crypto.ts";
import { closeQuietly, type Conn, writeAll } from "../net.ts";
import { reportUnexpected } from "../ops/last_resort.ts";
import { LinkFrameReader, type LinkFrameSink, LinkFrameWriter } from "../protocol/link.ts";
import { type LinkKeys, RecordOpener, RecordSealer } from "../protocol/link_records.ts";

/** Why a link ended. */
export type LinkEnd =
  /** The owner closed it (shutdown, revoked front, replaced). */
  | "closed"
  /** The peer closed the TCP connection. */
  | "eof"
  /** A read or write failed (reset). */
  | "socket_error"
  /** Nothing arrived for `timeoutMs`. */
  | "timeout"
  /** A record failed authentication: tampering or corruption on the way. */
  | "integrity"
  /** A malformed record or frame, or a frame that breaks the link protocol. */
  | "protocol_error";

/** Options for {@linkcode LinkConnection}. */
export interface LinkConnectionOptions {
  /** Send a ping after this long without sending anything. */
  readonly keepaliveMs: number;
  /** Declare the link dead after this long without receiving anything. */
  readonly timeoutMs: number;
  /** Sent once before the first record (a TLS client's ChangeCipherSpec). */
  readonly prefix?: Uint8Array;
  /** Record bytes that arrived with the handshake. */
  readonly early?: Uint8Array;
  /** Send pings (the front does; the back answers them). */
  readonly pings: boolean;
  readonly crypto?: AesOptions;
}

/** What the owner of a link learns beyond the frames. */
export interface LinkHost extends LinkFrameSink {
  /** The link is gone (called once); `detail` says more for logs. */
  linkEnded(end: LinkEnd, detail: string): void;
  /** Round trip time of a ping, in milliseconds. */
  rtt?(ms: number): void;
  /** All queued frames were written (the writer is idle): a chance to top up. */
  drained?(): void;
}

/**
 * Link socket reads. A link carries many streams' frames interleaved: a large read holds whole
 * runs of each stream's packets, so that each client or DC write the other end makes gets
 * several of them (with 64 KiB, most got one or two 16 KiB packets), and a link is one of few.
 */
const _READ_BUFFER = 256 * 1024;
/**
 * Plaintext sealed per write. Frames wait for the end of the turn of the event loop to go out
 * together, but once this much is waiting it goes at once: the peer starts on it while this end
 * is still busy (a turn with many streams' reads would otherwise build one huge write), and a
 * write never needs a sealed buffer larger than this.
 */
const _WRITE_CHUNK = 256 * 1024;
/**
 * Unsent bytes (queued frames and the part of a write not on the socket yet) above which the
 * link asks its producers to wait ({@linkcode LinkConnection.room}), and below which they go
 * on. Every stream's window together can be far more than a link can usefully hold (256
 * streams of 256 KiB are 64 MiB): past this, more would only sit in memory, late; it waits in
 * the sources' sockets instead.
 */
const _BACKLOG_HIGH = 1 << 20;
const _BACKLOG_LOW = 512 * 1024;

/** An established link. */
export class LinkConnection {
  readonly #conn: Conn;
  readonly #sealer: RecordSealer;
  readonly #opener: RecordOpener;
  readonly #reader = new LinkFrameReader();
  readonly #options: LinkConnectionOptions;
  #host: LinkHost;
  /** Frames are written here and sealed at the next flush. */
  readonly writer = new LinkFrameWriter();
  #prefix: Uint8Array | null;
  /** A flush is waiting for the end of the turn. */
  #scheduled = false;
  /** The flush loop runs (sealing, or waiting for a write). */
  #flushing = false;
  /** Bytes of the buffer being written that are not on the socket yet. */
  #unsent = 0;
  /** Resolved once the backlog is under the low mark again (null: nobody waits). */
  #room: PromiseWithResolvers<void> | null = null;
  #closed = false;
  #lastSent = Date.now();
  #lastReceived = Date.now();
  #pingId = 0n;
  #pingSentAt = 0;
  #timer: ReturnType<typeof setInterval>;
  /** Resolves when the read loop has stopped and the socket is closed. */
  readonly finished: Promise<void>;

  constructor(conn: Conn, keys: LinkKeys, host: LinkHost, options: LinkConnectionOptions) {
    this.#conn = conn;
    this.#host = host;
    this.#options = options;
    this.#sealer = new RecordSealer(keys.sendKey, keys.sendIv, options.crypto);
    this.#opener = new RecordOpener(keys.recvKey, keys.recvIv, options.crypto);
    this.#prefix = options.prefix ?? null;
    const tick = Math.max(50, Math.min(options.keepaliveMs, options.timeoutMs) / 4);
    this.#timer = setInterval(() => this.#tick(), tick);
    this.finished = this.#readLoop(options.early ?? null);
  }

  /** Whether the link has ended. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Replace the frame sink (the back swaps in its stream router after the front's hello). */
  set host(host: LinkHost) {
    this.#host = host;
  }

  /** The remote address, for logs. */
  get remote(): Deno.NetAddr {
    return this.#conn.remoteAddr as Deno.NetAddr;
  }

  /** Bytes queued for the socket and not on it yet. */
  get backlog(): number {
    return this.writer.length + this.#unsent;
  }

  /**
   * Null while the link can take more, else a promise that resolves once its backlog is down to
   * half the limit again (or the link ended): producers wait for it before reading more.
   */
  room(): Promise<void> | null {
    if (this.#closed || this.backlog < _BACKLOG_HIGH) return null;
    return (this.#room ??= Promise.withResolvers<void>()).promise;
  }

  /**
   * Write what `writer` holds soon: in a microtask, so that a whole turn's frames go together,
   * or at once when a full write's worth is waiting.
   */
  flushSoon(): void {
    if (this.#flushing || this.#closed) return;
    if (this.writer.length >= _WRITE_CHUNK) {
      this.#startFlush();
      return;
    }
    if (this.#scheduled) return;
    this.#scheduled = true;
    queueMicrotask(() => {
      this.#scheduled = false;
      if (!this.#flushing && !this.#closed) this.#startFlush();
    });
  }

  #startFlush(): void {
    this.#flushing = true;
    this.#flush().catch((e: unknown) => reportUnexpected("Link: a write failed to finish", e));
  }

  /** End the link: close the socket; the host hears `linkEnded` once. */
  close(end: LinkEnd = "closed", detail = ""): void {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    this.#unsent = 0;
    this.#roomAgain();
    closeQuietly(this.#conn);
    try {
      this.#host.linkEnded(end, detail);
    } catch (e) {
      // Called from the read loop's end, timers and writes: nothing above would catch it.
      reportUnexpected("Link: handling its end failed", e);
    } finally {
      // The read loop closes the opener; the sealer is closed once no write can use it.
      if (!this.#flushing) this.#sealer.close();
    }
  }

  async #flush(): Promise<void> {
    try {
      while (!this.#closed && this.writer.length > 0) {
        // Frames written meanwhile go to the writer's other buffer.
        const plain = this.writer.swap();
        this.#unsent = plain.length;
        for (let off = 0; off < plain.length && !this.#closed; off += _WRITE_CHUNK) {
          const piece = plain.subarray(off, off + _WRITE_CHUNK);
          let wire = this.#sealer.seal(piece);
          if (this.#prefix) {
            const joined = new Uint8Array(this.#prefix.length + wire.length);
            joined.set(this.#prefix);
            joined.set(wire, this.#prefix.length);
            wire = joined;
            this.#prefix = null;
          }
          this.#lastSent = Date.now();
          await writeAll(this.#conn, wire);
          this.#unsent -= piece.length;
          if (this.#room !== null && this.backlog < _BACKLOG_LOW) this.#roomAgain();
        }
        this.#unsent = 0;
      }
    } catch (e) {
      this.#flushing = false;
      this.close("socket_error", e instanceof Error ? e.message : String(e));
      return;
    }
    this.#flushing = false;
    if (this.#closed) {
      this.#sealer.close();
      return;
    }
    this.#host.drained?.();
  }

  #roomAgain(): void {
    const room = this.#room;
    this.#room = null;
    room?.resolve();
  }

  #tick(): void {
    const now = Date.now();
    if (now - this.#lastReceived >= this.#options.timeoutMs) {
      this.close("timeout", `nothing received for ${now - this.#lastReceived} ms`);
      return;
    }
    if (this.#options.pings && now - this.#lastSent >= this.#options.keepaliveMs) {
      this.#pingSentAt = now;
      this.writer.ping(++this.#pingId);
      this.flushSoon();
    }
  }

  /** The frame sink the reader calls: pings are answered here, the rest goes to the host. */
  #sink(): LinkFrameSink {
    const host = () => this.#host;
    return {
      hello: (f) => host().hello(f),
      welcome: (f) => host().welcome(f),
      ping: (id) => {
        this.writer.pong(id);
        this.flushSoon();
      },
      pong: (id) => {
        if (id === this.#pingId && this.#pingSentAt > 0) {
          host().rtt?.(Date.now() - this.#pingSentAt);
          this.#pingSentAt = 0;
        }
      },
      goaway: (ms) => host().goaway(ms),
      open: (s, f) => host().open(s, f),
      opened: (s, f) => host().opened(s, f),
      data: (s, p, q) => host().data(s, p, q),
      answer: (s, p) => host().answer(s, p),
      quickAck: (s, c) => host().quickAck(s, c),
      ack: (s, b) => host().ack(s, b),
      close: (s, r, d) => host().close(s, r, d),
    };
  }

  async #readLoop(early: Uint8Array | null): Promise<void> {
    const buf = new Uint8Array(_READ_BUFFER);
    const sink = this.#sink();
    let frameError: string | null = null;
    const onPlain = (plain: Uint8Array) => {
      if (frameError !== null) return;
      const r = this.#reader.push(plain, sink);
      if (r !== null) frameError = r;
    };
    let end: LinkEnd = "eof";
    let detail = "";
    try {
      let chunk: Uint8Array | null = early && early.length > 0 ? early : null;
      while (!this.#closed) {
        if (chunk === null) {
          const n = await this.#conn.read(buf);
          if (n === null) break;
          chunk = buf.subarray(0, n);
        }
        this.#lastReceived = Date.now();
        // All the plaintext of a read at once: frames that span records come whole.
        const r = this.#opener.pushJoined(chunk, onPlain);
        chunk = null;
        if (r !== null) {
          end = r === "integrity" ? "integrity" : "protocol_error";
          detail = r === "integrity"
            ? "a record failed authentication (tampered or corrupted on the way)"
            : `bad record: ${r}`;
          break;
        }
        if (frameError !== null) {
          end = "protocol_error";
          detail = `bad frame: ${frameError}`;
          break;
        }
      }
    } catch (e) {
      if (!this.#closed) {
        end = "socket_error";
        detail = e instanceof Error ? e.message : String(e);
      }
    } finally {
      this.#opener.close();
      this.close(end, detail);
    }
  }
}
