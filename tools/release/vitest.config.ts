import { defineProject } from "vitest/config";

export default defineProject({
  test: { name: "release", pool: "forks", testTimeout: 600_000, hookTimeout: 600_000 },
});
