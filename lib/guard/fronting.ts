/**
 * Domain fronting: where a connection that cannot be a proxy client goes, so that a prober
 * talks to the real site named in the SNI and gets its real certificate and pages.
 *
 * @module
 */
import type { FrontingConfig, HostPort } from "../config/types.ts";

/** Port of the real site in "sni" mode. */
export const HTTPS_PORT = 443;

/** Where to front a connection, or why not. */
export type FrontingDecision =
  | { kind: "front"; target: HostPort }
  | { kind: "close"; reason: "fronting_off" | "no_sni" | "sni_not_allowed" };

/**
 * Decide where to front a connection whose ClientHello named `sni` (null: no SNI, or not TLS
 * at all). In "sni" mode only `allowedSnis` are fronted, so the proxy is no open relay.
 */
export function frontingTarget(
  config: FrontingConfig,
  sni: string | null,
  allowedSnis: ReadonlySet<string>,
): FrontingDecision {
  if (config.mode === "off") return { kind: "close", reason: "fronting_off" };
  if (config.mode !== "sni") return { kind: "front", target: config.mode };
  if (sni === null) return { kind: "close", reason: "no_sni" };
  const name = sni.toLowerCase();
  if (!allowedSnis.has(name)) return { kind: "close", reason: "sni_not_allowed" };
  return { kind: "front", target: { host: name, port: HTTPS_PORT } };
}

/**
 * The SNIs "sni" mode may front: every listener's tls_domain plus `fronting.allow`.
 */
export function frontableSnis(
  listeners: readonly { tlsDomains: readonly string[] }[],
  config: FrontingConfig,
): Set<string> {
  const out = new Set<string>(config.allow.map((d) => d.toLowerCase()));
  for (const l of listeners) for (const d of l.tlsDomains) out.add(d.toLowerCase());
  return out;
}

/**
 * Whether `addr` is one of this proxy's own listening sockets (fronting there would loop):
 * same port as a listener, and an address the listener accepts on.
 */
export function isOwnAddress(
  addr: { hostname: string; port: number },
  listeners: readonly { host: string; port: number }[],
  localIps: ReadonlySet<string>,
): boolean {
  const ip = addr.hostname.replace(/^::ffff:/, "");
  return listeners.some((l) => {
    if (l.port !== addr.port) return false;
    const wildcard = l.host === "0.0.0.0" || l.host === "::";
    return wildcard ? localIps.has(ip) : l.host === ip;
  });
}

/** Every IP address of this machine (loopback included). */
export function localIpAddresses(): Set<string> {
  const out = new Set<string>(["127.0.0.1", "::1"]);
  try {
    for (const i of Deno.networkInterfaces()) out.add(i.address);
  } catch {
    // Without --allow-sys only loopback is known; listeners on a wildcard still catch loops
    // to 127.0.0.1, the likely mistake.
  }
  return out;
}
