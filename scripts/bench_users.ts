/**
 * The `users` part of `deno task bench`: how handshakes per second hold up as a port gets more
 * users. One real proxy process (`main.ts run --config FILE --workers 1`) per user count (1, 100
 * and 1,000 users, all on one listener, each with their own secret), the runs of the counts
 * interleaved, every figure also as a ratio to the 1-user rate of the same sitting.
 *
 * The load generator is this file run as its own process (`--load`). Every client connects
 * from one of 1,000 loopback addresses, 127.1.x.y, chosen at random (the client socket is bound
 * to it before connecting; Linux routes all of 127/8 to lo), and address `a` belongs to user
 * `a mod N`: each user's clients come from that user's own addresses, as an app's do from its
 * phone, and the proxy remembers which user an address matched last (lib/guard/users.ts), so
 * this is the case where that hint works (every address connects once before the clock
 * starts). The same 1,000 addresses for every user count: a socket bound before it connects
 * gets its port from bind(), which must skip every port of that address in TIME_WAIT, so a
 * single address for the 1-user run would slow the load generator down to a few hundred
 * connections per second within a minute (measured here). The cold case connects
 * every client from an address the proxy has never seen (127.2.0.0 up, a new one each time):
 * the proxy then tries the listener's own secret and then the users, most recently matched
 * first, about half of them on average. Measured for fake-TLS (`ee`: ClientHello, ServerHello,
 * then the obfuscated2 init and a 100-byte packet in a record) and `dd` (init and packet),
 * the packet echoed through the echo DC of the other parts and checked. Every byte the clients
 * send is computed before the clock starts (distinct signed hellos and inits, so none is a
 * replay), so the load generator makes only socket calls and the proxy's matching shows.
 *
 * Reported: handshakes per second and the proxy's CPU per handshake, for each user count, each
 * mode, known and new client addresses, and the ratios to 1 user (known addresses). Target:
 * with 1,000 users (known addresses) at least 0.5x the 1-user rate, worst of `ee` and `dd`.
 *
 * bench.ts drives it through {@linkcode UsersHost} and prints {@linkcode usersTable} and
 * {@linkcode usersTargets}.
 *
 * @module
 */
import net from "node:net";
import { parseArgs } from "node:util";
import { randomBytes } from "../lib/crypto.ts";
import {
  RECORD_HEADER_LEN,
  signClientHello,
  writeAppDataHeader,
} from "../lib/protocol/fake_tls.ts";
import { createInit, isValidInitRandom } from "../lib/protocol/obfuscated2.ts";
import { buildClientHello } from "../lib/protocol/client_hello.ts";
import { CLOCK_TICKS_PER_SECOND, cpuSeconds, exitWhenStdinCloses } from "./_bench_common.ts";

/** The load generator's JSON result. */
// deno-lint-ignore no-explicit-any
export type LoadResult = Record<string, any>;

export type UsersMode = "ee" | "dd";
/** Client addresses: each user's own (known to the proxy), or never seen before. */
export type UsersScenario = "known" | "new";

/** A child process the host started. */
export interface UsersChild {
  readonly name: string;
  readonly pid: number;
  assertRunning(): void;
  stop(): Promise<void>;
}

/** What bench.ts gives the users part. */
export interface UsersHost {
  settings: { warmupS: number; hsSeconds: number; repeat: number };
  /** Directory for config files. */
  tmp: string;
  /** The config of the other parts' proxy (one listener on `port`, DC 2 = the echo DC). */
  configYaml(port: number): string;
  /** The listener's fake-TLS domain (the SNI of the hellos). */
  tlsDomain: string;
  /** `main.ts run --config FILE --workers 1`; resolves once every port listens. */
  spawnProxy(name: string, configPath: string, ports: readonly number[]): Promise<UsersChild>;
  /** Run `deno run --allow-all <args>` and return its last JSON line (pid of `dc` as given). */
  runJson(name: string, args: string[], timeoutS: number): Promise<LoadResult>;
  /** The echo DC's pid (its CPU is reported too). */
  dcPid: number;
  /** Count the load generator's errors in the run's totals. */
  noteErrors(r: LoadResult): void;
  freePort(): number;
  /** Print a progress line (stderr). */
  progress(line: string): void;
  /** Record that `what` could not be measured. */
  fail(what: string, message: string): void;
}

