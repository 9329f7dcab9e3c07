// The training loop: epochs of AdamW steps on a ViT, evaluation, metrics, atomic
// checkpoints and exact resume. Phase boundaries (the convergence test, attaching adapters,
// freezing the base, ReLoRA resets) belong to PhaseController, which this file calls at
// step and epoch ends.
import { join } from 'node:path';
import { Tape, noGrad, zeroGrad } from '../engine/autograd.ts';
import { crossEntropy } from '../engine/ops/loss.ts';
import { AdamW } from '../engine/optim.ts';
import { runtime } from '../engine/runtime.ts';
import { warmupCosine, type LrSchedule } from '../engine/schedule.ts';
import { Scope, empty, persistent, type Tensor } from '../engine/tensor.ts';
import { accumulate, fill } from '../kernels/fill.ts';
import { countCorrect } from '../kernels/metrics.ts';
import type { Dataset } from '../data/dataset.ts';
import { DataLoader } from '../data/loader.ts';
import type { ViT } from '../model/vit.ts';
import type { Config } from './config.ts';
import { loadCheckpoint, saveCheckpoint, type TrainerState } from './checkpoint.ts';
import { MetricsLog, type EpochMetrics } from './metrics.ts';
import { moduleMeans, targetNorms } from './norms.ts';
import { PhaseController, type Transition } from './phases.ts';
import type { ProgressReporter } from './progress.ts';

/** Loss became NaN or infinite; the run stops and the last good checkpoint stays. */
export class NumericalError extends Error {
  override name = 'NumericalError';
}

export interface TrainerOptions {
  config: Config;
  model: ViT;
  train: Dataset;
  val: Dataset;
  /** Per-channel normalisation of the images, in [0, 1] pixel units. */
  mean: number[];
  std: number[];
  progress: ProgressReporter;
}

export interface RunSummary {
  epochs: EpochMetrics[];
  stoppedEarly: boolean;
}

export class Trainer {
  readonly cfg: Config;
  readonly model: ViT;
  readonly optimizer: AdamW;
  readonly phases: PhaseController;
  readonly loader: DataLoader;
  readonly valLoader: DataLoader;
  readonly schedule: LrSchedule;
  readonly metrics: MetricsLog;
  readonly checkpointPath: string;

  /** Epoch being trained (0-based) and the step within it. */
  epoch = 0;
  stepInEpoch = 0;
  globalStep = 0;
  /** Metrics of finished epochs (restored on resume, for the report). */
  history: EpochMetrics[] = [];

  private progress: ProgressReporter;
  /** [Σ loss, #correct (u32 bits), 0, 0] of the current epoch, on the device. */
  private stats: Tensor;
  /** Σ loss over the current step window (step windows only). */
  private windowLoss: Tensor;
  private windowSteps = 0;
  /** Phase changes since the last epoch end, reported with that epoch's metrics. */
  private transitions: Transition[] = [];
  private images: Tensor | null = null;
  private labels: Tensor | null = null;

  constructor(private opts: TrainerOptions) {
    const cfg = (this.cfg = opts.config);
    this.model = opts.model;
    this.progress = opts.progress;
    const aug = { mean: opts.mean, std: opts.std };
    if (cfg.train.batchSize > opts.train.length) {
      throw new Error(`invalid train.batchSize ${cfg.train.batchSize}: the training set has only ${opts.train.length} images; use a batch size of at most ${opts.train.length}`);
    }
    // dropLast keeps every step the same shape, so buffers and pipelines are reused.
    this.loader = new DataLoader(opts.train, {
      batchSize: cfg.train.batchSize, shuffle: true, seed: cfg.train.seed, dropLast: true,
      randomCrop: cfg.data.randomCrop ? cfg.data.cropPadding : 0, horizontalFlip: cfg.data.horizontalFlip, ...aug,
    });
    this.valLoader = new DataLoader(opts.val, { batchSize: cfg.train.batchSize, shuffle: false, dropLast: false, ...aug });

    // Biases, LayerNorms, the CLS token and position embeddings get no weight decay.
    const decay: Tensor[] = [];
    const noDecay: Tensor[] = [];
    for (const p of this.model.parameters()) (p.shape.length >= 2 && !p.name!.includes('embeddings.') ? decay : noDecay).push(p);
    this.optimizer = new AdamW(
      [{ params: decay, weightDecay: cfg.train.weightDecay }, { params: noDecay, weightDecay: 0 }],
      { beta1: cfg.train.beta1, beta2: cfg.train.beta2, maxGradNorm: cfg.train.maxGradNorm > 0 ? cfg.train.maxGradNorm : undefined },
    );

    const spe = this.loader.stepsPerEpoch;
    this.schedule = warmupCosine({
      baseLr: cfg.train.lr, minLr: cfg.train.minLr,
      warmupSteps: Math.round(cfg.train.warmupEpochs * spe), totalSteps: cfg.train.epochs * spe,
    });
    this.phases = new PhaseController(cfg, this.model, this.optimizer, spe);
    this.metrics = new MetricsLog(join(cfg.run.dir, 'metrics.jsonl'));
    this.checkpointPath = join(cfg.run.dir, 'checkpoint.safetensors');
    this.stats = persistent(() => empty([4]));
    fill(runtime(), this.stats.buffer, 4, 0);
    this.windowLoss = persistent(() => empty([1]));
    fill(runtime(), this.windowLoss.buffer, 1, 0);
  }

