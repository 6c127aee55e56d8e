/**
 * QR codes of proxy links for `mtproxy link`: drawn in the terminal, or written as PNG and SVG
 * files. The encoding is npm:qrcode's (error correction level M); the terminal drawing is ours,
 * from its module matrix, so that it is black on white whatever the terminal's colours.
 *
 * A QR code holds a whole link, secret included: the files are written with mode 0600.
 *
 * @module
 */
import { join } from "node:path";
import qrcode from "qrcode";

/** The part of npm:qrcode (which ships no types) that this module uses. */
interface _QrCodeLib {
  create(text: string, options: _QrOptions): { modules: _BitMatrix };
  toBuffer(text: string, options: _QrOptions & { type: "png" }): Promise<Uint8Array>;
  toString(text: string, options: _QrOptions & { type: "svg" }): Promise<string>;
}

interface _QrOptions {
  errorCorrectionLevel?: "L" | "M" | "Q" | "H";
  margin?: number;
  scale?: number;
}

interface _BitMatrix {
  readonly size: number;
  get(row: number, col: number): number | boolean;
}

const QR = qrcode as unknown as _QrCodeLib;

/** Error correction of every code: M survives 15% damage, and keeps a link's code small. */
const LEVEL = "M";

/** Light modules around a code in the terminal (the standard asks 4; 2 scans fine on a screen). */
const TERMINAL_MARGIN = 2;

/** Light modules around a code in a file: the standard's quiet zone. */
const FILE_MARGIN = 4;

/** Pixels per module in a PNG. */
const PNG_SCALE = 8;

/** File formats {@linkcode writeQrFiles} writes. */
export type QrFormat = "png" | "svg";

/** One QR code to draw: a link and the file name (without extension) it is saved under. */
export interface QrTarget {
  /** `<listener>-<protocol>`, or `<listener>-tls-<sni>` for a per-SNI user's link. */
  readonly name: string;
  /** The link the code holds. */
  readonly link: string;
}

/**
 * The module matrix of `text`'s QR code: `rows[r][c]` is true for a dark module, without quiet
 * zone.
 *
 * @example Usage
 * ```ts
 * import { qrMatrix } from "./qr.ts";
 * qrMatrix("tg://proxy").length; // 21 (version 1)
 * ```
 */
export function qrMatrix(text: string): boolean[][] {
  const m = QR.create(text, { errorCorrectionLevel: LEVEL }).modules;
  return Array.from(
    { length: m.size },
    (_, r) => Array.from({ length: m.size }, (_, c) => !!m.get(r, c)),
  );
}

/**
 * `text`'s QR code for a terminal: two module rows per line in Unicode half blocks, black on
 * white (ANSI colours), with a light margin. One string per line, without newlines.
 *
 * @example Usage
 * ```ts
 * import { terminalQr } from "./qr.ts";
 * terminalQr("tg://proxy").length; // 13 lines for 21 + 4 module rows
 * ```
 */
export function terminalQr(text: string): string[] {
  const modules = qrMatrix(text);
  const size = modules.length + 2 * TERMINAL_MARGIN;
  const dark = (r: number, c: number) =>
    modules[r - TERMINAL_MARGIN]?.[c - TERMINAL_MARGIN] ?? false;
  const lines: string[] = [];
  for (let r = 0; r < size; r += 2) {
    let line = "";
    for (let c = 0; c < size; c++) {
      const top = dark(r, c);
      const bottom = r + 1 < size && dark(r + 1, c);
      line += top ? (bottom ? "█" : "▀") : (bottom ? "▄" : " ");
    }
    lines.push(`\x1b[30;47m${line}\x1b[0m`);
  }
  return lines;
}

/**
 * `text`'s QR code as a PNG image (8 pixels per module, a 4-module quiet zone).
 *
 * @example Usage
 * ```ts
 * import { pngQr } from "./qr.ts";
 * const png = await pngQr("tg://proxy");
 * png[1]; // 0x50 ("P" of the PNG signature)
 * ```
 */
export async function pngQr(text: string): Promise<Uint8Array> {
  const buf = await QR.toBuffer(text, {
    type: "png",
    errorCorrectionLevel: LEVEL,
    margin: FILE_MARGIN,
    scale: PNG_SCALE,
  });
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

/**
 * `text`'s QR code as an SVG document (one unit per module, a 4-module quiet zone).
 *
 * @example Usage
 * ```ts
 * import { svgQr } from "./qr.ts";
 * (await svgQr("tg://proxy")).startsWith("<svg"); // true
 * ```
 */
export async function svgQr(text: string): Promise<string> {
  return await QR.toString(text, { type: "svg", errorCorrectionLevel: LEVEL, margin: FILE_MARGIN });
}

/**
 * A safe file name (without extension) for a QR code: every character other than letters,
 * digits, `.`, `_` and `-` becomes `_`, and so do leading dots, so that no name can point into
 * another directory or hide the file.
 *
 * @example Usage
 * ```ts
 * import { qrFileName } from "./qr.ts";
 * qrFileName("main-tls-alice.example"); // "main-tls-alice.example"
 * qrFileName("../x"); // "__x"
 * ```
 */
export function qrFileName(name: string): string {
  return name.replace(/[^A-Za-z0-9._-]/g, "_").replace(/^\.+/, "_");
}

/**
 * Write one `<name>.<format>` file per target into `dir` (made with mode 0700 when missing),
 * each with mode 0600 since it holds a secret; returns the paths written, in order.
 *
 * @example Usage
 * ```ts ignore
 * import { writeQrFiles } from "./qr.ts";
 * await writeQrFiles("qr", [{ name: "main-dd", link: "https://t.me/proxy?..." }], "png");
 * ```
 */
export async function writeQrFiles(
  dir: string,
  targets: readonly QrTarget[],
  format: QrFormat,
): Promise<string[]> {
  await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
  const paths: string[] = [];
  for (const t of targets) {
    const path = join(dir, `${qrFileName(t.name)}.${format}`);
    const data = format === "png"
      ? await pngQr(t.link)
      : new TextEncoder().encode(await svgQr(t.link));
    await Deno.writeFile(path, data, { mode: 0o600 });
    // writeFile's mode applies to a new file only: an older file keeps its own otherwise.
    if (Deno.build.os !== "windows") await Deno.chmod(path, 0o600);
    paths.push(path);
  }
  return paths;
}
