import { defineProject } from "vitest/config";

export default defineProject({
  test: { name: "tensor", pool: "forks", testTimeout: 60_000 },
});
