// The `prelora` command: train (full or PreLoRA), evaluate, export, report and compare.
// User errors (bad flags, configs, data files, missing adapter or checkpoint, NaN loss)
// print one line and exit non-zero; anything else is a bug and keeps its stack trace.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command, CommanderError } from 'commander';
import { NoAdapterError } from '../engine/device.ts';
import { destroyRuntime, initRuntime } from '../engine/runtime.ts';
import { DataError } from '../data/index.ts';
import { ConfigError, mergeConfig, parseConfig, PRESETS, type Config } from '../prelora/config.ts';
import { CheckpointError } from '../prelora/checkpoint.ts';
import { ConsoleProgress } from '../prelora/progress.ts';
import { prepareRun } from '../prelora/run.ts';
import { NumericalError } from '../prelora/trainer.ts';
import { buildConfig, collect, int, num, type TrainFlags } from './options.ts';
import { exportRun } from './export.ts';
import { compareRuns } from './compare.ts';
import { writeReport } from '../prelora/report.ts';

const USER_ERRORS = [ConfigError, DataError, CheckpointError, NoAdapterError, NumericalError];

function addTrainOptions(cmd: Command): Command {
  return cmd
    .option('-c, --config <file>', 'JSON config file (see README for every field)')
    .option('-p, --preset <name>', `named preset applied first: ${Object.keys(PRESETS).join(', ')}`)
    .option('--set <key=value>', 'override any config field, e.g. --set prelora.tau=1.0 (repeatable)', collect)
    .option('-o, --run-dir <dir>', 'run directory for config, metrics, checkpoints and report (default runs/latest)')
    .option('--epochs <n>', 'number of training epochs', int('--epochs'))
    .option('--batch-size <n>', 'images per optimizer step', int('--batch-size'))
    .option('--lr <value>', 'peak AdamW learning rate', num('--lr'))
    .option('--seed <n>', 'seed of initialisation, shuffling and augmentation', int('--seed'))
    .option('--model <preset>', 'model preset: tiny (28×28 grayscale), vit-s16, vit-b16, vit-l16 (224×224)')
    .option('--dataset <name>', 'fashion-mnist (bundled), mnist-idx, cifar10 or folder')
    .option('--data-path <dir>', 'directory of the dataset files (not used for fashion-mnist)')
    .option('--train-subset <n>', 'train on the first N images only (0 = all)', int('--train-subset'))
    .option('--val-subset <n>', 'evaluate on the first N test images only (0 = all)', int('--val-subset'))
    .option('--no-prelora', 'full-parameter training for the whole run (the baseline)')
    .option('--tau <percent>', 'τ: largest module weight-norm change between windows, percent', num('--tau'))
    .option('--zeta <percent>', 'ζ: largest training-loss change between windows, percent', num('--zeta'))
    .option('--windows <k>', 'k: number of windows the convergence test compares', int('--windows'))
    .option('--window-size <m>', 'm: epochs (or steps) per window', int('--window-size'))
    .option('--r-min <rank>', 'smallest LoRA rank (power of two)', int('--r-min'))
    .option('--r-max <rank>', 'largest LoRA rank (power of two)', int('--r-max'))
    .option('--lora-warmup <epochs>', 'w: epochs of joint base + adapter training before the base freezes', int('--lora-warmup'))
    .option('--relora', 'run a ReLoRA phase between full training and the switch')
    .option('--backend <name>', 'Dawn backend: default, vulkan, metal, d3d12')
    .option('--adapter <name>', 'exact adapter name to use (an unknown name lists the available ones)')
    .option('--unsafe-no-bounds-checks', "turn off Dawn's bounds-check transform around storage accesses (kernels guard their own tails)")
    .option('--max-steps <n>', 'stop after N optimizer steps in total (0 = no limit)', int('--max-steps'))
    .option('-q, --quiet', 'no progress bar; one line per epoch')
    .option('--no-report', 'do not write report.html at the end');
}

