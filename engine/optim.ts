// AdamW over parameter groups, with global-norm gradient clipping, all on the device. A
// step dispatches the gradient-norm reduction once and one fused AdamW kernel per
// parameter that trains this step. A frozen parameter (requiresGrad false) costs no
// dispatch and has no m or v. Learning-rate schedules live in engine/schedule.ts; the
// caller passes this step's LR to step().
import {
  adamw,
  gradStats,
  partialCount,
  sumOfSquaresPartials,
  GRAD_STATS_CLIP_COEF,
  GRAD_STATS_ELEMENTS,
  GRAD_STATS_NORM,
} from '../kernels/adamw.ts';
import { fill } from '../kernels/fill.ts';
import { zeroGrad } from './autograd.ts';
import { runtime } from './runtime.ts';
import { Scope, empty, persistent, type Tensor } from './tensor.ts';

export interface ParamGroupOptions {
  /** Multiplies the scheduled LR for this group (default 1). */
  lrScale?: number;
  /** Decoupled weight decay: each step p ← p − lr·weightDecay·p. */
  weightDecay: number;
}

export interface ParamGroup extends ParamGroupOptions {
  params: Tensor[];
}

export interface AdamWOptions {
  beta1?: number;
  beta2?: number;
  eps?: number;
  /** Clip the global gradient norm (over every parameter updated in a step) to this value. */
  maxGradNorm?: number;
}

/** Optimizer state of one parameter as host arrays, for checkpoints. */
export interface ParamStateDict {
  m: Float32Array;
  v: Float32Array;
  /** Updates applied since the state was created or reset (the t of the bias corrections). */
  step: number;
}

/** State per parameter name. */
export type OptimizerStateDict = Record<string, ParamStateDict>;

interface ParamState {
  m: Tensor;
  v: Tensor;
  step: number;
}

export class AdamW {
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly maxGradNorm: number | undefined;

  private readonly groups: ParamGroup[] = [];
  private readonly groupOf = new Map<Tensor, ParamGroup>();
  private readonly state = new Map<Tensor, ParamState>();
  /** [Σg², ‖g‖, clipping coefficient, 0] of the last step (kernels/adamw.ts gradStats). */
  private stats: Tensor | null = null;

  constructor(groups: ParamGroup[], options: AdamWOptions = {}) {
    this.beta1 = options.beta1 ?? 0.9;
    this.beta2 = options.beta2 ?? 0.999;
    this.eps = options.eps ?? 1e-8;
    this.maxGradNorm = options.maxGradNorm;
    checkRange('beta1', this.beta1, 0, 1);
    checkRange('beta2', this.beta2, 0, 1);
    if (!(this.eps > 0) || !Number.isFinite(this.eps)) throw new Error(`invalid AdamW eps ${this.eps}: expected a finite value > 0`);
    if (this.maxGradNorm !== undefined && !(this.maxGradNorm > 0 && Number.isFinite(this.maxGradNorm))) {
      throw new Error(`invalid maxGradNorm ${this.maxGradNorm}: expected a finite value > 0, or leave it unset to disable clipping`);
    }

    for (const g of groups) this.addParams(g, g.params);
  }

  // ---- parameters -----------------------------------------------------------------------

  /** Returns every parameter of every group, in group order. */
  params(): Tensor[] {
    return this.groups.flatMap((g) => g.params);
  }

  /**
   * Adds parameters (e.g. LoRA adapters) to the group with index `group`, or to a new group
   * with the given options. Returns the group index. Their state starts empty, so their
   * first update uses t = 1.
   */
  addParams(group: number | ParamGroupOptions, params: Tensor[]): number {
    let index: number;
    if (typeof group === 'number') {
      if (!Number.isInteger(group) || group < 0 || group >= this.groups.length) {
        throw new Error(`addParams: param group ${group} not found (the optimizer has ${this.groups.length})`);
      }
      index = group;
    } else {
      checkGroupOptions(group, this.groups.length);
      index = this.groups.push({ params: [], lrScale: group.lrScale ?? 1, weightDecay: group.weightDecay }) - 1;
    }

    const target = this.groups[index];
    for (const p of params) {
      if (this.groupOf.has(p)) throw new Error(`addParams: ${p} is already in param group ${this.groups.indexOf(this.groupOf.get(p)!)}`);
      if (p.dtype !== 'f32') throw new Error(`addParams: ${p} is not f32; only f32 tensors can be optimised`);
      target.params.push(p);
      this.groupOf.set(p, target);
    }
    return index;
  }

  /** Removes parameters (e.g. detached adapters) and releases their state. Groups keep their indices. */
  removeParams(params: Tensor[]): void {
    for (const p of params) {
      const group = this.groupOf.get(p);
      if (!group) throw new Error(`removeParams: ${p} not found in any param group`);
      group.params.splice(group.params.indexOf(p), 1);
      this.groupOf.delete(p);
      this.release(p);
    }
  }

