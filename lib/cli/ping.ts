/**
 * `mtproxy ping LINK`: from any machine, do what a Telegram app does with a proxy link (connect,
 * the fake-TLS or obfuscated2 handshake, an unencrypted `req_pq_multi`) for each DC, and say
 * in words why a DC did not answer. The same exchange without a secret checks a Telegram DC
 * directly (`mtproxy doctor` uses it).
 *
 * @module
 */
import { randomBytes, randomInt, type StreamCipher } from "../crypto.ts";
import { closeQuietly, type Conn, dialTcp, formatHostPort, writeAll } from "../net.ts";
import { concatBytes } from "../protocol/bytes.ts";
import { buildClientHello } from "../protocol/client_hello.ts";
import {
  encodeAppData,
  parseServerHello,
  signClientHello,
  TlsRecordReader,
} from "../protocol/fake_tls.ts";
import { decodeFrame, encodeFrame } from "../protocol/framing.ts";
import { createInit, type TransportTag } from "../protocol/obfuscated2.ts";
import { initRandom } from "../telegram/direct.ts";
import { type ParsedSecret, parseSecret, SecretError, type SecretKind } from "../secret.ts";
import { parseCommandArgs, type ParsedCommandArgs, reportError, UsageError } from "./options.ts";

/** Wait this long for a connect, and again for the answer: a DC dial by the proxy may take 10 s. */
export const DEFAULT_PING_TIMEOUT_MS = 10_000;

/** Help screen of `mtproxy ping`. */
export const PING_HELP = `Usage: mtproxy ping LINK [options]
       mtproxy ping --host HOST --port PORT --secret SECRET [options]

Do what a Telegram app does with a proxy link, from this machine: connect, run the
fake-TLS or obfuscated2 handshake and send req_pq_multi, for each DC. Prints a
table (DC, protocol, connect ms, first answer ms, result) and, for each DC that
did not answer, why in words. LINK is a tg://proxy?... or https://t.me/proxy?...
link; the flags override its parts. Exits with 0 only when every DC answered.

Options:
      --host HOST     proxy host name or IP address
      --port PORT     proxy port
      --secret SECRET the secret of the link: 32 hex digits, dd + 32 hex digits,
                      or an ee secret (hex or base64url)
      --dc LIST       DCs to try, e.g. 2 or 1,3 (default 1,2,3,4,5); repeatable
      --media         also try the media DCs (-1..-5 of the DCs tried)
      --timeout S     deadline in seconds for the connect, and again for the
                      answer (default ${DEFAULT_PING_TIMEOUT_MS / 1000})
      --json          print the results as JSON instead of the table
  -h, --help          show this help`;

/** The DCs an app talks to (203, the CDN DC, only serves files on request). */
export const PING_DCS: readonly number[] = Object.freeze([1, 2, 3, 4, 5]);

/** `req_pq_multi#be7e8ef1 nonce:int128 = ResPQ`. */
export const REQ_PQ_MULTI = 0xbe7e8ef1;
/** `resPQ#05162463 nonce:int128 server_nonce:int128 pq:string fingerprints:Vector<long>`. */
export const RES_PQ = 0x05162463;

/** TDLib's ApplicationData record size. */
const TLS_RECORD = 2878;
const CCS = Uint8Array.of(0x14, 0x03, 0x03, 0x00, 0x01, 0x01);
const UNENCRYPTED_HEADER = 20;

const ALERTS: Record<number, string> = {
  10: "unexpected_message",
  40: "handshake_failure",
  47: "illegal_parameter",
  50: "decode_error",
  70: "protocol_version",
  80: "internal_error",
  112: "unrecognized_name",
};

const OPTIONS = {
  host: { type: "string" },
  port: { type: "string" },
  secret: { type: "string" },
  dc: { type: "string", multiple: true },
  media: { type: "boolean" },
  timeout: { type: "string" },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
} as const;

/** The parts of a proxy link. */
export interface ProxyLinkParts {
  readonly host: string;
  readonly port: number;
  /** The secret as written in the link (any client-side form). */
  readonly secret: string;
}

