/**
 * Bundled middle-proxy configuration, used only when neither core.telegram.org nor the disk
 * cache can provide one (first start on a host that cannot reach Telegram's API).
 *
 * Where the values come from (the protocol reference, protocol.md §10.1): both are the
 * fallbacks hard-coded in alexbers/mtprotoproxy (`mtprotoproxy.py`). The secret is the historic
 * `getProxySecret` answer (128 bytes; its first 4 bytes `c4f9faca` are the key selector). The
 * table is alexbers' `TG_MIDDLE_PROXIES_V4`, port 8888 everywhere. Both can be stale: Telegram
 * may rotate them at any time, which is why the store prefers a fresh download, then the last
 * good copy on disk. There is no bundled IPv6 table.
 *
 * @module
 */
import type { HostPort } from "../config/types.ts";
import type { ProxyConfig } from "./proxy_config.ts";

/** The historic proxy secret (`getProxySecret`), hex, as in protocol.md §10.1. */
export const BUNDLED_PROXY_SECRET_HEX: string = "c4f9faca9678e6bb48ad6c7e2ce5c0d2" +
  "4430645d554addeb55419e034da62721" +
  "d046eaab6e52ab14a95a443ecfb3463e" +
  "79a05a66612adf9caeda8be9a80da698" +
  "6fb0a6ff387af84d88ef3a6413713e5c" +
  "3377f6e1a3d47d99f5e0c56eece8f05c" +
  "54c490b079e31bef82ff0ee8f2b0a327" +
  "56d249c5f21269816cb7061b265db212";

/**
 * A fresh copy of the bundled proxy secret (128 bytes).
 *
 * @example Usage
 * ```ts
 * import { bundledProxySecret } from "./telegram_config.ts";
 * const secret = bundledProxySecret();
 * console.assert(secret.length === 128 && secret[0] === 0xc4);
 * ```
 */
export function bundledProxySecret(): Uint8Array {
  const hex = BUNDLED_PROXY_SECRET_HEX;
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Port of every bundled middle proxy. */
const _PORT = 8888;

function _at(host: string): readonly HostPort[] {
  return Object.freeze([Object.freeze({ host, port: _PORT })]);
}

/**
 * The bundled IPv4 middle-proxy table (alexbers' `TG_MIDDLE_PROXIES_V4`): DC id (negative =
 * media) → addresses. No `default` line, like alexbers (an unknown DC id is closed).
 *
 * @example Usage
 * ```ts
 * import { BUNDLED_PROXY_CONFIG } from "./telegram_config.ts";
 * BUNDLED_PROXY_CONFIG.dcs.get(2); // [{ host: "149.154.161.144", port: 8888 }]
 * ```
 */
export const BUNDLED_PROXY_CONFIG: ProxyConfig = Object.freeze({
  defaultDc: null,
  dcs: new Map<number, readonly HostPort[]>([
    [1, _at("149.154.175.50")],
    [-1, _at("149.154.175.50")],
    [2, _at("149.154.161.144")],
    [-2, _at("149.154.161.144")],
    [3, _at("149.154.175.100")],
    [-3, _at("149.154.175.100")],
    [4, _at("91.108.4.136")],
    [-4, _at("149.154.165.109")],
    [5, _at("91.108.56.183")],
    [-5, _at("91.108.56.183")],
  ]),
});
