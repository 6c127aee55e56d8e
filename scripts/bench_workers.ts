/**
 * The `workers` part of `deno task bench`: the same proxy (`main.ts run --config FILE
 * --workers N`, its own process) with 1 worker, 2 workers and `auto` (one per CPU; skipped when
 * that is also 1 or 2), every figure also as a ratio to the 1-worker run of the same sitting.
 * Runs of the different worker counts are interleaved, so that a noisy moment hits all alike.
 *
 * Measured:
 * - direct-mode throughput: `dd` clients, 16 streams, through the echo DC of the other parts
 *   (scripts/bench_dc.ts), and the proxy's CPU seconds per GB relayed;
 * - fake-TLS handshakes per second: the handshakes part's workload (`ee`, connect, handshake,
 *   100-byte packet echoed through the DC, close, {@linkcode WorkersHost} `hsWorkers` at a
 *   time);
 * - a CPU-bound scenario where the proxy, not the fakes, is the limit (see
 *   {@linkcode CPU_BOUND}): fake-TLS handshakes alone, with every ClientHello prepared by the
 *   load generator before the clock starts, many at a time;
 * - RSS per idle client with `idleClients` idle clients (fresh processes, as the memory part);
 * - for each run, the CPU the proxy, the echo DC and the load generator used (the proxy's share
 *   of those three), what the rest of the machine used meanwhile, and how the connections
 *   spread over the workers (`mtproxy_worker_connections_active`, sampled while the run lasts).
 *
 * bench.ts drives it through {@linkcode WorkersHost} and prints {@linkcode workersTable} and
 * {@linkcode workersTargets}.
 *
 * @module
 */
import { MAX_WORKERS } from "../lib/config/defaults.ts";

/** The load generator's JSON result. */
// deno-lint-ignore no-explicit-any
export type LoadResult = Record<string, any>;

/** A child process the host started. */
export interface WorkersChild {
  readonly name: string;
  readonly pid: number;
  assertRunning(): void;
  stop(): Promise<void>;
}

/** A process and the port that the load generator connects to. */
export interface WorkersProcess {
  readonly child: WorkersChild;
  readonly port: number;
}

export type WorkersMode = "dd" | "ee";

/** What bench.ts gives the workers part. */
export interface WorkersHost {
  settings: {
    warmupS: number;
    seconds: number;
    repeat: number;
    hsWorkers: number;
    hsSeconds: number;
    idleClients: number;
    idleConcurrency: number;
    settleS: number;
  };
  /** Directory for config files. */
  tmp: string;
  /** The config of the other parts' proxy (one listener on `port`, DC 2 = the echo DC). */
  configYaml(port: number): string;
  /** `main.ts run --config FILE --workers N`; resolves once every port listens. */
  spawnProxy(
    name: string,
    configPath: string,
    ports: readonly number[],
    workers: string,
  ): Promise<WorkersChild>;
  /** Run the load generator against `target` (pids `mid` = target, `dc` = the echo DC). */
  load(
    scenario: string,
    mode: WorkersMode,
    target: WorkersProcess,
    flags: Record<string, string | number | boolean>,
    timeoutS: number,
  ): Promise<LoadResult>;
  /** Count the load generator's errors in the run's totals. */
  noteErrors(r: LoadResult): void;
  freePort(): number;
  /** Print a progress line (stderr). */
  progress(line: string): void;
  /** Record that `what` could not be measured. */
  fail(what: string, message: string): void;
}

/**
 * The CPU-bound scenario. On a 2-core machine the load generator and the fakes share the cores
 * with the proxy, so a second worker can only help as far as the others leave CPU free: if the
 * proxy takes a share `s` of the CPU the three use, 2 workers can do at most `min(2, cores x s)`
 * times what 1 worker held to one core does, and 1.6x needs `s` >= 0.8.
 *
 * Bulk relaying cannot get there: per byte the proxy makes the socket calls of the load
 * generator and the DC together (it reads and writes both sides) plus its AES-CTR passes, so
 * `s` stays near 0.5 (measured here: 0.50 for `dd` and `ee` through the echo DC, 0.53-0.57 for
 * `ee` through a DC that echoed without any crypto). A fake-TLS handshake is the proxy's own
 * work: it parses and checks the ClientHello (HMAC-SHA256), asks the replay cache (shared by
 * the workers), builds and signs a ServerHello with a key share and a fake certificate, while
 * the client, its hellos signed before the clock starts, only connects, writes, reads and
 * closes. So: `prepared-handshakes --stop-after hello` (no DC connection at all), many at a
 * time so that one worker is kept busy. What the client still costs is mostly the kernel's:
 * on loopback the whole TCP handshake and teardown run in the connecting process. Measured
 * here: the proxy ~180-240 us per hello, the load generator ~75-95 us, `s` ~0.7, a ceiling
 * near 1.4x on 2 cores by that count. But one worker is not held to one core: V8's garbage
 * collector and compilers run on threads of their own beside its loop (20-50 us per hello), so
 * the 1-worker proxy took 1.1-1.15 cores and the three 1.65 of the 2; the ceiling the table
 * prints is therefore min(2, cores / the cores the three used with 1 worker), about 1.2x here.
 */
