/**
 * Real Telegram clients through the proxy to a fake DC on 127.0.0.1 (direct mode) or to a fake
 * middle proxy (middle-proxy mode, with an ad tag), for plain, `dd` and `ee` secrets: TDLib 1.8.65 through `tdl` (`pingProxy` returns a latency; `testProxy` gets as far
 * as `req_DH_params`) and mtcute 0.30.3 (its `MtProxyTcpTransport` gets as far as
 * `req_DH_params`). Neither can finish the key exchange: the fake DC has no Telegram RSA key.
 *
 * The proxy and the fake DC run in this process. Each client runs in a subprocess
 * (`tests/real_clients/*.ts`) under a deadline and is killed in `finally`: the client libraries
 * start native threads and timers that would trip the sanitizers or keep this process alive.
 * Their npm packages (about 60 MB; pinned in deno.json and deno.lock) are downloaded on the first
 * run: Deno installs every locked npm package when the test process starts, and the first test
 * here also runs `deno cache` on the client scripts under a deadline fit for a download.
 * Installing, running the clients and the checks are in `tests/kit/real_clients.ts`, shared with
 * the split-mode tests (`tests/real_clients_split_test.ts`).
 *
 * @module
 */
import { assert, assertEquals } from "./assert.ts";
import { startTestProxy, TEST_SECRET, testConfig, type TestProxy } from "./helpers.ts";
import { type FakeDc, startFakeDc } from "./kit/fake_dc.ts";
import { type FakeMiddleProxy, startFakeMiddleProxy } from "./kit/fake_middle_proxy.ts";
import { startFakeCoreApi } from "./kit/fake_core_api.ts";
import {
  checkEstablished,
  checkInits,
  checkMiddle,
  checkPing,
  describe,
  ensureInstalled,
  established,
  findDhParams,
  findMiddleDhParams,
  json,
  KINDS,
  runMtcute,
  runTdlib,
  TLS_DOMAIN,
} from "./kit/real_clients.ts";
import { randomBytes } from "../lib/crypto.ts";

/** A fake DC in mtproto mode and a proxy routing every DC id (±1..5) to it. */
async function _withProxyAndDc(fn: (proxy: TestProxy, dc: FakeDc) => Promise<void>): Promise<void> {
  const dc = await startFakeDc({ mode: "mtproto" });
  try {
    const dcPorts: Record<number, number> = {};
    for (let id = 1; id <= 5; id++) {
      dcPorts[id] = dc.port;
      dcPorts[-id] = dc.port;
    }
    await using proxy = await startTestProxy(
      testConfig({ dcPorts, secret: TEST_SECRET, tlsDomains: [TLS_DOMAIN] }),
    );
    await fn(proxy, dc);
  } finally {
    await dc.close();
  }
}

for (const kind of KINDS) {
  Deno.test(`TDLib pingProxy and testProxy work through the proxy with ${kind.name} secret`, async () => {
    await ensureInstalled();
    await _withProxyAndDc(async (proxy, dc) => {
      const { run, report } = await runTdlib(proxy, kind);
      const what = describe(`TDLib with ${kind.name} secret`, run);
      checkPing(report, what);

      // pingProxy: one connection, two req_pq_multi on it (the second one is timed).
      // testProxy: one connection that gets as far as req_DH_params, with both nonces right.
      const dh = findDhParams(dc);
      assert(
        dh,
        `testProxy did not reach req_DH_params: fake DC ${json(dc.events)}; ` +
          `proxy ${json(proxy.events)}; ${what}`,
      );
      assert(dh.nonceOk && dh.serverNonceOk, `req_DH_params nonces: ${json(dh)}`);
      const pqs = dc.events.filter((e) => e.type === "req_pq");
      assert(pqs.length >= 3, `req_pq count ${pqs.length}: ${json(dc.events)}`);
      checkInits(dc, kind, what);
      checkEstablished(proxy, kind, what);
      // For ee, "tls" sessions mean the proxy accepted TDLib's fake-TLS hello and TDLib
      // accepted the proxy's answer (it checks the server HMAC before sending anything).
      const rejected = proxy.events.filter((e) => e.type === "rejected");
      assertEquals(rejected, [], `the proxy rejected a TDLib connection; ${what}`);
      assertEquals(
        established(proxy.events).map((e) => e.requestedDc).sort(),
        [1, 2],
        `DC ids: pingProxy asks for the main DC (1 in a fresh database), testProxy for 2`,
      );
    });
  });
}

