// The matmul kernel against a float64 reference: every transpose, batching, broadcast,
// alpha, accumulate, bias, GELU with its pre-activation, tails on every axis, both the
// subgroup-broadcast and the direct path, thin outputs computed transposed, and the optional
// second product over K2. Then the matmul and gelu ops' gradients and the dispatch counters.
import { beforeAll, describe, expect, it } from 'vitest';
import { Tape, record } from '../engine/autograd.ts';
import { gelu } from '../engine/ops/gelu.ts';
import { matmul } from '../engine/ops/matmul.ts';
import type { Runtime } from '../engine/runtime.ts';
import { Scope, empty, fromArray, type Tensor } from '../engine/tensor.ts';
import { matmul as matmulKernel, type MatmulArgs } from '../kernels/matmul.ts';
import type { DispatchSpec, KernelRunner } from '../kernels/runner.ts';
import { assertGradients } from './helpers/gradcheck.ts';
import { gpu } from './helpers/gpu.ts';
import { randomArray } from './helpers/reference.ts';

let r: Runtime;
beforeAll(async () => {
  r = await gpu();
});

function geluReference(z: number): number {
  return 0.5 * z * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (z + 0.044715 * z ** 3)));
}

function geluGradReference(z: number): number {
  const k = Math.sqrt(2 / Math.PI);
  const t = Math.tanh(k * (z + 0.044715 * z ** 3));
  return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * k * (1 + 3 * 0.044715 * z * z);
}

// ---- kernel against the float64 reference ---------------------------------------------

interface KernelCase {
  M: number;
  N: number;
  K: number;
  batch?: number;
  /** Element strides; 0 broadcasts. Defaults as in MatmulArgs. */
  strideA?: number;
  strideB?: number;
  transA?: boolean;
  transB?: boolean;
  alpha?: number;
  accumulate?: boolean;
  bias?: boolean;
  gelu?: boolean;
  preact?: boolean;
  /** A second product alpha2·op(A2)·op(B2) over K2, added before the epilogue. */
  second?: SecondProduct;
}

interface SecondProduct {
  K2: number;
  transA2?: boolean;
  transB2?: boolean;
  alpha2?: number;
}

interface Reference {
  /** z = alpha·op(A)·op(B) (+ C_old) (+ bias). */
  z: Float64Array;
  /** What C must hold: gelu(z) or z. */
  y: Float64Array;
  /** Per element: |alpha|·Σ|a·b| (+ |alpha2|·Σ|a2·b2|) + |C_old| + |bias|, the scale of its rounding error. */
  magnitude: Float64Array;
}

/** Adds alpha·Σ_k op(A)[i,k]·op(B)[k,j] per batch item into z, and its absolute sum into magnitude. */
function addProduct(
  z: Float64Array, magnitude: Float64Array, a: Float32Array, b: Float32Array,
  d: { M: number; N: number; K: number; batch: number; strideA: number; strideB: number; transA?: boolean; transB?: boolean; alpha: number },
): void {
  const { M, N, K } = d;
  for (let t = 0; t < d.batch; t++) {
    for (let i = 0; i < M; i++) {
      for (let j = 0; j < N; j++) {
        let sum = 0;
        let abs = 0;
        for (let k = 0; k < K; k++) {
          const av = a[t * d.strideA + (d.transA ? k * M + i : i * K + k)];
          const bv = b[t * d.strideB + (d.transB ? j * K + k : k * N + j)];
          sum += av * bv;
          abs += Math.abs(av * bv);
        }
        const o = t * M * N + i * N + j;
        z[o] += d.alpha * sum;
        magnitude[o] += Math.abs(d.alpha) * abs;
      }
    }
  }
}

