/**
 * `mtproxy run` (the default command): resolve the configuration, print the links, start the
 * listeners and serve until SIGINT/SIGTERM, then shut down gracefully.
 *
 * @module
 */
import { dirname } from "node:path";
import type { Config } from "../config/types.ts";
import { MAX_WORKERS } from "../config/defaults.ts";
import { reusePortUnavailable } from "../net.ts";
import { type ReconfigureResult, type ServerHandle, startServer } from "../server.ts";
import { planReload } from "../config/reload.ts";
import { reload, type ReloadReport, setReloadHandler } from "./reload_hook.ts";
import { startSupervisor, type Supervisor } from "../workers/supervisor.ts";
import { logger, setupLogging } from "../ops/log.ts";
import { describeError, installLastResort } from "../ops/last_resort.ts";
import { threadCounters } from "../ops/metrics.ts";
import { formatAddress, formatLinkListeners, formatLinks } from "./link.ts";
import type { AdminServer } from "../ops/admin.ts";
import { loadOrCreateAdminToken } from "../config/state.ts";
import type { UserUsage } from "../guard/quota.ts";
import {
  ENV,
  type LinkPrinting,
  linkPrinting,
  parseCommandArgs,
  reportError,
  resolveRunConfig,
  RUN_LINK_OPTIONS,
  RUN_LINK_OPTIONS_HELP,
  RUN_OPTIONS,
  RUN_OPTIONS_HELP,
  type RunArgs,
  runArgsFromValues,
} from "./options.ts";

/** Help screen of `mtproxy run`. */
export const RUN_HELP = `Usage: mtproxy [run] [options]

Run the proxy: print the proxy links (to a terminal only, unless --print-links),
listen, and relay Telegram clients until SIGINT or SIGTERM (live clients then
get timeouts.shutdown_grace seconds to finish; a second signal exits at once).
SIGHUP reloads the configuration (what cannot change live is named in the log
and keeps its value until a restart); SIGUSR2 stops accepting and
lets live clients finish for timeouts.drain (an upgrade: start the new version
first, it shares the ports). A back (role: back) prints its link listeners
instead of links. Logs go to stderr.

${RUN_LINK_OPTIONS_HELP}

${RUN_OPTIONS_HELP}`;

const SIGNALS: readonly Deno.Signal[] = ["SIGINT", "SIGTERM"];

export { reload, type ReloadReport } from "./reload_hook.ts";

/**
 * Run `mtproxy run`; resolves with the exit code once the server has shut down.
 *
 * @example Usage
 * ```ts ignore
 * import { runCommand } from "./run.ts";
 * Deno.exit(await runCommand(["--config", "config.yaml"]));
 * ```
 */
