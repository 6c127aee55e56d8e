/**
 * Real Telegram clients through the proxy to a fake DC on 127.0.0.1 (direct mode) or to a fake
 * middle proxy (middle-proxy mode, with an ad tag), for plain, `dd` and `ee` secrets: TDLib 1.8.65 through `tdl` (`pingProxy` returns a latency; `testProxy` gets as far
 * as `req_DH_params`) and mtcute 0.30.3 (its `MtProxyTcpTransport` gets as far as
 * `req_DH_params`). Neither can finish the key exchange: the fake DC has no Telegram RSA key.
 *
 * The proxy and the fake DC run in this process. Each client runs in a subprocess
 * (`tests/real_clients/*.ts`) under a deadline and is killed in `finally`: the client libraries
 * start native threads and timers that would trip the sanitizers or keep this process alive.
 * Their npm packages (about 60 MB; pinned in deno.json and deno.lock) are downloaded on the first
 * run: Deno installs every locked npm package when the test process starts, and the first test
 * here also runs `deno cache` on the client scripts under a deadline fit for a download.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { assert, assertEquals } from "./assert.ts";
import { startTestProxy, TEST_SECRET, testConfig, type TestProxy } from "./helpers.ts";
import { type FakeDc, type FakeDcEvent, startFakeDc } from "./kit/fake_dc.ts";
import {
  type FakeMiddleEvent,
  type FakeMiddleProxy,
  startFakeMiddleProxy,
} from "./kit/fake_middle_proxy.ts";
import { startFakeCoreApi } from "./kit/fake_core_api.ts";
import { randomBytes } from "../lib/crypto.ts";
import type { ProxyEvent } from "../lib/client/events.ts";
import type { ClientProtocol } from "../lib/config/types.ts";
import type { TransportTag } from "../lib/protocol/obfuscated2.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const TDLIB_SCRIPT = fileURLToPath(new URL("./real_clients/tdlib_ping.ts", import.meta.url));
const MTCUTE_SCRIPT = fileURLToPath(new URL("./real_clients/mtcute_connect.ts", import.meta.url));
/** The clients' own config and lockfile: the proxy's never lists them. */
const CLIENTS_CONFIG = fileURLToPath(new URL("./real_clients/deno.json", import.meta.url));

/** First run: download and unpack the npm packages (TDLib alone is 58 MB). */
const INSTALL_TIMEOUT_MS = 600_000;
/** One client run: TDLib's own ping timeout is 10 s and testProxy's is set to 10 s. */
const CLIENT_TIMEOUT_MS = 60_000;
const POLL_MS = 25;

const TLS_DOMAIN = "example.com";

interface Kind {
  /** "a plain", "a dd", "an ee": for test names. */
  name: string;
  /** The secret as a client is given it. */
  secret: string;
  protocol: ClientProtocol;
  /** The inner transport the client must pick for this secret. */
  transport: TransportTag;
}

function _hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

const PLAIN_HEX = _hex(TEST_SECRET);
const KINDS: Kind[] = [
  { name: "a plain", secret: PLAIN_HEX, protocol: "plain", transport: "intermediate" },
  { name: "a dd", secret: `dd${PLAIN_HEX}`, protocol: "dd", transport: "padded" },
  {
    name: "an ee",
    secret: `ee${PLAIN_HEX}${_hex(new TextEncoder().encode(TLS_DOMAIN))}`,
    protocol: "tls",
    transport: "padded",
  },
];

/** How a client subprocess ended. */
interface RunResult {
  code: number;
  signal: Deno.Signal | null;
  stdout: string;
  stderr: string;
  /** Killed at the deadline. */
  timedOut: boolean;
  /** Killed because `stopWhen` held. */
  stopped: boolean;
}

interface RunOptions {
  timeoutMs: number;
  /** Polled while the process runs; once true, the process is killed. */
  stopWhen?: () => boolean;
}

function _delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function _kill(child: Deno.ChildProcess): void {
  try {
    child.kill("SIGKILL");
  } catch {
    // Already exited.
  }
}

