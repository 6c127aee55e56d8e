import { assert, assertEquals } from "./assert.ts";
import { frameTlsRecords, TLS_HEADROOM } from "../lib/client/relay.ts";
import { randomBytes } from "../lib/crypto.ts";
import { TlsRecordReader } from "../lib/protocol/fake_tls.ts";

Deno.test("frameTlsRecords turns one read into records of at most 16 KiB, in place", () => {
  for (const len of [1, 100, 16383, 16384, 16385, 32768, 40000, 65536 - TLS_HEADROOM]) {
    const data = randomBytes(len);
    const buf = new Uint8Array(TLS_HEADROOM + len);
    buf.set(data, TLS_HEADROOM);
    const start = frameTlsRecords(buf, TLS_HEADROOM, len);
    const wire = buf.slice(start);
    // Walk the records: every one is ApplicationData of at most 16384 bytes.
    let off = 0;
    let records = 0;
    while (off < wire.length) {
      assertEquals([...wire.subarray(off, off + 3)], [0x17, 0x03, 0x03]);
      const size = (wire[off + 3]! << 8) | wire[off + 4]!;
      assert(size > 0 && size <= 16384, `record of ${size}`);
      off += 5 + size;
      records++;
    }
    assertEquals(off, wire.length);
    assertEquals(records, Math.ceil(len / 16384));
    const n = new TlsRecordReader().unwrap(wire);
    assertEquals(wire.subarray(0, n as number), data);
  }
});
