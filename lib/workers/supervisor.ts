/**
 * `workers` > 1: the main thread of `mtproxy run` becomes a supervisor of worker threads, each
 * with its own event loop and its own listeners on the same ports (SO_REUSEPORT: the kernel
 * spreads new connections over them). The supervisor listens for nothing but metrics; it keeps
 * what must stay one proxy:
 * - Telegram's middle-proxy config and our public IP, fetched once and handed to every worker;
 * - the fronted sites' TLS profiles, measured once;
 * - the replay cache and the connection counts, in shared memory that every worker opens;
 * - one `/metrics` with totals over workers, signals, reloads and the graceful shutdown;
 * - a worker that dies is restarted (logged, counted); the others keep serving. What it held
 *   in the shared counts is given back from its journal.
 *
 * @module
 */
import type { Config, FrontCredential, PolicyConfig, UserConfig } from "../config/types.ts";
import { logger } from "../ops/log.ts";
import {
  imitatedSites,
  loadTelegramConfig,
  measureSites,
  type MetricsEndpoint,
  needsMiddleProxies,
  type ReconfigureResult,
  serveMetrics,
  type TelegramConfigFeed,
} from "../server.ts";
import { planReload } from "../config/reload.ts";
import type { TlsProfile } from "../guard/tls_profile.ts";
import { TlsProfileStore } from "../guard/tls_profile.ts";
import { randomBytes } from "../crypto.ts";
import { formatHostPort } from "../net.ts";
import {
  familyTotal,
  mergeExpositions,
  parseExposition,
  renderExposition,
} from "../ops/metrics_merge.ts";
import type {
  FromWorker,
  ListenReply,
  ReconfigureReply,
  SharedBuffers,
  ToWorker,
  WorkerAddresses,
  WorkerNews,
  WorkerRequest,
} from "./protocol.ts";
import { createWorkerShared, type SharedState } from "./shared.ts";
import { USAGE_FILE_NAME, usageOf, UsageStore, type UserUsage } from "../guard/quota.ts";
import { join } from "node:path";

const log = logger("workers");

/** A worker must be ready (listening) within this. */
const START_TIMEOUT_MS = 30_000;
/** A worker that does not answer a metrics scrape within this is left out of it. */
const SCRAPE_TIMEOUT_MS = 2000;
/** Every worker is asked how it is this often; one that misses HEARTBEAT_MISSES in a row is dead. */
const HEARTBEAT_MS = 1000;
const HEARTBEAT_TIMEOUT_MS = 2000;
const HEARTBEAT_MISSES = 3;
/** Restart delays after a worker dies: 500 ms doubling to 30 s (reset after a minute up). */
const RESTART_MIN_MS = 500;
const RESTART_MAX_MS = 30_000;
const STABLE_MS = 60_000;

/** Options for {@linkcode startSupervisor}. */
export interface SupervisorOptions {
  /** How many worker threads. */
  readonly workers: number;
  /** Where the last good copies of Telegram's middle-proxy config are kept. */
  readonly cacheDir?: string;
  /**
   * Where the users' usage is persisted (the supervisor is its one writer); null: nowhere.
   * @default {`mtproxy-usage.json` in `cacheDir`, else null}
   */
  readonly usageFile?: string | null;
}

/** Per worker, for logs, metrics and tests. */
export interface WorkerInfo {
  readonly id: number;
  readonly up: boolean;
  readonly restarts: number;
}

