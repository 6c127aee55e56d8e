/**
 * What the real site behind `tls_domain` answers to a Chrome-like ClientHello: its TLS 1.3
 * cipher suite, the order of key_share and supported_versions in its ServerHello, whether it
 * sends a ChangeCipherSpec, and the sizes of its encrypted handshake records. The fake-TLS
 * answer (protocol.md §5.4) copies these instead of constants a fingerprint could match.
 *
 * {@linkcode parseServerFlight} is a pure codec; {@linkcode measureTlsProfile} does one probe
 * over TCP; {@linkcode TlsProfileStore} keeps the latest profile per domain (the server
 * schedules the refreshes; there are no timers here).
 *
 * @module
 */
import { buildClientHello, type ClientHelloOptions } from "../protocol/client_hello.ts";
import { randomBytes } from "../crypto.ts";
import { closeQuietly, dialTcp, formatHostPort, writeAll } from "../net.ts";

/** Which of key_share (0x0033) and supported_versions (0x002b) comes first in a ServerHello. */
export type ExtensionOrder = "key_share_first" | "versions_first";

/** The shape of one site's TLS 1.3 server flight. */
export interface TlsProfile {
  /** The TLS 1.3 cipher suite the site chose (0x1301, 0x1302 or 0x1303). */
  cipherSuite: number;
  /** Extension order in the site's ServerHello. */
  extensionOrder: ExtensionOrder;
  /** Payload lengths of the encrypted handshake records the site sent after its CCS, in order. */
  appDataSizes: number[];
  /** Whether the site sent a ChangeCipherSpec record between ServerHello and its first one. */
  changeCipherSpec: boolean;
  /** When the profile was measured, in ms since the epoch. */
  measuredAt: number;
  /** Where the profile came from, e.g. the probed `host:port`. */
  source: string;
  /** Key-share group the site chose (0x001d X25519, 0x11ec X25519MLKEM768), when measured. */
  keyShareGroup?: number;
}

/** The measured part of a {@linkcode TlsProfile}, as read from the wire. */
export interface ServerFlight {
  cipherSuite: number;
  extensionOrder: ExtensionOrder;
  keyShareGroup: number;
  changeCipherSpec: boolean;
  /** Declared payload lengths of the ApplicationData records seen so far (the last may be partial). */
  appDataSizes: number[];
}

/** Why a server's answer cannot give a profile. */
export type FlightRejectReason =
  | "tls_alert"
  | "tls_malformed"
  | "tls_too_large"
  | "tls_unexpected_record"
  | "tls12"
  | "hello_retry";

/** Outcome of {@linkcode parseServerFlight}. */
export type FlightStep =
  /** ServerHello complete; `missing` bytes are still due to finish the last record (0 = none). */
  | { kind: "flight"; flight: ServerFlight; missing: number }
  | { kind: "need"; atLeast: number }
  | { kind: "reject"; reason: FlightRejectReason; alert?: number };

/** Largest TLSCiphertext payload (2^14 + 256, RFC 8446 §5.2); also the cap on our fake record. */
export const MAX_FAKE_CERT_SIZE = 16384 + 256;
/** Relative jitter around the site's total, so the answer is not a constant per domain. */
export const FAKE_CERT_JITTER = 0.02;
/** Stop reading once the records are complete and the site has been silent this long. */
export const DEFAULT_PROBE_QUIET_MS = 200;
/** Stop reading after this many bytes: far above any certificate chain seen in practice. */
export const DEFAULT_PROBE_MAX_BYTES = 65536;
/** Deadline of one refresh in {@linkcode TlsProfileStore}: connect, hello and whole flight. */
export const DEFAULT_PROBE_TIMEOUT_MS = 5000;

const HEADER = 5;
/** SHA-256 of "HelloRetryRequest": the random of a HelloRetryRequest (RFC 8446 §4.1.3). */
const HRR_RANDOM = "cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c";

const ALERT_NAMES: Record<number, string> = {
  10: "unexpected_message",
  40: "handshake_failure",
  47: "illegal_parameter",
  50: "decode_error",
  70: "protocol_version",
  71: "insufficient_security",
  80: "internal_error",
  109: "missing_extension",
  112: "unrecognized_name",
  120: "no_application_protocol",
};

function _u16(b: Uint8Array, off: number): number {
  return (b[off]! << 8) | b[off + 1]!;
}

