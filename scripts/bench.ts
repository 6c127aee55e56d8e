/**
 * `deno task bench`: how fast and how heavy the proxy is next to the ceiling of this machine.
 *
 * Starts, as separate processes on 127.0.0.1: an echo DC (scripts/bench_dc.ts), the proxy (the
 * real CLI, `main.ts run --config <generated file>`), a plain TCP relay without crypto written
 * with the same I/O calls as the proxy (scripts/bench_relay.ts), and for every measurement a
 * load generator (scripts/bench_load.ts). The same workload runs through the proxy (as `dd`
 * and as `ee` fake-TLS clients) and through the relay (plain obfuscated2 straight to the DC),
 * so the load generator and the DC do the same work both times and only the middle differs.
 *
 * The `middle` part measures middle-proxy mode: a proxy with two listeners, one plain (direct
 * mode, to the echo DC) and one with an ad tag (its clients multiplexed over RPC connections to
 * Telegram's middle proxies), and scripts/bench_middle.ts as Telegram: a fake middle proxy that
 * echoes every packet and a fake core API serving the proxy secret and the middle-proxy list.
 * There the proxy re-frames traffic, so the load generator sends and parses padded intermediate
 * frames (`--framed`) through both listeners, and middle mode is compared with direct mode
 * under the same workload; memory per idle client and the number of Telegram-side connections
 * are taken with 10,000 clients.
 *
 * The `split` part (scripts/bench_split.ts) measures split mode: a front and a back (direct mode,
 * to the echo DC) next to a standalone proxy, under the same framed workload.
 *
 * The `workers` part (scripts/bench_workers.ts) runs the same proxy with 1, 2 and `auto` worker
 * threads: direct-mode throughput, CPU per GB, fake-TLS handshakes, a CPU-bound scenario where
 * the proxy is the limit, and memory per idle client, as ratios to 1 worker. Every other part
 * runs the proxy with one worker (`workers: 1` in its config, `--workers 1` on its command
 * line), as the figures were measured before the default became `auto`.
 *
 * The `users` part (scripts/bench_users.ts) runs a proxy with 1, 100 and 1,000 users on one port:
 * handshakes per second (`ee` and `dd`) with each user's clients from its own loopback address
 * and from addresses never seen before, and the proxy's CPU per handshake, as ratios to 1 user.
 *
 * The `ratelimit` part (scripts/bench_rate_limit.ts) has one user's clients push data both ways
 * through a proxy with `rate_limit` set, and compares the bytes moved in a bounded window (as
 * the clients saw them, and as the proxy counted them) with the configured rate.
 *
 * Prints one table (proxy figure, relay figure, ratio proxy/relay), one for middle mode (middle
 * figure, direct figure, ratio middle/direct), one for split mode (split figure, standalone
 * figure), a PASS/MISS line per target, and one `BENCH_JSON {...}` line. Exits 0 unless the
 * bench itself broke.
 *
 * Usage: `deno task bench [--quick]
 * [--only throughput,latency,handshakes,memory,middle,split,workers,users,ratelimit]
 * [--repeat N]
 * [--proxy cli|inproc] [--v8-flags FLAGS]`.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { createAes, randomBytes } from "../lib/crypto.ts";
import { runSplit, type SplitResults, splitTable, splitTargets } from "./bench_split.ts";
import { runWorkers, type WorkersResults, workersTable, workersTargets } from "./bench_workers.ts";
import { runUsers, type UsersResults, usersTable, usersTargets } from "./bench_users.ts";

const HELP = `Usage: deno task bench [options]

Options:
  --quick            shorter runs (about a third of the time)
  --only PARTS       comma-separated subset of:
                     ${"throughput,latency,handshakes,memory,middle,split,workers,users,"}
                     ${"ratelimit"}
                     (middle: middle-proxy mode's throughput, latency, memory and
                     Telegram-side connections, next to direct mode; split: a front and
                     a back vs a standalone proxy: throughput, CPU per GB of each,
                     latency added by the link, memory per idle client and per back
                     stream, link connections; workers: the proxy with 1, 2 and auto
                     worker threads: dd throughput, CPU per GB, ee handshakes/s, a
                     CPU-bound handshake scenario, memory per idle client, each as a
                     ratio to 1 worker. The other parts run the proxy with 1 worker;
                     users: a proxy with 1, 100 and 1,000 users on one port: ee and dd
                     handshakes/s and proxy CPU per handshake, clients from their
                     user's own address and from new ones, as ratios to 1 user;
                     ratelimit: one user's clients through users.NAME.rate_limit,
                     bytes moved in a bounded window over the configured rate)
  --repeat N         run each throughput measurement N times and keep the median
                     (default 3, middle and split modes 2; with --quick 1)
  --proxy KIND       cli: main.ts run --config FILE (default); inproc: scripts/bench_proxy.ts,
                     which also reports the proxy's V8 heap per idle client (not for split
                     and workers, whose processes always run the CLI)
  --v8-flags FLAGS   V8 flags for both the proxy and the relay (default: the ones
                     \`deno task start\` uses, read from deno.json; "none" for none)
  -h, --help         show this help`;

const PARTS = [
  "throughput",
  "latency",
  "handshakes",
  "memory",
  "middle",
  "split",
  "workers",
  "users",
  "ratelimit",
] as const;
type Part = typeof PARTS[number];
const STREAMS = [1, 16, 256] as const;
const PROXY_MODES = ["dd", "ee"] as const;
type ProxyMode = typeof PROXY_MODES[number];

/** The secret and fake-TLS domain of the bench proxy's one listener. */
const SECRET = "0123456789abcdef0123456789abcdef";
const TLS_DOMAIN = "example.com";

/** Targets from the issue; measured and reported, never asserted. */
const TARGET_EE_RATIO = 0.6;
const TARGET_IDLE_KIB = 12;
const TARGET_IDLE_CLIENTS = 5000;
/** Middle mode: throughput with 16 streams vs direct mode, and clients per Telegram connection. */
const TARGET_MIDDLE_RATIO = 0.8;
const TARGET_CLIENTS_PER_MP_CONNECTION = 300;
const TARGET_MIDDLE_IDLE_CLIENTS = 10_000;
/** Split mode: idle clients through the front (its other targets are in bench_split.ts). */
const TARGET_SPLIT_IDLE_CLIENTS = 10_000;
/** The middle-mode listener's ad tag (checked by the fake middle proxy on every PROXY_REQ). */
const AD_TAG = "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf";

interface Settings {
  /** Throughput: seconds of traffic before counting, and seconds counted. */
  warmupS: number;
  seconds: number;
  /** Throughput: runs per configuration; the median counts. */
  repeat: number;
  /** Latency: sequential ping-pongs on one connection. */
  pings: number;
  /** Handshakes: concurrent connect-handshake-ping-close loops, and for how long. */
  hsWorkers: number;
  hsSeconds: number;
  /** Memory: idle clients, opened this many at a time, then left alone this long. */
  idleClients: number;
  idleConcurrency: number;
  settleS: number;
  /** Middle mode: throughput runs per configuration, and idle clients. */
  middleRepeat: number;
  middleIdleClients: number;
  /** Split mode: throughput runs per configuration, and idle clients. */
  splitRepeat: number;
  splitIdleClients: number;
}

const FULL: Settings = {
  warmupS: 1,
  seconds: 2.5,
  repeat: 3,
  pings: 5000,
  hsWorkers: 8,
  hsSeconds: 3,
  idleClients: TARGET_IDLE_CLIENTS,
  idleConcurrency: 64,
  settleS: 2,
  middleRepeat: 2,
  middleIdleClients: TARGET_MIDDLE_IDLE_CLIENTS,
  splitRepeat: 2,
  splitIdleClients: TARGET_SPLIT_IDLE_CLIENTS,
};

const QUICK: Settings = {
  warmupS: 0.5,
  seconds: 1.5,
  repeat: 1,
  pings: 500,
  hsWorkers: 8,
  hsSeconds: 1.5,
  idleClients: TARGET_IDLE_CLIENTS,
  idleConcurrency: 64,
  settleS: 1,
  middleRepeat: 1,
  middleIdleClients: TARGET_MIDDLE_IDLE_CLIENTS,
  splitRepeat: 1,
  splitIdleClients: TARGET_SPLIT_IDLE_CLIENTS,
};

const ROOT = new URL("..", import.meta.url).pathname;
const script = (name: string) => new URL(name, import.meta.url).pathname;

/** The bench could not measure something (as opposed to the proxy measuring badly). */
class BenchError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "BenchError";
  }
}

// ---------------------------------------------------------------------------------------------
// Child processes

const children = new Set<Child>();

/** A child `deno` process whose stdout lines we watch and whose stderr we keep the end of. */
class Child {
  readonly proc: Deno.ChildProcess;
  readonly pid: number;
  exited: Deno.CommandStatus | null = null;
  readonly lines: string[] = [];
  #stderr = "";
  #waiters = new Set<() => void>();
  #done: Promise<void>;

