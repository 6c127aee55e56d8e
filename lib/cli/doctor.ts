/**
 * `mtproxy doctor`: on the proxy's machine, check what the proxy needs and explain what is
 * wrong: the configuration, libcrypto, the open-file limit, the ports, the clock, public_host,
 * each tls_domain and its fronting target, and Telegram (DCs or middle proxies, in the mode
 * the configuration uses). Every network target comes from the configuration (or
 * `--clock-url`), so tests point all of them at 127.0.0.1.
 *
 * @module
 */
import { lookup as dnsLookup } from "node:dns/promises";
import { isIP } from "node:net";
import { join } from "node:path";
import type { Config, HostPort, ListenerConfig } from "../config/types.ts";
import { ConfigError } from "../config/load.ts";
import { readState, StateFileError, writeState } from "../config/state.ts";
import { defaultCipherBackend, openSslLoadError } from "../crypto.ts";
import { localIpAddresses } from "../guard/fronting.ts";
import { measureTlsProfile } from "../guard/tls_profile.ts";
import { closeQuietly, dialTcp, formatHostPort, writeAll } from "../net.ts";
import { buildClientHello } from "../protocol/client_hello.ts";
import { parseServerHello, signClientHello } from "../protocol/fake_tls.ts";
import { generateSecret, perSniSecret } from "../secret.ts";
import { imitatedSites, needsMiddleProxies } from "../server.ts";
import { routeDc } from "../telegram/dc.ts";
import { MiddleConnection } from "../telegram/middle.ts";
import { usesMiddleProxies } from "../telegram/middle_proxies.ts";
import {
  fetchProxyFiles,
  parseProxyConfig,
  parseProxySecret,
  type ProxyConfig,
} from "../telegram/proxy_config.ts";
import { VERSION } from "../version.ts";
import {
  type Env,
  parseCommandArgs,
  reportError,
  type ResolvedRunConfig,
  resolveRunConfig,
  RUN_OPTIONS,
  RUN_OPTIONS_HELP,
  runArgsFromValues,
  UsageError,
} from "./options.ts";
import { pingDc } from "./ping.ts";

/** Deadline of each network check unless `--timeout` says otherwise. */
export const DEFAULT_DOCTOR_TIMEOUT_MS = 5000;

/**
 * A clock further off than this fails the check (or half of `tls.max_clock_skew`, if smaller):
 * NTP keeps clocks within milliseconds, and a `Date` header measures to about a second, so
 * more than this is a broken clock that eats into the fake-TLS hello window of every client.
 */
export const DOCTOR_MAX_CLOCK_SKEW_MS = 10_000;

/** Where the clock is read when the configuration fronts no site by name. */
export const DEFAULT_CLOCK_URL = "https://www.google.com/";

/** Sockets a client holds (the client's and its DC connection), for the open-file check. */
const SOCKETS_PER_DIRECT_CLIENT = 2;
/** Descriptors beyond the clients': listeners, middle-proxy pools, metrics, log files. */
const SPARE_FILES = 100;

/** Help screen of `mtproxy doctor`. */
export const DOCTOR_HELP = `Usage: mtproxy doctor [options]

On the proxy's machine: check what the proxy needs, one line per check with a
tick or a cross, and a hint for each failure. Reads the same configuration as
"run" (flags, environment, --config file, state file) and checks: the
configuration; libcrypto; the open-file limit against max_connections; that each
port can be bound (or is held by a running proxy); the clock (the Date header of
an HTTPS answer); that public_host resolves to this machine; that each tls_domain
resolves and what its fronting target answers; Telegram in the configured mode
(each DC answering req_pq_multi, or Telegram's config and each middle proxy's
handshake). Exits with 0 when every check passes, else 1.

      --clock-url URL      read the time from this URL's Date header (default:
                           https:// + the first tls_domain when fronting by SNI,
                           else ${DEFAULT_CLOCK_URL})
      --timeout S          deadline of each network check in seconds (default ${
  DEFAULT_DOCTOR_TIMEOUT_MS / 1000
})
${RUN_OPTIONS_HELP}`;

const DOCTOR_OPTIONS = {
  ...RUN_OPTIONS,
  "clock-url": { type: "string" },
  timeout: { type: "string" },
} as const;

/** The outcome of one check. */
export interface DoctorCheck {
  /** What was checked, e.g. "DC 2 (149.154.167.51:443)". */
  readonly name: string;
  readonly ok: boolean;
  /** What was found. */
  readonly detail: string;
  /** What to do about a failure. */
  readonly hint?: string;
}

/** Resolves a host name to its addresses (a seam: tests answer from a table). */
export type HostLookup = (host: string) => Promise<string[]>;

