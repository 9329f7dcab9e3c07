// DataLoader: seeded per-epoch shuffling, batching, augmentation and one batch of prefetch.
// Every batch is a pure function of (seed, epoch, step): the sample order of epoch e comes
// from hashSeed(seed, e) and the augmentation of step s from hashSeed(seed, e, s, salt), so
// a run resumed at (epoch, step) gets exactly the batches the original run would have.
// Copying batches to the device is left to the trainer.
import type { Dataset } from './dataset.ts';
import { Random, hashSeed, shuffleInPlace } from './random.ts';
import { assembleBatch, type Batch, type BatchTransform } from './transform.ts';

export interface DataLoaderOptions {
  batchSize: number;
  /** Reshuffle the samples every epoch (default true). False keeps dataset order. */
  shuffle?: boolean;
  /** Seed of the shuffle and the augmentation (default 0). */
  seed?: number;
  /** Drop the last batch of an epoch when it is smaller than batchSize (default false). */
  dropLast?: boolean;
  /** Per-channel mean in [0, 1] units, subtracted after scaling pixels to [0, 1] (default 0). */
  mean?: readonly number[];
  /** Per-channel standard deviation in [0, 1] units that scaled pixels are divided by (default 1). */
  std?: readonly number[];
  /** Zero padding in pixels on each side for a random crop back to [H, W] (default 0: off). */
  randomCrop?: number;
  /** Mirror images left-right with probability 1/2 (default false). */
  horizontalFlip?: boolean;
}

export interface LoaderBatch extends Batch {
  epoch: number;
  /** Step within the epoch, from 0. */
  step: number;
  /** Dataset index of every sample in the batch, int32 [B]. */
  indices: Int32Array;
}

// Separates the augmentation stream from the shuffle stream of the same (seed, epoch).
const AUGMENT_SALT = 0x61756731;

export class DataLoader {
  readonly dataset: Dataset;
  readonly batchSize: number;
  readonly shuffle: boolean;
  readonly seed: number;
  readonly dropLast: boolean;
  readonly stepsPerEpoch: number;
  private readonly transform: BatchTransform;
  private cachedEpoch = -1;
  private cachedOrder: Int32Array = new Int32Array(0);

  constructor(dataset: Dataset, options: DataLoaderOptions) {
    const C = dataset.imageShape[0];
    const { batchSize } = options;
    if (!Number.isInteger(batchSize) || batchSize <= 0) {
      throw new RangeError(`DataLoader: batchSize must be a positive integer, got ${batchSize}`);
    }
    const mean = options.mean ?? new Array<number>(C).fill(0);
    const std = options.std ?? new Array<number>(C).fill(1);
    if (mean.length !== C || std.length !== C) {
      throw new RangeError(`DataLoader: mean and std need ${C} values (one per channel) for ${dataset.name}, got ${mean.length} and ${std.length}`);
    }
    if (!std.every((s) => s > 0)) {
      throw new RangeError(`DataLoader: every std value must be positive, got [${std.join(', ')}]`);
    }
    const cropPadding = options.randomCrop ?? 0;
    if (!Number.isInteger(cropPadding) || cropPadding < 0) {
      throw new RangeError(`DataLoader: randomCrop is the padding in pixels and must be a non-negative integer, got ${cropPadding}`);
    }

    this.dataset = dataset;
    this.batchSize = batchSize;
    this.shuffle = options.shuffle ?? true;
    this.seed = options.seed ?? 0;
    this.dropLast = options.dropLast ?? false;
    this.stepsPerEpoch = this.dropLast ? Math.floor(dataset.length / batchSize) : Math.ceil(dataset.length / batchSize);
    if (this.stepsPerEpoch === 0) {
      const fix = this.dropLast ? 'use a smaller batchSize or turn dropLast off' : 'the dataset is empty';
      throw new RangeError(`DataLoader: ${dataset.name} has ${dataset.length} samples, which make no batch of ${batchSize}; ${fix}`);
    }
    this.transform = { mean, std, cropPadding, horizontalFlip: options.horizontalFlip ?? false };
  }