const CPU_BOUND = {
  scenario: "prepared-handshakes",
  mode: "ee" as WorkersMode,
  concurrency: 64,
  stopAfter: "hello",
  /** Hellos prepared per run: more than the fastest run here gets through. */
  prepared: 60_000,
};

/** Targets; measured and reported, never asserted. */
const TARGET_HANDSHAKES_RATIO = 1.6;
const TARGET_CPU_BOUND_RATIO = 1.6;
const TARGET_THROUGHPUT_RATIO = 1.0;
const TARGET_EXTRA_IDLE_KIB = 1;

const THROUGHPUT_STREAMS = 16;
const IDLE_MODES: readonly WorkersMode[] = ["dd", "ee"];
/** How often the per-worker connection gauges are read during a run. */
const SAMPLE_MS = 250;
/**
 * Before each round of runs (one per worker count), wait up to QUIET_WAIT_MS for the machine
 * to be busy under QUIET_BUSY (the proxies idle, nothing of the bench running), at most
 * QUIET_BUDGET_MS in all: on a shared machine, other work would otherwise decide the ratios.
 */
const QUIET_BUSY = 0.15;
const QUIET_WAIT_MS = 30_000;
const QUIET_BUDGET_MS = 180_000;

/** What `workers: auto` resolves to here (as lib/cli/run.ts resolves it). */
export function autoWorkers(): number {
  return Math.max(1, Math.min(MAX_WORKERS, navigator.hardwareConcurrency || 1));
}

/** A figure with N workers, and that figure over the 1-worker figure. */
export interface WorkersFigure {
  value: number | null;
  ratio: number | null;
}

/** How a run's CPU went: cores busy on average, per process and on the whole machine. */
export interface CpuSplit {
  proxy: number;
  dc: number;
  load: number;
  /** proxy / (proxy + dc + load). */
  proxy_share: number;
  /** Cores used by everything else on the machine meanwhile; null off Linux. */
  others: number | null;
}

/** How connections spread over the workers during a run. */
export interface Spread {
  /** Per worker (1..N): its mean share of the open connections over the samples. */
  shares: number[];
  /** Per worker: its connections in the sample with the most connections in all. */
  at_peak: number[];
  samples: number;
}

/** One worker count: how it was asked, how many it means, how many served. */
export interface WorkersConfig {
  name: string;
  workers: number;
  /** `mtproxy_workers` after the start (1 when absent: one worker has no supervisor). */
  serving: number | null;
}

export interface WorkersResults {
  configs: WorkersConfig[];
  /** What auto means here, and whether it was run (not when it is 1 or 2). */
  auto: { workers: number; run: boolean };
  /** dd, 16 streams, through the echo DC. */
  throughput_mb_s: Record<string, WorkersFigure>;
  cpu_s_per_gb: Record<string, WorkersFigure>;
  /** The handshakes part's ee workload. */
  handshakes_per_s: Record<string, WorkersFigure>;
  /** The CPU-bound scenario: fake-TLS handshakes per second. */
  cpu_bound_per_s: Record<string, WorkersFigure>;
  /**
   * Per handshake scenario ("handshakes", "cpu_bound") and config: the proxy's CPU per
   * handshake (us), and the DC's and the load generator's together.
   */
  cpu_us_per_handshake: Record<
    string,
    Record<string, { proxy: number; others: number } | null>
  >;
  /**
   * The most 2 workers could give over 1 worker, from the 1-worker run's CPU split:
   * min(2, cores / the cores the three processes used), each costing per hello what it did.
   */
  cpu_bound_ceiling_ratio: number | null;
  /** Per scenario ("throughput", "handshakes", "cpu_bound") and config: the CPU split. */
  cpu: Record<string, Record<string, CpuSplit | null>>;
  /** Per scenario and config with more than one worker. */
  spread: Record<string, Record<string, Spread | null>>;
  idle_rss_kib_per_client: Partial<Record<WorkersMode, Record<string, WorkersFigure>>>;
  idle_anon_kib_per_client: Partial<Record<WorkersMode, Record<string, WorkersFigure>>>;
  idle_errors: Partial<Record<WorkersMode, Record<string, number>>>;
  /** Rounds of runs, those that started on a busy machine, and the seconds spent waiting. */
  quiet: { rounds: number; busy_rounds: number; waited_s: number };
}

