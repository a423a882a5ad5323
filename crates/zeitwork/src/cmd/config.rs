//! `zeitwork config validate`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use zw_config::Limits;

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Check a configuration file or directory. Prints `ok <hash>` or every error, one per
    /// line, each naming the offending key path; exits 1 on errors.
    Validate {
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
}

pub fn run(cmd: ConfigCommand) -> ExitCode {
    match cmd {
        ConfigCommand::Validate { path } => {
            let limits = Limits::default();
            match zw_config::load_path(&path, &limits)
                .and_then(|l| zw_config::validate(l.config, &limits))
            {
                Ok(valid) => {
                    let h = &valid.config.http;
                    println!("ok {}", valid.hash);
                    eprintln!(
                        "{} routers, {} services, {} middlewares",
                        h.routers.len(),
                        h.services.len(),
                        h.middlewares.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    // one stream, in order: a summary on stderr lands wherever the
                    // terminal or a log collector interleaves it with the errors
                    let mut out = String::new();
                    for e in &errors.0 {
                        out.push_str(&format!("{e}\n"));
                    }
                    out.push_str(&format!(
                        "{} error(s) in {}\n",
                        errors.0.len(),
                        path.display()
                    ));
                    print!("{out}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
