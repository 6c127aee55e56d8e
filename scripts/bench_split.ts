/**
 * The `split` part of `deno task bench`: split mode (a `role: front` proxy that carries its
 * clients over TLS-camouflaged AES-GCM links to a `role: back` proxy, which dials the DCs)
 * next to a standalone proxy, on the same workload, the same echo DC (scripts/bench_dc.ts, as
 * the back's and the standalone proxy's DC 2, in direct mode) and the same load generator
 * (scripts/bench_load.ts), every one its own process (`main.ts run --config FILE`).
 *
 * The front parses its clients' transport frames and sends packets over the link (as middle
 * mode does), so random bytes would not do: the load generator sends well-formed padded
 * intermediate frames (`--framed`, as in the middle part) through both, and the standalone proxy
 * gets the same framed traffic (which it passes through as bytes) as the baseline. The back frames
 * the packets toward the DC with 0-15 padding bytes each, as apps do; the echo DC sends them back,
 * the back can strip only `len % 4` of them and the front adds 0-3 of its own, so the load
 * generator accepts up to 15 padding bytes per echoed frame and counts payload only
 * (`--max-padding 15`; nothing else changes for the standalone runs).
 *
 * Measured: throughput with 1, 16 and 256 streams; CPU seconds per GB of the front, the back and
 * the standalone proxy (from /proc/<pid>/stat, as the other parts); latency p50/p99 of sequential
 * 100-byte ping-pongs and what the link adds; RSS per idle client of the front and the standalone
 * proxy and per stream of the back with 10,000 idle clients (fresh processes; the standalone
 * proxy holds two sockets per client, so it gets fewer clients when the open-file limit is too
 * low for 20,000 sockets); the link connections the front holds to the back (counted from /proc)
 * and the back's `mtproxy_front_links` / `mtproxy_front_streams` metrics.
 *
 * bench.ts drives it through {@linkcode SplitHost} (its process, load-generator and output
 * helpers) and prints {@linkcode splitTable} and {@linkcode splitTargets}.
 *
 * @module
 */

/** The load generator's JSON result. */
// deno-lint-ignore no-explicit-any
export type LoadResult = Record<string, any>;

/** A child process the host started. */
export interface SplitChild {
  readonly name: string;
  readonly pid: number;
  /** Its stdout lines so far. */
  readonly lines: string[];
  /** Throw when it is no longer running. */
  assertRunning(): void;
  stop(): Promise<void>;
}

/** A process and the port that the load generator connects to. */
export interface SplitProcess {
  readonly child: SplitChild;
  readonly port: number;
}

export type SplitMode = "dd" | "ee";
const MODES: readonly SplitMode[] = ["dd", "ee"];
const STREAMS = [1, 16, 256] as const;

/** What bench.ts gives the split part. */
export interface SplitHost {
  settings: {
    warmupS: number;
    seconds: number;
    pings: number;
    idleConcurrency: number;
    settleS: number;
    splitRepeat: number;
    splitIdleClients: number;
  };
  /** Directory for config files. */
  tmp: string;
  /** The client secret and fake-TLS domain the load generator uses. */
  secret: string;
  tlsDomain: string;
  /** The standalone proxy's config, as the other parts write it (DC 2 = the echo DC). */
  standaloneYaml(port: number): string;
  /** The echo DC's port. */
  dcPort: number;
  /** `main.ts run --config FILE` with the bench's V8 flags; resolves once every port listens. */
  spawnProxy(name: string, configPath: string, ports: readonly number[]): Promise<SplitChild>;
  /** Run the load generator against `target` (pids `mid` = target, `dc` = the echo DC). */
  load(
    scenario: string,
    mode: SplitMode,
    target: SplitProcess,
    flags: Record<string, string | number | boolean>,
    timeoutS: number,
    extraPids: Record<string, number>,
  ): Promise<LoadResult>;
  /** Count the load generator's errors in the run's totals. */
  noteErrors(r: LoadResult): void;
  freePort(): number;
  /** Print a progress line (stderr). */
  progress(line: string): void;
  /** Record that `what` could not be measured. */
  fail(what: string, message: string): void;
}