/** Options for {@linkcode runDoctorChecks}. */
export interface DoctorOptions {
  /** URL whose `Date` header is compared with this machine's clock. @default see DOCTOR_HELP */
  clockUrl?: string;
  /** Deadline of each network check. @default DEFAULT_DOCTOR_TIMEOUT_MS */
  timeoutMs?: number;
  /** @default getaddrinfo (node:dns lookup), as Deno.connect resolves */
  lookup?: HostLookup;
  /** The open-file limits file. @default "/proc/self/limits" (Linux only) */
  limitsPath?: string;
}

function _ok(name: string, detail: string): DoctorCheck {
  return { name, ok: true, detail };
}

function _fail(name: string, detail: string, hint: string): DoctorCheck {
  return { name, ok: false, detail, hint };
}

function _message(e: unknown): string {
  if (!(e instanceof Error)) return String(e);
  // fetch says only "fetch failed"; the reason is its cause.
  return e.cause instanceof Error ? `${e.message}: ${e.cause.message}` : e.message;
}

async function _defaultLookup(host: string): Promise<string[]> {
  const found = await dnsLookup(host, { all: true, verbatim: true });
  return found.map((a) => a.address);
}

function _normalizeIp(ip: string): string {
  return ip.toLowerCase().replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/, "$1");
}

// ---------------------------------------------------------------------------------------------
// Local checks

/**
 * Whether AES runs through OpenSSL's libcrypto (else node:crypto, about ten times slower).
 *
 * @example Usage
 * ```ts
 * import { checkLibcrypto } from "./doctor.ts";
 * checkLibcrypto().name; // "libcrypto"
 * ```
 */
export function checkLibcrypto(): DoctorCheck {
  if (defaultCipherBackend() === "openssl") {
    return _ok("libcrypto", "loaded: AES runs through OpenSSL");
  }
  const why = openSslLoadError();
  return _fail(
    "libcrypto",
    `not loaded (${why}): AES falls back to node:crypto, about ten times slower`,
    why === "MTP_CRYPTO_BACKEND=node"
      ? "unset MTP_CRYPTO_BACKEND"
      : "install libcrypto.so.3 (package libssl3 on Debian/Ubuntu, openssl-libs elsewhere)",
  );
}

/** Descriptors the proxy may need with `config`; null for a back (its load comes from fronts). */
export function filesNeeded(config: Config): number | null {
  if (config.role === "back") return null;
  const direct = config.role === "standalone" &&
    config.listeners.some((l) => !usesMiddleProxies(config, l));
  const perClient = direct ? SOCKETS_PER_DIRECT_CLIENT : 1;
  return config.listeners.length * config.maxConnections * perClient + SPARE_FILES;
}

/**
 * The soft open-file limit (from a Linux limits file, such as /proc/self/limits) against what
 * `max_connections` needs; null off Linux or for a back.
 */
export async function checkOpenFiles(
  config: Config,
  limitsPath = "/proc/self/limits",
): Promise<DoctorCheck | null> {
  const need = filesNeeded(config);
  if (need === null || Deno.build.os !== "linux") return null;
  const name = "open files";
  let text: string;
  try {
    text = await Deno.readTextFile(limitsPath);
  } catch (e) {
    return _fail(name, `cannot read ${limitsPath}: ${_message(e)}`, "run doctor on Linux");
  }
  const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(text);
  if (!m) return _fail(name, `no "Max open files" line in ${limitsPath}`, "check ulimit -n");
  const soft = m[1] === "unlimited" ? Infinity : Number(m[1]);
  const hard = m[2] === "unlimited" ? Infinity : Number(m[2]);
  const what = `limit ${m[1]} (hard ${m[2]}); max_connections ${config.maxConnections} × ${
    config.listeners.length === 1 ? "1 listener" : `${config.listeners.length} listeners`
  } needs about ${need}`;
  if (soft >= need) return _ok(name, what);
  return _fail(
    name,
    what,
    `raise the limit of the proxy's process (the systemd unit sets LimitNOFILE; in a shell: ulimit -n ${need}${
      hard < need ? ", which needs a higher hard limit first" : ""
    }), or lower max_connections. This is the limit doctor itself runs with; a service's own: systemctl show mtproxy -p LimitNOFILE`,
  );
}

/** A socket the proxy binds, for {@linkcode checkPort}. */
export interface BindTarget {
  /** E.g. `listener main` or `metrics`. */
  readonly label: string;
  readonly host: string;
  readonly port: number;
  /** A client listener: a running proxy with this secret would answer a fake-TLS hello. */
  readonly listener?: ListenerConfig;
}

