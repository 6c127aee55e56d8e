/**
 * A worker thread of `mtproxy run` (`workers` > 1): its own event loop and its own listeners on
 * the shared ports (SO_REUSEPORT), serving clients with the same server as a single-threaded
 * proxy. What must stay one proxy comes from the supervisor: Telegram's config, the fronted
 * sites' TLS profiles, the replay cache and the connection counts (shared memory).
 *
 * @module
 */
/// <reference lib="deno.worker" />
import { logger, setupLogging } from "../ops/log.ts";
import { describeError, installLastResort } from "../ops/last_resort.ts";
import { threadCounters } from "../ops/metrics.ts";
import { type ServerHandle, startServer } from "../server.ts";
import { TlsProfileStore } from "../guard/tls_profile.ts";
import { bytesEqual } from "../protocol/bytes.ts";
import {
  diffProxyConfig,
  type TelegramConfigChange,
  type TelegramConfigSnapshot,
} from "../telegram/proxy_config.ts";
import type { TelegramConfigSource } from "../telegram/middle_proxies.ts";
import type { FromWorker, ToWorker, WorkerRequest, WorkerStart } from "./protocol.ts";
import { openWorkerShared } from "./shared.ts";

const log = logger("worker");

/** Telegram's config as the supervisor hands it over: the same interface the pools follow. */
class RelayedTelegramConfig implements TelegramConfigSource {
  #current: TelegramConfigSnapshot;
  readonly #listeners = new Set<(change: TelegramConfigChange) => void>();

  constructor(snapshot: TelegramConfigSnapshot) {
    this.#current = snapshot;
  }

  get current(): TelegramConfigSnapshot {
    return this.#current;
  }

  onChange(listener: (change: TelegramConfigChange) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  update(snapshot: TelegramConfigSnapshot): void {
    const previous = this.#current;
    this.#current = snapshot;
    const change: TelegramConfigChange = {
      previous,
      current: snapshot,
      secretChanged: !bytesEqual(previous.proxySecret, snapshot.proxySecret),
      v4: diffProxyConfig(previous.configV4, snapshot.configV4),
      v6: diffProxyConfig(previous.configV6, snapshot.configV6),
    };
    for (const l of [...this.#listeners]) {
      try {
        l(change);
      } catch (e) {
        log.error("Telegram config listener failed: {error}", { error: String(e) });
      }
    }
  }
}

let server: ServerHandle | null = null;
let telegram: RelayedTelegramConfig | null = null;
/** This worker's id, for its log lines' tag. */
let workerId = 0;
const profiles = new TlsProfileStore();

function send(message: FromWorker): void {
  self.postMessage(message);
}

async function start(m: WorkerStart): Promise<void> {
  workerId = m.id;
  await setupLogging(m.logLevel, { tag: `w${m.id}` });
  // A bug in one client's handling must not end this worker and all its clients.
  const unexpected = logger("unexpected");
  installLastResort({
    log: (message, error) =>
      unexpected.error("{message}: {error}", { message, error: describeError(error) }),
    onCaught: () => threadCounters.unexpectedErrors++,
  });
  for (const [domain, profile] of m.profiles) profiles.set(domain, profile);
  const shared = openWorkerShared(m.shared, m.config);
  telegram = m.telegram ? new RelayedTelegramConfig(m.telegram.snapshot) : null;
  try {
    server = await startServer(m.config, {
      reusePort: true,
      profiles,
      instance: m.instance,
      ...(shared.replay ? { replay: shared.replay } : {}),
      counts: shared.counts,
      // The supervisor persists the users' usage; this worker only adds to it.
      ledger: shared.ledger,
      ...(telegram && m.telegram
        ? {
          telegram: {
            source: telegram,
            externalIp: m.telegram.externalIp,
            // The supervisor fetches Telegram's config for every worker.
            refresh: () => Promise.resolve(),
            stop: () => {},
          },
        }
        : {}),
    });
  } catch (e) {
    send({ type: "failed", message: e instanceof Error ? e.message : String(e) });
    return;
  }
  send({ type: "ready", addresses: server.addresses, linkAddresses: server.linkAddresses });
  server.closed.then(() => send({ type: "stopped" }));
}

async function answer(r: WorkerRequest): Promise<void> {
  const s = server;
  let value: string | number | null = null;
  if (s) {
    switch (r.op) {
      case "metrics":
        value = s.metricsText();
        break;
      case "ping":
        value = 1;
        break;
      case "crash":
        // Between tasks: never while holding a lock on the shared memory.
        setTimeout(() => self.close(), 0);
        break;
      case "policy":
        value = s.updatePolicy(r.policy);
        break;
      case "fronts":
        value = s.updateFronts(r.fronts);
        break;
      case "users":
        value = s.updateUsers(r.users, r.listenerUsers);
        break;
      case "listen":
        try {
          value = JSON.stringify({ ok: true, addresses: s.listen(r.listeners) });
        } catch (e) {
          value = JSON.stringify({ ok: false, error: e instanceof Error ? e.message : String(e) });
        }
        break;
      case "unlisten":
        s.unlisten();
        value = 1;
        break;
      case "reconfigure":
        try {
          const level = s.config.logLevel;
          const result = s.reconfigure(r.config);
          if (r.config.logLevel !== level) {
            await setupLogging(r.config.logLevel, { tag: `w${workerId}` });
          }
          value = JSON.stringify({ ok: true, ...result });
        } catch (e) {
          value = JSON.stringify({ ok: false, error: e instanceof Error ? e.message : String(e) });
        }
        break;
      case "shutdown":
        await s.shutdown();
        break;
      case "drain":
        await s.drain();
        break;
    }
  }
  send({ type: "reply", id: r.id, value });
}

self.onmessage = (e: MessageEvent<ToWorker>) => {
  const m = e.data;
  switch (m.type) {
    case "start":
      void start(m);
      break;
    case "request":
      answer(m).catch((err) => {
        log.error("Request {op} failed: {error}", { op: m.op, error: String(err) });
        send({ type: "reply", id: m.id, value: null });
      });
      break;
    case "telegram":
      telegram?.update(m.snapshot);
      break;
    case "profile":
      profiles.set(m.domain, m.profile);
      break;
  }
};
