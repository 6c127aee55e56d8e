/**
 * The admin API and status page (`admin.listen`, off by default): JSON endpoints to list, add,
 * change and delete users, see their links, reload, and check health, and a status page at `/`.
 * Routing is npm:hono's; none of it is on the data path (a separate HTTP server on its own port).
 *
 * Every `/api/` request needs `Authorization: Bearer <token>`, compared in constant time (equal
 * length SHA-256 digests through `timingSafeEqual`). A wrong or missing token is logged (never the
 * token) and counted per client address: after {@linkcode AUTH_FAILURES_ALLOWED} failures within
 * {@linkcode AUTH_FAILURE_WINDOW_MS}, that address gets 429 until the oldest failure is that old.
 *
 * Users added through the API live in the users file (lib/config/users_file.ts), written
 * atomically and then applied by the same reload as SIGHUP, so the file and the API never
 * disagree. Only `GET /api/users/:name/links` shows secrets.
 *
 * @module
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { type Context, Hono } from "hono";
import type { Config, HostPort, UserConfig } from "../config/types.ts";
import { checkUser, ConfigError, type FileUsers, isValidName } from "../config/load.ts";
import type { ReloadReport } from "../config/reload.ts";
import { readUsersFile, usersFileSource, writeUsersFile } from "../config/users_file.ts";
import { generateSecret, proxyLinks, toHex } from "../secret.ts";
import { formatHostPort } from "../net.ts";
import { VERSION } from "../version.ts";
import { logger } from "./log.ts";
import { ADMIN_PAGE_HTML, ADMIN_PAGE_JS } from "./admin_page.ts";
import { adminOpenApi } from "./admin_openapi.ts";
import type { UserUsage } from "../guard/quota.ts";

const log = logger("admin");

/** Failed attempts one client address may make within {@linkcode AUTH_FAILURE_WINDOW_MS}. */
export const AUTH_FAILURES_ALLOWED = 5;

/** The window over which failed attempts count; an address is let in again once it passes. */
export const AUTH_FAILURE_WINDOW_MS = 60_000;

/** One sample of live connections per minute, for the last hour. */
export const HISTORY_INTERVAL_MS = 60_000;

/** Samples kept: an hour. */
export const HISTORY_SAMPLES = 60;

/** Largest request body accepted (a user is a few hundred bytes). */
const MAX_BODY_BYTES = 64 * 1024;

/** Client addresses whose failures are remembered at most (the oldest are forgotten first). */
const MAX_TRACKED_ADDRESSES = 10_000;

export type { UserUsage } from "../guard/quota.ts";

export type { ReloadReport };

/** The configuration as the files say now, and where the users file is. */
export interface ResolvedForAdmin {
  readonly config: Config;
  readonly usersPath: string;
}

/** What the admin API reads from, and drives, the running proxy. */
export interface AdminBackend {
  /**
   * The configuration from the files as they are now (what a reload applies), with `fileUsers`
   * in place of the users file's when given. Throws {@linkcode ConfigError} when invalid.
   */
  resolve(fileUsers?: FileUsers): Promise<ResolvedForAdmin>;
  /**
   * The configuration in force (after the last reload that applied); what the answers show.
   * Without it, the files' configuration is shown.
   */
  running?(): Config;
  /** Reload the whole configuration, as SIGHUP does. */
  reload(): Promise<ReloadReport>;
  /** The listeners as bound. */
  listeners(): readonly { name: string; host: string; port: number }[];
  /** The metrics exposition (`GET /metrics`), for live connection counts. */
  metricsText(): string | Promise<string>;
  /** Per-user usage; without it, usage fields are null. */
  userUsage?(): readonly UserUsage[] | Promise<readonly UserUsage[]>;
}

/** Options of {@linkcode startAdmin} and {@linkcode adminApp}. */
export interface AdminOptions {
  /** The bearer token. */
  readonly token: string;
  readonly backend: AdminBackend;
  /** The clock, in Unix ms. @default Date.now */
  readonly now?: () => number;
}

/** Options of {@linkcode startAdmin}. */
export interface StartAdminOptions extends AdminOptions {
  /** Where to listen. */
  readonly listen: HostPort;
  /** Share the port with the next process during an upgrade (SO_REUSEPORT). @default false */
  readonly reusePort?: boolean;
}

