// Fused attention: the forward kernel (output and LSE) against a float64 naive softmax
// attention, the op's gradients against finite differences, and the backward's promise to
// run only the kernels the requested gradients need.
import { beforeAll, describe, expect, it } from 'vitest';
import { Tape, record } from '../engine/autograd.ts';
import { attention, type AttentionLayout } from '../engine/ops/attention.ts';
import type { Runtime } from '../engine/runtime.ts';
import { Scope, empty, fromArray, type Tensor } from '../engine/tensor.ts';
import { bucketBytes } from '../engine/pool.ts';
import { attentionForward, attentionPath, type AttentionKernel } from '../kernels/attention.ts';
import { assertGradients } from './helpers/gradcheck.ts';
import { gpu } from './helpers/gpu.ts';
import { maxAbsDiff, randomArray } from './helpers/reference.ts';

let r: Runtime;
beforeAll(async () => {
  r = await gpu();
});

interface Dims {
  B: number;
  H: number;
  T: number;
  D: number;
  layout: AttentionLayout;
}

function shapeOf({ B, H, T, D, layout }: Dims): number[] {
  return layout === 'bhtd' ? [B, H, T, D] : [B, T, H * D];
}

/** Flat offset of element (b, h, t, d) in either layout. */
function offset({ H, T, D, layout }: Dims, b: number, h: number, t: number, d: number): number {
  return layout === 'bhtd' ? ((b * H + h) * T + t) * D + d : ((b * T + t) * H + h) * D + d;
}

/**
 * Naive float64 softmax attention: the full T×T weights, max-subtracted. Returns out and lse
 * [B, H, T]. Each row's weights are computed once, since gradient checks call this once per
 * perturbed input element.
 */
function referenceAttention(dims: Dims, q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>) {
  const { B, H, T, D } = dims;
  const out = new Float64Array(B * H * T * D);
  const lse = new Float64Array(B * H * T);
  const scale = 1 / Math.sqrt(D);
  const weights = new Float64Array(T);
  // In either layout, row t of head (b, h) starts at headStart(b, h) + t·rowStride.
  const rowStride = dims.layout === 'bhtd' ? D : H * D;
  const headStart = (b: number, h: number) => offset(dims, b, h, 0, 0);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const head = headStart(b, h);
      for (let i = 0; i < T; i++) {
        const qi = head + i * rowStride;
        let max = -Infinity;
        for (let j = 0; j < T; j++) {
          const kj = head + j * rowStride;
          let s = 0;
          for (let d = 0; d < D; d++) s += q[qi + d] * k[kj + d];
          weights[j] = s * scale;
          max = Math.max(max, weights[j]);
        }
        let sum = 0;
        for (let j = 0; j < T; j++) {
          weights[j] = Math.exp(weights[j] - max);
          sum += weights[j];
        }
        lse[(b * H + h) * T + i] = max + Math.log(sum);
        for (let j = 0; j < T; j++) {
          const vj = head + j * rowStride;
          const p = weights[j] / sum;
          for (let d = 0; d < D; d++) out[qi + d] += p * v[vj + d];
        }
      }
    }
  }
  return { out, lse };
}

/** Largest |q·k|/√D over all pairs, to confirm a test really reaches large scores. */
function maxAbsScore(dims: Dims, q: ArrayLike<number>, k: ArrayLike<number>): number {
  const { B, H, T, D } = dims;
  let m = 0;
  for (let b = 0; b < B; b++)
    for (let h = 0; h < H; h++)
      for (let i = 0; i < T; i++)
        for (let j = 0; j < T; j++) {
          let s = 0;
          for (let d = 0; d < D; d++) s += q[offset(dims, b, h, i, d)] * k[offset(dims, b, h, j, d)];
          m = Math.max(m, Math.abs(s / Math.sqrt(D)));
        }
  return m;
}

/** Runs the forward kernel directly so the LSE it saves can be read back. */
async function runForward(dims: Dims, q: Float32Array, k: Float32Array, v: Float32Array) {
  const scope = new Scope();
  try {
    const shape = shapeOf(dims);
    const out = empty(shape);
    const lse = empty([dims.B, dims.H, dims.T]);
    const qt = fromArray(q, shape);
    const kt = fromArray(k, shape);
    const vt = fromArray(v, shape);
    attentionForward(r, dims, { q: qt.buffer, k: kt.buffer, v: vt.buffer, out: out.buffer, lse: lse.buffer });
    return { out: await out.toArray(), lse: await lse.toArray() };
  } finally {
    scope.end();
  }
}

