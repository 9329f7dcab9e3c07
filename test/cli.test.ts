// The `prelora` command as a user runs it: bad input gets one line naming the value and
// the fix, a non-zero exit, and no stack trace.
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

function prelora(...args: string[]) {
  const res = spawnSync(process.execPath, ['cli/bin.mjs', ...args], { encoding: 'utf8', timeout: 120_000 });
  // Dawn prints two driver warnings on lavapipe; they are not ours.
  const stderr = res.stderr.split('\n').filter((l) => l && !l.startsWith('Warning: maxDynamic') && !l.startsWith('adapter:'));
  return { code: res.status, stderr, stdout: res.stdout };
}

const tmp = mkdtempSync(join(tmpdir(), 'prelora-cli-'));
writeFileSync(join(tmp, 'bad.json'), '{ "train": { "epochs": "ten" } }');
writeFileSync(join(tmp, 'broken.json'), '{ "train": ');
mkdirSync(join(tmp, 'done'));
writeFileSync(join(tmp, 'done', 'checkpoint.safetensors'), '');

describe('cli errors', () => {
  const cases: Array<[string, string[], RegExp]> = [
    ['negative lr', ['train', '--lr', '-1'], /invalid config: train\.lr: .*\(got -1\)/],
    ['zero batch', ['train', '--batch-size', '0'], /invalid config: train\.batchSize/],
    ['unknown model preset', ['train', '--model', 'vit-x'], /invalid config: model\.preset.*"vit-x"/],
    ['unknown run preset', ['train', '--preset', 'exp9'], /unknown preset "exp9"; choose one of/],
    ['rank not a power of two', ['train', '--r-min', '12'], /prelora\.rMin: must be a power of two/],
    ['rMin above rMax', ['train', '--r-min', '64', '--r-max', '8'], /rMin 64 is larger than rMax 8/],
    ['wrong type in config file', ['train', '--config', join(tmp, 'bad.json')], /invalid config: train\.epochs/],
    ['unparsable config file', ['train', '--config', join(tmp, 'broken.json')], /invalid config file .*broken\.json/],
    ['missing config file', ['train', '--config', join(tmp, 'none.json')], /config file not found/],
    ['unknown field via --set', ['train', '--set', 'train.epoch=3'], /invalid config: train/],
    ['not a number', ['train', '--epochs', 'many'], /invalid --epochs "many": expected an integer/],
    ['missing data directory', ['train', '--dataset', 'mnist-idx', '--data-path', join(tmp, 'nope')], /nope/],
    ['resume without checkpoint', ['train', '--resume', '--run-dir', join(tmp, 'empty')], /cannot resume: .*config\.json not found/],
    ['report of a non-run', ['report', tmp], /metrics not found/],
    ['existing run without --resume', ['train', '--run-dir', join(tmp, 'done')], /already contains a run .*pass --resume to continue it, --overwrite to start over/],
  ];
  for (const [name, args, pattern] of cases) {
    it(name, () => {
      const { code, stderr } = prelora(...args);
      expect(code).not.toBe(0);
      expect(stderr, stderr.join('\n')).toHaveLength(1);
      expect(stderr[0]).toMatch(pattern);
      expect(stderr[0]).not.toMatch(/ at .*\.ts:\d+/);
    });
  }

  it('help documents options with units', () => {
    const { code, stdout } = prelora('train', '--help');
    expect(code).toBe(0);
    for (const flag of ['--tau <percent>', '--zeta <percent>', '--window-size <m>', '--lora-warmup <epochs>', '--batch-size <n>', '--resume']) {
      expect(stdout).toContain(flag);
    }
  });
});
