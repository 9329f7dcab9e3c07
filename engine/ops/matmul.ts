// Matrix multiply as an autodiff op: y = gelu?(op(a)·op(b) + bias), 2-D or batched 3-D.
// The forward is one matmul dispatch, with bias and GELU fused into its epilogue. The
// backward runs the dA matmul only when a needs a gradient, the dB matmul only when b does,
// and the bias column sum only when the bias does, so a frozen operand costs nothing.
// Dispatches carry no tag: this op does not know which operand is a weight (model code
// that does calls the kernel directly and tags its dW dispatches).
import { geluBackward } from '../../kernels/gelu.ts';
import { matmul as matmulKernel } from '../../kernels/matmul.ts';
import { record } from '../autograd.ts';
import { runtime } from '../runtime.ts';
import { empty, releaseTemp, type Tensor } from '../tensor.ts';
import { columnSumInto } from './reduce.ts';

export interface MatmulOptions {
  /** a is stored transposed: [K, M] (or [B, K, M]). */
  transA?: boolean;
  /** b is stored transposed: [N, K] (or [B, N, K]), e.g. a weight [out, in]. */
  transB?: boolean;
  /** [N], added to every row. */
  bias?: Tensor;
  /** Apply tanh-GELU to the result; the pre-activation is kept for the backward pass. */
  gelu?: boolean;
}

/** Sizes of one call: B batch items of op(a) [M, K] · op(b) [K, N]. */
interface Dims {
  B: number;
  M: number;
  N: number;
  K: number;
  /** b is 2-D and shared by every batch item of a. */
  bShared: boolean;
}

/**
 * Multiplies: y = op(a)·op(b) (+ bias), then GELU when opts.gelu is set.
 * a [M, K] or [B, M, K]. b [K, N], or [B, K, N] with a's batch; a 2-D b is shared by every
 * batch item. transA and transB swap the last two axes of the stored operand.
 * Returns [M, N] or [B, M, N].
 *
 *   matmul(x, w, { transB: true, bias, gelu: true })   // x [B, T, C], w [4C, C] → [B, T, 4C]
 */
export function matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  const transA = opts.transA ?? false;
  const transB = opts.transB ?? false;
  const d = resolveDims(a, b, transA, transB, opts.bias);
  const { B, M, N, K } = d;
  const r = runtime();

  const y = empty(a.shape.length === 3 ? [B, M, N] : [M, N]);
  const inputs = opts.bias ? [a, b, opts.bias] : [a, b];
  const preact = opts.gelu && inputs.some((t) => t.requiresGrad) ? empty(y.shape) : null;

  // With a shared b and rows of a contiguous, the batch folds into M: one GEMM, full tiles.
  const fold = d.bShared && !transA;
  matmulKernel(r, {
    a: a.buffer, b: b.buffer, c: y.buffer,
    M: fold ? B * M : M, N, K, batch: fold ? 1 : B,
    strideB: d.bShared ? 0 : K * N,
    transA, transB,
    bias: opts.bias?.buffer, gelu: opts.gelu, preact: preact?.buffer,
  });

  // Each gradient reads the other operand, so an operand is saved only when it will be read.
  const saved = [...(b.requiresGrad ? [a] : []), ...(a.requiresGrad ? [b] : []), ...(preact ? [preact] : [])];
  return record('matmul', y, inputs, saved, (dy, needs) => {
    // dZ = dY·gelu'(z) through the fused activation.
    let dz = dy;
    if (preact) {
      dz = empty(y.shape);
      geluBackward(r, dy.buffer, preact.buffer, dz.buffer, y.size);
    }

    const da = needs[0] ? matmulGradA(dz, a.shape, b, d, transA, transB) : null;
    const db = needs[1] ? matmulGradB(dz, a, b.shape, d, transA, transB) : null;
    let dbias: Tensor | null = null;
    if (opts.bias && needs[2]) {
      dbias = empty([N]);
      columnSumInto(dz.buffer, B * M, N, dbias.buffer);
    }

    if (dz !== dy) releaseTemp(dz);
    return opts.bias ? [da, db, dbias] : [da, db];
  });
}

