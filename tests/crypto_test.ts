import { assert, assertEquals, assertThrows } from "./assert.ts";
import {
  createAes,
  createAesGcm,
  defaultCipherBackend,
  hkdfSha256,
  hmacSha256,
  randomBytes,
  sha256,
  x25519PublicKey,
  x25519SharedSecret,
} from "../lib/crypto.ts";
import { hex, unhex } from "./vectors.ts";

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

const BACKENDS = ["openssl", "node"] as const;

/** The GCM specification's (McGrew and Viega) AES-256 cases with a 96-bit IV: 13-16. */
const GCM_VECTORS = [
  {
    name: "test case 13 (empty)",
    key: "0000000000000000000000000000000000000000000000000000000000000000",
    iv: "000000000000000000000000",
    aad: "",
    plain: "",
    cipher: "",
    tag: "530f8afbc74536b9a963b4f1c4cb738b",
  },
  {
    name: "test case 14 (one zero block)",
    key: "0000000000000000000000000000000000000000000000000000000000000000",
    iv: "000000000000000000000000",
    aad: "",
    plain: "00000000000000000000000000000000",
    cipher: "cea7403d4d606b6e074ec5d3baf39d18",
    tag: "d0d1c8a799996bf0265b98b5d48ab919",
  },
  {
    name: "test case 15 (64 bytes, no AAD)",
    key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
    iv: "cafebabefacedbaddecaf888",
    aad: "",
    plain: "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72" +
      "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
    cipher: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa" +
      "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
    tag: "b094dac5d93471bdec1a502270e3cc6c",
  },
  {
    name: "test case 16 (60 bytes, 20 bytes of AAD)",
    key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
    iv: "cafebabefacedbaddecaf888",
    aad: "feedfacedeadbeeffeedfacedeadbeefabaddad2",
    plain: "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72" +
      "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
    cipher: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa" +
      "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
    tag: "76fc6ece0f4e1768cddf8853bb2d551b",
  },
];

Deno.test("createAesGcm matches the GCM specification's AES-256 vectors on both backends", () => {
  for (const backend of BACKENDS) {
    for (const v of GCM_VECTORS) {
      const aead = createAesGcm(unhex(v.key), { backend });
      const data = unhex(v.plain);
      const tag = new Uint8Array(16);
      aead.seal(unhex(v.iv), unhex(v.aad), data, tag);
      assertEquals(hex(data), v.cipher, `${backend} ${v.name}`);
      assertEquals(hex(tag), v.tag, `${backend} ${v.name}`);
      assert(aead.open(unhex(v.iv), unhex(v.aad), data, tag), `${backend} ${v.name}`);
      assertEquals(hex(data), v.plain, `${backend} ${v.name}`);
      aead.close();
    }
  }
});

Deno.test("createAesGcm backends are byte-identical and interchangeable for one key", () => {
  const key = randomBytes(32);
  const ssl = createAesGcm(key, { backend: "openssl" });
  const node = createAesGcm(key, { backend: "node" });
  for (const size of [0, 1, 15, 16, 17, 1000, 16384, 70_000]) {
    const nonce = randomBytes(12);
    const aad = randomBytes(size % 7 === 0 ? 0 : 5);
    const plain = randomBytes(size);
    const a = plain.slice();
    const b = plain.slice();
    const tagA = new Uint8Array(16);
    const tagB = new Uint8Array(16);
    ssl.seal(nonce, aad, a, tagA);
    node.seal(nonce, aad, b, tagB);
    assertEquals(a, b, `size ${size}`);
    assertEquals(tagA, tagB, `size ${size}`);
    // Sealed by one backend, opened by the other.
    assert(node.open(nonce, aad, a, tagA));
    assert(ssl.open(nonce, aad, b, tagB));
    assertEquals(a, plain);
    assertEquals(b, plain);
  }
  ssl.close();
  node.close();
});

Deno.test("createAesGcm sealTo and openTo work out of place, as seal and open do in place", () => {
  for (const backend of BACKENDS) {
    const key = randomBytes(32);
    const aead = createAesGcm(key, { backend });
    const other = createAesGcm(key, { backend: backend === "openssl" ? "node" : "openssl" });
    for (const size of [0, 1, 16, 1000, 16384, 70_000]) {
      const nonce = randomBytes(12);
      const aad = randomBytes(5);
      const plain = randomBytes(size);
      const src = plain.slice();
      const sealed = new Uint8Array(size);
      const tag = new Uint8Array(16);
      aead.sealTo(nonce, aad, src, sealed, tag);
      assertEquals(src, plain, `${backend} ${size}: the input is left as it was`);
      const inPlace = plain.slice();
      const inPlaceTag = new Uint8Array(16);
      other.seal(nonce, aad, inPlace, inPlaceTag);
      assertEquals(sealed, inPlace, `${backend} ${size}`);
      assertEquals(tag, inPlaceTag, `${backend} ${size}`);
      const opened = new Uint8Array(size);
      assert(aead.openTo(nonce, aad, sealed, opened, tag), `${backend} ${size}`);
      assertEquals(opened, plain);
      assertEquals(sealed, inPlace, "openTo leaves its input as it was");
      if (size > 0) {
        const bad = sealed.slice();
        bad[size - 1]! ^= 0x80;
        assertEquals(aead.openTo(nonce, aad, bad, opened, tag), false, `${backend} ${size}`);
      }
      // Into the same bytes: the in-place operations.
      const same = plain.slice();
      aead.sealTo(nonce, aad, same, same, tag);
      assertEquals(same, inPlace);
      assert(aead.openTo(nonce, aad, same, same, tag));
      assertEquals(same, plain);
    }
    assertThrows(
      () =>
        aead.sealTo(
          randomBytes(12),
          new Uint8Array(0),
          new Uint8Array(4),
          new Uint8Array(5),
          new Uint8Array(16),
        ),
      RangeError,
      "as long as",
    );
    assertThrows(
      () =>
        aead.openTo(
          randomBytes(12),
          new Uint8Array(0),
          new Uint8Array(4),
          new Uint8Array(3),
          new Uint8Array(16),
        ),
      RangeError,
      "as long as",
    );
    aead.close();
    other.close();
    assertThrows(
      () =>
        aead.sealTo(
          randomBytes(12),
          new Uint8Array(0),
          new Uint8Array(1),
          new Uint8Array(1),
          new Uint8Array(16),
        ),
      Error,
      "closed",
    );
  }
});

