fn main() -> std::process::ExitCode {
    vpp_broker::cli::main()
}
