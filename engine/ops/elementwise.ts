// Elementwise arithmetic with trailing-shape broadcasting: add, sub, mul, and scale or add a
// constant. Either operand of a binary op may be the smaller one, [B,T,C] + [T,C] or
// [C] * [B,T,C]. Its gradient is the sum over the axes it was broadcast along.
import { elementwise, type ElementwiseOperand } from '../../kernels/elementwise.ts';
import { record } from '../autograd.ts';
import { runtime } from '../runtime.ts';
import { empty, sizeOf, type Tensor } from '../tensor.ts';
import { columnSumInto } from './reduce.ts';

/** Drops leading axes of length 1: [1, 1, C] broadcasts like [C]. */
function squeezeLeading(shape: readonly number[]): readonly number[] {
  let k = 0;
  while (k < shape.length && shape[k] === 1) k++;
  return shape.slice(k);
}

function isSuffix(small: readonly number[], big: readonly number[]): boolean {
  if (small.length > big.length) return false;
  const offset = big.length - small.length;
  return small.every((d, i) => d === big[offset + i]);
}

/**
 * Output shape of a binary op: the shape of the operand with more elements (the longer
 * shape on a tie). The other operand, without its leading 1s, must equal the trailing
 * axes of the output, so it repeats every `size` elements.
 */
export function broadcastShape(a: readonly number[], b: readonly number[]): readonly number[] {
  const sa = sizeOf(a);
  const sb = sizeOf(b);
  const aIsOut = sa > sb || (sa === sb && a.length >= b.length);
  const [big, small] = aIsOut ? [a, b] : [b, a];
  if (!isSuffix(squeezeLeading(small), squeezeLeading(big))) {
    throw new Error(`invalid broadcast: [${small}] must match the trailing axes of [${big}] (leading 1s allowed)`);
  }
  return big;
}

function operand(t: Tensor): ElementwiseOperand {
  return { buffer: t.buffer, size: t.size };
}

/**
 * Reduces a full-size gradient dy to an operand of shape `shape`: dy itself when no
 * broadcast happened, else its column sum over the broadcast axes. A same-size gradient is
 * a view of dy unless `copy` is set. Two inputs must not share one gradient buffer,
 * because the tape accumulates into gradient buffers in place.
 */
function reduceToShape(dy: Tensor, shape: readonly number[], opts: { copy?: boolean; scale?: number } = {}): Tensor {
  const size = sizeOf(shape);
  const scale = opts.scale ?? 1;

  if (size < dy.size) {
    const dx = empty(shape);
    columnSumInto(dy.buffer, dy.size / size, size, dx.buffer, { scale });
    return dx;
  }
  if (scale !== 1) {
    const dx = empty(shape);
    elementwise(runtime(), { kernel: 'scale', expr: 'a * s', out: dx.buffer, n: size, operands: [{ buffer: dy.buffer }], scalar: scale });
    return dx;
  }
  if (opts.copy) {
    const dx = empty(shape);
    runtime().copy(dy.buffer, 0, dx.buffer, 0, dy.bytes);
    return dx;
  }
  return dy.view(shape);
}

// ---- add, sub ------------------------------------------------------------------------------

/** a + b with trailing-shape broadcasting. */
export function add(a: Tensor, b: Tensor): Tensor {
  return addOrSub(a, b, 1);
}

/** a − b with trailing-shape broadcasting. */
export function sub(a: Tensor, b: Tensor): Tensor {
  return addOrSub(a, b, -1);
}

function addOrSub(a: Tensor, b: Tensor, sign: 1 | -1): Tensor {
  const y = empty(broadcastShape(a.shape, b.shape));
  const expr = sign === 1 ? 'a + b' : 'a - b';
  elementwise(runtime(), { kernel: sign === 1 ? 'add' : 'sub', expr, out: y.buffer, n: y.size, operands: [operand(a), operand(b)] });

  return record(sign === 1 ? 'add' : 'sub', y, [a, b], [], (dy, needs) => {
    const da = needs[0] ? reduceToShape(dy, a.shape) : null;
    const db = needs[1] ? reduceToShape(dy, b.shape, { copy: needs[0], scale: sign }) : null;
    return [da, db];
  });
}

// ---- mul ----------------------------------------------------------------------------------

/** a ⊙ b with trailing-shape broadcasting. */
export function mul(a: Tensor, b: Tensor): Tensor {
  const y = empty(broadcastShape(a.shape, b.shape));
  elementwise(runtime(), { kernel: 'mul', expr: 'a * b', out: y.buffer, n: y.size, operands: [operand(a), operand(b)] });

  // da reads b and db reads a, so save only what a needed gradient will read.
  const saved = [...(a.requiresGrad ? [b] : []), ...(b.requiresGrad ? [a] : [])];
  return record('mul', y, [a, b], saved, (dy, needs) => {
    const da = needs[0] ? mulGradient(dy, a, b) : null;
    const db = needs[1] ? mulGradient(dy, b, a) : null;
    return [da, db];
  });
}

/** d(x ⊙ other)/dx: dy ⊙ other, summed over the axes x was broadcast along. */
function mulGradient(dy: Tensor, x: Tensor, other: Tensor): Tensor {
  const dx = empty(x.shape);
  if (x.size < dy.size) {
    // x was broadcast, so `other` is full size: fuse the product into the column sum.
    columnSumInto(dy.buffer, dy.size / x.size, x.size, dx.buffer, { y: other.buffer });
  } else {
    elementwise(runtime(), { kernel: 'mul', expr: 'a * b', out: dx.buffer, n: dx.size, operands: [{ buffer: dy.buffer }, operand(other)] });
  }
  return dx;
}

// ---- constants ----------------------------------------------------------------------------

/** x · c for a host constant c. */
export function scale(x: Tensor, c: number): Tensor {
  const y = empty(x.shape);
  elementwise(runtime(), { kernel: 'scale', expr: 'a * s', out: y.buffer, n: y.size, operands: [operand(x)], scalar: c });

  return record('scale', y, [x], [], (dy) => [reduceToShape(dy, x.shape, { scale: c })]);
}

/** x + c for a host constant c. */
export function addScalar(x: Tensor, c: number): Tensor {
  const y = empty(x.shape);
  elementwise(runtime(), { kernel: 'addScalar', expr: 'a + s', out: y.buffer, n: y.size, operands: [operand(x)], scalar: c });

  return record('addScalar', y, [x], [], (dy) => [reduceToShape(dy, x.shape)]);
}