function _hex(b: Uint8Array): string {
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

type _HelloFields =
  | { ok: true; cipherSuite: number; extensionOrder: ExtensionOrder; keyShareGroup: number }
  | { ok: false; reason: FlightRejectReason };

/** Read the fields we keep from a ServerHello handshake message (`hs` without its header). */
function _readServerHello(hs: Uint8Array): _HelloFields {
  const malformed = { ok: false, reason: "tls_malformed" } as const;
  // legacy_version(2) random(32) session_id(1+n) cipher_suite(2) compression(1) extensions(2+e)
  if (hs.length < 35) return malformed;
  if (_hex(hs.subarray(2, 34)) === HRR_RANDOM) return { ok: false, reason: "hello_retry" };
  let p = 35 + hs[34]!;
  if (p + 3 > hs.length) return malformed;
  const cipherSuite = _u16(hs, p);
  p += 3;
  if (p === hs.length) return { ok: false, reason: "tls12" }; // no extensions at all
  if (p + 2 > hs.length) return malformed;
  const end = p + 2 + _u16(hs, p);
  if (end !== hs.length) return malformed;
  p += 2;
  let version = -1;
  let keyShareGroup = -1;
  let order: ExtensionOrder | null = null;
  while (p < end) {
    if (p + 4 > end) return malformed;
    const type = _u16(hs, p);
    const len = _u16(hs, p + 2);
    const data = p + 4;
    p = data + len;
    if (p > end) return malformed;
    if (type === 0x002b) {
      if (len !== 2) return malformed;
      version = _u16(hs, data);
      order ??= "versions_first";
    } else if (type === 0x0033) {
      if (len < 2) return malformed;
      keyShareGroup = _u16(hs, data);
      order ??= "key_share_first";
    }
  }
  if (version !== 0x0304) return { ok: false, reason: "tls12" };
  if (keyShareGroup < 0 || order === null) return malformed;
  return { ok: true, cipherSuite, extensionOrder: order, keyShareGroup };
}

/**
 * Read a TLS 1.3 server flight from the start of `buf`: the ServerHello record, an optional
 * ChangeCipherSpec, then ApplicationData records (the encrypted handshake). The flight has no
 * end marker a third party can see, so the caller decides when to stop reading (a quiet
 * period); `missing` tells it whether the last record is still incomplete.
 *
 * @example Usage
 * ```ts
 * import { parseServerFlight } from "./tls_profile.ts";
 *
 * // A fatal handshake_failure alert instead of a ServerHello.
 * const step = parseServerFlight(Uint8Array.of(0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28));
 * if (step.kind !== "reject" || step.alert !== 40) throw new Error("expected the alert");
 * ```
 */
export function parseServerFlight(buf: Uint8Array): FlightStep {
  if (buf.length < HEADER) return { kind: "need", atLeast: HEADER };
  const type = buf[0]!;
  if (buf[1] !== 0x03) return { kind: "reject", reason: "tls_malformed" };
  const len = _u16(buf, 3);
  if (type === 0x15) {
    if (len !== 2) return { kind: "reject", reason: "tls_malformed" };
    if (buf.length < HEADER + 2) return { kind: "need", atLeast: HEADER + 2 };
    return { kind: "reject", reason: "tls_alert", alert: buf[HEADER + 1]! };
  }
  if (type !== 0x16) return { kind: "reject", reason: "tls_unexpected_record" };
  if (len > 16384) return { kind: "reject", reason: "tls_too_large" };
  let p = HEADER + len;
  if (buf.length < p) return { kind: "need", atLeast: p };
  if (len < 4 || buf[HEADER] !== 0x02) return { kind: "reject", reason: "tls_malformed" };
  const hsLen = (buf[HEADER + 1]! << 16) | _u16(buf, HEADER + 2);
  // A TLS 1.3 ServerHello sits alone in its record; anything else is TLS 1.2 or broken.
  if (hsLen + 4 < len) return { kind: "reject", reason: "tls12" };
  if (hsLen + 4 > len) return { kind: "reject", reason: "tls_malformed" };
  const hello = _readServerHello(buf.subarray(HEADER + 4, p));
  if (!hello.ok) return { kind: "reject", reason: hello.reason };

  let changeCipherSpec = false;
  const appDataSizes: number[] = [];
  let missing = 0;
  while (p < buf.length) {
    if (buf.length - p < HEADER) {
      missing = HEADER - (buf.length - p);
      break;
    }
    const rtype = buf[p]!;
    const rlen = _u16(buf, p + 3);
    if (buf[p + 1] !== 0x03 || buf[p + 2] !== 0x03) {
      return { kind: "reject", reason: "tls_malformed" };
    }
    if (rtype === 0x14) {
      if (changeCipherSpec || appDataSizes.length > 0 || rlen !== 1) {
        return { kind: "reject", reason: "tls_unexpected_record" };
      }
      changeCipherSpec = true;
    } else if (rtype === 0x17) {
      if (rlen > MAX_FAKE_CERT_SIZE) return { kind: "reject", reason: "tls_too_large" };
      appDataSizes.push(rlen);
    } else if (rtype === 0x15) {
      if (rlen !== 2) return { kind: "reject", reason: "tls_malformed" };
      if (buf.length < p + HEADER + 2) return { kind: "need", atLeast: p + HEADER + 2 };
      return { kind: "reject", reason: "tls_alert", alert: buf[p + HEADER + 1]! };
    } else {
      return { kind: "reject", reason: "tls_unexpected_record" };
    }
    p += HEADER + rlen;
    if (p > buf.length) missing = p - buf.length;
  }
  return {
    kind: "flight",
    flight: {
      cipherSuite: hello.cipherSuite,
      extensionOrder: hello.extensionOrder,
      keyShareGroup: hello.keyShareGroup,
      changeCipherSpec,
      appDataSizes,
    },
    missing,
  };
}

/** The name of a TLS alert description, e.g. "handshake_failure (40)". */
function _alertText(code: number): string {
  return `${ALERT_NAMES[code] ?? "alert"} (${code})`;
}

/** Human-readable detail for a rejected flight. */
function _rejectText(step: { reason: FlightRejectReason; alert?: number }): string {
  switch (step.reason) {
    case "tls_alert":
      return `server sent a fatal alert: ${_alertText(step.alert ?? -1)}`;
    case "tls12":
      return "server does not speak TLS 1.3";
    case "hello_retry":
      return "server asked for another key share (HelloRetryRequest)";
    case "tls_too_large":
      return "server sent an oversized record";
    case "tls_unexpected_record":
      return "server sent an unexpected record type";
    default:
      return "server answer is not TLS";
  }
}

/** A probe that could not produce a profile; the message says which step failed and why. */
export class TlsProbeError extends Error {
  constructor(target: string, sni: string, detail: string, options?: ErrorOptions) {
    super(`TLS probe of ${target} (SNI "${sni}") failed: ${detail}`, options);
    this.name = "TlsProbeError";
  }
}

/** The socket operations the prober uses. */
export interface ProbeConn {
  read(p: Uint8Array): Promise<number | null>;
  write(p: Uint8Array): Promise<number>;
  close(): void;
}

/** Opens the probe's connection (a seam for tests). */
export type ProbeDialer = (
  host: string,
  port: number,
  options: { timeoutMs: number; signal?: AbortSignal },
) => Promise<ProbeConn>;

/** Options for {@linkcode measureTlsProfile}. */
export interface MeasureTlsProfileOptions {
  /** Server name sent in the hello. */
  sni: string;
  /** Deadline for the whole probe: connect, hello and server flight. */
  timeoutMs: number;
  /** Stop once every record is complete and nothing came for this long. @default 200 */
  quietMs?: number;
  /** Stop after this many bytes. @default 65536 */
  maxBytes?: number;
  /** Stored as the profile's `source`. @default "host:port" */
  source?: string;
  /** Gives up the probe (with a TlsProbeError) when aborted. */
  signal?: AbortSignal;
  /** @default dialTcp from lib/net.ts */
  dial?: ProbeDialer;
  /** Clock for `measuredAt`, in ms since the epoch. @default Date.now */
  now?: () => number;
  /** Hello shape overrides. @default Chrome-like, ALPN h2 and http/1.1 */
  hello?: Omit<ClientHelloOptions, "sni" | "random">;
}

type _Wait =
  | { kind: "read"; n: number | null }
  | { kind: "error"; error: unknown }
  | { kind: "timeout" }
  | { kind: "aborted" };

/** Wait for `read`, at most `ms`, or until `signal` aborts; leaves no timer or listener. */
function _wait(read: Promise<number | null>, ms: number, signal?: AbortSignal): Promise<_Wait> {
  return new Promise((resolve) => {
    let timer: ReturnType<typeof setTimeout> | undefined = undefined;
    const finish = (w: _Wait) => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      resolve(w);
    };
    const onAbort = () => finish({ kind: "aborted" });
    if (signal?.aborted) return finish({ kind: "aborted" });
    signal?.addEventListener("abort", onAbort, { once: true });
    timer = setTimeout(() => finish({ kind: "timeout" }), Math.max(0, ms));
    read.then((n) => finish({ kind: "read", n }), (error) => finish({ kind: "error", error }));
  });
}

