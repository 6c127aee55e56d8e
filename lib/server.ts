/**
 * Starts the listeners and runs a session per accepted client; owns the timers that enforce
 * handshake and idle timeouts, and the graceful shutdown.
 *
 * @module
 */
import { logger } from "./ops/log.ts";
import type { Config, FrontCredential, ListenerConfig, PolicyConfig } from "./config/types.ts";
import { closeQuietly, formatHostPort, type Listener, listenTcp } from "./net.ts";
import type { EventSink, ProxyEvent } from "./client/events.ts";
import { Session, type SessionContext, type SessionGuard } from "./client/session.ts";
import { defaultCipherBackend, openSslLoadError, randomInt } from "./crypto.ts";
import { acceptAllReplays, createReplayCache } from "./guard/replay.ts";
import { frontableSnis, isOwnAddress, localIpAddresses } from "./guard/fronting.ts";
import { fakeCertSize, type RefreshTarget, TlsProfileStore } from "./guard/tls_profile.ts";
import { GROUP_X25519, GROUP_X25519_MLKEM768 } from "./protocol/fake_tls.ts";
import { MiddleProxies, usesMiddleProxies } from "./telegram/middle_proxies.ts";
import { LocalTelegram } from "./telegram/local.ts";
import type { TelegramSide } from "./telegram/side.ts";
import { type BackStats, type BoundLinkListener, LinkServer } from "./link/back.ts";
import { type BackLinkStats, LinkTelegram } from "./link/front.ts";
import { TelegramConfigStore } from "./telegram/proxy_config.ts";
import { VERSION } from "./version.ts";
import { Metrics, type MetricsSnapshot, type MetricsTotals } from "./ops/metrics.ts";
import { ConnectionPolicy } from "./guard/policy.ts";

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
  /** Where each listener is bound (port resolved when 0 was configured). */
  readonly addresses: readonly { name: string; host: string; port: number }[];
  /** A back: where each link listener is bound (empty in other roles). */
  readonly linkAddresses: readonly BoundLinkListener[];
  /**
   * A back: the fronts allowed from now on; links of fronts no longer listed are closed.
   * Returns how many links were closed (0 in other roles).
   */
  updateFronts(fronts: readonly FrontCredential[]): number;
  /** Links up: a front's to its backs, a back's from its fronts (0 standalone). */
  linksUp(): number;
  /** A front: links per back and how they ended (empty in other roles). */
  backLinks(): readonly BackLinkStats[];
  /** A back: links, streams and held answer bytes per front (null in other roles). */
  frontLinks(): BackStats | null;
  /** Stop accepting, give live clients the grace period, then close the rest. */
  shutdown(): Promise<void>;
  /** Resolves once shutdown has finished. */
  readonly closed: Promise<void>;
  /** A snapshot of the counters. */
  stats(): ServerStats;
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

