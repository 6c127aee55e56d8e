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
import { type ServerHandle, startServer } from "../server.ts";
import { startSupervisor, type Supervisor } from "../workers/supervisor.ts";
import { logger, setupLogging } from "../ops/log.ts";
import { describeError, installLastResort } from "../ops/last_resort.ts";
import { threadCounters } from "../ops/metrics.ts";
import { formatAddress, formatLinkListeners, formatLinks } from "./link.ts";
import {
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
SIGHUP reloads the policy (and a back's fronts); SIGUSR2 stops accepting and
lets live clients finish for timeouts.drain (an upgrade: start the new version
first, it shares the ports). A back (role: back) prints its link listeners
instead of links. Logs go to stderr.

${RUN_LINK_OPTIONS_HELP}

${RUN_OPTIONS_HELP}`;

const SIGNALS: readonly Deno.Signal[] = ["SIGINT", "SIGTERM"];

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
  } catch (e) {
    return reportError("run", e);
  }

  for (const a of [...server.addresses, ...server.linkAddresses]) {
    console.log(`listening on ${formatAddress(a.host, a.port)} (${a.name})`);
  }
  const reloadPolicy = async () => {
    try {
      const { config } = await resolveRunConfig(parsed, Deno.env.toObject());
      const closed = await server.updatePolicy(config.policy);
      log.info("Policy reloaded from the configuration; {closed} clients closed by it", { closed });
      if (config.role !== "back") {
        // Users added, changed, disabled or removed; untouched users' clients stay.
        const listenerUsers = new Map(config.listeners.map((l) => [l.name, l.users]));
        const cut = await server.updateUsers(config.users, listenerUsers);
        log.info("Users reloaded: {n} users; {cut} clients closed (reloaded)", {
          n: config.users.length,
          cut,
        });
      }
      if (config.role === "back") {
        // A front removed from `fronts` (or given a new secret) is cut off; the others stay.
        const cut = await server.updateFronts(config.fronts);
        log.info("Fronts reloaded: {n} allowed, {cut} links closed", {
          n: config.fronts.length,
          cut,
        });
      }
    } catch (e) {
      log.warn("Policy not reloaded, the previous one stays: {error}", {
        error: e instanceof Error ? e.message : String(e),
      });
    }
  };
  await _serveUntilSignal(server, reloadPolicy);
  return 0;
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

/** A running proxy, in this thread or as workers: what the command line drives. */
interface Running {
  readonly addresses: readonly { name: string; host: string; port: number }[];
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
    addresses: s.addresses,
    linkAddresses: s.linkAddresses,
    closed: s.closed,
    updatePolicy: (p) => Promise.resolve(s.updatePolicy(p)),
    updateFronts: (f) => Promise.resolve(s.updateFronts(f)),
    updateUsers: (u, l) => Promise.resolve(s.updateUsers(u, l)),
    refreshTelegramConfig: () => s.refreshTelegramConfig(),
    shutdown: () => s.shutdown(),
    drain: () => s.drain(),
  };
}

function _fromSupervisor(s: Supervisor): Running {
  return s;
}

async function _serveUntilSignal(
  server: Running,
  reloadPolicy: () => Promise<void>,
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
  // SIGHUP: reload the policy section of the configuration, and fetch Telegram's middle-proxy
  // config now instead of at the next interval.
  const onHup = () => {
    log.info("SIGHUP: reloading the policy; refreshing Telegram's middle-proxy config");
    void reloadPolicy();
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
