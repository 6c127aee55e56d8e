import { assertEquals, assertRejects } from "./assert.ts";
import { writeFileAtomic } from "../lib/config/atomic_file.ts";

async function _names(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) out.push(e.name);
  return out.sort();
}

Deno.test("writeFileAtomic writes text or bytes with mode 0600 and leaves no temporary file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeFileAtomic(`${dir}/a.json`, "first\n");
    await writeFileAtomic(`${dir}/b.bin`, new Uint8Array([0, 1, 2, 255]));
    assertEquals(await Deno.readTextFile(`${dir}/a.json`), "first\n");
    assertEquals(await Deno.readFile(`${dir}/b.bin`), new Uint8Array([0, 1, 2, 255]));
    assertEquals((await Deno.stat(`${dir}/a.json`)).mode! & 0o777, 0o600);
    assertEquals((await Deno.stat(`${dir}/b.bin`)).mode! & 0o777, 0o600);
    // Replacing keeps the mode and leaves only the file.
    await Deno.chmod(`${dir}/a.json`, 0o644);
    await writeFileAtomic(`${dir}/a.json`, "second\n");
    assertEquals(await Deno.readTextFile(`${dir}/a.json`), "second\n");
    assertEquals((await Deno.stat(`${dir}/a.json`)).mode! & 0o777, 0o600);
    assertEquals(await _names(dir), ["a.json", "b.bin"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeFileAtomic makes a missing directory with mode 0700", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeFileAtomic(`${dir}/new/deeper/state.json`, "{}\n");
    assertEquals((await Deno.stat(`${dir}/new/deeper`)).mode! & 0o777, 0o700);
    assertEquals(await _names(`${dir}/new/deeper`), ["state.json"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeFileAtomic removes its temporary file when the rename fails", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // A non-empty directory where the file should go: the rename over it fails.
    await Deno.mkdir(`${dir}/taken`);
    await Deno.writeTextFile(`${dir}/taken/inside`, "x");
    await assertRejects(() => writeFileAtomic(`${dir}/taken`, "text"));
    assertEquals(await _names(dir), ["taken"]);
    assertEquals(await _names(`${dir}/taken`), ["inside"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeFileAtomic fails when the directory cannot be made and leaves nothing", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/file`, "x");
    await assertRejects(() => writeFileAtomic(`${dir}/file/below/state.json`, "text"));
    assertEquals(await _names(dir), ["file"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeFileAtomic with createNew never replaces an existing file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeFileAtomic(`${dir}/state.json`, "mine\n", { createNew: true });
    assertEquals(await Deno.readTextFile(`${dir}/state.json`), "mine\n");
    assertEquals((await Deno.stat(`${dir}/state.json`)).mode! & 0o777, 0o600);
    await assertRejects(
      () => writeFileAtomic(`${dir}/state.json`, "theirs\n", { createNew: true }),
      Deno.errors.AlreadyExists,
    );
    assertEquals(await Deno.readTextFile(`${dir}/state.json`), "mine\n");
    assertEquals(await _names(dir), ["state.json"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
