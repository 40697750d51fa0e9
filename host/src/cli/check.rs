//! `tq-host check FILE`: everything `serve` would check before binding —
//! the file's syntax and keys, every certificate and key, every plugin
//! (compiled, linked, `init` run) — and nothing more. For CI pipelines and
//! for `ExecStartPre=` / `ExecReload=` guards.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser};

use super::plan::{self, Mode};
use super::ServeArgs;

/// Flags of `tq-host check`.
#[derive(Debug, Args)]
pub(super) struct CheckArgs {
    /// The config file to check (as given to `tq-host --config`).
    #[arg(value_name = "FILE")]
    config: PathBuf,
}

/// `ServeArgs` as `tq-host --config FILE` would have them.
#[derive(Parser)]
struct Only {
    #[command(flatten)]
    serve: ServeArgs,
}

pub(super) async fn run(args: CheckArgs) -> anyhow::Result<()> {
    let Some(path) = args.config.to_str() else {
        anyhow::bail!("{} is not a UTF-8 path", args.config.display());
    };
    let serve = Only::try_parse_from(["tq-host", "--config", path])?.serve;
    let plan = plan::build(&serve, Arc::new(crate::metrics::NoMetrics), Mode::Check).await?;
    for l in &plan.listeners {
        let what = match &l.plugin {
            Some(p) => format!(
                "plugin {} ({}, sha256 {})",
                p.live.path().display(),
                p.live.current().world(),
                p.live.current().hash()
            ),
            None => format!("built-in {:?}", l.app),
        };
        let addrs: Vec<String> = l.listen.iter().map(|a| a.to_string()).collect();
        println!(
            "{}: {} on {} (ALPN {})",
            l.name,
            what,
            addrs.join(", "),
            l.params.settings.alpn.join(", ")
        );
    }
    println!("{}: ok", args.config.display());
    Ok(())
}
