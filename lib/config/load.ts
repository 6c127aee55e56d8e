/**
 * Loading and validating the configuration: YAML text (or any parsed value) plus overrides from
 * the environment and the command line become a {@linkcode ConfigDraft}, in which a listener's
 * secret may still be missing; {@linkcode resolveSecrets} fills those from the state file and
 * returns the deeply frozen {@linkcode Config}.
 *
 * Layering is: defaults (defaults.ts) <- YAML file <- overrides (environment, then flags; the
 * caller merges those two). Overrides are written into the YAML-shaped value before
 * validation, so one schema checks everything and a bad override is reported like a bad key,
 * naming where it came from.
 *
 * @module
 */
import { isScalar, LineCounter, parseDocument, visit } from "yaml";
import type {
  BackConfig,
  ClientProtocol,
  Config,
  FrontCredential,
  HostPort,
  LinkListenerConfig,
  ListenerConfig,
  LogLevel,
  Role,
  ServerErrorFilter,
  TelegramConfig,
  UserConfig,
} from "./types.ts";
import {
  BUILTIN_DC_IDS,
  DEFAULT_ALLOWED_PROTOCOLS,
  DEFAULT_BACK_LINKS,
  DEFAULT_DC,
  DEFAULT_DC_CONNECT_TIMEOUT_MS,
  DEFAULT_DRAIN_MS,
  DEFAULT_FAKE_CERT_SIZE,
  DEFAULT_FAST_MODE,
  DEFAULT_FRONTING_CONNECT_TIMEOUT_MS,
  DEFAULT_FRONTING_MODE,
  DEFAULT_HANDSHAKE_TIMEOUT_MS,
  DEFAULT_HOST,
  DEFAULT_IDLE_TIMEOUT_MS,
  DEFAULT_IP_LOOKUP_URLS,
  DEFAULT_LINK_KEEPALIVE_MS,
  DEFAULT_LINK_LISTENER_NAME_PREFIX,
  DEFAULT_LINK_LISTENER_PORT,
  DEFAULT_LINK_TIMEOUT_MS,
  DEFAULT_LINK_WAIT_MS,
  DEFAULT_LINK_WINDOW_BYTES,
  DEFAULT_LISTENER_NAME,
  DEFAULT_LOG_LEVEL,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_PER_SNI_SALT,
  DEFAULT_POLICY,
  DEFAULT_POOL_CLIENTS_PER_CONNECTION,
  DEFAULT_POOL_MAX_CLIENT_UNACKED_BYTES,
  DEFAULT_POOL_MAX_UNACKED_BYTES,
  DEFAULT_POOL_MAX_UNACKED_PACKETS,
  DEFAULT_POOL_MIN_CONNECTIONS,
  DEFAULT_PORT,
  DEFAULT_PREFER_IPV6,
  DEFAULT_PROFILE_REFRESH_MS,
  DEFAULT_PROXY_CONFIG_URL,
  DEFAULT_PROXY_CONFIG_V6_URL,
  DEFAULT_PROXY_SECRET_URL,
  DEFAULT_REFRESH_INTERVAL_MS,
  DEFAULT_REPLAY_MAX_AGE_MS,
  DEFAULT_REPLAY_MAX_ENTRIES,
  DEFAULT_ROLE,
  DEFAULT_SERVER_ERROR_FILTER,
  DEFAULT_SHARED_STATE_LEASE_MS,
  DEFAULT_SHARED_STATE_PREFIX,
  DEFAULT_SHARED_STATE_TIMEOUT_MS,
  DEFAULT_SHUTDOWN_GRACE_MS,
  DEFAULT_TELEGRAM_MODE,
  DEFAULT_TLS_DOMAIN,
  DEFAULT_TLS_MAX_CLOCK_SKEW_MS,
  DEFAULT_WORKERS,
  MAX_BACK_LINKS,
  MAX_WORKERS,
  MIN_ADMIN_TOKEN_LENGTH,
} from "./defaults.ts";
import {
  isValidTlsDomain,
  MAX_TLS_DOMAIN_BYTES,
  type ParsedSecret,
  parseSecret,
  SecretError,
} from "../secret.ts";
import { parseCidr } from "../guard/policy.ts";

/** A configuration that failed validation; `problems` lists every problem, one per entry. */
export class ConfigError extends Error {
  /** Each problem as "key.path: reason". */
  readonly problems: readonly string[];

  /** Create the error from its problems. */
  constructor(problems: readonly string[]) {
    super(`Invalid configuration: ${problems.join("; ")}`);
    this.name = "ConfigError";
    this.problems = Object.freeze([...problems]);
  }
}

/** A listener before its secret is resolved. */
export interface ListenerDraft extends Omit<ListenerConfig, "secret"> {
  /** The 16-byte secret, or null when neither the file nor an override gives one. */
  readonly secret: Uint8Array | null;
}

/** A validated configuration whose listener secrets may still be missing (a back has none). */
export interface ConfigDraft extends Omit<Config, "listeners"> {
  readonly listeners: readonly ListenerDraft[];
  /** `state_file` as written (a relative path is not resolved yet); null when unset. */
  readonly stateFile: string | null;
  /** Things that are valid but probably not meant, as "key.path: reason". */
  readonly warnings: readonly string[];
}

/** One override value and where it came from (shown in problems, e.g. "MTP_PORT"). */
export interface ConfigOverride<T> {
  readonly value: T;
  readonly source: string;
}

/**
 * Values from the environment or the command line, laid over the file. `host`, `port`,
 * `secret` and `tlsDomains` apply to the first listener (created when the file has none,
 * except on a back, which has no client listeners); `allowedProtocols` replaces the global
 * list and every per-listener list; `role` replaces the file's `role`.
 */
export interface ConfigOverrides {
  readonly role?: ConfigOverride<string>;
  readonly workers?: ConfigOverride<string>;
  readonly host?: ConfigOverride<string>;
  readonly port?: ConfigOverride<string | number>;
  readonly secret?: ConfigOverride<string>;
  readonly tlsDomains?: ConfigOverride<readonly string[]>;
  readonly allowedProtocols?: ConfigOverride<readonly string[]>;
  readonly publicHost?: ConfigOverride<string>;
  /** `metrics.listen`. */
  readonly metricsListen?: ConfigOverride<string>;
  readonly logLevel?: ConfigOverride<string>;
  readonly tag?: ConfigOverride<string>;
}

/** The users of a users file (`users_file`), as read from it, and where they came from. */
export interface FileUsers {
  /** User name -> the user's keys, as under `users:` (not validated yet). */
  readonly users: Readonly<Record<string, unknown>>;
  /** Shown in problems, e.g. "users file /var/lib/mtproxy/mtproxy-users.yaml". */
  readonly source: string;
}

/** Options for {@linkcode buildConfigDraft} and the functions built on it. */
export interface BuildConfigOptions {
  /** Environment and command-line values, laid over the file. @default {} */
  overrides?: ConfigOverrides;
  /**
   * Users from the users file, added to the file's `users` (a name in both is a problem) and
   * validated with them. @default null
   */
  fileUsers?: FileUsers | null;
}

/** Options for {@linkcode buildConfig} and {@linkcode parseConfig}. */
export interface ResolveConfigOptions extends BuildConfigOptions {
  /** Secret for listeners that have none (from the state file). @default null */
  stateSecret?: Uint8Array | null;
}

// ---------------------------------------------------------------------------------------------
// Public API

/**
 * Parse YAML text into a plain value. Syntax errors become a {@linkcode ConfigError} whose
 * problems read "source:line:column: reason". Empty text (or only comments) gives null.
 *
 * @example Usage
 * ```ts
 * import { parseYaml } from "./load.ts";
 * parseYaml("log_level: debug\n", "config.yaml"); // { log_level: "debug" }
 * ```
 */
export function parseYaml(yamlText: string, source: string): unknown {
  const lines = new LineCounter();
  const doc = parseDocument(yamlText, { lineCounter: lines, prettyErrors: false });
  if (doc.errors.length > 0) {
    throw new ConfigError(doc.errors.map((e) => {
      const pos = lines.linePos(e.pos[0]);
      return `${source}:${pos.line}:${pos.col}: YAML syntax error: ${e.message.split("\n")[0]}`;
    }));
  }
  // An all-digit secret such as 0123…9 would otherwise become a number and lose digits. Every
  // `secret` key at any depth: listeners[], backs[] and fronts[].
  visit(doc, {
    Pair(_, pair) {
      if (
        isScalar(pair.key) && pair.key.value === "secret" && isScalar(pair.value) &&
        typeof pair.value.value === "number" && pair.value.source !== undefined
      ) {
        pair.value.value = pair.value.source;
      }
    },
  });
  try {
    return doc.toJS({ maxAliasCount: 100 });
  } catch (e) {
    throw new ConfigError([`${source}: YAML error: ${e instanceof Error ? e.message : e}`]);
  }
}

/**
 * Validate a parsed configuration value (the YAML file's content; null or undefined means an
 * empty file) with `options.overrides` laid over it. Throws {@linkcode ConfigError} listing
 * every problem.
 *
 * @example Usage
 * ```ts
 * import { buildConfigDraft } from "./load.ts";
 * const draft = buildConfigDraft({ listeners: [{ port: 443 }] });
 * draft.listeners[0]?.secret; // null: resolveSecrets fills it
 * ```
 */