export async function runCommand(args: string[]): Promise<number> {
  let server: Running;
  let parsed: RunArgs;
  let statePath: string;
  try {
    const { values } = parseCommandArgs(args, { ...RUN_OPTIONS, ...RUN_LINK_OPTIONS });
    parsed = runArgsFromValues(values);
    if (parsed.help) {
      console.log(RUN_HELP);
      return 0;
    }
    // Links hold the secret: not into a journal or a log file unless asked for.
    const printing = linkPrinting(values, Deno.env.toObject(), Deno.stdout.isTerminal());
    const resolved = await resolveRunConfig(parsed, Deno.env.toObject(), { createState: true });
    const { config } = resolved;
    statePath = resolved.statePath;
    await setupLogging(config.logLevel);
    _installLastResort();
    for (const w of resolved.warnings) console.error(`Warning: ${w}`);

    if (config.role === "back") {
      // No client links on a back: what fronts connect to instead (no secrets).
      for (const line of formatLinkListeners(config)) console.log(line);
    } else {
      const links = formatLinks(config);
      for (const w of links.warnings) console.error(w);
      if (printing.print) { for (const line of links.lines) console.log(line); }
      else {
        console.log(
          `Links not printed (${printing.why}): "mtproxy link" with the same options prints them`,
        );
      }
    }
    console.log("");
    if (resolved.configPath !== null) console.log(`Config file: ${resolved.configPath}`);
    console.log(
      resolved.stateUsed
        ? `State file: ${resolved.statePath}${
          resolved.stateCreated ? " (created now with a new random secret)" : ""
        }`
        : config.role === "back"
        ? `State file: not used (a back has no client listeners)`
        : `State file: not used (every listener has its own secret)`,
    );

    try {
      // Telegram's middle-proxy config is cached next to the state file.
      server = await _start(config, dirname(resolved.statePath));
    } catch (e) {
      const message = e instanceof Error ? e.message : String(e);
      const hint = /permission denied|os error 13/i.test(message) &&
          [...config.listeners, ...config.linkListeners].some((l) => l.port < 1024)
        ? "; ports below 1024 need root or CAP_NET_BIND_SERVICE"
        : /address already in use|os error 98/i.test(message)
        ? "; another process already listens there"
        : "";
      throw new Error(`${message}${hint}`);
    }
    // The admin API and status page (admin.listen; off by default).
    if (config.admin.listen) {
      await _startAdmin(server, parsed, { config, statePath: resolved.statePath, printing });
    }
  } catch (e) {
    return reportError("run", e);
  }

  for (const a of [...server.addresses, ...server.linkAddresses]) {
    console.log(`listening on ${formatAddress(a.host, a.port)} (${a.name})`);
  }
  const running = server;
  const reloadNow = () => _reload(running, parsed, statePath);
  // One reload at a time: SIGHUP and the admin API may ask at once.
  let reloading: Promise<unknown> = Promise.resolve();
  setReloadHandler(() => {
    const next = reloading.then(reloadNow);
    reloading = next;
    return next;
  });
  try {
    await _serveUntilSignal(server, async () => void await reload());
  } finally {
    setReloadHandler(null);
  }
  return 0;
}

/**
 * Read the configuration again (same flags and environment) and apply it: what can change
 * live does, the rest keeps its running value and is named in one log line. A file that does
 * not validate, or a new listener that cannot be bound, changes nothing.
 */
async function _reload(server: Running, args: RunArgs, statePath: string): Promise<ReloadReport> {
  const failed = (e: unknown): ReloadReport => {
    const error = e instanceof Error ? e.message : String(e);
    log.warn("Configuration not reloaded, the previous one stays: {error}", { error });
    return { ok: false, error, changed: [], notLive: [], closed: 0 };
  };
  const notLive: string[] = [];
  let next: Config;
  try {
    const env = Deno.env.toObject();
    let resolved = await resolveRunConfig(args, env);
    if (resolved.statePath !== statePath) {
      // The listeners' secrets came from the state file of the start: it stays until a restart.
      notLive.push("state_file");
      resolved = await resolveRunConfig(args, { ...env, [ENV.stateFile]: statePath });
    }
    for (const w of resolved.warnings) log.warn("Configuration: {warning}", { warning: w });
    next = resolved.config;
  } catch (e) {
    return failed(e);
  }
  const before = server.config;
  const plan = planReload(before, next);
  notLive.push(...plan.notLive);
  let result: ReconfigureResult;
  try {
    result = await server.reconfigure(plan.config);
  } catch (e) {
    return failed(e);
  }
  if (notLive.length > 0) {
    log.warn("Not changed until a restart (the running values stay): {keys}", {
      keys: notLive.join(", "),
    });
  }
  if (plan.config.logLevel !== before.logLevel) await setupLogging(plan.config.logLevel);
  const known = new Set(before.listeners.map((l) => `${l.name} ${l.port}`));
  for (const a of server.addresses) {
    if (!known.has(`${a.name} ${a.port}`)) {
      console.log(`listening on ${formatAddress(a.host, a.port)} (${a.name})`);
    }
  }
  if (plan.changed.includes("policy")) {
    log.info("Policy reloaded from the configuration; {closed} clients closed by it", {
      closed: result.policy,
    });
  }
  if (plan.changed.includes("fronts")) {
    log.info("Fronts reloaded: {n} allowed, {cut} links closed", {
      n: plan.config.fronts.length,
      cut: result.fronts,
    });
  }
  log.info("Configuration reloaded: {changed}; {closed} clients closed (reloaded)", {
    changed: plan.changed.length > 0 ? plan.changed.join(", ") : "nothing changed",
    closed: result.reloaded,
  });
  return {
    ok: true,
    changed: plan.changed,
    notLive,
    closed: result.reloaded + result.policy + result.fronts,
  };
}

