fn main() -> std::process::ExitCode {
    vramprobe::cli::main()
}