/** Every socket `config` binds: client listeners (or a back's link listeners) and metrics. */
export function bindTargets(config: Config): BindTarget[] {
  const out: BindTarget[] = [];
  for (const l of config.listeners) {
    out.push({ label: `listener ${l.name}`, host: l.host, port: l.port, listener: l });
  }
  for (const l of config.linkListeners) {
    out.push({ label: `link listener ${l.name}`, host: l.host, port: l.port });
  }
  const m = config.metrics.listen;
  if (m) out.push({ label: "metrics", host: m.host, port: m.port });
  return out;
}

/** Which process listens on TCP `port` (Linux, same user or root), from /proc; else null. */
async function _portOwner(port: number): Promise<{ pid: number; command: string } | null> {
  if (Deno.build.os !== "linux") return null;
  const inodes = new Set<string>();
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text: string;
    try {
      text = await Deno.readTextFile(file);
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      const local = f[1];
      if (local === undefined || f[3] !== "0A" || f[9] === undefined) continue;
      if (parseInt(local.split(":")[1] ?? "", 16) === port) inodes.add(f[9]);
    }
  }
  if (inodes.size === 0) return null;
  try {
    for await (const entry of Deno.readDir("/proc")) {
      if (!/^\d+$/.test(entry.name)) continue;
      try {
        for await (const fd of Deno.readDir(`/proc/${entry.name}/fd`)) {
          const link = await Deno.readLink(`/proc/${entry.name}/fd/${fd.name}`).catch(() => "");
          const inode = /^socket:\[(\d+)\]$/.exec(link)?.[1];
          if (inode === undefined || !inodes.has(inode)) continue;
          const raw = await Deno.readTextFile(`/proc/${entry.name}/cmdline`).catch(() => "");
          return { pid: Number(entry.name), command: raw.split("\0").join(" ").trim() };
        }
      } catch {
        // Another user's process, or it just ended.
      }
    }
  } catch {
    // No /proc to read.
  }
  return null;
}

/** Whether a fake-TLS hello signed with the listener's secret gets an answer signed with it. */
async function _ownProxyAnswers(
  listener: ListenerConfig,
  config: Config,
  timeoutMs: number,
): Promise<boolean> {
  if (!listener.allowedProtocols.includes("tls")) return false;
  const sni = listener.tlsDomains[0];
  if (sni === undefined) return false;
  const key = config.perSniSecrets
    ? perSniSecret(listener.secret, sni, config.perSniSalt)
    : listener.secret;
  const host = listener.host === "0.0.0.0"
    ? "127.0.0.1"
    : listener.host === "::"
    ? "::1"
    : listener.host;
  let conn: Deno.TcpConn;
  try {
    conn = await dialTcp(host, listener.port, { timeoutMs });
  } catch {
    return false;
  }
  const timer = setTimeout(() => closeQuietly(conn), timeoutMs);
  try {
    const hello = signClientHello(buildClientHello({ sni }), key, Math.floor(Date.now() / 1000));
    await writeAll(conn, hello);
    const clientRandom = hello.slice(11, 43);
    const buf = new Uint8Array(65536);
    let len = 0;
    while (len < buf.length) {
      const n = await conn.read(buf.subarray(len));
      if (n === null) return false;
      len += n;
      const step = parseServerHello(buf.subarray(0, len), clientRandom, key);
      if (step.kind !== "need") return step.kind === "ok";
    }
    return false;
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
    closeQuietly(conn);
  }
}

/**
 * Whether `target` can be bound now. A port in use passes when the proxy with this
 * configuration holds it (it answers a fake-TLS hello signed with the listener's secret, or
 * /proc names an mtproxy process).
 */
export async function checkPort(
  target: BindTarget,
  config: Config,
  timeoutMs = DEFAULT_DOCTOR_TIMEOUT_MS,
): Promise<DoctorCheck> {
  const name = `${target.label} (${formatHostPort(target.host, target.port)})`;
  try {
    Deno.listen({ hostname: target.host, port: target.port, transport: "tcp" }).close();
    return _ok(name, "port can be bound");
  } catch (e) {
    if (e instanceof Deno.errors.AddrInUse) {
      if (target.listener && await _ownProxyAnswers(target.listener, config, timeoutMs)) {
        return _ok(name, "in use by a running mtproxy (it answered with this listener's secret)");
      }
      const owner = await _portOwner(target.port);
      if (owner && /mtproxy|main\.ts/.test(owner.command)) {
        return _ok(name, `in use (a running proxy?): pid ${owner.pid} ${owner.command}`);
      }
      return _fail(
        name,
        owner ? `in use by pid ${owner.pid}: ${owner.command}` : "in use (a running proxy?)",
        owner
          ? "stop that program or give this listener another port"
          : "if it is not this proxy (running as another user), stop the program that holds it or give this listener another port (ss -ltnp shows it)",
      );
    }
    if (e instanceof Deno.errors.PermissionDenied) {
      return _fail(
        name,
        "permission denied",
        "ports below 1024 need root or CAP_NET_BIND_SERVICE (the systemd unit grants it)",
      );
    }
    if (e instanceof Deno.errors.AddrNotAvailable) {
      return _fail(
        name,
        `${target.host} is not an address of this machine`,
        "bind 0.0.0.0 or :: (or one of this machine's addresses)",
      );
    }
    return _fail(name, _message(e), "check the host and port");
  }
}

