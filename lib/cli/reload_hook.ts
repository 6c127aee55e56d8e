/**
 * The one way to reload a running proxy's configuration from inside the process: SIGHUP and
 * the admin API both call {@linkcode reload}, which runs what `mtproxy run` registered.
 *
 * @module
 */

import type { ReloadReport } from "../config/reload.ts";

export type { ReloadReport };

let handler: (() => Promise<ReloadReport>) | null = null;

/**
 * Register what {@linkcode reload} runs (`mtproxy run` does, once it serves); null: none.
 *
 * @example Usage
 * ```ts
 * import { reload, setReloadHandler } from "./reload_hook.ts";
 * setReloadHandler(() => Promise.resolve({ ok: true, changed: [], notLive: [], closed: 0 }));
 * (await reload()).ok; // true
 * setReloadHandler(null);
 * ```
 */
export function setReloadHandler(run: (() => Promise<ReloadReport>) | null): void {
  handler = run;
}

/**
 * Reload the whole configuration, as SIGHUP does: read the file again and apply what can change
 * live. Reloads run one at a time. Never rejects.
 *
 * @example Usage
 * ```ts
 * import { reload } from "./reload_hook.ts";
 * const report = await reload();
 * report.ok; // false: no proxy runs in this process
 * ```
 */
export function reload(): Promise<ReloadReport> {
  if (handler === null) {
    return Promise.resolve({
      ok: false,
      error: "No proxy is running in this process",
      changed: [],
      notLive: [],
      closed: 0,
    });
  }
  return handler();
}
