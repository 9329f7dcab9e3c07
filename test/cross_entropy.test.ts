// Cross-entropy: mean loss against a float64 reference on odd and long rows, with and
// without label smoothing, logits around ±1e4, out-of-range labels, row losses on a grid
// split over two dimensions, and the gradient. Rows up to 1024 classes take one invocation
// each (f32 or vec4 loads), longer rows one workgroup each, and both layouts are covered.
import { beforeAll, describe, expect, it } from 'vitest';
import { Tape } from '../engine/autograd.ts';
import { crossEntropy } from '../engine/ops/loss.ts';
import type { Runtime } from '../engine/runtime.ts';
import { Scope, empty, fromArray } from '../engine/tensor.ts';
import { CE_STATS, crossEntropyForward } from '../kernels/cross_entropy.ts';
import type { KernelRunner } from '../kernels/runner.ts';
import { assertGradients } from './helpers/gradcheck.ts';
import { gpu } from './helpers/gpu.ts';
import { mulberry32, randomArray } from './helpers/reference.ts';

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

/** Mean over rows of −Σ_j t_j·log softmax(x)_j, t = (1 − ε)·onehot + ε/K; invalid labels add 0. */
function referenceLoss(x: ArrayLike<number>, labels: ArrayLike<number>, B: number, K: number, eps: number): number {
  let total = 0;
  for (let b = 0; b < B; b++) {
    const label = labels[b];
    if (!(label >= 0 && label < K)) continue;
    let m = -Infinity;
    for (let k = 0; k < K; k++) m = Math.max(m, x[b * K + k]);
    let s = 0;
    for (let k = 0; k < K; k++) s += Math.exp(x[b * K + k] - m);
    const lse = m + Math.log(s);
    let row = 0;
    for (let k = 0; k < K; k++) row -= ((k === label ? 1 - eps : 0) + eps / K) * (x[b * K + k] - lse);
    total += row;
  }
  return total / B;
}

function randomLabels(B: number, K: number, seed: number): Int32Array {
  const rng = mulberry32(seed);
  return Int32Array.from({ length: B }, () => Math.floor(rng() * K));
}

async function runLoss(x: Float32Array, labels: Int32Array, B: number, K: number, labelSmoothing: number): Promise<number> {
  const s = new Scope();
  try {
    const loss = crossEntropy(fromArray(x, [B, K]), fromArray(labels, [B], { dtype: 'i32' }), { labelSmoothing });
    return (await loss.toArray())[0];
  } finally {
    s.end();
  }
}

/** dLogits of the mean loss, with dLoss = 1. */
async function runGradient(x: Float32Array, labels: Int32Array, B: number, K: number, labelSmoothing: number): Promise<Float32Array> {
  const tape = new Tape();
  try {
    const logits = fromArray(x, [B, K], { requiresGrad: true });
    tape.backward(crossEntropy(logits, fromArray(labels, [B], { dtype: 'i32' }), { labelSmoothing }));
    const g = await logits.grad!.toArray();
    logits.grad!.release();
    return g;
  } finally {
    tape.end();
  }
}

describe('crossEntropy forward', () => {
  // The loss is a mean of B = 3 row losses of size ~log K ≤ 10, each a log of a sum of K
  // exps (WGSL exp: ≤ 23 ulp at the arguments here) plus a row sum; 1e-5 relative bounds
  // it with a margin.
  for (const K of [1, 4, 7, 10, 33, 64, 65, 127, 1000, 1024, 1025, 4097, 8193]) {
    for (const eps of [0, 0.1]) {
      it(`crossEntropy K ${K} smoothing ${eps}`, async () => {
        const B = 3;
        const x = randomArray(B * K, K, 4);
        const labels = randomLabels(B, K, K);
        const ref = referenceLoss(x, labels, B, K, eps);
        const loss = await runLoss(x, labels, B, K, eps);
        expect(Math.abs(loss - ref)).toBeLessThanOrEqual(1e-5 * Math.abs(ref) + 1e-6);
      });
    }
  }

  for (const K of [10, 12, 1025]) {
    it(`crossEntropy of logits near ±1e4 K ${K}`, async () => {
      // log-sum-exp without the max overflows here. The row loss is built from differences
      // of nearby logits, so it keeps f32 precision relative to the loss (~2e4 for the rows
      // whose label sits at −1e4), not the ~1e-3 spacing of values near 1e4.
      const B = 4;
      const x = randomArray(B * K, 3, 2).map((v, i) => v + (i % 3 === 0 ? 1e4 : -1e4));
      const labels = Int32Array.from([0, 1, 3, 5]);
      for (const eps of [0, 0.1]) {
        const loss = await runLoss(x, labels, B, K, eps);
        const ref = referenceLoss(x, labels, B, K, eps);
        expect(Number.isFinite(loss)).toBe(true);
        expect(Math.abs(loss - ref)).toBeLessThanOrEqual(1e-5 * Math.abs(ref));
      }
    });
  }

  for (const K of [7, 8, 1025]) {
    it(`crossEntropy ignores out-of-range labels K ${K}`, async () => {
      const B = 5;
      const x = randomArray(B * K, 6, 3);
      const labels = Int32Array.from([2, -1, K, 2 ** 31 - 1, K - 1]);
      const loss = await runLoss(x, labels, B, K, 0.1);
      const grad = await runGradient(x, labels, B, K, 0.1);
      expect(Math.abs(loss - referenceLoss(x, labels, B, K, 0.1))).toBeLessThanOrEqual(1e-6);
      for (const row of [1, 2, 3]) expect(Array.from(grad.slice(row * K, (row + 1) * K))).toEqual(new Array(K).fill(0));
      expect(grad.every(Number.isFinite)).toBe(true);
    });
  }

  it('crossEntropy rejects f32 labels', () => {
    const s = new Scope();
    const x = fromArray(new Float32Array(6), [2, 3]);
    expect(() => crossEntropy(x, fromArray([0, 1], [2]))).toThrow(/labels must be i32/);
    s.end();
  });
});

