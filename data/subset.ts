// Smaller views of a dataset for tests and quick runs.
import { selectSamples, type ArrayDataset, type Dataset } from './dataset.ts';
import { Random, hashSeed, shuffleInPlace } from './random.ts';

/**
 * Copies n samples of `dataset` into a new dataset: the first n, or with `seed` a seeded
 * random choice of n distinct samples kept in their original order. n larger than the
 * dataset is an error rather than a silent cap, so a quick run never trains on less than
 * it asked for without saying so.
 */
export function subset(dataset: Dataset, n: number, options: { seed?: number } = {}): ArrayDataset {
  if (!Number.isInteger(n) || n < 0 || n > dataset.length) {
    throw new RangeError(`subset of ${dataset.name}: n = ${n} must be an integer in [0, ${dataset.length}]`);
  }

  let indices: Int32Array;
  if (options.seed === undefined) {
    indices = Int32Array.from({ length: n }, (_, i) => i);
  } else {
    const all = Int32Array.from({ length: dataset.length }, (_, i) => i);
    shuffleInPlace(all, new Random(hashSeed(options.seed, 0x5b5e7)));
    indices = all.subarray(0, n).sort();
  }
  return selectSamples(dataset, indices, `${dataset.name}[${n}]`);
}
