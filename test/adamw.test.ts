// AdamW: the fused kernel against a float64 reference of the same update, gradient
// clipping on hand-computed gradients, the frozen-parameter property (no dispatch, no
// state), state bytes, reset, pruning and checkpoints.
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AdamW, type AdamWOptions, type ParamGroup } from '../engine/optim.ts';
import { bucketBytes } from '../engine/pool.ts';
import type { Runtime } from '../engine/runtime.ts';
import { warmupCosine } from '../engine/schedule.ts';
import { empty, fromArray, persistent, type Tensor } from '../engine/tensor.ts';
import { gpu } from './helpers/gpu.ts';
import { maxAbs, maxAbsDiff, randomArray } from './helpers/reference.ts';

let r: Runtime;
beforeAll(async () => {
  r = await gpu();
});

// ---- fixtures ---------------------------------------------------------------------------

/** Tensors and optimizers a test created, released after it so the pool stays balanced. */
const tensorsToRelease: Tensor[] = [];
const optimizers: AdamW[] = [];

afterEach(() => {
  for (const o of optimizers.splice(0)) o.dispose();
  for (const t of tensorsToRelease.splice(0)) {
    t.grad?.release();
    t.release();
  }
});

function param(name: string, data: ArrayLike<number>, shape: number[], requiresGrad = true): Tensor {
  const p = persistent(() => fromArray(data, shape, { requiresGrad }));
  p.name = name;
  tensorsToRelease.push(p);
  return p;
}

function randomParam(name: string, shape: number[], seed: number, requiresGrad = true): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  return param(name, randomArray(n, seed), shape, requiresGrad);
}

/** Sets p.grad as a backward pass would leave it. */
function setGrad(p: Tensor, data: ArrayLike<number>): void {
  if (!p.grad) p.grad = persistent(() => empty(p.shape));
  p.grad.write(data);
  p.gradHasValue = true;
}

function optimizer(groups: ParamGroup[], options: AdamWOptions = {}): AdamW {
  const o = new AdamW(groups, options);
  optimizers.push(o);
  return o;
}

async function host(t: Tensor): Promise<Float64Array> {
  return Float64Array.from(await t.toArray());
}

// ---- float64 reference ------------------------------------------------------------------

interface RefParam {
  p: Float64Array;
  m: Float64Array;
  v: Float64Array;
  t: number;
  lrScale: number;
  weightDecay: number;
}

/** Applies the same AdamW update in float64, with torch.nn.utils.clip_grad_norm_'s coefficient. */
function referenceStep(params: RefParam[], grads: Float64Array[], lr: number, o: Required<Omit<AdamWOptions, 'maxGradNorm'>> & AdamWOptions): number {
  let sumsq = 0;
  for (const g of grads) for (const x of g) sumsq += x * x;
  const norm = Math.sqrt(sumsq);
  const coef = o.maxGradNorm === undefined ? 1 : Math.min(1, o.maxGradNorm / (norm + 1e-6));

  params.forEach((s, k) => {
    s.t++;
    const stepLr = lr * s.lrScale;
    for (let i = 0; i < s.p.length; i++) {
      const g = grads[k][i] * coef;
      s.m[i] = o.beta1 * s.m[i] + (1 - o.beta1) * g;
      s.v[i] = o.beta2 * s.v[i] + (1 - o.beta2) * g * g;
      const mHat = s.m[i] / (1 - o.beta1 ** s.t);
      const vHat = s.v[i] / (1 - o.beta2 ** s.t);
      s.p[i] -= stepLr * (mHat / (Math.sqrt(vHat) + o.eps) + s.weightDecay * s.p[i]);
    }
  });
  return coef;
}

// ---- update against the reference -------------------------------------------------------