describe('crossEntropy gradient', () => {
  // Default gradcheck tolerance (rtol 2e-3 of max |g_ref|): each gradient is p − t scaled by 1/B.
  for (const eps of [0, 0.1]) {
    for (const [B, K] of [
      [3, 7],
      [2, 33],
      [3, 8], // vec4 loads
      [2, 1025], // one workgroup per row
    ]) {
      it(`crossEntropy [${B}, ${K}] smoothing ${eps}`, async () => {
        const labels = randomLabels(B, K, B * K);
        await assertGradients({
          inputs: [{ shape: [B, K], scale: 2 }],
          engine: ([x]) => crossEntropy(x, fromArray(labels, [B], { dtype: 'i32' }), { labelSmoothing: eps }),
          reference: ([x]) => Float64Array.of(referenceLoss(x, labels, B, K, eps)),
        });
      });
    }
  }

  it('crossEntropy gradient of logits near ±1e4', async () => {
    // p = exp((x − m) − log s) from saved statistics: x − m is exact, so the gradient
    // keeps f32 precision even where x itself is only known to ~1e-3.
    const B = 2;
    const K = 6;
    const x = randomArray(B * K, 9, 2).map((v, i) => v + (i % 2 === 0 ? 1e4 : -1e4));
    const labels = Int32Array.from([1, 2]);
    const grad = await runGradient(x, labels, B, K, 0.1);
    let worst = 0;
    for (let b = 0; b < B; b++) {
      let m = -Infinity;
      for (let k = 0; k < K; k++) m = Math.max(m, x[b * K + k]);
      let s = 0;
      for (let k = 0; k < K; k++) s += Math.exp(x[b * K + k] - m);
      for (let k = 0; k < K; k++) {
        const p = Math.exp(x[b * K + k] - m) / s;
        const t = (k === labels[b] ? 0.9 : 0) + 0.1 / K;
        worst = Math.max(worst, Math.abs(grad[b * K + k] - (p - t) / B));
      }
    }
    // Gradients are ≤ 0.5 in magnitude; 1e-6 is a few dozen ulps of that.
    expect(worst).toBeLessThanOrEqual(1e-6);
  });
});

describe('crossEntropy kernel on a split grid', () => {
  // At most 3 workgroups per grid dimension: 1025 rows take 17 workgroups of 64 rows and 10
  // rows of 1025 classes 10 workgroups, so both span a second grid row with workgroups past the end.
  const cases: Array<[number, number]> = [
    [1025, 7],
    [1025, 8],
    [10, 1025],
  ];

  for (const [B, K] of cases) {
    it(`crossEntropy row losses [${B}, ${K}]`, async () => {
      const xHost = randomArray(B * K, K + 3, 4);
      const labelsHost = randomLabels(B, K, K + 4);
      labelsHost[B - 1] = -1; // the last row, in the last workgroup, is ignored
      const s = new Scope();
      try {
        const [x, labels, rowLoss, stats] = [fromArray(xHost, [B, K]), fromArray(labelsHost, [B], { dtype: 'i32' }), empty([B]), empty([B, CE_STATS])];
        crossEntropyForward(gridLimited(3), { logits: x.buffer, labels: labels.buffer, rowLoss: rowLoss.buffer, stats: stats.buffer, rows: B, classes: K, labelSmoothing: 0.1 });
        const out = await rowLoss.toArray();
        // Row losses of size ~log K ≤ 10 (see the forward tolerance).
        let worst = 0;
        for (let b = 0; b < B; b++) {
          const ref = referenceLoss(xHost.subarray(b * K, (b + 1) * K), labelsHost.subarray(b, b + 1), 1, K, 0.1);
          worst = Math.max(worst, Math.abs(out[b] - ref) / (1e-5 * Math.abs(ref) + 1e-6));
        }
        expect(worst).toBeLessThanOrEqual(1);
      } finally {
        s.end();
      }
    });
  }
});