/** A split-mode figure, the standalone figure, and split / standalone. */
export interface SplitPair {
  split: number | null;
  standalone: number | null;
  ratio: number | null;
}

function _spair(split: number | null | undefined, standalone: number | null | undefined) {
  const s = split ?? null;
  const a = standalone ?? null;
  return { split: s, standalone: a, ratio: s !== null && a !== null && a !== 0 ? s / a : null };
}

/** The link connections the front used. */
export interface SplitLinks {
  /** Links configured per back (`backs[].links`). */
  configured: number;
  /** Established TCP connections from the front to the back's link port, most seen. */
  tcp: number | null;
  /** The back's `mtproxy_front_links` gauge, most seen. */
  metric: number | null;
  /** The back's `mtproxy_front_streams` gauge, most seen during the idle runs. */
  streams: number | null;
}

export interface SplitResults {
  throughput_mb_s: Partial<Record<SplitMode, Record<string, SplitPair>>>;
  /** CPU seconds per 10^9 bytes relayed both ways: front, back, front+back vs standalone. */
  cpu_s_per_gb: Partial<
    Record<SplitMode, { front: SplitPair; back: SplitPair; total: SplitPair }>
  >;
  latency_us: Partial<Record<SplitMode, { p50: SplitPair; p99: SplitPair }>>;
  /** Split latency minus standalone latency. */
  latency_added_us: Partial<Record<SplitMode, { p50: number | null; p99: number | null }>>;
  /** Front RSS growth per idle client vs standalone RSS growth per idle client. */
  idle_rss_kib_per_client: Partial<Record<SplitMode, SplitPair>>;
  idle_anon_kib_per_client: Partial<Record<SplitMode, SplitPair>>;
  /** Back RSS growth per client stream (one link stream and one DC socket each). */
  back_rss_kib_per_stream: Partial<Record<SplitMode, number>>;
  back_anon_kib_per_stream: Partial<Record<SplitMode, number>>;
  /** Idle clients opened: split, standalone (fewer when the open-file limit is low). */
  idle_clients: { split: number; standalone: number } | null;
  idle_errors: Partial<Record<SplitMode, { split: number; standalone: number }>>;
  links: SplitLinks;
  /** Soft open-file limit the children got (raised to the hard limit when needed). */
  open_file_limit: number | null;
}

/** Targets; measured and reported, never asserted. */
const TARGET_SPLIT_RATIO = 0.5;
const TARGET_ADDED_P50_US = 150;
const TARGET_BACK_KIB_PER_STREAM = 4;
const TARGET_FRONT_EXTRA_KIB = 1;

/** The link between the bench's front and back. */
const LINK_SECRET = "fedcba9876543210fedcba9876543210";
const LINK_DOMAIN = "example.com";
const LINKS = 2;
const FRONT_NAME = "bench";
/** The back pads DC frames by up to 15 bytes (see the module doc). */
const MAX_PADDING = 15;
/** Sockets besides the clients' that a proxy process may hold (listeners, links, stdio...). */
const FD_RESERVE = 256;

/** A front, its back, and the ports that matter. */
interface SplitSetup {
  front: SplitProcess;
  back: SplitChild;
  linkPort: number;
  metricsPort: number;
}

function _distinctPorts(host: SplitHost, n: number): number[] {
  const ports = new Set<number>();
  while (ports.size < n) ports.add(host.freePort());
  return [...ports];
}

function _backYaml(host: SplitHost, linkPort: number, metricsPort: number): string {
  return `# Written by scripts/bench_split.ts.
role: back
link_listeners:
  - name: link
    host: 127.0.0.1
    port: ${linkPort}
    tls_domain: ${LINK_DOMAIN}
fronts:
  - name: ${FRONT_NAME}
    secret: "${LINK_SECRET}"
log_level: warning
fronting:
  mode: off
metrics:
  listen: "127.0.0.1:${metricsPort}"
telegram:
  mode: direct
  dc_addresses:
    "2": "127.0.0.1:${host.dcPort}"
timeouts:
  idle: 3600
  handshake: 60
  shutdown_grace: 1
`;
}