// ---------------------------------------------------------------------------------------------
// Network checks

/** The clock URL doctor uses for `config` unless `--clock-url` is given. */
export function defaultClockUrl(config: Config): string {
  const domain = imitatedSites(config)[0]?.tlsDomains[0];
  return config.fronting.mode === "sni" && domain !== undefined
    ? `https://${domain}/`
    : DEFAULT_CLOCK_URL;
}

/**
 * This machine's clock against the `Date` header of `url` (seconds resolution, so the check
 * allows {@linkcode DOCTOR_MAX_CLOCK_SKEW_MS}, or half of `tls.max_clock_skew` if smaller).
 */
export async function checkClock(
  url: string,
  config: Config,
  timeoutMs = DEFAULT_DOCTOR_TIMEOUT_MS,
): Promise<DoctorCheck> {
  const name = "clock";
  const allowed = Math.min(DOCTOR_MAX_CLOCK_SKEW_MS, config.tls.maxClockSkewMs / 2);
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  let date: string | null;
  let local: number;
  try {
    const sent = Date.now();
    const response = await fetch(url, {
      method: "HEAD",
      redirect: "manual",
      signal: controller.signal,
    });
    local = (sent + Date.now()) / 2;
    await response.body?.cancel();
    date = response.headers.get("date");
  } catch (e) {
    return _fail(
      name,
      `cannot read the time from ${url}: ${
        controller.signal.aborted ? `no answer within ${timeoutMs} ms` : _message(e)
      }`,
      "pass --clock-url with an HTTPS site this machine can reach",
    );
  } finally {
    clearTimeout(timer);
  }
  const remote = date === null ? NaN : Date.parse(date);
  if (Number.isNaN(remote)) {
    return _fail(
      name,
      `${url} sent no usable Date header (${JSON.stringify(date)})`,
      "pass --clock-url with another site",
    );
  }
  // The header is truncated to the second: its middle is half a second later.
  const skew = local - (remote + 500);
  const seconds = Math.abs(skew / 1000).toFixed(1);
  const detail = Math.abs(skew) < 1000
    ? `within a second of ${url}`
    : `${seconds} s ${skew > 0 ? "ahead of" : "behind"} ${url}`;
  if (Math.abs(skew) <= allowed) return _ok(name, detail);
  return _fail(
    name,
    detail,
    `fake-TLS clients whose clock differs from this machine's by more than tls.max_clock_skew (${
      config.tls.maxClockSkewMs / 1000
    } s) are refused, and every second off narrows that window: turn on NTP (timedatectl set-ntp true)`,
  );
}

/** Our public IPv4 as the first answering `ip_lookup_urls` service sees it. */
async function _lookupExternalIp(
  urls: readonly string[],
  timeoutMs: number,
): Promise<{ ip: string; url: string } | { ip: null; why: string }> {
  const problems: string[] = [];
  for (const url of urls) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    try {
      const r = await fetch(url, { signal: controller.signal });
      const text = await r.text();
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const ip = text.trim();
      if (isIP(ip) === 4) return { ip, url };
      problems.push(`${url}: not an IPv4 address`);
    } catch (e) {
      problems.push(
        `${url}: ${controller.signal.aborted ? `no answer within ${timeoutMs} ms` : _message(e)}`,
      );
    } finally {
      clearTimeout(timer);
    }
  }
  return { ip: null, why: problems.length === 0 ? "ip_lookup_urls is empty" : problems.join("; ") };
}

/** This machine's addresses: its interfaces, and the public one if known. */
interface _OwnAddresses {
  readonly local: ReadonlySet<string>;
  readonly external: string | null;
}

