// Reductions: sum and mean over everything, over the last axis and over the leading axes
// (column sum), against float64 references on odd sizes, multi-pass sizes and grids past
// 65535 workgroups, and their gradients.
import { beforeAll, describe, expect, it } from 'vitest';
import { columnSum, mean, meanLastAxis, sum, sumLastAxis } from '../engine/ops/reduce.ts';
import type { Runtime } from '../engine/runtime.ts';
import { Scope, fromArray, sizeOf, type Tensor } from '../engine/tensor.ts';
import { assertGradients } from './helpers/gradcheck.ts';
import { gpu } from './helpers/gpu.ts';
import { randomArray } from './helpers/reference.ts';

let r: Runtime;
beforeAll(async () => {
  r = await gpu();
});

/** f32 unit roundoff. */
const U = 2 ** -24;

/**
 * Error bound for an f32 sum whose longest chain of additions from any input to the result
 * is `chain`: the first-order worst case chain·u·Σ|x|. Chains here are the sequential
 * loop of one invocation plus the tree levels plus the same for each later pass.
 */
function sumTolerance(absSum: number, chain: number): number {
  return chain * U * absSum + 1e-30;
}

async function run(op: (x: Tensor) => Tensor, host: Float32Array, shape: number[]) {
  const s = new Scope();
  try {
    const y = op(fromArray(host, shape));
    return { shape: y.shape, out: await y.toArray() };
  } finally {
    s.end();
  }
}

/** Per row of [N, C]: Σ x and Σ |x| in float64. */
function rowSums(x: Float32Array, N: number, C: number): { sums: number[]; abs: number[] } {
  const sums: number[] = [];
  const abs: number[] = [];
  for (let n = 0; n < N; n++) {
    let s = 0;
    let a = 0;
    for (let c = 0; c < C; c++) {
      s += x[n * C + c];
      a += Math.abs(x[n * C + c]);
    }
    sums.push(s);
    abs.push(a);
  }
  return { sums, abs };
}

describe('sum and mean of all elements', () => {
  // Chains: ≤ 32 sequential + 7 tree levels in the chunk pass (4096 over 128 invocations),
  // ≤ 1 + 5 in the partials pass.
  for (const n of [1, 7, 33, 65, 127, 1000, 4096, 4097, 100_003]) {
    it(`sum [${n}]`, async () => {
      const host = randomArray(n, n);
      const { shape, out } = await run(sum, host, [n]);
      const { sums, abs } = rowSums(host, 1, n);
      expect(shape).toEqual([1]);
      expect(Math.abs(out[0] - sums[0])).toBeLessThanOrEqual(sumTolerance(abs[0], 48));
    });
  }

  it('mean [3, 5, 67]', async () => {
    const host = randomArray(3 * 5 * 67, 9);
    const { out } = await run(mean, host, [3, 5, 67]);
    const { sums, abs } = rowSums(host, 1, host.length);
    expect(Math.abs(out[0] - sums[0] / host.length)).toBeLessThanOrEqual(sumTolerance(abs[0], 48) / host.length);
  });
});

describe('sum over the last axis', () => {
  // One workgroup per row of 32 to 256 invocations (by C): ≤ 33 sequential additions + ≤ 8 tree levels.
  const cases: Array<[number, number]> = [];
  for (const C of [1, 7, 33, 65, 127, 1000, 1025, 4097, 8193]) cases.push([3, C]);
  cases.push([70_000, 3]); // 70000 rows: a second grid row of workgroups.

  for (const [N, C] of cases) {
    it(`sumLastAxis [${N}, ${C}]`, async () => {
      const host = randomArray(N * C, N + C);
      const { shape, out } = await run(sumLastAxis, host, [N, C]);
      const { sums, abs } = rowSums(host, N, C);
      expect(shape).toEqual([N]);
      let worst = 0;
      for (let n = 0; n < N; n++) worst = Math.max(worst, Math.abs(out[n] - sums[n]) / sumTolerance(abs[n], 48));
      expect(worst).toBeLessThanOrEqual(1);
    });
  }

  it('meanLastAxis [2, 3, 33]', async () => {
    const host = randomArray(2 * 3 * 33, 4);
    const { shape, out } = await run(meanLastAxis, host, [2, 3, 33]);
    const { sums, abs } = rowSums(host, 6, 33);
    expect(shape).toEqual([2, 3]);
    for (let n = 0; n < 6; n++) expect(Math.abs(out[n] - sums[n] / 33)).toBeLessThanOrEqual(sumTolerance(abs[n], 48) / 33);
  });

  it('sumLastAxis of a vector is [1]', async () => {
    const { shape } = await run(sumLastAxis, randomArray(5, 1), [5]);
    expect(shape).toEqual([1]);
  });
});