/**
 * Read a `tg://proxy?...` or `https://t.me/proxy?...` link (also `http://`, `t.me/proxy?...`
 * and `telegram.me`). A `+` in the secret stays a `+` (some links carry standard base64).
 * Throws a RangeError naming what is missing or wrong.
 *
 * @example Usage
 * ```ts
 * import { parseProxyLink } from "./ping.ts";
 * const link = parseProxyLink("tg://proxy?server=203.0.113.5&port=443&secret=dd00000000000000000000000000000000");
 * link.port; // 443
 * ```
 */
export function parseProxyLink(text: string): ProxyLinkParts {
  const trimmed = text.trim();
  const m = /^(?:tg:\/\/proxy|(?:https?:\/\/)?(?:www\.)?(?:t|telegram)\.me\/proxy)\?(.*)$/i.exec(
    trimmed,
  );
  if (!m) {
    throw new RangeError(
      `Link must start with "tg://proxy?" or "https://t.me/proxy?": got ${JSON.stringify(text)}`,
    );
  }
  const params = new Map<string, string>();
  for (const part of m[1]!.split("#")[0]!.split("&")) {
    if (part === "") continue;
    const eq = part.indexOf("=");
    const name = eq < 0 ? part : part.slice(0, eq);
    const raw = eq < 0 ? "" : part.slice(eq + 1);
    let value: string;
    try {
      value = decodeURIComponent(raw);
    } catch {
      throw new RangeError(`Link parameter ${JSON.stringify(name)} is not URL-encoded: got ${raw}`);
    }
    params.set(name.toLowerCase(), value);
  }
  const server = params.get("server");
  const port = params.get("port");
  const secret = params.get("secret");
  const missing = [
    ...(server ? [] : ["server"]),
    ...(port ? [] : ["port"]),
    ...(secret ? [] : ["secret"]),
  ];
  if (missing.length > 0) throw new RangeError(`Link has no ${missing.join(", ")}`);
  return { host: _stripBrackets(server!), port: parsePort(port!), secret: secret! };
}

/**
 * A port number 1-65535 from text; throws a RangeError otherwise.
 *
 * @example Usage
 * ```ts
 * import { parsePort } from "./ping.ts";
 * parsePort("443"); // 443
 * ```
 */
export function parsePort(text: string): number {
  if (!/^\d{1,5}$/.test(text.trim()) || Number(text) < 1 || Number(text) > 65535) {
    throw new RangeError(`Port must be an integer 1-65535: got ${JSON.stringify(text)}`);
  }
  return Number(text);
}

function _stripBrackets(host: string): string {
  return host.replace(/^\[(.*)\]$/, "$1");
}

/** Where to ping: a proxy with a client-side secret, or (secret null) a Telegram DC itself. */
export interface PingTarget {
  readonly host: string;
  readonly port: number;
  /** The proxy's secret as an app has it; null dials a DC directly (no secret, as the proxy does). */
  readonly secret: ParsedSecret | null;
}

/** The protocol of a ping: the secret's kind, or "direct" to a DC. */
export type PingProtocol = SecretKind | "direct";

/** How a ping ended. */
export type PingOutcome =
  | "ok"
  | "port_closed"
  | "connect_timeout"
  | "unreachable"
  | "dns"
  | "reset"
  | "closed"
  | "timeout"
  | "not_signed"
  | "tls_alert"
  | "tls_other"
  | "bad_answer"
  | "transport_error"
  | "other_answer"
  | "error";

/** The result of one DC. */
export interface DcPingResult {
  /** DC id sent in the init (negative: media). */
  readonly dc: number;
  readonly protocol: PingProtocol;
  /** Time to connect, ms; null when the connect failed. */
  readonly connectMs: number | null;
  /** Time from the connect to Telegram's resPQ, ms; null without one. */
  readonly answerMs: number | null;
  readonly ok: boolean;
  readonly outcome: PingOutcome;
  /** A few words for the table ("resPQ", "port closed", ...). */
  readonly result: string;
  /** Why it failed, in words, with what to check; null on success. */
  readonly diagnosis: string | null;
}

