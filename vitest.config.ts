import { defineConfig } from "vitest/config";

// One vitest run over every package (one JSON report for CI); each package also
// runs its own tests with `pnpm --filter <pkg> test`.
export default defineConfig({
  test: {
    projects: ["packages/*", "apps/*", "tools/*"],
  },
});
