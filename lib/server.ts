/**
 * Starts the listeners and runs a session per accepted client; owns the timers that enforce
 * handshake and idle timeouts, and the graceful shutdown.
 *
 * @module
 */
import { logger } from "./ops/log.ts";
import { reportUnexpected } from "./ops/last_resort.ts";
import type {
  Config,
  FrontCredential,
  ListenerConfig,
  PolicyConfig,
  SharedStateConfig,
  UserConfig,
} from "./config/types.ts";
import { closeQuietly, formatHostPort, type Listener, listenTcp } from "./net.ts";
import type { EventSink, ProxyEvent } from "./client/events.ts";
import { Session, type SessionContext, type SessionGuard } from "./client/session.ts";
import { defaultCipherBackend, openSslLoadError, randomInt } from "./crypto.ts";
import { acceptAllReplays, createReplayCache, type ReplayCache } from "./guard/replay.ts";
import { frontableSnis, isOwnAddress, localIpAddresses } from "./guard/fronting.ts";
import {
  fakeCertSize,
  type RefreshTarget,
  type TlsProfile,
  TlsProfileStore,
} from "./guard/tls_profile.ts";
import { GROUP_X25519, GROUP_X25519_MLKEM768 } from "./protocol/fake_tls.ts";
import { MiddleProxies, usesMiddleProxies } from "./telegram/middle_proxies.ts";
import { LocalTelegram } from "./telegram/local.ts";
import type { TelegramSide } from "./telegram/side.ts";
import { type BackStats, type BoundLinkListener, LinkServer } from "./link/back.ts";
import { type BackLinkStats, LinkTelegram } from "./link/front.ts";
import { TelegramConfigStore } from "./telegram/proxy_config.ts";
import type { TelegramConfigSource } from "./telegram/middle_proxies.ts";
import { VERSION } from "./version.ts";
import { Metrics, type MetricsSnapshot, type MetricsTotals } from "./ops/metrics.ts";
import { ConnectionPolicy, createMemoryCounts, ipKey, parseIp16 } from "./guard/policy.ts";
import { connectRedisState, type RedisState } from "./guard/redis_state.ts";
import type { WorkerCounts } from "./workers/shared.ts";
import { UserDirectory } from "./guard/users.ts";
import {
  createUserLedger,
  ledgerSizeFor,
  openUserLedger,
  USAGE_FILE_NAME,
  usageOf,
  UsageStore,
  USER_IP_TOUCH_MS,
  type UserLedger,
  type UserUsage,
} from "./guard/quota.ts";
import { join } from "node:path";
import { bytesEqual } from "./protocol/bytes.ts";
import { planReload, sameValue } from "./config/reload.ts";

/** Deadline of each download from core.telegram.org (the Erlang proxy's value). */
const CORE_API_TIMEOUT_MS = 3000;

const log = logger("server");

/** Counters kept by the server, readable at any time. */
export interface ServerStats extends MetricsTotals {
  /** Connections open now, in any phase. */
  active: number;
}

/** A running proxy. */
export interface ServerHandle {
  /** Where each listener is bound (port resolved when 0 was configured); a reload changes it. */
  readonly addresses: readonly { name: string; host: string; port: number }[];
  /** The configuration in force: the start's, then each reload's (ports resolved). */
  readonly config: Config;
  /**
   * Bind these listeners now, without accepting yet: a later {@linkcode reconfigure} naming
   * them (same name, host and port) takes the sockets, so that every worker can bind before
   * any applies a reload. Throws, keeping nothing, when one cannot be bound; returns where
   * each is bound (port 0 resolved).
   */
  listen(listeners: readonly ListenerConfig[]): { name: string; host: string; port: number }[];
  /** Close what {@linkcode listen} bound and no reload took. */
  unlisten(): void;
  /**
   * Run with `next` from now on (a reload; keys that cannot change live must already hold
   * their running values: see lib/config/reload.ts). New listeners open, removed ones stop
   * accepting (their clients stay until they end), changed ones keep their socket; clients the
   * new configuration refuses are closed ("policy" for the policy's lists, else "reloaded"),
   * the others are untouched. Throws, changing nothing, when a new listener cannot be bound.
   */
  reconfigure(next: Config): ReconfigureResult;
  /** A back: where each link listener is bound (empty in other roles). */
  readonly linkAddresses: readonly BoundLinkListener[];
  /**
   * A back: the fronts allowed from now on; links of fronts no longer listed are closed.
   * Returns how many links were closed (0 in other roles).
   */
  updateFronts(fronts: readonly FrontCredential[]): number;
  /**
   * Swap in new users (and each listener's `users` list, by listener name); clients of users
   * that are gone, disabled, expired, have a new secret or lost the listener are closed with
   * reason "reloaded", the others are untouched. Returns how many were closed.
   */
  updateUsers(
    users: readonly UserConfig[],
    listenerUsers: ReadonlyMap<string, readonly string[] | null>,
  ): number;
  /** Links up: a front's to its backs, a back's from its fronts (0 standalone). */
  linksUp(): number;
  /** A front: links per back and how they ended (empty in other roles). */
  backLinks(): readonly BackLinkStats[];
  /** A back: links, streams and held answer bytes per front (null in other roles). */
  frontLinks(): BackStats | null;
  /** Stop accepting, give live clients the grace period, then close the rest. */
  shutdown(): Promise<void>;
  /** As shutdown, with `timeouts.drain` for live clients (an upgrade took the ports). */
  drain(): Promise<void>;
  /** Resolves once shutdown has finished. */
  readonly closed: Promise<void>;
  /** A snapshot of the counters. */
  stats(): ServerStats;
  /** Each user's connections here, unique addresses, bytes used and quota left. */
  userUsage(): UserUsage[];
  /** Fetch Telegram's middle-proxy config now (no-op without middle-proxy mode). */
  refreshTelegramConfig(): Promise<void>;
  /** Live middle-proxy connections (0 without middle-proxy mode). */
  middleConnections(): number;
  /**
   * Apply new policy rules; clients that the new lists refuse are closed (reason "policy").
   * Returns how many were closed.
   */
  updatePolicy(policy: PolicyConfig): number;
  /** Where metrics are served (port resolved when 0 was configured); null when not served. */
  readonly metricsAddress: { host: string; port: number } | null;
  /** The metrics exposition, as `GET /metrics` serves it. */
  metricsText(): string;
  /** Middle-proxy pool counters summed over DCs (zeros without middle-proxy mode). */
  middleStats(): {
    connections: number;
    clients: number;
    sending: number;
    migrated: number;
    closedMidSend: number;
  };
}

