//! End-to-end: small networks built from the engine's ops fit a synthetic
//! regression (loss falls by at least 90%).

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use tessera_tensor::init::xavier_uniform;
use tessera_tensor::optim::{AdamW, AdamWConfig, Optimizer, ParamGroup};
use tessera_tensor::{Result, Tensor};

fn linear_params(out: usize, inp: usize, rng: &mut Xoshiro256PlusPlus) -> (Tensor, Tensor) {
    (
        Tensor::param(xavier_uniform(out, inp, rng), &[out, inp]).unwrap(),
        Tensor::param(vec![0.0; out], &[out]).unwrap(),
    )
}

fn fit(params: Vec<Tensor>, steps: usize, lr: f32, loss_fn: impl Fn() -> Result<Tensor>) -> (f32, f32) {
    let mut opt = AdamW::new(
        vec![ParamGroup::new(params, 0.0)],
        AdamWConfig {
            lr,
            ..Default::default()
        },
    );
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..steps {
        let loss = loss_fn().unwrap();
        last = loss.item().unwrap();
        first.get_or_insert(last);
        let grads = loss.backward().unwrap();
        opt.step(&grads).unwrap();
    }
    (first.unwrap(), last)
}

#[test]
fn two_layer_mlp_fits_a_nonlinear_function() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(0);
    let (n, d, hidden) = (128, 4, 32);
    let x: Vec<f32> = (0..n * d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    // y = sin(2·x0) + x1·x2 − 0.5·x3²
    let y: Vec<f32> = x
        .chunks(d)
        .map(|r| (2.0 * r[0]).sin() + r[1] * r[2] - 0.5 * r[3] * r[3])
        .collect();
    let (x, y) = (Tensor::new(x, &[n, d]).unwrap(), Tensor::new(y, &[n, 1]).unwrap());
    let (w1, b1) = linear_params(hidden, d, &mut rng);
    let (w2, b2) = linear_params(1, hidden, &mut rng);
    let params = vec![w1.clone(), b1.clone(), w2.clone(), b2.clone()];
    let (first, last) = fit(params, 400, 1e-2, || {
        x.linear(&w1, Some(&b1))?
            .gelu()
            .linear(&w2, Some(&b2))?
            .mse_loss(&y, None)
    });
    assert!(last < 0.1 * first, "MLP loss went from {first} to {last}");
}

#[test]
fn one_block_transformer_fits_a_sequence_regression() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let (b, n, d, heads) = (32, 7, 16, 2);
    let x: Vec<f32> = (0..b * n * d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    // Each sequence's target mixes tokens: the mean of every token's first
    // feature times the last token's second feature, plus the max of feature 2.
    let y: Vec<f32> = x
        .chunks(n * d)
        .map(|s| {
            let mean0: f32 = (0..n).map(|t| s[t * d]).sum::<f32>() / n as f32;
            let max2 = (0..n).map(|t| s[t * d + 2]).fold(f32::MIN, f32::max);
            mean0 * s[(n - 1) * d + 1] * 3.0 + max2
        })
        .collect();
    let (x, y) = (Tensor::new(x, &[b, n, d]).unwrap(), Tensor::new(y, &[b, 1]).unwrap());
    let ones = || Tensor::param(vec![1.0; d], &[d]).unwrap();
    let zeros = || Tensor::param(vec![0.0; d], &[d]).unwrap();
    let (n1w, n1b, n2w, n2b) = (ones(), zeros(), ones(), zeros());
    let (qkv_w, qkv_b) = linear_params(3 * d, d, &mut rng);
    let (proj_w, proj_b) = linear_params(d, d, &mut rng);
    let (fc1_w, fc1_b) = linear_params(4 * d, d, &mut rng);
    let (fc2_w, fc2_b) = linear_params(d, 4 * d, &mut rng);
    let (head_w, head_b) = linear_params(1, d, &mut rng);
    let params = vec![
        n1w.clone(),
        n1b.clone(),
        n2w.clone(),
        n2b.clone(),
        qkv_w.clone(),
        qkv_b.clone(),
        proj_w.clone(),
        proj_b.clone(),
        fc1_w.clone(),
        fc1_b.clone(),
        fc2_w.clone(),
        fc2_b.clone(),
        head_w.clone(),
        head_b.clone(),
    ];
    let forward = || -> Result<Tensor> {
        let h = x
            .layer_norm(&n1w, &n1b, 1e-6)?
            .linear(&qkv_w, Some(&qkv_b))?
            .attention(heads)?;
        let x1 = x.add(&h.linear(&proj_w, Some(&proj_b))?)?;
        let m = x1
            .layer_norm(&n2w, &n2b, 1e-6)?
            .linear(&fc1_w, Some(&fc1_b))?
            .gelu()
            .linear(&fc2_w, Some(&fc2_b))?;
        let x2 = x1.add(&m)?;
        x2.mean(&[1], false)?.linear(&head_w, Some(&head_b))?.mse_loss(&y, None)
    };
    let (first, last) = fit(params, 300, 3e-3, forward);
    assert!(last < 0.1 * first, "transformer loss went from {first} to {last}");
}