function _message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/**
 * Probe `host:port` once: send a fresh Chrome-like ClientHello for `options.sni`, read the
 * server's flight until it has been quiet for `quietMs` (or `maxBytes`, or the deadline), then
 * close. Rejects with a {@linkcode TlsProbeError} naming the step that failed.
 *
 * @example Usage
 * ```ts ignore
 * const profile = await measureTlsProfile("www.example.com", 443, {
 *   sni: "www.example.com",
 *   timeoutMs: 5000,
 * });
 * profile.appDataSizes; // e.g. [4017] or [25, 3520, 286, 69]
 * ```
 */
export async function measureTlsProfile(
  host: string,
  port: number,
  options: MeasureTlsProfileOptions,
): Promise<TlsProfile> {
  const target = formatHostPort(host, port);
  const fail = (detail: string, cause?: unknown): never => {
    throw new TlsProbeError(
      target,
      options.sni,
      detail,
      cause === undefined ? undefined : { cause },
    );
  };
  const quietMs = options.quietMs ?? DEFAULT_PROBE_QUIET_MS;
  const maxBytes = options.maxBytes ?? DEFAULT_PROBE_MAX_BYTES;
  const signal = options.signal;
  const deadline = performance.now() + options.timeoutMs;
  const hello = buildClientHello({ ...options.hello, sni: options.sni, random: randomBytes(32) });

  if (signal?.aborted) return fail("aborted");
  const dial = options.dial ?? dialTcp;
  let conn: ProbeConn;
  try {
    conn = await dial(host, port, {
      timeoutMs: options.timeoutMs,
      ...(signal ? { signal } : {}),
    });
  } catch (e) {
    return fail(signal?.aborted ? "aborted" : `connect: ${_message(e)}`, e);
  }

  let pending: Promise<number | null> | null = null;
  try {
    const sent = await _wait(
      writeAll(conn, hello).then(() => 0),
      deadline - performance.now(),
      signal,
    );
    if (sent.kind === "error") {
      return fail(`sending the ClientHello: ${_message(sent.error)}`, sent.error);
    }
    if (sent.kind === "timeout") return fail("sending the ClientHello timed out");
    if (sent.kind === "aborted") return fail("aborted");

    const buf = new Uint8Array(maxBytes);
    let len = 0;
    for (;;) {
      const step = parseServerFlight(buf.subarray(0, len));
      if (step.kind === "reject") return fail(_rejectText(step));
      const settled = step.kind === "flight" && step.missing === 0 &&
        step.flight.appDataSizes.length > 0;
      const finished = (): TlsProfile => {
        if (step.kind !== "flight") {
          return fail(`no complete ServerHello after ${len} bytes`);
        }
        if (step.flight.appDataSizes.length === 0) {
          return fail("no encrypted handshake records after the ServerHello");
        }
        return {
          cipherSuite: step.flight.cipherSuite,
          extensionOrder: step.flight.extensionOrder,
          appDataSizes: step.flight.appDataSizes,
          changeCipherSpec: step.flight.changeCipherSpec,
          measuredAt: (options.now ?? Date.now)(),
          source: options.source ?? target,
          keyShareGroup: step.flight.keyShareGroup,
        };
      };
      if (len === maxBytes) return finished();
      const left = deadline - performance.now();
      if (left <= 0) {
        if (settled) return finished();
        return fail(`no complete server flight within ${options.timeoutMs} ms`);
      }
      pending ??= conn.read(buf.subarray(len));
      const w = await _wait(pending, settled ? Math.min(quietMs, left) : left, signal);
      if (w.kind === "aborted") return fail("aborted");
      if (w.kind === "timeout") {
        if (settled) return finished(); // quiet period over
        continue; // deadline: reported above
      }
      pending = null;
      if (w.kind === "error") return fail(`reading the answer: ${_message(w.error)}`, w.error);
      if (w.n === null) {
        if (settled) return finished();
        return fail(`connection closed after ${len} bytes, before a complete server flight`);
      }
      len += w.n;
    }
  } finally {
    closeQuietly(conn);
    if (pending) await pending.catch(() => null);
  }
}