/** A running set of workers. */
export interface Supervisor {
  /** Where each listener is bound (the same ports in every worker); a reload changes it. */
  readonly addresses: WorkerAddresses["addresses"];
  /** The configuration in force (ports resolved): the start's, then each reload's. */
  readonly config: Config;
  /**
   * A reload in every worker (see ServerHandle.reconfigure): new listeners are bound in every
   * worker first (the first resolves port 0), and when one cannot bind, none keeps anything
   * and this rejects. A worker started later gets the configuration in force.
   */
  reconfigure(next: Config): Promise<ReconfigureResult>;
  readonly linkAddresses: WorkerAddresses["linkAddresses"];
  /** Resolves once every worker has stopped after shutdown() or drain(). */
  readonly closed: Promise<void>;
  /** Where metrics are served; null when not served. */
  readonly metricsAddress: { host: string; port: number } | null;
  /** All workers' metrics, added up, with per-worker figures. */
  metricsText(): Promise<string>;
  /** Apply new policy rules in every worker; resolves with how many clients they closed. */
  updatePolicy(policy: PolicyConfig): Promise<number>;
  /** A back: the fronts allowed from now on, in every worker; resolves with links closed. */
  updateFronts(fronts: readonly FrontCredential[]): Promise<number>;
  /** New users in every worker (see ServerHandle.updateUsers); resolves with clients closed. */
  updateUsers(
    users: readonly UserConfig[],
    listenerUsers: ReadonlyMap<string, readonly string[] | null>,
  ): Promise<number>;
  /** Fetch Telegram's config now and hand it to the workers. */
  refreshTelegramConfig(): Promise<void>;
  /** Stop accepting everywhere; live clients get `timeouts.shutdown_grace`. */
  shutdown(): Promise<void>;
  /** As shutdown, with `timeouts.drain` (an upgrade: a new process took the ports). */
  drain(): Promise<void>;
  /** Workers and their restarts. */
  workers(): readonly WorkerInfo[];
  /** Each user's connections (all workers), unique addresses, bytes used and quota left. */
  userUsage(): UserUsage[];
  /**
   * End worker `id` the way a crash does (tests: it must be noticed and restarted, the others
   * untouched). Resolves once it was asked.
   */
  crash(id: number): Promise<void>;
}

/** A request without its envelope. */
type _RequestBody = WorkerRequest extends infer R
  ? R extends WorkerRequest ? Omit<R, "type" | "id"> : never
  : never;

/** One worker thread and the requests it has not answered. */
class WorkerSlot {
  readonly id: number;
  worker: Worker | null = null;
  up = false;
  restarts = 0;
  startedAt = 0;
  nextRestartMs = RESTART_MIN_MS;
  missed = 0;
  pinging = false;
  readonly shared: SharedBuffers;
  readonly #pending = new Map<number, (value: string | number | null) => void>();
  #nextRequest = 1;
  ready: PromiseWithResolvers<WorkerAddresses> | null = null;
  stopped: PromiseWithResolvers<void> | null = null;

  constructor(id: number, shared: SharedBuffers) {
    this.id = id;
    this.shared = shared;
  }

  post(message: ToWorker): void {
    try {
      this.worker?.postMessage(message);
    } catch (e) {
      log.warn("Worker w{id}: message not delivered: {error}", { id: this.id, error: String(e) });
    }
  }

  /** Ask the worker; null when it is down, does not answer in `timeoutMs`, or fails. */
  request(
    op: _RequestBody,
    timeoutMs: number,
  ): Promise<string | number | null> {
    if (!this.worker || !this.up) return Promise.resolve(null);
    const id = this.#nextRequest++;
    const { promise, resolve } = Promise.withResolvers<string | number | null>();
    const timer = setTimeout(() => {
      this.#pending.delete(id);
      resolve(null);
    }, timeoutMs);
    this.#pending.set(id, (v) => {
      clearTimeout(timer);
      resolve(v);
    });
    this.post({ type: "request", id, ...op } as WorkerRequest);
    return promise;
  }

  answered(id: number, value: string | number | null): void {
    const done = this.#pending.get(id);
    this.#pending.delete(id);
    done?.(value);
  }

  /** Fail every pending request (the worker is gone). */
  forget(): void {
    for (const done of this.#pending.values()) done(null);
    this.#pending.clear();
  }
}

/**
 * Start `options.workers` worker threads serving `config` on the same ports. The first one
 * binds (resolving port 0), the others join its ports. Rejects, with every worker stopped,
 * when one cannot start.
 */
