/**
 * Split-mode link framing: plain functions or a TransformStream pair? Moves the same DATA frames
 * (16 client streams, round robin, payloads of 1, 16 or 64 KiB) over one real loopback TCP link
 * from a "front" (this process) to a "back" (a child process, so each end has its own core as
 * on two real machines), through the real {@linkcode LinkFrameWriter} / {@linkcode RecordSealer}
 * / {@linkcode RecordOpener} / {@linkcode LinkFrameReader} (AES-256-GCM records, OpenSSL FFI
 * backend when it loads), in three ways:
 *
 * - `plain`: what lib/link/connection.ts does. One turn's frames (one per stream) go into a
 *   LinkFrameWriter, are sealed into records and written with `conn.write`; the back reads into
 *   one reused 64 KiB buffer, opens the records in place and decodes the frames into a sink.
 * - `streams`: the natural stream design with frames as chunks. Front: a frame encoder
 *   TransformStream (frame in, frame bytes out) and a record sealer TransformStream (bytes in,
 *   records out) piped to `conn.writable`. Back: `conn.readable` through a record opener
 *   (socket chunk in, one record plaintext out per record) and a frame decoder (plaintext in,
 *   one frame out per frame) into a WritableStream sink. Chunks are copied only where the real
 *   functions reuse a buffer (the writer's and sealer's output, a record or frame split across
 *   chunks); whole records and frames are passed on as views.
 * - `batched`: the same pair with the chunk cost amortised as far as it goes: the front writes
 *   one chunk per turn (the turn's frames as an array, sealed together as in `plain`), the
 *   opener emits one array of plaintexts per socket chunk and the decoder one array of frames.
 *
 * The front's session keys come from a real createLinkHello / answerLinkHello / finishLinkHello
 * run in this process; the back's half is handed to the child in a plaintext preamble on the
 * bench connection (a bench shortcut, not how links work). The back checks every frame's length
 * and stream id and answers one byte when all payload arrived; MB/s is payload bytes over that
 * time, and CPU is user + system time of both processes (/proc), per MB of payload.
 *
 * Usage: `deno run -A scripts/bench_link_streams.ts [--mib 128] [--runs 3]`; prints a table
 * (medians of the runs) and one `BENCH_JSON {...}` line.
 *
 * Measured on this 2-core machine (Deno 2.9.6, OpenSSL backend, 128 MiB per run, median of 3;
 * the machine was shared with other test load, ~2.3 load average), MB/s of payload and the
 * ratio to `plain`; CPU is both processes' (front + back) microseconds per MB of payload:
 *
 * | payload | plain | streams | ratio | batched | ratio | CPU us/MB plain / streams / batched |
 * |---|---:|---:|---:|---:|---:|---|
 * | 1 KiB   | 547 |  70 | 0.13 | 400 | 0.73 | 1714 / 14305 / 2533 |
 * | 16 KiB  | 772 | 368 | 0.48 | 403 | 0.52 | 1267 /  2682 / 2459 |
 * | 64 KiB  | 635 | 477 | 0.75 | 480 | 0.76 | 1565 /  2012 / 2086 |
 *
 * Over three invocations the ratios stayed in these bands: streams/plain 0.12-0.20 (1 KiB),
 * 0.42-0.59 (16 KiB), 0.49-0.81 (64 KiB); batched/plain 0.52-0.73, 0.52-0.59, 0.71-0.76.
 *
 * Conclusion: keep plain functions for the link's framing. Frames as stream chunks cost 20-90%
 * of the throughput and 1.3-10x the CPU per MB (at 1 KiB every frame becomes its own record,
 * write and promise chain); even with the chunk cost amortised over a whole turn or socket read
 * (`batched`), the pair still loses a quarter to a half of the throughput and 1.3-1.9x CPU. A
 * link's long life does not amortise this: the cost is per chunk, not per connection, and it
 * comes from the promise hops between stages plus a fresh buffer per chunk (the writer, sealer
 * and reader reuse their buffers, so a stage must copy before handing on; `conn.readable`
 * allocates every read) where the plain path reuses one buffer per direction. This matches
 * /work/shared/perf-facts.md ("Web Streams cost per chunk ... costly on the bulk path").
 *
 * @module
 */
