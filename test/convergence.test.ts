// Partial convergence test on hand-computed histories. Unless a case states otherwise: k = 3
// windows of m = 3 epochs, τ = 0.5 %, ζ = 2.5 %, modules q and k with two layers each.
import { describe, expect, it } from 'vitest';
import {
  ConvergenceHistory,
  isEvaluationPoint,
  layerDeltas,
  partialConvergenceTest,
  percentChange,
  type ConvergenceOptions,
} from '../prelora/convergence.ts';

const OPTIONS: ConvergenceOptions = { k: 3, m: 3, tau: 0.5, zeta: 2.5, modules: ['q', 'k'] };

// Changes computed from decimal inputs are compared to 9 digits: the hand-computed values
// are exact, the float64 ones carry rounding errors near 1e-14.
const DIGITS = 9;

interface WindowSpec {
  /** Loss of each of the window's 3 epochs, or one loss for all three. */
  loss: number | number[];
  q: number[];
  k: number[];
}

/** Builds a history of 3 epochs per window spec, with constant norms inside a window. */
function byWindow(specs: WindowSpec[], firstEpoch = 1): ConvergenceHistory {
  const history = new ConvergenceHistory('epochs');
  let epoch = firstEpoch;
  for (const w of specs) {
    const losses = typeof w.loss === 'number' ? [w.loss, w.loss, w.loss] : w.loss;
    for (const loss of losses) history.record({ epoch: epoch++, loss, norms: { q: w.q, k: w.k } });
  }
  return history;
}

// Loss 2.0 → 1.96 → 1.93 (−2 %, −1.53 %); q 100 → 100.2 → 100.4 (+0.2 %, +0.1996 %);
// k 50 → 50.1 → 50.2 (+0.2 %, +0.1996 %).
const CONVERGED: WindowSpec[] = [
  { loss: [2.1, 2.0, 1.9], q: [98, 102], k: [50, 50] },
  { loss: [2.0, 1.96, 1.92], q: [98.2, 102.2], k: [50.1, 50.1] },
  { loss: [1.95, 1.93, 1.91], q: [98.4, 102.4], k: [50.2, 50.2] },
];

