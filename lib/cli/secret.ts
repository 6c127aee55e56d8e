/**
 * `mtproxy secret`: make a new random secret and print it in every client-side form.
 *
 * @module
 */
import { DEFAULT_TLS_DOMAIN } from "../config/defaults.ts";
import {
  formatDdSecret,
  formatPlainSecret,
  formatTlsSecret,
  generateSecret,
  isValidTlsDomain,
  MAX_TLS_DOMAIN_BYTES,
} from "../secret.ts";
import { parseCommandArgs, reportError, UsageError } from "./options.ts";

/** Help screen of `mtproxy secret`. */
export const SECRET_HELP = `Usage: mtproxy secret [--tls-domain NAME]

Make a new random 16-byte secret and print it with its client-side forms. Put the
first line in listeners[].secret (or pass it with --secret); the proxy accepts all
forms of it.

Options:
  -d, --tls-domain NAME   domain of the ee (fake-TLS) forms (default ${DEFAULT_TLS_DOMAIN})
  -h, --help              show this help`;

const OPTIONS = {
  "tls-domain": { type: "string", short: "d" },
  help: { type: "boolean", short: "h" },
} as const;

/**
 * The lines `mtproxy secret` prints for `key` and `domain`.
 *
 * @example Usage
 * ```ts
 * import { secretLines } from "./secret.ts";
 * secretLines(new Uint8Array(16), "example.com")[0]; // "secret          00000000000000000000000000000000"
 * ```
 */
export function secretLines(key: Uint8Array, domain: string): string[] {
  const rows: [string, string][] = [
    ["secret", formatPlainSecret(key)],
    ["plain", formatPlainSecret(key)],
    ["dd", formatDdSecret(key)],
    ["ee (hex)", formatTlsSecret(key, domain)],
    ["ee (base64url)", formatTlsSecret(key, domain, { encoding: "base64url" })],
  ];
  return rows.map(([label, value]) => `${label.padEnd(15)} ${value}`);
}

/**
 * Run `mtproxy secret`; returns the exit code.
 *
 * @example Usage
 * ```ts ignore
 * import { secretCommand } from "./secret.ts";
 * Deno.exit(await secretCommand(["--tls-domain", "www.example.com"]));
 * ```
 */
export function secretCommand(args: string[]): Promise<number> {
  try {
    const { values } = parseCommandArgs(args, OPTIONS);
    if (values.help) {
      console.log(SECRET_HELP);
      return Promise.resolve(0);
    }
    const domain = (values["tls-domain"] ?? DEFAULT_TLS_DOMAIN).trim().toLowerCase();
    if (!isValidTlsDomain(domain)) {
      throw new UsageError(
        `TLS domain must be a host name of at most ${MAX_TLS_DOMAIN_BYTES} characters: got ${
          JSON.stringify(values["tls-domain"])
        }`,
      );
    }
    for (const line of secretLines(generateSecret(), domain)) console.log(line);
    return Promise.resolve(0);
  } catch (e) {
    return Promise.resolve(reportError("secret", e));
  }
}
