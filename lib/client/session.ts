/**
 * One client connection: detect fake-TLS or obfuscated2 from the first bytes, authenticate the
 * secret, apply the listener's protocol policy, open the Telegram side and relay both ways.
 * The session owns both sockets and every cipher, and releases them in one `finally`.
 *
 * @module
 */
import { createAesCtr, randomBytes, type StreamCipher, x25519PublicKey } from "../crypto.ts";
import type { ClientProtocol, Config, ListenerConfig, UserConfig } from "../config/types.ts";
import {
  closeQuietly,
  type Conn,
  DialTimeoutError,
  formatHostPort,
  remoteAddress,
  writeAll,
} from "../net.ts";
import {
  ALERT_DECODE_ERROR,
  buildServerHello,
  type ClientHello,
  GROUP_X25519,
  GROUP_X25519_MLKEM768,
  looksLikeTls,
  MAX_RECORD_PAYLOAD,
  parseClientHello,
  RECORD_HEADER_LEN,
  tlsAlert,
  TlsRecordReader,
  verifyClientHello,
} from "../protocol/fake_tls.ts";
import { perSniSecret } from "../secret.ts";
import { openFronting } from "../guard/fronting_dial.ts";
import {
  type TelegramClient,
  type TelegramCloseReason,
  TelegramOpenError,
  type TelegramSide,
  type TelegramStream,
} from "../telegram/side.ts";
import { PacketReader } from "../protocol/packet_reader.ts";
import {
  frameLength,
  type FrameRejectReason,
  quickAckToken,
  writeFrame,
} from "../protocol/framing.ts";
import { frameTlsRecords } from "./relay.ts";
import { ServerErrorFilter } from "../guard/server_error.ts";
import {
  INIT_LEN,
  type ObfuscatedStream,
  openClientInit,
  type TransportTag,
} from "../protocol/obfuscated2.ts";
import { type DcRoute, routeDc } from "../telegram/dc.ts";
import { type DcConnection, openDirect } from "../telegram/direct.ts";
import type { CloseReason, EventSink, RejectReason } from "./events.ts";
import type { ConnectionPolicy, PolicySlot } from "../guard/policy.ts";
import type { UserDirectory } from "../guard/users.ts";
import { parseProxyHeader, type ProxySource } from "../protocol/proxy_protocol.ts";
import { HelloProbe, InitProbe } from "../protocol/user_match.ts";
import { reportUnexpected } from "../ops/last_resort.ts";
import {
  type ChunkInspector,
  type PumpEnd,
  type PumpHost,
  type PumpSide,
  startPump,
} from "./relay.ts";

/** Probe resistance shared by all sessions of a server. */
export interface SessionGuard {
  /**
   * Whether a handshake with this key was seen before (the key is recorded either way). With a
   * fleet's shared state it may ask Redis, within a bounded wait; it never rejects.
   */
  seenBefore(key: Uint8Array): boolean | Promise<boolean>;
  /**
   * A fleet's limit on connections per client address or per SNI (shared_state): "limit" when
   * the fleet holds as many as allowed, else a release function, or null when nothing is
   * counted (no fleet, no limit, or the fleet cannot say now). Never rejects.
   */
  admitFleet?(kind: "ip" | "sni", key: string): Promise<(() => void) | "limit" | null>;
  /** SNIs that "sni" fronting may dial. */
  readonly frontableSnis: ReadonlySet<string>;
  /** Whether an address is one of this proxy's own listeners (fronting there would loop). */
  isOwnAddress(addr: { hostname: string; port: number }): boolean;
  /** How the fake-TLS answer for a hello naming `sni` should look (copied from the real site). */
  answerShape(sni: string): {
    appDataLength: number;
    extensionOrder: "key_share_first" | "versions_first";
    /** The group the real site picks when offered X25519MLKEM768 and X25519. */
    keyShareGroup: number;
    /** The real site's cipher suite, if measured. */
    cipherSuite?: number;
  };
}

/** What a session needs from the server that runs it (one object per listener, shared). */
export interface SessionContext {
  readonly listener: ListenerConfig;
  readonly config: Config;
  readonly events: EventSink;
  readonly guard: SessionGuard;
  /** Where clients' packets go: local pools and DCs, or a split-mode link to a back. */
  readonly telegram: TelegramSide;
  /** Address and SNI rules and limits (shared by all listeners). */
  readonly policy: ConnectionPolicy;
  /** The users whose secrets this listener also accepts; null without users. */
  readonly users: UserDirectory | null;
  /** Called exactly once when a session has ended and released everything. */
  readonly onDone: (session: Session) => void;
}

/** Why the server stops a session from outside ("policy": reloaded rules refuse it now). */
export type AbortReason = "timeout" | "idle" | "shutdown" | "policy" | "reloaded" | "user_quota";

/** Options of a {@linkcode Rejection}. */
interface RejectionOptions {
  detail?: string;
  /** Bytes to send before closing (a TLS alert). */
  reply?: Uint8Array;
  /**
   * The connection cannot be our client but may be a prober or someone else's client: hand it
   * to the fronting target. `sni` is the SNI its hello named (null: none, or not TLS).
   */
  front?: { sni: string | null; tls: boolean };
}

/** A refusal during the handshake. */
class Rejection extends Error {
  readonly detail: string;
  readonly reply: Uint8Array | undefined;
  readonly front: { sni: string | null; tls: boolean } | undefined;

  constructor(readonly reason: RejectReason, options: RejectionOptions = {}) {
    super(options.detail ? `${reason}: ${options.detail}` : reason);
    this.name = "Rejection";
    this.detail = options.detail ?? "";
    this.reply = options.reply;
    this.front = options.front;
  }
}

/**
 * HTTP request starts that clients never give an obfuscated2 init (they regenerate it): a
 * connection starting so is a probe, answered without waiting for 64 bytes. Other methods could
 * be a real init by chance, so they take the usual path (and fail the secret check).
 */
const HTTP_STARTS = new Set(["GET ", "POST", "HEAD", "OPTI"]);