for (const kind of KINDS) {
  Deno.test(`mtcute MtProxyTcpTransport reaches req_DH_params through the proxy with ${kind.name} secret`, async () => {
    await ensureInstalled();
    await _withProxyAndDc(async (proxy, dc) => {
      const run = await runMtcute(proxy, kind, () => findDhParams(dc) !== undefined);
      const what = describe(`mtcute with ${kind.name} secret`, run);
      const dh = findDhParams(dc);
      assert(
        dh,
        `mtcute did not reach req_DH_params: fake DC ${json(dc.events)}; ` +
          `proxy ${json(proxy.events)}; ${what}`,
      );
      assert(dh.nonceOk && dh.serverNonceOk, `req_DH_params nonces: ${json(dh)}; ${what}`);
      checkInits(dc, kind, what);
      checkEstablished(proxy, kind, what);
      const first = established(proxy.events)[0]!;
      assertEquals(first.requestedDc, 2, `DC id mtcute asked for; ${what}`);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Middle-proxy mode: the same clients, multiplexed over RPC connections to a fake middle proxy.

const AD_TAG = Uint8Array.from({ length: 16 }, (_, i) => 0x10 + i);

/** A fake middle proxy in mtproto mode for every DC id (±1..5), and a proxy with an ad tag. */
async function _withProxyAndMiddle(
  fn: (proxy: TestProxy, mp: FakeMiddleProxy) => Promise<void>,
): Promise<void> {
  const proxySecret = randomBytes(128);
  const mp = await startFakeMiddleProxy({ proxySecret, expectedAdTag: AD_TAG, mode: "mtproto" });
  const lines = ["default 2;"];
  for (let id = 1; id <= 5; id++) {
    lines.push(`proxy_for ${id} 127.0.0.1:${mp.port};`, `proxy_for -${id} 127.0.0.1:${mp.port};`);
  }
  const core = startFakeCoreApi({ proxySecret, configV4: lines.join("\n") + "\n" });
  try {
    await using proxy = await startTestProxy(testConfig({
      secret: TEST_SECRET,
      tlsDomains: [TLS_DOMAIN],
      tag: AD_TAG,
      proxyUrls: { secret: core.urls.secretUrl, config: core.urls.configUrl },
      externalIp: "127.0.0.1",
    }));
    await fn(proxy, mp);
  } finally {
    await mp.close();
    await core.close();
  }
}

for (const kind of KINDS) {
  Deno.test(`TDLib pingProxy and testProxy work in middle-proxy mode with ${kind.name} secret`, async () => {
    await ensureInstalled();
    await _withProxyAndMiddle(async (proxy, mp) => {
      const { run, report } = await runTdlib(proxy, kind);
      const what = describe(`TDLib (middle mode) with ${kind.name} secret`, run);
      assert(report["ok"] === true, what);
      const dh = findMiddleDhParams(mp);
      assert(
        dh,
        `testProxy did not reach req_DH_params: fake middle proxy ${json(mp.events)}; ` +
          `proxy ${json(proxy.events)}; ${what}`,
      );
      assert(dh.nonceOk && dh.serverNonceOk, `req_DH_params nonces: ${json(dh)}`);
      const pqs = mp.events.filter((e) => e.type === "req_pq");
      assert(pqs.length >= 3, `req_pq count ${pqs.length}: ${json(mp.events)}`);
      checkMiddle(mp, kind, what);
      checkEstablished(proxy, kind, what);
      const rejected = proxy.events.filter((e) => e.type === "rejected");
      assertEquals(rejected, [], `the proxy rejected a TDLib connection; ${what}`);
    });
  });
}

for (const kind of KINDS) {
  Deno.test(`mtcute MtProxyTcpTransport reaches req_DH_params in middle-proxy mode with ${kind.name} secret`, async () => {
    await ensureInstalled();
    await _withProxyAndMiddle(async (proxy, mp) => {
      const run = await runMtcute(proxy, kind, () => findMiddleDhParams(mp) !== undefined);
      const what = describe(`mtcute (middle mode) with ${kind.name} secret`, run);
      const dh = findMiddleDhParams(mp);
      assert(
        dh,
        `mtcute did not reach req_DH_params: fake middle proxy ${json(mp.events)}; ` +
          `proxy ${json(proxy.events)}; ${what}`,
      );
      assert(dh.nonceOk && dh.serverNonceOk, `req_DH_params nonces: ${json(dh)}; ${what}`);
      checkMiddle(mp, kind, what);
      checkEstablished(proxy, kind, what);
    });
  });
}