const log = logger("cli");

/** One bug must cost one client, never the process: log and count what nothing else caught. */
function _installLastResort(): void {
  const unexpected = logger("unexpected");
  installLastResort({
    log: (message, error) =>
      unexpected.error("{message}: {error}", { message, error: describeError(error) }),
    onCaught: () => threadCounters.unexpectedErrors++,
  });
}

/**
 * Start the admin API and status page on `admin.listen`, printing where (and the state file's
 * token only where links would be printed). It stops with the server, or at once on SIGUSR2 (an
 * upgrade: the next process shares the port). A port that cannot be bound stops the server.
 */
async function _startAdmin(
  server: Running,
  args: RunArgs,
  started: { config: Config; statePath: string; printing: LinkPrinting },
): Promise<void> {
  const { config, statePath, printing } = started;
  const listen = config.admin.listen!;
  let admin: AdminServer;
  let token: string;
  try {
    token = config.admin.token ?? (await loadOrCreateAdminToken(statePath)).token;
    // Loaded only when asked for: a proxy without the admin API never loads npm:hono.
    const { startAdmin } = await import("../ops/admin.ts");
    admin = await startAdmin({
      listen,
      token,
      reusePort: reusePortUnavailable() === null,
      backend: {
        // As a reload reads it: the state file of the start.
        resolve: async (fileUsers) => {
          const env = { ...Deno.env.toObject(), [ENV.stateFile]: statePath };
          const r = await resolveRunConfig(args, env, fileUsers ? { fileUsers } : {});
          return { config: r.config, usersPath: r.usersPath };
        },
        reload,
        running: () => server.config,
        listeners: () => server.addresses,
        metricsText: () => server.metricsText(),
        ...(server.userUsage && { userUsage: () => server.userUsage!() }),
      },
    });
  } catch (e) {
    await server.shutdown();
    const message = e instanceof Error ? e.message : String(e);
    throw new Error(
      `Cannot start the admin API on ${formatAddress(listen.host, listen.port)}: ${message}`,
    );
  }
  console.log(
    `Admin API and status page: http://${formatAddress(admin.address.host, admin.address.port)}/`,
  );
  if (config.admin.token === null) {
    console.log(
      printing.print
        ? `Admin token: ${token}`
        : `Admin token not printed (${printing.why}): it is "admin_token" in the state file ${statePath}`,
    );
  }
  const onUsr2 = () => void admin.stop();
  try {
    Deno.addSignalListener("SIGUSR2", onUsr2);
  } catch {
    // No SIGUSR2 on this platform.
  }
  void server.closed.finally(() => {
    try {
      Deno.removeSignalListener("SIGUSR2", onUsr2);
    } catch {
      // Never added.
    }
    return admin.stop();
  });
}

/** A running proxy, in this thread or as workers: what the command line drives. */
interface Running {
  readonly addresses: readonly { name: string; host: string; port: number }[];
  /** The configuration in force (ports resolved). */
  readonly config: Config;
  /** Run with `next` from now on (see ServerHandle.reconfigure); rejects changing nothing. */
  reconfigure(next: Config): Promise<ReconfigureResult>;
  readonly linkAddresses: readonly { name: string; host: string; port: number }[];
  readonly closed: Promise<void>;
  updatePolicy(policy: Config["policy"]): Promise<number>;
  updateFronts(fronts: Config["fronts"]): Promise<number>;
  updateUsers(
    users: Config["users"],
    listenerUsers: ReadonlyMap<string, readonly string[] | null>,
  ): Promise<number>;
  refreshTelegramConfig(): Promise<void>;
  shutdown(): Promise<void>;
  drain(): Promise<void>;
  /** The metrics exposition (`GET /metrics`). */
  metricsText(): Promise<string>;
  /** Each user's live usage (the admin API's); absent where not counted. */
  userUsage?(): UserUsage[] | Promise<UserUsage[]>;
}

/** How many workers `workers: auto | N` means here. */
export function resolveWorkers(workers: Config["workers"]): number {
  if (workers !== "auto") return workers;
  return Math.max(1, Math.min(MAX_WORKERS, navigator.hardwareConcurrency || 1));
}

