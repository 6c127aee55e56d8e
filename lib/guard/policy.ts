/**
 * Connection policy: which client addresses may connect, how many connections one address (or
 * one fake-TLS SNI, which is one user with per-SNI secrets) may hold at once, and which SNIs are
 * let in. Pure: addresses and SNIs in, decisions out; the server and sessions apply them.
 *
 * @module
 */
import type { PolicyConfig } from "../config/types.ts";
import { parseIp } from "../protocol/rpc.ts";

/** A parsed network: the address as 16 bytes (IPv4 as IPv4-mapped IPv6) and a prefix length. */
export interface Cidr {
  readonly bytes: Uint8Array;
  /** Prefix length over the 128-bit form (an IPv4 /24 is 96 + 24). */
  readonly bits: number;
}

/**
 * An IP address as 16 bytes (IPv4 becomes `::ffff:a.b.c.d`), or null when it is not one.
 *
 * @example Usage
 * ```ts
 * import { parseIp16 } from "./policy.ts";
 * parseIp16("10.0.0.1")?.[15]; // 1
 * parseIp16("::ffff:10.0.0.1")?.[12]; // 10
 * parseIp16("example.com"); // null
 * ```
 */
export function parseIp16(text: string): Uint8Array | null {
  const bytes = parseIp(text);
  if (bytes === null || bytes.length === 16) return bytes;
  const out = new Uint8Array(16);
  out[10] = 0xff;
  out[11] = 0xff;
  out.set(bytes, 12);
  return out;
}

/**
 * A network in CIDR form (`10.0.0.0/8`, `2001:db8::/32`; a bare address is one host), or null.
 *
 * @example Usage
 * ```ts
 * import { cidrContains, parseCidr, parseIp16 } from "./policy.ts";
 * cidrContains(parseCidr("10.0.0.0/8")!, parseIp16("10.1.2.3")!); // true
 * ```
 */
export function parseCidr(text: string): Cidr | null {
  const m = /^([^/]+?)(?:\/(\d{1,3}))?$/.exec(text.trim());
  if (!m) return null;
  const bytes = parseIp16(m[1]!);
  if (!bytes) return null;
  // The prefix counts bits of the address as written: 32 for IPv4, 128 for IPv6 notation.
  const v4 = !m[1]!.includes(":");
  const max = v4 ? 32 : 128;
  const prefix = m[2] === undefined ? max : Number(m[2]);
  if (prefix > max) return null;
  const bits = v4 ? 96 + prefix : prefix;
  return { bytes: _masked(bytes, bits), bits };
}

/** Whether `ip` (16 bytes, from {@linkcode parseIp16}) lies in `net`. */
export function cidrContains(net: Cidr, ip: Uint8Array): boolean {
  const full = net.bits >> 3;
  for (let i = 0; i < full; i++) if (ip[i] !== net.bytes[i]) return false;
  const rest = net.bits & 7;
  if (rest === 0) return true;
  const mask = (0xff << (8 - rest)) & 0xff;
  return (ip[full]! & mask) === net.bytes[full];
}

function _masked(bytes: Uint8Array, bits: number): Uint8Array {
  const out = bytes.slice();
  for (let i = 0; i < 16; i++) {
    const keep = Math.max(0, Math.min(8, bits - 8 * i));
    out[i]! &= (0xff << (8 - keep)) & 0xff;
  }
  return out;
}

/**
 * Whose connections count together for `max_connections_per_ip`: one IPv4 address, or one
 * IPv6 /64 (a single host usually holds a whole /64, so counting addresses would be no limit).
 */
