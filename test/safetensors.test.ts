// safetensors writer and reader: byte layout, round trips, validation errors, and atomic
// replacement when a write fails part-way (faults injected into node:fs/promises).
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { writeFileAtomic } from '../model/atomic.ts';
import {
  MAX_HEADER_BYTES,
  decodeSafetensors,
  encodeSafetensors,
  readSafetensors,
  writeSafetensors,
  type TensorInput,
} from '../model/safetensors.ts';
import { randomArray } from './helpers/reference.ts';

const faults = vi.hoisted(() => ({ rename: false, partialWrite: false }));

vi.mock('node:fs/promises', async (importOriginal) => {
  const actual = await importOriginal<typeof import('node:fs/promises')>();
  return {
    ...actual,
    rename: async (from: string, to: string) => {
      if (faults.rename) throw Object.assign(new Error('EIO: simulated failure before rename'), { code: 'EIO' });
      return actual.rename(from, to);
    },
    // With partialWrite, the first write stores half its bytes and then fails, as a full disk would.
    open: async (...args: Parameters<typeof actual.open>) => {
      const handle = await actual.open(...args);
      if (faults.partialWrite) {
        const write = handle.write.bind(handle) as (b: Uint8Array, o: number, l: number) => Promise<unknown>;
        Object.assign(handle, {
          write: async (buffer: Uint8Array, offset: number, length: number) => {
            await write(buffer, offset, Math.floor(length / 2));
            throw Object.assign(new Error('ENOSPC: simulated full disk'), { code: 'ENOSPC' });
          },
        });
      }
      return handle;
    },
  };
});

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'safetensors-test-'));
  faults.rename = false;
  faults.partialWrite = false;
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Builds file bytes from a header (JSON, space-padded to 8 bytes unless pad is false) and data. */
function withHeader(header: unknown, data: Uint8Array, { pad = true } = {}): Uint8Array {
  let json = JSON.stringify(header);
  if (pad) json = json.padEnd(Math.ceil(json.length / 8) * 8, ' ');
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  return Buffer.concat([length, Buffer.from(json), data]);
}

const f32 = (...values: number[]) => new Uint8Array(new Float32Array(values).buffer);

describe('encodeSafetensors', () => {
  it('matches a hand-built file', () => {
    // 54 bytes of JSON, padded with 2 spaces to 56; then 1.0 and 2.0 as little-endian F32.
    const json = '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}  ';
    const expected = Buffer.concat([
      Buffer.from([56, 0, 0, 0, 0, 0, 0, 0]),
      Buffer.from(json),
      Buffer.from([0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0x40]),
    ]);
    const bytes = encodeSafetensors({ a: { shape: [2], data: new Float32Array([1, 2]) } });
    expect(Buffer.from(bytes).equals(expected)).toBe(true);
  });

  it('aligns the data section to 8 bytes', () => {
    for (const name of ['a', 'ab', 'abc', 'abcd', 'abcde', 'abcdef', 'abcdefg', 'abcdefgh']) {
      const bytes = encodeSafetensors({ [name]: { shape: [1], data: new Float32Array([1]) } });
      const headerLength = Number(Buffer.from(bytes).readBigUInt64LE(0));
      expect(headerLength % 8).toBe(0);
    }
  });

  it('does not depend on insertion order', () => {
    const a = { shape: [3], data: new Float32Array([1, 2, 3]) };
    const b = { shape: [2], data: new BigInt64Array([5n, 6n]) };
    const c = { shape: [1], data: new Int32Array([7]) };
    const fromRecord = encodeSafetensors({ a, b, c });
    const fromMap = encodeSafetensors(new Map<string, TensorInput>([['c', c], ['b', b], ['a', a]]));
    expect(Buffer.from(fromRecord).equals(Buffer.from(fromMap))).toBe(true);
  });

  it('puts 8-byte dtypes first', () => {
    // An odd-length F32 tensor before an I64 one would leave the I64 data misaligned.
    const bytes = encodeSafetensors({ a: { shape: [3], data: new Float32Array(3) }, z: { shape: [1], data: new BigInt64Array(1) } });
    const { tensors } = decodeSafetensors(bytes);
    expect([...tensors.keys()]).toEqual(['z', 'a']);
  });

  it('writes metadata', () => {
    const bytes = encodeSafetensors({ a: { shape: [], data: new Float32Array([1]) } }, { format: 'pt', epoch: '3' });
    expect(decodeSafetensors(bytes).metadata).toEqual({ format: 'pt', epoch: '3' });
  });

  it('rejects a shape that does not match the data', () => {
    expect(() => encodeSafetensors({ w: { shape: [2, 3], data: new Float32Array(5) } })).toThrow(
      "tensor 'w': shape [2, 3] has 6 elements but the data has 5",
    );
  });

  it('rejects a dtype the array cannot hold', () => {
    expect(() => encodeSafetensors({ w: { shape: [1], data: new Float32Array(1), dtype: 'I32' } })).toThrow(
      "tensor 'w': dtype I32 cannot be written from a Float32Array",
    );
  });

  it('rejects the metadata key as a name', () => {
    expect(() => encodeSafetensors({ __metadata__: { shape: [1], data: new Float32Array(1) } })).toThrow('invalid tensor name');
  });

  it('rejects non-string metadata', () => {
    const metadata = { epoch: 3 } as unknown as Record<string, string>;
    expect(() => encodeSafetensors({ a: { shape: [1], data: new Float32Array(1) } }, metadata)).toThrow(
      "invalid metadata 'epoch': safetensors metadata values must be strings",
    );
  });
});

