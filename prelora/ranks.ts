// Per-layer LoRA rank assignment (Algorithm 2 of "PreLoRA: Hybrid Pre-training of Vision
// Transformers with Full Training and Low-Rank Adapters"): layers whose weights still move
// get larger ranks. The per-layer changes come from layerDeltas in convergence.ts; attaching
// adapters of these ranks is the model's job.
//
// For each module, the per-layer changes are min-max normalised to v ∈ [0, 1]. The candidate
// ranks R are the powers of two from r_min to r_max, and a layer gets R[i] with
// i = ⌈v·|R|⌉ − 1 for v > 0 and i = 0 for v = 0. When every layer of a module changed by the
// same amount, every layer gets r_min.
import { vitModulePath } from '../model/peft.ts';
import type { TargetModule } from '../model/vit.ts';
import type { PerLayer } from './convergence.ts';

/** Per module, the adapter rank of each layer (index = layer). */
export type RankMap = Partial<Record<TargetModule, number[]>>;

export interface RankBounds {
  rMin?: number;
  rMax?: number;
}

export const RANK_DEFAULTS = { rMin: 8, rMax: 64 } as const;

/** Lists the candidate ranks: every power of two from rMin to rMax, e.g. 8 … 64 → [8, 16, 32, 64]. */
export function rankSet(rMin: number = RANK_DEFAULTS.rMin, rMax: number = RANK_DEFAULTS.rMax): number[] {
  checkRank('rMin', rMin);
  checkRank('rMax', rMax);
  if (rMin > rMax) throw new Error(`invalid rank bounds: rMin ${rMin} is larger than rMax ${rMax}`);

  const ranks: number[] = [];
  for (let r = rMin; r <= rMax; r *= 2) ranks.push(r);
  return ranks;
}

function checkRank(name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 1) throw new Error(`invalid ${name} ${value}: a LoRA rank must be a positive integer`);
  if (!Number.isInteger(Math.log2(value))) {
    throw new Error(`invalid ${name} ${value}: rank bounds must be powers of two (1, 2, 4, 8, …)`);
  }
}

/** Min-max normalises to [0, 1]. When all values are equal, every value maps to 0. */
export function minMaxNormalize(values: readonly number[]): number[] {
  const min = Math.min(...values);
  const max = Math.max(...values);
  if (max === min) return values.map(() => 0);
  return values.map((x) => (x - min) / (max - min));
}

/**
 * Index into the candidate ranks for a normalised change v: ⌈v·count⌉ − 1 for v > 0, else 0,
 * clamped into [0, count − 1].
 */
export function rankIndex(v: number, count: number): number {
  if (!(v > 0)) return 0;

  // v is a ratio of differences of decimal inputs, so a value exactly on a bucket edge in
  // real arithmetic can land a rounding error above it. For example (0.2 − 0.1) / (0.3 − 0.1)
  // is 0.5000000000000001, and ⌈2 · v⌉ would pick the next bucket. Products within 1e-9
  // of an integer are therefore taken as that integer.
  let scaled = v * count;
  const nearest = Math.round(scaled);
  if (Math.abs(scaled - nearest) <= 1e-9 * count) scaled = nearest;

  const index = Math.ceil(scaled) - 1;
  return Math.min(count - 1, Math.max(0, index));
}

/**
 * Assigns a rank to every layer of every module from its per-layer weight changes.
 *
 * ```ts
 * assignRanks({ q: [0.1, 0.4, 0.25, 0.7] }, { rMin: 8, rMax: 64 });
 * // v = [0, 0.5, 0.25, 1] → i = [0, 1, 0, 3] → { q: [8, 16, 8, 64] }
 * ```
 */
export function assignRanks(changes: PerLayer, bounds: RankBounds = {}): RankMap {
  const ranks = rankSet(bounds.rMin ?? RANK_DEFAULTS.rMin, bounds.rMax ?? RANK_DEFAULTS.rMax);
  const out: RankMap = {};
  for (const [module, values] of Object.entries(changes) as Array<[TargetModule, number[] | undefined]>) {
    if (values === undefined) continue;
    if (values.length === 0) throw new Error(`missing per-layer changes of module ${module}: expected one value per layer`);
    const bad = values.findIndex((x) => !Number.isFinite(x));
    if (bad >= 0) throw new Error(`invalid change ${values[bad]} of module ${module}, layer ${bad}: expected a finite number`);

    out[module] = minMaxNormalize(values).map((v) => ranks[rankIndex(v, ranks.length)]);
  }
  return out;
}

/**
 * Flattens a rank map to full module paths for logging and PEFT export:
 * `{ q: [8, 16] }` → `{ 'vit.encoder.layer.0.attention.attention.query': 8, 'vit.encoder.layer.1.…': 16 }`.
 */
export function rankMapToModulePaths(map: RankMap): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [module, ranks] of Object.entries(map) as Array<[TargetModule, number[] | undefined]>) {
    ranks?.forEach((rank, layer) => {
      out[vitModulePath(layer, module)] = rank;
    });
  }
  return out;
}
