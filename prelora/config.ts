// The run configuration: one schema (zod) that validates config files and flag overrides,
// gives every field its default and unit, and names the field in every error.
import { z } from 'zod';

const positiveInt = z.number().int().positive();
const nonNegInt = z.number().int().nonnegative();
const powerOfTwo = positiveInt.refine((n) => (n & (n - 1)) === 0, { message: 'must be a power of two (1, 2, 4, 8, …)' });

export const TARGET_NAMES = ['q', 'k', 'v', 'd', 'i', 'o'] as const;

export const ConfigSchema = z.object({
  model: z.object({
    preset: z.enum(['tiny', 'vit-s16', 'vit-b16', 'vit-l16']).default('tiny'),
    /** Overrides of the preset (e.g. layers, hidden); unset keeps the preset's value. */
    hidden: positiveInt.optional(),
    layers: positiveInt.optional(),
    heads: positiveInt.optional(),
    mlpDim: positiveInt.optional(),
    patchSize: positiveInt.optional(),
  }).strict().default({ preset: 'tiny' }),

  data: z.object({
    dataset: z.enum(['fashion-mnist', 'mnist-idx', 'cifar10', 'folder']).default('fashion-mnist'),
    /** Directory of the dataset files (IDX, CIFAR-10 batches, image folder root). */
    path: z.string().optional(),
    /** Validation folder for `folder` datasets (root/<class>/*). */
    valPath: z.string().optional(),
    /** Train on the first N training images only (0 = all). */
    trainSubset: nonNegInt.default(0),
    /** Evaluate on the first N test images only (0 = all). */
    valSubset: nonNegInt.default(0),
    randomCrop: z.boolean().default(false),
    /** Zero padding in pixels around the image before a random crop. */
    cropPadding: nonNegInt.default(2),
    horizontalFlip: z.boolean().default(false),
    cacheDir: z.string().default('.cache'),
  }).strict().default({} as never),

  train: z.object({
    epochs: positiveInt.default(10),
    batchSize: positiveInt.default(128),
    /** Peak learning rate of AdamW. */
    lr: z.number().positive().default(1e-3),
    /** Learning rate at the end of the cosine decay. */
    minLr: z.number().nonnegative().default(1e-5),
    /** Linear warmup length, in epochs (fractions allowed). */
    warmupEpochs: z.number().nonnegative().default(1),
    weightDecay: z.number().nonnegative().default(0.05),
    beta1: z.number().min(0).max(0.999999).default(0.9),
    beta2: z.number().min(0).max(0.999999).default(0.999),
    labelSmoothing: z.number().min(0).max(0.99).default(0.1),
    /** Global gradient-norm clipping threshold; 0 turns clipping off. */
    maxGradNorm: z.number().nonnegative().default(1),
    seed: nonNegInt.default(0),
    /** Write a mid-epoch checkpoint every N steps (0 = only at epoch ends). */
    checkpointEverySteps: nonNegInt.default(0),
  }).strict().default({} as never),

  prelora: z.object({
    /** Off: full-parameter training for every epoch (the baseline). */
    enabled: z.boolean().default(true),
    /** Number of windows k the convergence test compares. */
    windows: z.number().int().min(2).default(3),
    /** Window size m, in epochs (or optimizer steps with windowUnit "steps"). */
    windowSize: positiveInt.default(3),
    windowUnit: z.enum(['epochs', 'steps']).default('epochs'),
    /** τ: largest allowed change of a module's mean weight norm between windows, percent. */
    tau: z.number().nonnegative().default(0.5),
    /** ζ: largest allowed change of the training loss between windows, percent. */
    zeta: z.number().nonnegative().default(2.5),
    targets: z.array(z.enum(TARGET_NAMES)).min(1).default(['q', 'k', 'v', 'd', 'o']),
    rMin: powerOfTwo.default(8),
    rMax: powerOfTwo.default(64),
    /** LoRA alpha; the adapter scale is alpha/R (alpha/√R with rsLora). */
    loraAlpha: z.number().positive().default(16),
    rsLora: z.boolean().default(false),
    /** w: epochs of joint base + adapter training after the switch, before the base freezes. */
    warmupEpochs: nonNegInt.default(10),
    /** Keep the classifier trainable after the freeze. */
    keepClassifier: z.boolean().default(false),
    /** Keep every LayerNorm trainable after the freeze. */
    keepLayerNorms: z.boolean().default(false),
    /** Multiplies the scheduled LR once the base is frozen. */
    loraLrScale: z.number().positive().default(1),
    /** Do not run the convergence test before this many epochs of full training. */
    minFullEpochs: nonNegInt.default(0),
    relora: z.object({
      enabled: z.boolean().default(false),
      /** Epochs of full training before the ReLoRA phase starts. */
      fullEpochs: nonNegInt.default(1),
      rank: positiveInt.default(64),
      /** Merge and re-initialise the adapters every N optimizer steps. */
      resetEvery: positiveInt.default(200),
      /** Steps of the LR's linear ramp after each reset. */
      restartWarmup: nonNegInt.default(20),
      /** At each reset: "reset" zeroes the adapters' AdamW state, "prune" zeroes its smallest `pruneFraction`. */
      stateReset: z.enum(['reset', 'prune']).default('prune'),
      pruneFraction: z.number().min(0).max(1).default(0.99),
    }).strict().default({} as never),
  }).strict().default({} as never),

  run: z.object({
    /** Run directory; metrics, checkpoints and the report go here. */
    dir: z.string().default('runs/latest'),
    backend: z.enum(['default', 'vulkan', 'metal', 'd3d12', 'd3d11', 'opengl', 'opengles', 'null']).default('default'),
    adapter: z.string().optional(),
    /**
     * Turn off Dawn's bounds-check transform. Every kernel validates shapes on the host and
     * guards its tails, and the kernel tests run in both modes. The gain measured here was
     * within noise, so the safe mode is the default.
     */
    unsafeNoBoundsChecks: z.boolean().default(false),
    /** Stop after this many optimizer steps in total (0 = no limit); for smoke tests. */
    maxSteps: nonNegInt.default(0),
    /** Write the HTML report at the end of the run. */
    report: z.boolean().default(true),
    /** Print one line per epoch instead of a progress bar. */
    quiet: z.boolean().default(false),
  }).strict().default({} as never),
}).strict().superRefine((cfg, ctx) => {
  if (cfg.prelora.rMin > cfg.prelora.rMax) {
    ctx.addIssue({ code: 'custom', path: ['prelora', 'rMin'], message: `rMin ${cfg.prelora.rMin} is larger than rMax ${cfg.prelora.rMax}` });
  }
  if (cfg.train.minLr > cfg.train.lr) {
    ctx.addIssue({ code: 'custom', path: ['train', 'minLr'], message: `minLr ${cfg.train.minLr} is larger than lr ${cfg.train.lr}` });
  }
});

