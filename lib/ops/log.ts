/**
 * Logging on LogTape: one console sink writing one line per record to stderr (timestamp,
 * level, category, message with its properties filled in), so stdout stays free for links and
 * other command output. Every logger lives under the root category "mtproxy".
 *
 * @module
 */
import {
  configure,
  getConsoleSink,
  getLogger,
  getTextFormatter,
  type Logger,
  type LogLevel as LogTapeLevel,
  reset,
} from "@logtape/logtape";
import type { LogLevel } from "../config/types.ts";

/** The root category of every logger of the proxy. */
export const ROOT_CATEGORY = "mtproxy";

/** Options for {@linkcode setupLogging}. */
export interface LoggingOptions {
  /** Where finished lines go (tests capture them). @default a line to stderr via console.error */
  write?: (line: string) => void;
  /** Put after the level of every line, e.g. "w2" for a worker thread's records. */
  tag?: string;
}

const LEVELS: Readonly<Record<LogLevel, LogTapeLevel>> = {
  debug: "debug",
  info: "info",
  warning: "warning",
  error: "error",
};

/**
 * Route the proxy's log records at `level` and above to stderr, one line each:
 * `2026-01-01 12:00:00.000 +00 [INF] mtproxy.client: accepted 203.0.113.5:50000`. Replaces any
 * earlier setup, and keeps LogTape's own meta logger quiet below warnings.
 *
 * @example Usage
 * ```ts
 * import { logger, resetLogging, setupLogging } from "./log.ts";
 * await setupLogging("info", { write: () => {} });
 * logger("client").info("accepted {peer}", { peer: "203.0.113.5:50000" });
 * await resetLogging();
 * ```
 */
export async function setupLogging(level: LogLevel, options: LoggingOptions = {}): Promise<void> {
  const plain = getTextFormatter({
    timestamp: "date-time-tz",
    level: "ABBR",
    category: ".",
    value: "bare",
    // Peers and SNIs are attacker-chosen: keep every record on one line, free of escapes.
    sanitize: { sgr: "escape", newlines: "escape" },
  });
  const tag = options.tag;
  const formatter: typeof plain = tag === undefined
    ? plain
    : (record) => plain(record).replace("] ", `] ${tag} `);
  const write = options.write;
  const sink = write
    ? (record: Parameters<typeof formatter>[0]) => write(formatter(record).replace(/\r?\n$/, ""))
    : getConsoleSink({
      formatter,
      levelMap: {
        trace: "error",
        debug: "error",
        info: "error",
        warning: "error",
        error: "error",
        fatal: "error",
      },
    });
  await configure({
    reset: true,
    sinks: { console: sink },
    loggers: [
      { category: [ROOT_CATEGORY], sinks: ["console"], lowestLevel: LEVELS[level] },
      { category: ["logtape", "meta"], sinks: ["console"], lowestLevel: "warning" },
    ],
  });
}

/**
 * Undo {@linkcode setupLogging}: loggers drop records again. Tests call it when done.
 *
 * @example Usage
 * ```ts
 * import { resetLogging } from "./log.ts";
 * await resetLogging();
 * ```
 */
export async function resetLogging(): Promise<void> {
  await reset();
}

/**
 * The logger for a part of the proxy, under the "mtproxy" root category. Records are dropped
 * until {@linkcode setupLogging} runs.
 *
 * @example Usage
 * ```ts
 * import { logger } from "./log.ts";
 * const peer = "203.0.113.5:50000";
 * logger("client").info("accepted {peer}", { peer });
 * ```
 */
export function logger(...category: string[]): Logger {
  return getLogger([ROOT_CATEGORY, ...category]);
}