/** Options for {@linkcode pingDc}. */
export interface PingDcOptions {
  /** Deadline for the connect, and again for the answer. @default DEFAULT_PING_TIMEOUT_MS */
  timeoutMs?: number;
  /** Unix time the fake-TLS hello is signed with. @default the system clock */
  nowSec?: () => number;
}

/**
 * The unencrypted `req_pq_multi` message an app starts with (auth_key_id 0, a client msg_id).
 *
 * @example Usage
 * ```ts
 * import { reqPqMultiMessage } from "./ping.ts";
 * reqPqMultiMessage(new Uint8Array(16)).length; // 40
 * ```
 */
export function reqPqMultiMessage(nonce: Uint8Array): Uint8Array {
  if (nonce.length !== 16) throw new RangeError(`Nonce must be 16 bytes: got ${nonce.length}`);
  const out = new Uint8Array(UNENCRYPTED_HEADER + 20);
  const v = new DataView(out.buffer);
  const now = Date.now();
  const fraction = Math.floor(((now % 1000) / 1000) * 2 ** 30) * 4;
  v.setBigInt64(8, (BigInt(Math.floor(now / 1000)) << 32n) | BigInt(fraction), true);
  v.setUint32(16, 20, true);
  v.setUint32(20, REQ_PQ_MULTI, true);
  out.set(nonce, 24);
  return out;
}

/** What an answer packet to `req_pq_multi` is. */
export type AnswerKind =
  | { kind: "res_pq" }
  | { kind: "wrong_nonce" }
  | { kind: "transport_error"; code: number }
  | { kind: "other"; constructor: number | null };

/**
 * Classify a packet answering `req_pq_multi` with `nonce`: a `resPQ` echoing it, a resPQ
 * for another nonce, a transport error (a 4-byte negative int32), or something else.
 *
 * @example Usage
 * ```ts
 * import { classifyAnswer } from "./ping.ts";
 * classifyAnswer(Uint8Array.of(0x6c, 0xfe, 0xff, 0xff), new Uint8Array(16)); // { kind: "transport_error", code: -404 }
 * ```
 */
export function classifyAnswer(packet: Uint8Array, nonce: Uint8Array): AnswerKind {
  const v = new DataView(packet.buffer, packet.byteOffset, packet.byteLength);
  if (packet.length === 4 && v.getInt32(0, true) < 0) {
    return { kind: "transport_error", code: v.getInt32(0, true) };
  }
  if (packet.length < UNENCRYPTED_HEADER + 20 || v.getBigUint64(0, true) !== 0n) {
    return { kind: "other", constructor: null };
  }
  const constructor = v.getUint32(UNENCRYPTED_HEADER, true);
  if (constructor !== RES_PQ) return { kind: "other", constructor };
  const echoed = packet.subarray(UNENCRYPTED_HEADER + 4, UNENCRYPTED_HEADER + 20);
  return echoed.every((b, i) => b === nonce[i]) ? { kind: "res_pq" } : { kind: "wrong_nonce" };
}

type _Read = "data" | "eof" | "timeout" | { error: unknown };

/** Reads a connection with a deadline; a timeout closes the connection (and settles the read). */
class _Reader {
  readonly #conn: Conn;
  readonly #chunk = new Uint8Array(16384);
  /** Every raw byte received so far. */
  raw: Uint8Array = new Uint8Array(0);
  /** The bytes of the last read. */
  last: Uint8Array = new Uint8Array(0);

  constructor(conn: Conn) {
    this.#conn = conn;
  }

