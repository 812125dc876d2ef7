//! The autograd machinery: recording, no-grad mode, accumulation, graph
//! freeing, and errors.

use tessera_tensor::{GradStore, Tensor, no_grad};

#[test]
fn gradients_of_a_small_expression() {
    // f(a, b) = Σ (a·b + a)  →  df/da = b + 1, df/db = a
    let a = Tensor::param(vec![1.0, 2.0, 3.0], &[3]).unwrap();
    let b = Tensor::param(vec![4.0, 5.0, 6.0], &[3]).unwrap();
    let f = a.mul(&b).unwrap().add(&a).unwrap().sum_all();
    assert_eq!(f.item().unwrap(), 4.0 + 10.0 + 18.0 + 6.0);
    let g = f.backward().unwrap();
    assert_eq!(g.get(&a).unwrap(), &[5.0, 6.0, 7.0]);
    assert_eq!(g.get(&b).unwrap(), &[1.0, 2.0, 3.0]);
}

#[test]
fn constants_and_no_grad_record_nothing() {
    let c = Tensor::new(vec![1.0, 2.0], &[2]).unwrap();
    let y = c.mul_scalar(2.0);
    assert!(!y.requires_grad());
    assert!(y.sum_all().backward().is_err());
    let p = Tensor::param(vec![1.0, 2.0], &[2]).unwrap();
    let z = no_grad(|| p.mul_scalar(2.0));
    assert!(!z.requires_grad());
    assert!(p.mul_scalar(2.0).requires_grad());
}

#[test]
fn backward_twice_through_the_same_graph_is_an_error() {
    let p = Tensor::param(vec![1.0], &[1]).unwrap();
    let loss = p.mul_scalar(3.0).sum_all();
    loss.backward().unwrap();
    let e = loss.backward().unwrap_err();
    assert!(e.to_string().contains("already freed"), "{e}");
}

#[test]
fn backward_into_accumulates_micro_batches() {
    let p = Tensor::param(vec![1.0, -1.0], &[2]).unwrap();
    let mut store = GradStore::new();
    for k in 1..=3 {
        p.mul_scalar(k as f32).sum_all().backward_into(&mut store).unwrap();
    }
    assert_eq!(store.get(&p).unwrap(), &[6.0, 6.0]);
    store.scale(0.5);
    assert_eq!(store.get(&p).unwrap(), &[3.0, 3.0]);
}

#[test]
fn backward_needs_a_scalar_and_names_the_shape() {
    let p = Tensor::param(vec![1.0, 2.0], &[2]).unwrap();
    let e = p.mul_scalar(2.0).backward().unwrap_err();
    assert!(e.to_string().contains("[2]"), "{e}");
}

#[test]
fn the_graph_is_freed_after_backward() {
    // A weak handle on an intermediate's storage would keep it alive; instead
    // check that the intermediate gradient functions were taken: a second
    // backward from an intermediate that is still held fails.
    let p = Tensor::param(vec![1.0; 4], &[4]).unwrap();
    let mid = p.exp();
    let loss = mid.sum_all();
    loss.backward().unwrap();
    assert!(mid.sum_all().backward().is_err());
}

#[test]
fn deep_graphs_do_not_overflow_the_stack() {
    let p = Tensor::param(vec![1.0], &[1]).unwrap();
    let mut x = p.clone();
    for _ in 0..100_000 {
        x = x.add_scalar(0.0);
    }
    let g = x.sum_all().backward().unwrap();
    assert_eq!(g.get(&p).unwrap(), &[1.0]);
}

#[test]
fn dropping_a_deep_graph_without_backward_does_not_overflow() {
    let p = Tensor::param(vec![1.0], &[1]).unwrap();
    let mut x = p.clone();
    for _ in 0..200_000 {
        x = x.mul_scalar(1.0);
    }
    drop(x);
    assert!(p.requires_grad());
}

/// `backward_into_with` reports each leaf once, when its gradient is
/// already the final one: here `a` is read by two operations (its gradient
/// has two parts) and `b` by one, deeper in the graph than `a`'s last use.
#[test]
fn leaves_are_reported_once_their_gradient_is_complete() {
    let a = Tensor::param(vec![1.0, 2.0, 3.0], &[3]).unwrap();
    let b = Tensor::param(vec![0.5, -1.0, 2.0], &[3]).unwrap();
    let unused = Tensor::param(vec![4.0], &[1]).unwrap();
    let c = Tensor::new(vec![1.0, 1.0, 1.0], &[3]).unwrap();
    // y = Σ ((a·b + c)·a): dy/da = 2ab + c, dy/db = a².
    let y = a.mul(&b).unwrap().add(&c).unwrap().mul(&a).unwrap().sum_all();
    let full = y.backward().unwrap();
    let y = a.mul(&b).unwrap().add(&c).unwrap().mul(&a).unwrap().sum_all();
    let mut store = GradStore::new();
    let mut seen: Vec<(tessera_tensor::TensorId, Vec<f32>)> = Vec::new();
    y.backward_into_with(&mut store, &mut |leaf, s| {
        seen.push((leaf.id(), s.get(leaf).unwrap().to_vec()));
    })
    .unwrap();
    assert_eq!(seen.len(), 2, "a and b once each; no constant, no unused parameter");
    for (id, g) in &seen {
        let t = if *id == a.id() { &a } else { &b };
        assert_eq!(
            g.as_slice(),
            full.get(t).unwrap(),
            "reported before its gradient was complete"
        );
    }
    assert_eq!(full.get(&a).unwrap(), &[2.0, -3.0, 13.0]);
    assert!(store.get(&unused).is_none());
}
