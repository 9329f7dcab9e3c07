// Reader and writer of the safetensors format used by Hugging Face checkpoints. A file is an
// 8-byte little-endian header length N, N bytes of UTF-8 JSON mapping each tensor name to
// { dtype, shape, data_offsets: [begin, end] } (offsets into the data section, plus an
// optional "__metadata__" string map), then the data section: raw little-endian bytes that
// the tensors cover exactly, without holes or overlaps. This file has no notion of models or
// parameter names. It maps names to typed arrays and writes through writeFileAtomic.
import { readFile } from 'node:fs/promises';
import { writeFileAtomic } from './atomic.ts';

/** Bytes per element of every dtype the format defines. */
const DTYPE_BYTES = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  F8_E4M3: 1,
  F8_E5M2: 1,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
} as const;

export type DType = keyof typeof DTYPE_BYTES;

/** Typed arrays that map one-to-one onto a dtype: these can be written and read back as is. */
export type TensorArray =
  | Float64Array
  | Float32Array
  | BigInt64Array
  | Int32Array
  | Int16Array
  | Int8Array
  | BigUint64Array
  | Uint32Array
  | Uint16Array
  | Uint8Array;

const ARRAY_DTYPES: ReadonlyArray<[new (buffer: ArrayBuffer, offset: number, length: number) => TensorArray, DType]> = [
  [Float64Array, 'F64'],
  [Float32Array, 'F32'],
  [BigInt64Array, 'I64'],
  [Int32Array, 'I32'],
  [Int16Array, 'I16'],
  [Int8Array, 'I8'],
  [BigUint64Array, 'U64'],
  [Uint32Array, 'U32'],
  [Uint16Array, 'U16'],
  [Uint8Array, 'U8'],
];

/** A tensor to write. `dtype` defaults to the one of the typed array (Float32Array → F32). */
export interface TensorInput {
  shape: readonly number[];
  data: TensorArray;
  /** Only needed for BOOL, which is stored from a Uint8Array of 0/1. */
  dtype?: DType;
}

/** A tensor read from a file. F16 and BF16 are widened to Float32Array, which is exact. */
export interface Tensor {
  dtype: DType;
  shape: number[];
  data: TensorArray;
}

export interface SafetensorsFile {
  /** Tensors in data-section order. */
  tensors: Map<string, Tensor>;
  /** The "__metadata__" string map, empty when the file has none. */
  metadata: Record<string, string>;
}

/**
 * Upper bound on N, as in the reference Rust implementation: a header is a few hundred
 * bytes per tensor, so anything larger is a corrupt length field, not a big model.
 */
export const MAX_HEADER_BYTES = 100_000_000;

const METADATA_KEY = '__metadata__';

// Typed arrays use the host byte order and the format is little-endian.
const HOST_IS_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

// ---------------------------------------------------------------------------------------
// Writing

/**
 * Writes tensors (and optional string metadata) to `path` as safetensors, atomically: a crash
 * mid-write leaves the previous file intact.
 *
 * ```ts
 * await writeSafetensors('ckpt.safetensors', { 'classifier.weight': { shape: [10, 64], data: w } }, { epoch: '12' });
 * ```
 */
export async function writeSafetensors(
  path: string,
  tensors: Readonly<Record<string, TensorInput>> | ReadonlyMap<string, TensorInput>,
  metadata?: Readonly<Record<string, string>>,
): Promise<void> {
  await writeFileAtomic(path, encodeChunks(tensors, metadata));
}

/** Encodes tensors and metadata into one safetensors byte array. */
export function encodeSafetensors(
  tensors: Readonly<Record<string, TensorInput>> | ReadonlyMap<string, TensorInput>,
  metadata?: Readonly<Record<string, string>>,
): Uint8Array {
  return Buffer.concat(encodeChunks(tensors, metadata));
}

