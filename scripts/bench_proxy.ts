/**
 * The proxy started in-process (`startServer`) from the same YAML file the bench gives the CLI,
 * for memory introspection (`deno task bench --proxy inproc`): on SIGUSR1 it prints
 * `mem <json>` with `Deno.memoryUsage()` (V8 heap vs ArrayBuffers vs the rest of the RSS) and
 * the V8 heap spaces, again after a full GC when started with `--v8-flags=--expose-gc`.
 *
 * Usage: `deno run -A [--v8-flags=--expose-gc] scripts/bench_proxy.ts --config <file>`; prints
 * `listening <port>`, exits when stdin closes.
 *
 * @module
 */
import { parseArgs } from "node:util";
import v8 from "node:v8";
import { loadConfigFile } from "../lib/config/load.ts";
import { setupLogging } from "../lib/ops/log.ts";
import { startServer } from "../lib/server.ts";
import { exitWhenStdinCloses } from "./_bench_common.ts";

/** Deno.memoryUsage() plus the size and use of each non-empty V8 heap space. */
function _usage(): Record<string, unknown> {
  const spaces: Record<string, { size: number; used: number }> = {};
  for (const s of v8.getHeapSpaceStatistics()) {
    if (s.space_size > 0) spaces[s.space_name] = { size: s.space_size, used: s.space_used_size };
  }
  return { ...Deno.memoryUsage(), spaces };
}

/** Print `mem <json>`: memory figures now and, when gc is exposed, after a full GC. */
function _reportMemory(): void {
  const report: Record<string, unknown> = { before_gc: _usage() };
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc) {
    gc();
    report.after_gc = _usage();
  }
  console.log(`mem ${JSON.stringify(report)}`);
}

async function _main(): Promise<void> {
  const { values } = parseArgs({ args: Deno.args, options: { config: { type: "string" } } });
  if (!values.config) throw new Error("Missing --config");
  const config = await loadConfigFile(values.config);
  await setupLogging(config.logLevel);
  const server = await startServer(config);
  exitWhenStdinCloses();
  Deno.addSignalListener("SIGUSR1", _reportMemory);
  console.log(`listening ${server.addresses[0]!.port}`);
}

if (import.meta.main) await _main();