/** What {@linkcode ServerHandle.reconfigure} did. */
export interface ReconfigureResult {
  /** Clients closed as "reloaded" (their user, secret, protocol or SNI is refused now). */
  readonly reloaded: number;
  /** Clients closed by the new policy's lists ("policy"). */
  readonly policy: number;
  /** A back: links of fronts no longer allowed that were closed. */
  readonly fronts: number;
}

/** Options for {@linkcode startServer}. */
export interface StartServerOptions {
  /** Also receives every session event (tests use it). */
  events?: EventSink;
  /** Where the last good copies of Telegram's middle-proxy config are kept. */
  cacheDir?: string;
  /** Listen with SO_REUSEPORT, so that other workers or the next process share the ports. */
  reusePort?: boolean;
  /** Telegram's config from whoever fetches it for every worker; by default loaded here. */
  telegram?: TelegramConfigFeed;
  /**
   * The fronted sites' TLS profiles, measured by whoever owns them for every worker; by
   * default measured here.
   */
  profiles?: TlsProfileStore;
  /** A replay cache shared with other workers; by default one of this server's own. */
  replay?: ReplayCache;
  /** A back's instance id, the same in every worker of a process. @default random */
  instance?: Uint8Array;
  /** Connection counts shared with other workers (max_connections and policy limits). */
  counts?: WorkerCounts;
  /**
   * Users' bytes used, addresses seen and bandwidth buckets, shared with other workers (whose
   * supervisor persists them); by default this server's own.
   */
  ledger?: UserLedger;
  /**
   * Where this server's own ledger persists the users' usage; null: nowhere.
   * @default {`mtproxy-usage.json` in `cacheDir` (the state file's directory), else null}
   */
  usageFile?: string | null;
}

function _logEvent(e: ProxyEvent): void {
  switch (e.type) {
    case "accepted":
      log.debug("{listener}: accepted {peer}", e);
      break;
    case "rejected":
      if (e.reason === "fronting_loop") {
        log.error(
          "{listener}: {peer} not fronted: the fronting target is this proxy; check fronting.mode",
          e,
        );
      } else if (e.reason === "bad_proxy_header") {
        log.warn(
          "{listener}: {peer} closed: {detail}; with proxy_protocol on, every connection must come through a balancer that sends the PROXY protocol",
          { ...e, detail: e.detail ?? "" },
        );
      } else if (e.reason === "dc_unreachable" || e.reason === "dc_timeout") {
        log.warn("{listener}: {peer} closed: Telegram DC not reachable ({reason}: {detail})", {
          ...e,
          detail: e.detail ?? "",
        });
      } else {
        log.info("{listener}: {peer} refused: {reason}{detail}", {
          ...e,
          detail: e.detail ? ` (${e.detail})` : "",
        });
      }
      break;
    case "established": {
      const who = e.user === undefined ? "" : ` (user ${e.user})`;
      if (e.requestedDc !== e.dc) {
        log.info(
          "{listener}: {peer}{who} asked for unknown DC {requestedDc}; using default DC {dc} at {dcAddress}",
          { ...e, who },
        );
      } else {
        log.debug(
          "{listener}: {peer}{who} relayed to DC {dc} at {dcAddress} ({protocol}, {transport})",
          { ...e, who },
        );
      }
      break;
    }
    case "fronted":
      log.info("{listener}: {peer} fronted to {target} ({reason})", e);
      break;
    case "closed":
      if (e.reason === "internal_error") {
        log.warn(
          "{listener}: {peer} closed after an internal error ({detail}); other clients are unaffected",
          { ...e, detail: e.detail ?? "" },
        );
        break;
      }
      if (e.reason === "user_quota") {
        log.info("{listener}: {peer} closed: user_quota (user {user} used up its data_quota)", {
          ...e,
          user: e.user ?? "",
        });
        break;
      }
      if (e.reason === "bad_frame") {
        log.info(
          "{listener}: {peer} closed: it sent a frame its transport does not allow ({detail})",
          {
            ...e,
            detail: e.detail ?? "",
          },
        );
        break;
      }
      log.debug(
        "{listener}: {peer} closed: {reason} after {durationMs} ms, {bytesFromClient} B up, {bytesToClient} B down",
        e,
      );
      break;
  }
}

/**
 * Bind every listener of `config` and serve clients until {@linkcode ServerHandle.shutdown}.
 * Fails (closing what it opened) when a listener cannot be bound.
 */
export async function startServer(
  config: Config,
  options: StartServerOptions = {},
): Promise<ServerHandle> {
  // Users' usage: shared by the workers' supervisor, or this server's own, read from its file.
  let store: UsageStore | null = null;
  if (!options.ledger) {
    const ledger = openUserLedger(createUserLedger(ledgerSizeFor(config.users)));
    options = { ...options, ledger };
    const path = options.usageFile === undefined
      ? (options.cacheDir ? join(options.cacheDir, USAGE_FILE_NAME) : null)
      : options.usageFile;
    if (path !== null) {
      store = new UsageStore(path, ledger, { warn: (m) => log.warn("{message}", { message: m }) });
      await store.load();
    }
  }
  const middle = needsMiddleProxies(config) ? await _startMiddle(config, options) : null;
  try {
    const handle = _start(config, options, middle, store);
    store?.start();
    return handle;
  } catch (e) {
    await middle?.stop();
    throw e;
  }
}