  /** Restores weights, optimizer, phase and position from the run directory's checkpoint. */
  async resume(): Promise<void> {
    const state = await loadCheckpoint(this.checkpointPath, this);
    this.epoch = state.epoch;
    this.stepInEpoch = state.stepInEpoch;
    this.globalStep = state.globalStep;
    this.history = state.metrics;
    this.metrics.keepFinished(this.epoch);
  }

  /** Returns the LR of the next optimizer step, with the phase's multiplier. */
  lr(): number {
    return this.schedule(this.globalStep) * this.phases.lrMultiplier(this.globalStep);
  }

  async run(): Promise<RunSummary> {
    const cfg = this.cfg;
    let stoppedEarly = false;
    // A run that starts from step 0 owns its metrics file; records of an older run go.
    if (this.globalStep === 0) this.metrics.keepFinished(0);
    while (this.epoch < cfg.train.epochs) {
      if (cfg.run.maxSteps > 0 && this.globalStep >= cfg.run.maxSteps) {
        stoppedEarly = true;
        break;
      }
      const m = await this.trainEpoch();
      if (!m) {
        stoppedEarly = true;
        break;
      }
    }
    this.disposeInputs();
    return { epochs: this.history, stoppedEarly };
  }

  /** Trains one epoch (or the rest of one, after a mid-epoch resume); returns null when maxSteps stopped it. */
  private async trainEpoch(): Promise<EpochMetrics | null> {
    const cfg = this.cfg;
    const r = runtime();
    const spe = this.loader.stepsPerEpoch;
    const started = performance.now();
    const firstStep = this.stepInEpoch;
    r.pool.resetPeak();
    if (firstStep === 0) fill(r, this.stats.buffer, 4, 0);
    this.progress.startEpoch(this.epoch, spe, firstStep, this.phases.phase);

    // Losses are read back every few steps, not every step, so the GPU queue stays fed.
    const readEvery = Math.max(1, Math.min(20, Math.ceil(spe / 10)));
    let lossSeen = { sum: 0, steps: 0 };
    for await (const batch of this.loader.epoch(this.epoch, firstStep)) {
      this.trainStep(batch.images, batch.labels);
      this.stepInEpoch++;
      this.globalStep++;
      const stepTransition = await this.phases.afterStep(this.globalStep, this);
      if (stepTransition) this.transitions.push(stepTransition);

      const last = this.stepInEpoch === spe;
      if (this.stepInEpoch % readEvery === 0 || last) {
        const [lossSum] = await this.readStats();
        lossSeen = { sum: lossSum, steps: this.stepInEpoch };
        this.checkFinite(lossSum / this.stepInEpoch, `epoch ${this.epoch + 1}, step ${this.stepInEpoch}`);
      }
      this.progress.step(this.stepInEpoch, lossSeen.steps > 0 ? lossSeen.sum / lossSeen.steps : NaN, batch.labels.length);
      if (cfg.train.checkpointEverySteps > 0 && this.globalStep % cfg.train.checkpointEverySteps === 0 && !last) {
        await saveCheckpoint(this.checkpointPath, this);
      }
      if (cfg.run.maxSteps > 0 && this.globalStep >= cfg.run.maxSteps && !last) {
        this.progress.endEpoch();
        await saveCheckpoint(this.checkpointPath, this);
        return null;
      }
    }

    // Epoch end: statistics, evaluation, weight norms, the phase controller, metrics, checkpoint.
    const [lossSum, correct] = await this.readStats();
    const seconds = (performance.now() - started) / 1000;
    const stepsRun = spe - firstStep;
    const loss = lossSum / spe;
    this.checkFinite(loss, `epoch ${this.epoch + 1}`);
    const { loss: valLoss, top1: valTop1 } = await this.evaluate();
    const targets = this.phases.targets;
    const norms = await targetNorms(this.model, targets);
    const epochTransition = await this.phases.afterEpoch(this.epoch, this.globalStep, loss, norms);
    if (epochTransition) this.transitions.push(epochTransition);
    const transition = mergeTransitions(this.transitions.splice(0));
    this.progress.endEpoch();

    const m: EpochMetrics = {
      epoch: this.epoch + 1,
      step: this.globalStep,
      phase: transition ? transition.from : this.phases.phase,
      loss,
      trainTop1: correct / (spe * cfg.train.batchSize),
      valLoss,
      valTop1,
      lr: this.lr(),
      epochSeconds: seconds,
      imagesPerSecond: (stepsRun * cfg.train.batchSize) / seconds,
      liveBytes: r.pool.liveBytes,
      peakBytes: r.pool.peakBytes,
      optimizerBytes: this.optimizer.stateBytes(),
      trainableParams: this.trainableParams(),
      normMeans: moduleMeans(norms) as Record<string, number>,
      norms: norms as Record<string, number[]>,
      ranks: this.phases.currentRanks() ?? undefined,
      transition: transition ?? undefined,
    };
    this.history.push(m);
    this.metrics.append(m);
    this.progress.epochSummary(m, cfg.train.epochs);
    if (transition) this.progress.note(`${transition.from} → ${transition.to} at epoch ${m.epoch}: ${transition.reason}`);

    this.epoch++;
    this.stepInEpoch = 0;
    await saveCheckpoint(this.checkpointPath, this);
    return m;
  }