describe('partialConvergenceTest', () => {
  it('passes a converged history', () => {
    const result = partialConvergenceTest(byWindow(CONVERGED), OPTIONS);
    expect(result.passed).toBe(true);
    expect(result.failing).toBeUndefined();
    expect(result.reason).toContain('passed over 3 windows, epochs 1–9');
  });

  it('reports windows', () => {
    const { windows } = partialConvergenceTest(byWindow(CONVERGED), OPTIONS);
    expect(windows.map((w) => w.epochs)).toEqual([[1, 3], [4, 6], [7, 9]]);
    expect(windows[0].loss).toBeCloseTo(2.0, DIGITS);
    expect(windows[1].loss).toBeCloseTo(1.96, DIGITS);
    expect(windows[2].loss).toBeCloseTo(1.93, DIGITS);
    expect(windows.map((w) => w.norms.q)).toEqual([100, 100.2, 100.4].map((x) => expect.closeTo(x, DIGITS)));
    expect(windows[2].layerNorms.q).toEqual([98.4, 102.4].map((x) => expect.closeTo(x, DIGITS)));
  });

  it('reports signed deltas', () => {
    const { deltas } = partialConvergenceTest(byWindow(CONVERGED), OPTIONS);
    expect(deltas.loss[0]).toBeCloseTo(-2, DIGITS);
    expect(deltas.loss[1]).toBeCloseTo(((1.93 - 1.96) / 1.96) * 100, DIGITS); // −1.5306 %
    expect(deltas.modules.q![0]).toBeCloseTo(0.2, DIGITS);
    expect(deltas.modules.q![1]).toBeCloseTo((0.2 / 100.2) * 100, DIGITS); // 0.1996 %
    expect(deltas.modules.k![1]).toBeCloseTo((0.1 / 50.1) * 100, DIGITS);
  });

  it('fails on loss only', () => {
    // Loss 2.0 → 1.9 is −5 %; the weights are those of the converged history.
    const specs = structuredClone(CONVERGED);
    specs[1].loss = 1.9;
    specs[2].loss = 1.88;
    const result = partialConvergenceTest(byWindow(specs), OPTIONS);
    expect(result.passed).toBe(false);
    expect(result.failing).toHaveLength(1);
    expect(result.failing![0]).toMatchObject({ quantity: 'loss', windows: [1, 2], threshold: 2.5 });
    expect(result.failing![0].change).toBeCloseTo(-5, DIGITS);
    expect(result.reason).toContain('loss changed -5.000% between windows 1 and 2, beyond ζ = 2.5%');
  });

  it('fails on one module only', () => {
    // k 50.1 → 50.5 is +0.798 % in the last pair; q and the loss stay within bounds.
    const specs = structuredClone(CONVERGED);
    specs[2].k = [50.5, 50.5];
    const result = partialConvergenceTest(byWindow(specs), OPTIONS);
    expect(result.passed).toBe(false);
    expect(result.failing).toHaveLength(1);
    expect(result.failing![0]).toMatchObject({ quantity: 'k', windows: [2, 3], threshold: 0.5 });
    expect(result.failing![0].change).toBeCloseTo((0.4 / 50.1) * 100, DIGITS);
  });

  it('passes exactly at the thresholds', () => {
    // Dyadic values keep every step exact: loss 1.25 → 1.21875 is −2.5 % and q 100 → 100.5
    // is +0.5 %, both equal to their threshold, and the test uses ≤.
    const specs: WindowSpec[] = [
      { loss: 1.25, q: [100, 100], k: [50, 50] },
      { loss: 1.21875, q: [100.5, 100.5], k: [50, 50] },
      { loss: 1.21875, q: [100.5, 100.5], k: [50, 50] },
    ];
    const result = partialConvergenceTest(byWindow(specs), OPTIONS);
    expect(result.deltas.loss).toEqual([-2.5, 0]);
    expect(result.deltas.modules.q).toEqual([0.5, 0]);
    expect(result.passed).toBe(true);
  });

  it('fails just past the thresholds', () => {
    const specs: WindowSpec[] = [
      { loss: 1.25, q: [100, 100], k: [50, 50] },
      { loss: 1.21875, q: [100.5, 100.5], k: [50, 50] },
      { loss: 1.21875, q: [100.5, 100.5], k: [50, 50] },
    ];
    const result = partialConvergenceTest(byWindow(specs), { ...OPTIONS, tau: 0.4999, zeta: 2.4999 });
    expect(result.failing!.map((f) => f.quantity)).toEqual(['loss', 'q']);
  });

  it('takes the absolute value of negative changes', () => {
    // q 100 → 99.4 is −0.6 %: |−0.6| > 0.5 fails although the change is negative.
    const specs = structuredClone(CONVERGED);
    specs[0].q = [100, 100];
    specs[1].q = [99.4, 99.4];
    specs[2].q = [99.4, 99.4];
    const result = partialConvergenceTest(byWindow(specs), OPTIONS);
    expect(result.failing).toHaveLength(1);
    expect(result.failing![0].quantity).toBe('q');
    expect(result.failing![0].change).toBeCloseTo(-0.6, DIGITS);
  });

  it('passes small negative changes', () => {
    // q 100 → 99.6 → 99.6 is −0.4 % then 0; the loss falls by 2 % and 1.53 %.
    const specs = structuredClone(CONVERGED);
    specs[0].q = [100, 100];
    specs[1].q = [99.6, 99.6];
    specs[2].q = [99.6, 99.6];
    expect(partialConvergenceTest(byWindow(specs), OPTIONS).passed).toBe(true);
  });

  it('needs k·m epochs', () => {
    const history = byWindow(CONVERGED);
    const short = ConvergenceHistory.fromJSON({ ...history.toJSON(), records: history.toJSON().records.slice(0, 8) });
    const result = partialConvergenceTest(short, OPTIONS);
    expect(result.passed).toBe(false);
    expect(result.windows).toEqual([]);
    expect(result.reason).toBe('not enough history: needs 9 epochs of history (k = 3 windows of m = 3 epochs), has 8');
  });

  it('slides with each new epoch', () => {
    // Epoch 1 has loss 3, epochs 2–10 have loss 2, and the weights never move. At epoch 9 the
    // first window (epochs 1–3) has mean loss 7/3, so ΔL = (2 − 7/3) / (7/3) = −14.29 %. At
    // epoch 10 the windows are 2–4, 5–7, 8–10, all with loss 2, and the test passes.
    const history = new ConvergenceHistory('epochs');
    const norms = { q: [100, 100], k: [50, 50] };
    for (let epoch = 1; epoch <= 9; epoch++) history.record({ epoch, loss: epoch === 1 ? 3 : 2, norms });

    const at9 = partialConvergenceTest(history, OPTIONS);
    expect(at9.windows.map((w) => w.epochs)).toEqual([[1, 3], [4, 6], [7, 9]]);
    expect(at9.failing![0].change).toBeCloseTo((-1 / 7) * 100, DIGITS);
    expect(at9.passed).toBe(false);

    history.record({ epoch: 10, loss: 2, norms });
    const at10 = partialConvergenceTest(history, OPTIONS);
    expect(at10.windows.map((w) => w.epochs)).toEqual([[2, 4], [5, 7], [8, 10]]);
    expect(at10.passed).toBe(true);
  });

  it('rejects k below 2', () => {
    expect(() => partialConvergenceTest(byWindow(CONVERGED), { ...OPTIONS, k: 1 })).toThrow('invalid k 1');
  });

  it('rejects a module that was not recorded', () => {
    expect(() => partialConvergenceTest(byWindow(CONVERGED), { ...OPTIONS, modules: ['q', 'i'] })).toThrow(
      'module i not found in the convergence history (recorded: q, k)',
    );
  });

  it('uses the default modules', () => {
    // q, k, v, d and o by default: a history of q and k only is missing v.
    expect(() => partialConvergenceTest(byWindow(CONVERGED), { k: 3, m: 3 })).toThrow('module v not found');
  });
});

