/**
 * `mtproxy check-config FILE`: validate a configuration file and list every problem.
 *
 * @module
 */
import { ConfigError, loadConfigDraftFile } from "../config/load.ts";
import { parseCommandArgs, reportError, UsageError } from "./options.ts";

/** Help screen of `mtproxy check-config`. */
export const CHECK_CONFIG_HELP = `Usage: mtproxy check-config FILE

Validate a YAML configuration file. Prints "Configuration OK: N listeners" and exits
with 0, or prints every problem (one per line: key path and reason) and exits with 1.
Listeners without a secret are fine: "mtproxy run" takes theirs from the state file.

Options:
  -h, --help   show this help`;

const OPTIONS = { help: { type: "boolean", short: "h" } } as const;

/**
 * Run `mtproxy check-config`; returns the exit code.
 *
 * @example Usage
 * ```ts ignore
 * import { checkConfigCommand } from "./check_config.ts";
 * Deno.exit(await checkConfigCommand(["config.yaml"]));
 * ```
 */
export async function checkConfigCommand(args: string[]): Promise<number> {
  try {
    const { values, positionals } = parseCommandArgs(args, OPTIONS, { allowPositionals: true });
    if (values.help) {
      console.log(CHECK_CONFIG_HELP);
      return 0;
    }
    if (positionals.length !== 1) {
      throw new UsageError(
        positionals.length === 0
          ? "Missing the configuration file to check"
          : `Expected one configuration file: got ${positionals.length}`,
      );
    }
    const path = positionals[0]!;
    try {
      const draft = await loadConfigDraftFile(path);
      for (const w of draft.warnings) console.error(`Warning: ${w}`);
      const n = draft.listeners.length;
      console.log(`Configuration OK: ${n} ${n === 1 ? "listener" : "listeners"}`);
      return 0;
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      const n = e.problems.length;
      console.error(`${path}: ${n} ${n === 1 ? "problem" : "problems"}`);
      for (const p of e.problems) console.error(p);
      return 1;
    }
  } catch (e) {
    return reportError("check-config", e);
  }
}