  constructor(readonly name: string, args: string[]) {
    this.proc = new Deno.Command(Deno.execPath(), {
      args,
      cwd: ROOT,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    this.pid = this.proc.pid;
    children.add(this);
    const out = this.#readLines();
    const err = this.#readStderr();
    const status = this.proc.status.then((s) => {
      this.exited = s;
      children.delete(this);
    });
    this.#done = Promise.all([out, err, status]).then(() => this.#notify());
  }

  /** Everything the child wrote to stderr, last 4000 characters. */
  get stderr(): string {
    return this.#stderr.trim();
  }

  /**
   * Resolve with the first stdout line matching `re` (from line index `from` on); fail when the
   * child exits first.
   */
  async waitForLine(re: RegExp, timeoutMs: number, from = 0): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    while (true) {
      for (const line of this.lines.slice(from)) {
        const m = line.match(re);
        if (m) return m;
      }
      if (this.exited) throw new BenchError(`${this.name} exited: ${this.#describeExit()}`);
      if (Date.now() > deadline) {
        throw new BenchError(`${this.name} printed nothing matching ${re} in ${timeoutMs} ms`);
      }
      await this.#changed(deadline - Date.now());
    }
  }

  /** Wait for the child to exit by itself; kill it after `timeoutMs`. */
  async wait(timeoutMs: number): Promise<Deno.CommandStatus> {
    const timer = setTimeout(() => this.kill("SIGKILL"), timeoutMs);
    try {
      await this.#done;
    } finally {
      clearTimeout(timer);
    }
    return this.exited!;
  }

  /** Write `text` to the child's stdin. */
  async send(text: string): Promise<void> {
    const writer = this.proc.stdin.getWriter();
    try {
      await writer.write(new TextEncoder().encode(text));
    } finally {
      writer.releaseLock();
    }
  }

  /** Fail when the child is no longer running. */
  assertRunning(): void {
    if (this.exited) throw new BenchError(`${this.name} exited: ${this.#describeExit()}`);
  }

  /** Ask the child to go (stdin EOF, then SIGTERM), SIGKILL after 3 s. */
  async stop(): Promise<void> {
    if (this.exited) return;
    try {
      await this.proc.stdin.close();
    } catch {
      // Already closed.
    }
    this.kill("SIGTERM");
    const timer = setTimeout(() => this.kill("SIGKILL"), 3000);
    await this.#done;
    clearTimeout(timer);
  }

  kill(signal: Deno.Signal): void {
    if (this.exited) return;
    try {
      this.proc.kill(signal);
    } catch {
      // Already gone.
    }
  }

  #describeExit(): string {
    const s = this.exited!;
    const how = s.signal ? `signal ${s.signal}` : `code ${s.code}`;
    return this.stderr ? `${how}; stderr: ${this.stderr.slice(-1500)}` : how;
  }

  #changed(timeoutMs: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#waiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, Math.max(0, timeoutMs));
      this.#waiters.add(done);
    });
  }

  #notify(): void {
    for (const w of [...this.#waiters]) w();
  }

  async #readLines(): Promise<void> {
    let pending = "";
    for await (const chunk of this.proc.stdout.pipeThrough(new TextDecoderStream())) {
      pending += chunk;
      let nl: number;
      while ((nl = pending.indexOf("\n")) >= 0) {
        this.lines.push(pending.slice(0, nl));
        pending = pending.slice(nl + 1);
      }
      this.#notify();
    }
    if (pending) this.lines.push(pending);
  }

  async #readStderr(): Promise<void> {
    for await (const chunk of this.proc.stderr.pipeThrough(new TextDecoderStream())) {
      this.#stderr = (this.#stderr + chunk).slice(-4000);
    }
  }
}

function _killAll(): void {
  for (const c of children) c.kill("SIGKILL");
}

/** A process under test: the proxy or the relay, and the port it listens on. */
interface Middle {
  readonly child: Child;
  readonly port: number;
}

async function _startDc(): Promise<Middle> {
  const child = new Child("echo DC", ["run", "--allow-all", script("bench_dc.ts")]);
  const m = await child.waitForLine(/^listening (\d+)$/, 30_000);
  return { child, port: Number(m[1]) };
}

/** The V8 flags of `deno task start` in deno.json: the bench measures what users run. */
function _startTaskV8Flags(): string {
  const config = JSON.parse(Deno.readTextFileSync(`${ROOT}deno.json`));
  const m = String(config.tasks?.start ?? "").match(/--v8-flags=(\S+)/);
  return m ? m[1]! : "";
}

/** `--v8-flags=...` for the proxy and the relay, when the bench was given some. */
function _v8Flags(env: Env, extra: string[] = []): string[] {
  const given = env.v8Flags && env.v8Flags !== "none" ? [env.v8Flags] : [];
  const flags = [...given, ...extra];
  return flags.length > 0 ? [`--v8-flags=${flags.join(",")}`] : [];
}

async function _startRelay(env: Env): Promise<Middle> {
  const child = new Child("relay", [
    "run",
    "--allow-all",
    ..._v8Flags(env),
    script("bench_relay.ts"),
    "--upstream",
    String(env.dc.port),
  ]);
  const m = await child.waitForLine(/^listening (\d+)$/, 30_000);
  return { child, port: Number(m[1]) };
}

/** A port nobody listens on right now (the config needs a real port: 0 is refused). */
function _freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

function _configYaml(dcPort: number, port: number): string {
  return `# Written by scripts/bench.ts.
workers: 1
listeners:
  - name: bench
    host: 127.0.0.1
    port: ${port}
    secret: "${SECRET}"
    tls_domain: ${TLS_DOMAIN}
allowed_protocols: [tls, dd, plain]
log_level: warning
fronting:
  mode: off
telegram:
  dc_addresses:
    "2": "127.0.0.1:${dcPort}"
timeouts:
  idle: 3600
  handshake: 60
  shutdown_grace: 1
max_connections: 20000
`;
}

let proxyStarts = 0;

/** Start the proxy with a fresh config file (a new free port each time) in `tmp`. */
async function _startProxy(env: Env): Promise<Middle> {
  const port = _freePort();
  const configPath = `${env.tmp}/config-${++proxyStarts}.yaml`;
  await Deno.writeTextFile(configPath, _configYaml(env.dc.port, port));
  return { child: await _spawnProxy(env, "proxy", configPath, [port]), port };
}

// ---------------------------------------------------------------------------------------------
// Running the load generator

type LoadMode = ProxyMode | "relay";

// deno-lint-ignore no-explicit-any
type LoadResult = Record<string, any>;

/** What the load generator connects to: a process and its port. */
interface LoadTarget {
  readonly child: Pick<Child, "pid" | "assertRunning">;
  readonly port: number;
}

async function _load(
  scenario: string,
  mode: LoadMode,
  middle: LoadTarget,
  dc: Middle,
  flags: Record<string, string | number | boolean>,
  timeoutS: number,
  extraPids: Record<string, number> = {},
): Promise<LoadResult> {
  const args = [
    "run",
    "--allow-all",
    script("bench_load.ts"),
    "--scenario",
    scenario,
    "--mode",
    mode,
    "--port",
    String(middle.port),
    "--secret",
    SECRET,
    "--sni",
    TLS_DOMAIN,
    "--pids",
    [
      `mid=${middle.child.pid},dc=${dc.child.pid}`,
      ...Object.entries(extraPids).map(([name, pid]) => `${name}=${pid}`),
    ].join(","),
  ];
  for (const [k, v] of Object.entries(flags)) {
    if (v === true) args.push(`--${k}`);
    else if (v !== false) args.push(`--${k}`, String(v));
  }
  const framed = flags.framed === true ? " framed" : "";
  const child = new Child(`load generator (${scenario} ${mode}${framed})`, args);
  const status = await child.wait(timeoutS * 1000);
  middle.child.assertRunning();
  dc.child.assertRunning();
  const last = child.lines.filter((l) => l.startsWith("{")).at(-1);
  if (!status.success || !last) {
    const how = status.signal ? `signal ${status.signal}` : `code ${status.code}`;
    throw new BenchError(`${child.name} failed (${how}): ${child.stderr.slice(-1500)}`);
  }
  return JSON.parse(last);
}

// ---------------------------------------------------------------------------------------------
// Results

/** A figure for the proxy, the same figure for the relay, and proxy / relay. */
interface Pair {
  proxy: number | null;
  relay: number | null;
  ratio: number | null;
}

function _pair(proxy: number | null | undefined, relay: number | null | undefined): Pair {
  const p = proxy ?? null;
  const r = relay ?? null;
  return { proxy: p, relay: r, ratio: p !== null && r !== null && r !== 0 ? p / r : null };
}

function _median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

interface Results {
  throughput_mb_s: Partial<Record<ProxyMode, Record<string, Pair>>>;
  cpu_s_per_gb: Partial<Record<ProxyMode, Pair>>;
  latency_us: Partial<Record<ProxyMode, { p50: Pair; p99: Pair }>>;
  handshakes_per_s: Partial<Record<ProxyMode, Pair>>;
  /** CPU ms of the proxy (relay) per handshake in the handshakes part. */
  handshake_cpu_ms: Partial<Record<ProxyMode, Pair>>;
  idle_rss_kib_per_client: Partial<Record<ProxyMode, Pair>>;
  /** The anonymous part of that RSS (heap, buffers; not the binary's pages). */
  idle_anon_kib_per_client: Partial<Record<ProxyMode, Pair>>;
  idle_errors: Partial<Record<ProxyMode | "relay", number>>;
  idle_memory_breakdown?: Partial<Record<ProxyMode, Record<string, number>>>;
  /** The `middle` part. */
  middle?: MiddleResults;
  /** The `split` part. */
  split?: SplitResults;
  /** The `workers` part. */
  workers?: WorkersResults;
  /** The `users` part. */
  users?: UsersResults;
  /** The `ratelimit` part: one row per configured rate (null: the unlimited baseline). */
  rate_limit?: RateLimitRow[];
  errors: number;
  error_samples: string[];
  detail: Record<string, unknown>;
}

