import { defineProject } from "vitest/config";

export default defineProject({
  test: { name: "matching", pool: "forks", testTimeout: 180_000 },
});
