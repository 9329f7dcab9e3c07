// Datasets in memory, subsets, channel statistics and the DataLoader: order, resume,
// normalisation, augmentation and prefetch. File formats are in data-formats.test.ts.
import { describe, expect, it, vi } from 'vitest';
import { ArrayDataset, DataError, channelStats, type ImageShape } from '../data/dataset.ts';
import { DataLoader, type LoaderBatch } from '../data/loader.ts';
import { Random, hashSeed } from '../data/random.ts';
import { subset } from '../data/subset.ts';

/** N images of `shape` with pixel (n, p) = (31n + 7p) mod 256 and label n mod numClasses. */
function makeDataset(N: number, shape: ImageShape = [1, 5, 3], numClasses = 4): ArrayDataset {
  const size = shape[0] * shape[1] * shape[2];
  const images = Uint8Array.from({ length: N * size }, (_, i) => (31 * Math.floor(i / size) + 7 * (i % size)) % 256);
  const labels = Int32Array.from({ length: N }, (_, n) => n % numClasses);
  return new ArrayDataset({ name: 'synthetic', numClasses, imageShape: shape, images, labels });
}

async function collect(batches: AsyncIterable<LoaderBatch>): Promise<LoaderBatch[]> {
  const out: LoaderBatch[] = [];
  for await (const batch of batches) out.push(batch);
  return out;
}

function sorted(values: Int32Array): number[] {
  return Array.from(values).sort((a, b) => a - b);
}

describe('ArrayDataset', () => {
  it('get returns image view and label', () => {
    const ds = makeDataset(3, [2, 2, 2]);
    const { image, label } = ds.get(2);
    expect(Array.from(image)).toEqual([62, 69, 76, 83, 90, 97, 104, 111]);
    expect(label).toBe(2);
    expect(image.buffer).toBe(ds.images.buffer);
  });

  it('rejects count mismatch', () => {
    const create = () =>
      new ArrayDataset({ name: 'x', numClasses: 2, imageShape: [1, 2, 2], images: new Uint8Array(12), labels: new Int32Array(2), source: '/data/x.bin' });
    expect(create).toThrow(DataError);
    expect(create).toThrow(/^\/data\/x\.bin: count mismatch, 3 images .* for 2 labels/);
  });

  it('rejects label out of range', () => {
    const create = () =>
      new ArrayDataset({ name: 'x', numClasses: 3, imageShape: [1, 1, 1], images: new Uint8Array(2), labels: Int32Array.from([0, 3]), source: 'labels.bin' });
    expect(create).toThrow(/^labels\.bin: label 3 of sample 1 is out of range \[0, 3\)/);
  });

  it('rejects wrong class-name count', () => {
    const create = () =>
      new ArrayDataset({ name: 'x', numClasses: 3, imageShape: [1, 1, 1], images: new Uint8Array(0), labels: new Int32Array(0), classNames: ['a', 'b'] });
    expect(create).toThrow(DataError);
  });

  it('get rejects index out of range', () => {
    expect(() => makeDataset(3).get(3)).toThrow(RangeError);
  });
});

describe('subset', () => {
  it('first n keeps order', () => {
    const ds = makeDataset(10);
    const small = subset(ds, 4);
    expect(small.length).toBe(4);
    expect(Array.from(small.labels)).toEqual([0, 1, 2, 3]);
    expect(Array.from(small.images)).toEqual(Array.from(ds.images.subarray(0, 4 * 15)));
  });

  it('seeded n is reproducible and distinct', () => {
    const ds = makeDataset(50, [1, 1, 1], 50);
    const a = Array.from(subset(ds, 20, { seed: 7 }).labels);
    const b = Array.from(subset(ds, 20, { seed: 7 }).labels);
    const c = Array.from(subset(ds, 20, { seed: 8 }).labels);
    expect(a).toEqual(b);
    expect(a).not.toEqual(c);
    expect(new Set(a).size).toBe(20);
    expect(a).toEqual([...a].sort((x, y) => x - y));
    expect(a).not.toEqual(Array.from({ length: 20 }, (_, i) => i));
  });

  it('rejects n beyond length', () => {
    expect(() => subset(makeDataset(5), 6)).toThrow(RangeError);
  });
});

describe('channelStats', () => {
  it('matches per-channel mean and std', () => {
    // Channel 0 alternates 0 and 255 over the images, channel 1 is constant 51.
    const images = Uint8Array.from([0, 0, 51, 51, 255, 255, 51, 51]);
    const ds = new ArrayDataset({ name: 'x', numClasses: 1, imageShape: [2, 1, 2], images, labels: new Int32Array(2) });
    const { mean, std } = channelStats(ds);
    expect(mean[0]).toBeCloseTo(0.5, 12);
    expect(std[0]).toBeCloseTo(0.5, 12);
    expect(mean[1]).toBeCloseTo(0.2, 12);
    expect(std[1]).toBeCloseTo(0, 6);
  });
});

