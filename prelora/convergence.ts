// The partial convergence test that decides when PreLoRA switches from full training to
// LoRA (Algorithm 1 of "PreLoRA: Hybrid Pre-training of Vision Transformers with Full
// Training and Low-Rank Adapters"), and the per-layer weight changes that rank assignment
// (ranks.ts) turns into adapter ranks. Pure TypeScript: the trainer measures the norms on the
// device (norms.ts) and hands them over as numbers.
//
// Semantics:
// - Target modules α are named by short name: q, k, v (attention.attention.query/key/value),
//   d (attention.output.dense), o (output.dense), and optionally i (intermediate.dense).
// - A record stores, per module and per layer, the Frobenius norm of the target weight (of
//   the effective weight W + s·B·A when an adapter is attached) and the mean training loss.
//   With epoch windows the trainer records once per epoch. With step windows a record covers
//   a contiguous range of optimizer steps (one step, or a whole window).
// - A window is m epochs, or m optimizer steps. W_t^a is the mean over layers of the
//   per-layer norms, averaged over the window's records. L_t is the mean training loss over
//   the window: the mean of the epoch means for epoch windows, the step-weighted mean for
//   step windows.
// - Epoch windows slide: evaluated at epoch e, the test reads epochs e−k·m+1 … e cut into k
//   consecutive blocks of m epochs. Step windows are fixed blocks of steps
//   (t−1)·m+1 … t·m, and the test reads the last k complete ones.
// - The test passes when for every module and every consecutive pair of windows
//   (t = 2 … k), |ΔW| ≤ τ and |ΔL| ≤ ζ, with ΔW = (W_t − W_{t−1}) / W_{t−1} · 100 and ΔL
//   likewise (percent). Defaults k = 3, m = 3, τ = 0.5, ζ = 2.5.
import { z } from 'zod';
import { VIT_LAYER_MODULES } from '../model/peft.ts';
import type { TargetModule } from '../model/vit.ts';

/** Window unit, as in the run configuration's `prelora.windowUnit`. */
export type WindowUnit = 'epochs' | 'steps';

/** Per module, one value per layer (index = layer). */
export type PerLayer = Partial<Record<TargetModule, number[]>>;

/** Measurements the trainer records at the end of an epoch (or of a range of steps). */
export interface ConvergenceRecord {
  /** Epoch the record closes (epoch windows) or falls in (step windows). */
  epoch: number;
  /** Step windows only: first and last optimizer step the record covers, inclusive, 1-based. */
  steps?: [number, number];
  /** Mean training loss over the epoch or over the record's steps. */
  loss: number;
  /** Per module, per layer Frobenius norm of the target weight at the record's end. */
  norms: PerLayer;
}

export interface ConvergenceOptions {
  /** Number of windows compared. */
  k?: number;
  /** Window size, in epochs or optimizer steps (the history's unit). */
  m?: number;
  /** τ: largest allowed |ΔW| of any module between consecutive windows, percent. */
  tau?: number;
  /** ζ: largest allowed |ΔL| between consecutive windows, percent. */
  zeta?: number;
  /** Target modules α. */
  modules?: readonly TargetModule[];
}

export const DEFAULT_TARGETS: readonly TargetModule[] = ['q', 'k', 'v', 'd', 'o'];

export const CONVERGENCE_DEFAULTS = { k: 3, m: 3, tau: 0.5, zeta: 2.5, modules: DEFAULT_TARGETS } as const;

export interface ConvergenceWindow {
  /** First and last epoch of the window's records, inclusive. */
  epochs: [number, number];
  /** Step windows only: first and last optimizer step of the window, inclusive. */
  steps?: [number, number];
  /** L_t. */
  loss: number;
  /** W_t^a per module. */
  norms: Partial<Record<TargetModule, number>>;
  /** Per module, each layer's norm averaged over the window. */
  layerNorms: PerLayer;
}

/** One change that exceeded its threshold. */
export interface ConvergenceFailure {
  /** 'loss', or the module whose mean weight norm changed too much. */
  quantity: 'loss' | TargetModule;
  /** The pair of windows compared, 1-based (t−1, t). */
  windows: [number, number];
  /** Signed change, percent. */
  change: number;
  /** τ for weights, ζ for the loss. */
  threshold: number;
}

