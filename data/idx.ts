// IDX files, the format of MNIST and Fashion-MNIST: a 4-byte magic number (two zero bytes,
// a data-type byte, the number of dimensions), each dimension as a big-endian uint32, then
// the data in row-major order. Only unsigned bytes (type 0x08) are read: images as
// idx3-ubyte [N, H, W] and labels as idx1-ubyte [N], either optionally gzipped.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { ArrayDataset, DataError, checkLabels } from './dataset.ts';
import { readDataFile, writeFileAtomic } from './files.ts';

export interface IdxArray {
  dims: number[];
  data: Uint8Array;
}

/** Magic number of an unsigned-byte IDX file with `rank` dimensions: 0x00000801, 0x00000803, ... */
function magicOf(rank: number): string {
  return `0x${(0x0800 + rank).toString(16).padStart(8, '0')}`;
}

/** Parses IDX bytes of rank `rank`. `path` and `role` only appear in error messages. */
export function parseIdx(bytes: Uint8Array, rank: number, path: string, role: string): IdxArray {
  if (bytes.length < 4) {
    throw new DataError(`${path}: truncated IDX file, ${bytes.length} bytes is shorter than the 4-byte magic number; download the file again`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const magic = view.getUint32(0);
  if (magic !== 0x0800 + rank) {
    const found = `0x${magic.toString(16).padStart(8, '0')}`;
    throw new DataError(
      `${path}: wrong magic number ${found}, expected ${magicOf(rank)} for ${role} (unsigned bytes, ${rank} dimensions); ` +
        'check that the file is an uncompressed or gzipped IDX file and that images and labels are not swapped',
    );
  }

  const headerBytes = 4 + 4 * rank;
  if (bytes.length < headerBytes) {
    throw new DataError(`${path}: truncated IDX file, ${bytes.length} bytes is shorter than its ${headerBytes}-byte header; download the file again`);
  }
  const dims: number[] = [];
  let count = 1;
  for (let d = 0; d < rank; d++) {
    dims.push(view.getUint32(4 + 4 * d));
    count *= dims[d];
  }
  const found = bytes.length - headerBytes;
  if (found < count) {
    throw new DataError(
      `${path}: truncated IDX file, dimensions [${dims.join(', ')}] need ${count} data bytes but ${found} follow the header; download the file again`,
    );
  }
  if (found > count) {
    throw new DataError(
      `${path}: ${found - count} unexpected bytes after the ${count} data bytes of dimensions [${dims.join(', ')}]; the file is damaged, download it again`,
    );
  }
  return { dims, data: bytes.subarray(headerBytes) };
}

/** Encodes an unsigned-byte IDX file (big-endian header) of the given dimensions. */
export function encodeIdx(dims: readonly number[], data: Uint8Array): Uint8Array {
  const count = dims.reduce((a, b) => a * b, 1);
  if (data.length !== count) throw new RangeError(`encodeIdx: ${data.length} bytes for dimensions [${dims.join(', ')}] (${count} bytes)`);
  const bytes = new Uint8Array(4 + 4 * dims.length + count);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, 0x0800 + dims.length);
  dims.forEach((d, i) => view.setUint32(4 + 4 * i, d));
  bytes.set(data, 4 + 4 * dims.length);
  return bytes;
}

/** Writes an unsigned-byte IDX file atomically (temporary file, fsync, rename). */
export async function writeIdx(path: string, dims: readonly number[], data: Uint8Array): Promise<void> {
  await writeFileAtomic(path, encodeIdx(dims, data));
}

export interface IdxDatasetOptions {
  /** idx3-ubyte file of images [N, H, W], optionally gzipped. */
  images: string;
  /** idx1-ubyte file of labels [N], optionally gzipped. */
  labels: string;
  name?: string;
  numClasses?: number;
  classNames?: readonly string[];
  /** Expected height and width. A file of another size is an error (nothing is resized). */
  imageSize?: number;
}

/** Loads a grayscale dataset [N, 1, H, W] from a pair of IDX files. */
export async function loadIdx(options: IdxDatasetOptions): Promise<ArrayDataset> {
  const numClasses = options.numClasses ?? 10;
  const fix = 'check the path, or download the IDX files again';
  const images = parseIdx(await readDataFile(options.images, fix), 3, options.images, 'images');
  const labels = parseIdx(await readDataFile(options.labels, fix), 1, options.labels, 'labels');

  const [N, H, W] = images.dims;
  if (labels.dims[0] !== N) {
    throw new DataError(
      `${options.images}: count mismatch, ${N} images but ${labels.dims[0]} labels in ${options.labels}; ` +
        'use the label file of the same split (train with train, t10k with t10k)',
    );
  }
  if (options.imageSize !== undefined && (H !== options.imageSize || W !== options.imageSize)) {
    throw new DataError(
      `${options.images}: images are ${H}x${W} but ${options.imageSize}x${options.imageSize} was expected; ` +
        `set imageSize to ${H} (IDX images are not resized) or use files of the expected size`,
    );
  }
  checkLabels(labels.data, numClasses, options.labels);

  return new ArrayDataset({
    name: options.name ?? 'mnist-idx',
    numClasses,
    imageShape: [1, H, W],
    images: images.data,
    labels: Int32Array.from(labels.data),
    classNames: options.classNames,
    source: options.images,
  });
}

/**
 * Finds the standard MNIST file names of a split in `dir`: train-images-idx3-ubyte or
 * t10k-images-idx3-ubyte and the matching labels, also spelled with a dot before "idx"
 * and with a .gz suffix. Returns null for a file that is not there.
 */
export function findMnistFiles(dir: string, split: 'train' | 'test'): { images: string | null; labels: string | null } {
  const prefix = split === 'train' ? 'train' : 't10k';
  const find = (kind: string, rank: number): string | null => {
    for (const separator of ['-', '.']) {
      for (const suffix of ['', '.gz']) {
        const path = join(dir, `${prefix}-${kind}${separator}idx${rank}-ubyte${suffix}`);
        if (existsSync(path)) return path;
      }
    }
    return null;
  };
  return { images: find('images', 3), labels: find('labels', 1) };
}

/** Loads the `split` of an MNIST-style directory of IDX files (see findMnistFiles). */
export async function loadMnistIdx(
  dir: string,
  split: 'train' | 'test',
  options: Omit<IdxDatasetOptions, 'images' | 'labels'> = {},
): Promise<ArrayDataset> {
  const files = findMnistFiles(dir, split);
  const prefix = split === 'train' ? 'train' : 't10k';
  if (files.images === null) {
    throw new DataError(`${join(dir, `${prefix}-images-idx3-ubyte`)}: file not found (also tried .gz and the ${prefix}-images.idx3-ubyte spelling); point path at the directory of the IDX files`);
  }
  if (files.labels === null) {
    throw new DataError(`${join(dir, `${prefix}-labels-idx1-ubyte`)}: file not found (also tried .gz and the ${prefix}-labels.idx1-ubyte spelling); point path at the directory of the IDX files`);
  }
  return loadIdx({ ...options, images: files.images, labels: files.labels });
}