describe('DataLoader order', () => {
  it('unshuffled batches follow dataset order', () => {
    const loader = new DataLoader(makeDataset(10), { batchSize: 4, shuffle: false });
    const batches = [...loader.epochSync(0)];
    expect(loader.stepsPerEpoch).toBe(3);
    expect(batches.map((b) => Array.from(b.indices))).toEqual([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]);
    expect(Array.from(batches[2].labels)).toEqual([0, 1]);
    expect(batches[2].images.length).toBe(2 * 15);
  });

  it('dropLast drops partial batch', () => {
    const loader = new DataLoader(makeDataset(10), { batchSize: 4, dropLast: true });
    expect(loader.stepsPerEpoch).toBe(2);
    expect([...loader.epochSync(0)].every((b) => b.labels.length === 4)).toBe(true);
  });

  it('rejects dataset smaller than a batch with dropLast', () => {
    expect(() => new DataLoader(makeDataset(3), { batchSize: 4, dropLast: true })).toThrow(/no batch of 4/);
  });

  it('shuffle is a permutation per epoch', () => {
    const loader = new DataLoader(makeDataset(33), { batchSize: 8, seed: 1 });
    for (const epoch of [0, 1, 7]) {
      expect(sorted(loader.order(epoch))).toEqual(Array.from({ length: 33 }, (_, i) => i));
    }
    expect(Array.from(loader.order(0))).not.toEqual(Array.from(loader.order(1)));
  });

  it('shuffle depends only on seed and epoch', () => {
    const a = new DataLoader(makeDataset(65), { batchSize: 8, seed: 42 });
    const b = new DataLoader(makeDataset(65), { batchSize: 16, seed: 42 });
    const c = new DataLoader(makeDataset(65), { batchSize: 8, seed: 43 });
    const epoch3 = Array.from(a.order(3));
    a.order(5);
    expect(Array.from(a.order(3))).toEqual(epoch3);
    expect(Array.from(b.order(3))).toEqual(epoch3);
    expect(Array.from(c.order(3))).not.toEqual(epoch3);
  });

  it('batches concatenate to the epoch order', () => {
    const loader = new DataLoader(makeDataset(33), { batchSize: 8, seed: 3 });
    const indices = [...loader.epochSync(2)].flatMap((b) => Array.from(b.indices));
    expect(indices).toEqual(Array.from(loader.order(2)));
  });

  it('locate splits global steps', () => {
    const loader = new DataLoader(makeDataset(10), { batchSize: 4 });
    expect(loader.locate(0)).toEqual({ epoch: 0, step: 0 });
    expect(loader.locate(2)).toEqual({ epoch: 0, step: 2 });
    expect(loader.locate(7)).toEqual({ epoch: 2, step: 1 });
  });
});

describe('DataLoader resume', () => {
  const options = { batchSize: 5, seed: 9, randomCrop: 2, horizontalFlip: true, mean: [0.3], std: [0.2] };

  it('start at step reproduces the epoch tail', async () => {
    const full = await collect(new DataLoader(makeDataset(23), options).epoch(4));
    // A fresh loader, as after a restart from a checkpoint taken at step 2 of epoch 4.
    const resumed = await collect(new DataLoader(makeDataset(23), options).epoch(4, 2));
    expect(resumed.length).toBe(full.length - 2);
    for (const [k, batch] of resumed.entries()) {
      expect(batch.step).toBe(k + 2);
      expect(Array.from(batch.indices)).toEqual(Array.from(full[k + 2].indices));
      expect(batch.images).toEqual(full[k + 2].images);
    }
  });

  it('start at last step plus one yields nothing', async () => {
    const loader = new DataLoader(makeDataset(23), options);
    expect(await collect(loader.epoch(0, loader.stepsPerEpoch))).toEqual([]);
  });

  it('rejects start step beyond the epoch', () => {
    const loader = new DataLoader(makeDataset(23), options);
    expect(() => loader.epochSync(0, loader.stepsPerEpoch + 1).next()).toThrow(RangeError);
  });

  it('async and sync epochs agree', async () => {
    const loader = new DataLoader(makeDataset(23), options);
    const asyncBatches = await collect(loader.epoch(1));
    const syncBatches = [...loader.epochSync(1)];
    expect(asyncBatches.length).toBe(syncBatches.length);
    for (const [k, batch] of asyncBatches.entries()) expect(batch.images).toEqual(syncBatches[k].images);
  });
});