describe('AdamW update', () => {
  // Gradient norm over all five tensors is about 150 (70 911 values uniform in [-1, 1]), so
  // maxGradNorm 5 clips by ~30x, 1e4 never clips, and undefined turns clipping off.
  const cases: Array<{ name: string; maxGradNorm: number | undefined }> = [
    { name: 'clipping off', maxGradNorm: undefined },
    { name: 'clipping inactive', maxGradNorm: 1e4 },
    { name: 'clipping active', maxGradNorm: 5 },
  ];

  it.each(cases)('matches float64 over 6 steps, $name', async ({ maxGradNorm }) => {
    const shapes = [[7, 33], [65], [127], [1], [70_001]];
    const groupOf = [0, 0, 1, 1, 1];
    const groupOptions = [
      { lrScale: 0.5, weightDecay: 0.1 },
      { lrScale: 1, weightDecay: 0 },
    ];
    const ps = shapes.map((s, k) => randomParam(`p${k}`, s, 10 + k));
    const opt = optimizer(
      groupOptions.map((g, gi) => ({ ...g, params: ps.filter((_, k) => groupOf[k] === gi) })),
      { maxGradNorm },
    );
    const o = { beta1: 0.9, beta2: 0.999, eps: 1e-8, maxGradNorm };
    const ref: RefParam[] = [];
    for (let k = 0; k < ps.length; k++) {
      const p = await host(ps[k]);
      ref.push({ p, m: new Float64Array(p.length), v: new Float64Array(p.length), t: 0, ...groupOptions[groupOf[k]] });
    }
    const schedule = warmupCosine({ baseLr: 0.01, warmupSteps: 2, totalSteps: 6 });

    for (let step = 0; step < 6; step++) {
      const grads = ps.map((p, k) => Float64Array.from(randomArray(p.size, 100 * step + k)));
      ps.forEach((p, k) => setGrad(p, grads[k]));
      const lr = schedule(step) + 1e-3;
      opt.step(lr);
      const coef = referenceStep(ref, grads, lr, o);

      // The clipping coefficient comes from an f32 tree sum of 70 911 squares: measured
      // relative error ~1e-7 on lavapipe, so 1e-6 relative.
      const stats = (await opt.gradStats())!;
      expect(Math.abs(stats.clipCoef - coef), `clip coefficient, step ${step}`).toBeLessThanOrEqual(1e-6 * coef);
    }

    const dict = await opt.stateDict();
    for (let k = 0; k < ps.length; k++) {
      const p = await host(ps[k]);
      // p is O(1) and takes 6 updates of at most lr·(1 + wd) ≈ 0.01: each f32 write rounds by
      // ~6e-8 and the update ratio m̂/(√v̂+ε) carries ~1e-6 relative error, so 2e-6 bounds it.
      expect(maxAbsDiff(p, ref[k].p), `param p${k}`).toBeLessThanOrEqual(2e-6);
      // m and v are 6-term f32 recurrences scaled by the clipping coefficient, which carries
      // ~1e-7 relative error. The terms of m have mixed signs, and on lavapipe cancellation
      // took one m to 6e-7 relative to its largest element, so the bound is 4e-6.
      expect(maxAbsDiff(dict[`p${k}`].m, ref[k].m), `m of p${k}`).toBeLessThanOrEqual(4e-6 * maxAbs(ref[k].m));
      expect(maxAbsDiff(dict[`p${k}`].v, ref[k].v), `v of p${k}`).toBeLessThanOrEqual(4e-6 * maxAbs(ref[k].v));
      expect(dict[`p${k}`].step, `step count of p${k}`).toBe(6);
    }
  });

  it('moves each weight by lr at t=1', async () => {
    // At t = 1, m̂ = g and v̂ = g², so the step is lr·(sign(g) + wd·p) up to ε/|g|.
    const a = param('a', [1, -1, 2], [3]);
    const b = param('b', [1], [1]);
    const opt = optimizer([
      { params: [a], weightDecay: 0 },
      { params: [b], weightDecay: 0.5, lrScale: 2 },
    ]);
    setGrad(a, [3, 4, -0.25]);
    setGrad(b, [-7]);
    opt.step(0.1);

    // f32 storage of 0.9, 1.1 etc.: 1e-7 absolute.
    const pa = await host(a);
    expect(pa[0]).toBeCloseTo(0.9, 6);
    expect(pa[1]).toBeCloseTo(-1.1, 6);
    expect(pa[2]).toBeCloseTo(2.1, 6);
    expect((await host(b))[0]).toBeCloseTo(1 - 0.2 * (-1 + 0.5), 6);
  });
});

// ---- gradient clipping ------------------------------------------------------------------