/** Whether `public_host` resolves to this machine. */
export async function checkPublicHost(
  config: Config,
  own: { external: string | null },
  lookup: HostLookup,
): Promise<DoctorCheck | null> {
  if (config.role === "back") return null;
  const name = "public_host";
  const host = config.publicHost;
  if (host === null) {
    return _fail(
      name,
      "not set: links carry the listener's bind address",
      "set public_host (or --public-host, MTP_PUBLIC_HOST) to the name or IP address clients reach this machine by",
    );
  }
  let addresses: string[];
  try {
    addresses = isIP(host) ? [host] : await lookup(host);
  } catch (e) {
    return _fail(
      name,
      `${host} does not resolve: ${_message(e)}`,
      "fix the DNS record, or put this machine's IP address in public_host",
    );
  }
  const mine: _OwnAddresses = { local: localIpAddresses(), external: own.external };
  const set = new Set([...mine.local].map(_normalizeIp));
  if (mine.external) set.add(_normalizeIp(mine.external));
  const match = addresses.find((a) => set.has(_normalizeIp(a)));
  const shown = isIP(host) ? host : `${host} resolves to ${addresses.join(", ")}`;
  if (match !== undefined) {
    const how = mine.external !== null && _normalizeIp(match) === _normalizeIp(mine.external) &&
        !mine.local.has(match)
      ? "this machine's public address"
      : "an address of this machine";
    return _ok(name, `${shown}: ${how}`);
  }
  const machine = [
    ...(mine.external ? [`public ${mine.external}`] : []),
    `local ${[...mine.local].filter((a) => a !== "127.0.0.1" && a !== "::1").join(", ") || "none"}`,
  ].join("; ");
  return _fail(
    name,
    `${shown}, which is not this machine (${machine})`,
    "clients would reach another machine: fix the DNS record or public_host (behind NAT, set external_ip)",
  );
}

/** Whether a tls_domain resolves. */
export async function checkDomainResolves(
  domain: string,
  config: Config,
  lookup: HostLookup,
): Promise<DoctorCheck> {
  const name = `tls_domain ${domain}`;
  try {
    const addresses = await lookup(domain);
    if (addresses.length === 0) throw new Error("no addresses");
    return _ok(name, `resolves to ${addresses.slice(0, 4).join(", ")}`);
  } catch (e) {
    return _fail(
      name,
      `does not resolve: ${_message(e)}`,
      config.fronting.mode === "sni"
        ? "fronting by SNI dials this name: probers get nothing; use a real HTTPS site that your users can reach"
        : "a censor sees an SNI that does not exist: use a real HTTPS site that your users can reach",
    );
  }
}

/** What the fronting target of `domain` answers to a Chrome-like ClientHello; null when fronting is off. */
export async function checkFronting(
  domain: string,
  config: Config,
  timeoutMs = DEFAULT_DOCTOR_TIMEOUT_MS,
): Promise<DoctorCheck | null> {
  const mode = config.fronting.mode;
  if (mode === "off") return null;
  const target: HostPort = mode === "sni" ? { host: domain, port: 443 } : mode;
  const where = formatHostPort(target.host, target.port);
  const name = `fronting ${domain}`;
  try {
    const p = await measureTlsProfile(target.host, target.port, { sni: domain, timeoutMs });
    const group = p.keyShareGroup === 0x11ec
      ? "X25519MLKEM768"
      : p.keyShareGroup === 0x001d
      ? "X25519"
      : `group 0x${(p.keyShareGroup ?? 0).toString(16)}`;
    return _ok(
      name,
      `${where} answers TLS 1.3: suite 0x${
        p.cipherSuite.toString(16)
      }, ${group}, ${p.extensionOrder}, encrypted handshake records ${
        p.appDataSizes.join("+")
      } bytes`,
    );
  } catch (e) {
    return _fail(
      name,
      _message(e),
      `probers fronted to ${where} get no real site, and the fake-TLS answer falls back to a generic shape (tls.fake_cert_size): point fronting.mode at a site that serves TLS 1.3 for ${domain}`,
    );
  }
}

/** The DC ids direct mode is checked for: 1-5 and every overridden id. */
export function directDcIds(config: Config): number[] {
  const ids = new Set([1, 2, 3, 4, 5]);
  for (const id of config.telegram.dcAddresses.keys()) ids.add(id);
  return [...ids].sort((a, b) => (a < 0) === (b < 0) ? Math.abs(a) - Math.abs(b) : a < 0 ? 1 : -1);
}

/** Whether `config` talks to DCs directly (some listener, or a back not forced to middle). */
export function needsDirect(config: Config): boolean {
  if (config.role === "front") return false;
  if (config.role === "back") return config.telegram.mode !== "middle";
  return config.listeners.some((l) => !usesMiddleProxies(config, l));
}

function _dcName(id: number): string {
  return id < 0 ? `DC ${-id} media` : `DC ${id}`;
}

