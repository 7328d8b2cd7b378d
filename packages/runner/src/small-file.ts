import { closeSync, constants, fstatSync, openSync, readSync } from "node:fs";

/**
 * Read a small configuration file (a saved matching, calibrated blocks) as UTF-8 text, or
 * throw: only a regular file of at most `maxBytes` is read. A device (/dev/zero), a FIFO
 * (which would block the process) or a directory is refused before any byte is read, and
 * the read stops at the limit even if the file grows meanwhile.
 */
export function readSmallTextFile(path: string, maxBytes = 16 * 2 ** 20): string {
  // O_NONBLOCK: opening a FIFO with no writer must not block; the fstat below refuses it.
  const fd = openSync(path, constants.O_RDONLY | (constants.O_NONBLOCK ?? 0));
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new Error("not a regular file");
    if (st.size > maxBytes) throw new Error(`larger than ${maxBytes} bytes`);
    const buf = Buffer.alloc(Math.min(st.size, maxBytes) + 1);
    let n = 0;
    for (;;) {
      const r = readSync(fd, buf, n, buf.length - n, null);
      if (r === 0) break;
      n += r;
      if (n > maxBytes) throw new Error(`larger than ${maxBytes} bytes`);
      if (n === buf.length) break;
    }
    return buf.subarray(0, n).toString("utf8");
  } finally {
    closeSync(fd);
  }
}
