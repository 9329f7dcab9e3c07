// The PreLoRA phase machine: full → (relora) → warmup → lora. It owns every decision made
// at a phase boundary: when the convergence test runs, which ranks the adapters get,
// attaching and merging adapters, freezing the base, ReLoRA's periodic merge-and-reset,
// and the LR multiplier of each phase. The trainer calls afterStep and afterEpoch; the
// state round-trips through checkpoints (toJSON / restore), so a resumed run continues in
// the same phase with the same window history.
import type { AdamW } from '../engine/optim.ts';
import type { Tensor } from '../engine/tensor.ts';
import { Rng } from '../model/init.ts';
import type { Linear } from '../model/linear.ts';
import type { TargetModule, ViT } from '../model/vit.ts';
import type { Config } from './config.ts';
import { ConvergenceHistory, isEvaluationPoint, layerDeltas, partialConvergenceTest, type ConvergenceResult } from './convergence.ts';
import type { LayerNorms } from './norms.ts';
import { targetNorms } from './norms.ts';
import { assignRanks, type RankMap } from './ranks.ts';

export type Phase = 'full' | 'relora' | 'warmup' | 'lora';

export interface Transition {
  from: Phase;
  to: Phase;
  reason: string;
}

/** Trainer hooks the controller needs for step windows (the window loss readback). */
export interface StepHost {
  readWindowLoss(): Promise<number>;
  epoch: number;
}

export interface PhaseStateJson {
  phase: Phase;
  history: unknown;
  rankMap: RankMap | null;
  /** Epoch (1-based) at whose end the convergence test passed; null before. */
  switchEpoch: number | null;
  /** Epoch (1-based) at whose end the base was frozen; null before. */
  freezeEpoch: number | null;
  warmupEpochsLeft: number;
  reloraStartStep: number | null;
  lastRestartStep: number | null;
  reloraResets: number;
  rngState: number;
  lastTest: Pick<ConvergenceResult, 'passed' | 'reason' | 'deltas'> | null;
  windowFirstStep: number;
}

/**
 * Freezes or unfreezes a parameter. A frozen parameter gives its gradient buffer and AdamW
 * state back to the pool, and since requiresGrad is false, no backward rule computes its
 * gradient and the optimizer skips it. Unfreezing allocates both again on the next step.
 */
export function setTrainable(p: Tensor, on: boolean, optimizer: AdamW): void {
  if (p.requiresGrad === on) return;
  p.requiresGrad = on;
  if (!on) {
    p.grad?.release();
    p.grad = null;
    p.gradHasValue = false;
    optimizer.release(p);
  }
}

export class PhaseController {
  phase: Phase = 'full';
  history: ConvergenceHistory;
  rankMap: RankMap | null = null;
  switchEpoch: number | null = null;
  freezeEpoch: number | null = null;
  warmupEpochsLeft = 0;
  reloraStartStep: number | null = null;
  lastRestartStep: number | null = null;
  reloraResets = 0;
  lastTest: PhaseStateJson['lastTest'] = null;
  /** First optimizer step (1-based) of the current step window. */
  private windowFirstStep = 1;
  private rng: Rng;
  readonly targets: TargetModule[];

  constructor(
    private cfg: Config,
    private model: ViT,
    private optimizer: AdamW,
    private stepsPerEpoch: number,
  ) {
    this.targets = [...cfg.prelora.targets];
    this.history = new ConvergenceHistory(cfg.prelora.windowUnit);
    this.rng = new Rng(cfg.train.seed ^ 0x5eed1a);
  }

  /** Multiplies the scheduled LR: a ramp after each ReLoRA restart, loraLrScale once frozen. */
  lrMultiplier(globalStep: number): number {
    const rc = this.cfg.prelora.relora;
    if (this.phase === 'relora' && this.lastRestartStep !== null && rc.restartWarmup > 0) {
      return Math.min(1, (globalStep - this.lastRestartStep) / rc.restartWarmup);
    }
    if (this.phase === 'lora') return this.cfg.prelora.loraLrScale;
    return 1;
  }

  /** Adapter rank per layer of each target module, while adapters are attached. */
  currentRanks(): Record<string, number[]> | null {
    if (this.phase === 'full') return null;
    const out: Record<string, number[]> = {};
    for (const m of this.targets) out[m] = this.model.targets(m).map((l) => l.lora?.rank ?? 0);
    return out;
  }

  // ---- hooks ----------------------------------------------------------------------------

