/**
 * One multiplexed connection to a Telegram middle proxy: the RPC handshake, then many clients'
 * packets as RPC_PROXY_REQ one way and RPC_PROXY_ANS / SIMPLE_ACK / CLOSE_EXT the other,
 * routed by connection id. Reading stops while the clients have too much undelivered data
 * (backpressure), and resumes as they acknowledge what they wrote.
 *
 * @module
 */
import { randomBytes } from "../crypto.ts";
import type { HostPort, PoolConfig } from "../config/types.ts";
import { closeQuietly, type Conn, dialTcp, formatHostPort, writeAll } from "../net.ts";
import { reportUnexpected } from "../ops/last_resort.ts";
import { readU32 } from "../protocol/bytes.ts";
import { type FullCodec, fullFrameLength, type FullFrameSink } from "../protocol/full.ts";
import { MiddleClientHandshake } from "../protocol/middle_handshake.ts";
import {
  decodeRpc,
  encodeCloseConn,
  encodePing,
  encodePong,
  ProxyReqHeader,
  RPC_PROXY_ANS,
} from "../protocol/rpc.ts";
import type { Packet } from "../protocol/framing.ts";
import type { TransportTag } from "../protocol/obfuscated2.ts";

/** What a middle-proxy connection needs to know about one client. */
export interface MiddleClientInfo {
  readonly tag: TransportTag;
  readonly clientIp: string;
  readonly clientPort: number;
  /** The listener's ad tag; null sends the MTProxy layout without one. */
  readonly adTag: Uint8Array | null;
}

/** How a client's connection to Telegram ended. */
export type MiddleCloseReason =
  | "close_ext"
  | "connection_lost"
  | "backpressure"
  /** One of the client's handlers threw: it alone was dropped from the connection. */
  | "internal_error";

/** The session side of a multiplexed client. */
export interface MiddleClient {
  /** A packet from Telegram (a view: use it before returning). Acknowledge it with `ack`. */
  onPacket(data: Uint8Array): void;
  /** Telegram confirmed a packet the client asked a quick ack for. */
  onQuickAck(confirm: Uint8Array): void;
  /** Telegram is no longer reachable for this client. */
  onClose(reason: MiddleCloseReason): void;
}

/** Options for {@linkcode MiddleConnection.open}. */
export interface MiddleConnectOptions {
  readonly proxySecret: Uint8Array;
  /** Our public IPv4 (key derivation and our_addr); null: this socket's local address. */
  readonly externalIp: string | null;
  readonly connectTimeoutMs: number;
  readonly handshakeTimeoutMs: number;
  readonly pool: PoolConfig;
  /** Send our own RPC_PING after this long without traffic. @default 30000 */
  readonly keepaliveMs?: number;
  /**
   * Close the connection when a write has not finished after this long: the middle proxy
   * stopped reading, and its clients are better off on another connection. @default 15000
   */
  readonly sendTimeoutMs?: number;
}

/** Why a middle-proxy connection could not be opened. */
export class MiddleConnectError extends Error {
  constructor(readonly address: HostPort, reason: string) {
    super(`Middle proxy ${formatHostPort(address.host, address.port)}: ${reason}`);
    this.name = "MiddleConnectError";
  }
}

/** One client on one connection. */
export class MiddleSlot {
  readonly connId: bigint;
  /** The connection's map key (30 bits of the id) and the id's two halves, as int32s. */
  readonly key: number;
  readonly idLo: number;
  readonly idHi: number;
  readonly client: MiddleClient;
  readonly #header: ProxyReqHeader;
  readonly #conn: MiddleConnection;
  /** Sends written or queued but not yet on the socket. */
  busy = 0;
  unackedBytes = 0;
  unackedPackets = 0;
  detached = false;

  constructor(
    conn: MiddleConnection,
    connId: bigint,
    client: MiddleClient,
    header: ProxyReqHeader,
  ) {
    this.#conn = conn;
    this.connId = connId;
    this.idLo = Number(BigInt.asUintN(32, connId)) | 0;
    this.idHi = Number(BigInt.asUintN(32, connId >> 32n)) | 0;
    this.key = _keyOf(this.idLo);
    this.client = client;
    this.#header = header;
  }

  /** The connection this slot lives on. */
  get connection(): MiddleConnection {
    return this.#conn;
  }

