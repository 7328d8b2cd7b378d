import type { Device, PinnedBuffer } from "@smallkv/tensor";

/**
 * Small per-owner arrays (indices, counts, moves, V-only weights) in pinned host memory
 * that kernels read in place: no upload, no synchronisation. Each slot is reused only
 * at its owner's next step, by which time the step that used it has completed.
 */
export class Staging {
  private slots = new Map<string, PinnedBuffer>();
  constructor(private readonly dev: Device) {}

  private slot(name: string, n: number): PinnedBuffer {
    let b = this.slots.get(name);
    if (!b || b.length < n) {
      if (b) {
        this.dev.sync(0);
        this.dev.sync(1);
        b.free();
      }
      b = this.dev.pinned(Math.max(16, n * 2));
      this.slots.set(name, b);
    }
    return b;
  }

  ints(name: string, data: ArrayLike<number>): number {
    const b = this.slot(name, data.length);
    new Int32Array(b.f32.buffer, b.f32.byteOffset, data.length).set(data);
    return b.ptr;
  }

  floats(name: string, data: Float32Array): number {
    const b = this.slot(name, data.length);
    b.f32.set(data);
    return b.ptr;
  }

  free(): void {
    for (const b of this.slots.values()) b.free();
    this.slots.clear();
  }
}
