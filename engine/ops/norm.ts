// Frobenius norms: of one tensor as a differentiable op, of many tensors with one readback
// (the per-epoch weight norms the convergence test reads), and the device-side sum of
// squares of many tensors (global gradient-norm clipping, which must not read back).
// The sum of squares is a chunked tree reduction counted as kernel "sumsq".
import { elementwise } from '../../kernels/elementwise.ts';
import { reduceRows } from '../../kernels/reduce.ts';
import { record } from '../autograd.ts';
import { runtime } from '../runtime.ts';
import { empty, type Tensor } from '../tensor.ts';
import { chunkCount, reduceChunksInto, sumAllInto } from './reduce.ts';

/** ‖x‖_F = √Σ x². x: any shape → [1]. The gradient x/‖x‖ is taken as 0 where ‖x‖ = 0. */
export function frobeniusNorm(x: Tensor): Tensor {
  const r = runtime();
  const y = empty([1]);
  const squares = r.pool.acquire(4);
  sumAllInto('sumsq', x.buffer, x.size, squares);
  elementwise(r, { kernel: 'sqrt', expr: 'sqrt(a)', out: y.buffer, n: 1, operands: [{ buffer: squares }] });
  r.pool.release(squares);

  return record('frobeniusNorm', y, [x], [x, y], (dy) => {
    const dx = empty(x.shape);
    elementwise(r, {
      kernel: 'frobenius_backward',
      expr: 'select(0.0, a * b / c, c > 0.0)',
      out: dx.buffer,
      n: x.size,
      operands: [{ buffer: x.buffer }, { buffer: dy.buffer, size: 1 }, { buffer: y.buffer, size: 1 }],
    });
    return [dx];
  });
}

/**
 * ‖t‖_F of every tensor, computed on the device into one buffer and read back once.
 * Dispatches: one "sumsq" per tensor, one "sum" more for each tensor above 4096
 * elements, and one "sqrt" for all of them.
 */
export async function frobeniusNorms(tensors: Tensor[]): Promise<number[]> {
  if (tensors.length === 0) return [];
  const r = runtime();
  const T = tensors.length;
  const squares = r.pool.acquire(T * 4);
  const norms = r.pool.acquire(T * 4);
  try {
    tensors.forEach((t, k) => sumAllInto('sumsq', t.buffer, t.size, squares, k));
    elementwise(r, { kernel: 'sqrt', expr: 'sqrt(a)', out: norms, n: T, operands: [{ buffer: squares }] });
    return Array.from(new Float32Array(await r.read(norms, T * 4)));
  } finally {
    r.pool.release(squares);
    r.pool.release(norms);
  }
}

/**
 * Σ over every tensor of Σ t², as a device tensor [1] (no readback). Dispatches: one
 * "sumsq" per tensor writing its chunk partials side by side, and one "sum" over all of them.
 */
export function sumOfSquares(tensors: Tensor[]): Tensor {
  const r = runtime();
  const out = empty([1]);
  const total = tensors.reduce((n, t) => n + chunkCount(t.size), 0);
  const partials = r.pool.acquire(Math.max(1, total) * 4);

  let offset = 0;
  for (const t of tensors) offset += reduceChunksInto('sumsq', t.buffer, t.size, partials, offset);
  reduceRows(r, { kernel: 'sum', x: partials, out: out.buffer, rows: 1, rowLen: total });

  r.pool.release(partials);
  return out;
}
