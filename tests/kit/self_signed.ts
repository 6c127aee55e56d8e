/**
 * Self-signed X.509 v3 server certificates for tests, built in pure TypeScript: an ECDSA P-256
 * key from node:crypto, a small hand-written DER encoder for the TBSCertificate, and a
 * node:crypto ECDSA-SHA256 signature. No openssl CLI, no npm packages.
 *
 * The certificate is a leaf (basicConstraints CA:FALSE, keyUsage digitalSignature,
 * extendedKeyUsage serverAuth) whose subjectAltName lists every name; rustls accepts it as its
 * own trust anchor, so `Deno.connectTls({ caCerts: [certPem], hostname })` verifies it for each
 * listed name and for no other.
 *
 * @module
 */
import { concatBytes } from "../../lib/protocol/bytes.ts";
import { generateKeyPairSync, randomBytes, sign } from "node:crypto";
import { isIP } from "node:net";

/** Options for {@linkcode makeSelfSignedCert}. */
export interface SelfSignedOptions {
  /**
   * Names the certificate is valid for, in subjectAltName order; the first is also the subject
   * and issuer CN. DNS names become dNSName entries, IPv4/IPv6 literals iPAddress entries.
   */
  names: string[];
  /** Days of validity after now (it also starts one day in the past). @default 30 */
  days?: number;
}

/** A PEM certificate and its PKCS#8 PEM private key. */
export interface SelfSignedCert {
  /** `-----BEGIN CERTIFICATE-----` ... */
  certPem: string;
  /** `-----BEGIN PRIVATE KEY-----` ... (PKCS#8, EC P-256). */
  keyPem: string;
}

// --- Minimal DER encoder -----------------------------------------------------------------

/** Tag + definite length + content. */
function _tlv(tag: number, content: Uint8Array): Uint8Array {
  const n = content.length;
  let len: number[];
  if (n < 0x80) {
    len = [n];
  } else {
    const bytes: number[] = [];
    for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
    len = [0x80 | bytes.length, ...bytes];
  }
  const out = new Uint8Array(1 + len.length + n);
  out[0] = tag;
  out.set(len, 1);
  out.set(content, 1 + len.length);
  return out;
}

function _seq(...items: Uint8Array[]): Uint8Array {
  return _tlv(0x30, concatBytes(items));
}

function _set(...items: Uint8Array[]): Uint8Array {
  return _tlv(0x31, concatBytes(items));
}

/** INTEGER from big-endian unsigned bytes (minimal, with a 0x00 pad when the top bit is set). */
function _uint(bytes: Uint8Array): Uint8Array {
  let i = 0;
  while (i < bytes.length - 1 && bytes[i] === 0) i++;
  const trimmed = bytes.subarray(i);
  const pad = (trimmed[0] ?? 0) & 0x80 ? [0] : [];
  return _tlv(0x02, Uint8Array.from([...pad, ...(trimmed.length ? trimmed : [0])]));
}

function _bool(v: boolean): Uint8Array {
  return _tlv(0x01, Uint8Array.of(v ? 0xff : 0x00));
}

function _oid(dotted: string): Uint8Array {
  const arcs = dotted.split(".").map(Number);
  const [a, b, ...rest] = arcs;
  if (a === undefined || b === undefined) throw new RangeError(`Bad OID ${dotted}`);
  const out: number[] = [];
  for (const arc of [a * 40 + b, ...rest]) {
    const chunk = [arc & 0x7f];
    for (let v = Math.floor(arc / 128); v > 0; v = Math.floor(v / 128)) {
      chunk.unshift(0x80 | (v & 0x7f));
    }
    out.push(...chunk);
  }
  return _tlv(0x06, Uint8Array.from(out));
}

/** BIT STRING with `unused` unused bits in the last byte. */
function _bitString(bytes: Uint8Array, unused = 0): Uint8Array {
  return _tlv(0x03, Uint8Array.from([unused, ...bytes]));
}

function _octetString(bytes: Uint8Array): Uint8Array {
  return _tlv(0x04, bytes);
}

function _utf8String(s: string): Uint8Array {
  return _tlv(0x0c, new TextEncoder().encode(s));
}

/** Constructed, context-specific [n] (EXPLICIT tagging). */
function _explicit(n: number, inner: Uint8Array): Uint8Array {
  return _tlv(0xa0 | n, inner);
}

/** RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; whole seconds, "Z". */
function _time(date: Date): Uint8Array {
  const p = (v: number, w = 2) => String(v).padStart(w, "0");
  const y = date.getUTCFullYear();
  const rest = p(date.getUTCMonth() + 1) + p(date.getUTCDate()) + p(date.getUTCHours()) +
    p(date.getUTCMinutes()) + p(date.getUTCSeconds()) + "Z";
  const ascii = (s: string) => new TextEncoder().encode(s);
  return y >= 1950 && y < 2050
    ? _tlv(0x17, ascii(p(y % 100) + rest))
    : _tlv(0x18, ascii(p(y, 4) + rest));
}

// --- Names ---------------------------------------------------------------------------------

