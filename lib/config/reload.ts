/**
 * What a reload (SIGHUP, or the admin API) changes: the running configuration and the one just
 * read become a plan. Pure: no sockets, no clock, no logging.
 *
 * Every key either changes live or keeps its running value until a restart. The plan's `config`
 * is the new configuration with each key of the second kind put back to its running value, so
 * the server can take it whole; `notLive` names those keys (with their YAML paths, never a
 * value) for the one log line that says so.
 *
 * Listeners are matched by `name` (the key every log line, metric and `listeners[].users` entry
 * uses; an unnamed listener is named by its position, `listener1`...). Same name: updated in
 * place (secret, tls_domain, allowed_protocols, tag, proxy_protocol, users), or, when its host
 * or port changed, moved: a new socket opens and the old one stops accepting. A name that is
 * gone stops accepting (its live clients drain); a new name opens. A port of 0 in the new file
 * means "any", so a listener that was given a port at start keeps it.
 *
 * @module
 */
import type { Config, ListenerConfig, UserConfig } from "./types.ts";

/** What a reload did (SIGHUP, or the admin API's `POST /api/reload`). */
export interface ReloadReport {
  /** False when the file could not be read or validated (or a listener bound): nothing changed. */
  readonly ok: boolean;
  /** Why it failed (never a secret). */
  readonly error?: string;
  /** YAML paths of what changed live, e.g. `timeouts.idle`, `users.bob (removed)`. */
  readonly changed: readonly string[];
  /** YAML paths that changed in the file but need a restart: their running values stay. */
  readonly notLive: readonly string[];
  /** Clients (and a back's front links) the new configuration refused and that were closed. */
  readonly closed: number;
}

/** What a reload does: see {@linkcode planReload}. */
export interface ReloadPlan {
  /** The configuration to run from now on: the new one, not-live keys at their running value. */
  readonly config: Config;
  /** YAML paths of what changes now, e.g. `timeouts.idle`, `users.bob (removed)`. */
  readonly changed: readonly string[];
  /** YAML paths of what changed in the file but needs a restart (the running value stays). */
  readonly notLive: readonly string[];
  /** Listeners to open (new names). */
  readonly added: readonly ListenerConfig[];
  /** Listeners to close: they stop accepting, their clients stay until they end. */
  readonly removed: readonly ListenerConfig[];
  /** Listeners whose host or port changed (the new values): a new socket, the old one closes. */
  readonly moved: readonly ListenerConfig[];
  /** Listeners whose other keys changed (the new values): the same socket, new rules. */
  readonly updated: readonly ListenerConfig[];
}

/**
 * Why each top-level key can or cannot change live. `true`: applied live. A string: the reason
 * it needs a restart (kept for the reader; the log line names the key only). An object: per
 * sub-key, the same. Keys not listed here (new ones) need a restart until someone decides.
 */
const LIVE: {
  readonly [K in keyof Config]?: true | string | Readonly<Record<string, true | string>>;
} = {
  // Everything else is built for the role at start (listeners or link listeners, links).
  role: "the whole process is built for its role at start",
  // The threads are started at start and share memory sized for them.
  workers: "worker threads are started at start",
  // Listeners: matched by name and applied one by one (see the module doc).
  listeners: true,
  // Folded into every listener's allowed_protocols at load: applied with them.
  allowedProtocols: true,
  // Only links use it (printed at start, or by `mtproxy link` / the admin API, which read anew).
  publicHost: true,
  // Each thread's logger is configured again.
  logLevel: true,
  // The DC table, the mode and the middle-proxy pools are built at start (and in workers the
  // supervisor fetches Telegram's config for them).
  telegram: "the DC table and the middle-proxy pools are built at start",
  timeouts: {
    // Read by the one timer that sweeps the sessions, and at shutdown.
    handshakeMs: true,
    idleMs: true,
    shutdownGraceMs: true,
    drainMs: true,
    // The middle-proxy pools and a front's links took it at start; one value for all dials.
    dcConnectMs: "the middle-proxy pools and links took it at start",
  },
  tls: {
    // Read at each client handshake (a back's link hellos keep the value of the start).
    maxClockSkewMs: true,
    // Read at each fake-TLS answer.
    fakeCertSize: true,
    // The measuring timer (the supervisor's, with workers) was set at start.
    profileRefreshMs: "the measuring of the sites runs on a timer set at start",
  },
  // Every session is counted against it at accept.
  maxConnections: true,
  pool: "the middle-proxy pools are built at start",
  externalIp: "the middle-proxy key derivation took it at start",
  ipLookupUrls: "the external IP is looked up once, at start",
  replay: {
    // The cache is allocated at start (shared memory, with workers).
    maxEntries: "the replay cache is allocated at start",
    maxAgeMs: "the replay cache is allocated at start",
    // Read as each relay starts.
    serverErrorFilter: true,
  },
  fronting: {
    // The sites are measured through it, on a timer set at start.
    mode: "the sites' TLS profiles are measured through it from start",
    // Read at each fronted connection.
    connectTimeoutMs: true,
    allow: true,
  },
  // Read at each fake-TLS handshake; clients whose secret it changes are closed.
  perSniSecrets: true,
  perSniSalt: true,
  // Applied to every live client, as before.
  policy: true,
  metrics: "the metrics endpoint is bound at start",
  backs: "a front's links are dialled at start",
  linkListeners: "a back's link listeners are bound at start",
  // A back: fronts removed or given a new secret lose their links, the others stay.
  fronts: true,
  defaultTag: "a back's link server took it at start",
  link: "links are set up with these at start",
  sharedState: "the fleet's Redis connection is made at start",
  // Users added, changed, disabled or removed; their clients are judged one by one.
  users: true,
  // Every reload (and every admin API request) resolves the users file's path anew from the
  // file: a new path's users are the ones read and applied, and the API writes there from now.
  usersFile: true,
  // The admin API's socket and token are set up at start.
  admin: "the admin API is bound at start",
};

