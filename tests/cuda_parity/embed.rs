//! kernels/embed.cu: embeddings forward and backward. CUDA launcher: src/backend/cuda/embed.rs; CPU twin: src/backend/cpu/embed.rs.

use super::*;

#[test]
fn embeddings_match_cpu() {
    let Some(g) = gpu("embeddings_match_cpu") else { return };
    let mut rng = fresh_rng("embed");
    let (vocab, max_pos, hidden, tokens) = (1001usize, 67usize, 77usize, 131usize);
    let (word, wr) = up(&g, &normal_vec(&mut rng, vocab * hidden, 1.0));
    let (pos, pr) = up(&g, &normal_vec(&mut rng, max_pos * hidden, 1.0));
    let (typ, tr) = up(&g, &normal_vec(&mut rng, hidden, 1.0));
    // Repeated ids on purpose: the backward pass must sum them.
    let ids: Vec<i32> = (0..tokens).map(|_| rng.int_in(0, 20) as i32).collect();
    let pos_ids: Vec<i32> = (0..tokens).map(|i| (i % max_pos) as i32).collect();
    let (gi, gp) = (g.upload_i32(&ids).unwrap(), g.upload_i32(&pos_ids).unwrap());
    let mut out = g.upload(&poison(tokens * hidden)).unwrap();
    g.embed_fwd(&gi, &gp, EmbedTables { word: &word, pos: &pos, typ: &typ }, &mut out, EmbedShape { tokens, hidden }).unwrap();
    let mut want = vec![0.0; tokens * hidden];
    cpu::embed::embed_fwd(&ids, &pos_ids, EmbedTables { word: &wr, pos: &pr, typ: &tr }, &mut want, EmbedShape { tokens, hidden });
    // Same f32 additions in the same order, one rounding: bit-equal.
    assert_exact("embed_fwd", &down(&g, &out), &bf16_round(&want));

    let (dout, dr) = up(&g, &normal_vec(&mut rng, tokens * hidden, 1.0));
    let (mut dw, mut dwr) = (g.zeros(vocab * hidden).unwrap(), vec![0.0; vocab * hidden]);
    let (mut dp, mut dpr) = (g.zeros(max_pos * hidden).unwrap(), vec![0.0; max_pos * hidden]);
    let (mut dt, mut dtr) = up(&g, &normal_vec(&mut rng, hidden, 1.0));
    // Id 1 and position 1 (the padding index) occur among the inputs and must get no gradient.
    g.embed_bwd(&gi, &gp, &dout, EmbedGrads { word: &mut dw, pos: &mut dp, typ: &mut dt }, EmbedShape { tokens, hidden }, 1).unwrap();
    cpu::embed::embed_bwd(
        &ids,
        &pos_ids,
        &dr,
        EmbedGrads { word: &mut dwr, pos: &mut dpr, typ: &mut dtr },
        EmbedShape { tokens, hidden },
        1,
    );
    assert_close("embed_bwd word", &down(&g, &dw), &dwr, TOL_STAT);
    assert_close("embed_bwd position", &down(&g, &dp), &dpr, TOL_STAT);
    assert_close("embed_bwd type", &down(&g, &dt), &dtr, TOL_STAT);

    let bad = g.upload_i32(&vec![vocab as i32; tokens]).unwrap();
    assert!(
        g.embed_fwd(&bad, &gp, EmbedTables { word: &word, pos: &pos, typ: &typ }, &mut out, EmbedShape { tokens, hidden }).is_err(),
        "an id past the table must be an error"
    );
}