  /** Sets gradHasValue = false on every parameter, so the next backward overwrites the gradients. */
  zeroGrad(): void {
    zeroGrad(this.params());
  }

  // ---- step -----------------------------------------------------------------------------

  /**
   * Applies one AdamW update with learning rate lr (times each group's lrScale) to every
   * parameter that requires a gradient and received one since zeroGrad(). Parameters that
   * no longer require a gradient are skipped and their state is released here, so a frozen
   * weight holds no m or v. Nothing is read back: the clipping coefficient goes from the
   * norm kernel to the update kernels through a device buffer.
   */
  step(lr: number): void {
    if (!(lr >= 0) || !Number.isFinite(lr)) throw new Error(`AdamW.step: invalid learning rate ${lr}, expected a finite value >= 0`);

    const training: Tensor[] = [];
    for (const p of this.params()) {
      if (!p.requiresGrad) {
        this.release(p);
        continue;
      }
      if (!p.grad || !p.gradHasValue) continue;
      if (p.grad.size !== p.size) throw new Error(`AdamW.step: gradient [${p.grad.shape}] does not match ${p}`);
      training.push(p);
    }
    if (training.length === 0) return;

    const r = runtime();
    const stats = this.gradStatsTensor();
    this.computeGradStats(training, stats);

    for (const p of training) {
      const st = this.stateFor(p);
      st.step++;
      const group = this.groupOf.get(p)!;
      adamw(
        r,
        { param: p.buffer, grad: p.grad!.buffer, m: st.m.buffer, v: st.v.buffer, stats: stats.buffer },
        p.size,
        {
          lr: lr * (group.lrScale ?? 1),
          beta1: this.beta1,
          beta2: this.beta2,
          eps: this.eps,
          weightDecay: group.weightDecay,
          step: st.step,
        },
      );
    }
  }

  /** Global norm and clipping coefficient of the gradients, written to `stats` on the device. */
  private computeGradStats(training: Tensor[], stats: Tensor): void {
    const r = runtime();
    const count = training.reduce((sum, p) => sum + partialCount(p.size), 0);

    // The partial sums are scratch: releasing them right after recording is safe because
    // any later use of the pooled buffer is recorded or uploaded after these dispatches.
    const scope = new Scope();
    try {
      const partials = empty([count]);
      let offset = 0;
      for (const p of training) {
        sumOfSquaresPartials(r, p.grad!.buffer, p.size, partials.buffer, offset);
        offset += partialCount(p.size);
      }
      gradStats(r, partials.buffer, count, stats.buffer, this.maxGradNorm);
    } finally {
      scope.end();
    }
  }

  private gradStatsTensor(): Tensor {
    if (!this.stats) this.stats = persistent(() => empty([GRAD_STATS_ELEMENTS]));
    return this.stats;
  }

  /** Returns the state of p, allocating and zeroing it on p's first update (or the first after release). */
  private stateFor(p: Tensor): ParamState {
    let st = this.state.get(p);
    if (!st) {
      st = persistent(() => ({ m: empty(p.shape), v: empty(p.shape), step: 0 }));
      fill(runtime(), st.m.buffer, p.size, 0);
      fill(runtime(), st.v.buffer, p.size, 0);
      this.state.set(p, st);
    }
    return st;
  }

  // ---- logging --------------------------------------------------------------------------

  /** Global gradient norm (before clipping) of the last step; null before the first. Reads back. */
  async gradNorm(): Promise<number | null> {
    return (await this.gradStats())?.norm ?? null;
  }

  /** Norm and clipping coefficient of the last step; null before the first. Reads back. */
  async gradStats(): Promise<{ norm: number; clipCoef: number } | null> {
    if (!this.stats) return null;
    const s = await this.stats.toArray();
    return { norm: s[GRAD_STATS_NORM], clipCoef: s[GRAD_STATS_CLIP_COEF] };
  }

  // ---- state ----------------------------------------------------------------------------

  hasState(p: Tensor): boolean {
    return this.state.has(p);
  }

  /** Updates applied to p since its state was created or reset; 0 without state. */
  stepCount(p: Tensor): number {
    return this.state.get(p)?.step ?? 0;
  }

  /**
   * Returns the device bytes of m and v of every parameter, counted as the pool's bucket sizes
   * (pool.sizeOf), the same unit as the pool's liveBytes. The small grad-stats buffer is
   * not included.
   */
  stateBytes(): number {
    const pool = runtime().pool;
    let bytes = 0;
    for (const st of this.state.values()) bytes += pool.sizeOf(st.m.buffer) + pool.sizeOf(st.v.buffer);
    return bytes;
  }

  /** Releases p's m and v (when freezing p). If p trains again, its state restarts at zero with t = 0. */
  release(p: Tensor): void {
    const st = this.state.get(p);
    if (!st) return;
    st.m.release();
    st.v.release();
    this.state.delete(p);
  }