export interface ConvergenceResult {
  passed: boolean;
  /** One line for the log: why the test passed or failed. */
  reason: string;
  /** The k windows compared, oldest first; empty when the history is too short. */
  windows: ConvergenceWindow[];
  /** Signed percent changes between consecutive windows: entry t−2 compares windows t−1 and t. */
  deltas: { loss: number[]; modules: Partial<Record<TargetModule, number[]>> };
  /** Every change that exceeded its threshold, in window order; absent when none did. */
  failing?: ConvergenceFailure[];
}

// ---------------------------------------------------------------------------------------
// History

/**
 * The records the convergence test reads, in order. It goes into checkpoints through
 * toJSON/fromJSON so that a resumed run keeps its window history.
 *
 * ```ts
 * const history = new ConvergenceHistory('epochs');
 * history.record({ epoch: 1, loss: 1.92, norms: { q: [10.1, 9.8], k: [10.3, 9.9] } });
 * const result = partialConvergenceTest(history, { modules: ['q', 'k'] });
 * ```
 */
export class ConvergenceHistory {
  private readonly list: ConvergenceRecord[] = [];

  constructor(readonly unit: WindowUnit = 'epochs') {}

  get records(): readonly ConvergenceRecord[] {
    return this.list;
  }

  /** Checks that the record continues the history, then appends a copy of it. */
  record(r: ConvergenceRecord): void {
    checkRecord(r, this.list.at(-1), this.unit);

    const norms: PerLayer = {};
    for (const [module, values] of moduleEntries(r.norms)) norms[module] = [...values];
    const copy: ConvergenceRecord = { epoch: r.epoch, loss: r.loss, norms };
    if (r.steps) copy.steps = [r.steps[0], r.steps[1]];
    this.list.push(copy);
  }

  toJSON(): ConvergenceHistoryJson {
    return { format: HISTORY_FORMAT, version: 1, unit: this.unit, records: this.list.map((r) => structuredClone(r)) };
  }

  /** Restores a history saved by toJSON; every record is checked again. */
  static fromJSON(json: unknown): ConvergenceHistory {
    const parsed = HistorySchema.safeParse(json);
    if (!parsed.success) throw new Error(`invalid convergence history: ${z.prettifyError(parsed.error).replace(/\n/g, ' ')}`);
    const history = new ConvergenceHistory(parsed.data.unit);
    for (const r of parsed.data.records) history.record(r as ConvergenceRecord);
    return history;
  }
}

const HISTORY_FORMAT = 'prelora-convergence-history';

export interface ConvergenceHistoryJson {
  format: typeof HISTORY_FORMAT;
  version: 1;
  unit: WindowUnit;
  records: ConvergenceRecord[];
}

const HistorySchema = z.object({
  format: z.literal(HISTORY_FORMAT),
  version: z.literal(1),
  unit: z.enum(['epochs', 'steps']),
  records: z.array(
    z.object({
      epoch: z.number(),
      steps: z.tuple([z.number(), z.number()]).optional(),
      loss: z.number(),
      norms: z.record(z.string(), z.array(z.number())),
    }),
  ),
});

function checkRecord(r: ConvergenceRecord, previous: ConvergenceRecord | undefined, unit: WindowUnit): void {
  if (!Number.isSafeInteger(r.epoch) || r.epoch < 0) throw new Error(`invalid epoch ${r.epoch} in convergence record: expected an integer ≥ 0`);
  const where = `convergence record of epoch ${r.epoch}`;
  if (!Number.isFinite(r.loss) || r.loss < 0) throw new Error(`invalid loss ${r.loss} in ${where}: expected a finite value ≥ 0`);

  if (unit === 'epochs' && previous && r.epoch !== previous.epoch + 1) {
    throw new Error(`${where} does not follow epoch ${previous.epoch}: epoch windows need one record per consecutive epoch`);
  }
  if (unit === 'steps') checkSteps(r, previous, where);
  checkNorms(r.norms, previous?.norms, where);
}

