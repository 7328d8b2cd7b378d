// Worker thread body of TextTokenizer.encodeAsync: tokenises long texts off the main thread.
import { parentPort, workerData } from "node:worker_threads";
import { TextTokenizer } from "./tokenizer.js";

const tok = new TextTokenizer(workerData.dir as string, workerData.gguf ?? undefined);
parentPort!.on("message", (m: { id: number; text: string; addSpecial: boolean }) => {
  try {
    const ids = Int32Array.from(tok.encode(m.text, m.addSpecial));
    parentPort!.postMessage({ id: m.id, ids }, [ids.buffer]);
  } catch (e) {
    parentPort!.postMessage({ id: m.id, error: (e as Error).message });
  }
});
