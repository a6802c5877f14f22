// One file at a time, in one worker: every test talks to the same live server, and the machines
// that run this are small. The per-test bound leaves slack over the suite's own waits.
import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["conformance.test.mjs"],
    fileParallelism: false,
    testTimeout: 15_000,
    hookTimeout: 15_000,
  },
})
