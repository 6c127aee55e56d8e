/**
 * `mtproxy secret`: make a new random secret and print it in every client-side form; with
 * `--front NAME`, make a link secret for a front and a back and print the YAML both need.
 *
 * @module
 */
import {
  DEFAULT_BACK_LINKS,
  DEFAULT_TLS_DOMAIN,
  EXAMPLE_BACK_ADDRESS,
} from "../config/defaults.ts";
import { isValidName, parseHostPort } from "../config/load.ts";
import {
  formatDdSecret,
  formatPlainSecret,
  formatTlsSecret,
  generateSecret,
  isValidTlsDomain,
  MAX_TLS_DOMAIN_BYTES,
  toHex,
} from "../secret.ts";
import { formatAddress } from "./link.ts";
import { parseCommandArgs, reportError, UsageError } from "./options.ts";

/** Help screen of `mtproxy secret`. */
export const SECRET_HELP = `Usage: mtproxy secret [--tls-domain NAME]
       mtproxy secret --front NAME [--back HOST:PORT] [--tls-domain NAME]

Make a new random 16-byte secret and print it with its client-side forms. Put the
first line in listeners[].secret (or pass it with --secret); the proxy accepts all
forms of it.

With --front: make a link secret for split mode instead, and print (as YAML) the
fronts: entry for the back's configuration and the backs: entry for the front's.
Each front gets its own secret; keep it private.

Options:
      --front NAME        name of the front (1-64 letters, digits, ".", "_", "-")
      --back HOST:PORT    address of the back's link listener for the backs: entry
                          (default ${EXAMPLE_BACK_ADDRESS}, to be replaced)
  -d, --tls-domain NAME   domain of the ee (fake-TLS) forms, or with --front the
                          tls_domain of the backs: entry (default ${DEFAULT_TLS_DOMAIN})
  -h, --help              show this help`;

const OPTIONS = {
  front: { type: "string" },
  back: { type: "string" },
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

/** Options for {@linkcode linkSecretLines}. */
export interface LinkSecretOptions {
  /** The back's link listener as "host:port"; null prints a placeholder to replace. @default null */
  back?: string | null;
  /** The SNI of the front's link hello. @default DEFAULT_TLS_DOMAIN */
  tlsDomain?: string;
}

/**
 * The YAML `mtproxy secret --front NAME` prints for link secret `key`: the back's `fronts:`
 * entry and the front's `backs:` entry. The whole text parses as one YAML mapping. `front`,
 * `options.back` and `options.tlsDomain` must already be valid.
 *
 * @example Usage
 * ```ts
 * import { linkSecretLines } from "./secret.ts";
 * const lines = linkSecretLines("home", new Uint8Array(16), { back: "203.0.113.7:443" });
 * lines.includes('  - address: "203.0.113.7:443"'); // true
 * ```
 */
export function linkSecretLines(
  front: string,
  key: Uint8Array,
  options: LinkSecretOptions = {},
): string[] {
  const secret = JSON.stringify(toHex(key));
  const back = options.back ?? null;
  const address = back === null
    ? `${JSON.stringify(EXAMPLE_BACK_ADDRESS)} # replace with the back's address (a link listener)`
    : JSON.stringify(back);
  return [
    `# Link secret of front ${
      JSON.stringify(front)
    }: keep it private, it lets a front use the back.`,
    "",
    "# On the back (role: back), add to fronts:",
    "fronts:",
    `  - name: ${JSON.stringify(front)}`,
    `    secret: ${secret}`,
    "",
    "# On the front (role: front), add to backs:",
    "backs:",
    `  - address: ${address}`,
    `    secret: ${secret}`,
    `    tls_domain: ${
      JSON.stringify(options.tlsDomain ?? DEFAULT_TLS_DOMAIN)
    } # one of the back's link_listeners[].tls_domain`,
    `    links: ${DEFAULT_BACK_LINKS}`,
  ];
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
    if (values.front === undefined) {
      if (values.back !== undefined) throw new UsageError("--back needs --front NAME");
      for (const line of secretLines(generateSecret(), domain)) console.log(line);
      return Promise.resolve(0);
    }
    const front = values.front.trim();
    if (!isValidName(front)) {
      throw new UsageError(
        `Front name must be 1-64 letters, digits, ".", "_" or "-", starting with a letter or digit: got ${
          JSON.stringify(values.front)
        }`,
      );
    }
    let back: string | null = null;
    if (values.back !== undefined) {
      const hp = parseHostPort(values.back);
      if (hp === null) {
        throw new UsageError(
          `Back address must be "host:port" (IPv6 as "[addr]:port") with a port 1-65535: got ${
            JSON.stringify(values.back)
          }`,
        );
      }
      back = formatAddress(hp.host, hp.port);
    }
    const lines = linkSecretLines(front, generateSecret(), { back, tlsDomain: domain });
    for (const line of lines) console.log(line);
    return Promise.resolve(0);
  } catch (e) {
    return Promise.resolve(reportError("secret", e));
  }
}
