/**
 * A fake Telegram middle proxy on 127.0.0.1 (protocol.md §10–11), for the proxy's RPC mode.
 *
 * Each accepted TCP connection runs the middle proxy's side of the RPC handshake
 * ({@linkcode MiddleServerHandshake}: the key selector and the keys derived from its own copy of
 * the proxy secret must match the proxy's), then decodes one RPC message per full-codec frame:
 *
 * - `RPC_PROXY_REQ`: recorded (conn_id, flags, ad tag, client address, payload size, quick ack).
 *   In `"mtproto"` mode an unencrypted `req_pq_multi`/`req_pq` gets a `resPQ` (a random
 *   server_nonce per conn_id), a `req_DH_params` is recorded and answered with
 *   `RPC_CLOSE_EXT`, anything else is echoed back as `RPC_PROXY_ANS` to the same conn_id. In
 *   `"echo"` mode every payload is echoed and only counted (no per-packet events). Either way a
 *   QUICKACK flag gets an `RPC_SIMPLE_ACK` first.
 * - `RPC_CLOSE_CONN`: recorded; the conn_id is forgotten.
 * - `RPC_PING`: answered with `RPC_PONG`. `RPC_PONG`: recorded.
 *
 * Key derivation: the fake takes its own end from the socket (127.0.0.1 and the listening port)
 * and the proxy's end as the peer address seen on the socket (override the IP with `proxyIp`).
 * The proxy derives with its `external_ip` (or its socket's local address) and the local port of
 * its socket, so tests must leave `external_ip` unset or set it to 127.0.0.1 (or pass the same
 * value as `proxyIp` here); anything else fails the handshake, as it would with Telegram.
 *
 * Test controls drop connections (as Telegram rotates them every 30–70 s), stall reading (to
 * build backpressure toward the proxy), push unsolicited answers, CLOSE_EXT and pings, and
 * refuse connections (a middle proxy that is down).
 *
 * @module
 */
import { randomBytes, sha256 } from "../../lib/crypto.ts";
import type { FullBody, FullCodec } from "../../lib/protocol/full.ts";
import {
  type HandshakeRejectReason,
  MiddleServerHandshake,
} from "../../lib/protocol/middle_handshake.ts";
import {
  decodeRpc,
  encodeCloseExt,
  encodePing,
  encodePong,
  encodeProxyAns,
  encodeSimpleAck,
  formatIp,
  type ProxyReqMessage,
} from "../../lib/protocol/rpc.ts";
import type { TransportTag } from "../../lib/protocol/obfuscated2.ts";
import { isReqDhParams, parseReqPq, parseUnencrypted, resPq } from "./tl.ts";
import { ChangeWaiters, closeQuietly, isClosedError, writeAll } from "./_io.ts";

/** What the fake does with PROXY_REQ payloads. */
export type FakeMiddleMode = "mtproto" | "echo";

/** Options for {@linkcode startFakeMiddleProxy}. */
export interface FakeMiddleProxyOptions {
  /** Its own copy of the getProxySecret blob; a proxy with another one fails the handshake. */
  proxySecret: Uint8Array;
  /**
   * The ad tag every PROXY_REQ should carry (null: none). Each PROXY_REQ is checked and the
   * result recorded (`adTagOk`, `stats.adTagMismatches`). Left out: not checked.
   */
  expectedAdTag?: Uint8Array | null;
  /** @default "mtproto" */
  mode?: FakeMiddleMode;
  /** Port to listen on; 0 picks a free one. @default 0 */
  port?: number;
  /** @default "127.0.0.1" */
  host?: string;
  /**
   * The proxy's IP as used in the key derivation. @default the peer address seen on the socket
   */
  proxyIp?: string;
  /** Answer every handshake with RPC_HANDSHAKE_ERROR carrying this code. */
  handshakeErrorCode?: number;
}

/** Who ended a connection. */
export type FakeMiddleCloser = "peer" | "test" | "server" | "error";

/**
 * Something the fake saw or did. `conn` numbers TCP connections from 1 in accept order.
 * `proxy_req`, `req_pq`, `req_dh_params` and `simple_ack` are recorded in "mtproto" mode only
 * (echo mode counts them in {@linkcode FakeMiddleStats}).
 */
