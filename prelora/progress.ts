// Console output of a run: a progress bar per epoch (steps, loss, images/s) on a terminal,
// and one summary line per epoch always. Machine-readable metrics go to metrics.jsonl.
import cliProgress from 'cli-progress';
import type { EpochMetrics } from './metrics.ts';
import type { Phase } from './phases.ts';

export interface ProgressReporter {
  startEpoch(epoch: number, steps: number, firstStep: number, phase: Phase): void;
  step(step: number, loss: number, imagesPerStep: number): void;
  endEpoch(): void;
  epochSummary(m: EpochMetrics, epochs: number): void;
  note(line: string): void;
}

export function formatBytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  return `${(n / 1024).toFixed(0)} KiB`;
}

export function epochLine(m: EpochMetrics, epochs: number): string {
  return (
    `epoch ${m.epoch}/${epochs} [${m.phase}] loss ${m.loss.toFixed(4)} train top-1 ${(100 * m.trainTop1).toFixed(2)}% ` +
    `val loss ${m.valLoss.toFixed(4)} val top-1 ${(100 * m.valTop1).toFixed(2)}% | ${m.epochSeconds.toFixed(1)} s, ` +
    `${m.imagesPerSecond.toFixed(0)} images/s, peak ${formatBytes(m.peakBytes)}, ${m.trainableParams.toLocaleString('en-US')} trainable`
  );
}

/** Progress bar on a TTY (unless quiet); summary lines on stderr either way. */
export class ConsoleProgress implements ProgressReporter {
  private bar: cliProgress.SingleBar | null = null;
  private t0 = 0;
  private first = 0;
  private images = 0;

  constructor(private quiet: boolean, private stream: NodeJS.WriteStream = process.stderr) {}

  startEpoch(epoch: number, steps: number, firstStep: number, phase: Phase): void {
    this.t0 = performance.now();
    this.first = firstStep;
    this.images = 0;
    if (this.quiet || !this.stream.isTTY) return;
    this.bar = new cliProgress.SingleBar(
      { format: `epoch ${epoch + 1} [${phase}] {bar} {value}/{total} | loss {loss} | {ips} images/s | eta {eta_formatted}`, hideCursor: true, stream: this.stream, clearOnComplete: true },
      cliProgress.Presets.shades_classic,
    );
    this.bar.start(steps, firstStep, { loss: '-', ips: '-' });
  }

  step(step: number, loss: number, imagesPerStep: number): void {
    this.images += imagesPerStep;
    if (!this.bar) return;
    const secs = (performance.now() - this.t0) / 1000;
    this.bar.update(step, { loss: Number.isFinite(loss) ? loss.toFixed(4) : '-', ips: secs > 0 ? (this.images / secs).toFixed(0) : '-' });
  }

  endEpoch(): void {
    this.bar?.stop();
    this.bar = null;
  }

  epochSummary(m: EpochMetrics, epochs: number): void {
    this.stream.write(epochLine(m, epochs) + '\n');
  }

  note(line: string): void {
    this.stream.write(line + '\n');
  }
}

/** Collects nothing and prints nothing (tests). */
export class SilentProgress implements ProgressReporter {
  lines: string[] = [];
  startEpoch(): void {}
  step(): void {}
  endEpoch(): void {}
  epochSummary(m: EpochMetrics, epochs: number): void {
    this.lines.push(epochLine(m, epochs));
  }
  note(line: string): void {
    this.lines.push(line);
  }
}
