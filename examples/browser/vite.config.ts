import { fileURLToPath } from 'node:url'
import { defineConfig } from 'vitest/config'

// The page imports the `.proto` files of crates/domain-proto, outside this folder.
const repository = fileURLToPath(new URL('../..', import.meta.url))

export default defineConfig({
  server: { fs: { allow: [repository] } },
  build: { target: 'es2022' },
  test: {
    include: ['test/**/*.test.ts'],
    // The browser tests start a cluster and Chromium: far slower than a unit test.
    testTimeout: 240_000,
    hookTimeout: 240_000,
  },
})
