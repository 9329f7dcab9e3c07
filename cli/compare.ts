// `prelora compare`: the full-training baseline and PreLoRA, same seed, data and epoch
// budget, run one after the other in one process on one adapter, then one table and one
// plot of both. Side by side in one run is what makes the time ratios meaningful.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describeAdapter } from '../engine/device.ts';
import { initRuntime } from '../engine/runtime.ts';
import { compareReport, writeReport } from '../prelora/report.ts';
import { ConsoleProgress } from '../prelora/progress.ts';
import { loadDatasets, prepareRun } from '../prelora/run.ts';
import { buildConfig, type TrainFlags } from './options.ts';

export async function compareRuns(flags: TrainFlags & { out?: string }): Promise<void> {
  const out = flags.out ?? 'runs/compare';
  const baseline = buildConfig({ ...flags, prelora: false, runDir: join(out, 'full') });
  const prelora = buildConfig({ ...flags, prelora: true, runDir: join(out, 'prelora') });

  const rt = await initRuntime({ backend: baseline.run.backend, adapterName: baseline.run.adapter, unsafeNoBoundsChecks: baseline.run.unsafeNoBoundsChecks });
  const data = await loadDatasets(baseline);
  for (const cfg of [baseline, prelora]) {
    const progress = new ConsoleProgress(cfg.run.quiet);
    progress.note(`== ${cfg.prelora.enabled ? 'PreLoRA' : 'full training (baseline)'} → ${cfg.run.dir}`);
    const { trainer, model } = await prepareRun(cfg, progress, data);
    await trainer.run();
    await writeReport(cfg.run.dir);
    trainer.optimizer.dispose();
    model.release();
  }

  const { markdown } = await compareReport(baseline.run.dir, prelora.run.dir, join(out, 'compare.html'));
  const header = `Adapter: ${describeAdapter(rt.adapter)}. Same seed (${baseline.train.seed}), data and ${baseline.train.epochs} epochs.\n\n`;
  writeFileSync(join(out, 'compare.md'), header + markdown + '\n');
  process.stdout.write(header + markdown + '\n');
  process.stderr.write(`comparison: ${join(out, 'compare.md')} and ${join(out, 'compare.html')}\n`);
}
