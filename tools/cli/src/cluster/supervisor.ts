import { type ChildProcess, spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";

/** One replica as the supervisor runs it. */
export interface ReplicaState {
  index: number;
  port: number;
  pid: number | null;
  /** Times it was started (1 + restarts). */
  starts: number;
  ready: boolean;
}

/**
 * Runs N `smallkv serve` replicas on fixed loopback ports and restarts any that exits while the
 * cluster runs (a crash, a kill -9, or a drain after SIGTERM), as systemd's Restart=always or a
 * Kubernetes Deployment would. Writes the replicas' ports and pids to `cluster.json`.
 */
export class Supervisor {
  readonly replicas: ReplicaState[];
  private readonly children = new Map<number, ChildProcess>();
  private stopping = false;

  constructor(
    private readonly o: {
      /** The command line of one replica, given its port. */
      argv: (port: number) => string[];
      ports: number[];
      runDir: string;
      log: (line: string) => void;
      restartDelayMs?: number;
    },
  ) {
    this.replicas = o.ports.map((port, index) => ({ index, port, pid: null, starts: 0, ready: false }));
  }

  private writeState(): void {
    writeFileSync(
      join(this.o.runDir, "cluster.json"),
      `${JSON.stringify({ replicas: this.replicas }, null, 2)}\n`,
    );
  }

  /** Start replica i; resolves once it listens (its banner is out), rejects if it exits first. */
  start(i: number): Promise<void> {
    const r = this.replicas[i];
    const child = spawn(process.execPath, this.o.argv(r.port), { stdio: ["ignore", "ignore", "pipe"] });
    this.children.set(i, child);
    r.pid = child.pid ?? null;
    r.starts++;
    r.ready = false;
    this.writeState();
    let err = "";
    return new Promise((resolve, reject) => {
      child.stderr!.on("data", (d: Buffer) => {
        const text = d.toString();
        if (!r.ready) err += text;
        for (const line of text.split("\n")) if (line.trim()) this.o.log(`[r${i}] ${line}`);
        if (!r.ready && /smallkv serving .* at http/.test(err)) {
          r.ready = true;
          this.writeState();
          resolve();
        }
      });
      child.on("exit", (code, signal) => {
        this.children.delete(i);
        r.pid = null;
        r.ready = false;
        this.writeState();
        if (this.stopping) return;
        if (r.starts === 1 && !err.includes("smallkv serving")) {
          reject(
            new Error(
              `replica ${i} exited before serving (${code ?? signal}): ${err.trim().split("\n").pop()}`,
            ),
          );
          return;
        }
        this.o.log(`replica r${i} exited (${signal ?? code}); restarting`);
        setTimeout(() => {
          if (!this.stopping)
            this.start(i).catch((e) => this.o.log(`replica r${i}: ${(e as Error).message}`));
        }, this.o.restartDelayMs ?? 500);
      });
    });
  }

  async startAll(): Promise<void> {
    await Promise.all(this.replicas.map((_, i) => this.start(i)));
  }

  /** SIGTERM every replica (each drains its in-flight requests) and wait for them to exit. */
  async stop(): Promise<void> {
    this.stopping = true;
    const waits = [...this.children.values()].map(
      (c) =>
        new Promise<void>((resolve) => (c.exitCode !== null ? resolve() : c.once("exit", () => resolve()))),
    );
    for (const c of this.children.values()) c.kill("SIGTERM");
    await Promise.all(waits);
  }
}
