/**
 * The state file: a small JSON document that keeps the random secret made on first start, so
 * links stay valid across restarts. Written atomically (temporary file, then link or rename)
 * with mode 0600.
 *
 * ```json
 * { "version": 1, "secret": "0123456789abcdef0123456789abcdef", "created_at": "2026-01-01T00:00:00.000Z" }
 * ```
 *
 * With the admin API on and no `admin.token`, it also keeps the API's token (`admin_token`).
 *
 * @module
 */
import { dirname, isAbsolute, join, resolve } from "node:path";
import { writeFileAtomic } from "./atomic_file.ts";
import { DEFAULT_STATE_FILE_NAME } from "./defaults.ts";
import { generateSecret, parseSecret, SecretError, toHex } from "../secret.ts";

/** Environment variable naming the state file; it wins over `state_file`. */
export const STATE_FILE_ENV = "MTP_STATE_FILE";

/** What the state file keeps. */
export interface ProxyState {
  /** The 16-byte secret for listeners that have none in the configuration. */
  readonly secret: Uint8Array;
  /** When the secret was made (ISO 8601). */
  readonly createdAt: string;
  /** The admin API's bearer token, once one was made (no `admin.token` in the config). */
  readonly adminToken?: string;
}

/** A state file that cannot be read, parsed or written. */
export class StateFileError extends Error {
  /** The state file's path. */
  readonly path: string;

  /** Create the error for `path`. */
  constructor(path: string, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "StateFileError";
    this.path = path;
  }
}

/** Inputs of {@linkcode resolveStatePath}. */
export interface StatePathOptions {
  /** Environment to read `MTP_STATE_FILE` from. @default {} */
  env?: Readonly<Record<string, string | undefined>>;
  /** `state_file` from the configuration. @default null */
  stateFile?: string | null;
  /** The configuration file, when one is used. @default null */
  configPath?: string | null;
  /** Directory for relative paths without a config file. @default Deno.cwd() */
  cwd?: string;
}

/**
 * Where the state file lives: `$MTP_STATE_FILE` (relative to the working directory), else
 * `state_file` (relative to the config file's directory), else `mtproxy-state.json` next to the
 * config file, else in the working directory. Always an absolute path.
 *
 * @example Usage
 * ```ts
 * import { resolveStatePath } from "./state.ts";
 * resolveStatePath({ configPath: "/etc/mtproxy/config.yaml" }); // "/etc/mtproxy/mtproxy-state.json"
 * ```
 */
export function resolveStatePath(options: StatePathOptions = {}): string {
  const cwd = options.cwd ?? Deno.cwd();
  const fromEnv = options.env?.[STATE_FILE_ENV]?.trim();
  if (fromEnv) return resolve(cwd, fromEnv);
  const configDir = options.configPath ? dirname(resolve(cwd, options.configPath)) : cwd;
  if (options.stateFile) {
    return isAbsolute(options.stateFile)
      ? options.stateFile
      : resolve(configDir, options.stateFile);
  }
  return join(configDir, DEFAULT_STATE_FILE_NAME);
}

/**
 * Read the state file; null when it does not exist. Throws {@linkcode StateFileError} when it
 * cannot be read or is not a valid state document.
 *
 * @example Usage
 * ```ts ignore
 * import { readState } from "./state.ts";
 * const state = await readState("/var/lib/mtproxy/state.json");
 * ```
 */
export async function readState(path: string): Promise<ProxyState | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new StateFileError(path, `Cannot read state file ${JSON.stringify(path)}: ${_why(e)}`, {
      cause: e,
    });
  }
  return _parseState(path, text);
}

/**
 * Write the state file atomically with mode 0600, replacing any previous one. Creates the
 * parent directory when missing.
 *
 * @example Usage
 * ```ts ignore
 * import { writeState } from "./state.ts";
 * await writeState("state.json", { secret: new Uint8Array(16), createdAt: new Date().toISOString() });
 * ```
 */
export async function writeState(path: string, state: ProxyState): Promise<void> {
  try {
    await writeFileAtomic(path, _encodeState(state));
  } catch (e) {
    throw _writeError(path, e);
  }
}

/** What {@linkcode loadOrCreateState} found or made. */
export interface LoadedState {
  readonly state: ProxyState;
  /** True when this call made the secret and wrote the file. */
  readonly created: boolean;
}

/**
 * Read the state file, or make a new random secret and write it when there is none. Safe when
 * two processes start at once: both end up with the secret that was written first.
 *
 * @example Usage
 * ```ts ignore
 * import { loadOrCreateState } from "./state.ts";
 * const { state, created } = await loadOrCreateState("./mtproxy-state.json");
 * ```
 */
