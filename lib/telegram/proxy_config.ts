/**
 * Middle-proxy configuration from core.telegram.org (protocol.md §10.1), in three layers:
 *
 * - pure parsers for the `getProxySecret` bytes and the `getProxyConfig(V6)` text, and a diff
 *   the middle-proxy pool uses to open and close per-DC connections;
 * - downloads at the edge ({@linkcode fetchProxyFiles}): a per-attempt deadline, a size cap,
 *   retries with a short backoff, and one clear outcome per URL;
 * - {@linkcode TelegramConfigStore}: the current snapshot, loaded from the network, else from
 *   the last good copies on disk, else from the bundled copy (telegram_config.ts), and
 *   refreshed on demand (the server owns the timer). A failed or malformed download never
 *   replaces what the store has.
 *
 * @module
 */
import type { HostPort } from "../config/types.ts";
import {
  DEFAULT_PROXY_CONFIG_URL,
  DEFAULT_PROXY_CONFIG_V6_URL,
  DEFAULT_PROXY_SECRET_URL,
} from "../config/defaults.ts";
import { BUNDLED_PROXY_CONFIG, bundledProxySecret } from "./telegram_config.ts";

/** Shortest proxy secret accepted (MTProxy's lower bound; Telegram serves 128 bytes). */
export const MIN_PROXY_SECRET_BYTES = 32;
/** Longest proxy secret accepted (MTProxy's upper bound). */
export const MAX_PROXY_SECRET_BYTES = 256;
/** A download larger than this is refused: the real files are a few KiB. */
export const MAX_CORE_FILE_BYTES = 1 << 20;
/** First retry delay; each further retry waits twice as long. */
export const DEFAULT_CORE_RETRY_DELAY_MS = 500;

/** Cache file names inside the cache directory (MTProxy's names for the two tables). */
export const CACHE_FILE_NAMES = Object.freeze({
  proxySecret: "proxy-secret",
  configV4: "proxy-multi.conf",
  configV6: "proxy-multi-v6.conf",
});

// ---------------------------------------------------------------------------------------------
// Parsing (pure)

/** A parsed middle-proxy table. Immutable: arrays and addresses are frozen, never mutate the map. */
export interface ProxyConfig {
  /** DC used for ids without `proxy_for` lines (the `default` statement); null when absent. */
  readonly defaultDc: number | null;
  /**
   * DC id (negative = media) → middle proxies, in file order without duplicates, never empty.
   * Several addresses: pick one at random per connection.
   */
  readonly dcs: ReadonlyMap<number, readonly HostPort[]>;
}

/** Outcome of {@linkcode parseProxyConfig}. */
export type ProxyConfigParse =
  | { readonly ok: true; readonly config: ProxyConfig }
  | { readonly ok: false; readonly reason: string };

/** Outcome of {@linkcode parseProxySecret}. */
export type ProxySecretParse =
  | { readonly ok: true; readonly secret: Uint8Array }
  | { readonly ok: false; readonly reason: string };

/** DC ids travel as a signed 16-bit number in the client's init. */
const _DC_MIN = -32768;
const _DC_MAX = 32767;
const _HOST_CHARS = /^[A-Za-z0-9._:-]+$/;

function _parseDcId(word: string): number | string {
  if (!/^-?\d{1,6}$/.test(word)) return `DC id is not an integer: "${word}"`;
  const dc = Number(word);
  if (dc < _DC_MIN || dc > _DC_MAX) return `DC id out of range: "${word}"`;
  return dc;
}

function _parseAddress(word: string): HostPort | string {
  const colon = word.lastIndexOf(":");
  if (colon <= 0) return `Address without a port: "${word}"`;
  let host = word.slice(0, colon);
  const portText = word.slice(colon + 1);
  if (host.startsWith("[") || host.endsWith("]")) {
    if (!(host.startsWith("[") && host.endsWith("]")) || !host.includes(":")) {
      return `Bad bracketed IPv6 address: "${word}"`;
    }
    host = host.slice(1, -1);
  }
  if (host === "" || !_HOST_CHARS.test(host)) return `Bad host: "${word}"`;
  if (!/^\d{1,5}$/.test(portText)) return `Bad port: "${word}"`;
  const port = Number(portText);
  if (port < 1 || port > 65535) return `Port out of range: "${word}"`;
  return Object.freeze({ host, port });
}