function _frontYaml(host: SplitHost, port: number, linkPort: number): string {
  return `# Written by scripts/bench_split.ts.
role: front
listeners:
  - name: bench
    host: 127.0.0.1
    port: ${port}
    secret: "${host.secret}"
    tls_domain: ${host.tlsDomain}
allowed_protocols: [tls, dd, plain]
backs:
  - address: "127.0.0.1:${linkPort}"
    secret: "${LINK_SECRET}"
    tls_domain: ${LINK_DOMAIN}
    links: ${LINKS}
log_level: warning
fronting:
  mode: off
timeouts:
  idle: 3600
  handshake: 60
  shutdown_grace: 1
max_connections: 20000
`;
}

let starts = 0;

/** The back's split-mode gauges now. */
async function _backMetrics(
  metricsPort: number,
): Promise<{ links: number | null; streams: number | null }> {
  try {
    const res = await fetch(`http://127.0.0.1:${metricsPort}/metrics`, {
      signal: AbortSignal.timeout(5000),
    });
    const text = await res.text();
    const gauge = (name: string) => {
      const m = text.match(new RegExp(`^${name}\\{front="${FRONT_NAME}"\\} (\\d+)$`, "m"));
      return m ? Number(m[1]) : null;
    };
    return { links: gauge("mtproxy_front_links"), streams: gauge("mtproxy_front_streams") };
  } catch {
    return { links: null, streams: null };
  }
}