/** Options for {@linkcode startServer}. */
export interface StartServerOptions {
  /** Also receives every session event (tests use it). */
  events?: EventSink;
  /** Where the last good copies of Telegram's middle-proxy config are kept. */
  cacheDir?: string;
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
    case "established":
      if (e.requestedDc !== e.dc) {
        log.info(
          "{listener}: {peer} asked for unknown DC {requestedDc}; using default DC {dc} at {dcAddress}",
          e,
        );
      } else {
        log.debug(
          "{listener}: {peer} relayed to DC {dc} at {dcAddress} ({protocol}, {transport})",
          e,
        );
      }
      break;
    case "fronted":
      log.info("{listener}: {peer} fronted to {target} ({reason})", e);
      break;
    case "closed":
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
  if (config.role === "front") return _start(config, options, null);
  // A back cannot know which fronts send an ad tag: unless direct mode is forced, be ready.
  const needsMiddle = config.role === "back"
    ? config.telegram.mode !== "direct"
    : config.listeners.some((l) => usesMiddleProxies(config, l));
  const middle = needsMiddle ? await _startMiddle(config, options) : null;
  try {
    return _start(config, options, middle);
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

/** Middle-proxy mode: Telegram's config (network, cache or bundled), our IP, the pools. */
async function _startMiddle(
  config: Config,
  options: StartServerOptions,
): Promise<_Middle> {
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
  const proxies = new MiddleProxies({
    config,
    source: store,
    externalIp,
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
  const refreshNow = () =>
    store.refresh().then((r) => {
      for (const p of r.problems) log.warn("Telegram config refresh: {problem}", { problem: p });
      if (r.change) log.info("Telegram config refreshed: middle-proxy list or secret changed");
    }, (e) => log.warn("Telegram config refresh failed: {error}", { error: String(e) }));
  const refresh = setInterval(refreshNow, t.refreshIntervalMs);
  return {
    proxies,
    refresh: refreshNow,
    stop() {
      clearInterval(refresh);
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
      metrics.observe(e);
      try {
        _logEvent(e);
        options.events?.emit(e);
      } catch (err) {
        // A broken sink must not break sessions.
        log.error("Event sink failed: {error}", { error: String(err) });
      }
    },
  };

  const bound: { config: ListenerConfig; socket: Listener }[] = [];
  try {
    for (const l of config.listeners) {
      bound.push({ config: l, socket: listenTcp(l.host, l.port) });
    }
  } catch (e) {
    for (const b of bound) closeQuietly(b.socket);
    const failed = config.listeners[bound.length]!;
    const why = e instanceof Error ? e.message : String(e);
    throw new Error(
      `Cannot listen on ${formatHostPort(failed.host, failed.port)} (${failed.name}): ${why}`,
    );
  }

  const addresses = bound.map((b) => ({
    name: b.config.name,
    host: b.config.host,
    port: (b.socket.addr as Deno.NetAddr).port,
  }));
  // The handler runs only once requests arrive, after everything below is set up.
  const metricsText = () =>
    metrics.render({
      ..._metricsSnapshot(sessions, middle, guard.replaySize()),
      ...(links ? { backs: links.stats() } : {}),
      ...(linkServer ? { fronts: linkServer.stats() } : {}),
    });
  let metricsHttp: MetricsEndpoint | null = null;
  if (config.metrics.listen) {
    try {
      metricsHttp = _serveMetrics(config.metrics.listen, metricsText);
    } catch (e) {
      for (const b of bound) closeQuietly(b.socket);
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
  const guardDomains = config.role === "back" ? config.linkListeners : config.listeners;
  const guard = _guard(config, guardDomains, () => [...addresses, ...linkAddresses]);
  if (config.role === "back") {
    linkServer = new LinkServer({ config, telegram: local!, guard: guard.session });
    try {
      linkAddresses = linkServer.listen();
    } catch (e) {
      for (const b of bound) closeQuietly(b.socket);
      void metricsHttp?.stop();
      void guard.stop();
      throw e;
    }
  }
  const sessions = new Set<Session>();
  const policy = new ConnectionPolicy(config.policy);
  // Resolves a shutdown waiting for the last session (set only while one waits).
  let drainedNow: (() => void) | null = null;
  let accepting = true;

  // One timer for all sessions: per-connection timers would cost memory on every idle client.
  const tickMs = Math.max(
    50,
    Math.min(1000, config.timeouts.handshakeMs / 4, config.timeouts.idleMs / 4),
  );
  const sweeper = setInterval(() => {
    const now = Date.now();
    for (const s of sessions) {
      if (s.phase === "handshake" && now - s.startedAt > config.timeouts.handshakeMs) {
        s.abort("timeout");
      } else if (s.phase === "relay" && now - s.lastActivity > config.timeouts.idleMs) {
        s.abort("idle");
      }
    }
  }, tickMs);

  async function acceptLoop(l: ListenerConfig, socket: Listener): Promise<void> {
    let active = 0;
    const ctx: SessionContext = {
      listener: l,
      config,
      events: sink,
      guard: guard.session,
      telegram,
      policy,
      onDone(session) {
        session.ipSlot?.release();
        sessions.delete(session);
        active--;
        if (sessions.size === 0) drainedNow?.();
      },
    };
    while (accepting) {
      let conn: Deno.TcpConn;
      try {
        conn = await socket.accept();
      } catch (e) {
        if (!accepting || e instanceof Deno.errors.BadResource) return;
        // Out of file descriptors and the like: log, breathe, keep serving.
        log.error("{listener}: accept failed: {error}", { listener: l.name, error: String(e) });
        await new Promise((r) => setTimeout(r, 100));
        continue;
      }
      metrics.accepted(l.name);
      // The connection limit and the address rules cost nothing to check: refuse at once.
      const remote = conn.remoteAddr as Deno.NetAddr;
      // Behind a balancer (proxy_protocol) the session applies the address rules to the client
      // its PROXY header names.
      const slot = active >= config.maxConnections
        ? "too_many_connections"
        : l.proxyProtocol
        ? null
        : policy.admitIp(remote.hostname);
      if (typeof slot === "string") {
        closeQuietly(conn);
        const peer = `${remote.hostname}:${remote.port}`;
        sink.emit({ type: "rejected", listener: l.name, peer, reason: slot });
        continue;
      }
      const session = new Session(conn, ctx);
      session.ipSlot = slot;
      sink.emit({ type: "accepted", listener: l.name, peer: session.peer });
      sessions.add(session);
      active++;
      session.start();
    }
  }

  const loops = bound.map((b) => acceptLoop(b.config, b.socket));

  let resolveClosed!: () => void;
  const closed = new Promise<void>((r) => (resolveClosed = r));
  let shuttingDown: Promise<void> | null = null;

  async function shutdown(): Promise<void> {
    accepting = false;
    for (const b of bound) closeQuietly(b.socket);
    await Promise.all(loops);
    if (sessions.size > 0) {
      log.info("Shutting down: waiting up to {ms} ms for {n} clients", {
        ms: config.timeouts.shutdownGraceMs,
        n: sessions.size,
      });
      const drained = new Promise<void>((r) => (drainedNow = r));
      let timer: ReturnType<typeof setTimeout> | undefined;
      const graceMs = config.timeouts.shutdownGraceMs;
      await Promise.race([drained, new Promise((r) => (timer = setTimeout(r, graceMs)))]);
      clearTimeout(timer);
      for (const s of sessions) s.abort("shutdown");
      await drained;
      drainedNow = null;
    }
    clearInterval(sweeper);
    await linkServer?.shutdown(config.timeouts.shutdownGraceMs);
    await links?.close();
    await metricsHttp?.stop();
    await guard.stop();
    await middle?.stop();
    resolveClosed();
  }

  return {
    addresses,
    linkAddresses,
    closed,
    stats: () => ({ ...metrics.totals(), active: sessions.size }),
    updatePolicy(rules) {
      policy.update(rules);
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
    updateFronts: (fronts) => linkServer?.updateFronts(fronts) ?? 0,
    linksUp: () => links?.linksUp ?? linkServer?.linkCount ?? 0,
    backLinks: () => links?.stats() ?? [],
    frontLinks: () => linkServer?.stats() ?? null,
    metricsAddress: metricsHttp?.address ?? null,
    metricsText,
    shutdown: () => (shuttingDown ??= shutdown()),
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
 * Replay cache, fronting checks and the fake-TLS answer shape shared by all sessions, plus the
 * periodic measuring of each tls_domain's real site.
 */
function _guard(
  config: Config,
  sites: readonly { tlsDomains: readonly string[] }[],
  addresses: () => readonly { host: string; port: number }[],
): { session: SessionGuard; replaySize(): number; stop(): Promise<void> } {
  const replay = config.replay.maxEntries > 0
    ? createReplayCache({ maxEntries: config.replay.maxEntries, maxAgeMs: config.replay.maxAgeMs })
    : acceptAllReplays;
  const replaySize = () => replay.size;
  const profiles = new TlsProfileStore();
  const localIps = localIpAddresses();
  const session: SessionGuard = {
    seenBefore: (key) => replay.checkAndAdd(key, Date.now()),
    frontableSnis: frontableSnis(sites, config.fronting),
    isOwnAddress: (addr) => isOwnAddress(addr, addresses(), localIps),
    answerShape(sni) {
      const profile = profiles.get(sni);
      return {
        appDataLength: fakeCertSize(profile, randomInt, config.tls.fakeCertSize),
        extensionOrder: profile?.extensionOrder ?? "key_share_first",
        // Unmeasured: big sites pick the post-quantum group when a browser offers it.
        keyShareGroup: profile ? (profile.keyShareGroup ?? GROUP_X25519) : GROUP_X25519_MLKEM768,
        ...(profile ? { cipherSuite: profile.cipherSuite } : {}),
      };
    },
  };

  // Measure the real sites our answers imitate: only where fronting points at them anyway.
  const mode = config.fronting.mode;
  if (mode === "off" || config.tls.profileRefreshMs === 0) {
    return { session, replaySize, stop: () => Promise.resolve() };
  }
  const domains = [...new Set(sites.flatMap((l) => l.tlsDomains))];
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
        } else if (!abort.signal.aborted) {
          log.warn("Cannot measure {domain} ({error}); fake-TLS answers use {kind}", {
            domain,
            error: outcome.error.message,
            kind: outcome.profile ? "the previous measurement" : "tls.fake_cert_size",
          });
        }
      });
      running.add(job);
      job.finally(() => running.delete(job));
    }
  };
  refresh();
  const timer = setInterval(refresh, config.tls.profileRefreshMs);
  return {
    session,
    replaySize,
    async stop() {
      clearInterval(timer);
      abort.abort();
      await Promise.all([...running]);
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
interface MetricsEndpoint {
  readonly address: { host: string; port: number };
  stop(): Promise<void>;
}

/**
 * Serve `GET /metrics` on `listen`; every other request gets 404. Throws when the address
 * cannot be bound.
 */
function _serveMetrics(
  listen: { host: string; port: number },
  render: () => string,
): MetricsEndpoint {
  const server = Deno.serve({
    hostname: listen.host,
    port: listen.port,
    onListen: () => {},
    onError: (e) => {
      log.error("Metrics request failed: {error}", { error: String(e) });
      return new Response("internal error\n", { status: 500 });
    },
  }, (req) => {
    const path = new URL(req.url).pathname;
    if (path !== "/metrics") return new Response("not found\n", { status: 404 });
    if (req.method !== "GET" && req.method !== "HEAD") {
      return new Response("method not allowed\n", { status: 405, headers: { allow: "GET, HEAD" } });
    }
    return new Response(req.method === "HEAD" ? null : render(), {
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
