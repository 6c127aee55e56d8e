/**
 * Split mode end to end: test clients -> front -> link -> back -> fake middle proxies, with the
 * front's ad tag checked by the fake middle proxy, and the link's failure modes.
 */
import { assert, assertEquals } from "./assert.ts";
import { startTestProxy, TEST_SECRET, testConfig, until } from "./helpers.ts";
import { startFakeMiddleProxy } from "./kit/fake_middle_proxy.ts";
import { startFakeCoreApi } from "./kit/fake_core_api.ts";
import { startFakeDc } from "./kit/fake_dc.ts";
import { connectTestClient, type SecretKind } from "./kit/test_client.ts";
import { randomBytes } from "../lib/crypto.ts";
import type { Config } from "../lib/config/types.ts";
import { startServer } from "../lib/server.ts";

const AD_TAG = Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i);
const PROXY_SECRET = randomBytes(128);
const LINK_SECRET = Uint8Array.from({ length: 16 }, (_, i) => 0x10 + i);
const LINK = { windowBytes: 256 * 1024, keepaliveMs: 1000, timeoutMs: 5000, waitMs: 2000 };

function backConfig(proxyUrls: { secret: string; config: string }): Config {
  const base = testConfig({ proxyUrls, externalIp: "127.0.0.1", telegramMode: "auto" });
  return {
    ...base,
    role: "back",
    listeners: [],
    linkListeners: [{ name: "link1", host: "127.0.0.1", port: 0, tlsDomains: ["example.com"] }],
    fronts: [{ name: "home", secret: LINK_SECRET }],
    defaultTag: null,
    link: LINK,
  };
}

function frontConfig(backPort: number, secret = LINK_SECRET): Config {
  const base = testConfig({ tag: AD_TAG });
  return {
    ...base,
    role: "front",
    backs: [{
      address: { host: "127.0.0.1", port: backPort },
      secret,
      tlsDomain: "example.com",
      links: 2,
    }],
    link: LINK,
  };
}

const KINDS: SecretKind[] = ["plain", "dd", "tls"];

Deno.test("split mode carries every client protocol front -> back -> middle proxy with the front's ad tag", async () => {
  const mp = await startFakeMiddleProxy({
    proxySecret: PROXY_SECRET,
    expectedAdTag: AD_TAG,
    mode: "echo",
  });
  const core = startFakeCoreApi({
    proxySecret: PROXY_SECRET,
    configV4: `default 2;\nproxy_for 2 127.0.0.1:${mp.port};\n`,
  });
  try {
    const back = await startServer(
      backConfig({ secret: core.urls.secretUrl, config: core.urls.configUrl }),
    );
    await using _back = { [Symbol.asyncDispose]: () => back.shutdown() };
    const backPort = back.linkAddresses[0]!.port;
    await using front = await startTestProxy(frontConfig(backPort));
    await until(() => front.server.linksUp() === 2, "both links up");
    for (const kind of KINDS) {
      const client = await connectTestClient({
        port: front.port,
        secret: TEST_SECRET,
        kind,
        dcId: 2,
        maxPadding: 3,
      });
      try {
        for (const size of [64, 4096, 100_000]) {
          const payload = randomBytes(size);
          await client.send(payload, { padding: 0 });
          assertEquals(await client.receive(5000), payload, `${kind}: ${size} bytes`);
        }
      } finally {
        client.close();
      }
    }
    assert(back.linksUp() === 2);
  } finally {
    await mp.close();
    await core.close();
  }
});

Deno.test("a front whose secret the back does not know gets no link, and its clients are refused as link_unavailable", async () => {
  const mp = await startFakeMiddleProxy({ proxySecret: PROXY_SECRET, mode: "echo" });
  const core = startFakeCoreApi({
    proxySecret: PROXY_SECRET,
    configV4: `default 2;\nproxy_for 2 127.0.0.1:${mp.port};\n`,
  });
  try {
    const back = await startServer(
      backConfig({ secret: core.urls.secretUrl, config: core.urls.configUrl }),
    );
    await using _back = { [Symbol.asyncDispose]: () => back.shutdown() };
    const wrong = LINK_SECRET.map((b) => b ^ 0xff);
    const config = frontConfig(back.linkAddresses[0]!.port, wrong);
    await using front = await startTestProxy({ ...config, link: { ...LINK, waitMs: 300 } });
    const client = await connectTestClient({
      port: front.port,
      secret: TEST_SECRET,
      kind: "dd",
      dcId: 2,
      maxPadding: 3,
    });
    try {
      await front.waitForEvent((e) => e.type === "rejected" && e.reason === "link_unavailable");
    } finally {
      client.close();
    }
    assertEquals(front.server.linksUp(), 0);
    assertEquals(back.linksUp(), 0);
  } finally {
    await mp.close();
    await core.close();
  }
});

Deno.test("split mode in direct mode: the back owns the DC connection, the front only sees packets", async () => {
  const dc = await startFakeDc({ mode: "echo" });
  await using _dc = { [Symbol.asyncDispose]: () => dc.close() };
  const back = await startServer({
    ...backConfig({ secret: "http://127.0.0.1:9/s", config: "http://127.0.0.1:9/c" }),
    telegram: { ...testConfig({ dcPorts: { 2: dc.port } }).telegram, mode: "direct" },
  });
  await using _back = { [Symbol.asyncDispose]: () => back.shutdown() };
  await using front = await startTestProxy(frontConfig(back.linkAddresses[0]!.port));
  await until(() => front.server.linksUp() === 2, "both links up");
  for (const kind of KINDS) {
    const client = await connectTestClient({
      port: front.port,
      secret: TEST_SECRET,
      kind,
      dcId: 2,
      maxPadding: 0,
    });
    try {
      for (const size of [64, 4096, 100_000]) {
        const payload = randomBytes(size);
        await client.send(payload, { padding: 0 });
        const got = await client.receive(5000);
        // A padded DC transport may add up to 12 bytes the back cannot tell from the packet.
        assertEquals(got.subarray(0, size), payload, `${kind}: ${size} bytes`);
      }
    } finally {
      client.close();
    }
  }
});
