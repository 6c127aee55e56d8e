/**
 * Proxy secrets as users see them: the client-side forms (plain, `dd`, `ee` fake-TLS in hex or
 * base64url), the `tg://proxy` and `https://t.me/proxy` links that carry them, and per-SNI
 * derived secrets (protocol.md §1 and §8).
 *
 * @module
 */
import { randomBytes, sha256 } from "./crypto.ts";

/** Length of the server-side secret in bytes. */
export const SECRET_BYTES = 16;

/** Longest fake-TLS domain a client accepts in an `ee` secret (tdlib's cap). */
export const MAX_TLS_DOMAIN_BYTES = 182;

/** Salt of {@linkcode perSniSecret} when none is configured (the Erlang proxy's default). */
export const PER_SNI_DEFAULT_SALT = "mtproto-proxy-per-sni-v1";

/** What a client-side secret tells the app to speak: obfuscated2, padded (`dd`) or fake-TLS. */
export type SecretKind = "plain" | "dd" | "tls";

/** How an `ee` secret is written in a link. */
export type SecretEncoding = "hex" | "base64url";

/** A decoded client-side secret. */
export interface ParsedSecret {
  readonly kind: SecretKind;
  /** The 16-byte server-side secret. */
  readonly key: Uint8Array;
  /** The fake-TLS domain (SNI) of an `ee` secret; absent for the other kinds. */
  readonly domain?: string;
}

/** Why a secret was refused. */
export type SecretErrorReason = "bad_format" | "bad_domain" | "bad_length";

/** A secret that cannot be parsed or formatted. */
export class SecretError extends Error {
  /** Machine-readable reason. */
  readonly reason: SecretErrorReason;

  /** Create the error with its reason and message. */
  constructor(reason: SecretErrorReason, message: string) {
    super(message);
    this.name = "SecretError";
    this.reason = reason;
  }
}

const HEX_RE = /^[0-9a-f]*$/i;
const BASE64_RE = /^[A-Za-z0-9_\-+/]*={0,2}$/;
const LABEL_RE = /^(?!-)[a-z0-9_-]{1,63}(?<!-)$/;

/**
 * A new random 16-byte secret.
 *
 * @example Usage
 * ```ts
 * import { generateSecret, formatPlainSecret } from "./secret.ts";
 * formatPlainSecret(generateSecret()); // 32 random hex digits
 * ```
 */
export function generateSecret(): Uint8Array {
  return randomBytes(SECRET_BYTES);
}

/**
 * Lowercase hex of `bytes`.
 *
 * @example Usage
 * ```ts
 * import { toHex } from "./secret.ts";
 * toHex(new Uint8Array([0xee, 0x01])); // "ee01"
 * ```
 */
export function toHex(bytes: Uint8Array): string {
  let out = "";
  for (const b of bytes) out += b.toString(16).padStart(2, "0");
  return out;
}

/**
 * Whether `name` can be a fake-TLS domain: an ASCII host name of dot-separated labels, at most
 * {@linkcode MAX_TLS_DOMAIN_BYTES} long, no trailing dot. Case-insensitive.
 *
 * @example Usage
 * ```ts
 * import { isValidTlsDomain } from "./secret.ts";
 * isValidTlsDomain("www.example.com"); // true
 * isValidTlsDomain("bad domain"); // false
 * ```
 */
export function isValidTlsDomain(name: string): boolean {
  if (name.length === 0 || name.length > MAX_TLS_DOMAIN_BYTES) return false;
  return name.toLowerCase().split(".").every((label) => LABEL_RE.test(label));
}

/**
 * Parse any client-side secret form: 32 hex digits (plain), `dd` + 32 hex digits, or an `ee`
 * secret with its domain, in hex or base64url (padding optional). Hex is case-insensitive and
 * tried first, as clients do. Throws {@linkcode SecretError} for anything else.
 *
 * @example Usage
 * ```ts
 * import { parseSecret } from "./secret.ts";
 * const s = parseSecret("ee0f1e2d3c4b5a69788796a5b4c3d2e1f06578616d706c652e636f6d");
 * s.kind; // "tls"
 * s.domain; // "example.com"
 * ```
 */
export function parseSecret(text: string): ParsedSecret {
  const trimmed = text.trim();
  const hexBytes = trimmed.length % 2 === 0 && HEX_RE.test(trimmed) ? _fromHex(trimmed) : null;
  const fromHex = hexBytes && _classify(hexBytes);
  if (fromHex && !(fromHex instanceof SecretError)) return fromHex;
  const b64Bytes = BASE64_RE.test(trimmed) ? _fromBase64(trimmed) : null;
  const fromB64 = b64Bytes && _classify(b64Bytes);
  if (fromB64 && !(fromB64 instanceof SecretError)) return fromB64;
  // A specific reason (such as a bad domain) beats the generic one.
  if (fromHex instanceof SecretError) throw fromHex;
  if (fromB64 instanceof SecretError && trimmed.length > 2 * SECRET_BYTES) throw fromB64;
  throw new SecretError(
    "bad_format",
    `Secret must be 32 hex digits, "dd" + 32 hex digits, or an "ee" secret in hex or base64url: got ${
      JSON.stringify(text)
    }`,
  );
}

