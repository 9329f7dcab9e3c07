// Cross-entropy: mean loss against a float64 reference on odd and long rows, with and
// without label smoothing, logits around ±1e4, out-of-range labels, and the gradient.
import { beforeAll, describe, expect, it } from 'vitest';
import { Tape } from '../engine/autograd.ts';
import { crossEntropy } from '../engine/ops/loss.ts';
import { Scope, fromArray } from '../engine/tensor.ts';
import { assertGradients } from './helpers/gradcheck.ts';
import { gpu } from './helpers/gpu.ts';
import { mulberry32, randomArray } from './helpers/reference.ts';

beforeAll(async () => {
  await gpu();
});

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
  for (const K of [1, 7, 33, 65, 127, 1000, 1025, 4097, 8193]) {
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

  it('crossEntropy of logits near ±1e4', async () => {
    // log-sum-exp without the max overflows here. The row loss is built from differences
    // of nearby logits, so it keeps f32 precision relative to the loss (~2e4 for the rows
    // whose label sits at −1e4), not the ~1e-3 spacing of values near 1e4.
    const B = 4;
    const K = 10;
    const x = randomArray(B * K, 3, 2).map((v, i) => v + (i % 3 === 0 ? 1e4 : -1e4));
    const labels = Int32Array.from([0, 1, 3, 5]);
    for (const eps of [0, 0.1]) {
      const loss = await runLoss(x, labels, B, K, eps);
      const ref = referenceLoss(x, labels, B, K, eps);
      expect(Number.isFinite(loss)).toBe(true);
      expect(Math.abs(loss - ref)).toBeLessThanOrEqual(1e-5 * Math.abs(ref));
    }
  });

  it('crossEntropy ignores out-of-range labels', async () => {
    const B = 5;
    const K = 7;
    const x = randomArray(B * K, 6, 3);
    const labels = Int32Array.from([2, -1, 7, 2 ** 31 - 1, 0]);
    const loss = await runLoss(x, labels, B, K, 0.1);
    const grad = await runGradient(x, labels, B, K, 0.1);
    expect(Math.abs(loss - referenceLoss(x, labels, B, K, 0.1))).toBeLessThanOrEqual(1e-6);
    for (const row of [1, 2, 3]) expect(Array.from(grad.slice(row * K, (row + 1) * K))).toEqual(new Array(K).fill(0));
    expect(grad.every(Number.isFinite)).toBe(true);
  });

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
