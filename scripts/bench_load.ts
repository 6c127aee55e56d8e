/**
 * The bench's load generator, run as its own process: opens client connections through the
 * proxy (as a `dd` client or an `ee` fake-TLS client) or through the plain relay (obfuscated2
 * with no secret, straight to the echo DC), runs one scenario and prints its result as one JSON
 * line on stdout.
 *
 * Handshakes and small ping-pongs are encrypted and checked byte for byte. Bulk throughput
 * sends one pre-filled random buffer over and over without encrypting it (random bytes are
 * valid ciphertext, and every hop's cipher is XOR, so nothing downstream can tell) and only
 * counts what comes back: the load generator then takes little CPU from the process under test.
 *
 * With `--framed` (middle-proxy mode, where the proxy parses the client's transport frames and
 * sends each packet to Telegram as one RPC message) every packet is a well-formed padded
 * intermediate frame (4-byte little-endian length, payload a multiple of 4 bytes, no padding):
 * bulk writes are four 16 KiB packets (`--packet <bytes>`: packets of that size, as many as fit
 * in 64 KiB), encrypted (the proxy decrypts them to find the frames),
 * and what comes back is decrypted and parsed frame by frame (each echoed packet is its own frame,
 * with 0-3 padding bytes from the proxy), counting payload bytes only. Pings are 100-byte
 * packets in one frame each. `--max-padding <bytes>` accepts more padding per echoed frame (a
 * split-mode back pads its frames to the DC by 0-15 bytes as apps do, the echo DC sends them
 * back, and the back can strip only `len % 4` of them). `--mp-port <port>` also counts the TCP
 * connections that the `mid` process of `--pids` holds to that port (the Telegram side:
 * middle-proxy connections).
 *
 * Scenarios:
 * - `throughput`: `--streams` full-duplex streams write 64 KiB chunks and read the echo; after
 *   `--warmup` seconds, count bytes and the CPU time of `--pids` over `--seconds`.
 * - `latency`: one connection, `--pings` sequential 100-byte ping-pongs; microseconds.
 * - `handshakes`: `--workers` loops of connect, handshake, 100-byte first packet echoed,
 *   close, for `--seconds`.
 * - `idle`: warm up with 100 short-lived clients, read the memory of `--pids`, open `--clients` connections (handshake and one ping-pong each), let them sit, read
 *   the memory of `--pids`, ping every one again, close them all. With `--mem-signal <pid>`,
 *   send that process SIGUSR1 after each memory reading (scripts/bench_proxy.ts then prints its
 *   V8 heap figures).
 * - `prepared-handshakes`: as `handshakes`, but every byte the clients send is computed before
 *   the clock starts (`--prepared` connections: distinct signed ClientHellos, obfuscated2 inits
 *   with the first packet encrypted, and the echo each one must get back as it will arrive), so
 *   that a handshake costs this process only its socket calls and a byte comparison, and the
 *   process under test is what limits the rate. The ServerHello is read by its record lengths,
 *   not verified. `--stop-after hello` (`ee` only) closes each connection once the ServerHello
 *   arrived (fake-TLS handshakes alone, no DC connection); `--stop-after ping` (default) sends
 *   the init and a 100-byte packet and checks its echo. After `--warmup` seconds, counts
 *   handshakes and the CPU time of `--pids` over `--seconds`, or until the prepared connections
 *   run out (`exhausted` in the result).
 *
 * `throughput`, `handshakes` and `prepared-handshakes` also report `machine_cpu_s`: the CPU
 * seconds all processes on the machine used over the counted window (from /proc/stat), so that
 * CPU taken by anything besides `--pids` and this process shows.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { randomBytes, type StreamCipher } from "../lib/crypto.ts";
import {
  MAX_RECORD_PAYLOAD,
  parseServerHello,
  RECORD_HEADER_LEN,
  signClientHello,
  TlsRecordReader,
  writeAppDataHeader,
} from "../lib/protocol/fake_tls.ts";
import { createInit, isValidInitRandom } from "../lib/protocol/obfuscated2.ts";
import { buildClientHello } from "../tests/kit/client_hello.ts";
import {
  CLOCK_TICKS_PER_SECOND,
  closeQuietly,
  cpuSeconds,
  delay,
  exitWhenStdinCloses,
  type MemoryInfo,
  memoryInfo,
  parseHex,
  parsePort,
  writeAll,
} from "./_bench_common.ts";

/** How the load generator talks to the process in the middle. */
export type LoadMode = "dd" | "ee" | "relay";

/** The size of every bulk write, and of every read buffer. */
const CHUNK = 65536;
/** Bytes one bulk stream may have sent and not yet seen echoed. */
const WINDOW = 1024 * 1024;
const PING_LEN = 100;
/** Framed bulk traffic: payload bytes per packet, and packets per write. */
let PACKET = 16384;
let PACKETS_PER_WRITE = 4;
/** Length prefix of a padded intermediate frame. */
const FRAME_HEADER_LEN = 4;
/** Framed: padding bytes an echoed frame may carry after the payload (`--max-padding`). */
let MAX_PADDING = 3;
/** Longest a connect + handshake + ping-pong, or a ping-pong, may take before it is an error. */
const OP_TIMEOUT_MS = 15_000;
/** Clients opened and closed before the idle scenario's baseline is read. */
const WARMUP_CLIENTS = 100;
const DC_ID = 2;
const CCS = Uint8Array.of(0x14, 0x03, 0x03, 0x00, 0x01, 0x01);