/** A running admin HTTP server. */
export interface AdminServer {
  /** Where it listens (the port resolved when 0 was asked). */
  readonly address: HostPort;
  /** Stop serving and sampling. */
  stop(): Promise<void>;
}

/**
 * Failed token attempts per client address within a sliding window: past the allowance, the
 * address waits until its oldest failure leaves the window.
 *
 * @example Usage
 * ```ts
 * import { AuthFailures } from "./admin.ts";
 * const f = new AuthFailures(2, 60_000);
 * f.fail("203.0.113.5", 0);
 * f.fail("203.0.113.5", 1_000);
 * f.blockedForMs("203.0.113.5", 2_000); // 58000
 * f.blockedForMs("203.0.113.5", 60_000); // 0
 * ```
 */
export class AuthFailures {
  readonly #allowed: number;
  readonly #windowMs: number;
  readonly #byAddress = new Map<string, number[]>();

  constructor(allowed: number, windowMs: number) {
    this.#allowed = allowed;
    this.#windowMs = windowMs;
  }

  /** Count one failure of `address` at `nowMs`. */
  fail(address: string, nowMs: number): void {
    const times = this.#recent(address, nowMs);
    times.push(nowMs);
    this.#byAddress.delete(address);
    this.#byAddress.set(address, times);
    if (this.#byAddress.size > MAX_TRACKED_ADDRESSES) {
      this.#byAddress.delete(this.#byAddress.keys().next().value!);
    }
  }

  /** How long `address` must still wait at `nowMs`; 0 when it may try. */
  blockedForMs(address: string, nowMs: number): number {
    const times = this.#recent(address, nowMs);
    if (times.length < this.#allowed) return 0;
    return times[times.length - this.#allowed]! + this.#windowMs - nowMs;
  }

  #recent(address: string, nowMs: number): number[] {
    const times = this.#byAddress.get(address);
    if (times === undefined) return [];
    const kept = times.filter((t) => nowMs - t < this.#windowMs);
    if (kept.length === 0) this.#byAddress.delete(address);
    else this.#byAddress.set(address, kept);
    return kept;
  }
}

/** One point of the connection history. */
export interface HistorySample {
  /** Unix ms. */
  readonly time: number;
  readonly connections: number;
}

/**
 * A ring of the last `capacity` samples, oldest first.
 *
 * @example Usage
 * ```ts
 * import { SampleRing } from "./admin.ts";
 * const ring = new SampleRing(2);
 * ring.add({ time: 1, connections: 5 });
 * ring.add({ time: 2, connections: 6 });
 * ring.add({ time: 3, connections: 7 });
 * ring.samples().map((s) => s.connections); // [6, 7]
 * ```
 */
export class SampleRing {
  readonly #slots: (HistorySample | undefined)[];
  #next = 0;

  constructor(capacity: number) {
    this.#slots = new Array(capacity);
  }

  /** Keep `sample`, dropping the oldest when full. */
  add(sample: HistorySample): void {
    this.#slots[this.#next] = sample;
    this.#next = (this.#next + 1) % this.#slots.length;
  }

  /** The samples kept, oldest first. */
  samples(): HistorySample[] {
    const n = this.#slots.length;
    const out: HistorySample[] = [];
    for (let i = 0; i < n; i++) {
      const s = this.#slots[(this.#next + i) % n];
      if (s !== undefined) out.push(s);
    }
    return out;
  }
}

/**
 * The sum of one metric's samples in a Prometheus exposition, over all labels; 0 when absent.
 *
 * @example Usage
 * ```ts
 * import { sumMetric } from "./admin.ts";
 * sumMetric('m{l="a"} 2\nm{l="b"} 3\nmm 9\n', "m"); // 5
 * ```
 */
export function sumMetric(text: string, name: string): number {
  let sum = 0;
  for (const [, value] of _metricSamples(text, name)) sum += value;
  return sum;
}

function* _metricSamples(text: string, name: string): Generator<[labels: string, value: number]> {
  for (const line of text.split("\n")) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    const m = /^(\{[^}]*\})? (\S+)$/.exec(rest);
    if (!m) continue;
    const value = Number(m[2]);
    if (Number.isFinite(value)) yield [m[1] ?? "", value];
  }
}

