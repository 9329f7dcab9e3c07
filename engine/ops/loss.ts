// Classification loss: mean softmax cross-entropy over the batch, with label smoothing.
// Labels are i32 class indices and take no gradient.
import { CE_STATS, crossEntropyBackward, crossEntropyForward } from '../../kernels/cross_entropy.ts';
import { reduceRows } from '../../kernels/reduce.ts';
import { record } from '../autograd.ts';
import { runtime } from '../runtime.ts';
import { empty, type Tensor } from '../tensor.ts';

export interface CrossEntropyOptions {
  /** ε in target = (1 − ε)·onehot + ε/K. The default 0 is plain cross-entropy. */
  labelSmoothing?: number;
}

/**
 * Mean cross-entropy of softmax(logits) against labels. logits [B, K], labels i32 [B] → [1].
 * A label outside [0, K) contributes loss 0 and gradient 0 but still counts in B.
 */
export function crossEntropy(logits: Tensor, labels: Tensor, opts: CrossEntropyOptions = {}): Tensor {
  if (logits.shape.length !== 2) throw new Error(`crossEntropy: logits must be [B, K], got [${logits.shape}]`);
  const [B, K] = logits.shape;
  if (labels.dtype !== 'i32' || labels.size !== B) {
    throw new Error(`crossEntropy: labels must be i32 [${B}], got ${labels.dtype} [${labels.shape}]`);
  }
  const labelSmoothing = opts.labelSmoothing ?? 0;
  if (!(labelSmoothing >= 0 && labelSmoothing <= 1)) throw new Error(`crossEntropy: labelSmoothing must be in [0, 1], got ${labelSmoothing}`);

  const r = runtime();
  const rowLoss = empty([B]);
  const stats = empty([B, CE_STATS]);
  const loss = empty([1]);
  crossEntropyForward(r, { logits: logits.buffer, labels: labels.buffer, rowLoss: rowLoss.buffer, stats: stats.buffer, rows: B, classes: K, labelSmoothing });
  reduceRows(r, { kernel: 'sum', x: rowLoss.buffer, out: loss.buffer, rows: 1, rowLen: B, scale: 1 / B });
  rowLoss.release();

  record('crossEntropy', loss, [logits, labels], [logits, labels, stats], (dLoss) => {
    const dLogits = empty(logits.shape);
    crossEntropyBackward(r, { logits: logits.buffer, labels: labels.buffer, stats: stats.buffer, dLoss: dLoss.buffer, dLogits: dLogits.buffer, rows: B, classes: K, labelSmoothing });
    return [dLogits, null];
  });

  // Without a recorded node nothing will read the statistics.
  if (!loss.node) stats.release();
  return loss;
}
