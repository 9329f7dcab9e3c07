// Batch assembly: gathers uint8 images into one f32 batch [B, C, H, W], with optional random
// crop (zero padding) and horizontal flip, then per-channel normalisation. The order matches
// the usual torchvision pipeline (RandomCrop, RandomHorizontalFlip, ToTensor, Normalize), so
// padded pixels are black before normalisation: they become (0 - mean) / std.
import type { Dataset } from './dataset.ts';
import type { Random } from './random.ts';

export interface BatchTransform {
  /** Per-channel mean in [0, 1] units (pixel / 255), one value per channel. */
  mean: readonly number[];
  /** Per-channel standard deviation in [0, 1] units, one positive value per channel. */
  std: readonly number[];
  /** Pixels of zero padding on each side before a random crop back to [H, W]. 0 turns cropping off. */
  cropPadding: number;
  /** Mirror each image left-right with probability 1/2. */
  horizontalFlip: boolean;
}

export interface Batch {
  /** f32 [B, C, H, W], normalised. */
  images: Float32Array;
  /** int32 [B]. */
  labels: Int32Array;
}

/**
 * Builds the batch of the samples at `indices`. `random` drives the augmentation and is
 * consumed in sample order (crop offsets, then the flip), so the same generator state gives
 * the same batch. It may be null when neither augmentation is on.
 */
export function assembleBatch(dataset: Dataset, indices: ArrayLike<number>, transform: BatchTransform, random: Random | null): Batch {
  const [C, H, W] = dataset.imageShape;
  const B = indices.length;
  const plane = H * W;
  const imageSize = C * plane;
  const images = new Float32Array(B * imageSize);
  const labels = new Int32Array(B);

  // out = (pixel / 255 - mean) / std = pixel * scale + offset
  const scale = transform.std.map((s) => 1 / (255 * s));
  const offset = transform.mean.map((m, c) => -m / transform.std[c]);
  const padding = transform.cropPadding;
  const augment = padding > 0 || transform.horizontalFlip;
  if (augment && random === null) throw new Error('assembleBatch: random is null but crop or flip is on; pass a Random');

  for (let b = 0; b < B; b++) {
    const index = indices[b];
    labels[b] = dataset.labels[index];

    let dy = padding;
    let dx = padding;
    let flip = false;
    if (padding > 0) {
      dy = random!.nextInt(2 * padding + 1);
      dx = random!.nextInt(2 * padding + 1);
    }
    if (transform.horizontalFlip) flip = random!.next() < 0.5;

    for (let c = 0; c < C; c++) {
      const src = index * imageSize + c * plane;
      const dst = b * imageSize + c * plane;
      if (augment) {
        copyShifted(dataset.images, src, images, dst, H, W, dy - padding, dx - padding, flip, scale[c], offset[c]);
      } else {
        for (let p = 0; p < plane; p++) images[dst + p] = dataset.images[src + p] * scale[c] + offset[c];
      }
    }
  }
  return { images, labels };
}

/**
 * Writes one channel plane: out(y, x) = in(y + shiftY, x' + shiftX), where x' = W-1-x when
 * flipped and x otherwise. Reads outside the input give pixel 0 (the padding).
 */
function copyShifted(
  input: Uint8Array,
  src: number,
  output: Float32Array,
  dst: number,
  H: number,
  W: number,
  shiftY: number,
  shiftX: number,
  flip: boolean,
  scale: number,
  offset: number,
): void {
  for (let y = 0; y < H; y++) {
    const row = dst + y * W;
    const sy = y + shiftY;
    if (sy < 0 || sy >= H) {
      output.fill(offset, row, row + W);
      continue;
    }
    const srcRow = src + sy * W;
    for (let x = 0; x < W; x++) {
      const sx = (flip ? W - 1 - x : x) + shiftX;
      output[row + x] = sx >= 0 && sx < W ? input[srcRow + sx] * scale + offset : offset;
    }
  }
}
