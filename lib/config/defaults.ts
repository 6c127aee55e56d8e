/**
 * Every configuration default, named and justified. `config.example.yaml` and the README's
 * configuration reference repeat these values; keep the three in sync.
 *
 * @module
 */
import type { ClientProtocol, LinkConfig, LogLevel, PolicyConfig, Role } from "./types.ts";

/** Listening port: unprivileged, so a first run needs no root; production usually maps 443. */
export const DEFAULT_PORT = 1443;

/** Bind address: every IPv4 interface, the usual choice on a single-homed server. */
export const DEFAULT_HOST = "0.0.0.0";

/** Name of the listener created when the file lists none; it shows in logs and `link`. */
export const DEFAULT_LISTENER_NAME = "main";

/** All client protocols, best first (fake-TLS hides best, plain is for old apps). */
export const DEFAULT_ALLOWED_PROTOCOLS: readonly ClientProtocol[] = Object.freeze([
  "tls",
  "dd",
  "plain",
]);

/** Info logs listeners, refusals and failures without a line per healthy connection. */
export const DEFAULT_LOG_LEVEL: LogLevel = "info";

/** Handshake deadline: long enough for slow mobile links, short enough to shed idle probes. */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 30_000;

/** Idle close after 20 min, the Erlang proxy's ready timeout; apps keep connections warm. */
export const DEFAULT_IDLE_TIMEOUT_MS = 1_200_000;

/** Dial deadline for a Telegram DC: a healthy DC answers in well under a second. */
export const DEFAULT_DC_CONNECT_TIMEOUT_MS = 10_000;

/** Grace period on SIGINT/SIGTERM: lets live transfers finish, fits systemd's 30 s stop. */
export const DEFAULT_SHUTDOWN_GRACE_MS = 10_000;

/**
 * Drain period after SIGUSR2 (an upgrade): Telegram apps keep a connection for hours, so the old
 * process lets them finish for up to an hour while the new one takes every new client.
 */
export const DEFAULT_DRAIN_MS = 3_600_000;

/** Worker threads: one per CPU the process may use. */
export const DEFAULT_WORKERS = "auto";

/** The most worker threads a proxy may run. */
export const MAX_WORKERS = 256;

/** Fake-TLS timestamp window of ±10 min: phones with drifting clocks still get in. */
export const DEFAULT_TLS_MAX_CLOCK_SKEW_MS = 600_000;

/** DC for unknown DC ids: DC 2 is where most accounts live and what mtg falls back to. */
export const DEFAULT_DC = 2;

/** DC ids with built-in addresses (lib/telegram/dc.ts), valid as `default_dc` without an override. */
export const BUILTIN_DC_IDS: readonly number[] = Object.freeze([1, 2, 3, 4, 5, 203]);

/** Dial DCs over IPv4 unless asked: many hosts have no working IPv6 route. */
export const DEFAULT_PREFER_IPV6 = false;

/**
 * Let DCs encrypt their replies with the client's keystream, so replies need no AES work:
 * half the CPU per byte downloaded and two fewer cipher contexts per client.
 */
export const DEFAULT_FAST_MODE = true;

/** Concurrent clients per listener: two sockets each fits a 65536 file-descriptor limit. */
export const DEFAULT_MAX_CONNECTIONS = 10_000;

/** Fake-TLS domain used when none is configured, so `ee` links always work. */
export const DEFAULT_TLS_DOMAIN = "www.cloudflare.com";

/** State file name, created next to the config file (or in the working directory). */
export const DEFAULT_STATE_FILE_NAME = "mtproxy-state.json";

/**
 * Users file name (`users_file` unset), next to the state file: users the admin API adds live
 * there, beside the proxy's other state, not in a config file an operator may keep in git.
 */
export const DEFAULT_USERS_FILE_NAME = "mtproxy-users.yaml";

/** Shortest `admin.token`: 16 characters leave too many guesses for the rate limit to matter. */
export const MIN_ADMIN_TOKEN_LENGTH = 16;

/** Fallback size range of the fake certificate record: what real certificate chains take. */
export const DEFAULT_FAKE_CERT_SIZE = Object.freeze({ min: 2500, max: 4700 });

/** Measure the real site hourly: certificates change rarely, and probing often is a signal. */
export const DEFAULT_PROFILE_REFRESH_MS = 3_600_000;

/**
 * Remember this many handshakes: at ~31 bytes each (REPLAY_ENTRY_BYTES), 15.5 MB, enough for hours of a busy proxy
 * (fake-TLS replays are also bounded by the clock window).
 */
export const DEFAULT_REPLAY_MAX_ENTRIES = 500_000;

/** Obfuscated2 inits carry no clock, so remember them for six hours (the Erlang proxy's choice). */
export const DEFAULT_REPLAY_MAX_AGE_MS = 6 * 3_600_000;

/** Hide Telegram's answer to a replayed session's first packet (the Erlang proxy's default). */
export const DEFAULT_SERVER_ERROR_FILTER = "first" as const;

/**
 * Front bad clients to the SNI's real site: a probe then meets the site's own certificate.
 * Only configured tls_domains (and fronting.allow) are fronted, so it is no open relay.
 */