  /**
   * Send client packets (views that must stay untouched until this settles), in order, as
   * RPC_PROXY_REQs; resolves once they are on the middle proxy's socket.
   */
  async send(packets: readonly Packet[]): Promise<void> {
    if (this.detached) throw new Error("Middle-proxy slot is closed");
    if (packets.length === 0) return;
    this.busy++;
    try {
      await this.#conn.enqueuePackets(this.#header, packets);
    } finally {
      this.busy--;
    }
  }

  /** The client wrote `packets` delivered packets (`bytes` in all) to its socket. */
  ack(bytes: number, packets: number): void {
    this.#conn.ack(this, bytes, packets);
  }
}

let _nextConnectionId = 1;

/** One TCP connection to a middle proxy, carrying many clients. */
export class MiddleConnection {
  readonly id = _nextConnectionId++;
  readonly address: HostPort;
  readonly #conn: Conn;
  readonly #codec: FullCodec;
  readonly #options: MiddleConnectOptions;
  /** By {@linkcode MiddleSlot.key}: a number, so that routing an answer makes no BigInt. */
  readonly #slots = new Map<number, MiddleSlot>();
  readonly #ourIp: string;
  readonly #ourPort: number;
  /** Batches waiting for a write, oldest first (the last one takes what is queued next). */
  #batches: _Batch[] = [];
  /** Written batches, for reuse (their arrays stay allocated). */
  #spareBatches: _Batch[] = [];
  #flushing = false;
  /** The slot the last PROXY_ANS went to (cleared when it leaves). */
  #lastSlot: MiddleSlot | null = null;
  /** Where decoded frames go (routes them as they are found: no array of bodies). */
  readonly #sink: FullFrameSink = {
    // The decoder's one view per frame is the answer's data, past type, flags and conn_id.
    skip: 16,
    frame: (buf, start, end, data) => this.#route(buf, start, end, data),
  };
  #unackedBytes = 0;
  #unackedPackets = 0;
  #resume: (() => void) | null = null;
  #closed = false;
  #lastTraffic = Date.now();
  /** When the write in flight started (0: none). */
  #writingSince = 0;
  #keepalive: ReturnType<typeof setInterval> | undefined;
  /** Set by the pool: called once when the connection is gone. */
  onDead: ((conn: MiddleConnection, hadError: string | null) => void) | null = null;
  /** Resolves when the read loop has stopped and the socket is closed. */
  readonly finished: Promise<void>;

  private constructor(
    address: HostPort,
    conn: Conn,
    codec: FullCodec,
    options: MiddleConnectOptions,
    ours: { ip: string; port: number },
    early: Uint8Array[],
  ) {
    this.address = address;
    this.#conn = conn;
    this.#codec = codec;
    this.#options = options;
    this.#ourIp = ours.ip;
    this.#ourPort = ours.port;
    for (const body of early) this.#route(body, 0, body.length, body.subarray(16));
    // Bodies are used up by #dispatch before the next read.
    codec.reuseBuffers();
    const keepaliveMs = options.keepaliveMs ?? 30_000;
    const sendTimeoutMs = options.sendTimeoutMs ?? 15_000;
    // One timer per connection does both jobs (not one per write).
    this.#keepalive = setInterval(() => {
      const now = Date.now();
      if (this.#writingSince > 0 && now - this.#writingSince >= sendTimeoutMs) {
        this.#shutdown(`a write did not finish in ${sendTimeoutMs} ms (stopped reading?)`);
        return;
      }
      if (now - this.#lastTraffic >= keepaliveMs) {
        this.#lastTraffic = now;
        this.enqueue(encodePing(BigInt.asIntN(64, _randomU64()))).catch(() => {});
      }
    }, Math.max(100, Math.min(keepaliveMs, sendTimeoutMs) / 2));
    this.finished = this.#readLoop();
  }

  /** Dial `address`, run the RPC handshake and return the ready connection. */
  static async open(address: HostPort, options: MiddleConnectOptions): Promise<MiddleConnection> {
    let conn: Conn;
    try {
      conn = await dialTcp(address.host, address.port, { timeoutMs: options.connectTimeoutMs });
    } catch (e) {
      throw new MiddleConnectError(address, e instanceof Error ? e.message : String(e));
    }
    const local = conn.localAddr as Deno.NetAddr;
    const ours = { ip: options.externalIp ?? local.hostname, port: local.port };
    const handshake = new MiddleClientHandshake({
      proxySecret: options.proxySecret,
      nonce: randomBytes(16),
      cryptoTs: Math.floor(Date.now() / 1000) >>> 0,
      local: ours,
      remote: { ip: (conn.remoteAddr as Deno.NetAddr).hostname, port: address.port },
    });
    const timer = setTimeout(() => closeQuietly(conn), options.handshakeTimeoutMs);
    try {
      await writeAll(conn, handshake.start());
      const buf = new Uint8Array(4096);
      while (true) {
        const n = await conn.read(buf);
        if (n === null) throw new Error("closed during the handshake");
        const step = handshake.receive(buf.slice(0, n));
        if (step.send) await writeAll(conn, step.send);
        if (step.kind === "reject") {
          throw new Error(
            step.reason === "handshake_error"
              ? `refused the handshake (error ${step.errorCode ?? "?"}): wrong proxy secret?`
              : `handshake failed: ${step.reason}`,
          );
        }
        if (step.kind === "done") {
          return new MiddleConnection(address, conn, step.codec, options, ours, step.frames);
        }
      }
    } catch (e) {
      handshake.close();
      closeQuietly(conn);
      const why = e instanceof Error ? e.message : String(e);
      throw new MiddleConnectError(
        address,
        /BadResource|closed/i.test(why) ? `${why} (handshake timeout or dropped)` : why,
      );
    } finally {
      clearTimeout(timer);
    }
  }

  /** Clients attached now. */
  get load(): number {
    return this.#slots.size;
  }

  /** Clients with a send not on the socket yet (the ones a rotation would have to close). */
  get sending(): number {
    let n = 0;
    for (const slot of this.#slots.values()) if (slot.busy > 0) n++;
    return n;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Attach a client under a fresh connection id. */
  attach(client: MiddleClient, info: MiddleClientInfo): MiddleSlot {
    let connId: bigint;
    do connId = BigInt.asIntN(64, _randomU64()); while (this.#slots.has(_keyOfId(connId)));
    const header = new ProxyReqHeader({
      connId,
      tag: info.tag,
      clientIp: info.clientIp,
      clientPort: info.clientPort,
      proxyIp: this.#ourIp,
      proxyPort: this.#ourPort,
      adTag: info.adTag,
    });
    const slot = new MiddleSlot(this, connId, client, header);
    this.#slots.set(slot.key, slot);
    return slot;
  }

  /** Detach a client; tell Telegram it left unless Telegram dropped it first. */
  detach(slot: MiddleSlot, tellTelegram: boolean): void {
    if (slot.detached) return;
    slot.detached = true;
    this.#slots.delete(slot.key);
    if (this.#lastSlot === slot) this.#lastSlot = null;
    this.#forget(slot);
    if (tellTelegram && !this.#closed) this.enqueue(encodeCloseConn(slot.connId)).catch(() => {});
  }

  /** The idle clients (no send in flight) to move elsewhere, and the busy ones to close. */
  takeClients(): { idle: MiddleSlot[]; busy: MiddleSlot[] } {
    const idle: MiddleSlot[] = [];
    const busy: MiddleSlot[] = [];
    for (const slot of this.#slots.values()) (slot.busy > 0 ? busy : idle).push(slot);
    for (const slot of [...idle, ...busy]) {
      slot.detached = true;
      this.#forget(slot);
    }
    this.#slots.clear();
    this.#lastSlot = null;
    return { idle, busy };
  }

  /** Queue an RPC body; written with whatever else is queued in one encrypted batch. */
  enqueue(body: Uint8Array): Promise<void> {
    if (this.#closed) return Promise.reject(new Error("Middle-proxy connection is closed"));
    const batch = this.#openBatch();
    batch.parts[batch.count++] = body;
    batch.parts[batch.count++] = _EMPTY;
    batch.bytes += fullFrameLength(body.length, true);
    return batch.written.promise;
  }

  /**
   * Queue one client's packets as RPC_PROXY_REQs (`header` in front of each), in order. The
   * write starts in a microtask, so that what other clients queue in the same turn of the event
   * loop goes out in the same system call; everyone in a batch waits on one promise.
   */
  enqueuePackets(header: ProxyReqHeader, packets: readonly Packet[]): Promise<void> {
    if (this.#closed) return Promise.reject(new Error("Middle-proxy connection is closed"));
    const batch = this.#openBatch();
    const parts = batch.parts;
    let n = batch.count;
    let bytes = batch.bytes;
    for (let i = 0; i < packets.length; i++) {
      const p = packets[i]!;
      const h = header.header(p.payload, p.quickAck);
      parts[n++] = h;
      parts[n++] = p.payload;
      bytes += fullFrameLength(h.length + p.payload.length, true);
    }
    batch.count = n;
    batch.bytes = bytes;
    return batch.written.promise;
  }

  /** The batch new bodies join (a fresh one once the last is full), and a flush scheduled. */
  #openBatch(): _Batch {
    const batches = this.#batches;
    let batch = batches.length > 0 ? batches[batches.length - 1]! : null;
    if (batch === null || batch.bytes >= _BATCH_BYTES) {
      batch = this.#spareBatches.pop() ??
        { parts: [], count: 0, bytes: 0, written: _resolvers() };
      batches.push(batch);
    }
    if (!this.#flushing) {
      this.#flushing = true;
      queueMicrotask(this.#startFlush);
    }
    return batch;
  }

  #startFlush = (): void => {
    this.#flush();
  };

  /** The pooled buffer the batch being encoded took (given back once it is written). */
  #pooled: Uint8Array | null = null;
  #allocBatch = (total: number): Uint8Array => {
    const pooled = _takeEncodeBuffer(total);
    this.#pooled = pooled;
    return pooled ?? new Uint8Array(total);
  };

  async #flush(): Promise<void> {
    try {
      while (this.#batches.length > 0 && !this.#closed) {
        const batch = this.#batches.shift()!;
        this.#pooled = null;
        try {
          const bytes = this.#codec.encodePairs(batch.parts, this.#allocBatch, batch.count);
          // The packets are copied out: their senders may reuse them once told.
          _clearParts(batch);
          this.#writingSince = Date.now();
          await writeAll(this.#conn, bytes);
          this.#writingSince = 0;
          this.#lastTraffic = Date.now();
          batch.written.resolve();
        } catch (e) {
          _clearParts(batch);
          batch.written.reject(e);
          this.#failBatches(e);
          this.#shutdown("write failed");
          return;
        } finally {
          const pooled = this.#pooled;
          this.#pooled = null;
          if (pooled) _giveEncodeBuffer(pooled);
        }
        batch.bytes = 0;
        batch.written = _resolvers();
        if (this.#spareBatches.length < 2) this.#spareBatches.push(batch);
      }
    } finally {
      this.#flushing = false;
    }
  }

  /** Fail every batch still queued. */
  #failBatches(e: unknown): void {
    const batches = this.#batches;
    this.#batches = [];
    for (const b of batches) b.written.reject(e);
  }

  /** A client wrote delivered packets: lift backpressure when under the limits. */
  ack(slot: MiddleSlot, bytes: number, packets: number): void {
    // A migrated slot starts from zero: never count below it.
    bytes = Math.min(bytes, slot.unackedBytes);
    packets = Math.min(packets, slot.unackedPackets);
    if (packets === 0 && bytes === 0) return;
    slot.unackedBytes -= bytes;
    slot.unackedPackets -= packets;
    this.#unackedBytes -= bytes;
    this.#unackedPackets -= packets;
    this.#maybeResume();
  }

  #forget(slot: MiddleSlot): void {
    this.#unackedBytes -= slot.unackedBytes;
    this.#unackedPackets -= slot.unackedPackets;
    slot.unackedBytes = 0;
    slot.unackedPackets = 0;
    this.#maybeResume();
  }

  #maybeResume(): void {
    if (this.#resume && !this.#overLimits()) {
      const resume = this.#resume;
      this.#resume = null;
      resume();
    }
  }

  #overLimits(): boolean {
    const p = this.#options.pool;
    return this.#unackedBytes > p.maxUnackedBytes || this.#unackedPackets > p.maxUnackedPackets;
  }

  /** Close the connection (the pool migrates its clients through `onDead`). */
  close(): void {
    this.#shutdown(null);
  }

  #shutdown(error: string | null): void {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#keepalive);
    closeQuietly(this.#conn);
    const resume = this.#resume;
    this.#resume = null;
    resume?.();
    this.#failBatches(new Error("Middle-proxy connection closed"));
    try {
      this.onDead?.(this, error);
    } catch (e) {
      // Called from the read loop's end and from timers: nothing above would catch it.
      reportUnexpected(`Middle-proxy connection #${this.id}: handling its end failed`, e);
    }
  }

  async #readLoop(): Promise<void> {
    // Starts at 64 KiB and grows while reads fill it: a larger read hands each client more
    // packets per turn, so fewer and larger writes to the clients.
    let buf = new Uint8Array(_READ_MIN);
    /** Reads in a row that used little of a grown buffer. */
    let small = 0;
    let error: string | null = null;
    try {
      while (!this.#closed) {
        if (this.#overLimits()) {
          // Backpressure: the clients have not written out what they were given yet.
          await new Promise<void>((r) => (this.#resume = r));
          if (this.#closed) break;
        }
        const n = await this.#conn.read(buf);
        if (n === null) break;
        this.#lastTraffic = Date.now();
        // Decrypted in place; bodies are views that are used up before the next read.
        const reject = this.#codec.decodeTo(
          n === buf.length ? buf : buf.subarray(0, n),
          this.#sink,
        );
        if (reject !== null) {
          error = `bad frame from the middle proxy: ${reject}`;
          break;
        }
        if (n === buf.length) {
          small = 0;
          if (buf.length < _READ_MAX) buf = new Uint8Array(_READ_MAX);
        } else if (buf.length > _READ_MIN && n < _READ_MIN / 2 && ++small >= _READ_SHRINK_AFTER) {
          small = 0;
          buf = new Uint8Array(_READ_MIN);
        }
      }
    } catch (e) {
      if (!this.#closed) error = e instanceof Error ? e.message : String(e);
    } finally {
      this.#codec.close();
      this.#shutdown(error);
    }
  }

  /**
   * One RPC body, `buf[start, end)`, and `data`, its bytes past the first 16: a PROXY_ANS goes
   * straight to its client.
   */
  #route(buf: Uint8Array, start: number, end: number, data: Uint8Array): void {
    if (end - start < 16 || readU32(buf, start) !== RPC_PROXY_ANS) {
      return this.#dispatch(buf.subarray(start, end));
    }
    const slot = this.#slotAt(buf, start + 8);
    if (!slot) return; // A client that just left; Telegram learns it from CLOSE_CONN.
    const size = data.length;
    slot.unackedBytes += size;
    slot.unackedPackets++;
    this.#unackedBytes += size;
    this.#unackedPackets++;
    if (slot.unackedBytes > this.#options.pool.maxClientUnackedBytes) {
      // A client this far behind would stall everyone on this connection: drop it.
      this.detach(slot, true);
      this.#tellClosed(slot, "backpressure");
      return;
    }
    // One client's failure must not end the read loop that serves all the others.
    try {
      slot.client.onPacket(data);
    } catch (e) {
      this.#clientFailed(slot, e);
    }
  }

  /** The slot whose connection id is the i64 at `buf[off]`. */
  #slotAt(buf: Uint8Array, off: number): MiddleSlot | undefined {
    const lo = readU32(buf, off) | 0;
    const hi = readU32(buf, off + 4) | 0;
    // Answers come in runs per client: try the last one before the map.
    const last = this.#lastSlot;
    if (last !== null && last.idLo === lo && last.idHi === hi && !last.detached) return last;
    const slot = this.#slots.get(_keyOf(lo));
    if (slot === undefined || slot.idLo !== lo || slot.idHi !== hi) return undefined;
    this.#lastSlot = slot;
    return slot;
  }

  #slotOf(connId: bigint): MiddleSlot | undefined {
    const slot = this.#slots.get(_keyOfId(connId));
    return slot !== undefined && slot.connId === connId ? slot : undefined;
  }

  /** Every other message (and a PROXY_ANS too short to route). */
  #dispatch(body: Uint8Array): void {
    const msg = decodeRpc(body);
    switch (msg.type) {
      case "simple_ack": {
        const slot = this.#slotOf(msg.connId);
        if (!slot) return;
        try {
          slot.client.onQuickAck(msg.confirm);
        } catch (e) {
          this.#clientFailed(slot, e);
        }
        return;
      }
      case "close_ext": {
        const slot = this.#slotOf(msg.connId);
        if (!slot) return;
        this.detach(slot, false);
        this.#tellClosed(slot, "close_ext");
        return;
      }
      case "ping":
        this.enqueue(encodePong(msg.pingId)).catch(() => {});
        return;
      default:
        // pong, and anything unknown: nothing to do.
        return;
    }
  }

  /** A client's handler threw: drop that client alone (Telegram is told), report it. */
  #clientFailed(slot: MiddleSlot, e: unknown): void {
    reportUnexpected(
      `Middle-proxy connection #${this.id}: a client's handler failed; that client was closed`,
      e,
    );
    this.detach(slot, true);
    this.#tellClosed(slot, "internal_error");
  }

  /** Tell a detached client why it ended, containing a throw to that client. */
  #tellClosed(slot: MiddleSlot, reason: MiddleCloseReason): void {
    try {
      slot.client.onClose(reason);
    } catch (e) {
      reportUnexpected(`Middle-proxy connection #${this.id}: a client's close handler failed`, e);
    }
  }
}

