// Ports for the tests' real servers: a free one, and waiting until a server listens on it.
import type { ChildProcess } from "node:child_process";
import net from "node:net";

/** A port on 127.0.0.1 that was free a moment ago. */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Resolves once 127.0.0.1:port accepts a connection; rejects if proc exits first or after 30 s. */
export async function waitForPort(port: number, proc: ChildProcess, log: () => string): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) throw new Error(`imageloc serve exited ${proc.exitCode}:\n${log()}`);
    const open = await new Promise<boolean>((resolve) => {
      const sock = net.connect(port, "127.0.0.1", () => resolve(true)).on("error", () => resolve(false));
      sock.unref();
      sock.once("connect", () => sock.destroy());
    });
    if (open) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`imageloc serve did not listen on ${port}:\n${log()}`);
}