describe('column sum', () => {
  // Per pass: ≤ 64 sequential additions per invocation (256 rows over 4 lanes) + 4 lanes;
  // three passes at 70000 rows.
  const cases: Array<[number, number]> = [
    [1, 1],
    [7, 7],
    [33, 65],
    [255, 127],
    [257, 33],
    [1000, 7],
    [70_000, 3],
    // 65537 column tiles of 64: a second grid row of workgroups.
    [2, 64 * 65536 + 1],
  ];
  for (const [N, C] of cases) {
    it(`columnSum [${N}, ${C}]`, async () => {
      const host = randomArray(N * C, N * 7 + C);
      const { shape, out } = await run(columnSum, host, [N, C]);
      expect(shape).toEqual([C]);
      let worst = 0;
      for (let c = 0; c < C; c++) {
        let s = 0;
        let a = 0;
        for (let n = 0; n < N; n++) {
          s += host[n * C + c];
          a += Math.abs(host[n * C + c]);
        }
        worst = Math.max(worst, Math.abs(out[c] - s) / sumTolerance(a, 3 * 68));
      }
      expect(worst).toBeLessThanOrEqual(1);
    });
  }

  it('columnSum sums every leading axis', async () => {
    const host = randomArray(2 * 3 * 5, 3);
    const { shape, out } = await run(columnSum, host, [2, 3, 5]);
    expect(shape).toEqual([5]);
    for (let c = 0; c < 5; c++) {
      let s = 0;
      for (let n = 0; n < 6; n++) s += host[n * 5 + c];
      // Six terms of magnitude ≤ 1: the f32 rounding error is below 6·6·u < 3e-6.
      expect(Math.abs(out[c] - s)).toBeLessThanOrEqual(3e-6);
    }
  });
});

// Default gradcheck tolerance: every gradient here is dy broadcast, exact in f32.
describe('reduce gradients', () => {
  const shape = [3, 4, 5];
  const n = sizeOf(shape);

  it('sum', async () => {
    await assertGradients({ inputs: [{ shape }], engine: ([x]) => sum(x), reference: ([x]) => Float64Array.of(x.reduce((a, b) => a + b, 0)) });
  });

  it('mean', async () => {
    await assertGradients({ inputs: [{ shape }], engine: ([x]) => mean(x), reference: ([x]) => Float64Array.of(x.reduce((a, b) => a + b, 0) / n) });
  });

  it('sumLastAxis', async () => {
    await assertGradients({
      inputs: [{ shape }],
      engine: ([x]) => sumLastAxis(x),
      reference: ([x]) => Float64Array.from({ length: 12 }, (_, i) => x.slice(i * 5, i * 5 + 5).reduce((a, b) => a + b, 0)),
    });
  });

  it('meanLastAxis', async () => {
    await assertGradients({
      inputs: [{ shape }],
      engine: ([x]) => meanLastAxis(x),
      reference: ([x]) => Float64Array.from({ length: 12 }, (_, i) => x.slice(i * 5, i * 5 + 5).reduce((a, b) => a + b, 0) / 5),
    });
  });

  it('columnSum', async () => {
    await assertGradients({
      inputs: [{ shape }],
      engine: ([x]) => columnSum(x),
      reference: ([x]) => Float64Array.from({ length: 5 }, (_, c) => {
        let s = 0;
        for (let i = c; i < n; i += 5) s += x[i];
        return s;
      }),
    });
  });
});

describe('reduce dispatches', () => {
  it('column sum of 70000 rows takes three passes', () => {
    const s = new Scope();
    r.resetCounters();
    columnSum(fromArray(new Float32Array(70_000 * 2), [70_000, 2]));
    expect(r.counters().colsum).toBe(3);
    s.end();
  });
});
