/**
 * lib/protocol/user_match.ts: the probes answer exactly as the full checks do (openClientInit,
 * verifyClientHello, node:crypto), on the spec's vectors and on random inputs; and through real
 * sockets, a proxy with many users still picks the same user and refuses the same clients.
 */
import nodeCrypto from "node:crypto";
import { assert, assertEquals, assertThrows } from "./assert.ts";
import { startTestProxy, testConfig, testUser } from "./helpers.ts";
import { bytesOf, vector } from "./vectors.ts";
import { seededRandom } from "./kit/seeded.ts";
import { startFakeDc } from "./kit/fake_dc.ts";
import { connectTestClient, type SecretKind, type TestClient } from "./kit/test_client.ts";
import { _aes256Word2ForTest, HelloProbe, InitProbe } from "../lib/protocol/user_match.ts";
import { createInit, openClientInit, type TransportTag } from "../lib/protocol/obfuscated2.ts";
import { parseClientHello, signClientHello, verifyClientHello } from "../lib/protocol/fake_tls.ts";
import { buildClientHello } from "../lib/protocol/client_hello.ts";
import { randomBytes } from "../lib/crypto.ts";
import type { Config, UserConfig } from "../lib/config/types.ts";
import type { ProxyEvent } from "../lib/client/events.ts";

function seededBytes(rand: () => number, n: number): Uint8Array {
  return Uint8Array.from({ length: n }, () => Math.floor(rand() * 256));
}

/** openClientInit's verdict, with its ciphers closed. */
function opens(init: Uint8Array, secret: Uint8Array): boolean {
  const s = openClientInit(init, secret);
  s?.decryptor.close();
  s?.encryptor.close();
  return s !== null;
}

Deno.test("the pure-JS AES-256 block gives node:crypto's bytes 8..11 for any key and block", () => {
  const rand = seededRandom(1);
  for (let i = 0; i < 200; i++) {
    const key = seededBytes(rand, 32);
    const block = seededBytes(rand, 16);
    const c = nodeCrypto.createCipheriv("aes-256-ecb", key, null).setAutoPadding(false);
    const want = new Uint8Array(c.update(block));
    c.final();
    const word = new DataView(want.buffer).getUint32(8);
    assertEquals(_aes256Word2ForTest(key, block), word);
  }
});

Deno.test("InitProbe accepts the spec's client inits with their secret and refuses a wrong one", () => {
  for (const id of ["obf_abridged_dc2", "obf_intermediate_dcm4", "obf_secure_dc203"]) {
    const v = vector(id);
    const probe = new InitProbe(bytesOf(v, "client_init"));
    assert(probe.opens(bytesOf(v, "secret")), id);
    assert(!probe.opens(new Uint8Array(16)), id);
  }
  const wrong = vector("obf_wrong_secret");
  assertEquals(new InitProbe(bytesOf(wrong, "client_init")).opens(bytesOf(wrong, "secret")), false);
});

Deno.test("InitProbe agrees with openClientInit for every tag, secret and counter carry", () => {
  const rand = seededRandom(2);
  const tags: TransportTag[] = ["abridged", "intermediate", "padded"];
  for (let i = 0; i < 300; i++) {
    const secret = seededBytes(rand, 16);
    const random = seededBytes(rand, 64);
    // Counters near 2^128 - 1 and 2^32 - 1: the + 3 of the tag's block must carry right.
    if (i % 3 === 1) random.fill(0xff, 40, 56);
    if (i % 3 === 2) random.fill(0xff, 52, 56);
    const { wire, encryptor, decryptor } = createInit(random, tags[i % 3]!, 2, { secret });
    encryptor.close();
    decryptor.close();
    const probe = new InitProbe(wire);
    assert(probe.opens(secret), `init ${i}`);
    assert(opens(wire, secret));
    const other = seededBytes(rand, 16);
    assertEquals(probe.opens(other), opens(wire, other), `init ${i}, other secret`);
  }
});

Deno.test("InitProbe says yes exactly when openClientInit does, on random bytes", () => {
  const rand = seededRandom(3);
  const secret = seededBytes(rand, 16);
  let yes = 0;
  // Random inits decrypt to a known tag 3 times in 2^32; set the tag bytes to force some.
  for (let i = 0; i < 2000; i++) {
    const init = seededBytes(rand, 64);
    assertEquals(new InitProbe(init).opens(secret), opens(init, secret), `init ${i}`);
  }
  for (let i = 0; i < 50; i++) {
    const init = seededBytes(rand, 64);
    // Make the decrypted tag 0xdddddddd with a stray byte now and then.
    const probe = createInit(init, "padded", 1, { secret });
    probe.encryptor.close();
    probe.decryptor.close();
    const wire = probe.wire;
    if (i % 2 === 0) wire[56 + (i % 4)]! ^= 1 << (i % 8);
    const got = new InitProbe(wire).opens(secret);
    assertEquals(got, opens(wire, secret), `forced init ${i}`);
    if (got) yes++;
  }
  assertEquals(yes, 25);
});

Deno.test("InitProbe leaves secrets of another length to the full check", () => {
  const init = randomBytes(64);
  assert(new InitProbe(init).opens(new Uint8Array(20)));
  assertThrows(() => new InitProbe(new Uint8Array(63)), RangeError, "64 bytes");
});