function _freezeConfig(defaultDc: number | null, dcs: Map<number, HostPort[]>): ProxyConfig {
  const frozen = new Map<number, readonly HostPort[]>();
  for (const [dc, list] of dcs) frozen.set(dc, Object.freeze(list));
  return Object.freeze({ defaultDc, dcs: frozen });
}

/**
 * Parse a `getProxyConfig` / `getProxyConfigV6` download. Understood statements:
 * `proxy_for <dc> <host>:<port>;` (IPv6 hosts may be bracketed; the brackets are dropped) and
 * `default <dc>;`. Comments (`#` to end of line), blank lines and other statements
 * (`min_connections`, `max_connections`, `timeout`, anything unknown) are ignored. The download
 * is rejected, with a reason, when it is empty, looks like HTML, has a malformed or unterminated
 * `proxy_for`/`default` statement, or has no `proxy_for` line at all.
 *
 * @example Usage
 * ```ts
 * import { parseProxyConfig } from "./proxy_config.ts";
 * const parsed = parseProxyConfig("default 2;\nproxy_for 2 149.154.161.144:8888;\n");
 * if (parsed.ok) {
 *   console.assert(parsed.config.defaultDc === 2);
 *   console.assert(parsed.config.dcs.get(2)?.[0]?.port === 8888);
 * }
 * console.assert(!parseProxyConfig("<html>502 Bad Gateway</html>").ok);
 * ```
 */
export function parseProxyConfig(text: string): ProxyConfigParse {
  const body = text.startsWith("\uFEFF") ? text.slice(1) : text;
  if (body.trim() === "") return { ok: false, reason: "Empty proxy config" };
  if (body.trimStart().startsWith("<")) {
    return { ok: false, reason: "Not a proxy config: looks like an HTML page" };
  }
  const dcs = new Map<number, HostPort[]>();
  let defaultDc: number | null = null;
  const lines = body.split(/\r\n|\r|\n/);
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]!;
    const hash = raw.indexOf("#");
    const line = (hash < 0 ? raw : raw.slice(0, hash)).trim();
    if (line === "") continue;
    const statements = line.split(";");
    const tail = statements.pop()!.trim();
    const tailWords = tail.split(/\s+/);
    if (tailWords[0] === "proxy_for" || tailWords[0] === "default") {
      return { ok: false, reason: `Line ${i + 1}: statement without ";": "${tail}"` };
    }
    for (const statement of statements) {
      const words = statement.trim().split(/\s+/);
      const problem = _statement(words, dcs);
      if (typeof problem === "string") {
        return { ok: false, reason: `Line ${i + 1}: ${problem}` };
      }
      if (typeof problem === "number") defaultDc = problem;
    }
  }
  if (dcs.size === 0) return { ok: false, reason: "No proxy_for statement in the proxy config" };
  return { ok: true, config: _freezeConfig(defaultDc, dcs) };
}

/** Apply one statement: a reason when malformed, the DC id of a `default`, else undefined. */
function _statement(words: string[], dcs: Map<number, HostPort[]>): string | number | undefined {
  const keyword = words[0];
  if (keyword === "proxy_for") {
    if (words.length !== 3) return `Expected "proxy_for <dc> <host>:<port>": "${words.join(" ")}"`;
    const dc = _parseDcId(words[1]!);
    if (typeof dc === "string") return dc;
    const address = _parseAddress(words[2]!);
    if (typeof address === "string") return address;
    const list = dcs.get(dc) ?? [];
    if (!list.some((a) => a.host === address.host && a.port === address.port)) list.push(address);
    dcs.set(dc, list);
    return undefined;
  }
  if (keyword === "default") {
    if (words.length !== 2) return `Expected "default <dc>": "${words.join(" ")}"`;
    return _parseDcId(words[1]!);
  }
  return undefined;
}

function _looksLikeText(bytes: Uint8Array): boolean {
  // Printable ASCII and whitespace only: a random secret of 32+ bytes never is.
  return bytes.every((b) => (b >= 0x20 && b < 0x7f) || b === 0x09 || b === 0x0a || b === 0x0d);
}

/**
 * Check a `getProxySecret` download: 32..256 bytes of binary data. Text (an HTML error page,
 * whatever its length) is rejected. The accepted secret is a copy.
 *
 * @example Usage
 * ```ts
 * import { parseProxySecret } from "./proxy_config.ts";
 * import { bundledProxySecret } from "./telegram_config.ts";
 * console.assert(parseProxySecret(bundledProxySecret()).ok);
 * console.assert(!parseProxySecret(new TextEncoder().encode("<html>Not found</html>")).ok);
 * ```
 */