/** A DC answering `req_pq_multi` over obfuscated2, as the proxy reaches it in direct mode. */
export async function checkDirectDc(
  id: number,
  config: Config,
  timeoutMs = DEFAULT_DOCTOR_TIMEOUT_MS,
): Promise<DoctorCheck> {
  const route = routeDc(id, config.telegram);
  const name = `${_dcName(id)} (${formatHostPort(route.address.host, route.address.port)})`;
  const r = await pingDc({ ...route.address, secret: null }, route.dcId, { timeoutMs });
  if (r.ok) return _ok(name, `resPQ in ${r.answerMs} ms (connect ${r.connectMs} ms)`);
  return _fail(
    name,
    r.diagnosis ?? r.result,
    "direct mode needs outgoing TCP to Telegram's DCs on port 443: check the firewall and routes, or set telegram.prefer_ipv6 / telegram.dc_addresses",
  );
}

/** Telegram's proxy secret and middle-proxy list, as the configured URLs serve them. */
export async function checkTelegramConfig(
  config: Config,
  timeoutMs = DEFAULT_DOCTOR_TIMEOUT_MS,
): Promise<{ check: DoctorCheck; secret: Uint8Array | null; table: ProxyConfig | null }> {
  const t = config.telegram;
  const v6 = t.preferIpv6;
  const files = await fetchProxyFiles(
    {
      secretUrl: t.proxySecretUrl,
      configUrl: t.proxyConfigUrl,
      ...(v6 ? { configV6Url: t.proxyConfigV6Url } : {}),
    },
    { timeoutMs, retries: 0, userAgent: `mtproxy/${VERSION} (doctor)` },
  );
  const problems: string[] = [];
  let secret: Uint8Array | null = null;
  if (files.proxySecret.ok) {
    const p = parseProxySecret(files.proxySecret.value);
    if (p.ok) secret = p.secret;
    else problems.push(`${t.proxySecretUrl}: ${p.reason}`);
  } else problems.push(files.proxySecret.reason);
  const download = v6 && files.configV6 ? files.configV6 : files.configV4;
  let table: ProxyConfig | null = null;
  if (download.ok) {
    const p = parseProxyConfig(download.value);
    if (p.ok) table = p.config;
    else problems.push(`${download.url}: ${p.reason}`);
  } else problems.push(download.reason);
  const name = "Telegram config";
  if (secret && table) {
    return {
      check: _ok(
        name,
        `proxy secret (${secret.length} bytes) and middle-proxy list (${table.dcs.size} DCs) from ${download.url}`,
      ),
      secret,
      table,
    };
  }
  return {
    check: _fail(
      name,
      `${problems.join("; ")}; middle proxies not checked`,
      "the proxy then uses its cached or bundled copy, which goes stale: allow outgoing HTTPS to core.telegram.org (or fix telegram.proxy_secret_url / proxy_config_url)",
    ),
    secret: null,
    table: null,
  };
}

/** The RPC handshake with each middle proxy of one DC. */
export async function checkMiddleDc(
  id: number,
  addresses: readonly HostPort[],
  secret: Uint8Array,
  externalIp: string | null,
  config: Config,
  timeoutMs = DEFAULT_DOCTOR_TIMEOUT_MS,
): Promise<DoctorCheck> {
  const shown = addresses.map((a) => formatHostPort(a.host, a.port)).join(", ");
  const name = `middle proxy ${_dcName(id)} (${shown})`;
  const results = await Promise.all(addresses.map(async (address) => {
    const started = performance.now();
    try {
      const conn = await MiddleConnection.open(address, {
        proxySecret: secret,
        externalIp,
        connectTimeoutMs: timeoutMs,
        handshakeTimeoutMs: timeoutMs,
        pool: config.pool,
      });
      const ms = Math.round(performance.now() - started);
      conn.close();
      await conn.finished;
      return { ok: true as const, ms };
    } catch (e) {
      return { ok: false as const, why: _message(e) };
    }
  }));
  const failed = results.flatMap((r) => r.ok ? [] : [r.why]);
  if (failed.length === 0) {
    const ms = results.map((r) => r.ok ? `${r.ms} ms` : "").join(", ");
    return _ok(name, `RPC handshake in ${ms}`);
  }
  return _fail(
    name,
    failed.join("; "),
    /refused the handshake|handshake failed|closed/i.test(failed.join(" "))
      ? "the middle proxy refused our keys: check external_ip (behind NAT it must be the public address Telegram sees)"
      : "middle-proxy mode needs outgoing TCP to Telegram's middle proxies (port 8888): check the firewall",
  );
}

/** A front: each back's link port accepts TCP connections. */
async function _checkBack(address: HostPort, timeoutMs: number): Promise<DoctorCheck> {
  const name = `back ${formatHostPort(address.host, address.port)}`;
  const started = performance.now();
  try {
    const conn = await dialTcp(address.host, address.port, { timeoutMs });
    conn.close();
    return _ok(name, `connects in ${Math.round(performance.now() - started)} ms`);
  } catch (e) {
    return _fail(
      name,
      _message(e),
      "the back must be running and its link port open to this machine",
    );
  }
}

