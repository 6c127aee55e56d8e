/**
 * Proxy CPU per fake-TLS handshake, in direct mode and in middle-proxy mode, for one or more
 * source trees side by side (so that a change can be measured against the commit before it in
 * the same sitting, on the same noisy machine).
 *
 * Starts, on 127.0.0.1: the echo DC (scripts/bench_dc.ts), the fake middle proxy and core API
 * (scripts/bench_middle.ts), and per tree one proxy (`<tree>/main.ts run`) with two listeners:
 * `direct` (to the echo DC) and `middle` (an ad tag: multiplexed over RPC connections to the fake
 * middle proxy). Then, interleaved so a noisy moment hits every configuration alike, runs the
 * load generator's `handshakes` scenario (`ee` clients: connect, fake-TLS handshake, one framed
 * 100-byte packet echoed, close) against each listener of each proxy and reads the proxy's CPU
 * time from /proc. Prints one line per run and a table of medians: proxy CPU ms per handshake
 * and handshakes per second.
 *
 * Usage: `deno run -A scripts/bench_handshake_cpu.ts [--trees DIR,DIR] [--repeat 5]
 * [--seconds 3] [--loops 8] [--proxy-workers 1] [--paths direct,middle] [--cpu-prof DIR]
 * [--v8-flags FLAGS] [--proxy-stdout PREFIX]` (the proxy's V8 flags, default those of
 * `deno task start`; each proxy's stdout saved to PREFIX.<n> at the end, e.g. for --trace-gc).
 * `--cpu-prof DIR` runs each proxy under `deno run --cpu-prof` (one profile per tree in
 * DIR/<n>/), for `scripts/cpu_profile_summary.ts`.
 *
 * @module
 */
import { parseArgs } from "node:util";

const ROOT = new URL("..", import.meta.url).pathname;
const script = (name: string) => new URL(name, import.meta.url).pathname;
const SECRET = "0123456789abcdef0123456789abcdef";
const TLS_DOMAIN = "example.com";
const AD_TAG = "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf";

/** A child process whose stdout lines we keep. */
class Child {
  readonly proc: Deno.ChildProcess;
  readonly lines: string[] = [];
  stderr = "";
  readonly done: Promise<Deno.CommandStatus>;

