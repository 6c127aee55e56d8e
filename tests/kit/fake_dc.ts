/**
 * A fake Telegram DC on 127.0.0.1, reached directly by the proxy (obfuscated2 with no secret).
 * It answers `req_pq_multi`/`req_pq` with a proper `resPQ`, records `req_DH_params` and echoes
 * everything else; other modes echo raw bytes, stay silent or close at once, flood the client
 * with answers, answer with a transport error or send a frame that breaks the framing.
 *
 * Standalone: `deno run -A tests/kit/fake_dc.ts --port N --mode echo` prints
 * `listening <port>` and runs until killed.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { randomBytes, sha256, type StreamCipher } from "../../lib/crypto.ts";
import { openClientInit, type TransportTag } from "../../lib/protocol/obfuscated2.ts";
import { decodeFrame, encodeFrame, quickAckToken } from "../../lib/protocol/framing.ts";
import { isReqDhParams, parseReqPq, parseUnencrypted, resPq } from "./tl.ts";
import { ChangeWaiters, closeQuietly, isClosedError, writeAll } from "./_io.ts";

/**
 * What the fake DC does with each connection:
 * - "mtproto": answer req_pq, record req_DH_params, echo every other frame;
 * - "echo": echo the plaintext bytes as they come (no unframing);
 * - "silent": read and never answer; "close": close right after accept;
 * - "flood": send `floodBytes` of answers in frames of `floodFrameBytes` at once (frame k filled
 *   with the byte `k & 0xff`), reading and ignoring what the client sends;
 * - "transport_error": answer the first frame with Telegram's transport error (a 4-byte frame
 *   holding int32 −404) and close;
 * - "bad_frame": send a header no transport accepts (`7f ff ff 7f`: a length far over 1 MiB in
 *   each of them), then read and ignore;
 * - "stall": read the init, then never read again (the client's writes back up) until the
 *   fake DC is closed.
 */
export type FakeDcMode =
  | "mtproto"
  | "echo"
  | "silent"
  | "close"
  | "flood"
  | "transport_error"
  | "bad_frame"
  | "stall";

/** Options for {@linkcode startFakeDc}. */
export interface FakeDcOptions {
  /** @default "mtproto" */
  mode?: FakeDcMode;
  /** Port to listen on; 0 picks a free one. @default 0 */
  port?: number;
  /** @default "127.0.0.1" */
  host?: string;
  /**
   * mtproto mode: answer a frame that asks for a quick ack with a quick-ack token (confirm
   * {@linkcode fakeQuickAckConfirm} of its payload) before anything else. @default false
   */
  quickAcks?: boolean;
  /** flood mode: answer payload bytes per connection (rounded down to 4). @default 1048576 */
  floodBytes?: number;
  /** flood mode: payload bytes per answer (a multiple of 4; the last one may be shorter). @default 16384 */
  floodFrameBytes?: number;
}

/** Telegram's transport error "not found" (int32 −404) as the packet a DC sends. */
export const TRANSPORT_ERROR_404: Uint8Array = Uint8Array.of(0x6c, 0xfe, 0xff, 0xff);

/**
 * The confirm the fake DC returns for a quick-ack request: the first 4 bytes of SHA-256 of the
 * payload with bit 31 (of the u32 LE) set, in the intermediate form (see `quickAckToken`).
 */
export function fakeQuickAckConfirm(payload: Uint8Array): Uint8Array {
  const confirm = sha256(payload).slice(0, 4);
  confirm[3]! |= 0x80;
  return confirm;
}

/**
 * Something the fake DC saw. `conn` numbers connections from 1 in accept order.
 * A `packet` event is recorded for every frame in mtproto mode (req_pq ones included).
 */
export type FakeDcEvent =
  | { type: "init"; conn: number; tag: TransportTag; dcId: number }
  | { type: "req_pq"; conn: number; nonce: Uint8Array; multi: boolean }
  | { type: "req_dh_params"; conn: number; nonceOk: boolean; serverNonceOk: boolean }
  | { type: "packet"; conn: number; size: number; quickAck: boolean }
  | { type: "malformed"; conn: number; reason: string }
  | { type: "quick_ack_sent"; conn: number; confirm: Uint8Array }
  | { type: "flooded"; conn: number; bytes: number }
  | { type: "closed"; conn: number };

