// LayerNorm: forward against a float64 reference on odd and long rows and on rows with a
// large offset and a tiny spread. Rows up to 1024 take one invocation each (f32 or vec4
// loads), longer rows one workgroup each, and both layouts are covered. Gradients of x,
// gamma and beta (one and several row blocks), the kernels on a grid split over two
// dimensions, and the frozen path that must skip the parameter-gradient kernel.
import { beforeAll, describe, expect, it } from 'vitest';
import { Tape } from '../engine/autograd.ts';
import { layerNorm } from '../engine/ops/layernorm.ts';
import { sum } from '../engine/ops/reduce.ts';
import type { Runtime } from '../engine/runtime.ts';
import { Scope, empty, fromArray } from '../engine/tensor.ts';
import { LN_STATS, layerNormBackwardInput, layerNormBackwardParams, layerNormForward } from '../kernels/layernorm.ts';
import type { KernelRunner } from '../kernels/runner.ts';
import { assertGradients } from './helpers/gradcheck.ts';
import { gpu } from './helpers/gpu.ts';
import { maxAbsDiff, randomArray } from './helpers/reference.ts';

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

const EPS = 1e-6;
/** f32 unit roundoff. */
const U = 2 ** -24;

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
  // Rows up to 1024 take one invocation each (vec4 loads when C % 4 = 0), longer rows a workgroup.
  for (const C of [1, 4, 7, 33, 64, 65, 127, 768, 1000, 1024, 1025, 4097, 8193]) cases.push([3, C]);
  cases.push([70_000, 2]); // 1094 workgroups of short rows

  for (const [N, C] of cases) {
    it(`layerNorm [${N}, ${C}]`, async () => {
      const x = randomArray(N * C, C, 2).map((v, i) => v + (i % 3) * 0.5);
      const gamma = randomArray(C, C + 1);
      const beta = randomArray(C, C + 2);
      const y = await runLayerNorm(x, gamma, beta, N, C);
      expect(maxAbsDiff(y, referenceLayerNorm(x, gamma, beta, N, C))).toBeLessThanOrEqual(ATOL);
    });
  }

  for (const C of [33, 768, 1025]) {
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
    [3, 8], // vec4 loads
    [2, 1025], // one workgroup per row
    [300, 3], // two row blocks of the dgamma/dbeta kernel, folded by a column sum
    [300, 4], // the same with vec4 loads
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

/** x̂ = (x − mean)·rstd per row of [N, C] in float64, with each row's rstd. */
function referenceNormalise(x: ArrayLike<number>, N: number, C: number): { xhat: Float64Array; rstd: Float64Array } {
  const xhat = new Float64Array(N * C);
  const rstd = new Float64Array(N);
  for (let n = 0; n < N; n++) {
    let mean = 0;
    for (let c = 0; c < C; c++) mean += x[n * C + c];
    mean /= C;
    let variance = 0;
    for (let c = 0; c < C; c++) variance += (x[n * C + c] - mean) ** 2;
    rstd[n] = 1 / Math.sqrt(variance / C + EPS);
    for (let c = 0; c < C; c++) xhat[n * C + c] = (x[n * C + c] - mean) * rstd[n];
  }
  return { xhat, rstd };
}

/** dx = rstd·(g − mean(g) − x̂·mean(g ⊙ x̂)) per row, g = dy ⊙ gamma, in float64. */
function referenceInputGrad(x: ArrayLike<number>, gamma: ArrayLike<number>, dy: ArrayLike<number>, N: number, C: number): Float64Array {
  const { xhat, rstd } = referenceNormalise(x, N, C);
  const dx = new Float64Array(N * C);
  for (let n = 0; n < N; n++) {
    let meanG = 0;
    let meanGX = 0;
    for (let c = 0; c < C; c++) {
      const g = dy[n * C + c] * gamma[c];
      meanG += g / C;
      meanGX += (g * xhat[n * C + c]) / C;
    }
    for (let c = 0; c < C; c++) {
      const g = dy[n * C + c] * gamma[c];
      dx[n * C + c] = rstd[n] * (g - meanG - xhat[n * C + c] * meanGX);
    }
  }
  return dx;
}

/** Folds [blocks, C] partial rows on the host in float64. */
function foldPartials(partials: Float32Array, C: number): Float64Array {
  const total = new Float64Array(C);
  for (let i = 0; i < partials.length; i++) total[i % C] += partials[i];
  return total;
}

describe('layerNorm kernels on a split grid', () => {
  // At most 3 workgroups per grid dimension. 1025 short rows take 17 workgroups of 64
  // rows, 10 long rows take 10 workgroups, and the gamma/beta kernel 5 row blocks or 17
  // column blocks. So every dispatch spans a second grid row and has workgroups past the end.

  // dx sums two row dot products of ≤ 1025 terms of size ≤ ~4 with addition chains ≤ 64;
  // measured ≤ 4e-7 on lavapipe with values of size ~1, so 1e-5 leaves a margin for other GPUs.
  const DX_ATOL = 1e-5;
  const cases: Array<[number, number]> = [
    [1025, 7],
    [1025, 8],
    [10, 1025],
  ];

  for (const [N, C] of cases) {
    it(`layerNorm kernels [${N}, ${C}]`, async () => {
      const host = { x: randomArray(N * C, 3 * C, 2), gamma: randomArray(C, 5), beta: randomArray(C, 6), dy: randomArray(N * C, 7) };
      const s = new Scope();
      try {
        const [x, gamma, beta, dy] = [fromArray(host.x, [N, C]), fromArray(host.gamma, [C]), fromArray(host.beta, [C]), fromArray(host.dy, [N, C])];
        const [y, dx, stats] = [empty([N, C]), empty([N, C]), empty([N, LN_STATS])];
        const blocks = Math.ceil(N / 256);
        const [dgamma, dbeta] = [empty([blocks, C]), empty([blocks, C])];
        const [rows, cols] = [N, C];
        layerNormForward(gridLimited(3), { x: x.buffer, gamma: gamma.buffer, beta: beta.buffer, y: y.buffer, stats: stats.buffer, rows, cols, eps: EPS });
        layerNormBackwardInput(gridLimited(3), { x: x.buffer, gamma: gamma.buffer, stats: stats.buffer, dy: dy.buffer, dx: dx.buffer, rows, cols });
        const partialRows = layerNormBackwardParams(gridLimited(3), { x: x.buffer, stats: stats.buffer, dy: dy.buffer, dgamma: dgamma.buffer, dbeta: dbeta.buffer, rows, cols });

        expect(partialRows).toBe(blocks);
        // y: the forward tolerance above.
        expect(maxAbsDiff(await y.toArray(), referenceLayerNorm(host.x, host.gamma, host.beta, N, C))).toBeLessThanOrEqual(5e-6);
        expect(maxAbsDiff(await dx.toArray(), referenceInputGrad(host.x, host.gamma, host.dy, N, C))).toBeLessThanOrEqual(DX_ATOL);

        // Column sums of N terms: the first-order bound chain·u·Σ|term| per column, with
        // chains of ≤ 40 f32 additions per partial row plus a few roundings in x̂.
        const { xhat } = referenceNormalise(host.x, N, C);
        const ref = { gamma: new Float64Array(C), beta: new Float64Array(C), absGamma: new Float64Array(C), absBeta: new Float64Array(C) };
        for (let i = 0; i < N * C; i++) {
          ref.gamma[i % C] += host.dy[i] * xhat[i];
          ref.beta[i % C] += host.dy[i];
          ref.absGamma[i % C] += Math.abs(host.dy[i] * xhat[i]);
          ref.absBeta[i % C] += Math.abs(host.dy[i]);
        }
        const gammaSums = foldPartials(await dgamma.toArray(), C);
        const betaSums = foldPartials(await dbeta.toArray(), C);
        let worstGamma = 0;
        let worstBeta = 0;
        for (let c = 0; c < C; c++) {
          worstGamma = Math.max(worstGamma, Math.abs(gammaSums[c] - ref.gamma[c]) / (48 * U * ref.absGamma[c]));
          worstBeta = Math.max(worstBeta, Math.abs(betaSums[c] - ref.beta[c]) / (48 * U * ref.absBeta[c]));
        }
        expect(worstGamma).toBeLessThanOrEqual(1);
        expect(worstBeta).toBeLessThanOrEqual(1);
      } finally {
        s.end();
      }
    });
  }
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
