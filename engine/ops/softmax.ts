// Softmax over the last axis. The backward rule needs only the output, so that is all it saves.
import { softmaxBackward, softmaxForward } from '../../kernels/softmax.ts';
import { record } from '../autograd.ts';
import { runtime } from '../runtime.ts';
import { empty, type Tensor } from '../tensor.ts';

/** Softmax over the last axis. x [.., C] → same shape, each row summing to 1. */
export function softmax(x: Tensor): Tensor {
  if (x.shape.length === 0) throw new Error(`softmax: ${x} has no axis`);
  const C = x.shape[x.shape.length - 1];
  const N = x.size / C;
  const y = empty(x.shape);
  softmaxForward(runtime(), { x: x.buffer, y: y.buffer, rows: N, cols: C });

  return record('softmax', y, [x], [y], (dy) => {
    const dx = empty(x.shape);
    softmaxBackward(runtime(), { y: y.buffer, dy: dy.buffer, dx: dx.buffer, rows: N, cols: C });
    return [dx];
  });
}