  /** Zeroes p's m and v and restarts its step count, so the next update uses t = 1. */
  resetState(p: Tensor): void {
    const st = this.state.get(p);
    if (!st) return;
    fill(runtime(), st.m.buffer, p.size, 0);
    fill(runtime(), st.v.buffer, p.size, 0);
    st.step = 0;
  }

  /**
   * Magnitude pruning of p's state (as ReLoRA does at each reset): zeroes m and v at the
   * floor(fraction·n) entries with the smallest |m|, ties broken by index. One mask serves
   * both, so no kept entry pairs m ≠ 0 with v = 0, which would give an update of m/ε. The
   * step count is kept. Reads the state back to the host, so call it rarely.
   */
  async pruneState(p: Tensor, fraction: number): Promise<void> {
    if (!(fraction >= 0 && fraction <= 1)) throw new Error(`pruneState: invalid fraction ${fraction}, expected a value in [0, 1]`);
    const st = this.state.get(p);
    if (!st) return;

    const m = await st.m.toArray();
    const v = await st.v.toArray();
    const order = Array.from(m.keys()).sort((a, b) => Math.abs(m[a]) - Math.abs(m[b]) || a - b);
    const pruned = Math.floor(fraction * m.length);
    for (let k = 0; k < pruned; k++) {
      m[order[k]] = 0;
      v[order[k]] = 0;
    }

    st.m.write(m);
    st.v.write(v);
  }

  /** Releases every state tensor and the grad-stats buffer. */
  dispose(): void {
    for (const p of [...this.state.keys()]) this.release(p);
    this.stats?.release();
    this.stats = null;
  }

  // ---- checkpoints ----------------------------------------------------------------------

  /** Host copies of m, v and t for every parameter with state, keyed by parameter name. */
  async stateDict(): Promise<OptimizerStateDict> {
    const out: OptimizerStateDict = {};
    for (const [p, st] of this.state) {
      const name = requireName(p, 'stateDict');
      if (name in out) throw new Error(`stateDict: two parameters are named "${name}"; names must be unique`);
      out[name] = { m: await st.m.toArray(), v: await st.v.toArray(), step: st.step };
    }
    return out;
  }

  /**
   * Replaces all state with a checkpoint's. Parameters without an entry end with no state,
   * because they had none when it was saved. An entry that names no parameter of this
   * optimizer is an error, so a renamed parameter cannot silently lose its state.
   */
  loadStateDict(dict: OptimizerStateDict): void {
    const byName = new Map<string, Tensor>();
    const duplicates = new Set<string>();
    for (const p of this.params()) {
      if (p.name === undefined) continue;
      if (byName.has(p.name)) duplicates.add(p.name);
      byName.set(p.name, p);
    }
    for (const [name, entry] of Object.entries(dict)) {
      const p = byName.get(name);
      if (!p) throw new Error(`loadStateDict: parameter "${name}" not found in this optimizer's param groups`);
      if (duplicates.has(name)) throw new Error(`loadStateDict: two parameters are named "${name}"; names must be unique`);
      if (entry.m.length !== p.size || entry.v.length !== p.size) {
        throw new Error(`loadStateDict: state of "${name}" has ${entry.m.length} (m) and ${entry.v.length} (v) values, the parameter has ${p.size}`);
      }
      if (!Number.isInteger(entry.step) || entry.step < 0) throw new Error(`loadStateDict: invalid step ${entry.step} for "${name}"`);
    }

    for (const p of [...this.state.keys()]) this.release(p);
    for (const [name, entry] of Object.entries(dict)) {
      const p = byName.get(name)!;
      const st = persistent(() => ({ m: empty(p.shape), v: empty(p.shape), step: entry.step }));
      st.m.write(entry.m);
      st.v.write(entry.v);
      this.state.set(p, st);
    }
  }
}

// ---- argument checks --------------------------------------------------------------------

/** Requires lo ≤ value < hi. */
function checkRange(name: string, value: number, lo: number, hi: number): void {
  if (!(value >= lo && value < hi)) throw new Error(`invalid AdamW ${name} ${value}: expected a value in [${lo}, ${hi})`);
}

function checkGroupOptions(g: ParamGroupOptions, index: number): void {
  if (!(g.weightDecay >= 0) || !Number.isFinite(g.weightDecay)) {
    throw new Error(`invalid weightDecay ${g.weightDecay} in param group ${index}: expected a finite value >= 0`);
  }
  const scale = g.lrScale ?? 1;
  if (!(scale >= 0) || !Number.isFinite(scale)) throw new Error(`invalid lrScale ${scale} in param group ${index}: expected a finite value >= 0`);
}

function requireName(p: Tensor, caller: string): string {
  if (p.name === undefined) throw new Error(`${caller}: parameter ${p} has no name; set tensor.name before saving optimizer state`);
  return p.name;
}
