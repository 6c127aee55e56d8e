/**
 * Shared helpers for tests that run the proxy in-process: a Config built in code (no file),
 * a started server bound to 127.0.0.1 on a free port, and event capture.
 *
 * @module
 */
import type {
  ClientProtocol,
  Config,
  HostPort,
  ListenerConfig,
  PolicyConfig,
  PoolConfig,
  ServerErrorFilter,
  UserConfig,
} from "../lib/config/types.ts";
import type { ProxyEvent } from "../lib/client/events.ts";
import {
  DEFAULT_LINK,
  DEFAULT_POLICY,
  DEFAULT_POOL_CLIENTS_PER_CONNECTION,
  DEFAULT_POOL_MAX_CLIENT_UNACKED_BYTES,
  DEFAULT_POOL_MAX_UNACKED_BYTES,
  DEFAULT_POOL_MAX_UNACKED_PACKETS,
  DEFAULT_POOL_MIN_CONNECTIONS,
} from "../lib/config/defaults.ts";
import type { MiddleConnectOptions } from "../lib/telegram/middle.ts";
import { type ServerHandle, startServer } from "../lib/server.ts";
import { randomBytes } from "../lib/crypto.ts";
import { concatBytes } from "../lib/protocol/bytes.ts";
import {
  type FakeMiddleMode,
  type FakeMiddleProxy,
  startFakeMiddleProxy,
} from "./kit/fake_middle_proxy.ts";
import { type FakeCoreApi, startFakeCoreApi } from "./kit/fake_core_api.ts";

/** The secret most tests use. */
export const TEST_SECRET: Uint8Array = Uint8Array.from(
  "0123456789abcdef0123456789abcdef".match(/../g)!.map((h) => parseInt(h, 16)),
);

/** Overrides for {@linkcode testConfig}. */
export interface TestConfigOptions {
  secret?: Uint8Array;
  tlsDomains?: string[];
  allowed?: ClientProtocol[];
  /** DC id -> 127.0.0.1 port of a fake DC. */
  dcPorts?: Record<number, number>;
  dcAddresses?: Record<number, HostPort>;
  defaultDc?: number;
  fastMode?: boolean;
  handshakeMs?: number;
  idleMs?: number;
  dcConnectMs?: number;
  shutdownGraceMs?: number;
  maxClockSkewMs?: number;
  maxConnections?: number;
  port?: number;
  fronting?: "off" | "sni" | HostPort;
  frontingAllow?: string[];
  frontingConnectMs?: number;
  replayMaxEntries?: number;
  serverErrorFilter?: ServerErrorFilter;
  perSniSecrets?: boolean;
  perSniSalt?: string;
  fakeCertSize?: { min: number; max: number };
  listeners?: Partial<ListenerConfig>[];
  tag?: Uint8Array;
  telegramMode?: "auto" | "direct" | "middle";
  proxyUrls?: { secret: string; config: string; configV6?: string };
  externalIp?: string;
  pool?: Partial<PoolConfig>;
  policy?: Partial<PolicyConfig>;
  /** Serve metrics here (port 0: a free one). */
  metricsListen?: HostPort;
}

