import { defineProject } from "vitest/config";

export default defineProject({
  test: { name: "runner", pool: "forks", testTimeout: 120_000 },
});
