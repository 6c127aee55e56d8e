/**
 * The validated, frozen configuration the rest of the proxy reads. YAML keys are snake_case;
 * these fields are their camelCase twins, with durations converted to milliseconds.
 *
 * @module
 */

/** Client protocol families that `allowed_protocols` can switch on or off. */
export type ClientProtocol = "plain" | "dd" | "tls";

/** What this process is: one proxy, or half of a split pair. */
export type Role = "standalone" | "front" | "back";

/** Log levels accepted by `log_level`. */
export type LogLevel = "debug" | "info" | "warning" | "error";

/** A host and port to dial. */
export interface HostPort {
  readonly host: string;
  readonly port: number;
}

/** One listening socket and the secret its clients must know. */
export interface ListenerConfig {
  /** Unique name, used in logs and links. */
  readonly name: string;
  /** IPv4 or IPv6 literal to bind ("0.0.0.0", "::"). */
  readonly host: string;
  readonly port: number;
  /** The 16-byte secret. */
  readonly secret: Uint8Array;
  /** Fake-TLS domains accepted as SNI; the first is used in links. Never empty (a default applies). */
  readonly tlsDomains: readonly string[];
  /** Protocols this listener accepts (the global list unless overridden per listener). */
  readonly allowedProtocols: readonly ClientProtocol[];
  /** Promotion (ad) tag from @MTProxybot, 16 bytes; null when unset. */
  readonly tag: Uint8Array | null;
  /** Connections start with a PROXY protocol header (v1 or v2) naming the real client. */
  readonly proxyProtocol: boolean;
  /** The users (names in `Config.users`) this listener accepts; null: every user. */
  readonly users: readonly string[] | null;
}

/** How often a user's traffic quota starts again from zero. */
export type QuotaReset = "daily" | "weekly" | "monthly";

/** One user (`users.NAME`): their own secret, limits and quota. */
export interface UserConfig {
  /** Unique; shown in logs and metrics. */
  readonly name: string;
  /** The user's 16-byte secret. */
  readonly secret: Uint8Array;
  /** A disabled user is refused (and, with fake-TLS, fronted like any non-client). */
  readonly enabled: boolean;
  /** Connections at once; 0: no limit. */
  readonly maxConnections: number;
  /** Different client IP addresses within `uniqueIpWindowMs`; 0: no limit. */
  readonly maxUniqueIps: number;
  readonly uniqueIpWindowMs: number;
  /** Bytes both ways before the user is refused; null: no quota. */
  readonly dataQuotaBytes: number | null;
  /** When the quota starts again from zero; null: never. */
  readonly quotaReset: QuotaReset | null;
  /** Unix time in ms after which the user is refused; null: never. */
  readonly expiresAt: number | null;
  /**
   * Bytes per second, both ways and over all the user's connections together, as a token
   * bucket that pauses reading (lib/guard/rate_limit.ts); null: no limit.
   */
  readonly rateLimitBytesPerSec: number | null;
  /** Promotion tag for this user's clients, overriding the listener's; null: the listener's. */
  readonly tag: Uint8Array | null;
}

/** Direct-mode Telegram settings. */
export interface TelegramConfig {
  /** Overrides of the built-in DC table: DC id (negative = media) -> address. */
  readonly dcAddresses: ReadonlyMap<number, HostPort>;
  readonly preferIpv6: boolean;
  /**
   * Fast mode: the proxy asks each DC to encrypt its replies with the client's keystream, so
   * they pass to the client without being decrypted and re-encrypted.
   */
  readonly fastMode: boolean;
  /** DC used when a client asks for an id nobody knows. */
  readonly defaultDc: number;
  /** "auto": middle proxies for listeners with a tag, direct otherwise. */
  readonly mode: "auto" | "direct" | "middle";
  readonly proxySecretUrl: string;
  readonly proxyConfigUrl: string;
  readonly proxyConfigV6Url: string;
  /** How often the proxy secret and middle-proxy list are fetched again. */
  readonly refreshIntervalMs: number;
}