/** YAML names where the camelCase-to-snake_case rule (and dropping "Ms") gets them wrong. */
const YAML_NAMES: Readonly<Record<string, string>> = {
  windowBytes: "window",
  dataQuotaBytes: "data_quota",
  rateLimitBytesPerSec: "rate_limit",
  expiresAt: "expires",
  tlsDomains: "tls_domain",
  redisUrl: "redis_url",
};

/**
 * The YAML key of a config field.
 *
 * @example Usage
 * ```ts
 * import { yamlKey } from "./reload.ts";
 * yamlKey("shutdownGraceMs"); // "shutdown_grace"
 * ```
 */
export function yamlKey(field: string): string {
  const named = YAML_NAMES[field];
  if (named !== undefined) return named;
  return field.replace(/Ms$/, "").replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

/**
 * Compare the running configuration with the one just read: what to apply now, what needs a
 * restart, and the configuration to run from now on.
 *
 * @example Usage
 * ```ts ignore
 * import { planReload } from "./reload.ts";
 * const plan = planReload(running, next);
 * plan.notLive; // ["workers"] when only workers changed
 * ```
 */
export function planReload(running: Config, next: Config): ReloadPlan {
  const changed: string[] = [];
  const notLive: string[] = [];
  const out: Record<string, unknown> = { ...next };
  const keys = new Set([...Object.keys(running), ...Object.keys(next)]);
  for (const key of keys) {
    if (key === "listeners" || key === "users") continue;
    const before = (running as unknown as Record<string, unknown>)[key];
    const after = (next as unknown as Record<string, unknown>)[key];
    if (sameValue(before, after)) continue;
    const rule = LIVE[key as keyof Config];
    const path = yamlKey(key);
    if (rule === true) {
      changed.push(path);
    } else if (
      rule !== undefined && typeof rule === "object" && _isRecord(before) && _isRecord(after)
    ) {
      // Field by field: live ones take the new value, the others keep the running one.
      const merged: Record<string, unknown> = { ...after };
      for (const field of new Set([...Object.keys(before), ...Object.keys(after)])) {
        if (sameValue(before[field], after[field])) continue;
        if (rule[field] === true) changed.push(`${path}.${yamlKey(field)}`);
        else {
          notLive.push(`${path}.${yamlKey(field)}`);
          merged[field] = before[field];
        }
      }
      out[key] = merged;
    } else {
      notLive.push(path);
      out[key] = before;
    }
  }

  const users = _diffUsers(running.users, next.users, changed);
  const listeners = _diffListeners(running.listeners, next.listeners, changed);
  out.users = users;
  out.listeners = listeners.list;
  const config = out as unknown as Config;

  // A tag now where no middle-proxy pools were started: those clients go direct (no ad) until
  // a restart starts the pools.
  if (!_needsMiddle(running) && _needsMiddle(config)) {
    for (const l of config.listeners) {
      if (_tagUsesMiddle(config, l.tag)) notLive.push(`listeners.${l.name}.tag`);
    }
    for (const u of config.users) {
      if (_tagUsesMiddle(config, u.tag)) notLive.push(`users.${u.name}.tag`);
    }
  }
  return { config, changed, notLive, ...listeners.plan };
}

/**
 * Whether two config values are equal: primitives, byte arrays, arrays, maps and records.
 *
 * @example Usage
 * ```ts
 * import { sameValue } from "./reload.ts";
 * sameValue({ a: Uint8Array.of(1) }, { a: Uint8Array.of(1) }); // true
 * ```
 */
export function sameValue(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (a instanceof Uint8Array || b instanceof Uint8Array) {
    if (!(a instanceof Uint8Array && b instanceof Uint8Array) || a.length !== b.length) {
      return false;
    }
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!(Array.isArray(a) && Array.isArray(b)) || a.length !== b.length) return false;
    return a.every((v, i) => sameValue(v, b[i]));
  }
  if (a instanceof Map || b instanceof Map) {
    if (!(a instanceof Map && b instanceof Map) || a.size !== b.size) return false;
    for (const [k, v] of a) if (!b.has(k) || !sameValue(v, b.get(k))) return false;
    return true;
  }
  if (_isRecord(a) && _isRecord(b)) {
    const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
    for (const k of keys) if (!sameValue(a[k], b[k])) return false;
    return true;
  }
  return false;
}

