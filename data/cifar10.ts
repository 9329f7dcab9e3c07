// CIFAR-10 in its binary distribution (cifar-10-binary.tar.gz, extracted to
// cifar-10-batches-bin/): data_batch_1.bin .. data_batch_5.bin for train and test_batch.bin
// for test. Each record is 3073 bytes: one label byte (0..9), then a 32x32 image as the red,
// green and blue planes in row-major order, which is already the [C, H, W] layout we keep.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ArrayDataset, DataError, checkLabels } from './dataset.ts';
import { readDataFile } from './files.ts';

export const CIFAR10_CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck'] as const;

const SIDE = 32;
const IMAGE_BYTES = 3 * SIDE * SIDE;
const RECORD_BYTES = 1 + IMAGE_BYTES;

export const CIFAR10_FILES = {
  train: ['data_batch_1.bin', 'data_batch_2.bin', 'data_batch_3.bin', 'data_batch_4.bin', 'data_batch_5.bin'],
  test: ['test_batch.bin'],
} as const;

/**
 * Loads a CIFAR-10 split [N, 3, 32, 32]. `dir` is the extracted cifar-10-batches-bin
 * directory or its parent. Class names come from batches.meta.txt when present.
 */
export async function loadCifar10(dir: string, split: 'train' | 'test', options: { imageSize?: number } = {}): Promise<ArrayDataset> {
  if (options.imageSize !== undefined && options.imageSize !== SIDE) {
    throw new DataError(`${dir}: CIFAR-10 images are ${SIDE}x${SIDE} but imageSize ${options.imageSize} was requested; set imageSize to ${SIDE} or leave it out`);
  }
  const root = existsSync(join(dir, 'cifar-10-batches-bin')) ? join(dir, 'cifar-10-batches-bin') : dir;
  const fix = 'download cifar-10-binary.tar.gz (the binary version) and point path at its extracted cifar-10-batches-bin directory';

  const parts: Uint8Array[] = [];
  for (const file of CIFAR10_FILES[split]) {
    const path = join(root, file);
    const bytes = await readDataFile(path, fix);
    if (bytes.length === 0 || bytes.length % RECORD_BYTES !== 0) {
      throw new DataError(
        `${path}: truncated or damaged CIFAR-10 batch, ${bytes.length} bytes is not a positive multiple of the ${RECORD_BYTES}-byte record; download the file again`,
      );
    }
    parts.push(bytes);
  }

  const N = parts.reduce((sum, part) => sum + part.length / RECORD_BYTES, 0);
  const images = new Uint8Array(N * IMAGE_BYTES);
  const labels = new Int32Array(N);
  let n = 0;
  for (const [p, part] of parts.entries()) {
    const count = part.length / RECORD_BYTES;
    const partLabels = new Int32Array(count);
    for (let r = 0; r < count; r++) {
      const record = r * RECORD_BYTES;
      partLabels[r] = part[record];
      images.set(part.subarray(record + 1, record + RECORD_BYTES), (n + r) * IMAGE_BYTES);
    }
    checkLabels(partLabels, CIFAR10_CLASSES.length, join(root, CIFAR10_FILES[split][p]));
    labels.set(partLabels, n);
    n += count;
  }

  return new ArrayDataset({
    name: 'cifar10',
    numClasses: CIFAR10_CLASSES.length,
    imageShape: [3, SIDE, SIDE],
    images,
    labels,
    classNames: readClassNames(root),
    source: root,
  });
}

/** Class names from batches.meta.txt (one per line, blank lines ignored), else the standard list. */
function readClassNames(root: string): readonly string[] {
  const path = join(root, 'batches.meta.txt');
  if (!existsSync(path)) return CIFAR10_CLASSES;
  const names = readFileSync(path, 'utf8')
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter((line) => line.length > 0);
  if (names.length !== CIFAR10_CLASSES.length) {
    throw new DataError(`${path}: ${names.length} class names, expected ${CIFAR10_CLASSES.length}; restore the file from the CIFAR-10 archive or delete it`);
  }
  return names;
}
