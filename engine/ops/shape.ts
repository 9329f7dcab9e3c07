// Shape ops that move no data: reshape is a view of the same storage, and its gradient is
// the same view taken the other way.
import { record } from '../autograd.ts';
import type { Tensor } from '../tensor.ts';

/** Same elements, new shape. x: any shape with the same element count. */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const y = x.view(shape);

  return record('reshape', y, [x], [], (dy) => [dy.view(x.shape)]);
}