/** Live connections per listener, from `mtproxy_connections_active{listener="NAME"}`. */
function _activeByListener(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const [labels, value] of _metricSamples(text, "mtproxy_connections_active")) {
    const m = /listener="((?:[^"\\]|\\.)*)"/.exec(labels);
    if (m) out.set(m[1]!, (out.get(m[1]!) ?? 0) + value);
  }
  return out;
}

/** A problem of the configuration as the API reports it: the key and the reason. */
export interface AdminProblem {
  readonly key: string;
  readonly reason: string;
}

/**
 * "key.path (from source): reason" -> { key, reason }, with `prefix` (e.g. "users.bob.") cut
 * from the key.
 */
function _problem(text: string, prefix = ""): AdminProblem {
  const m = /^(.*?)(?: \(from [^)]*\))?: (.*)$/s.exec(text);
  if (!m) return { key: "", reason: text };
  let key = m[1]!;
  if (prefix !== "" && key.startsWith(prefix)) key = key.slice(prefix.length);
  else if (prefix !== "" && key === prefix.slice(0, -1)) key = "";
  return { key: key === "(top level)" ? "" : key, reason: m[2]! };
}

type _Env = { Bindings: { remote: string } };

/** An answer the handlers throw to end a request early. */
class _Answer extends Error {
  constructor(
    readonly status: 400 | 404 | 409 | 413 | 500,
    readonly body: Record<string, unknown>,
  ) {
    super(String(body.error));
  }
}

function _bad(key: string, reason: string): _Answer {
  return new _Answer(400, { error: "Invalid request", problems: [{ key, reason }] });
}

/**
 * The admin API and status page as a Hono app (served by {@linkcode startAdmin}; `fetch` takes
 * `{ remote: "<client address>" }` as its second argument), and the connection history it keeps:
 * call `sample()` once a minute.
 *
 * @example Usage
 * ```ts ignore
 * import { adminApp } from "./admin.ts";
 * const { app } = adminApp({ token, backend });
 * const res = await app.fetch(new Request("http://x/api/health"), { remote: "127.0.0.1" });
 * ```
 */
