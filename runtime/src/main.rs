fn main() -> std::process::ExitCode {
    svc_overlay::cli::main()
}