/** User counts measured; the first is the base of every ratio. */
export const USER_COUNTS = [1, 100, 1000] as const;
const MODES: readonly UsersMode[] = ["ee", "dd"];
const SCENARIOS: readonly UsersScenario[] = ["known", "new"];
/** Connections at once. */
const CONCURRENCY = 16;
/** Prepared connections per second of a run: more than the fastest run here gets through. */
const PREPARED_PER_S = 8000;
/** Known client addresses, shared out among the users (see the module doc). */
const ADDRESSES = 1000;
/** Target; measured and reported, never asserted. */
const TARGET_RATIO = 0.5;
const PING_LEN = 100;
const DC_ID = 2;
const OP_TIMEOUT_MS = 15_000;
const CCS = Uint8Array.of(0x14, 0x03, 0x03, 0x00, 0x01, 0x01);

/** Known client address `i`: 127.1.x.y (never .0 or .255). */
export function knownAddress(i: number): string {
  return `127.${1 + Math.floor(i / 64516)}.${1 + (Math.floor(i / 254) % 254)}.${1 + (i % 254)}`;
}

/** The `k`-th address never used before by a client: 127.2.0.0 and up. */
export function newAddress(k: number): string {
  return `127.${2 + Math.floor(k / 64516)}.${1 + (Math.floor(k / 254) % 254)}.${1 + (k % 254)}`;
}

/** A figure for one user count, and that figure over the 1-user figure (known addresses). */
export interface UsersFigure {
  value: number | null;
  ratio: number | null;
}

export interface UsersResults {
  counts: number[];
  /** Mode -> scenario -> user count -> handshakes per second. */
  handshakes_per_s: Partial<
    Record<UsersMode, Partial<Record<UsersScenario, Record<string, UsersFigure>>>>
  >;
  /** Mode -> scenario -> user count -> proxy CPU per handshake (us). */
  cpu_us_per_handshake: Partial<
    Record<UsersMode, Partial<Record<UsersScenario, Record<string, UsersFigure>>>>
  >;
  /** Mode -> scenario -> user count -> load generator + DC CPU per handshake (us). */
  /** Cores the rest of the machine used on average during the runs; null off Linux. */
  machine_others_cores: number | null;
  others_cpu_us_per_handshake: Partial<
    Record<UsersMode, Partial<Record<UsersScenario, Record<string, number | null>>>>
  >;
  concurrency: number;
}

/** Cores the rest of the machine used during a run (all CPUs minus the three processes). */
function _others(r: LoadResult): number | null {
  if (typeof r.machine_cpu_s !== "number" || !(r.seconds > 0)) return null;
  const mine = r.cpu_s.mid + r.cpu_s.dc + r.cpu_s.load;
  return Math.max(0, r.machine_cpu_s - mine) / r.seconds;
}

function _median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

function _hex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** A proxy with `count` users on one listener, and the file of their secrets. */
interface UsersProxy {
  readonly count: number;
  readonly child: UsersChild;
  readonly port: number;
  readonly secretsFile: string;
}

async function _startProxy(host: UsersHost, count: number): Promise<UsersProxy> {
  const port = host.freePort();
  const secrets = Array.from({ length: count }, () => _hex(randomBytes(16)));
  const users = secrets.map((s, i) => `  user${i}: { secret: "${s}" }`).join("\n");
  const path = `${host.tmp}/users-${count}.yaml`;
  await Deno.writeTextFile(path, `${host.configYaml(port).trimEnd()}\nusers:\n${users}\n`);
  const secretsFile = `${host.tmp}/users-${count}.json`;
  await Deno.writeTextFile(secretsFile, JSON.stringify({ secrets }));
  const child = await host.spawnProxy(`proxy (${count} users)`, path, [port]);
  return { count, child, port, secretsFile };
}

