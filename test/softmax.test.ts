// Softmax over the last axis: against a float64 reference on odd and long rows, with
// logits around ±1e4, on more than 65535 rows, and its gradient.
import { beforeAll, describe, expect, it } from 'vitest';
import { softmax } from '../engine/ops/softmax.ts';
import { Scope, fromArray } from '../engine/tensor.ts';
import { assertGradients } from './helpers/gradcheck.ts';
import { gpu } from './helpers/gpu.ts';
import { randomArray } from './helpers/reference.ts';

beforeAll(async () => {
  await gpu();
});

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
  for (const C of [1, 7, 33, 65, 127, 1000, 1025, 4097, 8193]) cases.push([3, C]);
  cases.push([70_000, 2]); // a second grid row of workgroups

  for (const [N, C] of cases) {
    it(`softmax [${N}, ${C}]`, async () => {
      const host = randomArray(N * C, C, 5);
      const y = await runSoftmax(host, N, C);
      expect(worstRelative(y, referenceSoftmax(host, N, C))).toBeLessThanOrEqual(RTOL);
    });
  }

  it('softmax of logits near ±1e4 is finite', async () => {
    // Without the row max, exp(1e4) is inf and every probability NaN.
    const C = 33;
    const host = randomArray(2 * C, 8, 3).map((v, i) => v + (i % 2 === 0 ? 1e4 : -1e4));
    const y = await runSoftmax(host, 2, C);
    expect(y.every(Number.isFinite)).toBe(true);
    expect(worstRelative(y, referenceSoftmax(host, 2, C))).toBeLessThanOrEqual(RTOL);
  });

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