interface Target {
  port: number;
  mode: LoadMode;
  secret: Uint8Array;
  sni: string;
  /** Send and expect padded intermediate frames (middle-proxy mode). */
  framed: boolean;
}

/** `payload` as one padded intermediate frame with no padding. */
function _frame(payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(FRAME_HEADER_LEN + payload.length);
  new DataView(out.buffer).setUint32(0, payload.length, true);
  out.set(payload, FRAME_HEADER_LEN);
  return out;
}

/**
 * Counts the payload bytes of a decrypted stream of padded intermediate frames, each of which
 * must carry `expected` payload bytes plus 0 to {@linkcode MAX_PADDING} padding bytes; throws on
 * anything else.
 */
class FrameCounter {
  #head = 0;
  #len = 0;
  #left = 0;
  #payloadLeft = 0;
  frames = 0;

  constructor(readonly expected: number) {}

  /** Payload bytes among `buf[0..n)`. */
  count(buf: Uint8Array, n: number): number {
    let payload = 0;
    let i = 0;
    while (i < n) {
      if (this.#left > 0) {
        const take = Math.min(this.#left, n - i);
        const p = Math.min(take, this.#payloadLeft);
        payload += p;
        this.#payloadLeft -= p;
        this.#left -= take;
        i += take;
        continue;
      }
      this.#len += buf[i++]! * 2 ** (8 * this.#head);
      if (++this.#head < FRAME_HEADER_LEN) continue;
      const len = this.#len;
      this.#head = 0;
      this.#len = 0;
      if (len < this.expected || len > this.expected + MAX_PADDING) {
        throw new Error(
          `Unexpected frame of ${len} bytes (expected ${this.expected} + 0-${MAX_PADDING} padding)`,
        );
      }
      this.#left = len;
      this.#payloadLeft = this.expected;
      this.frames++;
    }
    return payload;
  }
}

/** Counts the payload bytes of a stream of TLS records without moving any data. */
class RecordCounter {
  #header = 0;
  #lenHi = 0;
  #left = 0;

  /** Payload bytes among `buf[0..n)`. */
  count(buf: Uint8Array, n: number): number {
    let payload = 0;
    let i = 0;
    while (i < n) {
      if (this.#left > 0) {
        const take = Math.min(this.#left, n - i);
        payload += take;
        this.#left -= take;
        i += take;
        continue;
      }
      // Inside a 5-byte header: bytes 3 and 4 hold the length.
      if (this.#header === 3) this.#lenHi = buf[i]!;
      if (this.#header === 4) this.#left = (this.#lenHi << 8) | buf[i]!;
      this.#header = (this.#header + 1) % RECORD_HEADER_LEN;
      i++;
    }
    return payload;
  }
}

/** One established client connection. */
class Client {
  #reader: TlsRecordReader | null;
  #pending = new Uint8Array(0);
  #readBuf = new Uint8Array(4096);

  constructor(
    readonly conn: Deno.TcpConn,
    readonly encryptor: StreamCipher,
    readonly decryptor: StreamCipher,
    readonly tls: boolean,
    readonly framed: boolean,
  ) {
    this.#reader = tls ? new TlsRecordReader() : null;
  }

  /** Encrypt `plain` (a copy), frame it and send it. */
  async send(plain: Uint8Array): Promise<void> {
    const head = this.tls ? RECORD_HEADER_LEN : 0;
    const out = new Uint8Array(head + plain.length);
    out.set(plain, head);
    this.encryptor.update(out.subarray(head));
    if (this.tls) writeAppDataHeader(out, 0, plain.length);
    await writeAll(this.conn, out);
  }

  /** Read exactly `n` payload bytes and decrypt them. */
  async receive(n: number): Promise<Uint8Array> {
    while (this.#pending.length < n) {
      const got = await this.conn.read(this.#readBuf);
      if (got === null) throw new Error(`Connection closed after ${this.#pending.length} bytes`);
      let len = got;
      if (this.#reader) {
        const r = this.#reader.unwrap(this.#readBuf.subarray(0, got));
        if (typeof r === "string") throw new Error(`Bad TLS record from the proxy: ${r}`);
        len = r;
      }
      const joined = new Uint8Array(this.#pending.length + len);
      joined.set(this.#pending);
      joined.set(this.#readBuf.subarray(0, len), this.#pending.length);
      this.#pending = joined;
    }
    const out = this.#pending.slice(0, n);
    this.#pending = this.#pending.slice(n);
    this.decryptor.update(out);
    return out;
  }

  /**
   * Read the echo of an `n`-byte packet: `n` bytes, or with `framed` one frame of `n` payload
   * bytes and 0 to {@linkcode MAX_PADDING} padding bytes (dropped).
   */
  async receivePacket(n: number): Promise<Uint8Array> {
    if (!this.framed) return await this.receive(n);
    const head = await this.receive(FRAME_HEADER_LEN);
    const len = new DataView(head.buffer, head.byteOffset, FRAME_HEADER_LEN).getUint32(0, true);
    if (len < n || len > n + MAX_PADDING) {
      throw new Error(
        `Unexpected frame of ${len} bytes (expected ${n} + 0-${MAX_PADDING} padding)`,
      );
    }
    return (await this.receive(len)).subarray(0, n);
  }

  /**
   * Read what the proxy sent next into `buf`, unwrapped and decrypted in place: how many
   * plaintext bytes now start `buf`, or null at EOF. Only once {@linkcode receive} holds nothing.
   */
  async readPlain(buf: Uint8Array): Promise<number | null> {
    if (this.#pending.length > 0) throw new Error("readPlain with received bytes pending");
    const got = await this.conn.read(buf);
    if (got === null) return null;
    let len = got;
    if (this.#reader) {
      const r = this.#reader.unwrap(buf.subarray(0, got));
      if (typeof r === "string") throw new Error(`Bad TLS record from the proxy: ${r}`);
      len = r;
    }
    this.decryptor.update(buf.subarray(0, len));
    return len;
  }

  /** Send a random 100-byte ping (framed with `framed`) and check the echo. */
  async ping(): Promise<void> {
    const ping = randomBytes(PING_LEN);
    await this.send(this.framed ? _frame(ping) : ping);
    const pong = await this.receivePacket(PING_LEN);
    if (!pong.every((b, i) => b === ping[i])) throw new Error("Echo differs from the ping");
  }

  close(): void {
    closeQuietly(this.conn);
    this.encryptor.close();
    this.decryptor.close();
  }
}

function _initRandom(): Uint8Array {
  let r = randomBytes(64);
  while (!isValidInitRandom(r)) r = randomBytes(64);
  return r;
}

let helloTemplate: Uint8Array | null = null;

/** A signed ClientHello with a fresh session id, so the proxy never sees the same one twice. */
function _clientHello(target: Target): Uint8Array {
  helloTemplate ??= buildClientHello({ sni: target.sni });
  const hello = helloTemplate.slice();
  hello.set(randomBytes(32), 44);
  return signClientHello(hello, target.secret, Math.floor(Date.now() / 1000));
}

async function _readServerHello(
  conn: Deno.TcpConn,
  clientRandom: Uint8Array,
  secret: Uint8Array,
): Promise<void> {
  let buf = new Uint8Array(8192);
  let have = 0;
  while (true) {
    const step = parseServerHello(buf.subarray(0, have), clientRandom, secret);
    if (step.kind === "ok") {
      if (step.length !== have) throw new Error("Unexpected bytes after the ServerHello");
      return;
    }
    if (step.kind === "reject") throw new Error(`Bad ServerHello: ${step.reason}`);
    if (step.atLeast > buf.length) {
      const bigger = new Uint8Array(step.atLeast * 2);
      bigger.set(buf.subarray(0, have));
      buf = bigger;
    }
    const n = await conn.read(buf.subarray(have));
    if (n === null) throw new Error(`Proxy closed during the TLS handshake after ${have} bytes`);
    have += n;
  }
}

/** Connect and complete the handshake for `target.mode`; `first` (plaintext) rides along. */
async function _open(target: Target, first: Uint8Array, signal: AbortSignal): Promise<Client> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: target.port, signal });
  const onAbort = () => closeQuietly(conn);
  signal.addEventListener("abort", onAbort, { once: true });
  let ciphers: StreamCipher[] = [];
  try {
    conn.setNoDelay(true);
    const secret = target.mode === "relay" ? null : target.secret;
    if (target.mode === "ee") {
      const hello = _clientHello(target);
      await writeAll(conn, hello);
      await _readServerHello(conn, hello.subarray(11, 43), target.secret);
    }
    const { wire, encryptor, decryptor } = createInit(_initRandom(), "padded", DC_ID, { secret });
    ciphers = [encryptor, decryptor];
    const tls = target.mode === "ee";
    const body = new Uint8Array(wire.length + first.length);
    body.set(wire);
    body.set(first, wire.length);
    encryptor.update(body.subarray(wire.length));
    if (tls) {
      const out = new Uint8Array(CCS.length + RECORD_HEADER_LEN + body.length);
      out.set(CCS);
      writeAppDataHeader(out, CCS.length, body.length);
      out.set(body, CCS.length + RECORD_HEADER_LEN);
      await writeAll(conn, out);
    } else {
      await writeAll(conn, body);
    }
    const client = new Client(conn, encryptor, decryptor, tls, target.framed);
    ciphers = [];
    return client;
  } catch (e) {
    closeQuietly(conn);
    for (const c of ciphers) c.close();
    throw e;
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
}

/** Fail with "Timed out" when `signal` fired (its socket was closed under `op`). */
async function _timed<T>(signal: AbortSignal, what: string, op: () => Promise<T>): Promise<T> {
  try {
    return await op();
  } catch (e) {
    if (signal.aborted) throw new Error(`Timed out after ${OP_TIMEOUT_MS} ms: ${what}`);
    throw e;
  }
}

/**
 * Open a connection and check one 100-byte ping-pong sent with the init, within
 * {@linkcode OP_TIMEOUT_MS}.
 */
function _openAndPing(target: Target): Promise<Client> {
  const signal = AbortSignal.timeout(OP_TIMEOUT_MS);
  return _timed(signal, "connect, handshake and first ping", async () => {
    const ping = randomBytes(PING_LEN);
    const client = await _open(target, target.framed ? _frame(ping) : ping, signal);
    const onAbort = () => client.close();
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      const pong = await client.receivePacket(PING_LEN);
      if (!pong.every((b, i) => b === ping[i])) throw new Error("Echo differs from the ping");
      return client;
    } catch (e) {
      client.close();
      throw e;
    } finally {
      signal.removeEventListener("abort", onAbort);
    }
  });
}

/** One more ping-pong on an open client, within {@linkcode OP_TIMEOUT_MS}. */
function _pingAgain(client: Client): Promise<void> {
  const signal = AbortSignal.timeout(OP_TIMEOUT_MS);
  const onAbort = () => closeQuietly(client.conn);
  signal.addEventListener("abort", onAbort, { once: true });
  return _timed(signal, "ping", () => client.ping()).finally(() => {
    signal.removeEventListener("abort", onAbort);
  });
}

/** Errors seen, with a few messages kept. */
class Errors {
  count = 0;
  samples: string[] = [];

  add(e: unknown): void {
    this.count++;
    const msg = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
    if (this.samples.length < 5 && !this.samples.includes(msg)) this.samples.push(msg);
  }

  toJSON(): { errors: number; error_samples: string[] } {
    return { errors: this.count, error_samples: this.samples };
  }
}

/** The bulk write buffer: random bytes, framed as TLS records for `ee`. */
function _bulkChunk(tls: boolean): { wire: Uint8Array; payload: number } {
  if (!tls) return { wire: randomBytes(CHUNK), payload: CHUNK };
  const records = CHUNK / MAX_RECORD_PAYLOAD;
  const wire = randomBytes(CHUNK + records * RECORD_HEADER_LEN);
  for (let r = 0; r < records; r++) {
    writeAppDataHeader(wire, r * (MAX_RECORD_PAYLOAD + RECORD_HEADER_LEN), MAX_RECORD_PAYLOAD);
  }
  return { wire, payload: CHUNK };
}

/**
 * Framed bulk writes for one stream: {@linkcode PACKETS_PER_WRITE} frames of {@linkcode PACKET}
 * random bytes, encrypted with the stream's own cipher (and for `ee` cut into TLS records) into a
 * buffer reused for every write.
 */
class FramedWriter {
  static #plain: Uint8Array | null = null;
  readonly #client: Client;
  readonly #out: Uint8Array;
  /** Payload bytes per write. */
  readonly payload = PACKET * PACKETS_PER_WRITE;

  constructor(client: Client) {
    this.#client = client;
    const plain = FramedWriter.#template();
    const records = client.tls ? Math.ceil(plain.length / MAX_RECORD_PAYLOAD) : 0;
    this.#out = new Uint8Array(plain.length + records * RECORD_HEADER_LEN);
  }

  /** The plaintext of one write, shared by every stream. */
  static #template(): Uint8Array {
    if (this.#plain) return this.#plain;
    const plain = randomBytes(PACKETS_PER_WRITE * (FRAME_HEADER_LEN + PACKET));
    const view = new DataView(plain.buffer);
    for (let i = 0; i < PACKETS_PER_WRITE; i++) {
      view.setUint32(i * (FRAME_HEADER_LEN + PACKET), PACKET, true);
    }
    return this.#plain = plain;
  }

  /** Encrypt and send one write's worth of frames. */
  async write(): Promise<void> {
    const plain = FramedWriter.#template();
    const out = this.#out;
    const c = this.#client;
    if (!c.tls) {
      out.set(plain);
      c.encryptor.update(out);
    } else {
      let at = 0;
      for (let from = 0; from < plain.length; from += MAX_RECORD_PAYLOAD) {
        const len = Math.min(MAX_RECORD_PAYLOAD, plain.length - from);
        writeAppDataHeader(out, at, len);
        const body = out.subarray(at + RECORD_HEADER_LEN, at + RECORD_HEADER_LEN + len);
        body.set(plain.subarray(from, from + len));
        c.encryptor.update(body);
        at += RECORD_HEADER_LEN + len;
      }
    }
    await writeAll(c.conn, out);
  }
}

/**
 * Established TCP connections that process `pid` holds to `port` on any address (from
 * /proc/net/tcp and tcp6, matched by socket inode); null when /proc cannot tell.
 */
function _connectionsTo(port: number, pid: number): number | null {
  try {
    const inodes = new Set<string>();
    for (const fd of Deno.readDirSync(`/proc/${pid}/fd`)) {
      try {
        const m = Deno.readLinkSync(`/proc/${pid}/fd/${fd.name}`).match(/^socket:\[(\d+)\]$/);
        if (m) inodes.add(m[1]!);
      } catch {
        // Closed meanwhile.
      }
    }
    const hexPort = port.toString(16).toUpperCase().padStart(4, "0");
    let n = 0;
    for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
      let text: string;
      try {
        text = Deno.readTextFileSync(table);
      } catch {
        continue;
      }
      for (const line of text.split("\n").slice(1)) {
        // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
        const f = line.trim().split(/\s+/);
        if (f.length < 10) continue;
        if (f[3] === "01" && f[2]!.endsWith(`:${hexPort}`) && inodes.has(f[9]!)) n++;
      }
    }
    return n;
  } catch {
    return null;
  }
}

/** The Telegram-side connections of the `mid` process, when `--mp-port` was given. */
function _mpConnections(mpPort: number | null, pids: Record<string, number>): number | null {
  return mpPort === null || pids.mid === undefined ? null : _connectionsTo(mpPort, pids.mid);
}

function _cpuOf(pids: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [name, pid] of Object.entries(pids)) out[name] = cpuSeconds(pid);
  return out;
}

/** Busy CPU seconds of the whole machine so far (all CPUs, /proc/stat); null off Linux. */
function _machineCpuSeconds(): number | null {
  try {
    const f = Deno.readTextFileSync("/proc/stat").split("\n")[0]!.trim().split(/\s+/).slice(1)
      .map(Number);
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    const busy = f.slice(0, 8).reduce((a, b) => a + b, 0) - f[3]! - (f[4] ?? 0);
    return busy / CLOCK_TICKS_PER_SECOND;
  } catch {
    return null;
  }
}

function _machineDelta(a: number | null, b: number | null): { machine_cpu_s?: number } {
  return a === null || b === null ? {} : { machine_cpu_s: b - a };
}

function _memOf(pids: Record<string, number>): Record<string, MemoryInfo> {
  const out: Record<string, MemoryInfo> = {};
  for (const [name, pid] of Object.entries(pids)) out[name] = memoryInfo(pid);
  return out;
}

async function _throughput(
  target: Target,
  options: {
    streams: number;
    warmupS: number;
    seconds: number;
    pids: Record<string, number>;
    mpPort: number | null;
  },
) {
  const errors = new Errors();
  const pids = { ...options.pids, load: Deno.pid };
  const tConnect = performance.now();
  const settled = await Promise.allSettled(
    Array.from({ length: options.streams }, () => _openAndPing(target)),
  );
  const clients: Client[] = [];
  for (const s of settled) s.status === "fulfilled" ? clients.push(s.value) : errors.add(s.reason);
  const connectMs = performance.now() - tConnect;

  const chunk = _bulkChunk(target.mode === "ee");
  const perWrite = target.framed ? PACKET * PACKETS_PER_WRITE : chunk.payload;
  let frames = 0;
  let stop = false;
  let sent = 0;
  let received = 0;
  const loops: Promise<void>[] = [];
  const wakers = new Set<() => void>();
  for (const c of clients) {
    // Each stream keeps at most WINDOW bytes in flight, so the kernel's socket buffers (which
    // autotune to megabytes on loopback) do not fill up with hundreds of megabytes.
    let inFlight = 0;
    const gate: { wake: (() => void) | null } = { wake: null };
    const framedWriter = target.framed ? new FramedWriter(c) : null;
    loops.push((async () => {
      try {
        while (!stop) {
          while (inFlight > WINDOW - perWrite && !stop) {
            await new Promise<void>((r) => wakers.add(gate.wake = r));
          }
          if (stop) return;
          inFlight += perWrite;
          if (framedWriter) await framedWriter.write();
          else await writeAll(c.conn, chunk.wire);
          sent += perWrite;
        }
      } catch (e) {
        if (!stop) errors.add(e);
      }
    })());
    loops.push((async () => {
      const buf = new Uint8Array(CHUNK);
      const counter = c.tls && !target.framed ? new RecordCounter() : null;
      const frameCounter = target.framed ? new FrameCounter(PACKET) : null;
      try {
        while (true) {
          // Framed: unwrapped and decrypted, to find the frames; else only counted.
          const n = frameCounter ? await c.readPlain(buf) : await c.conn.read(buf);
          if (n === null) {
            if (!stop) errors.add(new Error("Connection closed during the transfer"));
            return;
          }
          let payload: number;
          if (frameCounter) {
            const before = frameCounter.frames;
            payload = frameCounter.count(buf, n);
            frames += frameCounter.frames - before;
          } else {
            payload = counter ? counter.count(buf, n) : n;
          }
          received += payload;
          inFlight -= payload;
          if (gate.wake && inFlight <= WINDOW - perWrite) {
            wakers.delete(gate.wake);
            gate.wake();
            gate.wake = null;
          }
        }
      } catch (e) {
        if (!stop) errors.add(e);
      }
    })());
  }
  await delay(options.warmupS * 1000);
  const t0 = performance.now();
  const cpu0 = _cpuOf(pids);
  const machine0 = _machineCpuSeconds();
  const sent0 = sent;
  const received0 = received;
  await delay(options.seconds * 1000);
  const t1 = performance.now();
  const cpu1 = _cpuOf(pids);
  const machine1 = _machineCpuSeconds();
  const sent1 = sent;
  const received1 = received;
  const mpConnections = _mpConnections(options.mpPort, options.pids);
  stop = true;
  for (const w of wakers) w();
  for (const c of clients) c.close();
  await Promise.all(loops);

  const seconds = (t1 - t0) / 1000;
  const cpu: Record<string, number> = {};
  for (const name of Object.keys(pids)) cpu[name] = cpu1[name]! - cpu0[name]!;
  return {
    streams: clients.length,
    connect_ms: connectMs,
    seconds,
    bytes_up: sent1 - sent0,
    bytes_down: received1 - received0,
    echo_mb_s: (received1 - received0) / 1e6 / seconds,
    cpu_s: cpu,
    ..._machineDelta(machine0, machine1),
    ...(target.framed ? { frames_down: frames } : {}),
    ...(mpConnections === null ? {} : { mp_connections: mpConnections }),
    ...errors.toJSON(),
  };
}

function _percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

async function _latency(target: Target, options: { pings: number }) {
  const errors = new Errors();
  const samples: number[] = [];
  try {
    const client = await _openAndPing(target);
    try {
      for (let i = 0; i < Math.min(200, options.pings / 5); i++) await client.ping();
      for (let i = 0; i < options.pings; i++) {
        const t = performance.now();
        await client.ping();
        samples.push((performance.now() - t) * 1000);
      }
    } finally {
      client.close();
    }
  } catch (e) {
    errors.add(e);
  }
  samples.sort((a, b) => a - b);
  return {
    pings: samples.length,
    p50_us: _percentile(samples, 0.5),
    p99_us: _percentile(samples, 0.99),
    max_us: samples.at(-1) ?? NaN,
    ...errors.toJSON(),
  };
}

async function _handshakes(
  target: Target,
  options: { workers: number; seconds: number; pids: Record<string, number> },
) {
  const errors = new Errors();
  let done = 0;
  const pids = { ...options.pids, load: Deno.pid };
  const cpu0 = _cpuOf(pids);
  const machine0 = _machineCpuSeconds();
  const t0 = performance.now();
  const deadline = t0 + options.seconds * 1000;
  await Promise.all(Array.from({ length: options.workers }, async () => {
    while (performance.now() < deadline) {
      try {
        const client = await _openAndPing(target);
        client.close();
        done++;
      } catch (e) {
        errors.add(e);
        if (errors.count > 100) return;
      }
    }
  }));
  const seconds = (performance.now() - t0) / 1000;
  const cpu1 = _cpuOf(pids);
  const machine1 = _machineCpuSeconds();
  const cpu: Record<string, number> = {};
  for (const name of Object.keys(pids)) cpu[name] = cpu1[name]! - cpu0[name]!;
  return {
    handshakes: done,
    seconds,
    per_second: done / seconds,
    cpu_s: cpu,
    ..._machineDelta(machine0, machine1),
    ...errors.toJSON(),
  };
}

/** What `prepared-handshakes` sends on one connection, and the echo it expects. */
interface Prepared {
  /** A signed ClientHello (`ee`), or null. */
  hello: Uint8Array | null;
  /** The init with the first packet encrypted behind it (in a CCS + record for `ee`), or null. */
  flight: Uint8Array | null;
  /** The first packet's echo as the proxy will send it (encrypted; record payload for `ee`). */
  echo: Uint8Array | null;
}

/** One connection's bytes for `prepared-handshakes`, computed with the ciphers now. */
function _prepare(target: Target, stopAfter: "hello" | "ping"): Prepared {
  const tls = target.mode === "ee";
  const hello = tls ? _clientHello(target) : null;
  if (stopAfter === "hello") return { hello, flight: null, echo: null };
  const secret = target.mode === "relay" ? null : target.secret;
  const { wire, encryptor, decryptor } = createInit(_initRandom(), "padded", DC_ID, { secret });
  try {
    const ping = randomBytes(PING_LEN);
    const packet = target.framed ? _frame(ping) : ping;
    const body = new Uint8Array(wire.length + packet.length);
    body.set(wire);
    body.set(packet, wire.length);
    encryptor.update(body.subarray(wire.length));
    let flight = body;
    if (tls) {
      flight = new Uint8Array(CCS.length + RECORD_HEADER_LEN + body.length);
      flight.set(CCS);
      writeAppDataHeader(flight, CCS.length, body.length);
      flight.set(body, CCS.length + RECORD_HEADER_LEN);
    }
    // CTR: the key stream the proxy encrypts the echo with is the one the decryptor XORs.
    const echo = packet.slice();
    decryptor.update(echo);
    return { hello, flight, echo };
  } finally {
    encryptor.close();
    decryptor.close();
  }
}

/** Total length of the ServerHello flight at the start of `buf[0..have)`, or 0 if not yet known. */
function _serverHelloEnd(buf: Uint8Array, have: number): number {
  if (have < RECORD_HEADER_LEN) return 0;
  if (buf[0] !== 0x16) throw new Error("Bad ServerHello: not a handshake record");
  const ccsEnd = RECORD_HEADER_LEN + ((buf[3]! << 8) | buf[4]!) + CCS.length;
  if (have < ccsEnd + RECORD_HEADER_LEN) return 0;
  if (buf[ccsEnd] !== 0x17) throw new Error("Bad ServerHello: no ApplicationData record");
  return ccsEnd + RECORD_HEADER_LEN + ((buf[ccsEnd + 3]! << 8) | buf[ccsEnd + 4]!);
}

/** One prepared connection: connect, send what was prepared, check what comes back, close. */
async function _runPrepared(
  target: Target,
  p: Prepared,
  buf: Uint8Array,
  watch: { conn: Deno.TcpConn | null; since: number },
): Promise<void> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: target.port });
  watch.conn = conn;
  watch.since = performance.now();
  try {
    conn.setNoDelay(true);
    if (p.hello) {
      await writeAll(conn, p.hello);
      let have = 0;
      let end = 0;
      while (end === 0 || have < end) {
        const n = await conn.read(buf.subarray(have));
        if (n === null) {
          throw new Error(`Proxy closed during the TLS handshake after ${have} bytes`);
        }
        have += n;
        if (end === 0) end = _serverHelloEnd(buf, have);
        if (end > buf.length) throw new Error(`ServerHello of ${end} bytes`);
      }
      if (have !== end) throw new Error("Unexpected bytes after the ServerHello");
    }
    if (p.flight && p.echo) {
      await writeAll(conn, p.flight);
      const reader = p.hello ? new TlsRecordReader() : null;
      let have = 0;
      while (have < p.echo.length) {
        const n = await conn.read(buf.subarray(have));
        if (n === null) throw new Error(`Connection closed after ${have} bytes of the echo`);
        let len = n;
        if (reader) {
          const r = reader.unwrap(buf.subarray(have, have + n));
          if (typeof r === "string") throw new Error(`Bad TLS record from the proxy: ${r}`);
          len = r;
        }
        have += len;
      }
      if (have !== p.echo.length || !p.echo.every((b, i) => b === buf[i])) {
        throw new Error("Echo differs from the ping");
      }
    }
  } finally {
    watch.conn = null;
    closeQuietly(conn);
  }
}

async function _preparedHandshakes(
  target: Target,
  options: {
    workers: number;
    warmupS: number;
    seconds: number;
    prepared: number;
    stopAfter: "hello" | "ping";
    pids: Record<string, number>;
  },
) {
  if (options.stopAfter === "hello" && target.mode !== "ee") {
    throw new RangeError("--stop-after hello needs --mode ee");
  }
  const errors = new Errors();
  const tPrepare = performance.now();
  const pool: (Prepared | undefined)[] = Array.from(
    { length: options.prepared },
    () => _prepare(target, options.stopAfter),
  );
  const prepareS = (performance.now() - tPrepare) / 1000;
  const pids = { ...options.pids, load: Deno.pid };
  let next = 0;
  let exhausted = false;
  let counting = false;
  let done = 0;
  let cpu0: Record<string, number> = {};
  let machine0: number | null = null;
  let t0 = 0;
  const start = performance.now();
  const deadline = start + (options.warmupS + options.seconds) * 1000;
  const warm = setTimeout(() => {
    cpu0 = _cpuOf(pids);
    machine0 = _machineCpuSeconds();
    t0 = performance.now();
    counting = true;
  }, options.warmupS * 1000);
  // One watchdog instead of a timer per handshake: a connection stuck for OP_TIMEOUT_MS is closed.
  const watches = Array.from({ length: options.workers }, () => ({
    conn: null as Deno.TcpConn | null,
    since: 0,
  }));
  const watchdog = setInterval(() => {
    const now = performance.now();
    for (const w of watches) {
      if (w.conn && now - w.since > OP_TIMEOUT_MS) {
        errors.add(new Error(`Timed out after ${OP_TIMEOUT_MS} ms: prepared handshake`));
        closeQuietly(w.conn);
        w.conn = null;
      }
    }
  }, 1000);
  await Promise.all(watches.map(async (watch) => {
    const buf = new Uint8Array(16384);
    while (performance.now() < deadline) {
      const p = pool[next];
      if (!p) {
        exhausted = true;
        return;
      }
      pool[next++] = undefined;
      try {
        await _runPrepared(target, p, buf, watch);
        if (counting) done++;
      } catch (e) {
        errors.add(e);
        if (errors.count > 100) return;
      }
    }
  }));
  clearTimeout(warm);
  clearInterval(watchdog);
  if (!counting) throw new Error("The prepared connections ran out during the warmup");
  const seconds = (performance.now() - t0) / 1000;
  const cpu1 = _cpuOf(pids);
  const machine1 = _machineCpuSeconds();
  const cpu: Record<string, number> = {};
  for (const name of Object.keys(pids)) cpu[name] = cpu1[name]! - cpu0[name]!;
  return {
    handshakes: done,
    seconds,
    per_second: done / seconds,
    cpu_s: cpu,
    ..._machineDelta(machine0, machine1),
    stop_after: options.stopAfter,
    prepared: options.prepared,
    prepare_s: prepareS,
    exhausted,
    ...errors.toJSON(),
  };
}

async function _idle(
  target: Target,
  options: {
    clients: number;
    concurrency: number;
    settleS: number;
    pids: Record<string, number>;
    memSignal: number | null;
    mpPort: number | null;
  },
) {
  const errors = new Errors();
  // Warm up first: code paths paged in and compiled, pools and tables sized, so that the
  // baseline already holds what does not grow with the number of clients.
  const warm = await Promise.allSettled(
    Array.from({ length: WARMUP_CLIENTS }, () => _openAndPing(target)),
  );
  for (const w of warm) w.status === "fulfilled" ? w.value.close() : errors.add(w.reason);
  await delay(1000);
  const before = _memOf(options.pids);
  await _memSignal(options.memSignal);
  const clients: Client[] = [];
  const t0 = performance.now();
  let next = 0;
  await Promise.all(Array.from({ length: options.concurrency }, async () => {
    while (next < options.clients) {
      next++;
      try {
        clients.push(await _openAndPing(target));
      } catch (e) {
        errors.add(e);
      }
    }
  }));
  const openS = (performance.now() - t0) / 1000;
  await delay(options.settleS * 1000);
  const loaded = _memOf(options.pids);
  const mpConnections = _mpConnections(options.mpPort, options.pids);
  await _memSignal(options.memSignal);

  // Every client must still be there: one more ping-pong each.
  let alive = 0;
  let index = 0;
  await Promise.all(Array.from({ length: options.concurrency }, async () => {
    while (index < clients.length) {
      const c = clients[index++]!;
      try {
        await _pingAgain(c);
        alive++;
      } catch (e) {
        errors.add(e);
      }
    }
  }));
  for (const c of clients) c.close();
  await delay(1000);
  const after = _memOf(options.pids);

  const perClient: Record<string, number> = {};
  const anonPerClient: Record<string, number> = {};
  for (const name of Object.keys(options.pids)) {
    perClient[name] = (loaded[name]!.rss - before[name]!.rss) / Math.max(1, clients.length);
    anonPerClient[name] = (loaded[name]!.anon - before[name]!.anon) / Math.max(1, clients.length);
  }
  return {
    clients: clients.length,
    alive,
    open_s: openS,
    memory_before: before,
    memory_loaded: loaded,
    memory_after_close: after,
    rss_per_client: perClient,
    anon_per_client: anonPerClient,
    ...(mpConnections === null ? {} : { mp_connections: mpConnections }),
    ...errors.toJSON(),
  };
}

/** Ask an in-process bench proxy to print its memory breakdown (after RSS was read). */
async function _memSignal(pid: number | null): Promise<void> {
  if (pid === null) return;
  Deno.kill(pid, "SIGUSR1");
  await delay(500);
}

function _pids(spec: string | undefined): Record<string, number> {
  const out: Record<string, number> = {};
  for (const part of (spec ?? "").split(",").filter(Boolean)) {
    const [name, pid] = part.split("=");
    if (!name || !Number.isInteger(Number(pid))) throw new RangeError(`Invalid --pids: "${spec}"`);
    out[name] = Number(pid);
  }
  return out;
}

async function _main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      scenario: { type: "string" },
      mode: { type: "string" },
      port: { type: "string" },
      secret: { type: "string", default: "00000000000000000000000000000000" },
      sni: { type: "string", default: "example.com" },
      pids: { type: "string" },
      streams: { type: "string", default: "1" },
      warmup: { type: "string", default: "1" },
      seconds: { type: "string", default: "3" },
      pings: { type: "string", default: "2000" },
      workers: { type: "string", default: "8" },
      clients: { type: "string", default: "5000" },
      concurrency: { type: "string", default: "64" },
      settle: { type: "string", default: "2" },
      "mem-signal": { type: "string" },
      framed: { type: "boolean", default: false },
      "mp-port": { type: "string" },
      packet: { type: "string", default: "16384" },
      "max-padding": { type: "string", default: "3" },
      prepared: { type: "string", default: "20000" },
      "stop-after": { type: "string", default: "ping" },
    },
  });
  // Framed bulk writes: packets of this many bytes, as many as make about 64 KiB per write.
  PACKET = Number(values.packet);
  if (!Number.isInteger(PACKET) || PACKET < 4 || PACKET % 4 !== 0 || PACKET > 16384) {
    throw new RangeError(`Invalid --packet: "${values.packet}" (4-16384, a multiple of 4)`);
  }
  PACKETS_PER_WRITE = Math.max(1, Math.floor(65536 / (PACKET + FRAME_HEADER_LEN)));
  MAX_PADDING = Number(values["max-padding"]);
  if (!Number.isInteger(MAX_PADDING) || MAX_PADDING < 0 || MAX_PADDING > 64) {
    throw new RangeError(`Invalid --max-padding: "${values["max-padding"]}" (0-64)`);
  }
  const mode = values.mode as LoadMode;
  if (!["dd", "ee", "relay"].includes(mode)) throw new RangeError(`Invalid --mode: "${mode}"`);
  const target: Target = {
    port: parsePort(values.port, "port"),
    mode,
    secret: parseHex(values.secret),
    sni: values.sni,
    framed: values.framed,
  };
  const pids = _pids(values.pids);
  const mpPort = values["mp-port"] ? parsePort(values["mp-port"], "mp-port") : null;
  exitWhenStdinCloses();
  let result: unknown;
  switch (values.scenario) {
    case "throughput":
      result = await _throughput(target, {
        streams: Number(values.streams),
        warmupS: Number(values.warmup),
        seconds: Number(values.seconds),
        pids,
        mpPort,
      });
      break;
    case "latency":
      result = await _latency(target, { pings: Number(values.pings) });
      break;
    case "handshakes":
      result = await _handshakes(target, {
        workers: Number(values.workers),
        seconds: Number(values.seconds),
        pids,
      });
      break;
    case "prepared-handshakes": {
      const stopAfter = values["stop-after"];
      if (stopAfter !== "hello" && stopAfter !== "ping") {
        throw new RangeError(`Invalid --stop-after: "${stopAfter}" (hello or ping)`);
      }
      const prepared = Number(values.prepared);
      if (!Number.isInteger(prepared) || prepared < 1) {
        throw new RangeError(`Invalid --prepared: "${values.prepared}"`);
      }
      result = await _preparedHandshakes(target, {
        workers: Number(values.workers),
        warmupS: Number(values.warmup),
        seconds: Number(values.seconds),
        prepared,
        stopAfter,
        pids,
      });
      break;
    }
    case "idle":
      result = await _idle(target, {
        clients: Number(values.clients),
        concurrency: Number(values.concurrency),
        settleS: Number(values.settle),
        pids,
        memSignal: values["mem-signal"] ? Number(values["mem-signal"]) : null,
        mpPort,
      });
      break;
    default:
      throw new RangeError(`Invalid --scenario: "${values.scenario}"`);
  }
  console.log(
    JSON.stringify({
      scenario: values.scenario,
      mode,
      framed: target.framed,
      ...(result as object),
    }),
  );
}

if (import.meta.main) {
  let code = 0;
  try {
    await _main();
  } catch (e) {
    console.error(`bench_load: ${e instanceof Error ? e.stack : String(e)}`);
    code = 2;
  }
  // The stdin watcher would keep the process alive.
  Deno.exit(code);
}
