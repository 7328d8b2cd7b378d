import { describe, expect, it } from "vitest";
import { buildInfo, cudaInfo } from "../src/index.js";

describe("build info", () => {
  it("reports SIMD level and thread count", () => {
    const b = buildInfo();
    expect(b.threads).toBeGreaterThan(0);
    expect(["avx512", "avx2", "sse4.2", "baseline"]).toContain(b.simd);
  });

  it("reports CUDA availability without failing on machines without a GPU", () => {
    const c = cudaInfo();
    if (c.deviceCount === 0) {
      console.log(`CUDA tests skipped: ${c.message}`);
      expect(c.message).toMatch(/no CUDA device|without CUDA/);
    } else {
      expect(c.built).toBe(true);
      expect(c.message).toMatch(/CUDA device/);
    }
  });
});
