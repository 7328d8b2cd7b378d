import { defineProject } from "vitest/config";

export default defineProject({
  test: { name: "tensor", pool: "forks", testTimeout: 300_000, hookTimeout: 300_000 },
});
