// `prelora export`: from a run's checkpoint, writes
//   model.safetensors + config.json     the model with every adapter merged (W + s·B·A),
//                                       HF ViTForImageClassification names and shapes;
//   adapter/adapter_model.safetensors   the adapters alone, with PEFT's key names,
//   adapter/adapter_config.json         and PEFT's config (per-layer ranks in rank_pattern).
// Runs on the host: merging is one small GEMM per adapted layer and needs no GPU.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildAdapterConfig, peftLoraKeys, peftSavedModuleKey } from '../model/peft.ts';
import { readSafetensors, writeSafetensors, type TensorInput } from '../model/safetensors.ts';
import type { VitConfig } from '../model/vit.ts';
import { CheckpointError } from '../prelora/checkpoint.ts';
import { parseConfig } from '../prelora/config.ts';

export interface ExportResult {
  modelPath: string;
  adapterDir: string | null;
  /** Full module path → rank of every exported adapter. */
  ranks: Record<string, number>;
}

/** W [out, in] += s·B [out, R]·A [R, in], accumulated in float64. */
export function mergeOnHost(w: Float32Array, a: Float32Array, b: Float32Array, out: number, inF: number, R: number, s: number): Float32Array {
  const merged = new Float32Array(w.length);
  const row = new Float64Array(inF);
  for (let o = 0; o < out; o++) {
    row.fill(0);
    for (let r = 0; r < R; r++) {
      const bor = b[o * R + r];
      if (bor === 0) continue;
      const aRow = r * inF;
      for (let i = 0; i < inF; i++) row[i] += bor * a[aRow + i];
    }
    for (let i = 0; i < inF; i++) merged[o * inF + i] = w[o * inF + i] + s * row[i];
  }
  return merged;
}

export async function exportRun(runDir: string, outDir: string): Promise<ExportResult> {
  const path = join(runDir, 'checkpoint.safetensors');
  const file = await readSafetensors(path).catch((err: Error) => {
    throw new CheckpointError(err.message.includes('ENOENT') ? `checkpoint not found: ${path}; train first or pass the run directory` : err.message);
  });
  if (!file.metadata.model) throw new CheckpointError(`invalid checkpoint ${path}: model config missing`);
  const cfg = parseConfig(JSON.parse(file.metadata.config));
  const vit = JSON.parse(file.metadata.model) as VitConfig;

  const model: Record<string, TensorInput> = {};
  const adapter: Record<string, TensorInput> = {};
  const ranks: Record<string, number> = {};
  const alphas: Record<string, number> = {};
  for (const [name, t] of file.tensors) {
    if (name.startsWith('optimizer.') || name.includes('.lora_A.') || name.includes('.lora_B.')) continue;
    let data = t.data as Float32Array;
    let shape = t.shape;
    const base = name.slice(0, -'.weight'.length);
    const a = file.tensors.get(`${base}.lora_A.weight`);
    const b = file.tensors.get(`${base}.lora_B.weight`);
    if (name.endsWith('.weight') && a && b) {
      const [R, inF] = a.shape;
      const out = b.shape[0];
      const s = cfg.prelora.rsLora ? cfg.prelora.loraAlpha / Math.sqrt(R) : cfg.prelora.loraAlpha / R;
      data = mergeOnHost(data, a.data as Float32Array, b.data as Float32Array, out, inF, R, s);
      const keys = peftLoraKeys(name);
      adapter[keys.loraA] = { shape: a.shape, data: a.data as Float32Array };
      adapter[keys.loraB] = { shape: b.shape, data: b.data as Float32Array };
      ranks[base] = R;
      alphas[base] = cfg.prelora.loraAlpha;
    }
    if (name === 'vit.embeddings.patch_embeddings.projection.weight') shape = [vit.hidden, vit.channels, vit.patchSize, vit.patchSize];
    model[name] = { shape, data };
  }

  mkdirSync(outDir, { recursive: true });
  const modelPath = join(outDir, 'model.safetensors');
  await writeSafetensors(modelPath, model, { format: 'pt' });
  writeFileSync(join(outDir, 'config.json'), JSON.stringify(hfConfig(vit), null, 2) + '\n');

  let adapterDir: string | null = null;
  if (Object.keys(ranks).length > 0) {
    adapterDir = join(outDir, 'adapter');
    mkdirSync(adapterDir, { recursive: true });
    const keep = [
      ...(cfg.prelora.keepClassifier ? ['classifier'] : []),
    ];
    // The classifier, when kept trainable, is saved whole, as PEFT's modules_to_save does.
    for (const m of keep) {
      for (const suffix of ['weight', 'bias']) {
        const t = model[`${m}.${suffix}`];
        if (t) adapter[peftSavedModuleKey(`${m}.modules_to_save.default.${suffix}`)] = t;
      }
    }
    await writeSafetensors(join(adapterDir, 'adapter_model.safetensors'), adapter, { format: 'pt' });
    const config = buildAdapterConfig({ ranks, loraAlpha: alphas, useRslora: cfg.prelora.rsLora, modulesToSave: keep });
    writeFileSync(join(adapterDir, 'adapter_config.json'), JSON.stringify(config, null, 2) + '\n');
  }
  console.log(`exported ${modelPath}${adapterDir ? ` and ${adapterDir} (${Object.keys(ranks).length} adapters)` : ''}`);
  return { modelPath, adapterDir, ranks };
}

/** Hugging Face ViTConfig for ViTForImageClassification. */
function hfConfig(v: VitConfig): Record<string, unknown> {
  return {
    architectures: ['ViTForImageClassification'],
    model_type: 'vit',
    hidden_size: v.hidden,
    num_hidden_layers: v.layers,
    num_attention_heads: v.heads,
    intermediate_size: v.mlpDim,
    // Our GELU is the tanh approximation; HF names it gelu_pytorch_tanh.
    hidden_act: 'gelu_pytorch_tanh',
    hidden_dropout_prob: 0,
    attention_probs_dropout_prob: 0,
    layer_norm_eps: v.layerNormEps,
    image_size: v.imageSize,
    patch_size: v.patchSize,
    num_channels: v.channels,
    qkv_bias: true,
    num_labels: v.numClasses,
    id2label: Object.fromEntries(Array.from({ length: v.numClasses }, (_, i) => [String(i), `LABEL_${i}`])),
    label2id: Object.fromEntries(Array.from({ length: v.numClasses }, (_, i) => [`LABEL_${i}`, i])),
  };
}