import { parseArgs } from "node:util";
import { defaultCipherBackend } from "../lib/crypto.ts";
import { GROUP_X25519, parseClientHello } from "../lib/protocol/fake_tls.ts";
import { LinkFrameReader, type LinkFrameSink, LinkFrameWriter } from "../lib/protocol/link.ts";
import {
  answerLinkHello,
  createLinkHello,
  finishLinkHello,
  type LinkKeys,
  RecordOpener,
  RecordSealer,
} from "../lib/protocol/link_records.ts";
import { closeQuietly, cpuSeconds, exitWhenStdinCloses, writeAll } from "./_bench_common.ts";

const MODES = ["plain", "streams", "batched"] as const;
type Mode = typeof MODES[number];
const SIZES = [1024, 16384, 65536] as const;
const STREAMS = 16;
/** Preamble: u8 mode, u32 payload size, u32 frame count, back's recv key (32) and iv (12). */
const PREAMBLE = 1 + 4 + 4 + 32 + 12;
const READ_BUFFER = 64 * 1024;

/** One DATA frame as a stream chunk. */
interface Frame {
  stream: number;
  payload: Uint8Array;
}

/** What the record opener stream emits: one plaintext per record, or one array per chunk. */
type Plain = Uint8Array | Uint8Array[];

// ---------------------------------------------------------------------------------------------
// Back (child process): receive, check, answer one byte when everything arrived.

