// Names for exporting adapters in the layout of Hugging Face PEFT (LoRA): the keys of
// adapter_model.safetensors and the content of adapter_config.json, so that
// `PeftModel.from_pretrained(ViTForImageClassification…, dir)` loads a PreLoRA adapter with
// its per-layer ranks. Writing the files (safetensors.ts, atomic.ts) and the adapter tensors
// themselves are left to the caller.
import type { TargetModule } from './vit.ts';

/**
 * Linear modules of one Hugging Face ViTLayer, by the short names PreLoRA uses for targets.
 * The path is relative to the layer (`vit.encoder.layer.{l}`).
 */
export const VIT_LAYER_MODULES: Readonly<Record<TargetModule, string>> = {
  q: 'attention.attention.query',
  k: 'attention.attention.key',
  v: 'attention.attention.value',
  d: 'attention.output.dense',
  i: 'intermediate.dense',
  o: 'output.dense',
};

/** Prefix of the encoder layers in ViTForImageClassification's module names. */
export const VIT_LAYER_PREFIX = 'vit.encoder.layer';

/**
 * Prefix PEFT gives every key of the wrapped model in a saved adapter: the PeftModel contains
 * a LoraModel at `base_model`, which contains the Hugging Face model at `model`.
 */
export const PEFT_KEY_PREFIX = 'base_model.model.';

/** Full module path of a target in layer `layer`, e.g. `vit.encoder.layer.3.attention.attention.query`. */
export function vitModulePath(layer: number, module: TargetModule): string {
  if (!Number.isSafeInteger(layer) || layer < 0) throw new Error(`invalid layer ${layer}: expected an integer ≥ 0`);
  return `${VIT_LAYER_PREFIX}.${layer}.${VIT_LAYER_MODULES[module]}`;
}

/**
 * Keys of the LoRA factors of a base weight in adapter_model.safetensors. For
 * `vit.encoder.layer.3.attention.attention.query.weight`, A [R, in] is stored as
 * `base_model.model.vit.encoder.layer.3.attention.attention.query.lora_A.weight` and
 * B [out, R] as `….lora_B.weight`. PEFT drops the adapter name ("default") when saving.
 */
export function peftLoraKeys(baseWeight: string): { loraA: string; loraB: string } {
  if (!baseWeight.endsWith('.weight') || baseWeight.length === '.weight'.length) {
    throw new Error(`invalid base weight name '${baseWeight}': expected a parameter name ending in '.weight'`);
  }
  const module = PEFT_KEY_PREFIX + baseWeight.slice(0, -'.weight'.length);
  return { loraA: `${module}.lora_A.weight`, loraB: `${module}.lora_B.weight` };
}

/**
 * Key of a parameter of a module kept trainable and saved whole (`modules_to_save`, e.g.
 * `classifier.weight` → `base_model.model.classifier.weight`).
 */
export function peftSavedModuleKey(parameter: string): string {
  if (parameter === '') throw new Error('invalid parameter name: empty');
  return PEFT_KEY_PREFIX + parameter;
}

// ---------------------------------------------------------------------------------------
// adapter_config.json

/** The fields of adapter_config.json that PreLoRA sets, with PEFT's names. */
export interface PeftAdapterConfig {
  peft_type: 'LORA';
  task_type: null;
  base_model_name_or_path: string | null;
  inference_mode: boolean;
  r: number;
  lora_alpha: number;
  lora_dropout: number;
  target_modules: string[];
  rank_pattern: Record<string, number>;
  alpha_pattern: Record<string, number>;
  use_rslora: boolean;
  bias: 'none';
  fan_in_fan_out: false;
  init_lora_weights: boolean | 'gaussian';
  modules_to_save: string[] | null;
}

export interface AdapterConfigOptions {
  /**
   * Rank per adapted module path (`vit.encoder.layer.{l}.{module}`, see vitModulePath). Every
   * layer of each targeted module must be present, because target_modules names modules,
   * not layers.
   */
  ranks: Readonly<Record<string, number>>;
  /** LoRA alpha: one value, or one per module path (as `ranks`). */
  loraAlpha: number | Readonly<Record<string, number>>;
  /** Scale adapters by alpha/√r instead of alpha/r. */
  useRslora?: boolean;
  /** true (PEFT's default): A Kaiming-uniform, B zero. 'gaussian': A normal with std 1/r, B zero. */
  initLoraWeights?: boolean | 'gaussian';
  /** Modules kept trainable and saved whole, e.g. ['classifier']. */
  modulesToSave?: readonly string[];
  baseModelNameOrPath?: string | null;
  loraDropout?: number;
}

/**
 * Builds adapter_config.json for per-layer ranks. `r` is the most common rank, and
 * `rank_pattern` lists every module whose rank differs, keyed by its full module path.
 * `lora_alpha` and `alpha_pattern` work the same way.
 *
 * PEFT reads each rank_pattern key as a regular expression and applies it to a module whose
 * name matches `(.*\.)?(key)$`. Older releases matched `.*\.(key)$` and otherwise looked up
 * the module's full name exactly. A full path such as
 * `vit.encoder.layer.3.attention.attention.query` selects exactly that module under both
 * rules (its dots match any character, but no other ViT module name fits the pattern), so
 * every layer gets its own rank.
 */
