// Atomic file replacement for checkpoints and exports: a reader of `path` gets either the
// old file or the complete new one, never a partial write, even if the process dies or the
// machine loses power mid-write. Serialisation formats live elsewhere (safetensors.ts).
import { randomBytes } from 'node:crypto';
import { open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** File contents: a string (written as UTF-8), one byte array, or byte chunks written in order. */
export type FileData = string | Uint8Array | readonly Uint8Array[];

/**
 * Writes `data` to `path` atomically. The bytes go to `path.tmp-<pid>-<random>` in the same
 * directory, the temp file is fsynced and renamed over `path` (rename is atomic within one
 * file system on POSIX), and then the directory is fsynced so that the rename itself is
 * durable. On any failure the temp file is removed and the error is rethrown; `path` is
 * then untouched.
 *
 * ```ts
 * await writeFileAtomic('run/config.json', JSON.stringify(config));
 * ```
 */
export async function writeFileAtomic(path: string, data: FileData): Promise<void> {
  const tempPath = join(dirname(path), `${basename(path)}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);

  try {
    await writeAndSync(tempPath, data);
    await rename(tempPath, path);
  } catch (err) {
    await unlink(tempPath).catch(() => {
      // The temp file does not exist when open failed. The original error is the one to report.
    });
    throw err;
  }

  await syncDirectory(dirname(path));
}

async function writeAndSync(path: string, data: FileData): Promise<void> {
  // 'wx' fails if the name exists, so two writers can never share a temp file.
  const handle = await open(path, 'wx');
  try {
    for (const chunk of toChunks(data)) await writeFully(handle, chunk);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function toChunks(data: FileData): readonly Uint8Array[] {
  if (typeof data === 'string') return [Buffer.from(data, 'utf8')];
  if (data instanceof Uint8Array) return [data];
  return data;
}

/** Bytes per write call, below the 2 GiB that a single POSIX write may transfer on Linux. */
const MAX_WRITE_BYTES = 1 << 30;

/** Writes the whole chunk: FileHandle.write may write fewer bytes than requested. */
async function writeFully(handle: Awaited<ReturnType<typeof open>>, chunk: Uint8Array): Promise<void> {
  let offset = 0;
  while (offset < chunk.byteLength) {
    const length = Math.min(chunk.byteLength - offset, MAX_WRITE_BYTES);
    const { bytesWritten } = await handle.write(chunk, offset, length);
    offset += bytesWritten;
  }
}

/** Fsyncs a directory so that a rename inside it survives a power loss. */
async function syncDirectory(dir: string): Promise<void> {
  // NOTE: Node cannot open a directory on Windows, so there the rename's durability is left
  // to the file system.
  if (process.platform === 'win32') return;
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
