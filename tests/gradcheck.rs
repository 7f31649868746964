//! Every parameter's gradient against central finite differences, in f64, on
//! tiny models covering both activations, both norm settings, tied and untied
//! embeddings, and dropout with a fixed mask.

use ebb::backend::Activation;
use ebb::backend::cpu::CpuBackend;
use ebb::model::{Gpt, Init, ModelShape, Norm};
use ebb::rng;

const BATCH: usize = 2;

fn shape(activation: Activation, norm: Norm, tied_embeddings: bool, dropout: f64) -> ModelShape {
    ModelShape {
        vocab: 11,
        n_ctx: 6,
        d_model: 8,
        n_layers: 2,
        n_heads: 2,
        d_mlp: 12,
        activation,
        norm,
        tied_embeddings,
        dropout,
        init: Init::Gpt2,
    }
}

/// Below this magnitude a gradient is compared absolutely rather than
/// relatively. The five-point differences below carry round-off noise of
/// about 1e-12 (f64 loss ≈ 2, step 1e-4), so a relative error on a gradient
/// of 1e-9 would measure the noise, not the gradient; a floor of 1e-5 keeps
/// that noise under 1e-7 of the bound.
const GRADIENT_FLOOR: f64 = 1e-5;

/// Largest |analytic − numeric| / max(|analytic|, |numeric|, GRADIENT_FLOOR)
/// over all parameters, and the parameter where it occurs.
fn max_relative_error(s: ModelShape, dropout_key: Option<u64>) -> (f64, String) {
    max_relative_error_at(s, BATCH, dropout_key)
}

fn max_relative_error_at(s: ModelShape, batch: usize, dropout_key: Option<u64>) -> (f64, String) {
    let backend = CpuBackend::<f64>::new();
    let mut model = Gpt::new(&backend, s.clone(), batch, 7);
    let n = batch * s.n_ctx;
    let mut r = rng::stream(3, "gradcheck", 0);
    let tokens: Vec<u32> = (0..n).map(|_| rng::below(&mut r, s.vocab as u64) as u32).collect();
    let targets: Vec<u32> = (0..n).map(|_| rng::below(&mut r, s.vocab as u64) as u32).collect();
    // Mask out a few positions so masking is exercised, and weigh the others
    // unequally, as the loss does when it weighs examples rather than tokens.
    let mask: Vec<f64> = (0..n).map(|i| if i % 5 == 2 { 0.0 } else { 1.0 / (1 + i % 3) as f64 }).collect();
    // Perturb the initial parameters so LayerNorm gains and biases are not at
    // their special values 1 and 0, and attention is far from uniform.
    for p in model.params.iter_mut() {
        *p += 0.3 * rng::normal(&mut r);
    }
    model.forward(&backend, &tokens, &targets, &mask, dropout_key);
    model.backward(&backend);
    let analytic = model.grads.clone();
    // Five-point central differences: truncation error O(h⁴), so h can be
    // large enough that round-off in the loss stays near 1e-12.
    let h = 1e-4;
    let mut worst = (0.0, String::new());
    for tensor in model.layout.tensors.clone() {
        for i in tensor.view.range() {
            let orig = model.params[i];
            let mut loss_at = |delta: f64| {
                model.params[i] = orig + delta;
                model.forward(&backend, &tokens, &targets, &mask, dropout_key)
            };
            let numeric = (-loss_at(2.0 * h) + 8.0 * loss_at(h) - 8.0 * loss_at(-h) + loss_at(-2.0 * h)) / (12.0 * h);
            model.params[i] = orig;
            let rel = (analytic[i] - numeric).abs() / analytic[i].abs().max(numeric.abs()).max(GRADIENT_FLOOR);
            if rel > worst.0 {
                worst = (
                    rel,
                    format!(
                        "{}[{}]: analytic {:e} numeric {:e}",
                        tensor.name,
                        i - tensor.view.offset,
                        analytic[i],
                        numeric
                    ),
                );
            }
        }
    }
    worst
}

#[test]
fn gradients_match_finite_differences_for_every_activation_and_norm() {
    for activation in [Activation::Gelu, Activation::Relu] {
        for norm in [Norm::Pre, Norm::None] {
            let (err, at) = max_relative_error(shape(activation, norm, true, 0.0), None);
            println!("{activation:?} {norm:?}: max relative error {err:e} at {at}");
            assert!(err < 1e-6, "{activation:?} {norm:?}: relative error {err:e} at {at}");
        }
    }
}