/** A running fake DC. */
export interface FakeDc {
  readonly host: string;
  readonly port: number;
  readonly mode: FakeDcMode;
  /** Connections open now. */
  readonly connections: number;
  /** Connections accepted since start. */
  readonly accepted: number;
  /** Answer payload bytes written so far in flood mode (all connections). */
  readonly floodedBytes: number;
  /** Everything recorded so far, oldest first. */
  readonly events: readonly FakeDcEvent[];
  /**
   * Resolve with the first recorded event (past or future) matching `predicate`; reject after
   * `timeoutMs`.
   */
  waitFor<T extends FakeDcEvent>(
    predicate: (e: FakeDcEvent) => e is T,
    timeoutMs?: number,
  ): Promise<T>;
  waitFor(predicate: (e: FakeDcEvent) => boolean, timeoutMs?: number): Promise<FakeDcEvent>;
  /** Resolve once `condition()` holds, re-checked on every event and connection change. */
  waitUntil(condition: () => boolean, timeoutMs?: number): Promise<void>;
  /** Close the listener and every live connection, and wait for all handlers to finish. */
  close(): Promise<void>;
}

const BUF_SIZE = 65536;
const DEFAULT_WAIT_MS = 5000;

function _equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Read exactly `n` bytes, or null on EOF first. */
async function _readExactly(conn: Deno.Conn, n: number): Promise<Uint8Array | null> {
  const out = new Uint8Array(n);
  let got = 0;
  while (got < n) {
    const r = await conn.read(out.subarray(got));
    if (r === null) return null;
    got += r;
  }
  return out;
}

class _FakeDc implements FakeDc {
  readonly host: string;
  readonly port: number;
  readonly mode: FakeDcMode;
  readonly events: FakeDcEvent[] = [];
  accepted = 0;
  floodedBytes = 0;
  readonly #quickAcks: boolean;
  readonly #floodBytes: number;
  readonly #floodFrameBytes: number;
  #listener: Deno.TcpListener;
  #conns = new Set<Deno.TcpConn>();
  #handlers = new Set<Promise<void>>();
  #acceptLoop: Promise<void>;
  readonly #waiters = new ChangeWaiters("fake DC");
  #closing: Promise<void> | null = null;
  /** Resolves when close() starts (stall mode waits for it instead of reading). */
  readonly #stopped: Promise<void>;
  #stop: () => void = () => {};

  constructor(listener: Deno.TcpListener, mode: FakeDcMode, options: FakeDcOptions = {}) {
    this.#listener = listener;
    this.mode = mode;
    this.#stopped = new Promise((r) => (this.#stop = r));
    this.#quickAcks = options.quickAcks ?? false;
    this.#floodBytes = options.floodBytes ?? 1024 * 1024;
    this.#floodFrameBytes = options.floodFrameBytes ?? 16 * 1024;
    if (this.#floodFrameBytes <= 0 || this.#floodFrameBytes % 4 !== 0) {
      throw new RangeError(
        `Flood frame size must be a positive multiple of 4: got ${this.#floodFrameBytes}`,
      );
    }
    const addr = listener.addr as Deno.NetAddr;
    this.host = addr.hostname;
    this.port = addr.port;
    this.#acceptLoop = this.#accept();
  }

  get connections(): number {
    return this.#conns.size;
  }

  waitFor<T extends FakeDcEvent>(
    predicate: (e: FakeDcEvent) => e is T,
    timeoutMs?: number,
  ): Promise<T>;
  waitFor(predicate: (e: FakeDcEvent) => boolean, timeoutMs?: number): Promise<FakeDcEvent>;
  async waitFor(
    predicate: (e: FakeDcEvent) => boolean,
    timeoutMs = DEFAULT_WAIT_MS,
  ): Promise<FakeDcEvent> {
    let found: FakeDcEvent | undefined;
    await this.#waiters.wait(() => (found = this.events.find(predicate)) !== undefined, timeoutMs);
    return found!;
  }