describe('AdamW clipping', () => {
  // Gradients (3, 4) and (12): ‖g‖ = √(9 + 16 + 144) = 13, exact in f32.
  async function clipStep(maxGradNorm: number | undefined) {
    const a = param('a', [0, 0], [2]);
    const b = param('b', [0], [1]);
    const opt = optimizer([{ params: [a, b], weightDecay: 0 }], { maxGradNorm });
    setGrad(a, [3, 4]);
    setGrad(b, [12]);
    opt.step(0.01);
    const dict = await opt.stateDict();
    return { stats: (await opt.gradStats())!, norm: await opt.gradNorm(), dict };
  }

  it('reports no norm before the first step', async () => {
    const opt = optimizer([{ params: [param('a', [1], [1])], weightDecay: 0 }]);
    expect(await opt.gradNorm()).toBeNull();
  });

  it('computes the global norm', async () => {
    const { norm } = await clipStep(6.5);
    expect(norm).toBe(13);
  });

  it('scales gradients by maxNorm/(norm+1e-6)', async () => {
    const { stats, dict } = await clipStep(6.5);
    const coef = 6.5 / (13 + 1e-6);
    // f32 division: 1 ulp of 0.5 is 6e-8.
    expect(stats.clipCoef).toBeCloseTo(coef, 7);
    // m = (1−β1)·g·c and v = (1−β2)·(g·c)² with c ≈ 0.5; f32 products, 1e-7 relative.
    expect(maxAbsDiff(dict.a.m, [0.1 * 3 * coef, 0.1 * 4 * coef])).toBeLessThanOrEqual(1e-7);
    expect(maxAbsDiff(dict.b.m, [0.1 * 12 * coef])).toBeLessThanOrEqual(2e-7);
    expect(maxAbsDiff(dict.a.v, [0.001 * (3 * coef) ** 2, 0.001 * (4 * coef) ** 2])).toBeLessThanOrEqual(1e-9);
    expect(maxAbsDiff(dict.b.v, [0.001 * (12 * coef) ** 2])).toBeLessThanOrEqual(1e-8);
  });

  it('leaves gradients below maxNorm unscaled', async () => {
    const { stats, dict } = await clipStep(13.5);
    expect(stats.clipCoef).toBe(1);
    expect(maxAbsDiff(dict.a.m, [0.3, 0.4])).toBeLessThanOrEqual(1e-7);
    expect(maxAbsDiff(dict.b.m, [1.2])).toBeLessThanOrEqual(2e-7);
  });

  it('sums the norm over 300 tensors', async () => {
    // 300 partial sums, more than one per invocation of the 256-wide final reduction.
    const ps = Array.from({ length: 300 }, (_, k) => randomParam(`p${k}`, [1 + (k % 5)], k));
    const opt = optimizer([{ params: ps, weightDecay: 0 }]);
    let sumsq = 0;
    for (const [k, p] of ps.entries()) {
      const g = randomArray(p.size, 1000 + k);
      setGrad(p, g);
      for (const x of g) sumsq += x * x;
    }
    opt.step(1e-3);
    // f32 sum of ~900 squares: relative error a few ulps, well below 1e-6.
    expect(Math.abs((await opt.gradNorm())! - Math.sqrt(sumsq))).toBeLessThanOrEqual(1e-6 * Math.sqrt(sumsq));
  });

  it('reports the norm without clipping', async () => {
    const { stats, norm } = await clipStep(undefined);
    expect(norm).toBe(13);
    expect(stats.clipCoef).toBe(1);
  });
});

// ---- frozen parameters and state bytes --------------------------------------------------

/** Bytes of m and v for a parameter of n elements, as the pool's buckets hold them. */
function stateBytesOf(n: number): number {
  return 2 * bucketBytes(n * 4);
}