  constructor(readonly name: string, args: string[], cwd = ROOT) {
    const proc = new Deno.Command(Deno.execPath(), {
      args,
      cwd,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    this.proc = proc;
    const out = (async () => {
      let pending = "";
      for await (const chunk of proc.stdout.pipeThrough(new TextDecoderStream())) {
        pending += chunk;
        let nl: number;
        while ((nl = pending.indexOf("\n")) >= 0) {
          this.lines.push(pending.slice(0, nl));
          pending = pending.slice(nl + 1);
        }
      }
    })();
    const err = (async () => {
      for await (const chunk of proc.stderr.pipeThrough(new TextDecoderStream())) {
        this.stderr = (this.stderr + chunk).slice(-4000);
      }
    })();
    this.done = Promise.all([out, err, proc.status]).then(([, , s]) => s);
  }

  get pid(): number {
    return this.proc.pid;
  }

  async waitForLine(re: RegExp, timeoutMs: number): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    let exited = false;
    this.done.then(() => exited = true);
    while (Date.now() < deadline) {
      for (const line of this.lines) {
        const m = line.match(re);
        if (m) return m;
      }
      if (exited) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`${this.name}: no line matching ${re}; stderr: ${this.stderr.slice(-1500)}`);
  }

  /** stdin EOF, then SIGTERM (lets `--cpu-prof` write its profile), SIGKILL after 10 s. */
  async stop(): Promise<void> {
    try {
      await this.proc.stdin.close();
    } catch {
      // Already closed.
    }
    try {
      this.proc.kill("SIGTERM");
    } catch {
      // Already gone.
    }
    const timer = setTimeout(() => {
      try {
        this.proc.kill("SIGKILL");
      } catch {
        // Already gone.
      }
    }, 10_000);
    await this.done;
    clearTimeout(timer);
  }
}

function _freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

function _config(
  dcPort: number,
  directPort: number,
  middlePort: number,
  origin: string,
  workers: string,
): string {
  return `# Written by scripts/bench_handshake_cpu.ts.
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
workers: ${workers}
fronting:
  mode: off
external_ip: 127.0.0.1
telegram:
  dc_addresses:
    "2": "127.0.0.1:${dcPort}"
  proxy_secret_url: "${origin}/getProxySecret"
  proxy_config_url: "${origin}/getProxyConfig"
timeouts:
  idle: 3600
  handshake: 60
  shutdown_grace: 1
max_connections: 20000
`;
}

/** The V8 flags of `deno task start`: measure what users run. */
function _startV8Flags(): string[] {
  const config = JSON.parse(Deno.readTextFileSync(`${ROOT}deno.json`));
  const m = String(config.tasks?.start ?? "").match(/--v8-flags=(\S+)/);
  return m ? [`--v8-flags=${m[1]}`] : [];
}

interface Proxy {
  tree: string;
  child: Child;
  ports: Record<"direct" | "middle", number>;
}

function _median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

async function _main(): Promise<void> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      trees: { type: "string", default: ROOT },
      repeat: { type: "string", default: "5" },
      seconds: { type: "string", default: "3" },
      loops: { type: "string", default: "8" },
      "proxy-workers": { type: "string", default: "1" },
      paths: { type: "string", default: "direct,middle" },
      "cpu-prof": { type: "string" },
      "v8-flags": { type: "string" },
      "proxy-stdout": { type: "string" },
    },
  });
  const trees = values.trees.split(",").filter(Boolean).map((t) => t.replace(/\/?$/, "/"));
  const paths = values.paths.split(",") as ("direct" | "middle")[];
  const repeat = Number(values.repeat);
  const tmp = await Deno.makeTempDir({ prefix: "hs-cpu-" });
  const all: Child[] = [];
  try {
    const dc = new Child("echo DC", ["run", "--allow-all", script("bench_dc.ts")]);
    all.push(dc);
    const dcPort = Number((await dc.waitForLine(/^listening (\d+)$/, 30_000))[1]);
    const fakes = new Child("fake middle proxy", [
      "run",
      "--allow-all",
      script("bench_middle.ts"),
      "--tag",
      AD_TAG,
    ]);
    all.push(fakes);
    const fm = await fakes.waitForLine(/^listening (\S+) (\d+)$/, 30_000);
    const origin = fm[1]!;

    const proxies: Proxy[] = [];
    for (const [i, tree] of trees.entries()) {
      const direct = _freePort();
      let middle = _freePort();
      while (middle === direct) middle = _freePort();
      const dir = `${tmp}/proxy-${i}`;
      await Deno.mkdir(dir);
      await Deno.writeTextFile(
        `${dir}/config.yaml`,
        _config(dcPort, direct, middle, origin, values["proxy-workers"]),
      );
      const prof = values["cpu-prof"]
        ? ["--cpu-prof", `--cpu-prof-dir=${values["cpu-prof"]}/${i}`]
        : [];
      const child = new Child(`proxy ${i} (${tree})`, [
        "run",
        "--allow-all",
        ...prof,
        ...(values["v8-flags"] ? [`--v8-flags=${values["v8-flags"]}`] : _startV8Flags()),
        `${tree}main.ts`,
        "run",
        "--config",
        `${dir}/config.yaml`,
      ], tree);
      all.push(child);
      for (const port of [direct, middle]) {
        await child.waitForLine(new RegExp(`listening on 127\\.0\\.0\\.1:${port}\\b`), 60_000);
      }
      proxies.push({ tree, child, ports: { direct, middle } });
    }

    const load = async (p: Proxy, path: "direct" | "middle", seconds: string) => {
      const other = path === "middle" ? fakes : dc;
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--allow-all",
          script("bench_load.ts"),
          "--scenario",
          "handshakes",
          "--mode",
          "ee",
          "--framed",
          "--port",
          String(p.ports[path]),
          "--secret",
          SECRET,
          "--sni",
          TLS_DOMAIN,
          "--pids",
          `mid=${p.child.pid},dc=${other.pid}`,
          "--workers",
          values.loops,
          "--seconds",
          seconds,
        ],
        cwd: ROOT,
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      // Its stdin stays open while it runs: the load generator exits when stdin closes.
      const [text, errText] = await Promise.all([
        new Response(out.stdout).text(),
        new Response(out.stderr).text(),
      ]);
      await out.status;
      await out.stdin.close().catch(() => {});
      const last = text.split("\n").filter((l) => l.startsWith("{")).at(-1);
      if (!last) throw new Error(`Load failed: ${errText.slice(-1500)}`);
      return JSON.parse(last);
    };

    // Warm up every proxy and path (JIT, pools, middle-proxy connections).
    for (const p of proxies) for (const path of paths) await load(p, path, "1");

    const runs = new Map<string, { ms: number[]; rate: number[]; errors: number }>();
    for (let rep = 0; rep < repeat; rep++) {
      for (const path of paths) {
        for (const [i, p] of proxies.entries()) {
          const r = await load(p, path, values.seconds);
          const ms = (r.cpu_s.mid * 1000) / Math.max(1, r.handshakes);
          const key = `${i} ${path}`;
          const acc = runs.get(key) ?? { ms: [], rate: [], errors: 0 };
          acc.ms.push(ms);
          acc.rate.push(r.per_second);
          acc.errors += r.errors;
          runs.set(key, acc);
          console.error(
            `  tree ${i} ${path.padEnd(6)}: ${ms.toFixed(3)} ms CPU/handshake, ` +
              `${r.per_second.toFixed(0)}/s (proxy ${r.cpu_s.mid.toFixed(2)} s, ` +
              `other ${r.cpu_s.dc.toFixed(2)} s, load ${r.cpu_s.load.toFixed(2)} s, ` +
              `errors ${r.errors}${r.errors ? `: ${r.error_samples[0]}` : ""})`,
          );
        }
      }
    }
    console.log("tree | path | proxy CPU ms/handshake (median, min-max) | handshakes/s | errors");
    for (const [i, p] of proxies.entries()) {
      for (const path of paths) {
        const r = runs.get(`${i} ${path}`)!;
        console.log(
          `${i} ${p.tree} | ${path} | ${_median(r.ms).toFixed(3)} ` +
            `(${Math.min(...r.ms).toFixed(3)}-${Math.max(...r.ms).toFixed(3)}) | ` +
            `${_median(r.rate).toFixed(0)} | ${r.errors}`,
        );
      }
    }
  } finally {
    for (const c of all.reverse()) await c.stop();
    if (values["proxy-stdout"]) {
      for (const [i, c] of all.filter((c) => c.name.startsWith("proxy ")).reverse().entries()) {
        await Deno.writeTextFile(`${values["proxy-stdout"]}.${i}`, c.lines.join("\n") + "\n");
      }
    }
    await Deno.remove(tmp, { recursive: true });
  }
}

if (import.meta.main) await _main();