  async more(deadline: number): Promise<_Read> {
    const left = deadline - performance.now();
    if (left <= 0) return "timeout";
    let timer: ReturnType<typeof setTimeout> | undefined;
    const read = this.#conn.read(this.#chunk);
    const timedOut = new Promise<"timeout">((r) => (timer = setTimeout(() => r("timeout"), left)));
    try {
      const n = await Promise.race([read, timedOut]);
      if (n === "timeout") {
        closeQuietly(this.#conn);
        await read.catch(() => null);
        return "timeout";
      }
      if (n === null) return "eof";
      this.last = this.#chunk.slice(0, n);
      this.raw = concatBytes([this.raw, this.last]);
      return "data";
    } catch (error) {
      return { error };
    } finally {
      clearTimeout(timer);
    }
  }
}

function _errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function _isReset(e: unknown): boolean {
  return e instanceof Deno.errors.ConnectionReset || e instanceof Deno.errors.BrokenPipe ||
    /reset|broken pipe/i.test(_errorText(e));
}

function _startsLikeTls(raw: Uint8Array): boolean {
  return raw.length >= 3 && (raw[0] === 0x15 || raw[0] === 0x16) && raw[1] === 0x03 &&
    raw[2]! <= 0x04;
}

function _seconds(ms: number): string {
  return `${Number((ms / 1000).toFixed(3))} s`;
}

interface _Failure {
  outcome: PingOutcome;
  result: string;
  diagnosis: string;
}

/** Why a connect failed, in words. */
function _connectFailure(e: unknown, target: PingTarget, timeoutMs: number): _Failure {
  const where = formatHostPort(target.host, target.port);
  const text = _errorText(e);
  if (e instanceof Deno.errors.ConnectionRefused || /refused/i.test(text)) {
    return {
      outcome: "port_closed",
      result: "port closed",
      diagnosis: `port closed: nothing accepts connections on ${where} (connection refused): ${
        target.secret === null
          ? "a wrong address, or a firewall rejects it"
          : "is the proxy running, on this port, and does a firewall reject it?"
      }`,
    };
  }
  if (e instanceof Deno.errors.TimedOut || /timed out/i.test(text)) {
    return {
      outcome: "connect_timeout",
      result: "connect timeout",
      diagnosis: `no answer to the connect within ${
        _seconds(timeoutMs)
      }: the host is down, or a firewall (or a censor) drops the packets to ${where}`,
    };
  }
  if (/lookup|resolve|name or service|nodename|dns/i.test(text)) {
    return {
      outcome: "dns",
      result: "host not found",
      diagnosis: `${JSON.stringify(target.host)} does not resolve (${text}): check the name`,
    };
  }
  if (/unreachable|no route/i.test(text)) {
    return {
      outcome: "unreachable",
      result: "unreachable",
      diagnosis: `no route to ${where} (${text}): this machine's network cannot reach it`,
    };
  }
  if (_isReset(e)) {
    return {
      outcome: "reset",
      result: "reset",
      diagnosis: `the connect to ${where} was reset: a firewall or a censor refuses it`,
    };
  }
  return { outcome: "error", result: "connect failed", diagnosis: `connect failed: ${text}` };
}

/** The handshake and `req_pq_multi` on an open connection; null on success. */
async function _exchange(
  conn: Conn,
  target: PingTarget,
  dcId: number,
  deadline: number,
  options: { timeoutMs: number; nowSec: () => number },
): Promise<_Failure | null> {
  const reader = new _Reader(conn);
  const secret = target.secret;
  const kind: PingProtocol = secret?.kind ?? "direct";
  const wait = _seconds(options.timeoutMs);
  const readFailure = (r: Exclude<_Read, "data">, stage: "hello" | "answer"): _Failure => {
    if (r === "eof" || r === "timeout") {
      if (stage === "hello") {
        return r === "eof"
          ? {
            outcome: "closed",
            result: "closed after hello",
            diagnosis:
              "the proxy closed the connection after the ClientHello without an answer: wrong secret, this machine's clock is off, or the domain in the secret is not one of the proxy's tls_domain (and the proxy fronts nothing)",
          }
          : {
            outcome: "timeout",
            result: "no answer",
            diagnosis:
              `no answer to the ClientHello within ${wait}: not a fake-TLS proxy on this port, or something on the way holds the connection`,
          };
      }
      if (kind !== "tls" && _startsLikeTls(reader.raw)) return tlsInTheClear();
      return r === "eof"
        ? { outcome: "closed", result: "closed", diagnosis: closedWhy() }
        : { outcome: "timeout", result: "no answer", diagnosis: silentWhy() };
    }
    if (_isReset(r.error)) {
      return {
        outcome: "reset",
        result: "reset",
        diagnosis: `the connection was reset ${
          stage === "hello" ? "after the ClientHello" : "after the handshake"
        }: typical of a censor's DPI or a firewall; the proxy itself closes, it does not reset`,
      };
    }
    return {
      outcome: "error",
      result: "read failed",
      diagnosis: `reading the answer failed: ${_errorText(r.error)}`,
    };
  };
  const dc = `DC ${Math.abs(dcId)}${dcId < 0 ? " (media)" : ""}`;
  const doctor = `run "mtproxy doctor" on the proxy's machine`;
  const closedWhy = (): string =>
    secret === null
      ? "the DC closed the connection without answering req_pq_multi: not a Telegram DC at this address?"
      : secret.kind === "tls"
      ? `the proxy accepted the fake-TLS handshake, then closed without Telegram's answer: it could not reach ${dc} (${doctor})`
      : `the proxy closed the connection without an answer: wrong secret, a protocol this port does not allow, or the proxy could not reach ${dc} (${doctor})`;
  const silentWhy = (): string =>
    secret === null
      ? `no answer to req_pq_multi within ${wait}: not a Telegram DC at this address, or something on the way holds the connection`
      : secret.kind === "tls"
      ? `the proxy accepted the fake-TLS handshake but Telegram's answer did not come within ${wait}: the proxy cannot reach ${dc} (${doctor})`
      : `no answer within ${wait}: wrong secret (an obfuscated2 proxy cannot tell, and waits), or the proxy cannot reach ${dc} (${doctor})`;
  const tlsInTheClear = (): _Failure => ({
    outcome: "tls_other",
    result: "TLS answer",
    diagnosis:
      "a TLS server answered in the clear (the proxy fronted the connection to its site): wrong secret, or this protocol is not allowed on this port",
  });

  let key: Uint8Array | null = null;
  let tls: TlsRecordReader | null = null;
  let pending: Uint8Array = new Uint8Array(0);
  if (secret !== null && secret.kind === "tls") {
    key = secret.key;
    const hello = signClientHello(
      buildClientHello({ sni: secret.domain ?? "www.cloudflare.com" }),
      key,
      options.nowSec(),
    );
    const clientRandom = hello.slice(11, 43);
    await writeAll(conn, hello);
    for (;;) {
      const buf = reader.raw;
      if (buf.length >= 7 && buf[0] === 0x15) {
        const alert = buf[6]!;
        return {
          outcome: "tls_alert",
          result: "TLS alert",
          diagnosis: `TLS alert ${ALERTS[alert] ?? alert} (${alert}) instead of a ServerHello: ${
            alert === 112
              ? "the server does not know the domain in the secret"
              : "a real TLS server refused the hello"
          }; not a fake-TLS proxy on this port, or the proxy fronted the hello to a site that refused it`,
        };
      }
      const step = buf.length === 0 || (buf[0] === 0x15 && buf.length < 7)
        ? { kind: "need" as const }
        : parseServerHello(buf, clientRandom, key);
      if (step.kind === "ok") {
        pending = buf.slice(step.length);
        break;
      }
      if (step.kind === "reject") {
        const serverHello = buf.length > 5 && buf[0] === 0x16 && buf[5] === 0x02;
        if (step.reason === "bad_digest" || serverHello) {
          return {
            outcome: "not_signed",
            result: "not signed",
            diagnosis:
              "a TLS answer from the real site, not signed with this secret: wrong secret, or this machine's clock is off (the proxy fronts hellos whose time is more than tls.max_clock_skew from its own; check: date -u), or this port is a real HTTPS server and not the proxy",
          };
        }
        return {
          outcome: "bad_answer",
          result: "not TLS",
          diagnosis: "the answer to the ClientHello is not TLS: not a fake-TLS proxy on this port",
        };
      }
      const r = await reader.more(deadline);
      if (r !== "data") return readFailure(r, "hello");
    }
    tls = new TlsRecordReader();
  } else if (secret !== null) {
    key = secret.key;
  }

  const tag: TransportTag = kind === "plain" || kind === "direct" ? "intermediate" : "padded";
  const nonce = randomBytes(16);
  const init = createInit(initRandom(), tag, dcId, { secret: key });
  const ciphers: StreamCipher[] = [init.encryptor, init.decryptor];
  try {
    const frame = encodeFrame(tag, reqPqMultiMessage(nonce), randomBytes(randomInt(0, 3)));
    init.encryptor.update(frame);
    let wire = concatBytes([init.wire, frame]);
    if (tls) wire = concatBytes([CCS, encodeAppData(wire, TLS_RECORD)]);
    await writeAll(conn, wire);

    let plain: Uint8Array = new Uint8Array(0);
    const take = (chunk: Uint8Array): string | null => {
      let data = chunk.slice();
      if (tls) {
        const n = tls.unwrap(data);
        if (typeof n === "string") return n;
        data = data.subarray(0, n);
      }
      init.decryptor.update(data);
      plain = concatBytes([plain, data]);
      return null;
    };
    let bad = pending.length > 0 ? take(pending) : null;
    for (;;) {
      if (bad !== null) {
        return {
          outcome: "bad_answer",
          result: "bad records",
          diagnosis: `the proxy's answer is not TLS records (${bad}): not the proxy the link names`,
        };
      }
      const step = decodeFrame(tag, plain);
      if (step.kind === "reject") {
        if (_startsLikeTls(reader.raw) && !tls) return tlsInTheClear();
        return {
          outcome: "bad_answer",
          result: "garbage",
          diagnosis: `the answer does not decode (${step.reason}): ${
            secret === null
              ? "not a Telegram DC at this address (or something on the way answers for it)"
              : "wrong secret, or not an MTProto proxy on this port"
          }`,
        };
      }
      if (step.kind === "frame") {
        const answer = classifyAnswer(step.frame.payload, nonce);
        if (answer.kind === "res_pq") return null;
        if (answer.kind === "transport_error") {
          const why = answer.code === -444
            ? "the DC id is not valid there"
            : answer.code === -429
            ? "too many connections from this address (flood control)"
            : answer.code === -404
            ? "the DC does not know the key or the request"
            : "Telegram refused the request";
          return {
            outcome: "transport_error",
            result: `error ${answer.code}`,
            diagnosis: `Telegram transport error ${answer.code}: ${why}`,
          };
        }
        if (answer.kind === "wrong_nonce") {
          return {
            outcome: "other_answer",
            result: "wrong resPQ",
            diagnosis: "a resPQ for another nonce: the answer belongs to someone else's request",
          };
        }
        if (_startsLikeTls(reader.raw) && !tls) return tlsInTheClear();
        return {
          outcome: "other_answer",
          result: "not resPQ",
          diagnosis: `an answer that is not a resPQ (${step.frame.payload.length} bytes${
            answer.constructor === null
              ? ""
              : `, constructor 0x${answer.constructor.toString(16).padStart(8, "0")}`
          }): ${
            secret === null
              ? "not a Telegram DC at this address"
              : "wrong secret (decrypted garbage), or not Telegram behind the proxy"
          }`,
        };
      }
      const r = await reader.more(deadline);
      if (r !== "data") return readFailure(r, "answer");
      bad = take(reader.last);
    }
  } finally {
    for (const c of ciphers) c.close();
  }
}

/**
 * Ping one DC through `target` (or the DC itself when `target.secret` is null): connect, the
 * handshake of the secret's kind, `req_pq_multi`, and wait for the `resPQ`. Never rejects:
 * failures come back as a result with a diagnosis.
 *
 * @example Usage
 * ```ts ignore
 * import { pingDc } from "./ping.ts";
 * import { parseSecret } from "../secret.ts";
 * const r = await pingDc({ host: "203.0.113.5", port: 443, secret: parseSecret("dd…") }, 2);
 * console.log(r.ok, r.connectMs, r.answerMs, r.diagnosis);
 * ```
 */
export async function pingDc(
  target: PingTarget,
  dcId: number,
  options: PingDcOptions = {},
): Promise<DcPingResult> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_PING_TIMEOUT_MS;
  const nowSec = options.nowSec ?? (() => Math.floor(Date.now() / 1000));
  const protocol: PingProtocol = target.secret?.kind ?? "direct";
  const started = performance.now();
  let conn: Conn;
  try {
    conn = await dialTcp(target.host, target.port, { timeoutMs });
  } catch (e) {
    return {
      dc: dcId,
      protocol,
      connectMs: null,
      answerMs: null,
      ok: false,
      ..._connectFailure(e, target, timeoutMs),
    };
  }
  const connected = performance.now();
  const connectMs = Math.round(connected - started);
  try {
    const failure = await _exchange(conn, target, dcId, connected + timeoutMs, {
      timeoutMs,
      nowSec,
    });
    if (failure) return { dc: dcId, protocol, connectMs, answerMs: null, ok: false, ...failure };
    return {
      dc: dcId,
      protocol,
      connectMs,
      answerMs: Math.round(performance.now() - connected),
      ok: true,
      outcome: "ok",
      result: "resPQ",
      diagnosis: null,
    };
  } catch (e) {
    const failure: _Failure = _isReset(e)
      ? {
        outcome: "reset",
        result: "reset",
        diagnosis:
          "the connection was reset while sending: typical of a censor's DPI or a firewall",
      }
      : { outcome: "error", result: "failed", diagnosis: `failed: ${_errorText(e)}` };
    return { dc: dcId, protocol, connectMs, answerMs: null, ok: false, ...failure };
  } finally {
    closeQuietly(conn);
  }
}

