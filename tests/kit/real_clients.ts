/**
 * Running real Telegram clients against a proxy in this process, for the real-client tests
 * (`tests/real_clients_test.ts` for a standalone proxy, `tests/real_clients_split_test.ts` for a
 * front and a back): the secret kinds, installing the clients' npm packages, running the client
 * scripts (`tests/real_clients/*.ts`) as Deno subprocesses under a deadline, reading their
 * reports, and the checks on what the proxy and the fakes behind it saw.
 *
 * Each client runs in a subprocess and is killed in `finally`: the client libraries start native
 * threads and timers that would trip the sanitizers or keep the test process alive. Their npm
 * packages (about 60 MB; pinned in `tests/real_clients/deno.json` and its lockfile) are
 * downloaded on the first run: {@linkcode ensureInstalled} runs `deno cache` on the client
 * scripts under a deadline fit for a download.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import { assert, assertEquals } from "../assert.ts";
import { TEST_SECRET } from "../helpers.ts";
import type { FakeDc, FakeDcEvent } from "./fake_dc.ts";
import type { FakeMiddleEvent, FakeMiddleProxy } from "./fake_middle_proxy.ts";
import type { ProxyEvent } from "../../lib/client/events.ts";
import type { ClientProtocol } from "../../lib/config/types.ts";
import type { TransportTag } from "../../lib/protocol/obfuscated2.ts";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const TDLIB_SCRIPT = fileURLToPath(new URL("../real_clients/tdlib_ping.ts", import.meta.url));
const MTCUTE_SCRIPT = fileURLToPath(new URL("../real_clients/mtcute_connect.ts", import.meta.url));
/** The clients' own config and lockfile: the proxy's never lists them. */
const CLIENTS_CONFIG = fileURLToPath(new URL("../real_clients/deno.json", import.meta.url));

/** First run: download and unpack the npm packages (TDLib alone is 58 MB). */
const INSTALL_TIMEOUT_MS = 600_000;
/** One client run: TDLib's own ping timeout is 10 s and testProxy's is set to 10 s. */
const CLIENT_TIMEOUT_MS = 60_000;
const POLL_MS = 25;

/** The fake-TLS domain of the `ee` secret; a proxy under test must list it. */
export const TLS_DOMAIN = "example.com";

/** A kind of secret a client is given, and what the proxy must make of it. */
export interface Kind {
  /** "a plain", "a dd", "an ee": for test names. */
  name: string;
  /** The secret as a client is given it. */
  secret: string;
  protocol: ClientProtocol;
  /** The inner transport the client must pick for this secret. */
  transport: TransportTag;
}

/** Lowercase hex of `bytes`. */
export function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

const PLAIN_HEX = toHex(TEST_SECRET);

/** Plain, dd and ee secrets for {@linkcode TEST_SECRET} (ee with {@linkcode TLS_DOMAIN}). */
export const KINDS: readonly Kind[] = [
  { name: "a plain", secret: PLAIN_HEX, protocol: "plain", transport: "intermediate" },
  { name: "a dd", secret: `dd${PLAIN_HEX}`, protocol: "dd", transport: "padded" },
  {
    name: "an ee",
    secret: `ee${PLAIN_HEX}${toHex(new TextEncoder().encode(TLS_DOMAIN))}`,
    protocol: "tls",
    transport: "padded",
  },
];

/** How a client subprocess ended. */
export interface RunResult {
  code: number;
  signal: Deno.Signal | null;
  stdout: string;
  stderr: string;
  /** Killed at the deadline. */
  timedOut: boolean;
  /** Killed because `stopWhen` held. */
  stopped: boolean;
}

interface _RunOptions {
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
async function _runDeno(args: string[], options: _RunOptions): Promise<RunResult> {
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

/** `what`, how the run ended, and the last 20 lines of its stdout and stderr: for messages. */
export function describe(what: string, r: RunResult): string {
  const tail = (s: string) => s.trim().split("\n").slice(-20).join("\n");
  return `${what} (code ${r.code}, signal ${r.signal}, timed out ${r.timedOut})\n` +
    `stdout:\n${tail(r.stdout)}\nstderr:\n${tail(r.stderr)}`;
}

let _installed: Promise<void> | null = null;

/** Install the clients' npm packages once per test process, with a deadline fit for a download. */
export function ensureInstalled(): Promise<void> {
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
      throw new Error(describe("Installing the client packages failed", r));
    }
  })();
  return _installed;
}