/** Start a back, then a front linked to it; resolves once all its links are up. */
async function _startSplit(host: SplitHost): Promise<SplitSetup> {
  const [linkPort, metricsPort, port] = _distinctPorts(host, 3) as [number, number, number];
  const n = ++starts;
  const backPath = `${host.tmp}/split-back-${n}.yaml`;
  const frontPath = `${host.tmp}/split-front-${n}.yaml`;
  await Deno.writeTextFile(backPath, _backYaml(host, linkPort, metricsPort));
  await Deno.writeTextFile(frontPath, _frontYaml(host, port, linkPort));
  const back = await host.spawnProxy("back", backPath, [linkPort]);
  let front: SplitChild;
  try {
    front = await host.spawnProxy("front", frontPath, [port]);
  } catch (e) {
    await back.stop();
    throw e;
  }
  const pair = { front: { child: front, port }, back, linkPort, metricsPort };
  const deadline = Date.now() + 30_000;
  while (true) {
    const m = await _backMetrics(metricsPort);
    if (m.links !== null && m.links >= LINKS) return pair;
    if (Date.now() > deadline) {
      await _stopSplit(pair);
      throw new Error(`the front's ${LINKS} links to the back were not up within 30 s`);
    }
    front.assertRunning();
    back.assertRunning();
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function _stopSplit(pair: SplitSetup): Promise<void> {
  // The front first: its clients end with it, and the back sees no lost links.
  await pair.front.child.stop();
  await pair.back.stop();
}

async function _startStandalone(host: SplitHost): Promise<SplitProcess> {
  const port = host.freePort();
  const path = `${host.tmp}/split-standalone-${++starts}.yaml`;
  await Deno.writeTextFile(path, host.standaloneYaml(port));
  return { child: await host.spawnProxy("standalone proxy", path, [port]), port };
}

/** Raise this process's soft open-file limit (which children inherit) toward the hard one. */
function _raiseOpenFileLimit(wanted: number): number | null {
  const limits = (): [number, number] | null => {
    try {
      const text = Deno.readTextFileSync("/proc/self/limits");
      const m = text.match(/^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m);
      if (!m) return null;
      const n = (s: string) => s === "unlimited" ? Number.MAX_SAFE_INTEGER : Number(s);
      return [n(m[1]!), n(m[2]!)];
    } catch {
      return null;
    }
  };
  const now = limits();
  if (now === null) return null;
  const [soft, hard] = now;
  if (soft >= wanted || soft >= hard) return soft;
  try {
    // setrlimit(RLIMIT_NOFILE, {cur, max}) from libc: Deno has no API for it.
    const libc = Deno.dlopen("libc.so.6", {
      setrlimit: { parameters: ["i32", "buffer"], result: "i32" },
    });
    try {
      const rlimit = new BigUint64Array([BigInt(Math.min(wanted, hard)), BigInt(hard)]);
      const RLIMIT_NOFILE = 7;
      libc.symbols.setrlimit(RLIMIT_NOFILE, new Uint8Array(rlimit.buffer));
    } finally {
      libc.close();
    }
  } catch {
    // No libc to call: keep the limit we have.
  }
  return limits()?.[0] ?? soft;
}

function _median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

type Path = "split" | "standalone";

async function _throughput(
  host: SplitHost,
  split: SplitSetup,
  standalone: SplitProcess,
  out: SplitResults,
  detail: Record<string, unknown>,
): Promise<void> {
  const s = host.settings;
  const runs: Record<string, LoadResult[]> = {};
  const timeout = s.warmupS + s.seconds + 60;
  for (let rep = 0; rep < s.splitRepeat; rep++) {
    for (const streams of STREAMS) {
      // Interleaved, so that a noisy moment hits both paths alike.
      for (const mode of MODES) {
        for (const path of ["standalone", "split"] as const) {
          const flags = {
            streams,
            warmup: s.warmupS,
            seconds: s.seconds,
            framed: true,
            "max-padding": MAX_PADDING,
            ...(path === "split" ? { "mp-port": split.linkPort } : {}),
          };
          const r = path === "split"
            ? await host.load("throughput", mode, split.front, flags, timeout, {
              back: split.back.pid,
            })
            : await host.load("throughput", mode, standalone, flags, timeout, {});
          if (path === "split") split.back.assertRunning();
          host.noteErrors(r);
          (runs[`${path}/${mode}/${streams}`] ??= []).push(r);
          if (typeof r.mp_connections === "number") {
            out.links.tcp = Math.max(out.links.tcp ?? 0, r.mp_connections);
          }
          const cpu = path === "split"
            ? `front ${r.cpu_s.mid.toFixed(2)}, back ${r.cpu_s.back.toFixed(2)}`
            : `proxy ${r.cpu_s.mid.toFixed(2)}`;
          host.progress(
            `  throughput ${path.padEnd(10)} ${mode} ${String(streams).padStart(3)} streams: ` +
              `${r.echo_mb_s.toFixed(0)} MB/s (cpu s: ${cpu}, dc ${r.cpu_s.dc.toFixed(2)},` +
              ` load ${r.cpu_s.load.toFixed(2)} in ${r.seconds.toFixed(1)} s)`,
          );
        }
      }
    }
  }
  const m = await _backMetrics(split.metricsPort);
  if (m.links !== null) out.links.metric = Math.max(out.links.metric ?? 0, m.links);
  const mbs = (path: Path, mode: SplitMode, streams: number) =>
    _median(runs[`${path}/${mode}/${streams}`]!.map((r) => r.echo_mb_s));
  // CPU per GB: a process's CPU over the bytes it relayed both ways (twice the echoed bytes).
  const cpuPerGb = (path: Path, mode: SplitMode, pid: "mid" | "back" | "both") => {
    let cpu = 0;
    let bytes = 0;
    for (const streams of STREAMS) {
      for (const r of runs[`${path}/${mode}/${streams}`]!) {
        cpu += pid === "both" ? r.cpu_s.mid + r.cpu_s.back : r.cpu_s[pid];
        bytes += 2 * r.bytes_down;
      }
    }
    return bytes > 0 ? cpu / (bytes / 1e9) : null;
  };
  for (const mode of MODES) {
    const byStreams: Record<string, SplitPair> = {};
    for (const streams of STREAMS) {
      byStreams[streams] = _spair(mbs("split", mode, streams), mbs("standalone", mode, streams));
    }
    out.throughput_mb_s[mode] = byStreams;
    const alone = cpuPerGb("standalone", mode, "mid");
    out.cpu_s_per_gb[mode] = {
      front: _spair(cpuPerGb("split", mode, "mid"), alone),
      back: _spair(cpuPerGb("split", mode, "back"), alone),
      total: _spair(cpuPerGb("split", mode, "both"), alone),
    };
  }
  detail.throughput = Object.fromEntries(
    Object.entries(runs).map(([k, rs]) => [
      k,
      rs.map((r) => ({
        mb_s: Math.round(r.echo_mb_s * 10) / 10,
        up: r.bytes_up,
        down: r.bytes_down,
        frames_down: r.frames_down,
        s: r.seconds,
        cpu_s: r.cpu_s,
        connect_ms: r.connect_ms,
        ...(typeof r.mp_connections === "number" ? { link_connections: r.mp_connections } : {}),
      })),
    ]),
  );
}

async function _latency(
  host: SplitHost,
  split: SplitSetup,
  standalone: SplitProcess,
  out: SplitResults,
  detail: Record<string, unknown>,
): Promise<void> {
  const flags = { pings: host.settings.pings, framed: true, "max-padding": MAX_PADDING };
  const latency: Record<string, unknown> = {};
  for (const mode of MODES) {
    const a = await host.load("latency", mode, standalone, flags, 120, {});
    host.noteErrors(a);
    const p = await host.load("latency", mode, split.front, flags, 120, {
      back: split.back.pid,
    });
    split.back.assertRunning();
    host.noteErrors(p);
    latency[`standalone/${mode}`] = a;
    latency[`split/${mode}`] = p;
    out.latency_us[mode] = { p50: _spair(p.p50_us, a.p50_us), p99: _spair(p.p99_us, a.p99_us) };
    const diff = (x: unknown, y: unknown) =>
      typeof x === "number" && typeof y === "number" && Number.isFinite(x - y) ? x - y : null;
    out.latency_added_us[mode] = { p50: diff(p.p50_us, a.p50_us), p99: diff(p.p99_us, a.p99_us) };
    host.progress(
      `  latency split ${mode}: p50 ${p.p50_us?.toFixed(0)} us, p99 ${p.p99_us?.toFixed(0)} us` +
        ` (standalone ${a.p50_us?.toFixed(0)} / ${a.p99_us?.toFixed(0)})`,
    );
  }
  detail.latency = latency;
}

async function _memory(
  host: SplitHost,
  out: SplitResults,
  detail: Record<string, unknown>,
): Promise<void> {
  const s = host.settings;
  const limit = out.open_file_limit ?? Number.MAX_SAFE_INTEGER;
  // One socket per client in the front, the back and the load generator; two in the standalone.
  const splitClients = Math.max(100, Math.min(s.splitIdleClients, limit - FD_RESERVE));
  const standaloneClients = Math.max(
    100,
    Math.min(s.splitIdleClients, Math.floor((limit - FD_RESERVE) / 2)),
  );
  out.idle_clients = { split: splitClients, standalone: standaloneClients };
  if (standaloneClients < s.splitIdleClients || splitClients < s.splitIdleClients) {
    host.progress(
      `  open-file limit ${limit}: ${splitClients} idle clients through the front,` +
        ` ${standaloneClients} through the standalone proxy (two sockets each)`,
    );
  }
  const flags = (clients: number) => ({
    clients,
    concurrency: s.idleConcurrency,
    settle: s.settleS,
    framed: true,
    "max-padding": MAX_PADDING,
  });
  const timeout = 300;
  const kib = (bytes: number) => bytes / 1024;
  const memory: Record<string, unknown> = {};
  for (const mode of MODES) {
    // Fresh processes: one that already relayed traffic keeps its grown heap and pools.
    const standalone = await _startStandalone(host);
    let a: LoadResult;
    try {
      a = await host.load("idle", mode, standalone, flags(standaloneClients), timeout, {});
    } finally {
      await standalone.child.stop();
    }
    host.noteErrors(a);
    const split = await _startSplit(host);
    let p: LoadResult;
    let streams: number | null = null;
    let links: number | null = null;
    // The back's gauges while the clients are connected (read every second).
    let polling = true;
    const poller = (async () => {
      while (polling) {
        const m = await _backMetrics(split.metricsPort);
        if (m.streams !== null) streams = Math.max(streams ?? 0, m.streams);
        if (m.links !== null) links = Math.max(links ?? 0, m.links);
        await new Promise((r) => setTimeout(r, 1000));
      }
    })();
    try {
      p = await host.load(
        "idle",
        mode,
        split.front,
        { ...flags(splitClients), "mp-port": split.linkPort },
        timeout,
        { back: split.back.pid },
      );
      split.back.assertRunning();
    } finally {
      polling = false;
      await poller;
      await _stopSplit(split);
    }
    host.noteErrors(p);
    out.idle_errors[mode] = {
      split: p.errors + (splitClients - p.alive),
      standalone: a.errors + (standaloneClients - a.alive),
    };
    out.idle_rss_kib_per_client[mode] = _spair(
      kib(p.rss_per_client.mid),
      kib(a.rss_per_client.mid),
    );
    out.idle_anon_kib_per_client[mode] = _spair(
      kib(p.anon_per_client.mid),
      kib(a.anon_per_client.mid),
    );
    out.back_rss_kib_per_stream[mode] = kib(p.rss_per_client.back);
    out.back_anon_kib_per_stream[mode] = kib(p.anon_per_client.back);
    if (typeof p.mp_connections === "number") {
      out.links.tcp = Math.max(out.links.tcp ?? 0, p.mp_connections);
    }
    if (links !== null) out.links.metric = Math.max(out.links.metric ?? 0, links);
    if (streams !== null) out.links.streams = Math.max(out.links.streams ?? 0, streams);
    memory[`standalone/${mode}`] = a;
    memory[`split/${mode}`] = p;
    host.progress(
      `  idle ${mode}: front ${kib(p.rss_per_client.mid).toFixed(1)} KiB RSS per client,` +
        ` back ${kib(p.rss_per_client.back).toFixed(1)} KiB per stream at ${p.clients} clients` +
        ` (standalone ${kib(a.rss_per_client.mid).toFixed(1)} at ${a.clients});` +
        ` ${p.mp_connections ?? "?"} link connections, back saw ${streams ?? "?"} streams;` +
        ` errors ${out.idle_errors[mode]!.split} / ${out.idle_errors[mode]!.standalone}`,
    );
  }
  detail.memory = memory;
}

/** Run the split part; pieces that break are reported through `host.fail` and skipped. */
export async function runSplit(host: SplitHost, detail: Record<string, unknown>) {
  const out: SplitResults = {
    throughput_mb_s: {},
    cpu_s_per_gb: {},
    latency_us: {},
    latency_added_us: {},
    idle_rss_kib_per_client: {},
    idle_anon_kib_per_client: {},
    back_rss_kib_per_stream: {},
    back_anon_kib_per_stream: {},
    idle_clients: null,
    idle_errors: {},
    links: { configured: LINKS, tcp: null, metric: null, streams: null },
    open_file_limit: _raiseOpenFileLimit(2 * host.settings.splitIdleClients + FD_RESERVE),
  };
  const attempt = async (what: string, fn: () => Promise<void>) => {
    try {
      await fn();
    } catch (e) {
      host.fail(what, e instanceof Error ? e.message : String(e));
    }
  };
  await attempt("throughput and latency", async () => {
    const standalone = await _startStandalone(host);
    try {
      const split = await _startSplit(host);
      try {
        await attempt("throughput", () => _throughput(host, split, standalone, out, detail));
        split.front.child.assertRunning();
        split.back.assertRunning();
        standalone.child.assertRunning();
        await attempt("latency", () => _latency(host, split, standalone, out, detail));
      } finally {
        await _stopSplit(split);
      }
    } finally {
      await standalone.child.stop();
    }
  });
  await attempt("memory", () => _memory(host, out, detail));
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

/** The split table: split figure, standalone figure, split / standalone. */
export function splitTable(r: SplitResults, settings: SplitHost["settings"]): string {
  const rows: { label: string; pair: SplitPair; digits: number }[] = [];
  const one = (x: number | null | undefined) => _spair(x, null);
  for (const mode of MODES) {
    const t = r.throughput_mb_s[mode];
    if (!t) continue;
    for (const streams of STREAMS) {
      const s = streams === 1 ? "stream" : "streams";
      rows.push({
        label: `throughput ${mode}, ${streams} ${s} (MB/s) (1)`,
        pair: t[streams]!,
        digits: 0,
      });
    }
  }
  for (const mode of MODES) {
    const c = r.cpu_s_per_gb[mode];
    if (!c) continue;
    rows.push({ label: `CPU per GB, ${mode}, front (s/GB) (2)`, pair: c.front, digits: 2 });
    rows.push({ label: `CPU per GB, ${mode}, back (s/GB)`, pair: c.back, digits: 2 });
    rows.push({ label: `CPU per GB, ${mode}, front + back (s/GB)`, pair: c.total, digits: 2 });
  }
  for (const mode of MODES) {
    const l = r.latency_us[mode];
    if (!l) continue;
    const added = r.latency_added_us[mode];
    rows.push({ label: `latency p50, ${mode} (us)`, pair: l.p50, digits: 0 });
    rows.push({ label: `latency p99, ${mode} (us)`, pair: l.p99, digits: 0 });
    rows.push({
      label: `latency added by the link, p50, ${mode} (us)`,
      pair: one(added?.p50),
      digits: 0,
    });
    rows.push({
      label: `latency added by the link, p99, ${mode} (us)`,
      pair: one(added?.p99),
      digits: 0,
    });
  }
  for (const mode of MODES) {
    const m = r.idle_rss_kib_per_client[mode];
    if (!m) continue;
    const e = r.idle_errors[mode];
    rows.push({ label: `RSS per idle client, front, ${mode} (KiB) (3)`, pair: m, digits: 1 });
    rows.push({
      label: `RSS per client stream, back, ${mode} (KiB)`,
      pair: one(r.back_rss_kib_per_stream[mode]),
      digits: 1,
    });
    rows.push({
      label: `errors with idle clients, ${mode}`,
      pair: _spair(e?.split, e?.standalone),
      digits: 0,
    });
  }
  if (r.links.tcp !== null || r.links.metric !== null) {
    rows.push({ label: `link connections, TCP (4)`, pair: one(r.links.tcp), digits: 0 });
    rows.push({
      label: `link connections, back's mtproxy_front_links`,
      pair: one(r.links.metric),
      digits: 0,
    });
  }
  const w = [46, 10, 10, 7];
  const line = (cells: string[]) =>
    cells.map((c, i) => i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!)).join(" ");
  const out = [line(["split mode", "split", "standalone", "ratio"]), "-".repeat(76)];
  for (const row of rows) {
    out.push(line([
      row.label,
      _fmt(row.pair.split, row.digits),
      _fmt(row.pair.standalone, row.digits),
      _fmt(row.pair.ratio, 2),
    ]));
  }
  out.push("-".repeat(76));
  out.push(
    "Ratio = split / standalone. Split: a front (client listener) and a back (direct mode to the",
    `echo DC) over ${LINKS} links; standalone: one proxy to the same echo DC. Separate processes.`,
  );
  if (Object.keys(r.throughput_mb_s).length > 0) {
    out.push(
      "(1) Both framed: 16 KiB packets as padded intermediate frames, 4 per write; MB/s = echoed",
      `    payload bytes, at most 1 MiB in flight per stream; median of ${settings.splitRepeat}.`,
      "(2) The process's user+system CPU per 10^9 bytes it relayed both ways (2x echoed bytes),",
      "    all stream counts; the standalone column is the standalone proxy every time.",
    );
  }
  if (Object.keys(r.latency_us).length > 0) {
    out.push(
      `Latency: ${settings.pings} sequential 100-byte packets (framed) on one connection; added =`,
      "split - standalone.",
    );
  }
  if (r.idle_clients) {
    out.push(
      `(3) RSS growth / clients with ${r.idle_clients.split} idle clients through the front` +
        ` (${r.idle_clients.standalone} through`,
      "    the standalone proxy, which holds two sockets each), fresh processes; the back's",
      "    growth is per client stream (link stream + DC socket).",
    );
  }
  if (r.links.tcp !== null || r.links.metric !== null) {
    out.push(
      `(4) Most seen: established connections from the front to the back's link port` +
        ` (${r.links.configured} configured);`,
      `    the back counted ${r.links.streams ?? "?"} streams at most with the idle clients.`,
    );
  }
  return out.join("\n");
}

/** A PASS/MISS line's data, as bench.ts prints it. */
export interface SplitTarget {
  name: string;
  value: number | null;
  limit: string;
  pass: boolean | null;
}

/** The split part's targets, worst of dd/ee. */
export function splitTargets(r: SplitResults): SplitTarget[] {
  const targets: SplitTarget[] = [];
  const worst = (
    pick: (mode: SplitMode) => number | null | undefined,
    cmp: (a: number, b: number) => number,
  ) => {
    const got = MODES.map((m) => [m, pick(m)] as const)
      .filter((x): x is readonly [SplitMode, number] => typeof x[1] === "number");
    if (got.length === 0) return null;
    return { value: got.map((x) => x[1]).reduce((a, b) => cmp(a, b)), modes: got.map((x) => x[0]) };
  };
  const t16 = worst((m) => r.throughput_mb_s[m]?.[16]?.ratio, Math.min);
  if (t16) {
    targets.push({
      name: `split throughput with 16 streams vs standalone, worst of ${t16.modes.join("/")}`,
      value: t16.value,
      limit: `>= ${TARGET_SPLIT_RATIO}x`,
      pass: t16.value >= TARGET_SPLIT_RATIO,
    });
  }
  const p50 = worst((m) => r.latency_added_us[m]?.p50, Math.max);
  if (p50) {
    targets.push({
      name: `latency p50 added by the link, worst of ${p50.modes.join("/")}`,
      value: p50.value,
      limit: `<= ${TARGET_ADDED_P50_US} us`,
      pass: p50.value <= TARGET_ADDED_P50_US,
    });
  }
  const back = worst((m) => r.back_rss_kib_per_stream[m], Math.max);
  if (back) {
    targets.push({
      name: `back RSS per client stream at ${r.idle_clients?.split} clients, worst of ` +
        back.modes.join("/"),
      value: back.value,
      limit: `<= ${TARGET_BACK_KIB_PER_STREAM} KiB`,
      pass: back.value <= TARGET_BACK_KIB_PER_STREAM,
    });
  }
  const extra = worst((m) => {
    const p = r.idle_rss_kib_per_client[m];
    return p?.split != null && p.standalone != null ? p.split - p.standalone : null;
  }, Math.max);
  if (extra) {
    targets.push({
      name: `front RSS per idle client minus standalone's, worst of ${extra.modes.join("/")}`,
      value: extra.value,
      limit: `<= ${TARGET_FRONT_EXTRA_KIB} KiB`,
      pass: extra.value <= TARGET_FRONT_EXTRA_KIB,
    });
  }
  return targets;
}