/**
 * Ping each of `dcIds` through `target`, one after another as an app would (so a per-address
 * connection limit on the proxy is no problem).
 *
 * @example Usage
 * ```ts ignore
 * import { pingProxy } from "./ping.ts";
 * const results = await pingProxy(target, [1, 2, 3, 4, 5], { timeoutMs: 5000 });
 * results.every((r) => r.ok);
 * ```
 */
export async function pingProxy(
  target: PingTarget,
  dcIds: readonly number[],
  options: PingDcOptions = {},
): Promise<DcPingResult[]> {
  const out: DcPingResult[] = [];
  for (const dc of dcIds) out.push(await pingDc(target, dc, options));
  return out;
}

/** "2", or "2 media" for -2. */
function _dcLabel(dc: number): string {
  return dc < 0 ? `${-dc} media` : String(dc);
}

/**
 * The report `ping` prints: a heading, the table, a diagnosis line per failed DC and a summary.
 *
 * @example Usage
 * ```ts
 * import { formatPingReport } from "./ping.ts";
 * const lines = formatPingReport({ host: "127.0.0.1", port: 443, secret: null }, []);
 * lines[0]; // "Telegram DC 127.0.0.1:443, direct (no secret)"
 * ```
 */
export function formatPingReport(target: PingTarget, results: readonly DcPingResult[]): string[] {
  const where = formatHostPort(target.host, target.port);
  const s = target.secret;
  const heading = s === null
    ? `Telegram DC ${where}, direct (no secret)`
    : `Proxy ${where}, ${
      s.kind === "tls"
        ? `fake-TLS (ee, SNI ${s.domain})`
        : s.kind === "dd"
        ? "padded (dd)"
        : "plain"
    }`;
  const rows = [
    ["DC", "protocol", "connect ms", "first answer ms", "result"],
    ...results.map((r) => [
      _dcLabel(r.dc),
      r.protocol,
      r.connectMs === null ? "-" : String(r.connectMs),
      r.answerMs === null ? "-" : String(r.answerMs),
      r.ok ? "ok (resPQ)" : r.result,
    ]),
  ];
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)));
  const lines = [heading, ""];
  for (const row of rows) {
    lines.push(
      row.map((cell, c) => c === row.length - 1 ? cell : cell.padEnd(widths[c]!)).join("  "),
    );
  }
  const failed = results.filter((r) => !r.ok);
  if (failed.length > 0) lines.push("");
  for (const r of failed) lines.push(`DC ${_dcLabel(r.dc)}: ${r.diagnosis}`);
  lines.push("");
  lines.push(
    failed.length === 0
      ? `All ${results.length} ${results.length === 1 ? "DC" : "DCs"} answered`
      : `${results.length - failed.length} of ${results.length} DCs answered`,
  );
  return lines;
}

