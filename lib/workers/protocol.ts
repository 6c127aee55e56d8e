/**
 * Messages between the supervisor (the main thread of `mtproxy run` with `workers` > 1) and its
 * worker threads. Everything here crosses `postMessage`, so it is plain data (structured clone):
 * configs, snapshots and SharedArrayBuffers, never functions or class instances.
 *
 * @module
 */
import type {
  Config,
  FrontCredential,
  ListenerConfig,
  PolicyConfig,
  UserConfig,
} from "../config/types.ts";
import type { TlsProfile } from "../guard/tls_profile.ts";
import type { TelegramConfigSnapshot } from "../telegram/proxy_config.ts";
import type { LogLevel } from "../config/types.ts";

/** The first message to a worker: everything it needs to serve. */
export interface WorkerStart {
  readonly type: "start";
  /** 1-based, shown in log lines ("w2") and metrics. */
  readonly id: number;
  /** The configuration with every port resolved (the first worker's bound ports). */
  readonly config: Config;
  readonly logLevel: LogLevel;
  /** Telegram's config as the supervisor fetched it; null without middle-proxy mode. */
  readonly telegram: { snapshot: TelegramConfigSnapshot; externalIp: string | null } | null;
  /** The fronted sites measured so far. */
  readonly profiles: readonly (readonly [string, TlsProfile])[];
  /** Shared state of every worker (see lib/workers/shared.ts). */
  readonly shared: SharedBuffers;
  /** A back's instance id, the same for all workers. */
  readonly instance: Uint8Array;
}

/** The SharedArrayBuffers every worker opens. */
export interface SharedBuffers {
  /** The replay cache; null when replay protection is off. */
  readonly replay: SharedArrayBuffer | null;
  /** Connection counts of all workers (max_connections, per-IP and per-SNI limits). */
  readonly counts: SharedArrayBuffer;
  /** Whose counts these are (1-based): the supervisor gives them back if the worker dies. */
  readonly worker: number;
  /** The users' ledger: bytes used, addresses seen, rate-limit buckets (lib/guard/quota.ts). */
  readonly users: SharedArrayBuffer;
}

/** A request from the supervisor; the worker answers with a {@linkcode WorkerReply}. */
export type WorkerRequest =
  | { readonly type: "request"; readonly id: number; readonly op: "metrics" | "ping" }
  /** End the worker between two tasks, as a crash would (tests). */
  | { readonly type: "request"; readonly id: number; readonly op: "crash" }
  | { readonly type: "request"; readonly id: number; readonly op: "shutdown" | "drain" }
  | {
    readonly type: "request";
    readonly id: number;
    readonly op: "policy";
    readonly policy: PolicyConfig;
  }
  | {
    readonly type: "request";
    readonly id: number;
    readonly op: "fronts";
    readonly fronts: readonly FrontCredential[];
  }
  | {
    readonly type: "request";
    readonly id: number;
    readonly op: "users";
    readonly users: readonly UserConfig[];
    readonly listenerUsers: ReadonlyMap<string, readonly string[] | null>;
  }
  /**
   * A reload, first step: bind these listeners without accepting yet (ServerHandle.listen).
   * Answers a {@linkcode ListenReply} as JSON.
   */
  | {
    readonly type: "request";
    readonly id: number;
    readonly op: "listen";
    readonly listeners: readonly ListenerConfig[];
  }
  /** A reload that another worker could not bind for: close what "listen" bound. */
  | { readonly type: "request"; readonly id: number; readonly op: "unlisten" }
  /**
   * A reload, second step: run with this configuration (ServerHandle.reconfigure). Answers a
   * {@linkcode ReconfigureReply} as JSON.
   */
  | {
    readonly type: "request";
    readonly id: number;
    readonly op: "reconfigure";
    readonly config: Config;
  };

/** A worker's answer to "listen" (JSON in the reply's value). */
export type ListenReply =
  | {
    readonly ok: true;
    readonly addresses: readonly { name: string; host: string; port: number }[];
  }
  | { readonly ok: false; readonly error: string };

/** A worker's answer to "reconfigure" (JSON in the reply's value). */
export type ReconfigureReply =
  | {
    readonly ok: true;
    readonly reloaded: number;
    readonly policy: number;
    readonly fronts: number;
  }
  | { readonly ok: false; readonly error: string };

/** News the supervisor pushes to every worker. */
export type WorkerNews =
  | { readonly type: "telegram"; readonly snapshot: TelegramConfigSnapshot }
  | { readonly type: "profile"; readonly domain: string; readonly profile: TlsProfile };

/** Anything the supervisor sends. */
export type ToWorker = WorkerStart | WorkerRequest | WorkerNews;

/** Where a worker is bound. */
export interface WorkerAddresses {
  readonly addresses: readonly { name: string; host: string; port: number }[];
  readonly linkAddresses: readonly { name: string; host: string; port: number }[];
}

/** Anything a worker sends. */
export type FromWorker =
  | ({ readonly type: "ready" } & WorkerAddresses)
  | { readonly type: "failed"; readonly message: string }
  | { readonly type: "reply"; readonly id: number; readonly value: string | number | null }
  /** The server stopped by itself (it never does today) or after shutdown/drain. */
  | { readonly type: "stopped" };
