/**
 * Counters for operators, in the Prometheus text format (version 0.0.4). Pure: it counts the
 * session events it is given and renders them with a snapshot of live figures that the server
 * supplies at scrape time; the HTTP endpoint lives in the server.
 *
 * @module
 */
import type { ProxyEvent } from "../client/events.ts";

/**
 * Counters of the whole thread, kept outside any server: errors that the last resort
 * (lib/ops/last_resort.ts) or the code that contained them reported.
 */
export const threadCounters: { unexpectedErrors: number } = { unexpectedErrors: 0 };

/** Live figures read at scrape time (not derivable from events). */
export interface MetricsSnapshot {
  /** Connections open now, per listener name. */
  active: ReadonlyMap<string, number>;
  /** Bytes counted so far by sessions still open, per listener name. */
  liveBytes: ReadonlyMap<string, { fromClients: number; toClients: number }>;
  /** Middle-proxy pools per DC id (empty without middle-proxy mode). */
  middle: ReadonlyMap<number, {
    connections: number;
    clients: number;
    sending: number;
    migrated: number;
    closedMidSend: number;
  }>;
  /** Handshakes held by the replay cache. */
  replayEntries: number;
  /** A fleet's shared state (shared_state): whether Redis answers, and decisions made alone. */
  sharedState?: { up: boolean; localDecisions: number };
  /** Split mode, front: the links to each back. */
  backs?: readonly {
    address: string;
    linksUp: number;
    streams: number;
    lastRttMs: number | null;
    linksLost: number;
    heldBytes: number;
  }[];
  /** Split mode, back: links and streams per front, refused link connections, ended links. */
  fronts?: {
    links: ReadonlyMap<string, number>;
    streams: ReadonlyMap<string, number>;
    held: ReadonlyMap<string, number>;
    refused: ReadonlyMap<string, number>;
    ended: ReadonlyMap<string, number>;
  };
  /** Resident set size of the process. */
  rssBytes: number;
  /**
   * Users: what each has used (shared by every worker, so the same in each) and how often their
   * relays were paused by their rate limit (this thread's).
   */
  users?: {
    usage: readonly {
      name: string;
      uniqueIps: number;
      bytesUsed: number;
      quotaLeft: number | null;
    }[];
    pauses: ReadonlyMap<string, number>;
  };
}

/** Counters summed over listeners. */
export interface MetricsTotals {
  /** TCP connections accepted, refused at accept or not. */
  accepted: number;
  established: number;
  rejected: Record<string, number>;
  closed: Record<string, number>;
  /** Bytes of sessions that have ended. */
  bytesFromClients: number;
  bytesToClients: number;
}

type Labels = Record<string, string | number>;

interface Family {
  help: string;
  type: "counter" | "gauge";
  samples: Map<string, number>;
}

/**
 * Event counters per listener, rendered with a live snapshot.
 *
 * @example Usage
 * ```ts
 * import { Metrics } from "./metrics.ts";
 * const m = new Metrics(["main"], "0.1.0", 1_700_000_000_000);
 * m.accepted("main");
 * m.render({
 *   active: new Map([["main", 1]]),
 *   liveBytes: new Map(),
 *   middle: new Map(),
 *   replayEntries: 0,
 *   rssBytes: 1,
 * }).includes('mtproxy_connections_accepted_total{listener="main"} 1'); // true
 * ```
 */
export class Metrics {
  readonly #listeners: readonly string[];
  readonly #version: string;
  readonly #startedAtMs: number;
  readonly #accepted = new Map<string, number>();
  readonly #rejected = new Map<string, number>();
  readonly #established = new Map<string, number>();
  readonly #fronted = new Map<string, number>();
  readonly #closed = new Map<string, number>();
  readonly #bytesFromClients = new Map<string, number>();
  readonly #bytesToClients = new Map<string, number>();
  /** Per user: connections established, and bytes of those that ended, each way. */
  readonly #userEstablished = new Map<string, number>();
  readonly #userBytesFrom = new Map<string, number>();
  readonly #userBytesTo = new Map<string, number>();
  /** Per user and reason: connections refused (user_*), and relays that ended. */
  readonly #userRefused = new Map<string, number>();
  readonly #userClosed = new Map<string, number>();

