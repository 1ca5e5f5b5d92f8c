fn main() -> std::process::ExitCode {
    vhostkit_common::daemon::daemon_main::<vhost_fs::FsDaemon>()
}
