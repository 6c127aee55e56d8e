/**
 * Helpers shared by the bench processes: reading another process's CPU time and memory from
 * /proc, socket write/close helpers, and the rule that a helper process exits once its parent
 * goes away (its stdin reaches EOF), so a crashed bench leaves nothing running.
 *
 * @module
 */

import { closeQuietly, writeAll } from "../lib/net.ts";

export { closeQuietly, writeAll };

/** Clock ticks per second of /proc/<pid>/stat times (`getconf CLK_TCK`; 100 on Linux). */
export const CLOCK_TICKS_PER_SECOND = 100;

/** User + system CPU seconds used so far by every thread of process `pid`. */
export function cpuSeconds(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  // The command name (field 2) may hold spaces and parentheses: split after the last ")".
  const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
  return (Number(rest[11]) + Number(rest[12])) / CLOCK_TICKS_PER_SECOND;
}

/** Resident memory of a process, in bytes, split the way /proc/<pid>/status reports it. */
export interface MemoryInfo {
  /** VmRSS: everything resident. */
  rss: number;
  /** RssAnon: heap, stacks, buffers (what grows with connections). */
  anon: number;
  /** RssFile: mapped files (the deno binary, shared libraries). */
  file: number;
}

/** Resident memory of process `pid`. */
export function memoryInfo(pid: number): MemoryInfo {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const kib = (key: string) => {
    const m = status.match(new RegExp(`^${key}:\\s+(\\d+) kB`, "m"));
    return m ? Number(m[1]) * 1024 : 0;
  };
  return { rss: kib("VmRSS"), anon: kib("RssAnon"), file: kib("RssFile") };
}

/** A promise that resolves after `ms`. */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Exit this process when stdin reaches EOF: the bench keeps every helper's stdin open and
 * closes it (or dies, which closes it too) when the helper should go.
 */
export function exitWhenStdinCloses(): void {
  (async () => {
    const buf = new Uint8Array(256);
    try {
      while ((await Deno.stdin.read(buf)) !== null) {
        // Ignore input.
      }
    } catch {
      // Treat a broken stdin like EOF.
    }
    Deno.exit(0);
  })();
}

/** Parse a 32-hex-digit secret. */
export function parseHex(hex: string): Uint8Array {
  if (!/^(?:[0-9a-fA-F]{2})+$/.test(hex)) throw new RangeError(`Invalid hex: "${hex}"`);
  return Uint8Array.from(hex.match(/../g)!.map((h) => parseInt(h, 16)));
}

/** Parse a port number flag (0 allowed). */
export function parsePort(value: string | undefined, name: string): number {
  const port = Number(value);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new RangeError(`Invalid --${name}: "${value}"`);
  }
  return port;
}
