// PEFT naming: adapter keys, adapter_config.json content, and a check that PEFT's own name
// matching (re-implemented below) would give every layer exactly the rank it was assigned.
import { describe, expect, it } from 'vitest';
import { buildAdapterConfig, peftLoraKeys, peftSavedModuleKey, vitModulePath } from '../model/peft.ts';
import { rankMapToModulePaths } from '../prelora/ranks.ts';

describe('peftLoraKeys', () => {
  it('names lora_A and lora_B', () => {
    expect(peftLoraKeys('vit.encoder.layer.3.attention.attention.query.weight')).toEqual({
      loraA: 'base_model.model.vit.encoder.layer.3.attention.attention.query.lora_A.weight',
      loraB: 'base_model.model.vit.encoder.layer.3.attention.attention.query.lora_B.weight',
    });
  });

  it('rejects a bias', () => {
    expect(() => peftLoraKeys('vit.encoder.layer.3.attention.attention.query.bias')).toThrow(
      "invalid base weight name 'vit.encoder.layer.3.attention.attention.query.bias'",
    );
  });

  it('rejects a bare suffix', () => {
    expect(() => peftLoraKeys('.weight')).toThrow('invalid base weight name');
  });
});

describe('peftSavedModuleKey', () => {
  it('prefixes a saved module parameter', () => {
    expect(peftSavedModuleKey('classifier.weight')).toBe('base_model.model.classifier.weight');
  });
});

describe('vitModulePath', () => {
  it('names a layer module', () => {
    expect(vitModulePath(11, 'd')).toBe('vit.encoder.layer.11.attention.output.dense');
  });

  it('rejects a negative layer', () => {
    expect(() => vitModulePath(-1, 'q')).toThrow('invalid layer -1');
  });
});

// Three layers, default targets q, k, v, d, o. Rank 8 occurs 12 times, so r = 8 and the
// three other ranks go to rank_pattern.
const RANKS = rankMapToModulePaths({ q: [8, 16, 8], k: [8, 8, 8], v: [64, 8, 8], d: [8, 8, 32], o: [8, 8, 8] });

describe('buildAdapterConfig', () => {
  it('builds the full config', () => {
    const config = buildAdapterConfig({ ranks: RANKS, loraAlpha: 16 });
    expect(config).toEqual({
      peft_type: 'LORA',
      task_type: null,
      base_model_name_or_path: null,
      inference_mode: true,
      r: 8,
      lora_alpha: 16,
      lora_dropout: 0,
      target_modules: ['attention.attention.key', 'attention.attention.query', 'attention.attention.value', 'attention.output.dense', 'output.dense'],
      rank_pattern: {
        'vit.encoder.layer.0.attention.attention.value': 64,
        'vit.encoder.layer.1.attention.attention.query': 16,
        'vit.encoder.layer.2.attention.output.dense': 32,
      },
      alpha_pattern: {},
      use_rslora: false,
      bias: 'none',
      fan_in_fan_out: false,
      init_lora_weights: true,
      modules_to_save: null,
    });
  });

  it('sets the options', () => {
    const config = buildAdapterConfig({
      ranks: RANKS,
      loraAlpha: 32,
      useRslora: true,
      initLoraWeights: 'gaussian',
      modulesToSave: ['classifier'],
      baseModelNameOrPath: 'google/vit-base-patch16-224-in21k',
      loraDropout: 0.1,
    });
    expect(config).toMatchObject({
      lora_alpha: 32,
      use_rslora: true,
      init_lora_weights: 'gaussian',
      modules_to_save: ['classifier'],
      base_model_name_or_path: 'google/vit-base-patch16-224-in21k',
      lora_dropout: 0.1,
    });
  });

  it('picks the smaller rank on a tie', () => {
    const ranks = rankMapToModulePaths({ q: [16, 8] });
    const config = buildAdapterConfig({ ranks, loraAlpha: 16 });
    expect(config.r).toBe(8);
    expect(config.rank_pattern).toEqual({ 'vit.encoder.layer.0.attention.attention.query': 16 });
  });

  it('orders rank_pattern by layer number', () => {
    const ranks = rankMapToModulePaths({ q: Array.from({ length: 12 }, (_, l) => (l === 2 || l === 10 ? 16 : 8)) });
    const keys = Object.keys(buildAdapterConfig({ ranks, loraAlpha: 16 }).rank_pattern);
    expect(keys).toEqual(['vit.encoder.layer.2.attention.attention.query', 'vit.encoder.layer.10.attention.attention.query']);
  });

  it('builds alpha_pattern from per-module alphas', () => {
    // Alpha 2·r per module: 16 for the rank-8 modules, 32, 128 and 64 for the others.
    const alphas = Object.fromEntries(Object.entries(RANKS).map(([path, r]) => [path, 2 * r]));
    const config = buildAdapterConfig({ ranks: RANKS, loraAlpha: alphas });
    expect(config.lora_alpha).toBe(16);
    expect(config.alpha_pattern).toEqual({
      'vit.encoder.layer.0.attention.attention.value': 128,
      'vit.encoder.layer.1.attention.attention.query': 32,
      'vit.encoder.layer.2.attention.output.dense': 64,
    });
  });

  it('lists output.dense by path when attention.output.dense has no adapter', () => {
    // 'output.dense' as a target would also match every 'attention.output.dense'.
    const ranks = rankMapToModulePaths({ q: [8, 8], o: [8, 16] });
    expect(buildAdapterConfig({ ranks, loraAlpha: 16 }).target_modules).toEqual([
      'attention.attention.query',
      'vit.encoder.layer.0.output.dense',
      'vit.encoder.layer.1.output.dense',
    ]);
  });

  it('rejects a path outside the encoder layers', () => {
    expect(() => buildAdapterConfig({ ranks: { classifier: 8 }, loraAlpha: 16 })).toThrow("invalid module path 'classifier'");
  });

  it('rejects missing layers', () => {
    const ranks = { 'vit.encoder.layer.0.output.dense': 8, 'vit.encoder.layer.2.output.dense': 8 };
    expect(() => buildAdapterConfig({ ranks, loraAlpha: 16 })).toThrow('module output.dense has adapters on layers [0, 2]');
  });

  it('rejects a zero rank', () => {
    expect(() => buildAdapterConfig({ ranks: { 'vit.encoder.layer.0.output.dense': 0 }, loraAlpha: 16 })).toThrow('invalid rank 0');
  });

  it('rejects a missing alpha', () => {
    const alphas = { 'vit.encoder.layer.0.attention.attention.query': 16 };
    expect(() => buildAdapterConfig({ ranks: RANKS, loraAlpha: alphas })).toThrow(
      'missing lora alpha for vit.encoder.layer.1.attention.attention.query',
    );
  });

  it('rejects a negative alpha', () => {
    expect(() => buildAdapterConfig({ ranks: RANKS, loraAlpha: -1 })).toThrow('invalid lora alpha -1');
  });

  it('rejects empty ranks', () => {
    expect(() => buildAdapterConfig({ ranks: {}, loraAlpha: 16 })).toThrow('invalid ranks');
  });
});