/** JSON for messages, with bytes as hex and bigints as strings. */
export function json(x: unknown): string {
  return JSON.stringify(
    x,
    (_k, v) => (v instanceof Uint8Array ? toHex(v) : typeof v === "bigint" ? String(v) : v),
  );
}

/** The last stdout line of a script run, parsed as JSON. */
function _report(r: RunResult): Record<string, unknown> {
  const last = r.stdout.trim().split("\n").at(-1) ?? "";
  try {
    return JSON.parse(last);
  } catch {
    throw new Error(describe("The client script printed no report", r));
  }
}

/** The `established` events among `events`. */
export function established(
  events: readonly ProxyEvent[],
): Extract<ProxyEvent, { type: "established" }>[] {
  return events.flatMap((e) => (e.type === "established" ? [e] : []));
}

/** The proxy (its client listener) established sessions, all with `kind`'s protocol and transport. */
export function checkEstablished(
  proxy: { readonly events: readonly ProxyEvent[] },
  kind: Kind,
  what: string,
): void {
  const sessions = established(proxy.events);
  assert(
    sessions.length > 0,
    `${what}: the proxy established no session: ${json(proxy.events)}`,
  );
  for (const e of sessions) {
    assertEquals(e.protocol, kind.protocol, `${what}: protocol of ${json(e)}`);
    assertEquals(e.transport, kind.transport, `${what}: transport of ${json(e)}`);
  }
}

/** Connections reached the fake DC, all with the transport tag `kind`'s client picks. */
export function checkInits(dc: FakeDc, kind: Kind, what: string): void {
  const inits = dc.events.filter((e) => e.type === "init");
  assert(inits.length > 0, `${what}: no connection reached the fake DC`);
  for (const e of inits) {
    assertEquals(e.tag, kind.transport, `${what}: transport tag the fake DC saw`);
  }
}

/** The first `req_DH_params` the fake DC saw. */
export function findDhParams(
  dc: FakeDc,
): Extract<FakeDcEvent, { type: "req_dh_params" }> | undefined {
  return dc.events.find((e): e is Extract<FakeDcEvent, { type: "req_dh_params" }> =>
    e.type === "req_dh_params"
  );
}

/** The first `req_DH_params` the fake middle proxy saw. */
export function findMiddleDhParams(
  mp: FakeMiddleProxy,
): Extract<FakeMiddleEvent, { type: "req_dh_params" }> | undefined {
  return mp.events.find((e): e is Extract<FakeMiddleEvent, { type: "req_dh_params" }> =>
    e.type === "req_dh_params"
  );
}

/** Every PROXY_REQ carried the ad tag and the client's transport; nothing unexpected arrived. */
export function checkMiddle(mp: FakeMiddleProxy, kind: Kind, what: string): void {
  const reqs = mp.events.filter((e): e is Extract<FakeMiddleEvent, { type: "proxy_req" }> =>
    e.type === "proxy_req"
  );
  assert(reqs.length > 0, `${what}: no PROXY_REQ reached the fake middle proxy`);
  for (const r of reqs) {
    assertEquals(r.adTagOk, true, `${what}: ad tag of ${json(r)}`);
    assertEquals(r.tag, kind.transport, `${what}: transport flags of ${json(r)}`);
  }
  const unexpected = mp.events.filter((e) => e.type === "unexpected");
  assertEquals(unexpected, [], `${what}: the fake middle proxy saw something unexpected`);
}

/** TDLib's report says pingProxy worked: version 1.8.65 and a latency under its 10 s timeout. */
export function checkPing(report: Record<string, unknown>, what: string): void {
  assert(report["ok"] === true, what);
  assertEquals(report["version"], "1.8.65", what);
  const seconds = report["seconds"];
  assert(
    typeof seconds === "number" && seconds >= 0 && seconds < 10,
    `pingProxy latency: ${seconds}; ${what}`,
  );
}

/** TDLib's pingProxy then testProxy through the proxy on `port` with `kind`'s secret, in a fresh database. */
export async function runTdlib(
  proxy: { readonly port: number },
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

/** mtcute's MtProxyTcpTransport to DC 2 through the proxy on `port`, until `done` holds (or the deadline). */
export function runMtcute(
  proxy: { readonly port: number },
  kind: Kind,
  done: () => boolean,
): Promise<RunResult> {
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
