/**
 * A scriptable MTProto proxy client over real TCP for end-to-end tests: plain (`ef`/`ee`),
 * `dd` and fake-TLS (`ee` secret) kinds, behaving on the wire like TDLib. Also a bare TCP
 * wrapper for garbage and HTTP probes.
 *
 * Layers, outermost first: TLS records (tls only) | obfuscated2 AES-CTR | transport frames.
 * `send`/`receive` work with frame payloads, `sendRaw`/`readRaw` with the plaintext stream
 * inside obfuscated2, `writeWire` with bytes on the socket.
 *
 * @module
 */
import { concatBytes } from "../../lib/protocol/bytes.ts";
import { randomBytes, type StreamCipher } from "../../lib/crypto.ts";
import {
  createInit,
  isValidInitRandom,
  type TransportTag,
} from "../../lib/protocol/obfuscated2.ts";
import { decodeFrame, encodeFrame } from "../../lib/protocol/framing.ts";
import {
  encodeAppData,
  parseServerHello,
  signClientHello,
  TlsRecordReader,
} from "../../lib/protocol/fake_tls.ts";
import { buildClientHello, type ClientHelloOptions } from "./client_hello.ts";
import { parseResPq, reqPq, reqPqMulti, type ResPq } from "./tl.ts";
import { ByteQueue, closeQuietly, delay, dial, pumpInto, writeAll } from "./_io.ts";

/** Which kind of secret the client was given: plain 16 bytes, `dd` or `ee` (fake-TLS). */
export type SecretKind = "plain" | "dd" | "tls";

/** Options for {@linkcode connectTestClient}. */
export interface TestClientOptions {
  /** @default "127.0.0.1" */
  host?: string;
  port: number;
  /** The 16-byte proxy secret; null only when dialing a fake DC directly (not for tls). */
  secret: Uint8Array | null;
  kind: SecretKind;
  /** Inner transport. dd and tls allow only "padded". @default "intermediate" for plain */
  transport?: TransportTag;
  /** DC id written into the init (negative = media). */
  dcId: number;
  /** SNI of the fake-TLS hello. @default "example.com" */
  sni?: string;
  /** Unix time the hello is signed with. @default now */
  clockSec?: number;
  /** Shape of the generated hello (tls). @default grease, mlkem and shuffle all on */
  hello?: Omit<ClientHelloOptions, "sni">;
  /** Unsigned hello record to sign instead of a generated one (tls). */
  helloRecord?: Uint8Array;
  /** Deadline for connecting and for the fake-TLS answer. @default 5000 */
  connectTimeoutMs?: number;
  /** Write handshake bytes (hello, init and the data sent with it) in chunks of this size. */
  chunkSize?: number;
  /** Pause between handshake chunks. @default 0 */
  chunkDelayMs?: number;
  /**
   * Hold the init back and send it with the first data, as TDLib does inside fake-TLS.
   * @default true for tls, false otherwise
   */
  deferInit?: boolean;
  /** Largest random padding `send` adds in the padded transport (TDLib: 15). @default 15 */
  maxPadding?: number;
  /** Largest ApplicationData payload the client sends (TDLib: 2878). @default 2878 */
  tlsRecordSize?: number;
  /** Bytes written before the handshake, as a balancer's PROXY protocol header would be. */
  preface?: Uint8Array;
}

/** Options for {@linkcode TestClient.send}. */
export interface SendOptions {
  /** Set the quick-ack bit on the frame. @default false */
  quickAck?: boolean;
  /** Exact padding bytes (padded transport only). @default random 0..maxPadding */
  padding?: number;
}