/** An ML-KEM-768 ciphertext: any bytes of this length are a well-formed one. */
const MLKEM768_CIPHERTEXT_LEN = 1088;

/** TLS alert descriptions. */
const ALERT_UNRECOGNIZED_NAME = 112;

/** Bytes read from the client during the handshake, kept whole (fronting will replay them). */
class HandshakeBuffer {
  bytes = new Uint8Array(2048);
  length = 0;

  constructor(readonly conn: Conn) {}

  view(): Uint8Array {
    return this.bytes.subarray(0, this.length);
  }

  /** Forget the first `n` buffered bytes. */
  drop(n: number): void {
    this.bytes.copyWithin(0, n, this.length);
    this.length -= n;
  }

  /** Read until at least `n` bytes are buffered. */
  async fill(n: number): Promise<void> {
    while (this.length < n) {
      if (this.length === this.bytes.length) {
        const bigger = new Uint8Array(this.bytes.length * 2);
        bigger.set(this.bytes);
        this.bytes = bigger;
      }
      const got = await this.conn.read(this.bytes.subarray(this.length));
      if (got === null) throw new Rejection("eof", { detail: `after ${this.length} bytes` });
      this.length += got;
    }
  }
}

/** The client side after a successful handshake. */
interface Authenticated {
  readonly protocol: ClientProtocol;
  readonly stream: ObfuscatedStream;
  /** Present for fake-TLS clients: strips the records of what the client sends next. */
  readonly tls: TlsRecordReader | null;
  /** obfuscated2 bytes that arrived after the init, still encrypted. */
  readonly leftover: Uint8Array;
}

/**
 * Packet mode (middle proxies, or a back in split mode): the client's stream is unframed and its
 * packets go to a Telegram stream one by one.
 */
interface PacketPlan {
  readonly kind: "packets";
  readonly stream: TelegramStream;
  readonly reader: PacketReader;
  /** Decrypts what the client sends. */
  readonly decryptor: StreamCipher;
  readonly tls: TlsRecordReader | null;
}

/** What the relay phase keeps: the DC socket and the work on each direction. */
interface RelayPlan {
  readonly kind: "direct";
  readonly dc: Conn;
  /** Ciphers applied to client bytes on their way to the DC. */
  readonly up: readonly StreamCipher[];
  /** Ciphers applied to DC bytes on their way to the client. */
  readonly down: readonly StreamCipher[];
  /** Present for fake-TLS clients. */
  readonly tls: TlsRecordReader | null;
  /** The server error filter, if on. */
  readonly inspect: ChunkInspector | null;
}

/** One client connection, from accept to close. */
export class Session implements PumpHost, TelegramClient {
  readonly conn: Conn;
  /** The client's "host:port" for logs: the socket's, or the one a PROXY header named. */
  peer: string;
  readonly startedAt: number = Date.now();
  /** "handshake" until the client is authenticated, "relay" once bytes flow to Telegram. */
  phase: "handshake" | "dialing" | "relay" | "done" = "handshake";
  lastActivity: number = this.startedAt;
  #ctx: SessionContext;
  #dialAbort: AbortController | null = null;
  #abortReason: AbortReason | null = null;
  #dc: DcConnection | null = null;
  #ciphers: StreamCipher[] = [];
  /** Bytes read during the handshake, kept for fronting; null once no longer needed. */
  #hs: HandshakeBuffer | null = null;
  /** The fronting target's socket, when this connection was fronted. */
  #frontConn: Conn | null = null;
  #fronted = false;
  /** Packet mode only (direct-mode byte relays carry none of it). */
  #packets: _PacketState | null = null;
  /** Relay phase: pumps still running, which side ended first, whether one ended badly. */
  #running = 0;
  #firstEnded: PumpSide | null = null;
  #endedBadly = false;
  #endedBy: PumpEnd = "eof";
  /** What a pump threw, when one ended with "internal_error". */
  #internalDetail = "";

  constructor(conn: Conn, ctx: SessionContext) {
    this.conn = conn;
    this.#ctx = ctx;
    let peer = "unknown";
    try {
      peer = remoteAddress(conn);
    } catch {
      // The socket may already be gone.
    }
    this.peer = peer;
  }

  /** Stop this session now: closes both sockets, which ends every pending read. */
  abort(reason: AbortReason): void {
    if (this.phase === "done") return;
    this.#abortReason ??= reason;
    this.#dialAbort?.abort();
    closeQuietly(this.conn);
    if (this.#dc) closeQuietly(this.#dc.conn);
    if (this.#frontConn) closeQuietly(this.#frontConn);
  }

  /**
   * Start the session; it runs on its own and calls `onDone` at its end. Never throws.
   *
   * The handshake is an async function, but the relay is not: an async function suspended for
   * the whole life of a connection keeps its frame and every local in it, which adds up over
   * thousands of idle clients. Once the relay starts, the session and its two pumps are all
   * that remain.
   */
  start(): void {
    this.#handshake().catch((e) => {
      // Unreachable unless an event sink throws; never leave the sockets behind.
      reportUnexpected(`Client ${this.peer}: the handshake failed`, e);
      try {
        if (this.phase !== "done") this.#finish();
      } catch (e2) {
        reportUnexpected(`Client ${this.peer}: releasing it failed`, e2);
      }
    });
  }

  /**
   * Something threw while serving this client (a bug, or a peer breaking an invariant): report
   * it and close this client alone, as "internal_error". Never throws.
   */
  #internalError(e: unknown): void {
    reportUnexpected(`Client ${this.peer} closed (internal_error)`, e);
    const m = this.#packets;
    if (m && m.closedBy === null) {
      m.closedBy = "internal_error";
      m.closedDetail = _errorDetail(e);
    }
    closeQuietly(this.conn);
    if (this.#dc) closeQuietly(this.#dc.conn);
  }

