// The in-memory dataset every loader returns: all images as one uint8 array [N, C, H, W]
// (pixel values 0..255, row-major) and all labels as one int32 array [N]. Conversion to
// float, normalisation and augmentation happen per batch in the DataLoader, so a dataset
// costs one byte per pixel (CIFAR-10 train: 150 MiB instead of 600 MiB as f32).

/** An invalid or unreadable data file. The message is one line that names the file and the fix. */
export class DataError extends Error {
  override name = 'DataError';
}

/** Image dimensions in channels-first order: [C, H, W]. */
export type ImageShape = readonly [number, number, number];

export interface Dataset {
  readonly name: string;
  readonly numClasses: number;
  readonly imageShape: ImageShape;
  readonly length: number;
  readonly classNames?: readonly string[];
  /** Pixels of every image, uint8 [N, C, H, W] row-major. */
  readonly images: Uint8Array;
  /** Class index of every image, int32 [N], each in [0, numClasses). */
  readonly labels: Int32Array;
  /** Returns image i as a view of `images` (uint8 [C, H, W]) and its label. */
  get(i: number): { image: Uint8Array; label: number };
}

export interface ArrayDatasetInit {
  name: string;
  numClasses: number;
  imageShape: ImageShape;
  images: Uint8Array;
  labels: Int32Array;
  classNames?: readonly string[];
  /** File or directory the arrays came from, named in error messages. */
  source?: string;
}

/** A Dataset over arrays already in memory. The constructor validates sizes and labels. */
export class ArrayDataset implements Dataset {
  readonly name: string;
  readonly numClasses: number;
  readonly imageShape: ImageShape;
  readonly length: number;
  readonly classNames?: readonly string[];
  readonly images: Uint8Array;
  readonly labels: Int32Array;

  constructor(init: ArrayDatasetInit) {
    const source = init.source ?? init.name;
    const [C, H, W] = init.imageShape;
    if (![C, H, W].every((d) => Number.isInteger(d) && d > 0)) {
      throw new DataError(`${source}: invalid image shape [${init.imageShape.join(', ')}]; every dimension must be a positive integer`);
    }
    if (init.classNames !== undefined && init.classNames.length !== init.numClasses) {
      throw new DataError(`${source}: ${init.classNames.length} class names for ${init.numClasses} classes; pass one name per class`);
    }

    const imageSize = C * H * W;
    const N = init.labels.length;
    if (init.images.length !== N * imageSize) {
      throw new DataError(
        `${source}: count mismatch, ${init.images.length / imageSize} images of [${C}, ${H}, ${W}] for ${N} labels; ` +
          'the image and label data must hold the same number of samples',
      );
    }
    checkLabels(init.labels, init.numClasses, source);

    this.name = init.name;
    this.numClasses = init.numClasses;
    this.imageShape = [C, H, W];
    this.length = N;
    this.classNames = init.classNames;
    this.images = init.images;
    this.labels = init.labels;
  }

  get(i: number): { image: Uint8Array; label: number } {
    if (!Number.isInteger(i) || i < 0 || i >= this.length) {
      throw new RangeError(`${this.name}: sample index ${i} is out of range [0, ${this.length})`);
    }
    const size = imageSizeOf(this.imageShape);
    return { image: this.images.subarray(i * size, (i + 1) * size), label: this.labels[i] };
  }
}

/** Number of pixels (times channels) in one image. */
export function imageSizeOf(shape: ImageShape): number {
  return shape[0] * shape[1] * shape[2];
}

/** Throws a DataError naming `source` if any label is outside [0, numClasses). */
export function checkLabels(labels: ArrayLike<number>, numClasses: number, source: string): void {
  for (let i = 0; i < labels.length; i++) {
    const label = labels[i];
    if (!(label >= 0 && label < numClasses)) {
      throw new DataError(
        `${source}: label ${label} of sample ${i} is out of range [0, ${numClasses}); check that the file belongs to this dataset`,
      );
    }
  }
}

/** Copies the samples at `indices`, in that order, into a new dataset. */
export function selectSamples(dataset: Dataset, indices: ArrayLike<number>, name = dataset.name): ArrayDataset {
  const size = imageSizeOf(dataset.imageShape);
  const images = new Uint8Array(indices.length * size);
  const labels = new Int32Array(indices.length);
  for (let k = 0; k < indices.length; k++) {
    const { image, label } = dataset.get(indices[k]);
    images.set(image, k * size);
    labels[k] = label;
  }
  return new ArrayDataset({
    name,
    numClasses: dataset.numClasses,
    imageShape: dataset.imageShape,
    images,
    labels,
    classNames: dataset.classNames,
  });
}

/** Per-channel mean and standard deviation of the pixels, in [0, 1] units (pixel / 255). */
export function channelStats(dataset: Dataset): { mean: number[]; std: number[] } {
  if (dataset.length === 0) throw new RangeError(`${dataset.name}: channel statistics of an empty dataset are undefined`);
  const [C, H, W] = dataset.imageShape;
  const plane = H * W;
  const sums = new Float64Array(C);
  const squares = new Float64Array(C);
  const { images } = dataset;

  for (let n = 0; n < dataset.length; n++) {
    for (let c = 0; c < C; c++) {
      const start = (n * C + c) * plane;
      let sum = 0;
      let square = 0;
      for (let p = start; p < start + plane; p++) {
        const v = images[p];
        sum += v;
        square += v * v;
      }
      sums[c] += sum;
      squares[c] += square;
    }
  }

  const count = dataset.length * plane;
  const mean: number[] = [];
  const std: number[] = [];
  for (let c = 0; c < C; c++) {
    const m = sums[c] / count;
    // Population variance, clamped at zero because rounding can push it slightly below zero
    // when every pixel of a channel is equal.
    const variance = Math.max(0, squares[c] / count - m * m);
    mean.push(m / 255);
    std.push(Math.sqrt(variance) / 255);
  }
  return { mean, std };
}