async function train(flags: TrainFlags & { resume?: boolean; overwrite?: boolean }): Promise<void> {
  let cfg: Config;
  if (flags.resume) {
    // A resumed run starts from its saved config; flags given now override it.
    const dir = flags.runDir ?? 'runs/latest';
    const saved = join(dir, 'config.json');
    if (!existsSync(saved)) throw new CheckpointError(`cannot resume: ${saved} not found; pass the run directory with --run-dir`);
    const base = JSON.parse(readFileSync(saved, 'utf8'));
    cfg = parseConfig(mergeConfig(base, buildConfig({ ...flags, preset: undefined }) && overridesOnly(flags)));
  } else {
    cfg = buildConfig(flags);
    const existing = join(cfg.run.dir, 'checkpoint.safetensors');
    if (existsSync(existing) && !flags.overwrite) {
      throw new ConfigError(`${cfg.run.dir} already contains a run (${existing}); pass --resume to continue it, --overwrite to start over, or choose another --run-dir`);
    }
  }

  await initRuntime({ backend: cfg.run.backend, adapterName: cfg.run.adapter, unsafeNoBoundsChecks: cfg.run.unsafeNoBoundsChecks });
  const progress = new ConsoleProgress(cfg.run.quiet);
  const { trainer, model, data } = await prepareRun(cfg, progress);
  if (flags.resume) {
    await trainer.resume();
    progress.note(`resumed from ${trainer.checkpointPath} at epoch ${trainer.epoch + 1}, step ${trainer.globalStep} (${trainer.phases.phase})`);
  }
  const params = model.parameters().reduce((s, p) => s + p.size, 0);
  progress.note(
    `model ${cfg.model.preset}: ${params.toLocaleString('en-US')} parameters | data ${cfg.data.dataset}: ${data.train.length} train, ${data.val.length} val images | ` +
      `${trainer.loader.stepsPerEpoch} steps/epoch × ${cfg.train.epochs} epochs | ${cfg.prelora.enabled ? 'PreLoRA' : 'full training'} → ${cfg.run.dir}`,
  );

  const summary = await trainer.run();
  if (cfg.run.report && summary.epochs.length > 0) {
    const path = await writeReport(cfg.run.dir);
    progress.note(`report: ${path}`);
  }
  if (summary.stoppedEarly) progress.note(`stopped after ${trainer.globalStep} steps (run.maxSteps); resume with --resume --run-dir ${cfg.run.dir}`);
}

/** Flags given on this command line only, as a partial config (for --resume). */
function overridesOnly(flags: TrainFlags): unknown {
  const empty = parseConfig({});
  const withFlags = buildConfig({ ...flags, preset: undefined, config: undefined });
  return diff(empty, withFlags);
}

function diff(a: unknown, b: unknown): unknown {
  if (typeof a !== 'object' || a === null || typeof b !== 'object' || b === null || Array.isArray(b)) return JSON.stringify(a) === JSON.stringify(b) ? undefined : b;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(b)) {
    const d = diff((a as Record<string, unknown>)[k], v);
    if (d !== undefined) out[k] = d;
  }
  return Object.keys(out).length > 0 ? out : undefined;
}

export function buildProgram(): Command {
  const program = new Command('prelora')
    .description('Pre-train Vision Transformers on WebGPU, switching to per-layer-rank LoRA once the model has partially converged.')
    .exitOverride()
    .showHelpAfterError(false);

  addTrainOptions(program.command('train').description('train a ViT (PreLoRA by default; --no-prelora for the full-training baseline)'))
    .option('--resume', 'continue the run in --run-dir from its last checkpoint')
    .option('--overwrite', 'start a new run in a --run-dir that already holds one')
    .action(async (opts) => train(opts));

  program
    .command('report')
    .description('write report.html for a run directory')
    .argument('<run-dir>', 'run directory with metrics.jsonl')
    .action(async (dir: string) => {
      if (!existsSync(join(dir, 'metrics.jsonl'))) throw new ConfigError(`metrics not found: ${join(dir, 'metrics.jsonl')}; is ${dir} a run directory?`);
      console.log(await writeReport(dir));
    });

  program
    .command('export')
    .description('write the trained model (adapters merged, HF ViT names) and the adapters alone in PEFT layout')
    .argument('<run-dir>', 'run directory with checkpoint.safetensors')
    .option('--out <dir>', 'output directory (default <run-dir>/export)')
    .action(async (dir: string, opts: { out?: string }) => {
      await exportRun(dir, opts.out ?? join(dir, 'export'));
    });

  addTrainOptions(
    program.command('compare').description('train the full baseline and PreLoRA with the same seed, data and epochs, and write one comparison table'),
  )
    .option('--out <dir>', 'directory for both runs and the comparison (default runs/compare)')
    .action(async (opts) => compareRuns(opts));

  return program;
}

export async function main(argv: string[]): Promise<number> {
  try {
    await buildProgram().parseAsync(argv, { from: 'user' });
    return 0;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode;
    if (USER_ERRORS.some((E) => err instanceof E) || (err as Error)?.name === 'RangeError') {
      process.stderr.write(`prelora: error: ${(err as Error).message}\n`);
      return err instanceof NumericalError ? 3 : 1;
    }
    throw err;
  } finally {
    destroyRuntime();
  }
}

const code = await main(process.argv.slice(2));
// Dawn's Node bindings keep the event loop alive; exit explicitly.
process.exit(code);