  /** After every optimizer step: ReLoRA resets, and the step-window convergence test. */
  async afterStep(globalStep: number, host: StepHost): Promise<Transition | null> {
    const p = this.cfg.prelora;
    if (!p.enabled) return null;

    if (this.phase === 'relora' && this.reloraStartStep !== null && (globalStep - this.reloraStartStep) % p.relora.resetEvery === 0) {
      await this.reloraReset(globalStep);
    }

    if (p.windowUnit === 'steps' && (this.phase === 'full' || this.phase === 'relora') && globalStep % p.windowSize === 0) {
      const loss = await host.readWindowLoss();
      const norms = await targetNorms(this.model, this.targets);
      this.history.record({ epoch: host.epoch + 1, steps: [this.windowFirstStep, globalStep], loss, norms });
      this.windowFirstStep = globalStep + 1;
      if (isEvaluationPoint(this.history, p.windowSize)) return this.runTest(host.epoch + 1);
    }
    return null;
  }

  /**
   * At every epoch end, with the epoch's mean loss and the target norms just measured.
   * Returns the transition it made, if any.
   */
  async afterEpoch(epoch: number, globalStep: number, loss: number, norms: LayerNorms): Promise<Transition | null> {
    const p = this.cfg.prelora;
    if (!p.enabled) return null;
    const epochNo = epoch + 1;

    switch (this.phase) {
      case 'full': {
        if (p.windowUnit === 'epochs') this.history.record({ epoch: epochNo, loss, norms });
        if (p.relora.enabled && epochNo >= p.relora.fullEpochs) {
          const t = this.maybeSwitch(epochNo);
          if (t) return t;
          return this.beginRelora(globalStep, epochNo);
        }
        return this.maybeSwitch(epochNo);
      }
      case 'relora': {
        if (p.windowUnit === 'epochs') this.history.record({ epoch: epochNo, loss, norms });
        return this.maybeSwitch(epochNo);
      }
      case 'warmup': {
        this.warmupEpochsLeft--;
        if (this.warmupEpochsLeft <= 0) return this.freezeBase(epochNo, `${p.warmupEpochs} warmup epoch(s) of joint training done`);
        return null;
      }
      case 'lora':
        return null;
    }
  }

  // ---- transitions ----------------------------------------------------------------------

  private maybeSwitch(epochNo: number): Transition | null {
    if (this.cfg.prelora.windowUnit !== 'epochs') return null;
    if (epochNo < this.cfg.prelora.minFullEpochs) return null;
    return this.runTest(epochNo);
  }

  private runTest(epochNo: number): Transition | null {
    const p = this.cfg.prelora;
    const result = partialConvergenceTest(this.history, { k: p.windows, m: p.windowSize, tau: p.tau, zeta: p.zeta, modules: this.targets });
    this.lastTest = { passed: result.passed, reason: result.reason, deltas: result.deltas };
    if (!result.passed) return null;
    return this.switchToLora(epochNo, result);
  }

  /** Attaches per-layer-rank adapters (Algorithm 2) and starts the joint warmup. */
  private switchToLora(epochNo: number, test: ConvergenceResult): Transition {
    const p = this.cfg.prelora;
    const from = this.phase;
    const changes = layerDeltas(this.history, { m: p.windowSize, modules: this.targets });
    const ranks = assignRanks(changes, { rMin: p.rMin, rMax: p.rMax });

    // Leaving ReLoRA: fold the uniform-rank adapters into the base first.
    if (from === 'relora') {
      for (const lin of this.targetLinears()) {
        lin.mergeLora();
        this.optimizer.removeParams(lin.detachLora());
      }
    }
    // Base trains jointly with the adapters during warmup.
    for (const p of this.model.parameters()) this.setTrainable(p, true);

    this.attachAdapters(ranks);
    this.rankMap = ranks;
    this.switchEpoch = epochNo;
    this.phase = 'warmup';
    this.warmupEpochsLeft = p.warmupEpochs;
    const summary = this.targets.map((m) => `${m}:[${ranks[m]!.join(',')}]`).join(' ');
    const reason = `convergence test ${test.reason}; ranks ${summary}`;
    if (p.warmupEpochs === 0) {
      const t = this.freezeBase(epochNo, 'no warmup epochs');
      return { from, to: 'lora', reason: `${reason}; ${t.reason}` };
    }
    return { from, to: 'warmup', reason };
  }

  /**
   * Freezes the base: every parameter that is not an adapter stops training, except the
   * classifier and LayerNorms when the config keeps them. Their gradients and AdamW state
   * go back to the pool, and the backward pass stops computing their gradients.
   */
  private freezeBase(epochNo: number, cause: string): Transition {
    const p = this.cfg.prelora;
    const adapters = new Set(this.targetLinears().flatMap((l) => l.adapterParameters()));
    for (const param of this.model.parameters()) {
      if (adapters.has(param)) continue;
      const name = param.name!;
      const keep = (p.keepClassifier && name.startsWith('classifier.')) || (p.keepLayerNorms && /layernorm/.test(name));
      this.setTrainable(param, keep);
    }
    const from = this.phase;
    this.phase = 'lora';
    this.freezeEpoch = epochNo;
    return { from, to: 'lora', reason: `${cause}; base frozen, ${this.trainableCount()} trainable parameters` };
  }

