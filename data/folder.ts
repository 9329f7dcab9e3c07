// Image-folder datasets: root/<class>/*.png|jpg|jpeg, one subfolder per class, decoded with
// sharp (libvips) and resized to a square imageSize. Classes are the subfolder names in
// sorted order (JavaScript string order) and label i is the i-th name. Alpha channels are
// dropped, not composited.
import { readdir } from 'node:fs/promises';
import { extname, join } from 'node:path';
import sharp, { type OutputInfo } from 'sharp';
import { ArrayDataset, DataError } from './dataset.ts';

const IMAGE_EXTENSIONS = new Set(['.png', '.jpg', '.jpeg']);

export interface ImageFolderOptions {
  /** Height and width of every decoded image, in pixels. */
  imageSize: number;
  /** 1 decodes to grayscale, 3 to sRGB (default 3). */
  channels?: 1 | 3;
  /**
   * Fixed class list, e.g. the classes of the train split when loading the test split, so
   * both use the same label numbers. A subfolder outside the list is an error. A listed
   * class without a subfolder simply has no samples. Default: the subfolders of root.
   */
  classNames?: readonly string[];
  /** 'fill' stretches to imageSize x imageSize, 'cover' scales and centre-crops (default 'fill'). */
  fit?: 'fill' | 'cover';
  /** Images decoded at the same time (default 8). */
  concurrency?: number;
  name?: string;
}

/** Returns the class subfolder names of `root` in sorted order, ignoring hidden entries. */
export async function listClassFolders(root: string): Promise<string[]> {
  let entries;
  try {
    entries = await readdir(root, { withFileTypes: true });
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'directory not found' : `cannot read directory (${(error as Error).message})`;
    throw new DataError(`${root}: ${reason}; point path at a folder laid out as <class>/<image>.png`);
  }
  const classes = entries.filter((entry) => entry.isDirectory() && !entry.name.startsWith('.')).map((entry) => entry.name);
  if (classes.length === 0) {
    throw new DataError(`${root}: no class folders; put the images of each class in a subfolder, e.g. ${join(root, 'cat', '0001.png')}`);
  }
  return classes.sort();
}

/** Loads every image under root/<class>/ into a dataset [N, channels, imageSize, imageSize]. */
export async function loadImageFolder(root: string, options: ImageFolderOptions): Promise<ArrayDataset> {
  const { imageSize } = options;
  const channels = options.channels ?? 3;
  if (!Number.isInteger(imageSize) || imageSize <= 0) {
    throw new DataError(`${root}: imageSize must be a positive integer number of pixels, got ${imageSize}`);
  }
  if (channels !== 1 && channels !== 3) throw new DataError(`${root}: channels must be 1 or 3, got ${channels}`);

  const folders = await listClassFolders(root);
  const classNames = options.classNames ?? folders;
  const files: string[] = [];
  const fileLabels: number[] = [];
  for (const folder of folders) {
    const label = classNames.indexOf(folder);
    if (label < 0) {
      throw new DataError(`${join(root, folder)}: class folder is not one of the ${classNames.length} classes [${classNames.join(', ')}]; rename or remove it`);
    }
    const images = await listImages(join(root, folder));
    for (const image of images) {
      files.push(image);
      fileLabels.push(label);
    }
  }

  const imageBytes = channels * imageSize * imageSize;
  const pixels = new Uint8Array(files.length * imageBytes);
  await forEachConcurrently(files.length, options.concurrency ?? 8, async (i) => {
    const chw = await decodeImage(files[i], imageSize, channels, options.fit ?? 'fill');
    pixels.set(chw, i * imageBytes);
  });

  return new ArrayDataset({
    name: options.name ?? 'folder',
    numClasses: classNames.length,
    imageShape: [channels, imageSize, imageSize],
    images: pixels,
    labels: Int32Array.from(fileLabels),
    classNames,
    source: root,
  });
}

/** Returns the image files of one class folder in sorted order. An empty folder is an error. */
async function listImages(folder: string): Promise<string[]> {
  const entries = await readdir(folder, { withFileTypes: true });
  const names = entries
    .filter((entry) => !entry.isDirectory() && !entry.name.startsWith('.') && IMAGE_EXTENSIONS.has(extname(entry.name).toLowerCase()))
    .map((entry) => entry.name)
    .sort();
  if (names.length === 0) {
    throw new DataError(`${folder}: empty class folder, no .png, .jpg or .jpeg files; add images or remove the folder`);
  }
  return names.map((name) => join(folder, name));
}

/** Decodes one file to uint8 [channels, size, size]. */
async function decodeImage(path: string, size: number, channels: 1 | 3, fit: 'fill' | 'cover'): Promise<Uint8Array> {
  let raw: { data: Buffer; info: OutputInfo };
  try {
    raw = await sharp(path)
      .removeAlpha()
      .resize(size, size, { fit })
      .toColourspace(channels === 1 ? 'b-w' : 'srgb')
      .raw()
      .toBuffer({ resolveWithObject: true });
  } catch (error) {
    throw new DataError(`${path}: unreadable image (${(error as Error).message}); replace or remove the file`);
  }
  const { data, info } = raw;
  if (info.channels !== channels || info.width !== size || info.height !== size) {
    throw new DataError(
      `${path}: decoded to ${info.width}x${info.height} with ${info.channels} channels instead of ${size}x${size} with ${channels}; replace or convert the file`,
    );
  }

  // sharp returns interleaved [H, W, C], and the dataset keeps planar [C, H, W].
  const plane = size * size;
  const chw = new Uint8Array(channels * plane);
  for (let p = 0; p < plane; p++) {
    for (let c = 0; c < channels; c++) chw[c * plane + p] = data[p * channels + c];
  }
  return chw;
}

/** Runs task(0..count-1) with at most `limit` tasks in flight. The first failure rejects the returned promise. */
async function forEachConcurrently(count: number, limit: number, task: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < count) {
      const i = next++;
      await task(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, count) }, worker));
}