export type Config = z.infer<typeof ConfigSchema>;
export type ConfigInput = z.input<typeof ConfigSchema>;

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/** Validates a config object; the error names the first invalid field and its value. */
export function parseConfig(input: unknown): Config {
  const res = ConfigSchema.safeParse(input);
  if (res.success) return res.data;
  const issue = res.error.issues[0];
  const path = issue.path.join('.');
  const value = path ? lookup(input, issue.path) : undefined;
  const shown = value === undefined ? '' : ` (got ${JSON.stringify(value)})`;
  throw new ConfigError(`invalid config: ${path || '(root)'}: ${issue.message}${shown}`);
}

function lookup(obj: unknown, path: PropertyKey[]): unknown {
  let cur: unknown = obj;
  for (const k of path) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<PropertyKey, unknown>)[k];
  }
  return cur;
}

/** Deep merge of plain objects (b wins); arrays are replaced, not merged. */
export function mergeConfig<T>(a: T, b: unknown): T {
  if (b === undefined) return a;
  if (a === null || typeof a !== 'object' || Array.isArray(a) || b === null || typeof b !== 'object' || Array.isArray(b)) return b as T;
  const out: Record<string, unknown> = { ...(a as Record<string, unknown>) };
  for (const [k, v] of Object.entries(b as Record<string, unknown>)) out[k] = mergeConfig(out[k], v);
  return out as T;
}

/**
 * Named presets. exp1–exp3 are the paper's convergence settings on ViT-L/16 (k = 3
 * windows of m = 3 epochs, ranks 8–64, w = 10). "fmnist" is the bundled main job, scaled
 * down for the tiny model on Fashion-MNIST so it finishes in about 20 minutes on two CPU
 * cores. Its epochs are few and long (468 steps), so windows are one epoch, and the
 * thresholds are looser than the paper's: in a 7-epoch cosine schedule the per-epoch
 * weight-norm change only falls below a few percent in the second half of the run.
 * Ranks 4–32 suit a width of 64.
 */
export const PRESETS: Record<string, ConfigInput> = {
  exp1: { model: { preset: 'vit-l16' }, train: { epochs: 300 }, prelora: { tau: 1.0, zeta: 5.0, windows: 3, windowSize: 3, rMin: 8, rMax: 64, warmupEpochs: 10 } },
  exp2: { model: { preset: 'vit-l16' }, train: { epochs: 300 }, prelora: { tau: 0.5, zeta: 2.5, windows: 3, windowSize: 3, rMin: 8, rMax: 64, warmupEpochs: 10 } },
  exp3: { model: { preset: 'vit-l16' }, train: { epochs: 300 }, prelora: { tau: 0.25, zeta: 1.0, windows: 3, windowSize: 3, rMin: 8, rMax: 64, warmupEpochs: 10 } },
  fmnist: {
    model: { preset: 'tiny' },
    data: { dataset: 'fashion-mnist' },
    train: { epochs: 7, batchSize: 128, lr: 2e-3, warmupEpochs: 0.5 },
    prelora: { windows: 3, windowSize: 1, tau: 6.0, zeta: 8.0, rMin: 4, rMax: 32, loraAlpha: 16, warmupEpochs: 1, minFullEpochs: 3 },
  },
};
