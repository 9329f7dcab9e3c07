// Checkpoints: one safetensors file per run directory holding every parameter (HF ViT
// names, adapters included), the AdamW state of every trained parameter
// ("optimizer.m.<name>", "optimizer.v.<name>"), and the trainer state (epoch, step, phase,
// window history, rank map, metrics so far) as JSON metadata. Written atomically, so a
// crash or a NaN stop never leaves a half-written file in place of the last good one.
import { existsSync } from 'node:fs';
import { runtime } from '../engine/runtime.ts';
import type { OptimizerStateDict } from '../engine/optim.ts';
import { readSafetensors, writeSafetensors, type TensorInput } from '../model/safetensors.ts';
import type { EpochMetrics } from './metrics.ts';
import type { PhaseStateJson } from './phases.ts';
import type { Trainer } from './trainer.ts';

const FORMAT = 'prelora-checkpoint-v1';

export interface TrainerState {
  epoch: number;
  stepInEpoch: number;
  globalStep: number;
  phases: PhaseStateJson;
  metrics: EpochMetrics[];
}

export class CheckpointError extends Error {
  override name = 'CheckpointError';
}

export async function saveCheckpoint(path: string, trainer: Trainer): Promise<void> {
  const tensors: Record<string, TensorInput> = {};
  for (const p of trainer.model.parameters()) {
    tensors[p.name!] = { shape: p.shape, data: await p.toArray() };
  }
  const opt = await trainer.optimizer.stateDict();
  const steps: Record<string, number> = {};
  for (const [name, s] of Object.entries(opt)) {
    tensors[`optimizer.m.${name}`] = { shape: [s.m.length], data: s.m };
    tensors[`optimizer.v.${name}`] = { shape: [s.v.length], data: s.v };
    steps[name] = s.step;
  }
  const metadata = {
    format: FORMAT,
    config: JSON.stringify(trainer.cfg),
    model: JSON.stringify(trainer.model.cfg),
    state: JSON.stringify(trainer.state()),
    optimizerSteps: JSON.stringify(steps),
  };
  await writeSafetensors(path, tensors, metadata);
}

/**
 * Loads a checkpoint into a freshly built trainer: first the phase (which re-attaches
 * adapters of the saved ranks and re-applies freezing), then parameters and AdamW state.
 */
export async function loadCheckpoint(path: string, trainer: Trainer): Promise<TrainerState> {
  if (!existsSync(path)) throw new CheckpointError(`checkpoint not found: ${path}; start without --resume, or point run.dir at a run directory`);
  const file = await readSafetensors(path);
  if (file.metadata.format !== FORMAT) throw new CheckpointError(`invalid checkpoint ${path}: format is "${file.metadata.format ?? 'missing'}", expected "${FORMAT}"`);
  const state = JSON.parse(file.metadata.state) as TrainerState;

  trainer.phases.restore(state.phases);

  for (const p of trainer.model.parameters()) {
    const t = file.tensors.get(p.name!);
    if (!t) throw new CheckpointError(`invalid checkpoint ${path}: parameter ${p.name} is missing`);
    if (t.data.length !== p.size) throw new CheckpointError(`invalid checkpoint ${path}: ${p.name} has ${t.data.length} values, the model expects ${p.size} ([${p.shape}]); was it written with another model config?`);
    p.write(t.data as Float32Array);
  }

  const steps = JSON.parse(file.metadata.optimizerSteps ?? '{}') as Record<string, number>;
  const dict: OptimizerStateDict = {};
  for (const [name, step] of Object.entries(steps)) {
    dict[name] = {
      m: file.tensors.get(`optimizer.m.${name}`)!.data as Float32Array,
      v: file.tensors.get(`optimizer.v.${name}`)!.data as Float32Array,
      step,
    };
  }
  trainer.optimizer.loadStateDict(dict);
  await runtime().sync();
  return state;
}

/** Reads the config a checkpoint was written with, to rebuild the model before loading it. */
export async function checkpointConfig(path: string): Promise<unknown> {
  if (!existsSync(path)) throw new CheckpointError(`checkpoint not found: ${path}`);
  const file = await readSafetensors(path);
  if (file.metadata.format !== FORMAT) throw new CheckpointError(`invalid checkpoint ${path}: not a PreLoRA checkpoint`);
  return JSON.parse(file.metadata.config);
}