interface _Middle {
  proxies: MiddleProxies;
  refresh(): Promise<void>;
  stop(): Promise<void>;
}

/** Telegram's middle-proxy config and our public IP, as the pools need them. */
export interface TelegramConfigFeed {
  readonly source: TelegramConfigSource;
  /** Our public IPv4; null: each connection's local address. */
  readonly externalIp: string | null;
  /** Fetch the config now (SIGHUP); resolves when done, never rejects. */
  refresh(): Promise<void>;
  /** Stop refreshing. */
  stop(): void;
}

/**
 * Load Telegram's config (network, cache or bundled), find our public IP, and refresh the
 * config every `telegram.refresh_interval`: done once per process, whatever the worker count.
 */
export async function loadTelegramConfig(
  config: Config,
  options: { cacheDir?: string } = {},
): Promise<TelegramConfigFeed> {
  const t = config.telegram;
  const store = new TelegramConfigStore(
    {
      secretUrl: t.proxySecretUrl,
      configUrl: t.proxyConfigUrl,
      ...(t.preferIpv6 ? { configV6Url: t.proxyConfigV6Url } : {}),
    },
    {
      timeoutMs: CORE_API_TIMEOUT_MS,
      retries: 2,
      userAgent: `mtproxy/${VERSION}`,
      ...(options.cacheDir ? { cacheDir: options.cacheDir } : {}),
    },
  );
  const loaded = await store.load();
  for (const p of loaded.problems) log.warn("Telegram config: {problem}", { problem: p });
  const src = loaded.snapshot.sources;
  log.info("Telegram config: proxy secret from {secret}, middle proxies from {list} ({n} DCs)", {
    secret: src.proxySecret,
    list: src.configV4,
    n: loaded.snapshot.configV4.dcs.size,
  });
  let externalIp = config.externalIp;
  if (externalIp === null) {
    externalIp = await _lookupExternalIp(config.ipLookupUrls, CORE_API_TIMEOUT_MS);
    if (externalIp) log.info("External IP (from an IP-echo service): {ip}", { ip: externalIp });
    else {
      log.warn(
        "External IP unknown (set external_ip): using each connection's local address, which breaks behind NAT",
      );
    }
  }
  const refreshNow = () =>
    store.refresh().then((r) => {
      for (const p of r.problems) log.warn("Telegram config refresh: {problem}", { problem: p });
      if (r.change) log.info("Telegram config refreshed: middle-proxy list or secret changed");
    }, (e) => log.warn("Telegram config refresh failed: {error}", { error: String(e) }));
  const timer = setInterval(refreshNow, t.refreshIntervalMs);
  return {
    source: store,
    externalIp,
    refresh: refreshNow,
    stop: () => clearInterval(timer),
  };
}

/** Whether a server with `config` talks to Telegram's middle proxies (and needs their config). */
export function needsMiddleProxies(config: Config): boolean {
  if (config.role === "front") return false;
  // A back cannot know which fronts send an ad tag: unless direct mode is forced, be ready.
  return config.role === "back"
    ? config.telegram.mode !== "direct"
    : config.listeners.some((l) => usesMiddleProxies(config, l)) ||
      config.users.some((u) => u.tag !== null && usesMiddleProxies(config, u));
}

/** Middle-proxy mode: the pools, on Telegram's config from `feed` (or loaded here). */
async function _startMiddle(
  config: Config,
  options: StartServerOptions,
): Promise<_Middle> {
  const own = options.telegram ? null : await loadTelegramConfig(config, options);
  const feed = options.telegram ?? own!;
  const proxies = new MiddleProxies({
    config,
    source: feed.source,
    externalIp: feed.externalIp,
    events: {
      connected: (dc, conn) =>
        log.info("DC {dc}: middle proxy {address} connected (#{id})", {
          dc,
          address: formatHostPort(conn.address.host, conn.address.port),
          id: conn.id,
        }),
      connectFailed: (dc, address, error, retryInMs) =>
        log.warn("DC {dc}: middle proxy {address} failed: {error}; retrying in {ms} ms", {
          dc,
          address: formatHostPort(address.host, address.port),
          error,
          ms: retryInMs,
        }),
      disconnected: (dc, conn, error, moved, closed) =>
        log.info(
          "DC {dc}: middle proxy connection #{id} closed{why}: {moved} idle clients moved, {closed} closed mid-send",
          { dc, id: conn.id, why: error ? ` (${error})` : "", moved, closed },
        ),
    },
  });
  proxies.warm();
  return {
    proxies,
    refresh: feed.refresh,
    stop() {
      own?.stop();
      return proxies.close();
    },
  };
}

/** A front: the links to its backs, dialled now, logged as they come and go. */
function _startFrontLinks(config: Config): LinkTelegram {
  const linkLog = logger("link");
  const links = new LinkTelegram(config, {
    up: (back, link, instance, restarted) =>
      linkLog.info("Back {back}: link {link} up{restarted}", {
        back,
        link,
        instance,
        restarted: restarted ? " (the back restarted since the last link)" : "",
      }),
    down: (back, link, end, detail, streams) => {
      const fields = { back, link, end, detail: detail ? `: ${detail}` : "", streams };
      const line =
        "Back {back}: link {link} lost ({end}{detail}); {streams} clients closed (link_lost)";
      if (end === "integrity" || end === "protocol_error") linkLog.warn(line, fields);
      else linkLog.info(line, fields);
    },
    dialFailed: (back, link, error, ms) =>
      linkLog.warn("Back {back}: link {link} failed: {error}; retrying in {ms} ms", {
        back,
        link,
        error,
        ms,
      }),
    goaway: (back, link, graceMs) =>
      linkLog.info("Back {back}: link {link} is going away (grace {ms} ms); redialling", {
        back,
        link,
        ms: graceMs,
      }),
  }, (message) => linkLog.warn(message));
  links.start();
  return links;
}

