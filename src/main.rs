//! The `vramprobe` binary: the library's command line, with the counting allocator that
//! the CPU measurements read (a process-wide choice, so the binary makes it).

#[global_allocator]
static ALLOC: vramprobe::probe::host::CountingAlloc = vramprobe::probe::host::CountingAlloc;

fn main() -> std::process::ExitCode {
    vramprobe::cli::main()
}