export type FakeMiddleEvent =
  /** Accepted and closed at once because of {@linkcode FakeMiddleProxy.setRefuse}. */
  | { type: "refused"; conn: number }
  | {
    type: "handshake_ok";
    conn: number;
    /** The proxy's address as seen on the socket. */
    peerIp: string;
    peerPort: number;
    /** The proxy's 12-byte sender pid. */
    peerPid: Uint8Array;
  }
  | {
    type: "handshake_failed";
    conn: number;
    /** A handshake reject reason, `"eof"` (closed before the end) or `"error: ..."`. */
    reason: HandshakeRejectReason | "eof" | `error: ${string}`;
  }
  | {
    type: "proxy_req";
    conn: number;
    connId: bigint;
    flags: number;
    tag: TransportTag | null;
    quickAck: boolean;
    notEncrypted: boolean;
    /** A copy of the ad tag, or null when the request had none. */
    adTag: Uint8Array | null;
    /** Whether it matched `expectedAdTag`; null when that option was left out. */
    adTagOk: boolean | null;
    /** Text address (IPv4-mapped shown dotted) and port. */
    clientIp: string;
    clientPort: number;
    proxyIp: string;
    proxyPort: number;
    /** Payload (MTProto packet) size. */
    size: number;
    /** First PROXY_REQ seen for this conn_id on this connection. */
    newClient: boolean;
  }
  | { type: "req_pq"; conn: number; connId: bigint; nonce: Uint8Array; multi: boolean }
  | {
    type: "req_dh_params";
    conn: number;
    connId: bigint;
    /** Its nonce is one this conn_id sent in a req_pq. */
    nonceOk: boolean;
    /** Its server_nonce is the one the fake gave this conn_id. */
    serverNonceOk: boolean;
  }
  /** The fake sent RPC_SIMPLE_ACK with this confirm. */
  | { type: "simple_ack"; conn: number; connId: bigint; confirm: Uint8Array }
  /** The fake sent RPC_CLOSE_EXT (after req_DH_params, or from `sendCloseExt`). */
  | { type: "close_ext"; conn: number; connId: bigint; cause: "req_dh_params" | "test" }
  /** The proxy sent RPC_CLOSE_CONN; `known`: the conn_id had sent a PROXY_REQ and was live. */
  | { type: "close_conn"; conn: number; connId: bigint; known: boolean }
  /** The proxy pinged (and was answered). */
  | { type: "ping"; conn: number; pingId: bigint }
  /** The proxy answered a ping; `expected`: it answers one the fake sent. */
  | { type: "pong"; conn: number; pingId: bigint; expected: boolean }
  /** Something a middle proxy does not expect: an unknown or malformed RPC, a bad frame. */
  | { type: "unexpected"; conn: number; what: string }
  | {
    type: "closed";
    conn: number;
    by: FakeMiddleCloser;
    /** The handshake had completed. */
    handshakeOk: boolean;
  };

/** Counters, kept in every mode. */
export interface FakeMiddleStats {
  accepted: number;
  refused: number;
  handshakes: number;
  handshakeFailures: number;
  /** conn_ids seen for the first time (per connection). */
  clients: number;
  proxyReqs: number;
  /** Payload bytes of all PROXY_REQs. */
  proxyReqBytes: number;
  /** PROXY_REQs whose ad tag did not match `expectedAdTag`. */
  adTagMismatches: number;
  /** PROXY_ANS sent (answers, echoes and `sendToClient`). */
  answers: number;
  /** Data bytes of those PROXY_ANS. */
  answerBytes: number;
  simpleAcks: number;
  closeExts: number;
  closeConns: number;
  pingsReceived: number;
  pingsSent: number;
  pongsReceived: number;
  /** Unknown or malformed messages and broken frames. */
  unexpected: number;
}

/** A live RPC connection (handshake done, socket open). */
export interface FakeMiddleConnectionInfo {
  /** The `conn` number of its events. */
  readonly conn: number;
  readonly peerIp: string;
  readonly peerPort: number;
  /** conn_ids live on it. */
  readonly clients: number;
}

/** Options for {@linkcode FakeMiddleProxy.sendToClient}. */
export interface SendToClientOptions {
  /** The connection (`conn` number) to send on; by default the newest one that knows connId. */
  conn?: number;
  /** PROXY_ANS flags. @default 0 */
  flags?: number;
}

