// Gradient check: the engine's backward pass against central finite differences of a
// float64 TypeScript reference of the same forward function.
//
// The scalar under test is L = Σ y·w with fixed random weights w, so every output element
// contributes with a different weight and a rule that mixes up elements cannot pass.
// Finite differences run on the float64 reference (step 1e-5, truncation error ~1e-10),
// so the reference gradient is exact to far below f32 precision, and the only error left
// is the engine's f32 rounding. Hence the default tolerance: |g − g_ref| ≤ atol + rtol·max|g_ref|
// with rtol = 2e-3, a few hundred f32 ulps of accumulated rounding in sums of ~100 terms.
import { expect } from 'vitest';
import { Tape, record } from '../../engine/autograd.ts';
import { fromArray, empty, type Tensor } from '../../engine/tensor.ts';
import { mulberry32 } from './reference.ts';

export interface GradInput {
  shape: number[];
  /** Values; random N(0,1)·scale when omitted. */
  data?: number[];
  scale?: number;
  /** Whether the engine should compute this input's gradient (default true). */
  requiresGrad?: boolean;
}

export interface GradCheckCase {
  inputs: GradInput[];
  /** Engine forward, built from ops; returns the output (any shape). */
  engine: (xs: Tensor[]) => Tensor;
  /** Float64 reference of the same forward on flat row-major arrays. */
  reference: (xs: Float64Array[]) => Float64Array;
  rtol?: number;
  atol?: number;
  seed?: number;
}

export interface GradCheckResult {
  /** Per input: engine gradient (null when not required) and the reference gradient. */
  grads: Array<{ engine: Float64Array | null; reference: Float64Array }>;
  forward: { engine: Float64Array; reference: Float64Array };
  /** Largest |g − g_ref| / (atol + rtol·max|g_ref|) over inputs; ≤ 1 passes. */
  worst: number;
}

function randn(rng: () => number): number {
  const u = Math.max(rng(), 1e-12);
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng());
}

/** Runs the check and returns the numbers; assertGradients() wraps it with expects. */
export async function gradCheck(c: GradCheckCase): Promise<GradCheckResult> {
  const rng = mulberry32(c.seed ?? 1234);
  const rtol = c.rtol ?? 2e-3;
  const atol = c.atol ?? 1e-5;
  const hostInputs = c.inputs.map((inp) => {
    const n = inp.shape.reduce((a, b) => a * b, 1);
    return Float64Array.from(inp.data ?? Array.from({ length: n }, () => randn(rng) * (inp.scale ?? 1)));
  });

  // Reference forward, and the fixed output weights w.
  const yRef = c.reference(hostInputs);
  const w = Float64Array.from({ length: yRef.length }, () => randn(rng));
  const lossRef = (xs: Float64Array[]) => {
    const y = c.reference(xs);
    let s = 0;
    for (let i = 0; i < y.length; i++) s += y[i] * w[i];
    return s;
  };

  // Reference gradient by central differences, per input element.
  const h = 1e-5;
  const refGrads = hostInputs.map((x, k) => {
    const g = new Float64Array(x.length);
    for (let i = 0; i < x.length; i++) {
      const xs = hostInputs.map((a) => a.slice());
      xs[k][i] = x[i] + h;
      const up = lossRef(xs);
      xs[k][i] = x[i] - h;
      const down = lossRef(xs);
      g[i] = (up - down) / (2 * h);
    }
    return g;
  });

  // Engine forward and backward; the probe node feeds w in as dL/dy.
  const tape = new Tape();
  let result: GradCheckResult;
  try {
    const xs = c.inputs.map((inp, k) => fromArray(hostInputs[k], inp.shape, { requiresGrad: inp.requiresGrad ?? true }));
    const y = c.engine(xs);
    if (y.size !== yRef.length) throw new Error(`gradCheck: engine output has ${y.size} elements, reference ${yRef.length}`);
    const yHost = Float64Array.from(await y.toArray());
    const loss = empty([1]);
    record('probe', loss, [y], [], () => [fromArray(w, y.shape)]);
    tape.backward(loss);

    const grads: GradCheckResult['grads'] = [];
    let worst = 0;
    for (let k = 0; k < xs.length; k++) {
      const ref = refGrads[k];
      if (!(c.inputs[k].requiresGrad ?? true)) {
        grads.push({ engine: null, reference: ref });
        continue;
      }
      const g = xs[k].grad ? Float64Array.from(await xs[k].grad!.toArray()) : new Float64Array(ref.length);
      let maxRef = 0;
      for (const v of ref) maxRef = Math.max(maxRef, Math.abs(v));
      const bound = atol + rtol * maxRef;
      for (let i = 0; i < g.length; i++) worst = Math.max(worst, Math.abs(g[i] - ref[i]) / bound);
      grads.push({ engine: g, reference: ref });
      xs[k].grad?.release();
    }
    result = { grads, forward: { engine: yHost, reference: yRef }, worst };
  } finally {
    tape.end();
  }
  return result;
}

/** Asserts forward and every required gradient match within tolerance. */
export async function assertGradients(c: GradCheckCase): Promise<GradCheckResult> {
  const res = await gradCheck(c);
  const rtol = c.rtol ?? 2e-3;
  const atol = c.atol ?? 1e-5;
  let maxY = 0;
  for (const v of res.forward.reference) maxY = Math.max(maxY, Math.abs(v));
  let fwdWorst = 0;
  res.forward.engine.forEach((v, i) => (fwdWorst = Math.max(fwdWorst, Math.abs(v - res.forward.reference[i]))));
  expect(fwdWorst, 'forward max abs error').toBeLessThanOrEqual(atol + rtol * maxY);
  res.grads.forEach((g, k) => {
    if (!g.engine) return;
    let maxRef = 0;
    for (const v of g.reference) maxRef = Math.max(maxRef, Math.abs(v));
    let err = 0;
    g.engine.forEach((v, i) => (err = Math.max(err, Math.abs(v - g.reference[i]))));
    expect(err, `gradient of input ${k} max abs error (max |ref| ${maxRef.toExponential(2)})`).toBeLessThanOrEqual(atol + rtol * maxRef);
  });
  return res;
}