export function parseProxySecret(bytes: Uint8Array): ProxySecretParse {
  const n = bytes.length;
  if (n < MIN_PROXY_SECRET_BYTES || n > MAX_PROXY_SECRET_BYTES) {
    return {
      ok: false,
      reason:
        `Proxy secret must be ${MIN_PROXY_SECRET_BYTES}..${MAX_PROXY_SECRET_BYTES} bytes: got ${n}`,
    };
  }
  if (_looksLikeText(bytes)) {
    return { ok: false, reason: "Not a proxy secret: the download is text" };
  }
  return { ok: true, secret: bytes.slice() };
}

/** What changed between two middle-proxy tables. DC id lists are sorted ascending. */
export interface ProxyConfigDiff {
  /** DCs only in the new table. */
  readonly added: readonly number[];
  /** DCs only in the old table. */
  readonly removed: readonly number[];
  /** DCs in both whose address sets differ (order does not matter). */
  readonly changed: readonly number[];
  /** The `default` DC, when it changed; null otherwise. */
  readonly defaultDc: { readonly from: number | null; readonly to: number | null } | null;
  /** Nothing at all changed. */
  readonly unchanged: boolean;
}

function _addressKey(a: HostPort): string {
  return `${a.host.toLowerCase()} ${a.port}`;
}

function _sameAddresses(a: readonly HostPort[], b: readonly HostPort[]): boolean {
  const left = new Set(a.map(_addressKey));
  const right = new Set(b.map(_addressKey));
  return left.size === right.size && [...left].every((k) => right.has(k));
}

/**
 * Compare two tables; null stands for "no table" (every DC of the other one is added/removed).
 *
 * @example Usage
 * ```ts
 * import { diffProxyConfig, parseProxyConfig } from "./proxy_config.ts";
 * const a = parseProxyConfig("proxy_for 1 10.0.0.1:8888;\nproxy_for 2 10.0.0.2:8888;\n");
 * const b = parseProxyConfig("proxy_for 2 10.0.0.9:8888;\nproxy_for 3 10.0.0.3:8888;\n");
 * if (a.ok && b.ok) {
 *   const diff = diffProxyConfig(a.config, b.config);
 *   // { added: [3], removed: [1], changed: [2], defaultDc: null, unchanged: false }
 *   console.assert(diff.changed[0] === 2);
 * }
 * ```
 */
export function diffProxyConfig(
  previous: ProxyConfig | null,
  next: ProxyConfig | null,
): ProxyConfigDiff {
  const before = previous?.dcs ?? new Map<number, readonly HostPort[]>();
  const after = next?.dcs ?? new Map<number, readonly HostPort[]>();
  const added: number[] = [];
  const removed: number[] = [];
  const changed: number[] = [];
  for (const [dc, list] of after) {
    const old = before.get(dc);
    if (old === undefined) added.push(dc);
    else if (!_sameAddresses(old, list)) changed.push(dc);
  }
  for (const dc of before.keys()) if (!after.has(dc)) removed.push(dc);
  const byId = (x: number, y: number) => x - y;
  const from = previous?.defaultDc ?? null;
  const to = next?.defaultDc ?? null;
  const defaultDc = from === to ? null : Object.freeze({ from, to });
  return Object.freeze({
    added: Object.freeze(added.sort(byId)),
    removed: Object.freeze(removed.sort(byId)),
    changed: Object.freeze(changed.sort(byId)),
    defaultDc,
    unchanged: added.length + removed.length + changed.length === 0 && defaultDc === null,
  });
}

// ---------------------------------------------------------------------------------------------
// Downloading (I/O)

/** The three files to download. */
export interface ProxyFileUrls {
  readonly secretUrl: string;
  readonly configUrl: string;
  /** Leave out to use no IPv6 table. */
  readonly configV6Url?: string;
}

/** Telegram's own URLs (the `telegram.*_url` defaults), IPv6 table included. */
export const CORE_API_URLS: ProxyFileUrls = Object.freeze({
  secretUrl: DEFAULT_PROXY_SECRET_URL,
  configUrl: DEFAULT_PROXY_CONFIG_URL,
  configV6Url: DEFAULT_PROXY_CONFIG_V6_URL,
});

