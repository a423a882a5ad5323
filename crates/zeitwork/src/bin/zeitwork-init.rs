//! `zeitwork-init`: the init of an isolated process instance (see `zw_agent::init`).
//!
//! A separate, small binary rather than a subcommand of `zeitwork`: two of these run
//! beside every isolated instance (a shim outside its PID namespace and PID 1 inside), so
//! what they cost in memory is per-instance overhead. It parses its arguments by hand and
//! uses the system allocator.
//!
//! Usage (the agent's process driver builds it):
//!   zeitwork-init --hostname NAME [--rootfs DIR] [--cgroup-procs FILE]... -- COMMAND [ARG]...

use std::path::PathBuf;
use std::process::ExitCode;

fn usage(why: &str) -> ExitCode {
    eprintln!(
        "zeitwork-init: {why}\nusage: zeitwork-init --hostname NAME [--rootfs DIR] [--cgroup-procs FILE]... -- COMMAND [ARG]...\n(started by `zeitwork agent` for isolated instances; not meant to be run by hand)"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = zw_agent::init::InitArgs::default();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--" => {
                args.command = it.by_ref().collect();
                break;
            }
            "--hostname" | "--rootfs" | "--cgroup-procs" => {
                let Some(v) = it.next() else {
                    return usage(&format!("{a} needs a value"));
                };
                match a.as_str() {
                    "--hostname" => args.hostname = v,
                    "--rootfs" => args.rootfs = Some(PathBuf::from(v)),
                    _ => args.cgroup_procs.push(PathBuf::from(v)),
                }
            }
            other => return usage(&format!("unexpected argument `{other}`")),
        }
    }
    if args.command.is_empty() {
        return usage("no command after `--`");
    }
    if args.hostname.is_empty() {
        return usage("--hostname is required");
    }
    ExitCode::from(zw_agent::init::run(args).clamp(0, 255) as u8)
}
