//! Resolution against the llama presets: pattern counts, override order, excludes, ranks.

use std::path::Path;

use super::*;
use crate::report::report;

fn spec(src: &str) -> ResolvedSpec {
    let c = check_source("t.lamda", src, Path::new("."));
    let errs: Vec<String> = c
        .diags
        .iter()
        .filter(|d| d.is_error())
        .map(|d| format!("{}: {}", d.code, d.message))
        .collect();
    assert!(errs.is_empty(), "{src}: {errs:?}");
    c.spec.expect("a spec")
}

fn count(src: &str) -> usize {
    spec(src).modules.len()
}

#[test]
fn pattern_counts_on_llama2_7b() {
    // 32 layers x (q, k, v, o, gate, up, down) + lm_head = 225 linear modules.
    assert_eq!(count("adapt llama2.attn.* rank 8"), 128);
    assert_eq!(count("adapt llama2.attn.{q,v} rank 8"), 64);
    assert_eq!(count("adapt llama2.layers[0..15].attn.{q,v} rank 8"), 32);
    assert_eq!(count("adapt llama2.layers[3].*.* rank 8"), 7);
    assert_eq!(count("adapt llama2.layers[0, 2, 4..5].mlp.down rank 8"), 4);
    assert_eq!(count("adapt llama2.layers[*].mlp.* rank 8"), 96);
    assert_eq!(count("adapt llama2.** rank 8"), 225);
    assert_eq!(count("adapt llama2.**.down rank 8"), 32);
    assert_eq!(count("adapt llama2.lm_head rank 8"), 1);
    assert_eq!(count("adapt llama2.*.q rank 8"), 32, "short path: attn.q");
    assert_eq!(
        count("adapt llama2.layers.attn.o rank 8"),
        32,
        "a segment without index matches every index"
    );
}

#[test]
fn one_line_mission_program() {
    let s = spec("adapt llama2.attn.* rank auto(budget=8192) freeze_b linear(0.3)");
    assert_eq!(s.modules.len(), 128);
    assert!(s.modules.iter().all(|m| m.rank == 64));
    let r = report(&s);
    assert_eq!(r.totals.trainable_params_after_freeze, 524_288);
    assert_eq!(r.model.base_params, 6_738_415_616);
    assert!(matches!(
        s.rules[0].rank,
        RankChoice::Auto {
            budget: 8192,
            r0: 64,
            ..
        }
    ));
}

#[test]
fn later_rules_override_earlier_ones() {
    let s = spec("adapt llama2.attn.* rank 8\nadapt llama2.attn.{q,v} with lora rank 16");
    assert_eq!(s.modules.len(), 128);
    assert_eq!(s.rules[0].modules.len(), 64);
    assert_eq!(s.rules[1].modules.len(), 64);
    assert_eq!(s.rules[0].overridden, 64);
    for m in &s.modules {
        let lora = m.path.ends_with(".q") || m.path.ends_with(".v");
        assert_eq!(
            s.rules[m.rule].method.name,
            if lora { "lora" } else { "lamda" },
            "{}",
            m.path
        );
        assert_eq!(m.rank, if lora { 16 } else { 8 });
    }
    // Model order: layer by layer, q k v o within a layer.
    let first: Vec<&str> = s.modules.iter().take(4).map(|m| m.hf_name.as_str()).collect();
    assert_eq!(
        first,
        [
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.self_attn.k_proj",
            "model.layers.0.self_attn.v_proj",
            "model.layers.0.self_attn.o_proj"
        ]
    );
}

#[test]
fn excludes_apply_to_every_rule_wherever_they_stand() {
    let s = spec("exclude llama2.layers[31].*.*\nadapt llama2.attn.* rank 8\nadapt llama2.mlp.down rank 4");
    assert_eq!(s.modules.len(), 31 * 5);
    assert_eq!(s.rules[0].excluded, 4);
    assert_eq!(s.rules[1].excluded, 1);
}

#[test]
fn rank_auto_uses_the_modules_the_rule_keeps() {
    // 128 attention modules, 64 taken by the later rule: r0 = 8192 / 64.
    let s = spec("adapt llama2.attn.* rank auto(budget = 8192)\nadapt llama2.attn.{q,v} rank 8");
    assert!(matches!(s.rules[0].rank, RankChoice::Auto { r0: 128, .. }));
}

#[test]
fn gqa_shapes_and_presets() {
    let s = spec("adapt llama2_70b.attn.{k,v} rank 8");
    assert!(s.modules.iter().all(|m| m.d_in == 8192 && m.d_out == 1024));
    let s = spec("adapt tiny.attn.* rank 2");
    let dims: Vec<(u64, u64)> = s.modules.iter().take(4).map(|m| (m.d_out, m.d_in)).collect();
    assert_eq!(dims, [(64, 64), (32, 64), (32, 64), (64, 64)]);
    let s = spec("adapt smollm2_135m.mlp.down rank 8");
    assert_eq!(s.modules.len(), 30);
    let r = report(&s);
    // Tied embeddings: lm_head shares embed's weight and is counted once.
    assert_eq!(r.model.base_params, 134_515_008);
}

#[test]
fn lora_counts_and_ratio() {
    let s = spec("adapt llama2.attn.{q,v} with lora rank 8");
    let r = report(&s);
    assert_eq!(r.totals.trainable_params, 64 * 8 * (4096 + 4096));
    assert_eq!(r.totals.trainable_params, r.totals.lora_params);
}

#[test]
fn schedule_counts_follow_semantics() {
    // tiny q (64x64) and v (32x64), r = 4, linear(0.3) over 10 steps: f = 0,1,2,4,...
    let s = spec("adapt tiny.attn.{q,v} rank 4 freeze_b linear(0.3)\ntrain { steps 10 }");
    let r = report(&s);
    let q = &r.modules[0];
    assert_eq!(q.trainable_params, 16 + 64 * 4);
    assert_eq!(q.trainable_params_after_freeze, 16);
    assert_eq!(q.param_updates, 16 * 10 + 64 * (4 + 3 + 2));
    assert_eq!(r.rules[0].frozen_from_step, Some(3));
}

#[test]
fn every_stdlib_preset_instantiates() {
    for p in [
        "llama2",
        "llama2_7b",
        "llama2_13b",
        "llama2_70b",
        "tinyllama_1b",
        "smollm2_135m",
        "tiny",
    ] {
        assert!(count(&format!("adapt {p}.attn.q rank 1")) > 0, "{p}");
    }
}

#[test]
fn stdlib_alone_is_clean() {
    let c = check_source("t.lamda", "adapt tiny.attn.q rank 1", Path::new("."));
    let stdlib: Vec<String> = c
        .diags
        .iter()
        .filter(|d| d.file != c.file)
        .map(|d| format!("{}: {}", d.code, d.message))
        .collect();
    assert!(stdlib.is_empty(), "{stdlib:?}");
}