/** A middle-mode figure, the same figure in direct mode, and middle / direct. */
interface MiddlePair {
  middle: number | null;
  direct: number | null;
  ratio: number | null;
}

function _mpair(middle: number | null | undefined, direct: number | null | undefined): MiddlePair {
  const { proxy, relay, ratio } = _pair(middle, direct);
  return { middle: proxy, direct: relay, ratio };
}

/** Telegram-side (middle-proxy) connections the proxy held with `clients` idle clients. */
interface MiddleConnections {
  clients: number;
  connections: number | null;
  clients_per_connection: number | null;
}

interface MiddleResults {
  /** Direct = the same proxy's untagged listener, same framed workload. */
  throughput_mb_s: Partial<Record<ProxyMode, Record<string, MiddlePair>>>;
  cpu_s_per_gb: Partial<Record<ProxyMode, MiddlePair>>;
  latency_us: Partial<Record<ProxyMode, { p50: MiddlePair; p99: MiddlePair }>>;
  /** Direct = the memory part's figure (fewer clients, two sockets each), when it ran. */
  idle_rss_kib_per_client: Partial<Record<ProxyMode, MiddlePair>>;
  idle_anon_kib_per_client: Partial<Record<ProxyMode, MiddlePair>>;
  idle_errors: Partial<Record<ProxyMode, number>>;
  telegram_connections: Partial<Record<ProxyMode, MiddleConnections>>;
  /** Middle-proxy connections during the throughput runs (most seen). */
  throughput_telegram_connections: number | null;
  /** The most middle mode could reach at 16 streams on this machine (see `_ceiling`). */
  ceiling: Partial<Record<ProxyMode, MiddlePair>>;
  /** AES-256-CBC encryption on one core, GB/s (the serial chain middle mode must add). */
  cbc_encrypt_gb_s: number | null;
  /** The fake middle proxy's counters at the end. */
  fake_middle_proxy: Record<string, unknown> | null;
}