/** A running fake middle proxy. */
export interface FakeMiddleProxy {
  readonly host: string;
  readonly port: number;
  readonly mode: FakeMiddleMode;
  /** Live RPC connections (handshake done, not closed). */
  readonly connections: number;
  /** TCP connections open now, handshaking ones included. */
  readonly sockets: number;
  /** Handshakes completed since start. */
  readonly handshakes: number;
  /** Counters (a live object). */
  readonly stats: Readonly<FakeMiddleStats>;
  /** Everything recorded so far, oldest first. */
  readonly events: readonly FakeMiddleEvent[];
  /** True while {@linkcode FakeMiddleProxy.stall} holds reading. */
  readonly stalled: boolean;
  /**
   * Reads that returned bytes while stalled, held unprocessed until the stall ended (since
   * start): proof that data reached the fake and was not handled.
   */
  readonly heldReads: number;
  /**
   * Resolve with the first recorded event (past or future) matching `predicate`; reject after
   * `timeoutMs` (default 5000).
   */
  waitFor<T extends FakeMiddleEvent>(
    predicate: (e: FakeMiddleEvent) => e is T,
    timeoutMs?: number,
  ): Promise<T>;
  waitFor(
    predicate: (e: FakeMiddleEvent) => boolean,
    timeoutMs?: number,
  ): Promise<FakeMiddleEvent>;
  /** Resolve once `condition()` holds, re-checked on every event, count or connection change. */
  waitUntil(condition: () => boolean, timeoutMs?: number): Promise<void>;
  /** Forget the events recorded so far (counters stay). */
  clearEvents(): void;
  /** The live RPC connections, oldest first. */
  liveConnections(): FakeMiddleConnectionInfo[];
  /** conn_ids live now: on connection `conn`, or on all of them. */
  activeConnIds(conn?: number): bigint[];
  /**
   * Drop the live RPC connection at `index` of {@linkcode FakeMiddleProxy.liveConnections}
   * (default 0, the oldest), as Telegram does every 30–70 s. Resolves with its `conn` number once
   * its handler has finished, or null when there is no such connection.
   */
  closeConnection(index?: number): Promise<number | null>;
  /** Drop every connection (handshaking ones too); resolves with how many, once all ended. */
  closeAll(): Promise<number>;
  /**
   * Stop (true) or resume (false) reading every socket. Bytes already read are held unprocessed,
   * so nothing is answered while stalled and the proxy's writes back up. Writes still go out.
   */
  stall(on: boolean): void;
  /**
   * Push unsolicited PROXY_ANS messages (payloads a multiple of 4 bytes; several go out in one
   * write); resolves once written.
   */
  sendToClient(
    connId: bigint,
    payload: Uint8Array | Uint8Array[],
    options?: SendToClientOptions,
  ): Promise<void>;
  /** Send RPC_CLOSE_EXT for `connId` and forget it; resolves once written. */
  sendCloseExt(connId: bigint, options?: { conn?: number }): Promise<void>;
  /**
   * Send, on the `index`-th live connection, a frame whose CRC does not match (its last
   * ciphertext byte flipped): the proxy must drop that connection. Resolves once written.
   */
  sendCorrupt(index?: number): Promise<void>;
  /** Send RPC_PING to every live RPC connection; resolves with the ping ids once written. */
  ping(): Promise<bigint[]>;
  /** Accept then close at once (true), like a middle proxy that is down, or serve again. */
  setRefuse(on: boolean): void;
  /** Answer later handshakes with RPC_HANDSHAKE_ERROR(code), or normally again (null). */
  setHandshakeError(code: number | null): void;
  /** Close the listener and every connection, and wait for all handlers to finish. */
  close(): Promise<void>;
}

const BUF_SIZE = 65536;
const DEFAULT_WAIT_MS = 5000;
/** req_pq nonces remembered per conn_id (clients retry a few times at most). */
const MAX_NONCES = 8;

function _equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function _randomI64(): bigint {
  const b = randomBytes(8);
  return new DataView(b.buffer).getBigInt64(0, true);
}

/** A quick-ack confirm as Telegram shapes it: 4 bytes, high bit set when read as u32 LE. */
function _confirmFor(payload: Uint8Array): Uint8Array {
  const c = sha256(payload).slice(0, 4);
  c[3]! |= 0x80;
  return c;
}

/** Per conn_id state in "mtproto" mode (null until it sends a req_pq). */
interface _Client {
  serverNonce: Uint8Array;
  nonces: Uint8Array[];
}

