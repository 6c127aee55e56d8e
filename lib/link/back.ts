/**
 * Split mode, the back: accepts links from fronts on `link_listeners` and serves their streams
 * with the local Telegram side (middle-proxy pools or direct DC connections). To anyone but a
 * front it is the real site: a connection whose first bytes are not a ClientHello signed with a
 * known front's secret (within the clock window, never seen before) is fronted byte for byte,
 * exactly as a client listener fronts a prober.
 *
 * @module
 */
import type { Config, FrontCredential, LinkListenerConfig } from "../config/types.ts";
import { randomBytes } from "../crypto.ts";
import { logger } from "../ops/log.ts";
import { reportUnexpected } from "../ops/last_resort.ts";
import {
  closeQuietly,
  type Conn,
  formatHostPort,
  type Listener,
  listenTcp,
  writeAll,
} from "../net.ts";
import { parseClientHello, verifyClientHello } from "../protocol/fake_tls.ts";
import type { Packet } from "../protocol/framing.ts";
import { LINK_VERSION, type LinkCloseReason, type LinkFrameSink } from "../protocol/link.ts";
import { answerLinkHello, type LinkKeys } from "../protocol/link_records.ts";
import { openFronting } from "../guard/fronting_dial.ts";
import { type PumpEnd, type PumpHost, startPump } from "../client/relay.ts";
import type { SessionGuard } from "../client/session.ts";
import type { PacketWriter, ReadPausable } from "../telegram/direct_stream.ts";
import type { LocalTelegram } from "../telegram/local.ts";
import type {
  TelegramClient,
  TelegramCloseReason,
  TelegramOpenError,
  TelegramStream,
} from "../telegram/side.ts";
import { LinkConnection, type LinkEnd, type LinkHost } from "./connection.ts";
import { bytesEqual } from "../protocol/bytes.ts";

const log = logger("link");

/** What the back needs from the server's guards: the same ones client listeners' sessions use. */
export type LinkGuard = Pick<
  SessionGuard,
  "seenBefore" | "frontableSnis" | "isOwnAddress" | "answerShape"
>;

/** Counters of the back, for metrics. */
export interface BackStats {
  /** Links up per front name. */
  readonly links: ReadonlyMap<string, number>;
  /** Streams open per front name. */
  readonly streams: ReadonlyMap<string, number>;
  /** Answer bytes held for each front's clients: sent and unacknowledged, or waiting for credit. */
  readonly held: ReadonlyMap<string, number>;
  /** The most answer bytes held for one stream. */
  readonly maxStreamHeldBytes: number;
  /** Connections to link ports that were not fronts, by reason. */
  readonly refused: ReadonlyMap<string, number>;
  /** Links ended, by how. */
  readonly ended: ReadonlyMap<string, number>;
}

/** A bound link listener. */
export interface BoundLinkListener {
  readonly name: string;
  readonly host: string;
  readonly port: number;
}

/** A hello that checked out: whose it is, the keys, and record bytes that came with it. */
interface _Accepted {
  readonly front: FrontCredential;
  readonly keys: LinkKeys;
  readonly rest: Uint8Array;
}

/** Client packet bytes handed to the DC in one write, acknowledged to the front once written. */
interface _Write {
  readonly promise: Promise<void>;
  bytes: number;
}

/** One client stream of a front, served by the local Telegram side. */
class BackStream implements TelegramClient {
  readonly id: number;
  readonly #link: BackLink;
  local: TelegramStream | null = null;
  /** `local` when it frames packets as they come (a direct DC stream): nothing to copy. */
  #writer: PacketWriter | null = null;
  /** `local` when its reading can be held back (a direct DC stream), and whether it is. */
  #pausable: ReadPausable | null = null;
  #paused = false;
  /** Aborts the open; dropped once the stream is open (an idle stream keeps no signal). */
  #abort: AbortController | null = new AbortController();
  closed = false;
  /** Client packets received before the stream opened, or while a send is in flight. */
  pending: Packet[] | null = null;
  pendingBytes = 0;
  sending = false;
  #scheduled = false;
  /** The write the packets from the front go into now (direct DC streams). */
  #write: _Write | null = null;
  /** Answer bytes sent to the front and not yet acknowledged, and their sizes in order. */
  inFlight = 0;
  #sizes: number[] | null = null;
  #sizesHead = 0;
  /** Answers that wait for the front's window (copies), from `#queuedHead` on. */
  #queued: Uint8Array[] | null = null;
  #queuedHead = 0;
  queuedBytes = 0;

