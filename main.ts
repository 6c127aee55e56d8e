/**
 * mtproxy, a Telegram MTProto proxy: the command-line entry point. Dispatches to one module
 * per subcommand in lib/cli/; no subcommand (or a first argument starting with "-") means
 * `run`.
 *
 * @module
 */
import { RUN_HELP, runCommand } from "./lib/cli/run.ts";
import { LINK_HELP, linkCommand } from "./lib/cli/link.ts";
import { SECRET_HELP, secretCommand } from "./lib/cli/secret.ts";
import { CHECK_CONFIG_HELP, checkConfigCommand } from "./lib/cli/check_config.ts";
import { PING_HELP, pingCommand } from "./lib/cli/ping.ts";
import { DOCTOR_HELP, doctorCommand } from "./lib/cli/doctor.ts";
import { reportError, UsageError } from "./lib/cli/options.ts";
import { suggest } from "./lib/config/load.ts";

/** The version `mtproxy --version` prints. */
import { VERSION } from "./lib/version.ts";

export { VERSION };

/** Overall help screen. */
export const HELP = `mtproxy ${VERSION} - Telegram MTProto proxy

Usage:
  mtproxy [run] [options]          run the proxy (the default command)
  mtproxy link [options]           print the proxy links of every listener
  mtproxy secret [--tls-domain D]  make a new random secret and print its forms
  mtproxy secret --front NAME      make a link secret for a front and a back (split mode)
  mtproxy check-config FILE        validate a configuration file
  mtproxy ping LINK                try a proxy link from this machine, DC by DC
  mtproxy doctor [--config FILE]   check this machine and configuration for the proxy
  mtproxy help [COMMAND]           show the help of a command

Options:
  -h, --help     show this help (after a command: that command's help)
      --version  print the version

Run "mtproxy COMMAND --help" for the options of a command.`;

const COMMANDS: Readonly<
  Record<string, { run: (args: string[]) => Promise<number>; help: string }>
> = {
  run: { run: runCommand, help: RUN_HELP },
  link: { run: linkCommand, help: LINK_HELP },
  secret: { run: secretCommand, help: SECRET_HELP },
  "check-config": { run: checkConfigCommand, help: CHECK_CONFIG_HELP },
  ping: { run: pingCommand, help: PING_HELP },
  doctor: { run: doctorCommand, help: DOCTOR_HELP },
};

/**
 * Run the command line `args` (without the program name) and resolve with the exit code.
 *
 * @example Usage
 * ```ts ignore
 * import { main } from "./main.ts";
 * await main(["secret"]); // prints a new secret, resolves with 0
 * ```
 */
export async function main(args: string[]): Promise<number> {
  const [first, ...rest] = args;
  if (first === "--help" || first === "-h") {
    console.log(HELP);
    return 0;
  }
  if (first === "--version") {
    console.log(`mtproxy ${VERSION}`);
    return 0;
  }
  if (first === "help") {
    const topic = rest[0];
    if (topic === undefined) {
      console.log(HELP);
      return 0;
    }
    const command = COMMANDS[topic];
    if (command) {
      console.log(command.help);
      return 0;
    }
    return reportError("", new UsageError(_unknownCommand(topic)));
  }
  if (first === undefined || first.startsWith("-")) return await runCommand(args);
  const command = Object.hasOwn(COMMANDS, first) ? COMMANDS[first] : undefined;
  if (!command) return reportError("", new UsageError(_unknownCommand(first)));
  return await command.run(rest);
}

function _unknownCommand(name: string): string {
  const close = suggest(name, Object.keys(COMMANDS));
  const hint = close === undefined ? "" : ` (did you mean ${JSON.stringify(close)}?)`;
  return `Unknown command ${JSON.stringify(name)}${hint}`;
}

if (import.meta.main) {
  let code: number;
  try {
    code = await main(Deno.args);
  } catch (e) {
    code = reportError("", e);
  }
  Deno.exit(code);
}