  constructor(listeners: readonly string[], version: string, startedAtMs: number) {
    this.#listeners = listeners;
    this.#version = version;
    this.#startedAtMs = startedAtMs;
  }

  /** Count a TCP connection accepted by `listener`, before any check that may refuse it. */
  accepted(listener: string): void {
    _add(this.#accepted, listener, 1);
  }

  /** Count one session event ("accepted" ones are counted by {@linkcode Metrics.accepted}). */
  observe(e: ProxyEvent): void {
    switch (e.type) {
      case "rejected":
        _add(this.#rejected, `${e.listener}\0${e.reason}`, 1);
        if (e.user !== undefined) _add(this.#userRefused, `${e.user}\0${e.reason}`, 1);
        break;
      case "established":
        _add(this.#established, `${e.listener}\0${e.protocol}`, 1);
        if (e.user !== undefined) _add(this.#userEstablished, e.user, 1);
        break;
      case "fronted":
        _add(this.#fronted, `${e.listener}\0${e.reason}`, 1);
        if (e.user !== undefined) _add(this.#userRefused, `${e.user}\0${e.reason}`, 1);
        break;
      case "closed":
        _add(this.#closed, `${e.listener}\0${e.reason}`, 1);
        _add(this.#bytesFromClients, e.listener, e.bytesFromClient);
        _add(this.#bytesToClients, e.listener, e.bytesToClient);
        if (e.user !== undefined) {
          _add(this.#userBytesFrom, e.user, e.bytesFromClient);
          _add(this.#userBytesTo, e.user, e.bytesToClient);
          _add(this.#userClosed, `${e.user}\0${e.reason}`, 1);
        }
        break;
    }
  }

  /** The counters summed over listeners (bytes of closed sessions only). */
  totals(): MetricsTotals {
    const sum = (m: Map<string, number>) => [...m.values()].reduce((a, b) => a + b, 0);
    const byReason = (m: Map<string, number>) => {
      const out: Record<string, number> = {};
      for (const [key, n] of m) {
        const reason = key.slice(key.indexOf("\0") + 1);
        out[reason] = (out[reason] ?? 0) + n;
      }
      return out;
    };
    return {
      accepted: sum(this.#accepted),
      established: sum(this.#established),
      rejected: byReason(this.#rejected),
      closed: byReason(this.#closed),
      bytesFromClients: sum(this.#bytesFromClients),
      bytesToClients: sum(this.#bytesToClients),
    };
  }

  /** The whole exposition, with `live` figures read now. */
  render(live: MetricsSnapshot): string {
    const families = new Map<string, Family>();
    const put = (
      name: string,
      type: Family["type"],
      help: string,
      labels: Labels,
      value: number,
    ) => {
      let f = families.get(name);
      if (!f) families.set(name, f = { help, type, samples: new Map() });
      f.samples.set(_labels(labels), value);
    };

    put("mtproxy_info", "gauge", "Version of the running proxy.", { version: this.#version }, 1);
    put(
      "mtproxy_start_time_seconds",
      "gauge",
      "When the proxy started, in Unix seconds.",
      {},
      Math.floor(this.#startedAtMs / 1000),
    );
    for (const l of this.#listeners) {
      const listener = { listener: l };
      put(
        "mtproxy_connections_accepted_total",
        "counter",
        "TCP connections accepted, including those refused at once.",
        listener,
        this.#accepted.get(l) ?? 0,
      );
      put(
        "mtproxy_connections_active",
        "gauge",
        "Connections open now, in any phase.",
        listener,
        live.active.get(l) ?? 0,
      );
      const bytes = live.liveBytes.get(l);
      put(
        "mtproxy_client_bytes_received_total",
        "counter",
        "Bytes received from clients (relayed or fronted).",
        listener,
        (this.#bytesFromClients.get(l) ?? 0) + (bytes?.fromClients ?? 0),
      );
      put(
        "mtproxy_client_bytes_sent_total",
        "counter",
        "Bytes sent to clients (relayed or fronted).",
        listener,
        (this.#bytesToClients.get(l) ?? 0) + (bytes?.toClients ?? 0),
      );
    }
    const split = (
      map: Map<string, number>,
      name: string,
      help: string,
      second: string,
    ) => {
      for (const [key, n] of [...map].sort(([a], [b]) => a < b ? -1 : a > b ? 1 : 0)) {
        const [listener, value] = key.split("\0") as [string, string];
        put(name, "counter", help, { listener, [second]: value }, n);
      }
    };
    split(
      this.#established,
      "mtproxy_connections_established_total",
      "Clients whose handshake succeeded and whose traffic went to Telegram.",
      "protocol",
    );
    split(
      this.#rejected,
      "mtproxy_connections_rejected_total",
      "Connections turned away before reaching Telegram, by reason.",
      "reason",
    );
    split(
      this.#fronted,
      "mtproxy_connections_fronted_total",
      "Connections that could not be clients, relayed to the fronting site, by reason.",
      "reason",
    );
    split(
      this.#closed,
      "mtproxy_connections_closed_total",
      "Relayed connections that ended, by reason.",
      "reason",
    );
    for (const [dc, s] of [...live.middle].sort(([a], [b]) => a - b)) {
      const labels = { dc };
      put(
        "mtproxy_middle_connections",
        "gauge",
        "Live connections to Telegram's middle proxies.",
        labels,
        s.connections,
      );
      put(
        "mtproxy_middle_clients",
        "gauge",
        "Clients carried by the middle-proxy connections.",
        labels,
        s.clients,
      );
      put(
        "mtproxy_middle_clients_sending",
        "gauge",
        "Clients with packets not yet written to a middle proxy.",
        labels,
        s.sending,
      );
      put(
        "mtproxy_middle_migrated_total",
        "counter",
        "Clients moved to another connection when theirs closed.",
        labels,
        s.migrated,
      );
      put(
        "mtproxy_middle_closed_mid_send_total",
        "counter",
        "Clients closed because their connection closed while they were sending.",
        labels,
        s.closedMidSend,
      );
    }
    for (const b of live.backs ?? []) {
      const labels = { back: b.address };
      put("mtproxy_link_up", "gauge", "Split mode: links up to each back.", labels, b.linksUp);
      put(
        "mtproxy_link_streams",
        "gauge",
        "Split mode: client streams carried by the links to each back.",
        labels,
        b.streams,
      );
      put(
        "mtproxy_link_lost_total",
        "counter",
        "Split mode: links to each back that were lost after being up.",
        labels,
        b.linksLost,
      );
      put(
        "mtproxy_link_held_bytes",
        "gauge",
        "Split mode: answer bytes from each back that clients have not taken yet.",
        labels,
        b.heldBytes,
      );
      if (b.lastRttMs !== null) {
        put(
          "mtproxy_link_rtt_seconds",
          "gauge",
          "Split mode: the last keepalive round trip to each back.",
          labels,
          b.lastRttMs / 1000,
        );
      }
    }
    const fronts = live.fronts;
    if (fronts) {
      for (const [front, n] of fronts.links) {
        put("mtproxy_front_links", "gauge", "Split mode: links up from each front.", { front }, n);
      }
      for (const [front, n] of fronts.streams) {
        put(
          "mtproxy_front_streams",
          "gauge",
          "Split mode: client streams open from each front.",
          { front },
          n,
        );
      }
      for (const [front, n] of fronts.held) {
        put(
          "mtproxy_front_held_bytes",
          "gauge",
          "Split mode: answer bytes held for each front's clients until the front takes them.",
          { front },
          n,
        );
      }
      for (const [reason, n] of fronts.refused) {
        put(
          "mtproxy_link_refused_total",
          "counter",
          "Split mode: connections to link ports that were not a front, by reason.",
          { reason },
          n,
        );
      }
      for (const [end, n] of fronts.ended) {
        put("mtproxy_link_ended_total", "counter", "Split mode: links ended, by how.", { end }, n);
      }
    }
    if (live.sharedState) {
      put(
        "mtproxy_shared_state_up",
        "gauge",
        "Whether the fleet's shared state (Redis) answers now.",
        {},
        live.sharedState.up ? 1 : 0,
      );
      put(
        "mtproxy_shared_state_local_decisions_total",
        "counter",
        "Replay and limit checks decided by this proxy alone because Redis could not answer in time.",
        {},
        live.sharedState.localDecisions,
      );
    }
    for (const [user, n] of this.#userEstablished) {
      const labels = { user };
      put(
        "mtproxy_user_connections_established_total",
        "counter",
        "Clients that got through with each user's secret.",
        labels,
        n,
      );
      put(
        "mtproxy_user_bytes_received_total",
        "counter",
        "Bytes received from each user's clients (connections that ended).",
        labels,
        this.#userBytesFrom.get(user) ?? 0,
      );
      put(
        "mtproxy_user_bytes_sent_total",
        "counter",
        "Bytes sent to each user's clients (connections that ended).",
        labels,
        this.#userBytesTo.get(user) ?? 0,
      );
    }
    const byReason = [
      [
        "mtproxy_user_refused_total",
        "Clients of each user refused by the user's limits (fake-TLS ones fronted), by reason.",
        this.#userRefused,
      ],
      [
        "mtproxy_user_closed_total",
        "Relays of each user's clients that ended, by reason (user_quota: the quota ran out).",
        this.#userClosed,
      ],
    ] as const;
    for (const [name, help, counts] of byReason) {
      for (const [key, n] of counts) {
        // Keyed "user\0reason".
        const at = key.indexOf("\0");
        put(name, "counter", help, { user: key.slice(0, at), reason: key.slice(at + 1) }, n);
      }
    }
    for (const u of live.users?.usage ?? []) {
      const labels = { user: u.name };
      put(
        "mtproxy_user_quota_used_bytes",
        "gauge",
        "Bytes both ways each user moved in the current quota period (data_quota, quota_reset).",
        labels,
        u.bytesUsed,
      );
      if (u.quotaLeft !== null) {
        put(
          "mtproxy_user_quota_left_bytes",
          "gauge",
          "Bytes each user with a data_quota may still move in this period.",
          labels,
          u.quotaLeft,
        );
      }
      put(
        "mtproxy_user_unique_ips",
        "gauge",
        "Client addresses each user was seen from within unique_ip_window (0 without max_unique_ips).",
        labels,
        u.uniqueIps,
      );
    }
    for (const [user, n] of live.users?.pauses ?? []) {
      put(
        "mtproxy_user_rate_limited_total",
        "counter",
        "Times a relay of each user paused reading because of the user's rate_limit.",
        { user },
        n,
      );
    }
    put(
      "mtproxy_unexpected_errors_total",
      "counter",
      "Unexpected errors (bugs) caught and contained; each cost at most one client or stream.",
      {},
      threadCounters.unexpectedErrors,
    );
    put(
      "mtproxy_replay_cache_entries",
      "gauge",
      "Handshakes remembered to refuse replays.",
      {},
      live.replayEntries,
    );
    put(
      "process_resident_memory_bytes",
      "gauge",
      "Resident memory size in bytes.",
      {},
      live.rssBytes,
    );

    const out: string[] = [];
    for (const [name, f] of families) {
      out.push(`# HELP ${name} ${f.help}`, `# TYPE ${name} ${f.type}`);
      for (const [labels, value] of f.samples) out.push(`${name}${labels} ${value}`);
    }
    return out.join("\n") + "\n";
  }
}

function _add(map: Map<string, number>, key: string, n: number): void {
  map.set(key, (map.get(key) ?? 0) + n);
}

/** `{a="1",b="x"}`, values escaped as the text format requires; empty labels render as "". */
function _labels(labels: Labels): string {
  const parts = Object.entries(labels).map(([k, v]) =>
    `${k}="${String(v).replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"')}"`
  );
  return parts.length ? `{${parts.join(",")}}` : "";
}