  waitUntil(condition: () => boolean, timeoutMs = DEFAULT_WAIT_MS): Promise<void> {
    return this.#waiters.wait(condition, timeoutMs);
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#stop();
      closeQuietly(this.#listener);
      await this.#acceptLoop;
      for (const c of this.#conns) closeQuietly(c);
      await Promise.all([...this.#handlers]);
    })();
    return this.#closing;
  }

  #record(e: FakeDcEvent): void {
    this.events.push(e);
    this.#waiters.changed();
  }

  async #accept(): Promise<void> {
    while (true) {
      let conn: Deno.TcpConn;
      try {
        conn = await this.#listener.accept();
      } catch {
        return; // Listener closed.
      }
      if (this.#closing) {
        closeQuietly(conn);
        continue;
      }
      const id = ++this.accepted;
      this.#conns.add(conn);
      this.#waiters.changed();
      const handler = this.#serve(conn, id).finally(() => {
        closeQuietly(conn);
        this.#conns.delete(conn);
        this.#handlers.delete(handler);
        this.#record({ type: "closed", conn: id });
      });
      this.#handlers.add(handler);
    }
  }

  async #serve(conn: Deno.TcpConn, id: number): Promise<void> {
    if (this.mode === "close") return;
    conn.setNoDelay(true);
    let ciphers: StreamCipher[] = [];
    try {
      const init = await _readExactly(conn, 64);
      if (init === null) return;
      const stream = openClientInit(init, null);
      if (stream === null) {
        if (this.mode === "silent") return await this.#drain(conn);
        this.#record({ type: "malformed", conn: id, reason: "unknown transport tag in init" });
        return;
      }
      ciphers = [stream.encryptor, stream.decryptor];
      this.#record({ type: "init", conn: id, tag: stream.tag, dcId: stream.dcId });
      if (this.mode === "silent") return await this.#drain(conn);
      if (this.mode === "echo") return await this.#echo(conn, stream.decryptor, stream.encryptor);
      if (this.mode === "flood") {
        return await this.#flood(conn, id, stream.tag, stream.encryptor);
      }
      if (this.mode === "transport_error") {
        return await this.#transportError(conn, id, stream.tag, stream.decryptor, stream.encryptor);
      }
      if (this.mode === "stall") return await this.#stopped;
      if (this.mode === "bad_frame") {
        const header = Uint8Array.of(0x7f, 0xff, 0xff, 0x7f);
        stream.encryptor.update(header);
        await writeAll(conn, header);
        return await this.#drain(conn);
      }
      await this.#mtproto(conn, id, stream.tag, stream.decryptor, stream.encryptor);
    } catch (e) {
      if (!isClosedError(e)) {
        this.#record({ type: "malformed", conn: id, reason: String(e) });
      }
    } finally {
      for (const c of ciphers) c.close();
    }
  }

  async #drain(conn: Deno.Conn): Promise<void> {
    const buf = new Uint8Array(BUF_SIZE);
    while ((await conn.read(buf)) !== null) {
      // Never answer.
    }
  }

  async #echo(conn: Deno.Conn, dec: StreamCipher, enc: StreamCipher): Promise<void> {
    const buf = new Uint8Array(BUF_SIZE);
    while (true) {
      const n = await conn.read(buf);
      if (n === null) return;
      const chunk = buf.subarray(0, n);
      dec.update(chunk);
      enc.update(chunk);
      await writeAll(conn, chunk);
    }
  }

  /** Write one frame of `tag` (padded: 0..3 random padding bytes, as proxies and DCs do). */
  async #sendFrame(conn: Deno.Conn, tag: TransportTag, enc: StreamCipher, payload: Uint8Array) {
    const pad = tag === "padded" ? randomBytes(Math.floor(Math.random() * 4)) : undefined;
    const frame = encodeFrame(tag, payload, pad);
    enc.update(frame);
    await writeAll(conn, frame);
  }

  async #flood(conn: Deno.Conn, id: number, tag: TransportTag, enc: StreamCipher): Promise<void> {
    // Read (and ignore) what the client sends meanwhile, so that only this side's writes block.
    const reading = this.#drain(conn).catch(() => {});
    try {
      let sent = 0;
      for (let k = 0;; k++) {
        const size = Math.min(this.#floodFrameBytes, this.#floodBytes - sent) & ~3;
        if (size <= 0) break;
        await this.#sendFrame(conn, tag, enc, new Uint8Array(size).fill(k & 0xff));
        sent += size;
        this.floodedBytes += size;
      }
      this.#record({ type: "flooded", conn: id, bytes: sent });
    } finally {
      await reading;
    }
  }

  async #transportError(
    conn: Deno.Conn,
    id: number,
    tag: TransportTag,
    dec: StreamCipher,
    enc: StreamCipher,
  ): Promise<void> {
    const readBuf = new Uint8Array(BUF_SIZE);
    let pending = new Uint8Array(0);
    while (true) {
      const n = await conn.read(readBuf);
      if (n === null) return;
      const chunk = readBuf.subarray(0, n);
      dec.update(chunk);
      const joined = new Uint8Array(pending.length + n);
      joined.set(pending);
      joined.set(chunk, pending.length);
      const step = decodeFrame(tag, joined);
      if (step.kind === "reject") {
        this.#record({ type: "malformed", conn: id, reason: step.reason });
        return;
      }
      if (step.kind === "frame") {
        const { payload, quickAck } = step.frame;
        this.#record({ type: "packet", conn: id, size: payload.length, quickAck });
        await this.#sendFrame(conn, tag, enc, TRANSPORT_ERROR_404);
        return;
      }
      pending = joined;
    }
  }

  async #mtproto(
    conn: Deno.Conn,
    id: number,
    tag: TransportTag,
    dec: StreamCipher,
    enc: StreamCipher,
  ): Promise<void> {
    const serverNonce = randomBytes(16);
    const nonces: Uint8Array[] = [];
    const send = async (payload: Uint8Array) => {
      const pad = tag === "padded" ? randomBytes(Math.floor(Math.random() * 4)) : undefined;
      const frame = encodeFrame(tag, payload, pad);
      enc.update(frame);
      await writeAll(conn, frame);
    };
    const readBuf = new Uint8Array(BUF_SIZE);
    let pending = new Uint8Array(0);
    while (true) {
      const n = await conn.read(readBuf);
      if (n === null) return;
      const chunk = readBuf.subarray(0, n);
      dec.update(chunk);
      const joined = new Uint8Array(pending.length + n);
      joined.set(pending);
      joined.set(chunk, pending.length);
      let rest: Uint8Array = joined;
      while (true) {
        const step = decodeFrame(tag, rest);
        if (step.kind === "need") break;
        if (step.kind === "reject") {
          this.#record({ type: "malformed", conn: id, reason: step.reason });
          return;
        }
        rest = step.rest;
        const { payload, quickAck } = step.frame;
        this.#record({ type: "packet", conn: id, size: payload.length, quickAck });
        if (quickAck && this.#quickAcks) {
          const confirm = fakeQuickAckConfirm(payload);
          const token = quickAckToken(tag, confirm);
          enc.update(token);
          await writeAll(conn, token);
          this.#record({ type: "quick_ack_sent", conn: id, confirm });
        }
        const msg = parseUnencrypted(payload);
        const pq = msg && parseReqPq(msg.body);
        if (pq) {
          nonces.push(pq.nonce);
          this.#record({ type: "req_pq", conn: id, nonce: pq.nonce, multi: pq.multi });
          await send(resPq(pq.nonce, serverNonce));
          continue;
        }
        const dh = msg && isReqDhParams(msg.body);
        if (dh) {
          this.#record({
            type: "req_dh_params",
            conn: id,
            nonceOk: nonces.some((x) => _equal(x, dh.nonce)),
            serverNonceOk: _equal(dh.serverNonce, serverNonce),
          });
          return;
        }
        await send(payload);
      }
      pending = rest.slice();
    }
  }
}