describe('step windows', () => {
  // m = 4 steps. Window 1 (steps 1–4): records of 1 and 3 steps with losses 2.4 and 2.0, so
  // L_1 = (1·2.4 + 3·2.0) / 4 = 2.1. Window 2 (5–8): one record, loss 2.1. Window 3 (9–12):
  // two records of 2 steps, losses 2.08 and 2.06, so L_3 = 2.07. q is 100, then 100.2, then
  // the mean of 100.3 and 100.5 = 100.4.
  const STEP_OPTIONS: ConvergenceOptions = { ...OPTIONS, m: 4, modules: ['q'] };
  const RECORDS = [
    { epoch: 1, steps: [1, 1] as [number, number], loss: 2.4, norms: { q: [100, 100] } },
    { epoch: 1, steps: [2, 4] as [number, number], loss: 2.0, norms: { q: [100, 100] } },
    { epoch: 2, steps: [5, 8] as [number, number], loss: 2.1, norms: { q: [100.2, 100.2] } },
    { epoch: 2, steps: [9, 10] as [number, number], loss: 2.08, norms: { q: [100.3, 100.3] } },
    { epoch: 3, steps: [11, 12] as [number, number], loss: 2.06, norms: { q: [100.5, 100.5] } },
    { epoch: 3, steps: [13, 14] as [number, number], loss: 5.0, norms: { q: [200, 200] } },
  ];

  function stepHistory(count: number): ConvergenceHistory {
    const history = new ConvergenceHistory('steps');
    for (const r of RECORDS.slice(0, count)) history.record(r);
    return history;
  }

  it('needs k complete windows', () => {
    const result = partialConvergenceTest(stepHistory(4), STEP_OPTIONS);
    expect(result.reason).toBe('not enough history: needs 3 complete windows of m = 4 steps, has 2');
  });

  it('evaluates the last complete windows', () => {
    const result = partialConvergenceTest(stepHistory(5), STEP_OPTIONS);
    expect(result.windows.map((w) => w.steps)).toEqual([[1, 4], [5, 8], [9, 12]]);
    expect(result.windows.map((w) => w.epochs)).toEqual([[1, 1], [2, 2], [2, 3]]);
    expect(result.passed).toBe(true);
  });

  it('weighs record losses by steps', () => {
    const { windows } = partialConvergenceTest(stepHistory(5), STEP_OPTIONS);
    expect(windows[0].loss).toBeCloseTo(2.1, DIGITS);
    expect(windows[2].loss).toBeCloseTo(2.07, DIGITS);
    expect(windows[2].norms.q).toBeCloseTo(100.4, DIGITS);
  });

  it('ignores an incomplete window', () => {
    // Steps 13–14 (loss 5, q 200) start window 4, which is not complete yet.
    const result = partialConvergenceTest(stepHistory(6), STEP_OPTIONS);
    expect(result.windows.map((w) => w.steps)).toEqual([[1, 4], [5, 8], [9, 12]]);
    expect(result.passed).toBe(true);
  });

  it('evaluates at window ends only', () => {
    const ends = RECORDS.map((_, i) => isEvaluationPoint(stepHistory(i + 1), 4));
    expect(ends).toEqual([false, true, true, false, true, false]);
  });

  it('rejects a record across a window boundary', () => {
    // With m = 3 the test reads windows 2–4 (steps 4–12), and the record of steps 2–4
    // crosses the start of window 2.
    expect(() => partialConvergenceTest(stepHistory(5), { ...STEP_OPTIONS, m: 3 })).toThrow(
      'the record of steps 2–4 crosses a boundary of the window of steps 4–6',
    );
  });

  it('skips windows before the first record', () => {
    // Recording starts at step 3: window 1 (steps 1–4) is incomplete, windows 2–4 are used.
    const history = new ConvergenceHistory('steps');
    history.record({ epoch: 1, steps: [3, 4], loss: 9, norms: { q: [1, 1] } });
    for (let t = 2; t <= 4; t++) history.record({ epoch: t, steps: [4 * t - 3, 4 * t], loss: 2, norms: { q: [100, 100] } });
    const result = partialConvergenceTest(history, STEP_OPTIONS);
    expect(result.windows.map((w) => w.steps)).toEqual([[5, 8], [9, 12], [13, 16]]);
    expect(result.passed).toBe(true);
  });

  it('rejects non-contiguous steps', () => {
    const history = stepHistory(1);
    expect(() => history.record({ epoch: 1, steps: [3, 4], loss: 2, norms: { q: [1, 1] } })).toThrow(
      'starts at step 3 but the previous record ended at step 1',
    );
  });
});