function helloOf(record: Uint8Array) {
  const step = parseClientHello(record);
  if (step.kind !== "hello") throw new Error(`Not a hello: ${step.kind}`);
  return step.hello;
}

Deno.test("HelloProbe gives the spec's fake-TLS verdicts, an expired hello included", () => {
  for (const id of ["tls_legacy_valid", "tls_modern_valid"]) {
    const v = vector(id);
    const probe = new HelloProbe(helloOf(bytesOf(v, "client_hello")));
    const got = probe.check(bytesOf(v, "secret"), Number(v.inputs.now), 120);
    assertEquals(got, { kind: "ok", timestamp: v.expected.timestamp as number }, id);
  }
  const expired = vector("tls_legacy_expired");
  assertEquals(
    new HelloProbe(helloOf(bytesOf(expired, "client_hello")))
      .check(bytesOf(expired, "secret"), Number(expired.inputs.now), 120),
    { kind: "bad_timestamp", timestamp: expired.expected.timestamp as number },
  );
  const modern = new HelloProbe(helloOf(bytesOf(vector("tls_modern_valid"), "client_hello")));
  const wrong = bytesOf(vector("tls_modern_wrong_secret"), "secret");
  assertEquals(modern.check(wrong, 1_700_000_002, 120), { kind: "bad_digest" });
});

Deno.test("HelloProbe agrees with verifyClientHello and node:crypto for many secrets", () => {
  const rand = seededRandom(4);
  const now = 1_700_000_000;
  for (const mlkem of [false, true]) {
    const secrets = Array.from({ length: 40 }, () => seededBytes(rand, 16));
    const signer = secrets[17]!;
    const record = signClientHello(
      buildClientHello({ sni: "example.com", mlkem }),
      signer,
      now,
    );
    const hello = helloOf(record);
    const probe = new HelloProbe(hello);
    for (const s of secrets) {
      for (const at of [now, now + 599, now - 601]) {
        assertEquals(probe.check(s, at, 600), verifyClientHello(hello, s, at, 600));
      }
      const zeroed = record.slice();
      zeroed.fill(0, 11, 43);
      const mac = new Uint8Array(nodeCrypto.createHmac("sha256", s).update(zeroed).digest());
      const fits = mac.subarray(0, 28).every((b, i) => b === hello.random[i]);
      assertEquals(probe.check(s, now, 600).kind !== "bad_digest", fits);
    }
    assertEquals(probe.check(signer, now, 600), { kind: "ok", timestamp: now });
    assertEquals(probe.check(signer, now + 601, 600), { kind: "bad_timestamp", timestamp: now });
  }
});

// ---------------------------------------------------------------------------------------------
// Through real sockets

function withUsers(base: Config, users: UserConfig[]): Config {
  return { ...base, users, listeners: base.listeners.map((l) => ({ ...l, users: null })) };
}

async function echo(client: TestClient): Promise<void> {
  const payload = randomBytes(64);
  await client.send(payload, { padding: 0 });
  assertEquals((await client.receive(5000)).subarray(0, 64), payload);
}

Deno.test("a proxy with 400 users matches the right user cold, and refuses as before", async () => {
  const dc = await startFakeDc({ mode: "echo" });
  await using _dc = { [Symbol.asyncDispose]: () => dc.close() };
  const users = Array.from({ length: 400 }, (_, i) => testUser(`u${i}`));
  // Two users with one secret: the first in order wins, as it always did.
  users[398] = testUser("twin_a", { secret: users[399]!.secret });
  users[399] = testUser("twin_b", { secret: users[398]!.secret });
  users[200] = testUser("off", { enabled: false });
  await using proxy = await startTestProxy(
    withUsers(testConfig({ dcPorts: { 2: dc.port } }), users),
  );
  const kinds: SecretKind[] = ["plain", "dd", "tls"];
  const picks = [0, 1, 137, 250, 397, 398];
  for (const i of picks) {
    for (const kind of kinds) {
      const c = await connectTestClient({
        port: proxy.port,
        secret: users[i]!.secret,
        kind,
        dcId: 2,
      });
      try {
        await echo(c);
      } finally {
        await c.close();
      }
    }
  }
  const established = proxy.events.filter((e): e is Extract<ProxyEvent, { type: "established" }> =>
    e.type === "established"
  );
  assertEquals(
    established.map((e) => `${e.user}/${e.protocol}`),
    picks.flatMap((i) => kinds.map((k) => `${users[i]!.name}/${k}`)),
  );
  // A disabled user is still matched (and refused for it); a stranger is refused as before.
  const seen = proxy.events.length;
  for (const kind of kinds) {
    for (const secret of [users[200]!.secret, randomBytes(16)]) {
      const c = await connectTestClient({ port: proxy.port, secret, kind, dcId: 2 }).catch(
        () => null,
      );
      if (c) {
        await c.send(randomBytes(32)).catch(() => {});
        await c.closed();
        await c.close();
      }
    }
  }
  await proxy.waitForEvent(() =>
    proxy.events.slice(seen).filter((e) => e.type === "rejected").length === 6
  ).catch(() => {});
  const reasons = proxy.events.slice(seen).filter((e) => e.type === "rejected")
    .map((e) => (e as Extract<ProxyEvent, { type: "rejected" }>).reason);
  assertEquals(reasons, [
    "user_disabled",
    "bad_secret",
    "user_disabled",
    "bad_secret",
    "user_disabled",
    "tls_bad_digest",
  ]);
});
