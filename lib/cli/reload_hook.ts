/**
 * The one way to reload a running proxy's configuration from inside the process: SIGHUP and
 * the admin API both call {@linkcode reload}, which runs what `mtproxy run` registered.
 *
 * @module
 */

/** What a reload did. */
export interface ReloadReport {
  /** False when the file could not be read or validated (or a listener bound): nothing changed. */
  readonly ok: boolean;
  /** Why it failed (never a secret). */
  readonly error?: string;
  /** YAML paths of what changed live, e.g. `timeouts.idle`, `users.bob (removed)`. */
  readonly changed: readonly string[];
  /** YAML paths that changed in the file but need a restart: their running values stay. */
  readonly notLive: readonly string[];
  /** Clients (and a back's front links) the new configuration refused and that were closed. */
  readonly closed: number;
}

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
