import { existsSync, mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { playground } from "../src/index.js";
import { startServer } from "./helpers.js";

const here = dirname(fileURLToPath(import.meta.url));
const shots = resolve(here, "..", "test-results");
const executablePath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const KEY = "playground-s3cret";

describe("playground page (headless Chromium, server with an API key)", () => {
  let srv: Awaited<ReturnType<typeof startServer>>;
  beforeAll(async () => {
    if (!existsSync(executablePath))
      throw new Error(`Chromium not found at ${executablePath}: .ci/run installs Debian's chromium package`);
    srv = await startServer({ plugins: [playground], apiKey: KEY });
    mkdirSync(shots, { recursive: true });
  });
  afterAll(() => srv?.close());

  it("asks for the key, refuses a wrong one, then runs SmallKV at 20% beside Full and shows all four token classes; screenshots at 1280x800 and 420x800", async () => {
    const browser = await chromium.launch({
      executablePath,
      headless: true,
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
    try {
      for (const [width, name] of [
        [1280, "playground-1280x800.png"],
        [420, "playground-420x800.png"],
      ] as const) {
        const page = await browser.newPage({ viewport: { width, height: 800 } });
        const errors: string[] = [];
        page.on("pageerror", (e) => errors.push(e.message));
        const sentKeys: string[] = [];
        page.on("request", (r) => {
          if (new URL(r.url()).pathname.startsWith("/v1/")) sentKeys.push(r.headers().authorization ?? "");
        });
        await page.goto(srv.url);
        // The page says plainly that the server wants a key, and runs nothing without one.
        await page.waitForSelector("#auth:not([hidden])");
        expect(await page.textContent("#auth-message")).toMatch(/requires an API key/);
        expect(await page.isDisabled("#run")).toBe(true);
        await page.fill("#api-key", "wrong-key");
        await page.click("#use-key");
        await page.waitForFunction(() =>
          /refused/.test(document.querySelector("#auth-message")?.textContent ?? ""),
        );
        expect(await page.evaluate(() => sessionStorage.getItem("smallkv-api-key"))).toBe("wrong-key");
        await page.fill("#api-key", KEY);
        await page.click("#use-key");
        await page.waitForFunction(
          () => (document.querySelector("#policy") as HTMLSelectElement).options.length > 0,
        );
        // Type a prompt (a story long enough for SmallKV's matching window).
        const story =
          'Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. One day, she saw a big red ball stuck in a tall tree. She wanted to get the ball, but the tree was too high. She asked her friend Tom to help her. Tom was a kind boy who liked to climb. He said, "I can help you, Lily!"';
        await page.fill("#prompt", "");
        await page.type("#prompt", story, { delay: 0 });
        // The paper's rules make all four classes (the default rarely makes V-only tokens: see docs/smallkv-rules.md).
        await page.selectOption("#policy", "smallkv-paper");
        await page.selectOption("#budget", "0.2");
        await page.fill("#max-tokens", "60");
        await page.keyboard.press("Tab");
        await page.focus("#run");
        await page.keyboard.press("Enter");
        await page.waitForSelector("#status[data-done=true]", { timeout: 240_000 });
        // Pick a layer whose selection is active and check the strip.
        const classes = await page.$$eval("#strip .tok", (els) => [
          ...new Set(els.map((e) => e.className.replace("tok ", ""))),
        ]);
        expect(classes.sort()).toEqual(["critical", "dropped", "marginal", "recent"]);
        expect((await page.textContent("#out-full"))!.length).toBeGreaterThan(20);
        expect((await page.textContent("#out-policy"))!.length).toBeGreaterThan(20);
        expect(await page.textContent("#matched")).toMatch(
          /LLM layer 0 head 0 → SLM layer \d head \d · LLM layer 0 head 1 → SLM layer \d head \d/,
        );
        const ratio = (await page.textContent("#ratio")) ?? "";
        expect(ratio).toMatch(/^\d+(\.\d+)?$/);
        expect(Number(ratio)).toBeGreaterThan(0);
        expect(Number(ratio)).toBeLessThan(0.25);
        // Every API call after the key was accepted carried it as a bearer token.
        expect(sentKeys.at(-1)).toBe(`Bearer ${KEY}`);
        expect(sentKeys).toContain("Bearer wrong-key");
        // The step slider replays earlier steps.
        await page.fill("#step", "0");
        await page.dispatchEvent("#step", "input");
        expect(await page.textContent("#step-label")).toMatch(/^1 \//);
        await page.fill("#step", String(59));
        await page.dispatchEvent("#step", "input");
        // Nothing overflows the viewport horizontally.
        const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
        expect(overflow).toBeLessThanOrEqual(0);
        expect(errors).toEqual([]);
        const path = join(shots, name);
        await page.screenshot({ path, fullPage: true });
        console.log(`screenshot: ${path}`);
        await page.close();
      }
    } finally {
      await browser.close();
    }
  }, 120_000);
});
