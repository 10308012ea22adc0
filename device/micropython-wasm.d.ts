/** The MicroPython WebAssembly package ships no types: the part of its API ferry uses. */
declare module '@micropython/micropython-webassembly-pyscript/micropython.mjs' {
  export interface EmscriptenStream {
    path: string;
    position: number;
  }
  export interface EmscriptenFS {
    mkdir(path: string, mode?: number): unknown;
    writeFile(path: string, data: Uint8Array | string): void;
    readFile(path: string): Uint8Array;
    readdir(path: string): string[];
    stat(path: string): { mode: number; size: number };
    isDir(mode: number): boolean;
    open(path: string, flags: number | string, mode?: number): EmscriptenStream;
    close(stream: EmscriptenStream): void;
    write(stream: EmscriptenStream, buffer: Int8Array | Uint8Array, offset: number, length: number, position?: number, canOwn?: boolean): number;
    rename(from: string, to: string): void;
    unlink(path: string): void;
  }
  export interface MicroPython {
    FS: EmscriptenFS;
    runPython(code: string): unknown;
    globals: { get(name: string): unknown };
    registerJsModule(name: string, module: Record<string, unknown>): void;
  }
  export function loadMicroPython(options?: {
    heapsize?: number;
    pystack?: number;
    stdout?: (line: string) => void;
    stderr?: (line: string) => void;
    linebuffer?: boolean;
  }): Promise<MicroPython>;
}
