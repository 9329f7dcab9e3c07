// Reductions: sum and mean over everything, over the last axis and over the leading axes
// (column sum), and their gradients. Checked against float64 references on odd sizes,
// multi-pass sizes, grids split over two dimensions, and both row kernel layouts: one
// invocation per short row (f32 or vec4 loads) and one workgroup per long row.
import { beforeAll, describe, expect, it } from 'vitest';
import { columnSum, mean, meanLastAxis, sum, sumLastAxis } from '../engine/ops/reduce.ts';
import type { Runtime } from '../engine/runtime.ts';
import { Scope, empty, fromArray, sizeOf, type Tensor } from '../engine/tensor.ts';
import { columnSumPass, reduceRows } from '../kernels/reduce.ts';
import type { KernelRunner } from '../kernels/runner.ts';
import { assertGradients } from './helpers/gradcheck.ts';
import { gpu } from './helpers/gpu.ts';
import { randomArray } from './helpers/reference.ts';

let r: Runtime;
beforeAll(async () => {
  r = await gpu();
});

/** Wraps the runtime with at most `limit` workgroups per grid dimension, so a small dispatch already needs a second grid row. */
function gridLimited(limit: number): KernelRunner {
  return {
    dispatch: (spec) => r.dispatch(spec),
    maxWorkgroupsPerDim: limit,
    features: r.features,
    subgroupMinSize: r.subgroupMinSize,
    subgroupMaxSize: r.subgroupMaxSize,
  };
}

/** f32 unit roundoff. */
const U = 2 ** -24;