/** Run the users part; pieces that break are reported through `host.fail` and skipped. */
export async function runUsers(
  host: UsersHost,
  detail: Record<string, unknown>,
): Promise<UsersResults> {
  const out: UsersResults = {
    counts: [...USER_COUNTS],
    handshakes_per_s: {},
    cpu_us_per_handshake: {},
    others_cpu_us_per_handshake: {},
    machine_others_cores: null,
    concurrency: CONCURRENCY,
  };
  const s = host.settings;
  // Two rounds at most: 12 runs a round.
  const repeat = Math.min(2, s.repeat);
  const proxies: UsersProxy[] = [];
  const runs: Record<string, LoadResult[]> = {};
  let nextNew = 0;
  try {
    for (const count of USER_COUNTS) proxies.push(await _startProxy(host, count));
    for (let rep = 0; rep < repeat; rep++) {
      for (const mode of MODES) {
        for (const scenario of SCENARIOS) {
          // Interleaved, every other round backwards, so that a noisy moment hits all alike.
          for (const p of rep % 2 === 0 ? proxies : [...proxies].reverse()) {
            const key = `${mode}/${scenario}/${p.count}`;
            const prepared = Math.ceil(PREPARED_PER_S * (s.warmupS + s.hsSeconds)) +
              (scenario === "known" ? ADDRESSES : 0);
            try {
              const r = await host.runJson(`load generator (users ${key})`, [
                new URL(import.meta.url).pathname,
                "--load",
                "--mode",
                mode,
                "--port",
                String(p.port),
                "--secrets",
                p.secretsFile,
                "--sni",
                host.tlsDomain,
                "--concurrency",
                String(CONCURRENCY),
                "--warmup",
                String(s.warmupS),
                "--seconds",
                String(s.hsSeconds),
                "--prepared",
                String(prepared),
                ...(scenario === "new" ? ["--new-from", String(nextNew)] : []),
                "--pids",
                `mid=${p.child.pid},dc=${host.dcPid}`,
              ], s.warmupS + s.hsSeconds + 120);
              p.child.assertRunning();
              host.noteErrors(r);
              if (scenario === "new") nextNew += r.addresses_used ?? prepared;
              (runs[key] ??= []).push(r);
              host.progress(
                `  users ${String(p.count).padStart(4)} ${mode} ${scenario} addresses: ` +
                  `${r.per_second.toFixed(0)} handshakes/s, proxy ` +
                  `${((r.cpu_s.mid / Math.max(1, r.handshakes)) * 1e6).toFixed(0)} us CPU each` +
                  ` (load ${(r.cpu_s.load / r.seconds).toFixed(2)}, dc ${
                    (r.cpu_s.dc / r.seconds).toFixed(2)
                  }, proxy ${(r.cpu_s.mid / r.seconds).toFixed(2)} cores; rest of the machine ` +
                  `${_others(r)?.toFixed(2) ?? "?"})` +
                  (r.exhausted ? " (prepared connections ran out)" : "") +
                  (r.errors ? `; ${r.errors} errors` : ""),
              );
            } catch (e) {
              host.fail(key, e instanceof Error ? e.message : String(e));
            }
          }
        }
      }
    }
  } catch (e) {
    host.fail("start", e instanceof Error ? e.message : String(e));
  } finally {
    await Promise.all(proxies.map((p) => p.child.stop()));
  }
  for (const mode of MODES) {
    const base = runs[`${mode}/known/${USER_COUNTS[0]}`];
    const baseRate = base ? _median(base.map((r) => r.per_second)) : null;
    const perOp = (rs: LoadResult[], f: (r: LoadResult) => number) => {
      const ops = rs.reduce((a, r) => a + r.handshakes, 0);
      return ops > 0 ? (rs.reduce((a, r) => a + f(r), 0) / ops) * 1e6 : null;
    };
    const baseCpu = base ? perOp(base, (r) => r.cpu_s.mid) : null;
    for (const scenario of SCENARIOS) {
      const rate: Record<string, UsersFigure> = {};
      const cpu: Record<string, UsersFigure> = {};
      const others: Record<string, number | null> = {};
      for (const count of USER_COUNTS) {
        const rs = runs[`${mode}/${scenario}/${count}`];
        if (!rs || rs.length === 0) continue;
        const v = _median(rs.map((r) => r.per_second));
        rate[count] = { value: v, ratio: baseRate ? v / baseRate : null };
        const c = perOp(rs, (r) => r.cpu_s.mid);
        cpu[count] = { value: c, ratio: c !== null && baseCpu ? c / baseCpu : null };
        others[count] = perOp(rs, (r) => r.cpu_s.load + r.cpu_s.dc);
      }
      if (Object.keys(rate).length === 0) continue;
      (out.handshakes_per_s[mode] ??= {})[scenario] = rate;
      (out.cpu_us_per_handshake[mode] ??= {})[scenario] = cpu;
      (out.others_cpu_us_per_handshake[mode] ??= {})[scenario] = others;
    }
  }
  const rest = Object.values(runs).flat().map(_others).filter((x): x is number => x !== null);
  out.machine_others_cores = rest.length > 0 ? rest.reduce((a, b) => a + b, 0) / rest.length : null;
  detail.runs = Object.fromEntries(
    Object.entries(runs).map(([k, rs]) => [
      k,
      rs.map((r) => ({
        per_s: r.per_second,
        handshakes: r.handshakes,
        s: r.seconds,
        cpu_s: r.cpu_s,
        machine_cpu_s: r.machine_cpu_s,
        prepare_s: r.prepare_s,
        ...(r.exhausted ? { exhausted: true } : {}),
      })),
    ]),
  );
  return out;
}

