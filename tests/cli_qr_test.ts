/**
 * QR codes of `mtproxy link`: the PNG and SVG files (`--qr-png DIR`, `--qr-svg DIR`) and the
 * terminal drawing (`--qr`, or by default when stdout is a terminal). Every code is read back
 * into its module matrix and compared with the QR encoding of the link printed above it, so a
 * file that holds another link, or a drawing that is off by a module, fails.
 */
import { assert, assertEquals, assertStringIncludes } from "./assert.ts";
import { fileURLToPath as fromFileUrl } from "node:url";
import { qrFileName, qrMatrix } from "../lib/cli/qr.ts";

const MAIN = fromFileUrl(new URL("../main.ts", import.meta.url));
const HEX = "0123456789abcdef0123456789abcdef";
const HEX2 = "fedcba9876543210fedcba9876543210";
const ENV_BLANK = [
  "MTP_CONFIG",
  "MTP_ROLE",
  "MTP_PORT",
  "MTP_HOST",
  "MTP_SECRET",
  "MTP_TAG",
  "MTP_ALLOW",
  "MTP_TLS_DOMAIN",
  "MTP_PUBLIC_HOST",
  "MTP_LOG_LEVEL",
  "MTP_STATE_FILE",
  "MTP_LINKS",
];

/** Two listeners: main with every protocol, alt with dd only. */
const TWO_LISTENERS = [
  "listeners:",
  `  - { name: main, port: 1443, secret: "${HEX}", tls_domain: example.com }`,
  `  - { name: alt, port: 8443, secret: "${HEX2}", allowed_protocols: [dd] }`,
  "public_host: proxy.example.net",
  "",
].join("\n");

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

function _env(): Record<string, string> {
  const env: Record<string, string> = { NO_COLOR: "1" };
  for (const name of ENV_BLANK) env[name] = "";
  return env;
}

async function mtproxy(args: string[], cwd: string): Promise<Result> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    cwd,
    env: _env(),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