/** Returns the header bytes followed by one view per tensor, without copying tensor data. */
function encodeChunks(
  tensors: Readonly<Record<string, TensorInput>> | ReadonlyMap<string, TensorInput>,
  metadata?: Readonly<Record<string, string>>,
): Uint8Array[] {
  assertLittleEndianHost();
  const entries = [...(tensors instanceof Map ? tensors.entries() : Object.entries(tensors))].map(([name, t]) =>
    checkInput(name, t),
  );

  // Larger elements first, then by name, as the reference writer does: every tensor then
  // starts at a multiple of its element size (the data section starts 8-byte aligned), and
  // the file does not depend on the caller's insertion order.
  entries.sort((a, b) => DTYPE_BYTES[b.dtype] - DTYPE_BYTES[a.dtype] || compareStrings(a.name, b.name));

  // A null prototype keeps a tensor named "__proto__" an ordinary key.
  const header: Record<string, unknown> = Object.create(null);
  if (metadata && Object.keys(metadata).length > 0) header[METADATA_KEY] = checkMetadata(metadata);
  let offset = 0;
  for (const e of entries) {
    header[e.name] = { dtype: e.dtype, shape: [...e.shape], data_offsets: [offset, offset + e.bytes.byteLength] };
    offset += e.bytes.byteLength;
  }

  // Spaces pad the JSON to a multiple of 8 so the data section is 8-byte aligned.
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const padded = Buffer.alloc(Math.ceil(json.byteLength / 8) * 8, 0x20);
  json.copy(padded);
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(padded.byteLength));

  return [length, padded, ...entries.map((e) => e.bytes)];
}

interface CheckedInput {
  name: string;
  dtype: DType;
  shape: readonly number[];
  bytes: Uint8Array;
}

function checkInput(name: string, t: TensorInput): CheckedInput {
  if (name === '' || name === METADATA_KEY) throw new Error(`invalid tensor name '${name}': it must be non-empty and not ${METADATA_KEY}`);
  const arrayDtype = dtypeOfArray(t.data);
  const dtype = t.dtype ?? arrayDtype;
  const storable = dtype === arrayDtype || (dtype === 'BOOL' && arrayDtype === 'U8');
  if (!storable) throw new Error(`tensor '${name}': dtype ${dtype} cannot be written from a ${t.data.constructor.name}`);
  checkShape(t.shape, `tensor '${name}'`);
  const count = elementCount(t.shape);
  if (count !== t.data.length) {
    throw new Error(`tensor '${name}': shape [${t.shape.join(', ')}] has ${count} elements but the data has ${t.data.length}`);
  }
  return { name, dtype, shape: t.shape, bytes: new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength) };
}

function checkMetadata(metadata: Readonly<Record<string, string>>): Record<string, string> {
  for (const [key, value] of Object.entries(metadata)) {
    if (typeof value !== 'string') throw new Error(`invalid metadata '${key}': safetensors metadata values must be strings, got ${typeof value}`);
  }
  return { ...metadata };
}

function dtypeOfArray(data: TensorArray): DType {
  for (const [ctor, dtype] of ARRAY_DTYPES) if (data instanceof ctor) return dtype;
  throw new Error(`unsupported tensor data type ${(data as object).constructor.name}`);
}

// ---------------------------------------------------------------------------------------
// Reading

/** Reads and validates a safetensors file. Errors name the file and the first problem found. */
export async function readSafetensors(path: string): Promise<SafetensorsFile> {
  return decodeSafetensors(await readFile(path), path);
}

/**
 * Decodes and validates safetensors bytes. `source` names the bytes in errors (a file path).
 * Every tensor is copied out of `bytes`, so the result does not keep the input alive.
 */
