/**
 * `mtproxy check-config FILE`: validate a configuration file and list every problem.
 *
 * @module
 */
import { type ConfigDraft, ConfigError, readConfigFile } from "../config/load.ts";
import { formatAddress } from "./link.ts";
import { buildDraftWithUsers, parseCommandArgs, reportError, UsageError } from "./options.ts";

/** Help screen of `mtproxy check-config`. */
export const CHECK_CONFIG_HELP = `Usage: mtproxy check-config [--role ROLE] FILE

Validate a YAML configuration file. Prints "Configuration OK: N listeners" (for a
split pair: the role, and the backs of a front or the link listeners and fronts
of a back) and exits with 0, or prints every problem (one per line: key path and
reason) and exits with 1. Listeners without a secret are fine: "mtproxy run"
takes theirs from the state file. The users file is checked with it (users_file,
or mtproxy-users.yaml beside the state file; not for a back). Environment
variables are not read.

Options:
      --role ROLE   check the file as this role (standalone, front or back)
                    instead of its own role key, like "run --role"
  -h, --help        show this help`;

const OPTIONS = {
  role: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

/**
 * The line `check-config` prints for a valid draft: the listener count for a standalone
 * proxy; the role and its other side for a front (backs' addresses) or a back (link listeners'
 * and fronts' names). Never a secret.
 *
 * @example Usage
 * ```ts
 * import { summarizeConfig } from "./check_config.ts";
 * import { buildConfigDraft } from "../config/load.ts";
 * summarizeConfig(buildConfigDraft({ listeners: [{ port: 443 }, { port: 444 }] })); // "Configuration OK: 2 listeners"
 * ```
 */
export function summarizeConfig(draft: ConfigDraft): string {
  const count = (n: number, one: string, many: string) => `${n} ${n === 1 ? one : many}`;
  const listeners = count(draft.listeners.length, "listener", "listeners");
  switch (draft.role) {
    case "standalone":
      return `Configuration OK: ${listeners}`;
    case "front": {
      const backs = draft.backs.map((b) => formatAddress(b.address.host, b.address.port));
      return `Configuration OK: role front, ${listeners}, ${
        count(backs.length, "back", "backs")
      } (${backs.join(", ")})`;
    }
    case "back": {
      const links = draft.linkListeners.map((l) => l.name);
      const fronts = draft.fronts.map((f) => f.name);
      return `Configuration OK: role back, ${
        count(links.length, "link listener", "link listeners")
      } (${links.join(", ")}), ${count(fronts.length, "front", "fronts")} (${fronts.join(", ")})`;
    }
  }
}

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
      const { draft } = await buildDraftWithUsers(await readConfigFile(path), {
        build: {
          overrides: values.role === undefined ? {} : {
            role: { value: values.role, source: "--role" },
          },
        },
        configPath: path,
      });
      for (const w of draft.warnings) console.error(`Warning: ${w}`);
      console.log(summarizeConfig(draft));
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
