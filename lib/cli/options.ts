/**
 * The option set shared by `run` and `link` (flags and `MTP_*` environment variables), how
 * they become a {@linkcode Config}, and the error reporting every subcommand uses.
 *
 * Precedence: flags > environment > config file > defaults. `--port`, `--host`, `--secret` and
 * `--tls-domain` apply to the first listener (created when the file has none); `--allow`
 * replaces the allowed protocols everywhere; `--role` replaces the file's `role`.
 *
 * @module
 */
import { resolve } from "node:path";
import { parseArgs, type ParseArgsOptionsConfig } from "node:util";
import type { Config } from "../config/types.ts";
import {
  buildConfigDraft,
  type BuildConfigOptions,
  type ConfigDraft,
  ConfigError,
  type ConfigOverride,
  type ConfigOverrides,
  type FileUsers,
  readConfigFile,
  resolveSecrets,
  suggest,
} from "../config/load.ts";
import { readUsersFile, resolveUsersFilePath } from "../config/users_file.ts";
import {
  loadOrCreateState,
  readState,
  resolveStatePath,
  STATE_FILE_ENV,
  StateFileError,
} from "../config/state.ts";

/** A command line that cannot be understood; commands exit with code 2 for it. */
export class UsageError extends Error {
  /** Create the error with its one-line message. */
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** The flags of `run` and `link`. */
export const RUN_OPTIONS = {
  config: { type: "string" },
  role: { type: "string" },
  workers: { type: "string" },
  port: { type: "string", short: "p" },
  host: { type: "string" },
  secret: { type: "string", short: "s" },
  tag: { type: "string", short: "t" },
  allow: { type: "string", short: "a", multiple: true },
  "tls-domain": { type: "string", short: "d", multiple: true },
  "public-host": { type: "string" },
  "log-level": { type: "string" },
  metrics: { type: "string" },
  help: { type: "boolean", short: "h" },
} as const satisfies ParseArgsOptionsConfig;

/** The flags of `run` alone: whether it prints the links at start. */
export const RUN_LINK_OPTIONS = {
  "print-links": { type: "boolean" },
  "quiet-links": { type: "boolean" },
} as const satisfies ParseArgsOptionsConfig;

/** Help text for {@linkcode RUN_LINK_OPTIONS}, for the `run` help screen. */
export const RUN_LINK_OPTIONS_HELP =
  `Links at start (they hold the secret, so by default only a terminal gets them):
      --print-links        print them even when stdout is not a terminal (a
                           service's stdout goes to its journal)  [MTP_LINKS=print]
      --quiet-links        never print them; "mtproxy link" does  [MTP_LINKS=quiet]`;

/** The flags of `link` alone that draw QR codes. */
export const LINK_QR_OPTIONS = {
  qr: { type: "boolean" },
  "no-qr": { type: "boolean" },
  "qr-png": { type: "string" },
  "qr-svg": { type: "string" },
} as const satisfies ParseArgsOptionsConfig;

/** Help text for {@linkcode LINK_QR_OPTIONS}, for the `link` help screen. */
export const LINK_QR_OPTIONS_HELP =
  `      --qr                 draw a QR code under each protocol's links (the
                           default when stdout is a terminal)
      --no-qr              do not draw them, even in a terminal
      --qr-png DIR         write them as PNG files to DIR, one per listener and
                           protocol: LISTENER-PROTOCOL.png (mode 0600)
      --qr-svg DIR         the same as SVG files: LISTENER-PROTOCOL.svg
A code holds the https://t.me link (a phone's camera opens it in Telegram), for
fake-TLS its hex form; a per-SNI user's file is LISTENER-tls-SNI.png.`;

/** How `run` prints the links at start, and why. */
export interface LinkPrinting {
  /** True to print the links on stdout. */
  readonly print: boolean;
  /** Why the links are not printed (for the line that says so); "" when they are. */
  readonly why: string;
}

/**
 * Whether `run` prints the links at start: `--print-links` or `--quiet-links`, else
 * `MTP_LINKS` (`print`, `quiet` or `auto`), else only when stdout is a terminal, since a
 * link holds the secret and a service's stdout is kept in its journal. Throws
 * {@linkcode UsageError} for both flags at once or a bad `MTP_LINKS`.
 *
 * @example Usage
 * ```ts
 * import { linkPrinting } from "./options.ts";
 * linkPrinting({}, {}, false).print; // false: not a terminal
 * linkPrinting({ "print-links": true }, {}, false).print; // true
 * ```
 */
export function linkPrinting(
  values: { readonly "print-links"?: boolean; readonly "quiet-links"?: boolean },
  env: Env,
  isTerminal: boolean,
): LinkPrinting {
  if (values["print-links"] && values["quiet-links"]) {
    throw new UsageError("--print-links and --quiet-links cannot be used together");
  }
  if (values["print-links"]) return { print: true, why: "" };
  if (values["quiet-links"]) return { print: false, why: "--quiet-links" };
  const mode = env[ENV.links]?.trim().toLowerCase() || "auto";
  if (mode === "print") return { print: true, why: "" };
  if (mode === "quiet") return { print: false, why: `${ENV.links}=quiet` };
  if (mode !== "auto") {
    throw new UsageError(
      `${ENV.links} must be print, quiet or auto: got ${JSON.stringify(env[ENV.links])}`,
    );
  }
  return isTerminal ? { print: true, why: "" } : {
    print: false,
    why: `stdout is not a terminal; --print-links or ${ENV.links}=print prints them here`,
  };
}

/** Environment variables read by `run` and `link`. */
export const ENV = {
  config: "MTP_CONFIG",
  role: "MTP_ROLE",
  workers: "MTP_WORKERS",
  port: "MTP_PORT",
  host: "MTP_HOST",
  secret: "MTP_SECRET",
  tag: "MTP_TAG",
  allow: "MTP_ALLOW",
  tlsDomain: "MTP_TLS_DOMAIN",
  publicHost: "MTP_PUBLIC_HOST",
  logLevel: "MTP_LOG_LEVEL",
  metrics: "MTP_METRICS",
  links: "MTP_LINKS",
  stateFile: STATE_FILE_ENV,
} as const;

/** Help text for the shared options, for the `run` and `link` help screens. */
export const RUN_OPTIONS_HELP =
  `Options (each has an environment variable; flags win over it, it wins over the file):
      --config FILE        YAML configuration file                            [MTP_CONFIG]
      --role ROLE          standalone, front (client side of a split pair) or
                           back (Telegram side); replaces the file's role     [MTP_ROLE]
      --workers N          worker threads on the same ports: auto (one per
                           CPU, the default) or a number; 1 = one event loop  [MTP_WORKERS]
  -p, --port PORT          port of the first listener (default 1443)          [MTP_PORT]
      --host ADDR          bind address of the first listener (default 0.0.0.0) [MTP_HOST]
  -s, --secret SECRET      secret of the first listener: 32 hex digits, or a
                           dd/ee form (only its key is used)                  [MTP_SECRET]
  -t, --tag TAG            promotion tag of the first listener (32 hex digits
                           from @MTProxybot): its clients use middle proxies  [MTP_TAG]
  -a, --allow PROTO        allowed protocol: tls, dd or plain; repeat or use
                           commas (tls,dd); replaces every allowed list       [MTP_ALLOW]
  -d, --tls-domain NAME    fake-TLS domain of the first listener; repeatable  [MTP_TLS_DOMAIN]
      --public-host HOST   host name or IP address put in links               [MTP_PUBLIC_HOST]
      --log-level LEVEL    debug, info, warning or error                      [MTP_LOG_LEVEL]
      --metrics IP:PORT    serve Prometheus metrics at http://IP:PORT/metrics
                           (keep it on 127.0.0.1)                             [MTP_METRICS]
  -h, --help               show this help

Listeners without a secret share a random one kept in the state file:
$MTP_STATE_FILE, else state_file from the config, else mtproxy-state.json next to
the config file (or in the working directory).`;

/** The parsed flags of `run` and `link`. */
export interface RunArgs {
  readonly help: boolean;
  readonly config?: string;
  readonly role?: string;
  readonly workers?: string;
  readonly port?: string;
  readonly host?: string;
  readonly secret?: string;
  readonly tag?: string;
  readonly allow: readonly string[];
  readonly tlsDomains: readonly string[];
  readonly publicHost?: string;
  readonly logLevel?: string;
  readonly metrics?: string;
}

/** The flag values and positional arguments of a command line. */
export interface ParsedCommandArgs<T extends ParseArgsOptionsConfig> {
  readonly values: ReturnType<typeof parseArgs<{ options: T; strict: true }>>["values"];
  readonly positionals: string[];
}

/**
 * Parse `args` with `node:util` parseArgs in strict mode, turning its errors into a
 * {@linkcode UsageError} with a one-line message (and a "did you mean" for a mistyped flag).
 *
 * @example Usage
 * ```ts
 * import { parseCommandArgs } from "./options.ts";
 * const { values } = parseCommandArgs(["--tls-domain", "a.example"], {
 *   "tls-domain": { type: "string" },
 * });
 * values["tls-domain"]; // "a.example"
 * ```
 */
export function parseCommandArgs<T extends ParseArgsOptionsConfig>(
  args: readonly string[],
  options: T,
  config: { allowPositionals?: boolean } = {},
): ParsedCommandArgs<T> {
  try {
    return parseArgs({
      args: [...args],
      options,
      strict: true,
      allowPositionals: config.allowPositionals ?? false,
    }) as ParsedCommandArgs<T>;
  } catch (e) {
    throw new UsageError(_usageMessage(e, options));
  }
}

function _usageMessage(e: unknown, options: ParseArgsOptionsConfig): string {
  const code = (e as { code?: string }).code;
  const message = e instanceof Error ? e.message : String(e);
  const quoted = /'([^']*)'/.exec(message)?.[1];
  if (code === "ERR_PARSE_ARGS_UNKNOWN_OPTION" && quoted !== undefined) {
    const flags = Object.entries(options).flatMap(([long, o]) => [
      `--${long}`,
      ...(o.short ? [`-${o.short}`] : []),
    ]);
    const name = quoted.split("=")[0]!;
    const close = name.startsWith("--") ? suggest(name, flags) : undefined;
    const hint = close === undefined ? "" : ` (did you mean ${JSON.stringify(close)}?)`;
    return `Unknown option ${JSON.stringify(quoted)}${hint}`;
  }
  if (code === "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL" && quoted !== undefined) {
    return `Unexpected argument ${JSON.stringify(quoted)}`;
  }
  if (code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE" && quoted !== undefined) {
    if (message.includes("does not take an argument")) {
      return `Option ${JSON.stringify(quoted)} does not take a value`;
    }
    return `Option ${JSON.stringify(quoted.replace(/ <value>$/, ""))} needs a value`;
  }
  return message.split("\n")[0]!.replace(/\.$/, "");
}