function reference(
  c: KernelCase, a: Float32Array, b: Float32Array, cOld: Float32Array, bias: Float32Array,
  a2: Float32Array, b2: Float32Array,
): Reference {
  const { M, N, K } = c;
  const batch = c.batch ?? 1;
  const strideA = c.strideA ?? M * K;
  const strideB = c.strideB ?? K * N;
  const z = new Float64Array(batch * M * N);
  const magnitude = new Float64Array(batch * M * N);
  addProduct(z, magnitude, a, b, { M, N, K, batch, strideA, strideB, transA: c.transA, transB: c.transB, alpha: c.alpha ?? 1 });
  if (c.second) {
    const { K2, transA2, transB2 } = c.second;
    addProduct(z, magnitude, a2, b2, { M, N, K: K2, batch, strideA: M * K2, strideB: K2 * N, transA: transA2, transB: transB2, alpha: c.second.alpha2 ?? 1 });
  }
  for (let t = 0; t < batch; t++) {
    for (let i = 0; i < M; i++) {
      for (let j = 0; j < N; j++) {
        const o = t * M * N + i * N + j;
        if (c.accumulate) {
          z[o] += cOld[o];
          magnitude[o] += Math.abs(cOld[o]);
        }
        if (c.bias) {
          z[o] += bias[j];
          magnitude[o] += Math.abs(bias[j]);
        }
      }
    }
  }
  return { z, y: c.gelu ? z.map(geluReference) : z, magnitude };
}

/** Runs the kernel on random data; returns C, the pre-activation (if written) and the reference. */
async function runKernel(c: KernelCase, runner: KernelRunner = r, seed = 1) {
  const { M, N, K } = c;
  const batch = c.batch ?? 1;
  const aSize = (batch - 1) * (c.strideA ?? M * K) + M * K;
  const bSize = (batch - 1) * (c.strideB ?? K * N) + K * N;
  const a = randomArray(aSize, seed);
  const b = randomArray(bSize, seed + 1);
  const cOld = randomArray(batch * M * N, seed + 2);
  const bias = randomArray(N, seed + 3);
  const K2 = c.second?.K2 ?? 0;
  const a2 = randomArray(batch * M * K2, seed + 4);
  const b2 = randomArray(batch * K2 * N, seed + 5);
  const ref = reference(c, a, b, cOld, bias, a2, b2);

  const s = new Scope();
  try {
    const out = fromArray(cOld, [batch * M * N]);
    const preact = c.preact ? empty([batch * M * N]) : null;
    const args: MatmulArgs = {
      a: fromArray(a, [aSize]).buffer,
      b: fromArray(b, [bSize]).buffer,
      c: out.buffer,
      M, N, K, batch,
      strideA: c.strideA, strideB: c.strideB,
      transA: c.transA, transB: c.transB,
      alpha: c.alpha, accumulate: c.accumulate,
      bias: c.bias ? fromArray(bias, [N]).buffer : undefined,
      gelu: c.gelu,
      preact: preact?.buffer,
    };
    if (c.second) {
      args.a2 = fromArray(a2, [a2.length]).buffer;
      args.b2 = fromArray(b2, [b2.length]).buffer;
      args.K2 = K2;
      args.transA2 = c.second.transA2;
      args.transB2 = c.second.transB2;
      args.alpha2 = c.second.alpha2;
    }
    matmulKernel(runner, args);
    return { y: await out.toArray(), z: preact ? await preact.toArray() : null, ref };
  } finally {
    s.end();
  }
}

/**
 * Largest error relative to the allowed one (≤ 1 passes). Every fma rounds to within
 * 2^-24 of the running sum, which is at most the magnitude Σ|a·b|, so even the worst case
 * (K·2^-24·magnitude) stays below 1e-6·√K·magnitude for K ≤ 277, the largest K here; the
 * 1e-7 floor covers sums that cancel to zero. With a second product K is K + K2 + 2, the
 * chain of both products plus the roundings of alpha and alpha2. GELU's slope is at most
 * 1.13, so its output gets 1.2× the bound plus 1e-6 for the driver's tanh.
 */
function worstError(got: Float32Array, want: Float64Array, magnitude: Float64Array, K: number, slope = 1, extra = 0): number {
  let worst = 0;
  for (let i = 0; i < want.length; i++) {
    const bound = slope * (1e-6 * Math.sqrt(K) * magnitude[i] + 1e-7) + extra;
    worst = Math.max(worst, Math.abs(got[i] - want[i]) / bound);
  }
  return worst;
}