/**
 * Every check but the configuration's own (the caller loaded it), in report order. Never
 * rejects: each failure is a check.
 *
 * @example Usage
 * ```ts ignore
 * import { runDoctorChecks } from "./doctor.ts";
 * const checks = await runDoctorChecks(config, { timeoutMs: 3000 });
 * checks.every((c) => c.ok);
 * ```
 */
export async function runDoctorChecks(
  config: Config,
  options: DoctorOptions = {},
): Promise<DoctorCheck[]> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_DOCTOR_TIMEOUT_MS;
  const lookup = options.lookup ?? _defaultLookup;
  const present = (c: DoctorCheck | null): DoctorCheck[] => c === null ? [] : [c];
  const guarded = (name: string, f: () => Promise<DoctorCheck[]>): Promise<DoctorCheck[]> =>
    f().catch((e) => [_fail(name, `the check itself failed: ${_message(e)}`, "report this")]);

  const local: DoctorCheck[] = [checkLibcrypto()];
  local.push(...present(await checkOpenFiles(config, options.limitsPath)));
  for (const t of bindTargets(config)) local.push(await checkPort(t, config, timeoutMs));

  const middle = needsMiddleProxies(config);
  const wantIp = config.externalIp === null && (middle || config.publicHost !== null);
  const external = wantIp
    ? await _lookupExternalIp(config.ipLookupUrls, timeoutMs)
    : { ip: config.externalIp, url: "external_ip" };
  const ipChecks: DoctorCheck[] = !wantIp
    ? []
    : external.ip !== null
    ? [_ok("external IP", `${external.ip} (from ${"url" in external ? external.url : ""})`)]
    : [
      _fail(
        "external IP",
        `unknown: ${"why" in external ? external.why : ""}`,
        "set external_ip to this machine's public IPv4 address",
      ),
    ];

  const domains = [...new Set(imitatedSites(config).flatMap((l) => l.tlsDomains))];
  const groups: Promise<DoctorCheck[]>[] = [
    guarded("clock", async () => [
      await checkClock(options.clockUrl ?? defaultClockUrl(config), config, timeoutMs),
    ]),
    guarded(
      "public_host",
      async () => present(await checkPublicHost(config, { external: external.ip }, lookup)),
    ),
    ...domains.map((d) =>
      guarded(`tls_domain ${d}`, async () => [
        await checkDomainResolves(d, config, lookup),
        ...present(await checkFronting(d, config, timeoutMs)),
      ])
    ),
  ];
  if (needsDirect(config)) {
    groups.push(
      ...directDcIds(config).map((id) =>
        guarded(_dcName(id), async () => [await checkDirectDc(id, config, timeoutMs)])
      ),
    );
  }
  if (middle) {
    groups.push(guarded("Telegram config", async () => {
      const tg = await checkTelegramConfig(config, timeoutMs);
      if (tg.secret === null || tg.table === null) return [tg.check];
      const { secret, table } = tg;
      const ids = [...table.dcs.keys()].sort((a, b) =>
        (a < 0) === (b < 0) ? Math.abs(a) - Math.abs(b) : a < 0 ? 1 : -1
      );
      const dcs = await Promise.all(
        ids.map((id) =>
          checkMiddleDc(id, table.dcs.get(id) ?? [], secret, external.ip, config, timeoutMs)
        ),
      );
      return [tg.check, ...dcs];
    }));
  }
  for (const b of config.backs) {
    groups.push(guarded(`back`, async () => [await _checkBack(b.address, timeoutMs)]));
  }
  const network = (await Promise.all(groups)).flat();
  return [...local, ...ipChecks, ...network];
}

/**
 * The lines doctor prints for `checks`: `✔ name: detail`, or `✖ name: detail` and an
 * indented hint.
 *
 * @example Usage
 * ```ts
 * import { formatDoctorReport } from "./doctor.ts";
 * formatDoctorReport([{ name: "clock", ok: true, detail: "within a second" }]);
 * // ["✔ clock: within a second"]
 * ```
 */
export function formatDoctorReport(checks: readonly DoctorCheck[]): string[] {
  const lines: string[] = [];
  for (const c of checks) {
    lines.push(`${c.ok ? "✔" : "✖"} ${c.name}: ${c.detail}`);
    if (!c.ok && c.hint) lines.push(`    hint: ${c.hint}`);
  }
  return lines;
}

/** The configuration check: the resolved configuration and its line, or the failure lines. */
async function _loadConfig(
  values: ReturnType<typeof parseCommandArgs<typeof DOCTOR_OPTIONS>>["values"],
  env: Env,
): Promise<
  { resolved: ResolvedRunConfig; check: DoctorCheck; missingState: string | null } | {
    lines: string[];
  }