export function decodeSafetensors(bytes: Uint8Array, source = '<bytes>'): SafetensorsFile {
  assertLittleEndianHost();
  const fail = (problem: string): never => {
    throw new Error(`${source}: invalid safetensors file: ${problem}`);
  };

  if (bytes.byteLength < 8) fail(`${bytes.byteLength} bytes is shorter than the 8-byte header length field`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = view.getBigUint64(0, true);
  if (headerLength > BigInt(MAX_HEADER_BYTES)) fail(`header length ${headerLength} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  if (headerLength > BigInt(bytes.byteLength - 8)) {
    fail(`header length ${headerLength} exceeds the ${bytes.byteLength - 8} bytes after the length field`);
  }
  const dataStart = 8 + Number(headerLength);
  const dataLength = bytes.byteLength - dataStart;

  const header = parseHeader(bytes.subarray(8, dataStart), fail);
  const metadata = parseMetadata(header[METADATA_KEY], fail);
  const entries = Object.entries(header)
    .filter(([name]) => name !== METADATA_KEY)
    .map(([name, value]) => parseEntry(name, value, dataLength, fail));
  checkCoverage(entries, dataLength, fail);

  const tensors = new Map<string, Tensor>();
  for (const e of entries) {
    // A fresh copy (not slice: Buffer.slice returns a view) starts at offset 0 of its own
    // buffer, so every element size is aligned.
    const raw = new Uint8Array(e.end - e.begin);
    raw.set(bytes.subarray(dataStart + e.begin, dataStart + e.end));
    tensors.set(e.name, { dtype: e.dtype, shape: e.shape, data: toTypedArray(raw, e.dtype, e.name, fail) });
  }
  return { tensors, metadata };
}

type Fail = (problem: string) => never;

interface HeaderEntry {
  name: string;
  dtype: DType;
  shape: number[];
  begin: number;
  end: number;
}

function parseHeader(bytes: Uint8Array, fail: Fail): Record<string, unknown> {
  let text = '';
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    fail('header is not valid UTF-8');
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (err) {
    fail(`header is not valid JSON (${(err as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) fail('header is not a JSON object');
  return header as Record<string, unknown>;
}

function parseMetadata(value: unknown, fail: Fail): Record<string, string> {
  if (value === undefined) return {};
  if (typeof value !== 'object' || value === null || Array.isArray(value)) fail(`${METADATA_KEY} is not an object`);
  const metadata = value as Record<string, unknown>;
  for (const [key, v] of Object.entries(metadata)) {
    if (typeof v !== 'string') fail(`${METADATA_KEY} value '${key}' is not a string`);
  }
  return { ...(metadata as Record<string, string>) };
}

function parseEntry(name: string, value: unknown, dataLength: number, fail: Fail): HeaderEntry {
  const where = `tensor '${name}'`;
  if (typeof value !== 'object' || value === null || Array.isArray(value)) fail(`${where} is not an object`);
  const { dtype, shape, data_offsets: offsets } = value as Record<string, unknown>;

  if (typeof dtype !== 'string' || !(dtype in DTYPE_BYTES)) fail(`${where} has unknown dtype ${JSON.stringify(dtype)}`);
  if (!Array.isArray(shape) || !shape.every(isCount)) fail(`${where} has invalid shape ${JSON.stringify(shape)}`);
  const isPair = Array.isArray(offsets) && offsets.length === 2 && offsets.every(isCount);
  if (!isPair) fail(`${where} has invalid data_offsets ${JSON.stringify(offsets)}`);

  const [begin, end] = offsets as [number, number];
  if (begin > end) fail(`${where} has data_offsets [${begin}, ${end}] that end before they begin`);
  if (end > dataLength) fail(`${where} has data_offsets [${begin}, ${end}] beyond the ${dataLength}-byte data section`);

  const size = DTYPE_BYTES[dtype as DType];
  const expected = elementCount(shape as number[]) * size;
  if (expected !== end - begin) {
    fail(`${where} with dtype ${dtype} and shape [${(shape as number[]).join(', ')}] needs ${expected} bytes but data_offsets [${begin}, ${end}] span ${end - begin}`);
  }
  return { name, dtype: dtype as DType, shape: shape as number[], begin, end };
}

/** The tensors must cover the data section exactly once: no overlaps, holes or trailing bytes. */
function checkCoverage(entries: HeaderEntry[], dataLength: number, fail: Fail): void {
  entries.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let covered = 0;
  let previous: HeaderEntry | undefined;
  for (const e of entries) {
    if (e.begin < covered && previous) {
      fail(`tensors '${previous.name}' [${previous.begin}, ${previous.end}] and '${e.name}' [${e.begin}, ${e.end}] overlap`);
    }
    if (e.begin > covered) fail(`data bytes [${covered}, ${e.begin}) belong to no tensor`);
    covered = e.end;
    previous = e;
  }
  if (covered !== dataLength) fail(`${dataLength - covered} trailing data bytes after the last tensor`);
}

/** Views `raw`, which must start at offset 0 of its own buffer, as the dtype's array. */
function toTypedArray(raw: Uint8Array, dtype: DType, name: string, fail: Fail): TensorArray {
  const buffer = raw.buffer as ArrayBuffer;
  const count = raw.byteLength / DTYPE_BYTES[dtype];
  switch (dtype) {
    case 'F64':
      return new Float64Array(buffer, 0, count);
    case 'F32':
      return new Float32Array(buffer, 0, count);
    case 'F16':
      return widenHalf(new Uint16Array(buffer, 0, count));
    case 'BF16':
      return widenBfloat16(new Uint16Array(buffer, 0, count));
    case 'I64':
      return new BigInt64Array(buffer, 0, count);
    case 'I32':
      return new Int32Array(buffer, 0, count);
    case 'I16':
      return new Int16Array(buffer, 0, count);
    case 'I8':
      return new Int8Array(buffer, 0, count);
    case 'U64':
      return new BigUint64Array(buffer, 0, count);
    case 'U32':
      return new Uint32Array(buffer, 0, count);
    case 'U16':
      return new Uint16Array(buffer, 0, count);
    case 'U8':
    case 'BOOL':
      return raw;
    case 'F8_E4M3':
    case 'F8_E5M2':
      return fail(`tensor '${name}' has dtype ${dtype}, which this reader does not decode`);
  }
}

/** IEEE 754 binary16 → binary32. */
function widenHalf(half: Uint16Array): Float32Array {
  const out = new Float32Array(half.length);
  for (let i = 0; i < half.length; i++) {
    const h = half[i];
    const sign = h & 0x8000 ? -1 : 1;
    const exponent = (h >> 10) & 0x1f;
    const fraction = h & 0x3ff;
    if (exponent === 0) out[i] = sign * fraction * 2 ** -24; // zero or subnormal
    else if (exponent === 0x1f) out[i] = fraction ? NaN : sign * Infinity;
    else out[i] = sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
  }
  return out;
}

/** bfloat16 is the upper half of a binary32, so widening is a 16-bit shift. */
function widenBfloat16(bf16: Uint16Array): Float32Array {
  const bits = new Uint32Array(bf16.length);
  for (let i = 0; i < bf16.length; i++) bits[i] = bf16[i] << 16;
  return new Float32Array(bits.buffer);
}

// ---------------------------------------------------------------------------------------
// Shared checks

function isCount(x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
}

function checkShape(shape: readonly number[], where: string): void {
  if (!Array.isArray(shape) || !shape.every(isCount)) throw new Error(`${where}: invalid shape ${JSON.stringify(shape)}`);
}

/** Orders by UTF-16 code units, independent of the locale. */
function compareStrings(a: string, b: string): number {
  if (a < b) return -1;
  if (a > b) return 1;
  return 0;
}

function elementCount(shape: readonly number[]): number {
  return shape.reduce((n, d) => n * d, 1);
}

function assertLittleEndianHost(): void {
  if (!HOST_IS_LITTLE_ENDIAN) throw new Error('safetensors I/O needs a little-endian host; this host is big-endian');
}