/** Run `deno <args>` in the project root; kill it at the deadline or once `stopWhen` holds. */
async function _runDeno(args: string[], options: RunOptions): Promise<RunResult> {
  const child = new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  let exited = false;
  // output() consumes both pipes and waits for the exit status, so nothing leaks.
  const output = child.output().finally(() => {
    exited = true;
  });
  let timedOut = false;
  let stopped = false;
  const timer = setTimeout(() => {
    timedOut = true;
    _kill(child);
  }, options.timeoutMs);
  let out: Deno.CommandOutput;
  try {
    while (options.stopWhen && !exited && !timedOut) {
      if (options.stopWhen()) {
        stopped = true;
        break;
      }
      await _delay(POLL_MS);
    }
  } finally {
    // A stopWhen run has nothing more to do once the loop ends. Either way, wait for the exit.
    if (options.stopWhen && !exited) _kill(child);
    out = await output;
    clearTimeout(timer);
  }
  const decoder = new TextDecoder();
  return {
    code: out.code,
    signal: out.signal,
    stdout: decoder.decode(out.stdout),
    stderr: decoder.decode(out.stderr),
    timedOut,
    stopped,
  };
}

function _describe(what: string, r: RunResult): string {
  const tail = (s: string) => s.trim().split("\n").slice(-20).join("\n");
  return `${what} (code ${r.code}, signal ${r.signal}, timed out ${r.timedOut})\n` +
    `stdout:\n${tail(r.stdout)}\nstderr:\n${tail(r.stderr)}`;
}

let _installed: Promise<void> | null = null;

/** Install the clients' npm packages once per test process, with a deadline fit for a download. */
function _ensureInstalled(): Promise<void> {
  _installed ??= (async () => {
    const r = await _runDeno([
      "cache",
      "--quiet",
      "--config",
      CLIENTS_CONFIG,
      TDLIB_SCRIPT,
      MTCUTE_SCRIPT,
    ], {
      timeoutMs: INSTALL_TIMEOUT_MS,
    });
    if (r.code !== 0 || r.timedOut) {
      throw new Error(_describe("Installing the client packages failed", r));
    }
  })();
  return _installed;
}

/** A fake DC in mtproto mode and a proxy routing every DC id (±1..5) to it. */
async function _withProxyAndDc(fn: (proxy: TestProxy, dc: FakeDc) => Promise<void>): Promise<void> {
  const dc = await startFakeDc({ mode: "mtproto" });
  try {
    const dcPorts: Record<number, number> = {};
    for (let id = 1; id <= 5; id++) {
      dcPorts[id] = dc.port;
      dcPorts[-id] = dc.port;
    }
    await using proxy = await startTestProxy(
      testConfig({ dcPorts, secret: TEST_SECRET, tlsDomains: [TLS_DOMAIN] }),
    );
    await fn(proxy, dc);
  } finally {
    await dc.close();
  }
}

function _established(events: readonly ProxyEvent[]) {
  return events.flatMap((e) => (e.type === "established" ? [e] : []));
}

function _checkEstablished(proxy: TestProxy, kind: Kind, what: string): void {
  const established = _established(proxy.events);
  assert(
    established.length > 0,
    `${what}: the proxy established no session: ${_json(proxy.events)}`,
  );
  for (const e of established) {
    assertEquals(e.protocol, kind.protocol, `${what}: protocol of ${_json(e)}`);
    assertEquals(e.transport, kind.transport, `${what}: transport of ${_json(e)}`);
  }
}

function _checkInits(dc: FakeDc, kind: Kind, what: string): void {
  const inits = dc.events.filter((e) => e.type === "init");
  assert(inits.length > 0, `${what}: no connection reached the fake DC`);
  for (const e of inits) {
    assertEquals(e.tag, kind.transport, `${what}: transport tag the fake DC saw`);
  }
}

function _findDhParams(dc: FakeDc): Extract<FakeDcEvent, { type: "req_dh_params" }> | undefined {
  return dc.events.find((e): e is Extract<FakeDcEvent, { type: "req_dh_params" }> =>
    e.type === "req_dh_params"
  );
}

function _json(x: unknown): string {
  return JSON.stringify(
    x,
    (_k, v) => (v instanceof Uint8Array ? _hex(v) : typeof v === "bigint" ? String(v) : v),
  );
}

/** The last stdout line of a script run, parsed as JSON. */
function _report(r: RunResult): Record<string, unknown> {
  const last = r.stdout.trim().split("\n").at(-1) ?? "";
  try {
    return JSON.parse(last);
  } catch {
    throw new Error(_describe("The client script printed no report", r));
  }
}

