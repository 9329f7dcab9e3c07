// The HTML report of a run directory, and the comparison of a baseline run with a PreLoRA
// run. It reads only config.json and metrics.jsonl, so it works on finished, stopped and
// resumed runs alike. Plots are vega-lite specs rendered to SVG in Node (no canvas, no
// browser) and inlined, so the HTML file is self-contained and refers to no URL.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import type { TopLevelSpec } from 'vega-lite';
import type { EpochMetrics } from './metrics.ts';
import { readMetrics } from './metrics.ts';
import type { Phase } from './phases.ts';
import { formatBytes } from './progress.ts';

export interface ReportOptions {
  /** Page title, by default "PreLoRA run <directory name>". */
  title?: string;
  /** Target module whose per-layer norms are plotted (default 'q'). */
  normModule?: string;
}

/** One phase of one run: the epochs that trained in it and their costs. */
export interface PhaseStats {
  phase: Phase;
  /** Epoch numbers (1-based) that trained in this phase. */
  epochs: number[];
  meanEpochSeconds: number;
  meanImagesPerSecond: number;
  maxPeakBytes: number;
  /** Trainable parameters during the phase's epochs, or null when no epoch's count is known. */
  trainableParams: { min: number; max: number } | null;
}

/** One row of the comparison table. */
export interface CompareRow {
  run: string;
  dir: string;
  finalValTop1: number;
  finalValLoss: number;
  totalSeconds: number;
  phases: PhaseStats[];
  /** Epoch at whose end adapters were attached, or null when the run never switched. */
  switchEpoch: number | null;
  /** Adapter ranks per module and layer at the last epoch that had adapters, or null when none did. */
  ranks: Record<string, number[]> | null;
}

export interface CompareResult {
  path: string;
  rows: CompareRow[];
  markdown: string;
}

// ---- reading a run ------------------------------------------------------------------------

/** The few config.json fields the report shows. Any of them may be missing in an old run. */
interface RunConfig {
  model?: { preset?: string; hidden?: number; layers?: number; heads?: number; mlpDim?: number; patchSize?: number };
  data?: { dataset?: string; trainSubset?: number; valSubset?: number };
  train?: { epochs?: number; seed?: number };
  prelora?: { enabled?: boolean; relora?: { enabled?: boolean } };
}

interface Run {
  dir: string;
  config: RunConfig | null;
  metrics: EpochMetrics[];
}

function loadRun(runDir: string): Run {
  const metricsPath = join(runDir, 'metrics.jsonl');
  if (!existsSync(metricsPath)) throw new Error(`metrics not found: ${metricsPath}; is ${runDir} a run directory?`);
  const metrics = readMetrics(metricsPath);
  if (metrics.length === 0) throw new Error(`no epochs in ${metricsPath}: the run has not finished an epoch yet`);

  const configPath = join(runDir, 'config.json');
  const config = existsSync(configPath) ? (JSON.parse(readFileSync(configPath, 'utf8')) as RunConfig) : null;
  return { dir: runDir, config, metrics };
}

// ---- phase changes ------------------------------------------------------------------------

/** A phase change, drawn as a vertical rule at the end of the epoch that carries it. */
interface PhaseMarker {
  epoch: number;
  label: string;
}

function isSwitch(t: NonNullable<EpochMetrics['transition']>): boolean {
  return (t.from === 'full' || t.from === 'relora') && (t.to === 'warmup' || t.to === 'lora');
}

/** Epoch at whose end adapters of per-layer ranks were attached (full or ReLoRA → warmup or lora). */
function switchEpoch(metrics: EpochMetrics[]): number | null {
  return metrics.find((m) => m.transition && isSwitch(m.transition))?.epoch ?? null;
}

/** Epoch at whose end the base weights were frozen (→ lora). */
function freezeEpoch(metrics: EpochMetrics[]): number | null {
  return metrics.find((m) => m.transition?.to === 'lora')?.epoch ?? null;
}

function phaseMarkers(metrics: EpochMetrics[], prefix = ''): PhaseMarker[] {
  const markers: PhaseMarker[] = [];
  for (const m of metrics) {
    const t = m.transition;
    if (!t) continue;

    let kind = `${t.from} → ${t.to}`;
    if (t.to === 'relora') kind = 'ReLoRA start';
    else if (isSwitch(t)) kind = t.to === 'lora' ? 'switch + freeze' : 'switch';
    else if (t.to === 'lora') kind = 'freeze';
    markers.push({ epoch: m.epoch, label: `${prefix}${kind} (epoch ${m.epoch})` });
  }
  return markers;
}