// ---------------------------------------------------------------------------------------------
// Output

function _fmt(x: number | null | undefined, digits: number): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return "n/a";
  return x.toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

/** The users table: one column per user count, and the ratios to 1 user (known addresses). */
export function usersTable(r: UsersResults, settings: UsersHost["settings"]): string {
  const counts = r.counts.map(String);
  const others = counts.slice(1);
  const rows: { label: string; cells: string[] }[] = [];
  const row = (label: string, f: Record<string, UsersFigure> | undefined, d: number) => {
    if (!f) return;
    rows.push({
      label,
      cells: [
        ...counts.map((c) => _fmt(f[c]?.value, d)),
        ...others.map((c) => _fmt(f[c]?.ratio, 2)),
      ],
    });
  };
  const what = { known: "known addresses (1)", new: "new addresses (2)" };
  for (const mode of MODES) {
    for (const scenario of SCENARIOS) {
      row(`handshakes/s, ${mode}, ${what[scenario]}`, r.handshakes_per_s[mode]?.[scenario], 0);
    }
    for (const scenario of SCENARIOS) {
      row(
        `  proxy CPU per handshake, ${scenario} (us)`,
        r.cpu_us_per_handshake[mode]?.[scenario],
        0,
      );
    }
  }
  const head = [
    ...r.counts.map((c) => c === 1 ? "1 user" : `${_fmt(c, 0)} users`),
    ...others.map((c) => `${c}/1`),
  ];
  const w0 = 44;
  const line = (label: string, cells: string[]) =>
    label.padEnd(w0) + cells.map((c) => c.padStart(11)).join(" ");
  const width = w0 + 12 * head.length;
  const out = [line("users", head), "-".repeat(width)];
  for (const x of rows) out.push(line(x.label, x.cells));
  out.push("-".repeat(width));
  const repeat = Math.min(2, settings.repeat);
  out.push(
    "Columns: one proxy (1 worker) per user count, all users on one port; ratios to the 1-user",
    "figure with known addresses (for CPU: >1 costs more). Each client uses a user chosen at",
    `random; ${r.concurrency} at a time: connect, handshake, 100-byte packet echoed through the` +
      " DC, close;",
    `everything the clients send prepared before the clock; median of ${repeat} runs of` +
      ` ${settings.hsSeconds} s.`,
    `(1) Each client from one of ${ADDRESSES} addresses (127.1.x.y) at random, address a for` +
      " user a mod N:",
    "    each user's clients from its own addresses, each matched before: the user an address",
    "    matched last is tried first.",
    "(2) Every client connects from an address never seen before (127.2.x.y up): the proxy tries",
    "    the listener's secret, then the users, most recently matched first (half on average).",
    `Meanwhile the rest of the machine used ${_fmt(r.machine_others_cores, 2)} cores on average` +
      " (rates swing with it; the CPU per handshake is steadier).",
  );
  return out.join("\n");
}

