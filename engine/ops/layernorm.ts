// LayerNorm over the last axis with learned gamma and beta. The forward pass saves three
// floats per row (mean as hi + lo, rstd) instead of x̂. The backward pass computes dx,
// and dgamma/dbeta only when one of them is trainable, so a frozen LayerNorm costs one
// row kernel.
import { LN_STATS, layerNormBackwardInput, layerNormBackwardParams, layerNormForward } from '../../kernels/layernorm.ts';
import { COL_BLOCK_ROWS } from '../../kernels/reduce.ts';
import { record } from '../autograd.ts';
import { runtime } from '../runtime.ts';
import { empty, type Tensor } from '../tensor.ts';
import { columnSumInto } from './reduce.ts';

/**
 * y = (x − mean)/√(var + eps)·gamma + beta over the last axis. x [.., C], gamma [C], beta [C]
 * → [.., C]. eps defaults to 1e-6. Pass HF ViT's layer_norm_eps (1e-12) to match its checkpoints.
 */
export function layerNorm(x: Tensor, gamma: Tensor, beta: Tensor, eps = 1e-6): Tensor {
  const C = x.shape.length > 0 ? x.shape[x.shape.length - 1] : 0;
  if (C === 0 || gamma.size !== C || beta.size !== C) {
    throw new Error(`layerNorm: gamma [${gamma.shape}] and beta [${beta.shape}] must have the size of the last axis of x [${x.shape}]`);
  }
  const N = x.size / C;
  const r = runtime();
  const y = empty(x.shape);
  const stats = empty([N, LN_STATS]);
  layerNormForward(r, { x: x.buffer, gamma: gamma.buffer, beta: beta.buffer, y: y.buffer, stats: stats.buffer, rows: N, cols: C, eps });

  record('layerNorm', y, [x, gamma, beta], [x, gamma, stats], (dy, needs) => {
    const dx = needs[0] ? empty(x.shape) : null;
    if (dx) {
      layerNormBackwardInput(r, { x: x.buffer, gamma: gamma.buffer, stats: stats.buffer, dy: dy.buffer, dx: dx.buffer, rows: N, cols: C });
    }
    if (!needs[1] && !needs[2]) return [dx, null, null];

    // Both come from one kernel, and an unneeded one is released at once.
    const [dgamma, dbeta] = layerNormParamGrads(x, stats, dy, N, C);
    if (!needs[1]) dgamma.release();
    if (!needs[2]) dbeta.release();
    return [dx, needs[1] ? dgamma : null, needs[2] ? dbeta : null];
  });

  // Without a recorded node nothing will read the statistics.
  if (!y.node) stats.release();
  return y;
}

/** dgamma = Σ_rows dy ⊙ x̂ and dbeta = Σ_rows dy, both [C]. */
function layerNormParamGrads(x: Tensor, stats: Tensor, dy: Tensor, N: number, C: number): [Tensor, Tensor] {
  const r = runtime();
  const dgamma = empty([C]);
  const dbeta = empty([C]);
  const blocks = Math.max(1, Math.ceil(N / COL_BLOCK_ROWS));
  if (blocks === 1) {
    layerNormBackwardParams(r, { x: x.buffer, stats: stats.buffer, dy: dy.buffer, dgamma: dgamma.buffer, dbeta: dbeta.buffer, rows: N, cols: C });
    return [dgamma, dbeta];
  }

  // Partial rows per block of COL_BLOCK_ROWS rows, then folded by the column sum.
  const partialGamma = r.pool.acquire(blocks * C * 4);
  const partialBeta = r.pool.acquire(blocks * C * 4);
  layerNormBackwardParams(r, { x: x.buffer, stats: stats.buffer, dy: dy.buffer, dgamma: partialGamma, dbeta: partialBeta, rows: N, cols: C });
  columnSumInto(partialGamma, blocks, C, dgamma.buffer);
  columnSumInto(partialBeta, blocks, C, dbeta.buffer);
  r.pool.release(partialGamma);
  r.pool.release(partialBeta);
  return [dgamma, dbeta];
}