/**
 * Parse the shared flags of `run` and `link`. Throws {@linkcode UsageError}.
 *
 * @example Usage
 * ```ts
 * import { parseRunArgs } from "./options.ts";
 * parseRunArgs(["-p", "443", "-a", "tls,dd"]).allow; // ["tls,dd"]
 * ```
 */
export function parseRunArgs(args: readonly string[]): RunArgs {
  return runArgsFromValues(parseCommandArgs(args, RUN_OPTIONS).values);
}

/** The {@linkcode RunArgs} in values parsed with (a superset of) {@linkcode RUN_OPTIONS}. */
export function runArgsFromValues(v: ParsedCommandArgs<typeof RUN_OPTIONS>["values"]): RunArgs {
  return {
    help: v.help ?? false,
    ...(v.config !== undefined && { config: v.config }),
    ...(v.role !== undefined && { role: v.role }),
    ...(v.workers !== undefined && { workers: v.workers }),
    ...(v.port !== undefined && { port: v.port }),
    ...(v.host !== undefined && { host: v.host }),
    ...(v.secret !== undefined && { secret: v.secret }),
    ...(v.tag !== undefined && { tag: v.tag }),
    allow: v.allow ?? [],
    tlsDomains: v["tls-domain"] ?? [],
    ...(v["public-host"] !== undefined && { publicHost: v["public-host"] }),
    ...(v["log-level"] !== undefined && { logLevel: v["log-level"] }),
    ...(v.metrics !== undefined && { metrics: v.metrics }),
  };
}