/**
 * The payload length of the single ApplicationData record in our fake-TLS answer: the total of
 * the site's encrypted handshake records (TDLib accepts exactly one record after the CCS) with
 * +-2% jitter, capped at 2^14 + 256; a random length in `fallback` when there is no profile.
 * `random(min, max)` returns an integer in [min, max], like `randomInt` in lib/crypto.ts.
 *
 * @example Usage
 * ```ts
 * import { fakeCertSize } from "./tls_profile.ts";
 * import { randomInt } from "../crypto.ts";
 *
 * const n = fakeCertSize(null, randomInt, { min: 2500, max: 4700 });
 * if (n < 2500 || n > 4700) throw new Error("out of range");
 * ```
 */
export function fakeCertSize(
  profile: TlsProfile | null,
  random: (min: number, max: number) => number,
  fallback: { min: number; max: number },
): number {
  const total = profile?.appDataSizes.reduce((a, b) => a + b, 0) ?? 0;
  if (total <= 0) {
    const { min, max } = fallback;
    if (!Number.isInteger(min) || !Number.isInteger(max) || min < 1 || max < min) {
      throw new RangeError(`Fake certificate size range is invalid: got ${min}..${max}`);
    }
    return random(min, Math.min(max, MAX_FAKE_CERT_SIZE));
  }
  const base = Math.min(total, MAX_FAKE_CERT_SIZE);
  const jitter = Math.max(1, Math.round(base * FAKE_CERT_JITTER));
  return random(Math.max(1, base - jitter), Math.min(MAX_FAKE_CERT_SIZE, base + jitter));
}

