//! Why this crate exists: candle's fused softmax and layer norm silently drop gradients.
//!
//! If a future candle gives them a backward, the first test fails and tells us to revisit; until then
//! nobody should reintroduce them in a training path.

use candle_core::{DType, Device, Tensor, Var};

fn input() -> Var {
    let x = Tensor::arange(0f32, 24.0, &Device::Cpu)
        .unwrap()
        .reshape((4, 6))
        .unwrap();
    Var::from_tensor(&(x * 0.1).unwrap().sin().unwrap()).unwrap()
}

fn grad_norm(loss: &Tensor, x: &Var) -> Option<f32> {
    let grads = loss.backward().unwrap();
    grads.get(x.as_tensor()).map(|g| {
        g.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    })
}

#[test]
fn stock_fused_ops_return_no_gradient_while_ours_do() {
    let x = input();
    let w = Tensor::ones(6, DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros(6, DType::F32, &Device::Cpu).unwrap();
    // A loss that depends on x through the op only: weights break the softmax's sum-to-one symmetry.
    let r = Tensor::arange(0f32, 24.0, &Device::Cpu)
        .unwrap()
        .reshape((4, 6))
        .unwrap();
    let loss = |y: Tensor| (y * &r).unwrap().sum_all().unwrap();

    let stock_softmax = candle_nn::ops::softmax_last_dim(x.as_tensor()).unwrap();
    let stock_ln = candle_nn::ops::layer_norm(x.as_tensor(), &w, &b, 1e-5).unwrap();
    let ours_softmax = dmae_core::softmax(x.as_tensor()).unwrap();
    let ours_ln = dmae_core::layer_norm(x.as_tensor(), &w, &b, 1e-5).unwrap();

    // Same forward values...
    let diff = |a: &Tensor, b: &Tensor| {
        a.sub(b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert!(diff(&stock_softmax, &ours_softmax) < 1e-6);
    let d = diff(&stock_ln, &ours_ln);
    // candle's fused kernel uses the one-pass E[x^2] - E[x]^2 variance, ours two passes: they differ
    // in the last digits on rows of small variance.
    assert!(d < 1e-3, "layer norm differs by {d}\n{stock_ln}\n{ours_ln}");

    // ...but only ours carry a gradient back to x.
    let stock = [
        grad_norm(&loss(stock_softmax), &x),
        grad_norm(&loss(stock_ln), &x),
    ];
    assert!(
        stock.iter().all(|g| g.is_none() || *g == Some(0.0)),
        "candle's fused softmax/layer_norm now propagate gradients ({stock:?}): revisit dmae-core"
    );
    for g in [
        grad_norm(&loss(ours_softmax), &x),
        grad_norm(&loss(ours_ln), &x),
    ] {
        assert!(
            matches!(g, Some(n) if n > 1e-3),
            "our op lost the gradient: {g:?}"
        );
    }
}