/** The multiplexed connections to Telegram's middle proxies. */
export interface PoolConfig {
  /** Connections opened per DC at start or first use. */
  readonly minConnections: number;
  /** Open another connection when the least loaded one carries more clients than this. */
  readonly clientsPerConnection: number;
  /** Stop reading a connection while its clients have more undelivered bytes than this. */
  readonly maxUnackedBytes: number;
  /** ... or more undelivered packets than this. */
  readonly maxUnackedPackets: number;
  /** A single client may hold at most this many undelivered bytes before it is dropped. */
  readonly maxClientUnackedBytes: number;
}

/** Timeouts, all in milliseconds. */
export interface TimeoutsConfig {
  /** A client must finish its handshake within this. */
  readonly handshakeMs: number;
  /** A relayed connection with no traffic either way for this long is closed. */
  readonly idleMs: number;
  /** Dialing a DC must succeed within this. */
  readonly dcConnectMs: number;
  /** On SIGINT/SIGTERM, live clients get this long to finish. */
  readonly shutdownGraceMs: number;
  /** On SIGUSR2 (an upgrade: a new process took the ports), live clients get this long. */
  readonly drainMs: number;
}

/** Fake-TLS settings. */
export interface TlsConfig {
  /** A ClientHello timestamp may be this far in the past or future. */
  readonly maxClockSkewMs: number;
  /** Size range of the fake encrypted-handshake record when the real site was not measured. */
  readonly fakeCertSize: { readonly min: number; readonly max: number };
  /** How often the real site of each tls_domain is measured; 0 = never. */
  readonly profileRefreshMs: number;
}

/** What Telegram transport errors a replaying probe may see. */
export type ServerErrorFilter = "off" | "first" | "all";

/** Replay protection. */
export interface ReplayConfig {
  /** Handshakes remembered at most; 0 turns replay protection off. */
  readonly maxEntries: number;
  /** Handshakes are remembered this long at most. */
  readonly maxAgeMs: number;
  /** Close instead of forwarding Telegram's transport error (first packet only, or any). */
  readonly serverErrorFilter: ServerErrorFilter;
}

/** Where connections that are not proxy clients go. */
export interface FrontingConfig {
  /** "off": close them; "sni": the SNI's host on port 443; or a fixed address. */
  readonly mode: "off" | "sni" | HostPort;
  readonly connectTimeoutMs: number;
  /** SNIs fronted in "sni" mode besides every listener's tls_domain. */
  readonly allow: readonly string[];
}

/** Who may connect, and how many connections one address or one SNI may hold. */
export interface PolicyConfig {
  /** Connections at once per client IPv4 address or IPv6 /64; 0: no limit. */
  readonly maxConnectionsPerIp: number;
  /** Fake-TLS connections at once per SNI (one user with per-SNI secrets); 0: no limit. */
  readonly maxConnectionsPerSni: number;
  /** Networks (CIDR) allowed to connect; empty: all. */
  readonly allowIps: readonly string[];
  /** Networks (CIDR) refused. */
  readonly denyIps: readonly string[];
  /** SNIs (lowercase) fake-TLS clients may use; empty: all that pass the other checks. */
  readonly allowSni: readonly string[];
  /** SNIs (lowercase) refused. */
  readonly denySni: readonly string[];
}

/** The operators' metrics endpoint. */
export interface MetricsConfig {
  /** Where Prometheus metrics are served over HTTP (GET /metrics); null: not served. */
  readonly listen: HostPort | null;
}

/** The admin API and status page (`admin`); off unless `listen` is set. */
export interface AdminConfig {
  /** Where the admin HTTP server listens (keep it on 127.0.0.1); null: not served. */
  readonly listen: HostPort | null;
  /** The bearer token every request needs; null: the state file's (made on first start). */
  readonly token: string | null;
}

/** A fleet's shared state on Redis (`shared_state`). */
export interface SharedStateConfig {
  /** `redis://[user:password@]host:port[/db]` (or `rediss://`). */
  readonly redisUrl: string;
  /** Prefix of every key, so that several fleets can share one server. */
  readonly keyPrefix: string;
  /** The longest a handshake waits for Redis before deciding alone. */
  readonly timeoutMs: number;
  /** A crashed proxy's connection counts expire after this. */
  readonly leaseMs: number;
  /** This proxy's name in the fleet (a random suffix is added per process). */
  readonly instance: string;
}

