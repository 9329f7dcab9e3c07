// Seeded randomness for the data pipeline: a 32-bit hash to derive per-epoch and per-step
// seeds, a small PRNG, and a Fisher-Yates shuffle. Everything here is a pure function of
// its seed, so a resumed run reproduces the order and augmentation of the original run.

/** Finalises a 32-bit value so that nearby inputs give unrelated outputs (MurmurHash3 fmix32). */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * Hashes a list of integers into one 32-bit seed, e.g. hashSeed(seed, epoch). Order matters,
 * and every part is reduced to its low 32 bits first.
 */
export function hashSeed(...parts: number[]): number {
  let h = 0x9e3779b9;
  for (const part of parts) {
    h = fmix32((h ^ fmix32(part >>> 0)) + 0x7f4a7c15);
  }
  return h;
}

/** A seeded generator: a Weyl sequence hashed with fmix32, as in SplitMix. */
export class Random {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** Returns the next uniform 32-bit unsigned integer. */
  nextUint32(): number {
    this.state = (this.state + 0x9e3779b9) >>> 0;
    return fmix32(this.state);
  }

  /** Returns the next uniform float in [0, 1). */
  next(): number {
    return this.nextUint32() / 4294967296;
  }

  /** Returns the next uniform integer in [0, n), for n up to 2^32. */
  nextInt(n: number): number {
    return Math.floor(this.next() * n);
  }
}

/** Shuffles `values` in place with Fisher-Yates and returns it. */
export function shuffleInPlace(values: Int32Array, random: Random): Int32Array {
  for (let i = values.length - 1; i > 0; i--) {
    const j = random.nextInt(i + 1);
    const tmp = values[i];
    values[i] = values[j];
    values[j] = tmp;
  }
  return values;
}