async function expectMatches(c: KernelCase, runner: KernelRunner = r): Promise<void> {
  const { y, z, ref } = await runKernel(c, runner);
  expect(y.length, 'output length').toBe(ref.y.length);
  const slope = c.gelu ? 1.2 : 1;
  const extra = c.gelu ? 1e-6 : 0;
  const chain = c.second ? c.K + c.second.K2 + 2 : c.K;
  expect(worstError(y, ref.y, ref.magnitude, chain, slope, extra), 'C error / tolerance').toBeLessThanOrEqual(1);
  if (c.preact) expect(worstError(z!, ref.z, ref.magnitude, chain), 'preact error / tolerance').toBeLessThanOrEqual(1);
}

const SHAPES: Array<[number, number, number]> = [
  [1, 1, 1],
  [7, 33, 65],
  [127, 65, 33],
  [64, 64, 64],
  [128, 256, 96],
  [33, 20, 9],
];
const TRANSPOSES: Array<[boolean, boolean]> = [
  [false, false],
  [true, false],
  [false, true],
  [true, true],
];
const tName = (tA: boolean, tB: boolean) => `${tA ? 'Aᵀ' : 'A'}·${tB ? 'Bᵀ' : 'B'}`;

describe('matmul kernel', () => {
  for (const [M, N, K] of SHAPES) {
    for (const [transA, transB] of TRANSPOSES) {
      it(`${M}×${N}×${K} ${tName(transA, transB)}`, async () => {
        await expectMatches({ M, N, K, transA, transB });
      });
    }
  }

  // Batched with every transpose; then each operand broadcast (stride 0).
  for (const [transA, transB] of TRANSPOSES) {
    it(`batch 3, 19×37×13 ${tName(transA, transB)}`, async () => {
      await expectMatches({ M: 19, N: 37, K: 13, batch: 3, transA, transB });
    });
  }
  it('batch 4 with B broadcast', async () => {
    await expectMatches({ M: 33, N: 64, K: 20, batch: 4, strideB: 0, transB: true });
  });
  it('batch 3 with A broadcast', async () => {
    await expectMatches({ M: 16, N: 40, K: 12, batch: 3, strideA: 0, transA: true });
  });

  // Epilogues, each on an aligned and an unaligned shape.
  const EPILOGUES: Array<[string, KernelCase]> = [
    ['alpha', { M: 0, N: 0, K: 0, alpha: -0.37 }],
    ['accumulate', { M: 0, N: 0, K: 0, accumulate: true, alpha: 0.5 }],
    ['bias', { M: 0, N: 0, K: 0, bias: true }],
    ['gelu', { M: 0, N: 0, K: 0, gelu: true }],
    ['bias, gelu, preact', { M: 0, N: 0, K: 0, bias: true, gelu: true, preact: true }],
    ['all', { M: 0, N: 0, K: 0, alpha: 2, accumulate: true, bias: true, gelu: true, preact: true, transB: true }],
  ];
  for (const [name, epilogue] of EPILOGUES) {
    for (const [M, N, K] of [[32, 64, 16], [23, 45, 11]] as const) {
      it(`${name}, ${M}×${N}×${K}`, async () => {
        await expectMatches({ ...epilogue, M, N, K });
      });
    }
  }

  // Batched epilogue: C and preact index per batch item. A·B runs as Cᵀ = Bᵀ·Aᵀ with a
  // transposed store, so it is checked beside a layout that stores C directly.
  for (const [transA, transB] of [[false, false], [true, false]] as const) {
    it(`batch 2, ${tName(transA, transB)}, full epilogue`, async () => {
      await expectMatches({ M: 21, N: 36, K: 8, batch: 2, transA, transB, accumulate: true, bias: true, gelu: true, preact: true });
    });
  }
});

// A C with few columns (N = 16, a LoRA rank) runs as Cᵀ = op(B)ᵀ·op(A)ᵀ stored transposed,
// and one with few rows and an A·B layout runs untransposed; each layout on both sides.
describe('matmul kernel, thin outputs', () => {
  const THIN: Array<[number, number, number]> = [
    [45, 16, 23],
    [16, 45, 23],
  ];
  for (const [M, N, K] of THIN) {
    for (const [transA, transB] of TRANSPOSES) {
      it(`${M}×${N}×${K} ${tName(transA, transB)}`, async () => {
        await expectMatches({ M, N, K, transA, transB });
      });
    }
  }
  it('thin, batch 3, epilogue', async () => {
    await expectMatches({ M: 37, N: 16, K: 12, batch: 3, transB: true, alpha: 0.5, accumulate: true, bias: true, gelu: true, preact: true });
  });
});

