//! `cargo xtask assets DIR`: writes what the Debian package installs beside the executable,
//! generated from `steadfast`'s own command line so that they never drift from it:
//! `DIR/man/steadfast*.1` (one page per subcommand too) and `DIR/completions/` for bash, zsh
//! and fish. A separate program, so the daemon links neither generator.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;
use steadfast::commands::Cli;

#[derive(Parser)]
#[command(name = "xtask", about = "Build chores of the Steadfast workspace")]
struct Xtask {
    #[command(subcommand)]
    chore: Chore,
}

#[derive(Subcommand)]
enum Chore {
    /// Generate the man pages and shell completions of `steadfast` into DIR.
    Assets { dir: PathBuf },
}

fn main() -> anyhow::Result<()> {
    match Xtask::parse().chore {
        Chore::Assets { dir } => write_assets(&dir),
    }
}

fn write_assets(dir: &Path) -> anyhow::Result<()> {
    let man = dir.join("man");
    std::fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
    clap_mangen::generate_to(Cli::command(), &man)
        .with_context(|| format!("writing the man pages into {}", man.display()))?;
    let completions = dir.join("completions");
    std::fs::create_dir_all(&completions)
        .with_context(|| format!("creating {}", completions.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), "steadfast", &completions)
            .with_context(|| {
                format!(
                    "writing the {shell} completions into {}",
                    completions.display()
                )
            })?;
    }
    Ok(())
}
