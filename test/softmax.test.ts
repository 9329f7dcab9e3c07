// Softmax over the last axis against a float64 reference: on odd and long rows, with
// logits around ±1e4, on many rows and on a grid split over two dimensions, and its
// gradient. Rows up to 1024 take one invocation each (f32 or vec4 loads), longer rows one
// workgroup each, and both layouts are covered.
import { beforeAll, describe, expect, it } from 'vitest';
import { softmax } from '../engine/ops/softmax.ts';
import type { Runtime } from '../engine/runtime.ts';
import { Scope, empty, fromArray } from '../engine/tensor.ts';
import type { KernelRunner } from '../kernels/runner.ts';
import { softmaxBackward, softmaxForward } from '../kernels/softmax.ts';
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

function referenceSoftmax(x: ArrayLike<number>, N: number, C: number): Float64Array {
  const y = new Float64Array(N * C);
  for (let n = 0; n < N; n++) {
    let m = -Infinity;
    for (let c = 0; c < C; c++) m = Math.max(m, x[n * C + c]);
    let s = 0;
    for (let c = 0; c < C; c++) s += Math.exp(x[n * C + c] - m);
    for (let c = 0; c < C; c++) y[n * C + c] = Math.exp(x[n * C + c] - m) / s;
  }
  return y;
}

async function runSoftmax(host: Float32Array, N: number, C: number): Promise<Float32Array> {
  const s = new Scope();
  try {
    return await softmax(fromArray(host, [N, C])).toArray();
  } finally {
    s.end();
  }
}

/**
 * Largest |y − ref| / ref. WGSL allows exp an error of 3 + 2·|x| ulp, about 23 ulp
 * (1.4e-6) for the arguments down to −10 used here; with the row sum and the division the
 * bound is 2e-5 relative, also for the smallest probabilities.
 */
const RTOL = 2e-5;

function worstRelative(y: Float32Array, ref: Float64Array): number {
  let worst = 0;
  for (let i = 0; i < y.length; i++) worst = Math.max(worst, Math.abs(y[i] - ref[i]) / (ref[i] + 1e-38));
  return worst;
}

describe('softmax forward', () => {
  const cases: Array<[number, number]> = [];
  // Rows up to 1024 take one invocation each (vec4 loads when C % 4 = 0), longer rows a workgroup.
  for (const C of [1, 4, 7, 17, 33, 64, 65, 127, 197, 1000, 1024, 1025, 4097, 8193]) cases.push([3, C]);
  cases.push([70_000, 2]); // 1094 workgroups of short rows

  for (const [N, C] of cases) {
    it(`softmax [${N}, ${C}]`, async () => {
      const host = randomArray(N * C, C, 5);
      const y = await runSoftmax(host, N, C);
      expect(worstRelative(y, referenceSoftmax(host, N, C))).toBeLessThanOrEqual(RTOL);
    });
  }

  for (const C of [33, 64, 1025]) {
    it(`softmax of logits near ±1e4 is finite [2, ${C}]`, async () => {
      // Without the row max, exp(1e4) is inf and every probability NaN.
      const host = randomArray(2 * C, 8, 3).map((v, i) => v + (i % 2 === 0 ? 1e4 : -1e4));
      const y = await runSoftmax(host, 2, C);
      expect(y.every(Number.isFinite)).toBe(true);
      expect(worstRelative(y, referenceSoftmax(host, 2, C))).toBeLessThanOrEqual(RTOL);
    });
  }

  it('softmax rows sum to 1', async () => {
    const y = await runSoftmax(randomArray(4 * 1000, 2, 5), 4, 1000);
    for (let n = 0; n < 4; n++) {
      const s = y.slice(n * 1000, (n + 1) * 1000).reduce((a, b) => a + b, 0);
      expect(Math.abs(s - 1)).toBeLessThanOrEqual(1e-5);
    }
  });
});

// Default gradcheck tolerance (rtol 2e-3): the gradient is a row dot product of a few terms.
describe('softmax gradient', () => {
  for (const [N, C] of [
    [3, 7],
    [2, 33],
    [1, 1],
    [3, 8], // vec4 loads
    [2, 1025], // one workgroup per row
  ]) {
    it(`softmax [${N}, ${C}]`, async () => {
      await assertGradients({
        inputs: [{ shape: [N, C], scale: 2 }],
        engine: ([x]) => softmax(x),
        reference: ([x]) => referenceSoftmax(x, N, C),
      });
    });
  }
});

describe('softmax kernels on a split grid', () => {
  // At most 3 workgroups per grid dimension: 1025 short rows take 17 workgroups of 64 rows
  // and 10 long rows 10 workgroups, so both span a second grid row with workgroups past the end.
  const cases: Array<[number, number]> = [
    [1025, 7],
    [1025, 8],
    [10, 1025],
  ];

  for (const [N, C] of cases) {
    it(`softmax kernels [${N}, ${C}]`, async () => {
      const xHost = randomArray(N * C, C + 11, 5);
      const dyHost = randomArray(N * C, C + 12);
      const yRef = referenceSoftmax(xHost, N, C);
      const dxRef = new Float64Array(N * C);
      for (let n = 0; n < N; n++) {
        let dot = 0;
        for (let c = 0; c < C; c++) dot += dyHost[n * C + c] * yRef[n * C + c];
        for (let c = 0; c < C; c++) dxRef[n * C + c] = yRef[n * C + c] * (dyHost[n * C + c] - dot);
      }

      const s = new Scope();
      try {
        const [x, dy, y, dx] = [fromArray(xHost, [N, C]), fromArray(dyHost, [N, C]), empty([N, C]), empty([N, C])];
        softmaxForward(gridLimited(3), { x: x.buffer, y: y.buffer, rows: N, cols: C });
        softmaxBackward(gridLimited(3), { y: y.buffer, dy: dy.buffer, dx: dx.buffer, rows: N, cols: C });
        expect(worstRelative(await y.toArray(), yRef)).toBeLessThanOrEqual(RTOL);

        // dx_i = y_i·(dy_i − Σ dy·y) with |dy| ≤ 1. y_i's error (≤ RTOL·y_i) times |dy_i − dot| ≤ 2,
        // plus y_i times the dot product's error (≤ RTOL from y, ≤ 64 chained additions of
        // terms summing to ≤ 1), bounds |dx_i − ref| by y_i·(3·RTOL + 64·u).
        const dxOut = await dx.toArray();
        let worst = 0;
        for (let i = 0; i < N * C; i++) worst = Math.max(worst, Math.abs(dxOut[i] - dxRef[i]) / (yRef[i] * (3 * RTOL + 64 * 2 ** -24) + 1e-38));
        expect(worst).toBeLessThanOrEqual(1);
      } finally {
        s.end();
      }
    });
  }
});