/** Counts and checks the DATA frames of one run; `done` resolves once all arrived. */
class Tally {
  #left: number;
  readonly #size: number;
  #resolve!: () => void;
  readonly done = new Promise<void>((r) => this.#resolve = r);

  constructor(frames: number, size: number) {
    this.#left = frames;
    this.#size = size;
  }

  /** Frames still to come. */
  get left(): number {
    return this.#left;
  }

  frame(stream: number, payload: Uint8Array): void {
    if (
      payload.length !== this.#size || stream < 1 || stream > STREAMS ||
      payload[0] !== stream || payload[payload.length - 1] !== stream
    ) {
      throw new Error(`bad frame: stream ${stream}, ${payload.length} bytes`);
    }
    if (--this.#left === 0) this.#resolve();
  }
}

function _dataSink(onData: (stream: number, payload: Uint8Array) => void): LinkFrameSink {
  const unexpected = () => {
    throw new Error("unexpected frame type");
  };
  return {
    hello: unexpected,
    welcome: unexpected,
    ping: unexpected,
    pong: unexpected,
    goaway: unexpected,
    open: unexpected,
    opened: unexpected,
    data: (s, p) => onData(s, p),
    answer: unexpected,
    quickAck: unexpected,
    ack: unexpected,
    close: unexpected,
  };
}

async function _readExactly(conn: Deno.TcpConn, n: number): Promise<Uint8Array> {
  const buf = new Uint8Array(n);
  let have = 0;
  while (have < n) {
    // Read no further than the preamble: the records after it belong to the run.
    const k = await conn.read(buf.subarray(have));
    if (k === null) throw new Error("eof in preamble");
    have += k;
  }
  return buf;
}

async function _receivePlain(
  conn: Deno.TcpConn,
  buf: Uint8Array,
  opener: RecordOpener,
  tally: Tally,
): Promise<void> {
  const reader = new LinkFrameReader();
  const sink = _dataSink((s, p) => tally.frame(s, p));
  let bad: string | null = null;
  const onPlain = (plain: Uint8Array) => {
    const r = reader.push(plain, sink);
    if (r !== null) bad = r;
  };
  while (tally.left > 0) {
    const n = await conn.read(buf);
    if (n === null) throw new Error("eof before all frames");
    const e = opener.push(buf.subarray(0, n), onPlain);
    if (e !== null || bad !== null) throw new Error(`link error: ${e ?? bad}`);
  }
}

/** Record opener as a TransformStream: socket chunks in, record plaintexts out. */
function _openerStream(opener: RecordOpener, batched: boolean): TransformStream<Uint8Array, Plain> {
  return new TransformStream<Uint8Array, Plain>({
    transform(chunk, c) {
      // Whole records are opened in place in `chunk` (which is ours); a record split across
      // chunks is opened in the opener's reused buffer and must be copied.
      if (batched) {
        const out: Uint8Array[] = [];
        const e = opener.push(chunk, (p) => out.push(p.buffer === chunk.buffer ? p : p.slice()));
        if (e !== null) throw new Error(`record error: ${e}`);
        if (out.length > 0) c.enqueue(out);
      } else {
        const e = opener.push(chunk, (p) => c.enqueue(p.buffer === chunk.buffer ? p : p.slice()));
        if (e !== null) throw new Error(`record error: ${e}`);
      }
    },
  });
}

/** Frame decoder as a TransformStream: plaintexts in, frames out. */
function _decoderStream(batched: boolean): TransformStream<Plain, Frame | Frame[]> {
  const reader = new LinkFrameReader();
  let plain: Uint8Array = new Uint8Array(0);
  let emit: (f: Frame) => void = () => {};
  // A frame that lies whole in the plaintext is a view of it (ours); one split across
  // plaintexts lies in the reader's reused buffer and must be copied.
  const sink = _dataSink((stream, p) =>
    emit({ stream, payload: p.buffer === plain.buffer ? p : p.slice() })
  );
  const push = (p: Uint8Array) => {
    plain = p;
    const r = reader.push(p, sink);
    if (r !== null) throw new Error(`frame error: ${r}`);
  };
  return new TransformStream<Plain, Frame | Frame[]>({
    transform(chunk, c) {
      if (batched) {
        const out: Frame[] = [];
        emit = (f) => out.push(f);
        for (const p of chunk as Uint8Array[]) push(p);
        if (out.length > 0) c.enqueue(out);
      } else {
        emit = (f) => c.enqueue(f);
        push(chunk as Uint8Array);
      }
    },
  });
}

async function _receiveStreams(
  conn: Deno.TcpConn,
  opener: RecordOpener,
  tally: Tally,
  batched: boolean,
): Promise<{ piped: Promise<void> }> {
  const sink = new WritableStream<Frame | Frame[]>({
    write(chunk) {
      if (batched) { for (const f of chunk as Frame[]) tally.frame(f.stream, f.payload); }
      else tally.frame((chunk as Frame).stream, (chunk as Frame).payload);
    },
  });
  const piped = conn.readable
    .pipeThrough(_openerStream(opener, batched))
    .pipeThrough(_decoderStream(batched))
    .pipeTo(sink);
  await Promise.race([tally.done, piped.then(() => Promise.reject(new Error("eof too early")))]);
  // The front closes the link once it has our answer; the pipe then ends. (Wrapped: an async
  // function returning a promise would wait for it.)
  return { piped };
}

async function _serveRun(conn: Deno.TcpConn): Promise<void> {
  try {
    conn.setNoDelay(true);
    const pre = await _readExactly(conn, PREAMBLE);
    const view = new DataView(pre.buffer);
    const mode = MODES[pre[0]!]!;
    const size = view.getUint32(1, true);
    const frames = view.getUint32(5, true);
    const opener = new RecordOpener(pre.slice(9, 41), pre.slice(41, 53));
    const tally = new Tally(frames, size);
    if (mode === "plain") {
      const buf = new Uint8Array(READ_BUFFER);
      await _receivePlain(conn, buf, opener, tally);
      await writeAll(conn, Uint8Array.of(1));
      while ((await conn.read(buf)) !== null) {
        // Wait for the front to close the link.
      }
    } else {
      const { piped } = await _receiveStreams(conn, opener, tally, mode === "batched");
      await writeAll(conn, Uint8Array.of(1));
      await piped;
    }
    opener.close();
  } catch (e) {
    console.error(`back: ${e instanceof Error ? e.message : e}`);
  } finally {
    closeQuietly(conn);
  }
}

async function _back(): Promise<void> {
  exitWhenStdinCloses();
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  console.log(`listening ${(listener.addr as Deno.NetAddr).port}`);
  for await (const conn of listener) _serveRun(conn);
}

// ---------------------------------------------------------------------------------------------
// Front (this process): dial, send, time.

/** Both ends' keys from a real link handshake, run in memory. */
function _handshake(): { front: LinkKeys; back: LinkKeys } {
  const secret = crypto.getRandomValues(new Uint8Array(16));
  const nowSec = Math.floor(Date.now() / 1000);
  const state = createLinkHello({ secret, domain: "www.example.com", nowSec });
  const step = parseClientHello(state.record);
  if (step.kind !== "hello") throw new Error(`hello: ${step.kind}`);
  const answered = answerLinkHello(step.hello, secret, {
    appDataLength: 2500,
    extensionOrder: "key_share_first",
    keyShareGroup: GROUP_X25519,
  });
  if ("reject" in answered) throw new Error(`answer: ${answered.reject}`);
  const done = finishLinkHello(answered.answer, state, secret);
  if (done.kind !== "ok") throw new Error(`finish: ${done.kind}`);
  return { front: done.keys, back: answered.keys };
}

/** Per stream, one payload of `size` bytes filled with the stream id (the back checks it). */
function _payloads(size: number): Uint8Array[] {
  const out = [new Uint8Array(0)];
  for (let s = 1; s <= STREAMS; s++) out.push(new Uint8Array(size).fill(s));
  return out;
}

/** As LinkConnection.#flush: one turn's frames (one per stream), sealed and written together. */
async function _sendPlain(conn: Deno.TcpConn, sealer: RecordSealer, size: number, frames: number) {
  const payloads = _payloads(size);
  const writer = new LinkFrameWriter();
  let sent = 0;
  while (sent < frames) {
    for (let s = 1; s <= STREAMS && sent < frames; s++, sent++) {
      writer.data(s, payloads[s]!, false);
    }
    await writeAll(conn, sealer.seal(writer.take()));
  }
}

async function _sendStreams(
  conn: Deno.TcpConn,
  sealer: RecordSealer,
  size: number,
  frames: number,
  batched: boolean,
) {
  const payloads = _payloads(size);
  const frameWriter = new LinkFrameWriter();
  // The writer's and the sealer's output are views of reused buffers: what goes downstream is
  // copied, since the next chunk may be transformed before the socket took this one.
  const encoder = new TransformStream<Frame | Frame[], Uint8Array>({
    transform(chunk, c) {
      if (batched) {
        for (const f of chunk as Frame[]) frameWriter.data(f.stream, f.payload, false);
      } else frameWriter.data((chunk as Frame).stream, (chunk as Frame).payload, false);
      c.enqueue(frameWriter.take().slice());
    },
  });
  const sealStream = new TransformStream<Uint8Array, Uint8Array>({
    transform(plain, c) {
      c.enqueue(sealer.seal(plain).slice());
    },
  });
  const piped = encoder.readable.pipeThrough(sealStream).pipeTo(conn.writable, {
    preventClose: true,
  });
  const w = encoder.writable.getWriter();
  const failed = (e: unknown) => {
    throw e;
  };
  let sent = 0;
  while (sent < frames) {
    if (batched) {
      const turn: Frame[] = [];
      for (let s = 1; s <= STREAMS && sent < frames; s++, sent++) {
        turn.push({ stream: s, payload: payloads[s]! });
      }
      await w.ready;
      w.write(turn).catch(failed);
    } else {
      for (let s = 1; s <= STREAMS && sent < frames; s++, sent++) {
        await w.ready;
        w.write({ stream: s, payload: payloads[s]! }).catch(failed);
      }
    }
  }
  await w.close();
  await piped;
}

interface RunResult {
  mbps: number;
  /** Both processes' CPU microseconds per MB of payload. */
  cpuUsPerMb: number;
  frontCpuUsPerMb: number;
  backCpuUsPerMb: number;
}

async function _run(port: number, backPid: number, mode: Mode, size: number, mib: number) {
  const frames = Math.max(STREAMS, Math.round(mib * 1024 * 1024 / size));
  const { front, back } = _handshake();
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  conn.setNoDelay(true);
  const pre = new Uint8Array(PREAMBLE);
  const view = new DataView(pre.buffer);
  pre[0] = MODES.indexOf(mode);
  view.setUint32(1, size, true);
  view.setUint32(5, frames, true);
  pre.set(back.recvKey, 9);
  pre.set(back.recvIv, 41);
  await writeAll(conn, pre);
  const sealer = new RecordSealer(front.sendKey, front.sendIv);
  const cpu0 = [cpuSeconds(Deno.pid), cpuSeconds(backPid)];
  const t0 = performance.now();
  // The back's one-byte answer says every frame arrived and checked out.
  const answer = (async () => {
    const b = new Uint8Array(1);
    if ((await conn.read(b)) !== 1) throw new Error("the back closed without answering");
  })();
  if (mode === "plain") await _sendPlain(conn, sealer, size, frames);
  else await _sendStreams(conn, sealer, size, frames, mode === "batched");
  await answer;
  const seconds = (performance.now() - t0) / 1000;
  const cpu1 = [cpuSeconds(Deno.pid), cpuSeconds(backPid)];
  closeQuietly(conn);
  sealer.close();
  const mb = frames * size / 1e6;
  const frontCpu = cpu1[0]! - cpu0[0]!;
  const backCpu = cpu1[1]! - cpu0[1]!;
  return {
    mbps: mb / seconds,
    cpuUsPerMb: (frontCpu + backCpu) * 1e6 / mb,
    frontCpuUsPerMb: frontCpu * 1e6 / mb,
    backCpuUsPerMb: backCpu * 1e6 / mb,
  } satisfies RunResult;
}

function _median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

async function _front(mib: number, runs: number): Promise<void> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", import.meta.filename!, "--role", "back"],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let out = "";
  while (!out.includes("\n")) {
    const r = await lines.read();
    if (r.done) throw new Error("the back exited");
    out += r.value;
  }
  const port = Number(out.match(/listening (\d+)/)?.[1]);
  lines.releaseLock();
  const results = new Map<string, RunResult[]>();
  try {
    // Warm both processes up (JIT, OpenSSL, socket buffers) on every path.
    for (const mode of MODES) for (const size of SIZES) await _run(port, child.pid, mode, size, 8);
    for (let i = 0; i < runs; i++) {
      for (const size of SIZES) {
        for (const mode of MODES) {
          const r = await _run(port, child.pid, mode, size, mib);
          const key = `${mode}/${size}`;
          results.set(key, [...(results.get(key) ?? []), r]);
        }
      }
    }
  } finally {
    await child.stdin.close();
    await child.status;
  }

  const med = (mode: Mode, size: number, f: (r: RunResult) => number) =>
    _median(results.get(`${mode}/${size}`)!.map(f));
  const json: Record<string, unknown> = {
    bench: "link_streams",
    backend: defaultCipherBackend(),
    streams: STREAMS,
    mibPerRun: mib,
    runs,
    results: {},
  };
  console.log(
    `link framing over loopback TCP, front -> back processes, ${STREAMS} streams, ` +
      `${mib} MiB per run, median of ${runs}, ${defaultCipherBackend()} AES-GCM`,
  );
  const head = ["payload", ...MODES.map((m) => `${m} MB/s`), "streams/plain", "batched/plain"];
  const rows: string[][] = [];
  const cpuRows: string[][] = [];
  for (const size of SIZES) {
    const mbps = MODES.map((m) => med(m, size, (r) => r.mbps));
    const label = `${size / 1024} KiB`;
    rows.push([
      label,
      ...mbps.map((x) => x.toFixed(0)),
      (mbps[1]! / mbps[0]!).toFixed(2),
      (mbps[2]! / mbps[0]!).toFixed(2),
    ]);
    cpuRows.push([
      label,
      ...MODES.map((m) =>
        `${med(m, size, (r) => r.cpuUsPerMb).toFixed(0)} ` +
        `(${med(m, size, (r) => r.frontCpuUsPerMb).toFixed(0)}+` +
        `${med(m, size, (r) => r.backCpuUsPerMb).toFixed(0)})`
      ),
    ]);
    const per: Record<string, unknown> = {};
    for (const m of MODES) {
      per[m] = {
        mbps: Number(med(m, size, (r) => r.mbps).toFixed(1)),
        cpuUsPerMb: Number(med(m, size, (r) => r.cpuUsPerMb).toFixed(1)),
        frontCpuUsPerMb: Number(med(m, size, (r) => r.frontCpuUsPerMb).toFixed(1)),
        backCpuUsPerMb: Number(med(m, size, (r) => r.backCpuUsPerMb).toFixed(1)),
      };
    }
    per.streamsOverPlain = Number((mbps[1]! / mbps[0]!).toFixed(3));
    per.batchedOverPlain = Number((mbps[2]! / mbps[0]!).toFixed(3));
    (json.results as Record<string, unknown>)[String(size)] = per;
  }
  _print(head, rows);
  console.log("\nCPU us per MB of payload, both processes (front+back):");
  _print(["payload", ...MODES], cpuRows);
  console.log(`BENCH_JSON ${JSON.stringify(json)}`);
}

function _print(head: string[], rows: string[][]): void {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)).join("  ");
  console.log(line(head));
  for (const r of rows) console.log(line(r));
}

if (import.meta.main) {
  const args = parseArgs({
    args: Deno.args,
    options: {
      role: { type: "string", default: "front" },
      mib: { type: "string", default: "128" },
      runs: { type: "string", default: "3" },
    },
  });
  if (args.values.role === "back") {
    await _back();
  } else {
    const mib = Number(args.values.mib);
    const runs = Number(args.values.runs);
    if (!(mib > 0) || !Number.isInteger(runs) || runs < 1) {
      throw new RangeError("--mib must be > 0 and --runs a positive integer");
    }
    await _front(mib, runs);
  }
}