describe('AdamW frozen parameters', () => {
  it('dispatches one update per trainable param', async () => {
    const trainable = [randomParam('a', [33], 1), randomParam('b', [7, 9], 2), randomParam('c', [1], 3)];
    const frozen = [randomParam('w', [65], 4, false), randomParam('x', [127], 5, false)];
    const all = [...trainable, ...frozen];
    const opt = optimizer([{ params: all, weightDecay: 0.1 }], { maxGradNorm: 1 });
    // Frozen tensors get a gradient too: skipping must come from requiresGrad alone.
    for (const p of all) setGrad(p, randomArray(p.size, p.size));
    const frozenBefore = await Promise.all(frozen.map(host));

    r.resetCounters();
    for (let step = 0; step < 3; step++) opt.step(1e-2);
    const counts = r.counters();

    expect(counts.adamw).toBe(3 * trainable.length);
    expect(counts.sumsq).toBe(3 * trainable.length);
    expect(counts.gradstats).toBe(3);
    for (const [k, p] of frozen.entries()) {
      expect(opt.hasState(p), `state of ${p.name}`).toBe(false);
      expect(maxAbsDiff(await host(p), frozenBefore[k]), `values of ${p.name}`).toBe(0);
    }
  });

  it('skips params without a gradient this step', () => {
    const a = randomParam('a', [10], 1);
    const b = randomParam('b', [10], 2);
    const opt = optimizer([{ params: [a, b], weightDecay: 0 }]);
    setGrad(a, randomArray(10, 3));

    r.resetCounters();
    opt.step(1e-3);
    expect(r.counters().adamw).toBe(1);
    expect(opt.hasState(b)).toBe(false);

    opt.zeroGrad();
    expect(a.gradHasValue).toBe(false);
    r.resetCounters();
    opt.step(1e-3);
    expect(r.counters()).toEqual({});
  });

  it('holds exact state bytes', async () => {
    const a = randomParam('a', [7, 33], 1);
    const b = randomParam('b', [1025], 2);
    const opt = optimizer([{ params: [a, b], weightDecay: 0 }]);
    setGrad(a, randomArray(a.size, 3));
    setGrad(b, randomArray(b.size, 4));
    expect(opt.stateBytes()).toBe(0);

    const live0 = r.pool.liveBytes;
    opt.step(1e-3);
    const expected = stateBytesOf(a.size) + stateBytesOf(b.size);
    expect(opt.stateBytes()).toBe(expected);
    // Everything the step left on the device: m and v plus the 16-byte grad-stats buffer.
    expect(r.pool.liveBytes - live0).toBe(expected + bucketBytes(16));
  });

  it('releases state when frozen', async () => {
    const a = randomParam('a', [7, 33], 1);
    const b = randomParam('b', [1025], 2);
    const opt = optimizer([{ params: [a, b], weightDecay: 0 }]);
    setGrad(a, randomArray(a.size, 3));
    setGrad(b, randomArray(b.size, 4));
    opt.step(1e-3);
    opt.step(1e-3);

    const live = r.pool.liveBytes;
    b.requiresGrad = false;
    opt.step(1e-3);
    expect(opt.hasState(b)).toBe(false);
    expect(opt.stateBytes()).toBe(stateBytesOf(a.size));
    expect(r.pool.liveBytes).toBe(live - stateBytesOf(b.size));

    opt.release(a);
    expect(opt.stateBytes()).toBe(0);
    expect(r.pool.liveBytes).toBe(live - stateBytesOf(a.size) - stateBytesOf(b.size));
  });

  it('reallocates state after unfreezing', async () => {
    const a = randomParam('a', [40], 1);
    const opt = optimizer([{ params: [a], weightDecay: 0 }]);
    const g = randomArray(a.size, 3);
    setGrad(a, g);
    opt.step(1e-3);
    opt.step(1e-3);
    a.requiresGrad = false;
    opt.step(1e-3);

    a.requiresGrad = true;
    opt.step(1e-3);
    expect(opt.stateBytes()).toBe(stateBytesOf(a.size));
    expect(opt.stepCount(a)).toBe(1);
    // Fresh state: m = (1−β1)·g after one update.
    const m = (await opt.stateDict()).a.m;
    expect(maxAbsDiff(m, Array.from(g, (x) => 0.1 * x))).toBeLessThanOrEqual(1e-7);
  });
});

// ---- attaching and detaching parameters -------------------------------------------------