  /** Returns the dataset indices of epoch `epoch` in the order the batches visit them. */
  order(epoch: number): Int32Array {
    if (epoch !== this.cachedEpoch) {
      const order = Int32Array.from({ length: this.dataset.length }, (_, i) => i);
      if (this.shuffle) shuffleInPlace(order, new Random(hashSeed(this.seed, epoch)));
      this.cachedOrder = order;
      this.cachedEpoch = epoch;
    }
    return this.cachedOrder;
  }

  /** Builds batch `step` of epoch `epoch`. The same arguments always give the same batch. */
  batch(epoch: number, step: number): LoaderBatch {
    this.checkPosition(epoch, step, this.stepsPerEpoch - 1);
    const start = step * this.batchSize;
    const end = Math.min(start + this.batchSize, this.dataset.length);
    const indices = this.order(epoch).slice(start, end);

    const augment = this.transform.cropPadding > 0 || this.transform.horizontalFlip;
    const random = augment ? new Random(hashSeed(this.seed, epoch, step, AUGMENT_SALT)) : null;
    const { images, labels } = assembleBatch(this.dataset, indices, this.transform, random);
    return { images, labels, indices, epoch, step };
  }

  /** Splits a global step count (steps since the start of epoch 0) into epoch and step. */
  locate(globalStep: number): { epoch: number; step: number } {
    if (!Number.isInteger(globalStep) || globalStep < 0) {
      throw new RangeError(`DataLoader: global step must be a non-negative integer, got ${globalStep}`);
    }
    return { epoch: Math.floor(globalStep / this.stepsPerEpoch), step: globalStep % this.stepsPerEpoch };
  }

  /**
   * Yields the batches of epoch `epoch` from `startStep` on. Right after handing out batch i
   * the loader schedules batch i+1 with setImmediate, so it is assembled while the caller
   * awaits device work and is usually ready at the next iteration. A caller that never
   * yields to the event loop still gets every batch, only without the overlap.
   */
  async *epoch(epoch: number, startStep = 0): AsyncGenerator<LoaderBatch, void, undefined> {
    this.checkPosition(epoch, startStep, this.stepsPerEpoch);
    if (startStep === this.stepsPerEpoch) return;

    let next = this.batch(epoch, startStep);
    for (let step = startStep; step < this.stepsPerEpoch; step++) {
      const current = next;
      const prefetch = step + 1 < this.stepsPerEpoch ? this.prepareSoon(epoch, step + 1) : null;
      // A caller that stops iterating early never awaits the prefetch, and the catch keeps its
      // failure from surfacing as an unhandled rejection. The await below still throws.
      prefetch?.catch(() => undefined);
      yield current;
      if (prefetch === null) return;
      next = await prefetch;
    }
  }

  /** Yields the batches like epoch() but without prefetch: each batch is built when requested. */
  *epochSync(epoch: number, startStep = 0): Generator<LoaderBatch, void, undefined> {
    this.checkPosition(epoch, startStep, this.stepsPerEpoch);
    for (let step = startStep; step < this.stepsPerEpoch; step++) yield this.batch(epoch, step);
  }

  private prepareSoon(epoch: number, step: number): Promise<LoaderBatch> {
    return new Promise((resolve, reject) => {
      setImmediate(() => {
        try {
          resolve(this.batch(epoch, step));
        } catch (error) {
          reject(error);
        }
      });
    });
  }

  private checkPosition(epoch: number, step: number, maxStep: number): void {
    if (!Number.isInteger(epoch) || epoch < 0) {
      throw new RangeError(`DataLoader: epoch must be a non-negative integer, got ${epoch}`);
    }
    if (!Number.isInteger(step) || step < 0 || step > maxStep) {
      throw new RangeError(`DataLoader: step ${step} is out of range [0, ${maxStep}] for ${this.stepsPerEpoch} steps per epoch`);
    }
  }
}
