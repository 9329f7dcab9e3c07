// Rank assignment on hand-computed cases. With R = [8, 16, 32, 64] (|R| = 4) a normalised
// change v picks index ⌈4v⌉ − 1 (0 for v = 0), so the buckets are v ∈ [0, 0.25] → 8,
// (0.25, 0.5] → 16, (0.5, 0.75] → 32 and (0.75, 1] → 64.
import { describe, expect, it } from 'vitest';
import { ConvergenceHistory, layerDeltas } from '../prelora/convergence.ts';
import { assignRanks, minMaxNormalize, rankIndex, rankMapToModulePaths, rankSet } from '../prelora/ranks.ts';

describe('rankSet', () => {
  it('lists powers of two from rMin to rMax', () => {
    expect(rankSet(8, 64)).toEqual([8, 16, 32, 64]);
  });

  it('defaults to 8 … 64', () => {
    expect(rankSet()).toEqual([8, 16, 32, 64]);
  });

  it('has one rank when rMin equals rMax', () => {
    expect(rankSet(16, 16)).toEqual([16]);
  });

  it('accepts rank 1', () => {
    expect(rankSet(1, 4)).toEqual([1, 2, 4]);
  });

  it.each([
    [12, 64, 'invalid rMin 12: rank bounds must be powers of two'],
    [8, 48, 'invalid rMax 48: rank bounds must be powers of two'],
    [32, 16, 'invalid rank bounds: rMin 32 is larger than rMax 16'],
    [0, 64, 'invalid rMin 0: a LoRA rank must be a positive integer'],
    [-8, 64, 'invalid rMin -8: a LoRA rank must be a positive integer'],
    [8, 2.5, 'invalid rMax 2.5: a LoRA rank must be a positive integer'],
    [8, NaN, 'invalid rMax NaN: a LoRA rank must be a positive integer'],
  ])('rejects rMin %s, rMax %s', (rMin, rMax, message) => {
    expect(() => rankSet(rMin, rMax)).toThrow(message);
  });
});

describe('minMaxNormalize', () => {
  it('maps min to 0 and max to 1', () => {
    // (0.4 − 0.1) / (0.7 − 0.1) is 0.5000000000000001 in float64, hence closeTo.
    expect(minMaxNormalize([0.1, 0.4, 0.25, 0.7])).toEqual([0, 0.5, 0.25, 1].map((x) => expect.closeTo(x, 12)));
  });

  it('maps equal values to 0', () => {
    expect(minMaxNormalize([3, 3, 3])).toEqual([0, 0, 0]);
  });
});

describe('rankIndex', () => {
  it('is 0 for v = 0', () => {
    expect(rankIndex(0, 4)).toBe(0);
  });

  it('is the last index for v = 1', () => {
    expect(rankIndex(1, 4)).toBe(3);
  });

  it('clamps a tiny positive v to 0', () => {
    // ⌈4 · 1e-12⌉ − 1 = 0 already; 1e-12 is also within the edge tolerance of 0.
    expect(rankIndex(1e-12, 4)).toBe(0);
  });
});

