import { defineProject } from "vitest/config";

export default defineProject({
  test: { name: "server", pool: "forks", testTimeout: 180_000 },
});
