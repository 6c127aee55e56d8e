import { assert, assertEquals } from "./assert.ts";
import { randomBytes, x25519PublicKey, x25519SharedSecret } from "../lib/crypto.ts";

const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

Deno.test("x25519PublicKey gives fresh, canonical curve points when no private key is given", () => {
  const seen = new Set<string>();
  for (let i = 0; i < 50; i++) {
    const pub = x25519PublicKey();
    assertEquals(pub.length, 32);
    assertEquals(pub.constructor, Uint8Array);
    assertEquals(pub.byteOffset, 0);
    assertEquals(pub.buffer.byteLength, 32);
    // A u-coordinate reduced modulo 2^255 - 19: the top bit is never set.
    assert((pub[31]! & 0x80) === 0);
    seen.add(hex(pub));
    // A real public key: key agreement with it works on both backends and agrees.
    const own = randomBytes(32);
    assertEquals(
      hex(x25519SharedSecret(own, pub, { backend: "openssl" })),
      hex(x25519SharedSecret(own, pub, { backend: "node" })),
    );
  }
  assertEquals(seen.size, 50);
});

Deno.test("x25519PublicKey with a forced backend and no key still gives a random key", () => {
  for (const backend of ["openssl", "node"] as const) {
    const a = x25519PublicKey(undefined, { backend });
    const b = x25519PublicKey(undefined, { backend });
    assertEquals(a.length, 32);
    assert(hex(a) !== hex(b));
  }
});