/** A back as a front sees it (`backs[]`). */
export interface BackConfig {
  /** "host:port" of the back's link listener (host name or IP literal). */
  readonly address: HostPort;
  /** The link secret this front shares with that back (16 bytes from 32 hex digits). */
  readonly secret: Uint8Array;
  /** The SNI the front's link hello names; one of the back's link_listeners[].tls_domain. */
  readonly tlsDomain: string;
  /** Links kept open to this back (1-16, default 2). */
  readonly links: number;
}

/** A port where a back accepts links from fronts (`link_listeners[]`). */
export interface LinkListenerConfig {
  /** Unique name, used in logs ("link1", "link2"... by default); same rules as listener names. */
  readonly name: string;
  /** IPv4 or IPv6 literal to bind, default "0.0.0.0". */
  readonly host: string;
  /** Port to bind, default 443. */
  readonly port: number;
  /** SNIs a front's hello may name (first used in snippets); default [DEFAULT_TLS_DOMAIN]. */
  readonly tlsDomains: readonly string[];
}

/** A front a back accepts (`fronts[]`). */
export interface FrontCredential {
  /** 1-64 of [A-Za-z0-9_.-], unique among the back's fronts. */
  readonly name: string;
  /** The 16-byte link secret, unique among the back's fronts. */
  readonly secret: Uint8Array;
}

/** The link between fronts and backs (`link:` section). */
export interface LinkConfig {
  /** Per-stream credit window in bytes (`link.window`, default 262144 = 256 KiB, 16384..16777216). */
  readonly windowBytes: number;
  /** A ping is sent after this long without traffic (`link.keepalive`, seconds, default 10). */
  readonly keepaliveMs: number;
  /** A link with no traffic at all for this long is dead (`link.timeout`, seconds, default 30; must exceed keepalive). */
  readonly timeoutMs: number;
  /** How long a new client waits for a usable link before it is closed (`link.wait`, seconds, default 5). */
  readonly waitMs: number;
}

/** The whole configuration. */
export interface Config {
  /** "standalone" (the default), or one half of a split pair. */
  readonly role: Role;
  readonly listeners: readonly ListenerConfig[];
  readonly allowedProtocols: readonly ClientProtocol[];
  /** Host printed in links; null when unset (links then use the listener address). */
  readonly publicHost: string | null;
  readonly logLevel: LogLevel;
  readonly telegram: TelegramConfig;
  readonly timeouts: TimeoutsConfig;
  readonly tls: TlsConfig;
  /** Concurrent clients per listener; further connections are refused at accept. */
  readonly maxConnections: number;
  readonly pool: PoolConfig;
  /** Our public IPv4 as Telegram sees it (middle-proxy key derivation); null: look it up. */
  readonly externalIp: string | null;
  /** Tried in order when externalIp is unset. */
  readonly ipLookupUrls: readonly string[];
  readonly replay: ReplayConfig;
  readonly fronting: FrontingConfig;
  /** Fake-TLS users get secrets derived from the base secret and their own SNI. */
  readonly perSniSecrets: boolean;
  /** Salt of the per-SNI derivation. */
  readonly perSniSalt: string;
  readonly policy: PolicyConfig;
  readonly metrics: MetricsConfig;
  /** A front: the backs it carries clients to (empty in other roles). */
  readonly backs: readonly BackConfig[];
  /** A back: where it accepts links from fronts (empty in other roles). */
  readonly linkListeners: readonly LinkListenerConfig[];
  /** A back: the fronts it accepts (empty in other roles). */
  readonly fronts: readonly FrontCredential[];
  /** A back: promotion tag for clients whose front listener has none; null when unset. */
  readonly defaultTag: Uint8Array | null;
  /** Link timing and flow control (both roles; defaults in standalone). */
  readonly link: LinkConfig;
  /** Worker threads serving the listeners; "auto": one per CPU the process may use. */
  readonly workers: number | "auto";
  /** Replays and policy limits shared by a fleet through Redis; null: this process alone. */
  readonly sharedState: SharedStateConfig | null;
  /** Users with their own secrets, on the listeners that list them (or all). */
  readonly users: readonly UserConfig[];
  /** The admin API and status page. */
  readonly admin: AdminConfig;
  /**
   * `users_file` as written (relative to the config file's directory); null: the default file
   * next to the state file. Its users are part of `users`.
   */
  readonly usersFile: string | null;
}
