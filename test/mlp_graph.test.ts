// A composed graph, gradient-checked end to end: LayerNorm → Linear → GELU → Linear →
// cross-entropy with label smoothing. It runs once with bias and GELU fused into the
// matmul, and once built from separate ops (broadcast add of the bias, standalone GELU).
// Every parameter and the input get their gradient through the whole chain.
import { beforeAll, describe, it } from 'vitest';
import { add } from '../engine/ops/elementwise.ts';
import { gelu } from '../engine/ops/gelu.ts';
import { layerNorm } from '../engine/ops/layernorm.ts';
import { crossEntropy } from '../engine/ops/loss.ts';
import { matmul } from '../engine/ops/matmul.ts';
import { fromArray, type Tensor } from '../engine/tensor.ts';
import { assertGradients } from './helpers/gradcheck.ts';
import { gpu } from './helpers/gpu.ts';

beforeAll(async () => {
  await gpu();
});

// Odd sizes so no dimension is a tile multiple: batch, input width, hidden width, classes.
const B = 5;
const C = 7;
const HIDDEN = 9;
const K = 4;
const LABELS = [0, 3, 1, 2, 3];
const SMOOTHING = 0.1;
const EPS = 1e-6;

/** GELU with the tanh approximation, the form the matmul epilogue and gelu op compute. */
function geluReference(z: number): number {
  return 0.5 * z * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (z + 0.044715 * z ** 3)));
}

/** x [N, Cin] · wᵀ + b with w [Cout, Cin]. */
function linearReference(x: Float64Array, w: Float64Array, b: Float64Array, N: number, Cin: number, Cout: number): Float64Array {
  const y = new Float64Array(N * Cout);
  for (let n = 0; n < N; n++) {
    for (let o = 0; o < Cout; o++) {
      let s = b[o];
      for (let i = 0; i < Cin; i++) s += x[n * Cin + i] * w[o * Cin + i];
      y[n * Cout + o] = s;
    }
  }
  return y;
}

function mlpReference([x, gamma, beta, w1, b1, w2, b2]: Float64Array[]): Float64Array {
  const xn = new Float64Array(B * C);
  for (let n = 0; n < B; n++) {
    const row = x.subarray(n * C, (n + 1) * C);
    const mean = row.reduce((a, v) => a + v, 0) / C;
    const variance = row.reduce((a, v) => a + (v - mean) ** 2, 0) / C;
    const rstd = 1 / Math.sqrt(variance + EPS);
    for (let c = 0; c < C; c++) xn[n * C + c] = (row[c] - mean) * rstd * gamma[c] + beta[c];
  }
  const h = linearReference(xn, w1, b1, B, C, HIDDEN).map(geluReference);
  const logits = linearReference(h, w2, b2, B, HIDDEN, K);

  let loss = 0;
  for (let n = 0; n < B; n++) {
    const row = logits.subarray(n * K, (n + 1) * K);
    const m = Math.max(...row);
    const lse = m + Math.log(row.reduce((a, v) => a + Math.exp(v - m), 0));
    for (let k = 0; k < K; k++) loss -= ((k === LABELS[n] ? 1 - SMOOTHING : 0) + SMOOTHING / K) * (row[k] - lse);
  }
  return Float64Array.of(loss / B);
}

const INPUTS = [
  { shape: [B, C] }, // x
  { shape: [C] }, // gamma
  { shape: [C] }, // beta
  { shape: [HIDDEN, C], scale: 0.5 }, // W1 [out, in]
  { shape: [HIDDEN], scale: 0.1 }, // b1
  { shape: [K, HIDDEN], scale: 0.5 }, // W2
  { shape: [K], scale: 0.1 }, // b2
];

function labels(): Tensor {
  return fromArray(LABELS, [B], { dtype: 'i32' });
}

// Default gradcheck tolerance (rtol 2e-3 of each input's max |g_ref|): every gradient is a
// chain of f32 row reductions and GEMMs with fewer than ten terms per sum, so the f32
// error stays orders of magnitude below it.
describe('mlp graph', () => {
  it('mlp fused bias and gelu', async () => {
    await assertGradients({
      inputs: INPUTS,
      engine: ([x, gamma, beta, w1, b1, w2, b2]) => {
        const xn = layerNorm(x, gamma, beta, EPS);
        const h = matmul(xn, w1, { transB: true, bias: b1, gelu: true });
        const logits = matmul(h, w2, { transB: true, bias: b2 });
        return crossEntropy(logits, labels(), { labelSmoothing: SMOOTHING });
      },
      reference: mlpReference,
    });
  });

  it('mlp separate ops', async () => {
    await assertGradients({
      inputs: INPUTS,
      engine: ([x, gamma, beta, w1, b1, w2, b2]) => {
        const xn = layerNorm(x, gamma, beta, EPS);
        const h = gelu(add(matmul(xn, w1, { transB: true }), b1));
        const logits = add(matmul(h, w2, { transB: true }), b2);
        return crossEntropy(logits, labels(), { labelSmoothing: SMOOTHING });
      },
      reference: mlpReference,
    });
  });
});
