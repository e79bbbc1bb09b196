use std::path::Path;
use lamda_compiler::resolve::check_source;
#[test]
fn smoke() {
    let c = check_source("t", "adapt tiny.attn.{q,v} rank 4 freeze_b linear(0.3)\ntrain { steps 10 batch 2 seq 16 }", Path::new("."));
    let spec = c.spec.unwrap();
    let ir = lamda_compiler::pipeline::emit_ir(&spec, 2, 16, true).unwrap();
    println!("{}", lamda_compiler::ir::print::to_text(&ir));
    let plan = lamda_compiler::pipeline::compile(&spec, 2, 16, None).unwrap();
    for p in &plan.phases { println!("phase {}..{} trainable {:?} instrs {} mem {:?}", p.from, p.to, p.trainable, p.program.instrs.len(), p.program.memory); }
    println!("{:?}", plan.memory);
}
