//! The tokenizer wrapper against Python `tokenizers` (tests/golden/fixtures/tokenize.json, made
//! by make_golden.py with `Tokenizer.from_file` on the same tokenizer.json): ids with special
//! tokens, token strings and `decode(skip_special_tokens=True)`, exactly.

mod common;
use common::fixtures;
use dlm_engine::tokenizer::Tok;

#[test]
fn encode_and_decode_match_python_tokenizers() {
    let tok = Tok::load(fixtures().join("tokenizer.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(fixtures().join("tokenize.json")).unwrap()).unwrap();
    assert!(cases.len() >= 10);
    for c in &cases {
        let name = c["name"].as_str().unwrap();
        let text = c["text"].as_str().unwrap();
        let want: Vec<i32> = c["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap() as i32).collect();
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids, want, "{name}: ids of {text:?}");
        // Python's `Encoding.tokens` shows `<unk>` and added tokens by the text they matched (`<mask>`
        // absorbs the space before it: " <mask>"), so vocabulary strings are compared for the
        // other ids only; the ids themselves were compared above.
        let want_tokens: Vec<&str> = c["tokens"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        for (&id, want) in ids.iter().zip(&want_tokens) {
            if id != tok.mask() && id != tok.unk() {
                assert_eq!(tok.id_to_token(id).unwrap(), *want, "{name}: token string of id {id}");
            }
        }
        assert_eq!(tok.decode(&ids, true).unwrap(), c["decoded"].as_str().unwrap(), "{name}: decode");
    }
    assert_eq!((tok.bos(), tok.pad(), tok.eos(), tok.unk(), tok.mask()), (0, 1, 2, 3, 301));
}
