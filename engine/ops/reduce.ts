// Sum and mean over every element, over the last axis, and over every leading axis (the
// column sum a bias gradient needs). The kernels (kernels/reduce.ts) do one pass each,
// and this file chains the passes and owns their scratch buffers. Scalars are shape [1].
import { elementwise } from '../../kernels/elementwise.ts';
import { COL_BLOCK_ROWS, columnSumPass, reduceRows } from '../../kernels/reduce.ts';
import { record } from '../autograd.ts';
import { runtime } from '../runtime.ts';
import { empty, type Tensor } from '../tensor.ts';

/** Elements one first-pass workgroup reduces when a whole buffer is summed. */
export const CHUNK = 4096;

/** Number of first-pass partials sumAllInto() produces for n elements. */
export function chunkCount(n: number): number {
  return Math.max(1, Math.ceil(n / CHUNK));
}

/**
 * Writes each CHUNK-element chunk's sum (or sum of squares) of x[0..n) to
 * partials[offset ..]; returns how many it wrote (chunkCount(n)).
 */
export function reduceChunksInto(kernel: 'sum' | 'sumsq', x: GPUBuffer, n: number, partials: GPUBuffer, offset: number): number {
  const chunks = chunkCount(n);
  reduceRows(runtime(), { kernel, x, out: partials, rows: chunks, rowLen: CHUNK, n, outOffset: offset });
  return chunks;
}

/**
 * out[outOffset] = scale · Σ x[0..n) (or Σ x², kernel "sumsq"). Two passes when n exceeds
 * one chunk: per-chunk partials, then one workgroup over the partials. Summing in chunks
 * and trees also keeps the longest chain of f32 additions under ~50 for a million
 * elements, where a serial sum would have a chain of n.
 */
export function sumAllInto(kernel: 'sum' | 'sumsq', x: GPUBuffer, n: number, out: GPUBuffer, outOffset = 0, scale = 1): void {
  const r = runtime();
  if (n <= CHUNK) {
    reduceRows(r, { kernel, x, out, rows: 1, rowLen: n, outOffset, scale });
    return;
  }

  const chunks = chunkCount(n);
  const partials = r.pool.acquire(chunks * 4);
  reduceChunksInto(kernel, x, n, partials, 0);
  reduceRows(r, { kernel: 'sum', x: partials, out, rows: 1, rowLen: chunks, outOffset, scale });
  // Safe to recycle now: dispatches run in recording order, so any later writer of this
  // buffer runs after the pass that reads it.
  r.pool.release(partials);
}

/**
 * out[c] = scale · Σ_r x[r, c] (times y[r, c] when y is given), x and y [rows, cols].
 * Each pass folds COL_BLOCK_ROWS (256) rows into one, so the work spreads over many workgroups however
 * tall x is.
 */
export function columnSumInto(x: GPUBuffer, rows: number, cols: number, out: GPUBuffer, opts: { y?: GPUBuffer; scale?: number; tag?: string } = {}): void {
  const r = runtime();
  let src = x;
  let srcY = opts.y;
  let srcRows = rows;
  let scratch: GPUBuffer | null = null;

  for (;;) {
    const blocks = Math.ceil(srcRows / COL_BLOCK_ROWS);
    const last = blocks <= 1;
    const dst = last ? out : r.pool.acquire(blocks * cols * 4);
    columnSumPass(r, { x: src, y: srcY, out: dst, rows: srcRows, cols, scale: last ? opts.scale : 1, tag: opts.tag });
    if (scratch) r.pool.release(scratch);
    if (last) return;
    scratch = dst;
    src = dst;
    srcY = undefined;
    srcRows = blocks;
  }
}

// ---- ops ----------------------------------------------------------------------------------

/** Σ of every element. x: any shape → [1]. */
export function sum(x: Tensor): Tensor {
  return reduceAll(x, 1, 'sum');
}

/** Mean of every element. x: any shape → [1]. */
export function mean(x: Tensor): Tensor {
  return reduceAll(x, 1 / x.size, 'mean');
}

function reduceAll(x: Tensor, scale: number, op: string): Tensor {
  const y = empty([1]);
  sumAllInto('sum', x.buffer, x.size, y.buffer, 0, scale);

  return record(op, y, [x], [], (dy) => {
    const dx = empty(x.shape);
    elementwise(runtime(), { kernel: 'broadcast', expr: 'a * s', out: dx.buffer, n: x.size, operands: [{ buffer: dy.buffer, size: 1 }], scalar: scale });
    return [dx];
  });
}

/** Σ over the last axis. x [.., C] → [..] ([1] for a 1-D x). */
export function sumLastAxis(x: Tensor): Tensor {
  return reduceLastAxis(x, false);
}

/** Mean over the last axis. x [.., C] → [..] ([1] for a 1-D x). */
export function meanLastAxis(x: Tensor): Tensor {
  return reduceLastAxis(x, true);
}

function reduceLastAxis(x: Tensor, isMean: boolean): Tensor {
  if (x.shape.length === 0) throw new Error(`sumLastAxis: ${x} has no axis to reduce`);
  const C = x.shape[x.shape.length - 1];
  const N = x.size / C;
  const scale = isMean ? 1 / C : 1;
  const y = empty(x.shape.length > 1 ? x.shape.slice(0, -1) : [1]);
  reduceRows(runtime(), { kernel: 'sum', x: x.buffer, out: y.buffer, rows: N, rowLen: C, scale });

  return record(isMean ? 'meanLastAxis' : 'sumLastAxis', y, [x], [], (dy) => {
    // dy [N] → dx [N, C]: output element i reads dy[i / C].
    const dx = empty(x.shape);
    elementwise(runtime(), { kernel: 'broadcast', expr: 'a * s', out: dx.buffer, n: x.size, operands: [{ buffer: dy.buffer, size: N, inner: C }], scalar: scale });
    return [dx];
  });
}

/** Σ over every leading axis, the gradient of a bias added to x. x [.., C] → [C]. */
export function columnSum(x: Tensor): Tensor {
  if (x.shape.length === 0) throw new Error(`columnSum: ${x} has no axis`);
  const C = x.shape[x.shape.length - 1];
  const N = x.size / C;
  const y = empty([C]);
  columnSumInto(x.buffer, N, C, y.buffer);

  return record('columnSum', y, [x], [], (dy) => {
    // dy [C] → dx [N, C]: output element i reads dy[i % C].
    const dx = empty(x.shape);
    elementwise(runtime(), { kernel: 'broadcast', expr: 'a', out: dx.buffer, n: x.size, operands: [{ buffer: dy.buffer, size: C }] });
    return [dx];
  });
}
