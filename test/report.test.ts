// The run report and the baseline/PreLoRA comparison, on two synthetic run directories.
// The PreLoRA run has 3 full epochs, switches at the end of epoch 3, trains 2 warmup
// epochs, freezes at the end of epoch 5 and ends with 3 lora epochs. The baseline trains
// 8 full epochs. No GPU is needed.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { EpochMetrics } from '../prelora/metrics.ts';
import type { Phase } from '../prelora/phases.ts';
import { compareReport, phaseStats, writeReport } from '../prelora/report.ts';

const RANKS = { q: [8, 16, 32, 64], k: [8, 8, 16, 32], v: [64, 32, 16, 8] };
const FULL_PARAMS = 1_000_000;
const WARMUP_PARAMS = 1_050_000;
const LORA_PARAMS = 50_000;

/** Builds one epoch's record. The numbers only need to be distinct enough to find in the output. */
function epochRecord(epoch: number, phase: Phase, over: Partial<EpochMetrics> = {}): EpochMetrics {
  const layerNorms = (base: number) => [0, 1, 2, 3].map((l) => base + 0.1 * l + 0.01 * epoch);
  return {
    epoch, step: 100 * epoch, phase,
    loss: 2 / epoch, trainTop1: 0.5 + 0.04 * epoch, valLoss: 2.1 / epoch, valTop1: 0.5 + 0.04 * epoch, lr: 1e-3,
    epochSeconds: 12, imagesPerSecond: 5000, liveBytes: 1 << 20, peakBytes: 8 << 20, optimizerBytes: 1 << 20,
    trainableParams: FULL_PARAMS,
    normMeans: { q: 10 + 0.01 * epoch, k: 11 + 0.01 * epoch, v: 12 + 0.01 * epoch },
    norms: { q: layerNorms(10), k: layerNorms(11), v: layerNorms(12) },
    ...over,
  };
}

function preloraMetrics(): EpochMetrics[] {
  const adapters = { ranks: RANKS };
  return [
    epochRecord(1, 'full'),
    epochRecord(2, 'full'),
    epochRecord(3, 'full', { ...adapters, trainableParams: WARMUP_PARAMS, transition: { from: 'full', to: 'warmup', reason: 'convergence test passed' } }),
    epochRecord(4, 'warmup', { ...adapters, trainableParams: WARMUP_PARAMS, epochSeconds: 14, imagesPerSecond: 4000, peakBytes: 9 << 20 }),
    epochRecord(5, 'warmup', { ...adapters, trainableParams: LORA_PARAMS, epochSeconds: 14, imagesPerSecond: 4000, peakBytes: 9 << 20, transition: { from: 'warmup', to: 'lora', reason: '2 warmup epoch(s) done; base frozen' } }),
    epochRecord(6, 'lora', { ...adapters, trainableParams: LORA_PARAMS, epochSeconds: 6, imagesPerSecond: 10000, peakBytes: 4 << 20 }),
    epochRecord(7, 'lora', { ...adapters, trainableParams: LORA_PARAMS, epochSeconds: 6, imagesPerSecond: 10000, peakBytes: 4 << 20 }),
    epochRecord(8, 'lora', { ...adapters, trainableParams: LORA_PARAMS, epochSeconds: 6, imagesPerSecond: 10000, peakBytes: 4 << 20, valTop1: 0.835, valLoss: 0.4321 }),
  ];
}

function baselineMetrics(): EpochMetrics[] {
  const ms = [1, 2, 3, 4, 5, 6, 7, 8].map((e) => epochRecord(e, 'full'));
  ms[7] = { ...ms[7], valTop1: 0.84, valLoss: 0.4567 };
  return ms;
}

function writeRun(dir: string, metrics: EpochMetrics[], preloraEnabled: boolean): void {
  mkdirSync(dir, { recursive: true });
  const config = { model: { preset: 'tiny', layers: 4 }, data: { dataset: 'fashion-mnist', trainSubset: 0, valSubset: 0 }, train: { epochs: 8 }, prelora: { enabled: preloraEnabled } };
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  writeFileSync(join(dir, 'metrics.jsonl'), metrics.map((m) => JSON.stringify(m) + '\n').join(''));
}

/** The HTML with the SVG namespace declarations removed: what is left must name no URL. */
function withoutNamespaces(html: string): string {
  return html.replace(/xmlns(:xlink)?="http:\/\/www\.w3\.org\/[^"]*"/g, '');
}

function count(haystack: string, needle: string): number {
  return haystack.split(needle).length - 1;
}

let root = '';
let preloraDir = '';
let baselineDir = '';

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'prelora-report-'));
  preloraDir = join(root, 'prelora');
  baselineDir = join(root, 'full');
  writeRun(preloraDir, preloraMetrics(), true);
  writeRun(baselineDir, baselineMetrics(), false);
});

afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