/** Share of all CPUs busy over the next `ms` (0..1), from /proc/stat; null off Linux. */
async function _machineBusy(ms: number): Promise<number | null> {
  const sample = () => {
    const f = Deno.readTextFileSync("/proc/stat").split("\n")[0]!.trim().split(/\s+/).slice(1)
      .map(Number);
    return { idle: f[3]! + (f[4] ?? 0), total: f.slice(0, 8).reduce((a, b) => a + b, 0) };
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

/** Waiting for a quiet machine: what is left of the budget, and how the rounds started. */
interface Quiet {
  budgetMs: number;
  rounds: number;
  /** Rounds started with the machine busier than QUIET_BUSY (the wait ran out). */
  busyRounds: number;
  waitedMs: number;
}

/** Wait until the machine is quiet (see QUIET_BUSY), within the budget; say so if it is not. */
async function _quiet(host: WorkersHost, q: Quiet): Promise<void> {
  q.rounds++;
  const t0 = Date.now();
  const deadline = t0 + Math.min(QUIET_WAIT_MS, q.budgetMs);
  let busy: number | null = null;
  while (true) {
    busy = await _machineBusy(500);
    if (busy === null || busy < QUIET_BUSY || Date.now() >= deadline) break;
  }
  const waited = Date.now() - t0;
  q.waitedMs += waited;
  q.budgetMs = Math.max(0, q.budgetMs - waited);
  if (busy !== null && busy >= QUIET_BUSY) {
    q.busyRounds++;
    host.progress(
      `  (the machine is ${(busy * 100).toFixed(0)}% busy with other work; going on anyway)`,
    );
  }
}

function _median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** The figures of one config, with ratios to `base` (the 1-worker config). */
function _figures(values: Record<string, number | null>, base: string) {
  const out: Record<string, WorkersFigure> = {};
  const b = values[base] ?? null;
  for (const [name, v] of Object.entries(values)) {
    out[name] = { value: v, ratio: v !== null && b !== null && b !== 0 ? v / b : null };
  }
  return out;
}

/** A proxy with N workers, its metrics port, and the connection-gauge sampler. */
interface WorkersProxy extends WorkersProcess {
  readonly config: WorkersConfig;
  readonly metricsPort: number;
}

let starts = 0;

function _distinctPorts(host: WorkersHost, n: number): number[] {
  const ports = new Set<number>();
  while (ports.size < n) ports.add(host.freePort());
  return [...ports];
}

async function _metrics(metricsPort: number): Promise<string | null> {
  try {
    const res = await fetch(`http://127.0.0.1:${metricsPort}/metrics`, {
      signal: AbortSignal.timeout(5000),
    });
    return res.ok ? await res.text() : (await res.body?.cancel(), null);
  } catch {
    return null;
  }
}

/** `mtproxy_worker_connections_active{worker="i"}` values, by worker (1..N); null if absent. */
function _perWorker(text: string | null): number[] | null {
  if (text === null) return null;
  const out: number[] = [];
  for (const m of text.matchAll(/^mtproxy_worker_connections_active\{worker="(\d+)"\} (\S+)$/gm)) {
    out[Number(m[1]) - 1] = Number(m[2]);
  }
  return out.length > 0 ? Array.from(out, (x) => x ?? 0) : null;
}

async function _startProxy(host: WorkersHost, config: WorkersConfig): Promise<WorkersProxy> {
  const [port, metricsPort] = _distinctPorts(host, 2) as [number, number];
  const path = `${host.tmp}/workers-${config.name}-${++starts}.yaml`;
  const yaml = host.configYaml(port).trimEnd() +
    `\nmetrics:\n  listen: "127.0.0.1:${metricsPort}"\n`;
  await Deno.writeTextFile(path, yaml);
  const child = await host.spawnProxy(
    `proxy (workers ${config.name})`,
    path,
    [port],
    config.name,
  );
  const text = await _metrics(metricsPort);
  const m = text?.match(/^mtproxy_workers (\S+)$/m);
  config.serving = m ? Number(m[1]) : text === null ? null : 1;
  if (config.serving !== null && config.serving !== config.workers) {
    host.progress(
      `  warning: workers ${config.name} asked for ${config.workers}, ${config.serving} serving`,
    );
  }
  return { child, port, config, metricsPort };
}

/** Run `fn` while sampling the proxy's per-worker connection gauges. */
async function _sampled<T>(
  proxy: WorkersProxy,
  fn: () => Promise<T>,
): Promise<{ result: T; spread: Spread | null }> {
  if (proxy.config.workers < 2) return { result: await fn(), spread: null };
  const sums: number[] = [];
  let samples = 0;
  let peak: number[] = [];
  let running = true;
  const sampler = (async () => {
    while (running) {
      const w = _perWorker(await _metrics(proxy.metricsPort));
      const total = w ? w.reduce((a, b) => a + b, 0) : 0;
      if (w && total > 0) {
        samples++;
        w.forEach((n, i) => sums[i] = (sums[i] ?? 0) + n / total);
        if (total > peak.reduce((a, b) => a + b, 0)) peak = w;
      }
      if (running) await new Promise((r) => setTimeout(r, SAMPLE_MS));
    }
  })();
  try {
    return {
      result: await fn(),
      spread: samples === 0 ? null : {
        shares: Array.from({ length: proxy.config.workers }, (_, i) => (sums[i] ?? 0) / samples),
        at_peak: Array.from({ length: proxy.config.workers }, (_, i) => peak[i] ?? 0),
        samples,
      },
    };
  } finally {
    running = false;
    await sampler;
  }
}

function _cpuSplit(r: LoadResult): CpuSplit | null {
  const c = r.cpu_s;
  if (!c || !(r.seconds > 0)) return null;
  const mine = c.mid + c.dc + c.load;
  return {
    proxy: c.mid / r.seconds,
    dc: c.dc / r.seconds,
    load: c.load / r.seconds,
    proxy_share: mine > 0 ? c.mid / mine : 0,
    others: typeof r.machine_cpu_s === "number"
      ? Math.max(0, r.machine_cpu_s - mine) / r.seconds
      : null,
  };
}

/** Sum of the runs' CPU splits, weighted by their durations. */
function _meanSplit(rs: LoadResult[]): CpuSplit | null {
  const splits = rs.map((r) => ({ s: _cpuSplit(r), t: r.seconds as number }))
    .filter((x): x is { s: CpuSplit; t: number } => x.s !== null);
  if (splits.length === 0) return null;
  const t = splits.reduce((a, x) => a + x.t, 0);
  const mean = (f: (s: CpuSplit) => number) => splits.reduce((a, x) => a + f(x.s) * x.t, 0) / t;
  const proxy = mean((s) => s.proxy);
  const dc = mean((s) => s.dc);
  const load = mean((s) => s.load);
  const others = splits.every((x) => x.s.others !== null) ? mean((s) => s.others!) : null;
  return { proxy, dc, load, proxy_share: proxy / (proxy + dc + load), others };
}

/** Mean per-worker shares over several runs' spreads. */
function _meanSpread(spreads: (Spread | null)[]): Spread | null {
  const got = spreads.filter((s): s is Spread => s !== null);
  if (got.length === 0) return null;
  const n = got[0]!.shares.length;
  const samples = got.reduce((a, s) => a + s.samples, 0);
  return {
    shares: Array.from(
      { length: n },
      (_, i) => got.reduce((a, s) => a + (s.shares[i] ?? 0) * s.samples, 0) / samples,
    ),
    at_peak: got.reduce(
      (a, s) => s.at_peak.reduce((x, y) => x + y, 0) > a.reduce((x, y) => x + y, 0) ? s.at_peak : a,
      [] as number[],
    ),
    samples,
  };
}

function _describeSplit(s: CpuSplit | null): string {
  if (!s) return "cpu ?";
  const others = s.others === null ? "" : `, rest of the machine ${s.others.toFixed(2)}`;
  return `cores: proxy ${s.proxy.toFixed(2)}, dc ${s.dc.toFixed(2)}, load ${s.load.toFixed(2)}` +
    `${others}; proxy share ${(s.proxy_share * 100).toFixed(0)}%`;
}

function _describeSpread(s: Spread | null): string {
  return s
    ? `; connections per worker ${s.shares.map((x) => `${(x * 100).toFixed(0)}%`).join("/")}`
    : "";
}

/**
 * The proxy's CPU seconds so far by kind of thread (/proc/PID/task/TID/stat): the main thread
 * (the supervisor with workers, the one loop without), the worker threads ("worker-N"), and
 * V8's helper threads (garbage collection, compilers: "V8 DefaultWorke") with anything else.
 * Null off Linux.
 */
function _threadCpu(pid: number): ThreadCpu | null {
  try {
    const out: ThreadCpu = { main: 0, workers: 0, v8: 0 };
    for (const task of Deno.readDirSync(`/proc/${pid}/task`)) {
      let stat: string;
      try {
        stat = Deno.readTextFileSync(`/proc/${pid}/task/${task.name}/stat`);
      } catch {
        continue; // the thread ended meanwhile
      }
      const close = stat.lastIndexOf(")");
      const name = stat.slice(stat.indexOf("(") + 1, close);
      const f = stat.slice(close + 2).split(" ");
      const s = (Number(f[11]) + Number(f[12])) / _CLOCK_TICKS;
      if (task.name === String(pid)) out.main += s;
      else if (name.startsWith("worker-")) out.workers += s;
      else out.v8 += s;
    }
    return out;
  } catch {
    return null;
  }
}

/** Clock ticks per second of /proc's CPU times (USER_HZ, 100 on Linux). */
const _CLOCK_TICKS = 100;

/** The proxy's CPU seconds by kind of thread (see {@linkcode _threadCpu}). */
interface ThreadCpu {
  main: number;
  workers: number;
  v8: number;
}

function _threadDelta(a: ThreadCpu | null, b: ThreadCpu | null): ThreadCpu | null {
  if (!a || !b) return null;
  return { main: b.main - a.main, workers: b.workers - a.workers, v8: b.v8 - a.v8 };
}

/**
 * The proxy's CPU by kind of thread over the whole load run (its warmup and setup included, so
 * a little more than the counted window), per handshake where there are handshakes.
 */
function _describeThreads(r: LoadResult): string {
  const t: ThreadCpu | undefined = r.thread_cpu_s;
  if (!t) return "";
  const ops = typeof r.handshakes === "number" && r.handshakes > 0 ? r.handshakes : null;
  const all = t.main + t.workers + t.v8;
  const f = (x: number) =>
    ops ? `${((x / all) * (r.cpu_s.mid / ops) * 1e6).toFixed(0)} us` : `${x.toFixed(2)} s`;
  return `; proxy threads${ops ? " per handshake" : ""}: main ${f(t.main)}, workers ${
    f(t.workers)
  }, V8 helpers ${f(t.v8)}`;
}

interface Scenario {
  key: "throughput" | "handshakes" | "cpu_bound";
  label: string;
  run(proxy: WorkersProxy): Promise<LoadResult>;
  figure(r: LoadResult): string;
}

async function _loadRuns(
  host: WorkersHost,
  proxies: WorkersProxy[],
  out: WorkersResults,
  detail: Record<string, unknown>,
  quiet: Quiet,
): Promise<void> {
  const s = host.settings;
  const scenarios: Scenario[] = [
    {
      key: "throughput",
      label: `throughput dd ${THROUGHPUT_STREAMS} streams`,
      run: (p) =>
        host.load("throughput", "dd", p, {
          streams: THROUGHPUT_STREAMS,
          warmup: s.warmupS,
          seconds: s.seconds,
        }, s.warmupS + s.seconds + 60),
      figure: (r) => `${r.echo_mb_s.toFixed(0)} MB/s`,
    },
    {
      key: "handshakes",
      label: "handshakes ee",
      run: (p) =>
        host.load(
          "handshakes",
          "ee",
          p,
          { workers: s.hsWorkers, seconds: s.hsSeconds },
          s.hsSeconds + 60,
        ),
      figure: (r) => `${r.per_second.toFixed(0)}/s`,
    },
    {
      key: "cpu_bound",
      label: `CPU-bound: prepared ee hellos, ${CPU_BOUND.concurrency} at a time`,
      run: (p) =>
        host.load(CPU_BOUND.scenario, CPU_BOUND.mode, p, {
          workers: CPU_BOUND.concurrency,
          warmup: s.warmupS,
          seconds: s.hsSeconds,
          prepared: CPU_BOUND.prepared,
          "stop-after": CPU_BOUND.stopAfter,
        }, s.warmupS + s.hsSeconds + 120),
      figure: (r) => `${r.per_second.toFixed(0)}/s${r.exhausted ? " (hellos ran out)" : ""}`,
    },
  ];
  const runs: Record<string, LoadResult[]> = {};
  const spreads: Record<string, (Spread | null)[]> = {};
  for (const sc of scenarios) {
    const attemptError = await (async () => {
      try {
        for (let rep = 0; rep < s.repeat; rep++) {
          await _quiet(host, quiet);
          // Interleaved, every other round backwards, so that a noisy moment or a drift hits
          // every worker count alike.
          for (const proxy of rep % 2 === 0 ? proxies : [...proxies].reverse()) {
            const threads0 = _threadCpu(proxy.child.pid);
            const { result: r, spread } = await _sampled(proxy, () => sc.run(proxy));
            const threads = _threadDelta(threads0, _threadCpu(proxy.child.pid));
            if (threads) r.thread_cpu_s = threads;
            proxy.child.assertRunning();
            host.noteErrors(r);
            const key = `${sc.key}/${proxy.config.name}`;
            (runs[key] ??= []).push(r);
            (spreads[key] ??= []).push(spread);
            host.progress(
              `  ${sc.label}, workers ${proxy.config.name}: ${sc.figure(r)} (` +
                `${_describeSplit(_cpuSplit(r))}${_describeSpread(spread)}${_describeThreads(r)})`,
            );
          }
        }
        return null;
      } catch (e) {
        return e instanceof Error ? e.message : String(e);
      }
    })();
    if (attemptError !== null) {
      host.fail(sc.key, attemptError);
      continue;
    }
    const names = proxies.map((p) => p.config.name);
    const base = names[0]!;
    const per = (f: (r: LoadResult) => number) =>
      Object.fromEntries(names.map((n) => [n, _median(runs[`${sc.key}/${n}`]!.map(f))]));
    out.cpu[sc.key] = Object.fromEntries(
      names.map((n) => [n, _meanSplit(runs[`${sc.key}/${n}`]!)]),
    );
    out.spread[sc.key] = Object.fromEntries(
      names.filter((_, i) => proxies[i]!.config.workers > 1)
        .map((n) => [n, _meanSpread(spreads[`${sc.key}/${n}`]!)]),
    );
    if (sc.key === "throughput") {
      out.throughput_mb_s = _figures(per((r) => r.echo_mb_s), base);
      // CPU per GB: the proxy's CPU over the bytes it relayed both ways (twice the echoed bytes).
      const cpuPerGb: Record<string, number | null> = {};
      for (const n of names) {
        const rs = runs[`throughput/${n}`]!;
        const bytes = rs.reduce((a, r) => a + 2 * r.bytes_down, 0);
        cpuPerGb[n] = bytes > 0 ? rs.reduce((a, r) => a + r.cpu_s.mid, 0) / (bytes / 1e9) : null;
      }
      out.cpu_s_per_gb = _figures(cpuPerGb, base);
    } else {
      const perOp: Record<string, { proxy: number; others: number } | null> = {};
      for (const n of names) {
        const rs = runs[`${sc.key}/${n}`]!;
        const ops = rs.reduce((a, r) => a + r.handshakes, 0);
        perOp[n] = ops > 0
          ? {
            proxy: (rs.reduce((a, r) => a + r.cpu_s.mid, 0) / ops) * 1e6,
            others: (rs.reduce((a, r) => a + r.cpu_s.dc + r.cpu_s.load, 0) / ops) * 1e6,
          }
          : null;
      }
      out.cpu_us_per_handshake[sc.key] = perOp;
    }
    if (sc.key === "handshakes") {
      out.handshakes_per_s = _figures(per((r) => r.per_second), base);
    } else if (sc.key === "cpu_bound") {
      out.cpu_bound_per_s = _figures(per((r) => r.per_second), base);
      // Every process costing per hello what it did with 1 worker, and the machine's cores all
      // theirs: the rate can grow by the cores over what the three used with 1 worker, and at
      // most 2x. (Not cores x the proxy's share: one worker is not held to one core, V8's garbage
      // collector and compilers run on threads of their own beside it.)
      const one = out.cpu[sc.key]?.[base];
      const used = one ? one.proxy + one.dc + one.load : 0;
      out.cpu_bound_ceiling_ratio = used > 0
        ? Math.min(2, navigator.hardwareConcurrency / used)
        : null;
    }
  }
  detail.runs = Object.fromEntries(
    Object.entries(runs).map(([k, rs]) => [
      k,
      rs.map((r, i) => ({
        ...(typeof r.echo_mb_s === "number" ? { mb_s: r.echo_mb_s } : { per_s: r.per_second }),
        s: r.seconds,
        cpu_s: r.cpu_s,
        machine_cpu_s: r.machine_cpu_s,
        ...(r.exhausted ? { exhausted: true } : {}),
        ...(typeof r.prepare_s === "number" ? { prepare_s: r.prepare_s } : {}),
        ...(r.thread_cpu_s ? { thread_cpu_s: r.thread_cpu_s } : {}),
        spread: spreads[k]?.[i] ?? null,
      })),
    ]),
  );
}

async function _memory(
  host: WorkersHost,
  configs: WorkersConfig[],
  out: WorkersResults,
  detail: Record<string, unknown>,
  quiet: Quiet,
): Promise<void> {
  const s = host.settings;
  const flags = { clients: s.idleClients, concurrency: s.idleConcurrency, settle: s.settleS };
  const kib = (bytes: number) => bytes / 1024;
  const memory: Record<string, unknown[]> = {};
  const spreads: Record<string, Spread | null> = {};
  const rss: Record<string, number[]> = {};
  const anon: Record<string, number[]> = {};
  const errors: Record<string, number> = {};
  const repeat = _memoryRepeat(s.repeat);
  for (let rep = 0; rep < repeat; rep++) {
    for (const mode of IDLE_MODES) {
      await _quiet(host, quiet);
      for (const config of rep % 2 === 0 ? configs : [...configs].reverse()) {
        // A fresh proxy: one that already relayed traffic keeps its grown heap and pools.
        const proxy = await _startProxy(host, config);
        let r: LoadResult;
        let spread: Spread | null;
        try {
          ({ result: r, spread } = await _sampled(
            proxy,
            () => host.load("idle", mode, proxy, flags, 240),
          ));
        } finally {
          await proxy.child.stop();
        }
        host.noteErrors(r);
        const key = `${mode}/${config.name}`;
        const errs = r.errors + (s.idleClients - r.alive);
        errors[key] = (errors[key] ?? 0) + errs;
        (rss[key] ??= []).push(kib(r.rss_per_client.mid));
        (anon[key] ??= []).push(kib(r.anon_per_client.mid));
        (memory[key] ??= []).push(r);
        if (config.workers > 1 && (spread || !spreads[key])) spreads[key] = spread;
        host.progress(
          `  idle ${mode}, workers ${config.name}: ${
            kib(r.rss_per_client.mid).toFixed(1)
          } KiB RSS` +
            ` (${kib(r.anon_per_client.mid).toFixed(1)} anon) per client at ${r.clients} clients,` +
            ` errors ${errs}` +
            (spread ? `; at the peak ${spread.at_peak.join("/")} per worker` : ""),
        );
      }
    }
  }
  for (const mode of IDLE_MODES) {
    const per = (m: Record<string, number[]>) =>
      Object.fromEntries(configs.map((c) => {
        const xs = m[`${mode}/${c.name}`];
        return [c.name, xs && xs.length > 0 ? _median(xs) : null];
      }));
    out.idle_rss_kib_per_client[mode] = _figures(per(rss), configs[0]!.name);
    out.idle_anon_kib_per_client[mode] = _figures(per(anon), configs[0]!.name);
    out.idle_errors[mode] = Object.fromEntries(
      configs.map((c) => [c.name, errors[`${mode}/${c.name}`] ?? 0]),
    );
  }
  out.spread.idle = spreads;
  detail.memory = memory;
}

/** Idle runs per worker count and mode: 2 (the median of 2 is their mean), 1 with --quick. */
function _memoryRepeat(repeat: number): number {
  return repeat > 1 ? 2 : 1;
}

/** Run the workers part; pieces that break are reported through `host.fail` and skipped. */
export async function runWorkers(
  host: WorkersHost,
  detail: Record<string, unknown>,
): Promise<WorkersResults> {
  const auto = autoWorkers();
  const configs: WorkersConfig[] = [
    { name: "1", workers: 1, serving: null },
    { name: "2", workers: 2, serving: null },
  ];
  const runAuto = auto !== 1 && auto !== 2;
  if (runAuto) configs.push({ name: "auto", workers: auto, serving: null });
  else {
    host.progress(
      `  auto means ${auto} worker${auto === 1 ? "" : "s"} here (${navigator.hardwareConcurrency}` +
        ` CPUs): not run again`,
    );
  }
  const out: WorkersResults = {
    configs,
    auto: { workers: auto, run: runAuto },
    throughput_mb_s: {},
    cpu_s_per_gb: {},
    handshakes_per_s: {},
    cpu_bound_per_s: {},
    cpu_us_per_handshake: {},
    cpu_bound_ceiling_ratio: null,
    cpu: {},
    spread: {},
    idle_rss_kib_per_client: {},
    idle_anon_kib_per_client: {},
    idle_errors: {},
    quiet: { rounds: 0, busy_rounds: 0, waited_s: 0 },
  };
  const quiet: Quiet = { budgetMs: QUIET_BUDGET_MS, rounds: 0, busyRounds: 0, waitedMs: 0 };
  const attempt = async (what: string, fn: () => Promise<void>) => {
    try {
      await fn();
    } catch (e) {
      host.fail(what, e instanceof Error ? e.message : String(e));
    }
  };
  await attempt("throughput and handshakes", async () => {
    const proxies: WorkersProxy[] = [];
    try {
      for (const c of configs) proxies.push(await _startProxy(host, c));
      await _loadRuns(host, proxies, out, detail, quiet);
    } finally {
      await Promise.all(proxies.map((p) => p.child.stop()));
    }
  });
  await attempt("memory", () => _memory(host, configs, out, detail, quiet));
  out.quiet = {
    rounds: quiet.rounds,
    busy_rounds: quiet.busyRounds,
    waited_s: quiet.waitedMs / 1000,
  };
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

/** The workers table: one column per worker count, and the ratios to 1 worker. */
export function workersTable(r: WorkersResults, settings: WorkersHost["settings"]): string {
  const names = r.configs.map((c) => c.name);
  const others = names.slice(1);
  const rows: { label: string; cells: string[] }[] = [];
  const figureRow = (label: string, f: Record<string, WorkersFigure> | undefined, d: number) => {
    if (!f || Object.keys(f).length === 0) return;
    rows.push({
      label,
      cells: [
        ...names.map((n) => _fmt(f[n]?.value, d)),
        ...others.map((n) => _fmt(f[n]?.ratio, 2)),
      ],
    });
  };
  const plainRow = (label: string, values: (number | null | undefined)[], d: number) => {
    rows.push({ label, cells: [...values.map((v) => _fmt(v, d)), ...others.map(() => "")] });
  };
  const cpuRows = (key: string, what: string) => {
    const c = r.cpu[key];
    if (!c) return;
    plainRow(`  proxy CPU, ${what} (cores)`, names.map((n) => c[n]?.proxy), 2);
    plainRow(
      `  proxy share of bench CPU, ${what} (%)`,
      names.map((n) => c[n] ? c[n]!.proxy_share * 100 : null),
      0,
    );
    plainRow(`  other processes' CPU, ${what} (cores)`, names.map((n) => c[n]?.others), 2);
  };
  figureRow(`throughput dd, ${THROUGHPUT_STREAMS} streams (MB/s) (1)`, r.throughput_mb_s, 0);
  figureRow("CPU per GB relayed, dd (s/GB)", r.cpu_s_per_gb, 2);
  cpuRows("throughput", "dd");
  const perOpRows = (key: string, what: string) => {
    const c = r.cpu_us_per_handshake[key];
    if (!c) return;
    plainRow(`  proxy CPU per ${what} (us)`, names.map((n) => c[n]?.proxy), 0);
    plainRow(`  DC + load generator CPU per ${what} (us)`, names.map((n) => c[n]?.others), 0);
  };
  figureRow("handshakes/s, ee (2)", r.handshakes_per_s, 0);
  cpuRows("handshakes", "ee");
  perOpRows("handshakes", "handshake");
  figureRow("CPU-bound: ee hellos/s (3)", r.cpu_bound_per_s, 0);
  cpuRows("cpu_bound", "hellos");
  perOpRows("cpu_bound", "hello");
  for (const mode of IDLE_MODES) {
    figureRow(`RSS per idle client, ${mode} (KiB) (4)`, r.idle_rss_kib_per_client[mode], 1);
    const e = r.idle_errors[mode];
    if (e) {
      plainRow(
        `  errors at ${settings.idleClients} idle clients, ${mode}`,
        names.map((n) => e[n]),
        0,
      );
    }
  }
  const head = [
    ...r.configs.map((c) => c.name === "auto" ? `auto=${c.workers}` : `${c.name} w`),
    ...others.map((n) => n === "auto" ? "auto/1" : `${n}/1`),
  ];
  const w0 = 44;
  const line = (label: string, cells: string[]) =>
    label.padEnd(w0) + cells.map((c) => c.padStart(9)).join(" ");
  const width = w0 + 10 * head.length;
  const out = [line("workers", head), "-".repeat(width)];
  for (const row of rows) out.push(line(row.label, row.cells));
  out.push("-".repeat(width));
  out.push(
    "Columns: the same proxy with 1 and 2 worker threads" +
      (r.auto.run ? ` and workers: auto (${r.auto.workers})` : "") +
      ", and the ratios to 1 worker.",
  );
  if (!r.auto.run) {
    out.push(
      `workers: auto means ${r.auto.workers} here (${navigator.hardwareConcurrency} CPUs): not run twice.`,
    );
  }
  out.push(
    "Cores = CPU seconds per second of the run: the proxy (all its threads), the echo DC and the",
    "load generator, and the rest of the machine (/proc/stat minus those three).",
  );
  if (Object.keys(r.throughput_mb_s).length > 0) {
    out.push(
      "(1) As the throughput part: 64 KiB writes, at most 1 MiB in flight per stream, through the",
      `    echo DC; median of ${settings.repeat}. CPU per GB: the proxy's, over both directions.`,
    );
  }
  if (Object.keys(r.handshakes_per_s).length > 0) {
    out.push(
      "(2) The handshakes part's workload: connect, fake-TLS handshake, 100-byte packet echoed",
      `    through the DC, close; ${settings.hsWorkers} at a time; median of ${settings.repeat}.`,
    );
  }
  if (Object.keys(r.cpu_bound_per_s).length > 0) {
    out.push(
      `(3) Fake-TLS handshakes alone, ${CPU_BOUND.concurrency} at a time: connect, a ClientHello` +
        " signed before the clock",
      "    started, read the ServerHello (by its record lengths), close. The proxy checks and",
      "    answers each hello; the load generator only makes socket calls. The most 2 workers",
      "    can give over 1 worker on one core, the three processes costing per hello what they",
      "    did with 1 worker and nothing else running: min(2, cores / cores the three used) = " +
        `${_fmt(r.cpu_bound_ceiling_ratio, 2)}x.`,
    );
  }
  if (Object.keys(r.idle_rss_kib_per_client).length > 0) {
    out.push(
      `(4) As the memory part: RSS growth / clients with ${settings.idleClients} idle clients` +
        " (both sockets open),",
      "    fresh process each time, warmed up with 100 clients first; median of " +
        `${_memoryRepeat(settings.repeat)}.`,
    );
  }
  out.push(
    `Before each round of runs the bench waited up to ${
      QUIET_WAIT_MS / 1000
    } s for the machine to` +
      ` be under ${QUIET_BUSY * 100}% busy: ${r.quiet.busy_rounds} of ${r.quiet.rounds} rounds` +
      ` started busier (waited ${r.quiet.waited_s.toFixed(0)} s in all).`,
  );
  const spreadLines: string[] = [];
  for (const [key, byConfig] of Object.entries(r.spread)) {
    for (const [name, s] of Object.entries(byConfig)) {
      if (!s) continue;
      spreadLines.push(
        `${key} ${name}: ${s.shares.map((x) => `${(x * 100).toFixed(0)}%`).join("/")}` +
          ` (at the peak ${s.at_peak.join("/")})`,
      );
    }
  }
  if (spreadLines.length > 0) {
    out.push(
      "Connections per worker (mtproxy_worker_connections_active, mean share over samples every",
      `${SAMPLE_MS} ms): ${spreadLines.join("; ")}.`,
    );
  }
  return out.join("\n");
}

/** A PASS/MISS line's data, as bench.ts prints it. */
export interface WorkersTarget {
  name: string;
  value: number | null;
  limit: string;
  pass: boolean | null;
}

/** The workers part's targets. */
export function workersTargets(r: WorkersResults): WorkersTarget[] {
  const targets: WorkersTarget[] = [];
  const hs = r.handshakes_per_s["2"]?.ratio;
  if (typeof hs === "number") {
    targets.push({
      name: "fake-TLS handshakes/s (handshakes part's workload), 2 workers vs 1",
      value: hs,
      limit: `>= ${TARGET_HANDSHAKES_RATIO}x`,
      pass: hs >= TARGET_HANDSHAKES_RATIO,
    });
  }
  const cb = r.cpu_bound_per_s["2"]?.ratio;
  if (typeof cb === "number") {
    const share = r.cpu.cpu_bound?.["1"]?.proxy_share;
    targets.push({
      name: "CPU-bound scenario (ee hellos), 2 workers vs 1" +
        (typeof share === "number"
          ? ` (proxy ${(share * 100).toFixed(0)}% of the bench's CPU with 1 worker,` +
            ` ceiling ${_fmt(r.cpu_bound_ceiling_ratio, 2)}x)`
          : ""),
      value: cb,
      limit: `>= ${TARGET_CPU_BOUND_RATIO}x`,
      pass: cb >= TARGET_CPU_BOUND_RATIO,
    });
  }
  const tp = r.throughput_mb_s["2"]?.ratio;
  if (typeof tp === "number") {
    targets.push({
      name: `direct-mode throughput (dd, ${THROUGHPUT_STREAMS} streams), 2 workers vs 1`,
      value: tp,
      limit: `>= ${TARGET_THROUGHPUT_RATIO.toFixed(1)}x`,
      pass: tp >= TARGET_THROUGHPUT_RATIO,
    });
  }
  let worst: { extra: number; what: string } | null = null;
  for (const mode of IDLE_MODES) {
    const f = r.idle_rss_kib_per_client[mode];
    const one = f?.["1"]?.value;
    if (!f || typeof one !== "number") continue;
    for (const c of r.configs.slice(1)) {
      const v = f[c.name]?.value;
      if (typeof v !== "number") continue;
      if (!worst || v - one > worst.extra) worst = { extra: v - one, what: `${mode}, ${c.name}` };
    }
  }
  if (worst) {
    targets.push({
      name: `RSS per idle client with workers minus 1 worker's, worst (${worst.what} workers)`,
      value: worst.extra,
      limit: `<= ${TARGET_EXTRA_IDLE_KIB} KiB`,
      pass: worst.extra <= TARGET_EXTRA_IDLE_KIB,
    });
  }
  return targets;
}
