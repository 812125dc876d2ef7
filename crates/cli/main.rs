//! `tessera`: the command-line front end. For now it runs a small training demo
//! of the engine: a two-layer MLP fitting a synthetic regression.

use anyhow::Result;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use tessera_tensor::Tensor;
use tessera_tensor::init::xavier_uniform;
use tessera_tensor::optim::{AdamW, AdamWConfig, Optimizer, ParamGroup};

fn main() -> Result<()> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(0);
    let (n, d, hidden) = (256, 4, 64);
    let x: Vec<f32> = (0..n * d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let y: Vec<f32> = x
        .chunks(d)
        .map(|r| (2.0 * r[0]).sin() + r[1] * r[2] - 0.5 * r[3] * r[3])
        .collect();
    let (x, y) = (Tensor::new(x, &[n, d])?, Tensor::new(y, &[n, 1])?);
    let w1 = Tensor::param(xavier_uniform(hidden, d, &mut rng), &[hidden, d])?;
    let b1 = Tensor::param(vec![0.0; hidden], &[hidden])?;
    let w2 = Tensor::param(xavier_uniform(1, hidden, &mut rng), &[1, hidden])?;
    let b2 = Tensor::param(vec![0.0; 1], &[1])?;
    let group = ParamGroup::new(vec![w1.clone(), b1.clone(), w2.clone(), b2.clone()], 0.0);
    let mut opt = AdamW::new(
        vec![group],
        AdamWConfig {
            lr: 1e-2,
            ..Default::default()
        },
    );
    for step in 0..=500 {
        let loss = x
            .linear(&w1, Some(&b1))?
            .gelu()
            .linear(&w2, Some(&b2))?
            .mse_loss(&y, None)?;
        if step % 50 == 0 {
            println!("step {step:4}  loss {:.5}", loss.item()?);
        }
        let grads = loss.backward()?;
        opt.step(&grads)?;
    }
    Ok(())
}