async function withConfig(
  yaml: string,
  fn: (dir: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "mtproxy_qr_test_" });
  try {
    await Deno.writeTextFile(`${dir}/config.yaml`, yaml);
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * The https://t.me link that each code should hold, by code name, read from `link`'s output:
 * `<listener>-<protocol>` for the hex fake-TLS, dd and plain lines.
 */
function expectedCodes(stdout: string): Map<string, string> {
  const out = new Map<string, string>();
  let listener = "";
  const lines = stdout.split("\n");
  lines.forEach((line, i) => {
    const header = /^(\S+) \(.*\), links to /.exec(line);
    if (header) listener = header[1]!;
    const label = /^ {2}(tls \(hex\)|dd|plain)\s+tg:\/\/proxy\?.*&secret=(\S+)$/.exec(line);
    if (!label) return;
    const kind = label[1]!.split(" ")[0]!;
    const https = lines[i + 1]!.trim();
    assert(https.startsWith("https://t.me/proxy?"), https);
    const sni = /^ee[0-9a-f]{32}([0-9a-f]+)$/.exec(label[2]!)?.[1];
    const domain = sni === undefined ? "" : new TextDecoder().decode(_fromHex(sni));
    // A per-SNI user's code is named after the SNI; the listener's own after the protocol.
    out.set(
      domain !== "" && domain !== "example.com"
        ? `${listener}-tls-${domain}`
        : `${listener}-${kind}`,
      https,
    );
  });
  return out;
}

function _fromHex(hex: string): Uint8Array {
  return Uint8Array.from(hex.match(/../g)!, (h) => parseInt(h, 16));
}

/** The matrix with a light margin of `margin` modules around it. */
function withMargin(m: boolean[][], margin: number): boolean[][] {
  const size = m.length + 2 * margin;
  return Array.from(
    { length: size },
    (_, r) => Array.from({ length: size }, (_, c) => m[r - margin]?.[c - margin] ?? false),
  );
}

// ---------------------------------------------------------------------------------------------
// Reading the codes back

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

/** Decode an 8-bit, non-interlaced PNG into a dark/light grid of its pixels. */
async function decodePng(png: Uint8Array): Promise<boolean[][]> {
  assertEquals([...png.subarray(0, 8)], PNG_SIGNATURE, "PNG signature");
  const view = new DataView(png.buffer, png.byteOffset, png.byteLength);
  let width = 0, height = 0, colorType = -1;
  const idat: Uint8Array[] = [];
  let sawEnd = false;
  for (let off = 8; off < png.length;) {
    const len = view.getUint32(off);
    const type = new TextDecoder().decode(png.subarray(off + 4, off + 8));
    const data = png.subarray(off + 8, off + 8 + len);
    if (type === "IHDR") {
      width = view.getUint32(off + 8);
      height = view.getUint32(off + 12);
      assertEquals(data[8], 8, "bit depth");
      colorType = data[9]!;
      assertEquals(data[12], 0, "no interlace");
    } else if (type === "IDAT") idat.push(data);
    else if (type === "IEND") sawEnd = true;
    off += 12 + len;
  }
  assert(sawEnd, "IEND chunk");
  const channels = ({ 0: 1, 2: 3, 4: 2, 6: 4 } as Record<number, number>)[colorType];
  assert(channels !== undefined, `color type ${colorType}`);
  const compressed = new Blob(idat.map((c) => c.slice()));
  const raw = new Uint8Array(
    await new Response(compressed.stream().pipeThrough(new DecompressionStream("deflate")))
      .arrayBuffer(),
  );
  const stride = width * channels;
  assertEquals(raw.length, height * (stride + 1), "image data size");
  const rows: Uint8Array[] = [];
  let prev = new Uint8Array(stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)]!;
    const line = raw.slice(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let x = 0; x < stride; x++) {
      const a = x >= channels ? line[x - channels]! : 0;
      const b = prev[x]!;
      const c = x >= channels ? prev[x - channels]! : 0;
      const p = a + b - c;
      const paeth = Math.abs(p - a) <= Math.abs(p - b) && Math.abs(p - a) <= Math.abs(p - c)
        ? a
        : Math.abs(p - b) <= Math.abs(p - c)
        ? b
        : c;
      const add = [0, a, b, (a + b) >> 1, paeth][filter];
      assert(add !== undefined, `filter ${filter}`);
      line[x] = (line[x]! + add) & 0xff;
    }
    rows.push(line);
    prev = line;
  }
  // Dark = the first channel below half (the codes are black on white).
  return rows.map((line) => Array.from({ length: width }, (_, x) => line[x * channels]! < 128));
}

/** The module grid of a PNG code: `scale` pixels per module, each module all one colour. */
function pngModules(pixels: boolean[][], modules: number): boolean[][] {
  const scale = pixels.length / modules;
  assert(Number.isInteger(scale) && pixels[0]!.length === pixels.length, "square, whole modules");
  return Array.from({ length: modules }, (_, r) =>
    Array.from({ length: modules }, (_, c) => {
      const v = pixels[r * scale]![c * scale]!;
      for (let y = 0; y < scale; y++) {
        for (let x = 0; x < scale; x++) {
          assertEquals(pixels[r * scale + y]![c * scale + x], v, `module ${r},${c} is one colour`);
        }
      }
      return v;
    }));
}

/** The module grid of npm:qrcode's SVG: one path of horizontal runs on half-unit rows. */
function svgModules(svg: string): boolean[][] {
  assert(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg" '), svg.slice(0, 80));
  assert(svg.trimEnd().endsWith("</svg>"), "closed root");
  const size = Number(/viewBox="0 0 (\d+) \1"/.exec(svg)?.[1]);
  assert(size > 0, "square viewBox");
  const grid = Array.from({ length: size }, () => new Array<boolean>(size).fill(false));
  const d = /<path stroke="#000000" d="([^"]*)"\/>/.exec(svg)?.[1];
  assert(d !== undefined, "one dark path");
  let x = 0, y = 0;
  for (const [, cmd, a, b] of d.matchAll(/([Mmh])(-?[\d.]+)(?: (-?[\d.]+))?/g)) {
    if (cmd === "M") [x, y] = [Number(a), Number(b)];
    else if (cmd === "m") [x, y] = [x + Number(a), y + Number(b)];
    else {
      for (let i = 0; i < Number(a); i++) grid[Math.floor(y)]![x + i] = true;
      x += Number(a);
    }
  }
  return grid;
}