export async function loadOrCreateState(path: string): Promise<LoadedState> {
  const existing = await readState(path);
  if (existing) return { state: existing, created: false };
  const state: ProxyState = { secret: generateSecret(), createdAt: new Date().toISOString() };
  try {
    await writeFileAtomic(path, _encodeState(state), { createNew: true });
  } catch (e) {
    if (!(e instanceof Deno.errors.AlreadyExists)) throw _writeError(path, e);
    const other = await readState(path);
    if (other) return { state: other, created: false };
    return await loadOrCreateState(path);
  }
  return { state, created: true };
}

/** What {@linkcode loadOrCreateAdminToken} found or made. */
export interface LoadedAdminToken {
  readonly token: string;
  /** True when this call made the token and wrote it into the state file. */
  readonly created: boolean;
}

/**
 * The admin API's token from the state file, or a new random one (32 base64url characters, 192
 * bits) written into it, keeping the secret (or making the file, with a new secret, when there is
 * none).
 *
 * @example Usage
 * ```ts ignore
 * import { loadOrCreateAdminToken } from "./state.ts";
 * const { token } = await loadOrCreateAdminToken("./mtproxy-state.json");
 * ```
 */
export async function loadOrCreateAdminToken(path: string): Promise<LoadedAdminToken> {
  const { state } = await loadOrCreateState(path);
  if (state.adminToken !== undefined) return { token: state.adminToken, created: false };
  const bytes = crypto.getRandomValues(new Uint8Array(24));
  const token = btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_");
  await writeState(path, { ...state, adminToken: token });
  // Two processes starting at once: both use the token that was written last.
  const written = await readState(path);
  return { token: written?.adminToken ?? token, created: true };
}

function _parseState(path: string, text: string): ProxyState {
  const bad = (why: string) =>
    new StateFileError(
      path,
      `State file ${
        JSON.stringify(path)
      } is not valid: ${why}; fix it, or delete it to make a new secret (every link changes)`,
    );
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (e) {
    // Not the parser's message: it quotes the text around the error, which holds the secret.
    throw bad(`not JSON${_jsonErrorPlace(e)}`);
  }
  if (typeof data !== "object" || data === null || Array.isArray(data)) {
    throw bad("expected a JSON object");
  }
  const doc = data as Record<string, unknown>;
  if (doc.version !== 1) {
    throw bad(
      `unsupported version: got ${
        typeof doc.version === "number" ? doc.version : _kind(doc.version)
      }`,
    );
  }
  if (typeof doc.secret !== "string") throw bad('"secret" must be a string of 32 hex digits');
  let secret: Uint8Array;
  try {
    const parsed = parseSecret(doc.secret);
    if (parsed.kind !== "plain") throw new SecretError("bad_format", "not plain");
    secret = parsed.key;
  } catch {
    // What is wrong with it, never what it is: a near-miss of a secret is mostly the secret.
    const s = doc.secret.trim();
    const got = s === ""
      ? "an empty string"
      : /^[0-9a-fA-F]+$/.test(s)
      ? `${s.length} hex digits`
      : `${s.length} characters, not all hex digits`;
    throw bad(`"secret" must be 32 hex digits: got ${got}`);
  }
  const createdAt = typeof doc.created_at === "string" ? doc.created_at : "";
  if (doc.admin_token === undefined) return { secret, createdAt };
  // Never shown: what is wrong with it only.
  if (typeof doc.admin_token !== "string" || !/^[\x21-\x7e]{16,}$/.test(doc.admin_token)) {
    throw bad('"admin_token" must be at least 16 printable characters without spaces');
  }
  return { secret, createdAt, adminToken: doc.admin_token };
}

/** Where JSON.parse stopped (" at line L column C"), or "" when its message does not say. */
function _jsonErrorPlace(e: unknown): string {
  const message = e instanceof Error ? e.message : "";
  const lineCol = /line (\d+) column (\d+)/.exec(message);
  if (lineCol) return ` at line ${lineCol[1]} column ${lineCol[2]}`;
  const position = /at position (\d+)/.exec(message);
  if (position) return ` at character ${Number(position[1]) + 1}`;
  return message.includes("Unexpected end of JSON input") ? ": it ends too early" : "";
}

/** What kind of JSON value `v` is, without its content. */
function _kind(v: unknown): string {
  if (v === undefined) return "nothing";
  if (v === null) return "null";
  if (Array.isArray(v)) return "a list";
  return typeof v === "object" ? "an object" : `a ${typeof v}`;
}

function _encodeState(state: ProxyState): string {
  return JSON.stringify(
    {
      version: 1,
      secret: toHex(state.secret),
      created_at: state.createdAt,
      ...(state.adminToken !== undefined && { admin_token: state.adminToken }),
    },
    null,
    2,
  ) + "\n";
}

function _writeError(path: string, e: unknown): StateFileError {
  return new StateFileError(path, `Cannot write state file ${JSON.stringify(path)}: ${_why(e)}`, {
    cause: e,
  });
}

function _why(e: unknown): string {
  if (e instanceof Deno.errors.PermissionDenied) return "permission denied";
  if (e instanceof Deno.errors.NotFound) return "no such file or directory";
  return e instanceof Error ? e.message : String(e);
}
