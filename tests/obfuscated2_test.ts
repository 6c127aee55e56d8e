import { assert, assertEquals } from "./assert.ts";
import { bytesOf, hex, vector } from "./vectors.ts";
import { randomBytes } from "../lib/crypto.ts";
import {
  createInit,
  deriveServerKeys,
  isValidInitRandom,
  openClientInit,
  replyKeyMaterial,
  tagFromBytes,
  type TransportTag,
} from "../lib/protocol/obfuscated2.ts";

for (const id of ["obf_abridged_dc2", "obf_intermediate_dcm4", "obf_secure_dc203"]) {
  Deno.test(`openClientInit derives keys, tag and DC id of vector ${id}`, () => {
    const v = vector(id);
    const init = bytesOf(v, "client_init");
    const secret = bytesOf(v, "secret");
    const keys = deriveServerKeys(init, secret);
    assertEquals(hex(keys.decryptKey), v.expected.proxy_decrypt_key);
    assertEquals(hex(keys.decryptIv), v.expected.proxy_decrypt_iv);
    assertEquals(hex(keys.encryptKey), v.expected.proxy_encrypt_key);
    assertEquals(hex(keys.encryptIv), v.expected.proxy_encrypt_iv);
    const stream = openClientInit(init, secret);
    assert(stream);
    assertEquals(stream.tag, tagFromBytes(bytesOf(v, "proto_tag", "expected")));
    assertEquals(stream.dcId, v.expected.dc_id);
    const c2s = bytesOf(v, "c2s_cipher_after_init");
    stream.decryptor.update(c2s);
    assertEquals(hex(c2s), v.expected.c2s_plain);
    const s2c = bytesOf(v, "s2c_plain");
    stream.encryptor.update(s2c);
    assertEquals(hex(s2c), v.expected.s2c_cipher);
    stream.decryptor.close();
    stream.encryptor.close();
  });
}

Deno.test("openClientInit refuses an init made with another secret", () => {
  const v = vector("obf_wrong_secret");
  assertEquals(openClientInit(bytesOf(v, "client_init"), bytesOf(v, "secret")), null);
  assertEquals(v.expected.accepted, false);
});

for (const id of ["dc_init_secure_dc2", "dc_init_abridged_dcm4"]) {
  Deno.test(`createInit builds the direct-mode DC init of vector ${id}`, () => {
    const v = vector(id);
    const tag = tagFromBytes(bytesOf(v, "proto_tag"));
    assert(tag);
    const { wire, encryptor, decryptor } = createInit(
      bytesOf(v, "random64"),
      tag,
      v.inputs.dc_id as number,
    );
    assertEquals(hex(wire), v.expected.wire_init);
    const first = bytesOf(v, "first_plain");
    encryptor.update(first);
    assertEquals(hex(first), v.expected.first_cipher);
    // The DC's view of the same init: no secret, keys as they are.
    const keys = deriveServerKeys(wire, null);
    assertEquals(hex(keys.decryptKey), v.expected.proxy_encrypt_key);
    assertEquals(hex(keys.encryptKey), v.expected.proxy_decrypt_key);
    assertEquals(hex(keys.encryptIv), v.expected.proxy_decrypt_iv);
    encryptor.close();
    decryptor.close();
  });
}

Deno.test("createInit and openClientInit agree for every tag, DC id and secret", () => {
  const tags: TransportTag[] = ["abridged", "intermediate", "padded"];
  for (const tag of tags) {
    for (const dc of [1, 2, -2, 5, 203, -32768, 32767]) {
      const secret = randomBytes(16);
      let random = randomBytes(64);
      while (!isValidInitRandom(random)) random = randomBytes(64);
      const client = createInit(random, tag, dc, { secret });
      const server = openClientInit(client.wire, secret);
      assert(server);
      assertEquals([server.tag, server.dcId], [tag, dc]);
      const up = randomBytes(100);
      const upWire = up.slice();
      client.encryptor.update(upWire);
      server.decryptor.update(upWire);
      assertEquals(upWire, up);
      const down = randomBytes(100);
      const downWire = down.slice();
      server.encryptor.update(downWire);
      client.decryptor.update(downWire);
      assertEquals(downWire, down);
      for (const c of [client.encryptor, client.decryptor, server.encryptor, server.decryptor]) {
        c.close();
      }
    }
  }
});

Deno.test("isValidInitRandom rejects starts a peer could mistake for another protocol", () => {
  const ok = new Uint8Array(64).fill(1);
  assert(isValidInitRandom(ok));
  const withStart = (bytes: number[]) => {
    const r = ok.slice();
    r.set(bytes);
    return r;
  };
  assert(!isValidInitRandom(withStart([0xef])));
  assert(!isValidInitRandom(withStart([...new TextEncoder().encode("GET ")])));
  assert(!isValidInitRandom(withStart([...new TextEncoder().encode("POST")])));
  assert(!isValidInitRandom(withStart([0x16, 0x03, 0x01, 0x02])));
  assert(!isValidInitRandom(withStart([0xdd, 0xdd, 0xdd, 0xdd])));
  assert(!isValidInitRandom(withStart([1, 1, 1, 1, 0, 0, 0, 0])));
});

Deno.test("replyKeyMaterial makes the DC encrypt with the client's keystream (fast mode)", () => {
  const secret = randomBytes(16);
  const client = createInit(randomValidInit(), "padded", 2, { secret });
  const proxySide = openClientInit(client.wire, secret);
  assert(proxySide);
  const { encryptKey, encryptIv } = proxySide.keys;
  const toDc = createInit(randomValidInit(), "padded", 2, {
    keyMaterial: replyKeyMaterial(encryptKey, encryptIv),
  });
  const dcSide = openClientInit(toDc.wire, null);
  assert(dcSide);
  // What the DC sends arrives at the client readable, with no work in between.
  const reply = randomBytes(1000);
  const wire = reply.slice();
  dcSide.encryptor.update(wire);
  client.decryptor.update(wire);
  assertEquals(wire, reply);
  for (const c of [client, toDc, proxySide, dcSide]) {
    ("wire" in c ? [c.encryptor, c.decryptor] : [c.encryptor, c.decryptor]).forEach((x) =>
      x.close()
    );
  }
});

function randomValidInit(): Uint8Array {
  let random = randomBytes(64);
  while (!isValidInitRandom(random)) random = randomBytes(64);
  return random;
}
