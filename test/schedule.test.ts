// LR schedules at chosen steps against their closed forms, and their argument checks.
// Tolerance: toBeCloseTo(…, 12) (|diff| < 5e-13); both sides are the same float64 formula,
// so only a few ulps of rounding in a different operation order separate them.
import { describe, expect, it } from 'vitest';
import { jaggedCosine, warmupCosine } from '../engine/schedule.ts';

const base = { baseLr: 1e-3, warmupSteps: 10, totalSteps: 110, minLr: 1e-5 };

/** Computes the cosine part directly: minLr + (baseLr − minLr)·(1 + cos(π·progress))/2. */
function cosineAt(step: number): number {
  const progress = (step - base.warmupSteps) / (base.totalSteps - base.warmupSteps);
  return base.minLr + ((base.baseLr - base.minLr) * (1 + Math.cos(Math.PI * progress))) / 2;
}

describe('warmupCosine', () => {
  const lr = warmupCosine(base);

  it('is 0 at step 0', () => {
    expect(lr(0)).toBe(0);
  });

  it('ramps linearly during warmup', () => {
    expect(lr(1)).toBeCloseTo(1e-4, 12);
    expect(lr(5)).toBeCloseTo(5e-4, 12);
    expect(lr(9)).toBeCloseTo(9e-4, 12);
  });

  it('reaches baseLr at end of warmup', () => {
    expect(lr(10)).toBe(base.baseLr);
  });

  it('is halfway at middle of cosine', () => {
    expect(lr(60)).toBeCloseTo((base.baseLr + base.minLr) / 2, 12);
  });

  it('follows the cosine between', () => {
    for (const s of [11, 37, 83, 109]) expect(lr(s)).toBeCloseTo(cosineAt(s), 12);
  });

  it('reaches minLr at totalSteps', () => {
    expect(lr(110)).toBe(base.minLr);
  });

  it('stays at minLr past the end', () => {
    expect(lr(111)).toBe(base.minLr);
    expect(lr(10_000)).toBe(base.minLr);
  });

  it('starts the cosine at step 0 without warmup', () => {
    const noWarmup = warmupCosine({ baseLr: 2, warmupSteps: 0, totalSteps: 4 });
    expect(noWarmup(0)).toBe(2);
    expect(noWarmup(2)).toBeCloseTo(1, 12);
    expect(noWarmup(4)).toBe(0);
  });

  it('decreases monotonically after warmup', () => {
    for (let s = 10; s < 120; s++) expect(lr(s + 1)).toBeLessThanOrEqual(lr(s));
  });

  it('rejects invalid arguments', () => {
    expect(() => warmupCosine({ ...base, baseLr: 0 })).toThrow(/invalid baseLr 0/);
    expect(() => warmupCosine({ ...base, minLr: 2e-3 })).toThrow(/invalid minLr/);
    expect(() => warmupCosine({ ...base, minLr: -1 })).toThrow(/invalid minLr/);
    expect(() => warmupCosine({ ...base, warmupSteps: 2.5 })).toThrow(/invalid warmupSteps 2.5/);
    expect(() => warmupCosine({ ...base, warmupSteps: -1 })).toThrow(/invalid warmupSteps -1/);
    expect(() => warmupCosine({ ...base, totalSteps: 10 })).toThrow(/invalid totalSteps 10/);
  });

  it('rejects invalid steps', () => {
    expect(() => lr(-1)).toThrow(/invalid step -1/);
    expect(() => lr(1.5)).toThrow(/invalid step 1.5/);
    expect(() => lr(Number.NaN)).toThrow(/invalid step NaN/);
  });
});

describe('jaggedCosine', () => {
  const restarts = [40, 80];
  const lr = jaggedCosine({ ...base, restarts, restartWarmup: 5 });
  const cosine = warmupCosine(base);

  it('matches warmupCosine before the first restart', () => {
    for (const s of [0, 5, 10, 25, 39]) expect(lr(s)).toBe(cosine(s));
  });

  it('is 0 at a restart step', () => {
    expect(lr(40)).toBe(0);
    expect(lr(80)).toBe(0);
  });

  it('ramps right after a restart', () => {
    expect(lr(41)).toBeCloseTo(cosineAt(41) / 5, 12);
    expect(lr(43)).toBeCloseTo((cosineAt(43) * 3) / 5, 12);
    expect(lr(84)).toBeCloseTo((cosineAt(84) * 4) / 5, 12);
  });

  it('rejoins the cosine after restartWarmup', () => {
    expect(lr(45)).toBe(cosine(45));
    expect(lr(60)).toBe(cosine(60));
    expect(lr(85)).toBe(cosine(85));
  });

  it('stays at minLr past the end', () => {
    expect(lr(110)).toBe(base.minLr);
    expect(lr(500)).toBe(base.minLr);
  });

  it('ramps a restart at totalSteps from minLr', () => {
    const late = jaggedCosine({ ...base, restarts: [110], restartWarmup: 4 });
    expect(late(112)).toBeCloseTo(base.minLr / 2, 15);
  });

  it('ignores later edits of the restarts array', () => {
    const list = [40];
    const fixed = jaggedCosine({ ...base, restarts: list, restartWarmup: 5 });
    list[0] = 20;
    expect(fixed(20)).toBe(cosine(20));
  });

  it('rejects invalid arguments', () => {
    const ok = { ...base, restarts, restartWarmup: 5 };
    expect(() => jaggedCosine({ ...ok, restartWarmup: 0 })).toThrow(/invalid restartWarmup 0/);
    expect(() => jaggedCosine({ ...ok, restarts: [80, 40] })).toThrow(/invalid restarts: step 40 at index 1/);
    expect(() => jaggedCosine({ ...ok, restarts: [40, 40] })).toThrow(/invalid restarts: step 40 at index 1/);
    expect(() => jaggedCosine({ ...ok, restarts: [5] })).toThrow(/invalid restart step 5 at index 0/);
    expect(() => jaggedCosine({ ...ok, restarts: [40.5] })).toThrow(/invalid restart step 40.5/);
    expect(() => jaggedCosine({ ...ok, baseLr: -1 })).toThrow(/invalid baseLr -1/);
  });
});
