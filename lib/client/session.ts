/**
 * One client connection: detect fake-TLS or obfuscated2 from the first bytes, authenticate the
 * secret, apply the listener's protocol policy, open the Telegram side and relay both ways.
 * The session owns both sockets and every cipher, and releases them in one `finally`.
 *
 * @module
 */
import { randomBytes, randomInt, type StreamCipher, x25519PublicKey } from "../crypto.ts";
import type { ClientProtocol, Config, ListenerConfig } from "../config/types.ts";
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
  looksLikeTls,
  parseClientHello,
  TlsRecordReader,
  verifyClientHello,
} from "../protocol/fake_tls.ts";
import { INIT_LEN, type ObfuscatedStream, openClientInit } from "../protocol/obfuscated2.ts";
import { type DcRoute, routeDc } from "../telegram/dc.ts";
import { type DcConnection, openDirect } from "../telegram/direct.ts";
import type { CloseReason, EventSink, RejectReason } from "./events.ts";
import { type PumpEnd, type PumpHost, type PumpSide, startPump } from "./relay.ts";

/** What a session needs from the server that runs it (one object per listener, shared). */
export interface SessionContext {
  readonly listener: ListenerConfig;
  readonly config: Config;
  readonly events: EventSink;
  /** Called exactly once when a session has ended and released everything. */
  readonly onDone: (session: Session) => void;
}

/** A refusal during the handshake; carries bytes to send before closing (a TLS alert). */
class Rejection extends Error {
  constructor(readonly reason: RejectReason, readonly detail = "", readonly reply?: Uint8Array) {
    super(detail ? `${reason}: ${detail}` : reason);
    this.name = "Rejection";
  }
}

/** Size of the fake encrypted-handshake record: in the range real certificates chains take. */
const FAKE_CERT_MIN = 2500;
const FAKE_CERT_MAX = 4700;

/** Bytes read from the client during the handshake, kept whole (fronting will replay them). */
class HandshakeBuffer {
  bytes = new Uint8Array(2048);
  length = 0;

  constructor(readonly conn: Conn) {}