class _Conn {
  readonly id: number;
  readonly socket: Deno.TcpConn;
  readonly peerIp: string;
  readonly peerPort: number;
  codec: FullCodec | null = null;
  readonly clients = new Map<bigint, _Client | null>();
  /** Ping ids sent and not answered yet. */
  readonly pings = new Set<bigint>();
  closed = false;
  closedBy: FakeMiddleCloser | null = null;
  /** The handler; set right after construction. */
  done: Promise<void> = Promise.resolve();
  readonly #closedSignal = Promise.withResolvers<void>();
  #tail: Promise<void> = Promise.resolve();
  readonly #scratch = new Uint8Array(BUF_SIZE * 2);
  /** Echo mode: each client's PROXY_ANS header (the same for every answer). */
  readonly ansHeaders = new Map<bigint, Uint8Array>();

  constructor(id: number, socket: Deno.TcpConn) {
    this.id = id;
    this.socket = socket;
    const peer = socket.remoteAddr as Deno.NetAddr;
    this.peerIp = peer.hostname;
    this.peerPort = peer.port;
  }

  get ready(): boolean {
    return this.codec !== null && !this.closed;
  }

  /** Resolves when the connection is closed (by anyone). */
  get closedSignal(): Promise<void> {
    return this.#closedSignal.promise;
  }

  /** Write raw bytes after everything queued before. */
  writeRaw(bytes: Uint8Array): Promise<void> {
    const p = this.#tail.then(() => writeAll(this.socket, bytes));
    this.#tail = p.catch(() => {});
    return p;
  }

  /** Encode RPC bodies (in call order, synchronously) and queue them as one write. */
  send(bodies: readonly FullBody[]): Promise<void> {
    if (!this.ready) return Promise.reject(new Error(`Connection ${this.id} is closed`));
    const codec = this.codec!;
    return this.writeRaw(bodies.length === 1 ? codec.encode(bodies[0]!) : codec.encodeMany(bodies));
  }

  /**
   * Like `send`, encoding into a buffer reused from one call to the next: only for a caller
   * that waits for each such send to settle before the next (the read loop's answers).
   */
  sendReusing(bodies: readonly FullBody[]): Promise<void> {
    if (!this.ready) return Promise.reject(new Error(`Connection ${this.id} is closed`));
    const scratch = this.#scratch;
    return this.writeRaw(
      this.codec!.encodeMany(bodies, (n) => n <= scratch.length ? scratch : new Uint8Array(n)),
    );
  }

  close(by: FakeMiddleCloser): void {
    if (this.closed) return;
    this.closed = true;
    this.closedBy = by;
    closeQuietly(this.socket);
    this.#closedSignal.resolve();
  }

  /** Wait for queued writes to settle (they fail fast once the socket is closed). */
  drained(): Promise<void> {
    return this.#tail;
  }
}

class _FakeMiddleProxy implements FakeMiddleProxy {
  readonly host: string;
  readonly port: number;
  readonly mode: FakeMiddleMode;
  events: FakeMiddleEvent[] = [];
  readonly stats: FakeMiddleStats = {
    accepted: 0,
    refused: 0,
    handshakes: 0,
    handshakeFailures: 0,
    clients: 0,
    proxyReqs: 0,
    proxyReqBytes: 0,
    adTagMismatches: 0,
    answers: 0,
    answerBytes: 0,
    simpleAcks: 0,
    closeExts: 0,
    closeConns: 0,
    pingsReceived: 0,
    pingsSent: 0,
    pongsReceived: 0,
    unexpected: 0,
  };
  readonly #options: FakeMiddleProxyOptions;
  readonly #secret: Uint8Array;
  readonly #expectedAdTag: Uint8Array | null | undefined;
  readonly #listener: Deno.TcpListener;
  readonly #conns = new Map<number, _Conn>();
  readonly #acceptLoop: Promise<void>;
  readonly #waiters = new ChangeWaiters("fake middle proxy");
  #closing: Promise<void> | null = null;
  #refuse = false;
  #handshakeError: number | null;
  #stalled = false;
  #heldReads = 0;
  #gate = Promise.withResolvers<void>();

  constructor(listener: Deno.TcpListener, options: FakeMiddleProxyOptions) {
    this.#listener = listener;
    this.#options = options;
    this.#secret = options.proxySecret.slice();
    this.#expectedAdTag = options.expectedAdTag === undefined
      ? undefined
      : options.expectedAdTag?.slice() ?? null;
    this.#handshakeError = options.handshakeErrorCode ?? null;
    this.mode = options.mode ?? "mtproto";
    const addr = listener.addr as Deno.NetAddr;
    this.host = addr.hostname;
    this.port = addr.port;
    this.#acceptLoop = this.#accept();
  }