// The second product C += alpha2·op(A2)·op(B2) over its own K2. The linear layer uses it
// with a first product X·Wᵀ (kept as is) and dZ·W (an A·B, computed transposed), so every
// layout of the second product is checked beside both, with K2 not a multiple of 4 here
// and a multiple in the LoRA shapes below.
describe('matmul kernel, second product', () => {
  const FIRST: Array<[string, boolean, boolean]> = [['A·Bᵀ', false, true], ['A·B', false, false]];
  for (const [firstName, transA, transB] of FIRST) {
    for (const [transA2, transB2] of TRANSPOSES) {
      it(`${firstName} + ${tName(transA2, transB2)}, 33×37×19, K2 3`, async () => {
        await expectMatches({ M: 33, N: 37, K: 19, transA, transB, alpha: 0.7, second: { K2: 3, transA2, transB2, alpha2: -1.3 } });
      });
    }
  }

  it('first product Aᵀ·B and Aᵀ·Bᵀ', async () => {
    await expectMatches({ M: 20, N: 41, K: 9, transA: true, second: { K2: 5, transA2: true } });
    await expectMatches({ M: 20, N: 41, K: 9, transA: true, transB: true, second: { K2: 5, transB2: true } });
  });

  // The shapes of one LoRA layer at rank 16: Y = X·Wᵀ + s·U·Bᵀ and dX = dZ·W + dU·A.
  it('lora forward shape, aligned', async () => {
    await expectMatches({ M: 64, N: 96, K: 32, transB: true, second: { K2: 16, transB2: true, alpha2: 0.5 } });
  });
  it('lora backward shape, aligned', async () => {
    await expectMatches({ M: 64, N: 96, K: 32, second: { K2: 16 } });
  });

  // Alpha, accumulate, bias, GELU and its pre-activation at once, on both epilogues (C
  // stored directly, and stored transposed).
  for (const [firstName, transA, transB] of FIRST) {
    it(`full epilogue, ${firstName}, 23×45×11, K2 7`, async () => {
      await expectMatches({ M: 23, N: 45, K: 11, transA, transB, alpha: 2, accumulate: true, bias: true, gelu: true, preact: true, second: { K2: 7, transB2: transB, alpha2: 0.25 } });
    });
  }

  it('batch 2, thin N', async () => {
    await expectMatches({ M: 29, N: 16, K: 10, batch: 2, transB: true, bias: true, second: { K2: 6, transB2: true, alpha2: 3 } });
  });
  it('alpha 0 keeps only the second product', async () => {
    await expectMatches({ M: 17, N: 33, K: 8, alpha: 0, second: { K2: 4 } });
  });
});

// A runner without the subgroups feature gets the direct path, where every invocation
// loads its own A. Devices whose subgroup size is not 8 run it, so lavapipe runs it only here.
const directRunner = (): KernelRunner => ({
  dispatch: (spec: DispatchSpec) => r.dispatch(spec),
  maxWorkgroupsPerDim: r.maxWorkgroupsPerDim,
  features: new Set<string>(),
  subgroupMinSize: 0,
  subgroupMaxSize: 0,
});

describe('matmul kernel, direct path', () => {
  const CASES: Array<[string, KernelCase]> = [
    ['7×33×65 A·B', { M: 7, N: 33, K: 65 }],
    ['64×64×64 Aᵀ·Bᵀ', { M: 64, N: 64, K: 64, transA: true, transB: true }],
    ['33×20×9 Aᵀ·B, batch 2, epilogue', { M: 33, N: 20, K: 9, batch: 2, transA: true, accumulate: true, bias: true, gelu: true, preact: true }],
    ['32×64×16 Aᵀ·B', { M: 32, N: 64, K: 16, transA: true }],
    ['45×16×23 A·Bᵀ, thin', { M: 45, N: 16, K: 23, transB: true }],
    ['33×37×19 A·B + A·B, K2 7, epilogue', { M: 33, N: 37, K: 19, bias: true, gelu: true, preact: true, second: { K2: 7, alpha2: 0.5 } }],
    ['33×37×19 A·Bᵀ + Aᵀ·Bᵀ, K2 6', { M: 33, N: 37, K: 19, transB: true, second: { K2: 6, transA2: true, transB2: true } }],
  ];
  for (const [name, c] of CASES) {
    it(name, async () => {
      await expectMatches(c, directRunner());
    });
  }
});