  constructor(link: BackLink, id: number) {
    this.#link = link;
    this.id = id;
  }

  /** Aborted when the stream is released before it opened. */
  get signal(): AbortSignal {
    return this.#abort!.signal;
  }

  /** Telegram's side is open: packets go to `stream` from now on. */
  opened(stream: TelegramStream): void {
    this.local = stream;
    this.#abort = null;
    const writer = stream as Partial<PacketWriter>;
    if (typeof writer.sendPacket === "function") this.#writer = stream as unknown as PacketWriter;
    const pausable = stream as Partial<ReadPausable>;
    if (typeof pausable.pause === "function" && typeof pausable.resume === "function") {
      this.#pausable = stream as unknown as ReadPausable;
    }
    this.pump();
  }

  // TelegramClient: what Telegram sends this client.

  onPacket(data: Uint8Array): void {
    if (this.closed) return;
    if (this.inFlight < this.#link.peerWindow && this.#queued === null) {
      this.#sendAnswer(data);
    } else {
      (this.#queued ??= []).push(data.slice());
      this.queuedBytes += data.length;
    }
  }

  onQuickAck(confirm: Uint8Array): void {
    if (this.closed) return;
    this.#link.conn.writer.quickAck(this.id, confirm);
    this.#link.conn.flushSoon();
  }

  onClose(reason: TelegramCloseReason): void {
    if (this.closed) return;
    this.local = null;
    this.#writer = null;
    this.#pausable = null;
    this.#link.endStream(
      this,
      reason === "link_lost" || reason === "internal_error" ? "connection_lost" : reason,
      reason === "internal_error" ? "internal error on the back" : "",
    );
  }

  // From the front.

