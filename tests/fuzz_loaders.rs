//! Issue 16: a bounded fuzz of the readers of untrusted files (proptest, a fixed number of cases
//! so it runs in a few seconds in the test command). The JSONL reader, config.json, the
//! safetensors loader, the shard index and the PyTorch checkpoint reader (its zip layer and its
//! unpickler) must return `Ok` or an error for any bytes, never panic, and an error names the file.

use dlm_engine::data::jsonl::{read_jsonl, JsonlOptions};
use dlm_engine::model::pytorch::{pickle, Checkpoint};
use dlm_engine::model::weights::read_safetensors;
use dlm_engine::model::ModelConfig;
use proptest::prelude::*;
use std::path::Path;

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

fn with_file<T>(name: &str, bytes: &[u8], f: impl FnOnce(&Path) -> T) -> T {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    f(&p)
}

/// A line that is often almost a record: JSON fragments, keys and values mixed.
fn jsonl_line() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("\"src\"".to_string()),
        Just("\"tgt\"".to_string()),
        Just("\"inputs\"".to_string()),
        Just(":".to_string()),
        Just(",".to_string()),
        Just("null".to_string()),
        Just("[1,2]".to_string()),
        Just("\"\\ud800\"".to_string()),
        "[a-z ]{0,8}".prop_map(|s| format!("\"{s}\"")),
        any::<i64>().prop_map(|n| n.to_string()),
        ".{0,6}",
    ];
    prop::collection::vec(piece, 0..12).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn jsonl_reader_never_panics(lines in prop::collection::vec(jsonl_line(), 0..6), skip in any::<bool>(), raw in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut bytes = lines.join("\n").into_bytes();
        if skip { bytes.extend_from_slice(&raw); }
        let opts = JsonlOptions { skip_bad_lines: skip, ..JsonlOptions::default() };
        with_file("d.jsonl", &bytes, |p| {
            if let Err(e) = read_jsonl(p, &opts) {
                let msg = format!("{e:#}");
                prop_assert!(msg.contains("d.jsonl"), "{msg}");
            }
            Ok(())
        })?;
    }

    #[test]
    fn config_reader_never_panics(
        fields in prop::collection::vec((prop::sample::select(vec![
            "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
            "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id", "bos_token_id",
            "hidden_dropout_prob", "attention_probs_dropout_prob", "model_type", "hidden_act",
        ]), prop_oneof![
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(serde_json::Value::from),
            (0u64..70).prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
            Just(serde_json::Value::from("xlm-roberta")),
            Just(serde_json::Value::from("gelu")),
            Just(serde_json::json!([1])),
        ]), 0..16),
        raw in prop::collection::vec(any::<u8>(), 0..32),
        use_raw in any::<bool>(),
    ) {
        let mut v = serde_json::json!({"model_type": "xlm-roberta", "vocab_size": 50, "hidden_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16, "max_position_embeddings": 20});
        for (k, val) in fields {
            v[k] = val;
        }
        let bytes = if use_raw { raw } else { serde_json::to_vec(&v).unwrap() };
        with_file("config.json", &bytes, |p| {
            match ModelConfig::from_file(p) {
                Ok(c) => {
                    // What is accepted is in range.
                    prop_assert!(c.layer_norm_eps > 0.0 && c.hidden > 0 && c.intermediate > 0 && c.layers > 0);
                    prop_assert!(c.param_count().is_some());
                }
                Err(e) => prop_assert!(format!("{e:#}").contains("config.json"), "{e:#}"),
            }
            Ok(())
        })?;
    }

    #[test]
    fn safetensors_loader_never_panics(
        header_len in prop_oneof![any::<u64>(), 0u64..200],
        header in prop_oneof![
            ".{0,40}",
            (prop::sample::select(vec!["F32", "F16", "BF16", "I64", "F64", "X"]), prop::collection::vec(0usize..5, 0..3), 0usize..64, 0usize..64)
                .prop_map(|(d, shape, a, b)| format!(r#"{{"t":{{"dtype":"{d}","shape":{shape:?},"data_offsets":[{a},{b}]}}}}"#)),
        ],
        body in prop::collection::vec(any::<u8>(), 0..64),
        honest_len in any::<bool>(),
    ) {
        let mut bytes = Vec::new();
        let len = if honest_len { header.len() as u64 } else { header_len };
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&body);
        with_file("model.safetensors", &bytes, |p| {
            if let Err(e) = read_safetensors(p) {
                prop_assert!(format!("{e:#}").contains("model.safetensors"), "{e:#}");
            }
            Ok(())
        })?;
    }

    #[test]
    fn pytorch_reader_never_panics(cut in 0usize..4000, flips in prop::collection::vec((0usize..4000, 1u8..=255), 0..4)) {
        let fixture = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/fixtures/pytorch/mixed.bin");
        let mut bytes = std::fs::read(fixture).unwrap();
        for (at, x) in flips {
            let n = bytes.len();
            bytes[at % n] ^= x;
        }
        bytes.truncate(cut.max(1).min(bytes.len()));
        with_file("pytorch_model.bin", &bytes, |p| {
            match Checkpoint::open(p) {
                Err(e) => prop_assert!(format!("{e:#}").contains("pytorch_model.bin"), "{e:#}"),
                Ok(mut ck) => {
                    for i in 0..ck.tensors.len() {
                        if let Err(e) = ck.tensor_bytes(i) {
                            prop_assert!(format!("{e:#}").contains("pytorch_model.bin"), "{e:#}");
                        }
                    }
                }
            }
            Ok(())
        })?;
    }

    #[test]
    fn unpickler_never_panics(
        ops in prop::collection::vec(prop_oneof![
            any::<u8>().prop_map(|b| vec![b]),
            prop::sample::select(vec![
                &b"\x80\x02"[..], b"}", b"(", b"t", b"u", b"s", b"R", b"Q", b"b", b"q\x00", b"h\x00", b"K\x05", b"X\x01\x00\x00\x00a",
                b"ctorch._utils\n_rebuild_tensor_v2\n", b"ctorch\nFloatStorage\n", b"ccollections\nOrderedDict\n", b")", b"\x85", b"\x86", b".",
            ]).prop_map(|s| s.to_vec()),
        ], 0..40),
    ) {
        let _ = pickle::load(&ops.concat());
    }

    #[test]
    fn shard_index_loader_never_panics(
        pieces in prop::collection::vec(prop_oneof![
            Just("{".to_string()),
            Just("}".to_string()),
            Just("\"weight_map\"".to_string()),
            Just("\"metadata\"".to_string()),
            Just("\"a\"".to_string()),
            Just("\"model-00001-of-00001.safetensors\"".to_string()),
            Just("\"../x\"".to_string()),
            Just(":".to_string()),
            Just(",".to_string()),
            Just("null".to_string()),
            Just("7".to_string()),
            ".{0,6}",
        ], 0..12),
        shard in prop::collection::vec(any::<u8>(), 0..48),
    ) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.safetensors.index.json"), pieces.concat()).unwrap();
        std::fs::write(dir.path().join("model-00001-of-00001.safetensors"), &shard).unwrap();
        if let Err(e) = dlm_engine::model::shards::WeightFiles::open(dir.path()) {
            let e = format!("{e:#}");
            prop_assert!(e.contains("model.safetensors") || e.contains("model-00001-of-00001"), "{e}");
        }
    }
}
