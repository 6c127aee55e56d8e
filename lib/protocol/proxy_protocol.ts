/**
 * The PROXY protocol header (HAProxy's, versions 1 and 2) that a TCP balancer such as HAProxy or
 * nginx (`proxy_protocol on`) puts before the client's bytes, carrying the client's address.
 * Pure: bytes in, the header's length and the source address out.
 *
 * @module
 */
import { parseIp } from "./rpc.ts";

/** A client address taken from the header. */
export interface ProxySource {
  readonly ip: string;
  readonly port: number;
}

/** One step of {@linkcode parseProxyHeader}. */
export type ProxyHeaderStep =
  | { kind: "need"; atLeast: number }
  | { kind: "reject"; reason: string }
  /**
   * `length` bytes form the header. `source` is null when the balancer speaks for itself (a v2
   * LOCAL health check, v1 UNKNOWN, a non-TCP family): the socket's address stands then.
   */
  | { kind: "header"; length: number; source: ProxySource | null };

/** Version 2 starts with these 12 bytes. */
const V2_SIGNATURE = Uint8Array.of(
  0x0d,
  0x0a,
  0x0d,
  0x0a,
  0x00,
  0x0d,
  0x0a,
  0x51,
  0x55,
  0x49,
  0x54,
  0x0a,
);
/** Version 1 starts with "PROXY " and is at most 107 bytes with its CRLF. */
const V1_PREFIX = "PROXY ";
const V1_MAX = 107;
/** A v2 header with its addresses and TLVs is at most this long here (the format allows 64 KiB). */
const V2_MAX = 16 + 4096;

/**
 * Parse the PROXY header at the start of `bytes`.
 *
 * @example Usage
 * ```ts
 * import { parseProxyHeader } from "./proxy_protocol.ts";
 * const text = "PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n";
 * parseProxyHeader(new TextEncoder().encode(text));
 * // { kind: "header", length: 44, source: { ip: "203.0.113.7", port: 51000 } }
 * ```
 */
export function parseProxyHeader(bytes: Uint8Array): ProxyHeaderStep {
  if (bytes.length === 0) return { kind: "need", atLeast: 1 };
  const have = Math.min(bytes.length, V2_SIGNATURE.length);
  let v2 = true;
  for (let i = 0; i < have; i++) if (bytes[i] !== V2_SIGNATURE[i]) v2 = false;
  if (v2) return have < V2_SIGNATURE.length ? { kind: "need", atLeast: 16 } : _v2(bytes);
  for (let i = 0; i < Math.min(bytes.length, V1_PREFIX.length); i++) {
    if (bytes[i] !== V1_PREFIX.charCodeAt(i)) {
      return { kind: "reject", reason: "no PROXY protocol header" };
    }
  }
  return _v1(bytes);
}

function _v1(bytes: Uint8Array): ProxyHeaderStep {
  const limit = Math.min(bytes.length, V1_MAX);
  let end = -1;
  for (let i = V1_PREFIX.length; i + 1 < limit; i++) {
    if (bytes[i] === 0x0d && bytes[i + 1] === 0x0a) {
      end = i;
      break;
    }
  }
  if (end < 0) {
    return bytes.length >= V1_MAX
      ? { kind: "reject", reason: "v1 header longer than 107 bytes" }
      : { kind: "need", atLeast: bytes.length + 1 };
  }
  const length = end + 2;
  const line = new TextDecoder("latin1").decode(bytes.subarray(0, end));
  const parts = line.split(" ");
  if (parts[1] === "UNKNOWN") return { kind: "header", length, source: null };
  if (parts.length !== 6 || (parts[1] !== "TCP4" && parts[1] !== "TCP6")) {
    return { kind: "reject", reason: `malformed v1 header ${JSON.stringify(line)}` };
  }
  const ip = parts[2]!;
  const port = _port(parts[4]!);
  const tcp4 = parts[1] === "TCP4";
  if (
    port === null || _port(parts[5]!) === null || !_v1Address(ip, tcp4) ||
    !_v1Address(parts[3]!, tcp4)
  ) {
    return { kind: "reject", reason: `malformed v1 header ${JSON.stringify(line)}` };
  }
  return {
    kind: "header",
    length,
    source: { ip: parts[1] === "TCP6" ? ip.toLowerCase() : ip, port },
  };
}

/**
 * A bare address of the line's family. parseIp alone would also take a zone ("fe80::1%eth0") or
 * brackets, which would then reach logs and the address rules as the client's address.
 */
function _v1Address(text: string, tcp4: boolean): boolean {
  const shape = tcp4 ? /^\d{1,3}(\.\d{1,3}){3}$/ : /^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*$/;
  return shape.test(text) && parseIp(text) !== null;
}

function _port(text: string): number | null {
  if (!/^\d{1,5}$/.test(text)) return null;
  const n = Number(text);
  return n <= 65535 ? n : null;
}

function _v2(bytes: Uint8Array): ProxyHeaderStep {
  if (bytes.length < 16) return { kind: "need", atLeast: 16 };
  const verCmd = bytes[12]!;
  const family = bytes[13]!;
  const bodyLength = (bytes[14]! << 8) | bytes[15]!;
  if (verCmd >> 4 !== 2) return { kind: "reject", reason: `v2 header of version ${verCmd >> 4}` };
  const command = verCmd & 0x0f;
  if (command > 1) return { kind: "reject", reason: `v2 command ${command}` };
  const length = 16 + bodyLength;
  if (length > V2_MAX) return { kind: "reject", reason: `v2 header of ${length} bytes` };
  if (bytes.length < length) return { kind: "need", atLeast: length };
  // LOCAL: the balancer's own connection (a health check); other families carry no TCP client.
  if (command === 0) return { kind: "header", length, source: null };
  const body = bytes.subarray(16, length);
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  if (family === 0x11) {
    if (body.length < 12) return { kind: "reject", reason: "v2 TCP4 addresses cut short" };
    return {
      kind: "header",
      length,
      source: { ip: body.subarray(0, 4).join("."), port: view.getUint16(8) },
    };
  }
  if (family === 0x21) {
    if (body.length < 36) return { kind: "reject", reason: "v2 TCP6 addresses cut short" };
    const groups: string[] = [];
    for (let i = 0; i < 8; i++) groups.push(view.getUint16(2 * i).toString(16));
    return {
      kind: "header",
      length,
      source: { ip: _compressIpv6(groups), port: view.getUint16(32) },
    };
  }
  return { kind: "header", length, source: null };
}

/** The usual text of an IPv6 address: the longest run of two or more zero groups as "::". */
function _compressIpv6(groups: string[]): string {
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== "0") {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === "0") j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (best < 0) return groups.join(":");
  return `${groups.slice(0, best).join(":")}::${groups.slice(best + bestLen).join(":")}`;
}