function _parseDcs(values: readonly string[], media: boolean): number[] {
  const ids: number[] = [];
  for (const word of values.flatMap((v) => v.split(",")).map((v) => v.trim())) {
    if (word === "") continue;
    if (!/^\d{1,4}$/.test(word) || Number(word) < 1 || Number(word) > 1000) {
      throw new UsageError(
        `--dc must be DC numbers 1-1000, e.g. 2 or 1,3: got ${JSON.stringify(word)}`,
      );
    }
    if (!ids.includes(Number(word))) ids.push(Number(word));
  }
  const base = ids.length > 0 ? ids : [...PING_DCS];
  return media ? [...base, ...base.map((d) => -d)] : base;
}

function _parseTimeout(text: string | undefined): number {
  if (text === undefined) return DEFAULT_PING_TIMEOUT_MS;
  const s = Number(text);
  if (!/^\d+(\.\d+)?$/.test(text.trim()) || !(s > 0) || s > 3600) {
    throw new UsageError(
      `--timeout must be seconds, more than 0 and at most 3600: got ${JSON.stringify(text)}`,
    );
  }
  return Math.round(s * 1000);
}

/**
 * Run `mtproxy ping`; returns the exit code (0: every DC answered, 1: some did not, 2: a bad
 * command line).
 *
 * @example Usage
 * ```ts ignore
 * import { pingCommand } from "./ping.ts";
 * Deno.exit(await pingCommand(["tg://proxy?server=203.0.113.5&port=443&secret=dd…"]));
 * ```
 */