describe('matmul kernel, grid and limits', () => {
  it('folds row blocks past the per-dimension limit', async () => {
    // 127 rows = 8 row blocks, × 3 batch items = 24 tiles over a limit of 5: y = 5, z = 5.
    const small: KernelRunner = {
      dispatch: (spec: DispatchSpec) => r.dispatch(spec),
      maxWorkgroupsPerDim: 5,
      features: r.features,
      subgroupMinSize: r.subgroupMinSize,
      subgroupMaxSize: r.subgroupMaxSize,
    };
    await expectMatches({ M: 127, N: 20, K: 7, batch: 3, transB: true }, small);
  });

  it('gelu stays finite for huge inputs', async () => {
    // K = 1 and b = 1, so z = a exactly: z³ overflows f32, and the tanh argument is ±inf before the clamp.
    const zs = [1e30, -1e30, 1e4, -1e4, 60, -60, 0];
    const s = new Scope();
    try {
      const out = empty([zs.length]);
      const preact = empty([zs.length]);
      matmulKernel(r, { a: fromArray(zs, [zs.length]).buffer, b: fromArray([1], [1]).buffer, c: out.buffer, M: zs.length, N: 1, K: 1, gelu: true, preact: preact.buffer });
      const y = await out.toArray();
      // gelu(z) = z for large positive z and 0 for large negative z, to f32 rounding of z.
      zs.forEach((z, i) => expect(Math.abs(y[i] - geluReference(z)), `gelu(${z})`).toBeLessThanOrEqual(1e-6 * Math.max(1, Math.abs(z))));
    } finally {
      s.end();
    }
  });

  it('rejects invalid arguments', () => {
    const s = new Scope();
    try {
      const a = empty([64]).buffer;
      const b = empty([64]).buffer;
      const c = empty([64]).buffer;
      expect(() => matmulKernel(r, { a, b, c, M: 0, N: 4, K: 4 }), 'M = 0').toThrow(/invalid M/);
      expect(() => matmulKernel(r, { a, b, c, M: 4.5, N: 4, K: 4 }), 'fractional M').toThrow(/invalid M/);
      expect(() => matmulKernel(r, { a, b, c: a, M: 4, N: 4, K: 4 }), 'c aliases a').toThrow(/alias/);
      expect(() => matmulKernel(r, { a, b, c, M: 4, N: 4, K: 4, preact: c }), 'preact without gelu').toThrow(/preact/);
      expect(() => matmulKernel(r, { a, b, c, M: 4, N: 4, K: 4, batch: 2, strideC: 0 }), 'strideC 0').toThrow(/strideC/);
      // The pool rounds 64 floats up to 256 bytes: 16×16 needs 1024.
      expect(() => matmulKernel(r, { a, b, c, M: 16, N: 16, K: 16 }), 'buffer too small').toThrow(/buffer a has 256 bytes, needs 1024/);
      expect(() => matmulKernel(r, { a, b, c, M: 4, N: 4, K: 4, a2: a, b2: b }), 'a2 without K2').toThrow(/all of a2, b2 and K2/);
      expect(() => matmulKernel(r, { a, b, c, M: 4, N: 4, K: 4, a2: a, K2: 4 }), 'a2 without b2').toThrow(/all of a2, b2 and K2/);
      expect(() => matmulKernel(r, { a, b, c, M: 4, N: 4, K: 4, a2: a, b2: b, K2: 0 }), 'K2 = 0').toThrow(/invalid K2/);
      expect(() => matmulKernel(r, { a, b, c, M: 4, N: 4, K: 4, a2: c, b2: b, K2: 4 }), 'c aliases a2').toThrow(/alias/);
      expect(() => matmulKernel(r, { a, b, c, M: 4, N: 4, K: 4, a2: a, b2: b, K2: 32 }), 'a2 too small').toThrow(/buffer a2 has 256 bytes, needs 512/);
    } finally {
      s.end();
    }
  });
});