/** Options for {@linkcode fetchProxyFiles} and {@linkcode fetchCoreFile}. */
export interface FetchProxyFilesOptions {
  /** Deadline of one attempt, response headers and body together. */
  timeoutMs: number;
  /** Attempts after the first one fails with a timeout, a network error or HTTP 408/429/5xx. */
  retries: number;
  /** Sent as the User-Agent header. */
  userAgent: string;
  /** @default globalThis.fetch */
  fetch?: typeof fetch;
  /** Waits between attempts. @default a setTimeout promise */
  sleep?: (ms: number) => Promise<void>;
  /** First retry delay, doubled for each later one. @default {@linkcode DEFAULT_CORE_RETRY_DELAY_MS} */
  retryDelayMs?: number;
  /** Larger bodies are refused. @default {@linkcode MAX_CORE_FILE_BYTES} */
  maxBytes?: number;
}

/** Why a download failed. */
export type DownloadFailureKind = "status" | "timeout" | "too-large" | "network";

/** Outcome of downloading one URL, after retries. */
export type Download<T> =
  | { readonly ok: true; readonly url: string; readonly attempts: number; readonly value: T }
  | {
    readonly ok: false;
    readonly url: string;
    readonly attempts: number;
    readonly kind: DownloadFailureKind;
    /** The HTTP status for kind "status", else null. */
    readonly status: number | null;
    /** E.g. `Cannot download "https://…/getProxyConfig": HTTP 502 (3 attempts)`. */
    readonly reason: string;
  };

/** Outcome of {@linkcode fetchProxyFiles}, one per URL. */
export interface ProxyFiles {
  readonly proxySecret: Download<Uint8Array>;
  readonly configV4: Download<string>;
  /** Null when no IPv6 URL was given. */
  readonly configV6: Download<string> | null;
}

interface _Failure {
  readonly kind: DownloadFailureKind;
  readonly status: number | null;
  readonly detail: string;
  readonly retry: boolean;
}

function _defaultSleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function _checkOptions(options: FetchProxyFilesOptions): void {
  const { timeoutMs, retries } = options;
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0 || timeoutMs > 2 ** 31 - 1) {
    throw new RangeError(`Download timeout must be a positive number of ms: got ${timeoutMs}`);
  }
  if (!Number.isInteger(retries) || retries < 0 || retries > 100) {
    throw new RangeError(`Download retries must be an integer in 0..100: got ${retries}`);
  }
}

async function _discard(response: Response): Promise<void> {
  try {
    await response.body?.cancel();
  } catch {
    // Already errored or closed: nothing left to release.
  }
}

/** Read the whole body, or null (body cancelled) as soon as it exceeds `maxBytes`. */
async function _readCapped(
  response: Response,
  maxBytes: number,
  aborted: Promise<never>,
): Promise<Uint8Array | null> {
  const body = response.body;
  if (body === null) return new Uint8Array(0);
  const reader = body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    for (;;) {
      const { done, value } = await Promise.race([reader.read(), aborted]);
      if (done) break;
      total += value.length;
      if (total > maxBytes) {
        await reader.cancel().catch(() => {});
        return null;
      }
      chunks.push(value);
    }
  } catch (e) {
    await reader.cancel().catch(() => {});
    throw e;
  }
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