/**
 * Start the proxy: worker threads sharing the ports when `workers` is more than one and the
 * platform allows it, else one event loop in this thread. Either way the ports are shared
 * (SO_REUSEPORT) when possible, so that an upgrade can start the next process beside this one.
 */
async function _start(config: Config, cacheDir: string): Promise<Running> {
  let workers = resolveWorkers(config.workers);
  const unavailable = reusePortUnavailable();
  if (workers > 1 && unavailable !== null) {
    log.warn("workers: {n} asked, but ports cannot be shared here ({why}); running one worker", {
      n: workers,
      why: unavailable,
    });
    workers = 1;
  }
  if (workers > 1) return _fromSupervisor(await startSupervisor(config, { workers, cacheDir }));
  const server = await startServer(config, { cacheDir, reusePort: unavailable === null });
  return _fromServer(server);
}

function _fromServer(s: ServerHandle): Running {
  return {
    get addresses() {
      return s.addresses;
    },
    get config() {
      return s.config;
    },
    reconfigure: async (next) => await Promise.resolve().then(() => s.reconfigure(next)),
    linkAddresses: s.linkAddresses,
    closed: s.closed,
    updatePolicy: (p) => Promise.resolve(s.updatePolicy(p)),
    updateFronts: (f) => Promise.resolve(s.updateFronts(f)),
    updateUsers: (u, l) => Promise.resolve(s.updateUsers(u, l)),
    refreshTelegramConfig: () => s.refreshTelegramConfig(),
    shutdown: () => s.shutdown(),
    drain: () => s.drain(),
    metricsText: () => Promise.resolve(s.metricsText()),
    userUsage: () => s.userUsage(),
  };
}

function _fromSupervisor(s: Supervisor): Running {
  return s;
}

async function _serveUntilSignal(
  server: Running,
  reloadConfig: () => Promise<void>,
): Promise<void> {
  let signals = 0;
  const { promise: stop, resolve } = Promise.withResolvers<Deno.Signal>();
  const handlers = SIGNALS.map((signal) => {
    const handler = () => {
      signals++;
      if (signals === 1) resolve(signal);
      else {
        console.error(`${signal} again: exiting without waiting for clients`);
        Deno.exit(130);
      }
    };
    try {
      Deno.addSignalListener(signal, handler);
      return { signal, handler };
    } catch {
      // SIGTERM cannot be caught on Windows.
      return null;
    }
  });
  // SIGHUP: reload the configuration, and fetch Telegram's middle-proxy config now instead of
  // at the next interval.
  const onHup = () => {
    log.info("SIGHUP: reloading the configuration; refreshing Telegram's middle-proxy config");
    void reloadConfig();
    server.refreshTelegramConfig();
  };
  let hup = false;
  try {
    Deno.addSignalListener("SIGHUP", onHup);
    hup = true;
  } catch {
    // No SIGHUP on this platform.
  }
  // SIGUSR2: an upgrade. The new process already listens on the same ports; stop accepting and
  // let live clients finish for timeouts.drain. SIGINT/SIGTERM then exit at once.
  const onUsr2 = () => {
    if (signals > 0) return;
    signals++;
    log.info("SIGUSR2: no longer accepting; live clients may finish (timeouts.drain)");
    resolve("SIGUSR2");
  };
  let usr2 = false;
  try {
    Deno.addSignalListener("SIGUSR2", onUsr2);
    usr2 = true;
  } catch {
    // No SIGUSR2 on this platform.
  }
  try {
    const signal = await Promise.race([stop, server.closed.then(() => null)]);
    if (signal === "SIGUSR2") {
      await server.drain();
      log.info("Drained");
    } else if (signal !== null) {
      log.info("{signal}: shutting down", { signal });
      await server.shutdown();
      log.info("Stopped");
    }
  } finally {
    for (const h of handlers) if (h) Deno.removeSignalListener(h.signal, h.handler);
    if (hup) Deno.removeSignalListener("SIGHUP", onHup);
    if (usr2) Deno.removeSignalListener("SIGUSR2", onUsr2);
  }
}
