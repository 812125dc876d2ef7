//! Features from a pre-trained encoder for a classifier of your own:
//! `cargo run --release --example features -- CHECKPOINT DIR OUT.csv`.
//!
//! Loads a Tessera checkpoint (or an MAE `state_dict` in safetensors), runs
//! every image of the folder `DIR` through the encoder without masking, and
//! writes one CSV row per image: file label (or -1), then the mean-pooled
//! feature vector.

use std::io::Write;
use tessera_mim::Pool;
use tessera_mim::data::folder::{DEFAULT_VAL_FRACTION, ImageFolder};
use tessera_mim::data::loader::load_batch;
use tessera_mim::data::transform::Transform;
use tessera_mim::data::{Dataset, Split};
use tessera_mim::io::checkpoint::load_model_hinted;
use tessera_mim::io::official::ModelHints;
use tessera_tensor::no_grad;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [ckpt, dir, out] = args.as_slice() else {
        return Err("usage: features CHECKPOINT DIR OUT.csv".into());
    };
    // Features only: an encoder-only checkpoint is fine.
    let model = load_model_hinted(ckpt.as_ref(), None, &ModelHints::default(), false)?;
    let e = &model.config.encoder;
    let data = ImageFolder::open(dir.as_ref(), Split::Train, DEFAULT_VAL_FRACTION)?;
    let t = Transform::eval(e, &data.normalization());
    let mut csv = std::io::BufWriter::new(std::fs::File::create(out)?);
    let indices: Vec<usize> = (0..data.len()).collect();
    for batch in indices.chunks(64) {
        let (imgs, _) = load_batch(&data, batch, &t, 0)?;
        let feats = no_grad(|| model.features(&imgs, Pool::Mean))?; // (B, D)
        let d = feats.shape()[1];
        for (row, &i) in feats.to_vec().chunks(d).zip(batch) {
            let label = data.label(i).map_or(-1, |l| l as i64);
            let values: Vec<String> = row.iter().map(|v| v.to_string()).collect();
            writeln!(csv, "{label},{}", values.join(","))?;
        }
    }
    println!("{} images, {}-wide features, in {out}", data.len(), e.out_dim());
    Ok(())
}