/** A connected test client (handshake done). */
export interface TestClient {
  readonly kind: SecretKind;
  readonly transport: TransportTag;
  readonly dcId: number;
  /** The proxy's fake-TLS answer (tls), else null. */
  readonly serverHello: Uint8Array | null;
  /** Fake-TLS: records received after the handshake (how the proxy grouped its writes). */
  readonly recordsReceived: number;
  /** Send the obfuscated2 init now if it is still held back (see `deferInit`). */
  flushInit(): Promise<void>;
  /** Send one frame. */
  send(payload: Uint8Array, options?: SendOptions): Promise<void>;
  /** The next frame payload; quick-ack tokens are set aside for `receiveQuickAck`. */
  receive(timeoutMs?: number): Promise<Uint8Array>;
  /** The next quick-ack token, as the 4 bytes on the wire. */
  receiveQuickAck(timeoutMs?: number): Promise<Uint8Array>;
  /** Send `req_pq_multi` (or old `req_pq`) and return the `resPQ`, checking the nonce echo. */
  reqPq(options?: { old?: boolean; timeoutMs?: number }): Promise<ResPq>;
  /** Send bytes of the plaintext stream inside obfuscated2 (encrypted, TLS-wrapped for tls). */
  sendRaw(bytes: Uint8Array): Promise<void>;
  /** Read `n` decrypted stream bytes, or whatever is available (at least 1) without `n`. */
  readRaw(n?: number, timeoutMs?: number): Promise<Uint8Array>;
  /** Write bytes straight to the socket, bypassing every layer. */
  writeWire(bytes: Uint8Array): Promise<void>;
  /** Resolve when the peer closes the connection (or it fails, or `close` is called). */
  closed(): Promise<void>;
  /** Close the socket and release everything. Safe to call twice. */
  close(): Promise<void>;
}

const DEFAULT_TIMEOUT_MS = 5000;
const TDLIB_TLS_RECORD = 2878;
const CCS = Uint8Array.of(0x14, 0x03, 0x03, 0x00, 0x01, 0x01);

/** An obfuscated2 init with a random part that passes {@linkcode isValidInitRandom}. */
export function buildObfuscatedInit(
  secret: Uint8Array | null,
  tag: TransportTag,
  dcId: number,
): { wire: Uint8Array; encryptor: StreamCipher; decryptor: StreamCipher } {
  let random = randomBytes(64);
  while (!isValidInitRandom(random)) random = randomBytes(64);
  return createInit(random, tag, dcId, { secret });
}

/**
 * A raw `dd` client of DC `dcId` that sends its init and one packet, then never reads again (an
 * app stuck on a dead network): what a proxy must not let stall its other clients.
 */
export async function openNonReadingClient(
  port: number,
  secret: Uint8Array,
  dcId: number,
  payload: Uint8Array,
): Promise<{ close(): void }> {
  const init = buildObfuscatedInit(secret, "padded", dcId);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const packet = encodeFrame("padded", payload);
  init.encryptor.update(packet);
  init.encryptor.close();
  try {
    await writeAll(conn, concatBytes([init.wire, packet]));
  } catch (e) {
    conn.close();
    init.decryptor.close();
    throw e;
  }
  return {
    close() {
      closeQuietly(conn);
      init.decryptor.close();
    },
  };
}

/** A signed fake-TLS ClientHello record for `secret`. */
export function buildSignedHello(
  secret: Uint8Array,
  options: ClientHelloOptions & { clockSec?: number; helloRecord?: Uint8Array },
): Uint8Array {
  const { clockSec, helloRecord, ...hello } = options;
  const record = helloRecord ?? buildClientHello(hello);
  return signClientHello(record, secret, clockSec ?? Math.floor(Date.now() / 1000));
}

/** Split `bytes` into pieces of at most `size` bytes. */
export function chunks(bytes: Uint8Array, size: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let off = 0; off < bytes.length; off += size) out.push(bytes.subarray(off, off + size));
  return out;
}

function _equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** Counts TLS records in a stream cut anywhere. */
class _RecordCounter {
  records = 0;
  #header = 0;
  #size = 0;
  #left = 0;

