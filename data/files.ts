// File helpers shared by the loaders: reading with errors that name the file, and atomic writes.
import { randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { DataError } from './dataset.ts';

/** Reads a whole file, gunzipping it when it starts with the gzip magic bytes 1f 8b. */
export async function readDataFile(path: string, fix: string): Promise<Uint8Array> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(path);
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'file not found' : `cannot read file (${(error as Error).message})`;
    throw new DataError(`${path}: ${reason}; ${fix}`);
  }
  if (bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b) {
    try {
      bytes = gunzipSync(bytes);
    } catch (error) {
      throw new DataError(`${path}: invalid or truncated gzip data (${(error as Error).message}); download the file again`);
    }
  }
  return bytes;
}

/**
 * Writes `bytes` to `path` so that readers see either the old file or the complete new one:
 * the data goes to a temporary file in the same directory, is flushed with fsync, and is
 * then renamed over `path`. Creates missing parent directories.
 */
export async function writeFileAtomic(path: string, bytes: Uint8Array): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const temporary = `${path}.${process.pid}-${randomBytes(4).toString('hex')}.tmp`;
  try {
    const file = await open(temporary, 'w');
    try {
      await file.writeFile(bytes);
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(temporary, path);
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  }
}