describe('DataLoader transform', () => {
  it('normalises per channel', () => {
    const ds = makeDataset(7, [2, 3, 3]);
    const mean = [0.5, 0.25];
    const std = [0.5, 2];
    const batch = new DataLoader(ds, { batchSize: 7, shuffle: false, mean, std }).batch(0, 0);
    expect(batch.images.length).toBe(7 * 18);
    for (let n = 0; n < 7; n++) {
      for (let c = 0; c < 2; c++) {
        for (let p = 0; p < 9; p++) {
          const pixel = ds.images[n * 18 + c * 9 + p];
          // f32 rounding of (pixel / 255 - mean) / std, values of magnitude at most 2.
          expect(batch.images[n * 18 + c * 9 + p]).toBeCloseTo((pixel / 255 - mean[c]) / std[c], 5);
        }
      }
    }
  });

  it('default normalisation scales to [0, 1]', () => {
    const ds = makeDataset(3);
    const batch = new DataLoader(ds, { batchSize: 3, shuffle: false }).batch(0, 0);
    for (let i = 0; i < ds.images.length; i++) expect(batch.images[i]).toBeCloseTo(ds.images[i] / 255, 6);
  });

  it('crop and flip match a padded reference', () => {
    const shape: ImageShape = [3, 7, 5];
    const ds = makeDataset(9, shape);
    const options = { batchSize: 4, seed: 5, randomCrop: 3, horizontalFlip: true, mean: [0.1, 0.2, 0.3], std: [0.4, 0.5, 0.6] };
    const loader = new DataLoader(ds, options);
    const step = 1;
    const batch = loader.batch(2, step);

    // The reference pads explicitly, crops, then mirrors, drawing random numbers in the
    // loader's documented order: per sample the row offset, the column offset, the flip.
    const [C, H, W] = shape;
    const p = options.randomCrop;
    const random = new Random(hashSeed(options.seed, 2, step, 0x61756731));
    for (let b = 0; b < batch.labels.length; b++) {
      const { image, label } = ds.get(batch.indices[b]);
      expect(batch.labels[b]).toBe(label);
      const dy = random.nextInt(2 * p + 1);
      const dx = random.nextInt(2 * p + 1);
      const flip = random.next() < 0.5;
      for (let c = 0; c < C; c++) {
        const padded = new Float64Array((H + 2 * p) * (W + 2 * p));
        for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) padded[(y + p) * (W + 2 * p) + x + p] = image[c * H * W + y * W + x];
        for (let y = 0; y < H; y++) {
          for (let x = 0; x < W; x++) {
            const cx = flip ? W - 1 - x : x;
            const pixel = padded[(y + dy) * (W + 2 * p) + cx + dx];
            const expected = (pixel / 255 - options.mean[c]) / options.std[c];
            // f32 rounding of values of magnitude below 5.
            expect(batch.images[((b * C + c) * H + y) * W + x]).toBeCloseTo(expected, 5);
          }
        }
      }
    }
  });

  it('flip alone mirrors some rows', () => {
    const ds = makeDataset(64, [1, 2, 3], 1);
    const batch = new DataLoader(ds, { batchSize: 64, shuffle: false, horizontalFlip: true, seed: 1 }).batch(0, 0);
    let flipped = 0;
    for (let n = 0; n < 64; n++) {
      const row = Array.from(batch.images.subarray(n * 6, n * 6 + 3)).map((v) => Math.round(v * 255));
      const source = Array.from(ds.get(n).image.subarray(0, 3));
      if (row[0] === source[2] && row[2] === source[0] && source[0] !== source[2]) flipped++;
      else expect(row).toEqual(source);
    }
    // 64 fair coin flips: P(fewer than 16 or more than 48 heads) is below 1e-4.
    expect(flipped).toBeGreaterThan(16);
    expect(flipped).toBeLessThan(48);
  });

  it('augmentation is deterministic by seed', () => {
    const ds = makeDataset(33, [3, 7, 7]);
    const make = (seed: number) => new DataLoader(ds, { batchSize: 8, seed, randomCrop: 2, horizontalFlip: true, shuffle: false });
    expect(make(1).batch(0, 1).images).toEqual(make(1).batch(0, 1).images);
    expect(make(1).batch(0, 1).images).not.toEqual(make(2).batch(0, 1).images);
    expect(make(1).batch(0, 1).images).not.toEqual(make(1).batch(1, 1).images);
  });

  it('rejects invalid options', () => {
    const ds = makeDataset(4, [2, 2, 2]);
    const cases = [
      { batchSize: 0 },
      { batchSize: 2.5 },
      { batchSize: 2, mean: [0.5] },
      { batchSize: 2, std: [1, 0] },
      { batchSize: 2, randomCrop: -1 },
      { batchSize: 2, randomCrop: 1.5 },
    ];
    for (const options of cases) expect(() => new DataLoader(ds, options), JSON.stringify(options)).toThrow(RangeError);
  });
});

describe('DataLoader prefetch', () => {
  it('prepares the next batch during an await', async () => {
    const loader = new DataLoader(makeDataset(20), { batchSize: 4 });
    const build = vi.spyOn(loader, 'batch');
    const iterator = loader.epoch(0);

    const first = await iterator.next();
    expect(first.value?.step).toBe(0);
    expect(build).toHaveBeenCalledTimes(1);

    // Stands for the trainer awaiting device work: the event loop runs the prefetch.
    await new Promise((resolve) => setImmediate(resolve));
    expect(build).toHaveBeenCalledTimes(2);
    expect(build).toHaveBeenLastCalledWith(0, 1);

    const second = await iterator.next();
    expect(second.value?.step).toBe(1);
    expect(build).toHaveBeenCalledTimes(2);
    await iterator.return();
  });
});