> {
  const parsed = runArgsFromValues(values);
  let resolved: ResolvedRunConfig;
  let missingState: string | null = null;
  try {
    try {
      resolved = await resolveRunConfig(parsed, env);
    } catch (e) {
      if (!(e instanceof StateFileError) || await readState(e.path) !== null) throw e;
      // No state file yet ("run" makes one): check the rest with a throwaway secret.
      missingState = e.path;
      const dir = await Deno.makeTempDir({ prefix: "mtproxy-doctor-" });
      try {
        const path = join(dir, "state.json");
        await writeState(path, { secret: generateSecret(), createdAt: new Date().toISOString() });
        resolved = await resolveRunConfig(parsed, { ...env, MTP_STATE_FILE: path });
      } finally {
        await Deno.remove(dir, { recursive: true }).catch(() => {});
      }
    }
  } catch (e) {
    if (e instanceof ConfigError) {
      return {
        lines: [
          `✖ configuration: ${e.problems.length} ${
            e.problems.length === 1 ? "problem" : "problems"
          }`,
          ...e.problems.map((p) => `    ${p}`),
          "    hint: fix them (mtproxy check-config FILE lists them too); nothing else was checked",
        ],
      };
    }
    if (e instanceof StateFileError) {
      return {
        lines: [
          `✖ configuration: ${e.message}`,
          "    hint: repair or delete the state file (deleting it makes a new secret: every link changes)",
        ],
      };
    }
    throw e;
  }
  const c = resolved.config;
  const count = (n: number, one: string) => `${n} ${one}${n === 1 ? "" : "s"}`;
  const parts = [
    `role ${c.role}`,
    c.role === "back"
      ? count(c.linkListeners.length, "link listener")
      : count(c.listeners.length, "listener"),
    ...(c.role === "front" ? [count(c.backs.length, "back")] : []),
  ];
  const state = !resolved.stateUsed
    ? ""
    : missingState !== null
    ? `; the state file ${missingState} does not exist yet ("mtproxy run" makes it)`
    : `; secret from the state file ${resolved.statePath}`;
  const source = resolved.configPath === null
    ? "no config file (defaults)"
    : `${resolved.configPath} is valid`;
  return {
    resolved,
    missingState,
    check: _ok("configuration", `${source}: ${parts.join(", ")}${state}`),
  };
}

/**
 * Run `mtproxy doctor`; returns the exit code (0: every check passed, 1: some failed, 2: a bad
 * command line).
 *
 * @example Usage
 * ```ts ignore
 * import { doctorCommand } from "./doctor.ts";
 * Deno.exit(await doctorCommand(["--config", "/etc/mtproxy/config.yaml"]));
 * ```
 */
export async function doctorCommand(args: string[]): Promise<number> {
  try {
    const { values } = parseCommandArgs(args, DOCTOR_OPTIONS);
    if (values.help) {
      console.log(DOCTOR_HELP);
      return 0;
    }
    let timeoutMs = DEFAULT_DOCTOR_TIMEOUT_MS;
    if (values.timeout !== undefined) {
      const s = Number(values.timeout);
      if (!/^\d+(\.\d+)?$/.test(values.timeout.trim()) || !(s > 0) || s > 3600) {
        throw new UsageError(
          `--timeout must be seconds, more than 0 and at most 3600: got ${
            JSON.stringify(values.timeout)
          }`,
        );
      }
      timeoutMs = Math.round(s * 1000);
    }
    const clockUrl = values["clock-url"];
    if (clockUrl !== undefined && !URL.canParse(clockUrl)) {
      throw new UsageError(`--clock-url must be a URL: got ${JSON.stringify(clockUrl)}`);
    }
    const loaded = await _loadConfig(values, Deno.env.toObject());
    if ("lines" in loaded) {
      for (const line of loaded.lines) console.log(line);
      return 1;
    }
    console.log(formatDoctorReport([loaded.check])[0]);
    for (const w of loaded.resolved.warnings) console.log(`    warning: ${w}`);
    const checks = await runDoctorChecks(loaded.resolved.config, {
      timeoutMs,
      ...(clockUrl !== undefined && { clockUrl }),
    });
    for (const line of formatDoctorReport(checks)) console.log(line);
    const failed = checks.filter((c) => !c.ok).length;
    console.log("");
    console.log(
      failed === 0
        ? `All ${checks.length + 1} checks passed`
        : `${failed} of ${checks.length + 1} checks failed`,
    );
    return failed === 0 ? 0 : 1;
  } catch (e) {
    return reportError("doctor", e);
  }
}