function _noteErrors(results: Results, r: LoadResult): void {
  results.errors += r.errors ?? 0;
  for (const s of r.error_samples ?? []) {
    if (results.error_samples.length < 8) {
      results.error_samples.push(`${r.mode}${r.framed ? " framed" : ""}: ${s}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The parts

interface Env {
  settings: Settings;
  proxyKind: "cli" | "inproc";
  /** V8 flags for the proxy and the relay ("" for none). */
  v8Flags: string;
  /** Directory for the proxy's config files. */
  tmp: string;
  dc: Middle;
  results: Results;
  /** What could not be measured, as `part: message`. */
  failures: string[];
}

/** The long-lived proxy and relay used by throughput, latency and handshakes. */
let shared: { proxy: Middle; relay: Middle } | null = null;

async function _shared(env: Env): Promise<{ proxy: Middle; relay: Middle }> {
  shared ??= {
    proxy: await _startProxy(env),
    relay: await _startRelay(env),
  };
  return shared;
}

async function _throughput(env: Env): Promise<void> {
  const { proxy, relay } = await _shared(env);
  const s = env.settings;
  const runs: Record<string, LoadResult[]> = {};
  const flagsFor = (streams: number) => ({ streams, warmup: s.warmupS, seconds: s.seconds });
  const timeout = s.warmupS + s.seconds + 60;
  for (let rep = 0; rep < env.settings.repeat; rep++) {
    for (const streams of STREAMS) {
      // Interleaved, so that a noisy moment hits every mode alike.
      for (const mode of ["relay", ...PROXY_MODES] as const) {
        const middle = mode === "relay" ? relay : proxy;
        const r = await _load("throughput", mode, middle, env.dc, flagsFor(streams), timeout);
        _noteErrors(env.results, r);
        (runs[`${mode}/${streams}`] ??= []).push(r);
        console.error(
          `  throughput ${mode.padEnd(5)} ${String(streams).padStart(3)} streams: ` +
            `${r.echo_mb_s.toFixed(0)} MB/s` +
            ` (cpu s: middle ${r.cpu_s.mid.toFixed(2)}, dc ${r.cpu_s.dc.toFixed(2)},` +
            ` load ${r.cpu_s.load.toFixed(2)} in ${r.seconds.toFixed(1)} s)`,
        );
      }
    }
  }
  const mbs = (mode: LoadMode, streams: number) =>
    _median(runs[`${mode}/${streams}`]!.map((r) => r.echo_mb_s));
  // CPU per GB: the middle's CPU over the bytes it relayed both ways (twice the echoed bytes).
  const cpuPerGb = (mode: LoadMode) => {
    let cpu = 0;
    let bytes = 0;
    for (const streams of STREAMS) {
      for (const r of runs[`${mode}/${streams}`]!) {
        cpu += r.cpu_s.mid;
        bytes += 2 * r.bytes_down;
      }
    }
    return bytes > 0 ? cpu / (bytes / 1e9) : null;
  };
  for (const mode of PROXY_MODES) {
    const byStreams: Record<string, Pair> = {};
    for (const streams of STREAMS) {
      byStreams[streams] = _pair(mbs(mode, streams), mbs("relay", streams));
    }
    env.results.throughput_mb_s[mode] = byStreams;
    env.results.cpu_s_per_gb[mode] = _pair(cpuPerGb(mode), cpuPerGb("relay"));
  }
  env.results.detail.throughput = Object.fromEntries(
    Object.entries(runs).map(([k, rs]) => [
      k,
      rs.map((r) => ({
        mb_s: _round(r.echo_mb_s, 1),
        up: r.bytes_up,
        down: r.bytes_down,
        s: _round(r.seconds, 3),
        cpu_s: r.cpu_s,
        connect_ms: _round(r.connect_ms, 1),
      })),
    ]),
  );
}

async function _latency(env: Env): Promise<void> {
  const { proxy, relay } = await _shared(env);
  const flags = { pings: env.settings.pings };
  const r = await _load("latency", "relay", relay, env.dc, flags, 120);
  _noteErrors(env.results, r);
  const detail: Record<string, unknown> = { relay: r };
  for (const mode of PROXY_MODES) {
    const p = await _load("latency", mode, proxy, env.dc, flags, 120);
    _noteErrors(env.results, p);
    detail[mode] = p;
    env.results.latency_us[mode] = {
      p50: _pair(p.p50_us, r.p50_us),
      p99: _pair(p.p99_us, r.p99_us),
    };
    console.error(
      `  latency ${mode}: p50 ${p.p50_us.toFixed(0)} us, p99 ${p.p99_us.toFixed(0)} us` +
        ` (relay ${r.p50_us.toFixed(0)} / ${r.p99_us.toFixed(0)})`,
    );
  }
  env.results.detail.latency = detail;
}

async function _handshakes(env: Env): Promise<void> {
  const { proxy, relay } = await _shared(env);
  const s = env.settings;
  const flags = { workers: s.hsWorkers, seconds: s.hsSeconds };
  const timeout = s.hsSeconds + 60;
  const r = await _load("handshakes", "relay", relay, env.dc, flags, timeout);
  _noteErrors(env.results, r);
  const detail: Record<string, unknown> = { relay: r };
  for (const mode of ["ee", "dd"] as const) {
    const p = await _load("handshakes", mode, proxy, env.dc, flags, timeout);
    _noteErrors(env.results, p);
    detail[mode] = p;
    env.results.handshakes_per_s[mode] = _pair(p.per_second, r.per_second);
    // CPU of the process in the middle per handshake (the relay's: a plain TCP hop).
    const cpuMs = (x: LoadResult) => x.handshakes > 0 ? (x.cpu_s.mid * 1000) / x.handshakes : null;
    env.results.handshake_cpu_ms[mode] = _pair(cpuMs(p), cpuMs(r));
    console.error(
      `  handshakes ${mode}: ${p.per_second.toFixed(0)}/s (relay ${r.per_second.toFixed(0)}/s),` +
        ` ${cpuMs(p)?.toFixed(3)} ms proxy CPU each (relay ${cpuMs(r)?.toFixed(3)})`,
    );
  }
  env.results.detail.handshakes = detail;
}

/** Per-client growth of the proxy's own memory figures (inproc only). */
function _breakdown(lines: string[], clients: number): Record<string, number> | undefined {
  const reports = lines.filter((l) => l.startsWith("mem ")).map((l) => JSON.parse(l.slice(4)));
  if (reports.length < 2 || clients === 0) return undefined;
  const [before, loaded] = reports.slice(-2);
  const kib = (x: number) => _round(x / 1024 / clients, 2);
  const out: Record<string, number> = {
    heap_used_kib: kib(loaded.before_gc.heapUsed - before.before_gc.heapUsed),
    external_kib: kib(loaded.before_gc.external - before.before_gc.external),
    rss_kib: kib(loaded.before_gc.rss - before.before_gc.rss),
  };
  if (loaded.after_gc && before.after_gc) {
    const a = loaded.after_gc;
    const b = before.after_gc;
    out.heap_used_after_gc_kib = kib(a.heapUsed - b.heapUsed);
    out.heap_total_after_gc_kib = kib(a.heapTotal - b.heapTotal);
    out.external_after_gc_kib = kib(a.external - b.external);
    for (const space of ["new_space", "old_space"]) {
      if (!a.spaces?.[space] || !b.spaces?.[space]) continue;
      out[`${space}_size_kib`] = kib(a.spaces[space].size - b.spaces[space].size);
      out[`${space}_used_kib`] = kib(a.spaces[space].used - b.spaces[space].used);
    }
  }
  return out;
}

async function _memory(env: Env): Promise<void> {
  const s = env.settings;
  const flags = {
    clients: s.idleClients,
    concurrency: s.idleConcurrency,
    settle: s.settleS,
  };
  const timeout = 180;
  const perClientKib = (r: LoadResult) => r.rss_per_client.mid / 1024;
  const anonKib = (r: LoadResult) => r.anon_per_client.mid / 1024;
  const detail: Record<string, unknown> = {};
  // Fresh processes: a process that already relayed traffic keeps its grown heap and pools.
  const relay = await _startRelay(env);
  let r: LoadResult;
  try {
    r = await _load("idle", "relay", relay, env.dc, flags, timeout);
  } finally {
    await relay.child.stop();
  }
  _noteErrors(env.results, r);
  env.results.idle_errors.relay = r.errors + (r.clients - r.alive);
  detail.relay = r;
  for (const mode of PROXY_MODES) {
    const proxy = await _startProxy(env);
    let p: LoadResult;
    try {
      const memSignal = env.proxyKind === "inproc" ? { "mem-signal": proxy.child.pid } : {};
      p = await _load("idle", mode, proxy, env.dc, { ...flags, ...memSignal }, timeout);
      const breakdown = _breakdown(proxy.child.lines, p.clients);
      if (breakdown) (env.results.idle_memory_breakdown ??= {})[mode] = breakdown;
    } finally {
      await proxy.child.stop();
    }
    _noteErrors(env.results, p);
    // Clients that never connected count as errors too: the target is all of them, error-free.
    env.results.idle_errors[mode] = p.errors + (s.idleClients - p.alive);
    env.results.idle_rss_kib_per_client[mode] = _pair(perClientKib(p), perClientKib(r));
    env.results.idle_anon_kib_per_client[mode] = _pair(anonKib(p), anonKib(r));
    detail[mode] = p;
    console.error(
      `  idle ${mode}: ${perClientKib(p).toFixed(1)} KiB RSS (${anonKib(p).toFixed(1)} anon)` +
        ` per client at ${p.clients} clients (relay ${perClientKib(r).toFixed(1)},` +
        ` ${anonKib(r).toFixed(1)} anon), errors ${env.results.idle_errors[mode]}`,
    );
  }
  env.results.detail.memory = detail;
}

// ---------------------------------------------------------------------------------------------
// Middle-proxy mode

/** scripts/bench_middle.ts: the fake middle proxy (`port`) and the fake core API. */
interface MiddleFakes extends Middle {
  readonly origin: string;
  /** The fake middle proxy's connections and counters now. */
  stats(): Promise<Record<string, unknown>>;
}

async function _startMiddleFakes(): Promise<MiddleFakes> {
  const child = new Child("fake middle proxy", [
    "run",
    "--allow-all",
    script("bench_middle.ts"),
    "--tag",
    AD_TAG,
  ]);
  const m = await child.waitForLine(/^listening (\S+) (\d+)$/, 30_000);
  return {
    child,
    origin: m[1]!,
    port: Number(m[2]),
    async stats() {
      const from = child.lines.length;
      await child.send("stats\n");
      const s = await child.waitForLine(/^stats (.*)$/, 10_000, from);
      return JSON.parse(s[1]!);
    },
  };
}

/** The middle-mode proxy: `port` is the tagged listener, `directPort` the plain one. */
interface MiddleModeProxy extends Middle {
  readonly directPort: number;
}

function _middleConfigYaml(
  dcPort: number,
  directPort: number,
  middlePort: number,
  coreOrigin: string,
): string {
  return `# Written by scripts/bench.ts (middle part).
workers: 1
listeners:
  - name: direct
    host: 127.0.0.1
    port: ${directPort}
    secret: "${SECRET}"
    tls_domain: ${TLS_DOMAIN}
  - name: middle
    host: 127.0.0.1
    port: ${middlePort}
    secret: "${SECRET}"
    tls_domain: ${TLS_DOMAIN}
    tag: "${AD_TAG}"
allowed_protocols: [tls, dd, plain]
log_level: warning
fronting:
  mode: off
external_ip: 127.0.0.1
telegram:
  dc_addresses:
    "2": "127.0.0.1:${dcPort}"
  proxy_secret_url: "${coreOrigin}/getProxySecret"
  proxy_config_url: "${coreOrigin}/getProxyConfig"
timeouts:
  idle: 3600
  handshake: 60
  shutdown_grace: 1
max_connections: 20000
`;
}

/** Start the proxy with a plain and a tagged listener, its own directory for Telegram's files. */
async function _startMiddleProxy(env: Env, fakes: MiddleFakes): Promise<MiddleModeProxy> {
  const directPort = _freePort();
  let middlePort = _freePort();
  while (middlePort === directPort) middlePort = _freePort();
  // The proxy caches Telegram's files next to its config: one directory per start.
  const dir = `${env.tmp}/middle-${++proxyStarts}`;
  await Deno.mkdir(dir);
  const configPath = `${dir}/config.yaml`;
  await Deno.writeTextFile(
    configPath,
    _middleConfigYaml(env.dc.port, directPort, middlePort, fakes.origin),
  );
  const child = await _spawnProxy(env, "proxy (middle mode)", configPath, [directPort, middlePort]);
  return { child, port: middlePort, directPort };
}

type MiddlePath = "direct" | "middle";

async function _middleThroughput(
  env: Env,
  proxy: MiddleModeProxy,
  fakes: MiddleFakes,
  m: MiddleResults,
  detail: Record<string, unknown>,
): Promise<void> {
  const s = env.settings;
  const runs: Record<string, LoadResult[]> = {};
  const timeout = s.warmupS + s.seconds + 60;
  m.cbc_encrypt_gb_s = _cbcEncryptSpeed();
  for (let rep = 0; rep < s.middleRepeat; rep++) {
    for (const streams of [...STREAMS, SMALL_KEY]) {
      // Interleaved, so that a noisy moment hits every configuration alike.
      for (const mode of PROXY_MODES) {
        for (const path of ["direct", "middle"] as const) {
          const flags = {
            ...(streams === SMALL_KEY ? { streams: 16, packet: SMALL_PACKET } : { streams }),
            warmup: s.warmupS,
            seconds: s.seconds,
            framed: true,
            ...(path === "middle" ? { "mp-port": fakes.port } : {}),
          };
          const r = path === "middle"
            ? await _load("throughput", mode, proxy, fakes, flags, timeout)
            : await _load(
              "throughput",
              mode,
              { child: proxy.child, port: proxy.directPort },
              env.dc,
              flags,
              timeout,
            );
          _noteErrors(env.results, r);
          (runs[`${path}/${mode}/${streams}`] ??= []).push(r);
          if (typeof r.mp_connections === "number") {
            m.throughput_telegram_connections = Math.max(
              m.throughput_telegram_connections ?? 0,
              r.mp_connections,
            );
          }
          const other = path === "middle" ? "middle proxy" : "dc";
          const what = streams === SMALL_KEY
            ? " 16 streams, 1 KiB packets"
            : ` ${String(streams).padStart(3)} streams`;
          console.error(
            `  throughput ${path} ${mode}${what}: ` +
              `${r.echo_mb_s.toFixed(0)} MB/s` +
              ` (cpu s: proxy ${r.cpu_s.mid.toFixed(2)}, ${other} ${r.cpu_s.dc.toFixed(2)},` +
              ` load ${r.cpu_s.load.toFixed(2)} in ${r.seconds.toFixed(1)} s)`,
          );
        }
      }
    }
  }
  const mbs = (path: MiddlePath, mode: ProxyMode, streams: number | string) =>
    _median(runs[`${path}/${mode}/${streams}`]!.map((r) => r.echo_mb_s));
  const cpuPerGb = (path: MiddlePath, mode: ProxyMode) => {
    let cpu = 0;
    let bytes = 0;
    for (const streams of STREAMS) {
      for (const r of runs[`${path}/${mode}/${streams}`]!) {
        cpu += r.cpu_s.mid;
        bytes += 2 * r.bytes_down;
      }
    }
    return bytes > 0 ? cpu / (bytes / 1e9) : null;
  };
  for (const mode of PROXY_MODES) {
    const byStreams: Record<string, MiddlePair> = {};
    for (const streams of STREAMS) {
      byStreams[streams] = _mpair(mbs("middle", mode, streams), mbs("direct", mode, streams));
    }
    byStreams[SMALL_KEY] = _mpair(mbs("middle", mode, SMALL_KEY), mbs("direct", mode, SMALL_KEY));
    m.throughput_mb_s[mode] = byStreams;
    m.cpu_s_per_gb[mode] = _mpair(cpuPerGb("middle", mode), cpuPerGb("direct", mode));
    m.ceiling[mode] = _ceiling(
      runs[`middle/${mode}/16`]!,
      runs[`direct/${mode}/16`]!,
      m.cbc_encrypt_gb_s,
    );
  }
  detail.throughput = Object.fromEntries(
    Object.entries(runs).map(([k, rs]) => [
      k,
      rs.map((r) => ({
        mb_s: _round(r.echo_mb_s, 1),
        up: r.bytes_up,
        down: r.bytes_down,
        frames_down: r.frames_down,
        s: _round(r.seconds, 3),
        cpu_s: r.cpu_s,
        connect_ms: _round(r.connect_ms, 1),
        ...(typeof r.mp_connections === "number" ? { mp_connections: r.mp_connections } : {}),
      })),
    ]),
  );
}

/** The small-packet run: 16 streams of 1 KiB packets (most real Telegram traffic is small). */
const SMALL_KEY = "16x1k";
const SMALL_PACKET = 1024;

/** AES-256-CBC encryption speed on one core, GB/s: 64 MiB in 64 KiB calls. */
function _cbcEncryptSpeed(): number {
  const c = createAes("cbc-encrypt", randomBytes(32), randomBytes(16));
  try {
    const buf = randomBytes(65536);
    for (let i = 0; i < 64; i++) c.update(buf); // warm up
    const t0 = performance.now();
    for (let i = 0; i < 1024; i++) c.update(buf);
    const s = (performance.now() - t0) / 1000;
    return (1024 * buf.length) / 1e9 / s;
  } finally {
    c.close();
  }
}

/**
 * An upper bound on middle-mode throughput at 16 streams on this machine, from this run's own
 * figures: a proxy that cost per byte no more than in direct mode plus the AES-256-CBC
 * encryption that middle mode must add for what goes to Telegram (a serial chain: one core's
 * speed), next to the fake middle proxy and the load generator costing per byte what they did.
 * The limit is the proxy's one thread, or all the machine's cores, whichever comes first.
 * Middle = that bound (MB/s each way), direct = measured, ratio = the best middle / direct.
 */
function _ceiling(
  middle: LoadResult[],
  direct: LoadResult[],
  cbcGbS: number | null,
): MiddlePair {
  if (cbcGbS === null || middle.length === 0 || direct.length === 0) return _mpair(null, null);
  const sum = (rs: LoadResult[], f: (r: LoadResult) => number) => rs.reduce((a, r) => a + f(r), 0);
  const gb = (rs: LoadResult[]) => sum(rs, (r) => 2 * r.bytes_down) / 1e9; // both ways
  const directGbS = gb(direct) / sum(direct, (r) => r.seconds);
  const proxyFloor = sum(direct, (r) => r.cpu_s.mid) / gb(direct) + 0.5 / cbcGbS;
  const others = sum(middle, (r) => r.cpu_s.dc + r.cpu_s.load) / gb(middle);
  const bound = Math.min(1 / proxyFloor, navigator.hardwareConcurrency / (proxyFloor + others));
  return _mpair((bound * 1000) / 2, (directGbS * 1000) / 2);
}

async function _middleLatency(
  env: Env,
  proxy: MiddleModeProxy,
  fakes: MiddleFakes,
  m: MiddleResults,
  detail: Record<string, unknown>,
): Promise<void> {
  const flags = { pings: env.settings.pings, framed: true };
  const latency: Record<string, unknown> = {};
  for (const mode of PROXY_MODES) {
    const d = await _load(
      "latency",
      mode,
      { child: proxy.child, port: proxy.directPort },
      env.dc,
      flags,
      120,
    );
    _noteErrors(env.results, d);
    const p = await _load("latency", mode, proxy, fakes, flags, 120);
    _noteErrors(env.results, p);
    latency[`direct/${mode}`] = d;
    latency[`middle/${mode}`] = p;
    m.latency_us[mode] = { p50: _mpair(p.p50_us, d.p50_us), p99: _mpair(p.p99_us, d.p99_us) };
    console.error(
      `  latency middle ${mode}: p50 ${p.p50_us.toFixed(0)} us, p99 ${p.p99_us.toFixed(0)} us` +
        ` (direct ${d.p50_us.toFixed(0)} / ${d.p99_us.toFixed(0)})`,
    );
  }
  detail.latency = latency;
}

async function _middleMemory(
  env: Env,
  fakes: MiddleFakes,
  m: MiddleResults,
  detail: Record<string, unknown>,
): Promise<void> {
  const s = env.settings;
  const flags = {
    clients: s.middleIdleClients,
    concurrency: s.idleConcurrency,
    settle: s.settleS,
    framed: true,
    "mp-port": fakes.port,
  };
  const timeout = 240;
  const perClientKib = (r: LoadResult) => r.rss_per_client.mid / 1024;
  const anonKib = (r: LoadResult) => r.anon_per_client.mid / 1024;
  const memory: Record<string, unknown> = {};
  for (const mode of PROXY_MODES) {
    // A fresh proxy: one that already relayed traffic keeps its grown heap and pools.
    const proxy = await _startMiddleProxy(env, fakes);
    let p: LoadResult;
    try {
      const memSignal = env.proxyKind === "inproc" ? { "mem-signal": proxy.child.pid } : {};
      p = await _load("idle", mode, proxy, fakes, { ...flags, ...memSignal }, timeout);
      const breakdown = _breakdown(proxy.child.lines, p.clients);
      if (breakdown) memory[`breakdown/${mode}`] = breakdown;
    } finally {
      await proxy.child.stop();
    }
    _noteErrors(env.results, p);
    m.idle_errors[mode] = p.errors + (s.middleIdleClients - p.alive);
    const direct = env.results.idle_rss_kib_per_client[mode]?.proxy;
    const directAnon = env.results.idle_anon_kib_per_client[mode]?.proxy;
    m.idle_rss_kib_per_client[mode] = _mpair(perClientKib(p), direct);
    m.idle_anon_kib_per_client[mode] = _mpair(anonKib(p), directAnon);
    const conns = typeof p.mp_connections === "number" ? p.mp_connections : null;
    m.telegram_connections[mode] = {
      clients: p.clients,
      connections: conns,
      clients_per_connection: conns ? p.clients / conns : null,
    };
    memory[mode] = p;
    console.error(
      `  idle middle ${mode}: ${perClientKib(p).toFixed(1)} KiB RSS (${
        anonKib(p).toFixed(1)
      } anon)` +
        ` per client at ${p.clients} clients, ${conns ?? "?"} Telegram-side connections,` +
        ` errors ${m.idle_errors[mode]}`,
    );
  }
  detail.memory = memory;
}

async function _middle(env: Env): Promise<void> {
  const m: MiddleResults = {
    throughput_mb_s: {},
    cpu_s_per_gb: {},
    latency_us: {},
    idle_rss_kib_per_client: {},
    idle_anon_kib_per_client: {},
    idle_errors: {},
    telegram_connections: {},
    throughput_telegram_connections: null,
    ceiling: {},
    cbc_encrypt_gb_s: null,
    fake_middle_proxy: null,
  };
  env.results.middle = m;
  const detail: Record<string, unknown> = {};
  env.results.detail.middle = detail;
  const fakes = await _startMiddleFakes();
  // Each piece on its own: one that breaks does not take the others down.
  const attempt = async (what: string, fn: () => Promise<void>) => {
    try {
      await fn();
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      env.failures.push(`middle ${what}: ${msg}`);
      console.error(`bench: middle ${what} failed: ${msg}`);
    }
  };
  try {
    await attempt("throughput and latency", async () => {
      const proxy = await _startMiddleProxy(env, fakes);
      try {
        await attempt("throughput", () => _middleThroughput(env, proxy, fakes, m, detail));
        proxy.child.assertRunning();
        await attempt("latency", () => _middleLatency(env, proxy, fakes, m, detail));
      } finally {
        await proxy.child.stop();
      }
    });
    await attempt("memory", () => _middleMemory(env, fakes, m, detail));
    fakes.child.assertRunning();
    m.fake_middle_proxy = await fakes.stats();
  } finally {
    await fakes.child.stop();
  }
}

// ---------------------------------------------------------------------------------------------
// Split mode (scripts/bench_split.ts)

async function _split(env: Env): Promise<void> {
  const detail: Record<string, unknown> = {};
  env.results.detail.split = detail;
  // A back has no client listener for scripts/bench_proxy.ts to report: always the CLI.
  const cliEnv: Env = { ...env, proxyKind: "cli" };
  env.results.split = await runSplit({
    settings: env.settings,
    tmp: env.tmp,
    secret: SECRET,
    tlsDomain: TLS_DOMAIN,
    standaloneYaml: (port) => _configYaml(env.dc.port, port),
    dcPort: env.dc.port,
    spawnProxy: (name, configPath, ports) => _spawnProxy(cliEnv, name, configPath, ports),
    load: (scenario, mode, target, flags, timeoutS, extraPids) =>
      _load(scenario, mode, target, env.dc, flags, timeoutS, extraPids),
    noteErrors: (r) => _noteErrors(env.results, r),
    freePort: _freePort,
    progress: (line) => console.error(line),
    fail: (what, message) => {
      env.failures.push(`split ${what}: ${message}`);
      console.error(`bench: split ${what} failed: ${message}`);
    },
  }, detail);
}

// ---------------------------------------------------------------------------------------------
// Worker threads (scripts/bench_workers.ts)

async function _workers(env: Env): Promise<void> {
  const detail: Record<string, unknown> = {};
  env.results.detail.workers = detail;
  // Worker threads exist only in the CLI: always the CLI.
  const cliEnv: Env = { ...env, proxyKind: "cli" };
  env.results.workers = await runWorkers({
    settings: env.settings,
    tmp: env.tmp,
    configYaml: (port) => _configYaml(env.dc.port, port),
    spawnProxy: (name, configPath, ports, workers) =>
      _spawnProxy(cliEnv, name, configPath, ports, workers),
    load: (scenario, mode, target, flags, timeoutS) =>
      _load(scenario, mode, target, env.dc, flags, timeoutS),
    noteErrors: (r) => _noteErrors(env.results, r),
    freePort: _freePort,
    progress: (line) => console.error(line),
    fail: (what, message) => {
      env.failures.push(`workers ${what}: ${message}`);
      console.error(`bench: workers ${what} failed: ${message}`);
    },
  }, detail);
}

// ---------------------------------------------------------------------------------------------
// A user's bandwidth limit (scripts/bench_rate_limit.ts)

/** One measurement of scripts/bench_rate_limit.ts (see its `Result`). */
interface RateLimitRow {
  rate: number | null;
  clients: number;
  seconds: number;
  bytes: number;
  achieved: number;
  ratio: number | null;
  ledger_bytes: number;
}

const RATE_LIMIT_RATES = [1_000_000, 4_000_000, 16_000_000];

async function _rateLimit(env: Env): Promise<void> {
  const s = env.settings;
  // Long windows: loopback socket buffers hold megabytes, which a short window at 1 MB/s sees
  // drain or fill instead of the limit.
  const seconds = Math.max(3, s.seconds * 2);
  const warmup = Math.max(2, s.warmupS * 2);
  const runs = 2 * (1 + RATE_LIMIT_RATES.length);
  const child = new Child("rate-limit bench", [
    "run",
    "--allow-all",
    script("bench_rate_limit.ts"),
    "--seconds",
    String(seconds),
    "--warmup",
    String(warmup),
    "--rates",
    RATE_LIMIT_RATES.join(","),
    "--clients",
    "1,4",
    "--json",
  ]);
  const status = await child.wait((runs * (seconds + warmup) + 120) * 1000);
  const line = child.lines.find((l) => l.startsWith("BENCH_JSON "));
  if (!status.success || !line) {
    throw new BenchError(`rate-limit bench failed: ${child.stderr.slice(-1500)}`);
  }
  for (const l of child.lines) if (!l.startsWith("BENCH_JSON ")) console.error(`  ${l}`);
  env.results.rate_limit = JSON.parse(line.slice("BENCH_JSON ".length)).rate_limit;
}

/** Rows where the limit is below what the machine did without one (else it is no test). */
function _limitedRows(rows: readonly RateLimitRow[]): RateLimitRow[] {
  return rows.filter((r) => {
    const free = rows.find((b) => b.rate === null && b.clients === r.clients);
    return r.rate !== null && (!free || r.rate <= free.achieved * 0.8);
  });
}

function _rateLimitTable(rows: readonly RateLimitRow[]): string {
  const mb = (n: number) => (n / 1e6).toFixed(2);
  const lines = [
    "rate limit (MB/s both ways)           configured  clients saw  proxy counted  ratio",
    "-".repeat(84),
  ];
  for (const r of rows) {
    const what = `${r.rate === null ? "no limit" : "rate_limit"}, ${r.clients} client(s)`;
    lines.push(
      `${what.padEnd(36)} ${(r.rate === null ? "-" : mb(r.rate)).padStart(11)} ${
        mb(r.achieved).padStart(12)
      } ${mb(r.ledger_bytes / r.seconds).padStart(14)} ${
        (r.ratio === null ? "n/a" : r.ratio.toFixed(2)).padStart(6)
      }`,
    );
  }
  lines.push("-".repeat(84));
  lines.push(
    "Ratio = what the clients saw / configured. The clients saw twice the bytes echoed back",
    "to them in the window (the limit counts both ways); the proxy counted what it read from",
    "either side for the user. Every byte above the limit would show in what the clients saw;",
    "bytes still in loopback socket buffers make it read low, more so with 4 clients.",
  );
  return lines.join("\n");
}

function _rateLimitTargets(rows: readonly RateLimitRow[]): Target[] {
  const limited = _limitedRows(rows);
  if (limited.length === 0) return [];
  const counted = limited.map((r) => r.ledger_bytes / r.seconds / r.rate!);
  const worst = counted.reduce((w, x) => Math.abs(x - 1) > Math.abs(w - 1) ? x : w);
  const saw = limited.reduce((sum, r) => sum + r.ratio!, 0) / limited.length;
  return [
    {
      name: "rate_limit: bytes the proxy moved over the configured rate, furthest from 1",
      value: worst,
      limit: "0.90x-1.10x",
      pass: worst >= 0.9 && worst <= 1.1,
    },
    {
      // Socket buffers on the way make each window read high or low: a check, not a target.
      name: "rate_limit: bytes the clients saw over the configured rate, mean of all rows",
      value: saw,
      limit: "about 1.00x",
      pass: null,
    },
  ];
}

// ---------------------------------------------------------------------------------------------
// Many users on one port (scripts/bench_users.ts)

async function _users(env: Env): Promise<void> {
  const detail: Record<string, unknown> = {};
  env.results.detail.users = detail;
  // One worker thread, as every part but workers; always the CLI (a real proxy process).
  const cliEnv: Env = { ...env, proxyKind: "cli" };
  env.results.users = await runUsers({
    settings: env.settings,
    tmp: env.tmp,
    configYaml: (port) => _configYaml(env.dc.port, port),
    tlsDomain: TLS_DOMAIN,
    spawnProxy: (name, configPath, ports) => _spawnProxy(cliEnv, name, configPath, ports),
    runJson: async (name, args, timeoutS) => {
      const child = new Child(name, ["run", "--allow-all", ...args]);
      const status = await child.wait(timeoutS * 1000);
      env.dc.child.assertRunning();
      const last = child.lines.filter((l) => l.startsWith("{")).at(-1);
      if (!status.success || !last) {
        const how = status.signal ? `signal ${status.signal}` : `code ${status.code}`;
        throw new BenchError(`${child.name} failed (${how}): ${child.stderr.slice(-1500)}`);
      }
      return JSON.parse(last);
    },
    dcPid: env.dc.child.pid,
    noteErrors: (r) => _noteErrors(env.results, r),
    freePort: _freePort,
    progress: (line) => console.error(line),
    fail: (what, message) => {
      env.failures.push(`users ${what}: ${message}`);
      console.error(`bench: users ${what} failed: ${message}`);
    },
  }, detail);
}

// ---------------------------------------------------------------------------------------------
// Output

function _round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

function _fmt(x: number | null | undefined, digits: number): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return "n/a";
  return x.toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

interface Row {
  label: string;
  pair: Pair | undefined;
  digits: number;
}

function _table(results: Results, settings: Settings): string {
  const rows: (Row | string)[] = [];
  for (const mode of PROXY_MODES) {
    const t = results.throughput_mb_s[mode];
    if (!t) continue;
    for (const streams of STREAMS) {
      const s = streams === 1 ? "stream" : "streams";
      rows.push({
        label: `throughput ${mode}, ${streams} ${s} (MB/s)`,
        pair: t[streams],
        digits: 0,
      });
    }
  }
  for (const mode of PROXY_MODES) {
    const c = results.cpu_s_per_gb[mode];
    if (c) rows.push({ label: `CPU per GB relayed, ${mode} (s/GB)`, pair: c, digits: 2 });
  }
  for (const mode of PROXY_MODES) {
    const l = results.latency_us[mode];
    if (!l) continue;
    rows.push({ label: `latency p50, ${mode} (us)`, pair: l.p50, digits: 0 });
    rows.push({ label: `latency p99, ${mode} (us)`, pair: l.p99, digits: 0 });
  }
  for (const mode of ["ee", "dd"] as const) {
    const h = results.handshakes_per_s[mode];
    if (h) rows.push({ label: `handshakes/s, ${mode} (1)`, pair: h, digits: 0 });
    const hc = results.handshake_cpu_ms[mode];
    if (hc) rows.push({ label: `CPU ms per handshake, ${mode} (1)`, pair: hc, digits: 3 });
  }
  for (const mode of ["ee", "dd"] as const) {
    const m = results.idle_rss_kib_per_client[mode];
    if (!m) continue;
    rows.push({
      label: `RSS per idle client, ${mode} (KiB) (2)`,
      pair: m,
      digits: 1,
    });
    rows.push({
      label: `errors at ${settings.idleClients} idle clients, ${mode}`,
      pair: _pair(results.idle_errors[mode], results.idle_errors.relay),
      digits: 0,
    });
  }
  const w = [44, 10, 10, 7];
  const line = (cells: string[]) =>
    cells.map((c, i) => i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!)).join(" ");
  const out = [line(["metric", "proxy", "relay", "ratio"]), "-".repeat(74)];
  for (const r of rows) {
    if (typeof r === "string") out.push(r);
    else {
      out.push(line([
        r.label,
        _fmt(r.pair?.proxy, r.digits),
        _fmt(r.pair?.relay, r.digits),
        _fmt(r.pair?.ratio, 2),
      ]));
    }
  }
  out.push("-".repeat(74));
  out.push("Ratio = proxy / relay.");
  if (Object.keys(results.throughput_mb_s).length > 0) {
    out.push(
      "MB/s = 10^6 bytes/s echoed back to the clients, summed over streams (64 KiB writes, at",
      `most 1 MiB in flight per stream; median of ${settings.repeat}). CPU = the middle process's`,
      "user+system time per 10^9 bytes it relayed both ways (2x echoed bytes), all stream counts.",
    );
  }
  if (Object.keys(results.latency_us).length > 0) {
    out.push(`Latency: ${settings.pings} sequential 100-byte ping-pongs on one connection.`);
  }
  if (Object.keys(results.handshakes_per_s).length > 0) {
    out.push(
      "(1) connect, handshake (ee: fake-TLS; dd: obfuscated2 init), first 100-byte packet",
      `    echoed, close; ${settings.hsWorkers} at a time. Relay: connect, obfuscated2 init,` +
        " packet, close.",
    );
  }
  if (Object.keys(results.idle_rss_kib_per_client).length > 0) {
    out.push(
      "(2) RSS growth / clients, every client idle after one ping-pong (both sockets open);",
      "    fresh process, warmed up with 100 clients first.",
    );
  }
  return out.join("\n");
}