export function buildConfigDraft(raw: unknown, options: BuildConfigOptions = {}): ConfigDraft {
  const origins = new Map<string, string>();
  const root = _applyOverrides(raw, options.overrides ?? {}, origins);
  const c = new _Checker(origins);
  if (options.fileUsers) _addFileUsers(root, options.fileUsers, origins, c);
  const parsed = ROOT(root, "", c);
  if (parsed === INVALID || c.problems.length > 0) {
    throw new ConfigError(c.problems.length > 0 ? c.problems : ["Configuration is invalid"]);
  }
  const draft = _toDraft(parsed, c);
  if (c.problems.length > 0) throw new ConfigError(c.problems);
  return draft;
}

/**
 * Parse and validate YAML text into a {@linkcode ConfigDraft}.
 *
 * @example Usage
 * ```ts
 * import { parseConfigDraft } from "./load.ts";
 * parseConfigDraft("", "empty.yaml").listeners[0]?.port; // 1443
 * ```
 */
export function parseConfigDraft(
  yamlText: string,
  source: string,
  options: BuildConfigOptions = {},
): ConfigDraft {
  return buildConfigDraft(parseYaml(yamlText, source), options);
}

/**
 * Fill every missing listener secret with `stateSecret` and return the deeply frozen
 * {@linkcode Config}. Throws {@linkcode ConfigError} when a secret is missing and
 * `stateSecret` is null. (Secret bytes are copies; typed arrays cannot be frozen.)
 *
 * @example Usage
 * ```ts
 * import { buildConfigDraft, resolveSecrets } from "./load.ts";
 * const config = resolveSecrets(buildConfigDraft(null), new Uint8Array(16));
 * Object.isFrozen(config.listeners[0]); // true
 * ```
 */
export function resolveSecrets(draft: ConfigDraft, stateSecret: Uint8Array | null): Config {
  const problems: string[] = [];
  const listeners = draft.listeners.map((l, i): ListenerConfig => {
    const secret = l.secret ?? stateSecret;
    if (secret === null) {
      problems.push(
        `listeners[${i}].secret: missing: set it in the file, pass --secret, or let "mtproxy run" keep one in the state file`,
      );
    } else if (secret.length !== 16) {
      problems.push(`listeners[${i}].secret: must be 16 bytes: got ${secret.length}`);
    }
    return { ...l, secret: (secret ?? new Uint8Array(16)).slice() };
  });
  if (problems.length > 0) throw new ConfigError(problems);
  const config: Config = {
    role: draft.role,
    listeners,
    allowedProtocols: draft.allowedProtocols,
    publicHost: draft.publicHost,
    logLevel: draft.logLevel,
    telegram: { ...draft.telegram, dcAddresses: new _FrozenMap(draft.telegram.dcAddresses) },
    timeouts: draft.timeouts,
    tls: draft.tls,
    maxConnections: draft.maxConnections,
    pool: draft.pool,
    externalIp: draft.externalIp,
    ipLookupUrls: draft.ipLookupUrls,
    replay: draft.replay,
    fronting: draft.fronting,
    perSniSecrets: draft.perSniSecrets,
    perSniSalt: draft.perSniSalt,
    policy: draft.policy,
    metrics: draft.metrics,
    backs: draft.backs.map((b) => ({ ...b, secret: b.secret.slice() })),
    linkListeners: draft.linkListeners,
    fronts: draft.fronts.map((f) => ({ ...f, secret: f.secret.slice() })),
    defaultTag: draft.defaultTag?.slice() ?? null,
    link: draft.link,
    workers: draft.workers,
    sharedState: draft.sharedState,
    users: draft.users.map((u) => ({
      ...u,
      secret: u.secret.slice(),
      tag: u.tag?.slice() ?? null,
    })),
    admin: draft.admin,
    usersFile: draft.usersFile,
  };
  return _deepFreeze(config);
}

/**
 * Validate a parsed configuration value and resolve its secrets in one step.
 *
 * @example Usage
 * ```ts
 * import { buildConfig } from "./load.ts";
 * const config = buildConfig({ listeners: [{ secret: "0123456789abcdef0123456789abcdef" }] });
 * config.listeners[0]?.port; // 1443
 * ```
 */
export function buildConfig(raw: unknown, options: ResolveConfigOptions = {}): Config {
  return resolveSecrets(buildConfigDraft(raw, options), options.stateSecret ?? null);
}

/**
 * Parse YAML text into a frozen {@linkcode Config}. Every listener needs a secret, from the
 * file, an override or `options.stateSecret`.
 *
 * @example Usage
 * ```ts
 * import { parseConfig } from "./load.ts";
 * const config = parseConfig("log_level: debug\n", "inline", { stateSecret: new Uint8Array(16) });
 * config.logLevel; // "debug"
 * ```
 */
export function parseConfig(
  yamlText: string,
  source: string,
  options: ResolveConfigOptions = {},
): Config {
  return buildConfig(parseYaml(yamlText, source), options);
}

/**
 * Read a YAML file into a plain value, as {@linkcode parseYaml} does (null for an empty file). A
 * file that cannot be read is a {@linkcode ConfigError}.
 *
 * @example Usage
 * ```ts ignore
 * import { readConfigFile } from "./load.ts";
 * const raw = await readConfigFile("/etc/mtproxy/config.yaml");
 * ```
 */
export async function readConfigFile(path: string): Promise<unknown> {
  return parseYaml(await _readConfigText(path), path);
}

/**
 * Check one user's keys as `users.NAME` is checked (the admin API's request bodies): every
 * problem as "key: reason", never echoing a secret. Empty when the user is valid.
 *
 * @example Usage
 * ```ts
 * import { checkUser } from "./load.ts";
 * checkUser({ secret: "0123456789abcdef0123456789abcdef", max_connections: -1 });
 * // ["max_connections: must be an integer 0-10000000: got -1"]
 * ```
 */
export function checkUser(value: unknown): string[] {
  const c = new _Checker(new Map());
  USER(value, "", c);
  return c.problems;
}

/**
 * Read and validate a YAML file into a {@linkcode ConfigDraft}. A file that cannot be read is
 * a {@linkcode ConfigError} too.
 *
 * @example Usage
 * ```ts ignore
 * import { loadConfigDraftFile } from "./load.ts";
 * const draft = await loadConfigDraftFile("/etc/mtproxy/config.yaml");
 * ```
 */
export async function loadConfigDraftFile(
  path: string,
  options: BuildConfigOptions = {},
): Promise<ConfigDraft> {
  return buildConfigDraft(parseYaml(await _readConfigText(path), path), options);
}

/**
 * Read a YAML file into a frozen {@linkcode Config} (every listener needs a secret).
 *
 * @example Usage
 * ```ts ignore
 * import { loadConfigFile } from "./load.ts";
 * const config = await loadConfigFile("config.yaml");
 * ```
 */
export async function loadConfigFile(
  path: string,
  options: ResolveConfigOptions = {},
): Promise<Config> {
  return parseConfig(await _readConfigText(path), path, options);
}

/**
 * The candidate closest to `word` when it is a likely typo of it (case, `-` for `_`, or a
 * small edit distance), else undefined.
 *
 * @example Usage
 * ```ts
 * import { suggest } from "./load.ts";
 * suggest("prot", ["port", "host"]); // "port"
 * suggest("zzz", ["port", "host"]); // undefined
 * ```
 */
export function suggest(word: string, candidates: readonly string[]): string | undefined {
  const norm = (s: string) => s.toLowerCase().replaceAll("-", "_");
  const w = norm(word);
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of candidates) {
    const c = norm(candidate);
    const d = c === w ? 0 : _editDistance(w, c);
    const limit = Math.max(1, Math.min(3, Math.floor(Math.max(w.length, c.length) / 3)));
    const prefix = w.length >= 3 && (c.startsWith(w) || w.startsWith(c));
    if ((d <= limit || prefix) && d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  return best;
}

/**
 * Parse `"host:port"` as the configuration does for addresses to dial: a host name or an IP
 * literal (IPv6 as `"[addr]:port"`) and a port 1-65535. Host names come out lowercase, IPv6
 * compressed. Null when the text is not such an address.
 *
 * @example Usage
 * ```ts
 * import { parseHostPort } from "./load.ts";
 * parseHostPort("Back.Example.com:443"); // { host: "back.example.com", port: 443 }
 * parseHostPort("back.example.com"); // null
 * ```
 */
export function parseHostPort(text: string): HostPort | null {
  const s = text.trim();
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(s) ?? /^([^:\[\]]+):(\d+)$/.exec(s);
  const host = m ? (_ipLiteral(m[1]!) ?? (_isHostName(m[1]!) ? m[1]!.toLowerCase() : null)) : null;
  const port = m ? Number(m[2]) : 0;
  if (host === null || port < 1 || port > 65535) return null;
  return { host, port };
}

/**
 * Whether `text` is a valid name for a listener, a link listener or a front: 1-64 letters,
 * digits, ".", "_" or "-", starting with a letter or digit.
 *
 * @example Usage
 * ```ts
 * import { isValidName } from "./load.ts";
 * isValidName("home-1"); // true
 * isValidName("my front"); // false
 * ```
 */
export function isValidName(text: string): boolean {
  return /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(text);
}

// ---------------------------------------------------------------------------------------------
// Reading

async function _readConfigText(path: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    throw new ConfigError([`Cannot read config file ${JSON.stringify(path)}: ${readFailure(e)}`]);
  }
}

