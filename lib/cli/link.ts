/**
 * `mtproxy link`: print the tg:// and https://t.me links of every listener for every allowed
 * protocol, with the same options and configuration as `run`.
 *
 * @module
 */
import type { Config } from "../config/types.ts";
import { perSniSecret, proxyLinks, type ProxyLinkSet } from "../secret.ts";
import type { QrTarget } from "./qr.ts";
import {
  LINK_QR_OPTIONS,
  LINK_QR_OPTIONS_HELP,
  parseCommandArgs,
  reportError,
  resolveRunConfig,
  RUN_OPTIONS,
  RUN_OPTIONS_HELP,
  runArgsFromValues,
  UsageError,
} from "./options.ts";

const LINK_OPTIONS = {
  ...RUN_OPTIONS,
  ...LINK_QR_OPTIONS,
  sni: { type: "string", multiple: true },
} as const;

/** Help screen of `mtproxy link`. */
export const LINK_HELP = `Usage: mtproxy link [options]

Print the tg:// and https://t.me proxy links of every listener, for every allowed
protocol, using public_host as the server. Reads the same configuration as "run";
secrets come from the config or the state file (which "link" never creates).
A back (role: back) has no client links: run "link" with its front's configuration.

      --sni NAME           with per_sni_secrets: the fake-TLS links of the user
                           whose SNI is NAME (their own secret); repeatable
${LINK_QR_OPTIONS_HELP}

${RUN_OPTIONS_HELP}`;

