/**
 * The status page in a real headless browser: Debian's chromium (`/usr/bin/chromium`, installed
 * by `.ci/run` when missing) driven by npm:playwright-core, against a real `mtproxy run` process
 * with the admin API on. The page asks for the token once, keeps it for the tab, shows a user
 * added through the API, and that user's links with QR codes.
 */
import { chromium } from "playwright-core";
import { assert, assertEquals, assertStringIncludes } from "./assert.ts";
import { freePort, ProxyProcess } from "./kit/proxy_process.ts";

const CHROMIUM = "/usr/bin/chromium";

async function _exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

Deno.test({
  name:
    "the status page asks for the token once, shows a user added through the API, and its links with QR codes",
  async fn() {
    assert(
      await _exists(CHROMIUM),
      `${CHROMIUM} is missing: install it with "apt-get install -y chromium" (bash .ci/run does)`,
    );
    const dir = await Deno.makeTempDir();
    const admin = freePort();
    const base = `http://127.0.0.1:${admin}`;
    await Deno.writeTextFile(
      `${dir}/config.yaml`,
      [
        "listeners:",
        "  - name: main",
        "    host: 127.0.0.1",
        `    port: ${freePort()}`,
        "public_host: proxy.example.net",
        "fronting:",
        "  mode: off # tests never dial outside 127.0.0.1",
        "telegram:",
        "  dc_addresses:",
        `    "2": "127.0.0.1:9"`,
        "admin:",
        `  listen: "127.0.0.1:${admin}"`,
        "",
      ].join("\n"),
    );
    const proxy = new ProxyProcess(["--config", "config.yaml"], { cwd: dir });
    // Root (CI containers) cannot use chromium's sandbox.
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: Deno.uid() === 0 ? ["--no-sandbox"] : [],
    });
    try {
      await proxy.waitFor("listening on");
      const token: string =
        JSON.parse(await Deno.readTextFile(`${dir}/mtproxy-state.json`)).admin_token;
      const page = await browser.newPage();
      const errors: string[] = [];
      page.on("pageerror", (e) => errors.push(String(e)));
      await page.goto(`${base}/`);

      // A wrong token: asked again, with the reason.
      await page.locator("#login").waitFor({ state: "visible" });
      await page.fill("#token", "a-wrong-token-for-this-test");
      await page.click("#login button[type=submit]");
      await page.locator("#login-error").waitFor({ state: "visible" });
      assertStringIncludes(await page.textContent("#login-error") ?? "", "Missing or wrong token");

      await page.fill("#token", token);
      await page.click("#login button[type=submit]");
      await page.locator("body[data-loaded]").waitFor();
      assertEquals(await page.isVisible("#login"), false);
      await page.locator('#listeners tr[data-listener="main"]').waitFor();
      assertEquals(await page.isVisible("#no-users"), true);
      assertEquals(await page.locator("#chart polyline").count(), 1);

      // A user added through the API appears; after a reload the token is still there.
      const res = await fetch(`${base}/api/users`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify({ name: "erin", max_connections: 3, data_quota: "5GB" }),
      });
      assertEquals(res.status, 201, await res.text());
      await page.reload();
      const row = page.locator('#users tr[data-user="erin"]');
      await row.waitFor();
      assertEquals(await page.isVisible("#login"), false);
      const cells = await row.locator("td").allTextContents();
      assertEquals(cells[0], "erin");
      assertEquals(cells[1], "active");
      assertStringIncludes(cells[2]!, "/ 3");
      assertStringIncludes(cells[5]!, "5.00 GB");

      // Its links, with one QR code per protocol that the browser decodes as an image.
      await row.locator("button").click();
      await page.locator("#links").waitFor({ state: "visible" });
      assertEquals(await page.textContent("#links-name"), "erin");
      const images = page.locator("#links-codes img");
      assertEquals(await images.count(), 3);
      const widths = await images.evaluateAll((els) =>
        els.map((e) => (e as unknown as { naturalWidth: number }).naturalWidth)
      );
      assert(widths.every((w) => w > 0), `QR images decode: ${widths}`);
      assertStringIncludes(
        await page.textContent("#links-codes") ?? "",
        "tg://proxy?server=proxy.example.net",
      );

      const shot = `${dir}/status-page.png`;
      await page.screenshot({ path: shot, fullPage: true });
      const png = await Deno.readFile(shot);
      assertEquals([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
      assertEquals(errors, []);
    } finally {
      await browser.close();
      await proxy.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