/** The middle-mode table: middle figure, direct figure, middle / direct. */
function _middleTable(m: MiddleResults, settings: Settings): string {
  interface MRow {
    label: string;
    pair: MiddlePair | undefined;
    digits: number;
  }
  const rows: MRow[] = [];
  for (const mode of PROXY_MODES) {
    const t = m.throughput_mb_s[mode];
    if (!t) continue;
    for (const streams of STREAMS) {
      const s = streams === 1 ? "stream" : "streams";
      rows.push({
        label: `throughput ${mode}, ${streams} ${s} (MB/s) (3)`,
        pair: t[streams],
        digits: 0,
      });
    }
    if (t[SMALL_KEY]) {
      rows.push({
        label: `throughput ${mode}, 16 streams, 1 KiB pkts (MB/s)`,
        pair: t[SMALL_KEY],
        digits: 0,
      });
    }
  }
  for (const mode of PROXY_MODES) {
    const c = m.ceiling[mode];
    if (c?.middle != null) {
      rows.push({ label: `ceiling ${mode}, 16 streams (MB/s) (6)`, pair: c, digits: 0 });
    }
  }
  for (const mode of PROXY_MODES) {
    const c = m.cpu_s_per_gb[mode];
    if (c) rows.push({ label: `CPU per GB relayed, ${mode} (s/GB)`, pair: c, digits: 2 });
  }
  for (const mode of PROXY_MODES) {
    const l = m.latency_us[mode];
    if (!l) continue;
    rows.push({ label: `latency p50, ${mode} (us)`, pair: l.p50, digits: 0 });
    rows.push({ label: `latency p99, ${mode} (us)`, pair: l.p99, digits: 0 });
  }
  for (const mode of PROXY_MODES) {
    const r = m.idle_rss_kib_per_client[mode];
    if (!r) continue;
    const conns = m.telegram_connections[mode];
    rows.push({ label: `RSS per idle client, ${mode} (KiB) (4)`, pair: r, digits: 1 });
    rows.push({
      label: `errors at ${settings.middleIdleClients} idle clients, ${mode}`,
      pair: _mpair(m.idle_errors[mode], null),
      digits: 0,
    });
    rows.push({
      label: `Telegram-side connections, ${mode} (5)`,
      pair: _mpair(conns?.connections, null),
      digits: 0,
    });
    rows.push({
      label: `clients per Telegram-side connection, ${mode}`,
      pair: _mpair(conns?.clients_per_connection, null),
      digits: 0,
    });
  }
  const w = [44, 10, 10, 7];
  const line = (cells: string[]) =>
    cells.map((c, i) => i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!)).join(" ");
  const out = [line(["middle-proxy mode", "middle", "direct", "ratio"]), "-".repeat(74)];
  for (const r of rows) {
    out.push(line([
      r.label,
      _fmt(r.pair?.middle, r.digits),
      _fmt(r.pair?.direct, r.digits),
      _fmt(r.pair?.ratio, 2),
    ]));
  }
  out.push("-".repeat(74));
  out.push(
    "Ratio = middle / direct. Middle: the proxy's listener with an ad tag, its clients",
    "multiplexed over RPC connections to a fake middle proxy that echoes every packet",
    "(scripts/bench_middle.ts). Direct: the same proxy's plain listener to the echo DC.",
  );
  if (Object.keys(m.throughput_mb_s).length > 0) {
    out.push(
      "(3) Both framed: 16 KiB packets as padded intermediate frames, 4 per write, encrypted",
      "    by the load generator; MB/s = echoed payload bytes (frames parsed), at most 1 MiB in",
      `    flight per stream; median of ${settings.middleRepeat}.` +
        (m.throughput_telegram_connections === null
          ? ""
          : ` Telegram-side connections: ${m.throughput_telegram_connections}.`),
    );
  }
  if (Object.keys(m.latency_us).length > 0) {
    out.push(
      `Latency: ${settings.pings} sequential 100-byte packets (framed) on one connection.`,
    );
  }
  if (Object.keys(m.idle_rss_kib_per_client).length > 0) {
    out.push(
      `(4) Middle: RSS growth / clients with ${settings.middleIdleClients} idle clients (one` +
        " socket each, the",
      "    Telegram side shared), fresh process; direct: the figure of the memory part above",
      `    (${settings.idleClients} clients, two sockets each), when it ran.`,
      "(5) Established TCP connections from the proxy to the fake middle proxy with all those",
      "    clients connected (direct mode opens one per client).",
    );
  }
  if (Object.keys(m.ceiling).length > 0 && m.cbc_encrypt_gb_s !== null) {
    out.push(
      "(6) The most middle mode could do here (an upper bound, from this run's figures): a",
      "    proxy costing per byte what it does in direct mode plus the AES-256-CBC encryption",
      `    middle mode adds toward Telegram (a serial chain: ${
        m.cbc_encrypt_gb_s.toFixed(2)
      } GB/s on one core here),`,
      "    beside the fake middle proxy and the load generator costing what they did per byte;",
      `    limited by the proxy's one thread or the machine's ${navigator.hardwareConcurrency} cores.` +
        " Ratio = bound / direct.",
    );
  }
  return out.join("\n");
}