/** A Config for one listener on 127.0.0.1 (port 0 unless given). */
export function testConfig(options: TestConfigOptions = {}): Config {
  const allowed = options.allowed ?? ["plain", "dd", "tls"];
  const listener: ListenerConfig = {
    name: "test",
    host: "127.0.0.1",
    port: options.port ?? 0,
    secret: options.secret ?? TEST_SECRET,
    tlsDomains: options.tlsDomains ?? ["example.com"],
    allowedProtocols: allowed,
    tag: options.tag ?? null,
    proxyProtocol: false,
    users: null,
  };
  const dcAddresses = new Map<number, HostPort>();
  for (const [id, port] of Object.entries(options.dcPorts ?? {})) {
    dcAddresses.set(Number(id), { host: "127.0.0.1", port });
  }
  for (const [id, hp] of Object.entries(options.dcAddresses ?? {})) dcAddresses.set(Number(id), hp);
  const extra = (options.listeners ?? []).map((l, i): ListenerConfig => ({
    ...listener,
    name: `test${i + 2}`,
    ...l,
  }));
  return {
    role: "standalone",
    listeners: [listener, ...extra],
    allowedProtocols: allowed,
    publicHost: null,
    logLevel: "warning",
    telegram: {
      dcAddresses,
      preferIpv6: false,
      fastMode: options.fastMode ?? true,
      defaultDc: options.defaultDc ?? 2,
      mode: options.telegramMode ?? "auto",
      proxySecretUrl: options.proxyUrls?.secret ?? "http://127.0.0.1:9/getProxySecret",
      proxyConfigUrl: options.proxyUrls?.config ?? "http://127.0.0.1:9/getProxyConfig",
      proxyConfigV6Url: options.proxyUrls?.configV6 ?? "http://127.0.0.1:9/getProxyConfigV6",
      refreshIntervalMs: 3_600_000,
    },
    timeouts: {
      handshakeMs: options.handshakeMs ?? 5000,
      idleMs: options.idleMs ?? 60_000,
      dcConnectMs: options.dcConnectMs ?? 2000,
      shutdownGraceMs: options.shutdownGraceMs ?? 200,
      drainMs: 1000,
    },
    tls: {
      maxClockSkewMs: options.maxClockSkewMs ?? 600_000,
      fakeCertSize: options.fakeCertSize ?? { min: 2500, max: 4700 },
      profileRefreshMs: 0,
    },
    maxConnections: options.maxConnections ?? 10_000,
    pool: {
      minConnections: 2,
      clientsPerConnection: 300,
      maxUnackedBytes: 300 * 30 * 1024,
      maxUnackedPackets: 600,
      maxClientUnackedBytes: 1024 * 1024,
      ...options.pool,
    },
    externalIp: options.externalIp ?? "127.0.0.1",
    ipLookupUrls: [],
    replay: {
      maxEntries: options.replayMaxEntries ?? 10_000,
      maxAgeMs: 3_600_000,
      serverErrorFilter: options.serverErrorFilter ?? "first",
    },
    fronting: {
      mode: options.fronting ?? "off",
      connectTimeoutMs: options.frontingConnectMs ?? 2000,
      allow: options.frontingAllow ?? [],
    },
    perSniSecrets: options.perSniSecrets ?? false,
    perSniSalt: options.perSniSalt ?? "mtproto-proxy-per-sni-v1",
    policy: { ...DEFAULT_POLICY, ...options.policy },
    metrics: { listen: options.metricsListen ?? null },
    backs: [],
    linkListeners: [],
    fronts: [],
    defaultTag: null,
    link: DEFAULT_LINK,
    workers: 1,
    sharedState: null,
    users: [],
    admin: { listen: null, token: null },
    usersFile: null,
  };
}

/** A proxy running in this process, with the events it emitted. */
/**
 * A user as the configuration loader makes one: a random secret, enabled, no limits, the
 * default 24 h window for unique addresses; `fields` override any of it.
 */
export function testUser(name: string, fields: Partial<UserConfig> = {}): UserConfig {
  return {
    name,
    secret: randomBytes(16),
    enabled: true,
    maxConnections: 0,
    maxUniqueIps: 0,
    uniqueIpWindowMs: 86_400_000,
    dataQuotaBytes: null,
    quotaReset: null,
    expiresAt: null,
    rateLimitBytesPerSec: null,
    tag: null,
    ...fields,
  };
}