/** Environment variables as a plain record (`Deno.env.toObject()`). */
export type Env = Readonly<Record<string, string | undefined>>;

/** Options for {@linkcode resolveRunConfig}. */
export interface ResolveRunOptions {
  /** Make and save a secret when a listener needs one and there is no state file. @default false */
  createState?: boolean;
  /** Directory that relative paths start from. @default Deno.cwd() */
  cwd?: string;
  /** The users file's users to check instead of the file's (the admin API's next version). */
  fileUsers?: FileUsers;
}

/** The configuration `run` and `link` work with, and where it came from. */
export interface ResolvedRunConfig {
  readonly config: Config;
  /** The config file used, or null. */
  readonly configPath: string | null;
  /** The state file location (used only when `stateUsed`). */
  readonly statePath: string;
  /** The users file location (read when it exists; not on a back). */
  readonly usersPath: string;
  /** True when some listener takes its secret from the state file. */
  readonly stateUsed: boolean;
  /** True when this call made the state file. */
  readonly stateCreated: boolean;
  /** Configuration warnings, as "key.path: reason". */
  readonly warnings: readonly string[];
}

/**
 * Build the configuration of `run`/`link`: defaults <- config file (`--config` or
 * `MTP_CONFIG`) <- environment <- flags, with missing secrets taken from the state file (made
 * when `options.createState`). Throws {@linkcode UsageError}, {@linkcode ConfigError} or
 * {@linkcode StateFileError}.
 *
 * @example Usage
 * ```ts ignore
 * import { resolveRunConfig } from "./options.ts";
 * const { config, statePath } = await resolveRunConfig(["-p", "443"], Deno.env.toObject());
 * ```
 */