function checkSteps(r: ConvergenceRecord, previous: ConvergenceRecord | undefined, where: string): void {
  const steps = r.steps;
  if (!steps || !Number.isSafeInteger(steps[0]) || !Number.isSafeInteger(steps[1]) || steps[0] < 1 || steps[1] < steps[0]) {
    throw new Error(`invalid steps ${JSON.stringify(steps)} in ${where}: step windows need [first, last] with 1 ≤ first ≤ last`);
  }
  if (!previous) return;
  if (steps[0] !== previous.steps![1] + 1) {
    throw new Error(`${where} starts at step ${steps[0]} but the previous record ended at step ${previous.steps![1]}: records must cover contiguous steps`);
  }
  if (r.epoch < previous.epoch) throw new Error(`${where} comes after a record of epoch ${previous.epoch}`);
}

function checkNorms(norms: PerLayer, previous: PerLayer | undefined, where: string): void {
  const entries = moduleEntries(norms);
  if (entries.length === 0) throw new Error(`missing norms in ${where}: expected at least one target module`);
  for (const [module, values] of entries) {
    if (!(module in VIT_LAYER_MODULES)) {
      throw new Error(`unknown module '${module}' in ${where}: expected one of ${Object.keys(VIT_LAYER_MODULES).join(', ')}`);
    }
    if (!Array.isArray(values) || values.length === 0) throw new Error(`missing layer norms of module ${module} in ${where}`);
    const bad = values.findIndex((x) => !Number.isFinite(x) || x < 0);
    if (bad >= 0) throw new Error(`invalid norm ${values[bad]} of module ${module}, layer ${bad}, in ${where}: expected a finite value ≥ 0`);
  }
  if (!previous) return;

  const modules = entries.map(([m]) => m).sort().join(', ');
  const previousModules = moduleEntries(previous).map(([m]) => m).sort().join(', ');
  if (modules !== previousModules) throw new Error(`${where} has modules [${modules}] but earlier records have [${previousModules}]`);
  for (const [module, values] of entries) {
    const layers = previous[module]!.length;
    if (values.length !== layers) throw new Error(`${where} has ${values.length} layers of module ${module} but earlier records have ${layers}`);
  }
}

function moduleEntries(norms: PerLayer): Array<[TargetModule, number[]]> {
  return Object.entries(norms).filter(([, v]) => v !== undefined) as Array<[TargetModule, number[]]>;
}

// ---------------------------------------------------------------------------------------
// Windows

interface ResolvedOptions {
  k: number;
  m: number;
  tau: number;
  zeta: number;
  modules: readonly TargetModule[];
}