export const DEFAULT_FRONTING_MODE = "sni" as const;

/** Give up dialing the fronting target after this long (the Erlang proxy's default). */
export const DEFAULT_FRONTING_CONNECT_TIMEOUT_MS = 10_000;

/** Salt of per-SNI secrets, as in the Erlang proxy, so their links carry over. */
export const DEFAULT_PER_SNI_SALT = "mtproto-proxy-per-sni-v1";

/** Middle proxies for listeners with an ad tag, direct mode for the others. */
export const DEFAULT_TELEGRAM_MODE = "auto" as const;

/** Where Telegram publishes the middle proxies' shared secret. */
export const DEFAULT_PROXY_SECRET_URL = "https://core.telegram.org/getProxySecret";
/** Where Telegram publishes the middle-proxy list (IPv4). */
export const DEFAULT_PROXY_CONFIG_URL = "https://core.telegram.org/getProxyConfig";
/** Where Telegram publishes the middle-proxy list (IPv6). */
export const DEFAULT_PROXY_CONFIG_V6_URL = "https://core.telegram.org/getProxyConfigV6";

/** Fetch the middle-proxy list hourly (the Erlang proxy's and mtg's choice). */
export const DEFAULT_REFRESH_INTERVAL_MS = 3_600_000;

/** IP-echo services asked for our public IPv4 when external_ip is unset. */
export const DEFAULT_IP_LOOKUP_URLS: readonly string[] = Object.freeze([
  "https://v4.ident.me/",
  "https://ipv4.icanhazip.com/",
  "https://api.ipify.org/",
]);

/** Two connections per DC: one can rotate while the other carries the clients. */
export const DEFAULT_POOL_MIN_CONNECTIONS = 2;
/** Clients per middle-proxy connection before another opens (the Erlang proxy's default). */
export const DEFAULT_POOL_CLIENTS_PER_CONNECTION = 300;
/** Undelivered bytes per connection before it stops reading: 300 clients x 30 KiB. */
export const DEFAULT_POOL_MAX_UNACKED_BYTES = 300 * 30 * 1024;
/** Undelivered packets per connection before it stops reading: 2 per client. */
export const DEFAULT_POOL_MAX_UNACKED_PACKETS = 600;
/** One slow client may hold this much undelivered data; past it, it is dropped. */
export const DEFAULT_POOL_MAX_CLIENT_UNACKED_BYTES = 1024 * 1024;

/** No connection limits and no lists: the proxy serves whoever holds the secret. */
export const DEFAULT_POLICY: PolicyConfig = Object.freeze({
  maxConnectionsPerIp: 0,
  maxConnectionsPerSni: 0,
  allowIps: Object.freeze([]),
  denyIps: Object.freeze([]),
  allowSni: Object.freeze([]),
  denySni: Object.freeze([]),
});

/** One process that is the whole proxy: split mode is opt-in. */
export const DEFAULT_ROLE: Role = "standalone";

/** Links per back: one can be replaced while the other carries the clients. */
export const DEFAULT_BACK_LINKS = 2;

/** A front may open at most this many links to one back: more only adds handshakes to watch. */
export const MAX_BACK_LINKS = 16;

/** Prefix of link listener names when unset ("link1", "link2"...), like "listener<N>". */
export const DEFAULT_LINK_LISTENER_NAME_PREFIX = "link";

/** Link listener port: links should look like HTTPS to whoever watches the border. */
export const DEFAULT_LINK_LISTENER_PORT = 443;

/** Per-stream credit of 256 KiB: fills a 20 Mbit/s path at 100 ms round trip per client. */
export const DEFAULT_LINK_WINDOW_BYTES = 256 * 1024;

/** Ping a link after 10 s of silence, so NAT and middleboxes do not forget it. */
export const DEFAULT_LINK_KEEPALIVE_MS = 10_000;

/** A link silent for 30 s (three missed pings) is dead and is replaced. */
export const DEFAULT_LINK_TIMEOUT_MS = 30_000;

/** A new client waits 5 s for a usable link: shorter than an app's own connect timeout. */
export const DEFAULT_LINK_WAIT_MS = 5_000;

/** The `link:` section with every default (what a standalone proxy carries, unused). */
export const DEFAULT_LINK: LinkConfig = Object.freeze({
  windowBytes: DEFAULT_LINK_WINDOW_BYTES,
  keepaliveMs: DEFAULT_LINK_KEEPALIVE_MS,
  timeoutMs: DEFAULT_LINK_TIMEOUT_MS,
  waitMs: DEFAULT_LINK_WAIT_MS,
});

/** Placeholder back address of `mtproxy secret --front` when --back is not given. */
export const EXAMPLE_BACK_ADDRESS = "back.example.com:443";

/** shared_state: a handshake waits at most this for Redis, then decides alone. */
export const DEFAULT_SHARED_STATE_TIMEOUT_MS = 100;

/** shared_state: a crashed proxy's counts expire after this. */
export const DEFAULT_SHARED_STATE_LEASE_MS = 30_000;

/** shared_state: the prefix of every key. */
export const DEFAULT_SHARED_STATE_PREFIX = "mtproxy";