describe('AdamW param groups', () => {
  it('starts attached params at t=1', async () => {
    const base = randomParam('base', [20], 1);
    const opt = optimizer([{ params: [base], weightDecay: 0.1 }]);
    setGrad(base, randomArray(base.size, 2));
    for (let step = 0; step < 3; step++) opt.step(1e-3);

    const adapter = param('adapter', [0, 0, 0], [3]);
    const index = opt.addParams({ lrScale: 2, weightDecay: 0 }, [adapter]);
    setGrad(adapter, [1, -2, 0.5]);
    opt.step(0.05);

    expect(index).toBe(1);
    expect(opt.stepCount(base)).toBe(4);
    expect(opt.stepCount(adapter)).toBe(1);
    // At t = 1 each element moves by lr·lrScale·sign(g) = 0.1; f32 rounding only.
    expect(maxAbsDiff(await host(adapter), [-0.1, 0.1, -0.1])).toBeLessThanOrEqual(1e-7);
  });

  it('adds params to an existing group', () => {
    const a = randomParam('a', [5], 1);
    const b = randomParam('b', [5], 2);
    const opt = optimizer([{ params: [a], weightDecay: 0 }]);
    expect(opt.addParams(0, [b])).toBe(0);
    expect(opt.params()).toEqual([a, b]);
  });

  it('removes params and their state', () => {
    const a = randomParam('a', [5], 1);
    const b = randomParam('b', [6], 2);
    const opt = optimizer([{ params: [a, b], weightDecay: 0 }]);
    setGrad(a, randomArray(5, 3));
    setGrad(b, randomArray(6, 4));
    opt.step(1e-3);

    opt.removeParams([b]);
    expect(opt.params()).toEqual([a]);
    expect(opt.hasState(b)).toBe(false);
    expect(opt.stateBytes()).toBe(stateBytesOf(5));
    r.resetCounters();
    opt.step(1e-3);
    expect(r.counters().adamw).toBe(1);
  });

  it('rejects invalid groups and params', () => {
    const a = randomParam('a', [5], 1);
    const labels = persistent(() => fromArray([1, 2], [2], { dtype: 'i32' }));
    tensorsToRelease.push(labels);
    const opt = optimizer([{ params: [a], weightDecay: 0 }]);
    expect(() => opt.addParams(0, [a])).toThrow(/already in param group 0/);
    expect(() => opt.addParams(3, [])).toThrow(/param group 3 not found/);
    expect(() => opt.addParams({ weightDecay: -1 }, [])).toThrow(/invalid weightDecay -1/);
    expect(() => opt.addParams({ weightDecay: 0, lrScale: Number.NaN }, [])).toThrow(/invalid lrScale NaN/);
    expect(() => opt.addParams(0, [labels])).toThrow(/not f32/);
    expect(() => opt.removeParams([labels])).toThrow(/not found in any param group/);
  });

  it('rejects invalid options', () => {
    const group = [{ params: [], weightDecay: 0 }];
    expect(() => new AdamW(group, { beta1: 1 })).toThrow(/invalid AdamW beta1 1/);
    expect(() => new AdamW(group, { beta2: -0.1 })).toThrow(/invalid AdamW beta2 -0.1/);
    expect(() => new AdamW(group, { eps: 0 })).toThrow(/invalid AdamW eps 0/);
    expect(() => new AdamW(group, { maxGradNorm: 0 })).toThrow(/invalid maxGradNorm 0/);
    const opt = optimizer(group);
    expect(() => opt.step(Number.NaN)).toThrow(/invalid learning rate NaN/);
    expect(() => opt.step(-1)).toThrow(/invalid learning rate -1/);
  });
});

// ---- reset, pruning, checkpoints --------------------------------------------------------