function resolveOptions(options: ConvergenceOptions): ResolvedOptions {
  const o = { ...CONVERGENCE_DEFAULTS, ...stripUndefined(options) };
  if (!Number.isSafeInteger(o.k) || o.k < 2) throw new Error(`invalid k ${o.k}: the convergence test compares at least 2 windows`);
  if (!Number.isSafeInteger(o.m) || o.m < 1) throw new Error(`invalid m ${o.m}: the window size must be a positive integer`);
  if (!(o.tau >= 0) || !Number.isFinite(o.tau)) throw new Error(`invalid tau ${o.tau}: expected a finite percentage ≥ 0`);
  if (!(o.zeta >= 0) || !Number.isFinite(o.zeta)) throw new Error(`invalid zeta ${o.zeta}: expected a finite percentage ≥ 0`);
  if (o.modules.length === 0) throw new Error('invalid modules: the convergence test needs at least one target module');
  return o;
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/**
 * Returns the last `count` windows of the history, oldest first, or why there are not
 * enough. Epoch windows end at the latest epoch, and step windows are the last complete ones.
 */
function lastWindows(
  history: ConvergenceHistory,
  count: number,
  m: number,
  modules: readonly TargetModule[],
): { windows: ConvergenceWindow[] } | { missing: string } {
  const records = history.records;
  checkModulesRecorded(records, modules);

  if (history.unit === 'epochs') {
    if (records.length < count * m) {
      return { missing: `needs ${count * m} epochs of history (k = ${count} windows of m = ${m} epochs), has ${records.length}` };
    }
    const recent = records.slice(records.length - count * m);
    const windows = Array.from({ length: count }, (_, t) => summarise(recent.slice(t * m, (t + 1) * m), modules, 'epochs'));
    return { windows };
  }

  return lastStepWindows(records, count, m, modules);
}

function lastStepWindows(
  records: readonly ConvergenceRecord[],
  count: number,
  m: number,
  modules: readonly TargetModule[],
): { windows: ConvergenceWindow[] } | { missing: string } {
  // Window t covers steps (t−1)·m+1 … t·m. It is complete once the records cover all of it.
  const firstStep = records[0]?.steps![0] ?? 1;
  const lastStep = records.at(-1)?.steps![1] ?? 0;
  const lastComplete = Math.floor(lastStep / m);
  const firstComplete = Math.ceil((firstStep - 1) / m) + 1;
  const complete = Math.max(0, lastComplete - firstComplete + 1);
  if (complete < count) {
    return { missing: `needs ${count} complete windows of m = ${m} steps, has ${complete}` };
  }

  const windows: ConvergenceWindow[] = [];
  for (let t = lastComplete - count + 1; t <= lastComplete; t++) {
    const begin = (t - 1) * m + 1;
    const end = t * m;
    const inside = records.filter((r) => r.steps![1] >= begin && r.steps![0] <= end);
    const straddling = inside.find((r) => r.steps![0] < begin || r.steps![1] > end);
    if (straddling) {
      throw new Error(
        `the record of steps ${straddling.steps![0]}–${straddling.steps![1]} crosses a boundary of the window of steps ${begin}–${end}: record at least at every multiple of m = ${m} steps`,
      );
    }
    windows.push({ ...summarise(inside, modules, 'steps'), steps: [begin, end] });
  }
  return { windows };
}

function checkModulesRecorded(records: readonly ConvergenceRecord[], modules: readonly TargetModule[]): void {
  const first = records[0];
  if (!first) return;
  for (const module of modules) {
    if (first.norms[module] === undefined) {
      throw new Error(`module ${module} not found in the convergence history (recorded: ${moduleEntries(first.norms).map(([m]) => m).join(', ')})`);
    }
  }
}

/** Averages a window's records: per-layer norms and their layer mean, and the loss. */
function summarise(records: readonly ConvergenceRecord[], modules: readonly TargetModule[], unit: WindowUnit): ConvergenceWindow {
  const layerNorms: PerLayer = {};
  const norms: Partial<Record<TargetModule, number>> = {};
  for (const module of modules) {
    const layers = records[0].norms[module]!.length;
    const perLayer = Array.from({ length: layers }, (_, l) => mean(records.map((r) => r.norms[module]![l])));
    layerNorms[module] = perLayer;
    norms[module] = mean(perLayer);
  }

  // Epoch records are already means over an epoch, so their plain mean is L_t. A step
  // record's loss is a mean over its steps, so it weighs by the number of steps.
  const weights = records.map((r) => (unit === 'steps' ? r.steps![1] - r.steps![0] + 1 : 1));
  const totalWeight = weights.reduce((a, b) => a + b, 0);
  const loss = records.reduce((sum, r, i) => sum + r.loss * weights[i], 0) / totalWeight;

  return { epochs: [records[0].epoch, records.at(-1)!.epoch], loss, norms, layerNorms };
}

function mean(values: readonly number[]): number {
  return values.reduce((a, b) => a + b, 0) / values.length;
}

/**
 * (current − previous) / previous · 100. Multiplying before dividing keeps hand-checkable
 * cases exact: 100 → 100.5 gives 0.5, not 0.5000000000000001. A change from 0 is infinite.
 */
export function percentChange(previous: number, current: number): number {
  if (previous === 0) return current === 0 ? 0 : (current - previous) * Infinity;
  return ((current - previous) * 100) / previous;
}

// ---------------------------------------------------------------------------------------
// The test

/**
 * Runs the partial convergence test on the latest k windows. With epoch windows call it at
 * every epoch end, with step windows whenever isEvaluationPoint returns true.
 */
export function partialConvergenceTest(history: ConvergenceHistory, options: ConvergenceOptions = {}): ConvergenceResult {
  const o = resolveOptions(options);
  const found = lastWindows(history, o.k, o.m, o.modules);
  if ('missing' in found) {
    return { passed: false, reason: `not enough history: ${found.missing}`, windows: [], deltas: { loss: [], modules: {} } };
  }
  const windows = found.windows;

  const deltas: ConvergenceResult['deltas'] = { loss: [], modules: {} };
  const failing: ConvergenceFailure[] = [];
  for (let t = 1; t < windows.length; t++) {
    const pair: [number, number] = [t, t + 1];
    const lossChange = percentChange(windows[t - 1].loss, windows[t].loss);
    deltas.loss.push(lossChange);
    // Written as !(≤) so that a NaN change fails instead of passing.
    if (!(Math.abs(lossChange) <= o.zeta)) failing.push({ quantity: 'loss', windows: pair, change: lossChange, threshold: o.zeta });

    for (const module of o.modules) {
      const change = percentChange(windows[t - 1].norms[module]!, windows[t].norms[module]!);
      (deltas.modules[module] ??= []).push(change);
      if (!(Math.abs(change) <= o.tau)) failing.push({ quantity: module, windows: pair, change, threshold: o.tau });
    }
  }

  const span = describeSpan(windows);
  if (failing.length === 0) {
    const reason = `passed over ${span}: every |ΔW| ≤ τ = ${o.tau}% and every |ΔL| ≤ ζ = ${o.zeta}%`;
    return { passed: true, reason, windows, deltas };
  }
  return { passed: false, reason: describeFailure(failing, span), windows, deltas, failing };
}

function describeSpan(windows: readonly ConvergenceWindow[]): string {
  const first = windows[0];
  const last = windows.at(-1)!;
  if (first.steps) return `${windows.length} windows, steps ${first.steps[0]}–${last.steps![1]}`;
  return `${windows.length} windows, epochs ${first.epochs[0]}–${last.epochs[1]}`;
}

function describeFailure(failing: readonly ConvergenceFailure[], span: string): string {
  const f = failing[0];
  const quantityName = f.quantity === 'loss' ? 'loss' : `mean weight norm of ${f.quantity}`;
  const symbol = f.quantity === 'loss' ? 'ζ' : 'τ';
  const more = failing.length > 1 ? ` (${failing.length - 1} more changes exceed their thresholds)` : '';
  return `failed over ${span}: ${quantityName} changed ${f.change.toFixed(3)}% between windows ${f.windows[0]} and ${f.windows[1]}, beyond ${symbol} = ${f.threshold}%${more}`;
}

/**
 * Returns whether the latest record ends a window, i.e. whether a new test result is due: at
 * every record for epoch windows, and when a record reaches a multiple of m for step windows.
 */
export function isEvaluationPoint(history: ConvergenceHistory, m: number = CONVERGENCE_DEFAULTS.m): boolean {
  const last = history.records.at(-1);
  if (!last) return false;
  if (history.unit === 'epochs') return true;
  const [first, end] = last.steps!;
  return Math.floor(end / m) > Math.floor((first - 1) / m);
}

// ---------------------------------------------------------------------------------------
// Per-layer changes for rank assignment

/**
 * Per module, per layer |ΔW| in percent between the last two windows (k−1 and k of the
 * test): the input of rank assignment. Needs at least two windows of history.
 */
export function layerDeltas(history: ConvergenceHistory, options: ConvergenceOptions = {}): PerLayer {
  const o = resolveOptions(options);
  const found = lastWindows(history, 2, o.m, o.modules);
  if ('missing' in found) throw new Error(`cannot compute per-layer changes: ${found.missing}`);
  const [before, after] = found.windows;

  // The absolute value is a decision the algorithm leaves open (it min-max normalises the
  // raw changes). A layer whose norm shrank by 3% is as far from converged as one that grew
  // by 3%, so both get the same rank. Signed changes would give the shrinking layer the
  // lowest rank of all.
  const out: PerLayer = {};
  for (const module of o.modules) {
    const previous = before.layerNorms[module]!;
    const current = after.layerNorms[module]!;
    out[module] = previous.map((p, l) => Math.abs(percentChange(p, current[l])));
  }
  return out;
}