function randomInputs(dims: Dims, seed: number, scale = 1) {
  const n = dims.B * dims.H * dims.T * dims.D;
  return { q: randomArray(n, seed, scale), k: randomArray(n, seed + 1, scale), v: randomArray(n, seed + 2) };
}

// B, H, T, D: token counts of ViT models with a class token (1, 17 = 4·4+1, 50 = 7·7+1,
// 197 = 14·14+1), partial query blocks and key tiles (33, 65, 127), head sizes that are
// not multiples of 4, and both paths (see 'attention paths' below for which takes which).
const forwardCases: Array<[number, number, number, number]> = [
  [1, 1, 1, 16],
  [2, 2, 17, 16],
  [1, 3, 50, 32],
  [1, 2, 197, 64],
  [2, 1, 33, 5],
  [1, 2, 65, 7],
  [3, 1, 127, 16],
  [1, 1, 9, 1],
  [2, 2, 17, 40],
  [1, 2, 65, 38],
];

describe('attention paths', () => {
  // Premises of the forward and gradient cases: each path and each count of rows per
  // invocation is exercised. [B, H, T, D] → [path, rows per invocation] per kernel.
  type Expected = Record<AttentionKernel, string>;
  const cases: Array<{ dims: [number, number, number, number]; expected: Expected }> = [
    { dims: [2, 2, 17, 16], expected: { forward: 'direct 3', delta: 'direct 1', dq: 'direct 3', dkdv: 'direct 2' } },
    { dims: [1, 3, 50, 32], expected: { forward: 'direct 2', delta: 'direct 1', dq: 'tiled 1', dkdv: 'tiled 1' } },
    { dims: [3, 1, 127, 16], expected: { forward: 'direct 3', delta: 'direct 1', dq: 'direct 3', dkdv: 'direct 2' } },
    { dims: [2, 2, 17, 40], expected: { forward: 'direct 1', delta: 'direct 1', dq: 'direct 1', dkdv: 'direct 1' } },
    { dims: [1, 2, 65, 38], expected: { forward: 'tiled 1', delta: 'direct 1', dq: 'tiled 1', dkdv: 'tiled 1' } },
    { dims: [1, 2, 197, 64], expected: { forward: 'tiled 1', delta: 'direct 1', dq: 'tiled 1', dkdv: 'tiled 1' } },
    { dims: [1, 1, 9, 26], expected: { forward: 'direct 2', delta: 'direct 1', dq: 'direct 1', dkdv: 'direct 1' } },
    { dims: [1, 1, 65, 26], expected: { forward: 'direct 2', delta: 'direct 1', dq: 'tiled 1', dkdv: 'tiled 1' } },
  ];

  for (const { dims: [B, H, T, D], expected } of cases) {
    it(`B${B} H${H} T${T} D${D}`, () => {
      const dims = { B, H, T, D, layout: 'bthd' as const };
      for (const kernel of Object.keys(expected) as AttentionKernel[]) {
        const { path, rowsPerInvocation } = attentionPath(dims, kernel);
        expect(`${path} ${rowsPerInvocation}`, kernel).toBe(expected[kernel]);
      }
    });
  }
});

