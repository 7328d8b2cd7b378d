import { execFileSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

// libgomp reads OMP_WAIT_POLICY once, when the addon loads: spinning OpenMP threads starve
// onnxruntime's, so loading the package must leave it passive unless the user chose a policy.
const dist = join(dirname(fileURLToPath(import.meta.url)), "..", "dist", "index.js");
const policyAfterLoad = (value: string | undefined): string => {
  const env = { ...process.env };
  if (value === undefined) delete env.OMP_WAIT_POLICY;
  else env.OMP_WAIT_POLICY = value;
  const script = `await import(${JSON.stringify(dist)}); console.log(process.env.OMP_WAIT_POLICY);`;
  return execFileSync(process.execPath, ["--input-type=module", "-e", script], { env }).toString().trim();
};

describe("OpenMP wait policy", () => {
  it("is passive when unset or empty, and the user's choice otherwise", () => {
    expect(policyAfterLoad(undefined)).toBe("passive");
    expect(policyAfterLoad("")).toBe("passive");
    expect(policyAfterLoad("active")).toBe("active");
  });
});