export function adminApp(options: AdminOptions): {
  app: Hono<_Env>;
  sample(): Promise<void>;
} {
  const now = options.now ?? Date.now;
  const backend = options.backend;
  const tokenDigest = _digest(options.token);
  const failures = new AuthFailures(AUTH_FAILURES_ALLOWED, AUTH_FAILURE_WINDOW_MS);
  const history = new SampleRing(HISTORY_SAMPLES);
  const startedAt = now();
  let lastGood: ResolvedForAdmin | null = null;
  let queue: Promise<unknown> = Promise.resolve();

  /** One change at a time: each reads the file the previous one wrote. */
  const serial = <T>(fn: () => Promise<T>): Promise<T> => {
    const run = queue.then(fn, fn);
    queue = run.catch(() => {});
    return run;
  };

  /**
   * The configuration in force, the users file's path, and why the files do not validate now
   * (null when they do; the last good reading stands in for them then).
   */
  const current = async (): Promise<{ resolved: ResolvedForAdmin; error: string | null }> => {
    let error: string | null = null;
    try {
      lastGood = await backend.resolve();
    } catch (e) {
      error = e instanceof Error ? e.message : String(e);
      if (lastGood === null && !backend.running) throw e;
    }
    const usersPath = lastGood?.usersPath ?? "";
    const config = backend.running?.() ?? lastGood!.config;
    return { resolved: { config, usersPath }, error };
  };

  const usageByName = async (): Promise<Map<string, UserUsage>> => {
    const list = backend.userUsage ? await backend.userUsage() : [];
    return new Map(list.map((u) => [u.name, u]));
  };

  const app = new Hono<_Env>();

  app.use("*", async (c, next) => {
    await next();
    c.header("x-content-type-options", "nosniff");
    c.header("x-frame-options", "DENY");
    c.header("referrer-policy", "no-referrer");
    c.header("cache-control", "no-store");
  });

  app.get("/", (c) => {
    c.header(
      "content-security-policy",
      "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    );
    return c.html(ADMIN_PAGE_HTML);
  });
  app.get("/admin.js", (c) => {
    c.header("content-type", "text/javascript; charset=utf-8");
    return c.body(ADMIN_PAGE_JS);
  });

  // Every API request needs the token; a client that keeps guessing waits.
  app.use("/api/*", async (c, next) => {
    const remote = c.env.remote;
    const waitMs = failures.blockedForMs(remote, now());
    if (waitMs > 0) {
      c.header("retry-after", String(Math.ceil(waitMs / 1000)));
      return c.json({ error: "Too many failed attempts from this address: try again later" }, 429);
    }
    const header = c.req.header("authorization");
    const given = header === undefined ? null : /^Bearer[ \t]+(\S+)\s*$/i.exec(header)?.[1] ?? "";
    if (given === null || !timingSafeEqual(_digest(given), tokenDigest)) {
      failures.fail(remote, now());
      log.warn("Admin API: refused {method} {path} from {remote}: {why}", {
        method: c.req.method,
        path: c.req.path.slice(0, 100),
        remote,
        why: given === null ? "no Authorization header" : "wrong token",
      });
      c.header("www-authenticate", 'Bearer realm="mtproxy admin"');
      return c.json(
        { error: "Missing or wrong token: send the header Authorization: Bearer <token>" },
        401,
      );
    }
    await next();
  });

  app.get("/api/health", async (c) => {
    const { resolved, error } = await current();
    const metrics = await backend.metricsText();
    return c.json({
      status: "ok",
      version: VERSION,
      role: resolved.config.role,
      uptime_seconds: Math.round((now() - startedAt) / 1000),
      listeners: backend.listeners().length,
      users: resolved.config.users.length,
      connections: sumMetric(metrics, "mtproxy_connections_active"),
      config_error: error,
    });
  });

  app.get("/api/listeners", async (c) => {
    const { resolved } = await current();
    const active = _activeByListener(await backend.metricsText());
    const configs = new Map(resolved.config.listeners.map((l) => [l.name, l]));
    return c.json({
      listeners: backend.listeners().map((b) => {
        const l = configs.get(b.name);
        return {
          name: b.name,
          host: b.host,
          port: b.port,
          address: formatHostPort(b.host, b.port),
          protocols: l?.allowedProtocols ?? [],
          tls_domains: l?.tlsDomains ?? [],
          users: l?.users ?? null,
          has_tag: l ? l.tag !== null : false,
          proxy_protocol: l?.proxyProtocol ?? false,
          connections: active.get(b.name) ?? 0,
        };
      }),
    });
  });

  app.get("/api/history", async (c) => {
    const live = sumMetric(await backend.metricsText(), "mtproxy_connections_active");
    return c.json({
      interval_seconds: HISTORY_INTERVAL_MS / 1000,
      samples: [...history.samples(), { time: now(), connections: live }].map((s) => ({
        time: new Date(s.time).toISOString(),
        connections: s.connections,
      })),
    });
  });

  app.get("/api/users", async (c) => {
    const { resolved } = await current();
    const fileNames = await _fileUserNames(resolved.usersPath);
    const usage = await usageByName();
    return c.json({
      users_file: resolved.usersPath,
      users: resolved.config.users.map((u) =>
        _userView(u, fileNames.has(u.name), usage.get(u.name), resolved.config, now())
      ),
    });
  });

  app.get("/api/users/:name", async (c) => {
    const { resolved } = await current();
    const u = _findUser(resolved.config, c.req.param("name"));
    const fileNames = await _fileUserNames(resolved.usersPath);
    const usage = await usageByName();
    return c.json({
      user: _userView(u, fileNames.has(u.name), usage.get(u.name), resolved.config, now()),
    });
  });

  app.get("/api/users/:name/links", async (c) => {
    const { resolved } = await current();
    const config = resolved.config;
    const u = _findUser(config, c.req.param("name"));
    return c.json(await _userLinks(config, u));
  });

  /** Validate the users file's next version with the whole configuration, write it, reload. */
  const commit = async (
    resolved: ResolvedForAdmin,
    next: Record<string, unknown>,
    name: string,
  ): Promise<{ config: Config; reload: ReloadReport }> => {
    const source = usersFileSource(resolved.usersPath);
    let checked: ResolvedForAdmin;
    try {
      checked = await backend.resolve({ users: next, source });
    } catch (e) {
      if (e instanceof ConfigError) {
        throw new _Answer(400, {
          error: "The users file would not validate with this change",
          problems: e.problems.map((p) => _problem(p, `users.${name}.`)),
        });
      }
      throw e;
    }
    await writeUsersFile(resolved.usersPath, next);
    const reload = await backend.reload();
    if (!reload.ok) {
      log.error("Admin API: users file written, but the reload failed: {error}", {
        error: reload.error ?? "unknown",
      });
      throw new _Answer(500, { error: "Saved in the users file, but not applied", reload });
    }
    lastGood = checked;
    // The answer shows the user as now in force (as checked, should a reload have kept it out).
    const live = backend.running?.();
    const inForce = live?.users.some((u) => u.name === name) ? live : undefined;
    return { config: inForce ?? checked.config, reload };
  };

  app.post("/api/users", (c) =>
    _answer(c, () =>
      serial(async () => {
        const body = await _jsonBody(c);
        const { name, secret, ...rest } = body;
        if (typeof name !== "string" || !isValidName(name)) {
          throw _bad(
            "name",
            'required: 1-64 letters, digits, ".", "_" or "-", starting with a letter or digit',
          );
        }
        // The secret first in the file, as people write it; a random one when none is given.
        const entry = { secret: secret ?? toHex(generateSecret()), ...rest };
        _checkEntry(entry);
        const resolved = await _resolveOrConflict(backend);
        if (resolved.config.users.some((u) => u.name === name)) {
          throw new _Answer(409, {
            error: `User ${JSON.stringify(name)} exists already: change it with PATCH`,
          });
        }
        const file = await _readFileUsers(resolved.usersPath);
        const { config, reload } = await commit(resolved, { ...file, [name]: entry }, name);
        const u = config.users.find((x) => x.name === name)!;
        const usage = await usageByName();
        log.info("Admin API: user {name} added", { name });
        return {
          status: 201 as const,
          body: { user: _userView(u, true, usage.get(name), config, now()), reload },
        };
      })));

  app.patch("/api/users/:name", (c) =>
    _answer(c, () =>
      serial(async () => {
        const name = c.req.param("name");
        const body = await _jsonBody(c);
        if ("name" in body) throw _bad("name", "cannot be changed: add a new user instead");
        const resolved = await _resolveOrConflict(backend);
        const file = await _fileEntry(resolved, name);
        const entry = { ...(file[name] as Record<string, unknown>) };
        for (const [k, v] of Object.entries(body)) {
          if (v === null) delete entry[k];
          else entry[k] = v;
        }
        _checkEntry(entry);
        const { config, reload } = await commit(resolved, { ...file, [name]: entry }, name);
        const u = config.users.find((x) => x.name === name)!;
        const usage = await usageByName();
        log.info("Admin API: user {name} changed ({keys})", {
          name,
          keys: Object.keys(body).join(", "),
        });
        return {
          status: 200 as const,
          body: { user: _userView(u, true, usage.get(name), config, now()), reload },
        };
      })));

  app.delete("/api/users/:name", (c) =>
    _answer(c, () =>
      serial(async () => {
        const name = c.req.param("name");
        const resolved = await _resolveOrConflict(backend);
        const file = await _fileEntry(resolved, name);
        const next = { ...file };
        delete next[name];
        const { reload } = await commit(resolved, next, name);
        log.info("Admin API: user {name} deleted", { name });
        return { status: 200 as const, body: { deleted: name, reload } };
      })));

  app.post("/api/reload", async (c) => {
    const report = await serial(() => backend.reload());
    if (report.ok) {
      try {
        lastGood = await backend.resolve();
      } catch {
        // Changed again since: the next request tells.
      }
    }
    return c.json(report, report.ok ? 200 : 422);
  });

  app.get("/api/openapi.json", (c) => c.json(adminOpenApi(VERSION)));

  app.all("/api/*", (c) => c.json({ error: "No such endpoint: see GET /api/openapi.json" }, 404));
  app.notFound((c) => c.json({ error: "Not found" }, 404));

  app.onError((e, c) => {
    if (e instanceof _Answer) return c.json(e.body, e.status);
    log.error("Admin API: {method} {path} failed: {error}", {
      method: c.req.method,
      path: c.req.path.slice(0, 100),
      error: e instanceof Error ? e.message : String(e),
    });
    return c.json({ error: "Internal error (see the proxy's log)" }, 500);
  });

  const sample = async () => {
    try {
      const live = sumMetric(await backend.metricsText(), "mtproxy_connections_active");
      history.add({ time: now(), connections: live });
    } catch (e) {
      log.debug("Admin API: no connection sample: {error}", { error: String(e) });
    }
  };

  return { app, sample };
}

/**
 * Serve the admin API and status page on `options.listen`, sampling live connections once a
 * minute. Throws when the address cannot be bound.
 *
 * @example Usage
 * ```ts ignore
 * import { startAdmin } from "./admin.ts";
 * const admin = await startAdmin({ listen: { host: "127.0.0.1", port: 9200 }, token, backend });
 * await admin.stop();
 * ```
 */
export async function startAdmin(options: StartAdminOptions): Promise<AdminServer> {
  const { app, sample } = adminApp(options);
  const server = Deno.serve({
    hostname: options.listen.host,
    port: options.listen.port,
    reusePort: options.reusePort ?? false,
    onListen: () => {},
    onError: (e) => {
      log.error("Admin request failed: {error}", { error: String(e) });
      return new Response("internal error\n", { status: 500 });
    },
  }, (req, info) => {
    const remote = info.remoteAddr.transport === "tcp" ? info.remoteAddr.hostname : "unknown";
    return app.fetch(req, { remote });
  });
  await sample();
  const timer = setInterval(() => void sample(), HISTORY_INTERVAL_MS);
  Deno.unrefTimer(timer);
  const addr = server.addr as Deno.NetAddr;
  log.info("Admin API and status page at http://{address}/", {
    address: formatHostPort(addr.hostname, addr.port),
  });
  let stopped: Promise<void> | null = null;
  return {
    address: { host: addr.hostname, port: addr.port },
    stop: () => {
      clearInterval(timer);
      stopped ??= server.shutdown();
      return stopped;
    },
  };
}

/** Run `fn` and answer with what it returns, or the {@linkcode _Answer} it throws. */
async function _answer(
  c: Context<_Env>,
  fn: () => Promise<{ status: 200 | 201; body: Record<string, unknown> }>,
): Promise<Response> {
  try {
    const { status, body } = await fn();
    return c.json(body, status);
  } catch (e) {
    if (e instanceof _Answer) return c.json(e.body, e.status);
    throw e;
  }
}

async function _jsonBody(c: Context<_Env>): Promise<Record<string, unknown>> {
  const text = await _readCapped(c.req.raw, MAX_BODY_BYTES);
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    // Not the parser's message: it quotes the text, which may hold a secret.
    throw _bad("", "the body must be a JSON object");
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw _bad("", "the body must be a JSON object");
  }
  return body as Record<string, unknown>;
}