describe('AdamW state control', () => {
  const m0 = [0.5, -0.1, 0.3, -0.05, 0.2, 0, -0.4];
  const v0 = [1, 2, 3, 4, 5, 6, 7];

  /** Creates a param with hand-made state: m0, v0, t = 7. */
  function withState() {
    const a = param('a', new Array(7).fill(0), [7]);
    const opt = optimizer([{ params: [a], weightDecay: 0 }]);
    opt.loadStateDict({ a: { m: Float32Array.from(m0), v: Float32Array.from(v0), step: 7 } });
    return { a, opt };
  }

  it('resetState zeroes m, v and t', async () => {
    const { a, opt } = withState();
    opt.resetState(a);
    const s = (await opt.stateDict()).a;
    expect(Array.from(s.m)).toEqual(new Array(7).fill(0));
    expect(Array.from(s.v)).toEqual(new Array(7).fill(0));
    expect(s.step).toBe(0);
  });

  it('resetState restarts bias correction', async () => {
    const { a, opt } = withState();
    opt.resetState(a);
    setGrad(a, [1, 1, 1, 1, 1, 1, 1]);
    opt.step(0.1);
    expect(opt.stepCount(a)).toBe(1);
    // t = 1 after the reset, so the full bias correction applies and every weight moves by lr.
    expect(maxAbsDiff(await host(a), new Array(7).fill(-0.1))).toBeLessThanOrEqual(1e-7);
  });

  it('pruneState zeroes the smallest |m|', async () => {
    const { a, opt } = withState();
    await opt.pruneState(a, 0.5);
    const s = (await opt.stateDict()).a;
    // floor(0.5·7) = 3 entries: |m| = 0, 0.05, 0.1 at indices 5, 3, 1.
    expect(Array.from(s.m)).toEqual(Array.from(Float32Array.from([0.5, 0, 0.3, 0, 0.2, 0, -0.4])));
    expect(Array.from(s.v)).toEqual([1, 0, 3, 0, 5, 0, 7]);
    expect(s.step).toBe(7);
  });

  it('pruneState breaks ties by index', async () => {
    const a = param('a', [0, 0, 0], [3]);
    const opt = optimizer([{ params: [a], weightDecay: 0 }]);
    opt.loadStateDict({ a: { m: Float32Array.from([0.25, -0.25, 0.25]), v: Float32Array.from([1, 2, 3]), step: 1 } });
    await opt.pruneState(a, 0.5);
    const s = (await opt.stateDict()).a;
    expect(Array.from(s.m)).toEqual([0, -0.25, 0.25]);
    expect(Array.from(s.v)).toEqual([0, 2, 3]);
  });

  it('pruneState at fractions 0 and 1', async () => {
    const { a, opt } = withState();
    await opt.pruneState(a, 0);
    expect(Array.from((await opt.stateDict()).a.v)).toEqual(v0);
    await opt.pruneState(a, 1);
    const s = (await opt.stateDict()).a;
    expect(Array.from(s.m)).toEqual(new Array(7).fill(0));
    expect(Array.from(s.v)).toEqual(new Array(7).fill(0));
  });

  it('pruneState rejects invalid fractions', async () => {
    const { a, opt } = withState();
    await expect(opt.pruneState(a, 1.5)).rejects.toThrow(/invalid fraction 1.5/);
    await expect(opt.pruneState(a, Number.NaN)).rejects.toThrow(/invalid fraction NaN/);
  });

  it('stateDict round trip continues identically', async () => {
    const shapes = [[3, 11], [65]];
    const ps = shapes.map((s, k) => randomParam(`p${k}`, s, k + 1));
    const qs = shapes.map((s, k) => randomParam(`p${k}`, s, k + 1));
    const untrained = randomParam('untrained', [4], 9);
    const opt1 = optimizer([{ params: ps, weightDecay: 0.1 }], { maxGradNorm: 1 });
    const opt2 = optimizer([{ params: [...qs, untrained], weightDecay: 0.1 }], { maxGradNorm: 1 });
    setGrad(untrained, [1, 2, 3, 4]);
    opt2.step(1e-3);
    untrained.gradHasValue = false;

    for (let step = 0; step < 3; step++) {
      ps.forEach((p, k) => setGrad(p, randomArray(p.size, 10 * step + k)));
      opt1.step(1e-2);
    }
    for (const [k, q] of qs.entries()) q.write(await ps[k].toArray());
    const saved = await opt1.stateDict();
    opt2.loadStateDict(saved);

    const loaded = await opt2.stateDict();
    expect(Object.keys(loaded).sort()).toEqual(['p0', 'p1']);
    for (const name of ['p0', 'p1']) {
      expect(Array.from(loaded[name].m), `m of ${name}`).toEqual(Array.from(saved[name].m));
      expect(Array.from(loaded[name].v), `v of ${name}`).toEqual(Array.from(saved[name].v));
      expect(loaded[name].step, `step of ${name}`).toBe(3);
    }

    // One more step from the same state, weights and gradients: the same kernels give the same bits.
    for (const [k, p] of ps.entries()) {
      const g = randomArray(p.size, 99 + k);
      setGrad(p, g);
      setGrad(qs[k], g);
    }
    opt1.step(1e-2);
    opt2.step(1e-2);
    for (const [k, p] of ps.entries()) {
      expect(maxAbsDiff(await host(qs[k]), await host(p)), `param p${k}`).toBe(0);
    }
  });

  it('loadStateDict rejects unknown names and sizes', () => {
    const a = param('a', [0, 0], [2]);
    const opt = optimizer([{ params: [a], weightDecay: 0 }]);
    const two = Float32Array.from([0, 0]);
    expect(() => opt.loadStateDict({ b: { m: two, v: two, step: 1 } })).toThrow(/parameter "b" not found/);
    expect(() => opt.loadStateDict({ a: { m: new Float32Array(3), v: two, step: 1 } })).toThrow(/has 3 \(m\) and 2 \(v\) values/);
    expect(() => opt.loadStateDict({ a: { m: two, v: two, step: -1 } })).toThrow(/invalid step -1/);
  });

  it('stateDict requires named params', async () => {
    const a = param('a', [0], [1]);
    a.name = undefined;
    const opt = optimizer([{ params: [a], weightDecay: 0 }]);
    setGrad(a, [1]);
    opt.step(1e-3);
    await expect(opt.stateDict()).rejects.toThrow(/has no name/);
  });
});
