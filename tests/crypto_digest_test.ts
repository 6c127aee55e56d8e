import { assert, assertEquals } from "./assert.ts";
import {
  type CipherBackend,
  defaultCipherBackend,
  digestParts,
  hmacSha256,
  hmacSha256Parts,
  md5,
  randomBytes,
  sha1,
  sha256,
} from "../lib/crypto.ts";

const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
const enc = (s: string) => new TextEncoder().encode(s);
const BACKENDS: CipherBackend[] = defaultCipherBackend() === "openssl"
  ? ["openssl", "node"]
  : ["node"];

Deno.test("digestParts matches known answers on every backend", () => {
  for (const backend of BACKENDS) {
    const o = { backend };
    assertEquals(
      hex(digestParts("sha256", [enc("a"), new Uint8Array(0), enc("bc")], o)),
      "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    );
    assertEquals(
      hex(digestParts("sha256", [], o)),
      "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    );
    assertEquals(
      hex(digestParts("sha1", [enc("abc")], o)),
      "a9993e364706816aba3e25717850c26c9cd0d89d",
    );
    assertEquals(hex(digestParts("md5", [enc("abc")], o)), "900150983cd24fb0d6963f7d28e17f72");
  }
  assertEquals(hex(sha1(enc("ab"), enc("c"))), "a9993e364706816aba3e25717850c26c9cd0d89d");
  assertEquals(hex(md5(enc("a"), enc("bc"))), "900150983cd24fb0d6963f7d28e17f72");
});

Deno.test("hmacSha256Parts matches RFC 4231 on every backend, short and long keys", () => {
  // RFC 4231 test cases 2 (short key) and 6 (a 131-byte key, hashed first).
  const long = new Uint8Array(131).fill(0xaa);
  for (const backend of BACKENDS) {
    const o = { backend };
    assertEquals(
      hex(hmacSha256Parts(enc("Jefe"), [enc("what do ya want "), enc("for nothing?")], o)),
      "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    );
    assertEquals(
      hex(
        hmacSha256Parts(long, [enc("Test Using Larger Than Block-Size Key - Hash Key First")], o),
      ),
      "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
    );
  }
});

Deno.test("OpenSSL and node:crypto digests agree on random inputs in any split", () => {
  if (!BACKENDS.includes("openssl")) return;
  for (let i = 0; i < 200; i++) {
    const data = randomBytes(i * 37);
    const key = randomBytes(i % 100);
    const cut1 = i % (data.length + 1);
    const cut2 = Math.floor((cut1 + data.length) / 2);
    const parts = [data.subarray(0, cut1), data.subarray(cut1, cut2), data.subarray(cut2)];
    for (const algorithm of ["sha256", "sha1", "md5"] as const) {
      assertEquals(
        hex(digestParts(algorithm, parts, { backend: "openssl" })),
        hex(digestParts(algorithm, [data], { backend: "node" })),
      );
    }
    assertEquals(
      hex(hmacSha256Parts(key, parts, { backend: "openssl" })),
      hex(hmacSha256Parts(key, [data], { backend: "node" })),
    );
  }
});

Deno.test("Digests return a fresh array each call", () => {
  const a = sha256(enc("x"));
  const b = sha256(enc("x"));
  assert(a !== b && a.buffer !== b.buffer);
  const m = hmacSha256(enc("k"), enc("x"));
  const n = hmacSha256(enc("k"), enc("x"));
  assert(m.buffer !== n.buffer);
  assertEquals(hex(m), hex(n));
});
