//! `tessera convert IN OUT`: a PyTorch `.pth` (or any checkpoint Tessera
//! reads) as a safetensors file, read without running any of it.

use anyhow::{Result, bail};
use std::path::PathBuf;
use tessera_mim::io::safetensors::TensorFile;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The file to convert: a `.pth` written by torch.save (its state dict,
    /// found at the top or under 'model', 'state_dict' or 'module'), or a
    /// safetensors file.
    pub input: PathBuf,
    /// Where to write the safetensors copy.
    pub output: PathBuf,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    pub overwrite: bool,
}

pub fn run(args: Args) -> Result<()> {
    if args.output.exists() && !args.overwrite {
        bail!(
            "{} exists; choose another output or pass --overwrite",
            args.output.display()
        );
    }
    let mut file = TensorFile::load(&args.input)?;
    let values: usize = file.tensors.values().map(|t| t.data.len()).sum();
    let source = args.input.file_name().map_or_else(
        || args.input.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    file.metadata.insert("converted_from".into(), source);
    file.save(&args.output)?;
    println!(
        "{}: {} tensors, {values} values, written as f32 to {}",
        args.input.display(),
        file.tensors.len(),
        args.output.display()
    );
    Ok(())
}