/** Adapter ranks from the last epoch that recorded them. */
function finalRanks(metrics: EpochMetrics[]): Record<string, number[]> | null {
  for (let i = metrics.length - 1; i >= 0; i--) {
    const ranks = metrics[i].ranks;
    if (ranks && Object.keys(ranks).length > 0) return ranks;
  }
  return null;
}

// ---- per-phase statistics -----------------------------------------------------------------

/**
 * Trainable parameters during epoch i. The count is taken at the epoch end, after any phase
 * change made there, so an epoch trained with the count recorded at the previous epoch's
 * end. The first epoch's own count is right only when no phase change followed it.
 */
function trainableDuring(metrics: EpochMetrics[], i: number): number | null {
  if (i > 0) return metrics[i - 1].trainableParams;
  return metrics[0].transition ? null : metrics[0].trainableParams;
}

/** Groups a run's epochs by the phase they trained in, in phase order, and sums up each group's cost. */
export function phaseStats(metrics: EpochMetrics[]): PhaseStats[] {
  const out: PhaseStats[] = [];
  for (const phase of PHASES) {
    const indices = metrics.flatMap((m, i) => (m.phase === phase ? [i] : []));
    if (indices.length === 0) continue;

    const rows = indices.map((i) => metrics[i]);
    const counts = indices.map((i) => trainableDuring(metrics, i)).filter((n): n is number => n !== null);
    out.push({
      phase,
      epochs: rows.map((m) => m.epoch),
      meanEpochSeconds: mean(rows.map((m) => m.epochSeconds)),
      meanImagesPerSecond: mean(rows.map((m) => m.imagesPerSecond)),
      maxPeakBytes: Math.max(...rows.map((m) => m.peakBytes)),
      trainableParams: counts.length > 0 ? { min: Math.min(...counts), max: Math.max(...counts) } : null,
    });
  }
  return out;
}

function mean(xs: number[]): number {
  return xs.reduce((s, x) => s + x, 0) / xs.length;
}

// ---- formatting ---------------------------------------------------------------------------

const PHASES: Phase[] = ['full', 'relora', 'warmup', 'lora'];
/** One colour per phase, the same in every plot (Tableau 10). */
const PHASE_COLORS: Record<Phase, string> = { full: '#4c78a8', relora: '#b279a2', warmup: '#f58518', lora: '#54a24b' };

function percent(fraction: number): string {
  return `${(100 * fraction).toFixed(2)}%`;
}

function formatDuration(seconds: number): string {
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const h = Math.floor(seconds / 3600);
  const min = Math.floor((seconds % 3600) / 60);
  const s = Math.round(seconds % 60);
  return h > 0 ? `${h} h ${min} min ${s} s` : `${min} min ${s} s`;
}

function formatCount(n: number): string {
  return n.toLocaleString('en-US');
}

function formatTrainable(range: PhaseStats['trainableParams']): string {
  if (!range) return 'n/a';
  if (range.min === range.max) return formatCount(range.min);
  return `${formatCount(range.min)}–${formatCount(range.max)}`;
}

function formatEpochs(epochs: number[]): string {
  const first = epochs[0];
  const last = epochs[epochs.length - 1];
  const contiguous = last - first + 1 === epochs.length;
  if (epochs.length === 1) return `${first}`;
  return contiguous ? `${first}–${last}` : epochs.join(', ');
}

function formatRanks(ranks: Record<string, number[]> | null): string {
  if (!ranks) return 'none';
  return Object.entries(ranks).map(([module, rs]) => `${module} [${rs.join(',')}]`).join('; ');
}

function escapeHtml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function modelDescription(config: RunConfig | null): string {
  const model = config?.model;
  if (!model?.preset) return 'unknown (config.json not found or has no model.preset)';
  const overrides = (['layers', 'hidden', 'heads', 'mlpDim', 'patchSize'] as const)
    .filter((k) => model[k] !== undefined)
    .map((k) => `${k} ${model[k]}`);
  return overrides.length > 0 ? `${model.preset} (${overrides.join(', ')})` : model.preset;
}