  /** Forward, backward and AdamW for one batch; nothing is read back. */
  private trainStep(images: Float32Array, labels: Int32Array): void {
    const r = runtime();
    const B = labels.length;
    const lr = this.lr();
    const { x, y } = this.upload(images, labels);

    zeroGrad(this.optimizer.params());
    const tape = new Tape();
    try {
      const logits = this.model.forward(x);
      const loss = crossEntropy(logits, y, { labelSmoothing: this.cfg.train.labelSmoothing });
      accumulate(r, this.stats.buffer, loss.buffer, 1);
      if (this.cfg.prelora.windowUnit === 'steps') accumulate(r, this.windowLoss.buffer, loss.buffer, 1);
      countCorrect(r, logits.buffer, y.buffer, this.stats.buffer, 1, B, logits.shape[1]);
      tape.backward(loss);
    } finally {
      tape.end();
    }
    this.optimizer.step(lr);
  }

  /** Validation loss (no label smoothing) and top-1 over the whole validation set. */
  async evaluate(): Promise<{ loss: number; top1: number }> {
    const r = runtime();
    // [Σ loss·B, #correct (u32 bits), 0, 0]
    const acc = persistent(() => empty([4]));
    fill(r, acc.buffer, 4, 0);
    let n = 0;
    for await (const batch of this.valLoader.epoch(0, 0)) {
      const B = batch.labels.length;
      const { x, y } = this.upload(batch.images, batch.labels);
      const scope = new Scope();
      noGrad(() => {
        const logits = this.model.forward(x);
        const loss = crossEntropy(logits, y, { labelSmoothing: 0 });
        // The loss is the batch mean; weighting it by B makes the total a sum over images.
        accumulate(r, acc.buffer, loss.buffer, 1, undefined, B);
        countCorrect(r, logits.buffer, y.buffer, acc.buffer, 1, B, logits.shape[1]);
      });
      scope.end();
      n += B;
    }
    const host = await r.read(acc.buffer, 8);
    acc.release();
    return { loss: new Float32Array(host)[0] / Math.max(1, n), top1: new Uint32Array(host)[1] / Math.max(1, n) };
  }

  trainableParams(): number {
    return this.optimizer.params().filter((p) => p.requiresGrad).reduce((s, p) => s + p.size, 0);
  }

  /** Mean loss over the steps since the last call (step windows); resets the sum. */
  async readWindowLoss(): Promise<number> {
    const sum = new Float32Array(await runtime().read(this.windowLoss.buffer, 4))[0];
    fill(runtime(), this.windowLoss.buffer, 1, 0);
    const steps = this.globalStep - this.windowSteps;
    this.windowSteps = this.globalStep;
    return sum / Math.max(1, steps);
  }

  private async readStats(): Promise<[number, number]> {
    const host = await runtime().read(this.stats.buffer, 16);
    return [new Float32Array(host)[0], new Uint32Array(host)[1]];
  }

  private checkFinite(loss: number, where: string): void {
    if (!Number.isFinite(loss)) {
      throw new NumericalError(
        `training loss is ${loss} at ${where}; stopping. The last good checkpoint is kept in ${this.cfg.run.dir}. ` +
          'Try a lower train.lr or keep train.maxGradNorm on.',
      );
    }
  }

  /** Reusable input tensors sized for the batch; uploads the batch into them. */
  private upload(images: Float32Array, labels: Int32Array): { x: Tensor; y: Tensor } {
    const B = labels.length;
    const [C, H, W] = this.opts.train.imageShape;
    if (!this.images || this.images.shape[0] !== B) {
      this.disposeInputs();
      this.images = persistent(() => empty([B, C, H, W]));
      this.labels = persistent(() => empty([B], 'i32'));
    }
    runtime().upload(this.images.buffer, images);
    runtime().upload(this.labels!.buffer, labels);
    return { x: this.images, y: this.labels! };
  }

  private disposeInputs(): void {
    this.images?.release();
    this.labels?.release();
    this.images = this.labels = null;
  }

  /** Everything a checkpoint needs beyond tensors. */
  state(): TrainerState {
    return {
      epoch: this.epoch,
      stepInEpoch: this.stepInEpoch,
      globalStep: this.globalStep,
      phases: this.phases.toJSON(),
      metrics: this.history,
    };
  }
}

/** Several phase changes within one epoch are reported as one, from the first to the last. */
function mergeTransitions(ts: Transition[]): Transition | null {
  if (ts.length === 0) return null;
  return { from: ts[0].from, to: ts[ts.length - 1].to, reason: ts.map((t) => t.reason).join('; then ') };
}