function resolveDims(a: Tensor, b: Tensor, transA: boolean, transB: boolean, bias: Tensor | undefined): Dims {
  const ra = a.shape.length;
  const rb = b.shape.length;
  if (ra !== 2 && ra !== 3) throw new Error(`matmul: a must be 2-D or 3-D, got [${a.shape}]`);
  if (rb !== 2 && rb !== 3) throw new Error(`matmul: b must be 2-D or 3-D, got [${b.shape}]`);
  if (ra === 2 && rb === 3) throw new Error(`matmul: a 2-D a [${a.shape}] with a batched b [${b.shape}] is not supported; give a the batch axis of b`);
  if (ra === 3 && rb === 3 && a.shape[0] !== b.shape[0]) throw new Error(`matmul: batch sizes differ: a [${a.shape}], b [${b.shape}]`);

  const [a0, a1] = a.shape.slice(-2);
  const [b0, b1] = b.shape.slice(-2);
  const M = transA ? a1 : a0;
  const K = transA ? a0 : a1;
  const N = transB ? b0 : b1;
  const Kb = transB ? b1 : b0;
  if (K !== Kb) throw new Error(`matmul: inner sizes differ: op(a) is [${M}, ${K}], op(b) is [${Kb}, ${N}] (a [${a.shape}], b [${b.shape}], transA ${transA}, transB ${transB})`);
  if (bias && (bias.shape.length !== 1 || bias.shape[0] !== N)) throw new Error(`matmul: bias must be [${N}], got [${bias.shape}]`);

  return { B: ra === 3 ? a.shape[0] : 1, M, N, K, bShared: rb === 2 };
}

/**
 * Gradient of a, stored like a. dZ [B, M, N], b as in the forward.
 * op(a) = dZ·op(b)ᵀ, so a = dZ·op(b)ᵀ, or with transA aᵀ-stored = op(b)·dZᵀ.
 */
function matmulGradA(dz: Tensor, aShape: readonly number[], b: Tensor, d: Dims, transA: boolean, transB: boolean): Tensor {
  const { B, M, N, K } = d;
  const r = runtime();
  const da = empty(aShape);
  const strideB = d.bShared ? 0 : K * N;

  if (!transA) {
    // da [M, K] = dZ [M, N] · op(b)ᵀ [N, K]; a shared b lets the batch fold into M.
    const fold = d.bShared;
    matmulKernel(r, { a: dz.buffer, b: b.buffer, c: da.buffer, M: fold ? B * M : M, N: K, K: N, batch: fold ? 1 : B, strideA: M * N, strideB, strideC: M * K, transB: !transB });
  } else {
    // da [K, M] = op(b) [K, N] · dZᵀ [N, M].
    matmulKernel(r, { a: b.buffer, b: dz.buffer, c: da.buffer, M: K, N: M, K: N, batch: B, strideA: strideB, strideB: M * N, strideC: K * M, transA: transB, transB: true });
  }
  return da;
}

/**
 * Gradient of b, stored like b. op(b) = op(a)ᵀ·dZ, so b = op(a)ᵀ·dZ, or with transB
 * bᵀ-stored = dZᵀ·op(a). A shared b sums its gradient over the batch.
 */
function matmulGradB(dz: Tensor, a: Tensor, bShape: readonly number[], d: Dims, transA: boolean, transB: boolean): Tensor {
  const { B, M, N, K } = d;
  const r = runtime();
  const db = empty(bShape);
  // One product per batch item; fold > 1 stacks that many items along the reduction axis.
  const product = (c: GPUBuffer, fold: number, batch: number) => {
    if (!transB) {
      // db [K, N] = op(a)ᵀ [K, M] · dZ [M, N].
      matmulKernel(r, { a: a.buffer, b: dz.buffer, c, M: K, N, K: fold * M, batch, strideA: M * K, strideB: M * N, strideC: K * N, transA: !transA });
    } else {
      // db [N, K] = dZᵀ [N, M] · op(a) [M, K].
      matmulKernel(r, { a: dz.buffer, b: a.buffer, c, M: N, N: K, K: fold * M, batch, strideA: M * N, strideB: M * K, strideC: K * N, transA: true, transB: transA });
    }
  };

  if (!d.bShared || B === 1) {
    product(db.buffer, 1, B);
  } else if (!transA) {
    // Rows of a and dZ are contiguous across the batch: Σ_b op(a_b)ᵀ·dZ_b is one GEMM over B·M rows.
    product(db.buffer, B, 1);
  } else {
    // a stored [B, K, M] cannot be stacked along M; compute per item, then sum over the batch.
    const perItem = empty([B, ...bShape]);
    product(perItem.buffer, 1, B);
    columnSumInto(perItem.buffer, B, K * N, db.buffer);
    releaseTemp(perItem);
  }
  return db;
}
