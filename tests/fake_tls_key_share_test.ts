import { assert, assertEquals, assertThrows } from "./assert.ts";
import { randomBytes } from "../lib/crypto.ts";
import { buildClientHello } from "../lib/protocol/client_hello.ts";
import {
  buildServerHello,
  GROUP_X25519_MLKEM768,
  parseClientHello,
  parseServerHello,
  serverHelloKeyShare,
  signClientHello,
} from "../lib/protocol/fake_tls.ts";

function _hello(secret: Uint8Array) {
  const record = signClientHello(
    buildClientHello({ sni: "example.com" }),
    secret,
    Math.floor(Date.now() / 1000),
  );
  const step = parseClientHello(record);
  assert(step.kind === "hello");
  return step.hello;
}

Deno.test("buildServerHello writes a key share prefix in place, byte for byte as if given whole", () => {
  const secret = randomBytes(16);
  const h = _hello(secret);
  const x25519 = randomBytes(32);
  const ciphertext = randomBytes(1088);
  const app = randomBytes(300);
  for (const extensionOrder of ["key_share_first", "versions_first"] as const) {
    const whole = buildServerHello(h, secret, {
      keyShare: new Uint8Array([...ciphertext, ...x25519]),
      keyShareGroup: GROUP_X25519_MLKEM768,
      appData: app,
      extensionOrder,
    });
    let filled = 0;
    const inPlace = buildServerHello(h, secret, {
      keyShare: x25519,
      keySharePrefix: 1088,
      fillKeySharePrefix: (prefix) => {
        filled += prefix.length;
        prefix.set(ciphertext);
      },
      keyShareGroup: GROUP_X25519_MLKEM768,
      appData: app,
      extensionOrder,
    });
    assertEquals(filled, 1088);
    assertEquals(inPlace, whole);
    assertEquals(parseServerHello(inPlace, h.random, secret), {
      kind: "ok",
      length: inPlace.length,
    });
    const share = serverHelloKeyShare(inPlace);
    assertEquals(share?.group, GROUP_X25519_MLKEM768);
    assertEquals(share?.keyExchange.length, 1120);
    assertEquals(share?.x25519, x25519);
  }
});

Deno.test("buildServerHello refuses a key share prefix it cannot fill", () => {
  const secret = randomBytes(16);
  const h = _hello(secret);
  const base = { keyShare: randomBytes(32), appData: 10 };
  assertThrows(() => buildServerHello(h, secret, { ...base, keySharePrefix: 1088 }), TypeError);
  const fill = (p: Uint8Array) => p.fill(1);
  for (const bad of [-1, 1.5, NaN]) {
    assertThrows(
      () => buildServerHello(h, secret, { ...base, keySharePrefix: bad, fillKeySharePrefix: fill }),
      RangeError,
    );
  }
  // An empty prefix needs no filler.
  assert(buildServerHello(h, secret, { ...base, keySharePrefix: 0 }).length > 0);
});