export async function resolveRunConfig(
  args: readonly string[] | RunArgs,
  env: Env,
  options: ResolveRunOptions = {},
): Promise<ResolvedRunConfig> {
  const a = _isRunArgs(args) ? args : parseRunArgs(args);
  const e = (name: string) => {
    const v = env[name]?.trim();
    return v ? v : undefined;
  };
  const cwd = options.cwd ?? Deno.cwd();
  const pick = <T>(flag: string, flagValue: T | undefined, envName: string, envValue?: T) =>
    flagValue !== undefined
      ? { value: flagValue, source: flag }
      : envValue !== undefined
      ? { value: envValue, source: envName }
      : undefined;
  const list = (values: readonly string[]) =>
    values.flatMap((v) => v.split(",")).map((v) => v.trim()).filter((v) => v !== "");
  const listOrUndefined = (values: readonly string[]) =>
    values.length > 0 ? list(values) : undefined;
  const envList = (name: string) => {
    const v = e(name);
    return v === undefined ? undefined : list([v]);
  };

  const overrides: Record<string, ConfigOverride<unknown> | undefined> = {
    role: pick("--role", a.role, ENV.role, e(ENV.role)),
    workers: pick("--workers", a.workers, ENV.workers, e(ENV.workers)),
    host: pick("--host", a.host, ENV.host, e(ENV.host)),
    port: pick("--port", a.port, ENV.port, e(ENV.port)),
    secret: pick("--secret", a.secret, ENV.secret, e(ENV.secret)),
    tag: pick("--tag", a.tag, ENV.tag, e(ENV.tag)),
    tlsDomains: pick(
      "--tls-domain",
      listOrUndefined(a.tlsDomains),
      ENV.tlsDomain,
      envList(ENV.tlsDomain),
    ),
    allowedProtocols: pick("--allow", listOrUndefined(a.allow), ENV.allow, envList(ENV.allow)),
    publicHost: pick("--public-host", a.publicHost, ENV.publicHost, e(ENV.publicHost)),
    logLevel: pick("--log-level", a.logLevel, ENV.logLevel, e(ENV.logLevel)),
    metricsListen: pick("--metrics", a.metrics, ENV.metrics, e(ENV.metrics)),
  };
  for (const key of Object.keys(overrides)) {
    if (overrides[key] === undefined) delete overrides[key];
  }
  const buildOptions = { overrides: overrides as ConfigOverrides };

  const configPath = a.config ?? e(ENV.config) ?? null;
  const raw = configPath === null ? null : await readConfigFile(
    options.cwd === undefined ? configPath : resolve(options.cwd, configPath),
  );
  const { draft, statePath, usersPath } = await buildDraftWithUsers(raw, {
    build: buildOptions,
    env,
    configPath,
    cwd,
    ...(options.fileUsers && { fileUsers: options.fileUsers }),
  });
  const missing = draft.listeners.filter((l) => l.secret === null);
  let stateSecret: Uint8Array | null = null;
  let stateCreated = false;
  if (missing.length > 0) {
    if (options.createState) {
      const loaded = await loadOrCreateState(statePath);
      stateSecret = loaded.state.secret;
      stateCreated = loaded.created;
    } else {
      const state = await readState(statePath);
      if (state === null) {
        const names = missing.map((l) => JSON.stringify(l.name)).join(", ");
        throw new StateFileError(
          statePath,
          `No secret yet for listener ${names}: the state file ${
            JSON.stringify(statePath)
          } does not exist; start the proxy once ("mtproxy run" makes it), pass --secret, or set ${ENV.stateFile} to the file the proxy uses`,
        );
      }
      stateSecret = state.secret;
    }
  }
  return {
    config: resolveSecrets(draft, stateSecret),
    configPath,
    statePath,
    usersPath,
    stateUsed: missing.length > 0,
    stateCreated,
    warnings: draft.warnings,
  };
}

