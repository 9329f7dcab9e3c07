// GELU (tanh approximation) as a standalone op. The matmul op fuses the same function into
// its epilogue; this one is for activations that do not come straight out of a matmul.
import { geluBackward, geluForward } from '../../kernels/gelu.ts';
import { record } from '../autograd.ts';
import { runtime } from '../runtime.ts';
import { empty, type Tensor } from '../tensor.ts';

/** y = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), elementwise. x: any shape. */
export function gelu(x: Tensor): Tensor {
  const y = empty(x.shape);
  geluForward(runtime(), x.buffer, y.buffer, x.size);

  return record('gelu', y, [x], [x], (dy) => {
    const dx = empty(x.shape);
    geluBackward(runtime(), dy.buffer, x.buffer, dx.buffer, x.size);
    return [dx];
  });
}