describe('layerDeltas', () => {
  // Window 1 is far off and must not matter. Windows 2 → 3: q [100, 50, 80] → [101, 49, 80]
  // is +1 %, −2 %, 0 %, so |ΔW| = [1, 2, 0]; k [10, 20, 40] → [10.5, 20, 40] is [5, 0, 0].
  const history = byWindow3([
    { q: [1, 1, 1], k: [1, 1, 1] },
    { q: [100, 50, 80], k: [10, 20, 40] },
    { q: [101, 49, 80], k: [10.5, 20, 40] },
  ]);

  function byWindow3(specs: Array<{ q: number[]; k: number[] }>): ConvergenceHistory {
    return byWindow(specs.map((s) => ({ ...s, loss: 2 })));
  }

  it('compares the last two windows', () => {
    const deltas = layerDeltas(history, OPTIONS);
    expect(deltas.q).toEqual([1, 2, 0]);
    expect(deltas.k).toEqual([5, 0, 0]);
  });

  it('needs two windows', () => {
    const short = byWindow3([{ q: [1, 1, 1], k: [1, 1, 1] }]);
    expect(() => layerDeltas(short, OPTIONS)).toThrow('cannot compute per-layer changes: needs 6 epochs of history');
  });
});

describe('ConvergenceHistory', () => {
  it('round-trips through JSON', () => {
    const history = byWindow(CONVERGED);
    const restored = ConvergenceHistory.fromJSON(JSON.parse(JSON.stringify(history)));
    expect(restored.unit).toBe('epochs');
    expect(restored.records).toEqual(history.records);
    expect(partialConvergenceTest(restored, OPTIONS)).toEqual(partialConvergenceTest(history, OPTIONS));
  });

  it('round-trips step records', () => {
    const history = new ConvergenceHistory('steps');
    history.record({ epoch: 0, steps: [1, 5], loss: 1.5, norms: { d: [3, 4] } });
    const restored = ConvergenceHistory.fromJSON(JSON.parse(JSON.stringify(history)));
    expect(restored.unit).toBe('steps');
    expect(restored.records).toEqual(history.records);
  });

  it('rejects JSON of another format', () => {
    expect(() => ConvergenceHistory.fromJSON({ format: 'x', version: 1, unit: 'epochs', records: [] })).toThrow(
      'invalid convergence history',
    );
  });

  it('rechecks records from JSON', () => {
    const json = byWindow(CONVERGED).toJSON();
    json.records[4].epoch = 7;
    expect(() => ConvergenceHistory.fromJSON(json)).toThrow('convergence record of epoch 7 does not follow epoch 4');
  });

  it('copies records', () => {
    const norms = { q: [1, 2] };
    const history = new ConvergenceHistory();
    history.record({ epoch: 1, loss: 1, norms });
    norms.q[0] = 99;
    expect(history.records[0].norms.q).toEqual([1, 2]);
  });

  it('rejects a skipped epoch', () => {
    const history = byWindow(CONVERGED);
    expect(() => history.record({ epoch: 11, loss: 1, norms: { q: [1, 1], k: [1, 1] } })).toThrow(
      'convergence record of epoch 11 does not follow epoch 9',
    );
  });

  it('rejects a NaN loss', () => {
    expect(() => new ConvergenceHistory().record({ epoch: 1, loss: NaN, norms: { q: [1] } })).toThrow('invalid loss NaN');
  });

  it('rejects a negative norm', () => {
    expect(() => new ConvergenceHistory().record({ epoch: 1, loss: 1, norms: { q: [1, -2] } })).toThrow(
      'invalid norm -2 of module q, layer 1',
    );
  });

  it('rejects an unknown module', () => {
    const norms = { x: [1] } as unknown as { q: number[] };
    expect(() => new ConvergenceHistory().record({ epoch: 1, loss: 1, norms })).toThrow("unknown module 'x'");
  });

  it('rejects a changed module set', () => {
    const history = byWindow(CONVERGED);
    expect(() => history.record({ epoch: 10, loss: 1, norms: { q: [1, 1] } })).toThrow(
      'has modules [q] but earlier records have [k, q]',
    );
  });

  it('rejects a changed layer count', () => {
    const history = byWindow(CONVERGED);
    expect(() => history.record({ epoch: 10, loss: 1, norms: { q: [1, 1, 1], k: [1, 1] } })).toThrow(
      'has 3 layers of module q but earlier records have 2',
    );
  });
});

describe('percentChange', () => {
  it('is exact for dyadic inputs', () => {
    expect(percentChange(100, 100.5)).toBe(0.5);
  });

  it('is infinite from zero', () => {
    expect(percentChange(0, 1)).toBe(Infinity);
  });

  it('is zero from zero to zero', () => {
    expect(percentChange(0, 0)).toBe(0);
  });
});