/** The QR drawings in `link`'s output: the ANSI block lines after each https:// line. */
function terminalCodes(stdout: string): Map<string, boolean[][]> {
  const out = new Map<string, boolean[][]>();
  const lines = stdout.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const link = lines[i]!.trim();
    if (!link.startsWith("https://t.me/")) continue;
    const grid: boolean[][] = [];
    for (let j = i + 1; lines[j]?.startsWith("  \x1b[30;47m"); j++) {
      const row = lines[j]!.slice(2);
      assert(row.endsWith("\x1b[0m"), "colours reset at the end of each line");
      const chars = [...row.slice("\x1b[30;47m".length, -"\x1b[0m".length)];
      assert(chars.every((ch) => " ▀▄█".includes(ch)), row);
      grid.push(chars.map((ch) => ch === "█" || ch === "▀"));
      grid.push(chars.map((ch) => ch === "█" || ch === "▄"));
    }
    if (grid.length > 0) out.set(link, grid);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

Deno.test("mtproxy link --qr-png and --qr-svg write one code per listener and protocol, holding its https://t.me link", async () => {
  await withConfig(TWO_LISTENERS, async (dir) => {
    const r = await mtproxy(
      ["link", "--config", "config.yaml", "--qr-png", "png", "--qr-svg", "out/svg"],
      dir,
    );
    assertEquals(r.code, 0, r.stderr);
    // A pipe is no terminal: no drawing unless --qr.
    assert(!r.stdout.includes("\x1b["), r.stdout);
    const expected = expectedCodes(r.stdout);
    assertEquals([...expected.keys()].sort(), ["alt-dd", "main-dd", "main-plain", "main-tls"]);
    for (const [format, sub] of [["png", "png"], ["svg", "out/svg"]] as const) {
      const names = [];
      for await (const e of Deno.readDir(`${dir}/${sub}`)) names.push(e.name);
      assertEquals(names.sort(), [...expected.keys()].sort().map((n) => `${n}.${format}`));
      for (const [name, link] of expected) {
        const path = `${dir}/${sub}/${name}.${format}`;
        assertStringIncludes(r.stdout, `QR code: ${sub}/${name}.${format}\n`);
        // The code holds a secret: only its owner reads it.
        assertEquals((await Deno.stat(path)).mode! & 0o777, 0o600, path);
        const want = withMargin(qrMatrix(link), 4);
        const got = format === "png"
          ? pngModules(await decodePng(await Deno.readFile(path)), want.length)
          : svgModules(await Deno.readTextFile(path));
        assertEquals(got, want, `${path} holds ${link}`);
      }
    }
    assertEquals((await Deno.stat(`${dir}/png`)).mode! & 0o777, 0o700);
  });
});

Deno.test("mtproxy link --qr draws each protocol's code under its links; without it a pipe gets none", async () => {
  await withConfig(TWO_LISTENERS, async (dir) => {
    const r = await mtproxy(["link", "--config", "config.yaml", "--qr"], dir);
    assertEquals(r.code, 0, r.stderr);
    const drawn = terminalCodes(r.stdout);
    const expected = expectedCodes(r.stdout);
    assertEquals(drawn.size, 4);
    assertEquals([...drawn.keys()].sort(), [...expected.values()].sort());
    for (const [link, grid] of drawn) {
      // Two light modules around the code; an odd last row leaves its lower half light too.
      const want = withMargin(qrMatrix(link), 2);
      assertEquals(grid.slice(0, want.length), want, link);
      assert(grid.slice(want.length).every((row) => row.every((dark) => !dark)));
    }
    // The base64url fake-TLS form is the same proxy: no second code for it.
    const b64 = r.stdout.split("\n").findIndex((l) => l.startsWith("  tls (base64url)"));
    assert(!r.stdout.split("\n")[b64 + 2]!.includes("\x1b["), "no code under base64url");

    const plain = await mtproxy(["link", "--config", "config.yaml"], dir);
    assertEquals(plain.code, 0);
    assert(!plain.stdout.includes("\x1b["), plain.stdout);
    assertEquals(
      plain.stdout,
      r.stdout.split("\n").filter((l) => !l.includes("\x1b[")).join("\n"),
    );

    const both = await mtproxy(["link", "--config", "config.yaml", "--qr", "--no-qr"], dir);
    assertEquals(both.code, 2);
    assertStringIncludes(both.stderr, "--qr and --no-qr cannot be used together");
  });
});

Deno.test("mtproxy link --sni --qr-png names a per-SNI user's code after the SNI", async () => {
  const yaml = [
    "listeners:",
    `  - { name: main, port: 1443, secret: "${HEX}", allowed_protocols: [tls] }`,
    "public_host: proxy.example.net",
    "per_sni_secrets: true",
    "",
  ].join("\n");
  await withConfig(yaml, async (dir) => {
    const r = await mtproxy(
      ["link", "--config", "config.yaml", "--sni", "alice.example", "--qr-png", "qr"],
      dir,
    );
    assertEquals(r.code, 0, r.stderr);
    const expected = expectedCodes(r.stdout);
    assertEquals([...expected.keys()], ["main-tls-alice.example"]);
    const link = expected.get("main-tls-alice.example")!;
    assert(!link.includes(HEX), "the user's own secret, not the base one");
    const want = withMargin(qrMatrix(link), 4);
    const png = await Deno.readFile(`${dir}/qr/main-tls-alice.example.png`);
    assertEquals(pngModules(await decodePng(png), want.length), want);

    // Without --sni there is no fake-TLS link, so no code: nothing written, and it says so.
    const none = await mtproxy(["link", "--config", "config.yaml", "--qr-png", "none"], dir);
    assertEquals(none.code, 0, none.stderr);
    assertStringIncludes(none.stderr, "no QR code written to none");
  });
});

Deno.test({
  name: "mtproxy link in a terminal draws the codes unless --no-qr",
  // `script` (util-linux) gives the command a terminal; without it there is none to give.
  ignore: !_hasScript(),
  async fn() {
    await withConfig(TWO_LISTENERS, async (dir) => {
      const inTerminal = async (extra: string[]) => {
        const command = ["run", "-A", MAIN, "link", "--config", "config.yaml", ...extra]
          .map((a) => `'${a}'`).join(" ");
        const out = await new Deno.Command("script", {
          args: ["-q", "-e", "-c", `'${Deno.execPath()}' ${command}`, "/dev/null"],
          cwd: dir,
          env: _env(),
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        }).output();
        assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
        return new TextDecoder().decode(out.stdout).replaceAll("\r\n", "\n");
      };
      const drawn = terminalCodes(await inTerminal([]));
      assertEquals(drawn.size, 4);
      for (const [link, grid] of drawn) {
        assertEquals(grid.slice(0, qrMatrix(link).length + 4), withMargin(qrMatrix(link), 2));
      }
      assertEquals(terminalCodes(await inTerminal(["--no-qr"])).size, 0);
    });
  },
});

Deno.test("qrFileName keeps a code inside its directory", () => {
  assertEquals(qrFileName("main-tls-alice.example"), "main-tls-alice.example");
  assertEquals(qrFileName("../../etc/passwd"), "__.._etc_passwd");
  assertEquals(qrFileName(".hidden"), "_hidden");
  assertEquals(qrFileName("a b/c\\d"), "a_b_c_d");
});

function _hasScript(): boolean {
  try {
    return new Deno.Command("script", { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
}