/** A PASS/MISS line's data, as bench.ts prints it. */
export interface UsersTarget {
  name: string;
  value: number | null;
  limit: string;
  pass: boolean | null;
}

/** The users part's target: 1,000 users at least 0.5x the 1-user rate, worst of ee and dd. */
export function usersTargets(r: UsersResults): UsersTarget[] {
  const last = String(r.counts.at(-1));
  const got = MODES.map((m) => ({ m, x: r.handshakes_per_s[m]?.known?.[last]?.ratio }))
    .filter((x): x is { m: UsersMode; x: number } => typeof x.x === "number");
  if (got.length === 0) return [];
  const worst = got.reduce((a, b) => (b.x < a.x ? b : a));
  return [{
    name: `handshakes/s with ${_fmt(Number(last), 0)} users vs 1 user (known client addresses),` +
      ` worst of ${got.map((g) => g.m).join("/")} (${worst.m})`,
    value: worst.x,
    limit: `>= ${TARGET_RATIO}x`,
    pass: worst.x >= TARGET_RATIO,
  }];
}

// ---------------------------------------------------------------------------------------------
// The load generator (`--load`)

/** What one connection sends, from which address, and the echo it expects. */
interface Prepared {
  address: string;
  /** A signed ClientHello (`ee`), or null. */
  hello: Uint8Array | null;
  /** The init with the packet behind it (in a CCS + ApplicationData record for `ee`). */
  flight: Uint8Array;
  /** The packet's echo as the proxy sends it (encrypted; the record payload for `ee`). */
  echo: Uint8Array;
}

function _initRandom(): Uint8Array {
  let r = randomBytes(64);
  while (!isValidInitRandom(r)) r = randomBytes(64);
  return r;
}

