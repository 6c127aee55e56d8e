/**
 * Telegram datacenter addresses for direct mode, and how a client's DC id picks one.
 *
 * @module
 */
import type { HostPort, TelegramConfig } from "../config/types.ts";

/** Official DC addresses (port 443), IPv4. DC 203 is the CDN DC. */
export const DC_IPV4: ReadonlyMap<number, string> = new Map([
  [1, "149.154.175.50"],
  [2, "149.154.167.51"],
  [3, "149.154.175.100"],
  [4, "149.154.167.91"],
  [5, "149.154.171.5"],
  [203, "91.105.192.100"],
]);

/** Official DC addresses (port 443), IPv6. */
export const DC_IPV6: ReadonlyMap<number, string> = new Map([
  [1, "2001:b28:f23d:f001::a"],
  [2, "2001:67c:4e8:f002::a"],
  [3, "2001:b28:f23d:f003::a"],
  [4, "2001:67c:4e8:f004::a"],
  [5, "2001:b28:f23f:f005::a"],
  [203, "2a0a:f280:203:a:5000::100"],
]);

/** Port of every official DC address. */
export const DC_PORT = 443;

/** Where a client's DC id leads. */
export interface DcRoute {
  /** The DC id the proxy announces to the DC (signed: negative = media). */
  readonly dcId: number;
  readonly address: HostPort;
  /** True when the client's id was unknown and `default_dc` was used. */
  readonly fallback: boolean;
}

function _lookup(dc: number, telegram: TelegramConfig): HostPort | undefined {
  const override = telegram.dcAddresses.get(dc);
  if (override) return override;
  const table = telegram.preferIpv6 ? DC_IPV6 : DC_IPV4;
  const host = table.get(dc);
  return host === undefined ? undefined : { host, port: DC_PORT };
}

/**
 * Route a client's DC id: an override for the exact id wins; a media id (-n) without its own
 * override uses DC n; an id nobody knows goes to `default_dc`.
 *
 * @example Usage
 * ```ts ignore
 * routeDc(-2, telegram); // { dcId: -2, address: { host: "149.154.167.51", port: 443 }, fallback: false }
 * ```
 */
export function routeDc(dcId: number, telegram: TelegramConfig): DcRoute {
  const exact = telegram.dcAddresses.get(dcId);
  if (exact) return { dcId, address: exact, fallback: false };
  const address = _lookup(Math.abs(dcId), telegram);
  if (address && dcId !== 0) return { dcId, address, fallback: false };
  const fallback = _lookup(telegram.defaultDc, telegram);
  if (!fallback) throw new Error(`No address for default DC ${telegram.defaultDc}`);
  return { dcId: telegram.defaultDc, address: fallback, fallback: true };
}