// ---------------------------------------------------------------------------------------
// PEFT's matching rules, re-implemented to check the config against every module name of a
// three-layer ViTForImageClassification.

const LAYER_LINEARS = [
  'attention.attention.query',
  'attention.attention.key',
  'attention.attention.value',
  'attention.output.dense',
  'intermediate.dense',
  'output.dense',
];
const MODEL_MODULES = [
  'vit.embeddings.patch_embeddings.projection',
  ...[0, 1, 2].flatMap((l) => LAYER_LINEARS.map((m) => `vit.encoder.layer.${l}.${m}`)),
  'classifier',
];

/** PEFT adapts a module whose name equals a list entry or ends with '.' + entry. */
function isTargeted(name: string, targets: readonly string[]): boolean {
  return targets.some((t) => name === t || name.endsWith(`.${t}`));
}

/** Current PEFT: the first key for which the name matches `(.*\.)?(key)$` from the start. */
function currentRank(name: string, pattern: Record<string, number>, r: number): number {
  const key = Object.keys(pattern).find((k) => new RegExp(`^(?:.*\\.)?(?:${k})$`).test(name));
  return key === undefined ? r : pattern[key];
}

/** Older PEFT: the first key matching `.*\.(key)$`, else an exact lookup of the full name. */
function olderRank(name: string, pattern: Record<string, number>, r: number): number {
  const key = Object.keys(pattern).find((k) => new RegExp(`^.*\\.(?:${k})$`).test(name)) ?? name;
  return pattern[key] ?? r;
}

describe('PEFT matching', () => {
  const config = buildAdapterConfig({ ranks: RANKS, loraAlpha: 16 });
  const adapted = MODEL_MODULES.filter((name) => isTargeted(name, config.target_modules));

  it('targets exactly the ranked modules', () => {
    expect(adapted.sort()).toEqual(Object.keys(RANKS).sort());
  });

  it('gives every layer its rank under the current rule', () => {
    const ranks = Object.fromEntries(adapted.map((name) => [name, currentRank(name, config.rank_pattern, config.r)]));
    expect(ranks).toEqual(RANKS);
  });

  it('gives every layer its rank under the older rule', () => {
    const ranks = Object.fromEntries(adapted.map((name) => [name, olderRank(name, config.rank_pattern, config.r)]));
    expect(ranks).toEqual(RANKS);
  });

  it('targets by path without attention.output.dense', () => {
    const ranks = rankMapToModulePaths({ o: [8, 16, 8] });
    const targets = buildAdapterConfig({ ranks, loraAlpha: 16 }).target_modules;
    expect(MODEL_MODULES.filter((name) => isTargeted(name, targets)).sort()).toEqual(Object.keys(ranks).sort());
  });
});