describe('assignRanks', () => {
  it('matches the worked example', () => {
    // v = [0, 0.5, 0.25, 1] → i = [0, ⌈2⌉ − 1, ⌈1⌉ − 1, ⌈4⌉ − 1] = [0, 1, 0, 3]. In float64
    // v[1] is 0.5000000000000001; the edge tolerance keeps it in bucket 1.
    expect(assignRanks({ q: [0.1, 0.4, 0.25, 0.7] }, { rMin: 8, rMax: 64 })).toEqual({ q: [8, 16, 8, 64] });
  });

  it('gives v = 0 rMin and v = 1 rMax', () => {
    expect(assignRanks({ q: [2, 7] })).toEqual({ q: [8, 64] });
  });

  it('puts bucket edges in the lower bucket', () => {
    // v = [0, 0.25, 0.26, 0.5, 0.75, 0.76, 1] → i = [0, 0, 1, 1, 2, 3, 3].
    const changes = [0, 0.25, 0.26, 0.5, 0.75, 0.76, 1];
    expect(assignRanks({ q: changes })).toEqual({ q: [8, 8, 16, 16, 32, 64, 64] });
  });

  it('keeps a rounded edge in the lower bucket', () => {
    // R = [8, 16]: v = (0.2 − 0.1) / (0.3 − 0.1) is 0.5 exactly, so ⌈2 · 0.5⌉ − 1 = 0; float64
    // gives 0.5000000000000001, which without the edge tolerance would pick 16.
    expect(assignRanks({ q: [0.1, 0.2, 0.3] }, { rMin: 8, rMax: 16 })).toEqual({ q: [8, 8, 16] });
  });

  it('gives ties the same rank', () => {
    // v = [0, 1, 1, 0].
    expect(assignRanks({ q: [0.2, 0.5, 0.5, 0.2] })).toEqual({ q: [8, 64, 64, 8] });
  });

  it('gives rMin when all layers are equal', () => {
    expect(assignRanks({ q: [0.3, 0.3, 0.3] })).toEqual({ q: [8, 8, 8] });
  });

  it('gives rMin to a single layer', () => {
    expect(assignRanks({ q: [0.7] })).toEqual({ q: [8] });
  });

  it('gives every layer the rank when rMin equals rMax', () => {
    expect(assignRanks({ q: [0.1, 0.9, 0.5] }, { rMin: 16, rMax: 16 })).toEqual({ q: [16, 16, 16] });
  });

  it('normalises each module on its own', () => {
    // k's changes are 10× q's; normalisation is per module, so both get the same ranks.
    const ranks = assignRanks({ q: [0.1, 0.4, 0.25, 0.7], k: [1, 4, 2.5, 7], v: [5, 5, 5, 5] });
    expect(ranks).toEqual({ q: [8, 16, 8, 64], k: [8, 16, 8, 64], v: [8, 8, 8, 8] });
  });

  it('rejects invalid bounds', () => {
    expect(() => assignRanks({ q: [1, 2] }, { rMin: 24 })).toThrow('invalid rMin 24');
  });

  it('rejects a NaN change', () => {
    expect(() => assignRanks({ q: [1, NaN] })).toThrow('invalid change NaN of module q, layer 1');
  });

  it('rejects a module without layers', () => {
    expect(() => assignRanks({ q: [] })).toThrow('missing per-layer changes of module q');
  });

  it('ranks layerDeltas output', () => {
    // Windows 1 → 2 (m = 1): q [100, 50, 80] → [101, 49, 80], |ΔW| = [1, 2, 0] %, so
    // v = [0.5, 1, 0] → i = [1, 3, 0]: the layer that shrank by 2 % gets the largest rank.
    const history = new ConvergenceHistory();
    history.record({ epoch: 1, loss: 2, norms: { q: [100, 50, 80] } });
    history.record({ epoch: 2, loss: 2, norms: { q: [101, 49, 80] } });
    const deltas = layerDeltas(history, { m: 1, modules: ['q'] });
    expect(assignRanks(deltas)).toEqual({ q: [16, 64, 8] });
  });
});

describe('rankMapToModulePaths', () => {
  it('names every layer', () => {
    expect(rankMapToModulePaths({ q: [8, 16], o: [32, 64] })).toEqual({
      'vit.encoder.layer.0.attention.attention.query': 8,
      'vit.encoder.layer.1.attention.attention.query': 16,
      'vit.encoder.layer.0.output.dense': 32,
      'vit.encoder.layer.1.output.dense': 64,
    });
  });

  it('names d and i', () => {
    expect(Object.keys(rankMapToModulePaths({ d: [8], i: [8] }))).toEqual([
      'vit.encoder.layer.0.attention.output.dense',
      'vit.encoder.layer.0.intermediate.dense',
    ]);
  });
});