interface Target {
  name: string;
  value: number | null;
  limit: string;
  pass: boolean | null;
}

function _targets(results: Results, settings: Settings): Target[] {
  const targets: Target[] = [];
  const ee16 = results.throughput_mb_s.ee?.[16];
  if (ee16) {
    targets.push({
      name: `ee throughput with 16 streams vs plain relay`,
      value: ee16.ratio,
      limit: `>= ${TARGET_EE_RATIO}x`,
      pass: ee16.ratio === null ? null : ee16.ratio >= TARGET_EE_RATIO,
    });
  }
  const idle = PROXY_MODES.map((m) => results.idle_rss_kib_per_client[m]?.proxy)
    .filter((x): x is number => typeof x === "number");
  if (idle.length > 0) {
    const worst = Math.max(...idle);
    targets.push({
      name: `RSS per idle client (both sockets) at ${settings.idleClients} clients, worst of ` +
        `${PROXY_MODES.filter((m) => results.idle_rss_kib_per_client[m]).join("/")}`,
      value: worst,
      limit: `<= ${TARGET_IDLE_KIB} KiB`,
      pass: worst <= TARGET_IDLE_KIB,
    });
  }
  const errs = PROXY_MODES.map((m) => results.idle_errors[m])
    .filter((x): x is number => typeof x === "number");
  if (errs.length > 0) {
    const total = errs.reduce((a, b) => a + b, 0);
    targets.push({
      name: `errors at ${settings.idleClients} concurrent clients`,
      value: total,
      limit: "0",
      pass: total === 0,
    });
  }
  const m = results.middle;
  const mid16 = PROXY_MODES.map((mode) => m?.throughput_mb_s[mode]?.[16]?.ratio)
    .filter((x): x is number => typeof x === "number");
  if (mid16.length > 0) {
    const worst = Math.min(...mid16);
    targets.push({
      name: `middle-mode throughput with 16 streams vs direct mode, worst of ` +
        `${PROXY_MODES.filter((mode) => m?.throughput_mb_s[mode]).join("/")}`,
      value: worst,
      limit: `>= ${TARGET_MIDDLE_RATIO}x`,
      pass: worst >= TARGET_MIDDLE_RATIO,
    });
  }
  const conns = PROXY_MODES.map((mode) => m?.telegram_connections[mode])
    .filter((c): c is MiddleConnections => c !== undefined);
  if (conns.length > 0) {
    const known = conns.filter((c) => c.connections !== null);
    // The fewest clients over the most connections: the worst ratio of the runs.
    const worst = known.length === 0
      ? null
      : known.reduce((a, b) => a.clients * b.connections! < b.clients * a.connections! ? a : b);
    const allowed = worst
      ? Math.floor(worst.clients / TARGET_CLIENTS_PER_MP_CONNECTION)
      : Math.floor(settings.middleIdleClients / TARGET_CLIENTS_PER_MP_CONNECTION);
    targets.push({
      name: `Telegram-side connections at ${worst?.clients ?? settings.middleIdleClients}` +
        ` idle middle-mode clients, worst of ` +
        `${PROXY_MODES.filter((mode) => m?.telegram_connections[mode]).join("/")}`,
      value: worst?.connections ?? null,
      limit: `<= ${allowed} (1 per ${TARGET_CLIENTS_PER_MP_CONNECTION} clients)`,
      pass: worst ? worst.connections! * TARGET_CLIENTS_PER_MP_CONNECTION <= worst.clients : null,
    });
  }
  return targets;
}

