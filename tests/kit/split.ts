/**
 * Configs for split-mode tests run in-process: a back with one link listener that knows one
 * front ("home", {@linkcode LINK_SECRET}), and a front with one back of two links.
 *
 * @module
 */
import type { Config } from "../../lib/config/types.ts";
import { testConfig } from "../helpers.ts";

/** The ad tag a front's clients carry. */
export const AD_TAG: Uint8Array = Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i);
/** The link secret of the back's front "home". */
export const LINK_SECRET: Uint8Array = Uint8Array.from({ length: 16 }, (_, i) => 0x10 + i);
/** Link settings short enough for tests. */
export const LINK: Config["link"] = {
  windowBytes: 256 * 1024,
  keepaliveMs: 1000,
  timeoutMs: 5000,
  waitMs: 2000,
};

/** A back serving telegram through `proxyUrls`, with one link listener on a free port. */
export function backConfig(proxyUrls: { secret: string; config: string }): Config {
  const base = testConfig({ proxyUrls, externalIp: "127.0.0.1", telegramMode: "auto" });
  return {
    ...base,
    role: "back",
    listeners: [],
    linkListeners: [{ name: "link1", host: "127.0.0.1", port: 0, tlsDomains: ["example.com"] }],
    fronts: [{ name: "home", secret: LINK_SECRET }],
    defaultTag: null,
    link: LINK,
  };
}

/** A front with two links to the back on 127.0.0.1:`backPort`, signed with `secret`. */
export function frontConfig(backPort: number, secret: Uint8Array = LINK_SECRET): Config {
  const base = testConfig({ tag: AD_TAG });
  return {
    ...base,
    role: "front",
    backs: [{
      address: { host: "127.0.0.1", port: backPort },
      secret,
      tlsDomain: "example.com",
      links: 2,
    }],
    link: LINK,
  };
}

/** A back in direct mode whose DC 2 is a fake DC on `dcPort`. */
export function directBack(dcPort: number): Config {
  return {
    ...backConfig({ secret: "http://127.0.0.1:9/s", config: "http://127.0.0.1:9/c" }),
    telegram: { ...testConfig({ dcPorts: { 2: dcPort } }).telegram, mode: "direct" },
  };
}
