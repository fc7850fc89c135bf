//! A sharded model (transformers' own shards of the postln fixture) loads on the CUDA backend to
//! the same parameters as its single-file twin, for inference (bf16 storage) and for training
//! (the f32 master copy). Runs on the software CUDA device in the test command.

mod common;
use common::{fixtures, gpu};
use dlm_engine::backend::Backend;
use dlm_engine::model::XlmR;
use std::path::Path;

/// Every parameter as downloaded from the device, as bits.
fn device_weights<B: Backend>(m: &XlmR<B>) -> Vec<(String, Vec<u32>)> {
    m.param_names()
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), m.download_param(i, &m.values()[i]).unwrap().iter().map(|x| x.to_bits()).collect()))
        .collect()
}

fn load(dir: &Path, training: bool) -> Option<Vec<(String, Vec<u32>)>> {
    let backend = gpu("a_sharded_model_loads_on_the_device_like_the_single_file")?;
    let m = if training { XlmR::load_for_training(backend, dir) } else { XlmR::load(backend, dir) };
    Some(device_weights(&m.unwrap()))
}

#[test]
fn a_sharded_model_loads_on_the_device_like_the_single_file() {
    for training in [false, true] {
        let Some(one) = load(&fixtures().join("postln"), training) else { return };
        let many = load(&fixtures().join("postln_sharded"), training).expect("the device vanished");
        assert!(!one.is_empty());
        assert_eq!(one, many, "training: {training}");
    }
}