export function ipKey(ip: Uint8Array): string {
  const v4 = ip.subarray(0, 12).every((b, i) => b === (i < 10 ? 0 : 0xff));
  if (v4) return ip.subarray(12).join(".");
  return Array.from(ip.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join("") + "/64";
}

/** Why the policy refused a connection. */
export type PolicyRefusal = "ip_denied" | "ip_limit" | "sni_denied" | "sni_limit";

/** A connection slot held under the policy; release it exactly once when the connection ends. */
export interface PolicySlot {
  release(): void;
}

const NO_SLOT: PolicySlot = { release() {} };

/**
 * Where a {@linkcode ConnectionPolicy} counts the connections held per key (an {@linkcode ipKey}
 * or an SNI). {@linkcode createMemoryCounts} counts in this thread; `openSharedCounts` in
 * `shared_counts.ts` counts for several threads together.
 */
export interface ConnectionCounts {
  /**
   * Count one more connection under `key` unless `limit` are counted there already, and say
   * whether it was counted. A `limit` of 0 means no limit (it counts all the same).
   */
  tryAcquire(key: string, limit: number): boolean;
  /** Count one fewer under `key`: once for each `tryAcquire` that returned true. */
  release(key: string): void;
  /** Keys with at least one connection counted. */
  readonly size: number;
}

/**
 * In-process {@linkcode ConnectionCounts}, the default: a `Map` from key to count that holds only
 * keys with connections.
 *
 * @example Usage
 * ```ts
 * import { createMemoryCounts } from "./policy.ts";
 * const counts = createMemoryCounts();
 * counts.tryAcquire("198.51.100.1", 1); // true
 * counts.tryAcquire("198.51.100.1", 1); // false: the limit is 1
 * counts.release("198.51.100.1");
 * counts.size; // 0
 * ```
 */
export function createMemoryCounts(): ConnectionCounts {
  const counts = new Map<string, number>();
  return {
    tryAcquire(key: string, limit: number): boolean {
      const n = counts.get(key) ?? 0;
      if (limit > 0 && n >= limit) return false;
      counts.set(key, n + 1);
      return true;
    },
    release(key: string): void {
      const left = (counts.get(key) ?? 1) - 1;
      if (left <= 0) counts.delete(key);
      else counts.set(key, left);
    },
    get size(): number {
      return counts.size;
    },
  };
}

/** Options of {@linkcode ConnectionPolicy}. */
export interface ConnectionPolicyOptions {
  /**
   * Where connections per address key are counted; pass shared counts so that several threads
   * (each with its own policy) apply `max_connections_per_ip` together.
   *
   * @default {createMemoryCounts()}
   */
  ipCounts?: ConnectionCounts;
  /**
   * Where connections per SNI are counted. Keep it apart from `ipCounts`: a client may name
   * any SNI, one spelled like an address key among them.
   *
   * @default {createMemoryCounts()}
   */
  sniCounts?: ConnectionCounts;
}

/**
 * Applies a {@linkcode PolicyConfig}: address lists and per-address limits when a connection is
 * accepted, SNI lists and per-SNI limits once a fake-TLS client has proven it holds the secret.
 *
 * @example Usage
 * ```ts
 * import { ConnectionPolicy } from "./policy.ts";
 * const policy = new ConnectionPolicy({
 *   maxConnectionsPerIp: 1, maxConnectionsPerSni: 0,
 *   allowIps: [], denyIps: ["192.0.2.0/24"], allowSni: [], denySni: [],
 * });
 * policy.admitIp("192.0.2.7"); // "ip_denied"
 * const slot = policy.admitIp("198.51.100.1"); // a PolicySlot
 * policy.admitIp("198.51.100.1"); // "ip_limit"
 * if (typeof slot !== "string") slot.release();
 * ```
 */
export class ConnectionPolicy {
  #maxPerIp = 0;
  #maxPerSni = 0;
  #allowIps: readonly Cidr[] = [];
  #denyIps: readonly Cidr[] = [];
  #allowSni: ReadonlySet<string> = new Set();
  #denySni: ReadonlySet<string> = new Set();
  readonly #perIp: ConnectionCounts;
  readonly #perSni: ConnectionCounts;

  constructor(config: PolicyConfig, options: ConnectionPolicyOptions = {}) {
    this.#perIp = options.ipCounts ?? createMemoryCounts();
    this.#perSni = options.sniCounts ?? createMemoryCounts();
    this.update(config);
  }

  /**
   * Apply new rules. Connections already held keep their slots and are counted against the new
   * limits; connections made while a limit was 0 were not counted and never will be.
   */
  update(config: PolicyConfig): void {
    const nets = (list: readonly string[]) =>
      list.map((text) => {
        const net = parseCidr(text);
        if (!net) throw new RangeError(`Not a network: ${JSON.stringify(text)}`);
        return net;
      });
    const allowIps = nets(config.allowIps);
    const denyIps = nets(config.denyIps);
    this.#maxPerIp = config.maxConnectionsPerIp;
    this.#maxPerSni = config.maxConnectionsPerSni;
    this.#allowIps = allowIps;
    this.#denyIps = denyIps;
    this.#allowSni = new Set(config.allowSni.map((s) => s.toLowerCase()));
    this.#denySni = new Set(config.denySni.map((s) => s.toLowerCase()));
  }

  /** Whether the address lists refuse `address` (limits aside). */
  deniesIp(address: string): boolean {
    if (this.#allowIps.length === 0 && this.#denyIps.length === 0) return false;
    const ip = parseIp16(address);
    if (!ip) return this.#allowIps.length > 0;
    if (this.#denyIps.some((n) => cidrContains(n, ip))) return true;
    return this.#allowIps.length > 0 && !this.#allowIps.some((n) => cidrContains(n, ip));
  }

  /** Whether the SNI lists refuse `sni` (lowercase; limits aside). */
  deniesSni(sni: string): boolean {
    return this.#denySni.has(sni) || (this.#allowSni.size > 0 && !this.#allowSni.has(sni));
  }

  /** Whether address rules exist at all (the server skips parsing addresses otherwise). */
  get checksIps(): boolean {
    return this.#maxPerIp > 0 || this.#allowIps.length > 0 || this.#denyIps.length > 0;
  }

  /** Whether SNI rules exist at all. */
  get checksSnis(): boolean {
    return this.#maxPerSni > 0 || this.#allowSni.size > 0 || this.#denySni.size > 0;
  }

  /**
   * Keys that hold connections now: address keys and SNIs (for tests and metrics; with shared
   * counts, those of every thread).
   */
  get held(): { ips: number; snis: number } {
    return { ips: this.#perIp.size, snis: this.#perSni.size };
  }

  /** Admit a connection from `address` (an IP literal), or say why not. */
  admitIp(address: string): PolicySlot | PolicyRefusal {
    if (!this.checksIps) return NO_SLOT;
    if (this.deniesIp(address)) return "ip_denied";
    const ip = parseIp16(address);
    // Not an IP (a Unix socket?): there is nothing to count it by.
    if (this.#maxPerIp === 0 || !ip) return NO_SLOT;
    return _take(this.#perIp, ipKey(ip), this.#maxPerIp) ?? "ip_limit";
  }

  /** Admit a fake-TLS client that named `sni` (lowercase), or say why not. */
  admitSni(sni: string): PolicySlot | PolicyRefusal {
    if (this.deniesSni(sni)) return "sni_denied";
    if (this.#maxPerSni === 0) return NO_SLOT;
    return _take(this.#perSni, sni, this.#maxPerSni) ?? "sni_limit";
  }
}

/** Count one more under `key` unless `max` are held; the slot gives it back once. */
function _take(counts: ConnectionCounts, key: string, max: number): PolicySlot | null {
  if (!counts.tryAcquire(key, max)) return null;
  let released = false;
  return {
    release() {
      if (released) return;
      released = true;
      counts.release(key);
    },
  };
}
