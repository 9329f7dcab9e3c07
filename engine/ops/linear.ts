// The linear layer with an optional LoRA adapter, as one op:
//
//   Y = X·Wᵀ + b + s·(X·Aᵀ)·Bᵀ        X [N, Cin], W [Cout, Cin], b [Cout], A [R, Cin], B [Cout, R]
//
// The adapter rides on the base GEMMs: the matmul kernel's second product extends K by R,
// so Y = X·Wᵀ + s·U·Bᵀ (+ b, GELU) and dX = dZ·W + dU·A are one dispatch each, with no
// extra pass over Y or dX. Backward computes each gradient only when its input requires
// one. That is the whole point of freezing: with W and b frozen, `needs` is false for them
// and the dW GEMM (dZᵀ·X, the largest matmul of the backward pass) and the bias column sum
// are never dispatched. The adapter's own gradients cost three thin GEMMs of rank R.
import { matmul as matmulKernel } from '../../kernels/matmul.ts';
import { geluBackward } from '../../kernels/gelu.ts';
import { record } from '../autograd.ts';
import { runtime } from '../runtime.ts';
import { columnSumInto } from './reduce.ts';
import { empty, releaseTemp, type Tensor } from '../tensor.ts';

export interface LoraParams {
  /** A [R, Cin], Kaiming-uniform at attachment. */
  a: Tensor;
  /** B [Cout, R], zero at attachment so the layer's output is unchanged. */
  b: Tensor;
  /** s = alpha / R (or alpha / √R with rsLoRA). */
  scale: number;
}

export interface LinearOptions {
  /** Apply tanh-GELU to the output (fused into the last GEMM's epilogue). */
  gelu?: boolean;
}

/** x [..., Cin] → [..., Cout]. */
export function linear(x: Tensor, w: Tensor, bias: Tensor | null, lora: LoraParams | null, opts: LinearOptions = {}): Tensor {
  const [Cout, Cin] = w.shape;
  if (x.shape[x.shape.length - 1] !== Cin) throw new Error(`linear: input [${x.shape}] does not match weight [${w.shape}]`);
  const N = x.size / Cin;
  const R = lora ? lora.a.shape[0] : 0;
  const r = runtime();
  const y = empty([...x.shape.slice(0, -1), Cout]);
  const z = opts.gelu ? empty(y.shape) : null;

  // Forward: U = X·Aᵀ [N, R], then Y = X·Wᵀ + s·U·Bᵀ + b in one GEMM over K = [Cin | R],
  // GELU in its epilogue.
  let u: Tensor | null = null;
  if (lora) {
    u = empty([N, R]);
    matmulKernel(r, { a: x.buffer, b: lora.a.buffer, c: u.buffer, M: N, N: R, K: Cin, transB: true });
  }
  const adapterForward = u && lora ? { a2: u.buffer, b2: lora.b.buffer, K2: R, transB2: true, alpha2: lora.scale } : {};
  matmulKernel(r, {
    a: x.buffer, b: w.buffer, c: y.buffer, M: N, N: Cout, K: Cin, transB: true,
    ...adapterForward,
    bias: bias?.buffer, gelu: opts.gelu, preact: z?.buffer,
  });

  const inputs = [x, w, ...(bias ? [bias] : []), ...(lora ? [lora.a, lora.b] : [])];
  const saved = [x, ...(u ? [u] : []), ...(z ? [z] : [])];
  return record(lora ? 'linear_lora' : 'linear', y, inputs, saved, (dy, needs) => {
    const [needX, needW] = needs;
    const needBias = bias ? needs[2] : false;
    const needA = lora ? needs[inputs.length - 2] : false;
    const needB = lora ? needs[inputs.length - 1] : false;

    // Through the GELU first: dZ = dY·gelu'(z).
    let dz = dy;
    if (z) {
      dz = empty(y.shape);
      geluBackward(r, dy.buffer, z.buffer, dz.buffer, y.size);
    }

    // dU = s·dZ·B [N, R], shared by dX and dA.
    let du: Tensor | null = null;
    if (lora && (needX || needA)) {
      du = empty([N, R]);
      matmulKernel(r, { a: dz.buffer, b: lora.b.buffer, c: du.buffer, M: N, N: R, K: Cout, alpha: lora.scale, tag: 'dU' });
    }

    // dX = dZ·W + dU·A, one GEMM over K = [Cout | R].
    let dx: Tensor | null = null;
    if (needX) {
      dx = empty(x.shape);
      const adapterBackward = du && lora ? { a2: du.buffer, b2: lora.a.buffer, K2: R } : {};
      matmulKernel(r, { a: dz.buffer, b: w.buffer, c: dx.buffer, M: N, N: Cin, K: Cout, ...adapterBackward, tag: 'dX' });
    }

    // dW = dZᵀ·X and db = Σ_rows dZ: skipped entirely when the base is frozen.
    let dw: Tensor | null = null;
    if (needW) {
      dw = empty(w.shape);
      matmulKernel(r, { a: dz.buffer, b: x.buffer, c: dw.buffer, M: Cout, N: Cin, K: N, transA: true, tag: 'dW' });
    }
    let db: Tensor | null = null;
    if (needBias) {
      db = empty([Cout]);
      columnSumInto(dz.buffer, N, Cout, db.buffer, { tag: 'db' });
    }

    // Adapter gradients: dB = s·dZᵀ·U [Cout, R], dA = dUᵀ·X [R, Cin].
    let dA: Tensor | null = null;
    let dB: Tensor | null = null;
    if (lora && needB) {
      dB = empty(lora.b.shape);
      matmulKernel(r, { a: dz.buffer, b: u!.buffer, c: dB.buffer, M: Cout, N: R, K: N, transA: true, alpha: lora.scale, tag: 'dB' });
    }
    if (lora && needA) {
      dA = empty(lora.a.shape);
      matmulKernel(r, { a: du!.buffer, b: x.buffer, c: dA.buffer, M: R, N: Cin, K: N, transA: true, tag: 'dA' });
    }

    if (dz !== dy) releaseTemp(dz);
    releaseTemp(du);
    return [dx, dw, ...(bias ? [db] : []), ...(lora ? [dA, dB] : [])];
  });
}