function _targetLine(t: Target): string {
  const verdict = t.pass === null ? "n/a " : t.pass ? "PASS" : "MISS";
  const digits = t.limit.endsWith("x") ? 2 : t.limit.endsWith("KiB") ? 1 : 0;
  const unit = t.limit.endsWith("x")
    ? "x"
    : t.limit.endsWith("KiB")
    ? " KiB"
    : t.limit.endsWith(" us")
    ? " us"
    : "";
  return `${verdict}  ${t.name}: ${_fmt(t.value, digits)}${unit} (target ${t.limit})`;
}

function _loadavg(): number[] {
  try {
    return Deno.readTextFileSync("/proc/loadavg").split(" ").slice(0, 3).map(Number);
  } catch {
    return [];
  }
}

/** Share of all CPUs busy over the next `ms` (0..1), from /proc/stat; null off Linux. */
async function _machineBusy(ms: number): Promise<number | null> {
  const sample = () => {
    const f = Deno.readTextFileSync("/proc/stat").split("\n")[0]!.trim().split(/\s+/).slice(1)
      .map(Number);
    const idle = f[3]! + (f[4] ?? 0);
    return { idle, total: f.reduce((a, b) => a + b, 0) };
  };
  try {
    const a = sample();
    await new Promise((r) => setTimeout(r, ms));
    const b = sample();
    return b.total > a.total ? 1 - (b.idle - a.idle) / (b.total - a.total) : null;
  } catch {
    return null;
  }
}