export async function pingCommand(args: string[]): Promise<number> {
  try {
    const { values, positionals } = parseCommandArgs(args, OPTIONS, { allowPositionals: true });
    if (values.help) {
      console.log(PING_HELP);
      return 0;
    }
    const { target, dcs, timeoutMs } = _pingArgs(values, positionals);
    const results = await pingProxy(target, dcs, { timeoutMs });
    const ok = results.every((r) => r.ok);
    if (values.json) {
      const secret = target.secret!;
      console.log(JSON.stringify({
        server: formatHostPort(target.host, target.port),
        protocol: secret.kind,
        ...(secret.domain !== undefined && { sni: secret.domain }),
        ok,
        dcs: results,
      }));
    } else {
      for (const line of formatPingReport(target, results)) console.log(line);
    }
    return ok ? 0 : 1;
  } catch (e) {
    return reportError("ping", e);
  }
}

function _pingArgs(
  values: ParsedCommandArgs<typeof OPTIONS>["values"],
  positionals: readonly string[],
): { target: PingTarget; dcs: number[]; timeoutMs: number } {
  if (positionals.length > 1) {
    throw new UsageError(`Expected one link: got ${positionals.length} arguments`);
  }
  try {
    const link = positionals[0] === undefined ? null : parseProxyLink(positionals[0]);
    const host = values.host ?? link?.host;
    const port = values.port !== undefined ? parsePort(values.port) : link?.port;
    const secret = values.secret ?? link?.secret;
    if (host === undefined || port === undefined || secret === undefined) {
      const missing = [
        ...(host === undefined ? ["--host"] : []),
        ...(port === undefined ? ["--port"] : []),
        ...(secret === undefined ? ["--secret"] : []),
      ];
      throw new UsageError(`Missing a proxy link, or ${missing.join(", ")}`);
    }
    return {
      target: { host: _stripBrackets(host), port, secret: parseSecret(secret) },
      dcs: _parseDcs(values.dc ?? [], values.media ?? false),
      timeoutMs: _parseTimeout(values.timeout),
    };
  } catch (e) {
    if (e instanceof RangeError || e instanceof SecretError) throw new UsageError(e.message);
    throw e;
  }
}
