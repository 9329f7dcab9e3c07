// The harness must be able to fail: a reshape whose backward rule corrupts one element of
// the gradient has to be caught.
import { beforeAll, describe, expect, it } from 'vitest';
import { record } from '../engine/autograd.ts';
import { reshape } from '../engine/ops/shape.ts';
import type { Tensor } from '../engine/tensor.ts';
import { assertGradients, gradCheck } from './helpers/gradcheck.ts';
import { gpu } from './helpers/gpu.ts';
import { fill } from '../kernels/fill.ts';
import { runtime } from '../engine/runtime.ts';

beforeAll(async () => {
  await gpu();
});

/** reshape whose backward overwrites the first gradient element with 0.5. */
function wrongReshape(x: Tensor): Tensor {
  const y = x.view([x.size]);
  return record('wrong', y, [x], [], (dy) => {
    const dx = dy.view(x.shape);
    const bad = dx.view(x.shape);
    fill(runtime(), bad.buffer, 1, 0.5);
    return [bad];
  });
}

describe('gradcheck harness', () => {
  it('passes a correct rule', async () => {
    await assertGradients({
      inputs: [{ shape: [3, 5] }],
      engine: ([x]) => reshape(x, [5, 3]),
      reference: ([x]) => x.slice(),
    });
  });

  it('catches a wrong rule', async () => {
    const res = await gradCheck({
      inputs: [{ shape: [3, 5] }],
      engine: ([x]) => wrongReshape(x),
      reference: ([x]) => x.slice(),
    });
    expect(res.worst).toBeGreaterThan(1);
  });
});