/**
 * Why reading a file failed, in a few words for a problem line (the error's message for what
 * has no words here; never anything the file holds).
 *
 * @example Usage
 * ```ts
 * import { readFailure } from "./load.ts";
 * readFailure(new Deno.errors.PermissionDenied("open")); // "permission denied"
 * ```
 */
export function readFailure(e: unknown): string {
  return e instanceof Deno.errors.NotFound
    ? "no such file"
    : e instanceof Deno.errors.PermissionDenied
    ? "permission denied"
    : e instanceof Deno.errors.IsADirectory
    ? "it is a directory"
    : e instanceof Error
    ? e.message
    : String(e);
}

function _editDistance(a: string, b: string): number {
  // Optimal string alignment: insertions, deletions, substitutions, adjacent transpositions.
  const rows = a.length + 1;
  const cols = b.length + 1;
  const d: number[] = new Array(rows * cols).fill(0);
  const at = (i: number, j: number) => d[i * cols + j]!;
  for (let i = 0; i < rows; i++) d[i * cols] = i;
  for (let j = 0; j < cols; j++) d[j] = j;
  for (let i = 1; i < rows; i++) {
    for (let j = 1; j < cols; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(at(i - 1, j) + 1, at(i, j - 1) + 1, at(i - 1, j - 1) + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        v = Math.min(v, at(i - 2, j - 2) + 1);
      }
      d[i * cols + j] = v;
    }
  }
  return at(a.length, b.length);
}

// ---------------------------------------------------------------------------------------------
// Overrides

