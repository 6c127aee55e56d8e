/**
 * Opening the fronting target for a connection that is not ours (a prober, a browser, a wrong
 * secret): decide where it goes, dial, refuse a loop back into this proxy, and hand over the
 * bytes read so far. Client listeners and a back's link listeners share it; what happens next
 * (the untouched relay) is the caller's, as each accounts for it differently.
 *
 * @module
 */
import type { FrontingConfig } from "../config/types.ts";
import { closeQuietly, type Conn, dialTcp, formatHostPort, writeAll } from "../net.ts";
import { frontingTarget } from "./fronting.ts";

/** What the fronting code needs to know about this proxy. */
export interface FrontingGuard {
  /** SNIs "sni" mode may front. */
  readonly frontableSnis: ReadonlySet<string>;
  /** Whether a dialled address is one of this proxy's own listeners. */
  isOwnAddress(addr: { hostname: string; port: number }): boolean;
}

/** The outcome of {@linkcode openFronting}. */
export type FrontingOpened =
  /** `site` has the buffered bytes; relay both ways untouched from here. */
  | { kind: "fronted"; site: Conn; where: string }
  /** The configuration says not to front this connection. */
  | { kind: "not_fronted"; reason: "fronting_off" | "no_sni" | "sni_not_allowed" }
  /** It should have been fronted and could not be. */
  | { kind: "failed"; reason: "fronting_failed" | "fronting_loop"; detail: string };

/**
 * Dial the fronting target for a connection whose hello named `sni` (null: none, or not TLS)
 * and write `buffered` to it. The site connection is closed on every outcome but "fronted".
 */
export async function openFronting(options: {
  config: FrontingConfig;
  guard: FrontingGuard;
  sni: string | null;
  buffered: Uint8Array;
  signal?: AbortSignal;
}): Promise<FrontingOpened> {
  const { config, guard } = options;
  const decision = frontingTarget(config, options.sni, guard.frontableSnis);
  if (decision.kind === "close") return { kind: "not_fronted", reason: decision.reason };
  const { host, port } = decision.target;
  const where = formatHostPort(host, port);
  let site: Conn;
  try {
    site = await dialTcp(host, port, {
      timeoutMs: config.connectTimeoutMs,
      ...(options.signal ? { signal: options.signal } : {}),
    });
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    return { kind: "failed", reason: "fronting_failed", detail: `${where}: ${why}` };
  }
  if (guard.isOwnAddress(site.remoteAddr as Deno.NetAddr)) {
    closeQuietly(site);
    return { kind: "failed", reason: "fronting_loop", detail: `${where} is this proxy` };
  }
  try {
    await writeAll(site, options.buffered);
  } catch (e) {
    closeQuietly(site);
    const why = e instanceof Error ? e.message : String(e);
    return { kind: "failed", reason: "fronting_failed", detail: `${where}: ${why}` };
  }
  return { kind: "fronted", site, where };
}