  get connections(): number {
    let n = 0;
    for (const c of this.#conns.values()) if (c.ready) n++;
    return n;
  }

  get sockets(): number {
    return this.#conns.size;
  }

  get handshakes(): number {
    return this.stats.handshakes;
  }

  get stalled(): boolean {
    return this.#stalled;
  }

  get heldReads(): number {
    return this.#heldReads;
  }

  waitFor<T extends FakeMiddleEvent>(
    predicate: (e: FakeMiddleEvent) => e is T,
    timeoutMs?: number,
  ): Promise<T>;
  waitFor(
    predicate: (e: FakeMiddleEvent) => boolean,
    timeoutMs?: number,
  ): Promise<FakeMiddleEvent>;
  async waitFor(
    predicate: (e: FakeMiddleEvent) => boolean,
    timeoutMs = DEFAULT_WAIT_MS,
  ): Promise<FakeMiddleEvent> {
    let found: FakeMiddleEvent | undefined;
    let scanned: FakeMiddleEvent[] = this.events;
    let checked = 0;
    await this.#waiters.wait(() => {
      // Only look at events recorded since the last check (clearEvents restarts the scan).
      if (scanned !== this.events) {
        scanned = this.events;
        checked = 0;
      }
      for (; checked < scanned.length; checked++) {
        if (predicate(scanned[checked]!)) {
          found = scanned[checked];
          return true;
        }
      }
      return false;
    }, timeoutMs);
    return found!;
  }

  waitUntil(condition: () => boolean, timeoutMs = DEFAULT_WAIT_MS): Promise<void> {
    return this.#waiters.wait(condition, timeoutMs);
  }

  clearEvents(): void {
    this.events = [];
  }

  liveConnections(): FakeMiddleConnectionInfo[] {
    return this.#live().map((c) => ({
      conn: c.id,
      peerIp: c.peerIp,
      peerPort: c.peerPort,
      clients: c.clients.size,
    }));
  }

  activeConnIds(conn?: number): bigint[] {
    const out: bigint[] = [];
    for (const c of this.#live()) {
      if (conn === undefined || c.id === conn) out.push(...c.clients.keys());
    }
    return out;
  }

  async closeConnection(index = 0): Promise<number | null> {
    const c = this.#live()[index];
    if (c === undefined) return null;
    c.close("test");
    this.#waiters.changed();
    await c.done;
    return c.id;
  }

  sendCorrupt(index = 0): Promise<void> {
    const c = this.#live()[index];
    if (c === undefined) return Promise.reject(new Error(`No live connection ${index}`));
    // The length block stays intact, so the proxy reads the whole frame and finds the CRC wrong.
    const frame = c.codec!.encode(encodePong(1n));
    frame[frame.length - 1]! ^= 0xff;
    return c.writeRaw(frame);
  }

  async closeAll(): Promise<number> {
    const all = [...this.#conns.values()].filter((c) => !c.closed);
    for (const c of all) c.close("test");
    this.#waiters.changed();
    await Promise.all(all.map((c) => c.done));
    return all.length;
  }

  stall(on: boolean): void {
    if (on === this.#stalled) return;
    this.#stalled = on;
    if (on) {
      this.#gate = Promise.withResolvers<void>();
    } else {
      this.#gate.resolve();
    }
    this.#waiters.changed();
  }

  sendToClient(
    connId: bigint,
    payload: Uint8Array | Uint8Array[],
    options: SendToClientOptions = {},
  ): Promise<void> {
    try {
      const c = this.#target(connId, options.conn);
      const payloads = payload instanceof Uint8Array ? [payload] : payload;
      const bodies = payloads.map((p) => {
        this.stats.answers++;
        this.stats.answerBytes += p.length;
        return encodeProxyAns(connId, p, { flags: options.flags ?? 0 });
      });
      return c.send(bodies);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  sendCloseExt(connId: bigint, options: { conn?: number } = {}): Promise<void> {
    try {
      const c = this.#target(connId, options.conn);
      c.clients.delete(connId);
      this.stats.closeExts++;
      this.#record({ type: "close_ext", conn: c.id, connId, cause: "test" });
      return c.send([encodeCloseExt(connId)]);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  async ping(): Promise<bigint[]> {
    const sent: Promise<void>[] = [];
    const ids: bigint[] = [];
    for (const c of this.#live()) {
      const id = _randomI64();
      c.pings.add(id);
      ids.push(id);
      this.stats.pingsSent++;
      sent.push(c.send([encodePing(id)]));
    }
    await Promise.all(sent);
    return ids;
  }

  setRefuse(on: boolean): void {
    this.#refuse = on;
  }

  setHandshakeError(code: number | null): void {
    this.#handshakeError = code;
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      closeQuietly(this.#listener);
      await this.#acceptLoop;
      for (const c of this.#conns.values()) c.close("server");
      this.stall(false);
      await Promise.all([...this.#conns.values()].map((c) => c.done));
    })();
    return this.#closing;
  }

  // -------------------------------------------------------------------------------------------

  #live(): _Conn[] {
    return [...this.#conns.values()].filter((c) => c.ready);
  }

  #target(connId: bigint, conn: number | undefined): _Conn {
    if (conn !== undefined) {
      const c = this.#conns.get(conn);
      if (c === undefined || !c.ready) throw new Error(`No live RPC connection ${conn}`);
      return c;
    }
    const live = this.#live();
    for (let i = live.length - 1; i >= 0; i--) {
      if (live[i]!.clients.has(connId)) return live[i]!;
    }
    throw new Error(`No live RPC connection knows conn_id ${connId}`);
  }

  #record(e: FakeMiddleEvent): void {
    this.events.push(e);
    this.#waiters.changed();
  }

  async #accept(): Promise<void> {
    let nextId = 0;
    while (true) {
      let socket: Deno.TcpConn;
      try {
        socket = await this.#listener.accept();
      } catch {
        return; // Listener closed.
      }
      if (this.#closing) {
        closeQuietly(socket);
        continue;
      }
      const c = new _Conn(++nextId, socket);
      this.stats.accepted++;
      this.#conns.set(c.id, c);
      c.done = this.#serve(c).finally(() => {
        c.close("error"); // No-op when already closed.
        this.#conns.delete(c.id);
        this.#record({
          type: "closed",
          conn: c.id,
          by: c.closedBy ?? "error",
          handshakeOk: c.codec !== null,
        });
      });
      this.#waiters.changed();
    }
  }

  /** Read the next chunk, honouring stall; null on EOF or when the connection was closed. */
  async #read(c: _Conn, buf: Uint8Array): Promise<number | null> {
    await this.#unstalled(c);
    if (c.closed) return null;
    const n = await c.socket.read(buf);
    // Bytes read while stalled are held until reading resumes.
    await this.#unstalled(c, n !== null);
    return c.closed ? null : n;
  }

  /** Wait while stalled; `holding`: with bytes read, counted once in heldReads while parked. */
  async #unstalled(c: _Conn, holding = false): Promise<void> {
    let counted = !holding;
    while (this.#stalled && !c.closed) {
      if (!counted) {
        counted = true;
        this.#heldReads++;
        this.#waiters.changed();
      }
      await Promise.race([this.#gate.promise, c.closedSignal]);
    }
  }

  async #serve(c: _Conn): Promise<void> {
    try {
      if (this.#refuse) {
        this.stats.refused++;
        this.#record({ type: "refused", conn: c.id });
        c.close("server");
        return;
      }
      c.socket.setNoDelay(true);
      const buf = new Uint8Array(BUF_SIZE);
      const early = await this.#handshake(c, buf);
      if (early === null) return;
      await this.#handle(c, early);
      while (!c.closed) {
        const n = await this.#read(c, buf);
        if (n === null) break;
        // Decrypted in place; bodies are views used up before the next read.
        const r = c.codec!.decode(buf.subarray(0, n));
        const ok = await this.#handle(c, r.frames);
        if (r.reject !== null) {
          this.#unexpected(c, `bad frame: ${r.reject}`);
          c.close("server");
        }
        if (!ok) break;
      }
      if (!c.closed) c.close("peer");
    } catch (e) {
      if (!c.closed) {
        if (!isClosedError(e)) this.#unexpected(c, `error: ${String(e)}`);
        c.close(isClosedError(e) ? "peer" : "error");
      }
    } finally {
      await c.drained();
      c.codec?.close();
    }
  }

  /** Run the server handshake; the frames that followed it, or null when it failed. */
  async #handshake(c: _Conn, buf: Uint8Array): Promise<Uint8Array[] | null> {
    const local = c.socket.localAddr as Deno.NetAddr;
    const hs = new MiddleServerHandshake({
      proxySecret: this.#secret,
      nonce: randomBytes(16),
      cryptoTs: Math.floor(Date.now() / 1000) >>> 0,
      local: { ip: local.hostname, port: local.port },
      remote: { ip: this.#options.proxyIp ?? c.peerIp, port: c.peerPort },
      ...(this.#handshakeError === null ? {} : { errorCode: this.#handshakeError }),
    });
    const fail = (reason: HandshakeRejectReason | "eof" | `error: ${string}`) => {
      this.stats.handshakeFailures++;
      this.#record({ type: "handshake_failed", conn: c.id, reason });
    };
    try {
      while (true) {
        let n: number | null;
        try {
          n = await this.#read(c, buf);
        } catch (e) {
          if (!isClosedError(e)) throw e;
          n = null;
        }
        if (n === null) {
          fail("eof");
          if (!c.closed) c.close("peer");
          return null;
        }
        const step = hs.receive(buf.subarray(0, n));
        if (step.send !== null) await c.writeRaw(step.send);
        if (step.kind === "reject") {
          fail(step.reason);
          c.close("server");
          return null;
        }
        if (step.kind === "done") {
          if (c.closed) {
            step.codec.close();
            fail("eof");
            return null;
          }
          c.codec = step.codec;
          // Bodies are used up (copied into answers or events) before the next read.
          c.codec.reuseBuffers();
          this.stats.handshakes++;
          this.#record({
            type: "handshake_ok",
            conn: c.id,
            peerIp: c.peerIp,
            peerPort: c.peerPort,
            peerPid: step.peerPid,
          });
          return step.frames;
        }
      }
    } catch (e) {
      if (c.codec === null) {
        fail(isClosedError(e) ? "eof" : `error: ${String(e)}`);
        if (!c.closed) c.close(isClosedError(e) ? "peer" : "error");
        return null;
      }
      throw e;
    } finally {
      hs.close(); // Releases the ciphers unless the codec was handed over.
    }
  }

  /** Handle RPC bodies and write the answers as one batch; false once the connection is gone. */
  async #handle(c: _Conn, frames: readonly Uint8Array[]): Promise<boolean> {
    if (frames.length === 0) return !c.closed;
    const out: FullBody[] = [];
    for (const body of frames) this.#onRpc(c, body, out);
    this.#waiters.changed(); // Counters moved (echo mode records no per-packet events).
    if (out.length === 0 || c.closed) return !c.closed;
    try {
      await c.sendReusing(out);
    } catch (e) {
      if (!isClosedError(e) && !c.closed) throw e;
      return false;
    }
    return !c.closed;
  }

  #unexpected(c: _Conn, what: string): void {
    this.stats.unexpected++;
    this.#record({ type: "unexpected", conn: c.id, what });
  }

  #onRpc(c: _Conn, body: Uint8Array, out: FullBody[]): void {
    const m = decodeRpc(body);
    switch (m.type) {
      case "proxy_req":
        return this.#onProxyReq(c, m, out);
      case "close_conn": {
        const known = c.clients.delete(m.connId);
        c.ansHeaders.delete(m.connId);
        this.stats.closeConns++;
        this.#record({ type: "close_conn", conn: c.id, connId: m.connId, known });
        return;
      }
      case "ping":
        this.stats.pingsReceived++;
        this.#record({ type: "ping", conn: c.id, pingId: m.pingId });
        out.push(encodePong(m.pingId));
        return;
      case "pong": {
        const expected = c.pings.delete(m.pingId);
        this.stats.pongsReceived++;
        this.#record({ type: "pong", conn: c.id, pingId: m.pingId, expected });
        return;
      }
      case "unknown":
        return this.#unexpected(c, `unknown RPC 0x${m.code.toString(16).padStart(8, "0")}`);
      case "malformed":
        return this.#unexpected(
          c,
          `malformed RPC${m.code === null ? "" : ` 0x${m.code.toString(16).padStart(8, "0")}`}`,
        );
      default:
        // proxy_ans, simple_ack, close_ext: middle proxy → proxy only.
        return this.#unexpected(c, `${m.type} from the proxy`);
    }
  }

  #onProxyReq(c: _Conn, m: ProxyReqMessage, out: FullBody[]): void {
    const connId = m.connId;
    const payload = m.payload;
    const mtproto = this.mode === "mtproto";
    this.stats.proxyReqs++;
    this.stats.proxyReqBytes += payload.length;
    const newClient = !c.clients.has(connId);
    if (newClient) {
      c.clients.set(connId, null);
      this.stats.clients++;
    }
    const expected = this.#expectedAdTag;
    const adTagOk = expected === undefined
      ? null
      : expected === null
      ? m.adTag === null
      : m.adTag !== null && _equal(m.adTag, expected);
    if (adTagOk === false) this.stats.adTagMismatches++;
    if (mtproto) {
      this.#record({
        type: "proxy_req",
        conn: c.id,
        connId,
        flags: m.flags,
        tag: m.tag,
        quickAck: m.quickAck,
        notEncrypted: m.notEncrypted,
        adTag: m.adTag === null ? null : m.adTag.slice(),
        adTagOk,
        clientIp: formatIp(m.clientIp),
        clientPort: m.clientPort,
        proxyIp: formatIp(m.proxyIp),
        proxyPort: m.proxyPort,
        size: payload.length,
        newClient,
      });
    }
    if (m.quickAck) {
      const confirm = _confirmFor(payload);
      this.stats.simpleAcks++;
      if (mtproto) this.#record({ type: "simple_ack", conn: c.id, connId, confirm });
      out.push(encodeSimpleAck(connId, confirm));
    }
    if (mtproto) {
      const msg = parseUnencrypted(payload);
      const pq = msg && parseReqPq(msg.body);
      if (pq) {
        let client = c.clients.get(connId) ?? null;
        if (client === null) {
          client = { serverNonce: randomBytes(16), nonces: [] };
          c.clients.set(connId, client);
        }
        if (client.nonces.length >= MAX_NONCES) client.nonces.shift();
        client.nonces.push(pq.nonce);
        this.#record({ type: "req_pq", conn: c.id, connId, nonce: pq.nonce, multi: pq.multi });
        const answer = resPq(pq.nonce, client.serverNonce);
        this.stats.answers++;
        this.stats.answerBytes += answer.length;
        out.push(encodeProxyAns(connId, answer));
        return;
      }
      const dh = msg && isReqDhParams(msg.body);
      if (dh) {
        const client = c.clients.get(connId) ?? null;
        this.#record({
          type: "req_dh_params",
          conn: c.id,
          connId,
          nonceOk: client !== null && client.nonces.some((n) => _equal(n, dh.nonce)),
          serverNonceOk: client !== null && _equal(client.serverNonce, dh.serverNonce),
        });
        c.clients.delete(connId);
        this.stats.closeExts++;
        this.#record({ type: "close_ext", conn: c.id, connId, cause: "req_dh_params" });
        out.push(encodeCloseExt(connId));
        return;
      }
    }
    if (payload.length % 4 !== 0) {
      this.#unexpected(c, `PROXY_REQ payload of ${payload.length} bytes (not a multiple of 4)`);
      return;
    }
    this.stats.answers++;
    this.stats.answerBytes += payload.length;
    // Header and payload go straight into the frame: one copy per echoed packet.
    let header = c.ansHeaders.get(connId);
    if (header === undefined) {
      header = encodeProxyAns(connId, new Uint8Array(0));
      c.ansHeaders.set(connId, header);
    }
    out.push([header, payload]);
  }
}

/**
 * Start a fake middle proxy listening on 127.0.0.1 (port 0 picks a free port).
 *
 * @example Usage
 * ```ts ignore
 * const mp = await startFakeMiddleProxy({ proxySecret, expectedAdTag: adTag });
 * // ... point the proxy's getProxyConfig (fake_core_api.ts) at 127.0.0.1:mp.port ...
 * await mp.waitFor((e) => e.type === "req_pq");
 * await mp.closeConnection(); // Telegram rotates a connection
 * await mp.close();
 * ```
 */
export function startFakeMiddleProxy(options: FakeMiddleProxyOptions): Promise<FakeMiddleProxy> {
  try {
    if (options.proxySecret.length < 4) {
      throw new RangeError(
        `Proxy secret must be at least 4 bytes: got ${options.proxySecret.length}`,
      );
    }
    const listener = Deno.listen({
      hostname: options.host ?? "127.0.0.1",
      port: options.port ?? 0,
      transport: "tcp",
    });
    return Promise.resolve(new _FakeMiddleProxy(listener, options));
  } catch (e) {
    return Promise.reject(e);
  }
}