describe('round trip', () => {
  // Odd sizes (1, 7, 33, 65, 127 elements), a scalar and an empty tensor, in every dtype
  // the writer takes. Values must come back bit for bit.
  const inputs: Record<string, TensorInput> = {
    'vit.embeddings.cls_token': { shape: [1, 1, 7], data: randomArray(7, 1) },
    'vit.encoder.layer.0.attention.attention.query.weight': { shape: [33, 65], data: randomArray(33 * 65, 2) },
    'classifier.bias': { shape: [127], data: randomArray(127, 3) },
    scalar: { shape: [], data: new Float32Array([Math.PI]) },
    empty: { shape: [0, 3], data: new Float32Array(0) },
    f64: { shape: [3], data: new Float64Array([1 / 3, -2.5, 1e300]) },
    i32: { shape: [3], data: new Int32Array([-(2 ** 31), 0, 2 ** 31 - 1]) },
    i64: { shape: [2], data: new BigInt64Array([-(2n ** 63n), 2n ** 63n - 1n]) },
    u8: { shape: [5], data: new Uint8Array([0, 1, 127, 128, 255]) },
    bool: { shape: [3], data: new Uint8Array([1, 0, 1]), dtype: 'BOOL' },
    i16: { shape: [2], data: new Int16Array([-32768, 32767]) },
    u32: { shape: [1], data: new Uint32Array([4294967295]) },
  };

  it('returns every tensor unchanged', async () => {
    const path = join(dir, 'model.safetensors');
    await writeSafetensors(path, inputs, { step: '12' });
    const file = await readSafetensors(path);

    expect(file.metadata).toEqual({ step: '12' });
    expect([...file.tensors.keys()].sort()).toEqual(Object.keys(inputs).sort());
    for (const [name, input] of Object.entries(inputs)) {
      const tensor = file.tensors.get(name)!;
      expect(tensor.shape, name).toEqual(input.shape);
      expect(tensor.data, name).toEqual(input.data);
    }
  });

  it('reports dtypes', async () => {
    const file = decodeSafetensors(encodeSafetensors(inputs));
    const dtypes = Object.fromEntries([...file.tensors].map(([name, t]) => [name, t.dtype]));
    expect(dtypes).toMatchObject({ scalar: 'F32', f64: 'F64', i32: 'I32', i64: 'I64', u8: 'U8', bool: 'BOOL', i16: 'I16', u32: 'U32' });
  });

  it('reads a file with an unpadded header', () => {
    // 55-byte header from another writer: the I32 data starts at byte 63, not a multiple of 4.
    const header = { n: { dtype: 'I32', shape: [2], data_offsets: [0, 8] } };
    const bytes = withHeader(header, new Uint8Array(new Int32Array([-7, 9]).buffer), { pad: false });
    expect((8 + JSON.stringify(header).length) % 4).not.toBe(0);
    expect(decodeSafetensors(bytes).tensors.get('n')!.data).toEqual(new Int32Array([-7, 9]));
  });

  it('widens F16 to F32', () => {
    // 0x3c00 = 1, 0xc000 = −2, 0x7bff = 65504 (max), 0x0001 = 2^−24 (min subnormal), 0xfc00 = −∞.
    const half = new Uint16Array([0x3c00, 0xc000, 0x7bff, 0x0001, 0xfc00]);
    const bytes = withHeader({ h: { dtype: 'F16', shape: [5], data_offsets: [0, 10] } }, new Uint8Array(half.buffer));
    const data = decodeSafetensors(bytes).tensors.get('h')!.data;
    expect(data).toEqual(new Float32Array([1, -2, 65504, 2 ** -24, -Infinity]));
  });

  it('widens BF16 to F32', () => {
    // 0x3f80 = 1, 0x4049 = 3.140625, 0xc2f7 = −123.5.
    const bf16 = new Uint16Array([0x3f80, 0x4049, 0xc2f7]);
    const bytes = withHeader({ b: { dtype: 'BF16', shape: [3], data_offsets: [0, 6] } }, new Uint8Array(bf16.buffer));
    expect(decodeSafetensors(bytes).tensors.get('b')!.data).toEqual(new Float32Array([1, 3.140625, -123.5]));
  });
});