export async function startSupervisor(
  config: Config,
  options: SupervisorOptions,
): Promise<Supervisor> {
  const count = options.workers;
  const shared: SharedState = createWorkerShared(config, count);
  shared.ledger.onSpill = (name) =>
    log.warn(
      "User {name} and any added after: more users than the limits' shared memory was sized for at start; their limits count in each worker apart (restart to share them again)",
      { name },
    );
  // The users' usage: read before any worker serves, flushed by this thread alone.
  const usagePath = options.usageFile === undefined
    ? (options.cacheDir ? join(options.cacheDir, USAGE_FILE_NAME) : null)
    : options.usageFile;
  const usage = usagePath === null ? null : new UsageStore(usagePath, shared.ledger, {
    warn: (m) => log.warn("{message}", { message: m }),
  });
  await usage?.load();
  const instance = randomBytes(8);

  let feed: TelegramConfigFeed | null = null;
  let unsubscribe = () => {};
  const profiles = new TlsProfileStore();
  let measuring: { stop(): Promise<void> } | null = null;
  const slots: WorkerSlot[] = [];
  let stopping = false;
  let resolved: Config = config;
  const timers = new Set<ReturnType<typeof setTimeout>>();

  const broadcast = (news: WorkerNews) => {
    for (const s of slots) if (s.up) s.post(news);
  };

  const spawn = (slot: WorkerSlot): Promise<WorkerAddresses> => {
    slot.ready = Promise.withResolvers<WorkerAddresses>();
    slot.stopped = Promise.withResolvers<void>();
    slot.ready.promise.catch(() => {});
    const worker = new Worker(new URL("./worker_main.ts", import.meta.url).href, {
      type: "module",
      name: `w${slot.id}`,
    });
    slot.worker = worker;
    slot.startedAt = Date.now();
    // A reload while this worker starts: it gets the configuration in force once ready.
    const sent = resolved;
    const timer = setTimeout(() => {
      slot.ready?.reject(new Error(`worker w${slot.id} did not start in ${START_TIMEOUT_MS} ms`));
      gone(slot, worker, "did not start in time");
    }, START_TIMEOUT_MS);
    worker.onmessage = (e: MessageEvent<FromWorker>) => {
      const m = e.data;
      switch (m.type) {
        case "ready":
          clearTimeout(timer);
          slot.up = true;
          if (sent !== resolved) {
            void slot.request({ op: "reconfigure", config: workerConfig(resolved) }, 10_000);
          }
          slot.ready?.resolve({ addresses: m.addresses, linkAddresses: m.linkAddresses });
          break;
        case "failed":
          clearTimeout(timer);
          slot.ready?.reject(new Error(m.message));
          gone(slot, worker, m.message);
          break;
        case "reply":
          slot.answered(m.id, m.value);
          break;
        case "stopped":
          slot.up = false;
          slot.stopped?.resolve();
          break;
      }
    };
    worker.onerror = (e) => {
      // Contained: one worker's uncaught error must not take the process down.
      e.preventDefault();
      clearTimeout(timer);
      slot.ready?.reject(new Error(e.message));
      gone(slot, worker, e.message || "uncaught error");
    };
    worker.onmessageerror = () => gone(slot, worker, "a message could not be read");
    const snapshot = feed?.source.current;
    slot.post({
      type: "start",
      id: slot.id,
      config: workerConfig(resolved),
      logLevel: config.logLevel,
      telegram: feed && snapshot ? { snapshot, externalIp: feed.externalIp } : null,
      profiles: profiles.domains().map((d) => [d, profiles.get(d)!] as const),
      shared: slot.shared,
      instance,
    });
    return slot.ready.promise;
  };

  /** A worker ended without being asked to: free what it held and start a new one. */
  const gone = (slot: WorkerSlot, worker: Worker, why: string) => {
    if (slot.worker !== worker) return; // already handled
    slot.worker = null;
    const wasUp = slot.up;
    slot.up = false;
    worker.terminate();
    slot.forget();
    slot.stopped?.resolve();
    const freed = shared.releaseWorker(slot.id);
    if (stopping || !wasUp) return;
    if (Date.now() - slot.startedAt > STABLE_MS) slot.nextRestartMs = RESTART_MIN_MS;
    const delay = slot.nextRestartMs;
    slot.nextRestartMs = Math.min(RESTART_MAX_MS, slot.nextRestartMs * 2);
    log.error("Worker w{id} died ({why}); {freed} connection slots freed; restarting in {ms} ms", {
      id: slot.id,
      why,
      freed,
      ms: delay,
    });
    const timer = setTimeout(() => {
      timers.delete(timer);
      if (stopping) return;
      slot.restarts++;
      spawn(slot).then(
        () => log.info("Worker w{id} restarted", { id: slot.id }),
        (e) =>
          log.error("Worker w{id} failed to restart: {error}", { id: slot.id, error: String(e) }),
      );
    }, delay);
    timers.add(timer);
  };

  let stopHeartbeat = () => {};
  const stopAll = async (op: "shutdown" | "drain") => {
    stopping = true;
    stopHeartbeat();
    for (const t of timers) clearTimeout(t);
    timers.clear();
    const graceMs = op === "drain" ? resolved.timeouts.drainMs : resolved.timeouts.shutdownGraceMs;
    await Promise.all(slots.map(async (s) => {
      if (s.up) await s.request({ op }, graceMs + 10_000);
      s.worker?.terminate();
      s.worker = null;
      s.up = false;
    }));
    unsubscribe();
    feed?.stop();
    // Every worker has stopped: what their clients used is final, and written now.
    await usage?.stop();
    await measuring?.stop();
    await metricsHttp?.stop();
  };

  let metricsHttp: MetricsEndpoint | null = null;
  try {
    if (needsMiddleProxies(config)) {
      feed = await loadTelegramConfig(
        config,
        options.cacheDir ? { cacheDir: options.cacheDir } : {},
      );
      unsubscribe = feed.source.onChange((change) =>
        broadcast({ type: "telegram", snapshot: change.current })
      );
    }
    if (imitatedSites(config).length > 0) {
      measuring = measureSites(
        config,
        profiles,
        (domain: string, profile: TlsProfile) => broadcast({ type: "profile", domain, profile }),
      );
    }
    for (let i = 1; i <= count; i++) slots.push(new WorkerSlot(i, shared.forWorker(i)));
    // The first worker binds the configured ports (0: any); the others join the ones it got.
    const first = await spawn(slots[0]!);
    resolved = withPorts(config, first);
    await Promise.all(slots.slice(1).map((s) => spawn(s)));
    const listen = config.metrics.listen;
    if (listen) {
      try {
        metricsHttp = serveMetrics(listen, metricsText);
      } catch (e) {
        const why = e instanceof Error ? e.message : String(e);
        throw new Error(
          `Cannot listen on ${formatHostPort(listen.host, listen.port)} (metrics): ${why}`,
        );
      }
    }
    log.info("{n} workers serving", { n: count });
    usage?.start();
    // A worker that ended without an error (or hangs) is noticed by its silence.
    const heartbeat = setInterval(() => {
      for (const s of slots) {
        const worker = s.worker;
        if (!worker || !s.up || s.pinging) continue;
        s.pinging = true;
        void s.request({ op: "ping" }, HEARTBEAT_TIMEOUT_MS).then((v) => {
          s.pinging = false;
          if (s.worker !== worker) return;
          s.missed = v === null ? s.missed + 1 : 0;
          if (s.missed >= HEARTBEAT_MISSES) {
            s.missed = 0;
            gone(s, worker, `no answer for ${HEARTBEAT_MISSES} heartbeats`);
          }
        });
      }
    }, HEARTBEAT_MS);
    stopHeartbeat = () => clearInterval(heartbeat);
    const ready = first;

    let shutdown: Promise<void> | null = null;
    const closed = Promise.withResolvers<void>();
    const finish = (op: "shutdown" | "drain") =>
      shutdown ??= stopAll(op).then(() => closed.resolve());

    return {
      get addresses() {
        return resolved.listeners.map((l) => ({ name: l.name, host: l.host, port: l.port }));
      },
      get config() {
        return resolved;
      },
      reconfigure,
      linkAddresses: ready.linkAddresses,
      closed: closed.promise,
      metricsAddress: metricsHttp?.address ?? null,
      metricsText,
      async updatePolicy(policy) {
        const n = await Promise.all(slots.map((s) => s.request({ op: "policy", policy }, 10_000)));
        return n.reduce<number>((a, b) => a + (typeof b === "number" ? b : 0), 0);
      },
      async updateUsers(users, listenerUsers) {
        const n = await Promise.all(
          slots.map((s) => s.request({ op: "users", users, listenerUsers }, 10_000)),
        );
        return n.reduce<number>((a, b) => a + (typeof b === "number" ? b : 0), 0);
      },
      async updateFronts(fronts) {
        const n = await Promise.all(slots.map((s) => s.request({ op: "fronts", fronts }, 10_000)));
        return n.reduce<number>((a, b) => a + (typeof b === "number" ? b : 0), 0);
      },
      refreshTelegramConfig: () => feed?.refresh() ?? Promise.resolve(),
      shutdown: () => finish("shutdown"),
      drain: () => finish("drain"),
      workers: () => slots.map((s) => ({ id: s.id, up: s.up, restarts: s.restarts })),
      userUsage: () =>
        usageOf(resolved.users, shared.ledger, Date.now(), (name) => shared.userConnections(name)),
      async crash(id) {
        await slots[id - 1]?.request({ op: "crash" }, 5000);
      },
    };
  } catch (e) {
    await stopAll("shutdown");
    throw e;
  }

  /** A reload in every worker: bind everywhere first, then apply everywhere. */
  async function reconfigure(next: Config): Promise<ReconfigureResult> {
    const plan = planReload(resolved, next);
    let config = plan.config;
    const opening = [...plan.added, ...plan.moved];
    const up = slots.filter((s) => s.up);
    if (opening.length > 0 && up.length > 0) {
      const listen = async (slot: WorkerSlot, listeners: typeof opening) => {
        const v = await slot.request({ op: "listen", listeners }, 10_000);
        const reply: ListenReply = typeof v === "string"
          ? JSON.parse(v)
          : { ok: false, error: `worker w${slot.id} did not answer` };
        return reply;
      };
      const [first, ...rest] = up;
      // The first worker resolves port 0; the others join the ports it got.
      const got = await listen(first!, opening);
      if (!got.ok) throw new Error(got.error);
      const ports = new Map(got.addresses.map((a) => [a.name, a.port]));
      const withPort = <L extends { name: string; port: number }>(l: L): L =>
        ports.has(l.name) ? { ...l, port: ports.get(l.name)! } : l;
      config = { ...config, listeners: config.listeners.map(withPort) };
      const others = await Promise.all(rest.map((s) => listen(s, opening.map(withPort))));
      const refused = others.find((r) => !r.ok);
      if (refused && !refused.ok) {
        await Promise.all(up.map((s) => s.request({ op: "unlisten" }, 10_000)));
        throw new Error(refused.error);
      }
    }
    resolved = config;
    const replies = await Promise.all(
      up.map((s) => s.request({ op: "reconfigure", config: workerConfig(config) }, 10_000)),
    );
    const sum = { reloaded: 0, policy: 0, fronts: 0 };
    replies.forEach((v, i) => {
      const reply: ReconfigureReply = typeof v === "string"
        ? JSON.parse(v)
        : { ok: false, error: "no answer" };
      if (!reply.ok) {
        log.error("Worker w{id} did not apply the reload: {error}", {
          id: up[i]!.id,
          error: reply.error,
        });
        return;
      }
      sum.reloaded += reply.reloaded;
      sum.policy += reply.policy;
      sum.fronts += reply.fronts;
    });
    return sum;
  }

  async function metricsText(): Promise<string> {
    const texts = await Promise.all(
      slots.map((s) => s.request({ op: "metrics" }, SCRAPE_TIMEOUT_MS)),
    );
    const parsed = texts.map((t) => typeof t === "string" ? parseExposition(t) : null);
    const merged = mergeExpositions(parsed.filter((p) => p !== null));
    const add = (name: string, type: string, help: string) => {
      const f = { help, type, samples: new Map<string, number>() };
      merged.families.set(name, f);
      return f.samples;
    };
    add("mtproxy_workers", "gauge", "Worker threads serving now.")
      .set("", slots.filter((s) => s.up).length);
    const restarts = add(
      "mtproxy_worker_restarts_total",
      "counter",
      "Worker threads restarted after they died.",
    );
    const active = add(
      "mtproxy_worker_connections_active",
      "gauge",
      "Connections open now, per worker thread.",
    );
    slots.forEach((s, i) => {
      restarts.set(`{worker="${s.id}"}`, s.restarts);
      const p = parsed[i];
      if (p) active.set(`{worker="${s.id}"}`, familyTotal(p, "mtproxy_connections_active"));
    });
    return renderExposition(merged);
  }
}

/** A worker's copy of the configuration: no metrics endpoint (the supervisor serves it). */
function workerConfig(config: Config): Config {
  return { ...config, metrics: { ...config.metrics, listen: null } };
}

/** `config` with the ports the first worker bound (port 0 resolved). */
function withPorts(config: Config, bound: WorkerAddresses): Config {
  return {
    ...config,
    listeners: config.listeners.map((l, i) => ({ ...l, port: bound.addresses[i]?.port ?? l.port })),
    linkListeners: config.linkListeners.map((l, i) => ({
      ...l,
      port: bound.linkAddresses[i]?.port ?? l.port,
    })),
  };
}