describe('attention forward', () => {
  // Outputs are convex combinations of v (|v| ≤ 1), and the LSE stays below 8 here, where
  // f32 spacing is at most 4.8e-7, so 1e-5 allows about 20 ulps. Measured on lavapipe: at
  // most 1.6e-7 on outputs and 1.1e-6 on the LSE.
  const tolerance = 1e-5;

  for (const layout of ['bhtd', 'bthd'] as const) {
    for (const [B, H, T, D] of forwardCases) {
      it(`${layout} B${B} H${H} T${T} D${D}`, async () => {
        const dims = { B, H, T, D, layout };
        const { q, k, v } = randomInputs(dims, 100 + T + D);
        const ref = referenceAttention(dims, q, k, v);

        const got = await runForward(dims, q, k, v);

        expect(maxAbsDiff(got.out, ref.out), 'output max abs error').toBeLessThanOrEqual(tolerance);
        expect(maxAbsDiff(got.lse, ref.lse), 'lse max abs error').toBeLessThanOrEqual(tolerance);
      });
    }
  }

  it('op matches reference in bthd', async () => {
    const dims: Dims = { B: 2, H: 3, T: 17, D: 8, layout: 'bthd' };
    const { q, k, v } = randomInputs(dims, 7);
    const ref = referenceAttention(dims, q, k, v);
    const scope = new Scope();
    const shape = shapeOf(dims);

    const y = attention(fromArray(q, shape), fromArray(k, shape), fromArray(v, shape), { heads: 3, layout: 'bthd' });
    const out = await y.toArray();
    scope.end();

    expect(y.shape).toEqual(shape);
    expect(maxAbsDiff(out, ref.out)).toBeLessThanOrEqual(tolerance);
  });

  // k = q with entries up to ±scale puts the diagonal scores near |q|²/√D. One case per path.
  const largeScoreCases: Array<{ path: string; dims: Dims; scale: number }> = [
    { path: 'direct', dims: { B: 1, H: 2, T: 50, D: 16, layout: 'bhtd' }, scale: 6 },
    { path: 'tiled', dims: { B: 1, H: 2, T: 65, D: 38, layout: 'bthd' }, scale: 5 },
  ];

  for (const { path, dims, scale } of largeScoreCases) {
    it(`large scores stay finite ${path}`, async () => {
      const { q, v } = randomInputs(dims, 11, scale);
      const k = q;
      expect(attentionPath(dims, 'forward').path, 'test premise: path').toBe(path);
      expect(maxAbsScore(dims, q, k), 'test premise: max |score|').toBeGreaterThan(40);
      expect(maxAbsScore(dims, q, k), 'test premise: max |score|').toBeLessThan(128);
      const ref = referenceAttention(dims, q, k, v);

      const got = await runForward(dims, q, k, v);

      expect(got.out.every(Number.isFinite), 'output finite').toBe(true);
      expect(got.lse.every(Number.isFinite), 'lse finite').toBe(true);
      // The LSE is close to the max score, below 128, where f32 spacing is at most 7.6e-6, so
      // 5e-5 allows about 6 ulps. Outputs are convex combinations of v as before and keep the
      // forward tolerance.
      expect(maxAbsDiff(got.out, ref.out), 'output max abs error').toBeLessThanOrEqual(1e-5);
      expect(maxAbsDiff(got.lse, ref.lse), 'lse max abs error').toBeLessThanOrEqual(5e-5);
    });
  }
});

/** Reference for gradCheck: attention on flat float64 inputs. */
function referenceFor(dims: Dims) {
  return ([q, k, v]: Float64Array[]) => referenceAttention(dims, q, k, v).out;
}

/** A gradCheck case for attention; inputs are N(0, 1) unless `data` gives q, k, v. */
function gradCase(dims: Dims, requiresGrad: [boolean, boolean, boolean] = [true, true, true], data?: Float32Array[]) {
  const shape = shapeOf(dims);
  return {
    inputs: requiresGrad.map((req, i) => ({ shape, requiresGrad: req, data: data ? Array.from(data[i]) : undefined })),
    engine: ([q, k, v]: Tensor[]) => attention(q, k, v, { heads: dims.H, layout: dims.layout }),
    reference: referenceFor(dims),
  };
}

describe('attention backward', () => {
  // The default gradCheck tolerance (2e-3 of the largest reference gradient) covers f32
  // rounding in the sums of a few hundred terms behind each gradient element here.
  const gradCases: Dims[] = [
    { B: 1, H: 2, T: 5, D: 8, layout: 'bhtd' },
    { B: 2, H: 2, T: 17, D: 16, layout: 'bhtd' },
    { B: 1, H: 2, T: 5, D: 8, layout: 'bthd' },
    { B: 2, H: 2, T: 17, D: 16, layout: 'bthd' },
    { B: 1, H: 2, T: 17, D: 6, layout: 'bthd' },
    { B: 2, H: 1, T: 1, D: 4, layout: 'bhtd' },
    // The direct path with one row per invocation in dQ and dK/dV.
    { B: 1, H: 1, T: 9, D: 26, layout: 'bthd' },
    // The tiled backward: two query blocks of 40 rows, and two staged tiles of 36 rows.
    { B: 1, H: 1, T: 65, D: 26, layout: 'bhtd' },
  ];

  for (const dims of gradCases) {
    const { B, H, T, D, layout } = dims;
    it(`gradients ${layout} B${B} H${H} T${T} D${D}`, async () => {
      await assertGradients(gradCase(dims));
    });
  }

  it('gradients with large scores', async () => {
    // k = q with entries up to ±7 puts the diagonal scores near |q|²/√D, about 46 at D = 8.
    const dims: Dims = { B: 1, H: 2, T: 17, D: 8, layout: 'bhtd' };
    const { q, v } = randomInputs(dims, 21, 7);
    expect(maxAbsScore(dims, q, q), 'test premise: max |score|').toBeGreaterThan(30);

    const res = await assertGradients(gradCase(dims, [true, true, true], [q, q, v]));

    res.grads.forEach((g, i) => expect(g.engine!.every(Number.isFinite), `gradient of input ${i} finite`).toBe(true));
  });
});