function _prepare(
  mode: UsersMode,
  secret: Uint8Array,
  template: Uint8Array,
  address: string,
): Prepared {
  let hello: Uint8Array | null = null;
  if (mode === "ee") {
    const h = template.slice();
    // A fresh session id: the proxy never sees the same hello twice.
    h.set(randomBytes(32), 44);
    hello = signClientHello(h, secret, Math.floor(Date.now() / 1000));
  }
  const { wire, encryptor, decryptor } = createInit(_initRandom(), "padded", DC_ID, { secret });
  try {
    const ping = randomBytes(PING_LEN);
    const body = new Uint8Array(wire.length + ping.length);
    body.set(wire);
    body.set(ping, wire.length);
    encryptor.update(body.subarray(wire.length));
    let flight = body;
    if (hello) {
      flight = new Uint8Array(CCS.length + RECORD_HEADER_LEN + body.length);
      flight.set(CCS);
      writeAppDataHeader(flight, CCS.length, body.length);
      flight.set(body, CCS.length + RECORD_HEADER_LEN);
    }
    const echo = ping.slice();
    decryptor.update(echo);
    return { address, hello, flight, echo };
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

/**
 * The payload bytes of the whole TLS records at the start of `buf[0..have)`, or null until a
 * record is complete past `need` payload bytes.
 */
function _unwrapRecords(buf: Uint8Array, have: number, need: number): Uint8Array | null {
  const payload: number[] = [];
  let off = 0;
  while (payload.length < need) {
    if (have - off < RECORD_HEADER_LEN) return null;
    if (buf[off] !== 0x17) throw new Error("Bad record from the proxy");
    const len = (buf[off + 3]! << 8) | buf[off + 4]!;
    if (have - off < RECORD_HEADER_LEN + len) return null;
    for (let i = 0; i < len; i++) payload.push(buf[off + RECORD_HEADER_LEN + i]!);
    off += RECORD_HEADER_LEN + len;
  }
  return Uint8Array.from(payload);
}

/** One prepared connection through node:net (it binds the local address): send, check, close. */
function _run(port: number, p: Prepared): Promise<void> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: "127.0.0.1", port, localAddress: p.address });
    let buf = new Uint8Array(8192);
    let have = 0;
    let stage: "hello" | "echo" = p.hello ? "hello" : "echo";
    let settled = false;
    const finish = (e?: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      if (e) reject(e);
      else resolve();
    };
    const timer = setTimeout(
      () => finish(new Error(`Timed out after ${OP_TIMEOUT_MS} ms: ${stage}`)),
      OP_TIMEOUT_MS,
    );
    sock.setNoDelay(true);
    sock.on("connect", () => sock.write(p.hello ?? p.flight));
    sock.on("error", (e: Error) => finish(e));
    sock.on("close", () => finish(new Error(`Proxy closed the connection during the ${stage}`)));
    sock.on("data", (chunk: Uint8Array) => {
      try {
        if (have + chunk.length > buf.length) {
          const bigger = new Uint8Array(Math.max(buf.length * 2, have + chunk.length));
          bigger.set(buf.subarray(0, have));
          buf = bigger;
        }
        buf.set(chunk, have);
        have += chunk.length;
        if (stage === "hello") {
          const end = _serverHelloEnd(buf, have);
          if (end === 0 || have < end) return;
          if (have > end) throw new Error("Unexpected bytes after the ServerHello");
          have = 0;
          stage = "echo";
          sock.write(p.flight);
          return;
        }
        const got = p.hello
          ? _unwrapRecords(buf, have, p.echo.length)
          : have >= p.echo.length
          ? buf.subarray(0, have)
          : null;
        if (got === null) return;
        if (got.length !== p.echo.length || !got.every((b, i) => b === p.echo[i])) {
          throw new Error("Echo differs from the packet");
        }
        finish();
      } catch (e) {
        finish(e instanceof Error ? e : new Error(String(e)));
      }
    });
  });
}

function _machineCpuSeconds(): number | null {
  try {
    const f = Deno.readTextFileSync("/proc/stat").split("\n")[0]!.trim().split(/\s+/).slice(1)
      .map(Number);
    const busy = f.slice(0, 8).reduce((a, b) => a + b, 0) - f[3]! - (f[4] ?? 0);
    return busy / CLOCK_TICKS_PER_SECOND;
  } catch {
    return null;
  }
}