function _isMapping(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

function _applyOverrides(
  raw: unknown,
  o: ConfigOverrides,
  origins: Map<string, string>,
): unknown {
  if (raw !== null && raw !== undefined && !_isMapping(raw)) return raw;
  const root: Record<string, unknown> = raw ? structuredClone(raw) : {};
  const set = (
    target: Record<string, unknown>,
    key: string,
    path: string,
    ov: ConfigOverride<unknown> | undefined,
    convert: (v: unknown) => unknown = (v) => v,
  ) => {
    if (ov === undefined) return;
    target[key] = convert(ov.value);
    origins.set(path, ov.source);
  };
  const numeric = (v: unknown) => typeof v === "string" && /^\s*\d+\s*$/.test(v) ? Number(v) : v;
  const list = (v: unknown) => Array.isArray(v) ? [...v] : v;

  set(root, "role", "role", o.role);
  set(root, "workers", "workers", o.workers);
  set(root, "public_host", "public_host", o.publicHost);
  set(root, "log_level", "log_level", o.logLevel);
  if (o.metricsListen) {
    if (root.metrics === undefined || root.metrics === null) root.metrics = {};
    if (_isMapping(root.metrics)) set(root.metrics, "listen", "metrics.listen", o.metricsListen);
  }
  set(root, "allowed_protocols", "allowed_protocols", o.allowedProtocols, list);
  if (o.allowedProtocols && Array.isArray(root.listeners)) {
    for (const l of root.listeners) if (_isMapping(l)) delete l.allowed_protocols;
  }
  const listenerOverride = o.host ?? o.port ?? o.secret ?? o.tlsDomains ?? o.tag;
  const absent = root.listeners === undefined || root.listeners === null;
  if (_roleOf(root) === "back") {
    // A back has no client listeners: none is invented, and a listener flag is reported
    // (as the listeners it would create) rather than silently ignored.
    if (absent && listenerOverride) {
      root.listeners = [{ name: DEFAULT_LISTENER_NAME }];
      origins.set("listeners", listenerOverride.source);
    }
  } else if (absent) {
    root.listeners = [{ name: DEFAULT_LISTENER_NAME }];
  } else if (Array.isArray(root.listeners) && root.listeners.length === 0 && listenerOverride) {
    root.listeners.push({ name: DEFAULT_LISTENER_NAME });
  }
  const first: unknown = Array.isArray(root.listeners) ? root.listeners[0] : undefined;
  if (_isMapping(first)) {
    set(first, "host", "listeners[0].host", o.host);
    set(first, "port", "listeners[0].port", o.port, numeric);
    set(first, "secret", "listeners[0].secret", o.secret);
    set(first, "tag", "listeners[0].tag", o.tag);
    set(first, "tls_domain", "listeners[0].tls_domain", o.tlsDomains, list);
  }
  return root;
}

/**
 * Lay the users file's users into `root.users`: each is labelled with the file in problems, and a
 * name the config file has too is a problem (which of the two was meant is not ours to guess).
 */
function _addFileUsers(
  root: unknown,
  file: FileUsers,
  origins: Map<string, string>,
  c: _Checker,
): void {
  const names = Object.keys(file.users);
  if (names.length === 0 || !_isMapping(root)) return;
  if (root.users === undefined || root.users === null) root.users = {};
  const users = root.users;
  if (!_isMapping(users)) return;
  for (const name of names) {
    if (Object.hasOwn(users, name)) {
      c.problems.push(
        `users.${name}: defined both in the config file and in the ${file.source}: keep one`,
      );
      continue;
    }
    users[name] = file.users[name];
    origins.set(`users.${name}`, file.source);
  }
}

// ---------------------------------------------------------------------------------------------
// Schema: checks return the value (converted) or INVALID after recording a problem.

const INVALID: unique symbol = Symbol("invalid");
type Invalid = typeof INVALID;
type Check<T> = (value: unknown, path: string, c: _Checker) => T | Invalid;

class _Checker {
  readonly problems: string[] = [];
  readonly warnings: string[] = [];
  readonly #origins: ReadonlyMap<string, string>;

  constructor(origins: ReadonlyMap<string, string>) {
    this.#origins = origins;
  }

  label(path: string): string {
    for (const [p, source] of this.#origins) {
      if (path === p || path.startsWith(p + "[") || path.startsWith(p + ".")) {
        return `${path} (from ${source})`;
      }
    }
    return path === "" ? "(top level)" : path;
  }

  /** Record a problem; `got` is the offending value and an optional hint after it. */
  fail(path: string, reason: string, ...got: [value: unknown, hint?: string] | []): Invalid {
    const detail = got.length > 0 ? `: got ${_show(got[0])}${got[1] ?? ""}` : "";
    this.problems.push(`${this.label(path)}: ${reason}${detail}`);
    return INVALID;
  }

  warn(path: string, reason: string): void {
    this.warnings.push(`${this.label(path)}: ${reason}`);
  }
}

function _show(v: unknown): string {
  // A secret pasted under the wrong key (an "ee" secret as tls_domain, say) stays unshown.
  if (typeof v === "string") {
    return _looksSecret(v) ? "a value that may be a secret (not shown)" : JSON.stringify(v);
  }
  if (Array.isArray(v)) return "a list";
  if (v instanceof Uint8Array) return `${v.length} bytes`;
  if (typeof v === "object" && v !== null) return "a mapping";
  return String(v);
}

function _join(path: string, key: string): string {
  return path === "" ? key : `${path}.${key}`;
}

type Shape = Record<string, Check<unknown>>;
type ShapeOut<S extends Shape> = {
  [K in keyof S]?: S[K] extends Check<infer T> ? T : never;
};

/** Key hints for keys that belong elsewhere. */
const MISPLACED: Readonly<Record<string, string>> = {
  secret: "listeners[0].secret",
  port: "listeners[0].port",
  host: "listeners[0].host",
  name: "listeners[0].name",
  tls_domain: "listeners[0].tls_domain",
  tls_domains: "listeners[0].tls_domain",
  dc_addresses: "telegram.dc_addresses",
  prefer_ipv6: "telegram.prefer_ipv6",
  fast_mode: "telegram.fast_mode",
  default_dc: "telegram.default_dc",
  handshake: "timeouts.handshake",
  idle: "timeouts.idle",
  dc_connect: "timeouts.dc_connect",
  shutdown_grace: "timeouts.shutdown_grace",
  drain: "timeouts.drain",
  max_clock_skew: "tls.max_clock_skew",
  fake_cert_size: "tls.fake_cert_size",
  profile_refresh: "tls.profile_refresh",
  max_entries: "replay.max_entries",
  max_age: "replay.max_age",
  server_error_filter: "replay.server_error_filter",
  mode: "fronting.mode",
  connect_timeout: "fronting.connect_timeout",
  allow: "fronting.allow",
  tag: "listeners[0].tag",
  min_connections: "pool.min_connections",
  clients_per_connection: "pool.clients_per_connection",
  proxy_secret_url: "telegram.proxy_secret_url",
  proxy_config_url: "telegram.proxy_config_url",
  proxy_config_v6_url: "telegram.proxy_config_v6_url",
  refresh_interval: "telegram.refresh_interval",
  window: "link.window",
  keepalive: "link.keepalive",
  wait: "link.wait",
  link_listener: "link_listeners",
  back: "backs",
  front: "fronts",
};

/** A mapping with known keys; absent (undefined or null) fields come out as undefined. */
function _mapping<S extends Shape>(shape: S): Check<ShapeOut<S>> {
  const known = Object.keys(shape);
  return (value, path, c) => {
    const v = value ?? {};
    if (!_isMapping(v)) return c.fail(path, "must be a mapping of keys to values", value);
    let ok = true;
    const out: Record<string, unknown> = {};
    // Document order, so problems read top to bottom like the file.
    for (const key of Object.keys(v)) {
      const check = Object.hasOwn(shape, key) ? shape[key] : undefined;
      if (check === undefined) {
        ok = false;
        const close = suggest(key, known);
        const elsewhere = path === "" ? MISPLACED[key] : undefined;
        const hint = close !== undefined
          ? ` (did you mean ${JSON.stringify(close)}?)`
          : elsewhere !== undefined
          ? ` (did you mean ${elsewhere}?)`
          : ` (known keys: ${known.join(", ")})`;
        c.problems.push(`${c.label(_join(path, key))}: unknown key${hint}`);
        continue;
      }
      const field = v[key];
      if (field === undefined || field === null) continue;
      const r = check(field, _join(path, key), c);
      if (r === INVALID) ok = false;
      else out[key] = r;
    }
    return ok ? out as ShapeOut<S> : INVALID;
  };
}

type Field<C> = C extends Check<infer T> ? T : never;

/**
 * A mapping like {@linkcode _mapping} whose `required` keys must be present; each maps to the
 * reason shown when it is missing ("key: missing: reason").
 */
function _record<S extends Shape, R extends keyof S & string>(
  shape: S,
  required: Readonly<Record<R, string>>,
): Check<ShapeOut<S> & { [K in R]: Field<S[K]> }> {
  const mapping = _mapping(shape);
  return (value, path, c) => {
    const out = mapping(value, path, c);
    let ok = out !== INVALID;
    const v = value ?? {};
    if (_isMapping(v)) {
      for (const [key, why] of Object.entries<string>(required)) {
        if (v[key] === undefined || v[key] === null) {
          c.fail(_join(path, key), `missing: ${why}`);
          ok = false;
        }
      }
    }
    return ok ? out as ShapeOut<S> & { [K in R]: Field<S[K]> } : INVALID;
  };
}

/** A key this role does not have: always a problem, never showing the value (it may be secret). */
function _reject(why: string): Check<never> {
  return (_value, path, c) => c.fail(path, why);
}

function _list<T>(item: Check<T>, what: string, options: { single?: boolean } = {}): Check<T[]> {
  return (value, path, c) => {
    const items = Array.isArray(value)
      ? value
      : options.single && (typeof value === "string" || typeof value === "number")
      ? [value]
      : null;
    if (items === null) return c.fail(path, `must be a list of ${what}`, value);
    if (items.length === 0) return c.fail(path, "must not be empty");
    const out: T[] = [];
    let ok = true;
    items.forEach((x, i) => {
      const r = item(x, `${path}[${i}]`, c);
      if (r === INVALID) ok = false;
      else if (!out.includes(r)) out.push(r);
    });
    return ok ? out : INVALID;
  };
}

function _string(what: string): Check<string> {
  return (value, path, c) => {
    if (typeof value === "number") return String(value);
    if (typeof value !== "string" || value.trim() === "") {
      return c.fail(path, `must be ${what}`, value);
    }
    return value.trim();
  };
}

function _int(min: number, max: number): Check<number> {
  return (value, path, c) => {
    const n = typeof value === "string" && /^\s*[+-]?\d+\s*$/.test(value) ? Number(value) : value;
    if (typeof n !== "number" || !Number.isInteger(n) || n < min || n > max) {
      return c.fail(path, `must be an integer ${min}-${max}`, value);
    }
    return n;
  };
}

/** Longest timer setTimeout supports, in seconds. */
const MAX_SECONDS = 2_147_483;

/** Positive seconds in, milliseconds out. */
const _seconds: Check<number> = (value, path, c) => {
  const n = typeof value === "string" && value.trim() !== "" ? Number(value) : value;
  if (typeof n !== "number" || !Number.isFinite(n) || n <= 0 || n > MAX_SECONDS) {
    return c.fail(path, `must be a positive number of seconds up to ${MAX_SECONDS}`, value);
  }
  return Math.max(1, Math.round(n * 1000));
};

const _bool: Check<boolean> = (value, path, c) => {
  if (typeof value === "boolean") return value;
  if (value === "true" || value === "false") return value === "true";
  return c.fail(path, "must be true or false", value);
};

function _choice<T extends string>(values: readonly T[]): Check<T> {
  return (value, path, c) => {
    const s = typeof value === "string" ? value.trim().toLowerCase() : undefined;
    const hit = values.find((v) => v === s);
    if (hit !== undefined) return hit;
    const close = typeof value === "string" ? suggest(value, values) : undefined;
    const hint = close === undefined ? "" : ` (did you mean ${JSON.stringify(close)}?)`;
    return c.fail(path, `must be one of ${values.join(", ")}`, value, hint);
  };
}

const IPV4_RE = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

/** Whether an IP literal (canonical text) is a loopback address. */
function _isLoopback(ip: string): boolean {
  return ip.startsWith("127.") || ip === "::1";
}

/** The canonical text of an IP literal, or null. IPv6 comes out compressed, lowercase. */
function _ipLiteral(text: string): string | null {
  const s = text.trim().replace(/^\[(.*)\]$/, "$1");
  if (IPV4_RE.test(s)) return s;
  if (!s.includes(":") || !/^[0-9a-fA-F:.]+$/.test(s)) return null;
  try {
    return new URL(`http://[${s}]/`).hostname.slice(1, -1);
  } catch {
    return null;
  }
}

function _isHostName(s: string): boolean {
  const labels = s.split(".");
  return s.length <= 253 && !/^\d+$/.test(labels[labels.length - 1]!) &&
    labels.every((l) => /^(?!-)[a-z0-9_-]{1,63}(?<!-)$/i.test(l));
}

const _bindHost: Check<string> = (value, path, c) => {
  const ip = typeof value === "string" ? _ipLiteral(value) : null;
  if (ip === null) {
    return c.fail(path, "must be an IPv4 or IPv6 address literal such as 0.0.0.0 or ::", value);
  }
  return ip;
};

const _publicHost: Check<string> = (value, path, c) => {
  const s = typeof value === "string" ? value.trim() : "";
  const ip = _ipLiteral(s);
  if (ip !== null) return ip;
  if (s !== "" && !s.includes(":") && _isHostName(s)) return s.toLowerCase();
  return c.fail(path, "must be a host name or an IP address", value);
};

const _tlsDomain: Check<string> = (value, path, c) => {
  if (typeof value === "string" && isValidTlsDomain(value.trim())) {
    return value.trim().toLowerCase();
  }
  return c.fail(
    path,
    `must be a host name of at most ${MAX_TLS_DOMAIN_BYTES} characters`,
    value,
  );
};

const _listenerName: Check<string> = (value, path, c) => {
  const s = typeof value === "number" ? String(value) : value;
  if (typeof s === "string" && isValidName(s)) return s;
  return c.fail(
    path,
    'must be 1-64 letters, digits, ".", "_" or "-", starting with a letter or digit',
    value,
  );
};

/**
 * A listener secret in any client form. Problems say what is wrong with it, never what it was:
 * a near-miss of a secret is still mostly the secret (and an `ee` form's domain is the part
 * after the key only if the key has the right length).
 */
const _secret: Check<ParsedSecret> = (value, path, c) => {
  if (typeof value !== "string") {
    return c.fail(
      path,
      `must be a string of 32 hex digits (quote it in YAML): got ${_kind(value)}`,
    );
  }
  try {
    return parseSecret(value);
  } catch (e) {
    if (e instanceof SecretError && e.reason === "bad_domain") {
      return c.fail(
        path,
        `has an invalid "ee" domain: it must be a host name of at most ${MAX_TLS_DOMAIN_BYTES} characters`,
      );
    }
    return c.fail(
      path,
      `must be 32 hex digits, "dd" + 32 hex digits, or an "ee" secret in hex or base64url: got ${
        _describeHexish(value)
      }`,
    );
  }
};

/** A string's length and whether it is hex, without its content: "30 hex digits". */
function _describeHexish(value: string): string {
  const s = value.trim();
  if (s === "") return "an empty string";
  if (/^[0-9a-fA-F]+$/.test(s)) return `${s.length} hex digits`;
  return `${s.length} characters, not all hex digits`;
}

/**
 * Whether a value is or holds something secret-like, so a problem must not echo it: a run of
 * 32 hex digits (a key, in any form of secret), a `dd` or `ee` secret in base64url, or a URL
 * with a password.
 */
function _looksSecret(s: string): boolean {
  if (/[0-9a-fA-F]{32}/.test(s)) return true;
  if (/^[a-z][a-z0-9+.-]*:\/\/[^/@\s]*:[^/@\s]*@/i.test(s.trim())) return true;
  try {
    // Not a bare 16 bytes in base64: any 22 letters would be one.
    return parseSecret(s).kind !== "plain";
  } catch {
    return false;
  }
}

const _dcId = _int(-1000, 1000);

/** A promotion tag: 32 hex digits -> 16 bytes. */
const _tag: Check<Uint8Array> = (value, path, c) => {
  const s = typeof value === "string" ? value.trim() : "";
  if (!/^[0-9a-fA-F]{32}$/.test(s)) {
    // Like a secret, never echoed: a tag is no secret, but a secret pasted here would be.
    return c.fail(
      path,
      `must be 32 hex digits (the tag from @MTProxybot; quote it): got ${
        typeof value === "string" ? _describeHexish(value) : _kind(value)
      }`,
    );
  }
  return Uint8Array.from(s.match(/../g)!, (h) => parseInt(h, 16));
};

/**
 * A link secret: exactly 32 hex digits -> 16 bytes. Problems say what is wrong with it, never
 * what it was: a near-miss of a secret is still mostly the secret.
 */
const _linkSecret: Check<Uint8Array> = (value, path, c) => {
  const hint = ' (make one with "mtproxy secret --front NAME"; quote it in YAML)';
  if (typeof value !== "string") {
    return c.fail(path, `must be a string of 32 hex digits: got ${_kind(value)}${hint}`);
  }
  const s = value.trim();
  if (s.length !== 32) {
    return c.fail(path, `must be 32 hex digits: got ${s.length} characters${hint}`);
  }
  if (!/^[0-9a-fA-F]{32}$/.test(s)) {
    return c.fail(path, `must be 32 hex digits: it has characters that are not hex digits${hint}`);
  }
  return Uint8Array.from(s.match(/../g)!, (h) => parseInt(h, 16));
};

/** What kind of value `v` is, without its content. */
function _kind(v: unknown): string {
  if (Array.isArray(v)) return "a list";
  if (typeof v === "object" && v !== null) return "a mapping";
  if (typeof v === "boolean") return "true or false";
  return `a ${typeof v}`;
}

/** An http(s) URL. */
const _url: Check<string> = (value, path, c) => {
  const s = typeof value === "string" ? value.trim() : "";
  try {
    const u = new URL(s);
    if (u.protocol === "http:" || u.protocol === "https:") return s;
  } catch {
    // Reported below.
  }
  return c.fail(path, "must be an http:// or https:// URL", value);
};

/** `admin.token`: printable characters without spaces; never echoed, not even in part. */
const _adminToken: Check<string> = (value, path, c) => {
  if (typeof value !== "string") {
    return c.fail(path, `must be a string (quote it): got ${_kind(value)}`);
  }
  const s = value.trim();
  if (!/^[\x21-\x7e]+$/.test(s)) {
    return c.fail(path, "must be printable ASCII characters without spaces");
  }
  if (s.length < MIN_ADMIN_TOKEN_LENGTH) {
    return c.fail(
      path,
      `must be at least ${MIN_ADMIN_TOKEN_LENGTH} characters: got ${s.length} (leave it out to have one made in the state file)`,
    );
  }
  return s;
};

/** A Redis URL; its password is never echoed in a problem. */
const _redisUrl: Check<string> = (value, path, c) => {
  const s = typeof value === "string" ? value.trim() : "";
  try {
    const u = new URL(s);
    if ((u.protocol === "redis:" || u.protocol === "rediss:") && u.hostname !== "") return s;
  } catch {
    // Reported below.
  }
  // Not echoed: the URL may hold a password.
  return c.fail(path, "must be a redis://host:port[/db] or rediss:// URL");
};

/** A key prefix: letters, digits and `._:-`. */
const _keyPrefix: Check<string> = (value, path, c) => {
  if (typeof value === "string" && /^[A-Za-z0-9._:-]{1,64}$/.test(value)) return value;
  return c.fail(path, "must be 1-64 characters from A-Z a-z 0-9 . _ : -", value);
};

/** A proxy's name in a fleet. */
const _instanceName: Check<string> = (value, path, c) => {
  if (typeof value === "string" && /^[A-Za-z0-9._-]{1,64}$/.test(value)) return value;
  return c.fail(path, "must be 1-64 characters from A-Z a-z 0-9 . _ -", value);
};

/** Bytes: a number, or a size like `512MB`, `10GB`, `1.5GiB` (k/M/G/T are powers of 1000, Ki/Mi/Gi/Ti of 1024). */
const _size: Check<number> = (value, path, c) => {
  if (typeof value === "number" && Number.isInteger(value) && value > 0) return value;
  const m = typeof value === "string"
    ? value.trim().match(/^(\d+(?:\.\d+)?)\s*([kKMGT]i?)?B?$/)
    : null;
  const scale = m ? _SIZE_UNITS[m[2] ?? ""] : undefined;
  const n = m && scale !== undefined ? Math.round(Number(m[1]) * scale) : NaN;
  if (!(n > 0) || !Number.isSafeInteger(n)) {
    return c.fail(path, "must be a size in bytes such as 500MB, 10GB or 1.5GiB", value);
  }
  return n;
};
const _SIZE_UNITS: Readonly<Record<string, number>> = {
  "": 1,
  k: 1e3,
  K: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  Ki: 2 ** 10,
  KI: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
};

/** Bytes per second: a rate like `8Mbit`, `500kbit`, `2MB/s` (bit rates are divided by 8). */
const _rate: Check<number> = (value, path, c) => {
  if (typeof value === "number" && value > 0) return Math.max(1, Math.round(value));
  const m = typeof value === "string"
    ? value.trim().match(/^(\d+(?:\.\d+)?)\s*([kKMG]?)(bit|bps|B\/s|B)$/)
    : null;
  const unit = m ? _SIZE_UNITS[m[2] ?? ""] : undefined;
  const n = m && unit !== undefined
    ? Number(m[1]) * unit / (m[3] === "bit" || m[3] === "bps" ? 8 : 1)
    : NaN;
  if (!(n >= 1) || !Number.isFinite(n)) {
    return c.fail(path, "must be a rate such as 8Mbit, 500kbit or 2MB/s", value);
  }
  return Math.round(n);
};

/** An ISO 8601 date or date-time (`2027-01-31`, `2027-01-31T18:00:00Z`), to Unix ms. */
const _date: Check<number> = (value, path, c) => {
  const s = value instanceof Date
    ? value.toISOString()
    : typeof value === "string"
    ? value.trim()
    : "";
  const ms = /^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$/.test(s)
    ? Date.parse(s)
    : NaN;
  if (!Number.isFinite(ms)) {
    return c.fail(
      path,
      "must be an ISO 8601 date such as 2027-01-31 or 2027-01-31T18:00:00Z",
      value,
    );
  }
  return ms;
};

/** An IPv4 address literal. */
const _ipv4: Check<string> = (value, path, c) => {
  const s = typeof value === "string" ? value.trim() : "";
  if (IPV4_RE.test(s)) return s;
  return c.fail(path, "must be an IPv4 address", value);
};

/** Zero or positive seconds in, milliseconds out (0 = never). */
/** `auto` or a worker count. */
const _workers: Check<number | "auto"> = (value, path, c) => {
  if (typeof value === "string" && value.trim().toLowerCase() === "auto") return "auto";
  const n = typeof value === "string" && /^\s*\d+\s*$/.test(value) ? Number(value) : value;
  if (typeof n !== "number" || !Number.isInteger(n) || n < 1 || n > MAX_WORKERS) {
    return c.fail(path, `must be auto or an integer 1-${MAX_WORKERS}`, value);
  }
  return n;
};

const _secondsOrZero: Check<number> = (value, path, c) => {
  if (value === 0 || value === "0") return 0;
  return _seconds(value, path, c);
};

/** `[min, max]` bytes of a TLS record payload. */
const _sizeRange: Check<{ min: number; max: number }> = (value, path, c) => {
  const item = _int(64, 16384);
  if (!Array.isArray(value) || value.length !== 2) {
    return c.fail(path, "must be a list of two sizes [min, max], 64-16384 bytes", value);
  }
  const min = item(value[0], `${path}[0]`, c);
  const max = item(value[1], `${path}[1]`, c);
  if (min === INVALID || max === INVALID) return INVALID;
  if (min > max) return c.fail(path, "min must not exceed max", value);
  return { min, max };
};

const SERVER_ERROR_FILTERS: readonly ServerErrorFilter[] = ["off", "first", "all"];

/** `off`, `sni` or a fixed `host:port`. */
const _frontingMode: Check<"off" | "sni" | HostPort> = (value, path, c) => {
  if (value === false || value === "off") return "off";
  if (value === "sni") return "sni";
  if (typeof value === "string" && value.includes(":")) return _hostPort(value, path, c);
  return c.fail(path, 'must be off, sni, or "host:port"', value);
};

const _hostPort: Check<HostPort> = (value, path, c) => {
  const hp = typeof value === "string" ? parseHostPort(value) : null;
  if (hp === null) {
    return c.fail(path, 'must be "host:port" (IPv6 as "[addr]:port") with a port 1-65535', value);
  }
  return hp;
};

/** A network in CIDR form, kept as written (trimmed). */
const _cidr: Check<string> = (value, path, c) => {
  const s = typeof value === "string" ? value.trim() : "";
  if (parseCidr(s) === null) {
    return c.fail(
      path,
      'must be an IP address or a network such as "203.0.113.0/24" or "2001:db8::/32"',
      value,
    );
  }
  return s;
};

/** `ip:port` to bind, with an IP literal (IPv6 as `[addr]:port`). */
const _bindAddress: Check<HostPort> = (value, path, c) => {
  const s = typeof value === "string" ? value.trim() : "";
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(s) ?? /^([^:\[\]]+):(\d+)$/.exec(s);
  const host = m ? _ipLiteral(m[1]!) : null;
  const port = m ? Number(m[2]) : 0;
  if (host === null || port < 1 || port > 65535) {
    return c.fail(
      path,
      'must be "ip:port" with an IP address literal (IPv6 as "[addr]:port") and a port 1-65535',
      value,
    );
  }
  return { host, port };
};

const _dcAddresses: Check<Map<number, HostPort>> = (value, path, c) => {
  if (!_isMapping(value)) {
    return c.fail(path, 'must be a mapping of DC ids to "host:port"', value);
  }
  const out = new Map<number, HostPort>();
  let ok = true;
  for (const [key, v] of Object.entries(value)) {
    const p = _join(path, key);
    const id = /^[+-]?\d+$/.test(key.trim()) ? Number(key) : NaN;
    if (!Number.isInteger(id) || id === 0 || id < -1000 || id > 1000) {
      c.fail(p, "DC id must be a nonzero integer -1000..1000", key);
      ok = false;
      continue;
    }
    const hp = _hostPort(v, p, c);
    if (hp === INVALID) ok = false;
    else out.set(id, hp);
  }
  return ok ? out : INVALID;
};

const PROTOCOLS: readonly ClientProtocol[] = ["tls", "dd", "plain"];
const LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warning", "error"];
const _protocols = _list(_choice(PROTOCOLS), "tls, dd, plain", { single: true });

/** `users.NAME`: one user. */
const USER = _record({
  secret: _secret,
  enabled: _bool,
  max_connections: _int(0, 10_000_000),
  max_unique_ips: _int(0, 1_000_000),
  unique_ip_window: _seconds,
  data_quota: _size,
  quota_reset: _choice(["daily", "weekly", "monthly"] as const),
  expires: _date,
  rate_limit: _rate,
  tag: _tag,
}, { secret: 'the user\'s own secret (make one with "mtproxy secret"; quote it)' });

type _UserOut = Exclude<ReturnType<typeof USER>, Invalid>;

/** `users`: a mapping from user names to users. */
const _users: Check<Map<string, _UserOut>> = (value, path, c) => {
  if (!_isMapping(value)) return c.fail(path, "must be a mapping of user names to users");
  const out = new Map<string, _UserOut>();
  let ok = true;
  for (const [name, v] of Object.entries(value)) {
    const p = _join(path, name);
    if (!isValidName(name)) {
      c.fail(
        p,
        'a user name must be 1-64 letters, digits, ".", "_" or "-", starting with a letter or digit',
      );
      ok = false;
      continue;
    }
    const u = USER(v, p, c);
    if (u === INVALID) ok = false;
    else out.set(name, u);
  }
  return ok ? out : INVALID;
};

const LISTENER = _mapping({
  name: _listenerName,
  host: _bindHost,
  port: _int(1, 65535),
  secret: _secret,
  tls_domain: _list(_tlsDomain, "host names", { single: true }),
  allowed_protocols: _protocols,
  tag: _tag,
  proxy_protocol: _bool,
  users: _list(_listenerName, "user names", { single: true }),
});

const _secretHint = 'make one with "mtproxy secret --front NAME"';

/** `backs[]`: a back as a front sees it. */
const BACK = _record({
  address: _hostPort,
  secret: _linkSecret,
  tls_domain: _tlsDomain,
  links: _int(1, MAX_BACK_LINKS),
}, {
  address: 'the "host:port" of one of the back\'s link_listeners',
  secret: `the link secret the back lists for this front (${_secretHint})`,
});

/** `link_listeners[]`: where a back accepts links. */
const LINK_LISTENER = _mapping({
  name: _listenerName,
  host: _bindHost,
  port: _int(1, 65535),
  tls_domain: _list(_tlsDomain, "host names", { single: true }),
});

/** `fronts[]`: a front a back accepts. */
const FRONT = _record({
  name: _listenerName,
  secret: _linkSecret,
}, {
  name: "a name for this front, shown in logs",
  secret: `the link secret this front lists for the back (${_secretHint})`,
});

const ROLES: readonly Role[] = ["standalone", "front", "back"];

/** The whole file, whatever its role. */
const ROOT_SHAPE = {
  role: _choice(ROLES),
  workers: _workers,
  listeners: _list(LISTENER, "listeners"),
  allowed_protocols: _protocols,
  public_host: _publicHost,
  log_level: _choice(LOG_LEVELS),
  max_connections: _int(1, 10_000_000),
  telegram: _mapping({
    dc_addresses: _dcAddresses,
    prefer_ipv6: _bool,
    fast_mode: _bool,
    default_dc: _dcId,
    mode: _choice(["auto", "direct", "middle"] as const),
    proxy_secret_url: _url,
    proxy_config_url: _url,
    proxy_config_v6_url: _url,
    refresh_interval: _seconds,
  }),
  timeouts: _mapping({
    handshake: _seconds,
    idle: _seconds,
    dc_connect: _seconds,
    shutdown_grace: _seconds,
    drain: _seconds,
  }),
  tls: _mapping({
    max_clock_skew: _seconds,
    fake_cert_size: _sizeRange,
    profile_refresh: _secondsOrZero,
  }),
  replay: _mapping({
    max_entries: _int(0, 100_000_000),
    max_age: _seconds,
    server_error_filter: _choice(SERVER_ERROR_FILTERS),
  }),
  fronting: _mapping({
    mode: _frontingMode,
    connect_timeout: _seconds,
    allow: _list(_tlsDomain, "host names", { single: true }),
  }),
  pool: _mapping({
    min_connections: _int(1, 64),
    clients_per_connection: _int(1, 100_000),
    max_unacked_bytes: _int(65536, 2 ** 31 - 1),
    max_unacked_packets: _int(16, 10_000_000),
    max_client_unacked_bytes: _int(16384, 2 ** 31 - 1),
  }),
  external_ip: _ipv4,
  ip_lookup_urls: _list(_url, "URLs", { single: true }),
  per_sni_secrets: _bool,
  per_sni_salt: _string("a non-empty string"),
  state_file: _string("a file path"),
  policy: _mapping({
    max_connections_per_ip: _int(0, 10_000_000),
    max_connections_per_sni: _int(0, 10_000_000),
    allow_ips: _list(_cidr, "networks", { single: true }),
    deny_ips: _list(_cidr, "networks", { single: true }),
    allow_sni: _list(_tlsDomain, "host names", { single: true }),
    deny_sni: _list(_tlsDomain, "host names", { single: true }),
  }),
  metrics: _mapping({
    listen: _bindAddress,
  }),
  users: _users,
  users_file: _string("a file path"),
  admin: _mapping({
    listen: _bindAddress,
    token: _adminToken,
  }),
  shared_state: _mapping({
    redis_url: _redisUrl,
    key_prefix: _keyPrefix,
    timeout: _seconds,
    lease: _seconds,
    instance: _instanceName,
  }),
  backs: _list(BACK, "backs"),
  link_listeners: _list(LINK_LISTENER, "link listeners"),
  fronts: _list(FRONT, "fronts"),
  default_tag: _tag,
  link: _mapping({
    window: _int(16384, 16 * 1024 * 1024),
    keepalive: _seconds,
    timeout: _seconds,
    wait: _seconds,
  }),
} satisfies Shape;

type Root = ShapeOut<typeof ROOT_SHAPE>;

const NO_TELEGRAM = "a front has no Telegram side: set it on the back";
const NO_CLIENTS = "a back has no client listeners: set it on the front";

/** Top-level keys each role refuses, and why. */
const NOT_FOR: Readonly<Record<Role, Readonly<Record<string, string>>>> = {
  standalone: {
    backs: 'only for role "front"',
    link_listeners: 'only for role "back"',
    fronts: 'only for role "back"',
    default_tag: 'only for role "back"',
    link: 'only for roles "front" and "back"',
  },
  front: Object.fromEntries(
    [
      "telegram",
      "pool",
      "external_ip",
      "ip_lookup_urls",
      "link_listeners",
      "fronts",
      "default_tag",
    ].map((key) => [key, NO_TELEGRAM]),
  ),
  back: Object.fromEntries(
    [
      "listeners",
      "backs",
      "allowed_protocols",
      "per_sni_secrets",
      "per_sni_salt",
      "policy",
      "public_host",
      "max_connections",
      "users",
      "users_file",
    ].map((key) => [key, NO_CLIENTS]),
  ),
};

/** Top-level keys each role needs, and what they are for. */
const REQUIRED_FOR: Readonly<Record<Role, Readonly<Record<string, string>>>> = {
  standalone: {},
  front: { backs: "a front needs at least one back to carry its clients to" },
  back: {
    link_listeners: "a back needs at least one link listener for fronts to connect to",
    fronts: "a back needs at least one front to accept",
  },
};

/** The schema of each role: the whole shape, with the keys it refuses replaced. */
const ROOT_OF: Readonly<Record<Role, Check<Root>>> = {
  standalone: _rootFor("standalone"),
  front: _rootFor("front"),
  back: _rootFor("back"),
};

/** Any role (used when `role` itself is invalid, so only that is reported). */
const ROOT_ANY: Check<Root> = _mapping(ROOT_SHAPE);

function _rootFor(role: Role): Check<Root> {
  const refused = Object.entries(NOT_FOR[role]).map(([key, why]) => [key, _reject(why)]);
  return _mapping({ ...ROOT_SHAPE, ...Object.fromEntries(refused) }) as Check<Root>;
}

/** The role a raw file asks for: the default when unset, null when it is not a role. */
function _roleOf(raw: unknown): Role | null {
  const v = _isMapping(raw) ? raw.role : undefined;
  if (v === undefined || v === null) return DEFAULT_ROLE;
  const s = typeof v === "string" ? v.trim().toLowerCase() : "";
  return ROLES.find((r) => r === s) ?? null;
}

/** The whole file: the schema of its role, and the keys that role needs. */
const ROOT: Check<Root> = (value, path, c) => {
  const role = _roleOf(value);
  const out = (role === null ? ROOT_ANY : ROOT_OF[role])(value, path, c);
  let ok = out !== INVALID;
  const v = value ?? {};
  if (role !== null && _isMapping(v)) {
    for (const [key, why] of Object.entries(REQUIRED_FOR[role])) {
      if (v[key] === undefined || v[key] === null) {
        c.fail(_join(path, key), `missing: ${why}`);
        ok = false;
      }
    }
  }
  return ok ? out : INVALID;
};

// ---------------------------------------------------------------------------------------------
// From the checked value to the draft: defaults and cross-field checks.

function _toDraft(p: Root, c: _Checker): ConfigDraft {
  const role = p.role ?? DEFAULT_ROLE;
  const allowedProtocols = p.allowed_protocols ?? [...DEFAULT_ALLOWED_PROTOCOLS];
  // A back has no client listeners; the others get the default one when the file has none.
  const rawListeners = p.listeners ?? (role === "back" ? [] : [{}]);

  const names = new Map<string, number>();
  const addresses = new Map<string, number>();
  const listeners = rawListeners.map((l, i): ListenerDraft => {
    const name = l.name ?? (p.listeners ? `listener${i + 1}` : DEFAULT_LISTENER_NAME);
    const host = l.host ?? DEFAULT_HOST;
    const port = l.port ?? DEFAULT_PORT;
    const earlier = names.get(name);
    if (earlier !== undefined) {
      c.fail(`listeners[${i}].name`, `duplicate listener name (also listeners[${earlier}])`, name);
    } else names.set(name, i);
    const address = host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
    const same = addresses.get(address);
    if (same !== undefined) {
      c.fail(`listeners[${i}]`, `same address as listeners[${same}]`, address);
    } else addresses.set(address, i);

    let tlsDomains = l.tls_domain ?? [];
    const eeDomain = l.secret?.domain?.toLowerCase();
    if (eeDomain !== undefined) {
      if (tlsDomains.length === 0) tlsDomains = [eeDomain];
      else if (!tlsDomains.includes(eeDomain)) {
        c.warn(
          `listeners[${i}].secret`,
          `its "ee" domain ${
            JSON.stringify(eeDomain)
          } is not in tls_domain, so clients using that secret form will be refused`,
        );
      }
    }
    if (tlsDomains.length === 0) tlsDomains = [DEFAULT_TLS_DOMAIN];
    return {
      name,
      host,
      port,
      secret: l.secret ? l.secret.key : null,
      tlsDomains,
      allowedProtocols: l.allowed_protocols ?? allowedProtocols,
      tag: l.tag ?? null,
      proxyProtocol: l.proxy_protocol ?? false,
      users: l.users ?? null,
    };
  });
  const users = _usersDraft(p, listeners, c);

  const dcAddresses = p.telegram?.dc_addresses ?? new Map<number, HostPort>();
  const defaultDc = p.telegram?.default_dc ?? DEFAULT_DC;
  if (defaultDc === 0) c.fail("telegram.default_dc", "must not be 0", defaultDc);
  else if (!BUILTIN_DC_IDS.includes(defaultDc) && !dcAddresses.has(defaultDc)) {
    c.fail(
      "telegram.default_dc",
      `must be a built-in DC (${BUILTIN_DC_IDS.join(", ")}) or a key of telegram.dc_addresses`,
      defaultDc,
    );
  }
  const metricsListen = p.metrics?.listen ?? null;
  if (metricsListen && !_isLoopback(metricsListen.host)) {
    c.warn(
      "metrics.listen",
      "not a loopback address: anyone who reaches it sees an HTTP server beside the proxy, which a censor can probe; prefer 127.0.0.1 (or firewall it)",
    );
  }
  const adminListen = p.admin?.listen ?? null;
  if (adminListen && !_isLoopback(adminListen.host)) {
    c.warn(
      "admin.listen",
      "not a loopback address: anyone who reaches it can try tokens against the admin API (rate-limited, but a censor sees an HTTP server beside the proxy); prefer 127.0.0.1 and an SSH tunnel (or firewall it)",
    );
  }
  if (p.admin?.token !== undefined && adminListen === null) {
    c.warn("admin.token", "has no effect without admin.listen");
  }
  const frontingMode = p.fronting?.mode ?? DEFAULT_FRONTING_MODE;
  const behind = listeners.findIndex((l) => l.proxyProtocol);
  if (behind >= 0 && frontingMode === "sni") {
    c.warn(
      `listeners[${behind}].proxy_protocol`,
      'with fronting.mode "sni" the proxy dials the SNI\'s host on port 443; if that is the balancer in front of it (routing by SNI), refused connections loop back here: set fronting.mode to the real site\'s backend "host:port" instead',
    );
  }
  const telegram: TelegramConfig = {
    dcAddresses,
    preferIpv6: p.telegram?.prefer_ipv6 ?? DEFAULT_PREFER_IPV6,
    fastMode: p.telegram?.fast_mode ?? DEFAULT_FAST_MODE,
    defaultDc,
    mode: p.telegram?.mode ?? DEFAULT_TELEGRAM_MODE,
    proxySecretUrl: p.telegram?.proxy_secret_url ?? DEFAULT_PROXY_SECRET_URL,
    proxyConfigUrl: p.telegram?.proxy_config_url ?? DEFAULT_PROXY_CONFIG_URL,
    proxyConfigV6Url: p.telegram?.proxy_config_v6_url ?? DEFAULT_PROXY_CONFIG_V6_URL,
    refreshIntervalMs: p.telegram?.refresh_interval ?? DEFAULT_REFRESH_INTERVAL_MS,
  };
  return {
    role,
    workers: p.workers ?? DEFAULT_WORKERS,
    listeners,
    allowedProtocols,
    publicHost: p.public_host ?? null,
    logLevel: p.log_level ?? DEFAULT_LOG_LEVEL,
    telegram,
    timeouts: {
      handshakeMs: p.timeouts?.handshake ?? DEFAULT_HANDSHAKE_TIMEOUT_MS,
      idleMs: p.timeouts?.idle ?? DEFAULT_IDLE_TIMEOUT_MS,
      dcConnectMs: p.timeouts?.dc_connect ?? DEFAULT_DC_CONNECT_TIMEOUT_MS,
      shutdownGraceMs: p.timeouts?.shutdown_grace ?? DEFAULT_SHUTDOWN_GRACE_MS,
      drainMs: p.timeouts?.drain ?? DEFAULT_DRAIN_MS,
    },
    tls: {
      maxClockSkewMs: p.tls?.max_clock_skew ?? DEFAULT_TLS_MAX_CLOCK_SKEW_MS,
      fakeCertSize: p.tls?.fake_cert_size ?? DEFAULT_FAKE_CERT_SIZE,
      profileRefreshMs: p.tls?.profile_refresh ?? DEFAULT_PROFILE_REFRESH_MS,
    },
    maxConnections: p.max_connections ?? DEFAULT_MAX_CONNECTIONS,
    pool: {
      minConnections: p.pool?.min_connections ?? DEFAULT_POOL_MIN_CONNECTIONS,
      clientsPerConnection: p.pool?.clients_per_connection ?? DEFAULT_POOL_CLIENTS_PER_CONNECTION,
      maxUnackedBytes: p.pool?.max_unacked_bytes ?? DEFAULT_POOL_MAX_UNACKED_BYTES,
      maxUnackedPackets: p.pool?.max_unacked_packets ?? DEFAULT_POOL_MAX_UNACKED_PACKETS,
      maxClientUnackedBytes: p.pool?.max_client_unacked_bytes ??
        DEFAULT_POOL_MAX_CLIENT_UNACKED_BYTES,
    },
    externalIp: p.external_ip ?? null,
    ipLookupUrls: p.ip_lookup_urls ?? DEFAULT_IP_LOOKUP_URLS,
    replay: {
      maxEntries: p.replay?.max_entries ?? DEFAULT_REPLAY_MAX_ENTRIES,
      maxAgeMs: p.replay?.max_age ?? DEFAULT_REPLAY_MAX_AGE_MS,
      serverErrorFilter: p.replay?.server_error_filter ?? DEFAULT_SERVER_ERROR_FILTER,
    },
    fronting: {
      mode: frontingMode,
      connectTimeoutMs: p.fronting?.connect_timeout ?? DEFAULT_FRONTING_CONNECT_TIMEOUT_MS,
      allow: (p.fronting?.allow ?? []).map((d) => d.toLowerCase()),
    },
    perSniSecrets: p.per_sni_secrets ?? false,
    perSniSalt: p.per_sni_salt ?? DEFAULT_PER_SNI_SALT,
    policy: {
      maxConnectionsPerIp: p.policy?.max_connections_per_ip ?? DEFAULT_POLICY.maxConnectionsPerIp,
      maxConnectionsPerSni: p.policy?.max_connections_per_sni ??
        DEFAULT_POLICY.maxConnectionsPerSni,
      allowIps: p.policy?.allow_ips ?? DEFAULT_POLICY.allowIps,
      denyIps: p.policy?.deny_ips ?? DEFAULT_POLICY.denyIps,
      allowSni: p.policy?.allow_sni ?? DEFAULT_POLICY.allowSni,
      denySni: p.policy?.deny_sni ?? DEFAULT_POLICY.denySni,
    },
    metrics: { listen: metricsListen },
    users,
    admin: { listen: adminListen, token: p.admin?.token ?? null },
    usersFile: p.users_file ?? null,
    sharedState: p.shared_state?.redis_url
      ? {
        redisUrl: p.shared_state.redis_url,
        keyPrefix: p.shared_state.key_prefix ?? DEFAULT_SHARED_STATE_PREFIX,
        timeoutMs: p.shared_state.timeout ?? DEFAULT_SHARED_STATE_TIMEOUT_MS,
        leaseMs: p.shared_state.lease ?? DEFAULT_SHARED_STATE_LEASE_MS,
        instance: p.shared_state.instance ?? _hostName(),
      }
      : null,
    ..._splitDraft(p, c),
    stateFile: p.state_file ?? null,
    warnings: c.warnings,
  };
}

/** The split-mode part of the draft: backs, link listeners, fronts and link settings. */
function _splitDraft(
  p: Root,
  c: _Checker,
): Pick<ConfigDraft, "backs" | "linkListeners" | "fronts" | "defaultTag" | "link"> {
  const backAddresses = new Map<string, number>();
  const backs = (p.backs ?? []).map((b, i): BackConfig => {
    const address = _formatHostPort(b.address);
    const same = backAddresses.get(address);
    if (same !== undefined) {
      c.fail(`backs[${i}].address`, `same address as backs[${same}]`, address);
    } else backAddresses.set(address, i);
    return {
      address: b.address,
      secret: b.secret,
      tlsDomain: b.tls_domain ?? DEFAULT_TLS_DOMAIN,
      links: b.links ?? DEFAULT_BACK_LINKS,
    };
  });

  const linkNames = new Map<string, number>();
  const linkAddresses = new Map<string, number>();
  const linkListeners = (p.link_listeners ?? []).map((l, i): LinkListenerConfig => {
    const name = l.name ?? `${DEFAULT_LINK_LISTENER_NAME_PREFIX}${i + 1}`;
    const host = l.host ?? DEFAULT_HOST;
    const port = l.port ?? DEFAULT_LINK_LISTENER_PORT;
    const earlier = linkNames.get(name);
    if (earlier !== undefined) {
      c.fail(
        `link_listeners[${i}].name`,
        `duplicate link listener name (also link_listeners[${earlier}])`,
        name,
      );
    } else linkNames.set(name, i);
    const address = _formatHostPort({ host, port });
    const same = linkAddresses.get(address);
    if (same !== undefined) {
      c.fail(`link_listeners[${i}]`, `same address as link_listeners[${same}]`, address);
    } else linkAddresses.set(address, i);
    return { name, host, port, tlsDomains: l.tls_domain ?? [DEFAULT_TLS_DOMAIN] };
  });

  const frontNames = new Map<string, number>();
  const frontSecrets = new Map<string, number>();
  const fronts = (p.fronts ?? []).map((f, i): FrontCredential => {
    const earlier = frontNames.get(f.name);
    if (earlier !== undefined) {
      c.fail(`fronts[${i}].name`, `duplicate front name (also fronts[${earlier}])`, f.name);
    } else frontNames.set(f.name, i);
    const key = f.secret.join(",");
    const same = frontSecrets.get(key);
    if (same !== undefined) {
      c.fail(
        `fronts[${i}].secret`,
        `same secret as fronts[${same}]: the back could not tell them apart; give each front its own`,
      );
    } else frontSecrets.set(key, i);
    return { name: f.name, secret: f.secret };
  });

  const keepaliveMs = p.link?.keepalive ?? DEFAULT_LINK_KEEPALIVE_MS;
  const timeoutMs = p.link?.timeout ?? DEFAULT_LINK_TIMEOUT_MS;
  if (timeoutMs <= keepaliveMs) {
    c.fail(
      "link.timeout",
      `must be longer than link.keepalive (${
        keepaliveMs / 1000
      } s), or a live link would be declared dead between pings`,
      timeoutMs / 1000,
    );
  }
  return {
    backs,
    linkListeners,
    fronts,
    defaultTag: p.default_tag ?? null,
    link: {
      windowBytes: p.link?.window ?? DEFAULT_LINK_WINDOW_BYTES,
      keepaliveMs,
      timeoutMs,
      waitMs: p.link?.wait ?? DEFAULT_LINK_WAIT_MS,
    },
  };
}

/** Unique-IP window when `unique_ip_window` is unset: a day. */
const DEFAULT_UNIQUE_IP_WINDOW_MS = 86_400_000;

/** The users, each listener's list checked against them, and every secret unique. */
function _usersDraft(p: Root, listeners: readonly ListenerDraft[], c: _Checker): UserConfig[] {
  const users: UserConfig[] = [];
  for (const [name, u] of p.users ?? new Map<string, _UserOut>()) {
    users.push({
      name,
      secret: u.secret.key,
      enabled: u.enabled ?? true,
      maxConnections: u.max_connections ?? 0,
      maxUniqueIps: u.max_unique_ips ?? 0,
      uniqueIpWindowMs: u.unique_ip_window ?? DEFAULT_UNIQUE_IP_WINDOW_MS,
      dataQuotaBytes: u.data_quota ?? null,
      quotaReset: u.quota_reset ?? null,
      expiresAt: u.expires ?? null,
      rateLimitBytesPerSec: u.rate_limit ?? null,
      tag: u.tag ?? null,
    });
    if (u.quota_reset !== undefined && u.data_quota === undefined) {
      c.warn(`users.${name}.quota_reset`, "has no effect without data_quota");
    }
    if (u.unique_ip_window !== undefined && u.max_unique_ips === undefined) {
      c.warn(`users.${name}.unique_ip_window`, "has no effect without max_unique_ips");
    }
  }
  const known = new Set(users.map((u) => u.name));
  listeners.forEach((l, i) => {
    l.users?.forEach((name, j) => {
      if (!known.has(name)) {
        const close = suggest(name, [...known]);
        c.fail(
          `listeners[${i}].users[${j}]`,
          `no such user in users${
            close === undefined ? "" : ` (did you mean ${JSON.stringify(close)}?)`
          }`,
          name,
        );
      }
    });
  });
  // A user's secret names that user: no other user, and no listener, may have it too
  // (listeners may share one between them, as before users).
  const owners = new Map<string, string>();
  listeners.forEach((l, i) => {
    if (l.secret) owners.set(l.secret.join(","), `listeners[${i}]`);
  });
  for (const u of users) {
    const key = u.secret.join(",");
    const other = owners.get(key);
    if (other !== undefined) {
      c.fail(`users.${u.name}.secret`, `the same secret as ${other} (each user needs its own)`);
    } else owners.set(key, `users.${u.name}`);
  }
  return users;
}

/** This machine's host name as a fleet instance name (characters it may not have dropped). */
function _hostName(): string {
  let name = "mtproxy";
  try {
    name = Deno.hostname();
  } catch {
    // No --allow-sys: the default name.
  }
  return name.replace(/[^A-Za-z0-9._-]/g, "-").slice(0, 64) || "mtproxy";
}

function _formatHostPort(hp: HostPort): string {
  return hp.host.includes(":") ? `[${hp.host}]:${hp.port}` : `${hp.host}:${hp.port}`;
}

// ---------------------------------------------------------------------------------------------
// Freezing

/** A Map whose mutators throw, so a frozen Config cannot be changed through its maps. */
class _FrozenMap<K, V> extends Map<K, V> {
  constructor(entries: Iterable<readonly [K, V]>) {
    super();
    for (const [k, v] of entries) super.set(k, _deepFreeze(v));
    Object.freeze(this);
  }
  override set(): this {
    throw new TypeError("Configuration is read-only");
  }
  override delete(): boolean {
    throw new TypeError("Configuration is read-only");
  }
  override clear(): void {
    throw new TypeError("Configuration is read-only");
  }
}

function _deepFreeze<T>(value: T): T {
  if (typeof value !== "object" || value === null || ArrayBuffer.isView(value)) return value;
  if (value instanceof Map) return value;
  for (const v of Object.values(value)) _deepFreeze(v);
  return Object.freeze(value);
}