describe('writeReport', () => {
  let html = '';
  let path = '';

  beforeAll(async () => {
    path = await writeReport(preloraDir, { title: 'Synthetic PreLoRA run' });
    html = readFileSync(path, 'utf8');
  });

  it('writes report.html in the run directory', () => {
    expect(path).toBe(join(preloraDir, 'report.html'));
    expect(existsSync(path)).toBe(true);
  });

  it('has one svg per plot', () => {
    // loss, top-1, module norms, layer norms, rank map, epoch time
    expect(count(html, '<svg')).toBe(6);
  });

  it('uses the title', () => {
    expect(html).toContain('<title>Synthetic PreLoRA run</title>');
  });

  it('labels the switch and the freeze', () => {
    expect(html).toContain('switch (epoch 3)');
    expect(html).toContain('freeze (epoch 5)');
  });

  it('lists every transition with its reason', () => {
    expect(html).toContain('convergence test passed');
    expect(html).toContain('2 warmup epoch(s) done; base frozen');
  });

  it('shows preset, dataset and final top-1', () => {
    expect(html).toContain('tiny (layers 4)');
    expect(html).toContain('fashion-mnist');
    expect(html).toContain('83.50%');
  });

  it('writes each rank in its cell', () => {
    // vega labels each text mark with its fields, so a cell is found by module and layer.
    for (const [module, ranks] of Object.entries(RANKS)) {
      ranks.forEach((rank, layer) => {
        expect(html).toMatch(new RegExp(`aria-label="module: ${module}; layer: ${layer}; rank: ${rank}"[^>]*>${rank}</text>`));
      });
    }
  });

  it('names no URL besides the SVG namespaces', () => {
    expect(withoutNamespaces(html)).not.toContain('http');
  });

  it('tabulates phases with trainable params', () => {
    expect(html).toContain('1,050,000');
    expect(html).toContain('50,000');
  });
});

describe('writeReport on a baseline', () => {
  let html = '';

  beforeAll(async () => {
    html = readFileSync(await writeReport(baselineDir), 'utf8');
  });

  it('has one svg per plot', () => {
    // loss, top-1, module norms, layer norms, epoch time
    expect(count(html, '<svg')).toBe(5);
  });

  it('omits the rank map', () => {
    expect(html).toContain('No adapters were attached');
  });

  it('reports no phase change', () => {
    expect(html).toContain('No phase changes');
  });

  it('reports no switch epoch', () => {
    expect(html).toContain('none: adapters of per-layer ranks were never attached');
  });
});

describe('writeReport options', () => {
  it('falls back to a recorded module', async () => {
    const html = readFileSync(await writeReport(preloraDir, { normModule: 'i' }), 'utf8');
    expect(html).toContain('Module i has no recorded norms, so module q is shown.');
  });
});

describe('writeReport errors', () => {
  it('rejects a directory without metrics', async () => {
    await expect(writeReport(join(root, 'missing'))).rejects.toThrow('metrics not found');
  });
});

describe('phaseStats', () => {
  it('counts trainable params entering each epoch', () => {
    const stats = phaseStats(preloraMetrics());
    expect(stats.map((s) => s.trainableParams)).toEqual([
      { min: FULL_PARAMS, max: FULL_PARAMS },
      { min: WARMUP_PARAMS, max: WARMUP_PARAMS },
      { min: LORA_PARAMS, max: LORA_PARAMS },
    ]);
  });

  it('has no count for a lone first epoch that changed phase', () => {
    const metrics = [
      epochRecord(1, 'full', { trainableParams: 300, transition: { from: 'full', to: 'relora', reason: '1 full epoch(s) done' } }),
      epochRecord(2, 'relora', { trainableParams: 300 }),
    ];
    expect(phaseStats(metrics)[0].trainableParams).toBeNull();
  });

  it('averages epoch time per phase', () => {
    expect(phaseStats(preloraMetrics()).map((s) => s.meanEpochSeconds)).toEqual([12, 14, 6]);
  });
});

describe('compareReport', () => {
  let result: Awaited<ReturnType<typeof compareReport>>;
  let lines: string[] = [];

  beforeAll(async () => {
    result = await compareReport(baselineDir, preloraDir, join(root, 'compare', 'compare.html'));
    lines = result.markdown.split('\n');
  });

  it('writes the HTML with two plots', () => {
    const html = readFileSync(result.path, 'utf8');
    expect(count(html, '<svg')).toBe(2);
    expect(withoutNamespaces(html)).not.toContain('http');
  });

  it('has a markdown row per run', () => {
    expect(lines.filter((l) => l.startsWith('| baseline |'))).toHaveLength(1);
    expect(lines.filter((l) => l.startsWith('| PreLoRA |'))).toHaveLength(1);
  });

  it('puts final top-1, loss and time in the baseline row', () => {
    const row = lines.find((l) => l.startsWith('| baseline |'))!;
    expect(row).toContain('| 84.00% | 0.4567 | 96.0 |');
  });

  it('puts per-phase figures in the PreLoRA row', () => {
    const row = lines.find((l) => l.startsWith('| PreLoRA |'))!;
    // 3 × 12 s + 2 × 14 s + 3 × 6 s = 82 s
    expect(row).toContain('| 83.50% | 0.4321 | 82.0 |');
    expect(row).toContain('full 12.0, warmup 14.0, lora 6.0');
    expect(row).toContain('full 5000, warmup 4000, lora 10000');
    expect(row).toContain('full 8.0 MiB, warmup 9.0 MiB, lora 4.0 MiB');
    expect(row).toContain('full 1,000,000, warmup 1,050,000, lora 50,000');
  });

  it('gives switch epoch and ranks', () => {
    const row = lines.find((l) => l.startsWith('| PreLoRA |'))!;
    expect(row).toContain('| 3 | q [8,16,32,64]; k [8,8,16,32]; v [64,32,16,8] |');
  });

  it('returns the rows as data', () => {
    expect(result.rows.map((r) => r.switchEpoch)).toEqual([null, 3]);
    expect(result.rows[1].phases.map((s) => s.phase)).toEqual(['full', 'warmup', 'lora']);
  });

  it('states the time ratio', () => {
    // 82 s / 96 s = 0.854…; a lora epoch 6 s against a full baseline epoch 12 s
    expect(result.markdown).toContain('0.85×');
    expect(result.markdown).toContain('0.50×');
  });
});