  /** A client packet (a view valid during the call). */
  data(payload: Uint8Array, quickAck: boolean): void {
    const writer = this.#writer;
    if (writer !== null && this.pending === null) {
      // Framed into the DC's next write at once: one write per turn, nothing copied.
      this.#sendPacket(writer, payload, quickAck);
      return;
    }
    (this.pending ??= []).push({ payload: payload.slice(), quickAck });
    this.pendingBytes += payload.length;
    if (this.#scheduled) return;
    this.#scheduled = true;
    // Everything that arrived in one read goes to Telegram in one send.
    queueMicrotask(() => {
      this.#scheduled = false;
      try {
        this.pump();
      } catch (e) {
        this.#link.streamFailed(this, e);
      }
    });
  }

  /** Hand pending packets to Telegram; acknowledge them to the front once taken. */
  pump(): void {
    const local = this.local;
    const batch = this.pending;
    if (!local || this.sending || this.closed || batch === null) return;
    const bytes = this.pendingBytes;
    this.pending = null;
    this.pendingBytes = 0;
    const writer = this.#writer;
    if (writer !== null) {
      for (const p of batch) this.#sendPacket(writer, p.payload, p.quickAck);
      return;
    }
    this.sending = true;
    local.send(batch).then(() => {
      this.sending = false;
      if (this.closed) return;
      this.#link.conn.writer.ack(this.id, bytes);
      this.#link.conn.flushSoon();
      this.pump();
    }, (e) => {
      this.sending = false;
      if (this.closed) return;
      this.#link.endStream(this, "connection_lost", e instanceof Error ? e.message : String(e));
    }).catch((e: unknown) => this.#link.streamFailed(this, e));
  }

  /** The front delivered `bytes` of answers to its client. */
  credited(bytes: number): void {
    bytes = Math.min(bytes, this.inFlight);
    this.inFlight -= bytes;
    let packets = 0;
    const sizes = this.#sizes;
    if (sizes !== null) {
      let left = bytes;
      while (left > 0 && this.#sizesHead < sizes.length) {
        left -= sizes[this.#sizesHead++]!;
        packets++;
      }
      if (this.#sizesHead === sizes.length) {
        this.#sizes = null;
        this.#sizesHead = 0;
      } else if (this.#sizesHead > 1024) {
        sizes.splice(0, this.#sizesHead);
        this.#sizesHead = 0;
      }
    }
    if (bytes > 0) this.local?.ack(bytes, packets);
    const queued = this.#queued;
    if (queued === null) return;
    while (this.#queuedHead < queued.length && this.inFlight < this.#link.peerWindow) {
      if (this.closed) return;
      const data = queued[this.#queuedHead++]!;
      this.queuedBytes -= data.length;
      this.#sendAnswer(data);
    }
    if (this.#queuedHead === queued.length) {
      this.#queued = null;
      this.#queuedHead = 0;
    }
  }

  /** Release the Telegram side (idempotent). */
  release(): void {
    this.closed = true;
    this.#abort?.abort();
    this.#abort = null;
    this.pending = null;
    this.#queued = null;
    this.#queuedHead = 0;
    this.queuedBytes = 0;
    this.#sizes = null;
    this.#write = null;
    const local = this.local;
    this.local = null;
    this.#writer = null;
    this.#pausable = null;
    local?.release();
  }

  #sendPacket(writer: PacketWriter, payload: Uint8Array, quickAck: boolean): void {
    const promise = writer.sendPacket(payload, quickAck);
    let w = this.#write;
    if (w === null || w.promise !== promise) {
      // A new write: acknowledge its bytes once it is on the DC's socket.
      const write: _Write = { promise, bytes: 0 };
      this.#write = w = write;
      promise.then(() => {
        if (this.#write === write) this.#write = null;
        if (this.closed) return;
        this.#link.conn.writer.ack(this.id, write.bytes);
        this.#link.conn.flushSoon();
      }, (e) => {
        if (this.closed) return;
        this.#link.endStream(this, "connection_lost", e instanceof Error ? e.message : String(e));
      }).catch((e: unknown) => this.#link.streamFailed(this, e));
    }
    w.bytes += payload.length;
  }

  #sendAnswer(data: Uint8Array): void {
    const conn = this.#link.conn;
    conn.writer.answer(this.id, data);
    this.inFlight += data.length;
    (this.#sizes ??= []).push(data.length);
    conn.flushSoon();
    if (this.#pausable !== null && !this.#paused) {
      // A link with a long queue takes no more for now: the DC's bytes wait in its socket.
      const room = conn.room();
      if (room !== null) this.#holdUntil(room, this.#pausable);
    }
  }

  #holdUntil(room: Promise<void>, pausable: ReadPausable): void {
    this.#paused = true;
    pausable.pause();
    room.then(() => {
      this.#paused = false;
      if (!this.closed) pausable.resume();
    }).catch((e: unknown) => this.#link.streamFailed(this, e));
  }
}

/** One link from a front. */
class BackLink implements LinkHost {
  readonly front: FrontCredential;
  readonly conn: LinkConnection;
  readonly #server: LinkServer;
  readonly streams = new Map<number, BackStream>();
  /** Answer bytes the front lets us have in flight per stream (from its hello). */
  peerWindow = 0;
  hello = (_f: Parameters<LinkFrameSink["hello"]>[0]): void => {
    this.conn.close("protocol_error", "a second hello");
  };
  draining = false;

  constructor(server: LinkServer, front: FrontCredential, conn: LinkConnection) {
    this.#server = server;
    this.front = front;
    this.conn = conn;
  }

  /**
   * Something threw while serving stream `s` (a bug): close that stream alone and report it,
   * instead of letting the throw end the link and every other stream on it. Never throws.
   */
  streamFailed(s: BackStream, e: unknown): void {
    reportUnexpected(`Front ${this.front.name}: stream ${s.id} closed (internal error)`, e);
    try {
      this.endStream(s, "connection_lost", "internal error on the back");
    } catch (e2) {
      reportUnexpected(`Front ${this.front.name}: closing stream ${s.id} failed`, e2);
    }
  }

  endStream(s: BackStream, reason: LinkCloseReason, detail: string): void {
    if (s.closed && !this.streams.has(s.id)) return;
    this.streams.delete(s.id);
    s.release();
    if (!this.conn.closed) {
      this.conn.writer.close(s.id, reason, detail.slice(0, 200));
      this.conn.flushSoon();
    }
    this.#server.streamEnded();
  }

  welcome(): void {
    this.conn.close("protocol_error", "the front sent a welcome");
  }
  ping(): void {}
  pong(): void {}
  goaway(): void {}

  open(id: number, f: Parameters<LinkFrameSink["open"]>[1]): void {
    if (id === 0 || this.streams.has(id)) {
      this.conn.close("protocol_error", `stream ${id} opened twice`);
      return;
    }
    const s = new BackStream(this, id);
    if (this.draining) {
      this.conn.writer.close(id, "shutdown", "the back is shutting down");
      this.conn.flushSoon();
      return;
    }
    this.streams.set(id, s);
    const target = {
      dcId: f.dcId,
      tag: f.tag,
      clientIp: f.clientIp,
      clientPort: f.clientPort,
      adTag: f.adTag ?? this.#server.defaultTag,
    };
    this.#server.telegram.open(s, target, s.signal).then((opened) => {
      if (s.closed || this.conn.closed) {
        opened.stream.release();
        return;
      }
      this.conn.writer.opened(id, {
        dcId: opened.dcId,
        via: opened.where.startsWith("middle") ? "middle" : "direct",
        where: opened.where.slice(0, 200),
      });
      this.conn.flushSoon();
      s.opened(opened.stream);
    }, (e: unknown) => {
      if (s.closed) return;
      const kind = (e as TelegramOpenError).kind;
      this.endStream(
        s,
        kind === "timeout" ? "dc_timeout" : "dc_unreachable",
        e instanceof Error ? e.message : String(e),
      );
    }).catch((e: unknown) => this.streamFailed(s, e));
  }

  opened(): void {
    this.conn.close("protocol_error", "the front sent opened");
  }

  data(id: number, payload: Uint8Array, quickAck: boolean): void {
    const s = this.streams.get(id);
    if (!s) return; // closed on our side; the front learns it from our close
    try {
      s.data(payload, quickAck);
    } catch (e) {
      this.streamFailed(s, e);
    }
  }

  answer(): void {
    this.conn.close("protocol_error", "the front sent an answer");
  }
  quickAck(): void {
    this.conn.close("protocol_error", "the front sent a quick ack");
  }

  ack(id: number, bytes: number): void {
    const s = this.streams.get(id);
    if (!s) return;
    try {
      s.credited(bytes);
    } catch (e) {
      this.streamFailed(s, e);
    }
  }

  close(id: number): void {
    const s = this.streams.get(id);
    if (!s) return; // closes may cross on the wire
    this.streams.delete(id);
    s.release();
    this.#server.streamEnded();
  }

  linkEnded(end: LinkEnd, detail: string): void {
    const n = this.streams.size;
    for (const s of this.streams.values()) s.release();
    this.streams.clear();
    this.#server.linkGone(this, end, detail, n);
  }
}

/** Options for {@linkcode LinkServer}. */
export interface LinkServerOptions {
  readonly config: Config;
  readonly telegram: LocalTelegram;
  readonly guard: LinkGuard;
  /** Listen with SO_REUSEPORT (workers, upgrades). @default false */
  readonly reusePort?: boolean;
  /** This back's instance id; workers of one process share it. @default 8 random bytes */
  readonly instance?: Uint8Array;
}

/** The back's link listeners and the links of its fronts. */
export class LinkServer {
  readonly #config: Config;
  readonly telegram: LocalTelegram;
  readonly #guard: LinkGuard;
  readonly defaultTag: Uint8Array | null;
  /** Random per process: a front tells a restarted back by it. */
  readonly instance: Uint8Array;
  readonly #reusePort: boolean;
  #fronts: readonly FrontCredential[];
  readonly #bound: { config: LinkListenerConfig; socket: Listener }[] = [];
  readonly #links = new Set<BackLink>();
  /** Connections still in the handshake or being fronted. */
  readonly #pending = new Set<Conn>();
  readonly #loops: Promise<void>[] = [];
  readonly #work = new Set<Promise<void>>();
  #accepting = true;
  readonly #refused = new Map<string, number>();
  readonly #ended = new Map<string, number>();
  #drained: (() => void) | null = null;

  constructor(options: LinkServerOptions) {
    this.#config = options.config;
    this.telegram = options.telegram;
    this.#guard = options.guard;
    this.defaultTag = options.config.defaultTag;
    this.#fronts = options.config.fronts;
    this.instance = options.instance ?? randomBytes(8);
    this.#reusePort = options.reusePort ?? false;
  }

  /** Bind every link listener (closing what it opened when one fails) and start accepting. */
  listen(): BoundLinkListener[] {
    try {
      for (const l of this.#config.linkListeners) {
        const socket = listenTcp(l.host, l.port, { reusePort: this.#reusePort });
        this.#bound.push({ config: l, socket });
      }
    } catch (e) {
      for (const b of this.#bound) closeQuietly(b.socket);
      const failed = this.#config.linkListeners[this.#bound.length]!;
      const why = e instanceof Error ? e.message : String(e);
      throw new Error(
        `Cannot listen on ${formatHostPort(failed.host, failed.port)} (${failed.name}): ${why}`,
      );
    }
    for (const b of this.#bound) this.#loops.push(this.#acceptLoop(b.config, b.socket));
    return this.#bound.map((b) => ({
      name: b.config.name,
      host: b.config.host,
      port: (b.socket.addr as Deno.NetAddr).port,
    }));
  }

  /** Fronts allowed from now on; links of fronts no longer listed are closed. Returns how many. */
  updateFronts(fronts: readonly FrontCredential[]): number {
    this.#fronts = fronts;
    let closed = 0;
    for (const link of [...this.#links]) {
      const still = fronts.some((f) =>
        f.name === link.front.name && bytesEqual(f.secret, link.front.secret)
      );
      if (!still) {
        log.info("Front {name}: revoked; closing its link from {remote}", {
          name: link.front.name,
          remote: formatHostPort(link.conn.remote.hostname, link.conn.remote.port),
        });
        link.conn.close("closed", "revoked");
        closed++;
      }
    }
    return closed;
  }

  stats(): BackStats {
    const links = new Map<string, number>();
    const streams = new Map<string, number>();
    const held = new Map<string, number>();
    let maxStreamHeldBytes = 0;
    for (const f of this.#fronts) {
      links.set(f.name, 0);
      streams.set(f.name, 0);
      held.set(f.name, 0);
    }
    for (const l of this.#links) {
      const name = l.front.name;
      links.set(name, (links.get(name) ?? 0) + 1);
      streams.set(name, (streams.get(name) ?? 0) + l.streams.size);
      let sum = held.get(name) ?? 0;
      for (const s of l.streams.values()) {
        const h = s.inFlight + s.queuedBytes;
        sum += h;
        if (h > maxStreamHeldBytes) maxStreamHeldBytes = h;
      }
      held.set(name, sum);
    }
    return {
      links,
      streams,
      held,
      maxStreamHeldBytes,
      refused: new Map(this.#refused),
      ended: new Map(this.#ended),
    };
  }

  /** Live links. */
  get linkCount(): number {
    return this.#links.size;
  }

  /**
   * Stop accepting, tell every front we are going away, let streams finish within `graceMs`,
   * then close every link.
   */
  async shutdown(graceMs: number): Promise<void> {
    this.#accepting = false;
    for (const b of this.#bound) closeQuietly(b.socket);
    await Promise.all(this.#loops);
    for (const c of this.#pending) closeQuietly(c);
    for (const l of this.#links) {
      l.draining = true;
      l.conn.writer.goaway(graceMs);
      l.conn.flushSoon();
    }
    if (this.#streamCount() > 0 && graceMs > 0) {
      const drained = new Promise<void>((r) => (this.#drained = r));
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([drained, new Promise((r) => (timer = setTimeout(r, graceMs)))]);
      clearTimeout(timer);
      this.#drained = null;
    }
    const finished: Promise<void>[] = [];
    for (const l of [...this.#links]) {
      l.conn.close("closed", "shutdown");
      finished.push(l.conn.finished);
    }
    await Promise.all([...finished, ...this.#work]);
  }

  /** A link ended (BackLink). */
  linkGone(link: BackLink, end: LinkEnd, detail: string, streams: number): void {
    if (!this.#links.delete(link)) return;
    this.#ended.set(end, (this.#ended.get(end) ?? 0) + 1);
    const fields = {
      name: link.front.name,
      end,
      detail: detail ? `: ${detail}` : "",
      streams,
    };
    if (end === "integrity" || end === "protocol_error") {
      log.warn("Front {name}: link closed ({end}{detail}); {streams} streams closed", fields);
    } else {
      log.info("Front {name}: link closed ({end}{detail}); {streams} streams closed", fields);
    }
    if (this.#drained && this.#streamCount() === 0) this.#drained();
  }

  /** A stream ended: a graceful shutdown may finish early. */
  streamEnded(): void {
    if (this.#drained && this.#streamCount() === 0) this.#drained();
  }

  #streamCount(): number {
    let n = 0;
    for (const l of this.#links) n += l.streams.size;
    return n;
  }

  async #acceptLoop(l: LinkListenerConfig, socket: Listener): Promise<void> {
    while (this.#accepting) {
      let conn: Conn;
      try {
        conn = await socket.accept();
      } catch (e) {
        if (!this.#accepting || e instanceof Deno.errors.BadResource) return;
        log.error("{listener}: accept failed: {error}", { listener: l.name, error: String(e) });
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      const job = this.#serve(l, conn).catch((e) => {
        log.error("{listener}: link connection failed: {error}", {
          listener: l.name,
          error: String(e),
        });
        closeQuietly(conn);
      });
      this.#work.add(job);
      job.finally(() => this.#work.delete(job));
    }
  }

  #refuse(reason: string): void {
    this.#refused.set(reason, (this.#refused.get(reason) ?? 0) + 1);
  }

  /** Handshake one connection: a front's link, or something to front. */
  async #serve(l: LinkListenerConfig, conn: Conn): Promise<void> {
    this.#pending.add(conn);
    const peer = formatHostPort(
      (conn.remoteAddr as Deno.NetAddr).hostname,
      (conn.remoteAddr as Deno.NetAddr).port,
    );
    const timer = setTimeout(() => closeQuietly(conn), this.#config.timeouts.handshakeMs);
    let buf = new Uint8Array(2048);
    let len = 0;
    const fill = async (n: number): Promise<boolean> => {
      while (len < n) {
        if (len === buf.length) {
          const bigger = new Uint8Array(buf.length * 2);
          bigger.set(buf);
          buf = bigger;
        }
        const got = await conn.read(buf.subarray(len));
        if (got === null) return false;
        len += got;
      }
      return true;
    };
    let front: { reason: string; sni: string | null } | null = null;
    let accepted: _Accepted | null = null;
    try {
      conn.setNoDelay(true);
      if (!await fill(1)) throw new Error("eof");
      if (buf[0] !== 0x16) front = { reason: "not_tls", sni: null };
      while (front === null && accepted === null) {
        const step = parseClientHello(buf.subarray(0, len));
        if (step.kind === "need") {
          if (step.atLeast > 65536 + 5) {
            front = { reason: "tls_malformed", sni: null };
            break;
          }
          if (!await fill(step.atLeast)) throw new Error("eof");
          continue;
        }
        if (step.kind === "reject") {
          front = { reason: "tls_malformed", sni: null };
          break;
        }
        const hello = step.hello;
        const sni = hello.sni?.toLowerCase() ?? null;
        if (sni === null || !l.tlsDomains.includes(sni)) {
          front = { reason: sni === null ? "no_sni" : "bad_sni", sni };
          break;
        }
        const now = Date.now() / 1000;
        const skew = this.#config.tls.maxClockSkewMs / 1000;
        let found: FrontCredential | null = null;
        for (const f of this.#fronts) {
          const check = verifyClientHello(hello, f.secret, now, skew);
          if (check.kind === "ok") {
            found = f;
            break;
          }
          if (check.kind === "bad_timestamp") {
            log.warn(
              "{listener}: front {name} from {peer} refused: its clock is off by {skew} s (fix its clock)",
              { listener: l.name, name: f.name, peer, skew: Math.round(now - check.timestamp) },
            );
            front = { reason: "stale_clock", sni };
            break;
          }
        }
        if (front) break;
        if (!found) {
          front = { reason: "bad_secret", sni };
          break;
        }
        if (await this.#guard.seenBefore(hello.random)) {
          front = { reason: "replay", sni };
          break;
        }
        const answered = answerLinkHello(hello, found.secret, this.#guard.answerShape(sni));
        if ("reject" in answered) {
          front = { reason: answered.reject, sni };
          break;
        }
        await writeAll(conn, answered.answer);
        accepted = { front: found, keys: answered.keys, rest: step.rest.slice() };
      }
    } catch {
      clearTimeout(timer);
      this.#pending.delete(conn);
      closeQuietly(conn);
      this.#refuse("eof");
      return;
    }
    if (front) {
      clearTimeout(timer);
      this.#refuse(front.reason);
      await this.#front(l, conn, peer, buf.subarray(0, len), front);
      this.#pending.delete(conn);
      return;
    }
    clearTimeout(timer);
    this.#pending.delete(conn);
    await this.#startLink(l, conn, peer, accepted!);
  }

  /** The hello checked out: wait for the front's hello frame, welcome it, serve its streams. */
  async #startLink(
    l: LinkListenerConfig,
    conn: Conn,
    peer: string,
    accepted: _Accepted,
  ): Promise<void> {
    const hello = Promise.withResolvers<Parameters<LinkFrameSink["hello"]>[0]>();
    hello.promise.catch(() => {});
    const waiting: LinkHost = {
      ..._refuseFrames(),
      hello: (f) => hello.resolve(f),
      linkEnded: (end, detail) => hello.reject(new Error(detail || end)),
    };
    const link = new LinkConnection(conn, accepted.keys, waiting, {
      keepaliveMs: this.#config.link.keepaliveMs,
      timeoutMs: this.#config.link.timeoutMs,
      early: accepted.rest,
      pings: false,
    });
    let timer: ReturnType<typeof setTimeout> | undefined;
    let f: Parameters<LinkFrameSink["hello"]>[0];
    try {
      f = await Promise.race([
        hello.promise,
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error("no hello frame in time")),
            this.#config.timeouts.handshakeMs,
          );
        }),
      ]);
    } catch (e) {
      link.close("protocol_error", e instanceof Error ? e.message : String(e));
      log.info("{listener}: front {name} from {peer}: link failed: {error}", {
        listener: l.name,
        name: accepted.front.name,
        peer,
        error: e instanceof Error ? e.message : String(e),
      });
      await link.finished;
      return;
    } finally {
      clearTimeout(timer);
    }
    if (f.version !== LINK_VERSION || !this.#accepting) {
      link.close("protocol_error", `link version ${f.version}`);
      await link.finished;
      return;
    }
    const back = new BackLink(this, accepted.front, link);
    back.peerWindow = f.window;
    link.host = back;
    this.#links.add(back);
    link.writer.welcome({
      version: LINK_VERSION,
      capabilities: 0,
      window: this.#config.link.windowBytes,
      instance: this.instance,
    });
    link.flushSoon();
    log.info("{listener}: front {name} linked from {peer} ({host})", {
      listener: l.name,
      name: accepted.front.name,
      peer,
      host: f.name,
    });
    await link.finished;
  }

  /** Hand a connection that is not a front to the fronting target, byte for byte. */
  async #front(
    l: LinkListenerConfig,
    conn: Conn,
    peer: string,
    buffered: Uint8Array,
    why: { reason: string; sni: string | null },
  ): Promise<void> {
    const opened = await openFronting({
      config: this.#config.fronting,
      guard: this.#guard,
      sni: why.sni,
      buffered,
    });
    if (opened.kind !== "fronted") {
      const fields = { listener: l.name, peer, reason: why.reason };
      if (opened.kind === "not_fronted") {
        log.info("{listener}: {peer} closed ({reason}; not fronted: {why})", {
          ...fields,
          why: opened.reason,
        });
      } else if (opened.reason === "fronting_loop") {
        log.error("{listener}: {peer} not fronted: the fronting target {detail}", {
          ...fields,
          detail: opened.detail,
        });
      } else {
        log.warn("{listener}: {peer} not fronted: {detail}", { ...fields, detail: opened.detail });
      }
      closeQuietly(conn);
      return;
    }
    const { site, where } = opened;
    log.info("{listener}: {peer} fronted to {where} ({reason})", {
      listener: l.name,
      peer,
      where,
      reason: why.reason,
    });
    await _relayUntouched(conn, site);
  }
}

/** Both directions untouched until either side closes. */
function _relayUntouched(a: Conn, b: Conn): Promise<void> {
  const done = Promise.withResolvers<void>();
  let running = 2;
  const host: PumpHost = {
    pumped() {},
    pumpEnded(_side, _end: PumpEnd) {
      closeQuietly(a);
      closeQuietly(b);
      if (--running === 0) done.resolve();
    },
  };
  startPump(a, b, { ciphers: [], host, side: "client" });
  startPump(b, a, { ciphers: [], host, side: "dc" });
  return done.promise;
}

/** A sink that takes nothing but a hello (the back before the front has introduced itself). */
function _refuseFrames(): Omit<LinkHost, "hello" | "linkEnded"> {
  const no = () => {};
  return {
    welcome: no,
    ping: no,
    pong: no,
    goaway: no,
    open: no,
    opened: no,
    data: no,
    answer: no,
    quickAck: no,
    ack: no,
    close: no,
  };
}