  count(chunk: Uint8Array): void {
    let i = 0;
    while (i < chunk.length) {
      if (this.#left > 0) {
        const n = Math.min(this.#left, chunk.length - i);
        this.#left -= n;
        i += n;
        continue;
      }
      const b = chunk[i++]!;
      if (this.#header === 3) this.#size = b << 8;
      if (this.#header === 4) {
        this.#left = this.#size | b;
        this.#header = 0;
        this.records++;
        continue;
      }
      this.#header++;
    }
  }
}

class _TestClient implements TestClient {
  readonly kind: SecretKind;
  readonly transport: TransportTag;
  readonly dcId: number;
  serverHello: Uint8Array | null = null;
  readonly #records = new _RecordCounter();
  #conn: Deno.TcpConn;
  #queue = new ByteQueue();
  #pump: Promise<void>;
  #transform: (chunk: Uint8Array) => Uint8Array = (c) => c;
  #encryptor: StreamCipher;
  #decryptor: StreamCipher;
  #pendingInit: Uint8Array | null;
  #tls: boolean;
  #ccsSent = false;
  #recordSize: number;
  #maxPadding: number;
  #chunkSize: number;
  #chunkDelayMs: number;
  #writing: Promise<void> = Promise.resolve();
  #frames: Uint8Array[] = [];
  #acks: Uint8Array[] = [];
  #decodeError: Error | null = null;
  #closing: Promise<void> | null = null;

  constructor(conn: Deno.TcpConn, options: TestClientOptions, transport: TransportTag) {
    this.#conn = conn;
    this.kind = options.kind;
    this.transport = transport;
    this.dcId = options.dcId;
    this.#tls = options.kind === "tls";
    this.#recordSize = options.tlsRecordSize ?? TDLIB_TLS_RECORD;
    this.#maxPadding = options.maxPadding ?? 15;
    this.#chunkSize = options.chunkSize ?? 0;
    this.#chunkDelayMs = options.chunkDelayMs ?? 0;
    const init = buildObfuscatedInit(options.secret, transport, options.dcId);
    this.#encryptor = init.encryptor;
    this.#decryptor = init.decryptor;
    this.#pendingInit = init.wire;
    if (!this.#tls) this.#startDecrypting();
    this.#pump = pumpInto(conn, this.#queue, (c) => this.#transform(c));
  }

  /** Fake-TLS: send the hello and check the answer; then switch the reader to records. */
  async tlsHandshake(options: TestClientOptions, secret: Uint8Array, timeoutMs: number) {
    const hello = buildSignedHello(secret, {
      ...options.hello,
      sni: options.sni ?? "example.com",
      ...(options.clockSec === undefined ? {} : { clockSec: options.clockSec }),
      ...(options.helloRecord === undefined ? {} : { helloRecord: options.helloRecord }),
    });
    const clientRandom = hello.slice(11, 43);
    await this.#enqueueWrite(hello, true);
    let step = parseServerHello(this.#queue.view(), clientRandom, secret);
    try {
      await this.#queue.wait(
        () => (step = parseServerHello(this.#queue.view(), clientRandom, secret)).kind !== "need",
        timeoutMs,
        "the fake-TLS server answer",
      );
    } catch (e) {
      throw new Error(`Fake-TLS handshake failed: ${(e as Error).message}`);
    }
    if (step.kind === "reject") {
      const got = this.#queue.view().subarray(0, 16);
      throw new Error(
        `Fake-TLS handshake failed: bad server answer (${step.reason}) starting ${_hex(got)}`,
      );
    }
    if (step.kind !== "ok") throw new Error("Fake-TLS handshake failed: unreachable");
    this.serverHello = this.#queue.take(step.length);
    this.#startDecrypting();
  }

  get recordsReceived(): number {
    return this.#records.records;
  }

  #startDecrypting(): void {
    const reader = this.#tls ? new TlsRecordReader() : null;
    this.#transform = (chunk) => {
      let data = chunk;
      if (reader) {
        this.#records.count(chunk);
        const n = reader.unwrap(chunk);
        if (typeof n === "string") throw new Error(`Bad TLS record from the proxy: ${n}`);
        data = chunk.subarray(0, n);
      }
      this.#decryptor.update(data);
      return data;
    };
    if (this.#queue.length > 0) {
      const rest = this.#queue.takeAll();
      this.#queue.push(this.#transform(rest));
    }
  }

  /** Send the init now if it is still held back. */
  async flushInit(): Promise<void> {
    if (this.#pendingInit) await this.sendRaw(new Uint8Array(0));
  }

  send(payload: Uint8Array, options: SendOptions = {}): Promise<void> {
    const quickAck = options.quickAck ?? false;
    let frame: Uint8Array;
    if (this.transport === "abridged") {
      if (payload.length % 4 !== 0) {
        throw new RangeError(
          `Abridged payload must be a multiple of 4 bytes: got ${payload.length}`,
        );
      }
      const words = payload.length / 4;
      const head = words < 0x7f ? [words] : [0x7f, words & 0xff, (words >> 8) & 0xff, words >> 16];
      if (quickAck) head[0]! |= 0x80;
      frame = new Uint8Array(head.length + payload.length);
      frame.set(head);
      frame.set(payload, head.length);
    } else {
      const pad = this.transport === "padded"
        ? options.padding ?? Math.floor(Math.random() * (this.#maxPadding + 1))
        : 0;
      frame = new Uint8Array(4 + payload.length + pad);
      const len = (payload.length + pad) | (quickAck ? 0x80000000 : 0);
      new DataView(frame.buffer).setUint32(0, len >>> 0, true);
      frame.set(payload, 4);
      frame.set(randomBytes(pad), 4 + payload.length);
    }
    return this.sendRaw(frame);
  }

  sendRaw(bytes: Uint8Array): Promise<void> {
    const data = bytes.slice();
    this.#encryptor.update(data);
    let wire: Uint8Array = data;
    const first = this.#pendingInit !== null;
    if (this.#pendingInit) {
      wire = concatBytes([this.#pendingInit, wire]);
      this.#pendingInit = null;
    }
    if (this.#tls && wire.length > 0) {
      wire = encodeAppData(wire, this.#recordSize);
      if (!this.#ccsSent) {
        this.#ccsSent = true;
        wire = concatBytes([CCS, wire]);
      }
    }
    return this.#enqueueWrite(wire, first);
  }

  writeWire(bytes: Uint8Array): Promise<void> {
    return this.#enqueueWrite(bytes.slice(), false);
  }

  #enqueueWrite(wire: Uint8Array, handshake: boolean): Promise<void> {
    const write = async () => {
      if (handshake && this.#chunkSize > 0) {
        for (const piece of chunks(wire, this.#chunkSize)) {
          await writeAll(this.#conn, piece);
          if (this.#chunkDelayMs > 0) await delay(this.#chunkDelayMs);
        }
      } else {
        await writeAll(this.#conn, wire);
      }
    };
    const done = this.#writing.then(write);
    this.#writing = done.catch(() => {});
    return done;
  }

  /** Decode queued stream bytes into frames and quick-ack tokens; stop at the first gap. */
  #decode(): void {
    while (this.#decodeError === null) {
      const view = this.#queue.view();
      if (this.transport === "abridged") {
        if (view.length < 1) return;
        if ((view[0]! & 0x80) !== 0) {
          if (view.length < 4) return;
          this.#acks.push(this.#queue.take(4));
          continue;
        }
      } else {
        if (view.length < 4) return;
        if ((view[3]! & 0x80) !== 0) {
          this.#acks.push(this.#queue.take(4));
          continue;
        }
      }
      const step = decodeFrame(this.transport, view);
      if (step.kind === "need") return;
      if (step.kind === "reject") {
        this.#decodeError = new Error(`Bad frame from the proxy: ${step.reason}`);
        return;
      }
      const payload = step.frame.payload.slice();
      this.#queue.take(view.length - step.rest.length);
      this.#frames.push(payload);
    }
  }

  async receive(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Uint8Array> {
    await this.#queue.wait(
      () => {
        this.#decode();
        return this.#frames.length > 0 || this.#decodeError !== null;
      },
      timeoutMs,
      "a frame",
    );
    if (this.#frames.length === 0 && this.#decodeError) throw this.#decodeError;
    return this.#frames.shift()!;
  }

  async receiveQuickAck(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Uint8Array> {
    await this.#queue.wait(
      () => {
        this.#decode();
        return this.#acks.length > 0 || this.#decodeError !== null;
      },
      timeoutMs,
      "a quick-ack token",
    );
    if (this.#acks.length === 0 && this.#decodeError) throw this.#decodeError;
    return this.#acks.shift()!;
  }

  async reqPq(options: { old?: boolean; timeoutMs?: number } = {}): Promise<ResPq> {
    const nonce = randomBytes(16);
    await this.send(options.old ? reqPq(nonce) : reqPqMulti(nonce));
    const answer = await this.receive(options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    const res = parseResPq(answer);
    if (res === null) {
      throw new Error(
        `Expected resPQ: got ${answer.length} bytes starting ${_hex(answer.subarray(0, 24))}`,
      );
    }
    if (!_equal(res.nonce, nonce)) {
      throw new Error(
        `The resPQ nonce does not match: sent ${_hex(nonce)}, got ${_hex(res.nonce)}`,
      );
    }
    return res;
  }

  async readRaw(n?: number, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Uint8Array> {
    const want = n ?? 1;
    await this.#queue.wait(() => this.#queue.length >= want, timeoutMs, `${want} stream bytes`);
    return n === undefined ? this.#queue.takeAll() : this.#queue.take(n);
  }

  closed(): Promise<void> {
    return this.#queue.ended();
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      closeQuietly(this.#conn);
      await this.#pump;
      await this.#writing;
      this.#encryptor.close();
      this.#decryptor.close();
    })();
    return this.#closing;
  }
}

function _hex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/**
 * Connect to a proxy (or a fake DC with `secret: null`) and run the handshake: the fake-TLS
 * exchange for tls, then the obfuscated2 init (held back until the first data for tls).
 * Rejects with a clear error when the connection fails or the fake-TLS answer is bad.
 *
 * @example Usage
 * ```ts ignore
 * const client = await connectTestClient({ port, secret, kind: "tls", dcId: 2 });
 * const { serverNonce } = await client.reqPq();
 * await client.close();
 * ```
 */
export async function connectTestClient(options: TestClientOptions): Promise<TestClient> {
  const { kind } = options;
  const transport = options.transport ?? (kind === "plain" ? "intermediate" : "padded");
  if (kind !== "plain" && transport !== "padded") {
    throw new RangeError(`A ${kind} client uses only the padded transport: got "${transport}"`);
  }
  if (options.secret !== null && options.secret.length !== 16) {
    throw new RangeError(`Secret must be 16 bytes: got ${options.secret.length}`);
  }
  const secret = options.secret;
  if (kind === "tls" && secret === null) throw new RangeError("A tls client needs a secret");
  const timeoutMs = options.connectTimeoutMs ?? DEFAULT_TIMEOUT_MS;
  const conn = await dial(options.host ?? "127.0.0.1", options.port, timeoutMs);
  const client = new _TestClient(conn, options, transport);
  try {
    if (options.preface) await client.writeWire(options.preface);
    if (kind === "tls") await client.tlsHandshake(options, secret!, timeoutMs);
    if (!(options.deferInit ?? kind === "tls")) await client.flushInit();
  } catch (e) {
    await client.close();
    throw e;
  }
  return client;
}

/** A bare TCP connection for garbage, HTTP and replay probes. */
export interface RawConnection {
  /** Write bytes as they are. */
  write(bytes: Uint8Array): Promise<void>;
  /** Everything the peer sends until it closes; rejects after `timeoutMs` without EOF. */
  readAll(timeoutMs?: number): Promise<Uint8Array>;
  /** Exactly `n` bytes, or whatever is available (at least 1) without `n`. */
  read(n?: number, timeoutMs?: number): Promise<Uint8Array>;
  /** Bytes received and not yet read. */
  readonly buffered: number;
  /** Resolve when the peer closes (or `close` is called). */
  closed(): Promise<void>;
  /** Close and release everything. Safe to call twice. */
  close(): Promise<void>;
}

/** Open a bare TCP connection to `127.0.0.1:port`. */
export async function openRawConnection(
  port: number,
  options: { host?: string; connectTimeoutMs?: number } = {},
): Promise<RawConnection> {
  const conn = await dial(
    options.host ?? "127.0.0.1",
    port,
    options.connectTimeoutMs ?? DEFAULT_TIMEOUT_MS,
  );
  const queue = new ByteQueue();
  const pump = pumpInto(conn, queue);
  let writing: Promise<void> = Promise.resolve();
  let closing: Promise<void> | null = null;
  return {
    write(bytes) {
      const copy = bytes.slice();
      const done = writing.then(() => writeAll(conn, copy));
      writing = done.catch(() => {});
      return done;
    },
    async readAll(timeoutMs = DEFAULT_TIMEOUT_MS) {
      await queue.wait(() => queue.done, timeoutMs, "the peer to close");
      return queue.takeAll();
    },
    async read(n, timeoutMs = DEFAULT_TIMEOUT_MS) {
      const want = n ?? 1;
      await queue.wait(() => queue.length >= want, timeoutMs, `${want} bytes`);
      return n === undefined ? queue.takeAll() : queue.take(n);
    },
    get buffered() {
      return queue.length;
    },
    closed: () => queue.ended(),
    close() {
      closing ??= (async () => {
        closeQuietly(conn);
        await pump;
        await writing;
      })();
      return closing;
    },
  };
}