/** The request body as text, refused (413) past `max` bytes without reading further. */
async function _readCapped(req: Request, max: number): Promise<string> {
  const tooLarge = () => new _Answer(413, { error: `Request body over ${max} bytes` });
  if (Number(req.headers.get("content-length") ?? 0) > max) throw tooLarge();
  if (req.body === null) return "";
  const reader = req.body.getReader();
  const parts: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > max) {
      await reader.cancel();
      throw tooLarge();
    }
    parts.push(value);
  }
  const all = new Uint8Array(size);
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.byteLength;
  }
  return new TextDecoder().decode(all);
}

/** 400 with every problem of a user's keys. */
function _checkEntry(entry: Record<string, unknown>): void {
  const problems = checkUser(entry);
  if (problems.length > 0) {
    throw new _Answer(400, { error: "Invalid user", problems: problems.map((p) => _problem(p)) });
  }
}

async function _resolveOrConflict(backend: AdminBackend): Promise<ResolvedForAdmin> {
  try {
    return await backend.resolve();
  } catch (e) {
    if (e instanceof ConfigError) {
      throw new _Answer(409, {
        error: "The configuration does not validate now: fix it first",
        problems: e.problems.map((p) => _problem(p)),
      });
    }
    throw e;
  }
}

async function _readFileUsers(path: string): Promise<Record<string, unknown>> {
  const file = await readUsersFile(path);
  return { ...(file?.users ?? {}) };
}