async function _attempt(
  url: string,
  options: FetchProxyFilesOptions,
): Promise<{ ok: true; bytes: Uint8Array } | { ok: false; failure: _Failure }> {
  const maxBytes = options.maxBytes ?? MAX_CORE_FILE_BYTES;
  const doFetch = options.fetch ?? fetch;
  const controller = new AbortController();
  let timedOut = false;
  // Rejects once the deadline passes, so an injected fetch that ignores the signal still ends.
  const aborted = new Promise<never>((_, reject) => {
    controller.signal.addEventListener("abort", () => reject(new Error("Timed out")));
  });
  aborted.catch(() => {});
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, options.timeoutMs);
  const timeout: _Failure = {
    kind: "timeout",
    status: null,
    detail: `no complete answer within ${options.timeoutMs} ms`,
    retry: true,
  };
  try {
    const response = await Promise.race([
      doFetch(url, {
        signal: controller.signal,
        headers: { "user-agent": options.userAgent },
        redirect: "follow",
      }),
      aborted,
    ]);
    if (!response.ok) {
      await _discard(response);
      const status = response.status;
      const retry = status >= 500 || status === 408 || status === 429;
      return { ok: false, failure: { kind: "status", status, detail: `HTTP ${status}`, retry } };
    }
    const tooLarge: _Failure = {
      kind: "too-large",
      status: null,
      detail: `larger than ${maxBytes} bytes`,
      retry: false,
    };
    const declared = Number(response.headers.get("content-length") ?? "0");
    if (declared > maxBytes) {
      await _discard(response);
      return { ok: false, failure: tooLarge };
    }
    const bytes = await _readCapped(response, maxBytes, aborted);
    if (bytes === null) return { ok: false, failure: tooLarge };
    return { ok: true, bytes };
  } catch (e) {
    if (timedOut) return { ok: false, failure: timeout };
    const message = e instanceof Error ? e.message : String(e);
    return {
      ok: false,
      failure: { kind: "network", status: null, detail: `network error: ${message}`, retry: true },
    };
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Download one URL: up to `1 + retries` attempts, each with its own deadline, waiting
 * `retryDelayMs`, then twice that, and so on between them. HTTP errors other than 408, 429 and
 * 5xx, and bodies over `maxBytes`, are not retried.
 *
 * @example Usage
 * ```ts ignore
 * const secret = await fetchCoreFile(CORE_API_URLS.secretUrl, {
 *   timeoutMs: 3000,
 *   retries: 2,
 *   userAgent: "mtproxy",
 * });
 * if (!secret.ok) console.log(secret.reason);
 * ```
 */
export async function fetchCoreFile(
  url: string,
  options: FetchProxyFilesOptions,
): Promise<Download<Uint8Array>> {
  _checkOptions(options);
  const sleep = options.sleep ?? _defaultSleep;
  const delay = options.retryDelayMs ?? DEFAULT_CORE_RETRY_DELAY_MS;
  for (let attempt = 1;; attempt++) {
    const result = await _attempt(url, options);
    if (result.ok) return { ok: true, url, attempts: attempt, value: result.bytes };
    const { failure } = result;
    if (!failure.retry || attempt > options.retries) {
      const tries = attempt > 1 ? ` (${attempt} attempts)` : "";
      return {
        ok: false,
        url,
        attempts: attempt,
        kind: failure.kind,
        status: failure.status,
        reason: `Cannot download "${url}": ${failure.detail}${tries}`,
      };
    }
    await sleep(delay * 2 ** (attempt - 1));
  }
}

function _asText(download: Download<Uint8Array>): Download<string> {
  if (!download.ok) return download;
  return { ...download, value: new TextDecoder().decode(download.value) };
}

/**
 * Download the proxy secret and the middle-proxy tables, all at once. Each URL gets its own
 * outcome; nothing is parsed here.
 *
 * @example Usage
 * ```ts ignore
 * const files = await fetchProxyFiles(CORE_API_URLS, {
 *   timeoutMs: 3000,
 *   retries: 2,
 *   userAgent: "mtproxy",
 * });
 * if (!files.configV4.ok) console.log(files.configV4.reason);
 * ```
 */
export async function fetchProxyFiles(
  urls: ProxyFileUrls,
  options: FetchProxyFilesOptions,
): Promise<ProxyFiles> {
  _checkOptions(options);
  const [proxySecret, configV4, configV6] = await Promise.all([
    fetchCoreFile(urls.secretUrl, options),
    fetchCoreFile(urls.configUrl, options).then(_asText),
    urls.configV6Url === undefined
      ? Promise.resolve(null)
      : fetchCoreFile(urls.configV6Url, options).then(_asText),
  ]);
  return { proxySecret, configV4, configV6 };
}

// ---------------------------------------------------------------------------------------------
// The store

/** Where a part of the snapshot came from. */
export type ConfigSource = "network" | "cache" | "bundled";

/** The proxy secret and middle-proxy tables in use. Never mutate any part of it. */
export interface TelegramConfigSnapshot {
  /** 32..256 bytes; its first 4 bytes are the key selector. A private copy: do not write to it. */
  readonly proxySecret: Uint8Array;
  readonly configV4: ProxyConfig;
  /** Null when no IPv6 URL is configured or no IPv6 table could be had. */
  readonly configV6: ProxyConfig | null;
  /** Where each part came from (null for a missing IPv6 table). */
  readonly sources: {
    readonly proxySecret: ConfigSource;
    readonly configV4: ConfigSource;
    readonly configV6: ConfigSource | null;
  };
}

/** The last-resort values. */
export interface BundledTelegramConfig {
  readonly proxySecret: Uint8Array;
  readonly configV4: ProxyConfig;
  readonly configV6: ProxyConfig | null;
}

/** Options for {@linkcode TelegramConfigStore}. */
export interface TelegramConfigStoreOptions extends FetchProxyFilesOptions {
  /**
   * Directory for the last good downloads (created when missing; files are replaced
   * atomically). @default none: no disk cache
   */
  cacheDir?: string;
  /** @default the values of telegram_config.ts (alexbers' fallbacks; no IPv6 table) */
  bundled?: BundledTelegramConfig;
}

/** What a refresh (or a repeated load) changed. */
export interface TelegramConfigChange {
  readonly previous: TelegramConfigSnapshot;
  readonly current: TelegramConfigSnapshot;
  readonly secretChanged: boolean;
  readonly v4: ProxyConfigDiff;
  readonly v6: ProxyConfigDiff;
}

/** Outcome of {@linkcode TelegramConfigStore.load}. */
export interface TelegramConfigLoad {
  readonly snapshot: TelegramConfigSnapshot;
  /** Why parts did not come from the network (download, cache and write problems). */
  readonly problems: readonly string[];
}

/** Outcome of {@linkcode TelegramConfigStore.refresh}. */
export interface TelegramConfigRefresh {
  /** Every download succeeded and was well-formed. */
  readonly ok: boolean;
  readonly snapshot: TelegramConfigSnapshot;
  /** Null when the content did not change. */
  readonly change: TelegramConfigChange | null;
  /** Why parts were kept (download or parse failures), and cache write or listener failures. */
  readonly problems: readonly string[];
}

/** Called after the snapshot content changed. */
export type TelegramConfigListener = (change: TelegramConfigChange) => void;

type _Part = "proxySecret" | "configV4" | "configV6";

/** A validated part: the parsed value and the exact bytes to cache. */
type _Fresh<T> = { value: T; raw: Uint8Array };

type _Sourced<T> = { value: T; source: ConfigSource };

function _sameBytes(a: Uint8Array | null, b: Uint8Array | null): boolean {
  if (a === null || b === null) return a === b;
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function _errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/**
 * The current proxy secret and middle-proxy tables. `load()` once at start, then `refresh()`
 * on the server's schedule (`telegram.refresh_interval`); it holds no timers itself. Snapshots
 * are replaced whole, never changed in place. Each part (secret, IPv4 table, IPv6 table) is
 * taken from the network when its download is well-formed; otherwise `load()` falls back to
 * the disk cache, then to the bundled copy, and `refresh()` keeps what it has.
 *
 * @example Usage
 * ```ts ignore
 * const store = new TelegramConfigStore(CORE_API_URLS, {
 *   timeoutMs: 3000,
 *   retries: 2,
 *   userAgent: "mtproxy",
 *   cacheDir: "/var/cache/mtproxy",
 * });
 * const { snapshot, problems } = await store.load();
 * log.info(`Proxy secret from ${snapshot.sources.proxySecret}`, { problems });
 * store.onChange((change) => pool.update(change.current.configV4, change.v4));
 * setInterval(() => store.refresh(), 3_600_000);
 * ```
 */
export class TelegramConfigStore {
  #urls: ProxyFileUrls;
  #options: TelegramConfigStoreOptions;
  #bundled: BundledTelegramConfig;
  #snapshot: TelegramConfigSnapshot | null = null;
  #listeners = new Set<TelegramConfigListener>();
  #refreshing: Promise<TelegramConfigRefresh> | null = null;
  /** What the cache directory is known to hold, so unchanged files are not rewritten. */
  #onDisk: Record<_Part, Uint8Array | null> = { proxySecret: null, configV4: null, configV6: null };

  /** Check the download options; nothing is fetched before {@linkcode load}. */
  constructor(urls: ProxyFileUrls, options: TelegramConfigStoreOptions) {
    _checkOptions(options);
    this.#urls = Object.freeze({ ...urls });
    this.#options = { ...options };
    this.#bundled = options.bundled ?? {
      proxySecret: bundledProxySecret(),
      configV4: BUNDLED_PROXY_CONFIG,
      configV6: null,
    };
  }

  /** The snapshot in use. Throws before the first {@linkcode load} has finished. */
  get current(): TelegramConfigSnapshot {
    if (this.#snapshot === null) {
      throw new Error("Telegram config is not loaded: call load() first");
    }
    return this.#snapshot;
  }

  /** Subscribe to content changes; returns the unsubscribe function. */
  onChange(listener: TelegramConfigListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Build the snapshot: each part from the network, else from the disk cache, else bundled.
   * Never fails for lack of data. Downloaded parts are written to the cache.
   */
  async load(): Promise<TelegramConfigLoad> {
    const problems: string[] = [];
    const files = await fetchProxyFiles(this.#urls, this.#options);
    const secretNet = this.#validSecret(files.proxySecret, problems);
    const v4Net = this.#validConfig(files.configV4, problems);
    const v6Net = files.configV6 === null ? null : this.#validConfig(files.configV6, problems);

    const secret = secretNet
      ? { value: secretNet.value, source: "network" as const }
      : (await this.#cachedSecret(problems)) ??
        { value: this.#bundled.proxySecret.slice(), source: "bundled" as const };
    const v4 = v4Net
      ? { value: v4Net.value, source: "network" as const }
      : (await this.#cachedConfig("configV4", problems)) ??
        { value: this.#bundled.configV4, source: "bundled" as const };
    let v6: _Sourced<ProxyConfig> | null = null;
    if (this.#urls.configV6Url !== undefined) {
      const bundledV6 = this.#bundled.configV6;
      v6 = v6Net
        ? { value: v6Net.value, source: "network" }
        : (await this.#cachedConfig("configV6", problems)) ??
          (bundledV6 === null ? null : { value: bundledV6, source: "bundled" });
    }

    const snapshot = _snapshot(secret.value, v4.value, v6?.value ?? null, {
      proxySecret: secret.source,
      configV4: v4.source,
      configV6: v6?.source ?? null,
    });
    await this.#persist({ proxySecret: secretNet, configV4: v4Net, configV6: v6Net }, problems);
    this.#install(snapshot, problems);
    return { snapshot, problems: Object.freeze(problems) };
  }

  /**
   * Download again. Each well-formed part replaces the one in use and is cached; a failed or
   * malformed part keeps the one in use and adds a reason to `problems`. Listeners are called
   * when the content changed. Concurrent calls share one refresh. Throws before
   * {@linkcode load}.
   */
  refresh(): Promise<TelegramConfigRefresh> {
    if (this.#snapshot === null) {
      return Promise.reject(
        new Error("Telegram config is not loaded: call load() before refresh()"),
      );
    }
    this.#refreshing ??= this.#refresh().finally(() => {
      this.#refreshing = null;
    });
    return this.#refreshing;
  }

  async #refresh(): Promise<TelegramConfigRefresh> {
    const problems: string[] = [];
    const files = await fetchProxyFiles(this.#urls, this.#options);
    const secretNet = this.#validSecret(files.proxySecret, problems);
    const v4Net = this.#validConfig(files.configV4, problems);
    const v6Net = files.configV6 === null ? null : this.#validConfig(files.configV6, problems);
    const ok = problems.length === 0;
    const old = this.current;
    const snapshot = _snapshot(
      secretNet?.value ?? old.proxySecret,
      v4Net?.value ?? old.configV4,
      v6Net?.value ?? old.configV6,
      {
        proxySecret: secretNet ? "network" : old.sources.proxySecret,
        configV4: v4Net ? "network" : old.sources.configV4,
        configV6: v6Net ? "network" : old.sources.configV6,
      },
    );
    await this.#persist({ proxySecret: secretNet, configV4: v4Net, configV6: v6Net }, problems);
    const change = this.#install(snapshot, problems);
    return { ok, snapshot: this.current, change, problems: Object.freeze(problems) };
  }

  #validSecret(
    download: Download<Uint8Array>,
    problems: string[],
  ): _Fresh<Uint8Array> | null {
    if (!download.ok) {
      problems.push(download.reason);
      return null;
    }
    const parsed = parseProxySecret(download.value);
    if (!parsed.ok) {
      problems.push(`Malformed download from "${download.url}": ${parsed.reason}`);
      return null;
    }
    return { value: parsed.secret, raw: download.value };
  }

  #validConfig(download: Download<string>, problems: string[]): _Fresh<ProxyConfig> | null {
    if (!download.ok) {
      problems.push(download.reason);
      return null;
    }
    const parsed = parseProxyConfig(download.value);
    if (!parsed.ok) {
      problems.push(`Malformed download from "${download.url}": ${parsed.reason}`);
      return null;
    }
    return { value: parsed.config, raw: new TextEncoder().encode(download.value) };
  }

  async #cachedSecret(problems: string[]): Promise<_Sourced<Uint8Array> | null> {
    const cached = await this.#readCache("proxySecret", problems);
    if (cached === null) return null;
    const parsed = parseProxySecret(cached);
    if (parsed.ok) return { value: parsed.secret, source: "cache" };
    problems.push(`Cached ${CACHE_FILE_NAMES.proxySecret} is unusable: ${parsed.reason}`);
    return null;
  }

  async #cachedConfig(
    part: "configV4" | "configV6",
    problems: string[],
  ): Promise<_Sourced<ProxyConfig> | null> {
    const cached = await this.#readCache(part, problems);
    if (cached === null) return null;
    const parsed = parseProxyConfig(new TextDecoder().decode(cached));
    if (parsed.ok) return { value: parsed.config, source: "cache" };
    problems.push(`Cached ${CACHE_FILE_NAMES[part]} is unusable: ${parsed.reason}`);
    return null;
  }

  async #readCache(part: _Part, problems: string[]): Promise<Uint8Array | null> {
    const dir = this.#options.cacheDir;
    if (dir === undefined) return null;
    const path = `${dir}/${CACHE_FILE_NAMES[part]}`;
    try {
      const bytes = await Deno.readFile(path);
      this.#onDisk[part] = bytes;
      return bytes;
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) {
        problems.push(`Cannot read cache file "${path}": ${_errorMessage(e)}`);
      }
      return null;
    }
  }

  async #persist(
    fresh: Record<_Part, _Fresh<unknown> | null>,
    problems: string[],
  ): Promise<void> {
    const dir = this.#options.cacheDir;
    if (dir === undefined) return;
    for (const part of ["proxySecret", "configV4", "configV6"] as const) {
      const raw = fresh[part]?.raw;
      if (raw === undefined || _sameBytes(raw, this.#onDisk[part])) continue;
      try {
        await _writeAtomically(dir, CACHE_FILE_NAMES[part], raw);
        this.#onDisk[part] = raw;
      } catch (e) {
        problems.push(
          `Cannot write cache file "${dir}/${CACHE_FILE_NAMES[part]}": ${_errorMessage(e)}`,
        );
      }
    }
  }

  /**
   * Swap in `snapshot` and tell listeners, when its content differs (never for the first load).
   * Same content: the old snapshot object stays, unless only the sources differ.
   */
  #install(snapshot: TelegramConfigSnapshot, problems: string[]): TelegramConfigChange | null {
    const previous = this.#snapshot;
    if (previous === null) {
      this.#snapshot = snapshot;
      return null;
    }
    const change: TelegramConfigChange = Object.freeze({
      previous,
      current: snapshot,
      secretChanged: !_sameBytes(previous.proxySecret, snapshot.proxySecret),
      v4: diffProxyConfig(previous.configV4, snapshot.configV4),
      v6: diffProxyConfig(previous.configV6, snapshot.configV6),
    });
    if (!change.secretChanged && change.v4.unchanged && change.v6.unchanged) {
      // Same content: keep the snapshot object unless only the sources moved (cache → network).
      const [a, b] = [previous.sources, snapshot.sources];
      const sameSources = a.proxySecret === b.proxySecret && a.configV4 === b.configV4 &&
        a.configV6 === b.configV6;
      if (!sameSources) this.#snapshot = snapshot;
      return null;
    }
    this.#snapshot = snapshot;
    for (const listener of [...this.#listeners]) {
      try {
        listener(change);
      } catch (e) {
        problems.push(`Telegram config listener failed: ${_errorMessage(e)}`);
      }
    }
    return change;
  }
}

function _snapshot(
  proxySecret: Uint8Array,
  configV4: ProxyConfig,
  configV6: ProxyConfig | null,
  sources: TelegramConfigSnapshot["sources"],
): TelegramConfigSnapshot {
  return Object.freeze({ proxySecret, configV4, configV6, sources: Object.freeze({ ...sources }) });
}

/** Write `dir/name` through a temporary file, synced, then renamed over the old one. */
async function _writeAtomically(dir: string, name: string, data: Uint8Array): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const suffix = Math.floor(Math.random() * 2 ** 32).toString(16);
  const tmp = `${dir}/.${name}.${Deno.pid}.${suffix}.tmp`;
  try {
    const file = await Deno.open(tmp, { write: true, createNew: true, mode: 0o644 });
    try {
      let written = 0;
      while (written < data.length) written += await file.write(data.subarray(written));
      await file.sync();
    } finally {
      file.close();
    }
    await Deno.rename(tmp, `${dir}/${name}`);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}