  view(): Uint8Array {
    return this.bytes.subarray(0, this.length);
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
      if (got === null) throw new Rejection("eof", `after ${this.length} bytes`);
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

/** What the relay phase keeps: the DC socket and the work on each direction. */
interface RelayPlan {
  readonly dc: Conn;
  /** Ciphers applied to client bytes on their way to the DC. */
  readonly up: readonly StreamCipher[];
  /** Ciphers applied to DC bytes on their way to the client. */
  readonly down: readonly StreamCipher[];
  /** Present for fake-TLS clients. */
  readonly tls: TlsRecordReader | null;
}

/** One client connection, from accept to close. */
export class Session implements PumpHost {
  readonly conn: Conn;
  readonly peer: string;
  readonly startedAt: number = Date.now();
  /** "handshake" until the client is authenticated, "relay" once bytes flow to Telegram. */
  phase: "handshake" | "dialing" | "relay" | "done" = "handshake";
  lastActivity: number = this.startedAt;
  #ctx: SessionContext;
  #dialAbort: AbortController | null = null;
  #abortReason: "timeout" | "idle" | "shutdown" | null = null;
  #dc: DcConnection | null = null;
  #ciphers: StreamCipher[] = [];
  /** Relay phase: pumps still running, which side ended first, whether one ended badly. */
  #running = 0;
  #firstEnded: PumpSide | null = null;
  #endedBadly = false;

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
  abort(reason: "timeout" | "idle" | "shutdown"): void {
    if (this.phase === "done") return;
    this.#abortReason ??= reason;
    this.#dialAbort?.abort();
    closeQuietly(this.conn);
    if (this.#dc) closeQuietly(this.#dc.conn);
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
    this.#handshake().catch(() => {
      // Unreachable unless an event sink throws; never leave the sockets behind.
      if (this.phase !== "done") this.#finish();
    });
  }

  async #handshake(): Promise<void> {
    let plan: RelayPlan;
    try {
      this.conn.setNoDelay(true);
      plan = await this.#establish();
    } catch (e) {
      await this.#reject(e);
      this.#finish();
      return;
    }
    this.phase = "relay";
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
      host: this,
      side: "dc",
    });
  }

  /** Release everything and tell the server. */
  #finish(): void {
    this.phase = "done";
    closeQuietly(this.conn);
    if (this.#dc) closeQuietly(this.#dc.conn);
    for (const c of this.#ciphers) c.close();
    this.#ctx.onDone(this);
  }

  async #reject(e: unknown): Promise<void> {
    let rejection: Rejection;
    if (e instanceof Rejection) {
      rejection = e;
    } else if (this.#abortReason === "timeout" || this.#abortReason === "shutdown") {
      rejection = new Rejection(this.#abortReason);
    } else {
      rejection = new Rejection("eof", e instanceof Error ? e.message : String(e));
    }
    if (rejection.reply && this.#abortReason === null) {
      await writeAll(this.conn, rejection.reply).catch(() => {});
    }
    const event = {
      type: "rejected" as const,
      listener: this.#ctx.listener.name,
      peer: this.peer,
      reason: rejection.reason,
    };
    this.#ctx.events.emit(rejection.detail ? { ...event, detail: rejection.detail } : event);
  }

  /** Handshake, policy, DC dial: returns the two relay directions. */
  async #establish(): Promise<RelayPlan> {
    const client = await this.#authenticate();
    this.#ciphers.push(client.stream.decryptor, client.stream.encryptor);
    this.phase = "dialing";
    const route = routeDc(client.stream.dcId, this.#ctx.config.telegram);
    const dc = await this.#dial(route, client);
    this.#ctx.events.emit({
      type: "established",
      listener: this.#ctx.listener.name,
      peer: this.peer,
      protocol: client.protocol,
      transport: client.stream.tag,
      requestedDc: client.stream.dcId,
      dc: route.dcId,
      dcAddress: formatHostPort(route.address.host, route.address.port),
    });
    return {
      dc: dc.conn,
      up: [client.stream.decryptor, dc.encryptor],
      // Fast mode: the DC already encrypted for the client.
      down: dc.decryptor ? [dc.decryptor, client.stream.encryptor] : [],
      tls: client.tls,
    };
  }

  #bytesFromClient = 0;
  #bytesToClient = 0;

  #allowed(protocol: ClientProtocol): boolean {
    return this.#ctx.listener.allowedProtocols.includes(protocol);
  }

  async #authenticate(): Promise<Authenticated> {
    const hs = new HandshakeBuffer(this.conn);
    await hs.fill(1);
    if (hs.bytes[0] === 0x16) await hs.fill(3);
    if (looksLikeTls(hs.view())) return await this.#authenticateTls(hs);
    if (!this.#allowed("plain") && !this.#allowed("dd")) {
      throw new Rejection("tls_expected", "listener accepts only fake-TLS");
    }
    await hs.fill(INIT_LEN);
    const stream = openClientInit(hs.view().subarray(0, INIT_LEN), this.#ctx.listener.secret);
    if (!stream) throw new Rejection("bad_secret");
    const protocol: ClientProtocol = stream.tag === "padded" ? "dd" : "plain";
    if (!this.#allowed(protocol)) {
      stream.decryptor.close();
      stream.encryptor.close();
      throw new Rejection("protocol_disallowed", protocol);
    }
    return { protocol, stream, tls: null, leftover: hs.view().slice(INIT_LEN) };
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
        throw new Rejection("tls_malformed", step.reason, ALERT_DECODE_ERROR);
      }
      hello = step.hello;
      rest = step.rest;
      break;
    }
    if (!this.#allowed("tls")) throw new Rejection("protocol_disallowed", "tls");
    if (hello.sni === null) throw new Rejection("no_sni", "", ALERT_DECODE_ERROR);
    const sni = hello.sni.toLowerCase();
    if (!listener.tlsDomains.includes(sni)) throw new Rejection("bad_sni", JSON.stringify(sni));
    const check = verifyClientHello(
      hello,
      listener.secret,
      Date.now() / 1000,
      config.tls.maxClockSkewMs / 1000,
    );
    if (check.kind === "bad_digest") throw new Rejection("tls_bad_digest");
    if (check.kind === "bad_timestamp") {
      const skew = Math.round(Date.now() / 1000 - check.timestamp);
      throw new Rejection("tls_bad_timestamp", `client clock off by ${skew} s`);
    }
    const answer = buildServerHello(hello, listener.secret, {
      keyShare: x25519PublicKey(),
      appData: randomBytes(randomInt(FAKE_CERT_MIN, FAKE_CERT_MAX)),
    });
    await writeAll(this.conn, answer);

    // Now records: a ChangeCipherSpec, then ApplicationData carrying obfuscated2.
    const reader = new TlsRecordReader();
    let inner = new Uint8Array(Math.max(256, rest.length));
    let innerLen = 0;
    const take = (chunk: Uint8Array) => {
      const n = reader.unwrap(chunk);
      if (typeof n === "string") throw new Rejection("tls_bad_record", n);
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
      if (got === null) throw new Rejection("eof", "after the TLS handshake");
      take(chunk.subarray(0, got));
    }
    const stream = openClientInit(inner.slice(0, INIT_LEN), listener.secret);
    if (!stream) throw new Rejection("bad_secret", "inside fake-TLS");
    if (stream.tag !== "padded") {
      stream.decryptor.close();
      stream.encryptor.close();
      throw new Rejection("tls_inner_not_padded", stream.tag);
    }
    return {
      protocol: "tls",
      stream,
      tls: reader,
      leftover: inner.slice(INIT_LEN, innerLen),
    };
  }

  async #dial(route: DcRoute, client: Authenticated): Promise<DcConnection> {
    const { config } = this.#ctx;
    const first = client.leftover;
    this.#bytesFromClient += first.length;
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
      if (this.#abortReason) {
        throw new Rejection(this.#abortReason === "shutdown" ? "shutdown" : "timeout");
      }
      const address = formatHostPort(route.address.host, route.address.port);
      const why = e instanceof Error ? e.message : String(e);
      if (e instanceof DialTimeoutError) throw new Rejection("dc_timeout", why);
      throw new Rejection("dc_unreachable", `${address}: ${why}`);
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

  /** Traffic from one side (PumpHost). */
  pumped(side: PumpSide, bytes: number): void {
    if (side === "client") this.#bytesFromClient += bytes;
    else this.#bytesToClient += bytes;
    this.lastActivity = Date.now();
  }

  /** One side stopped (PumpHost): close both so the other pump stops too. */
  pumpEnded(side: PumpSide, end: PumpEnd): void {
    this.#firstEnded ??= side;
    if (end !== "eof") this.#endedBadly = true;
    closeQuietly(this.conn);
    if (this.#dc) closeQuietly(this.#dc.conn);
    if (--this.#running > 0) return;
    let reason: CloseReason;
    if (this.#abortReason === "idle" || this.#abortReason === "shutdown") {
      reason = this.#abortReason;
    } else if (this.#endedBadly) {
      reason = "tls_bad_record";
    } else {
      reason = this.#firstEnded === "client" ? "client_closed" : "dc_closed";
    }
    this.#ctx.events.emit({
      type: "closed",
      listener: this.#ctx.listener.name,
      peer: this.peer,
      reason,
      bytesFromClient: this.#bytesFromClient,
      bytesToClient: this.#bytesToClient,
      durationMs: Date.now() - this.startedAt,
    });
    this.#finish();
  }
}
