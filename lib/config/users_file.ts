/**
 * The users file (`users_file`): users kept apart from the config file, in the same schema as
 * `users:`, so that the admin API can add, change and remove them while the proxy runs. The proxy
 * reads it at start and on every reload; the API writes it atomically (temporary file, then
 * rename) with mode 0600, since it holds secrets.
 *
 * ```yaml
 * users:
 *   alice:
 *     secret: "0123456789abcdef0123456789abcdef"
 *     max_connections: 3
 * ```
 *
 * @module
 */
import { dirname, isAbsolute, join, resolve } from "node:path";
import { stringify } from "yaml";
import { writeFileAtomic } from "./atomic_file.ts";
import { DEFAULT_USERS_FILE_NAME } from "./defaults.ts";
import { ConfigError, type FileUsers, parseYaml, readFailure } from "./load.ts";

/** Inputs of {@linkcode resolveUsersFilePath}. */
export interface UsersFilePathOptions {
  /** `users_file` from the configuration. @default null */
  usersFile?: string | null;
  /** The state file's absolute path (the default users file sits beside it). */
  statePath: string;
  /** The configuration file, when one is used. @default null */
  configPath?: string | null;
  /** Directory for relative paths without a config file. @default Deno.cwd() */
  cwd?: string;
}

/**
 * Where the users file lives: `users_file` (relative to the config file's directory), else
 * `mtproxy-users.yaml` next to the state file. Always an absolute path.
 *
 * @example Usage
 * ```ts
 * import { resolveUsersFilePath } from "./users_file.ts";
 * resolveUsersFilePath({ statePath: "/var/lib/mtproxy/mtproxy-state.json" });
 * // "/var/lib/mtproxy/mtproxy-users.yaml"
 * ```
 */
export function resolveUsersFilePath(options: UsersFilePathOptions): string {
  const cwd = options.cwd ?? Deno.cwd();
  if (options.usersFile) {
    if (isAbsolute(options.usersFile)) return options.usersFile;
    const base = options.configPath ? dirname(resolve(cwd, options.configPath)) : cwd;
    return resolve(base, options.usersFile);
  }
  return join(dirname(options.statePath), DEFAULT_USERS_FILE_NAME);
}

/** How the users file is named in problems. */
export function usersFileSource(path: string): string {
  return `users file ${path}`;
}

/**
 * Read the users file: its users as written (validated later, with the configuration's), or null
 * when the file does not exist. Throws {@linkcode ConfigError} when it cannot be read or is not
 * a mapping with one key, `users`.
 *
 * @example Usage
 * ```ts ignore
 * import { readUsersFile } from "./users_file.ts";
 * const file = await readUsersFile("/var/lib/mtproxy/mtproxy-users.yaml");
 * Object.keys(file?.users ?? {}); // ["alice", "bob"]
 * ```
 */
export async function readUsersFile(path: string): Promise<FileUsers | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new ConfigError([`Cannot read users file ${JSON.stringify(path)}: ${readFailure(e)}`]);
  }
  return parseUsersFile(text, path);
}

/**
 * Parse the users file's text (see {@linkcode readUsersFile}).
 *
 * @example Usage
 * ```ts
 * import { parseUsersFile } from "./users_file.ts";
 * parseUsersFile("users:\n  bob:\n    enabled: false\n", "users.yaml").users;
 * // { bob: { enabled: false } }
 * ```
 */
export function parseUsersFile(text: string, path: string): FileUsers {
  const source = usersFileSource(path);
  const raw = parseYaml(text, path);
  if (raw === null || raw === undefined) return { users: {}, source };
  if (!_isMapping(raw)) {
    throw new ConfigError([`${source}: must be a mapping with the key "users"`]);
  }
  const unknown = Object.keys(raw).filter((k) => k !== "users");
  if (unknown.length > 0) {
    throw new ConfigError(
      unknown.map((k) => `${source}: ${k}: unknown key (the file has only "users")`),
    );
  }
  const users = raw.users ?? {};
  if (!_isMapping(users)) {
    throw new ConfigError([`${source}: users: must be a mapping of user names to users`]);
  }
  return { users, source };
}

/**
 * Write the users file atomically (a temporary file beside it, then rename) with mode 0600;
 * makes its directory (mode 0700) when missing. `users` maps each name to its keys as under
 * `users:`.
 *
 * @example Usage
 * ```ts ignore
 * import { writeUsersFile } from "./users_file.ts";
 * await writeUsersFile("users.yaml", { bob: { secret: "0123456789abcdef0123456789abcdef" } });
 * ```
 */
export async function writeUsersFile(
  path: string,
  users: Readonly<Record<string, unknown>>,
): Promise<void> {
  const text =
    "# Users of mtproxy, kept by its admin API (edit it by hand only while no request\n" +
    "# changes it; SIGHUP or POST /api/reload applies it). Same schema as `users:`.\n" +
    stringify({ users }, { defaultStringType: "QUOTE_DOUBLE", defaultKeyType: "PLAIN" });
  await writeFileAtomic(path, text);
}

function _isMapping(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Date);
}
