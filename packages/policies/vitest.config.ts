import { defineProject } from "vitest/config";

export default defineProject({
  test: { name: "policies", pool: "forks", testTimeout: 180_000 },
});
