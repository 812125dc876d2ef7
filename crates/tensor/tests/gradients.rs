//! Every operation's backward against finite differences (coordinate-wise and
//! along a random direction, see `tessera_tensor::gradcheck`), on odd sizes.

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use tessera_tensor::gradcheck::{GradCheck, check};
use tessera_tensor::{Result, Tensor};

fn param(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    Tensor::param((0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect(), shape).unwrap()
}

/// A positive parameter (for log, sqrt, pow, division).
fn positive(shape: &[usize], seed: u64) -> Tensor {
    let p = param(shape, seed);
    let v: Vec<f32> = p.to_vec().iter().map(|x| 0.5 + x.abs()).collect();
    p.set_data(&v).unwrap();
    p
}

#[track_caller]
fn ok(inputs: Vec<Tensor>, f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    if let Err(e) = check(&inputs, f, GradCheck::default()) {
        panic!("{e}");
    }
}

#[test]
fn binary_ops_with_broadcasting() {
    for (sa, sb) in [
        (vec![3, 7], vec![3, 7]),
        (vec![2, 3, 5], vec![5]),
        (vec![4, 1, 3], vec![2, 1]),
        (vec![1], vec![17]),
    ] {
        let (a, b) = (param(&sa, 1), positive(&sb, 2));
        ok(vec![a.clone(), b.clone()], |x| x[0].add(&x[1]));
        ok(vec![a.clone(), b.clone()], |x| x[0].sub(&x[1]));
        ok(vec![a.clone(), b.clone()], |x| x[0].mul(&x[1]));
        ok(vec![a.clone(), b.clone()], |x| x[0].div(&x[1]));
    }
}

#[test]
fn the_same_tensor_twice() {
    let a = param(&[7], 3);
    ok(vec![a.clone()], |x| x[0].mul(&x[0]));
    ok(vec![a], |x| x[0].add(&x[0].mul_scalar(3.0))?.mul(&x[0]));
}

#[test]
fn unary_and_scalar_ops() {
    let x = param(&[3, 17], 4);
    let p = positive(&[3, 17], 5);
    ok(vec![x.clone()], |t| Ok(t[0].add_scalar(2.0)));
    ok(vec![x.clone()], |t| Ok(t[0].mul_scalar(-1.5)));
    ok(vec![x.clone()], |t| Ok(t[0].neg()));
    ok(vec![x.clone()], |t| Ok(t[0].exp()));
    ok(vec![x.clone()], |t| Ok(t[0].tanh()));
    ok(vec![x.clone()], |t| Ok(t[0].sigmoid()));
    ok(vec![p.clone()], |t| Ok(t[0].log()));
    ok(vec![p.clone()], |t| Ok(t[0].sqrt()));
    ok(vec![p.clone()], |t| Ok(t[0].powf(2.5)));
    // abs and relu away from their kink.
    ok(vec![p.clone()], |t| Ok(t[0].abs()));
    ok(vec![p.neg().detach().to_param()], |t| Ok(t[0].abs()));
    ok(vec![p], |t| Ok(t[0].relu()));
}

#[test]
fn reductions() {
    let x = param(&[3, 7, 5], 6);
    ok(vec![x.clone()], |t| t[0].sum(&[1], false));
    ok(vec![x.clone()], |t| t[0].sum(&[0, 2], true));
    ok(vec![x.clone()], |t| t[0].mean(&[-1], false));
    ok(vec![x.clone()], |t| Ok(t[0].sum_all()));
    ok(vec![x], |t| Ok(t[0].mean_all()));
}

#[test]
fn layout_ops() {
    let x = param(&[2, 3, 5], 7);
    ok(vec![x.clone()], |t| t[0].reshape(&[5, -1]));
    ok(vec![x.clone()], |t| t[0].permute(&[2, 0, 1]));
    ok(vec![x.clone()], |t| t[0].transpose(0, 2));
    ok(vec![x.clone()], |t| t[0].narrow(1, 1, 2));
    ok(vec![x.clone()], |t| t[0].unsqueeze(1)?.broadcast_to(&[2, 4, 3, 5]));
    let y = param(&[2, 1, 5], 8);
    ok(vec![x.clone(), y], |t| Tensor::cat(&[&t[1], &t[0], &t[1]], 1));
    // MAE's keep / restore: gather a subset, then scatter back with its inverse.
    let idx = [2, 0, 1, 2];
    ok(vec![x.clone()], |t| t[0].gather_rows(&idx, 2));
    ok(vec![x.clone()], |t| t[0].scatter_rows(&[4, 1, 0, 3, 2, 5], 6));
    let restore = [1, 2, 0, 2, 0, 1];
    ok(vec![x], |t| {
        t[0].gather_rows(&[2, 0, 1, 1, 2, 0], 3)?.gather_rows(&restore, 3)
    });
}

#[test]
fn linear_and_matmul_on_odd_sizes() {
    for (m, k, n) in [(1, 1, 1), (3, 7, 17), (17, 65, 3), (7, 3, 65)] {
        let (x, w, b) = (param(&[m, k], 11), param(&[n, k], 12), param(&[n], 13));
        ok(vec![x.clone(), w.clone(), b], |t| t[0].linear(&t[1], Some(&t[2])));
        ok(
            vec![x.reshape_to(&[1, m, k]).unwrap().detach().to_param(), w.clone()],
            |t| t[0].linear(&t[1], None),
        );
        let y = param(&[k, n], 14);
        ok(vec![x.clone(), y.clone()], |t| t[0].matmul(&t[1]));
        let (a, c) = (param(&[3, m, k], 15), param(&[3, k, n], 16));
        ok(vec![a.clone(), c], |t| t[0].matmul(&t[1]));
        ok(vec![a, y], |t| t[0].matmul(&t[1]));
    }
}

#[test]
fn linear_gelu_on_odd_sizes() {
    for (m, k, n) in [(1, 1, 1), (3, 7, 17), (17, 65, 3)] {
        let (x, w, b) = (param(&[m, k], 21), param(&[n, k], 22), param(&[n], 23));
        ok(vec![x, w, b], |t| t[0].linear_gelu(&t[1], &t[2]));
    }
}

#[test]
fn linear_residual_on_odd_sizes() {
    for (m, k, n) in [(1, 1, 1), (3, 7, 17), (17, 65, 3)] {
        let (x, w, b, r) = (
            param(&[m, k], 31),
            param(&[n, k], 32),
            param(&[n], 33),
            param(&[m, n], 34),
        );
        ok(vec![x.clone(), w.clone(), b, r.clone()], |t| {
            t[0].linear_residual(&t[1], Some(&t[2]), &t[3])
        });
        ok(vec![x, w, r], |t| t[0].linear_residual(&t[1], None, &t[2]));
    }
    // The residual is the input itself (x + x·Wᵀ): both gradients add up.
    let x = param(&[4, 5], 35);
    let w = param(&[5, 5], 36);
    ok(vec![x, w], |t| t[0].linear_residual(&t[1], None, &t[0]));
}

#[test]
fn layer_norm_gelu_softmax() {
    for d in [1, 3, 7, 17, 65] {
        let x = param(&[3, d], 20);
        let (w, b) = (param(&[d], 21), param(&[d], 22));
        if d > 1 {
            ok(vec![x.clone(), w, b], |t| t[0].layer_norm(&t[1], &t[2], 1e-6));
        }
        ok(vec![x.clone()], |t| Ok(t[0].gelu()));
        ok(vec![x.mul_scalar(3.0).detach().to_param()], |t| t[0].softmax());
    }
}

#[test]
fn attention_on_odd_token_counts() {
    for (b, n, d, h) in [(1, 1, 4, 2), (2, 3, 6, 3), (1, 7, 8, 2), (2, 17, 12, 3)] {
        let qkv = param(&[b, n, 3 * d], 30 + n as u64);
        ok(vec![qkv], |t| t[0].attention(h));
    }
}

/// The bias's gradient too, shared by the batch (G = 1) and per image (G = B).
#[test]
fn biased_attention_on_odd_token_counts() {
    for (b, n, d, h) in [(1, 1, 4, 2), (2, 3, 6, 3), (3, 7, 8, 2), (2, 17, 12, 3)] {
        for g in [1, b] {
            let qkv = param(&[b, n, 3 * d], 50 + n as u64);
            let bias = param(&[g, h, n, n], 60 + g as u64);
            ok(vec![qkv, bias], |t| t[0].attention_biased(h, &t[1]));
        }
    }
}

/// The probabilities the attention uses: `P·V` per head is its output, with
/// and without a bias; a bias of the wrong shape is refused.
#[test]
fn attention_probabilities_times_v_is_the_output() {
    for (b, n, d, h) in [(1, 1, 4, 2), (2, 5, 6, 3), (3, 7, 8, 2)] {
        let qkv = param(&[b, n, 3 * d], 80 + n as u64);
        let bias = param(&[b, h, n, n], 90 + n as u64);
        for bias in [None, Some(&bias)] {
            let p = qkv.attention_probabilities(h, bias).unwrap();
            assert_eq!(p.shape(), &[b, h, n, n]);
            let out = match bias {
                Some(a) => qkv.attention_biased(h, a),
                None => qkv.attention(h),
            }
            .unwrap()
            .to_vec();
            let (p, x, dh) = (p.to_vec(), qkv.to_vec(), d / h);
            for bi in 0..b {
                for hi in 0..h {
                    for i in 0..n {
                        for c in 0..dh {
                            let pv: f32 = (0..n)
                                .map(|j| {
                                    p[((bi * h + hi) * n + i) * n + j] * x[(bi * n + j) * 3 * d + 2 * d + hi * dh + c]
                                })
                                .sum();
                            let o = out[(bi * n + i) * d + hi * dh + c];
                            assert!((pv - o).abs() < 1e-5, "({b}, {n}, {d}, {h}): {pv} vs {o}");
                        }
                    }
                }
            }
        }
    }
    let qkv = param(&[2, 3, 12], 1);
    assert!(qkv.attention_probabilities(2, Some(&param(&[1, 2, 3, 4], 2))).is_err());
}

/// The gather's backward sums every use of a table row; composed with
/// attention, as a block uses it (BEiT's index of a 2×3 grid with \[CLS\]).
#[test]
fn relpos_bias_and_attention() {
    let (grid, h) = ([2, 3], 2);
    let index = tessera_kernels::relpos::grid_index(grid, true);
    let t = tessera_kernels::relpos::table_rows(grid, true);
    let n = 1 + grid[0] * grid[1];
    let table = param(&[t, h], 70);
    ok(vec![table.clone()], |x| x[0].relpos_bias(&index, 1, n));
    let qkv = param(&[2, n, 3 * 8], 71);
    ok(vec![table, qkv], |x| {
        let bias = x[0].relpos_bias(&index, 1, n)?;
        x[1].attention_biased(h, &bias)
    });
    // Two groups with their own index (as per-image visible tokens).
    let two: Vec<u32> = index.iter().chain(index.iter().rev()).copied().collect();
    ok(vec![param(&[t, h], 72)], |x| x[0].relpos_bias(&two, 2, n));
}

/// Swin's layouts: window partition (with and without the cyclic shift), its
/// reverse, and patch merging.
#[test]
fn swin_layouts() {
    for (b, h, w, c, window, shift) in [(1, 4, 4, 2, 2, 0), (2, 6, 6, 3, 3, 1), (1, 4, 6, 1, 2, 1)] {
        let x = param(&[b, h, w, c], 90 + h as u64);
        ok(vec![x.clone()], |t| t[0].window_partition(window, shift));
        let wins = param(&[b * (h / window) * (w / window), window * window, c], 91);
        ok(vec![wins], |t| t[0].window_reverse(window, shift, [h, w]));
        ok(vec![x.clone()], |t| t[0].patch_merge());
        // Reverse undoes partition exactly.
        let back = x
            .window_partition(window, shift)
            .unwrap()
            .window_reverse(window, shift, [h, w])
            .unwrap();
        assert_eq!(back.to_vec(), x.to_vec());
    }
    let x = param(&[1, 4, 4, 2], 92);
    assert!(x.window_partition(3, 0).is_err());
    assert!(x.window_partition(2, 2).is_err());
    assert!(param(&[1, 3, 4, 2], 93).patch_merge().is_err());
    assert!(param(&[5, 4, 2], 94).window_reverse(2, 0, [4, 4]).is_err());
}

/// Shapes that do not fit are errors, not panics.
#[test]
fn biased_attention_and_relpos_refuse_bad_shapes() {
    let qkv = param(&[4, 5, 12], 80);
    for bad in [vec![1, 2, 5, 4], vec![3, 2, 5, 5], vec![1, 3, 5, 5], vec![2, 5, 5]] {
        assert!(qkv.attention_biased(2, &param(&bad, 81)).is_err(), "{bad:?}");
    }
    assert!(qkv.attention_biased(2, &param(&[2, 2, 5, 5], 82)).is_ok());
    let table = param(&[4, 2], 83);
    assert!(table.relpos_bias(&[0, 1, 2, 3], 1, 2).is_ok());
    assert!(table.relpos_bias(&[0, 1, 2, 4], 1, 2).is_err());
    assert!(table.relpos_bias(&[0, 1, 2], 1, 2).is_err());
    assert!(param(&[4], 84).relpos_bias(&[0], 1, 1).is_err());
}

#[test]
fn dropout_backward_uses_the_same_mask() {
    // The mask is drawn once per call, so check the backward directly: the
    // gradient is the mask's scale, and elements dropped in the output get 0.
    let x = param(&[4, 17], 40);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let y = x.dropout(0.5, true, &mut rng).unwrap();
    let g = y.sum_all().backward().unwrap();
    let (xs, ys, gs) = (x.to_vec(), y.to_vec(), g.get(&x).unwrap().to_vec());
    for i in 0..xs.len() {
        assert!(gs[i] == 0.0 || gs[i] == 2.0);
        assert_eq!(ys[i], xs[i] * gs[i]);
    }
    assert!(gs.contains(&0.0) && gs.contains(&2.0));
    let same = x.dropout(0.5, false, &mut rng).unwrap();
    assert!(same.same_storage(&x));
    assert!(x.dropout(1.0, true, &mut rng).is_err());
}

#[test]
fn patch_embedding() {
    for (b, c, h, w, p, d) in [(1, 1, 2, 2, 1, 3), (2, 3, 6, 9, 3, 5), (1, 2, 8, 4, 4, 7)] {
        let img = param(&[b, c, h, w], 50);
        let (wt, bias) = (param(&[d, c, p, p], 51), param(&[d], 52));
        ok(vec![img, wt, bias], |t| t[0].patch_embed(&t[1], &t[2]));
    }
}

#[test]
fn losses() {
    for (rows, p) in [(1, 1), (3, 7), (17, 3)] {
        let (pred, target) = (param(&[rows, p], 60), param(&[rows, p], 61));
        let mask: Vec<f32> = (0..rows).map(|r| if r % 3 == 0 { 1.0 } else { 0.0 }).collect();
        let mask = Tensor::new(mask, &[rows]).unwrap();
        ok(vec![pred.clone(), target.clone()], |t| t[0].mse_loss(&t[1], None));
        ok(vec![pred.clone(), target.clone()], |t| {
            t[0].mse_loss(&t[1], Some(&mask))
        });
        // L1 away from the kink: shift the target so |pred − target| > h.
        let far = target.add_scalar(3.0).detach().to_param();
        ok(vec![pred.clone(), far], |t| t[0].l1_loss(&t[1], Some(&mask)));
        let targets: Vec<u32> = (0..rows).map(|r| (r % p) as u32).collect();
        ok(vec![pred.clone()], |t| t[0].cross_entropy(&targets, None));
        ok(vec![pred.clone()], |t| t[0].cross_entropy(&targets, Some(&mask)));
        // Soft targets: smoothed one-hot rows mixed with another row's.
        let soft: Vec<f32> = (0..rows * p)
            .map(|i| {
                let (r, k) = (i / p, i % p);
                let hot = |c: usize| if k == c { 0.9 } else { 0.0 } + 0.1 / p as f32;
                0.7 * hot(r % p) + 0.3 * hot((r + 1) % p)
            })
            .collect();
        ok(vec![pred], |t| t[0].soft_cross_entropy(&soft));
    }
}

#[test]
fn fused_ops_equal_their_composition_from_primitives() {
    // layer_norm == (x − mean) / sqrt(var + eps) · w + b, values and gradients.
    let x = param(&[5, 17], 70);
    let (w, b) = (param(&[17], 71), param(&[17], 72));
    let fused = x.layer_norm(&w, &b, 1e-6).unwrap();
    let composed = {
        let mean = x.mean(&[-1], true).unwrap();
        let xc = x.sub(&mean).unwrap();
        let var = xc.mul(&xc).unwrap().mean(&[-1], true).unwrap();
        xc.div(&var.add_scalar(1e-6).sqrt())
            .unwrap()
            .mul(&w)
            .unwrap()
            .add(&b)
            .unwrap()
    };
    let r = param(&[5, 17], 73).detach();
    let gf = fused.mul(&r).unwrap().sum_all().backward().unwrap();
    let gc = composed.mul(&r).unwrap().sum_all().backward().unwrap();
    for (u, v) in fused.to_vec().iter().zip(composed.to_vec()) {
        assert!((u - v).abs() < 1e-4);
    }
    for t in [&x, &w, &b] {
        for (u, v) in gf.get(t).unwrap().iter().zip(gc.get(t).unwrap()) {
            assert!((u - v).abs() < 1e-3, "{u} vs {v}");
        }
    }

    // linear_gelu == linear then gelu: the same bits forward, the same gradients.
    let x = param(&[2, 5, 17], 76);
    let (w, b) = (param(&[33, 17], 77), param(&[33], 78));
    let fused = x.linear_gelu(&w, &b).unwrap();
    let composed = x.linear(&w, Some(&b)).unwrap().gelu();
    assert_eq!(fused.shape(), composed.shape());
    assert_eq!(fused.to_vec(), composed.to_vec());
    let r = param(&[2, 5, 33], 79).detach();
    let gf = fused.mul(&r).unwrap().sum_all().backward().unwrap();
    let gc = composed.mul(&r).unwrap().sum_all().backward().unwrap();
    for t in [&x, &w, &b] {
        assert_eq!(gf.get(t).unwrap(), gc.get(t).unwrap());
    }

    // attention == per-head softmax(q kᵀ / √Dh) v built from matmul, softmax, permute.
    let (bsz, n, d, h) = (2, 5, 8, 2);
    let qkv = param(&[bsz, n, 3 * d], 74);
    let fused = qkv.attention(h).unwrap();
    let composed = {
        let t = qkv
            .reshape(&[bsz as isize, n as isize, 3, h as isize, (d / h) as isize])
            .unwrap()
            .permute(&[2, 0, 3, 1, 4])
            .unwrap();
        let part = |i: usize| {
            t.narrow(0, i, 1)
                .unwrap()
                .reshape(&[(bsz * h) as isize, n as isize, (d / h) as isize])
                .unwrap()
        };
        let (q, k, v) = (part(0), part(1), part(2));
        let s = q
            .matmul(&k.transpose(1, 2).unwrap())
            .unwrap()
            .mul_scalar(1.0 / ((d / h) as f32).sqrt());
        let o = s.softmax().unwrap().matmul(&v).unwrap();
        o.reshape(&[bsz as isize, h as isize, n as isize, (d / h) as isize])
            .unwrap()
            .permute(&[0, 2, 1, 3])
            .unwrap()
            .reshape(&[bsz as isize, n as isize, d as isize])
            .unwrap()
    };
    let r = param(&[bsz, n, d], 75).detach();
    let gf = fused.mul(&r).unwrap().sum_all().backward().unwrap();
    let gc = composed.mul(&r).unwrap().sum_all().backward().unwrap();
    for (u, v) in fused.to_vec().iter().zip(composed.to_vec()) {
        assert!((u - v).abs() < 1e-5);
    }
    for (u, v) in gf.get(&qkv).unwrap().iter().zip(gc.get(&qkv).unwrap()) {
        assert!((u - v).abs() < 1e-4, "{u} vs {v}");
    }
}

#[test]
fn every_fused_op_gives_every_parameter_a_nonzero_gradient() {
    let x = param(&[2, 4, 6], 80);
    let (w, b) = (param(&[6], 81), param(&[6], 82));
    let (lw, lb) = (param(&[18, 6], 83), param(&[18], 84));
    let (pw, pb) = (param(&[6, 1, 2, 2], 85), param(&[6], 86));
    let img = param(&[2, 1, 4, 4], 87);
    let (gw, gb) = (param(&[6, 6], 88), param(&[6], 89));
    let y = x
        .layer_norm(&w, &b, 1e-6)
        .unwrap()
        .linear(&lw, Some(&lb))
        .unwrap()
        .attention(2)
        .unwrap()
        .gelu()
        .linear_gelu(&gw, &gb)
        .unwrap();
    let (rw, rb) = (param(&[6, 6], 90), param(&[6], 91));
    let y = y.linear_residual(&rw, Some(&rb), &x).unwrap();
    let z = img.patch_embed(&pw, &pb).unwrap();
    let loss = y.add(&z).unwrap().mse_loss(&Tensor::zeros(&[2, 4, 6]), None).unwrap();
    let g = loss.backward().unwrap();
    for (name, t) in [
        ("x", &x),
        ("ln.w", &w),
        ("ln.b", &b),
        ("fc.w", &lw),
        ("fc.b", &lb),
        ("fc_gelu.w", &gw),
        ("fc_gelu.b", &gb),
        ("fc_res.w", &rw),
        ("fc_res.b", &rb),
        ("pe.w", &pw),
        ("pe.b", &pb),
        ("img", &img),
    ] {
        let gr = g.get(t).unwrap_or_else(|| panic!("{name} has no gradient"));
        assert!(gr.iter().any(|v| *v != 0.0), "{name} has an all-zero gradient");
    }
}