#[test]
fn gradients_match_finite_differences_with_untied_embeddings() {
    let (err, at) = max_relative_error(shape(Activation::Gelu, Norm::Pre, false, 0.0), None);
    assert!(err < 1e-6, "relative error {err:e} at {at}");
}

#[test]
fn gradients_match_finite_differences_from_the_fan_in_initialization() {
    let s = ModelShape { init: Init::FanIn, ..shape(Activation::Gelu, Norm::Pre, false, 0.0) };
    let (err, at) = max_relative_error(s, None);
    assert!(err < 1e-6, "relative error {err:e} at {at}");
}

#[test]
fn gradients_match_finite_differences_through_a_fixed_dropout_mask() {
    let (err, at) = max_relative_error(shape(Activation::Gelu, Norm::Pre, true, 0.3), Some(12345));
    assert!(err < 1e-6, "relative error {err:e} at {at}");
}

#[test]
fn gradients_match_finite_differences_with_a_context_of_several_attention_blocks() {
    // The causal attention products work in blocks of positions; a context
    // of 45 covers full blocks, a partial one and the skipped upper blocks.
    let s = ModelShape {
        vocab: 5,
        n_ctx: 45,
        d_model: 4,
        n_layers: 1,
        n_heads: 2,
        d_mlp: 4,
        activation: Activation::Gelu,
        norm: Norm::Pre,
        tied_embeddings: true,
        dropout: 0.0,
        init: Init::Gpt2,
    };
    let (err, at) = max_relative_error_at(s, 1, None);
    assert!(err < 1e-6, "relative error {err:e} at {at}");
}

/// The loss's gradient with respect to a soft prompt's input embeddings
/// (the only thing soft-prompt elicitation trains) against the same
/// five-point differences.
#[test]
fn soft_prompt_gradients_match_finite_differences() {
    use ebb::model::SoftPrompt;
    let s = shape(Activation::Gelu, Norm::Pre, true, 0.0);
    let backend = CpuBackend::<f64>::new();
    let mut model = Gpt::new(&backend, s.clone(), BATCH, 7);
    let (n, k) = (BATCH * s.n_ctx, 2);
    let mut r = rng::stream(4, "gradcheck-soft", 0);
    let tokens: Vec<u32> = (0..n).map(|_| rng::below(&mut r, s.vocab as u64) as u32).collect();
    let targets: Vec<u32> = (0..n).map(|_| rng::below(&mut r, s.vocab as u64) as u32).collect();
    let mask: Vec<f64> = (0..n).map(|i| if i % s.n_ctx <= k { 0.0 } else { 1.0 }).collect();
    let soft: Vec<f64> = (0..k * s.d_model).map(|_| rng::normal(&mut r)).collect();
    model.soft_prompt = Some(SoftPrompt::new(&backend, &soft, s.d_model));
    model.forward(&backend, &tokens, &targets, &mask, None);
    model.backward(&backend);
    let analytic = model.soft_prompt.as_ref().unwrap().grads.clone();
    let h = 1e-4;
    let mut worst = (0.0f64, 0);
    for i in 0..soft.len() {
        let mut loss_at = |delta: f64| {
            model.soft_prompt.as_mut().unwrap().values[i] = soft[i] + delta;
            model.forward(&backend, &tokens, &targets, &mask, None)
        };
        let numeric = (-loss_at(2.0 * h) + 8.0 * loss_at(h) - 8.0 * loss_at(-h) + loss_at(-2.0 * h)) / (12.0 * h);
        model.soft_prompt.as_mut().unwrap().values[i] = soft[i];
        let rel = (analytic[i] - numeric).abs() / analytic[i].abs().max(numeric.abs()).max(GRADIENT_FLOOR);
        if rel > worst.0 {
            worst = (rel, i);
        }
    }
    assert!(analytic.iter().any(|g| g.abs() > GRADIENT_FLOOR), "the soft prompt gets a gradient");
    assert!(worst.0 < 1e-6, "relative error {:e} at soft[{}]", worst.0, worst.1);
}
