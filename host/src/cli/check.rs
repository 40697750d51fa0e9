//! `tq-host check FILE`: everything `serve` would check before binding —
//! the file's syntax and keys, every certificate and key, every plugin
//! (compiled, linked, `init` run) — and nothing more. For CI pipelines and
//! for `ExecStartPre=` / `ExecReload=` guards. `tq-host compile` does the
//! same to fill the compilation cache ahead of deployment.

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

/// Flags of `tq-host compile`.
#[derive(Debug, Args)]
pub(super) struct CompileArgs {
    /// Components to compile (as with `--plugin`; more than one compiles
    /// each with the same flags).
    #[arg(value_name = "WASM")]
    wasm: Vec<PathBuf>,

    /// The flags and config the server will run with.
    #[command(flatten)]
    serve: Box<ServeArgs>,
}

pub(super) async fn compile(args: CompileArgs) -> anyhow::Result<()> {
    let CompileArgs { wasm, serve } = args;
    let Some(dir) = serve.cache_dir() else {
        anyhow::bail!(
            "no compilation cache: give --cache-dir DIR (or set TQ_CACHE_DIR or HOME), not --no-cache"
        );
    };
    if !wasm.is_empty() && serve.config.is_some() {
        anyhow::bail!("give WASM files or --config, not both");
    }
    let runs: Vec<ServeArgs> = if wasm.is_empty() {
        vec![*serve]
    } else {
        wasm.iter()
            .map(|w| ServeArgs {
                plugin: Some(w.clone()),
                // A raw QUIC plugin needs a protocol to pass the checks;
                // ALPN does not shape its code.
                alpn: if serve.alpn.is_empty() {
                    vec!["tq-compile".into()]
                } else {
                    serve.alpn.clone()
                },
                ..(*serve).clone()
            })
            .collect()
    };
    let mut compiled = 0;
    for run in runs {
        let plan = plan::build(&run, Arc::new(crate::metrics::NoMetrics), Mode::Check).await?;
        for l in &plan.listeners {
            if let Some(p) = &l.plugin {
                compiled += 1;
                let v = p.live.current();
                println!(
                    "{}: {} ({}, {:.0} ms{})",
                    v.path().display(),
                    v.hash(),
                    v.world(),
                    v.compile_time().as_secs_f64() * 1e3,
                    if v.compiled() == crate::plugin::Compiled::Cached {
                        ", already in the cache"
                    } else {
                        ", compiled"
                    }
                );
            }
        }
    }
    if compiled == 0 {
        anyhow::bail!(
            "nothing to compile: give WASM files, or a --config whose listeners have plugins"
        );
    }
    println!("cache: {}", dir.display());
    Ok(())
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