/** Where and how {@linkcode TlsProfileStore.refresh} probes a domain. */
export interface RefreshTarget {
  /** Host to connect to. @default the domain */
  host?: string;
  /** @default 443 */
  port?: number;
  /** Server name of the hello. @default the domain */
  sni?: string;
  /** @default DEFAULT_PROBE_TIMEOUT_MS (5000) or the store's timeoutMs */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** Outcome of {@linkcode TlsProfileStore.refresh}. */
export type RefreshOutcome =
  | { ok: true; profile: TlsProfile }
  /** The probe failed; `profile` is the one kept from before (null when there was none). */
  | { ok: false; error: Error; profile: TlsProfile | null };

/** Options for {@linkcode TlsProfileStore}. */
export interface TlsProfileStoreOptions {
  /** @default measureTlsProfile */
  measure?: (host: string, port: number, options: MeasureTlsProfileOptions) => Promise<TlsProfile>;
  /** Deadline of each probe. @default 5000 */
  timeoutMs?: number;
}

/**
 * The latest measured profile per domain. A failed refresh keeps the previous profile;
 * concurrent refreshes of one domain share one probe. No timers: the caller schedules.
 *
 * @example Usage
 * ```ts ignore
 * const store = new TlsProfileStore();
 * const outcome = await store.refresh("www.example.com");
 * const size = fakeCertSize(store.get("www.example.com"), randomInt, { min: 2500, max: 4700 });
 * ```
 */
export class TlsProfileStore {
  #profiles = new Map<string, TlsProfile>();
  #inflight = new Map<string, Promise<RefreshOutcome>>();
  #measure: NonNullable<TlsProfileStoreOptions["measure"]>;
  #timeoutMs: number;

  constructor(options: TlsProfileStoreOptions = {}) {
    this.#measure = options.measure ?? measureTlsProfile;
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_PROBE_TIMEOUT_MS;
  }

  /** The latest profile of `domain` (case-insensitive), or null. */
  get(domain: string): TlsProfile | null {
    return this.#profiles.get(domain.toLowerCase()) ?? null;
  }

  /** Store a profile, e.g. one restored from disk. */
  set(domain: string, profile: TlsProfile): void {
    this.#profiles.set(domain.toLowerCase(), profile);
  }

  /** Forget a domain's profile. Returns whether there was one. */
  delete(domain: string): boolean {
    return this.#profiles.delete(domain.toLowerCase());
  }

  /** Domains that have a profile. */
  domains(): string[] {
    return [...this.#profiles.keys()];
  }

  /** Probe `domain` and store the new profile; on failure keep the previous one. Never rejects. */
  refresh(domain: string, target: RefreshTarget = {}): Promise<RefreshOutcome> {
    const key = domain.toLowerCase();
    const running = this.#inflight.get(key);
    if (running) return running;
    const run = this.#probe(key, target).finally(() => this.#inflight.delete(key));
    this.#inflight.set(key, run);
    return run;
  }

  async #probe(key: string, target: RefreshTarget): Promise<RefreshOutcome> {
    const host = target.host ?? key;
    const port = target.port ?? 443;
    try {
      const profile = await this.#measure(host, port, {
        sni: target.sni ?? key,
        timeoutMs: target.timeoutMs ?? this.#timeoutMs,
        ...(target.signal ? { signal: target.signal } : {}),
      });
      this.#profiles.set(key, profile);
      return { ok: true, profile };
    } catch (e) {
      const error = e instanceof Error ? e : new Error(String(e));
      return { ok: false, error, profile: this.get(key) };
    }
  }
}
