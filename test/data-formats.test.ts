// File formats: IDX (MNIST), CIFAR-10 binary batches and image folders, read from tiny
// fixtures written into a temporary directory, plus every DataError case and the
// loadDataset factory.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadCifar10 } from '../data/cifar10.ts';
import { DataError } from '../data/dataset.ts';
import { loadImageFolder } from '../data/folder.ts';
import { encodeIdx, loadIdx, loadMnistIdx } from '../data/idx.ts';
import { loadDataset } from '../data/index.ts';

let root: string;
beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'prelora-data-'));
});
afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

/** Creates a fresh empty directory under the test root and returns its path. */
function freshDir(name: string): string {
  const dir = join(root, name);
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** Asserts that `load` rejects with a one-line DataError naming `file` and matching `reason`. */
async function expectDataError(load: () => Promise<unknown>, file: string, reason: RegExp): Promise<void> {
  const error = await load().then(
    () => null,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(DataError);
  const message = (error as DataError).message;
  expect(message).toContain(file);
  expect(message).toMatch(reason);
  expect(message).not.toContain('\n');
}

describe('idx', () => {
  // 3 images of 2x3, written byte by byte so the test does not depend on encodeIdx.
  const imageHeader = [0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 3];
  const pixels = Array.from({ length: 18 }, (_, i) => i * 14);
  const labelBytes = [0, 0, 8, 1, 0, 0, 0, 3, 2, 0, 9];

  function writePair(dir: string): { images: string; labels: string } {
    const images = join(dir, 'images-idx3-ubyte');
    const labels = join(dir, 'labels-idx1-ubyte');
    writeFileSync(images, Uint8Array.from([...imageHeader, ...pixels]));
    writeFileSync(labels, Uint8Array.from(labelBytes));
    return { images, labels };
  }

  it('reads images and labels', async () => {
    const ds = await loadIdx(writePair(freshDir('idx-plain')));
    expect(ds.length).toBe(3);
    expect(ds.imageShape).toEqual([1, 2, 3]);
    expect(Array.from(ds.images)).toEqual(pixels);
    expect(Array.from(ds.labels)).toEqual([2, 0, 9]);
  });

  it('reads gzipped files', async () => {
    const dir = freshDir('idx-gzip');
    const images = join(dir, 'images-idx3-ubyte.gz');
    const labels = join(dir, 'labels-idx1-ubyte.gz');
    writeFileSync(images, gzipSync(Uint8Array.from([...imageHeader, ...pixels])));
    writeFileSync(labels, gzipSync(Uint8Array.from(labelBytes)));
    const ds = await loadIdx({ images, labels });
    expect(Array.from(ds.images)).toEqual(pixels);
    expect(Array.from(ds.labels)).toEqual([2, 0, 9]);
  });

  it('encodeIdx matches the byte layout', () => {
    expect(Array.from(encodeIdx([3, 2, 3], Uint8Array.from(pixels)))).toEqual([...imageHeader, ...pixels]);
  });

  it('mnist directory finds standard names', async () => {
    const dir = freshDir('idx-mnist');
    const images = Uint8Array.from({ length: 5 * 4 * 4 }, (_, i) => i);
    writeFileSync(join(dir, 'train-images-idx3-ubyte'), encodeIdx([5, 4, 4], images));
    writeFileSync(join(dir, 'train-labels-idx1-ubyte'), encodeIdx([5], Uint8Array.from([1, 2, 3, 4, 5])));
    writeFileSync(join(dir, 't10k-images.idx3-ubyte.gz'), gzipSync(encodeIdx([2, 4, 4], images.subarray(0, 32))));
    writeFileSync(join(dir, 't10k-labels.idx1-ubyte.gz'), gzipSync(encodeIdx([2], Uint8Array.from([7, 8]))));

    const train = await loadMnistIdx(dir, 'train');
    const test = await loadMnistIdx(dir, 'test');
    expect(train.length).toBe(5);
    expect(test.length).toBe(2);
    expect(Array.from(test.labels)).toEqual([7, 8]);
  });

  it('rejects each damaged file', async () => {
    const dir = freshDir('idx-errors');
    const good = writePair(dir);
    const write = (name: string, bytes: Uint8Array) => {
      const path = join(dir, name);
      writeFileSync(path, bytes);
      return path;
    };
    const imageBytes = Uint8Array.from([...imageHeader, ...pixels]);
    const cases: { name: string; images?: string; labels?: string; imageSize?: number; file: string; reason: RegExp }[] = [
      { name: 'swapped', images: good.labels, labels: good.images, file: good.labels, reason: /wrong magic number 0x00000801, expected 0x00000803/ },
      { name: 'signed bytes', images: write('signed', Uint8Array.from([0, 0, 9, 3, ...imageHeader.slice(4), ...pixels])), file: 'signed', reason: /wrong magic number 0x00000903/ },
      { name: 'short magic', images: write('short', Uint8Array.from([0, 0])), file: 'short', reason: /truncated/ },
      { name: 'short header', images: write('header', Uint8Array.from(imageHeader.slice(0, 10))), file: 'header', reason: /truncated .* 16-byte header/ },
      { name: 'truncated data', images: write('cut', imageBytes.subarray(0, imageBytes.length - 1)), file: 'cut', reason: /truncated IDX file, dimensions \[3, 2, 3\] need 18 data bytes but 17/ },
      { name: 'trailing bytes', images: write('long', Uint8Array.from([...imageBytes, 0])), file: 'long', reason: /1 unexpected bytes/ },
      { name: 'count mismatch', labels: write('four-labels', encodeIdx([4], Uint8Array.from([0, 1, 2, 3]))), file: good.images, reason: /count mismatch, 3 images but 4 labels/ },
      { name: 'label out of range', labels: write('label-10', encodeIdx([3], Uint8Array.from([0, 10, 1]))), file: 'label-10', reason: /label 10 of sample 1 is out of range \[0, 10\)/ },
      { name: 'image size', imageSize: 28, file: good.images, reason: /images are 2x3 but 28x28 was expected/ },
      { name: 'missing file', images: join(dir, 'absent'), file: 'absent', reason: /file not found/ },
      { name: 'bad gzip', images: write('bad.gz', Uint8Array.from([0x1f, 0x8b, 8, 0, 1, 2])), file: 'bad.gz', reason: /invalid or truncated gzip/ },
    ];
    for (const c of cases) {
      await expectDataError(
        () => loadIdx({ images: c.images ?? good.images, labels: c.labels ?? good.labels, imageSize: c.imageSize }),
        c.file,
        c.reason,
      );
    }
  });

  it('mnist directory names a missing file', async () => {
    const dir = freshDir('idx-missing');
    await expectDataError(() => loadMnistIdx(dir, 'test'), join(dir, 't10k-images-idx3-ubyte'), /file not found/);
  });
});

describe('cifar10', () => {
  const RECORD = 3073;
  /** Pixel (n, c, y, x) of sample n across all train batches. */
  const pixelOf = (n: number, c: number, y: number, x: number) => (n * 13 + c * 71 + y * 5 + x * 3) % 256;

  function batchBytes(first: number, count: number): Uint8Array {
    const bytes = new Uint8Array(count * RECORD);
    for (let r = 0; r < count; r++) {
      const n = first + r;
      bytes[r * RECORD] = n % 10;
      for (let c = 0; c < 3; c++) {
        for (let y = 0; y < 32; y++) {
          for (let x = 0; x < 32; x++) bytes[r * RECORD + 1 + c * 1024 + y * 32 + x] = pixelOf(n, c, y, x);
        }
      }
    }
    return bytes;
  }

  /** cifar-10-batches-bin with 2, 1, 3, 1, 2 train records and 3 test records. */
  function writeCifar(name: string): string {
    const dir = freshDir(join(name, 'cifar-10-batches-bin'));
    let n = 0;
    for (const [i, count] of [2, 1, 3, 1, 2].entries()) {
      writeFileSync(join(dir, `data_batch_${i + 1}.bin`), batchBytes(n, count));
      n += count;
    }
    writeFileSync(join(dir, 'test_batch.bin'), batchBytes(100, 3));
    return dir;
  }

  it('reads all train batches in order', async () => {
    const ds = await loadCifar10(writeCifar('cifar-train'), 'train');
    expect(ds.length).toBe(9);
    expect(ds.imageShape).toEqual([3, 32, 32]);
    expect(Array.from(ds.labels)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8]);
    expect(ds.classNames?.[0]).toBe('airplane');
    for (const [n, c, y, x] of [[0, 0, 0, 0], [4, 1, 7, 31], [8, 2, 31, 5]]) {
      expect(ds.images[((n * 3 + c) * 32 + y) * 32 + x]).toBe(pixelOf(n, c, y, x));
    }
  });

  it('reads test batch from parent directory', async () => {
    const dir = writeCifar('cifar-parent');
    const ds = await loadCifar10(join(dir, '..'), 'test');
    expect(ds.length).toBe(3);
    expect(Array.from(ds.labels)).toEqual([0, 1, 2]);
  });

  it('reads class names from batches.meta.txt', async () => {
    const dir = writeCifar('cifar-meta');
    writeFileSync(join(dir, 'batches.meta.txt'), 'a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n\n');
    const ds = await loadCifar10(dir, 'test');
    expect(ds.classNames).toEqual(['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j']);
  });

  it('rejects each damaged file', async () => {
    const truncated = writeCifar('cifar-truncated');
    writeFileSync(join(truncated, 'data_batch_2.bin'), batchBytes(0, 2).subarray(0, RECORD + 100));
    await expectDataError(() => loadCifar10(truncated, 'train'), join(truncated, 'data_batch_2.bin'), /truncated .* 3173 bytes is not a positive multiple of the 3073-byte record/);

    const badLabel = writeCifar('cifar-label');
    const bytes = batchBytes(0, 3);
    bytes[2 * RECORD] = 10;
    writeFileSync(join(badLabel, 'test_batch.bin'), bytes);
    await expectDataError(() => loadCifar10(badLabel, 'test'), join(badLabel, 'test_batch.bin'), /label 10 of sample 2 is out of range/);

    const missing = writeCifar('cifar-missing');
    rmSync(join(missing, 'data_batch_3.bin'));
    await expectDataError(() => loadCifar10(missing, 'train'), join(missing, 'data_batch_3.bin'), /file not found; download cifar-10-binary/);

    const empty = writeCifar('cifar-empty');
    writeFileSync(join(empty, 'test_batch.bin'), new Uint8Array(0));
    await expectDataError(() => loadCifar10(empty, 'test'), join(empty, 'test_batch.bin'), /not a positive multiple/);

    const meta = writeCifar('cifar-bad-meta');
    writeFileSync(join(meta, 'batches.meta.txt'), 'a\nb\n');
    await expectDataError(() => loadCifar10(meta, 'test'), join(meta, 'batches.meta.txt'), /2 class names, expected 10/);

    await expectDataError(() => loadCifar10(meta, 'test', { imageSize: 28 }), meta, /imageSize 28/);
  });
});

describe('image folder', () => {
  /** Writes a solid-colour PNG of width x height. */
  async function writePng(path: string, rgb: [number, number, number], width = 6, height = 4): Promise<void> {
    const pixels = new Uint8Array(width * height * 3);
    for (let p = 0; p < width * height; p++) pixels.set(rgb, p * 3);
    await sharp(pixels, { raw: { width, height, channels: 3 } }).png().toFile(path);
  }

  /** root/{train,test}/<class>/ with solid-colour images; returns root. */
  async function writeFolder(name: string): Promise<string> {
    const dir = freshDir(name);
    mkdirSync(join(dir, 'train', 'dog'), { recursive: true });
    mkdirSync(join(dir, 'train', 'cat'), { recursive: true });
    mkdirSync(join(dir, 'test', 'dog'), { recursive: true });
    await writePng(join(dir, 'train', 'cat', 'b.png'), [200, 100, 50]);
    await writePng(join(dir, 'train', 'cat', 'a.png'), [10, 20, 30], 3, 9);
    await writePng(join(dir, 'train', 'dog', 'x.png'), [90, 90, 90]);
    await sharp(new Uint8Array(5 * 5 * 3).fill(120), { raw: { width: 5, height: 5, channels: 3 } })
      .jpeg({ quality: 100 })
      .toFile(join(dir, 'train', 'dog', 'y.JPG'));
    writeFileSync(join(dir, 'train', 'dog', 'notes.txt'), 'not an image');
    await writePng(join(dir, 'test', 'dog', 'z.png'), [60, 60, 60]);
    return dir;
  }

  it('decodes RGB planes per class', async () => {
    const dir = await writeFolder('folder-rgb');
    const ds = await loadImageFolder(join(dir, 'train'), { imageSize: 4 });
    expect(ds.length).toBe(4);
    expect(ds.imageShape).toEqual([3, 4, 4]);
    expect(ds.classNames).toEqual(['cat', 'dog']);
    expect(Array.from(ds.labels)).toEqual([0, 0, 1, 1]);

    // Sorted file order puts cat/a.png first, then cat/b.png. PNG is lossless and a solid
    // colour stays solid under resizing, so every plane is exact.
    const b = ds.get(1).image;
    expect(Array.from(new Set(b.subarray(0, 16)))).toEqual([200]);
    expect(Array.from(new Set(b.subarray(16, 32)))).toEqual([100]);
    expect(Array.from(new Set(b.subarray(32, 48)))).toEqual([50]);
    expect(Array.from(new Set(ds.get(0).image.subarray(32, 48)))).toEqual([30]);
  });

  it('decodes grayscale', async () => {
    const dir = await writeFolder('folder-gray');
    const ds = await loadImageFolder(join(dir, 'train'), { imageSize: 3, channels: 1 });
    expect(ds.imageShape).toEqual([1, 3, 3]);
    // A gray PNG keeps its value; JPEG at quality 100 may move a solid gray by a level or two.
    expect(Array.from(new Set(ds.get(2).image))).toEqual([90]);
    for (const v of ds.get(3).image) expect(Math.abs(v - 120)).toBeLessThanOrEqual(2);
  });

  it('test split uses train classes', async () => {
    const dir = await writeFolder('folder-split');
    const ds = await loadDataset({ name: 'folder', path: dir, split: 'test', imageSize: 2 });
    expect(ds.classNames).toEqual(['cat', 'dog']);
    expect(Array.from(ds.labels)).toEqual([1]);
  });

  it('rejects each bad layout', async () => {
    const empty = await writeFolder('folder-empty');
    mkdirSync(join(empty, 'train', 'emu'));
    writeFileSync(join(empty, 'train', 'emu', 'readme.md'), 'no images here');
    await expectDataError(() => loadImageFolder(join(empty, 'train'), { imageSize: 4 }), join(empty, 'train', 'emu'), /empty class folder/);

    const noClasses = freshDir('folder-none');
    writeFileSync(join(noClasses, 'loose.png'), 'x');
    await expectDataError(() => loadImageFolder(noClasses, { imageSize: 4 }), noClasses, /no class folders/);

    const unreadable = await writeFolder('folder-unreadable');
    writeFileSync(join(unreadable, 'train', 'cat', 'c.png'), 'not a png');
    await expectDataError(() => loadImageFolder(join(unreadable, 'train'), { imageSize: 4 }), join(unreadable, 'train', 'cat', 'c.png'), /unreadable image/);

    const extra = await writeFolder('folder-extra');
    mkdirSync(join(extra, 'test', 'owl'));
    await writePng(join(extra, 'test', 'owl', 'o.png'), [1, 2, 3]);
    await expectDataError(() => loadDataset({ name: 'folder', path: extra, split: 'test', imageSize: 4 }), join(extra, 'test', 'owl'), /not one of the 2 classes/);

    await expectDataError(() => loadImageFolder(join(root, 'absent'), { imageSize: 4 }), join(root, 'absent'), /directory not found/);
    await expectDataError(() => loadDataset({ name: 'folder', path: extra, split: 'train' }), extra, /need imageSize/);
    const trainOnly = freshDir('folder-train-only');
    await expectDataError(() => loadDataset({ name: 'folder', path: trainOnly, split: 'test', imageSize: 4 }), join(trainOnly, 'test'), /directory not found/);
  });
});

describe('loadDataset', () => {
  it('loads mnist-idx and cifar10', async () => {
    const dir = freshDir('factory-idx');
    writeFileSync(join(dir, 'train-images-idx3-ubyte'), encodeIdx([2, 3, 3], new Uint8Array(18)));
    writeFileSync(join(dir, 'train-labels-idx1-ubyte'), encodeIdx([2], Uint8Array.from([4, 5])));
    const idx = await loadDataset({ name: 'mnist-idx', path: dir, split: 'train' });
    expect(idx.imageShape).toEqual([1, 3, 3]);
    expect(Array.from(idx.labels)).toEqual([4, 5]);

    const cifarDir = freshDir(join('factory-cifar', 'cifar-10-batches-bin'));
    writeFileSync(join(cifarDir, 'test_batch.bin'), new Uint8Array(3073 * 2));
    const cifar = await loadDataset({ name: 'cifar10', path: cifarDir, split: 'test' });
    expect(cifar.length).toBe(2);
  });

  it('rejects missing or unused path', async () => {
    await expect(loadDataset({ name: 'cifar10', split: 'train' })).rejects.toThrow(/cifar10: missing path/);
    await expect(loadDataset({ name: 'fashion-mnist', path: '/data/fm', split: 'train' })).rejects.toThrow(/path \/data\/fm is not used/);
    await expect(loadDataset({ name: 'mnist-idx', path: root, split: 'validation' as 'test' })).rejects.toThrow(DataError);
  });
});