function datasetDescription(config: RunConfig | null): string {
  const data = config?.data;
  if (!data?.dataset) return 'unknown (config.json not found or has no data.dataset)';
  const subsets: string[] = [];
  if (data.trainSubset) subsets.push(`first ${formatCount(data.trainSubset)} training images`);
  if (data.valSubset) subsets.push(`first ${formatCount(data.valSubset)} test images`);
  return subsets.length > 0 ? `${data.dataset} (${subsets.join(', ')})` : data.dataset;
}

// ---- plots --------------------------------------------------------------------------------

const PLOT_WIDTH = 620;
const PLOT_HEIGHT = 240;

async function renderSvg(spec: TopLevelSpec): Promise<string> {
  // Imported on first use because loading vega takes about 0.4 s (Node 20, this repository's
  // test machine), which every CLI command would otherwise pay at startup.
  const { parse, View } = await import('vega');
  const { compile } = await import('vega-lite');
  const view = new View(parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** A point of a line series: one value per epoch and series. */
interface SeriesPoint {
  epoch: number;
  series: string | number;
  value: number;
}

interface LineChart {
  title: string;
  points: SeriesPoint[];
  yTitle: string;
  /** Legend title, or null when the series names are self-explanatory (train loss, val loss). */
  seriesTitle: string | null;
  /** Colour scale: 'ordinal' runs along a sequential scheme (for layers), 'nominal' uses categories. */
  seriesType: 'nominal' | 'ordinal';
  markers: PhaseMarker[];
}

/**
 * Lines per series over epochs, with a dashed vertical rule per phase change. A rule at
 * epoch e marks the end of epoch e, where that epoch's metrics were measured.
 */
function lineChartSpec(chart: LineChart): TopLevelSpec {
  const epochs = chart.points.map((p) => p.epoch);
  const first = Math.min(...epochs);
  // A one-epoch run still gets an axis of non-zero length.
  const last = Math.max(first + 1, ...epochs);
  const x = {
    field: 'epoch', type: 'quantitative' as const, title: 'epoch',
    scale: { domain: [first, last], nice: false },
    axis: { tickMinStep: 1, format: 'd' },
  };
  const color = chart.seriesType === 'ordinal'
    ? { field: 'series', type: 'ordinal' as const, title: chart.seriesTitle, scale: { scheme: 'viridis' } }
    : { field: 'series', type: 'nominal' as const, title: chart.seriesTitle, sort: null };

  const lines = {
    data: { values: chart.points },
    mark: { type: 'line' as const, point: true },
    encoding: {
      x,
      y: { field: 'value', type: 'quantitative' as const, title: chart.yTitle, scale: { zero: false } },
      color,
    },
  };
  // One rule and one label per phase change. Labels step down so that neighbours do not overlap.
  const rules = chart.markers.flatMap((marker, i) => [
    {
      data: { values: [marker] },
      mark: { type: 'rule' as const, color: '#555', strokeDash: [4, 3] },
      encoding: { x: { field: 'epoch', type: 'quantitative' as const } },
    },
    {
      data: { values: [marker] },
      mark: { type: 'text' as const, align: 'left' as const, baseline: 'top' as const, dx: 4, dy: 2 + 13 * i, color: '#333', fontSize: 11 },
      encoding: { x: { field: 'epoch', type: 'quantitative' as const }, y: { value: 0 }, text: { field: 'label', type: 'nominal' as const } },
    },
  ]);

  return {
    title: chart.title,
    width: PLOT_WIDTH,
    height: PLOT_HEIGHT,
    layer: [lines, ...rules],
  } satisfies TopLevelSpec;
}

function lossPoints(metrics: EpochMetrics[]): SeriesPoint[] {
  return metrics.flatMap((m) => [
    { epoch: m.epoch, series: 'train loss', value: m.loss },
    { epoch: m.epoch, series: 'val loss', value: m.valLoss },
  ]);
}

function top1Points(metrics: EpochMetrics[]): SeriesPoint[] {
  return metrics.flatMap((m) => [
    { epoch: m.epoch, series: 'train top-1', value: 100 * m.trainTop1 },
    { epoch: m.epoch, series: 'val top-1', value: 100 * m.valTop1 },
  ]);
}

function moduleNormPoints(metrics: EpochMetrics[]): SeriesPoint[] {
  return metrics.flatMap((m) => Object.entries(m.normMeans ?? {}).map(([module, value]) => ({ epoch: m.epoch, series: module, value })));
}

function layerNormPoints(metrics: EpochMetrics[], module: string): SeriesPoint[] {
  return metrics.flatMap((m) => (m.norms?.[module] ?? []).map((value, layer) => ({ epoch: m.epoch, series: layer, value })));
}

/** Layer (rows) × module (columns) heatmap of adapter ranks, with each rank written in its cell. */
function rankMapSpec(ranks: Record<string, number[]>): TopLevelSpec {
  const modules = Object.keys(ranks);
  const cells = modules.flatMap((module) => ranks[module].map((rank, layer) => ({ module, layer, rank })));
  const maxRank = Math.max(1, ...cells.map((c) => c.rank));
  const encoding = {
    x: { field: 'module', type: 'nominal' as const, sort: modules, title: 'module', axis: { orient: 'top' as const, labelAngle: 0 } },
    y: { field: 'layer', type: 'ordinal' as const, title: 'layer' },
  };
  return {
    title: 'Adapter rank per layer and module',
    width: { step: 48 },
    height: { step: 20 },
    data: { values: cells },
    layer: [
      {
        mark: { type: 'rect' },
        encoding: { ...encoding, color: { field: 'rank', type: 'quantitative', title: 'rank', scale: { scheme: 'blues', domainMin: 0 } } },
      },
      {
        mark: { type: 'text', fontSize: 11 },
        encoding: {
          ...encoding,
          text: { field: 'rank', type: 'quantitative' },
          // Dark cells get white text so every rank stays legible.
          color: { condition: { test: `datum.rank > ${maxRank / 2}`, value: 'white' }, value: 'black' },
        },
      },
    ],
  } satisfies TopLevelSpec;
}

/** Seconds per epoch as bars, coloured by the phase the epoch trained in. */
function epochTimeSpec(metrics: EpochMetrics[]): TopLevelSpec {
  const present = PHASES.filter((p) => metrics.some((m) => m.phase === p));
  return {
    title: 'Epoch time by phase',
    width: PLOT_WIDTH,
    height: PLOT_HEIGHT,
    data: { values: metrics.map((m) => ({ epoch: m.epoch, seconds: m.epochSeconds, phase: m.phase })) },
    mark: { type: 'bar' },
    encoding: {
      x: { field: 'epoch', type: 'ordinal', title: 'epoch', axis: { labelAngle: 0 } },
      y: { field: 'seconds', type: 'quantitative', title: 'epoch time (s)' },
      color: { field: 'phase', type: 'nominal', title: 'phase', scale: { domain: present, range: present.map((p) => PHASE_COLORS[p]) } },
    },
  } satisfies TopLevelSpec;
}

// ---- HTML ---------------------------------------------------------------------------------

const CSS = `
body { font: 14px/1.45 system-ui, sans-serif; color: #222; max-width: 980px; margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 9px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f4f4f4; }
figure { margin: 0.5em 0; } figcaption { color: #555; font-size: 0.9em; }
svg { max-width: 100%; height: auto; }
.phase { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.4em; vertical-align: baseline; }
`;

function page(title: string, body: string[]): string {
  return [
    '<!doctype html>',
    '<html lang="en"><head><meta charset="utf-8">',
    `<title>${escapeHtml(title)}</title>`,
    `<style>${CSS}</style>`,
    '</head><body>',
    `<h1>${escapeHtml(title)}</h1>`,
    ...body,
    '</body></html>',
    '',
  ].join('\n');
}

function figure(svg: string, caption: string): string {
  return `<figure>${svg}<figcaption>${escapeHtml(caption)}</figcaption></figure>`;
}

function table(header: string[], rows: string[][], numeric: boolean[] = []): string {
  const head = `<tr>${header.map((h) => `<th>${escapeHtml(h)}</th>`).join('')}</tr>`;
  const body = rows.map((r) => `<tr>${r.map((c, i) => `<td${numeric[i] ? ' class="num"' : ''}>${c}</td>`).join('')}</tr>`);
  return `<table>${head}\n${body.join('\n')}</table>`;
}

function summaryTable(run: Run): string {
  const metrics = run.metrics;
  const last = metrics[metrics.length - 1];
  const best = metrics.reduce((a, b) => (b.valTop1 > a.valTop1 ? b : a));
  const plannedEpochs = run.config?.train?.epochs;
  const switchAt = switchEpoch(metrics);
  const freezeAt = freezeEpoch(metrics);
  // NOTE: an epoch resumed mid-way records only the seconds after the resume, so the total
  // undercounts a resumed run.
  const seconds = metrics.reduce((s, m) => s + m.epochSeconds, 0);

  const rows: [string, string][] = [
    ['Run directory', resolve(run.dir)],
    ['Model', modelDescription(run.config)],
    ['Dataset', datasetDescription(run.config)],
    ['Epochs', plannedEpochs ? `${last.epoch} of ${plannedEpochs}` : `${last.epoch}`],
    ['Final val top-1', `${percent(last.valTop1)} (val loss ${last.valLoss.toFixed(4)})`],
    ['Best val top-1', `${percent(best.valTop1)} at epoch ${best.epoch}`],
    ['Total training time', `${formatDuration(seconds)} (sum of epoch times: training steps, evaluation excluded)`],
    ['Switch epoch', switchAt === null ? 'none: adapters of per-layer ranks were never attached' : `end of epoch ${switchAt}`],
    ['Freeze epoch', freezeAt === null ? 'none: the base weights trained in every epoch' : `end of epoch ${freezeAt}`],
  ];
  return `<table>${rows.map(([k, v]) => `<tr><th>${k}</th><td>${escapeHtml(v)}</td></tr>`).join('\n')}</table>`;
}

function transitionList(metrics: EpochMetrics[]): string {
  const items = metrics.flatMap((m) => {
    const t = m.transition;
    if (!t) return [];
    return [`<li>End of epoch ${m.epoch}: <b>${escapeHtml(`${t.from} → ${t.to}`)}</b>. ${escapeHtml(t.reason)}</li>`];
  });
  if (items.length === 0) return `<p>No phase changes: every epoch trained in phase ${escapeHtml(metrics[0].phase)}.</p>`;
  return `<ul>\n${items.join('\n')}\n</ul>`;
}

function phaseTable(stats: PhaseStats[]): string {
  const header = ['phase', 'epochs', 'mean epoch time (s)', 'mean images/s', 'max peak device memory', 'trainable params'];
  const rows = stats.map((s) => [
    `<span class="phase" style="background:${PHASE_COLORS[s.phase]}"></span>${s.phase}`,
    `${formatEpochs(s.epochs)} (${s.epochs.length})`,
    s.meanEpochSeconds.toFixed(1),
    s.meanImagesPerSecond.toFixed(0),
    formatBytes(s.maxPeakBytes),
    formatTrainable(s.trainableParams),
  ]);
  return table(header, rows, [false, false, true, true, true, true]);
}

/** Picks the module whose per-layer norms are plotted: the requested one, else the first recorded. */
function pickNormModule(metrics: EpochMetrics[], requested: string): string | null {
  const recorded = Object.keys(metrics[metrics.length - 1].norms ?? {});
  if (recorded.includes(requested)) return requested;
  return recorded[0] ?? null;
}

// ---- public API ---------------------------------------------------------------------------

/**
 * Writes `<runDir>/report.html` from the run's config.json and metrics.jsonl and returns
 * its path: a summary, loss and top-1 per epoch with the phase changes marked, weight norms
 * per module and per layer, the adapter rank map, and epoch time per phase.
 *
 *   const path = await writeReport('runs/latest');   // runs/latest/report.html
 */
export async function writeReport(runDir: string, opts: ReportOptions = {}): Promise<string> {
  const run = loadRun(runDir);
  const metrics = run.metrics;
  const markers = phaseMarkers(metrics);
  const title = opts.title ?? `PreLoRA run ${basename(resolve(runDir))}`;

  const body = [
    summaryTable(run),
    '<h2>Phase changes</h2>',
    transitionList(metrics),
    ...(await curveSections(metrics, markers)),
    ...(await normSections(metrics, markers, opts.normModule ?? 'q')),
    ...(await rankSection(metrics)),
    ...(await timeSection(metrics)),
  ];

  const path = join(runDir, 'report.html');
  writeFileSync(path, page(title, body));
  return path;
}

async function curveSections(metrics: EpochMetrics[], markers: PhaseMarker[]): Promise<string[]> {
  const loss = await renderSvg(lineChartSpec({ title: 'Loss per epoch', points: lossPoints(metrics), yTitle: 'loss', seriesTitle: null, seriesType: 'nominal', markers }));
  const top1 = await renderSvg(lineChartSpec({ title: 'Top-1 per epoch', points: top1Points(metrics), yTitle: 'top-1 (%)', seriesTitle: null, seriesType: 'nominal', markers }));
  return [
    '<h2>Loss</h2>',
    figure(loss, 'Training loss (mean over the epoch, with label smoothing) and validation cross-entropy at each epoch end.'),
    '<h2>Top-1 accuracy</h2>',
    figure(top1, 'Training top-1 (over the epoch, while the weights changed) and validation top-1 at each epoch end.'),
  ];
}

async function normSections(metrics: EpochMetrics[], markers: PhaseMarker[], requested: string): Promise<string[]> {
  const out = ['<h2>Weight norms</h2>'];
  const modulePoints = moduleNormPoints(metrics);
  if (modulePoints.length === 0) return [...out, '<p>No weight norms were recorded in this run.</p>'];

  const perModule = await renderSvg(lineChartSpec({
    title: 'Weight norm per module (mean over layers)', points: modulePoints, yTitle: 'Frobenius norm', seriesTitle: 'module', seriesType: 'nominal', markers,
  }));
  out.push(figure(perModule, 'Frobenius norm of each target module’s weight, averaged over layers. With an adapter attached it is the norm of the effective weight W + s·B·A.'));

  const module = pickNormModule(metrics, requested);
  if (module === null) return out;
  const perLayer = await renderSvg(lineChartSpec({
    title: `Weight norm of module ${module} per layer`, points: layerNormPoints(metrics, module), yTitle: 'Frobenius norm', seriesTitle: 'layer', seriesType: 'ordinal', markers,
  }));
  const note = module === requested ? '' : ` Module ${requested} has no recorded norms, so module ${module} is shown.`;
  out.push(figure(perLayer, `Frobenius norm of module ${module} in each layer (0-based, as in the checkpoint names).${note}`));
  return out;
}

async function rankSection(metrics: EpochMetrics[]): Promise<string[]> {
  const ranks = finalRanks(metrics);
  if (ranks === null) return ['<h2>Rank map</h2>', '<p>No adapters were attached in this run, so it has no rank map.</p>'];

  const epoch = [...metrics].reverse().find((m) => m.ranks === ranks)!.epoch;
  const svg = await renderSvg(rankMapSpec(ranks));
  return ['<h2>Rank map</h2>', figure(svg, `Adapter rank of each target module per layer (0-based), at the end of epoch ${epoch}.`)];
}

async function timeSection(metrics: EpochMetrics[]): Promise<string[]> {
  const svg = await renderSvg(epochTimeSpec(metrics));
  return [
    '<h2>Epoch time</h2>',
    figure(svg, 'Wall-clock seconds of each epoch’s training steps (evaluation excluded), coloured by the phase the epoch trained in.'),
    phaseTable(phaseStats(metrics)),
    '<p>Peak device memory is the maximum over the phase’s epochs of the bytes held by tensors. Trainable params are the count each epoch started with.</p>',
  ];
}

function compareRow(label: string, run: Run): CompareRow {
  const metrics = run.metrics;
  const last = metrics[metrics.length - 1];
  return {
    run: label,
    dir: run.dir,
    finalValTop1: last.valTop1,
    finalValLoss: last.valLoss,
    totalSeconds: metrics.reduce((s, m) => s + m.epochSeconds, 0),
    phases: phaseStats(metrics),
    switchEpoch: switchEpoch(metrics),
    ranks: finalRanks(metrics),
  };
}

const COMPARE_HEADER = [
  'run', 'final val top-1', 'final val loss', 'train time (s)', 's/epoch by phase', 'images/s by phase',
  'peak device memory by phase', 'trainable params by phase', 'switch epoch', 'ranks per layer',
];

/** Formats one row's table cells, with one entry per phase in the by-phase columns. */
function compareCells(row: CompareRow): string[] {
  const byPhase = (f: (s: PhaseStats) => string) => row.phases.map((s) => `${s.phase} ${f(s)}`).join(', ');
  return [
    row.run,
    percent(row.finalValTop1),
    row.finalValLoss.toFixed(4),
    row.totalSeconds.toFixed(1),
    byPhase((s) => s.meanEpochSeconds.toFixed(1)),
    byPhase((s) => s.meanImagesPerSecond.toFixed(0)),
    byPhase((s) => formatBytes(s.maxPeakBytes)),
    byPhase((s) => formatTrainable(s.trainableParams)),
    row.switchEpoch === null ? 'none' : String(row.switchEpoch),
    formatRanks(row.ranks),
  ];
}

function markdownTable(rows: CompareRow[]): string {
  const cell = (s: string) => s.replace(/\|/g, '\\|');
  const lines = [
    `| ${COMPARE_HEADER.join(' | ')} |`,
    `|${COMPARE_HEADER.map(() => ' --- ').join('|')}|`,
    ...rows.map((r) => `| ${compareCells(r).map(cell).join(' | ')} |`),
  ];
  return lines.join('\n');
}

/** Summarises the ratios that matter: total time, and a frozen-base epoch against a full one. */
function compareSummary(baseline: CompareRow, prelora: CompareRow): string {
  const timeRatio = prelora.totalSeconds / baseline.totalSeconds;
  const points = 100 * (prelora.finalValTop1 - baseline.finalValTop1);
  const sentences = [
    `${prelora.run} trained for ${prelora.totalSeconds.toFixed(1)} s, ${timeRatio.toFixed(2)}× the ${baseline.run} run's ${baseline.totalSeconds.toFixed(1)} s; ` +
      `its final val top-1 is ${percent(prelora.finalValTop1)} against ${percent(baseline.finalValTop1)} (${points >= 0 ? '+' : ''}${points.toFixed(2)} points).`,
  ];
  const lora = prelora.phases.find((s) => s.phase === 'lora');
  const full = baseline.phases.find((s) => s.phase === 'full');
  if (lora && full) {
    sentences.push(
      `A lora epoch took ${(lora.meanEpochSeconds / full.meanEpochSeconds).toFixed(2)}× the time of a ${baseline.run} full epoch ` +
        `(${lora.meanEpochSeconds.toFixed(1)} s against ${full.meanEpochSeconds.toFixed(1)} s).`,
    );
  }
  return sentences.join(' ');
}

/**
 * Writes one HTML page to `outPath` that compares a full-training baseline with a PreLoRA
 * run: train loss and val top-1 of both, with the PreLoRA phase changes marked. Returns the
 * per-phase comparison as rows, and as a markdown table followed by a summary sentence.
 *
 *   const { markdown } = await compareReport('runs/full', 'runs/prelora', 'runs/compare.html');
 */
export async function compareReport(baselineDir: string, preloraDir: string, outPath: string): Promise<CompareResult> {
  const baseline = loadRun(baselineDir);
  const prelora = loadRun(preloraDir);
  const rows = [compareRow('baseline', baseline), compareRow('PreLoRA', prelora)];
  const summary = compareSummary(rows[0], rows[1]);
  const markdown = `${markdownTable(rows)}\n\n${summary}`;

  const markers = phaseMarkers(prelora.metrics, 'PreLoRA ');
  const trainLoss = [
    ...baseline.metrics.map((m) => ({ epoch: m.epoch, series: 'baseline', value: m.loss })),
    ...prelora.metrics.map((m) => ({ epoch: m.epoch, series: 'PreLoRA', value: m.loss })),
  ];
  const valTop1 = [
    ...baseline.metrics.map((m) => ({ epoch: m.epoch, series: 'baseline', value: 100 * m.valTop1 })),
    ...prelora.metrics.map((m) => ({ epoch: m.epoch, series: 'PreLoRA', value: 100 * m.valTop1 })),
  ];
  const lossSvg = await renderSvg(lineChartSpec({ title: 'Training loss per epoch', points: trainLoss, yTitle: 'train loss', seriesTitle: 'run', seriesType: 'nominal', markers }));
  const top1Svg = await renderSvg(lineChartSpec({ title: 'Validation top-1 per epoch', points: valTop1, yTitle: 'val top-1 (%)', seriesTitle: 'run', seriesType: 'nominal', markers }));

  const body = [
    table(['run', 'directory'], rows.map((r) => [escapeHtml(r.run), escapeHtml(resolve(r.dir))])),
    '<h2>Training loss</h2>',
    figure(lossSvg, 'Mean training loss per epoch (with label smoothing) of both runs; dashed rules mark the PreLoRA run’s phase changes.'),
    '<h2>Validation top-1</h2>',
    figure(top1Svg, 'Validation top-1 at each epoch end of both runs.'),
    '<h2>Per phase</h2>',
    table(COMPARE_HEADER, rows.map((r) => compareCells(r).map(escapeHtml)), [false, true, true, true]),
    `<p>${escapeHtml(summary)}</p>`,
  ];
  mkdirSync(dirname(outPath), { recursive: true });
  writeFileSync(outPath, page('Full training against PreLoRA', body));
  return { path: outPath, rows, markdown };
}
