/**
 * Split mode, the front's Telegram side: clients' packets go over links to backs. Each
 * configured back gets `links` long-lived connections, each redialled with backoff and jitter
 * when it drops; a client's stream goes to the least loaded healthy link of any back, and when
 * a link is lost every stream on it ends at once with `link_lost` (the apps reconnect within
 * seconds instead of hanging until an idle timer fires).
 *
 * Flow control is per stream: the front may have `window` bytes of client packets in flight to
 * the back (the back's window, from its welcome), and the back as many answer bytes toward the
 * front; delivered bytes are acknowledged once per client write.
 *
 * @module
 */
import type { BackConfig, Config } from "../config/types.ts";
import { closeQuietly, type Conn, dialTcp, formatHostPort, writeAll } from "../net.ts";
import { reportUnexpected } from "../ops/last_resort.ts";
import type { Packet } from "../protocol/framing.ts";
import { LINK_VERSION, type LinkCloseReason, type LinkFrameSink } from "../protocol/link.ts";
import { createLinkHello, finishLinkHello, type LinkKeys } from "../protocol/link_records.ts";
import type {
  OpenedStream,
  TelegramClient,
  TelegramCloseReason,
  TelegramSide,
  TelegramStream,
  TelegramTarget,
} from "../telegram/side.ts";
import { TelegramOpenError } from "../telegram/side.ts";
import { LinkConnection, type LinkEnd, type LinkHost } from "./connection.ts";

/** A TLS ChangeCipherSpec record: a TLS 1.3 client sends one after the ServerHello. */
const CHANGE_CIPHER_SPEC = Uint8Array.of(0x14, 0x03, 0x03, 0x00, 0x01, 0x01);

/** Redial delays after failures: 300 ms doubling to 30 s, each with up to 50% jitter. */
const REDIAL_MIN_MS = 300;
const REDIAL_MAX_MS = 30_000;

/** What the front's links report, for logs and counters. */
export interface FrontLinkEvents {
  up(back: string, link: number, instance: string, restarted: boolean): void;
  down(back: string, link: number, end: LinkEnd, detail: string, streams: number): void;
  dialFailed(back: string, link: number, error: string, retryInMs: number): void;
  goaway(back: string, link: number, graceMs: number): void;
}

/** Counters per back. */
export interface BackLinkStats {
  readonly address: string;
  readonly linksUp: number;
  readonly streams: number;
  readonly lastRttMs: number | null;
  readonly linksLost: number;
  /** Answer bytes received for clients and not yet taken by them, and the most for one stream. */
  readonly heldBytes: number;
  readonly maxStreamHeldBytes: number;
  /** Links ended, by how (up or not). */
  readonly ended: ReadonlyMap<LinkEnd, number>;
}

/** The back refused or failed the link handshake. */
class LinkDialError extends Error {
  override name = "LinkDialError";
}