export function buildAdapterConfig(options: AdapterConfigOptions): PeftAdapterConfig {
  const paths = Object.keys(options.ranks);
  if (paths.length === 0) throw new Error('invalid ranks: the adapter config needs at least one adapted module');
  const byModule = groupByModule(paths);

  for (const [path, rank] of Object.entries(options.ranks)) {
    if (!Number.isSafeInteger(rank) || rank < 1) throw new Error(`invalid rank ${rank} for ${path}: expected a positive integer`);
  }
  const r = mostCommon(Object.values(options.ranks));
  const rankPattern = differing(options.ranks, r);

  const alphas = typeof options.loraAlpha === 'number' ? Object.fromEntries(paths.map((p) => [p, options.loraAlpha as number])) : options.loraAlpha;
  for (const path of paths) {
    const alpha = alphas[path];
    if (alpha === undefined) throw new Error(`missing lora alpha for ${path}`);
    if (!Number.isFinite(alpha) || alpha <= 0) throw new Error(`invalid lora alpha ${alpha} for ${path}: expected a positive number`);
  }
  const extraAlpha = Object.keys(alphas).find((p) => !(p in options.ranks));
  if (extraAlpha !== undefined) throw new Error(`lora alpha given for ${extraAlpha}, which has no rank`);
  const loraAlpha = mostCommon(paths.map((p) => alphas[p]));
  const alphaPattern = differing(Object.fromEntries(paths.map((p) => [p, alphas[p]])), loraAlpha);

  const dropout = options.loraDropout ?? 0;
  if (!(dropout >= 0 && dropout < 1)) throw new Error(`invalid lora dropout ${dropout}: expected a value in [0, 1)`);

  return {
    peft_type: 'LORA',
    task_type: null,
    base_model_name_or_path: options.baseModelNameOrPath ?? null,
    inference_mode: true,
    r,
    lora_alpha: loraAlpha,
    lora_dropout: dropout,
    target_modules: targetModules(byModule),
    rank_pattern: rankPattern,
    alpha_pattern: alphaPattern,
    use_rslora: options.useRslora ?? false,
    bias: 'none',
    fan_in_fan_out: false,
    init_lora_weights: options.initLoraWeights ?? true,
    modules_to_save: options.modulesToSave && options.modulesToSave.length > 0 ? [...options.modulesToSave] : null,
  };
}

const PATH_PATTERN = new RegExp(`^${VIT_LAYER_PREFIX.replace(/\./g, '\\.')}\\.(\\d+)\\.(.+)$`);

/** Module name (e.g. 'output.dense') → layers that carry an adapter, checked to be 0 … L−1. */
function groupByModule(paths: readonly string[]): Map<string, number[]> {
  const known = new Set(Object.values(VIT_LAYER_MODULES));
  const byModule = new Map<string, number[]>();
  for (const path of paths) {
    const match = PATH_PATTERN.exec(path);
    if (!match || !known.has(match[2])) {
      throw new Error(`invalid module path '${path}': expected ${VIT_LAYER_PREFIX}.<layer>.<one of ${[...known].join(', ')}>`);
    }
    const layers = byModule.get(match[2]) ?? [];
    layers.push(Number(match[1]));
    byModule.set(match[2], layers);
  }

  for (const [module, layers] of byModule) {
    layers.sort((a, b) => a - b);
    if (layers.some((l, i) => l !== i)) {
      throw new Error(`module ${module} has adapters on layers [${layers.join(', ')}]: target_modules adapts every layer, so ranks must cover layers 0 … L−1`);
    }
  }
  return byModule;
}

/**
 * PEFT adapts a module when its name equals a target_modules entry or ends with '.' + entry.
 * A module name is used as is unless it would also select a ViT linear that carries no
 * adapter, as 'output.dense' would select 'attention.output.dense'. Such a module is listed
 * by full path, layer by layer.
 */
function targetModules(byModule: ReadonlyMap<string, number[]>): string[] {
  const targets: string[] = [];
  const untargeted = Object.values(VIT_LAYER_MODULES).filter((m) => !byModule.has(m));
  for (const [module, layers] of byModule) {
    const ambiguous = untargeted.some((other) => other.endsWith(`.${module}`));
    if (ambiguous) targets.push(...layers.map((l) => `${VIT_LAYER_PREFIX}.${l}.${module}`));
    else targets.push(module);
  }
  return targets.sort();
}

/** Returns the value that occurs most often. Ties go to the smallest, so the result is deterministic. */
function mostCommon(values: readonly number[]): number {
  const counts = new Map<number, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  let best = values[0];
  for (const [value, count] of counts) {
    const bestCount = counts.get(best)!;
    if (count > bestCount || (count === bestCount && value < best)) best = value;
  }
  return best;
}

function differing(values: Readonly<Record<string, number>>, common: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const path of Object.keys(values).sort(comparePaths)) if (values[path] !== common) out[path] = values[path];
  return out;
}

/** Orders module paths by layer number, then by name, so layer 10 follows layer 9. */
function comparePaths(a: string, b: string): number {
  const la = Number(PATH_PATTERN.exec(a)?.[1] ?? 0);
  const lb = Number(PATH_PATTERN.exec(b)?.[1] ?? 0);
  if (la !== lb) return la - lb;
  if (a < b) return -1;
  if (a > b) return 1;
  return 0;
}