async function _fileUserNames(path: string): Promise<Set<string>> {
  try {
    return new Set(Object.keys(await _readFileUsers(path)));
  } catch {
    return new Set();
  }
}

/** The users file's users, which must hold `name` (404 if nobody has it, 409 if the config). */
async function _fileEntry(
  resolved: ResolvedForAdmin,
  name: string,
): Promise<Record<string, unknown>> {
  const file = await _readFileUsers(resolved.usersPath);
  const entry = file[name];
  if (typeof entry === "object" && entry !== null) return file;
  if (resolved.config.users.some((u) => u.name === name)) {
    throw new _Answer(409, {
      error: `User ${
        JSON.stringify(name)
      } is defined in the config file: change it there (the API changes users of the users file)`,
    });
  }
  throw new _Answer(404, { error: `No user ${JSON.stringify(name)}` });
}

function _findUser(config: Config, name: string): UserConfig {
  const u = config.users.find((x) => x.name === name);
  if (u === undefined) throw new _Answer(404, { error: `No user ${JSON.stringify(name)}` });
  return u;
}

/** A user as the API shows it: everything but the secret and the tag's value. */
function _userView(
  u: UserConfig,
  inUsersFile: boolean,
  usage: UserUsage | undefined,
  config: Config,
  nowMs: number,
): Record<string, unknown> {
  return {
    name: u.name,
    source: inUsersFile ? "users_file" : "config",
    enabled: u.enabled,
    expires: u.expiresAt === null ? null : new Date(u.expiresAt).toISOString(),
    expired: u.expiresAt !== null && nowMs >= u.expiresAt,
    max_connections: u.maxConnections,
    max_unique_ips: u.maxUniqueIps,
    unique_ip_window: u.uniqueIpWindowMs / 1000,
    data_quota: u.dataQuotaBytes,
    quota_reset: u.quotaReset,
    rate_limit: u.rateLimitBytesPerSec,
    has_tag: u.tag !== null,
    listeners: config.listeners.filter((l) => l.users === null || l.users.includes(u.name))
      .map((l) => l.name),
    connections: usage?.connections ?? null,
    // Addresses are remembered only for a user with max_unique_ips: none counted otherwise.
    unique_ips: u.maxUniqueIps > 0 ? usage?.uniqueIps ?? null : null,
    bytes_used: usage?.bytesUsed ?? null,
    quota_left: usage?.quotaLeft ?? null,
    period_start: usage?.periodStart == null ? null : new Date(usage.periodStart).toISOString(),
  };
}

