// Public entry point of the data package: the dataset factory and re-exports. Nothing here
// depends on the GPU engine, and batches leave as plain typed arrays.
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { loadCifar10 } from './cifar10.ts';
import { DataError, type Dataset } from './dataset.ts';
import { loadFashionMnist } from './fashion-mnist.ts';
import { listClassFolders, loadImageFolder } from './folder.ts';
import { loadMnistIdx } from './idx.ts';

export { ArrayDataset, DataError, channelStats, selectSamples, type Dataset, type ImageShape } from './dataset.ts';
export { DataLoader, type DataLoaderOptions, type LoaderBatch } from './loader.ts';
export { subset } from './subset.ts';
export { CIFAR10_CLASSES, loadCifar10 } from './cifar10.ts';
export { FASHION_MNIST_CLASSES, defaultCacheDir, ensureFashionMnistCache, loadFashionMnist } from './fashion-mnist.ts';
export { loadImageFolder, type ImageFolderOptions } from './folder.ts';
export { loadIdx, loadMnistIdx } from './idx.ts';

export type DatasetName = 'fashion-mnist' | 'mnist-idx' | 'cifar10' | 'folder';

export interface DatasetSpec {
  name: DatasetName;
  /**
   * Location of the data: the directory of the IDX files (mnist-idx), the extracted
   * cifar-10-batches-bin directory or its parent (cifar10), or a folder with train/ and
   * test/ subfolders of class folders (folder). Not used by fashion-mnist, which is bundled.
   */
  path?: string;
  split: 'train' | 'test';
  /** Square image side in pixels: required for folder (images are resized), else it must equal the stored size. */
  imageSize?: number;
  /** Cache directory for the converted Fashion-MNIST (default: .cache at the repository root). */
  cacheDir?: string;
  /** Channels of folder images: 1 grayscale or 3 RGB (default 3). */
  channels?: 1 | 3;
}

/** Loads the dataset a spec describes. Every file problem is a DataError naming the file. */
export async function loadDataset(spec: DatasetSpec): Promise<Dataset> {
  if (spec.split !== 'train' && spec.split !== 'test') {
    throw new DataError(`${spec.name}: split must be 'train' or 'test', got '${String(spec.split)}'`);
  }
  switch (spec.name) {
    case 'fashion-mnist':
      if (spec.path !== undefined) {
        throw new DataError(`fashion-mnist: path ${spec.path} is not used because the dataset is bundled; use name 'mnist-idx' to read IDX files from a directory`);
      }
      return loadFashionMnist({ split: spec.split, cacheDir: spec.cacheDir, imageSize: spec.imageSize });
    case 'mnist-idx':
      return loadMnistIdx(requirePath(spec), spec.split, { imageSize: spec.imageSize });
    case 'cifar10':
      return loadCifar10(requirePath(spec), spec.split, { imageSize: spec.imageSize });
    case 'folder':
      return loadFolderSplit(requirePath(spec), spec);
    default:
      throw new DataError(`unknown dataset '${String(spec.name)}'; use fashion-mnist, mnist-idx, cifar10 or folder`);
  }
}

function requirePath(spec: DatasetSpec): string {
  if (spec.path === undefined) throw new DataError(`${spec.name}: missing path; set path to the directory of the dataset files`);
  return spec.path;
}

/** Loads path/<split>/ with the classes of path/train/, so both splits share label numbers. */
async function loadFolderSplit(path: string, spec: DatasetSpec): Promise<Dataset> {
  if (spec.imageSize === undefined) {
    throw new DataError(`${path}: folder datasets need imageSize (the square side in pixels every image is resized to)`);
  }
  const root = join(path, spec.split);
  if (!existsSync(root) || !statSync(root).isDirectory()) {
    throw new DataError(`${root}: directory not found; a folder dataset is laid out as ${join(path, '{train,test}', '<class>', '<image>.png')}`);
  }
  const trainRoot = join(path, 'train');
  const classNames = existsSync(trainRoot) ? await listClassFolders(trainRoot) : undefined;
  return loadImageFolder(root, { imageSize: spec.imageSize, channels: spec.channels, classNames, name: 'folder' });
}