  async #handshake(): Promise<void> {
    let plan: RelayPlan | PacketPlan;
    try {
      this.conn.setNoDelay(true);
      plan = await this.#establish();
    } catch (e) {
      const rejection = this.#asRejection(e);
      if (rejection.front && this.#abortReason === null && await this.#tryFront(rejection)) {
        return;
      }
      await this.#reject(rejection);
      this.#finish();
      return;
    } finally {
      this.#hs = null;
    }
    this.phase = "relay";
    if (plan.kind === "packets") return this.#startPacketRelay(plan);
    this.#running = 2;
    startPump(this.conn, plan.dc, {
      ciphers: plan.up,
      ...(plan.tls ? { unwrapTls: plan.tls } : {}),
      host: this,
      side: "client",
    });
    startPump(plan.dc, this.conn, {
      ciphers: plan.down,
      wrapTls: plan.tls !== null,
      ...(plan.inspect ? { inspect: plan.inspect } : {}),
      host: this,
      side: "dc",
    });
  }

  /**
   * Hand a connection that cannot be a client to the fronting target: the bytes read so far
   * first, then both directions untouched until either side closes. Returns false when it is
   * not fronted (fronting off, SNI not allowed, dial failed, loop); the caller then closes it.
   */
  async #tryFront(rejection: Rejection): Promise<boolean> {
    const { config, guard, listener } = this.#ctx;
    const front = rejection.front!;
    this.phase = "dialing";
    this.#dialAbort = new AbortController();
    let opened;
    try {
      opened = await openFronting({
        config: config.fronting,
        guard,
        sni: front.sni,
        buffered: this.#hs!.view(),
        signal: this.#dialAbort.signal,
      });
    } finally {
      this.#dialAbort = null;
    }
    if (opened.kind === "fronted" && this.#abortReason) closeQuietly(opened.site);
    if (this.#abortReason) return false;
    if (opened.kind === "not_fronted") {
      // Close a TLS hello the way a TLS server turns one away.
      if (front.tls && opened.reason !== "fronting_off" && !rejection.reply) {
        await this.#reject(
          new Rejection(rejection.reason, {
            detail: rejection.detail,
            reply: tlsAlert(ALERT_UNRECOGNIZED_NAME),
          }),
        );
        this.#finish();
        return true;
      }
      return false;
    }
    if (opened.kind === "failed") {
      await this.#reject(new Rejection(opened.reason, { detail: opened.detail }));
      this.#finish();
      return true;
    }
    const conn = opened.site;
    const where = opened.where;
    this.#frontConn = conn;
    this.#ctx.events.emit({
      type: "fronted",
      listener: listener.name,
      peer: this.peer,
      reason: rejection.reason,
      target: where,
      ...this.#refusedUser(rejection),
    });
    this.#hs = null;
    this.#fronted = true;
    this.phase = "relay";
    this.#running = 2;
    startPump(this.conn, conn, { ciphers: [], host: this, side: "client" });
    startPump(conn, this.conn, { ciphers: [], host: this, side: "dc" });
    return true;
  }

  /** The refusal an abort during the handshake or the dial stands for. */
  #abortRejection(): Rejection {
    const r = this.#abortReason;
    return new Rejection(
      r === "shutdown" || r === "policy" || r === "reloaded" || r === "user_quota" ? r : "timeout",
    );
  }

  /** Release everything and tell the server. */
  #finish(): void {
    this.phase = "done";
    closeQuietly(this.conn);
    if (this.#dc) closeQuietly(this.#dc.conn);
    if (this.#frontConn) closeQuietly(this.#frontConn);
    if (this.#packets) {
      const m = this.#packets;
      m.stream.release();
      for (const o of m.queue) _releaseOut(o);
      if (m.current) _releaseOut(m.current);
      m.queue = [];
      m.current = null;
    }
    for (const c of this.#ciphers) c.close();
    this.#sniSlot?.release();
    for (const release of this.#fleetSlots) release();
    this.#fleetSlots = [];
    this.#ctx.onDone(this);
  }

  #asRejection(e: unknown): Rejection {
    if (this.#abortReason && this.#abortReason !== "idle") return this.#abortRejection();
    if (e instanceof Rejection) return e;
    return new Rejection("eof", { detail: e instanceof Error ? e.message : String(e) });
  }

  /** The user a `user_*` refusal is about, for its event (counted per user). */
  #refusedUser(rejection: Rejection): { user?: string } {
    return this.#user && rejection.reason.startsWith("user_") ? { user: this.#user.name } : {};
  }

  async #reject(rejection: Rejection): Promise<void> {
    if (rejection.reply && this.#abortReason === null) {
      await writeAll(this.conn, rejection.reply).catch(() => {});
    }
    const event = {
      type: "rejected" as const,
      listener: this.#ctx.listener.name,
      peer: this.peer,
      reason: rejection.reason,
      ...this.#refusedUser(rejection),
    };
    this.#ctx.events.emit(rejection.detail ? { ...event, detail: rejection.detail } : event);
  }

  /** Handshake, policy, DC dial: returns the two relay directions. */
  async #establish(): Promise<RelayPlan | PacketPlan> {
    const client = await this.#authenticate();
    this.#protocol = client.protocol;
    this.#ciphers.push(client.stream.decryptor, client.stream.encryptor);
    this.phase = "dialing";
    const { telegram } = this.#ctx;
    // A user's own tag wins over the listener's.
    if (telegram.carries({ tag: this.#adTag() }) === "packets") {
      return await this.#establishPackets(client);
    }
    const route = routeDc(client.stream.dcId, this.#ctx.config.telegram);
    const dc = await this.#dial(route, client);
    const inspect = this.#serverErrorFilter(client, dc);
    this.#ctx.events.emit({
      type: "established",
      listener: this.#ctx.listener.name,
      peer: this.peer,
      protocol: client.protocol,
      transport: client.stream.tag,
      requestedDc: client.stream.dcId,
      dc: route.dcId,
      dcAddress: formatHostPort(route.address.host, route.address.port),
      ...(this.#user ? { user: this.#user.name } : {}),
    });
    return {
      kind: "direct",
      dc: dc.conn,
      up: [client.stream.decryptor, dc.encryptor],
      // Fast mode: the DC already encrypted for the client.
      down: dc.decryptor ? [dc.decryptor, client.stream.encryptor] : [],
      tls: client.tls,
      inspect,
    };
  }

  /** Packet mode: open a Telegram stream and send what the client already sent. */
  async #establishPackets(client: Authenticated): Promise<PacketPlan> {
    const { listener, telegram } = this.#ctx;
    const remote = this.#proxySource ??
      { ip: (this.conn.remoteAddr as Deno.NetAddr).hostname, port: this.conn.remoteAddr.port };
    const first = this.#chargeFirst(client);
    this.#dialAbort = new AbortController();
    let opened;
    try {
      opened = await telegram.open(this, {
        dcId: client.stream.dcId,
        tag: client.stream.tag,
        clientIp: remote.ip,
        clientPort: remote.port,
        adTag: this.#adTag(),
      }, this.#dialAbort.signal);
    } catch (e) {
      if (this.#abortReason) throw this.#abortRejection();
      const detail = e instanceof Error ? e.message : String(e);
      if (e instanceof TelegramOpenError && e.kind === "no_link") {
        throw new Rejection("link_unavailable", { detail });
      }
      if (e instanceof TelegramOpenError && e.kind === "timeout") {
        throw new Rejection("dc_timeout", { detail });
      }
      throw new Rejection("dc_unreachable", { detail });
    } finally {
      this.#dialAbort = null;
    }
    const stream = opened.stream;
    this.#packets = {
      stream,
      tag: client.stream.tag,
      encryptor: client.stream.encryptor,
      tls: client.tls !== null,
      answered: false,
      closedBy: null,
      current: null,
      queue: [],
      writing: false,
    };
    const reader = new PacketReader(client.stream.tag);
    client.stream.decryptor.update(first);
    const broken = await _sendPackets(reader, first, stream);
    if (broken) throw new Rejection("bad_frame", { detail: broken });
    this.#ctx.events.emit({
      type: "established",
      listener: listener.name,
      peer: this.peer,
      protocol: client.protocol,
      transport: client.stream.tag,
      requestedDc: client.stream.dcId,
      dc: opened.dcId,
      dcAddress: opened.where,
      ...(this.#user ? { user: this.#user.name } : {}),
    });
    return {
      kind: "packets",
      stream,
      reader,
      decryptor: client.stream.decryptor,
      tls: client.tls,
    };
  }

  #startPacketRelay(plan: PacketPlan): void {
    this.#running = 1;
    const sink = {
      read: () => Promise.resolve(null),
      write: async (chunk: Uint8Array) => {
        const broken = await _sendPackets(plan.reader, chunk, plan.stream);
        if (broken) {
          const m = this.#packets!;
          m.closedBy = "bad_frame";
          m.closedDetail = broken;
          throw new Error(`Client stream is broken: ${broken}`);
        }
        return chunk.length;
      },
    };
    startPump(this.conn, sink, {
      ciphers: [plan.decryptor],
      ...(plan.tls ? { unwrapTls: plan.tls } : {}),
      host: this,
      side: "client",
    });
  }

  /**
   * A packet from Telegram (TelegramClient): frame it into the client's next write. Never
   * throws: a connection shared with other clients calls it.
   */
  onPacket(data: Uint8Array): void {
    const m = this.#packets;
    if (!m || this.phase === "done") return;
    try {
      this.#takePacket(m, data);
    } catch (e) {
      this.#internalError(e);
    }
  }

  #takePacket(m: _PacketState, data: Uint8Array): void {
    const filter = this.#ctx.config.replay.serverErrorFilter;
    if (filter !== "off" && (filter === "all" || !m.answered) && _isTransportError(data)) {
      // A replayed session's tell-tale: never forward it.
      m.stream.ack(data.length, 1);
      m.closedBy = "server_error";
      closeQuietly(this.conn);
      return;
    }
    m.answered = true;
    const padding = m.tag === "padded" ? _PADDINGS[_paddingLength()]! : _NO_PADDING;
    const len = frameLength(m.tag, data.length, padding.length);
    const o = _room(m, len);
    writeFrame(m.tag, data, padding, o.buf, o.end);
    o.end += len;
    o.ackBytes += data.length;
    o.ackPackets++;
    this.#scheduleDrain(m);
  }

  /** Telegram confirmed a packet (TelegramClient). Never throws. */
  onQuickAck(confirm: Uint8Array): void {
    const m = this.#packets;
    if (!m || this.phase === "done") return;
    try {
      const token = quickAckToken(m.tag, confirm);
      const o = _room(m, token.length);
      o.buf.set(token, o.end);
      o.end += token.length;
      this.#scheduleDrain(m);
    } catch (e) {
      this.#internalError(e);
    }
  }

  /**
   * Telegram dropped this client, the pool did because it fell too far behind, or the link to
   * the back went away (TelegramClient).
   */
  onClose(reason: TelegramCloseReason): void {
    if (this.phase === "done" || !this.#packets) return;
    const m = this.#packets;
    if (reason === "internal_error") {
      // Reported where it was caught; the close names it for this client's event.
      m.closedBy ??= "internal_error";
      m.closedDetail ??= "a handler of this client threw";
    } else {
      m.closedBy ??= reason === "backpressure"
        ? "slow_client"
        : reason === "link_lost"
        ? "link_lost"
        : "dc_closed";
    }
    closeQuietly(this.conn);
  }

  /**
   * Start writing in a microtask: every answer dispatched from the same middle-proxy read goes
   * out in one write (and, to fake-TLS clients, in full-size records).
   */
  #scheduleDrain(m: _PacketState): void {
    if (m.writing) return;
    m.writing = true;
    queueMicrotask(() => this.#drainToClient(m));
  }

  async #drainToClient(m: _PacketState): Promise<void> {
    try {
      while (this.phase !== "done") {
        const o = m.queue.shift() ?? m.current;
        if (!o) break;
        if (o === m.current) m.current = null;
        // Once per write, not per packet (Date.now() costs ~50 ns, a packet's framing ~150).
        this.lastActivity = Date.now();
        // One cipher call per write; buffers are written (and so encrypted) in order.
        m.encryptor.update(o.buf.subarray(o.start, o.end));
        const start = m.tls ? frameTlsRecords(o.buf, o.start, o.end - o.start) : o.start;
        this.#bytesToClient += o.end - start;
        // Answers already asked for are not held back: the rate limit paces what the client
        // sends (its requests) instead.
        this.#charge(o.end - start);
        try {
          await writeAll(this.conn, o.buf.subarray(start, o.end));
        } catch {
          // The client is gone (or was closed): its pump ends the session.
          closeQuietly(this.conn);
          return;
        }
        if (o.ackPackets > 0) m.stream.ack(o.ackBytes, o.ackPackets);
        _releaseOut(o);
      }
    } catch (e) {
      this.#internalError(e);
    } finally {
      m.writing = false;
    }
  }

  /** The server error filter for the DC-to-client direction, per replay.server_error_filter. */
  #serverErrorFilter(client: Authenticated, dc: DcConnection): ChunkInspector | null {
    const mode = this.#ctx.config.replay.serverErrorFilter;
    if (mode === "off") return null;
    // Fast mode: the DC's bytes are encrypted with the client's keystream, from offset 0.
    const shadow = dc.decryptor
      ? null
      : createAesCtr(client.stream.keys.encryptKey, client.stream.keys.encryptIv);
    // The pump closes it (and its shadow cipher) when it ends early; "done" closes it too.
    return new ServerErrorFilter(client.stream.tag, { firstOnly: mode === "first", shadow });
  }

  #bytesFromClient = 0;
  #bytesToClient = 0;
  #sni: string | null = null;
  /** The real client, when a PROXY protocol header named it. */
  #proxySource: ProxySource | null = null;
  /** The slot this client holds under max_connections_per_sni, if it counts. */
  #sniSlot: PolicySlot | null = null;
  /** The slot under max_connections_per_ip; the server sets it and releases it at the end. */
  ipSlot: PolicySlot | null = null;
  /** What this client holds under a fleet's shared limits; released at the end. */
  #fleetSlots: (() => void)[] = [];
  /** The user whose secret matched; null for the listener's own secret. */
  #user: UserConfig | null = null;
  #protocol: ClientProtocol | null = null;

  /** Bytes received from the client so far (metrics read them while the session runs). */
  get bytesFromClient(): number {
    return this.#bytesFromClient;
  }

  /** Bytes sent to the client so far. */
  get bytesToClient(): number {
    return this.#bytesToClient;
  }

  /** The SNI (lowercase) of a fake-TLS client whose hello checked out; null otherwise. */
  get sni(): string | null {
    return this.#sni;
  }

  /** The client's IP address: from the PROXY header if one named it, else the socket's. */
  get clientIp(): string {
    return this.#proxySource?.ip ?? (this.conn.remoteAddr as Deno.NetAddr).hostname ?? "";
  }

  /** Name of the listener that accepted this client. */
  get listenerName(): string {
    return this.#ctx.listener.name;
  }

  #allowed(protocol: ClientProtocol): boolean {
    return this.#ctx.listener.allowedProtocols.includes(protocol);
  }

  async #authenticate(): Promise<Authenticated> {
    const hs = new HandshakeBuffer(this.conn);
    this.#hs = hs;
    if (this.#ctx.listener.proxyProtocol) await this.#readProxyHeader(hs);
    await this.#admitFleet("ip", this.clientIp);
    await hs.fill(1);
    if (hs.bytes[0] === 0x16) await hs.fill(3);
    if (looksLikeTls(hs.view())) return await this.#authenticateTls(hs);
    const notClient = { front: { sni: null, tls: false } };
    if (!this.#allowed("plain") && !this.#allowed("dd")) {
      throw new Rejection("tls_expected", {
        detail: "listener accepts only fake-TLS",
        ...notClient,
      });
    }
    await hs.fill(4);
    const start = new TextDecoder("latin1").decode(hs.bytes.subarray(0, 4));
    if (HTTP_STARTS.has(start)) throw new Rejection("http_request", notClient);
    await hs.fill(INIT_LEN);
    const init = hs.view().subarray(0, INIT_LEN);
    const stream = openClientInit(init, this.#ctx.listener.secret) ??
      this.#matchUser((secret) => openClientInit(init, secret), () => {
        const probe = new InitProbe(init);
        return (secret) => probe.opens(secret);
      });
    if (!stream) throw new Rejection("bad_secret", notClient);
    const protocol: ClientProtocol = stream.tag === "padded" ? "dd" : "plain";
    let refusal: Rejection | null = null;
    if (await this.#ctx.guard.seenBefore(init.subarray(8, 56))) {
      refusal = new Rejection("replay", notClient);
    } else if (!this.#allowed(protocol)) {
      refusal = new Rejection("protocol_disallowed", { detail: protocol });
    } else {
      refusal = this.#admitUser(notClient.front);
    }
    if (refusal) {
      stream.decryptor.close();
      stream.encryptor.close();
      throw refusal;
    }
    return { protocol, stream, tls: null, leftover: hs.view().slice(INIT_LEN) };
  }

  /**
   * Try the users of this listener, most likely first, until `attempt` accepts a secret; the
   * user it accepted is this client's from then on. `probe`, when given, makes a cheap, exact
   * pre-check (lib/protocol/user_match.ts): `attempt` then runs only for a secret it lets
   * through, so a client from an unknown address costs a fraction of a full check per user.
   */
  #matchUser<T>(
    attempt: (secret: Uint8Array) => T | null,
    probe?: () => (secret: Uint8Array) => boolean,
  ): T | null {
    const users = this.#ctx.users;
    if (!users) return null;
    const name = this.#ctx.listener.name;
    const ip = this.clientIp;
    const fits = probe?.() ?? null;
    for (const user of users.candidates(name, ip)) {
      if (fits && !fits(user.secret)) continue;
      const got = attempt(user.secret);
      if (got !== null) {
        users.matched(name, user, ip);
        this.#user = user;
        return got;
      }
    }
    return null;
  }

  /** A matched user may connect now: count it, or say why not. */
  #admitUser(front: { sni: string | null; tls: boolean }): Rejection | null {
    const user = this.#user;
    if (!user || !this.#ctx.users) return null;
    const slot = this.#ctx.users.admit(user, Date.now(), this.clientIp);
    if (typeof slot === "string") return new Rejection(slot, { detail: user.name, front });
    if (this.phase === "done") slot();
    else this.#fleetSlots.push(slot);
    return null;
  }

  /** The user whose secret this client used; null for the listener's own secret. */
  get user(): UserConfig | null {
    return this.#user;
  }

  /** How this client proved its secret; null until it has (and for fronted connections). */
  get protocol(): ClientProtocol | null {
    return this.#protocol;
  }

  #adTag(): Uint8Array | null {
    return this.#user?.tag ?? this.#ctx.listener.tag;
  }

  /** Count this client under a fleet's limit, or refuse it as the local limit would. */
  async #admitFleet(kind: "ip" | "sni", key: string): Promise<void> {
    const guard = this.#ctx.guard;
    if (!guard.admitFleet) return;
    const got = await guard.admitFleet(kind, key);
    if (got === "limit") {
      throw new Rejection(kind === "ip" ? "ip_limit" : "sni_limit", {
        detail: "fleet",
        ...(kind === "sni" ? { front: { sni: key, tls: true } } : {}),
      });
    }
    if (got) {
      if (this.phase === "done") got();
      else this.#fleetSlots.push(got);
    }
  }

  /**
   * A balancer in front speaks first: take the real client from its PROXY header, drop the
   * header (fronting must not pass it on), and apply the address rules the server could not.
   */
  async #readProxyHeader(hs: HandshakeBuffer): Promise<void> {
    while (true) {
      const step = parseProxyHeader(hs.view());
      if (step.kind === "need") {
        await hs.fill(step.atLeast);
        continue;
      }
      if (step.kind === "reject") throw new Rejection("bad_proxy_header", { detail: step.reason });
      hs.drop(step.length);
      if (step.source) {
        this.#proxySource = step.source;
        this.peer = formatHostPort(step.source.ip, step.source.port);
      }
      const slot = this.#ctx.policy.admitIp(this.clientIp);
      if (typeof slot === "string") throw new Rejection(slot);
      this.ipSlot = slot;
      return;
    }
  }

  async #authenticateTls(hs: HandshakeBuffer): Promise<Authenticated> {
    const { listener, config } = this.#ctx;
    let hello: ClientHello;
    let rest: Uint8Array;
    while (true) {
      const step = parseClientHello(hs.view());
      if (step.kind === "need") {
        await hs.fill(step.atLeast);
        continue;
      }
      if (step.kind === "reject") {
        throw new Rejection("tls_malformed", {
          detail: step.reason,
          reply: ALERT_DECODE_ERROR,
          front: { sni: null, tls: true },
        });
      }
      hello = step.hello;
      rest = step.rest;
      break;
    }
    const front = { sni: hello.sni, tls: true };
    if (!this.#allowed("tls")) {
      throw new Rejection("protocol_disallowed", { detail: "tls", front });
    }
    if (hello.sni === null) {
      throw new Rejection("no_sni", { reply: ALERT_DECODE_ERROR, front });
    }
    const sni = hello.sni.toLowerCase();
    let secret = listener.secret;
    if (config.perSniSecrets) {
      // Each user's link carries a secret derived for their SNI, as sent (its exact bytes).
      const sniBytes = Uint8Array.from(hello.sni, (ch) => ch.charCodeAt(0));
      secret = perSniSecret(listener.secret, sniBytes, config.perSniSalt);
    } else if (!listener.tlsDomains.includes(sni)) {
      throw new Rejection("bad_sni", { detail: JSON.stringify(sni), front });
    }
    const nowSec = Date.now() / 1000;
    const skewSec = config.tls.maxClockSkewMs / 1000;
    let check = verifyClientHello(hello, secret, nowSec, skewSec);
    if (check.kind === "bad_digest") {
      // One HMAC per user tried (nothing to share between keys), over one zeroed copy.
      let probe: HelloProbe | null = null;
      const user = this.#matchUser((s) => {
        probe ??= new HelloProbe(hello);
        const c = probe.check(s, nowSec, skewSec);
        return c.kind === "bad_digest" ? null : { c, s };
      });
      if (user) ({ c: check, s: secret } = user);
    }
    if (check.kind === "bad_digest") throw new Rejection("tls_bad_digest", { front });
    if (check.kind === "bad_timestamp") {
      const skew = Math.round(Date.now() / 1000 - check.timestamp);
      throw new Rejection("tls_bad_timestamp", { detail: `client clock off by ${skew} s`, front });
    }
    if (await this.#ctx.guard.seenBefore(hello.random)) throw new Rejection("replay", { front });
    // A refused user is fronted like any stranger: probes learn nothing about who exists.
    const refused = this.#admitUser(front);
    if (refused) throw refused;
    // Only now, with the secret proven, may a hello count against its SNI's limit.
    const { policy } = this.#ctx;
    if (policy.checksSnis) {
      const slot = policy.admitSni(sni);
      if (typeof slot === "string") {
        throw new Rejection(slot, { detail: JSON.stringify(sni), front });
      }
      this.#sniSlot = slot;
      await this.#admitFleet("sni", sni);
    }
    this.#sni = sni;
    const shape = this.#ctx.guard.answerShape(sni);
    // Answer a post-quantum offer like the site does: an ML-KEM ciphertext makes the
    // ServerHello ~1.2 KB, and a 127-byte one would stand out.
    const mlkem = shape.keyShareGroup === GROUP_X25519_MLKEM768 &&
      hello.keyShareGroups.includes(GROUP_X25519_MLKEM768);
    const answer = buildServerHello(hello, secret, {
      keyShare: x25519PublicKey(),
      // The ML-KEM ciphertext is random bytes written in place in front of the X25519 key.
      ...(mlkem
        ? { keySharePrefix: MLKEM768_CIPHERTEXT_LEN, fillKeySharePrefix: _fillRandom }
        : {}),
      keyShareGroup: mlkem ? GROUP_X25519_MLKEM768 : GROUP_X25519,
      appData: shape.appDataLength,
      fillAppData: _fillRandom,
      extensionOrder: shape.extensionOrder,
      ...(shape.cipherSuite !== undefined ? { cipherSuite: shape.cipherSuite } : {}),
    });
    await writeAll(this.conn, answer);

    // Now records: a ChangeCipherSpec, then ApplicationData carrying obfuscated2.
    const reader = new TlsRecordReader();
    let inner = new Uint8Array(Math.max(256, rest.length));
    let innerLen = 0;
    const take = (chunk: Uint8Array) => {
      const n = reader.unwrap(chunk);
      if (typeof n === "string") throw new Rejection("tls_bad_record", { detail: n });
      if (innerLen + n > inner.length) {
        const bigger = new Uint8Array(Math.max(inner.length * 2, innerLen + n));
        bigger.set(inner.subarray(0, innerLen));
        inner = bigger;
      }
      inner.set(chunk.subarray(0, n), innerLen);
      innerLen += n;
    };
    take(rest.slice());
    const chunk = new Uint8Array(1024);
    while (innerLen < INIT_LEN) {
      const got = await this.conn.read(chunk);
      if (got === null) throw new Rejection("eof", { detail: "after the TLS handshake" });
      take(chunk.subarray(0, got));
    }
    const stream = openClientInit(inner.slice(0, INIT_LEN), secret);
    if (!stream) throw new Rejection("bad_secret", { detail: "inside fake-TLS" });
    if (stream.tag !== "padded") {
      stream.decryptor.close();
      stream.encryptor.close();
      throw new Rejection("tls_inner_not_padded", { detail: stream.tag });
    }
    return {
      protocol: "tls",
      stream,
      tls: reader,
      leftover: inner.slice(INIT_LEN, innerLen),
    };
  }

  /**
   * Count and charge the bytes that came with the handshake, before anything is dialled or
   * opened for them: when they already pass the user's quota the client is refused here
   * (user_quota), with no Telegram connection made for it.
   */
  #chargeFirst(client: Authenticated): Uint8Array {
    const first = client.leftover;
    this.#bytesFromClient += first.length;
    this.#charge(first.length);
    if (this.#abortReason) throw this.#abortRejection();
    return first;
  }

  async #dial(route: DcRoute, client: Authenticated): Promise<DcConnection> {
    const { config } = this.#ctx;
    const first = this.#chargeFirst(client);
    client.stream.decryptor.update(first);
    const fast = config.telegram.fastMode;
    this.#dialAbort = new AbortController();
    try {
      this.#dc = await openDirect(route, client.stream.tag, {
        timeoutMs: config.timeouts.dcConnectMs,
        signal: this.#dialAbort.signal,
        firstData: first,
        ...(fast
          ? { replyKey: { key: client.stream.keys.encryptKey, iv: client.stream.keys.encryptIv } }
          : {}),
      });
    } catch (e) {
      if (this.#abortReason) throw this.#abortRejection();
      const address = formatHostPort(route.address.host, route.address.port);
      const why = e instanceof Error ? e.message : String(e);
      if (e instanceof DialTimeoutError) throw new Rejection("dc_timeout", { detail: why });
      throw new Rejection("dc_unreachable", { detail: `${address}: ${why}` });
    } finally {
      this.#dialAbort = null;
    }
    this.#ciphers.push(this.#dc.encryptor);
    if (this.#dc.decryptor) this.#ciphers.push(this.#dc.decryptor);
    else {
      // Fast mode never uses the client encryptor: release it now.
      client.stream.encryptor.close();
      this.#ciphers = this.#ciphers.filter((c) => c !== client.stream.encryptor);
    }
    return this.#dc;
  }

  /**
   * Traffic from one side (PumpHost): counted, and for a user charged to their quota and rate
   * limit. Returns how long the pump waits before it reads that side again.
   */
  pumped(side: PumpSide, bytes: number): number {
    if (side === "client") this.#bytesFromClient += bytes;
    else this.#bytesToClient += bytes;
    this.lastActivity = Date.now();
    // A fronted connection's bytes are the site's, nobody's quota (even when a user matched).
    return this.#user === null || this.#fronted ? 0 : this.#charge(bytes);
  }

  /**
   * Charge `bytes` to this client's user: the wait their rate limit asks for (0 without a user,
   * a limit or once the session is ending); a used-up quota closes the session (user_quota).
   */
  #charge(bytes: number): number {
    const user = this.#user, users = this.#ctx.users;
    if (user === null || users === null || this.#abortReason !== null) return 0;
    const wait = users.charge(user.name, bytes, Date.now());
    if (wait >= 0) return wait;
    this.abort("user_quota");
    return 0;
  }

  /** One side stopped (PumpHost): close both so the other pump stops too. */
  pumpEnded(side: PumpSide, end: PumpEnd, error?: unknown): void {
    this.#firstEnded ??= side;
    if (end === "internal_error") {
      reportUnexpected(`Client ${this.peer} closed (internal_error, ${side} side)`, error);
    }
    if (end !== "eof" && !this.#endedBadly) {
      this.#endedBadly = true;
      this.#endedBy = end;
      if (end === "internal_error") this.#internalDetail = _errorDetail(error);
    }
    closeQuietly(this.conn);
    if (this.#dc) closeQuietly(this.#dc.conn);
    if (this.#frontConn) closeQuietly(this.#frontConn);
    if (--this.#running > 0) return;
    let reason: CloseReason;
    if (
      this.#abortReason === "idle" || this.#abortReason === "shutdown" ||
      this.#abortReason === "policy" || this.#abortReason === "reloaded" ||
      this.#abortReason === "user_quota"
    ) {
      reason = this.#abortReason;
    } else if (this.#fronted) {
      reason = "fronted";
    } else if (this.#packets?.closedBy) {
      reason = this.#packets.closedBy;
    } else if (this.#endedBadly) {
      reason = this.#endedBy === "server_error" || this.#endedBy === "internal_error"
        ? this.#endedBy
        : "tls_bad_record";
    } else {
      reason = this.#firstEnded === "client" ? "client_closed" : "dc_closed";
    }
    const detail = reason === "internal_error" && this.#endedBy === "internal_error"
      ? this.#internalDetail
      : reason === "bad_frame" || reason === "internal_error"
      ? this.#packets?.closedDetail
      : undefined;
    try {
      this.#ctx.events.emit({
        type: "closed",
        listener: this.#ctx.listener.name,
        peer: this.peer,
        reason,
        ...(detail ? { detail } : {}),
        bytesFromClient: this.#bytesFromClient,
        bytesToClient: this.#bytesToClient,
        durationMs: Date.now() - this.startedAt,
        ...(this.#user ? { user: this.#user.name } : {}),
      });
    } finally {
      this.#finish();
    }
  }
}

/**
 * Unframe `chunk` and send its packets, in order. Returns why the client's stream is broken
 * (nothing is sent then), or null.
 */
async function _sendPackets(
  reader: PacketReader,
  chunk: Uint8Array,
  stream: TelegramStream,
): Promise<FrameRejectReason | null> {
  const packets = reader.push(chunk);
  if (typeof packets === "string") return packets;
  if (packets.length > 0) await stream.send(packets);
  return null;
}

/** An error in one line for a closed event's detail (the report has the stack). */
function _errorDetail(e: unknown): string {
  const text = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  return text.length > 200 ? `${text.slice(0, 197)}...` : text;
}

/** Telegram's transport error: a lone 4-byte negative code such as -404. */
function _isTransportError(data: Uint8Array): boolean {
  return data.length === 4 && (data[3]! & 0x80) !== 0;
}

/** The server's 0-3 bytes of padding for padded frames (its content does not matter). */
const _PADDINGS = [0, 1, 2, 3].map((n) => randomBytes(n));
const _NO_PADDING = new Uint8Array(0);

/** Random padding lengths (0-2, as `randomInt(0, 3)` gave), from a pooled random buffer. */
let _padRandom: Uint8Array = new Uint8Array(0);
let _padNext = 0;

function _paddingLength(): number {
  for (;;) {
    if (_padNext >= _padRandom.length) {
      _padRandom = randomBytes(256);
      _padNext = 0;
    }
    // 255 is skipped, so that the three lengths stay equally likely.
    const b = _padRandom[_padNext++]!;
    if (b < 255) return b % 3;
  }
}

/** What a packet-mode session keeps: its Telegram stream, how answers are framed, the write queue. */
interface _PacketState {
  readonly stream: TelegramStream;
  readonly tag: TransportTag;
  /** Encrypts what goes to the client. */
  readonly encryptor: StreamCipher;
  /** Fake-TLS client: answers go in ApplicationData records. */
  readonly tls: boolean;
  /** Telegram's first answer has been passed on (server error filter "first"). */
  answered: boolean;
  /** Why the session ended, when the relay knows better than its pumps. */
  closedBy: CloseReason | null;
  closedDetail?: string;
  /** The buffer answers are being added to, and full ones waiting to be written. */
  current: _OutBuffer | null;
  queue: _OutBuffer[];
  /** A write is scheduled or in flight. */
  writing: boolean;
}

/** Answers for the client, framed, then encrypted and written as one. */
interface _OutBuffer {
  buf: Uint8Array;
  /** Where the answers start: TLS record headers go into the room before it. */
  start: number;
  /** Where the next answer goes. */
  end: number;
  /** What to acknowledge to the pool once written. */
  ackBytes: number;
  ackPackets: number;
}

/**
 * Pooled answer buffers in two sizes: a small one starts each write (most answers are small), a
 * large one, with room for several 16 KiB packets, takes what does not fit. Reused: a fresh
 * buffer per answer kept the GC busy (a quarter of the proxy's time).
 */
const _SMALL_OUT = 4096;
const _LARGE_OUT = 96 * 1024;
const _smallOut: Uint8Array[] = [];
const _largeOut: Uint8Array[] = [];
const _SMALL_OUT_MAX = 256;
const _LARGE_OUT_MAX = 64;

/** Room for TLS record headers in front of the answers in `size` bytes. */
function _headroom(size: number): number {
  return RECORD_HEADER_LEN * Math.ceil(size / MAX_RECORD_PAYLOAD);
}

const _SMALL_HEADROOM = _headroom(_SMALL_OUT);
const _LARGE_HEADROOM = _headroom(_LARGE_OUT);

/** The client's current answer buffer if `len` more bytes fit, else a new one. */
function _room(m: _PacketState, len: number): _OutBuffer {
  const cur = m.current;
  if (cur && cur.end + len <= cur.buf.length) return cur;
  if (cur) m.queue.push(cur);
  let buf: Uint8Array;
  let start = 0;
  if (!cur && _SMALL_HEADROOM + len <= _SMALL_OUT) {
    buf = _smallOut.pop() ?? new Uint8Array(_SMALL_OUT);
    if (m.tls) start = _SMALL_HEADROOM;
  } else if (_LARGE_HEADROOM + len <= _LARGE_OUT) {
    buf = _largeOut.pop() ?? new Uint8Array(_LARGE_OUT);
    if (m.tls) start = _LARGE_HEADROOM;
  } else {
    if (m.tls) start = _headroom(len);
    buf = new Uint8Array(start + len);
  }
  const o = { buf, start, end: start, ackBytes: 0, ackPackets: 0 };
  m.current = o;
  return o;
}

/** Give a pooled buffer back (each once). */
/** Fill bytes of a fake-TLS answer with random ones. */
function _fillRandom(bytes: Uint8Array): void {
  crypto.getRandomValues(bytes);
}

function _releaseOut(o: _OutBuffer): void {
  const buf = o.buf;
  if (buf.length === _SMALL_OUT) {
    if (_smallOut.length < _SMALL_OUT_MAX) _smallOut.push(buf);
  } else if (buf.length === _LARGE_OUT) {
    if (_largeOut.length < _LARGE_OUT_MAX) _largeOut.push(buf);
  }
  o.buf = _EMPTY;
}

const _EMPTY = new Uint8Array(0);