/** Dial a back and run the fake-TLS link handshake; returns the socket, keys and early bytes. */
export async function dialLink(
  back: BackConfig,
  options: { timeoutMs: number; signal?: AbortSignal },
): Promise<{ conn: Conn; keys: LinkKeys; early: Uint8Array }> {
  const { host, port } = back.address;
  const conn = await dialTcp(host, port, options);
  const timer = setTimeout(() => closeQuietly(conn), options.timeoutMs);
  try {
    const state = createLinkHello({
      secret: back.secret,
      domain: back.tlsDomain,
      nowSec: Math.floor(Date.now() / 1000),
    });
    await writeAll(conn, state.record);
    let buf = new Uint8Array(8192);
    let len = 0;
    while (true) {
      const step = finishLinkHello(buf.subarray(0, len), state, back.secret);
      if (step.kind === "ok") {
        return { conn, keys: step.keys, early: buf.slice(step.length, len) };
      }
      if (step.kind === "reject") {
        throw new LinkDialError(
          step.reason === "bad_digest"
            ? "the answer is not signed with our secret (wrong secret, a web site, or a man in the middle)"
            : `the answer is not a link answer (${step.reason})`,
        );
      }
      if (step.atLeast > 1 << 20) throw new LinkDialError("the answer is too large");
      if (step.atLeast > buf.length) {
        const bigger = new Uint8Array(Math.max(step.atLeast, buf.length * 2));
        bigger.set(buf.subarray(0, len));
        buf = bigger;
      }
      const n = await conn.read(buf.subarray(len));
      if (n === null) throw new LinkDialError("closed during the handshake");
      len += n;
    }
  } catch (e) {
    closeQuietly(conn);
    if (e instanceof Deno.errors.BadResource || e instanceof Deno.errors.Interrupted) {
      throw new LinkDialError(`no answer within ${options.timeoutMs} ms`);
    }
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

/** One client's stream on a link. */
class FrontStream implements TelegramStream {
  readonly id: number;
  readonly #link: FrontLink;
  readonly client: TelegramClient;
  /** Client packet bytes sent and not yet acknowledged by the back. */
  inFlight = 0;
  /** Answer bytes handed to the client and not yet acknowledged by it (written to its socket). */
  held = 0;
  #credit: PromiseWithResolvers<void> | null = null;
  closed = false;
  /** Until the back answers the open. */
  opening: PromiseWithResolvers<OpenedStream> | null = Promise.withResolvers<OpenedStream>();

  constructor(link: FrontLink, id: number, client: TelegramClient) {
    this.#link = link;
    this.id = id;
    this.client = client;
    this.opening!.promise.catch(() => {});
  }

  send(packets: readonly Packet[]): Promise<void> {
    if (this.closed) return Promise.reject(new Error("Link stream is closed"));
    const conn = this.#link.conn;
    for (const p of packets) {
      conn.writer.data(this.id, p.payload, p.quickAck);
      this.inFlight += p.payload.length;
    }
    conn.flushSoon();
    if (this.inFlight < this.#link.peerWindow) {
      // A link with a long queue takes no more for now: the client's bytes wait in its socket.
      return conn.room() ?? Promise.resolve();
    }
    this.#credit ??= Promise.withResolvers<void>();
    return this.#credit.promise;
  }

  ack(bytes: number): void {
    if (this.closed || bytes <= 0) return;
    this.held = Math.max(0, this.held - bytes);
    const conn = this.#link.conn;
    conn.writer.ack(this.id, bytes);
    conn.flushSoon();
  }

  release(): void {
    if (this.closed) return;
    this.#link.closeStream(this, "client_closed");
  }

  /** The back acknowledged `bytes`: let a waiting send go on. */
  credited(bytes: number): void {
    this.inFlight = Math.max(0, this.inFlight - bytes);
    if (this.#credit && this.inFlight < this.#link.peerWindow) {
      const c = this.#credit;
      this.#credit = null;
      c.resolve();
    }
  }

  /** Mark closed and fail whatever waits (no callbacks to the client). */
  end(): void {
    this.closed = true;
    const c = this.#credit;
    this.#credit = null;
    c?.reject(new Error("Link stream is closed"));
  }
}

/** One link to a back. */
class FrontLink implements LinkHost {
  readonly back: BackState;
  readonly slot: number;
  readonly conn: LinkConnection;
  readonly streams = new Map<number, FrontStream>();
  /** Bytes the back lets us have in flight per stream (from its welcome). */
  peerWindow = 0;
  up = false;
  draining = false;
  #nextId = 1;
  readonly welcomed = Promise.withResolvers<Uint8Array>();
  readonly ended = Promise.withResolvers<void>();

  constructor(
    back: BackState,
    slot: number,
    dialed: { conn: Conn; keys: LinkKeys; early: Uint8Array },
    config: Config,
  ) {
    this.back = back;
    this.slot = slot;
    this.welcomed.promise.catch(() => {});
    this.conn = new LinkConnection(dialed.conn, dialed.keys, this, {
      keepaliveMs: config.link.keepaliveMs,
      timeoutMs: config.link.timeoutMs,
      prefix: CHANGE_CIPHER_SPEC,
      early: dialed.early,
      pings: true,
    });
    this.conn.writer.hello({
      version: LINK_VERSION,
      capabilities: 0,
      window: config.link.windowBytes,
      name: _frontName(),
    });
    this.conn.flushSoon();
  }

  /** A new stream for `client`; the OPEN frame is sent at once. */
  openStream(client: TelegramClient, target: TelegramTarget): FrontStream {
    let id = this.#nextId;
    while (this.streams.has(id) || id === 0) id = (id + 1) >>> 0;
    this.#nextId = (id + 1) >>> 0;
    const stream = new FrontStream(this, id, client);
    this.streams.set(id, stream);
    this.conn.writer.open(id, {
      dcId: target.dcId,
      tag: target.tag,
      clientIp: target.clientIp,
      clientPort: target.clientPort,
      adTag: target.adTag,
    });
    this.conn.flushSoon();
    return stream;
  }

  /** Close a stream from our side (tells the back). */
  closeStream(stream: FrontStream, reason: LinkCloseReason): void {
    if (stream.closed) return;
    stream.end();
    this.streams.delete(stream.id);
    stream.opening?.reject(new TelegramOpenError("unreachable", "closed while opening"));
    stream.opening = null;
    if (!this.conn.closed) {
      this.conn.writer.close(stream.id, reason, "");
      this.conn.flushSoon();
    }
    this.back.owner.streamsChanged();
  }

  // LinkHost / LinkFrameSink

  hello(): void {
    this.conn.close("protocol_error", "the back sent a hello");
  }

  welcome(f: Parameters<LinkFrameSink["welcome"]>[0]): void {
    if (f.version !== LINK_VERSION) {
      this.conn.close("protocol_error", `the back speaks link version ${f.version}`);
      return;
    }
    this.peerWindow = f.window;
    this.welcomed.resolve(f.instance);
  }

  ping(): void {}
  pong(): void {}

  rtt(ms: number): void {
    this.back.lastRttMs = ms;
  }

  goaway(graceMs: number): void {
    if (this.draining) return;
    this.draining = true;
    this.back.owner.events.goaway(this.back.label, this.slot, graceMs);
    // The slot dials a replacement while this link's streams finish.
    this.ended.resolve();
  }

  open(): void {
    this.conn.close("protocol_error", "the back opened a stream");
  }

  data(): void {
    this.conn.close("protocol_error", "the back sent client data");
  }

  opened(id: number, f: Parameters<LinkFrameSink["opened"]>[1]): void {
    const s = this.streams.get(id);
    if (!s?.opening) return;
    const opening = s.opening;
    s.opening = null;
    opening.resolve({
      stream: s,
      dcId: f.dcId,
      where: `${f.where} via back ${this.back.label}`,
    });
  }

  answer(id: number, payload: Uint8Array): void {
    const s = this.streams.get(id);
    if (!s || s.opening) return; // a stream that just closed
    s.held += payload.length;
    try {
      s.client.onPacket(payload);
    } catch (e) {
      this.#clientFailed(s, e);
    }
  }

  quickAck(id: number, confirm: Uint8Array): void {
    const s = this.streams.get(id);
    if (!s || s.opening) return;
    try {
      s.client.onQuickAck(confirm);
    } catch (e) {
      this.#clientFailed(s, e);
    }
  }

  ack(id: number, bytes: number): void {
    this.streams.get(id)?.credited(bytes);
  }

  close(id: number, reason: LinkCloseReason, detail: string): void {
    const s = this.streams.get(id);
    if (!s) return; // released already: closes may cross on the wire
    s.end();
    this.streams.delete(id);
    this.back.owner.streamsChanged();
    if (s.opening) {
      const kind = reason === "dc_timeout" ? "timeout" : "unreachable";
      s.opening.reject(new TelegramOpenError(kind, detail || reason));
      s.opening = null;
      return;
    }
    try {
      s.client.onClose(_closeReason(reason));
    } catch (e) {
      reportUnexpected(
        `Back ${this.back.label}: stream ${id}: the client's close handler failed`,
        e,
      );
    }
  }

  linkEnded(end: LinkEnd, detail: string): void {
    const streams = [...this.streams.values()];
    this.streams.clear();
    this.welcomed.reject(new Error(detail || end));
    for (const s of streams) {
      s.end();
      if (s.opening) {
        s.opening.reject(new TelegramOpenError("unreachable", "the link to the back was lost"));
        s.opening = null;
        continue;
      }
      try {
        s.client.onClose("link_lost");
      } catch (e) {
        // One client's handler must not keep the others from hearing it.
        reportUnexpected(
          `Back ${this.back.label}: stream ${s.id}: the client's close handler failed`,
          e,
        );
      }
    }
    this.back.ended.set(end, (this.back.ended.get(end) ?? 0) + 1);
    if (this.up) {
      this.back.owner.events.down(this.back.label, this.slot, end, detail, streams.length);
      this.back.linksLost++;
    }
    this.up = false;
    this.ended.resolve();
    this.back.links.delete(this);
    this.back.owner.streamsChanged();
  }

  #clientFailed(s: FrontStream, e: unknown): void {
    reportUnexpected(`Back ${this.back.label}: stream ${s.id}: the client's handler failed`, e);
    this.closeStream(s, "protocol_error");
    try {
      s.client.onClose("internal_error");
    } catch {
      // Already reported.
    }
  }
}

/** One configured back and its links. */
class BackState {
  readonly config: BackConfig;
  readonly owner: LinkTelegram;
  readonly label: string;
  readonly links = new Set<FrontLink>();
  instance: string | null = null;
  lastRttMs: number | null = null;
  linksLost = 0;
  readonly ended = new Map<LinkEnd, number>();

  constructor(config: BackConfig, owner: LinkTelegram) {
    this.config = config;
    this.owner = owner;
    this.label = formatHostPort(config.address.host, config.address.port);
  }
}

/** The front's Telegram side: streams on links to backs. */
export class LinkTelegram implements TelegramSide {
  readonly #config: Config;
  readonly events: FrontLinkEvents;
  readonly #backs: BackState[];
  readonly #abort = new AbortController();
  readonly #slots: Promise<void>[] = [];
  #linkWaiters = new Set<() => void>();
  #closed = false;
  readonly #onLog: (message: string) => void;

  constructor(config: Config, events: FrontLinkEvents, onLog: (message: string) => void) {
    this.#config = config;
    this.events = events;
    this.#onLog = onLog;
    this.#backs = config.backs.map((b) => new BackState(b, this));
  }

  /** Start dialling every link of every back. */
  start(): void {
    for (const back of this.#backs) {
      for (let i = 0; i < back.config.links; i++) {
        // A slot that throws stops redialling, but must not take the process down.
        this.#slots.push(
          this.#runSlot(back, i + 1).catch((e: unknown) =>
            reportUnexpected(`Back ${back.label}: link ${i + 1} stopped redialling`, e)
          ),
        );
      }
    }
  }

  /** Everything goes to the back as packets. */
  carries(): "packets" {
    return "packets";
  }

  async open(
    client: TelegramClient,
    target: TelegramTarget,
    signal?: AbortSignal,
  ): Promise<OpenedStream> {
    let link = this.#pick();
    if (!link) {
      await this.#waitForLink(signal);
      link = this.#pick();
      if (!link) {
        throw new TelegramOpenError(
          "no_link",
          `no link to a back is up (waited ${this.#config.link.waitMs} ms)`,
        );
      }
    }
    const stream = link.openStream(client, target);
    this.streamsChanged();
    const timeoutMs = this.#config.timeouts.dcConnectMs + this.#config.link.waitMs;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const onAbort = () => link.closeStream(stream, "client_closed");
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      return await Promise.race([
        stream.opening!.promise,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            link.closeStream(stream, "client_closed");
            reject(new TelegramOpenError("timeout", `the back did not answer in ${timeoutMs} ms`));
          }, timeoutMs);
        }),
      ]);
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    }
  }

  /** Links up now, over all backs. */
  get linksUp(): number {
    let n = 0;
    for (const b of this.#backs) for (const l of b.links) if (l.up && !l.draining) n++;
    return n;
  }

  /** Counters per back, for metrics. */
  stats(): BackLinkStats[] {
    return this.#backs.map((b) => {
      let up = 0;
      let streams = 0;
      let held = 0;
      let maxHeld = 0;
      for (const l of b.links) {
        if (l.up && !l.draining) up++;
        streams += l.streams.size;
        for (const s of l.streams.values()) {
          held += s.held;
          if (s.held > maxHeld) maxHeld = s.held;
        }
      }
      return {
        address: b.label,
        linksUp: up,
        streams,
        lastRttMs: b.lastRttMs,
        linksLost: b.linksLost,
        heldBytes: held,
        maxStreamHeldBytes: maxHeld,
        ended: new Map(b.ended),
      };
    });
  }

  /** Close every link (their streams end with link_lost) and stop redialling. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#abort.abort();
    for (const w of [...this.#linkWaiters]) w();
    const conns: Promise<void>[] = [];
    for (const b of this.#backs) {
      for (const l of b.links) {
        l.conn.close("closed", "shutdown");
        conns.push(l.conn.finished);
      }
    }
    await Promise.all([...this.#slots, ...conns]);
  }

  /** A stream came or went (the pick rule reads stream counts). */
  streamsChanged(): void {}

  log(message: string): void {
    this.#onLog(message);
  }

  /** The least loaded usable link of any back; null when none is up. */
  #pick(): FrontLink | null {
    let best: FrontLink | null = null;
    for (const b of this.#backs) {
      for (const l of b.links) {
        if (!l.up || l.draining || l.conn.closed) continue;
        if (!best || l.streams.size < best.streams.size) best = l;
      }
    }
    return best;
  }

  #waitForLink(signal: AbortSignal | undefined): Promise<void> {
    if (this.#closed) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#linkWaiters.delete(done);
        signal?.removeEventListener("abort", done);
        resolve();
      };
      const timer = setTimeout(done, this.#config.link.waitMs);
      this.#linkWaiters.add(done);
      signal?.addEventListener("abort", done, { once: true });
    });
  }

  /** Keep one link of `back` up: dial, serve until it ends, redial with backoff and jitter. */
  async #runSlot(back: BackState, slot: number): Promise<void> {
    let failures = 0;
    const signal = this.#abort.signal;
    while (!this.#closed) {
      let link: FrontLink | null = null;
      try {
        const dialed = await dialLink(back.config, {
          timeoutMs: this.#config.timeouts.handshakeMs,
          signal,
        });
        if (this.#closed) {
          closeQuietly(dialed.conn);
          return;
        }
        link = new FrontLink(back, slot, dialed, this.#config);
        back.links.add(link);
        const instance = await _within(
          link.welcomed.promise,
          this.#config.timeouts.handshakeMs,
          "the back did not welcome us",
        );
        if (this.#closed) {
          link.conn.close("closed", "shutdown");
          return;
        }
        const hex = Array.from(instance, (b) => b.toString(16).padStart(2, "0")).join("");
        const restarted = back.instance !== null && back.instance !== hex;
        back.instance = hex;
        link.up = true;
        failures = 0;
        this.events.up(back.label, slot, hex, restarted);
        for (const w of [...this.#linkWaiters]) w();
        await link.ended.promise;
      } catch (e) {
        if (this.#closed) return;
        link?.conn.close("protocol_error", e instanceof Error ? e.message : String(e));
        failures++;
        const base = Math.min(REDIAL_MAX_MS, REDIAL_MIN_MS * 2 ** Math.min(10, failures - 1));
        const delay = Math.round(base * (0.5 + Math.random() * 0.5));
        this.events.dialFailed(back.label, slot, e instanceof Error ? e.message : String(e), delay);
        await _sleep(delay, signal);
        continue;
      }
      // A link that was up ended (or is draining): redial soon, with a little jitter.
      if (!this.#closed) await _sleep(50 + Math.random() * 200, signal);
    }
  }
}

function _closeReason(reason: LinkCloseReason): TelegramCloseReason {
  switch (reason) {
    case "backpressure":
      return "backpressure";
    case "connection_lost":
      return "connection_lost";
    default:
      return "close_ext";
  }
}

function _frontName(): string {
  try {
    return Deno.hostname().slice(0, 64) || "front";
  } catch {
    return "front";
  }
}

function _within<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new LinkDialError(message)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

function _sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}
