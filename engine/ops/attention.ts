// Multi-head scaled dot-product attention as one autodiff op, softmax(Q·Kᵀ/√D)·V, on the
// fused kernels in kernels/attention.ts. The forward saves the output and the per-row
// log-sum-exp (LSE) instead of the T×T weights. The backward recomputes the weights from
// the LSE and computes only the gradients requested. Masking, dropout and the q/k/v
// projections are left to the model.
import { record } from '../autograd.ts';
import { runtime } from '../runtime.ts';
import { empty, type Tensor } from '../tensor.ts';
import {
  attentionBackwardDelta,
  attentionBackwardKV,
  attentionBackwardQ,
  attentionForward,
  MAX_HEAD_SIZE,
  type AttentionDims,
  type AttentionLayout,
} from '../../kernels/attention.ts';

export type { AttentionLayout } from '../../kernels/attention.ts';

export interface AttentionOptions {
  /** Number of heads H. */
  heads: number;
  /** 'bhtd' (default): q, k, v are [B, H, T, D]. 'bthd': [B, T, H·D], heads interleaved as [H, D]. */
  layout?: AttentionLayout;
}

/**
 * Self-attention over T tokens: out = softmax(q·kᵀ/√D)·v per batch element and head, in
 * the layout of the inputs. q, k, v: [B, H, T, D] ('bhtd') or [B, T, H·D] ('bthd'), same
 * shape. Gradients flow to every input that requires one.
 *
 * @example
 * const y = attention(q, k, v, { heads: 6, layout: 'bthd' }); // q, k, v: [8, 197, 384]
 */
export function attention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions): Tensor {
  const dims = attentionDims(q, k, v, opts);
  const { B, H, T } = dims;
  const r = runtime();

  const out = empty(q.shape);
  const lse = empty([B, H, T]);
  attentionForward(r, dims, { q: q.buffer, k: k.buffer, v: v.buffer, out: out.buffer, lse: lse.buffer });

  const y = record('attention', out, [q, k, v], [q, k, v, out, lse], (dout, needs) => attentionBackward(dims, q, k, v, out, lse, dout, needs));
  // With no node recorded nothing will read the LSE, so it goes back to the pool now.
  if (!y.node) lse.release();
  return y;
}

/**
 * Computes dq, dk, dv for dout (shape of q), each only when needed. delta enters only
 * through dS, so it is computed only for dq or dk: a step that needs only dv runs one kernel.
 */
function attentionBackward(
  dims: AttentionDims,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  out: Tensor,
  lse: Tensor,
  dout: Tensor,
  needs: boolean[],
): Array<Tensor | null> {
  const [needQ, needK, needV] = needs;
  const { B, H, T } = dims;
  const r = runtime();

  let delta: Tensor | null = null;
  if (needQ || needK) {
    delta = empty([B, H, T]);
    attentionBackwardDelta(r, dims, { out: out.buffer, dout: dout.buffer, delta: delta.buffer });
  }

  const dk = needK ? empty(k.shape) : null;
  const dv = needV ? empty(v.shape) : null;
  if (dk || dv) {
    attentionBackwardKV(r, dims, {
      q: q.buffer,
      k: k.buffer,
      v: dk ? v.buffer : null,
      dout: dout.buffer,
      lse: lse.buffer,
      delta: dk ? delta!.buffer : null,
      dk: dk?.buffer ?? null,
      dv: dv?.buffer ?? null,
    });
  }

  let dq: Tensor | null = null;
  if (needQ) {
    dq = empty(q.shape);
    attentionBackwardQ(r, dims, { q: q.buffer, k: k.buffer, v: v.buffer, dout: dout.buffer, lse: lse.buffer, delta: delta!.buffer, dq: dq.buffer });
  }

  // Work recorded later runs later on the queue, so delta can be reused right away.
  delta?.release();
  return [dq, dk, dv];
}

/** Validates the inputs and reads B, H, T, D from them. */
function attentionDims(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions): AttentionDims {
  const layout = opts.layout ?? 'bhtd';
  const H = opts.heads;
  if (!Number.isInteger(H) || H < 1) throw new Error(`attention: heads must be a positive integer, got ${H}`);
  for (const [name, t] of [['k', k], ['v', v]] as const) {
    if (t.shape.length !== q.shape.length || t.shape.some((n, i) => n !== q.shape[i])) {
      throw new Error(`attention: ${name} [${t.shape}] must have the shape of q [${q.shape}]`);
    }
  }
  for (const t of [q, k, v]) {
    if (t.dtype !== 'f32') throw new Error(`attention: inputs must be f32, got ${t}`);
  }

  let B: number;
  let T: number;
  let D: number;
  if (layout === 'bhtd') {
    if (q.shape.length !== 4) throw new Error(`attention: layout 'bhtd' expects q of shape [B, H, T, D], got [${q.shape}]`);
    if (q.shape[1] !== H) throw new Error(`attention: q [${q.shape}] has ${q.shape[1]} heads on axis 1, but heads is ${H}`);
    [B, , T, D] = q.shape;
  } else if (layout === 'bthd') {
    if (q.shape.length !== 3) throw new Error(`attention: layout 'bthd' expects q of shape [B, T, H·D], got [${q.shape}]`);
    const C = q.shape[2];
    if (C % H !== 0) throw new Error(`attention: channel count ${C} of q [${q.shape}] is not divisible by heads ${H}`);
    [B, T] = q.shape;
    D = C / H;
  } else {
    throw new Error(`attention: invalid layout '${String(layout)}'; expected 'bhtd' or 'bthd'`);
  }

  if (B < 1 || T < 1 || D < 1) throw new Error(`attention: q [${q.shape}] has an empty axis`);
  if (D > MAX_HEAD_SIZE) throw new Error(`attention: head size ${D} exceeds the maximum ${MAX_HEAD_SIZE}; use more heads`);
  return { B, H, T, D, layout };
}