/** Ask IP-echo services, in order, for our public IPv4; null when none answers. */
async function _lookupExternalIp(urls: readonly string[], timeoutMs: number) {
  for (const url of urls) {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
      const text = (await res.text()).trim();
      if (res.ok && /^\d{1,3}(\.\d{1,3}){3}$/.test(text)) return text;
    } catch {
      // Next one.
    }
  }
  return null;
}

function _start(
  config: Config,
  options: StartServerOptions,
  middle: _Middle | null,
  store: UsageStore | null,
): ServerHandle {
  const backend = defaultCipherBackend();
  if (backend === "openssl") {
    log.debug("AES backend: OpenSSL libcrypto via FFI");
  } else {
    log.warn("AES backend: node:crypto (about 10x slower); OpenSSL not loaded: {error}", {
      error: openSslLoadError(),
    });
  }

  // The counters live in Metrics, per listener; stats() sums them.
  const metrics = new Metrics(config.listeners.map((l) => l.name), VERSION, Date.now());
  const sink: EventSink = {
    emit(e) {
      // A broken counter or sink must not break sessions.
      try {
        metrics.observe(e);
      } catch (err) {
        reportUnexpected("Metrics failed to count an event", err);
      }
      try {
        _logEvent(e);
        options.events?.emit(e);
      } catch (err) {
        reportUnexpected("Event sink failed", err);
      }
    },
  };

  // The configuration in force: a reload swaps it (sessions read it through their context).
  let current = config;
  const reusePort = options.reusePort ?? false;
  /** Bind every one of `list`, or none (throws naming the one that failed). */
  const bindAll = (list: readonly ListenerConfig[]) => {
    const out = new Map<string, Listener>();
    for (const l of list) {
      try {
        out.set(l.name, listenTcp(l.host, l.port, { reusePort }));
      } catch (e) {
        for (const socket of out.values()) closeQuietly(socket);
        const why = e instanceof Error ? e.message : String(e);
        throw new Error(`Cannot listen on ${formatHostPort(l.host, l.port)} (${l.name}): ${why}`);
      }
    }
    return out;
  };
  const portOf = (socket: Listener) => (socket.addr as Deno.NetAddr).port;
  const initial = bindAll(config.listeners);
  const bound = [...initial.values()];
  /** One listener by name: its settings now, and the socket accepting for it. */
  interface Entry {
    config: ListenerConfig;
    socket: Listener;
    ctx: SessionContext | null;
  }
  const entries = new Map<string, Entry>();
  for (const l of config.listeners) {
    const socket = initial.get(l.name)!;
    entries.set(l.name, { config: { ...l, port: portOf(socket) }, socket, ctx: null });
  }
  current = { ...config, listeners: config.listeners.map((l) => entries.get(l.name)!.config) };
  // Bound by listen() ahead of a reload (workers), by name.
  const pending = new Map<string, Listener>();
  let addresses = current.listeners.map((l) => ({ name: l.name, host: l.host, port: l.port }));
  // The handler runs only once requests arrive, after everything below is set up.
  const metricsText = () =>
    metrics.render({
      ..._metricsSnapshot(sessions, middle, guard.replaySize()),
      users: { usage: userUsage(), pauses: ledger.pauses },
      ...(fleet
        ? { sharedState: { up: fleet.state.available, localDecisions: fleet.localDecisions } }
        : {}),
      ...(links ? { backs: links.stats() } : {}),
      ...(linkServer ? { fronts: linkServer.stats() } : {}),
    });
  let metricsHttp: MetricsEndpoint | null = null;
  if (config.metrics.listen) {
    try {
      metricsHttp = serveMetrics(config.metrics.listen, metricsText);
    } catch (e) {
      for (const b of bound) closeQuietly(b);
      const { host, port } = config.metrics.listen;
      const why = e instanceof Error ? e.message : String(e);
      throw new Error(`Cannot listen on ${formatHostPort(host, port)} (metrics): ${why}`);
    }
  }
  const local = config.role === "front"
    ? null
    : new LocalTelegram(config, middle?.proxies ?? null, {
      directWindowBytes: config.link.windowBytes,
    });
  const links = config.role === "front" ? _startFrontLinks(config) : null;
  const telegram: TelegramSide = links ?? local!;
  // A back: link listeners instead of client listeners (config.listeners is empty).
  let linkServer: LinkServer | null = null;
  let linkAddresses: BoundLinkListener[] = [];
  // The policy's limits as last reloaded: a fleet counts against them too.
  let policyRules = config.policy;
  const fleet = config.sharedState ? _connectFleet(config.sharedState, () => policyRules) : null;
  const guard = _guard(config, options, () => [...addresses, ...linkAddresses], fleet);
  if (config.role === "back") {
    linkServer = new LinkServer({
      config,
      telegram: local!,
      guard: guard.session,
      reusePort: options.reusePort ?? false,
      ...(options.instance ? { instance: options.instance } : {}),
    });
    try {
      linkAddresses = linkServer.listen();
    } catch (e) {
      for (const b of bound) closeQuietly(b);
      metricsHttp?.stop().catch(() => {});
      guard.stop().catch(() => {});
      throw e;
    }
  }
  const sessions = new Set<Session>();
  // Workers count connections together (shared memory); alone, in this thread.
  const counts = options.counts;
  const policy = new ConnectionPolicy(
    config.policy,
    counts ? { ipCounts: counts.ips, sniCounts: counts.snis } : {},
  );
  const listenerCounts = counts?.listeners ?? createMemoryCounts();
  const userCounts = counts?.users ?? createMemoryCounts();
  const ledger = options.ledger!;
  ledger.onSpill = (name) =>
    log.warn(
      "User {name} and any added after: more users than the limits' shared memory was sized for at start; their limits count in each worker apart (restart to share them again)",
      { name },
    );
  const directoryOf = (list: readonly UserConfig[], listeners: readonly ListenerConfig[]) =>
    list.length > 0 ? new UserDirectory(list, listeners, userCounts, ledger) : null;
  // A connected client's address keeps counting under its user's max_unique_ips.
  const touching = setInterval(() => {
    const now = Date.now();
    for (const s of sessions) {
      const u = s.user;
      if (u !== null && u.maxUniqueIps > 0 && s.phase !== "done") {
        users?.stillUsing(u.name, s.clientIp, now);
      }
    }
  }, USER_IP_TOUCH_MS);
  const userUsage = (): UserUsage[] => {
    const now = Date.now();
    const live = new Map<string, number>();
    for (const s of sessions) {
      const u = s.user;
      if (u !== null && s.phase !== "done") live.set(u.name, (live.get(u.name) ?? 0) + 1);
    }
    return usageOf(users?.all ?? [], ledger, now, (name) => live.get(name) ?? 0);
  };
  let users = directoryOf(config.users, config.listeners);
  // Resolves a shutdown waiting for the last session (set only while one waits).
  let drainedNow: (() => void) | null = null;
  let accepting = true;

  // One timer for all sessions: per-connection timers would cost memory on every idle client.
  // A reload that changes the timeouts sets it again.
  const tickOf = (t: Config["timeouts"]) =>
    Math.max(50, Math.min(1000, t.handshakeMs / 4, t.idleMs / 4));
  let tickMs = tickOf(config.timeouts);
  const sweep = () => {
    const now = Date.now();
    const { handshakeMs, idleMs } = current.timeouts;
    for (const s of sessions) {
      if (s.phase === "handshake" && now - s.startedAt > handshakeMs) {
        s.abort("timeout");
      } else if (s.phase === "relay" && now - s.lastActivity > idleMs) {
        s.abort("idle");
      }
    }
  };
  let sweeper = setInterval(sweep, tickMs);

  /** What every session of a listener reads: its settings and the configuration, as they are now. */
  const contextOf = (entry: Entry): SessionContext => {
    const name = entry.config.name;
    return {
      get listener() {
        return entry.config;
      },
      get config() {
        return current;
      },
      events: sink,
      guard: guard.session,
      telegram,
      policy,
      // Read at each handshake: a reload swaps the directory.
      get users() {
        return users;
      },
      onDone(session) {
        session.ipSlot?.release();
        sessions.delete(session);
        listenerCounts.release(name);
        if (sessions.size === 0) drainedNow?.();
      },
    };
  };

  async function acceptLoop(entry: Entry, socket: Listener): Promise<void> {
    const ctx = entry.ctx ??= contextOf(entry);
    const l = { name: entry.config.name };
    /** Whether this socket is still the one its listener accepts on (a reload may close it). */
    const open = () => accepting && entry.socket === socket;
    const admit = (conn: Deno.TcpConn) => {
      metrics.accepted(l.name);
      // The connection limit and the address rules cost nothing to check: refuse at once.
      const remote = conn.remoteAddr as Deno.NetAddr;
      // Behind a balancer (proxy_protocol) the session applies the address rules to the client
      // its PROXY header names.
      const counted = listenerCounts.tryAcquire(l.name, current.maxConnections);
      const slot = !counted
        ? "too_many_connections"
        : entry.config.proxyProtocol
        ? null
        : policy.admitIp(remote.hostname);
      if (typeof slot === "string") {
        if (counted) listenerCounts.release(l.name);
        closeQuietly(conn);
        const peer = `${remote.hostname}:${remote.port}`;
        sink.emit({ type: "rejected", listener: l.name, peer, reason: slot });
        return;
      }
      const session = new Session(conn, ctx);
      session.ipSlot = slot;
      sink.emit({ type: "accepted", listener: l.name, peer: session.peer });
      sessions.add(session);
      session.start();
    };
    while (open()) {
      let conn: Deno.TcpConn;
      try {
        conn = await socket.accept();
      } catch (e) {
        if (!open() || e instanceof Deno.errors.BadResource) return;
        // Out of file descriptors and the like: log, breathe, keep serving.
        log.error("{listener}: accept failed: {error}", { listener: l.name, error: String(e) });
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      if (!open()) {
        // Accepted as a reload closed this socket: the listener's other socket (or none) serves.
        closeQuietly(conn);
        return;
      }
      try {
        admit(conn);
      } catch (e) {
        // A bug in admitting one connection must not stop this listener.
        reportUnexpected(`${l.name}: admitting a connection failed`, e);
        closeQuietly(conn);
      }
    }
  }

  const loops = new Set<Promise<void>>();
  const startLoop = (entry: Entry) => {
    const loop = acceptLoop(entry, entry.socket);
    loops.add(loop);
    loop.finally(() => loops.delete(loop));
  };
  for (const entry of entries.values()) startLoop(entry);

  /** Apply `next` (see ServerHandle.reconfigure). */
  function reconfigure(next: Config): ReconfigureResult {
    const before = current;
    const plan = planReload(before, next);
    const opening = [...plan.added, ...plan.moved];
    // Bind first: when one cannot be bound, nothing has changed yet.
    const taken = new Map<string, Listener>();
    const unbound: ListenerConfig[] = [];
    for (const l of opening) {
      const ready = pending.get(l.name);
      const addr = ready?.addr as Deno.NetAddr | undefined;
      if (ready && addr && (l.port === 0 || addr.port === l.port)) {
        taken.set(l.name, ready);
        pending.delete(l.name);
      } else unbound.push(l);
    }
    let fresh: Map<string, Listener>;
    try {
      fresh = bindAll(unbound);
    } catch (e) {
      for (const [name, socket] of taken) pending.set(name, socket);
      throw e;
    }
    for (const [name, socket] of fresh) taken.set(name, socket);
    const withPort = (l: ListenerConfig) => {
      const socket = taken.get(l.name);
      return socket ? { ...l, port: portOf(socket) } : l;
    };
    current = { ...plan.config, listeners: plan.config.listeners.map(withPort) };
    const oldListeners = new Map(before.listeners.map((l) => [l.name, l]));

    for (const l of plan.removed) {
      const entry = entries.get(l.name);
      if (!entry) continue;
      entries.delete(l.name);
      closeQuietly(entry.socket);
      const n = [...sessions].filter((s) => s.phase !== "done" && s.listenerName === l.name).length;
      log.info(
        "{listener}: removed; no longer accepting on {address}; its {n} clients stay until they end",
        { listener: l.name, address: formatHostPort(l.host, l.port), n },
      );
    }
    for (const l of current.listeners) {
      const entry = entries.get(l.name);
      const socket = taken.get(l.name);
      if (entry) {
        // Updated in place (or moved: the old socket stops accepting, the new one takes over).
        entry.config = l;
        if (socket) {
          const old = entry.socket;
          entry.socket = socket;
          closeQuietly(old);
          startLoop(entry);
          log.info("{listener}: moved to {address}", {
            listener: l.name,
            address: formatHostPort(l.host, l.port),
          });
        }
      } else if (socket) {
        const added: Entry = { config: l, socket, ctx: null };
        entries.set(l.name, added);
        startLoop(added);
        log.info("{listener}: added, listening on {address}", {
          listener: l.name,
          address: formatHostPort(l.host, l.port),
        });
      }
    }
    addresses = current.listeners.map((l) => ({ name: l.name, host: l.host, port: l.port }));
    guard.reconfigure(current);
    const tick = tickOf(current.timeouts);
    if (tick !== tickMs) {
      tickMs = tick;
      clearInterval(sweeper);
      sweeper = setInterval(sweep, tickMs);
    }
    const policyChanged = !sameValue(before.policy, current.policy);
    if (policyChanged) {
      policy.update(current.policy);
      policyRules = current.policy;
    }
    const usersChanged = !sameValue(before.users, current.users) ||
      !sameValue(
        before.listeners.map((l) => [l.name, l.users]),
        current.listeners.map((l) => [l.name, l.users]),
      );
    if (usersChanged) users = directoryOf(current.users, current.listeners);
    const byName = new Map(current.users.map((u) => [u.name, u]));
    const perSniChanged = before.perSniSecrets !== current.perSniSecrets ||
      before.perSniSalt !== current.perSniSalt;
    const now = Date.now();
    let reloaded = 0;
    let denied = 0;
    for (const s of sessions) {
      if (s.phase === "done") continue;
      const sni = s.sni;
      if (
        policyChanged && (policy.deniesIp(s.clientIp) || (sni !== null && policy.deniesSni(sni)))
      ) {
        s.abort("policy");
        denied++;
        continue;
      }
      const l = entries.get(s.listenerName)?.config;
      const was = oldListeners.get(s.listenerName);
      const held = s.user;
      let keeps = true;
      if (held !== null && usersChanged) {
        keeps = _userKept(held, byName.get(held.name), l === undefined ? undefined : l.users, now);
      }
      const protocol = s.protocol;
      // Clients of a removed listener drain: only their user can cut them.
      if (keeps && protocol !== null && l !== undefined && was !== undefined) {
        keeps = l.allowedProtocols.includes(protocol) &&
          (protocol !== "tls" || current.perSniSecrets || sni === null ||
            l.tlsDomains.includes(sni)) &&
          (held !== null ||
            (bytesEqual(was.secret, l.secret) && (protocol !== "tls" || !perSniChanged)));
      }
      if (!keeps) {
        s.abort("reloaded");
        reloaded++;
      }
    }
    const fronts = sameValue(before.fronts, current.fronts)
      ? 0
      : linkServer?.updateFronts(current.fronts) ?? 0;
    return { reloaded, policy: denied, fronts };
  }

  let resolveClosed!: () => void;
  const closed = new Promise<void>((r) => (resolveClosed = r));
  let shuttingDown: Promise<void> | null = null;

  async function shutdown(graceMs: number): Promise<void> {
    accepting = false;
    for (const entry of entries.values()) closeQuietly(entry.socket);
    for (const socket of pending.values()) closeQuietly(socket);
    pending.clear();
    await Promise.all([...loops]);
    if (sessions.size > 0) {
      log.info("Shutting down: waiting up to {ms} ms for {n} clients", {
        ms: graceMs,
        n: sessions.size,
      });
      const drained = new Promise<void>((r) => (drainedNow = r));
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([drained, new Promise((r) => (timer = setTimeout(r, graceMs)))]);
      clearTimeout(timer);
      for (const s of sessions) s.abort("shutdown");
      await drained;
      drainedNow = null;
    }
    clearInterval(sweeper);
    clearInterval(touching);
    // Every client has ended: what they used is final, and written now.
    await store?.stop();
    await linkServer?.shutdown(graceMs);
    await links?.close();
    await metricsHttp?.stop();
    await guard.stop();
    await fleet?.state.close();
    await middle?.stop();
    resolveClosed();
  }

  return {
    get addresses() {
      return addresses;
    },
    get config() {
      return current;
    },
    listen(list) {
      const got = bindAll(list);
      for (const [name, socket] of got) {
        const old = pending.get(name);
        if (old) closeQuietly(old);
        pending.set(name, socket);
      }
      return list.map((l) => ({ name: l.name, host: l.host, port: portOf(got.get(l.name)!) }));
    },
    unlisten() {
      for (const socket of pending.values()) closeQuietly(socket);
      pending.clear();
    },
    reconfigure,
    linkAddresses,
    closed,
    stats: () => ({ ...metrics.totals(), active: sessions.size }),
    userUsage,
    updatePolicy(rules) {
      policy.update(rules);
      policyRules = rules;
      let closed = 0;
      for (const s of sessions) {
        if (s.phase === "done") continue;
        const sni = s.sni;
        if (policy.deniesIp(s.clientIp) || (sni !== null && policy.deniesSni(sni))) {
          s.abort("policy");
          closed++;
        }
      }
      return closed;
    },
    updateUsers(list, listenerUsers) {
      const listeners = current.listeners.map((l) => ({
        ...l,
        users: listenerUsers.has(l.name) ? listenerUsers.get(l.name)! : l.users,
      }));
      users = directoryOf(list, listeners);
      const byName = new Map(list.map((u) => [u.name, u]));
      const now = Date.now();
      let closed = 0;
      for (const s of sessions) {
        const held = s.user;
        if (s.phase === "done" || held === null) continue;
        const allowed = listeners.find((l) => l.name === s.listenerName)?.users;
        if (!_userKept(held, byName.get(held.name), allowed, now)) {
          s.abort("reloaded");
          closed++;
        }
      }
      return closed;
    },
    updateFronts: (fronts) => linkServer?.updateFronts(fronts) ?? 0,
    linksUp: () => links?.linksUp ?? linkServer?.linkCount ?? 0,
    backLinks: () => links?.stats() ?? [],
    frontLinks: () => linkServer?.stats() ?? null,
    metricsAddress: metricsHttp?.address ?? null,
    metricsText,
    shutdown: () => (shuttingDown ??= shutdown(current.timeouts.shutdownGraceMs)),
    drain: () => (shuttingDown ??= shutdown(current.timeouts.drainMs)),
    refreshTelegramConfig: () => middle?.refresh() ?? Promise.resolve(),
    middleConnections: () => middle?.proxies.connectionCount ?? 0,
    middleStats() {
      const sum = { connections: 0, clients: 0, sending: 0, migrated: 0, closedMidSend: 0 };
      for (const p of middle?.proxies.stats().values() ?? []) {
        sum.connections += p.connections;
        sum.clients += p.clients;
        sum.sending += p.sending;
        sum.migrated += p.migrated;
        sum.closedMidSend += p.closedMidSend;
      }
      return sum;
    },
  };
}

/**
 * Whether a client of user `held` may stay once `next` is that user's entry (undefined: removed)
 * and `allowed` its listener's `users` (null or undefined: everyone).
 */
function _userKept(
  held: UserConfig,
  next: UserConfig | undefined,
  allowed: readonly string[] | null | undefined,
  now: number,
): boolean {
  return next !== undefined && next.enabled && bytesEqual(next.secret, held.secret) &&
    (next.expiresAt === null || next.expiresAt > now) &&
    (allowed === null || allowed === undefined || allowed.includes(next.name));
}

/** The sites whose TLS profile a server imitates: its listeners', or a back's link listeners'. */
export function imitatedSites(config: Config): readonly { tlsDomains: readonly string[] }[] {
  return config.role === "back" ? config.linkListeners : config.listeners;
}

/**
 * Replay cache, fronting checks and the fake-TLS answer shape shared by all sessions, plus the
 * periodic measuring of each tls_domain's real site (unless someone else measures them).
 */
function _guard(
  config: Config,
  options: StartServerOptions,
  addresses: () => readonly { host: string; port: number }[],
  fleet: _Fleet | null,
): {
  session: SessionGuard;
  replaySize(): number;
  reconfigure(next: Config): void;
  stop(): Promise<void>;
} {
  // A reload changes which SNIs may be fronted and the fake certificate's size range.
  let live = config;
  let snis = frontableSnis(imitatedSites(config), config.fronting);
  const replay = options.replay ??
    (config.replay.maxEntries > 0
      ? createReplayCache({
        maxEntries: config.replay.maxEntries,
        maxAgeMs: config.replay.maxAgeMs,
      })
      : acceptAllReplays);
  const replaySize = () => replay.size;
  const profiles = options.profiles ?? new TlsProfileStore();
  const localIps = localIpAddresses();
  const replayTtlSec = Math.max(1, Math.ceil(config.replay.maxAgeMs / 1000));
  const session: SessionGuard = {
    seenBefore(key) {
      // Our own memory first: a replay to this proxy costs no round trip.
      if (replay.checkAndAdd(key, Date.now())) return true;
      if (!fleet || config.replay.maxEntries === 0) return false;
      return fleet.state.replaySeen(key, replayTtlSec).then((seen) => seen ?? fleet.alone(false));
    },
    ...(fleet ? { admitFleet: (kind, key) => fleet.admit(kind, key) } : {}),
    get frontableSnis() {
      return snis;
    },
    isOwnAddress: (addr) => isOwnAddress(addr, addresses(), localIps),
    answerShape(sni) {
      const profile = profiles.get(sni);
      return {
        appDataLength: fakeCertSize(profile, randomInt, live.tls.fakeCertSize),
        extensionOrder: profile?.extensionOrder ?? "key_share_first",
        // Unmeasured: big sites pick the post-quantum group when a browser offers it.
        keyShareGroup: profile ? (profile.keyShareGroup ?? GROUP_X25519) : GROUP_X25519_MLKEM768,
        ...(profile ? { cipherSuite: profile.cipherSuite } : {}),
      };
    },
  };
  const measuring = options.profiles ? null : measureSites(config, profiles);
  return {
    session,
    replaySize,
    reconfigure(next) {
      live = next;
      snis = frontableSnis(imitatedSites(next), next.fronting);
    },
    stop: () => measuring?.stop() ?? Promise.resolve(),
  };
}

/**
 * Measure the real sites our fake-TLS answers imitate, now and every `tls.profile_refresh`,
 * into `profiles`: only where fronting points at them anyway. `measured` hears of each new
 * profile (a supervisor hands them to its workers).
 */
export function measureSites(
  config: Config,
  profiles: TlsProfileStore,
  measured?: (domain: string, profile: TlsProfile) => void,
): { stop(): Promise<void> } {
  const mode = config.fronting.mode;
  if (mode === "off" || config.tls.profileRefreshMs === 0) return { stop: () => Promise.resolve() };
  const domains = [...new Set(imitatedSites(config).flatMap((l) => l.tlsDomains))];
  const abort = new AbortController();
  const running = new Set<Promise<unknown>>();
  const refresh = () => {
    for (const domain of domains) {
      const target: RefreshTarget = mode === "sni"
        ? { signal: abort.signal }
        : { host: mode.host, port: mode.port, sni: domain, signal: abort.signal };
      const job = profiles.refresh(domain, target).then((outcome) => {
        if (outcome.ok) {
          const p = outcome.profile;
          log.info(
            "Measured {domain}: suite {suite}, {order}, encrypted handshake records {sizes}",
            {
              domain,
              suite: `0x${p.cipherSuite.toString(16)}`,
              order: p.extensionOrder,
              sizes: p.appDataSizes.join("+"),
            },
          );
          measured?.(domain, p);
        } else if (!abort.signal.aborted) {
          log.warn("Cannot measure {domain} ({error}); fake-TLS answers use {kind}", {
            domain,
            error: outcome.error.message,
            kind: outcome.profile ? "the previous measurement" : "tls.fake_cert_size",
          });
        }
      });
      const contained = job.catch((e: unknown) =>
        reportUnexpected(`TLS profile of ${domain}: handling a measurement failed`, e)
      );
      running.add(contained);
      contained.finally(() => running.delete(contained));
    }
  };
  refresh();
  const timer = setInterval(refresh, config.tls.profileRefreshMs);
  return {
    async stop() {
      clearInterval(timer);
      abort.abort();
      await Promise.all([...running]);
    },
  };
}

/** A fleet's shared state on Redis, as the guard uses it. */
interface _Fleet {
  readonly state: RedisState;
  /** Count a decision made alone (Redis could not say) and return `answer`. */
  alone<T>(answer: T): T;
  readonly localDecisions: number;
  admit(kind: "ip" | "sni", key: string): Promise<(() => void) | "limit" | null>;
}

/** Connect to the fleet's Redis (in the background; every answer is bounded by its timeout). */
function _connectFleet(shared: SharedStateConfig, rules: () => PolicyConfig): _Fleet {
  const fleetLog = logger("fleet");
  const state = connectRedisState({
    url: shared.redisUrl,
    instanceId: shared.instance,
    keyPrefix: shared.keyPrefix,
    opTimeoutMs: shared.timeoutMs,
    leaseSec: Math.max(1, Math.round(shared.leaseMs / 1000)),
    onEvent(e) {
      if (e.type === "available") {
        fleetLog.info("Shared state (Redis) answering; this proxy is {instance}", e);
      } else {
        fleetLog.warn(
          "Shared state (Redis) not answering ({reason}): replays and limits are checked by this proxy alone until it is back",
          e,
        );
      }
    },
  });
  let localDecisions = 0;
  const alone = <T>(answer: T): T => {
    localDecisions++;
    return answer;
  };
  return {
    state,
    alone,
    get localDecisions() {
      return localDecisions;
    },
    async admit(kind, key) {
      const p = rules();
      const limit = kind === "ip" ? p.maxConnectionsPerIp : p.maxConnectionsPerSni;
      if (limit === 0) return null;
      let counted = key;
      if (kind === "ip") {
        const ip = parseIp16(key);
        if (!ip) return null;
        counted = ipKey(ip);
      }
      const ok = await state.acquire(kind, counted, limit);
      if (ok === null) return alone(null);
      if (!ok) return "limit";
      let released = false;
      return () => {
        if (released) return;
        released = true;
        state.release(kind, counted);
      };
    },
  };
}

/** Live figures for a metrics scrape. */
function _metricsSnapshot(
  sessions: ReadonlySet<Session>,
  middle: _Middle | null,
  replayEntries: number,
): MetricsSnapshot {
  const active = new Map<string, number>();
  const liveBytes = new Map<string, { fromClients: number; toClients: number }>();
  for (const s of sessions) {
    const name = s.listenerName;
    active.set(name, (active.get(name) ?? 0) + 1);
    const b = liveBytes.get(name) ?? { fromClients: 0, toClients: 0 };
    b.fromClients += s.bytesFromClient;
    b.toClients += s.bytesToClient;
    liveBytes.set(name, b);
  }
  return {
    active,
    liveBytes,
    middle: middle?.proxies.stats() ?? new Map(),
    replayEntries,
    rssBytes: Deno.memoryUsage().rss,
  };
}

/** The metrics HTTP server. */
export interface MetricsEndpoint {
  readonly address: { host: string; port: number };
  stop(): Promise<void>;
}

/**
 * Serve `GET /metrics` on `listen`; every other request gets 404. Throws when the address
 * cannot be bound.
 */
export function serveMetrics(
  listen: { host: string; port: number },
  render: () => string | Promise<string>,
): MetricsEndpoint {
  const server = Deno.serve({
    hostname: listen.host,
    port: listen.port,
    onListen: () => {},
    onError: (e) => {
      log.error("Metrics request failed: {error}", { error: String(e) });
      return new Response("internal error\n", { status: 500 });
    },
  }, async (req) => {
    const path = new URL(req.url).pathname;
    if (path !== "/metrics") return new Response("not found\n", { status: 404 });
    if (req.method !== "GET" && req.method !== "HEAD") {
      return new Response("method not allowed\n", { status: 405, headers: { allow: "GET, HEAD" } });
    }
    return new Response(req.method === "HEAD" ? null : await render(), {
      headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
    });
  });
  const addr = server.addr as Deno.NetAddr;
  log.info("Metrics at http://{address}/metrics", {
    address: formatHostPort(addr.hostname, addr.port),
  });
  return {
    address: { host: addr.hostname, port: addr.port },
    stop: () => server.shutdown(),
  };
}