/** TDLib's pingProxy then testProxy through `proxy` with `kind`'s secret, in a fresh database. */
async function _runTdlib(
  proxy: TestProxy,
  kind: Kind,
): Promise<{ run: RunResult; report: Record<string, unknown> }> {
  const dir = await Deno.makeTempDir({ prefix: "mtproxy-tdlib-" });
  try {
    const run = await _runDeno([
      "run",
      "--config",
      CLIENTS_CONFIG,
      "--allow-all",
      "--quiet",
      TDLIB_SCRIPT,
      "--port",
      String(proxy.port),
      "--secret",
      kind.secret,
      "--dir",
      dir,
      "--test-proxy",
    ], { timeoutMs: CLIENT_TIMEOUT_MS });
    return { run, report: _report(run) };
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** mtcute's MtProxyTcpTransport to DC 2 through `proxy`, until `done` holds (or the deadline). */
function _runMtcute(proxy: TestProxy, kind: Kind, done: () => boolean): Promise<RunResult> {
  return _runDeno([
    "run",
    "--config",
    CLIENTS_CONFIG,
    "--allow-all",
    "--quiet",
    MTCUTE_SCRIPT,
    "--port",
    String(proxy.port),
    "--secret",
    kind.secret,
    "--dc",
    "2",
    "--max-ms",
    String(CLIENT_TIMEOUT_MS - 10_000),
  ], { timeoutMs: CLIENT_TIMEOUT_MS, stopWhen: done });
}

for (const kind of KINDS) {
  Deno.test(`TDLib pingProxy and testProxy work through the proxy with ${kind.name} secret`, async () => {
    await _ensureInstalled();
    await _withProxyAndDc(async (proxy, dc) => {
      const { run, report } = await _runTdlib(proxy, kind);
      const what = _describe(`TDLib with ${kind.name} secret`, run);
      assert(report["ok"] === true, what);
      assertEquals(report["version"], "1.8.65", what);
      const seconds = report["seconds"];
      assert(
        typeof seconds === "number" && seconds >= 0 && seconds < 10,
        `pingProxy latency: ${seconds}; ${what}`,
      );

      // pingProxy: one connection, two req_pq_multi on it (the second one is timed).
      // testProxy: one connection that gets as far as req_DH_params, with both nonces right.
      const dh = _findDhParams(dc);
      assert(
        dh,
        `testProxy did not reach req_DH_params: fake DC ${_json(dc.events)}; ` +
          `proxy ${_json(proxy.events)}; ${what}`,
      );
      assert(dh.nonceOk && dh.serverNonceOk, `req_DH_params nonces: ${_json(dh)}`);
      const pqs = dc.events.filter((e) => e.type === "req_pq");
      assert(pqs.length >= 3, `req_pq count ${pqs.length}: ${_json(dc.events)}`);
      _checkInits(dc, kind, what);
      _checkEstablished(proxy, kind, what);
      // For ee, "tls" sessions mean the proxy accepted TDLib's fake-TLS hello and TDLib
      // accepted the proxy's answer (it checks the server HMAC before sending anything).
      const rejected = proxy.events.filter((e) => e.type === "rejected");
      assertEquals(rejected, [], `the proxy rejected a TDLib connection; ${what}`);
      assertEquals(
        _established(proxy.events).map((e) => e.requestedDc).sort(),
        [1, 2],
        `DC ids: pingProxy asks for the main DC (1 in a fresh database), testProxy for 2`,
      );
    });
  });
}

for (const kind of KINDS) {
  Deno.test(`mtcute MtProxyTcpTransport reaches req_DH_params through the proxy with ${kind.name} secret`, async () => {
    await _ensureInstalled();
    await _withProxyAndDc(async (proxy, dc) => {
      const run = await _runMtcute(proxy, kind, () => _findDhParams(dc) !== undefined);
      const what = _describe(`mtcute with ${kind.name} secret`, run);
      const dh = _findDhParams(dc);
      assert(
        dh,
        `mtcute did not reach req_DH_params: fake DC ${_json(dc.events)}; ` +
          `proxy ${_json(proxy.events)}; ${what}`,
      );
      assert(dh.nonceOk && dh.serverNonceOk, `req_DH_params nonces: ${_json(dh)}; ${what}`);
      _checkInits(dc, kind, what);
      _checkEstablished(proxy, kind, what);
      const first = _established(proxy.events)[0]!;
      assertEquals(first.requestedDc, 2, `DC id mtcute asked for; ${what}`);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Middle-proxy mode: the same clients, multiplexed over RPC connections to a fake middle proxy.

const AD_TAG = Uint8Array.from({ length: 16 }, (_, i) => 0x10 + i);

/** A fake middle proxy in mtproto mode for every DC id (±1..5), and a proxy with an ad tag. */
async function _withProxyAndMiddle(
  fn: (proxy: TestProxy, mp: FakeMiddleProxy) => Promise<void>,
): Promise<void> {
  const proxySecret = randomBytes(128);
  const mp = await startFakeMiddleProxy({ proxySecret, expectedAdTag: AD_TAG, mode: "mtproto" });
  const lines = ["default 2;"];
  for (let id = 1; id <= 5; id++) {
    lines.push(`proxy_for ${id} 127.0.0.1:${mp.port};`, `proxy_for -${id} 127.0.0.1:${mp.port};`);
  }
  const core = startFakeCoreApi({ proxySecret, configV4: lines.join("\n") + "\n" });
  try {
    await using proxy = await startTestProxy(testConfig({
      secret: TEST_SECRET,
      tlsDomains: [TLS_DOMAIN],
      tag: AD_TAG,
      proxyUrls: { secret: core.urls.secretUrl, config: core.urls.configUrl },
      externalIp: "127.0.0.1",
    }));
    await fn(proxy, mp);
  } finally {
    await mp.close();
    await core.close();
  }
}

function _mpDhParams(
  mp: FakeMiddleProxy,
): Extract<FakeMiddleEvent, { type: "req_dh_params" }> | undefined {
  return mp.events.find((e): e is Extract<FakeMiddleEvent, { type: "req_dh_params" }> =>
    e.type === "req_dh_params"
  );
}

/** Every PROXY_REQ carried the ad tag and the client's transport; nothing unexpected arrived. */
function _checkMiddle(mp: FakeMiddleProxy, kind: Kind, what: string): void {
  const reqs = mp.events.filter((e): e is Extract<FakeMiddleEvent, { type: "proxy_req" }> =>
    e.type === "proxy_req"
  );
  assert(reqs.length > 0, `${what}: no PROXY_REQ reached the fake middle proxy`);
  for (const r of reqs) {
    assertEquals(r.adTagOk, true, `${what}: ad tag of ${_json(r)}`);
    assertEquals(r.tag, kind.transport, `${what}: transport flags of ${_json(r)}`);
  }
  const unexpected = mp.events.filter((e) => e.type === "unexpected");
  assertEquals(unexpected, [], `${what}: the fake middle proxy saw something unexpected`);
}

for (const kind of KINDS) {
  Deno.test(`TDLib pingProxy and testProxy work in middle-proxy mode with ${kind.name} secret`, async () => {
    await _ensureInstalled();
    await _withProxyAndMiddle(async (proxy, mp) => {
      const { run, report } = await _runTdlib(proxy, kind);
      const what = _describe(`TDLib (middle mode) with ${kind.name} secret`, run);
      assert(report["ok"] === true, what);
      const dh = _mpDhParams(mp);
      assert(
        dh,
        `testProxy did not reach req_DH_params: fake middle proxy ${_json(mp.events)}; ` +
          `proxy ${_json(proxy.events)}; ${what}`,
      );
      assert(dh.nonceOk && dh.serverNonceOk, `req_DH_params nonces: ${_json(dh)}`);
      const pqs = mp.events.filter((e) => e.type === "req_pq");
      assert(pqs.length >= 3, `req_pq count ${pqs.length}: ${_json(mp.events)}`);
      _checkMiddle(mp, kind, what);
      _checkEstablished(proxy, kind, what);
      const rejected = proxy.events.filter((e) => e.type === "rejected");
      assertEquals(rejected, [], `the proxy rejected a TDLib connection; ${what}`);
    });
  });
}

for (const kind of KINDS) {
  Deno.test(`mtcute MtProxyTcpTransport reaches req_DH_params in middle-proxy mode with ${kind.name} secret`, async () => {
    await _ensureInstalled();
    await _withProxyAndMiddle(async (proxy, mp) => {
      const run = await _runMtcute(proxy, kind, () => _mpDhParams(mp) !== undefined);
      const what = _describe(`mtcute (middle mode) with ${kind.name} secret`, run);
      const dh = _mpDhParams(mp);
      assert(
        dh,
        `mtcute did not reach req_DH_params: fake middle proxy ${_json(mp.events)}; ` +
          `proxy ${_json(proxy.events)}; ${what}`,
      );
      assert(dh.nonceOk && dh.serverNonceOk, `req_DH_params nonces: ${_json(dh)}; ${what}`);
      _checkMiddle(mp, kind, what);
      _checkEstablished(proxy, kind, what);
    });
  });
}