Deno.test("createAesGcm open returns false when one bit of data, tag or AAD is flipped", () => {
  for (const backend of BACKENDS) {
    const aead = createAesGcm(randomBytes(32), { backend });
    const nonce = randomBytes(12);
    const aad = randomBytes(5);
    const plain = randomBytes(64);
    const sealed = plain.slice();
    const tag = new Uint8Array(16);
    aead.seal(nonce, aad, sealed, tag);
    const tries: [string, Uint8Array, Uint8Array, Uint8Array, Uint8Array][] = [];
    for (const bit of [0, 7, 200, 511]) {
      const d = sealed.slice();
      d[bit >> 3]! ^= 1 << (bit & 7);
      tries.push([`data bit ${bit}`, nonce, aad, d, tag]);
    }
    for (const bit of [0, 127]) {
      const t = tag.slice();
      t[bit >> 3]! ^= 1 << (bit & 7);
      tries.push([`tag bit ${bit}`, nonce, aad, sealed.slice(), t]);
    }
    for (const bit of [0, 39]) {
      const a = aad.slice();
      a[bit >> 3]! ^= 1 << (bit & 7);
      tries.push([`aad bit ${bit}`, nonce, a, sealed.slice(), tag]);
    }
    const n = nonce.slice();
    n[11]! ^= 1;
    tries.push(["nonce bit", n, aad, sealed.slice(), tag]);
    for (const [what, tn, ta, td, tt] of tries) {
      assertEquals(aead.open(tn, ta, td, tt), false, `${backend} ${what}`);
    }
    // The context is still good after failures.
    const ok = sealed.slice();
    assert(aead.open(nonce, aad, ok, tag));
    assertEquals(ok, plain);
    aead.close();
    aead.close();
    assertThrows(() => aead.seal(nonce, aad, ok, tag), Error, "closed");
  }
});

Deno.test("createAesGcm refuses bad key, nonce and tag lengths", () => {
  assertThrows(() => createAesGcm(new Uint8Array(16)), RangeError, "32 bytes");
  for (const backend of BACKENDS) {
    const aead = createAesGcm(new Uint8Array(32), { backend });
    const data = new Uint8Array(4);
    assertThrows(
      () => aead.seal(new Uint8Array(16), new Uint8Array(0), data, new Uint8Array(16)),
      RangeError,
      "nonce",
    );
    assertThrows(
      () => aead.open(new Uint8Array(12), new Uint8Array(0), data, new Uint8Array(12)),
      RangeError,
      "tag",
    );
    aead.close();
  }
});

Deno.test("hkdfSha256 matches RFC 5869 test cases 1 and 3", () => {
  assertEquals(
    hex(
      hkdfSha256(
        unhex("0b".repeat(22)),
        unhex("000102030405060708090a0b0c"),
        unhex("f0f1f2f3f4f5f6f7f8f9"),
        42,
      ),
    ),
    "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
  );
  assertEquals(
    hex(hkdfSha256(unhex("0b".repeat(22)), new Uint8Array(0), new Uint8Array(0), 42)),
    "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
  );
  assertThrows(() => hkdfSha256(new Uint8Array(32), new Uint8Array(0), new Uint8Array(0), 0));
  assertThrows(() => hkdfSha256(new Uint8Array(32), new Uint8Array(0), new Uint8Array(0), 8161));
});

Deno.test("x25519SharedSecret matches RFC 7748 section 6.1 on both backends", () => {
  const alice = unhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
  const bob = unhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
  const alicePub = unhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
  const bobPub = unhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
  const shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";
  for (const backend of BACKENDS) {
    assertEquals(hex(x25519PublicKey(bob, { backend })), hex(bobPub));
    assertEquals(hex(x25519SharedSecret(alice, bobPub, { backend })), shared, backend);
    assertEquals(hex(x25519SharedSecret(bob, alicePub, { backend })), shared, backend);
  }
});

Deno.test("x25519SharedSecret throws on a low-order peer key and on bad lengths", () => {
  const priv = randomBytes(32);
  // 0 and 1 are low-order points: the shared secret would be all zero.
  const zero = new Uint8Array(32);
  const one = new Uint8Array(32);
  one[0] = 1;
  for (const backend of BACKENDS) {
    assertThrows(() => x25519SharedSecret(priv, zero, { backend }), Error, "low-order");
    assertThrows(() => x25519SharedSecret(priv, one, { backend }), Error, "low-order");
    assertThrows(() => x25519SharedSecret(priv, new Uint8Array(31), { backend }), RangeError);
    assertThrows(() => x25519SharedSecret(new Uint8Array(33), one, { backend }), RangeError);
  }
});