function _classify(bytes: Uint8Array): ParsedSecret | SecretError | null {
  if (bytes.length === SECRET_BYTES) return { kind: "plain", key: bytes };
  if (bytes.length === SECRET_BYTES + 1 && bytes[0] === 0xdd) {
    return { kind: "dd", key: bytes.slice(1) };
  }
  if (bytes.length >= SECRET_BYTES + 2 && bytes[0] === 0xee) {
    const domainBytes = bytes.subarray(1 + SECRET_BYTES);
    const domain = String.fromCharCode(...domainBytes);
    if (!isValidTlsDomain(domain)) {
      return new SecretError(
        "bad_domain",
        `Domain of the "ee" secret must be a host name of at most ${MAX_TLS_DOMAIN_BYTES} characters: got ${
          JSON.stringify(domain)
        }`,
      );
    }
    return { kind: "tls", key: bytes.slice(1, 1 + SECRET_BYTES), domain };
  }
  return null;
}

function _fromHex(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

function _fromBase64(text: string): Uint8Array | null {
  const std = text.replace(/=+$/, "").replaceAll("-", "+").replaceAll("_", "/");
  if (std.length % 4 === 1) return null;
  try {
    const bin = atob(std + "=".repeat((4 - (std.length % 4)) % 4));
    return Uint8Array.from(bin, (c) => c.charCodeAt(0));
  } catch {
    return null;
  }
}

function _toBase64Url(bytes: Uint8Array): string {
  return btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_")
    .replace(/=+$/, "");
}

function _checkKey(key: Uint8Array): void {
  if (key.length !== SECRET_BYTES) {
    throw new SecretError("bad_length", `Secret must be ${SECRET_BYTES} bytes: got ${key.length}`);
  }
}

/**
 * The plain form: 32 lowercase hex digits.
 *
 * @example Usage
 * ```ts
 * import { formatPlainSecret } from "./secret.ts";
 * formatPlainSecret(new Uint8Array(16)); // "00000000000000000000000000000000"
 * ```
 */
export function formatPlainSecret(key: Uint8Array): string {
  _checkKey(key);
  return toHex(key);
}

/**
 * The `dd` form: "dd" + 32 lowercase hex digits (padded intermediate only).
 *
 * @example Usage
 * ```ts
 * import { formatDdSecret } from "./secret.ts";
 * formatDdSecret(new Uint8Array(16)); // "dd00000000000000000000000000000000"
 * ```
 */
export function formatDdSecret(key: Uint8Array): string {
  _checkKey(key);
  return "dd" + toHex(key);
}

/** Options for {@linkcode formatTlsSecret}. */
export interface FormatTlsSecretOptions {
  /** @default "hex" */
  encoding?: SecretEncoding;
}

/**
 * The `ee` (fake-TLS) form: `ee || key || domain`, as hex or base64url without padding.
 *
 * @example Usage
 * ```ts
 * import { formatTlsSecret } from "./secret.ts";
 * const key = Uint8Array.from({ length: 16 }, (_, i) => i);
 * formatTlsSecret(key, "example.com"); // "ee000102…6578616d706c652e636f6d"
 * formatTlsSecret(key, "example.com", { encoding: "base64url" }); // "7gABAgME…"
 * ```
 */
export function formatTlsSecret(
  key: Uint8Array,
  domain: string,
  options: FormatTlsSecretOptions = {},
): string {
  _checkKey(key);
  if (!isValidTlsDomain(domain)) {
    throw new SecretError(
      "bad_domain",
      `TLS domain must be a host name of at most ${MAX_TLS_DOMAIN_BYTES} characters: got ${
        JSON.stringify(domain)
      }`,
    );
  }
  const domainBytes = new TextEncoder().encode(domain);
  const bytes = new Uint8Array(1 + SECRET_BYTES + domainBytes.length);
  bytes[0] = 0xee;
  bytes.set(key, 1);
  bytes.set(domainBytes, 1 + SECRET_BYTES);
  return (options.encoding ?? "hex") === "hex" ? toHex(bytes) : _toBase64Url(bytes);
}

/** Where clients connect: the host and port printed in a link. */
export interface ProxyServer {
  /** Host name or IP literal (IPv6 without brackets). */
  readonly host: string;
  readonly port: number;
}

/** Options for {@linkcode proxyLink}. */
export interface ProxyLinkOptions {
  /** `tg://proxy` (opens the app) or `https://t.me/proxy` (works in browsers). @default "tg" */
  scheme?: "tg" | "https";
}

/**
 * One proxy link for a client-side secret string. Parameters are URL-encoded; an IPv6 host
 * keeps its colons, as alexbers' proxy prints it.
 *
 * @example Usage
 * ```ts
 * import { proxyLink } from "./secret.ts";
 * proxyLink({ host: "203.0.113.5", port: 443 }, "dd00000000000000000000000000000000");
 * // "tg://proxy?server=203.0.113.5&port=443&secret=dd00000000000000000000000000000000"
 * ```
 */
export function proxyLink(
  server: ProxyServer,
  secret: string,
  options: ProxyLinkOptions = {},
): string {
  const host = server.host.includes(":")
    ? server.host.replace(/^\[(.*)\]$/, "$1")
    : encodeURIComponent(server.host);
  const query = `server=${host}&port=${server.port}&secret=${encodeURIComponent(secret)}`;
  return (options.scheme ?? "tg") === "tg" ? `tg://proxy?${query}` : `https://t.me/proxy?${query}`;
}

/** Options for {@linkcode proxyLinks}. */
export interface ProxyLinksOptions {
  /** Protocols to make links for, in this order. @default ["tls", "dd", "plain"] */
  protocols?: readonly SecretKind[];
  /** Domain of the `ee` secret; required when `protocols` includes "tls". */
  tlsDomain?: string;
}

/** The links for one secret form. */
export interface ProxyLinkSet {
  readonly kind: SecretKind;
  readonly encoding: SecretEncoding;
  /** The client-side secret in the links. */
  readonly secret: string;
  /** `tg://proxy?…` */
  readonly tg: string;
  /** `https://t.me/proxy?…` */
  readonly https: string;
}

/**
 * Links for every protocol in `options.protocols`; "tls" yields two sets, the hex `ee` form
 * first (base64 links were unreliable on iOS) and then base64url.
 *
 * @example Usage
 * ```ts
 * import { proxyLinks } from "./secret.ts";
 * const links = proxyLinks({ host: "proxy.example.com", port: 443 }, new Uint8Array(16), {
 *   protocols: ["tls", "dd"],
 *   tlsDomain: "www.example.com",
 * });
 * links.map((l) => `${l.kind}/${l.encoding}`); // ["tls/hex", "tls/base64url", "dd/hex"]
 * ```
 */
export function proxyLinks(
  server: ProxyServer,
  key: Uint8Array,
  options: ProxyLinksOptions = {},
): ProxyLinkSet[] {
  const out: ProxyLinkSet[] = [];
  const add = (kind: SecretKind, encoding: SecretEncoding, secret: string): void => {
    out.push({
      kind,
      encoding,
      secret,
      tg: proxyLink(server, secret, { scheme: "tg" }),
      https: proxyLink(server, secret, { scheme: "https" }),
    });
  };
  for (const kind of options.protocols ?? ["tls", "dd", "plain"]) {
    if (kind === "plain") add(kind, "hex", formatPlainSecret(key));
    if (kind === "dd") add(kind, "hex", formatDdSecret(key));
    if (kind === "tls") {
      const domain = options.tlsDomain;
      if (domain === undefined) {
        throw new SecretError("bad_domain", "Links for fake-TLS need a TLS domain");
      }
      add(kind, "hex", formatTlsSecret(key, domain, { encoding: "hex" }));
      add(kind, "base64url", formatTlsSecret(key, domain, { encoding: "base64url" }));
    }
  }
  return out;
}

/**
 * The per-SNI derived secret of the Erlang proxy (protocol.md §8):
 * `SHA256(salt || hex_lower(base) || sni)[0:16]`. A user's link is then the `ee` form of the
 * derived secret with `sni` as its domain.
 *
 * @example Usage
 * ```ts
 * import { perSniSecret, toHex } from "./secret.ts";
 * const base = Uint8Array.from({ length: 16 }, (_, i) => i);
 * toHex(perSniSecret(base, "alice.example.com")); // 32 hex digits, stable for these inputs
 * ```
 */
export function perSniSecret(
  base: Uint8Array,
  sni: string | Uint8Array,
  salt: string | Uint8Array = PER_SNI_DEFAULT_SALT,
): Uint8Array {
  _checkKey(base);
  const enc = new TextEncoder();
  const bytes = (v: string | Uint8Array) => typeof v === "string" ? enc.encode(v) : v;
  return sha256(bytes(salt), enc.encode(toHex(base)), bytes(sni)).slice(0, SECRET_BYTES);
}
