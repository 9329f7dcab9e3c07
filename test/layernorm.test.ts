// LayerNorm: forward against a float64 reference on odd and long rows and on rows with a
// large offset and a tiny spread. Gradients of x, gamma and beta (one and several row
// blocks), and the frozen path that must skip the parameter-gradient kernel.
import { beforeAll, describe, expect, it } from 'vitest';
import { Tape } from '../engine/autograd.ts';
import { layerNorm } from '../engine/ops/layernorm.ts';
import { sum } from '../engine/ops/reduce.ts';
import type { Runtime } from '../engine/runtime.ts';
import { Scope, fromArray } from '../engine/tensor.ts';
import { assertGradients } from './helpers/gradcheck.ts';
import { gpu } from './helpers/gpu.ts';
import { maxAbsDiff, randomArray } from './helpers/reference.ts';

let r: Runtime;
beforeAll(async () => {
  r = await gpu();
});

const EPS = 1e-6;

function referenceLayerNorm(x: ArrayLike<number>, gamma: ArrayLike<number>, beta: ArrayLike<number>, N: number, C: number, eps = EPS): Float64Array {
  const y = new Float64Array(N * C);
  for (let n = 0; n < N; n++) {
    let mean = 0;
    for (let c = 0; c < C; c++) mean += x[n * C + c];
    mean /= C;
    let variance = 0;
    for (let c = 0; c < C; c++) variance += (x[n * C + c] - mean) ** 2;
    variance /= C;
    const rstd = 1 / Math.sqrt(variance + eps);
    for (let c = 0; c < C; c++) y[n * C + c] = (x[n * C + c] - mean) * rstd * gamma[c] + beta[c];
  }
  return y;
}

async function runLayerNorm(x: Float32Array, gamma: Float32Array, beta: Float32Array, N: number, C: number): Promise<Float32Array> {
  const s = new Scope();
  try {
    return await layerNorm(fromArray(x, [N, C]), fromArray(gamma, [C]), fromArray(beta, [C]), EPS).toArray();
  } finally {
    s.end();
  }
}

describe('layerNorm forward', () => {
  // |y| ≤ ~4 here and y carries a few ulps from x − mean, rstd and the affine step
  // (measured ≤ 3e-7 on lavapipe); 5e-6 leaves room for other GPUs' inverseSqrt (2 ulp)
  // and fused multiply-adds.
  const ATOL = 5e-6;
  const cases: Array<[number, number]> = [];
  for (const C of [1, 7, 33, 65, 127, 1000, 1025, 4097, 8193]) cases.push([3, C]);
  cases.push([70_000, 2]); // a second grid row of workgroups

  for (const [N, C] of cases) {
    it(`layerNorm [${N}, ${C}]`, async () => {
      const x = randomArray(N * C, C, 2).map((v, i) => v + (i % 3) * 0.5);
      const gamma = randomArray(C, C + 1);
      const beta = randomArray(C, C + 2);
      const y = await runLayerNorm(x, gamma, beta, N, C);
      expect(maxAbsDiff(y, referenceLayerNorm(x, gamma, beta, N, C))).toBeLessThanOrEqual(ATOL);
    });
  }

  for (const C of [33, 768]) {
    it(`layerNorm mean 1e4 std 1e-2 [4, ${C}]`, async () => {
      // The f32 spacing at 1e4 is ~1e-3, a tenth of the std: E[x²] − mean² cancels to
      // nothing, and a mean rounded to f32 alone shifts x̂ by up to 0.1 (measured). With
      // the mean kept as hi + lo the error is that of ordinary rows (see ATOL).
      const N = 4;
      const x = randomArray(N * C, 77, 1.7e-2).map((v) => 1e4 + v);
      const gamma = new Float32Array(C).fill(1);
      const beta = new Float32Array(C);
      const y = await runLayerNorm(x, gamma, beta, N, C);
      const ref = referenceLayerNorm(x, gamma, beta, N, C);
      expect(y.every(Number.isFinite)).toBe(true);
      expect(maxAbsDiff(y, ref)).toBeLessThanOrEqual(ATOL);
    });
  }

  it('layerNorm of a constant row is beta', async () => {
    // Variance 0: rstd = 1/√eps is finite and x − mean = 0 exactly.
    const C = 65;
    const y = await runLayerNorm(new Float32Array(C).fill(3.25), randomArray(C, 1), new Float32Array(C).fill(0.5), 1, C);
    expect(maxAbsDiff(y, new Float32Array(C).fill(0.5))).toBe(0);
  });
});

describe('layerNorm gradients', () => {
  // Default gradcheck tolerance (rtol 2e-3 of max |g_ref|): the dx rule sums two row
  // dot products of ≤ 300 f32 terms.
  const reference = (N: number, C: number) => ([x, gamma, beta]: Float64Array[]) => referenceLayerNorm(x, gamma, beta, N, C);

  for (const [N, C] of [
    [3, 7],
    [2, 33],
    [300, 3], // two row blocks of the dgamma/dbeta kernel, folded by a column sum
  ]) {
    it(`layerNorm [${N}, ${C}]`, async () => {
      await assertGradients({
        inputs: [{ shape: [N, C] }, { shape: [C] }, { shape: [C] }],
        engine: ([x, gamma, beta]) => layerNorm(x, gamma, beta, EPS),
        reference: reference(N, C),
      });
    });
  }

  it('layerNorm only gamma trainable', async () => {
    const res = await assertGradients({
      inputs: [{ shape: [4, 9], requiresGrad: false }, { shape: [9] }, { shape: [9], requiresGrad: false }],
      engine: ([x, gamma, beta]) => layerNorm(x, gamma, beta, EPS),
      reference: reference(4, 9),
    });
    expect(res.grads[0].engine).toBeNull();
  });

  it('layerNorm mean 1e4 std 1e-2', async () => {
    // dx scales with rstd = 100, so max |g_ref| is large and the default rtol still bounds it.
    const N = 2;
    const C = 17;
    const data = Array.from(randomArray(N * C, 5, 1.7e-2), (v) => Math.fround(1e4 + v));
    await assertGradients({
      inputs: [{ shape: [N, C], data }, { shape: [C] }, { shape: [C] }],
      engine: ([x, gamma, beta]) => layerNorm(x, gamma, beta, EPS),
      reference: reference(N, C),
      rtol: 5e-3,
    });
  });
});

describe('layerNorm dispatches', () => {
  it('frozen gamma and beta skip the parameter kernel', async () => {
    const C = 8;
    const x = fromArray(randomArray(5 * C, 1), [5, C], { requiresGrad: true });
    const gamma = fromArray(randomArray(C, 2), [C]);
    const beta = fromArray(randomArray(C, 3), [C]);
    r.resetCounters();
    const tape = new Tape();
    tape.backward(sum(layerNorm(x, gamma, beta)));
    tape.end();
    const counts = r.counters();
    expect(counts.layernorm_dx).toBe(1);
    expect(counts.layernorm_dparams).toBeUndefined();
    expect(x.grad).not.toBeNull();
    for (const t of [x, x.grad!, gamma, beta]) t.release();
  });
});
