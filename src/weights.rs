//! Parameters and batches as safetensors files, for other frameworks to
//! read and for runs to start from.
//!
//! - `weights/step-N.safetensors`: every parameter tensor of the model after
//!   N steps, float32, under its layout name (`wte`, `wpe`, `h0.attn.qkv.w`,
//!   …, see `model::layout`), with the shape the layout gives it (weight
//!   matrices are (out, in), row-major: y = x·Wᵀ + b).
//! - `batches/step-N.safetensors`: the batch of training step N (the update
//!   from N to N + 1 steps): `tokens`, `targets` (rows, ctx) int32 and
//!   `mask` (rows, ctx) float32, the loss weight of each position.
//! - `eval/TASK.safetensors`: the same three tensors for a task's held-out
//!   evaluation examples, one row each (mask 1 on answer tokens and EOS).

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::data::Batch;
use crate::error::{Error, Result};
use crate::float::Float;
use crate::model::ParamLayout;

fn bytes_f32(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn bytes_i32(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect()
}

/// Serializes named (dtype, shape, bytes) tensors with `metadata` and writes
/// them to `path` (a temporary name, then renamed).
fn write_tensors(
    path: &Path,
    tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            (*name, TensorView::new(*dtype, shape.clone(), bytes).expect("the shape matches the data"))
        })
        .collect();
    let bytes =
        safetensors::serialize(views, Some(metadata)).map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    crate::run_dir::write_atomic(path, &bytes)
}

/// `RUN_DIR/weights/step-N.safetensors`: where a run keeps its parameters after `step` steps.
pub fn path_for(run_dir: &Path, step: u64) -> std::path::PathBuf {
    run_dir.join("weights").join(format!("step-{step}.safetensors"))
}

/// Writes every tensor of `layout` from the flat `params` after `step` steps.
pub fn write_weights(path: &Path, layout: &ParamLayout, params: &[f32], step: u64) -> Result<()> {
    let tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = layout
        .tensors
        .iter()
        .map(|t| {
            (
                t.name.as_str(),
                Dtype::F32,
                t.shape.clone(),
                bytes_f32(&params[t.view.offset..t.view.offset + t.view.len]),
            )
        })
        .collect();
    write_tensors(
        path,
        &tensors,
        // One entry: the crate writes metadata in hash order, and a file must
        // be the same bytes every time its run is repeated.
        HashMap::from([("step".to_string(), step.to_string())]),
    )
}

/// Reads the flat parameters of `layout` from a weights file: every tensor
/// must be there, float32, with its layout shape; extra tensors are an error
/// too (they mean another model).
pub fn read_weights(path: &Path, layout: &ParamLayout) -> Result<Vec<f32>> {
    let bad = |why: String| Error::input(format!("{}: {why}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("not a safetensors file ({e})")))?;
    let mut params = vec![0.0f32; layout.len()];
    for t in &layout.tensors {
        let tensor = file.tensor(&t.name).map_err(|_| {
            bad(format!(
                "no tensor `{}` (this model has {} tensors: {}, …)",
                t.name,
                layout.tensors.len(),
                layout.tensors.iter().take(3).map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
            ))
        })?;
        if tensor.dtype() != Dtype::F32 || tensor.shape() != t.shape.as_slice() {
            return Err(bad(format!(
                "tensor `{}` is {:?} {:?}, this model's is F32 {:?}",
                t.name,
                tensor.dtype(),
                tensor.shape(),
                t.shape
            )));
        }
        for (p, chunk) in
            params[t.view.offset..t.view.offset + t.view.len].iter_mut().zip(tensor.data().chunks_exact(4))
        {
            *p = f32::from_le_bytes(chunk.try_into().expect("4 bytes"));
        }
    }
    if let Some(extra) = file.names().into_iter().find(|n| !layout.tensors.iter().any(|t| &t.name == n)) {
        return Err(bad(format!("tensor `{extra}` is not part of this model")));
    }
    Ok(params)
}

/// Writes each task's tokens (rows, ctx) int32 and the model's logits
/// (rows, ctx, vocab) float32 on them, as `TASK.tokens` and `TASK.logits`.
pub fn write_logits(
    path: &Path,
    per_task: &[(String, Vec<u32>, Vec<f32>)],
    shape: [usize; 3],
    step: u64,
) -> Result<()> {
    let [rows, ctx, vocab] = shape;
    let names: Vec<(String, String)> =
        per_task.iter().map(|(t, _, _)| (format!("{t}.tokens"), format!("{t}.logits"))).collect();
    let mut tensors = Vec::new();
    for ((tokens_name, logits_name), (_, tokens, logits)) in names.iter().zip(per_task) {
        tensors.push((tokens_name.as_str(), Dtype::I32, vec![rows, ctx], bytes_i32(tokens)));
        tensors.push((logits_name.as_str(), Dtype::F32, vec![rows, ctx, vocab], bytes_f32(logits)));
    }
    write_tensors(path, &tensors, HashMap::from([("step".to_string(), step.to_string())]))
}

/// The steps at which `run_dir` kept its weights, in order.
pub fn kept_steps(run_dir: &Path) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(run_dir.join("weights"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("step-")?.strip_suffix(".safetensors")?.parse().ok())
        .collect();
    steps.sort_unstable();
    steps
}

/// Writes a batch's tokens, targets and loss weights.
pub fn write_batch<F: Float>(path: &Path, batch: &Batch<F>) -> Result<()> {
    let shape = vec![batch.rows, batch.ctx];
    let mask: Vec<f32> = batch.mask.iter().map(|m| m.f64() as f32).collect();
    let tensors = [
        ("tokens", Dtype::I32, shape.clone(), bytes_i32(&batch.tokens)),
        ("targets", Dtype::I32, shape.clone(), bytes_i32(&batch.targets)),
        ("mask", Dtype::F32, shape, bytes_f32(&mask)),
    ];
    write_tensors(path, &tensors, HashMap::new())
}
