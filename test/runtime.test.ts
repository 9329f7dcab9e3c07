import { beforeAll, describe, expect, it } from 'vitest';
import { fill, accumulate } from '../kernels/fill.ts';
import { bucketBytes } from '../engine/pool.ts';
import { Scope, empty, fromArray, persistent } from '../engine/tensor.ts';
import type { Runtime } from '../engine/runtime.ts';
import { gpu } from './helpers/gpu.ts';

let r: Runtime;
beforeAll(async () => {
  r = await gpu();
});

describe('runtime', () => {
  it('fill and accumulate round-trip', async () => {
    const s = new Scope();
    const a = empty([1000]);
    const b = fromArray(Array.from({ length: 1000 }, (_, i) => i), [1000]);
    fill(r, a.buffer, 1000, 2.5);
    accumulate(r, a.buffer, b.buffer, 1000);
    const out = await a.toArray();
    for (let i = 0; i < 1000; i++) expect(out[i]).toBe(2.5 + i);
    s.end();
  });

  it('counts dispatches per kernel and tag', () => {
    r.resetCounters();
    const s = new Scope();
    const a = empty([10]);
    fill(r, a.buffer, 10, 0);
    fill(r, a.buffer, 10, 1);
    accumulate(r, a.buffer, a.buffer, 10, 'dW');
    expect(r.counters()).toEqual({ fill: 2, accumulate: 1, 'accumulate:dW': 1 });
    s.end();
  });
});

describe('buffer pool', () => {
  it('buckets are exact below 4 KiB and within 25% above', () => {
    expect(bucketBytes(4)).toBe(256);
    expect(bucketBytes(257)).toBe(512);
    expect(bucketBytes(4096)).toBe(4096);
    expect(bucketBytes(4097)).toBe(5120);
    for (const n of [5000, 70_000, 1_234_567]) {
      expect(bucketBytes(n)).toBeGreaterThanOrEqual(n);
      expect(bucketBytes(n)).toBeLessThanOrEqual(n * 1.25);
    }
  });

  it('tracks live and peak bytes exactly and reuses buffers', () => {
    const pool = r.pool;
    const live0 = pool.liveBytes;
    pool.resetPeak();
    const s = new Scope();
    const a = empty([1024]); // 4096 B
    const b = empty([2048]); // 8192 B
    expect(pool.liveBytes - live0).toBe(4096 + 8192);
    s.end();
    expect(pool.liveBytes).toBe(live0);
    expect(pool.peakBytes - live0).toBe(4096 + 8192);
    const created = pool.created;
    const s2 = new Scope();
    empty([1024]);
    expect(pool.created).toBe(created);
    s2.end();
    expect(a.released && b.released).toBe(true);
  });

  it('persistent tensors survive their scope', () => {
    const s = new Scope();
    const p = persistent(() => empty([4]));
    s.end();
    expect(p.released).toBe(false);
    p.release();
    expect(p.released).toBe(true);
  });
});