describe('matmul dispatch counters', () => {
  it('counts one matmul per call and its tag', () => {
    const s = new Scope();
    try {
      const a = empty([16]).buffer;
      const b = empty([16]).buffer;
      const c = empty([16]).buffer;
      r.resetCounters();
      matmulKernel(r, { a, b, c, M: 4, N: 4, K: 4 });
      matmulKernel(r, { a, b, c, M: 4, N: 4, K: 4, transA: true, tag: 'dW' });
      matmulKernel(r, { a, b, c, M: 2, N: 8, K: 2, batch: 2, gelu: true, tag: 'dW' });
      matmulKernel(r, { a, b, c, M: 4, N: 4, K: 4, a2: a, b2: b, K2: 4, tag: 'dX' });
      const counts = r.counters();
      expect(counts.matmul, 'matmul dispatches').toBe(4);
      expect(counts['matmul:dW'], 'matmul:dW dispatches').toBe(2);
      expect(counts['matmul:dX'], 'two products, one dispatch').toBe(1);
    } finally {
      s.end();
    }
  });

  it('frozen b dispatches no gradient matmul for it', async () => {
    const s = new Scope();
    const tape = new Tape();
    try {
      const x = fromArray(randomArray(6 * 5, 1), [6, 5], { requiresGrad: true });
      const w = fromArray(randomArray(4 * 5, 2), [4, 5]);
      const bias = fromArray(randomArray(4, 3), [4]);
      const y = matmul(x, w, { transB: true, bias, gelu: true });
      const loss = fromArray([0], [1]);
      // dL/dy = 1 everywhere through a probe node, as the gradient-check harness does.
      record('probe', loss, [y], [], () => [fromArray(new Float32Array(y.size).fill(1), y.shape)]);
      r.resetCounters();
      tape.backward(loss);
      const counts = r.counters();
      expect(counts.matmul, 'backward matmuls (dX only)').toBe(1);
      expect(x.grad, 'x.grad').not.toBeNull();
      expect(w.grad, 'w.grad').toBeNull();
      x.grad?.release();
    } finally {
      tape.end();
      s.end();
    }
  });
});

// ---- op gradients ---------------------------------------------------------------------

/** Float64 reference of the op: op(a)·op(b) (+ bias) (then GELU), batched like the op. */
function opReference(
  a: Float64Array, b: Float64Array, bias: Float64Array | null,
  d: { B: number; M: number; N: number; K: number; bShared: boolean; transA?: boolean; transB?: boolean; gelu?: boolean },
): Float64Array {
  const { B, M, N, K } = d;
  const y = new Float64Array(B * M * N);
  for (let t = 0; t < B; t++) {
    const ao = t * M * K;
    const bo = d.bShared ? 0 : t * K * N;
    for (let i = 0; i < M; i++) {
      for (let j = 0; j < N; j++) {
        let s = bias ? bias[j] : 0;
        for (let k = 0; k < K; k++) {
          s += a[ao + (d.transA ? k * M + i : i * K + k)] * b[bo + (d.transB ? j * K + k : k * N + j)];
        }
        y[t * M * N + i * N + j] = d.gelu ? geluReference(s) : s;
      }
    }
  }
  return y;
}