/** RPC bodies for one write, as header / packet pairs, and who waits for them. */
interface _Batch {
  /**
   * The first `count` entries are this batch's (filled by index and cleared after the write,
   * so that the array keeps its room instead of growing again for every batch).
   */
  readonly parts: Uint8Array[];
  count: number;
  /** Bytes the frames take on the wire. */
  bytes: number;
  written: PromiseWithResolvers<void>;
}

/**
 * A batch takes new bodies until its frames reach this size; later ones go in the next write
 * (which starts as soon as this one is on the socket). Keeps batches in the pooled buffers.
 */
const _BATCH_BYTES = 256 * 1024;

/** The middle proxy's read buffer: this size at first and when traffic is light, up to the max. */
const _READ_MIN = 64 * 1024;
const _READ_MAX = 256 * 1024;
const _READ_SHRINK_AFTER = 256;

const _EMPTY = new Uint8Array(0);

/** A batch's parts array keeps at most this many entries of room between batches. */
const _PARTS_KEPT = 8192;

/** Let go of a written batch's bodies (they are the clients' buffers), keeping the room. */
function _clearParts(batch: _Batch): void {
  const parts = batch.parts;
  if (parts.length > _PARTS_KEPT) {
    parts.length = 0;
  } else {
    for (let i = 0; i < batch.count; i++) parts[i] = _EMPTY;
  }
  batch.count = 0;
}

