/**
 * The protocol test vectors (a copy of shared/spec/test-vectors.json) and byte helpers.
 *
 * @module
 */
import data from "./testdata/test-vectors.json" with { type: "json" };

/** One vector: string inputs and expectations as in the JSON file. */
export interface Vector {
  id: string;
  inputs: Record<string, unknown>;
  expected: Record<string, unknown>;
}

const byId = new Map<string, Vector>(
  (data.vectors as unknown as Vector[]).map((v) => [v.id, v]),
);

/** The vector with this id; throws when it is missing. */
export function vector(id: string): Vector {
  const v = byId.get(id);
  if (!v) throw new Error(`No test vector: "${id}"`);
  return v;
}

/** Decode lowercase hex. */
export function unhex(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return out;
}

/** Encode bytes as lowercase hex. */
export function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A string input of a vector, decoded from hex. */
export function bytesOf(
  v: Vector,
  key: string,
  from: "inputs" | "expected" = "inputs",
): Uint8Array {
  const value = v[from][key];
  if (typeof value !== "string") throw new Error(`Vector ${v.id}: ${from}.${key} is not a string`);
  return unhex(value);
}