/** `host:port`, with brackets around an IPv6 literal. */
export function formatAddress(host: string, port: number): string {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

/** What {@linkcode formatLinks} prints. */
export interface FormattedLinks {
  /** The lines for stdout. */
  readonly lines: readonly string[];
  /** Warnings for stderr (public_host unset). */
  readonly warnings: readonly string[];
  /**
   * One QR code per listener and protocol (and per-SNI user): the `https://t.me` link, which a
   * phone's camera opens in Telegram, of the hex form for fake-TLS. Named
   * `<listener>-<protocol>`, or `<listener>-tls-<sni>`.
   */
  readonly codes: readonly QrTarget[];
}

/** Options for {@linkcode formatLinks}. */
export interface FormatLinksOptions {
  /** With per_sni_secrets: the users (SNIs) whose fake-TLS links to show. @default [] */
  snis?: readonly string[];
  /** Draw a link's QR code as lines (lib/cli/qr.ts `terminalQr`), put under its code's link. */
  qr?: (link: string) => readonly string[];
}

const WILDCARDS = new Set(["0.0.0.0", "::"]);

/**
 * The link block of every listener of `config`, and warnings when public_host is unset.
 *
 * @example Usage
 * ```ts
 * import { formatLinks } from "./link.ts";
 * import { buildConfig } from "../config/load.ts";
 * const config = buildConfig({ public_host: "proxy.example.com" }, {
 *   stateSecret: new Uint8Array(16),
 * });
 * formatLinks(config).lines[0]; // "main (0.0.0.0:1443), links to proxy.example.com:1443"
 * ```
 */
export function formatLinks(config: Config, options: FormatLinksOptions = {}): FormattedLinks {
  const lines: string[] = [];
  const warnings: string[] = [];
  const codes: QrTarget[] = [];
  for (const l of config.listeners) {
    const host = config.publicHost ?? l.host;
    if (config.publicHost === null) {
      warnings.push(
        WILDCARDS.has(l.host)
          ? `Warning: public_host is not set, so the links of listener ${
            JSON.stringify(l.name)
          } use its bind address ${l.host}, which is no address clients can reach: set public_host (or --public-host, MTP_PUBLIC_HOST) to this server's public name or IP address`
          : `Warning: public_host is not set, so the links of listener ${
            JSON.stringify(l.name)
          } use its bind address ${l.host}: set public_host (or --public-host, MTP_PUBLIC_HOST) if clients reach this server by another name or address`,
      );
    }
    if (lines.length > 0) lines.push("");
    lines.push(
      `${l.name} (${formatAddress(l.host, l.port)}), links to ${formatAddress(host, l.port)}`,
    );
    const perSni = config.perSniSecrets && l.allowedProtocols.includes("tls");
    const sets: { link: ProxyLinkSet; sni?: string }[] = proxyLinks(
      { host, port: l.port },
      l.secret,
      {
        // Per-SNI: base-secret fake-TLS links are refused, so only users' own links are shown.
        protocols: perSni ? l.allowedProtocols.filter((p) => p !== "tls") : l.allowedProtocols,
        ...(l.tlsDomains[0] !== undefined && { tlsDomain: l.tlsDomains[0] }),
      },
    ).map((link) => ({ link }));
    if (perSni) {
      const users = (options.snis ?? []).flatMap((sni) =>
        proxyLinks({ host, port: l.port }, perSniSecret(l.secret, sni, config.perSniSalt), {
          protocols: ["tls"],
          tlsDomain: sni,
        }).map((link) => ({ link, sni }))
      );
      sets.unshift(...users);
      if ((options.snis ?? []).length === 0) {
        lines.push("  tls              per-SNI secrets: print a user's links with --sni NAME");
      }
    }
    for (const { link: s, sni } of sets) {
      const label = s.kind === "tls" ? `tls (${s.encoding})` : s.kind;
      lines.push(`  ${label.padEnd(16)} ${s.tg}`);
      lines.push(`  ${"".padEnd(16)} ${s.https}`);
      // One code per protocol: the fake-TLS base64url form is the same proxy as the hex one.
      if (s.encoding !== "hex") continue;
      codes.push({
        name: [l.name, s.kind, ...(sni === undefined ? [] : [sni])].join("-"),
        link: s.https,
      });
      if (options.qr) { for (const q of options.qr(s.https)) lines.push(`  ${q}`); }
    }
  }
  return { lines, warnings, codes };
}

/**
 * The block `run` prints for a back instead of proxy links: each link listener's address and
 * SNIs, and the names of the fronts it accepts (never their secrets).
 *
 * @example Usage
 * ```ts
 * import { formatLinkListeners } from "./link.ts";
 * import { buildConfig } from "../config/load.ts";
 * const config = buildConfig({
 *   role: "back",
 *   link_listeners: [{}],
 *   fronts: [{ name: "home", secret: "0123456789abcdef0123456789abcdef" }],
 * });
 * formatLinkListeners(config)[0]; // "link1 (0.0.0.0:443), link listener for fronts: home"
 * ```
 */
export function formatLinkListeners(config: Config): string[] {
  const fronts = config.fronts.map((f) => f.name).join(", ");
  const lines: string[] = [];
  for (const l of config.linkListeners) {
    lines.push(`${l.name} (${formatAddress(l.host, l.port)}), link listener for fronts: ${fronts}`);
    lines.push(`  tls_domain       ${l.tlsDomains.join(", ")}`);
  }
  return lines;
}

/**
 * Run `mtproxy link`; returns the exit code.
 *
 * @example Usage
 * ```ts ignore
 * import { linkCommand } from "./link.ts";
 * Deno.exit(await linkCommand(["--config", "config.yaml"]));
 * ```
 */
export async function linkCommand(args: string[]): Promise<number> {
  try {
    const { values } = parseCommandArgs(args, LINK_OPTIONS);
    const parsed = runArgsFromValues(values);
    if (parsed.help) {
      console.log(LINK_HELP);
      return 0;
    }
    const { config, warnings } = await resolveRunConfig(parsed, Deno.env.toObject());
    for (const w of warnings) console.error(`Warning: ${w}`);
    if (config.role === "back") {
      throw new Error(
        'A back has no client links: clients connect to a front, so run "mtproxy link" with the front\'s configuration',
      );
    }
    const snis = values.sni ?? [];
    if (snis.length > 0 && !config.perSniSecrets) {
      throw new UsageError("--sni needs per_sni_secrets: true in the configuration");
    }
    if (values.qr && values["no-qr"]) {
      throw new UsageError("--qr and --no-qr cannot be used together");
    }
    const drawQr = values.qr ?? (!values["no-qr"] && Deno.stdout.isTerminal());
    const files = [["png", values["qr-png"]], ["svg", values["qr-svg"]]] as const;
    // Loaded only when wanted: `run` shares this module and never draws a QR code.
    const qr = drawQr || files.some(([, dir]) => dir !== undefined)
      ? await import("./qr.ts")
      : null;
    const out = formatLinks(config, { snis, ...(drawQr && qr && { qr: qr.terminalQr }) });
    for (const w of out.warnings) console.error(w);
    for (const line of out.lines) console.log(line);
    for (const [format, dir] of files) {
      if (dir === undefined || qr === null) continue;
      if (out.codes.length === 0) {
        console.error(`Warning: no links, so no QR code written to ${dir}`);
      }
      for (const path of await qr.writeQrFiles(dir, out.codes, format)) {
        console.log(`QR code: ${path}`);
      }
    }
    return 0;
  } catch (e) {
    return reportError("link", e);
  }
}
