/**
 * The last resort against one bug taking every client down: Deno ends the process on an
 * unhandled promise rejection or an uncaught exception, unless a listener on `globalThis`
 * cancels the event. {@linkcode installLastResort} adds such listeners, which log and count
 * what they catch and keep the process serving.
 *
 * Code that contains an unexpected exception itself (closing one client, or one stream of a
 * shared connection) reports it with {@linkcode reportUnexpected}, so that it is logged and
 * counted the same way.
 *
 * @module
 */

/** Options for {@linkcode installLastResort}. */
export interface LastResortOptions {
  /** Describe one caught error: `message` says where it was caught, `error` is what was thrown. */
  log(message: string, error: unknown): void;
  /** Called once per caught or reported error (the caller counts them). */
  onCaught(): void;
}

const _installed = new Set<LastResortOptions>();

/**
 * Catch unhandled rejections and uncaught exceptions process-wide: log, count, keep serving.
 * Returns the function that removes the listeners again. Errors given to
 * {@linkcode reportUnexpected} go to every installed handler.
 *
 * @example Usage
 * ```ts
 * import { installLastResort } from "./last_resort.ts";
 * let caught = 0;
 * const uninstall = installLastResort({
 *   log: (message, error) => console.error(message, error),
 *   onCaught: () => caught++,
 * });
 * uninstall();
 * ```
 */
export function installLastResort(options: LastResortOptions): () => void {
  // Separate objects per call: installing twice adds two handlers, each removed by its own
  // uninstall.
  const handler: LastResortOptions = { log: options.log, onCaught: options.onCaught };
  const onRejection = (e: PromiseRejectionEvent) => {
    e.preventDefault();
    _tell(handler, "Unhandled promise rejection", e.reason);
  };
  const onError = (e: ErrorEvent) => {
    e.preventDefault();
    _tell(handler, "Uncaught exception", e.error ?? e.message);
  };
  globalThis.addEventListener("unhandledrejection", onRejection);
  globalThis.addEventListener("error", onError);
  _installed.add(handler);
  return () => {
    if (!_installed.delete(handler)) return;
    globalThis.removeEventListener("unhandledrejection", onRejection);
    globalThis.removeEventListener("error", onError);
  };
}

/**
 * Report an exception that should never happen and that the caller contained (it closed one
 * client, say): `where` names what was closed. Goes to every installed handler; without one, to
 * `console.error`. Never throws.
 *
 * @example Usage
 * ```ts
 * import { reportUnexpected } from "./last_resort.ts";
 * try {
 *   JSON.parse("{");
 * } catch (e) {
 *   reportUnexpected("client 203.0.113.5:50000 closed", e);
 * }
 * ```
 */
export function reportUnexpected(where: string, error: unknown): void {
  if (_installed.size === 0) {
    try {
      console.error(`${where}: unexpected error: ${describeError(error)}`);
    } catch {
      // Nowhere left to say it.
    }
    return;
  }
  for (const h of _installed) _tell(h, where, error);
}

/**
 * An error's stack (which starts with its message) when it has one, else its text.
 *
 * @example Usage
 * ```ts
 * import { describeError } from "./last_resort.ts";
 * describeError("oops"); // "oops"
 * ```
 */
export function describeError(error: unknown): string {
  if (error instanceof Error) return error.stack ?? `${error.name}: ${error.message}`;
  try {
    return String(error);
  } catch {
    return "(an error that cannot be shown)";
  }
}

function _tell(handler: LastResortOptions, message: string, error: unknown): void {
  try {
    handler.onCaught();
  } catch {
    // A broken counter must not stop the log line.
  }
  try {
    handler.log(message, error);
  } catch {
    // The last resort itself must never throw.
  }
}