/** `deno run` should be the process itself; a child would escape the CPU and RSS readings. */
/**
 * Start the proxy on `configPath`: `mtproxy run --workers N` (proxyKind "cli"; one worker
 * thread unless `workers` says otherwise, whatever the config or MTP_WORKERS say) or the
 * in-process wrapper (one thread), and wait until every port in `ports` listens.
 */
async function _spawnProxy(
  env: Env,
  name: string,
  configPath: string,
  ports: readonly number[],
  workers = "1",
): Promise<Child> {
  if (env.proxyKind === "cli") {
    const child = new Child(name, [
      "run",
      "--allow-all",
      ..._v8Flags(env),
      `${ROOT}main.ts`,
      "run",
      "--config",
      configPath,
      "--workers",
      workers,
    ]);
    for (const port of ports) {
      await child.waitForLine(new RegExp(`^listening on 127\\.0\\.0\\.1:${port}\\b`), 60_000);
    }
    _warnIfForked(child);
    return child;
  }
  const child = new Child(name, [
    "run",
    "--allow-all",
    ..._v8Flags(env, ["--expose-gc"]),
    script("bench_proxy.ts"),
    "--config",
    configPath,
  ]);
  await child.waitForLine(/^listening (\d+)$/, 60_000);
  return child;
}

function _warnIfForked(child: Child): void {
  try {
    const pid = child.pid;
    const kids = Deno.readTextFileSync(`/proc/${pid}/task/${pid}/children`).trim();
    if (kids) {
      console.error(
        `bench: warning: ${child.name} (pid ${pid}) has child processes ${kids}; ` +
          "its CPU and memory figures miss them",
      );
    }
  } catch {
    // Not Linux: nothing to check.
  }
}

// ---------------------------------------------------------------------------------------------

async function _main(): Promise<number> {
  let values;
  try {
    values = parseArgs({
      args: Deno.args,
      options: {
        quick: { type: "boolean", default: false },
        only: { type: "string" },
        repeat: { type: "string" },
        proxy: { type: "string", default: "cli" },
        "v8-flags": { type: "string", default: _startTaskV8Flags() },
        help: { type: "boolean", short: "h", default: false },
      },
    }).values;
  } catch (e) {
    console.error(`bench: ${e instanceof Error ? e.message : e}\n\n${HELP}`);
    return 2;
  }
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const parts = new Set<Part>();
  for (const p of (values.only ?? PARTS.join(",")).split(",").map((x) => x.trim())) {
    if (!PARTS.includes(p as Part)) {
      console.error(`bench: Unknown part "${p}": expected some of ${PARTS.join(", ")}`);
      return 2;
    }
    parts.add(p as Part);
  }
  const base = values.quick ? QUICK : FULL;
  const repeat = Number(values.repeat ?? base.repeat);
  if (!Number.isInteger(repeat) || repeat < 1) {
    console.error(`bench: Invalid --repeat: "${values.repeat}"`);
    return 2;
  }
  if (values.proxy !== "cli" && values.proxy !== "inproc") {
    console.error(`bench: Invalid --proxy: "${values.proxy}": expected cli or inproc`);
    return 2;
  }
  const settings: Settings = {
    ...base,
    repeat,
    middleRepeat: values.repeat === undefined ? base.middleRepeat : repeat,
  };

  let tmp: string | null = null;
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    Deno.addSignalListener(signal, () => {
      _killAll();
      try {
        if (tmp) Deno.removeSync(tmp, { recursive: true });
      } catch {
        // Leave it to the OS.
      }
      Deno.exit(130);
    });
  }

  const started = performance.now();
  const loadStart = _loadavg();
  const busy = await _machineBusy(1000);
  console.error(
    `bench: ${[...parts].join(", ")}${values.quick ? " (quick)" : ""}; proxy: ${values.proxy};` +
      ` ${navigator.hardwareConcurrency} CPUs, ${busy === null ? "?" : _fmt(busy * 100, 0)}%` +
      ` busy before the start`,
  );
  if (busy !== null && busy > 0.1) {
    console.error("bench: warning: something else is using the CPUs; figures will be noisy");
  }
  const results: Results = {
    throughput_mb_s: {},
    cpu_s_per_gb: {},
    latency_us: {},
    handshakes_per_s: {},
    handshake_cpu_ms: {},
    idle_rss_kib_per_client: {},
    idle_anon_kib_per_client: {},
    idle_errors: {},
    errors: 0,
    error_samples: [],
    detail: {},
  };
  const failures: string[] = [];
  tmp = await Deno.makeTempDir({ prefix: "mtproxy-bench-" });
  let dc: Middle | null = null;
  try {
    dc = await _startDc();
    const env: Env = {
      settings,
      proxyKind: values.proxy,
      v8Flags: values["v8-flags"],
      tmp,
      dc,
      results,
      failures,
    };
    const run: Record<Part, (env: Env) => Promise<void>> = {
      throughput: _throughput,
      latency: _latency,
      handshakes: _handshakes,
      memory: _memory,
      middle: _middle,
      split: _split,
      workers: _workers,
      users: _users,
      ratelimit: _rateLimit,
    };
    for (const part of PARTS) {
      if (!parts.has(part)) continue;
      console.error(`bench: ${part}`);
      try {
        await run[part](env);
      } catch (e) {
        const msg = e instanceof Error ? e.message : String(e);
        failures.push(`${part}: ${msg}`);
        console.error(`bench: ${part} failed: ${msg}`);
        // A dead proxy or relay is not reused.
        if (shared && (shared.proxy.child.exited || shared.relay.child.exited)) {
          await Promise.all([shared.proxy.child.stop(), shared.relay.child.stop()]);
          shared = null;
        }
      }
    }
  } catch (e) {
    failures.push(e instanceof Error ? e.message : String(e));
  } finally {
    const stops = [...children].map((c) => c.stop());
    await Promise.all(stops);
    shared = null;
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }

  const targets = [
    ..._targets(results, settings),
    ...(results.split ? splitTargets(results.split) : []),
    ...(results.workers ? workersTargets(results.workers) : []),
    ...(results.users ? usersTargets(results.users) : []),
    ...(results.rate_limit ? _rateLimitTargets(results.rate_limit) : []),
  ];
  const seconds = (performance.now() - started) / 1000;
  const mainParts = [...parts].some((p) =>
    p !== "middle" && p !== "split" && p !== "workers" && p !== "users" && p !== "ratelimit"
  );
  if (mainParts) console.log(_table(results, settings));
  if (results.middle) {
    if (mainParts) console.log("");
    console.log(_middleTable(results.middle, settings));
    const breakdowns = Object.entries(results.detail.middle as Record<string, unknown>)
      .filter(([k]) => k === "memory")
      .flatMap(([, v]) => Object.entries(v as Record<string, unknown>))
      .filter(([k]) => k.startsWith("breakdown/"));
    for (const [k, b] of breakdowns) {
      console.log(
        `proxy memory per idle middle-mode ${k.slice("breakdown/".length)} client: ` +
          Object.entries(b as Record<string, number>).map(([k, v]) => `${k} ${v}`).join(", "),
      );
    }
  }
  if (results.split) {
    if (mainParts || results.middle) console.log("");
    console.log(splitTable(results.split, settings));
  }
  if (results.workers) {
    if (mainParts || results.middle || results.split) console.log("");
    console.log(workersTable(results.workers, settings));
  }
  if (results.users) {
    if (mainParts || results.middle || results.split || results.workers) console.log("");
    console.log(usersTable(results.users, settings));
  }
  if (results.rate_limit) {
    if (mainParts || results.middle || results.split || results.workers || results.users) {
      console.log("");
    }
    console.log(_rateLimitTable(results.rate_limit));
  }
  if (results.idle_memory_breakdown) {
    for (const [mode, b] of Object.entries(results.idle_memory_breakdown)) {
      console.log(
        `proxy memory per idle ${mode} client: ` +
          Object.entries(b).map(([k, v]) => `${k} ${v}`).join(", "),
      );
    }
  }
  if (results.errors > 0) {
    console.log(`errors: ${results.errors} (${results.error_samples.join("; ")})`);
  }
  console.log("");
  for (const t of targets) console.log(_targetLine(t));
  for (const f of failures) console.log(`BENCH FAILED  ${f}`);
  const json = {
    version: 1,
    date: new Date().toISOString(),
    quick: values.quick,
    proxy: values.proxy,
    v8_flags: values["v8-flags"],
    parts: [...parts],
    seconds: _round(seconds, 1),
    machine: {
      cpus: navigator.hardwareConcurrency,
      deno: Deno.version.deno,
      busy_before_start: busy,
      loadavg_start: loadStart,
      loadavg_end: _loadavg(),
    },
    settings,
    ...results,
    targets,
    failures,
  };
  console.log(
    `BENCH_JSON ${JSON.stringify(json, (_k, v) => typeof v === "number" ? _round(v, 3) : v)}`,
  );
  return failures.length > 0 ? 1 : 0;
}

if (import.meta.main) {
  let code = 1;
  try {
    code = await _main();
  } catch (e) {
    console.error(`bench: ${e instanceof Error ? e.stack : String(e)}`);
  } finally {
    _killAll();
  }
  Deno.exit(code);
}