/** Network-order bytes of an IPv4 or IPv6 literal, or null when `name` is not one. */
export function ipLiteralBytes(name: string): Uint8Array | null {
  const bare = name.startsWith("[") && name.endsWith("]") ? name.slice(1, -1) : name;
  const kind = isIP(bare);
  if (kind === 4) return Uint8Array.from(bare.split(".").map(Number));
  if (kind !== 6) return null;
  let text = bare.toLowerCase();
  const tail: number[] = [];
  // An embedded IPv4 tail (::ffff:1.2.3.4) becomes two 16-bit groups.
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (v4) {
    const [a, b, c, d] = v4[1]!.split(".").map(Number) as [number, number, number, number];
    tail.push((a << 8) | b, (c << 8) | d);
    text = text.slice(0, -v4[1]!.length);
    if (text.endsWith(":") && !text.endsWith("::")) text = text.slice(0, -1);
  }
  const groups = (s: string) => (s === "" ? [] : s.split(":").map((g) => parseInt(g, 16)));
  let words: number[];
  const gap = text.indexOf("::");
  if (gap >= 0) {
    const head = groups(text.slice(0, gap));
    const rest = [...groups(text.slice(gap + 2)), ...tail];
    words = [...head, ...new Array<number>(8 - head.length - rest.length).fill(0), ...rest];
  } else {
    words = [...groups(text), ...tail];
  }
  const out = new Uint8Array(16);
  words.forEach((w, i) => {
    out[2 * i] = w >> 8;
    out[2 * i + 1] = w & 0xff;
  });
  return out;
}

// --- Certificate ---------------------------------------------------------------------------

const OID_ECDSA_SHA256 = "1.2.840.10045.4.3.2";
const OID_CN = "2.5.4.3";
const OID_KEY_USAGE = "2.5.29.15";
const OID_SAN = "2.5.29.17";
const OID_BASIC_CONSTRAINTS = "2.5.29.19";
const OID_EXT_KEY_USAGE = "2.5.29.37";
const OID_SERVER_AUTH = "1.3.6.1.5.5.7.3.1";

const DAY_MS = 86_400_000;

function _extension(oid: string, critical: boolean, value: Uint8Array): Uint8Array {
  return critical
    ? _seq(_oid(oid), _bool(true), _octetString(value))
    : _seq(_oid(oid), _octetString(value));
}

function _pem(label: string, der: Uint8Array): string {
  const b64 = btoa(Array.from(der, (b) => String.fromCharCode(b)).join(""));
  const lines = b64.match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

/**
 * Generate a self-signed ECDSA P-256 server certificate valid for `names`.
 *
 * @example Usage
 * ```ts ignore
 * const { certPem, keyPem } = await makeSelfSignedCert({ names: ["example.com"] });
 * const listener = Deno.listenTls({ hostname: "127.0.0.1", port: 0, cert: certPem, key: keyPem });
 * ```
 */
export function makeSelfSignedCert(options: SelfSignedOptions): Promise<SelfSignedCert> {
  // Async for API stability (a WebCrypto implementation would be); the work is synchronous.
  return Promise.resolve(makeSelfSignedCertSync(options));
}

/** Synchronous {@linkcode makeSelfSignedCert}. */
export function makeSelfSignedCertSync(options: SelfSignedOptions): SelfSignedCert {
  const names = options.names;
  const days = options.days ?? 30;
  if (names.length === 0) throw new RangeError("makeSelfSignedCert needs at least one name");
  if (!(days > 0)) throw new RangeError(`days must be positive: got ${days}`);

  const { publicKey, privateKey } = generateKeyPairSync("ec", { namedCurve: "prime256v1" });
  const spki = new Uint8Array(publicKey.export({ type: "spki", format: "der" }));

  // Random positive serial: 16 bytes, top bit clear, first byte non-zero (≤ 20 octets).
  const serial = new Uint8Array(randomBytes(16));
  serial[0] = (serial[0]! & 0x7f) | 0x01;

  const now = Math.floor(Date.now() / 1000) * 1000;
  const name = _seq(_set(_seq(_oid(OID_CN), _utf8String(names[0]!))));
  const sigAlg = _seq(_oid(OID_ECDSA_SHA256)); // parameters absent (RFC 5758 §3.2)

  const altNames = names.map((n) => {
    const ip = ipLiteralBytes(n);
    // GeneralName: dNSName [2] IA5String, iPAddress [7] OCTET STRING (IMPLICIT).
    return ip ? _tlv(0x87, ip) : _tlv(0x82, new TextEncoder().encode(n));
  });
  const extensions = _explicit(
    3,
    _seq(
      _extension(OID_SAN, false, _seq(...altNames)),
      _extension(OID_BASIC_CONSTRAINTS, true, _seq()), // cA DEFAULT FALSE: omitted in DER
      _extension(OID_KEY_USAGE, true, _bitString(Uint8Array.of(0x80), 7)), // digitalSignature
      _extension(OID_EXT_KEY_USAGE, false, _seq(_oid(OID_SERVER_AUTH))),
    ),
  );

  const tbs = _seq(
    _explicit(0, _uint(Uint8Array.of(2))), // version v3
    _uint(serial),
    sigAlg,
    name, // issuer
    _seq(_time(new Date(now - DAY_MS)), _time(new Date(now + days * DAY_MS))),
    name, // subject
    spki,
    extensions,
  );
  const signature = new Uint8Array(sign("sha256", tbs, privateKey)); // DER ECDSA-Sig-Value
  const cert = _seq(tbs, sigAlg, _bitString(signature));

  return {
    certPem: _pem("CERTIFICATE", cert),
    keyPem: String(privateKey.export({ type: "pkcs8", format: "pem" })),
  };
}