/**
 * Error bound for an f32 sum whose longest chain of additions from any input to the result
 * is `chain`: the first-order worst case chain·u·Σ|x|. A row of up to 1024 elements is
 * summed by one invocation in blocks of 32, a chain of ≤ 32 + 32. A longer row is split
 * over a workgroup, a chain of ≤ 33 sequential additions plus ≤ 8 tree levels. Later
 * passes add their own chains.
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
  // Chains: ≤ 64 for n ≤ 1024, summed in one serial pass. Larger n takes ≤ 32 sequential
  // additions + 7 tree levels in the chunk pass (4096 over 128 invocations), then ≤ 25 + 1
  // in the serial pass over ≤ 25 partials.
  for (const n of [1, 4, 7, 33, 65, 127, 1000, 1024, 1025, 4096, 4097, 100_003]) {
    it(`sum [${n}]`, async () => {
      const host = randomArray(n, n);
      const { shape, out } = await run(sum, host, [n]);
      const { sums, abs } = rowSums(host, 1, n);
      expect(shape).toEqual([1]);
      expect(Math.abs(out[0] - sums[0])).toBeLessThanOrEqual(sumTolerance(abs[0], 65));
    });
  }

  it('mean [3, 5, 67]', async () => {
    const host = randomArray(3 * 5 * 67, 9);
    const { out } = await run(mean, host, [3, 5, 67]);
    const { sums, abs } = rowSums(host, 1, host.length);
    expect(Math.abs(out[0] - sums[0] / host.length)).toBeLessThanOrEqual(sumTolerance(abs[0], 65) / host.length);
  });
});

describe('sum over the last axis', () => {
  // Chains ≤ 64 (see sumTolerance).
  const cases: Array<[number, number]> = [];
  for (const C of [1, 4, 7, 33, 64, 65, 127, 1000, 1024, 1025, 4097, 8193]) cases.push([3, C]);
  cases.push([70_000, 3]); // 1094 workgroups of short rows

  for (const [N, C] of cases) {
    it(`sumLastAxis [${N}, ${C}]`, async () => {
      const host = randomArray(N * C, N + C);
      const { shape, out } = await run(sumLastAxis, host, [N, C]);
      const { sums, abs } = rowSums(host, N, C);
      expect(shape).toEqual([N]);
      let worst = 0;
      for (let n = 0; n < N; n++) worst = Math.max(worst, Math.abs(out[n] - sums[n]) / sumTolerance(abs[n], 64));
      expect(worst).toBeLessThanOrEqual(1);
    });
  }

  it('meanLastAxis [2, 3, 33]', async () => {
    const host = randomArray(2 * 3 * 33, 4);
    const { shape, out } = await run(meanLastAxis, host, [2, 3, 33]);
    const { sums, abs } = rowSums(host, 6, 33);
    expect(shape).toEqual([2, 3]);
    for (let n = 0; n < 6; n++) expect(Math.abs(out[n] - sums[n] / 33)).toBeLessThanOrEqual(sumTolerance(abs[n], 64) / 33);
  });

  it('sumLastAxis of a vector is [1]', async () => {
    const { shape } = await run(sumLastAxis, randomArray(5, 1), [5]);
    expect(shape).toEqual([1]);
  });
});

describe('column sum', () => {
  // Per pass: ≤ 32 + 8 chained additions (256 rows in blocks of 32); three passes at 70000 rows.
  // C % 4 = 0 reads vec4 columns.
  const cases: Array<[number, number]> = [
    [1, 1],
    [7, 7],
    [33, 64],
    [33, 65],
    [255, 127],
    [257, 32],
    [257, 33],
    [1000, 7],
    [1000, 8],
    [70_000, 3],
    [70_000, 4],
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
        worst = Math.max(worst, Math.abs(out[c] - s) / sumTolerance(a, 3 * 40));
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

describe('row sum kernel', () => {
  // [rows, rowLen, n, inOffset, outOffset]. With at most 3 workgroups per grid dimension the
  // first three span a second grid row with workgroups past the end: 17 workgroups of 64
  // short rows, or 10 long rows. The others cut the last row short and read and write at
  // offsets, with vec4 loads (offset 4) and without (offset 2).
  const cases: Array<[number, number, number, number, number]> = [
    [1025, 7, 1025 * 7, 0, 0],
    [1025, 8, 1025 * 8, 0, 0],
    [10, 1025, 10 * 1025, 0, 0],
    [5, 8, 36, 4, 2],
    [5, 8, 36, 2, 2],
    [3, 2000, 5000, 3, 1],
  ];
  const SENTINEL = 7;

  for (const kernel of ['sum', 'sumsq'] as const) {
    for (const [rows, rowLen, n, inOffset, outOffset] of cases) {
      it(`${kernel} rows ${rows}×${rowLen} n ${n} offsets ${inOffset} ${outOffset}`, async () => {
        const host = randomArray(inOffset + n, rows + rowLen + n);
        const s = new Scope();
        try {
          const x = fromArray(host, [host.length]);
          const out = fromArray(new Float32Array(outOffset + rows).fill(SENTINEL), [outOffset + rows]);
          reduceRows(gridLimited(3), { kernel, x: x.buffer, out: out.buffer, rows, rowLen, n, inOffset, outOffset, scale: 0.5 });
          const got = await out.toArray();

          expect(Array.from(got.subarray(0, outOffset))).toEqual(new Array(outOffset).fill(SENTINEL));
          let worst = 0;
          for (let row = 0; row < rows; row++) {
            let total = 0;
            let abs = 0;
            for (let k = row * rowLen; k < Math.min((row + 1) * rowLen, n); k++) {
              const v = host[inOffset + k];
              total += kernel === 'sum' ? v : v * v;
              abs += Math.abs(kernel === 'sum' ? v : v * v);
            }
            worst = Math.max(worst, Math.abs(got[outOffset + row] - 0.5 * total) / (0.5 * sumTolerance(abs, 64)));
          }
          expect(worst).toBeLessThanOrEqual(1);
        } finally {
          s.end();
        }
      });
    }
  }
});

describe('column sum kernel on a split grid', () => {
  // At most 3 workgroups per grid dimension. [rows, cols] gives 5 row blocks × 1 column
  // block, or 2 × 4 (1024 vec4 columns, 64 per workgroup), so every dispatch spans a second
  // grid row with workgroups past the end. Chains ≤ 32 + 8 per pass as above, plus the
  // rounding of x·y.
  const cases: Array<[number, number]> = [
    [1025, 7],
    [1025, 8],
    [300, 1024],
  ];

  for (const product of [false, true]) {
    for (const [N, C] of cases) {
      it(`columnSumPass${product ? ' of x ⊙ y' : ''} [${N}, ${C}]`, async () => {
        const xHost = randomArray(N * C, N + C);
        const yHost = randomArray(N * C, N + C + 1);
        const blocks = Math.ceil(N / 256);
        const s = new Scope();
        try {
          const x = fromArray(xHost, [N, C]);
          const y = product ? fromArray(yHost, [N, C]) : undefined;
          const out = empty([blocks, C]);
          const passRows = columnSumPass(gridLimited(3), { x: x.buffer, y: y?.buffer, out: out.buffer, rows: N, cols: C, scale: 2 });
          const partials = await out.toArray();

          expect(passRows).toBe(blocks);
          let worst = 0;
          for (let b = 0; b < blocks; b++) {
            for (let c = 0; c < C; c++) {
              let total = 0;
              let abs = 0;
              for (let n = b * 256; n < Math.min((b + 1) * 256, N); n++) {
                const term = product ? xHost[n * C + c] * yHost[n * C + c] : xHost[n * C + c];
                total += term;
                abs += Math.abs(term);
              }
              worst = Math.max(worst, Math.abs(partials[b * C + c] - 2 * total) / (2 * sumTolerance(abs, 41)));
            }
          }
          expect(worst).toBeLessThanOrEqual(1);
        } finally {
          s.end();
        }
      });
    }
  }
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
