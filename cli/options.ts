// Turns command-line flags into a config: a preset, then a JSON config file, then the
// individual flags, then any --set key=value pairs, each layer overriding the one before.
import { existsSync, readFileSync } from 'node:fs';
import { ConfigError, PRESETS, mergeConfig, parseConfig, type Config } from '../prelora/config.ts';

export interface TrainFlags {
  config?: string;
  preset?: string;
  set?: string[];
  runDir?: string;
  epochs?: number;
  batchSize?: number;
  lr?: number;
  seed?: number;
  model?: string;
  dataset?: string;
  dataPath?: string;
  trainSubset?: number;
  valSubset?: number;
  prelora?: boolean;
  tau?: number;
  zeta?: number;
  windows?: number;
  windowSize?: number;
  rMin?: number;
  rMax?: number;
  loraWarmup?: number;
  relora?: boolean;
  backend?: string;
  adapter?: string;
  unsafeNoBoundsChecks?: boolean;
  maxSteps?: number;
  quiet?: boolean;
  report?: boolean;
}

/** Parses "a.b.c=value" into {a: {b: {c: value}}}; the value is JSON when it parses, else a string. */
export function parseSet(pair: string): Record<string, unknown> {
  const eq = pair.indexOf('=');
  if (eq <= 0) throw new ConfigError(`invalid --set "${pair}": expected key=value, e.g. --set prelora.tau=1.0`);
  const keys = pair.slice(0, eq).split('.');
  const raw = pair.slice(eq + 1);
  let value: unknown = raw;
  try {
    value = JSON.parse(raw);
  } catch {
    // A bare word such as a path or an enum value stays a string.
  }
  const out: Record<string, unknown> = {};
  let cur = out;
  keys.forEach((k, i) => {
    if (i === keys.length - 1) cur[k] = value;
    else cur = (cur[k] = {}) as Record<string, unknown>;
  });
  return out;
}

function readConfigFile(path: string): unknown {
  if (!existsSync(path)) throw new ConfigError(`config file not found: ${path}`);
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new ConfigError(`invalid config file ${path}: ${(err as Error).message}`);
  }
}

export function buildConfig(f: TrainFlags): Config {
  let cfg: unknown = {};
  if (f.preset) {
    const p = PRESETS[f.preset];
    if (!p) throw new ConfigError(`unknown preset "${f.preset}"; choose one of ${Object.keys(PRESETS).join(', ')}`);
    cfg = mergeConfig(cfg, p);
  }
  if (f.config) cfg = mergeConfig(cfg, readConfigFile(f.config));

  const flags = {
    model: { preset: f.model },
    data: { dataset: f.dataset, path: f.dataPath, trainSubset: f.trainSubset, valSubset: f.valSubset },
    train: { epochs: f.epochs, batchSize: f.batchSize, lr: f.lr, seed: f.seed },
    prelora: {
      enabled: f.prelora, tau: f.tau, zeta: f.zeta, windows: f.windows, windowSize: f.windowSize,
      rMin: f.rMin, rMax: f.rMax, warmupEpochs: f.loraWarmup, relora: f.relora === undefined ? undefined : { enabled: f.relora },
    },
    run: {
      dir: f.runDir, backend: f.backend, adapter: f.adapter, maxSteps: f.maxSteps, quiet: f.quiet, report: f.report,
      unsafeNoBoundsChecks: f.unsafeNoBoundsChecks,
    },
  };
  cfg = mergeConfig(cfg, dropUndefined(flags));
  for (const pair of f.set ?? []) cfg = mergeConfig(cfg, parseSet(pair));
  return parseConfig(cfg);
}

function dropUndefined(o: unknown): unknown {
  if (o === null || typeof o !== 'object' || Array.isArray(o)) return o;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) {
    const d = dropUndefined(v);
    if (d !== undefined && !(typeof d === 'object' && d !== null && !Array.isArray(d) && Object.keys(d).length === 0)) out[k] = d;
  }
  return out;
}

/** Commander argument parsers that reject bad numbers with the flag's name. */
export function int(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n)) throw new ConfigError(`invalid ${name} "${v}": expected an integer`);
    return n;
  };
}

export function num(name: string) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n)) throw new ConfigError(`invalid ${name} "${v}": expected a number`);
    return n;
  };
}

export function collect(v: string, prev: string[] = []): string[] {
  return [...prev, v];
}