async function _load(): Promise<void> {
  exitWhenStdinCloses();
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      load: { type: "boolean", default: false },
      mode: { type: "string" },
      port: { type: "string" },
      secrets: { type: "string" },
      sni: { type: "string", default: "example.com" },
      concurrency: { type: "string", default: String(CONCURRENCY) },
      warmup: { type: "string", default: "0.5" },
      seconds: { type: "string", default: "3" },
      prepared: { type: "string", default: "10000" },
      "new-from": { type: "string" },
      pids: { type: "string", default: "" },
    },
  });
  const mode = values.mode;
  if (mode !== "ee" && mode !== "dd") throw new RangeError(`Invalid --mode: "${mode}"`);
  const port = Number(values.port);
  const secrets = (JSON.parse(await Deno.readTextFile(values.secrets!)).secrets as string[])
    .map((h) => Uint8Array.from(h.match(/../g)!, (x) => parseInt(x, 16)));
  const concurrency = Number(values.concurrency);
  const warmupS = Number(values.warmup);
  const seconds = Number(values.seconds);
  const preparedCount = Number(values.prepared);
  const newFrom = values["new-from"] === undefined ? null : Number(values["new-from"]);
  const pids: Record<string, number> = { load: Deno.pid };
  for (const kv of values.pids.split(",").filter(Boolean)) {
    const [k, v] = kv.split("=");
    pids[k!] = Number(v);
  }
  const template = buildClientHello({ sni: values.sni });
  const n = secrets.length;
  const tPrepare = performance.now();
  // Known addresses: first every address once (so that the proxy has matched each), not
  // counted; then addresses at random, address a for user a mod n. New addresses: users at
  // random, each client from an address of its own.
  const first = newFrom === null ? ADDRESSES : 0;
  const pool: (Prepared | undefined)[] = Array.from({ length: preparedCount }, (_, k) => {
    if (newFrom !== null) {
      const u = Math.floor(Math.random() * n);
      return _prepare(mode, secrets[u]!, template, newAddress(newFrom + k));
    }
    const a = k < first ? k : Math.floor(Math.random() * ADDRESSES);
    return _prepare(mode, secrets[a % n]!, template, knownAddress(a));
  });
  const prepareS = (performance.now() - tPrepare) / 1000;
  const errors: string[] = [];
  let errorCount = 0;
  let next = 0;
  // The first round (every user once) runs before the warmup starts.
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < first) {
      const p = pool[next]!;
      pool[next++] = undefined;
      await _run(port, p).catch((e) => {
        errorCount++;
        if (errors.length < 5) errors.push(String(e));
      });
    }
  }));
  let counting = false;
  let done = 0;
  let exhausted = false;
  const cpu = (): Record<string, number> =>
    Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, cpuSeconds(pid)]));
  let cpu0: Record<string, number> = {};
  let machine0: number | null = null;
  let t0 = 0;
  const start = performance.now();
  const deadline = start + (warmupS + seconds) * 1000;
  const warm = setTimeout(() => {
    cpu0 = cpu();
    machine0 = _machineCpuSeconds();
    t0 = performance.now();
    counting = true;
  }, warmupS * 1000);
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (performance.now() < deadline) {
      const p = pool[next];
      if (!p) {
        exhausted = true;
        return;
      }
      pool[next++] = undefined;
      try {
        await _run(port, p);
        if (counting) done++;
      } catch (e) {
        errorCount++;
        if (errors.length < 5 && !errors.includes(String(e))) errors.push(String(e));
        if (errorCount > 100) return;
      }
    }
  }));
  clearTimeout(warm);
  if (!counting) throw new Error("The prepared connections ran out during the warmup");
  const elapsed = (performance.now() - t0) / 1000;
  const cpu1 = cpu();
  const machine1 = _machineCpuSeconds();
  console.log(JSON.stringify({
    mode,
    users: n,
    addresses: newFrom === null ? "known" : "new",
    handshakes: done,
    seconds: elapsed,
    per_second: done / elapsed,
    cpu_s: Object.fromEntries(Object.keys(pids).map((k) => [k, cpu1[k]! - cpu0[k]!])),
    ...(machine0 !== null && machine1 !== null ? { machine_cpu_s: machine1 - machine0 } : {}),
    prepare_s: prepareS,
    addresses_used: next,
    exhausted,
    errors: errorCount,
    error_samples: errors,
  }));
}

if (import.meta.main) {
  try {
    await _load();
    Deno.exit(0);
  } catch (e) {
    console.error(`bench_users: ${e instanceof Error ? e.stack : String(e)}`);
    Deno.exit(1);
  }
}