/** A user's links on every listener that accepts them, with a QR code (SVG) per protocol. */
async function _userLinks(config: Config, u: UserConfig): Promise<Record<string, unknown>> {
  const { svgQr } = await import("../cli/qr.ts");
  const links: Record<string, unknown>[] = [];
  const warnings: string[] = [];
  if (config.publicHost === null) {
    warnings.push(
      "public_host is not set: the links use each listener's bind address; set public_host",
    );
  }
  for (const l of config.listeners) {
    if (l.users !== null && !l.users.includes(u.name)) continue;
    const host = config.publicHost ?? l.host;
    const sets = proxyLinks({ host, port: l.port }, u.secret, {
      protocols: l.allowedProtocols,
      ...(l.tlsDomains[0] !== undefined && { tlsDomain: l.tlsDomains[0] }),
    });
    for (const s of sets) {
      links.push({
        listener: l.name,
        protocol: s.kind,
        encoding: s.encoding,
        secret: s.secret,
        tg: s.tg,
        https: s.https,
        // One code per protocol: the base64url form is the same proxy as the hex one.
        qr_svg: s.encoding === "hex" ? await svgQr(s.https) : null,
      });
    }
  }
  return { name: u.name, secret: toHex(u.secret), enabled: u.enabled, links, warnings };
}

function _digest(text: string): Uint8Array {
  return createHash("sha256").update(text, "utf8").digest();
}
