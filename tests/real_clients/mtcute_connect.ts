/**
 * Drive mtcute (`@mtcute/node`) through an MTProto proxy with its `MtProxyTcpTransport`, offline.
 *
 * `tests/real_clients_test.ts` runs this in a subprocess and kills it once the fake DC behind the
 * proxy has seen `req_DH_params`; the key exchange can never finish without Telegram's RSA key,
 * so mtcute keeps retrying until then:
 *
 * ```sh
 * deno run -A tests/real_clients/mtcute_connect.ts --port 4443 --secret ee0123... [--dc 2]
 * ```
 *
 * mtcute is kept on loopback: the MTProxy transport dials only the proxy (it ignores DC
 * addresses), the default DCs are 127.0.0.1 anyway, storage is in memory (no session file, no
 * saved DC list), updates are off and test mode is off. It prints `connecting` when it starts and
 * exits by itself after `--max-ms` (default 60 s), printing the outcome.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { BaseTelegramClient, MemoryStorage, MtProxyTcpTransport } from "@mtcute/node";

async function _run(args: string[]): Promise<string> {
  const { values } = parseArgs({
    args,
    options: {
      port: { type: "string" },
      secret: { type: "string" },
      dc: { type: "string", default: "2" },
      "max-ms": { type: "string", default: "60000" },
      // 0 = off ... 5 = verbose; mtcute logs to stderr.
      "log-level": { type: "string", default: "0" },
    },
  });
  const port = Number(values.port);
  if (!Number.isInteger(port) || port <= 0 || port > 65535) {
    throw new RangeError(`Invalid --port: "${values.port}"`);
  }
  const secret = values.secret ?? "";
  if (!/^[0-9a-f]+$/i.test(secret)) throw new RangeError(`Invalid --secret: "${secret}"`);
  const dcId = Number(values.dc);
  const maxMs = Number(values["max-ms"]);

  const loopback = { ipAddress: "127.0.0.1", port, id: dcId };
  const client = new BaseTelegramClient({
    apiId: 1,
    apiHash: "00000000000000000000000000000000",
    storage: new MemoryStorage(),
    transport: new MtProxyTcpTransport({ host: "127.0.0.1", port, secret }),
    defaultDcs: { main: loopback, media: { ...loopback, mediaOnly: true } },
    testMode: false,
    useIpv6: false,
    disableUpdates: true,
    updates: false,
    logLevel: Number(values["log-level"]),
  });
  // Errors are expected (the fake DC closes after req_DH_params); the parent judges by what the
  // fake DC saw.
  client.onError.add((e) => console.error(`mtcute error: ${e.message}`));
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    console.log("connecting");
    const deadline = new Promise<string>((resolve) => {
      timer = setTimeout(() => resolve(`no connection after ${maxMs} ms`), maxMs);
    });
    // connect() only starts the primary connection; a call waits for the auth key, which is what
    // makes mtcute run the key exchange through the proxy.
    const call = (async () => {
      await client.connect();
      await client.call({ _: "help.getNearestDc" });
      return "connected";
    })();
    return await Promise.race([call, deadline]);
  } catch (e) {
    return `connect failed: ${e instanceof Error ? e.message : String(e)}`;
  } finally {
    clearTimeout(timer);
    await client.destroy().catch(() => {});
  }
}

if (import.meta.main) {
  let outcome: string;
  try {
    outcome = await _run(Deno.args);
  } catch (e) {
    outcome = `error: ${e instanceof Error ? e.message : String(e)}`;
  }
  console.log(outcome);
  Deno.exit(0);
}