/** Options of {@linkcode buildDraftWithUsers}. */
export interface DraftWithUsersOptions {
  /** As for {@linkcode buildConfigDraft}. @default {} */
  build?: BuildConfigOptions;
  /** Environment (`MTP_STATE_FILE`). @default {} */
  env?: Env;
  /** The config file, as given (relative paths in it are relative to its directory). */
  configPath: string | null;
  /** Directory for relative paths. @default Deno.cwd() */
  cwd?: string;
  /** The users file's users to use instead of reading the file (the admin API's next version). */
  fileUsers?: FileUsers;
}

/** What {@linkcode buildDraftWithUsers} built, and where the state and users files are. */
export interface DraftWithUsers {
  readonly draft: ConfigDraft;
  readonly statePath: string;
  readonly usersPath: string;
}

/**
 * The draft of a config file's contents with the users file's users joined to its `users`, as
 * `run`, `link` and `check-config` build it. The users file is found from the draft's
 * `state_file`, `users_file` and `role`; when the config file alone does not validate (a
 * listener's `users` may name a user of the users file) from those keys as written, so that
 * the users file is read all the same. A back reads none. Throws one {@linkcode ConfigError}
 * with the problems of both files.
 *
 * @example Usage
 * ```ts ignore
 * import { buildDraftWithUsers } from "./options.ts";
 * const raw = await readConfigFile("/etc/mtproxy/config.yaml");
 * const { draft, usersPath } = await buildDraftWithUsers(raw, { configPath: "/etc/mtproxy/config.yaml" });
 * ```
 */
export async function buildDraftWithUsers(
  raw: unknown,
  options: DraftWithUsersOptions,
): Promise<DraftWithUsers> {
  const build = options.build ?? {};
  const { configPath } = options;
  const cwd = options.cwd ?? Deno.cwd();
  let draft: ConfigDraft | null = null;
  let problems: readonly string[] = [];
  try {
    draft = buildConfigDraft(raw, build);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    problems = e.problems;
  }
  const keys = draft ?? _rawFileKeys(raw, build.overrides?.role?.value);
  const env = options.env ?? {};
  const statePath = resolveStatePath({ env, stateFile: keys.stateFile, configPath, cwd });
  const usersPath = resolveUsersFilePath({ usersFile: keys.usersFile, statePath, configPath, cwd });
  if (keys.role !== "back") {
    let fileUsers: FileUsers | null = options.fileUsers ?? null;
    let unreadable: readonly string[] = [];
    if (options.fileUsers === undefined) {
      try {
        fileUsers = await readUsersFile(usersPath);
      } catch (e) {
        if (!(e instanceof ConfigError)) throw e;
        unreadable = e.problems;
      }
    }
    if (fileUsers !== null) {
      // Both files together: these problems are all there are.
      try {
        draft = buildConfigDraft(raw, { ...build, fileUsers });
        problems = [];
      } catch (e) {
        if (!(e instanceof ConfigError)) throw e;
        draft = null;
        problems = e.problems;
      }
    }
    problems = [...problems, ...unreadable];
  }
  if (draft === null || problems.length > 0) throw new ConfigError([...problems]);
  return { draft, statePath, usersPath };
}

/** `role`, `state_file` and `users_file` as a file that does not validate writes them. */
function _rawFileKeys(
  raw: unknown,
  role: string | undefined,
): { role: unknown; stateFile: string | null; usersFile: string | null } {
  const r = typeof raw === "object" && raw !== null ? raw as Record<string, unknown> : {};
  const text = (v: unknown) => typeof v === "string" && v !== "" ? v : null;
  return { role: role ?? r.role, stateFile: text(r.state_file), usersFile: text(r.users_file) };
}

function _isRunArgs(args: readonly string[] | RunArgs): args is RunArgs {
  return !Array.isArray(args);
}

/**
 * Print `e` for the user, without a stack trace, and return the exit code: 2 for a
 * {@linkcode UsageError}, 1 for anything else. Configuration problems go one per line.
 *
 * @example Usage
 * ```ts
 * import { reportError, UsageError } from "./options.ts";
 * const code = reportError("link", new UsageError('Unknown option "--x"'), () => {});
 * code; // 2
 * ```
 */
export function reportError(
  command: string,
  e: unknown,
  write: (line: string) => void = console.error,
): number {
  const prefix = command === "" ? "mtproxy" : `mtproxy ${command}`;
  if (e instanceof UsageError) {
    write(`${prefix}: ${e.message}; see "${prefix} --help"`);
    return 2;
  }
  if (e instanceof ConfigError) {
    write(`${prefix}: Invalid configuration:`);
    for (const p of e.problems) write(`  ${p}`);
    return 1;
  }
  write(`${prefix}: ${e instanceof Error ? e.message : String(e)}`);
  return 1;
}
