import { assert, assertEquals, assertThrows } from "./assert.ts";
import {
  createAes,
  defaultCipherBackend,
  hmacSha256,
  randomBytes,
  sha256,
  x25519PublicKey,
} from "../lib/crypto.ts";

Deno.test("OpenSSL is the default cipher backend on this host", () => {
  assertEquals(defaultCipherBackend(), "openssl");
});

Deno.test("OpenSSL and node:crypto AES-CTR produce identical bytes for any chunking", () => {
  const key = randomBytes(32);
  const iv = randomBytes(16);
  const data = randomBytes(70_000);
  const viaNode = data.slice();
  const node = createAes("ctr", key, iv, { backend: "node" });
  node.update(viaNode);
  node.close();
  for (const chunk of [1, 7, 16, 1000, 65536]) {
    const viaSsl = data.slice();
    const ssl = createAes("ctr", key, iv, { backend: "openssl" });
    for (let off = 0; off < viaSsl.length; off += chunk) {
      ssl.update(viaSsl.subarray(off, Math.min(viaSsl.length, off + chunk)));
    }
    ssl.close();
    assertEquals(viaSsl, viaNode);
  }
});

Deno.test("OpenSSL and node:crypto AES-CBC agree and round-trip across calls", () => {
  const key = randomBytes(32);
  const iv = randomBytes(16);
  const data = randomBytes(4096);
  const results = (["openssl", "node"] as const).map((backend) => {
    const enc = createAes("cbc-encrypt", key, iv, { backend });
    const buf = data.slice();
    enc.update(buf.subarray(0, 1024));
    enc.update(buf.subarray(1024));
    enc.close();
    const dec = createAes("cbc-decrypt", key, iv, { backend });
    const back = buf.slice();
    dec.update(back.subarray(0, 16));
    dec.update(back.subarray(16));
    dec.close();
    assertEquals(back, data);
    return buf;
  });
  assertEquals(results[0], results[1]);
});

Deno.test("CBC cipher refuses a length that is not a multiple of 16", () => {
  const enc = createAes("cbc-encrypt", randomBytes(32), randomBytes(16));
  assertThrows(() => enc.update(new Uint8Array(15)), RangeError);
  enc.close();
  assertThrows(() => enc.update(new Uint8Array(16)), Error, "closed");
});

Deno.test("sha256 and hmacSha256 match known answers", () => {
  const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  assertEquals(
    hex(sha256(new TextEncoder().encode("abc"))),
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
  );
  const mac = hmacSha256(
    new TextEncoder().encode("key"),
    new TextEncoder().encode("The quick brown fox jumps over the lazy dog"),
  );
  assert(hex(mac).startsWith("f7bc83f430538424b13298e6aa6fb143"));
});

Deno.test("interleaved OpenSSL CTR streams on the shared context stay independent", () => {
  const streams = Array.from({ length: 5 }, () => {
    const key = randomBytes(32);
    const iv = randomBytes(16);
    iv.fill(0xff, 8); // the counter carries across bytes soon
    return {
      ssl: createAes("ctr", key, iv, { backend: "openssl" }),
      node: createAes("ctr", key, iv, { backend: "node" }),
    };
  });
  for (let round = 0; round < 200; round++) {
    for (const s of streams) {
      const data = randomBytes(1 + Math.floor(Math.random() * 100));
      const a = data.slice();
      const b = data.slice();
      s.ssl.update(a);
      s.node.update(b);
      assertEquals(a, b);
    }
  }
  for (const s of streams) {
    s.ssl.close();
    s.node.close();
  }
});

Deno.test("x25519PublicKey matches RFC 7748 on both backends", () => {
  const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  const priv = Uint8Array.from(
    "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a".match(/../g)!.map((h) =>
      parseInt(h, 16)
    ),
  );
  const expected = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
  assertEquals(hex(x25519PublicKey(priv, { backend: "openssl" })), expected);
  assertEquals(hex(x25519PublicKey(priv, { backend: "node" })), expected);
  assert(hex(x25519PublicKey()) !== hex(x25519PublicKey()));
});
