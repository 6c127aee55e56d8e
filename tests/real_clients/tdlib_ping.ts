/**
 * Drive TDLib (the official client library, through `tdl`) via an MTProto proxy, offline.
 *
 * `tests/real_clients_test.ts` runs this in a subprocess, because TDLib runs native threads that
 * the test sanitizers would see and that can keep a process alive:
 *
 * ```sh
 * deno run -A tests/real_clients/tdlib_ping.ts --port 4443 --secret dd0123... \
 *   [--test-proxy] [--dir /tmp/db] [--verbosity 0]
 * ```
 *
 * It calls `pingProxy` (and with `--test-proxy` then `testProxy`) for a proxy on 127.0.0.1 and
 * prints one JSON line ({@linkcode TdlibReport}) to stdout. TDLib is kept off the network:
 * `setNetworkType networkTypeNone` goes in before `setTdlibParameters`, so it never dials its
 * built-in DC addresses, and `pingProxy`/`testProxy` reach only the proxy given as an IP literal.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import * as tdl from "tdl";
// Importing the manifest makes Deno install the platform package; `libtdjson.so` sits next to it.
// (The `prebuilt-tdlib` meta package lists platform packages that are missing from the registry,
// which Deno's resolver rejects, so the platform package is used directly.)
import prebuilt from "@prebuilt-tdlib/linux-x64-glibc/package.json" with {
  type: "json",
};

/** What the script prints, as one JSON line. */
export interface TdlibReport {
  ok: boolean;
  /** TDLib's version string, from `getOption version`. */
  version?: string;
  /** `pingProxy` result in seconds. */
  seconds?: number;
  /** How `testProxy` ended (it cannot succeed without Telegram's RSA key). */
  testProxy?: string;
  error?: string;
}

const MANIFEST_URL = import.meta.resolve("@prebuilt-tdlib/linux-x64-glibc/package.json");

/** Path of the `libtdjson.so` shipped in the pinned platform package. */
export function tdjsonPath(): string {
  return fileURLToPath(new URL("libtdjson.so", MANIFEST_URL));
}

function _message(e: unknown): string {
  if (e instanceof Error) return e.message;
  if (typeof e === "object" && e !== null && "message" in e) return String(e.message);
  return String(e);
}

// tdl's bundled typings import the `tdlib-types` package, which it does not depend on, so
// requests and answers are loosely typed here.
type TdObject = { _: string; [key: string]: unknown };
type Invoke = (request: TdObject) => Promise<TdObject>;

async function _run(args: string[]): Promise<TdlibReport> {
  const { values } = parseArgs({
    args,
    options: {
      port: { type: "string" },
      secret: { type: "string" },
      "test-proxy": { type: "boolean", default: false },
      "test-proxy-dc": { type: "string", default: "2" },
      // Database and files go here; a temporary directory (removed at the end) when not given.
      dir: { type: "string" },
      // TDLib's log level (0 fatal ... 4 debug); the log goes to stderr.
      verbosity: { type: "string", default: "0" },
    },
  });
  const port = Number(values.port);
  if (!Number.isInteger(port) || port <= 0 || port > 65535) {
    throw new RangeError(`Invalid --port: "${values.port}"`);
  }
  const secret = values.secret ?? "";
  if (!/^[0-9a-f]+$/i.test(secret)) throw new RangeError(`Invalid --secret: "${secret}"`);
  if (prebuilt.tdlib.version !== "1.8.65") {
    throw new Error(`Unexpected TDLib version in the package: "${prebuilt.tdlib.version}"`);
  }

  tdl.configure({ tdjson: tdjsonPath(), verbosityLevel: Number(values.verbosity) });
  const ownDir = values.dir === undefined;
  const dir = values.dir ?? await Deno.makeTempDir({ prefix: "mtproxy-tdlib-" });
  const client = tdl.createBareClient();
  const invoke = client.invoke as unknown as Invoke;
  const report: TdlibReport = { ok: false };
  try {
    const version = await invoke({ _: "getOption", name: "version" });
    report.version = String(version["value"]);
    // Sent before the parameters: TDLib would otherwise start dialing its built-in DCs as soon
    // as it has them. It holds the request (no answer) until the parameters arrive, so both
    // are awaited together.
    const offline = invoke({ _: "setNetworkType", type: { _: "networkTypeNone" } });
    const parameters = invoke({
      _: "setTdlibParameters",
      use_test_dc: false,
      database_directory: `${dir}/db`,
      files_directory: `${dir}/files`,
      database_encryption_key: "",
      use_file_database: false,
      use_chat_info_database: false,
      use_message_database: false,
      use_secret_chats: false,
      api_id: 1,
      api_hash: "00000000000000000000000000000000",
      system_language_code: "en",
      device_model: "mtproxy-test",
      system_version: "",
      application_version: "1.0",
    });
    await Promise.all([offline, parameters]);
    const proxy = {
      _: "proxy",
      server: "127.0.0.1",
      port,
      type: { _: "proxyTypeMtproto", secret },
    };
    const ping = await invoke({ _: "pingProxy", proxy });
    report.seconds = Number(ping["seconds"]);
    if (values["test-proxy"]) {
      try {
        await invoke({
          _: "testProxy",
          proxy,
          dc_id: Number(values["test-proxy-dc"]),
          timeout: 10,
        });
        report.testProxy = "ok";
      } catch (e) {
        report.testProxy = _message(e);
      }
    }
    report.ok = true;
  } finally {
    try {
      await client.close();
    } catch {
      // Closing is best effort: the report is what matters.
    }
    if (ownDir) await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
  return report;
}

if (import.meta.main) {
  let report: TdlibReport;
  try {
    report = await _run(Deno.args);
  } catch (e) {
    report = { ok: false, error: _message(e) };
  }
  console.log(JSON.stringify(report));
  // TDLib's receive thread can outlive the client; leave without waiting for it.
  Deno.exit(0);
}