describe('matmul op gradients', () => {
  const M = 5;
  const N = 6;
  const K = 7;

  for (const [transA, transB] of TRANSPOSES) {
    it(`2-D ${tName(transA, transB)}`, async () => {
      await assertGradients({
        inputs: [{ shape: transA ? [K, M] : [M, K] }, { shape: transB ? [N, K] : [K, N] }],
        engine: ([a, b]) => matmul(a, b, { transA, transB }),
        reference: ([a, b]) => opReference(a, b, null, { B: 1, M, N, K, bShared: true, transA, transB }),
      });
    });
  }

  it('2-D with bias and gelu', async () => {
    await assertGradients({
      inputs: [{ shape: [M, K] }, { shape: [N, K] }, { shape: [N] }],
      engine: ([a, b, bias]) => matmul(a, b, { transB: true, bias, gelu: true }),
      reference: ([a, b, bias]) => opReference(a, b, bias, { B: 1, M, N, K, bShared: true, transB: true, gelu: true }),
    });
  });

  it('gelu with frozen b', async () => {
    await assertGradients({
      inputs: [{ shape: [M, K] }, { shape: [K, N], requiresGrad: false }, { shape: [N] }],
      engine: ([a, b, bias]) => matmul(a, b, { bias, gelu: true }),
      reference: ([a, b, bias]) => opReference(a, b, bias, { B: 1, M, N, K, bShared: true, gelu: true }),
    });
  });

  for (const [transA, transB] of TRANSPOSES) {
    it(`batched 3-D·3-D ${tName(transA, transB)}`, async () => {
      const B = 3;
      await assertGradients({
        inputs: [{ shape: transA ? [B, K, M] : [B, M, K] }, { shape: transB ? [B, N, K] : [B, K, N] }],
        engine: ([a, b]) => matmul(a, b, { transA, transB }),
        reference: ([a, b]) => opReference(a, b, null, { B, M, N, K, bShared: false, transA, transB }),
      });
    });
  }

  // A 2-D b is shared by the batch, so its gradient sums over the batch: one GEMM with the
  // batch folded into the reduction, or per item and then summed when a is transposed.
  for (const [transA, transB] of TRANSPOSES) {
    it(`broadcast 3-D·2-D ${tName(transA, transB)}, bias, gelu`, async () => {
      const B = 3;
      await assertGradients({
        inputs: [{ shape: transA ? [B, K, M] : [B, M, K] }, { shape: transB ? [N, K] : [K, N] }, { shape: [N] }],
        engine: ([a, b, bias]) => matmul(a, b, { transA, transB, bias, gelu: true }),
        reference: ([a, b, bias]) => opReference(a, b, bias, { B, M, N, K, bShared: true, transA, transB, gelu: true }),
      });
    });
  }

  it('rejects mismatched shapes', () => {
    const s = new Scope();
    try {
      const a = empty([3, 4]);
      expect(() => matmul(a, empty([5, 2])), 'inner sizes').toThrow(/inner sizes differ/);
      expect(() => matmul(empty([2, 3, 4]), empty([3, 4, 2])), 'batch sizes').toThrow(/batch sizes differ/);
      expect(() => matmul(a, empty([2, 4, 2])), '2-D a, 3-D b').toThrow(/not supported/);
      expect(() => matmul(a, empty([4, 2]), { bias: empty([3]) }), 'bias size').toThrow(/bias must be \[2\]/);
    } finally {
      s.end();
    }
  });
});

describe('gelu op', () => {
  it('forward matches the reference', async () => {
    const xs = [-1e30, -60, -5, -1.5, -0.3, 0, 0.2, 1, 3.7, 60, 1e30];
    const s = new Scope();
    try {
      const y = await gelu(fromArray(xs, [xs.length])).toArray();
      // f32 rounding of the cubic and the driver's tanh: a few ulp of |x|, never NaN.
      xs.forEach((x, i) => expect(Math.abs(y[i] - geluReference(x)), `gelu(${x})`).toBeLessThanOrEqual(1e-6 * Math.max(1, Math.abs(x))));
    } finally {
      s.end();
    }
  });

  it('gradient', async () => {
    await assertGradients({
      inputs: [{ shape: [3, 11], scale: 2 }],
      engine: ([x]) => gelu(x),
      reference: ([x]) => x.map(geluReference),
    });
  });

  it('gradient is 0 and 1 far out', async () => {
    const s = new Scope();
    const tape = new Tape();
    try {
      const x = fromArray([-1e30, -50, 50, 1e30], [4], { requiresGrad: true });
      const y: Tensor = gelu(x);
      const loss = fromArray([0], [1]);
      record('probe', loss, [y], [], () => [fromArray([1, 1, 1, 1], [4])]);
      tape.backward(loss);
      const g = await x.grad!.toArray();
      // gelu' is 0 far left and 1 far right; the float64 reference agrees at ±50.
      const zs = [-1e30, -50, 50, 1e30];
      const want = [0, geluGradReference(-50), geluGradReference(50), 1];
      zs.forEach((z, i) => expect(g[i], `gelu'(${z})`).toBeCloseTo(want[i], 6));
      x.grad?.release();
    } finally {
      tape.end();
      s.end();
    }
  });
});