/**
 * Start a fake DC listening on 127.0.0.1 (port 0 picks a free port).
 *
 * @example Usage
 * ```ts ignore
 * const dc = await startFakeDc({ mode: "mtproto" });
 * // ... point the proxy at dc.port, run a client ...
 * await dc.waitFor((e) => e.type === "req_pq");
 * await dc.close();
 * ```
 */
export function startFakeDc(options: FakeDcOptions = {}): Promise<FakeDc> {
  try {
    const listener = Deno.listen({
      hostname: options.host ?? "127.0.0.1",
      port: options.port ?? 0,
      transport: "tcp",
    });
    try {
      return Promise.resolve(new _FakeDc(listener, options.mode ?? "mtproto", options));
    } catch (e) {
      listener.close();
      throw e;
    }
  } catch (e) {
    return Promise.reject(e);
  }
}

const MODES: readonly FakeDcMode[] = [
  "mtproto",
  "echo",
  "silent",
  "close",
  "flood",
  "transport_error",
  "bad_frame",
  "stall",
];

async function _main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      port: { type: "string", default: "0" },
      host: { type: "string", default: "127.0.0.1" },
      mode: { type: "string", default: "mtproto" },
    },
  });
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new RangeError(`Invalid --port: "${values.port}"`);
  }
  const mode = values.mode as FakeDcMode;
  if (!MODES.includes(mode)) throw new RangeError(`Invalid --mode: "${values.mode}"`);
  const dc = await startFakeDc({ mode, port, host: values.host });
  console.log(`listening ${dc.port}`);
  const stop = () => {
    dc.close().then(() => Deno.exit(0));
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
}

if (import.meta.main) {
  try {
    await _main(Deno.args);
  } catch (e) {
    console.error(`fake_dc: ${e instanceof Error ? e.message : String(e)}`);
    Deno.exit(2);
  }
}
