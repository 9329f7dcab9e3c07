// A size-bucketed pool of storage buffers. Released buffers go back to their bucket and
// are handed out again; the pool tracks live bytes (held by tensors) and their peak,
// which is the "device memory" the trainer reports. Every buffer has the same usage
// (storage + copy source + copy destination) so any buffer can serve any tensor.

export const BUFFER_USAGE = 0x80 /* STORAGE */ | 0x04 /* COPY_SRC */ | 0x08 /* COPY_DST */;

/**
 * Rounds a request up to its bucket: multiples of 256 B up to 4 KiB, then four buckets per
 * power of two (at most 25% slack). Small buckets stay exact so tiny tensors (biases,
 * LayerNorm weights) do not waste much; coarse buckets above make reuse likely.
 */
export function bucketBytes(bytes: number): number {
  const b = Math.max(256, bytes);
  if (b <= 4096) return Math.ceil(b / 256) * 256;
  const p = 2 ** Math.floor(Math.log2(b));
  const step = p / 4;
  return Math.ceil(b / step) * step;
}

export class BufferPool {
  private free = new Map<number, GPUBuffer[]>();
  private sizes = new WeakMap<GPUBuffer, number>();
  /** Bytes currently held by live tensors (bucket sizes). */
  liveBytes = 0;
  /** Highest liveBytes since the last resetPeak(). */
  peakBytes = 0;
  /** Bytes sitting in the free lists, ready for reuse. */
  cachedBytes = 0;
  /** Buffers created over the pool's life (a reuse test reads this). */
  created = 0;

  constructor(private device: GPUDevice) {}

  acquire(bytes: number): GPUBuffer {
    const size = bucketBytes(bytes);
    const list = this.free.get(size);
    let buf = list?.pop();
    if (buf) {
      this.cachedBytes -= size;
    } else {
      buf = this.device.createBuffer({ size, usage: BUFFER_USAGE });
      this.sizes.set(buf, size);
      this.created++;
    }
    this.liveBytes += size;
    if (this.liveBytes > this.peakBytes) this.peakBytes = this.liveBytes;
    return buf;
  }

  release(buf: GPUBuffer): void {
    const size = this.sizes.get(buf);
    if (size === undefined) throw new Error('BufferPool.release: buffer does not belong to this pool');
    this.liveBytes -= size;
    this.cachedBytes += size;
    let list = this.free.get(size);
    if (!list) this.free.set(size, (list = []));
    list.push(buf);
  }

  sizeOf(buf: GPUBuffer): number {
    return this.sizes.get(buf) ?? 0;
  }

  resetPeak(): void {
    this.peakBytes = this.liveBytes;
  }

  /** Destroys every cached buffer (live ones are untouched). */
  trim(): void {
    for (const list of this.free.values()) for (const b of list) b.destroy();
    this.free.clear();
    this.cachedBytes = 0;
  }
}