export interface TestProxy {
  readonly server: ServerHandle;
  readonly port: number;
  readonly events: ProxyEvent[];
  /** Resolve when an event matching `pred` has been seen (or reject after `timeoutMs`). */
  waitForEvent(pred: (e: ProxyEvent) => boolean, timeoutMs?: number): Promise<ProxyEvent>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** Start the proxy in-process; dispose it with `await using`. */
export async function startTestProxy(config: Config): Promise<TestProxy> {
  const events: ProxyEvent[] = [];
  const waiters = new Set<() => void>();
  const server = await startServer(config, {
    events: {
      emit(e) {
        events.push(e);
        for (const w of [...waiters]) w();
      },
    },
  });
  return {
    server,
    port: server.addresses[0]!.port,
    events,
    waitForEvent(pred, timeoutMs = 5000) {
      const found = events.find(pred);
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`No matching event within ${timeoutMs} ms: ${JSON.stringify(events)}`));
        }, timeoutMs);
        const check = () => {
          const e = events.find(pred);
          if (!e) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve(e);
        };
        waiters.add(check);
      });
    },
    async [Symbol.asyncDispose]() {
      await server.shutdown();
    },
  };
}

/** Poll `cond` every 10 ms until it holds; throws after `timeoutMs` naming `what`. */
export async function until(cond: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Options for a middle-proxy connection to a fake on 127.0.0.1: the default pool, overridable. */
export function middleConnectOptions(
  proxySecret: Uint8Array,
  overrides: { pool?: Partial<PoolConfig>; keepaliveMs?: number; sendTimeoutMs?: number } = {},
): MiddleConnectOptions {
  const { pool, ...timing } = overrides;
  return {
    proxySecret,
    externalIp: "127.0.0.1",
    connectTimeoutMs: 5000,
    handshakeTimeoutMs: 5000,
    pool: {
      minConnections: DEFAULT_POOL_MIN_CONNECTIONS,
      clientsPerConnection: DEFAULT_POOL_CLIENTS_PER_CONNECTION,
      maxUnackedBytes: DEFAULT_POOL_MAX_UNACKED_BYTES,
      maxUnackedPackets: DEFAULT_POOL_MAX_UNACKED_PACKETS,
      maxClientUnackedBytes: DEFAULT_POOL_MAX_CLIENT_UNACKED_BYTES,
      ...pool,
    },
    ...timing,
  };
}

export { seededRandom } from "./kit/seeded.ts";

/** A fake middle proxy serving DC 2, and the fake core API whose config points at it. */
export interface FakeTelegramMiddle {
  readonly mp: FakeMiddleProxy;
  readonly core: FakeCoreApi;
  /** For {@linkcode TestConfigOptions.proxyUrls}. */
  readonly proxyUrls: { secret: string; config: string };
  [Symbol.asyncDispose](): Promise<void>;
}

/** Start a {@linkcode FakeTelegramMiddle} that checks `adTag`; dispose it with `await using`. */
export async function startFakeTelegramMiddle(
  adTag: Uint8Array,
  mode: FakeMiddleMode = "mtproto",
): Promise<FakeTelegramMiddle> {
  const proxySecret = randomBytes(128);
  const mp = await startFakeMiddleProxy({ proxySecret, expectedAdTag: adTag, mode });
  const core = startFakeCoreApi({
    proxySecret,
    configV4: `default 2;\nproxy_for 2 127.0.0.1:${mp.port};\n`,
  });
  return {
    mp,
    core,
    proxyUrls: { secret: core.urls.secretUrl, config: core.urls.configUrl },
    async [Symbol.asyncDispose]() {
      await mp.close();
      await core.close();
    },
  };
}

/** A TCP server on 127.0.0.1 that keeps every byte it is sent: a stand-in fronting target. */
export interface ByteSink {
  readonly port: number;
  /** Everything received so far, over all connections, in arrival order. */
  received(): Uint8Array;
  [Symbol.asyncDispose](): Promise<void>;
}

/** Start a {@linkcode ByteSink}; dispose it with `await using`. */
export function startByteSink(): ByteSink {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const chunks: Uint8Array[] = [];
  const serving = (async () => {
    for await (const conn of listener) {
      const buf = new Uint8Array(4096);
      let n: number | null;
      while ((n = await conn.read(buf).catch(() => null)) !== null) chunks.push(buf.slice(0, n));
      conn.close();
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    received: () => concatBytes(chunks),
    async [Symbol.asyncDispose]() {
      listener.close();
      await serving.catch(() => {});
    },
  };
}