describe('decodeSafetensors', () => {
  const valid = { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };

  it.each([
    ['a short file', () => new Uint8Array(5), '5 bytes is shorter than the 8-byte header length field'],
    [
      'a header length beyond the file',
      () => Buffer.concat([Buffer.from([100, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('{}')]),
      'header length 100 exceeds the 2 bytes after the length field',
    ],
    [
      'a header length beyond the limit',
      () => Buffer.from([0, 0, 0, 0, 0, 1, 0, 0]),
      `header length ${2 ** 40} exceeds the ${MAX_HEADER_BYTES}-byte limit`,
    ],
    ['bad JSON', () => withHeader('x', new Uint8Array(0)).fill(0x7b, 8, 9), 'header is not valid JSON'],
    ['a JSON array', () => withHeader([1], new Uint8Array(0)), 'header is not a JSON object'],
    [
      'invalid UTF-8',
      () => Buffer.concat([Buffer.from([8, 0, 0, 0, 0, 0, 0, 0]), Buffer.from([0x7b, 0xff, 0x7d, 32, 32, 32, 32, 32])]),
      'header is not valid UTF-8',
    ],
    ['an unknown dtype', () => withHeader({ a: { ...valid.a, dtype: 'F31' } }, f32(1, 2)), `tensor 'a' has unknown dtype "F31"`],
    ['a negative dimension', () => withHeader({ a: { ...valid.a, shape: [-2] } }, f32(1, 2)), `tensor 'a' has invalid shape [-2]`],
    ['one offset', () => withHeader({ a: { ...valid.a, data_offsets: [0] } }, f32(1, 2)), `tensor 'a' has invalid data_offsets [0]`],
    [
      'offsets beyond the data',
      () => withHeader({ a: { ...valid.a, data_offsets: [4, 12] } }, f32(1, 2)),
      `tensor 'a' has data_offsets [4, 12] beyond the 8-byte data section`,
    ],
    [
      'offsets in reverse',
      () => withHeader({ a: { ...valid.a, shape: [0], data_offsets: [8, 0] } }, f32(1, 2)),
      `tensor 'a' has data_offsets [8, 0] that end before they begin`,
    ],
    [
      'a byte length that does not match dtype and shape',
      () => withHeader({ a: { ...valid.a, shape: [3] } }, f32(1, 2)),
      `tensor 'a' with dtype F32 and shape [3] needs 12 bytes but data_offsets [0, 8] span 8`,
    ],
    [
      'overlapping tensors',
      () =>
        withHeader(
          { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } },
          f32(1, 2, 3),
        ),
      `tensors 'a' [0, 8] and 'b' [4, 12] overlap`,
    ],
    [
      'a hole',
      () =>
        withHeader(
          { a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, b: { dtype: 'F32', shape: [1], data_offsets: [8, 12] } },
          f32(1, 2, 3),
        ),
      'data bytes [4, 8) belong to no tensor',
    ],
    ['trailing bytes', () => withHeader(valid, f32(1, 2, 3)), '4 trailing data bytes after the last tensor'],
    [
      'non-string metadata',
      () => withHeader({ __metadata__: { epoch: 3 }, ...valid }, f32(1, 2)),
      "__metadata__ value 'epoch' is not a string",
    ],
    [
      'an F8 tensor',
      () => withHeader({ e: { dtype: 'F8_E4M3', shape: [2], data_offsets: [0, 2] } }, new Uint8Array(2)),
      "tensor 'e' has dtype F8_E4M3, which this reader does not decode",
    ],
  ])('rejects %s', (_, bytes, message) => {
    expect(() => decodeSafetensors(bytes(), 'x.safetensors')).toThrow(`x.safetensors: invalid safetensors file: ${message}`);
  });

  it('accepts the valid baseline of those cases', () => {
    expect(decodeSafetensors(withHeader(valid, f32(1, 2))).tensors.get('a')!.data).toEqual(new Float32Array([1, 2]));
  });

  it('names the file in errors', async () => {
    const path = join(dir, 'broken.safetensors');
    await writeFile(path, new Uint8Array(3));
    await expect(readSafetensors(path)).rejects.toThrow(`${path}: invalid safetensors file: 3 bytes is shorter`);
  });
});

describe('atomic writes', () => {
  const oldTensors = { w: { shape: [2], data: new Float32Array([1, 2]) } };
  const newTensors = { w: { shape: [3], data: new Float32Array([3, 4, 5]) } };

  async function writeOld(): Promise<string> {
    const path = join(dir, 'checkpoint.safetensors');
    await writeSafetensors(path, oldTensors);
    return path;
  }

  it('replaces the previous file', async () => {
    const path = await writeOld();
    await writeSafetensors(path, newTensors);
    expect((await readSafetensors(path)).tensors.get('w')!.data).toEqual(newTensors.w.data);
  });

  it('leaves no temp file', async () => {
    const path = await writeOld();
    await writeSafetensors(path, newTensors);
    expect(await readdir(dir)).toEqual(['checkpoint.safetensors']);
  });

  it('keeps the old file when the rename fails', async () => {
    const path = await writeOld();
    faults.rename = true;
    await expect(writeSafetensors(path, newTensors)).rejects.toThrow('EIO: simulated failure before rename');
    faults.rename = false;

    expect((await readSafetensors(path)).tensors.get('w')!.data).toEqual(oldTensors.w.data);
    expect(await readdir(dir)).toEqual(['checkpoint.safetensors']);
  });

  it('keeps the old file when a write fails part-way', async () => {
    const path = await writeOld();
    faults.partialWrite = true;
    await expect(writeSafetensors(path, newTensors)).rejects.toThrow('ENOSPC: simulated full disk');
    faults.partialWrite = false;

    expect((await readSafetensors(path)).tensors.get('w')!.data).toEqual(oldTensors.w.data);
    expect(await readdir(dir)).toEqual(['checkpoint.safetensors']);
  });

  it('ignores a truncated temp file of a crashed writer', async () => {
    // A process killed mid-write leaves its temp file behind; the target is still the old file.
    const path = await writeOld();
    const partial = encodeSafetensors(newTensors).subarray(0, 20);
    await writeFile(`${path}.tmp-99999-0123456789ab`, partial);

    expect((await readSafetensors(path)).tensors.get('w')!.data).toEqual(oldTensors.w.data);
    await writeSafetensors(path, newTensors);
    expect((await readSafetensors(path)).tensors.get('w')!.data).toEqual(newTensors.w.data);
  });

  it('writes strings as UTF-8', async () => {
    const path = join(dir, 'config.json');
    await writeFileAtomic(path, '{"τ":0.5}');
    expect(await readFile(path, 'utf8')).toBe('{"τ":0.5}');
  });

  it('writes chunks in order', async () => {
    const path = join(dir, 'chunks.bin');
    await writeFileAtomic(path, [new Uint8Array([1, 2]), new Uint8Array(0), new Uint8Array([3])]);
    expect([...(await readFile(path))]).toEqual([1, 2, 3]);
  });

  it('fails for a missing directory', async () => {
    await expect(writeFileAtomic(join(dir, 'missing', 'x.bin'), 'x')).rejects.toThrow('ENOENT');
  });
});
