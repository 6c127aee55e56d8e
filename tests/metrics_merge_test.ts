import { assertEquals } from "./assert.ts";
import {
  familyTotal,
  mergeExpositions,
  parseExposition,
  renderExposition,
} from "../lib/ops/metrics_merge.ts";
import { Metrics } from "../lib/ops/metrics.ts";

function worker(accepted: number, active: number): string {
  const m = new Metrics(["main"], "1.0.0", 1_700_000_000_000);
  for (let i = 0; i < accepted; i++) m.accepted("main");
  m.observe({
    type: "closed",
    listener: "main",
    peer: "192.0.2.1:1",
    reason: "client_closed",
    durationMs: 5,
    bytesFromClient: 10,
    bytesToClient: 20,
  });
  return m.render({
    active: new Map([["main", active]]),
    liveBytes: new Map(),
    middle: new Map(),
    replayEntries: 7,
    rssBytes: 1000 + active,
  });
}

Deno.test("merged metrics sum counters and gauges over workers, and keep per-process figures once", () => {
  const merged = mergeExpositions([parseExposition(worker(3, 2)), parseExposition(worker(4, 5))]);
  assertEquals(familyTotal(merged, "mtproxy_connections_accepted_total"), 7);
  assertEquals(familyTotal(merged, "mtproxy_connections_active"), 7);
  assertEquals(familyTotal(merged, "mtproxy_client_bytes_sent_total"), 40);
  const closed = merged.families.get("mtproxy_connections_closed_total")!;
  assertEquals(closed.samples.get('{listener="main",reason="client_closed"}'), 2);
  // One process, one shared replay cache: not added up.
  assertEquals(familyTotal(merged, "mtproxy_info"), 1);
  assertEquals(familyTotal(merged, "mtproxy_replay_cache_entries"), 7);
  assertEquals(familyTotal(merged, "process_resident_memory_bytes"), 1005);
  // Rendering and parsing again gives the same figures, HELP and TYPE included.
  const again = parseExposition(renderExposition(merged));
  assertEquals(again, merged);
  assertEquals(again.families.get("mtproxy_connections_active")!.type, "gauge");
});

Deno.test("parseExposition skips lines it cannot read", () => {
  const e = parseExposition('# HELP a An a.\n# TYPE a counter\na 1\nbroken\nb{x="1"} nope\nc 2\n');
  assertEquals(familyTotal(e, "a"), 1);
  assertEquals(familyTotal(e, "c"), 2);
  assertEquals(e.families.has("b"), false);
});