function _resolvers(): PromiseWithResolvers<void> {
  return Promise.withResolvers<void>();
}

/** A slot's map key: 30 bits of the id's low half (a small integer for V8). */
function _keyOf(lo: number): number {
  return lo & 0x3fff_ffff;
}

function _keyOfId(connId: bigint): number {
  return _keyOf(Number(BigInt.asUintN(32, connId)) | 0);
}

/**
 * Reusable buffers for encoding a batch of RPC messages, in two sizes (each batch is written
 * before the next is encoded, so a connection needs one at a time). A batch larger than the
 * large size gets a buffer of its own.
 */
const _SMALL_BATCH = 16 * 1024;
const _LARGE_BATCH = 512 * 1024;
const _smallBatchBuffers: Uint8Array[] = [];
const _largeBatchBuffers: Uint8Array[] = [];
const _SMALL_BATCH_BUFFERS_MAX = 32;
const _LARGE_BATCH_BUFFERS_MAX = 8;

function _takeEncodeBuffer(total: number): Uint8Array | null {
  if (total <= _SMALL_BATCH) return _smallBatchBuffers.pop() ?? new Uint8Array(_SMALL_BATCH);
  if (total <= _LARGE_BATCH) return _largeBatchBuffers.pop() ?? new Uint8Array(_LARGE_BATCH);
  return null;
}

function _giveEncodeBuffer(buf: Uint8Array): void {
  if (buf.length === _SMALL_BATCH) {
    if (_smallBatchBuffers.length < _SMALL_BATCH_BUFFERS_MAX) _smallBatchBuffers.push(buf);
  } else if (_largeBatchBuffers.length < _LARGE_BATCH_BUFFERS_MAX) {
    _largeBatchBuffers.push(buf);
  }
}

function _randomU64(): bigint {
  const b = randomBytes(8);
  return new DataView(b.buffer).getBigUint64(0, true);
}