describe('attention backward needs', () => {
  const dims: Dims = { B: 2, H: 2, T: 17, D: 8, layout: 'bthd' };

  // [requires grad of q, k, v] → dispatch counts expected from the backward.
  const cases: Array<{ name: string; needs: [boolean, boolean, boolean]; counts: Record<string, number | undefined> }> = [
    {
      name: 'only q',
      needs: [true, false, false],
      counts: { attention_bwd_delta: 1, attention_bwd_dq: 1, attention_bwd_dkdv: undefined },
    },
    {
      name: 'only k',
      needs: [false, true, false],
      counts: { attention_bwd_delta: 1, attention_bwd_dq: undefined, 'attention_bwd_dkdv:dK': 1 },
    },
    {
      name: 'only v',
      needs: [false, false, true],
      counts: { attention_bwd_delta: undefined, attention_bwd_dq: undefined, 'attention_bwd_dkdv:dV': 1 },
    },
    {
      name: 'k and v',
      needs: [false, true, true],
      counts: { attention_bwd_delta: 1, attention_bwd_dq: undefined, 'attention_bwd_dkdv:dK+dV': 1 },
    },
    {
      name: 'all inputs',
      needs: [true, true, true],
      counts: { attention_bwd_delta: 1, attention_bwd_dq: 1, 'attention_bwd_dkdv:dK+dV': 1 },
    },
  ];

  for (const c of cases) {
    it(`${c.name} gradients`, async () => {
      r.resetCounters();

      const res = await assertGradients(gradCase(dims, c.needs));

      const counts = r.counters();
      expect(counts.attention_fwd, 'forward dispatches').toBe(1);
      for (const [kernel, n] of Object.entries(c.counts)) expect(counts[kernel], kernel).toBe(n);
      res.grads.forEach((g, i) => expect(g.engine !== null, `gradient of input ${i} computed`).toBe(c.needs[i]));
    });
  }
});

describe('attention memory', () => {
  const dims: Dims = { B: 1, H: 2, T: 17, D: 8, layout: 'bhtd' };
  const shape = shapeOf(dims);

  it('no-grad forward frees lse', () => {
    const scope = new Scope();
    const { q, k, v } = randomInputs(dims, 3);
    const inputs = [fromArray(q, shape), fromArray(k, shape), fromArray(v, shape)];
    const live = r.pool.liveBytes;

    attention(inputs[0], inputs[1], inputs[2], { heads: 2 });

    expect(r.pool.liveBytes - live).toBe(bucketBytes(q.length * 4));
    scope.end();
  });

  it('backward leaves no temporaries', async () => {
    const live = r.pool.liveBytes;
    const tape = new Tape();
    const { q, k, v } = randomInputs(dims, 5);
    const inputs = [q, k, v].map((a) => fromArray(a, shape, { requiresGrad: true }));
    const y = attention(inputs[0], inputs[1], inputs[2], { heads: 2 });
    const loss = empty([1]);
    record('probe', loss, [y], [], () => [fromArray(randomArray(y.size, 9), y.shape)]);

    tape.backward(loss);
    await r.sync();
    for (const x of inputs) x.grad?.release();
    tape.end();

    expect(r.pool.liveBytes).toBe(live);
  });
});

describe('attention validation', () => {
  it('rejects mismatched k', () => {
    const scope = new Scope();
    const q = empty([1, 2, 5, 8]);
    const k = empty([1, 2, 6, 8]);
    expect(() => attention(q, k, q, { heads: 2 })).toThrow(/k \[1,2,6,8\] must have the shape of q/);
    scope.end();
  });

  it('rejects heads not dividing C', () => {
    const scope = new Scope();
    const q = empty([1, 5, 10]);
    expect(() => attention(q, q, q, { heads: 3, layout: 'bthd' })).toThrow(/not divisible by heads 3/);
    scope.end();
  });

  it('rejects wrong head axis', () => {
    const scope = new Scope();
    const q = empty([1, 3, 5, 8]);
    expect(() => attention(q, q, q, { heads: 2 })).toThrow(/has 3 heads on axis 1/);
    scope.end();
  });
});
