use dlm_engine::backend::cpu::CpuBackend;
use dlm_engine::backend::Dropout;
use dlm_engine::diffusion::noise::{q_sample_coupled, Reweighting, Seq};
use dlm_engine::model::{ModelConfig, XlmR};
use std::time::Instant;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let preset = args.get(1).map(|s| s.as_str()).unwrap_or("tiny");
    let b: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(32);
    let len: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(24);
    let mut cfg = ModelConfig::preset(preset).unwrap();
    cfg.vocab_size = 400;
    let mut m = XlmR::random(CpuBackend::new(), cfg, 1).unwrap();
    let mut rng = dlm_engine::rng::Rng::new(1, 1);
    let rows: Vec<Seq> = (0..b).map(|_| Seq { ids: (0..len).map(|i| if i == 0 { 0 } else if i == len - 1 { 2 } else { 5 + (rng.int_in(0, 300) as i32) }).collect(), src_len: len / 2 }).collect();
    for it in 0..6 {
        let t = Instant::now();
        let n = q_sample_coupled(&rows, 1, 399, 50, Reweighting::Linear, 1.0, &mut rng);
        m.zero_grads().unwrap();
        let l = m.loss_and_grad(&n.batch, &n.loss, Dropout { p: 0.1, seed: it }, 0.0).unwrap();
        println!("step {it}: {:.1} ms loss {l:.3} rows {}", t.elapsed().as_secs_f64() * 1e3, n.loss.rows.len());
    }
}
