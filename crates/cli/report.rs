//! `tessera report RUN [RUN …]`: the HTML page of one run folder (loss,
//! learning rate, gradient norm and images/s against step, reconstructions
//! over training, attention maps, k-NN and probe results, fine-tuning's
//! accuracy and confusion matrix), or of several overlaid on shared axes.
//! `pretrain` and `finetune` refresh `RUN/report.html` at each checkpoint;
//! this command writes it for any run folder, finished or not.

use anyhow::{Result, bail};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run folders written by `tessera pretrain` or `tessera finetune`;
    /// several are overlaid to compare recipes.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Where to write the page (default: RUN/report.html for one run,
    /// report.html in the working folder for several).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let out = match (&args.out, args.runs.as_slice()) {
        (Some(o), _) => o.clone(),
        (None, [one]) => one.join(tessera_mim::run::folder::REPORT),
        (None, _) => PathBuf::from(tessera_mim::run::folder::REPORT),
    };
    if out.is_dir() {
        bail!("{} is a folder; --out takes the page's file name", out.display());
    }
    let t = Instant::now();
    let dirs: Vec<&std::path::Path> = args.runs.iter().map(PathBuf::as_path).collect();
    tessera_mim::run::report::write(&dirs, &out)?;
    println!(
        "wrote {} ({} run{}, {:.0} ms)",
        out.display(),
        dirs.len(),
        if dirs.len() == 1 { "" } else { "s" },
        1e3 * t.elapsed().as_secs_f64()
    );
    Ok(())
}