function _isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array) &&
    !(v instanceof Map);
}

function _diffUsers(
  before: readonly UserConfig[],
  after: readonly UserConfig[],
  changed: string[],
): readonly UserConfig[] {
  const old = new Map(before.map((u) => [u.name, u]));
  const seen = new Set<string>();
  for (const u of after) {
    seen.add(u.name);
    const was = old.get(u.name);
    if (!was) {
      changed.push(`users.${u.name} (added)`);
      continue;
    }
    for (const field of Object.keys(u) as (keyof UserConfig)[]) {
      if (field !== "name" && !sameValue(was[field], u[field])) {
        changed.push(`users.${u.name}.${yamlKey(field)}`);
      }
    }
  }
  for (const u of before) if (!seen.has(u.name)) changed.push(`users.${u.name} (removed)`);
  return after;
}

function _diffListeners(
  before: readonly ListenerConfig[],
  after: readonly ListenerConfig[],
  changed: string[],
): { list: readonly ListenerConfig[]; plan: Omit<ReloadPlan, "config" | "changed" | "notLive"> } {
  const old = new Map(before.map((l) => [l.name, l]));
  const added: ListenerConfig[] = [];
  const moved: ListenerConfig[] = [];
  const updated: ListenerConfig[] = [];
  const list: ListenerConfig[] = [];
  const seen = new Set<string>();
  for (const l of after) {
    seen.add(l.name);
    const was = old.get(l.name);
    if (!was) {
      added.push(l);
      list.push(l);
      changed.push(`listeners.${l.name} (added)`);
      continue;
    }
    // Port 0: any port, so the one it was given stays.
    const next = l.port === 0 && l.host === was.host ? { ...l, port: was.port } : l;
    list.push(next);
    let other = false;
    for (const field of Object.keys(next) as (keyof ListenerConfig)[]) {
      if (field === "name" || sameValue(was[field], next[field])) continue;
      changed.push(`listeners.${l.name}.${yamlKey(field)}`);
      if (field !== "host" && field !== "port") other = true;
    }
    if (next.host !== was.host || next.port !== was.port) moved.push(next);
    else if (other) updated.push(next);
  }
  const removed = before.filter((l) => !seen.has(l.name));
  for (const l of removed) changed.push(`listeners.${l.name} (removed)`);
  return { list, plan: { added, removed, moved, updated } };
}

function _tagUsesMiddle(config: Config, tag: Uint8Array | null): boolean {
  const mode = config.telegram.mode;
  return mode === "middle" || (mode === "auto" && tag !== null);
}

/** As server.ts's needsMiddleProxies: whether the pools would be started for `config`. */
function _needsMiddle(config: Config): boolean {
  if (config.role === "front") return false;
  if (config.role === "back") return config.telegram.mode !== "direct";
  return config.listeners.some((l) => _tagUsesMiddle(config, l.tag)) ||
    config.users.some((u) => u.tag !== null && _tagUsesMiddle(config, u.tag));
}