  /** ReLoRA: uniform-rank adapters on the target modules with their base weights frozen. */
  private beginRelora(globalStep: number, epochNo: number): Transition {
    const rank = this.cfg.prelora.relora.rank;
    const ranks: RankMap = {};
    for (const m of this.targets) ranks[m] = this.model.targets(m).map(() => rank);
    this.attachAdapters(ranks);
    for (const lin of this.targetLinears()) for (const p of lin.baseParameters()) this.setTrainable(p, false);
    this.phase = 'relora';
    this.reloraStartStep = globalStep;
    this.lastRestartStep = null;
    return { from: 'full', to: 'relora', reason: `${this.cfg.prelora.relora.fullEpochs} full epoch(s) done (epoch ${epochNo}); rank-${rank} adapters on frozen target weights` };
  }

  /** Merges s·B·A into W, re-initialises A and B, resets or prunes their AdamW state, restarts the LR. */
  private async reloraReset(globalStep: number): Promise<void> {
    const rc = this.cfg.prelora.relora;
    for (const lin of this.targetLinears()) {
      lin.mergeLora();
      lin.reinitLora(this.rng.fork(this.reloraResets * 4099 + lin.inFeatures));
      for (const p of lin.adapterParameters()) {
        if (rc.stateReset === 'reset') this.optimizer.resetState(p);
        else if (this.optimizer.hasState(p)) await this.optimizer.pruneState(p, rc.pruneFraction);
      }
    }
    this.reloraResets++;
    this.lastRestartStep = globalStep;
  }

  private attachAdapters(ranks: RankMap): void {
    const p = this.cfg.prelora;
    const added: Tensor[] = [];
    for (const m of this.targets) {
      const layers = this.model.targets(m);
      const rs = ranks[m]!;
      if (rs.length !== layers.length) throw new Error(`internal: rank map for ${m} has ${rs.length} layers, the model ${layers.length}`);
      layers.forEach((lin, l) => {
        const adapter = lin.attachLora({ rank: rs[l], alpha: p.loraAlpha, rsLora: p.rsLora }, this.rng.fork(l * 16 + this.targets.indexOf(m)));
        added.push(adapter.a, adapter.b);
      });
    }
    this.optimizer.addParams({ weightDecay: this.cfg.train.weightDecay }, added);
  }

  private setTrainable(p: Tensor, on: boolean): void {
    setTrainable(p, on, this.optimizer);
  }

  private targetLinears(): Linear[] {
    return this.targets.flatMap((m) => this.model.targets(m));
  }

  private trainableCount(): number {
    return this.model.parameters().filter((p) => p.requiresGrad).reduce((s, p) => s + p.size, 0);
  }

  // ---- checkpoints ----------------------------------------------------------------------

  toJSON(): PhaseStateJson {
    return {
      phase: this.phase, history: this.history.toJSON(), rankMap: this.rankMap,
      switchEpoch: this.switchEpoch, freezeEpoch: this.freezeEpoch, warmupEpochsLeft: this.warmupEpochsLeft,
      reloraStartStep: this.reloraStartStep, lastRestartStep: this.lastRestartStep, reloraResets: this.reloraResets,
      rngState: this.rng.state, lastTest: this.lastTest, windowFirstStep: this.windowFirstStep,
    };
  }

  /**
   * Rebuilds the model's structure for a saved phase (adapters of the saved ranks, frozen
   * flags) before the checkpoint's tensors are loaded into it.
   */
  restore(s: PhaseStateJson): void {
    this.history = ConvergenceHistory.fromJSON(s.history);
    this.switchEpoch = s.switchEpoch;
    this.freezeEpoch = s.freezeEpoch;
    this.warmupEpochsLeft = s.warmupEpochsLeft;
    this.reloraStartStep = s.reloraStartStep;
    this.lastRestartStep = s.lastRestartStep;
    this.reloraResets = s.reloraResets;
    this.lastTest = s.lastTest;
    this.windowFirstStep = s.windowFirstStep;
    this.rankMap = s.rankMap;

    if (s.phase === 'relora') {
      this.phase = 'full';
      this.beginRelora(s.reloraStartStep ?? 0, 0);
      this.lastRestartStep = s.lastRestartStep;
    } else if (s.phase === 'warmup' || s.phase === 'lora') {
      this.attachAdapters(s.rankMap!);
      this.phase = 'warmup';
      if (s.phase === 'lora') this.freezeBase(s.freezeEpoch ?? 0, 'restored');
    }
    this.phase = s.phase;
    this.rng.state = s.rngState;
  }
}
