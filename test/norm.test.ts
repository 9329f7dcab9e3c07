// Frobenius norms: one tensor (with its gradient), many tensors with one readback, and the
// device-side sum of squares, against float64 references on odd and multi-chunk sizes.
import { afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { frobeniusNorm, frobeniusNorms, sumOfSquares } from '../engine/ops/norm.ts';
import type { Runtime } from '../engine/runtime.ts';
import { Scope, fromArray } from '../engine/tensor.ts';
import { assertGradients } from './helpers/gradcheck.ts';
import { gpu } from './helpers/gpu.ts';
import { randomArray } from './helpers/reference.ts';

let r: Runtime;
beforeAll(async () => {
  r = await gpu();
});
afterEach(() => {
  vi.restoreAllMocks();
});

function sumSquares(x: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < x.length; i++) s += x[i] * x[i];
  return s;
}

/**
 * Squares are positive, so the f32 sum's relative error is at most chain·u, where chain is
 * the longest run of additions (≤ 32 sequential + 7 tree levels per pass, two passes).
 * The square root halves it, so 1e-5 relative is a bound with margin.
 */
const RTOL = 1e-5;
const SIZES = [1, 7, 33, 65, 127, 1000, 4097, 100_003];

describe('frobeniusNorm', () => {
  for (const n of SIZES) {
    it(`frobeniusNorm [${n}]`, async () => {
      const host = randomArray(n, n);
      const s = new Scope();
      const y = frobeniusNorm(fromArray(host, [n]));
      const value = (await y.toArray())[0];
      s.end();
      expect(y.shape).toEqual([1]);
      expect(Math.abs(value - Math.sqrt(sumSquares(host)))).toBeLessThanOrEqual(RTOL * Math.sqrt(sumSquares(host)));
    });
  }

  it('frobeniusNorm gradient', async () => {
    // Default gradcheck tolerance: x/‖x‖ is one division per element.
    await assertGradients({
      inputs: [{ shape: [4, 9] }],
      engine: ([x]) => frobeniusNorm(x),
      reference: ([x]) => Float64Array.of(Math.sqrt(sumSquares(x))),
    });
  });

  it('frobeniusNorm gradient of zeros is zero', async () => {
    // Central differences of ‖x‖ at 0 are (h − h)/2h = 0, the value the op defines.
    const res = await assertGradients({
      inputs: [{ shape: [5], data: [0, 0, 0, 0, 0] }],
      engine: ([x]) => frobeniusNorm(x),
      reference: ([x]) => Float64Array.of(Math.sqrt(sumSquares(x))),
    });
    expect(Array.from(res.grads[0].engine!)).toEqual([0, 0, 0, 0, 0]);
  });
});

describe('frobeniusNorms', () => {
  it('frobeniusNorms match per-tensor norms', async () => {
    const hosts = SIZES.map((n) => randomArray(n, n + 3));
    const s = new Scope();
    const tensors = hosts.map((h) => fromArray(h, [h.length]));
    const read = vi.spyOn(r, 'read');
    r.resetCounters();

    const norms = await frobeniusNorms(tensors);
    s.end();

    expect(read).toHaveBeenCalledTimes(1);
    expect(r.counters().sumsq).toBe(SIZES.length);
    expect(norms.length).toBe(SIZES.length);
    hosts.forEach((h, k) => {
      const ref = Math.sqrt(sumSquares(h));
      expect(Math.abs(norms[k] - ref), `tensor ${k} of ${h.length} elements`).toBeLessThanOrEqual(RTOL * ref);
    });
  });

  it('frobeniusNorms of no tensors', async () => {
    expect(await frobeniusNorms([])).toEqual([]);
  });
});

describe('sumOfSquares', () => {
  it('sumOfSquares adds every tensor without readback', async () => {
    const hosts = SIZES.map((n) => randomArray(n, n + 5));
    const s = new Scope();
    const tensors = hosts.map((h) => fromArray(h, [h.length]));
    const read = vi.spyOn(r, 'read');
    r.resetCounters();

    const total = sumOfSquares(tensors);
    expect(read).not.toHaveBeenCalled();
    expect(r.counters().sumsq).toBe(SIZES.length);
    expect(total.shape).toEqual([1]);
    const value = (await total.toArray())[0];
    s.end();

    const ref = hosts.reduce((acc, h) => acc + sumSquares(h), 0);
    // Relative to Σ x² itself, with no square root to halve the error: 2·RTOL.
    expect(Math.abs(value - ref)).toBeLessThanOrEqual(2 * RTOL * ref);
  });

  it('sumOfSquares of no tensors is 0', async () => {
    const s = new Scope();
    const value = (await sumOfSquares([]).toArray())[0];
    s.end();
    expect(value).toBe(0);
  });
});
