import { defineConfig } from 'vitest/config';

// One test file at a time: on lavapipe every file shares the same two CPU cores, and two
// software GPUs fighting over them only make each slower.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 60_000,
  },
});
